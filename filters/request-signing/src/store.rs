//! Shared-data layout: the material cache, invalidation slots, the feed record and the
//! replay table, all under `tollgate.request_signing.<cluster>.`.

use tollgate_core::key_auth::cache::{FeedState, Freshness, invalidation_slot};
use tollgate_core::signature::cache::{self, MaterialEntry};
use tollgate_core::signature::config::Config;
use tollgate_core::signature::replay::{self, Probe, ReplayEntry};
use tollgate_core::signature::verify::Deny;
use tollgate_host::{Host, SharedError, shared};

use tollgate_host::shared::CAS_RETRIES;

#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(config: &Config) -> Self {
        Self { prefix: format!("tollgate.request_signing.{}.", config.cluster) }
    }
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    fn material(&self, slot: u32) -> String {
        format!("{}m.{slot}", self.prefix)
    }
    fn invalidation(&self, slot: u32) -> String {
        format!("{}i.{slot}", self.prefix)
    }
    pub fn feed(&self) -> String {
        format!("{}feed", self.prefix)
    }
    fn replay(&self, slot: u32) -> String {
        format!("{}r.{slot}", self.prefix)
    }
}

/// The cached material of `key_id`, if fresh: of the feed's current epoch, not invalidated
/// within it, within its TTL.
pub fn lookup<H: Host + ?Sized>(
    host: &H,
    keys: &Keys,
    config: &Config,
    key_id: &str,
) -> Option<MaterialEntry> {
    let slot = cache::cache_slot(key_id, config.cache_slots);
    let stored = host.shared_get(&keys.material(slot)).0.and_then(|b| cache::decode_slot(&b));
    let feed = read_feed(host, keys).0;
    let freshness = Freshness {
        invalidated_at: shared::read_invalidation(
            host,
            &keys.invalidation(invalidation_slot(key_id)),
            feed.epoch,
        ),
        base: feed.base,
    };
    let (ttl, negative_ttl) = (config.cache_ttl, config.negative_ttl);
    cache::fresh_in_epoch(stored, key_id, host.now_ms(), freshness, feed.epoch, ttl, negative_ttl)
}

/// The feed's current epoch, to stamp into the answer of a lookup about to be made (see
/// [`store_from`]).
pub fn current_epoch<H: Host + ?Sized>(host: &H, keys: &Keys) -> u64 {
    read_feed(host, keys).0.epoch
}

/// Stores an answer, stamped with the feed epoch at the time it is stored (for tests: the filter
/// stores with [`store_from`] and the epoch read when the call was made, so an answer asked for
/// before a feed reset and arriving after it is not trusted).
#[cfg(test)]
pub fn store<H: Host + ?Sized>(host: &H, keys: &Keys, config: &Config, entry: &MaterialEntry) {
    store_from(host, keys, config, entry, current_epoch(host, keys));
}

/// Stores the answer of a lookup made in feed epoch `epoch` (read with [`current_epoch`] when
/// the call was made). Last writer wins; the key id in the entry tells slot sharers apart.
pub fn store_from<H: Host + ?Sized>(
    host: &H,
    keys: &Keys,
    config: &Config,
    entry: &MaterialEntry,
    epoch: u64,
) {
    let slot = cache::cache_slot(&entry.key_id, config.cache_slots);
    let _ = host.shared_set(&keys.material(slot), &cache::encode_slot(entry, epoch), None);
}

/// The change-feed consumer's record and its CAS token.
pub fn read_feed<H: Host + ?Sized>(host: &H, keys: &Keys) -> (FeedState, Option<u32>) {
    shared::read_feed(host, &keys.feed())
}

/// Creates every replay slot that does not exist yet (empty), so that later writes always
/// have a CAS token: a slot without one could be overwritten by a racing first insert.
pub fn init_replay<H: Host + ?Sized>(host: &H, keys: &Keys, slots: u32) {
    for slot in 0..slots {
        let key = keys.replay(slot);
        if host.shared_get(&key).1.is_none() {
            let _ = host.shared_set(&key, &[], None);
        }
    }
}

