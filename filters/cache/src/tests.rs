//! The contexts driven against the mock host: coalesced misses (answered, timed out, or left
//! by their leader), background refreshes made by the root context, and every stat defined.

use std::time::Duration;

use proxy_wasm::types::Action;
use tollgate_host::Stat as _;
use tollgate_host::mock::Harness;

use crate::Cache;
use crate::worker::Stat;

const EXAMPLE: &str = include_str!("../config.example.json");
const CONFIG: &str = r#"{"origin_cluster": "origin", "lock_timeout": "2s"}"#;

type Gateway = Harness<Cache>;

fn get(gw: &mut Gateway, path: &str) -> u32 {
    gw.request(&[(":method", "GET"), (":path", path), (":authority", "api.example"), ("x-request-id", "r")])
}

/// Answers request `id` from the origin with `cache_control` and `body`, whole.
fn origin_answers(gw: &mut Gateway, id: u32, cache_control: &str, body: &[u8]) {
    gw.host.with_response_header(id, ":status", "200");
    gw.host.with_response_header(id, "cache-control", cache_control);
    gw.host.with_response_header(id, "content-length", &body.len().to_string());
    gw.host.with_response_body(id, body);
    assert_eq!(gw.response_headers(id, false), Action::Continue);
    assert_eq!(gw.response_body(id, body.len(), true), Action::Continue);
}

fn counter(gw: &Gateway, stat: Stat) -> i64 {
    gw.host.counter(&format!("tollgate.cache.{}", tollgate_host::stats::metric_name(stat.name())))
}

#[test]
fn example_config_parses_and_every_stat_is_defined() {
    let gw = Gateway::new(EXAMPLE);
    for stat in Stat::ALL {
        assert_eq!(counter(&gw, *stat), 0);
    }
    assert_eq!(gw.host.gauge("tollgate.cache.memory_bytes"), Some(0));
    assert_eq!(gw.host.tick_period(), Some(Duration::from_millis(100)));
}

#[test]
fn a_stored_miss_answers_the_requests_that_waited_on_it() {
    let mut gw = Gateway::new(CONFIG);
    gw.host.set_now_ms(1_700_000_000_000);
    let leader = get(&mut gw, "/a");
    assert_eq!(gw.request_headers(leader, true), Action::Continue);
    let waiter = get(&mut gw, "/a");
    assert_eq!(gw.request_headers(waiter, true), Action::Pause);
    origin_answers(&mut gw, leader, "max-age=60", b"hello");
    let reply = gw.host.reply(waiter).expect("the waiter is answered from the cache");
    assert_eq!((reply.status, reply.body.as_slice()), (200, &b"hello"[..]));
    assert_eq!(reply.header("cache-status"), Some("tollgate; hit; ttl=60; collapsed"));
    assert_eq!(gw.host.resumed(waiter), 0);
    assert_eq!(counter(&gw, Stat::Coalesced), 1);
    // The waiter's own context leaves its local reply alone.
    assert_eq!(gw.response_headers(waiter, true), Action::Continue);
    assert!(gw.host.gauge("tollgate.cache.memory_bytes").unwrap() > 0);
}

#[test]
fn waiters_go_upstream_when_the_miss_is_not_stored_or_its_leader_goes_away() {
    let mut gw = Gateway::new(CONFIG);
    let leader = get(&mut gw, "/a");
    gw.request_headers(leader, true);
    let waiter = get(&mut gw, "/a");
    assert_eq!(gw.request_headers(waiter, true), Action::Pause);
    origin_answers(&mut gw, leader, "no-store", b"x");
    assert_eq!(gw.host.resumed(waiter), 1);
    assert!(gw.host.reply(waiter).is_none());

    let leader = get(&mut gw, "/b");
    gw.request_headers(leader, true);
    let waiter = get(&mut gw, "/b");
    assert_eq!(gw.request_headers(waiter, true), Action::Pause);
    gw.done(leader); // the client went away
    assert_eq!(gw.host.resumed(waiter), 1);
}

#[test]
fn waiters_past_lock_timeout_go_upstream_from_the_tick() {
    let mut gw = Gateway::new(CONFIG);
    let leader = get(&mut gw, "/slow");
    gw.request_headers(leader, true);
    let waiter = get(&mut gw, "/slow");
    assert_eq!(gw.request_headers(waiter, true), Action::Pause);
    gw.host.advance(Duration::from_millis(1900));
    gw.tick();
    assert_eq!(gw.host.resumed(waiter), 0);
    gw.host.advance(Duration::from_millis(200));
    gw.tick();
    assert_eq!(gw.host.resumed(waiter), 1);
    assert_eq!(counter(&gw, Stat::CoalesceTimeout), 1);
    // The leader's answer later does not touch the waiter again.
    origin_answers(&mut gw, leader, "max-age=60", b"late");
    assert_eq!(gw.host.resumed(waiter), 1);
    assert!(gw.host.reply(waiter).is_none());
}

