//! A real `redis-server` and the real `tollgate-ratelimitd` binary on loopback ports, and the
//! pieces of Envoy config for its native `envoy.filters.http.ratelimit` filter.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::envoy::static_cluster;
use crate::paths::binary;
use crate::process::{kill, read_log, stable_port, tail, terminate};

const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Name of the Envoy cluster of the rate-limit service.
pub const RATELIMIT_CLUSTER: &str = "tollgate_ratelimitd";

/// `redis-server` from `PATH` (Debian's package: `make redis`).
fn redis_server_bin() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths).map(|dir| dir.join("redis-server")).find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("redis-server not found on PATH: run `make redis` (Debian's redis-server package)")
    })
}

/// A running `redis-server` with no persistence, in a temporary directory; killed on drop.
pub struct Redis {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
}

impl Redis {
    /// Starts Redis on a free loopback port.
    pub async fn start() -> Redis {
        let dir = tempfile::Builder::new().prefix("tollgate-redis-").tempdir().expect("tempdir");
        for _ in 0..5 {
            let port = stable_port();
            if let Ok(child) = spawn_redis(dir.path(), port).await {
                return Redis { child: Some(child), port, dir };
            }
        }
        panic!("redis-server did not start:\n{}", tail(&read_log(&dir.path().join("redis.log")), 30));
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's process id (the benchmark pins it to a core and reads its CPU time).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: Redis vanishes like a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill(&mut child);
        }
    }

    /// Starts Redis again on the same port (empty: it keeps nothing on disk).
    pub async fn restart(&mut self) {
        self.kill();
        let mut last = String::new();
        for _ in 0..20 {
            match spawn_redis(self.dir.path(), self.port).await {
                Ok(child) => {
                    self.child = Some(child);
                    return;
                }
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("redis-server did not restart on port {}: {last}", self.port);
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn spawn_redis(dir: &Path, port: u16) -> Result<Child, String> {
    let log =
        std::fs::OpenOptions::new().create(true).append(true).open(dir.join("redis.log")).expect("redis log");
    let mut child = Command::new(redis_server_bin())
        .arg("--port")
        .arg(port.to_string())
        .arg("--bind")
        .arg("127.0.0.1")
        .arg("--save")
        .arg("")
        .arg("--appendonly")
        .arg("no")
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone log handle"))
        .stderr(log)
        .spawn()
        .map_err(|e| format!("spawn redis-server: {e}"))?;
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("redis-server exited with {status}"));
        }
        if ping(port).await {
            return Ok(child);
        }
        if tokio::time::Instant::now() >= deadline {
            kill(&mut child);
            return Err("redis-server not answering".to_owned());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Whether Redis on `port` answers PING.
async fn ping(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(Ok(mut stream)) =
        tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(("127.0.0.1", port)))
            .await
    else {
        return false;
    };
    if stream.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await,
        Ok(Ok(n)) if buf[..n].starts_with(b"+PONG")
    )
}

/// A running `tollgate-ratelimitd`; killed on drop.
pub struct Ratelimitd {
    child: Option<Child>,
    addr: SocketAddr,
    metrics_addr: SocketAddr,
    dir: TempDir,
}

impl Ratelimitd {
    /// Starts the service with one domain's YAML config, on Redis when `redis` is given (a
    /// `redis://` URL), in memory otherwise. Panics with its log when it does not come up.
    pub async fn start(config_yaml: &str, redis: Option<&str>) -> Ratelimitd {
        match Self::try_start(config_yaml, redis).await {
            Ok(service) => service,
            Err(log) => panic!("tollgate-ratelimitd did not start:\n{log}"),
        }
    }

    /// Starts the service; `Err` carries its log when it exits (a refused config) or never
    /// listens.
    pub async fn try_start(config_yaml: &str, redis: Option<&str>) -> Result<Ratelimitd, String> {
        let dir = tempfile::Builder::new().prefix("tollgate-ratelimitd-").tempdir().expect("tempdir");
        let config = dir.path().join("limits.yaml");
        std::fs::write(&config, config_yaml).expect("write config");
        let addr_file = dir.path().join("addr");
        let metrics_addr_file = dir.path().join("metrics.addr");
        let log_path = dir.path().join("ratelimitd.log");
        let log = std::fs::File::create(&log_path).expect("log");
        let mut command = Command::new(binary("tollgate-ratelimitd"));
        command
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--config")
            .arg(&config)
            .arg("--addr-file")
            .arg(&addr_file)
            .arg("--metrics-listen")
            .arg("127.0.0.1:0")
            .arg("--metrics-addr-file")
            .arg(&metrics_addr_file)
            .arg("--log-format")
            .arg("text")
            .env_remove("TOLLGATE_RATELIMITD_LISTEN")
            .env_remove("TOLLGATE_RATELIMITD_REDIS")
            .env_remove("TOLLGATE_RATELIMITD_METRICS_LISTEN")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        if let Some(url) = redis {
            command.arg("--redis").arg(url);
        }
        let mut child = command.spawn().expect("spawn tollgate-ratelimitd");
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("exited with {status}\n{}", read_log(&log_path)));
            }
            let written = std::fs::read_to_string(&addr_file).unwrap_or_default();
            if let Ok(addr) = written.trim().parse::<SocketAddr>()
                && tokio::net::TcpStream::connect(addr).await.is_ok()
            {
                let metrics = std::fs::read_to_string(&metrics_addr_file).unwrap_or_default();
                let metrics_addr = metrics.trim().parse().expect("metrics address");
                return Ok(Ratelimitd { child: Some(child), addr, metrics_addr, dir });
            }
            if tokio::time::Instant::now() >= deadline {
                kill(&mut child);
                return Err(format!("not listening after {START_TIMEOUT:?}\n{}", read_log(&log_path)));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The gRPC address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The service's process id (the benchmark pins it to a core and reads its CPU time).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The metrics endpoint's address.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// Everything the service logged so far.
    pub fn logs(&self) -> String {
        read_log(&self.dir.path().join("ratelimitd.log"))
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        let response = crate::HttpClient::new()
            .get(format!("http://{}/metrics", self.metrics_addr))
            .try_send()
            .await
            .unwrap_or_else(|e| panic!("scrape ratelimitd metrics: {e}"));
        assert_eq!(response.status, 200);
        response.text()
    }

    /// The value of one metric line (`name{labels}`), 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// SIGTERM and wait.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, Duration::from_secs(10)).await;
        }
    }
}

