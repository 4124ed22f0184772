//! Per-VM state, shared by the root context and the HTTP contexts: the compiled config, the
//! store, the misses in flight (coalescing), the background refreshes and the stats.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use tollgate_core::cache::config::Config;
use tollgate_core::cache::control::RequestDirectives;
use tollgate_core::cache::key::{self, NoKey};
use tollgate_core::cache::policy::{self, Usable};
use tollgate_core::cache::purge::{self, Log, Purge, Verdict};
use tollgate_core::cache::shared::{self, Lock};
use tollgate_core::cache::store::{self, Object, Store};
use tollgate_host::Host;
use tollgate_host::shared::{Cas, cas_apply};
use tollgate_host::stats::{Counters, Gauge};

tollgate_host::stats! {
    /// The filter's counters, under `tollgate.cache.`.
    pub enum Stat {
        CacheHit => "cache_hit",
        CacheMiss => "cache_miss",
        StaleWhileRevalidate => "stale_served_while_revalidate",
        StaleIfError => "stale_served_if_error",
        StaleMaxStale => "stale_served_max_stale",
        NotModified => "not_modified",
        Revalidated => "revalidated",
        RefreshFailed => "refresh_failed",
        Coalesced => "coalesced",
        CoalesceTimeout => "coalesce_timeout",
        Bypass => "bypass",
        Stored => "stored",
        NotStored => "not_stored",
        TooLarge => "not_stored_too_large",
        Evictions => "evictions",
        Invalidations => "invalidations",
        OnlyIfCachedMiss => "only_if_cached_miss",
        SharedHit => "shared_hit",
        SharedStored => "shared_stored",
        SharedTooLarge => "shared_not_stored_too_large",
        Purged => "purged",
        PurgesApplied => "purges_applied",
        FeedFailed => "purge_feed_failed",
    }
}

/// Shared-data keys of the filter (every worker of the proxy sees them).
pub mod keys {
    /// Responses, one per slot.
    pub fn slot(n: u32) -> String {
        format!("tollgate.cache.slot.{n}")
    }
    /// The lock of a miss on its way to the origin.
    pub fn miss_lock(n: u32) -> String {
        format!("tollgate.cache.miss.{n}")
    }
    /// The lock of a background refresh.
    pub fn refresh_lock(n: u32) -> String {
        format!("tollgate.cache.refresh.{n}")
    }
    /// The purge log and its sequence (read on every request: 8 bytes).
    pub const PURGES: &str = "tollgate.cache.purges";
    pub const PURGES_SEQ: &str = "tollgate.cache.purges.seq";
    /// A counter that numbers the workers (the owners of locks).
    pub const WORKERS: &str = "tollgate.cache.workers";
}

/// Stat prefix: `tollgate.cache.<stat>`.
pub const STAT_PREFIX: &str = "tollgate.cache";

/// Most background refreshes a worker keeps track of at once.
pub const MAX_REFRESHES: usize = 256;

/// Most requests waiting on one miss; past it, a request goes upstream on its own.
pub const MAX_WAITERS: usize = 1024;

/// What the cache needs of a request to answer it (kept for requests that wait on a miss).
#[derive(Debug, Clone)]
pub struct Req {
    pub method: String,
    pub authority: String,
    pub path: String,
    /// Lower-case names, exact bytes.
    pub headers: Vec<(String, Vec<u8>)>,
    pub directives: RequestDirectives,
    pub primary: String,
}

impl Req {
    /// The first value of a header, when it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        policy::lines(&self.headers, name).first().and_then(|v| std::str::from_utf8(v).ok())
    }
}

/// What a lookup found.
pub enum Found {
    Object {
        object: Rc<Object>,
        age: u64,
        usable: Usable,
    },
    /// Responses are stored for the URL, none for this request's `Vary` values.
    VaryMiss,
    /// Nothing stored for the URL.
    UriMiss,
}

/// A request waiting for another's miss to come back.
#[derive(Debug, Clone)]
pub struct Waiter {
    pub context_id: u32,
    pub req: Req,
    pub since_ms: u64,
}

