//! The per-request context: read the request's facts as the rules ask for them, let
//! [`tollgate_core::rate_limit::policy::decide`] apply the rules, then carry out its decision —
//! counters, log lines, the 429 reply or the headers of the response.

use std::cell::OnceCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use tollgate_core::error::Reply;
use tollgate_core::identity;
use tollgate_core::rate_limit::bucket::{self, Class, Limit};
use tollgate_core::rate_limit::config::GlobalFailureMode;
use tollgate_core::rate_limit::config::compile_key_limits;
use tollgate_core::rate_limit::global;
use tollgate_core::rate_limit::policy::{self, Count, Exhausted, Refusal, RuleCount, SlotStore};
use tollgate_core::rate_limit::{self as rl, RuleStatus, descriptor};
use tollgate_core::route;
use tollgate_host::{Host, LogLevel, attributes};

use crate::rls;
use crate::store::Slots;
use crate::worker::{Stat, Worker};

pub struct RateLimitHttp<H: Host> {
    host: Rc<H>,
    worker: Rc<Worker>,
    /// Headers to add to the response once it comes.
    pending: Vec<(&'static str, String)>,
    /// The call to the rate-limit service this request waits for.
    call: Option<Pending>,
}

/// A rule's name and how its limits stood, kept across the call to the service.
type OwnedStatus = (String, Vec<bucket::LimitStatus>);

/// A request waiting for the rate-limit service: what the local rules said, and the facts the
/// `fallback` rules need if the service cannot answer.
struct Pending {
    token: u32,
    local: Vec<OwnedStatus>,
    /// The local rules let it through in their failure mode (counted as such).
    failure_mode: bool,
    path: String,
    method: String,
}

/// Pass (with what the response needs) or refuse (with the reply).
enum Verdict<T> {
    Pass(T),
    Refuse(Reply),
}

fn local_statuses(local: &[OwnedStatus]) -> Vec<RuleStatus<'_>> {
    local.iter().map(|(rule, limits)| RuleStatus { rule, limits: limits.clone() }).collect()
}

/// The rate-limit headers of the local rules' and the service's limits together.
fn headers_of(
    config: &tollgate_core::rate_limit::config::Config,
    local: &[OwnedStatus],
    service: &[(String, bucket::LimitStatus)],
) -> Vec<(&'static str, String)> {
    let mut all = local_statuses(local);
    all.extend(global::rule_statuses(service));
    rl::response_headers(&all, config.headers)
}

fn send_refusal<H: Host>(host: &H, reply: &Reply) {
    tollgate_host::send_reply(host, reply);
}

/// What the request says, read from the host at most once and only when a rule needs it.
struct HostFacts<'h, H: Host> {
    host: &'h H,
    forwarded_for_hop: Option<u8>,
    route_name: OnceCell<Option<String>>,
    ip: OnceCell<Option<String>>,
    consumer: OnceCell<Option<String>>,
    key_id: OnceCell<Option<String>>,
    tier: OnceCell<Option<String>>,
    key_limits: OnceCell<Option<Vec<Limit>>>,
}

fn text(bytes: Option<Vec<u8>>) -> Option<String> {
    bytes.and_then(|b| String::from_utf8(b).ok()).filter(|s| !s.is_empty())
}

impl<'h, H: Host> HostFacts<'h, H> {
    fn new(host: &'h H, forwarded_for_hop: Option<u8>) -> Self {
        Self {
            host,
            forwarded_for_hop,
            route_name: OnceCell::new(),
            ip: OnceCell::new(),
            consumer: OnceCell::new(),
            key_id: OnceCell::new(),
            tier: OnceCell::new(),
            key_limits: OnceCell::new(),
        }
    }
}

