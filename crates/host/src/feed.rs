//! The key service's change feed, consumed by the filters that cache key-service answers
//! (key-auth, request-signing): the one poller, and the only code that names the feed's
//! shared-data keys. A filter's store asks its [`Consumer`] what the feed says about a key id
//! ([`Consumer::freshness`]) and which epoch to stamp an answer with ([`Consumer::epoch`]); the
//! protocol itself (records, steps, epochs, invalidation) is `tollgate_core::feed`'s.
//!
//! One worker at a time polls: the consumer's record in shared data carries a lease. A page of
//! changes raises the invalidation slot of each changed key id to the change's sequence; a
//! cached answer fetched at an older sequence is then no longer used (see
//! `tollgate_core::feed::invalidated`). A head lower than the consumer's cursor, or another change
//! than the one applied at the cursor (each poll asks for it again), means the key service's
//! store went back to an older state (restored from a backup): the record's epoch is bumped,
//! which retires every answer cached and every invalidation recorded before it. After a
//! poll the lease is held until shortly before the next interval, so the whole proxy polls about
//! once per interval; a failure backs off one interval and is logged when the feed goes down and
//! when it comes back, not on every poll.

use std::cell::Cell;
use std::time::Duration;

use prost::Message;
use tollgate_core::config::KeyService;
use tollgate_core::feed::{
    FeedChange, FeedState, Freshness, Invalidation, change_mark, feed_step, invalidation_slot,
};
use tollgate_core::local::View;
use tollgate_proto::v1;

use crate::{Host, LogLevel, grpc_status, shared};

/// Changes asked for per poll.
pub const FEED_PAGE: u32 = 500;

/// What starting a poll did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Poll {
    /// Another worker holds the lease, or the interval has not passed.
    NotMyTurn,
    /// The call is on its way; its answer goes to [`Consumer::done`].
    Started(u32),
    /// The proxy refused the call.
    Refused,
}

/// What a poll's answer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    /// Changes applied; this many invalidation slots raised.
    Applied(usize),
    /// The key service did not answer usefully; the consumer backs off one interval.
    Failed,
    /// An invalidation could not be recorded; every cached answer is re-checked instead.
    Rebased,
    /// The feed went backwards (a store restored from a backup): a new epoch began, and every
    /// answer cached before it is asked for again.
    Reset,
}

/// One filter's change-feed consumer. `label` prefixes its log lines; `prefix` is the filter's
/// shared-data prefix (the record is `<prefix>feed`, invalidation slots `<prefix>i.<slot>`).
#[derive(Debug)]
pub struct Consumer {
    label: &'static str,
    prefix: String,
    failing: Cell<bool>,
    /// The newest feed epoch this worker has read from the record (on its tick, or at a poll's
    /// answer); see [`Consumer::seen_epoch`].
    epoch: Cell<u64>,
    /// The record as this worker last read it (see [`Consumer::view`]).
    view: Cell<View>,
}

impl Consumer {
    pub fn new(label: &'static str, prefix: &str) -> Self {
        Self {
            label,
            prefix: prefix.to_owned(),
            failing: Cell::new(false),
            epoch: Cell::new(0),
            view: Cell::new(View::default()),
        }
    }

    /// The newest feed epoch this worker has seen, without reading shared data: at most one tick
    /// behind the record. Behind is the safe side for stamping and checking cached answers: an
    /// answer stamped too old is asked for again, and one checked against an older epoch is
    /// at worst used until the next tick.
    pub fn seen_epoch(&self) -> u64 {
        self.epoch.get()
    }

    /// The feed's current epoch, read from the record: what to stamp into the answer of a
    /// lookup about to be made, and what an answer that arrives is checked against.
    pub fn epoch<H: Host + ?Sized>(&self, host: &H) -> u64 {
        self.state(host).epoch
    }

