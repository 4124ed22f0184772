//! Domain types in their protobuf form: what the handlers and the change feed answer with.
//! Checking and converting requests is [`crate::validate`]'s job.

use tollgate_proto::v1 as pb;

use crate::error::{Error, Result};

use crate::model::{
    self, Change, ChangeKind, Consumer, Key, KeyStatus, PurgeTarget, RateLimitPolicy, SigningAlgorithm,
};

/// Protobuf form of a rate-limit policy.
pub fn rate_limit_to_proto(policy: &RateLimitPolicy) -> pb::RateLimitPolicy {
    pb::RateLimitPolicy {
        tier: policy.tier.clone(),
        limits: policy
            .limits
            .iter()
            .map(|l| pb::RateLimit {
                rate: l.rate,
                period: pb::Period::from(l.period) as i32,
                burst: l.burst,
            })
            .collect(),
    }
}

/// Protobuf form of a consumer.
pub fn consumer_to_proto(consumer: Consumer) -> pb::Consumer {
    pb::Consumer {
        id: consumer.id,
        name: consumer.name,
        metadata: consumer.metadata.into_iter().collect(),
        created_at: consumer.created_at,
    }
}

/// Protobuf form of a key status.
pub fn status_to_proto(status: KeyStatus) -> pb::KeyStatus {
    match status {
        KeyStatus::Active => pb::KeyStatus::Active,
        KeyStatus::Revoked => pb::KeyStatus::Revoked,
        KeyStatus::Expired => pb::KeyStatus::Expired,
    }
}

/// Protobuf form of a key, with its status at `now`.
pub fn key_to_proto(key: Key, now: i64) -> pb::Key {
    let status = status_to_proto(key.status(now)) as i32;
    pb::Key {
        rate_limit: key.rate_limit.as_ref().map(rate_limit_to_proto),
        id: key.id,
        consumer_id: key.consumer_id,
        name: key.name,
        display_prefix: key.display_prefix,
        scopes: key.scopes,
        metadata: key.metadata.into_iter().collect(),
        expires_at: key.expires_at,
        created_at: key.created_at,
        last_used_at: key.last_used_at,
        status,
        revoked_at: key.revoked_at,
        previous_display_prefix: key.previous_display_prefix,
        previous_expires_at: key.previous_expires_at,
        rotated_at: key.rotated_at,
        signing_algorithm: key.signing.map_or(pb::SigningAlgorithm::Unspecified, signing_algorithm_to_proto)
            as i32,
    }
}

/// Protobuf form of a signing algorithm.
pub fn signing_algorithm_to_proto(alg: SigningAlgorithm) -> pb::SigningAlgorithm {
    match alg {
        SigningAlgorithm::HmacSha256 => pb::SigningAlgorithm::HmacSha256,
        SigningAlgorithm::Ed25519 => pb::SigningAlgorithm::Ed25519,
    }
}

/// Protobuf form of a change.
pub fn change_to_proto(change: Change) -> pb::Change {
    let kind = match change.kind {
        ChangeKind::KeyCreated => pb::ChangeKind::KeyCreated,
        ChangeKind::KeyUpdated => pb::ChangeKind::KeyUpdated,
        ChangeKind::KeyRevoked => pb::ChangeKind::KeyRevoked,
        ChangeKind::KeyRotated => pb::ChangeKind::KeyRotated,
        ChangeKind::ConsumerUpdated => pb::ChangeKind::ConsumerUpdated,
        ChangeKind::ConsumerDeleted => pb::ChangeKind::ConsumerDeleted,
        ChangeKind::CachePurged => pb::ChangeKind::CachePurged,
        ChangeKind::KeyExpiring => pb::ChangeKind::KeyExpiring,
        ChangeKind::KeyExpired => pb::ChangeKind::KeyExpired,
        ChangeKind::KeyGraceEnded => pb::ChangeKind::KeyGraceEnded,
    };
    let purge = change.purge.map(|p| {
        let mut out = pb::CachePurge { host: p.host, soft: p.soft, ..Default::default() };
        match p.target {
            PurgeTarget::Tag(t) => out.tag = t,
            PurgeTarget::Prefix(v) => out.prefix = v,
            PurgeTarget::Url(v) => out.url = v,
            PurgeTarget::All => out.all = true,
        }
        out
    });
    pb::Change {
        seq: change.seq,
        kind: kind as i32,
        key_id: change.key_id,
        consumer_id: change.consumer_id,
        at: change.at,
        purge,
    }
}

