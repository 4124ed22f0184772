//! The verified-key cache kept in proxy-wasm shared data, shared by every worker of one Envoy.
//!
//! Shared data has no delete and no per-key expiry, so the cache is a fixed array of slots:
//! a key's slot is its SHA-256 modulo the slot count. A slot holds one entry carrying the full
//! hash, so a collision only evicts (the newer answer overwrites the older one) and can never
//! hand one key's identity to another. Memory is bounded by `slots × entry size`.
//!
//! Whether the change feed has retired an entry (a change to its key id, a restored key
//! service) is the feed's to say ([`crate::feed`]): each entry records the feed epoch its lookup
//! was dispatched in and the feed's head when it was answered, and [`classify`] asks
//! [`feed::invalidated`] about them.

use std::time::Duration;

use super::config::CacheConfig;
use crate::feed::{self, Freshness, Stamp};
/// The key's limits an entry carries are published as they are (see
/// [`crate::identity::PROP_RATE_LIMIT`]).
pub use crate::identity::Limit;

const ENTRY_VERSION: u8 = 3;
/// Bound on decoded strings and lists, so a corrupt entry cannot make us allocate much.
const MAX_STR: usize = 1024;
const MAX_LIST: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    Valid = 1,
    NotFound = 2,
    Revoked = 3,
    Expired = 4,
}

impl KeyState {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Valid,
            2 => Self::NotFound,
            3 => Self::Revoked,
            4 => Self::Expired,
            _ => return None,
        })
    }
}

/// What the key service said about one key, as cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub hash: [u8; 32],
    pub state: KeyState,
    /// When the answer was received (host clock, ms since the Unix epoch).
    pub fetched_at_ms: u64,
    /// When the key (or this secret, during a rotation grace) stops working; 0 = never.
    pub expires_at_s: i64,
    /// The change-feed head when the key service answered.
    pub feed_seq: u64,
    /// The change feed's epoch when the lookup was dispatched (see [`Stamp::epoch`]): an
    /// answer asked for before a feed reset is not trusted after it, even when it arrives late.
    pub epoch: u64,
    pub key_id: String,
    pub consumer_id: String,
    pub display_prefix: String,
    pub scopes: Vec<String>,
    pub tier: String,
    pub limits: Vec<Limit>,
    /// The hashed secret is the key's previous one (during a rotation grace): its uses are
    /// reported apart, for the key service's `revoke_unused_previous_after`.
    pub previous_secret: bool,
}

impl Entry {
    /// A negative entry ("no such key").
    pub fn not_found(hash: [u8; 32], now_ms: u64, feed_seq: u64, epoch: u64) -> Self {
        Self {
            hash,
            state: KeyState::NotFound,
            fetched_at_ms: now_ms,
            expires_at_s: 0,
            feed_seq,
            epoch,
            key_id: String::new(),
            consumer_id: String::new(),
            display_prefix: String::new(),
            scopes: Vec::new(),
            tier: String::new(),
            limits: Vec::new(),
            previous_secret: false,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(96 + self.key_id.len() + self.consumer_id.len());
        out.push(ENTRY_VERSION);
        out.extend_from_slice(&self.hash);
        out.push(self.state as u8);
        out.push(u8::from(self.previous_secret));
        out.extend_from_slice(&self.fetched_at_ms.to_le_bytes());
        out.extend_from_slice(&self.expires_at_s.to_le_bytes());
        out.extend_from_slice(&self.feed_seq.to_le_bytes());
        out.extend_from_slice(&self.epoch.to_le_bytes());
        put_str(&mut out, &self.key_id);
        put_str(&mut out, &self.consumer_id);
        put_str(&mut out, &self.display_prefix);
        put_len(&mut out, self.scopes.len().min(MAX_LIST));
        for s in self.scopes.iter().take(MAX_LIST) {
            put_str(&mut out, s);
        }
        put_str(&mut out, &self.tier);
        put_len(&mut out, self.limits.len().min(MAX_LIST));
        for l in self.limits.iter().take(MAX_LIST) {
            out.extend_from_slice(&l.rate.to_le_bytes());
            out.extend_from_slice(&l.period_secs.to_le_bytes());
            out.extend_from_slice(&l.burst.to_le_bytes());
        }
        out
    }

    /// Decodes an entry; `None` for anything malformed (treated as a miss).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader { bytes, pos: 0 };
        if r.u8()? != ENTRY_VERSION {
            return None;
        }
        let hash: [u8; 32] = r.take(32)?.try_into().ok()?;
        let state = KeyState::from_u8(r.u8()?)?;
        let previous_secret = match r.u8()? {
            0 => false,
            1 => true,
            _ => return None,
        };
        let fetched_at_ms = r.u64()?;
        let expires_at_s = r.u64()? as i64;
        let feed_seq = r.u64()?;
        let epoch = r.u64()?;
        let key_id = r.str()?;
        let consumer_id = r.str()?;
        let display_prefix = r.str()?;
        let n = r.list_len()?;
        let mut scopes = Vec::with_capacity(n);
        for _ in 0..n {
            scopes.push(r.str()?);
        }
        let tier = r.str()?;
        let n = r.list_len()?;
        let mut limits = Vec::with_capacity(n);
        for _ in 0..n {
            limits.push(Limit { rate: r.u64()?, period_secs: r.u64()?, burst: r.u64()? });
        }
        if r.pos != bytes.len() {
            return None;
        }
        Some(Self {
            hash,
            state,
            fetched_at_ms,
            expires_at_s,
            feed_seq,
            epoch,
            key_id,
            consumer_id,
            display_prefix,
            scopes,
            tier,
            limits,
            previous_secret,
        })
    }

