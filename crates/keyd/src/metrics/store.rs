//! The store with every call timed into `tollgate_keyd_store_duration_seconds`, labelled with
//! the [`Store`] method's name (one of [`super::STORE_OPERATIONS`]).

use std::sync::Arc;
use std::time::Instant;

use super::Metrics;
use crate::error::Result;
use crate::lifecycle::{Candidate, PolicyRecord, PolicyTarget, RotationPolicy, Transition};
use crate::master::Sealed;
use crate::model::{
    AuditEntry, AuditFilter, CachePurge, Change, Consumer, ConsumerPatch, Ctx, GatewayReport, Key, KeyCounts,
    KeyFilter, KeyPatch, KeyUsage, Lookup, NewConsumer, NewKey, Rotation, SigningLookup, UsageApplied,
    UsagePoint, UsageQuery, UsageReport,
};
use crate::store::Store;
use crate::webhooks::{
    Attempt, NewWebhook, Outcome, Outgoing, Pruned, SealedSecret, SecretSlot, Webhook, WebhookUpdate,
};

/// A [`Store`] that times the calls of the store it wraps (see [`Metrics::timed_store`]).
pub struct TimedStore {
    inner: Arc<dyn Store>,
    metrics: Metrics,
}

impl TimedStore {
    /// `inner`, timed into `metrics`.
    pub fn new(inner: Arc<dyn Store>, metrics: Metrics) -> Self {
        Self { inner, metrics }
    }

    fn time<T>(&self, operation: &'static str, call: impl FnOnce(&dyn Store) -> T) -> T {
        let started = Instant::now();
        let out = call(self.inner.as_ref());
        self.metrics.observe_store(operation, started.elapsed());
        out
    }
}

