//! The per-request context: find the token, consult the cache, verify (or introspect an opaque
//! token), decide.

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tollgate_core::error::ErrorBody;
use tollgate_core::jwt::claims::{self, Identity, Requirements};
use tollgate_core::jwt::config::Source;
use tollgate_core::jwt::introspection::{self, Answer};
use tollgate_core::jwt::{self as jwt, Deny, cache, jws};
use tollgate_core::route::{self, RequestFacts};
use tollgate_host::{Host, LogLevel, attributes};

use crate::worker::{FetchReason, Shared, Worker, call_answer_body};

/// A request paused while its provider's key set is fetched, or its opaque token introspected.
struct Pending {
    token: String,
    provider: usize,
    requirements: Requirements,
    request_id: String,
    /// The introspection call's token, when that is what the request waits on.
    introspection: Option<u32>,
}

pub struct JwtAuthHttp<H: Host> {
    host: Rc<H>,
    worker: Shared,
    #[allow(dead_code)]
    context_id: u32,
    pending: Option<Pending>,
}

enum Step {
    Allow,
    Deny(Deny),
    /// A key-set fetch was started for this provider; wait for it.
    Wait,
}

impl<H: Host> JwtAuthHttp<H> {
    pub fn new(host: Rc<H>, worker: Shared, context_id: u32) -> Self {
        Self { host, worker, context_id, pending: None }
    }

