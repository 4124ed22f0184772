//! The pipeline's machinery with scripted stages (what each stage does is in the filters' own
//! tests), and the real filters as stages on the mock host.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use prost::Message;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::Action;
use tollgate_core::identity::PROP_CONSUMER;
use tollgate_core::key;
use tollgate_host::Host;
use tollgate_host::mock::MockHost;
use tollgate_proto::v1;

use super::{Answer, PipelineHttp, PipelineRoot, Stage, StageContext, StageRoot, parse};
use crate::stage_host::StageHost;

const ROOT: u32 = 1;

/// What a scripted stage does with request headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    /// Reads every header, marks the request `x-stage-N: seen`, lets it through.
    Pass,
    /// Pauses it and looks something up (one call for every request waiting, made by the first);
    /// the answer resumes every request waiting.
    Hold,
    /// Answers 403.
    Deny,
    /// Publishes the consumer (filter state) and lets it through.
    Publish,
    /// Reads the consumer and writes it to `x-seen-consumer`.
    ReadConsumer,
}

type Log = Rc<RefCell<Vec<String>>>;

struct Script {
    host: Rc<StageHost<MockHost>>,
    n: usize,
    act: Act,
    log: Log,
    /// The requests this stage holds (shared by the stage's contexts, like a worker).
    waiting: Rc<RefCell<Vec<u32>>>,
}

impl Script {
    fn resume_all(&self) {
        let waiting: Vec<u32> = self.waiting.borrow_mut().drain(..).collect();
        for id in waiting {
            if self.host.set_effective_context(id) {
                self.log.borrow_mut().push(format!("{} resumes {id}", self.n));
                self.host.resume_request();
            }
        }
    }

    fn lookup(&self) -> u32 {
        self.host.grpc_call("svc", "s", "Lookup", &[], b"", Duration::from_secs(1)).unwrap()
    }
}

struct ScriptRoot(Rc<Script>);

impl StageRoot for ScriptRoot {
    fn configure(&mut self, _size: usize) -> bool {
        true
    }

    fn tick(&mut self) {
        // Asks again for the requests left waiting (their call went away with its request).
        if !self.0.waiting.borrow().is_empty() {
            self.0.lookup();
        }
    }

    fn answer(&mut self, _answer: Answer) {
        self.0.resume_all();
    }

    fn http_context(&self, context_id: u32) -> Option<Box<dyn StageContext>> {
        Some(Box::new(ScriptHttp { s: Rc::clone(&self.0), id: context_id }))
    }
}

struct ScriptHttp {
    s: Rc<Script>,
    id: u32,
}

impl Context for ScriptHttp {
    fn on_grpc_call_response(&mut self, _token: u32, _status: u32, _size: usize) {
        self.s.log.borrow_mut().push(format!("{} answer at {}", self.s.n, self.id));
        self.s.resume_all();
    }

    fn on_done(&mut self) -> bool {
        self.s.waiting.borrow_mut().retain(|&id| id != self.id);
        true
    }
}

impl HttpContext for ScriptHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let s = &*self.s;
        s.log.borrow_mut().push(format!("{} request {}", s.n, self.id));
        let host = &*s.host;
        match s.act {
            Act::Pass => {
                let headers = host.request_headers();
                let marks = headers.iter().filter(|(n, _)| n.starts_with("x-stage-")).count();
                host.set_request_header(
                    &format!("x-stage-{}", s.n),
                    Some(format!("seen after {marks}").as_bytes()),
                );
                Action::Continue
            }
            Act::Hold => {
                let first = s.waiting.borrow().is_empty();
                s.waiting.borrow_mut().push(self.id);
                if first {
                    s.lookup();
                }
                Action::Pause
            }
            Act::Deny => {
                host.send_response(403, &[], b"no");
                Action::Pause
            }
            Act::Publish => {
                host.set_property(&[PROP_CONSUMER], b"alice");
                Action::Continue
            }
            Act::ReadConsumer => {
                let consumer = host.property(&[PROP_CONSUMER]).unwrap_or_default();
                host.set_request_header("x-seen-consumer", Some(&consumer));
                Action::Continue
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.s.log.borrow_mut().push(format!("{} response {}", self.s.n, self.id));
        Action::Continue
    }
}

