//! OAuth 2.0 token introspection (RFC 7662) for opaque tokens, and OpenID discovery documents:
//! the request pieces and the parsing of the answers. Plain data; the filter makes the calls.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Map, Value};

/// A provider's introspection endpoint, reached through an Envoy cluster.
#[derive(Clone, PartialEq, Eq)]
pub struct Introspection {
    pub cluster: String,
    /// Empty when it is taken from the provider's discovery document.
    pub path: String,
    pub authority: String,
    pub client_id: String,
    pub client_secret: String,
    pub timeout: Duration,
    /// Longest an answer is cached (an active token also no longer than its `exp`).
    pub cache_ttl: Duration,
}

impl fmt::Debug for Introspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Introspection")
            .field("cluster", &self.cluster)
            .field("path", &self.path)
            .field("authority", &self.authority)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("timeout", &self.timeout)
            .field("cache_ttl", &self.cache_ttl)
            .finish()
    }
}

/// How long an inactive answer is cached (bounded by `cache_ttl`).
pub const INACTIVE_TTL_S: i64 = 10;
/// Largest introspection or discovery answer read.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

impl Introspection {
    /// The request headers (`path` is the configured or discovered one).
    pub fn headers<'a>(&'a self, path: &'a str, authorization: &'a str) -> [(&'a str, &'a str); 6] {
        [
            (":method", "POST"),
            (":path", path),
            (":authority", self.authority.as_str()),
            ("content-type", "application/x-www-form-urlencoded"),
            ("accept", "application/json"),
            ("authorization", authorization),
        ]
    }

    /// `Basic` client credentials (RFC 6749 §2.3.1: each part form-encoded first).
    pub fn basic_auth(&self) -> String {
        let raw = format!("{}:{}", form_encode(&self.client_id), form_encode(&self.client_secret));
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
    }
}

/// The request body for a token.
pub fn form_body(token: &str) -> String {
    format!("token={}&token_type_hint=access_token", form_encode(token))
}

/// `application/x-www-form-urlencoded` encoding of one value.
pub fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => out.push(char::from(b)),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Whether a token has the shape of a compact JWS (three base64url segments); others are
/// opaque and go to introspection.
pub fn looks_like_jwt(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3
        && parts[..2].iter().all(|p| !p.is_empty())
        && parts.iter().all(|p| p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
}

/// An introspection answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// `active: true`, with the response members as claims.
    Active(Map<String, Value>),
    Inactive,
}

/// Parses a 200 answer. Anything but a JSON object with a boolean `active` is an error.
pub fn parse_answer(body: &[u8]) -> Result<Answer, &'static str> {
    let value: Value = serde_json::from_slice(body).map_err(|_| "not JSON")?;
    let Value::Object(mut map) = value else { return Err("not a JSON object") };
    match map.get("active") {
        Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => return Ok(Answer::Inactive),
        _ => return Err("no boolean `active` member"),
    }
    map.remove("active");
    Ok(Answer::Active(map))
}

/// Completes the claims of an active answer for the provider's checks: `iss` and `aud` are
/// optional in RFC 7662 and, when absent, are those of the provider whose endpoint vouched for
/// the token; when present they are checked like a JWT's.
pub fn complete_claims(claims: &mut Map<String, Value>, issuer: &str, audience: &str) {
    claims.entry("iss").or_insert_with(|| Value::String(issuer.to_owned()));
    claims.entry("aud").or_insert_with(|| Value::String(audience.to_owned()));
}

/// What an OpenID discovery document gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    pub jwks_path: String,
    pub introspection_path: Option<String>,
}

/// Parses a discovery document; the endpoints must be on `authority` (the configured one).
pub fn parse_discovery(body: &[u8], authority: &str) -> Result<Discovered, String> {
    let value: Value = serde_json::from_slice(body).map_err(|_| "not JSON".to_owned())?;
    let Some(uri) = value.get("jwks_uri").and_then(Value::as_str) else {
        return Err("no `jwks_uri`".to_owned());
    };
    let jwks_path = same_authority_path(uri, authority).map_err(|e| format!("`jwks_uri` {e}"))?;
    let introspection_path = match value.get("introspection_endpoint").and_then(Value::as_str) {
        None => None,
        Some(uri) => {
            Some(same_authority_path(uri, authority).map_err(|e| format!("`introspection_endpoint` {e}"))?)
        }
    };
    Ok(Discovered { jwks_path, introspection_path })
}

