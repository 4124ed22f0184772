//! Verifying keys compiled from a JWKS, and signature verification (feature `jwt`).
//!
//! The algorithm is chosen by the trusted key: a key verifies only the algorithms of its own
//! type (and its own `alg`, when it names one) that the provider allows. An HS256 token can
//! never be checked against an RSA key used as an HMAC secret.

use ed25519_dalek::Verifier as _;
use hmac::Mac;
use rsa::traits::PublicKeyParts;
use sha2::{Digest, Sha256, Sha384, Sha512};

use super::Deny;
use super::jwk::{self, Jwk, JwksError, Limits, Material, Skipped};
use super::jws::{Alg, Jws};

/// Smallest RSA modulus accepted (RFC 7518 §3.3).
pub const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus accepted: verification cost grows with it.
pub const MAX_RSA_BITS: usize = 8192;

enum Verifier {
    Hmac(Vec<u8>),
    Rsa(Box<rsa::RsaPublicKey>),
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    Ed25519(ed25519_dalek::VerifyingKey),
}

struct Key {
    kid: Option<String>,
    alg: Option<Alg>,
    material: Material,
    verifier: Verifier,
}

/// A provider's compiled keys.
pub struct KeySet {
    keys: Vec<Key>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets: kids only.
        let kids: Vec<_> = self.keys.iter().map(|k| k.kid.as_deref().unwrap_or("-")).collect();
        f.debug_struct("KeySet").field("kids", &kids).finish()
    }
}

fn compile_key(jwk: &Jwk) -> Result<Verifier, String> {
    match &jwk.material {
        Material::Oct { k } => {
            if k.len() < 32 {
                return Err("an HMAC key needs at least 32 bytes".into());
            }
            Ok(Verifier::Hmac(k.clone()))
        }
        Material::Rsa { n, e } => {
            let key = rsa::RsaPublicKey::new_with_max_size(
                rsa::BigUint::from_bytes_be(n),
                rsa::BigUint::from_bytes_be(e),
                MAX_RSA_BITS,
            )
            .map_err(|e| format!("not an RSA public key: {e}"))?;
            if key.n().bits() < MIN_RSA_BITS {
                return Err(format!("RSA keys need at least {MIN_RSA_BITS} bits"));
            }
            Ok(Verifier::Rsa(Box::new(key)))
        }
        Material::Ec { crv, x, y } if crv == "P-256" => {
            if x.len() != 32 || y.len() != 32 {
                return Err("P-256 coordinates must be 32 bytes".into());
            }
            let point = p256::EncodedPoint::from_affine_coordinates(
                p256::FieldBytes::from_slice(x),
                p256::FieldBytes::from_slice(y),
                false,
            );
            p256::ecdsa::VerifyingKey::from_encoded_point(&point)
                .map(Verifier::P256)
                .map_err(|_| "not a point on P-256".into())
        }
        Material::Ec { x, y, .. } => {
            if x.len() != 48 || y.len() != 48 {
                return Err("P-384 coordinates must be 48 bytes".into());
            }
            let point = p384::EncodedPoint::from_affine_coordinates(
                p384::FieldBytes::from_slice(x),
                p384::FieldBytes::from_slice(y),
                false,
            );
            p384::ecdsa::VerifyingKey::from_encoded_point(&point)
                .map(Verifier::P384)
                .map_err(|_| "not a point on P-384".into())
        }
        Material::Ed25519 { x } => {
            let bytes: [u8; 32] = x.as_slice().try_into().map_err(|_| "Ed25519 keys are 32 bytes")?;
            ed25519_dalek::VerifyingKey::from_bytes(&bytes)
                .map(Verifier::Ed25519)
                .map_err(|_| "not an Ed25519 public key".into())
        }
    }
}

fn hmac_ok<M: Mac + hmac::digest::KeyInit>(key: &[u8], input: &[u8], sig: &[u8]) -> bool {
    match <M as Mac>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(input);
            mac.verify_slice(sig).is_ok() // constant time
        }
        Err(_) => false,
    }
}

