//! A worker's own bounded cache of answers, in front of the cache in shared data.
//!
//! Shared data is one map for the whole proxy behind one lock, and every read copies the value
//! out; a cached answer read from it costs three reads per request (the answer, the feed's
//! record and the key id's invalidation slot). A worker instead keeps the answers it used in a
//! direct-mapped table of its own, and remembers with each one what the change feed said about
//! it ([`Freshness`]) and as of which [`View`] of the feed. The worker refreshes its view on its
//! tick (one read of the feed's record, which it makes anyway to take its polling turn); as long
//! as the view has not moved, nothing the feed could say about an answer has changed, so the
//! answer is used with no shared-data read at all. When the view moves (a change was applied,
//! the feed went back, or every answer must be re-checked), each answer is re-checked once, on
//! its next use. A revocation therefore reaches every worker within one poll interval of the
//! poller applying it, and no tick does work in proportion to the cache.
//!
//! A cache with no change feed (jwt-auth's verified tokens, which only expire) checks every answer
//! in the default view, which never moves.
//!
//! The table is direct-mapped (an answer's slot is fixed by its key hash): a lookup and an
//! insertion cost the same whatever the size, and a new answer simply replaces the one in its
//! slot.

use std::rc::Rc;

use crate::feed::{FeedState, Freshness};

/// What a worker last read of the feed's record: its state without the polling lease (which
/// changes at every poll without changing what the feed says about any answer).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct View(FeedState);

impl View {
    pub fn of(state: &FeedState) -> Self {
        Self(FeedState { busy_until_ms: 0, ..*state })
    }

    /// The feed's epoch in this view.
    pub fn epoch(&self) -> u64 {
        self.0.epoch
    }

    /// The last change sequence applied, in this view.
    pub fn cursor(&self) -> u64 {
        self.0.cursor
    }
}

/// What an answer is kept by: a key hash (key-auth) or a key id (request-signing).
pub trait LocalKey: PartialEq + Clone {
    /// Picks the key's slot; any well-spread number.
    fn spread(&self) -> u64;
}

impl LocalKey for [u8; 32] {
    fn spread(&self) -> u64 {
        let mut word = [0u8; 8];
        word.copy_from_slice(&self[..8]);
        u64::from_le_bytes(word)
    }
}

impl LocalKey for String {
    /// FNV-1a.
    fn spread(&self) -> u64 {
        self.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
    }
}

#[derive(Debug)]
struct Slot<K, T> {
    key: K,
    value: Rc<T>,
    /// What the feed said about the value, and in which view; `None` until first checked.
    checked: Option<(View, Freshness)>,
}

/// A worker's table of answers by key.
#[derive(Debug)]
pub struct Local<K, T> {
    slots: Vec<Option<Slot<K, T>>>,
}

/// An answer found in the table.
#[derive(Debug)]
pub struct Hit<T> {
    pub value: Rc<T>,
    /// What the feed said about it, if that still holds in the view asked about; `None` when it
    /// must be read again (then [`Local::checked`] records it).
    pub freshness: Option<Freshness>,
}

impl<K: LocalKey, T> Local<K, T> {
    /// A table of `slots` answers (at least one).
    pub fn new(slots: u32) -> Self {
        let slots = slots.max(1) as usize;
        Self { slots: std::iter::repeat_with(|| None).take(slots).collect() }
    }

    fn index(&self, key: &K) -> usize {
        (key.spread() % self.slots.len() as u64) as usize
    }

    /// The answer for `key`, with its freshness if it was checked in `view`.
    pub fn get(&self, key: &K, view: View) -> Option<Hit<T>> {
        let slot = self.slots[self.index(key)].as_ref().filter(|s| s.key == *key)?;
        let freshness = slot.checked.filter(|(seen, _)| *seen == view).map(|(_, f)| f);
        Some(Hit { value: Rc::clone(&slot.value), freshness })
    }

