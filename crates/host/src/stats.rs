//! A filter's stats: one list, derived from enums, as Envoy derives a filter's stats from its
//! `ALL_<FILTER>_STATS` macro.
//!
//! A filter names its counters with one enum made by [`stats!`](crate::stats!) and refuses
//! requests with one [`Denial`] enum of the core; [`Counters`] defines every stat and every
//! refusal up front, so `/stats` shows every counter from the start, and a counter that is not
//! in the lists cannot be incremented.
//!
//! **Names carry labels.** Envoy's wasm ABI has no tags, so a counter's name says them:
//! `<prefix>.<metric>[.<label>.<value>]*`, e.g. `tollgate.key_auth.requests_total.decision.deny.reason.revoked_key`
//! ([`metric_name`] maps a stat to it). The `stats_tags` Tollgate ships (`envoy/stats-tags.yaml`)
//! turn each `.<label>.<value>` pair into a Prometheus label, so `/stats/prometheus` shows
//! `tollgate_key_auth_requests_total{decision="deny",reason="revoked_key"}`. Label values are
//! closed sets or configuration names (a rule's), never a key, key id, consumer or token: the
//! number of series does not grow with the number of keys.

use std::marker::PhantomData;

use tollgate_core::error::Denial;

use crate::Host;

/// A filter's counters other than its refusals, made by [`stats!`](crate::stats!).
pub trait Stat: Copy + 'static {
    /// Every counter, in the order they are defined.
    const ALL: &'static [Self];
    /// The counter's name under the filter's prefix.
    fn name(self) -> &'static str;
    /// The counter's position in [`Stat::ALL`].
    fn index(self) -> usize;
}

/// Declares a filter's stat enum: each variant with the counter name it stands for.
///
/// ```
/// tollgate_host::stats! {
///     /// The filter's counters, under `tollgate.example.`.
///     pub enum Stat {
///         Allowed => "allowed",
///         CacheHit => "cache_hit",
///     }
/// }
/// use tollgate_host::stats::Stat as _;
/// assert_eq!(Stat::ALL.iter().map(|s| s.name()).collect::<Vec<_>>(), ["allowed", "cache_hit"]);
/// ```
#[macro_export]
macro_rules! stats {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $($(#[$vmeta:meta])* $variant:ident => $text:literal,)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        $vis enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $crate::stats::Stat for $name {
            const ALL: &'static [Self] = &[$(Self::$variant,)*];

            fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)*
                }
            }

            fn index(self) -> usize {
                self as usize
            }
        }
    };
}

/// The refusals of a filter that refuses nothing on its own account (its only refusals are
/// counted as plain stats, or by rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoDenial {}

impl Denial for NoDenial {
    fn all() -> &'static [Self] {
        &[]
    }
    fn status(self) -> u32 {
        match self {}
    }
    fn code(self) -> &'static str {
        match self {}
    }
    fn message(self) -> &'static str {
        match self {}
    }
    fn reason(self) -> &'static str {
        match self {}
    }
}

/// One filter's counters (or one rule's): the stats `S` and the refusals `D`, defined once per VM.
pub struct Counters<S, D = NoDenial> {
    /// By [`Stat::index`]; `None` where the host refused to define the counter.
    stats: Vec<Option<u32>>,
    /// In the order of [`Denial::all`].
    denied: Vec<Option<u32>>,
    kinds: PhantomData<fn() -> (S, D)>,
}

impl<S, D> std::fmt::Debug for Counters<S, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counters")
            .field("stats", &self.stats.len())
            .field("denied", &self.denied.len())
            .finish()
    }
}

/// The name stat `stat` (as a filter's [`Stat::name`] gives it, or `denied.<reason>`) is
/// defined under, after the filter's prefix: `<metric>[.<label>.<value>]*` (see the module
/// documentation).
pub fn metric_name(stat: &str) -> String {
    if let Some(reason) = stat.strip_prefix("denied.") {
        return format!("requests_total.decision.deny.reason.{reason}");
    }
    let named = match stat {
        "allowed" => "requests_total.decision.allow",
        "failure_mode_allowed" => "requests_total.decision.allow.reason.failure_mode",
        "failure_mode_denied" => "requests_total.decision.deny.reason.failure_mode",
        "rejected" => "requests_total.decision.deny.reason.rejected",
        "cache_hit" => "cache_lookups_total.result.hit",
        "cache_miss" => "cache_lookups_total.result.miss",
        "cache_stale_served" => "cache_lookups_total.result.stale",
        "stale_served_while_revalidate" => "stale_served_total.reason.while_revalidate",
        "stale_served_if_error" => "stale_served_total.reason.if_error",
        "stale_served_max_stale" => "stale_served_total.reason.max_stale",
        "feed_poll" => "feed_polls_total",
        "feed_error" => "feed_errors_total",
        "jwks_fetch_ok" => "jwks_fetches_total.outcome.ok",
        "jwks_fetch_error" => "jwks_fetches_total.outcome.error",
        "discovery_fetch_ok" => "discovery_fetches_total.outcome.ok",
        "discovery_fetch_error" => "discovery_fetches_total.outcome.error",
        "introspection_active" => "introspections_total.result.active",
        "introspection_inactive" => "introspections_total.result.inactive",
        "introspection_error" => "introspections_total.result.error",
        "usage_report_ok" => "usage_reports_total.outcome.ok",
        "usage_report_error" => "usage_reports_total.outcome.error",
        other => return format!("{other}_total"),
    };
    named.to_owned()
}

