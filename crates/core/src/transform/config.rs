//! The transform filter's configuration: a raw serde schema (unknown fields rejected) compiled
//! once — templates, regexes, paths — into an immutable [`Config`]. Every error names the
//! field and the rule it is in.

use std::collections::BTreeMap;

use regex_lite::Regex;
use serde::Deserialize;
use serde_json::Value;

use super::Op;
use super::doc::{Doc, JsonText};
use super::json::{BodyValue, JsonPath, ValueType};
use super::template::{Template, Var};

/// Default body size cap: well under Envoy's default 1 MiB buffer limit.
pub const DEFAULT_MAX_BODY_BYTES: usize = 512 * 1024;
/// Largest accepted cap: bodies are buffered in the VM's memory.
pub const MAX_BODY_BYTES_LIMIT: usize = 16 * 1024 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    max_body_bytes: Option<usize>,
    #[serde(default)]
    on_oversize: OnOversize,
    #[serde(default)]
    on_invalid_json: OnInvalidJson,
    rules: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(default)]
    name: Option<String>,
    #[serde(default, rename = "match")]
    matcher: RawMatch,
    #[serde(default)]
    request: RawRequest,
    #[serde(default)]
    response: RawResponse,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    #[serde(default)]
    route_name: Option<String>,
    #[serde(default)]
    path_prefix: Option<String>,
    #[serde(default)]
    path_regex: Option<String>,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    headers_present: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequest {
    #[serde(default)]
    path: Option<RawPathRewrite>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    headers: Vec<RawOp>,
    #[serde(default)]
    query: Vec<RawOp>,
    #[serde(default)]
    body: Vec<RawOp>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPathRewrite {
    regex: String,
    replace: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResponse {
    #[serde(default)]
    status: BTreeMap<String, u32>,
    #[serde(default)]
    headers: Vec<RawOp>,
    #[serde(default)]
    body: Vec<RawOp>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum OpKind {
    Remove,
    Rename,
    Replace,
    Add,
    Append,
    Set,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOp {
    op: OpKind,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    value: Option<Value>,
    #[serde(default, rename = "type")]
    ty: Option<ValueType>,
}

/// What to do with a body larger than `max_body_bytes` that a rule would change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnOversize {
    /// Forward it unchanged (counted in `body_skipped_too_large`): the body rules do not apply
    /// to it.
    #[default]
    Pass,
    /// Refuse: a request with 413, a response with 502. For rules that must apply (an identity
    /// stamped into a request, a field removed from a response).
    Reject,
}

/// What to do with a body that claims to be JSON but does not parse.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnInvalidJson {
    /// Forward it unchanged (counted in `invalid_json`).
    #[default]
    Pass,
    /// Refuse: a request with 400, a response with 502 (for upstreams whose parser accepts more
    /// than JSON: comments, trailing commas).
    Reject,
}

/// Which requests a rule applies to. All given conditions must hold; empty matches all.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    pub route_name: Option<String>,
    pub path_prefix: Option<String>,
    /// Its capture groups are the `{path.N}` placeholders of the rule.
    pub path_regex: Option<Regex>,
    /// Upper-case; empty means any.
    pub methods: Vec<String>,
    /// Lower-case header names that must be present.
    pub headers_present: Vec<String>,
}

/// A path rewrite: the first match of `regex` in the path (without query) is replaced with
/// `replace`, where `$1` / `${name}` are capture groups.
#[derive(Debug, Clone)]
pub struct PathRewrite {
    pub regex: Regex,
    pub replace: String,
}

/// Header and query operations take a name and a template; body operations a field path and
/// a typed value.
pub type NameOp = Op<String, Template>;
pub type BodyOp = Op<JsonPath, BodyValue>;

#[derive(Debug, Clone, Default)]
pub struct RequestOps {
    pub path: Option<PathRewrite>,
    pub method: Option<String>,
    pub host: Option<Template>,
    pub headers: Vec<NameOp>,
    pub query: Vec<NameOp>,
    pub body: Vec<BodyOp>,
}

#[derive(Debug, Clone, Default)]
pub struct ResponseOps {
    /// Upstream status → status sent to the client.
    pub status: Vec<(u32, u32)>,
    pub headers: Vec<NameOp>,
    pub body: Vec<BodyOp>,
}

#[derive(Debug, Clone)]
pub struct Rule {
    /// From the config, or `rules[i]`.
    pub name: String,
    pub matcher: Matcher,
    pub request: RequestOps,
    pub response: ResponseOps,
    /// Host properties the rule's templates read (fetched only when it matches).
    pub properties: Vec<Vec<String>>,
}

impl Rule {
    /// Whether the rule looks at the path: to match it, or to rewrite it.
    pub fn uses_path(&self) -> bool {
        self.matcher.path_prefix.is_some() || self.matcher.path_regex.is_some() || self.request.path.is_some()
    }

    /// Whether one of the rule's templates reads `var`.
    pub fn reads(&self, var: &Var) -> bool {
        let r = &self.request;
        let names = r.headers.iter().chain(&r.query).chain(&self.response.headers).filter_map(template_of);
        let bodies = r.body.iter().chain(&self.response.body).filter_map(|op| match value_of(op) {
            Some(BodyValue::Template(t, _)) => Some(t),
            _ => None,
        });
        names.chain(bodies).chain(r.host.as_ref()).any(|t| t.reads(var))
    }
}

/// The compiled, immutable configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub max_body_bytes: usize,
    pub on_oversize: OnOversize,
    pub on_invalid_json: OnInvalidJson,
    pub rules: Vec<Rule>,
}

