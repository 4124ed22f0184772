//! The per-request context: find the key, consult the cache, look it up once, decide.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use tollgate_core::credentials;
use tollgate_core::error::{denial_reply, log_field};
use tollgate_core::identity;
use tollgate_core::key;
use tollgate_core::key_auth::cache::{Entry, KeyState};
use tollgate_core::key_auth::config::{Config, FailureMode, Source};
use tollgate_core::key_auth::{self as ka, Deny};
use tollgate_core::route::{self, RequestFacts};
use tollgate_host::{Host, LogLevel, attributes};

use crate::reply::{Outcome, read_verify_reply};
use crate::store::{self, Found};
use crate::worker::{Flight, REFRESH_RETRY, Refresh, Stat, Waiter, Worker, millis};

pub struct KeyAuthHttp<H: Host> {
    host: Rc<H>,
    worker: Rc<RefCell<Worker>>,
    context_id: u32,
    /// The key hash this context is waiting on, and whether it made the call.
    waiting: Option<[u8; 32]>,
    leading: bool,
}

impl<H: Host> KeyAuthHttp<H> {
    pub fn new(host: Rc<H>, worker: Rc<RefCell<Worker>>, context_id: u32) -> Self {
        Self { host, worker, context_id, waiting: None, leading: false }
    }

    fn on_request(&mut self) -> Action {
        let host = &*self.host;
        // One host call for every header: the key sources, the pseudo-headers and the identity
        // headers a client may have tried to send are all read from it.
        let headers: Vec<(String, String)> =
            host.request_headers().into_iter().map(|(n, v)| (n, tollgate_host::lossy(v))).collect();
        let get = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        // Identity headers are ours to set: never let a client send them upstream.
        for name in identity::IDENTITY_HEADERS {
            if get(name).is_some() {
                host.set_request_header(name, None);
            }
        }
        let path = get(":path").unwrap_or_default();
        let method = get(":method").unwrap_or_default();
        let request_id = get("x-request-id").unwrap_or_default().to_owned();
        let (path_only, query) = route::split_path(path);

        let mut worker = self.worker.borrow_mut();
        let config = &worker.config;
        let route_name = if config.routes_by_name() {
            host.property(attributes::ROUTE_NAME).and_then(|b| String::from_utf8(b).ok())
        } else {
            None
        };
        let key = match ka::find_key(&config.sources, &headers, query) {
            Ok(key) => key,
            Err(deny) => {
                respond_denied(host, &worker, deny, &request_id, "-");
                return Action::Pause;
            }
        };
        // Rules see the normalised path: `//admin` and `/%61dmin` are `/admin` to them.
        let rule_path = match route::normalize_path(path_only) {
            Ok(p) => p,
            Err(_) if !config.routes_by_path() => path_only.into(),
            Err(refused) => {
                host.log(LogLevel::Info, &format!("key-auth: path refused ({})", refused.reason()));
                respond_denied(host, &worker, Deny::BadPath, &request_id, "-");
                return Action::Pause;
            }
        };
        let facts = RequestFacts { route_name: route_name.as_deref(), path: &rule_path, method };
        let waiter = Waiter {
            context_id: self.context_id,
            required_scopes: config.required_scopes(&facts).to_vec(),
            request_id,
        };
        if config.hide_credentials {
            hide_credentials(host, config, &key, &headers, path_only, query);
        }

        let hash = key::key_hash(&key);
        let now_ms = host.now_ms();
        match store::lookup(host, &mut worker, &hash) {
            Found::Fresh(entry) => {
                worker.counters.inc(host, Stat::CacheHit);
                return if apply_answer(host, &worker, &waiter, &entry) {
                    Action::Continue
                } else {
                    Action::Pause
                };
            }
            Found::Stale(entry) => {
                // Past its TTL, within the stale window, not invalidated: served at once while
                // the root context refreshes it in the background. The request never waits
                // for the key service (which may be down or hung).
                worker.counters.inc(host, Stat::CacheStaleServed);
                worker.want_refresh(hash, now_ms);
                return if apply_answer(host, &worker, &waiter, &entry) {
                    Action::Continue
                } else {
                    Action::Pause
                };
            }
            Found::Miss => {}
        }
        worker.counters.inc(host, Stat::CacheMiss);

        if let Some(flight) = worker.flights.get_mut(&hash) {
            flight.waiters.push(waiter);
            worker.counters.inc(host, Stat::SingleflightJoined);
            self.waiting = Some(hash);
            return Action::Pause;
        }
        let epoch = worker.feed.epoch(host);
        match worker.dispatch_verify(host, &hash) {
            Ok(token) => {
                worker.flights.insert(
                    hash,
                    Flight {
                        leader: Some(self.context_id),
                        token: Some(token),
                        waiters: vec![waiter],
                        epoch,
                        started_ms: now_ms,
                    },
                );
                self.waiting = Some(hash);
                self.leading = true;
                Action::Pause
            }
            Err(_) => {
                worker.counters.inc(host, Stat::CalloutError);
                host.log(
                    LogLevel::Error,
                    &format!("key-auth: cannot call cluster `{}`", worker.config.key_service.cluster),
                );
                if apply_failure(host, &worker, &waiter) { Action::Continue } else { Action::Pause }
            }
        }
    }

