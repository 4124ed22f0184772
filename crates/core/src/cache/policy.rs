//! What a shared cache may store (RFC 9111 §3), for how long (§4.2.1), how old a stored
//! response is (§4.2.3), and whether a stored response may answer a request (§4.2, §5.2.1,
//! RFC 5861).

use super::control::{self, NotText, RequestDirectives, ResponseDirectives};
use super::date::parse_http_date;

/// Most header names a `Vary` may list for the response to be stored.
pub const MAX_VARY_NAMES: usize = 16;

/// Why a response is not stored (a stat reason each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    Method,
    Status,
    NoStore,
    Private,
    Authorization,
    VaryStar,
    VaryTooLong,
    SetCookie,
    /// `no-cache` without a validator (`ETag`, `Last-Modified`): every use must be validated,
    /// and there is nothing to validate with.
    NoCache,
    /// No explicit freshness (heuristic freshness is off).
    NoFreshness,
    /// A field the decision depends on is not text.
    NotText,
    /// An event stream or an upgrade: never buffered.
    Streamed,
    /// A body longer than the largest object stored.
    TooLarge,
}

impl NotStored {
    pub fn reason(self) -> &'static str {
        match self {
            Self::Method => "method",
            Self::Status => "status",
            Self::NoStore => "no_store",
            Self::Private => "private",
            Self::Authorization => "authorization",
            Self::VaryStar => "vary_star",
            Self::VaryTooLong => "vary_too_long",
            Self::SetCookie => "set_cookie",
            Self::NoCache => "no_cache",
            Self::NoFreshness => "no_freshness",
            Self::NotText => "not_text",
            Self::Streamed => "streamed",
            Self::TooLarge => "too_large",
        }
    }
}

/// Statuses stored when a response says how long it is fresh: those RFC 9110 §15.1 calls
/// heuristically cacheable (206 aside: ranges are not cached) and the redirects.
pub fn cacheable_status(status: u32) -> bool {
    matches!(status, 200 | 203 | 204 | 300 | 301 | 302 | 307 | 308 | 404 | 405 | 410 | 414 | 501)
}

/// Every field line of `name` in `headers` (lower-case names).
pub fn lines<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Vec<&'a [u8]> {
    headers.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_slice()).collect()
}

/// The header names a response's `Vary` lists, lower-case, sorted and deduplicated; `Err` for
/// `*`, too many names, or bytes that are not text.
pub fn vary_names(headers: &[(String, Vec<u8>)]) -> Result<Vec<String>, NotStored> {
    let mut names = Vec::new();
    for line in lines(headers, "vary") {
        let text = std::str::from_utf8(line).map_err(|_| NotStored::NotText)?;
        for name in text.split(',') {
            let name = name.trim();
            if name == "*" {
                return Err(NotStored::VaryStar);
            }
            if !name.is_empty() {
                names.push(name.to_ascii_lowercase());
            }
        }
        if names.len() > MAX_VARY_NAMES * 4 {
            return Err(NotStored::VaryTooLong);
        }
    }
    names.sort();
    names.dedup();
    if names.len() > MAX_VARY_NAMES {
        return Err(NotStored::VaryTooLong);
    }
    Ok(names)
}

/// The freshness facts of a response, read once when it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Freshness {
    /// Seconds it is fresh for (§4.2.1).
    pub lifetime: u64,
    /// The `Date` it carries, else the time it was received (seconds since the epoch).
    pub date: i64,
    /// Its `Age` value.
    pub age_value: u64,
    pub stale_while_revalidate: u64,
    pub stale_if_error: u64,
    /// Stale use never allowed (`must-revalidate`, `proxy-revalidate`).
    pub must_revalidate: bool,
    /// `s-maxage`: implies `proxy-revalidate` for a client's `max-stale`.
    pub s_maxage: bool,
}

/// Upper bounds on the RFC 5861 windows a response may ask for (seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaleLimits {
    pub while_revalidate: u64,
    pub if_error: u64,
}

