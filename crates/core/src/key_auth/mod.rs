//! key-auth decisions: where the key comes from, and why a request is refused. The identity it
//! publishes is named in [`crate::identity`].

pub mod cache;
pub mod config;

use crate::key::{self, KeyFormatError};
use config::Source;

/// Why a request is refused. The client sees a uniform message; the reason goes to logs and
/// stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deny {
    MissingKey,
    MultipleKeys,
    Malformed(KeyFormatError),
    UnknownKey,
    Revoked,
    Expired,
    InsufficientScope,
    KeyServiceUnavailable,
    /// The path cannot be matched against the route rules (see [`crate::route::normalize_path`]).
    BadPath,
}

impl Deny {
    pub fn status(self) -> u32 {
        match self {
            Self::BadPath => crate::route::PATH_REFUSED_STATUS,
            Self::InsufficientScope => 403,
            Self::KeyServiceUnavailable => 503,
            _ => 401,
        }
    }

    /// The `error` field of the JSON body.
    pub fn code(self) -> &'static str {
        match self {
            Self::InsufficientScope => "forbidden",
            Self::KeyServiceUnavailable => "unavailable",
            Self::BadPath => "bad_request",
            _ => "unauthorized",
        }
    }

    /// What the client is told.
    pub fn message(self) -> &'static str {
        match self {
            Self::MissingKey => "an API key is required",
            Self::MultipleKeys => "send one API key, not several",
            Self::InsufficientScope => "the API key lacks a scope this route requires",
            Self::KeyServiceUnavailable => "the key service is unavailable; try again later",
            Self::BadPath => crate::route::PATH_REFUSED_MESSAGE,
            _ => "the API key is not valid",
        }
    }

    /// The stat and log reason.
    pub fn reason(self) -> &'static str {
        match self {
            Self::MissingKey => "missing_key",
            Self::MultipleKeys => "multiple_keys",
            Self::Malformed(_) => "malformed_key",
            Self::UnknownKey => "unknown_key",
            Self::Revoked => "revoked_key",
            Self::Expired => "expired_key",
            Self::InsufficientScope => "insufficient_scope",
            Self::KeyServiceUnavailable => "key_service_unavailable",
            Self::BadPath => "bad_path",
        }
    }

    /// Every reason, for defining one stat each up front.
    pub const ALL: [Deny; 9] = [
        Self::MissingKey,
        Self::MultipleKeys,
        Self::Malformed(KeyFormatError::Empty),
        Self::UnknownKey,
        Self::Revoked,
        Self::Expired,
        Self::InsufficientScope,
        Self::KeyServiceUnavailable,
        Self::BadPath,
    ];
}

crate::impl_denial!(Deny);

