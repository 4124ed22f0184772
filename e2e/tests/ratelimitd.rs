//! `tollgate-ratelimitd` behind Envoy's native `envoy.filters.http.ratelimit` filter: real Envoy,
//! real `redis-server`, real service binaries on loopback ports.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate_e2e::{
    Echo, Envoy, EnvoyOpts, H2Request, HttpClient, Ratelimitd, Redis, UPSTREAM_CLUSTER, eventually,
    native_ratelimit_filter, ratelimit_cluster,
};
use tollgate_ratelimitd::proto::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use tollgate_ratelimitd::proto::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use tollgate_ratelimitd::proto::envoy::service::ratelimit::v3::RateLimitRequest;
use tollgate_ratelimitd::proto::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;

const DOMAIN: &str = "e2e";

const LIMITS: &str = "\
domain: e2e
descriptors:
  - key: tenant
    rate_limit: {unit: minute, requests_per_unit: 3, name: per-tenant}
  - key: tenant
    value: internal
    rate_limit: {unlimited: true}
  - key: user
    shadow_mode: true
    rate_limit: {unit: hour, requests_per_unit: 2}
  - key: global
    rate_limit: {unit: hour, requests_per_unit: 5}
  - key: exact
    rate_limit: {unit: minute, requests_per_unit: 600}
  - key: memory
    rate_limit: {unit: hour, requests_per_unit: 50}
";

/// A route for `prefix` whose requests carry the given rate-limit actions, one descriptor each.
fn limited_route(prefix: &str, actions: &[Value]) -> Value {
    let rate_limits: Vec<Value> = actions.iter().map(|a| json!({"actions": [a]})).collect();
    json!({
        "name": prefix.trim_start_matches('/'),
        "match": {"prefix": prefix},
        "route": {"cluster": UPSTREAM_CLUSTER, "timeout": "15s", "rate_limits": rate_limits}
    })
}

fn header_action(header: &str, key: &str) -> Value {
    json!({"request_headers": {"header_name": header, "descriptor_key": key}})
}

fn generic_action(key: &str, value: &str) -> Value {
    json!({"generic_key": {"descriptor_key": key, "descriptor_value": value}})
}

/// Envoy with the native rate-limit filter against `services`, with the routes the tests use.
async fn envoy(echo: &Echo, services: &[SocketAddr], workers: u32, failure_mode_deny: bool) -> Envoy {
    let mut opts = EnvoyOpts::new(echo.addr())
        .workers(workers)
        .http_filter(native_ratelimit_filter(DOMAIN, failure_mode_deny))
        .cluster(ratelimit_cluster(services));
    opts.routes.push(limited_route("/tenant", &[header_action("x-tenant", "tenant")]));
    opts.routes.push(limited_route("/user", &[header_action("x-user", "user")]));
    opts.routes.push(limited_route(
        "/both",
        &[generic_action("global", "all"), header_action("x-tenant", "tenant")],
    ));
    opts.routes.push(limited_route("/exact", &[generic_action("exact", "all")]));
    opts.routes.push(limited_route("/memory", &[generic_action("memory", "all")]));
    Envoy::start(opts).await
}

