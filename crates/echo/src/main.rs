//! `tollgate-echo`: the demo upstream behind the gateway.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use tokio::net::TcpListener;

/// Demo upstream: answers every request with a JSON description of it.
#[derive(Debug, Parser)]
#[command(name = "tollgate-echo", version)]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "TOLLGATE_ECHO_LISTEN", default_value = "127.0.0.1:8081")]
    listen: String,
    /// After binding, write the bound address (e.g. `127.0.0.1:54321`) to this file.
    #[arg(long, value_name = "PATH")]
    addr_file: Option<PathBuf>,
    /// Instance name, returned in the JSON and as header `x-echo-instance`.
    #[arg(long, default_value = "echo")]
    name: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tollgate-echo: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let listener = TcpListener::bind(&args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr().map_err(|e| format!("cannot read the bound address: {e}"))?;
    if let Some(path) = &args.addr_file {
        write_atomically(path, &addr.to_string())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    eprintln!("tollgate-echo: instance {:?} listening on http://{addr}", args.name);
    tollgate_echo::serve(listener, args.name, shutdown_signal()).await;
    eprintln!("tollgate-echo: stopped");
    Ok(())
}

/// Writes next to the target and renames, so a reader never sees half an address.
fn write_atomically(path: &Path, contents: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path)
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
