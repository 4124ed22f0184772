//! `tollgate`: the admin command line of the Tollgate key service.
//!
//! [`args`] is the clap definition ([`Cli`]); [`commands`] holds what each command does.
//! [`execute`] runs a parsed command against a connected [`Client`] and writes to the given
//! writers, so commands can be driven from tests.

pub mod args;
pub mod client;
pub mod commands;
pub mod output;
pub mod parse;

use std::io::Write;

pub use args::{CacheCommand, Cli, Command, ConsumersCommand, KeysCommand, PoliciesCommand, WebhooksCommand};
pub use client::{CliError, Client};

/// Where a command writes: results to `out`, notes to `err`.
pub struct Output<'a> {
    pub out: &'a mut dyn Write,
    pub err: &'a mut dyn Write,
    pub json: bool,
}

/// Connects as the global flags say and runs the command.
pub async fn run(cli: Cli, output: &mut Output<'_>) -> Result<(), CliError> {
    check(&cli.command)?;
    if let Command::Sign(args) = cli.command {
        return commands::sign::run(&args, output);
    }
    let token = client::resolve_token(cli.token.clone(), cli.token_file.as_deref())?;
    let mut client = client::connect(&cli.server, token.as_deref(), cli.timeout).await?;
    execute(cli.command, &mut client, output).await
}

/// Rejects argument combinations clap cannot express, before connecting (usage errors, exit 2).
pub fn check(command: &Command) -> Result<(), CliError> {
    match command {
        Command::Keys(KeysCommand::Create(args)) => {
            args.rate.policy()?;
            commands::metadata_map(args.meta.clone())?;
            commands::keys::signing_fields(args)?;
        }
        Command::Keys(KeysCommand::Update(args)) => {
            commands::keys::update_request(args.clone(), 0)?;
        }
        Command::Consumers(ConsumersCommand::Create { meta, .. }) => {
            commands::metadata_map(meta.clone())?;
        }
        _ => {}
    }
    Ok(())
}

/// Runs one command against a connected client.
pub async fn execute(command: Command, client: &mut Client, output: &mut Output<'_>) -> Result<(), CliError> {
    match command {
        Command::Keys(cmd) => commands::keys::run(cmd, client, output).await,
        Command::Consumers(cmd) => commands::consumers::run(cmd, client, output).await,
        Command::Usage(args) => commands::usage::run(args, client, output).await,
        Command::Sign(args) => commands::sign::run(&args, output),
        Command::Cache(CacheCommand::Purge(args)) => commands::cache::purge(args, client, output).await,
        Command::Webhooks(cmd) => commands::webhooks::run(cmd, client, output).await,
        Command::Policies(cmd) => commands::policies::run(cmd, client, output).await,
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("tollgate").chain(args.iter().copied()))
    }

    #[test]
    fn usage_errors_are_found_before_connecting() {
        let cli = parse(&["keys", "update", "key_abc"]).unwrap();
        assert_eq!(check(&cli.command).unwrap_err().exit_code(), 2);
        let cli = parse(&["consumers", "create", "bob", "--meta", "a=1", "--meta", "a=2"]).unwrap();
        assert_eq!(check(&cli.command).unwrap_err().exit_code(), 2);
        let cli = parse(&["keys", "create", "--consumer", "bob", "--rate", "5/s", "--burst", "9"]).unwrap();
        assert!(check(&cli.command).is_ok());
    }
}
