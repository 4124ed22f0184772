//! Server assembly: configuration files, the gRPC router and its lifecycle.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tollgate_proto::v1::key_service_server::KeyServiceServer;
use tonic::transport::Server;
use tonic_health::ServingStatus;

use crate::auth::{Authenticated, Tokens};
use crate::clock::{Clock, SystemClock};
use crate::dashboard;
use crate::error::{Error, Result};
use crate::feed::{self, Feed};
use crate::files;
use crate::master::{self, MasterKeys};
use crate::metrics::{self, Exporter, Metrics};
use crate::secrets::{Pepper, Token};
use crate::service::{KeyServiceImpl, UsageTracker};
use crate::store::{self, Store, StoreLocation};
use crate::webhooks;

/// Where the service keeps its files, and tokens given directly. `None` means the default file
/// inside `data_dir`.
#[derive(Clone, Default)]
pub struct Options {
    pub data_dir: PathBuf,
    pub db: Option<PathBuf>,
    /// `sqlite:PATH` or a `postgres://` URL; overrides `db`.
    pub store: Option<String>,
    pub pepper_file: Option<PathBuf>,
    pub admin_token: Option<String>,
    pub admin_token_file: Option<PathBuf>,
    pub dataplane_token: Option<String>,
    pub dataplane_token_file: Option<PathBuf>,
    /// The dashboard's read-only token (overrides `viewer_token_file`).
    pub viewer_token: Option<String>,
    pub viewer_token_file: Option<PathBuf>,
    /// Master keys in the key-file format (overrides `master_key_file`).
    pub master_keys: Option<String>,
    pub master_key_file: Option<PathBuf>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redact = |token: &Option<String>| token.as_ref().map(|_| "<redacted>");
        f.debug_struct("Options")
            .field("data_dir", &self.data_dir)
            .field("db", &self.db)
            .field("store", &self.store.as_deref().map(store::migrate::redact_url))
            .field("pepper_file", &self.pepper_file)
            .field("admin_token", &redact(&self.admin_token))
            .field("admin_token_file", &self.admin_token_file)
            .field("dataplane_token", &redact(&self.dataplane_token))
            .field("dataplane_token_file", &self.dataplane_token_file)
            .field("viewer_token", &redact(&self.viewer_token))
            .field("viewer_token_file", &self.viewer_token_file)
            .field("master_keys", &redact(&self.master_keys))
            .field("master_key_file", &self.master_key_file)
            .finish()
    }
}

impl Options {
    /// Everything in `data_dir` under its default name.
    pub fn in_dir(data_dir: impl Into<PathBuf>) -> Self {
        Self { data_dir: data_dir.into(), ..Self::default() }
    }

    /// The database path.
    pub fn db_path(&self) -> PathBuf {
        self.db.clone().unwrap_or_else(|| self.data_dir.join("keys.db"))
    }

    /// Where the store is: `store` when given, else the SQLite database at [`Options::db_path`].
    pub fn store_location(&self) -> Result<StoreLocation> {
        match &self.store {
            Some(text) => StoreLocation::parse("store", text),
            None => Ok(StoreLocation::Sqlite(self.db_path())),
        }
    }

    /// The pepper file path.
    pub fn pepper_path(&self) -> PathBuf {
        self.pepper_file.clone().unwrap_or_else(|| self.data_dir.join("pepper"))
    }

    /// The admin token file path.
    pub fn admin_token_path(&self) -> PathBuf {
        self.admin_token_file.clone().unwrap_or_else(|| self.data_dir.join("admin.token"))
    }

    /// The dashboard viewer token file path.
    pub fn viewer_token_path(&self) -> PathBuf {
        self.viewer_token_file.clone().unwrap_or_else(|| self.data_dir.join("viewer.token"))
    }

    /// The master key file path.
    pub fn master_key_path(&self) -> PathBuf {
        self.master_key_file.clone().unwrap_or_else(|| self.data_dir.join("master.key"))
    }

