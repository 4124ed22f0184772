//! Envoy with a generated config, on loopback ports the kernel picks.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hyper::Method;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::http::{HttpClient, RequestBuilder, Response};
use crate::paths::{envoy_bin, wasm_module};
use crate::process::{kill, read_log, tail};

/// Root id of the key-auth filter.
pub const KEY_AUTH_ROOT_ID: &str = "tollgate.key_auth";
/// Name of the Envoy cluster of the key service (use it as `key_service.cluster`).
pub const KEYD_CLUSTER: &str = "tollgate_keyd";
/// Name of the Envoy cluster of the upstream.
pub const UPSTREAM_CLUSTER: &str = "upstream";

const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// What to run Envoy with. Build with [`EnvoyOpts::new`] and the chained setters, or fill the
/// public fields.
#[derive(Debug, Clone)]
pub struct EnvoyOpts {
    /// Worker threads (`--concurrency`).
    pub workers: u32,
    /// The key-auth filter's JSON config; `None` runs Envoy without it. A `Value::String` is passed
    /// verbatim (to test configs that are not even JSON).
    pub filter_config: Option<Value>,
    /// Where the route sends requests.
    pub upstream: SocketAddr,
    /// The key service; adds the HTTP/2 cluster [`KEYD_CLUSTER`] pointing at it.
    pub keyd: Option<SocketAddr>,
    /// The key-auth module; default `tollgate_key_auth.wasm` from the wasm directory.
    pub wasm: Option<PathBuf>,
    /// `vm_id` of the Tollgate filters (filters with the same id and module share a VM).
    pub vm_id: String,
    /// More HTTP filters, placed after key-auth and before the router (see [`wasm_filter`]).
    pub extra_http_filters: Vec<Value>,
    /// More clusters.
    pub extra_clusters: Vec<Value>,
    /// Envoy's log level (`-l`), default `info`.
    pub log_level: String,
    /// `--component-log-level`, e.g. `wasm:debug`.
    pub component_log_level: Option<String>,
    /// Route timeout to the upstream.
    pub route_timeout: Duration,
    /// Named routes, tried in order before the catch-all route (see [`EnvoyOpts::named_route`]).
    pub routes: Vec<Value>,
    /// Fields merged into the HTTP connection manager's config (e.g. `normalize_path`,
    /// `http_protocol_options`, `stream_error_on_invalid_http_message`).
    pub hcm: serde_json::Map<String, Value>,
}

impl EnvoyOpts {
    /// One worker, no filter, routing everything to `upstream`.
    pub fn new(upstream: SocketAddr) -> Self {
        Self {
            workers: 1,
            filter_config: None,
            upstream,
            keyd: None,
            wasm: None,
            vm_id: "tollgate".to_owned(),
            extra_http_filters: Vec::new(),
            extra_clusters: Vec::new(),
            log_level: "info".to_owned(),
            component_log_level: None,
            route_timeout: Duration::from_secs(15),
            routes: Vec::new(),
            hcm: serde_json::Map::new(),
        }
    }

    /// Adds a route named `name` for paths starting with `prefix` (to the upstream), tried before
    /// the catch-all route, which is named `main`. Filters see the name as `xds.route_name`.
    pub fn named_route(mut self, name: &str, prefix: &str) -> Self {
        self.routes.push(json!({
            "name": name,
            "match": {"prefix": prefix},
            "route": {"cluster": UPSTREAM_CLUSTER, "timeout": format!("{}s", self.route_timeout.as_secs_f64())}
        }));
        self
    }

    /// Sets a field of the HTTP connection manager's config.
    pub fn hcm_field(mut self, name: &str, value: Value) -> Self {
        self.hcm.insert(name.to_owned(), value);
        self
    }

    pub fn workers(mut self, workers: u32) -> Self {
        self.workers = workers;
        self
    }

    /// Adds the key-auth filter with this config.
    pub fn key_auth(mut self, config: Value) -> Self {
        self.filter_config = Some(config);
        self
    }

    pub fn keyd(mut self, addr: SocketAddr) -> Self {
        self.keyd = Some(addr);
        self
    }

    pub fn wasm(mut self, path: impl Into<PathBuf>) -> Self {
        self.wasm = Some(path.into());
        self
    }

