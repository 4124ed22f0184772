//! rate-limit decisions: token buckets, bucket keys and slots, and the headers clients see.
//!
//! - [`bucket`]: GCRA token buckets in integer nanoseconds, several limits per bucket, a
//!   reserved share for critical requests, and the state codec kept in shared data.
//! - [`descriptor`]: what a bucket is keyed by (consumer, key id, IP, header, path, route) and
//!   which of the fixed slots it lives in.
//! - [`config`]: the filter's configuration schema.
//! - [`global`]: cluster-wide limits: the descriptors sent to a rate-limit service and what its
//!   answer means.
//! - [`policy`]: one request under every matching rule — bucket keys, `missing` fallbacks, the
//!   key's own limits, critical requests, shadow mode, `failure_mode` — as a decision value.
//!
//! This module turns the per-rule outcomes of one request into its response: the `RateLimit`
//! headers and, when a rule refuses it, the 429 reply.

pub mod bucket;
pub mod config;
pub mod descriptor;
pub mod global;
pub mod policy;

use bucket::LimitStatus;
use config::Headers;

pub use crate::error::Reply;

/// The `error` code and message of a refused request.
pub const ERROR_CODE: &str = "rate_limited";
pub const ERROR_MESSAGE: &str = "too many requests; retry later";
/// Shown when a request lacks what its bucket is keyed by and the rule says `missing: deny`.
pub const MISSING_MESSAGE: &str = "the request lacks what this route is rate-limited by";

/// How one rule's limits stand for a request, for the response headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleStatus<'a> {
    pub rule: &'a str,
    pub limits: Vec<LimitStatus>,
}

/// The name of limit `index` of `rule` in the headers: the rule's name, with the limit's window
/// when the rule has several limits (`api`, or `api-1s` and `api-86400s`).
fn policy_name(rule: &str, limits: usize, status: &LimitStatus) -> String {
    if limits == 1 { rule.to_owned() } else { format!("{rule}-{}s", status.limit.period_secs) }
}

