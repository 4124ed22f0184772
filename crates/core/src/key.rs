//! The API key format.
//!
//! A key is `tgk_` + 30 random base62 characters (≈178 bits) + 6 base62 characters of CRC32 over
//! everything before them, 40 characters in all, e.g. `tgk_4QdLk0v5oVnq2X9cJmFhT1rYzEwB8aPs0gH2kA`.
//! The checksum lets a gateway reject a mistyped, truncated or made-up key with no lookup.
//!
//! The gateway never sends a key anywhere: it computes [`key_hash`] (SHA-256 of the whole text)
//! and the key service looks that up; the service itself stores only an HMAC of the hash under a
//! pepper kept outside its database.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Type prefix of every Tollgate API key.
pub const KEY_PREFIX: &str = "tgk_";
/// Number of random base62 characters.
pub const RANDOM_LEN: usize = 30;
/// Number of base62 checksum characters (62^6 > 2^32).
pub const CHECKSUM_LEN: usize = 6;
/// Total length of a key.
pub const KEY_LEN: usize = KEY_PREFIX.len() + RANDOM_LEN + CHECKSUM_LEN;
/// Length of the display prefix: the type prefix and 6 random characters. Safe to log.
pub const DISPLAY_LEN: usize = KEY_PREFIX.len() + 6;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Why a string is not a well-formed key. The checks need no lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFormatError {
    Empty,
    TooLong,
    TooShort,
    WrongPrefix,
    InvalidCharacter,
    BadChecksum,
}

impl KeyFormatError {
    /// A short stable name, used as a stats and log reason.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::TooLong => "too_long",
            Self::TooShort => "too_short",
            Self::WrongPrefix => "wrong_prefix",
            Self::InvalidCharacter => "invalid_character",
            Self::BadChecksum => "bad_checksum",
        }
    }
}

impl std::fmt::Display for KeyFormatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = match self {
            Self::Empty => "the key is empty",
            Self::TooLong => "the key is longer than a Tollgate key",
            Self::TooShort => "the key is shorter than a Tollgate key",
            Self::WrongPrefix => "the key does not start with the Tollgate key prefix",
            Self::InvalidCharacter => "the key contains a character outside [0-9A-Za-z]",
            Self::BadChecksum => "the key's checksum does not match",
        };
        f.write_str(text)
    }
}

impl std::error::Error for KeyFormatError {}

/// Builds a key from random bytes by rejection sampling (bytes ≥ 248 are skipped so every
/// character is uniform). Returns `None` when `entropy` runs out first; 64 bytes fail with
/// probability far below 2^-100, and the caller simply draws again.
pub fn key_from_entropy(entropy: &[u8]) -> Option<String> {
    let mut key = String::with_capacity(KEY_LEN);
    key.push_str(KEY_PREFIX);
    let mut chars = entropy.iter().filter(|b| **b < 248).map(|b| char::from(ALPHABET[usize::from(*b % 62)]));
    for _ in 0..RANDOM_LEN {
        key.push(chars.next()?);
    }
    let sum = checksum(&key);
    key.push_str(&sum);
    Some(key)
}

/// Checks length, prefix, alphabet and checksum, in that order, without allocating.
pub fn check_format(key: &str) -> Result<(), KeyFormatError> {
    let bytes = key.as_bytes();
    if bytes.is_empty() {
        return Err(KeyFormatError::Empty);
    }
    if bytes.len() > KEY_LEN {
        return Err(KeyFormatError::TooLong);
    }
    if !bytes.starts_with(KEY_PREFIX.as_bytes()) {
        return Err(KeyFormatError::WrongPrefix);
    }
    if bytes.len() < KEY_LEN {
        return Err(KeyFormatError::TooShort);
    }
    if !bytes[KEY_PREFIX.len()..].iter().all(u8::is_ascii_alphanumeric) {
        return Err(KeyFormatError::InvalidCharacter);
    }
    let (body, sum) = bytes.split_at(KEY_LEN - CHECKSUM_LEN);
    let expected = checksum_bytes(body);
    if bool::from(expected.ct_eq(sum)) { Ok(()) } else { Err(KeyFormatError::BadChecksum) }
}

