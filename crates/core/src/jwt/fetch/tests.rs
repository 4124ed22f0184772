//! The fetch policy over plain records and a clock passed in.

use super::*;
use crate::jwt::config::{Config, KeySource};

const T: u64 = 1_700_000_000_000;

/// A remote provider: 2 s timeout, refreshed every minute, unknown-`kid` cooldown 10 s, keys
/// usable for an hour.
fn remote() -> Remote {
    remote_with("60s")
}

fn remote_with(refresh_interval: &str) -> Remote {
    let json = format!(
        r#"{{"providers": [{{"name": "idp", "issuer": "https://idp.example", "audiences": ["api"],
            "remote_jwks": {{"cluster": "idp", "path": "/certs", "authority": "idp.example", "timeout": "2s",
                             "refresh_interval": "{refresh_interval}", "refetch_cooldown": "10s", "max_stale": "1h"}}}}]}}"#
    );
    let config = Config::from_json(json.as_bytes()).unwrap();
    match config.providers.into_iter().next().unwrap().keys {
        KeySource::Remote(r) => r,
        KeySource::Inline(_) => unreachable!("a remote provider"),
    }
}

/// The record after a granted claim at `now`.
fn leased(now: u64) -> FetchState {
    let d = claim(&FetchState::default(), &remote(), FetchReason::Refresh, now);
    assert_eq!(d.claim, Claim::Granted);
    d.next.unwrap()
}

#[test]
fn without_a_record_the_first_claim_takes_the_lease_for_the_timeout_and_a_margin() {
    for reason in [FetchReason::Refresh, FetchReason::UnknownKid] {
        let d = claim(&FetchState::default(), &remote(), reason, T);
        assert_eq!(d.claim, Claim::Granted, "{reason:?}");
        let until = T + 2_000 + LEASE_MARGIN_MS;
        assert_eq!(d.next, Some(FetchState { in_flight_until: until, not_before: 0, last_start: T }));
    }
}

#[test]
fn a_held_lease_makes_every_other_claim_wait_for_its_fetch() {
    let state = leased(T);
    let until = state.in_flight_until;
    for now in [T, T + 1, until - 1] {
        for reason in [FetchReason::Refresh, FetchReason::UnknownKid] {
            let d = claim(&state, &remote(), reason, now);
            assert_eq!(d, FetchDecision { claim: Claim::InFlight(until), next: None }, "{now} {reason:?}");
        }
        assert!(state.in_flight(now));
    }
}

#[test]
fn a_lease_whose_fetch_never_ended_expires() {
    let state = leased(T);
    let until = state.in_flight_until;
    assert!(!state.in_flight(until));
    let d = claim(&state, &remote(), FetchReason::Refresh, until);
    assert_eq!(d.claim, Claim::Granted);
    assert_eq!(d.next.unwrap().last_start, until);
}

#[test]
fn after_a_failure_no_fetch_before_the_back_off() {
    let ended = T + 300;
    let state = finished(&leased(T), &remote(), FetchOutcome::Failed, ended);
    assert_eq!(state, FetchState { in_flight_until: 0, not_before: ended + RETRY_BACKOFF_MS, last_start: T });
    assert!(!state.in_flight(ended));
    for reason in [FetchReason::Refresh, FetchReason::UnknownKid] {
        let d = claim(&state, &remote(), reason, ended + RETRY_BACKOFF_MS - 1);
        assert_eq!(d, FetchDecision { claim: Claim::Refused, next: None }, "{reason:?}");
    }
    let d = claim(&state, &remote(), FetchReason::Refresh, ended + RETRY_BACKOFF_MS);
    assert_eq!(d.claim, Claim::Granted);
    assert_eq!(d.next.unwrap().not_before, 0, "a new fetch clears the back-off");
}

#[test]
fn the_back_off_is_never_longer_than_the_refresh_interval() {
    let short = remote_with("1s");
    let state = finished(&FetchState::default(), &short, FetchOutcome::Failed, T);
    assert_eq!(state.not_before, T + 1_000);
    assert_eq!(claim(&state, &short, FetchReason::Refresh, T + 999).claim, Claim::Refused);
    assert_eq!(claim(&state, &short, FetchReason::Refresh, T + 1_000).claim, Claim::Granted);
}