    /// Records what the feed says about `key`'s answer as of `view`.
    pub fn checked(&mut self, key: &K, view: View, freshness: Freshness) {
        let index = self.index(key);
        if let Some(slot) = self.slots[index].as_mut().filter(|s| s.key == *key) {
            slot.checked = Some((view, freshness));
        }
    }

    /// Keeps `value` for `key`, replacing whatever held its slot; `checked` as in
    /// [`Local::checked`], or `None` to have it checked on first use.
    pub fn insert(&mut self, key: K, value: Rc<T>, checked: Option<(View, Freshness)>) {
        let index = self.index(&key);
        self.slots[index] = Some(Slot { key, value, checked });
    }

    /// Forgets `key`'s answer.
    pub fn remove(&mut self, key: &K) {
        let index = self.index(key);
        if self.slots[index].as_ref().is_some_and(|s| s.key == *key) {
            self.slots[index] = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(first: u8, second: u8) -> [u8; 32] {
        let mut h = [0u8; 32];
        h[0] = first;
        h[31] = second;
        h
    }

    fn view(cursor: u64) -> View {
        View::of(&FeedState { started: true, cursor, ..FeedState::default() })
    }

    #[test]
    fn a_checked_answer_is_trusted_until_the_view_moves() {
        let mut local: Local<[u8; 32], &str> = Local::new(8);
        let fresh = Freshness { epoch: 0, invalidated_at: 3, base: 0 };
        local.insert(hash(1, 0), Rc::new("a"), Some((view(5), fresh)));
        let hit = local.get(&hash(1, 0), view(5)).expect("kept");
        assert_eq!(*hit.value, "a");
        assert_eq!(hit.freshness, Some(fresh));
        assert_eq!(local.get(&hash(1, 0), view(6)).expect("kept").freshness, None, "the view moved");
        local.checked(&hash(1, 0), view(6), fresh);
        assert_eq!(local.get(&hash(1, 0), view(6)).expect("kept").freshness, Some(fresh));
    }

    #[test]
    fn the_polling_lease_does_not_move_the_view() {
        let state = FeedState { started: true, cursor: 9, ..FeedState::default() };
        let leased = FeedState { busy_until_ms: 12_345, ..state };
        assert_eq!(View::of(&state), View::of(&leased));
        assert_ne!(View::of(&state), View::of(&FeedState { epoch: 1, ..state }));
        assert_ne!(View::of(&state), View::of(&FeedState { base: 9, ..state }));
    }

    #[test]
    fn a_slot_holds_one_answer_and_another_hash_misses() {
        let mut local: Local<[u8; 32], i32> = Local::new(1);
        local.insert(hash(1, 0), Rc::new(1), None);
        assert!(local.get(&hash(2, 0), view(0)).is_none());
        assert!(local.get(&hash(1, 0), view(0)).is_some_and(|h| h.freshness.is_none()));
        local.insert(hash(2, 0), Rc::new(2), None);
        assert!(local.get(&hash(1, 0), view(0)).is_none(), "replaced");
        local.remove(&hash(1, 0));
        assert!(local.get(&hash(2, 0), view(0)).is_some(), "removing another hash leaves it");
        local.remove(&hash(2, 0));
        assert!(local.get(&hash(2, 0), view(0)).is_none());
        // Hashes that differ only past the bytes that pick the slot are told apart.
        local.insert(hash(3, 1), Rc::new(3), None);
        assert!(local.get(&hash(3, 2), view(0)).is_none());
    }

    #[test]
    fn key_ids_are_kept_by_their_text() {
        let mut local: Local<String, i32> = Local::new(64);
        local.insert("key_a".to_owned(), Rc::new(1), None);
        assert!(local.get(&"key_a".to_owned(), view(0)).is_some_and(|h| *h.value == 1));
        assert!(local.get(&"key_b".to_owned(), view(0)).is_none());
    }
}
