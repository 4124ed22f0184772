//! The contexts driven against the mock host.

use proxy_wasm::types::Action;
use serde_json::Value;
use tollgate_host::Stat as _;
use tollgate_host::mock::{Harness, MockHost};

use crate::Transform;
use crate::worker::Stat;

const EXAMPLE: &str = include_str!("../config.example.json");

type Gateway = Harness<Transform>;

/// Requests as the tests speak of them.
trait Drive {
    /// A request's context with these headers (pseudo-headers included); returns its id.
    fn start(&mut self, headers: &[(&str, &str)]) -> u32;
}

impl Drive for Gateway {
    fn start(&mut self, headers: &[(&str, &str)]) -> u32 {
        let id = self.new_request();
        self.host.with_header(id, "x-request-id", &format!("req-{id}"));
        for (k, v) in headers {
            self.host.with_header(id, k, v);
        }
        id
    }
}

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

#[test]
fn example_config_parses_and_every_stat_is_defined() {
    let gw = Gateway::new(EXAMPLE);
    for stat in Stat::ALL {
        assert_eq!(
            gw.host
                .counter(&format!("tollgate.transform.{}", tollgate_host::stats::metric_name(stat.name()))),
            0
        );
    }
    assert_eq!(gw.worker().unwrap().config.rules.len(), 2);
}

