//! The contexts driven against the mock host.

use std::rc::Rc;
use std::time::Duration;

use prost::Message;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::Action;
use tollgate_host::mock::MockHost;
use tollgate_proto::v1;
use tollgate_signing::{Options, Request, SigningMaterial};

use crate::{SigningHttp, SigningRoot};

const CONFIG: &str = r#"{
  "key_service": {"cluster": "keyd", "token": "tgd_test", "timeout": "200ms"},
  "policy": {"max_age": "300s", "clock_skew": "30s"},
  "max_body_bytes": 64,
  "cache": {"slots": 64},
  "replay": {"slots": 64}
}"#;

const NOW_S: i64 = 1_700_000_000;
const SECRET: [u8; 32] = [7; 32];

struct Gateway {
    host: Rc<MockHost>,
    root: SigningRoot<MockHost>,
    next_id: u32,
}

impl Gateway {
    fn new() -> Self {
        let host = MockHost::new();
        host.set_now_ms(NOW_S as u64 * 1000);
        host.with_configuration(CONFIG);
        let mut root = SigningRoot::new(host.clone());
        host.enter(1);
        assert!(root.on_configure(0));
        Self { host, root, next_id: 100 }
    }

    /// Starts a request; returns its context and the header action.
    fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: Option<&[u8]>,
    ) -> (u32, SigningHttp<MockHost>, Action) {
        self.next_id += 1;
        let id = self.next_id;
        self.host.with_header(id, ":method", method);
        self.host.with_header(id, ":path", path);
        self.host.with_header(id, ":authority", "api.test");
        self.host.with_header(id, ":scheme", "http");
        self.host.with_header(id, "x-request-id", &format!("req-{id}"));
        for (k, v) in headers {
            self.host.with_header(id, &k.to_ascii_lowercase(), v);
        }
        if let Some(b) = body {
            self.host.with_request_body(id, b);
        }
        let mut ctx = SigningHttp::new(self.host.clone(), self.root.worker().unwrap(), id);
        self.host.enter(id);
        let action = ctx.on_http_request_headers(0, body.is_none());
        (id, ctx, action)
    }

    fn answer(&self, ctx: &mut SigningHttp<MockHost>, id: u32, reply: &v1::GetSigningKeyResponse) {
        self.host.set_grpc_response(Some(reply.encode_to_vec()), None);
        self.host.enter(id);
        let token = self.host.calls().len() as u32; // the mock numbers calls from 1
        ctx.on_grpc_call_response(token, 0, 1);
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
    let url = format!("http://api.test{path}");
    let request = Request { method, url: &url, headers: vec![], body };
    let s = tollgate_signing::sign(
        &request,
        &SigningMaterial::Hmac(SECRET.to_vec()),
        &Options::new("key_a", created),
    )
    .unwrap();
    s.headers().into_iter().map(|(n, v)| (n.to_owned(), v)).collect()
}

#[test]
fn unsigned_request_gets_401_json_and_challenge_without_lookup() {
    let mut gw = Gateway::new();
    let (id, _ctx, action) = gw.request("GET", "/x", &[], None);
    assert_eq!(action, Action::Pause);
    let reply = gw.host.reply(id).unwrap();
    assert_eq!(reply.status, 401);
    assert!(reply.header("www-authenticate").unwrap().starts_with("Signature realm=\"tollgate\""));
    let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(body["error"], "unauthorized");
    assert!(gw.host.calls().is_empty());
    assert_eq!(gw.host.counter("tollgate.request_signing.denied.missing_signature"), 1);
}

