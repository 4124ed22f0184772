//! Minting JWTs (JWS compact serialization) for tests and the benchmark.
//!
//! One function signs for every algorithm the jwt-auth filter verifies here: a key type per
//! algorithm implements [`JwtKey`], [`mint`] signs claims under the usual header
//! (`{"alg","typ":"JWT","kid"}`), [`mint_raw`] signs exact header and payload bytes (for test
//! vectors and odd headers), and [`JwtKey::jwk`] is the JWK that verifies the result.
//!
//! ```
//! use tollgate_testkit::jwt::{self, Hs256, JwtKey};
//!
//! let key = Hs256(vec![7; 32]);
//! let token = jwt::mint(&key, "k1", &serde_json::json!({"sub": "alice"}));
//! assert_eq!(token.split('.').count(), 3);
//! assert_eq!(key.jwk("k1")["kty"], "oct");
//! ```

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::Mac as _;
use rsa::traits::PublicKeyParts as _;
use serde_json::{Value, json};

/// An ES256 (ECDSA P-256, SHA-256) signing key.
pub type Es256 = p256::ecdsa::SigningKey;
/// An RS256 (RSASSA-PKCS1-v1_5, SHA-256) signing key.
pub type Rs256 = rsa::RsaPrivateKey;
/// An EdDSA (Ed25519) signing key.
pub type EdDsa = ed25519_dalek::SigningKey;

/// An HS256 (HMAC-SHA-256) secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Hs256(pub Vec<u8>);

impl std::fmt::Debug for Hs256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hs256({} bytes)", self.0.len())
    }
}

impl Hs256 {
    /// A fresh 32-byte secret from the operating system's randomness.
    pub fn random() -> Result<Hs256, String> {
        let mut secret = vec![0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| format!("randomness: {e}"))?;
        Ok(Hs256(secret))
    }
}

/// A key that signs JWTs under one algorithm.
pub trait JwtKey {
    /// The JWS `alg` it signs with.
    fn alg(&self) -> &'static str;

    /// The signature over `input` (the JWS signing input), as the JWS carries it.
    fn sign(&self, input: &[u8]) -> Vec<u8>;

    /// The JWK that verifies its signatures (for HMAC: the secret), with `use: sig`, `alg` and
    /// `kid`.
    fn jwk(&self, kid: &str) -> Value {
        let mut jwk = self.key_material();
        jwk["use"] = json!("sig");
        jwk["alg"] = json!(self.alg());
        jwk["kid"] = json!(kid);
        jwk
    }

    /// The JWK members describing the key itself (`kty` and its parameters).
    fn key_material(&self) -> Value;
}

impl JwtKey for Hs256 {
    fn alg(&self) -> &'static str {
        "HS256"
    }

    fn sign(&self, input: &[u8]) -> Vec<u8> {
        // HMAC takes a key of any length, so this never fails.
        match hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.0) {
            Ok(mut mac) => {
                mac.update(input);
                mac.finalize().into_bytes().to_vec()
            }
            Err(_) => Vec::new(),
        }
    }

    fn key_material(&self) -> Value {
        json!({"kty": "oct", "k": b64url(&self.0)})
    }
}

impl JwtKey for Es256 {
    fn alg(&self) -> &'static str {
        "ES256"
    }

    fn sign(&self, input: &[u8]) -> Vec<u8> {
        let signature: p256::ecdsa::Signature = p256::ecdsa::signature::Signer::sign(self, input);
        signature.to_bytes().to_vec()
    }

    fn key_material(&self) -> Value {
        let point = self.verifying_key().to_encoded_point(false);
        let coordinate = |c: Option<&p256::FieldBytes>| c.map_or_else(String::new, b64url);
        json!({"kty": "EC", "crv": "P-256", "x": coordinate(point.x()), "y": coordinate(point.y())})
    }
}

impl JwtKey for Rs256 {
    fn alg(&self) -> &'static str {
        "RS256"
    }

    fn sign(&self, input: &[u8]) -> Vec<u8> {
        use rsa::signature::{SignatureEncoding as _, Signer as _};
        let key = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(self.clone());
        key.sign(input).to_vec()
    }

    fn key_material(&self) -> Value {
        json!({"kty": "RSA", "n": b64url(self.n().to_bytes_be()), "e": b64url(self.e().to_bytes_be())})
    }
}

impl JwtKey for EdDsa {
    fn alg(&self) -> &'static str {
        "EdDSA"
    }

    fn sign(&self, input: &[u8]) -> Vec<u8> {
        ed25519_dalek::Signer::sign(self, input).to_bytes().to_vec()
    }

    fn key_material(&self) -> Value {
        json!({"kty": "OKP", "crv": "Ed25519", "x": b64url(self.verifying_key().to_bytes())})
    }
}

