//! transform decisions: which rules match a request, and what they change in its headers,
//! path, query, method, host and JSON body, and in the response's status, headers and body.
//!
//! Rules match the request as the client sent it (its path normalised) and run in config order;
//! every matching rule applies. Templates read the original request too (see [`template`]). The
//! glue feeds plain data in and applies the [`HeaderEdit`]s, bodies and [`Refusal`]s that come
//! out.

pub mod config;
pub mod doc;
pub mod headers;
pub mod json;
pub mod query;
pub mod request;
pub mod template;

use config::{Config, OnInvalidJson, OnOversize, Rule};
pub use headers::{HeaderEdit, Headers};
pub use request::{Captures, Request};
use template::Var;

use crate::route::PathRefused;

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

/// Why the filter answers instead of the upstream (or instead of the upstream's answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A rule looks at the path and the path has an encoded slash (see
    /// [`crate::route::normalize_path`]).
    BadPath,
    /// A path rewrite or host template gave something that is not a path or an authority.
    CannotRewrite,
    /// A request body over `max_body_bytes` with `on_oversize: reject`.
    RequestTooLarge,
    /// A request body that is not JSON with `on_invalid_json: reject`.
    RequestNotJson,
    /// A response body over `max_body_bytes` with `on_oversize: reject`.
    ResponseTooLarge,
    /// A response body that is not JSON with `on_invalid_json: reject`.
    ResponseNotJson,
    /// The proxy refused the transformed body: the original must not go on in its place.
    Failed,
}

impl Refusal {
    pub fn status(self) -> u32 {
        match self {
            Self::BadPath => crate::route::PATH_REFUSED_STATUS,
            Self::CannotRewrite | Self::RequestNotJson => 400,
            Self::RequestTooLarge => 413,
            Self::ResponseTooLarge | Self::ResponseNotJson => 502,
            Self::Failed => 500,
        }
    }

    /// The `error` of the uniform error body.
    pub fn error(self) -> &'static str {
        match self {
            Self::BadPath | Self::CannotRewrite | Self::RequestNotJson => "bad_request",
            Self::RequestTooLarge => "payload_too_large",
            Self::ResponseTooLarge | Self::ResponseNotJson => "bad_gateway",
            Self::Failed => "internal_error",
        }
    }

    /// The client's message (the precise reason goes to the log).
    pub fn message(self) -> &'static str {
        match self {
            Self::BadPath => crate::route::PATH_REFUSED_MESSAGE,
            Self::CannotRewrite => "the request cannot be transformed",
            Self::RequestTooLarge => "the request body is too large to transform",
            Self::RequestNotJson => "the request body is not valid JSON",
            Self::ResponseTooLarge => "the upstream response is too large to transform",
            Self::ResponseNotJson => "the upstream response is not valid JSON",
            Self::Failed => "the message could not be transformed",
        }
    }
}

/// Bytes from a request made safe for a log line: shown as text, with control bytes, quotes,
/// backslashes and bytes that are not UTF-8 escaped, and cut after 128 characters.
pub fn shown(bytes: &[u8]) -> String {
    const MAX: usize = 128;
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::new();
    for (n, c) in text.chars().enumerate() {
        if n == MAX {
            out.push('…');
            break;
        }
        match c {
            '\u{fffd}' => out.push_str("\\u{fffd}"),
            // The log quotes values in backticks.
            '`' => out.push_str("\\u{60}"),
            c if c.is_control() || c == '\\' => out.extend(c.escape_default()),
            c => out.push(c),
        }
    }
    out
}

/// A rule that matched, with its path captures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    pub rule: usize,
    pub captures: Captures,
}

impl Config {
    /// Whether any rule matches on the route name (so the glue fetches it before matching).
    pub fn matches_route_name(&self) -> bool {
        self.rules.iter().any(|r| r.matcher.route_name.is_some())
    }

    /// Whether a matched rule's template reads `{route_name}` (so the glue fetches it then).
    pub fn reads_route_name(&self, matched: &[Matched]) -> bool {
        self.matched_rules(matched).any(|(r, _)| r.reads(&Var::RouteName))
    }

