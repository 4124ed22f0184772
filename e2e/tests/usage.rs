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

/// jwt-auth counts verified subjects, and rate-limit (behind key-auth) counts refusals per
/// consumer and rule; both report to the key service named in their `usage` block, and
/// `GetUsage` returns them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_subjects_and_rate_limit_refusals_are_reported() {
    use tollgate_e2e::{json, wasm_filter, wasm_module};
    use tollgate_testkit::jwt::{self, JwtKey};
    const ISS: &str = "https://idp.test";
    let echo = Echo::start();
    let keyd = Keyd::start_temp().await;
    let usage_block =
        json!({"key_service": keyd.key_auth_config()["key_service"].clone(), "report_interval": "1s"});

    // jwt-auth alone, keys inline.
    let k = jwt::random_es256().unwrap();
    let jwt_config = json!({
        "providers": [{"name": "idp", "issuer": ISS, "audiences": ["api"], "algorithms": ["ES256"],
                       "jwks": {"keys": [k.jwk("k1")]}}],
        "routes": [{"path_prefix": "/admin", "scopes": ["admin"]}],
        "usage": usage_block,
    });
    let jwt_filter =
        wasm_filter("jwt_auth", "tollgate.jwt_auth", &wasm_module("tollgate_jwt_auth"), &jwt_config);
    let jwt_envoy =
        Envoy::start(EnvoyOpts::new(echo.addr()).keyd(keyd.addr()).http_filter(jwt_filter).workers(2)).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let token = |sub: &str| {
        jwt::mint(&k, "k1", &json!({"iss": ISS, "aud": "api", "sub": sub, "exp": now + 600, "scope": "read"}))
    };
    let (alice, bob) = (token("alice"), token("bob"));
    for (path, token, status) in
        [("/", &alice, 200), ("/", &alice, 200), ("/", &alice, 200), ("/admin", &bob, 403)]
    {
        let res = RawRequest::get(path)
            .header("authorization", format!("Bearer {token}"))
            .send(jwt_envoy.addr())
            .await;
        assert_eq!(res.unwrap().status, status);
    }

    // key-auth then rate-limit per consumer: 2 allowed, 3 refused for alice.
    let (_, key) = keyd.create_key("alice", &[]).await;
    let rl_config = json!({"slots": 1024, "usage": usage_block,
        "rules": [{"name": "per-consumer", "by": ["consumer"], "missing": "skip",
                   "limits": [{"rate": 1, "per": "hour", "burst": 2}]}]});
    let rl_filter =
        wasm_filter("rate_limit", "tollgate.rate_limit", &wasm_module("tollgate_rate_limit"), &rl_config);
    let opts =
        EnvoyOpts::new(echo.addr()).key_auth(keyd.key_auth_config()).keyd(keyd.addr()).http_filter(rl_filter);
    let rl_envoy = Envoy::start(opts).await;
    let statuses = send(rl_envoy.addr(), &key, 5).await;
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 3, "{statuses:?}");

    let read = || async {
        let mut admin = keyd.admin_client().await;
        admin.get_usage(GetUsageRequest { since: 0, ..Default::default() }).await.unwrap().into_inner()
    };
    let done = eventually(Duration::from_secs(20), || async {
        let u = read().await;
        let subjects: u64 = u.subjects.iter().flat_map(|s| s.outcomes.values()).sum();
        let limited: u64 = u.limits.iter().map(|l| l.limited).sum();
        subjects >= 4 && limited >= 3
    })
    .await;
    let u = read().await;
    assert!(done, "{u:?}");
    let subjects: Vec<(&str, Vec<(&str, u64)>)> = u
        .subjects
        .iter()
        .map(|s| (s.subject.as_str(), s.outcomes.iter().map(|(o, n)| (o.as_str(), *n)).collect()))
        .collect();
    let (alice_sub, bob_sub) = (format!("{ISS} alice"), format!("{ISS} bob"));
    assert_eq!(
        subjects,
        [(alice_sub.as_str(), vec![("allowed", 3)]), (bob_sub.as_str(), vec![("insufficient_scope", 1)])]
    );
    let limits: Vec<(&str, &str, u64)> =
        u.limits.iter().map(|l| (l.consumer_id.as_str(), l.rule.as_str(), l.limited)).collect();
    let mut admin = keyd.admin_client().await;
    let request = tollgate_proto::v1::GetConsumerRequest { id: "alice".into() };
    let alice_id = admin.get_consumer(request).await.unwrap().into_inner().id;
    assert_eq!(limits, [(alice_id.as_str(), "per-consumer", 3)]);
    assert!(
        jwt_envoy.stat("wasmcustom.tollgate.jwt_auth.usage_reports_total.outcome.ok").await.unwrap_or(0) >= 1
    );
}
