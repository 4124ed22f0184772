//! Signs HTTP requests per RFC 9421 (HTTP Message Signatures), with an RFC 9530
//! `Content-Digest` of the body, the way Tollgate's request-signing filter verifies them.
//! The CLI (`tollgate sign`) and the end-to-end tests use it.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use tollgate_core::signature::base::{self, Message, SignatureParams};
use tollgate_core::signature::digest::{self, DigestAlg};
use tollgate_core::signature::sf::{self, BareItem};

pub use tollgate_core::signature::crypto::SigningMaterial;

/// A request to sign.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub method: &'a str,
    /// Absolute URL: `https://api.example.com/path?query`.
    pub url: &'a str,
    /// Headers to send (names in any case), values as the bytes sent: a value need not be
    /// UTF-8. Covered header fields must be among them; a header sent as several field lines
    /// appears once per line, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Option<&'a [u8]>,
}

/// How to sign.
#[derive(Debug, Clone)]
pub struct Options {
    pub key_id: String,
    pub label: String,
    /// Covered components as identifiers (`@method`, `content-type`,
    /// `"@query-param";name="id"`). `None`: `@method`, `@authority`, `@path`, `@query`, and
    /// `content-digest` when there is a body.
    pub components: Option<Vec<String>>,
    pub created: i64,
    pub expires: Option<i64>,
    pub nonce: Option<String>,
    pub tag: Option<String>,
    /// Add the `alg` parameter.
    pub include_alg: bool,
    pub digest: DigestAlg,
}

impl Options {
    /// Defaults: label `sig1`, the default components, no expiry, no nonce, `alg` included,
    /// sha-256 digest.
    pub fn new(key_id: impl Into<String>, created: i64) -> Self {
        Self {
            key_id: key_id.into(),
            label: "sig1".to_owned(),
            components: None,
            created,
            expires: None,
            nonce: None,
            tag: None,
            include_alg: true,
            digest: DigestAlg::Sha256,
        }
    }
}

/// The headers to add to the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub signature_input: String,
    pub signature: String,
    /// Present when the request has a body.
    pub content_digest: Option<String>,
    /// The signature base that was signed (for debugging): bytes, as a covered header value
    /// may hold bytes that are not UTF-8.
    pub base: Vec<u8>,
}

impl Signed {
    /// `(name, value)` pairs, ready to add to a request.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::with_capacity(3);
        if let Some(d) = &self.content_digest {
            out.push(("Content-Digest", d.clone()));
        }
        out.push(("Signature-Input", self.signature_input.clone()));
        out.push(("Signature", self.signature.clone()));
        out
    }
}

/// Why a request could not be signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignError(pub String);

impl std::fmt::Display for SignError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SignError {}

fn fail(message: impl Into<String>) -> SignError {
    SignError(message.into())
}

/// Splits an absolute URL into scheme, authority and origin-form target.
pub fn split_url(url: &str) -> Result<(String, String, String), SignError> {
    let (scheme, rest) =
        url.split_once("://").ok_or_else(|| fail(format!("`{url}` is not an absolute URL")))?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(fail(format!("`{url}`: only http and https URLs can be signed")));
    }
    let rest = rest.split('#').next().unwrap_or("");
    let (authority, target) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(fail(format!("`{url}` has no usable host")));
    }
    let target = if target.starts_with('?') { format!("/{target}") } else { target.to_owned() };
    Ok((scheme.to_ascii_lowercase(), authority.to_owned(), target))
}

/// A random nonce (128 bits, base64url without padding).
pub fn random_nonce() -> Result<String, SignError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| fail(format!("random number generator: {e}")))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

fn parse_component(text: &str) -> Result<sf::Item, SignError> {
    if text.starts_with('"') {
        return sf::parse_item(text).map_err(|e| fail(format!("component `{text}`: {e}")));
    }
    Ok(base::component(text))
}

