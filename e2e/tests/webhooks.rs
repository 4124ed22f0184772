//! Webhooks from the real key service to a real receiver that verifies every delivery with the
//! independent Standard Webhooks implementation (the `standardwebhooks` package from PyPI).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tollgate_e2e::{ADMIN_TOKEN, Keyd, Value, WebhookReceiver as Receiver, binary};
use tollgate_proto::v1::{
    CreateKeyRequest, CreateWebhookRequest, ListWebhookDeliveriesRequest, ListWebhooksRequest,
    RevokeKeyRequest, RotateWebhookSecretRequest, WebhookDelivery,
};

/// The key service, allowed to deliver to loopback, with a short attempt timeout.
async fn keyd(dir: &Path) -> Keyd {
    keyd_with(dir, &[]).await
}

/// [`keyd`] with more flags.
async fn keyd_with(dir: &Path, more: &[&str]) -> Keyd {
    let args: Vec<String> = ["--webhooks-allow-private", "--webhooks-timeout", "2"]
        .iter()
        .chain(more)
        .map(|a| a.to_string())
        .collect();
    Keyd::start_with_args(dir.join("keyd"), &args).await
}

async fn create_webhook(keyd: &Keyd, receiver: &Receiver, events: &[&str]) -> String {
    create_webhook_with_secret(keyd, receiver, events).await.0
}

/// Registers `receiver` for `events` and has it trust the secret; the id and the secret.
async fn create_webhook_with_secret(keyd: &Keyd, receiver: &Receiver, events: &[&str]) -> (String, String) {
    receiver.subscribe(keyd, events).await
}

async fn new_key(keyd: &Keyd, consumer: &str) -> String {
    let request = CreateKeyRequest { consumer: consumer.into(), create_consumer: true, ..Default::default() };
    keyd.admin_client().await.create_key(request).await.unwrap().into_inner().key.unwrap().id
}

/// The delivery log of one endpoint, newest first.
async fn deliveries(keyd: &Keyd, webhook_id: String) -> Vec<WebhookDelivery> {
    let request = ListWebhookDeliveriesRequest { webhook_id, limit: 10 };
    keyd.admin_client().await.list_webhook_deliveries(request).await.unwrap().into_inner().deliveries
}

/// Runs the `tollgate` CLI against `keyd` with the admin token.
fn cli(keyd: &Keyd, args: &[&str]) -> std::process::Output {
    std::process::Command::new(binary("tollgate"))
        .args(["--server", &format!("http://{}", keyd.addr()), "--token", ADMIN_TOKEN])
        .args(args)
        .output()
        .unwrap()
}

fn verified(seen: &[Value]) {
    for delivery in seen {
        assert_eq!(delivery["verified"], true, "standardwebhooks refused a delivery: {delivery}");
    }
}

#[tokio::test]
async fn key_events_arrive_with_signatures_the_reference_library_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(dir.path(), "").await;
    let keyd = keyd(dir.path()).await;
    create_webhook(&keyd, &receiver, &["key.created", "key.revoked"]).await;
    let key_id = new_key(&keyd, "alice").await;
    keyd.admin_client()
        .await
        .revoke_key(RevokeKeyRequest { id: key_id.clone(), reason: "test".into() })
        .await
        .unwrap();
    let seen = receiver
        .wait_for("key.created and key.revoked", Duration::from_secs(30), |seen| seen.len() >= 2)
        .await;
    verified(&seen);
    let mut types: Vec<&str> = seen.iter().map(|d| d["event"]["type"].as_str().unwrap()).collect();
    types.sort_unstable();
    assert_eq!(types, ["key.created", "key.revoked"]);
    for delivery in &seen {
        let event = &delivery["event"];
        assert_eq!(event["data"], serde_json::json!({ "key_id": key_id, "consumer_id": "alice" }));
        assert!(event["timestamp"].as_str().unwrap().ends_with('Z'), "{event}");
        assert!(delivery["id"].as_str().unwrap().starts_with("msg_"), "{delivery}");
    }
    // consumer.created was not subscribed: nothing else arrives with the next key's event.
    let second = new_key(&keyd, "bob").await;
    let seen =
        receiver.wait_for("the second key.created", Duration::from_secs(30), |seen| seen.len() >= 3).await;
    assert_eq!(seen[2]["event"]["data"]["key_id"], second.as_str());
    assert_eq!(seen.len(), 3, "{seen:#?}");
}

