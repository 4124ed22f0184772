//! JSON Web Key Sets (RFC 7517) as plain data: parsed, capped and checked for duplicate `kid`s.
//! Turning them into verifying keys is [`super::keys`] (feature `jwt`).
//!
//! Only keys meant for verifying signatures are kept: a key whose `use` is not `sig` (RFC 7517
//! §4.2) or whose `key_ops` lacks `verify` (§4.3) is left out, as are key types and curves this
//! filter does not verify with.

use serde_json::Value;

use super::b64;
use super::jws::Alg;

/// Caps that keep a hostile or broken key set from costing memory or time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_bytes: usize,
    pub max_keys: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_bytes: 64 * 1024, max_keys: 32 }
    }
}

/// One signing key's public material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Material {
    /// `kty: oct` — the shared secret of HS*.
    Oct {
        k: Vec<u8>,
    },
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// `kty: EC`; `crv` is `P-256` or `P-384`.
    Ec {
        crv: String,
        x: Vec<u8>,
        y: Vec<u8>,
    },
    /// `kty: OKP`, `crv: Ed25519`.
    Ed25519 {
        x: Vec<u8>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jwk {
    pub kid: Option<String>,
    /// The key's own `alg`, which then is the only algorithm it verifies.
    pub alg: Option<Alg>,
    pub material: Material,
}

impl Material {
    /// Whether this kind of key may verify `alg` (RFC 8725 §3.1: the key decides the
    /// algorithm family, never the token alone).
    pub fn fits(&self, alg: Alg) -> bool {
        match self {
            Material::Oct { .. } => alg.is_hmac(),
            Material::Rsa { .. } => {
                matches!(alg, Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512)
            }
            Material::Ec { crv, .. } => {
                (crv == "P-256" && alg == Alg::ES256) || (crv == "P-384" && alg == Alg::ES384)
            }
            Material::Ed25519 { .. } => alg == Alg::EdDSA,
        }
    }
}

/// Why a key set was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksError {
    TooLarge(usize),
    NotJson(String),
    NoKeysArray,
    TooManyKeys(usize),
    DuplicateKid(String),
    BadKey {
        index: usize,
        reason: String,
    },
    Empty,
    /// Every signing key of a fetched set was left out as unusable.
    Unusable(Vec<Skipped>),
}

/// A key of a fetched set that was left out because it cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Its position in the document's `keys` array.
    pub index: usize,
    pub kid: Option<String>,
    pub reason: String,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kid {
            Some(kid) => write!(f, "keys[{}] (kid `{}`): {}", self.index, printable(kid), self.reason),
            None => write!(f, "keys[{}]: {}", self.index, self.reason),
        }
    }
}

/// A `kid` for a log line: at most 64 characters, control characters replaced.
fn printable(kid: &str) -> String {
    kid.chars().take(64).map(|c| if c.is_control() { '?' } else { c }).collect()
}

impl std::fmt::Display for JwksError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooLarge(n) => write!(f, "key set is larger than {n} bytes"),
            Self::NotJson(e) => write!(f, "key set is not JSON: {e}"),
            Self::NoKeysArray => f.write_str("key set has no `keys` array"),
            Self::TooManyKeys(n) => write!(f, "key set has more than {n} keys"),
            Self::DuplicateKid(kid) => write!(f, "key set has two keys with kid `{kid}`"),
            Self::BadKey { index, reason } => write!(f, "keys[{index}]: {reason}"),
            Self::Empty => f.write_str("key set has no usable signing key"),
            Self::Unusable(skipped) => {
                f.write_str("key set has no usable signing key (")?;
                for (i, k) in skipped.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "{k}")?;
                }
                f.write_str(")")
            }
        }
    }
}

fn field<'a>(key: &'a serde_json::Map<String, Value>, name: &str) -> Result<&'a str, String> {
    match key.get(name) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(format!("`{name}` must be a string")),
        None => Err(format!("`{name}` is missing")),
    }
}

