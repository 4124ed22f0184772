//! The real `tollgate-keyd` binary, on a loopback port the kernel picks.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tempfile::TempDir;
use tollgate_proto::v1::key_service_client::KeyServiceClient;
use tollgate_proto::v1::{CreateKeyRequest, CreateKeyResponse, RevokeKeyRequest};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::envoy::KEYD_CLUSTER;
use crate::paths::binary;
use crate::process::{kill, read_log, signal, stable_port, tail, terminate};
use rustix::process::Signal;

/// Admin token every test key service is started with.
pub const ADMIN_TOKEN: &str = "tgadm_e2e_admin_token_0123456789abcdef";
/// Data-plane token every test key service is started with.
pub const DATAPLANE_TOKEN: &str = "tgdp_e2e_dataplane_token_0123456789abcdef";
/// The dashboard's read-only viewer token every test key service is started with.
pub const VIEWER_TOKEN: &str = "tgv_e2e_viewer_token_0123456789abcdef";

const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct BearerToken(MetadataValue<Ascii>);

impl BearerToken {
    pub fn new(token: &str) -> Self {
        Self(format!("Bearer {token}").parse().expect("token is ASCII"))
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// Key service client that sends a token.
pub type KeyClient = KeyServiceClient<InterceptedService<Channel, BearerToken>>;

/// A running `tollgate-keyd`; killed on drop.
pub struct Keyd {
    child: Option<Child>,
    addr: SocketAddr,
    metrics_addr: SocketAddr,
    http_addr: SocketAddr,
    data_dir: PathBuf,
    log_path: PathBuf,
    /// Stopped with SIGSTOP (see [`Keyd::suspend`]).
    suspended: bool,
    /// Flags added to [`keyd_command`]'s, on every start (see [`Keyd::start_with_args`]).
    extra_args: Vec<String>,
    _temp: Option<TempDir>,
}

/// The database files of the store: the SQLite file and its WAL and shared-memory files.
const STORE_FILES: [&str; 3] = ["keys.db", "keys.db-wal", "keys.db-shm"];

/// A copy of the key service's database taken while the service was stopped (so the database and
/// its WAL are consistent), kept in a temporary directory removed on drop. See
/// [`Keyd::backup_store`] and [`Keyd::restore_store`].
pub struct StoreBackup {
    dir: TempDir,
}

impl Keyd {
    /// Starts the key service with its data (database, pepper, tokens) in `dir`, listening on a
    /// free loopback port, with [`ADMIN_TOKEN`] and [`DATAPLANE_TOKEN`].
    pub async fn start(dir: impl AsRef<Path>) -> Keyd {
        Self::start_with_args(dir, &[]).await
    }

    /// [`Keyd::start`] with more flags (e.g. `--store postgres://…` and a shared
    /// `--pepper-file` for replicas), given again on every restart.
    pub async fn start_with_args(dir: impl AsRef<Path>, args: &[String]) -> Keyd {
        let data_dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&data_dir).expect("create key service data dir");
        let log_path = data_dir.join("keyd.log");
        let extra_args = args.to_vec();
        // A port below the kernel's port-0 range, so that no other test's listener is given it
        // while a restart has it free; another one if it was taken meanwhile.
        let mut started = Err(String::new());
        for _ in 0..3 {
            let listen = format!("127.0.0.1:{}", stable_port());
            started = spawn(&data_dir, &log_path, &listen, &extra_args).await;
            if started.is_ok() {
                break;
            }
        }
        let (child, addr, metrics_addr, http_addr) = started.unwrap_or_else(|err| panic!("{err}"));
        Keyd {
            child: Some(child),
            addr,
            metrics_addr,
            http_addr,
            data_dir,
            log_path,
            suspended: false,
            extra_args,
            _temp: None,
        }
    }

    /// [`Keyd::start`] in a temporary directory removed on drop.
    pub async fn start_temp() -> Keyd {
        let temp = tempfile::Builder::new().prefix("tollgate-keyd-").tempdir().expect("tempdir");
        let mut keyd = Self::start(temp.path().join("data")).await;
        keyd._temp = Some(temp);
        keyd
    }

    /// The gRPC address (`127.0.0.1:PORT`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The metrics endpoint's address (`127.0.0.1:PORT`, a new port after a restart).
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// The dashboard's address (`127.0.0.1:PORT`, a new port after a restart).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Everything the service logged so far (stdout and stderr, across restarts).
    pub fn logs(&self) -> String {
        read_log(&self.log_path)
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The process id, while the service runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM, then waits for the exit (SIGKILL after 10 s). A suspended service is continued
    /// first so it can exit cleanly.
    pub async fn stop(&mut self) {
        self.resume();
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, Duration::from_secs(10)).await;
        }
    }

    /// SIGSTOP: the service hangs. Its sockets stay open and the kernel keeps accepting
    /// connections and bytes for it, but nothing is answered: callers wait for their timeouts,
    /// as with a service stuck in a long pause or a dead disk.
    pub fn suspend(&mut self) {
        if let Some(child) = &self.child {
            signal(child, Signal::STOP);
            self.suspended = true;
        }
    }

