//! Per-VM state, shared by the root context and the HTTP contexts: the compiled config, stats,
//! the single-flight table of key lookups in progress, the background refreshes of stale
//! answers and the calls the root context made.

use std::collections::HashMap;
use std::time::Duration;

use prost::Message;
use tollgate_core::key_auth::Deny;
use tollgate_core::key_auth::cache::Entry;
use tollgate_core::key_auth::config::Config;
use tollgate_core::local::Local;
use tollgate_host::stats::{Gauge, Histogram};
use tollgate_host::usage::Usage;
use tollgate_host::{Host, feed};
use tollgate_proto::v1;

use crate::store::Keys;

tollgate_host::stats! {
    /// key-auth's counters, under `tollgate.key_auth.`; with `denied.<reason>` for every [`Deny`].
    pub enum Stat {
        Allowed => "allowed",
        CacheHit => "cache_hit",
        CacheMiss => "cache_miss",
        CacheStaleServed => "cache_stale_served",
        CacheRefreshStarted => "cache_refresh_started",
        CacheRefreshFailed => "cache_refresh_failed",
        CacheRefreshed => "cache_refreshed",
        SingleflightJoined => "singleflight_joined",
        CalloutError => "callout_error",
        FailureModeAllowed => "failure_mode_allowed",
        FeedPoll => "feed_poll",
        FeedError => "feed_error",
        FeedInvalidations => "feed_invalidations",
        FeedResets => "feed_resets",
        UsageReportOk => "usage_report_ok",
        UsageReportError => "usage_report_error",
        UsageDropped => "usage_dropped",
    }
}

/// Every counter of the filter.
pub type Counters = tollgate_host::stats::Counters<Stat, Deny>;

/// Most refreshes of stale answers a worker keeps track of (queued, in flight or recently
/// failed). Past it, a stale answer is still served, and its refresh is asked for by a later
/// request once there is room.
pub const MAX_REFRESHES: usize = 256;

/// How long a failed refresh is remembered: meanwhile the stale answer is served without
/// asking the key service again.
pub const REFRESH_RETRY: Duration = Duration::from_secs(5);

/// Most answers a worker keeps in its own table (fewer when the shared cache has fewer slots).
/// An entry is a few hundred bytes: a full table costs a worker about 1 MiB.
pub const MAX_LOCAL_SLOTS: u32 = 4096;

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
    /// When the call was made (ms), for the call-latency histogram.
    pub started_ms: u64,
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
    /// Seconds this proxy's view of the change feed may be behind the key service.
    pub feed_lag: Gauge,
    /// How long the key service took to answer a lookup, in ms.
    pub call_ms: Histogram,
    pub flights: HashMap<[u8; 32], Flight>,
    /// Stale answers being refreshed in the background, by key hash (at most
    /// [`MAX_REFRESHES`]).
    pub refreshes: HashMap<[u8; 32], Refresh>,
    /// Calls the root context made: token → what it is for.
    pub root_calls: HashMap<u32, RootCall>,
    pub feed: feed::Consumer,
    /// Requests per key, reported to the key service (`None`: reporting is off).
    pub usage: Option<Usage>,
    /// The answers this worker used, in front of shared data (see [`tollgate_core::local`]).
    pub local: Local<[u8; 32], Entry>,
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
        started_ms: u64,
    },
    Feed,
    /// A usage report.
    Usage,
}

impl Worker {
    pub fn new<H: Host + ?Sized>(host: &H, config: Config) -> Self {
        let keys = Keys::new(&config);
        let usage = Usage::configured(host, &config.usage, keys.prefix());
        let config_local_slots = config.cache.slots.min(MAX_LOCAL_SLOTS);
        Self {
            feed: feed::Consumer::new("key-auth", keys.prefix()),
            keys,
            counters: Counters::define(host, "tollgate.key_auth"),
            feed_lag: Gauge::define(host, "tollgate.key_auth.feed_lag_seconds"),
            call_ms: Histogram::define(host, "tollgate.key_auth.key_service_call_ms"),
            config,
            flights: HashMap::new(),
            refreshes: HashMap::new(),
            root_calls: HashMap::new(),
            usage,
            local: Local::new(config_local_slots),
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

    pub fn metadata(&self) -> Vec<(&'static str, Vec<u8>)> {
        vec![("authorization", self.config.key_service.bearer().into_bytes())]
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
        let ks = &self.config.key_service;
        host.grpc_call(&ks.cluster, SERVICE, "VerifyKey", &metadata, &message, ks.timeout)
    }
}

/// A duration in whole milliseconds, saturating.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
