//! The contexts driven against the mock host.

use std::time::Duration;

use prost::Message;
use proxy_wasm::types::Action;
use tollgate_core::key;
use tollgate_host::Host;
use tollgate_host::mock::{Harness, MockHost, ROOT_ID};
use tollgate_proto::v1;

use crate::KeyAuth;
use crate::worker::MAX_REFRESHES;

const CONFIG: &str = r#"{
  "key_service": {"cluster": "keyd", "token": "tgd_test", "timeout": "200ms"},
  "sources": [{"header": "x-api-key"}, {"header": "authorization", "prefix": "Bearer "}, {"query": "api_key"}],
  "cache": {"ttl": "60s", "negative_ttl": "5s", "stale_window": "300s", "slots": 64},
  "routes": [{"path_prefix": "/admin", "methods": ["POST"], "scopes": ["admin"]}]
}"#;

fn a_key(seed: u8) -> String {
    let entropy: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(31).wrapping_add(seed)).collect();
    key::key_from_entropy(&entropy).unwrap()
}

type Gateway = Harness<KeyAuth>;

/// Requests and answers as the tests speak of them.
trait Drive {
    /// Starts a request with the given headers; returns its context and the action.
    fn send(&mut self, path: &str, method: &str, headers: &[(&str, &str)]) -> (u32, Action);
    /// Delivers a VerifyKey answer to the context that made the call.
    fn answer(&mut self, ctx_id: u32, reply: &v1::VerifyKeyResponse);
    fn fail(&mut self, ctx_id: u32, status: u32);
    /// VerifyKey calls made so far, by any context.
    fn verify_calls(&self) -> usize;
    /// Fails the root context's latest call to `method` with gRPC `status`.
    fn fail_root_call(&mut self, method: &str, status: u32);
    /// Ticks (this worker's turn to poll, the interval having passed) and answers the poll
    /// with `changes` (seq, key id) and `head`.
    fn poll_feed(&mut self, changes: &[(u64, &str)], head: u64);
}

impl Drive for Gateway {
    fn send(&mut self, path: &str, method: &str, headers: &[(&str, &str)]) -> (u32, Action) {
        let id = self.request(&[(":path", path), (":method", method)]);
        self.host.with_header(id, "x-request-id", &format!("req-{id}"));
        for (k, v) in headers {
            self.host.with_header(id, k, v);
        }
        (id, self.request_headers(id, true))
    }

    fn answer(&mut self, ctx_id: u32, reply: &v1::VerifyKeyResponse) {
        self.host.set_grpc_response(Some(reply.encode_to_vec()), None);
        self.grpc_response(ctx_id, 0, 0, 1);
    }

    fn fail(&mut self, ctx_id: u32, status: u32) {
        self.host.set_grpc_response(None, Some("unavailable"));
        self.grpc_response(ctx_id, 0, status, 0);
    }

    fn verify_calls(&self) -> usize {
        self.host.calls().iter().filter(|c| c.method == "VerifyKey").count()
    }

    fn fail_root_call(&mut self, method: &str, status: u32) {
        let call =
            self.host.calls().into_iter().rev().find(|c| c.method == method && c.context_id == ROOT_ID);
        let call = call.expect("a call from the root context");
        self.host.set_grpc_response(None, Some("unavailable"));
        self.grpc_response(ROOT_ID, call.token, status, 0);
    }

    fn poll_feed(&mut self, changes: &[(u64, &str)], head: u64) {
        let before = self.host.calls().len();
        self.tick();
        let calls = self.host.calls();
        let poll = calls[before..].iter().find(|c| c.method == "ListChanges").expect("a feed poll");
        let changes = changes
            .iter()
            .map(|(seq, key_id)| v1::Change {
                seq: *seq,
                kind: v1::ChangeKind::KeyUpdated as i32,
                key_id: (*key_id).into(),
                ..Default::default()
            })
            .collect();
        self.host.set_grpc_response(
            Some(v1::ListChangesResponse { changes, head_seq: head }.encode_to_vec()),
            None,
        );
        self.grpc_response(ROOT_ID, poll.token, 0, 1);
    }
}

fn valid(key_id: &str, scopes: &[&str], expires_at: i64, feed_seq: u64) -> v1::VerifyKeyResponse {
    v1::VerifyKeyResponse {
        result: v1::VerifyResult::Valid as i32,
        key_id: key_id.into(),
        consumer_id: "alice".into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        rate_limit: None,
        expires_at,
        display_prefix: "tgk_abcdef".into(),
        feed_seq,
        previous_secret: false,
    }
}

#[test]
fn request_without_key_gets_401_with_challenge_and_json() {
    let mut gw = Gateway::new(CONFIG);
    let (id, action) = gw.send("/hello", "GET", &[]);
    assert_eq!(action, Action::Pause);
    let reply = gw.host.reply(id).unwrap();
    assert_eq!(reply.status, 401);
    assert_eq!(reply.header("www-authenticate"), Some("ApiKey realm=\"tollgate\""));
    let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(body["error"], "unauthorized");
    assert_eq!(body["request_id"], format!("req-{id}"));
    assert_eq!(gw.host.counter("tollgate.key_auth.requests_total.decision.deny.reason.missing_key"), 1);
}