#[test]
fn signed_get_is_allowed_after_one_lookup_then_from_cache_and_identity_is_set() {
    let mut gw = Gateway::new();
    let mut headers = signed("GET", "/orders?id=1", None, NOW_S);
    headers.push(("x-tollgate-consumer-id".into(), "mallory".into()));
    let (id, mut ctx, action) = gw.request("GET", "/orders?id=1", &headers, None);
    assert_eq!(action, Action::Pause);
    let calls = gw.host.calls();
    assert_eq!((calls.len(), calls[0].method.as_str()), (1, "GetSigningKey"));
    assert_eq!(v1::GetSigningKeyRequest::decode(calls[0].message.as_slice()).unwrap().key_id, "key_a");
    assert_eq!(gw.host.header(id, "x-tollgate-consumer-id"), None, "client copy removed");
    gw.answer(&mut ctx, id, &hmac_reply("key_a", v1::VerifyResult::Valid));
    assert_eq!(gw.host.resumed(id), 1);
    assert_eq!(gw.host.header(id, "x-tollgate-consumer-id").as_deref(), Some("alice"));
    assert_eq!(gw.host.header(id, "x-tollgate-key-id").as_deref(), Some("key_a"));
    // A second, differently signed request uses the cache.
    let headers = signed("GET", "/orders?id=2", None, NOW_S);
    let (_, _ctx, action) = gw.request("GET", "/orders?id=2", &headers, None);
    assert_eq!(action, Action::Continue);
    assert_eq!(gw.host.calls().len(), 1);
    assert_eq!(gw.host.counter("tollgate.request_signing.cache_hit"), 1);
}

#[test]
fn replayed_signature_is_refused() {
    let mut gw = Gateway::new();
    let headers = signed("GET", "/a", None, NOW_S);
    let (id, mut ctx, _) = gw.request("GET", "/a", &headers, None);
    gw.answer(&mut ctx, id, &hmac_reply("key_a", v1::VerifyResult::Valid));
    assert_eq!(gw.host.resumed(id), 1);
    let (id2, _ctx, action) = gw.request("GET", "/a", &headers, None);
    assert_eq!(action, Action::Pause);
    assert_eq!(gw.host.reply(id2).unwrap().status, 401);
    assert_eq!(gw.host.counter("tollgate.request_signing.denied.replayed"), 1);
    // After the replay window the signature is refused as too old, not as a replay.
    gw.host.advance(Duration::from_secs(400));
    let (id3, _ctx, _) = gw.request("GET", "/a", &headers, None);
    assert_eq!(gw.host.reply(id3).unwrap().status, 401);
    assert_eq!(gw.host.counter("tollgate.request_signing.denied.signature_too_old"), 1);
}

