//! Per-VM state, shared by the root context and the HTTP contexts: the compiled config, the
//! shared-data slots of each rule and the stats. Immutable after configure.

use tollgate_core::rate_limit::config::Config;
use tollgate_core::rate_limit::policy::RuleCount;
use tollgate_host::Host;
use tollgate_host::stats::Counters;

use crate::store::Slots;

tollgate_host::stats! {
    /// The filter's counters, under `tollgate.rate_limit.` (see `tollgate_host::stats`).
    pub enum Stat {
        /// Requests every rule let through (failure-mode decisions are counted apart).
        Allowed => "allowed",
        /// Requests a rule refused.
        DeniedLimited => "denied.limited",
        FailureModeAllowed => "failure_mode_allowed",
        FailureModeDenied => "failure_mode_denied",
        SlotsInitialized => "slots_initialized",
        DeniedBadPath => "denied.bad_path",
        UsageReportOk => "usage_report_ok",
        UsageReportError => "usage_report_error",
        UsageDropped => "usage_dropped",
        /// Requests the rate-limit service refused (global mode).
        DeniedGlobal => "denied.global_limited",
        /// Answers of the rate-limit service, and calls that got none (error, timeout, an
        /// unreadable answer).
        GlobalOk => "global_ok",
        GlobalError => "global_error",
        /// Requests decided by the `fallback` rules because the service could not answer.
        GlobalFallback => "global_fallback",
    }
}

tollgate_host::stats! {
    /// Each rule's counters, as `tollgate.rate_limit.rule_decisions_total.rule.<name>.decision.<stat>`
    /// (or `rule_events_total…event.<stat>`; see `tollgate_host::stats::rule_metric_name`).
    pub enum RuleStat {
        Allowed => "allowed",
        Limited => "limited",
        ShadowLimited => "shadow_limited",
        CasExhausted => "cas_exhausted",
        MissingSkipped => "missing_skipped",
        MissingDenied => "missing_denied",
        NoClientIp => "no_client_ip",
        Collisions => "collisions",
    }
}

impl From<RuleCount> for RuleStat {
    fn from(count: RuleCount) -> Self {
        match count {
            RuleCount::Allowed => Self::Allowed,
            RuleCount::Limited => Self::Limited,
            RuleCount::ShadowLimited => Self::ShadowLimited,
            RuleCount::CasExhausted => Self::CasExhausted,
            RuleCount::MissingSkipped => Self::MissingSkipped,
            RuleCount::MissingDenied => Self::MissingDenied,
            RuleCount::NoClientIp => Self::NoClientIp,
            RuleCount::Collisions => Self::Collisions,
        }
    }
}

pub struct Worker {
    pub config: Config,
    /// One pool of slots per rule, in the config's order.
    pub slots: Vec<Slots>,
    pub counters: Counters<Stat>,
    /// One set per rule, in the config's order.
    pub rule_counters: Vec<Counters<RuleStat>>,
    /// Requests refused per consumer and rule, for the key service (`usage`).
    pub usage: Option<tollgate_host::usage::Reporter>,
}

impl Worker {
    pub fn new<H: Host + ?Sized>(host: &H, config: Config) -> Self {
        let slots = config.rules.iter().map(|r| Slots::new(&config.domain, &r.name, r.slots)).collect();
        let counters = Counters::define(host, "tollgate.rate_limit");
        let rule_counters = config
            .rules
            .iter()
            .map(|r| Counters::define_rule(host, "tollgate.rate_limit", &r.name))
            .collect();
        let prefix = format!("tollgate.rate_limit.{}.", config.domain);
        let usage = tollgate_host::usage::Reporter::configured(host, config.usage.as_ref(), &prefix);
        Self { config, slots, counters, rule_counters, usage }
    }
}
