//! The request as the client sent it: what rules match on and templates read.

use std::borrow::Cow;
use std::collections::BTreeMap;

use super::query;
use super::template::Var;
use crate::route::{self, PathRefused};

/// A snapshot of the request head and the host properties the templates need.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path without its query string, as the client sent it.
    pub raw_path: String,
    /// The path rules match, templates read and rewrites start from: `raw_path` normalised
    /// ([`route::normalize_path`]: `//a/./b` and `/%61/b` are `/a/b`), or `raw_path` itself when
    /// it cannot be normalised (see `path_refused`).
    pub path: String,
    /// Why the path cannot be normalised (an encoded slash): a rule that looks at the path cannot
    /// tell whether it applies.
    pub path_refused: Option<PathRefused>,
    /// The raw query string (without `?`).
    pub query: String,
    pub authority: String,
    /// Lower-case names in order, values as the client sent their bytes; a repeated header
    /// appears once per value.
    pub headers: Vec<(String, Vec<u8>)>,
    pub route_name: Option<String>,
    /// Property values by path (e.g. `["tollgate.consumer_id"]`, `["source", "address"]`).
    pub properties: BTreeMap<Vec<String>, Vec<u8>>,
}

impl Request {
    /// Builds a request from the proxy's header list (pseudo-headers included).
    pub fn from_headers(headers: Vec<(String, Vec<u8>)>) -> Self {
        let mut req = Request::default();
        let mut rest = Vec::with_capacity(headers.len());
        for (name, value) in headers {
            let name = name.to_ascii_lowercase();
            match name.as_str() {
                ":method" => req.method = text(value),
                ":authority" => req.authority = text(value),
                ":path" => {
                    let value = text(value);
                    let (p, q) = route::split_path(&value);
                    req.raw_path = p.to_owned();
                    req.query = q.to_owned();
                }
                _ => rest.push((name, value)),
            }
        }
        req.headers = rest;
        match route::normalize_path(&req.raw_path) {
            Ok(p) => req.path = p.into_owned(),
            Err(refused) => {
                req.path = req.raw_path.clone();
                req.path_refused = Some(refused);
            }
        }
        req
    }

    /// The first value of a header (lower-case name).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
    }

    /// The first value of a header as text (bytes that are not UTF-8 replaced).
    pub fn header_text(&self, name: &str) -> Option<Cow<'_, str>> {
        self.header(name).map(String::from_utf8_lossy)
    }

    /// The bytes a placeholder stands for.
    pub fn lookup(&self, var: &Var, captures: &Captures) -> Option<Vec<u8>> {
        let bytes = |s: &str| s.as_bytes().to_vec();
        match var {
            Var::Header(name) => self.header(name).map(<[u8]>::to_vec),
            Var::Query(name) => query::first_value(&self.query, name),
            Var::CaptureIndex(i) => captures.index(*i).map(bytes),
            Var::CaptureName(name) => captures.name(name).map(bytes),
            Var::Method => Some(bytes(&self.method)),
            Var::Path => Some(bytes(&self.path)),
            Var::Host => (!self.authority.is_empty()).then(|| bytes(&self.authority)),
            Var::RouteName => self.route_name.as_deref().map(bytes),
            Var::ClientIp => {
                let addr = self.properties.get(&var.property_path()?)?;
                Some(strip_port(addr).to_vec())
            }
            Var::Property(path) => self.properties.get(path).cloned(),
        }
    }
}

/// Pseudo-header values are ASCII in practice; anything else is replaced, never trusted.
fn text(value: Vec<u8>) -> String {
    match String::from_utf8(value) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

/// `10.0.0.1:5555` → `10.0.0.1`, `[::1]:80` → `::1`; an address without a port is unchanged.
fn strip_port(addr: &[u8]) -> &[u8] {
    if let Some(v6) = addr.strip_prefix(b"[") {
        return v6.split(|b| *b == b']').next().unwrap_or(v6);
    }
    match addr.iter().rposition(|b| *b == b':') {
        Some(i) => {
            let (host, port) = (&addr[..i], &addr[i + 1..]);
            if !host.contains(&b':') && port.iter().all(u8::is_ascii_digit) { host } else { addr }
        }
        None => addr,
    }
}

/// The capture groups of a rule's path regex for one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Captures {
    groups: Vec<Option<String>>,
    names: Vec<(String, usize)>,
}

impl Captures {
    pub fn from_parts(groups: Vec<Option<String>>, names: Vec<(String, usize)>) -> Self {
        Self { groups, names }
    }

    /// The captures of `regex` on `text`; `None` if it does not match.
    pub fn of(regex: &regex_lite::Regex, text: &str) -> Option<Self> {
        let caps = regex.captures(text)?;
        let groups = (0..caps.len()).map(|i| caps.get(i).map(|m| m.as_str().to_owned())).collect();
        let names =
            regex.capture_names().enumerate().filter_map(|(i, n)| n.map(|n| (n.to_owned(), i))).collect();
        Some(Self { groups, names })
    }

    pub fn index(&self, i: usize) -> Option<&str> {
        self.groups.get(i).and_then(|g| g.as_deref())
    }

    pub fn name(&self, name: &str) -> Option<&str> {
        self.names.iter().find(|(n, _)| n == name).and_then(|(_, i)| self.index(*i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudo_headers_become_fields() {
        let req = Request::from_headers(vec![
            (":method".into(), "GET".into()),
            (":path".into(), "/a/b?x=1".into()),
            (":authority".into(), "h".into()),
            ("X-A".into(), b"1\xff".to_vec()),
        ]);
        assert_eq!((req.method.as_str(), req.path.as_str(), req.query.as_str()), ("GET", "/a/b", "x=1"));
        assert_eq!(req.authority, "h");
        assert_eq!(req.header("x-a"), Some(&b"1\xff"[..]), "header bytes are kept as sent");
        assert_eq!(req.headers.len(), 1);
    }

    #[test]
    fn the_path_is_normalised_and_an_encoded_slash_noted() {
        let req = |p: &str| Request::from_headers(vec![(":path".into(), p.into())]);
        let r = req("//api/./v1/%75sers?q=1");
        assert_eq!((r.raw_path.as_str(), r.path.as_str()), ("//api/./v1/%75sers", "/api/v1/users"));
        assert_eq!(r.path_refused, None);
        let r = req("/api/v1%2F..%2Fadmin");
        assert_eq!(r.path, "/api/v1%2F..%2Fadmin");
        assert_eq!(r.path_refused, Some(PathRefused::EncodedSlash));
    }

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port(b"10.1.2.3:80"), b"10.1.2.3");
        assert_eq!(strip_port(b"[2001:db8::1]:443"), b"2001:db8::1");
        assert_eq!(strip_port(b"2001:db8::1"), b"2001:db8::1");
    }

    #[test]
    fn named_and_numbered_captures() {
        let re = regex_lite::Regex::new(r"^/v(?P<version>\d+)/(.*)$").unwrap();
        let c = Captures::of(&re, "/v2/users").unwrap();
        assert_eq!(c.index(1), Some("2"));
        assert_eq!(c.name("version"), Some("2"));
        assert_eq!(c.index(2), Some("users"));
        assert_eq!(c.index(3), None);
        assert!(Captures::of(&re, "/users").is_none());
    }
}
