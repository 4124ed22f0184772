//! transform decisions: which rules match a request, and what they change in its headers,
//! path, query, method, host and JSON body, and in the response's status, headers and body.
//!
//! Rules match the request as the client sent it and run in config order; every matching rule
//! applies. Templates read the original request too (see [`template`]). The glue feeds plain
//! data in and applies the [`HeaderEdit`]s and bodies that come out.

pub mod config;
pub mod headers;
pub mod json;
pub mod query;
pub mod request;
pub mod template;

use config::{Config, OnInvalidJson, OnOversize, Rule};
pub use headers::{HeaderEdit, Headers};
pub use request::{Captures, Request};

/// One operation on a named thing (`K`: header or query name, JSON path) with a value (`V`).
#[derive(Debug, Clone, PartialEq)]
pub enum Op<K, V> {
    /// Drop it.
    Remove(K),
    /// Move it to another name (replacing what is there); nothing if absent.
    Rename(K, K),
    /// Change it, only if present.
    Replace(K, V),
    /// Create it, only if absent.
    Add(K, V),
    /// Add one more value (headers, query) or array element (JSON), keeping the others.
    Append(K, V),
    /// Write it, present or not.
    Set(K, V),
}

/// The filter's stats, `tollgate.transform.<name>`.
pub const STATS: [&str; 7] = [
    "rules_applied",
    "body_transformed",
    "body_skipped_too_large",
    "body_skipped_not_json",
    "invalid_json",
    "rejected",
    "errors",
];

/// A rule that matched, with its path captures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    pub rule: usize,
    pub captures: Captures,
}

impl Config {
    /// Whether any rule matches on the route name (so the glue fetches it only then).
    pub fn uses_route_name(&self) -> bool {
        self.rules.iter().any(|r| r.matcher.route_name.is_some())
    }

    /// The rules that apply to `req`, in order.
    pub fn matching(&self, req: &Request) -> Vec<Matched> {
        self.rules
            .iter()
            .enumerate()
            .filter_map(|(i, rule)| Some(Matched { rule: i, captures: rule_captures(rule, req)? }))
            .collect()
    }

    /// The host properties the matched rules' templates read.
    pub fn properties(&self, matched: &[Matched]) -> Vec<Vec<String>> {
        let mut out: Vec<Vec<String>> = Vec::new();
        for p in self.matched_rules(matched).flat_map(|(r, _)| r.properties.iter()) {
            if !out.contains(p) {
                out.push(p.clone());
            }
        }
        out
    }

    fn matched_rules<'a>(&'a self, matched: &'a [Matched]) -> impl Iterator<Item = (&'a Rule, &'a Matched)> {
        matched.iter().filter_map(|m| self.rules.get(m.rule).map(|r| (r, m)))
    }

    pub fn wants_request_body(&self, matched: &[Matched]) -> bool {
        self.matched_rules(matched).any(|(r, _)| !r.request.body.is_empty())
    }

    pub fn wants_response_body(&self, matched: &[Matched]) -> bool {
        self.matched_rules(matched).any(|(r, _)| !r.response.body.is_empty())
    }

    pub fn has_response_ops(&self, matched: &[Matched]) -> bool {
        self.matched_rules(matched).any(|(r, _)| {
            !r.response.body.is_empty() || !r.response.headers.is_empty() || !r.response.status.is_empty()
        })
    }
}

/// `Some(captures)` when the rule matches. Captures come from the match's `path_regex`, else
/// from the path rewrite's regex (empty when it does not match).
fn rule_captures(rule: &Rule, req: &Request) -> Option<Captures> {
    let m = &rule.matcher;
    if let Some(name) = &m.route_name
        && req.route_name.as_deref() != Some(name.as_str())
    {
        return None;
    }
    if let Some(prefix) = &m.path_prefix
        && !req.path.starts_with(prefix.as_str())
    {
        return None;
    }
    if !m.methods.is_empty() && !m.methods.iter().any(|x| x.eq_ignore_ascii_case(&req.method)) {
        return None;
    }
    if !m.headers_present.iter().all(|h| req.header(h).is_some()) {
        return None;
    }
    match (&m.path_regex, &rule.request.path) {
        (Some(re), _) => Captures::of(re, &req.path),
        (None, Some(rewrite)) => Some(Captures::of(&rewrite.regex, &req.path).unwrap_or_default()),
        (None, None) => Some(Captures::default()),
    }
}