impl Drop for Ratelimitd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- tollgate-ratelimitd log (last lines) ---\n{}", tail(&self.logs(), 40));
        }
        if let Some(mut child) = self.child.take() {
            kill(&mut child);
        }
    }
}

/// Envoy's native `envoy.filters.http.ratelimit` filter for `domain` against the
/// [`RATELIMIT_CLUSTER`], with `X-RateLimit-*` headers (draft 03) and the given failure mode.
pub fn native_ratelimit_filter(domain: &str, failure_mode_deny: bool) -> Value {
    json!({
        "name": "envoy.filters.http.ratelimit",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
            "domain": domain,
            "failure_mode_deny": failure_mode_deny,
            "timeout": "5s",
            "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
            "rate_limit_service": {
                "transport_api_version": "V3",
                "grpc_service": {"envoy_grpc": {"cluster_name": RATELIMIT_CLUSTER}}
            }
        }
    })
}

/// The HTTP/2 cluster of the rate-limit service at `addrs` (round robin over them).
pub fn ratelimit_cluster(addrs: &[SocketAddr]) -> Value {
    let first = *addrs.first().expect("at least one rate-limit service");
    let mut cluster = static_cluster(RATELIMIT_CLUSTER, first, true);
    let endpoints: Vec<Value> = addrs
        .iter()
        .map(|a| {
            json!({"endpoint": {"address": {"socket_address": {
                "address": a.ip().to_string(), "port_value": a.port()
            }}}})
        })
        .collect();
    cluster["load_assignment"]["endpoints"] = json!([{"lb_endpoints": endpoints}]);
    cluster
}
