//! The key service's change feed, consumed by the filters that cache key-service answers
//! (key-auth, request-signing).
//!
//! One worker at a time polls: the consumer's record in shared data carries a lease. A page of
//! changes raises the invalidation slot of each changed key id to the change's sequence; a
//! cached answer fetched at an older sequence is then no longer used (see
//! `tollgate_core::key_auth::cache`). After a poll the lease is held until shortly before the
//! next interval, so the whole proxy polls about once per interval; a failure backs off one
//! interval and is logged when the feed goes down and when it comes back, not on every poll.

use std::cell::Cell;
use std::time::Duration;

use prost::Message;
use tollgate_core::key_auth::cache::{FeedState, feed_step};
use tollgate_proto::v1;

use crate::{Host, LogLevel, grpc_status, shared};

/// Changes asked for per poll.
pub const FEED_PAGE: u32 = 500;

/// Where and how to reach the key service.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub cluster: &'a str,
    /// The data-plane token.
    pub token: &'a str,
    pub timeout: Duration,
    pub interval: Duration,
}

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
}

/// One filter's change-feed consumer. `label` prefixes its log lines; `prefix` is the filter's
/// shared-data prefix (the record is `<prefix>feed`, invalidation slots `<prefix>i.<slot>`).
#[derive(Debug)]
pub struct Consumer {
    label: &'static str,
    prefix: String,
    failing: Cell<bool>,
}

impl Consumer {
    pub fn new(label: &'static str, prefix: &str) -> Self {
        Self { label, prefix: prefix.to_owned(), failing: Cell::new(false) }
    }

    /// The shared-data key of the consumer's record.
    pub fn record_key(&self) -> String {
        format!("{}feed", self.prefix)
    }

    /// The shared-data key of an invalidation slot.
    pub fn invalidation_key(&self, slot: u32) -> String {
        format!("{}i.{slot}", self.prefix)
    }

    /// The consumer's record (for its `base`).
    pub fn state<H: Host + ?Sized>(&self, host: &H) -> FeedState {
        shared::read_feed(host, &self.record_key()).0
    }

    /// Starts a poll if it is this worker's turn.
    pub fn poll<H: Host + ?Sized>(&self, host: &H, target: Target<'_>) -> Poll {
        let now = host.now_ms();
        let key = self.record_key();
        let (state, cas) = shared::read_feed(host, &key);
        if state.busy_until_ms > now {
            return Poll::NotMyTurn;
        }
        let lease = now + millis(target.timeout) + 1_000;
        if host.shared_set(&key, &FeedState { busy_until_ms: lease, ..state }.encode(), cas).is_err() {
            return Poll::NotMyTurn; // another worker took this turn
        }
        let message = v1::ListChangesRequest { after_seq: state.cursor, limit: FEED_PAGE }.encode_to_vec();
        let auth = format!("Bearer {}", target.token);
        let metadata = [("authorization", auth.as_bytes())];
        match host.grpc_call(
            target.cluster,
            tollgate_proto::KEY_SERVICE,
            "ListChanges",
            &metadata,
            &message,
            target.timeout,
        ) {
            Ok(token) => Poll::Started(token),
            Err(_) => {
                let backoff = FeedState { busy_until_ms: now + millis(target.interval), ..state };
                shared::finish_poll(host, &key, backoff);
                Poll::Refused
            }
        }
    }

    /// Applies the answer to a poll this worker started.
    pub fn done<H: Host + ?Sized>(&self, host: &H, target: Target<'_>, status: u32, size: usize) -> Done {
        let now = host.now_ms();
        let interval = millis(target.interval);
        let key = self.record_key();
        let state = shared::read_feed(host, &key).0;
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
            shared::finish_poll(host, &key, FeedState { busy_until_ms: now + interval, ..state });
            return Done::Failed;
        };
        if self.failing.replace(false) {
            host.log(LogLevel::Info, &format!("{}: change feed available again", self.label));
        }
        let full_page = reply.changes.len() >= FEED_PAGE as usize;
        let changes: Vec<(u64, String)> = reply.changes.into_iter().map(|c| (c.seq, c.key_id)).collect();
        let mut step = feed_step(state, &changes, reply.head_seq);
        if !full_page {
            step.next.busy_until_ms = now + interval - interval / 4;
        }
        for (slot, seq) in &step.invalidate {
            if !shared::raise_u64(host, &self.invalidation_key(*slot), *seq) {
                // Could not record it: re-check everything cached rather than miss a revocation.
                let next = FeedState { base: step.next.cursor, ..step.next };
                shared::finish_poll(host, &key, next);
                return Done::Rebased;
            }
        }
        shared::finish_poll(host, &key, step.next);
        Done::Applied(step.invalidate.len())
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
