//! One request under every rule: which rules apply, which bucket each takes a token from, and
//! what the request gets — a pass with the `RateLimit` headers or a 429 — as a [`Decision`].
//!
//! The request's facts come through [`Facts`] and the buckets through [`SlotStore`], so the
//! glue can read each fact from the host only when a rule needs it and take tokens from shared
//! data, while the policy itself is tested natively with an in-memory store and clock.

use std::borrow::Cow;

use super::bucket::{self, Class, Limit};
use super::config::{Config, CriticalFacts, FailureMode, Mode, Rule};
use super::descriptor::{self, Bucket, Part};
use super::{ERROR_MESSAGE, MISSING_MESSAGE, Reply, RuleStatus, limited_reply, retry_after_secs};
use crate::route::RequestFacts;

/// What the rules may ask of a request beyond its path and method. Each answer may cost a host
/// call: the policy asks only for what a matching rule needs, and an implementation reads each
/// fact at most once per request.
pub trait Facts {
    /// Envoy's route name.
    fn route_name(&self) -> Option<&str>;
    /// The client IP in one canonical spelling, `None` when there is none to be had.
    fn ip(&self) -> Option<&str>;
    /// The consumer id an identity filter published.
    fn consumer(&self) -> Option<&str>;
    /// The key id an identity filter published.
    fn key_id(&self) -> Option<&str>;
    /// The key's tier an identity filter published.
    fn tier(&self) -> Option<&str>;
    /// A request header's value exactly as the client sent it (lower-case name).
    fn header(&self, name: &str) -> Option<Vec<u8>>;
    /// The key's own limits, when an identity filter published usable ones.
    fn key_limits(&self) -> Option<&[Limit]>;
}

/// The bucket slots could not be updated (compare-and-swap retries exhausted, or the host
/// refused the write): the request follows `failure_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exhausted;

/// Where the buckets live: each rule's pool of `rule.slots` slots.
pub trait SlotStore {
    /// Takes one token for `owner` from `slot` of rule `rule`'s pool at the store's clock
    /// ([`bucket::take`] on the slot's state, written back when it changed).
    fn take(
        &mut self,
        rule: usize,
        slot: u32,
        owner: u64,
        limits: &[Limit],
        class: Class,
    ) -> Result<bucket::Decision, Exhausted>;
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A rule's bucket has no token for it (or `failure_mode: deny` with the store unavailable):
    /// the refusing limit has one again in `retry_after_secs`.
    Limited { retry_after_secs: u64 },
    /// It lacks what a rule with `missing: deny` keys its bucket by.
    Missing,
}

impl Refusal {
    /// The 429 reply, with the rate-limit headers of `statuses` (see
    /// [`super::response_headers`]). `Retry-After` is never earlier than a limit this request
    /// already emptied has a token again.
    pub fn reply(
        self,
        request_id: &str,
        statuses: &[RuleStatus<'_>],
        rate_headers: Vec<(&'static str, String)>,
    ) -> Reply {
        let (message, retry) = match self {
            Self::Limited { retry_after_secs } => (ERROR_MESSAGE, retry_after_secs),
            Self::Missing => (MISSING_MESSAGE, 1),
        };
        limited_reply(request_id, message, retry_after_secs(statuses, retry), rate_headers)
    }
}

/// A rule's counter the request adds one to (`tollgate.rate_limit.rule.<name>.<count>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleCount {
    Allowed,
    Limited,
    ShadowLimited,
    CasExhausted,
    MissingSkipped,
    MissingDenied,
    NoClientIp,
    Collisions,
}

/// A counter the request adds one to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// Of the rule at this index of the config.
    Rule(usize, RuleCount),
    /// The store was unavailable and `failure_mode: allow` let the request through.
    FailureModeAllowed,
    /// The store was unavailable and `failure_mode: deny` refused the request.
    FailureModeDenied,
}

/// What to do with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<'c> {
    /// `None`: the request passes, its response carrying the headers of `statuses`.
    pub refusal: Option<Refusal>,
    /// How each enforced rule's limits stand after this request, in rule order.
    pub statuses: Vec<RuleStatus<'c>>,
    /// Counters to add one to, in the order the rules met them.
    pub counts: Vec<Count>,
    /// Lines for the log (info level), in order.
    pub logs: Vec<String>,
}

/// Applies every rule of `config` that matches the request, in order, until one refuses it.
///
/// `path` is the normalised path without its query string (empty when no rule reads it, see
/// [`Config::reads_path`]), `method` the request method (empty when no rule reads it).
///
/// For each matching rule:
/// - the bucket is keyed by the rule's `by` parts; a part without a value follows `missing`
///   (`ip`: the client IP's bucket, or the rule's one shared bucket of requests without an IP;
///   `skip`: the rule does not apply; `deny`: refused, unless the rule is in shadow mode);
/// - the key's own limits replace the rule's when the rule allows it and the bucket belongs to
///   the key or its consumer;
/// - a critical request may take the rule's reserved share;
/// - a token is taken from the bucket's slot; when the store is unavailable the request follows
///   `failure_mode`;
/// - a refusal of a rule in shadow mode is only counted and logged; enforced rules report their
///   limits' status for the headers, and the first refusal ends the request.
///
/// Rules in `fallback` mode are left out: they apply through [`decide_fallback`] only.
pub fn decide<'c>(
    config: &'c Config,
    path: &str,
    method: &str,
    facts: &impl Facts,
    store: &mut impl SlotStore,
) -> Decision<'c> {
    decide_rules(config, false, path, method, facts, store)
}

