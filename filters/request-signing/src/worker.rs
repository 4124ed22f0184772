//! Per-VM state, shared by the root context and the HTTP contexts: the compiled config, the
//! shared-data key names, stats, the change-feed consumer and its call in flight.

use tollgate_core::local::Local;
use tollgate_core::signature::cache::MaterialEntry;
use tollgate_core::signature::config::Config;
use tollgate_core::signature::verify::Deny;
use tollgate_host::feed;

use crate::store::Keys;

pub const SERVICE: &str = tollgate_proto::KEY_SERVICE;

tollgate_host::stats! {
    /// request-signing's counters, under `tollgate.request_signing.`; with `denied.<reason>`
    /// for every [`Deny`].
    pub enum Stat {
        Allowed => "allowed",
        CacheHit => "cache_hit",
        CacheMiss => "cache_miss",
        CalloutError => "callout_error",
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

pub struct Worker {
    pub config: Config,
    pub keys: Keys,
    pub counters: Counters,
    /// Distinguishes this worker's replay-table writes from other workers'.
    pub seed: u64,
    pub feed: feed::Consumer,
    /// Seconds this proxy's view of the change feed may be behind the key service.
    pub feed_lag: tollgate_host::stats::Gauge,
    /// Requests per key, reported to the key service (`None`: reporting is off).
    pub usage: Option<tollgate_host::usage::Usage>,
    /// The usage report in flight, if any.
    pub usage_token: Option<u32>,
    /// The change-feed poll in flight, if any.
    pub feed_token: Option<u32>,
    /// The key material this worker used, in front of shared data (see
    /// [`tollgate_core::local`]).
    pub local: Local<String, (MaterialEntry, u64)>,
}

/// Most key ids whose material a worker keeps in its own table (fewer when the shared cache has
/// fewer slots).
pub const MAX_LOCAL_SLOTS: u32 = 1024;

impl Worker {
    pub fn metadata(&self) -> Vec<(&'static str, Vec<u8>)> {
        vec![("authorization", self.config.key_service.bearer().into_bytes())]
    }
}
