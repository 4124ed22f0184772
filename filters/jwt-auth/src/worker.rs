//! Per-VM state, shared by the root context and the HTTP contexts: the compiled config, what
//! this worker knows of each provider (its compiled key set, its discovery document), stats,
//! the requests waiting for a key-set fetch (one flight per provider) and the calls the root
//! context made.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use serde_json::{Map, Value};

use tollgate_core::feed::Freshness;
use tollgate_core::jwt::Deny;
use tollgate_core::jwt::cache;
use tollgate_core::jwt::claims::Requirements;
use tollgate_core::jwt::config::{Config, ConfigError, KeySource, Provider, Remote, err};
use tollgate_core::jwt::fetch::{self, FetchOutcome, FetchState};
use tollgate_core::jwt::introspection::{self, Discovered};
use tollgate_core::jwt::jwk::Limits;
use tollgate_core::jwt::jws::{Alg, Jws};
use tollgate_core::jwt::keys::KeySet;
use tollgate_core::local::{Local, View};
use tollgate_host::shared::{CAS_RETRIES, Cas, cas_apply, cas_update};
use tollgate_host::{CallRefused, Host, LogLevel};

use crate::store::{self, Keys};

pub use tollgate_core::jwt::fetch::{Claim, FetchReason};

tollgate_host::stats! {
    /// jwt-auth's counters, under `tollgate.jwt_auth.`; with `denied.<reason>` for every [`Deny`].
    pub enum Stat {
        Allowed => "allowed",
        CacheHit => "cache_hit",
        CacheMiss => "cache_miss",
        JwksFetch => "jwks_fetch",
        JwksFetchOk => "jwks_fetch_ok",
        JwksFetchError => "jwks_fetch_error",
        JwksRefetchUnknownKid => "jwks_refetch_unknown_kid",
        JwksKeySkipped => "jwks_key_skipped",
        JwksSingleflightJoined => "jwks_singleflight_joined",
        JwksWaitersFull => "jwks_waiters_full",
        Introspection => "introspection",
        IntrospectionActive => "introspection_active",
        IntrospectionInactive => "introspection_inactive",
        IntrospectionError => "introspection_error",
        DiscoveryFetch => "discovery_fetch",
        DiscoveryFetchOk => "discovery_fetch_ok",
        DiscoveryFetchError => "discovery_fetch_error",
        UsageReportOk => "usage_report_ok",
        UsageReportError => "usage_report_error",
        UsageDropped => "usage_dropped",
    }
}

/// Every counter of the filter.
pub type Counters = tollgate_host::stats::Counters<Stat, Deny>;

/// Every counter's name, under `tollgate.jwt_auth.`.
#[cfg(test)]
pub fn stat_names() -> Vec<String> {
    Counters::names()
}

/// Most requests of one worker that wait for one provider's key set; more get 503.
pub const MAX_WAITERS: usize = 256;
/// A flight is settled by the root context's tick this long after its fetch should have
/// answered (a call that never answers leaves no request paused).
pub const FLIGHT_GRACE_MS: u64 = 2_000;

/// What this worker knows of one provider.
#[derive(Default)]
pub struct ProviderState {
    /// Its keys: inline, or the remote set as last fetched or picked up from shared data.
    set: Option<Rc<KeySet>>,
    /// When the shared record these keys came from was fetched (0: inline or none).
    fetched_at_ms: u64,
    /// What its discovery document gave (this worker fetches it once).
    discovered: Option<Discovered>,
    /// No discovery fetch before this time (ms); `u64::MAX` while one is in flight.
    discovery_next_ms: u64,
}

/// A request paused until its provider's key set is fetched: enough to finish it from another
/// context.
#[derive(Debug, Clone)]
pub struct Waiter {
    pub context_id: u32,
    pub token: String,
    pub requirements: Requirements,
    pub request_id: String,
}

/// Who fetches the key set a flight waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetcher {
    /// Request context `context_id` made call `token` (Envoy cancels it if the request goes away).
    Request { context_id: u32, token: u32 },
    /// The root context made call `token`.
    Root { token: u32 },
    /// Another worker holds the fetch lease: the result shows in shared data (see the tick).
    Elsewhere,
    /// The request that made the call went away, and its call with it: the root context fetches
    /// again on its next tick.
    Orphaned,
}

/// The requests of this worker waiting for one provider's key set.
#[derive(Debug)]
pub struct Flight {
    pub fetcher: Fetcher,
    pub waiters: Vec<Waiter>,
    /// The tick settles the flight at this time (ms) whatever happened.
    pub deadline_ms: u64,
}