/// Like [`decide`], with only the rules in `fallback` mode, enforced: what a request gets when
/// the rate-limit service could not answer and `global.failure_mode` is `local_fallback`.
pub fn decide_fallback<'c>(
    config: &'c Config,
    path: &str,
    method: &str,
    facts: &impl Facts,
    store: &mut impl SlotStore,
) -> Decision<'c> {
    decide_rules(config, true, path, method, facts, store)
}

fn decide_rules<'c>(
    config: &'c Config,
    fallback: bool,
    path: &str,
    method: &str,
    facts: &impl Facts,
    store: &mut impl SlotStore,
) -> Decision<'c> {
    let route_name = if config.reads_route_name() { facts.route_name() } else { None };
    let req = RequestFacts { route_name, path, method };
    let mut decision = Decision { refusal: None, statuses: Vec::new(), counts: Vec::new(), logs: Vec::new() };
    for (index, rule) in config.rules.iter().enumerate() {
        if (rule.mode == Mode::Fallback) != fallback || !rule.matcher.matches(&req) {
            continue;
        }
        // A fallback rule that applies is enforced.
        let shadow = rule.mode == Mode::Shadow;
        let count = |d: &mut Decision<'c>, c: RuleCount| d.counts.push(Count::Rule(index, c));
        let key = match descriptor::bucket_of(&rule.name, &rule.by, rule.missing, |p| value(facts, p, path)) {
            Bucket::Key(key) => key,
            Bucket::NoClientIp(key) => {
                count(&mut decision, RuleCount::NoClientIp);
                key
            }
            Bucket::Skip => {
                count(&mut decision, RuleCount::MissingSkipped);
                continue;
            }
            Bucket::Deny => {
                count(&mut decision, RuleCount::MissingDenied);
                if !shadow {
                    decision.refusal = Some(Refusal::Missing);
                    break;
                }
                continue;
            }
        };
        // A key's own limits only mean something for a bucket that belongs to the key or its
        // consumer; other rules never ask for them (each ask may be a host call).
        let per_caller = rule.by.iter().any(|p| matches!(p, Part::Consumer | Part::KeyId));
        let own = if rule.key_limits && per_caller { facts.key_limits() } else { None };
        let limits = own.unwrap_or(rule.limits.as_slice());
        let class = classify(rule, facts);
        let owner = descriptor::hash64(&key);
        let slot = descriptor::slot(owner, rule.slots);
        let taken = match store.take(index, slot, owner, limits, class) {
            Ok(taken) => taken,
            Err(Exhausted) => {
                count(&mut decision, RuleCount::CasExhausted);
                match config.failure_mode {
                    FailureMode::Allow => {
                        decision.counts.push(Count::FailureModeAllowed);
                        continue;
                    }
                    FailureMode::Deny => {
                        decision.counts.push(Count::FailureModeDenied);
                        decision.refusal = Some(Refusal::Limited { retry_after_secs: 1 });
                        break;
                    }
                }
            }
        };
        if taken.collided {
            count(&mut decision, RuleCount::Collisions);
        }
        if taken.allowed {
            count(&mut decision, RuleCount::Allowed);
        } else if shadow {
            count(&mut decision, RuleCount::ShadowLimited);
            decision
                .logs
                .push(format!("rate-limit: rule `{}` would limit this request (shadow mode)", rule.name));
            continue;
        } else {
            count(&mut decision, RuleCount::Limited);
        }
        if !shadow {
            decision.statuses.push(RuleStatus { rule: &rule.name, limits: taken.status });
        }
        if !taken.allowed {
            decision.refusal = Some(Refusal::Limited { retry_after_secs: taken.retry_after_secs });
            break;
        }
    }
    decision
}

fn bytes_of(s: Option<&str>) -> Option<Cow<'_, [u8]>> {
    s.map(|s| Cow::Borrowed(s.as_bytes()))
}

/// A part's value as bytes: a header exactly as the client sent it, so two values that differ
/// in any byte are two buckets.
pub(crate) fn value<'f>(facts: &'f impl Facts, part: &Part, path: &'f str) -> Option<Cow<'f, [u8]>> {
    match part {
        Part::Consumer => bytes_of(facts.consumer()),
        Part::KeyId => bytes_of(facts.key_id()),
        Part::Ip => bytes_of(facts.ip()),
        Part::Path => bytes_of(Some(path)),
        Part::Route => bytes_of(facts.route_name()),
        Part::Header(name) => facts.header(name).map(Cow::Owned),
    }
}

/// Whether a request may use the rule's reserved share. Only the facts the rule's critical
/// conditions name are asked for.
fn classify(rule: &Rule, facts: &impl Facts) -> Class {
    let Some(priority) = &rule.priority else {
        return Class::Normal { reserve_percent: 0 };
    };
    let c = &priority.critical;
    let header = c.header.as_ref().and_then(|(name, _)| facts.header(name));
    let route_name = if c.route_names.is_empty() { None } else { facts.route_name() };
    let tier = if c.tiers.is_empty() { None } else { facts.tier() };
    let critical = c.matches(&CriticalFacts { header: header.as_deref(), route_name, tier });
    if critical { Class::Critical } else { Class::Normal { reserve_percent: priority.reserve_percent } }
}

#[cfg(test)]
mod tests;
