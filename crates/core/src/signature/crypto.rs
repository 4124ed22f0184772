//! HMAC-SHA256 and Ed25519 for message signatures (feature `signature`). Pure Rust, so it
//! builds for wasm32-wasip1.

use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::verify::KeyMaterial;

/// Checks `signature` over `base`. The HMAC tag is compared in constant time.
pub fn verify(key: &KeyMaterial, base: &[u8], signature: &[u8]) -> bool {
    match key {
        KeyMaterial::Hmac(secret) => match <Hmac<Sha256> as Mac>::new_from_slice(secret) {
            Ok(mut mac) => {
                mac.update(base);
                mac.verify_slice(signature).is_ok()
            }
            Err(_) => false,
        },
        KeyMaterial::Ed25519(public) => {
            let Ok(key) = VerifyingKey::from_bytes(public) else {
                return false;
            };
            let Ok(signature) = ed25519_dalek::Signature::from_slice(signature) else {
                return false;
            };
            key.verify_strict(base, &signature).is_ok()
        }
    }
}

/// Material for signing. `Debug` never shows it.
#[derive(Clone)]
pub enum SigningMaterial {
    Hmac(Vec<u8>),
    /// The 32-byte Ed25519 seed (the private key).
    Ed25519([u8; 32]),
}

impl std::fmt::Debug for SigningMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Hmac(_) => f.write_str("Hmac(<redacted>)"),
            Self::Ed25519(_) => f.write_str("Ed25519(<redacted>)"),
        }
    }
}

impl SigningMaterial {
    pub fn algorithm(&self) -> super::verify::Algorithm {
        match self {
            Self::Hmac(_) => super::verify::Algorithm::HmacSha256,
            Self::Ed25519(_) => super::verify::Algorithm::Ed25519,
        }
    }

    /// Signs `base`.
    pub fn sign(&self, base: &[u8]) -> Vec<u8> {
        match self {
            Self::Hmac(secret) => match <Hmac<Sha256> as Mac>::new_from_slice(secret) {
                Ok(mut mac) => {
                    mac.update(base);
                    mac.finalize().into_bytes().to_vec()
                }
                // HMAC takes keys of any length; this arm is unreachable in practice.
                Err(_) => Vec::new(),
            },
            Self::Ed25519(seed) => SigningKey::from_bytes(seed).sign(base).to_bytes().to_vec(),
        }
    }

    /// The raw public key (Ed25519) or secret (HMAC) of the verifying side.
    pub fn verifying_bytes(&self) -> Vec<u8> {
        match self.verifying() {
            KeyMaterial::Hmac(secret) => secret,
            KeyMaterial::Ed25519(key) => key.to_vec(),
        }
    }

    /// The matching verification material.
    pub fn verifying(&self) -> KeyMaterial {
        match self {
            Self::Hmac(secret) => KeyMaterial::Hmac(secret.clone()),
            Self::Ed25519(seed) => {
                KeyMaterial::Ed25519(SigningKey::from_bytes(seed).verifying_key().to_bytes())
            }
        }
    }
}

/// Whether 32 bytes are a usable Ed25519 public key (a valid, non-weak curve point).
pub fn valid_ed25519_public_key(bytes: &[u8; 32]) -> bool {
    VerifyingKey::from_bytes(bytes).is_ok_and(|k| !k.is_weak())
}
