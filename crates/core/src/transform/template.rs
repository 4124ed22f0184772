//! Value templates: literal text with `{placeholder}`s over the request, compiled once.
//!
//! | placeholder | value |
//! |---|---|
//! | `{header.NAME}` | the first value of request header `NAME`, its bytes as sent |
//! | `{query.NAME}` | the first value of query parameter `NAME`, percent-decoded |
//! | `{path.N}`, `{path.NAME}` | capture group `N` (or named group) of the rule's path regex |
//! | `{method}`, `{path}`, `{host}` | the request's method, normalised path (no query) and authority |
//! | `{client_ip}` | the downstream address without its port |
//! | `{route_name}` | Envoy's route name |
//! | `{identity.NAME}` | filter-state property `tollgate.NAME` published by an auth filter (`consumer_id`, `key_id`, `scopes`, `tier`, `claims.sub`, …) |
//! | `{filter_state.NAME}` | any filter-state property `NAME` |
//!
//! `{{` and `}}` stand for literal braces. Values are read from the request as the client sent it;
//! a template renders bytes (a header that is not UTF-8 keeps its bytes).
//! When a placeholder has no value the whole template has none, and the operation using it is
//! skipped (so a missing identity never becomes an empty header).

use super::request::{Captures, Request};
use crate::identity::FILTER_STATE_PREFIX;

/// What a placeholder reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Var {
    Header(String),
    Query(String),
    CaptureIndex(usize),
    CaptureName(String),
    Method,
    Path,
    Host,
    ClientIp,
    RouteName,
    /// A host property, by its path segments (identity and filter state).
    Property(Vec<String>),
}

impl Var {
    /// The host property this variable needs fetched, if any.
    pub fn property_path(&self) -> Option<Vec<String>> {
        match self {
            Var::Property(path) => Some(path.clone()),
            Var::ClientIp => Some(vec!["source".to_owned(), "address".to_owned()]),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Var(Var),
}

/// A compiled template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    /// Compiles `text`; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = text;
        while let Some(pos) = rest.find(['{', '}']) {
            lit.push_str(&rest[..pos]);
            let opening = rest[pos..].starts_with('{');
            let brace = if opening { '{' } else { '}' };
            let after = &rest[pos + 1..];
            if let Some(tail) = after.strip_prefix(brace) {
                lit.push(brace);
                rest = tail;
                continue;
            }
            if !opening {
                return Err("unmatched `}` (write `}}` for a literal brace)".to_owned());
            }
            let Some(end) = after.find('}') else {
                return Err("unclosed `{` (write `{{` for a literal brace)".to_owned());
            };
            let var = parse_var(&after[..end])?;
            if !lit.is_empty() {
                parts.push(Part::Lit(std::mem::take(&mut lit)));
            }
            parts.push(Part::Var(var));
            rest = &after[end + 1..];
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        Ok(Self { parts })
    }

    /// A template of fixed text.
    pub fn literal(text: &str) -> Self {
        Self { parts: vec![Part::Lit(text.to_owned())] }
    }

    /// The text, when the template has no placeholder.
    pub fn as_literal(&self) -> Option<String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Lit(s) => out.push_str(s),
                Part::Var(_) => return None,
            }
        }
        Some(out)
    }

    pub fn vars(&self) -> impl Iterator<Item = &Var> {
        self.parts.iter().filter_map(|p| match p {
            Part::Var(v) => Some(v),
            Part::Lit(_) => None,
        })
    }

    /// Whether a placeholder reads `var`.
    pub fn reads(&self, var: &Var) -> bool {
        self.vars().any(|v| v == var)
    }

    /// Renders over a request; `None` if a placeholder has no value.
    pub fn render(&self, req: &Request, captures: &Captures) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        for part in &self.parts {
            match part {
                Part::Lit(s) => out.extend_from_slice(s.as_bytes()),
                Part::Var(v) => out.extend_from_slice(&req.lookup(v, captures)?),
            }
        }
        Some(out)
    }
}