    /// The rules that apply to `req`, in order. `Err` when a rule that could apply looks at the
    /// path and the path cannot be normalised: whether it applies cannot be told.
    pub fn matching(&self, req: &Request) -> Result<Vec<Matched>, PathRefused> {
        let mut matched = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            if !other_conditions_hold(rule, req) {
                continue;
            }
            if let Some(refused) = req.path_refused
                && rule.uses_path()
            {
                return Err(refused);
            }
            if let Some(captures) = path_captures(rule, req) {
                matched.push(Matched { rule: i, captures });
            }
        }
        Ok(matched)
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

/// Route name, methods and headers.
fn other_conditions_hold(rule: &Rule, req: &Request) -> bool {
    let m = &rule.matcher;
    if let Some(name) = &m.route_name
        && req.route_name.as_deref() != Some(name.as_str())
    {
        return false;
    }
    if !m.methods.is_empty() && !m.methods.iter().any(|x| x.eq_ignore_ascii_case(&req.method)) {
        return false;
    }
    m.headers_present.iter().all(|h| req.header(h).is_some())
}

/// `Some(captures)` when the rule's path conditions hold on the normalised path. Captures come
/// from the match's `path_regex`, else from the path rewrite's regex (empty when it does not
/// match).
fn path_captures(rule: &Rule, req: &Request) -> Option<Captures> {
    let m = &rule.matcher;
    if let Some(prefix) = &m.path_prefix
        && !req.path.starts_with(prefix.as_str())
    {
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
    /// `rule name: reason` for operations that could not apply (safe to log).
    pub errors: Vec<String>,
    /// Set when the request must be refused instead (the reason is in `errors`).
    pub refuse: Option<Refusal>,
}

/// The request head after the matched rules: headers, then path rewrite and query, method and
/// host, rule by rule. When the path or query changes, `:path` is written from the normalised
/// path the rules matched: a rewrite never starts from one spelling of the path and sends
/// another.
pub fn request_head(config: &Config, req: &Request, matched: &[Matched]) -> HeadChange {
    let mut headers = Headers::new(req.headers.clone());
    let mut path = req.path.clone();
    let mut query = query::Query::parse(&req.query);
    let mut path_changed = false;
    let mut method = None;
    let mut authority = None;
    let mut errors = Vec::new();
    let mut refuse = None;
    for (rule, m) in config.matched_rules(matched) {
        let ops = &rule.request;
        for op in &ops.headers {
            if let Err(e) = headers::apply(&mut headers, op, req, &m.captures) {
                errors.push(format!("{}: {e}", rule.name));
            }
        }
        if let Some(rewrite) = &ops.path {
            let new = rewrite.regex.replace(&path, rewrite.replace.as_str()).into_owned();
            if is_path(&new) {
                path_changed |= new != path;
                path = new;
            } else {
                // Skipping it would send the request on unrewritten, where the rule says it
                // must not go.
                errors.push(format!(
                    "{}: path rewrite gave `{}`, not a path",
                    rule.name,
                    shown(new.as_bytes())
                ));
                refuse = Some(Refusal::CannotRewrite);
            }
        }
        for op in &ops.query {
            path_changed |= query::apply(&mut query, op, req, &m.captures);
        }
        if let Some(x) = &ops.method {
            method = Some(x.clone());
        }
        // A template with no value skips the rewrite, like any operation.
        if let Some(h) = ops.host.as_ref().and_then(|t| t.render(req, &m.captures)) {
            match String::from_utf8(h) {
                Ok(h) if is_authority(&h) => authority = Some(h),
                other => {
                    let h = other.unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
                    errors.push(format!(
                        "{}: host template gave `{}`, not a host",
                        rule.name,
                        shown(h.as_bytes())
                    ));
                    refuse = Some(Refusal::CannotRewrite);
                }
            }
        }
    }
    let mut edits = headers.into_edits();
    if path_changed {
        let q = query.to_query_string();
        let full = if q.is_empty() { path } else { format!("{path}?{q}") };
        edits.push(HeaderEdit::Set(":path".to_owned(), full.into_bytes()));
    }
    if let Some(m) = method.filter(|m| *m != req.method) {
        edits.push(HeaderEdit::Set(":method".to_owned(), m.into_bytes()));
    }
    if let Some(a) = authority.filter(|a| *a != req.authority) {
        edits.push(HeaderEdit::Set(":authority".to_owned(), a.into_bytes()));
    }
    HeadChange { edits, errors, refuse }
}

/// A path to send upstream: starts with `/`, and every byte may appear in a path (RFC 3986
/// `pchar` and `/`, `%` for the escapes the path already had).
pub fn is_path(path: &str) -> bool {
    path.starts_with('/')
        && path.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/%".contains(&b))
}

/// An authority a host template may produce: a host (DNS name or IPv4 address: letters,
/// digits, `-`, `.`, `_`, `~`; or an IPv6 literal in brackets) and an optional port. No user
/// information (`good.example@evil.example`), path (`a/../admin`), query or fragment.
pub fn is_authority(authority: &str) -> bool {
    let (host_ok, rest) = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((addr, rest)) => (
                !addr.is_empty() && addr.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.'),
                rest,
            ),
            None => return false,
        },
        None => {
            let (host, rest) = authority.split_at(authority.find(':').unwrap_or(authority.len()));
            (
                !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b)),
                rest,
            )
        }
    };
    let port_ok = match rest.strip_prefix(':') {
        None => rest.is_empty(),
        Some(port) => {
            !port.is_empty()
                && port.len() <= 5
                && port.bytes().all(|b| b.is_ascii_digit())
                && port.parse::<u32>().is_ok_and(|p| p <= 65_535)
        }
    };
    host_ok && port_ok
}