/// The rate-limit headers of a response (draft-ietf-httpapi-ratelimit-headers), for the
/// request's class (a normal request does not see a rule's reserved share).
///
/// - `RateLimit-Policy` lists every limit that applied: `"name";q=<quota>;w=<window>`. With a
///   token bucket the quota a client can use at once is the burst (less the reserve for a
///   normal request), and the window is the time that quota takes to come back in full at the
///   limit's rate (`quota / rate × period`, rounded up to whole seconds, so the rate `q / w`
///   never overstates the real one).
/// - `RateLimit` reports the limit closest to refusing (fewest remaining, then longest wait):
///   `"name";r=<remaining>;t=<seconds until one more unit is available>`. `r` never exceeds
///   `q`; with `r=0`, `t` is when the next request can pass.
/// - With `legacy`, `X-RateLimit-Limit`, `-Remaining` and `-Reset` report `q`, `r` and `t` of
///   that same limit.
pub fn response_headers(rules: &[RuleStatus<'_>], headers: Headers) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let all = rules.iter().flat_map(|r| r.limits.iter().map(move |l| (r.rule, r.limits.len(), l)));
    let Some(tightest) = all.clone().min_by_key(|(_, _, l)| (l.remaining, std::cmp::Reverse(l.reset_secs)))
    else {
        return out;
    };
    if headers.ietf {
        let policy = all
            .map(|(rule, n, l)| format!("\"{}\";q={};w={}", policy_name(rule, n, l), l.quota, l.window_secs))
            .collect::<Vec<_>>()
            .join(", ");
        out.push(("ratelimit-policy", policy));
        let (rule, n, l) = tightest;
        out.push((
            "ratelimit",
            format!("\"{}\";r={};t={}", policy_name(rule, n, l), l.remaining, l.reset_secs),
        ));
    }
    if headers.legacy {
        let (_, _, l) = tightest;
        out.push(("x-ratelimit-limit", l.quota.to_string()));
        out.push(("x-ratelimit-remaining", l.remaining.to_string()));
        out.push(("x-ratelimit-reset", l.reset_secs.to_string()));
    }
    out
}

/// `Retry-After` of a refused request: when the refusing limit has a token again
/// (`refused_secs`), or later if a rule the request already passed has none left until then,
/// so that `Retry-After` is never earlier than the `t` of any limit at `r=0`.
pub fn retry_after_secs(rules: &[RuleStatus<'_>], refused_secs: u64) -> u64 {
    rules
        .iter()
        .flat_map(|r| &r.limits)
        .filter(|l| l.remaining == 0)
        .map(|l| l.reset_secs)
        .fold(refused_secs, u64::max)
        .max(1)
}

/// The 429 reply: the uniform JSON body, `Retry-After` and the rate-limit headers.
pub fn limited_reply(
    request_id: &str,
    message: &str,
    retry_after_secs: u64,
    rate_headers: Vec<(&'static str, String)>,
) -> Reply {
    let mut reply = Reply::error(429, ERROR_CODE, message, request_id).with_retry_after(retry_after_secs);
    reply.headers.extend(rate_headers);
    reply
}

#[cfg(test)]
mod tests {
    use super::bucket::{Class, Limit, take};
    use super::*;

    const T0: u64 = 1_700_000_000_000_000_000;

    fn statuses(limits: &[Limit], taken: usize) -> Vec<LimitStatus> {
        let mut state = None;
        let mut last = None;
        for _ in 0..taken {
            let d = take(state.as_ref(), 1, limits, Class::Normal { reserve_percent: 0 }, T0);
            if d.allowed {
                state = d.next.clone();
            }
            last = Some(d);
        }
        last.map(|d| d.status).unwrap_or_default()
    }

    #[test]
    fn headers_report_every_policy_and_the_tightest_limit() {
        let second = Limit::new(10, 1, 10).unwrap();
        let day = Limit::new(3, 86_400, 3).unwrap();
        let rules = [
            RuleStatus { rule: "api", limits: statuses(&[second, day], 2) },
            RuleStatus { rule: "ip", limits: statuses(&[Limit::new(100, 60, 100).unwrap()], 1) },
        ];
        let h = response_headers(&rules, Headers { ietf: true, legacy: true });
        let get = |n: &str| h.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_str());
        assert_eq!(
            get("ratelimit-policy"),
            Some(r#""api-1s";q=10;w=1, "api-86400s";q=3;w=86400, "ip";q=100;w=60"#)
        );
        // The daily limit has 1 left, and the first token taken comes back in 8 h.
        assert_eq!(get("ratelimit"), Some(r#""api-86400s";r=1;t=28800"#));
        assert_eq!(get("x-ratelimit-limit"), Some("3"));
        assert_eq!(get("x-ratelimit-remaining"), Some("1"));
        assert_eq!(get("x-ratelimit-reset"), Some("28800"));
    }

    /// Pulls `name=<n>` out of one policy or limit item.
    fn param(item: &str, name: &str) -> u64 {
        item.split(';').find_map(|p| p.strip_prefix(name)?.strip_prefix('=')?.parse().ok()).unwrap()
    }

    #[test]
    fn the_quota_is_the_burst_and_remaining_never_exceeds_it() {
        let headers = Headers { ietf: true, legacy: true };
        // Burst above the rate: q is the burst, w the time the burst takes to come back.
        for (rate, per, burst, q, w) in [
            (10, 1, 20, 20, 2),
            (1, 3600, 5, 5, 18_000),
            (10, 1, 10, 10, 1),
            (10, 60, 3, 3, 18),
            // Burst below the rate; a window under a second is rounded up.
            (1000, 1, 1, 1, 1),
            (3, 1, 2, 2, 1),
        ] {
            let limit = Limit::new(rate, per, burst).unwrap();
            for taken in 1..=burst as usize {
                let rules = [RuleStatus { rule: "r", limits: statuses(&[limit], taken) }];
                let h = response_headers(&rules, headers);
                let policy = &h[0].1;
                let rl = &h[1].1;
                assert_eq!((param(policy, "q"), param(policy, "w")), (q, w), "{rate}/{per}s burst {burst}");
                assert_eq!(param(rl, "r"), burst - taken as u64, "{rl}");
                assert!(param(rl, "r") <= param(policy, "q"));
                assert!(param(rl, "t") <= param(policy, "w"), "{rl} {policy}");
                assert_eq!(h[2], ("x-ratelimit-limit", q.to_string()));
            }
        }
    }

    #[test]
    fn a_normal_request_is_shown_the_quota_without_the_reserve() {
        let limit = Limit::new(1, 3600, 10).unwrap();
        let normal = take(None, 1, &[limit], Class::Normal { reserve_percent: 30 }, T0);
        let rules = [RuleStatus { rule: "r", limits: normal.status }];
        let h = response_headers(&rules, Headers { ietf: true, legacy: false });
        assert_eq!(h[0].1, r#""r";q=7;w=25200"#);
        assert_eq!(h[1].1, r#""r";r=6;t=3600"#);
        let critical = take(None, 1, &[limit], Class::Critical, T0);
        let rules = [RuleStatus { rule: "r", limits: critical.status }];
        let h = response_headers(&rules, Headers { ietf: true, legacy: false });
        assert_eq!(h[0].1, r#""r";q=10;w=36000"#);
        assert_eq!(h[1].1, r#""r";r=9;t=3600"#);
    }

    #[test]
    fn retry_after_is_never_before_a_limit_at_zero_has_a_token() {
        let hour = Limit::new(1, 3600, 2).unwrap();
        let second = Limit::new(1, 1, 1).unwrap();
        // The first rule took its last token; the second refused for a second.
        let rules = [
            RuleStatus { rule: "a", limits: statuses(&[hour], 2) },
            RuleStatus { rule: "b", limits: statuses(&[second], 2) },
        ];
        assert_eq!(retry_after_secs(&rules, 1), 3600);
        let h = response_headers(&rules, Headers { ietf: true, legacy: false });
        assert_eq!(h[1].1, r#""a";r=0;t=3600"#);
        // Nothing at zero: the refusing limit's own wait, at least a second.
        let rules = [RuleStatus { rule: "a", limits: statuses(&[hour], 1) }];
        assert_eq!(retry_after_secs(&rules, 7), 7);
        assert_eq!(retry_after_secs(&[], 0), 1);
    }

    #[test]
    fn headers_can_be_switched_off() {
        let rules = [RuleStatus { rule: "api", limits: statuses(&[Limit::new(1, 1, 1).unwrap()], 1) }];
        assert!(response_headers(&rules, Headers { ietf: false, legacy: false }).is_empty());
        let ietf = response_headers(&rules, Headers { ietf: true, legacy: false });
        assert_eq!(ietf.len(), 2);
        assert!(response_headers(&[], Headers { ietf: true, legacy: true }).is_empty());
    }

    #[test]
    fn the_429_reply_is_uniform_json_with_retry_after() {
        let r = limited_reply("req-1", ERROR_MESSAGE, 0, vec![("ratelimit", "\"a\";r=0;t=5".into())]);
        assert_eq!(r.status, 429);
        assert!(r.headers.contains(&("retry-after", "1".to_owned())));
        assert!(r.headers.contains(&("ratelimit", "\"a\";r=0;t=5".to_owned())));
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["error"], "rate_limited");
        assert_eq!(v["request_id"], "req-1");
    }
}