pub struct Worker {
    pub config: Config,
    keys: Keys,
    pub counters: Counters,
    /// Per provider, in the config's order.
    providers: Vec<ProviderState>,
    /// Calls the root context started: token → what for.
    pub root_calls: HashMap<u32, RootCall>,
    /// Per provider: the requests waiting for its key set, if any.
    pub flights: HashMap<usize, Flight>,
    /// The verifications this worker used, claims parsed, in front of the shared cache (see
    /// [`tollgate_core::local`]; no change feed: an entry only expires).
    local: RefCell<Local<[u8; 32], Verified>>,
    /// Requests per verified subject, for the key service (`usage`).
    pub usage: Option<tollgate_host::usage::Reporter>,
}

/// A cached verification with its claims parsed once; `None` for an introspection answer
/// `active: false`.
#[derive(Debug)]
pub struct Verified {
    pub entry: cache::Entry,
    pub claims: Option<Map<String, Value>>,
}

impl Verified {
    fn of(entry: cache::Entry) -> Option<Self> {
        let claims = if entry.payload.is_empty() {
            None
        } else {
            Some(serde_json::from_slice::<Map<String, Value>>(&entry.payload).ok()?)
        };
        Some(Self { entry, claims })
    }
}

/// Most verifications a worker keeps in its own table (fewer when the shared cache has fewer
/// slots).
pub const MAX_LOCAL_SLOTS: u32 = 4096;

/// A call of the root context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootCall {
    Jwks(usize),
    Discovery(usize),
}

impl Worker {
    /// Compiles the config's inline keys; an unusable key is a config error naming its field.
    pub fn new<H: Host + ?Sized>(host: &H, config: Config, raw: &[u8]) -> Result<Self, ConfigError> {
        let mut providers = Vec::with_capacity(config.providers.len());
        for (i, p) in config.providers.iter().enumerate() {
            let set = match &p.keys {
                KeySource::Inline(jwks) => Some(Rc::new(
                    KeySet::compile(jwks).map_err(|e| err(format!("providers[{i}].jwks"), e.to_string()))?,
                )),
                KeySource::Remote(_) => None,
            };
            providers.push(ProviderState { set, ..ProviderState::default() });
        }
        let config_local_slots = config.cache_slots.min(MAX_LOCAL_SLOTS);
        let usage =
            tollgate_host::usage::Reporter::configured(host, config.usage.as_ref(), "tollgate.jwt_auth.");
        Ok(Self {
            usage,
            counters: Counters::define(host, "tollgate.jwt_auth"),
            config,
            keys: Keys::new(raw),
            providers,
            root_calls: HashMap::new(),
            flights: HashMap::new(),
            local: RefCell::new(Local::new(config_local_slots)),
        })
    }

    /// Provider `idx` of the config.
    pub fn provider(&self, idx: usize) -> Option<&Provider> {
        self.config.providers.get(idx)
    }

    fn state(&self, idx: usize) -> Option<&ProviderState> {
        self.providers.get(idx)
    }

    fn state_mut(&mut self, idx: usize) -> Option<&mut ProviderState> {
        self.providers.get_mut(idx)
    }

    /// Whether any provider's keys are fetched (the root context then ticks).
    pub fn has_remote(&self) -> bool {
        (0..self.config.providers.len()).any(|i| self.remote(i).is_some())
    }

    pub fn remote(&self, idx: usize) -> Option<&Remote> {
        match &self.config.providers.get(idx)?.keys {
            KeySource::Remote(r) => Some(r),
            KeySource::Inline(_) => None,
        }
    }

    /// The key set's path: configured, or from the discovery document once fetched.
    pub fn jwks_path(&self, idx: usize) -> Option<String> {
        let r = self.remote(idx)?;
        if !r.path.is_empty() {
            return Some(r.path.clone());
        }
        self.state(idx)?.discovered.as_ref().map(|d| d.jwks_path.clone())
    }

    /// The introspection endpoint's path: configured, or from the discovery document.
    pub fn introspection_path(&self, idx: usize) -> Option<String> {
        let i = self.config.providers.get(idx)?.introspection.as_ref()?;
        if !i.path.is_empty() {
            return Some(i.path.clone());
        }
        self.state(idx)?.discovered.as_ref().and_then(|d| d.introspection_path.clone())
    }

