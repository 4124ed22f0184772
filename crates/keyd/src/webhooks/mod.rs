//! Webhooks: endpoints that receive the key service's events, signed per the Standard Webhooks
//! specification, from a transactional outbox.
//!
//! - Every mutation that causes an event writes, in its own transaction, one outbox message per
//!   enabled endpoint subscribed to the event (fan-out at write time: each message carries its
//!   endpoint's delivery state, and its id is the `webhook-id` of every attempt). With no
//!   subscribed endpoint nothing is written. A mutation that fails writes nothing.
//! - [`deliver`] claims due messages (a lease, `FOR UPDATE SKIP LOCKED` on PostgreSQL, so one
//!   replica sends each attempt), POSTs them, and records each attempt in the delivery log.
//! - Payloads are thin: ids, names and times, never a secret.

pub mod backoff;
pub mod deliver;
pub mod guard;
pub mod sign;

use serde::Serialize;

use crate::master::Sealed;
use crate::model::ChangeKind;

/// The events keyd's mutations cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    KeyCreated,
    KeyRotated,
    KeyRevoked,
    ConsumerCreated,
    ConsumerDeleted,
    KeyExpiring,
    KeyExpired,
    KeyGraceEnded,

    // About the webhooks themselves and about usage.
    WebhookDisabled,
    QuotaExhausted,
}

impl EventType {
    pub const ALL: [EventType; 10] = [
        EventType::KeyCreated,
        EventType::KeyRotated,
        EventType::KeyRevoked,
        EventType::ConsumerCreated,
        EventType::ConsumerDeleted,
        EventType::KeyExpiring,
        EventType::KeyExpired,
        EventType::KeyGraceEnded,
        // About the webhooks themselves and about usage.
        EventType::WebhookDisabled,
        EventType::QuotaExhausted,
    ];

    /// The event's name on the wire (`key.created`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::KeyCreated => "key.created",
            Self::KeyRotated => "key.rotated",
            Self::KeyRevoked => "key.revoked",
            Self::ConsumerCreated => "consumer.created",
            Self::ConsumerDeleted => "consumer.deleted",
            Self::KeyExpiring => "key.expiring",
            Self::KeyExpired => "key.expired",
            Self::KeyGraceEnded => "key.grace_ended",
            Self::WebhookDisabled => "webhook.disabled",
            Self::QuotaExhausted => "quota.exhausted",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == text)
    }

    /// The event a change-feed entry causes, if any.
    pub fn from_change(kind: ChangeKind) -> Option<Self> {
        match kind {
            ChangeKind::KeyCreated => Some(Self::KeyCreated),
            ChangeKind::KeyRotated => Some(Self::KeyRotated),
            ChangeKind::KeyRevoked => Some(Self::KeyRevoked),
            ChangeKind::ConsumerDeleted => Some(Self::ConsumerDeleted),
            // The scheduler writes these events itself, with more data than a change carries.
            ChangeKind::KeyExpiring | ChangeKind::KeyExpired | ChangeKind::KeyGraceEnded => None,
            ChangeKind::KeyUpdated | ChangeKind::ConsumerUpdated | ChangeKind::CachePurged => None,
        }
    }
}

/// A registered endpoint. Its secret stays sealed in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub id: String,
    pub url: String,
    pub events: Vec<EventType>,
    pub enabled: bool,
    /// Why delivery stopped (e.g. the receiver answered 410), when it did.
    pub disabled_reason: String,
    pub created_at: i64,
    /// Until when the secret before the last rotation still signs too (0: there is none).
    pub previous_secret_expires_at: i64,
    /// When the first of the attempts that have failed since the last success was made (0: the
    /// last attempt succeeded, or none was made).
    pub failing_since: i64,
}

/// An endpoint to create; its secret already sealed under the master key.
#[derive(Debug, Clone)]
pub struct NewWebhook {
    pub id: String,
    pub url: String,
    pub events: Vec<EventType>,
    pub sealed: Sealed,
}