#[test]
fn a_fetch_in_flight_comes_before_the_back_off() {
    // A failure recorded while another fetch holds the lease: wait for that one.
    let state = FetchState { in_flight_until: T + 3_000, not_before: T + 5_000, last_start: T };
    assert_eq!(claim(&state, &remote(), FetchReason::Refresh, T + 1).claim, Claim::InFlight(T + 3_000));
    assert_eq!(claim(&state, &remote(), FetchReason::Refresh, T + 3_000).claim, Claim::Refused);
}

#[test]
fn a_successful_fetch_releases_the_lease_and_keeps_when_it_started() {
    let state = finished(&leased(T), &remote(), FetchOutcome::Fetched, T + 300);
    assert_eq!(state, FetchState { in_flight_until: 0, not_before: 0, last_start: T });
    assert_eq!(claim(&state, &remote(), FetchReason::Refresh, T + 301).claim, Claim::Granted);
    // Finishing keeps the record's start even when the lease was taken over meanwhile.
    let other = FetchState { in_flight_until: T + 9_000, not_before: 0, last_start: T + 6_000 };
    assert_eq!(finished(&other, &remote(), FetchOutcome::Fetched, T + 7_000).last_start, T + 6_000);
}

#[test]
fn unknown_kid_fetches_wait_for_the_cooldown_and_refreshes_do_not() {
    let state = finished(&leased(T), &remote(), FetchOutcome::Fetched, T + 300);
    let cooldown = 10_000;
    let d = claim(&state, &remote(), FetchReason::UnknownKid, T + cooldown - 1);
    assert_eq!(d, FetchDecision { claim: Claim::Refused, next: None });
    assert_eq!(claim(&state, &remote(), FetchReason::Refresh, T + cooldown - 1).claim, Claim::Granted);
    let d = claim(&state, &remote(), FetchReason::UnknownKid, T + cooldown);
    assert_eq!(d.claim, Claim::Granted);
    assert_eq!(d.next.unwrap().last_start, T + cooldown);
}

#[test]
fn refresh_is_due_without_keys_or_once_the_interval_passed() {
    let r = remote();
    assert!(refresh_due(None, &r, T));
    assert!(!refresh_due(Some(T), &r, T));
    assert!(!refresh_due(Some(T), &r, T + 59_999));
    assert!(refresh_due(Some(T), &r, T + 60_000));
    assert!(!refresh_due(Some(T), &r, T - 1_000), "a clock going backwards refreshes nothing");
    assert!(refresh_due(Some(u64::MAX - 1), &r, u64::MAX), "no overflow at the end of time");
}

#[test]
fn keys_are_used_for_at_most_max_stale() {
    let r = remote();
    assert!(within_max_stale(T, &r, T));
    assert!(within_max_stale(T, &r, T + 3_600_000));
    assert!(!within_max_stale(T, &r, T + 3_600_001));
    assert!(within_max_stale(T, &r, T - 1_000), "a clock going backwards keeps them");
}

#[test]
fn claims_and_ends_at_the_end_of_time_saturate() {
    let d = claim(&FetchState::default(), &remote(), FetchReason::Refresh, u64::MAX - 10);
    assert_eq!(d.next.unwrap().in_flight_until, u64::MAX);
    let state = finished(&FetchState::default(), &remote(), FetchOutcome::Failed, u64::MAX - 10);
    assert_eq!(state.not_before, u64::MAX);
    let late = FetchState { last_start: u64::MAX - 10, ..FetchState::default() };
    assert_eq!(claim(&late, &remote(), FetchReason::UnknownKid, u64::MAX - 5).claim, Claim::Refused);
}

#[test]
fn the_record_round_trips_and_anything_else_reads_as_none() {
    let state = FetchState { in_flight_until: 1, not_before: u64::MAX, last_start: 3 };
    assert_eq!(state.encode().len(), 24);
    assert_eq!(FetchState::decode(Some(&state.encode())), state);
    assert_eq!(FetchState::decode(None), FetchState::default());
    assert_eq!(FetchState::decode(Some(&state.encode()[..23])), FetchState::default());
    assert_eq!(FetchState::decode(Some(&[0; 25])), FetchState::default());
    assert_eq!(FetchState::decode(Some(b"")), FetchState::default());
}