    fn on_call_done(&mut self, status: u32, size: usize) {
        let Some(hash) = self.waiting.filter(|_| self.leading) else {
            return;
        };
        self.leading = false;
        // This request stays among the flight's waiters until the flight completes (now, or
        // after the root context asked again).
        let epoch = self.worker.borrow().flights.get(&hash).map(|f| f.epoch);
        if let Some(epoch) = epoch {
            lookup_done(&*self.host, &self.worker, hash, epoch, status, size);
        }
    }

    /// The request went away (client reset, timeout) while it waited.
    fn on_gone(&mut self) {
        let Some(hash) = self.waiting.take() else {
            return;
        };
        let mut worker = self.worker.borrow_mut();
        let Some(flight) = worker.flights.get_mut(&hash) else {
            return;
        };
        flight.waiters.retain(|w| w.context_id != self.context_id);
        if self.leading && flight.leader == Some(self.context_id) {
            // Envoy cancels this context's call. The root context calls again on its next
            // tick for the requests still waiting.
            flight.leader = None;
            flight.token = None;
        }
        if flight.waiters.is_empty() && flight.leader.is_none() {
            worker.flights.remove(&hash);
        }
    }
}

impl<H: Host> Context for KeyAuthHttp<H> {
    fn on_grpc_call_response(&mut self, _token_id: u32, status_code: u32, response_size: usize) {
        self.on_call_done(status_code, response_size);
    }

    fn on_done(&mut self) -> bool {
        self.on_gone();
        true
    }
}

impl<H: Host> HttpContext for KeyAuthHttp<H> {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.on_request()
    }
}

/// Whether the change feed went back (a store restored from a backup) since a call made in
/// `epoch`: its answer may then come from the store that is gone, and is not trusted.
fn answer_predates_reset<H: Host + ?Sized>(host: &H, worker: &Worker, epoch: u64) -> bool {
    worker.feed.epoch(host) > epoch
}

/// Handles the answer to the lookup for `hash` made in feed epoch `epoch`: caches it and
/// finishes the requests waiting on it. An answer asked for before a feed reset is not used:
/// the flight is handed to the root context, which asks again on its next tick.
pub fn lookup_done<H: Host + ?Sized>(
    host: &H,
    worker: &RefCell<Worker>,
    hash: [u8; 32],
    epoch: u64,
    status: u32,
    size: usize,
) {
    {
        let w = worker.borrow();
        if let Some(flight) = w.flights.get(&hash) {
            w.call_ms.record(host, host.now_ms().saturating_sub(flight.started_ms));
        }
    }
    let outcome = read_verify_reply(host, &worker.borrow(), hash, epoch, status, size);
    if let Outcome::Answer(entry) = &outcome {
        let mut w = worker.borrow_mut();
        if answer_predates_reset(host, &w, epoch) {
            host.log(
                LogLevel::Info,
                "key-auth: an answer asked for before the change feed went back; asking again",
            );
            drop(w);
            if let Some(flight) = worker.borrow_mut().flights.get_mut(&hash) {
                flight.leader = None;
                flight.token = None;
            }
            return;
        }
        store::store(host, &mut w, (**entry).clone());
    }
    complete_flight(host, worker, hash, outcome);
}

/// Handles the answer to a background refresh of `hash` made in feed epoch `epoch`: a new
/// answer replaces the stale one in the cache; a failure is remembered for
/// [`REFRESH_RETRY`], during which the stale answer keeps being served without a call.
pub fn refresh_done<H: Host + ?Sized>(
    host: &H,
    worker: &RefCell<Worker>,
    hash: [u8; 32],
    epoch: u64,
    started_ms: u64,
    status: u32,
    size: usize,
) {
    worker.borrow().call_ms.record(host, host.now_ms().saturating_sub(started_ms));
    let mut w = worker.borrow_mut();
    match read_verify_reply(host, &w, hash, epoch, status, size) {
        Outcome::Answer(entry) => {
            w.refreshes.remove(&hash);
            // An answer asked for before a feed reset is dropped: the stale answer is of the
            // old epoch too, so the next request for the key makes a lookup of its own.
            if !answer_predates_reset(host, &w, epoch) {
                store::store(host, &mut w, *entry);
                w.counters.inc(host, Stat::CacheRefreshed);
            }
        }
        Outcome::Failed => {
            let until_ms = host.now_ms().saturating_add(millis(REFRESH_RETRY));
            w.refreshes.insert(hash, Refresh::Failed { until_ms });
            w.counters.inc(host, Stat::CacheRefreshFailed);
        }
    }
}

/// Finishes every request waiting on `hash`.
pub fn complete_flight<H: Host + ?Sized>(
    host: &H,
    worker: &RefCell<Worker>,
    hash: [u8; 32],
    outcome: Outcome,
) {
    let Some(flight) = worker.borrow_mut().flights.remove(&hash) else {
        return;
    };
    let worker = worker.borrow();
    for waiter in &flight.waiters {
        if !host.set_effective_context(waiter.context_id) {
            continue; // that request is gone
        }
        let allowed = match &outcome {
            Outcome::Answer(entry) => apply_answer(host, &worker, waiter, entry),
            Outcome::Failed => apply_failure(host, &worker, waiter),
        };
        if allowed {
            host.resume_request();
        }
    }
}