#[tokio::test]
async fn a_private_target_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let keyd = Keyd::start(dir.path().join("keyd")).await;
    for url in ["http://127.0.0.1:9/hook", "http://localhost:9/hook", "http://169.254.169.254/latest"] {
        let status = keyd
            .admin_client()
            .await
            .create_webhook(CreateWebhookRequest { url: url.into(), events: vec!["key.created".into()] })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{url}: {status:?}");
        assert!(status.message().contains("--webhooks-allow-private"), "{url}: {}", status.message());
    }
    let status = keyd
        .admin_client()
        .await
        .create_webhook(CreateWebhookRequest {
            url: "ftp://example.com/".into(),
            events: vec!["key.created".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(status.message(), "url: scheme \"ftp\" is not http or https");
}

#[tokio::test]
async fn a_failing_receiver_gets_the_same_webhook_id_until_it_answers_200() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(dir.path(), "500,503:1,503:date+4,200").await;
    let keyd = keyd(dir.path()).await;
    let webhook_id = create_webhook(&keyd, &receiver, &["key.created"]).await;
    new_key(&keyd, "alice").await;
    let seen = receiver.wait_for("four attempts", Duration::from_secs(60), |seen| seen.len() >= 4).await;
    verified(&seen);
    let answered: Vec<i64> = seen.iter().map(|d| d["answered"].as_i64().unwrap()).collect();
    assert_eq!(answered, [500, 503, 503, 200]);
    let ids: BTreeSet<&str> = seen.iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 1, "one webhook-id on every attempt: {seen:#?}");

    // The log: four attempts, newest first; the first retry on the schedule, the next two after
    // Retry-After in seconds and as an HTTP-date.
    let log = deliveries(&keyd, webhook_id).await;
    let summary: Vec<(u32, u32, &str)> =
        log.iter().map(|d| (d.attempt, d.status, d.outcome.as_str())).collect();
    assert_eq!(summary, [(4, 200, "delivered"), (3, 503, "retry"), (2, 503, "retry"), (1, 500, "retry")]);
    // The date has whole seconds (4 s ahead, truncated), read a moment after the receiver wrote it.
    let dated = log[1].next_attempt_at - log[1].at;
    assert!((2..=4).contains(&dated), "Retry-After as an HTTP-date 4 s ahead is honoured: {log:#?}");
    let waited = seen[3]["received_at"].as_f64().unwrap() - seen[2]["received_at"].as_f64().unwrap();
    assert!(waited >= 1.5, "the attempt after the dated 503 came {waited:.2} s after it");
    assert_eq!(log[2].next_attempt_at - log[2].at, 1, "Retry-After: 1 is honoured: {log:#?}");
    let first_delay = log[3].next_attempt_at - log[3].at;
    assert!((4..=6).contains(&first_delay), "the first retry is 5 s ± 20%: {log:#?}");
    // Four sends, nothing more.
    assert_eq!(receiver.seen().len(), 4);
}