pub use crate::config::ConfigError;

const FILTER: &str = "transform";

fn err(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::new(FILTER, field, message)
}

impl Config {
    /// Parses and compiles a JSON configuration.
    pub fn from_json(json: &[u8]) -> Result<Self, ConfigError> {
        let raw: RawConfig = crate::config::parse_json(FILTER, json).map_err(|mut error| {
            // Name the rule even when serde refused it.
            if let Some(i) = error.field.strip_prefix("rules[").and_then(|r| r.split(']').next()) {
                error.rule = Some(rule_name_in(json, i).unwrap_or_else(|| format!("rules[{i}]")));
            }
            error
        })?;
        compile(raw, json)
    }
}

/// The `name` of rule `index` when the JSON is well-formed enough to tell.
fn rule_name_in(json: &[u8], index: &str) -> Option<String> {
    let doc: Value = serde_json::from_slice(json).ok()?;
    let i: usize = index.parse().ok()?;
    doc.get("rules")?.get(i)?.get("name")?.as_str().map(str::to_owned)
}

fn compile(raw: RawConfig, json: &[u8]) -> Result<Config, ConfigError> {
    // Literal body values are written as the config spells them (`18446744073709551617` keeps
    // every digit), so they are read from the config's text, not from the parsed numbers.
    let mut source = Doc::parse(json.to_vec()).ok();
    let max_body_bytes = raw.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
    if max_body_bytes == 0 || max_body_bytes > MAX_BODY_BYTES_LIMIT {
        return Err(err("max_body_bytes", format!("must be between 1 and {MAX_BODY_BYTES_LIMIT}")));
    }
    let mut rules = Vec::with_capacity(raw.rules.len());
    for (i, r) in raw.rules.into_iter().enumerate() {
        let field = format!("rules[{i}]");
        let name = r.name.clone().unwrap_or_else(|| field.clone());
        if name.trim().is_empty() {
            return Err(ConfigError {
                rule: Some(field.clone()),
                ..err(format!("{field}.name"), "must not be empty")
            });
        }
        if rules.iter().any(|other: &Rule| other.name == name) {
            return Err(ConfigError {
                rule: Some(name),
                ..err(format!("{field}.name"), "another rule has this name")
            });
        }
        let rule = compile_rule(&field, name.clone(), r, i, &mut source)
            .map_err(|e| ConfigError { rule: Some(name), ..e })?;
        rules.push(rule);
    }
    Ok(Config { max_body_bytes, on_oversize: raw.on_oversize, on_invalid_json: raw.on_invalid_json, rules })
}

