//! The contexts driven against the mock host.

use proxy_wasm::types::Action;
use tollgate_core::identity;
use tollgate_host::Host;
use tollgate_host::mock::{Harness, MockHost};

use crate::RateLimit;

/// A gateway worker: one mock host (one Envoy worker) with the filter configured.
type Gateway = Harness<RateLimit>;

/// Requests as the tests speak of them.
trait Drive {
    /// Runs a request through the filter: request headers, then (if it passed) the response.
    /// `props` are filter-state properties (what key-auth published).
    fn send(&mut self, path: &str, headers: &[(&str, &str)], props: &[(&str, &str)]) -> (u32, Action);
    fn get(&mut self, path: &str) -> Action;
    fn allowed_of(&mut self, n: usize, path: &str, headers: &[(&str, &str)], props: &[(&str, &str)])
    -> usize;
    /// A request with header values given as bytes (they need not be UTF-8).
    fn send_bytes(&mut self, path: &str, headers: &[(&str, &[u8])]) -> (u32, Action);
    fn status_of(&mut self, path: &str, headers: &[(&str, &[u8])]) -> u32;
    /// Request headers, then (if they passed) the response headers.
    fn run(&mut self, id: u32) -> Action;
}

impl Drive for Gateway {
    fn send(&mut self, path: &str, headers: &[(&str, &str)], props: &[(&str, &str)]) -> (u32, Action) {
        let id = self.request(&[(":path", path), (":method", "GET")]);
        self.host.with_header(id, "x-request-id", &format!("req-{id}"));
        for (k, v) in headers {
            self.host.with_header(id, k, v);
        }
        self.host.enter(id);
        for (k, v) in props {
            self.host.set_property(&[k], v.as_bytes());
        }
        (id, self.run(id))
    }

    fn get(&mut self, path: &str) -> Action {
        self.send(path, &[], &[]).1
    }

    fn allowed_of(
        &mut self,
        n: usize,
        path: &str,
        headers: &[(&str, &str)],
        props: &[(&str, &str)],
    ) -> usize {
        (0..n).filter(|_| self.send(path, headers, props).1 == Action::Continue).count()
    }

    fn send_bytes(&mut self, path: &str, headers: &[(&str, &[u8])]) -> (u32, Action) {
        let id = self.request(&[(":path", path), (":method", "GET")]);
        for (k, v) in headers {
            self.host.with_header_bytes(id, k, v);
        }
        (id, self.run(id))
    }

    fn status_of(&mut self, path: &str, headers: &[(&str, &[u8])]) -> u32 {
        let (id, action) = self.send_bytes(path, headers);
        match action {
            Action::Continue => 200,
            _ => self.host.reply(id).map_or(0, |r| r.status),
        }
    }

    fn run(&mut self, id: u32) -> Action {
        let action = self.request_headers(id, true);
        if action == Action::Continue {
            self.response_headers(id, true);
        }
        action
    }
}

fn global(rate: u64, per: &str, burst: u64) -> String {
    format!(
        r#"{{"slots": 64, "rules": [{{"name": "all", "limits": [{{"rate": {rate}, "per": "{per}", "burst": {burst}}}]}}]}}"#
    )
}

#[test]
fn each_request_is_counted_once_by_its_decision() {
    let mut gw = Gateway::new(&global(1, "minute", 2));
    for _ in 0..5 {
        gw.get("/a");
    }
    assert_eq!(gw.host.counter("tollgate.rate_limit.requests_total.decision.allow"), 2);
    assert_eq!(gw.host.counter("tollgate.rate_limit.requests_total.decision.deny.reason.limited"), 3);
    assert_eq!(gw.host.counter("tollgate.rate_limit.rule_decisions_total.rule.all.decision.allowed"), 2);
    assert_eq!(gw.host.counter("tollgate.rate_limit.rule_decisions_total.rule.all.decision.limited"), 3);
}