impl<H: Host> policy::Facts for HostFacts<'_, H> {
    fn route_name(&self) -> Option<&str> {
        self.route_name.get_or_init(|| text(self.host.property(attributes::ROUTE_NAME))).as_deref()
    }

    /// The client IP in one canonical spelling, or `None` when there is none to be had: the
    /// `x-forwarded-for` hop is missing or not an IP, or the downstream address is not an IP
    /// (a pipe, an internal listener).
    fn ip(&self) -> Option<&str> {
        self.ip
            .get_or_init(|| {
                let ip = match self.forwarded_for_hop {
                    Some(hop) => {
                        // Every field line, in order: a proxy that appends a line of its own
                        // must not leave the hop count to the client's first line.
                        let lines: Vec<Vec<u8>> = self
                            .host
                            .request_headers()
                            .into_iter()
                            .filter(|(name, _)| name.eq_ignore_ascii_case("x-forwarded-for"))
                            .map(|(_, value)| value)
                            .collect();
                        descriptor::forwarded_for_hop(&lines.join(&b',')[..], hop)
                    }
                    None => {
                        self.host.property(attributes::SOURCE_ADDRESS).and_then(|a| descriptor::client_ip(&a))
                    }
                };
                ip.map(|ip| ip.to_string())
            })
            .as_deref()
    }

    fn consumer(&self) -> Option<&str> {
        self.consumer.get_or_init(|| text(self.host.property(&[identity::PROP_CONSUMER]))).as_deref()
    }

    fn key_id(&self) -> Option<&str> {
        self.key_id.get_or_init(|| text(self.host.property(&[identity::PROP_KEY_ID]))).as_deref()
    }

    fn tier(&self) -> Option<&str> {
        self.tier.get_or_init(|| text(self.host.property(&[identity::PROP_TIER]))).as_deref()
    }

    /// Each call reads the header again: rules rarely ask for the same one twice.
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        self.host.request_header_bytes(name)
    }

    fn key_limits(&self) -> Option<&[Limit]> {
        self.key_limits
            .get_or_init(|| {
                let published = text(self.host.property(&[identity::PROP_RATE_LIMIT]))?;
                let parsed = identity::parse_limits(&published).and_then(|l| compile_key_limits(&l));
                if parsed.is_none() {
                    self.host.log(
                        LogLevel::Warn,
                        &format!("rate-limit: ignoring unusable key limits `{published}`; the rule's apply"),
                    );
                }
                parsed
            })
            .as_deref()
    }
}

/// The rules' slots in shared data.
struct HostSlots<'a, H: Host> {
    host: &'a H,
    slots: &'a [Slots],
}

impl<H: Host> SlotStore for HostSlots<'_, H> {
    fn take(
        &mut self,
        rule: usize,
        slot: u32,
        owner: u64,
        limits: &[Limit],
        class: Class,
    ) -> Result<bucket::Decision, Exhausted> {
        // One pool per rule (see `Worker::new`), so a missing one does not happen.
        let pool = self.slots.get(rule).ok_or(Exhausted)?;
        pool.take(self.host, slot, owner, limits, class).map_err(|_| Exhausted)
    }
}

impl<H: Host> RateLimitHttp<H> {
    pub fn new(host: Rc<H>, worker: Rc<Worker>) -> Self {
        Self { host, worker, pending: Vec::new(), call: None }
    }