    /// SIGCONT after [`Keyd::suspend`]: the service answers again (requests that waited in its
    /// sockets are served, late).
    pub fn resume(&mut self) {
        if let Some(child) = self.child.as_ref().filter(|_| self.suspended) {
            signal(child, Signal::CONT);
        }
        self.suspended = false;
    }

    /// Copies the database while the service is stopped, then starts it again on the same port.
    pub async fn backup_store(&mut self) -> StoreBackup {
        self.stop().await;
        let dir = tempfile::Builder::new().prefix("tollgate-keyd-backup-").tempdir().expect("tempdir");
        for name in STORE_FILES {
            let from = self.data_dir.join(name);
            if from.exists() {
                std::fs::copy(&from, dir.path().join(name))
                    .unwrap_or_else(|e| panic!("back up {}: {e}", from.display()));
            }
        }
        assert!(dir.path().join(STORE_FILES[0]).exists(), "no database in {}", self.data_dir.display());
        self.start_again().await;
        StoreBackup { dir }
    }

    /// Stops the service, puts the backed-up database in place of the current one and starts
    /// the service again on the same port: what an operator does to restore a store from a
    /// backup.
    pub async fn restore_store(&mut self, backup: &StoreBackup) {
        self.stop().await;
        self.replace_store(backup);
        self.start_again().await;
    }

    /// Puts the backed-up database in place of the current one (its WAL and shared-memory files
    /// included, or removed when the backup had none). The service must be stopped
    /// ([`Keyd::stop`]); start it with [`Keyd::restart`].
    pub fn replace_store(&mut self, backup: &StoreBackup) {
        assert!(self.child.is_none(), "replace_store needs the key service stopped");
        for name in STORE_FILES {
            let from = backup.dir.path().join(name);
            let to = self.data_dir.join(name);
            if from.exists() {
                std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("restore {}: {e}", to.display()));
            } else if to.exists() {
                std::fs::remove_file(&to).unwrap_or_else(|e| panic!("remove {}: {e}", to.display()));
            }
        }
    }

    /// SIGKILL: the service vanishes without a goodbye, like a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill(&mut child);
        }
    }

    /// Stops the service (if running) and starts it again on the same port with the same data.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.start_again().await;
    }

    /// Starts the (stopped) service on its port again.
    async fn start_again(&mut self) {
        let listen = self.addr.to_string();
        let (child, addr, metrics_addr, http_addr) =
            spawn(&self.data_dir, &self.log_path, &listen, &self.extra_args)
                .await
                .unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(addr, self.addr, "key service came back on another address");
        self.child = Some(child);
        self.metrics_addr = metrics_addr;
        self.http_addr = http_addr;
    }

    /// A client authenticated with [`ADMIN_TOKEN`].
    pub async fn admin_client(&self) -> KeyClient {
        self.client(ADMIN_TOKEN).await
    }

    /// A client authenticated with [`DATAPLANE_TOKEN`].
    pub async fn dataplane_client(&self) -> KeyClient {
        self.client(DATAPLANE_TOKEN).await
    }

    /// A client sending `token`.
    pub async fn client(&self, token: &str) -> KeyClient {
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .expect("endpoint")
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connect to key service at {}: {e}", self.addr));
        KeyServiceClient::with_interceptor(channel, BearerToken::new(token))
    }

    /// Creates a key for `consumer` (creating the consumer too) with `scopes`; returns
    /// `(key id, secret)`.
    pub async fn create_key(&self, consumer: &str, scopes: &[&str]) -> (String, String) {
        let scopes = scopes.iter().map(|s| (*s).to_owned()).collect();
        let response = self.create(consumer, CreateKeyRequest { scopes, ..Default::default() }).await;
        assert!(!response.secret.is_empty(), "CreateKey returned no secret");
        (key_id_of(&response), response.secret)
    }

    /// Creates an HMAC-SHA256 signing key for `consumer` (created if new); returns its id and the
    /// secret, which the key service shows only now.
    pub async fn create_hmac_key(&self, consumer: &str) -> (String, Vec<u8>) {
        let algorithm = tollgate_proto::v1::SigningAlgorithm::HmacSha256 as i32;
        let response = self
            .create(consumer, CreateKeyRequest { signing_algorithm: algorithm, ..Default::default() })
            .await;
        assert!(!response.signing_secret.is_empty(), "CreateKey returned no signing secret");
        (key_id_of(&response), response.signing_secret)
    }

    /// CreateKey for `consumer` (created if new) with the rest of `request`; panics when refused.
    async fn create(&self, consumer: &str, request: CreateKeyRequest) -> CreateKeyResponse {
        let request = CreateKeyRequest { consumer: consumer.to_owned(), create_consumer: true, ..request };
        self.admin_client()
            .await
            .create_key(request)
            .await
            .unwrap_or_else(|status| panic!("CreateKey for {consumer}: {status}"))
            .into_inner()
    }

    /// Revokes a key by id.
    pub async fn revoke_key(&self, id: &str) {
        self.admin_client()
            .await
            .revoke_key(RevokeKeyRequest { id: id.to_owned(), reason: "e2e test".to_owned() })
            .await
            .unwrap_or_else(|status| panic!("RevokeKey {id}: {status}"));
    }

    /// The smallest key-auth filter config pointing at this service through Envoy's
    /// `tollgate_keyd` cluster (add fields to taste).
    pub fn key_auth_config(&self) -> Value {
        json!({"key_service": {"cluster": KEYD_CLUSTER, "token": DATAPLANE_TOKEN}})
    }
}

