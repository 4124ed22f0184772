//! Key lifecycle: rotation policies, and what the scheduler does about each key.
//!
//! A **policy** belongs to a consumer (every key of it) or to one key (which then ignores its
//! consumer's). It says how old a key's secret may get (`max_age`, counted from the key's
//! creation or its last rotation), when to warn before that (`notify_before`), how long the
//! previous secret keeps working after a rotation (`grace`), whether the key service rotates the
//! key itself at `max_age` (`auto`) or the key expires then unless its owner rotated it
//! (`notify`), and whether a previous secret nobody uses any more loses its grace early
//! (`revoke_unused_previous_after`).
//!
//! The **scheduler** ([`scheduler`]) looks at the keys that have a policy, an expiry that has
//! just passed, or a previous secret, and [`plan`]s what is due for each. Every transition is
//! recorded in `lifecycle_notices` under `(key, generation, stage)` in the same transaction as its
//! effect, its change-feed entry, its audit entry and its webhook events: a transition happens
//! once whatever the number of replicas, restarts or ticks.

pub mod scheduler;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::Key;

/// What happens when a key reaches its policy's `max_age`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyMode {
    /// The key expires then, unless it was rotated before; the owner is warned.
    Notify,
    /// The key service rotates the key then; the owner picks the new secret up with the old one
    /// during the grace period.
    Auto,
}

impl PolicyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Notify => "notify",
            Self::Auto => "auto",
        }
    }
}

/// A rotation policy. Every duration is in seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationPolicy {
    pub max_age: i64,
    /// Lead times before the deadline, longest first; one `key.expiring` notice each.
    pub notify_before: Vec<i64>,
    /// How long the previous secret works after a rotation the key service makes.
    pub grace: i64,
    pub mode: PolicyMode,
    /// 0: off. Otherwise the grace ends early once the previous secret has not been seen for
    /// this long.
    #[serde(default)]
    pub revoke_unused_previous_after: i64,
}

/// The shortest `max_age` and `revoke_unused_previous_after` a policy takes (1 hour).
pub const MIN_AGE: i64 = 3_600;
/// The longest any policy duration may be (10 years).
pub const MAX_DURATION: i64 = 10 * 366 * 86_400;
/// Most lead times in `notify_before`.
pub const MAX_STAGES: usize = 8;

impl RotationPolicy {
    /// Checks the policy and puts `notify_before` longest first. Errors name the field.
    pub fn validated(mut self) -> Result<Self> {
        if !(MIN_AGE..=MAX_DURATION).contains(&self.max_age) {
            return Err(Error::invalid("policy.max_age", "must be between 1 hour and 10 years"));
        }
        if self.notify_before.len() > MAX_STAGES {
            return Err(Error::invalid("policy.notify_before", format!("at most {MAX_STAGES} lead times")));
        }
        for (i, lead) in self.notify_before.iter().enumerate() {
            if *lead <= 0 || *lead >= self.max_age {
                return Err(Error::invalid(
                    format!("policy.notify_before[{i}]"),
                    "must be more than 0 and less than max_age",
                ));
            }
        }
        self.notify_before.sort_unstable_by(|a, b| b.cmp(a));
        if self.notify_before.windows(2).any(|w| w[0] == w[1]) {
            return Err(Error::invalid("policy.notify_before", "lists a lead time twice"));
        }
        if !(0..=MAX_DURATION).contains(&self.grace) {
            return Err(Error::invalid("policy.grace", "must be between 0 and 10 years"));
        }
        if self.mode == PolicyMode::Auto && self.grace == 0 {
            return Err(Error::invalid(
                "policy.grace",
                "must be more than 0 in auto mode: clients pick the new secret up with the old one during it",
            ));
        }
        let unused = self.revoke_unused_previous_after;
        if unused != 0 && !(MIN_AGE..=MAX_DURATION).contains(&unused) {
            return Err(Error::invalid(
                "policy.revoke_unused_previous_after",
                "must be 0 (off) or between 1 hour and 10 years",
            ));
        }
        Ok(self)
    }
}

