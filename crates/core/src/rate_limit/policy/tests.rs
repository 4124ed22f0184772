//! The policy over in-memory facts and an in-memory slot store with its own clock.

use std::cell::RefCell;
use std::collections::HashMap;

use super::*;
use crate::rate_limit::bucket::State;
use crate::rate_limit::config::Headers;
use crate::rate_limit::response_headers;

const T0: u64 = 1_700_000_000_000_000_000;

/// A request's facts, recording which ones the policy asked for.
#[derive(Default)]
struct Req {
    route_name: Option<String>,
    ip: Option<String>,
    consumer: Option<String>,
    key_id: Option<String>,
    tier: Option<String>,
    headers: Vec<(String, Vec<u8>)>,
    key_limits: Option<Vec<Limit>>,
    asked: RefCell<Vec<String>>,
}

impl Req {
    fn new() -> Self {
        Self::default()
    }
    fn route(mut self, v: &str) -> Self {
        self.route_name = Some(v.into());
        self
    }
    fn ip(mut self, v: &str) -> Self {
        self.ip = Some(v.into());
        self
    }
    fn consumer(mut self, v: &str) -> Self {
        self.consumer = Some(v.into());
        self
    }
    fn key_id(mut self, v: &str) -> Self {
        self.key_id = Some(v.into());
        self
    }
    fn tier(mut self, v: &str) -> Self {
        self.tier = Some(v.into());
        self
    }
    fn header(mut self, name: &str, value: &[u8]) -> Self {
        self.headers.push((name.into(), value.to_vec()));
        self
    }
    fn own_limits(mut self, limits: &[Limit]) -> Self {
        self.key_limits = Some(limits.to_vec());
        self
    }
    fn ask(&self, what: &str) {
        self.asked.borrow_mut().push(what.to_owned());
    }
    fn was_asked(&self, what: &str) -> bool {
        self.asked.borrow().iter().any(|a| a == what)
    }
}

impl Facts for Req {
    fn route_name(&self) -> Option<&str> {
        self.ask("route_name");
        self.route_name.as_deref()
    }
    fn ip(&self) -> Option<&str> {
        self.ask("ip");
        self.ip.as_deref()
    }
    fn consumer(&self) -> Option<&str> {
        self.ask("consumer");
        self.consumer.as_deref()
    }
    fn key_id(&self) -> Option<&str> {
        self.ask("key_id");
        self.key_id.as_deref()
    }
    fn tier(&self) -> Option<&str> {
        self.ask("tier");
        self.tier.as_deref()
    }
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        self.ask(&format!("header {name}"));
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
    }
    fn key_limits(&self) -> Option<&[Limit]> {
        self.ask("key_limits");
        self.key_limits.as_deref()
    }
}

/// Every rule's slots in memory, with a clock; `unavailable` rules fail every take.
struct Store {
    now_ns: u64,
    slots: HashMap<(usize, u32), State>,
    unavailable: Vec<usize>,
    /// Every take asked for: rule, slot, owner.
    taken: Vec<(usize, u32, u64)>,
}

impl Store {
    fn new() -> Self {
        Self { now_ns: T0, slots: HashMap::new(), unavailable: Vec::new(), taken: Vec::new() }
    }
    fn advance_ms(&mut self, ms: u64) {
        self.now_ns += ms * 1_000_000;
    }
}

impl SlotStore for Store {
    fn take(
        &mut self,
        rule: usize,
        slot: u32,
        owner: u64,
        limits: &[Limit],
        class: Class,
    ) -> Result<bucket::Decision, Exhausted> {
        self.taken.push((rule, slot, owner));
        if self.unavailable.contains(&rule) {
            return Err(Exhausted);
        }
        let decision = bucket::take(self.slots.get(&(rule, slot)), owner, limits, class, self.now_ns);
        if let Some(next) = &decision.next {
            self.slots.insert((rule, slot), next.clone());
        }
        Ok(decision)
    }
}

fn config(json: &str) -> Config {
    Config::from_json(json.as_bytes()).unwrap()
}

