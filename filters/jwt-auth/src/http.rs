//! The per-request context: find the token, consult the cache, verify (or introspect an opaque
//! token), decide. A request whose provider has no keys yet, or whose `kid` the keys do not
//! know, waits for one key-set fetch shared by every such request of the worker
//! ([`crate::worker::Flight`]), and is finished by whichever context sees the fetch end
//! ([`complete_flight`]).

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tollgate_core::credentials;
use tollgate_core::error::{denial_reply, log_field};
use tollgate_core::identity;
use tollgate_core::jwt::claims::{self, Identity, Requirements};
use tollgate_core::jwt::config::Source;
use tollgate_core::jwt::introspection::{self, Answer};
use tollgate_core::jwt::{self as jwt, Deny, cache, jws};
use tollgate_core::route::{self, RequestFacts};
use tollgate_host::{Host, LogLevel, attributes};

use crate::worker::{
    Claim, FLIGHT_GRACE_MS, FetchReason, Fetcher, Flight, MAX_WAITERS, Stat, Waiter, Worker, call_answer_body,
};

/// A request paused while its opaque token is introspected.
struct Pending {
    token: String,
    provider: usize,
    requirements: Requirements,
    request_id: String,
    /// The introspection call.
    call: u32,
}

pub struct JwtAuthHttp<H: Host> {
    host: Rc<H>,
    worker: Rc<RefCell<Worker>>,
    context_id: u32,
    pending: Option<Pending>,
    /// The provider whose key set this request waits for (it is in that provider's flight).
    waiting_for_keys: Option<usize>,
    /// The key-set call this context made: provider and call token.
    fetching: Option<(usize, u32)>,
}

impl<H: Host> JwtAuthHttp<H> {
    pub fn new(host: Rc<H>, worker: Rc<RefCell<Worker>>, context_id: u32) -> Self {
        Self { host, worker, context_id, pending: None, waiting_for_keys: None, fetching: None }
    }

