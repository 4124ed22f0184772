//! Plain domain types shared by the service and the storage back ends.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Free-form string metadata of a consumer or key.
pub type Metadata = BTreeMap<String, String>;

/// Unit of a rate limit: the core's, stored by its snake_case name.
pub use tollgate_core::rate_limit::bucket::Period;

/// One token bucket: `rate` requests per `period`, up to `burst` at once (0 = same as rate).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    pub rate: u64,
    pub period: Period,
    pub burst: u64,
}

/// A key's rate-limit tier.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimitPolicy {
    pub tier: String,
    pub limits: Vec<RateLimit>,
}

/// A caller that owns keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumer {
    pub id: String,
    pub name: String,
    pub metadata: Metadata,
    pub created_at: i64,
    /// Stable listing position (creation order), used for paging.
    pub position: i64,
}

/// A key's state, derived at read time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus {
    Active,
    Revoked,
    Expired,
}

/// `true` when a time limit (`0` = none) has passed at `now`.
pub fn has_passed(limit: i64, now: i64) -> bool {
    limit != 0 && now >= limit
}

/// The earlier of two time limits where `0` means none.
pub fn earliest(a: i64, b: i64) -> i64 {
    match (a, b) {
        (0, x) | (x, 0) => x,
        (a, b) => a.min(b),
    }
}

/// An API key as stored (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub id: String,
    pub consumer_id: String,
    pub name: String,
    pub display_prefix: String,
    pub scopes: Vec<String>,
    pub metadata: Metadata,
    pub rate_limit: Option<RateLimitPolicy>,
    pub expires_at: i64,
    pub created_at: i64,
    pub last_used_at: i64,
    pub revoked_at: i64,
    pub revoke_reason: String,
    pub previous_display_prefix: String,
    pub previous_expires_at: i64,
    pub rotated_at: i64,
    /// Stable listing position (creation order), used for paging.
    pub position: i64,
    /// The HTTP message signature algorithm bound to the key, if it has signing material.
    pub signing: Option<SigningAlgorithm>,
}

/// The HTTP message signature algorithms a key's signing material is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningAlgorithm {
    HmacSha256,
    Ed25519,
}

impl SigningAlgorithm {
    /// Stable name, as stored (the RFC 9421 algorithm name).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HmacSha256 => "hmac-sha256",
            Self::Ed25519 => "ed25519",
        }
    }

    /// Inverse of [`SigningAlgorithm::as_str`].
    pub fn parse(text: &str) -> Option<Self> {
        [Self::HmacSha256, Self::Ed25519].into_iter().find(|a| a.as_str() == text)
    }
}

/// Signing material to store with a new key: an encrypted HMAC secret or an Ed25519 public key.
#[derive(Debug, Clone)]
pub enum NewSigning {
    Hmac(crate::master::Sealed),
    Ed25519([u8; 32]),
}

impl NewSigning {
    pub fn algorithm(&self) -> SigningAlgorithm {
        match self {
            Self::Hmac(_) => SigningAlgorithm::HmacSha256,
            Self::Ed25519(_) => SigningAlgorithm::Ed25519,
        }
    }
}

/// A key with its signing material, and the change-feed head read in the same snapshot.
#[derive(Debug, Clone)]
pub struct SigningLookup {
    pub found: Option<(Key, NewSigning)>,
    pub head_seq: u64,
}

impl Key {
    /// Revoked wins over expired.
    pub fn status(&self, now: i64) -> KeyStatus {
        if self.revoked_at != 0 {
            KeyStatus::Revoked
        } else if has_passed(self.expires_at, now) {
            KeyStatus::Expired
        } else {
            KeyStatus::Active
        }
    }
}

/// What happened, as published on the change feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    KeyCreated,
    KeyUpdated,
    KeyRevoked,
    KeyRotated,
    ConsumerUpdated,
    ConsumerDeleted,
    CachePurged,
    /// A `key.expiring` notice was sent (the key itself is unchanged).
    KeyExpiring,
    /// The key expired: its own expiry passed, or its policy's `max_age` in notify mode.
    KeyExpired,
    /// The previous secret of a rotated key stopped working.
    KeyGraceEnded,
}

