//! The contexts driven against the mock host: coalesced misses (answered, timed out, or left
//! by their leader), background refreshes made by the root context, and every stat defined.

use std::time::Duration;

use proxy_wasm::types::Action;
use tollgate_host::Host as _;
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

/// Another worker of the same proxy: its own VM, the same shared data.
fn other_worker(gw: &Gateway, config: &str) -> Gateway {
    let other = Gateway::configured(tollgate_host::mock::MockHost::sharing_with(&gw.host), config);
    other.host.set_now_ms(gw.host.now_ms());
    other
}

#[test]
fn a_response_one_worker_stored_is_a_hit_in_another() {
    let mut a = Gateway::new(CONFIG);
    a.host.set_now_ms(1_700_000_000_000);
    let mut b = other_worker(&a, CONFIG);
    let first = get(&mut a, "/shared");
    assert_eq!(a.request_headers(first, true), Action::Continue);
    origin_answers(&mut a, first, "max-age=60", b"from-a");
    assert_eq!(counter(&a, Stat::SharedStored), 1);
    let id = get(&mut b, "/shared");
    assert_eq!(b.request_headers(id, true), Action::Pause, "answered from the shared tier");
    assert_eq!(b.host.reply(id).unwrap().body, b"from-a");
    assert_eq!(counter(&b, Stat::SharedHit), 1);
    assert_eq!(counter(&b, Stat::CacheMiss), 0);
}

#[test]
fn a_miss_goes_upstream_once_per_proxy_and_other_workers_wait_for_it() {
    let mut a = Gateway::new(CONFIG);
    a.host.set_now_ms(1_700_000_000_000);
    let mut b = other_worker(&a, CONFIG);
    let leader = get(&mut a, "/cold");
    assert_eq!(a.request_headers(leader, true), Action::Continue);
    let waiter = get(&mut b, "/cold");
    assert_eq!(b.request_headers(waiter, true), Action::Pause, "waits on worker a's miss");
    b.tick();
    assert!(b.host.reply(waiter).is_none());
    assert_eq!(b.host.resumed(waiter), 0);
    origin_answers(&mut a, leader, "max-age=60", b"cold");
    b.tick();
    let reply = b.host.reply(waiter).expect("answered from the shared tier on the tick");
    assert_eq!(reply.body, b"cold");
    assert_eq!(reply.header("cache-status"), Some("tollgate; hit; ttl=60; collapsed"));
    assert_eq!(counter(&b, Stat::Coalesced), 1);

    // A miss that is not stored: the waiter goes upstream once the leader lets go.
    let leader = get(&mut a, "/nostore");
    a.request_headers(leader, true);
    let waiter = get(&mut b, "/nostore");
    assert_eq!(b.request_headers(waiter, true), Action::Pause);
    origin_answers(&mut a, leader, "no-store", b"x");
    b.tick();
    assert_eq!(b.host.resumed(waiter), 1);
    assert!(b.host.reply(waiter).is_none());

    // A leader that never answers: the waiter goes upstream after lock_timeout.
    let leader = get(&mut a, "/hung");
    a.request_headers(leader, true);
    let waiter = get(&mut b, "/hung");
    assert_eq!(b.request_headers(waiter, true), Action::Pause);
    b.host.advance(Duration::from_millis(2100));
    b.tick();
    assert_eq!(b.host.resumed(waiter), 1);
    assert_eq!(counter(&b, Stat::CoalesceTimeout), 1);
}

#[test]
fn one_refresh_per_proxy_and_the_other_workers_take_its_answer() {
    let mut a = Gateway::new(CONFIG);
    a.host.set_now_ms(1_700_000_000_000);
    let mut b = other_worker(&a, CONFIG);
    let first = get(&mut a, "/swr");
    a.request_headers(first, true);
    origin_answers(&mut a, first, "max-age=1, stale-while-revalidate=30", b"v1");
    // b has its own copy too.
    let id = get(&mut b, "/swr");
    b.request_headers(id, true);
    for gw in [&a, &b] {
        gw.host.advance(Duration::from_secs(3));
    }
    for gw in [&mut a, &mut b] {
        let id = get(gw, "/swr");
        assert_eq!(gw.request_headers(id, true), Action::Pause);
        assert_eq!(gw.host.reply(id).unwrap().body, b"v1");
        gw.tick();
    }
    assert_eq!(a.host.http_calls().len() + b.host.http_calls().len(), 1, "one refresh for the proxy");
    let calls = a.host.http_calls();
    a.host.set_http_response(&[(":status", "200"), ("cache-control", "max-age=60")], Some(b"v2"));
    a.http_response(calls[0].context_id, calls[0].token, 2);
    let id = get(&mut b, "/swr");
    b.request_headers(id, true);
    let reply = b.host.reply(id).unwrap();
    assert_eq!(reply.body, b"v2", "worker b takes the refreshed copy from the shared tier");
    assert!(reply.header("cache-status").unwrap().starts_with("tollgate; hit; ttl=60"));
    b.tick();
    assert!(b.host.http_calls().is_empty());
}

