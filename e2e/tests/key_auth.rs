//! The key-auth filter end to end: real Envoy (2 workers), the real key service, a real upstream.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use tollgate_e2e::{
    Echo, Envoy, EnvoyOpts, HttpClient, Keyd, RawRequest, Response, Value, eventually, every_worker_ticked,
    json,
};
use tollgate_proto::v1::{CreateKeyRequest, RotateKeyRequest, Scopes, UpdateKeyRequest};

const WORKERS: u32 = 2;
/// The gateway's change-feed poll interval.
const POLL: Duration = Duration::from_millis(200);
const STATS: &str = "wasmcustom.tollgate.key_auth.";

struct Gateway {
    echo: Echo,
    keyd: Keyd,
    envoy: Envoy,
    /// A new connection per request, so requests land on every worker.
    client: HttpClient,
}

impl Gateway {
    async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts everything; `tune` adjusts the key-auth config.
    async fn start_with(tune: impl FnOnce(&mut Value)) -> Self {
        Self::start_routed(tune, |o| o).await
    }

    /// Starts everything; `tune` adjusts the key-auth config, `opts` Envoy's.
    async fn start_routed(tune: impl FnOnce(&mut Value), opts: impl FnOnce(EnvoyOpts) -> EnvoyOpts) -> Self {
        let echo = Echo::start();
        let keyd = Keyd::start_temp().await;
        let mut config = keyd.key_auth_config();
        config["key_service"]["poll_interval"] = json!(format!("{}ms", POLL.as_millis()));
        tune(&mut config);
        let envoy = Envoy::start(opts(
            EnvoyOpts::new(echo.addr()).key_auth(config).keyd(keyd.addr()).workers(WORKERS),
        ))
        .await;
        Self { echo, keyd, envoy, client: HttpClient::fresh_connections() }
    }

    async fn get(&self, path: &str, key: Option<&str>) -> Response {
        let mut req = self.client.get(self.envoy.url(path));
        if let Some(key) = key {
            req = req.header("x-api-key", key);
        }
        req.send().await
    }

    /// Sends `n` requests with `key` and returns their statuses.
    async fn statuses(&self, path: &str, key: &str, n: usize) -> Vec<u16> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.get(path, Some(key)).await.status);
        }
        out
    }

    async fn stat(&self, name: &str) -> u64 {
        self.envoy.stat(&format!("{STATS}{name}")).await.unwrap_or(0)
    }

    /// Waits until the filter's stat `name` reaches `value` (stats land as streams end).
    async fn stat_reaches(&self, name: &str, value: u64) -> bool {
        eventually(Duration::from_secs(5), || async { self.stat(name).await >= value }).await
    }
}

fn assert_denied(res: &Response, status: u16, error: &str) {
    assert_eq!(res.status, status, "{}", res.text());
    assert_eq!(res.header("content-type"), Some("application/json"));
    let body = res.json();
    assert_eq!(body["error"], error, "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert!(body["request_id"].as_str().is_some_and(|id| !id.is_empty()), "{body}");
    if status == 401 {
        assert_eq!(res.header("www-authenticate"), Some("ApiKey realm=\"tollgate\""));
    }
}

#[tokio::test]
async fn request_without_a_key_is_401_and_never_reaches_the_upstream() {
    let gw = Gateway::start().await;
    let res = gw.get("/hello", None).await;
    assert_denied(&res, 401, "unauthorized");
    assert_eq!(gw.echo.requests(), 0);
    assert!(gw.stat_reaches("requests_total.decision.deny.reason.missing_key", 1).await);
}

#[tokio::test]
async fn malformed_key_is_401_with_no_lookup() {
    let gw = Gateway::start().await;
    let (_, key) = gw.keyd.create_key("alice", &[]).await;
    // One character changed: the checksum no longer matches.
    let mut typo = key.clone().into_bytes();
    typo[12] = if typo[12] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).unwrap();
    for bad in [
        typo.as_str(),
        "tgk_short",
        "not-a-key",
        &format!("{key}x"),
        "tgk_ééééééééééééééééééééééééééééééééééé",
    ] {
        assert_denied(&gw.get("/", Some(bad)).await, 401, "unauthorized");
    }
    assert!(gw.stat_reaches("requests_total.decision.deny.reason.malformed_key", 5).await);
    assert_eq!(gw.stat("cache_lookups_total.result.miss").await, 0, "a malformed key must not be looked up");
    assert_eq!(gw.echo.requests(), 0);
    assert!(!gw.envoy.logs().contains(&typo), "a presented key must never be logged");
}

