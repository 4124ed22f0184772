//! What Tollgate's services (`tollgate-keyd`, `tollgate-ratelimitd`) share: how they log, how
//! they learn to stop, and how they tell a caller which address they listen on.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use tracing_subscriber::EnvFilter;

/// The `--log-format` of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Text,
}

/// Logs to standard error in `format`, at the level `RUST_LOG` says (`info` without it).
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}

/// Writes `addr` and a newline to `path` (mode 0600) whole or not at all — written beside it,
/// then renamed — so a reader never sees half an address.
pub fn write_addr_file(path: &Path, addr: &str) -> Result<(), String> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    // Left over from a start that stopped between writing and renaming.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot remove {}: {e}", tmp.display())),
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let written = options.open(&tmp).and_then(|mut file| {
        file.write_all(format!("{addr}\n").as_bytes())?;
        file.sync_all()
    });
    written.map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn an_address_file_is_written_whole_and_private_over_a_leftover() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("addr");
        std::fs::write(dir.path().join("addr.tmp"), "half").unwrap();
        write_addr_file(&path, "127.0.0.1:7070").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "127.0.0.1:7070\n");
        assert!(!dir.path().join("addr.tmp").exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        write_addr_file(&path, "127.0.0.1:7071").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "127.0.0.1:7071\n");
    }
}
