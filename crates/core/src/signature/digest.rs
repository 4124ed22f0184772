//! `Content-Digest` (RFC 9530): computing and checking `sha-256` and `sha-512` digests of a
//! buffered body.

use sha2::{Digest as _, Sha256, Sha512};
use subtle::ConstantTimeEq;

use super::sf::{self, BareItem, Member};

/// A digest algorithm from the RFC 9530 registry that Tollgate accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestAlg {
    Sha256,
    Sha512,
}

impl DigestAlg {
    pub fn key(self) -> &'static str {
        match self {
            Self::Sha256 => "sha-256",
            Self::Sha512 => "sha-512",
        }
    }

    pub fn from_key(key: &str) -> Option<Self> {
        match key {
            "sha-256" => Some(Self::Sha256),
            "sha-512" => Some(Self::Sha512),
            _ => None,
        }
    }

    pub fn digest(self, body: &[u8]) -> Vec<u8> {
        match self {
            Self::Sha256 => Sha256::digest(body).to_vec(),
            Self::Sha512 => Sha512::digest(body).to_vec(),
        }
    }
}

/// The `Content-Digest` field value for `body`.
pub fn content_digest(alg: DigestAlg, body: &[u8]) -> String {
    let mut out = String::from(alg.key());
    out.push('=');
    sf::serialize_bare(&BareItem::ByteSeq(alg.digest(body)), &mut out);
    out
}

/// Why a `Content-Digest` did not check out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestError {
    /// Not a dictionary of byte sequences.
    Malformed,
    /// No algorithm Tollgate supports (sha-256, sha-512).
    NoSupportedAlgorithm,
    /// A supported digest does not match the body.
    Mismatch,
}

/// Checks every supported digest in a `Content-Digest` value against `body`. At least one
/// must be present and all present must match; unknown algorithms are ignored.
pub fn verify_content_digest(header: &str, body: &[u8]) -> Result<(), DigestError> {
    let dict = sf::parse_dictionary(header).map_err(|_| DigestError::Malformed)?;
    let mut checked = 0;
    for (key, member) in &dict {
        let Some(alg) = DigestAlg::from_key(key) else {
            continue;
        };
        let Member::Item(item) = member else {
            return Err(DigestError::Malformed);
        };
        let BareItem::ByteSeq(expected) = &item.value else {
            return Err(DigestError::Malformed);
        };
        let actual = alg.digest(body);
        if !bool::from(actual.ct_eq(expected)) {
            return Err(DigestError::Mismatch);
        }
        checked += 1;
    }
    if checked == 0 { Err(DigestError::NoSupportedAlgorithm) } else { Ok(()) }
}