struct Drive {
    host: Rc<MockHost>,
    root: PipelineRoot<MockHost>,
    contexts: HashMap<u32, PipelineHttp<MockHost>>,
    next: u32,
    log: Log,
}

impl Drive {
    fn new(acts: &[Act]) -> Self {
        let host = MockHost::new();
        let log = Log::default();
        let root = PipelineRoot::with_stages(Rc::clone(&host), ROOT, |stage_host| {
            acts.iter()
                .enumerate()
                .map(|(n, &act)| {
                    let script = Script {
                        host: Rc::clone(&stage_host),
                        n,
                        act,
                        log: Rc::clone(&log),
                        waiting: Rc::default(),
                    };
                    (Box::new(ScriptRoot(Rc::new(script))) as Box<dyn StageRoot>, false)
                })
                .collect()
        });
        Self { host, root, contexts: HashMap::new(), next: 100, log }
    }

    fn request(&mut self) -> u32 {
        self.next += 1;
        let id = self.next;
        self.contexts.insert(id, self.root.context(id).unwrap());
        self.host.with_header(id, ":path", "/hello");
        self.host.with_header(id, "x-stage-0", "forged");
        id
    }

    fn context(&mut self, id: u32) -> &mut PipelineHttp<MockHost> {
        self.host.enter(id);
        self.contexts.get_mut(&id).unwrap()
    }

    fn headers(&mut self, id: u32) -> Action {
        self.context(id).on_http_request_headers(2, true)
    }

    /// Delivers the answer to call `token` to context `to`, as the proxy does.
    fn answer(&mut self, to: u32, token: u32) {
        if to == ROOT {
            self.host.enter(ROOT);
            self.root.on_grpc_call_response(token, 0, 0);
        } else {
            self.context(to).on_grpc_call_response(token, 0, 0);
        }
    }

    fn done(&mut self, id: u32) {
        self.context(id).on_done();
        self.contexts.remove(&id);
        self.host.destroy(id);
    }

    fn log(&self) -> Vec<String> {
        self.log.borrow().clone()
    }

    fn last_call(&self) -> u32 {
        self.host.calls().last().unwrap().token
    }
}

#[test]
fn stages_run_in_order_and_read_the_headers_from_the_proxy_once() {
    let mut d = Drive::new(&[Act::Pass, Act::Pass, Act::Pass]);
    let id = d.request();
    assert_eq!(d.headers(id), Action::Continue);
    // Each stage saw what the stages before it set (stage 0 replaced the forged mark).
    assert_eq!(d.host.header(id, "x-stage-0").as_deref(), Some("seen after 1"));
    assert_eq!(d.host.header(id, "x-stage-1").as_deref(), Some("seen after 1"));
    assert_eq!(d.host.header(id, "x-stage-2").as_deref(), Some("seen after 2"));
    assert_eq!(d.host.header_list_reads(), 1, "one read of every header serves every stage");
    assert_eq!(d.host.resumed(id), 0);

    // Response headers go through the stages in reverse order, as Envoy runs encoders.
    d.context(id).on_http_response_headers(1, false);
    let log = d.log();
    let responses: Vec<&String> = log.iter().filter(|l| l.contains("response")).collect();
    assert_eq!(responses, ["2 response 101", "1 response 101", "0 response 101"]);
}

#[test]
fn a_new_callback_reads_the_headers_again() {
    let mut d = Drive::new(&[Act::Pass]);
    let id = d.request();
    d.headers(id);
    let other = d.request();
    d.headers(other);
    assert_eq!(d.host.header_list_reads(), 2, "a header list is never kept past its callback");
}

#[test]
fn a_paused_stage_holds_the_later_ones_until_its_answer() {
    let mut d = Drive::new(&[Act::Hold, Act::Pass]);
    let id = d.request();
    assert_eq!(d.headers(id), Action::Pause);
    assert!(!d.log().contains(&"1 request 101".to_owned()), "no later stage before the answer");
    assert_eq!(d.host.resumed(id), 0, "the stage's own resume is the pipeline's, not the proxy's");

    let token = d.last_call();
    d.answer(id, token);
    assert!(d.log().contains(&"1 request 101".to_owned()));
    assert_eq!(d.host.header(id, "x-stage-1").as_deref(), Some("seen after 1"));
    assert_eq!(d.host.resumed(id), 1, "resumed once, after the last stage let it through");
}