    pub fn http_filter(mut self, filter: Value) -> Self {
        self.extra_http_filters.push(filter);
        self
    }

    pub fn cluster(mut self, cluster: Value) -> Self {
        self.extra_clusters.push(cluster);
        self
    }

    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = level.to_owned();
        self
    }

    pub fn component_log_level(mut self, levels: &str) -> Self {
        self.component_log_level = Some(levels.to_owned());
        self
    }

    /// The Envoy bootstrap config these options describe (listener and admin on port 0).
    pub fn render(&self) -> Value {
        let mut http_filters = Vec::new();
        if let Some(config) = &self.filter_config {
            let wasm = self.wasm.clone().unwrap_or_else(|| wasm_module("tollgate_key_auth"));
            let mut filter = wasm_filter(KEY_AUTH_ROOT_ID, KEY_AUTH_ROOT_ID, &wasm, config);
            filter["typed_config"]["config"]["vm_config"]["vm_id"] = json!(self.vm_id);
            http_filters.push(filter);
        }
        http_filters.extend(self.extra_http_filters.iter().cloned());
        http_filters.push(json!({
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
        }));

        let mut clusters = vec![static_cluster(UPSTREAM_CLUSTER, self.upstream, false)];
        if let Some(keyd) = self.keyd {
            clusters.push(static_cluster(KEYD_CLUSTER, keyd, true));
        }
        clusters.extend(self.extra_clusters.iter().cloned());

        let mut routes = self.routes.clone();
        routes.push(json!({
            "name": "main",
            "match": {"prefix": "/"},
            "route": {
                "cluster": UPSTREAM_CLUSTER,
                "timeout": format!("{}s", self.route_timeout.as_secs_f64())
            }
        }));
        let mut config = json!({
            "node": {"id": NODE_ID, "cluster": "tollgate"},
            "stats_config": stats_config(),
            "admin": {"address": loopback(0)},
            "static_resources": {
                "listeners": [{
                    "name": "gateway",
                    "address": loopback(0),
                    "filter_chains": [{"filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "gateway",
                            "generate_request_id": true,
                            "access_log": [{
                                "name": "envoy.access_loggers.stdout",
                                "typed_config": {
                                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                                    "log_format": {"text_format_source": {"inline_string":
                                        "%REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_CODE_DETAILS% %DURATION%ms id=%REQ(X-REQUEST-ID)%\n"}}
                                }
                            }],
                            "route_config": {
                                "name": "gateway",
                                "virtual_hosts": [{
                                    "name": "all",
                                    "domains": ["*"],
                                    "routes": routes
                                }]
                            },
                            "http_filters": http_filters
                        }
                    }]}]
                }],
                "clusters": clusters
            }
        });
        let hcm =
            &mut config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
        for (name, value) in &self.hcm {
            hcm[name] = value.clone();
        }
        config
    }
}

/// The node id of every Envoy the tests start (what the filters read as `xds.node.id`).
pub const NODE_ID: &str = "tollgate-e2e";

/// Tollgate's `stats_config` (envoy/stats-tags.yaml) as JSON: the tag specifiers that turn the
/// filters' metric names into Prometheus labels. Every Envoy the tests start carries it, as the
/// shipped configurations do.
pub fn stats_config() -> Value {
    stats_config_of(include_str!("../../envoy/stats-tags.yaml"))
}

/// The `stats_tags` of a `stats_config:` block in YAML: each `- tag_name:` with its `regex:`
/// (single-quoted) line.
pub fn stats_config_of(yaml: &str) -> Value {
    let mut tags = Vec::new();
    let mut name = None;
    for line in yaml.lines().map(str::trim) {
        if let Some(n) = line.strip_prefix("- tag_name:") {
            name = Some(n.trim().to_owned());
        } else if let Some(r) = line.strip_prefix("regex:")
            && let Some(tag) = name.take()
        {
            let regex = r.trim().trim_matches('\'').replace("''", "'");
            tags.push(json!({"tag_name": tag, "regex": regex}));
        }
    }
    json!({"stats_tags": tags})
}

