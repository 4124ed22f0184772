//! The contexts driven against the mock host.

use std::rc::Rc;
use std::time::Duration;

use p256::ecdsa::SigningKey;
use p256::ecdsa::signature::Signer;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::Action;
use serde_json::{Value, json};
use tollgate_core::jwt::b64;
use tollgate_host::Host;
use tollgate_host::mock::MockHost;

use crate::{JwtAuthHttp, JwtAuthRoot};

const ISS: &str = "https://idp.example/realms/demo";

/// A P-256 key made at test time from a seed (nothing is committed).
fn key(seed: u8) -> SigningKey {
    let bytes: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(37).wrapping_add(seed) | 1).collect();
    SigningKey::from_slice(&bytes).unwrap()
}

fn jwk(k: &SigningKey, kid: &str) -> Value {
    let point = k.verifying_key().to_encoded_point(false);
    json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
           "x": b64::encode(point.x().unwrap()), "y": b64::encode(point.y().unwrap())})
}

fn sign(k: &SigningKey, kid: &str, claims: &Value) -> String {
    let header = json!({"alg": "ES256", "typ": "JWT", "kid": kid});
    let input = format!(
        "{}.{}",
        b64::encode(header.to_string().as_bytes()),
        b64::encode(claims.to_string().as_bytes())
    );
    let sig: p256::ecdsa::Signature = k.sign(input.as_bytes());
    format!("{input}.{}", b64::encode(&sig.to_bytes()))
}

const NOW_S: i64 = 1_700_000_000;

