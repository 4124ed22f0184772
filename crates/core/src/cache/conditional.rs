//! A client's conditional GET or HEAD against a stored response (RFC 9110 §13.1.2, §13.1.3):
//! `If-None-Match` by weak comparison, else `If-Modified-Since`.

use super::control::split_list;
use super::date::parse_http_date;

/// The opaque part of an entity tag, `None` when it is not one (`"xyz"` or `W/"xyz"`).
fn opaque(tag: &str) -> Option<&str> {
    let tag = tag.trim();
    let tag = tag.strip_prefix("W/").unwrap_or(tag);
    let inner = tag.strip_prefix('"')?.strip_suffix('"')?;
    (!inner.contains('"')).then_some(inner)
}

/// Whether the client's copy matches the stored one, so that 304 answers. `if_none_match`,
/// `if_modified_since`: the request's fields; `etag`, `last_modified`: the stored response's.
/// A field that is not text counts as absent.
pub fn not_modified(
    if_none_match: Option<&str>,
    if_modified_since: Option<&str>,
    etag: Option<&str>,
    last_modified: Option<&str>,
) -> bool {
    if let Some(inm) = if_none_match {
        if inm.trim() == "*" {
            return true;
        }
        let Some(stored) = etag.and_then(opaque) else {
            return false;
        };
        return split_list(inm).into_iter().filter_map(opaque).any(|tag| tag == stored);
    }
    match (if_modified_since.and_then(parse_http_date), last_modified.and_then(parse_http_date)) {
        (Some(since), Some(modified)) => modified <= since,
        _ => false,
    }
}
