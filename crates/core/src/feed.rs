//! The key service's change feed as the caches of its answers use it: the consumer's state and
//! how a page of changes moves it ([`feed_step`]), feed epochs, invalidation slots, and whether a
//! cached answer is out of date ([`invalidated`]).
//!
//! The one owner of this protocol. The poller in `tollgate_host::feed` keeps these records in
//! shared data (and alone names their keys); the caches of key-auth
//! ([`crate::key_auth::cache`]) and request-signing ([`crate::signature::cache`]) keep their own
//! entries, each stamped with what it recorded of the feed ([`Stamp`]), and ask [`invalidated`]
//! whether the feed has since retired it.
//!
//! Revocations and updates arrive through the key service's change feed as key ids. A fixed
//! array of "invalidation" slots maps a key id to the highest change sequence seen for any key
//! id in that slot ([`invalidation_slot`]); an answer fetched at an older sequence is out of
//! date. Two key ids sharing an invalidation slot only cause an extra lookup, never a stale
//! answer.
//!
//! Sequence numbers only order changes of one timeline. A key service whose store is restored
//! from a backup goes back to the backup's head and numbers its next changes with sequences the
//! lost timeline had already used, so neither an answer's sequence nor an invalidation slot's can
//! be compared across the restore. The feed consumer therefore counts timelines: it bumps the
//! feed's *epoch* whenever the head goes backwards, or the change it last applied is no longer
//! the one the service has at that sequence (the restored store got as far again before the
//! consumer polled: see [`FeedState::mark`]) ([`feed_step`]). Every answer carries the
//! epoch read when its lookup was dispatched, and every invalidation slot the epoch it was raised
//! in ([`Invalidation`]); an answer of an older epoch is out of date (never served stale), and a
//! slot of an older epoch invalidates nothing in the current one.

/// Number of invalidation slots.
pub const INVALIDATION_SLOTS: u32 = 4096;

/// The invalidation slot of a key id (FNV-1a).
pub fn invalidation_slot(key_id: &str) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(INVALIDATION_SLOTS)) as u32
}

/// What the change feed says, at a lookup, about the answers cached for one id.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Freshness {
    /// The feed's current epoch (see [`FeedState::epoch`]).
    pub epoch: u64,
    /// The highest change sequence seen in that epoch for the id's invalidation slot.
    pub invalidated_at: u64,
    /// Entries fetched before this sequence predate what the feed consumer has seen and are
    /// re-checked (set when the consumer starts or skips ahead).
    pub base: u64,
}

impl Freshness {
    /// What the feed says about an answer about no id (key-auth's "no such key"): it has no
    /// invalidation slot, so only its epoch counts.
    pub fn epoch_only(epoch: u64) -> Self {
        Self { epoch, ..Self::default() }
    }
}

/// What a cached answer recorded of the change feed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stamp {
    /// The feed's epoch when the lookup was dispatched: an answer asked for before a feed reset
    /// is not trusted after it, even when it arrives late.
    pub epoch: u64,
    /// The feed's head when the key service answered.
    pub seq: u64,
}

/// Whether the feed retired an answer that recorded `stamp`, by what it says now (`now`): the
/// answer was asked for in an older epoch (the key service's store went back to an older state
/// since, so whatever it said, valid, revoked or unknown, may no longer hold), or fetched before
/// a change to its id (perhaps a revocation) or before the consumer's base. Either way it is
/// never served, not even stale. An answer of a newer epoch than `now` knows is not retired: the
/// reader's view of the feed lags.
pub fn invalidated(stamp: Stamp, now: Freshness) -> bool {
    stamp.epoch < now.epoch || now.invalidated_at > stamp.seq || stamp.seq < now.base
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
pub(crate) mod tests {
    use super::*;

    /// Changes as (seq, key id), each with a mark of its own.
    pub(crate) fn changes(list: &[(u64, &str)]) -> Vec<FeedChange> {
        list.iter()
            .map(|(seq, key_id)| FeedChange {
                seq: *seq,
                key_id: (*key_id).to_owned(),
                mark: change_mark(2, key_id, "c", *seq as i64),
            })
            .collect()
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
