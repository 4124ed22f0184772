//! Storage behind a trait: SQLite (one service) or PostgreSQL (several replicas). Methods are
//! synchronous; the service calls them from `tokio::task::spawn_blocking`. Every mutation writes its change-feed rows and its audit row in
//! the same transaction as the data, so a crash never leaves half of it.

pub mod migrate;
mod postgres;
mod sqlite;
#[cfg(test)]
pub(crate) mod suite;

pub use migrate::StoreLocation;
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

use crate::error::Result;
use crate::lifecycle::{Candidate, PolicyRecord, PolicyTarget, RotationPolicy, Transition};
use crate::master::Sealed;
use crate::model::{
    AuditEntry, AuditFilter, CachePurge, Change, Consumer, ConsumerPatch, Ctx, GatewayReport, Key, KeyCounts,
    KeyFilter, KeyPatch, KeyUsage, LimitUsage, Lookup, NewConsumer, NewKey, Rotation, SigningLookup,
    SubjectUsage, UsageApplied, UsagePoint, UsageQuery, UsageReport,
};
use crate::webhooks::{
    Attempt, NewWebhook, Outcome, Outgoing, Pruned, SealedSecret, SecretSlot, Webhook, WebhookUpdate,
};

/// Opens the store at `location` (creating or migrating its schema).
pub fn open(location: &StoreLocation) -> Result<std::sync::Arc<dyn Store>> {
    Ok(match location {
        StoreLocation::Sqlite(path) => std::sync::Arc::new(SqliteStore::open(path)?),
        StoreLocation::Postgres(url) => std::sync::Arc::new(PostgresStore::open(url)?),
    })
}

/// How far back a report's minutes are accepted, in seconds (31 days).
pub const USAGE_RETENTION: i64 = 31 * 86_400;

/// How long usage is kept by the minute, in seconds (48 hours): older minutes are rolled up into
/// hours (summed, then the minutes deleted) when reports come in.
pub const USAGE_MINUTES_KEPT: i64 = 48 * 3_600;

/// Most JWT subjects [`Store::caller_usage`] returns.
pub const MAX_SUBJECTS: usize = 100;

/// How long hourly usage is kept, in seconds (400 days).
pub const USAGE_HOURS_KEPT: i64 = 400 * 86_400;

/// How long a gateway's batch numbers are remembered to refuse a batch sent again, in seconds.
pub const USAGE_BATCH_MEMORY: i64 = 7 * 86_400;

