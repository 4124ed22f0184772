//! Claim checks (RFC 7519 §4.1, RFC 8725 §3.8–3.11) and per-route requirements.

use serde_json::{Map, Value};

use super::Deny;
use crate::identity::scopes_value;

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

/// Who the token speaks for. Every part of it can be passed on as it is ([`header_safe`],
/// [`scopes_value`]): [`check`] refuses a token whose identity cannot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `sub`; `None` when the token has none (allowed unless `require_subject`).
    pub subject: Option<String>,
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

/// The scopes of `scope` or `scp`: a string is split on spaces (RFC 6749 §3.3, RFC 8693 §4.2),
/// and only on spaces (a tab or a no-break space is part of a scope, which [`check`] then
/// refuses); an array gives one scope per string element, as it is (an element `"read admin"`
/// is one scope, never `read` and `admin`).
pub fn scopes(claims: &Map<String, Value>) -> Vec<String> {
    let mut out = Vec::new();
    for name in ["scope", "scp"] {
        match claims.get(name) {
            Some(Value::String(s)) => out.extend(s.split(' ').filter(|s| !s.is_empty()).map(str::to_owned)),
            Some(Value::Array(items)) => {
                out.extend(items.iter().filter_map(Value::as_str).map(str::to_owned));
            }
            _ => {}
        }
    }
    out.dedup();
    out
}

/// Whether `text` can be passed on in a header (and read back) exactly as it is: not empty, no
/// control characters (CR, LF and NUL would be refused by the proxy, a tab is read as
/// whitespace), no space at either end (a receiver trims it: `" alice"` would arrive as
/// `alice`).
pub fn header_safe(text: &str) -> bool {
    !text.is_empty() && !text.chars().any(char::is_control) && !text.starts_with(' ') && !text.ends_with(' ')
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
        Some(Value::String(sub)) if !sub.is_empty() => Some(sub.clone()),
        None if !rules.require_subject => None,
        Some(_) if !rules.require_subject => None,
        _ => return Err(Deny::MissingSubject),
    };
    // An identity that cannot be passed on as it is would reach the upstream empty, cut or
    // read differently: refuse the token (RFC 6750 §3.1 invalid_token, since the token's claims
    // are not usable; no scope the client could ask for would help, so not 403).
    if subject.as_deref().is_some_and(|s| !header_safe(s)) {
        return Err(Deny::UnpublishableIdentity);
    }
    let scopes = scopes(claims);
    if scopes_value(&scopes).is_none() {
        return Err(Deny::UnpublishableIdentity);
    }
    Ok(Identity { subject, issuer: rules.issuer.clone(), scopes, expires_at_s: exp })
}

/// How a verified identity travels: request headers for the upstream and filter-state
/// properties for later filters, each value exactly as it is sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Published {
    pub headers: Vec<(String, String)>,
    pub properties: Vec<(String, String)>,
}