impl Store for TimedStore {
    fn create_consumer(&self, ctx: &Ctx, consumer: NewConsumer) -> Result<Consumer> {
        self.time("create_consumer", |s| s.create_consumer(ctx, consumer))
    }
    fn get_consumer(&self, id_or_name: &str) -> Result<Consumer> {
        self.time("get_consumer", |s| s.get_consumer(id_or_name))
    }
    fn list_consumers(&self, after: Option<i64>, limit: usize) -> Result<Vec<Consumer>> {
        self.time("list_consumers", |s| s.list_consumers(after, limit))
    }
    fn update_consumer(&self, ctx: &Ctx, id_or_name: &str, patch: ConsumerPatch) -> Result<Consumer> {
        self.time("update_consumer", |s| s.update_consumer(ctx, id_or_name, patch))
    }
    fn delete_consumer(&self, ctx: &Ctx, id_or_name: &str) -> Result<u32> {
        self.time("delete_consumer", |s| s.delete_consumer(ctx, id_or_name))
    }
    fn create_key(&self, ctx: &Ctx, key: NewKey) -> Result<Key> {
        self.time("create_key", |s| s.create_key(ctx, key))
    }
    fn get_key(&self, id: &str) -> Result<Key> {
        self.time("get_key", |s| s.get_key(id))
    }
    fn list_keys(&self, filter: &KeyFilter, after: Option<i64>, limit: usize) -> Result<Vec<Key>> {
        self.time("list_keys", |s| s.list_keys(filter, after, limit))
    }
    fn list_expiring_keys(&self, now: i64, until: i64, limit: usize) -> Result<Vec<Key>> {
        self.time("list_expiring_keys", |s| s.list_expiring_keys(now, until, limit))
    }
    fn count_keys(&self, now: i64) -> Result<KeyCounts> {
        self.time("count_keys", |s| s.count_keys(now))
    }
    fn update_key(&self, ctx: &Ctx, id: &str, patch: KeyPatch) -> Result<Key> {
        self.time("update_key", |s| s.update_key(ctx, id, patch))
    }
    fn revoke_key(&self, ctx: &Ctx, id: &str, reason: &str) -> Result<Key> {
        self.time("revoke_key", |s| s.revoke_key(ctx, id, reason))
    }
    fn rotate_key(&self, ctx: &Ctx, rotation: Rotation) -> Result<Key> {
        self.time("rotate_key", |s| s.rotate_key(ctx, rotation))
    }
    fn purge_cache(&self, ctx: &Ctx, purge: &CachePurge) -> Result<u64> {
        self.time("purge_cache", |s| s.purge_cache(ctx, purge))
    }
    fn lookup_secret(&self, hash: &[u8; 32]) -> Result<Lookup> {
        self.time("lookup_secret", |s| s.lookup_secret(hash))
    }
    fn record_usage(&self, used: &[(String, i64)]) -> Result<()> {
        self.time("record_usage", |s| s.record_usage(used))
    }
    fn report_usage(&self, report: &UsageReport, now: i64) -> Result<UsageApplied> {
        self.time("report_usage", |s| s.report_usage(report, now))
    }
    fn usage(&self, query: &UsageQuery) -> Result<(Vec<KeyUsage>, Vec<GatewayReport>, u64)> {
        self.time("usage", |s| s.usage(query))
    }
    fn caller_usage(
        &self,
        query: &UsageQuery,
    ) -> Result<(Vec<crate::model::SubjectUsage>, Vec<crate::model::LimitUsage>)> {
        self.time("caller_usage", |s| s.caller_usage(query))
    }
    fn usage_series(
        &self,
        key_ids: Option<&[String]>,
        since: i64,
        until: i64,
        step: i64,
    ) -> Result<Vec<UsagePoint>> {
        self.time("usage_series", |s| s.usage_series(key_ids, since, until, step))
    }
    fn list_changes(&self, after: u64, limit: usize) -> Result<(Vec<Change>, u64)> {
        self.time("list_changes", |s| s.list_changes(after, limit))
    }
    fn list_audit(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>> {
        self.time("list_audit", |s| s.list_audit(after, limit))
    }
    fn list_audit_recent(
        &self,
        filter: &AuditFilter,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>> {
        self.time("list_audit_recent", |s| s.list_audit_recent(filter, before, limit))
    }
    /// A counter in memory, not a store call: not timed.
    fn audit_written(&self) -> u64 {
        self.inner.audit_written()
    }
    fn get_signing(&self, key_id: &str) -> Result<SigningLookup> {
        self.time("get_signing", |s| s.get_signing(key_id))
    }
    fn list_sealed(&self) -> Result<Vec<(String, Sealed)>> {
        self.time("list_sealed", |s| s.list_sealed())
    }
    fn reseal(&self, updates: &[(String, u32, Sealed)]) -> Result<usize> {
        self.time("reseal", |s| s.reseal(updates))
    }
    fn create_webhook(&self, ctx: &Ctx, hook: NewWebhook) -> Result<Webhook> {
        self.time("create_webhook", |s| s.create_webhook(ctx, hook))
    }
    fn list_webhooks(&self) -> Result<Vec<Webhook>> {
        self.time("list_webhooks", |s| s.list_webhooks())
    }
    fn update_webhook(&self, ctx: &Ctx, id: &str, update: &WebhookUpdate) -> Result<Webhook> {
        self.time("update_webhook", |s| s.update_webhook(ctx, id, update))
    }
    fn delete_webhook(&self, ctx: &Ctx, id: &str) -> Result<()> {
        self.time("delete_webhook", |s| s.delete_webhook(ctx, id))
    }
    fn claim_webhook_messages(&self, now: i64, lease_until: i64, limit: usize) -> Result<Vec<Outgoing>> {
        self.time("claim_webhook_messages", |s| s.claim_webhook_messages(now, lease_until, limit))
    }
    fn finish_webhook_attempt(&self, attempt: &Attempt, outcome: Outcome, disable_after: i64) -> Result<()> {
        self.time("finish_webhook_attempt", |s| s.finish_webhook_attempt(attempt, outcome, disable_after))
    }
    fn list_webhook_attempts(&self, webhook_id: Option<&str>, limit: usize) -> Result<Vec<Attempt>> {
        self.time("list_webhook_attempts", |s| s.list_webhook_attempts(webhook_id, limit))
    }
    fn set_rotation_policy(
        &self,
        ctx: &Ctx,
        target: &PolicyTarget,
        policy: &RotationPolicy,
    ) -> Result<PolicyRecord> {
        self.time("set_rotation_policy", |s| s.set_rotation_policy(ctx, target, policy))
    }
    fn delete_rotation_policy(&self, ctx: &Ctx, target: &PolicyTarget) -> Result<()> {
        self.time("delete_rotation_policy", |s| s.delete_rotation_policy(ctx, target))
    }
    fn list_rotation_policies(&self, consumer: Option<&str>) -> Result<Vec<PolicyRecord>> {
        self.time("list_rotation_policies", |s| s.list_rotation_policies(consumer))
    }
    fn effective_policy(&self, key_id: &str) -> Result<Option<RotationPolicy>> {
        self.time("effective_policy", |s| s.effective_policy(key_id))
    }
    fn lifecycle_candidates(&self, now: i64, after: i64, limit: usize) -> Result<Vec<Candidate>> {
        self.time("lifecycle_candidates", |s| s.lifecycle_candidates(now, after, limit))
    }
    fn apply_transition(&self, ctx: &Ctx, transition: &Transition) -> Result<bool> {
        self.time("apply_transition", |s| s.apply_transition(ctx, transition))
    }
    fn take_lease(&self, name: &str, holder: &str, now: i64, until: i64) -> Result<bool> {
        self.time("take_lease", |s| s.take_lease(name, holder, now, until))
    }
    fn record_previous_use(&self, used: &[(String, i64)]) -> Result<()> {
        self.time("record_previous_use", |s| s.record_previous_use(used))
    }
    fn take_pending_secret(&self, ctx: &Ctx, key_id: &str) -> Result<Option<Sealed>> {
        self.time("take_pending_secret", |s| s.take_pending_secret(ctx, key_id))
    }
    fn rotate_webhook_secret(
        &self,
        ctx: &Ctx,
        id: &str,
        sealed: Sealed,
        previous_expires_at: i64,
    ) -> Result<Webhook> {
        self.time("rotate_webhook_secret", |s| s.rotate_webhook_secret(ctx, id, sealed, previous_expires_at))
    }
    fn replay_webhook_messages(&self, ctx: &Ctx, since: i64, webhook_id: Option<&str>) -> Result<u64> {
        self.time("replay_webhook_messages", |s| s.replay_webhook_messages(ctx, since, webhook_id))
    }
    fn prune_webhooks(&self, before: i64, now: i64, limit: usize) -> Result<Pruned> {
        self.time("prune_webhooks", |s| s.prune_webhooks(before, now, limit))
    }
    fn list_webhook_secrets(&self) -> Result<Vec<SealedSecret>> {
        self.time("list_webhook_secrets", |s| s.list_webhook_secrets())
    }
    fn reseal_webhook_secrets(&self, updates: &[(String, SecretSlot, u32, Sealed)]) -> Result<usize> {
        self.time("reseal_webhook_secrets", |s| s.reseal_webhook_secrets(updates))
    }
    // Starts a task; nothing to time.
    fn listen_for_commits(&self, wake: std::sync::Arc<dyn Fn() + Send + Sync>) {
        self.inner.listen_for_commits(wake);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::metrics::STORE_OPERATIONS;
    use crate::store::SqliteStore;

    #[test]
    fn every_store_call_is_timed_under_its_method_name() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let store = metrics.timed_store(Arc::new(SqliteStore::open(&dir.path().join("keys.db")).unwrap()));
        let ctx = Ctx { actor: "test".into(), now: 1_000 };
        // Every method once; failures (unknown ids) are timed too.
        let _ = store.create_consumer(
            &ctx,
            NewConsumer { id: "c".into(), name: "c".into(), metadata: Default::default() },
        );
        let _ = store.get_consumer("c");
        let _ = store.list_consumers(None, 10);
        let _ = store.update_consumer(&ctx, "c", ConsumerPatch::default());
        let _ = store.delete_consumer(&ctx, "c");
        let _ = store.create_key(
            &ctx,
            NewKey {
                id: "k".into(),
                consumer: "nobody".into(),
                create_consumer: None,
                name: String::new(),
                scopes: Vec::new(),
                metadata: Default::default(),
                rate_limit: None,
                expires_at: 0,
                secret: crate::model::StoredSecret { hash: [1; 32], display_prefix: "tgk_x".into() },
                signing: None,
            },
        );
        let _ = store.get_key("k");
        let filter = KeyFilter { consumer_id: None, status: None, now: 1_000 };
        let _ = store.list_keys(&filter, None, 10);
        let _ = store.list_expiring_keys(1_000, 2_000, 10);
        let _ = store.count_keys(1_000);
        let _ = store.update_key(&ctx, "k", KeyPatch::default());
        let _ = store.revoke_key(&ctx, "k", "test");
        let _ = store.rotate_key(
            &ctx,
            Rotation {
                key_id: "k".into(),
                secret: crate::model::StoredSecret { hash: [2; 32], display_prefix: "tgk_y".into() },
                grace_end: 0,
                pending: None,
                expect_birth: None,
            },
        );
        let purge = crate::model::CachePurge {
            target: crate::model::PurgeTarget::All,
            host: String::new(),
            soft: false,
        };
        let _ = store.purge_cache(&ctx, &purge);
        let _ = store.lookup_secret(&[1; 32]);
        let _ = store.record_usage(&[("k".into(), 1)]);
        let report = UsageReport { gateway: "gw".into(), batch: 1, feed_seq: 0, counts: Vec::new() };
        let _ = store.report_usage(&report, 1_000);
        let _ = store.usage(&UsageQuery { since: 0, until: 60, ..Default::default() });
        let _ = store.usage_series(None, 0, 3_600, 60);
        let _ = store.caller_usage(&UsageQuery { since: 0, until: 60, ..Default::default() });
        let _ = store.list_changes(0, 10);
        let _ = store.list_audit(0, 10);
        let _ = store.list_audit_recent(&AuditFilter::default(), None, 10);
        let _ = store.audit_written();
        let _ = store.get_signing("k");
        let _ = store.list_sealed();
        let _ = store.reseal(&[]);
        let hook = crate::webhooks::NewWebhook {
            id: "wh".into(),
            url: "https://example.com/".into(),
            events: vec![crate::webhooks::EventType::KeyCreated],
            sealed: Sealed { version: 1, nonce: [0; 12], ciphertext: vec![1] },
        };
        let _ = store.create_webhook(&ctx, hook);
        let _ = store.list_webhooks();
        let _ = store.update_webhook(&ctx, "wh", &WebhookUpdate::default());
        let _ = store.delete_webhook(&ctx, "wh");
        let _ = store.claim_webhook_messages(1_000, 1_030, 10);
        let attempt = Attempt {
            message_id: "m".into(),
            webhook_id: "wh".into(),
            event_type: "key.created".into(),
            attempt: 1,
            at: 1_000,
            status: 200,
            latency_ms: 1,
            error: String::new(),
            outcome: "delivered".into(),
            next_attempt_at: 0,
        };
        let _ = store.finish_webhook_attempt(&attempt, Outcome::Delivered, 60);
        let _ = store.list_webhook_attempts(None, 10);
        let policy = crate::lifecycle::RotationPolicy {
            max_age: 86_400,
            notify_before: Vec::new(),
            grace: 0,
            mode: crate::lifecycle::PolicyMode::Notify,
            revoke_unused_previous_after: 0,
        };
        let _ = store.set_rotation_policy(&ctx, &PolicyTarget::Consumer("c".into()), &policy);
        let _ = store.delete_rotation_policy(&ctx, &PolicyTarget::Consumer("c".into()));
        let _ = store.list_rotation_policies(None);
        let _ = store.effective_policy("k");
        let _ = store.lifecycle_candidates(1_000, 0, 10);
        let transition = Transition::EndGrace {
            key_id: "k".into(),
            consumer_id: "c".into(),
            rotated_at: 1,
            reason: "elapsed",
        };
        let _ = store.apply_transition(&ctx, &transition);
        let _ = store.take_lease("l", "h", 1_000, 1_030);
        let _ = store.record_previous_use(&[("k".into(), 1)]);
        let _ = store.take_pending_secret(&ctx, "k");
        let sealed = Sealed { version: 1, nonce: [0; 12], ciphertext: vec![1] };
        let _ = store.rotate_webhook_secret(&ctx, "wh", sealed, 0);
        let _ = store.replay_webhook_messages(&ctx, 0, None);
        let _ = store.prune_webhooks(0, 1_000, 10);
        let _ = store.list_webhook_secrets();
        let _ = store.reseal_webhook_secrets(&[]);

        let text = metrics.encode();
        let prefix = "tollgate_keyd_store_duration_seconds_count{operation=\"";
        let timed: BTreeSet<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .map(|l| {
                let (operation, count) = l.split_once("\"} ").unwrap();
                assert_eq!(count, "1", "{operation} timed {count} times");
                operation
            })
            .collect();
        assert_eq!(timed, STORE_OPERATIONS.into_iter().collect::<BTreeSet<_>>());
    }
}
