//! State one worker's root context shares with its HTTP contexts: the compiled config, the
//! compiled key sets, stats, the key-set records in shared data, and the requests waiting for a
//! key-set fetch (one flight per provider).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use sha2::{Digest, Sha256};
use tollgate_core::jwt::claims::Requirements;
use tollgate_core::jwt::config::{Config, ConfigError, KeySource, Remote, err};
use tollgate_core::jwt::introspection::{self, Discovered};
use tollgate_core::jwt::jwk::Limits;
use tollgate_core::jwt::jws::Jws;
use tollgate_core::jwt::keys::KeySet;
use tollgate_core::jwt::{Deny, cache};
use tollgate_host::{CallRefused, Counters, Host, LogLevel, SharedError};

/// Stat names, under `tollgate.jwt_auth.`.
pub fn stat_names() -> Vec<&'static str> {
    let mut names = vec![
        "allowed",
        "cache_hit",
        "cache_miss",
        "jwks_fetch",
        "jwks_fetch_ok",
        "jwks_fetch_error",
        "jwks_refetch_unknown_kid",
        "jwks_key_skipped",
        "jwks_singleflight_joined",
        "jwks_waiters_full",
        "introspection",
        "introspection_active",
        "introspection_inactive",
        "introspection_error",
        "discovery_fetch",
        "discovery_fetch_ok",
        "discovery_fetch_error",
    ];
    names.extend(DENIED.iter().copied());
    names
}

const DENIED: [&str; 28] = [
    "denied.missing_token",
    "denied.multiple_tokens",
    "denied.token_too_large",
    "denied.malformed",
    "denied.alg_none",
    "denied.unsupported_alg",
    "denied.alg_not_allowed",
    "denied.crit_header",
    "denied.embedded_key",
    "denied.unknown_issuer",
    "denied.unknown_kid",
    "denied.no_matching_key",
    "denied.bad_signature",
    "denied.missing_exp",
    "denied.expired",
    "denied.not_yet_valid",
    "denied.iat_in_future",
    "denied.lifetime_too_long",
    "denied.wrong_audience",
    "denied.wrong_typ",
    "denied.missing_subject",
    "denied.insufficient_scope",
    "denied.claim_mismatch",
    "denied.keys_unavailable",
    "denied.inactive_token",
    "denied.introspection_unavailable",
    "denied.bad_path",
    "denied.unpublishable_identity",
];

/// Retries of a compare-and-swap loop.
const CAS_RETRIES: usize = 8;
/// Wait after a failed fetch before the next one (bounded by the refresh interval).
const RETRY_BACKOFF_MS: u64 = 5_000;
/// A fetch lease lasts the fetch's timeout and this much more.
const LEASE_MARGIN_MS: u64 = 1_000;
/// Most requests of one worker that wait for one provider's key set; more get 503.
pub const MAX_WAITERS: usize = 256;
/// A flight is settled by the root context's tick this long after its fetch should have
/// answered (a call that never answers leaves no request paused).
pub const FLIGHT_GRACE_MS: u64 = 2_000;

/// One provider's keys as this worker knows them.
#[derive(Default)]
pub struct ProviderKeys {
    pub set: Option<Rc<KeySet>>,
    /// When the shared record these keys came from was fetched (0: inline or none).
    pub fetched_at_ms: u64,
}

/// Why a fetch is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchReason {
    /// Periodic refresh, or no keys yet.
    Refresh,
    /// A token named a `kid` the key set does not have.
    UnknownKid,
}

/// What [`Worker::claim_fetch`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This worker may fetch now (it holds the proxy-wide lease).
    Granted,
    /// A fetch is in flight (in some worker) until at most this time (ms).
    InFlight(u64),
    /// No fetch now: backing off after a failure, or an unknown-`kid` fetch within the cooldown.
    Refused,
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
    prefix: String,
    pub counters: Counters,
    pub keys: Vec<ProviderKeys>,
    /// Calls the root context started: token → what for.
    pub root_calls: HashMap<u32, RootCall>,
    /// Per provider: the requests waiting for its key set, if any.
    pub flights: HashMap<usize, Flight>,
    /// Per provider: what its discovery document gave (this worker fetches it once).
    pub discovered: Vec<Option<Discovered>>,
    /// Per provider: no discovery fetch before this time (ms); `u64::MAX` while one is in flight.
    discovery_next_ms: Vec<u64>,
}