    /// The master keys: given directly, or from the key file (generated when absent).
    pub fn load_master_keys(&self) -> Result<MasterKeys> {
        match &self.master_keys {
            Some(text) => MasterKeys::parse(text),
            None => MasterKeys::load_or_create(&self.master_key_path()),
        }
    }

    /// The data-plane token file path.
    pub fn dataplane_token_path(&self) -> PathBuf {
        self.dataplane_token_file.clone().unwrap_or_else(|| self.data_dir.join("dataplane.token"))
    }
}

/// Everything [`serve`] needs, with secrets loaded.
#[derive(Debug, Clone)]
pub struct Config {
    /// The SQLite database, when `store` is SQLite.
    pub db_path: PathBuf,
    /// Where the store is.
    pub store: StoreLocation,
    pub pepper: Pepper,
    pub admin_token: Token,
    pub dataplane_token: Token,
    /// The dashboard's read-only role.
    pub viewer_token: Token,
    /// Encrypts HMAC signing secrets at rest.
    pub master_keys: MasterKeys,
    /// How often last-use times are written.
    pub usage_flush_interval: Duration,
    /// How often the change feed polls the store without a local wake-up (other writers: other
    /// replicas on PostgreSQL).
    pub feed_poll_interval: Duration,
    /// After a shutdown signal, how long open connections get to finish before the server stops.
    pub drain_timeout: Duration,
    /// Where the service reads the time (the system clock unless a test sets another).
    pub clock: Arc<dyn Clock>,
    /// Webhook delivery (see [`crate::webhooks::deliver`]).
    pub webhooks: webhooks::deliver::Settings,
    /// How often the lifecycle scheduler runs (see [`crate::lifecycle::scheduler`]).
    pub lifecycle_interval: Duration,
}

impl Config {
    /// Creates the data directory (0700; an existing one open to others gets a warning) and loads
    /// (or generates, mode 0600) the pepper and token files.
    pub fn prepare(options: &Options) -> Result<Self> {
        create_private_dir(&options.data_dir)?;
        files::warn_if_open_dir(&options.data_dir);
        let store = options.store_location()?;
        let db_path = match &store {
            StoreLocation::Sqlite(path) => path.clone(),
            StoreLocation::Postgres(_) => options.db_path(),
        };
        if let StoreLocation::Sqlite(db_path) = &store
            && let Some(parent) = db_path.parent().filter(|p| !p.as_os_str().is_empty())
        {
            create_private_dir(parent)?;
            if parent != options.data_dir {
                files::warn_if_open_dir(parent);
            }
        }
        let pepper = Pepper::load_or_create(&options.pepper_path())?;
        let admin_token = match &options.admin_token {
            Some(token) => {
                Token::new(token.clone()).map_err(|_| Error::invalid("admin-token", "must not be empty"))?
            }
            None => Token::load_or_create(&options.admin_token_path(), "tga_")?,
        };
        let dataplane_token = match &options.dataplane_token {
            Some(token) => Token::new(token.clone())
                .map_err(|_| Error::invalid("dataplane-token", "must not be empty"))?,
            None => Token::load_or_create(&options.dataplane_token_path(), "tgd_")?,
        };
        let viewer_token = match &options.viewer_token {
            Some(token) => {
                Token::new(token.clone()).map_err(|_| Error::invalid("viewer-token", "must not be empty"))?
            }
            None => Token::load_or_create(&options.viewer_token_path(), "tgv_")?,
        };
        let master_keys = options.load_master_keys()?;
        if admin_token == dataplane_token {
            return Err(Error::invalid("dataplane-token", "must differ from the admin token"));
        }
        if viewer_token == admin_token || viewer_token == dataplane_token {
            return Err(Error::invalid("viewer-token", "must differ from the admin and data-plane tokens"));
        }
        // Other replicas write to a PostgreSQL store too: poll often enough that a revocation
        // through any replica reaches gateways within a second or so.
        let feed_poll_interval = match &store {
            StoreLocation::Sqlite(_) => Duration::from_secs(5),
            StoreLocation::Postgres(_) => FEED_POLL_SHARED,
        };
        Ok(Self {
            db_path,
            store,
            pepper,
            admin_token,
            dataplane_token,
            viewer_token,
            master_keys,
            usage_flush_interval: Duration::from_secs(30),
            feed_poll_interval,
            drain_timeout: Duration::from_secs(10),
            clock: Arc::new(SystemClock),
            webhooks: webhooks::deliver::Settings::default(),
            lifecycle_interval: Duration::from_secs(60),
        })
    }
}