#[test]
fn invalid_config_is_refused_naming_rule_and_field() {
    let mut gw = Gateway::on(MockHost::new());
    assert!(!gw.configure(r#"{"rules": [{"name": "broken", "match": {"path_regex": "(unclosed"}}]}"#));
    let logs = gw.host.logs();
    let (level, line) = logs.last().unwrap();
    assert_eq!(*level, tollgate_host::LogLevel::Critical);
    assert!(line.contains("rule `broken`") && line.contains("rules[0].match.path_regex"), "{line}");
    assert!(gw.worker().is_none());
}

#[test]
fn request_head_is_rewritten_with_identity() {
    let mut gw = Gateway::new(EXAMPLE);
    gw.host.with_property(&["tollgate.consumer_id"], b"alice");
    let id = gw.start(&[
        (":method", "GET"),
        (":path", "/api/v1/users/7?page_size=5&x=1"),
        (":authority", "gw"),
        ("x-debug", "1"),
    ]);
    assert_eq!(gw.request_headers(id, true), Action::Continue);
    assert_eq!(gw.host.header(id, ":path").as_deref(), Some("/v2/users/7?limit=5&x=1"));
    assert_eq!(gw.host.header(id, "x-consumer").as_deref(), Some("alice"));
    assert_eq!(gw.host.header(id, "x-api-version").as_deref(), Some("2"));
    assert_eq!(gw.host.header(id, "x-debug"), None);
    assert_eq!(gw.host.counter("tollgate.transform.rules_applied_total"), 1);
}

#[test]
fn unmatched_requests_are_untouched_and_not_buffered() {
    let mut gw = Gateway::new(EXAMPLE);
    let id = gw.start(&[(":method", "DELETE"), (":path", "/api/v1/users/7"), ("x-debug", "1")]);
    assert_eq!(gw.request_headers(id, false), Action::Continue);
    assert_eq!(gw.request_body(id, 10, false), Action::Continue);
    assert_eq!(gw.host.header(id, "x-debug").as_deref(), Some("1"));
    assert_eq!(gw.host.counter("tollgate.transform.rules_applied_total"), 0);
}

/// What Envoy does with a chunk of a buffered body: it adds the chunk to what it holds (the
/// filter took everything before out) and calls the filter with the size it holds.
fn chunk_of(gw: &Gateway, id: u32, side: tollgate_core::transform::Side, chunk: &[u8]) {
    assert!(
        match side {
            tollgate_core::transform::Side::Request => gw.host.request_body_of(id),
            tollgate_core::transform::Side::Response => gw.host.response_body_of(id),
        }
        .is_empty(),
        "the filter keeps Envoy's buffer empty while it buffers"
    );
    match side {
        tollgate_core::transform::Side::Request => gw.host.with_request_body(id, chunk),
        tollgate_core::transform::Side::Response => gw.host.with_response_body(id, chunk),
    }
}

use tollgate_core::transform::Side::{Request as Req, Response as Resp};

#[test]
fn json_request_body_is_buffered_changed_and_its_length_fixed() {
    let mut gw = Gateway::new(EXAMPLE);
    gw.host.with_property(&["tollgate.consumer_id"], b"alice");
    let body = br#"{"name": "bob", "n": 18446744073709551617}"#;
    let id = gw.start(&[
        (":method", "POST"),
        (":path", "/api/v1/users"),
        ("content-type", "application/json"),
        ("content-length", &body.len().to_string()),
    ]);
    assert_eq!(gw.request_headers(id, false), Action::Continue);
    assert_eq!(gw.host.header(id, "content-length"), None, "the length will change: chunked framing");
    chunk_of(&gw, id, Req, &body[..5]);
    assert_eq!(gw.request_body(id, 5, false), Action::Pause);
    chunk_of(&gw, id, Req, &body[5..]);
    assert_eq!(gw.request_body(id, body.len() - 5, true), Action::Continue);
    let sent = gw.host.request_body_of(id);
    assert_eq!(
        String::from_utf8(sent).unwrap(),
        r#"{"name": "bob", "n": 18446744073709551617, "meta": {"created_by":"alice"}}"#
    );
    assert_eq!(gw.host.counter("tollgate.transform.body_transformed_total"), 1);
}

#[test]
fn a_body_that_ends_with_trailers_is_transformed_there() {
    let mut gw = Gateway::new(EXAMPLE);
    gw.host.with_property(&["tollgate.consumer_id"], b"alice");
    let id =
        gw.start(&[(":method", "POST"), (":path", "/api/v1/users"), ("content-type", "application/json")]);
    assert_eq!(gw.request_headers(id, false), Action::Continue);
    chunk_of(&gw, id, Req, br#"{"meta": {"created_by": "#);
    assert_eq!(gw.request_body(id, 24, false), Action::Pause);
    chunk_of(&gw, id, Req, br#""mallory"}}"#);
    assert_eq!(gw.request_body(id, 11, false), Action::Pause);
    assert_eq!(gw.request_trailers(id), Action::Continue);
    assert_eq!(gw.host.request_body_of(id), br#"{"meta": {"created_by": "alice"}}"#);

    // The response side: the internal field does not leak through trailers.
    let id = gw.start(&[(":method", "GET"), (":path", "/api/v1/users/7")]);
    assert_eq!(gw.request_headers(id, true), Action::Continue);
    gw.host.with_response_header(id, ":status", "200");
    gw.host.with_response_header(id, "content-type", "application/json");
    assert_eq!(gw.response_headers(id, false), Action::Continue);
    chunk_of(&gw, id, Resp, br#"{"id": 7, "internal_id": "db-7"}"#);
    assert_eq!(gw.response_body(id, 32, false), Action::Pause);
    assert_eq!(gw.response_trailers(id), Action::Continue);
    assert_eq!(gw.host.response_body_of(id), br#"{"id": 7}"#);
}

/// A request over HTTP/1.1, as Envoy reports it.
fn over_http1(gw: &Gateway, id: u32) {
    gw.host.with_request_property(id, &["request", "protocol"], b"HTTP/1.1");
}

#[test]
fn a_chunked_http1_body_keeps_flowing_while_the_filter_holds_it() {
    // A chunk over HTTP/1.1 is a whole read, which can be past Envoy's buffer limit: the stream
    // is never paused (Envoy would add the next chunk to its buffer first), each chunk goes on
    // empty and the body goes out with the last one.
    let mut gw = Gateway::new(EXAMPLE);
    gw.host.with_property(&["tollgate.consumer_id"], b"alice");
    let id =
        gw.start(&[(":method", "POST"), (":path", "/api/v1/users"), ("content-type", "application/json")]);
    over_http1(&gw, id);
    assert_eq!(gw.request_headers(id, false), Action::Continue);
    chunk_of(&gw, id, Req, br#"{"meta": {"created_by": "#);
    assert_eq!(gw.request_body(id, 24, false), Action::Continue);
    assert!(gw.host.request_body_of(id).is_empty(), "the chunk goes on empty");
    chunk_of(&gw, id, Req, br#""mallory"}}"#);
    assert_eq!(gw.request_body(id, 11, true), Action::Continue);
    assert_eq!(gw.host.request_body_of(id), br#"{"meta": {"created_by": "alice"}}"#);

    // The response from an HTTP/1.1 upstream: Envoy keeps its `transfer-encoding`.
    let id = gw.start(&[(":method", "GET"), (":path", "/api/v1/users/7")]);
    assert_eq!(gw.request_headers(id, true), Action::Continue);
    gw.host.with_response_header(id, ":status", "200");
    gw.host.with_response_header(id, "content-type", "application/json");
    gw.host.with_response_header(id, "transfer-encoding", "chunked");
    assert_eq!(gw.response_headers(id, false), Action::Continue);
    for chunk in [&br#"{"id": 7, "#[..], br#""internal_id": "db-7"}"#] {
        chunk_of(&gw, id, Resp, chunk);
        assert_eq!(gw.response_body(id, chunk.len(), false), Action::Continue);
        assert!(gw.host.response_body_of(id).is_empty(), "nothing of the body goes out yet");
    }
    chunk_of(&gw, id, Resp, b"");
    assert_eq!(gw.response_body(id, 0, true), Action::Continue);
    assert_eq!(gw.host.response_body_of(id), br#"{"id": 7}"#);
    assert_eq!(gw.host.counter("tollgate.transform.body_transformed_total"), 2);
}

#[test]
fn a_flowing_body_over_the_cap_goes_on_at_once_whatever_the_burst() {
    // Nothing of it passes through Envoy's buffer: what was held and the burst go on together.
    let mut gw = Gateway::new(&pass_config(1024));
    let id = gw.start(&[(":method", "POST"), (":path", "/"), ("content-type", "application/json")]);
    over_http1(&gw, id);
    assert_eq!(gw.request_headers(id, false), Action::Continue);
    let held = vec![b'h'; 1000];
    let burst = vec![b'b'; 2_000_000];
    chunk_of(&gw, id, Req, &held);
    assert_eq!(gw.request_body(id, held.len(), false), Action::Continue);
    chunk_of(&gw, id, Req, &burst);
    assert_eq!(gw.request_body(id, burst.len(), false), Action::Continue);
    assert_eq!(gw.host.request_body_of(id), [held, burst].concat(), "what was held, then the burst");
    gw.host.with_request_body(id, b"next");
    assert_eq!(gw.request_body(id, 4, true), Action::Continue);
    assert_eq!(gw.host.request_body_of(id), b"next", "then the body passes");
    assert_eq!(gw.request_trailers(id), Action::Continue, "nothing waits for trailers");
    assert!(gw.host.reply(id).is_none());
    assert_eq!(gw.host.counter("tollgate.transform.body_skipped_too_large_total"), 1);
}

#[test]
fn trailers_after_a_flowing_body_refuse_the_message() {
    // HTTP/1.1 trailers the head did not announce: the held body can no longer go out in front
    // of them, and the message must not go on without it.
    let mut gw = Gateway::new(&pass_config(1024));
    let id = gw.start(&[(":method", "POST"), (":path", "/"), ("content-type", "application/json")]);
    over_http1(&gw, id);
    assert_eq!(gw.request_headers(id, false), Action::Continue);
    chunk_of(&gw, id, Req, br#"{"a": 0}"#);
    assert_eq!(gw.request_body(id, 8, false), Action::Continue);
    assert_eq!(gw.request_trailers(id), Action::Pause);
    let reply = gw.host.reply(id).unwrap();
    assert_eq!((reply.status, json_of(&reply.body)["error"].as_str()), (500, Some("internal_error")));
    assert_eq!(gw.host.counter("tollgate.transform.errors_total"), 1);
    assert_eq!(gw.host.counter("tollgate.transform.requests_total.decision.deny.reason.rejected"), 1);
    let logs = gw.host.logs();
    assert!(logs.iter().any(|(level, line)| *level == tollgate_host::LogLevel::Warn
        && line.contains("request refused: trailers came that the head did not announce")));

    // Trailers straight after the headers find nothing held.
    let id = gw.start(&[(":method", "POST"), (":path", "/"), ("content-type", "application/json")]);
    over_http1(&gw, id);
    assert_eq!(gw.request_headers(id, false), Action::Continue);
    assert_eq!(gw.request_trailers(id), Action::Continue);
    assert!(gw.host.reply(id).is_none());
}

#[test]
fn bodies_that_may_end_with_trailers_are_held_paused() {
    let mut gw = Gateway::new(EXAMPLE);
    gw.host.with_property(&["tollgate.consumer_id"], b"alice");
    // HTTP/1.1 announcing them, and HTTP/2.
    for (protocol, trailer) in [("HTTP/1.1", true), ("HTTP/2", false)] {
        let mut head =
            vec![(":method", "POST"), (":path", "/api/v1/users"), ("content-type", "application/json")];
        if trailer {
            head.push(("trailer", "x-checksum"));
        }
        let id = gw.start(&head);
        gw.host.with_request_property(id, &["request", "protocol"], protocol.as_bytes());
        assert_eq!(gw.request_headers(id, false), Action::Continue);
        chunk_of(&gw, id, Req, br#"{"meta": {"created_by": "#);
        assert_eq!(gw.request_body(id, 24, false), Action::Pause, "{protocol}");
        chunk_of(&gw, id, Req, br#""mallory"}}"#);
        assert_eq!(gw.request_body(id, 11, false), Action::Pause, "{protocol}");
        assert_eq!(gw.request_trailers(id), Action::Continue);
        assert_eq!(gw.host.request_body_of(id), br#"{"meta": {"created_by": "alice"}}"#, "{protocol}");
    }

    // A response from an HTTP/1.1 upstream announcing them.
    let id = gw.start(&[(":method", "GET"), (":path", "/api/v1/users/7")]);
    assert_eq!(gw.request_headers(id, true), Action::Continue);
    for (name, value) in [
        (":status", "200"),
        ("content-type", "application/json"),
        ("transfer-encoding", "chunked"),
        ("trailer", "x-checksum"),
    ] {
        gw.host.with_response_header(id, name, value);
    }
    assert_eq!(gw.response_headers(id, false), Action::Continue);
    chunk_of(&gw, id, Resp, br#"{"id": 7, "internal_id": "db-7"}"#);
    assert_eq!(gw.response_body(id, 32, false), Action::Pause);
    assert_eq!(gw.response_trailers(id), Action::Continue);
    assert_eq!(gw.host.response_body_of(id), br#"{"id": 7}"#);
}

#[test]
fn non_json_body_flows_through_unbuffered() {
    let mut gw = Gateway::new(EXAMPLE);
    let id = gw.start(&[(":method", "POST"), (":path", "/api/v1/users"), ("content-type", "text/plain")]);
    assert_eq!(gw.request_headers(id, false), Action::Continue);
    gw.host.with_request_body(id, b"not json");
    assert_eq!(gw.request_body(id, 8, true), Action::Continue);
    assert_eq!(gw.host.request_body_of(id), b"not json");
    assert_eq!(gw.host.counter("tollgate.transform.body_skipped_not_json_total"), 1);
}

#[test]
fn oversized_body_is_refused_with_413_by_length_or_while_streaming() {
    let mut gw = Gateway::new(EXAMPLE);
    let id = gw.start(&[
        (":method", "POST"),
        (":path", "/api/v1/users"),
        ("content-type", "application/json"),
        ("content-length", "999999"),
    ]);
    assert_eq!(gw.request_headers(id, false), Action::Pause);
    let reply = gw.host.reply(id).unwrap();
    assert_eq!(reply.status, 413);
    assert_eq!(json_of(&reply.body)["error"], "payload_too_large");
    assert_eq!(json_of(&reply.body)["request_id"], format!("req-{id}"));

    // Chunked: no length up front, the cap is crossed while buffering.
    let id =
        gw.start(&[(":method", "POST"), (":path", "/api/v1/users"), ("content-type", "application/json")]);
    assert_eq!(gw.request_headers(id, false), Action::Continue);
    chunk_of(&gw, id, Req, &vec![b' '; 200_000]);
    assert_eq!(gw.request_body(id, 200_000, false), Action::Pause);
    assert!(gw.host.reply(id).is_none());
    chunk_of(&gw, id, Req, &vec![b' '; 62_145]);
    assert_eq!(gw.request_body(id, 62_145, false), Action::Pause, "one byte over the cap");
    assert_eq!(gw.host.reply(id).unwrap().status, 413);
    assert_eq!(gw.host.counter("tollgate.transform.body_skipped_too_large_total"), 2);
}

fn pass_config(max: usize) -> String {
    format!(
        r#"{{"max_body_bytes": {max}, "rules": [{{"request": {{"body": [{{"op": "set", "path": "a", "value": 1}}]}}, "response": {{"body": [{{"op": "remove", "path": "a"}}]}}}}]}}"#
    )
}

#[test]
fn a_body_over_the_cap_goes_on_whole_and_in_order() {
    let mut gw = Gateway::new(&pass_config(16));
    let id = gw.start(&[(":method", "POST"), (":path", "/"), ("content-type", "application/json")]);
    assert_eq!(gw.request_headers(id, false), Action::Continue);
    chunk_of(&gw, id, Req, b"{\"pad\": \"");
    assert_eq!(gw.request_body(id, 9, false), Action::Pause);
    chunk_of(&gw, id, Req, b"0123456789");
    assert_eq!(gw.request_body(id, 10, false), Action::Continue, "over the cap: no more buffering");
    assert_eq!(gw.host.request_body_of(id), b"{\"pad\": \"0123456789", "what was held, then the chunk");
    gw.host.with_request_body(id, b"\"}");
    assert_eq!(gw.request_body(id, 2, true), Action::Continue);
    assert_eq!(gw.host.request_body_of(id), b"\"}");
    assert!(gw.host.reply(id).is_none());
    assert_eq!(gw.host.counter("tollgate.transform.body_skipped_too_large_total"), 1);
}

#[test]
fn a_large_chunk_crossing_the_cap_follows_the_held_body() {
    // Envoy must never hold the held body and a burst at once: the burst goes out in front of
    // the next chunk.
    let mut gw = Gateway::new(&pass_config(1024));
    let id = gw.start(&[(":method", "GET"), (":path", "/")]);
    assert_eq!(gw.request_headers(id, true), Action::Continue);
    gw.host.with_response_header(id, ":status", "200");
    gw.host.with_response_header(id, "content-type", "application/json");
    assert_eq!(gw.response_headers(id, false), Action::Continue);
    let held = vec![b'h'; 1000];
    let burst = vec![b'b'; 200_000];
    chunk_of(&gw, id, Resp, &held);
    assert_eq!(gw.response_body(id, held.len(), false), Action::Pause);
    chunk_of(&gw, id, Resp, &burst);
    assert_eq!(gw.response_body(id, burst.len(), false), Action::Continue);
    assert_eq!(gw.host.response_body_of(id), held, "only what was held goes now");
    gw.host.with_response_body(id, b"next");
    assert_eq!(gw.response_body(id, 4, true), Action::Continue);
    let mut rest = burst.clone();
    rest.extend_from_slice(b"next");
    assert_eq!(gw.host.response_body_of(id), rest, "the burst, then the next chunk");
}

#[test]
fn oversized_body_passes_untouched_by_default() {
    let mut gw = Gateway::new(&pass_config(16));
    let id = gw.start(&[(":method", "POST"), (":path", "/"), ("content-type", "application/json")]);
    assert_eq!(gw.request_headers(id, false), Action::Continue);
    let big = br#"{"padding": "0123456789abcdef"}"#;
    chunk_of(&gw, id, Req, big);
    assert_eq!(gw.request_body(id, big.len(), true), Action::Continue);
    assert_eq!(gw.host.request_body_of(id), big);
    assert!(gw.host.reply(id).is_none());
}

#[test]
fn malformed_json_passes_by_default_and_gets_400_when_configured() {
    let rules = r#"[{"request": {"body": [{"op": "set", "path": "a", "value": 1}]}}]"#;
    for (mode, expect) in [("pass", None), ("reject", Some(400))] {
        let mut gw = Gateway::new(&format!(r#"{{"on_invalid_json": "{mode}", "rules": {rules}}}"#));
        let id = gw.start(&[(":method", "POST"), (":path", "/"), ("content-type", "application/json")]);
        assert_eq!(gw.request_headers(id, false), Action::Continue);
        let broken = br#"{"a": [1, 2"#;
        chunk_of(&gw, id, Req, &broken[..4]);
        assert_eq!(gw.request_body(id, 4, false), Action::Pause);
        chunk_of(&gw, id, Req, &broken[4..]);
        let action = gw.request_body(id, broken.len() - 4, true);
        assert_eq!(gw.host.reply(id).map(|r| r.status), expect);
        assert_eq!(action, if expect.is_some() { Action::Pause } else { Action::Continue });
        if expect.is_some() {
            assert_eq!(json_of(&gw.host.reply(id).unwrap().body)["error"], "bad_request");
        } else {
            assert_eq!(gw.host.request_body_of(id), broken, "never truncated");
        }
        assert_eq!(gw.host.counter("tollgate.transform.invalid_json_total"), 1);
    }
}

#[test]
fn response_status_headers_and_body_are_transformed() {
    let mut gw = Gateway::new(EXAMPLE);
    let id = gw.start(&[(":method", "GET"), (":path", "/api/v1/users/7")]);
    assert_eq!(gw.request_headers(id, true), Action::Continue);
    let body = br#"{"id": 7, "internal_id": "db-7", "audit": {"ip": "10.0.0.1", "at": 1}}"#;
    gw.host.with_response_header(id, ":status", "200");
    gw.host.with_response_header(id, "server", "upstream");
    gw.host.with_response_header(id, "content-type", "application/json");
    gw.host.with_response_header(id, "content-length", &body.len().to_string());
    assert_eq!(gw.response_headers(id, false), Action::Continue);
    assert_eq!(gw.host.response_header_of(id, "content-length"), None);
    assert_eq!(gw.host.response_header_of(id, "server"), None);
    chunk_of(&gw, id, Resp, body);
    assert_eq!(gw.response_body(id, body.len(), true), Action::Continue);
    assert_eq!(gw.host.response_body_of(id), br#"{"id": 7, "audit": { "at": 1}}"#);

    let id = gw.start(&[(":method", "GET"), (":path", "/legacy/x")]);
    gw.request_headers(id, true);
    assert_eq!(gw.host.header(id, ":authority").as_deref(), Some("legacy.internal"));
    assert_eq!(gw.host.header(id, ":method").as_deref(), Some("POST"));
    gw.host.with_response_header(id, ":status", "404");
    assert_eq!(gw.response_headers(id, true), Action::Continue);
    assert_eq!(gw.host.response_header_of(id, ":status").as_deref(), Some("200"));
}

#[test]
fn event_streams_are_never_buffered_even_with_body_rules() {
    let mut gw = Gateway::new(EXAMPLE);
    let id = gw.start(&[(":method", "GET"), (":path", "/api/v1/users/stream")]);
    gw.request_headers(id, true);
    gw.host.with_response_header(id, ":status", "200");
    gw.host.with_response_header(id, "content-type", "text/event-stream");
    assert_eq!(gw.response_headers(id, false), Action::Continue);
    assert_eq!(gw.response_body(id, 20, false), Action::Continue);
    assert_eq!(gw.host.counter("tollgate.transform.body_skipped_not_json_total"), 1);
}

#[test]
fn responses_follow_on_invalid_json_and_on_oversize() {
    let rules = r#"[{"response": {"body": [{"op": "remove", "path": "a"}]}}]"#;
    for mode in ["pass", "reject"] {
        let config = format!(
            r#"{{"max_body_bytes": 64, "on_invalid_json": "{mode}", "on_oversize": "{mode}", "rules": {rules}}}"#
        );
        let mut gw = Gateway::new(&config);
        let id = gw.start(&[(":method", "GET"), (":path", "/")]);
        gw.request_headers(id, true);
        gw.host.with_response_header(id, ":status", "200");
        gw.host.with_response_header(id, "content-type", "application/json");
        assert_eq!(gw.response_headers(id, false), Action::Continue);
        chunk_of(&gw, id, Resp, b"<html>");
        assert_eq!(
            gw.response_body(id, 6, true),
            if mode == "pass" { Action::Continue } else { Action::Pause }
        );
        match mode {
            "pass" => {
                assert_eq!(gw.host.response_body_of(id), b"<html>");
                assert!(gw.host.reply(id).is_none());
            }
            _ => {
                let reply = gw.host.reply(id).unwrap();
                assert_eq!(
                    (reply.status, json_of(&reply.body)["error"].as_str()),
                    (502, Some("bad_gateway"))
                );
            }
        }

        // Announced over the cap: decided before the body comes.
        let id = gw.start(&[(":method", "GET"), (":path", "/")]);
        gw.request_headers(id, true);
        gw.host.with_response_header(id, ":status", "200");
        gw.host.with_response_header(id, "content-type", "application/json");
        gw.host.with_response_header(id, "content-length", "65");
        let action = gw.response_headers(id, false);
        assert_eq!(gw.host.reply(id).map(|r| r.status), (mode == "reject").then_some(502));
        assert_eq!(action, if mode == "pass" { Action::Continue } else { Action::Pause });
    }
}

#[test]
fn an_encoded_slash_is_refused_when_a_rule_looks_at_the_path() {
    let mut gw = Gateway::new(EXAMPLE);
    let id = gw.start(&[(":method", "GET"), (":path", "/legacy%2F..%2Fadmin")]);
    assert_eq!(gw.request_headers(id, true), Action::Pause);
    let reply = gw.host.reply(id).unwrap();
    assert_eq!((reply.status, json_of(&reply.body)["error"].as_str()), (400, Some("bad_request")));
    assert_eq!(gw.host.counter("tollgate.transform.requests_total.decision.deny.reason.rejected"), 1);
    // Another spelling of a rule's path is the path.
    let id = gw.start(&[(":method", "GET"), (":path", "//legacy/./x")]);
    assert_eq!(gw.request_headers(id, true), Action::Continue);
    assert_eq!(gw.host.header(id, ":authority").as_deref(), Some("legacy.internal"));
}

#[test]
fn header_bytes_survive_a_rename_and_bad_values_are_counted() {
    let config = r#"{"rules": [{"request": {"headers": [
        {"op": "rename", "name": "x-raw", "to": "x-moved"},
        {"op": "set", "name": "x-copy", "value": "<{header.x-moved}>"},
        {"op": "set", "name": "x-from-query", "value": "{query.v}"}
    ]}}]}"#;
    let mut gw = Gateway::new(config);
    let id = gw.start(&[(":method", "GET"), (":path", "/?v=a%01b")]);
    gw.host.with_header_bytes(id, "x-raw", b"\xff\xfe");
    gw.host.with_header_bytes(id, "x-moved", b"\xc3\xa9");
    assert_eq!(gw.request_headers(id, true), Action::Continue);
    assert_eq!(gw.host.header_lines(id, "x-moved"), vec![b"\xff\xfe".to_vec()]);
    assert_eq!(
        gw.host.header_lines(id, "x-copy"),
        vec![b"<\xc3\xa9>".to_vec()],
        "templates read the request as sent"
    );
    assert!(gw.host.header_lines(id, "x-from-query").is_empty());
    assert_eq!(gw.host.counter("tollgate.transform.errors_total"), 1);
    let logged = gw.host.logs().iter().map(|(_, l)| l.clone()).collect::<Vec<_>>().join("\n");
    assert!(logged.contains(r"a\u{1}b") && !logged.contains('\u{1}'), "{logged}");
}

#[test]
fn a_host_that_is_not_an_authority_refuses_the_request() {
    let config = r#"{"rules": [{"request": {"host": "{header.x-backend}"}}]}"#;
    let mut gw = Gateway::new(config);
    for (backend, status) in [("good.example@evil.example", Some(400)), ("svc.internal:8443", None)] {
        let id = gw.start(&[(":method", "GET"), (":path", "/"), ("x-backend", backend)]);
        gw.request_headers(id, true);
        assert_eq!(gw.host.reply(id).map(|r| r.status), status, "{backend}");
        if status.is_none() {
            assert_eq!(gw.host.header(id, ":authority").as_deref(), Some(backend));
        }
    }
}

#[test]
fn route_name_is_read_for_templates_and_matchers() {
    let config = r#"{"rules": [
        {"request": {"headers": [{"op": "set", "name": "x-route", "value": "{route_name}"}]}},
        {"match": {"route_name": "orders"}, "request": {"headers": [{"op": "set", "name": "x-orders", "value": "yes"}]}}
    ]}"#;
    let mut gw = Gateway::new(config);
    let id = gw.start(&[(":method", "GET"), (":path", "/orders/1")]);
    gw.host.with_request_property(id, &["xds", "route_name"], b"orders");
    assert_eq!(gw.request_headers(id, true), Action::Continue);
    assert_eq!(gw.host.header(id, "x-route").as_deref(), Some("orders"));
    assert_eq!(gw.host.header(id, "x-orders").as_deref(), Some("yes"));
}

#[test]
fn a_chunk_still_to_go_out_when_trailers_come_refuses_the_message() {
    // Envoy lets nothing be added to a body that is passing again: the message must not go on
    // without the chunk.
    let mut gw = Gateway::new(&pass_config(1024));
    let id = gw.start(&[(":method", "POST"), (":path", "/"), ("content-type", "application/json")]);
    assert_eq!(gw.request_headers(id, false), Action::Continue);
    chunk_of(&gw, id, Req, &[b' '; 1000]);
    assert_eq!(gw.request_body(id, 1000, false), Action::Pause);
    chunk_of(&gw, id, Req, &vec![b' '; 200_000]);
    assert_eq!(gw.request_body(id, 200_000, false), Action::Continue);
    assert_eq!(gw.request_trailers(id), Action::Pause);
    let reply = gw.host.reply(id).unwrap();
    assert_eq!((reply.status, json_of(&reply.body)["error"].as_str()), (500, Some("internal_error")));
    assert_eq!(gw.host.counter("tollgate.transform.errors_total"), 1);
}

#[test]
fn a_body_that_crosses_the_cap_by_a_little_goes_out_at_once() {
    let mut gw = Gateway::new(&pass_config(1024));
    let id = gw.start(&[(":method", "POST"), (":path", "/"), ("content-type", "application/json")]);
    assert_eq!(gw.request_headers(id, false), Action::Continue);
    chunk_of(&gw, id, Req, &[b'a'; 1000]);
    assert_eq!(gw.request_body(id, 1000, false), Action::Pause);
    chunk_of(&gw, id, Req, &[b'b'; 30_000]);
    assert_eq!(gw.request_body(id, 30_000, false), Action::Continue);
    assert_eq!(gw.host.request_body_of(id), [vec![b'a'; 1000], vec![b'b'; 30_000]].concat());
    // Trailers then find nothing waiting.
    assert_eq!(gw.request_trailers(id), Action::Continue);
    assert!(gw.host.reply(id).is_none());
}

#[test]
fn trailers_right_after_the_headers_leave_the_message_alone() {
    let mut gw = Gateway::new(&pass_config(1024));
    let id = gw.start(&[(":method", "POST"), (":path", "/"), ("content-type", "application/json")]);
    assert_eq!(gw.request_headers(id, false), Action::Continue);
    assert_eq!(gw.request_trailers(id), Action::Continue);
    assert!(gw.host.request_body_of(id).is_empty());
    assert!(gw.host.reply(id).is_none());
}
