//! The cache, invalidation slots and feed record in shared data, over the [`Host`] trait.

use tollgate_core::key_auth::cache::{self, Entry, FeedState, Freshness, Lookup};
use tollgate_core::key_auth::config::Config;
use tollgate_host::{Host, SharedError};

/// Retries of a compare-and-swap loop before giving up (the write is then skipped).
const CAS_RETRIES: usize = 8;

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
pub fn lookup<H: Host + ?Sized>(host: &H, keys: &Keys, config: &Config, hash: &[u8; 32]) -> Lookup {
    let slot = cache::cache_slot(hash, config.cache.slots);
    let entry = host.shared_get(&keys.entry(slot)).0.and_then(|b| Entry::decode(&b));
    let freshness = match &entry {
        Some(e) if e.hash == *hash && !e.key_id.is_empty() => Freshness {
            invalidated_at: read_u64(host, &keys.invalidation(cache::invalidation_slot(&e.key_id))),
            base: read_feed(host, keys).0.base,
        },
        _ => Freshness::default(),
    };
    cache::classify(entry, hash, host.now_ms(), freshness, &config.cache)
}

/// Stores an answer. Last writer wins: two workers storing answers for the same slot both
/// hold a correct answer for their own key, and the hash in the entry tells them apart.
pub fn store<H: Host + ?Sized>(host: &H, keys: &Keys, config: &Config, entry: &Entry) -> bool {
    let slot = cache::cache_slot(&entry.hash, config.cache.slots);
    host.shared_set(&keys.entry(slot), &entry.encode(), None).is_ok()
}

fn read_u64<H: Host + ?Sized>(host: &H, key: &str) -> u64 {
    host.shared_get(key).0.and_then(|b| b.as_slice().try_into().ok().map(u64::from_le_bytes)).unwrap_or(0)
}

/// The feed record and its CAS token.
pub fn read_feed<H: Host + ?Sized>(host: &H, keys: &Keys) -> (FeedState, Option<u32>) {
    let (bytes, cas) = host.shared_get(&keys.feed());
    (bytes.and_then(|b| FeedState::decode(&b)).unwrap_or_default(), cas)
}

/// Writes the feed record if nobody else wrote it since `cas` was read.
pub fn write_feed<H: Host + ?Sized>(
    host: &H,
    keys: &Keys,
    state: &FeedState,
    cas: Option<u32>,
) -> Result<(), SharedError> {
    host.shared_set(&keys.feed(), &state.encode(), cas)
}

/// Raises an invalidation slot to at least `seq`. Returns false when the retries ran out.
pub fn raise_invalidation<H: Host + ?Sized>(host: &H, keys: &Keys, slot: u32, seq: u64) -> bool {
    let key = keys.invalidation(slot);
    cas_update(host, &key, |current| {
        let current = current.and_then(|b| b.try_into().ok().map(u64::from_le_bytes)).unwrap_or(0);
        (current < seq).then(|| seq.to_le_bytes().to_vec())
    })
}

/// Finishes a poll: stores the consumer's next state, never moving the cursor backwards.
pub fn finish_poll<H: Host + ?Sized>(host: &H, keys: &Keys, next: FeedState) -> bool {
    cas_update(host, &keys.feed(), |current| {
        let current = current.and_then(FeedState::decode).unwrap_or_default();
        let merged = if current.cursor > next.cursor && current.base >= next.base {
            FeedState { busy_until_ms: 0, ..current }
        } else {
            next
        };
        Some(merged.encode().to_vec())
    })
}

/// Read–modify–write with compare-and-swap and bounded retries. `f` returns the new value, or
/// `None` to leave the value as it is. A key that does not exist yet has no CAS token, so two
/// workers racing on its first insert both succeed and the later write wins; every value
/// written here is a maximum or a merge of monotonic fields, so either outcome is correct and
/// the next update compares against whatever landed.
fn cas_update<H: Host + ?Sized>(host: &H, key: &str, f: impl Fn(Option<&[u8]>) -> Option<Vec<u8>>) -> bool {
    for _ in 0..CAS_RETRIES {
        let (current, cas) = host.shared_get(key);
        let Some(next) = f(current.as_deref()) else {
            return true;
        };
        match host.shared_set(key, &next, cas) {
            Ok(()) => return true,
            Err(SharedError::CasMismatch) => continue,
            Err(SharedError::Failed) => return false,
        }
    }
    false
}