#[test]
fn malformed_key_is_refused_with_no_lookup() {
    let mut gw = Gateway::new(CONFIG);
    let mut typo = a_key(1);
    typo.replace_range(10..11, if &typo[10..11] == "a" { "b" } else { "a" });
    let (id, _) = gw.send("/hello", "GET", &[("x-api-key", &typo)]);
    assert_eq!(gw.host.reply(id).unwrap().status, 401);
    assert!(gw.host.calls().is_empty());
    assert_eq!(gw.host.counter("tollgate.key_auth.requests_total.decision.deny.reason.malformed_key"), 1);
    assert!(gw.host.logs().iter().all(|(_, l)| !l.contains(&typo)), "the key must not be logged");
}

#[test]
fn valid_key_is_looked_up_once_then_served_from_cache() {
    let mut gw = Gateway::new(CONFIG);
    let k = a_key(2);
    let (id, action) = gw.send("/hello", "GET", &[("x-api-key", &k), ("x-tollgate-consumer-id", "mallory")]);
    assert_eq!(action, Action::Pause);
    let calls = gw.host.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].cluster, "keyd");
    assert_eq!(calls[0].method, "VerifyKey");
    assert_eq!(calls[0].timeout, Duration::from_millis(200));
    assert_eq!(calls[0].metadata, vec![("authorization".to_owned(), b"Bearer tgd_test".to_vec())]);
    let sent = v1::VerifyKeyRequest::decode(calls[0].message.as_slice()).unwrap();
    assert_eq!(sent.key_hash, key::key_hash(&k).to_vec(), "the hash goes out, never the key");
    // The spoofed header is gone even before the answer; the key is hidden.
    assert_eq!(gw.host.header(id, "x-tollgate-consumer-id"), None);
    assert_eq!(gw.host.header(id, "x-api-key"), None);

    gw.answer(id, &valid("key_1", &["read"], 0, 5));
    assert_eq!(gw.host.resumed(id), 1);
    assert_eq!(gw.host.header(id, "x-tollgate-consumer-id").as_deref(), Some("alice"));
    assert_eq!(gw.host.header(id, "x-tollgate-key-id").as_deref(), Some("key_1"));
    assert_eq!(gw.host.header(id, "x-tollgate-scopes").as_deref(), Some("read"));
    assert_eq!(gw.host.request_property(id, &["tollgate.consumer_id"]).as_deref(), Some(&b"alice"[..]));

    let (id2, action2) = gw.send("/hello", "GET", &[("x-api-key", &k)]);
    assert_eq!(action2, Action::Continue);
    assert_eq!(gw.host.calls().len(), 1, "second request is a cache hit");
    assert_eq!(gw.host.header(id2, "x-tollgate-key-id").as_deref(), Some("key_1"));
    assert_eq!(gw.host.counter("tollgate.key_auth.cache_lookups_total.result.hit"), 1);
    assert_eq!(gw.host.counter("tollgate.key_auth.requests_total.decision.allow"), 2);
}

#[test]
fn key_in_query_is_stripped_from_the_path() {
    let mut gw = Gateway::new(CONFIG);
    let k = a_key(3);
    let (id, _) = gw.send(&format!("/hello?a=1&api_key={k}"), "GET", &[]);
    gw.answer(id, &valid("key_q", &[], 0, 1));
    assert_eq!(gw.host.header(id, ":path").as_deref(), Some("/hello?a=1"));
}

#[test]
fn two_different_keys_are_refused() {
    let mut gw = Gateway::new(CONFIG);
    let (a, b) = (a_key(4), a_key(5));
    let bearer = format!("Bearer {b}");
    let (id, _) = gw.send("/", "GET", &[("x-api-key", &a), ("authorization", &bearer)]);
    assert_eq!(gw.host.reply(id).unwrap().status, 401);
    assert_eq!(gw.host.counter("tollgate.key_auth.requests_total.decision.deny.reason.multiple_keys"), 1);
}

#[test]
fn concurrent_misses_for_one_key_make_one_call() {
    let mut gw = Gateway::new(CONFIG);
    let k = a_key(6);
    let (id1, _) = gw.send("/", "GET", &[("x-api-key", &k)]);
    let (id2, a2) = gw.send("/", "GET", &[("x-api-key", &k)]);
    let (id3, a3) = gw.send("/", "GET", &[("x-api-key", &k)]);
    assert_eq!((a2, a3), (Action::Pause, Action::Pause));
    assert_eq!(gw.host.calls().len(), 1);
    gw.answer(id1, &valid("key_sf", &[], 0, 1));
    for id in [id1, id2, id3] {
        assert_eq!(gw.host.resumed(id), 1, "context {id}");
        assert_eq!(gw.host.header(id, "x-tollgate-key-id").as_deref(), Some("key_sf"));
    }
    assert_eq!(gw.host.counter("tollgate.key_auth.singleflight_joined_total"), 2);
}

