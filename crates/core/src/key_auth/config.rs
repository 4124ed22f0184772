//! The key-auth filter's configuration: a raw serde schema (unknown fields rejected) compiled
//! once into an immutable [`Config`]. Every error names the field it is about.

use std::time::Duration;

use serde::Deserialize;

use crate::config::KeyService;
use crate::duration;
use crate::route::RouteMatch;

/// Upper bound on cache slots: each slot is one shared-data entry of a few hundred bytes.
pub const MAX_SLOTS: u32 = 1 << 20;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    key_service: crate::config::RawKeyService,
    #[serde(default)]
    sources: Option<Vec<RawSource>>,
    #[serde(default)]
    cache: RawCache,
    #[serde(default)]
    failure_mode: FailureMode,
    #[serde(default = "yes")]
    hide_credentials: bool,
    #[serde(default)]
    routes: Vec<RawRoute>,
    #[serde(default)]
    realm: Option<String>,
    #[serde(default)]
    usage: crate::config::RawUsage,
}

pub use crate::config::UsageConfig;

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    #[serde(default)]
    header: Option<String>,
    #[serde(default)]
    query: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    #[serde(default, deserialize_with = "duration::de_opt")]
    ttl: Option<Duration>,
    #[serde(default, deserialize_with = "duration::de_opt")]
    negative_ttl: Option<Duration>,
    #[serde(default, deserialize_with = "duration::de_opt")]
    stale_window: Option<Duration>,
    #[serde(default)]
    slots: Option<u32>,
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
    scopes: Vec<String>,
}

/// What to do when the key service cannot answer and no cached answer may be used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Answer 503. The default: an auth filter fails closed.
    #[default]
    Deny,
    /// Let the request through without an identity (counted in `failure_mode_allowed`).
    Allow,
}

/// Where a key is looked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A request header; with `prefix`, only values starting with it (case-insensitive), which
    /// is stripped (e.g. `authorization` with `Bearer `).
    Header { name: String, prefix: Option<String> },
    /// A query parameter.
    Query { name: String },
}

/// Required scopes for the requests a matcher selects. The first matching rule applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRule {
    pub matcher: RouteMatch,
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    /// How long a verified answer is used without asking the key service again.
    pub ttl: Duration,
    /// How long "no such key" is remembered.
    pub negative_ttl: Duration,
    /// How long past `ttl` a valid answer is still served, at once, while it is refreshed in the
    /// background (and for as long as the refresh fails).
    pub stale_window: Duration,
    /// Number of shared-data slots; bounds the memory the cache can take.
    pub slots: u32,
}

/// The compiled, immutable configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The key service: its cluster, token, call timeout and feed poll interval.
    pub key_service: KeyService,
    pub sources: Vec<Source>,
    pub cache: CacheConfig,
    pub failure_mode: FailureMode,
    pub hide_credentials: bool,
    pub routes: Vec<RouteRule>,
    pub realm: String,
    pub usage: UsageConfig,
}

pub use crate::config::ConfigError;

const FILTER: &str = "key-auth";

fn err(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::new("key-auth", field, message)
}