fn check(verifier: &Verifier, alg: Alg, input: &[u8], sig: &[u8]) -> bool {
    use rsa::{Pkcs1v15Sign, Pss};
    match (verifier, alg) {
        (Verifier::Hmac(k), Alg::HS256) => k.len() >= 32 && hmac_ok::<hmac::Hmac<Sha256>>(k, input, sig),
        (Verifier::Hmac(k), Alg::HS384) => k.len() >= 48 && hmac_ok::<hmac::Hmac<Sha384>>(k, input, sig),
        (Verifier::Hmac(k), Alg::HS512) => k.len() >= 64 && hmac_ok::<hmac::Hmac<Sha512>>(k, input, sig),
        (Verifier::Rsa(k), Alg::RS256) => {
            k.verify(Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(input), sig).is_ok()
        }
        (Verifier::Rsa(k), Alg::RS384) => {
            k.verify(Pkcs1v15Sign::new::<Sha384>(), &Sha384::digest(input), sig).is_ok()
        }
        (Verifier::Rsa(k), Alg::RS512) => {
            k.verify(Pkcs1v15Sign::new::<Sha512>(), &Sha512::digest(input), sig).is_ok()
        }
        (Verifier::Rsa(k), Alg::PS256) => k.verify(Pss::new::<Sha256>(), &Sha256::digest(input), sig).is_ok(),
        (Verifier::Rsa(k), Alg::PS384) => k.verify(Pss::new::<Sha384>(), &Sha384::digest(input), sig).is_ok(),
        (Verifier::Rsa(k), Alg::PS512) => k.verify(Pss::new::<Sha512>(), &Sha512::digest(input), sig).is_ok(),
        (Verifier::P256(k), Alg::ES256) => p256::ecdsa::Signature::from_slice(sig)
            .is_ok_and(|s| p256::ecdsa::signature::Verifier::verify(k, input, &s).is_ok()),
        (Verifier::P384(k), Alg::ES384) => p384::ecdsa::Signature::from_slice(sig)
            .is_ok_and(|s| p384::ecdsa::signature::Verifier::verify(k, input, &s).is_ok()),
        (Verifier::Ed25519(k), Alg::EdDSA) => ed25519_dalek::Signature::from_slice(sig)
            .is_ok_and(|s| k.verify_strict(input, &s).is_ok() && k.verify(input, &s).is_ok()),
        _ => false,
    }
}

/// A fetched key set: the keys that can be used, and the ones left out.
#[derive(Debug)]
pub struct Fetched {
    pub keys: KeySet,
    /// Keys that cannot be used (malformed, too weak, not on their curve), in document order.
    pub skipped: Vec<Skipped>,
}

impl KeySet {
    /// Compiles parsed keys; a key that cannot be used is an error naming it.
    pub fn compile(jwks: &[Jwk]) -> Result<KeySet, JwksError> {
        let mut keys = Vec::with_capacity(jwks.len());
        for (index, jwk) in jwks.iter().enumerate() {
            let verifier = compile_key(jwk).map_err(|reason| JwksError::BadKey { index, reason })?;
            keys.push(Key { kid: jwk.kid.clone(), alg: jwk.alg, material: jwk.material.clone(), verifier });
        }
        Ok(KeySet { keys })
    }

