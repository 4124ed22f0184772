//! A real Prometheus for the tests: started on a free loopback port in a temporary directory,
//! scraping the targets a test gives it every second, with Tollgate's alert rules loaded.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::http::HttpClient;

/// One scrape job: its name, the path to scrape and the targets.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub job: String,
    pub metrics_path: String,
    pub targets: Vec<SocketAddr>,
}

impl Scrape {
    pub fn new(job: &str, metrics_path: &str, targets: &[SocketAddr]) -> Self {
        Self { job: job.to_owned(), metrics_path: metrics_path.to_owned(), targets: targets.to_vec() }
    }
}

/// `PROMETHEUS_BIN`, default `prometheus` on the `PATH` (Debian's package, which the Makefile
/// installs).
pub fn prometheus_bin() -> PathBuf {
    std::env::var_os("PROMETHEUS_BIN")
        .filter(|v| !v.is_empty())
        .map_or_else(|| "prometheus".into(), PathBuf::from)
}

/// A running Prometheus; killed and its directory removed when dropped.
pub struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    client: HttpClient,
}

impl Prometheus {
    /// Starts Prometheus scraping `scrapes` every second, with the rule files `rules` loaded;
    /// returns once it is ready. Panics (with its log) when it does not start.
    pub async fn start(scrapes: &[Scrape], rules: &[&Path]) -> Prometheus {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let jobs: Vec<Value> = scrapes
            .iter()
            .map(|s| {
                let targets: Vec<String> = s.targets.iter().map(ToString::to_string).collect();
                json!({"job_name": s.job, "metrics_path": s.metrics_path, "static_configs": [{"targets": targets}]})
            })
            .collect();
        let rule_files: Vec<String> = rules.iter().map(|p| p.display().to_string()).collect();
        // JSON is YAML.
        let config = json!({
            "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
            "rule_files": rule_files,
            "scrape_configs": jobs,
        });
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config.to_string()).expect("write prometheus.yml");
        let mut last_log = String::new();
        for _ in 0..3 {
            let port = free_port();
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let log_path = dir.path().join("prometheus.log");
            let log = std::fs::File::create(&log_path).expect("prometheus.log");
            let mut child = Command::new(prometheus_bin())
                .arg(format!("--config.file={}", config_path.display()))
                .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
                .arg(format!("--web.listen-address={addr}"))
                .arg("--log.level=warn")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot run {} ({e}); `make test` installs it", prometheus_bin().display())
                });
            let client = HttpClient::fresh_connections();
            for _ in 0..100 {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                let ready = client.get(format!("http://{addr}/-/ready")).try_send().await;
                if ready.is_ok_and(|r| r.status == 200) {
                    return Prometheus { child, addr, dir, client };
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
            last_log = std::fs::read_to_string(&log_path).unwrap_or_default();
        }
        panic!("Prometheus did not start:\n{last_log}");
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The directory it runs in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Evaluates `expr` now (`/api/v1/query`): the result's samples, or the error Prometheus gave.
    pub async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let url = format!("http://{}/api/v1/query?query={}", self.addr, percent_encode(expr));
        let res = self.client.get(url).send().await;
        let body = res.json();
        if body["status"] != "success" {
            return Err(format!("{}: {}", body["errorType"], body["error"]));
        }
        Ok(body["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// The alerting rules Prometheus loaded: each rule's name and query.
    pub async fn alert_rules(&self) -> Vec<(String, String)> {
        let res = self.client.get(format!("http://{}/api/v1/rules?type=alert", self.addr)).send().await;
        let body = res.json();
        let mut out = Vec::new();
        for group in body["data"]["groups"].as_array().into_iter().flatten() {
            for rule in group["rules"].as_array().into_iter().flatten() {
                out.push((
                    rule["name"].as_str().unwrap_or("").to_owned(),
                    rule["query"].as_str().unwrap_or("").to_owned(),
                ));
            }
        }
        out
    }

    /// The health of each scrape target: (job, instance, health).
    pub async fn targets(&self) -> Vec<(String, String, String)> {
        let res = self.client.get(format!("http://{}/api/v1/targets", self.addr)).send().await;
        let body = res.json();
        body["data"]["activeTargets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                let s = |v: &Value| v.as_str().unwrap_or("").to_owned();
                (s(&t["labels"]["job"]), s(&t["labels"]["instance"]), s(&t["health"]))
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default();
            eprintln!("--- prometheus log ---\n{log}");
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

/// Percent-encodes everything but unreserved characters (RFC 3986 §2.3).
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