    fn on_request(&mut self) -> Action {
        let host_rc = self.host.clone();
        let host = &*host_rc;
        let worker = self.worker.clone();
        let mut w = worker.borrow_mut();
        // One host call for every field line: token sources (a repeated header or a second
        // `Cookie` line is seen too), pseudo-headers, and the identity headers to remove.
        let headers: Vec<(String, String)> =
            host.request_headers().into_iter().map(|(n, v)| (n, tollgate_host::lossy(v))).collect();
        let get = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        // Identity and mapped-claim headers are ours to set: never pass on a client's copies.
        let ours = identity::IDENTITY_HEADERS
            .iter()
            .copied()
            .chain(w.config.claim_headers.iter().map(|(n, _)| n.as_str()));
        for name in ours {
            if get(name).is_some() {
                host.set_request_header(name, None);
            }
        }
        let path = get(":path").unwrap_or_default();
        let method = get(":method").unwrap_or_default();
        let request_id = get("x-request-id").unwrap_or_default().to_owned();
        let route_name = if w.config.routes_by_name() {
            host.property(attributes::ROUTE_NAME).and_then(|b| String::from_utf8(b).ok())
        } else {
            None
        };
        let (path_only, query) = route::split_path(path);

        let found = jwt::find_token(&w.config.sources, &headers, query);
        let token = match found {
            Ok(token) => token,
            Err(deny) => {
                respond_denied(host, &w, deny, &request_id, &[]);
                return Action::Pause;
            }
        };
        // Rules see the normalised path: `//admin` and `/%61dmin` are `/admin` to them.
        let rule_path = match route::normalize_path(path_only) {
            Ok(p) => p,
            Err(_) if !w.config.routes_by_path() => path_only.into(),
            Err(refused) => {
                host.log(LogLevel::Info, &format!("jwt-auth: path refused ({})", refused.reason()));
                respond_denied(host, &w, Deny::BadPath, &request_id, &[]);
                return Action::Pause;
            }
        };
        let facts = RequestFacts { route_name: route_name.as_deref(), path: &rule_path, method };
        let (providers, requirements) = match w.config.rule(&facts) {
            Some(rule) => (rule.providers.clone(), rule.requirements.clone()),
            None => ((0..w.config.providers.len()).collect(), Requirements::default()),
        };
        if !w.config.forward_token {
            strip_token(host, &w, &headers, path_only, query);
        }

        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(verified) = w.cache_get(host, &hash)
            && providers.contains(&usize::from(verified.entry.provider))
        {
            w.counters.inc(host, Stat::CacheHit);
            let idx = usize::from(verified.entry.provider);
            let Some(claims) = &verified.claims else {
                // An introspection answer `active: false`.
                return finish(host, &w, Err(Deny::InactiveToken), &request_id, &requirements);
            };
            // `typ` was checked when the token was verified; the header is not cached.
            let typ = w.provider(idx).and_then(|p| p.rules.typ.clone());
            let outcome = admit(host, &w, idx, claims, typ.as_deref(), &requirements, None, 0);
            return finish(host, &w, outcome, &request_id, &requirements);
        }
        w.counters.inc(host, Stat::CacheMiss);

        if !introspection::looks_like_jwt(&token) {
            let introspecting =
                providers.iter().copied().find(|i| w.provider(*i).is_some_and(|p| p.introspection.is_some()));
            let Some(idx) = introspecting else {
                return finish(host, &w, Err(Deny::Malformed), &request_id, &requirements);
            };
            if token.len() > w.config.max_token_size {
                return finish(host, &w, Err(Deny::TokenTooLarge), &request_id, &requirements);
            }
            return match start_introspection(host, &w, idx, &token) {
                Ok(call) => {
                    self.pending = Some(Pending { token, provider: idx, requirements, request_id, call });
                    Action::Pause
                }
                Err(deny) => finish(host, &w, Err(deny), &request_id, &requirements),
            };
        }

        let provider = jws::parse(&token, w.config.max_token_size).and_then(|jws| {
            let idx = find_provider(&w, &providers, &jws)?;
            Ok((idx, jws))
        });
        let (idx, parsed) = match provider {
            Ok(p) => p,
            Err(deny) => return finish(host, &w, Err(deny), &request_id, &requirements),
        };
        match w.verify(host, idx, &parsed) {
            Ok(()) => {
                let outcome = admit_verified(host, &w, idx, &parsed, &requirements, hash);
                finish(host, &w, outcome, &request_id, &requirements)
            }
            Err(deny @ (Deny::UnknownKid | Deny::KeysUnavailable)) if w.remote(idx).is_some() => {
                let waiter = Waiter { context_id: self.context_id, token, requirements, request_id };
                match self.wait_for_keys(host, &mut w, idx, deny, waiter) {
                    Ok(()) => Action::Pause,
                    Err((deny, waiter)) => {
                        finish(host, &w, Err(deny), &waiter.request_id, &waiter.requirements)
                    }
                }
            }
            Err(deny) => finish(host, &w, Err(deny), &request_id, &requirements),
        }
    }

    /// Makes the request wait for provider `idx`'s key set: it joins the flight already waiting
    /// for a fetch, or starts the fetch, or waits for the one another worker has in flight. `Err`
    /// with the refusal when it cannot wait: a fetch is not allowed now (back-off after a
    /// failure, unknown-`kid` cooldown), the call cannot start, or too many requests wait.
    fn wait_for_keys(
        &mut self,
        host: &H,
        w: &mut Worker,
        idx: usize,
        deny: Deny,
        waiter: Waiter,
    ) -> Result<(), (Deny, Waiter)> {
        let now = host.now_ms();
        let timeout_ms = w.remote(idx).map_or(0, |r| r.timeout.as_millis() as u64);
        if let Some(flight) = w.flights.get_mut(&idx) {
            if flight.waiters.len() >= MAX_WAITERS {
                w.counters.inc(host, Stat::JwksWaitersFull);
                return Err((Deny::KeysUnavailable, waiter));
            }
            flight.waiters.push(waiter);
            w.counters.inc(host, Stat::JwksSingleflightJoined);
            self.waiting_for_keys = Some(idx);
            return Ok(());
        }
        let reason = if deny == Deny::UnknownKid { FetchReason::UnknownKid } else { FetchReason::Refresh };
        let (fetcher, deadline_ms) = match w.claim_fetch(host, idx, reason) {
            Claim::Granted => {
                if deny == Deny::UnknownKid {
                    w.counters.inc(host, Stat::JwksRefetchUnknownKid);
                }
                let Ok(token) = w.dispatch_fetch(host, idx) else { return Err((deny, waiter)) };
                self.fetching = Some((idx, token));
                let fetcher = Fetcher::Request { context_id: self.context_id, token };
                (fetcher, now + timeout_ms + FLIGHT_GRACE_MS)
            }
            Claim::InFlight(until) => {
                // This worker's root context is fetching, or another worker is.
                let fetcher = match w.root_fetch(idx) {
                    Some(token) => Fetcher::Root { token },
                    None => Fetcher::Elsewhere,
                };
                w.counters.inc(host, Stat::JwksSingleflightJoined);
                (fetcher, until.max(now) + FLIGHT_GRACE_MS)
            }
            Claim::Refused => return Err((deny, waiter)),
        };
        w.flights.insert(idx, Flight { fetcher, waiters: vec![waiter], deadline_ms });
        self.waiting_for_keys = Some(idx);
        Ok(())
    }