/// A miss in flight, by primary key.
#[derive(Debug)]
pub struct Flight {
    pub leader: u32,
    pub waiters: Vec<Waiter>,
}

/// A background refresh: the request to make again, from the root context.
#[derive(Debug, Clone)]
pub struct Job {
    pub primary: String,
    /// Headers of the refresh call, pseudo-headers first.
    pub headers: Vec<(String, String)>,
    /// The request's headers (for the variant the answer is stored under).
    pub request_headers: Vec<(String, Vec<u8>)>,
    pub authorized: bool,
}

#[derive(Debug, Clone)]
pub enum Refresh {
    /// Asked for by a request; the root context makes the call on its next tick.
    Queued(Job),
    /// The call is out; forgotten after `until_ms` should its answer never come.
    InFlight { until_ms: u64 },
    /// The call failed; not made again before `until_ms` (the stale entry is served meanwhile).
    Failed { until_ms: u64 },
}

/// How long a failed refresh is remembered: a down origin costs one call per key and worker
/// in this time, not one per stale answer.
pub const REFRESH_RETRY_MS: u64 = 5_000;

pub struct Worker {
    pub config: Config,
    pub counters: Counters<Stat>,
    pub memory: Gauge,
    pub objects: Gauge,
    pub store: Store,
    pub flights: HashMap<String, Flight>,
    /// Waiters answered from the cache by another context: their own context does nothing more.
    pub answered: HashSet<u32>,
    /// Refreshes by full key.
    pub refreshes: HashMap<String, Refresh>,
    /// Calls the root context made: token → (full key, job, request time in ms).
    pub root_calls: HashMap<u32, (String, Job, u64)>,
    /// This worker's number among the proxy's workers: who holds a lock.
    pub owner: u64,
    /// The purge log as this worker last read it.
    pub purges: Log,
    /// Requests waiting on another worker's miss, by primary key (answered on the tick).
    pub remote_waits: HashMap<String, Vec<Waiter>>,
    /// This worker's poll of the purge feed, while it is out.
    pub feed_call: Option<u32>,
    /// The purge feed failed last time (logged once, not on every poll).
    pub feed_failing: bool,
}

/// What trying a lock did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locked {
    /// Taken by this worker.
    Acquired,
    /// Another worker holds it for the same key.
    Held,
    /// Held for another key that shares the slot, or shared data refused: carry on unlocked.
    Unavailable,
}

/// The better of two usabilities: what answers at once beats what must go to the origin.
fn rank(usable: Usable) -> u8 {
    match usable {
        Usable::Fresh | Usable::StaleAllowed => 3,
        Usable::StaleWhileRevalidate => 2,
        Usable::NotForRequest | Usable::Stale => 1,
    }
}

impl Worker {
    pub fn new<H: Host + ?Sized>(host: &H, config: Config) -> Self {
        let worker = Self {
            counters: Counters::define(host, STAT_PREFIX),
            memory: Gauge::define(host, &format!("{STAT_PREFIX}.memory_bytes")),
            objects: Gauge::define(host, &format!("{STAT_PREFIX}.objects")),
            store: Store::new(config.max_memory_bytes),
            config,
            flights: HashMap::new(),
            answered: HashSet::new(),
            refreshes: HashMap::new(),
            root_calls: HashMap::new(),
            owner: worker_number(host),
            purges: Log::default(),
            remote_waits: HashMap::new(),
            feed_call: None,
            feed_failing: false,
        };
        worker.memory.set(host, 0);
        worker.objects.set(host, 0);
        worker
    }

