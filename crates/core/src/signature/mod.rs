//! HTTP Message Signatures (RFC 9421) with `Content-Digest` (RFC 9530) and replay protection:
//! structured fields, signature bases, digests, the verification policy, the replay table and
//! the request-signing filter's config. Crypto (HMAC-SHA256, Ed25519) is behind the
//! `signature` feature.

pub mod base;
pub mod cache;
pub mod config;
#[cfg(feature = "signature")]
pub mod crypto;
pub mod digest;
pub mod replay;
pub mod sf;
pub mod verify;

/// The headers that carry a signature.
pub const SIGNATURE_INPUT: &str = "signature-input";
pub const SIGNATURE: &str = "signature";
pub const CONTENT_DIGEST: &str = "content-digest";

#[cfg(test)]
mod tests;