/// Signs `request`: computes `Content-Digest` for a body, builds the signature base over the
/// covered components and signs it with `key`.
pub fn sign(request: &Request<'_>, key: &SigningMaterial, options: &Options) -> Result<Signed, SignError> {
    let (scheme, authority, target) = split_url(request.url)?;
    let mut headers = request.headers.clone();
    let content_digest = request.body.map(|body| digest::content_digest(options.digest, body));
    if let Some(d) = &content_digest {
        headers.retain(|(n, _)| !n.eq_ignore_ascii_case("content-digest"));
        headers.push(("content-digest".to_owned(), d.clone().into_bytes()));
    }
    let message =
        Message { method: request.method.to_owned(), scheme, authority, target, status: None, headers };
    let names: Vec<String> = match &options.components {
        Some(list) => list.clone(),
        None => {
            let mut list: Vec<String> =
                ["@method", "@authority", "@path", "@query"].map(str::to_owned).to_vec();
            if content_digest.is_some() {
                list.push("content-digest".to_owned());
            }
            list
        }
    };
    let components = names.iter().map(|c| parse_component(c)).collect::<Result<Vec<_>, _>>()?;
    let mut params: sf::Params = vec![("created".to_owned(), BareItem::Integer(options.created))];
    if let Some(expires) = options.expires {
        params.push(("expires".to_owned(), BareItem::Integer(expires)));
    }
    if let Some(nonce) = &options.nonce {
        params.push(("nonce".to_owned(), BareItem::String(nonce.clone())));
    }
    params.push(("keyid".to_owned(), BareItem::String(options.key_id.clone())));
    if options.include_alg {
        params.push(("alg".to_owned(), BareItem::String(key.algorithm().name().to_owned())));
    }
    if let Some(tag) = &options.tag {
        params.push(("tag".to_owned(), BareItem::String(tag.clone())));
    }
    let sig_params = SignatureParams { components, params };
    let base = base::signature_base(&message, &sig_params).map_err(|e| fail(e.to_string()))?;
    let signature = key.sign(&base);
    let label = &options.label;
    if sf::parse_dictionary(&format!("{label}=1")).map(|d| d.len()) != Ok(1) {
        return Err(fail(format!("label `{label}` is not a structured-field key")));
    }
    let mut sig_value = String::new();
    sf::serialize_bare(&BareItem::ByteSeq(signature), &mut sig_value);
    Ok(Signed {
        signature_input: format!("{label}={}", sig_params.serialize()),
        signature: format!("{label}={sig_value}"),
        content_digest,
        base,
    })
}

/// DER prefix of a PKCS#8 Ed25519 private key (RFC 8410); the 32-byte seed follows.
const PKCS8_ED25519_PREFIX: [u8; 16] =
    [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410); the 32-byte key follows.
