//! The contexts driven against the mock host.

use std::time::Duration;

use prost::Message;
use proxy_wasm::types::Action;
use tollgate_host::mock::{Harness, MockHost, ROOT_ID};
use tollgate_proto::v1;
use tollgate_signing::{Options, Request, SigningMaterial};

use crate::RequestSigning;

const CONFIG: &str = r#"{
  "key_service": {"cluster": "keyd", "token": "tgd_test", "timeout": "200ms"},
  "policy": {"max_age": "300s", "clock_skew": "30s"},
  "max_body_bytes": 64,
  "cache": {"slots": 64},
  "replay": {"slots": 64}
}"#;

const NOW_S: i64 = 1_700_000_000;
const SECRET: [u8; 32] = [7; 32];

type Gateway = Harness<RequestSigning>;

/// A worker with the filter configured with [`CONFIG`], its clock at [`NOW_S`].
fn gateway() -> Gateway {
    let host = MockHost::new();
    host.set_now_ms(NOW_S as u64 * 1000);
    Gateway::configured(host, CONFIG)
}

/// Requests and answers as the tests speak of them.
trait Drive {
    /// Starts a request; returns its id and the header action.
    fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: Option<&[u8]>,
    ) -> (u32, Action);
    /// Starts a request whose headers `set` adds (field lines, bytes).
    fn send_with(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        set: impl FnOnce(&MockHost, u32),
    ) -> (u32, Action);
    /// Delivers a GetSigningKey answer to request `id`, under the latest call's token.
    fn answer(&mut self, id: u32, reply: &v1::GetSigningKeyResponse);
}

impl Drive for Gateway {
    fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: Option<&[u8]>,
    ) -> (u32, Action) {
        self.send_with(method, path, body, |host, id| {
            for (k, v) in headers {
                host.with_header(id, &k.to_ascii_lowercase(), v);
            }
        })
    }

    fn send_with(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        set: impl FnOnce(&MockHost, u32),
    ) -> (u32, Action) {
        let id = self.request(&[
            (":method", method),
            (":path", path),
            (":authority", "api.test"),
            (":scheme", "http"),
        ]);
        self.host.with_header(id, "x-request-id", &format!("req-{id}"));
        set(&self.host, id);
        if let Some(b) = body {
            self.host.with_request_body(id, b);
        }
        (id, self.request_headers(id, body.is_none()))
    }

    fn answer(&mut self, id: u32, reply: &v1::GetSigningKeyResponse) {
        self.host.set_grpc_response(Some(reply.encode_to_vec()), None);
        let token = self.host.calls().len() as u32; // the mock numbers calls from 1
        self.grpc_response(id, token, 0, 1);
    }
}

fn hmac_reply(key_id: &str, result: v1::VerifyResult) -> v1::GetSigningKeyResponse {
    v1::GetSigningKeyResponse {
        result: result as i32,
        key_id: key_id.into(),
        consumer_id: "alice".into(),
        algorithm: v1::SigningAlgorithm::HmacSha256 as i32,
        hmac_secret: if result == v1::VerifyResult::Valid { SECRET.to_vec() } else { Vec::new() },
        feed_seq: 1,
        ..Default::default()
    }
}

fn signed(method: &str, path: &str, body: Option<&[u8]>, created: i64) -> Vec<(String, String)> {
    signed_with(method, path, body, vec![], Options::new("key_a", created))
}

fn signed_with(
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    headers: Vec<(String, Vec<u8>)>,
    options: Options,
) -> Vec<(String, String)> {
    let url = format!("http://api.test{path}");
    let request = Request { method, url: &url, headers, body };
    let s = tollgate_signing::sign(&request, &SigningMaterial::Hmac(SECRET.to_vec()), &options).unwrap();
    s.headers().into_iter().map(|(n, v)| (n.to_owned(), v)).collect()
}

/// Signed with a nonce.
fn signed_nonce(method: &str, path: &str, body: Option<&[u8]>, nonce: &str) -> Vec<(String, String)> {
    let mut options = Options::new("key_a", NOW_S);
    options.nonce = Some(nonce.into());
    signed_with(method, path, body, vec![], options)
}