#[test]
fn allows_exactly_the_burst_then_429_with_retry_after_and_json() {
    let mut gw = Gateway::new(&global(1, "minute", 3));
    for _ in 0..3 {
        assert_eq!(gw.get("/a"), Action::Continue);
    }
    let (id, action) = gw.send("/a", &[], &[]);
    assert_eq!(action, Action::Pause);
    let reply = gw.host.reply(id).unwrap();
    assert_eq!(reply.status, 429);
    assert_eq!(reply.header("retry-after"), Some("60"));
    assert_eq!(reply.header("content-type"), Some("application/json"));
    // The next token in a minute, as Retry-After says.
    assert_eq!(reply.header("ratelimit"), Some(r#""all";r=0;t=60"#));
    let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(body["error"], "rate_limited");
    assert_eq!(body["request_id"], format!("req-{id}"));
    assert_eq!(gw.host.counter("tollgate.rate_limit.rule_decisions_total.rule.all.decision.allowed"), 3);
    assert_eq!(gw.host.counter("tollgate.rate_limit.rule_decisions_total.rule.all.decision.limited"), 1);
}

#[test]
fn allowed_responses_carry_the_headers() {
    let config = r#"{"slots": 64, "headers": {"legacy": true},
        "rules": [{"name": "all", "limits": [{"rate": 10, "per": "second", "burst": 5}]}]}"#;
    let mut gw = Gateway::new(config);
    let (id, action) = gw.send("/a", &[], &[]);
    assert_eq!(action, Action::Continue);
    let h = |n| gw.host.response_header_of(id, n);
    // The quota is the burst (5), back in full in half a second: w rounds up to 1.
    assert_eq!(h("ratelimit-policy").as_deref(), Some(r#""all";q=5;w=1"#));
    assert_eq!(h("ratelimit").as_deref(), Some(r#""all";r=4;t=1"#));
    assert_eq!(h("x-ratelimit-limit").as_deref(), Some("5"));
    assert_eq!(h("x-ratelimit-remaining").as_deref(), Some("4"));
    assert_eq!(h("x-ratelimit-reset").as_deref(), Some("1"));
}

#[test]
fn headers_can_be_switched_off() {
    let config = r#"{"slots": 64, "headers": {"ietf": false},
        "rules": [{"name": "all", "limits": [{"rate": 1, "per": "hour"}]}]}"#;
    let mut gw = Gateway::new(config);
    let (id, _) = gw.send("/a", &[], &[]);
    assert_eq!(gw.host.response_header_of(id, "ratelimit"), None);
    let (id, _) = gw.send("/a", &[], &[]);
    let reply = gw.host.reply(id).unwrap();
    assert_eq!(reply.status, 429);
    assert_eq!(reply.header("ratelimit"), None);
    assert!(reply.header("retry-after").is_some());
}

#[test]
fn tokens_refill_with_the_host_clock() {
    let mut gw = Gateway::new(&global(2, "second", 2));
    assert_eq!(gw.allowed_of(10, "/", &[], &[]), 2);
    gw.host.advance(std::time::Duration::from_millis(500));
    assert_eq!(gw.allowed_of(10, "/", &[], &[]), 1);
    gw.host.advance(std::time::Duration::from_secs(60));
    assert_eq!(gw.allowed_of(10, "/", &[], &[]), 2);
}

#[test]
fn workers_share_one_bucket() {
    let config = global(1, "hour", 10);
    let mut a = Gateway::new(&config);
    let mut b = Gateway::configured(MockHost::sharing_with(&a.host), &config);
    let mut allowed = 0;
    for i in 0..40 {
        let gw = if i % 2 == 0 { &mut a } else { &mut b };
        allowed += usize::from(gw.get("/") == Action::Continue);
    }
    assert_eq!(allowed, 10);
}

#[test]
fn slots_exist_before_the_first_request_and_are_written_once() {
    let config = r#"{"slots": 64, "rules": [
        {"name": "all", "limits": [{"rate": 1, "per": "hour"}]},
        {"name": "ip", "by": ["ip"], "limits": [{"rate": 1, "per": "hour"}]},
        {"name": "login", "by": ["ip"], "slots": 16, "limits": [{"rate": 1, "per": "hour"}]}]}"#;
    let a = Gateway::new(config);
    // One slot for the rule without `by`, 64 and 16 for the others, and a marker per rule.
    assert_eq!(a.host.shared_keys(), 1 + 64 + 16 + 3);
    assert_eq!(a.host.counter("tollgate.rate_limit.slots_initialized_total"), 1);
    assert!(a.host.logs().iter().any(|(_, m)| m.contains("initialized 81 of 81 bucket slots")));
    let b = Gateway::configured(MockHost::sharing_with(&a.host), config);
    assert_eq!(
        b.host.counter("tollgate.rate_limit.slots_initialized_total"),
        0,
        "the second worker finds them"
    );
}

#[test]
fn a_lost_compare_and_swap_is_retried() {
    let mut gw = Gateway::new(&global(1, "hour", 5));
    gw.host.fail_next_cas(3);
    assert_eq!(gw.get("/"), Action::Continue);
    assert_eq!(gw.host.counter("tollgate.rate_limit.rule_events_total.rule.all.event.cas_exhausted"), 0);
    assert_eq!(gw.allowed_of(10, "/", &[], &[]), 4);
}

#[test]
fn exhausted_retries_follow_failure_mode() {
    let mut gw = Gateway::new(&global(1, "hour", 5));
    gw.host.fail_next_cas(1000);
    assert_eq!(gw.get("/"), Action::Continue);
    assert_eq!(gw.host.counter("tollgate.rate_limit.rule_events_total.rule.all.event.cas_exhausted"), 1);
    assert_eq!(gw.host.counter("tollgate.rate_limit.requests_total.decision.allow.reason.failure_mode"), 1);

    let deny = r#"{"slots": 64, "failure_mode": "deny", "rules": [{"name": "all", "limits": [{"rate": 1, "per": "hour", "burst": 5}]}]}"#;
    let mut gw = Gateway::new(deny);
    gw.host.fail_next_cas(1000);
    let (id, action) = gw.send("/", &[], &[]);
    assert_eq!(action, Action::Pause);
    assert_eq!(gw.host.reply(id).unwrap().status, 429);
    assert_eq!(gw.host.counter("tollgate.rate_limit.requests_total.decision.deny.reason.failure_mode"), 1);
}

const PER_CONSUMER: &str = r#"{"slots": 1024, "rules": [{"name": "c", "by": ["consumer"], "missing": "deny",
    "limits": [{"rate": 1, "per": "hour", "burst": 2}]}]}"#;