impl ChangeKind {
    /// Stable name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::KeyCreated => "key_created",
            Self::KeyUpdated => "key_updated",
            Self::KeyRevoked => "key_revoked",
            Self::KeyRotated => "key_rotated",
            Self::ConsumerUpdated => "consumer_updated",
            Self::ConsumerDeleted => "consumer_deleted",
            Self::CachePurged => "cache_purged",
            Self::KeyExpiring => "key_expiring",
            Self::KeyExpired => "key_expired",
            Self::KeyGraceEnded => "key_grace_ended",
        }
    }

    /// Inverse of [`ChangeKind::as_str`].
    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::KeyCreated,
            Self::KeyUpdated,
            Self::KeyRevoked,
            Self::KeyRotated,
            Self::ConsumerUpdated,
            Self::ConsumerDeleted,
            Self::CachePurged,
            Self::KeyExpiring,
            Self::KeyExpired,
            Self::KeyGraceEnded,
        ]
        .into_iter()
        .find(|k| k.as_str() == text)
    }
}

/// One change-feed entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub seq: u64,
    pub kind: ChangeKind,
    /// Empty for consumer-level changes.
    pub key_id: String,
    pub consumer_id: String,
    pub at: i64,
    /// What a `CachePurged` change purges.
    pub purge: Option<CachePurge>,
}

/// What a cache purge matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PurgeTarget {
    Tag(String),
    Prefix(String),
    Url(String),
    All,
}

/// A purge of the gateways' caches, as the change feed carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachePurge {
    pub target: PurgeTarget,
    /// Empty: any host.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
    #[serde(default)]
    pub soft: bool,
}

/// One audit-log entry: an admin mutation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEntry {
    pub seq: u64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub key_id: String,
    pub consumer_id: String,
    pub detail: serde_json::Value,
}

/// Who does a mutation, and when.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub actor: String,
    pub now: i64,
}

/// A consumer to create.
#[derive(Debug, Clone)]
pub struct NewConsumer {
    pub id: String,
    pub name: String,
    pub metadata: Metadata,
}

/// Replacement values for a consumer.
#[derive(Debug, Clone, Default)]
pub struct ConsumerPatch {
    pub name: Option<String>,
    pub metadata: Option<Metadata>,
}

/// A key to create. The secret is already hashed and peppered.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub id: String,
    /// A consumer id or name.
    pub consumer: String,
    /// Created in the same transaction when `consumer` does not resolve.
    pub create_consumer: Option<NewConsumer>,
    pub name: String,
    pub scopes: Vec<String>,
    pub metadata: Metadata,
    pub rate_limit: Option<RateLimitPolicy>,
    pub expires_at: i64,
    pub secret: StoredSecret,
    /// Signing material for HTTP message signatures, if any.
    pub signing: Option<NewSigning>,
}

/// A secret as stored: the keyed hash and the prefix that is safe to show.
#[derive(Debug, Clone)]
pub struct StoredSecret {
    pub hash: [u8; 32],
    pub display_prefix: String,
}

/// Replacement values for a key (`None` = keep).
#[derive(Debug, Clone, Default)]
pub struct KeyPatch {
    pub name: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub metadata: Option<Metadata>,
    pub rate_limit: Option<Option<RateLimitPolicy>>,
    pub expires_at: Option<i64>,
}

/// A new secret for an existing key; the previous one works until `grace_end`.
#[derive(Debug, Clone)]
pub struct Rotation {
    pub key_id: String,
    pub secret: StoredSecret,
    pub grace_end: i64,
    /// An automatic rotation's new secret, sealed for its owner to pick up with the previous
    /// one during the grace period. A rotation without it drops any uncollected one.
    pub pending: Option<crate::master::Sealed>,
    /// Rotate only while the key's current secret was born then (see
    /// [`crate::lifecycle::birth`]); otherwise fail with `FailedPrecondition`.
    pub expect_birth: Option<i64>,
}

/// Which keys to list.
#[derive(Debug, Clone, Default)]
pub struct KeyFilter {
    pub consumer_id: Option<String>,
    pub status: Option<KeyStatus>,
    pub now: i64,
}