#[test]
fn an_answer_that_resumes_other_requests_runs_their_later_stages_too() {
    let mut d = Drive::new(&[Act::Hold, Act::Pass]);
    let leader = d.request();
    let waiter = d.request();
    d.headers(leader);
    d.headers(waiter);
    assert_eq!(d.host.calls().len(), 1, "one call for both");
    let token = d.last_call();
    d.answer(leader, token);
    for id in [leader, waiter] {
        assert_eq!(d.host.header(id, "x-stage-1").as_deref(), Some("seen after 1"), "request {id}");
        assert_eq!(d.host.resumed(id), 1, "request {id}");
    }
}

#[test]
fn an_answer_the_proxy_hands_to_the_root_context_reaches_the_request() {
    // A call a stage made while the root context dispatched is answered to the root context.
    let mut d = Drive::new(&[Act::Hold, Act::Pass]);
    let leader = d.request();
    let waiter = d.request();
    d.headers(leader);
    d.headers(waiter);
    d.done(leader); // its call goes with it; the root context asks again on the tick
    assert_eq!(d.host.resumed(waiter), 0);
    d.host.enter(ROOT);
    d.root.on_tick();
    let token = d.last_call();
    assert_eq!(d.host.calls().len(), 2);
    d.answer(ROOT, token);
    assert_eq!(d.host.header(waiter, "x-stage-1").as_deref(), Some("seen after 1"));
    assert_eq!(d.host.resumed(waiter), 1);
}

#[test]
fn a_reply_stops_the_later_stages_and_the_reply_goes_back_through_every_stage() {
    let mut d = Drive::new(&[Act::Pass, Act::Deny, Act::Pass]);
    let id = d.request();
    assert_eq!(d.headers(id), Action::Pause);
    assert_eq!(d.host.reply(id).unwrap().status, 403);
    assert!(!d.log().contains(&"2 request 101".to_owned()));
    assert_eq!(d.host.header(id, "x-stage-2"), None);
    d.context(id).on_http_response_headers(0, false);
    assert_eq!(d.log().iter().filter(|l| l.contains("response")).count(), 3);
    assert_eq!(d.host.resumed(id), 0);
}

#[test]
fn a_request_refused_while_it_waited_gets_no_later_stage() {
    // The stage that held it answers it (e.g. a revoked key) from another request's callback.
    let mut d = Drive::new(&[Act::Hold, Act::Pass]);
    let leader = d.request();
    let waiter = d.request();
    d.headers(leader);
    d.headers(waiter);
    // The waiter gets a reply and a resume, as a filter that replies to a waiter may do.
    d.host.enter(waiter);
    let token = d.last_call();
    // Simulate: the reply to the waiter goes out from the leader's callback.
    {
        let pipeline_host = Rc::clone(&d.root.shared.host);
        pipeline_host.enter(waiter);
        pipeline_host.send_response(401, &[], b"revoked");
    }
    d.answer(leader, token);
    assert_eq!(d.host.header(leader, "x-stage-1").as_deref(), Some("seen after 1"));
    assert_eq!(d.host.header(waiter, "x-stage-1"), None, "no stage runs after a reply");
    assert_eq!(d.host.resumed(waiter), 0);
}

#[test]
fn a_request_gone_while_it_waited_is_never_resumed() {
    let mut d = Drive::new(&[Act::Hold, Act::Pass]);
    let leader = d.request();
    let waiter = d.request();
    d.headers(leader);
    d.headers(waiter);
    d.done(waiter);
    let token = d.last_call();
    d.answer(leader, token);
    assert_eq!(d.host.resumed(leader), 1);
    assert_eq!(d.host.resumed(waiter), 0);
    assert!(d.root.shared.flows.borrow().get(&waiter).is_none(), "its flow is forgotten");
}

#[test]
fn published_identity_is_read_by_later_stages_without_a_property_read() {
    let mut d = Drive::new(&[Act::Publish, Act::ReadConsumer]);
    let id = d.request();
    assert_eq!(d.headers(id), Action::Continue);
    assert_eq!(d.host.header(id, "x-seen-consumer").as_deref(), Some("alice"));
    assert_eq!(
        d.host.request_property(id, &[PROP_CONSUMER]).as_deref(),
        Some(&b"alice"[..]),
        "still published"
    );
    assert_eq!(d.host.property_reads(), 0);
}