fn compile_rule(
    field: &str,
    name: String,
    r: RawRule,
    index: usize,
    source: &mut Option<Doc>,
) -> Result<Rule, ConfigError> {
    let m = r.matcher;
    let mf = format!("{field}.match");
    if m.path_prefix.as_ref().is_some_and(|p| !p.starts_with('/')) {
        return Err(err(format!("{mf}.path_prefix"), "must start with `/`"));
    }
    let path_regex = m.path_regex.as_deref().map(|re| regex(&format!("{mf}.path_regex"), re)).transpose()?;
    let methods = m
        .methods
        .iter()
        .enumerate()
        .map(|(j, x)| method(&format!("{mf}.methods[{j}]"), x))
        .collect::<Result<Vec<_>, _>>()?;
    let headers_present = m
        .headers_present
        .iter()
        .enumerate()
        .map(|(j, h)| token(&format!("{mf}.headers_present[{j}]"), h))
        .collect::<Result<Vec<_>, _>>()?;
    if m.route_name.as_deref() == Some("") {
        return Err(err(format!("{mf}.route_name"), "must not be empty"));
    }
    let matcher = Matcher {
        route_name: m.route_name,
        path_prefix: m.path_prefix,
        path_regex,
        methods,
        headers_present,
    };

    let q = r.request;
    let rf = format!("{field}.request");
    let path = match q.path {
        Some(p) => {
            let re = regex(&format!("{rf}.path.regex"), &p.regex)?;
            check_replacement(&format!("{rf}.path.replace"), &re, &p.replace)?;
            Some(PathRewrite { regex: re, replace: p.replace })
        }
        None => None,
    };
    let new_method = q.method.as_deref().map(|x| method(&format!("{rf}.method"), x)).transpose()?;
    if let Some(m @ ("HEAD" | "CONNECT")) = new_method.as_deref() {
        return Err(err(
            format!("{rf}.method"),
            format!(
                "`{m}` changes how the response is framed: the client would wait for a body that never \
                 comes (or get a tunnel it did not ask for)"
            ),
        ));
    }
    let host = match q.host.as_deref() {
        Some(h) => {
            let t = template(&format!("{rf}.host"), h)?;
            if t.as_literal().is_some_and(|l| !super::is_authority(&l)) {
                return Err(err(format!("{rf}.host"), format!("`{h}` is not a host (and optional port)")));
            }
            Some(t)
        }
        None => None,
    };
    let request = RequestOps {
        path,
        method: new_method,
        host,
        headers: name_ops(&format!("{rf}.headers"), &q.headers, true)?,
        query: name_ops(&format!("{rf}.query"), &q.query, false)?,
        body: body_ops(&format!("{rf}.body"), &q.body, |j| literal_text(source, index, "request", j))?,
    };

    let s = r.response;
    let sf = format!("{field}.response");
    let mut status = Vec::with_capacity(s.status.len());
    const BODYLESS: [u32; 3] = [204, 205, 304];
    for (from, to) in &s.status {
        let f = format!("{sf}.status.{from}");
        let from_code = from.parse::<u32>().ok().filter(|c| (100..=599).contains(c));
        let Some(from_code) = from_code else {
            return Err(err(f, format!("`{from}` is not an HTTP status")));
        };
        if !(100..=599).contains(to) {
            return Err(err(f, format!("`{to}` is not an HTTP status")));
        }
        if from_code < 200 {
            return Err(err(f, format!("`{from}` is informational: it never reaches this filter")));
        }
        if *to < 200 {
            return Err(err(
                f,
                format!(
                    "`{to}` is informational: the client would wait for a final response that never comes"
                ),
            ));
        }
        if BODYLESS.contains(to) && !BODYLESS.contains(&from_code) {
            return Err(err(
                f,
                format!("`{to}` has no body: the upstream's `{from}` does, and the client would misread it"),
            ));
        }
        status.push((from_code, *to));
    }
    let response = ResponseOps {
        status,
        headers: name_ops(&format!("{sf}.headers"), &s.headers, true)?,
        body: body_ops(&format!("{sf}.body"), &s.body, |j| literal_text(source, index, "response", j))?,
    };

    let mut properties: Vec<Vec<String>> = Vec::new();
    let mut note = |t: &Template| {
        for p in t.vars().filter_map(|v| v.property_path()) {
            if !properties.contains(&p) {
                properties.push(p);
            }
        }
    };
    for op in request.headers.iter().chain(&request.query).chain(&response.headers) {
        if let Some(t) = template_of(op) {
            note(t);
        }
    }
    for op in request.body.iter().chain(&response.body) {
        if let Some(BodyValue::Template(t, _)) = value_of(op) {
            note(t);
        }
    }
    if let Some(t) = &request.host {
        note(t);
    }
    Ok(Rule { name, matcher, request, response, properties })
}

fn template_of(op: &NameOp) -> Option<&Template> {
    match op {
        Op::Replace(_, t) | Op::Add(_, t) | Op::Append(_, t) | Op::Set(_, t) => Some(t),
        Op::Remove(_) | Op::Rename(..) => None,
    }
}