/// What to do with header edits, and the per-operation failures to count and log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeadChange {
    /// Apply in order. Pseudo-headers (`:path`, `:method`, `:authority`, `:status`) come as
    /// `Set` edits.
    pub edits: Vec<HeaderEdit>,
    /// `rule name: reason` for operations that could not apply.
    pub errors: Vec<String>,
}

/// The request head after the matched rules: headers, then path rewrite and query, method and
/// host, rule by rule.
pub fn request_head(config: &Config, req: &Request, matched: &[Matched]) -> HeadChange {
    let mut headers = Headers::new(req.headers.clone());
    let mut path = req.path.clone();
    let mut query = query::Query::parse(&req.query);
    let mut path_changed = false;
    let mut method = None;
    let mut authority = None;
    let mut errors = Vec::new();
    for (rule, m) in config.matched_rules(matched) {
        let ops = &rule.request;
        for op in &ops.headers {
            if let Err(e) = headers::apply(&mut headers, op, req, &m.captures) {
                errors.push(format!("{}: {e}", rule.name));
            }
        }
        if let Some(rewrite) = &ops.path {
            let new = rewrite.regex.replace(&path, rewrite.replace.as_str()).into_owned();
            if new.starts_with('/') && !new.contains(['?', '#', ' ']) {
                path_changed |= new != path;
                path = new;
            } else {
                errors.push(format!("{}: path rewrite gave `{new}`, not a path", rule.name));
            }
        }
        for op in &ops.query {
            path_changed |= query::apply(&mut query, op, req, &m.captures);
        }
        if let Some(x) = &ops.method {
            method = Some(x.clone());
        }
        if let Some(t) = &ops.host {
            match t.render(req, &m.captures) {
                Some(h) if !h.is_empty() && !h.contains(|c: char| c.is_whitespace() || c.is_control()) => {
                    authority = Some(h);
                }
                Some(h) => errors.push(format!("{}: host template gave `{h}`, not a host", rule.name)),
                None => {}
            }
        }
    }
    let mut edits = headers.into_edits();
    if path_changed {
        let q = query.to_query_string();
        let full = if q.is_empty() { path } else { format!("{path}?{q}") };
        edits.push(HeaderEdit::Set(":path".to_owned(), full));
    }
    if let Some(m) = method.filter(|m| *m != req.method) {
        edits.push(HeaderEdit::Set(":method".to_owned(), m));
    }
    if let Some(a) = authority.filter(|a| *a != req.authority) {
        edits.push(HeaderEdit::Set(":authority".to_owned(), a));
    }
    HeadChange { edits, errors }
}

/// The response head after the matched rules: status mapping, then header operations. Header
/// templates read the request.
pub fn response_head(
    config: &Config,
    req: &Request,
    matched: &[Matched],
    status: Option<u32>,
    response_headers: Vec<(String, String)>,
) -> HeadChange {
    let mut headers = Headers::new(response_headers);
    let mut errors = Vec::new();
    let mut current = status;
    for (rule, m) in config.matched_rules(matched) {
        if let Some(code) = current
            && let Some((_, to)) = rule.response.status.iter().find(|(from, _)| *from == code)
        {
            current = Some(*to);
        }
        for op in &rule.response.headers {
            if let Err(e) = headers::apply(&mut headers, op, req, &m.captures) {
                errors.push(format!("{}: {e}", rule.name));
            }
        }
    }
    let mut edits = headers.into_edits();
    if let Some(code) = current
        && current != status
    {
        edits.insert(0, HeaderEdit::Set(":status".to_owned(), code.to_string()));
    }
    HeadChange { edits, errors }
}

