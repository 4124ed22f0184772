//! The jwt-auth filter's configuration: a raw serde schema (unknown fields rejected) compiled
//! once into an immutable [`Config`]. Every error names the field it is about.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::claims::{ClaimRules, Requirements};
use super::introspection::Introspection;
use super::jwk::{self, Jwk, Limits};
use super::jws::Alg;
use crate::duration;
use crate::route::RouteMatch;

/// Upper bound on verified-token cache slots (one shared-data entry each).
pub const MAX_SLOTS: u32 = 1 << 20;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    providers: Vec<RawProvider>,
    #[serde(default)]
    sources: Option<Vec<RawSource>>,
    #[serde(default)]
    routes: Vec<RawRoute>,
    #[serde(default)]
    claim_headers: BTreeMap<String, String>,
    #[serde(default = "yes")]
    forward_token: bool,
    #[serde(default)]
    max_token_size: Option<usize>,
    #[serde(default)]
    cache: RawCache,
    #[serde(default)]
    realm: Option<String>,
    #[serde(default)]
    usage: Option<crate::config::RawUsage>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    name: String,
    issuer: String,
    audiences: Vec<String>,
    #[serde(default)]
    algorithms: Option<Vec<String>>,
    #[serde(default)]
    jwks: Option<Value>,
    #[serde(default)]
    remote_jwks: Option<RawRemote>,
    #[serde(default)]
    discovery: Option<RawDiscovery>,
    #[serde(default)]
    introspection: Option<RawIntrospection>,
    #[serde(default = "yes")]
    require_exp: bool,
    #[serde(default, deserialize_with = "duration::de_opt")]
    clock_skew: Option<Duration>,
    #[serde(default, deserialize_with = "duration::de_opt")]
    max_lifetime: Option<Duration>,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    require_subject: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRemote {
    #[serde(default)]
    cluster: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    authority: Option<String>,
    #[serde(default, deserialize_with = "duration::de_opt")]
    timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration::de_opt")]
    refresh_interval: Option<Duration>,
    #[serde(default, deserialize_with = "duration::de_opt")]
    refetch_cooldown: Option<Duration>,
    #[serde(default, deserialize_with = "duration::de_opt")]
    max_stale: Option<Duration>,
    #[serde(default)]
    max_bytes: Option<usize>,
    #[serde(default)]
    max_keys: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDiscovery {
    cluster: String,
    #[serde(default)]
    authority: Option<String>,
    #[serde(default)]
    path: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIntrospection {
    #[serde(default)]
    cluster: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    authority: Option<String>,
    client_id: String,
    client_secret: String,
    #[serde(default, deserialize_with = "duration::de_opt")]
    timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration::de_opt")]
    cache_ttl: Option<Duration>,
}

impl std::fmt::Debug for RawIntrospection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawIntrospection")
            .field("cluster", &self.cluster)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    #[serde(default)]
    header: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    query: Option<String>,
    #[serde(default)]
    cookie: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    #[serde(default)]
    slots: Option<u32>,
    #[serde(default, deserialize_with = "duration::de_opt")]
    max_ttl: Option<Duration>,
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
    providers: Option<Vec<String>>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    claims: BTreeMap<String, String>,
}

/// Where a token is looked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A header; with `prefix` only values starting with it (case-insensitive), stripped.
    Header {
        name: String,
        prefix: Option<String>,
    },
    Query {
        name: String,
    },
    Cookie {
        name: String,
    },
}

/// A JWKS fetched through an Envoy cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub cluster: String,
    /// Empty when it is taken from the discovery document's `jwks_uri`.
    pub path: String,
    /// Where the OpenID discovery document is fetched (through `cluster`), if configured.
    pub discovery: Option<Discovery>,
    pub authority: String,
    pub timeout: Duration,
    /// How often the key set is fetched again.
    pub refresh_interval: Duration,
    /// Least time between two fetches caused by unknown `kid`s.
    pub refetch_cooldown: Duration,
    /// How long the last good key set is used while fetches fail.
    pub max_stale: Duration,
    pub limits: Limits,
}

