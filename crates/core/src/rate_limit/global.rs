//! Cluster-wide limits: the descriptors a request sends to a rate-limit service (Envoy's
//! `envoy.service.ratelimit.v3` API, such as `tollgate-ratelimitd`) after the local rules let it
//! through, and what its answer means for the request.
//!
//! - A descriptor is sent only when every entry has a value: an entry `from` a part the request
//!   lacks (no consumer, no such header) leaves that descriptor out, as Envoy's own actions do.
//!   Header bytes that are not UTF-8 are sent with U+FFFD in their place (the protocol's values
//!   are strings); such values may share a bucket, which limits sooner, never later.
//! - The answer's statuses feed the `RateLimit` headers: each limit the service reports is read
//!   as a bucket of `requests_per_unit` per unit whose debt is `duration_until_reset` (the time
//!   until it is full again, as `tollgate-ratelimitd` reports it).
//! - `OVER_LIMIT` refuses the request with 429; `Retry-After` is when the refusing limits have
//!   a request again.

use std::time::Duration;

use super::RuleStatus;
use super::bucket::{Limit, LimitStatus};
use super::config::{EntryValue, Global};
use super::policy::{Facts, Refusal, value};

/// The descriptors of a request, as `(key, value)` entries.
pub fn descriptors(global: &Global, facts: &impl Facts, path: &str) -> Vec<Vec<(String, String)>> {
    global
        .descriptors
        .iter()
        .filter_map(|entries| {
            entries
                .iter()
                .map(|entry| {
                    let value = match &entry.value {
                        EntryValue::Fixed(text) => text.clone(),
                        EntryValue::Part(part) => {
                            let bytes = value(facts, part, path)?;
                            String::from_utf8_lossy(&bytes).into_owned()
                        }
                    };
                    Some((entry.key.clone(), value))
                })
                .collect::<Option<Vec<_>>>()
        })
        .collect()
}

/// One descriptor's status in the service's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceLimit {
    /// The limit's name in the service's configuration (may be empty).
    pub name: String,
    pub requests_per_unit: u32,
    /// The unit in seconds.
    pub unit_secs: u64,
    pub over_limit: bool,
    pub duration_until_reset: Duration,
}

/// The unit of `RateLimitResponse.RateLimit.Unit` in seconds (`None`: unknown).
pub fn unit_secs(unit: i32) -> Option<u64> {
    match unit {
        1 => Some(1),
        2 => Some(60),
        3 => Some(3_600),
        4 => Some(86_400),
        5 => Some(30 * 86_400),
        6 => Some(365 * 86_400),
        7 => Some(7 * 86_400),
        _ => None,
    }
}

/// What the service's answer means for the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `Some`: refused (`OVER_LIMIT`).
    pub refusal: Option<Refusal>,
    /// The header name and status of every limit the service reported.
    pub statuses: Vec<(String, LimitStatus)>,
}

/// The name a service limit goes by in the headers: its own, or `global`.
pub const DEFAULT_NAME: &str = "global";

/// Reads an answer: `over_limit` is the overall code, `limits` the statuses that carried a
/// limit.
pub fn outcome(over_limit: bool, limits: &[ServiceLimit]) -> Outcome {
    let mut statuses = Vec::new();
    let mut refused_secs = 1;
    for limit in limits {
        let rate = u64::from(limit.requests_per_unit);
        let Some(l) = Limit::new(rate, limit.unit_secs, rate) else {
            continue;
        };
        let debt = u64::try_from(limit.duration_until_reset.as_nanos()).unwrap_or(u64::MAX);
        let status = LimitStatus::of_debt(&l, debt);
        if limit.over_limit {
            refused_secs = refused_secs.max(status.reset_secs);
        }
        let name = if limit.name.is_empty() { DEFAULT_NAME.to_owned() } else { limit.name.clone() };
        statuses.push((name, status));
    }
    let refusal = over_limit.then_some(Refusal::Limited { retry_after_secs: refused_secs });
    Outcome { refusal, statuses }
}

