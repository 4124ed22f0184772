//! The contexts driven against the mock host.

use std::rc::Rc;

use proxy_wasm::traits::{HttpContext, RootContext};
use proxy_wasm::types::Action;
use serde_json::{Value, json};
use tollgate_host::mock::MockHost;

use crate::{TransformHttp, TransformRoot};

const EXAMPLE: &str = include_str!("../config.example.json");

struct Gateway {
    host: Rc<MockHost>,
    root: TransformRoot<MockHost>,
    next_id: u32,
}

impl Gateway {
    fn new(config: &str) -> Self {
        let host = MockHost::new();
        host.with_configuration(config);
        let mut root = TransformRoot::new(host.clone());
        host.enter(1);
        assert!(root.on_configure(0), "{:?}", host.logs());
        Self { host, root, next_id: 100 }
    }

    /// A request's context with these headers (pseudo-headers included) and its id.
    fn context(&mut self, headers: &[(&str, &str)]) -> (u32, TransformHttp<MockHost>) {
        self.next_id += 1;
        let id = self.next_id;
        self.host.with_header(id, "x-request-id", &format!("req-{id}"));
        for (k, v) in headers {
            self.host.with_header(id, k, v);
        }
        self.host.enter(id);
        (id, TransformHttp::new(self.host.clone(), self.root.filter().unwrap()))
    }
}

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

#[test]
fn example_config_parses_and_every_stat_is_defined() {
    let gw = Gateway::new(EXAMPLE);
    for stat in tollgate_core::transform::STATS {
        assert_eq!(gw.host.counter(&format!("tollgate.transform.{stat}")), 0);
    }
    assert_eq!(gw.root.filter().unwrap().config.rules.len(), 2);
}

