//! Shared-data layout: the material cache and the replay table, under
//! `tollgate.request_signing.<cluster>.` with the change feed's consumer's keys (which only the
//! consumer, [`feed::Consumer`], names).

use std::rc::Rc;

use tollgate_core::signature::cache::{self, MaterialEntry};
use tollgate_core::signature::config::Config;
use tollgate_core::signature::replay::{self, Probe, ReplayEntry};
use tollgate_core::signature::verify::Deny;
use tollgate_host::{Host, SharedError};

use tollgate_host::shared::CAS_RETRIES;

use crate::worker::Worker;

#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(config: &Config) -> Self {
        Self { prefix: format!("tollgate.request_signing.{}.", config.key_service.cluster) }
    }
    /// The prefix of every key of this filter, the feed consumer's among them.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    fn material(&self, slot: u32) -> String {
        format!("{}m.{slot}", self.prefix)
    }
    fn replay(&self, slot: u32) -> String {
        format!("{}r.{slot}", self.prefix)
    }
}

/// The cached material of `key_id`, if fresh: of the feed's current epoch, not invalidated
/// within it (as the feed's consumer says: [`feed::Consumer::freshness`]), within its TTL.
///
/// The worker's own table is asked first ([`tollgate_core::local`]): material it checked
/// against the feed in its current view of the feed is used with no shared-data read.
pub fn lookup<H: Host + ?Sized>(host: &H, worker: &mut Worker, key_id: &str) -> Option<MaterialEntry> {
    let now_ms = host.now_ms();
    let view = worker.feed.view();
    let (ttl, negative_ttl) = (worker.config.cache_ttl, worker.config.negative_ttl);
    let id = key_id.to_owned();
    if let Some(hit) = worker.local.get(&id, view) {
        let freshness = match hit.freshness {
            Some(freshness) => freshness,
            None => {
                let freshness = worker.feed.freshness(host, key_id);
                worker.local.checked(&id, view, freshness);
                freshness
            }
        };
        let (entry, epoch) = &*hit.value;
        if cache::usable(entry, *epoch, key_id, now_ms, freshness, ttl, negative_ttl) {
            return Some(entry.clone());
        }
        worker.local.remove(&id);
    }
    let slot = cache::cache_slot(key_id, worker.config.cache_slots);
    let (entry, epoch) =
        host.shared_get(&worker.keys.material(slot)).0.and_then(|b| cache::decode_slot(&b))?;
    let freshness = worker.feed.freshness(host, key_id);
    if !cache::usable(&entry, epoch, key_id, now_ms, freshness, ttl, negative_ttl) {
        return None;
    }
    worker.local.insert(id, Rc::new((entry.clone(), epoch)), Some((view, freshness)));
    Some(entry)
}

/// Stores an answer, stamped with the feed epoch at the time it is stored (for tests: the filter
/// stores with [`store_from`] and the epoch read when the call was made, so an answer asked for
/// before a feed reset and arriving after it is not trusted).
#[cfg(test)]
pub fn store<H: Host + ?Sized>(host: &H, worker: &mut Worker, entry: &MaterialEntry) {
    let epoch = worker.feed.epoch(host);
    store_from(host, worker, entry, epoch);
}

/// Stores the answer of a lookup made in feed epoch `epoch` (read with
/// [`feed::Consumer::epoch`] when the call was made). Last writer wins; the key id in the entry
/// tells slot sharers apart.
///
/// The worker keeps it too, to be checked against the feed on first use.
pub fn store_from<H: Host + ?Sized>(host: &H, worker: &mut Worker, entry: &MaterialEntry, epoch: u64) {
    let slot = cache::cache_slot(&entry.key_id, worker.config.cache_slots);
    let _ = host.shared_set(&worker.keys.material(slot), &cache::encode_slot(entry, epoch), None);
    worker.local.insert(entry.key_id.clone(), Rc::new((entry.clone(), epoch)), None);
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
/// Its compare-and-swap loop is its own, not [`tollgate_host::shared::cas_apply`]: a try reads every slot of
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
    use prost::Message;
    use tollgate_core::signature::cache::MaterialState;
    use tollgate_core::signature::verify::KeyMaterial;
    use tollgate_host::feed;
    use tollgate_host::grpc_status;
    use tollgate_host::mock::MockHost;
    use tollgate_proto::v1;

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

    /// One poll of the change feed, answered with `changes` (seq, key id) and `head`.
    fn poll(host: &MockHost, feed: &feed::Consumer, config: &Config, changes: &[(u64, &str)], head: u64) {
        let target = &config.key_service;
        host.advance(config.key_service.poll_interval);
        assert!(matches!(feed.poll(host, target), feed::Poll::Started(_)), "no poll");
        let changes = changes
            .iter()
            .map(|(seq, key_id)| v1::Change {
                seq: *seq,
                key_id: (*key_id).into(),
                kind: v1::ChangeKind::KeyRevoked as i32,
                consumer_id: "alice".into(),
                at: 1_700_000_000,
                purge: None,
            })
            .collect();
        let reply = v1::ListChangesResponse { changes, head_seq: head };
        host.set_grpc_response(Some(reply.encode_to_vec()), None);
        feed.done(host, target, grpc_status::OK, 1);
    }

    /// Material cached before the key service's store was restored (a new feed epoch) is not
    /// used; material of the new epoch is, whatever the lost timeline's invalidations say.
    #[test]
    fn material_of_an_older_feed_epoch_is_not_used() {
        let host = MockHost::new();
        let config = config();
        let keys = Keys::new(&config);
        let mut w = Worker {
            counters: crate::worker::Counters::define(&*host, "tollgate.request_signing"),
            feed: feed::Consumer::new("request-signing", keys.prefix()),
            feed_lag: tollgate_host::stats::Gauge::define(
                &*host,
                "tollgate.request_signing.feed_lag_seconds",
            ),
            local: tollgate_core::local::Local::new(16),
            keys,
            seed: 0,
            feed_token: None,
            usage: None,
            usage_token: None,
            config: config.clone(),
        };
        let now = host.now_ms();
        store(&*host, &mut w, &material("key_a", now, 20));
        assert!(lookup(&*host, &mut w, "key_a").is_some());
        // The lost timeline changes key_a at 30.
        poll(&host, &w.feed, &config, &[], 20);
        poll(&host, &w.feed, &config, &[(30, "key_a")], 30);
        assert!(lookup(&*host, &mut w, "key_a").is_none(), "invalidated in its epoch");

        // The store is restored to its state at 12: a new epoch.
        poll(&host, &w.feed, &config, &[], 12);
        assert_eq!(w.feed.epoch(&*host), 1);
        store_from(&*host, &mut w, &material("key_a", now, 20), 0);
        assert!(lookup(&*host, &mut w, "key_a").is_none(), "asked for before the reset");
        let epoch = w.feed.epoch(&*host);
        store_from(&*host, &mut w, &material("key_a", now, 12), epoch);
        assert!(lookup(&*host, &mut w, "key_a").is_some(), "the lost timeline's 30 is ignored");
        poll(&host, &w.feed, &config, &[(13, "key_a")], 13);
        assert!(lookup(&*host, &mut w, "key_a").is_none(), "a change of the new timeline");
    }
}
