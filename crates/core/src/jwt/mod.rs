//! JWT and OAuth 2.0 bearer-token checks for the jwt-auth filter.
//!
//! - [`jws`]: compact JWS parsing with the key-independent checks of RFC 8725;
//! - [`jwk`]: JWKS parsing with size and key-count caps and duplicate-`kid` rejection;
//! - [`keys`] (feature `jwt`): verifying keys and signature verification, the algorithm chosen
//!   by the trusted key's type and the provider's allow-list, never by the token alone;
//! - [`claims`]: `iss`, `aud`, `exp`, `nbf`, `iat`, lifetime, `typ`, scopes and route rules;
//! - [`config`]: the filter's schema; [`cache`]: the verified-token cache codec;
//! - [`introspection`]: RFC 7662 requests and answers, OpenID discovery documents;
//! - [`fetch`]: when a remote key set is fetched (the proxy-wide lease, back-off after a
//!   failure, unknown-`kid` cooldown) and for how long it is used.
//!
//! Everything is plain data with the clock passed in.

pub mod b64;
pub mod cache;
pub mod claims;
pub mod config;
pub mod fetch;
pub mod introspection;
pub mod jwk;
pub mod jws;
#[cfg(feature = "jwt")]
pub mod keys;

use config::Source;

/// Why a request is refused. Clients get a short RFC 6750 description; logs and stats get
/// [`Deny::reason`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Deny {
    MissingToken,
    MultipleTokens,
    TokenTooLarge,
    Malformed,
    AlgNone,
    UnsupportedAlg,
    AlgNotAllowed,
    CriticalHeader,
    EmbeddedKey,
    UnknownIssuer,
    UnknownKid,
    NoMatchingKey,
    BadSignature,
    MissingExp,
    Expired,
    NotYetValid,
    IssuedInFuture,
    LifetimeTooLong,
    WrongAudience,
    WrongType,
    MissingSubject,
    InsufficientScope,
    ClaimMismatch,
    KeysUnavailable,
    InactiveToken,
    IntrospectionFailed,
    /// The path cannot be matched against the route rules (see [`crate::route::normalize_path`]).
    BadPath,
    /// The token's subject, scopes or a mapped claim cannot be passed on exactly as they are
    /// (see [`claims::header_safe`]): the request is refused rather than sent on with an
    /// identity that is empty, missing or reads differently upstream.
    UnpublishableIdentity,
}

impl Deny {
    pub const ALL: [Deny; 28] = [
        Deny::MissingToken,
        Deny::MultipleTokens,
        Deny::TokenTooLarge,
        Deny::Malformed,
        Deny::AlgNone,
        Deny::UnsupportedAlg,
        Deny::AlgNotAllowed,
        Deny::CriticalHeader,
        Deny::EmbeddedKey,
        Deny::UnknownIssuer,
        Deny::UnknownKid,
        Deny::NoMatchingKey,
        Deny::BadSignature,
        Deny::MissingExp,
        Deny::Expired,
        Deny::NotYetValid,
        Deny::IssuedInFuture,
        Deny::LifetimeTooLong,
        Deny::WrongAudience,
        Deny::WrongType,
        Deny::MissingSubject,
        Deny::InsufficientScope,
        Deny::ClaimMismatch,
        Deny::KeysUnavailable,
        Deny::InactiveToken,
        Deny::IntrospectionFailed,
        Deny::BadPath,
        Deny::UnpublishableIdentity,
    ];

    pub fn status(self) -> u32 {
        match self {
            Deny::InsufficientScope | Deny::ClaimMismatch => 403,
            Deny::KeysUnavailable | Deny::IntrospectionFailed => 503,
            Deny::BadPath => crate::route::PATH_REFUSED_STATUS,
            _ => 401,
        }
    }

