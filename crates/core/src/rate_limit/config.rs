//! The rate-limit filter's configuration: a raw serde schema (unknown fields rejected) compiled
//! once into an immutable [`Config`]. Every error names the field it is about.

use serde::Deserialize;

use super::bucket::{Limit, MAX_LIMITS, Period};
use super::descriptor::Part;
use crate::route::{RequestFacts, RouteMatch};

/// Upper bound on the bucket slots of all rules together: each is one shared-data entry of
/// about 100 bytes.
pub const MAX_SLOTS: u32 = 1 << 20;
/// Slots of each rule keyed by request values, unless the rule says otherwise.
pub const DEFAULT_SLOTS: u32 = 16_384;
/// At most this many rules, and this many parts in a bucket key.
pub const MAX_RULES: usize = 64;
pub const MAX_PARTS: usize = 6;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    domain: Option<String>,
    #[serde(default)]
    slots: Option<u32>,
    #[serde(default)]
    failure_mode: FailureMode,
    #[serde(default)]
    client_ip: RawClientIp,
    #[serde(default)]
    headers: RawHeaders,
    rules: Vec<RawRule>,
    #[serde(default)]
    usage: Option<crate::config::RawUsage>,
    global: Option<RawGlobal>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGlobal {
    cluster: String,
    domain: String,
    #[serde(default, deserialize_with = "crate::duration::de_opt")]
    timeout: Option<std::time::Duration>,
    #[serde(default)]
    failure_mode: GlobalFailureMode,
    descriptors: Vec<Vec<RawEntry>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    key: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    from: Option<RawPart>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClientIp {
    #[serde(default)]
    forwarded_for_hop: Option<u8>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeaders {
    #[serde(default = "yes")]
    ietf: bool,
    #[serde(default)]
    legacy: bool,
}

impl Default for RawHeaders {
    fn default() -> Self {
        Self { ietf: true, legacy: false }
    }
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    #[serde(default, rename = "match")]
    matcher: RawMatch,
    #[serde(default)]
    by: Vec<RawPart>,
    #[serde(default)]
    missing: Missing,
    limits: Vec<RawLimit>,
    #[serde(default = "yes")]
    key_limits: bool,
    #[serde(default)]
    priority: Option<RawPriority>,
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    slots: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    #[serde(default)]
    route_name: Option<String>,
    #[serde(default)]
    path_prefix: Option<String>,
    #[serde(default)]
    methods: Vec<String>,
}

/// A part of `by`: a name (`"consumer"`) or `{"header": name}`.
#[derive(Debug)]
enum RawPart {
    Named(String),
    Header(String),
}

/// The object form of a part. Its own struct so that unknown fields are refused, and named in
/// the error, like everywhere else (an untagged enum would accept them silently).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeaderPart {
    header: String,
}

impl<'de> Deserialize<'de> for RawPart {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PartVisitor;

        impl<'de> serde::de::Visitor<'de> for PartVisitor {
            type Value = RawPart;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a part name or {\"header\": <name>}")
            }

            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<RawPart, E> {
                Ok(RawPart::Named(name.to_owned()))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RawPart, A::Error> {
                let part = RawHeaderPart::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(RawPart::Header(part.header))
            }
        }

        deserializer.deserialize_any(PartVisitor)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimit {
    rate: u64,
    per: Period,
    #[serde(default)]
    burst: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPriority {
    reserve_percent: u8,
    #[serde(default)]
    critical: RawCritical,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCritical {
    #[serde(default)]
    header: Option<RawHeaderMatch>,
    #[serde(default)]
    route_names: Vec<String>,
    #[serde(default)]
    tiers: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeaderMatch {
    name: String,
    #[serde(default)]
    value: Option<String>,
}

/// What to do when state cannot be updated (compare-and-swap retries exhausted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Let the request through (counted). The default: a limiter fails open.
    #[default]
    Allow,
    /// Refuse it with 429.
    Deny,
}

/// What to do with a request that has no value for a part of the bucket key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Missing {
    /// Key the bucket by the client IP instead. The default.
    #[default]
    Ip,
    /// The rule does not apply to the request.
    Skip,
    /// Refuse the request with 429.
    Deny,
}

/// Whether a rule enforces its limits or only counts what it would limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Enforce,
    Shadow,
    /// Enforced only when the rate-limit service cannot answer and `global.failure_mode` is
    /// `local_fallback`.
    Fallback,
}

/// What a request gets when the rate-limit service cannot answer (an error, a timeout, an
/// answer that cannot be read).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GlobalFailureMode {
    /// Let it through (counted). The default.
    #[default]
    Allow,
    /// Refuse it with 429.
    Deny,
    /// Apply the rules in `fallback` mode instead.
    LocalFallback,
}

/// Where an entry of a service descriptor takes its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryValue {
    /// This text.
    Fixed(String),
    /// The request's value of this part (a descriptor with a part that has no value is not sent).
    Part(Part),
}