#[test]
fn consumers_have_their_own_buckets() {
    let mut gw = Gateway::new(PER_CONSUMER);
    let alice = [(identity::PROP_CONSUMER, "alice")];
    let bob = [(identity::PROP_CONSUMER, "bob")];
    assert_eq!(gw.allowed_of(5, "/", &[], &alice), 2);
    assert_eq!(gw.allowed_of(5, "/", &[], &bob), 2);
}

#[test]
fn missing_descriptor_follows_the_fallback() {
    let mut gw = Gateway::new(PER_CONSUMER);
    let (id, action) = gw.send("/", &[], &[]);
    assert_eq!(action, Action::Pause);
    let body: serde_json::Value = serde_json::from_slice(&gw.host.reply(id).unwrap().body).unwrap();
    assert_eq!(body["message"], tollgate_core::rate_limit::MISSING_MESSAGE);
    assert_eq!(gw.host.counter("tollgate.rate_limit.rule_decisions_total.rule.c.decision.missing_denied"), 1);

    let skip = PER_CONSUMER.replace(r#""missing": "deny""#, r#""missing": "skip""#);
    let mut gw = Gateway::new(&skip);
    assert_eq!(gw.allowed_of(5, "/", &[], &[]), 5);
    assert_eq!(
        gw.host.counter("tollgate.rate_limit.rule_decisions_total.rule.c.decision.missing_skipped"),
        5
    );

    // `ip`: requests without a consumer share their IP's bucket.
    let by_ip = PER_CONSUMER.replace(r#""missing": "deny""#, r#""missing": "ip""#);
    let mut gw = Gateway::new(&by_ip);
    gw.host.with_property(tollgate_host::attributes::SOURCE_ADDRESS, b"10.0.0.1:1234");
    assert_eq!(gw.allowed_of(5, "/", &[], &[]), 2);
}

#[test]
fn a_keys_own_limits_replace_the_rules() {
    let mut gw = Gateway::new(PER_CONSUMER);
    let gold = [(identity::PROP_CONSUMER, "gold"), (identity::PROP_RATE_LIMIT, "1/3600/5")];
    assert_eq!(gw.allowed_of(10, "/", &[], &gold), 5);
    // Unusable published limits fall back to the rule's, with a warning.
    let odd = [(identity::PROP_CONSUMER, "odd"), (identity::PROP_RATE_LIMIT, "1/7/5")];
    assert_eq!(gw.allowed_of(10, "/", &[], &odd), 2);
    assert!(gw.host.logs().iter().any(|(_, m)| m.contains("unusable key limits")));
    // Unless the rule says so.
    let own_off = PER_CONSUMER.replace(r#""missing": "deny""#, r#""missing": "deny", "key_limits": false"#);
    let mut gw = Gateway::new(&own_off);
    assert_eq!(gw.allowed_of(10, "/", &[], &gold), 2);
}

#[test]
fn client_ip_comes_from_the_trusted_forwarded_for_hop() {
    let config = r#"{"slots": 1024, "client_ip": {"forwarded_for_hop": 2},
        "rules": [{"name": "ip", "by": ["ip"], "missing": "skip", "limits": [{"rate": 1, "per": "hour"}]}]}"#;
    let mut gw = Gateway::new(config);
    gw.host.with_property(tollgate_host::attributes::SOURCE_ADDRESS, b"10.0.0.1:1234");
    let one = [("x-forwarded-for", "203.0.113.1, 10.9.9.9")];
    let two = [("x-forwarded-for", "203.0.113.2, 10.9.9.9")];
    assert_eq!(gw.allowed_of(3, "/", &one, &[]), 1);
    assert_eq!(gw.allowed_of(3, "/", &two, &[]), 1);
    // Too few hops: no IP, and the rule is skipped.
    assert_eq!(gw.allowed_of(3, "/", &[("x-forwarded-for", "203.0.113.3")], &[]), 3);
}

#[test]
fn critical_requests_use_the_reserve() {
    let config = r#"{"slots": 64, "rules": [{"name": "all", "limits": [{"rate": 1, "per": "hour", "burst": 10}],
        "priority": {"reserve_percent": 30, "critical": {"header": {"name": "x-priority", "value": "critical"}, "tiers": ["gold"]}}}]}"#;
    let mut gw = Gateway::new(config);
    assert_eq!(gw.allowed_of(20, "/", &[], &[]), 7);
    assert_eq!(gw.allowed_of(2, "/", &[("x-priority", "critical")], &[]), 2);
    assert_eq!(gw.allowed_of(5, "/", &[], &[(identity::PROP_TIER, "gold")]), 1);
    assert_eq!(gw.allowed_of(5, "/", &[("x-priority", "critical")], &[]), 0);
}