const SPKI_ED25519_PREFIX: [u8; 12] =
    [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

fn pem_or_base64(text: &str) -> Result<Vec<u8>, SignError> {
    let body: String = text.lines().filter(|l| !l.starts_with("-----")).map(str::trim).collect();
    STANDARD.decode(body.trim()).map_err(|_| fail("not PEM or base64"))
}

fn with_prefix(der: &[u8], prefix: &[u8], what: &str) -> Result<[u8; 32], SignError> {
    if der.len() == 32 {
        return der.try_into().map_err(|_| fail(what.to_owned()));
    }
    match der.strip_prefix(prefix) {
        Some(key) => key.try_into().map_err(|_| fail(format!("{what}: wrong length"))),
        None => Err(fail(format!("{what}: expected an Ed25519 key (PEM or 32 bytes base64)"))),
    }
}

/// An Ed25519 private key: PKCS#8 PEM (`BEGIN PRIVATE KEY`) or the 32-byte seed in base64.
pub fn ed25519_private_key(text: &str) -> Result<[u8; 32], SignError> {
    with_prefix(&pem_or_base64(text)?, &PKCS8_ED25519_PREFIX, "private key")
}

/// An Ed25519 public key: SPKI PEM (`BEGIN PUBLIC KEY`) or the 32 bytes in base64.
pub fn ed25519_public_key(text: &str) -> Result<[u8; 32], SignError> {
    with_prefix(&pem_or_base64(text)?, &SPKI_ED25519_PREFIX, "public key")
}

/// An HMAC secret in base64 (as `tollgate keys create --signing hmac` prints it).
pub fn hmac_secret(text: &str) -> Result<Vec<u8>, SignError> {
    let secret = STANDARD.decode(text.trim()).map_err(|_| fail("the HMAC secret must be base64"))?;
    if secret.len() < 16 {
        return Err(fail("the HMAC secret is shorter than 16 bytes"));
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use tollgate_core::signature::verify::{self, DigestPolicy, Policy};

    use super::*;

    const RFC_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF\n-----END PRIVATE KEY-----\n";
    const RFC_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=\n-----END PUBLIC KEY-----\n";

    #[test]
    fn reproduces_rfc_b26_with_the_rfc_key_files() {
        let key = SigningMaterial::Ed25519(ed25519_private_key(RFC_PRIVATE).unwrap());
        let request = Request {
            method: "POST",
            url: "https://example.com/foo?param=Value&Pet=dog",
            headers: vec![
                ("Date".into(), b"Tue, 20 Apr 2021 02:07:55 GMT".to_vec()),
                ("Content-Type".into(), b"application/json".to_vec()),
                ("Content-Length".into(), b"18".to_vec()),
            ],
            body: None,
        };
        let mut options = Options::new("test-key-ed25519", 1_618_884_473);
        options.label = "sig-b26".into();
        options.include_alg = false;
        options.components = Some(
            ["date", "@method", "@path", "@authority", "content-type", "content-length"]
                .map(str::to_owned)
                .to_vec(),
        );
        let signed = sign(&request, &key, &options).unwrap();
        assert_eq!(
            signed.signature,
            "sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==:"
        );
        assert_eq!(
            tollgate_core::signature::verify::KeyMaterial::Ed25519(ed25519_public_key(RFC_PUBLIC).unwrap()),
            key.verifying()
        );
    }

    #[test]
    fn signed_requests_verify_and_cover_the_body_digest() {
        let key = SigningMaterial::Hmac(vec![9; 32]);
        let body = br#"{"amount": 10}"#;
        let request = Request {
            method: "POST",
            url: "http://api.local:8080/pay?x=1",
            headers: vec![],
            body: Some(body),
        };
        let mut options = Options::new("key_abc", 1_000);
        options.nonce = Some(random_nonce().unwrap());
        let signed = sign(&request, &key, &options).unwrap();
        assert!(signed.signature_input.starts_with(
            r#"sig1=("@method" "@authority" "@path" "@query" "content-digest");created=1000;nonce=""#
        ));
        assert!(signed.signature_input.ends_with(r#";keyid="key_abc";alg="hmac-sha256""#));
        let policy = Policy {
            label: None,
            required_components: vec!["@method".into(), "@authority".into(), "@path".into(), "@query".into()],
            content_digest: DigestPolicy::WithBody,
            clock_skew_s: 30,
            max_age_s: 300,
            require_expires: false,
            require_nonce: true,
            tag: None,
        };
        let candidate =
            verify::select(Some(&signed.signature_input), Some(&signed.signature), &policy, true, 1_010)
                .unwrap();
        let message = Message {
            method: "POST".into(),
            scheme: "http".into(),
            authority: "api.local:8080".into(),
            target: "/pay?x=1".into(),
            status: None,
            headers: vec![("content-digest".into(), signed.content_digest.clone().unwrap().into_bytes())],
        };
        assert_eq!(verify::verify(&candidate, &message, &key.verifying()), Ok(()));
        assert_eq!(digest::verify_content_digest(signed.content_digest.as_deref().unwrap(), body), Ok(()));
    }

    /// A covered header whose value is not UTF-8 is signed over its exact bytes, with `bs` and
    /// without; the filter's verifier agrees, and refuses other bytes.
    #[test]
    fn header_values_that_are_not_utf8_are_signed_exactly() {
        let key = SigningMaterial::Hmac(vec![9; 32]);
        for component in [r#""x-bin";bs"#, "x-bin"] {
            let request = Request {
                method: "GET",
                url: "http://api.local/bin",
                headers: vec![("X-Bin".into(), vec![0xff, 0xfe])],
                body: None,
            };
            let mut options = Options::new("key_abc", 1_000);
            options.components = Some(vec!["@method".into(), component.into()]);
            let signed = sign(&request, &key, &options).unwrap();
            let policy = Policy {
                label: None,
                required_components: vec![],
                content_digest: DigestPolicy::Never,
                clock_skew_s: 30,
                max_age_s: 300,
                require_expires: false,
                require_nonce: false,
                tag: None,
            };
            let candidate =
                verify::select(Some(&signed.signature_input), Some(&signed.signature), &policy, false, 1_010)
                    .unwrap();
            let message = |bytes: &[u8]| Message {
                method: "GET".into(),
                scheme: "http".into(),
                authority: "api.local".into(),
                target: "/bin".into(),
                status: None,
                headers: vec![("x-bin".into(), bytes.to_vec())],
            };
            assert_eq!(
                verify::verify(&candidate, &message(&[0xff, 0xfe]), &key.verifying()),
                Ok(()),
                "{component}"
            );
            assert_eq!(
                verify::verify(&candidate, &message(&[0xfe, 0xff]), &key.verifying()),
                Err(verify::Deny::BadSignature),
                "{component}"
            );
        }
    }

    #[test]
    fn urls_split_and_bad_inputs_fail() {
        assert_eq!(
            split_url("https://h.example/a/b?c=d#frag").unwrap(),
            ("https".into(), "h.example".into(), "/a/b?c=d".into())
        );
        assert_eq!(split_url("http://h:81").unwrap().2, "/");
        assert_eq!(split_url("http://h?x=1").unwrap().2, "/?x=1");
        assert!(split_url("ftp://h/").is_err());
        assert!(split_url("/relative").is_err());
        assert!(hmac_secret("c2hvcnQ=").is_err());
        assert!(ed25519_private_key(RFC_PUBLIC).is_err());
    }
}
