//! State one worker's root context shares with its HTTP contexts: the compiled config, stats,
//! the single-flight table of key lookups in progress and the background refreshes of stale
//! answers.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use prost::Message;
use tollgate_core::key_auth as ka;
use tollgate_core::key_auth::cache::{Entry, KeyState, Limit};
use tollgate_core::key_auth::config::Config;
use tollgate_host::{Counters, Host, feed};
use tollgate_proto::v1;

use crate::store::Keys;

/// Stat names, under `tollgate.key_auth.`.
pub const STATS: &[&str] = &[
    "allowed",
    "denied.missing_key",
    "denied.multiple_keys",
    "denied.malformed_key",
    "denied.unknown_key",
    "denied.revoked_key",
    "denied.expired_key",
    "denied.insufficient_scope",
    "denied.key_service_unavailable",
    "denied.bad_path",
    "cache_hit",
    "cache_miss",
    "cache_stale_served",
    "cache_refresh_started",
    "cache_refresh_failed",
    "cache_refreshed",
    "singleflight_joined",
    "callout_error",
    "failure_mode_allowed",
    "feed_poll",
    "feed_error",
    "feed_invalidations",
    "feed_resets",
];

/// Most refreshes of stale answers a worker keeps track of (queued, in flight or recently
/// failed). Past it, a stale answer is still served, and its refresh is asked for by a later
/// request once there is room.
pub const MAX_REFRESHES: usize = 256;

/// How long a failed refresh is remembered: meanwhile the stale answer is served without
/// asking the key service again.
pub const REFRESH_RETRY: Duration = Duration::from_secs(5);

pub const SERVICE: &str = tollgate_proto::KEY_SERVICE;

/// A request waiting for a key lookup: enough to finish it from another context.
#[derive(Debug, Clone)]
pub struct Waiter {
    pub context_id: u32,
    pub required_scopes: Vec<String>,
    pub request_id: String,
}

/// One lookup in progress for one key hash.
#[derive(Debug)]
pub struct Flight {
    /// The context whose call is in progress; `None` once it went away, or when its answer
    /// could not be trusted (the root context then makes the call again on its next tick).
    pub leader: Option<u32>,
    pub token: Option<u32>,
    pub waiters: Vec<Waiter>,
    /// The change feed's epoch when the call was made, stamped into the answer.
    pub epoch: u64,
}

/// A background refresh of a stale answer (see [`Worker::want_refresh`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    /// Asked for by a request; the root context makes the call on its next tick.
    Queued,
    /// The root context's call is out; forgotten after `until_ms` should its answer never come.
    InFlight { until_ms: u64 },
    /// The call failed; not asked for again before `until_ms`.
    Failed { until_ms: u64 },
}

pub struct Worker {
    pub config: Config,
    pub keys: Keys,
    pub counters: Counters,
    pub flights: HashMap<[u8; 32], Flight>,
    /// Stale answers being refreshed in the background, by key hash (at most
    /// [`MAX_REFRESHES`]).
    pub refreshes: HashMap<[u8; 32], Refresh>,
    /// Calls the root context made: token → what it is for.
    pub root_calls: HashMap<u32, RootCall>,
    pub feed: feed::Consumer,
}

/// A call the root context made. Lookups carry the feed epoch at the time of the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootCall {
    /// The lookup of a flight whose leading request went away.
    Verify {
        hash: [u8; 32],
        epoch: u64,
    },
    /// A background refresh of a stale answer.
    Refresh {
        hash: [u8; 32],
        epoch: u64,
    },
    Feed,
}

impl Worker {
    pub fn new<H: Host + ?Sized>(host: &H, config: Config) -> Self {
        let keys = Keys::new(&config);
        Self {
            feed: feed::Consumer::new("key-auth", keys.prefix()),
            keys,
            counters: Counters::define(host, "tollgate.key_auth", STATS),
            config,
            flights: HashMap::new(),
            refreshes: HashMap::new(),
            root_calls: HashMap::new(),
        }
    }