#[test]
fn an_unsafe_request_in_one_worker_drops_the_url_in_every_worker() {
    let config = r#"{"per_consumer": true}"#;
    let mut a = Gateway::new(config);
    a.host.set_now_ms(1_700_000_000_000);
    let mut b = other_worker(&a, config);
    let as_alice = |gw: &mut Gateway, method: &str| {
        let id = gw.request(&[(":method", method), (":path", "/doc?b=1&a=2"), (":authority", "api.example")]);
        gw.host.with_request_property(id, &[tollgate_core::identity::PROP_CONSUMER], b"alice");
        id
    };
    let id = as_alice(&mut b, "GET");
    b.request_headers(id, true);
    origin_answers(&mut b, id, "max-age=60", b"old");
    let id = as_alice(&mut b, "GET");
    assert_eq!(b.request_headers(id, true), Action::Pause, "a hit in b");
    a.host.advance(Duration::from_millis(5));
    b.host.advance(Duration::from_millis(5));
    // bob (another consumer) changes it through worker a, with the query in another order.
    let put = a.request(&[(":method", "PUT"), (":path", "/doc?a=2&b=1"), (":authority", "API.example")]);
    a.host.with_request_property(put, &[tollgate_core::identity::PROP_CONSUMER], b"bob");
    assert_eq!(a.request_headers(put, true), Action::Continue);
    a.host.with_response_header(put, ":status", "204");
    a.response_headers(put, true);
    let id = as_alice(&mut b, "GET");
    assert_eq!(b.request_headers(id, true), Action::Continue, "gone from b's store and the shared tier");
    assert_eq!(counter(&b, Stat::Purged), 1);
}

#[test]
fn purges_from_the_key_service_feed_reach_every_worker() {
    use prost::Message;
    use tollgate_proto::v1;
    let config = r#"{"key_service": {"cluster": "keyd", "token": "tgd_test", "poll_interval": "1s"}}"#;
    let mut a = Gateway::new(config);
    a.host.set_now_ms(1_700_000_000_000);
    let mut b = other_worker(&a, config);
    let store = |gw: &mut Gateway, path: &str, tag: &str| {
        let id = get(gw, path);
        gw.request_headers(id, true);
        gw.host.with_response_header(id, "cache-tag", tag);
        origin_answers(gw, id, "max-age=600, stale-while-revalidate=600", b"v1");
    };
    store(&mut b, "/p/1", "product, p1");
    store(&mut b, "/p/2", "product, p2");
    store(&mut b, "/other", "misc");
    // The first poll learns the head.
    a.tick();
    let calls = a.host.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(v1::ListChangesRequest::decode(calls[0].message.as_slice()).unwrap().limit, 1);
    let head = v1::ListChangesResponse { changes: vec![], head_seq: 40 };
    a.answer_grpc(calls[0].token, 0, Some(&head.encode_to_vec()), None);
    b.tick();
    assert_eq!(b.host.calls().len(), 0, "one poller per proxy");
    a.host.advance(Duration::from_secs(1));
    b.host.advance(Duration::from_secs(1));
    a.tick();
    let calls = a.host.calls();
    assert_eq!(v1::ListChangesRequest::decode(calls[1].message.as_slice()).unwrap().after_seq, 40);
    let purge = |seq, p: v1::CachePurge| v1::Change {
        seq,
        kind: v1::ChangeKind::CachePurged as i32,
        purge: Some(p),
        ..Default::default()
    };
    let page = v1::ListChangesResponse {
        changes: vec![
            purge(41, v1::CachePurge { tag: "p1".into(), ..Default::default() }),
            purge(42, v1::CachePurge { tag: "p2".into(), soft: true, ..Default::default() }),
        ],
        head_seq: 42,
    };
    a.answer_grpc(calls[1].token, 0, Some(&page.encode_to_vec()), None);
    assert_eq!(counter(&a, Stat::PurgesApplied), 2);
    let ask = |gw: &mut Gateway, path: &str| {
        let id = get(gw, path);
        let action = gw.request_headers(id, true);
        (action, gw.host.reply(id).and_then(|r| r.header("cache-status").map(str::to_owned)))
    };
    assert_eq!(ask(&mut b, "/p/1").0, Action::Continue, "hard purge: a miss");
    let (action, status) = ask(&mut b, "/p/2");
    assert_eq!(action, Action::Pause);
    assert!(status.unwrap().contains("detail=stale-while-revalidate"), "soft purge: stale");
    let (action, status) = ask(&mut b, "/other");
    assert_eq!(action, Action::Pause);
    assert!(status.unwrap().starts_with("tollgate; hit"), "another tag is kept");
}