#[tokio::test]
async fn valid_key_reaches_the_upstream_with_identity_and_without_the_key() {
    let gw = Gateway::start_with(|c| {
        c["sources"] = json!([{"header": "x-api-key"}, {"query": "api_key"}]);
    })
    .await;
    let (id, key) = gw.keyd.create_key("alice", &["read", "write"]).await;

    let res = gw
        .client
        .get(gw.envoy.url("/hello"))
        .header("x-api-key", &key)
        .header("x-tollgate-consumer-id", "mallory")
        .header("x-tollgate-key-id", "key_spoofed")
        .header("x-tollgate-scopes", "admin")
        .header("x-tollgate-issuer", "https://evil.example")
        .send()
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let seen = gw.echo.last_request().unwrap();
    assert_eq!(seen.header("x-tollgate-issuer"), None, "every identity header a client sends is removed");
    assert_eq!(seen.header("x-tollgate-consumer-id"), Some("alice"));
    assert_eq!(seen.header("x-tollgate-key-id"), Some(id.as_str()));
    assert_eq!(seen.header("x-tollgate-scopes"), Some("read write"), "scopes are space-separated");
    assert_eq!(seen.header("x-api-key"), None, "hide_credentials strips the key");

    // In the query string: stripped too, other parameters kept.
    let res = gw.get(&format!("/q?a=1&api_key={key}&b=2"), None).await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.json()["query"], "a=1&b=2");
    assert!(
        gw.echo.received().iter().all(|r| !format!("{r:?}").contains(&key)),
        "the upstream never sees the key"
    );
    assert!(!gw.envoy.logs().contains(&key) && !gw.keyd.logs().contains(&key), "the key is never logged");
}

#[tokio::test]
async fn spoofed_identity_headers_are_removed_even_when_the_request_is_denied_or_allowed_by_failure_mode() {
    let gw = Gateway::start().await;
    let res = gw.client.get(gw.envoy.url("/")).header("x-tollgate-consumer-id", "mallory").send().await;
    assert_eq!(res.status, 401);
    assert_eq!(gw.echo.requests(), 0);
}

#[tokio::test]
async fn two_different_keys_in_one_request_are_refused() {
    let gw = Gateway::start_with(|c| {
        c["sources"] = json!([{"header": "x-api-key"}, {"header": "authorization", "prefix": "Bearer "}]);
    })
    .await;
    let (_, a) = gw.keyd.create_key("alice", &[]).await;
    let (_, b) = gw.keyd.create_key("bob", &[]).await;
    let res = gw
        .client
        .get(gw.envoy.url("/"))
        .header("x-api-key", &a)
        .header("authorization", &format!("Bearer {b}"))
        .send()
        .await;
    assert_denied(&res, 401, "unauthorized");
    let same = gw
        .client
        .get(gw.envoy.url("/"))
        .header("x-api-key", &a)
        .header("authorization", &format!("Bearer {a}"))
        .send()
        .await;
    assert_eq!(same.status, 200, "the same key twice is one key");
}

