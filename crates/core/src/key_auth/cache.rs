//! The verified-key cache kept in proxy-wasm shared data, shared by every worker of one Envoy.
//!
//! Shared data has no delete and no per-key expiry, so the cache is a fixed array of slots:
//! a key's slot is its SHA-256 modulo the slot count. A slot holds one entry carrying the full
//! hash, so a collision only evicts (the newer answer overwrites the older one) and can never
//! hand one key's identity to another. Memory is bounded by `slots × entry size`.
//!
//! Revocations and updates arrive through the key service's change feed as key ids. A second,
//! fixed array of "invalidation" slots maps a key id to the highest change sequence seen for
//! any key id in that slot; an entry fetched at an older sequence is treated as a miss. Two key
//! ids sharing an invalidation slot only cause an extra lookup, never a stale answer.
//!
//! Sequence numbers only order changes of one timeline. A key service whose store is restored
//! from a backup goes back to the backup's head and numbers its next changes with sequences the
//! lost timeline had already used, so neither an entry's sequence nor an invalidation slot's can
//! be compared across the restore. The feed consumer therefore counts timelines: it bumps the
//! feed's *epoch* whenever the head goes backwards, or the change it last applied is no longer
//! the one the service has at that sequence (the restored store got as far again before the
//! consumer polled: see [`FeedState::mark`]) ([`feed_step`]). Every entry carries the
//! epoch read when its lookup was dispatched, and every invalidation slot the epoch it was raised
//! in ([`Invalidation`]); an entry of an older epoch is a miss (never served stale), and a slot
//! of an older epoch invalidates nothing in the current one.

use std::time::Duration;

use super::config::CacheConfig;
/// The key's limits an entry carries are published as they are (see
/// [`crate::identity::PROP_RATE_LIMIT`]).
pub use crate::identity::Limit;

/// Number of invalidation slots.
pub const INVALIDATION_SLOTS: u32 = 4096;

const ENTRY_VERSION: u8 = 2;
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
    /// The change feed's epoch when the lookup was dispatched (see [`FeedState::epoch`]): an
    /// answer asked for before a feed reset is not trusted after it, even when it arrives late.
    pub epoch: u64,
    pub key_id: String,
    pub consumer_id: String,
    pub display_prefix: String,
    pub scopes: Vec<String>,
    pub tier: String,
    pub limits: Vec<Limit>,
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
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(96 + self.key_id.len() + self.consumer_id.len());
        out.push(ENTRY_VERSION);
        out.extend_from_slice(&self.hash);
        out.push(self.state as u8);
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

/// The invalidation slot of a key id (FNV-1a).
pub fn invalidation_slot(key_id: &str) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(INVALIDATION_SLOTS)) as u32
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

/// Facts from the change feed that bear on one entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Freshness {
    /// The highest change sequence seen for the entry's invalidation slot.
    pub invalidated_at: u64,
    /// Entries fetched before this sequence predate what the feed consumer has seen and are
    /// re-checked (set when the consumer starts or skips ahead).
    pub base: u64,
}

/// Decides how the entry found in a key's slot may be used at `now_ms`, `epoch` being the
/// change feed's current epoch.
pub fn classify(
    entry: Option<Entry>,
    hash: &[u8; 32],
    now_ms: u64,
    freshness: Freshness,
    epoch: u64,
    cfg: &CacheConfig,
) -> Lookup {
    let Some(entry) = entry else {
        return Lookup::Miss;
    };
    if entry.hash != *hash {
        return Lookup::Miss;
    }
    if entry.epoch < epoch {
        // Asked for before the key service's store went back to an older state: whatever it
        // said (valid, revoked, unknown) may no longer hold. Never serve it, not even stale.
        return Lookup::Miss;
    }
    let stale_by_feed = !entry.key_id.is_empty()
        && (freshness.invalidated_at > entry.feed_seq || entry.feed_seq < freshness.base);
    if stale_by_feed {
        // Something changed about this key (perhaps a revocation): never serve it stale.
        return Lookup::Miss;
    }
    let ttl = match entry.state {
        KeyState::NotFound => cfg.negative_ttl,
        _ => cfg.ttl,
    };
    // A clock that went backwards makes the entry younger, never older than its TTL.
    let age = Duration::from_millis(now_ms.saturating_sub(entry.fetched_at_ms));
    if age < ttl {
        Lookup::Fresh(entry)
    } else if entry.state == KeyState::Valid && age < ttl + cfg.stale_window {
        Lookup::Stale(entry)
    } else {
        Lookup::Miss
    }
}

