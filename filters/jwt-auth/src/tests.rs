//! The contexts driven against the mock host.

use std::rc::Rc;
use std::time::Duration;

use p256::ecdsa::SigningKey;
use proxy_wasm::types::Action;
use serde_json::{Value, json};
use tollgate_core::jwt::b64;
use tollgate_host::Host;
use tollgate_host::mock::{Harness, MockHost, ROOT_ID};
use tollgate_testkit::jwt::mint as sign;

use crate::JwtAuth;
use crate::worker::{FLIGHT_GRACE_MS, MAX_WAITERS};

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

type Gateway = Harness<JwtAuth>;

/// A worker with the filter configured, its clock at [`NOW_S`].
fn gateway(config: &str) -> Gateway {
    let host = MockHost::new();
    host.set_now_ms(NOW_S as u64 * 1000);
    Gateway::configured(host, config)
}

/// Requests and answers as the tests speak of them.
trait Drive {
    /// Starts a GET with these headers; returns its id and the action.
    fn send(&mut self, path: &str, headers: &[(&str, &str)]) -> (u32, Action);
    fn bearer(&mut self, path: &str, token: &str) -> (u32, Action);
    /// A request whose headers are these field lines, repeated names kept as separate lines.
    fn send_lines(&mut self, path: &str, lines: &[(&str, &str)]) -> (u32, Action);
    /// Answers the root context's last HTTP call.
    fn answer_root(&mut self, status: &str, body: &[u8]);
    /// Answers the last HTTP call, made by request `id`'s context.
    fn answer(&mut self, id: u32, status: &str, body: &[u8]);
    fn status(&self, id: u32) -> Option<u32>;
    fn calls(&self) -> usize;
    /// The request went away (the proxy destroys its context after `on_done`).
    fn gone(&mut self, id: u32);
}

impl Drive for Gateway {
    fn send(&mut self, path: &str, headers: &[(&str, &str)]) -> (u32, Action) {
        let id = self.request(&[(":path", path), (":method", "GET")]);
        self.host.with_header(id, "x-request-id", &format!("req-{id}"));
        for (k, v) in headers {
            self.host.with_header(id, k, v);
        }
        (id, self.request_headers(id, true))
    }

    fn bearer(&mut self, path: &str, token: &str) -> (u32, Action) {
        let auth = format!("Bearer {token}");
        self.send(path, &[("authorization", &auth)])
    }

    fn send_lines(&mut self, path: &str, lines: &[(&str, &str)]) -> (u32, Action) {
        let id = self.request(&[(":path", path), (":method", "GET")]);
        for (k, v) in lines {
            self.host.with_header_line(id, k, v);
        }
        (id, self.request_headers(id, true))
    }

    fn answer_root(&mut self, status: &str, body: &[u8]) {
        let call = self.host.http_calls().last().cloned().unwrap();
        self.host.set_http_response(&[(":status", status)], Some(body));
        self.http_response(ROOT_ID, call.token, body.len());
    }

    fn answer(&mut self, id: u32, status: &str, body: &[u8]) {
        let call = self.host.http_calls().last().cloned().unwrap();
        assert_eq!(call.context_id, id);
        self.host.set_http_response(&[(":status", status)], Some(body));
        self.http_response(id, call.token, body.len());
    }

    fn status(&self, id: u32) -> Option<u32> {
        self.host.reply(id).map(|r| r.status)
    }

    fn calls(&self) -> usize {
        self.host.http_calls().len()
    }

    fn gone(&mut self, id: u32) {
        assert!(self.done(id));
    }
}

#[test]
fn a_valid_token_passes_with_identity_headers_and_properties() {
    let mut gw = gateway(&inline_config());
    let token = sign(&key(1), "k1", &claims(json!({})));
    let auth = format!("Bearer {token}");
    let (id, action) = gw.send(
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
    assert_eq!(gw.host.counter("tollgate.jwt_auth.requests_total.decision.allow"), 1);
}

#[test]
fn missing_token_gets_a_bare_challenge_and_json() {
    let mut gw = gateway(&inline_config());
    let (id, action) = gw.send("/hello", &[("x-tollgate-consumer-id", "mallory")]);
    assert_eq!(action, Action::Pause);
    let reply = gw.host.reply(id).unwrap();
    assert_eq!(reply.status, 401);
    assert_eq!(reply.header("www-authenticate"), Some("Bearer realm=\"tollgate\""));
    let body: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(body["error"], "unauthorized");
    assert_eq!(body["request_id"], format!("req-{id}"));
    assert_eq!(gw.host.header(id, "x-tollgate-consumer-id"), None);
    assert_eq!(gw.host.counter("tollgate.jwt_auth.requests_total.decision.deny.reason.missing_token"), 1);
}

#[test]
fn bad_tokens_get_401_invalid_token_with_the_reason_counted() {
    let mut gw = gateway(&inline_config());
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
        let stat = format!("tollgate.jwt_auth.requests_total.decision.deny.reason.{reason}");
        let before = gw.host.counter(&stat);
        let (id, action) = gw.bearer("/hello", &token);
        assert_eq!(action, Action::Pause, "{reason}");
        let reply = gw.host.reply(id).unwrap();
        assert_eq!(reply.status, 401, "{reason}");
        let challenge = reply.header("www-authenticate").unwrap();
        assert!(challenge.contains("error=\"invalid_token\""), "{reason}: {challenge}");
        assert_eq!(gw.host.counter(&stat), before + 1, "{reason}");
    }
    assert_eq!(gw.host.counter("tollgate.jwt_auth.requests_total.decision.allow"), 0);
}

#[test]
fn missing_scope_is_403_insufficient_scope() {
    let mut gw = gateway(&inline_config());
    let token = sign(&key(1), "k1", &claims(json!({})));
    let (id, _) = gw.bearer("/admin/users", &token);
    let reply = gw.host.reply(id).unwrap();
    assert_eq!(reply.status, 403);
    let challenge = reply.header("www-authenticate").unwrap();
    assert!(
        challenge.contains("error=\"insufficient_scope\"") && challenge.contains("scope=\"admin\""),
        "{challenge}"
    );
    let admin = sign(&key(1), "k1", &claims(json!({"scope": "read admin"})));
    let (_, action) = gw.bearer("/admin/users", &admin);
    assert_eq!(action, Action::Continue);
}