    fn on_request(&mut self) -> Action {
        let host = &*self.host;
        let worker = &*self.worker;
        let config = &worker.config;
        // Each header read is a host call: read the path and method only when a rule uses them.
        let read = |name: &str, needed: bool| {
            if needed { host.request_header(name).unwrap_or_default() } else { String::new() }
        };
        let full_path = read(":path", config.reads_path());
        let method = read(":method", config.reads_method());
        let (raw_path, _) = route::split_path(&full_path);
        // Rules and `by: ["path"]` see the normalised path: `//a` and `/%61` are `/a` to them, so
        // a client cannot spell its way into a fresh bucket or past a rule.
        let path = match route::normalize_path(raw_path) {
            Ok(p) => p,
            Err(refused) => {
                worker.counters.inc(host, Stat::DeniedBadPath);
                host.log(LogLevel::Info, &format!("rate-limit: path refused ({})", refused.reason()));
                let request_id = host.request_header("x-request-id").unwrap_or_default();
                let reply = Reply::error(
                    route::PATH_REFUSED_STATUS,
                    "bad_request",
                    route::PATH_REFUSED_MESSAGE,
                    &request_id,
                );
                tollgate_host::send_reply(host, &reply);
                return Action::Pause;
            }
        };
        let facts = HostFacts::new(host, config.forwarded_for_hop);
        let mut slots = HostSlots { host, slots: &worker.slots };
        let decision = policy::decide(config, &path, &method, &facts, &mut slots);
        let (local, failure_mode) = match self.carry_out(decision) {
            Verdict::Refuse(reply) => {
                send_refusal(host, &reply);
                return Action::Pause;
            }
            Verdict::Pass(passed) => passed,
        };
        let descriptors = match &config.global {
            Some(global) => global::descriptors(global, &facts, &path),
            None => Vec::new(),
        };
        let Some(global) = config.global.as_ref().filter(|_| !descriptors.is_empty()) else {
            if !failure_mode {
                worker.counters.inc(host, Stat::Allowed);
            }
            self.pending = headers_of(config, &local, &[]);
            return Action::Continue;
        };
        let message = rls::encode_request(&global.domain, descriptors);
        match host.grpc_call(&global.cluster, rls::SERVICE, rls::METHOD, &[], &message, global.timeout) {
            Ok(token) => {
                self.call = Some(Pending { token, local, failure_mode, path: path.into_owned(), method });
                Action::Pause
            }
            Err(_) => {
                host.log(LogLevel::Warn, "rate-limit: the proxy refused the call to the rate-limit service");
                let pending = Pending { token: 0, local, failure_mode, path: path.into_owned(), method };
                match self.service_failed(pending) {
                    Verdict::Pass(headers) => {
                        self.pending = headers;
                        Action::Continue
                    }
                    Verdict::Refuse(reply) => {
                        send_refusal(host, &reply);
                        Action::Pause
                    }
                }
            }
        }
    }

    /// Counts and logs a local decision; when it passes, the rules' statuses and whether it
    /// passed in failure mode (then counted as such already), else the reply.
    fn carry_out(&self, decision: policy::Decision<'_>) -> Verdict<(Vec<OwnedStatus>, bool)> {
        let host = &*self.host;
        let worker = &*self.worker;
        for count in &decision.counts {
            match *count {
                Count::Rule(index, stat) => {
                    if let Some(counters) = worker.rule_counters.get(index) {
                        counters.inc(host, stat.into());
                    }
                }
                Count::FailureModeAllowed => worker.counters.inc(host, Stat::FailureModeAllowed),
                Count::FailureModeDenied => worker.counters.inc(host, Stat::FailureModeDenied),
            }
        }
        for line in &decision.logs {
            host.log(LogLevel::Info, line);
        }
        // The request's decision, once: failure-mode decisions were counted as such above.
        let failure_mode =
            decision.counts.iter().any(|c| matches!(c, Count::FailureModeAllowed | Count::FailureModeDenied));
        let Some(refusal) = decision.refusal else {
            // Counted as allowed by the caller, once the service (if any) let it through too.
            let statuses = decision.statuses.iter().map(|s| (s.rule.to_owned(), s.limits.clone())).collect();
            return Verdict::Pass((statuses, failure_mode));
        };
        if !failure_mode {
            worker.counters.inc(host, Stat::DeniedLimited);
            self.count_refusal(&decision.counts);
        }
        let headers = rl::response_headers(&decision.statuses, worker.config.headers);
        let request_id = host.request_header("x-request-id").unwrap_or_default();
        Verdict::Refuse(refusal.reply(&request_id, &decision.statuses, headers))
    }