/// Decides whether a response to `method` may be stored by a shared cache and, if so, its
/// freshness. `request_authorized`: the request carried `Authorization`. `response_time` in
/// seconds since the epoch.
pub fn storable(
    method_allowed: bool,
    request_authorized: bool,
    status: u32,
    headers: &[(String, Vec<u8>)],
    response_time: i64,
    limits: StaleLimits,
) -> Result<Freshness, NotStored> {
    if !method_allowed {
        return Err(NotStored::Method);
    }
    if !cacheable_status(status) {
        return Err(NotStored::Status);
    }
    let cc =
        control::parse_response(&lines(headers, "cache-control")).map_err(|NotText| NotStored::NotText)?;
    if cc.no_store {
        return Err(NotStored::NoStore);
    }
    if cc.private {
        return Err(NotStored::Private);
    }
    if request_authorized && !(cc.public || cc.s_maxage.is_some() || cc.must_revalidate) {
        return Err(NotStored::Authorization);
    }
    vary_names(headers)?;
    if !lines(headers, "set-cookie").is_empty() {
        return Err(NotStored::SetCookie);
    }
    let text = |name: &str| -> Result<Option<&str>, NotStored> {
        match lines(headers, name).first() {
            Some(v) => std::str::from_utf8(v).map(Some).map_err(|_| NotStored::NotText),
            None => Ok(None),
        }
    };
    if cc.no_cache {
        // Stored stale from the start, never used without validating it (§5.2.2.4): a
        // conditional request, answered from the store when the origin says 304.
        if text("etag")?.is_none() && text("last-modified")?.is_none() {
            return Err(NotStored::NoCache);
        }
        let date = text("date")?.and_then(parse_http_date);
        return Ok(Freshness {
            lifetime: 0,
            date: date.unwrap_or(response_time),
            age_value: text("age")?.and_then(control::delta_seconds).unwrap_or(0),
            stale_while_revalidate: 0,
            stale_if_error: 0,
            must_revalidate: true,
            s_maxage: cc.s_maxage.is_some(),
        });
    }
    let date = text("date")?.and_then(parse_http_date);
    let expires = text("expires")?;
    let age_value = text("age")?.and_then(control::delta_seconds).unwrap_or(0);
    let lifetime =
        freshness_lifetime(&cc, date.unwrap_or(response_time), expires).ok_or(NotStored::NoFreshness)?;
    let no_stale = cc.must_revalidate || cc.proxy_revalidate;
    let has_window = !no_stale && (cc.stale_while_revalidate > Some(0) || cc.stale_if_error > Some(0));
    if lifetime == 0 && !has_window {
        // Stale from the start, with nothing it could still be used for.
        return Err(NotStored::NoFreshness);
    }
    Ok(Freshness {
        lifetime,
        date: date.unwrap_or(response_time),
        age_value,
        stale_while_revalidate: if no_stale {
            0
        } else {
            cc.stale_while_revalidate.unwrap_or(0).min(limits.while_revalidate)
        },
        stale_if_error: if no_stale { 0 } else { cc.stale_if_error.unwrap_or(0).min(limits.if_error) },
        must_revalidate: no_stale,
        s_maxage: cc.s_maxage.is_some(),
    })
}

/// `s-maxage`, else `max-age`, else `Expires − Date` (an invalid `Expires`: 0); `None` without
/// any (heuristic freshness is off).
pub fn freshness_lifetime(cc: &ResponseDirectives, date: i64, expires: Option<&str>) -> Option<u64> {
    if let Some(s) = cc.s_maxage {
        return Some(s);
    }
    if let Some(m) = cc.max_age {
        return Some(m);
    }
    let expires = expires?;
    Some(match parse_http_date(expires) {
        Some(at) => u64::try_from(at.saturating_sub(date)).unwrap_or(0).min(control::MAX_DELTA),
        None => 0,
    })
}

/// The age of a stored response now (§4.2.3), all in seconds since the epoch.
pub fn current_age(f: &Freshness, request_time: i64, response_time: i64, now: i64) -> u64 {
    let apparent_age = response_time.saturating_sub(f.date).max(0);
    let response_delay = response_time.saturating_sub(request_time).max(0);
    let corrected_age_value = i64::try_from(f.age_value).unwrap_or(i64::MAX).saturating_add(response_delay);
    let corrected_initial_age = apparent_age.max(corrected_age_value);
    let resident_time = now.saturating_sub(response_time).max(0);
    u64::try_from(corrected_initial_age.saturating_add(resident_time)).unwrap_or(0)
}

/// What a stored response can do for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usable {
    /// Fresh enough for this request: answer with it.
    Fresh,
    /// Stale, allowed by the client's `max-stale`: answer with it.
    StaleAllowed,
    /// Stale within `stale-while-revalidate`: answer with it and refresh in the background.
    StaleWhileRevalidate,
    /// Fresh, but the request's directives do not let it answer (`no-cache`, `max-age`,
    /// `min-fresh`): go to the origin (RFC 9211 `fwd=request`). Kept for `stale-if-error`.
    NotForRequest,
    /// Stale: go to the origin. Still usable if the origin fails, within `stale-if-error`.
    Stale,
}

/// Whether a stored response of `age` seconds, with freshness `f`, may answer a request with
/// directives `req`.
pub fn usable(f: &Freshness, age: u64, req: &RequestDirectives) -> Usable {
    let fresh = age < f.lifetime;
    if req.no_cache {
        return if fresh { Usable::NotForRequest } else { Usable::Stale };
    }
    if fresh {
        let too_old = req.max_age.is_some_and(|m| age > m);
        let too_short = req.min_fresh.is_some_and(|m| f.lifetime - age < m);
        return if too_old || too_short { Usable::NotForRequest } else { Usable::Fresh };
    }
    let staleness = age - f.lifetime;
    // A client's `max-age` bounds the age whatever else allows staleness.
    if req.max_age.is_some_and(|m| age > m) || req.min_fresh.is_some() {
        return Usable::Stale;
    }
    if !f.must_revalidate
        && !f.s_maxage
        && let Some(max_stale) = req.max_stale
        && max_stale.is_none_or(|m| staleness <= m)
    {
        return Usable::StaleAllowed;
    }
    if staleness < f.stale_while_revalidate {
        return Usable::StaleWhileRevalidate;
    }
    Usable::Stale
}

/// Whether a stored response `staleness` seconds past its lifetime may stand in for a failed
/// origin (RFC 5861 §4).
pub fn usable_on_error(f: &Freshness, age: u64) -> bool {
    age < f.lifetime || age - f.lifetime < f.stale_if_error
}