#[test]
fn waiters_are_not_stranded_when_the_leading_request_goes_away() {
    let mut gw = Gateway::new(CONFIG);
    let k = a_key(7);
    let (id1, _) = gw.send("/", "GET", &[("x-api-key", &k)]);
    let (id2, _) = gw.send("/", "GET", &[("x-api-key", &k)]);
    assert!(gw.done(id1));
    gw.tick();
    let calls = gw.host.calls();
    let retry =
        calls.iter().find(|c| c.method == "VerifyKey" && c.context_id == ROOT_ID).expect("root retried");
    gw.host.set_grpc_response(Some(valid("key_orphan", &[], 0, 1).encode_to_vec()), None);
    gw.grpc_response(ROOT_ID, retry.token, 0, 1);
    assert_eq!(gw.host.resumed(id2), 1);
    assert_eq!(gw.host.header(id2, "x-tollgate-key-id").as_deref(), Some("key_orphan"));
}

#[test]
fn unknown_revoked_and_expired_answers_are_401_and_cached() {
    let mut gw = Gateway::new(CONFIG);
    for (seed, result, reason) in [
        (8, v1::VerifyResult::NotFound, "unknown_key"),
        (9, v1::VerifyResult::Revoked, "revoked_key"),
        (10, v1::VerifyResult::Expired, "expired_key"),
    ] {
        let k = a_key(seed);
        let (id, _) = gw.send("/", "GET", &[("x-api-key", &k)]);
        let reply = v1::VerifyKeyResponse {
            result: result as i32,
            key_id: "key_x".into(),
            consumer_id: "c".into(),
            ..Default::default()
        };
        gw.answer(id, &reply);
        assert_eq!(gw.host.reply(id).unwrap().status, 401, "{reason}");
        assert_eq!(
            gw.host.counter(&format!("tollgate.key_auth.requests_total.decision.deny.reason.{reason}")),
            1
        );
        let calls = gw.host.calls().len();
        let (id2, _) = gw.send("/", "GET", &[("x-api-key", &k)]);
        assert_eq!(gw.host.reply(id2).unwrap().status, 401);
        assert_eq!(gw.host.calls().len(), calls, "{reason} answer is cached");
    }
}

#[test]
fn expired_key_is_rejected_even_when_cached() {
    let mut gw = Gateway::new(CONFIG);
    let k = a_key(11);
    let now_s = (gw.host.now_ms() / 1000) as i64;
    let (id, _) = gw.send("/", "GET", &[("x-api-key", &k)]);
    gw.answer(id, &valid("key_exp", &[], now_s + 2, 1));
    assert_eq!(gw.host.resumed(id), 1);
    gw.host.advance(Duration::from_secs(3));
    let (id2, _) = gw.send("/", "GET", &[("x-api-key", &k)]);
    assert_eq!(gw.host.reply(id2).unwrap().status, 401);
    assert_eq!(gw.host.calls().len(), 1, "decided from the cache");
}

#[test]
fn missing_scope_is_403() {
    let mut gw = Gateway::new(CONFIG);
    let k = a_key(12);
    let (id, _) = gw.send("/admin/users", "POST", &[("x-api-key", &k)]);
    gw.answer(id, &valid("key_s", &["read"], 0, 1));
    let reply = gw.host.reply(id).unwrap();
    assert_eq!(reply.status, 403);
    assert_eq!(reply.header("www-authenticate"), None);
    let (_, action) = gw.send("/admin/users", "GET", &[("x-api-key", &k)]);
    assert_eq!(action, Action::Continue, "the rule only covers POST");
}

#[test]
fn key_service_down_unknown_key_503_cached_key_still_works_within_stale_window() {
    let mut gw = Gateway::new(CONFIG);
    let k = a_key(13);
    let (id, _) = gw.send("/", "GET", &[("x-api-key", &k)]);
    gw.answer(id, &valid("key_stale", &[], 0, 1));
    gw.host.advance(Duration::from_secs(61)); // past the TTL
    let (id2, action) = gw.send("/", "GET", &[("x-api-key", &k)]);
    assert_eq!(action, Action::Continue, "the stale answer is served at once");
    assert_eq!(gw.host.header(id2, "x-tollgate-key-id").as_deref(), Some("key_stale"));
    assert_eq!(gw.host.counter("tollgate.key_auth.cache_lookups_total.result.stale"), 1);
    // The refresh fails; the stale answer keeps being served.
    gw.tick();
    gw.fail_root_call("VerifyKey", 14);
    assert_eq!(gw.host.counter("tollgate.key_auth.cache_refresh_failed_total"), 1);
    let (_, action) = gw.send("/", "GET", &[("x-api-key", &k)]);
    assert_eq!(action, Action::Continue);

    let other = a_key(14);
    let (id3, _) = gw.send("/", "GET", &[("x-api-key", &other)]);
    gw.fail(id3, 4);
    let reply = gw.host.reply(id3).unwrap();
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("retry-after"), Some("1"));
}