/// One `(key, value)` entry of a descriptor sent to the rate-limit service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: EntryValue,
}

/// Cluster-wide limits: after the local rules, one call to a rate-limit service speaking
/// Envoy's `envoy.service.ratelimit.v3` API (such as `tollgate-ratelimitd`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Global {
    /// Envoy cluster of the service (HTTP/2).
    pub cluster: String,
    /// The domain of the service's configuration.
    pub domain: String,
    pub timeout: std::time::Duration,
    pub failure_mode: GlobalFailureMode,
    pub descriptors: Vec<Vec<Entry>>,
}

/// At most this many descriptors, and entries in each.
pub const MAX_GLOBAL_DESCRIPTORS: usize = 16;
pub const MAX_GLOBAL_ENTRIES: usize = 8;

/// Which requests are critical (any condition suffices).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Critical {
    /// A request header (lower-case name), with a required value or any value.
    pub header: Option<(String, Option<String>)>,
    pub route_names: Vec<String>,
    /// Tiers of the key (as key-auth publishes them).
    pub tiers: Vec<String>,
}

/// The facts the critical check looks at.
#[derive(Debug, Clone, Copy, Default)]
pub struct CriticalFacts<'a> {
    /// The header's value as the client sent it (bytes that need not be UTF-8).
    pub header: Option<&'a [u8]>,
    pub route_name: Option<&'a str>,
    pub tier: Option<&'a str>,
}