/// A call of the root context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootCall {
    Jwks(usize),
    Discovery(usize),
}

pub type Shared = Rc<RefCell<Worker>>;

impl Worker {
    /// Compiles the config's inline keys; an unusable key is a config error naming its field.
    pub fn new<H: Host + ?Sized>(host: &H, config: Config, raw: &[u8]) -> Result<Self, ConfigError> {
        let mut keys = Vec::with_capacity(config.providers.len());
        for (i, p) in config.providers.iter().enumerate() {
            keys.push(match &p.keys {
                KeySource::Inline(jwks) => ProviderKeys {
                    set: Some(Rc::new(
                        KeySet::compile(jwks)
                            .map_err(|e| err(format!("providers[{i}].jwks"), e.to_string()))?,
                    )),
                    fetched_at_ms: 0,
                },
                KeySource::Remote(_) => ProviderKeys::default(),
            });
        }
        // Shared data is per proxy: scope it by configuration so two jwt-auth filters with
        // different providers never read each other's records.
        let digest = Sha256::digest(raw);
        let prefix = format!("tollgate.jwt_auth.{}.", hex::encode(&digest[..6]));
        Ok(Self {
            counters: Counters::define(host, "tollgate.jwt_auth", &stat_names()),
            config,
            prefix,
            discovered: vec![None; keys.len()],
            discovery_next_ms: vec![0; keys.len()],
            keys,
            root_calls: HashMap::new(),
            flights: HashMap::new(),
        })
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
        self.discovered.get(idx)?.as_ref().map(|d| d.jwks_path.clone())
    }

    /// The introspection endpoint's path: configured, or from the discovery document.
    pub fn introspection_path(&self, idx: usize) -> Option<String> {
        let i = self.config.providers.get(idx)?.introspection.as_ref()?;
        if !i.path.is_empty() {
            return Some(i.path.clone());
        }
        self.discovered.get(idx)?.as_ref().and_then(|d| d.introspection_path.clone())
    }

    /// Whether the discovery document of provider `idx` should be fetched now.
    pub fn discovery_due(&self, idx: usize, now_ms: u64) -> bool {
        self.remote(idx).is_some_and(|r| r.discovery.is_some())
            && self.discovered.get(idx).is_some_and(Option::is_none)
            && self.discovery_next_ms.get(idx).is_some_and(|t| now_ms >= *t)
    }

    /// Starts the fetch of provider `idx`'s discovery document.
    pub fn dispatch_discovery<H: Host + ?Sized>(&mut self, host: &H, idx: usize) -> Option<u32> {
        let r = self.remote(idx)?;
        let d = r.discovery.as_ref()?;
        let result = get_json(host, r, &d.path);
        self.counters.inc(host, "discovery_fetch");
        match result {
            Ok(token) => {
                self.discovery_next_ms[idx] = u64::MAX;
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
                self.counters.inc(host, "discovery_fetch_ok");
                self.discovered[idx] = Some(found);
                self.discovery_next_ms[idx] = 0;
            }
            Err(reason) => self.discovery_failed(host, idx, &reason),
        }
    }

    fn discovery_failed<H: Host + ?Sized>(&mut self, host: &H, idx: usize, reason: &str) {
        self.counters.inc(host, "discovery_fetch_error");
        self.discovery_next_ms[idx] = host.now_ms().saturating_add(RETRY_BACKOFF_MS);
        let name = &self.config.providers[idx].name;
        host.log(LogLevel::Error, &format!("jwt-auth: OpenID discovery for `{name}` failed: {reason}"));
    }

    fn jwks_key(&self, idx: usize) -> String {
        format!("{}jwks.{}", self.prefix, self.config.providers[idx].name)
    }

    fn fetch_key(&self, idx: usize) -> String {
        format!("{}fetch.{}", self.prefix, self.config.providers[idx].name)
    }

    fn cache_key(&self, slot: u32) -> String {
        format!("{}c.{slot}", self.prefix)
    }

