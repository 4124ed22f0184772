//! Usage per key through real Envoy: counted in each worker, reported by one worker at a time to
//! the real key service, exactly once even across a key-service outage.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::Duration;

use tollgate_e2e::{Echo, Envoy, EnvoyOpts, Keyd, NODE_ID, RawRequest, eventually};
use tollgate_proto::v1::{GetUsageRequest, GetUsageResponse};

/// `n` requests with `key`, each on a connection of its own (so they spread over the workers),
/// a few at a time; returns their statuses.
async fn send(addr: SocketAddr, key: &str, n: usize) -> Vec<u16> {
    let mut statuses = Vec::with_capacity(n);
    for chunk in 0..n.div_ceil(10) {
        let mut requests = tokio::task::JoinSet::new();
        for _ in 0..10.min(n - chunk * 10) {
            let key = key.to_owned();
            requests.spawn(async move { RawRequest::get("/").header("x-api-key", key).send(addr).await });
        }
        statuses.extend(requests.join_all().await.into_iter().map(|r| r.expect("a response").status));
    }
    statuses
}

async fn usage(keyd: &Keyd, key_id: &str) -> GetUsageResponse {
    let mut admin = keyd.admin_client().await;
    let request = GetUsageRequest { key_ids: vec![key_id.to_owned()], since: 0, ..Default::default() };
    admin.get_usage(request).await.unwrap().into_inner()
}

fn allowed(usage: &GetUsageResponse) -> u64 {
    usage.keys.iter().map(|k| k.allowed).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_reported_exactly_once_across_workers_and_a_key_service_outage() {
    let echo = Echo::start();
    let mut keyd = Keyd::start_temp().await;
    let mut config = keyd.key_auth_config();
    config["usage"] = serde_json::json!({"report_interval": "1s"});
    let envoy = Envoy::start(EnvoyOpts::new(echo.addr()).key_auth(config).keyd(keyd.addr()).workers(2)).await;
    let (id, key) = keyd.create_key("alice", &[]).await;

    assert!(send(envoy.addr(), &key, 120).await.iter().all(|s| *s == 200));
    // The key service goes away for a few seconds: cached, the key keeps working; reports fail
    // and are sent again once it is back.
    keyd.stop().await;
    assert!(send(envoy.addr(), &key, 80).await.iter().all(|s| *s == 200));
    tokio::time::sleep(Duration::from_secs(3)).await;
    keyd.restart().await;
    assert!(send(envoy.addr(), &key, 50).await.iter().all(|s| *s == 200));

    let reported =
        eventually(Duration::from_secs(20), || async { allowed(&usage(&keyd, &id).await) >= 250 }).await;
    let seen = usage(&keyd, &id).await;
    assert!(reported, "reported {} of 250: {seen:?}", allowed(&seen));
    // Later reports (and any batch sent again) add nothing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen = usage(&keyd, &id).await;
    assert_eq!(allowed(&seen), 250, "{seen:?}");
    assert_eq!(seen.keys[0].denied, 0);
    // The gateway reports under its node id, with the feed position it applied.
    assert_eq!(seen.gateways.len(), 1, "{seen:?}");
    assert_eq!(seen.gateways[0].gateway, NODE_ID);
    assert!(seen.gateways[0].feed_seq >= 1, "{seen:?}");
    assert!(
        envoy.stat("wasmcustom.tollgate.key_auth.usage_reports_total.outcome.error").await.unwrap_or(0) >= 1
    );
    assert_eq!(envoy.stat("wasmcustom.tollgate.key_auth.usage_dropped_total").await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_of_a_known_key_are_counted_under_their_reason() {
    let echo = Echo::start();
    let keyd = Keyd::start_temp().await;
    let mut config = keyd.key_auth_config();
    config["usage"] = serde_json::json!({"report_interval": "1s", "gateway": "edge-1"});
    config["key_service"]["poll_interval"] = serde_json::json!("200ms");
    let envoy = Envoy::start(EnvoyOpts::new(echo.addr()).key_auth(config).keyd(keyd.addr())).await;
    let (id, key) = keyd.create_key("bob", &[]).await;
    let mut statuses = send(envoy.addr(), &key, 5).await;
    assert!(statuses.iter().all(|s| *s == 200));
    keyd.revoke_key(&id).await;
    // Until the gateway learns of the revocation the key still works: every answer is counted.
    for _ in 0..100 {
        let status = send(envoy.addr(), &key, 1).await;
        statuses.extend(&status);
        if status == [401] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    statuses.extend(send(envoy.addr(), &key, 3).await);
    let ok = statuses.iter().filter(|s| **s == 200).count() as u64;
    let refused = statuses.iter().filter(|s| **s == 401).count() as u64;
    assert!(refused >= 4, "{statuses:?}");
    let counted = eventually(Duration::from_secs(15), || async {
        let u = usage(&keyd, &id).await;
        u.keys.first().is_some_and(|k| k.allowed == ok && k.outcomes.get("revoked_key") == Some(&refused))
    })
    .await;
    let seen = usage(&keyd, &id).await;
    assert!(counted, "{ok} allowed and {refused} revoked sent: {seen:?}");
    assert_eq!(seen.gateways[0].gateway, "edge-1");
}