fn parse_var(name: &str) -> Result<Var, String> {
    let bad = || {
        format!(
            "unknown placeholder `{{{name}}}` (expected header.NAME, query.NAME, path.N, method, path, host, \
             client_ip, route_name, identity.NAME or filter_state.NAME)"
        )
    };
    let (head, rest) = match name.split_once('.') {
        Some((h, r)) => (h, Some(r)),
        None => (name, None),
    };
    let rest = match rest {
        Some("") => return Err(format!("placeholder `{{{name}}}` needs a name after `{head}.`")),
        other => other,
    };
    let var = match (head, rest) {
        ("method", None) => Var::Method,
        ("path", None) => Var::Path,
        ("host", None) => Var::Host,
        ("client_ip", None) => Var::ClientIp,
        ("route_name", None) => Var::RouteName,
        ("header", Some(h)) => Var::Header(h.to_ascii_lowercase()),
        ("query", Some(q)) => Var::Query(q.to_owned()),
        ("path", Some(c)) => match c.parse::<usize>() {
            Ok(n) => Var::CaptureIndex(n),
            Err(_) if c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') => {
                Var::CaptureName(c.to_owned())
            }
            Err(_) => return Err(bad()),
        },
        ("identity", Some(id)) => Var::Property(vec![format!("{FILTER_STATE_PREFIX}{id}")]),
        ("filter_state", Some(fs)) => Var::Property(vec![fs.to_owned()]),
        _ => return Err(bad()),
    };
    Ok(var)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Request {
        let mut req = Request::from_headers(vec![
            (":method".into(), "POST".into()),
            (":path".into(), "/v1//users/./42?page=2&q=a%20b&raw=%FF".into()),
            (":authority".into(), "api.example".into()),
            ("x-user".into(), "bob".into()),
            ("x-user".into(), "second".into()),
            ("x-bytes".into(), b"caf\xe9".to_vec()),
        ]);
        req.route_name = Some("users".into());
        req.properties.insert(vec!["tollgate.consumer_id".into()], "alice".into());
        req.properties.insert(vec!["tollgate.claims.sub".into()], "u-1".into());
        req.properties.insert(vec!["source".into(), "address".into()], "10.0.0.7:5555".into());
        req
    }

    #[test]
    fn header_and_query_bytes_are_kept() {
        assert_eq!(render_bytes("<{header.x-bytes}>"), Some(b"<caf\xe9>".to_vec()));
        assert_eq!(render_bytes("{query.raw}"), Some(vec![0xff]));
    }

    fn render(t: &str) -> Option<String> {
        render_bytes(t).map(|b| String::from_utf8(b).unwrap())
    }

    fn render_bytes(t: &str) -> Option<Vec<u8>> {
        let captures = Captures::from_parts(
            vec![Some("/v1/users/42".into()), Some("42".into())],
            vec![("id".into(), 1)],
        );
        Template::parse(t).unwrap().render(&request(), &captures)
    }

    #[test]
    fn placeholders_render_over_the_request() {
        assert_eq!(render("{method} {path} {host}").as_deref(), Some("POST /v1/users/42 api.example"));
        assert_eq!(render("u={header.X-User}").as_deref(), Some("u=bob"));
        assert_eq!(render("{query.page}/{query.q}").as_deref(), Some("2/a b"));
        assert_eq!(render("{path.1}={path.id}").as_deref(), Some("42=42"));
        assert_eq!(render("{client_ip}").as_deref(), Some("10.0.0.7"));
        assert_eq!(render("{route_name}").as_deref(), Some("users"));
        assert_eq!(render("{identity.consumer_id}:{identity.claims.sub}").as_deref(), Some("alice:u-1"));
        assert_eq!(render("{filter_state.tollgate.consumer_id}").as_deref(), Some("alice"));
    }

    #[test]
    fn braces_escape_and_a_missing_value_renders_nothing() {
        assert_eq!(render("{{literal}} {method}").as_deref(), Some("{literal} POST"));
        assert_eq!(render("x-{header.absent}"), None);
        assert_eq!(render("{identity.key_id}"), None);
        assert_eq!(render("{path.7}"), None);
        assert_eq!(render("plain"), Some("plain".into()));
        assert_eq!(Template::parse("a{{b").unwrap().as_literal().as_deref(), Some("a{b"));
        assert_eq!(Template::parse("{method}").unwrap().as_literal(), None);
    }

    #[test]
    fn bad_templates_are_refused_with_a_reason() {
        assert!(Template::parse("{nope}").unwrap_err().contains("unknown placeholder `{nope}`"));
        assert!(Template::parse("{header.}").unwrap_err().contains("needs a name"));
        assert!(Template::parse("{method").unwrap_err().contains("unclosed"));
        assert!(Template::parse("a}b").unwrap_err().contains("unmatched"));
        assert!(Template::parse("{path.a-b}").unwrap_err().contains("unknown placeholder"));
    }

    #[test]
    fn client_ip_strips_the_port_of_v4_and_v6() {
        let mut req = request();
        let none = Captures::default();
        let t = Template::parse("{client_ip}").unwrap();
        req.properties.insert(vec!["source".into(), "address".into()], "[::1]:8080".into());
        assert_eq!(t.render(&req, &none).as_deref(), Some(&b"::1"[..]));
        req.properties.insert(vec!["source".into(), "address".into()], "192.0.2.1".into());
        assert_eq!(t.render(&req, &none).as_deref(), Some(&b"192.0.2.1"[..]));
    }
}
