//! The response cache (RFC 9111 for a shared cache, RFC 5861's stale extensions): directive
//! parsing, what may be stored and for how long, how old a stored response is, whether it may
//! answer a request, the cache key, conditional requests, and a worker's bounded store.
//!
//! Everything is pure: times are seconds since the epoch passed in, headers are lower-case
//! names with their exact bytes. A field the cache depends on that is not text makes the
//! message one the cache neither stores nor answers from.

pub mod conditional;
pub mod config;
pub mod control;
pub mod date;
pub mod key;
pub mod policy;
pub mod purge;
pub mod shared;
pub mod store;

#[cfg(test)]
mod tests;

/// RFC 9211 `Cache-Status` of the filter: `tollgate; …`.
pub const CACHE_NAME: &str = "tollgate";

/// Fields never stored nor replayed: hop-by-hop (RFC 9110 §7.6.1), those the cache computes
/// again (`age`, `content-length`) and those of this proxy's own hop.
const NOT_STORED: [&str; 11] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "age",
    "content-length",
    "cache-status",
    "x-envoy-upstream-service-time",
];

/// The response headers to store (pseudo-headers and [`NOT_STORED`] left out, and the fields a
/// `Connection` header names); `None` when one is not text.
pub fn stored_headers(headers: &[(String, Vec<u8>)]) -> Option<Vec<(String, String)>> {
    let mut connection: Vec<String> = Vec::new();
    for line in policy::lines(headers, "connection") {
        let text = std::str::from_utf8(line).ok()?;
        connection.extend(text.split(',').map(|n| n.trim().to_ascii_lowercase()));
    }
    let mut out = Vec::new();
    for (name, value) in headers {
        if name.starts_with(':') || NOT_STORED.contains(&name.as_str()) || connection.contains(name) {
            continue;
        }
        out.push((name.clone(), String::from_utf8(value.clone()).ok()?));
    }
    Some(out)
}

/// The headers of a stored response freshened by a 304 (RFC 9111 §3.2, §4.3.4): each field the
/// 304 carries replaces the stored field of that name (every line of it); the others stay.
/// Fields [`stored_headers`] never keeps are left out of the 304's side.
pub fn freshened_headers(
    stored: &[(String, String)],
    not_modified: &[(String, Vec<u8>)],
) -> Vec<(String, Vec<u8>)> {
    let fresh: Vec<&(String, Vec<u8>)> = not_modified
        .iter()
        .filter(|(n, _)| !n.starts_with(':') && !NOT_STORED.contains(&n.as_str()))
        .collect();
    let mut out: Vec<(String, Vec<u8>)> = stored
        .iter()
        .filter(|(n, _)| !fresh.iter().any(|(f, _)| f == n))
        .map(|(n, v)| (n.clone(), v.clone().into_bytes()))
        .collect();
    out.extend(fresh.into_iter().cloned());
    out
}

/// Whether a response's body may be copied to be stored: not an event stream or an upgrade
/// (never buffered), not announcing a length past `max_object_bytes` (or one that cannot be
/// read). A body with no length is copied until it passes the cap.
pub fn body_storable(
    status: u32,
    headers: &[(String, Vec<u8>)],
    max_object_bytes: usize,
) -> Result<(), policy::NotStored> {
    if status == 101 || !policy::lines(headers, "upgrade").is_empty() {
        return Err(policy::NotStored::Streamed);
    }
    let event_stream = policy::lines(headers, "content-type")
        .iter()
        .any(|v| v.get(..17).is_some_and(|p| p.eq_ignore_ascii_case(b"text/event-stream")));
    if event_stream {
        return Err(policy::NotStored::Streamed);
    }
    let too_long = policy::lines(headers, "content-length").first().is_some_and(|v| {
        std::str::from_utf8(v)
            .ok()
            .and_then(|t| t.trim().parse::<usize>().ok())
            .is_none_or(|n| n > max_object_bytes)
    });
    if too_long {
        return Err(policy::NotStored::TooLarge);
    }
    Ok(())
}

/// How the cache handled a request, as RFC 9211 `Cache-Status` says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Answered from the cache; `ttl` seconds of freshness left (negative: stale).
    Hit { ttl: i64, detail: Option<&'static str>, collapsed: bool },
    /// Went to the origin (`fwd`), with what came back and whether it was stored.
    Forward { fwd: &'static str, stored: bool, detail: Option<&'static str> },
}

impl Status {
    pub fn render(&self) -> String {
        let mut out = CACHE_NAME.to_owned();
        match self {
            Status::Hit { ttl, detail, collapsed } => {
                out.push_str(&format!("; hit; ttl={ttl}"));
                if *collapsed {
                    out.push_str("; collapsed");
                }
                if let Some(d) = detail {
                    out.push_str(&format!("; detail={d}"));
                }
            }
            Status::Forward { fwd, stored, detail } => {
                out.push_str(&format!("; fwd={fwd}"));
                if *stored {
                    out.push_str("; stored");
                }
                if let Some(d) = detail {
                    out.push_str(&format!("; detail={d}"));
                }
            }
        }
        out
    }
}