    /// A call this request started has answered.
    fn on_call_done(&mut self, call: u32, body_size: usize) {
        let host = &*self.host;
        if let Some((idx, token)) = self.fetching
            && token == call
        {
            self.fetching = None;
            let worker = self.worker.clone();
            let mut w = worker.borrow_mut();
            w.fetch_done(host, idx, body_size);
            let ours = Fetcher::Request { context_id: self.context_id, token };
            if w.flights.get(&idx).is_some_and(|f| f.fetcher == ours) {
                complete_flight(host, &mut w, idx, self.context_id);
            }
            return;
        }
        let Some(p) = self.pending.take() else {
            host.log(LogLevel::Debug, &format!("jwt-auth: response to unknown call {call}"));
            return;
        };
        if p.call != call {
            // Not the call this request waits on: keep waiting (its own answer, or its
            // timeout, still comes).
            host.log(LogLevel::Debug, &format!("jwt-auth: response to unknown call {call}"));
            self.pending = Some(p);
            return;
        }
        let worker = self.worker.clone();
        let w = worker.borrow();
        match introspection_done(host, &w, &p, body_size) {
            Ok(()) => {
                host.resume_request();
            }
            Err(deny) => respond_denied(host, &w, deny, &p.request_id, &p.requirements.scopes),
        }
    }

    /// The request went away (client reset, timeout): it no longer waits, and a key-set call it
    /// made is cancelled by the proxy, so the root context fetches again for the others.
    fn on_gone(&mut self) {
        let Some(idx) = self.waiting_for_keys.take() else { return };
        let worker = self.worker.clone();
        let mut w = worker.borrow_mut();
        let Some(flight) = w.flights.get_mut(&idx) else { return };
        flight.waiters.retain(|waiter| waiter.context_id != self.context_id);
        if let Fetcher::Request { context_id, .. } = flight.fetcher
            && context_id == self.context_id
        {
            flight.fetcher = Fetcher::Orphaned;
        }
    }
}

/// Finishes every request waiting for provider `idx`'s key set, each with its own decision
/// (verified with the keys there are now; no second fetch), then makes `restore_to` the
/// effective context again.
pub fn complete_flight<H: Host + ?Sized>(host: &H, w: &mut Worker, idx: usize, restore_to: u32) {
    let Some(flight) = w.flights.remove(&idx) else { return };
    for waiter in &flight.waiters {
        if !host.set_effective_context(waiter.context_id) {
            continue; // that request is gone
        }
        let hash: [u8; 32] = Sha256::digest(waiter.token.as_bytes()).into();
        let outcome = jws::parse(&waiter.token, w.config.max_token_size).and_then(|parsed| {
            w.verify(host, idx, &parsed)?;
            admit_verified(host, w, idx, &parsed, &waiter.requirements, hash)
        });
        match outcome {
            Ok(()) => {
                host.resume_request();
            }
            Err(deny) => respond_denied(host, w, deny, &waiter.request_id, &waiter.requirements.scopes),
        }
    }
    host.set_effective_context(restore_to);
}

fn find_provider(w: &Worker, allowed: &[usize], jws: &jws::Jws) -> Result<usize, Deny> {
    let Some(Value::String(iss)) = jws.claims.get("iss") else {
        return Err(Deny::UnknownIssuer);
    };
    let accepts = |i: &usize| w.provider(*i).is_some_and(|p| p.rules.issuer == *iss);
    allowed.iter().copied().find(accepts).ok_or(Deny::UnknownIssuer)
}