/// Persistent state of the key service.
pub trait Store: Send + Sync + 'static {
    /// Fails with `AlreadyExists` when the id or the name is taken.
    fn create_consumer(&self, ctx: &Ctx, consumer: NewConsumer) -> Result<Consumer>;
    /// Looks up by id first, then by name.
    fn get_consumer(&self, id_or_name: &str) -> Result<Consumer>;
    /// Consumers after `after` (a position from an earlier page) in creation order.
    fn list_consumers(&self, after: Option<i64>, limit: usize) -> Result<Vec<Consumer>>;
    fn update_consumer(&self, ctx: &Ctx, id_or_name: &str, patch: ConsumerPatch) -> Result<Consumer>;
    /// Revokes every active key of the consumer, then deletes it. Returns how many keys it revoked.
    fn delete_consumer(&self, ctx: &Ctx, id_or_name: &str) -> Result<u32>;

    fn create_key(&self, ctx: &Ctx, key: NewKey) -> Result<Key>;
    fn get_key(&self, id: &str) -> Result<Key>;
    /// Keys after `after` (a position from an earlier page) in creation order.
    fn list_keys(&self, filter: &KeyFilter, after: Option<i64>, limit: usize) -> Result<Vec<Key>>;
    /// Keys neither revoked nor expired at `now` that expire at or before `until`, soonest
    /// first (an index on the expiry: no scan of every key).
    fn list_expiring_keys(&self, now: i64, until: i64, limit: usize) -> Result<Vec<Key>>;
    /// How many keys are active, revoked and expired at `now`. Reads every key row once.
    fn count_keys(&self, now: i64) -> Result<KeyCounts>;
    fn update_key(&self, ctx: &Ctx, id: &str, patch: KeyPatch) -> Result<Key>;
    /// Revoking a revoked key is a no-op that returns it unchanged.
    fn revoke_key(&self, ctx: &Ctx, id: &str, reason: &str) -> Result<Key>;
    fn rotate_key(&self, ctx: &Ctx, rotation: Rotation) -> Result<Key>;
    /// Publishes a cache purge on the change feed (and audits it); its feed position.
    fn purge_cache(&self, ctx: &Ctx, purge: &CachePurge) -> Result<u64>;

    /// Finds a secret by its keyed hash.
    /// Called on the service's async threads (the data plane's hot path): a point read that
    /// never waits behind other reads.
    fn lookup_secret(&self, hash: &[u8; 32]) -> Result<Lookup>;
    /// Records last-use times (key id, Unix seconds); older times never overwrite newer ones.
    fn record_usage(&self, used: &[(String, i64)]) -> Result<()>;
    /// Adds a gateway's batch of counts to the per-minute usage (once per `(gateway, batch)`: a
    /// batch sent again is a duplicate and adds nothing), raises the keys' `last_used_at` and
    /// records the gateway's report, all in one transaction. Counts of unknown keys and of minutes
    /// outside `[now − USAGE_RETENTION, now + 5 min]` are skipped. The first rate-limit refusal
    /// of a consumer by a rule in a UTC day writes one `quota.exhausted` event, once ever for
    /// that consumer, rule and day.
    fn report_usage(&self, report: &UsageReport, now: i64) -> Result<UsageApplied>;
    /// Usage over a window (one query, whatever the number of keys), the gateways that report,
    /// and the change feed's head, read in one snapshot.
    fn usage(&self, query: &UsageQuery) -> Result<(Vec<KeyUsage>, Vec<GatewayReport>, u64)>;
    /// The JWT subjects (most requests first, at most [`MAX_SUBJECTS`]; none when the query
    /// names keys or a consumer) and the rate-limit refusals per consumer and rule (the query's
    /// consumer's only; none when it names keys) in the query's window.
    fn caller_usage(&self, query: &UsageQuery) -> Result<(Vec<SubjectUsage>, Vec<LimitUsage>)>;

    /// Requests per bucket of `step` seconds (buckets start at `since`) and outcome over minutes
    /// in `[since, until)`: per key for `key_ids` (one query whatever their number), or summed
    /// over every key when `key_ids` is `None`.
    fn usage_series(
        &self,
        key_ids: Option<&[String]>,
        since: i64,
        until: i64,
        step: i64,
    ) -> Result<Vec<UsagePoint>>;

    /// Changes with `seq > after`, oldest first, and the feed head.
    fn list_changes(&self, after: u64, limit: usize) -> Result<(Vec<Change>, u64)>;
    /// Audit entries with `seq > after`, oldest first.
    fn list_audit(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>>;
    /// Audit entries matching `filter` with `seq < before` (all when `None`), newest first.
    fn list_audit_recent(
        &self,
        filter: &AuditFilter,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>>;
    /// How many audit entries this store has committed since it was opened (a running count in
    /// memory, not a query).
    fn audit_written(&self) -> u64;

    /// A key's signing material by key id.
    fn get_signing(&self, key_id: &str) -> Result<SigningLookup>;
    /// Every encrypted signing secret, by key id.
    fn list_sealed(&self) -> Result<Vec<(String, Sealed)>>;
    /// Replaces encrypted secrets (key id, the version it was read under, the new ciphertext)
    /// in one transaction; a row no longer under the read version is left alone. Returns how
    /// many rows changed.
    fn reseal(&self, updates: &[(String, u32, Sealed)]) -> Result<usize>;

    /// Registers a webhook endpoint (audited). Fails with `AlreadyExists` when the id is taken.
    fn create_webhook(&self, ctx: &Ctx, hook: NewWebhook) -> Result<Webhook>;
    /// Every endpoint, oldest first.
    fn list_webhooks(&self) -> Result<Vec<Webhook>>;
    /// Applies `update` to an endpoint (audited as `webhook.update`; see [`WebhookUpdate`]).
    /// Fails with `NotFound` when there is no such endpoint.
    fn update_webhook(&self, ctx: &Ctx, id: &str, update: &WebhookUpdate) -> Result<Webhook>;
    /// Deletes an endpoint and its undelivered messages (audited); its delivery log stays.
    fn delete_webhook(&self, ctx: &Ctx, id: &str) -> Result<()>;
    /// Claims up to `limit` messages due at `now` of enabled endpoints, oldest first: each is
    /// leased until `lease_until`, so no other caller (another replica) claims it meanwhile.
    /// Each carries its endpoint's previous secret too while that secret's grace lasts at `now`.
    fn claim_webhook_messages(&self, now: i64, lease_until: i64, limit: usize) -> Result<Vec<Outgoing>>;
    /// Records an attempt in the delivery log and applies its outcome to the message and the
    /// endpoint: a success ends the endpoint's failing time; a failure starts it if it has not
    /// started. An endpoint is disabled (audited as `webhook.disable`, and a `webhook.disabled`
    /// event written for the other endpoints) by a 410, or by a failure when its attempts have
    /// all failed for `disable_after` seconds or more; the attempt is then logged as
    /// `endpoint_disabled`.
    fn finish_webhook_attempt(&self, attempt: &Attempt, outcome: Outcome, disable_after: i64) -> Result<()>;
    /// The delivery log, newest first: one endpoint's, or every endpoint's.
    fn list_webhook_attempts(&self, webhook_id: Option<&str>, limit: usize) -> Result<Vec<Attempt>>;

    /// Sets the rotation policy of a consumer or a key, replacing its old one (audited as
    /// `policy.set`).
    fn set_rotation_policy(
        &self,
        ctx: &Ctx,
        target: &PolicyTarget,
        policy: &RotationPolicy,
    ) -> Result<PolicyRecord>;
    /// Removes a consumer's or a key's policy (audited as `policy.delete`); `NotFound` when it has none.
    fn delete_rotation_policy(&self, ctx: &Ctx, target: &PolicyTarget) -> Result<()>;
    /// A consumer's policy and its keys' (every policy when `None`), consumers' first.
    fn list_rotation_policies(&self, consumer: Option<&str>) -> Result<Vec<PolicyRecord>>;
    /// The policy that applies to a key: its own, else its consumer's.
    fn effective_policy(&self, key_id: &str) -> Result<Option<RotationPolicy>>;
    /// Unrevoked keys after position `after`, in position order, that have a policy, a previous
    /// secret, or an expiry in `[now − EXPIRED_LOOKBACK, now]`; with the transitions already
    /// recorded for each.
    fn lifecycle_candidates(&self, now: i64, after: i64, limit: usize) -> Result<Vec<Candidate>>;
    /// Applies a transition other than a rotation in one transaction with its notice, change,
    /// audit entry and event; `false` when it was recorded before (nothing is done again).
    fn apply_transition(&self, ctx: &Ctx, transition: &Transition) -> Result<bool>;
    /// Takes or renews the lease `name` for `holder` until `until`, unless another holder's is
    /// still running at `now`.
    fn take_lease(&self, name: &str, holder: &str, now: i64, until: i64) -> Result<bool>;
    /// Records when previous secrets (by key id) were last matched by a lookup.
    fn record_previous_use(&self, used: &[(String, i64)]) -> Result<()>;
    /// Takes (and deletes) the new secret an automatic rotation left for the key's owner,
    /// audited as `key.pickup`.
    fn take_pending_secret(&self, ctx: &Ctx, key_id: &str) -> Result<Option<Sealed>>;
    /// Gives an endpoint a new secret (audited as `webhook.rotate_secret`). The current one
    /// becomes the previous one and keeps signing until `previous_expires_at` (none is kept when
    /// that is not after `ctx.now`); an older previous secret ends now.
    fn rotate_webhook_secret(
        &self,
        ctx: &Ctx,
        id: &str,
        sealed: Sealed,
        previous_expires_at: i64,
    ) -> Result<Webhook>;
    /// Queues again, due now with a fresh count of attempts and their `webhook-id`s unchanged,
    /// every stored message created at or after `since` of one endpoint (which must be enabled)
    /// or of every enabled endpoint (audited as `webhook.replay`). Returns how many.
    fn replay_webhook_messages(&self, ctx: &Ctx, since: i64, webhook_id: Option<&str>) -> Result<u64>;
    /// Deletes up to `limit` delivered and given-up messages created before `before`, up to
    /// `limit` delivery-log rows from before `before`, and previous secrets whose grace has ended
    /// at `now`, in one transaction. Called again while it deletes `limit` of something.
    fn prune_webhooks(&self, before: i64, now: i64, limit: usize) -> Result<Pruned>;
    /// Every endpoint's sealed secrets, current and previous.
    fn list_webhook_secrets(&self) -> Result<Vec<SealedSecret>>;
    /// Replaces sealed endpoint secrets (endpoint, slot, the master-key version they were read
    /// under, the new value) in one transaction; one no longer under the read version is left
    /// alone. Returns how many changed.
    fn reseal_webhook_secrets(&self, updates: &[(String, SecretSlot, u32, Sealed)]) -> Result<usize>;

    /// Calls `wake` when another process commits a change to this store, from a task of the
    /// store's own, so that this replica's feed reader and webhook delivery need not wait for
    /// their poll. Nothing for a store only one process writes (SQLite).
    fn listen_for_commits(&self, wake: std::sync::Arc<dyn Fn() + Send + Sync>);
}
