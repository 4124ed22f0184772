//! `tollgate-ratelimitd`: Envoy's rate-limit service API over limits in memory or in Redis.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tollgate_daemon::{LogFormat, init_logging, shutdown_signal, write_addr_file};
use tollgate_ratelimitd::config::Domain;
use tollgate_ratelimitd::metrics::Metrics;
use tollgate_ratelimitd::redis::RedisStore;
use tollgate_ratelimitd::store::{MemoryStore, Store};
use tollgate_ratelimitd::{Limiter, serve};

/// Tollgate rate-limit service: Envoy's rate-limit service API (envoy.service.ratelimit.v3), with
/// limits in memory (one instance) or in Redis (any number of instances).
#[derive(Parser)]
#[command(name = "tollgate-ratelimitd", version, about)]
struct Cli {
    /// gRPC address to listen on (port 0 picks a free port; see --addr-file).
    #[arg(long, env = "TOLLGATE_RATELIMITD_LISTEN", default_value = "127.0.0.1:7071")]
    listen: String,
    /// A domain's limits (YAML, envoyproxy/ratelimit's shape); repeat for more domains.
    #[arg(long = "config", required = true)]
    configs: Vec<PathBuf>,
    /// Redis holding the buckets (`redis://host:port/db`), shared by every instance. Without it
    /// the buckets live in this process's memory: exact for one instance only.
    #[arg(long, env = "TOLLGATE_RATELIMITD_REDIS")]
    redis: Option<String>,
    /// Longest wait for one Redis call, connecting included, in milliseconds.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    redis_timeout_ms: u64,
    /// Most buckets that are not full kept in memory (without --redis).
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    memory_buckets: u64,
    /// After binding, write the bound address (e.g. 127.0.0.1:54321) to this file.
    #[arg(long)]
    addr_file: Option<PathBuf>,
    /// Address of the Prometheus endpoint (`GET /metrics`), or `off`.
    #[arg(long, env = "TOLLGATE_RATELIMITD_METRICS_LISTEN", default_value = "127.0.0.1:9103")]
    metrics_listen: String,
    /// After binding, write the bound metrics address to this file (before --addr-file).
    #[arg(long)]
    metrics_addr_file: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value = "json")]
    log_format: LogFormat,
}

const METRICS_OFF: &str = "off";

fn load_domains(paths: &[PathBuf]) -> Result<Vec<Domain>, String> {
    paths
        .iter()
        .map(|path| {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("--config {}: {e}", path.display()))?;
            Domain::from_yaml(&text).map_err(|e| format!("invalid config {}: {e}", path.display()))
        })
        .collect()
}

async fn run(cli: Cli) -> Result<(), String> {
    let domains = load_domains(&cli.configs)?;
    let store = match &cli.redis {
        Some(url) => Store::Redis(RedisStore::new(url, Duration::from_millis(cli.redis_timeout_ms))?),
        None => Store::Memory(MemoryStore::new(usize::try_from(cli.memory_buckets).unwrap_or(usize::MAX))),
    };
    let limiter = Arc::new(Limiter::new(domains, store, Arc::new(Metrics::new()))?);

    let metrics_listen = cli.metrics_listen.trim();
    let metrics_listener = if metrics_listen.eq_ignore_ascii_case(METRICS_OFF) {
        if cli.metrics_addr_file.is_some() {
            return Err(
                "--metrics-addr-file: there is no metrics address to write: --metrics-listen is off".into()
            );
        }
        None
    } else {
        Some(
            tokio::net::TcpListener::bind(metrics_listen)
                .await
                .map_err(|e| format!("--metrics-listen: cannot listen on {metrics_listen}: {e}"))?,
        )
    };
    let listener = tokio::net::TcpListener::bind(&cli.listen)
        .await
        .map_err(|e| format!("--listen: cannot listen on {}: {e}", cli.listen))?;
    if let (Some(path), Some(metrics_listener)) = (&cli.metrics_addr_file, &metrics_listener) {
        let addr = metrics_listener.local_addr().map_err(|e| e.to_string())?;
        write_addr_file(path, &addr.to_string())?;
    }
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    if let Some(path) = &cli.addr_file {
        write_addr_file(path, &addr.to_string())?;
    }
    tracing::info!(
        %addr,
        store = if cli.redis.is_some() { "redis" } else { "memory" },
        domains = cli.configs.len(),
        "tollgate-ratelimitd listening"
    );
    serve(limiter, listener, metrics_listener, shutdown_signal()).await
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "tollgate-ratelimitd failed");
            eprintln!("tollgate-ratelimitd: {err}");
            ExitCode::FAILURE
        }
    }
}
