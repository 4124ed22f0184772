//! The per-request context: look the request up, answer from the cache or let it through,
//! store what comes back, and hand the answer to the requests that waited on it.
//!
//! A response is read chunk by chunk as it passes (each chunk goes on at once); the copy is
//! stored when the body ends within `max_object_bytes`. Event streams, upgrades, bodies with a
//! length over the cap and responses with trailers are never stored.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use tollgate_core::cache::conditional;
use tollgate_core::cache::control;
use tollgate_core::cache::key::{self, NoKey};
use tollgate_core::cache::policy::{self, Usable};
use tollgate_core::cache::store::{self, Object};
use tollgate_core::cache::{self as core, Status};
use tollgate_core::identity;
use tollgate_host::{Host, LogLevel};

use crate::worker::{Flight, Found, Job, Locked, MAX_WAITERS, Req, Stat, Waiter, Worker};

/// Methods after whose success the stored responses of their URL are dropped (RFC 9111 §4.4).
const UNSAFE: [&str; 4] = ["POST", "PUT", "PATCH", "DELETE"];

/// A response being copied to be stored.
struct Pending {
    object: Object,
}

pub struct CacheHttp<H: Host> {
    host: Rc<H>,
    worker: Rc<RefCell<Worker>>,
    context_id: u32,
    /// The request, when the cache may store its response.
    req: Option<Req>,
    /// A stored response kept to stand in for a failing origin (`stale-if-error`).
    fallback: Option<Rc<Object>>,
    /// The URL to invalidate when an unsafe request succeeds.
    invalidate: Option<tollgate_core::cache::purge::Target>,
    /// This request leads a miss other requests wait on (its primary key).
    leading: Option<String>,
    /// The shared lock this request holds for its miss (lock key, primary key).
    locked: Option<(String, String)>,
    /// This request waits on another's miss (its primary key).
    waiting: Option<String>,
    /// `fwd` of `Cache-Status` when the request goes to the origin.
    fwd: Option<&'static str>,
    /// The request went to the origin made conditional on `fallback`'s validators: a 304 is
    /// answered from it.
    revalidating: bool,
    /// Answered locally: nothing to do on the response.
    answered: bool,
    request_time: i64,
    request_ms: u64,
    pending: Option<Pending>,
}

fn now_s<H: Host + ?Sized>(host: &H) -> i64 {
    i64::try_from(host.now_ms() / 1000).unwrap_or(i64::MAX)
}

impl<H: Host> CacheHttp<H> {
    pub fn new(host: Rc<H>, worker: Rc<RefCell<Worker>>, context_id: u32) -> Self {
        Self {
            host,
            worker,
            context_id,
            req: None,
            fallback: None,
            invalidate: None,
            leading: None,
            locked: None,
            waiting: None,
            fwd: None,
            revalidating: false,
            answered: false,
            request_time: 0,
            request_ms: 0,
            pending: None,
        }
    }

