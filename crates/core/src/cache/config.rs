//! The cache filter's configuration: raw serde types, compiled once into [`Config`].

use std::time::Duration;

use serde::Deserialize;

use crate::config::{ConfigError, parse_json};
use crate::duration;

use super::key::QueryRule;
use super::policy::StaleLimits;

pub const FILTER: &str = "cache";

pub const DEFAULT_MAX_OBJECT_BYTES: usize = 1024 * 1024;
pub const DEFAULT_MAX_MEMORY_BYTES: usize = 64 * 1024 * 1024;
/// Envoy's default per-stream buffer limit is 1 MiB; an object is buffered by the filter, so a
/// cap past this would be a config that holds far more per request than intended.
pub const MAX_OBJECT_BYTES_LIMIT: usize = 64 * 1024 * 1024;
/// A VM has at most 4 GiB of memory (wasm32): a quarter of it for the cache.
pub const MAX_MEMORY_BYTES_LIMIT: usize = 1024 * 1024 * 1024;
pub const DEFAULT_STALE_MAX: Duration = Duration::from_secs(86_400);
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_REFRESH_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    max_object_bytes: Option<usize>,
    #[serde(default)]
    max_memory_bytes: Option<usize>,
    #[serde(default)]
    default_methods: Option<Vec<String>>,
    #[serde(default)]
    query: Option<RawQuery>,
    #[serde(default)]
    per_consumer: bool,
    #[serde(default, deserialize_with = "duration::de_opt")]
    stale_while_revalidate_max: Option<Duration>,
    #[serde(default, deserialize_with = "duration::de_opt")]
    stale_if_error_max: Option<Duration>,
    #[serde(default)]
    origin_cluster: Option<String>,
    #[serde(default)]
    origin_authority: Option<String>,
    #[serde(default, deserialize_with = "duration::de_opt")]
    lock_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration::de_opt")]
    refresh_timeout: Option<Duration>,
    #[serde(default)]
    shared: Option<RawShared>,
    #[serde(default)]
    key_service: Option<crate::config::RawKeyService>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShared {
    #[serde(default)]
    slots: Option<u32>,
    #[serde(default)]
    max_bytes: Option<usize>,
}

pub const DEFAULT_SHARED_SLOTS: u32 = 1024;
pub const MAX_SHARED_SLOTS: u32 = 65_536;
pub const DEFAULT_SHARED_MAX_BYTES: usize = 64 * 1024 * 1024;

/// The tier every worker of a proxy shares: `slots` shared-data values of at most `slot_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shared {
    pub slots: u32,
    pub slot_bytes: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuery {
    #[serde(default)]
    include: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
}

/// Where background refreshes go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub cluster: String,
    /// The `:authority` of refresh calls; the stored request's when `None`.
    pub authority: Option<String>,
    pub timeout: Duration,
}

/// The compiled configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub max_object_bytes: usize,
    pub max_memory_bytes: usize,
    /// Upper-case; GET and HEAD unless configured.
    pub methods: Vec<String>,
    pub query: QueryRule,
    pub per_consumer: bool,
    pub stale: StaleLimits,
    /// Without it, `stale-while-revalidate` answers stale only until a request refreshes it
    /// itself (no background refresh): see the docs.
    pub origin: Option<Origin>,
    pub lock_timeout: Duration,
    /// `None`: every worker keeps its own store only.
    pub shared: Option<Shared>,
    /// Where purges come from (the key service's change feed), when configured.
    pub key_service: Option<crate::config::KeyService>,
}

fn err(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::new(FILTER, field, message)
}

fn seconds(d: Duration) -> u64 {
    d.as_secs()
}