/// A stored policy and what it applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRecord {
    pub consumer_id: String,
    /// Empty: every key of the consumer that has no policy of its own.
    pub key_id: String,
    pub policy: RotationPolicy,
    pub updated_at: i64,
}

/// What a policy is set on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyTarget {
    /// A consumer id or name.
    Consumer(String),
    Key(String),
}

/// A key's previous secret, kept during a rotation's grace period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Previous {
    /// When its grace ends.
    pub expires_at: i64,
    /// When a lookup last matched it (0: never).
    pub last_used_at: i64,
}

/// A key the scheduler looks at, with what it needs to decide.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub key: Key,
    /// The key's own policy, else its consumer's.
    pub policy: Option<RotationPolicy>,
    /// When that policy was last set.
    pub policy_set_at: i64,
    pub previous: Option<Previous>,
    /// The transitions already recorded: `(generation, stage)`.
    pub notices: Vec<(i64, String)>,
}

/// The stage name of a lead time: `30d`, `12h`, `90m` or `45s`.
pub fn stage_name(lead: i64) -> String {
    if lead % 86_400 == 0 {
        format!("{}d", lead / 86_400)
    } else if lead % 3_600 == 0 {
        format!("{}h", lead / 3_600)
    } else if lead % 60 == 0 {
        format!("{}m", lead / 60)
    } else {
        format!("{lead}s")
    }
}

/// The stage recorded for a `key.expiring` notice.
pub fn expiring_stage(lead: i64) -> String {
    format!("expiring:{}", stage_name(lead))
}

/// The stage recorded when a key expired.
pub const STAGE_EXPIRED: &str = "expired";
/// The stage recorded when a previous secret's grace ended.
pub const STAGE_GRACE_ENDED: &str = "grace_ended";

/// Keys that expired longer ago than this when the scheduler first sees them get no
/// `key.expired` event (a store from before the scheduler would otherwise announce every key that
/// ever expired).
pub const EXPIRED_LOOKBACK: i64 = 7 * 86_400;

/// What reaching a deadline does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadlineAction {
    Rotate,
    Expire,
}

impl DeadlineAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rotate => "rotate",
            Self::Expire => "expire",
        }
    }
}

/// One thing the scheduler does to one key, applied by the store in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// A `key.expiring` notice for the most urgent stage due; `overtaken` are earlier stages not
    /// yet sent that are now past (recorded as skipped, never sent later).
    Expiring {
        key_id: String,
        consumer_id: String,
        deadline: i64,
        lead: i64,
        action: DeadlineAction,
        overtaken: Vec<i64>,
    },
    /// The key expired (at `expires_at`); with `set_expiry`, its policy's deadline in notify
    /// mode sets the expiry now (only while the key's secret is the one born at `birth`).
    Expired { key_id: String, consumer_id: String, expires_at: i64, set_expiry: bool, birth: i64 },
    /// The previous secret stops working now (`reason`: `elapsed` or `unused`).
    EndGrace { key_id: String, consumer_id: String, rotated_at: i64, reason: &'static str },
    /// The key service rotates the key (auto mode), if its secret is still the one born at
    /// `birth`.
    Rotate { key_id: String, birth: i64, grace: i64 },
}

/// When a key's current secret was made.
pub fn birth(key: &Key) -> i64 {
    key.created_at.max(key.rotated_at)
}

