//! When a remote key set is fetched, over one record every worker of the proxy shares
//! ([`FetchState`], kept in shared data by the filter):
//!
//! - one fetch at a time: the worker that starts a fetch holds a lease until the fetch's
//!   timeout and a margin have passed; the others wait for its result rather than fetch too;
//! - after a failed fetch, none before a back-off (at most the refresh interval);
//! - a fetch because a token named an unknown `kid` not sooner than the provider's
//!   `refetch_cooldown` after the last fetch started, so tokens with made-up `kid`s cannot make
//!   the proxy hammer the identity provider;
//! - a worker's keys are refreshed every `refresh_interval`, and used at most `max_stale` after
//!   they were fetched.
//!
//! Times are milliseconds since the Unix epoch, passed in.

use std::time::Duration;

use super::config::Remote;

/// Wait after a failed fetch before the next one (bounded by the refresh interval); also the
/// wait before a failed discovery document is fetched again.
pub const RETRY_BACKOFF_MS: u64 = 5_000;
/// A fetch lease lasts the fetch's timeout and this much more.
pub const LEASE_MARGIN_MS: u64 = 1_000;

/// Milliseconds of a configured duration.
fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The proxy-wide fetch record of one provider. The default (no record) lets anyone fetch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FetchState {
    /// A fetch is in flight until this time (ms): others wait for it rather than fetch.
    pub in_flight_until: u64,
    /// After a failed fetch, none before this time (ms).
    pub not_before: u64,
    /// When the last fetch started (ms), for the unknown-`kid` cooldown.
    pub last_start: u64,
}

impl FetchState {
    const LEN: usize = 24;

    /// The record as stored; anything else (no record, another length) is the default.
    pub fn decode(bytes: Option<&[u8]>) -> Self {
        let Some(b) = bytes.filter(|b| b.len() == Self::LEN) else { return Self::default() };
        let get =
            |i: usize| b.get(i * 8..i * 8 + 8).and_then(|s| s.try_into().ok()).map_or(0, u64::from_le_bytes);
        Self { in_flight_until: get(0), not_before: get(1), last_start: get(2) }
    }

    pub fn encode(&self) -> Vec<u8> {
        [self.in_flight_until, self.not_before, self.last_start]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect()
    }

    /// Whether a fetch is in flight (in some worker) at `now_ms`.
    pub fn in_flight(&self, now_ms: u64) -> bool {
        self.in_flight_until > now_ms
    }
}

/// Why a fetch is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchReason {
    /// Periodic refresh, or no keys yet.
    Refresh,
    /// A token named a `kid` the key set does not have.
    UnknownKid,
}

/// Who may fetch now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The asking worker may fetch now: it holds the proxy-wide lease.
    Granted,
    /// A fetch is in flight (in some worker) until at most this time (ms).
    InFlight(u64),
    /// No fetch now: backing off after a failure, or an unknown-`kid` fetch within the cooldown.
    Refused,
}

/// The answer to a claim, and the record to write for it (`None`: leave it as it is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchDecision {
    pub claim: Claim,
    pub next: Option<FetchState>,
}

/// Whether a fetch for `reason` may start at `now_ms`, given the shared record `state`. A
/// fetch in flight comes first (wait for it), then the back-off after a failure, then the
/// unknown-`kid` cooldown; a granted claim takes the lease until the fetch's timeout and
/// [`LEASE_MARGIN_MS`] have passed, and clears the back-off.
pub fn claim(state: &FetchState, remote: &Remote, reason: FetchReason, now_ms: u64) -> FetchDecision {
    let keep = |claim| FetchDecision { claim, next: None };
    if state.in_flight(now_ms) {
        return keep(Claim::InFlight(state.in_flight_until));
    }
    if state.not_before > now_ms {
        return keep(Claim::Refused);
    }
    if reason == FetchReason::UnknownKid
        && now_ms < state.last_start.saturating_add(ms(remote.refetch_cooldown))
    {
        return keep(Claim::Refused);
    }
    let until = now_ms.saturating_add(ms(remote.timeout)).saturating_add(LEASE_MARGIN_MS);
    let next = FetchState { in_flight_until: until, not_before: 0, last_start: now_ms };
    FetchDecision { claim: Claim::Granted, next: Some(next) }
}

/// How a fetch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchOutcome {
    /// A usable key set was fetched.
    Fetched,
    /// No usable key set: the call could not start, failed, or answered something unusable.
    Failed,
}

/// The record once a fetch ended at `now_ms`: the lease is released, and after a failure no
/// fetch before [`RETRY_BACKOFF_MS`] (or the refresh interval, if shorter). When the last fetch
/// started is kept, for the cooldown.
pub fn finished(state: &FetchState, remote: &Remote, outcome: FetchOutcome, now_ms: u64) -> FetchState {
    let not_before = match outcome {
        FetchOutcome::Fetched => 0,
        FetchOutcome::Failed => now_ms.saturating_add(RETRY_BACKOFF_MS.min(ms(remote.refresh_interval))),
    };
    FetchState { in_flight_until: 0, not_before, last_start: state.last_start }
}

/// Whether a worker's keys are due for a refresh: it has none (`fetched_at_ms` is `None`), or
/// the refresh interval passed since they were fetched.
pub fn refresh_due(fetched_at_ms: Option<u64>, remote: &Remote, now_ms: u64) -> bool {
    fetched_at_ms.is_none_or(|at| now_ms >= at.saturating_add(ms(remote.refresh_interval)))
}

/// Whether keys fetched at `fetched_at_ms` may still be used at `now_ms` (for at most
/// `max_stale`, however fetches fail meanwhile).
pub fn within_max_stale(fetched_at_ms: u64, remote: &Remote, now_ms: u64) -> bool {
    now_ms.saturating_sub(fetched_at_ms) <= ms(remote.max_stale)
}

#[cfg(test)]
mod tests;