impl Config {
    pub fn from_json(json: &[u8]) -> Result<Self, ConfigError> {
        let raw: RawConfig = parse_json(FILTER, json)?;
        let max_object_bytes = raw.max_object_bytes.unwrap_or(DEFAULT_MAX_OBJECT_BYTES);
        if max_object_bytes == 0 || max_object_bytes > MAX_OBJECT_BYTES_LIMIT {
            return Err(err("max_object_bytes", format!("must be between 1 and {MAX_OBJECT_BYTES_LIMIT}")));
        }
        let max_memory_bytes = raw.max_memory_bytes.unwrap_or(DEFAULT_MAX_MEMORY_BYTES);
        if max_memory_bytes > MAX_MEMORY_BYTES_LIMIT {
            return Err(err("max_memory_bytes", format!("must be at most {MAX_MEMORY_BYTES_LIMIT}")));
        }
        if max_memory_bytes < max_object_bytes {
            return Err(err("max_memory_bytes", "must be at least `max_object_bytes`"));
        }
        let methods = match raw.default_methods {
            None => vec!["GET".to_owned(), "HEAD".to_owned()],
            Some(list) => {
                let mut methods = Vec::new();
                for (i, m) in list.iter().enumerate() {
                    let upper = m.to_ascii_uppercase();
                    if !matches!(upper.as_str(), "GET" | "HEAD") {
                        return Err(err(
                            &format!("default_methods[{i}]"),
                            format!("`{m}` cannot be cached (only GET and HEAD)"),
                        ));
                    }
                    methods.push(upper);
                }
                if methods.is_empty() {
                    return Err(err("default_methods", "must name at least one method"));
                }
                methods
            }
        };
        let query = match raw.query {
            None => QueryRule::default(),
            Some(q) => {
                for (list, names) in [("include", &q.include), ("exclude", &q.exclude)] {
                    if let Some(i) = names.iter().position(|n| n.is_empty() || n.contains(['&', '=', '#'])) {
                        return Err(err(&format!("query.{list}[{i}]"), "is not a query parameter name"));
                    }
                }
                if !q.include.is_empty() && !q.exclude.is_empty() {
                    return Err(err("query", "give `include` or `exclude`, not both"));
                }
                QueryRule { include: q.include, exclude: q.exclude }
            }
        };
        let stale = StaleLimits {
            while_revalidate: seconds(raw.stale_while_revalidate_max.unwrap_or(DEFAULT_STALE_MAX)),
            if_error: seconds(raw.stale_if_error_max.unwrap_or(DEFAULT_STALE_MAX)),
        };
        let timeout = raw.refresh_timeout.unwrap_or(DEFAULT_REFRESH_TIMEOUT);
        if timeout.is_zero() {
            return Err(err("refresh_timeout", "must be more than 0"));
        }
        let origin = match (raw.origin_cluster, raw.origin_authority) {
            (Some(cluster), authority) => {
                if cluster.is_empty() {
                    return Err(err("origin_cluster", "must not be empty"));
                }
                if authority
                    .as_deref()
                    .is_some_and(|a| a.is_empty() || !a.bytes().all(|b| b.is_ascii_graphic()))
                {
                    return Err(err("origin_authority", "is not a host[:port]"));
                }
                Some(Origin { cluster, authority, timeout })
            }
            (None, Some(_)) => return Err(err("origin_authority", "needs `origin_cluster`")),
            (None, None) => None,
        };
        let lock_timeout = raw.lock_timeout.unwrap_or(DEFAULT_LOCK_TIMEOUT);
        if lock_timeout > Duration::from_secs(60) {
            return Err(err("lock_timeout", "must be at most 60s"));
        }
        let shared = match raw.shared {
            None => Some(Shared {
                slots: DEFAULT_SHARED_SLOTS,
                slot_bytes: DEFAULT_SHARED_MAX_BYTES / DEFAULT_SHARED_SLOTS as usize,
            }),
            Some(RawShared { slots: Some(0), .. }) => None,
            Some(raw) => {
                let slots = raw.slots.unwrap_or(DEFAULT_SHARED_SLOTS);
                if slots > MAX_SHARED_SLOTS {
                    return Err(err(
                        "shared.slots",
                        format!("must be at most {MAX_SHARED_SLOTS} (0 turns the shared tier off)"),
                    ));
                }
                let max_bytes = raw.max_bytes.unwrap_or(DEFAULT_SHARED_MAX_BYTES);
                if max_bytes > MAX_MEMORY_BYTES_LIMIT {
                    return Err(err("shared.max_bytes", format!("must be at most {MAX_MEMORY_BYTES_LIMIT}")));
                }
                let slot_bytes = max_bytes / slots as usize;
                if slot_bytes < 1024 {
                    return Err(err(
                        "shared.max_bytes",
                        "must give each slot at least 1024 bytes (max_bytes / slots)",
                    ));
                }
                Some(Shared { slots, slot_bytes })
            }
        };
        let key_service = raw.key_service.map(|k| k.compile(FILTER)).transpose()?;
        Ok(Config {
            shared,
            key_service,
            max_object_bytes,
            max_memory_bytes,
            methods,
            query,
            per_consumer: raw.per_consumer,
            stale,
            origin,
            lock_timeout,
        })
    }
}
