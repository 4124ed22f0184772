//! The limits: one YAML file per domain, in the shape of envoyproxy/ratelimit's configuration so
//! a configuration moves over unchanged:
//!
//! ```yaml
//! domain: gateway
//! descriptors:
//!   - key: tenant            # no value: a bucket per tenant value
//!     rate_limit: {unit: minute, requests_per_unit: 600, name: per-tenant}
//!   - key: tenant
//!     value: internal        # key and value: this value only (wins over the wildcard)
//!     rate_limit: {unlimited: true}
//!   - key: path
//!     value: /login
//!     shadow_mode: true      # counted and reported, never refused
//!     rate_limit: {unit: second, requests_per_unit: 5}
//!     descriptors:           # nested: matches descriptors [path=/login, remote_address=…]
//!       - key: remote_address
//!         rate_limit: {unit: minute, requests_per_unit: 10}
//! ```
//!
//! Raw serde types (unknown fields refused) are compiled into a [`Domain`] tree once; every
//! error names the field (`descriptors[2].rate_limit.unit: …`).
//!
//! Matching is envoyproxy/ratelimit's: the entries of a request descriptor are walked down the
//! tree, each first by key and value, then by key alone (a wildcard: a bucket per value). The
//! limit is the one of the node the last entry lands on; a descriptor that leaves the tree, or
//! ends on a node without a limit, is not limited.

use std::collections::HashMap;
use std::fmt;

use serde::Deserialize;

/// Longest domain name.
pub const MAX_DOMAIN_LEN: usize = 256;
/// Deepest nesting of descriptors in a configuration.
pub const MAX_DEPTH: usize = 16;

/// An invalid configuration; the message starts with the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err(field: &str, message: impl fmt::Display) -> ConfigError {
    ConfigError(format!("{field}: {message}"))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDomain {
    domain: Option<String>,
    #[serde(default)]
    descriptors: Vec<RawDescriptor>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDescriptor {
    key: Option<String>,
    value: Option<String>,
    rate_limit: Option<RawRateLimit>,
    #[serde(default)]
    shadow_mode: bool,
    #[serde(default)]
    descriptors: Vec<RawDescriptor>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    unit: Option<String>,
    requests_per_unit: Option<u64>,
    name: Option<String>,
    #[serde(default)]
    unlimited: bool,
}

/// The unit of a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Second,
    Minute,
    Hour,
    Day,
    Week,
}

impl Unit {
    /// The unit's length in microseconds.
    pub fn micros(self) -> u64 {
        const SECOND: u64 = 1_000_000;
        match self {
            Unit::Second => SECOND,
            Unit::Minute => 60 * SECOND,
            Unit::Hour => 3_600 * SECOND,
            Unit::Day => 86_400 * SECOND,
            Unit::Week => 7 * 86_400 * SECOND,
        }
    }

    fn parse(text: &str) -> Option<Unit> {
        // envoyproxy/ratelimit reads units case-insensitively (`SECOND` and `second`).
        match text.to_ascii_lowercase().as_str() {
            "second" => Some(Unit::Second),
            "minute" => Some(Unit::Minute),
            "hour" => Some(Unit::Hour),
            "day" => Some(Unit::Day),
            "week" => Some(Unit::Week),
            _ => None,
        }
    }
}

/// A rate: `requests_per_unit` per `unit`, also the burst (a full bucket).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub requests_per_unit: u32,
    pub unit: Unit,
}

impl Rate {
    /// The generic cell rate algorithm's emission interval: the time one request's token takes
    /// to come back, in microseconds, rounded up so the rate never exceeds the configured one.
    pub fn interval_micros(self) -> u64 {
        self.unit.micros().div_ceil(u64::from(self.requests_per_unit.max(1)))
    }

    /// How far ahead of now the bucket's debt may run: the burst times the interval.
    pub fn tolerance_micros(self) -> u64 {
        self.interval_micros() * u64::from(self.requests_per_unit)
    }
}

/// What a matched descriptor gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Limit {
    Unlimited,
    Rate(Rate),
}

/// A limit of the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub limit: Limit,
    /// `rate_limit.name`; empty when not given.
    pub name: String,
    /// Counted and reported but never refused.
    pub shadow: bool,
    /// The configuration path of the rule, `key` or `key=value` joined with `.` (`tenant`,
    /// `path=/login.remote_address`): the `descriptor` label of the metrics. It comes from the
    /// configuration, never from a request, so the labels are a closed set.
    pub label: String,
}

#[derive(Debug, Default)]
struct Node {
    /// Children by key and value; `None` is the wildcard (key only).
    children: HashMap<(String, Option<String>), Node>,
    rule: Option<Rule>,
}

/// One domain's limits, compiled.
#[derive(Debug)]
pub struct Domain {
    pub name: String,
    root: Node,
    rules: Vec<Rule>,
}