#[test]
fn a_stale_entry_is_revalidated_on_the_request_path_and_a_304_answers_from_the_store() {
    let mut gw = Gateway::new(CONFIG);
    gw.host.set_now_ms(1_700_000_000_000);
    let first = get(&mut gw, "/doc");
    gw.request_headers(first, true);
    gw.host.with_response_header(first, "etag", "\"v1\"");
    origin_answers(&mut gw, first, "max-age=1", b"body-v1");
    gw.host.advance(Duration::from_secs(3));
    let stale = get(&mut gw, "/doc");
    assert_eq!(gw.request_headers(stale, true), Action::Continue, "stale: to the origin");
    assert_eq!(gw.host.header(stale, "if-none-match").as_deref(), Some("\"v1\""), "made conditional");
    gw.host.with_response_header(stale, ":status", "304");
    gw.host.with_response_header(stale, "cache-control", "max-age=60");
    assert_eq!(gw.response_headers(stale, true), Action::Pause);
    let reply = gw.host.reply(stale).expect("answered from the store");
    assert_eq!((reply.status, reply.body.as_slice()), (200, &b"body-v1"[..]));
    assert_eq!(reply.header("cache-status"), Some("tollgate; fwd=stale; fwd-status=304"));
    assert_eq!(reply.header("cache-control"), Some("max-age=60"));
    assert_eq!(counter(&gw, Stat::Revalidated), 1);
    let after = get(&mut gw, "/doc");
    assert_eq!(gw.request_headers(after, true), Action::Pause);
    assert!(
        gw.host.reply(after).unwrap().header("cache-status").unwrap().starts_with("tollgate; hit; ttl=60")
    );

    // A client's own conditional request is left as it is: its 304 is the client's.
    gw.host.advance(Duration::from_secs(61));
    let own = gw.request(&[
        (":method", "GET"),
        (":path", "/doc"),
        (":authority", "api.example"),
        ("if-none-match", "\"v0\""),
    ]);
    assert_eq!(gw.request_headers(own, true), Action::Continue);
    assert_eq!(gw.host.header(own, "if-none-match").as_deref(), Some("\"v0\""));
    gw.host.with_response_header(own, ":status", "304");
    assert_eq!(gw.response_headers(own, true), Action::Continue);
    assert!(gw.host.reply(own).is_none());
}

#[test]
fn a_no_cache_response_with_a_validator_is_stored_and_validated_on_every_use() {
    let mut gw = Gateway::new(CONFIG);
    gw.host.set_now_ms(1_700_000_000_000);
    let first = get(&mut gw, "/nc");
    gw.request_headers(first, true);
    gw.host.with_response_header(first, "etag", "\"n1\"");
    origin_answers(&mut gw, first, "no-cache", b"nc-body");
    assert_eq!(counter(&gw, Stat::Stored), 1);
    for _ in 0..2 {
        let id = get(&mut gw, "/nc");
        assert_eq!(gw.request_headers(id, true), Action::Continue, "never used without validating");
        assert_eq!(gw.host.header(id, "if-none-match").as_deref(), Some("\"n1\""));
        gw.host.with_response_header(id, ":status", "304");
        gw.host.with_response_header(id, "etag", "\"n1\"");
        assert_eq!(gw.response_headers(id, true), Action::Pause);
        assert_eq!(gw.host.reply(id).unwrap().body, b"nc-body");
    }
    // Changed at the origin: a 200 replaces the stored copy.
    let id = get(&mut gw, "/nc");
    gw.request_headers(id, true);
    gw.host.with_response_header(id, "etag", "\"n2\"");
    origin_answers(&mut gw, id, "no-cache", b"nc-2");
    let id = get(&mut gw, "/nc");
    gw.request_headers(id, true);
    assert_eq!(gw.host.header(id, "if-none-match").as_deref(), Some("\"n2\""));
}