fn bytes(key: &serde_json::Map<String, Value>, name: &str) -> Result<Vec<u8>, String> {
    let text = field(key, name)?;
    let decoded = b64::decode(text.as_bytes()).ok_or_else(|| format!("`{name}` is not base64url"))?;
    if decoded.is_empty() {
        return Err(format!("`{name}` is empty"));
    }
    Ok(decoded)
}

/// Parses one JWK. `Ok(None)` for keys that are not for verifying signatures (`use` other than
/// `sig`, `key_ops` without `verify`) or of a kind this filter does not verify with (they are
/// skipped, as other implementations do).
pub(crate) fn parse_key(key: &Value) -> Result<Option<Jwk>, String> {
    let Value::Object(key) = key else {
        return Err("must be an object".into());
    };
    match key.get("use") {
        None => {}
        Some(Value::String(u)) if u == "sig" => {}
        Some(Value::String(_)) => return Ok(None),
        Some(_) => return Err("`use` must be a string".into()),
    }
    match key.get("key_ops") {
        None => {}
        Some(Value::Array(ops)) => {
            if !ops.iter().all(Value::is_string) {
                return Err("`key_ops` must be an array of strings".into());
            }
            if !ops.iter().any(|op| op == "verify") {
                return Ok(None);
            }
        }
        Some(_) => return Err("`key_ops` must be an array of strings".into()),
    }
    let kid = match key.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err("`kid` must be a string".into()),
    };
    let alg = match key.get("alg") {
        None => None,
        Some(Value::String(a)) => match Alg::from_name(a) {
            Some(alg) => Some(alg),
            None => return Ok(None), // e.g. RSA-OAEP or ES512 keys published beside ours
        },
        Some(_) => return Err("`alg` must be a string".into()),
    };
    let material = match field(key, "kty")? {
        "oct" => Material::Oct { k: bytes(key, "k")? },
        "RSA" => Material::Rsa { n: bytes(key, "n")?, e: bytes(key, "e")? },
        "EC" => {
            let crv = field(key, "crv")?;
            if crv != "P-256" && crv != "P-384" {
                return Ok(None);
            }
            Material::Ec { crv: crv.to_owned(), x: bytes(key, "x")?, y: bytes(key, "y")? }
        }
        "OKP" => {
            if field(key, "crv")? != "Ed25519" {
                return Ok(None);
            }
            Material::Ed25519 { x: bytes(key, "x")? }
        }
        _ => return Ok(None),
    };
    if let Some(alg) = alg
        && !material.fits(alg)
    {
        return Err(format!("`alg` {} does not fit the key type", alg.name()));
    }
    Ok(Some(Jwk { kid, alg, material }))
}

/// Parses a JWKS document (`{"keys": [...]}`) within `limits`.
pub fn parse_jwks(text: &[u8], limits: Limits) -> Result<Vec<Jwk>, JwksError> {
    parse_jwks_value(&parse_document(text, limits)?, limits)
}

/// As [`parse_jwks`], for an already parsed document. Strict: a key that cannot be parsed refuses
/// the whole set (for keys in the configuration, where the operator can fix it).
pub fn parse_jwks_value(doc: &Value, limits: Limits) -> Result<Vec<Jwk>, JwksError> {
    let mut out: Vec<Jwk> = Vec::new();
    for (index, key) in key_array(doc, limits)?.iter().enumerate() {
        let Some(jwk) = parse_key(key).map_err(|reason| JwksError::BadKey { index, reason })? else {
            continue;
        };
        check_unique(&out, &jwk)?;
        out.push(jwk);
    }
    if out.is_empty() {
        return Err(JwksError::Empty);
    }
    Ok(out)
}

