//! Per-VM state, shared by the root context and the HTTP contexts: the compiled rules and the
//! stats. Immutable after configure.

use tollgate_core::transform::config::Config;
use tollgate_host::stats::Counters;

tollgate_host::stats! {
    /// The filter's counters, under `tollgate.transform.`.
    pub enum Stat {
        RulesApplied => "rules_applied",
        BodyTransformed => "body_transformed",
        BodySkippedTooLarge => "body_skipped_too_large",
        BodySkippedNotJson => "body_skipped_not_json",
        InvalidJson => "invalid_json",
        Rejected => "rejected",
        Errors => "errors",
    }
}

/// Stat prefix: `tollgate.transform.<stat>`.
pub const STAT_PREFIX: &str = "tollgate.transform";

#[derive(Debug)]
pub struct Worker {
    pub config: Config,
    pub counters: Counters<Stat>,
}
