//! Matching a request against a rule: Envoy route name, path prefix and method.

/// What a rule can match on. All given conditions must hold; an empty matcher matches all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteMatch {
    pub route_name: Option<String>,
    pub path_prefix: Option<String>,
    /// Upper-case method names; empty means any method.
    pub methods: Vec<String>,
}

/// The request facts a matcher looks at.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub route_name: Option<&'a str>,
    /// The path without its query string.
    pub path: &'a str,
    pub method: &'a str,
}

impl RouteMatch {
    pub fn matches(&self, req: &RequestFacts<'_>) -> bool {
        if let Some(name) = &self.route_name
            && req.route_name != Some(name.as_str())
        {
            return false;
        }
        if let Some(prefix) = &self.path_prefix
            && !req.path.starts_with(prefix.as_str())
        {
            return false;
        }
        self.methods.is_empty() || self.methods.iter().any(|m| m.eq_ignore_ascii_case(req.method))
    }
}

/// Splits `:path` into path and query.
pub fn split_path(path_and_query: &str) -> (&str, &str) {
    match path_and_query.split_once('?') {
        Some((path, query)) => (path, query),
        None => (path_and_query, ""),
    }
}

/// The first value of query parameter `name` (percent-decoding `%XX` and `+`), if any.
pub fn query_param(query: &str, name: &str) -> Vec<String> {
    query
        .split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k).as_deref() == Some(name)).then(|| percent_decode(v)).flatten()
        })
        .collect()
}

/// Removes every occurrence of query parameter `name` and returns the new query string.
pub fn remove_query_param(query: &str, name: &str) -> String {
    query
        .split('&')
        .filter(|pair| {
            let k = pair.split_once('=').map_or(*pair, |(k, _)| k);
            !pair.is_empty() && percent_decode(k).as_deref() != Some(name)
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'a>(route: Option<&'a str>, path: &'a str, method: &'a str) -> RequestFacts<'a> {
        RequestFacts { route_name: route, path, method }
    }

    #[test]
    fn all_conditions_must_hold() {
        let m = RouteMatch {
            route_name: Some("api".into()),
            path_prefix: Some("/admin".into()),
            methods: vec!["POST".into()],
        };
        assert!(m.matches(&facts(Some("api"), "/admin/users", "post")));
        assert!(!m.matches(&facts(Some("api"), "/admin/users", "GET")));
        assert!(!m.matches(&facts(Some("web"), "/admin/users", "POST")));
        assert!(!m.matches(&facts(None, "/admin/users", "POST")));
        assert!(!m.matches(&facts(Some("api"), "/public", "POST")));
        assert!(RouteMatch::default().matches(&facts(None, "/", "GET")));
    }

    #[test]
    fn query_helpers() {
        assert_eq!(split_path("/a?b=1"), ("/a", "b=1"));
        assert_eq!(split_path("/a"), ("/a", ""));
        assert_eq!(query_param("a=1&api_key=x%2By&api_key=z", "api_key"), vec!["x+y", "z"]);
        assert_eq!(query_param("a=1", "api_key"), Vec::<String>::new());
        assert_eq!(query_param("a=%zz&api_key=%", "api_key"), Vec::<String>::new());
        assert_eq!(remove_query_param("a=1&api_key=x&b=2", "api_key"), "a=1&b=2");
        assert_eq!(remove_query_param("api_key=x", "api_key"), "");
    }
}