    /// The `error` field of the JSON body.
    pub fn code(self) -> &'static str {
        match self.status() {
            400 => "bad_request",
            403 => "forbidden",
            503 => "unavailable",
            _ => "unauthorized",
        }
    }

    /// The RFC 6750 error code for `WWW-Authenticate`; `None` when the request had no token
    /// (RFC 6750 §3.1: no error code then) or the failure is ours.
    pub fn bearer_error(self) -> Option<&'static str> {
        match self {
            Deny::MissingToken | Deny::KeysUnavailable | Deny::IntrospectionFailed => None,
            Deny::MultipleTokens | Deny::BadPath => Some("invalid_request"),
            Deny::InsufficientScope | Deny::ClaimMismatch => Some("insufficient_scope"),
            _ => Some("invalid_token"),
        }
    }

    /// What the client is told (also the `error_description`). Says which check failed, as
    /// identity providers and Envoy do, never anything about keys or secrets.
    pub fn message(self) -> &'static str {
        match self {
            Deny::MissingToken => "a bearer token is required",
            Deny::MultipleTokens => "send one token, not several",
            Deny::TokenTooLarge => "the token is too large",
            Deny::Expired => "the token has expired",
            Deny::NotYetValid | Deny::IssuedInFuture => "the token is not valid yet",
            Deny::UnknownIssuer => "the token's issuer is not accepted",
            Deny::WrongAudience => "the token's audience is not accepted",
            Deny::InsufficientScope => "the token lacks a scope this route requires",
            Deny::ClaimMismatch => "the token lacks a claim this route requires",
            Deny::KeysUnavailable => "the identity provider's keys are unavailable; try again later",
            Deny::IntrospectionFailed => "the identity provider cannot check the token now; try again later",
            Deny::InactiveToken => "the token is not active",
            Deny::BadPath => crate::route::PATH_REFUSED_MESSAGE,
            Deny::UnpublishableIdentity => "the token's subject, scopes or claims cannot be passed on",
            Deny::BadSignature | Deny::UnknownKid | Deny::NoMatchingKey => {
                "the token's signature is not valid"
            }
            _ => "the token is not valid",
        }
    }

    /// The stat and log reason.
    pub fn reason(self) -> &'static str {
        match self {
            Deny::MissingToken => "missing_token",
            Deny::MultipleTokens => "multiple_tokens",
            Deny::TokenTooLarge => "token_too_large",
            Deny::Malformed => "malformed",
            Deny::AlgNone => "alg_none",
            Deny::UnsupportedAlg => "unsupported_alg",
            Deny::AlgNotAllowed => "alg_not_allowed",
            Deny::CriticalHeader => "crit_header",
            Deny::EmbeddedKey => "embedded_key",
            Deny::UnknownIssuer => "unknown_issuer",
            Deny::UnknownKid => "unknown_kid",
            Deny::NoMatchingKey => "no_matching_key",
            Deny::BadSignature => "bad_signature",
            Deny::MissingExp => "missing_exp",
            Deny::Expired => "expired",
            Deny::NotYetValid => "not_yet_valid",
            Deny::IssuedInFuture => "iat_in_future",
            Deny::LifetimeTooLong => "lifetime_too_long",
            Deny::WrongAudience => "wrong_audience",
            Deny::WrongType => "wrong_typ",
            Deny::MissingSubject => "missing_subject",
            Deny::InsufficientScope => "insufficient_scope",
            Deny::ClaimMismatch => "claim_mismatch",
            Deny::KeysUnavailable => "keys_unavailable",
            Deny::InactiveToken => "inactive_token",
            Deny::IntrospectionFailed => "introspection_unavailable",
            Deny::BadPath => "bad_path",
            Deny::UnpublishableIdentity => "unpublishable_identity",
        }
    }

    /// The `WWW-Authenticate` challenge (RFC 6750 §3).
    pub fn challenge(self, realm: &str, required_scopes: &[String]) -> String {
        let mut out = format!("Bearer realm=\"{}\"", quote_safe(realm));
        if let Some(error) = self.bearer_error() {
            out.push_str(&format!(", error=\"{error}\", error_description=\"{}\"", self.message()));
        }
        if self == Deny::InsufficientScope && !required_scopes.is_empty() {
            out.push_str(&format!(", scope=\"{}\"", quote_safe(&required_scopes.join(" "))));
        }
        out
    }
}