fn value<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).unwrap()
}

#[test]
fn unsigned_request_gets_401_json_and_challenge_without_lookup() {
    let mut gw = gateway();
    let (id, action) = gw.send("GET", "/x", &[], None);
    assert_eq!(action, Action::Pause);
    let reply = gw.host.reply(id).unwrap();
    assert_eq!(reply.status, 401);
    assert!(reply.header("www-authenticate").unwrap().starts_with("Signature realm=\"tollgate\""));
    let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(body["error"], "unauthorized");
    assert!(gw.host.calls().is_empty());
    assert_eq!(
        gw.host.counter("tollgate.request_signing.requests_total.decision.deny.reason.missing_signature"),
        1
    );
}

#[test]
fn signed_get_is_allowed_after_one_lookup_then_from_cache_and_identity_is_set() {
    let mut gw = gateway();
    let mut headers = signed("GET", "/orders?id=1", None, NOW_S);
    headers.push(("x-tollgate-consumer-id".into(), "mallory".into()));
    let (id, action) = gw.send("GET", "/orders?id=1", &headers, None);
    assert_eq!(action, Action::Pause);
    let calls = gw.host.calls();
    assert_eq!((calls.len(), calls[0].method.as_str()), (1, "GetSigningKey"));
    assert_eq!(v1::GetSigningKeyRequest::decode(calls[0].message.as_slice()).unwrap().key_id, "key_a");
    assert_eq!(gw.host.header(id, "x-tollgate-consumer-id"), None, "client copy removed");
    gw.answer(id, &hmac_reply("key_a", v1::VerifyResult::Valid));
    assert_eq!(gw.host.resumed(id), 1);
    assert_eq!(gw.host.header(id, "x-tollgate-consumer-id").as_deref(), Some("alice"));
    assert_eq!(gw.host.header(id, "x-tollgate-key-id").as_deref(), Some("key_a"));
    // A second, differently signed request uses the cache.
    let headers = signed("GET", "/orders?id=2", None, NOW_S);
    let (_, action) = gw.send("GET", "/orders?id=2", &headers, None);
    assert_eq!(action, Action::Continue);
    assert_eq!(gw.host.calls().len(), 1);
    assert_eq!(gw.host.counter("tollgate.request_signing.cache_lookups_total.result.hit"), 1);
}

#[test]
fn replayed_signature_is_refused() {
    let mut gw = gateway();
    let headers = signed("GET", "/a", None, NOW_S);
    let (id, _) = gw.send("GET", "/a", &headers, None);
    gw.answer(id, &hmac_reply("key_a", v1::VerifyResult::Valid));
    assert_eq!(gw.host.resumed(id), 1);
    let (id2, action) = gw.send("GET", "/a", &headers, None);
    assert_eq!(action, Action::Pause);
    assert_eq!(gw.host.reply(id2).unwrap().status, 401);
    assert_eq!(gw.host.counter("tollgate.request_signing.requests_total.decision.deny.reason.replayed"), 1);
    // After the replay window the signature is refused as too old, not as a replay.
    gw.host.advance(Duration::from_secs(400));
    let (id3, _) = gw.send("GET", "/a", &headers, None);
    assert_eq!(gw.host.reply(id3).unwrap().status, 401);
    assert_eq!(
        gw.host.counter("tollgate.request_signing.requests_total.decision.deny.reason.signature_too_old"),
        1
    );
}