    fn on_request(&mut self) -> Action {
        let host = Rc::clone(&self.host);
        let host = &*host;
        self.request_ms = host.now_ms();
        self.request_time = i64::try_from(self.request_ms / 1000).unwrap_or(i64::MAX);
        let headers: Vec<(String, Vec<u8>)> = host.request_headers();
        let text = |name: &str| -> Option<String> {
            policy::lines(&headers, name).first().and_then(|v| String::from_utf8(v.to_vec()).ok())
        };
        let method = text(":method").unwrap_or_default();
        let path = text(":path").unwrap_or_default();
        let authority = text(":authority").unwrap_or_default();
        let mut worker = self.worker.borrow_mut();
        let consumer = if worker.config.per_consumer {
            match host.property(&[identity::PROP_CONSUMER]).map(String::from_utf8) {
                None => None,
                Some(Ok(consumer)) => Some(consumer),
                // A consumer id that is not text must never fall back to the shared entries.
                Some(Err(_)) => {
                    worker.counters.inc(host, Stat::Bypass);
                    self.fwd = Some("bypass");
                    return Action::Continue;
                }
            }
        } else {
            None
        };
        if UNSAFE.contains(&method.as_str()) {
            // Every consumer's copy of the URL: what one consumer changed, the others see.
            self.invalidate = key::url_target(&authority, &path, &worker.config.query).ok();
            return Action::Continue;
        }
        if !worker.config.methods.contains(&method) {
            worker.counters.inc(host, Stat::Bypass);
            self.fwd = Some("method");
            return Action::Continue;
        }
        let cc = policy::lines(&headers, "cache-control");
        let pragma = policy::lines(&headers, "pragma");
        let (Ok(directives), Ok(primary)) = (
            control::parse_request(&cc, &pragma),
            key::primary_key(&method, &authority, &path, &worker.config.query, consumer.as_deref()),
        ) else {
            // Not text, or a path that has no key: never cached.
            worker.counters.inc(host, Stat::Bypass);
            self.fwd = Some("bypass");
            return Action::Continue;
        };
        let req = Req { method, authority, path, headers, directives, primary };
        let now = self.request_time;
        worker.sync_purges(host);
        let found = match worker.find(host, &req, now) {
            Ok(found) => found,
            Err(NoKey::BadPath | NoKey::Malformed) => {
                worker.counters.inc(host, Stat::Bypass);
                self.fwd = Some("bypass");
                return Action::Continue;
            }
        };
        let fwd = match found {
            Found::Object { object, age, usable } => match usable {
                Usable::Fresh | Usable::StaleAllowed | Usable::StaleWhileRevalidate => {
                    let (stat, detail) = match usable {
                        Usable::Fresh => (Stat::CacheHit, None),
                        Usable::StaleAllowed => (Stat::StaleMaxStale, Some("max-stale")),
                        _ => (Stat::StaleWhileRevalidate, Some("stale-while-revalidate")),
                    };
                    worker.counters.inc(host, stat);
                    if usable == Usable::StaleWhileRevalidate {
                        let full = match key::vary_values(&req.headers, &object.vary) {
                            Ok(values) => Some(store::full_key(&req.primary, &values)),
                            Err(_) => None,
                        };
                        if let Some(full) = full {
                            worker.want_refresh(host, full, refresh_job(&req, &object), &object);
                        }
                    }
                    drop(worker);
                    if answer(host, &self.worker, &req, &object, age, detail, false) {
                        self.answered = true;
                        return Action::Pause;
                    }
                    // The proxy refused the local reply: the origin answers instead.
                    self.fwd = Some("bypass");
                    return Action::Continue;
                }
                Usable::NotForRequest => {
                    self.fallback = Some(object);
                    "request"
                }
                Usable::Stale => {
                    self.fallback = Some(object);
                    "stale"
                }
            },
            Found::VaryMiss => "vary-miss",
            Found::UriMiss => "uri-miss",
        };
        if req.directives.only_if_cached {
            worker.counters.inc(host, Stat::OnlyIfCachedMiss);
            drop(worker);
            self.answered = true;
            let status = Status::Forward { fwd, stored: false, detail: Some("only-if-cached") }.render();
            let request_id = req.header("x-request-id").unwrap_or_default().to_owned();
            let reply = tollgate_core::error::Reply::error(
                504,
                "gateway_timeout",
                "The response is not in the cache (only-if-cached).",
                &request_id,
            );
            let mut headers: Vec<(&str, &str)> =
                reply.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            headers.push(("cache-status", &status));
            if host.send_response(504, &headers, &reply.body) {
                return Action::Pause;
            }
            // The proxy refused the local reply: the origin answers instead.
            self.answered = false;
            self.fwd = Some("bypass");
            return Action::Continue;
        }
        worker.counters.inc(host, Stat::CacheMiss);
        self.fwd = Some(fwd);
        // A HEAD miss stores nothing (its response has no body); `no-store` and `no-cache`
        // requests neither wait on nor lead a shared miss.
        let coalesce = req.method != "HEAD" && !req.directives.no_store && !req.directives.no_cache;
        if coalesce {
            let now_ms = host.now_ms();
            if let Some(flight) = worker.flights.get_mut(&req.primary) {
                if flight.waiters.len() < MAX_WAITERS {
                    self.waiting = Some(req.primary.clone());
                    flight.waiters.push(Waiter { context_id: self.context_id, req, since_ms: now_ms });
                    return Action::Pause;
                }
            } else {
                // Once per proxy: the worker that takes the miss's lock asks the origin; the others
                // wait for its answer in the shared tier.
                let timeout_ms = u64::try_from(worker.config.lock_timeout.as_millis()).unwrap_or(u64::MAX);
                let lock_key = worker.miss_lock_key(&req.primary);
                let locked = lock_key
                    .as_ref()
                    .map(|k| (k, worker.lock(host, k, &req.primary, now_ms.saturating_add(timeout_ms))));
                match locked {
                    Some((_, Locked::Held)) => {
                        let waiters = worker.remote_waits.entry(req.primary.clone()).or_default();
                        if waiters.len() < MAX_WAITERS {
                            self.waiting = Some(req.primary.clone());
                            waiters.push(Waiter { context_id: self.context_id, req, since_ms: now_ms });
                            return Action::Pause;
                        }
                    }
                    Some((k, Locked::Acquired)) => self.locked = Some((k.clone(), req.primary.clone())),
                    Some((_, Locked::Unavailable)) | None => {}
                }
                worker
                    .flights
                    .insert(req.primary.clone(), Flight { leader: self.context_id, waiters: Vec::new() });
                self.leading = Some(req.primary.clone());
            }
        }
        if req.method != "HEAD" && !req.directives.no_store {
            drop(worker);
            self.revalidate(host, &req);
            self.req = Some(req);
        }
        Action::Continue
    }

