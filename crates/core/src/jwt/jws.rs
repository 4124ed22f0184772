//! Compact JWS parsing (RFC 7515 §7.1) with the checks of RFC 8725 that need no key: size cap,
//! exactly three segments, strict base64url, a JSON object header and payload, a known
//! algorithm that is not `none`, and no critical extension we do not implement.

use serde_json::{Map, Value};

use super::Deny;
use super::b64;

/// Signature algorithms (RFC 7518 §3, RFC 8037 §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl Alg {
    pub const ALL: [Alg; 12] = [
        Alg::HS256,
        Alg::HS384,
        Alg::HS512,
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::PS512,
        Alg::ES256,
        Alg::ES384,
        Alg::EdDSA,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Alg::HS256 => "HS256",
            Alg::HS384 => "HS384",
            Alg::HS512 => "HS512",
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::EdDSA => "EdDSA",
        }
    }

    /// The algorithm of this exact (case-sensitive) name.
    pub fn from_name(name: &str) -> Option<Alg> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    pub fn is_hmac(self) -> bool {
        matches!(self, Alg::HS256 | Alg::HS384 | Alg::HS512)
    }
}

/// A parsed, not yet verified token.
#[derive(Debug, Clone, PartialEq)]
pub struct Jws {
    pub alg: Alg,
    pub kid: Option<String>,
    pub typ: Option<String>,
    pub claims: Map<String, Value>,
    /// `BASE64URL(header) || '.' || BASE64URL(payload)`: what the signature covers.
    pub signing_input: String,
    pub signature: Vec<u8>,
    /// The decoded payload, as it was signed (kept for the verified-token cache).
    pub payload: Vec<u8>,
}

