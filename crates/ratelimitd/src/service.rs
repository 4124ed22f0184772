//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`: request checks, matching,
//! one store call, the answer.
//!
//! | the request | the answer |
//! |---|---|
//! | empty or over-long domain, no descriptors, too many descriptors or entries, an entry with an empty key, a key or value over [`MAX_KEY_LEN`] / [`MAX_VALUE_LEN`] | `INVALID_ARGUMENT`, naming the field |
//! | a domain with no configuration | `NOT_FOUND` |
//! | the store fails (Redis down, timeout, in-memory table full) | `UNAVAILABLE`: Envoy applies its `failure_mode_deny` |
//! | otherwise | `OVER_LIMIT` when a limit that is not in shadow mode refuses, else `OK`; one status per descriptor |
//!
//! A descriptor no limit matches, or one matching an `unlimited` limit, gets `OK` with no
//! `current_limit` and costs nothing. `hits_addend` (a descriptor's own, else the request's; 0
//! means 1) is what each matched limit is charged. Descriptor limit overrides (`limit`) are not
//! supported: the configured limit applies.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::{Request, Response, Status};

use crate::config::{Domain, Limit, MAX_DOMAIN_LEN, Rule, Unit};
use crate::gcra::Charge;
use crate::metrics::{HitKind, Metrics};
use crate::proto::envoy::service::ratelimit::v3::rate_limit_response::{
    Code as RlCode, DescriptorStatus, RateLimit, rate_limit::Unit as RlUnit,
};
use crate::proto::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use crate::proto::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use crate::store::Store;

/// Most descriptors in one request.
pub const MAX_DESCRIPTORS: usize = 64;
/// Most entries in one descriptor.
pub const MAX_ENTRIES: usize = 32;
/// Longest entry key, in bytes.
pub const MAX_KEY_LEN: usize = 1024;
/// Longest entry value, in bytes.
pub const MAX_VALUE_LEN: usize = 1024;

/// The service: the configured domains over one store.
pub struct Limiter {
    domains: HashMap<String, Domain>,
    store: Store,
    metrics: Arc<Metrics>,
}

