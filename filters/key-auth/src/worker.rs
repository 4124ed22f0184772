//! State one worker's root context shares with its HTTP contexts: the compiled config, stats,
//! and the single-flight table of key lookups in progress.

use std::collections::HashMap;
use std::rc::Rc;

use prost::Message;
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
    "cache_stale_used",
    "singleflight_joined",
    "callout_error",
    "failure_mode_allowed",
    "feed_poll",
    "feed_error",
    "feed_invalidations",
];

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
    /// The context whose call is in progress; `None` once it went away (the root context then
    /// makes the call again on its next tick).
    pub leader: Option<u32>,
    pub token: Option<u32>,
    pub waiters: Vec<Waiter>,
    /// A valid answer past its TTL, usable if the key service cannot answer.
    pub stale: Option<Entry>,
}

pub struct Worker {
    pub config: Config,
    pub keys: Keys,
    pub counters: Counters,
    pub flights: HashMap<[u8; 32], Flight>,
    /// Calls the root context made: token → key hash (orphaned flights) or the feed poll.
    pub root_calls: HashMap<u32, RootCall>,
    pub feed: feed::Consumer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootCall {
    Verify([u8; 32]),
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
            root_calls: HashMap::new(),
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

/// What a finished lookup produced.
#[derive(Debug, Clone)]
pub enum Outcome {
    Answer(Box<Entry>),
    /// The key service could not answer (status, timeout, undecodable reply).
    Failed,
}

/// Turns a VerifyKey reply into a cache entry; `None` for a reply that makes no sense.
pub fn entry_from_reply(hash: [u8; 32], now_ms: u64, reply: &v1::VerifyKeyResponse) -> Option<Entry> {
    let state = match v1::VerifyResult::try_from(reply.result).ok()? {
        v1::VerifyResult::Valid => KeyState::Valid,
        v1::VerifyResult::NotFound => return Some(Entry::not_found(hash, now_ms, reply.feed_seq)),
        v1::VerifyResult::Revoked => KeyState::Revoked,
        v1::VerifyResult::Expired => KeyState::Expired,
        v1::VerifyResult::Unspecified => return None,
    };
    if state == KeyState::Valid && (reply.key_id.is_empty() || reply.consumer_id.is_empty()) {
        return None;
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
    Some(Entry {
        hash,
        state,
        fetched_at_ms: now_ms,
        expires_at_s: reply.expires_at,
        feed_seq: reply.feed_seq,
        key_id: reply.key_id.clone(),
        consumer_id: reply.consumer_id.clone(),
        display_prefix: reply.display_prefix.clone(),
        scopes: reply.scopes.clone(),
        tier,
        limits,
    })
}
