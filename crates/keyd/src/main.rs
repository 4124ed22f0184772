//! `tollgate-keyd`: the Tollgate key service.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tollgate_daemon::{LogFormat, init_logging, shutdown_signal, write_addr_file};
use tollgate_keyd::master::{MasterKeys, reseal_all};
use tollgate_keyd::store::{self, migrate};
use tollgate_keyd::{Config, Options, StoreLocation};

/// Tollgate key service: API keys, consumers, rotation, revocation and a change feed over gRPC.
#[derive(Parser)]
#[command(name = "tollgate-keyd", version, about)]
struct Cli {
    /// Address to listen on (port 0 picks a free port; see --addr-file).
    #[arg(long, env = "TOLLGATE_KEYD_LISTEN", default_value = "127.0.0.1:7070")]
    listen: String,
    /// Directory for the database, pepper and token files; created if missing.
    #[arg(long, env = "TOLLGATE_DATA_DIR", default_value = ".run/keyd")]
    data_dir: PathBuf,
    /// SQLite database [default: <data-dir>/keys.db].
    #[arg(long, conflicts_with = "store")]
    db: Option<PathBuf>,
    /// The store: `sqlite:PATH`, or `postgres://user[:password]@host[:port]/database` for several
    /// replicas on one database [default: SQLite at --db].
    #[arg(long, env = "TOLLGATE_KEYD_STORE", hide_env_values = true)]
    store: Option<String>,
    /// File with the 32-byte pepper, generated when absent [default: <data-dir>/pepper].
    #[arg(long)]
    pepper_file: Option<PathBuf>,
    /// Admin token (overrides --admin-token-file).
    #[arg(long, env = "TOLLGATE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Admin token file, generated when absent [default: <data-dir>/admin.token].
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// Data-plane token (overrides --dataplane-token-file).
    #[arg(long, env = "TOLLGATE_DATAPLANE_TOKEN", hide_env_values = true)]
    dataplane_token: Option<String>,
    /// Data-plane token file, generated when absent [default: <data-dir>/dataplane.token].
    #[arg(long)]
    dataplane_token_file: Option<PathBuf>,
    /// The dashboard's read-only viewer token (overrides --viewer-token-file).
    #[arg(long, env = "TOLLGATE_VIEWER_TOKEN", hide_env_values = true)]
    viewer_token: Option<String>,
    /// Viewer token file, generated when absent [default: <data-dir>/viewer.token].
    #[arg(long)]
    viewer_token_file: Option<PathBuf>,
    /// Master keys for signing secrets, `<version>:<hex>` separated by commas or newlines
    /// (overrides --master-key-file).
    #[arg(long, env = "TOLLGATE_MASTER_KEYS", hide_env_values = true)]
    master_keys: Option<String>,
    /// Master key file, generated when absent [default: <data-dir>/master.key].
    #[arg(long, env = "TOLLGATE_MASTER_KEY_FILE")]
    master_key_file: Option<PathBuf>,
    /// After binding, write the bound address (e.g. 127.0.0.1:54321) to this file.
    #[arg(long)]
    addr_file: Option<PathBuf>,
    /// Address of the Prometheus endpoint (`GET /metrics`, OpenMetrics text), or `off` (port 0
    /// picks a free port; see --metrics-addr-file).
    #[arg(long, env = "TOLLGATE_KEYD_METRICS_LISTEN", default_value = "127.0.0.1:9102")]
    metrics_listen: String,
    /// After binding, write the bound metrics address to this file (before --addr-file is
    /// written).
    #[arg(long)]
    metrics_addr_file: Option<PathBuf>,
    /// Address of the web dashboard (HTTP), or `off` (port 0 picks a free port; see
    /// --http-addr-file). Log in with the admin or the viewer token.
    #[arg(long, env = "TOLLGATE_KEYD_HTTP_LISTEN", default_value = "127.0.0.1:9180")]
    http_listen: String,
    /// After binding, write the bound dashboard address to this file (before --addr-file is
    /// written).
    #[arg(long)]
    http_addr_file: Option<PathBuf>,
    /// Let webhook endpoints point at loopback, private, link-local and metadata addresses
    /// (refused by default).
    #[arg(long, env = "TOLLGATE_WEBHOOKS_ALLOW_PRIVATE")]
    webhooks_allow_private: bool,
    /// How long one webhook delivery attempt may take, in seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=120))]
    webhooks_timeout: u64,
    /// Most webhook delivery attempts at once; 0: this replica delivers none (others sharing its
    /// PostgreSQL store deliver what it writes).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(0..=256))]
    webhooks_concurrency: u64,
    /// For tests only: how often webhook delivery looks for due messages when nothing wakes it.
    #[arg(long, hide = true, default_value = "1s", value_parser = parse_interval)]
    webhooks_poll_interval: std::time::Duration,
    /// PEM bundle of the certificate authorities https webhook endpoints are verified against.
    #[arg(long, default_value = tollgate_keyd::webhooks::deliver::DEFAULT_CA_FILE)]
    webhooks_ca_file: PathBuf,
    /// How often the lifecycle scheduler looks for keys to notify, rotate or expire: seconds, or
    /// a duration like `500ms`, `30s` or `5m`.
    #[arg(long, default_value = "60s", value_parser = parse_interval)]
    lifecycle_interval: std::time::Duration,
    /// For tests only: a file holding a number of seconds added to the system clock (read again
    /// every 100 ms), to see time-driven behaviour without waiting for it.
    #[arg(long, hide = true)]
    clock_offset_file: Option<PathBuf>,
    /// Disable a webhook endpoint whose attempts have all failed for this long (seconds, or
    /// e.g. 5d, 12h, 1h30m), and tell the other endpoints (webhook.disabled).
    #[arg(long, default_value = "5d", value_parser = positive_secs)]
    webhooks_disable_after: u64,
    /// Keep delivered and given-up webhook messages, and the delivery log, this long (seconds,
    /// or e.g. 7d): older ones are deleted, and cannot be replayed.
    #[arg(long, default_value = "7d", value_parser = positive_secs)]
    webhooks_retention: u64,
    /// Log format.
    #[arg(long, value_enum, default_value = "json")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the audit log as JSON lines and exit.
    Audit {
        /// Only entries with a sequence number above this.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// At most this many entries.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Add a new master-key version to the master key file, re-encrypt every signing and
    /// webhook secret under it and exit. Restart a running service afterwards so it loads the new version.
    RotateMasterKey,
    /// Copy a SQLite store into an empty PostgreSQL store in one transaction, check the row
    /// count of every table, print the counts and exit.
    Migrate {
        /// The store to copy: `sqlite:PATH`.
        #[arg(long)]
        from: String,
        /// The empty store to copy into: a `postgres://` URL.
        #[arg(long)]
        to: String,
    },
}

/// A scheduler interval: whole seconds, or a duration (`250ms`, `30s`, `5m`), from 100 ms to 1 hour.
fn parse_interval(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let interval = match text.parse::<u64>() {
        Ok(secs) => std::time::Duration::from_secs(secs),
        Err(_) => tollgate_core::duration::parse_duration(text)?,
    };
    if interval < std::time::Duration::from_millis(100) || interval > std::time::Duration::from_secs(3_600) {
        return Err("must be between 100ms and 1h".to_owned());
    }
    Ok(interval)
}

/// A duration of at least a second: seconds (`86400`), or units (`5d`, `12h`, `1h30m`).
fn positive_secs(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let secs = if !trimmed.is_empty() && trimmed.chars().all(|c| c.is_ascii_digit()) {
        trimmed.parse::<u64>().map_err(|_| format!("duration {text:?} is too long"))?
    } else {
        tollgate_core::duration::compound_secs(trimmed)
            .map_err(|_| format!("invalid duration {text:?}: expected seconds or e.g. 90s, 12h, 5d, 1h30m"))?
    };
    if secs == 0 {
        return Err(format!("duration {text:?} must be at least 1s"));
    }
    // Kept as i64 Unix-time arithmetic later on.
    if secs > u64::try_from(i64::MAX / 2).unwrap_or(u64::MAX) {
        return Err(format!("duration {text:?} is too long"));
    }
    Ok(secs)
}

/// The `--metrics-listen` (and `--http-listen`) value that turns the endpoint off.
const METRICS_OFF: &str = "off";

impl Cli {
    /// Where to serve metrics; `None` when they are off. A metrics address file needs an
    /// endpoint.
    fn metrics_listen(&self) -> Result<Option<&str>, String> {
        let listen = self.metrics_listen.trim();
        if !listen.eq_ignore_ascii_case(METRICS_OFF) {
            return Ok(Some(listen));
        }
        if self.metrics_addr_file.is_some() {
            return Err("--metrics-addr-file: there is no metrics address to write: --metrics-listen is off"
                .to_owned());
        }
        Ok(None)
    }