/// The response head after the matched rules: status mapping, then header operations. Header
/// templates read the request.
pub fn response_head(
    config: &Config,
    req: &Request,
    matched: &[Matched],
    status: Option<u32>,
    response_headers: Vec<(String, Vec<u8>)>,
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
        edits.insert(0, HeaderEdit::Set(":status".to_owned(), code.to_string().into_bytes()));
    }
    HeadChange { edits, errors, refuse: None }
}

/// Whether a body may be buffered and changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyPlan {
    /// JSON within the cap (as far as the headers tell: a body without `content-length` may
    /// still turn out larger): buffer it.
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
    let mut doc = match doc::Doc::parse(body.to_vec()) {
        Ok(doc) => doc,
        Err(e) => {
            errors.push(format!("the body is not JSON: {e}"));
            return BodyChange { outcome: BodyOutcome::Invalid, errors };
        }
    };
    for (name, ops, m) in rules {
        for op in ops {
            if let Err(e) = json::apply(&mut doc, op, req, &m.captures) {
                errors.push(format!("{name}: {e}"));
            }
        }
    }
    let outcome = if doc.changed() { BodyOutcome::Changed(doc.to_bytes()) } else { BodyOutcome::Unchanged };
    BodyChange { outcome, errors }
}

/// Which message a body belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Request,
    Response,
}

/// What to do with a body over `max_body_bytes`: refuse (`on_oversize: reject`) or let it pass
/// unchanged (`None`).
pub fn oversize(config: &Config, side: Side) -> Option<Refusal> {
    (config.on_oversize == OnOversize::Reject).then_some(match side {
        Side::Request => Refusal::RequestTooLarge,
        Side::Response => Refusal::ResponseTooLarge,
    })
}

/// What to do with a body that claims JSON and is not: refuse (`on_invalid_json: reject`) or
/// let it pass unchanged (`None`).
pub fn invalid_json(config: &Config, side: Side) -> Option<Refusal> {
    (config.on_invalid_json == OnInvalidJson::Reject).then_some(match side {
        Side::Request => Refusal::RequestNotJson,
        Side::Response => Refusal::ResponseNotJson,
    })
}

#[cfg(test)]
mod tests;