#[tokio::test]
async fn revoked_key_is_refused_on_every_worker_within_two_seconds() {
    // Four workers, each with its own cache of answers in front of shared data.
    let gw = Gateway::start_routed(|_| {}, |o| o.workers(4)).await;
    let (id, key) = gw.keyd.create_key("alice", &[]).await;
    // Warm the caches of every worker (each request on a fresh connection).
    assert!(gw.statuses("/", &key, 16).await.iter().all(|s| *s == 200));
    assert!(gw.statuses("/", &key, 16).await.iter().all(|s| *s == 200));

    // The change-feed consumer has started (it learns the head on its first poll).
    assert!(gw.stat_reaches("feed_polls_total", 2).await);
    let revoked_at = Instant::now();
    gw.keyd.revoke_key(&id).await;
    let refused = eventually(Duration::from_secs(2), || async {
        gw.statuses("/", &key, 16).await.iter().all(|s| *s == 401)
    })
    .await;
    let took = revoked_at.elapsed();
    assert!(refused, "still accepted by some worker {took:?} after revocation");
    // Every worker refuses it from now on (those the requests above missed after their tick).
    every_worker_ticked(POLL).await;
    let seen = gw.statuses("/", &key, 16).await;
    assert!(seen.iter().all(|s| *s == 401), "{seen:?}");
    assert!(gw.stat_reaches("feed_invalidations_total", 1).await);
    eprintln!("revocation took effect on every worker after {took:?}");
}