impl Config {
    /// Parses and checks a JSON configuration.
    pub fn from_json(json: &[u8]) -> Result<Self, ConfigError> {
        Self::try_from(crate::config::parse_json::<RawConfig>("key-auth", json)?)
    }
}

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Self, ConfigError> {
        let ks = raw.key_service.compile(FILTER)?;

        let raw_sources = raw.sources.unwrap_or_else(|| {
            vec![RawSource { header: Some("x-api-key".into()), query: None, prefix: None }]
        });
        if raw_sources.is_empty() {
            return Err(err("sources", "needs at least one header or query source"));
        }
        let mut sources = Vec::with_capacity(raw_sources.len());
        for (i, s) in raw_sources.into_iter().enumerate() {
            let field = format!("sources[{i}]");
            let source = match (s.header, s.query) {
                (Some(name), None) => {
                    let name = crate::config::check_header_name(FILTER, &format!("{field}.header"), &name)?;
                    if name.starts_with(':') || name == "host" {
                        return Err(err(
                            format!("{field}.header"),
                            "cannot read a key from a pseudo-header or host",
                        ));
                    }
                    if s.prefix.as_ref().is_some_and(String::is_empty) {
                        return Err(err(format!("{field}.prefix"), "must not be empty when given"));
                    }
                    Source::Header { name, prefix: s.prefix }
                }
                (None, Some(name)) => {
                    if s.prefix.is_some() {
                        return Err(err(format!("{field}.prefix"), "only applies to header sources"));
                    }
                    if name.is_empty() {
                        return Err(err(format!("{field}.query"), "must not be empty"));
                    }
                    Source::Query { name }
                }
                _ => return Err(err(field, "set exactly one of `header` or `query`")),
            };
            sources.push(source);
        }

        let cache = CacheConfig {
            ttl: raw.cache.ttl.unwrap_or(Duration::from_secs(60)),
            negative_ttl: raw.cache.negative_ttl.unwrap_or(Duration::from_secs(5)),
            stale_window: raw.cache.stale_window.unwrap_or(Duration::from_secs(300)),
            slots: raw.cache.slots.unwrap_or(8192),
        };
        if cache.ttl.is_zero() {
            return Err(err("cache.ttl", "must be greater than zero"));
        }
        if cache.negative_ttl > cache.ttl {
            return Err(err("cache.negative_ttl", "must not exceed cache.ttl"));
        }
        if cache.slots == 0 || cache.slots > MAX_SLOTS {
            return Err(err("cache.slots", format!("must be between 1 and {MAX_SLOTS}")));
        }

        let mut routes = Vec::with_capacity(raw.routes.len());
        for (i, r) in raw.routes.into_iter().enumerate() {
            let field = format!("routes[{i}]");
            let matcher =
                crate::config::route_match(FILTER, &field, r.route_name, r.path_prefix, &r.methods)?;
            for (j, s) in r.scopes.iter().enumerate() {
                if s.is_empty() || s.contains(|c: char| c.is_whitespace() || c == ',') {
                    return Err(err(
                        format!("{field}.scopes[{j}]"),
                        "a scope is a non-empty word without spaces or commas",
                    ));
                }
            }
            routes.push(RouteRule { matcher, scopes: r.scopes });
        }

        let realm = raw.realm.unwrap_or_else(|| "tollgate".to_owned());
        if realm.contains('"') || realm.contains('\\') {
            return Err(err("realm", "must not contain quotes or backslashes"));
        }

        let usage = raw.usage.compile(FILTER)?;

        Ok(Config {
            key_service: ks,
            sources,
            cache,
            failure_mode: raw.failure_mode,
            hide_credentials: raw.hide_credentials,
            routes,
            realm,
            usage,
        })
    }
}

impl Config {
    /// Whether any rule matches on the Envoy route name (only then is it read per request).
    pub fn routes_by_name(&self) -> bool {
        self.routes.iter().any(|r| r.matcher.route_name.is_some())
    }

    pub fn routes_by_path(&self) -> bool {
        self.routes.iter().any(|r| r.matcher.path_prefix.is_some())
    }

