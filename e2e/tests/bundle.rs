//! The bundle module (`tollgate.wasm`, every filter in one module) through real Envoy: a chain
//! key-auth → rate-limit → transform loaded from it, each filter picked by its `root_id`, all in
//! one VM per worker.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use tollgate_e2e::{Echo, Envoy, EnvoyOpts, HttpClient, Keyd, Value, json, wasm_filter, wasm_module};

const WORKERS: u32 = 2;

fn bundled(name: &str, root_id: &str, config: &Value) -> Value {
    wasm_filter(name, root_id, &wasm_module("tollgate"), config)
}

fn chain(echo: &Echo, keyd: &Keyd, vm_id: &str) -> EnvoyOpts {
    let rate_limit = json!({"rules": [{"name": "per-consumer", "by": ["consumer"], "limits": [{"rate": 3, "per": "hour"}]}]});
    let transform = json!({"rules": [{"name": "t",
        "request": {"headers": [{"op": "set", "name": "x-gateway", "value": "tollgate {identity.consumer_id}"}]},
        "response": {"headers": [{"op": "set", "name": "x-transformed", "value": "yes"}]}}]});
    let mut opts = EnvoyOpts::new(echo.addr())
        .key_auth(keyd.key_auth_config())
        .wasm(wasm_module("tollgate"))
        .keyd(keyd.addr())
        .http_filter(bundled("rate_limit", "tollgate.rate_limit", &rate_limit))
        .http_filter(bundled("transform", "tollgate.transform", &transform))
        .workers(WORKERS);
    opts.vm_id = vm_id.to_owned();
    opts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_loaded_from_the_bundle_runs_every_filter_in_one_vm_per_worker() {
    let echo = Echo::start();
    let keyd = Keyd::start_temp().await;
    let envoy = Envoy::start(chain(&echo, &keyd, "tollgate")).await;
    let client = HttpClient::fresh_connections();

    // key-auth: no key, no entry.
    let res = client.get(envoy.url("/")).send().await;
    assert_eq!(res.status, 401, "{}", res.text());
    assert_eq!(echo.requests(), 0);

    // With a key: the identity reaches the upstream, transform templated it, rate-limit counted.
    let (_, key) = keyd.create_key("alice", &[]).await;
    let mut statuses = Vec::new();
    for i in 0..5 {
        let res = client.get(envoy.url("/")).header("x-api-key", &key).send().await;
        statuses.push(res.status);
        if i == 0 {
            assert_eq!(res.status, 200, "{}", res.text());
            assert_eq!(res.header("x-transformed"), Some("yes"));
            assert!(res.header("ratelimit-policy").is_some_and(|p| p.contains("per-consumer")), "{res:?}");
            let seen = echo.last_request().unwrap();
            assert_eq!(seen.header("x-tollgate-consumer-id"), Some("alice"));
            assert_eq!(seen.header("x-gateway"), Some("tollgate alice"));
        }
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429], "three an hour for alice");

    // Each filter kept its own stats.
    assert!(envoy.stat("wasmcustom.tollgate.key_auth.requests_total.decision.allow").await.unwrap_or(0) >= 3);
    assert_eq!(
        envoy
            .stat("wasmcustom.tollgate.rate_limit.rule_decisions_total.rule.per-consumer.decision.allowed")
            .await,
        Some(3)
    );
    assert_eq!(
        envoy
            .stat("wasmcustom.tollgate.rate_limit.rule_decisions_total.rule.per-consumer.decision.limited")
            .await,
        Some(2)
    );

    // One VM per worker (and two on the main thread) for the three filters: as many as one
    // filter alone would have.
    let vms = envoy.stat("wasm.envoy.wasm.runtime.v8.active").await.expect("the V8 VM gauge");
    assert!(vms <= u64::from(WORKERS) + 2, "{vms} VMs for {WORKERS} workers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_filter_in_its_own_module_takes_a_vm_of_its_own() {
    // The counterpart of the test above, so that its VM count means something: the same chain
    // from the single-filter modules.
    let echo = Echo::start();
    let keyd = Keyd::start_temp().await;
    let rate_limit = json!({"rules": [{"name": "all", "limits": [{"rate": 1000, "per": "second"}]}]});
    let envoy = Envoy::start(
        EnvoyOpts::new(echo.addr())
            .key_auth(keyd.key_auth_config())
            .keyd(keyd.addr())
            .http_filter(wasm_filter(
                "rate_limit",
                "tollgate.rate_limit",
                &wasm_module("tollgate_rate_limit"),
                &rate_limit,
            ))
            .workers(WORKERS),
    )
    .await;
    let vms = envoy.stat("wasm.envoy.wasm.runtime.v8.active").await.expect("the V8 VM gauge");
    assert!(vms >= 2 * (u64::from(WORKERS) + 2), "{vms} VMs for two modules and {WORKERS} workers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_id_that_names_no_filter_is_refused_at_load() {
    let echo = Echo::start();
    let opts = EnvoyOpts::new(echo.addr()).http_filter(bundled("oops", "tollgate.key-auth", &json!({})));
    let log = Envoy::expect_refusal(opts).await;
    assert!(log.contains("root_id `tollgate.key-auth` names no filter"), "{log}");
    assert!(log.contains("tollgate.key_auth"), "the ids it could be are listed: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_filter_runs_from_the_bundle_too() {
    let echo = Echo::start();
    let cache = json!({"max_memory_bytes": 1_048_576, "origin_cluster": "upstream"});
    let envoy =
        Envoy::start(EnvoyOpts::new(echo.addr()).http_filter(bundled("cache", "tollgate.cache", &cache)))
            .await;
    let client = HttpClient::fresh_connections();
    // A miss that may only be answered from the cache: the cache filter answers it, 504.
    let res = client.get(envoy.url("/x")).header("cache-control", "only-if-cached").send().await;
    assert_eq!(res.status, 504, "{}", res.text());
    assert_eq!(res.json()["error"], "gateway_timeout");
    assert_eq!(echo.requests(), 0);
    // Anything else goes through (the echo's answers carry no freshness: never stored).
    let res = client.get(envoy.url("/x")).send().await;
    assert_eq!(res.status, 200);
    assert!(res.header("cache-status").is_some_and(|s| s.starts_with("tollgate")), "{res:?}");
}