    /// Whether the discovery document of provider `idx` should be fetched now.
    pub fn discovery_due(&self, idx: usize, now_ms: u64) -> bool {
        self.remote(idx).is_some_and(|r| r.discovery.is_some())
            && self.state(idx).is_some_and(|s| s.discovered.is_none() && now_ms >= s.discovery_next_ms)
    }

    /// Starts the fetch of provider `idx`'s discovery document.
    pub fn dispatch_discovery<H: Host + ?Sized>(&mut self, host: &H, idx: usize) -> Option<u32> {
        let r = self.remote(idx)?;
        let d = r.discovery.as_ref()?;
        let result = get_json(host, r, &d.path);
        self.counters.inc(host, Stat::DiscoveryFetch);
        match result {
            Ok(token) => {
                if let Some(state) = self.state_mut(idx) {
                    state.discovery_next_ms = u64::MAX;
                }
                Some(token)
            }
            Err(_) => {
                let cluster = r.cluster.clone();
                self.discovery_failed(host, idx, &format!("cannot call cluster `{cluster}`"));
                None
            }
        }
    }

    /// Handles the discovery document's response.
    pub fn discovery_done<H: Host + ?Sized>(&mut self, host: &H, idx: usize, body_size: usize) {
        let Some(r) = self.remote(idx).cloned() else { return };
        let outcome = call_answer_body(host, body_size, introspection::MAX_RESPONSE_BYTES)
            .and_then(|body| introspection::parse_discovery(&body, &r.authority));
        match outcome {
            Ok(found) => {
                self.counters.inc(host, Stat::DiscoveryFetchOk);
                if let Some(state) = self.state_mut(idx) {
                    state.discovered = Some(found);
                    state.discovery_next_ms = 0;
                }
            }
            Err(reason) => self.discovery_failed(host, idx, &reason),
        }
    }

    fn discovery_failed<H: Host + ?Sized>(&mut self, host: &H, idx: usize, reason: &str) {
        self.counters.inc(host, Stat::DiscoveryFetchError);
        if let Some(state) = self.state_mut(idx) {
            state.discovery_next_ms = host.now_ms().saturating_add(fetch::RETRY_BACKOFF_MS);
        }
        let name = self.name(idx);
        host.log(LogLevel::Error, &format!("jwt-auth: OpenID discovery for `{name}` failed: {reason}"));
    }

    /// Provider `idx`'s name, for log lines and its shared-data keys.
    fn name(&self, idx: usize) -> &str {
        self.provider(idx).map_or("", |p| p.name.as_str())
    }

    /// Picks up a key set another worker (or this one) stored in shared data.
    pub fn sync<H: Host + ?Sized>(&mut self, host: &H, idx: usize) {
        let Some(remote) = self.remote(idx) else { return };
        let limits = remote.limits;
        let Some(record) = host.shared_get(&self.keys.jwks(self.name(idx))).0 else { return };
        let Some((fetched_at_ms, body)) = store::decode_key_set(&record) else { return };
        let Some(state) = self.state_mut(idx) else { return };
        if fetched_at_ms == state.fetched_at_ms {
            return;
        }
        // Only valid sets are stored, so this succeeds unless the record is corrupt.
        if let Some(set) = compile(body, limits) {
            state.set = Some(Rc::new(set));
            state.fetched_at_ms = fetched_at_ms;
        }
    }

    /// The provider's keys if they may be used now (remote ones for at most `max_stale`).
    pub fn usable(&self, idx: usize, now_ms: u64) -> Option<Rc<KeySet>> {
        let state = self.state(idx)?;
        let set = state.set.clone()?;
        match self.remote(idx) {
            Some(r) if !fetch::within_max_stale(state.fetched_at_ms, r, now_ms) => None,
            _ => Some(set),
        }
    }

    /// Verifies a token's signature with its provider's keys.
    pub fn verify<H: Host + ?Sized>(&mut self, host: &H, idx: usize, jws: &Jws) -> Result<(), Deny> {
        let now = host.now_ms();
        if self.usable(idx, now).is_none() {
            self.sync(host, idx);
        }
        let set = self.usable(idx, now).ok_or(Deny::KeysUnavailable)?;
        match set.verify(jws, self.algorithms(idx)?) {
            Err(Deny::UnknownKid) if self.remote(idx).is_some() => {
                // Another worker may have fetched the rotated set already.
                self.sync(host, idx);
                let set = self.usable(idx, now).ok_or(Deny::KeysUnavailable)?;
                set.verify(jws, self.algorithms(idx)?)
            }
            other => other,
        }
    }

