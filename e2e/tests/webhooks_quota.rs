//! quota.exhausted through real Envoy: key-auth then rate-limit per consumer refuse a consumer,
//! the rate-limit filter reports the refusals to the real key service, and a real receiver gets
//! one quota.exhausted for that consumer and rule, verified with `standardwebhooks`, however many
//! refusals follow the same day.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::Duration;

use tollgate_e2e::{
    Echo, Envoy, EnvoyOpts, Keyd, RawRequest, WebhookReceiver, eventually, json, wasm_filter, wasm_module,
};
use tollgate_proto::v1::{GetConsumerRequest, GetUsageRequest};

/// `n` requests with `key`, one after another; their statuses.
async fn send(addr: SocketAddr, key: &str, n: usize) -> Vec<u16> {
    let mut statuses = Vec::with_capacity(n);
    for _ in 0..n {
        let response = RawRequest::get("/").header("x-api-key", key).send(addr).await.expect("a response");
        statuses.push(response.status);
    }
    statuses
}

/// Refusals of alice by the rule `per-consumer` the key service has counted.
async fn limited(keyd: &Keyd) -> u64 {
    let mut admin = keyd.admin_client().await;
    let usage =
        admin.get_usage(GetUsageRequest { since: 0, ..Default::default() }).await.unwrap().into_inner();
    usage.limits.iter().filter(|l| l.rule == "per-consumer").map(|l| l.limited).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_refusal_of_the_day_sends_one_quota_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = WebhookReceiver::start(&dir.path().join("receiver"), "").await;
    let args = ["--webhooks-allow-private", "--webhooks-timeout", "2"].map(String::from);
    let keyd = Keyd::start_with_args(dir.path().join("keyd"), &args).await;
    receiver.subscribe(&keyd, &["quota.exhausted"]).await;

    let echo = Echo::start();
    let (_, key) = keyd.create_key("alice", &[]).await;
    let usage =
        json!({"key_service": keyd.key_auth_config()["key_service"].clone(), "report_interval": "1s"});
    let rl_config = json!({"slots": 1024, "usage": usage,
        "rules": [{"name": "per-consumer", "by": ["consumer"], "missing": "skip",
                   "limits": [{"rate": 1, "per": "hour", "burst": 2}]}]});
    let rl_filter =
        wasm_filter("rate_limit", "tollgate.rate_limit", &wasm_module("tollgate_rate_limit"), &rl_config);
    let opts =
        EnvoyOpts::new(echo.addr()).key_auth(keyd.key_auth_config()).keyd(keyd.addr()).http_filter(rl_filter);
    let envoy = Envoy::start(opts).await;

    // Two allowed, then refused.
    let statuses = send(envoy.addr(), &key, 5).await;
    assert_eq!(statuses, [200, 200, 429, 429, 429]);
    let seen = receiver.wait_for("quota.exhausted", Duration::from_secs(30), |s| !s.is_empty()).await;
    let alice = keyd
        .admin_client()
        .await
        .get_consumer(GetConsumerRequest { id: "alice".into() })
        .await
        .unwrap()
        .into_inner()
        .id;
    assert_eq!(seen[0]["verified"], true, "{}", seen[0]);
    let event = &seen[0]["event"];
    assert_eq!(event["type"], "quota.exhausted");
    assert_eq!(event["data"]["consumer_id"], alice.as_str());
    assert_eq!(event["data"]["rule"], "per-consumer");
    let first = event["data"]["first_refused_at"].as_str().unwrap();
    assert!(first.ends_with(":00Z"), "the start of a minute: {first}");
    assert_eq!(event["data"]["day"].as_str().unwrap(), &first[..10]);

    // More refusals the same day, reported and counted: no second event.
    assert_eq!(send(envoy.addr(), &key, 3).await, [429, 429, 429]);
    let counted = eventually(Duration::from_secs(20), || async { limited(&keyd).await >= 6 }).await;
    assert!(counted, "the refusals were not reported: {}", limited(&keyd).await);
    // Two delivery rounds after the last report.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen = receiver.seen();
    assert_eq!(seen.len(), 1, "one quota.exhausted: {seen:#?}");
}