    fn on_request(&mut self) -> Action {
        let host = &*self.host;
        let worker = self.worker.clone();
        let mut w = worker.borrow_mut();
        // One host call for every field line: token sources (a repeated header or a second
        // `Cookie` line is seen too), pseudo-headers, and the identity headers to remove.
        let headers: Vec<(String, String)> =
            host.request_headers().into_iter().map(|(n, v)| (n, tollgate_host::lossy(v))).collect();
        let get = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        // Identity and mapped-claim headers are ours to set: never pass on a client's copies.
        let ours = jwt::IDENTITY_HEADERS
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
        if let Some(entry) = w.cache_get(host, &hash)
            && providers.contains(&usize::from(entry.provider))
        {
            w.counters.inc(host, "cache_hit");
            let idx = usize::from(entry.provider);
            if entry.payload.is_empty() {
                // An introspection answer `active: false`.
                return finish(host, &w, Err(Deny::InactiveToken), &request_id, &requirements);
            }
            let outcome = serde_json::from_slice::<Map<String, Value>>(&entry.payload)
                .map_err(|_| Deny::Malformed)
                .and_then(|c| {
                    // `typ` was checked when the token was verified; the header is not cached.
                    let typ = w.config.providers[idx].rules.typ.clone();
                    admit(host, &w, idx, &c, typ.as_deref(), &requirements, None, 0)
                });
            return finish(host, &w, outcome, &request_id, &requirements);
        }
        w.counters.inc(host, "cache_miss");

        if !introspection::looks_like_jwt(&token) {
            let introspecting =
                providers.iter().copied().find(|i| w.config.providers[*i].introspection.is_some());
            let Some(idx) = introspecting else {
                return finish(host, &w, Err(Deny::Malformed), &request_id, &requirements);
            };
            if token.len() > w.config.max_token_size {
                return finish(host, &w, Err(Deny::TokenTooLarge), &request_id, &requirements);
            }
            return match start_introspection(host, &w, idx, &token) {
                Ok(call) => {
                    self.pending = Some(Pending {
                        token,
                        provider: idx,
                        requirements,
                        request_id,
                        introspection: Some(call),
                    });
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
        match verify_and_admit(host, &mut w, idx, &parsed, &requirements, hash, true) {
            Step::Allow => Action::Continue,
            Step::Deny(deny) => finish(host, &w, Err(deny), &request_id, &requirements),
            Step::Wait => {
                self.pending =
                    Some(Pending { token, provider: idx, requirements, request_id, introspection: None });
                Action::Pause
            }
        }
    }

    /// A call this request started has answered.
    fn on_call_done(&mut self, call: u32, body_size: usize) {
        let Some(p) = self.pending.take() else { return };
        let host = &*self.host;
        match p.introspection {
            Some(expected) if expected != call => {
                // Not the call this request waits on: keep waiting (its own answer, or its
                // timeout, still comes).
                host.log(LogLevel::Debug, &format!("jwt-auth: response to unknown call {call}"));
                self.pending = Some(p);
            }
            Some(_) => {
                let worker = self.worker.clone();
                let w = worker.borrow();
                match introspection_done(host, &w, &p, body_size) {
                    Ok(()) => {
                        host.resume_request();
                    }
                    Err(deny) => respond_denied(host, &w, deny, &p.request_id, &p.requirements.scopes),
                }
            }
            None => self.on_fetch_done(p, body_size),
        }
    }

    /// The key-set fetch this request started has answered.
    fn on_fetch_done(&mut self, p: Pending, body_size: usize) {
        let host = &*self.host;
        let worker = self.worker.clone();
        let mut w = worker.borrow_mut();
        w.fetch_done(host, p.provider, body_size);
        let step = match jws::parse(&p.token, w.config.max_token_size) {
            Ok(parsed) => {
                let hash: [u8; 32] = Sha256::digest(p.token.as_bytes()).into();
                verify_and_admit(host, &mut w, p.provider, &parsed, &p.requirements, hash, false)
            }
            Err(deny) => Step::Deny(deny),
        };
        match step {
            Step::Allow => {
                host.resume_request();
            }
            Step::Deny(deny) => respond_denied(host, &w, deny, &p.request_id, &p.requirements.scopes),
            Step::Wait => respond_denied(host, &w, Deny::KeysUnavailable, &p.request_id, &[]),
        }
    }
}

fn find_provider(w: &Worker, allowed: &[usize], jws: &jws::Jws) -> Result<usize, Deny> {
    let Some(Value::String(iss)) = jws.claims.get("iss") else {
        return Err(Deny::UnknownIssuer);
    };
    allowed.iter().copied().find(|i| w.config.providers[*i].rules.issuer == *iss).ok_or(Deny::UnknownIssuer)
}

/// Verifies the signature (starting a key-set fetch when the keys are missing or do not know
/// the token's `kid`, if `may_fetch`), then checks claims and requirements.
fn verify_and_admit<H: Host + ?Sized>(
    host: &H,
    w: &mut Worker,
    idx: usize,
    parsed: &jws::Jws,
    requirements: &Requirements,
    hash: [u8; 32],
    may_fetch: bool,
) -> Step {
    match w.verify(host, idx, parsed) {
        Ok(()) => {}
        Err(deny @ (Deny::UnknownKid | Deny::KeysUnavailable)) if may_fetch && w.remote(idx).is_some() => {
            let reason =
                if deny == Deny::UnknownKid { FetchReason::UnknownKid } else { FetchReason::Refresh };
            if w.claim_fetch(host, idx, reason) {
                if deny == Deny::UnknownKid {
                    w.counters.inc(host, "jwks_refetch_unknown_kid");
                }
                if w.dispatch_fetch(host, idx).is_ok() {
                    return Step::Wait;
                }
            }
            return Step::Deny(deny);
        }
        Err(deny) => return Step::Deny(deny),
    }
    let cache_entry = Some(cache::Entry {
        hash,
        valid_until_s: 0, // set once the claims are known
        provider: u16::try_from(idx).unwrap_or(u16::MAX),
        payload: parsed.payload.clone(),
    });
    let max_ttl_s = w.config.cache_max_ttl.as_secs() as i64;
    match admit(host, w, idx, &parsed.claims, parsed.typ.as_deref(), requirements, cache_entry, max_ttl_s) {
        Ok(()) => Step::Allow,
        Err(deny) => Step::Deny(deny),
    }
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
    let identity = claims::check(claim_map, typ, &w.config.providers[idx].rules, now_s)?;
    if let Some(mut entry) = cache_entry {
        entry.valid_until_s = cache::valid_until(now_s, identity.expires_at_s, max_ttl_s);
        w.cache_put(host, &entry);
    }
    claims::check_requirements(claim_map, &identity, requirements)?;
    publish(host, w, &identity, claim_map)
}

/// POSTs an opaque token to provider `idx`'s introspection endpoint; returns the call's token.
fn start_introspection<H: Host + ?Sized>(host: &H, w: &Worker, idx: usize, token: &str) -> Result<u32, Deny> {
    let Some(config) = w.config.providers[idx].introspection.as_ref() else { return Err(Deny::Malformed) };
    w.counters.inc(host, "introspection");
    let Some(path) = w.introspection_path(idx) else {
        w.counters.inc(host, "introspection_error");
        let name = &w.config.providers[idx].name;
        host.log(LogLevel::Warn, &format!("jwt-auth: no introspection endpoint known yet for `{name}`"));
        return Err(Deny::IntrospectionFailed);
    };
    let authorization = config.basic_auth();
    let body = introspection::form_body(token);
    let headers = config.headers(&path, &authorization);
    host.http_call(&config.cluster, &headers, Some(body.as_bytes()), config.timeout).map_err(|_| {
        w.counters.inc(host, "introspection_error");
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
    let provider = &w.config.providers[idx];
    let Some(config) = provider.introspection.as_ref() else { return Err(Deny::IntrospectionFailed) };
    let answer = call_answer_body(host, body_size, introspection::MAX_RESPONSE_BYTES)
        .and_then(|body| introspection::parse_answer(&body).map_err(str::to_owned));
    let hash: [u8; 32] = Sha256::digest(p.token.as_bytes()).into();
    let provider_id = u16::try_from(idx).unwrap_or(u16::MAX);
    let ttl_s = config.cache_ttl.as_secs() as i64;
    match answer {
        Err(reason) => {
            w.counters.inc(host, "introspection_error");
            host.log(
                LogLevel::Warn,
                &format!("jwt-auth: introspection for `{}` failed: {reason}", provider.name),
            );
            Err(Deny::IntrospectionFailed)
        }
        Ok(Answer::Inactive) => {
            w.counters.inc(host, "introspection_inactive");
            let now_s = (host.now_ms() / 1000) as i64;
            let valid_until_s = now_s.saturating_add(introspection::INACTIVE_TTL_S.min(ttl_s));
            w.cache_put(
                host,
                &cache::Entry { hash, valid_until_s, provider: provider_id, payload: Vec::new() },
            );
            Err(Deny::InactiveToken)
        }
        Ok(Answer::Active(mut claim_map)) => {
            w.counters.inc(host, "introspection_active");
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
    w.counters.inc(host, "allowed");
    Ok(())
}

fn respond_denied<H: Host + ?Sized>(host: &H, w: &Worker, deny: Deny, request_id: &str, scopes: &[String]) {
    w.counters.inc(host, &format!("denied.{}", deny.reason()));
    host.log(LogLevel::Info, &format!("jwt-auth: denied reason={} request_id={request_id}", deny.reason()));
    let body = ErrorBody { error: deny.code(), message: deny.message(), request_id }.to_json();
    let challenge = deny.challenge(&w.config.realm, scopes);
    let mut headers = vec![("content-type", "application/json")];
    if deny.status() != 503 {
        headers.push(("www-authenticate", challenge.as_str()));
    } else {
        headers.push(("retry-after", "1"));
    }
    host.send_response(deny.status(), &headers, &body);
}

/// Removes the token from the request before it goes upstream (`forward_token: false`).
fn strip_token<H: Host + ?Sized>(
    host: &H,
    w: &Worker,
    header_values: &[(String, String)],
    path: &str,
    query: &str,
) {
    let mut new_query = query.to_owned();
    for source in &w.config.sources {
        match source {
            Source::Header { name, .. } if header_values.iter().any(|(n, _)| n == name) => {
                host.set_request_header(name, None);
            }
            Source::Query { name } => new_query = route::remove_query_param(&new_query, name),
            _ => {}
        }
    }
    if new_query != query {
        let new_path = if new_query.is_empty() { path.to_owned() } else { format!("{path}?{new_query}") };
        host.set_request_header(":path", Some(new_path.as_bytes()));
    }
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
}

impl<H: Host> HttpContext for JwtAuthHttp<H> {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.on_request()
    }
}
