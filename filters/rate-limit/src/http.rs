//! The per-request context: apply every matching rule, answer 429 or pass with headers.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use tollgate_core::error::Reply;
use tollgate_core::identity;
use tollgate_core::rate_limit::bucket::{Class, Limit};
use tollgate_core::rate_limit::config::{CriticalFacts, FailureMode, Mode, Rule, compile_key_limits};
use tollgate_core::rate_limit::descriptor::{self, Bucket, Part};
use tollgate_core::rate_limit::{self as rl, RuleStatus};
use tollgate_core::route::{self, RequestFacts};
use tollgate_host::{Host, LogLevel, attributes};

use crate::worker::{RuleStat, Stat, Worker};

pub struct RateLimitHttp<H: Host> {
    host: Rc<H>,
    worker: Rc<Worker>,
    /// Headers to add to the response once it comes.
    pending: Vec<(&'static str, String)>,
}

/// What the request says, read from the host at most once and only when a rule needs it.
struct Facts<'h, H: Host> {
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

fn bytes_of(s: Option<&str>) -> Option<Cow<'_, [u8]>> {
    s.map(|s| Cow::Borrowed(s.as_bytes()))
}

impl<'h, H: Host> Facts<'h, H> {
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

    /// The key's own limits, when key-auth published usable ones.
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

    /// A part's value as bytes: a header exactly as the client sent it, so two values that
    /// differ in any byte are two buckets.
    fn value<'s>(&'s self, part: &Part, path: &'s str) -> Option<Cow<'s, [u8]>> {
        match part {
            Part::Consumer => bytes_of(self.consumer()),
            Part::KeyId => bytes_of(self.key_id()),
            Part::Ip => bytes_of(self.ip()),
            Part::Path => bytes_of(Some(path)),
            Part::Route => bytes_of(self.route_name()),
            Part::Header(name) => self.host.request_header_bytes(name).map(Cow::Owned),
        }
    }
}

/// Why a request is refused.
enum Refusal {
    Limited { retry_after_secs: u64 },
    Missing,
}

impl<H: Host> RateLimitHttp<H> {
    pub fn new(host: Rc<H>, worker: Rc<Worker>) -> Self {
        Self { host, worker, pending: Vec::new() }
    }