fn global(rate: u64, per: &str, burst: u64) -> Config {
    config(&format!(
        r#"{{"slots": 64, "rules": [{{"name": "all", "limits": [{{"rate": {rate}, "per": "{per}", "burst": {burst}}}]}}]}}"#
    ))
}

/// A GET of `/`.
fn run<'c>(c: &'c Config, req: &Req, store: &mut Store) -> Decision<'c> {
    decide(c, "/", "GET", req, store)
}

/// How many of `n` requests pass.
fn passed_of(n: usize, c: &Config, req: &Req, store: &mut Store) -> usize {
    (0..n).filter(|_| run(c, req, store).refusal.is_none()).count()
}

/// How often `count` occurs over `n` requests.
fn counted(n: usize, c: &Config, req: &Req, store: &mut Store, count: Count) -> usize {
    (0..n).map(|_| run(c, req, store).counts.iter().filter(|c| **c == count).count()).sum()
}

fn header<'r>(reply: &'r Reply, name: &str) -> Option<&'r str> {
    reply.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
}

const PER_CONSUMER: &str = r#"{"slots": 1024, "rules": [{"name": "c", "by": ["consumer"], "missing": "deny",
    "limits": [{"rate": 1, "per": "hour", "burst": 2}]}]}"#;

fn per_consumer(missing: &str) -> Config {
    config(&PER_CONSUMER.replace(r#""missing": "deny""#, &format!(r#""missing": "{missing}""#)))
}

#[test]
fn allows_exactly_the_burst_then_refuses_until_the_next_token() {
    let c = global(1, "minute", 3);
    let mut store = Store::new();
    for left in [2, 1, 0] {
        let d = run(&c, &Req::new(), &mut store);
        assert_eq!(d.refusal, None);
        assert_eq!(d.counts, [Count::Rule(0, RuleCount::Allowed)]);
        assert_eq!(d.statuses.len(), 1);
        assert_eq!((d.statuses[0].rule, d.statuses[0].limits[0].remaining), ("all", left));
        assert!(d.logs.is_empty());
    }
    let d = run(&c, &Req::new(), &mut store);
    assert_eq!(d.refusal, Some(Refusal::Limited { retry_after_secs: 60 }));
    assert_eq!(d.counts, [Count::Rule(0, RuleCount::Limited)]);
    // A rule without `by` has one bucket, in its one slot.
    assert!(store.taken.iter().all(|(rule, slot, _)| (*rule, *slot) == (0, 0)));
    let headers = response_headers(&d.statuses, c.headers);
    let reply = d.refusal.unwrap().reply("req-4", &d.statuses, headers);
    assert_eq!(reply.status, 429);
    assert_eq!(header(&reply, "retry-after"), Some("60"));
    assert_eq!(header(&reply, "content-type"), Some("application/json"));
    assert_eq!(header(&reply, "ratelimit"), Some(r#""all";r=0;t=60"#));
    let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(body["error"], "rate_limited");
    assert_eq!(body["message"], ERROR_MESSAGE);
    assert_eq!(body["request_id"], "req-4");
}

#[test]
fn tokens_come_back_with_the_stores_clock() {
    let c = global(2, "second", 2);
    let mut store = Store::new();
    assert_eq!(passed_of(10, &c, &Req::new(), &mut store), 2);
    store.advance_ms(500);
    assert_eq!(passed_of(10, &c, &Req::new(), &mut store), 1);
    store.advance_ms(60_000);
    assert_eq!(passed_of(10, &c, &Req::new(), &mut store), 2);
}

#[test]
fn consumers_have_their_own_buckets() {
    let c = config(PER_CONSUMER);
    let mut store = Store::new();
    assert_eq!(passed_of(5, &c, &Req::new().consumer("alice"), &mut store), 2);
    assert_eq!(passed_of(5, &c, &Req::new().consumer("bob"), &mut store), 2);
}

#[test]
fn the_bucket_lives_in_the_slot_of_its_keys_hash() {
    let c = config(
        r#"{"slots": 64, "rules": [{"name": "ip", "by": ["ip"], "limits": [{"rate": 1, "per": "hour"}]}]}"#,
    );
    let mut store = Store::new();
    run(&c, &Req::new().ip("10.0.0.1"), &mut store);
    let key = descriptor::bucket_key("ip", &[Part::Ip], |_| Some(Cow::Borrowed(&b"10.0.0.1"[..]))).unwrap();
    let owner = descriptor::hash64(&key);
    assert_eq!(store.taken, [(0, descriptor::slot(owner, 64), owner)]);
}

#[test]
fn missing_deny_refuses_when_enforced_and_only_counts_in_shadow_mode() {
    let c = config(PER_CONSUMER);
    let mut store = Store::new();
    let d = run(&c, &Req::new(), &mut store);
    assert_eq!(d.refusal, Some(Refusal::Missing));
    assert_eq!(d.counts, [Count::Rule(0, RuleCount::MissingDenied)]);
    assert!(d.statuses.is_empty());
    assert!(store.taken.is_empty(), "no bucket to take from");
    let reply = Refusal::Missing.reply("req-1", &d.statuses, Vec::new());
    assert_eq!(reply.status, 429);
    assert_eq!(header(&reply, "retry-after"), Some("1"));
    let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(body["message"], MISSING_MESSAGE);

    // The refusal ends the request: a later rule takes nothing.
    let then_global =
        PER_CONSUMER.replace("}]}]}", r#"}]}, {"name": "all", "limits": [{"rate": 1, "per": "hour"}]}]}"#);
    let c = config(&then_global);
    let d = run(&c, &Req::new(), &mut store);
    assert_eq!(d.refusal, Some(Refusal::Missing));
    assert!(store.taken.is_empty());

    let shadow =
        config(&PER_CONSUMER.replace(r#""missing": "deny""#, r#""missing": "deny", "mode": "shadow""#));
    let d = run(&shadow, &Req::new(), &mut store);
    assert_eq!(d.refusal, None);
    assert_eq!(d.counts, [Count::Rule(0, RuleCount::MissingDenied)]);
    assert!(store.taken.is_empty());
}

#[test]
fn missing_skip_leaves_the_rule_out() {
    let c = per_consumer("skip");
    let mut store = Store::new();
    assert_eq!(passed_of(5, &c, &Req::new(), &mut store), 5);
    assert_eq!(counted(5, &c, &Req::new(), &mut store, Count::Rule(0, RuleCount::MissingSkipped)), 5);
    assert!(store.taken.is_empty());
    // A consumer still has its own bucket.
    assert_eq!(passed_of(5, &c, &Req::new().consumer("alice"), &mut store), 2);
}

#[test]
fn missing_ip_keys_by_the_client_ip() {
    let c = per_consumer("ip");
    let mut store = Store::new();
    let one = Req::new().ip("10.0.0.1");
    assert_eq!(passed_of(5, &c, &one, &mut store), 2);
    assert_eq!(passed_of(5, &c, &Req::new().ip("10.0.0.2"), &mut store), 2, "another IP, another bucket");
    assert_eq!(counted(1, &c, &one, &mut store, Count::Rule(0, RuleCount::NoClientIp)), 0);
    // Not the bucket of a consumer who happens to be called like the IP.
    assert_eq!(passed_of(5, &c, &Req::new().consumer("10.0.0.1"), &mut store), 2);
}

#[test]
fn requests_without_a_client_ip_share_one_bucket_per_rule() {
    let json = r#"{"slots": 256, "rules": [
        {"name": "ip", "by": ["ip"], "limits": [{"rate": 1, "per": "hour", "burst": 2}]},
        {"name": "consumer", "by": ["consumer"], "limits": [{"rate": 1, "per": "hour", "burst": 3}]}]}"#;
    let c = config(json);
    let mut store = Store::new();
    // No IP: both rules count the request in their no-IP bucket.
    let d = run(&c, &Req::new(), &mut store);
    assert_eq!(d.refusal, None);
    let no_ip = |rule| Count::Rule(rule, RuleCount::NoClientIp);
    assert_eq!(
        d.counts,
        [no_ip(0), Count::Rule(0, RuleCount::Allowed), no_ip(1), Count::Rule(1, RuleCount::Allowed)]
    );
    let headers = response_headers(&d.statuses, Headers { ietf: true, legacy: false });
    assert_eq!(headers[1], ("ratelimit", r#""ip";r=1;t=3600"#.to_owned()));
    let (first, _, ip_owner) = store.taken[0];
    assert_eq!(first, 0);
    assert_eq!(ip_owner, descriptor::hash64(&descriptor::no_ip_key("ip")));
    assert_eq!(store.taken[1].2, descriptor::hash64(&descriptor::no_ip_key("consumer")));
    let mut ip_rule = 1;
    let mut consumer_rule = 1;
    for _ in 0..5 {
        let d = run(&c, &Req::new(), &mut store);
        ip_rule += d.counts.iter().filter(|c| **c == no_ip(0)).count();
        consumer_rule += d.counts.iter().filter(|c| **c == no_ip(1)).count();
    }
    assert_eq!((ip_rule, consumer_rule), (6, 2), "the second request emptied the ip rule's bucket");
    // Requests with an IP keep their own buckets.
    assert_eq!(passed_of(5, &c, &Req::new().ip("203.0.113.5"), &mut store), 2);

    // `skip` still means what it says.
    let skip = config(&json.replace(r#""by": ["ip"],"#, r#""by": ["ip"], "missing": "skip","#));
    let mut store = Store::new();
    let alice = Req::new().consumer("alice");
    assert_eq!(passed_of(5, &skip, &alice, &mut store), 3, "alice's own bucket");
    assert_eq!(counted(5, &skip, &alice, &mut store, Count::Rule(0, RuleCount::MissingSkipped)), 5);
    assert_eq!(counted(5, &skip, &alice, &mut store, no_ip(0)), 0);
}

#[test]
fn a_keys_own_limits_replace_the_rules_for_its_own_buckets_only() {
    let gold = [Limit::new(1, 3600, 5).unwrap()];
    let c = config(PER_CONSUMER);
    let mut store = Store::new();
    let req = Req::new().consumer("gold").own_limits(&gold);
    assert_eq!(passed_of(10, &c, &req, &mut store), 5);
    let by_key = config(&PER_CONSUMER.replace(r#"["consumer"]"#, r#"["key_id"]"#));
    let req = Req::new().key_id("k-1").own_limits(&gold);
    assert_eq!(passed_of(10, &by_key, &req, &mut store), 5);
    // Without usable own limits, the rule's.
    assert_eq!(passed_of(10, &c, &Req::new().consumer("plain"), &mut store), 2);

    // Unless the rule says so: then they are not even asked for.
    let own_off =
        config(&PER_CONSUMER.replace(r#""missing": "deny""#, r#""missing": "deny", "key_limits": false"#));
    let req = Req::new().consumer("gold2").own_limits(&gold);
    assert_eq!(passed_of(10, &own_off, &req, &mut store), 2);
    assert!(!req.was_asked("key_limits"));
    // A bucket that is not the key's (here: the client's IP) keeps the rule's limits.
    let by_ip = config(&PER_CONSUMER.replace(r#"["consumer"]"#, r#"["ip"]"#));
    let req = Req::new().ip("10.0.0.1").own_limits(&gold);
    assert_eq!(passed_of(10, &by_ip, &req, &mut store), 2);
    assert!(!req.was_asked("key_limits"));
}

const CRITICAL: &str = r#"{"slots": 64, "rules": [{"name": "all", "limits": [{"rate": 1, "per": "hour", "burst": 10}],
    "priority": {"reserve_percent": 30, "critical": {"header": {"name": "x-priority", "value": "critical"}, "tiers": ["gold"]}}}]}"#;

#[test]
fn critical_requests_may_take_the_reserve() {
    let c = config(CRITICAL);
    let mut store = Store::new();
    let critical = Req::new().header("x-priority", b"critical");
    assert_eq!(passed_of(20, &c, &Req::new(), &mut store), 7);
    assert_eq!(passed_of(2, &c, &critical, &mut store), 2);
    assert_eq!(passed_of(5, &c, &Req::new().tier("gold"), &mut store), 1);
    assert_eq!(passed_of(5, &c, &critical, &mut store), 0);
    // A header value is compared as bytes, trimmed.
    let mut store = Store::new();
    assert_eq!(passed_of(20, &c, &Req::new().header("x-priority", b" critical "), &mut store), 10);
    let mut store = Store::new();
    assert_eq!(passed_of(20, &c, &Req::new().header("x-priority", b"Critical"), &mut store), 7);
}

#[test]
fn only_the_facts_a_matching_rule_needs_are_asked_for() {
    // No priority, no `by`: nothing beyond the path and method.
    let c = global(1, "hour", 5);
    let req = Req::new().route("main").ip("10.0.0.1").consumer("alice").tier("gold");
    run(&c, &req, &mut Store::new());
    assert!(req.asked.borrow().is_empty(), "{:?}", req.asked.borrow());
    // The critical header and tier, not the route name nor the caller.
    let c = config(CRITICAL);
    let req = Req::new().route("main").consumer("alice");
    run(&c, &req, &mut Store::new());
    assert_eq!(*req.asked.borrow(), ["header x-priority", "tier"]);
    // A rule that does not match asks nothing of its own.
    let c = config(
        r#"{"slots": 64, "rules": [{"name": "api", "match": {"path_prefix": "/api"}, "by": ["consumer"],
        "limits": [{"rate": 1, "per": "hour"}]}]}"#,
    );
    let req = Req::new().consumer("alice");
    decide(&c, "/web", "GET", &req, &mut Store::new());
    assert!(req.asked.borrow().is_empty());
    decide(&c, "/api/x", "GET", &req, &mut Store::new());
    assert_eq!(*req.asked.borrow(), ["consumer", "key_limits"]);
}

#[test]
fn buckets_by_route_and_critical_routes_use_the_route_name() {
    let c = config(
        r#"{"slots": 64, "rules": [
        {"name": "per-route", "by": ["route"], "missing": "deny", "limits": [{"rate": 1, "per": "hour", "burst": 10}],
         "priority": {"reserve_percent": 30, "critical": {"route_names": ["health"]}}}]}"#,
    );
    let mut store = Store::new();
    assert_eq!(passed_of(20, &c, &Req::new().route("api"), &mut store), 7);
    assert_eq!(passed_of(20, &c, &Req::new().route("web"), &mut store), 7, "another route, another bucket");
    let health = Req::new().route("health");
    assert_eq!(passed_of(20, &c, &health, &mut store), 10, "the critical route takes the whole bucket");
    assert_eq!(counted(1, &c, &health, &mut store, Count::Rule(0, RuleCount::MissingDenied)), 0);
    assert_eq!(run(&c, &Req::new(), &mut store).refusal, Some(Refusal::Missing), "no route name");
}

#[test]
fn rules_match_routes_paths_and_methods() {
    let c = config(
        r#"{"slots": 256, "rules": [
        {"name": "api", "match": {"path_prefix": "/api", "route_name": "main"}, "limits": [{"rate": 1, "per": "hour"}]},
        {"name": "post", "match": {"methods": ["POST"]}, "limits": [{"rate": 1, "per": "hour"}]}]}"#,
    );
    assert!(c.reads_path() && c.reads_method() && c.reads_route_name());
    let mut store = Store::new();
    let main = Req::new().route("main");
    let api = (0..3).filter(|_| decide(&c, "/api/x", "GET", &main, &mut store).refusal.is_none()).count();
    assert_eq!(api, 1);
    let d = decide(&c, "/web", "GET", &main, &mut store);
    assert_eq!((d.refusal, d.counts.len(), d.statuses.len()), (None, 0, 0), "no rule applies");
    let other = Req::new().route("other");
    assert_eq!(decide(&c, "/api/x", "GET", &other, &mut store).refusal, None, "another route");
    let d = decide(&c, "/web", "POST", &main, &mut store);
    assert_eq!(d.counts, [Count::Rule(1, RuleCount::Allowed)]);
    assert_eq!(decide(&c, "/web", "post", &main, &mut store).counts, [Count::Rule(1, RuleCount::Limited)]);
    // Without a rule matching by route, the route name is never asked for.
    let c = global(1, "hour", 1);
    assert!(!c.reads_path() && !c.reads_method() && !c.reads_route_name());
    let req = Req::new().route("main");
    run(&c, &req, &mut Store::new());
    assert!(!req.was_asked("route_name"));
}

#[test]
fn header_values_are_keyed_by_their_exact_bytes() {
    let c = config(
        r#"{"slots": 1024, "rules": [{"name": "h", "by": [{"header": "x-client"}], "missing": "deny",
        "limits": [{"rate": 1, "per": "hour"}]}]}"#,
    );
    let mut store = Store::new();
    let passes =
        |v: &[u8], store: &mut Store| run(&c, &Req::new().header("x-client", v), store).refusal.is_none();
    assert!(passes(b"\xff\xfe", &mut store));
    assert!(passes(b"\xfe\xff", &mut store));
    assert!(passes("\u{fffd}\u{fffd}".as_bytes(), &mut store));
    assert!(!passes(b"\xff\xfe", &mut store));
    assert!(!passes(b"\xfe\xff", &mut store));
    assert!(!passes(b"", &mut store), "an empty value is a missing one");
}

#[test]
fn an_unavailable_store_follows_failure_mode() {
    let two_rules = |mode: &str| {
        config(&format!(
            r#"{{"slots": 64, "failure_mode": "{mode}", "rules": [
            {{"name": "a", "limits": [{{"rate": 1, "per": "hour", "burst": 5}}]}},
            {{"name": "b", "limits": [{{"rate": 1, "per": "hour", "burst": 5}}]}}]}}"#
        ))
    };
    // allow: counted, and the next rule still applies.
    let c = two_rules("allow");
    let mut store = Store::new();
    store.unavailable = vec![0];
    let d = run(&c, &Req::new(), &mut store);
    assert_eq!(d.refusal, None);
    assert_eq!(
        d.counts,
        [
            Count::Rule(0, RuleCount::CasExhausted),
            Count::FailureModeAllowed,
            Count::Rule(1, RuleCount::Allowed)
        ]
    );
    assert_eq!(d.statuses.iter().map(|s| s.rule).collect::<Vec<_>>(), ["b"]);

    // deny: refused for a second, and the request ends there.
    let c = two_rules("deny");
    let mut store = Store::new();
    store.unavailable = vec![0];
    let d = run(&c, &Req::new(), &mut store);
    assert_eq!(d.refusal, Some(Refusal::Limited { retry_after_secs: 1 }));
    assert_eq!(d.counts, [Count::Rule(0, RuleCount::CasExhausted), Count::FailureModeDenied]);
    assert_eq!(store.taken.len(), 1, "rule b is not taken from");
    let reply = d.refusal.unwrap().reply("req-1", &d.statuses, Vec::new());
    assert_eq!((reply.status, header(&reply, "retry-after")), (429, Some("1")));
    // A rule the request passed before still holds Retry-After to its own wait.
    store.unavailable = vec![1];
    let d = run(&c, &Req::new(), &mut store);
    assert_eq!(d.counts[..2], [Count::Rule(0, RuleCount::Allowed), Count::Rule(1, RuleCount::CasExhausted)]);
    assert_eq!(d.refusal, Some(Refusal::Limited { retry_after_secs: 1 }));
}