/// A stale answer never makes a request wait: it is served at once, one refresh per key is
/// made by the root context on its tick (a call a request made would be cancelled when the
/// request ends), a failed refresh is remembered for a while, and a new answer replaces the
/// stale one.
#[test]
fn a_stale_answer_is_served_at_once_and_refreshed_once_in_the_background() {
    let mut gw = Gateway::new(CONFIG);
    let k = a_key(20);
    let (id, _) = gw.send("/", "GET", &[("x-api-key", &k)]);
    gw.answer(id, &valid("key_swr", &[], 0, 1));
    gw.host.advance(Duration::from_secs(61));

    for _ in 0..3 {
        let (_, action) = gw.send("/", "GET", &[("x-api-key", &k)]);
        assert_eq!(action, Action::Continue);
    }
    assert_eq!(gw.verify_calls(), 1, "no request made a call");
    assert_eq!(gw.host.counter("tollgate.key_auth.cache_lookups_total.result.stale"), 3);

    gw.tick();
    let refresh = gw.host.calls().into_iter().filter(|c| c.method == "VerifyKey").nth(1).expect("refresh");
    assert_eq!(refresh.context_id, 1, "made by the root context");
    assert_eq!(refresh.timeout, Duration::from_millis(200));
    assert_eq!(gw.host.counter("tollgate.key_auth.cache_refresh_started_total"), 1);
    gw.tick();
    let (_, action) = gw.send("/", "GET", &[("x-api-key", &k)]);
    assert_eq!(action, Action::Continue);
    gw.tick();
    assert_eq!(gw.verify_calls(), 2, "one refresh in flight at a time");

    // It fails: remembered, so the next requests and ticks make no call.
    gw.host.set_grpc_response(None, Some("deadline exceeded"));
    gw.grpc_response(ROOT_ID, refresh.token, 4, 0);
    assert_eq!(gw.host.counter("tollgate.key_auth.cache_refresh_failed_total"), 1);
    for _ in 0..3 {
        let (_, action) = gw.send("/", "GET", &[("x-api-key", &k)]);
        assert_eq!(action, Action::Continue);
        gw.tick();
    }
    assert_eq!(gw.verify_calls(), 2, "a failed refresh is not retried at once");

    // Later, a request asks again; the new answer (revoked) replaces the stale one.
    gw.host.advance(Duration::from_secs(6));
    let (_, action) = gw.send("/", "GET", &[("x-api-key", &k)]);
    assert_eq!(action, Action::Continue);
    gw.tick();
    let retry = gw.host.calls().into_iter().filter(|c| c.method == "VerifyKey").nth(2).expect("retried");
    let revoked = v1::VerifyKeyResponse {
        result: v1::VerifyResult::Revoked as i32,
        key_id: "key_swr".into(),
        consumer_id: "alice".into(),
        feed_seq: 2,
        ..Default::default()
    };
    gw.host.set_grpc_response(Some(revoked.encode_to_vec()), None);
    gw.grpc_response(ROOT_ID, retry.token, 0, 1);
    assert_eq!(gw.host.counter("tollgate.key_auth.cache_refreshed_total"), 1);
    let (id, _) = gw.send("/", "GET", &[("x-api-key", &k)]);
    assert_eq!(gw.host.reply(id).unwrap().status, 401);
    assert_eq!(gw.verify_calls(), 3);
}

#[test]
fn a_stale_answer_refreshed_by_another_worker_is_not_asked_for_again() {
    let mut gw = Gateway::new(CONFIG);
    let mut gw2 = Gateway::configured(MockHost::sharing_with(&gw.host), CONFIG);
    let k = a_key(21);
    let (id, _) = gw.send("/", "GET", &[("x-api-key", &k)]);
    gw.answer(id, &valid("key_two", &[], 0, 1));
    gw.host.advance(Duration::from_secs(61));
    gw2.host.advance(Duration::from_secs(61));
    let (_, _) = gw.send("/", "GET", &[("x-api-key", &k)]);
    let (_, _) = gw2.send("/", "GET", &[("x-api-key", &k)]);
    // Worker 2 refreshes first.
    gw2.tick();
    let call = gw2.host.calls().into_iter().find(|c| c.method == "VerifyKey").unwrap();
    gw2.host.set_grpc_response(Some(valid("key_two", &[], 0, 1).encode_to_vec()), None);
    gw2.grpc_response(ROOT_ID, call.token, 0, 1);
    // Worker 1's tick finds the answer fresh and makes no call.
    gw.tick();
    assert_eq!(gw.verify_calls(), 1);
    let (_, action) = gw.send("/", "GET", &[("x-api-key", &k)]);
    assert_eq!(action, Action::Continue);
    assert_eq!(gw.host.counter("tollgate.key_auth.cache_lookups_total.result.hit"), 1);
}

#[test]
fn past_the_stale_window_a_key_waits_for_its_lookup_and_is_refused_when_it_fails() {
    let mut gw = Gateway::new(CONFIG);
    let k = a_key(22);
    let (id, _) = gw.send("/", "GET", &[("x-api-key", &k)]);
    gw.answer(id, &valid("key_old", &[], 0, 1));
    gw.host.advance(Duration::from_secs(60 + 300));
    let (id2, action) = gw.send("/", "GET", &[("x-api-key", &k)]);
    assert_eq!(action, Action::Pause);
    assert_eq!(gw.verify_calls(), 2);
    gw.fail(id2, 14);
    assert_eq!(gw.host.reply(id2).unwrap().status, 503);
    assert_eq!(gw.host.counter("tollgate.key_auth.cache_lookups_total.result.stale"), 0);
}

