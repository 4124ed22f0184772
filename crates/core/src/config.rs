//! What every filter's configuration shares: the error that names the bad field, JSON parsing
//! into raw serde types (the field path of a serde error becomes the error's field), and small
//! checks used by several schemas.

use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::duration;
use crate::secret::Secret;

/// A configuration error: which filter, which field (a path such as `rules[2].limits[0].per`),
/// for rule-based configs which rule, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub filter: &'static str,
    pub field: String,
    pub rule: Option<String>,
    pub message: String,
}

impl ConfigError {
    pub fn new(filter: &'static str, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { filter, field: field.into(), rule: None, message: message.into() }
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid {} config: ", self.filter)?;
        if let Some(rule) = &self.rule {
            write!(f, "rule `{rule}`: ")?;
        }
        write!(f, "`{}`: {}", self.field, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Deserializes `json` into `T`; a serde error names the field it is about (`<root>` for the
/// document itself).
pub fn parse_json<T: DeserializeOwned>(filter: &'static str, json: &[u8]) -> Result<T, ConfigError> {
    let de = &mut serde_json::Deserializer::from_slice(json);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "<root>".to_owned() } else { path };
        ConfigError::new(filter, field, strip_position(&e.inner().to_string()))
    })
}

/// serde_json appends " at line 1 column 42"; the field path already says where.
pub fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// Whether `name` is an HTTP header name (an RFC 9110 token).
pub fn is_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `name` lower-cased if it is a header name, else an error about `field`.
pub fn check_header_name(filter: &'static str, field: &str, name: &str) -> Result<String, ConfigError> {
    if is_header_name(name) {
        Ok(name.to_ascii_lowercase())
    } else {
        Err(ConfigError::new(filter, field, format!("`{name}` is not a valid header name")))
    }
}

/// Compiles a rule's route matcher: `path_prefix` must start with `/`, each method must be a
/// word of letters (stored upper-case). `field` is the rule's path, e.g. `routes[2]`.
pub fn route_match(
    filter: &'static str,
    field: &str,
    route_name: Option<String>,
    path_prefix: Option<String>,
    methods: &[String],
) -> Result<crate::route::RouteMatch, ConfigError> {
    if path_prefix.as_ref().is_some_and(|p| !p.starts_with('/')) {
        return Err(ConfigError::new(filter, format!("{field}.path_prefix"), "must start with `/`"));
    }
    let mut upper = Vec::with_capacity(methods.len());
    for (i, m) in methods.iter().enumerate() {
        if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(ConfigError::new(
                filter,
                format!("{field}.methods[{i}]"),
                format!("`{m}` is not an HTTP method"),
            ));
        }
        upper.push(m.to_ascii_uppercase());
    }
    Ok(crate::route::RouteMatch { route_name, path_prefix, methods: upper })
}

/// The `key_service` block of the filters that call the Tollgate key service.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeyService {
    cluster: String,
    token: Secret,
    #[serde(default, deserialize_with = "duration::de_opt")]
    timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration::de_opt")]
    poll_interval: Option<Duration>,
}

/// The key service as a filter reaches it: an Envoy cluster, the data-plane token, a timeout
/// for each call and the change-feed poll interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyService {
    pub cluster: String,
    pub token: Secret,
    pub timeout: Duration,
    pub poll_interval: Duration,
}

impl KeyService {
    /// The `authorization` metadata of every call to the key service.
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.token.expose())
    }
}

