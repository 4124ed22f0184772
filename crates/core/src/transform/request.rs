//! The request as the client sent it: what rules match on and templates read.

use std::collections::BTreeMap;

use super::query;
use super::template::Var;

/// A snapshot of the request head and the host properties the templates need.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path without its query string.
    pub path: String,
    /// The raw query string (without `?`).
    pub query: String,
    pub authority: String,
    /// Lower-case names in order; a repeated header appears once per value.
    pub headers: Vec<(String, String)>,
    pub route_name: Option<String>,
    /// Property values by path (e.g. `["tollgate.consumer_id"]`, `["source", "address"]`).
    pub properties: BTreeMap<Vec<String>, String>,
}

impl Request {
    /// Builds a request from the proxy's header list (pseudo-headers included).
    pub fn from_headers(headers: Vec<(String, String)>) -> Self {
        let mut req = Request::default();
        let mut rest = Vec::with_capacity(headers.len());
        for (name, value) in headers {
            let name = name.to_ascii_lowercase();
            match name.as_str() {
                ":method" => req.method = value,
                ":authority" => req.authority = value,
                ":path" => {
                    let (p, q) = crate::route::split_path(&value);
                    req.path = p.to_owned();
                    req.query = q.to_owned();
                }
                _ => rest.push((name, value)),
            }
        }
        req.headers = rest;
        req
    }

    /// The first value of a header (lower-case name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn lookup(&self, var: &Var, captures: &Captures) -> Option<String> {
        match var {
            Var::Header(name) => self.header(name).map(str::to_owned),
            Var::Query(name) => query::first_value(&self.query, name),
            Var::CaptureIndex(i) => captures.index(*i).map(str::to_owned),
            Var::CaptureName(name) => captures.name(name).map(str::to_owned),
            Var::Method => Some(self.method.clone()),
            Var::Path => Some(self.path.clone()),
            Var::Host => (!self.authority.is_empty()).then(|| self.authority.clone()),
            Var::RouteName => self.route_name.clone(),
            Var::ClientIp => {
                let addr = self.properties.get(&var.property_path()?)?;
                Some(strip_port(addr).to_owned())
            }
            Var::Property(path) => self.properties.get(path).cloned(),
        }
    }
}

/// `10.0.0.1:5555` → `10.0.0.1`, `[::1]:80` → `::1`; an address without a port is unchanged.
fn strip_port(addr: &str) -> &str {
    if let Some(v6) = addr.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => addr,
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
            ("X-A".into(), "1".into()),
        ]);
        assert_eq!((req.method.as_str(), req.path.as_str(), req.query.as_str()), ("GET", "/a/b", "x=1"));
        assert_eq!(req.authority, "h");
        assert_eq!(req.header("x-a"), Some("1"));
        assert_eq!(req.headers.len(), 1);
    }

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("10.1.2.3:80"), "10.1.2.3");
        assert_eq!(strip_port("[2001:db8::1]:443"), "2001:db8::1");
        assert_eq!(strip_port("2001:db8::1"), "2001:db8::1");
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