#[test]
fn shadow_mode_counts_but_never_refuses() {
    let config = r#"{"slots": 64, "rules": [{"name": "all", "mode": "shadow", "limits": [{"rate": 1, "per": "hour", "burst": 2}]}]}"#;
    let mut gw = Gateway::new(config);
    let ids: Vec<_> = (0..5).map(|_| gw.send("/", &[], &[])).collect();
    assert!(ids.iter().all(|(_, a)| *a == Action::Continue));
    assert!(ids.iter().all(|(id, _)| gw.host.reply(*id).is_none()));
    assert_eq!(gw.host.counter("tollgate.rate_limit.rule_decisions_total.rule.all.decision.allowed"), 2);
    assert_eq!(
        gw.host.counter("tollgate.rate_limit.rule_decisions_total.rule.all.decision.shadow_limited"),
        3
    );
    // Shadow rules do not announce limits they do not enforce.
    assert_eq!(gw.host.response_header_of(ids[0].0, "ratelimit"), None);
}

#[test]
fn rules_match_routes_paths_and_methods() {
    let config = r#"{"slots": 256, "rules": [
        {"name": "api", "match": {"path_prefix": "/api", "route_name": "main"}, "limits": [{"rate": 1, "per": "hour"}]},
        {"name": "post", "match": {"methods": ["POST"]}, "limits": [{"rate": 1, "per": "hour"}]}]}"#;
    let mut gw = Gateway::new(config);
    gw.host.with_property(tollgate_host::attributes::ROUTE_NAME, b"main");
    assert_eq!(gw.allowed_of(3, "/api/x?q=1", &[], &[]), 1);
    assert_eq!(gw.allowed_of(3, "/web", &[], &[]), 3);
    assert_eq!(gw.host.counter("tollgate.rate_limit.rule_decisions_total.rule.api.decision.allowed"), 1);
    assert_eq!(gw.host.counter("tollgate.rate_limit.rule_decisions_total.rule.post.decision.allowed"), 0);
}

#[test]
fn many_distinct_keys_stay_within_the_slots() {
    let config = r#"{"slots": 32, "rules": [{"name": "h", "by": [{"header": "x-client"}], "limits": [{"rate": 1, "per": "second", "burst": 1000}]}]}"#;
    let mut gw = Gateway::new(config);
    for i in 0..2_000 {
        let client = format!("client-{i}");
        assert_eq!(gw.send("/", &[("x-client", &client)], &[]).1, Action::Continue);
    }
    assert_eq!(gw.host.shared_keys(), 33, "32 slots and the marker");
    assert!(gw.host.counter("tollgate.rate_limit.rule_events_total.rule.h.event.collisions") > 0);
}

#[test]
fn an_invalid_config_is_refused_naming_the_field() {
    let mut gw = Gateway::on(MockHost::new());
    assert!(!gw.configure(r#"{"rules": [{"name": "r", "limits": [{"rate": 1, "per": "week"}]}]}"#));
    let logs = gw.host.logs();
    assert!(logs.iter().any(|(_, m)| m.contains("`rules[0].limits[0].per`")), "{logs:?}");
    assert!(gw.worker().is_none());
}

#[test]
fn buckets_by_route_and_critical_routes_read_xds_route_name() {
    let config = r#"{"slots": 64, "rules": [
        {"name": "per-route", "by": ["route"], "missing": "deny", "limits": [{"rate": 1, "per": "hour", "burst": 10}],
         "priority": {"reserve_percent": 30, "critical": {"route_names": ["health"]}}}]}"#;
    let mut gw = Gateway::new(config);
    gw.host.with_property(tollgate_host::attributes::ROUTE_NAME, b"api");
    assert_eq!(gw.allowed_of(20, "/", &[], &[]), 7);
    gw.host.with_property(tollgate_host::attributes::ROUTE_NAME, b"web");
    assert_eq!(gw.allowed_of(20, "/", &[], &[]), 7, "another route, another bucket");
    gw.host.with_property(tollgate_host::attributes::ROUTE_NAME, b"health");
    assert_eq!(gw.allowed_of(20, "/", &[], &[]), 10, "the critical route takes the whole bucket");
    assert_eq!(
        gw.host.counter("tollgate.rate_limit.rule_decisions_total.rule.per-route.decision.missing_denied"),
        0
    );
}

#[test]
fn spellings_of_a_path_share_its_bucket() {
    let config =
        r#"{"slots": 256, "rules": [{"name": "p", "by": ["path"], "limits": [{"rate": 1, "per": "hour"}]}]}"#;
    let mut gw = Gateway::new(config);
    assert_eq!(gw.get("/a?x=1"), Action::Continue);
    for spelling in ["/a", "//a", "/%61", "/x/../a", "/./a", "/%2e%2e/a?y"] {
        assert_eq!(gw.status_of(spelling, &[]), 429, "{spelling}");
    }
    assert_eq!(gw.get("/b"), Action::Continue);
    let (id, _) = gw.send("/a%2Fb", &[], &[]);
    let reply = gw.host.reply(id).unwrap();
    assert_eq!(reply.status, 400);
    let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(body["error"], "bad_request");
    assert_eq!(gw.host.counter("tollgate.rate_limit.requests_total.decision.deny.reason.bad_path"), 1);
}