#[test]
fn identity_published_before_the_pipeline_is_read_from_the_proxy_once() {
    let mut d = Drive::new(&[Act::ReadConsumer, Act::ReadConsumer]);
    let id = d.request();
    d.host.with_request_property(id, &[PROP_CONSUMER], b"bob");
    d.headers(id);
    assert_eq!(d.host.header(id, "x-seen-consumer").as_deref(), Some("bob"));
    assert_eq!(d.host.property_reads(), 1);
}

#[test]
fn the_kept_header_list_follows_every_edit() {
    let host = MockHost::new();
    let stage_host = StageHost::new(Rc::clone(&host));
    host.enter(7);
    host.with_header(7, "x-a", "1");
    host.with_header_line(7, "x-b", "1");
    host.with_header_line(7, "x-b", "2");
    stage_host.enter(7);
    assert_eq!(stage_host.request_headers().len(), 3);
    stage_host.set_request_header("X-B", None);
    stage_host.add_request_header("x-c", b"3");
    stage_host.set_request_header("x-a", Some(b"9"));
    assert!(!stage_host.set_request_header("x-d", Some(b"bad\r\nvalue")));
    let kept = stage_host.request_headers();
    assert_eq!(host.header_list_reads(), 1);
    let mut kept: Vec<(String, Vec<u8>)> = kept;
    kept.sort();
    let mut real = host.request_headers();
    real.sort();
    assert_eq!(kept, real, "what is kept is what the proxy holds");
    assert_eq!(stage_host.request_header_bytes("X-A").as_deref(), Some(&b"9"[..]));
    // Acting for another request drops the list.
    host.with_header(8, "x-a", "other");
    assert!(stage_host.set_effective_context(8));
    assert_eq!(stage_host.request_header("x-a").as_deref(), Some("other"));
}