/// The change-feed consumer's state, one record shared by all workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FeedState {
    /// Whether the consumer has learned the feed's head once.
    pub started: bool,
    /// The last change sequence applied.
    pub cursor: u64,
    /// See [`Freshness::base`].
    pub base: u64,
    /// How many times the feed went backwards (a store restored from a backup): sequences of
    /// one epoch are never compared with another's. See the module documentation.
    pub epoch: u64,
    /// The [`change_mark`] of the change at `cursor`; 0 when not known (no change applied since
    /// the consumer started at the head). Each poll asks for that change again: a service that
    /// now has another change at that sequence was restored and has since got as far again.
    pub mark: u64,
    /// A worker is polling until this time (ms); others skip their turn.
    pub busy_until_ms: u64,
}

const FEED_STATE_LEN: usize = 41;

impl FeedState {
    pub fn encode(&self) -> [u8; FEED_STATE_LEN] {
        let mut out = [0u8; FEED_STATE_LEN];
        out[..8].copy_from_slice(&self.cursor.to_le_bytes());
        out[8..16].copy_from_slice(&self.base.to_le_bytes());
        out[16..24].copy_from_slice(&self.busy_until_ms.to_le_bytes());
        out[24..32].copy_from_slice(&self.epoch.to_le_bytes());
        out[32..40].copy_from_slice(&self.mark.to_le_bytes());
        out[40] = u8::from(self.started);
        out
    }

    /// Decodes a record; `None` for anything else (the consumer then starts over at the head,
    /// re-checking everything cached).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != FEED_STATE_LEN || bytes[40] > 1 {
            return None;
        }
        let word = |i: usize| bytes[i..i + 8].try_into().ok().map(u64::from_le_bytes);
        Some(Self {
            started: bytes[40] == 1,
            cursor: word(0)?,
            base: word(8)?,
            busy_until_ms: word(16)?,
            epoch: word(24)?,
            mark: word(32)?,
        })
    }

    /// The `after_seq` of the next poll: one before the cursor when the change at the cursor is
    /// known, so the answer shows whether the service still has it (see [`Self::mark`]).
    pub fn after_seq(&self) -> u64 {
        if self.mark == 0 { self.cursor } else { self.cursor.saturating_sub(1) }
    }

    /// The record to store when a poll finishes with `next` while the stored record is
    /// `current`: a later epoch wins (a reset is never undone by a poll that started before
    /// it), and within one epoch the cursor never moves backwards (a record kept has its lease
    /// released).
    pub fn merge(current: Self, next: Self) -> Self {
        let keep_current = current.epoch > next.epoch
            || (current.epoch == next.epoch && current.cursor > next.cursor && current.base >= next.base);
        if keep_current { Self { busy_until_ms: 0, ..current } } else { next }
    }
}

/// An invalidation slot's value: the highest change sequence seen for the key ids of the slot,
/// and the feed epoch it was seen in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Invalidation {
    pub epoch: u64,
    pub seq: u64,
}

impl Invalidation {
    pub fn encode(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.seq.to_le_bytes());
        out[8..].copy_from_slice(&self.epoch.to_le_bytes());
        out
    }

    /// Decodes a slot; `None` when malformed (treated as invalidated: see [`Self::seq_in`]).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; 16] = bytes.try_into().ok()?;
        let word = |i: usize| bytes[i..i + 8].try_into().ok().map(u64::from_le_bytes);
        Some(Self { seq: word(0)?, epoch: word(8)? })
    }

    /// The slot's sequence as seen from `epoch`: its own in the same epoch; 0 when it was raised
    /// in an older one (nothing has changed in this epoch yet); `u64::MAX`, invalidating
    /// everything, when it comes from a newer epoch than the reader knows, or is malformed.
    pub fn seq_in(stored: Option<&[u8]>, epoch: u64) -> u64 {
        match stored.map(Self::decode) {
            None => 0,
            Some(Some(slot)) if slot.epoch == epoch => slot.seq,
            Some(Some(slot)) if slot.epoch < epoch => 0,
            Some(_) => u64::MAX,
        }
    }

    /// The value to store to raise the slot to `to`; `None` when it already holds (an equal or
    /// higher sequence of the same epoch, or any value of a newer epoch).
    pub fn raised(stored: Option<&[u8]>, to: Self) -> Option<Self> {
        match stored.and_then(Self::decode) {
            Some(slot) if slot.epoch > to.epoch => None,
            Some(slot) if slot.epoch == to.epoch && slot.seq >= to.seq => None,
            _ => Some(to),
        }
    }
}