fn claims(extra: Value) -> Value {
    let mut c = json!({"iss": ISS, "aud": "api", "sub": "alice", "exp": NOW_S + 600, "iat": NOW_S,
                       "scope": "read", "email": "alice@example.com"});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

fn inline_config() -> String {
    json!({
        "providers": [{"name": "idp", "issuer": ISS, "audiences": ["api"], "jwks": {"keys": [jwk(&key(1), "k1")]}}],
        "routes": [{"path_prefix": "/admin", "scopes": ["admin"]}],
        "claim_headers": {"x-user-email": "email"},
        "cache": {"slots": 64}
    })
    .to_string()
}

fn remote_config() -> String {
    json!({
        "providers": [{"name": "idp", "issuer": ISS, "audiences": ["api"],
                       "remote_jwks": {"cluster": "idp", "path": "/certs", "authority": "idp.example",
                                       "refresh_interval": "60s", "refetch_cooldown": "10s", "max_stale": "1h"}}],
        "cache": {"slots": 0}
    })
    .to_string()
}

struct Gateway {
    host: Rc<MockHost>,
    root: JwtAuthRoot<MockHost>,
    next_id: u32,
}

impl Gateway {
    fn new(config: &str) -> Self {
        let host = MockHost::new();
        host.set_now_ms(NOW_S as u64 * 1000);
        host.with_configuration(config);
        let mut root = JwtAuthRoot::new(host.clone());
        host.enter(1);
        assert!(root.on_configure(0));
        Self { host, root, next_id: 100 }
    }

    fn request(&mut self, path: &str, headers: &[(&str, &str)]) -> (u32, JwtAuthHttp<MockHost>, Action) {
        self.next_id += 1;
        let id = self.next_id;
        self.host.with_header(id, ":path", path);
        self.host.with_header(id, ":method", "GET");
        self.host.with_header(id, "x-request-id", &format!("req-{id}"));
        for (k, v) in headers {
            self.host.with_header(id, k, v);
        }
        let mut ctx = JwtAuthHttp::new(self.host.clone(), self.root.worker().unwrap(), id);
        self.host.enter(id);
        let action = ctx.on_http_request_headers(0, true);
        (id, ctx, action)
    }

    fn bearer(&mut self, path: &str, token: &str) -> (u32, JwtAuthHttp<MockHost>, Action) {
        let auth = format!("Bearer {token}");
        self.request(path, &[("authorization", &auth)])
    }

    fn tick(&mut self) {
        self.host.enter(1);
        self.root.on_tick();
    }

    /// Answers the root context's last HTTP call.
    fn answer_root(&mut self, status: &str, body: &[u8]) {
        let call = self.host.http_calls().last().cloned().unwrap();
        self.host.set_http_response(&[(":status", status)], Some(body));
        self.host.enter(1);
        self.root.on_http_call_response(call.token, 1, body.len(), 0);
    }

    fn status(&self, id: u32) -> Option<u32> {
        self.host.reply(id).map(|r| r.status)
    }
}

#[test]
fn a_valid_token_passes_with_identity_headers_and_properties() {
    let mut gw = Gateway::new(&inline_config());
    let token = sign(&key(1), "k1", &claims(json!({})));
    let auth = format!("Bearer {token}");
    let (id, _ctx, action) = gw.request(
        "/hello",
        &[("authorization", &auth), ("x-tollgate-consumer-id", "mallory"), ("x-user-email", "forged@x")],
    );
    assert_eq!(action, Action::Continue, "{:?}", gw.host.reply(id));
    assert_eq!(gw.host.header(id, "x-tollgate-consumer-id").as_deref(), Some("alice"));
    assert_eq!(gw.host.header(id, "x-tollgate-issuer").as_deref(), Some(ISS));
    assert_eq!(gw.host.header(id, "x-tollgate-scopes").as_deref(), Some("read"));
    assert_eq!(gw.host.header(id, "x-user-email").as_deref(), Some("alice@example.com"));
    assert_eq!(gw.host.header(id, "authorization"), Some(auth), "forwarded by default");
    assert_eq!(gw.host.request_property(id, &["tollgate.consumer_id"]).as_deref(), Some(&b"alice"[..]));
    assert_eq!(gw.host.request_property(id, &["tollgate.issuer"]).as_deref(), Some(ISS.as_bytes()));
    assert_eq!(
        gw.host.request_property(id, &["tollgate.claims.email"]).as_deref(),
        Some(&b"alice@example.com"[..])
    );
    assert_eq!(gw.host.counter("tollgate.jwt_auth.allowed"), 1);
}

#[test]
fn missing_token_gets_a_bare_challenge_and_json() {
    let mut gw = Gateway::new(&inline_config());
    let (id, _ctx, action) = gw.request("/hello", &[("x-tollgate-consumer-id", "mallory")]);
    assert_eq!(action, Action::Pause);
    let reply = gw.host.reply(id).unwrap();
    assert_eq!(reply.status, 401);
    assert_eq!(reply.header("www-authenticate"), Some("Bearer realm=\"tollgate\""));
    let body: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(body["error"], "unauthorized");
    assert_eq!(body["request_id"], format!("req-{id}"));
    assert_eq!(gw.host.header(id, "x-tollgate-consumer-id"), None);
    assert_eq!(gw.host.counter("tollgate.jwt_auth.denied.missing_token"), 1);
}

#[test]
fn bad_tokens_get_401_invalid_token_with_the_reason_counted() {
    let mut gw = Gateway::new(&inline_config());
    let k = key(1);
    let tampered = format!("{}=", sign(&k, "k1", &claims(json!({}))));
    let cases = [
        (sign(&k, "k1", &claims(json!({"exp": NOW_S - 120}))), "expired"),
        (sign(&k, "k1", &claims(json!({"iss": "https://evil"}))), "unknown_issuer"),
        (sign(&k, "k1", &claims(json!({"aud": "other"}))), "wrong_audience"),
        (sign(&key(2), "k1", &claims(json!({}))), "bad_signature"),
        (tampered, "malformed"),
        (sign(&k, "k9", &claims(json!({}))), "unknown_kid"),
        ("not-a-token".to_owned(), "malformed"),
    ];
    for (token, reason) in cases {
        let stat = format!("tollgate.jwt_auth.denied.{reason}");
        let before = gw.host.counter(&stat);
        let (id, _ctx, action) = gw.bearer("/hello", &token);
        assert_eq!(action, Action::Pause, "{reason}");
        let reply = gw.host.reply(id).unwrap();
        assert_eq!(reply.status, 401, "{reason}");
        let challenge = reply.header("www-authenticate").unwrap();
        assert!(challenge.contains("error=\"invalid_token\""), "{reason}: {challenge}");
        assert_eq!(gw.host.counter(&stat), before + 1, "{reason}");
    }
    assert_eq!(gw.host.counter("tollgate.jwt_auth.allowed"), 0);
}

#[test]
fn missing_scope_is_403_insufficient_scope() {
    let mut gw = Gateway::new(&inline_config());
    let token = sign(&key(1), "k1", &claims(json!({})));
    let (id, _ctx, _) = gw.bearer("/admin/users", &token);
    let reply = gw.host.reply(id).unwrap();
    assert_eq!(reply.status, 403);
    let challenge = reply.header("www-authenticate").unwrap();
    assert!(
        challenge.contains("error=\"insufficient_scope\"") && challenge.contains("scope=\"admin\""),
        "{challenge}"
    );
    let admin = sign(&key(1), "k1", &claims(json!({"scope": "read admin"})));
    let (_, _, action) = gw.bearer("/admin/users", &admin);
    assert_eq!(action, Action::Continue);
}

#[test]
fn a_repeated_token_is_served_from_the_cache_and_still_expires() {
    let mut gw = Gateway::new(&inline_config());
    let token = sign(&key(1), "k1", &claims(json!({"exp": NOW_S + 30})));
    assert_eq!(gw.bearer("/a", &token).2, Action::Continue);
    assert_eq!(gw.host.counter("tollgate.jwt_auth.cache_miss"), 1);
    assert_eq!(gw.bearer("/a", &token).2, Action::Continue);
    assert_eq!(gw.host.counter("tollgate.jwt_auth.cache_hit"), 1);
    // Route rules still apply to cached tokens.
    let (id, _, _) = gw.bearer("/admin", &token);
    assert_eq!(gw.status(id), Some(403));
    // Past exp the entry is not used, and the token is refused.
    gw.host.advance(Duration::from_secs(100));
    let (id, _, _) = gw.bearer("/a", &token);
    assert_eq!(gw.status(id), Some(401));
    assert_eq!(gw.host.counter("tollgate.jwt_auth.denied.expired"), 1);
}

#[test]
fn two_tokens_are_refused() {
    let mut gw = Gateway::new(&inline_config().replace(
        r#""cache""#,
        r#""sources":[{"header":"authorization","prefix":"Bearer "},{"query":"access_token"}],"cache""#,
    ));
    let token = sign(&key(1), "k1", &claims(json!({})));
    let (id, _, _) = gw.bearer(&format!("/a?access_token={token}"), &token);
    assert_eq!(gw.status(id), Some(401));
    assert_eq!(gw.host.counter("tollgate.jwt_auth.denied.multiple_tokens"), 1);
}

#[test]
fn invalid_config_is_refused_naming_the_field() {
    let host = MockHost::new();
    host.with_configuration(r#"{"providers":[{"name":"idp","issuer":"x","audiences":["a"],"jwks":{"keys":[{"kty":"oct","k":"AQID"}]},"algorithms":["HS256"]}]}"#);
    let mut root = JwtAuthRoot::new(host.clone());
    assert!(!root.on_configure(0));
    let logs = host.logs();
    assert!(logs.iter().any(|(_, m)| m.contains("providers[0].jwks")), "{logs:?}");
}

#[test]
fn remote_keys_are_fetched_on_tick_and_shared_with_other_workers() {
    let mut gw = Gateway::new(&remote_config());
    let token = sign(&key(1), "k1", &claims(json!({})));
    gw.tick();
    let calls = gw.host.http_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].cluster, "idp");
    assert!(calls[0].headers.contains(&(":path".into(), "/certs".into())));
    // A second tick while the fetch is in flight starts no other.
    gw.tick();
    assert_eq!(gw.host.http_calls().len(), 1);
    gw.answer_root("200", json!({"keys": [jwk(&key(1), "k1")]}).to_string().as_bytes());
    assert_eq!(gw.bearer("/a", &token).2, Action::Continue);

    // Another worker uses the stored set without fetching.
    let other = MockHost::sharing_with(&gw.host);
    other.with_configuration(&remote_config());
    let mut root2 = JwtAuthRoot::new(other.clone());
    assert!(root2.on_configure(0));
    other.with_header(7, ":path", "/a");
    other.with_header(7, "authorization", &format!("Bearer {token}"));
    other.enter(7);
    let mut ctx = JwtAuthHttp::new(other.clone(), root2.worker().unwrap(), 7);
    assert_eq!(ctx.on_http_request_headers(0, true), Action::Continue);
    assert!(other.http_calls().is_empty());
}

