//! Strict base64url without padding (RFC 7515 §2): no `=`, no `+`/`/`, no whitespace, and no
//! stray bits in the last character, so every token has exactly one encoding.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn value(c: u8) -> Option<u32> {
    match c {
        b'A'..=b'Z' => Some(u32::from(c - b'A')),
        b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
        b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
        b'-' => Some(62),
        b'_' => Some(63),
        _ => None,
    }
}

/// Decodes strict base64url; `None` on any character outside the alphabet, an impossible
/// length, or non-zero trailing bits.
pub fn decode(text: &[u8]) -> Option<Vec<u8>> {
    if text.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for chunk in text.chunks(4) {
        let mut acc: u32 = 0;
        for &c in chunk {
            acc = (acc << 6) | value(c)?;
        }
        match chunk.len() {
            4 => out.extend_from_slice(&[(acc >> 16) as u8, (acc >> 8) as u8, acc as u8]),
            3 => {
                if acc & 0b11 != 0 {
                    return None;
                }
                out.extend_from_slice(&[(acc >> 10) as u8, (acc >> 2) as u8]);
            }
            2 => {
                if acc & 0b1111 != 0 {
                    return None;
                }
                out.push((acc >> 4) as u8);
            }
            _ => return None,
        }
    }
    Some(out)
}

/// Encodes base64url without padding.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
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