#[test]
fn invalid_config_is_refused_naming_rule_and_field() {
    let host = MockHost::new();
    host.with_configuration(r#"{"rules": [{"name": "broken", "match": {"path_regex": "(unclosed"}}]}"#);
    let mut root = TransformRoot::new(host.clone());
    assert!(!root.on_configure(0));
    let logs = host.logs();
    let (level, line) = logs.last().unwrap();
    assert_eq!(*level, tollgate_host::LogLevel::Critical);
    assert!(line.contains("rule `broken`") && line.contains("rules[0].match.path_regex"), "{line}");
    assert!(root.filter().is_none());
}

#[test]
fn request_head_is_rewritten_with_identity() {
    let mut gw = Gateway::new(EXAMPLE);
    gw.host.with_property(&["tollgate.consumer_id"], b"alice");
    let (id, mut ctx) = gw.context(&[
        (":method", "GET"),
        (":path", "/api/v1/users/7?page_size=5&x=1"),
        (":authority", "gw"),
        ("x-debug", "1"),
    ]);
    assert_eq!(ctx.on_http_request_headers(0, true), Action::Continue);
    assert_eq!(gw.host.header(id, ":path").as_deref(), Some("/v2/users/7?limit=5&x=1"));
    assert_eq!(gw.host.header(id, "x-consumer").as_deref(), Some("alice"));
    assert_eq!(gw.host.header(id, "x-api-version").as_deref(), Some("2"));
    assert_eq!(gw.host.header(id, "x-debug"), None);
    assert_eq!(gw.host.counter("tollgate.transform.rules_applied"), 1);
}

#[test]
fn unmatched_requests_are_untouched_and_not_buffered() {
    let mut gw = Gateway::new(EXAMPLE);
    let (id, mut ctx) = gw.context(&[(":method", "DELETE"), (":path", "/api/v1/users/7"), ("x-debug", "1")]);
    assert_eq!(ctx.on_http_request_headers(0, false), Action::Continue);
    assert_eq!(ctx.on_http_request_body(10, false), Action::Continue);
    assert_eq!(gw.host.header(id, "x-debug").as_deref(), Some("1"));
    assert_eq!(gw.host.counter("tollgate.transform.rules_applied"), 0);
}

#[test]
fn json_request_body_is_buffered_changed_and_its_length_fixed() {
    let mut gw = Gateway::new(EXAMPLE);
    gw.host.with_property(&["tollgate.consumer_id"], b"alice");
    let body = br#"{"name": "bob"}"#;
    let (id, mut ctx) = gw.context(&[
        (":method", "POST"),
        (":path", "/api/v1/users"),
        ("content-type", "application/json"),
        ("content-length", &body.len().to_string()),
    ]);
    assert_eq!(ctx.on_http_request_headers(0, false), Action::Continue);
    assert_eq!(gw.host.header(id, "content-length"), None, "the length will change: chunked framing");
    gw.host.with_request_body(id, &body[..5]);
    assert_eq!(ctx.on_http_request_body(5, false), Action::Pause);
    gw.host.with_request_body(id, body);
    assert_eq!(ctx.on_http_request_body(body.len(), true), Action::Continue);
    let sent = gw.host.request_body_of(id);
    assert_eq!(json_of(&sent), json!({"name": "bob", "meta": {"created_by": "alice"}}));
    assert_eq!(gw.host.counter("tollgate.transform.body_transformed"), 1);
}

#[test]
fn non_json_body_flows_through_unbuffered() {
    let mut gw = Gateway::new(EXAMPLE);
    let (id, mut ctx) =
        gw.context(&[(":method", "POST"), (":path", "/api/v1/users"), ("content-type", "text/plain")]);
    assert_eq!(ctx.on_http_request_headers(0, false), Action::Continue);
    gw.host.with_request_body(id, b"not json");
    assert_eq!(ctx.on_http_request_body(8, true), Action::Continue);
    assert_eq!(gw.host.request_body_of(id), b"not json");
    assert_eq!(gw.host.counter("tollgate.transform.body_skipped_not_json"), 1);
}

#[test]
fn oversized_body_is_refused_with_413_by_length_or_while_streaming() {
    let mut gw = Gateway::new(EXAMPLE);
    let (id, mut ctx) = gw.context(&[
        (":method", "POST"),
        (":path", "/api/v1/users"),
        ("content-type", "application/json"),
        ("content-length", "999999"),
    ]);
    assert_eq!(ctx.on_http_request_headers(0, false), Action::Pause);
    let reply = gw.host.reply(id).unwrap();
    assert_eq!(reply.status, 413);
    assert_eq!(json_of(&reply.body)["error"], "payload_too_large");
    assert_eq!(json_of(&reply.body)["request_id"], format!("req-{id}"));

    // Chunked: no length up front, the cap is crossed while buffering.
    let (id, mut ctx) =
        gw.context(&[(":method", "POST"), (":path", "/api/v1/users"), ("content-type", "application/json")]);
    assert_eq!(ctx.on_http_request_headers(0, false), Action::Continue);
    assert_eq!(ctx.on_http_request_body(262_145, false), Action::Pause);
    assert_eq!(gw.host.reply(id).unwrap().status, 413);
    assert_eq!(gw.host.counter("tollgate.transform.body_skipped_too_large"), 2);
}

#[test]
fn oversized_body_passes_untouched_by_default() {
    let config = r#"{"max_body_bytes": 16, "rules": [{"request": {"body": [{"op": "set", "path": "a", "value": 1}]}}]}"#;
    let mut gw = Gateway::new(config);
    let (id, mut ctx) =
        gw.context(&[(":method", "POST"), (":path", "/"), ("content-type", "application/json")]);
    assert_eq!(ctx.on_http_request_headers(0, false), Action::Continue);
    let big = br#"{"padding": "0123456789abcdef"}"#;
    gw.host.with_request_body(id, big);
    assert_eq!(ctx.on_http_request_body(big.len(), false), Action::Continue);
    assert_eq!(ctx.on_http_request_body(big.len(), true), Action::Continue);
    assert_eq!(gw.host.request_body_of(id), big);
    assert!(gw.host.reply(id).is_none());
}

#[test]
fn malformed_json_passes_by_default_and_gets_400_when_configured() {
    let rules = r#"[{"request": {"body": [{"op": "set", "path": "a", "value": 1}]}}]"#;
    for (mode, expect) in [("pass", None), ("reject", Some(400))] {
        let mut gw = Gateway::new(&format!(r#"{{"on_invalid_json": "{mode}", "rules": {rules}}}"#));
        let (id, mut ctx) =
            gw.context(&[(":method", "POST"), (":path", "/"), ("content-type", "application/json")]);
        assert_eq!(ctx.on_http_request_headers(0, false), Action::Continue);
        let broken = br#"{"a": [1, 2"#;
        gw.host.with_request_body(id, broken);
        let action = ctx.on_http_request_body(broken.len(), true);
        assert_eq!(gw.host.request_body_of(id), broken, "never truncated");
        assert_eq!(gw.host.reply(id).map(|r| r.status), expect);
        assert_eq!(action, if expect.is_some() { Action::Pause } else { Action::Continue });
        if expect.is_some() {
            assert_eq!(json_of(&gw.host.reply(id).unwrap().body)["error"], "bad_request");
        }
        assert_eq!(gw.host.counter("tollgate.transform.invalid_json"), 1);
    }
}

#[test]
fn response_status_headers_and_body_are_transformed() {
    let mut gw = Gateway::new(EXAMPLE);
    let (id, mut ctx) = gw.context(&[(":method", "GET"), (":path", "/api/v1/users/7")]);
    assert_eq!(ctx.on_http_request_headers(0, true), Action::Continue);
    let body = br#"{"id": 7, "internal_id": "db-7", "audit": {"ip": "10.0.0.1", "at": 1}}"#;
    gw.host.with_response_header(id, ":status", "200");
    gw.host.with_response_header(id, "server", "upstream");
    gw.host.with_response_header(id, "content-type", "application/json");
    gw.host.with_response_header(id, "content-length", &body.len().to_string());
    assert_eq!(ctx.on_http_response_headers(0, false), Action::Continue);
    assert_eq!(gw.host.response_header_of(id, "content-length"), None);
    assert_eq!(gw.host.response_header_of(id, "server"), None);
    gw.host.with_response_body(id, body);
    assert_eq!(ctx.on_http_response_body(body.len(), true), Action::Continue);
    let sent = gw.host.response_body_of(id);
    assert_eq!(json_of(&sent), json!({"id": 7, "audit": {"at": 1}}));

    let (id, mut ctx) = gw.context(&[(":method", "GET"), (":path", "/legacy/x")]);
    ctx.on_http_request_headers(0, true);
    assert_eq!(gw.host.header(id, ":authority").as_deref(), Some("legacy.internal"));
    assert_eq!(gw.host.header(id, ":method").as_deref(), Some("POST"));
    gw.host.with_response_header(id, ":status", "404");
    assert_eq!(ctx.on_http_response_headers(0, true), Action::Continue);
    assert_eq!(gw.host.response_header_of(id, ":status").as_deref(), Some("200"));
}

#[test]
fn event_streams_are_never_buffered_even_with_body_rules() {
    let mut gw = Gateway::new(EXAMPLE);
    let (id, mut ctx) = gw.context(&[(":method", "GET"), (":path", "/api/v1/users/stream")]);
    ctx.on_http_request_headers(0, true);
    gw.host.with_response_header(id, ":status", "200");
    gw.host.with_response_header(id, "content-type", "text/event-stream");
    assert_eq!(ctx.on_http_response_headers(0, false), Action::Continue);
    assert_eq!(ctx.on_http_response_body(20, false), Action::Continue);
    assert_eq!(gw.host.counter("tollgate.transform.body_skipped_not_json"), 1);
}

#[test]
fn invalid_json_response_passes_untouched_even_when_requests_are_refused() {
    let config = r#"{"on_invalid_json": "reject", "rules": [{"response": {"body": [{"op": "remove", "path": "a"}]}}]}"#;
    let mut gw = Gateway::new(config);
    let (id, mut ctx) = gw.context(&[(":method", "GET"), (":path", "/")]);
    ctx.on_http_request_headers(0, true);
    gw.host.with_response_header(id, ":status", "200");
    gw.host.with_response_header(id, "content-type", "application/json");
    assert_eq!(ctx.on_http_response_headers(0, false), Action::Continue);
    gw.host.with_response_body(id, b"<html>");
    assert_eq!(ctx.on_http_response_body(6, false), Action::Pause);
    assert_eq!(ctx.on_http_response_body(6, true), Action::Continue);
    assert_eq!(gw.host.response_body_of(id), b"<html>");
    assert!(gw.host.reply(id).is_none());
    assert_eq!(gw.host.counter("tollgate.transform.invalid_json"), 1);
}