/// Finds the key among the configured sources, given every request header as (lower-case name,
/// value) pairs. Every source and every value of a repeated header is read: two *different*
/// keys in one request are refused; the same key sent twice is fine. The format is checked
/// before anything is looked up.
pub fn find_key(sources: &[Source], headers: &[(String, String)], query: &str) -> Result<String, Deny> {
    let mut found: Option<String> = None;
    let mut offer = |candidate: &str| -> Result<(), Deny> {
        let candidate = candidate.trim();
        match &found {
            Some(existing) if existing != candidate => Err(Deny::MultipleKeys),
            Some(_) => Ok(()),
            None => {
                found = Some(candidate.to_owned());
                Ok(())
            }
        }
    };
    for source in sources {
        match source {
            Source::Header { name, prefix } => {
                for (_, value) in headers.iter().filter(|(n, _)| n == name) {
                    match prefix {
                        Some(p) => {
                            if let Some(key) = crate::route::strip_prefix_ignore_case(value, p) {
                                offer(key)?;
                            }
                        }
                        None => offer(value)?,
                    }
                }
            }
            Source::Query { name } => {
                for value in crate::route::query_param(query, name) {
                    offer(&value)?;
                }
            }
        }
    }
    let key = found.ok_or(Deny::MissingKey)?;
    key::check_format(&key).map_err(Deny::Malformed)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> String {
        key::key_from_entropy(
            &[5u8; 64].iter().enumerate().map(|(i, b)| b.wrapping_mul(i as u8)).collect::<Vec<_>>(),
        )
        .unwrap()
    }

    fn hdr(name: &str, value: &str) -> Vec<(String, String)> {
        vec![(name.to_owned(), value.to_owned())]
    }

    fn sources() -> Vec<Source> {
        vec![
            Source::Header { name: "x-api-key".into(), prefix: None },
            Source::Header { name: "authorization".into(), prefix: Some("Bearer ".into()) },
            Source::Query { name: "api_key".into() },
        ]
    }

    #[test]
    fn key_is_found_in_any_source() {
        let k = key();
        let from_header = find_key(&sources(), &hdr("x-api-key", k.as_str()), "");
        assert_eq!(from_header, Ok(k.clone()));
        let bearer = format!("bearer {k}");
        let from_auth = find_key(&sources(), &hdr("authorization", bearer.as_str()), "");
        assert_eq!(from_auth, Ok(k.clone()));
        let from_query = find_key(&sources(), &[], &format!("a=1&api_key={k}"));
        assert_eq!(from_query, Ok(k));
    }

    #[test]
    fn no_key_is_missing_and_other_auth_schemes_are_ignored() {
        assert_eq!(find_key(&sources(), &[], ""), Err(Deny::MissingKey));
        let basic = find_key(&sources(), &hdr("authorization", "Basic dXNlcjpwYXNz"), "");
        assert_eq!(basic, Err(Deny::MissingKey));
    }

    #[test]
    fn two_different_keys_are_refused_the_same_key_twice_is_not() {
        let k = key();
        let other = key::key_from_entropy(
            &[9u8; 64].iter().enumerate().map(|(i, b)| b ^ (i as u8)).collect::<Vec<_>>(),
        )
        .unwrap();
        assert_ne!(k, other);
        let both = find_key(&sources(), &hdr("x-api-key", k.as_str()), &format!("api_key={other}"));
        assert_eq!(both, Err(Deny::MultipleKeys));
        let same = find_key(&sources(), &hdr("x-api-key", k.as_str()), &format!("api_key={k}"));
        assert_eq!(same, Ok(k));
    }

    #[test]
    fn a_repeated_header_with_two_keys_is_refused() {
        let (a, b) = (
            key(),
            key::key_from_entropy(
                &[3u8; 64].iter().enumerate().map(|(i, x)| x ^ (i as u8)).collect::<Vec<_>>(),
            )
            .unwrap(),
        );
        let headers = vec![("x-api-key".to_owned(), a.clone()), ("x-api-key".to_owned(), b)];
        assert_eq!(find_key(&sources(), &headers, ""), Err(Deny::MultipleKeys));
        let same = vec![("x-api-key".to_owned(), a.clone()), ("x-api-key".to_owned(), a.clone())];
        assert_eq!(find_key(&sources(), &same, ""), Ok(a));
    }

    #[test]
    fn malformed_key_is_refused_before_any_lookup() {
        let r = find_key(&sources(), &hdr("x-api-key", "tgk_short"), "");
        assert_eq!(r, Err(Deny::Malformed(KeyFormatError::TooShort)));
        assert_eq!(Deny::Malformed(KeyFormatError::TooShort).status(), 401);
    }

    #[test]
    fn statuses_and_codes() {
        assert_eq!(Deny::InsufficientScope.status(), 403);
        assert_eq!(Deny::KeyServiceUnavailable.status(), 503);
        assert_eq!(Deny::Revoked.status(), 401);
        // Revoked, expired and unknown keys look the same to a client.
        assert_eq!(Deny::Revoked.message(), Deny::UnknownKey.message());
        let reasons: std::collections::HashSet<_> = Deny::ALL.iter().map(|d| d.reason()).collect();
        assert_eq!(reasons.len(), Deny::ALL.len());
    }
}
