//! Claim checks (RFC 7519 §4.1, RFC 8725 §3.8–3.11) and per-route requirements.

use serde_json::{Map, Value};

use super::Deny;

/// A provider's claim rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRules {
    /// Exact `iss`.
    pub issuer: String,
    /// The token's `aud` must contain one of these.
    pub audiences: Vec<String>,
    pub require_exp: bool,
    pub clock_skew_s: i64,
    /// Longest accepted `exp - iat` (or `exp - now` without `iat`).
    pub max_lifetime_s: Option<i64>,
    /// Required header `typ` (compared case-insensitively, `application/` prefix optional).
    pub typ: Option<String>,
    pub require_subject: bool,
}

/// Who the token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub subject: String,
    pub issuer: String,
    pub scopes: Vec<String>,
    /// `exp`, when the token has one.
    pub expires_at_s: Option<i64>,
}

fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, Deny> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Ok(Some(i)),
            (None, Some(f)) if f.is_finite() && f.abs() < 1e15 => Ok(Some(f.floor() as i64)),
            _ => Err(Deny::Malformed),
        },
        Some(_) => Err(Deny::Malformed),
    }
}

/// The scopes of `scope` (space-separated, RFC 8693) or `scp` (string or array).
pub fn scopes(claims: &Map<String, Value>) -> Vec<String> {
    let mut out = Vec::new();
    for name in ["scope", "scp"] {
        match claims.get(name) {
            Some(Value::String(s)) => out.extend(s.split_whitespace().map(str::to_owned)),
            Some(Value::Array(items)) => {
                out.extend(items.iter().filter_map(Value::as_str).map(str::to_owned));
            }
            _ => {}
        }
    }
    out.dedup();
    out
}

fn typ_matches(expected: &str, actual: Option<&str>) -> bool {
    let norm = |s: &str| {
        let lower = s.to_ascii_lowercase();
        lower.strip_prefix("application/").map(str::to_owned).unwrap_or(lower)
    };
    actual.is_some_and(|a| norm(a) == norm(expected))
}

/// Checks the claims of a token whose signature verified (or whose verification is cached).
pub fn check(
    claims: &Map<String, Value>,
    typ: Option<&str>,
    rules: &ClaimRules,
    now_s: i64,
) -> Result<Identity, Deny> {
    let skew = rules.clock_skew_s;
    match claims.get("iss") {
        Some(Value::String(iss)) if *iss == rules.issuer => {}
        _ => return Err(Deny::UnknownIssuer),
    }
    if let Some(expected) = &rules.typ
        && !typ_matches(expected, typ)
    {
        return Err(Deny::WrongType);
    }
    let exp = numeric_date(claims, "exp")?;
    let nbf = numeric_date(claims, "nbf")?;
    let iat = numeric_date(claims, "iat")?;
    match exp {
        None if rules.require_exp => return Err(Deny::MissingExp),
        Some(exp) if now_s >= exp.saturating_add(skew) => return Err(Deny::Expired),
        _ => {}
    }
    if let Some(nbf) = nbf
        && now_s.saturating_add(skew) < nbf
    {
        return Err(Deny::NotYetValid);
    }
    if let Some(iat) = iat
        && iat > now_s.saturating_add(skew)
    {
        return Err(Deny::IssuedInFuture);
    }
    if let (Some(max), Some(exp)) = (rules.max_lifetime_s, exp) {
        let lifetime = exp.saturating_sub(iat.unwrap_or(now_s));
        if lifetime > max.saturating_add(skew) {
            return Err(Deny::LifetimeTooLong);
        }
    }
    let audience_ok = match claims.get("aud") {
        Some(Value::String(aud)) => rules.audiences.iter().any(|a| a == aud),
        Some(Value::Array(auds)) => {
            auds.iter().filter_map(Value::as_str).any(|aud| rules.audiences.iter().any(|a| a == aud))
        }
        _ => false,
    };
    if !audience_ok {
        return Err(Deny::WrongAudience);
    }
    let subject = match claims.get("sub") {
        Some(Value::String(sub)) if !sub.is_empty() => sub.clone(),
        None if !rules.require_subject => String::new(),
        Some(_) if !rules.require_subject => String::new(),
        _ => return Err(Deny::MissingSubject),
    };
    Ok(Identity { subject, issuer: rules.issuer.clone(), scopes: scopes(claims), expires_at_s: exp })
}

