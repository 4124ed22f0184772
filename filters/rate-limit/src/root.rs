//! The root context: configuration, stats and the shared-data slots.

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use tollgate_core::rate_limit::config::Config;
use tollgate_host::{Counters, Host, LogLevel};

use crate::http::RateLimitHttp;
use crate::store::Slots;

/// Stats of each rule, under `tollgate.rate_limit.rule.<name>.`.
pub const RULE_STATS: &[&str] = &[
    "allowed",
    "limited",
    "shadow_limited",
    "cas_exhausted",
    "missing_skipped",
    "missing_denied",
    "no_client_ip",
    "collisions",
];
/// Stats of the filter, under `tollgate.rate_limit.`.
pub const STATS: &[&str] =
    &["failure_mode_allowed", "failure_mode_denied", "slots_initialized", "denied.bad_path"];

/// What one worker's HTTP contexts share: immutable after configure.
pub struct Worker {
    pub config: Config,
    /// One pool of slots per rule, in the config's order.
    pub slots: Vec<Slots>,
    pub counters: Counters,
    /// One set per rule, in the config's order.
    pub rule_counters: Vec<Counters>,
}

impl Worker {
    pub fn new<H: Host + ?Sized>(host: &H, config: Config) -> Self {
        let slots = config.rules.iter().map(|r| Slots::new(&config.domain, &r.name, r.slots)).collect();
        let counters = Counters::define(host, "tollgate.rate_limit", STATS);
        let rule_counters = config
            .rules
            .iter()
            .map(|r| Counters::define(host, &format!("tollgate.rate_limit.rule.{}", r.name), RULE_STATS))
            .collect();
        Self { config, slots, counters, rule_counters }
    }
}

pub struct RateLimitRoot<H: Host> {
    host: Rc<H>,
    worker: Option<Rc<Worker>>,
}

impl<H: Host + 'static> RateLimitRoot<H> {
    pub fn new(host: Rc<H>) -> Self {
        Self { host, worker: None }
    }

    pub fn worker(&self) -> Option<Rc<Worker>> {
        self.worker.clone()
    }

    fn configure(&mut self) -> bool {
        let host = &*self.host;
        let bytes = host.plugin_configuration().unwrap_or_default();
        match Config::from_json(&bytes) {
            Ok(config) => {
                let worker = Worker::new(host, config);
                let written: u64 = worker.slots.iter().map(|s| u64::from(s.initialize(host))).sum();
                if written > 0 {
                    let total: u64 = worker.slots.iter().map(|s| u64::from(s.count)).sum();
                    worker.counters.inc(host, "slots_initialized");
                    host.log(
                        LogLevel::Info,
                        &format!("rate-limit: initialized {written} of {total} bucket slots"),
                    );
                }
                self.worker = Some(Rc::new(worker));
                true
            }
            Err(e) => {
                host.log(LogLevel::Critical, &e.to_string());
                false
            }
        }
    }
}

impl<H: Host + 'static> Context for RateLimitRoot<H> {}

impl<H: Host + 'static> RootContext for RateLimitRoot<H> {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        self.configure()
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let worker = self.worker.clone()?;
        Some(Box::new(RateLimitHttp::new(self.host.clone(), worker)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