/// Checks the claims and the route's requirements of a token whose signature verified, caching
/// the verification.
fn admit_verified<H: Host + ?Sized>(
    host: &H,
    w: &Worker,
    idx: usize,
    parsed: &jws::Jws,
    requirements: &Requirements,
    hash: [u8; 32],
) -> Result<(), Deny> {
    let cache_entry = Some(cache::Entry {
        hash,
        valid_until_s: 0, // set once the claims are known
        provider: u16::try_from(idx).unwrap_or(u16::MAX),
        payload: parsed.payload.clone(),
    });
    let max_ttl_s = w.config.cache_max_ttl.as_secs() as i64;
    admit(host, w, idx, &parsed.claims, parsed.typ.as_deref(), requirements, cache_entry, max_ttl_s)
}

/// Checks claims and the route's requirements of a token whose signature verified; on success
/// caches the verification (when `cache_entry` is given, for at most `max_ttl_s`) and publishes
/// the identity.
#[allow(clippy::too_many_arguments)]
fn admit<H: Host + ?Sized>(
    host: &H,
    w: &Worker,
    idx: usize,
    claim_map: &Map<String, Value>,
    typ: Option<&str>,
    requirements: &Requirements,
    cache_entry: Option<cache::Entry>,
    max_ttl_s: i64,
) -> Result<(), Deny> {
    let now_s = (host.now_ms() / 1000) as i64;
    let rules = &w.provider(idx).ok_or(Deny::UnknownIssuer)?.rules;
    let identity = claims::check(claim_map, typ, rules, now_s)?;
    if let Some(mut entry) = cache_entry {
        entry.valid_until_s = cache::valid_until(now_s, identity.expires_at_s, max_ttl_s);
        w.cache_put(host, &entry);
    }
    let outcome = claims::check_requirements(claim_map, &identity, requirements)
        .and_then(|()| publish(host, w, &identity, claim_map));
    if let (Some(reporter), Some(sub)) = (&w.usage, &identity.subject) {
        let label = match outcome {
            Ok(()) => "allowed",
            Err(deny) => deny.reason(),
        };
        let who = tollgate_host::usage::Who::Subject(format!("{} {sub}", identity.issuer));
        reporter.usage.count_for(who, host.now_ms(), label);
    }
    outcome
}

/// POSTs an opaque token to provider `idx`'s introspection endpoint; returns the call's token.
fn start_introspection<H: Host + ?Sized>(host: &H, w: &Worker, idx: usize, token: &str) -> Result<u32, Deny> {
    let Some(provider) = w.provider(idx) else { return Err(Deny::Malformed) };
    let Some(config) = provider.introspection.as_ref() else { return Err(Deny::Malformed) };
    w.counters.inc(host, Stat::Introspection);
    let Some(path) = w.introspection_path(idx) else {
        w.counters.inc(host, Stat::IntrospectionError);
        let name = &provider.name;
        host.log(LogLevel::Warn, &format!("jwt-auth: no introspection endpoint known yet for `{name}`"));
        return Err(Deny::IntrospectionFailed);
    };
    let authorization = config.basic_auth();
    let body = introspection::form_body(token);
    let headers = config.headers(&path, &authorization);
    host.http_call(&config.cluster, &headers, Some(body.as_bytes()), config.timeout).map_err(|_| {
        w.counters.inc(host, Stat::IntrospectionError);
        host.log(LogLevel::Error, &format!("jwt-auth: cannot call cluster `{}`", config.cluster));
        Deny::IntrospectionFailed
    })
}