    /// Asks for a background refresh of `hash`'s stale answer, which the request serves at
    /// once: the root context makes the call on its next tick (a call a request context made
    /// would be cancelled when the request ends). Nothing is asked while a refresh is queued
    /// or in flight, nor for [`REFRESH_RETRY`] after one failed.
    pub fn want_refresh(&mut self, hash: [u8; 32], now_ms: u64) {
        let room = self.refreshes.len() < MAX_REFRESHES;
        match self.refreshes.get(&hash) {
            Some(Refresh::Queued) => {}
            Some(Refresh::InFlight { until_ms } | Refresh::Failed { until_ms }) if *until_ms > now_ms => {}
            Some(_) => {
                self.refreshes.insert(hash, Refresh::Queued);
            }
            None if room => {
                self.refreshes.insert(hash, Refresh::Queued);
            }
            None => {}
        }
    }

    pub fn feed_target(&self) -> feed::Target<'_> {
        feed::Target {
            cluster: &self.config.cluster,
            token: self.config.token.expose(),
            timeout: self.config.timeout,
            interval: self.config.poll_interval,
        }
    }

    pub fn metadata(&self) -> Vec<(&'static str, Vec<u8>)> {
        vec![("authorization", format!("Bearer {}", self.config.token.expose()).into_bytes())]
    }

    /// Starts a VerifyKey call for `hash`.
    pub fn dispatch_verify<H: Host + ?Sized>(
        &self,
        host: &H,
        hash: &[u8; 32],
    ) -> Result<u32, tollgate_host::CallRefused> {
        let message = v1::VerifyKeyRequest { key_hash: hash.to_vec() }.encode_to_vec();
        let metadata = self.metadata();
        let metadata: Vec<(&str, &[u8])> = metadata.iter().map(|(k, v)| (*k, v.as_slice())).collect();
        host.grpc_call(&self.config.cluster, SERVICE, "VerifyKey", &metadata, &message, self.config.timeout)
    }
}

pub type Shared = Rc<std::cell::RefCell<Worker>>;

/// A duration in whole milliseconds, saturating.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// What a finished lookup produced.
#[derive(Debug, Clone)]
pub enum Outcome {
    Answer(Box<Entry>),
    /// The key service could not answer (status, timeout, undecodable reply).
    Failed,
}

/// Why a VerifyKey reply cannot be used (it is then treated as no answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unusable {
    /// Unspecified result, or a valid key without key id or consumer.
    Nonsense,
    /// A scope that cannot travel in the scopes header (see [`ka::scopes_value`]): publishing
    /// the list without it, or without any, would misstate what the key may do.
    UnpublishableScope,
}

/// Turns a VerifyKey reply for a lookup made in feed epoch `epoch` into a cache entry.
pub fn entry_from_reply(
    hash: [u8; 32],
    now_ms: u64,
    epoch: u64,
    reply: &v1::VerifyKeyResponse,
) -> Result<Entry, Unusable> {
    let result = v1::VerifyResult::try_from(reply.result).map_err(|_| Unusable::Nonsense)?;
    let state = match result {
        v1::VerifyResult::Valid => KeyState::Valid,
        v1::VerifyResult::NotFound => return Ok(Entry::not_found(hash, now_ms, reply.feed_seq, epoch)),
        v1::VerifyResult::Revoked => KeyState::Revoked,
        v1::VerifyResult::Expired => KeyState::Expired,
        v1::VerifyResult::Unspecified => return Err(Unusable::Nonsense),
    };
    if state == KeyState::Valid && (reply.key_id.is_empty() || reply.consumer_id.is_empty()) {
        return Err(Unusable::Nonsense);
    }
    if state == KeyState::Valid && ka::scopes_value(&reply.scopes).is_none() {
        return Err(Unusable::UnpublishableScope);
    }
    let (tier, limits) = match &reply.rate_limit {
        Some(p) => (
            p.tier.clone(),
            p.limits
                .iter()
                .filter_map(|l| {
                    let period_secs = match v1::Period::try_from(l.period).ok()? {
                        v1::Period::Second => 1,
                        v1::Period::Minute => 60,
                        v1::Period::Hour => 3_600,
                        v1::Period::Day => 86_400,
                        v1::Period::Unspecified => return None,
                    };
                    Some(Limit { rate: l.rate, period_secs, burst: l.burst })
                })
                .collect(),
        ),
        None => (String::new(), Vec::new()),
    };
    Ok(Entry {
        hash,
        state,
        fetched_at_ms: now_ms,
        expires_at_s: reply.expires_at,
        feed_seq: reply.feed_seq,
        epoch,
        key_id: reply.key_id.clone(),
        consumer_id: reply.consumer_id.clone(),
        display_prefix: reply.display_prefix.clone(),
        scopes: reply.scopes.clone(),
        tier,
        limits,
    })
}