/// The path (with query) of an `http(s)` URL whose authority is `authority`.
fn same_authority_path(uri: &str, authority: &str) -> Result<String, String> {
    let rest = uri
        .strip_prefix("https://")
        .or_else(|| uri.strip_prefix("http://"))
        .ok_or_else(|| "is not an http(s) URL".to_owned())?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let bare = |h: &str| {
        let h = h.to_ascii_lowercase();
        h.strip_suffix(":443").or_else(|| h.strip_suffix(":80")).map(str::to_owned).unwrap_or(h)
    };
    if bare(host) != bare(authority) {
        return Err(format!("is on `{host}`, not on the configured authority `{authority}`"));
    }
    let path = path.split('#').next().unwrap_or("/");
    Ok(path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse() {
        let a = parse_answer(br#"{"active":true,"scope":"read write","sub":"z","exp":5}"#).unwrap();
        let Answer::Active(m) = a else { panic!("inactive") };
        assert_eq!(m["scope"], "read write");
        assert!(!m.contains_key("active"));
        assert_eq!(parse_answer(br#"{"active":false}"#), Ok(Answer::Inactive));
        assert!(parse_answer(br#"{"active":"true"}"#).is_err());
        assert!(parse_answer(b"[]").is_err());
        assert!(parse_answer(b"<html>").is_err());
        let mut m = Map::new();
        complete_claims(&mut m, "https://i", "api");
        assert_eq!(m["iss"], "https://i");
        let mut m = Map::new();
        m.insert("aud".into(), Value::String("other".into()));
        complete_claims(&mut m, "https://i", "api");
        assert_eq!(m["aud"], "other", "present claims are kept, and checked");
    }

    #[test]
    fn request_pieces() {
        assert_eq!(form_body("a b+c/="), "token=a+b%2Bc%2F%3D&token_type_hint=access_token");
        let i = Introspection {
            cluster: "c".into(),
            path: "/i".into(),
            authority: "a".into(),
            client_id: "gw".into(),
            client_secret: "s3cr:t".into(),
            timeout: Duration::from_secs(1),
            cache_ttl: Duration::from_secs(60),
        };
        // base64("gw:s3cr%3At")
        assert_eq!(i.basic_auth(), "Basic Z3c6czNjciUzQXQ=");
        let debug = format!("{i:?}");
        assert!(!debug.contains("s3cr") && debug.contains("redacted"), "{debug}");
        assert!(looks_like_jwt("eyJh.eyJi.sig-_"));
        assert!(looks_like_jwt("eyJh.eyJi."));
        assert!(!looks_like_jwt("2YotnFZFEjr1zCsicMWpAA"));
        assert!(!looks_like_jwt("a.b"));
        assert!(!looks_like_jwt("a.b.c.d"));
        assert!(!looks_like_jwt("a+b.c.d"));
    }

    #[test]
    fn discovery_documents() {
        let doc = br#"{"issuer":"https://idp.test/r","jwks_uri":"https://idp.test/r/certs","introspection_endpoint":"https://IDP.test:443/r/introspect"}"#;
        let d = parse_discovery(doc, "idp.test").unwrap();
        assert_eq!(d.jwks_path, "/r/certs");
        assert_eq!(d.introspection_path.as_deref(), Some("/r/introspect"));
        let elsewhere = br#"{"jwks_uri":"https://evil.test/certs"}"#;
        assert!(parse_discovery(elsewhere, "idp.test").unwrap_err().contains("evil.test"));
        assert!(parse_discovery(br#"{"issuer":"x"}"#, "idp.test").unwrap_err().contains("jwks_uri"));
        assert!(parse_discovery(br#"{"jwks_uri":"ftp://idp.test/x"}"#, "idp.test").is_err());
        let d = parse_discovery(br#"{"jwks_uri":"http://idp.test:8080/k"}"#, "idp.test:8080").unwrap();
        assert_eq!(d, Discovered { jwks_path: "/k".into(), introspection_path: None });
    }
}