    /// Makes the request conditional on the stale (or not-for-this-request) stored response's
    /// validators, when the client's request is not conditional itself (RFC 9111 §4.3.1).
    fn revalidate(&mut self, host: &H, req: &Req) {
        let Some(object) = &self.fallback else {
            return;
        };
        let own =
            ["if-none-match", "if-modified-since", "if-match", "if-unmodified-since", "if-range", "range"];
        if req.method != "GET" || own.iter().any(|n| !policy::lines(&req.headers, n).is_empty()) {
            return;
        }
        let mut added = false;
        if let Some(etag) = object.header("etag") {
            added |= host.set_request_header("if-none-match", Some(etag.as_bytes()));
        }
        if let Some(modified) = object.header("last-modified") {
            added |= host.set_request_header("if-modified-since", Some(modified.as_bytes()));
        }
        self.revalidating = added;
    }

    /// The origin answered our conditional request with 304: the stored response, freshened by
    /// the 304's headers, is stored again and answers the client. False when the proxy refused
    /// the local reply.
    fn revalidated(&mut self, host: &H, headers: &[(String, Vec<u8>)], now: i64) -> bool {
        let (Some(old), Some(req)) = (self.fallback.clone(), self.req.take()) else {
            return false;
        };
        let fresh = core::freshened_headers(&old.headers, headers);
        let (stale, authorized) =
            (self.worker.borrow().config.stale, !policy::lines(&req.headers, "authorization").is_empty());
        let object =
            policy::storable(true, authorized, old.status, &fresh, now, stale).ok().and_then(|freshness| {
                let stored = core::stored_headers(&fresh)?;
                Some(Object {
                    status: old.status,
                    tags: tollgate_core::cache::purge::tags_of(&stored),
                    headers: stored,
                    body: old.body.clone(),
                    freshness,
                    request_time: self.request_time,
                    response_time: now,
                    vary: policy::vary_names(&fresh).ok()?,
                    request_ms: self.request_ms,
                })
            });
        let stored = match object {
            Some(object) => {
                let mut w = self.worker.borrow_mut();
                w.counters.inc(host, Stat::Revalidated);
                w.put(host, &req.primary, &req.headers, object.clone());
                Rc::new(object)
            }
            // Unchanged, but no longer storable: answered once from the old copy.
            None => old,
        };
        self.release(host);
        let age = policy::current_age(&stored.freshness, stored.request_time, stored.response_time, now);
        let status = "tollgate; fwd=stale; fwd-status=304";
        answer_as(host, &self.worker, &req, &stored, age, status)
    }