/// The statuses as the header functions take them.
pub fn rule_statuses(statuses: &[(String, LimitStatus)]) -> Vec<RuleStatus<'_>> {
    statuses.iter().map(|(name, status)| RuleStatus { rule: name, limits: vec![*status] }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limit::config::Config;

    struct Req {
        consumer: Option<&'static str>,
        header: Option<&'static [u8]>,
    }

    impl Facts for Req {
        fn route_name(&self) -> Option<&str> {
            None
        }
        fn ip(&self) -> Option<&str> {
            Some("10.0.0.1")
        }
        fn consumer(&self) -> Option<&str> {
            self.consumer
        }
        fn key_id(&self) -> Option<&str> {
            None
        }
        fn tier(&self) -> Option<&str> {
            None
        }
        fn header(&self, _name: &str) -> Option<Vec<u8>> {
            self.header.map(<[u8]>::to_vec)
        }
        fn key_limits(&self) -> Option<&[Limit]> {
            None
        }
    }

    fn global() -> Global {
        let json = r#"{"rules": [{"name": "local", "limits": [{"rate": 100, "per": "second"}]}],
            "global": {"cluster": "rls", "domain": "gw", "descriptors": [
                [{"key": "generic_key", "value": "all"}],
                [{"key": "tenant", "from": {"header": "x-tenant"}}],
                [{"key": "consumer", "from": "consumer"}, {"key": "ip", "from": "ip"}]
            ]}}"#;
        Config::from_json(json.as_bytes()).unwrap().global.unwrap()
    }

    #[test]
    fn the_documented_global_example_parses() {
        let doc = include_str!("../../../../docs/rate-limit.md");
        let section = doc.split("### From Tollgate's `rate-limit` filter").nth(1).unwrap();
        let json = section.split("```json").nth(1).unwrap().split("```").next().unwrap();
        let config = Config::from_json(json.as_bytes()).unwrap();
        let g = config.global.unwrap();
        assert_eq!(g.failure_mode, crate::rate_limit::config::GlobalFailureMode::LocalFallback);
        assert_eq!(g.timeout, Duration::from_millis(50));
    }

    #[test]
    fn a_descriptor_with_a_missing_value_is_not_sent() {
        let d = descriptors(&global(), &Req { consumer: None, header: Some(b"acme") }, "/");
        assert_eq!(
            d,
            vec![
                vec![("generic_key".to_owned(), "all".to_owned())],
                vec![("tenant".to_owned(), "acme".to_owned())],
            ]
        );
        let d = descriptors(&global(), &Req { consumer: Some("alice"), header: Some(b"\xffx") }, "/");
        assert_eq!(d.len(), 3);
        assert_eq!(d[1], vec![("tenant".to_owned(), "\u{fffd}x".to_owned())]);
        assert_eq!(
            d[2],
            vec![("consumer".to_owned(), "alice".to_owned()), ("ip".to_owned(), "10.0.0.1".to_owned())]
        );
    }

    #[test]
    fn the_answer_feeds_the_headers_and_retry_after() {
        let limits = [
            ServiceLimit {
                name: "per-tenant".to_owned(),
                requests_per_unit: 600,
                unit_secs: 60,
                over_limit: false,
                // 590 of 600 taken: 59 s of debt, 10 left.
                duration_until_reset: Duration::from_secs(59),
            },
            ServiceLimit {
                name: String::new(),
                requests_per_unit: 10,
                unit_secs: 1,
                over_limit: true,
                duration_until_reset: Duration::from_millis(2_500),
            },
        ];
        let o = outcome(true, &limits);
        assert_eq!(o.statuses[0].0, "per-tenant");
        assert_eq!(
            (o.statuses[0].1.quota, o.statuses[0].1.remaining, o.statuses[0].1.window_secs),
            (600, 10, 60)
        );
        assert_eq!(o.statuses[1].0, DEFAULT_NAME);
        assert_eq!(o.statuses[1].1.remaining, 0);
        assert_eq!(o.refusal, Some(Refusal::Limited { retry_after_secs: 2 }));
        let ok = outcome(false, &limits[..1]);
        assert_eq!(ok.refusal, None);
        // An unknown unit or a zero limit is left out, never a panic.
        let odd = ServiceLimit { requests_per_unit: 0, ..limits[0].clone() };
        assert!(outcome(false, &[odd]).statuses.is_empty());
        assert_eq!(unit_secs(99), None);
    }
}