    /// The stored response that may answer `req`, and how: this worker's own, else (or when the
    /// proxy's shared tier has a better one, e.g. refreshed by another worker) the shared one,
    /// then kept in this worker's store too.
    pub fn find<H: Host + ?Sized>(&mut self, host: &H, req: &Req, now_s: i64) -> Result<Found, NoKey> {
        let own = self.find_own(req, now_s)?;
        let own_rank = match &own {
            Found::Object { usable, .. } => rank(*usable),
            _ => 0,
        };
        if own_rank == 3 || matches!(own, Found::Object { usable: Usable::NotForRequest, .. }) {
            return Ok(own);
        }
        let Some(object) = self.shared_object(host, &req.primary, &req.headers) else {
            return Ok(own);
        };
        let (age, usable) = self.judge(&req.primary, &object, &req.directives, now_s);
        if rank(usable) <= own_rank {
            return Ok(own);
        }
        self.counters.inc(host, Stat::SharedHit);
        let object = Rc::new(object);
        if let Ok(values) = key::vary_values(&req.headers, &object.vary) {
            let done = self.store.insert(&req.primary, &values, (*object).clone());
            self.counters.add(host, Stat::Evictions, done.evicted as u64);
            self.gauges(host);
        }
        Ok(Found::Object { object, age, usable })
    }

    fn find_own(&mut self, req: &Req, now_s: i64) -> Result<Found, NoKey> {
        let Some(names) = self.store.vary_of(&req.primary) else {
            return Ok(Found::UriMiss);
        };
        let values = key::vary_values(&req.headers, names)?;
        let full = store::full_key(&req.primary, &values);
        let Some(object) = self.store.get(&full) else {
            return Ok(Found::VaryMiss);
        };
        if purge::verdict_of(&self.purges, &req.primary, &object) == Verdict::Gone {
            self.store.remove_where(|_, o| std::ptr::eq(o, &*object));
            return Ok(Found::UriMiss);
        }
        let (age, usable) = self.judge(&req.primary, &object, &req.directives, now_s);
        Ok(Found::Object { object, age, usable })
    }

    /// How old a stored object is and what it can do for a request, soft purges counted: a
    /// soft-purged object is as old as if its freshness had ended at the purge.
    fn judge(
        &self,
        primary: &str,
        object: &Object,
        directives: &RequestDirectives,
        now_s: i64,
    ) -> (u64, Usable) {
        let mut age =
            policy::current_age(&object.freshness, object.request_time, object.response_time, now_s);
        if let Verdict::StaleSince(at_ms) = purge::verdict_of(&self.purges, primary, object) {
            let since = u64::try_from(now_s.saturating_sub(i64::try_from(at_ms / 1000).unwrap_or(i64::MAX)))
                .unwrap_or(0);
            age = age.max(object.freshness.lifetime.saturating_add(since));
        }
        (age, policy::usable(&object.freshness, age, directives))
    }

    /// The response the shared tier holds for `primary` and these request headers, if it is
    /// there, readable and not purged.
    pub fn shared_object<H: Host + ?Sized>(
        &self,
        host: &H,
        primary: &str,
        request_headers: &[(String, Vec<u8>)],
    ) -> Option<Object> {
        let tier = self.config.shared?;
        let bytes = host.shared_get(&keys::slot(shared::slot_of(primary, tier.slots))).0?;
        let entry = shared::decode_entry(&bytes)?;
        if entry.primary != primary {
            return None;
        }
        let values = key::vary_values(request_headers, &entry.object.vary).ok()?;
        if store::full_key(primary, &values) != entry.full
            || purge::verdict_of(&self.purges, primary, &entry.object) == Verdict::Gone
        {
            return None;
        }
        Some(entry.object)
    }

    /// Stores `object` for the request with `request_headers`; false when it was not stored.
    pub fn put<H: Host + ?Sized>(
        &mut self,
        host: &H,
        primary: &str,
        request_headers: &[(String, Vec<u8>)],
        object: Object,
    ) -> bool {
        let Ok(values) = key::vary_values(request_headers, &object.vary) else {
            return false;
        };
        if let Some(tier) = self.config.shared {
            let full = store::full_key(primary, &values);
            let bytes = shared::encode_entry(primary, &full, &object);
            if bytes.len() <= tier.slot_bytes {
                let slot = keys::slot(shared::slot_of(primary, tier.slots));
                if host.shared_set(&slot, &bytes, None).is_ok() {
                    self.counters.inc(host, Stat::SharedStored);
                }
            } else {
                self.counters.inc(host, Stat::SharedTooLarge);
            }
        }
        let done = self.store.insert(primary, &values, object);
        self.counters.add(host, Stat::Evictions, done.evicted as u64);
        self.counters.inc(host, if done.stored { Stat::Stored } else { Stat::NotStored });
        self.gauges(host);
        done.stored
    }

