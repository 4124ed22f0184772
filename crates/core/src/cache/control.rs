//! `Cache-Control` (RFC 9111 §5.2) and the RFC 5861 extensions, read tolerantly.
//!
//! Unknown or garbled directives are ignored; a number that is not a delta-seconds makes its
//! directive as restrictive as it can be (a `max-age` of 0); numbers past [`MAX_DELTA`] are
//! clamped to it (§1.2.2); a directive given twice keeps its most restrictive value. A field
//! value that is not text (non-UTF-8 bytes) is not read at all: the caller treats the message as
//! one it must not cache.

/// The largest delta-seconds a cache keeps (2^31, RFC 9111 §1.2.2).
pub const MAX_DELTA: u64 = 1 << 31;

/// A `Cache-Control` field value that cannot be read as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotText;

/// The directives of a response that matter to a shared cache.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseDirectives {
    pub no_store: bool,
    /// `no-cache`, with or without field names (with them it is honoured whole: stricter).
    pub no_cache: bool,
    /// `private`, with or without field names (a shared cache stores neither).
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    /// RFC 5861 §3.
    pub stale_while_revalidate: Option<u64>,
    /// RFC 5861 §4.
    pub stale_if_error: Option<u64>,
}

/// The directives of a request that a cache acts on (RFC 9111 §5.2.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestDirectives {
    pub no_cache: bool,
    pub no_store: bool,
    pub only_if_cached: bool,
    pub max_age: Option<u64>,
    /// `Some(None)`: `max-stale` with no value (any staleness); `Some(Some(n))`: up to `n`.
    pub max_stale: Option<Option<u64>>,
    pub min_fresh: Option<u64>,
}

/// One directive: lower-case name and its value, unquoted (`None` when there was none).
fn directives(values: &[&[u8]]) -> Result<Vec<(String, Option<String>)>, NotText> {
    let mut out = Vec::new();
    for value in values {
        let text = std::str::from_utf8(value).map_err(|_| NotText)?;
        for part in split_list(text) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (name, value) = match part.split_once('=') {
                Some((n, v)) => (n.trim(), Some(unquote(v.trim()))),
                None => (part, None),
            };
            if name.is_empty() || !name.bytes().all(is_tchar) {
                continue; // garbled: ignored
            }
            out.push((name.to_ascii_lowercase(), value));
        }
    }
    Ok(out)
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Splits a comma-separated list, keeping commas inside quoted strings.
pub(crate) fn split_list(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in text.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn unquote(value: &str) -> String {
    match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => inner.replace("\\\"", "\"").replace("\\\\", "\\"),
        None => value.to_owned(),
    }
}

/// A delta-seconds value: digits only, clamped to [`MAX_DELTA`]; `None` when it is not one.
pub fn delta_seconds(value: &str) -> Option<u64> {
    let value = value.trim();
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Any run of digits too long for u64 is past the clamp anyway.
    Some(value.parse::<u64>().map_or(MAX_DELTA, |n| n.min(MAX_DELTA)))
}

/// The smaller of two optional limits (the stricter one).
fn stricter(old: Option<u64>, new: u64) -> Option<u64> {
    Some(old.map_or(new, |o| o.min(new)))
}

/// Reads a response's `Cache-Control` field lines.
pub fn parse_response(values: &[&[u8]]) -> Result<ResponseDirectives, NotText> {
    let mut d = ResponseDirectives::default();
    for (name, value) in directives(values)? {
        // A number that cannot be read: as strict as the directive can be.
        let seconds = || value.as_deref().and_then(delta_seconds).unwrap_or(0);
        match name.as_str() {
            "no-store" => d.no_store = true,
            "no-cache" => d.no_cache = true,
            "private" => d.private = true,
            "public" => d.public = true,
            "must-revalidate" => d.must_revalidate = true,
            "proxy-revalidate" => d.proxy_revalidate = true,
            "max-age" => d.max_age = stricter(d.max_age, seconds()),
            "s-maxage" => d.s_maxage = stricter(d.s_maxage, seconds()),
            "stale-while-revalidate" => {
                d.stale_while_revalidate = stricter(d.stale_while_revalidate, seconds());
            }
            "stale-if-error" => d.stale_if_error = stricter(d.stale_if_error, seconds()),
            _ => {}
        }
    }
    Ok(d)
}

/// Reads a request's `Cache-Control` field lines (and `Pragma: no-cache` when it has none,
/// RFC 9111 §5.4).
pub fn parse_request(values: &[&[u8]], pragma: &[&[u8]]) -> Result<RequestDirectives, NotText> {
    let mut d = RequestDirectives::default();
    let list = directives(values)?;
    if list.is_empty() {
        let pragma = directives(pragma)?;
        d.no_cache = pragma.iter().any(|(n, _)| n == "no-cache");
    }
    for (name, value) in list {
        let seconds = || value.as_deref().and_then(delta_seconds);
        match name.as_str() {
            "no-cache" => d.no_cache = true,
            "no-store" => d.no_store = true,
            "only-if-cached" => d.only_if_cached = true,
            "max-age" => d.max_age = stricter(d.max_age, seconds().unwrap_or(0)),
            "min-fresh" => {
                // Stricter is larger here: the client wants at least this much life left.
                let n = seconds().unwrap_or(MAX_DELTA);
                d.min_fresh = Some(d.min_fresh.map_or(n, |o| o.max(n)));
            }
            "max-stale" => {
                // A value that cannot be read allows no staleness at all.
                let n = value.as_deref().map(|v| delta_seconds(v).unwrap_or(0));
                d.max_stale = Some(match (d.max_stale, n) {
                    (None, n) | (Some(None), n) => n,
                    (Some(Some(o)), None) => Some(o),
                    (Some(Some(o)), Some(n)) => Some(o.min(n)),
                });
            }
            _ => {}
        }
    }
    Ok(d)
}
