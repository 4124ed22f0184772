//! The request-signing filter's configuration: a raw serde schema (unknown fields rejected)
//! compiled once into an immutable [`Config`]. Every error names the field it is about.

use std::time::Duration;

use serde::Deserialize;

use super::sf;
use super::verify::{DigestPolicy, Policy};
use crate::config::KeyService;
use crate::duration;
use crate::route::{RequestFacts, RouteMatch};

/// Upper bound on cache and replay slots.
pub const MAX_SLOTS: u32 = 1 << 20;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    key_service: crate::config::RawKeyService,
    #[serde(default)]
    policy: RawPolicy,
    #[serde(default)]
    routes: Vec<RawRoute>,
    #[serde(default)]
    max_body_bytes: Option<u64>,
    #[serde(default)]
    cache: RawCache,
    #[serde(default)]
    replay: RawReplay,
    #[serde(default)]
    realm: Option<String>,
    #[serde(default)]
    usage: crate::config::RawUsage,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    required_components: Option<Vec<String>>,
    #[serde(default)]
    content_digest: Option<DigestPolicy>,
    #[serde(default, deserialize_with = "duration::de_opt")]
    clock_skew: Option<Duration>,
    #[serde(default, deserialize_with = "duration::de_opt")]
    max_age: Option<Duration>,
    #[serde(default)]
    require_expires: Option<bool>,
    #[serde(default)]
    require_nonce: Option<bool>,
    #[serde(default)]
    tag: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    #[serde(default)]
    route_name: Option<String>,
    #[serde(default)]
    path_prefix: Option<String>,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    policy: RawPolicy,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    #[serde(default, deserialize_with = "duration::de_opt")]
    ttl: Option<Duration>,
    #[serde(default, deserialize_with = "duration::de_opt")]
    negative_ttl: Option<Duration>,
    #[serde(default)]
    slots: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReplay {
    #[serde(default)]
    slots: Option<u32>,
}

/// A policy for the requests a matcher selects; the first matching rule applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRule {
    pub matcher: RouteMatch,
    pub policy: Policy,
}

/// The compiled, immutable configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The key service: its cluster, token, call timeout and feed poll interval.
    pub key_service: KeyService,
    pub policy: Policy,
    pub routes: Vec<RouteRule>,
    pub max_body_bytes: u64,
    pub cache_ttl: Duration,
    pub negative_ttl: Duration,
    pub cache_slots: u32,
    pub replay_slots: u32,
    pub realm: String,
    pub usage: crate::config::UsageConfig,
}

impl Config {
    /// The policy for a request.
    /// Whether any route policy matches on the path.
    pub fn routes_by_path(&self) -> bool {
        self.routes.iter().any(|r| r.matcher.path_prefix.is_some())
    }

    pub fn policy_for(&self, facts: &RequestFacts<'_>) -> &Policy {
        self.routes.iter().find(|r| r.matcher.matches(facts)).map_or(&self.policy, |r| &r.policy)
    }

    /// The longest replay window of any policy, in seconds.
    pub fn max_replay_window_s(&self) -> i64 {
        self.routes.iter().map(|r| r.policy.replay_window_s()).fold(self.policy.replay_window_s(), i64::max)
    }
}

pub use crate::config::ConfigError;

const FILTER: &str = "request-signing";

fn err(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::new(FILTER, field, message)
}

/// The default covered components.
pub const DEFAULT_COMPONENTS: [&str; 4] = ["@method", "@authority", "@path", "@query"];

const SUPPORTED_DERIVED: [&str; 8] =
    ["@method", "@target-uri", "@authority", "@scheme", "@request-target", "@path", "@query", "@query-param"];

impl Config {
    /// Parses and checks a JSON configuration.
    pub fn from_json(json: &[u8]) -> Result<Self, ConfigError> {
        let raw: RawConfig = crate::config::parse_json(FILTER, json)?;
        Self::try_from(raw)
    }
}