/// The JSON document of a fetched key set, within `limits.max_bytes`.
pub fn parse_document(text: &[u8], limits: Limits) -> Result<Value, JwksError> {
    if text.len() > limits.max_bytes {
        return Err(JwksError::TooLarge(limits.max_bytes));
    }
    serde_json::from_slice(text).map_err(|e| JwksError::NotJson(e.to_string()))
}

/// The keys of a leniently parsed set, each with its index in the document, and the keys left
/// out.
pub type Lenient = (Vec<(usize, Jwk)>, Vec<Skipped>);

/// Lenient parsing of a fetched key set: a key that cannot be parsed is left out and reported
/// rather than refusing the set, so one broken key published beside the good ones cannot take a
/// provider down. Returns each kept key with its index in the document. The caps still refuse
/// the whole set; duplicate `kid`s are checked once the keys are compiled.
pub fn parse_jwks_lenient(doc: &Value, limits: Limits) -> Result<Lenient, JwksError> {
    let mut kept = Vec::new();
    let mut skipped = Vec::new();
    for (index, key) in key_array(doc, limits)?.iter().enumerate() {
        match parse_key(key) {
            Ok(Some(jwk)) => kept.push((index, jwk)),
            Ok(None) => {}
            Err(reason) => {
                let kid = key.get("kid").and_then(Value::as_str).map(str::to_owned);
                skipped.push(Skipped { index, kid, reason });
            }
        }
    }
    Ok((kept, skipped))
}

/// Refuses a second key with the same `kid`: which one a token means would be a guess.
pub(crate) fn check_unique(keys: &[Jwk], jwk: &Jwk) -> Result<(), JwksError> {
    match &jwk.kid {
        Some(kid) if keys.iter().any(|k| k.kid.as_ref() == Some(kid)) => {
            Err(JwksError::DuplicateKid(kid.clone()))
        }
        _ => Ok(()),
    }
}