    /// The rate-limit service answered call `token` (a gRPC `status`, a body of `size` bytes).
    fn on_service_answer(&mut self, token: u32, status: u32, size: usize) {
        let Some(pending) = self.call.take_if(|p| p.token == token) else {
            return;
        };
        let host = &*self.host;
        let worker = &*self.worker;
        let answer = if status == 0 {
            host.grpc_response_body(size).as_deref().and_then(rls::decode_response)
        } else {
            None
        };
        let verdict = match answer {
            None => {
                let message = host.grpc_status_message().unwrap_or_default();
                host.log(
                    LogLevel::Warn,
                    &format!(
                        "rate-limit: the rate-limit service did not answer (gRPC status {status}) {message}"
                    ),
                );
                self.service_failed(pending)
            }
            Some((over_limit, limits)) => {
                worker.counters.inc(host, Stat::GlobalOk);
                let outcome = global::outcome(over_limit, &limits);
                let headers = headers_of(&worker.config, &pending.local, &outcome.statuses);
                match outcome.refusal {
                    None => {
                        if !pending.failure_mode {
                            worker.counters.inc(host, Stat::Allowed);
                        }
                        Verdict::Pass(headers)
                    }
                    Some(refusal) => {
                        worker.counters.inc(host, Stat::DeniedGlobal);
                        let mut all = local_statuses(&pending.local);
                        all.extend(global::rule_statuses(&outcome.statuses));
                        let request_id = host.request_header("x-request-id").unwrap_or_default();
                        Verdict::Refuse(refusal.reply(&request_id, &all, headers))
                    }
                }
            }
        };
        match verdict {
            Verdict::Pass(headers) => {
                self.pending = headers;
                host.resume_request();
            }
            Verdict::Refuse(reply) => send_refusal(host, &reply),
        }
    }

    /// The service could not answer: `global.failure_mode` decides.
    fn service_failed(&self, pending: Pending) -> Verdict<Vec<(&'static str, String)>> {
        let host = &*self.host;
        let worker = Rc::clone(&self.worker);
        let config = &worker.config;
        worker.counters.inc(host, Stat::GlobalError);
        let request_id = || host.request_header("x-request-id").unwrap_or_default();
        match config.global.as_ref().map(|g| g.failure_mode) {
            Some(GlobalFailureMode::Deny) => {
                worker.counters.inc(host, Stat::FailureModeDenied);
                let statuses = local_statuses(&pending.local);
                let headers = rl::response_headers(&statuses, config.headers);
                Verdict::Refuse(Refusal::Limited { retry_after_secs: 1 }.reply(
                    &request_id(),
                    &statuses,
                    headers,
                ))
            }
            Some(GlobalFailureMode::LocalFallback) => {
                worker.counters.inc(host, Stat::GlobalFallback);
                let facts = HostFacts::new(host, config.forwarded_for_hop);
                let mut slots = HostSlots { host, slots: &worker.slots };
                let decision =
                    policy::decide_fallback(config, &pending.path, &pending.method, &facts, &mut slots);
                match self.carry_out(decision) {
                    Verdict::Refuse(reply) => Verdict::Refuse(reply),
                    Verdict::Pass((fallback, failure_mode)) => {
                        if !failure_mode && !pending.failure_mode {
                            worker.counters.inc(host, Stat::Allowed);
                        }
                        let mut local = pending.local;
                        local.extend(fallback);
                        Verdict::Pass(headers_of(config, &local, &[]))
                    }
                }
            }
            Some(GlobalFailureMode::Allow) | None => {
                worker.counters.inc(host, Stat::FailureModeAllowed);
                Verdict::Pass(headers_of(config, &pending.local, &[]))
            }
        }
    }

    /// Counts a refused request for its consumer and the rule that refused it (for the usage
    /// reports; requests without a consumer are not counted there).
    fn count_refusal(&self, counts: &[Count]) {
        let worker = &*self.worker;
        let Some(reporter) = &worker.usage else {
            return;
        };
        let Some(consumer_id) = text(self.host.property(&[identity::PROP_CONSUMER])) else {
            return;
        };
        let refused_by = counts.iter().rev().find_map(|c| match c {
            Count::Rule(index, RuleCount::Limited | RuleCount::MissingDenied) => {
                worker.config.rules.get(*index)
            }
            _ => None,
        });
        if let Some(rule) = refused_by {
            let who = tollgate_host::usage::Who::Limited { consumer_id, rule: rule.name.clone() };
            reporter.usage.count_for(who, self.host.now_ms(), "limited");
        }
    }

    fn on_response(&mut self) {
        for (name, value) in std::mem::take(&mut self.pending) {
            self.host.set_response_header(name, Some(value.as_bytes()));
        }
    }
}

impl<H: Host> Context for RateLimitHttp<H> {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        self.on_service_answer(token_id, status_code, response_size);
    }
}

impl<H: Host> HttpContext for RateLimitHttp<H> {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.on_request()
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.on_response();
        Action::Continue
    }
}