impl Limiter {
    /// Refuses two configurations of one domain.
    pub fn new(domains: Vec<Domain>, store: Store, metrics: Arc<Metrics>) -> Result<Self, String> {
        let mut by_name = HashMap::new();
        for domain in domains {
            for rule in domain.rules() {
                if matches!(rule.limit, Limit::Rate(_)) {
                    metrics.declare(&domain.name, &rule.label);
                }
            }
            let name = domain.name.clone();
            if by_name.insert(name.clone(), domain).is_some() {
                return Err(format!("domain: `{name}` is configured twice"));
            }
        }
        Ok(Limiter { domains: by_name, store, metrics })
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Decides one request.
    pub async fn decide(&self, request: &RateLimitRequest) -> Result<RateLimitResponse, Status> {
        let result = self.decide_inner(request).await;
        self.metrics.request(match &result {
            Ok(response) if response.overall_code == RlCode::OverLimit as i32 => "OVER_LIMIT",
            Ok(_) => "OK",
            Err(status) => code_name(status.code()),
        });
        result
    }

    async fn decide_inner(&self, request: &RateLimitRequest) -> Result<RateLimitResponse, Status> {
        check(request)?;
        let domain = self.domains.get(&request.domain).ok_or_else(|| {
            Status::not_found(format!("domain {} is not configured", shown(&request.domain)))
        })?;
        let request_hits = u64::from(request.hits_addend.max(1));

        // The matched rate limit of each descriptor, with its charge.
        let mut matched: Vec<Option<(&Rule, usize)>> = Vec::with_capacity(request.descriptors.len());
        let mut charges = Vec::new();
        for descriptor in &request.descriptors {
            let entries = descriptor.entries.iter().map(|e| (e.key.as_str(), e.value.as_str()));
            let rule = domain.lookup(entries);
            let Some(rule @ Rule { limit: Limit::Rate(rate), .. }) = rule else {
                matched.push(None);
                continue;
            };
            let hits = descriptor.hits_addend.map_or(request_hits, |h| h.max(1));
            matched.push(Some((rule, charges.len())));
            charges.push(Charge {
                key: bucket_key(
                    &domain.name,
                    descriptor.entries.iter().map(|e| (e.key.as_str(), e.value.as_str())),
                ),
                interval: rate.interval_micros(),
                tolerance: rate.tolerance_micros(),
                burst: u64::from(rate.requests_per_unit),
                hits,
                shadow: rule.shadow,
            });
        }

        let started = Instant::now();
        let decided = self.store.decide(&charges).await;
        if matches!(self.store, Store::Redis(_)) && !charges.is_empty() {
            self.metrics.redis_call(started.elapsed(), decided.is_ok());
        }
        let decision = decided.map_err(|err| {
            tracing::warn!(error = %err, domain = %domain.name, "the store could not decide");
            Status::unavailable(format!("rate-limit store unavailable: {err}"))
        })?;

        let mut statuses = Vec::with_capacity(matched.len());
        for entry in matched {
            let Some((rule, index)) = entry else {
                statuses.push(DescriptorStatus { code: RlCode::Ok as i32, ..Default::default() });
                continue;
            };
            let (Some(outcome), Some(charge), Limit::Rate(rate)) =
                (decision.outcomes.get(index), charges.get(index), &rule.limit)
            else {
                return Err(Status::internal("the store answered for fewer descriptors than asked"));
            };
            let kind = if !outcome.fits {
                if rule.shadow { HitKind::Shadow } else { HitKind::Over }
            } else if decision.admitted && outcome.remaining.saturating_mul(5) < charge.burst {
                HitKind::Near
            } else {
                HitKind::Within
            };
            self.metrics.hit(&domain.name, &rule.label, charge.hits, kind);
            let code = if outcome.fits || rule.shadow { RlCode::Ok } else { RlCode::OverLimit };
            statuses.push(DescriptorStatus {
                code: code as i32,
                current_limit: Some(RateLimit {
                    name: rule.name.clone(),
                    requests_per_unit: rate.requests_per_unit,
                    unit: unit_of(rate.unit) as i32,
                }),
                limit_remaining: u32::try_from(outcome.remaining).unwrap_or(u32::MAX),
                duration_until_reset: Some(duration(outcome.reset)),
                quota: None,
            });
        }
        let overall = if decision.admitted { RlCode::Ok } else { RlCode::OverLimit };
        Ok(RateLimitResponse { overall_code: overall as i32, statuses, ..Default::default() })
    }
}

/// The gRPC service over a [`Limiter`].
#[derive(Clone)]
pub struct Service(pub Arc<Limiter>);

#[tonic::async_trait]
impl RateLimitService for Service {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        self.0.decide(request.get_ref()).await.map(Response::new)
    }
}

fn check(request: &RateLimitRequest) -> Result<(), Status> {
    let invalid = |message: String| Err(Status::invalid_argument(message));
    if request.domain.is_empty() {
        return invalid("domain: empty".to_owned());
    }
    if request.domain.len() > MAX_DOMAIN_LEN {
        return invalid(format!("domain: longer than {MAX_DOMAIN_LEN} bytes"));
    }
    if request.descriptors.is_empty() {
        return invalid("descriptors: none given".to_owned());
    }
    if request.descriptors.len() > MAX_DESCRIPTORS {
        return invalid(format!(
            "descriptors: {} given, at most {MAX_DESCRIPTORS}",
            request.descriptors.len()
        ));
    }
    for (i, descriptor) in request.descriptors.iter().enumerate() {
        if descriptor.entries.is_empty() {
            return invalid(format!("descriptors[{i}].entries: none given"));
        }
        if descriptor.entries.len() > MAX_ENTRIES {
            return invalid(format!(
                "descriptors[{i}].entries: {} given, at most {MAX_ENTRIES}",
                descriptor.entries.len()
            ));
        }
        for (j, entry) in descriptor.entries.iter().enumerate() {
            if entry.key.is_empty() {
                return invalid(format!("descriptors[{i}].entries[{j}].key: empty"));
            }
            if entry.key.len() > MAX_KEY_LEN {
                return invalid(format!(
                    "descriptors[{i}].entries[{j}].key: longer than {MAX_KEY_LEN} bytes"
                ));
            }
            if entry.value.len() > MAX_VALUE_LEN {
                return invalid(format!(
                    "descriptors[{i}].entries[{j}].value: longer than {MAX_VALUE_LEN} bytes"
                ));
            }
        }
    }
    Ok(())
}

/// The store key of a descriptor's bucket: every part length-prefixed, so no two descriptors
/// share a key whatever bytes their values hold.
fn bucket_key<'a>(domain: &str, entries: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut key = format!("tgrl:{}:{domain}", domain.len());
    for (k, v) in entries {
        key.push_str(&format!("|{}:{k}{}:{v}", k.len(), v.len()));
    }
    key
}