    /// The scopes required for a request: those of the first matching rule, else none.
    pub fn required_scopes(&self, req: &crate::route::RequestFacts<'_>) -> &[String] {
        self.routes.iter().find(|r| r.matcher.matches(req)).map_or(&[][..], |r| r.scopes.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Config, ConfigError> {
        Config::from_json(json.as_bytes())
    }

    const MINIMAL: &str = r#"{"key_service": {"cluster": "keyd", "token": "t"}}"#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.key_service.cluster, "keyd");
        assert_eq!(c.key_service.timeout, Duration::from_millis(500));
        assert_eq!(c.sources, vec![Source::Header { name: "x-api-key".into(), prefix: None }]);
        assert_eq!(c.cache.ttl, Duration::from_secs(60));
        assert_eq!(c.cache.slots, 8192);
        assert_eq!(c.failure_mode, FailureMode::Deny);
        assert!(c.hide_credentials);
        assert_eq!(c.realm, "tollgate");
    }

    #[test]
    fn full_example_parses() {
        let c = parse(
            r#"{
              "key_service": {"cluster": "tollgate_keyd", "timeout": "250ms", "token": "tgd_x", "poll_interval": "1s"},
              "sources": [{"header": "X-Api-Key"}, {"header": "authorization", "prefix": "Bearer "}, {"query": "api_key"}],
              "cache": {"ttl": "30s", "negative_ttl": "2s", "stale_window": "10m", "slots": 1024},
              "failure_mode": "allow",
              "hide_credentials": false,
              "routes": [{"path_prefix": "/admin", "methods": ["post"], "scopes": ["admin"]}]
            }"#,
        )
        .unwrap();
        assert_eq!(c.sources.len(), 3);
        assert_eq!(c.sources[0], Source::Header { name: "x-api-key".into(), prefix: None });
        assert_eq!(c.routes[0].matcher.methods, vec!["POST"]);
        assert_eq!(c.failure_mode, FailureMode::Allow);
        assert_eq!(c.cache.stale_window, Duration::from_secs(600));
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (r#"{"key_service": {"cluster": "k"}}"#, "key_service", "token"),
            (
                r#"{"key_service": {"cluster": "k", "token": "t", "timeout": "5"}}"#,
                "key_service.timeout",
                "no unit",
            ),
            (
                r#"{"key_service": {"cluster": "k", "token": "t", "timeout": "0ms"}}"#,
                "key_service.timeout",
                "between",
            ),
            (r#"{"key_service": {"cluster": "", "token": "t"}}"#, "key_service.cluster", "cluster"),
            (
                r#"{"key_service": {"cluster": "k", "token": "t"}, "sourcez": []}"#,
                "sourcez",
                "unknown field `sourcez`",
            ),
            (r#"{"key_service": {"cluster": "k", "token": "t"}, "sources": []}"#, "sources", "at least one"),
            (
                r#"{"key_service": {"cluster": "k", "token": "t"}, "sources": [{"header": "a", "query": "b"}]}"#,
                "sources[0]",
                "exactly one",
            ),
            (
                r#"{"key_service": {"cluster": "k", "token": "t"}, "sources": [{"header": "bad header"}]}"#,
                "sources[0].header",
                "not a valid header",
            ),
            (
                r#"{"key_service": {"cluster": "k", "token": "t"}, "sources": [{"query": "k", "prefix": "x"}]}"#,
                "sources[0].prefix",
                "only applies",
            ),
            (
                r#"{"key_service": {"cluster": "k", "token": "t"}, "cache": {"slots": 0}}"#,
                "cache.slots",
                "between",
            ),
            (
                r#"{"key_service": {"cluster": "k", "token": "t"}, "cache": {"ttl": "1s", "negative_ttl": "5s"}}"#,
                "cache.negative_ttl",
                "exceed",
            ),
            (
                r#"{"key_service": {"cluster": "k", "token": "t"}, "failure_mode": "maybe"}"#,
                "failure_mode",
                "unknown variant",
            ),
            (
                r#"{"key_service": {"cluster": "k", "token": "t"}, "routes": [{"path_prefix": "admin"}]}"#,
                "routes[0].path_prefix",
                "start with",
            ),
            (
                r#"{"key_service": {"cluster": "k", "token": "t"}, "routes": [{"methods": ["GE T"]}]}"#,
                "routes[0].methods[0]",
                "not an HTTP method",
            ),
            (
                r#"{"key_service": {"cluster": "k", "token": "t"}, "routes": [{"scopes": ["a b"]}]}"#,
                "routes[0].scopes[0]",
                "scope",
            ),
            ("not json", "<root>", "expected"),
        ];
        for (json, field, text) in cases {
            let e = parse(json).unwrap_err();
            assert_eq!(e.field, field, "{json}: {e}");
            assert!(e.message.contains(text), "{json}: {e}");
            assert!(e.to_string().contains(field));
        }
    }

    #[test]
    fn token_is_redacted_in_debug() {
        let c = parse(r#"{"key_service": {"cluster": "k", "token": "tgd_verysecret"}}"#).unwrap();
        assert!(!format!("{c:?}").contains("verysecret"));
    }

    #[test]
    fn first_matching_route_rule_decides_scopes() {
        let c = parse(
            r#"{"key_service": {"cluster": "k", "token": "t"}, "routes": [
                {"path_prefix": "/admin", "methods": ["POST"], "scopes": ["admin"]},
                {"path_prefix": "/admin", "scopes": ["read"]}]}"#,
        )
        .unwrap();
        let req = |path, method| crate::route::RequestFacts { route_name: None, path, method };
        assert_eq!(c.required_scopes(&req("/admin/x", "POST")), ["admin".to_owned()]);
        assert_eq!(c.required_scopes(&req("/admin/x", "GET")), ["read".to_owned()]);
        assert!(c.required_scopes(&req("/public", "GET")).is_empty());
    }
}