/// What is due for `c` at `now`, in the order to apply it.
pub fn plan(c: &Candidate, now: i64) -> Vec<Transition> {
    let key = &c.key;
    let mut out = Vec::new();
    if key.revoked_at != 0 {
        return out;
    }
    let done = |generation: i64, stage: &str| c.notices.iter().any(|(g, s)| *g == generation && s == stage);
    if let Some(previous) = c.previous {
        let elapsed = previous.expires_at <= now;
        let unused = c.policy.as_ref().is_some_and(|p| {
            p.revoke_unused_previous_after > 0
                && now.saturating_sub(previous.last_used_at.max(key.rotated_at))
                    >= p.revoke_unused_previous_after
        });
        if elapsed || unused {
            out.push(Transition::EndGrace {
                key_id: key.id.clone(),
                consumer_id: key.consumer_id.clone(),
                rotated_at: key.rotated_at,
                reason: if elapsed { "elapsed" } else { "unused" },
            });
        }
    }
    if key.expires_at != 0 && key.expires_at <= now {
        if !done(key.expires_at, STAGE_EXPIRED) {
            out.push(Transition::Expired {
                key_id: key.id.clone(),
                consumer_id: key.consumer_id.clone(),
                expires_at: key.expires_at,
                set_expiry: false,
                birth: birth(key),
            });
        }
        return out;
    }
    let Some(policy) = &c.policy else {
        return out;
    };
    let born = birth(key);
    // A policy set on a key already older than max_age does not act at once: the key gets the
    // longest notice first, counted from when the policy was set.
    let longest_notice = policy.notify_before.first().copied().unwrap_or(0);
    let policy_deadline =
        born.saturating_add(policy.max_age).max(c.policy_set_at.saturating_add(longest_notice));
    let (deadline, action) = if key.expires_at != 0 && key.expires_at <= policy_deadline {
        (key.expires_at, DeadlineAction::Expire)
    } else if policy.mode == PolicyMode::Auto {
        (policy_deadline, DeadlineAction::Rotate)
    } else {
        (policy_deadline, DeadlineAction::Expire)
    };
    if now >= deadline {
        // An expiry of the key's own is handled above when it passes.
        match action {
            DeadlineAction::Rotate => {
                out.push(Transition::Rotate { key_id: key.id.clone(), birth: born, grace: policy.grace });
            }
            DeadlineAction::Expire => out.push(Transition::Expired {
                key_id: key.id.clone(),
                consumer_id: key.consumer_id.clone(),
                expires_at: deadline,
                set_expiry: true,
                birth: born,
            }),
        }
        return out;
    }
    // Stages are longest first: the last one due is the most urgent.
    let due: Vec<i64> =
        policy.notify_before.iter().copied().filter(|lead| deadline.saturating_sub(*lead) <= now).collect();
    if let Some((&lead, earlier)) = due.split_last()
        && !done(deadline, &expiring_stage(lead))
    {
        out.push(Transition::Expiring {
            key_id: key.id.clone(),
            consumer_id: key.consumer_id.clone(),
            deadline,
            lead,
            action,
            overtaken: earlier.iter().copied().filter(|l| !done(deadline, &expiring_stage(*l))).collect(),
        });
    }
    out
}

/// The data of a `key.expiring` event.
pub fn expiring_data(
    key_id: &str,
    consumer_id: &str,
    deadline: i64,
    lead: i64,
    action: DeadlineAction,
) -> serde_json::Value {
    serde_json::json!({
        "key_id": key_id,
        "consumer_id": consumer_id,
        "stage": stage_name(lead),
        "deadline": crate::webhooks::rfc3339(deadline),
        "action": action.as_str(),
    })
}

/// The data of a `key.expired` event.
pub fn expired_data(key_id: &str, consumer_id: &str, expires_at: i64) -> serde_json::Value {
    serde_json::json!({
        "key_id": key_id,
        "consumer_id": consumer_id,
        "expired_at": crate::webhooks::rfc3339(expires_at),
    })
}

/// The data of a `key.grace_ended` event.
pub fn grace_ended_data(key_id: &str, consumer_id: &str, reason: &str) -> serde_json::Value {
    serde_json::json!({ "key_id": key_id, "consumer_id": consumer_id, "reason": reason })
}

#[cfg(test)]
mod tests;