impl Domain {
    /// Parses and compiles one domain's YAML.
    pub fn from_yaml(text: &str) -> Result<Domain, ConfigError> {
        let raw: RawDomain = serde_yaml::from_str(text).map_err(|e| ConfigError(e.to_string()))?;
        Domain::compile(raw)
    }

    fn compile(raw: RawDomain) -> Result<Domain, ConfigError> {
        let name = raw.domain.ok_or_else(|| err("domain", "required"))?;
        if name.is_empty() {
            return Err(err("domain", "must not be empty"));
        }
        if name.len() > MAX_DOMAIN_LEN {
            return Err(err("domain", format!("longer than {MAX_DOMAIN_LEN} bytes")));
        }
        let mut rules = Vec::new();
        let root = compile_level(&raw.descriptors, "descriptors", "", 1, &mut rules)?;
        Ok(Domain { name, root, rules })
    }

    /// Every rule of the domain (for the metrics' label set).
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The rule for a request descriptor's entries (`(key, value)` pairs), if any.
    pub fn lookup<'a>(&self, entries: impl IntoIterator<Item = (&'a str, &'a str)>) -> Option<&Rule> {
        let mut node = &self.root;
        let mut any = false;
        for (key, value) in entries {
            any = true;
            let exact = node.children.get(&(key.to_owned(), Some(value.to_owned())));
            node = exact.or_else(|| node.children.get(&(key.to_owned(), None)))?;
        }
        if any { node.rule.as_ref() } else { None }
    }
}

fn compile_level(
    raw: &[RawDescriptor],
    field: &str,
    parent_label: &str,
    depth: usize,
    rules: &mut Vec<Rule>,
) -> Result<Node, ConfigError> {
    if depth > MAX_DEPTH && !raw.is_empty() {
        return Err(err(field, format!("descriptors nest deeper than {MAX_DEPTH} levels")));
    }
    let mut node = Node::default();
    for (i, descriptor) in raw.iter().enumerate() {
        let here = format!("{field}[{i}]");
        let key = descriptor.key.clone().ok_or_else(|| err(&format!("{here}.key"), "required"))?;
        if key.is_empty() {
            return Err(err(&format!("{here}.key"), "must not be empty"));
        }
        // An empty value is envoyproxy/ratelimit's way of writing the wildcard.
        let value = descriptor.value.clone().filter(|v| !v.is_empty());
        let part = match &value {
            Some(v) => format!("{key}={v}"),
            None => key.clone(),
        };
        let label = if parent_label.is_empty() { part } else { format!("{parent_label}.{part}") };
        let rule = match &descriptor.rate_limit {
            None => None,
            Some(limit) => {
                Some(compile_rule(limit, &format!("{here}.rate_limit"), descriptor.shadow_mode, &label)?)
            }
        };
        if let Some(rule) = &rule {
            rules.push(rule.clone());
        }
        let mut child =
            compile_level(&descriptor.descriptors, &format!("{here}.descriptors"), &label, depth + 1, rules)?;
        child.rule = rule;
        let slot = (key.clone(), value.clone());
        if node.children.contains_key(&slot) {
            let what = match &value {
                Some(v) => format!("key `{key}` with value `{v}`"),
                None => format!("key `{key}` without a value"),
            };
            return Err(err(&here, format!("{what} is already defined at this level")));
        }
        node.children.insert(slot, child);
    }
    Ok(node)
}

