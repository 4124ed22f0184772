//! The command line as clap sees it: global flags, commands and their flags. What each command
//! does is in [`crate::commands`].

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tollgate_proto::v1::{KeyStatus, RateLimit, RateLimitPolicy};

use crate::client::CliError;
use crate::parse;

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
    /// Requests per key over a window, as the gateways reported them, and the gateways that
    /// report (one call, whatever the number of keys).
    Usage(UsageArgs),
    /// Sign a request (RFC 9421 HTTP Message Signatures) and print the headers to add:
    /// Content-Digest (with a body), Signature-Input and Signature. Needs no key service.
    Sign(SignArgs),
    /// The gateways' response caches.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Webhook endpoints: create, list, delete, and the delivery log.
    #[command(subcommand)]
    Webhooks(WebhooksCommand),
    /// Rotation policies: how old a key may get, when its owner is warned, and whether the key
    /// service rotates it or lets it expire.
    #[command(subcommand)]
    Policies(PoliciesCommand),
}

/// What a rotation policy is set on: exactly one of a consumer and a key.
#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub struct PolicyTargetArgs {
    /// A consumer id or name: the policy of each of its keys that has none of its own.
    #[arg(long)]
    pub consumer: Option<String>,
    /// A key id: this key's own policy.
    #[arg(long)]
    pub key: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum PoliciesCommand {
    /// Set (or replace) the rotation policy of a consumer or a key.
    Set {
        #[command(flatten)]
        target: PolicyTargetArgs,
        /// How old a key's secret may get (e.g. 90d), counted from its creation or last rotation.
        #[arg(long, value_parser = parse::duration_secs)]
        max_age: u64,
        /// Lead times before max_age to warn at, one key.expiring event each (e.g. 30d,7d,1d).
        #[arg(long, value_delimiter = ',', value_parser = parse::duration_secs)]
        notify_before: Vec<u64>,
        /// How long the previous secret keeps working after a rotation (e.g. 24h).
        #[arg(long, value_parser = parse::duration_secs, default_value = "24h")]
        grace: u64,
        /// notify: the key expires at max_age unless rotated before; auto: the key service
        /// rotates it at max_age.
        #[arg(long, value_enum, default_value = "notify")]
        mode: PolicyModeArg,
        /// End the grace early once the previous secret has not been seen for this long (e.g.
        /// 2d); 0 keeps the whole grace.
        #[arg(long, value_parser = parse::duration_secs, default_value = "0")]
        revoke_unused_previous_after: u64,
    },
    /// List policies: a consumer's and its keys', or every one.
    List {
        /// A consumer id or name.
        #[arg(long)]
        consumer: Option<String>,
    },
    /// Remove the policy of a consumer or a key.
    Rm {
        #[command(flatten)]
        target: PolicyTargetArgs,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PolicyModeArg {
    Notify,
    Auto,
}

#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// Register an endpoint. Prints its signing secret (whsec_...) once.
    Create {
        /// Where events are POSTed (https:// or http://).
        #[arg(long)]
        url: String,
        /// An event type: key.created, key.rotated, key.revoked, consumer.created,
        /// consumer.deleted, webhook.disabled, quota.exhausted. Repeat for several.
        #[arg(long = "event", required = true)]
        events: Vec<String>,
    },
    /// List endpoints.
    List,
    /// Change an endpoint's URL, events or enabled state; what is not given stays.
    Update {
        /// Endpoint id (wh_...).
        id: String,
        /// A new target URL.
        #[arg(long)]
        url: Option<String>,
        /// The new event types (replacing the old ones). Repeat for several.
        #[arg(long = "event")]
        events: Vec<String>,
        /// Enable it (clears why it was disabled; its pending events are sent now).
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        /// Disable it (nothing is delivered to it until it is enabled).
        #[arg(long)]
        disable: bool,
    },
    /// Enable an endpoint (e.g. one disabled after failing): `update ID --enable`. Events from
    /// while it was disabled were not kept for it: `replay --since … --webhook ID` sends those
    /// it had before.
    Enable {
        /// Endpoint id (wh_...).
        id: String,
    },
    /// Disable an endpoint: `update ID --disable`.
    Disable {
        /// Endpoint id (wh_...).
        id: String,
    },
    /// Delete an endpoint and its undelivered events.
    Delete {
        /// Endpoint id (wh_...).
        id: String,
    },
    /// The delivery log, newest first.
    Deliveries {
        /// Only this endpoint's attempts.
        #[arg(long)]
        webhook: Option<String>,
        /// At most this many (default 100).
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Give an endpoint a new signing secret, printed once. Until the grace ends every delivery
    /// carries two signatures, by the new and the previous secret.
    RotateSecret {
        /// Endpoint id (wh_...).
        id: String,
        /// How long the previous secret keeps signing too (e.g. 24h, 1h30m); 0 ends it at once.
        #[arg(long, default_value = "24h", value_parser = parse::duration_secs)]
        grace: u64,
    },
    /// Send stored events again, with the webhook-id each had (receivers deduplicate on it).
    Replay {
        /// Events created since then: a duration ago (2h, 30m, 1d) or a time (RFC 3339, a date,
        /// Unix seconds). Only events the key service still keeps (--webhooks-retention).
        #[arg(long, value_parser = parse::since)]
        since: parse::Since,
        /// Only this endpoint's events (default: every enabled endpoint's).
        #[arg(long)]
        webhook: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Purge stored responses from every gateway's cache (carried on the change feed).
    Purge(CachePurgeArgs),
}

#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["tag", "prefix", "url", "all"])))]
pub struct CachePurgeArgs {
    /// Responses whose origin named this tag (Cache-Tag or Surrogate-Key).
    #[arg(long)]
    pub tag: Option<String>,
    /// Responses whose path starts with this (e.g. /products/).
    #[arg(long)]
    pub prefix: Option<String>,
    /// The responses of one path and query, every variant and consumer (e.g. /products/7?lang=en).
    #[arg(long)]
    pub url: Option<String>,
    /// Every stored response.
    #[arg(long)]
    pub all: bool,
    /// With --prefix or --url: only this host's responses.
    #[arg(long)]
    pub host: Option<String>,
    /// Mark stale (answered within stale-while-revalidate while refreshed) instead of dropping.
    #[arg(long)]
    pub soft: bool,
}

#[derive(Debug, Clone, Args)]
pub struct UsageArgs {
    /// Only these keys (repeat the flag for several).
    #[arg(long = "key", value_name = "ID")]
    pub keys: Vec<String>,
    /// Only this consumer's keys (id or name).
    #[arg(long)]
    pub consumer: Option<String>,
    /// How far back (e.g. 15m, 1h, 7d).
    #[arg(long, default_value = "1h", value_parser = parse::duration_secs)]
    pub since: u64,
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

/// The flags of `tollgate sign`.
#[derive(Debug, Clone, Args)]
pub struct SignArgs {
    /// The key id (`keyid`), as `tollgate keys create` printed it.
    #[arg(long)]
    pub key_id: String,
    /// File holding the key's HMAC secret (base64, as printed by `keys create --signing hmac`).
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "private_key",
        required_unless_present = "private_key"
    )]
    pub secret_file: Option<PathBuf>,
    /// Ed25519 private key file (PEM `BEGIN PRIVATE KEY`, or the 32-byte seed in base64).
    #[arg(long, value_name = "FILE")]
    pub private_key: Option<PathBuf>,
    /// Request method.
    #[arg(long, short = 'X', default_value = "GET")]
    pub method: String,
    /// Absolute request URL, as the gateway sees it (scheme, host[:port], path, query).
    #[arg(long)]
    pub url: String,
    /// A header the request will carry, `Name: value`. Repeat for several (a repeated name is
    /// one field line each, in order). The value is taken as the bytes given, so it may hold
    /// bytes that are not UTF-8 (e.g. `-H $'X-Bin: \xff\xfe'` in bash).
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    pub headers: Vec<std::ffi::OsString>,
    /// File with the request body; its Content-Digest is computed and covered.
    #[arg(long, value_name = "FILE")]
    pub body_file: Option<PathBuf>,
    /// A covered component (`@method`, `content-type`, `"@query-param";name="id"`). Repeat;
    /// replaces the default set (@method @authority @path @query, plus content-digest with a body).
    #[arg(long = "component", value_name = "ID")]
    pub components: Vec<String>,
    /// Signature label.
    #[arg(long, default_value = "sig1")]
    pub label: String,
    /// Add a random nonce.
    #[arg(long)]
    pub nonce: bool,
    /// Set `expires` this long after `created` (e.g. 5m).
    #[arg(long, value_parser = parse::duration_secs)]
    pub expires_in: Option<u64>,
    /// Sign as of this Unix time instead of now.
    #[arg(long)]
    pub created: Option<i64>,
    /// Leave out the `alg` parameter.
    #[arg(long)]
    pub no_alg: bool,
    /// A `tag` parameter.
    #[arg(long)]
    pub tag: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_proto::v1::Period;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("tollgate").chain(args.iter().copied()))
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
    fn global_flags_work_after_the_subcommand() {
        let cli = parse(&["keys", "get", "key_abc", "--server", "http://x:1", "--timeout", "2s"]).unwrap();
        assert_eq!(cli.server, "http://x:1");
        assert_eq!(cli.timeout, Duration::from_secs(2));
    }

    #[test]
    fn webhook_rotation_has_a_day_of_grace_by_default_and_replay_needs_a_start() {
        let cli = parse(&["webhooks", "rotate-secret", "wh_1"]).unwrap();
        let Command::Webhooks(WebhooksCommand::RotateSecret { id, grace }) = cli.command else {
            panic!("not rotate")
        };
        assert_eq!((id.as_str(), grace), ("wh_1", 86_400));
        let cli = parse(&["webhooks", "rotate-secret", "wh_1", "--grace", "0"]).unwrap();
        assert!(matches!(cli.command, Command::Webhooks(WebhooksCommand::RotateSecret { grace: 0, .. })));
        let cli = parse(&["webhooks", "replay", "--since", "2h", "--webhook", "wh_1"]).unwrap();
        let Command::Webhooks(WebhooksCommand::Replay { since, webhook }) = cli.command else {
            panic!("not replay")
        };
        assert_eq!((since, webhook.as_deref()), (parse::Since::Ago(7_200), Some("wh_1")));
        let cli = parse(&["webhooks", "replay", "--since", "2030-01-01T00:00:00Z"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Webhooks(WebhooksCommand::Replay {
                since: parse::Since::At(1_893_456_000),
                webhook: None
            })
        ));
        assert!(parse(&["webhooks", "replay"]).is_err());
        let err = parse(&["webhooks", "replay", "--since", "soon"]).unwrap_err().to_string();
        assert!(err.contains("invalid time \"soon\""), "{err}");
        assert!(parse(&["webhooks", "rotate-secret", "wh_1", "--grace", "forever"]).is_err());
    }

    #[test]
    fn sign_needs_a_key() {
        assert!(Cli::try_parse_from(["tollgate", "sign", "--key-id", "k", "--url", "http://h/"]).is_err());
    }
}