    /// Where to serve the dashboard; `None` when it is off. An address file needs a listener.
    fn http_listen(&self) -> Result<Option<&str>, String> {
        let listen = self.http_listen.trim();
        if !listen.eq_ignore_ascii_case(METRICS_OFF) {
            return Ok(Some(listen));
        }
        if self.http_addr_file.is_some() {
            return Err(
                "--http-addr-file: there is no dashboard address to write: --http-listen is off".to_owned()
            );
        }
        Ok(None)
    }

    fn options(&self) -> Options {
        Options {
            data_dir: self.data_dir.clone(),
            db: self.db.clone(),
            store: self.store.clone(),
            pepper_file: self.pepper_file.clone(),
            admin_token: self.admin_token.clone(),
            admin_token_file: self.admin_token_file.clone(),
            dataplane_token: self.dataplane_token.clone(),
            dataplane_token_file: self.dataplane_token_file.clone(),
            viewer_token: self.viewer_token.clone(),
            viewer_token_file: self.viewer_token_file.clone(),
            master_keys: self.master_keys.clone(),
            master_key_file: self.master_key_file.clone(),
        }
    }
}

fn open_store(options: &Options) -> Result<std::sync::Arc<dyn tollgate_keyd::Store>, String> {
    let location = options.store_location().map_err(|e| e.to_string())?;
    store::open(&location).map_err(|e| e.to_string())
}

fn run_migrate(from: &str, to: &str) -> Result<(), String> {
    let StoreLocation::Sqlite(from) = StoreLocation::parse("from", from).map_err(|e| e.to_string())? else {
        return Err("--from: must be sqlite:PATH".to_owned());
    };
    let StoreLocation::Postgres(to) = StoreLocation::parse("to", to).map_err(|e| e.to_string())? else {
        return Err("--to: must be a postgres:// URL".to_owned());
    };
    let counts = migrate::sqlite_to_postgres(&from, &to).map_err(|e| e.to_string())?;
    for (table, count) in &counts {
        println!("{table}\t{count}");
    }
    tracing::info!(from = %from.display(), to = %migrate::redact_url(&to), "copied the store");
    Ok(())
}

async fn run(cli: Cli) -> Result<(), String> {
    let options = cli.options();
    if let Some(Command::Migrate { from, to }) = &cli.command {
        return run_migrate(from, to);
    }
    if let Some(Command::Audit { after, limit }) = cli.command {
        let store = open_store(&options)?;
        for entry in store.list_audit(after, limit).map_err(|e| e.to_string())? {
            let line = serde_json::to_string(&entry).map_err(|e| e.to_string())?;
            println!("{line}");
        }
        return Ok(());
    }
    if let Some(Command::RotateMasterKey) = cli.command {
        if options.master_keys.is_some() {
            return Err("rotate-master-key works on the master key file; unset --master-keys".to_owned());
        }
        let path = options.master_key_path();
        let current = MasterKeys::load_or_create(&path).map_err(|e| e.to_string())?;
        let next = current.with_new_version().map_err(|e| e.to_string())?;
        let store = open_store(&options)?;
        // Write the new key first: if re-encryption stops halfway, both versions still decrypt.
        next.store(&path).map_err(|e| e.to_string())?;
        let count = reseal_all(store.as_ref(), &next).map_err(|e| e.to_string())?;
        tracing::info!(version = next.current_version(), resealed = count, "rotated the master key");
        println!(
            "master key version {} is current; re-encrypted {count} signing and webhook secrets",
            next.current_version()
        );
        return Ok(());
    }
    let metrics_listen = cli.metrics_listen()?;
    let http_listen = cli.http_listen()?;
    let mut config = Config::prepare(&options).map_err(|e| e.to_string())?;
    config.webhooks.allow_private = cli.webhooks_allow_private;
    config.webhooks.timeout = std::time::Duration::from_secs(cli.webhooks_timeout);
    config.webhooks.concurrency = usize::try_from(cli.webhooks_concurrency).unwrap_or(8);
    config.webhooks.ca_file = cli.webhooks_ca_file.clone();
    config.webhooks.poll_interval = cli.webhooks_poll_interval;
    config.lifecycle_interval = cli.lifecycle_interval;
    if let Some(path) = &cli.clock_offset_file {
        tracing::warn!(file = %path.display(), "the clock is moved by the offset in a file (for tests only)");
        config.clock = std::sync::Arc::new(tollgate_keyd::clock::OffsetFileClock::new(path.clone()));
    }
    config.webhooks.disable_after = std::time::Duration::from_secs(cli.webhooks_disable_after);
    config.webhooks.retention = std::time::Duration::from_secs(cli.webhooks_retention);
    let listener = tokio::net::TcpListener::bind(&cli.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", cli.listen))?;
    let metrics_listener = match metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("--metrics-listen: cannot listen on {addr}: {e}"))?,
        ),
        None => None,
    };
    let http_listener = match http_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("--http-listen: cannot listen on {addr}: {e}"))?,
        ),
        None => None,
    };
    // The metrics and dashboard addresses first: whoever waits for --addr-file finds them all.
    if let (Some(path), Some(http_listener)) = (&cli.http_addr_file, &http_listener) {
        let addr = http_listener.local_addr().map_err(|e| e.to_string())?;
        write_addr_file(path, &addr.to_string())?;
    }
    if let (Some(path), Some(metrics_listener)) = (&cli.metrics_addr_file, &metrics_listener) {
        let addr = metrics_listener.local_addr().map_err(|e| e.to_string())?;
        write_addr_file(path, &addr.to_string())?;
    }
    if let Some(path) = &cli.addr_file {
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        write_addr_file(path, &addr.to_string())?;
    }
    tollgate_keyd::serve_all(config, listener, metrics_listener, http_listener, shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "tollgate-keyd failed");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("tollgate-keyd").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn metrics_listen_on_loopback_by_default_and_off_turns_them_off() {
        // The default applies only when the environment sets no address.
        if std::env::var_os("TOLLGATE_KEYD_METRICS_LISTEN").is_none() {
            assert_eq!(parse(&[]).metrics_listen(), Ok(Some("127.0.0.1:9102")));
        }
        assert_eq!(parse(&["--metrics-listen", "127.0.0.1:0"]).metrics_listen(), Ok(Some("127.0.0.1:0")));
        assert_eq!(parse(&["--metrics-listen", "off"]).metrics_listen(), Ok(None));
        assert_eq!(parse(&["--metrics-listen", "OFF"]).metrics_listen(), Ok(None));
        let err = parse(&["--metrics-listen", "off", "--metrics-addr-file", "m.addr"])
            .metrics_listen()
            .unwrap_err();
        assert!(err.starts_with("--metrics-addr-file: "), "{err}");
    }

    #[test]
    fn the_dashboard_listens_on_loopback_by_default_and_off_turns_it_off() {
        if std::env::var_os("TOLLGATE_KEYD_HTTP_LISTEN").is_none() {
            assert_eq!(parse(&[]).http_listen(), Ok(Some("127.0.0.1:9180")));
        }
        assert_eq!(parse(&["--http-listen", "127.0.0.1:0"]).http_listen(), Ok(Some("127.0.0.1:0")));
        assert_eq!(parse(&["--http-listen", "off"]).http_listen(), Ok(None));
        let err = parse(&["--http-listen", "off", "--http-addr-file", "h.addr"]).http_listen().unwrap_err();
        assert!(err.starts_with("--http-addr-file: "), "{err}");
    }

    #[test]
    fn the_lifecycle_interval_takes_seconds_or_a_duration_within_bounds() {
        assert_eq!(parse(&[]).lifecycle_interval, std::time::Duration::from_secs(60));
        assert_eq!(parse_interval("5"), Ok(std::time::Duration::from_secs(5)));
        assert_eq!(parse_interval("250ms"), Ok(std::time::Duration::from_millis(250)));
        assert_eq!(parse_interval("10ms").unwrap_err(), "must be between 100ms and 1h");
        assert!(parse_interval("soon").is_err());
    }

    #[test]
    fn webhook_durations_take_seconds_or_units_and_name_what_is_wrong() {
        let cli = parse(&[]);
        assert_eq!((cli.webhooks_disable_after, cli.webhooks_retention), (5 * 86_400, 7 * 86_400));
        let cli = parse(&["--webhooks-disable-after", "3", "--webhooks-retention", "1h30m"]);
        assert_eq!((cli.webhooks_disable_after, cli.webhooks_retention), (3, 5_400));
        assert_eq!(positive_secs("0").unwrap_err(), "duration \"0\" must be at least 1s");
        assert_eq!(
            positive_secs("5 days").unwrap_err(),
            "invalid duration \"5 days\": expected seconds or e.g. 90s, 12h, 5d, 1h30m"
        );
        assert!(positive_secs("99999999999999999999").unwrap_err().contains("too long"));
        let err =
            Cli::try_parse_from(["tollgate-keyd", "--webhooks-retention=1x"]).err().unwrap().to_string();
        assert!(err.contains("--webhooks-retention") && err.contains("invalid duration \"1x\""), "{err}");
    }

    #[test]
    fn store_takes_a_postgres_url_and_conflicts_with_db() {
        let cli = parse(&["--store", "postgres://u@h/db"]);
        assert_eq!(
            cli.options().store_location().unwrap(),
            StoreLocation::Postgres("postgres://u@h/db".into())
        );
        assert!(Cli::try_parse_from(["tollgate-keyd", "--store", "sqlite:a.db", "--db", "b.db"]).is_err());
        let err = parse(&["--store", "mysql://h/db"]).options().store_location().unwrap_err().to_string();
        assert_eq!(err, "store: must be sqlite:PATH or a postgres:// URL");
        assert_eq!(
            run_migrate("postgres://u@h/db", "postgres://u@h/db2").unwrap_err(),
            "--from: must be sqlite:PATH"
        );
        assert_eq!(run_migrate("sqlite:a.db", "sqlite:b.db").unwrap_err(), "--to: must be a postgres:// URL");
    }
}