    fn on_response_headers(&mut self, end_of_stream: bool) -> Action {
        let host = Rc::clone(&self.host);
        let host = &*host;
        if self.answered || self.worker.borrow_mut().answered.remove(&self.context_id) {
            self.answered = true;
            return Action::Continue;
        }
        let headers = host.response_headers();
        let status = policy::lines(&headers, ":status")
            .first()
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|s| s.parse::<u32>().ok())
            .unwrap_or(0);
        if let Some(target) = self.invalidate.take() {
            if (200..400).contains(&status) {
                self.worker.borrow_mut().invalidate(host, target);
            }
            return Action::Continue;
        }
        let now = now_s(host);
        if status == 304 && self.revalidating {
            self.revalidating = false;
            if self.revalidated(host, &headers, now) {
                self.answered = true;
                return Action::Pause;
            }
            // The proxy refused the local reply: the 304 goes on.
            return Action::Continue;
        }
        // stale-if-error: the origin failed and a stored response may stand in for it.
        if status >= 500
            && let (Some(object), Some(req)) = (self.fallback.clone(), self.req.clone())
        {
            let age = policy::current_age(&object.freshness, object.request_time, object.response_time, now);
            if policy::usable_on_error(&object.freshness, age) {
                self.release(host);
                if answer(host, &self.worker, &req, &object, age, Some("stale-if-error"), false) {
                    self.worker.borrow().counters.inc(host, Stat::StaleIfError);
                    self.answered = true;
                    return Action::Pause;
                }
                // The proxy refused the local reply: the error goes on.
            }
        }
        let mut stored = false;
        if let Some(req) = self.req.take() {
            let worker = self.worker.borrow();
            let config = &worker.config;
            let authorized = !policy::lines(&req.headers, "authorization").is_empty();
            let decision = policy::storable(true, authorized, status, &headers, now, config.stale).and_then(
                |freshness| {
                    core::body_storable(status, &headers, config.max_object_bytes)?;
                    let vary = policy::vary_names(&headers)?;
                    let stored = core::stored_headers(&headers).ok_or(policy::NotStored::NotText)?;
                    let tags = tollgate_core::cache::purge::tags_of(&stored);
                    Ok(Object {
                        status,
                        headers: stored,
                        body: Vec::new(),
                        freshness,
                        request_time: self.request_time,
                        response_time: now,
                        tags,
                        request_ms: self.request_ms,
                        vary,
                    })
                },
            );
            match decision {
                Ok(object) => {
                    stored = true;
                    self.pending = Some(Pending { object });
                    self.req = Some(req);
                }
                Err(why) => {
                    let stat =
                        if why == policy::NotStored::TooLarge { Stat::TooLarge } else { Stat::NotStored };
                    worker.counters.inc(host, stat);
                    host.log(LogLevel::Debug, &format!("cache: not stored ({})", why.reason()));
                }
            }
        }
        if let Some(fwd) = self.fwd {
            let value = Status::Forward { fwd, stored, detail: None }.render();
            host.add_response_header("cache-status", value.as_bytes());
        }
        if !stored {
            self.release(host);
        } else if end_of_stream {
            self.finish(host);
        }
        Action::Continue
    }

    fn on_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.answered {
            return Action::Continue;
        }
        let host = Rc::clone(&self.host);
        let host = &*host;
        if let Some(pending) = self.pending.as_mut() {
            let max = self.worker.borrow().config.max_object_bytes;
            if pending.object.body.len() + body_size > max {
                self.pending = None;
                self.worker.borrow().counters.inc(host, Stat::TooLarge);
                self.release(host);
            } else if body_size > 0 {
                match host.response_body(0, body_size) {
                    Some(chunk) => pending.object.body.extend_from_slice(&chunk),
                    None => {
                        self.pending = None;
                        self.release(host);
                    }
                }
            }
        }
        if end_of_stream {
            self.finish(host);
        }
        Action::Continue
    }

    /// The response ended: store the copy, then answer the requests that waited.
    fn finish(&mut self, host: &H) {
        if let (Some(pending), Some(req)) = (self.pending.take(), self.req.take()) {
            self.worker.borrow_mut().put(host, &req.primary, &req.headers, pending.object);
        }
        self.release(host);
    }

    /// Hands the flight this request leads to its waiters: each is answered from the cache when
    /// it can be, else goes upstream itself. Acts for other contexts, then for this one again.
    fn release(&mut self, host: &H) {
        if let Some((lock_key, primary)) = self.locked.take() {
            self.worker.borrow().unlock(host, &lock_key, &primary, 0);
        }
        if let Some(primary) = self.leading.take() {
            release_flight(host, &self.worker, &primary);
            host.set_effective_context(self.context_id);
        }
    }

    /// The request ended (completed, reset or timed out).
    fn on_gone(&mut self) {
        let host = Rc::clone(&self.host);
        let host = &*host;
        self.pending = None;
        self.release(host);
        let mut worker = self.worker.borrow_mut();
        worker.answered.remove(&self.context_id);
        if let Some(primary) = self.waiting.take() {
            if let Some(flight) = worker.flights.get_mut(&primary) {
                flight.waiters.retain(|w| w.context_id != self.context_id);
            }
            if let Some(waiters) = worker.remote_waits.get_mut(&primary) {
                waiters.retain(|w| w.context_id != self.context_id);
                if waiters.is_empty() {
                    worker.remote_waits.remove(&primary);
                }
            }
        }
    }
}