fn compile_policy(field: &str, raw: RawPolicy, base: Option<&Policy>) -> Result<Policy, ConfigError> {
    let components = match raw.required_components {
        Some(list) => {
            let mut out = Vec::with_capacity(list.len());
            for (i, c) in list.into_iter().enumerate() {
                out.push(check_component(&format!("{field}.required_components[{i}]"), &c)?);
            }
            out
        }
        None => base.map_or_else(
            || DEFAULT_COMPONENTS.iter().map(|c| (*c).to_owned()).collect(),
            |b| b.required_components.clone(),
        ),
    };
    let clock_skew =
        raw.clock_skew.map(|d| d.as_secs() as i64).or(base.map(|b| b.clock_skew_s)).unwrap_or(30);
    let max_age = raw.max_age.map(|d| d.as_secs() as i64).or(base.map(|b| b.max_age_s)).unwrap_or(300);
    if !(0..=3_600).contains(&clock_skew) {
        return Err(err(format!("{field}.clock_skew"), "must be between 0s and 1h"));
    }
    if !(1..=86_400).contains(&max_age) {
        return Err(err(format!("{field}.max_age"), "must be between 1s and 1d"));
    }
    let label = raw.label.or_else(|| base.and_then(|b| b.label.clone()));
    if let Some(label) = &label
        && sf::parse_dictionary(&format!("{label}=1")).map(|d| d.len()) != Ok(1)
    {
        return Err(err(format!("{field}.label"), format!("`{label}` is not a structured-field key")));
    }
    Ok(Policy {
        label,
        required_components: components,
        content_digest: raw.content_digest.or(base.map(|b| b.content_digest)).unwrap_or_default(),
        clock_skew_s: clock_skew,
        max_age_s: max_age,
        require_expires: raw.require_expires.or(base.map(|b| b.require_expires)).unwrap_or(false),
        require_nonce: raw.require_nonce.or(base.map(|b| b.require_nonce)).unwrap_or(false),
        tag: raw.tag.or_else(|| base.and_then(|b| b.tag.clone())),
    })
}

/// Accepts `@method`, `content-type` or a full identifier such as `"@query-param";name="id"`.
fn check_component(field: &str, text: &str) -> Result<String, ConfigError> {
    let bad = |why: &str| err(field, format!("`{text}` {why}"));
    if text.starts_with('"') {
        let item = sf::parse_item(text).map_err(|_| bad("is not a component identifier"))?;
        let name = super::base::identifier_name(&item).ok_or_else(|| bad("is not a component identifier"))?;
        if name.starts_with('@') && !SUPPORTED_DERIVED.contains(&name) {
            return Err(bad("is not a supported derived component"));
        }
        return Ok(super::base::identifier_text(&item));
    }
    if text.starts_with('@') {
        if !SUPPORTED_DERIVED.contains(&text) || text == "@query-param" {
            return Err(bad(
                "is not a supported derived component (write @query-param as \"@query-param\";name=\"x\")",
            ));
        }
        return Ok(text.to_owned());
    }
    let valid = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !valid {
        return Err(bad("is not a lowercase header name"));
    }
    Ok(text.to_owned())
}

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Self, ConfigError> {
        let ks = raw.key_service.compile(FILTER)?;
        let policy = compile_policy("policy", raw.policy, None)?;
        let mut routes = Vec::with_capacity(raw.routes.len());
        for (i, r) in raw.routes.into_iter().enumerate() {
            let field = format!("routes[{i}]");
            let matcher =
                crate::config::route_match(FILTER, &field, r.route_name, r.path_prefix, &r.methods)?;
            let route_policy = compile_policy(&format!("{field}.policy"), r.policy, Some(&policy))?;
            routes.push(RouteRule { matcher, policy: route_policy });
        }
        let max_body_bytes = raw.max_body_bytes.unwrap_or(1 << 20);
        if max_body_bytes == 0 || max_body_bytes > 64 << 20 {
            return Err(err("max_body_bytes", "must be between 1 and 67108864"));
        }
        let cache_ttl = raw.cache.ttl.unwrap_or(Duration::from_secs(60));
        let negative_ttl = raw.cache.negative_ttl.unwrap_or(Duration::from_secs(5));
        if cache_ttl.is_zero() {
            return Err(err("cache.ttl", "must be greater than zero"));
        }
        if negative_ttl > cache_ttl {
            return Err(err("cache.negative_ttl", "must not exceed cache.ttl"));
        }
        let cache_slots = raw.cache.slots.unwrap_or(4096);
        if cache_slots == 0 || cache_slots > MAX_SLOTS {
            return Err(err("cache.slots", format!("must be between 1 and {MAX_SLOTS}")));
        }
        let replay_slots = raw.replay.slots.unwrap_or(8192);
        if !(16..=MAX_SLOTS).contains(&replay_slots) {
            return Err(err("replay.slots", format!("must be between 16 and {MAX_SLOTS}")));
        }
        let realm = raw.realm.unwrap_or_else(|| "tollgate".to_owned());
        if realm.contains('"') || realm.contains('\\') {
            return Err(err("realm", "must not contain quotes or backslashes"));
        }
        let usage = raw.usage.compile(FILTER)?;
        Ok(Config {
            key_service: ks,
            policy,
            routes,
            max_body_bytes,
            cache_ttl,
            negative_ttl,
            cache_slots,
            replay_slots,
            realm,
            usage,
        })
    }
}