/// A secret found by its keyed hash.
#[derive(Debug, Clone)]
pub struct SecretMatch {
    pub key: Key,
    /// The display prefix of the matched secret (the previous one during a rotation grace).
    pub display_prefix: String,
    /// When this secret stops working regardless of the key's expiry (0 = never).
    pub expires_at: i64,
}

/// Result of a secret lookup, with the change-feed head read in the same snapshot.
#[derive(Debug, Clone)]
pub struct Lookup {
    pub found: Option<SecretMatch>,
    pub head_seq: u64,
}

/// Requests of one key in one minute with one outcome, as a gateway counted them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageCount {
    /// The caller: exactly one of a key, a JWT subject (`<iss> <sub>`), or a consumer and the
    /// rate-limit rule that refused it.
    pub key_id: String,
    pub subject: String,
    pub consumer_id: String,
    pub rule: String,
    /// The start of the minute (a multiple of 60).
    pub minute: i64,
    /// `allowed`, or why the request was refused.
    pub outcome: String,
    pub count: u64,
}

/// One gateway's batch of counts. Each `(gateway, batch)` is applied once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageReport {
    pub gateway: String,
    pub batch: u64,
    /// The change-feed sequence the gateway has applied.
    pub feed_seq: u64,
    pub counts: Vec<UsageCount>,
}

/// What applying a [`UsageReport`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageApplied {
    /// The batch had been applied before: nothing was counted.
    pub duplicate: bool,
    /// Counts left out: unknown keys, or minutes out of range.
    pub skipped: u32,
}

/// Which usage to read: minutes in `[since, until)`, of `key_ids` (or of `consumer_id`'s keys,
/// or of every key with usage).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageQuery {
    pub key_ids: Vec<String>,
    pub consumer_id: Option<String>,
    pub since: i64,
    pub until: i64,
}

/// A JWT subject's requests over a window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubjectUsage {
    pub subject: String,
    pub outcomes: std::collections::BTreeMap<String, u64>,
}

/// Requests a rate-limit rule refused to a consumer over a window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LimitUsage {
    pub consumer_id: String,
    pub rule: String,
    pub limited: u64,
}

/// One key's usage over a window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyUsage {
    pub key_id: String,
    pub consumer_id: String,
    /// Requests by outcome (`allowed` and each refusal reason).
    pub outcomes: std::collections::BTreeMap<String, u64>,
    pub last_used_at: i64,
}

/// A gateway that reports usage, and how far it had applied the change feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayReport {
    pub gateway: String,
    pub last_report_at: i64,
    pub feed_seq: u64,
}

/// Which audit entries to list: each field given must match exactly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub action: Option<String>,
    pub actor: Option<String>,
    pub key_id: Option<String>,
    pub consumer_id: Option<String>,
}

/// Requests with one outcome in one time bucket, of one key (or of every key, `key_id` empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsagePoint {
    pub key_id: String,
    /// The start of the bucket.
    pub bucket: i64,
    pub outcome: String,
    pub count: u64,
}

/// How many keys are in each [`KeyStatus`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyCounts {
    pub active: u64,
    pub revoked: u64,
    pub expired: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Policies are stored as JSON in the database: the period names must never change.
    #[test]
    fn stored_rate_limit_policy_names_each_period_in_snake_case() {
        let limit = |rate, period| RateLimit { rate, period, burst: 0 };
        let policy = RateLimitPolicy {
            tier: "gold".into(),
            limits: vec![
                limit(1, Period::Second),
                limit(2, Period::Minute),
                limit(3, Period::Hour),
                limit(4, Period::Day),
            ],
        };
        let json = serde_json::to_string(&policy).unwrap();
        assert_eq!(
            json,
            r#"{"tier":"gold","limits":[{"rate":1,"period":"second","burst":0},{"rate":2,"period":"minute","burst":0},{"rate":3,"period":"hour","burst":0},{"rate":4,"period":"day","burst":0}]}"#
        );
        assert_eq!(serde_json::from_str::<RateLimitPolicy>(&json).unwrap(), policy);
    }
}