/// The request to make again for a background refresh of `req`'s stored response `object`:
/// conditional on its validators, so that an unchanged response costs the origin a 304.
fn refresh_job(req: &Req, object: &Object) -> Job {
    const SKIP: [&str; 9] = [
        "if-none-match",
        "if-modified-since",
        "if-match",
        "if-unmodified-since",
        "if-range",
        "range",
        "cache-control",
        "pragma",
        "content-length",
    ];
    let mut headers = vec![
        (":method".to_owned(), "GET".to_owned()),
        (":path".to_owned(), req.path.clone()),
        (":authority".to_owned(), req.authority.clone()),
    ];
    for (name, value) in &req.headers {
        if name.starts_with(':') || SKIP.contains(&name.as_str()) || name == "x-request-id" {
            continue;
        }
        if let Ok(text) = std::str::from_utf8(value) {
            headers.push((name.clone(), text.to_owned()));
        }
    }
    if let Some(etag) = object.header("etag") {
        headers.push(("if-none-match".to_owned(), etag.to_owned()));
    }
    if let Some(modified) = object.header("last-modified") {
        headers.push(("if-modified-since".to_owned(), modified.to_owned()));
    }
    Job {
        primary: req.primary.clone(),
        headers,
        request_headers: req.headers.clone(),
        authorized: !policy::lines(&req.headers, "authorization").is_empty(),
    }
}

/// Answers the current request from `object`: 304 when the client's copy matches, else the
/// stored status, headers and body, with `Age` and `Cache-Status`. False when the proxy refused
/// the reply (the request is still the caller's to carry on).
pub fn answer<H: Host + ?Sized>(
    host: &H,
    worker: &RefCell<Worker>,
    req: &Req,
    object: &Object,
    age: u64,
    detail: Option<&'static str>,
    collapsed: bool,
) -> bool {
    let lifetime = i64::try_from(object.freshness.lifetime).unwrap_or(i64::MAX);
    let ttl = lifetime.saturating_sub(i64::try_from(age).unwrap_or(i64::MAX));
    let status = Status::Hit { ttl, detail, collapsed }.render();
    answer_as(host, worker, req, object, age, &status)
}

