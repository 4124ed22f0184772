//! The caller's identity as the auth filters publish it: the headers the upstream gets, the
//! filter-state names later filters read (rate-limit, transform), and the text of their values.
//!
//! The one owner of these names. key-auth and request-signing publish a key's identity,
//! jwt-auth a token's; every filter takes the names from here and never spells them itself.
//! `docs/attributes.md` lists the filter-state names (a test below checks it).

/// The caller's consumer id (a JWT's subject).
pub const CONSUMER_HEADER: &str = "x-tollgate-consumer-id";
/// The id of the API key or signing key the caller used.
pub const KEY_ID_HEADER: &str = "x-tollgate-key-id";
/// The caller's scopes, as [`scopes_value`] writes them.
pub const SCOPES_HEADER: &str = "x-tollgate-scopes";
/// The issuer of the caller's JWT.
pub const ISSUER_HEADER: &str = "x-tollgate-issuer";

/// Every identity header. Each auth filter removes client-sent copies of all of them, whichever
/// it publishes itself: an upstream behind key-auth must not read a client's `x-tollgate-issuer`,
/// nor one behind jwt-auth a client's `x-tollgate-key-id`.
pub const IDENTITY_HEADERS: [&str; 4] = [CONSUMER_HEADER, KEY_ID_HEADER, SCOPES_HEADER, ISSUER_HEADER];

/// Every filter-state name Tollgate writes starts with this (the host lets a filter write no
/// other name).
pub const FILTER_STATE_PREFIX: &str = "tollgate.";

/// Filter-state properties through which later filters read the identity. Consumer id and
/// scopes mean the same for every auth filter (the consumer of a JWT is its subject).
pub const PROP_CONSUMER: &str = "tollgate.consumer_id";
pub const PROP_KEY_ID: &str = "tollgate.key_id";
pub const PROP_SCOPES: &str = "tollgate.scopes";
/// The key's rate-limit tier, when it has one.
pub const PROP_TIER: &str = "tollgate.tier";
/// The key's rate-limit policy, when it has one: limits separated by `,`, each
/// `<rate>/<period seconds>/<burst>` (e.g. `10/1/20,1000/86400/1000`). See [`format_limits`].
pub const PROP_RATE_LIMIT: &str = "tollgate.rate_limit";
/// A JWT's `sub`.
pub const PROP_SUBJECT: &str = "tollgate.subject";
/// A JWT's `iss`.
pub const PROP_ISSUER: &str = "tollgate.issuer";
/// Prefix of the properties holding mapped claims: `tollgate.claims.<claim>`.
pub const PROP_CLAIMS_PREFIX: &str = "tollgate.claims.";

/// Every filter-state name above (the claims as their prefix).
pub const FILTER_STATE: [&str; 8] = [
    PROP_CONSUMER,
    PROP_KEY_ID,
    PROP_SCOPES,
    PROP_TIER,
    PROP_RATE_LIMIT,
    PROP_SUBJECT,
    PROP_ISSUER,
    PROP_CLAIMS_PREFIX,
];

/// One rate limit of a key's tier, as published in [`PROP_RATE_LIMIT`]: `rate` per
/// `period_secs`, bursting to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub rate: u64,
    pub period_secs: u64,
    pub burst: u64,
}

/// The scopes as published in [`SCOPES_HEADER`] and [`PROP_SCOPES`]: separated by one space, as in
/// OAuth 2.0's `scope` (RFC 6749 §3.3). A scope never contains a space (the key service refuses
/// whitespace in scopes; a JWT `scope` claim is split on spaces), so the list reads back exactly;
/// a comma would not do, since `read,admin` is a valid scope. `None` when a scope holds a space or
/// a byte that cannot travel in a header, so the caller refuses rather than publish a wrong list.
pub fn scopes_value(scopes: &[String]) -> Option<String> {
    let publishable = |s: &String| !s.is_empty() && s.bytes().all(|b| b > 0x20 && b != 0x7f);
    scopes.iter().all(publishable).then(|| scopes.join(" "))
}

/// Encodes limits for [`PROP_RATE_LIMIT`].
pub fn format_limits(limits: &[Limit]) -> String {
    limits.iter().map(|l| format!("{}/{}/{}", l.rate, l.period_secs, l.burst)).collect::<Vec<_>>().join(",")
}

/// Decodes [`PROP_RATE_LIMIT`]; `None` if any part is malformed.
pub fn parse_limits(text: &str) -> Option<Vec<Limit>> {
    text.split(',')
        .filter(|p| !p.is_empty())
        .map(|part| {
            let mut it = part.split('/');
            let limit = Limit {
                rate: it.next()?.parse().ok()?,
                period_secs: it.next()?.parse().ok()?,
                burst: it.next()?.parse().ok()?,
            };
            it.next().is_none().then_some(limit)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_round_trip_through_the_property_text() {
        let limits = vec![
            Limit { rate: 10, period_secs: 1, burst: 20 },
            Limit { rate: 1000, period_secs: 86_400, burst: 1000 },
        ];
        let text = format_limits(&limits);
        assert_eq!(text, "10/1/20,1000/86400/1000");
        assert_eq!(parse_limits(&text), Some(limits));
        assert_eq!(parse_limits(""), Some(vec![]));
        assert_eq!(parse_limits("10/1"), None);
        assert_eq!(parse_limits("10/1/2/3"), None);
        assert_eq!(parse_limits("x/1/2"), None);
    }

    /// Later filters and operators find every name Tollgate writes in the docs' table of
    /// filter state, and every name is one a filter may write.
    #[test]
    fn docs_list_every_filter_state_name() {
        let docs = include_str!("../../../docs/attributes.md");
        for name in FILTER_STATE {
            assert!(name.starts_with(FILTER_STATE_PREFIX) && name.len() > FILTER_STATE_PREFIX.len());
            let row =
                if name.ends_with('.') { format!("| `{name}<name>` |") } else { format!("| `{name}` |") };
            assert!(docs.contains(&row), "docs/attributes.md does not list `{name}`");
        }
    }
}
