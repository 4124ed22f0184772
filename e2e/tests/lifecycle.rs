//! Key lifecycle automation end to end: the real key service with its clock moved by a file
//! (`--clock-offset-file`), its scheduler every 250 ms, a real webhook receiver verifying every
//! delivery with PyPI's `standardwebhooks`, and real Envoy in front of the demo upstream with a
//! self-rotation route to the key service.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tollgate_e2e::{
    DATAPLANE_TOKEN, Echo, Envoy, EnvoyOpts, HttpClient, KEY_AUTH_ROOT_ID, KEYD_CLUSTER, Keyd, RawRequest,
    Value, WebhookReceiver, json, static_cluster,
};
use tollgate_proto::v1::{
    CreateKeyRequest, GetKeyRequest, KeyStatus, RotationMode, RotationPolicy, SetRotationPolicyRequest,
};

const DAY: f64 = 86_400.0;
const SELF_ROTATE: &str = "/api/v1/self/rotate";
const KEYD_HTTP_CLUSTER: &str = "tollgate_keyd_http";

/// The key service's clock, moved by whole days through its offset file.
struct Clock(PathBuf);

impl Clock {
    fn new(dir: &Path) -> Clock {
        let path = dir.join("clock-offset");
        std::fs::write(&path, "0").unwrap();
        Clock(path)
    }

    fn set_days(&self, days: f64) {
        let tmp = self.0.with_extension("tmp");
        std::fs::write(&tmp, format!("{}", (days * DAY) as i64)).unwrap();
        std::fs::rename(&tmp, &self.0).unwrap();
    }
}

async fn keyd(dir: &Path, clock: &Clock) -> Keyd {
    let args = [
        "--webhooks-allow-private",
        "--webhooks-timeout",
        "2",
        "--lifecycle-interval",
        "250ms",
        "--clock-offset-file",
        clock.0.to_str().unwrap(),
    ]
    .map(String::from);
    Keyd::start_with_args(dir.join("keyd"), &args).await
}

async fn new_key(keyd: &Keyd, consumer: &str) -> (String, String) {
    let request = CreateKeyRequest { consumer: consumer.into(), create_consumer: true, ..Default::default() };
    let created = keyd.admin_client().await.create_key(request).await.unwrap().into_inner();
    (created.key.unwrap().id, created.secret)
}

fn policy(mode: RotationMode, notify_days: &[i64], grace_secs: i64, unused_secs: i64) -> RotationPolicy {
    RotationPolicy {
        max_age_seconds: 90 * 86_400,
        notify_before_seconds: notify_days.iter().map(|d| d * 86_400).collect(),
        grace_seconds: grace_secs,
        mode: mode as i32,
        revoke_unused_previous_after_seconds: unused_secs,
    }
}

async fn set_policy(keyd: &Keyd, consumer: &str, key_id: &str, policy: RotationPolicy) {
    keyd.admin_client()
        .await
        .set_rotation_policy(SetRotationPolicyRequest {
            consumer: consumer.into(),
            key_id: key_id.into(),
            policy: Some(policy),
        })
        .await
        .unwrap();
}