#[test]
fn header_values_are_keyed_by_their_exact_bytes() {
    let config = r#"{"slots": 1024, "rules": [{"name": "h", "by": [{"header": "x-client"}], "missing": "deny",
        "limits": [{"rate": 1, "per": "hour"}]}]}"#;
    let mut gw = Gateway::new(config);
    let client = |v: &'static [u8]| [("x-client", v)];
    assert_eq!(gw.status_of("/", &client(b"\xff\xfe")), 200);
    assert_eq!(gw.status_of("/", &client(b"\xfe\xff")), 200);
    assert_eq!(gw.status_of("/", &client("\u{fffd}\u{fffd}".as_bytes())), 200);
    assert_eq!(gw.status_of("/", &client(b"\xff\xfe")), 429);
    assert_eq!(gw.status_of("/", &client(b"\xfe\xff")), 429);
}

#[test]
fn a_critical_header_is_compared_as_bytes() {
    let config = r#"{"slots": 64, "rules": [{"name": "all", "limits": [{"rate": 1, "per": "hour", "burst": 2}],
        "priority": {"reserve_percent": 50, "critical": {"header": {"name": "x-priority", "value": "\ufffd"}}}}]}"#;
    let mut gw = Gateway::new(config);
    assert_eq!(gw.status_of("/", &[]), 200);
    // A byte that is not UTF-8 is not the configured U+FFFD, whatever a lossy decoding says.
    assert_eq!(gw.status_of("/", &[("x-priority", b"\xff")]), 429);
    assert_eq!(gw.status_of("/", &[("x-priority", "\u{fffd}".as_bytes())]), 200);
}

#[test]
fn requests_without_a_client_ip_share_one_bucket_per_rule() {
    let config = r#"{"slots": 256, "client_ip": {"forwarded_for_hop": 1}, "rules": [
        {"name": "ip", "by": ["ip"], "limits": [{"rate": 1, "per": "hour", "burst": 2}]},
        {"name": "consumer", "by": ["consumer"], "limits": [{"rate": 1, "per": "hour", "burst": 3}]}]}"#;
    let mut gw = Gateway::new(config);
    // No x-forwarded-for: no IP. Both rules count the request in their no-IP bucket.
    let (id, action) = gw.send("/", &[], &[]);
    assert_eq!(action, Action::Continue);
    assert_eq!(gw.host.response_header_of(id, "ratelimit").as_deref(), Some(r#""ip";r=1;t=3600"#));
    assert_eq!(gw.allowed_of(5, "/", &[], &[]), 1);
    assert_eq!(gw.allowed_of(5, "/", &[("x-forwarded-for", "garbage")], &[]), 0, "not an IP: no IP");
    assert_eq!(gw.host.counter("tollgate.rate_limit.rule_events_total.rule.ip.event.no_client_ip"), 11);
    assert_eq!(gw.host.counter("tollgate.rate_limit.rule_events_total.rule.consumer.event.no_client_ip"), 2);
    // Requests with an IP keep their own buckets.
    assert_eq!(gw.allowed_of(5, "/", &[("x-forwarded-for", "203.0.113.5")], &[]), 2);
    // `skip` and `deny` still mean what they say.
    let skip = config.replace(r#""by": ["ip"],"#, r#""by": ["ip"], "missing": "skip","#);
    let mut gw = Gateway::new(&skip);
    assert_eq!(gw.allowed_of(5, "/", &[], &[(identity::PROP_CONSUMER, "alice")]), 3, "alice's own bucket");
    assert_eq!(
        gw.host.counter("tollgate.rate_limit.rule_decisions_total.rule.ip.decision.missing_skipped"),
        5
    );
    assert_eq!(gw.host.counter("tollgate.rate_limit.rule_events_total.rule.ip.event.no_client_ip"), 0);
}

#[test]
fn a_downstream_address_that_is_not_an_ip_is_no_ip() {
    let config = r#"{"slots": 256, "rules": [{"name": "ip", "by": ["ip"], "limits": [{"rate": 1, "per": "hour", "burst": 2}]}]}"#;
    let mut gw = Gateway::new(config);
    gw.host.with_property(tollgate_host::attributes::SOURCE_ADDRESS, b"envoy://internal_client_address/");
    assert_eq!(gw.allowed_of(5, "/", &[], &[]), 2);
    assert_eq!(gw.host.counter("tollgate.rate_limit.rule_events_total.rule.ip.event.no_client_ip"), 5);
    // One client, one bucket, however its address is spelled.
    gw.host.with_property(tollgate_host::attributes::SOURCE_ADDRESS, b"[::ffff:10.0.0.9]:4000");
    assert_eq!(gw.allowed_of(1, "/", &[], &[]), 1);
    gw.host.with_property(tollgate_host::attributes::SOURCE_ADDRESS, b"10.0.0.9:5000");
    assert_eq!(gw.allowed_of(5, "/", &[], &[]), 1);
}

#[test]
fn the_forwarded_for_hop_counts_every_field_line() {
    let config = r#"{"slots": 256, "client_ip": {"forwarded_for_hop": 1},
        "rules": [{"name": "ip", "by": ["ip"], "missing": "deny", "limits": [{"rate": 1, "per": "hour"}]}]}"#;
    let mut gw = Gateway::new(config);
    // The client wrote the first line; the proxy in front appended the second.
    let mut send = |client_line: &str| {
        let id = gw.request(&[(":path", "/")]);
        gw.host.with_header_line(id, "x-forwarded-for", client_line);
        gw.host.with_header_line(id, "x-forwarded-for", "203.0.113.50");
        gw.request_headers(id, true)
    };
    assert_eq!(send("198.51.100.1"), Action::Continue);
    assert_eq!(send("198.51.100.2"), Action::Pause, "the proxy's entry, not the client's line");
}

#[test]
fn one_rules_flood_leaves_other_rules_slots_alone() {
    let config = r#"{"slots": 8, "rules": [
        {"name": "a", "match": {"path_prefix": "/a"}, "by": [{"header": "x-client"}],
         "limits": [{"rate": 1, "per": "second", "burst": 4}]},
        {"name": "b", "match": {"path_prefix": "/b"}, "by": [{"header": "x-client"}],
         "limits": [{"rate": 100, "per": "second", "burst": 100}]}]}"#;
    let mut gw = Gateway::new(config);
    let mut a_refused = 0;
    for i in 0..200 {
        a_refused += usize::from(gw.status_of("/a", &[("x-client", format!("flood-{i}").as_bytes())]) == 429);
    }
    assert!(a_refused > 100, "{a_refused}: a's 8 slots are saturated");
    for i in 0..20 {
        let client = format!("b-{i}");
        assert_eq!(gw.status_of("/b", &[("x-client", client.as_bytes())]), 200, "{client}");
    }
    assert_eq!(gw.host.counter("tollgate.rate_limit.rule_decisions_total.rule.b.decision.limited"), 0);
    // Rule a's new clients wait until a's buckets are full again, then take them over.
    assert_eq!(gw.status_of("/a", &[("x-client", b"late-0")]), 429);
    gw.host.advance(std::time::Duration::from_secs(4));
    for i in 0..20 {
        let client = format!("late-{i}");
        assert_eq!(gw.status_of("/a", &[("x-client", client.as_bytes())]), 200, "{client}");
    }
}