/// A JWT with header `{"alg": <the key's>, "typ": "JWT", "kid": kid}` and payload `claims`,
/// signed by `key`.
pub fn mint(key: &impl JwtKey, kid: &str, claims: &Value) -> String {
    let header = json!({"alg": key.alg(), "typ": "JWT", "kid": kid});
    mint_raw(key, &header.to_string(), claims.to_string().as_bytes())
}

/// A JWS over exactly these header and payload bytes (test vectors, unusual headers), signed by
/// `key` whatever `alg` the header names.
pub fn mint_raw(key: &impl JwtKey, header: &str, payload: &[u8]) -> String {
    let input = format!("{}.{}", b64url(header), b64url(payload));
    let signature = key.sign(input.as_bytes());
    format!("{input}.{}", b64url(signature))
}

/// Base64url without padding, the encoding of every JWS part and JWK member.
pub fn b64url(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A fresh P-256 key from the operating system's randomness.
pub fn random_es256() -> Result<Es256, String> {
    // Nearly every 32-byte string is a valid scalar; a few draws always suffice.
    for _ in 0..16 {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| format!("randomness: {e}"))?;
        if let Ok(key) = Es256::from_slice(&bytes) {
            return Ok(key);
        }
    }
    Err("no valid P-256 key from 16 random draws".to_owned())
}