#[test]
fn shadow_rules_count_and_log_but_never_refuse_nor_announce() {
    let c = config(
        r#"{"slots": 64, "rules": [
        {"name": "all", "mode": "shadow", "limits": [{"rate": 1, "per": "hour", "burst": 2}]},
        {"name": "enforced", "limits": [{"rate": 1, "per": "hour", "burst": 100}]}]}"#,
    );
    let mut store = Store::new();
    let mut counts = Vec::new();
    let mut logs = Vec::new();
    for _ in 0..5 {
        let d = run(&c, &Req::new(), &mut store);
        assert_eq!(d.refusal, None);
        assert_eq!(
            d.statuses.iter().map(|s| s.rule).collect::<Vec<_>>(),
            ["enforced"],
            "only enforced rules"
        );
        counts.extend(d.counts);
        logs.extend(d.logs);
    }
    let of = |c: Count| counts.iter().filter(|x| **x == c).count();
    assert_eq!(of(Count::Rule(0, RuleCount::Allowed)), 2);
    assert_eq!(of(Count::Rule(0, RuleCount::ShadowLimited)), 3);
    assert_eq!(of(Count::Rule(1, RuleCount::Allowed)), 5, "a shadow refusal does not end the request");
    assert_eq!(logs, vec!["rate-limit: rule `all` would limit this request (shadow mode)".to_owned(); 3]);
}