/// Acts on an answer for the current request. Returns true when the request may proceed.
fn apply_answer<H: Host + ?Sized>(host: &H, worker: &Worker, waiter: &Waiter, entry: &Entry) -> bool {
    let now_s = (host.now_ms() / 1000) as i64;
    let verdict = entry.usable_at(now_s).map_err(|state| match state {
        KeyState::NotFound => Deny::UnknownKey,
        KeyState::Revoked => Deny::Revoked,
        KeyState::Expired | KeyState::Valid => Deny::Expired,
    });
    let verdict = verdict.and_then(|()| {
        if entry.has_scopes(&waiter.required_scopes) { Ok(()) } else { Err(Deny::InsufficientScope) }
    });
    let verdict = verdict.and_then(|()| {
        // Answers are checked for this when they arrive; a cache slot is shared data, so check
        // again rather than publish a wrong list.
        identity::scopes_value(&entry.scopes).ok_or(Deny::KeyServiceUnavailable)
    });
    let counted = |outcome: &'static str| {
        if let Some(usage) = &worker.usage
            && !entry.key_id.is_empty()
        {
            if entry.previous_secret {
                usage.count_previous(&entry.key_id, host.now_ms(), outcome);
            } else {
                usage.count(&entry.key_id, host.now_ms(), outcome);
            }
        }
    };
    match verdict {
        Ok(scopes) => {
            set_identity(host, entry, &scopes);
            worker.counters.inc(host, Stat::Allowed);
            counted("allowed");
            true
        }
        Err(deny) => {
            counted(deny.reason());
            respond_denied(host, worker, deny, &waiter.request_id, &entry.display_prefix);
            false
        }
    }
}

/// Acts on a lookup that failed (nothing usable was cached): the failure mode.
fn apply_failure<H: Host + ?Sized>(host: &H, worker: &Worker, waiter: &Waiter) -> bool {
    match worker.config.failure_mode {
        FailureMode::Deny => {
            respond_denied(host, worker, Deny::KeyServiceUnavailable, &waiter.request_id, "-");
            false
        }
        FailureMode::Allow => {
            worker.counters.inc(host, Stat::FailureModeAllowed);
            host.log(
                LogLevel::Warn,
                "key-auth: key service unavailable; request allowed without identity (failure_mode: allow)",
            );
            true
        }
    }
}

fn set_identity<H: Host + ?Sized>(host: &H, entry: &Entry, scopes: &str) {
    host.set_request_header(identity::CONSUMER_HEADER, Some(entry.consumer_id.as_bytes()));
    host.set_request_header(identity::KEY_ID_HEADER, Some(entry.key_id.as_bytes()));
    host.set_request_header(identity::SCOPES_HEADER, Some(scopes.as_bytes()));
    host.set_property(&[identity::PROP_CONSUMER], entry.consumer_id.as_bytes());
    host.set_property(&[identity::PROP_KEY_ID], entry.key_id.as_bytes());
    host.set_property(&[identity::PROP_SCOPES], scopes.as_bytes());
    if !entry.tier.is_empty() {
        host.set_property(&[identity::PROP_TIER], entry.tier.as_bytes());
    }
    if !entry.limits.is_empty() {
        host.set_property(&[identity::PROP_RATE_LIMIT], identity::format_limits(&entry.limits).as_bytes());
    }
}

fn respond_denied<H: Host + ?Sized>(
    host: &H,
    worker: &Worker,
    deny: Deny,
    request_id: &str,
    display_prefix: &str,
) {
    worker.counters.denied(host, deny);
    host.log(
        LogLevel::Info,
        &format!(
            "key-auth: denied reason={} key={} request_id={}",
            deny.reason(),
            log_field(display_prefix),
            log_field(request_id)
        ),
    );
    let challenge = || format!("ApiKey realm=\"{}\"", worker.config.realm);
    tollgate_host::send_reply(host, &denial_reply(deny, request_id, challenge));
}

/// Removes the key from the request before it goes upstream: every header source that carried
/// it, and every query source.
fn hide_credentials<H: Host + ?Sized>(
    host: &H,
    config: &Config,
    key: &str,
    headers: &[(String, String)],
    path: &str,
    query: &str,
) {
    let carried = |name: &str| headers.iter().any(|(n, v)| n == name && v.contains(key));
    let header_sources = config.sources.iter().filter_map(|source| match source {
        Source::Header { name, .. } if carried(name) => Some(name.as_str()),
        _ => None,
    });
    let query_sources = config.sources.iter().filter_map(|source| match source {
        Source::Query { name } => Some(name.as_str()),
        Source::Header { .. } => None,
    });
    tollgate_host::remove_credentials(
        host,
        &credentials::removal(header_sources, query_sources, path, query),
    );
}
