//! A webhook receiver in Python that verifies every delivery with the independent Standard
//! Webhooks implementation (the `standardwebhooks` package from PyPI, in the virtualenv).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use tollgate_proto::v1::CreateWebhookRequest;

use crate::keyd::Keyd;
use crate::paths::workspace_root;

/// The receiver: answers each POST as its plan says (`500`, `503:1` = 503 with `Retry-After: 1`,
/// `503:date+3` = 503 with `Retry-After` the HTTP-date three seconds from now, then 200 when the
/// plan is used up; `always:500` = 500 to every request), verifies the delivery
/// with `standardwebhooks` against each line of the secret file, and prints one JSON line per
/// request.
const RECEIVER: &str = r#"
import email.utils, json, os, sys, threading, time
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
from standardwebhooks import Webhook

port_file, secret_file, plan = sys.argv[1], sys.argv[2], [s for s in sys.argv[3].split(",") if s]
always = plan[0].partition("always:")[2] if plan and plan[0].startswith("always:") else ""
lock = threading.Lock()

def verify(secret, body, headers):
    try:
        Webhook(secret).verify(body, headers)
        return True, ""
    except Exception as e:
        return False, repr(e)

class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        received_at = time.time()
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        secrets = [line.strip() for line in open(secret_file).read().splitlines() if line.strip()]
        results = [verify(secret, body, headers) for secret in secrets]
        verified, error = results[0] if results else (False, "no secret")
        try:
            event = json.loads(body)
        except Exception:
            event = None
        with lock:
            step = always or (plan.pop(0) if plan else "200")
            status, _, retry_after = step.partition(":")
            print(json.dumps({"id": headers.get("webhook-id"), "verified": verified, "error": error,
                              "verified_by": [ok for ok, _ in results],
                              "signature": headers.get("webhook-signature"),
                              "received_at": received_at,
                              "event": event, "answered": int(status)}), flush=True)
        self.send_response(int(status))
        if retry_after.startswith("date+"):
            retry_after = email.utils.formatdate(time.time() + int(retry_after[5:]), usegmt=True)
        if retry_after:
            self.send_header("Retry-After", retry_after)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass

class Server(ThreadingHTTPServer):
    # The default backlog (5) drops connections the key service opens together (up to
    # --webhooks-concurrency): they would be retried a second later by the kernel.
    request_queue_size = 128

server = Server(("127.0.0.1", 0), Handler)
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename(port_file + ".tmp", port_file)
server.serve_forever()
"#;

/// A running receiver; killed on drop. Each request it got is a JSON value: `id` (the
/// `webhook-id`), `verified` (by the first secret of the secret file), `verified_by` (by each of
/// its secrets), `error`, `signature` (the `webhook-signature` header), `received_at` (Unix
/// seconds, fractional), `event` (the parsed body) and `answered` (the status it answered).
pub struct WebhookReceiver {
    _child: Child,
    port: u16,
    secret_file: PathBuf,
    seen: Arc<Mutex<Vec<Value>>>,
}

impl WebhookReceiver {
    /// Starts a receiver with its files in `dir` (one receiver per directory), answering as
    /// `plan` says.
    pub async fn start(dir: &Path, plan: &str) -> WebhookReceiver {
        std::fs::create_dir_all(dir).unwrap();
        let script = dir.join("receiver.py");
        std::fs::write(&script, RECEIVER).unwrap();
        let port_file = dir.join("receiver.port");
        let secret_file = dir.join("receiver.secret");
        std::fs::write(&secret_file, "").unwrap();
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
        WebhookReceiver { _child: child, port, secret_file, seen }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// Registers this receiver with `keyd` for `events` and trusts the endpoint's secret: the
    /// endpoint's id and its secret.
    pub async fn subscribe(&self, keyd: &Keyd, events: &[&str]) -> (String, String) {
        let created = keyd
            .admin_client()
            .await
            .create_webhook(CreateWebhookRequest {
                url: self.url(),
                events: events.iter().map(|e| e.to_string()).collect(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(created.secret.starts_with("whsec_"), "{}", created.secret);
        self.trust(&[&created.secret]);
        (created.webhook.unwrap().id, created.secret)
    }

    /// Verifies from now on with these secrets (`verified` is by the first).
    pub fn trust(&self, secrets: &[&str]) {
        std::fs::write(&self.secret_file, secrets.join("\n")).unwrap();
    }

    /// Everything received so far.
    pub fn seen(&self) -> Vec<Value> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits (bounded) until `done` holds for what was received; returns it.
    pub async fn wait_for(&self, what: &str, limit: Duration, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
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