fn value_of(op: &BodyOp) -> Option<&BodyValue> {
    match op {
        Op::Replace(_, v) | Op::Add(_, v) | Op::Append(_, v) | Op::Set(_, v) => Some(v),
        Op::Remove(_) | Op::Rename(..) => None,
    }
}

fn regex(field: &str, re: &str) -> Result<Regex, ConfigError> {
    Regex::new(re).map_err(|e| err(field, format!("invalid regex: {}", first_line(&e.to_string()))))
}

fn first_line(text: &str) -> &str {
    text.lines().find(|l| !l.trim().is_empty()).unwrap_or(text).trim()
}

fn template(field: &str, text: &str) -> Result<Template, ConfigError> {
    Template::parse(text).map_err(|e| err(field, e))
}

fn method(field: &str, m: &str) -> Result<String, ConfigError> {
    if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(err(field, format!("`{m}` is not an HTTP method")));
    }
    Ok(m.to_ascii_uppercase())
}

fn token(field: &str, name: &str) -> Result<String, ConfigError> {
    let valid = !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !valid {
        return Err(err(field, format!("`{name}` is not a valid header name")));
    }
    Ok(name.to_ascii_lowercase())
}

/// A header an operation may touch: not a pseudo-header (use `path`, `method`, `host` and
/// `status`), and not the framing headers the filter keeps right itself.
fn header_name(field: &str, name: &str) -> Result<String, ConfigError> {
    if name.starts_with(':') {
        return Err(err(
            field,
            format!("`{name}` is a pseudo-header: use `path`, `method`, `host` or `status`"),
        ));
    }
    let name = token(field, name)?;
    if matches!(name.as_str(), "content-length" | "transfer-encoding" | "host") {
        return Err(err(field, format!("`{name}` cannot be changed by a header operation")));
    }
    Ok(name)
}

/// `$1`, `${1}`, `$name`, `${name}` must name a group of the regex (`$$` is a dollar).
fn check_replacement(field: &str, re: &Regex, replace: &str) -> Result<(), ConfigError> {
    if !replace.starts_with('/') {
        return Err(err(field, "must start with `/`"));
    }
    let mut rest = replace;
    while let Some(i) = rest.find('$') {
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            rest = tail;
            continue;
        }
        let (group, tail) = if let Some(braced) = after.strip_prefix('{') {
            let Some(end) = braced.find('}') else {
                return Err(err(field, "unclosed `${`"));
            };
            (&braced[..end], &braced[end + 1..])
        } else {
            let end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        let known = match group.parse::<usize>() {
            Ok(n) => n < re.captures_len(),
            Err(_) => re.capture_names().flatten().any(|n| n == group),
        };
        if group.is_empty() || !known {
            return Err(err(
                field,
                format!(
                    "`${group}` is not a group of the regex (write `${{1}}x` to follow a group with text)"
                ),
            ));
        }
        rest = tail;
    }
    Ok(())
}

fn name_ops(field: &str, ops: &[RawOp], headers: bool) -> Result<Vec<NameOp>, ConfigError> {
    let mut out = Vec::with_capacity(ops.len());
    for (i, raw) in ops.iter().enumerate() {
        let f = format!("{field}[{i}]");
        if raw.path.is_some() {
            return Err(err(format!("{f}.path"), "headers and query parameters take `name`, not `path`"));
        }
        if raw.ty.is_some() {
            return Err(err(format!("{f}.type"), "only body operations take a `type`"));
        }
        let check = |sub: &str, n: &str| -> Result<String, ConfigError> {
            let nf = format!("{f}.{sub}");
            if headers {
                header_name(&nf, n)
            } else if n.is_empty() {
                Err(err(nf, "must not be empty"))
            } else {
                Ok(n.to_owned())
            }
        };
        let Some(name) = raw.name.as_deref() else {
            return Err(err(f, "missing field `name`"));
        };
        let name = check("name", name)?;
        let value = || -> Result<Template, ConfigError> {
            match &raw.value {
                Some(Value::String(s)) => template(&format!("{f}.value"), s),
                Some(other) => Ok(Template::literal(&other.to_string())),
                None => Err(err(f.clone(), "missing field `value`")),
            }
        };
        let no_value = || -> Result<(), ConfigError> {
            if raw.value.is_some() {
                return Err(err(format!("{f}.value"), "this operation takes no `value`"));
            }
            Ok(())
        };
        if raw.op != OpKind::Rename && raw.to.is_some() {
            return Err(err(format!("{f}.to"), "only `rename` takes `to`"));
        }
        let op = match raw.op {
            OpKind::Remove => {
                no_value()?;
                Op::Remove(name)
            }
            OpKind::Rename => {
                no_value()?;
                let Some(to) = raw.to.as_deref() else {
                    return Err(err(f, "missing field `to`"));
                };
                Op::Rename(name, check("to", to)?)
            }
            OpKind::Replace => Op::Replace(name, value()?),
            OpKind::Add => Op::Add(name, value()?),
            OpKind::Append => Op::Append(name, value()?),
            OpKind::Set => Op::Set(name, value()?),
        };
        out.push(op);
    }
    Ok(out)
}