/// The name a rule's stat is defined under, after the filter's prefix: decisions as
/// `rule_decisions_total.rule.<rule>.decision.<stat>`, anything else as
/// `rule_events_total.rule.<rule>.event.<stat>`. Rule names are configuration names (lowercase
/// letters, digits, `_` and `-`: never a dot).
pub fn rule_metric_name(rule: &str, stat: &str) -> String {
    match stat {
        "allowed" | "limited" | "shadow_limited" | "missing_denied" | "missing_skipped" => {
            format!("rule_decisions_total.rule.{rule}.decision.{stat}")
        }
        other => format!("rule_events_total.rule.{rule}.event.{other}"),
    }
}

impl<S: Stat, D: Denial> Counters<S, D> {
    /// Defines every stat, then every refusal, under `prefix` ([`metric_name`]).
    pub fn define<H: Host + ?Sized>(host: &H, prefix: &str) -> Self {
        Self::define_with(host, |stat| format!("{prefix}.{}", metric_name(stat)))
    }

    /// Defines the stats of rule `rule` under `prefix` ([`rule_metric_name`]).
    pub fn define_rule<H: Host + ?Sized>(host: &H, prefix: &str, rule: &str) -> Self {
        Self::define_with(host, |stat| format!("{prefix}.{}", rule_metric_name(rule, stat)))
    }

    fn define_with<H: Host + ?Sized>(host: &H, name: impl Fn(&str) -> String) -> Self {
        let stats = S::ALL.iter().map(|s| host.define_counter(&name(s.name()))).collect();
        let denied =
            D::all().iter().map(|d| host.define_counter(&name(&format!("denied.{}", d.reason())))).collect();
        Self { stats, denied, kinds: PhantomData }
    }

    /// Every counter's name under the prefix, in the order they are defined.
    pub fn names() -> Vec<String> {
        let stats = S::ALL.iter().map(|s| metric_name(s.name()));
        stats.chain(D::all().iter().map(|d| metric_name(&format!("denied.{}", d.reason())))).collect()
    }

    /// Adds one to `stat`.
    pub fn inc<H: Host + ?Sized>(&self, host: &H, stat: S) {
        self.add(host, stat, 1);
    }

    /// Adds `n` to `stat`.
    pub fn add<H: Host + ?Sized>(&self, host: &H, stat: S, n: u64) {
        if let Some(Some(id)) = self.stats.get(stat.index()) {
            host.increment_counter(*id, i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Adds one to `denied.<reason>` of `deny`.
    pub fn denied<H: Host + ?Sized>(&self, host: &H, deny: D) {
        let index = D::all().iter().position(|d| d.reason() == deny.reason());
        if let Some(Some(id)) = index.and_then(|i| self.denied.get(i)) {
            host.increment_counter(*id, 1);
        }
    }
}

/// A gauge: one value, set (not added to).
#[derive(Debug, Clone, Copy)]
pub struct Gauge(Option<u32>);

impl Gauge {
    /// Defines gauge `name`.
    pub fn define<H: Host + ?Sized>(host: &H, name: &str) -> Self {
        Self(host.define_gauge(name))
    }

    pub fn set<H: Host + ?Sized>(self, host: &H, value: u64) {
        if let Some(id) = self.0 {
            host.record_metric(id, value);
        }
    }
}

/// A histogram: Envoy keeps its buckets, sum and count.
#[derive(Debug, Clone, Copy)]
pub struct Histogram(Option<u32>);

impl Histogram {
    /// Defines histogram `name`.
    pub fn define<H: Host + ?Sized>(host: &H, name: &str) -> Self {
        Self(host.define_histogram(name))
    }

    pub fn record<H: Host + ?Sized>(self, host: &H, value: u64) {
        if let Some(id) = self.0 {
            host.record_metric(id, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_their_labels_as_pairs() {
        assert_eq!(metric_name("allowed"), "requests_total.decision.allow");
        assert_eq!(metric_name("denied.revoked_key"), "requests_total.decision.deny.reason.revoked_key");
        assert_eq!(metric_name("cache_stale_served"), "cache_lookups_total.result.stale");
        assert_eq!(metric_name("singleflight_joined"), "singleflight_joined_total");
        assert_eq!(
            rule_metric_name("per-ip", "limited"),
            "rule_decisions_total.rule.per-ip.decision.limited"
        );
        assert_eq!(
            rule_metric_name("per-ip", "collisions"),
            "rule_events_total.rule.per-ip.event.collisions"
        );
        // After the metric, the segments come in pairs: label, value.
        for name in [metric_name("denied.x"), metric_name("feed_poll"), rule_metric_name("r", "allowed")] {
            let segments = name.split('.').count();
            assert_eq!(segments % 2, 1, "{name}");
        }
    }
}