/// `(key_id, type, stage)` of every delivery, each verified by `standardwebhooks`.
fn events(receiver: &WebhookReceiver) -> Vec<(String, String, String)> {
    receiver
        .seen()
        .iter()
        .map(|d| {
            assert_eq!(d["verified"], true, "standardwebhooks refused a delivery: {d}");
            let event = &d["event"];
            (
                event["data"]["key_id"].as_str().unwrap_or_default().to_owned(),
                event["type"].as_str().unwrap().to_owned(),
                event["data"]["stage"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn count_each(events: &[(String, String, String)]) -> BTreeMap<(String, String, String), usize> {
    let mut counts = BTreeMap::new();
    for e in events {
        *counts.entry(e.clone()).or_default() += 1;
    }
    counts
}

async fn wait_events(receiver: &WebhookReceiver, what: &str, n: usize) {
    receiver.wait_for(what, Duration::from_secs(30), |seen| seen.len() >= n).await;
}

/// Ticks of the scheduler and a delivery poll, so that anything sent twice would have arrived.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(2_500)).await;
}

#[tokio::test]
async fn expiring_notices_arrive_once_per_stage_across_restarts_and_notify_mode_expires_at_max_age() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::new(dir.path());
    let receiver = WebhookReceiver::start(dir.path(), "").await;
    let mut keyd = keyd(dir.path(), &clock).await;
    receiver.subscribe(&keyd, &["key.expiring", "key.expired"]).await;
    let (k1, _) = new_key(&keyd, "alice").await;
    let (k2, _) = new_key(&keyd, "alice").await;
    // A consumer's policy covers both keys; notify mode.
    set_policy(&keyd, "alice", "", policy(RotationMode::Notify, &[30, 7, 1], 86_400, 0)).await;

    // Day by day through the interesting days, with restarts between stages.
    let steps: [(f64, usize, bool); 9] = [
        (10.0, 0, false),
        (60.1, 2, false),
        (61.0, 2, true),
        (83.1, 4, false),
        (84.0, 4, true),
        (89.1, 6, false),
        (89.5, 6, true),
        (90.1, 8, false),
        (120.0, 8, true),
    ];
    for (day, expected, restart) in steps {
        clock.set_days(day);
        if expected > 0 {
            wait_events(&receiver, &format!("{expected} events by day {day}"), expected).await;
        }
        if restart {
            keyd.restart().await;
        }
        settle().await;
        assert_eq!(receiver.seen().len(), expected, "day {day}: {:#?}", events(&receiver));
    }
    // After the last restart the new process took the scheduler's lease over (it expires 3 s
    // after the last renewal) and sent nothing again.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let seen = events(&receiver);
    let counts = count_each(&seen);
    let mut expected = BTreeMap::new();
    for key in [&k1, &k2] {
        for stage in ["30d", "7d", "1d"] {
            expected.insert((key.clone(), "key.expiring".to_owned(), stage.to_owned()), 1);
        }
        expected.insert((key.clone(), "key.expired".to_owned(), String::new()), 1);
    }
    assert_eq!(counts, expected, "exactly one notice per stage per key: {seen:#?}");
    for delivery in receiver.seen() {
        let data = &delivery["event"]["data"];
        if delivery["event"]["type"] == "key.expiring" {
            assert_eq!(data["action"], "expire", "{delivery}");
            assert_eq!(data["consumer_id"], "alice");
        }
    }
    // Notify mode: the key expired at max_age.
    let key = keyd.admin_client().await.get_key(GetKeyRequest { id: k1.clone() }).await.unwrap().into_inner();
    assert_eq!(key.status, KeyStatus::Expired as i32, "{key:?}");
    assert_eq!(key.expires_at - key.created_at, 90 * 86_400);
}

/// Envoy with key-auth against `keyd`, and the self-rotation route to the key service's HTTP
/// listener with key-auth off on it (the key service checks the key itself).
async fn gateway(keyd: &Keyd, echo: &Echo) -> Envoy {
    gateway_with(keyd, echo, json!({})).await
}

/// [`gateway`] with more key-auth settings (`more`'s fields beside `key_service`).
async fn gateway_with(keyd: &Keyd, echo: &Echo, more: Value) -> Envoy {
    let mut key_auth = json!({
        "key_service": {"cluster": KEYD_CLUSTER, "token": DATAPLANE_TOKEN, "poll_interval": "200ms"}
    });
    for (field, value) in more.as_object().into_iter().flatten() {
        key_auth[field] = value.clone();
    }
    let mut opts = EnvoyOpts::new(echo.addr())
        .key_auth(key_auth)
        .keyd(keyd.addr())
        .workers(2)
        .cluster(static_cluster(KEYD_HTTP_CLUSTER, keyd.http_addr(), false));
    opts.routes.push(json!({
        "name": "self_rotate",
        "match": {"path": SELF_ROTATE},
        "route": {"cluster": KEYD_HTTP_CLUSTER, "timeout": "10s"},
        "typed_per_filter_config": {
            KEY_AUTH_ROOT_ID: {"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "disabled": true}
        }
    }));
    Envoy::start(opts).await
}

async fn status_with(envoy: &Envoy, key: &str) -> u16 {
    envoy.get("/hello").header("x-api-key", key).send().await.status
}

fn error_of(body: &Value) -> &str {
    assert!(body["request_id"].as_str().is_some_and(|id| !id.is_empty()), "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    body["error"].as_str().unwrap()
}

#[tokio::test]
async fn auto_rotation_at_max_age_keeps_the_old_secret_for_the_grace_then_envoy_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::new(dir.path());
    let receiver = WebhookReceiver::start(dir.path(), "").await;
    let keyd = keyd(dir.path(), &clock).await;
    receiver.subscribe(&keyd, &["key.expiring", "key.rotated", "key.grace_ended"]).await;
    let echo = Echo::start();
    let envoy = gateway(&keyd, &echo).await;
    let (key_id, old) = new_key(&keyd, "carol").await;
    set_policy(&keyd, "", &key_id, policy(RotationMode::Auto, &[7], 86_400, 0)).await;
    assert_eq!(status_with(&envoy, &old).await, 200);

    clock.set_days(83.1);
    wait_events(&receiver, "key.expiring 7d", 1).await;
    let notice = &receiver.seen()[0]["event"];
    assert_eq!(
        (notice["type"].as_str(), notice["data"]["action"].as_str()),
        (Some("key.expiring"), Some("rotate"))
    );

    clock.set_days(90.1);
    wait_events(&receiver, "key.rotated", 2).await;
    assert_eq!(events(&receiver)[1], (key_id.clone(), "key.rotated".to_owned(), String::new()));
    // The old secret works during the grace (Envoy learned of the rotation from the feed and
    // asked again).
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(status_with(&envoy, &old).await, 200);

    // The owner picks the new secret up through the gateway with the old one, once.
    let picked = envoy.post(SELF_ROTATE).header("x-api-key", &old).send().await;
    assert_eq!(picked.status, 200, "{}", picked.text());
    let body = picked.json();
    assert_eq!(body["picked_up"], true);
    assert_eq!(body["key_id"], key_id.as_str());
    let new = body["secret"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert_eq!(picked.header("cache-control"), Some("no-store"));
    let again = envoy.post(SELF_ROTATE).header("x-api-key", &old).send().await;
    assert_eq!((again.status, error_of(&again.json())), (409, "conflict"));
    assert_eq!(status_with(&envoy, &new).await, 200);
    assert_eq!(status_with(&envoy, &old).await, 200, "still in the grace");

    // Spellings that must not pass.
    let get = envoy.get(SELF_ROTATE).header("x-api-key", &new).send().await;
    assert_eq!((get.status, error_of(&get.json())), (405, "method_not_allowed"));
    let none = envoy.post(SELF_ROTATE).send().await;
    assert_eq!((none.status, error_of(&none.json())), (400, "bad_request"));
    let bogus = envoy.post(SELF_ROTATE).header("authorization", "Bearer tgk_not_a_key").send().await;
    assert_eq!((bogus.status, error_of(&bogus.json())), (401, "unauthorized"));
    let raw = RawRequest::new("POST", SELF_ROTATE.as_bytes())
        .header("x-api-key", &new)
        .header("x-api-key", &new)
        .body("")
        .send(envoy.addr())
        .await
        .unwrap();
    assert_eq!(raw.status, 400, "two keys are refused: {}", raw.text());
    let mut not_utf8 = b"tgk_".to_vec();
    not_utf8.extend_from_slice(&[0xff, 0xfe, 0x80]);
    let raw = RawRequest::new("POST", SELF_ROTATE.as_bytes())
        .header("x-api-key", &not_utf8)
        .body("")
        .send(envoy.addr())
        .await
        .unwrap();
    assert!(matches!(raw.status, 400 | 401), "bytes that are not UTF-8: {} {}", raw.status, raw.text());
    assert_eq!(status_with(&envoy, &new).await, 200, "refused attempts changed nothing");

    // The grace ends (at 91.1 days): Envoy refuses the old secret within 2 s.
    clock.set_days(91.2);
    let moved = Instant::now();
    let refused_after = loop {
        if status_with(&envoy, &old).await == 401 {
            break moved.elapsed();
        }
        assert!(
            moved.elapsed() < Duration::from_secs(2),
            "the old secret still works 2 s after its grace ended"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("old secret refused {refused_after:?} after the grace ended");
    assert_eq!(status_with(&envoy, &new).await, 200);
    wait_events(&receiver, "key.grace_ended", 3).await;
    let ended = &receiver.seen()[2]["event"];
    assert_eq!(
        (ended["type"].as_str(), ended["data"]["reason"].as_str()),
        (Some("key.grace_ended"), Some("elapsed"))
    );
    settle().await;
    assert_eq!(receiver.seen().len(), 3, "{:#?}", events(&receiver));
    // The scheduler's transitions are counted.
    let url = format!("http://{}/metrics", keyd.metrics_addr());
    let text = HttpClient::new().get(url).send().await.text();
    for (series, expected) in [
        (r#"tollgate_keyd_lifecycle_transitions_total{transition="expiring"}"#, "1"),
        (r#"tollgate_keyd_lifecycle_transitions_total{transition="rotated"}"#, "1"),
        (r#"tollgate_keyd_lifecycle_transitions_total{transition="grace_ended"}"#, "1"),
        ("tollgate_keyd_lifecycle_leader", "1"),
    ] {
        let value = text.lines().find_map(|l| l.strip_prefix(series)).map(str::trim);
        assert_eq!(value, Some(expected), "{series} in\n{text}");
    }
}

#[tokio::test]
async fn self_rotation_with_the_current_key_and_an_unused_previous_secret_ends_early() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::new(dir.path());
    let receiver = WebhookReceiver::start(dir.path(), "").await;
    let keyd = keyd(dir.path(), &clock).await;
    receiver.subscribe(&keyd, &["key.rotated", "key.grace_ended"]).await;
    let echo = Echo::start();
    let envoy = gateway_with(&keyd, &echo, json!({"usage": {"report_interval": "1s"}})).await;
    let (key_id, old) = new_key(&keyd, "dave").await;
    // Grace 7 days, but it ends once the previous secret has gone unused for an hour.
    set_policy(&keyd, "dave", "", policy(RotationMode::Notify, &[], 7 * 86_400, 3_600)).await;

    let rotated = envoy.post(SELF_ROTATE).header("authorization", &format!("Bearer {old}")).send().await;
    assert_eq!(rotated.status, 200, "{}", rotated.text());
    let body = rotated.json();
    assert_eq!(body["picked_up"], false);
    let new = body["secret"].as_str().unwrap().to_owned();
    wait_events(&receiver, "key.rotated", 1).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(status_with(&envoy, &new).await, 200);
    assert_eq!(status_with(&envoy, &old).await, 200, "the previous secret has its grace");
    // The previous secret cannot rotate the key again.
    let refused = envoy.post(SELF_ROTATE).header("x-api-key", &old).send().await;
    assert_eq!((refused.status, error_of(&refused.json())), (409, "conflict"));

    // Every use reported (the previous secret's counts as a use when its report arrives), then
    // more than an hour without one.
    let reported =
        tollgate_e2e::eventually(Duration::from_secs(10), || async { allowed_of(&keyd, &key_id).await >= 2 })
            .await;
    assert!(reported, "the gateway's usage report did not arrive");
    clock.set_days(0.1);
    wait_events(&receiver, "key.grace_ended", 2).await;
    let ended = &receiver.seen()[1]["event"];
    assert_eq!(ended["data"]["reason"], "unused");
    assert_eq!(ended["data"]["key_id"], key_id.as_str());
    let deadline = Instant::now() + Duration::from_secs(2);
    while status_with(&envoy, &old).await != 401 {
        assert!(Instant::now() < deadline, "the previous secret still works after its grace ended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status_with(&envoy, &new).await, 200);
}

/// A previous secret used only from the gateway's cache (no lookup reaches the key service)
/// keeps its grace: the gateway's usage reports say which requests presented the previous
/// secret. Once those stop, the grace ends early for want of use and Envoy refuses it.
#[tokio::test]
async fn a_previous_secret_used_from_the_gateway_cache_keeps_its_grace_until_it_goes_unused() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::new(dir.path());
    let receiver = WebhookReceiver::start(dir.path(), "").await;
    let keyd = keyd(dir.path(), &clock).await;
    receiver.subscribe(&keyd, &["key.grace_ended"]).await;
    let echo = Echo::start();
    // Answers cached for an hour of the gateway's own time, usage reported every second.
    let more = json!({"cache": {"ttl": "1h"}, "usage": {"report_interval": "1s", "gateway": "gw-cache"}});
    let envoy = gateway_with(&keyd, &echo, more).await;
    let (key_id, old) = new_key(&keyd, "erin").await;
    // Grace 7 days, ended early once the previous secret goes unused for an hour.
    set_policy(&keyd, "erin", "", policy(RotationMode::Notify, &[], 7 * 86_400, 3_600)).await;
    let rotated = envoy.post(SELF_ROTATE).header("x-api-key", &old).send().await;
    assert_eq!(rotated.status, 200, "{}", rotated.text());
    let new = rotated.json()["secret"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(600)).await;
    // Looked up once (the key service sees that use), then answered from the cache.
    assert_eq!(status_with(&envoy, &old).await, 200);
    let lookups_before = keyd_verify_calls(&keyd).await;

    // 40 minutes on, the client still uses the previous secret; every answer comes from the
    // gateway's cache, and its usage report carries the use.
    clock.set_days(40.0 / 1_440.0);
    for _ in 0..5 {
        assert_eq!(status_with(&envoy, &old).await, 200);
    }
    let reported =
        tollgate_e2e::eventually(Duration::from_secs(10), || async { allowed_of(&keyd, &key_id).await >= 6 })
            .await;
    assert!(reported, "the gateway's usage report did not arrive");
    assert_eq!(keyd_verify_calls(&keyd).await, lookups_before, "no lookup: the uses were cached");

    // 80 minutes after the rotation: unused for an hour counted from the lookup, but not from
    // the reported use at 40 minutes. The grace is kept.
    clock.set_days(80.0 / 1_440.0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        receiver.seen().is_empty(),
        "the grace ended although the secret was used: {:?}",
        receiver.seen()
    );
    assert_eq!(status_with(&envoy, &old).await, 200);

    // No use after that request (reported at 80 minutes): at 150 minutes the grace ends, and
    // Envoy refuses the previous secret although its answer is cached for the hour.
    let reported =
        tollgate_e2e::eventually(Duration::from_secs(10), || async { allowed_of(&keyd, &key_id).await >= 7 })
            .await;
    assert!(reported, "the last use was not reported");
    clock.set_days(150.0 / 1_440.0);
    wait_events(&receiver, "key.grace_ended", 1).await;
    assert_eq!(receiver.seen()[0]["event"]["data"]["reason"], "unused");
    let deadline = Instant::now() + Duration::from_secs(2);
    while status_with(&envoy, &old).await != 401 {
        assert!(Instant::now() < deadline, "the previous secret still works after its grace ended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status_with(&envoy, &new).await, 200);
}

/// VerifyKey calls the key service has answered, from its metrics.
async fn keyd_verify_calls(keyd: &Keyd) -> f64 {
    let text = HttpClient::new().get(format!("http://{}/metrics", keyd.metrics_addr())).send().await.text();
    text.lines()
        .filter(|l| l.starts_with("tollgate_keyd_grpc_requests_total{") && l.contains("method=\"VerifyKey\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The allowed requests the gateways reported for a key.
async fn allowed_of(keyd: &Keyd, key_id: &str) -> u64 {
    let request =
        tollgate_proto::v1::GetUsageRequest { key_ids: vec![key_id.to_owned()], ..Default::default() };
    let usage = keyd.admin_client().await.get_usage(request).await.unwrap().into_inner();
    usage.keys.iter().find(|k| k.key_id == key_id).map_or(0, |k| k.allowed)
}