fn compile_rule(raw: &RawRateLimit, field: &str, shadow: bool, label: &str) -> Result<Rule, ConfigError> {
    let name = raw.name.clone().unwrap_or_default();
    if raw.unlimited {
        if raw.unit.is_some() {
            return Err(err(&format!("{field}.unit"), "not allowed with `unlimited: true`"));
        }
        if raw.requests_per_unit.is_some() {
            return Err(err(&format!("{field}.requests_per_unit"), "not allowed with `unlimited: true`"));
        }
        return Ok(Rule { limit: Limit::Unlimited, name, shadow, label: label.to_owned() });
    }
    let unit_text = raw.unit.as_deref().ok_or_else(|| err(&format!("{field}.unit"), "required"))?;
    let unit = Unit::parse(unit_text).ok_or_else(|| {
        err(
            &format!("{field}.unit"),
            format!("unknown unit `{unit_text}` (expected second, minute, hour, day or week)"),
        )
    })?;
    let requests =
        raw.requests_per_unit.ok_or_else(|| err(&format!("{field}.requests_per_unit"), "required"))?;
    let requests_per_unit = u32::try_from(requests).ok().filter(|n| *n >= 1).ok_or_else(|| {
        err(&format!("{field}.requests_per_unit"), format!("`{requests}` is not between 1 and {}", u32::MAX))
    })?;
    Ok(Rule { limit: Limit::Rate(Rate { requests_per_unit, unit }), name, shadow, label: label.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../config.example.yaml");

    fn refused(yaml: &str) -> String {
        Domain::from_yaml(yaml).unwrap_err().0
    }

    fn rate(rule: Option<&Rule>) -> Option<(u32, Unit)> {
        match rule?.limit {
            Limit::Rate(r) => Some((r.requests_per_unit, r.unit)),
            Limit::Unlimited => None,
        }
    }

    #[test]
    fn example_config_parses() {
        let domain = Domain::from_yaml(EXAMPLE).unwrap();
        assert_eq!(domain.name, "gateway");
        assert!(!domain.rules().is_empty());
    }

    #[test]
    fn key_and_value_wins_over_the_wildcard_and_the_wildcard_takes_any_value() {
        let d = Domain::from_yaml(
            "domain: d\ndescriptors:\n\
             - {key: tenant, rate_limit: {unit: minute, requests_per_unit: 600}}\n\
             - {key: tenant, value: internal, rate_limit: {unlimited: true}}\n\
             - {key: tenant, value: big, rate_limit: {unit: SECOND, requests_per_unit: 100, name: big}}\n",
        )
        .unwrap();
        assert_eq!(rate(d.lookup([("tenant", "acme")])), Some((600, Unit::Minute)));
        assert_eq!(d.lookup([("tenant", "internal")]).unwrap().limit, Limit::Unlimited);
        let big = d.lookup([("tenant", "big")]).unwrap();
        assert_eq!(rate(Some(big)), Some((100, Unit::Second)));
        assert_eq!(big.name, "big");
        assert_eq!(big.label, "tenant=big");
        assert!(d.lookup([("other", "x")]).is_none());
    }

    #[test]
    fn nested_descriptors_limit_only_at_their_depth() {
        let d = Domain::from_yaml(
            "domain: d\ndescriptors:\n\
             - key: path\n  value: /login\n  shadow_mode: true\n  rate_limit: {unit: second, requests_per_unit: 5}\n  descriptors:\n\
             \x20 - {key: remote_address, rate_limit: {unit: minute, requests_per_unit: 10}}\n",
        )
        .unwrap();
        let top = d.lookup([("path", "/login")]).unwrap();
        assert!(top.shadow);
        assert_eq!(rate(Some(top)), Some((5, Unit::Second)));
        let nested = d.lookup([("path", "/login"), ("remote_address", "10.0.0.1")]).unwrap();
        assert_eq!(rate(Some(nested)), Some((10, Unit::Minute)));
        assert!(!nested.shadow);
        assert_eq!(nested.label, "path=/login.remote_address");
        // More entries than the configuration has levels: not limited.
        assert!(d.lookup([("path", "/login"), ("remote_address", "a"), ("x", "y")]).is_none());
        // Another path: not limited.
        assert!(d.lookup([("path", "/other"), ("remote_address", "a")]).is_none());
    }

    #[test]
    fn gcra_interval_rounds_up_so_the_rate_is_never_exceeded() {
        let r = Rate { requests_per_unit: 600, unit: Unit::Minute };
        assert_eq!(r.interval_micros(), 100_000);
        assert_eq!(r.tolerance_micros(), 60_000_000);
        let r = Rate { requests_per_unit: 7, unit: Unit::Second };
        assert_eq!(r.interval_micros(), 142_858);
    }

    #[test]
    fn invalid_configs_are_refused_naming_the_field() {
        assert_eq!(refused("descriptors: []\n"), "domain: required");
        assert_eq!(refused("domain: ''\n"), "domain: must not be empty");
        assert_eq!(
            refused(
                "domain: d\ndescriptors:\n- {value: x, rate_limit: {unit: second, requests_per_unit: 1}}\n"
            ),
            "descriptors[0].key: required"
        );
        assert_eq!(
            refused(
                "domain: d\ndescriptors:\n- {key: a, rate_limit: {unit: fortnight, requests_per_unit: 1}}\n"
            ),
            "descriptors[0].rate_limit.unit: unknown unit `fortnight` (expected second, minute, hour, day or week)"
        );
        assert_eq!(
            refused("domain: d\ndescriptors:\n- {key: a, rate_limit: {requests_per_unit: 1}}\n"),
            "descriptors[0].rate_limit.unit: required"
        );
        assert_eq!(
            refused(
                "domain: d\ndescriptors:\n- {key: a, rate_limit: {unit: second, requests_per_unit: 0}}\n"
            ),
            "descriptors[0].rate_limit.requests_per_unit: `0` is not between 1 and 4294967295"
        );
        assert_eq!(
            refused(
                "domain: d\ndescriptors:\n- key: a\n  descriptors:\n  - {key: b, rate_limit: {unlimited: true, unit: second}}\n"
            ),
            "descriptors[0].descriptors[0].rate_limit.unit: not allowed with `unlimited: true`"
        );
        assert_eq!(
            refused("domain: d\ndescriptors:\n- {key: a, value: x}\n- {key: a, value: x}\n"),
            "descriptors[1]: key `a` with value `x` is already defined at this level"
        );
        let unknown = refused("domain: d\ndescriptors:\n- {key: a, rate_limt: {unit: second}}\n");
        assert!(unknown.starts_with("descriptors[0]: unknown field `rate_limt`"), "{unknown}");
    }
}