#[test]
fn a_repeated_token_is_served_from_the_cache_and_still_expires() {
    let mut gw = gateway(&inline_config());
    let token = sign(&key(1), "k1", &claims(json!({"exp": NOW_S + 30})));
    assert_eq!(gw.bearer("/a", &token).1, Action::Continue);
    assert_eq!(gw.host.counter("tollgate.jwt_auth.cache_lookups_total.result.miss"), 1);
    assert_eq!(gw.bearer("/a", &token).1, Action::Continue);
    assert_eq!(gw.host.counter("tollgate.jwt_auth.cache_lookups_total.result.hit"), 1);
    // The worker keeps the verification, claims parsed: no shared-data read.
    let reads = gw.host.shared_reads();
    assert_eq!(gw.bearer("/a", &token).1, Action::Continue);
    assert_eq!(gw.host.shared_reads(), reads);
    // Another worker finds it in shared data.
    let mut gw2 = Gateway::configured(MockHost::sharing_with(&gw.host), &inline_config());
    assert_eq!(gw2.bearer("/a", &token).1, Action::Continue);
    assert_eq!(gw2.host.counter("tollgate.jwt_auth.cache_lookups_total.result.hit"), 1);
    // Route rules still apply to cached tokens.
    let (id, _) = gw.bearer("/admin", &token);
    assert_eq!(gw.status(id), Some(403));
    // Past exp the entry is not used, and the token is refused.
    gw.host.advance(Duration::from_secs(100));
    let (id, _) = gw.bearer("/a", &token);
    assert_eq!(gw.status(id), Some(401));
    assert_eq!(gw.host.counter("tollgate.jwt_auth.requests_total.decision.deny.reason.expired"), 1);
}

#[test]
fn two_tokens_are_refused() {
    let mut gw = gateway(&inline_config().replace(
        r#""cache""#,
        r#""sources":[{"header":"authorization","prefix":"Bearer "},{"query":"access_token"}],"cache""#,
    ));
    let token = sign(&key(1), "k1", &claims(json!({})));
    let (id, _) = gw.bearer(&format!("/a?access_token={token}"), &token);
    assert_eq!(gw.status(id), Some(401));
    assert_eq!(gw.host.counter("tollgate.jwt_auth.requests_total.decision.deny.reason.multiple_tokens"), 1);
}

#[test]
fn invalid_config_is_refused_naming_the_field() {
    let mut gw = Gateway::on(MockHost::new());
    assert!(!gw.configure(
        r#"{"providers":[{"name":"idp","issuer":"x","audiences":["a"],"jwks":{"keys":[{"kty":"oct","k":"AQID"}]},"algorithms":["HS256"]}]}"#
    ));
    let logs = gw.host.logs();
    assert!(logs.iter().any(|(_, m)| m.contains("providers[0].jwks")), "{logs:?}");
}

#[test]
fn remote_keys_are_fetched_on_tick_and_shared_with_other_workers() {
    let mut gw = gateway(&remote_config());
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
    assert_eq!(gw.bearer("/a", &token).1, Action::Continue);

    // Another worker uses the stored set without fetching.
    let mut other = Gateway::configured(MockHost::sharing_with(&gw.host), &remote_config());
    let id = other.request(&[(":path", "/a"), ("authorization", &format!("Bearer {token}"))]);
    assert_eq!(other.request_headers(id, true), Action::Continue);
    assert!(other.host.http_calls().is_empty());
}

#[test]
fn unknown_kid_refetches_once_and_resumes_the_request() {
    let mut gw = gateway(&remote_config());
    gw.tick();
    gw.answer_root("200", json!({"keys": [jwk(&key(1), "k1")]}).to_string().as_bytes());
    gw.host.advance(Duration::from_secs(20)); // past the cooldown

    // The IdP rotated to k2.
    let token = sign(&key(2), "k2", &claims(json!({"exp": NOW_S + 600})));
    let (id, action) = gw.bearer("/a", &token);
    assert_eq!(action, Action::Pause);
    assert_eq!(gw.status(id), None, "waiting, not refused");
    assert_eq!(gw.host.http_calls().len(), 2);
    assert_eq!(gw.host.counter("tollgate.jwt_auth.jwks_refetch_unknown_kid_total"), 1);
    let body = json!({"keys": [jwk(&key(1), "k1"), jwk(&key(2), "k2")]}).to_string();
    gw.answer(id, "200", body.as_bytes());
    assert_eq!(gw.host.resumed(id), 1);
    assert_eq!(gw.status(id), None);
    assert_eq!(gw.host.header(id, "x-tollgate-consumer-id").as_deref(), Some("alice"));
    // Within the cooldown, another unknown kid is refused without a fetch.
    let (id3, _) = gw.bearer("/a", &sign(&key(3), "k3", &claims(json!({}))));
    assert_eq!(gw.status(id3), Some(401));
    assert_eq!(gw.host.http_calls().len(), 2);
}