#[test]
fn refreshes_in_progress_are_bounded() {
    let gw = Gateway::new(CONFIG);
    let worker = gw.worker().unwrap();
    let now = gw.host.now_ms();
    for i in 0..(MAX_REFRESHES as u32 + 50) {
        worker.borrow_mut().want_refresh(key::key_hash(&i.to_string()), now);
    }
    assert_eq!(worker.borrow().refreshes.len(), MAX_REFRESHES);
}

/// The key service's store is restored from a backup: its feed head goes from 20 back to 12.
/// Every answer cached before is asked for again (valid, revoked and unknown alike), the new
/// timeline's answers are cached despite the old timeline's invalidations, and a change of the
/// new timeline invalidates although its sequence number was used before.
#[test]
fn a_feed_going_backwards_retires_every_answer_cached_before() {
    let mut gw = Gateway::new(CONFIG);
    let mut gw2 = Gateway::configured(MockHost::sharing_with(&gw.host), CONFIG);
    let (k, unknown) = (a_key(23), a_key(24));
    gw.poll_feed(&[], 18);
    let (id, _) = gw.send("/", "GET", &[("x-api-key", &k)]);
    gw.answer(id, &valid("key_r", &["read"], 0, 18));
    // The lost timeline changes the key at 19 (its scopes) and 20; the answer is re-fetched.
    gw.host.advance(Duration::from_secs(1));
    gw.poll_feed(&[(19, "key_r"), (20, "key_other")], 20);
    let (id, _) = gw.send("/", "GET", &[("x-api-key", &k)]);
    gw.answer(id, &valid("key_r", &["read", "write"], 0, 20));
    let (id, _) = gw.send("/", "GET", &[("x-api-key", &unknown)]);
    let not_found = v1::VerifyKeyResponse {
        result: v1::VerifyResult::NotFound as i32,
        feed_seq: 20,
        ..Default::default()
    };
    gw.answer(id, &not_found);
    assert_eq!(gw.host.reply(id).unwrap().status, 401);
    let (_, action) = gw.send("/", "GET", &[("x-api-key", &k)]);
    assert_eq!(action, Action::Continue, "cached");

    // Restored: the head is 12. Worker 2 polls and learns it.
    gw2.host.advance(Duration::from_secs(2));
    gw2.poll_feed(&[], 12);
    assert_eq!(gw2.host.counter("tollgate.key_auth.feed_resets_total"), 1);
    assert!(gw2.host.logs().iter().any(|(_, l)| l.contains("went back from 20 to 12")));

    // Worker 1, once its tick has read the feed: the answer about the key is asked for again,
    // and is cached.
    gw.tick();
    let calls = gw.verify_calls();
    let (id, action) = gw.send("/", "GET", &[("x-api-key", &k)]);
    assert_eq!(action, Action::Pause, "asked for again within its TTL");
    assert_eq!(gw.verify_calls(), calls + 1);
    gw.answer(id, &valid("key_r", &["read"], 0, 12));
    assert_eq!(gw.host.header(id, "x-tollgate-scopes").as_deref(), Some("read"));
    let (id, action) = gw.send("/", "GET", &[("x-api-key", &k)]);
    assert_eq!(action, Action::Continue, "cached although the lost timeline changed it at 19");
    assert_eq!(gw.host.header(id, "x-tollgate-scopes").as_deref(), Some("read"));
    // The negative answer too.
    let calls = gw.verify_calls();
    let (_, action) = gw.send("/", "GET", &[("x-api-key", &unknown)]);
    assert_eq!(action, Action::Pause);
    assert_eq!(gw.verify_calls(), calls + 1);

    // Revoked at 13 on the new timeline (13 was used by the lost one too).
    gw2.host.advance(Duration::from_secs(2));
    gw2.poll_feed(&[(13, "key_r")], 13);
    gw.tick();
    let (_, action) = gw.send("/", "GET", &[("x-api-key", &k)]);
    assert_eq!(action, Action::Pause, "the revocation invalidates the new answer");
}