#[test]
fn unknown_kid_refetches_once_and_resumes_the_request() {
    let mut gw = Gateway::new(&remote_config());
    gw.tick();
    gw.answer_root("200", json!({"keys": [jwk(&key(1), "k1")]}).to_string().as_bytes());
    gw.host.advance(Duration::from_secs(20)); // past the cooldown

    // The IdP rotated to k2.
    let token = sign(&key(2), "k2", &claims(json!({"exp": NOW_S + 600})));
    let (id, mut ctx, action) = gw.bearer("/a", &token);
    assert_eq!(action, Action::Pause);
    assert_eq!(gw.status(id), None, "waiting, not refused");
    assert_eq!(gw.host.http_calls().len(), 2);
    assert_eq!(gw.host.counter("tollgate.jwt_auth.jwks_refetch_unknown_kid"), 1);
    // A second request with an unknown kid within the cooldown is refused without a fetch.
    let (id2, _, _) = gw.bearer("/a", &sign(&key(3), "k3", &claims(json!({}))));
    assert_eq!(gw.status(id2), Some(401));
    assert_eq!(gw.host.http_calls().len(), 2);

    let body = json!({"keys": [jwk(&key(1), "k1"), jwk(&key(2), "k2")]}).to_string();
    gw.host.set_http_response(&[(":status", "200")], Some(body.as_bytes()));
    gw.host.enter(id);
    ctx.on_http_call_response(2, 1, body.len(), 0);
    assert_eq!(gw.host.resumed(id), 1);
    assert_eq!(gw.status(id), None);
    assert_eq!(gw.host.header(id, "x-tollgate-consumer-id").as_deref(), Some("alice"));
}