/// An `envoy.filters.http.wasm` entry running `root_id` of the module at `wasm` with `config`
/// (a `Value::String` goes in verbatim, anything else as its JSON text).
pub fn wasm_filter(name: &str, root_id: &str, wasm: &Path, config: &Value) -> Value {
    let configuration = match config {
        Value::String(raw) => raw.clone(),
        other => other.to_string(),
    };
    json!({
        "name": name,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": name,
                "root_id": root_id,
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": configuration
                },
                "vm_config": {
                    "vm_id": "tollgate",
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": wasm.to_string_lossy()}}
                }
            }
        }
    })
}

fn loopback(port: u16) -> Value {
    json!({"socket_address": {"address": "127.0.0.1", "port_value": port}})
}

/// A `STATIC` cluster of one loopback endpoint, speaking HTTP/2 upstream when `http2` (gRPC).
pub fn static_cluster(name: &str, addr: SocketAddr, http2: bool) -> Value {
    let mut cluster = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": if http2 { "0.25s" } else { "1s" },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": addr.ip().to_string(),
                "port_value": addr.port()
            }}}}]}]
        }
    });
    if http2 {
        cluster["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}
            }
        });
    }
    cluster
}

/// A running Envoy; killed on drop.
pub struct Envoy {
    child: Child,
    dir: TempDir,
    admin: SocketAddr,
    listener: SocketAddr,
    client: HttpClient,
}

impl Envoy {
    /// Starts Envoy and waits until it is ready and its listener is bound; panics with Envoy's log
    /// when it does not come up.
    pub async fn start(opts: EnvoyOpts) -> Envoy {
        match Self::try_start(opts).await {
            Ok(envoy) => envoy,
            Err(log) => panic!("Envoy did not start:\n{}", tail(&log, 60)),
        }
    }

    /// Starts Envoy; `Err` carries Envoy's log when it refuses the config (exits) or never
    /// becomes ready.
    pub async fn try_start(opts: EnvoyOpts) -> Result<Envoy, String> {
        let mut args = Vec::new();
        args.push("-l".to_owned());
        args.push(opts.log_level.clone());
        if let Some(levels) = &opts.component_log_level {
            args.push("--component-log-level".to_owned());
            args.push(levels.clone());
        }
        Self::start_config(&opts.render(), opts.workers, &args).await
    }

    /// Starts Envoy expecting it to refuse the config; returns its log (so a test can assert that
    /// the error names the bad field). Panics if Envoy came up.
    pub async fn expect_refusal(opts: EnvoyOpts) -> String {
        match Self::try_start(opts).await {
            Ok(envoy) => panic!("Envoy accepted the config; log:\n{}", tail(&envoy.logs(), 40)),
            Err(log) => log,
        }
    }

    /// Starts Envoy with a complete bootstrap config (`extra_args` go on the command line). Give
    /// the admin interface and the listeners port 0 so instances never collide: the admin address
    /// is found through `--admin-address-path`, and [`Envoy::url`] talks to the first listener
    /// that `/listeners` reports. [`EnvoyOpts::render`] is a good starting point to modify.
    pub async fn start_config(config: &Value, workers: u32, extra_args: &[String]) -> Result<Envoy, String> {
        let dir = tempfile::Builder::new().prefix("tollgate-envoy-").tempdir().expect("tempdir");
        let config_path = dir.path().join("envoy.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(config).expect("config JSON"))
            .expect("write config");
        let admin_path = dir.path().join("admin.addr");
        let log_path = dir.path().join("envoy.log");
        let access_path = dir.path().join("access.log");

        let child = Command::new(envoy_bin())
            .arg("-c")
            .arg(&config_path)
            .arg("--concurrency")
            .arg(workers.to_string())
            .arg("--admin-address-path")
            .arg(&admin_path)
            // No shared memory or domain sockets: any number of Envoys can run side by side.
            .arg("--disable-hot-restart")
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&access_path).expect("access log"))
            .stderr(std::fs::File::create(&log_path).expect("envoy log"))
            .spawn()
            .expect("spawn envoy");