    /// What the feed says now about the answers cached for `key_id`: its epoch and base (one
    /// read of the record) and the key id's invalidation slot as seen in that epoch.
    pub fn freshness<H: Host + ?Sized>(&self, host: &H, key_id: &str) -> Freshness {
        let state = self.state(host);
        let slot = self.invalidation_key(invalidation_slot(key_id));
        Freshness {
            epoch: state.epoch,
            invalidated_at: read_invalidation(host, &slot, state.epoch),
            base: state.base,
        }
    }

    /// What this worker last read of the feed's record, on its tick or at a poll's answer: the
    /// view a worker's own cache checks its answers against ([`tollgate_core::local`]). An
    /// answer checked in this view stays as the feed said until the view moves.
    pub fn view(&self) -> View {
        self.view.get()
    }

    fn saw(&self, state: &FeedState) {
        self.epoch.set(self.epoch.get().max(state.epoch));
        if state.epoch >= self.view.get().epoch() {
            self.view.set(View::of(state));
        }
    }

    /// The shared-data key of the consumer's record.
    fn record_key(&self) -> String {
        format!("{}feed", self.prefix)
    }

    /// The shared-data key of the time (ms) a poll last reached the feed's head.
    fn current_key(&self) -> String {
        format!("{}feed.current", self.prefix)
    }

    /// How far this proxy's view of the feed may be behind the key service, in whole seconds:
    /// the time since a poll last reached the feed's head (0 while polls keep up). `None` before
    /// the first poll did. Grows while the key service is down or the feed cannot be applied.
    pub fn lag_seconds<H: Host + ?Sized>(&self, host: &H) -> Option<u64> {
        let bytes = host.shared_get(&self.current_key()).0?;
        let at = u64::from_be_bytes(bytes.as_slice().try_into().ok()?);
        Some(host.now_ms().saturating_sub(at) / 1000)
    }

    /// The shared-data key of an invalidation slot.
    fn invalidation_key(&self, slot: u32) -> String {
        format!("{}i.{slot}", self.prefix)
    }

    /// The consumer's record.
    pub fn state<H: Host + ?Sized>(&self, host: &H) -> FeedState {
        read_feed(host, &self.record_key()).0
    }

    /// Starts a poll if it is this worker's turn.
    pub fn poll<H: Host + ?Sized>(&self, host: &H, target: &KeyService) -> Poll {
        let now = host.now_ms();
        let key = self.record_key();
        let (state, cas) = read_feed(host, &key);
        self.saw(&state);
        if state.busy_until_ms > now {
            return Poll::NotMyTurn;
        }
        let lease = now + millis(target.timeout) + 1_000;
        if host.shared_set(&key, &FeedState { busy_until_ms: lease, ..state }.encode(), cas).is_err() {
            return Poll::NotMyTurn; // another worker took this turn
        }
        let message =
            v1::ListChangesRequest { after_seq: state.after_seq(), limit: FEED_PAGE }.encode_to_vec();
        let auth = target.bearer();
        let metadata = [("authorization", auth.as_bytes())];
        match host.grpc_call(
            &target.cluster,
            tollgate_proto::KEY_SERVICE,
            "ListChanges",
            &metadata,
            &message,
            target.timeout,
        ) {
            Ok(token) => Poll::Started(token),
            Err(_) => {
                let backoff = FeedState { busy_until_ms: now + millis(target.poll_interval), ..state };
                finish_poll(host, &key, backoff);
                Poll::Refused
            }
        }
    }