#[test]
fn retry_after_waits_for_every_emptied_limit() {
    let config = r#"{"slots": 64, "rules": [
        {"name": "hourly", "limits": [{"rate": 1, "per": "hour", "burst": 2}]},
        {"name": "per-second", "limits": [{"rate": 1, "per": "second"}]}]}"#;
    let mut gw = Gateway::new(config);
    assert_eq!(gw.get("/"), Action::Continue);
    // The hourly rule takes its last token, then the per-second rule refuses.
    let (id, action) = gw.send("/", &[], &[]);
    assert_eq!(action, Action::Pause);
    let reply = gw.host.reply(id).unwrap();
    assert_eq!(reply.header("ratelimit"), Some(r#""hourly";r=0;t=3600"#));
    assert_eq!(reply.header("retry-after"), Some("3600"), "a second later the hourly rule refuses");
}

#[test]
fn an_unknown_field_in_a_by_header_is_refused_naming_it() {
    let mut gw = Gateway::on(MockHost::new());
    assert!(!gw.configure(
        r#"{"rules": [{"name": "r", "by": ["ip", {"header": "authorization", "prefix": "Bearer "}],
            "limits": [{"rate": 1, "per": "second"}]}]}"#,
    ));
    let logs = gw.host.logs();
    assert!(
        logs.iter().any(|(_, m)| m.contains("`rules[0].by[1].prefix`: unknown field `prefix`")),
        "{logs:?}"
    );
}

#[test]
fn shipped_example_config_is_accepted() {
    let mut gw = Gateway::on(MockHost::new());
    assert!(gw.configure(include_str!("../config.example.json")), "{:?}", gw.host.logs());
    assert_eq!(gw.worker().unwrap().config.rules.len(), 2);
    assert_eq!(gw.host.tick_period(), None, "nothing to do on a tick");
}

