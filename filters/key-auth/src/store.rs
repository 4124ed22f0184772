//! The cache, invalidation slots and feed record in shared data, over the [`Host`] trait.

use tollgate_core::key_auth::cache::{self, Entry, FeedState, Freshness, Lookup};
use tollgate_core::key_auth::config::Config;
use tollgate_host::{Host, shared};

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

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn entry(&self, slot: u32) -> String {
        format!("{}c.{slot}", self.prefix)
    }

    fn invalidation(&self, slot: u32) -> String {
        format!("{}i.{slot}", self.prefix)
    }

    fn feed(&self) -> String {
        format!("{}feed", self.prefix)
    }
}

/// Reads what the cache says about `hash`.
///
/// An answer about a key id is checked against the feed record and the key id's invalidation
/// slot. A negative answer has no key id, so no slot, and is checked against `seen_epoch`, the
/// feed epoch this worker last read (see [`tollgate_host::feed::Consumer::epoch`]) rather than
/// by reading the record: unknown keys cost no more than one read, and a negative answer
/// outlives a feed reset by at most one tick (it only ever refuses).
pub fn lookup<H: Host + ?Sized>(
    host: &H,
    keys: &Keys,
    config: &Config,
    hash: &[u8; 32],
    seen_epoch: u64,
) -> Lookup {
    let slot = cache::cache_slot(hash, config.cache.slots);
    let entry = host.shared_get(&keys.entry(slot)).0.and_then(|b| Entry::decode(&b));
    let (freshness, epoch) = match &entry {
        Some(e) if e.hash == *hash && !e.key_id.is_empty() => {
            let feed = read_feed(host, keys).0;
            let invalidation = keys.invalidation(cache::invalidation_slot(&e.key_id));
            let freshness = Freshness {
                invalidated_at: shared::read_invalidation(host, &invalidation, feed.epoch),
                base: feed.base,
            };
            (freshness, feed.epoch)
        }
        _ => (Freshness::default(), seen_epoch),
    };
    cache::classify(entry, hash, host.now_ms(), freshness, epoch, &config.cache)
}

/// The feed's current epoch, to stamp into the answer of a lookup about to be made.
pub fn current_epoch<H: Host + ?Sized>(host: &H, keys: &Keys) -> u64 {
    read_feed(host, keys).0.epoch
}

/// Stores an answer. Last writer wins: two workers storing answers for the same slot both
/// hold a correct answer for their own key, and the hash in the entry tells them apart.
pub fn store<H: Host + ?Sized>(host: &H, keys: &Keys, config: &Config, entry: &Entry) -> bool {
    let slot = cache::cache_slot(&entry.hash, config.cache.slots);
    host.shared_set(&keys.entry(slot), &entry.encode(), None).is_ok()
}

/// The change-feed consumer's record and its CAS token.
pub fn read_feed<H: Host + ?Sized>(host: &H, keys: &Keys) -> (FeedState, Option<u32>) {
    shared::read_feed(host, &keys.feed())
}