/// A value from a request as error messages show it: quoted, escaped, at most 64 characters.
fn shown(text: &str) -> String {
    let cut: String = text.chars().take(64).collect();
    let more = if cut.len() < text.len() { "…" } else { "" };
    format!("`{}`{more}", cut.escape_debug())
}

fn duration(micros: u64) -> prost_types::Duration {
    let d = Duration::from_micros(micros);
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn unit_of(unit: Unit) -> RlUnit {
    match unit {
        Unit::Second => RlUnit::Second,
        Unit::Minute => RlUnit::Minute,
        Unit::Hour => RlUnit::Hour,
        Unit::Day => RlUnit::Day,
        Unit::Week => RlUnit::Week,
    }
}

/// The canonical upper-case name of a gRPC status code (the key service's spelling).
pub use tollgate_proto::code_name;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
    use crate::proto::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
    use crate::store::MemoryStore;
    use tonic::Code;

    const CONFIG: &str = "domain: gw\ndescriptors:\n\
        - {key: tenant, rate_limit: {unit: minute, requests_per_unit: 3, name: per-tenant}}\n\
        - {key: tenant, value: internal, rate_limit: {unlimited: true}}\n\
        - {key: route, value: login, shadow_mode: true, rate_limit: {unit: hour, requests_per_unit: 1}}\n\
        - {key: global, rate_limit: {unit: second, requests_per_unit: 100}}\n";

    fn limiter() -> Limiter {
        let domain = Domain::from_yaml(CONFIG).unwrap();
        Limiter::new(vec![domain], Store::Memory(MemoryStore::new(1000)), Arc::new(Metrics::new())).unwrap()
    }

    fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
        RateLimitDescriptor {
            entries: entries
                .iter()
                .map(|(k, v)| Entry { key: (*k).to_owned(), value: (*v).to_owned() })
                .collect(),
            ..Default::default()
        }
    }

    fn request(descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
        RateLimitRequest { domain: "gw".to_owned(), descriptors, hits_addend: 0 }
    }

    async fn refused(limiter: &Limiter, req: RateLimitRequest) -> Status {
        limiter.decide(&req).await.unwrap_err()
    }

    #[tokio::test]
    async fn limits_then_over_limit_with_statuses() {
        let l = limiter();
        for remaining in [2, 1, 0] {
            let r = l.decide(&request(vec![descriptor(&[("tenant", "acme")])])).await.unwrap();
            assert_eq!(r.overall_code, RlCode::Ok as i32);
            let s = &r.statuses[0];
            assert_eq!(s.limit_remaining, remaining);
            let limit = s.current_limit.as_ref().unwrap();
            assert_eq!(
                (limit.requests_per_unit, limit.unit, limit.name.as_str()),
                (3, RlUnit::Minute as i32, "per-tenant")
            );
        }
        let r = l.decide(&request(vec![descriptor(&[("tenant", "acme")])])).await.unwrap();
        assert_eq!(r.overall_code, RlCode::OverLimit as i32);
        assert_eq!(r.statuses[0].code, RlCode::OverLimit as i32);
        assert!(r.statuses[0].duration_until_reset.unwrap().seconds >= 59);
        // Another tenant has its own bucket; the internal one is not limited.
        let r = l.decide(&request(vec![descriptor(&[("tenant", "other")])])).await.unwrap();
        assert_eq!(r.overall_code, RlCode::Ok as i32);
        for _ in 0..5 {
            let r = l.decide(&request(vec![descriptor(&[("tenant", "internal")])])).await.unwrap();
            assert_eq!(r.overall_code, RlCode::Ok as i32);
            assert!(r.statuses[0].current_limit.is_none());
        }
    }

    #[tokio::test]
    async fn a_refused_request_charges_none_of_its_descriptors() {
        let l = limiter();
        let mut exhaust = request(vec![descriptor(&[("tenant", "acme")])]);
        exhaust.hits_addend = 3;
        assert_eq!(l.decide(&exhaust).await.unwrap().overall_code, RlCode::Ok as i32);
        let both = request(vec![descriptor(&[("global", "x")]), descriptor(&[("tenant", "acme")])]);
        for _ in 0..3 {
            let r = l.decide(&both).await.unwrap();
            assert_eq!(r.overall_code, RlCode::OverLimit as i32);
            assert_eq!(r.statuses[0].code, RlCode::Ok as i32);
            assert_eq!(r.statuses[0].limit_remaining, 100, "global untouched");
        }
        let r = l.decide(&request(vec![descriptor(&[("global", "x")])])).await.unwrap();
        assert_eq!(r.statuses[0].limit_remaining, 99);
    }

    #[tokio::test]
    async fn shadow_mode_answers_ok_and_counts() {
        let l = limiter();
        for _ in 0..3 {
            let r = l.decide(&request(vec![descriptor(&[("route", "login")])])).await.unwrap();
            assert_eq!(r.overall_code, RlCode::Ok as i32);
            assert_eq!(r.statuses[0].code, RlCode::Ok as i32);
        }
        let text = l.metrics().scrape();
        assert!(
            text.contains(r#"tollgate_ratelimitd_shadow_mode_total{domain="gw",descriptor="route=login"} 2"#),
            "{text}"
        );
    }

    #[tokio::test]
    async fn per_descriptor_hits_addend_wins_and_zero_means_one() {
        let l = limiter();
        let mut d = descriptor(&[("global", "x")]);
        d.hits_addend = Some(10);
        let r = l.decide(&request(vec![d])).await.unwrap();
        assert_eq!(r.statuses[0].limit_remaining, 90);
        let mut zero = request(vec![descriptor(&[("global", "x")])]);
        zero.hits_addend = 0;
        assert_eq!(l.decide(&zero).await.unwrap().statuses[0].limit_remaining, 89);
    }

    #[tokio::test]
    async fn bad_requests_get_clear_errors() {
        let l = limiter();
        let status = refused(
            &l,
            RateLimitRequest { domain: "nope".into(), ..request(vec![descriptor(&[("a", "b")])]) },
        )
        .await;
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(status.message(), "domain `nope` is not configured");
        let status = refused(
            &l,
            RateLimitRequest { domain: String::new(), ..request(vec![descriptor(&[("a", "b")])]) },
        )
        .await;
        assert_eq!((status.code(), status.message()), (Code::InvalidArgument, "domain: empty"));
        let status = refused(&l, request(vec![])).await;
        assert_eq!((status.code(), status.message()), (Code::InvalidArgument, "descriptors: none given"));
        let status = refused(&l, request(vec![descriptor(&[])])).await;
        assert_eq!(status.message(), "descriptors[0].entries: none given");
        let status =
            refused(&l, request(vec![descriptor(&[("tenant", "a")]), descriptor(&[("", "x")])])).await;
        assert_eq!(status.message(), "descriptors[1].entries[0].key: empty");
        let huge = "v".repeat(MAX_VALUE_LEN + 1);
        let status = refused(&l, request(vec![descriptor(&[("tenant", &huge)])])).await;
        assert_eq!(status.message(), "descriptors[0].entries[0].value: longer than 1024 bytes");
        let many = (0..=MAX_DESCRIPTORS).map(|_| descriptor(&[("tenant", "a")])).collect();
        let status = refused(&l, request(many)).await;
        assert_eq!(status.message(), "descriptors: 65 given, at most 64");
        let weird = "\u{0}\n".repeat(100);
        let status =
            refused(&l, RateLimitRequest { domain: weird, ..request(vec![descriptor(&[("a", "b")])]) }).await;
        assert_eq!(status.code(), Code::NotFound);
        assert!(status.message().starts_with("domain `\\0\\n"), "{}", status.message());
        // Nothing above was charged.
        let r = l.decide(&request(vec![descriptor(&[("tenant", "a")])])).await.unwrap();
        assert_eq!(r.statuses[0].limit_remaining, 2);
    }

    #[test]
    fn a_domain_configured_twice_is_refused() {
        let a = Domain::from_yaml(CONFIG).unwrap();
        let b = Domain::from_yaml(CONFIG).unwrap();
        let err = Limiter::new(vec![a, b], Store::Memory(MemoryStore::new(10)), Arc::new(Metrics::new()))
            .err()
            .unwrap();
        assert_eq!(err, "domain: `gw` is configured twice");
    }

    #[test]
    fn bucket_keys_do_not_collide_across_entry_boundaries() {
        let a = bucket_key("d", [("ab", "c")].into_iter());
        let b = bucket_key("d", [("a", "bc")].into_iter());
        let c = bucket_key("d", [("a", "b"), ("c", "")].into_iter());
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_ne!(b, c);
    }
}
