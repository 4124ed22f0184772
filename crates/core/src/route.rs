//! Matching a request against a rule: Envoy route name, path prefix and method; and reading
//! the query string (the one place its names and values are percent-decoded).
//!
//! Rules match the *normalised* path ([`normalize_path`]), never the raw `:path`: otherwise
//! `//admin`, `/./admin`, `/%61dmin` or `/x/../admin` would escape a rule written for `/admin`
//! while the upstream serves them as `/admin`.

use std::borrow::Cow;

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

/// Why a path cannot be matched against rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathRefused {
    /// `%2F` or `%5C`: one upstream reads a path separator, another a character of a segment,
    /// so no rule can say what the request is for.
    EncodedSlash,
}

impl PathRefused {
    /// The reason for logs and stats.
    pub fn reason(self) -> &'static str {
        match self {
            Self::EncodedSlash => "encoded_slash",
        }
    }
}

/// The status and client message of a refused path.
pub const PATH_REFUSED_STATUS: u32 = 400;
pub const PATH_REFUSED_MESSAGE: &str = "The request path is not acceptable.";

/// The path (without its query) as rules see it, RFC 3986 §6.2.2 normalisation plus merged
/// slashes, the same as Envoy's `normalize_path` and `merge_slashes`:
///
/// - percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded, other
///   percent-encodings get upper-case hex;
/// - runs of `/` become one;
/// - `.` and `..` segments are removed (§5.2.4; `..` never climbs above the root).
///
/// An encoded slash or backslash (`%2F`, `%5C`) is refused. A path that needs no change is
/// borrowed.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, PathRefused> {
    let bytes = path.as_bytes();
    let simple = !bytes.contains(&b'%')
        && !path.contains("//")
        && !path.split('/').any(|seg| seg == "." || seg == "..");
    if simple {
        return Ok(Cow::Borrowed(path));
    }
    // Percent-decoding of unreserved characters first: `%2e%2e` is a `..` segment.
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%'
            && let Some(hex) = bytes.get(i + 1..i + 3)
            && let (Some(hi), Some(lo)) = (hex_value(hex[0]), hex_value(hex[1]))
        {
            let c = hi << 4 | lo;
            if c == b'/' || c == b'\\' {
                return Err(PathRefused::EncodedSlash);
            }
            if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                decoded.push(char::from(c));
            } else {
                decoded.push('%');
                decoded.push(char::from(hex[0].to_ascii_uppercase()));
                decoded.push(char::from(hex[1].to_ascii_uppercase()));
            }
            i += 3;
            continue;
        }
        // Copy the whole character (the path may hold non-ASCII text).
        let len = utf8_len(b);
        decoded.push_str(path.get(i..i + len).unwrap_or("\u{fffd}"));
        i += len.max(1);
    }
    let absolute = decoded.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded.split('/').collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (n, seg) in segments.iter().enumerate() {
        match *seg {
            "" => {
                // Merged slashes; a final empty segment keeps the trailing slash.
                if n == last && n > 0 {
                    trailing_slash = true;
                }
            }
            "." => trailing_slash = n == last,
            ".." => {
                out.pop();
                trailing_slash = n == last;
            }
            seg => {
                out.push(seg);
                trailing_slash = false;
            }
        }
    }
    let mut normal = String::with_capacity(decoded.len());
    if absolute {
        normal.push('/');
    }
    normal.push_str(&out.join("/"));
    if trailing_slash && !out.is_empty() {
        normal.push('/');
    }
    Ok(Cow::Owned(normal))
}

fn hex_value(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xf0..=0xff => 4,
        0xe0..=0xef => 3,
        0xc0..=0xdf => 2,
        _ => 1,
    }
}

/// `value` without `prefix`, matched case-insensitively (an auth scheme such as `Bearer `).
pub fn strip_prefix_ignore_case<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    let head = value.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &value[prefix.len()..])
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

/// A query name or value as text: [`strict_form_decode`], and UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    String::from_utf8(strict_form_decode(s)?).ok()
}

/// One name or value of a query string, decoded as `application/x-www-form-urlencoded`
/// does: `+` is a space, `%XX` (hex of either case) the byte it names, and a `%` that starts
/// no escape stays a `%`.
pub fn form_decode(raw: &str) -> Vec<u8> {
    let spaced = if raw.contains('+') { Cow::Owned(raw.replace('+', " ")) } else { Cow::Borrowed(raw) };
    percent_encoding::percent_decode_str(&spaced).collect()
}