/// SHA-256 of the whole key text: what the gateway caches by and sends to the key service.
pub fn key_hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The part of a key that is safe to show and log. For text that is not a key, a fixed
/// placeholder, so that a malformed secret is never echoed either.
pub fn display_prefix(key: &str) -> &str {
    if check_format(key).is_ok() { &key[..DISPLAY_LEN] } else { "<malformed>" }
}

fn checksum(body: &str) -> String {
    checksum_bytes(body.as_bytes()).iter().map(|b| char::from(*b)).collect()
}

fn checksum_bytes(body: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut n = crc32fast::hash(body);
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    out
}

/// Compares two secrets in constant time (for equal lengths; the length itself is not secret).
pub fn secrets_equal(a: &[u8], b: &[u8]) -> bool {
    bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> String {
        let entropy: Vec<u8> = (0u8..=200).collect();
        key_from_entropy(&entropy).unwrap()
    }

    #[test]
    fn generated_key_has_the_documented_shape_and_passes() {
        let key = sample();
        assert_eq!(key.len(), KEY_LEN);
        assert!(key.starts_with("tgk_"));
        assert_eq!(check_format(&key), Ok(()));
        assert_eq!(display_prefix(&key), &key[..10]);
    }

    #[test]
    fn single_character_typo_fails_the_checksum() {
        let key = sample();
        for i in KEY_PREFIX.len()..KEY_LEN {
            let mut bytes = key.clone().into_bytes();
            bytes[i] = if bytes[i] == b'a' { b'b' } else { b'a' };
            let typo = String::from_utf8(bytes).unwrap();
            assert_eq!(check_format(&typo), Err(KeyFormatError::BadChecksum), "position {i}");
        }
    }

    #[test]
    fn swapped_neighbours_fail_the_checksum() {
        let key = sample();
        let mut bytes = key.into_bytes();
        let i = bytes.iter().skip(4).position(|_| true).unwrap() + 5;
        let j = (i..KEY_LEN - 1).find(|&j| bytes[j] != bytes[j + 1]).unwrap();
        bytes.swap(j, j + 1);
        assert_eq!(check_format(&String::from_utf8(bytes).unwrap()), Err(KeyFormatError::BadChecksum));
    }

    #[test]
    fn wrong_prefix_truncated_oversized_and_empty_are_named() {
        let key = sample();
        assert_eq!(check_format(""), Err(KeyFormatError::Empty));
        assert_eq!(check_format(&format!("ghp_{}", &key[4..])), Err(KeyFormatError::WrongPrefix));
        assert_eq!(check_format(&key[..KEY_LEN - 1]), Err(KeyFormatError::TooShort));
        assert_eq!(check_format(&format!("{key}0")), Err(KeyFormatError::TooLong));
        assert_eq!(check_format(&"x".repeat(10_000)), Err(KeyFormatError::TooLong));
    }

    #[test]
    fn non_ascii_and_punctuation_are_rejected_before_the_checksum() {
        let key = sample();
        let accented = format!("{}é{}", &key[..10], &key[12..]);
        assert_eq!(accented.len(), KEY_LEN);
        assert_eq!(check_format(&accented), Err(KeyFormatError::InvalidCharacter));
        let dashed = format!("{}-{}", &key[..10], &key[11..]);
        assert_eq!(check_format(&dashed), Err(KeyFormatError::InvalidCharacter));
    }

    #[test]
    fn entropy_that_runs_out_gives_none() {
        assert_eq!(key_from_entropy(&[1u8; 29]), None);
        assert_eq!(key_from_entropy(&[250u8; 100]), None);
    }

    #[test]
    fn characters_are_uniform_over_the_alphabet() {
        let entropy: Vec<u8> = (0..248u32).map(|b| b as u8).cycle().take(248 * 4).collect();
        let mut counts = [0u32; 62];
        for b in entropy.iter().filter(|b| **b < 248) {
            counts[usize::from(*b % 62)] += 1;
        }
        assert!(counts.iter().all(|c| *c == counts[0]));
    }

    #[test]
    fn display_prefix_never_echoes_a_malformed_secret() {
        assert_eq!(display_prefix("tgk_not-a-real-key"), "<malformed>");
    }

    #[test]
    fn key_hash_is_sha256_of_the_text() {
        assert_eq!(
            hex::encode(key_hash("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