    /// Adds purges to the proxy's log (every worker applies them at its next request), then
    /// applies them here. False when the log could not be written (contention past the retries).
    pub fn add_purges<H: Host + ?Sized>(&mut self, host: &H, purges: &[Purge]) -> bool {
        if purges.is_empty() {
            return true;
        }
        let written =
            cas_apply(host, keys::PURGES, tollgate_host::shared::CAS_RETRIES * 4, None, |current| {
                let mut log = current.and_then(Log::decode).unwrap_or_default();
                for p in purges {
                    log.push(p.clone());
                }
                Cas::Write(log.encode(), log.seq)
            });
        let Some(seq) = written else {
            return false;
        };
        // The sequence only grows: a slower writer of an older one must not hide this one.
        tollgate_host::shared::cas_update(host, keys::PURGES_SEQ, |current| {
            let old = current.and_then(|b| b.try_into().ok()).map_or(0, u64::from_be_bytes);
            (seq > old).then(|| seq.to_be_bytes().to_vec())
        });
        self.counters.add(host, Stat::PurgesApplied, purges.len() as u64);
        self.sync_purges(host);
        true
    }

    /// Reads the purge log when it changed (8 bytes read otherwise), and drops what it purged
    /// from this worker's store.
    pub fn sync_purges<H: Host + ?Sized>(&mut self, host: &H) {
        let seq =
            host.shared_get(keys::PURGES_SEQ).0.and_then(|b| b.try_into().ok()).map_or(0, u64::from_be_bytes);
        if seq == self.purges.seq {
            return;
        }
        let Some(log) = host.shared_get(keys::PURGES).0.and_then(|b| Log::decode(&b)) else {
            return;
        };
        if log.seq < self.purges.seq {
            return;
        }
        self.purges = log;
        let purges = &self.purges;
        let n = self
            .store
            .remove_where(|primary, object| purge::verdict_of(purges, primary, object) == Verdict::Gone);
        if n > 0 {
            self.counters.add(host, Stat::Purged, n as u64);
            self.gauges(host);
        }
    }

    /// Drops every variant of a URL in every worker and the shared tier: an unsafe request
    /// succeeded (RFC 9111 §4.4).
    pub fn invalidate<H: Host + ?Sized>(&mut self, host: &H, target: purge::Target) {
        let before = self.store.len();
        let purge = Purge { target, soft: false, at_ms: host.now_ms() };
        if !self.add_purges(host, std::slice::from_ref(&purge)) {
            // The log is out of reach: at least this worker drops its copies.
            let mut log = self.purges.clone();
            log.push(purge);
            self.store
                .remove_where(|primary, object| purge::verdict_of(&log, primary, object) == Verdict::Gone);
        }
        let n = before.saturating_sub(self.store.len());
        self.counters.add(host, Stat::Invalidations, n as u64);
        self.gauges(host);
    }

    /// Tries the lock `lock_key` for `key`, held until `until_ms`.
    pub fn lock<H: Host + ?Sized>(&self, host: &H, lock_key: &str, key: &str, until_ms: u64) -> Locked {
        let now = host.now_ms();
        let hash = shared::hash(key);
        let mine = Lock { key: hash, owner: self.owner, until_ms };
        let released = Lock::default().encode();
        let step = |current: Option<&[u8]>| {
            let lock = Lock::decode(current);
            if !lock.held(now) || lock.owner == self.owner && lock.key == hash {
                Cas::Write(mine.encode().to_vec(), Locked::Acquired)
            } else if lock.key == hash {
                Cas::Keep(Locked::Held)
            } else {
                Cas::Keep(Locked::Unavailable)
            }
        };
        cas_apply(host, lock_key, tollgate_host::shared::CAS_RETRIES, Some(&released), step)
            .unwrap_or(Locked::Unavailable)
    }