#[test]
fn a_failed_refresh_keeps_the_last_good_keys_until_max_stale() {
    let mut gw = Gateway::new(&remote_config());
    gw.tick();
    gw.answer_root("200", json!({"keys": [jwk(&key(1), "k1")]}).to_string().as_bytes());
    gw.host.advance(Duration::from_secs(61));
    gw.tick();
    assert_eq!(gw.host.http_calls().len(), 2);
    gw.answer_root("503", b"down");
    gw.tick();
    gw.answer_root("200", b"<html>not a key set</html>");
    assert!(gw.host.counter("tollgate.jwt_auth.jwks_fetch_error") >= 1);
    assert!(gw.host.logs().iter().any(|(_, m)| m.contains("keeping the last good key set")));
    let token = sign(&key(1), "k1", &claims(json!({"exp": NOW_S + 7200})));
    assert_eq!(gw.bearer("/a", &token).2, Action::Continue);
    // Past max_stale the keys are no longer trusted.
    gw.host.advance(Duration::from_secs(3600));
    gw.host.refuse_calls(true);
    let (id, _, _) = gw.bearer("/a", &token);
    assert_eq!(gw.status(id), Some(503));
}

#[test]
fn no_keys_yet_and_a_refused_call_is_503() {
    let mut gw = Gateway::new(&remote_config());
    gw.host.refuse_calls(true);
    let (id, _, _) = gw.bearer("/a", &sign(&key(1), "k1", &claims(json!({}))));
    let reply = gw.host.reply(id).unwrap();
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert_eq!(gw.host.now_ms() / 1000, NOW_S as u64);
}