/// How often a replica on a shared (PostgreSQL) store reads the feed for other replicas' writes.
pub const FEED_POLL_SHARED: Duration = Duration::from_millis(250);

fn create_private_dir(dir: &Path) -> Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|e| Error::internal(&format!("creating {}", dir.display()), e))
}

/// Serves the key service, health and reflection on `listener` until `shutdown` resolves, then
/// ends the change-feed streams, drains connections and writes pending last-use times.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    serve_with_metrics(config, listener, None, shutdown).await
}

/// [`serve`], and the Prometheus metrics endpoint on `metrics_listener` when there is one (see
/// [`crate::metrics`]). The metrics are collected either way.
pub async fn serve_with_metrics(
    config: Config,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    serve_all(config, listener, metrics_listener, None, shutdown).await
}

/// [`serve_with_metrics`], and the web dashboard on `dashboard_listener` when there is one (see
/// [`crate::dashboard`]).
pub async fn serve_all(
    config: Config,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    dashboard_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let metrics = Metrics::new();
    let location = config.store.clone();
    let store: Arc<dyn Store> = metrics.timed_store(
        tokio::task::spawn_blocking(move || store::open(&location))
            .await
            .map_err(|e| Error::internal("opening the database", e))??,
    );
    // Secrets still under an older master-key version are re-encrypted under the current one.
    let resealed = {
        let store = Arc::clone(&store);
        let keys = config.master_keys.clone();
        tokio::task::spawn_blocking(move || master::reseal_all(store.as_ref(), &keys))
            .await
            .map_err(|e| Error::internal("re-encrypting signing secrets", e))??
    };
    if resealed > 0 {
        tracing::info!(
            count = resealed,
            version = config.master_keys.current_version(),
            "re-encrypted signing secrets"
        );
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let usage = Arc::new(UsageTracker::default());
    let (feed, feed_reader) =
        Feed::start(Arc::clone(&store), stop_rx.clone(), config.feed_poll_interval, feed::TAIL_CAPACITY)
            .await?;
    // Another replica's commit wakes the feed reader and webhook delivery as this process's do.
    store.listen_for_commits(Arc::new(feed.waker()));
    let exporter =
        Exporter::new(metrics.clone(), Arc::clone(&store), feed.clone(), Arc::clone(&config.clock));
    let scheduler = crate::lifecycle::scheduler::Scheduler::new(
        Arc::clone(&store),
        Arc::clone(&config.clock),
        Arc::new(config.pepper.clone()),
        config.master_keys.clone(),
        feed.clone(),
        config.lifecycle_interval,
        metrics.clone(),
    )?;
    let lifecycle = tokio::spawn(scheduler.run(stop_rx.clone()));
    let commits = feed.commits();
    let service = KeyServiceImpl::new(
        Arc::clone(&store),
        config.pepper,
        Arc::clone(&usage),
        feed,
        Arc::clone(&config.clock),
    )
    .with_master_keys(config.master_keys.clone())
    .with_webhooks_allow_private(config.webhooks.allow_private);
    let deliverer = Arc::new(webhooks::deliver::Deliverer::new(
        Arc::clone(&store),
        config.master_keys.clone(),
        Arc::clone(&config.clock),
        config.webhooks.clone(),
    ));
    let delivery = if config.webhooks.concurrency > 0 {
        Some(tokio::spawn(deliverer.run(stop_rx.clone(), commits)))
    } else {
        tracing::info!("webhook delivery off on this replica (--webhooks-concurrency 0)");
        None
    };
    let tokens = Tokens::new(&config.admin_token, &config.dataplane_token);
    let dashboard_server = match dashboard_listener {
        Some(dashboard_listener) => {
            let local = dashboard_listener
                .local_addr()
                .map_err(|e| Error::internal("dashboard listener address", e))?;
            let state = dashboard::State::new(
                service.clone(),
                Arc::clone(&store),
                Arc::clone(&config.clock),
                &config.admin_token,
                &config.viewer_token,
            )?;
            tracing::info!(addr = %local, "dashboard listening");
            Some(tokio::spawn(dashboard::serve(dashboard_listener, state, stop_rx.clone())))
        }
        None => {
            tracing::info!("dashboard off");
            None
        }
    };

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_service_status(tollgate_proto::KEY_SERVICE, ServingStatus::Serving).await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tollgate_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::internal("reflection", e))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tollgate_proto::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| Error::internal("reflection", e))?;

    let flusher = tokio::spawn({
        let store = Arc::clone(&store);
        let usage = Arc::clone(&usage);
        let mut stop = stop_rx.clone();
        let interval = config.usage_flush_interval;
        async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
                if let Err(err) = usage.flush(&store).await {
                    tracing::warn!(error = %err, "could not record key usage");
                }
            }
        }
    });

    let metrics_server = match metrics_listener {
        Some(metrics_listener) => {
            let local =
                metrics_listener.local_addr().map_err(|e| Error::internal("metrics listener address", e))?;
            tracing::info!(addr = %local, path = metrics::PATH, "metrics listening");
            Some(tokio::spawn(metrics::serve_http(metrics_listener, Arc::new(exporter), stop_rx.clone())))
        }
        None => {
            tracing::info!("metrics endpoint off");
            None
        }
    };
    let local = listener.local_addr().map_err(|e| Error::internal("listener address", e))?;
    tracing::info!(addr = %local, "key service listening");
    let shutdown = {
        let health_reporter = health_reporter.clone();
        async move {
            shutdown.await;
            tracing::info!("shutting down");
            health_reporter.set_service_status(tollgate_proto::KEY_SERVICE, ServingStatus::NotServing).await;
            let _ = stop_tx.send(true);
        }
    };
    let server = Server::builder()
        .layer(metrics.grpc_layer())
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(Authenticated::new(KeyServiceServer::new(service), tokens))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown);
    // A client that never acknowledges the shutdown must not keep the process alive.
    let drain_deadline = {
        let mut stopped = stop_rx.clone();
        let timeout = config.drain_timeout;
        async move {
            let _ = stopped.wait_for(|s| *s).await;
            tokio::time::sleep(timeout).await;
        }
    };
    let result = tokio::select! {
        result = server => result,
        () = drain_deadline => {
            tracing::warn!("connections did not close in time; stopping anyway");
            Ok(())
        }
    };
    flusher.abort();
    feed_reader.abort();
    // An attempt cut short here is sent again when its lease ends.
    if let Some(delivery) = delivery {
        delivery.abort();
    }
    lifecycle.abort();
    if let Some(metrics_server) = metrics_server {
        metrics_server.abort();
    }
    if let Some(dashboard_server) = dashboard_server {
        dashboard_server.abort();
    }
    if let Err(err) = usage.flush(&store).await {
        tracing::warn!(error = %err, "could not record key usage");
    }
    drop(health_reporter);
    result.map_err(|e| Error::internal("server", e))?;
    tracing::info!("key service stopped");
    Ok(())
}