/// The verify answer for a lookup at `now`.
pub fn verify_response(lookup: model::Lookup, now: i64) -> pb::VerifyKeyResponse {
    let Some(found) = lookup.found else {
        return pb::VerifyKeyResponse {
            result: pb::VerifyResult::NotFound as i32,
            feed_seq: lookup.head_seq,
            ..Default::default()
        };
    };
    let key = found.key;
    // Only the previous secret of a rotated key has an end of its own (its grace).
    let previous_secret = found.expires_at != 0;
    let expires_at = model::earliest(key.expires_at, found.expires_at);
    let result = if key.revoked_at != 0 {
        pb::VerifyResult::Revoked
    } else if model::has_passed(expires_at, now) {
        pb::VerifyResult::Expired
    } else {
        pb::VerifyResult::Valid
    };
    pb::VerifyKeyResponse {
        result: result as i32,
        rate_limit: key.rate_limit.as_ref().map(rate_limit_to_proto),
        key_id: key.id,
        consumer_id: key.consumer_id,
        scopes: key.scopes,
        expires_at,
        display_prefix: found.display_prefix,
        feed_seq: lookup.head_seq,
        previous_secret,
    }
}

/// One key's usage: every outcome's count, and the allowed and denied totals.
pub fn key_usage_to_proto(usage: crate::model::KeyUsage) -> pb::KeyUsage {
    let allowed = usage.outcomes.get("allowed").copied().unwrap_or(0);
    let total: u64 = usage.outcomes.values().fold(0u64, |a, b| a.saturating_add(*b));
    pb::KeyUsage {
        key_id: usage.key_id,
        consumer_id: usage.consumer_id,
        allowed,
        denied: total.saturating_sub(allowed),
        outcomes: usage.outcomes.into_iter().collect(),
        last_used_at: usage.last_used_at,
    }
}

/// A webhook endpoint (never its secret).
pub fn webhook_to_proto(hook: crate::webhooks::Webhook) -> pb::Webhook {
    pb::Webhook {
        id: hook.id,
        url: hook.url,
        events: hook.events.iter().map(|e| e.as_str().to_owned()).collect(),
        enabled: hook.enabled,
        disabled_reason: hook.disabled_reason,
        created_at: hook.created_at,
        previous_secret_expires_at: hook.previous_secret_expires_at,
        failing_since: hook.failing_since,
    }
}

/// One delivery attempt.
pub fn webhook_delivery_to_proto(attempt: crate::webhooks::Attempt) -> pb::WebhookDelivery {
    pb::WebhookDelivery {
        message_id: attempt.message_id,
        webhook_id: attempt.webhook_id,
        event_type: attempt.event_type,
        attempt: attempt.attempt,
        at: attempt.at,
        status: u32::from(attempt.status),
        latency_ms: attempt.latency_ms,
        error: attempt.error,
        outcome: attempt.outcome,
        next_attempt_at: attempt.next_attempt_at,
    }
}

/// A rotation policy from its protobuf form, checked (errors name the field).
pub fn policy_from_proto(policy: Option<pb::RotationPolicy>) -> Result<crate::lifecycle::RotationPolicy> {
    use crate::lifecycle::{PolicyMode, RotationPolicy};
    let policy = policy.ok_or_else(|| Error::invalid("policy", "is required"))?;
    let mode = match pb::RotationMode::try_from(policy.mode) {
        Ok(pb::RotationMode::Notify) => PolicyMode::Notify,
        Ok(pb::RotationMode::Auto) => PolicyMode::Auto,
        _ => return Err(Error::invalid("policy.mode", "must be notify or auto")),
    };
    RotationPolicy {
        max_age: policy.max_age_seconds,
        notify_before: policy.notify_before_seconds,
        grace: policy.grace_seconds,
        mode,
        revoke_unused_previous_after: policy.revoke_unused_previous_after_seconds,
    }
    .validated()
}

/// Protobuf form of a stored rotation policy.
pub fn policy_record_to_proto(record: crate::lifecycle::PolicyRecord) -> pb::RotationPolicyRecord {
    use crate::lifecycle::PolicyMode;
    let p = record.policy;
    pb::RotationPolicyRecord {
        consumer_id: record.consumer_id,
        key_id: record.key_id,
        policy: Some(pb::RotationPolicy {
            max_age_seconds: p.max_age,
            notify_before_seconds: p.notify_before,
            grace_seconds: p.grace,
            mode: match p.mode {
                PolicyMode::Notify => pb::RotationMode::Notify,
                PolicyMode::Auto => pb::RotationMode::Auto,
            } as i32,
            revoke_unused_previous_after_seconds: p.revoke_unused_previous_after,
        }),
        updated_at: record.updated_at,
    }
}
