//! Standard Webhooks signatures: `v1,` + base64(HMAC-SHA256(secret, "{id}.{timestamp}.{body}")),
//! where the secret is the base64 part of `whsec_<base64>` decoded.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::{Error, Result};

/// What an endpoint's secret starts with.
pub const SECRET_PREFIX: &str = "whsec_";

/// A new endpoint secret: its 32 random bytes and its text (`whsec_` + base64 of the bytes).
pub fn new_secret() -> Result<([u8; 32], String)> {
    let bytes = crate::secrets::random_bytes::<32>()?;
    let text = secret_text(&bytes);
    Ok((bytes, text))
}

/// The text form of a secret's bytes.
pub fn secret_text(bytes: &[u8]) -> String {
    format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes))
}

/// The bytes of a secret's text form.
pub fn secret_bytes(text: &str) -> Result<Vec<u8>> {
    let encoded = text.strip_prefix(SECRET_PREFIX).unwrap_or(text);
    STANDARD.decode(encoded).map_err(|_| Error::invalid("secret", "is not base64"))
}

/// The `webhook-signature` header value for one message.
pub fn signature(secret: &[u8], id: &str, timestamp: i64, body: &[u8]) -> Result<String> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret).map_err(|e| Error::internal("webhook signing key", e))?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes())))
}

/// The `webhook-signature` header value signed with each of `secrets` (the current one first),
/// space-separated: during a secret rotation a receiver holding either secret verifies it.
pub fn signatures(secrets: &[&[u8]], id: &str, timestamp: i64, body: &[u8]) -> Result<String> {
    let signed =
        secrets.iter().map(|secret| signature(secret, id, timestamp, body)).collect::<Result<Vec<_>>>()?;
    Ok(signed.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Standard Webhooks reference libraries' test vector.
    #[test]
    fn signature_matches_the_standard_webhooks_test_vector() {
        let secret = secret_bytes("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig =
            signature(&secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, br#"{"test": 2432232314}"#)
                .unwrap();
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn a_signature_changes_with_the_id_the_timestamp_and_the_body() {
        let secret = [7u8; 32];
        let base = signature(&secret, "msg_1", 10, b"{}").unwrap();
        assert_ne!(base, signature(&secret, "msg_2", 10, b"{}").unwrap());
        assert_ne!(base, signature(&secret, "msg_1", 11, b"{}").unwrap());
        assert_ne!(base, signature(&secret, "msg_1", 10, b"{ }").unwrap());
    }

    #[test]
    fn two_secrets_give_two_space_separated_signatures_current_first() {
        let (new, old) = ([1u8; 32], [2u8; 32]);
        let both = signatures(&[&new, &old], "msg_1", 10, b"{}").unwrap();
        let expected = format!(
            "{} {}",
            signature(&new, "msg_1", 10, b"{}").unwrap(),
            signature(&old, "msg_1", 10, b"{}").unwrap()
        );
        assert_eq!(both, expected);
        assert_eq!(
            signatures(&[&new], "msg_1", 10, b"{}").unwrap(),
            signature(&new, "msg_1", 10, b"{}").unwrap()
        );
    }

    #[test]
    fn a_new_secret_is_whsec_and_32_bytes_of_base64() {
        let (bytes, text) = new_secret().unwrap();
        assert!(text.starts_with("whsec_"));
        assert_eq!(secret_bytes(&text).unwrap(), bytes.to_vec());
    }
}
