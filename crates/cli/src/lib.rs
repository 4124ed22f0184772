//! `tollgate`: the admin command line of the Tollgate key service.
//!
//! [`Cli`] is the clap definition; [`execute`] runs a parsed command against a connected
//! [`Client`] and writes to the given writers, so commands can be driven from tests.

pub mod client;
pub mod output;
pub mod parse;
pub mod sign;

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tollgate_proto::v1::{
    CreateConsumerRequest, CreateKeyRequest, DeleteConsumerRequest, GetConsumerRequest, GetKeyRequest,
    KeyStatus, ListConsumersRequest, ListKeysRequest, Metadata, RateLimit, RateLimitPolicy, RevokeKeyRequest,
    RotateKeyRequest, Scopes, UpdateKeyRequest,
};

pub use client::{CliError, Client};
use output::{ConsumerView, IssuedKeyView, KeyView};

/// Admin command line of the Tollgate key service.
#[derive(Debug, Parser)]
#[command(name = "tollgate", version)]
pub struct Cli {
    /// Key service URL.
    #[arg(long, global = true, env = "TOLLGATE_SERVER", default_value = "http://127.0.0.1:7070")]
    pub server: String,
    /// Admin token, sent as `authorization: Bearer <token>`.
    #[arg(long, global = true, env = "TOLLGATE_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the admin token, read when no --token is given
    /// [default: .run/keyd/admin.token].
    #[arg(long, global = true, env = "TOLLGATE_ADMIN_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Print one JSON object or array instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Connect and per-call timeout (e.g. 5s, 1m).
    #[arg(long, global = true, default_value = "5s", value_parser = parse_timeout)]
    pub timeout: Duration,
    #[command(subcommand)]
    pub command: Command,
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    match parse::duration_secs(text)? {
        0 => Err("the timeout must be at least 1s".to_owned()),
        secs => Ok(Duration::from_secs(secs)),
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, list, inspect, update, revoke and rotate API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Manage consumers, the callers that own keys.
    #[command(subcommand)]
    Consumers(ConsumersCommand),
    /// Sign a request (RFC 9421 HTTP Message Signatures) and print the headers to add:
    /// Content-Digest (with a body), Signature-Input and Signature. Needs no key service.
    Sign(sign::SignArgs),
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Issue a new key (creates the consumer when it does not exist). The key is shown once.
    Create(KeysCreate),
    /// List keys.
    List(KeysList),
    /// Show one key.
    Get {
        /// Key id.
        id: String,
    },
    /// Change a key's name, scopes, metadata, expiry or rate limit.
    Update(KeysUpdate),
    /// Revoke a key; it stops working at once.
    Revoke {
        /// Key id.
        id: String,
        /// Why, kept with the key.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Issue a new secret for a key. The new key is shown once.
    Rotate {
        /// Key id.
        id: String,
        /// How long the previous secret keeps working (e.g. 1h); 0 ends it at once.
        #[arg(long, default_value = "0", value_parser = parse::duration_secs)]
        grace: u64,
    },
}

/// Rate-limit flags shared by `keys create` and `keys update`.
#[derive(Debug, Clone, Args, Default)]
pub struct RateArgs {
    /// A token bucket: N/s, N/min, N/h or N/day. Repeat for several.
    #[arg(long = "rate", value_name = "N/PERIOD", value_parser = parse::rate)]
    pub rates: Vec<RateLimit>,
    /// Burst of the --rate at the same position (default: same as the rate).
    #[arg(long = "burst", value_name = "N")]
    pub bursts: Vec<u64>,
    /// Rate-limit tier name.
    #[arg(long)]
    pub tier: Option<String>,
}

impl RateArgs {
    fn is_empty(&self) -> bool {
        self.rates.is_empty() && self.bursts.is_empty() && self.tier.is_none()
    }

    /// The policy these flags describe, or `None` when none was given.
    pub fn policy(&self) -> Result<Option<RateLimitPolicy>, CliError> {
        if self.is_empty() {
            return Ok(None);
        }
        if self.bursts.len() > self.rates.len() {
            return Err(CliError::Usage(format!(
                "{} --burst given for {} --rate; each --burst belongs to the --rate at the same position",
                self.bursts.len(),
                self.rates.len()
            )));
        }
        let mut limits = self.rates.clone();
        for (limit, burst) in limits.iter_mut().zip(&self.bursts) {
            limit.burst = *burst;
        }
        Ok(Some(RateLimitPolicy { tier: self.tier.clone().unwrap_or_default(), limits }))
    }
}

#[derive(Debug, Clone, Args)]
pub struct KeysCreate {
    /// Consumer id or name; created when it does not exist.
    #[arg(long)]
    pub consumer: String,
    /// Key name.
    #[arg(long)]
    pub name: Option<String>,
    /// Scope granted to the key. Repeat for several.
    #[arg(long = "scope", value_name = "SCOPE")]
    pub scopes: Vec<String>,
    /// Metadata entry. Repeat for several.
    #[arg(long = "meta", value_name = "K=V", value_parser = parse::key_value)]
    pub meta: Vec<(String, String)>,
    /// Lifetime from now (e.g. 30d, 12h).
    #[arg(long, value_parser = parse::duration_secs, conflicts_with = "expires_at")]
    pub ttl: Option<u64>,
    /// Absolute expiry: RFC 3339, a date or Unix seconds.
    #[arg(long, value_parser = parse::timestamp)]
    pub expires_at: Option<i64>,
    #[command(flatten)]
    pub rate: RateArgs,
    /// Give the key signing material for HTTP message signatures: `hmac` (the service
    /// generates a secret, shown once) or `ed25519` (with --public-key).
    #[arg(long, value_enum)]
    pub signing: Option<SigningKind>,
    /// Ed25519 public key file (PEM `BEGIN PUBLIC KEY`, or the 32 bytes in base64).
    #[arg(long, value_name = "FILE", requires = "signing")]
    pub public_key: Option<PathBuf>,
}

/// Kinds of signing material a key can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SigningKind {
    Hmac,
    Ed25519,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StatusFilter {
    Active,
    Revoked,
    Expired,
}

impl From<StatusFilter> for KeyStatus {
    fn from(s: StatusFilter) -> Self {
        match s {
            StatusFilter::Active => KeyStatus::Active,
            StatusFilter::Revoked => KeyStatus::Revoked,
            StatusFilter::Expired => KeyStatus::Expired,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct KeysList {
    /// Only keys of this consumer (id or name).
    #[arg(long)]
    pub consumer: Option<String>,
    /// Only keys in this state.
    #[arg(long, value_enum)]
    pub status: Option<StatusFilter>,
    #[command(flatten)]
    pub page: PageArgs,
}

#[derive(Debug, Clone, Args)]
pub struct PageArgs {
    /// Entries per page (the service's default when unset).
    #[arg(long)]
    pub limit: Option<u32>,
    /// Follow page tokens and list everything.
    #[arg(long)]
    pub all: bool,
    /// Continue from this page token.
    #[arg(long, conflicts_with = "all")]
    pub page_token: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct KeysUpdate {
    /// Key id.
    pub id: String,
    /// New key name.
    #[arg(long)]
    pub name: Option<String>,
    /// Replace the scopes with these. Repeat for several.
    #[arg(long = "scope", value_name = "SCOPE", conflicts_with = "clear_scopes")]
    pub scopes: Vec<String>,
    /// Remove all scopes.
    #[arg(long)]
    pub clear_scopes: bool,
    /// Replace the metadata with these entries. Repeat for several.
    #[arg(long = "meta", value_name = "K=V", value_parser = parse::key_value, conflicts_with = "clear_meta")]
    pub meta: Vec<(String, String)>,
    /// Remove all metadata.
    #[arg(long)]
    pub clear_meta: bool,
    /// New absolute expiry: RFC 3339, a date or Unix seconds.
    #[arg(long, value_parser = parse::timestamp, conflicts_with_all = ["no_expiry", "ttl"])]
    pub expires_at: Option<i64>,
    /// New expiry, this long from now (e.g. 30d).
    #[arg(long, value_parser = parse::duration_secs, conflicts_with = "no_expiry")]
    pub ttl: Option<u64>,
    /// Make the key never expire.
    #[arg(long)]
    pub no_expiry: bool,
    #[command(flatten)]
    pub rate: RateArgs,
    /// Remove the key's rate-limit policy.
    #[arg(long, conflicts_with_all = ["rates", "bursts", "tier"])]
    pub clear_rate_limit: bool,
}

#[derive(Debug, Subcommand)]
pub enum ConsumersCommand {
    /// Create a consumer.
    Create {
        /// Consumer name.
        name: String,
        /// Consumer id (generated when unset).
        #[arg(long)]
        id: Option<String>,
        /// Metadata entry. Repeat for several.
        #[arg(long = "meta", value_name = "K=V", value_parser = parse::key_value)]
        meta: Vec<(String, String)>,
    },
    /// List consumers.
    List {
        #[command(flatten)]
        page: PageArgs,
    },
    /// Show one consumer.
    Get {
        /// Consumer id or name.
        id: String,
    },
    /// Delete a consumer and revoke all of its keys.
    Delete {
        /// Consumer id.
        id: String,
    },
}

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
        return sign::run(&args, output);
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
            metadata_map(args.meta.clone())?;
            signing_fields(args)?;
        }
        Command::Keys(KeysCommand::Update(args)) => {
            update_request(args.clone(), 0)?;
        }
        Command::Consumers(ConsumersCommand::Create { meta, .. }) => {
            metadata_map(meta.clone())?;
        }
        _ => {}
    }
    Ok(())
}

/// Runs one command against a connected client.
pub async fn execute(command: Command, client: &mut Client, output: &mut Output<'_>) -> Result<(), CliError> {
    match command {
        Command::Keys(cmd) => keys(cmd, client, output).await,
        Command::Consumers(cmd) => consumers(cmd, client, output).await,
        Command::Sign(args) => sign::run(&args, output),
    }
}

/// The signing algorithm and public key a `keys create` asks for.
fn signing_fields(args: &KeysCreate) -> Result<(i32, Vec<u8>), CliError> {
    use tollgate_proto::v1::SigningAlgorithm;
    match (args.signing, &args.public_key) {
        (None, _) => Ok((SigningAlgorithm::Unspecified as i32, Vec::new())),
        (Some(SigningKind::Hmac), None) => Ok((SigningAlgorithm::HmacSha256 as i32, Vec::new())),
        (Some(SigningKind::Hmac), Some(_)) => Err(CliError::Usage(
            "--public-key is for --signing ed25519; HMAC secrets are generated".to_owned(),
        )),
        (Some(SigningKind::Ed25519), None) => {
            Err(CliError::Usage("--signing ed25519 needs --public-key FILE".to_owned()))
        }
        (Some(SigningKind::Ed25519), Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))?;
            let key = tollgate_signing::ed25519_public_key(&text)
                .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?;
            Ok((SigningAlgorithm::Ed25519 as i32, key.to_vec()))
        }
    }
}

fn metadata_map(entries: Vec<(String, String)>) -> Result<HashMap<String, String>, CliError> {
    let mut map = HashMap::new();
    for (key, value) in entries {
        if map.insert(key.clone(), value).is_some() {
            return Err(CliError::Usage(format!("metadata key {key:?} given more than once")));
        }
    }
    Ok(map)
}

async fn keys(cmd: KeysCommand, client: &mut Client, o: &mut Output<'_>) -> Result<(), CliError> {
    match cmd {
        KeysCommand::Create(args) => {
            let (signing_algorithm, signing_public_key) = signing_fields(&args)?;
            let request = CreateKeyRequest {
                consumer: args.consumer,
                create_consumer: true,
                name: args.name.unwrap_or_default(),
                scopes: args.scopes,
                metadata: metadata_map(args.meta)?,
                rate_limit: args.rate.policy()?,
                expires_at: args.expires_at.unwrap_or(0),
                ttl_seconds: args.ttl.unwrap_or(0),
                signing_algorithm,
                signing_public_key,
            };
            let response = client.create_key(request).await?.into_inner();
            let key = response.key.unwrap_or_default();
            let signing_secret = (!response.signing_secret.is_empty()).then(|| {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.encode(&response.signing_secret)
            });
            if o.json {
                let view = IssuedKeyView { key: KeyView::from(&key), secret: response.secret };
                let mut value = serde_json::to_value(&view).map_err(|e| CliError::Other(e.to_string()))?;
                if let (Some(secret), Some(map)) = (&signing_secret, value.as_object_mut()) {
                    map.insert("signing_secret".to_owned(), serde_json::Value::String(secret.clone()));
                }
                output::write_json(o.out, &value)?;
            } else {
                writeln!(o.out, "Created key {} for consumer {}.", key.id, key.consumer_id)?;
                output::write_secret(o.out, &response.secret)?;
                if let Some(secret) = &signing_secret {
                    writeln!(o.out, "HMAC signing secret (base64, shown once): {secret}")?;
                }
                writeln!(o.out)?;
                output::write_key_detail(o.out, &key)?;
            }
        }
        KeysCommand::List(args) => {
            let mut request = ListKeysRequest {
                consumer: args.consumer.unwrap_or_default(),
                status: args.status.map(KeyStatus::from).unwrap_or(KeyStatus::Unspecified) as i32,
                page_size: args.page.limit.unwrap_or(0),
                page_token: args.page.page_token.unwrap_or_default(),
            };
            let mut keys = Vec::new();
            let next = loop {
                let page = client.list_keys(request.clone()).await?.into_inner();
                keys.extend(page.keys);
                if !args.page.all || page.next_page_token.is_empty() {
                    break page.next_page_token;
                }
                request.page_token = page.next_page_token;
            };
            if o.json {
                let views: Vec<KeyView> = keys.iter().map(KeyView::from).collect();
                output::write_json(o.out, &views)?;
            } else {
                output::write_key_table(o.out, &keys)?;
            }
            more_hint(o, &next)?;
        }
        KeysCommand::Get { id } => {
            let key = client.get_key(GetKeyRequest { id }).await?.into_inner();
            write_key(o, &key)?;
        }
        KeysCommand::Update(args) => {
            let request = update_request(args, parse::now_secs())?;
            let key = client.update_key(request).await?.into_inner();
            write_key(o, &key)?;
        }
        KeysCommand::Revoke { id, reason } => {
            let request = RevokeKeyRequest { id, reason: reason.unwrap_or_default() };
            let key = client.revoke_key(request).await?.into_inner();
            if !o.json {
                writeln!(o.out, "Revoked key {}.", key.id)?;
            }
            write_key(o, &key)?;
        }
        KeysCommand::Rotate { id, grace } => {
            let request = RotateKeyRequest { id, grace_period_seconds: grace };
            let response = client.rotate_key(request).await?.into_inner();
            let key = response.key.unwrap_or_default();
            if o.json {
                let view = IssuedKeyView { key: KeyView::from(&key), secret: response.secret };
                output::write_json(o.out, &view)?;
            } else {
                writeln!(o.out, "Rotated key {}.", key.id)?;
                output::write_secret(o.out, &response.secret)?;
                let old = if key.previous_display_prefix.is_empty() {
                    "The previous key".to_owned()
                } else {
                    format!("The previous key ({}...)", key.previous_display_prefix)
                };
                match parse::rfc3339(key.previous_expires_at) {
                    Some(at) if grace > 0 => writeln!(o.out, "{old} keeps working until {at}.")?,
                    _ => writeln!(o.out, "{old} stopped working now.")?,
                }
            }
        }
    }
    Ok(())
}

/// Builds an `UpdateKeyRequest`; fields not given stay as they are.
pub fn update_request(args: KeysUpdate, now: i64) -> Result<UpdateKeyRequest, CliError> {
    let scopes = if args.clear_scopes {
        Some(Scopes { values: Vec::new() })
    } else if args.scopes.is_empty() {
        None
    } else {
        Some(Scopes { values: args.scopes })
    };
    let metadata = if args.clear_meta {
        Some(Metadata::default())
    } else if args.meta.is_empty() {
        None
    } else {
        Some(Metadata { entries: metadata_map(args.meta)? })
    };
    let expires_at = if args.no_expiry {
        Some(0)
    } else if let Some(ttl) = args.ttl {
        let ttl = i64::try_from(ttl).map_err(|_| CliError::Usage("--ttl is too long".into()))?;
        Some(now.saturating_add(ttl))
    } else {
        args.expires_at
    };
    let rate_limit =
        if args.clear_rate_limit { Some(RateLimitPolicy::default()) } else { args.rate.policy()? };
    let request = UpdateKeyRequest { id: args.id, name: args.name, scopes, metadata, rate_limit, expires_at };
    if request.name.is_none()
        && request.scopes.is_none()
        && request.metadata.is_none()
        && request.rate_limit.is_none()
        && request.expires_at.is_none()
    {
        return Err(CliError::Usage(
            "nothing to update: give at least one of --name, --scope, --clear-scopes, --meta, \
             --clear-meta, --expires-at, --ttl, --no-expiry, --rate, --tier, --clear-rate-limit"
                .into(),
        ));
    }
    Ok(request)
}

fn write_key(o: &mut Output<'_>, key: &tollgate_proto::v1::Key) -> Result<(), CliError> {
    if o.json {
        output::write_json(o.out, &KeyView::from(key))?;
    } else {
        output::write_key_detail(o.out, key)?;
    }
    Ok(())
}

fn more_hint(o: &mut Output<'_>, next: &str) -> Result<(), CliError> {
    if !next.is_empty() {
        writeln!(o.err, "more results: rerun with --all, or with --page-token {next}")?;
    }
    Ok(())
}

async fn consumers(cmd: ConsumersCommand, client: &mut Client, o: &mut Output<'_>) -> Result<(), CliError> {
    match cmd {
        ConsumersCommand::Create { name, id, meta } => {
            let request =
                CreateConsumerRequest { id: id.unwrap_or_default(), name, metadata: metadata_map(meta)? };
            let consumer = client.create_consumer(request).await?.into_inner();
            if o.json {
                output::write_json(o.out, &ConsumerView::from(&consumer))?;
            } else {
                output::write_consumer_detail(o.out, &consumer)?;
            }
        }
        ConsumersCommand::List { page } => {
            let mut request = ListConsumersRequest {
                page_size: page.limit.unwrap_or(0),
                page_token: page.page_token.unwrap_or_default(),
            };
            let mut consumers = Vec::new();
            let next = loop {
                let response = client.list_consumers(request.clone()).await?.into_inner();
                consumers.extend(response.consumers);
                if !page.all || response.next_page_token.is_empty() {
                    break response.next_page_token;
                }
                request.page_token = response.next_page_token;
            };
            if o.json {
                let views: Vec<ConsumerView> = consumers.iter().map(ConsumerView::from).collect();
                output::write_json(o.out, &views)?;
            } else {
                output::write_consumer_table(o.out, &consumers)?;
            }
            more_hint(o, &next)?;
        }
        ConsumersCommand::Get { id } => {
            let consumer = client.get_consumer(GetConsumerRequest { id }).await?.into_inner();
            if o.json {
                output::write_json(o.out, &ConsumerView::from(&consumer))?;
            } else {
                output::write_consumer_detail(o.out, &consumer)?;
            }
        }
        ConsumersCommand::Delete { id } => {
            let response =
                client.delete_consumer(DeleteConsumerRequest { id: id.clone() }).await?.into_inner();
            if o.json {
                let value = serde_json::json!({"id": id, "revoked_keys": response.revoked_keys});
                output::write_json(o.out, &value)?;
            } else {
                let n = response.revoked_keys;
                let keys = if n == 1 { "key" } else { "keys" };
                writeln!(o.out, "Deleted consumer {id}; revoked {n} {keys}.")?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_proto::v1::Period;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("tollgate").chain(args.iter().copied()))
    }

    fn update_args(args: &[&str]) -> KeysUpdate {
        let mut full = vec!["keys", "update", "key_abc"];
        full.extend_from_slice(args);
        match parse(&full).unwrap().command {
            Command::Keys(KeysCommand::Update(u)) => u,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn create_parses_repeated_flags_and_pairs_bursts_with_rates() {
        let cli = parse(&[
            "keys",
            "create",
            "--consumer",
            "alice",
            "--scope",
            "read",
            "--scope",
            "write",
            "--meta",
            "team=pay",
            "--ttl",
            "30d",
            "--rate",
            "100/s",
            "--burst",
            "200",
            "--rate",
            "1000/min",
            "--tier",
            "gold",
            "--json",
        ])
        .unwrap();
        assert!(cli.json);
        let Command::Keys(KeysCommand::Create(c)) = cli.command else { panic!("not create") };
        assert_eq!(c.scopes, ["read", "write"]);
        assert_eq!(c.ttl, Some(2_592_000));
        let policy = c.rate.policy().unwrap().unwrap();
        assert_eq!(policy.tier, "gold");
        assert_eq!(policy.limits.len(), 2);
        assert_eq!((policy.limits[0].rate, policy.limits[0].burst), (100, 200));
        assert_eq!((policy.limits[1].period(), policy.limits[1].burst), (Period::Minute, 0));
    }

    #[test]
    fn ttl_and_expires_at_conflict() {
        assert!(
            parse(&["keys", "create", "--consumer", "a", "--ttl", "1h", "--expires-at", "2030-01-01"])
                .is_err()
        );
    }

    #[test]
    fn more_bursts_than_rates_is_a_usage_error() {
        let cli = parse(&["keys", "create", "--consumer", "a", "--burst", "5"]).unwrap();
        let Command::Keys(KeysCommand::Create(c)) = cli.command else { panic!("not create") };
        assert_eq!(c.rate.policy().unwrap_err().exit_code(), 2);
    }

    #[test]
    fn bad_values_are_rejected_by_clap() {
        assert!(parse(&["keys", "create", "--consumer", "a", "--ttl", "forever"]).is_err());
        assert!(parse(&["keys", "create", "--consumer", "a", "--rate", "100"]).is_err());
        assert!(parse(&["keys", "create", "--consumer", "a", "--meta", "novalue"]).is_err());
        assert!(parse(&["keys", "list", "--status", "gone"]).is_err());
    }

    #[test]
    fn update_sends_only_what_was_given() {
        let req = update_request(update_args(&["--name", "ci"]), 1_000).unwrap();
        assert_eq!(req.name.as_deref(), Some("ci"));
        assert!(req.scopes.is_none() && req.metadata.is_none() && req.rate_limit.is_none());
        assert_eq!(req.expires_at, None);
    }

    #[test]
    fn update_clears_and_sets_expiry() {
        let req = update_request(update_args(&["--clear-scopes", "--no-expiry"]), 1_000).unwrap();
        assert_eq!(req.scopes.map(|s| s.values.len()), Some(0));
        assert_eq!(req.expires_at, Some(0));
        let req = update_request(update_args(&["--ttl", "1h"]), 1_000).unwrap();
        assert_eq!(req.expires_at, Some(4_600));
        let req = update_request(update_args(&["--expires-at", "2030-01-01T00:00:00Z"]), 1_000).unwrap();
        assert_eq!(req.expires_at, Some(1_893_456_000));
    }

    #[test]
    fn update_with_nothing_is_a_usage_error() {
        let err = update_request(update_args(&[]), 0).unwrap_err();
        assert_eq!(err.exit_code(), 2);
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

    #[test]
    fn duplicate_metadata_keys_are_rejected() {
        let err = metadata_map(vec![("a".into(), "1".into()), ("a".into(), "2".into())]).unwrap_err();
        assert!(err.to_string().contains("\"a\""));
    }

    #[test]
    fn global_flags_work_after_the_subcommand() {
        let cli = parse(&["keys", "get", "key_abc", "--server", "http://x:1", "--timeout", "2s"]).unwrap();
        assert_eq!(cli.server, "http://x:1");
        assert_eq!(cli.timeout, Duration::from_secs(2));
    }
}