#[test]
fn configuration_errors_name_the_field() {
    let cases = [
        (r#"{}"#, "`<root>`"),
        (r#"{"stages": []}"#, "`stages`"),
        (r#"{"stages": [{"filter": "nope"}]}"#, "`stages[0].filter`"),
        (r#"{"stages": [{"filter": "request_signing"}]}"#, "not a stage"),
        (r#"{"stages": [{"filter": "transform"}, {"filter": "rate_limit"}]}"#, "only be the last"),
        (r#"{"stages": [{"filter": "key_auth", "extra": 1}]}"#, "`stages[0].extra`"),
    ];
    for (config, expected) in cases {
        let e = parse(config.as_bytes()).unwrap_err().to_string();
        assert!(e.starts_with("invalid pipeline config: "), "{config}: {e}");
        assert!(e.contains(expected), "{config}: {e}");
    }
    let ok = parse(br#"{"stages": [{"filter": "rate_limit", "config": {"a": 1}}, {"filter": "transform"}]}"#)
        .unwrap();
    assert_eq!(ok, vec![(Stage::RateLimit, br#"{"a":1}"#.to_vec()), (Stage::Transform, b"{}".to_vec())]);
}

const KEY_AUTH: &str = r#"{"key_service": {"cluster": "keyd", "token": "tgd_test", "timeout": "200ms"},
  "sources": [{"header": "x-api-key"}], "cache": {"ttl": "60s", "slots": 64}}"#;
const RATE_LIMIT: &str = r#"{"slots": 64, "rules": [{"name": "per-consumer", "by": ["consumer"],
  "limits": [{"rate": 2, "per": "hour", "burst": 2}]}]}"#;
const TRANSFORM: &str = r#"{"rules": [{"name": "tag", "match": {"path_prefix": "/"},
  "request": {"headers": [{"op": "set", "name": "x-tagged", "value": "{identity.consumer_id}"}]}}]}"#;

fn real_pipeline(host: &Rc<MockHost>) -> PipelineRoot<MockHost> {
    let config = format!(
        r#"{{"stages": [{{"filter": "key_auth", "config": {KEY_AUTH}}}, {{"filter": "rate_limit", "config": {RATE_LIMIT}}}, {{"filter": "transform", "config": {TRANSFORM}}}]}}"#
    );
    host.with_configuration(&config);
    host.enter(ROOT);
    let mut root = PipelineRoot::new(Rc::clone(host), ROOT);
    assert!(root.on_configure(config.len()), "{:?}", host.logs());
    root
}

#[test]
fn the_real_filters_run_as_stages() {
    let host = MockHost::new();
    let root = real_pipeline(&host);
    assert!(host.tick_period().is_some(), "key-auth's tick is the pipeline's");
    let entropy: Vec<u8> = (0..64u8).collect();
    let k = key::key_from_entropy(&entropy).unwrap();
    let answer = v1::VerifyKeyResponse {
        result: v1::VerifyResult::Valid as i32,
        key_id: "key_1".into(),
        consumer_id: "alice".into(),
        scopes: vec![],
        rate_limit: None,
        expires_at: 0,
        display_prefix: "tgk_abc".into(),
        feed_seq: 1,
        previous_secret: false,
    };
    let mut statuses = Vec::new();
    for (n, id) in (201..205u32).enumerate() {
        let mut context = root.context(id).unwrap();
        host.with_header(id, ":path", "/hello");
        host.with_header(id, ":method", "GET");
        host.with_header(id, "x-api-key", &k);
        host.enter(id);
        let action = context.on_http_request_headers(3, true);
        if n == 0 {
            // The first looks the key up; the answer lets it through the later stages.
            assert_eq!(action, Action::Pause);
            let call = host.calls().last().unwrap().clone();
            assert_eq!(call.method, "VerifyKey");
            host.set_grpc_response(Some(answer.encode_to_vec()), None);
            context.on_grpc_call_response(call.token, 0, answer.encoded_len());
            assert_eq!(host.resumed(id), 1);
        } else if n < 2 {
            assert_eq!(action, Action::Continue);
        }
        statuses.push(host.reply(id).map(|r| r.status));
        if host.reply(id).is_none() {
            assert_eq!(host.header(id, "x-tagged").as_deref(), Some("alice"), "request {n}");
            assert_eq!(host.header(id, "x-tollgate-consumer-id").as_deref(), Some("alice"));
        }
        host.enter(id);
        context.on_http_response_headers(2, false);
        context.on_done();
    }
    // Two per hour for alice: the third and fourth are limited.
    assert_eq!(statuses, [None, None, Some(429), Some(429)]);
    assert_eq!(host.header_list_reads(), 4 + 1, "one header read per request, and one after the answer");
}

#[test]
fn a_stage_refusing_its_configuration_refuses_the_pipeline() {
    let host = MockHost::new();
    let config = r#"{"stages": [{"filter": "key_auth", "config": {"key_service": {}}}]}"#;
    host.with_configuration(config);
    host.enter(ROOT);
    let mut root = PipelineRoot::new(Rc::clone(&host), ROOT);
    assert!(!root.on_configure(config.len()));
    let logs = host.logs();
    assert!(logs.iter().any(|(_, m)| m.contains("invalid key-auth config")), "{logs:?}");
    assert!(logs.iter().any(|(_, m)| m.contains("`stages[0].config`")), "{logs:?}");
}

#[test]
fn a_stage_releases_only_a_request_it_holds() {
    let mut d = Drive::new(&[Act::Hold, Act::Pass, Act::Hold]);
    let id = d.request();
    assert_eq!(d.headers(id), Action::Pause);
    // Stage 2 "resumes" the request that stage 0 holds: nothing happens.
    let shared = Rc::clone(&d.root.shared);
    d.host.enter(ROOT);
    shared.host.enter(ROOT);
    shared.host.running(2);
    assert!(shared.host.set_effective_context(id));
    shared.host.resume_request();
    shared.settle(ROOT);
    assert!(!d.log().contains(&format!("1 request {id}")), "{:?}", d.log());
    assert_eq!(d.host.resumed(id), 0);
    // Stage 0's own answer releases it; it then waits at stage 2.
    let token = d.last_call();
    d.answer(id, token);
    assert!(d.log().contains(&format!("1 request {id}")));
    assert_eq!(d.host.resumed(id), 0, "held again by stage 2");
}