/// Remembers `mine` unless its id is already remembered (see [`tollgate_core::signature::replay`]).
///
/// Its compare-and-swap loop is its own, not [`shared::cas_apply`]: a try reads every slot of
/// the id's probe sequence and writes the first free one, and a lost race must read them all
/// again (the other writer may have remembered the same id in an earlier slot).
pub fn remember<H: Host + ?Sized>(host: &H, keys: &Keys, slots: u32, mine: &ReplayEntry) -> Result<(), Deny> {
    let probe_slots = replay::probe_slots(&mine.id, slots);
    let read_all = |host: &H| -> Vec<(Option<ReplayEntry>, Option<u32>)> {
        probe_slots
            .iter()
            .map(|s| {
                let (bytes, cas) = host.shared_get(&keys.replay(*s));
                (bytes.and_then(|b| ReplayEntry::decode(&b)), cas)
            })
            .collect()
    };
    for _ in 0..CAS_RETRIES {
        let now = host.now_ms();
        let current = read_all(host);
        let entries: Vec<Option<ReplayEntry>> = current.iter().map(|(e, _)| *e).collect();
        match replay::probe(&entries, &mine.id, now) {
            Probe::Seen => return Err(Deny::Replayed),
            Probe::Full => return Err(Deny::ReplayStoreFull),
            Probe::Free(i) => {
                let (Some(slot), Some((_, cas))) = (probe_slots.get(i), current.get(i)) else {
                    return Err(Deny::ReplayStoreFull);
                };
                let Some(cas) = cas else {
                    // Not initialized (configure could not create it): create it empty and retry.
                    let _ = host.shared_set(&keys.replay(*slot), &[], None);
                    continue;
                };
                match host.shared_set(&keys.replay(*slot), &mine.encode(), Some(*cas)) {
                    Ok(()) => {
                        let after: Vec<Option<ReplayEntry>> =
                            read_all(host).into_iter().map(|(e, _)| e).collect();
                        return if replay::confirmed(&after, mine, host.now_ms()) {
                            Ok(())
                        } else {
                            Err(Deny::Replayed)
                        };
                    }
                    Err(SharedError::CasMismatch) => continue,
                    Err(SharedError::Failed) => return Err(Deny::ReplayStoreFull),
                }
            }
        }
    }
    Err(Deny::ReplayStoreFull)
}

/// Whether `id` is remembered and live (a replay), without remembering it: lets a replay be
/// refused before the headers go on, while the id is remembered only once the whole request
/// (signature and body) has been verified.
pub fn seen<H: Host + ?Sized>(host: &H, keys: &Keys, slots: u32, id: &[u8; 16]) -> bool {
    let entries: Vec<Option<ReplayEntry>> = replay::probe_slots(id, slots)
        .iter()
        .map(|s| host.shared_get(&keys.replay(*s)).0.and_then(|b| ReplayEntry::decode(&b)))
        .collect();
    replay::probe(&entries, id, host.now_ms()) == Probe::Seen
}

#[cfg(test)]
mod tests {
    use tollgate_core::key_auth::cache::Invalidation;
    use tollgate_core::signature::cache::MaterialState;
    use tollgate_core::signature::verify::KeyMaterial;
    use tollgate_host::mock::MockHost;

    use super::*;

    fn config() -> Config {
        Config::from_json(br#"{"key_service": {"cluster": "keyd", "token": "t"}, "cache": {"slots": 64}}"#)
            .unwrap()
    }

    fn material(key_id: &str, now_ms: u64, feed_seq: u64) -> MaterialEntry {
        MaterialEntry {
            key_id: key_id.into(),
            state: MaterialState::Valid,
            material: Some(KeyMaterial::Hmac(vec![7; 32])),
            consumer_id: "alice".into(),
            expires_at_s: 0,
            fetched_at_ms: now_ms,
            feed_seq,
        }
    }

    fn set_epoch(host: &MockHost, keys: &Keys, epoch: u64) {
        let state = FeedState { started: true, cursor: 12, base: 12, epoch, mark: 0, busy_until_ms: 0 };
        host.shared_set(&keys.feed(), &state.encode(), None).unwrap();
    }

    /// Material cached before the key service's store was restored (a new feed epoch) is not
    /// used; material of the new epoch is, whatever the lost timeline's invalidations say.
    #[test]
    fn material_of_an_older_feed_epoch_is_not_used() {
        let host = MockHost::new();
        let (config, keys) = (config(), Keys::new(&config()));
        let now = host.now_ms();
        store(&*host, &keys, &config, &material("key_a", now, 20));
        assert!(lookup(&*host, &keys, &config, "key_a").is_some());
        let lost = Invalidation { epoch: 0, seq: 30 };
        let slot = keys.invalidation(invalidation_slot("key_a"));
        host.shared_set(&slot, &lost.encode(), None).unwrap();
        assert!(lookup(&*host, &keys, &config, "key_a").is_none(), "invalidated in its epoch");

        set_epoch(&host, &keys, 1);
        store_from(&*host, &keys, &config, &material("key_a", now, 20), 0);
        assert!(lookup(&*host, &keys, &config, "key_a").is_none(), "asked for before the reset");
        store_from(&*host, &keys, &config, &material("key_a", now, 12), current_epoch(&*host, &keys));
        assert!(lookup(&*host, &keys, &config, "key_a").is_some(), "the lost timeline's 30 is ignored");
        shared::raise_invalidation(&*host, &slot, Invalidation { epoch: 1, seq: 13 });
        assert!(lookup(&*host, &keys, &config, "key_a").is_none(), "a change of the new timeline");
    }
}