    /// The algorithms provider `idx` accepts (no provider: no keys to verify with).
    fn algorithms(&self, idx: usize) -> Result<&[Alg], Deny> {
        self.provider(idx).map(|p| p.algorithms.as_slice()).ok_or(Deny::KeysUnavailable)
    }

    /// Whether a fetch is due for provider `idx` (no keys yet, or the refresh interval passed).
    pub fn refresh_due(&self, idx: usize, now_ms: u64) -> bool {
        let Some(r) = self.remote(idx) else { return false };
        if self.jwks_path(idx).is_none() {
            return false;
        }
        let Some(state) = self.state(idx) else { return false };
        fetch::refresh_due(state.set.as_ref().map(|_| state.fetched_at_ms), r, now_ms)
    }

    /// Claims the proxy-wide right to fetch provider `idx` now ([`fetch::claim`] over the
    /// shared fetch record, written back under compare-and-swap). A record that cannot be
    /// updated refuses the fetch.
    pub fn claim_fetch<H: Host + ?Sized>(&self, host: &H, idx: usize, reason: FetchReason) -> Claim {
        let Some(r) = self.remote(idx) else { return Claim::Refused };
        if self.jwks_path(idx).is_none() {
            return Claim::Refused;
        }
        let now = host.now_ms();
        let claim = cas_apply(host, &self.keys.fetch(self.name(idx)), CAS_RETRIES, None, |bytes| {
            let decision = fetch::claim(&FetchState::decode(bytes), r, reason, now);
            match decision.next {
                Some(next) => Cas::Write(next.encode(), decision.claim),
                None => Cas::Keep(decision.claim),
            }
        });
        claim.unwrap_or(Claim::Refused)
    }

    /// Whether a fetch of provider `idx`'s key set is in flight in some worker.
    pub fn fetch_in_flight<H: Host + ?Sized>(&self, host: &H, idx: usize) -> bool {
        let record = host.shared_get(&self.keys.fetch(self.name(idx))).0;
        FetchState::decode(record.as_deref()).in_flight(host.now_ms())
    }

    /// The root context's key-set call for provider `idx` in flight, if any.
    pub fn root_fetch(&self, idx: usize) -> Option<u32> {
        self.root_calls.iter().find(|(_, c)| **c == RootCall::Jwks(idx)).map(|(token, _)| *token)
    }

    /// Starts the fetch of provider `idx`'s key set (after [`Worker::claim_fetch`]).
    pub fn dispatch_fetch<H: Host + ?Sized>(&self, host: &H, idx: usize) -> Result<u32, CallRefused> {
        let Some(r) = self.remote(idx) else { return Err(CallRefused) };
        let Some(path) = self.jwks_path(idx) else { return Err(CallRefused) };
        let result = get_json(host, r, &path);
        self.counters.inc(host, Stat::JwksFetch);
        if result.is_err() {
            self.counters.inc(host, Stat::JwksFetchError);
            host.log(LogLevel::Error, &format!("jwt-auth: cannot call cluster `{}`", r.cluster));
            self.finish_fetch(host, idx, FetchOutcome::Failed);
        }
        result
    }

    /// Handles a fetch's response: a valid key set replaces the old one for every worker; on
    /// any failure the last good set stays. Keys of the set that cannot be used are left out,
    /// counted and logged (once per fetch); the others are used.
    pub fn fetch_done<H: Host + ?Sized>(&mut self, host: &H, idx: usize, body_size: usize) {
        let Some(r) = self.remote(idx).cloned() else { return };
        let outcome = call_answer_body(host, body_size, r.limits.max_bytes).and_then(|body| {
            KeySet::compile_fetched(&body, r.limits).map(|fetched| (fetched, body)).map_err(|e| e.to_string())
        });
        match outcome {
            Ok((fetched, body)) => {
                if !fetched.skipped.is_empty() {
                    let n = fetched.skipped.len();
                    self.counters.add(host, Stat::JwksKeySkipped, n as u64);
                    let list: Vec<String> = fetched.skipped.iter().map(ToString::to_string).collect();
                    let name = self.name(idx);
                    host.log(
                        LogLevel::Warn,
                        &format!(
                            "jwt-auth: JWKS for `{name}`: left out {n} unusable key(s), using the other {}: {}",
                            fetched.keys.len(),
                            list.join("; ")
                        ),
                    );
                }
                let set = fetched.keys;
                let now = host.now_ms().max(1);
                let record = store::encode_key_set(now, &body);
                if host.shared_set(&self.keys.jwks(self.name(idx)), &record, None).is_err() {
                    host.log(LogLevel::Warn, "jwt-auth: could not store the key set in shared data");
                }
                if let Some(state) = self.state_mut(idx) {
                    state.set = Some(Rc::new(set));
                    state.fetched_at_ms = now;
                }
                self.counters.inc(host, Stat::JwksFetchOk);
                self.finish_fetch(host, idx, FetchOutcome::Fetched);
            }
            Err(reason) => {
                self.counters.inc(host, Stat::JwksFetchError);
                let name = self.name(idx);
                let kept = if self.state(idx).is_some_and(|s| s.set.is_some()) {
                    "; keeping the last good key set"
                } else {
                    ""
                };
                host.log(
                    LogLevel::Warn,
                    &format!("jwt-auth: JWKS fetch for `{name}` failed: {reason}{kept}"),
                );
                self.finish_fetch(host, idx, FetchOutcome::Failed);
            }
        }
    }