/// One change of a ListChanges answer, as the consumer uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedChange {
    pub seq: u64,
    /// Empty for consumer-level changes.
    pub key_id: String,
    /// See [`change_mark`].
    pub mark: u64,
}

/// A fingerprint of a change (FNV-1a over its kind, key id, consumer id and time; never 0):
/// the same sequence number on two timelines of a restored store almost surely carries
/// different changes.
pub fn change_mark(kind: i32, key_id: &str, consumer_id: &str, at: i64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let parts: [&[u8]; 5] =
        [&kind.to_le_bytes(), key_id.as_bytes(), &[0xff], consumer_id.as_bytes(), &at.to_le_bytes()];
    for b in parts.iter().flat_map(|p| p.iter()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.max(1)
}

/// What the feed consumer should do with a page of changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedStep {
    /// (invalidation slot, sequence) pairs to raise.
    pub invalidate: Vec<(u32, u64)>,
    pub next: FeedState,
}

/// Largest backlog the consumer works through change by change; beyond it, it skips to the
/// head and re-checks every cached entry instead.
pub const MAX_BACKLOG: u64 = 10_000;

/// Applies one ListChanges answer (asked for after [`FeedState::after_seq`]; `head` the
/// service's newest sequence) to the consumer state.
pub fn feed_step(state: FeedState, changes: &[FeedChange], head: u64) -> FeedStep {
    let mut next = FeedState { busy_until_ms: 0, started: true, ..state };
    // The change at the cursor, asked for again, is not the one applied: the service's store
    // was restored and has reached this sequence again with other changes. (An answer without
    // it tells nothing either way.)
    let replaced = state.mark != 0 && changes.iter().any(|c| c.seq == state.cursor && c.mark != state.mark);
    let went_back = state.started && (head < state.cursor || replaced);
    if went_back {
        // The key service's store went back to an older state (restored from a backup): what
        // was cached before, and the sequences seen before, belong to a timeline that is gone.
        next.epoch = state.epoch.saturating_add(1);
    }
    if !state.started || went_back || head - state.cursor > MAX_BACKLOG {
        // First start, a key service whose feed was reset, or a backlog too long to replay:
        // start at the head and treat everything cached before it as needing a re-check.
        next.cursor = head;
        next.base = head;
        next.mark = 0;
        return FeedStep { invalidate: Vec::new(), next };
    }
    let mut invalidate = Vec::new();
    for change in changes {
        if change.seq <= state.cursor {
            continue;
        }
        if !change.key_id.is_empty() {
            invalidate.push((invalidation_slot(&change.key_id), change.seq));
        }
        if change.seq > next.cursor {
            next.cursor = change.seq;
            next.mark = change.mark;
        }
    }
    FeedStep { invalidate, next }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Changes as (seq, key id), each with a mark of its own.
    fn changes(list: &[(u64, &str)]) -> Vec<FeedChange> {
        list.iter()
            .map(|(seq, key_id)| FeedChange {
                seq: *seq,
                key_id: (*key_id).to_owned(),
                mark: change_mark(2, key_id, "c", *seq as i64),
            })
            .collect()
    }

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
        }
    }

    #[test]
    fn entry_round_trips() {
        let e = valid([7; 32], 1234);
        assert_eq!(Entry::decode(&e.encode()), Some(e));
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
            classify(Some(e.clone()), &[1; 32], 1_000_000 + 59_999, f, 0, &cfg()),
            Lookup::Fresh(_)
        ));
        assert!(matches!(
            classify(Some(e.clone()), &[1; 32], 1_000_000 + 60_000, f, 0, &cfg()),
            Lookup::Stale(_)
        ));
        assert_eq!(classify(Some(e), &[1; 32], 1_000_000 + 360_000, f, 0, &cfg()), Lookup::Miss);
    }

    #[test]
    fn negative_entries_use_the_short_ttl_and_are_never_stale() {
        let n = Entry::not_found([2; 32], 1_000, 0, 0);
        let f = Freshness::default();
        assert!(matches!(classify(Some(n.clone()), &[2; 32], 5_999, f, 0, &cfg()), Lookup::Fresh(_)));
        assert_eq!(classify(Some(n), &[2; 32], 6_000, f, 0, &cfg()), Lookup::Miss);
    }

    #[test]
    fn slot_collision_is_a_miss_not_another_keys_identity() {
        let e = valid([1; 32], 0);
        assert_eq!(classify(Some(e), &[9; 32], 1, Freshness::default(), 0, &cfg()), Lookup::Miss);
    }

    #[test]
    fn a_newer_change_for_the_key_invalidates_even_within_ttl() {
        let e = valid([1; 32], 0); // feed_seq 10
        let newer = Freshness { invalidated_at: 11, base: 0 };
        assert_eq!(classify(Some(e.clone()), &[1; 32], 1, newer, 0, &cfg()), Lookup::Miss);
        let older = Freshness { invalidated_at: 10, base: 0 };
        assert!(matches!(classify(Some(e.clone()), &[1; 32], 1, older, 0, &cfg()), Lookup::Fresh(_)));
        let rebased = Freshness { invalidated_at: 0, base: 11 };
        assert_eq!(classify(Some(e), &[1; 32], 1, rebased, 0, &cfg()), Lookup::Miss);
    }

    #[test]
    fn clock_going_backwards_keeps_the_entry_fresh() {
        let e = valid([1; 32], 10_000);
        assert!(matches!(
            classify(Some(e), &[1; 32], 5_000, Freshness::default(), 0, &cfg()),
            Lookup::Fresh(_)
        ));
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
    fn feed_starts_at_head_and_rebases() {
        let step = feed_step(FeedState::default(), &[], 42);
        assert_eq!(
            step.next,
            FeedState { started: true, cursor: 42, base: 42, epoch: 0, mark: 0, busy_until_ms: 0 }
        );
        // A service whose feed is empty still starts the consumer: its first change is replayed.
        let empty = feed_step(FeedState::default(), &[], 0).next;
        assert!(empty.started);
        let first = feed_step(empty, &changes(&[(1, "key_a")]), 1);
        assert_eq!(first.invalidate, vec![(invalidation_slot("key_a"), 1)]);
        assert_eq!(first.next.base, 0);
        assert!(step.invalidate.is_empty());
    }

    #[test]
    fn feed_applies_changes_in_order_and_skips_seen_ones() {
        let state = FeedState { started: true, cursor: 5, base: 1, epoch: 0, mark: 0, busy_until_ms: 99 };
        let page = changes(&[(5, "key_old"), (6, "key_a"), (7, ""), (8, "key_b")]);
        let step = feed_step(state, &page, 8);
        let mark = page[3].mark;
        assert_eq!(
            step.next,
            FeedState { started: true, cursor: 8, base: 1, epoch: 0, mark, busy_until_ms: 0 }
        );
        assert_eq!(step.invalidate, vec![(invalidation_slot("key_a"), 6), (invalidation_slot("key_b"), 8)]);
    }

    #[test]
    fn feed_skips_ahead_on_a_long_backlog_or_a_reset_service() {
        let state = FeedState { started: true, cursor: 5, base: 1, epoch: 0, mark: 0, busy_until_ms: 0 };
        let step = feed_step(state, &changes(&[(6, "key_a")]), 5 + MAX_BACKLOG + 1);
        assert_eq!(step.next.base, 5 + MAX_BACKLOG + 1);
        let step = feed_step(state, &[], 3);
        assert_eq!(
            step.next,
            FeedState { started: true, cursor: 3, base: 3, epoch: 1, mark: 0, busy_until_ms: 0 }
        );
    }

    #[test]
    fn feed_state_round_trips() {
        let s = FeedState { started: true, cursor: 1, base: 2, epoch: 4, mark: 5, busy_until_ms: 3 };
        assert_eq!(FeedState::decode(&s.encode()), Some(s));
        assert_eq!(FeedState::decode(&[0; 24]), None);
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
            assert_eq!(classify(Some(entry), &[1; 32], fresh_now, f, 1, &cfg()), Lookup::Miss);
        }
        assert_eq!(classify(Some(valid_before.clone()), &[1; 32], stale_now, f, 1, &cfg()), Lookup::Miss);
        // An answer of the current epoch is used; so is one of an epoch the reader has not
        // learned of yet (a worker whose view of the feed lags).
        let current = Entry { epoch: 1, ..valid_before };
        assert!(matches!(
            classify(Some(current.clone()), &[1; 32], fresh_now, f, 1, &cfg()),
            Lookup::Fresh(_)
        ));
        assert!(matches!(
            classify(Some(current.clone()), &[1; 32], stale_now, f, 1, &cfg()),
            Lookup::Stale(_)
        ));
        assert!(matches!(classify(Some(current), &[1; 32], fresh_now, f, 0, &cfg()), Lookup::Fresh(_)));
    }

    #[test]
    fn a_feed_going_backwards_starts_a_new_epoch_and_nothing_else_does() {
        let state = FeedState { started: true, cursor: 20, base: 4, epoch: 2, mark: 0, busy_until_ms: 9 };
        let restored = feed_step(state, &[], 12).next;
        assert_eq!(
            restored,
            FeedState { started: true, cursor: 12, base: 12, epoch: 3, mark: 0, busy_until_ms: 0 }
        );
        assert_eq!(feed_step(state, &[], 20).next.epoch, 2, "same head");
        assert_eq!(feed_step(state, &changes(&[(21, "key_a")]), 21).next.epoch, 2, "moving on");
        assert_eq!(feed_step(state, &[], 20 + MAX_BACKLOG + 1).next.epoch, 2, "skipping ahead");
        assert_eq!(feed_step(FeedState::default(), &[], 0).next.epoch, 0, "first start");
        // The first change of the new timeline is applied, in the new epoch.
        let step = feed_step(restored, &changes(&[(13, "key_a")]), 13);
        assert_eq!(step.invalidate, vec![(invalidation_slot("key_a"), 13)]);
        assert_eq!(step.next.epoch, 3);
    }

    #[test]
    fn invalidation_slots_only_count_within_their_epoch() {
        let slot = |epoch, seq| Some(Invalidation { epoch, seq }.encode().to_vec());
        assert_eq!(Invalidation::seq_in(None, 3), 0);
        assert_eq!(Invalidation::seq_in(slot(3, 18).as_deref(), 3), 18);
        assert_eq!(Invalidation::seq_in(slot(2, 18).as_deref(), 3), 0, "the lost timeline's");
        assert_eq!(Invalidation::seq_in(slot(4, 1).as_deref(), 3), u64::MAX, "a newer epoch");
        assert_eq!(Invalidation::seq_in(Some(&[1, 2, 3][..]), 3), u64::MAX, "malformed");

        let to = Invalidation { epoch: 3, seq: 13 };
        assert_eq!(Invalidation::raised(None, to), Some(to));
        assert_eq!(Invalidation::raised(slot(2, 18).as_deref(), to), Some(to), "over an older epoch");
        assert_eq!(Invalidation::raised(slot(3, 12).as_deref(), to), Some(to));
        assert_eq!(Invalidation::raised(slot(3, 13).as_deref(), to), None);
        assert_eq!(Invalidation::raised(slot(4, 1).as_deref(), to), None, "a newer epoch stays");
        assert_eq!(Invalidation::decode(&to.encode()), Some(to));
    }

    /// The whole story of a restore: answers cached on the lost timeline are re-checked, answers
    /// of the new one are cached despite the lost timeline's invalidations, and a change of the
    /// new timeline invalidates although the lost one had used its sequence number.
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
            invalidated_at: Invalidation::seq_in(Some(&lost_slot[..]), epoch),
            base: state.base,
        };
        assert_eq!(
            classify(Some(cached), &[1; 32], 1, freshness(state.epoch), state.epoch, &cfg),
            Lookup::Miss
        );

        // Asked again: the answer of the new timeline (head 12) is cached and used.
        let refetched = Entry { feed_seq: 12, epoch: state.epoch, ..valid([1; 32], 0) };
        let f = freshness(state.epoch);
        assert!(matches!(
            classify(Some(refetched.clone()), &[1; 32], 1, f, state.epoch, &cfg),
            Lookup::Fresh(_)
        ));

        // Revoked at 13 on the new timeline (the lost one had 13 too).
        let step = feed_step(state, &changes(&[(13, "key_abc")]), 13);
        let (_, seq) = step.invalidate[0];
        let raised = Invalidation::raised(Some(&lost_slot[..]), Invalidation { epoch: step.next.epoch, seq });
        let slot = raised.unwrap().encode();
        let f = Freshness {
            invalidated_at: Invalidation::seq_in(Some(&slot[..]), step.next.epoch),
            base: step.next.base,
        };
        assert_eq!(classify(Some(refetched), &[1; 32], 1, f, step.next.epoch, &cfg), Lookup::Miss);
    }

    #[test]
    fn a_finished_poll_never_undoes_a_reset_nor_moves_the_cursor_back() {
        let current = FeedState { started: true, cursor: 20, base: 20, epoch: 1, mark: 0, busy_until_ms: 7 };
        // A reset (new epoch) wins even though its cursor and base are lower.
        let reset = FeedState { started: true, cursor: 12, base: 12, epoch: 2, mark: 0, busy_until_ms: 0 };
        assert_eq!(FeedState::merge(current, reset), reset);
        // A poll of an older epoch finishing late does not undo it.
        assert_eq!(FeedState::merge(reset, current), FeedState { busy_until_ms: 0, ..reset });
        // Within an epoch the cursor does not move back.
        let behind = FeedState { cursor: 15, base: 4, ..current };
        assert_eq!(FeedState::merge(current, behind), FeedState { busy_until_ms: 0, ..current });
        let ahead = FeedState { cursor: 25, busy_until_ms: 3, ..current };
        assert_eq!(FeedState::merge(current, ahead), ahead);
    }

    #[test]
    fn a_restored_store_that_got_as_far_again_before_the_poll_is_detected_by_its_changes() {
        // Applied up to 20 (its mark known); the poll asks after 19.
        let applied = feed_step(
            FeedState { started: true, cursor: 18, ..FeedState::default() },
            &changes(&[(19, "key_a"), (20, "key_b")]),
            20,
        )
        .next;
        assert_eq!(applied.mark, changes(&[(20, "key_b")])[0].mark);
        assert_eq!(applied.after_seq(), 19);
        // Same change at 20: nothing happened.
        let same = feed_step(applied, &changes(&[(20, "key_b"), (21, "key_c")]), 21);
        assert_eq!((same.next.epoch, same.next.cursor), (0, 21));
        assert_eq!(same.invalidate, vec![(invalidation_slot("key_c"), 21)]);
        // Another change at 20 (the restored store's own 20th): a new epoch at the head.
        let other = feed_step(applied, &changes(&[(20, "key_x"), (21, "key_y"), (22, "key_z")]), 22);
        assert_eq!(
            other.next,
            FeedState { started: true, cursor: 22, base: 22, epoch: 1, mark: 0, busy_until_ms: 0 }
        );
        assert!(other.invalidate.is_empty());
        assert_eq!(other.next.after_seq(), 22, "the change at the head is not known yet");
        // An answer without the change at the cursor tells nothing.
        assert_eq!(feed_step(applied, &changes(&[(21, "key_y")]), 21).next.epoch, 0);
        // Without a known mark there is nothing to compare.
        let unmarked = FeedState { mark: 0, ..applied };
        assert_eq!(unmarked.after_seq(), 20);
        assert_eq!(feed_step(unmarked, &changes(&[(21, "key_y")]), 21).next.epoch, 0);
    }

    #[test]
    fn change_marks_tell_changes_apart() {
        let mark = change_mark(3, "key_a", "c_1", 100);
        assert_ne!(mark, 0);
        assert_eq!(mark, change_mark(3, "key_a", "c_1", 100));
        for other in [
            change_mark(2, "key_a", "c_1", 100),
            change_mark(3, "key_b", "c_1", 100),
            change_mark(3, "key_a", "c_2", 100),
            change_mark(3, "key_a", "c_1", 101),
            change_mark(3, "key_ac", "_1", 100),
        ] {
            assert_ne!(mark, other);
        }
    }
}