/// A 410 disables the endpoint after one attempt; `tollgate webhooks enable` turns it on again:
/// what was sent while it was disabled is not kept for it, what comes after is delivered, and a
/// replay sends the refused event again with its id.
#[tokio::test]
async fn a_410_disables_the_endpoint_after_one_attempt_until_it_is_enabled_again() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(dir.path(), "410").await;
    let keyd = keyd(dir.path()).await;
    let webhook_id = create_webhook(&keyd, &receiver, &["key.created"]).await;
    new_key(&keyd, "alice").await;
    let seen = receiver.wait_for("the first attempt", Duration::from_secs(30), |seen| !seen.is_empty()).await;
    verified(&seen);
    let deadline = Instant::now() + Duration::from_secs(30);
    let hook = loop {
        let hooks =
            keyd.admin_client().await.list_webhooks(ListWebhooksRequest {}).await.unwrap().into_inner();
        let hook = hooks.webhooks.into_iter().find(|h| h.id == webhook_id).unwrap();
        if !hook.enabled || Instant::now() > deadline {
            break hook;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!hook.enabled, "{hook:?}");
    assert_eq!(hook.disabled_reason, "the receiver answered 410 at attempt 1");
    // A disabled endpoint gets nothing more: another key, and a few delivery rounds later, still
    // one request.
    new_key(&keyd, "bob").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(receiver.seen().len(), 1, "{:#?}", receiver.seen());
    let log = deliveries(&keyd, webhook_id.clone()).await;
    assert_eq!(log.len(), 1);
    assert_eq!((log[0].status, log[0].outcome.as_str()), (410, "endpoint_disabled"));

    // Enabled again by the CLI (the receiver now answers 200).
    let out = cli(&keyd, &["--json", "webhooks", "enable", &webhook_id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((shown["enabled"].as_bool(), shown["disabled_reason"].as_str()), (Some(true), Some("")));
    let carol = new_key(&keyd, "carol").await;
    let seen = receiver.wait_for("carol's key", Duration::from_secs(30), |s| s.len() >= 2).await;
    verified(&seen);
    assert_eq!(
        seen[1]["event"]["data"]["key_id"],
        carol.as_str(),
        "bob's key came while disabled: {seen:#?}"
    );
    // The refused event, sent again with its id.
    let out = cli(&keyd, &["webhooks", "replay", "--since", "10m", "--webhook", &webhook_id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let seen = receiver.wait_for("the replay", Duration::from_secs(30), |s| s.len() >= 4).await;
    verified(&seen);
    let ids: Vec<&str> = seen.iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert!(ids[2..].contains(&ids[0]), "alice's event again with its id: {seen:#?}");

    // Disabled by hand: nothing is sent; the reason names who.
    let out = cli(&keyd, &["webhooks", "disable", &webhook_id]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("enabled: no (disabled by admin-token)"), "{stdout}");
    let out = cli(&keyd, &["webhooks", "update", &webhook_id, "--url", "ftp://example.com/"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("url: scheme \"ftp\" is not http or https"),
        "{out:?}"
    );
}

#[tokio::test]
async fn every_event_is_delivered_after_kill_9_during_a_burst() {
    const KEYS: usize = 1_000;
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(dir.path(), "").await;
    let mut keyd = keyd(dir.path()).await;
    create_webhook(&keyd, &receiver, &["key.created"]).await;

    // Keys created by ten writers at once; the service is killed once a third are acknowledged
    // and started again; the writers go on (a call that failed is made again) to 1,000.
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let failed = Arc::new(Mutex::new(0usize));
    let mut writers = Vec::new();
    for w in 0..10 {
        let mut admin = keyd.admin_client().await;
        let (acknowledged, failed) = (Arc::clone(&acknowledged), Arc::clone(&failed));
        writers.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            for i in 0..KEYS / 10 {
                loop {
                    let request = CreateKeyRequest {
                        consumer: format!("burst-{w}-{i}"),
                        create_consumer: true,
                        ..Default::default()
                    };
                    match admin.create_key(request).await {
                        Ok(response) => {
                            acknowledged.lock().unwrap().push(response.into_inner().key.unwrap().id);
                            break;
                        }
                        Err(status) => {
                            *failed.lock().unwrap() += 1;
                            assert!(Instant::now() < deadline, "writer {w} gave up: {status}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }
        }));
    }
    let started = Instant::now();
    while acknowledged.lock().unwrap().len() < KEYS / 3 {
        assert!(started.elapsed() < Duration::from_secs(60), "the burst did not get going");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    keyd.kill();
    let before_kill = acknowledged.lock().unwrap().len();
    keyd.restart().await;
    for writer in writers {
        writer.await.unwrap();
    }
    let written = Instant::now();
    let acknowledged: BTreeSet<String> = acknowledged.lock().unwrap().iter().cloned().collect();
    assert_eq!(acknowledged.len(), KEYS);
    assert!(before_kill < KEYS, "the kill came after the burst: nothing tested");
    let failed = *failed.lock().unwrap();

    let seen = receiver
        .wait_for("every acknowledged key's event", Duration::from_secs(120), |seen| {
            let delivered: BTreeSet<&str> =
                seen.iter().filter_map(|d| d["event"]["data"]["key_id"].as_str()).collect();
            acknowledged.iter().all(|k| delivered.contains(k.as_str()))
        })
        .await;
    eprintln!(
        "burst: {KEYS} key creations by 10 writers in {:.1} s, kill -9 after {before_kill} acknowledged \
         ({failed} calls failed meanwhile and were made again); every acknowledged event delivered \
         {:.1} s after the last acknowledgement; {} deliveries received in all",
        (written - started).as_secs_f64(),
        written.elapsed().as_secs_f64(),
        seen.len()
    );
    verified(&seen);
    // A duplicate keeps its id: one webhook-id, one key.
    let mut by_id: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for delivery in &seen {
        by_id
            .entry(delivery["id"].as_str().unwrap())
            .or_default()
            .insert(delivery["event"]["data"]["key_id"].as_str().unwrap());
    }
    assert!(by_id.values().all(|keys| keys.len() == 1), "{by_id:#?}");
    let keys: BTreeSet<&str> = by_id.values().flatten().copied().collect();
    assert_eq!(keys.len(), by_id.len(), "one webhook-id per key event");
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// The deliveries of key.created for `key_id`.
fn deliveries_of<'a>(seen: &'a [Value], key_id: &str) -> Vec<&'a Value> {
    seen.iter().filter(|d| d["event"]["data"]["key_id"] == key_id).collect()
}

async fn rotate(keyd: &Keyd, webhook_id: &str, grace_seconds: u64) -> String {
    let request = RotateWebhookSecretRequest { id: webhook_id.into(), grace_period_seconds: grace_seconds };
    let rotated = keyd.admin_client().await.rotate_webhook_secret(request).await.unwrap().into_inner();
    assert!(rotated.secret.starts_with("whsec_"), "{}", rotated.secret);
    rotated.secret
}

/// During a rotation's grace every delivery carries two signatures, and a receiver still on the
/// old secret and one on the new secret both verify it with `standardwebhooks`. Once a grace
/// has ended, an event carries one signature: only the new secret verifies it.
#[tokio::test]
async fn a_rotated_secret_signs_beside_the_old_one_until_its_grace_ends() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(dir.path(), "").await;
    let keyd = keyd(dir.path()).await;
    let (webhook_id, first) = create_webhook_with_secret(&keyd, &receiver, &["key.created"]).await;

    // A grace far longer than the delivery takes.
    let second = rotate(&keyd, &webhook_id, 3_600).await;
    receiver.trust(&[&first, &second]);
    let during = new_key(&keyd, "alice").await;
    let seen = receiver.wait_for("the event in the grace", Duration::from_secs(30), |s| !s.is_empty()).await;
    let delivery = deliveries_of(&seen, &during)[0];
    assert_eq!(delivery["verified_by"], serde_json::json!([true, true]), "old and new verify: {delivery}");
    let signature = delivery["signature"].as_str().unwrap();
    let parts: Vec<&str> = signature.split(' ').collect();
    assert!(parts.len() == 2 && parts.iter().all(|p| p.starts_with("v1,")), "{signature}");

    // A 2 s grace, over before the next event is caused.
    let third = rotate(&keyd, &webhook_id, 2).await;
    receiver.trust(&[&third, &second, &first]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = new_key(&keyd, "bob").await;
    let seen =
        receiver.wait_for("the event after the grace", Duration::from_secs(30), |s| s.len() >= 2).await;
    let delivery = deliveries_of(&seen, &after)[0];
    assert_eq!(delivery["verified_by"], serde_json::json!([true, false, false]), "only the new: {delivery}");
    assert_eq!(delivery["signature"].as_str().unwrap().split(' ').count(), 1, "{delivery}");
    assert_eq!(seen.len(), 2, "{seen:#?}");
}

/// `tollgate webhooks replay --since` sends every stored event again with its webhook-id: the
/// receiver gets each id twice, each delivery verified.
#[tokio::test]
async fn a_replay_sends_each_stored_event_again_with_its_id() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(dir.path(), "").await;
    let keyd = keyd(dir.path()).await;
    let webhook_id = create_webhook(&keyd, &receiver, &["key.created"]).await;
    for consumer in ["alice", "bob", "carol"] {
        new_key(&keyd, consumer).await;
    }
    receiver.wait_for("three events", Duration::from_secs(30), |s| s.len() >= 3).await;
    // Each recorded delivered (not just received) before the replay.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let request = ListWebhookDeliveriesRequest { webhook_id: webhook_id.clone(), limit: 10 };
        let log = keyd.admin_client().await.list_webhook_deliveries(request).await.unwrap().into_inner();
        if log.deliveries.iter().filter(|d| d.outcome == "delivered").count() == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "{log:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let out = cli(&keyd, &["webhooks", "replay", "--since", "10m", "--webhook", &webhook_id]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.starts_with("Queued 3 message(s) created since "), "{stdout}");

    let seen = receiver.wait_for("each event again", Duration::from_secs(30), |s| s.len() >= 6).await;
    verified(&seen);
    let mut by_id: BTreeMap<&str, usize> = BTreeMap::new();
    for delivery in &seen {
        *by_id.entry(delivery["id"].as_str().unwrap()).or_default() += 1;
    }
    assert_eq!(by_id.len(), 3, "{by_id:?}");
    assert!(by_id.values().all(|n| *n == 2), "each id twice: {by_id:?}");
    // Nothing more comes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.seen().len(), 6);

    let out = cli(&keyd, &["webhooks", "replay", "--since", "tomorrow"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid time \"tomorrow\""));
}

/// An endpoint that answers 500 to everything is disabled once its attempts have failed for
/// --webhooks-disable-after, and another endpoint gets webhook.disabled, verified.
#[tokio::test]
async fn an_endpoint_failing_too_long_is_disabled_and_another_endpoint_is_told() {
    let dir = tempfile::tempdir().unwrap();
    let failing = Receiver::start(&dir.path().join("failing"), "always:500").await;
    let watcher = Receiver::start(&dir.path().join("watcher"), "").await;
    let keyd = keyd_with(dir.path(), &["--webhooks-disable-after", "3"]).await;
    let failing_id = create_webhook(&keyd, &failing, &["key.created", "webhook.disabled"]).await;
    create_webhook(&keyd, &watcher, &["webhook.disabled"]).await;
    new_key(&keyd, "alice").await;

    // The first attempt fails, the retry 5 s later too: 3 s of failures are enough.
    let told = watcher.wait_for("webhook.disabled", Duration::from_secs(60), |s| !s.is_empty()).await;
    verified(&told);
    let event = &told[0]["event"];
    assert_eq!(event["type"], "webhook.disabled");
    assert_eq!(event["data"]["webhook_id"], failing_id.as_str());
    assert_eq!(event["data"]["url"], failing.url().as_str());
    let reason = event["data"]["reason"].as_str().unwrap();
    assert!(reason.starts_with("every attempt has failed since "), "{reason}");
    assert!(reason.ends_with("; endpoints failing for 3 s are disabled)"), "{reason}");
    let hooks = keyd.admin_client().await.list_webhooks(ListWebhooksRequest {}).await.unwrap().into_inner();
    let hook = hooks.webhooks.iter().find(|h| h.id == failing_id).unwrap();
    assert!(!hook.enabled, "{hook:?}");
    assert_eq!(hook.disabled_reason, reason);
    let attempts = failing.seen();
    assert!(attempts.len() >= 2, "{attempts:#?}");
    assert!(attempts.iter().all(|a| a["event"]["type"] == "key.created"), "not told itself: {attempts:#?}");
    // Disabled: nothing more reaches it.
    let before = failing.seen().len();
    new_key(&keyd, "bob").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(failing.seen().len(), before);
    assert_eq!(watcher.seen().len(), 1);
}

/// How long after its commit an event's first attempt reaches the receiver: 200 key creations
/// one after another, 25 ms apart (so that commits fall anywhere in the delivery task's poll
/// interval), each timed from the moment its CreateKey returned (after the commit) to the moment
/// the receiver got it. Printed, not asserted (the figures depend on the machine).
#[tokio::test]
async fn first_attempt_latency_after_commit() {
    const EVENTS: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(dir.path(), "").await;
    let keyd = keyd(dir.path()).await;
    create_webhook(&keyd, &receiver, &["key.created"]).await;
    let mut admin = keyd.admin_client().await;
    let mut committed: BTreeMap<String, f64> = BTreeMap::new();
    for i in 0..EVENTS {
        let request = CreateKeyRequest {
            consumer: format!("latency-{i}"),
            create_consumer: true,
            ..Default::default()
        };
        let key_id = admin.create_key(request).await.unwrap().into_inner().key.unwrap().id;
        committed.insert(key_id, unix_now());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let seen = receiver.wait_for("every event", Duration::from_secs(60), |s| s.len() >= EVENTS).await;
    verified(&seen);
    let mut latencies: Vec<f64> = committed
        .iter()
        .map(|(key_id, at)| {
            let first = deliveries_of(&seen, key_id)
                .iter()
                .map(|d| d["received_at"].as_f64().unwrap())
                .fold(f64::INFINITY, f64::min);
            (first - at) * 1_000.0
        })
        .collect();
    assert!(latencies.iter().all(|l| l.is_finite()), "an event never arrived");
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1];
    eprintln!(
        "first attempt after commit over {EVENTS} events: p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms \
         (poll interval 1 s)",
        at(0.50),
        at(0.95),
        at(1.0)
    );
}