    /// Releases provider `idx`'s fetch lease ([`fetch::finished`]).
    fn finish_fetch<H: Host + ?Sized>(&self, host: &H, idx: usize, outcome: FetchOutcome) {
        let Some(r) = self.remote(idx) else { return };
        let now = host.now_ms();
        cas_update(host, &self.keys.fetch(self.name(idx)), |bytes| {
            Some(fetch::finished(&FetchState::decode(bytes), r, outcome, now).encode())
        });
    }

    /// A cached verification of the token with this hash, if any.
    /// A cached verification of the token with this hash, still valid: from the worker's own
    /// table, else from shared data (then kept in the table).
    pub fn cache_get<H: Host + ?Sized>(&self, host: &H, hash: &[u8; 32]) -> Option<Rc<Verified>> {
        if self.config.cache_slots == 0 {
            return None;
        }
        let now_s = (host.now_ms() / 1000) as i64;
        let mut local = self.local.borrow_mut();
        if let Some(hit) = local.get(hash, View::default()) {
            if now_s < hit.value.entry.valid_until_s {
                return Some(hit.value);
            }
            local.remove(hash);
        }
        let entry = store::cache_get(host, &self.keys, self.config.cache_slots, hash)?;
        let verified = Rc::new(Verified::of(entry)?);
        local.insert(*hash, Rc::clone(&verified), Some((View::default(), Freshness::default())));
        Some(verified)
    }

    /// Caches a verification, in shared data and in the worker's own table.
    pub fn cache_put<H: Host + ?Sized>(&self, host: &H, entry: &cache::Entry) {
        if self.config.cache_slots == 0 {
            return;
        }
        store::cache_put(host, &self.keys, self.config.cache_slots, entry);
        if let Some(verified) = Verified::of(entry.clone()) {
            let checked = Some((View::default(), Freshness::default()));
            self.local.borrow_mut().insert(entry.hash, Rc::new(verified), checked);
        }
    }
}

/// Compiles a stored key set (its unusable keys were reported by the worker that fetched it).
fn compile(body: &[u8], limits: Limits) -> Option<KeySet> {
    KeySet::compile_fetched(body, limits).ok().map(|fetched| fetched.keys)
}

/// GETs the JSON document at `path` from `remote`'s cluster; returns the call's token.
fn get_json<H: Host + ?Sized>(host: &H, remote: &Remote, path: &str) -> Result<u32, CallRefused> {
    let headers = [
        (":method", "GET"),
        (":path", path),
        (":authority", remote.authority.as_str()),
        ("accept", "application/json"),
    ];
    host.http_call(&remote.cluster, &headers, None, remote.timeout)
}

/// The body of the HTTP call answer being handled when its status is 200 and it is at most `max_bytes`
/// long; otherwise why not, for the log.
pub fn call_answer_body<H: Host + ?Sized>(
    host: &H,
    body_size: usize,
    max_bytes: usize,
) -> Result<Vec<u8>, String> {
    let status = host.http_call_response_header(":status").unwrap_or_default();
    if status != "200" {
        let status = if status.is_empty() { "none (timeout or reset)" } else { &status };
        return Err(format!("status {status}"));
    }
    if body_size > max_bytes {
        return Err(format!("body of {body_size} bytes exceeds the limit of {max_bytes}"));
    }
    Ok(host.http_call_response_body(body_size).unwrap_or_default())
}