#[test]
fn refusals_are_counted_per_consumer_and_rule_and_reported() {
    use prost::Message;
    use tollgate_host::mock::ROOT_ID;
    use tollgate_proto::v1;
    let config = r#"{"slots": 1024, "usage": {"key_service": {"cluster": "keyd", "token": "t"}, "report_interval": "1s"},
        "rules": [{"name": "per-consumer", "by": ["consumer"], "missing": "skip",
                   "limits": [{"rate": 1, "per": "hour", "burst": 2}]}]}"#;
    let mut gw = Gateway::new(config);
    let alice = [(identity::PROP_CONSUMER, "alice")];
    assert_eq!(gw.allowed_of(5, "/", &[], &alice), 2);
    assert_eq!(gw.allowed_of(1, "/", &[], &[]), 1, "no consumer: the rule is skipped");
    gw.host.advance(std::time::Duration::from_secs(2));
    gw.tick();
    let call = gw.host.calls().into_iter().rev().find(|c| c.method == "ReportUsage").expect("a report");
    let batch = v1::ReportUsageRequest::decode(call.message.as_slice()).unwrap();
    let counts: Vec<(&str, &str, &str, u64)> = batch
        .counts
        .iter()
        .map(|c| (c.consumer_id.as_str(), c.rule.as_str(), c.outcome.as_str(), c.count))
        .collect();
    assert_eq!(counts, [("alice", "per-consumer", "limited", 3)]);
    gw.host.set_grpc_response(Some(v1::ReportUsageResponse::default().encode_to_vec()), None);
    gw.grpc_response(ROOT_ID, call.token, 0, 0);
    assert_eq!(gw.host.counter("tollgate.rate_limit.usage_reports_total.outcome.ok"), 1);
    let plain = r#"{"rules": [{"name": "all", "limits": [{"rate": 1, "per": "hour"}]}]}"#;
    assert_eq!(Gateway::new(plain).host.tick_period(), None, "no usage, no tick");
}

mod global_mode {
    use prost::Message as _;

    use super::*;
    use crate::rls::{self, DescriptorStatus, ProtoDuration, RateLimit, RateLimitRequest, RateLimitResponse};

