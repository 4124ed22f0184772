//! The pipeline (`tollgate.pipeline` in the bundle module) through real Envoy: key-auth →
//! rate-limit → transform as stages of one filter, in one HTTP context per request.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use std::net::SocketAddr;

use tollgate_e2e::{
    Echo, Envoy, EnvoyOpts, HttpClient, Keyd, RawRequest, RawResponse, Value, eventually,
    every_worker_ticked, json, wasm_filter, wasm_module,
};

fn pipeline_config(keyd: &Keyd, per_hour: u32) -> Value {
    json!({"stages": [
        {"filter": "key_auth", "config": keyd.key_auth_config()},
        {"filter": "rate_limit", "config": {"rules": [{"name": "per-consumer", "by": ["consumer"],
            "limits": [{"rate": per_hour, "per": "hour"}]}]}},
        {"filter": "transform", "config": {"rules": [{"name": "t",
            "request": {"headers": [{"op": "set", "name": "x-gateway", "value": "tollgate {identity.consumer_id}"}]},
            "response": {"headers": [{"op": "set", "name": "x-transformed", "value": "yes"}]}}]}}
    ]})
}

async fn gateway(echo: &Echo, keyd: &Keyd, per_hour: u32, workers: u32) -> Envoy {
    let filter = wasm_filter(
        "pipeline",
        "tollgate.pipeline",
        &wasm_module("tollgate"),
        &pipeline_config(keyd, per_hour),
    );
    Envoy::start(EnvoyOpts::new(echo.addr()).keyd(keyd.addr()).http_filter(filter).workers(workers)).await
}

/// `n` requests with `key` at once, each on a connection of its own (so they spread over the
/// workers).
async fn at_once(addr: SocketAddr, key: &str, n: usize) -> Vec<RawResponse> {
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..n {
        let key = key.to_owned();
        requests.spawn(async move { RawRequest::get("/").header("x-api-key", key).send(addr).await });
    }
    requests.join_all().await.into_iter().map(|r| r.expect("a response")).collect()
}