impl Critical {
    pub fn matches(&self, facts: &CriticalFacts<'_>) -> bool {
        let header = match (&self.header, facts.header) {
            (Some((_, None)), Some(_)) => true,
            (Some((_, Some(want))), Some(got)) => want.as_bytes() == got.trim_ascii(),
            _ => false,
        };
        header
            || facts.route_name.is_some_and(|r| self.route_names.iter().any(|n| n == r))
            || facts.tier.is_some_and(|t| self.tiers.iter().any(|n| n == t))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Priority {
    /// Share of each bucket (percent of the burst) only critical requests may take.
    pub reserve_percent: u8,
    pub critical: Critical,
}

/// A compiled rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub matcher: RouteMatch,
    /// The bucket key's parts; empty means one bucket for every matching request.
    pub by: Vec<Part>,
    pub missing: Missing,
    pub limits: Vec<Limit>,
    /// A key's own limits (its rate-limit policy in the key service) replace `limits`.
    pub key_limits: bool,
    pub priority: Option<Priority>,
    pub mode: Mode,
    /// The rule's own bucket slots: one for a rule without `by` (it has one bucket), else
    /// `rules[].slots` or the configuration's `slots`. No other rule's buckets live in them.
    pub slots: u32,
}

/// Which rate-limit headers responses carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headers {
    /// `RateLimit-Policy` and `RateLimit` (IETF httpapi draft).
    pub ietf: bool,
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`.
    pub legacy: bool,
}

/// The compiled, immutable configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Namespace of this configuration's shared data.
    pub domain: String,
    /// Slots of a rule keyed by request values that does not set its own.
    pub slots: u32,
    pub failure_mode: FailureMode,
    /// `x-forwarded-for` hop (from the right) taken as the client IP; `None`: downstream address.
    pub forwarded_for_hop: Option<u8>,
    pub headers: Headers,
    pub rules: Vec<Rule>,
    /// Requests refused per consumer and rule, reported to this key service; `None`: not
    /// reported.
    pub usage: Option<(crate::config::UsageConfig, crate::config::KeyService)>,
    /// Cluster-wide limits through a rate-limit service, asked after the local rules.
    pub global: Option<Global>,
}

pub use crate::config::ConfigError;

const FILTER: &str = "rate-limit";

fn err(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::new(FILTER, field, message)
}

impl Config {
    /// Parses and checks a JSON configuration.
    pub fn from_json(json: &[u8]) -> Result<Self, ConfigError> {
        let raw: RawConfig = crate::config::parse_json(FILTER, json)?;
        Self::try_from(raw)
    }

    /// The rules that apply to a request, in order.
    pub fn matching_rules<'a>(&'a self, req: &'a RequestFacts<'_>) -> impl Iterator<Item = &'a Rule> + 'a {
        self.rules.iter().filter(move |r| r.matcher.matches(req))
    }

    /// Whether a rule looks at the request path (a path prefix, or `by: ["path"]`).
    pub fn reads_path(&self) -> bool {
        let mut global = self.global.iter().flat_map(|g| g.descriptors.iter().flatten());
        self.rules.iter().any(|r| r.matcher.path_prefix.is_some() || r.by.contains(&Part::Path))
            || global.any(|e| e.value == EntryValue::Part(Part::Path))
    }

    /// Whether a rule looks at the request method.
    pub fn reads_method(&self) -> bool {
        self.rules.iter().any(|r| !r.matcher.methods.is_empty())
    }

    /// Whether a rule matches by route name.
    pub fn reads_route_name(&self) -> bool {
        self.rules.iter().any(|r| r.matcher.route_name.is_some())
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn compile_match(field: &str, m: RawMatch) -> Result<RouteMatch, ConfigError> {
    if m.route_name.as_ref().is_some_and(String::is_empty) {
        return Err(err(format!("{field}.route_name"), "must not be empty when given"));
    }
    crate::config::route_match(FILTER, field, m.route_name, m.path_prefix, &m.methods)
}

fn compile_part(field: &str, part: RawPart) -> Result<Part, ConfigError> {
    match part {
        RawPart::Header(header) => {
            let name = crate::config::check_header_name(FILTER, &format!("{field}.header"), &header)?;
            if name.starts_with(':') {
                return Err(err(
                    format!("{field}.header"),
                    "use `path` or `route` instead of a pseudo-header",
                ));
            }
            Ok(Part::Header(name))
        }
        RawPart::Named(name) => match name.as_str() {
            "consumer" => Ok(Part::Consumer),
            "key_id" => Ok(Part::KeyId),
            "ip" => Ok(Part::Ip),
            "path" => Ok(Part::Path),
            "route" => Ok(Part::Route),
            other => Err(err(
                field,
                format!(
                    "unknown part `{other}` (use consumer, key_id, ip, path, route or {{\"header\": name}})"
                ),
            )),
        },
    }
}

/// Compiles a key's limits as key-auth publishes them (`rate/period_secs/burst`, burst 0 = rate).
/// `None` when any is unusable; the rule's own limits then apply.
pub fn compile_key_limits(limits: &[crate::key_auth::cache::Limit]) -> Option<Vec<Limit>> {
    if limits.is_empty() || limits.len() > MAX_LIMITS {
        return None;
    }
    limits
        .iter()
        .map(|l| {
            let burst = if l.burst == 0 { l.rate } else { l.burst };
            Period::from_secs(l.period_secs)?;
            Limit::new(l.rate, l.period_secs, burst)
        })
        .collect()
}

fn compile_rule(field: &str, r: RawRule, default_slots: u32) -> Result<Rule, ConfigError> {
    if !is_name(&r.name) {
        return Err(err(
            format!("{field}.name"),
            "must be 1–64 characters of a-z, 0-9, `_` or `-` (it names stats and headers)",
        ));
    }
    let matcher = compile_match(&format!("{field}.match"), r.matcher)?;
    if r.by.len() > MAX_PARTS {
        return Err(err(format!("{field}.by"), format!("at most {MAX_PARTS} parts")));
    }
    let mut by = Vec::with_capacity(r.by.len());
    for (i, part) in r.by.into_iter().enumerate() {
        let part = compile_part(&format!("{field}.by[{i}]"), part)?;
        if by.contains(&part) {
            return Err(err(format!("{field}.by[{i}]"), "is given twice"));
        }
        by.push(part);
    }
    if r.limits.is_empty() || r.limits.len() > MAX_LIMITS {
        return Err(err(format!("{field}.limits"), format!("needs 1 to {MAX_LIMITS} limits")));
    }
    let mut limits = Vec::with_capacity(r.limits.len());
    for (i, l) in r.limits.iter().enumerate() {
        let f = format!("{field}.limits[{i}]");
        if l.rate == 0 {
            return Err(err(format!("{f}.rate"), "must be at least 1"));
        }
        let burst = l.burst.unwrap_or(l.rate);
        if burst == 0 {
            return Err(err(format!("{f}.burst"), "must be at least 1"));
        }
        let limit = Limit::new(l.rate, l.per.secs(), burst)
            .ok_or_else(|| err(format!("{f}.burst"), "is too large for this rate and period"))?;
        limits.push(limit);
    }
    let priority = match r.priority {
        None => None,
        Some(p) => {
            let pf = format!("{field}.priority");
            if p.reserve_percent == 0 || p.reserve_percent > 99 {
                return Err(err(format!("{pf}.reserve_percent"), "must be between 1 and 99"));
            }
            let header = match p.critical.header {
                None => None,
                Some(h) => {
                    let name = crate::config::check_header_name(
                        FILTER,
                        &format!("{pf}.critical.header.name"),
                        &h.name,
                    )?;
                    Some((name, h.value))
                }
            };
            let critical = Critical { header, route_names: p.critical.route_names, tiers: p.critical.tiers };
            if critical == Critical::default() {
                return Err(err(
                    format!("{pf}.critical"),
                    "needs a `header`, `route_names` or `tiers` that marks requests as critical",
                ));
            }
            Some(Priority { reserve_percent: p.reserve_percent, critical })
        }
    };
    let slots = match (r.slots, by.is_empty()) {
        (Some(_), true) => {
            return Err(err(
                format!("{field}.slots"),
                "a rule without `by` has one bucket and needs no slots",
            ));
        }
        (Some(n), false) if n == 0 || n > MAX_SLOTS => {
            return Err(err(format!("{field}.slots"), format!("must be between 1 and {MAX_SLOTS}")));
        }
        (Some(n), false) => n,
        (None, true) => 1,
        (None, false) => default_slots,
    };
    Ok(Rule {
        name: r.name,
        matcher,
        by,
        missing: r.missing,
        limits,
        key_limits: r.key_limits,
        priority,
        mode: r.mode,
        slots,
    })
}

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Self, ConfigError> {
        let domain = raw.domain.unwrap_or_else(|| "default".to_owned());
        if !is_name(&domain) {
            return Err(err("domain", "must be 1–64 characters of a-z, 0-9, `_` or `-`"));
        }
        let slots = raw.slots.unwrap_or(DEFAULT_SLOTS);
        if slots == 0 || slots > MAX_SLOTS {
            return Err(err("slots", format!("must be between 1 and {MAX_SLOTS}")));
        }
        if let Some(hop) = raw.client_ip.forwarded_for_hop
            && !(1..=16).contains(&hop)
        {
            return Err(err("client_ip.forwarded_for_hop", "must be between 1 and 16"));
        }
        if raw.rules.is_empty() || raw.rules.len() > MAX_RULES {
            return Err(err("rules", format!("needs 1 to {MAX_RULES} rules")));
        }
        let mut rules: Vec<Rule> = Vec::with_capacity(raw.rules.len());
        let mut total_slots: u64 = 0;
        for (i, r) in raw.rules.into_iter().enumerate() {
            let own_slots = r.slots.is_some();
            let rule = compile_rule(&format!("rules[{i}]"), r, slots)?;
            total_slots += u64::from(rule.slots);
            if total_slots > u64::from(MAX_SLOTS) {
                let field = if own_slots { format!("rules[{i}].slots") } else { "slots".to_owned() };
                return Err(err(
                    field,
                    format!(
                        "the rules' slots add up to more than {MAX_SLOTS} (each rule keyed by `by` has its own)"
                    ),
                ));
            }
            if rules.iter().any(|other| other.name == rule.name) {
                return Err(err(
                    format!("rules[{i}].name"),
                    format!("`{}` is used by another rule", rule.name),
                ));
            }
            rules.push(rule);
        }
        let global = raw.global.map(compile_global).transpose()?;
        let fallback = global.as_ref().is_some_and(|g| g.failure_mode == GlobalFailureMode::LocalFallback);
        if let Some(i) = rules.iter().position(|r| r.mode == Mode::Fallback)
            && !fallback
        {
            return Err(err(
                format!("rules[{i}].mode"),
                "`fallback` rules apply only with `global.failure_mode: local_fallback`",
            ));
        }
        if fallback && !rules.iter().any(|r| r.mode == Mode::Fallback) {
            return Err(err("global.failure_mode", "`local_fallback` needs a rule with `mode: fallback`"));
        }
        Ok(Config {
            domain,
            slots,
            failure_mode: raw.failure_mode,
            forwarded_for_hop: raw.client_ip.forwarded_for_hop,
            headers: Headers { ietf: raw.headers.ietf, legacy: raw.headers.legacy },
            rules,
            usage: raw.usage.map(|u| u.compile_reporting(FILTER)).transpose()?.flatten(),
            global,
        })
    }
}

fn compile_global(raw: RawGlobal) -> Result<Global, ConfigError> {
    if raw.cluster.is_empty() {
        return Err(err("global.cluster", "must not be empty"));
    }
    if raw.domain.is_empty() || raw.domain.len() > 256 {
        return Err(err("global.domain", "must be 1 to 256 bytes"));
    }
    let timeout = raw.timeout.unwrap_or(std::time::Duration::from_millis(100));
    if timeout.is_zero() || timeout > std::time::Duration::from_secs(10) {
        return Err(err("global.timeout", "must be between 1ms and 10s"));
    }
    if raw.descriptors.is_empty() || raw.descriptors.len() > MAX_GLOBAL_DESCRIPTORS {
        return Err(err("global.descriptors", format!("needs 1 to {MAX_GLOBAL_DESCRIPTORS} descriptors")));
    }
    let mut descriptors = Vec::with_capacity(raw.descriptors.len());
    for (i, entries) in raw.descriptors.into_iter().enumerate() {
        let field = format!("global.descriptors[{i}]");
        if entries.is_empty() || entries.len() > MAX_GLOBAL_ENTRIES {
            return Err(err(field, format!("needs 1 to {MAX_GLOBAL_ENTRIES} entries")));
        }
        let mut compiled = Vec::with_capacity(entries.len());
        for (j, entry) in entries.into_iter().enumerate() {
            let f = format!("{field}[{j}]");
            if entry.key.is_empty() || entry.key.len() > 1024 {
                return Err(err(format!("{f}.key"), "must be 1 to 1024 bytes"));
            }
            let value = match (entry.value, entry.from) {
                (Some(value), None) if !value.is_empty() && value.len() <= 1024 => EntryValue::Fixed(value),
                (Some(_), None) => return Err(err(format!("{f}.value"), "must be 1 to 1024 bytes")),
                (None, Some(part)) => EntryValue::Part(compile_part(&format!("{f}.from"), part)?),
                _ => return Err(err(f, "needs exactly one of `value` and `from`")),
            };
            compiled.push(Entry { key: entry.key, value });
        }
        descriptors.push(compiled);
    }
    Ok(Global {
        cluster: raw.cluster,
        domain: raw.domain,
        timeout,
        failure_mode: raw.failure_mode,
        descriptors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Config, ConfigError> {
        Config::from_json(json.as_bytes())
    }

    /// The example in the filter's documentation.
    pub const EXAMPLE: &str = r#"{
      "domain": "gateway",
      "slots": 16384,
      "failure_mode": "allow",
      "client_ip": {"forwarded_for_hop": 1},
      "headers": {"ietf": true, "legacy": true},
      "rules": [
        {
          "name": "per-consumer",
          "match": {"path_prefix": "/api"},
          "by": ["consumer"],
          "missing": "ip",
          "limits": [{"rate": 10, "per": "second", "burst": 20}, {"rate": 10000, "per": "day"}],
          "key_limits": true,
          "priority": {
            "reserve_percent": 20,
            "critical": {"header": {"name": "x-priority", "value": "critical"}, "tiers": ["platinum"]}
          }
        },
        {
          "name": "login-per-ip",
          "match": {"path_prefix": "/login", "methods": ["POST"]},
          "by": ["ip", {"header": "x-tenant"}],
          "missing": "skip",
          "limits": [{"rate": 5, "per": "minute"}],
          "mode": "shadow"
        }
      ]
    }"#;

    #[test]
    fn the_documented_example_parses() {
        let c = parse(EXAMPLE).unwrap();
        assert_eq!(c.domain, "gateway");
        assert_eq!(c.forwarded_for_hop, Some(1));
        assert_eq!(c.headers, Headers { ietf: true, legacy: true });
        let r = &c.rules[0];
        assert_eq!(r.by, vec![Part::Consumer]);
        assert_eq!(r.limits[0], Limit::new(10, 1, 20).unwrap());
        assert_eq!(r.limits[1], Limit::new(10_000, 86_400, 10_000).unwrap());
        let p = r.priority.as_ref().unwrap();
        assert_eq!(p.reserve_percent, 20);
        assert_eq!(p.critical.header, Some(("x-priority".into(), Some("critical".into()))));
        let r = &c.rules[1];
        assert_eq!(r.by, vec![Part::Ip, Part::Header("x-tenant".into())]);
        assert_eq!(r.matcher.methods, vec!["POST"]);
        assert_eq!(r.missing, Missing::Skip);
        assert_eq!(r.mode, Mode::Shadow);
        // The documentation carries the same example.
        let doc = include_str!("../../../../docs/rate-limit.md");
        let normalize = |s: &str| s.split_whitespace().collect::<String>();
        assert!(normalize(doc).contains(&normalize(EXAMPLE)), "docs/rate-limit.md must show EXAMPLE");
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(r#"{"rules": [{"name": "all", "limits": [{"rate": 100, "per": "second"}]}]}"#).unwrap();
        assert_eq!(c.domain, "default");
        assert_eq!(c.slots, DEFAULT_SLOTS);
        assert_eq!(c.failure_mode, FailureMode::Allow);
        assert_eq!(c.headers, Headers { ietf: true, legacy: false });
        let r = &c.rules[0];
        assert!(r.by.is_empty());
        assert_eq!(r.limits[0].burst, 100);
        assert!(r.key_limits);
        assert_eq!(r.mode, Mode::Enforce);
        assert_eq!(r.missing, Missing::Ip);
    }

    #[test]
    fn errors_name_the_field() {
        let rule = |extra: &str| {
            format!(r#"{{"rules": [{{"name": "r", "limits": [{{"rate": 1, "per": "second"}}]{extra}}}]}}"#)
        };
        let cases = [
            (r#"{"rulez": []}"#.to_owned(), "rulez", "unknown field"),
            (r#"{}"#.to_owned(), "<root>", "missing field `rules`"),
            (r#"{"rules": []}"#.to_owned(), "rules", "1 to"),
            (r#"{"slots": 0, "rules": []}"#.to_owned(), "slots", "between"),
            (r#"{"domain": "A B", "rules": []}"#.to_owned(), "domain", "characters"),
            (r#"{"client_ip": {"forwarded_for_hop": 0}, "rules": []}"#.to_owned(), "client_ip.forwarded_for_hop", "between"),
            (r#"{"failure_mode": "maybe", "rules": []}"#.to_owned(), "failure_mode", "unknown variant"),
            (r#"{"rules": [{"name": "Bad Name", "limits": []}]}"#.to_owned(), "rules[0].name", "characters"),
            (r#"{"rules": [{"name": "r", "limits": []}]}"#.to_owned(), "rules[0].limits", "1 to"),
            (
                r#"{"rules": [{"name": "r", "limits": [{"rate": 0, "per": "second"}]}]}"#.to_owned(),
                "rules[0].limits[0].rate",
                "at least 1",
            ),
            (
                r#"{"rules": [{"name": "r", "limits": [{"rate": 1, "per": "week"}]}]}"#.to_owned(),
                "rules[0].limits[0].per",
                "unknown variant",
            ),
            (
                r#"{"rules": [{"name": "r", "limits": [{"rate": 1, "per": "day", "burst": 99999999999999}]}]}"#
                    .to_owned(),
                "rules[0].limits[0].burst",
                "too large",
            ),
            (rule(r#", "by": ["user"]"#), "rules[0].by[0]", "unknown part `user`"),
            (rule(r#", "by": [{"header": "a b"}]"#), "rules[0].by[0].header", "not a valid header"),
            (rule(r#", "by": ["ip", "ip"]"#), "rules[0].by[1]", "twice"),
            (rule(r#", "mode": "fallback""#), "rules[0].mode", "`fallback` rules apply only"),
            (
                format!(r#"{{"global": {{"cluster": "c", "domain": "d", "failure_mode": "local_fallback", "descriptors": [[{{"key": "k", "value": "v"}}]]}}, {}"#, &rule("")[1..]),
                "global.failure_mode",
                "needs a rule with `mode: fallback`",
            ),
            (
                format!(r#"{{"global": {{"cluster": "c", "domain": "d", "descriptors": []}}, {}"#, &rule("")[1..]),
                "global.descriptors",
                "1 to 16",
            ),
            (
                format!(r#"{{"global": {{"cluster": "c", "domain": "d", "descriptors": [[{{"key": "k"}}]]}}, {}"#, &rule("")[1..]),
                "global.descriptors[0][0]",
                "exactly one of `value` and `from`",
            ),
            (
                format!(r#"{{"global": {{"cluster": "c", "domain": "d", "descriptors": [[{{"key": "k", "from": "user"}}]]}}, {}"#, &rule("")[1..]),
                "global.descriptors[0][0].from",
                "unknown part `user`",
            ),
            (
                format!(r#"{{"global": {{"cluster": "c", "domain": "d", "timeout": "1m", "descriptors": [[{{"key": "k", "value": "v"}}]]}}, {}"#, &rule("")[1..]),
                "global.timeout",
                "between 1ms and 10s",
            ),
            (rule(r#", "by": ["ip", {"header": "x-a", "prefix": "Bearer "}]"#), "rules[0].by[1].prefix", "unknown field `prefix`"),
            (rule(r#", "by": [{"name": "x-a"}]"#), "rules[0].by[0].name", "unknown field `name`"),
            (rule(r#", "by": [{}]"#), "rules[0].by[0]", "missing field `header`"),
            (rule(r#", "by": [7]"#), "rules[0].by[0]", "a part name or"),
            (rule(r#", "slots": 8"#), "rules[0].slots", "needs no slots"),
            (rule(r#", "by": ["ip"], "slots": 0"#), "rules[0].slots", "between"),
            (rule(r#", "missing": "maybe""#), "rules[0].missing", "unknown variant"),
            (rule(r#", "mode": "dry""#), "rules[0].mode", "unknown variant"),
            (rule(r#", "match": {"path_prefix": "api"}"#), "rules[0].match.path_prefix", "start with"),
            (rule(r#", "match": {"methods": ["GE T"]}"#), "rules[0].match.methods[0]", "not an HTTP method"),
            (rule(r#", "priority": {"reserve_percent": 0, "critical": {"tiers": ["a"]}}"#), "rules[0].priority.reserve_percent", "between"),
            (rule(r#", "priority": {"reserve_percent": 10}"#), "rules[0].priority.critical", "marks requests"),
            (
                r#"{"rules": [{"name": "r", "limits": [{"rate": 1, "per": "second"}]}, {"name": "r", "limits": [{"rate": 1, "per": "second"}]}]}"#.to_owned(),
                "rules[1].name",
                "another rule",
            ),
            ("not json".to_owned(), "<root>", "expected"),
        ];
        for (json, field, text) in cases {
            let e = parse(&json).unwrap_err();
            assert_eq!(e.field, field, "{json}: {e}");
            assert!(e.message.contains(text), "{json}: {e}");
            assert!(e.to_string().contains(field));
        }
    }

    #[test]
    fn each_rule_keyed_by_request_values_has_its_own_slots() {
        let c = parse(
            r#"{"slots": 100, "rules": [
                {"name": "global", "limits": [{"rate": 1, "per": "second"}]},
                {"name": "ip", "by": ["ip"], "limits": [{"rate": 1, "per": "second"}]},
                {"name": "login", "by": ["ip"], "slots": 7, "limits": [{"rate": 1, "per": "second"}]}]}"#,
        )
        .unwrap();
        let slots: Vec<u32> = c.rules.iter().map(|r| r.slots).collect();
        assert_eq!(slots, [1, 100, 7]);
        assert_eq!(
            parse(EXAMPLE).unwrap().rules.iter().map(|r| r.slots).collect::<Vec<_>>(),
            [16_384, 16_384]
        );
    }

    #[test]
    fn the_slots_of_all_rules_are_bounded() {
        let keyed = |name: &str, extra: &str| {
            format!(
                r#"{{"name": "{name}", "by": ["ip"], "limits": [{{"rate": 1, "per": "second"}}]{extra}}}"#
            )
        };
        let config =
            |slots: u32, rules: &[String]| format!(r#"{{"slots": {slots}, "rules": [{}]}}"#, rules.join(","));
        // 64 rules of the default size fit exactly.
        let all: Vec<String> = (0..64).map(|i| keyed(&format!("r{i}"), "")).collect();
        assert!(parse(&config(DEFAULT_SLOTS, &all)).is_ok());
        let e = parse(&config(MAX_SLOTS / 2, &[keyed("a", ""), keyed("b", ""), keyed("c", "")])).unwrap_err();
        assert_eq!(e.field, "slots", "{e}");
        assert!(e.message.contains("add up to more than 1048576"), "{e}");
        let e = parse(&config(10, &[keyed("a", ""), keyed("b", r#", "slots": 1048570"#)])).unwrap_err();
        assert_eq!(e.field, "rules[1].slots", "{e}");
    }

    #[test]
    fn critical_requests_match_any_condition() {
        let c = Critical {
            header: Some(("x-priority".into(), Some("critical".into()))),
            route_names: vec!["health".into()],
            tiers: vec!["gold".into()],
        };
        let f = CriticalFacts::default;
        assert!(!c.matches(&f()));
        assert!(c.matches(&CriticalFacts { header: Some(b"critical"), ..f() }));
        assert!(!c.matches(&CriticalFacts { header: Some(b"bulk"), ..f() }));
        assert!(c.matches(&CriticalFacts { header: Some(b" critical "), ..f() }));
        // Bytes that are not UTF-8 never equal the value, not even through a lossy decoding.
        let fffd = Critical { header: Some(("x-p".into(), Some("\u{fffd}".into()))), ..Critical::default() };
        assert!(!fffd.matches(&CriticalFacts { header: Some(b"\xff"), ..f() }));
        assert!(c.matches(&CriticalFacts { route_name: Some("health"), ..f() }));
        assert!(c.matches(&CriticalFacts { tier: Some("gold"), ..f() }));
        assert!(!c.matches(&CriticalFacts { tier: Some("free"), ..f() }));
        let any = Critical { header: Some(("x-p".into(), None)), ..Critical::default() };
        assert!(any.matches(&CriticalFacts { header: Some(b"\xffwhatever"), ..f() }));
    }

    #[test]
    fn key_limits_compile_or_fall_back() {
        use crate::key_auth::cache::Limit as KeyLimit;
        let ok = compile_key_limits(&[
            KeyLimit { rate: 100, period_secs: 1, burst: 0 },
            KeyLimit { rate: 5, period_secs: 60, burst: 10 },
        ])
        .unwrap();
        assert_eq!(ok, vec![Limit::new(100, 1, 100).unwrap(), Limit::new(5, 60, 10).unwrap()]);
        assert_eq!(compile_key_limits(&[]), None);
        assert_eq!(compile_key_limits(&[KeyLimit { rate: 0, period_secs: 1, burst: 1 }]), None);
        assert_eq!(compile_key_limits(&[KeyLimit { rate: 1, period_secs: 7, burst: 1 }]), None);
    }

    #[test]
    fn every_matching_rule_applies() {
        let c = parse(
            r#"{"rules": [
                {"name": "a", "match": {"path_prefix": "/api"}, "limits": [{"rate": 1, "per": "second"}]},
                {"name": "b", "match": {"methods": ["POST"]}, "limits": [{"rate": 1, "per": "second"}]}]}"#,
        )
        .unwrap();
        let names = |path, method| {
            let req = RequestFacts { route_name: None, path, method };
            c.matching_rules(&req).map(|r| r.name.clone()).collect::<Vec<_>>()
        };
        assert_eq!(names("/api/x", "POST"), ["a", "b"]);
        assert_eq!(names("/api/x", "GET"), ["a"]);
        assert!(names("/web", "GET").is_empty());
    }
}