#[test]
fn the_first_refusal_ends_the_request_and_retry_after_waits_for_every_emptied_limit() {
    let c = config(
        r#"{"slots": 64, "rules": [
        {"name": "hourly", "limits": [{"rate": 1, "per": "hour", "burst": 2}]},
        {"name": "per-second", "limits": [{"rate": 1, "per": "second"}]},
        {"name": "never-reached", "limits": [{"rate": 1, "per": "hour"}]}]}"#,
    );
    let mut store = Store::new();
    assert_eq!(run(&c, &Req::new(), &mut store).refusal, None);
    store.taken.clear();
    // The hourly rule takes its last token, then the per-second rule refuses.
    let d = run(&c, &Req::new(), &mut store);
    assert_eq!(d.refusal, Some(Refusal::Limited { retry_after_secs: 1 }));
    assert_eq!(d.counts, [Count::Rule(0, RuleCount::Allowed), Count::Rule(1, RuleCount::Limited)]);
    assert_eq!(store.taken.iter().map(|t| t.0).collect::<Vec<_>>(), [0, 1]);
    let headers = response_headers(&d.statuses, c.headers);
    let reply = d.refusal.unwrap().reply("r", &d.statuses, headers);
    assert_eq!(header(&reply, "ratelimit"), Some(r#""hourly";r=0;t=3600"#));
    assert_eq!(header(&reply, "retry-after"), Some("3600"), "a second later the hourly rule refuses");
}

#[test]
fn buckets_sharing_a_slot_are_counted_as_collisions() {
    let c = config(
        r#"{"slots": 64, "rules": [{"name": "h", "by": [{"header": "x-client"}], "slots": 1,
        "limits": [{"rate": 1, "per": "second", "burst": 1000}]}]}"#,
    );
    let mut store = Store::new();
    let d = run(&c, &Req::new().header("x-client", b"a"), &mut store);
    assert_eq!(d.counts, [Count::Rule(0, RuleCount::Allowed)]);
    let d = run(&c, &Req::new().header("x-client", b"b"), &mut store);
    assert_eq!(d.counts, [Count::Rule(0, RuleCount::Collisions), Count::Rule(0, RuleCount::Allowed)]);
}