        let mut envoy = Envoy {
            child,
            dir,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            listener: SocketAddr::from(([127, 0, 0, 1], 0)),
            client: HttpClient::new(),
        };
        match envoy.wait_ready(&admin_path).await {
            Ok(()) => Ok(envoy),
            Err(reason) => {
                kill(&mut envoy.child);
                Err(format!("{}\n--- {reason} ---", envoy.logs()))
            }
        }
    }

    async fn wait_ready(&mut self, admin_path: &Path) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("Envoy exited with {status}"));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!("Envoy not ready after {READY_TIMEOUT:?}"));
            }
            if self.admin.port() == 0 {
                let written = std::fs::read_to_string(admin_path).unwrap_or_default();
                if let Ok(addr) = written.trim().parse() {
                    self.admin = addr;
                }
            } else if let Ok(ready) = self.admin("/ready").await
                && ready.status == 200
            {
                let listeners = self.admin("/listeners?format=json").await?;
                if let Some(addr) = first_listener(&listeners.json()) {
                    self.listener = addr;
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Validates a config with `envoy --mode validate`; `Err` carries Envoy's output.
    pub fn validate(config_path: &Path) -> Result<(), String> {
        let output = Command::new(envoy_bin())
            .arg("--mode")
            .arg("validate")
            .arg("-c")
            .arg(config_path)
            .arg("-l")
            .arg("warn")
            .output()
            .map_err(|e| format!("run envoy: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }

    /// The gateway listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.listener
    }

    /// Envoy's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Envoy's resident memory (`VmRSS`), in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    /// The admin API's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// `http://127.0.0.1:PORT{path}` on the gateway listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listener)
    }

    /// A request through the gateway (pooled connections; use [`HttpClient::fresh_connections`]
    /// with [`Envoy::url`] to spread requests over workers).
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path))
    }

    pub fn get(&self, path: &str) -> RequestBuilder {
        self.request(Method::GET, path)
    }

    pub fn post(&self, path: &str) -> RequestBuilder {
        self.request(Method::POST, path)
    }

    /// GET on the admin API, e.g. `/stats?filter=key_auth` or `/config_dump`.
    pub async fn admin(&self, path: &str) -> Result<Response, String> {
        self.client.get(format!("http://{}{path}", self.admin)).try_send().await
    }

    /// The body of a GET on the admin API; panics unless it answers 200.
    pub async fn admin_get(&self, path: &str) -> String {
        let response = self.admin(path).await.unwrap_or_else(|e| panic!("admin {path}: {e}"));
        assert_eq!(response.status, 200, "admin {path}: {}", response.text());
        response.text()
    }

    /// Counters and gauges whose name matches the regex `filter` (Envoy's `/stats?filter=`).
    pub async fn stats(&self, filter: &str) -> BTreeMap<String, u64> {
        let text = self.admin_get(&format!("/stats?filter={filter}")).await;
        text.lines()
            .filter_map(|line| {
                let (name, value) = line.split_once(": ")?;
                Some((name.to_owned(), value.trim().parse().ok()?))
            })
            .collect()
    }

    /// One counter or gauge by its full name; `None` when Envoy does not have it.
    pub async fn stat(&self, name: &str) -> Option<u64> {
        self.stats(name).await.get(name).copied()
    }

    /// Envoy's log so far (including what the filters log).
    pub fn logs(&self) -> String {
        read_log(&self.dir.path().join("envoy.log"))
    }

    /// The access log so far, one line per request:
    /// `METHOD PATH STATUS RESPONSE_CODE_DETAILS DURATIONms id=REQUEST_ID`.
    pub fn access_log(&self) -> String {
        read_log(&self.dir.path().join("access.log"))
    }

    /// The config Envoy runs with.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("envoy.json")
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- envoy log (last lines) ---\n{}", tail(&self.logs(), 60));
            eprintln!("--- envoy access log (last lines) ---\n{}", tail(&self.access_log(), 20));
        }
        kill(&mut self.child);
    }
}

fn first_listener(listeners: &Value) -> Option<SocketAddr> {
    let socket = &listeners["listener_statuses"].as_array()?.first()?["local_address"]["socket_address"];
    let ip = socket["address"].as_str()?.parse().ok()?;
    let port = u16::try_from(socket["port_value"].as_u64()?).ok()?;
    (port != 0).then_some(SocketAddr::new(ip, port))
}