/// Changes to an endpoint; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebhookUpdate {
    pub url: Option<String>,
    pub events: Option<Vec<EventType>>,
    /// Enabling a disabled endpoint clears its reason and failing time and makes its pending
    /// messages due now; disabling an enabled one records `disabled by <actor>`.
    pub enabled: Option<bool>,
}

impl WebhookUpdate {
    /// The events as stored (a JSON array of their names), when they change.
    pub fn events_json(&self) -> Option<String> {
        self.events.as_ref().map(|events| {
            let names: Vec<&str> = events.iter().map(|e| e.as_str()).collect();
            // Serializing strings cannot fail.
            serde_json::to_string(&names).unwrap_or_default()
        })
    }

    /// The reason recorded when this update disables an endpoint.
    pub fn disabled_reason(actor: &str) -> String {
        format!("disabled by {actor}")
    }

    /// The audit detail of `webhook.update`: what changed, and whether the endpoint was enabled.
    pub fn audit_detail(&self, webhook_id: &str, was_enabled: bool) -> serde_json::Value {
        let mut detail = serde_json::json!({ "webhook_id": webhook_id, "was_enabled": was_enabled });
        if let Some(url) = &self.url {
            detail["url"] = url.as_str().into();
        }
        if let Some(events) = &self.events {
            detail["events"] = events.iter().map(|e| e.as_str()).collect::<Vec<_>>().into();
        }
        if let Some(enabled) = self.enabled {
            detail["enabled"] = enabled.into();
        }
        detail
    }
}

/// A message claimed for one delivery attempt.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The `webhook-id`: the same on every attempt.
    pub message_id: String,
    pub webhook_id: String,
    pub url: String,
    pub event_type: String,
    /// The body, exactly as signed and sent.
    pub payload: String,
    /// Attempts made before this one.
    pub attempts: u32,
    pub sealed: Sealed,
    /// The secret before the last rotation while its grace lasts: the attempt is signed with
    /// both.
    pub previous: Option<Sealed>,
}

/// Which of an endpoint's secrets a sealed value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SecretSlot {
    Current,
    /// The secret before the last rotation, kept until its grace ends.
    Previous,
}

/// One of an endpoint's secrets, sealed under the master key (the endpoint id is the additional
/// authenticated data of both).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedSecret {
    pub webhook_id: String,
    pub slot: SecretSlot,
    pub sealed: Sealed,
}

/// What [`crate::store::Store::prune_webhooks`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Delivered and given-up messages.
    pub messages: u64,
    /// Delivery-log rows.
    pub attempts: u64,
    /// Previous secrets whose grace had ended.
    pub secrets: u64,
}

/// What an attempt decided for its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx: done.
    Delivered,
    /// Try again at this Unix time.
    RetryAt(i64),
    /// The attempts are used up: the message is dropped (it stays in the log).
    GaveUp,
    /// The receiver answered 410 Gone: the endpoint is disabled.
    Disable,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::RetryAt(_) => "retry",
            Self::GaveUp => "gave_up",
            Self::Disable => "endpoint_disabled",
        }
    }
}

/// One attempt, as written to the delivery log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub message_id: String,
    pub webhook_id: String,
    pub event_type: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub at: i64,
    /// The HTTP status; 0 when there was no answer.
    pub status: u16,
    pub latency_ms: u64,
    pub error: String,
    /// [`Outcome::as_str`].
    pub outcome: String,
    /// When the next attempt is due (0 when there is none).
    pub next_attempt_at: i64,
}

/// The body of an event: `{"type", "timestamp", "data"}`.
#[derive(Debug, Serialize)]
struct Payload<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    timestamp: String,
    data: &'a serde_json::Value,
}