/// What a route asks of a valid token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requirements {
    /// Every one of these scopes.
    pub scopes: Vec<String>,
    /// Claim name → required value (equal, or contained when the claim is an array).
    pub claims: Vec<(String, String)>,
}

pub fn check_requirements(
    claims: &Map<String, Value>,
    identity: &Identity,
    req: &Requirements,
) -> Result<(), Deny> {
    if !req.scopes.iter().all(|s| identity.scopes.contains(s)) {
        return Err(Deny::InsufficientScope);
    }
    for (name, want) in &req.claims {
        let ok = match claims.get(name) {
            Some(Value::Array(items)) => items.iter().any(|v| claim_text(v).as_deref() == Some(want)),
            Some(v) => claim_text(v).as_deref() == Some(want.as_str()),
            None => false,
        };
        if !ok {
            return Err(Deny::ClaimMismatch);
        }
    }
    Ok(())
}

/// A claim as header text: strings as they are, numbers and booleans printed, arrays of
/// those joined with `,`. `None` for objects, nulls and anything with control characters
/// (which cannot go into a header).
pub fn claim_text(value: &Value) -> Option<String> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Array(items) => {
            let parts: Option<Vec<String>> = items
                .iter()
                .map(|v| match v {
                    Value::Array(_) => None,
                    other => claim_text(other),
                })
                .collect();
            parts?.join(",")
        }
        Value::Null | Value::Object(_) => return None,
    };
    (!text.chars().any(char::is_control)).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_700_000_000;

    fn rules() -> ClaimRules {
        ClaimRules {
            issuer: "https://idp.example/realms/demo".into(),
            audiences: vec!["api".into(), "other".into()],
            require_exp: true,
            clock_skew_s: 60,
            max_lifetime_s: None,
            typ: None,
            require_subject: true,
        }
    }

    fn claims(v: Value) -> Map<String, Value> {
        let Value::Object(mut m) = v else { unreachable!() };
        let base =
            json!({"iss": "https://idp.example/realms/demo", "aud": "api", "sub": "alice", "exp": NOW + 300});
        for (k, v) in base.as_object().unwrap() {
            m.entry(k.clone()).or_insert(v.clone());
        }
        m.retain(|_, v| !v.is_null());
        m
    }

    fn run(v: Value) -> Result<Identity, Deny> {
        check(&claims(v), None, &rules(), NOW)
    }

    #[test]
    fn a_good_token_yields_its_identity() {
        let id = run(json!({"scope": "read write", "scp": ["admin"]})).unwrap();
        assert_eq!(id.subject, "alice");
        assert_eq!(id.issuer, "https://idp.example/realms/demo");
        assert_eq!(id.scopes, vec!["read", "write", "admin"]);
        assert_eq!(id.expires_at_s, Some(NOW + 300));
    }

    #[test]
    fn expiry_edges_with_skew() {
        assert_eq!(run(json!({"exp": NOW - 61})), Err(Deny::Expired));
        assert_eq!(run(json!({"exp": NOW - 60})), Err(Deny::Expired), "exp + skew == now is expired");
        assert!(run(json!({"exp": NOW - 59})).is_ok(), "within skew");
        assert_eq!(run(json!({"exp": null})), Err(Deny::MissingExp));
        assert_eq!(run(json!({"exp": "soon"})), Err(Deny::Malformed));
        assert!(run(json!({"exp": (NOW + 10) as f64 + 0.5})).is_ok());
        assert_eq!(run(json!({"exp": 1e300})), Err(Deny::Malformed));
        let mut lenient = rules();
        lenient.require_exp = false;
        assert!(check(&claims(json!({"exp": null})), None, &lenient, NOW).is_ok());
    }

    #[test]
    fn nbf_and_iat_edges() {
        assert!(run(json!({"nbf": NOW + 60})).is_ok(), "within skew");
        assert_eq!(run(json!({"nbf": NOW + 61})), Err(Deny::NotYetValid));
        assert!(run(json!({"iat": NOW + 60})).is_ok());
        assert_eq!(run(json!({"iat": NOW + 61})), Err(Deny::IssuedInFuture));
        assert_eq!(run(json!({"nbf": [1]})), Err(Deny::Malformed));
    }

    #[test]
    fn max_lifetime() {
        let mut r = rules();
        r.max_lifetime_s = Some(3600);
        let ok = claims(json!({"iat": NOW, "exp": NOW + 3600}));
        assert!(check(&ok, None, &r, NOW).is_ok());
        let long = claims(json!({"iat": NOW, "exp": NOW + 3600 + 61}));
        assert_eq!(check(&long, None, &r, NOW), Err(Deny::LifetimeTooLong));
        let no_iat = claims(json!({"exp": NOW + 86_400}));
        assert_eq!(check(&no_iat, None, &r, NOW), Err(Deny::LifetimeTooLong));
    }

    #[test]
    fn issuer_audience_subject_typ() {
        assert_eq!(run(json!({"iss": "https://idp.example/realms/demo/"})), Err(Deny::UnknownIssuer));
        assert_eq!(run(json!({"iss": 5})), Err(Deny::UnknownIssuer));
        assert_eq!(run(json!({"aud": "API"})), Err(Deny::WrongAudience));
        assert_eq!(run(json!({"aud": []})), Err(Deny::WrongAudience));
        assert!(run(json!({"aud": ["x", "other"]})).is_ok());
        assert_eq!(run(json!({"aud": null})), Err(Deny::WrongAudience));
        assert_eq!(run(json!({"sub": ""})), Err(Deny::MissingSubject));
        assert_eq!(run(json!({"sub": null})), Err(Deny::MissingSubject));
        let mut r = rules();
        r.typ = Some("at+jwt".into());
        assert_eq!(check(&claims(json!({})), Some("JWT"), &r, NOW), Err(Deny::WrongType));
        assert_eq!(check(&claims(json!({})), None, &r, NOW), Err(Deny::WrongType));
        assert!(check(&claims(json!({})), Some("application/AT+JWT"), &r, NOW).is_ok());
    }

    #[test]
    fn route_requirements() {
        let c = claims(json!({"scope": "read", "roles": ["admin", "dev"], "tenant": "acme", "level": 3}));
        let id = check(&c, None, &rules(), NOW).unwrap();
        let req = |scopes: &[&str], claims: &[(&str, &str)]| Requirements {
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            claims: claims.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        };
        assert!(
            check_requirements(&c, &id, &req(&["read"], &[("roles", "admin"), ("tenant", "acme")])).is_ok()
        );
        assert!(check_requirements(&c, &id, &req(&[], &[("level", "3")])).is_ok());
        assert_eq!(check_requirements(&c, &id, &req(&["write"], &[])), Err(Deny::InsufficientScope));
        assert_eq!(check_requirements(&c, &id, &req(&[], &[("tenant", "other")])), Err(Deny::ClaimMismatch));
        assert_eq!(check_requirements(&c, &id, &req(&[], &[("missing", "x")])), Err(Deny::ClaimMismatch));
    }

    #[test]
    fn claim_text_never_yields_header_breaking_values() {
        assert_eq!(claim_text(&json!("a@b")), Some("a@b".into()));
        assert_eq!(claim_text(&json!(["a", 1, true])), Some("a,1,true".into()));
        assert_eq!(claim_text(&json!("a\r\nx-evil: 1")), None);
        assert_eq!(claim_text(&json!({"a": 1})), None);
        assert_eq!(claim_text(&json!([["a"]])), None);
        assert_eq!(claim_text(&json!(null)), None);
    }
}
