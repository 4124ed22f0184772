//! rate-limit decisions: token buckets, bucket keys and slots, and the headers clients see.
//!
//! - [`bucket`]: GCRA token buckets in integer nanoseconds, several limits per bucket, a
//!   reserved share for critical requests, and the state codec kept in shared data.
//! - [`descriptor`]: what a bucket is keyed by (consumer, key id, IP, header, path, route) and
//!   which of the fixed slots it lives in.
//! - [`config`]: the filter's configuration schema.
//!
//! This module turns the per-rule outcomes of one request into its response: the `RateLimit`
//! headers and, when a rule refuses it, the 429 reply.

pub mod bucket;
pub mod config;
pub mod descriptor;

use bucket::LimitStatus;
use config::Headers;

use crate::error::ErrorBody;

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

/// The rate-limit headers of a response.
///
/// - `RateLimit-Policy` lists every limit that applied: `"name";q=<rate>;w=<period seconds>`.
/// - `RateLimit` reports the limit closest to refusing (fewest remaining, then longest reset):
///   `"name";r=<remaining>;t=<seconds until the bucket is full again>`.
/// - With `legacy`, `X-RateLimit-Limit`, `-Remaining` and `-Reset` report that same limit.
pub fn response_headers(rules: &[RuleStatus<'_>], headers: Headers) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let all = rules.iter().flat_map(|r| r.limits.iter().map(move |l| (r.rule, r.limits.len(), l)));
    let Some(tightest) = all.clone().min_by_key(|(_, _, l)| (l.remaining, std::cmp::Reverse(l.reset_secs)))
    else {
        return out;
    };
    if headers.ietf {
        let policy = all
            .map(|(rule, n, l)| {
                format!("\"{}\";q={};w={}", policy_name(rule, n, l), l.limit.rate, l.limit.period_secs)
            })
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
        out.push(("x-ratelimit-limit", l.limit.rate.to_string()));
        out.push(("x-ratelimit-remaining", l.remaining.to_string()));
        out.push(("x-ratelimit-reset", l.reset_secs.to_string()));
    }
    out
}

/// A local reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u32,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

/// The 429 reply: the uniform JSON body, `Retry-After` and the rate-limit headers.
pub fn limited_reply(
    request_id: &str,
    message: &str,
    retry_after_secs: u64,
    rate_headers: Vec<(&'static str, String)>,
) -> Reply {
    let mut headers = vec![("content-type", "application/json".to_owned())];
    headers.push(("retry-after", retry_after_secs.max(1).to_string()));
    headers.extend(rate_headers);
    let body = ErrorBody { error: ERROR_CODE, message, request_id }.to_json();
    Reply { status: 429, headers, body }
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
        // The daily limit has 1 left and is full again in two token intervals (2 × 8 h).
        assert_eq!(get("ratelimit"), Some(r#""api-86400s";r=1;t=57600"#));
        assert_eq!(get("x-ratelimit-limit"), Some("3"));
        assert_eq!(get("x-ratelimit-remaining"), Some("1"));
        assert_eq!(get("x-ratelimit-reset"), Some("57600"));
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