    /// Whether the key may be used at `now_s`: valid and not past its expiry.
    pub fn usable_at(&self, now_s: i64) -> Result<(), KeyState> {
        match self.state {
            KeyState::Valid if self.expires_at_s == 0 || now_s < self.expires_at_s => Ok(()),
            KeyState::Valid => Err(KeyState::Expired),
            other => Err(other),
        }
    }

    /// What the entry recorded of the change feed.
    pub fn stamp(&self) -> Stamp {
        Stamp { epoch: self.epoch, seq: self.feed_seq }
    }

    /// Whether every one of `required` is among the key's scopes.
    pub fn has_scopes(&self, required: &[String]) -> bool {
        required.iter().all(|r| self.scopes.iter().any(|s| s == r))
    }
}

fn put_len(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&(n.min(usize::from(u16::MAX)) as u16).to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Strings from the key service are far below the cap; cut at a char boundary otherwise.
    let mut end = s.len().min(MAX_STR);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    put_len(out, end);
    out.extend_from_slice(&s.as_bytes()[..end]);
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let out = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(out)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn len(&mut self) -> Option<usize> {
        let n = usize::from(u16::from_le_bytes(self.take(2)?.try_into().ok()?));
        (n <= MAX_STR).then_some(n)
    }
    /// A list's length: at most what [`Entry::encode`] writes.
    fn list_len(&mut self) -> Option<usize> {
        self.len().filter(|n| *n <= MAX_LIST)
    }
    fn str(&mut self) -> Option<String> {
        let n = self.len()?;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

/// The slot of a key hash among `slots` cache slots.
pub fn cache_slot(hash: &[u8; 32], slots: u32) -> u32 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash[..8]);
    (u64::from_le_bytes(first) % u64::from(slots.max(1))) as u32
}

/// How a cached entry may be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Within its TTL and not invalidated: use it.
    Fresh(Entry),
    /// Past its TTL but within the stale window: ask the key service; if it cannot answer,
    /// this entry may still be used.
    Stale(Entry),
    /// Nothing usable: ask the key service.
    Miss,
}

/// How a cached answer may be used now (see [`usable`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    Fresh,
    Stale,
    Miss,
}

/// Decides how the entry found in a key's slot may be used at `now_ms`, `freshness` being what
/// the change feed says now about the entry's key id.
pub fn classify(
    entry: Option<Entry>,
    hash: &[u8; 32],
    now_ms: u64,
    freshness: Freshness,
    cfg: &CacheConfig,
) -> Lookup {
    let Some(entry) = entry else {
        return Lookup::Miss;
    };
    match usable(&entry, hash, now_ms, freshness, cfg) {
        Use::Fresh => Lookup::Fresh(entry),
        Use::Stale => Lookup::Stale(entry),
        Use::Miss => Lookup::Miss,
    }
}

