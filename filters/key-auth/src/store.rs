//! The cache in shared data, over the [`Host`] trait. What the change feed says about an
//! answer comes from the feed's consumer ([`feed::Consumer`]), which alone names the feed's
//! keys.

use std::rc::Rc;
use tollgate_core::feed::Freshness;

use tollgate_core::key_auth::cache::{self, Entry, Use};
use tollgate_core::key_auth::config::Config;
use tollgate_host::{Host, feed};

use crate::worker::Worker;

/// Names of this filter's shared-data keys. Scoped by the key-service cluster, so two
/// key-auth configurations against different key services never read each other's answers.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(config: &Config) -> Self {
        Self { prefix: format!("tollgate.key_auth.{}.", config.key_service.cluster) }
    }

    /// The prefix of every key of this filter, the feed consumer's among them.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn entry(&self, slot: u32) -> String {
        format!("{}c.{slot}", self.prefix)
    }
}

/// What the caches say about a key.
#[derive(Debug)]
pub enum Found {
    /// Within its TTL and not invalidated: use it.
    Fresh(Rc<Entry>),
    /// Past its TTL, within the stale window, not invalidated: use it and refresh it.
    Stale(Rc<Entry>),
    /// Nothing usable: ask the key service.
    Miss,
}

/// Reads what the caches say about `hash`: the worker's own table first ([`Local`]), then
/// shared data.
///
/// An answer the worker holds is used without any shared-data read while the worker's view of
/// the change feed has not moved since the answer was checked; otherwise what the feed says
/// about its key id is read again ([`feed::Consumer::freshness`]). A stale answer is looked up
/// in shared data too, where another worker may have stored a refreshed one.
///
/// An answer about a key id is checked against what the feed says about the key id. A negative
/// answer has no key id, so no invalidation slot, and is checked against the feed epoch this
/// worker last read ([`feed::Consumer::seen_epoch`]) rather than by reading the record: unknown
/// keys cost no more than one read, and a negative answer outlives a feed reset by at most one
/// tick (it only ever refuses).
pub fn lookup<H: Host + ?Sized>(host: &H, worker: &mut Worker, hash: &[u8; 32]) -> Found {
    let now_ms = host.now_ms();
    let view = worker.feed.view();
    let mut stale = None;
    if let Some(hit) = worker.local.get(hash, view) {
        let freshness = match hit.freshness {
            Some(freshness) => freshness,
            None => {
                let freshness = freshness_of(host, &worker.feed, &hit.value, hash);
                worker.local.checked(hash, view, freshness);
                freshness
            }
        };
        match cache::usable(&hit.value, hash, now_ms, freshness, &worker.config.cache) {
            Use::Fresh => return Found::Fresh(hit.value),
            Use::Stale => stale = Some(hit.value),
            Use::Miss => worker.local.remove(hash),
        }
    }
    let slot = cache::cache_slot(hash, worker.config.cache.slots);
    let shared = host.shared_get(&worker.keys.entry(slot)).0.and_then(|b| Entry::decode(&b));
    if let Some(entry) = shared.filter(|e| e.hash == *hash) {
        let freshness = freshness_of(host, &worker.feed, &entry, hash);
        let used = cache::usable(&entry, hash, now_ms, freshness, &worker.config.cache);
        let newer = stale.as_ref().is_none_or(|old| entry.fetched_at_ms > old.fetched_at_ms);
        if used != Use::Miss && newer {
            let entry = Rc::new(entry);
            worker.local.insert(*hash, Rc::clone(&entry), Some((view, freshness)));
            return if used == Use::Fresh { Found::Fresh(entry) } else { Found::Stale(entry) };
        }
    }
    stale.map_or(Found::Miss, Found::Stale)
}

/// What the feed says now about `entry`, the answer cached for `hash`.
fn freshness_of<H: Host + ?Sized>(
    host: &H,
    feed: &feed::Consumer,
    entry: &Entry,
    hash: &[u8; 32],
) -> Freshness {
    if entry.hash == *hash && !entry.key_id.is_empty() {
        feed.freshness(host, &entry.key_id)
    } else {
        Freshness::epoch_only(feed.seen_epoch())
    }
}

/// Stores an answer. Last writer wins: two workers storing answers for the same slot both
/// hold a correct answer for their own key, and the hash in the entry tells them apart.
/// The answer is also kept in the worker's own table, to be checked against the feed on first
/// use.
pub fn store<H: Host + ?Sized>(host: &H, worker: &mut Worker, entry: Entry) -> bool {
    let slot = cache::cache_slot(&entry.hash, worker.config.cache.slots);
    let stored = host.shared_set(&worker.keys.entry(slot), &entry.encode(), None).is_ok();
    worker.local.insert(entry.hash, Rc::new(entry), None);
    stored
}