#[test]
fn stale_while_revalidate_refreshes_once_from_the_root_context() {
    let mut gw = Gateway::new(CONFIG);
    gw.host.set_now_ms(1_700_000_000_000);
    let first = get(&mut gw, "/swr");
    gw.request_headers(first, true);
    origin_answers(&mut gw, first, "max-age=1, stale-while-revalidate=30", b"v1");
    gw.host.advance(Duration::from_secs(3));
    for _ in 0..3 {
        let id = get(&mut gw, "/swr");
        assert_eq!(gw.request_headers(id, true), Action::Pause);
        assert_eq!(gw.host.reply(id).unwrap().body, b"v1");
        gw.done(id);
    }
    assert!(gw.host.http_calls().is_empty(), "no call from a request context");
    gw.tick();
    gw.tick();
    let calls = gw.host.http_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].cluster, "origin");
    assert!(calls[0].headers.contains(&(":path".to_owned(), "/swr".to_owned())));
    gw.host.set_http_response(&[(":status", "200"), ("cache-control", "max-age=60")], Some(b"v2"));
    gw.http_response(calls[0].context_id, calls[0].token, 2);
    assert_eq!(counter(&gw, Stat::Revalidated), 1);
    let after = get(&mut gw, "/swr");
    gw.request_headers(after, true);
    assert_eq!(gw.host.reply(after).unwrap().body, b"v2");
}

#[test]
fn a_failed_refresh_is_not_made_again_for_a_while() {
    let mut gw = Gateway::new(CONFIG);
    gw.host.set_now_ms(1_700_000_000_000);
    let first = get(&mut gw, "/swr");
    gw.request_headers(first, true);
    origin_answers(&mut gw, first, "max-age=1, stale-while-revalidate=60", b"v1");
    gw.host.advance(Duration::from_secs(3));
    let stale = |gw: &mut Gateway| {
        let id = get(gw, "/swr");
        assert_eq!(gw.request_headers(id, true), Action::Pause);
        assert_eq!(gw.host.reply(id).unwrap().body, b"v1");
        gw.done(id);
    };
    stale(&mut gw);
    gw.tick();
    let calls = gw.host.http_calls();
    assert_eq!(calls.len(), 1);
    gw.answer_http(calls[0].token, "503", b"down");
    assert_eq!(counter(&gw, Stat::RefreshFailed), 1);
    // Stale answers go on; no new call before the retry time.
    for _ in 0..3 {
        stale(&mut gw);
        gw.tick();
    }
    assert_eq!(gw.host.http_calls().len(), 1);
    gw.host.advance(Duration::from_secs(6));
    stale(&mut gw);
    gw.tick();
    assert_eq!(gw.host.http_calls().len(), 2);
}

#[test]
fn a_refresh_is_conditional_and_a_304_keeps_the_body_with_new_freshness() {
    let mut gw = Gateway::new(CONFIG);
    gw.host.set_now_ms(1_700_000_000_000);
    let first = get(&mut gw, "/etag");
    gw.request_headers(first, true);
    gw.host.with_response_header(first, "etag", "\"v1\"");
    gw.host.with_response_header(first, "x-kept", "yes");
    origin_answers(&mut gw, first, "max-age=1, stale-while-revalidate=60", b"body-v1");
    gw.host.advance(Duration::from_secs(3));
    let stale = get(&mut gw, "/etag");
    gw.request_headers(stale, true);
    assert!(gw.host.reply(stale).unwrap().header("cache-status").unwrap().contains("stale-while-revalidate"));
    gw.tick();
    let calls = gw.host.http_calls();
    assert_eq!(calls.len(), 1);
    assert!(
        calls[0].headers.contains(&("if-none-match".to_owned(), "\"v1\"".to_owned())),
        "{:?}",
        calls[0].headers
    );
    gw.host.set_http_response(&[(":status", "304"), ("cache-control", "max-age=60")], None);
    gw.http_response(calls[0].context_id, calls[0].token, 0);
    assert_eq!(counter(&gw, Stat::Revalidated), 1);
    let after = get(&mut gw, "/etag");
    gw.request_headers(after, true);
    let reply = gw.host.reply(after).unwrap();
    assert_eq!((reply.status, reply.body.as_slice()), (200, &b"body-v1"[..]));
    assert_eq!(reply.header("cache-control"), Some("max-age=60"));
    assert_eq!(reply.header("x-kept"), Some("yes"));
    assert!(reply.header("cache-status").unwrap().starts_with("tollgate; hit; ttl=60"));
}

#[test]
fn a_consumer_id_that_is_not_text_never_gets_the_shared_entries() {
    let mut gw = Gateway::new(r#"{"per_consumer": true}"#);
    let anonymous = get(&mut gw, "/me");
    gw.request_headers(anonymous, true);
    origin_answers(&mut gw, anonymous, "max-age=60", b"anonymous");
    let odd = get(&mut gw, "/me");
    gw.host.with_request_property(odd, &[tollgate_core::identity::PROP_CONSUMER], b"\xffalice");
    assert_eq!(gw.request_headers(odd, true), Action::Continue);
    assert!(gw.host.reply(odd).is_none());
    assert_eq!(counter(&gw, Stat::Bypass), 1);
    let alice = get(&mut gw, "/me");
    gw.host.with_request_property(alice, &[tollgate_core::identity::PROP_CONSUMER], b"alice");
    assert_eq!(gw.request_headers(alice, true), Action::Continue, "alice's key is her own");
}