/// Handles the introspection answer of a paused request: caches it (active until min(exp,
/// cache_ttl), inactive briefly) and checks claims and requirements. Any failure of the
/// endpoint refuses the request (fail closed).
fn introspection_done<H: Host + ?Sized>(
    host: &H,
    w: &Worker,
    p: &Pending,
    body_size: usize,
) -> Result<(), Deny> {
    let idx = p.provider;
    let Some(provider) = w.provider(idx) else { return Err(Deny::IntrospectionFailed) };
    let Some(config) = provider.introspection.as_ref() else { return Err(Deny::IntrospectionFailed) };
    let answer = call_answer_body(host, body_size, introspection::MAX_RESPONSE_BYTES)
        .and_then(|body| introspection::parse_answer(&body).map_err(str::to_owned));
    let hash: [u8; 32] = Sha256::digest(p.token.as_bytes()).into();
    let provider_id = u16::try_from(idx).unwrap_or(u16::MAX);
    let ttl_s = config.cache_ttl.as_secs() as i64;
    match answer {
        Err(reason) => {
            w.counters.inc(host, Stat::IntrospectionError);
            host.log(
                LogLevel::Warn,
                &format!("jwt-auth: introspection for `{}` failed: {reason}", provider.name),
            );
            Err(Deny::IntrospectionFailed)
        }
        Ok(Answer::Inactive) => {
            w.counters.inc(host, Stat::IntrospectionInactive);
            let now_s = (host.now_ms() / 1000) as i64;
            let valid_until_s = now_s.saturating_add(introspection::INACTIVE_TTL_S.min(ttl_s));
            w.cache_put(
                host,
                &cache::Entry { hash, valid_until_s, provider: provider_id, payload: Vec::new() },
            );
            Err(Deny::InactiveToken)
        }
        Ok(Answer::Active(mut claim_map)) => {
            w.counters.inc(host, Stat::IntrospectionActive);
            let audience = provider.rules.audiences.first().map(String::as_str).unwrap_or_default();
            introspection::complete_claims(&mut claim_map, &provider.rules.issuer, audience);
            let payload = serde_json::to_vec(&claim_map).map_err(|_| Deny::IntrospectionFailed)?;
            let entry = cache::Entry { hash, valid_until_s: 0, provider: provider_id, payload };
            // No JOSE header: the `typ` rule does not apply (passing the expected one skips it).
            let typ = provider.rules.typ.clone();
            admit(host, w, idx, &claim_map, typ.as_deref(), &p.requirements, Some(entry), ttl_s)
        }
    }
}

fn finish<H: Host + ?Sized>(
    host: &H,
    w: &Worker,
    outcome: Result<(), Deny>,
    request_id: &str,
    requirements: &Requirements,
) -> Action {
    match outcome {
        Ok(()) => Action::Continue,
        Err(deny) => {
            respond_denied(host, w, deny, request_id, &requirements.scopes);
            Action::Pause
        }
    }
}

/// Passes a verified identity on: headers for the upstream, filter state for later filters.
/// Anything that cannot be passed on exactly as it is refuses the request, and so does a value
/// the proxy refuses to set: a request never goes upstream with an identity that is missing,
/// empty or reads differently there.
fn publish<H: Host + ?Sized>(
    host: &H,
    w: &Worker,
    id: &Identity,
    claim_map: &Map<String, Value>,
) -> Result<(), Deny> {
    let published = claims::published(id, claim_map, &w.config.claim_headers)?;
    for (name, value) in &published.headers {
        if !host.set_request_header(name, Some(value.as_bytes())) {
            host.log(LogLevel::Warn, &format!("jwt-auth: the proxy refused the value of header `{name}`"));
            return Err(Deny::UnpublishableIdentity);
        }
    }
    for (name, value) in &published.properties {
        if !host.set_property(&[name.as_str()], value.as_bytes()) {
            host.log(LogLevel::Warn, &format!("jwt-auth: the proxy refused to set property `{name}`"));
            return Err(Deny::UnpublishableIdentity);
        }
    }
    w.counters.inc(host, Stat::Allowed);
    Ok(())
}

fn respond_denied<H: Host + ?Sized>(host: &H, w: &Worker, deny: Deny, request_id: &str, scopes: &[String]) {
    w.counters.denied(host, deny);
    host.log(
        LogLevel::Info,
        &format!("jwt-auth: denied reason={} request_id={}", deny.reason(), log_field(request_id)),
    );
    let challenge = || deny.challenge(&w.config.realm, scopes);
    tollgate_host::send_reply(host, &denial_reply(deny, request_id, challenge));
}

/// Removes the token from the request before it goes upstream (`forward_token: false`): every
/// header source present, and every query source.
fn strip_token<H: Host + ?Sized>(
    host: &H,
    w: &Worker,
    header_values: &[(String, String)],
    path: &str,
    query: &str,
) {
    let present = |name: &str| header_values.iter().any(|(n, _)| n == name);
    let header_sources = w.config.sources.iter().filter_map(|source| match source {
        Source::Header { name, .. } if present(name) => Some(name.as_str()),
        _ => None,
    });
    let query_sources = w.config.sources.iter().filter_map(|source| match source {
        Source::Query { name } => Some(name.as_str()),
        _ => None,
    });
    tollgate_host::remove_credentials(
        host,
        &credentials::removal(header_sources, query_sources, path, query),
    );
}

impl<H: Host> Context for JwtAuthHttp<H> {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        self.on_call_done(token_id, body_size);
    }

    fn on_done(&mut self) -> bool {
        self.on_gone();
        true
    }
}

impl<H: Host> HttpContext for JwtAuthHttp<H> {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.on_request()
    }
}