/// An answer to a call made before the feed went back may come from the store that is gone:
/// it is not used, and the root context asks again.
#[test]
fn an_answer_asked_for_before_a_feed_reset_is_not_trusted_and_asked_for_again() {
    let mut gw = Gateway::new(CONFIG);
    let mut gw2 = Gateway::configured(MockHost::sharing_with(&gw.host), CONFIG);
    let k = a_key(25);
    gw.poll_feed(&[], 20);
    let (id, _) = gw.send("/", "GET", &[("x-api-key", &k)]);
    let (id_b, _) = gw.send("/", "GET", &[("x-api-key", &k)]);
    // Meanwhile worker 2 learns of the restore; then the old answer arrives.
    gw2.host.advance(Duration::from_secs(2));
    gw2.poll_feed(&[], 12);
    gw.answer(id, &valid("key_late", &[], 0, 20));
    assert_eq!((gw.host.resumed(id), gw.host.reply(id)), (0, None), "still waiting");
    assert_eq!(gw.host.resumed(id_b), 0);
    assert!(gw.host.logs().iter().any(|(_, l)| l.contains("asking again")));

    gw.tick();
    let again = gw.host.calls().into_iter().filter(|c| c.method == "VerifyKey").nth(1).expect("asked again");
    assert_eq!(again.context_id, 1);
    let not_found = v1::VerifyKeyResponse {
        result: v1::VerifyResult::NotFound as i32,
        feed_seq: 12,
        ..Default::default()
    };
    gw.host.set_grpc_response(Some(not_found.encode_to_vec()), None);
    gw.grpc_response(ROOT_ID, again.token, 0, 1);
    assert_eq!(gw.host.reply(id).unwrap().status, 401);
    assert_eq!(gw.host.reply(id_b).unwrap().status, 401);
}

/// A scope that cannot travel in the scopes header makes the answer unusable (like an
/// undecodable one): the request is refused with 503 rather than sent upstream with a list
/// that misstates what the key may do, and nothing is cached.
#[test]
fn an_answer_with_a_scope_that_cannot_be_published_is_refused_not_published_empty() {
    let mut gw = Gateway::new(CONFIG);
    let k = a_key(26);
    for bad in ["two words", "tab\there", "bell\u{7}", "del\u{7f}", ""] {
        let calls = gw.verify_calls();
        let (id, action) = gw.send("/", "GET", &[("x-api-key", &k)]);
        assert_eq!(action, Action::Pause);
        assert_eq!(gw.verify_calls(), calls + 1, "{bad:?}: not cached");
        gw.answer(id, &valid("key_sc", &["read", bad], 0, 1));
        let reply = gw.host.reply(id).unwrap();
        assert_eq!(reply.status, 503, "{bad:?}");
        assert_eq!(gw.host.header(id, "x-tollgate-scopes"), None, "{bad:?}");
        assert_eq!(gw.host.resumed(id), 0);
    }
    assert_eq!(
        gw.host.counter("tollgate.key_auth.requests_total.decision.deny.reason.key_service_unavailable"),
        5
    );
    assert!(gw.host.logs().iter().any(|(_, l)| l.contains("scope that cannot be sent in a header")));
}

#[test]
fn failure_mode_allow_lets_requests_through_without_identity_and_counts_them() {
    let config = CONFIG.replace("\"routes\"", "\"failure_mode\": \"allow\", \"routes\"");
    let mut gw = Gateway::new(&config);
    gw.host.refuse_calls(true);
    let (id, action) = gw.send("/", "GET", &[("x-api-key", &a_key(15)), ("x-tollgate-key-id", "spoof")]);
    assert_eq!(action, Action::Continue);
    assert_eq!(gw.host.header(id, "x-tollgate-key-id"), None);
    assert_eq!(gw.host.counter("tollgate.key_auth.requests_total.decision.allow.reason.failure_mode"), 1);
}

#[test]
fn unauthenticated_key_service_fails_closed_and_logs_the_token_hint() {
    let mut gw = Gateway::new(CONFIG);
    let (id, _) = gw.send("/", "GET", &[("x-api-key", &a_key(16))]);
    gw.fail(id, 16);
    assert_eq!(gw.host.reply(id).unwrap().status, 503);
    assert!(gw.host.logs().iter().any(|(_, l)| l.contains("key_service.token")));
}

#[test]
fn revocation_from_the_feed_invalidates_a_cached_key_on_every_worker() {
    let mut gw = Gateway::new(CONFIG);
    let other_worker = MockHost::sharing_with(&gw.host);
    let mut gw2 = Gateway::configured(other_worker, CONFIG);
    let k = a_key(17);

    // The feed consumer starts at the head (seq 5).
    gw.tick();
    let poll = gw.host.calls().into_iter().find(|c| c.method == "ListChanges").unwrap();
    gw.host.set_grpc_response(
        Some(v1::ListChangesResponse { changes: vec![], head_seq: 5 }.encode_to_vec()),
        None,
    );
    gw.grpc_response(ROOT_ID, poll.token, 0, 1);

    let (id, _) = gw.send("/", "GET", &[("x-api-key", &k)]);
    gw.answer(id, &valid("key_rev", &[], 0, 5));
    let (_, hit) = gw2.send("/", "GET", &[("x-api-key", &k)]);
    assert_eq!(hit, Action::Continue, "the other worker shares the cache");

    // Worker 2 polls next and learns of the revocation (seq 6).
    gw2.host.advance(Duration::from_secs(2));
    gw2.tick();
    let poll2 = gw2.host.calls().into_iter().find(|c| c.method == "ListChanges").unwrap();
    let after = v1::ListChangesRequest::decode(poll2.message.as_slice()).unwrap().after_seq;
    assert_eq!(after, 5);
    let change = v1::Change {
        seq: 6,
        kind: v1::ChangeKind::KeyRevoked as i32,
        key_id: "key_rev".into(),
        ..Default::default()
    };
    gw2.host.set_grpc_response(
        Some(v1::ListChangesResponse { changes: vec![change], head_seq: 6 }.encode_to_vec()),
        None,
    );
    gw2.grpc_response(ROOT_ID, poll2.token, 0, 1);

    // Worker 1's cached answer is no longer used.
    let before = gw.host.calls().len();
    let (id3, action) = gw.send("/", "GET", &[("x-api-key", &k)]);
    assert_eq!(action, Action::Pause);
    assert_eq!(gw.host.calls().len(), before + 1);
    let revoked = v1::VerifyKeyResponse {
        result: v1::VerifyResult::Revoked as i32,
        key_id: "key_rev".into(),
        feed_seq: 6,
        ..Default::default()
    };
    gw.answer(id3, &revoked);
    assert_eq!(gw.host.reply(id3).unwrap().status, 401);
}