/// What to publish for `identity`: consumer id and subject (when there is a `sub`), issuer,
/// scopes (space-separated, [`scopes_value`]) and each mapped claim (`claim_headers`: header →
/// claim) the token has. A claim the token lacks (or holds `null` or `""`) sets nothing; one that
/// cannot be written as a header value ([`claim_text`], [`header_safe`]) refuses the token,
/// as does any other part of the identity that cannot be passed on as it is.
pub fn published(
    identity: &Identity,
    claims: &Map<String, Value>,
    claim_headers: &[(String, String)],
) -> Result<Published, Deny> {
    use crate::identity::{
        CONSUMER_HEADER, ISSUER_HEADER, PROP_CLAIMS_PREFIX, PROP_CONSUMER, PROP_ISSUER, PROP_SCOPES,
        PROP_SUBJECT, SCOPES_HEADER,
    };
    let mut out = Published::default();
    if let Some(subject) = &identity.subject {
        if !header_safe(subject) {
            return Err(Deny::UnpublishableIdentity);
        }
        out.headers.push((CONSUMER_HEADER.to_owned(), subject.clone()));
        out.properties.push((PROP_CONSUMER.to_owned(), subject.clone()));
        out.properties.push((PROP_SUBJECT.to_owned(), subject.clone()));
    }
    if !header_safe(&identity.issuer) {
        return Err(Deny::UnpublishableIdentity);
    }
    out.headers.push((ISSUER_HEADER.to_owned(), identity.issuer.clone()));
    out.properties.push((PROP_ISSUER.to_owned(), identity.issuer.clone()));
    let scopes = scopes_value(&identity.scopes).ok_or(Deny::UnpublishableIdentity)?;
    out.headers.push((SCOPES_HEADER.to_owned(), scopes.clone()));
    out.properties.push((PROP_SCOPES.to_owned(), scopes));
    for (header, claim) in claim_headers {
        let text = match claims.get(claim) {
            None | Some(Value::Null) => continue,
            Some(value) => claim_text(value).ok_or(Deny::UnpublishableIdentity)?,
        };
        if text.is_empty() {
            continue;
        }
        if !header_safe(&text) {
            return Err(Deny::UnpublishableIdentity);
        }
        out.headers.push((header.clone(), text.clone()));
        out.properties.push((format!("{PROP_CLAIMS_PREFIX}{claim}"), text));
    }
    Ok(out)
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
/// those joined with `,`. `None` for objects, nulls, anything with control characters (which
/// cannot go into a header), and arrays that would not read back as they are: an element that
/// is empty, holds a comma or has a space at either end (`["a,b"]` would read as two values).
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
                    other => claim_text(other).filter(|t| header_safe(t) && !t.contains(',')),
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
        assert_eq!(id.subject.as_deref(), Some("alice"));
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
        // Arrays whose elements would not read back as they are.
        assert_eq!(claim_text(&json!(["a,b", "c"])), None);
        assert_eq!(claim_text(&json!(["a", " b"])), None);
        assert_eq!(claim_text(&json!(["a", ""])), None);
        assert_eq!(claim_text(&json!([])), Some(String::new()));
    }

    #[test]
    fn scope_strings_split_on_spaces_only() {
        let scopes_of = |v: Value| scopes(&claims(v));
        assert_eq!(scopes_of(json!({"scope": " read  write "})), vec!["read", "write"]);
        assert_eq!(scopes_of(json!({"scope": "read\tadmin"})), vec!["read\tadmin"]);
        assert_eq!(scopes_of(json!({"scope": "read\u{a0}admin"})), vec!["read\u{a0}admin"]);
        assert_eq!(scopes_of(json!({"scp": ["read admin", "x"]})), vec!["read admin", "x"]);
        assert_eq!(
            scopes_of(json!({"scope": ["read,admin"], "scp": "orders"})),
            vec!["read,admin", "orders"]
        );
        assert_eq!(scopes_of(json!({"scp": [1, "x", null]})), vec!["x"]);
    }

    /// An identity that cannot be passed on as it is refuses the token: never an empty, cut or
    /// split identity upstream.
    #[test]
    fn identities_that_cannot_be_passed_on_are_refused() {
        for sub in ["alice\r\nx-evil: 1", "al\u{0}ice", " alice", "alice ", "a\tb", "bob\u{7f}", "x\u{85}"] {
            assert_eq!(run(json!({"sub": sub})), Err(Deny::UnpublishableIdentity), "{sub:?}");
        }
        for scope in
            [json!({"scp": ["read admin"]}), json!({"scope": "read\tadmin"}), json!({"scope": ["a\r\nb"]})]
        {
            assert_eq!(run(scope.clone()), Err(Deny::UnpublishableIdentity), "{scope}");
        }
        // Faithful ones pass: commas and non-ASCII text travel as they are.
        let id = run(json!({"sub": "zoë@example.com", "scp": ["read,admin", "x"]})).unwrap();
        assert_eq!(id.scopes, vec!["read,admin", "x"]);
        assert_eq!(scopes_value(&id.scopes).as_deref(), Some("read,admin x"));
        // No subject (allowed without require_subject) is no subject, not an empty one.
        let mut lenient = rules();
        lenient.require_subject = false;
        assert_eq!(check(&claims(json!({"sub": null})), None, &lenient, NOW).unwrap().subject, None);
        assert_eq!(check(&claims(json!({"sub": ""})), None, &lenient, NOW).unwrap().subject, None);
        assert_eq!(
            check(&claims(json!({"sub": "a\nb"})), None, &lenient, NOW),
            Err(Deny::UnpublishableIdentity)
        );
    }

    #[test]
    fn the_published_identity_is_exact_or_refused() {
        let mapping = vec![
            ("x-user-email".to_owned(), "email".to_owned()),
            ("x-user-roles".to_owned(), "roles".to_owned()),
            ("x-user-team".to_owned(), "team".to_owned()),
        ];
        let c = claims(
            json!({"scp": ["orders", "read,admin"], "email": "a@b", "roles": ["x", "y"], "team": null}),
        );
        let id = check(&c, None, &rules(), NOW).unwrap();
        let p = published(&id, &c, &mapping).unwrap();
        let header = |n: &str| p.headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(header("x-tollgate-consumer-id"), Some("alice"));
        assert_eq!(header("x-tollgate-issuer"), Some("https://idp.example/realms/demo"));
        assert_eq!(header("x-tollgate-scopes"), Some("orders read,admin"));
        assert_eq!(header("x-user-email"), Some("a@b"));
        assert_eq!(header("x-user-roles"), Some("x,y"));
        assert_eq!(header("x-user-team"), None, "a null claim sets nothing");
        let prop = |n: &str| p.properties.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(prop("tollgate.consumer_id"), Some("alice"));
        assert_eq!(prop("tollgate.subject"), Some("alice"));
        assert_eq!(prop("tollgate.scopes"), Some("orders read,admin"));
        assert_eq!(prop("tollgate.claims.email"), Some("a@b"));

        for bad in [
            json!({"email": "a@b\r\nx-evil: 1"}),
            json!({"email": {"primary": "a@b"}}),
            json!({"email": " a@b"}),
            json!({"roles": ["x", "y,z"]}),
        ] {
            let c = claims(bad.clone());
            let id = check(&c, None, &rules(), NOW).unwrap();
            assert_eq!(published(&id, &c, &mapping), Err(Deny::UnpublishableIdentity), "{bad}");
        }
        // Without a subject, no consumer id at all (never an empty one).
        let mut lenient = rules();
        lenient.require_subject = false;
        let c = claims(json!({"sub": null, "email": ""}));
        let id = check(&c, None, &lenient, NOW).unwrap();
        let p = published(&id, &c, &mapping).unwrap();
        assert!(p.headers.iter().all(|(k, _)| k != "x-tollgate-consumer-id" && k != "x-user-email"), "{p:?}");
        assert!(p.properties.iter().all(|(k, _)| k != "tollgate.consumer_id"), "{p:?}");
        // An identity built by hand is checked too.
        let forged = Identity { subject: Some("a\nb".into()), ..id };
        assert_eq!(published(&forged, &c, &mapping), Err(Deny::UnpublishableIdentity));
    }
}
