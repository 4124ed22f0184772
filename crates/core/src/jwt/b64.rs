//! Strict base64url without padding (RFC 7515 §2): no `=`, no `+`/`/`, no whitespace, and no
//! stray bits in the last character, so every token has exactly one encoding.

use base64::Engine as _;
use base64::alphabet::URL_SAFE;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

/// RFC 7515's base64url: the URL-safe alphabet, no padding written or accepted, and
/// non-zero bits after the last whole byte refused.
const STRICT: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(false),
);

/// Decodes strict base64url; `None` on any character outside the alphabet, an impossible
/// length, or non-zero trailing bits.
pub fn decode(text: &[u8]) -> Option<Vec<u8>> {
    STRICT.decode(text).ok()
}

/// Encodes base64url without padding.
pub fn encode(bytes: &[u8]) -> String {
    STRICT.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_length() {
        let data: Vec<u8> = (0..=255u8).collect();
        for n in 0..40 {
            let enc = encode(&data[..n]);
            assert!(!enc.contains('='));
            assert_eq!(decode(enc.as_bytes()).as_deref(), Some(&data[..n]), "{n}");
        }
        assert_eq!(encode(b"\xfb\xff"), "-_8");
    }

    #[test]
    fn non_canonical_and_foreign_input_is_refused() {
        assert_eq!(decode(b"QQ"), Some(b"A".to_vec()));
        assert_eq!(decode(b"QR"), None, "stray bits");
        assert_eq!(decode(b"QUI"), Some(b"AB".to_vec()));
        assert_eq!(decode(b"QUJ"), None, "stray bits");
        for bad in [&b"QQ=="[..], b"Q", b"QUJD+", b"a/bc", b"ab c", b"ab\n", b"\xff\xfe"] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
        assert_eq!(decode(b""), Some(vec![]));
    }

    /// Every string of up to three characters over the alphabet and the characters a lax
    /// decoder takes (standard alphabet, padding, whitespace, other bytes): exactly the
    /// encodings of byte strings decode, and to those bytes.
    #[test]
    fn exactly_the_canonical_encodings_decode() {
        const URL_SAFE: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let chars: Vec<u8> = URL_SAFE.iter().chain(b"+/= \t\r\n.\0\xff").copied().collect();
        let mut canonical = std::collections::HashMap::new();
        canonical.insert(String::new(), vec![]);
        for a in 0..=255u8 {
            canonical.insert(encode(&[a]), vec![a]);
            for b in 0..=255u8 {
                canonical.insert(encode(&[a, b]), vec![a, b]);
            }
        }
        let mut texts: Vec<Vec<u8>> = vec![vec![]];
        for _ in 0..3 {
            let longer: Vec<Vec<u8>> = texts
                .iter()
                .flat_map(|t| chars.iter().map(move |&c| [t.as_slice(), &[c]].concat()))
                .collect();
            for text in &longer {
                let want = std::str::from_utf8(text).ok().and_then(|t| canonical.get(t));
                assert_eq!(decode(text).as_ref(), want, "{text:?}");
            }
            texts = longer;
        }
    }

    #[test]
    fn padding_standard_alphabet_whitespace_and_stray_bits_are_refused_at_any_length() {
        assert_eq!(decode(b"QUJD"), Some(b"ABC".to_vec()));
        assert_eq!(decode(b"QUJDREVG"), Some(b"ABCDEF".to_vec()));
        assert_eq!(decode(b"QUJDQQ"), Some(b"ABCA".to_vec()));
        assert_eq!(decode(b"QUJDQUI"), Some(b"ABCAB".to_vec()));
        assert_eq!(decode(b"-_8"), Some(b"\xfb\xff".to_vec()));
        for bad in [
            &b"QUJD="[..],
            b"QUJD====",
            b"QUJDQQ==",
            b"QUJDQUI=",
            b"QQ==QUJD",
            b"=QUJD",
            b"====",
            b"+/8",
            b"-/8",
            b"+_8",
            b"QUJD/A",
            b"QUJD QUJD",
            b" QUJD",
            b"QUJD\n",
            b"QUJD\r\nQUJD",
            b"QUJD\tQQ",
            b"QUJDQ",
            b"QUJDREVGQ",
            b"QUJDQR",
            b"QUJDQUJ",
            b"QUJD.QQ",
            b"QUJ\xc3\xa9",
            b"QUJ\0",
        ] {
            assert_eq!(decode(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