async fn stat(envoy: &Envoy, name: &str) -> u64 {
    envoy.stat(&format!("wasmcustom.tollgate.{name}")).await.unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stages_run_in_order_in_one_filter() {
    let echo = Echo::start();
    let keyd = Keyd::start_temp().await;
    let envoy = gateway(&echo, &keyd, 3, 2).await;
    let client = HttpClient::fresh_connections();

    // key-auth refuses; nothing after it runs, nothing reaches the upstream.
    let res = client.get(envoy.url("/")).send().await;
    assert_eq!(res.status, 401, "{}", res.text());
    assert_eq!(res.header("x-transformed"), None, "transform never saw the request");
    assert_eq!(echo.requests(), 0);
    assert_eq!(stat(&envoy, "rate_limit.rule_decisions_total.rule.per-consumer.decision.allowed").await, 0);

    // A key: the first request waits for the key service, then goes through the later stages.
    let (_, key) = keyd.create_key("alice", &[]).await;
    let mut statuses = Vec::new();
    for i in 0..5 {
        let res =
            client.get(envoy.url("/")).header("x-api-key", &key).header("x-gateway", "forged").send().await;
        statuses.push(res.status);
        if res.status == 200 {
            assert_eq!(res.header("x-transformed"), Some("yes"), "request {i}");
            assert!(res.header("ratelimit-policy").is_some_and(|p| p.contains("per-consumer")), "{res:?}");
            let seen = echo.last_request().unwrap();
            assert_eq!(seen.header("x-tollgate-consumer-id"), Some("alice"));
            assert_eq!(seen.header("x-gateway"), Some("tollgate alice"), "transform read the identity");
            assert_eq!(seen.header("x-api-key"), None, "the key never reaches the upstream");
        } else {
            assert!(res.header("retry-after").is_some(), "{res:?}");
        }
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429], "three an hour for alice");
    assert_eq!(echo.requests(), 3);
    // Each stage keeps its own stats.
    assert!(stat(&envoy, "key_auth.requests_total.decision.allow").await >= 5);
    assert!(stat(&envoy, "key_auth.cache_lookups_total.result.miss").await >= 1);
    assert_eq!(stat(&envoy, "rate_limit.rule_decisions_total.rule.per-consumer.decision.allowed").await, 3);
    assert_eq!(stat(&envoy, "rate_limit.rule_decisions_total.rule.per-consumer.decision.limited").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_wait_on_one_lookup_all_go_through_the_later_stages() {
    let echo = Echo::start();
    let keyd = Keyd::start_temp().await;
    let envoy = gateway(&echo, &keyd, 1000, 1).await;
    let (_, key) = keyd.create_key("bob", &[]).await;
    // Concurrent first requests for one key on one worker: one lookup; the others wait on it
    // and are let through by the answer to the first.
    for res in at_once(envoy.addr(), &key, 8).await {
        assert_eq!(res.status, 200, "{}", res.text());
        assert_eq!(res.header("x-transformed").as_deref(), Some("yes"));
    }
    assert_eq!(echo.requests(), 8);
    assert!(echo.received().iter().all(|r| r.header("x-gateway") == Some("tollgate bob")));
    assert_eq!(
        stat(&envoy, "rate_limit.rule_decisions_total.rule.per-consumer.decision.allowed").await,
        8,
        "every one was counted"
    );
    let calls = stat(&envoy, "key_auth.cache_lookups_total.result.miss").await
        - stat(&envoy, "key_auth.singleflight_joined_total").await;
    eprintln!(
        "8 concurrent first requests: {} joined another's lookup, {calls} looked up",
        stat(&envoy, "key_auth.singleflight_joined_total").await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_refused_on_every_worker_within_two_seconds() {
    // The key-auth stage's tick (its change-feed poll) runs from the pipeline's root context.
    let echo = Echo::start();
    let keyd = Keyd::start_temp().await;
    let envoy = gateway(&echo, &keyd, 100_000, 4).await;
    let (id, key) = keyd.create_key("carol", &[]).await;
    let statuses =
        || async { at_once(envoy.addr(), &key, 16).await.iter().map(|r| r.status).collect::<Vec<u16>>() };
    assert!(statuses().await.iter().all(|s| *s == 200));
    assert!(statuses().await.iter().all(|s| *s == 200));
    assert!(
        eventually(Duration::from_secs(5), || async { stat(&envoy, "key_auth.feed_polls_total").await >= 2 })
            .await
    );
    let revoked_at = Instant::now();
    keyd.revoke_key(&id).await;
    let refused =
        eventually(Duration::from_secs(2), || async { statuses().await.iter().all(|s| *s == 401) }).await;
    let took = revoked_at.elapsed();
    assert!(refused, "still accepted by some worker {took:?} after revocation");
    // The workers the requests above missed refuse it after their tick (the default 500 ms poll).
    every_worker_ticked(Duration::from_millis(500)).await;
    let seen = statuses().await;
    assert!(seen.iter().all(|s| *s == 401), "{seen:?}");
    eprintln!("revocation took effect through the pipeline after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_stage_is_refused_at_load_naming_the_field() {
    let echo = Echo::start();
    let refusal = |config: Value| {
        let filter = wasm_filter("pipeline", "tollgate.pipeline", &wasm_module("tollgate"), &config);
        Envoy::expect_refusal(EnvoyOpts::new(echo.addr()).http_filter(filter))
    };
    let log =
        refusal(json!({"stages": [{"filter": "key_auth", "config": {}}, {"filter": "request_signing"}]}))
            .await;
    assert!(log.contains("invalid pipeline config: `stages[1].filter`"), "{log}");

    let log = refusal(json!({"stages": [{"filter": "rate_limit", "config": {"rules": "many"}}]})).await;
    assert!(log.contains("invalid rate-limit config"), "{log}");
    assert!(log.contains("`stages[0].config`"), "{log}");
}