    /// Picks up a key set another worker (or this one) stored in shared data.
    pub fn sync<H: Host + ?Sized>(&mut self, host: &H, idx: usize) {
        let Some(remote) = self.remote(idx) else { return };
        let limits = remote.limits;
        let Some(bytes) = host.shared_get(&self.jwks_key(idx)).0 else { return };
        let Some((stamp, body)) = bytes.split_first_chunk::<8>() else { return };
        let fetched_at_ms = u64::from_le_bytes(*stamp);
        if fetched_at_ms == self.keys[idx].fetched_at_ms {
            return;
        }
        // Only valid sets are stored, so this succeeds unless the record is corrupt.
        if let Some(set) = compile(body, limits) {
            self.keys[idx] = ProviderKeys { set: Some(Rc::new(set)), fetched_at_ms };
        }
    }

    /// The provider's keys if they may be used now (remote ones for at most `max_stale`).
    pub fn usable(&self, idx: usize, now_ms: u64) -> Option<Rc<KeySet>> {
        let keys = self.keys.get(idx)?;
        let set = keys.set.clone()?;
        match self.remote(idx) {
            Some(r) if now_ms.saturating_sub(keys.fetched_at_ms) > r.max_stale.as_millis() as u64 => None,
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
        let algorithms = &self.config.providers[idx].algorithms;
        match set.verify(jws, algorithms) {
            Err(Deny::UnknownKid) if self.remote(idx).is_some() => {
                // Another worker may have fetched the rotated set already.
                self.sync(host, idx);
                let set = self.usable(idx, now).ok_or(Deny::KeysUnavailable)?;
                set.verify(jws, &self.config.providers[idx].algorithms)
            }
            other => other,
        }
    }

    /// Whether a fetch is due for provider `idx` (no keys yet, or the refresh interval passed).
    pub fn refresh_due(&self, idx: usize, now_ms: u64) -> bool {
        let Some(r) = self.remote(idx) else { return false };
        if self.jwks_path(idx).is_none() {
            return false;
        }
        let keys = &self.keys[idx];
        keys.set.is_none()
            || now_ms >= keys.fetched_at_ms.saturating_add(r.refresh_interval.as_millis() as u64)
    }

    /// Claims the proxy-wide right to fetch provider `idx` now. One fetch at a time across all
    /// workers (a lease), after a failure not before a back-off, and unknown-`kid` fetches not
    /// more often than the cooldown.
    pub fn claim_fetch<H: Host + ?Sized>(&self, host: &H, idx: usize, reason: FetchReason) -> Claim {
        let Some(r) = self.remote(idx) else { return Claim::Refused };
        if self.jwks_path(idx).is_none() {
            return Claim::Refused;
        }
        let now = host.now_ms();
        let key = self.fetch_key(idx);
        for _ in 0..CAS_RETRIES {
            let (bytes, cas) = host.shared_get(&key);
            let lease = FetchLease::decode(bytes.as_deref());
            if lease.in_flight_until > now {
                return Claim::InFlight(lease.in_flight_until);
            }
            if lease.not_before > now {
                return Claim::Refused;
            }
            if reason == FetchReason::UnknownKid
                && now < lease.last_start.saturating_add(r.refetch_cooldown.as_millis() as u64)
            {
                return Claim::Refused;
            }
            let until = now + r.timeout.as_millis() as u64 + LEASE_MARGIN_MS;
            let claimed = FetchLease { in_flight_until: until, not_before: 0, last_start: now };
            match host.shared_set(&key, &claimed.encode(), cas) {
                Ok(()) => return Claim::Granted,
                Err(SharedError::CasMismatch) => continue,
                Err(SharedError::Failed) => return Claim::Refused,
            }
        }
        Claim::Refused
    }

    /// Whether a fetch of provider `idx`'s key set is in flight in some worker.
    pub fn fetch_in_flight<H: Host + ?Sized>(&self, host: &H, idx: usize) -> bool {
        let lease = FetchLease::decode(host.shared_get(&self.fetch_key(idx)).0.as_deref());
        lease.in_flight_until > host.now_ms()
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
        self.counters.inc(host, "jwks_fetch");
        if result.is_err() {
            self.counters.inc(host, "jwks_fetch_error");
            host.log(LogLevel::Error, &format!("jwt-auth: cannot call cluster `{}`", r.cluster));
            self.finish_fetch(host, idx, false);
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
                    self.counters.add(host, "jwks_key_skipped", n as u64);
                    let list: Vec<String> = fetched.skipped.iter().map(ToString::to_string).collect();
                    let name = &self.config.providers[idx].name;
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
                let mut record = now.to_le_bytes().to_vec();
                record.extend_from_slice(&body);
                if host.shared_set(&self.jwks_key(idx), &record, None).is_err() {
                    host.log(LogLevel::Warn, "jwt-auth: could not store the key set in shared data");
                }
                self.keys[idx] = ProviderKeys { set: Some(Rc::new(set)), fetched_at_ms: now };
                self.counters.inc(host, "jwks_fetch_ok");
                self.finish_fetch(host, idx, true);
            }
            Err(reason) => {
                self.counters.inc(host, "jwks_fetch_error");
                let name = &self.config.providers[idx].name;
                let kept = if self.keys[idx].set.is_some() { "; keeping the last good key set" } else { "" };
                host.log(
                    LogLevel::Warn,
                    &format!("jwt-auth: JWKS fetch for `{name}` failed: {reason}{kept}"),
                );
                self.finish_fetch(host, idx, false);
            }
        }
    }