impl RawKeyService {
    pub fn compile(self, filter: &'static str) -> Result<KeyService, ConfigError> {
        let err = |field: &str, message: &str| ConfigError::new(filter, field, message);
        if self.cluster.trim().is_empty() {
            return Err(err("key_service.cluster", "must name the Envoy cluster of the key service"));
        }
        if self.token.expose().trim().is_empty() {
            return Err(err("key_service.token", "must be the key service's data-plane token"));
        }
        let timeout = self.timeout.unwrap_or(Duration::from_millis(500));
        if timeout.is_zero() || timeout > Duration::from_secs(60) {
            return Err(err("key_service.timeout", "must be between 1ms and 60s"));
        }
        let poll_interval = self.poll_interval.unwrap_or(Duration::from_millis(500));
        if poll_interval < Duration::from_millis(100) || poll_interval > Duration::from_secs(60) {
            return Err(err("key_service.poll_interval", "must be between 100ms and 60s"));
        }
        Ok(KeyService { cluster: self.cluster, token: self.token, timeout, poll_interval })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Raw {
        #[allow(dead_code)]
        inner: Inner,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        #[allow(dead_code)]
        n: u32,
    }

    #[test]
    fn serde_errors_name_the_field_without_a_position() {
        let e = parse_json::<Raw>("demo", br#"{"inner": {"n": "x"}}"#).unwrap_err();
        assert_eq!(e.field, "inner.n");
        assert!(!e.message.contains("line"), "{e}");
        assert!(e.to_string().starts_with("invalid demo config: `inner.n`: "), "{e}");
        assert_eq!(parse_json::<Raw>("demo", b"[").unwrap_err().field, "<root>");
    }

    #[test]
    fn a_rule_is_named_when_known() {
        let e = ConfigError { rule: Some("v1".into()), ..ConfigError::new("transform", "rules[0].x", "bad") };
        assert_eq!(e.to_string(), "invalid transform config: rule `v1`: `rules[0].x`: bad");
    }

    #[test]
    fn header_names_are_tokens() {
        assert!(is_header_name("x-api-key"));
        assert!(!is_header_name("bad header"));
        assert!(!is_header_name(""));
        assert!(!is_header_name("x:y"));
    }
}

/// A filter's `usage` block: how often one worker of the proxy reports the requests per key to
/// the key service (`report_interval`, default 5s, `0s` = never) and the name it reports under
/// (`gateway`, default the proxy's node id).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUsage {
    #[serde(default, deserialize_with = "duration::de_opt")]
    report_interval: Option<Duration>,
    #[serde(default)]
    gateway: Option<String>,
    /// Where to report, for filters that have no `key_service` of their own (jwt-auth,
    /// rate-limit).
    #[serde(default)]
    key_service: Option<RawKeyService>,
}

/// Usage reporting, checked (see [`RawUsage`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageConfig {
    /// `None`: reporting is off.
    pub report_interval: Option<Duration>,
    /// `None`: the proxy's node id.
    pub gateway: Option<String>,
}

impl RawUsage {
    pub fn compile(self, filter: &'static str) -> Result<UsageConfig, ConfigError> {
        let interval = self.report_interval.unwrap_or(Duration::from_secs(5));
        if !interval.is_zero() && (interval < Duration::from_secs(1) || interval > Duration::from_secs(3600))
        {
            return Err(ConfigError::new(
                filter,
                "usage.report_interval",
                "must be 0s (off) or between 1s and 1h",
            ));
        }
        if let Some(gateway) = &self.gateway
            && (gateway.is_empty() || gateway.len() > 128 || !gateway.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(ConfigError::new(
                filter,
                "usage.gateway",
                "must be 1 to 128 visible ASCII characters",
            ));
        }
        if self.key_service.is_some() {
            return Err(ConfigError::new(
                filter,
                "usage.key_service",
                "is not used: this filter reports to its own `key_service`",
            ));
        }
        Ok(UsageConfig { report_interval: (!interval.is_zero()).then_some(interval), gateway: self.gateway })
    }

    /// The block of a filter without a key service of its own: it names the key service to report
    /// to (`usage.key_service`). `None` when reporting is off.
    pub fn compile_reporting(
        mut self,
        filter: &'static str,
    ) -> Result<Option<(UsageConfig, KeyService)>, ConfigError> {
        let Some(raw) = self.key_service.take() else {
            return Err(ConfigError::new(
                filter,
                "usage.key_service",
                "is required: the key service to report usage to",
            ));
        };
        let target =
            raw.compile(filter).map_err(|e| ConfigError { field: format!("usage.{}", e.field), ..e })?;
        let usage = self.compile(filter)?;
        Ok(usage.report_interval.is_some().then_some((usage, target)))
    }
}