    /// Sets the lock `lock_key` this worker holds for `key` to end at `until_ms` (0: released).
    pub fn unlock<H: Host + ?Sized>(&self, host: &H, lock_key: &str, key: &str, until_ms: u64) {
        let hash = shared::hash(key);
        let _ = cas_apply(host, lock_key, tollgate_host::shared::CAS_RETRIES, None, |current| {
            let lock = Lock::decode(current);
            if lock.owner == self.owner && lock.key == hash {
                Cas::Write(Lock { until_ms, ..lock }.encode().to_vec(), ())
            } else {
                Cas::Keep(())
            }
        });
    }

    /// Whether the lock `lock_key` is held now by another worker for `key`.
    pub fn held_by_other<H: Host + ?Sized>(&self, host: &H, lock_key: &str, key: &str) -> bool {
        let lock = Lock::decode(host.shared_get(lock_key).0.as_deref());
        lock.held(host.now_ms()) && lock.key == shared::hash(key) && lock.owner != self.owner
    }

    pub fn miss_lock_key(&self, primary: &str) -> Option<String> {
        self.config.shared.map(|t| keys::miss_lock(shared::slot_of(primary, t.slots)))
    }

    pub fn refresh_lock_key(&self, full: &str) -> String {
        let slots =
            self.config.shared.map_or(tollgate_core::cache::config::DEFAULT_SHARED_SLOTS, |t| t.slots);
        keys::refresh_lock(shared::slot_of(full, slots))
    }

    fn gauges<H: Host + ?Sized>(&self, host: &H) {
        self.memory.set(host, self.store.bytes() as u64);
        self.objects.set(host, self.store.len() as u64);
    }

    /// Asks for a background refresh of `stale`, stored under `full` (once per key and proxy at
    /// a time: the worker that takes the refresh lock makes it; the others find its answer in
    /// the shared tier).
    pub fn want_refresh<H: Host + ?Sized>(&mut self, host: &H, full: String, job: Job, stale: &Object) {
        let Some(origin) = &self.config.origin else {
            return;
        };
        let now_ms = host.now_ms();
        let free = match self.refreshes.get(&full) {
            Some(Refresh::Queued(_)) => false,
            Some(Refresh::InFlight { until_ms } | Refresh::Failed { until_ms }) => *until_ms <= now_ms,
            None => self.refreshes.len() < MAX_REFRESHES,
        };
        if !free {
            return;
        }
        let timeout_ms = u64::try_from(origin.timeout.as_millis()).unwrap_or(u64::MAX);
        let lock_key = self.refresh_lock_key(&full);
        match self.lock(host, &lock_key, &full, now_ms.saturating_add(timeout_ms + 1000)) {
            Locked::Held => return,
            Locked::Acquired => {
                // Another worker may have refreshed it between this request's look and the lock.
                let newer = self
                    .shared_object(host, &job.primary, &job.request_headers)
                    .is_some_and(|o| o.request_ms > stale.request_ms);
                if newer {
                    self.unlock(host, &lock_key, &full, 0);
                    return;
                }
            }
            Locked::Unavailable => {}
        }
        self.refreshes.insert(full, Refresh::Queued(job));
    }
}

/// This worker's number: one more than the last worker that asked (the owner in locks).
fn worker_number<H: Host + ?Sized>(host: &H) -> u64 {
    let step = |current: Option<&[u8]>| {
        let n = current.and_then(|b| b.try_into().ok()).map_or(0, u64::from_be_bytes) + 1;
        Cas::Write(n.to_be_bytes().to_vec(), n)
    };
    // Without it (shared data refused), a number from the clock: locks still work, with a
    // small chance of two workers taking one lock for each other.
    cas_apply(host, keys::WORKERS, tollgate_host::shared::CAS_RETRIES, Some(&0u64.to_be_bytes()), step)
        .unwrap_or_else(|| host.now_ms() | 1 << 63)
}