/// Parses a compact JWS. `max_len` is checked before anything is decoded.
pub fn parse(token: &str, max_len: usize) -> Result<Jws, Deny> {
    if token.len() > max_len {
        return Err(Deny::TokenTooLarge);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(Deny::Malformed);
    };
    if h.is_empty() || p.is_empty() {
        return Err(Deny::Malformed);
    }
    let header_bytes = b64::decode(h.as_bytes()).ok_or(Deny::Malformed)?;
    let header: Map<String, Value> = serde_json::from_slice(&header_bytes).map_err(|_| Deny::Malformed)?;
    let alg = match header.get("alg") {
        Some(Value::String(name)) if name.eq_ignore_ascii_case("none") => return Err(Deny::AlgNone),
        Some(Value::String(name)) => Alg::from_name(name).ok_or(Deny::UnsupportedAlg)?,
        _ => return Err(Deny::Malformed),
    };
    // RFC 7515 §4.1.11: a recipient must reject a token naming extensions it does not
    // understand. This implementation understands none, and an empty list is invalid too.
    if header.contains_key("crit") {
        return Err(Deny::CriticalHeader);
    }
    // Keys come only from configured key sets, never from the token itself (RFC 8725 §3.10).
    for embedded in ["jwk", "jku", "x5u", "x5c"] {
        if header.contains_key(embedded) {
            return Err(Deny::EmbeddedKey);
        }
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(Deny::Malformed),
    };
    let typ = match header.get("typ") {
        None => None,
        Some(Value::String(typ)) => Some(typ.clone()),
        Some(_) => return Err(Deny::Malformed),
    };
    let payload = b64::decode(p.as_bytes()).ok_or(Deny::Malformed)?;
    let claims: Map<String, Value> = serde_json::from_slice(&payload).map_err(|_| Deny::Malformed)?;
    let signature = b64::decode(s.as_bytes()).ok_or(Deny::Malformed)?;
    if signature.is_empty() {
        return Err(Deny::Malformed);
    }
    Ok(Jws {
        alg,
        kid,
        typ,
        claims,
        signing_input: token[..h.len() + 1 + p.len()].to_owned(),
        signature,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7515 Appendix A.1.
    pub const A1: &str = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    /// RFC 7515 Appendix A.5: an unsecured JWS.
    const A5: &str = "eyJhbGciOiJub25lIn0.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.";

    fn tok(header: &str, payload: &str) -> String {
        format!("{}.{}.c2ln", b64::encode(header.as_bytes()), b64::encode(payload.as_bytes()))
    }

    #[test]
    fn rfc7515_a1_parses() {
        let jws = parse(A1, 8192).unwrap();
        assert_eq!(jws.alg, Alg::HS256);
        assert_eq!(jws.typ.as_deref(), Some("JWT"));
        assert_eq!(jws.claims["iss"], "joe");
        assert_eq!(jws.claims["exp"], 1_300_819_380);
        assert_eq!(jws.signature.len(), 32);
        assert!(A1.starts_with(&jws.signing_input));
    }

    #[test]
    fn rfc7515_a5_alg_none_is_rejected_in_any_case() {
        assert_eq!(parse(A5, 8192), Err(Deny::AlgNone));
        assert_eq!(parse(&tok(r#"{"alg":"NoNe"}"#, "{}"), 8192), Err(Deny::AlgNone));
    }

    #[test]
    fn malformed_tokens_are_refused_without_panicking() {
        let good_header = b64::encode(br#"{"alg":"HS256"}"#);
        let good_payload = b64::encode(br#"{"sub":"a"}"#);
        let cases: Vec<String> = vec![
            String::new(),
            ".".into(),
            "..".into(),
            "...".into(),
            "a.b".into(),
            "a.b.c.d".into(),
            format!("{good_header}.{good_payload}"),
            format!("{good_header}.{good_payload}."),
            format!("{good_header}.{good_payload}.c2ln.x"),
            format!(".{good_payload}.c2ln"),
            format!("{good_header}..c2ln"),
            format!("{good_header}.{good_payload}.c2ln="),
            format!("{good_header}=.{good_payload}.c2ln"),
            format!("{good_header}.{good_payload}.c2l+"),
            format!("{good_header}.{good_payload} .c2ln"),
            format!("{}.{good_payload}.c2ln", b64::encode(b"not json")),
            format!("{}.{good_payload}.c2ln", b64::encode(b"[1,2]")),
            format!("{}.{good_payload}.c2ln", b64::encode(b"\xff\xfe")),
            format!("{good_header}.{}.c2ln", b64::encode(b"\"string\"")),
            format!("{good_header}.{}.c2ln", b64::encode(b"{\"a\":")),
            tok(r#"{"alg":7}"#, "{}"),
            tok(r#"{"typ":"JWT"}"#, "{}"),
            tok(r#"{"alg":"HS256","kid":5}"#, "{}"),
            tok(r#"{"alg":"HS256","typ":[]}"#, "{}"),
            "é.é.é".into(),
            "\u{0}.\u{0}.\u{0}".into(),
        ];
        for case in cases {
            assert_eq!(parse(&case, 8192), Err(Deny::Malformed), "{case:?}");
        }
    }

    #[test]
    fn oversized_tokens_are_refused_before_decoding() {
        let big = "a".repeat(9000);
        assert_eq!(parse(&big, 8192), Err(Deny::TokenTooLarge));
    }

    #[test]
    fn unknown_algorithms_crit_and_embedded_keys_are_refused() {
        assert_eq!(parse(&tok(r#"{"alg":"ES512"}"#, "{}"), 8192), Err(Deny::UnsupportedAlg));
        assert_eq!(parse(&tok(r#"{"alg":"hs256"}"#, "{}"), 8192), Err(Deny::UnsupportedAlg));
        assert_eq!(
            parse(&tok(r#"{"alg":"HS256","crit":["exp"],"exp":1}"#, "{}"), 8192),
            Err(Deny::CriticalHeader)
        );
        assert_eq!(parse(&tok(r#"{"alg":"HS256","crit":[]}"#, "{}"), 8192), Err(Deny::CriticalHeader));
        assert_eq!(parse(&tok(r#"{"alg":"RS256","jwk":{"kty":"RSA"}}"#, "{}"), 8192), Err(Deny::EmbeddedKey));
        assert_eq!(parse(&tok(r#"{"alg":"RS256","jku":"http://x"}"#, "{}"), 8192), Err(Deny::EmbeddedKey));
    }
}