#[test]
fn only_one_worker_polls_at_a_time() {
    let mut gw = Gateway::new(CONFIG);
    let mut gw2 = Gateway::configured(MockHost::sharing_with(&gw.host), CONFIG);
    gw.tick();
    gw2.tick();
    let polls = gw.host.calls().len() + gw2.host.calls().len();
    assert_eq!(polls, 1);
}

#[test]
fn invalid_config_is_refused_naming_the_field() {
    let mut gw = Gateway::on(MockHost::new());
    assert!(!gw.configure(r#"{"key_service": {"cluster": "keyd", "token": "t", "timeout": "soon"}}"#));
    assert!(gw.host.logs().iter().any(|(_, l)| l.contains("key_service.timeout")));
    assert!(gw.worker().is_none(), "no HTTP contexts without a config");
}

#[test]
fn garbage_from_the_key_service_is_a_failure_not_a_panic() {
    let mut gw = Gateway::new(CONFIG);
    let (id, _) = gw.send("/", "GET", &[("x-api-key", &a_key(18))]);
    gw.host.set_grpc_response(Some(vec![0xff, 0xff, 0xff]), None);
    gw.grpc_response(id, 0, 0, 3);
    assert_eq!(gw.host.reply(id).unwrap().status, 503);
}

#[test]
fn shipped_example_config_is_accepted() {
    let mut gw = Gateway::on(MockHost::new());
    assert!(gw.configure(include_str!("../config.example.json")), "{:?}", gw.host.logs());
    assert_eq!(gw.host.tick_period(), Some(Duration::from_millis(500)));
}

/// A worker keeps the answers it used: once it has checked one against the feed, requests read
/// no shared data until its view of the feed moves. Another worker's answer is read from shared
/// data once; a revocation applied by the poller reaches the other worker at its next tick.
#[test]
fn a_workers_own_cache_reads_no_shared_data_until_the_feed_moves() {
    let mut gw = Gateway::new(CONFIG);
    let mut gw2 = Gateway::configured(MockHost::sharing_with(&gw.host), CONFIG);
    let k = a_key(31);
    gw.poll_feed(&[], 5);
    gw2.tick();
    let (id, _) = gw.send("/", "GET", &[("x-api-key", &k)]);
    gw.answer(id, &valid("key_own", &["read"], 0, 5));
    let (_, action) = gw.send("/", "GET", &[("x-api-key", &k)]);
    assert_eq!(action, Action::Continue);
    let reads = gw.host.shared_reads();
    for _ in 0..10 {
        assert_eq!(gw.send("/", "GET", &[("x-api-key", &k)]).1, Action::Continue);
    }
    assert_eq!(gw.host.shared_reads(), reads, "ten requests served from the worker's own table");

    // Worker 2 finds worker 1's answer in shared data once, then keeps it.
    let before = gw2.host.calls().len();
    assert_eq!(gw2.send("/", "GET", &[("x-api-key", &k)]).1, Action::Continue);
    let reads2 = gw2.host.shared_reads();
    assert_eq!(gw2.send("/", "GET", &[("x-api-key", &k)]).1, Action::Continue);
    assert_eq!(gw2.host.shared_reads(), reads2);
    assert_eq!(gw2.host.calls().len(), before, "no lookup: the answer came from shared data");

    // Worker 1 polls and applies a change to the key: it refuses the cached answer at once,
    // worker 2 once its tick has read the feed.
    gw.host.advance(Duration::from_secs(1));
    gw.poll_feed(&[(6, "key_own")], 6);
    assert_eq!(gw.send("/", "GET", &[("x-api-key", &k)]).1, Action::Pause, "asked for again");
    gw2.tick();
    assert_eq!(gw2.send("/", "GET", &[("x-api-key", &k)]).1, Action::Pause, "asked for again");
}

#[test]
fn the_key_service_answer_time_is_a_histogram() {
    let mut gw = Gateway::new(CONFIG);
    let k = a_key(40);
    let (id, _) = gw.send("/hello", "GET", &[("x-api-key", &k)]);
    gw.host.advance(Duration::from_millis(7));
    gw.answer(id, &valid("key_1", &[], 0, 1));
    assert_eq!(gw.host.histogram("tollgate.key_auth.key_service_call_ms"), Some(vec![7]));
    // A cached answer makes no call and records nothing.
    gw.send("/hello", "GET", &[("x-api-key", &k)]);
    assert_eq!(gw.host.histogram("tollgate.key_auth.key_service_call_ms"), Some(vec![7]));
}

#[test]
fn feed_lag_is_the_time_since_a_poll_last_reached_the_head() {
    let mut gw = Gateway::new(CONFIG);
    assert_eq!(gw.host.gauge("tollgate.key_auth.feed_lag_seconds"), Some(0), "defined up front");
    gw.poll_feed(&[], 5);
    // Whole seconds since the head was last seen: 0 within the poll interval (500 ms).
    gw.host.advance(Duration::from_millis(400));
    gw.tick();
    assert_eq!(gw.host.gauge("tollgate.key_auth.feed_lag_seconds"), Some(0), "polls keep up");
    // The key service stops answering: the lag grows with each tick.
    for _ in 0..30 {
        gw.host.advance(Duration::from_secs(1));
        let before = gw.host.calls().len();
        gw.tick();
        if gw.host.calls().len() > before {
            gw.fail_root_call("ListChanges", 14);
        }
    }
    let lag = gw.host.gauge("tollgate.key_auth.feed_lag_seconds").unwrap();
    assert!((29..=31).contains(&lag), "{lag}");
    // Back: a poll that reaches the head brings it down on the next tick.
    gw.host.advance(Duration::from_secs(1));
    gw.poll_feed(&[], 5);
    gw.tick();
    assert_eq!(gw.host.gauge("tollgate.key_auth.feed_lag_seconds"), Some(0));
}

#[test]
fn requests_are_counted_per_key_and_outcome_and_reported_from_the_root_context() {
    let mut gw = Gateway::new(&CONFIG.replacen(
        '{',
        r#"{"usage": {"report_interval": "1s", "gateway": "gw-test"},"#,
        1,
    ));
    let k = a_key(50);
    let (id, _) = gw.send("/hello", "GET", &[("x-api-key", &k)]);
    gw.answer(id, &valid("key_1", &["read"], 0, 1));
    gw.send("/hello", "GET", &[("x-api-key", &k)]);
    // A route that needs a scope the key lacks: refused, counted under its reason.
    gw.send("/admin", "POST", &[("x-api-key", &k)]);
    // A request without a key has no key to count against.
    gw.send("/hello", "GET", &[]);
    // The key's previous secret (during a rotation grace), once asked and once from the cache:
    // counted apart.
    let old = a_key(51);
    let (id, _) = gw.send("/hello", "GET", &[("x-api-key", &old)]);
    gw.answer(id, &v1::VerifyKeyResponse { previous_secret: true, ..valid("key_1", &["read"], 0, 1) });
    gw.send("/hello", "GET", &[("x-api-key", &old)]);
    gw.host.advance(Duration::from_secs(2));
    gw.tick();
    let call = gw.host.calls().into_iter().rev().find(|c| c.method == "ReportUsage").expect("a report");
    assert_eq!(call.context_id, ROOT_ID, "sent from the root context");
    let batch = v1::ReportUsageRequest::decode(call.message.as_slice()).unwrap();
    assert_eq!(batch.gateway, "gw-test");
    let mut counts: Vec<(&str, &str, bool, u64)> = batch
        .counts
        .iter()
        .map(|c| (c.key_id.as_str(), c.outcome.as_str(), c.previous_secret, c.count))
        .collect();
    counts.sort_unstable();
    assert_eq!(
        counts,
        [
            ("key_1", "allowed", false, 2),
            ("key_1", "allowed", true, 2),
            ("key_1", "insufficient_scope", false, 1)
        ]
    );
    gw.host.set_grpc_response(Some(v1::ReportUsageResponse::default().encode_to_vec()), None);
    gw.grpc_response(ROOT_ID, call.token, 0, 0);
    assert_eq!(gw.host.counter("tollgate.key_auth.usage_reports_total.outcome.ok"), 1);
}

#[test]
fn usage_reporting_can_be_turned_off_and_a_bad_interval_is_refused() {
    let mut gw = Gateway::new(&CONFIG.replacen('{', r#"{"usage": {"report_interval": "0s"},"#, 1));
    let k = a_key(51);
    let (id, _) = gw.send("/hello", "GET", &[("x-api-key", &k)]);
    gw.answer(id, &valid("key_1", &[], 0, 1));
    gw.host.advance(Duration::from_secs(10));
    gw.tick();
    assert!(gw.host.calls().iter().all(|c| c.method != "ReportUsage"));
    let mut gw = Gateway::on(MockHost::new());
    assert!(!gw.configure(&CONFIG.replacen('{', r#"{"usage": {"report_interval": "10ms"},"#, 1)));
    assert!(gw.host.logs().iter().any(|(_, l)| l.contains("usage.report_interval")), "{:?}", gw.host.logs());
}