impl Drop for Keyd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- tollgate-keyd log (last lines) ---\n{}", tail(&self.logs(), 40));
        }
        self.kill();
    }
}

/// The key service's command line as the tests run it: listening on `listen`, its data in
/// `data_dir`, the test tokens, text logs, and none of the settings a developer's environment
/// may hold. Add the flags a test needs.
pub fn keyd_command(listen: &str, data_dir: &Path) -> Command {
    let mut command = Command::new(binary("tollgate-keyd"));
    command
        .arg("--listen")
        .arg(listen)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--admin-token")
        .arg(ADMIN_TOKEN)
        .arg("--dataplane-token")
        .arg(DATAPLANE_TOKEN)
        .arg("--viewer-token")
        .arg(VIEWER_TOKEN)
        .arg("--log-format")
        .arg("text")
        .env_remove("TOLLGATE_ADMIN_TOKEN")
        .env_remove("TOLLGATE_DATAPLANE_TOKEN")
        .env_remove("TOLLGATE_KEYD_LISTEN")
        .env_remove("TOLLGATE_KEYD_METRICS_LISTEN")
        .env_remove("TOLLGATE_VIEWER_TOKEN")
        // The dashboard on a free port unless a test gives --http-listen: tests run side by side.
        .env("TOLLGATE_KEYD_HTTP_LISTEN", "127.0.0.1:0")
        .env_remove("TOLLGATE_DATA_DIR")
        .env_remove("TOLLGATE_KEYD_STORE")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    command
}

/// The id of a created key; panics when the answer has none.
fn key_id_of(response: &CreateKeyResponse) -> String {
    let id = response.key.as_ref().map(|k| k.id.clone()).unwrap_or_default();
    assert!(!id.is_empty(), "CreateKey returned no key id");
    id
}

/// Starts the binary; returns it with its gRPC, metrics and dashboard addresses.
async fn spawn(
    data_dir: &Path,
    log_path: &Path,
    listen: &str,
    extra_args: &[String],
) -> Result<(Child, SocketAddr, SocketAddr, SocketAddr), String> {
    let bin = binary("tollgate-keyd");
    let addr_file = data_dir.join("keyd.addr");
    let metrics_addr_file = data_dir.join("keyd.metrics.addr");
    let http_addr_file = data_dir.join("keyd.http.addr");
    let mut last_error = String::new();
    // Restarting on the same port can race with the old socket's teardown: retry a few times.
    for _ in 0..5 {
        let _ = std::fs::remove_file(&addr_file);
        let _ = std::fs::remove_file(&metrics_addr_file);
        let _ = std::fs::remove_file(&http_addr_file);
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(log_path).expect("open keyd log");
        let mut child = keyd_command(listen, data_dir)
            .arg("--addr-file")
            .arg(&addr_file)
            .arg("--metrics-listen")
            .arg("127.0.0.1:0")
            .arg("--metrics-addr-file")
            .arg(&metrics_addr_file)
            .arg("--http-addr-file")
            .arg(&http_addr_file)
            .args(extra_args)
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        // The metrics and dashboard addresses are written before the gRPC one.
        let ready = wait_ready(&mut child, &addr_file).await.and_then(|addr| {
            let read = |path: &Path, what: &str| {
                let written = std::fs::read_to_string(path).unwrap_or_default();
                written.trim().parse::<SocketAddr>().map_err(|e| format!("{what} address: {e}"))
            };
            Ok((addr, read(&metrics_addr_file, "metrics")?, read(&http_addr_file, "dashboard")?))
        });
        match ready {
            Ok((addr, metrics_addr, http_addr)) => return Ok((child, addr, metrics_addr, http_addr)),
            Err(err) => {
                kill(&mut child);
                last_error = err;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    Err(format!("tollgate-keyd did not start: {last_error}\n--- log ---\n{}", tail(&read_log(log_path), 40)))
}

async fn wait_ready(child: &mut Child, addr_file: &Path) -> Result<SocketAddr, String> {
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited with {status}"));
        }
        let written = std::fs::read_to_string(addr_file).unwrap_or_default();
        if let Ok(addr) = written.trim().parse::<SocketAddr>()
            && tokio::net::TcpStream::connect(addr).await.is_ok()
        {
            return Ok(addr);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("not listening after {START_TIMEOUT:?}"));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
