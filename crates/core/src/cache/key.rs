//! The cache key: method (HEAD shares GET's entry), authority, normalised path, the query
//! sorted and filtered by the configured lists, and with `per_consumer` the consumer id; then,
//! within one key, the variant chosen by the request headers the stored response's `Vary`
//! names.

use crate::route;

use super::policy::lines;

/// Which query parameters take part in the key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryRule {
    /// When not empty, only these names count.
    pub include: Vec<String>,
    /// These names never count.
    pub exclude: Vec<String>,
}

/// Why a request has no cache key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoKey {
    /// The path cannot be normalised (an encoded slash).
    BadPath,
    /// A field is missing or not text.
    Malformed,
}

/// The query, its parameters sorted (by name, then value, bytes as sent), filtered by `rule`.
pub fn normalize_query(query: &str, rule: &QueryRule) -> String {
    let mut pairs: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| {
            let name = p.split_once('=').map_or(*p, |(n, _)| n);
            (rule.include.is_empty() || rule.include.iter().any(|i| i == name))
                && !rule.exclude.iter().any(|e| e == name)
        })
        .collect();
    pairs.sort_unstable();
    pairs.join("&")
}

/// The primary key of a request. `method` is GET or HEAD (both map to GET) or another
/// cacheable method; `consumer` when keyed per consumer. Fields are separated by a byte no
/// field can hold.
pub fn primary_key(
    method: &str,
    authority: &str,
    path_and_query: &str,
    rule: &QueryRule,
    consumer: Option<&str>,
) -> Result<String, NoKey> {
    if authority.contains('\n') || path_and_query.contains('\n') {
        return Err(NoKey::Malformed);
    }
    let (path, query) = route::split_path(path_and_query);
    let path = route::normalize_path(path).map_err(|_| NoKey::BadPath)?;
    let method = if method == "HEAD" { "GET" } else { method };
    let mut key =
        format!("{method}\n{}\n{path}\n{}", authority.to_ascii_lowercase(), normalize_query(query, rule));
    if let Some(consumer) = consumer {
        key.push('\n');
        key.push_str(consumer);
    }
    Ok(key)
}

/// The purge target of a URL as a request names it (authority, path and query, normalised as
/// the key normalises them): every variant and consumer of it.
pub fn url_target(
    authority: &str,
    path_and_query: &str,
    rule: &QueryRule,
) -> Result<super::purge::Target, NoKey> {
    let primary = primary_key("GET", authority, path_and_query, rule, None)?;
    let mut fields = primary.split('\n').skip(1);
    let (Some(host), Some(path), Some(query)) = (fields.next(), fields.next(), fields.next()) else {
        return Err(NoKey::Malformed);
    };
    let url = if query.is_empty() { path.to_owned() } else { format!("{path}?{query}") };
    Ok(super::purge::Target::Url { host: Some(host.to_owned()), url })
}

/// The values of the request headers `names` (a stored response's `Vary`), each field's lines
/// joined with `, ` and spaces around commas dropped: what must match for a variant to answer.
/// `Err` when a value is not text.
pub fn vary_values(request: &[(String, Vec<u8>)], names: &[String]) -> Result<Vec<Option<String>>, NoKey> {
    names
        .iter()
        .map(|name| {
            let lines = lines(request, name);
            if lines.is_empty() {
                return Ok(None);
            }
            let mut parts = Vec::new();
            for line in lines {
                let text = std::str::from_utf8(line).map_err(|_| NoKey::Malformed)?;
                parts.extend(text.split(',').map(str::trim));
            }
            Ok(Some(parts.join(", ")))
        })
        .collect()
}