/// [`answer`] with the `Cache-Status` given.
pub fn answer_as<H: Host + ?Sized>(
    host: &H,
    worker: &RefCell<Worker>,
    req: &Req,
    object: &Object,
    age: u64,
    status: &str,
) -> bool {
    let age = age.to_string();
    // Repeated fields go out as one line each name: the proxy's local reply sets each name once.
    let mut merged: Vec<(String, String)> = Vec::new();
    for (name, value) in &object.headers {
        match merged.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => {
                v.push_str(", ");
                v.push_str(value);
            }
            None => merged.push((name.clone(), value.clone())),
        }
    }
    let not_modified = conditional::not_modified(
        req.header("if-none-match"),
        req.header("if-modified-since"),
        object.header("etag"),
        object.header("last-modified"),
    );
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if not_modified {
        const KEPT: [&str; 7] =
            ["cache-control", "content-location", "date", "etag", "expires", "vary", "last-modified"];
        headers.extend(
            merged.iter().filter(|(n, _)| KEPT.contains(&n.as_str())).map(|(n, v)| (n.as_str(), v.as_str())),
        );
    } else {
        headers.extend(merged.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    }
    headers.push(("age", &age));
    headers.push(("cache-status", status));
    if not_modified {
        let sent = host.send_response(304, &headers, &[]);
        if sent {
            worker.borrow().counters.inc(host, Stat::NotModified);
        }
        sent
    } else {
        host.send_response(object.status, &headers, &object.body)
    }
}

/// Ends the flight for `primary`: each waiter is answered from the store when it can be, and
/// resumed (to go upstream) when not. Leaves the last waiter's context effective.
pub fn release_flight<H: Host + ?Sized>(host: &H, worker: &RefCell<Worker>, primary: &str) {
    let Some(flight) = worker.borrow_mut().flights.remove(primary) else {
        return;
    };
    let now = now_s(host);
    for waiter in flight.waiters {
        if !host.set_effective_context(waiter.context_id) {
            continue; // that request is gone
        }
        let found = worker.borrow_mut().find(host, &waiter.req, now);
        settle_waiter(host, worker, &waiter, found);
    }
}

/// Finishes a waiter whose context is effective: answered from `found` when it can answer
/// (counted as coalesced), else resumed to go upstream itself.
pub fn settle_waiter<H: Host + ?Sized>(
    host: &H,
    worker: &RefCell<Worker>,
    waiter: &Waiter,
    found: Result<Found, NoKey>,
) {
    match found {
        Ok(Found::Object { object, age, usable: Usable::Fresh | Usable::StaleAllowed }) => {
            {
                let mut w = worker.borrow_mut();
                w.counters.inc(host, Stat::Coalesced);
                w.answered.insert(waiter.context_id);
            }
            if !answer(host, worker, &waiter.req, &object, age, None, true) {
                // The proxy refused the local reply: the request goes upstream itself.
                worker.borrow_mut().answered.remove(&waiter.context_id);
                host.resume_request();
            }
        }
        _ => {
            host.resume_request();
        }
    }
}

impl<H: Host> Context for CacheHttp<H> {
    fn on_done(&mut self) -> bool {
        self.on_gone();
        true
    }
}

impl<H: Host> HttpContext for CacheHttp<H> {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.on_request()
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.on_response_headers(end_of_stream)
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.on_response_body(body_size, end_of_stream)
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        // Trailers cannot be replayed: the copy is dropped.
        if self.pending.take().is_some() {
            let host = Rc::clone(&self.host);
            self.worker.borrow().counters.inc(&*host, Stat::NotStored);
            self.release(&*host);
        }
        Action::Continue
    }
}