    /// Applies the answer to a poll this worker started.
    pub fn done<H: Host + ?Sized>(&self, host: &H, target: &KeyService, status: u32, size: usize) -> Done {
        let now = host.now_ms();
        let interval = millis(target.poll_interval);
        let key = self.record_key();
        let state = read_feed(host, &key).0;
        self.saw(&state);
        let body = host.grpc_response_body(size).unwrap_or_default();
        let reply = (status == grpc_status::OK)
            .then(|| v1::ListChangesResponse::decode(body.as_slice()).ok())
            .flatten();
        let Some(reply) = reply else {
            if !self.failing.replace(true) {
                let detail = host.grpc_status_message().unwrap_or_default();
                host.log(
                    LogLevel::Warn,
                    &format!("{}: change feed unavailable (gRPC status {status}): {detail}", self.label),
                );
            }
            finish_poll(host, &key, FeedState { busy_until_ms: now + interval, ..state });
            return Done::Failed;
        };
        if self.failing.replace(false) {
            host.log(LogLevel::Info, &format!("{}: change feed available again", self.label));
        }
        let full_page = reply.changes.len() >= FEED_PAGE as usize;
        let changes: Vec<FeedChange> = reply
            .changes
            .into_iter()
            .map(|c| FeedChange {
                seq: c.seq,
                mark: change_mark(c.kind, &c.key_id, &c.consumer_id, c.at),
                key_id: c.key_id,
            })
            .collect();
        let mut step = feed_step(state, &changes, reply.head_seq);
        if !full_page {
            step.next.busy_until_ms = now + interval - interval / 4;
            // This page reached the head: the proxy is as current as the key service.
            let _ = host.shared_set(&self.current_key(), &now.to_be_bytes(), None);
        }
        let epoch = step.next.epoch;
        if epoch != state.epoch {
            let how = if reply.head_seq < state.cursor {
                format!("went back from {} to {}", state.cursor, reply.head_seq)
            } else {
                format!("has another change at {} than the one applied", state.cursor)
            };
            host.log(
                LogLevel::Warn,
                &format!(
                    "{}: the key service's change feed {how} (a store restored from a backup?): every \
                     cached answer is asked for again",
                    self.label
                ),
            );
            finish_poll(host, &key, step.next);
            self.saw(&step.next);
            return Done::Reset;
        }
        for (slot, seq) in &step.invalidate {
            if !raise_invalidation(host, &self.invalidation_key(*slot), Invalidation { epoch, seq: *seq }) {
                // Could not record it: re-check everything cached rather than miss a revocation.
                let next = FeedState { base: step.next.cursor, ..step.next };
                finish_poll(host, &key, next);
                self.saw(&read_feed(host, &key).0);
                return Done::Rebased;
            }
        }
        finish_poll(host, &key, step.next);
        // The poller's own cache sees what it applied at once; the other workers on their tick.
        self.saw(&read_feed(host, &key).0);
        Done::Applied(step.invalidate.len())
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// An invalidation slot's sequence as seen from feed epoch `epoch` (see
/// [`Invalidation::seq_in`]).
fn read_invalidation<H: Host + ?Sized>(host: &H, key: &str, epoch: u64) -> u64 {
    Invalidation::seq_in(host.shared_get(key).0.as_deref(), epoch)
}

/// Raises an invalidation slot to `to` (see [`Invalidation::raised`]). Returns false when the
/// retries ran out.
fn raise_invalidation<H: Host + ?Sized>(host: &H, key: &str, to: Invalidation) -> bool {
    shared::cas_update(host, key, |current| Invalidation::raised(current, to).map(|v| v.encode().to_vec()))
}

/// The consumer's record and its CAS token.
fn read_feed<H: Host + ?Sized>(host: &H, key: &str) -> (FeedState, Option<u32>) {
    let (bytes, cas) = host.shared_get(key);
    (bytes.and_then(|b| FeedState::decode(&b)).unwrap_or_default(), cas)
}

/// Stores the consumer's next state after a poll, never undoing a reset nor moving the cursor
/// backwards (see [`FeedState::merge`]).
fn finish_poll<H: Host + ?Sized>(host: &H, key: &str, next: FeedState) -> bool {
    shared::cas_update(host, key, |current| {
        let current = current.and_then(FeedState::decode).unwrap_or_default();
        Some(FeedState::merge(current, next).encode().to_vec())
    })
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use crate::mock::MockHost;
    use crate::shared::CAS_RETRIES;

    fn target() -> KeyService {
        crate::mock::key_service()
    }

    /// Polls (after the interval) and answers with `changes` (seq, key id, kind) and `head`;
    /// returns what the poll asked for (`after_seq`) and what its answer did.
    fn poll(host: &MockHost, consumer: &Consumer, changes: &[(u64, &str, i32)], head: u64) -> (u64, Done) {
        host.advance(Duration::from_secs(1));
        assert!(matches!(consumer.poll(host, &target()), Poll::Started(_)), "no poll");
        let asked = host.calls().last().map(|c| v1::ListChangesRequest::decode(c.message.as_slice()));
        let after = asked.and_then(Result::ok).map_or(u64::MAX, |r| r.after_seq);
        let changes = changes
            .iter()
            .map(|(seq, key_id, kind)| v1::Change {
                seq: *seq,
                key_id: (*key_id).into(),
                kind: *kind,
                consumer_id: "c_1".into(),
                at: 1_700_000_000,
                purge: None,
            })
            .collect();
        let reply = v1::ListChangesResponse { changes, head_seq: head };
        host.set_grpc_response(Some(reply.encode_to_vec()), None);
        (after, consumer.done(host, &target(), grpc_status::OK, 1))
    }

    const CREATED: i32 = v1::ChangeKind::KeyCreated as i32;
    const REVOKED: i32 = v1::ChangeKind::KeyRevoked as i32;

    #[test]
    fn a_feed_going_backwards_starts_a_new_epoch_that_every_worker_learns() {
        let host = MockHost::new();
        let consumer = Consumer::new("test", "t.");
        assert_eq!(poll(&host, &consumer, &[], 20), (0, Done::Applied(0)));
        assert_eq!(poll(&host, &consumer, &[(21, "key_a", CREATED)], 21), (20, Done::Applied(1)));
        let slot = consumer.invalidation_key(invalidation_slot("key_a"));
        assert_eq!(read_invalidation(&*host, &slot, 0), 21);

        // Restored to 12.
        assert_eq!(poll(&host, &consumer, &[(21, "key_a", CREATED)], 12), (20, Done::Reset));
        let state = consumer.state(&*host);
        assert_eq!((state.epoch, state.cursor, state.base), (1, 12, 12));
        assert_eq!(consumer.seen_epoch(), 1);
        assert!(host.logs().iter().any(|(_, l)| l.contains("went back from 21 to 12")));
        assert_eq!(read_invalidation(&*host, &slot, 1), 0, "the lost timeline's change");

        // The new timeline's changes are applied in the new epoch, though 13 < 21.
        assert_eq!(poll(&host, &consumer, &[(13, "key_a", REVOKED)], 13), (12, Done::Applied(1)));
        assert_eq!(read_invalidation(&*host, &slot, 1), 13);
        assert_eq!(consumer.state(&*host).epoch, 1);

        // Another worker learns the epoch on its tick, whether or not it is its turn to poll.
        let other = MockHost::sharing_with(&host);
        let other_consumer = Consumer::new("test", "t.");
        assert_eq!(other_consumer.seen_epoch(), 0);
        let _ = other_consumer.poll(&*other, &target());
        assert_eq!(other_consumer.seen_epoch(), 1);
    }

    /// The restored store got as far as the consumer's cursor again before the next poll: the
    /// head alone does not show it, the change at the cursor does.
    #[test]
    fn a_restored_store_that_got_as_far_again_is_told_by_the_change_at_the_cursor() {
        let host = MockHost::new();
        let consumer = Consumer::new("test", "t.");
        poll(&host, &consumer, &[], 19);
        assert_eq!(poll(&host, &consumer, &[(20, "key_a", CREATED)], 20), (19, Done::Applied(1)));
        // The service still has that change at 20: it is asked for again, and nothing happens.
        assert_eq!(
            poll(&host, &consumer, &[(20, "key_a", CREATED), (21, "key_b", CREATED)], 21).1,
            Done::Applied(1)
        );
        assert_eq!(consumer.state(&*host).epoch, 0);
        // Restored to 18, then 19..23 happened before this poll: another change at 21.
        let (after, done) = poll(
            &host,
            &consumer,
            &[(21, "key_a", REVOKED), (22, "key_c", CREATED), (23, "key_d", CREATED)],
            23,
        );
        assert_eq!((after, done), (20, Done::Reset));
        let state = consumer.state(&*host);
        assert_eq!((state.epoch, state.cursor, state.base), (1, 23, 23));
        assert!(host.logs().iter().any(|(_, l)| l.contains("has another change at 21")));
    }

    /// What a filter's store is told about a key id: the record's epoch and base, and the key
    /// id's invalidation slot as seen in that epoch, under this consumer's prefix only.
    #[test]
    fn freshness_is_the_records_epoch_and_base_and_the_key_ids_slot_in_that_epoch() {
        let host = MockHost::new();
        let consumer = Consumer::new("test", "t.");
        assert_eq!(consumer.freshness(&*host, "key_a"), Freshness::default(), "nothing polled yet");
        poll(&host, &consumer, &[], 20);
        poll(&host, &consumer, &[(21, "key_a", REVOKED)], 21);
        let revoked = Freshness { epoch: 0, invalidated_at: 21, base: 20 };
        assert_eq!(consumer.freshness(&*host, "key_a"), revoked);
        assert_ne!(invalidation_slot("key_b"), invalidation_slot("key_a"));
        assert_eq!(consumer.freshness(&*host, "key_b"), Freshness { invalidated_at: 0, ..revoked });
        let elsewhere = Consumer::new("other", "u.");
        assert_eq!(elsewhere.freshness(&*host, "key_a"), Freshness::default(), "another prefix");

        // Restored to 12: the slot's change belongs to the lost timeline.
        poll(&host, &consumer, &[], 12);
        assert_eq!(consumer.epoch(&*host), 1);
        assert_eq!(consumer.freshness(&*host, "key_a"), Freshness { epoch: 1, invalidated_at: 0, base: 12 });
    }

    #[test]
    fn raise_only_moves_up_within_an_epoch_and_survives_contention() {
        let host = MockHost::new();
        let at = |seq| Invalidation { epoch: 0, seq };
        assert!(raise_invalidation(&*host, "k", at(5)));
        assert!(raise_invalidation(&*host, "k", at(3)));
        assert_eq!(read_invalidation(&*host, "k", 0), 5);
        host.fail_next_cas(CAS_RETRIES as u32 - 1);
        assert!(raise_invalidation(&*host, "k", at(9)), "succeeds on the last retry");
        assert_eq!(read_invalidation(&*host, "k", 0), 9);
        host.fail_next_cas(CAS_RETRIES as u32);
        assert!(!raise_invalidation(&*host, "k", at(10)), "gives up after the bounded retries");
        assert_eq!(read_invalidation(&*host, "k", 0), 9);
        // A new epoch (a restored store) starts lower; the old value means nothing in it.
        assert_eq!(read_invalidation(&*host, "k", 1), 0);
        assert!(raise_invalidation(&*host, "k", Invalidation { epoch: 1, seq: 2 }));
        assert_eq!(read_invalidation(&*host, "k", 1), 2);
    }

    #[test]
    fn finishing_a_poll_never_moves_the_cursor_back_nor_undoes_a_reset() {
        let host = MockHost::new();
        let ahead = FeedState { started: true, cursor: 10, base: 2, epoch: 0, mark: 3, busy_until_ms: 7 };
        assert!(finish_poll(&*host, "f", ahead));
        assert!(finish_poll(&*host, "f", FeedState { cursor: 4, busy_until_ms: 0, ..ahead }));
        assert_eq!(read_feed(&*host, "f").0, FeedState { busy_until_ms: 0, ..ahead });
        let reset = FeedState { started: true, cursor: 1, base: 1, epoch: 1, mark: 0, busy_until_ms: 0 };
        assert!(finish_poll(&*host, "f", reset));
        assert_eq!(read_feed(&*host, "f").0, reset);
        assert!(finish_poll(&*host, "f", ahead), "a poll of the old epoch finishing late");
        assert_eq!(read_feed(&*host, "f").0, reset);
    }
}
