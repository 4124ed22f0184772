//! Randomness, generated ids, the pepper and the access tokens.

use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::files::{read_private, write_private};

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Fills a buffer from the operating system's CSPRNG.
pub fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).map_err(|e| Error::internal("random number generator", e))?;
    Ok(buf)
}

/// `len` uniform base62 characters (rejection sampling).
pub fn random_base62(len: usize) -> Result<String> {
    let mut out = String::with_capacity(len);
    while out.len() < len {
        let chunk = random_bytes::<64>()?;
        for byte in chunk.iter().filter(|b| **b < 248) {
            if out.len() == len {
                break;
            }
            out.push(char::from(BASE62[usize::from(*byte % 62)]));
        }
    }
    Ok(out)
}

/// A generated key id: `key_` + 16 base62 characters.
pub fn new_key_id() -> Result<String> {
    Ok(format!("key_{}", random_base62(16)?))
}

/// A generated consumer id: `con_` + 16 base62 characters.
pub fn new_consumer_id() -> Result<String> {
    Ok(format!("con_{}", random_base62(16)?))
}

/// A new API key in the Tollgate format.
pub fn new_api_key() -> Result<String> {
    for _ in 0..8 {
        if let Some(key) = tollgate_core::key::key_from_entropy(&random_bytes::<64>()?) {
            return Ok(key);
        }
    }
    Err(Error::Internal("random number generator: could not draw a key".to_owned()))
}

/// The secret HMAC key under which key hashes are stored. Kept outside the database.
#[derive(Clone)]
pub struct Pepper([u8; 32]);

impl std::fmt::Debug for Pepper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pepper(<redacted>)")
    }
}

impl Pepper {
    /// A pepper from raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Reads the pepper file (32 raw bytes; made private if others can read it), creating it
    /// with mode 0600 when absent.
    pub fn load_or_create(path: &Path) -> Result<Self> {
        match read_private(path)? {
            Some(bytes) => {
                let bytes: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
                    Error::Internal(format!(
                        "pepper file {}: expected 32 bytes, found {}",
                        path.display(),
                        b.len()
                    ))
                })?;
                Ok(Self(bytes))
            }
            None => {
                let bytes = random_bytes::<32>()?;
                write_private(path, &bytes)?;
                tracing::info!(path = %path.display(), "generated a new pepper");
                Ok(Self(bytes))
            }
        }
    }

    /// HMAC-SHA256(pepper, key_hash): the only form in which a secret is stored.
    pub fn stored_hash(&self, key_hash: &[u8]) -> Result<[u8; 32]> {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).map_err(|e| Error::internal("pepper", e))?;
        mac.update(key_hash);
        Ok(mac.finalize().into_bytes().into())
    }
}

/// An access token. `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// Wraps a token; it must not be empty.
    pub fn new(text: impl Into<String>) -> Result<Self> {
        let text = text.into();
        if text.trim().is_empty() {
            return Err(Error::invalid("token", "must not be empty"));
        }
        Ok(Self(text))
    }

    /// The token text, for clients.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// SHA-256 of the token, compared in constant time on each request.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.0.as_bytes()).into()
    }

    /// Reads a token file (surrounding whitespace ignored; made private if others can read it),
    /// creating it with `prefix` + 40 random base62 characters and mode 0600 when absent.
    pub fn load_or_create(path: &Path, prefix: &str) -> Result<Self> {
        match read_private(path)? {
            Some(bytes) => {
                let text = String::from_utf8(bytes)
                    .map_err(|_| Error::Internal(format!("token file {} is not UTF-8", path.display())))?;
                Self::new(text.trim().to_owned())
                    .map_err(|_| Error::Internal(format!("token file {} is empty", path.display())))
            }
            None => {
                let token = format!("{prefix}{}", random_base62(40)?);
                write_private(path, format!("{token}\n").as_bytes())?;
                tracing::info!(path = %path.display(), "generated a new token");
                Ok(Self(token))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_have_prefix_and_length() {
        let key = new_key_id().unwrap();
        assert!(key.starts_with("key_") && key.len() == 20);
        assert!(key[4..].chars().all(|c| c.is_ascii_alphanumeric()));
        let con = new_consumer_id().unwrap();
        assert!(con.starts_with("con_") && con.len() == 20);
    }

    #[test]
    fn generated_api_key_passes_format_check() {
        let key = new_api_key().unwrap();
        assert_eq!(tollgate_core::key::check_format(&key), Ok(()));
    }

    #[test]
    fn stored_hash_depends_on_pepper() {
        let hash = tollgate_core::key::key_hash("x");
        let a = Pepper::from_bytes([1; 32]).stored_hash(&hash).unwrap();
        let b = Pepper::from_bytes([2; 32]).stored_hash(&hash).unwrap();
        assert_ne!(a, b);
        assert_ne!(a, hash);
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let token = Token::new("tga_secret").unwrap();
        assert!(!format!("{token:?}").contains("secret"));
        assert!(!format!("{:?}", Pepper::from_bytes([7; 32])).contains('7'));
    }
}