#[test]
fn fallback_rules_apply_only_through_decide_fallback_and_are_enforced_there() {
    let c = config(
        r#"{"rules": [
            {"name": "local", "limits": [{"rate": 100, "per": "second"}]},
            {"name": "fallback", "mode": "fallback", "limits": [{"rate": 2, "per": "hour"}]}],
          "global": {"cluster": "rls", "domain": "gw", "failure_mode": "local_fallback",
                     "descriptors": [[{"key": "generic_key", "value": "all"}]]}}"#,
    );
    let req = Req::new();
    let mut store = Store::new();
    // The normal pass never touches the fallback rule.
    for _ in 0..5 {
        let d = run(&c, &req, &mut store);
        assert_eq!(d.refusal, None);
        assert_eq!(d.counts, [Count::Rule(0, RuleCount::Allowed)]);
    }
    // The fallback pass applies only the fallback rule, enforced.
    let fallback = |store: &mut Store| decide_fallback(&c, "/", "GET", &req, store);
    assert_eq!(fallback(&mut store).counts, [Count::Rule(1, RuleCount::Allowed)]);
    assert_eq!(fallback(&mut store).refusal, None);
    let d = fallback(&mut store);
    assert!(matches!(d.refusal, Some(Refusal::Limited { .. })));
    assert_eq!(d.statuses.len(), 1);
    assert_eq!(d.statuses[0].rule, "fallback");
}