#[test]
fn body_is_buffered_and_its_digest_checked() {
    let mut gw = Gateway::new();
    let body = br#"{"amount": 10}"#;
    let headers = signed("POST", "/pay", Some(body), NOW_S);
    let (id, mut ctx, action) = gw.request("POST", "/pay", &headers, Some(body));
    assert_eq!(action, Action::Pause);
    gw.answer(&mut ctx, id, &hmac_reply("key_a", v1::VerifyResult::Valid));
    assert_eq!(gw.host.resumed(id), 1, "headers go on once the signature is verified");
    assert_eq!(ctx.on_http_request_body(5, false), Action::Pause, "the body is held until complete");
    assert_eq!(ctx.on_http_request_body(body.len(), true), Action::Continue);
    // Same headers, other body: the digest no longer matches.
    let headers = signed("POST", "/pay", Some(body), NOW_S + 1);
    let (id, mut ctx, action) = gw.request("POST", "/pay", &headers, Some(br#"{"amount": 99}"#));
    assert_eq!(action, Action::Continue, "material cached: the signature is accepted at once");
    assert_eq!(ctx.on_http_request_body(14, true), Action::Pause);
    assert_eq!(gw.host.reply(id).unwrap().status, 401);
    assert_eq!(gw.host.counter("tollgate.request_signing.denied.digest_mismatch"), 1);
}

#[test]
fn body_without_covered_digest_and_oversized_body_are_refused() {
    let mut gw = Gateway::new();
    let headers = signed("POST", "/pay", None, NOW_S);
    let (id, _ctx, _) = gw.request("POST", "/pay", &headers, Some(b"x"));
    assert_eq!(gw.host.reply(id).unwrap().status, 401);
    assert_eq!(gw.host.counter("tollgate.request_signing.denied.missing_digest"), 1);
    let big = vec![b'a'; 100];
    let headers = signed("POST", "/pay", Some(&big), NOW_S);
    let (id, mut ctx, _) = gw.request("POST", "/pay", &headers, Some(&big));
    gw.answer(&mut ctx, id, &hmac_reply("key_a", v1::VerifyResult::Valid));
    assert_eq!(ctx.on_http_request_body(100, false), Action::Pause);
    assert_eq!(gw.host.reply(id).unwrap().status, 413);
    let mut declared = signed("POST", "/pay", Some(&big), NOW_S);
    declared.push(("content-length".into(), "100".into()));
    let (id, _ctx, _) = gw.request("POST", "/pay", &declared, Some(&big));
    assert_eq!(gw.host.reply(id).unwrap().status, 413);
    assert_eq!(gw.host.counter("tollgate.request_signing.denied.body_too_large"), 2);
}

#[test]
fn revoked_unknown_wrong_alg_and_unavailable_keys_are_refused() {
    let mut gw = Gateway::new();
    let headers = signed("GET", "/r", None, NOW_S);
    let (id, mut ctx, _) = gw.request("GET", "/r", &headers, None);
    gw.answer(&mut ctx, id, &hmac_reply("key_a", v1::VerifyResult::Revoked));
    assert_eq!(gw.host.reply(id).unwrap().status, 401);
    assert_eq!(gw.host.counter("tollgate.request_signing.denied.revoked_key"), 1);

    let mut gw = Gateway::new();
    let headers = signed("GET", "/r", None, NOW_S);
    let (id, mut ctx, _) = gw.request("GET", "/r", &headers, None);
    let mut ed = hmac_reply("key_a", v1::VerifyResult::Valid);
    ed.algorithm = v1::SigningAlgorithm::Ed25519 as i32;
    ed.hmac_secret.clear();
    ed.ed25519_public_key = SigningMaterial::Ed25519([3; 32]).verifying_bytes();
    gw.answer(&mut ctx, id, &ed);
    assert_eq!(gw.host.counter("tollgate.request_signing.denied.algorithm_mismatch"), 1);

    let mut gw = Gateway::new();
    let headers = signed("GET", "/r", None, NOW_S);
    let (id, mut ctx, _) = gw.request("GET", "/r", &headers, None);
    gw.host.set_grpc_response(None, Some("down"));
    gw.host.enter(id);
    ctx.on_grpc_call_response(1, 14, 0);
    let reply = gw.host.reply(id).unwrap();
    assert_eq!((reply.status, reply.header("retry-after")), (503, Some("1")));
}

#[test]
fn revocation_on_the_change_feed_invalidates_the_cached_material() {
    let mut gw = Gateway::new();
    let (id, mut ctx, _) = gw.request("GET", "/a", &signed("GET", "/a", None, NOW_S), None);
    gw.answer(&mut ctx, id, &hmac_reply("key_a", v1::VerifyResult::Valid));
    // First poll learns the head; the second sees the revocation.
    for (changes, head) in [(vec![], 1u64), (vec![(2u64, "key_a")], 2)] {
        gw.host.enter(1);
        gw.root.on_tick();
        let reply = v1::ListChangesResponse {
            changes: changes
                .iter()
                .map(|(s, k)| v1::Change { seq: *s, key_id: (*k).into(), kind: 3, ..Default::default() })
                .collect(),
            head_seq: head,
        };
        gw.host.set_grpc_response(Some(reply.encode_to_vec()), None);
        let token = gw.host.calls().len() as u32;
        gw.root.on_grpc_call_response(token, 0, 1);
        gw.host.advance(Duration::from_secs(1));
    }
    let calls_before = gw.host.calls().len();
    let (_, _ctx, action) = gw.request("GET", "/b", &signed("GET", "/b", None, NOW_S), None);
    assert_eq!(action, Action::Pause);
    assert_eq!(gw.host.calls().len(), calls_before + 1, "asks the key service again");
}

#[test]
fn bad_config_is_rejected() {
    let host = MockHost::new();
    host.with_configuration(r#"{"key_service": {"cluster": "keyd", "token": "t"}, "max_body_bytes": 0}"#);
    let mut root = SigningRoot::new(host.clone());
    host.enter(1);
    assert!(!root.on_configure(0));
    assert!(host.logs().iter().any(|(_, l)| l.contains("max_body_bytes")));
}