/// Whether a body may be buffered and changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyPlan {
    /// JSON within the cap (as far as the headers tell): buffer it.
    Buffer,
    /// Not JSON (or compressed, or a stream): leave it alone, unbuffered.
    NotJson,
    /// `content-length` is over the cap.
    TooLarge,
}

/// `application/json` or any `+json` type.
pub fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Decides from the headers whether a body can be transformed.
pub fn body_plan(
    content_type: Option<&str>,
    content_encoding: Option<&str>,
    content_length: Option<&str>,
    max_body_bytes: usize,
) -> BodyPlan {
    if !content_type.is_some_and(is_json) {
        return BodyPlan::NotJson;
    }
    if content_encoding.is_some_and(|e| !e.trim().eq_ignore_ascii_case("identity")) {
        return BodyPlan::NotJson;
    }
    match content_length.and_then(|l| l.trim().parse::<u64>().ok()) {
        Some(len) if len > max_body_bytes as u64 => BodyPlan::TooLarge,
        _ => BodyPlan::Buffer,
    }
}

/// What happens to a buffered body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyOutcome {
    /// Send this body instead (fix `content-length`).
    Changed(Vec<u8>),
    /// Send the body as it came.
    Unchanged,
    /// Not valid JSON: pass it unchanged or refuse, as configured.
    Invalid,
}

/// A body's outcome and the operations that could not apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyChange {
    pub outcome: BodyOutcome,
    pub errors: Vec<String>,
}

/// Applies the matched rules' request body operations.
pub fn request_body(config: &Config, req: &Request, matched: &[Matched], body: &[u8]) -> BodyChange {
    let ops = config.matched_rules(matched).map(|(r, m)| (r.name.as_str(), r.request.body.as_slice(), m));
    transform_body(ops, req, body)
}

/// Applies the matched rules' response body operations.
pub fn response_body(config: &Config, req: &Request, matched: &[Matched], body: &[u8]) -> BodyChange {
    let ops = config.matched_rules(matched).map(|(r, m)| (r.name.as_str(), r.response.body.as_slice(), m));
    transform_body(ops, req, body)
}

fn transform_body<'a>(
    rules: impl Iterator<Item = (&'a str, &'a [config::BodyOp], &'a Matched)>,
    req: &Request,
    body: &[u8],
) -> BodyChange {
    let mut errors = Vec::new();
    if body.iter().all(u8::is_ascii_whitespace) {
        return BodyChange { outcome: BodyOutcome::Unchanged, errors };
    }
    let Ok(mut doc) = serde_json::from_slice::<serde_json::Value>(body) else {
        return BodyChange { outcome: BodyOutcome::Invalid, errors };
    };
    let mut changed = false;
    for (name, ops, m) in rules {
        for op in ops {
            match json::apply(&mut doc, op, req, &m.captures) {
                Ok(c) => changed |= c,
                Err(e) => errors.push(format!("{name}: {e}")),
            }
        }
    }
    let outcome = if changed {
        match serde_json::to_vec(&doc) {
            Ok(bytes) => BodyOutcome::Changed(bytes),
            Err(e) => {
                errors.push(format!("re-encoding the body: {e}"));
                BodyOutcome::Unchanged
            }
        }
    } else {
        BodyOutcome::Unchanged
    };
    BodyChange { outcome, errors }
}

/// What the glue does when a body is over the cap or invalid: the status to refuse with, if any.
pub fn oversize_status(config: &Config) -> Option<u32> {
    (config.on_oversize == OnOversize::Reject).then_some(413)
}

/// Status to refuse an invalid JSON request body with. A response always passes unchanged: its
/// headers are on their way to the client before its body is read.
pub fn invalid_json_status(config: &Config) -> Option<u32> {
    (config.on_invalid_json == OnInvalidJson::Reject).then_some(400)
}

#[cfg(test)]
mod tests;