/// An OpenID discovery document (on the key set's cluster and authority).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Inline(Vec<Jwk>),
    Remote(Remote),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    pub name: String,
    pub rules: ClaimRules,
    pub algorithms: Vec<Alg>,
    pub keys: KeySource,
    /// Introspection of opaque tokens (RFC 7662).
    pub introspection: Option<Introspection>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRule {
    pub matcher: RouteMatch,
    /// Indexes into [`Config::providers`]; all of them when the rule names none.
    pub providers: Vec<usize>,
    pub requirements: Requirements,
}

/// The compiled, immutable configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub providers: Vec<Provider>,
    pub sources: Vec<Source>,
    pub routes: Vec<RouteRule>,
    /// Upstream header → claim name.
    pub claim_headers: Vec<(String, String)>,
    pub forward_token: bool,
    pub max_token_size: usize,
    pub cache_slots: u32,
    /// Longest a verified token stays cached (also for tokens without `exp`).
    pub cache_max_ttl: Duration,
    pub realm: String,
    /// Requests per verified subject, reported to this key service; `None`: not reported.
    pub usage: Option<(crate::config::UsageConfig, crate::config::KeyService)>,
}

pub use crate::config::ConfigError;

const FILTER: &str = "jwt-auth";

pub fn err(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::new(FILTER, field, message)
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

impl Config {
    /// Parses and checks a JSON configuration.
    pub fn from_json(json: &[u8]) -> Result<Self, ConfigError> {
        let raw: RawConfig = crate::config::parse_json(FILTER, json)?;
        Self::try_from(raw)
    }

    /// Whether any rule matches on the path.
    pub fn routes_by_path(&self) -> bool {
        self.routes.iter().any(|r| r.matcher.path_prefix.is_some())
    }

    /// Whether any rule matches on Envoy's route name (read only then: one host call less).
    pub fn routes_by_name(&self) -> bool {
        self.routes.iter().any(|r| r.matcher.route_name.is_some())
    }

    /// The rule for a request: the first matching one, else `None` (all providers, no
    /// requirements).
    pub fn rule(&self, req: &crate::route::RequestFacts<'_>) -> Option<&RouteRule> {
        self.routes.iter().find(|r| r.matcher.matches(req))
    }
}

fn provider(i: usize, p: RawProvider) -> Result<Provider, ConfigError> {
    let f = |name: &str| format!("providers[{i}].{name}");
    if p.name.is_empty() || !p.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b)) {
        return Err(err(f("name"), "must be letters, digits, `-` or `_`"));
    }
    if p.issuer.is_empty() {
        return Err(err(f("issuer"), "must not be empty"));
    }
    if !super::claims::header_safe(&p.issuer) {
        // It is passed on in `x-tollgate-issuer`.
        return Err(err(f("issuer"), "must have no control characters and no space at either end"));
    }
    if p.audiences.is_empty() || p.audiences.iter().any(String::is_empty) {
        return Err(err(f("audiences"), "needs at least one non-empty audience"));
    }
    let algorithms = match p.algorithms {
        None => Alg::ALL.into_iter().filter(|a| !a.is_hmac()).collect(),
        Some(names) => {
            if names.is_empty() {
                return Err(err(f("algorithms"), "must not be empty"));
            }
            let mut out = Vec::with_capacity(names.len());
            for (j, name) in names.iter().enumerate() {
                let alg = Alg::from_name(name).ok_or_else(|| {
                    err(
                        format!("providers[{i}].algorithms[{j}]"),
                        format!("`{name}` is not supported (HS256/384/512, RS256/384/512, PS256/384/512, ES256, ES384, EdDSA)"),
                    )
                })?;
                out.push(alg);
            }
            out
        }
    };
    let keys = match (p.jwks, p.remote_jwks) {
        (Some(doc), None) => {
            let doc = match doc {
                Value::String(text) => serde_json::from_str(&text).map_err(|e| {
                    err(f("jwks"), format!("not JSON: {}", crate::config::strip_position(&e.to_string())))
                })?,
                other => other,
            };
            let limits = Limits { max_bytes: usize::MAX, max_keys: 64 };
            KeySource::Inline(jwk::parse_jwks_value(&doc, limits).map_err(|e| err(f("jwks"), e.to_string()))?)
        }
        (None, remote) if remote.is_some() || p.discovery.is_some() => {
            let r = remote.unwrap_or(RawRemote {
                cluster: None,
                path: None,
                authority: None,
                timeout: None,
                refresh_interval: None,
                refetch_cooldown: None,
                max_stale: None,
                max_bytes: None,
                max_keys: None,
            });
            let discovery = match &p.discovery {
                None => None,
                Some(d) => {
                    if d.cluster.is_empty() {
                        return Err(err(f("discovery.cluster"), "must name an Envoy cluster"));
                    }
                    let path =
                        d.path.clone().unwrap_or_else(|| "/.well-known/openid-configuration".to_owned());
                    if !path.starts_with('/') {
                        return Err(err(f("discovery.path"), "must start with `/`"));
                    }
                    if d.authority.as_ref().is_some_and(String::is_empty) {
                        return Err(err(f("discovery.authority"), "must not be empty when given"));
                    }
                    Some((d.cluster.clone(), d.authority.clone(), path))
                }
            };
            let (cluster, authority, path) = match (&discovery, r.cluster, r.path) {
                (Some(_), _, Some(_)) => {
                    return Err(err(
                        f("remote_jwks.path"),
                        "comes from the discovery document; do not set it",
                    ));
                }
                (Some((dc, _, _)), Some(c), None) if c != *dc => {
                    return Err(err(f("remote_jwks.cluster"), "must be the discovery cluster"));
                }
                (Some((dc, da, _)), _, None) => {
                    let authority = r.authority.or_else(|| da.clone()).unwrap_or_else(|| dc.clone());
                    (dc.clone(), authority, String::new())
                }
                (None, None, _) => return Err(err(f("remote_jwks.cluster"), "must name an Envoy cluster")),
                (None, Some(_), None) => {
                    return Err(err(f("remote_jwks.path"), "is required (or set `discovery`)"));
                }
                (None, Some(c), Some(path)) => {
                    if !path.starts_with('/') {
                        return Err(err(f("remote_jwks.path"), "must start with `/`"));
                    }
                    (c.clone(), r.authority.unwrap_or(c), path)
                }
            };
            if cluster.is_empty() {
                return Err(err(f("remote_jwks.cluster"), "must name an Envoy cluster"));
            }
            let timeout = r.timeout.unwrap_or(Duration::from_secs(2));
            if timeout.is_zero() || timeout > Duration::from_secs(60) {
                return Err(err(f("remote_jwks.timeout"), "must be between 1ms and 60s"));
            }
            let refresh_interval = r.refresh_interval.unwrap_or(Duration::from_secs(300));
            if refresh_interval < Duration::from_secs(1) {
                return Err(err(f("remote_jwks.refresh_interval"), "must be at least 1s"));
            }
            let refetch_cooldown = r.refetch_cooldown.unwrap_or(Duration::from_secs(30));
            let max_stale = r.max_stale.unwrap_or(Duration::from_secs(86_400));
            if max_stale < refresh_interval {
                return Err(err(f("remote_jwks.max_stale"), "must be at least refresh_interval"));
            }
            let limits = Limits {
                max_bytes: r.max_bytes.unwrap_or(Limits::default().max_bytes),
                max_keys: r.max_keys.unwrap_or(Limits::default().max_keys),
            };
            if limits.max_bytes == 0 || limits.max_bytes > 1 << 20 {
                return Err(err(f("remote_jwks.max_bytes"), "must be between 1 and 1048576"));
            }
            if limits.max_keys == 0 || limits.max_keys > 256 {
                return Err(err(f("remote_jwks.max_keys"), "must be between 1 and 256"));
            }
            KeySource::Remote(Remote {
                authority,
                cluster,
                path,
                discovery: discovery.map(|(_, _, path)| Discovery { path }),
                timeout,
                refresh_interval,
                refetch_cooldown,
                max_stale,
                limits,
            })
        }
        _ => {
            return Err(err(
                format!("providers[{i}]"),
                "set exactly one of `jwks` or `remote_jwks` (or `discovery`)",
            ));
        }
    };
    if let KeySource::Inline(jwks) = &keys
        && !jwks.iter().any(|k| algorithms.iter().any(|a| k.material.fits(*a)))
    {
        return Err(err(f("algorithms"), "no key of `jwks` can verify any of these algorithms"));
    }
    let introspection = match p.introspection {
        None => None,
        Some(raw) => Some(introspection(i, raw, &keys)?),
    };
    let clock_skew = p.clock_skew.unwrap_or(Duration::from_secs(60));
    if clock_skew > Duration::from_secs(600) {
        return Err(err(f("clock_skew"), "must be at most 10m"));
    }
    Ok(Provider {
        name: p.name,
        rules: ClaimRules {
            issuer: p.issuer,
            audiences: p.audiences,
            require_exp: p.require_exp,
            clock_skew_s: secs(clock_skew),
            max_lifetime_s: p.max_lifetime.map(secs),
            typ: p.typ,
            require_subject: p.require_subject,
        },
        algorithms,
        keys,
        introspection,
    })
}

