//! Per-VM state, shared by the root context and the HTTP contexts: the compiled config, the
//! store, the misses in flight (coalescing), the background refreshes and the stats.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use tollgate_core::cache::config::Config;
use tollgate_core::cache::control::RequestDirectives;
use tollgate_core::cache::key::{self, NoKey};
use tollgate_core::cache::policy::{self, Usable};
use tollgate_core::cache::store::{self, Object, Store};
use tollgate_host::Host;
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
    }
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
    /// Calls the root context made: token → (full key, job, request time in seconds).
    pub root_calls: HashMap<u32, (String, Job, i64)>,
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
        };
        worker.memory.set(host, 0);
        worker.objects.set(host, 0);
        worker
    }

    /// The stored response that may answer `req`, and how.
    pub fn find(&mut self, req: &Req, now_s: i64) -> Result<Found, NoKey> {
        let Some(names) = self.store.vary_of(&req.primary) else {
            return Ok(Found::UriMiss);
        };
        let values = key::vary_values(&req.headers, names)?;
        let Some(object) = self.store.get(&store::full_key(&req.primary, &values)) else {
            return Ok(Found::VaryMiss);
        };
        let age = policy::current_age(&object.freshness, object.request_time, object.response_time, now_s);
        let usable = policy::usable(&object.freshness, age, &req.directives);
        Ok(Found::Object { object, age, usable })
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
        let done = self.store.insert(primary, &values, object);
        self.counters.add(host, Stat::Evictions, done.evicted as u64);
        self.counters.inc(host, if done.stored { Stat::Stored } else { Stat::NotStored });
        self.gauges(host);
        done.stored
    }

    pub fn invalidate<H: Host + ?Sized>(&mut self, host: &H, primary: &str) {
        let n = self.store.invalidate(primary);
        if n > 0 {
            self.counters.add(host, Stat::Invalidations, n as u64);
            self.gauges(host);
        }
    }

    fn gauges<H: Host + ?Sized>(&self, host: &H) {
        self.memory.set(host, self.store.bytes() as u64);
        self.objects.set(host, self.store.len() as u64);
    }

    /// Asks for a background refresh of the entry under `full` (once per key at a time).
    pub fn want_refresh(&mut self, full: String, job: Job, now_ms: u64) {
        if self.config.origin.is_none() {
            return;
        }
        match self.refreshes.get(&full) {
            Some(Refresh::Queued(_)) => {}
            Some(Refresh::InFlight { until_ms } | Refresh::Failed { until_ms }) if *until_ms > now_ms => {}
            Some(_) => {
                self.refreshes.insert(full, Refresh::Queued(job));
            }
            None if self.refreshes.len() < MAX_REFRESHES => {
                self.refreshes.insert(full, Refresh::Queued(job));
            }
            None => {}
        }
    }
}