fn remote_config_with_rules() -> String {
    remote_config().replace(r#""cache""#, r#""routes":[{"path_prefix":"/admin","scopes":["admin"]}],"cache""#)
}

/// The key set after the IdP added k2.
fn rotated() -> String {
    json!({"keys": [jwk(&key(1), "k1"), jwk(&key(2), "k2")]}).to_string()
}

/// A gateway whose key set (k1) was fetched, past the unknown-`kid` cooldown.
fn with_k1(config: &str) -> Gateway {
    let mut gw = gateway(config);
    gw.tick();
    gw.answer_root("200", json!({"keys": [jwk(&key(1), "k1")]}).to_string().as_bytes());
    gw.host.advance(Duration::from_secs(20));
    gw
}

#[test]
fn requests_needing_a_fetch_wait_for_one_and_each_gets_its_own_decision() {
    let mut gw = with_k1(&remote_config_with_rules());
    let k2 = sign(&key(2), "k2", &claims(json!({})));
    let (a, action) = gw.bearer("/a", &k2);
    assert_eq!(action, Action::Pause);
    assert_eq!(gw.calls(), 2, "one fetch");
    let (b, action) = gw.bearer("/admin/x", &sign(&key(2), "k2", &claims(json!({"sub": "bob"}))));
    assert_eq!(action, Action::Pause, "{:?}", gw.host.reply(b));
    let (c, action) = gw.bearer("/a", &sign(&key(3), "k3", &claims(json!({}))));
    assert_eq!(action, Action::Pause);
    let (d, action) =
        gw.bearer("/a", &sign(&key(2), "k2", &claims(json!({"sub": "dan", "exp": NOW_S - 3600}))));
    assert_eq!(action, Action::Pause);
    assert_eq!(gw.calls(), 2, "the others wait for the same fetch");
    assert_eq!(gw.host.counter("tollgate.jwt_auth.jwks_singleflight_joined_total"), 3);
    // A token of a known key does not wait.
    assert_eq!(gw.bearer("/a", &sign(&key(1), "k1", &claims(json!({})))).1, Action::Continue);
    for id in [a, b, c, d] {
        assert_eq!(gw.status(id), None, "{id} waits");
    }

    gw.answer(a, "200", rotated().as_bytes());
    assert_eq!(gw.host.resumed(a), 1);
    assert_eq!(gw.host.header(a, "x-tollgate-consumer-id").as_deref(), Some("alice"));
    assert_eq!(gw.status(b), Some(403), "bob lacks `admin` on /admin");
    assert_eq!(gw.status(c), Some(401), "k3 is still unknown");
    assert_eq!(gw.status(d), Some(401), "dan's token expired");
    assert_eq!(gw.host.counter("tollgate.jwt_auth.requests_total.decision.deny.reason.unknown_kid"), 1);
    assert_eq!(gw.host.counter("tollgate.jwt_auth.requests_total.decision.deny.reason.expired"), 1);
    for id in [b, c, d] {
        assert_eq!(gw.host.resumed(id), 0);
    }
    assert_eq!(gw.host.http_calls().len(), 2);
}

#[test]
fn a_waiter_that_goes_away_is_dropped_and_a_leader_that_goes_away_hands_the_fetch_to_the_root() {
    let mut gw = with_k1(&remote_config());
    let k2 = sign(&key(2), "k2", &claims(json!({})));
    let (a, _) = gw.bearer("/a", &k2);
    let (b, _) = gw.bearer("/b", &k2);
    let (c, _) = gw.bearer("/c", &k2);
    assert_eq!(gw.calls(), 2);
    gw.gone(c);
    // The leader goes away: its call is cancelled with it; the root context fetches again.
    gw.gone(a);
    gw.tick();
    let calls = gw.host.http_calls();
    assert_eq!(calls.len(), 3);
    assert_eq!(calls[2].context_id, 1, "fetched by the root context");
    gw.answer_root("200", rotated().as_bytes());
    assert_eq!(gw.host.resumed(b), 1);
    assert_eq!(gw.host.header(b, "x-tollgate-consumer-id").as_deref(), Some("alice"));
    for gone in [a, c] {
        assert_eq!(gw.host.resumed(gone), 0);
        assert_eq!(gw.status(gone), None);
    }
    assert_eq!(gw.host.counter("tollgate.jwt_auth.requests_total.decision.allow"), 1);
    // Requests after it need no fetch.
    assert_eq!(gw.bearer("/d", &k2).1, Action::Continue);
    assert_eq!(gw.calls(), 3);
}

#[test]
fn a_leader_alone_that_goes_away_still_gets_the_new_keys_fetched() {
    let mut gw = with_k1(&remote_config());
    let k2 = sign(&key(2), "k2", &claims(json!({})));
    let (a, _) = gw.bearer("/a", &k2);
    gw.gone(a);
    gw.tick();
    assert_eq!(gw.calls(), 3);
    gw.answer_root("200", rotated().as_bytes());
    assert_eq!(gw.bearer("/b", &k2).1, Action::Continue, "the rotation was picked up");
}

#[test]
fn requests_wait_for_the_fetch_another_worker_has_in_flight() {
    let mut gw = with_k1(&remote_config());
    let k2 = sign(&key(2), "k2", &claims(json!({})));
    let (a, _) = gw.bearer("/a", &k2);
    assert_eq!(gw.calls(), 2);

    // Worker 2 (same shared data) sees a k2 token while worker 1 fetches.
    let mut other = Gateway::configured(MockHost::sharing_with(&gw.host), &remote_config());
    let id = other.request(&[(":path", "/a"), ("authorization", &format!("Bearer {k2}"))]);
    assert_eq!(other.request_headers(id, true), Action::Pause);
    assert!(other.host.http_calls().is_empty(), "no second fetch");
    assert_eq!(other.host.reply(id), None, "waits");
    other.tick();
    assert_eq!(other.host.reply(id), None, "still waits while worker 1 fetches");

    gw.answer(a, "200", rotated().as_bytes());
    assert_eq!(gw.host.resumed(a), 1);
    other.tick();
    assert_eq!(other.host.resumed(id), 1, "{:?}", other.host.reply(id));
    assert_eq!(other.host.header(id, "x-tollgate-consumer-id").as_deref(), Some("alice"));
    assert!(other.host.http_calls().is_empty());
}

#[test]
fn a_request_waits_for_the_root_contexts_fetch_in_flight() {
    let mut gw = gateway(&remote_config());
    gw.tick(); // no keys yet: the root context fetches
    assert_eq!(gw.calls(), 1);
    let (a, action) = gw.bearer("/a", &sign(&key(1), "k1", &claims(json!({}))));
    assert_eq!(action, Action::Pause, "{:?}", gw.host.reply(a));
    assert_eq!(gw.calls(), 1);
    gw.answer_root("200", json!({"keys": [jwk(&key(1), "k1")]}).to_string().as_bytes());
    assert_eq!(gw.host.resumed(a), 1);
}

#[test]
fn a_fetch_that_never_answers_is_settled_by_the_tick() {
    let mut gw = with_k1(&remote_config());
    let (a, _) = gw.bearer("/a", &sign(&key(2), "k2", &claims(json!({}))));
    gw.tick();
    assert_eq!(gw.status(a), None);
    gw.host.advance(Duration::from_secs(2) + Duration::from_millis(FLIGHT_GRACE_MS));
    gw.tick();
    assert_eq!(gw.status(a), Some(401), "refused rather than left paused");
}

#[test]
fn waiters_are_bounded() {
    let mut gw = with_k1(&remote_config());
    let k2 = sign(&key(2), "k2", &claims(json!({})));
    let mut contexts = Vec::new();
    for _ in 0..MAX_WAITERS {
        let (id, action) = gw.bearer("/a", &k2);
        assert_eq!(action, Action::Pause);
        contexts.push(id);
    }
    let (id, _) = gw.bearer("/a", &k2);
    let reply = gw.host.reply(id).unwrap();
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert_eq!(gw.host.counter("tollgate.jwt_auth.jwks_waiters_full_total"), 1);
    gw.answer(contexts[0], "200", rotated().as_bytes());
    assert!(contexts.iter().all(|id| gw.host.resumed(*id) == 1));
}

#[test]
fn a_failed_refresh_keeps_the_last_good_keys_until_max_stale() {
    let mut gw = gateway(&remote_config());
    gw.tick();
    gw.answer_root("200", json!({"keys": [jwk(&key(1), "k1")]}).to_string().as_bytes());
    gw.host.advance(Duration::from_secs(61));
    gw.tick();
    assert_eq!(gw.host.http_calls().len(), 2);
    gw.answer_root("503", b"down");
    gw.tick();
    gw.answer_root("200", b"<html>not a key set</html>");
    assert!(gw.host.counter("tollgate.jwt_auth.jwks_fetches_total.outcome.error") >= 1);
    assert!(gw.host.logs().iter().any(|(_, m)| m.contains("keeping the last good key set")));
    let token = sign(&key(1), "k1", &claims(json!({"exp": NOW_S + 7200})));
    assert_eq!(gw.bearer("/a", &token).1, Action::Continue);
    // Past max_stale the keys are no longer trusted.
    gw.host.advance(Duration::from_secs(3600));
    gw.host.refuse_calls(true);
    let (id, _) = gw.bearer("/a", &token);
    assert_eq!(gw.status(id), Some(503));
}

#[test]
fn no_keys_yet_and_a_refused_call_is_503() {
    let mut gw = gateway(&remote_config());
    gw.host.refuse_calls(true);
    let (id, _) = gw.bearer("/a", &sign(&key(1), "k1", &claims(json!({}))));
    let reply = gw.host.reply(id).unwrap();
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert_eq!(gw.host.now_ms() / 1000, NOW_S as u64);
}

fn introspection_config() -> String {
    json!({
        "providers": [{"name": "idp", "issuer": ISS, "audiences": ["api"], "jwks": {"keys": [jwk(&key(1), "k1")]},
                       "introspection": {"cluster": "idp", "path": "/introspect", "authority": "idp.example",
                                         "client_id": "gateway", "client_secret": "s3cret", "cache_ttl": "60s"}}],
        "routes": [{"path_prefix": "/admin", "scopes": ["admin"]}],
        "cache": {"slots": 64}
    })
    .to_string()
}

const OPAQUE: &str = "2YotnFZFEjr1zCsicMWpAA";

#[test]
fn an_opaque_token_is_introspected_and_the_answer_cached() {
    let mut gw = gateway(&introspection_config());
    let (id, action) = gw.bearer("/a", OPAQUE);
    assert_eq!(action, Action::Pause);
    let call = gw.host.http_calls().last().cloned().unwrap();
    assert_eq!(call.cluster, "idp");
    let h = |n: &str| call.headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    assert_eq!(h(":method").as_deref(), Some("POST"));
    assert_eq!(h(":path").as_deref(), Some("/introspect"));
    assert_eq!(h(":authority").as_deref(), Some("idp.example"));
    assert_eq!(h("content-type").as_deref(), Some("application/x-www-form-urlencoded"));
    // base64("gateway:s3cret")
    assert_eq!(h("authorization").as_deref(), Some("Basic Z2F0ZXdheTpzM2NyZXQ="));
    let body = String::from_utf8(call.body.clone().unwrap()).unwrap();
    assert!(body.starts_with(&format!("token={OPAQUE}")), "{body}");
    let answer = json!({"active": true, "scope": "read", "sub": "svc", "exp": NOW_S + 30, "client_id": "x"});
    gw.answer(id, "200", answer.to_string().as_bytes());
    assert_eq!(gw.host.resumed(id), 1, "{:?}", gw.host.reply(id));
    assert_eq!(gw.host.header(id, "x-tollgate-consumer-id").as_deref(), Some("svc"));
    assert_eq!(gw.host.header(id, "x-tollgate-issuer").as_deref(), Some(ISS));
    assert_eq!(gw.host.header(id, "x-tollgate-scopes").as_deref(), Some("read"));

    // Cached: no second call; route rules still apply.
    assert_eq!(gw.bearer("/a", OPAQUE).1, Action::Continue);
    assert_eq!(gw.host.http_calls().len(), 1);
    let (id, _) = gw.bearer("/admin", OPAQUE);
    assert_eq!(gw.status(id), Some(403));
    assert_eq!(gw.host.http_calls().len(), 1);
    // Cached until exp (30 s < cache_ttl), then asked again.
    gw.host.advance(Duration::from_secs(31));
    let (_, action) = gw.bearer("/a", OPAQUE);
    assert_eq!(action, Action::Pause);
    assert_eq!(gw.host.http_calls().len(), 2);
    assert_eq!(gw.host.counter("tollgate.jwt_auth.introspections_total.result.active"), 1);
}

#[test]
fn an_inactive_token_is_401_and_cached_briefly() {
    let mut gw = gateway(&introspection_config());
    let (id, _) = gw.bearer("/a", OPAQUE);
    gw.answer(id, "200", br#"{"active": false}"#);
    let reply = gw.host.reply(id).unwrap();
    assert_eq!(reply.status, 401);
    assert!(reply.header("www-authenticate").unwrap().contains("invalid_token"));
    let (id, _) = gw.bearer("/a", OPAQUE);
    assert_eq!(gw.status(id), Some(401));
    assert_eq!(gw.host.http_calls().len(), 1, "answered from the cache");
    assert_eq!(gw.host.counter("tollgate.jwt_auth.requests_total.decision.deny.reason.inactive_token"), 2);
    gw.host.advance(Duration::from_secs(11));
    gw.bearer("/a", OPAQUE);
    assert_eq!(gw.host.http_calls().len(), 2);
}

#[test]
fn introspection_failures_are_503_and_other_calls_are_ignored() {
    let mut gw = gateway(&introspection_config());
    for (status, body) in
        [("500", &b"oops"[..]), ("200", b"<html>"), ("200", br#"{"active":"yes"}"#), ("", b"")]
    {
        let (id, _) = gw.bearer("/a", OPAQUE);
        gw.answer(id, status, body);
        let reply = gw.host.reply(id).unwrap();
        assert_eq!(reply.status, 503, "{status} {body:?}");
        assert_eq!(reply.header("retry-after"), Some("1"));
    }
    assert_eq!(gw.host.counter("tollgate.jwt_auth.introspections_total.result.error"), 4);
    // A response to a call this request did not make leaves it waiting for its own.
    let (id, _) = gw.bearer("/a", OPAQUE);
    let call = gw.host.http_calls().last().cloned().unwrap();
    gw.host.set_http_response(&[(":status", "200")], Some(br#"{"active":true,"exp":1}"#));
    gw.http_response(id, call.token + 1000, 22);
    assert!(gw.host.reply(id).is_none());
    assert_eq!(gw.host.resumed(id), 0);
    let good = json!({"active": true, "sub": "svc", "exp": NOW_S + 60, "aud": ["other", "api"]}).to_string();
    gw.answer(id, "200", good.as_bytes());
    assert_eq!(gw.host.resumed(id), 1);
    // Claims are checked as for JWTs.
    let opaque2 = "another-opaque-token";
    let (id, _) = gw.bearer("/a", opaque2);
    gw.answer(id, "200", json!({"active": true, "exp": NOW_S + 60, "aud": "other"}).to_string().as_bytes());
    assert_eq!(gw.status(id), Some(401));
    assert_eq!(gw.host.counter("tollgate.jwt_auth.requests_total.decision.deny.reason.wrong_audience"), 1);
    // The endpoint unreachable: fail closed.
    gw.host.refuse_calls(true);
    let (id, _) = gw.bearer("/a", "third-opaque-token");
    assert_eq!(gw.status(id), Some(503));
}

#[test]
fn opaque_tokens_without_introspection_are_malformed() {
    let mut gw = gateway(&inline_config());
    let (id, _) = gw.bearer("/a", OPAQUE);
    assert_eq!(gw.status(id), Some(401));
    assert!(gw.host.http_calls().is_empty());
}

#[test]
fn discovery_finds_the_key_set_and_the_introspection_endpoint() {
    let config = json!({
        "providers": [{"name": "idp", "issuer": ISS, "audiences": ["api"],
                       "discovery": {"cluster": "idp", "authority": "idp.example"},
                       "introspection": {"client_id": "gateway", "client_secret": "s3cret"}}],
        "cache": {"slots": 64}
    })
    .to_string();
    let mut gw = gateway(&config);
    assert!(gw.host.tick_period().is_some());
    // Nothing known yet: 503 for JWTs and opaque tokens alike.
    let (id, _) = gw.bearer("/a", OPAQUE);
    assert_eq!(gw.status(id), Some(503));
    gw.tick();
    let calls = gw.host.http_calls();
    assert_eq!(calls.len(), 1);
    assert!(calls[0].headers.contains(&(":path".into(), "/.well-known/openid-configuration".into())));
    // A key set on another authority is refused, and retried later.
    gw.answer_root("200", br#"{"issuer":"x","jwks_uri":"https://elsewhere.example/certs"}"#);
    assert!(gw.host.logs().iter().any(|(_, m)| m.contains("elsewhere.example")));
    assert_eq!(gw.host.http_calls().len(), 1);
    gw.tick();
    assert_eq!(gw.host.http_calls().len(), 1, "backing off");
    gw.host.advance(Duration::from_secs(6));
    gw.tick();
    assert_eq!(gw.host.http_calls().len(), 2);
    let doc = json!({"issuer": ISS, "jwks_uri": "https://idp.example/realms/demo/certs",
                     "introspection_endpoint": "https://idp.example/realms/demo/introspect"});
    gw.answer_root("200", doc.to_string().as_bytes());
    let calls = gw.host.http_calls();
    assert_eq!(calls.len(), 3, "the key set is fetched right away");
    assert!(calls[2].headers.contains(&(":path".into(), "/realms/demo/certs".into())));
    gw.answer_root("200", json!({"keys": [jwk(&key(1), "k1")]}).to_string().as_bytes());
    assert_eq!(gw.bearer("/a", &sign(&key(1), "k1", &claims(json!({})))).1, Action::Continue);
    gw.tick();
    assert_eq!(gw.host.http_calls().len(), 3, "the document is fetched once");
    let (id, _) = gw.bearer("/a", OPAQUE);
    let call = gw.host.http_calls().last().cloned().unwrap();
    assert!(call.headers.contains(&(":path".into(), "/realms/demo/introspect".into())));
    gw.answer(id, "200", json!({"active": true, "sub": "svc", "exp": NOW_S + 60}).to_string().as_bytes());
    assert_eq!(gw.host.resumed(id), 1);
}

#[test]
fn one_unusable_key_in_a_fetched_set_is_skipped_counted_and_logged_once() {
    let mut gw = gateway(&remote_config());
    let weak = json!({"kty": "RSA", "kid": "legacy-1024", "n": b64::encode(&[0xc5; 128]), "e": "AQAB"});
    let body = json!({"keys": [weak, jwk(&key(1), "k1")]}).to_string();
    gw.tick();
    gw.answer_root("200", body.as_bytes());
    assert_eq!(gw.host.counter("tollgate.jwt_auth.jwks_fetches_total.outcome.ok"), 1);
    assert_eq!(gw.host.counter("tollgate.jwt_auth.jwks_key_skipped_total"), 1);
    let logged: Vec<_> = gw.host.logs().into_iter().filter(|(_, m)| m.contains("legacy-1024")).collect();
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert!(logged[0].1.contains("2048 bits"), "{logged:?}");
    let token = sign(&key(1), "k1", &claims(json!({})));
    assert_eq!(gw.bearer("/a", &token).1, Action::Continue);

    // Another worker compiles the stored set quietly.
    let mut other = Gateway::configured(MockHost::sharing_with(&gw.host), &remote_config());
    other.tick();
    assert!(other.host.http_calls().is_empty(), "the stored set is used");
    assert_eq!(other.host.counter("tollgate.jwt_auth.jwks_key_skipped_total"), 0);
    assert!(!other.host.logs().iter().any(|(_, m)| m.contains("legacy-1024")));

    // A set with no usable key at all is a failed fetch: the last good set stays.
    gw.host.advance(Duration::from_secs(61));
    gw.tick();
    let only_weak =
        json!({"keys": [{"kty": "RSA", "kid": "legacy-1024", "n": b64::encode(&[0xc5; 128]), "e": "AQAB"}]});
    gw.answer_root("200", only_weak.to_string().as_bytes());
    assert_eq!(gw.host.counter("tollgate.jwt_auth.jwks_fetches_total.outcome.error"), 1);
    assert_eq!(gw.bearer("/a", &token).1, Action::Continue);
}

#[test]
fn keys_whose_key_ops_exclude_verify_never_verify() {
    let mut signing_only = jwk(&key(1), "k1");
    signing_only["key_ops"] = json!(["sign"]);
    let mut verifying = jwk(&key(2), "k2");
    verifying["key_ops"] = json!(["verify"]);
    let config = json!({
        "providers": [{"name": "idp", "issuer": ISS, "audiences": ["api"], "jwks": {"keys": [signing_only, verifying]}}],
        "cache": {"slots": 0}
    })
    .to_string();
    let mut gw = gateway(&config);
    let (id, _) = gw.bearer("/a", &sign(&key(1), "k1", &claims(json!({}))));
    assert_eq!(gw.status(id), Some(401));
    assert_eq!(gw.host.counter("tollgate.jwt_auth.requests_total.decision.deny.reason.unknown_kid"), 1);
    assert_eq!(gw.bearer("/a", &sign(&key(2), "k2", &claims(json!({})))).1, Action::Continue);
}

#[test]
fn every_refusal_reason_has_a_stat() {
    let names = crate::worker::stat_names();
    for deny in tollgate_core::jwt::Deny::ALL {
        let stat = tollgate_host::stats::metric_name(&format!("denied.{}", deny.reason()));
        assert!(names.contains(&stat), "no stat {stat}");
    }
}

#[test]
fn an_identity_that_cannot_be_passed_on_is_refused_with_nothing_published() {
    let mut gw = gateway(&inline_config());
    for sub in ["alice\r\nx-evil: 1", "al\u{0}ice", " alice"] {
        let token = sign(&key(1), "k1", &claims(json!({"sub": sub})));
        // Twice: the second answer comes from the verified-token cache.
        for _ in 0..2 {
            let auth = format!("Bearer {token}");
            let (id, action) =
                gw.send("/hello", &[("authorization", &auth), ("x-tollgate-consumer-id", "mallory")]);
            assert_eq!(action, Action::Pause, "{sub:?}");
            let reply = gw.host.reply(id).unwrap();
            assert_eq!(reply.status, 401, "{sub:?}");
            assert!(reply.header("www-authenticate").unwrap().contains("error=\"invalid_token\""));
            assert_eq!(gw.host.header(id, "x-tollgate-consumer-id"), None, "{sub:?}");
            assert_eq!(gw.host.request_property(id, &["tollgate.consumer_id"]), None);
        }
    }
    // A mapped claim that cannot be written as it is refuses the token too.
    let (id, _) = gw.bearer("/hello", &sign(&key(1), "k1", &claims(json!({"email": "a@b\nx-evil: 1"}))));
    assert_eq!(gw.status(id), Some(401));
    assert_eq!(
        gw.host.counter("tollgate.jwt_auth.requests_total.decision.deny.reason.unpublishable_identity"),
        7
    );
    assert_eq!(gw.host.counter("tollgate.jwt_auth.requests_total.decision.allow"), 0);
}

#[test]
fn scopes_are_published_space_separated_or_the_token_refused() {
    let mut gw = gateway(&inline_config());
    let comma = sign(&key(1), "k1", &claims(json!({"scope": null, "scp": ["orders", "read,admin"]})));
    let (id, action) = gw.bearer("/hello", &comma);
    assert_eq!(action, Action::Continue);
    assert_eq!(gw.host.header(id, "x-tollgate-scopes").as_deref(), Some("orders read,admin"));
    assert_eq!(
        gw.host.request_property(id, &["tollgate.scopes"]).as_deref(),
        Some(&b"orders read,admin"[..])
    );
    let (id, _) = gw.bearer("/admin", &comma);
    assert_eq!(gw.status(id), Some(403), "`read,admin` is not `admin`");
    let spaced = sign(&key(1), "k1", &claims(json!({"scope": null, "scp": ["read admin"]})));
    for path in ["/hello", "/admin"] {
        let (id, _) = gw.bearer(path, &spaced);
        let reply = gw.host.reply(id).unwrap();
        assert_eq!(reply.status, 401, "{path}");
        assert!(reply.header("www-authenticate").unwrap().contains("invalid_token"), "{path}");
        assert_eq!(gw.host.header(id, "x-tollgate-scopes"), None);
    }
}

#[test]
fn a_token_without_a_subject_publishes_no_consumer_id() {
    let config = json!({
        "providers": [{"name": "idp", "issuer": ISS, "audiences": ["api"], "jwks": {"keys": [jwk(&key(1), "k1")]}}],
        "claim_headers": {"x-user-email": "email"}
    })
    .to_string();
    let mut gw = gateway(&config);
    let token = sign(&key(1), "k1", &claims(json!({"sub": null, "email": ""})));
    let auth = format!("Bearer {token}");
    let (id, action) = gw.send("/a", &[("authorization", &auth), ("x-tollgate-consumer-id", "mallory")]);
    assert_eq!(action, Action::Continue);
    assert_eq!(gw.host.header(id, "x-tollgate-consumer-id"), None);
    assert_eq!(gw.host.header(id, "x-user-email"), None);
    assert_eq!(gw.host.header(id, "x-tollgate-issuer").as_deref(), Some(ISS));
    assert_eq!(gw.host.request_property(id, &["tollgate.consumer_id"]), None);
}

/// The mock host, except that it refuses to set one header or property (as a proxy may).
struct Refusing {
    inner: Rc<MockHost>,
    name: &'static str,
}

impl Host for Refusing {
    fn now_ms(&self) -> u64 {
        self.inner.now_ms()
    }
    fn log(&self, level: tollgate_host::LogLevel, message: &str) {
        self.inner.log(level, message)
    }
    fn request_header_bytes(&self, name: &str) -> Option<Vec<u8>> {
        self.inner.request_header_bytes(name)
    }
    fn request_headers(&self) -> Vec<(String, Vec<u8>)> {
        self.inner.request_headers()
    }
    fn set_request_header(&self, name: &str, value: Option<&[u8]>) -> bool {
        if name == self.name && value.is_some() {
            self.inner.set_request_header(name, None);
            return false;
        }
        self.inner.set_request_header(name, value)
    }
    fn add_request_header(&self, name: &str, value: &[u8]) -> bool {
        self.inner.add_request_header(name, value)
    }
    fn response_header_bytes(&self, name: &str) -> Option<Vec<u8>> {
        self.inner.response_header_bytes(name)
    }
    fn response_headers(&self) -> Vec<(String, Vec<u8>)> {
        self.inner.response_headers()
    }
    fn set_response_header(&self, name: &str, value: Option<&[u8]>) -> bool {
        self.inner.set_response_header(name, value)
    }
    fn add_response_header(&self, name: &str, value: &[u8]) -> bool {
        self.inner.add_response_header(name, value)
    }
    fn request_body(&self, start: usize, size: usize) -> Option<Vec<u8>> {
        self.inner.request_body(start, size)
    }
    fn set_request_body(&self, start: usize, size: usize, body: &[u8]) -> bool {
        self.inner.set_request_body(start, size, body)
    }
    fn response_body(&self, start: usize, size: usize) -> Option<Vec<u8>> {
        self.inner.response_body(start, size)
    }
    fn set_response_body(&self, start: usize, size: usize, body: &[u8]) -> bool {
        self.inner.set_response_body(start, size, body)
    }
    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        self.inner.property(path)
    }
    fn set_property(&self, path: &[&str], value: &[u8]) -> bool {
        path != [self.name] && self.inner.set_property(path, value)
    }
    fn shared_get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        self.inner.shared_get(key)
    }
    fn shared_set(
        &self,
        key: &str,
        value: &[u8],
        cas: Option<u32>,
    ) -> Result<(), tollgate_host::SharedError> {
        self.inner.shared_set(key, value, cas)
    }
    fn grpc_call(
        &self,
        cluster: &str,
        service: &str,
        method: &str,
        metadata: &[(&str, &[u8])],
        message: &[u8],
        timeout: Duration,
    ) -> Result<u32, tollgate_host::CallRefused> {
        self.inner.grpc_call(cluster, service, method, metadata, message, timeout)
    }
    fn grpc_response_body(&self, size: usize) -> Option<Vec<u8>> {
        self.inner.grpc_response_body(size)
    }
    fn grpc_status_message(&self) -> Option<String> {
        self.inner.grpc_status_message()
    }
    fn http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, tollgate_host::CallRefused> {
        self.inner.http_call(cluster, headers, body, timeout)
    }
    fn http_call_response_header(&self, name: &str) -> Option<String> {
        self.inner.http_call_response_header(name)
    }
    fn http_call_response_body(&self, size: usize) -> Option<Vec<u8>> {
        self.inner.http_call_response_body(size)
    }
    fn send_response(&self, status: u32, headers: &[(&str, &str)], body: &[u8]) -> bool {
        self.inner.send_response(status, headers, body)
    }
    fn resume_request(&self) -> bool {
        self.inner.resume_request()
    }
    fn set_effective_context(&self, context_id: u32) -> bool {
        self.inner.set_effective_context(context_id)
    }
    fn set_tick_period(&self, period: Duration) {
        self.inner.set_tick_period(period)
    }
    fn plugin_configuration(&self) -> Option<Vec<u8>> {
        self.inner.plugin_configuration()
    }
    fn define_counter(&self, name: &str) -> Option<u32> {
        self.inner.define_counter(name)
    }
    fn increment_counter(&self, id: u32, by: i64) {
        self.inner.increment_counter(id, by)
    }
    fn http_call_response_headers(&self) -> Vec<(String, Vec<u8>)> {
        self.inner.http_call_response_headers()
    }
    fn define_gauge(&self, name: &str) -> Option<u32> {
        self.inner.define_gauge(name)
    }
    fn define_histogram(&self, name: &str) -> Option<u32> {
        self.inner.define_histogram(name)
    }
    fn record_metric(&self, id: u32, value: u64) {
        self.inner.record_metric(id, value)
    }
}

/// Whatever identity header or property the proxy refuses to set, the request is refused rather
/// than passed on without it.
#[test]
fn a_header_or_property_the_proxy_refuses_refuses_the_request() {
    for name in [
        "x-tollgate-consumer-id",
        "x-tollgate-scopes",
        "x-user-email",
        "tollgate.consumer_id",
        "tollgate.claims.email",
    ] {
        let inner = MockHost::new();
        inner.set_now_ms(NOW_S as u64 * 1000);
        let host = Rc::new(Refusing { inner: inner.clone(), name });
        let mut gw = Harness::<JwtAuth, Refusing>::wrapping(inner.clone(), host);
        assert!(gw.configure(&inline_config()));
        let token = sign(&key(1), "k1", &claims(json!({})));
        let id = gw.request(&[(":path", "/hello"), ("authorization", &format!("Bearer {token}"))]);
        assert_eq!(gw.request_headers(id, true), Action::Pause, "{name}");
        assert_eq!(inner.reply(id).map(|r| r.status), Some(401), "{name}");
        assert_eq!(
            inner.counter("tollgate.jwt_auth.requests_total.decision.deny.reason.unpublishable_identity"),
            1,
            "{name}"
        );
        assert_eq!(inner.counter("tollgate.jwt_auth.requests_total.decision.allow"), 0, "{name}");
        assert!(inner.logs().iter().any(|(_, m)| m.contains(name)), "{name}");
    }
}

fn cookie_config() -> String {
    inline_config().replace(
        r#""cache""#,
        r#""sources":[{"header":"authorization","prefix":"Bearer "},{"cookie":"access_token"}],"cache""#,
    )
}

#[test]
fn a_token_in_any_cookie_line_is_found() {
    let mut gw = gateway(&cookie_config());
    let token = sign(&key(1), "k1", &claims(json!({})));
    let pair = format!("access_token={token}");
    let joined = format!("theme=dark, {pair}");
    let crumbs: [&[(&str, &str)]; 3] = [
        &[("cookie", "theme=dark"), ("cookie", &pair)],
        &[("cookie", &pair), ("cookie", "theme=dark")],
        &[("cookie", &joined)],
    ];
    for lines in crumbs {
        let (id, action) = gw.send_lines("/a", lines);
        assert_eq!(action, Action::Continue, "{lines:?}: {:?}", gw.host.reply(id));
        assert_eq!(gw.host.header(id, "x-tollgate-consumer-id").as_deref(), Some("alice"));
    }
}

#[test]
fn two_tokens_in_separate_lines_are_refused() {
    let mut gw = gateway(&cookie_config());
    let a = sign(&key(1), "k1", &claims(json!({})));
    let b = sign(&key(1), "k1", &claims(json!({"sub": "bob"})));
    let (ca, cb) = (format!("access_token={a}"), format!("access_token={b}"));
    let (ba, bb) = (format!("Bearer {a}"), format!("Bearer {b}"));
    let cases: [&[(&str, &str)]; 3] = [
        &[("cookie", &ca), ("cookie", &cb)],
        &[("authorization", &ba), ("authorization", &bb)],
        &[("cookie", "theme=dark"), ("cookie", &cb), ("authorization", &ba)],
    ];
    for lines in cases {
        let (id, action) = gw.send_lines("/a", lines);
        assert_eq!(action, Action::Pause);
        let reply = gw.host.reply(id).unwrap();
        assert_eq!(reply.status, 401, "{lines:?}");
        assert!(reply.header("www-authenticate").unwrap().contains("invalid_request"));
    }
    assert_eq!(gw.host.counter("tollgate.jwt_auth.requests_total.decision.deny.reason.multiple_tokens"), 3);
    assert_eq!(gw.host.counter("tollgate.jwt_auth.requests_total.decision.allow"), 0);
}

#[test]
fn route_name_rules_read_envoys_route_name() {
    let config = json!({
        "providers": [{"name": "idp", "issuer": ISS, "audiences": ["api"], "jwks": {"keys": [jwk(&key(1), "k1")]}}],
        "routes": [{"route_name": "admin-console", "scopes": ["admin"]}]
    })
    .to_string();
    let mut gw = gateway(&config);
    let token = sign(&key(1), "k1", &claims(json!({})));
    assert_eq!(gw.bearer("/console", &token).1, Action::Continue, "no route name: no rule");
    gw.host.with_property(tollgate_host::attributes::ROUTE_NAME, b"admin-console");
    let (id, _) = gw.bearer("/console", &token);
    assert_eq!(gw.status(id), Some(403));
    let admin = sign(&key(1), "k1", &claims(json!({"scope": "admin"})));
    assert_eq!(gw.bearer("/console", &admin).1, Action::Continue);
}

#[test]
fn path_rules_see_the_normalised_path() {
    let mut gw = gateway(&inline_config());
    let token = sign(&key(1), "k1", &claims(json!({})));
    for path in ["//admin", "/./admin", "/%61dmin/x", "/x/../admin", "/%2e%2e/admin"] {
        let (id, _) = gw.bearer(path, &token);
        assert_eq!(gw.status(id), Some(403), "{path}");
    }
    for path in ["/admin%2fx", "/%2Fadmin", "/admin%5Cx"] {
        let (id, _) = gw.bearer(path, &token);
        let reply = gw.host.reply(id).unwrap();
        assert_eq!(reply.status, 400, "{path}");
        assert!(reply.header("www-authenticate").unwrap().contains("invalid_request"));
    }
    assert_eq!(gw.host.counter("tollgate.jwt_auth.requests_total.decision.deny.reason.bad_path"), 3);
    assert_eq!(gw.bearer("/x/../hello", &token).1, Action::Continue);
}

#[test]
fn a_cookie_line_with_bytes_that_are_not_utf8_still_yields_the_token() {
    let mut gw = gateway(&cookie_config());
    let token = sign(&key(1), "k1", &claims(json!({})));
    let id = gw.request(&[(":path", "/a")]);
    gw.host.with_header_bytes(id, "cookie", b"junk=\xff\xfe");
    gw.host.with_header_line(id, "cookie", &format!("access_token={token}"));
    assert_eq!(gw.request_headers(id, true), Action::Continue, "{:?}", gw.host.reply(id));
    // A token with such bytes is garbled, never a valid one.
    let id = gw.request(&[(":path", "/a")]);
    gw.host.with_header_bytes(id, "cookie", format!("access_token={token}\u{0}").as_bytes());
    gw.host.with_header_bytes(id, "authorization", b"Bearer \xffabc");
    assert_eq!(gw.request_headers(id, true), Action::Pause);
    assert_eq!(gw.status(id), Some(401));
}

#[test]
fn shipped_example_config_is_accepted() {
    let mut gw = Gateway::on(MockHost::new());
    assert!(gw.configure(include_str!("../config.example.json")), "{:?}", gw.host.logs());
    assert_eq!(gw.host.tick_period(), Some(crate::root::TICK), "its key set is fetched");
    assert_eq!(gw.worker().unwrap().borrow().config.providers.len(), 1);
}

#[test]
fn verified_subjects_are_counted_and_reported_to_the_usage_key_service() {
    use prost::Message;
    use tollgate_proto::v1;
    let mut config: Value = serde_json::from_str(&inline_config()).unwrap();
    config["usage"] =
        json!({"key_service": {"cluster": "keyd", "token": "tgd_test"}, "report_interval": "1s"});
    let mut gw = gateway(&config.to_string());
    assert!(gw.host.tick_period().is_some(), "reports need the tick");
    let alice = sign(&key(1), "k1", &claims(json!({})));
    let bob = sign(&key(1), "k1", &claims(json!({"sub": "bob"})));
    assert_eq!(gw.bearer("/hello", &alice).1, Action::Continue);
    assert_eq!(gw.bearer("/hello", &alice).1, Action::Continue);
    assert_eq!(gw.bearer("/admin", &bob).1, Action::Pause, "lacks the admin scope");
    // Not verified: nobody to count it for.
    assert_eq!(gw.bearer("/hello", "not-a-token").1, Action::Pause);
    let no_sub = sign(&key(1), "k1", &claims(json!({"sub": null})));
    gw.bearer("/hello", &no_sub);
    gw.host.advance(Duration::from_secs(2));
    gw.tick();
    let call = gw.host.calls().into_iter().rev().find(|c| c.method == "ReportUsage").expect("a report");
    assert_eq!((call.cluster.as_str(), call.context_id), ("keyd", ROOT_ID));
    let batch = v1::ReportUsageRequest::decode(call.message.as_slice()).unwrap();
    let mut counts: Vec<(String, &str, u64)> =
        batch.counts.iter().map(|c| (c.subject.clone(), c.outcome.as_str(), c.count)).collect();
    counts.sort_unstable();
    assert_eq!(
        counts,
        [(format!("{ISS} alice"), "allowed", 2), (format!("{ISS} bob"), "insufficient_scope", 1)]
    );
    assert!(batch.counts.iter().all(|c| c.key_id.is_empty()));
    gw.host.set_grpc_response(Some(v1::ReportUsageResponse::default().encode_to_vec()), None);
    gw.grpc_response(ROOT_ID, call.token, 0, 0);
    assert_eq!(gw.host.counter("tollgate.jwt_auth.usage_reports_total.outcome.ok"), 1);

    // A usage block without a key service is refused, naming the field.
    config["usage"] = json!({"report_interval": "1s"});
    let mut bad = Gateway::on(MockHost::new());
    assert!(!bad.configure(&config.to_string()));
    assert!(bad.host.logs().iter().any(|(_, l)| l.contains("usage.key_service")), "{:?}", bad.host.logs());
}