    /// A local rule of 100 a second, a `fallback` rule of 2 an hour, and one call per request to
    /// the service with [tenant=<x-tenant>] and [generic_key=all].
    fn config(failure_mode: &str) -> String {
        let fallback = if failure_mode == "local_fallback" {
            r#", {"name": "fallback", "mode": "fallback", "limits": [{"rate": 2, "per": "hour"}]}"#
        } else {
            ""
        };
        format!(
            r#"{{"rules": [{{"name": "local", "limits": [{{"rate": 100, "per": "second"}}]}}{fallback}],
               "global": {{"cluster": "rls", "domain": "gw", "timeout": "250ms", "failure_mode": "{failure_mode}",
                          "descriptors": [[{{"key": "tenant", "from": {{"header": "x-tenant"}}}}],
                                          [{{"key": "generic_key", "value": "all"}}]]}}}}"#
        )
    }

    /// The service's answer: [tenant] at 600 a minute with 10 left (59 s of debt), or, when
    /// `over`, at 10 an hour with none left (an hour of debt: one more in 360 s); [generic_key]
    /// at 600 a minute with 10 s of debt.
    fn answer(over: bool) -> Vec<u8> {
        let status =
            |code: i32, name: &str, rate: u32, unit: i32, remaining: u32, reset_secs: i64| DescriptorStatus {
                code,
                current_limit: Some(RateLimit { name: name.to_owned(), requests_per_unit: rate, unit }),
                limit_remaining: remaining,
                duration_until_reset: Some(ProtoDuration { seconds: reset_secs, nanos: 0 }),
            };
        let tenant = if over {
            status(2, "per-tenant", 10, 3, 0, 3_600)
        } else {
            status(1, "per-tenant", 600, 2, 10, 59)
        };
        RateLimitResponse {
            overall_code: if over { 2 } else { 1 },
            statuses: vec![tenant, status(1, "", 600, 2, 500, 10)],
        }
        .encode_to_vec()
    }

    /// Sends a request; returns its id, what the filter did, and the token of its call if any.
    fn send(gw: &mut Gateway, tenant: Option<&str>) -> (u32, Action, Option<u32>) {
        let before = gw.host.calls().len();
        let headers: Vec<(&str, &str)> = tenant.map(|t| ("x-tenant", t)).into_iter().collect();
        let (id, action) = gw.send("/a", &headers, &[]);
        let calls = gw.host.calls();
        (id, action, calls.get(before).map(|c| c.token))
    }

    #[test]
    fn the_service_is_called_once_after_the_local_rules_with_the_descriptors() {
        let mut gw = Gateway::new(&config("allow"));
        let (id, action, token) = send(&mut gw, Some("acme"));
        assert_eq!(action, Action::Pause);
        let call = gw.host.calls().into_iter().find(|c| Some(c.token) == token).unwrap();
        assert_eq!(
            (call.cluster.as_str(), call.service.as_str(), call.method.as_str()),
            ("rls", rls::SERVICE, rls::METHOD)
        );
        assert_eq!(call.timeout, std::time::Duration::from_millis(250));
        let request = RateLimitRequest::decode(call.message.as_slice()).unwrap();
        assert_eq!(request.domain, "gw");
        let entries: Vec<Vec<(String, String)>> = request
            .descriptors
            .iter()
            .map(|d| d.entries.iter().map(|e| (e.key.clone(), e.value.clone())).collect())
            .collect();
        assert_eq!(
            entries,
            [
                vec![("tenant".to_owned(), "acme".to_owned())],
                vec![("generic_key".to_owned(), "all".to_owned())]
            ]
        );
        gw.answer_grpc(token.unwrap(), 0, Some(&answer(false)), None);
        assert_eq!(gw.host.resumed(id), 1);
        gw.response_headers(id, true);
        let policy = gw.host.response_header_of(id, "ratelimit-policy").unwrap();
        assert!(policy.contains(r#""per-tenant";q=600;w=60"#), "{policy}");
        assert!(policy.contains(r#""local";q=100;w=1"#), "{policy}");
        assert_eq!(gw.host.response_header_of(id, "ratelimit").as_deref(), Some(r#""per-tenant";r=10;t=1"#));
        assert_eq!(gw.host.counter("tollgate.rate_limit.requests_total.decision.allow"), 1);
        assert_eq!(gw.host.counter("tollgate.rate_limit.global_ok_total"), 1);
    }

    #[test]
    fn over_limit_answers_429_with_retry_after() {
        let mut gw = Gateway::new(&config("allow"));
        let (id, _, token) = send(&mut gw, Some("acme"));
        gw.answer_grpc(token.unwrap(), 0, Some(&answer(true)), None);
        assert_eq!(gw.host.resumed(id), 0);
        let reply = gw.host.reply(id).unwrap();
        assert_eq!(reply.status, 429);
        assert_eq!(reply.header("retry-after"), Some("360"));
        assert_eq!(reply.header("ratelimit"), Some(r#""per-tenant";r=0;t=360"#));
        assert!(String::from_utf8_lossy(&reply.body).contains("\"error\":\"rate_limited\""));
        assert_eq!(
            gw.host.counter("tollgate.rate_limit.requests_total.decision.deny.reason.global_limited"),
            1
        );
    }

    #[test]
    fn a_locally_refused_request_never_calls_the_service() {
        let json = config("allow").replace(r#""rate": 100, "per": "second""#, r#""rate": 1, "per": "hour""#);
        let mut gw = Gateway::new(&json);
        let (_, _, token) = send(&mut gw, Some("acme"));
        gw.answer_grpc(token.unwrap(), 0, Some(&answer(false)), None);
        let (id, action, token) = send(&mut gw, Some("acme"));
        assert_eq!((action, token), (Action::Pause, None));
        assert_eq!(gw.host.reply(id).unwrap().status, 429);
    }

    #[test]
    fn descriptors_without_a_value_are_not_sent() {
        let mut gw = Gateway::new(&config("allow"));
        let (_, _, token) = send(&mut gw, None);
        let call = gw.host.calls().into_iter().find(|c| Some(c.token) == token).unwrap();
        let request = RateLimitRequest::decode(call.message.as_slice()).unwrap();
        assert_eq!(request.descriptors.len(), 1, "only [generic_key=all]");
    }

    #[test]
    fn each_failure_mode_applies_when_the_service_cannot_answer() {
        // gRPC UNAVAILABLE, then an answer that is not a response, then a call the proxy refuses.
        for failure_mode in ["allow", "deny", "local_fallback"] {
            let mut gw = Gateway::new(&config(failure_mode));
            let mut outcomes = Vec::new();
            for attempt in 0..3 {
                let (id, action, token) = if attempt == 2 {
                    gw.host.refuse_calls(true);
                    send(&mut gw, Some("acme"))
                } else {
                    let (id, action, token) = send(&mut gw, Some("acme"));
                    if attempt == 0 {
                        gw.answer_grpc(token.unwrap(), 14, None, Some("redis down"));
                    } else {
                        gw.answer_grpc(token.unwrap(), 0, Some(b"\xff\xff\xff"), None);
                    }
                    (id, action, token)
                };
                let _ = token;
                let passed = action == Action::Continue || gw.host.resumed(id) == 1;
                outcomes.push(if passed { 200 } else { gw.host.reply(id).map_or(0, |r| r.status) });
            }
            let expected: &[u32] = match failure_mode {
                "allow" => &[200, 200, 200],
                "deny" => &[429, 429, 429],
                // The fallback rule: 2 an hour.
                _ => &[200, 200, 429],
            };
            assert_eq!(outcomes, expected, "failure_mode {failure_mode}");
            assert_eq!(gw.host.counter("tollgate.rate_limit.global_error_total"), 3, "{failure_mode}");
        }
    }

    #[test]
    fn a_descriptor_from_the_path_sends_the_normalised_path() {
        let json = config("allow")
            .replace(r#"{"key": "generic_key", "value": "all"}"#, r#"{"key": "path", "from": "path"}"#);
        let mut gw = Gateway::new(&json);
        let (_, _, token) = {
            let before = gw.host.calls().len();
            let (id, action) = gw.send("//api/%61bc?x=1", &[], &[]);
            (id, action, gw.host.calls().get(before).map(|c| c.token))
        };
        let call = gw.host.calls().into_iter().find(|c| Some(c.token) == token).unwrap();
        let request = RateLimitRequest::decode(call.message.as_slice()).unwrap();
        assert_eq!(request.descriptors[0].entries[0].value, "/api/abc");
    }

    #[test]
    fn an_answer_to_another_call_is_ignored() {
        let mut gw = Gateway::new(&config("deny"));
        let (id, _, token) = send(&mut gw, Some("acme"));
        gw.grpc_response(id, token.unwrap() + 100, 0, 0);
        assert_eq!(gw.host.resumed(id), 0);
        assert!(gw.host.reply(id).is_none());
    }
}