/// [`form_decode`] for names and values that select or gate something: a `%` not followed by
/// two hex digits makes the whole name or value undecodable (`None`), so it matches no name
/// and yields no value.
pub fn strict_form_decode(raw: &str) -> Option<Vec<u8>> {
    let bytes = raw.as_bytes();
    let escapes_whole = bytes
        .iter()
        .enumerate()
        .filter(|&(_, &b)| b == b'%')
        .all(|(i, _)| bytes.get(i + 1..i + 3).is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)));
    escapes_whole.then(|| form_decode(raw))
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

    fn norm(p: &str) -> String {
        normalize_path(p).unwrap().into_owned()
    }

    #[test]
    fn spellings_of_a_path_normalise_to_it() {
        for spelling in [
            "/admin",
            "//admin",
            "///admin",
            "/./admin",
            "/%61dmin",
            "/%61%64%6D%69%6E",
            "/x/../admin",
            "/x/y/../../admin",
            "/../admin",
            "/%2e%2e/admin",
            "/x/%2E%2E/admin",
            "/.%2e/admin",
            "/admin/.",
        ] {
            let n = norm(spelling);
            assert!(n == "/admin" || n == "/admin/", "{spelling} -> {n}");
            assert!(n.starts_with("/admin"), "{spelling} -> {n}");
        }
    }

    #[test]
    fn normalisation_keeps_what_it_must() {
        assert_eq!(norm("/a/b/"), "/a/b/");
        assert_eq!(norm("/a//b//"), "/a/b/");
        assert_eq!(norm("/"), "/");
        assert_eq!(norm("//"), "/");
        assert_eq!(norm("/a/b/.."), "/a/");
        assert_eq!(norm("/a%20b"), "/a%20b");
        assert_eq!(norm("/a%3fb"), "/a%3Fb");
        assert_eq!(norm("/a%zz"), "/a%zz");
        assert_eq!(norm("/a%"), "/a%");
        assert_eq!(norm("/caf\u{e9}/./x"), "/caf\u{e9}/x");
        assert_eq!(norm("/..."), "/...");
        assert_eq!(norm("*"), "*");
        assert!(matches!(normalize_path("/plain/path"), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn encoded_slashes_are_refused() {
        for p in ["/admin%2Fusers", "/x%2f..%2fadmin", "/x%5C..%5Cadmin", "/%5c"] {
            assert_eq!(normalize_path(p), Err(PathRefused::EncodedSlash), "{p}");
        }
    }

    #[test]
    fn a_rule_for_a_prefix_catches_every_spelling() {
        let rule = RouteMatch { path_prefix: Some("/admin".into()), ..RouteMatch::default() };
        for spelling in ["//admin", "/./admin", "/%61dmin", "/x/../admin", "/public/../admin/users"] {
            let path = norm(spelling);
            assert!(rule.matches(&facts(None, &path, "GET")), "{spelling}");
        }
    }

    #[test]
    fn a_scheme_prefix_is_stripped_in_any_case() {
        assert_eq!(strip_prefix_ignore_case("bEaReR abc", "Bearer "), Some("abc"));
        assert_eq!(strip_prefix_ignore_case("Basic abc", "Bearer "), None);
        assert_eq!(strip_prefix_ignore_case("Bear", "Bearer "), None);
        assert_eq!(strip_prefix_ignore_case("Beare\u{e9} x", "Bearer "), None, "no panic inside a character");
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

    #[test]
    fn query_names_and_values_decode_plus_and_escapes() {
        let q = |query: &str| query_param(query, "api_key");
        assert_eq!(q("api_key=a+b"), vec!["a b"]);
        assert_eq!(q("api_key=a%2Bb&api_key=%2b"), vec!["a+b", "+"]);
        assert_eq!(q("api_key=%C3%A9&api_key=%c3%a9&api_key=\u{e9}"), vec!["\u{e9}"; 3]);
        assert_eq!(q("api_key=&api_key&api_key=a=b"), vec!["", "", "a=b"]);
        assert_eq!(q("api%5Fkey=1&api%5fkey=2&api_key%3D=3&API_KEY=4&api_key+=5"), vec!["1", "2"]);
        assert_eq!(query_param("a+b=1&a%20b=2&a%2Bb=3", "a b"), vec!["1", "2"]);
        assert_eq!(query_param("a=1&&a=2", "a"), vec!["1", "2"]);
    }

    #[test]
    fn a_broken_escape_or_text_that_is_not_utf8_refuses_the_pair() {
        // `%+1` and `%-1` are not escapes either (RFC 3986: `%` HEXDIG HEXDIG).
        let broken = [
            "%", "%4", "a%", "%zz", "%4g", "%g4", "%%41", "%41%", "% 1", "%+1", "%+F", "%-1", "%\u{e9}",
            "%4\u{e9}",
        ];
        let not_utf8 = ["%FF", "%C3", "%C3%28", "%ED%A0%80"];
        for bad in broken.into_iter().chain(not_utf8) {
            assert_eq!(query_param(&format!("api_key={bad}"), "api_key"), Vec::<String>::new(), "{bad}");
            assert_eq!(query_param(&format!("{bad}=x"), bad), Vec::<String>::new(), "{bad}");
            // One refused pair hides no other.
            assert_eq!(query_param(&format!("api_key={bad}&api_key=ok"), "api_key"), vec!["ok"], "{bad}");
            // A name that does not decode is never the parameter, so removal keeps it.
            assert_eq!(remove_query_param(&format!("{bad}=1&b=2"), bad), format!("{bad}=1&b=2"));
        }
    }

    #[test]
    fn removal_matches_decoded_names_and_keeps_other_pairs_as_sent() {
        assert_eq!(
            remove_query_param("api%5Fkey=1&a=%41&api+key=2&api_key&&b=c+d&API_KEY=3", "api_key"),
            "a=%41&api+key=2&b=c+d&API_KEY=3"
        );
        assert_eq!(remove_query_param("a%20b=1&a+b=2&ab=3&a%2Bb=4", "a b"), "ab=3&a%2Bb=4");
        assert_eq!(remove_query_param("", "api_key"), "");
        assert_eq!(remove_query_param("&&", "api_key"), "");
    }
}
