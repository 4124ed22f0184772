//! The cache in shared data, over the [`Host`] trait. What the change feed says about an
//! answer comes from the feed's consumer ([`feed::Consumer`]), which alone names the feed's
//! keys.

use tollgate_core::feed::Freshness;
use tollgate_core::key_auth::cache::{self, Entry, Lookup};
use tollgate_core::key_auth::config::Config;
use tollgate_host::{Host, feed};

/// Names of this filter's shared-data keys. Scoped by the key-service cluster, so two
/// key-auth configurations against different key services never read each other's answers.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(config: &Config) -> Self {
        Self { prefix: format!("tollgate.key_auth.{}.", config.cluster) }
    }

    /// The prefix of every key of this filter, the feed consumer's among them.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn entry(&self, slot: u32) -> String {
        format!("{}c.{slot}", self.prefix)
    }
}

/// Reads what the cache says about `hash`.
///
/// An answer about a key id is checked against what the feed says now about the key id
/// ([`feed::Consumer::freshness`]). A negative answer has no key id, so no invalidation slot, and
/// is checked against the feed epoch this worker last read ([`feed::Consumer::seen_epoch`])
/// rather than by reading the record: unknown keys cost no more than one read, and a negative
/// answer outlives a feed reset by at most one tick (it only ever refuses).
pub fn lookup<H: Host + ?Sized>(
    host: &H,
    keys: &Keys,
    feed: &feed::Consumer,
    config: &Config,
    hash: &[u8; 32],
) -> Lookup {
    let slot = cache::cache_slot(hash, config.cache.slots);
    let entry = host.shared_get(&keys.entry(slot)).0.and_then(|b| Entry::decode(&b));
    let freshness = match &entry {
        Some(e) if e.hash == *hash && !e.key_id.is_empty() => feed.freshness(host, &e.key_id),
        _ => Freshness::epoch_only(feed.seen_epoch()),
    };
    cache::classify(entry, hash, host.now_ms(), freshness, &config.cache)
}

/// Stores an answer. Last writer wins: two workers storing answers for the same slot both
/// hold a correct answer for their own key, and the hash in the entry tells them apart.
pub fn store<H: Host + ?Sized>(host: &H, keys: &Keys, config: &Config, entry: &Entry) -> bool {
    let slot = cache::cache_slot(&entry.hash, config.cache.slots);
    host.shared_set(&keys.entry(slot), &entry.encode(), None).is_ok()
}