/// The JSON body of an event at Unix time `at`.
pub fn payload(event: EventType, at: i64, data: &serde_json::Value) -> String {
    let body = Payload { kind: event.as_str(), timestamp: rfc3339(at), data };
    // Serializing a struct of strings and a JSON value cannot fail.
    serde_json::to_string(&body).unwrap_or_default()
}

/// The data of a key event.
pub fn key_data(key_id: &str, consumer_id: &str) -> serde_json::Value {
    serde_json::json!({ "key_id": key_id, "consumer_id": consumer_id })
}

/// The data of a consumer event.
pub fn consumer_data(consumer_id: &str, name: &str) -> serde_json::Value {
    serde_json::json!({ "consumer_id": consumer_id, "name": name })
}

/// The data of a `webhook.disabled` event.
pub fn disabled_data(webhook_id: &str, url: &str, reason: &str) -> serde_json::Value {
    serde_json::json!({ "webhook_id": webhook_id, "url": url, "reason": reason })
}

/// The data of a `quota.exhausted` event: the consumer, the rule, the UTC day (`YYYY-MM-DD`)
/// and the start of the minute the first refusal was counted in.
pub fn quota_data(consumer_id: &str, rule: &str, first_refused_at: i64) -> serde_json::Value {
    let day = rfc3339(first_refused_at);
    serde_json::json!({
        "consumer_id": consumer_id,
        "rule": rule,
        "day": day.get(..10).unwrap_or_default(),
        "first_refused_at": rfc3339(first_refused_at),
    })
}

/// The start of the UTC day of a Unix time.
pub fn day_start(at: i64) -> i64 {
    at - at.rem_euclid(86_400)
}

/// Why an endpoint whose attempts have failed since `failing_since` is disabled at `at`.
pub fn failing_reason(failing_since: i64, at: i64, disable_after: i64) -> String {
    format!(
        "every attempt has failed since {} ({} s; endpoints failing for {} s are disabled)",
        rfc3339(failing_since),
        at - failing_since,
        disable_after
    )
}

/// Whether an endpoint named by a call exists and is enabled (`None`: no such endpoint): the
/// refusal of a call that needs it enabled (a replay), or nothing.
pub fn require_enabled(id: &str, enabled: Option<bool>) -> crate::Result<()> {
    match enabled {
        None => Err(crate::Error::NotFound { what: "webhook", id: id.to_owned() }),
        Some(false) => Err(crate::Error::FailedPrecondition(format!(
            "webhook {id:?} is disabled: nothing is delivered to it"
        ))),
        Some(true) => Ok(()),
    }
}

/// A new endpoint id: `wh_` + 16 base62 characters.
pub fn new_webhook_id() -> crate::Result<String> {
    Ok(format!("wh_{}", crate::secrets::random_base62(16)?))
}

/// A new message id: `msg_` + 24 base62 characters.
pub fn new_message_id() -> crate::Result<String> {
    Ok(format!("msg_{}", crate::secrets::random_base62(24)?))
}

/// Unix seconds as RFC 3339 in UTC (`2024-05-01T12:00:00Z`).
pub fn rfc3339(at: i64) -> String {
    let (year, month, day, hour, minute, second) = crate::clock::utc(at);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_format_as_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_714_564_799), "2024-05-01T11:59:59Z");
    }

    #[test]
    fn a_payload_is_thin_json_with_type_timestamp_and_data() {
        let body = payload(EventType::KeyRevoked, 0, &key_data("key_1", "con_1"));
        let value: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "type": "key.revoked",
                "timestamp": "1970-01-01T00:00:00Z",
                "data": { "key_id": "key_1", "consumer_id": "con_1" }
            })
        );
    }

    #[test]
    fn event_names_round_trip() {
        for event in EventType::ALL {
            assert_eq!(EventType::parse(event.as_str()), Some(event));
        }
        assert_eq!(EventType::parse("key.expiring"), Some(EventType::KeyExpiring));
        assert_eq!(EventType::parse("key.expire"), None);
    }
}