    fn on_request(&mut self) -> Action {
        let host = &*self.host;
        let worker = &*self.worker;
        let config = &worker.config;
        // Each header read is a host call: read the path and method only when a rule uses them.
        let needs_path =
            config.rules.iter().any(|r| r.matcher.path_prefix.is_some() || r.by.contains(&Part::Path));
        let needs_method = config.rules.iter().any(|r| !r.matcher.methods.is_empty());
        let read = |name: &str, needed: bool| {
            if needed { host.request_header(name).unwrap_or_default() } else { String::new() }
        };
        let full_path = read(":path", needs_path);
        let method = read(":method", needs_method);
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
        let path = &*path;
        let facts = Facts::new(host, config.forwarded_for_hop);
        let needs_route = config.rules.iter().any(|r| r.matcher.route_name.is_some());
        let route_name = if needs_route { facts.route_name().map(str::to_owned) } else { None };
        let req = RequestFacts { route_name: route_name.as_deref(), path, method: &method };

        let mut statuses: Vec<RuleStatus<'_>> = Vec::new();
        let mut refusal: Option<Refusal> = None;
        for (index, rule) in config.rules.iter().enumerate() {
            if !rule.matcher.matches(&req) {
                continue;
            }
            let Some(counters) = worker.rule_counters.get(index) else {
                continue;
            };
            let key =
                match descriptor::bucket_of(&rule.name, &rule.by, rule.missing, |p| facts.value(p, path)) {
                    Bucket::Key(key) => key,
                    Bucket::NoClientIp(key) => {
                        counters.inc(host, RuleStat::NoClientIp);
                        key
                    }
                    Bucket::Skip => {
                        counters.inc(host, RuleStat::MissingSkipped);
                        continue;
                    }
                    Bucket::Deny => {
                        counters.inc(host, RuleStat::MissingDenied);
                        if rule.mode == Mode::Enforce {
                            refusal = Some(Refusal::Missing);
                            break;
                        }
                        continue;
                    }
                };
            // A key's own limits only mean something for a bucket that belongs to the key or its
            // consumer; other rules skip the property read (a host call) altogether.
            let per_caller = rule.by.iter().any(|p| matches!(p, Part::Consumer | Part::KeyId));
            let own = if rule.key_limits && per_caller { facts.key_limits() } else { None };
            let limits = own.unwrap_or(rule.limits.as_slice());
            let class = classify(rule, &facts, host, route_name.as_deref());
            let Some(pool) = worker.slots.get(index) else {
                continue;
            };
            let owner = descriptor::hash64(&key);
            let slot = descriptor::slot(owner, pool.count);
            let decision = match pool.take(host, slot, owner, limits, class) {
                Ok(decision) => decision,
                Err(_) => {
                    counters.inc(host, RuleStat::CasExhausted);
                    match config.failure_mode {
                        FailureMode::Allow => {
                            worker.counters.inc(host, Stat::FailureModeAllowed);
                            continue;
                        }
                        FailureMode::Deny => {
                            worker.counters.inc(host, Stat::FailureModeDenied);
                            refusal = Some(Refusal::Limited { retry_after_secs: 1 });
                            break;
                        }
                    }
                }
            };
            if decision.collided {
                counters.inc(host, RuleStat::Collisions);
            }
            if decision.allowed {
                counters.inc(host, RuleStat::Allowed);
            } else if rule.mode == Mode::Shadow {
                counters.inc(host, RuleStat::ShadowLimited);
                host.log(
                    LogLevel::Info,
                    &format!("rate-limit: rule `{}` would limit this request (shadow mode)", rule.name),
                );
                continue;
            } else {
                counters.inc(host, RuleStat::Limited);
            }
            if rule.mode == Mode::Enforce {
                statuses.push(RuleStatus { rule: &rule.name, limits: decision.status });
            }
            if !decision.allowed {
                refusal = Some(Refusal::Limited { retry_after_secs: decision.retry_after_secs });
                break;
            }
        }

        let headers = rl::response_headers(&statuses, config.headers);
        let Some(refusal) = refusal else {
            self.pending = headers;
            return Action::Continue;
        };
        let request_id = host.request_header("x-request-id").unwrap_or_default();
        let (message, retry) = match refusal {
            Refusal::Limited { retry_after_secs } => (rl::ERROR_MESSAGE, retry_after_secs),
            Refusal::Missing => (rl::MISSING_MESSAGE, 1),
        };
        // Never earlier than a limit this request already emptied has a token again.
        let retry = rl::retry_after_secs(&statuses, retry);
        tollgate_host::send_reply(host, &rl::limited_reply(&request_id, message, retry, headers));
        Action::Pause
    }

    fn on_response(&mut self) {
        for (name, value) in std::mem::take(&mut self.pending) {
            self.host.set_response_header(name, Some(value.as_bytes()));
        }
    }
}

/// Whether a request may use the rule's reserved share.
fn classify<H: Host>(rule: &Rule, facts: &Facts<'_, H>, host: &H, route_name: Option<&str>) -> Class {
    let Some(priority) = &rule.priority else {
        return Class::Normal { reserve_percent: 0 };
    };
    let c = &priority.critical;
    let header = c.header.as_ref().and_then(|(name, _)| host.request_header_bytes(name));
    let route_name = match route_name {
        Some(r) => Some(r),
        None if !c.route_names.is_empty() => facts.route_name(),
        None => None,
    };
    let tier = if c.tiers.is_empty() { None } else { facts.tier() };
    let critical = c.matches(&CriticalFacts { header: header.as_deref(), route_name, tier });
    if critical { Class::Critical } else { Class::Normal { reserve_percent: priority.reserve_percent } }
}

impl<H: Host> Context for RateLimitHttp<H> {}

impl<H: Host> HttpContext for RateLimitHttp<H> {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.on_request()
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.on_response();
        Action::Continue
    }
}