#[test]
fn body_is_buffered_and_its_digest_checked() {
    let mut gw = gateway();
    let body = br#"{"amount": 10}"#;
    let headers = signed("POST", "/pay", Some(body), NOW_S);
    let (id, action) = gw.send("POST", "/pay", &headers, Some(body));
    assert_eq!(action, Action::Pause);
    gw.answer(id, &hmac_reply("key_a", v1::VerifyResult::Valid));
    assert_eq!(gw.host.resumed(id), 1, "headers go on once the signature is verified");
    assert_eq!(gw.request_body(id, 5, false), Action::Pause, "the body is held until complete");
    assert_eq!(gw.request_body(id, body.len(), true), Action::Continue);
    // Same headers, other body: the digest no longer matches.
    let headers = signed("POST", "/pay", Some(body), NOW_S + 1);
    let (id, action) = gw.send("POST", "/pay", &headers, Some(br#"{"amount": 99}"#));
    assert_eq!(action, Action::Continue, "material cached: the signature is accepted at once");
    assert_eq!(gw.request_body(id, 14, true), Action::Pause);
    assert_eq!(gw.host.reply(id).unwrap().status, 401);
    assert_eq!(
        gw.host.counter("tollgate.request_signing.requests_total.decision.deny.reason.digest_mismatch"),
        1
    );
}

#[test]
fn body_without_covered_digest_and_oversized_body_are_refused() {
    let mut gw = gateway();
    let headers = signed("POST", "/pay", None, NOW_S);
    let (id, _) = gw.send("POST", "/pay", &headers, Some(b"x"));
    assert_eq!(gw.host.reply(id).unwrap().status, 401);
    assert_eq!(
        gw.host.counter("tollgate.request_signing.requests_total.decision.deny.reason.missing_digest"),
        1
    );
    let big = vec![b'a'; 100];
    let headers = signed("POST", "/pay", Some(&big), NOW_S);
    let (id, _) = gw.send("POST", "/pay", &headers, Some(&big));
    gw.answer(id, &hmac_reply("key_a", v1::VerifyResult::Valid));
    assert_eq!(gw.request_body(id, 100, false), Action::Pause);
    assert_eq!(gw.host.reply(id).unwrap().status, 413);
    let mut declared = signed("POST", "/pay", Some(&big), NOW_S);
    declared.push(("content-length".into(), "100".into()));
    let (id, _) = gw.send("POST", "/pay", &declared, Some(&big));
    assert_eq!(gw.host.reply(id).unwrap().status, 413);
    assert_eq!(
        gw.host.counter("tollgate.request_signing.requests_total.decision.deny.reason.body_too_large"),
        2
    );
}

#[test]
fn revoked_unknown_wrong_alg_and_unavailable_keys_are_refused() {
    let mut gw = gateway();
    let headers = signed("GET", "/r", None, NOW_S);
    let (id, _) = gw.send("GET", "/r", &headers, None);
    gw.answer(id, &hmac_reply("key_a", v1::VerifyResult::Revoked));
    assert_eq!(gw.host.reply(id).unwrap().status, 401);
    assert_eq!(
        gw.host.counter("tollgate.request_signing.requests_total.decision.deny.reason.revoked_key"),
        1
    );

    let mut gw = gateway();
    let headers = signed("GET", "/r", None, NOW_S);
    let (id, _) = gw.send("GET", "/r", &headers, None);
    let mut ed = hmac_reply("key_a", v1::VerifyResult::Valid);
    ed.algorithm = v1::SigningAlgorithm::Ed25519 as i32;
    ed.hmac_secret.clear();
    ed.ed25519_public_key = SigningMaterial::Ed25519([3; 32]).verifying_bytes();
    gw.answer(id, &ed);
    assert_eq!(
        gw.host.counter("tollgate.request_signing.requests_total.decision.deny.reason.algorithm_mismatch"),
        1
    );

    let mut gw = gateway();
    let headers = signed("GET", "/r", None, NOW_S);
    let (id, _) = gw.send("GET", "/r", &headers, None);
    gw.host.set_grpc_response(None, Some("down"));
    gw.grpc_response(id, 1, 14, 0);
    let reply = gw.host.reply(id).unwrap();
    assert_eq!((reply.status, reply.header("retry-after")), (503, Some("1")));
}

#[test]
fn revocation_on_the_change_feed_invalidates_the_cached_material() {
    let mut gw = gateway();
    let (id, _) = gw.send("GET", "/a", &signed("GET", "/a", None, NOW_S), None);
    gw.answer(id, &hmac_reply("key_a", v1::VerifyResult::Valid));
    // First poll learns the head; the second sees the revocation.
    for (changes, head) in [(vec![], 1u64), (vec![(2u64, "key_a")], 2)] {
        gw.tick();
        let reply = v1::ListChangesResponse {
            changes: changes
                .iter()
                .map(|(s, k)| v1::Change { seq: *s, key_id: (*k).into(), kind: 3, ..Default::default() })
                .collect(),
            head_seq: head,
        };
        gw.host.set_grpc_response(Some(reply.encode_to_vec()), None);
        let poll = gw.host.calls().into_iter().rev().find(|c| c.method == "ListChanges").expect("a poll");
        gw.grpc_response(ROOT_ID, poll.token, 0, 1);
        gw.host.advance(Duration::from_secs(1));
    }
    let calls_before = gw.host.calls().len();
    let (_, action) = gw.send("GET", "/b", &signed("GET", "/b", None, NOW_S), None);
    assert_eq!(action, Action::Pause);
    assert_eq!(gw.host.calls().len(), calls_before + 1, "asks the key service again");
}

#[test]
fn bad_config_is_rejected() {
    let mut gw = Gateway::on(MockHost::new());
    assert!(!gw.configure(r#"{"key_service": {"cluster": "keyd", "token": "t"}, "max_body_bytes": 0}"#));
    assert!(gw.host.logs().iter().any(|(_, l)| l.contains("max_body_bytes")));
}

/// Trailers end the stream: the held body is checked there, and only a body that matches
/// lets the request be remembered; a tampered copy leaves the nonce for the genuine request.
#[test]
fn body_ending_with_trailers_is_checked_and_a_refused_copy_keeps_the_nonce() {
    let mut gw = gateway();
    let body = br#"{"amount": 10}"#;
    let warm = signed("GET", "/warm", None, NOW_S);
    let (id, _) = gw.send("GET", "/warm", &warm, None);
    gw.answer(id, &hmac_reply("key_a", v1::VerifyResult::Valid));
    let headers = signed_nonce("POST", "/pay", Some(body), "n-1");
    // Tampered: material cached, the headers go on, the body is held and refused at the trailers.
    let (id, action) = gw.send("POST", "/pay", &headers, Some(br#"{"amount": 99}"#));
    assert_eq!(action, Action::Continue);
    assert_eq!(gw.request_body(id, 14, false), Action::Pause);
    assert_eq!(gw.request_trailers(id), Action::Pause);
    assert_eq!(gw.host.reply(id).unwrap().status, 401);
    assert_eq!(
        gw.host.counter("tollgate.request_signing.requests_total.decision.deny.reason.digest_mismatch"),
        1
    );
    // Genuine, same nonce: accepted, and only now remembered.
    let (id, action) = gw.send("POST", "/pay", &headers, Some(body));
    assert_eq!(action, Action::Continue);
    assert_eq!(gw.request_body(id, 14, false), Action::Pause);
    assert_eq!(gw.request_trailers(id), Action::Continue);
    assert!(gw.host.reply(id).is_none());
    // A replay is refused at its headers, before its body.
    let (id, action) = gw.send("POST", "/pay", &headers, Some(body));
    assert_eq!(action, Action::Pause);
    assert_eq!(gw.host.reply(id).unwrap().status, 401);
    assert_eq!(gw.host.counter("tollgate.request_signing.requests_total.decision.deny.reason.replayed"), 1);
    // A stream of no DATA frames and trailers: the content is empty.
    let headers = signed_nonce("POST", "/pay", Some(b""), "n-2");
    let (id, _) = gw.send("POST", "/pay", &headers, Some(b""));
    assert_eq!(gw.request_trailers(id), Action::Continue);
    assert!(gw.host.reply(id).is_none());
    assert_eq!(gw.host.counter("tollgate.request_signing.requests_total.decision.allow"), 3);
}

/// Headers resumed after the key arrived, with the body and trailers already held by the proxy:
/// the first body callback (no end of stream) carries the whole body, which goes on at once when
/// it matches; a byte more is refused. A body that does not match waits for the trailers.
#[test]
fn after_a_resume_a_complete_body_goes_on_and_nothing_may_follow() {
    let mut gw = gateway();
    let body = br#"{"amount": 10}"#;
    let headers = signed_nonce("POST", "/pay", Some(body), "n-1");
    let (id, action) = gw.send("POST", "/pay", &headers, Some(body));
    assert_eq!(action, Action::Pause);
    gw.answer(id, &hmac_reply("key_a", v1::VerifyResult::Valid));
    assert_eq!(gw.host.resumed(id), 1);
    assert_eq!(gw.request_body(id, body.len(), false), Action::Continue, "released");
    assert_eq!(gw.request_trailers(id), Action::Continue);
    assert_eq!(gw.host.counter("tollgate.request_signing.requests_total.decision.allow"), 1);
    assert!(gw.host.reply(id).is_none());

    // The signed body, then more bytes: refused when they come.
    let mut gw = gateway();
    let headers = signed_nonce("POST", "/pay", Some(body), "n-2");
    let (id, _) = gw.send("POST", "/pay", &headers, Some(body));
    gw.answer(id, &hmac_reply("key_a", v1::VerifyResult::Valid));
    assert_eq!(gw.request_body(id, body.len(), false), Action::Continue);
    gw.host.with_request_body(id, b"extra");
    assert_eq!(gw.request_body(id, 5, true), Action::Pause);
    assert_eq!(gw.host.reply(id).unwrap().status, 401);

    assert_eq!(
        gw.host.counter("tollgate.request_signing.requests_total.decision.deny.reason.digest_mismatch"),
        1
    );

    // Tampered: held after the resume, refused at the trailers.
    let mut gw = gateway();
    let headers = signed_nonce("POST", "/pay", Some(body), "n-3");
    let (id, _) = gw.send("POST", "/pay", &headers, Some(br#"{"amount": 99}"#));
    gw.answer(id, &hmac_reply("key_a", v1::VerifyResult::Valid));
    assert_eq!(gw.request_body(id, 14, false), Action::Pause);
    assert_eq!(gw.request_trailers(id), Action::Pause);
    assert_eq!(gw.host.reply(id).unwrap().status, 401);
    assert_eq!(
        gw.host.counter("tollgate.request_signing.requests_total.decision.deny.reason.digest_mismatch"),
        1
    );
    assert_eq!(gw.host.counter("tollgate.request_signing.requests_total.decision.allow"), 0);
}

/// A signature covering `Content-Digest` is refused on a request with no body (the headers end
/// the stream), without a lookup; the nonce stays usable for the genuine request. A
/// `Content-Digest` sent without being covered binds the content too.
#[test]
fn a_stripped_body_is_refused_without_using_the_nonce() {
    let mut gw = gateway();
    let body = br#"{"amount": 10}"#;
    let headers = signed_nonce("POST", "/pay", Some(body), "n-1");
    let (id, action) = gw.send("POST", "/pay", &headers, None);
    assert_eq!(action, Action::Pause);
    assert_eq!(gw.host.reply(id).unwrap().status, 401);
    assert!(gw.host.calls().is_empty(), "refused without a lookup");
    let (id, _) = gw.send("POST", "/pay", &headers, Some(body));
    gw.answer(id, &hmac_reply("key_a", v1::VerifyResult::Valid));
    assert_eq!(gw.request_body(id, body.len(), true), Action::Continue);
    assert!(gw.host.reply(id).is_none());

    let mut get = signed("GET", "/a", None, NOW_S);
    get.push(("content-digest".into(), value(&headers, "content-digest").to_owned()));
    let (id, _) = gw.send("GET", "/a", &get, None);
    assert_eq!(gw.host.reply(id).unwrap().status, 401);
    assert_eq!(
        gw.host.counter("tollgate.request_signing.requests_total.decision.deny.reason.digest_mismatch"),
        2
    );
    assert_eq!(gw.host.counter("tollgate.request_signing.requests_total.decision.deny.reason.replayed"), 0);
}

/// `Signature-Input` and `Signature` on several field lines are combined (the signature used is
/// on the second lines), and a covered header that is not UTF-8 is verified over its bytes.
#[test]
fn signature_lines_are_combined_and_header_bytes_verified_exactly() {
    let mut gw = gateway();
    let mut weak = Options::new("key_a", NOW_S);
    weak.label = "sig1".into();
    weak.components = Some(vec!["@method".into()]);
    let sig1 = signed_with("GET", "/b", None, vec![], weak);
    let mut strong = Options::new("key_a", NOW_S);
    strong.label = "sig2".into();
    strong.components =
        Some(["@method", "@authority", "@path", "@query", r#""x-bin";bs"#].map(str::to_owned).to_vec());
    let sig2 = signed_with("GET", "/b", None, vec![("x-bin".into(), vec![0xff, 0xfe])], strong);
    let send = |gw: &mut Gateway, bin: &[u8]| {
        let (id, action) = gw.send_with("GET", "/b", None, |host, id| {
            for name in ["signature-input", "signature"] {
                host.with_header_line(id, name, value(&sig1, name));
                host.with_header_line(id, name, value(&sig2, name));
            }
            host.with_header_bytes(id, "x-bin", bin);
        });
        (id, action)
    };
    let (id, _) = send(&mut gw, &[0xff, 0xfe]);
    gw.answer(id, &hmac_reply("key_a", v1::VerifyResult::Valid));
    assert_eq!(gw.host.resumed(id), 1, "{:?}", gw.host.reply(id));
    // Other invalid bytes are another value (a lossy decoding would make them the same).
    let (id, action) = send(&mut gw, &[0xfe, 0xff]);
    assert_eq!(action, Action::Pause);
    assert_eq!(gw.host.reply(id).unwrap().status, 401);
    assert_eq!(
        gw.host.counter("tollgate.request_signing.requests_total.decision.deny.reason.bad_signature"),
        1
    );
}

/// A body that arrives while the headers are still paused (a host configured to hand it over)
/// is never passed on unchecked.
#[test]
fn a_body_before_the_headers_go_on_is_refused() {
    let mut gw = gateway();
    let body = br#"{"amount": 10}"#;
    let headers = signed("POST", "/pay", Some(body), NOW_S);
    let (id, action) = gw.send("POST", "/pay", &headers, Some(body));
    assert_eq!(action, Action::Pause);
    assert_eq!(gw.request_body(id, body.len(), true), Action::Pause);
    assert_eq!(gw.host.reply(id).unwrap().status, 401);
}

#[test]
fn shipped_example_config_is_accepted() {
    let mut gw = Gateway::on(MockHost::new());
    assert!(gw.configure(include_str!("../config.example.json")), "{:?}", gw.host.logs());
    assert_eq!(gw.host.tick_period(), Some(Duration::from_millis(500)));
    assert_eq!(gw.worker().unwrap().borrow().config.replay_slots, 8192);
}

#[test]
fn requests_are_counted_per_key_and_reported_from_the_root_context() {
    let mut gw = gateway();
    let headers = signed("GET", "/a", None, NOW_S);
    let (id, _) = gw.send("GET", "/a", &headers, None);
    gw.answer(id, &hmac_reply("key_a", v1::VerifyResult::Valid));
    // The same signature again: refused as a replay, counted against the key.
    gw.send("GET", "/a", &headers, None);
    // Unsigned: no key to count against.
    gw.send("GET", "/a", &[], None);
    gw.host.advance(Duration::from_secs(6));
    gw.tick();
    let call = gw.host.calls().into_iter().rev().find(|c| c.method == "ReportUsage").expect("a report");
    assert_eq!(call.context_id, tollgate_host::mock::ROOT_ID);
    let batch = v1::ReportUsageRequest::decode(call.message.as_slice()).unwrap();
    let mut counts: Vec<(&str, &str, u64)> =
        batch.counts.iter().map(|c| (c.key_id.as_str(), c.outcome.as_str(), c.count)).collect();
    counts.sort_unstable();
    assert_eq!(counts, [("key_a", "allowed", 1), ("key_a", "replayed", 1)]);
    assert_eq!(batch.gateway, "envoy", "no node id on the mock, no usage.gateway");
}