fn key_array(doc: &Value, limits: Limits) -> Result<&Vec<Value>, JwksError> {
    let Some(Value::Array(keys)) = doc.get("keys") else {
        return Err(JwksError::NoKeysArray);
    };
    if keys.len() > limits.max_keys {
        return Err(JwksError::TooManyKeys(limits.max_keys));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EC: &str = r#"{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;

    #[test]
    fn duplicate_kids_are_rejected() {
        let doc = r#"{"keys":[{"kty":"oct","kid":"a","k":"AQID"},{"kty":"oct","kid":"a","k":"BAUG"}]}"#;
        assert_eq!(parse_jwks(doc.as_bytes(), Limits::default()), Err(JwksError::DuplicateKid("a".into())));
    }

    #[test]
    fn caps_are_enforced() {
        let keys: Vec<String> =
            (0..5).map(|i| format!(r#"{{"kty":"oct","kid":"{i}","k":"AQID"}}"#)).collect();
        let doc = format!(r#"{{"keys":[{}]}}"#, keys.join(","));
        let limits = Limits { max_bytes: 10_000, max_keys: 4 };
        assert_eq!(parse_jwks(doc.as_bytes(), limits), Err(JwksError::TooManyKeys(4)));
        let limits = Limits { max_bytes: 20, max_keys: 40 };
        assert_eq!(parse_jwks(doc.as_bytes(), limits), Err(JwksError::TooLarge(20)));
    }

    #[test]
    fn encryption_and_unknown_keys_are_skipped_bad_ones_refused() {
        let doc = format!(
            r#"{{"keys":[{{"kty":"RSA","use":"enc","n":"AQ","e":"AQAB"}},{{"kty":"EC","crv":"P-521","x":"AQ","y":"AQ"}},{EC}]}}"#
        );
        let keys = parse_jwks(doc.as_bytes(), Limits::default()).unwrap();
        assert_eq!(keys.len(), 1);
        assert!(keys[0].material.fits(Alg::ES256));
        assert!(!keys[0].material.fits(Alg::ES384));
        assert!(!keys[0].material.fits(Alg::HS256));

        let bad = r#"{"keys":[{"kty":"RSA","n":"AQ=="}]}"#;
        assert!(matches!(
            parse_jwks(bad.as_bytes(), Limits::default()),
            Err(JwksError::BadKey { index: 0, .. })
        ));
        let mismatch = r#"{"keys":[{"kty":"oct","alg":"RS256","k":"AQID"}]}"#;
        assert!(matches!(parse_jwks(mismatch.as_bytes(), Limits::default()), Err(JwksError::BadKey { .. })));
        assert_eq!(parse_jwks(b"{}", Limits::default()), Err(JwksError::NoKeysArray));
        assert_eq!(parse_jwks(br#"{"keys":[]}"#, Limits::default()), Err(JwksError::Empty));
        assert!(matches!(parse_jwks(b"<html>", Limits::default()), Err(JwksError::NotJson(_))));
    }

    /// RFC 7517 §4.2 and §4.3: a key published for other operations never verifies a signature.
    #[test]
    fn keys_not_for_verifying_are_skipped() {
        let with =
            |extra: &str| format!(r#"{{"keys":[{},{EC}]}}"#, EC.replacen('{', &format!("{{{extra},"), 1));
        let count = |doc: String| parse_jwks(doc.as_bytes(), Limits::default()).unwrap().len();
        assert_eq!(count(with(r#""key_ops":["verify"]"#)), 2);
        assert_eq!(count(with(r#""key_ops":["sign","verify"],"use":"sig""#)), 2);
        assert_eq!(count(with(r#""key_ops":["sign"]"#)), 1, "a signing-only key is left out");
        assert_eq!(count(with(r#""key_ops":["encrypt","wrapKey"]"#)), 1);
        assert_eq!(count(with(r#""key_ops":[]"#)), 1);
        assert_eq!(count(with(r#""use":"enc""#)), 1);
        assert_eq!(count(with(r#""use":"SIG""#)), 1, "`use` values are case-sensitive");
        // Malformed members make the key unusable (refused here, skipped in a fetched set).
        for bad in [r#""key_ops":"verify""#, r#""key_ops":["verify",1]"#, r#""use":1"#] {
            assert!(
                matches!(
                    parse_jwks(with(bad).as_bytes(), Limits::default()),
                    Err(JwksError::BadKey { index: 0, .. })
                ),
                "{bad}"
            );
        }
        let only_signing = format!(r#"{{"keys":[{}]}}"#, EC.replacen('{', r#"{"key_ops":["sign"],"#, 1));
        assert_eq!(parse_jwks(only_signing.as_bytes(), Limits::default()), Err(JwksError::Empty));
    }

    #[test]
    fn lenient_parsing_reports_bad_keys_and_keeps_the_others() {
        let doc = parse_document(
            format!(r#"{{"keys":[{{"kty":"RSA","kid":"broken","n":"AQ=="}},{{"kty":"oct","use":"enc","k":"AQ"}},{EC},7]}}"#)
                .as_bytes(),
            Limits::default(),
        )
        .unwrap();
        let (kept, skipped) = parse_jwks_lenient(&doc, Limits::default()).unwrap();
        assert_eq!(kept.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![2]);
        assert_eq!(skipped.len(), 2);
        assert_eq!(skipped[0].index, 0);
        assert_eq!(skipped[0].kid.as_deref(), Some("broken"));
        assert_eq!(skipped[1].to_string(), "keys[3]: must be an object");
        assert!(skipped[0].to_string().starts_with("keys[0] (kid `broken`): "), "{}", skipped[0]);
        // The caps still refuse the whole set.
        let limits = Limits { max_bytes: 1 << 16, max_keys: 2 };
        assert_eq!(parse_jwks_lenient(&doc, limits), Err(JwksError::TooManyKeys(2)));
        assert_eq!(parse_document(b"{}", Limits { max_bytes: 1, max_keys: 1 }), Err(JwksError::TooLarge(1)));
    }
}