    /// Compiles a key set fetched from an identity provider. Unlike [`KeySet::compile`], a key
    /// that cannot be used (malformed, an RSA key under 2048 bits, a point off its curve) is left
    /// out and reported, and the other keys are used: one bad key published beside the good ones
    /// must not take the provider down. The caps, a duplicate `kid` among the usable keys, or no
    /// usable key at all still refuse the set.
    pub fn compile_fetched(text: &[u8], limits: Limits) -> Result<Fetched, JwksError> {
        let doc = jwk::parse_document(text, limits)?;
        let (parsed, mut skipped) = jwk::parse_jwks_lenient(&doc, limits)?;
        let mut usable: Vec<Jwk> = Vec::with_capacity(parsed.len());
        let mut keys = Vec::with_capacity(parsed.len());
        for (index, jwk) in parsed {
            match compile_key(&jwk) {
                Ok(verifier) => {
                    jwk::check_unique(&usable, &jwk)?;
                    keys.push(Key {
                        kid: jwk.kid.clone(),
                        alg: jwk.alg,
                        material: jwk.material.clone(),
                        verifier,
                    });
                    usable.push(jwk);
                }
                Err(reason) => skipped.push(Skipped { index, kid: jwk.kid, reason }),
            }
        }
        skipped.sort_by_key(|k| k.index);
        match (keys.is_empty(), skipped.is_empty()) {
            (true, true) => Err(JwksError::Empty),
            (true, false) => Err(JwksError::Unusable(skipped)),
            (false, _) => Ok(Fetched { keys: KeySet { keys }, skipped }),
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// Verifies the token's signature with a key of this set. `allowed` is the provider's
    /// algorithm allow-list.
    pub fn verify(&self, jws: &Jws, allowed: &[Alg]) -> Result<(), Deny> {
        if !allowed.contains(&jws.alg) {
            return Err(Deny::AlgNotAllowed);
        }
        let mut by_kid = 0;
        let mut tried = 0;
        for key in &self.keys {
            if let Some(kid) = &jws.kid
                && key.kid.as_ref() != Some(kid)
            {
                continue;
            }
            by_kid += 1;
            if !key.material.fits(jws.alg) || key.alg.is_some_and(|a| a != jws.alg) {
                continue;
            }
            tried += 1;
            if check(&key.verifier, jws.alg, jws.signing_input.as_bytes(), &jws.signature) {
                return Ok(());
            }
        }
        match (by_kid, tried) {
            (0, _) if jws.kid.is_some() => Err(Deny::UnknownKid),
            (_, 0) => Err(Deny::NoMatchingKey),
            _ => Err(Deny::BadSignature),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::jwt::b64;
    use crate::jwt::jwk::{Limits, parse_jwks};
    use crate::jwt::jws::parse;
    use tollgate_testkit::jwt::{Hs256, mint_raw};

    fn set(jwks: &str) -> KeySet {
        KeySet::compile(&parse_jwks(jwks.as_bytes(), Limits::default()).unwrap()).unwrap()
    }

    const A1_KEY: &str = r#"{"keys":[{"kty":"oct","k":"AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow"}]}"#;
    const A1: &str = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

    /// RFC 7515 Appendix A.3 (ES256).
    const A3_KEY: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;
    const A3: &str = "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q";

    /// RFC 7520 §4.1–4.4 (the payload is not JSON, so these check signatures only).
    const COOKBOOK_RSA: &str = r#"{"keys":[{"kty":"RSA","kid":"bilbo.baggins@hobbiton.example","use":"sig","n":"n4EPtAOCc9AlkeQHPzHStgAbgs7bTZLwUBZdR8_KuKPEHLd4rHVTeT-O-XV2jRojdNhxJWTDvNd7nqQ0VEiZQHz_AJmSCpMaJMRBSFKrKb2wqVwGU_NsYOYL-QtiWN2lbzcEe6XC0dApr5ydQLrHqkHHig3RBordaZ6Aj-oBHqFEHYpPe7Tpe-OfVfHd1E6cS6M1FZcD1NNLYD5lFHpPI9bTwJlsde3uhGqC0ZCuEHg8lhzwOHrtIQbS0FVbb9k3-tVTU4fg_3L_vniUFAKwuCLqKnS2BYwdq_mzSnbLY7h_qixoR7jig3__kRhuaxwUkRz5iaiQkqgc5gHdrNP5zw","e":"AQAB"}]}"#;
    const COOKBOOK_PAYLOAD: &str = "SXTigJlzIGEgZGFuZ2Vyb3VzIGJ1c2luZXNzLCBGcm9kbywgZ29pbmcgb3V0IHlvdXIgZG9vci4gWW91IHN0ZXAgb250byB0aGUgcm9hZCwgYW5kIGlmIHlvdSBkb24ndCBrZWVwIHlvdXIgZmVldCwgdGhlcmXigJlzIG5vIGtub3dpbmcgd2hlcmUgeW91IG1pZ2h0IGJlIHN3ZXB0IG9mZiB0by4";
    const COOKBOOK_RS256: (&str, &str) = (
        "eyJhbGciOiJSUzI1NiIsImtpZCI6ImJpbGJvLmJhZ2dpbnNAaG9iYml0b24uZXhhbXBsZSJ9",
        "MRjdkly7_-oTPTS3AXP41iQIGKa80A0ZmTuV5MEaHoxnW2e5CZ5NlKtainoFmKZopdHM1O2U4mwzJdQx996ivp83xuglII7PNDi84wnB-BDkoBwA78185hX-Es4JIwmDLJK3lfWRa-XtL0RnltuYv746iYTh_qHRD68BNt1uSNCrUCTJDt5aAE6x8wW1Kt9eRo4QPocSadnHXFxnt8Is9UzpERV0ePPQdLuW3IS_de3xyIrDaLGdjluPxUAhb6L2aXic1U12podGU0KLUQSE_oI-ZnmKJ3F4uOZDnd6QZWJushZ41Axf_fcIe8u9ipH84ogoree7vjbU5y18kDquDg",
    );
    const COOKBOOK_PS384: (&str, &str) = (
        "eyJhbGciOiJQUzM4NCIsImtpZCI6ImJpbGJvLmJhZ2dpbnNAaG9iYml0b24uZXhhbXBsZSJ9",
        "cu22eBqkYDKgIlTpzDXGvaFfz6WGoz7fUDcfT0kkOy42miAh2qyBzk1xEsnk2IpN6-tPid6VrklHkqsGqDqHCdP6O8TTB5dDDItllVo6_1OLPpcbUrhiUSMxbbXUvdvWXzg-UD8biiReQFlfz28zGWVsdiNAUf8ZnyPEgVFn442ZdNqiVJRmBqrYRXe8P_ijQ7p8Vdz0TTrxUeT3lm8d9shnr2lfJT8ImUjvAA2Xez2Mlp8cBE5awDzT0qI0n6uiP1aCN_2_jLAeQTlqRHtfa64QQSUmFAAjVKPbByi7xho0uTOcbH510a6GYmJUAfmWjwZ6oD4ifKo8DYM-X72Eaw",
    );
    const COOKBOOK_HS_KEY: &str = r#"{"keys":[{"kty":"oct","kid":"018c0ae5-4d9b-471b-bfd6-eef314bc7037","use":"sig","alg":"HS256","k":"hJtXIZ2uSN5kbQfbtTNWbpdmhkV8FJG-Onbc6mxCcYg"}]}"#;
    const COOKBOOK_HS256: (&str, &str) = (
        "eyJhbGciOiJIUzI1NiIsImtpZCI6IjAxOGMwYWU1LTRkOWItNDcxYi1iZmQ2LWVlZjMxNGJjNzAzNyJ9",
        "s0h6KThzkfBBBkLspW1h84VsJZFTsPPqMDA7g1Md7p0",
    );

    /// RFC 8037 Appendix A.4/A.5 (Ed25519).
    const ED_KEY: &str =
        r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
    const ED: (&str, &str, &str) = (
        "eyJhbGciOiJFZERTQSJ9",
        "RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc",
        "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg",
    );

    /// A JWS whose payload need not be JSON (the cookbook's is text).
    fn raw(header: &str, payload: &str, sig: &str) -> Jws {
        let jws = parse(&format!("{header}.{}.{sig}", b64::encode(b"{}")), 16_384).unwrap();
        Jws { signing_input: format!("{header}.{payload}"), ..jws }
    }

    fn flip(mut jws: Jws) -> Jws {
        jws.signature[5] ^= 1;
        jws
    }

    #[test]
    fn rfc7515_a1_hs256_verifies() {
        let jws = parse(A1, 8192).unwrap();
        set(A1_KEY).verify(&jws, &[Alg::HS256]).unwrap();
        assert_eq!(set(A1_KEY).verify(&flip(jws), &[Alg::HS256]), Err(Deny::BadSignature));
    }

    #[test]
    fn rfc7515_a3_es256_verifies() {
        let jws = parse(A3, 8192).unwrap();
        set(A3_KEY).verify(&jws, &[Alg::ES256]).unwrap();
        assert_eq!(set(A3_KEY).verify(&flip(jws), &[Alg::ES256]), Err(Deny::BadSignature));
    }

    #[test]
    fn rfc7520_cookbook_signatures_verify() {
        let rsa = set(COOKBOOK_RSA);
        for (alg, (h, s)) in [(Alg::RS256, COOKBOOK_RS256), (Alg::PS384, COOKBOOK_PS384)] {
            let jws = raw(h, COOKBOOK_PAYLOAD, s);
            assert_eq!(jws.alg, alg);
            rsa.verify(&jws, &Alg::ALL).unwrap();
            assert_eq!(rsa.verify(&flip(jws), &Alg::ALL), Err(Deny::BadSignature));
        }
        let jws = raw(COOKBOOK_HS256.0, COOKBOOK_PAYLOAD, COOKBOOK_HS256.1);
        set(COOKBOOK_HS_KEY).verify(&jws, &[Alg::HS256]).unwrap();
        // Same signature over a different payload fails.
        let other = raw(COOKBOOK_HS256.0, "eA", COOKBOOK_HS256.1);
        assert_eq!(set(COOKBOOK_HS_KEY).verify(&other, &[Alg::HS256]), Err(Deny::BadSignature));
    }

    #[test]
    fn rfc8037_ed25519_verifies() {
        let jws = raw(ED.0, ED.1, ED.2);
        set(ED_KEY).verify(&jws, &[Alg::EdDSA]).unwrap();
        assert_eq!(set(ED_KEY).verify(&flip(jws), &[Alg::EdDSA]), Err(Deny::BadSignature));
    }

    #[test]
    fn algorithm_confusion_hs256_with_the_rsa_public_key_as_secret_is_rejected() {
        // The attacker signs with the bytes of the provider's public modulus as HMAC secret.
        let n = b64::decode(b"n4EPtAOCc9AlkeQHPzHStgAbgs7bTZLwUBZdR8_KuKPEHLd4rHVTeT-O-XV2jRojdNhxJWTDvNd7nqQ0VEiZQHz_AJmSCpMaJMRBSFKrKb2wqVwGU_NsYOYL-QtiWN2lbzcEe6XC0dApr5ydQLrHqkHHig3RBordaZ6Aj-oBHqFEHYpPe7Tpe-OfVfHd1E6cS6M1FZcD1NNLYD5lFHpPI9bTwJlsde3uhGqC0ZCuEHg8lhzwOHrtIQbS0FVbb9k3-tVTU4fg_3L_vniUFAKwuCLqKnS2BYwdq_mzSnbLY7h_qixoR7jig3__kRhuaxwUkRz5iaiQkqgc5gHdrNP5zw").unwrap();
        let token = mint_raw(
            &Hs256(n),
            r#"{"alg":"HS256","kid":"bilbo.baggins@hobbiton.example"}"#,
            br#"{"sub":"x"}"#,
        );
        let jws = parse(&token, 8192).unwrap();
        let rsa = set(COOKBOOK_RSA);
        // Even with HS256 allowed, an RSA key never verifies an HMAC token.
        assert_eq!(rsa.verify(&jws, &Alg::ALL), Err(Deny::NoMatchingKey));
        assert_eq!(rsa.verify(&jws, &[Alg::RS256]), Err(Deny::AlgNotAllowed));
    }

    #[test]
    fn kid_selects_the_key_and_unknown_kids_are_reported() {
        let jws =
            parse(&mint_raw(&Hs256(vec![7; 32]), r#"{"alg":"HS256","kid":"nope"}"#, b"{}"), 8192).unwrap();
        let keys =
            set(r#"{"keys":[{"kty":"oct","kid":"k1","k":"BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc"}]}"#);
        assert_eq!(keys.verify(&jws, &[Alg::HS256]), Err(Deny::UnknownKid));
        let jws =
            parse(&mint_raw(&Hs256(vec![7; 32]), r#"{"alg":"HS256","kid":"k1"}"#, b"{}"), 8192).unwrap();
        keys.verify(&jws, &[Alg::HS256]).unwrap();
        // A key's own `alg` restricts it further.
        let pinned = set(
            r#"{"keys":[{"kty":"oct","kid":"k1","alg":"HS512","k":"BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc"}]}"#,
        );
        assert_eq!(pinned.verify(&jws, &[Alg::HS256, Alg::HS512]), Err(Deny::NoMatchingKey));
    }

    #[test]
    fn weak_keys_are_refused_at_compile_time() {
        let short_hmac = parse_jwks(br#"{"keys":[{"kty":"oct","k":"AQID"}]}"#, Limits::default()).unwrap();
        assert!(matches!(KeySet::compile(&short_hmac), Err(JwksError::BadKey { .. })));
        let small_rsa =
            parse_jwks(br#"{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB"}]}"#, Limits::default()).unwrap();
        assert!(matches!(KeySet::compile(&small_rsa), Err(JwksError::BadKey { .. })));
        let off_curve = parse_jwks(
            br#"{"keys":[{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a1"}]}"#,
            Limits::default(),
        );
        // A non-canonical base64 tail is refused before the curve check.
        assert!(off_curve.is_err() || KeySet::compile(&off_curve.unwrap()).is_err());
    }

    /// The one key of [`A3_KEY`], as a JWK.
    fn a3_jwk() -> &'static str {
        A3_KEY.strip_prefix(r#"{"keys":["#).and_then(|k| k.strip_suffix("]}")).unwrap()
    }

    /// A fetched set with unusable keys (a 1024-bit RSA modulus, a short HMAC secret, bad
    /// base64) keeps the good one.
    #[test]
    fn a_fetched_set_skips_unusable_keys_and_keeps_the_good_ones() {
        let weak = format!(r#"{{"kty":"RSA","kid":"weak","n":"{}","e":"AQAB"}}"#, b64::encode(&[0xc5; 128]));
        let short = r#"{"kty":"oct","kid":"short","k":"AQID"}"#;
        let garbled = r#"{"kty":"RSA","kid":"x","n":"A+B=","e":"AQAB"}"#;
        let doc = format!(r#"{{"keys":[{weak},{short},{},{garbled}]}}"#, a3_jwk());
        let fetched = KeySet::compile_fetched(doc.as_bytes(), Limits::default()).unwrap();
        assert_eq!(fetched.keys.len(), 1);
        fetched.keys.verify(&parse(A3, 8192).unwrap(), &[Alg::ES256]).unwrap();
        let reasons: Vec<String> = fetched.skipped.iter().map(ToString::to_string).collect();
        assert_eq!(fetched.skipped.iter().map(|k| k.index).collect::<Vec<_>>(), vec![0, 1, 3], "{reasons:?}");
        assert!(
            reasons[0].starts_with("keys[0] (kid `weak`): ") && reasons[0].contains("2048 bits"),
            "{reasons:?}"
        );
        assert!(reasons[1].contains("32 bytes"), "{reasons:?}");
        assert!(reasons[2].contains("base64url"), "{reasons:?}");
        // Keys in the configuration stay strict: the operator fixes them.
        let strict = format!(r#"{{"keys":[{weak},{}]}}"#, a3_jwk());
        let parsed = parse_jwks(strict.as_bytes(), Limits::default()).unwrap();
        assert!(matches!(KeySet::compile(&parsed), Err(JwksError::BadKey { index: 0, .. })));

        // Nothing usable: refused, naming every key.
        let none = format!(r#"{{"keys":[{weak},{short}]}}"#);
        let err = KeySet::compile_fetched(none.as_bytes(), Limits::default()).unwrap_err();
        assert!(matches!(&err, JwksError::Unusable(s) if s.len() == 2));
        assert!(err.to_string().contains("kid `weak`") && err.to_string().contains("kid `short`"), "{err}");
        assert_eq!(
            KeySet::compile_fetched(br#"{"keys":[]}"#, Limits::default()).unwrap_err(),
            JwksError::Empty
        );
        // Two usable keys with one kid are still ambiguous.
        let key = a3_jwk().replacen('{', r#"{"kid":"a","#, 1);
        let dup = format!(r#"{{"keys":[{key},{key}]}}"#);
        assert_eq!(
            KeySet::compile_fetched(dup.as_bytes(), Limits::default()).unwrap_err(),
            JwksError::DuplicateKid("a".into())
        );
    }

    #[test]
    fn wrong_length_signatures_fail_without_panicking() {
        let mut jws = parse(A3, 8192).unwrap();
        for len in [0usize, 1, 63, 65, 128] {
            jws.signature = vec![1; len];
            assert_eq!(set(A3_KEY).verify(&jws, &[Alg::ES256]), Err(Deny::BadSignature));
        }
        let mut jws = raw(COOKBOOK_RS256.0, COOKBOOK_PAYLOAD, COOKBOOK_RS256.1);
        jws.signature = vec![0xff; 300];
        assert_eq!(set(COOKBOOK_RSA).verify(&jws, &[Alg::RS256]), Err(Deny::BadSignature));
    }
}