    fn finish_fetch<H: Host + ?Sized>(&self, host: &H, idx: usize, ok: bool) {
        let Some(r) = self.remote(idx) else { return };
        let now = host.now_ms();
        let key = self.fetch_key(idx);
        let backoff = RETRY_BACKOFF_MS.min(r.refresh_interval.as_millis() as u64);
        for _ in 0..CAS_RETRIES {
            let (bytes, cas) = host.shared_get(&key);
            let last_start = FetchLease::decode(bytes.as_deref()).last_start;
            let not_before = if ok { 0 } else { now + backoff };
            let done = FetchLease { in_flight_until: 0, not_before, last_start };
            match host.shared_set(&key, &done.encode(), cas) {
                Err(SharedError::CasMismatch) => continue,
                _ => return,
            }
        }
    }

    /// A cached verification of the token with this hash, if any.
    pub fn cache_get<H: Host + ?Sized>(&self, host: &H, hash: &[u8; 32]) -> Option<cache::Entry> {
        if self.config.cache_slots == 0 {
            return None;
        }
        let slot = cache::slot(hash, self.config.cache_slots);
        let bytes = host.shared_get(&self.cache_key(slot)).0?;
        cache::Entry::lookup(&bytes, hash, (host.now_ms() / 1000) as i64)
    }

    pub fn cache_put<H: Host + ?Sized>(&self, host: &H, entry: &cache::Entry) {
        if self.config.cache_slots == 0 {
            return;
        }
        let slot = cache::slot(&entry.hash, self.config.cache_slots);
        // Last writer wins: the hash in the entry tells tokens sharing a slot apart.
        let _ = host.shared_set(&self.cache_key(slot), &entry.encode(), None);
    }
}

/// Compiles a stored key set (its unusable keys were reported by the worker that fetched it).
fn compile(body: &[u8], limits: Limits) -> Option<KeySet> {
    KeySet::compile_fetched(body, limits).ok().map(|fetched| fetched.keys)
}

/// The proxy-wide fetch record of one provider, in shared data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct FetchLease {
    /// A fetch is in flight until this time (ms): others wait for it rather than fetch.
    in_flight_until: u64,
    /// After a failed fetch, none before this time (ms).
    not_before: u64,
    /// When the last fetch started (ms), for the unknown-`kid` cooldown.
    last_start: u64,
}

impl FetchLease {
    fn decode(bytes: Option<&[u8]>) -> Self {
        let Some(b) = bytes.filter(|b| b.len() == 24) else { return Self::default() };
        let get =
            |i: usize| b.get(i * 8..i * 8 + 8).and_then(|s| s.try_into().ok()).map_or(0, u64::from_le_bytes);
        Self { in_flight_until: get(0), not_before: get(1), last_start: get(2) }
    }

    fn encode(&self) -> Vec<u8> {
        [self.in_flight_until, self.not_before, self.last_start]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect()
    }
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
