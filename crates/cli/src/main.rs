//! `tollgate`: admin command line of the Tollgate key service.

use std::process::ExitCode;

use clap::Parser;
use tollgate_cli::{Cli, Output};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr();
    let json = cli.json;
    let result = tollgate_cli::run(cli, &mut Output { out: &mut stdout, err: &mut stderr, json }).await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}