#[tokio::test]
async fn descriptors_limit_and_answer_429_with_rate_limit_headers() {
    let redis = Redis::start().await;
    let service = Ratelimitd::start(LIMITS, Some(&redis.url())).await;
    let echo = Echo::start();
    let envoy = envoy(&echo, &[service.addr()], 2, true).await;

    for remaining in ["2", "1", "0"] {
        let res = envoy.get("/tenant").header("x-tenant", "acme").send().await;
        assert_eq!(res.status, 200, "{}", res.text());
        assert_eq!(res.header("x-ratelimit-limit").map(|v| v.split(',').next().unwrap_or("")), Some("3"));
        assert_eq!(res.header("x-ratelimit-remaining"), Some(remaining));
        let reset: u64 = res.header("x-ratelimit-reset").unwrap().parse().unwrap();
        assert!((1..=60).contains(&reset), "reset {reset}");
    }
    let res = envoy.get("/tenant").header("x-tenant", "acme").send().await;
    assert_eq!(res.status, 429);
    assert_eq!(res.header("x-envoy-ratelimited"), Some("true"));
    assert_eq!(res.header("x-ratelimit-remaining"), Some("0"));
    // Another tenant has its own bucket (a bucket per value of a key-only rule).
    assert_eq!(envoy.get("/tenant").header("x-tenant", "globex").send().await.status, 200);
    // Key and value beat the key alone: the internal tenant is unlimited.
    for _ in 0..6 {
        let res = envoy.get("/tenant").header("x-tenant", "internal").send().await;
        assert_eq!(res.status, 200);
    }
    assert_eq!(
        service.metric(r#"tollgate_ratelimitd_over_limit_total{domain="e2e",descriptor="tenant"}"#).await,
        1.0
    );
    assert_eq!(
        service.metric(r#"tollgate_ratelimitd_hits_total{domain="e2e",descriptor="tenant"}"#).await,
        5.0
    );
}

#[tokio::test]
async fn shadow_mode_lets_requests_through_and_counts_them() {
    let redis = Redis::start().await;
    let service = Ratelimitd::start(LIMITS, Some(&redis.url())).await;
    let echo = Echo::start();
    let envoy = envoy(&echo, &[service.addr()], 1, true).await;
    for _ in 0..5 {
        let res = envoy.get("/user").header("x-user", "mallory").send().await;
        assert_eq!(res.status, 200);
        assert_eq!(res.header("x-envoy-ratelimited"), None);
    }
    assert_eq!(
        service.metric(r#"tollgate_ratelimitd_shadow_mode_total{domain="e2e",descriptor="user"}"#).await,
        3.0
    );
    assert_eq!(
        service.metric(r#"tollgate_ratelimitd_over_limit_total{domain="e2e",descriptor="user"}"#).await,
        0.0
    );
    assert_eq!(service.metric(r#"tollgate_ratelimitd_requests_total{result="OK"}"#).await, 5.0);
}

#[tokio::test]
async fn a_request_refused_by_one_descriptor_consumes_nothing_from_the_other() {
    let redis = Redis::start().await;
    let service = Ratelimitd::start(LIMITS, Some(&redis.url())).await;
    let echo = Echo::start();
    let envoy = envoy(&echo, &[service.addr()], 2, true).await;
    // Exhaust tenant "spent" (3 a minute) on a route that does not touch "global".
    for _ in 0..3 {
        assert_eq!(envoy.get("/tenant").header("x-tenant", "spent").send().await.status, 200);
    }
    // [global=all] fits, [tenant=spent] does not: refused, and "global" is not charged.
    for _ in 0..10 {
        assert_eq!(envoy.get("/both").header("x-tenant", "spent").send().await.status, 429);
    }
    // So all 5 of "global" (5 an hour) are still there for fresh tenants, and no more.
    for i in 0..5 {
        let res = envoy.get("/both").header("x-tenant", &format!("fresh-{i}")).send().await;
        assert_eq!(
            res.status, 200,
            "fresh tenant {i}: global must not have been charged by refused requests"
        );
    }
    assert_eq!(envoy.get("/both").header("x-tenant", "fresh-5").send().await.status, 429);
}

/// Sends `total` requests to `path` spread over `envoys`, each on a new connection, at most
/// `parallel` at a time; returns (admitted, refused, other, elapsed from the first send to the
/// last answer).
async fn flood(envoys: &[&Envoy], path: &str, total: u64, parallel: u64) -> (u64, u64, u64, Duration) {
    let urls: Arc<Vec<String>> = Arc::new(envoys.iter().map(|e| e.url(path)).collect());
    let next = Arc::new(AtomicU64::new(0));
    let (admitted, refused, other) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..parallel {
        let (urls, next) = (Arc::clone(&urls), Arc::clone(&next));
        let (admitted, refused, other) = (Arc::clone(&admitted), Arc::clone(&refused), Arc::clone(&other));
        tasks.push(tokio::spawn(async move {
            let client = HttpClient::fresh_connections();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let url = &urls[usize::try_from(i).unwrap() % urls.len()];
                match client.get(url.clone()).timeout(Duration::from_secs(30)).try_send().await {
                    Ok(res) if res.status == 200 => admitted.fetch_add(1, Ordering::Relaxed),
                    Ok(res) if res.status == 429 => refused.fetch_add(1, Ordering::Relaxed),
                    _ => other.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();
    (
        admitted.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
        other.load(Ordering::Relaxed),
        elapsed,
    )
}

/// Errors Envoy's rate-limit filter counted (for requests to the upstream cluster).
async fn ratelimit_errors(envoy: &Envoy) -> u64 {
    envoy.stat(&format!("cluster.{UPSTREAM_CLUSTER}.ratelimit.error")).await.unwrap_or(0)
}

/// Three Envoys of 4 workers each and two service instances on one Redis share one limit of 600
/// a minute. The bucket starts full (600) and refills one request every 100 ms, so over the
/// measured time `t` from the first request sent to the last answer, at most 600 + ⌊t × 10⌋ + 1
/// can pass (the +1: a token that comes back just as the window closes), and, with far more
/// requests than that, at least 600 do.
#[tokio::test]
async fn three_envoys_and_two_services_on_one_redis_admit_exactly_the_limit() {
    let redis = Redis::start().await;
    let a = Ratelimitd::start(LIMITS, Some(&redis.url())).await;
    let b = Ratelimitd::start(LIMITS, Some(&redis.url())).await;
    let echo = Echo::start();
    let services = [a.addr(), b.addr()];
    let e1 = envoy(&echo, &services, 4, true).await;
    let e2 = envoy(&echo, &services, 4, true).await;
    let e3 = envoy(&echo, &services, 4, true).await;

    let total = 5_000;
    let (admitted, refused, other, elapsed) = flood(&[&e1, &e2, &e3], "/exact", total, 48).await;
    let refill = (elapsed.as_secs_f64() * 10.0).floor() as u64 + 1;
    eprintln!(
        "exactness: {admitted} admitted, {refused} refused, {other} other of {total} in {:.2} s (bound 600..={})",
        elapsed.as_secs_f64(),
        600 + refill
    );
    assert_eq!(other, 0, "every answer is 200 or 429");
    for envoy in [&e1, &e2, &e3] {
        assert_eq!(ratelimit_errors(envoy).await, 0, "no call to the service failed");
    }
    assert_eq!(admitted + refused, total);
    assert!(admitted >= 600, "admitted {admitted} < 600 in {elapsed:?}");
    assert!(admitted <= 600 + refill, "admitted {admitted} > 600 + {refill} in {elapsed:?}");
    // Both services took calls.
    for service in [&a, &b] {
        let calls = service.metric(r#"tollgate_ratelimitd_requests_total{result="OK"}"#).await
            + service.metric(r#"tollgate_ratelimitd_requests_total{result="OVER_LIMIT"}"#).await;
        assert!(calls > 0.0, "a service took no calls");
    }
}

/// One in-memory instance is exact on its own: 50 an hour (nothing refills during the test) from
/// 300 requests over 4 workers.
#[tokio::test]
async fn one_in_memory_instance_admits_exactly_the_limit() {
    let service = Ratelimitd::start(LIMITS, None).await;
    let echo = Echo::start();
    let envoy = envoy(&echo, &[service.addr()], 4, true).await;
    let (admitted, refused, other, _) = flood(&[&envoy], "/memory", 300, 32).await;
    assert_eq!((admitted, refused, other), (50, 250, 0));
}

/// Redis killed: the service answers UNAVAILABLE; Envoy with `failure_mode_deny: false` lets
/// requests through, with `true` refuses them (Envoy answers 500). Redis back on the same port:
/// limits work again, with neither Envoy nor the service restarted.
#[tokio::test]
async fn redis_down_follows_envoys_failure_mode_and_a_restart_recovers() {
    let mut redis = Redis::start().await;
    let service = Ratelimitd::start(LIMITS, Some(&redis.url())).await;
    let echo = Echo::start();
    let open = envoy(&echo, &[service.addr()], 1, false).await;
    let closed = envoy(&echo, &[service.addr()], 1, true).await;
    assert_eq!(closed.get("/tenant").header("x-tenant", "t").send().await.status, 200);

    redis.kill();
    for _ in 0..3 {
        assert_eq!(open.get("/tenant").header("x-tenant", "t").send().await.status, 200);
        let res = closed.get("/tenant").header("x-tenant", "t").send().await;
        assert_eq!(res.status, 500, "{}", res.text());
    }
    assert!(ratelimit_errors(&open).await >= 3);
    assert_eq!(
        open.stat(&format!("cluster.{UPSTREAM_CLUSTER}.ratelimit.failure_mode_allowed")).await,
        Some(3)
    );
    assert!(service.metric(r#"tollgate_ratelimitd_requests_total{result="UNAVAILABLE"}"#).await >= 6.0);
    assert!(service.metric("tollgate_ratelimitd_redis_errors_total").await >= 6.0);

    redis.restart().await;
    let back = eventually(Duration::from_secs(15), || async {
        closed.get("/tenant").header("x-tenant", "after").send().await.status == 200
    })
    .await;
    assert!(back, "limits answer again after Redis came back");
    // The restarted Redis is empty; "after" has 2 of 3 left, then it is limited again.
    assert_eq!(closed.get("/tenant").header("x-tenant", "after").send().await.status, 200);
    assert_eq!(closed.get("/tenant").header("x-tenant", "after").send().await.status, 200);
    assert_eq!(closed.get("/tenant").header("x-tenant", "after").send().await.status, 429);
    assert_eq!(open.get("/tenant").header("x-tenant", "after").send().await.status, 429);
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

#[tokio::test]
async fn bad_input_gets_clear_grpc_errors_and_the_service_keeps_answering() {
    let redis = Redis::start().await;
    let service = Ratelimitd::start(LIMITS, Some(&redis.url())).await;
    let mut client = RateLimitServiceClient::connect(format!("http://{}", service.addr())).await.unwrap();
    let call = |domain: &str, descriptors: Vec<RateLimitDescriptor>| RateLimitRequest {
        domain: domain.to_owned(),
        descriptors,
        hits_addend: 0,
    };

    let status =
        client.should_rate_limit(call("nope", vec![descriptor(&[("tenant", "a")])])).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert_eq!(status.message(), "domain `nope` is not configured");
    let status = client.should_rate_limit(call(DOMAIN, vec![])).await.unwrap_err();
    assert_eq!((status.code(), status.message()), (tonic::Code::InvalidArgument, "descriptors: none given"));
    let status = client.should_rate_limit(call(DOMAIN, vec![descriptor(&[])])).await.unwrap_err();
    assert_eq!(status.message(), "descriptors[0].entries: none given");
    let huge = "x".repeat(100_000);
    let status =
        client.should_rate_limit(call(DOMAIN, vec![descriptor(&[("tenant", &huge)])])).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (tonic::Code::InvalidArgument, "descriptors[0].entries[0].value: longer than 1024 bytes")
    );
    let status = client.should_rate_limit(call(DOMAIN, vec![descriptor(&[(&huge, "a")])])).await.unwrap_err();
    assert_eq!(status.message(), "descriptors[0].entries[0].key: longer than 1024 bytes");
    let many: Vec<_> = (0..1000).map(|i| descriptor(&[("tenant", &format!("t{i}"))])).collect();
    let status = client.should_rate_limit(call(DOMAIN, many)).await.unwrap_err();
    assert_eq!(status.message(), "descriptors: 1000 given, at most 64");
    let status = client.should_rate_limit(call(&huge, vec![descriptor(&[("a", "b")])])).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (tonic::Code::InvalidArgument, "domain: longer than 256 bytes")
    );

    // Bytes that are not a RateLimitRequest: the gRPC frame says 7 bytes of a truncated field.
    let mut frame = vec![0u8, 0, 0, 0, 7];
    frame.extend_from_slice(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01]);
    let res = H2Request::post("/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(frame)
        .send(service.addr())
        .await
        .unwrap();
    let grpc_status = res
        .trailers
        .as_ref()
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| res.headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    assert_eq!(grpc_status.as_deref(), Some("13"), "INTERNAL: the body is not a valid message: {res:?}");

    // Still serving, and nothing above was charged.
    let ok = client
        .should_rate_limit(call(DOMAIN, vec![descriptor(&[("tenant", "a")])]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.statuses[0].limit_remaining, 2);
}

#[tokio::test]
async fn an_invalid_config_is_refused_at_start_naming_the_field() {
    let log = Ratelimitd::try_start(
        "domain: e2e\ndescriptors:\n- {key: a, rate_limit: {unit: fortnight, requests_per_unit: 1}}\n",
        None,
    )
    .await
    .err()
    .expect("the service refuses the config");
    assert!(
        log.contains("descriptors[0].rate_limit.unit: unknown unit `fortnight`"),
        "the error names the field:\n{log}"
    );
}

/// Envoy with Tollgate's own `rate-limit` filter in global mode: a local rule of 100 a second,
/// then one call per request to the service with [tenant=<x-tenant>]; `failure_mode` as given,
/// with a `fallback` rule of 1 an hour for `local_fallback`.
async fn tollgate_envoy(echo: &Echo, service: SocketAddr, failure_mode: &str) -> Envoy {
    let mut rules = vec![json!({"name": "local", "limits": [{"rate": 100, "per": "second"}]})];
    if failure_mode == "local_fallback" {
        rules.push(json!({"name": "fallback", "mode": "fallback", "limits": [{"rate": 1, "per": "hour"}]}));
    }
    let config = json!({
        "rules": rules,
        "global": {
            "cluster": tollgate_e2e::RATELIMIT_CLUSTER,
            "domain": DOMAIN,
            "timeout": "5s",
            "failure_mode": failure_mode,
            "descriptors": [[{"key": "tenant", "from": {"header": "x-tenant"}}]]
        }
    });
    let filter = tollgate_e2e::wasm_filter(
        "tollgate.rate_limit",
        "tollgate.rate_limit",
        &tollgate_e2e::wasm_module("tollgate_rate_limit"),
        &config,
    );
    Envoy::start(
        EnvoyOpts::new(echo.addr()).workers(2).http_filter(filter).cluster(ratelimit_cluster(&[service])),
    )
    .await
}

/// The Tollgate filter's global mode: two Envoys share the service's limit of 3 a minute per
/// tenant; the answer feeds the `RateLimit` headers; a refusal is the filter's uniform 429.
#[tokio::test]
async fn the_rate_limit_filter_in_global_mode_shares_the_services_limit() {
    let redis = Redis::start().await;
    let service = Ratelimitd::start(LIMITS, Some(&redis.url())).await;
    let echo = Echo::start();
    let a = tollgate_envoy(&echo, service.addr(), "allow").await;
    let b = tollgate_envoy(&echo, service.addr(), "allow").await;
    for (i, envoy) in [&a, &b, &a].into_iter().enumerate() {
        let res = envoy.get("/x").header("x-tenant", "acme").send().await;
        assert_eq!(res.status, 200, "request {i}: {}", res.text());
        let policy = res.header("ratelimit-policy").unwrap_or_default().to_owned();
        assert!(policy.contains(r#""per-tenant";q=3;w=60"#), "{policy}");
        assert_eq!(res.header("ratelimit"), Some(format!(r#""per-tenant";r={};t=20"#, 2 - i).as_str()));
    }
    let res = b.get("/x").header("x-tenant", "acme").send().await;
    assert_eq!(res.status, 429, "{}", res.text());
    assert_eq!(res.json()["error"], "rate_limited");
    assert_eq!(res.header("retry-after"), Some("20"));
    // Another tenant, and a request without the header (no descriptor: no call), pass.
    assert_eq!(a.get("/x").header("x-tenant", "globex").send().await.status, 200);
    assert_eq!(a.get("/x").send().await.status, 200);
    assert_eq!(service.metric(r#"tollgate_ratelimitd_requests_total{result="OVER_LIMIT"}"#).await, 1.0);
}

/// Redis down: the service answers UNAVAILABLE and the filter's `global.failure_mode` decides:
/// `allow` lets requests through, `deny` answers 429, `local_fallback` applies the fallback rule.
#[tokio::test]
async fn the_rate_limit_filter_follows_its_failure_mode_when_the_service_cannot_answer() {
    let mut redis = Redis::start().await;
    let service = Ratelimitd::start(LIMITS, Some(&redis.url())).await;
    let echo = Echo::start();
    let allow = tollgate_envoy(&echo, service.addr(), "allow").await;
    let deny = tollgate_envoy(&echo, service.addr(), "deny").await;
    let fallback = tollgate_envoy(&echo, service.addr(), "local_fallback").await;
    redis.kill();
    let status = |envoy: &Envoy| {
        let request = envoy.get("/x").header("x-tenant", "t");
        async move { request.send().await.status }
    };
    assert_eq!([status(&allow).await, status(&allow).await], [200, 200]);
    assert_eq!([status(&deny).await, status(&deny).await], [429, 429]);
    assert_eq!(
        [status(&fallback).await, status(&fallback).await],
        [200, 429],
        "the fallback rule: 1 an hour"
    );
    redis.restart().await;
    assert!(eventually(Duration::from_secs(15), || async { status(&deny).await == 200 }).await);
}