fn introspection(i: usize, r: RawIntrospection, keys: &KeySource) -> Result<Introspection, ConfigError> {
    let f = |name: &str| format!("providers[{i}].introspection.{name}");
    let discovered = match keys {
        KeySource::Remote(remote) if remote.discovery.is_some() => Some(remote),
        _ => None,
    };
    let cluster = match (r.cluster, discovered) {
        (Some(c), _) if !c.is_empty() => c,
        (None, Some(remote)) => remote.cluster.clone(),
        _ => return Err(err(f("cluster"), "must name an Envoy cluster")),
    };
    let path = match (r.path, discovered) {
        (Some(p), _) if p.starts_with('/') => p,
        (Some(_), _) => return Err(err(f("path"), "must start with `/`")),
        (None, Some(_)) => String::new(),
        (None, None) => return Err(err(f("path"), "is required (or set `discovery`)")),
    };
    if path.is_empty() && discovered.is_some_and(|d| d.cluster != cluster) {
        return Err(err(f("cluster"), "must be the discovery cluster when `path` is discovered"));
    }
    let authority = match (r.authority, discovered) {
        (Some(a), _) if !a.is_empty() => a,
        (Some(_), _) => return Err(err(f("authority"), "must not be empty when given")),
        (None, Some(remote)) if remote.cluster == cluster => remote.authority.clone(),
        (None, _) => cluster.clone(),
    };
    if r.client_id.is_empty() {
        return Err(err(f("client_id"), "must not be empty"));
    }
    if r.client_secret.is_empty() {
        return Err(err(f("client_secret"), "must not be empty"));
    }
    let timeout = r.timeout.unwrap_or(Duration::from_secs(2));
    if timeout.is_zero() || timeout > Duration::from_secs(60) {
        return Err(err(f("timeout"), "must be between 1ms and 60s"));
    }
    let cache_ttl = r.cache_ttl.unwrap_or(Duration::from_secs(60));
    if cache_ttl < Duration::from_secs(1) || cache_ttl > Duration::from_secs(3600) {
        return Err(err(f("cache_ttl"), "must be between 1s and 1h"));
    }
    Ok(Introspection {
        cluster,
        path,
        authority,
        client_id: r.client_id,
        client_secret: r.client_secret,
        timeout,
        cache_ttl,
    })
}

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Self, ConfigError> {
        if raw.providers.is_empty() {
            return Err(err("providers", "needs at least one provider"));
        }
        let mut providers: Vec<Provider> = Vec::with_capacity(raw.providers.len());
        for (i, p) in raw.providers.into_iter().enumerate() {
            let p = provider(i, p)?;
            if providers.iter().any(|q| q.name == p.name) {
                return Err(err(format!("providers[{i}].name"), format!("`{}` is used twice", p.name)));
            }
            if providers.iter().any(|q| q.rules.issuer == p.rules.issuer) {
                return Err(err(format!("providers[{i}].issuer"), "two providers have this issuer"));
            }
            providers.push(p);
        }

        let raw_sources = raw.sources.unwrap_or_else(|| {
            vec![RawSource {
                header: Some("authorization".into()),
                prefix: Some("Bearer ".into()),
                query: None,
                cookie: None,
            }]
        });
        if raw_sources.is_empty() {
            return Err(err("sources", "needs at least one source"));
        }
        let mut sources = Vec::with_capacity(raw_sources.len());
        for (i, s) in raw_sources.into_iter().enumerate() {
            let field = format!("sources[{i}]");
            let source = match (s.header, s.query, s.cookie) {
                (Some(name), None, None) => {
                    let name = crate::config::check_header_name(FILTER, &format!("{field}.header"), &name)?;
                    if s.prefix.as_ref().is_some_and(String::is_empty) {
                        return Err(err(format!("{field}.prefix"), "must not be empty when given"));
                    }
                    Source::Header { name, prefix: s.prefix }
                }
                (None, Some(name), None) if !name.is_empty() && s.prefix.is_none() => Source::Query { name },
                (None, None, Some(name)) if !name.is_empty() && s.prefix.is_none() => Source::Cookie { name },
                _ => {
                    return Err(err(
                        field,
                        "set exactly one non-empty `header`, `query` or `cookie` (`prefix` only with `header`)",
                    ));
                }
            };
            sources.push(source);
        }

        let mut routes = Vec::with_capacity(raw.routes.len());
        for (i, r) in raw.routes.into_iter().enumerate() {
            let field = format!("routes[{i}]");
            let matcher =
                crate::config::route_match(FILTER, &field, r.route_name, r.path_prefix, &r.methods)?;
            let route_providers = match r.providers {
                None => (0..providers.len()).collect(),
                Some(names) => {
                    if names.is_empty() {
                        return Err(err(format!("{field}.providers"), "must not be empty when given"));
                    }
                    let mut out = Vec::with_capacity(names.len());
                    for (j, name) in names.iter().enumerate() {
                        let idx = providers.iter().position(|p| p.name == *name).ok_or_else(|| {
                            err(format!("{field}.providers[{j}]"), format!("no provider is named `{name}`"))
                        })?;
                        out.push(idx);
                    }
                    out
                }
            };
            for (j, s) in r.scopes.iter().enumerate() {
                if s.is_empty() || s.contains(char::is_whitespace) {
                    return Err(err(
                        format!("{field}.scopes[{j}]"),
                        "a scope is a non-empty word without spaces",
                    ));
                }
            }
            routes.push(RouteRule {
                matcher,
                providers: route_providers,
                requirements: Requirements { scopes: r.scopes, claims: r.claims.into_iter().collect() },
            });
        }

        let mut claim_headers = Vec::with_capacity(raw.claim_headers.len());
        for (header, claim) in raw.claim_headers {
            let field = format!("claim_headers.{header}");
            let name = crate::config::check_header_name(FILTER, &field, &header)?;
            if name.starts_with(':') || name == "host" || name == "authorization" || name == "cookie" {
                return Err(err(field, "cannot be a pseudo-header, host, authorization or cookie"));
            }
            if claim.is_empty() {
                return Err(err(field, "must name a claim"));
            }
            claim_headers.push((name, claim));
        }

        let max_token_size = raw.max_token_size.unwrap_or(8192);
        if !(64..=65_536).contains(&max_token_size) {
            return Err(err("max_token_size", "must be between 64 and 65536"));
        }
        let cache_slots = raw.cache.slots.unwrap_or(4096);
        if cache_slots > MAX_SLOTS {
            return Err(err("cache.slots", format!("must be at most {MAX_SLOTS} (0 turns the cache off)")));
        }
        let cache_max_ttl = raw.cache.max_ttl.unwrap_or(Duration::from_secs(300));
        let realm = raw.realm.unwrap_or_else(|| "tollgate".to_owned());
        if realm.contains('"') || realm.contains('\\') {
            return Err(err("realm", "must not contain quotes or backslashes"));
        }
        Ok(Config {
            providers,
            sources,
            routes,
            claim_headers,
            forward_token: raw.forward_token,
            max_token_size,
            cache_slots,
            cache_max_ttl,
            realm,
            usage: raw.usage.map(|u| u.compile_reporting(FILTER)).transpose()?.flatten(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = r#"{"kty":"EC","crv":"P-256","kid":"k1","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;

    fn cfg(providers: &str, rest: &str) -> Result<Config, ConfigError> {
        Config::from_json(format!(r#"{{"providers": [{providers}]{rest}}}"#).as_bytes())
    }

    fn inline() -> String {
        format!(r#"{{"name":"idp","issuer":"https://idp","audiences":["api"],"jwks":{{"keys":[{KEY}]}}}}"#)
    }

    fn field_of(r: Result<Config, ConfigError>) -> String {
        r.unwrap_err().field
    }

    #[test]
    fn minimal_config_gets_safe_defaults() {
        let c = cfg(&inline(), "").unwrap();
        let p = &c.providers[0];
        assert!(p.rules.require_exp);
        assert_eq!(p.rules.clock_skew_s, 60);
        assert!(!p.algorithms.iter().any(|a| a.is_hmac()), "HMAC only when listed");
        assert_eq!(
            c.sources,
            vec![Source::Header { name: "authorization".into(), prefix: Some("Bearer ".into()) }]
        );
        assert!(c.forward_token);
        assert_eq!(c.max_token_size, 8192);
    }

    #[test]
    fn the_documented_example_parses() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/jwt-auth.md")).unwrap();
        let start = text.find("```json\n").unwrap() + 8;
        let end = start + text[start..].find("```").unwrap();
        let c = Config::from_json(&text.as_bytes()[start..end]).unwrap();
        assert!(matches!(c.providers[0].keys, KeySource::Remote(_)));
        assert!(!c.routes.is_empty());
    }

    #[test]
    fn errors_name_the_field() {
        assert!(Config::from_json(b"{}").unwrap_err().message.contains("`providers`"));
        assert_eq!(field_of(cfg("", "")), "providers");
        assert_eq!(field_of(cfg(&inline(), r#","bogus":1"#)), "bogus");
        let no_aud =
            format!(r#"{{"name":"idp","issuer":"https://idp","audiences":[],"jwks":{{"keys":[{KEY}]}}}}"#);
        assert_eq!(field_of(cfg(&no_aud, "")), "providers[0].audiences");
        let bad_alg = inline().replace(r#""audiences""#, r#""algorithms":["ES256","none"],"audiences""#);
        assert_eq!(field_of(cfg(&bad_alg, "")), "providers[0].algorithms[1]");
        let hs_only = inline().replace(r#""audiences""#, r#""algorithms":["HS256"],"audiences""#);
        assert_eq!(field_of(cfg(&hs_only, "")), "providers[0].algorithms");
        let both =
            inline().replace(r#""audiences""#, r#""remote_jwks":{"cluster":"c","path":"/k"},"audiences""#);
        assert_eq!(field_of(cfg(&both, "")), "providers[0]");
        let dup = r#"{"name":"idp","issuer":"https://idp","audiences":["a"],"jwks":{"keys":[{"kty":"oct","kid":"x","k":"AQID"},{"kty":"oct","kid":"x","k":"AQID"}]}}"#;
        let e = cfg(dup, "").unwrap_err();
        assert_eq!(e.field, "providers[0].jwks");
        assert!(e.message.contains("kid `x`"), "{e}");
        assert_eq!(field_of(cfg(&format!("{},{}", inline(), inline()), "")), "providers[1].name");
        assert_eq!(
            field_of(cfg(&inline(), r#","routes":[{"providers":["nope"]}]"#)),
            "routes[0].providers[0]"
        );
        assert_eq!(field_of(cfg(&inline(), r#","sources":[{"query":"t","prefix":"x"}]"#)), "sources[0]");
        assert_eq!(field_of(cfg(&inline(), r#","claim_headers":{"x y":"email"}"#)), "claim_headers.x y");
        assert_eq!(
            field_of(cfg(&inline(), r#","claim_headers":{"authorization":"email"}"#)),
            "claim_headers.authorization"
        );
        let skew = inline().replace(r#""audiences""#, r#""clock_skew":"5 s","audiences""#);
        assert_eq!(field_of(cfg(&skew, "")), "providers[0].clock_skew");
        let remote = r#"{"name":"r","issuer":"https://r","audiences":["a"],"remote_jwks":{"cluster":"c","path":"keys"}}"#;
        assert_eq!(field_of(cfg(remote, "")), "providers[0].remote_jwks.path");
        assert_eq!(field_of(cfg(&inline(), r#","max_token_size":10"#)), "max_token_size");
        let e = cfg(&inline().replace("https://idp", "https://idp\\n"), "").unwrap_err();
        assert_eq!(e.field, "providers[0].issuer");
        assert!(e.message.contains("control characters"), "{e}");
    }

    #[test]
    fn introspection_and_discovery() {
        let p = r#"{"name":"r","issuer":"https://r","audiences":["a"],
            "discovery":{"cluster":"idp","authority":"idp.test"},
            "introspection":{"client_id":"gw","client_secret":"s3cret","cache_ttl":"30s"}}"#;
        let c = cfg(p, "").unwrap();
        let KeySource::Remote(r) = &c.providers[0].keys else { panic!("not remote") };
        assert_eq!((r.cluster.as_str(), r.authority.as_str(), r.path.as_str()), ("idp", "idp.test", ""));
        assert_eq!(r.discovery.as_ref().unwrap().path, "/.well-known/openid-configuration");
        let i = c.providers[0].introspection.as_ref().unwrap();
        assert_eq!((i.cluster.as_str(), i.authority.as_str(), i.path.as_str()), ("idp", "idp.test", ""));
        assert_eq!(i.cache_ttl, Duration::from_secs(30));
        assert!(!format!("{c:?}").contains("s3cret"), "secret redacted");

        let explicit = inline().replace(
            r#""audiences""#,
            r#""introspection":{"cluster":"i","path":"/introspect","client_id":"gw","client_secret":"x"},"audiences""#,
        );
        let i = cfg(&explicit, "").unwrap().providers[0].introspection.clone().unwrap();
        assert_eq!((i.authority.as_str(), i.path.as_str()), ("i", "/introspect"));
        assert_eq!(i.timeout, Duration::from_secs(2));

        let no_path = explicit.replace(r#""path":"/introspect","#, "");
        assert_eq!(field_of(cfg(&no_path, "")), "providers[0].introspection.path");
        let no_secret = explicit.replace(r#""client_secret":"x""#, r#""client_secret":"""#);
        assert_eq!(field_of(cfg(&no_secret, "")), "providers[0].introspection.client_secret");
        let ttl = explicit.replace(r#""client_id""#, r#""cache_ttl":"2h","client_id""#);
        assert_eq!(field_of(cfg(&ttl, "")), "providers[0].introspection.cache_ttl");
        let both = p.replace(r#""discovery""#, r#""remote_jwks":{"path":"/k"},"discovery""#);
        assert_eq!(field_of(cfg(&both, "")), "providers[0].remote_jwks.path");
        let other = p.replace(r#""discovery""#, r#""remote_jwks":{"cluster":"x"},"discovery""#);
        assert_eq!(field_of(cfg(&other, "")), "providers[0].remote_jwks.cluster");
        let bad = p.replace(r#""authority":"idp.test""#, r#""path":"well-known""#);
        assert_eq!(field_of(cfg(&bad, "")), "providers[0].discovery.path");
        let no_path = r#"{"name":"r","issuer":"https://r","audiences":["a"],"remote_jwks":{"cluster":"c"}}"#;
        assert_eq!(field_of(cfg(no_path, "")), "providers[0].remote_jwks.path");
    }

    #[test]
    fn routes_pick_providers_and_requirements() {
        let c = cfg(
            &inline(),
            r#","routes":[{"path_prefix":"/admin","providers":["idp"],"scopes":["admin"],"claims":{"tenant":"acme"}}]"#,
        )
        .unwrap();
        let facts = crate::route::RequestFacts { route_name: None, path: "/admin/x", method: "GET" };
        let rule = c.rule(&facts).unwrap();
        assert_eq!(rule.providers, vec![0]);
        assert_eq!(rule.requirements.scopes, vec!["admin"]);
        assert_eq!(rule.requirements.claims, vec![("tenant".to_owned(), "acme".to_owned())]);
        let other = crate::route::RequestFacts { route_name: None, path: "/public", method: "GET" };
        assert!(c.rule(&other).is_none());
    }
}