crate::impl_denial!(Deny, challenges = Deny::challenges);

impl Deny {
    /// Every refusal but the provider's unavailability (503) carries the Bearer challenge, with
    /// its RFC 6750 error code when there is one.
    fn challenges(self) -> bool {
        self.status() != 503
    }
}

fn quote_safe(s: &str) -> String {
    s.chars().filter(|c| *c != '"' && *c != '\\' && !c.is_control()).collect()
}

/// Every value of cookie `name` in one `Cookie` field value. Cookie pairs are separated by `;`
/// (RFC 6265 §5.4) and also by `,`, as a proxy or client that joins repeated `Cookie` lines like
/// any other list header writes them (a cookie value may not hold a comma, §4.1.1, so nothing
/// is lost). Values in double quotes are unquoted.
pub fn cookie_values<'a>(header: &'a str, name: &str) -> Vec<&'a str> {
    header
        .split([';', ','])
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k.trim() == name).then(|| v.trim().trim_matches('"'))
        })
        .collect()
}

/// Finds the token among the configured sources. `headers` are the request's field lines
/// (lower-case names, one entry per line, as the proxy lists them): every line of a header
/// source is looked at, and every `Cookie` line and every pair in it (Envoy keeps two HTTP/1
/// `Cookie` lines as two lines, and a lookup by name answers only the first; it joins HTTP/2
/// cookie crumbs with `; `). A request carrying more than one token (in two sources, twice in
/// one, or in two lines) is refused.
pub fn find_token(sources: &[Source], headers: &[(String, String)], query: &str) -> Result<String, Deny> {
    let lines = |name: &str| {
        let name = name.to_owned();
        headers.iter().filter(move |(n, _)| n.eq_ignore_ascii_case(&name)).map(|(_, v)| v.as_str())
    };
    let mut found: Vec<String> = Vec::new();
    for source in sources {
        match source {
            Source::Header { name, prefix } => {
                for value in lines(name) {
                    match prefix {
                        Some(p) => {
                            if let Some(token) = crate::route::strip_prefix_ignore_case(value, p) {
                                found.push(token.trim().to_owned());
                            }
                        }
                        None => found.push(value.trim().to_owned()),
                    }
                }
            }
            Source::Query { name } => found.extend(crate::route::query_param(query, name)),
            Source::Cookie { name } => {
                for cookies in lines("cookie") {
                    found.extend(cookie_values(cookies, name).into_iter().map(str::to_owned));
                }
            }
        }
        if found.len() > 1 {
            return Err(Deny::MultipleTokens);
        }
    }
    match found.pop() {
        Some(token) if !token.is_empty() => Ok(token),
        _ => Err(Deny::MissingToken),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources() -> Vec<Source> {
        vec![
            Source::Header { name: "authorization".into(), prefix: Some("Bearer ".into()) },
            Source::Query { name: "access_token".into() },
            Source::Cookie { name: "session".into() },
        ]
    }

    fn h(lines: &[(&str, &str)]) -> Vec<(String, String)> {
        lines.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn token_comes_from_any_source() {
        let auth = |v: &str| h(&[("authorization", v)]);
        assert_eq!(find_token(&sources(), &auth("Bearer a.b.c"), ""), Ok("a.b.c".into()));
        assert_eq!(find_token(&sources(), &auth("bearer  a.b.c "), ""), Ok("a.b.c".into()));
        assert_eq!(find_token(&sources(), &[], "x=1&access_token=q.r.s"), Ok("q.r.s".into()));
        let cookie = h(&[("cookie", "a=1; session=c.d.e; b=2")]);
        assert_eq!(find_token(&sources(), &cookie, ""), Ok("c.d.e".into()));
        assert_eq!(find_token(&sources(), &auth("Basic dXNlcg=="), ""), Err(Deny::MissingToken));
        assert_eq!(find_token(&sources(), &auth("Bearer "), ""), Err(Deny::MissingToken));
        assert_eq!(find_token(&sources(), &[], ""), Err(Deny::MissingToken));
    }

    /// Every `Cookie` line, whatever separates the pairs: `; ` in one line, `, ` where Envoy's
    /// HTTP/1 codec joined two lines, separate lines for HTTP/2 cookie crumbs.
    #[test]
    fn cookies_are_read_from_every_line_and_every_separator() {
        for lines in [
            h(&[("cookie", "a=1, session=c.d.e")]),
            h(&[("cookie", "a=1,session=c.d.e; b=2")]),
            h(&[("cookie", "a=1"), ("cookie", "session=c.d.e")]),
            h(&[("cookie", "session=\"c.d.e\""), ("cookie", "b=2")]),
            h(&[("x-other", "session=zzz"), ("cookie", "theme=dark"), ("cookie", "lang=en; session=c.d.e")]),
        ] {
            assert_eq!(find_token(&sources(), &lines, ""), Ok("c.d.e".into()), "{lines:?}");
        }
        assert_eq!(cookie_values("a=1, b=2;c=3 ;  b=4", "b"), vec!["2", "4"]);
        assert_eq!(cookie_values("xb=1; b =2", "b"), vec!["2"]);
        assert!(cookie_values("session", "session").is_empty());
    }

    #[test]
    fn two_tokens_are_refused() {
        let auth = h(&[("authorization", "Bearer a.b.c")]);
        assert_eq!(find_token(&sources(), &auth, "access_token=a.b.c"), Err(Deny::MultipleTokens));
        assert_eq!(find_token(&sources(), &[], "access_token=a&access_token=b"), Err(Deny::MultipleTokens));
        for lines in [
            h(&[("cookie", "session=a; session=b")]),
            h(&[("cookie", "session=a, session=b")]),
            h(&[("cookie", "session=a"), ("cookie", "session=b")]),
            h(&[("authorization", "Bearer a"), ("authorization", "Bearer b")]),
            h(&[("authorization", "Bearer a"), ("cookie", "x=1"), ("cookie", "session=b")]),
        ] {
            assert_eq!(find_token(&sources(), &lines, ""), Err(Deny::MultipleTokens), "{lines:?}");
        }
        // A line without the prefix is not a token (another scheme), so not a second one.
        let mixed = h(&[("authorization", "Basic dXNlcg=="), ("authorization", "Bearer a.b.c")]);
        assert_eq!(find_token(&sources(), &mixed, ""), Ok("a.b.c".into()));
    }

    #[test]
    fn challenges_follow_rfc6750() {
        assert_eq!(Deny::MissingToken.challenge("api", &[]), "Bearer realm=\"api\"");
        assert_eq!(
            Deny::Expired.challenge("api", &[]),
            "Bearer realm=\"api\", error=\"invalid_token\", error_description=\"the token has expired\""
        );
        let scoped = Deny::InsufficientScope.challenge("api", &["read".into(), "write".into()]);
        assert!(scoped.contains("error=\"insufficient_scope\""), "{scoped}");
        assert!(scoped.ends_with("scope=\"read write\""), "{scoped}");
        assert_eq!(Deny::InsufficientScope.status(), 403);
        assert_eq!(Deny::BadSignature.status(), 401);
        assert_eq!(Deny::KeysUnavailable.status(), 503);
        assert_eq!(Deny::IntrospectionFailed.status(), 503);
        assert_eq!(Deny::InactiveToken.status(), 401);
        let reasons: std::collections::HashSet<_> = Deny::ALL.iter().map(|d| d.reason()).collect();
        assert_eq!(reasons.len(), Deny::ALL.len());
    }
}
