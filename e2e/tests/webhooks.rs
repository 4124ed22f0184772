//! Webhooks from the real key service to a real receiver that verifies every delivery with the
//! independent Standard Webhooks implementation (the `standardwebhooks` package from PyPI).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tollgate_e2e::{Keyd, Value, workspace_root};
use tollgate_proto::v1::{
    CreateKeyRequest, CreateWebhookRequest, ListWebhookDeliveriesRequest, ListWebhooksRequest,
    RevokeKeyRequest,
};

/// The receiver: answers each POST as its plan says (`500`, `503:1` = 503 with `Retry-After: 1`,
/// then 200 when the plan is used up), verifies the delivery with `standardwebhooks`, and prints
/// one JSON line per request.
const RECEIVER: &str = r#"
import json, os, sys, threading
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
from standardwebhooks import Webhook

port_file, secret_file, plan = sys.argv[1], sys.argv[2], [s for s in sys.argv[3].split(",") if s]
lock = threading.Lock()

class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            Webhook(open(secret_file).read().strip()).verify(body, headers)
            verified, error = True, ""
        except Exception as e:
            verified, error = False, repr(e)
        try:
            event = json.loads(body)
        except Exception:
            event = None
        with lock:
            step = plan.pop(0) if plan else "200"
            status, _, retry_after = step.partition(":")
            print(json.dumps({"id": headers.get("webhook-id"), "verified": verified, "error": error,
                              "event": event, "answered": int(status)}), flush=True)
        self.send_response(int(status))
        if retry_after:
            self.send_header("Retry-After", retry_after)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename(port_file + ".tmp", port_file)
server.serve_forever()
"#;

struct Receiver {
    _child: Child,
    port: u16,
    secret_file: PathBuf,
    seen: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    async fn start(dir: &Path, plan: &str) -> Receiver {
        let script = dir.join("receiver.py");
        std::fs::write(&script, RECEIVER).unwrap();
        let port_file = dir.join("receiver.port");
        let secret_file = dir.join("receiver.secret");
        let python = workspace_root().join(".venv/bin/python");
        let mut child = Command::new(&python)
            .arg(&script)
            .arg(&port_file)
            .arg(&secret_file)
            .arg(plan)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e} (make envoy installs the virtualenv)", python.display()));
        let stdout = child.stdout.take().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().unwrap().push(serde_json::from_str(&line).unwrap());
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let port = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file) {
                break text.trim().parse().unwrap();
            }
            assert!(Instant::now() < deadline, "the receiver did not start (is standardwebhooks installed?)");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Receiver { _child: child, port, secret_file, seen }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    fn seen(&self) -> Vec<Value> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits (bounded) until `done` holds for what was received; returns it.
    async fn wait_for(&self, what: &str, limit: Duration, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let seen = self.seen();
            if done(&seen) {
                return seen;
            }
            assert!(Instant::now() < deadline, "{what}: not received within {limit:?}; received {seen:#?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The key service, allowed to deliver to loopback, with a short attempt timeout.
async fn keyd(dir: &Path) -> Keyd {
    let args = ["--webhooks-allow-private", "--webhooks-timeout", "2"].map(String::from);
    Keyd::start_with_args(dir.join("keyd"), &args).await
}

async fn create_webhook(keyd: &Keyd, receiver: &Receiver, events: &[&str]) -> String {
    let created = keyd
        .admin_client()
        .await
        .create_webhook(CreateWebhookRequest {
            url: receiver.url(),
            events: events.iter().map(|e| e.to_string()).collect(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(created.secret.starts_with("whsec_"), "{}", created.secret);
    std::fs::write(&receiver.secret_file, &created.secret).unwrap();
    created.webhook.unwrap().id
}

async fn new_key(keyd: &Keyd, consumer: &str) -> String {
    let request = CreateKeyRequest { consumer: consumer.into(), create_consumer: true, ..Default::default() };
    keyd.admin_client().await.create_key(request).await.unwrap().into_inner().key.unwrap().id
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
    let receiver = Receiver::start(dir.path(), "500,503:1,200").await;
    let keyd = keyd(dir.path()).await;
    let webhook_id = create_webhook(&keyd, &receiver, &["key.created"]).await;
    new_key(&keyd, "alice").await;
    let seen = receiver.wait_for("three attempts", Duration::from_secs(60), |seen| seen.len() >= 3).await;
    verified(&seen);
    let answered: Vec<i64> = seen.iter().map(|d| d["answered"].as_i64().unwrap()).collect();
    assert_eq!(answered, [500, 503, 200]);
    let ids: BTreeSet<&str> = seen.iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 1, "one webhook-id on every attempt: {seen:#?}");

    // The log: three attempts, newest first; the first retry on the schedule, the second after
    // Retry-After.
    let log = keyd
        .admin_client()
        .await
        .list_webhook_deliveries(ListWebhookDeliveriesRequest { webhook_id, limit: 10 })
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    let summary: Vec<(u32, u32, &str)> =
        log.iter().map(|d| (d.attempt, d.status, d.outcome.as_str())).collect();
    assert_eq!(summary, [(3, 200, "delivered"), (2, 503, "retry"), (1, 500, "retry")]);
    assert_eq!(log[1].next_attempt_at - log[1].at, 1, "Retry-After: 1 is honoured: {log:#?}");
    let first_delay = log[2].next_attempt_at - log[2].at;
    assert!((4..=6).contains(&first_delay), "the first retry is 5 s ± 20%: {log:#?}");
    // Three sends, nothing more.
    assert_eq!(receiver.seen().len(), 3);
}

#[tokio::test]
async fn a_410_disables_the_endpoint_after_one_attempt() {
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
    let log = keyd
        .admin_client()
        .await
        .list_webhook_deliveries(ListWebhookDeliveriesRequest { webhook_id, limit: 10 })
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    assert_eq!(log.len(), 1);
    assert_eq!((log[0].status, log[0].outcome.as_str()), (410, "endpoint_disabled"));
}

#[tokio::test]
async fn every_event_is_delivered_after_kill_9_during_a_burst() {
    const KEYS: usize = 300;
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(dir.path(), "").await;
    let mut keyd = keyd(dir.path()).await;
    create_webhook(&keyd, &receiver, &["key.created"]).await;

    // Keys created ten at a time; the service is killed once a third are acknowledged.
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut writers = Vec::new();
    for w in 0..10 {
        let mut admin = keyd.admin_client().await;
        let acknowledged = Arc::clone(&acknowledged);
        writers.push(tokio::spawn(async move {
            for i in 0..KEYS / 10 {
                let request = CreateKeyRequest {
                    consumer: format!("burst-{w}-{i}"),
                    create_consumer: true,
                    ..Default::default()
                };
                match admin.create_key(request).await {
                    Ok(response) => acknowledged.lock().unwrap().push(response.into_inner().key.unwrap().id),
                    Err(_) => break,
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while acknowledged.lock().unwrap().len() < KEYS / 3 {
        assert!(Instant::now() < deadline, "the burst did not get going");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    keyd.kill();
    for writer in writers {
        writer.await.unwrap();
    }
    let acknowledged: BTreeSet<String> = acknowledged.lock().unwrap().iter().cloned().collect();
    assert!(acknowledged.len() < KEYS, "the kill came after the burst: nothing tested");
    keyd.restart().await;

    let seen = receiver
        .wait_for("every acknowledged key's event", Duration::from_secs(120), |seen| {
            let delivered: BTreeSet<&str> =
                seen.iter().filter_map(|d| d["event"]["data"]["key_id"].as_str()).collect();
            acknowledged.iter().all(|k| delivered.contains(k.as_str()))
        })
        .await;
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