/// [`classify`] without taking the entry: how `entry` may be used for the key `hash`.
pub fn usable(entry: &Entry, hash: &[u8; 32], now_ms: u64, freshness: Freshness, cfg: &CacheConfig) -> Use {
    if entry.hash != *hash {
        return Use::Miss;
    }
    // A negative answer is about no key id, so no invalidation slot: only its epoch counts.
    let freshness = if entry.key_id.is_empty() { Freshness::epoch_only(freshness.epoch) } else { freshness };
    if feed::invalidated(entry.stamp(), freshness) {
        // Asked for before the key service's store went back to an older state, or something
        // changed about this key since (perhaps a revocation): never serve it, not even stale.
        return Use::Miss;
    }
    let ttl = match entry.state {
        KeyState::NotFound => cfg.negative_ttl,
        _ => cfg.ttl,
    };
    // A clock that went backwards makes the entry younger, never older than its TTL.
    let age = Duration::from_millis(now_ms.saturating_sub(entry.fetched_at_ms));
    if age < ttl {
        Use::Fresh
    } else if entry.state == KeyState::Valid && age < ttl + cfg.stale_window {
        Use::Stale
    } else {
        Use::Miss
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::tests::changes;
    use crate::feed::{FeedState, INVALIDATION_SLOTS, Invalidation, feed_step, invalidation_slot};

    fn cfg() -> CacheConfig {
        CacheConfig {
            ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(5),
            stale_window: Duration::from_secs(300),
            slots: 1024,
        }
    }

    fn valid(hash: [u8; 32], fetched_at_ms: u64) -> Entry {
        Entry {
            hash,
            state: KeyState::Valid,
            fetched_at_ms,
            expires_at_s: 0,
            feed_seq: 10,
            epoch: 0,
            key_id: "key_abc".into(),
            consumer_id: "alice".into(),
            display_prefix: "tgk_abcdef".into(),
            scopes: vec!["read".into(), "write".into()],
            tier: "gold".into(),
            limits: vec![Limit { rate: 10, period_secs: 1, burst: 20 }],
            previous_secret: false,
        }
    }

    #[test]
    fn entry_round_trips() {
        let e = valid([7; 32], 1234);
        assert_eq!(Entry::decode(&e.encode()), Some(e));
        let previous = Entry { previous_secret: true, ..valid([8; 32], 1234) };
        assert_eq!(Entry::decode(&previous.encode()), Some(previous.clone()));
        let mut bad = previous.encode();
        bad[34] = 2;
        assert_eq!(Entry::decode(&bad), None, "a flag byte other than 0 or 1");
        let n = Entry::not_found([1; 32], 5, 3, 2);
        assert_eq!(Entry::decode(&n.encode()), Some(n));
    }

    #[test]
    fn corrupt_entries_decode_to_none() {
        let bytes = valid([7; 32], 1234).encode();
        for cut in 0..bytes.len() {
            assert_eq!(Entry::decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Entry::decode(&longer), None);
        let mut bad_version = bytes.clone();
        bad_version[0] = 9;
        assert_eq!(Entry::decode(&bad_version), None);
        let mut bad_state = bytes;
        bad_state[33] = 0;
        assert_eq!(Entry::decode(&bad_state), None);
    }

    /// An entry's bytes with `scopes` one-byte scopes and `limits` zero limits.
    fn entry_bytes(scopes: usize, limits: usize) -> Vec<u8> {
        let mut bytes = vec![ENTRY_VERSION];
        bytes.extend_from_slice(&[7; 32]);
        bytes.push(KeyState::Valid as u8);
        bytes.push(0); // not the previous secret
        bytes.extend_from_slice(&[0; 32]); // fetched_at_ms, expires_at_s, feed_seq, epoch
        bytes.extend_from_slice(&[0; 6]); // key_id, consumer_id, display_prefix: empty
        bytes.extend_from_slice(&u16::try_from(scopes).unwrap().to_le_bytes());
        for _ in 0..scopes {
            bytes.extend_from_slice(&[1, 0, b's']);
        }
        bytes.extend_from_slice(&[0; 2]); // tier: empty
        bytes.extend_from_slice(&u16::try_from(limits).unwrap().to_le_bytes());
        bytes.extend(std::iter::repeat_n(0, 24 * limits));
        bytes
    }

    /// The `shared_data` fuzz target's round-trip property failed on such entries (inputs in
    /// `fuzz/regressions/shared_data/`): `encode` writes at most `MAX_LIST` scopes and limits,
    /// so `decode` must not accept more, or re-encoding a decoded entry silently drops some.
    #[test]
    fn lists_longer_than_encode_writes_do_not_decode() {
        for (scopes, limits) in [(MAX_LIST + 1, 0), (0, MAX_LIST + 1), (1024, 0)] {
            assert_eq!(Entry::decode(&entry_bytes(scopes, limits)), None, "{scopes} scopes, {limits} limits");
        }
        let full = Entry::decode(&entry_bytes(MAX_LIST, MAX_LIST)).unwrap();
        assert_eq!((full.scopes.len(), full.limits.len()), (MAX_LIST, MAX_LIST));
        assert_eq!(Entry::decode(&full.encode()), Some(full));
    }

    #[test]
    fn fresh_within_ttl_then_stale_then_miss() {
        let e = valid([1; 32], 1_000_000);
        let f = Freshness::default();
        assert!(matches!(
            classify(Some(e.clone()), &[1; 32], 1_000_000 + 59_999, f, &cfg()),
            Lookup::Fresh(_)
        ));
        assert!(matches!(
            classify(Some(e.clone()), &[1; 32], 1_000_000 + 60_000, f, &cfg()),
            Lookup::Stale(_)
        ));
        assert_eq!(classify(Some(e), &[1; 32], 1_000_000 + 360_000, f, &cfg()), Lookup::Miss);
    }

    #[test]
    fn negative_entries_use_the_short_ttl_and_are_never_stale() {
        let n = Entry::not_found([2; 32], 1_000, 0, 0);
        let f = Freshness::default();
        assert!(matches!(classify(Some(n.clone()), &[2; 32], 5_999, f, &cfg()), Lookup::Fresh(_)));
        assert_eq!(classify(Some(n), &[2; 32], 6_000, f, &cfg()), Lookup::Miss);
    }

    #[test]
    fn slot_collision_is_a_miss_not_another_keys_identity() {
        let e = valid([1; 32], 0);
        assert_eq!(classify(Some(e), &[9; 32], 1, Freshness::default(), &cfg()), Lookup::Miss);
    }

    #[test]
    fn a_newer_change_for_the_key_invalidates_even_within_ttl() {
        let e = valid([1; 32], 0); // feed_seq 10
        let newer = Freshness { epoch: 0, invalidated_at: 11, base: 0 };
        assert_eq!(classify(Some(e.clone()), &[1; 32], 1, newer, &cfg()), Lookup::Miss);
        let older = Freshness { epoch: 0, invalidated_at: 10, base: 0 };
        assert!(matches!(classify(Some(e.clone()), &[1; 32], 1, older, &cfg()), Lookup::Fresh(_)));
        let rebased = Freshness { epoch: 0, invalidated_at: 0, base: 11 };
        assert_eq!(classify(Some(e), &[1; 32], 1, rebased, &cfg()), Lookup::Miss);
    }

    #[test]
    fn clock_going_backwards_keeps_the_entry_fresh() {
        let e = valid([1; 32], 10_000);
        assert!(matches!(classify(Some(e), &[1; 32], 5_000, Freshness::default(), &cfg()), Lookup::Fresh(_)));
    }

    #[test]
    fn expired_key_is_rejected_even_when_cached() {
        let mut e = valid([1; 32], 0);
        e.expires_at_s = 100;
        assert_eq!(e.usable_at(99), Ok(()));
        assert_eq!(e.usable_at(100), Err(KeyState::Expired));
        let mut r = valid([1; 32], 0);
        r.state = KeyState::Revoked;
        assert_eq!(r.usable_at(0), Err(KeyState::Revoked));
    }

    #[test]
    fn scopes_must_all_be_present() {
        let e = valid([1; 32], 0);
        assert!(e.has_scopes(&[]));
        assert!(e.has_scopes(&["read".into()]));
        assert!(e.has_scopes(&["read".into(), "write".into()]));
        assert!(!e.has_scopes(&["admin".into()]));
    }

    #[test]
    fn slots_are_bounded_and_spread() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..10_000u32 {
            let hash = crate::key::key_hash(&i.to_string());
            let s = cache_slot(&hash, 64);
            assert!(s < 64);
            seen.insert(s);
        }
        assert_eq!(seen.len(), 64);
        assert!(invalidation_slot("key_x") < INVALIDATION_SLOTS);
        assert_eq!(invalidation_slot("key_x"), invalidation_slot("key_x"));
    }

    #[test]
    fn an_answer_asked_for_before_a_feed_reset_is_a_miss_within_its_ttl_and_never_served_stale() {
        let fresh_now = 1_000;
        let stale_now = 61_000;
        let f = Freshness::default();
        let valid_before = valid([1; 32], 0); // epoch 0
        let mut revoked_before = valid([1; 32], 0);
        revoked_before.state = KeyState::Revoked;
        let unknown_before = Entry::not_found([1; 32], 0, 10, 0);
        for entry in [valid_before.clone(), revoked_before, unknown_before] {
            assert_eq!(
                classify(Some(entry), &[1; 32], fresh_now, Freshness { epoch: 1, ..f }, &cfg()),
                Lookup::Miss
            );
        }
        assert_eq!(
            classify(Some(valid_before.clone()), &[1; 32], stale_now, Freshness { epoch: 1, ..f }, &cfg()),
            Lookup::Miss
        );
        // An answer of the current epoch is used; so is one of an epoch the reader has not
        // learned of yet (a worker whose view of the feed lags).
        let current = Entry { epoch: 1, ..valid_before };
        assert!(matches!(
            classify(Some(current.clone()), &[1; 32], fresh_now, Freshness { epoch: 1, ..f }, &cfg()),
            Lookup::Fresh(_)
        ));
        assert!(matches!(
            classify(Some(current.clone()), &[1; 32], stale_now, Freshness { epoch: 1, ..f }, &cfg()),
            Lookup::Stale(_)
        ));
        assert!(matches!(classify(Some(current), &[1; 32], fresh_now, f, &cfg()), Lookup::Fresh(_)));
    }

    #[test]
    fn a_restored_store_neither_keeps_old_answers_nor_loses_new_revocations() {
        let cfg = cfg();
        // Lost timeline (epoch 0): key_abc changed at 18; its answer cached at 20.
        let state = FeedState { started: true, cursor: 20, base: 0, epoch: 0, mark: 0, busy_until_ms: 0 };
        let lost_slot = Invalidation { epoch: 0, seq: 18 }.encode();
        let cached = Entry { feed_seq: 20, ..valid([1; 32], 0) };

        // The store is restored to its state at 12.
        let state = feed_step(state, &[], 12).next;
        let freshness = |epoch| Freshness {
            epoch,
            invalidated_at: Invalidation::seq_in(Some(&lost_slot[..]), epoch),
            base: state.base,
        };
        assert_eq!(classify(Some(cached), &[1; 32], 1, freshness(state.epoch), &cfg), Lookup::Miss);

        // Asked again: the answer of the new timeline (head 12) is cached and used.
        let refetched = Entry { feed_seq: 12, epoch: state.epoch, ..valid([1; 32], 0) };
        let f = freshness(state.epoch);
        assert!(matches!(classify(Some(refetched.clone()), &[1; 32], 1, f, &cfg), Lookup::Fresh(_)));

        // Revoked at 13 on the new timeline (the lost one had 13 too).
        let step = feed_step(state, &changes(&[(13, "key_abc")]), 13);
        let (_, seq) = step.invalidate[0];
        let raised = Invalidation::raised(Some(&lost_slot[..]), Invalidation { epoch: step.next.epoch, seq });
        let slot = raised.unwrap().encode();
        let f = Freshness {
            epoch: step.next.epoch,
            invalidated_at: Invalidation::seq_in(Some(&slot[..]), step.next.epoch),
            base: step.next.base,
        };
        assert_eq!(classify(Some(refetched), &[1; 32], 1, f, &cfg), Lookup::Miss);
    }
}