#[tokio::test]
async fn expired_key_is_refused_even_when_cached() {
    let gw = Gateway::start().await;
    let mut admin = gw.keyd.admin_client().await;
    let created = admin
        .create_key(CreateKeyRequest {
            consumer: "alice".into(),
            create_consumer: true,
            ttl_seconds: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let key = created.secret;
    let expires_at = created.key.unwrap().expires_at;
    assert_eq!(gw.get("/", Some(&key)).await.status, 200);
    assert!(gw.stat_reaches("cache_lookups_total.result.miss", 1).await);
    let misses = gw.stat("cache_lookups_total.result.miss").await;

    // Wait past the expiry; the cached answer (TTL 60 s) is still there.
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    while now() < expires_at {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let res = gw.get("/", Some(&key)).await;
        statuses.push(res.status);
    }
    // The worker that cached it refuses from its cache; a worker that had not seen it yet asks
    // the key service, which says expired.
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    assert!(gw.stat_reaches("requests_total.decision.deny.reason.expired_key", 4).await);
    assert!(gw.stat("cache_lookups_total.result.miss").await <= misses + 1, "decided from the cache");
}

#[tokio::test]
async fn rotated_key_old_secret_works_during_the_grace_period_only() {
    let gw = Gateway::start().await;
    let (id, old) = gw.keyd.create_key("alice", &[]).await;
    assert_eq!(gw.get("/", Some(&old)).await.status, 200);

    let mut admin = gw.keyd.admin_client().await;
    let rotated = admin
        .rotate_key(RotateKeyRequest { id: id.clone(), grace_period_seconds: 2 })
        .await
        .unwrap()
        .into_inner();
    let new = rotated.secret;
    let grace_end = rotated.key.unwrap().previous_expires_at;
    assert_ne!(old, new);
    assert_eq!(gw.get("/", Some(&new)).await.status, 200);
    let res = gw.get("/", Some(&old)).await;
    assert_eq!(res.status, 200, "old secret during the grace period");
    assert_eq!(gw.echo.last_request().unwrap().header("x-tollgate-key-id"), Some(id.as_str()));

    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    while now() < grace_end {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gw.statuses("/", &old, 4).await.iter().all(|s| *s == 401), "old secret after the grace period");
    assert!(gw.statuses("/", &new, 4).await.iter().all(|s| *s == 200), "new secret keeps working");
}

#[tokio::test]
async fn missing_scope_is_403() {
    let gw = Gateway::start_with(|c| {
        c["routes"] = json!([{"path_prefix": "/admin", "methods": ["POST"], "scopes": ["admin"]}]);
    })
    .await;
    let (_, reader) = gw.keyd.create_key("alice", &["read"]).await;
    let (_, admin) = gw.keyd.create_key("root", &["read", "admin"]).await;

    let post = |key: String| {
        let req = gw.client.post(gw.envoy.url("/admin/users")).header("x-api-key", &key);
        async move { req.send().await }
    };
    let res = post(reader.clone()).await;
    assert_denied(&res, 403, "forbidden");
    assert_eq!(res.header("www-authenticate"), None);
    assert_eq!(post(admin).await.status, 200);
    assert_eq!(gw.get("/admin/users", Some(&reader)).await.status, 200, "the rule covers POST only");
    assert!(gw.stat_reaches("requests_total.decision.deny.reason.insufficient_scope", 1).await);
}

#[tokio::test]
async fn key_service_down_cached_keys_work_unknown_keys_503_then_recovers() {
    let mut gw = Gateway::start().await;
    let (_, known) = gw.keyd.create_key("alice", &[]).await;
    let (_, unseen) = gw.keyd.create_key("bob", &[]).await;
    assert!(gw.statuses("/", &known, 6).await.iter().all(|s| *s == 200), "cached on both workers");

    gw.keyd.stop().await;
    assert!(gw.statuses("/", &known, 6).await.iter().all(|s| *s == 200), "cached key keeps working");
    let res = gw.get("/", Some(&unseen)).await;
    assert_denied(&res, 503, "unavailable");
    assert_eq!(res.header("retry-after"), Some("1"));

    gw.keyd.restart().await;
    let recovered =
        eventually(Duration::from_secs(10), || async { gw.get("/", Some(&unseen)).await.status == 200 })
            .await;
    assert!(recovered, "a key the gateway never saw works once the key service is back");
}

#[tokio::test]
async fn concurrent_requests_for_a_new_key_make_one_lookup_per_worker() {
    let gw = Gateway::start().await;
    let (_, key) = gw.keyd.create_key("alice", &[]).await;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..24 {
        let req = gw.client.get(gw.envoy.url("/")).header("x-api-key", &key);
        set.spawn(async move { req.send().await.status });
    }
    let statuses = set.join_all().await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert!(gw.stat_reaches("requests_total.decision.allow", 24).await);
    let lookups =
        gw.stat("cache_lookups_total.result.miss").await - gw.stat("singleflight_joined_total").await;
    assert!((1..=u64::from(WORKERS)).contains(&lookups), "{lookups} lookups for one key");
}

#[tokio::test]
async fn invalid_filter_config_is_refused_naming_the_field() {
    let echo = Echo::start();
    let bad = json!({"key_service": {"cluster": "tollgate_keyd", "token": "t", "timeout": "5"}});
    let log = Envoy::expect_refusal(EnvoyOpts::new(echo.addr()).key_auth(bad)).await;
    assert!(log.contains("key_service.timeout"), "{log}");
    let unknown =
        json!({"key_service": {"cluster": "tollgate_keyd", "token": "t"}, "hide_credential": false});
    let log = Envoy::expect_refusal(EnvoyOpts::new(echo.addr()).key_auth(unknown)).await;
    assert!(log.contains("hide_credential"), "{log}");
}

/// A scope rule keyed on Envoy's route name applies: the name is read from `xds.route_name`.
#[tokio::test]
async fn a_route_name_rule_requires_its_scope() {
    let gw = Gateway::start_routed(
        |c| c["routes"] = json!([{"route_name": "admin", "scopes": ["admin"]}]),
        |o| o.named_route("admin", "/admin"),
    )
    .await;
    let (_, reader) = gw.keyd.create_key("alice", &["read"]).await;
    let (_, admin) = gw.keyd.create_key("root", &["admin"]).await;
    assert_denied(&gw.get("/admin/users", Some(&reader)).await, 403, "forbidden");
    assert_eq!(gw.get("/admin/users", Some(&admin)).await.status, 200);
    assert_eq!(gw.get("/public", Some(&reader)).await.status, 200, "other routes need no scope");
    assert!(gw.stat_reaches("requests_total.decision.deny.reason.insufficient_scope", 1).await);
}

/// Rules match the normalised path: no spelling of `/admin` escapes a rule written for it, and
/// an encoded slash is refused. Envoy runs with its own path normalisation off (its default), so
/// this is the filter's doing.
#[tokio::test]
async fn spellings_of_a_ruled_path_do_not_escape_the_rule() {
    let gw =
        Gateway::start_with(|c| c["routes"] = json!([{"path_prefix": "/admin", "scopes": ["admin"]}])).await;
    let (_, reader) = gw.keyd.create_key("alice", &["read"]).await;
    let (_, admin) = gw.keyd.create_key("root", &["admin"]).await;
    for spelling in ["/admin", "//admin", "/./admin", "/%61dmin", "/x/../admin", "/%2e%2e/admin/x"] {
        let res = RawRequest::get(spelling).header("x-api-key", &reader).send(gw.envoy.addr()).await.unwrap();
        assert_eq!(res.status, 403, "{spelling}: {}", res.text());
        assert_eq!(res.json()["error"], "forbidden", "{spelling}");
        let res = RawRequest::get(spelling).header("x-api-key", &admin).send(gw.envoy.addr()).await.unwrap();
        assert_eq!(res.status, 200, "{spelling} with the scope: {}", res.text());
    }
    for encoded in ["/admin%2Fusers", "/x%2F..%2Fadmin", "/x%5c..%5cadmin"] {
        let res = RawRequest::get(encoded).header("x-api-key", &admin).send(gw.envoy.addr()).await.unwrap();
        assert_eq!(res.status, 400, "{encoded}: {}", res.text());
        assert_eq!(res.json()["error"], "bad_request", "{encoded}");
    }
    assert!(gw.stat_reaches("requests_total.decision.deny.reason.bad_path", 3).await);
    let res = RawRequest::get("/public").header("x-api-key", &reader).send(gw.envoy.addr()).await.unwrap();
    assert_eq!(res.status, 200);
}

/// The scopes the upstream saw for a request, from the echo's answer.
fn scopes_seen(res: &Response) -> Option<String> {
    res.json()["headers"]["x-tollgate-scopes"].as_str().map(str::to_owned)
}

/// A key service restored from a backup: its change feed goes back to the backup's head, and
/// the changes made after the restore reuse sequence numbers the lost timeline had used. Every
/// answer cached before the restore is checked again within a few polls (not a cache TTL), and
/// the changes of the new timeline invalidate as usual.
#[tokio::test]
async fn a_store_restored_from_a_backup_invalidates_answers_cached_before_the_restore() {
    let mut gw = Gateway::start().await;
    let (kept_id, kept) = gw.keyd.create_key("alice", &["read"]).await;
    assert!(gw.statuses("/", &kept, 4).await.iter().all(|s| *s == 200), "cached on both workers");
    assert!(gw.stat_reaches("feed_polls_total", 2).await, "the feed consumer has started");

    let backup = gw.keyd.backup_store().await;

    // The timeline the restore loses: a new key, a change to the kept key, more changes.
    let (_, lost) = gw.keyd.create_key("bob", &[]).await;
    let mut admin = gw.keyd.admin_client().await;
    admin
        .update_key(UpdateKeyRequest {
            id: kept_id.clone(),
            scopes: Some(Scopes { values: vec!["read".into(), "write".into()] }),
            ..Default::default()
        })
        .await
        .unwrap();
    for i in 0..4 {
        gw.keyd.create_key(&format!("filler{i}"), &[]).await;
    }
    // The gateway learns the change and caches the lost timeline's answers on both workers.
    let updated = eventually(Duration::from_secs(5), || async {
        let res = gw.get("/", Some(&kept)).await;
        res.status == 200 && scopes_seen(&res).as_deref() == Some("read write")
    })
    .await;
    assert!(updated, "the scope change did not reach the gateway");
    assert!(gw.statuses("/", &kept, 4).await.iter().all(|s| *s == 200));
    assert!(gw.statuses("/", &lost, 4).await.iter().all(|s| *s == 200));

    gw.keyd.restore_store(&backup).await;

    // A key the restored store does not have stops working within a few polls (the cache TTL
    // is 60 s).
    // Every worker: the poller at once, the others on their next tick.
    let gone = eventually(Duration::from_secs(5), || async {
        gw.statuses("/", &lost, 6).await.iter().all(|s| *s == 401)
    })
    .await;
    assert!(gone, "a key missing from the restored store still works on some worker");
    // The kept key works with the scopes the restored store has.
    let res = gw.get("/", Some(&kept)).await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(scopes_seen(&res).as_deref(), Some("read"), "scopes from the lost timeline");

    // Its new answer is cached: the lost timeline's invalidations do not make every request a
    // lookup.
    let allowed = gw.stat("requests_total.decision.allow").await;
    let misses = gw.stat("cache_lookups_total.result.miss").await;
    assert!(gw.statuses("/", &kept, 6).await.iter().all(|s| *s == 200));
    assert!(gw.stat_reaches("requests_total.decision.allow", allowed + 6).await);
    let lookups = gw.stat("cache_lookups_total.result.miss").await - misses;
    assert!(lookups <= u64::from(WORKERS), "{lookups} lookups for a cached key");

    // A revocation after the restore reuses a sequence number the lost timeline had used; it
    // still reaches every worker.
    gw.keyd.revoke_key(&kept_id).await;
    let revoked = eventually(Duration::from_secs(5), || async {
        gw.statuses("/", &kept, 6).await.iter().all(|s| *s == 401)
    })
    .await;
    assert!(revoked, "a key revoked after the restore still works on some worker");
}

/// With the key service hung (SIGSTOP: connections accepted, nothing answered), a cached key
/// past its TTL is served from its stale answer at once while one background refresh waits for
/// the service; a key never seen waits for its lookup and gets 503. Once the service answers
/// again the refresh completes and a revocation is seen.
#[tokio::test]
async fn a_hung_key_service_adds_no_wait_to_cached_keys_past_their_ttl() {
    let mut gw = Gateway::start_with(|c| {
        c["key_service"]["timeout"] = json!("10s");
        c["cache"] = json!({"ttl": "1s", "negative_ttl": "1s", "stale_window": "300s"});
    })
    .await;
    let (id, key) = gw.keyd.create_key("alice", &[]).await;
    let (_, unseen) = gw.keyd.create_key("bob", &[]).await;
    assert!(gw.statuses("/", &key, 4).await.iter().all(|s| *s == 200), "cached");
    assert!(gw.stat_reaches("feed_polls_total", 2).await, "the feed consumer has started");

    gw.keyd.suspend();
    // Past the TTL: the cached answer is stale.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // A key never seen waits for its lookup (10 s) and is refused, never allowed.
    let unseen_req =
        gw.client.get(gw.envoy.url("/")).header("x-api-key", &unseen).timeout(Duration::from_secs(30));
    let unseen_res = tokio::spawn(async move { unseen_req.send().await });

    // Each request with the stale key is answered without waiting for the key service: a
    // request that waited for it would hit the client's timeout (3 s, the lookup's is 10 s).
    for i in 0..6 {
        let res = gw
            .client
            .get(gw.envoy.url("/"))
            .header("x-api-key", &key)
            .timeout(Duration::from_secs(3))
            .try_send()
            .await;
        match res {
            Ok(res) => assert_eq!(res.status, 200, "request {i}: {}", res.text()),
            Err(e) => panic!("request {i} with a stale cached key waited for the hung key service: {e}"),
        }
    }
    assert!(gw.stat_reaches("cache_lookups_total.result.stale", 6).await);
    assert!(gw.stat_reaches("cache_refresh_started_total", 1).await, "a background refresh was started");
    let started = gw.stat("cache_refresh_started_total").await;
    assert!(started <= u64::from(WORKERS), "{started} refreshes for one key: one per worker at most");

    let res = unseen_res.await.unwrap();
    assert_denied(&res, 503, "unavailable");

    // The service answers again: the refresh completes (a request may be needed to ask for it
    // again if it timed out meanwhile).
    gw.keyd.resume();
    let refreshed = eventually(Duration::from_secs(20), || async {
        let status = gw.get("/", Some(&key)).await.status;
        assert_eq!(status, 200);
        gw.stat("cache_refreshed_total").await >= 1
    })
    .await;
    assert!(refreshed, "no background refresh succeeded after the key service came back");

    gw.keyd.revoke_key(&id).await;
    let revoked =
        eventually(Duration::from_secs(5), || async { gw.get("/", Some(&key)).await.status == 401 }).await;
    assert!(revoked, "a revocation after the outage is not seen");
}

/// A restored store that has got as far again as the gateway had read before the gateway polls
/// it: its head alone does not show the restore, the change at the gateway's cursor does (each
/// poll asks for it again). What the lost timeline cached is retired, and a revocation numbered
/// below the gateway's old cursor is seen.
#[tokio::test]
async fn a_restored_store_that_got_as_far_again_before_the_gateway_polled_is_detected() {
    let mut gw = Gateway::start().await;
    let (kept_id, kept) = gw.keyd.create_key("alice", &["read"]).await;
    assert!(gw.statuses("/", &kept, 4).await.iter().all(|s| *s == 200));
    assert!(gw.stat_reaches("feed_polls_total", 2).await, "the feed consumer has started");
    let backup = gw.keyd.backup_store().await;

    // The lost timeline: two changes, both learned by the gateway.
    let invalidations = gw.stat("feed_invalidations_total").await;
    let (_, lost) = gw.keyd.create_key("bob", &[]).await;
    let mut admin = gw.keyd.admin_client().await;
    let rename = UpdateKeyRequest { id: kept_id.clone(), name: Some("renamed".into()), ..Default::default() };
    admin.update_key(rename).await.unwrap();
    assert!(gw.stat_reaches("feed_invalidations_total", invalidations + 2).await);
    assert!(gw.statuses("/", &lost, 4).await.iter().all(|s| *s == 200));
    assert!(gw.statuses("/", &kept, 4).await.iter().all(|s| *s == 200));

    // Restored, and changed more than the lost timeline was while the gateway cannot see it
    // (the service runs on another port meanwhile): the kept key is revoked, other keys made.
    gw.keyd.stop().await;
    gw.keyd.replace_store(&backup);
    {
        let aside = Keyd::start(gw.keyd.data_dir()).await;
        aside.revoke_key(&kept_id).await;
        for i in 0..3 {
            aside.create_key(&format!("filler{i}"), &[]).await;
        }
        let mut aside = aside;
        aside.stop().await;
    }
    gw.keyd.restart().await;

    let gone =
        eventually(Duration::from_secs(5), || async { gw.get("/", Some(&lost)).await.status == 401 }).await;
    assert!(gone, "a key missing from the restored store still works");
    let revoked = eventually(Duration::from_secs(5), || async {
        gw.statuses("/", &kept, 6).await.iter().all(|s| *s == 401)
    })
    .await;
    assert!(revoked, "a key revoked in the restored store still works on some worker");
    assert!(gw.stat_reaches("feed_resets_total", 1).await);
}

/// What a client sends is escaped in the log line of its denial: it can neither break the line
/// nor add a field that looks like the filter's own.
#[tokio::test]
async fn client_text_in_a_denial_log_line_is_escaped() {
    let gw = Gateway::start().await;
    let res = RawRequest::get("/hello")
        .header("x-request-id", "abc reason=allowed key=tgk_forged")
        .send(gw.envoy.addr())
        .await
        .unwrap();
    assert_eq!(res.status, 401, "{}", res.text());
    assert_eq!(res.json()["request_id"], "abc reason=allowed key=tgk_forged", "the client gets its id back");
    assert!(gw.stat_reaches("requests_total.decision.deny.reason.missing_key", 1).await);
    let logs = gw.envoy.logs();
    assert!(
        logs.contains(r#"request_id="abc reason=allowed key=tgk_forged""#),
        "the id is one quoted field: {}",
        logs.lines().filter(|l| l.contains("key-auth: denied")).collect::<Vec<_>>().join("\n")
    );
    assert!(!logs.contains("request_id=abc reason"), "no forged field");
}