/// The RSA key of RFC 7520 §3.4 (`bilbo.baggins@hobbiton.example`, 2048 bits): a published test
/// key, so tests sign RS256 without generating one (slow) or committing one of their own.
pub fn rfc7520_rsa() -> Result<Rs256, String> {
    const N: &str = "n4EPtAOCc9AlkeQHPzHStgAbgs7bTZLwUBZdR8_KuKPEHLd4rHVTeT-O-XV2jRojdNhxJWTDvNd7nqQ0VEiZQHz_AJmSCpMaJMRBSFKrKb2wqVwGU_NsYOYL-QtiWN2lbzcEe6XC0dApr5ydQLrHqkHHig3RBordaZ6Aj-oBHqFEHYpPe7Tpe-OfVfHd1E6cS6M1FZcD1NNLYD5lFHpPI9bTwJlsde3uhGqC0ZCuEHg8lhzwOHrtIQbS0FVbb9k3-tVTU4fg_3L_vniUFAKwuCLqKnS2BYwdq_mzSnbLY7h_qixoR7jig3__kRhuaxwUkRz5iaiQkqgc5gHdrNP5zw";
    const E: &str = "AQAB";
    const D: &str = "bWUC9B-EFRIo8kpGfh0ZuyGPvMNKvYWNtB_ikiH9k20eT-O1q_I78eiZkpXxXQ0UTEs2LsNRS-8uJbvQ-A1irkwMSMkK1J3XTGgdrhCku9gRldY7sNA_AKZGh-Q661_42rINLRCe8W-nZ34ui_qOfkLnK9QWDDqpaIsA-bMwWWSDFu2MUBYwkHTMEzLYGqOe04noqeq1hExBTHBOBdkMXiuFhUq1BU6l-DqEiWxqg82sXt2h-LMnT3046AOYJoRioz75tSUQfGCshWTBnP5uDjd18kKhyv07lhfSJdrPdM5Plyl21hsFf4L_mHCuoFau7gdsPfHPxxjVOcOpBrQzwQ";
    const P: &str = "3Slxg_DwTXJcb6095RoXygQCAZ5RnAvZlno1yhHtnUex_fp7AZ_9nRaO7HX_-SFfGQeutao2TDjDAWU4Vupk8rw9JR0AzZ0N2fvuIAmr_WCsmGpeNqQnev1T7IyEsnh8UMt-n5CafhkikzhEsrmndH6LxOrvRJlsPp6Zv8bUq0k";
    const Q: &str = "uKE2dh-cTf6ERF4k4e_jy78GfPYUIaUyoSSJuBzp3Cubk3OCqs6grT8bR_cu0Dm1MZwWmtdqDyI95HrUeq3MP15vMMON8lHTeZu2lmKvwqW7anV5UzhM1iZ7z4yMkuUwFWoBvyY898EXvRD-hdqRxHlSqAZ192zB3pVFJ0s7pFc";
    let number = |text: &str| {
        URL_SAFE_NO_PAD
            .decode(text)
            .map(|bytes| rsa::BigUint::from_bytes_be(&bytes))
            .map_err(|e| format!("RFC 7520 key: {e}"))
    };
    Rs256::from_components(number(N)?, number(E)?, number(D)?, vec![number(P)?, number(Q)?])
        .map_err(|e| format!("RFC 7520 key: {e}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn decode(text: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(text).unwrap()
    }

    /// RFC 7515 Appendix A.1: HS256 over the exact header and payload bytes of the example.
    #[test]
    fn hs256_matches_rfc7515_a1() {
        let key = Hs256(decode(
            "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow",
        ));
        let header = "{\"typ\":\"JWT\",\r\n \"alg\":\"HS256\"}";
        let payload = "{\"iss\":\"joe\",\r\n \"exp\":1300819380,\r\n \"http://example.com/is_root\":true}";
        assert_eq!(
            mint_raw(&key, header, payload.as_bytes()),
            "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
        );
        assert_eq!(key.jwk("k")["k"], b64url(&key.0));
    }

    /// RFC 7520 §4.1: RS256 (deterministic) with the RFC's key gives the RFC's signature.
    #[test]
    fn rs256_matches_rfc7520_4_1() {
        let key = rfc7520_rsa().unwrap();
        let payload = "It\u{2019}s a dangerous business, Frodo, going out your door. You step onto the road, and if you don't keep your feet, there\u{2019}s no knowing where you might be swept off to.";
        let token =
            mint_raw(&key, r#"{"alg":"RS256","kid":"bilbo.baggins@hobbiton.example"}"#, payload.as_bytes());
        let signature = token.rsplit('.').next().unwrap();
        assert_eq!(
            signature,
            "MRjdkly7_-oTPTS3AXP41iQIGKa80A0ZmTuV5MEaHoxnW2e5CZ5NlKtainoFmKZopdHM1O2U4mwzJdQx996ivp83xuglII7PNDi84wnB-BDkoBwA78185hX-Es4JIwmDLJK3lfWRa-XtL0RnltuYv746iYTh_qHRD68BNt1uSNCrUCTJDt5aAE6x8wW1Kt9eRo4QPocSadnHXFxnt8Is9UzpERV0ePPQdLuW3IS_de3xyIrDaLGdjluPxUAhb6L2aXic1U12podGU0KLUQSE_oI-ZnmKJ3F4uOZDnd6QZWJushZ41Axf_fcIe8u9ipH84ogoree7vjbU5y18kDquDg"
        );
        let jwk = key.jwk("bilbo");
        assert_eq!(
            (jwk["kty"].as_str(), jwk["e"].as_str(), jwk["alg"].as_str()),
            (Some("RSA"), Some("AQAB"), Some("RS256"))
        );
        assert!(jwk["n"].as_str().unwrap().starts_with("n4EPtAOCc9AlkeQHPzHStgAbgs7bTZLwUBZdR8"));
    }

    /// RFC 8037 Appendix A.4: Ed25519 (deterministic) gives the RFC's JWS; A.2: the public key.
    #[test]
    fn eddsa_matches_rfc8037_a4() {
        let seed: [u8; 32] = decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A").try_into().unwrap();
        let key = EdDsa::from_bytes(&seed);
        assert_eq!(
            mint_raw(&key, r#"{"alg":"EdDSA"}"#, b"Example of Ed25519 signing"),
            "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc.hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
        );
        assert_eq!(key.jwk("ed")["x"], "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo");
    }

    /// ES256 signatures are randomized: the token verifies under the key of RFC 7515 A.3, whose
    /// JWK coordinates are the RFC's.
    #[test]
    fn es256_verifies_and_its_jwk_is_rfc7515_a3() {
        use p256::ecdsa::signature::Verifier as _;
        let key = Es256::from_slice(&decode("jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI")).unwrap();
        let jwk = key.jwk("k1");
        assert_eq!(jwk["x"], "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU");
        assert_eq!(jwk["y"], "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0");
        assert_eq!(
            (jwk["crv"].as_str(), jwk["use"].as_str(), jwk["kid"].as_str()),
            (Some("P-256"), Some("sig"), Some("k1"))
        );

        let token = mint(&key, "k1", &json!({"sub": "alice"}));
        let (input, signature) = token.rsplit_once('.').unwrap();
        let signature = p256::ecdsa::Signature::from_slice(&decode(signature)).unwrap();
        key.verifying_key().verify(input.as_bytes(), &signature).unwrap();
        let header: Value = serde_json::from_slice(&decode(input.split('.').next().unwrap())).unwrap();
        assert_eq!(header, json!({"alg": "ES256", "typ": "JWT", "kid": "k1"}));
        let claims: Value = serde_json::from_slice(&decode(input.split('.').nth(1).unwrap())).unwrap();
        assert_eq!(claims, json!({"sub": "alice"}));
    }

    #[test]
    fn random_keys_differ() {
        assert_ne!(random_es256().unwrap().to_bytes(), random_es256().unwrap().to_bytes());
        assert_ne!(Hs256::random().unwrap(), Hs256::random().unwrap());
        assert_eq!(format!("{:?}", Hs256(vec![1; 32])), "Hs256(32 bytes)");
    }
}