/// The exact text of `rules[rule].<side>.body[op].value` in the config.
fn literal_text(source: &mut Option<Doc>, rule: usize, side: &str, op: usize) -> Option<JsonText> {
    let path = [
        "rules".to_owned(),
        rule.to_string(),
        side.to_owned(),
        "body".to_owned(),
        op.to_string(),
        "value".to_owned(),
    ];
    JsonText::parse(&source.as_mut()?.text_at(&path)?).ok()
}

fn body_ops(
    field: &str,
    ops: &[RawOp],
    mut literal: impl FnMut(usize) -> Option<JsonText>,
) -> Result<Vec<BodyOp>, ConfigError> {
    let mut out = Vec::with_capacity(ops.len());
    for (i, raw) in ops.iter().enumerate() {
        let f = format!("{field}[{i}]");
        if raw.name.is_some() {
            return Err(err(format!("{f}.name"), "body operations take `path`, not `name`"));
        }
        let Some(path) = raw.path.as_deref() else {
            return Err(err(f, "missing field `path`"));
        };
        let path = JsonPath::parse(path).map_err(|e| err(format!("{f}.path"), e))?;
        if raw.op != OpKind::Rename && raw.to.is_some() {
            return Err(err(format!("{f}.to"), "only `rename` takes `to`"));
        }
        let takes_value = !matches!(raw.op, OpKind::Remove | OpKind::Rename);
        if !takes_value && (raw.value.is_some() || raw.ty.is_some()) {
            let which = if raw.value.is_some() { "value" } else { "type" };
            return Err(err(format!("{f}.{which}"), "this operation takes no value"));
        }
        let value = if takes_value {
            let v = match (&raw.value, raw.ty) {
                (None, _) => return Err(err(f, "missing field `value`")),
                (Some(Value::String(s)), ty) => {
                    let ty = ty.unwrap_or_default();
                    let t = template(&format!("{f}.value"), s)?;
                    if let Some(text) = t.as_literal() {
                        ty.coerce(text.as_bytes()).map_err(|e| err(format!("{f}.value"), e))?;
                    }
                    BodyValue::Template(t, ty)
                }
                (Some(_), Some(_)) => {
                    return Err(err(format!("{f}.type"), "`type` applies to a string `value` only"));
                }
                (Some(v), None) => match literal(i) {
                    Some(text) => BodyValue::Literal(text),
                    // Not reachable: the config parsed, so its text is JSON.
                    None => BodyValue::Literal(
                        JsonText::parse(v.to_string().as_bytes())
                            .map_err(|e| err(format!("{f}.value"), e.to_string()))?,
                    ),
                },
            };
            Some(v)
        } else {
            None
        };
        let op = match (raw.op, value) {
            (OpKind::Remove, _) => Op::Remove(path),
            (OpKind::Rename, _) => {
                let Some(to) = raw.to.as_deref() else {
                    return Err(err(f, "missing field `to`"));
                };
                Op::Rename(path, JsonPath::parse(to).map_err(|e| err(format!("{f}.to"), e))?)
            }
            (OpKind::Replace, Some(v)) => Op::Replace(path, v),
            (OpKind::Add, Some(v)) => Op::Add(path, v),
            (OpKind::Append, Some(v)) => Op::Append(path, v),
            (OpKind::Set, Some(v)) => Op::Set(path, v),
            (_, None) => return Err(err(f, "missing field `value`")),
        };
        out.push(op);
    }
    Ok(out)
}
