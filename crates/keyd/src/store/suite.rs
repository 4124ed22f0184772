//! The store test suite, run against every back end: each test is a function over `&dyn Store`,
//! and [`store_suite!`] makes a `#[test]` of each for a back end, given a function that opens a
//! fresh, empty store for a test name.

use std::collections::BTreeSet;

use super::Store;
use crate::error::Error;
use crate::master::Sealed;
use crate::model::{AuditFilter, UsagePoint};
use crate::model::{
    CachePurge, ChangeKind, ConsumerPatch, Ctx, KeyCounts, KeyFilter, KeyPatch, KeyStatus, KeyUsage,
    NewConsumer, NewKey, NewSigning, PurgeTarget, Rotation, StoredSecret, UsageApplied, UsageCount,
    UsageQuery, UsageReport,
};
use crate::webhooks::{
    Attempt, EventType, NewWebhook, Outcome, Outgoing, SealedSecret, SecretSlot, WebhookUpdate,
};

mod lifecycle;
pub use lifecycle::*;

/// Makes one `#[test]` per suite test; `$open` takes the test's name and returns something that
/// dereferences to a fresh store.
macro_rules! store_suite {
    ($open:path) => {
        $crate::store::suite::store_suite!(@tests $open;
            a_cache_purge_is_on_the_feed_with_what_it_purges_and_audited,
            rotation_policies_are_set_listed_replaced_and_deleted,
            lifecycle_candidates_are_keys_with_a_policy_a_previous_secret_or_a_recent_expiry,
            lifecycle_transitions_happen_once_with_their_change_audit_and_event,
            a_grace_ends_once_and_the_previous_secret_stops_matching,
            an_automatic_rotation_leaves_a_sealed_secret_picked_up_once,
            a_lease_is_held_by_one_holder_until_it_runs_out,
            a_failed_mutation_leaves_no_partial_rows,
            lookup_finds_current_and_previous_secret_and_reads_the_head,
            a_usage_batch_is_counted_once_however_often_it_is_sent,
            counts_of_unknown_keys_and_minutes_out_of_range_are_skipped,
            usage_is_read_for_a_window_by_key_or_by_consumer,
            keys_are_counted_by_status_at_the_given_time,
            audit_written_counts_committed_audit_rows_only,
            usage_never_moves_backwards,
            consumers_are_found_by_id_or_name_and_names_stay_unique,
            deleting_a_consumer_revokes_its_keys_on_the_feed,
            keys_are_listed_by_status_and_consumer_in_pages,
            revoked_and_expired_keys_refuse_changes_and_revoking_twice_changes_nothing,
            signing_material_is_stored_read_and_resealed,
            sixteen_writers_leave_a_feed_without_gaps,
            subjects_and_rate_limit_refusals_are_counted_and_read_for_a_window,
            old_minutes_are_rolled_up_into_hours_and_still_counted,
            usage_series_buckets_per_key_or_summed_over_every_key,
            recent_audit_is_newest_first_and_filtered,
            expiring_keys_are_soonest_first_without_revoked_or_expired_ones,
            webhook_events_are_written_with_their_mutation_once_per_subscribed_endpoint,
            webhook_messages_keep_their_id_across_attempts_and_a_410_disables_the_endpoint,
            an_endpoint_is_disabled_by_hand_enabled_again_and_changed,
            a_rotated_webhook_secret_signs_beside_the_new_one_until_its_grace_ends,
            webhook_secrets_current_and_previous_are_listed_and_resealed,
            a_replay_queues_stored_messages_again_with_their_ids,
            an_endpoint_failing_too_long_is_disabled_and_the_other_endpoints_are_told,
            old_delivered_messages_and_attempts_are_pruned_in_batches,
            quota_exhausted_is_written_once_per_consumer_rule_and_day,
        );
    };
    (@tests $open:path; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let store = $open(stringify!($name));
                $crate::store::suite::$name(&*store);
            }
        )*
    };
}
pub(crate) use store_suite;

/// The details of the audit entries of one action, oldest first.
pub fn audit_details(store: &dyn Store, action: &str) -> Vec<serde_json::Value> {
    store.list_audit(0, 1_000).unwrap().into_iter().filter(|e| e.action == action).map(|e| e.detail).collect()
}

pub fn ctx() -> Ctx {
    Ctx { actor: "test".into(), now: 1_000 }
}

pub fn new_key(id: &str, consumer: &str, hash: u8) -> NewKey {
    new_key_hashed(id, consumer, [hash; 32])
}

fn new_key_hashed(id: &str, consumer: &str, hash: [u8; 32]) -> NewKey {
    NewKey {
        id: id.into(),
        consumer: consumer.into(),
        create_consumer: Some(NewConsumer {
            id: consumer.into(),
            name: consumer.into(),
            metadata: Default::default(),
        }),
        name: String::new(),
        scopes: vec!["read".into()],
        metadata: Default::default(),
        rate_limit: None,
        expires_at: 0,
        secret: StoredSecret { hash, display_prefix: "tgk_abcdef".into() },
        signing: None,
    }
}

fn count(key_id: &str, minute: i64, outcome: &str, count: u64) -> UsageCount {
    UsageCount { key_id: key_id.into(), minute, outcome: outcome.into(), count, ..Default::default() }
}

/// Requests a rate-limit rule refused to a consumer in a minute.
fn limited(consumer: &str, rule: &str, minute: i64, n: u64) -> UsageCount {
    UsageCount {
        consumer_id: consumer.into(),
        rule: rule.into(),
        minute,
        outcome: "limited".into(),
        count: n,
        ..Default::default()
    }
}

fn report(gateway: &str, batch: u64, counts: Vec<UsageCount>) -> UsageReport {
    UsageReport { gateway: gateway.into(), batch, feed_seq: 7, counts }
}

const NOW: i64 = 1_800_000_000; // a multiple of 60

pub fn a_cache_purge_is_on_the_feed_with_what_it_purges_and_audited(store: &dyn Store) {
    let purge = CachePurge { target: PurgeTarget::Tag("t1".into()), host: String::new(), soft: true };
    let seq = store.purge_cache(&ctx(), &purge).unwrap();
    let (changes, head) = store.list_changes(seq - 1, 10).unwrap();
    assert_eq!(head, seq);
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].kind, ChangeKind::CachePurged);
    assert_eq!(changes[0].purge.as_ref(), Some(&purge));
    assert_eq!(changes[0].key_id, "");
    let audit = store.list_audit(0, 10).unwrap();
    assert!(audit.iter().any(|a| a.action == "cache.purge"), "{audit:?}");
    // Every other kind carries no purge.
    store.create_key(&ctx(), new_key("key_1", "alice", 1)).unwrap();
    let (changes, _) = store.list_changes(seq, 10).unwrap();
    assert_eq!((changes[0].kind, changes[0].purge.clone()), (ChangeKind::KeyCreated, None));
}

pub fn a_failed_mutation_leaves_no_partial_rows(store: &dyn Store) {
    store.create_key(&ctx(), new_key("key_1", "alice", 1)).unwrap();
    let audit_before = store.list_audit(0, 100).unwrap().len();
    let (_, head_before) = store.list_changes(0, 100).unwrap();

    // Same key id: the key insert fails after the consumer insert in the same transaction.
    let err = store.create_key(&ctx(), new_key("key_1", "bob", 2)).unwrap_err();
    assert!(matches!(err, Error::Internal(_)), "{err:?}");
    assert!(matches!(store.get_consumer("bob"), Err(Error::NotFound { .. })));
    assert_eq!(store.list_audit(0, 100).unwrap().len(), audit_before);
    assert_eq!(store.list_changes(0, 100).unwrap().1, head_before);
    assert!(store.lookup_secret(&[2; 32]).unwrap().found.is_none());
    // The next change takes the next position: the failed one left no hole.
    store.revoke_key(&ctx(), "key_1", "test").unwrap();
    let (changes, head) = store.list_changes(head_before, 100).unwrap();
    assert_eq!((changes.len(), changes[0].seq, head), (1, head_before + 1, head_before + 1));
}

pub fn lookup_finds_current_and_previous_secret_and_reads_the_head(store: &dyn Store) {
    let missing = store.lookup_secret(&[1; 32]).unwrap();
    assert!(missing.found.is_none());
    assert_eq!(missing.head_seq, 0);
    store.create_key(&ctx(), new_key("key_1", "alice", 1)).unwrap();
    let rotation = Rotation {
        key_id: "key_1".into(),
        secret: StoredSecret { hash: [9; 32], display_prefix: "tgk_zzzzzz".into() },
        grace_end: 1_060,
        pending: None,
        expect_birth: None,
    };
    let key = store.rotate_key(&ctx(), rotation).unwrap();
    assert_eq!(key.previous_display_prefix, "tgk_abcdef");
    assert_eq!(key.display_prefix, "tgk_zzzzzz");
    assert_eq!((key.previous_expires_at, key.rotated_at), (1_060, 1_000));

    let old = store.lookup_secret(&[1; 32]).unwrap();
    let found = old.found.unwrap();
    assert_eq!((found.expires_at, found.display_prefix.as_str()), (1_060, "tgk_abcdef"));
    assert_eq!(found.key, key);
    assert_eq!(old.head_seq, 2);
    let new = store.lookup_secret(&[9; 32]).unwrap().found.unwrap();
    assert_eq!(new.expires_at, 0);
    // A second rotation ends the first secret at once.
    let rotation = Rotation {
        key_id: "key_1".into(),
        secret: StoredSecret { hash: [10; 32], display_prefix: "tgk_yyyyyy".into() },
        grace_end: 1_120,
        pending: None,
        expect_birth: None,
    };
    store.rotate_key(&ctx(), rotation).unwrap();
    assert!(store.lookup_secret(&[1; 32]).unwrap().found.is_none());
    assert_eq!(store.lookup_secret(&[9; 32]).unwrap().found.unwrap().expires_at, 1_120);
}

pub fn a_usage_batch_is_counted_once_however_often_it_is_sent(store: &dyn Store) {
    store.create_key(&ctx(), new_key("key_1", "alice", 1)).unwrap();
    let batch = report(
        "gw-1",
        1,
        vec![count("key_1", NOW - 60, "allowed", 5), count("key_1", NOW, "revoked_key", 2)],
    );
    assert_eq!(store.report_usage(&batch, NOW).unwrap(), UsageApplied { duplicate: false, skipped: 0 });
    // The same batch again (its answer was lost): nothing counted twice.
    assert_eq!(store.report_usage(&batch, NOW).unwrap(), UsageApplied { duplicate: true, skipped: 0 });
    // The same numbers from another gateway, or the next batch, count.
    store.report_usage(&report("gw-2", 1, vec![count("key_1", NOW, "allowed", 1)]), NOW).unwrap();
    store.report_usage(&report("gw-1", 2, vec![count("key_1", NOW, "allowed", 1)]), NOW).unwrap();
    let query = UsageQuery { since: NOW - 3600, until: NOW + 60, ..Default::default() };
    let (keys, gateways, head) = store.usage(&query).unwrap();
    assert_eq!(head, 1);
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].outcomes.get("allowed"), Some(&7));
    assert_eq!(keys[0].outcomes.get("revoked_key"), Some(&2));
    assert_eq!(keys[0].consumer_id, "alice");
    assert_eq!(keys[0].last_used_at, NOW, "the newest allowed minute");
    let names: Vec<&str> = gateways.iter().map(|g| g.gateway.as_str()).collect();
    assert_eq!(names, ["gw-1", "gw-2"]);
    assert!(gateways.iter().all(|g| g.last_report_at == NOW && g.feed_seq == 7));
}

pub fn counts_of_unknown_keys_and_minutes_out_of_range_are_skipped(store: &dyn Store) {
    store.create_key(&ctx(), new_key("key_1", "alice", 1)).unwrap();
    let batch = report(
        "gw",
        1,
        vec![
            count("key_nope", NOW, "allowed", 1),
            count("key_1", NOW - super::USAGE_RETENTION - 60, "allowed", 1),
            count("key_1", NOW + 3600, "allowed", 1),
            count("key_1", NOW, "allowed", 0),
            count("key_1", NOW, "allowed", 3),
        ],
    );
    assert_eq!(store.report_usage(&batch, NOW).unwrap(), UsageApplied { duplicate: false, skipped: 4 });
    let (keys, _, _) =
        store.usage(&UsageQuery { since: 0, until: NOW + 7200, ..Default::default() }).unwrap();
    assert_eq!(keys[0].outcomes.get("allowed"), Some(&3));
}

pub fn usage_is_read_for_a_window_by_key_or_by_consumer(store: &dyn Store) {
    store.create_key(&ctx(), new_key("key_1", "alice", 1)).unwrap();
    store.create_key(&ctx(), new_key("key_2", "alice", 2)).unwrap();
    store.create_key(&ctx(), new_key("key_3", "bob", 3)).unwrap();
    store.create_key(&ctx(), new_key("key_4", "bob", 4)).unwrap();
    let counts = vec![
        count("key_1", NOW - 7200, "allowed", 100),
        count("key_1", NOW - 60, "allowed", 1),
        count("key_2", NOW - 60, "insufficient_scope", 2),
        count("key_3", NOW, "allowed", 3),
    ];
    store.report_usage(&report("gw", 1, counts), NOW).unwrap();
    let window = |key_ids: &[&str], consumer_id: Option<&str>| UsageQuery {
        key_ids: key_ids.iter().map(|k| (*k).to_owned()).collect(),
        consumer_id: consumer_id.map(str::to_owned),
        since: NOW - 3600,
        until: NOW + 60,
    };
    let total = |k: &KeyUsage| k.outcomes.values().sum::<u64>();
    let (all, _, _) = store.usage(&window(&[], None)).unwrap();
    let summary: Vec<(&str, u64)> = all.iter().map(|k| (k.key_id.as_str(), total(k))).collect();
    assert_eq!(summary, [("key_1", 1), ("key_2", 2), ("key_3", 3)], "the hour: key_1's older minute is out");
    let (alice, _, _) = store.usage(&window(&[], Some("alice"))).unwrap();
    assert_eq!(alice.iter().map(|k| k.key_id.as_str()).collect::<Vec<_>>(), ["key_1", "key_2"]);
    // Keys asked for by id are there even without usage; unknown ids are not.
    let (asked, _, _) = store.usage(&window(&["key_4", "key_3", "key_x"], None)).unwrap();
    let asked: Vec<(&str, u64)> = asked.iter().map(|k| (k.key_id.as_str(), total(k))).collect();
    assert_eq!(asked, [("key_3", 3), ("key_4", 0)]);
    // By id and by consumer at once: both must hold.
    let (both, _, _) = store.usage(&window(&["key_1", "key_3"], Some("bob"))).unwrap();
    assert_eq!(both.iter().map(|k| k.key_id.as_str()).collect::<Vec<_>>(), ["key_3"]);
}

pub fn keys_are_counted_by_status_at_the_given_time(store: &dyn Store) {
    assert_eq!(store.count_keys(1_000).unwrap(), KeyCounts::default());
    store.create_key(&ctx(), new_key("key_1", "alice", 1)).unwrap();
    store.create_key(&ctx(), NewKey { expires_at: 1_500, ..new_key("key_2", "alice", 2) }).unwrap();
    store.create_key(&ctx(), new_key("key_3", "bob", 3)).unwrap();
    store.revoke_key(&ctx(), "key_3", "test").unwrap();
    let at = |now| store.count_keys(now).unwrap();
    assert_eq!(at(1_000), KeyCounts { active: 2, revoked: 1, expired: 0 });
    assert_eq!(at(1_500), KeyCounts { active: 1, revoked: 1, expired: 1 });
}

/// The count is the store's since it was opened; each back end checks that a reopened store
/// starts at zero.
pub fn audit_written_counts_committed_audit_rows_only(store: &dyn Store) {
    assert_eq!(store.audit_written(), 0);
    // The consumer is created in the same transaction: two audit rows.
    store.create_key(&ctx(), new_key("key_1", "alice", 1)).unwrap();
    assert_eq!(store.audit_written(), 2);
    store.revoke_key(&ctx(), "key_1", "test").unwrap();
    assert_eq!(store.audit_written(), 3);
    // Revoking again changes nothing and writes no audit row.
    store.revoke_key(&ctx(), "key_1", "test").unwrap();
    // A failed mutation rolls its audit rows back.
    store.create_key(&ctx(), new_key("key_1", "bob", 2)).unwrap_err();
    // Usage is not audited.
    store.record_usage(&[("key_1".into(), 2_000)]).unwrap();
    assert_eq!(store.audit_written(), 3);
    let audit = store.list_audit(0, 100).unwrap();
    let actions: Vec<(u64, &str)> = audit.iter().map(|a| (a.seq, a.action.as_str())).collect();
    assert_eq!(actions, [(1, "consumer.create"), (2, "key.create"), (3, "key.revoke")]);
    assert_eq!(audit[2].detail, serde_json::json!({ "reason": "test" }));
    assert_eq!((audit[2].actor.as_str(), audit[2].at, audit[2].key_id.as_str()), ("test", 1_000, "key_1"));
    assert_eq!(store.list_audit(2, 100).unwrap().len(), 1);
}

pub fn usage_never_moves_backwards(store: &dyn Store) {
    store.create_key(&ctx(), new_key("key_1", "alice", 1)).unwrap();
    store.record_usage(&[("key_1".into(), 2_000)]).unwrap();
    store.record_usage(&[("key_1".into(), 1_500), ("key_unknown".into(), 1)]).unwrap();
    assert_eq!(store.get_key("key_1").unwrap().last_used_at, 2_000);
}

pub fn consumers_are_found_by_id_or_name_and_names_stay_unique(store: &dyn Store) {
    let new =
        |id: &str, name: &str| NewConsumer { id: id.into(), name: name.into(), metadata: Default::default() };
    let alice = store.create_consumer(&ctx(), new("c1", "alice")).unwrap();
    assert_eq!((alice.id.as_str(), alice.name.as_str(), alice.created_at), ("c1", "alice", 1_000));
    let bob = store.create_consumer(&ctx(), new("c2", "bob")).unwrap();
    assert!(bob.position > alice.position);
    assert_eq!(store.get_consumer("alice").unwrap(), alice);
    assert_eq!(store.get_consumer("c1").unwrap(), alice);
    // An id that is another consumer's name: the id wins.
    let tricky = store.create_consumer(&ctx(), new("carol", "c9")).unwrap();
    assert!(matches!(store.create_consumer(&ctx(), new("c1", "zed")), Err(Error::AlreadyExists { .. })));
    assert!(matches!(store.create_consumer(&ctx(), new("c3", "bob")), Err(Error::AlreadyExists { .. })));
    let err = store
        .update_consumer(&ctx(), "c1", ConsumerPatch { name: Some("bob".into()), metadata: None })
        .unwrap_err();
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err:?}");
    let metadata: crate::model::Metadata = [("team".to_owned(), "a".to_owned())].into_iter().collect();
    let renamed = store
        .update_consumer(
            &ctx(),
            "alice",
            ConsumerPatch { name: Some("alicia".into()), metadata: Some(metadata.clone()) },
        )
        .unwrap();
    assert_eq!((renamed.name.as_str(), &renamed.metadata), ("alicia", &metadata));
    assert!(matches!(store.get_consumer("alice"), Err(Error::NotFound { .. })));
    let (changes, _) = store.list_changes(0, 10).unwrap();
    assert_eq!(changes.len(), 1, "creating consumers is not on the feed");
    assert_eq!((changes[0].kind, changes[0].consumer_id.as_str()), (ChangeKind::ConsumerUpdated, "c1"));
    let page = store.list_consumers(None, 2).unwrap();
    assert_eq!(page.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), ["c1", "c2"]);
    let next = store.list_consumers(Some(page[1].position), 2).unwrap();
    assert_eq!(next, [tricky]);
    assert!(matches!(
        store.update_consumer(&ctx(), "nobody", ConsumerPatch::default()),
        Err(Error::NotFound { what: "consumer", .. })
    ));
}

pub fn deleting_a_consumer_revokes_its_keys_on_the_feed(store: &dyn Store) {
    store.create_key(&ctx(), new_key("key_1", "alice", 1)).unwrap();
    store.create_key(&ctx(), new_key("key_2", "alice", 2)).unwrap();
    store.create_key(&ctx(), new_key("key_3", "alice", 3)).unwrap();
    store.create_key(&ctx(), new_key("key_4", "bob", 4)).unwrap();
    store.revoke_key(&ctx(), "key_2", "leaked").unwrap();
    let (_, head) = store.list_changes(0, 0).unwrap();
    assert_eq!(store.delete_consumer(&ctx(), "alice").unwrap(), 2);
    let (changes, new_head) = store.list_changes(head, 10).unwrap();
    let seen: Vec<(u64, ChangeKind, &str)> =
        changes.iter().map(|c| (c.seq, c.kind, c.key_id.as_str())).collect();
    assert_eq!(
        seen,
        [
            (head + 1, ChangeKind::KeyRevoked, "key_1"),
            (head + 2, ChangeKind::KeyRevoked, "key_3"),
            (head + 3, ChangeKind::ConsumerDeleted, ""),
        ]
    );
    assert_eq!(new_head, head + 3);
    assert_eq!(store.get_key("key_1").unwrap().revoke_reason, "consumer deleted");
    assert_eq!(store.get_key("key_2").unwrap().revoke_reason, "leaked");
    assert_eq!(store.get_key("key_4").unwrap().revoked_at, 0);
    assert!(matches!(store.get_consumer("alice"), Err(Error::NotFound { .. })));
    let audit = store.list_audit(0, 100).unwrap();
    let last = audit.last().unwrap();
    assert_eq!(last.action, "consumer.delete");
    assert_eq!(last.detail, serde_json::json!({ "name": "alice", "revoked_keys": ["key_1", "key_3"] }));
    assert!(matches!(store.delete_consumer(&ctx(), "alice"), Err(Error::NotFound { .. })));
}

pub fn keys_are_listed_by_status_and_consumer_in_pages(store: &dyn Store) {
    store.create_key(&ctx(), new_key("key_1", "alice", 1)).unwrap();
    store.create_key(&ctx(), NewKey { expires_at: 1_500, ..new_key("key_2", "alice", 2) }).unwrap();
    store.create_key(&ctx(), new_key("key_3", "bob", 3)).unwrap();
    store.create_key(&ctx(), new_key("key_4", "alice", 4)).unwrap();
    store.revoke_key(&ctx(), "key_4", "test").unwrap();
    let ids = |filter: KeyFilter, after: Option<i64>, limit: usize| -> Vec<String> {
        store.list_keys(&filter, after, limit).unwrap().into_iter().map(|k| k.id).collect()
    };
    let at = |status: Option<KeyStatus>, consumer: Option<&str>| KeyFilter {
        status,
        consumer_id: consumer.map(str::to_owned),
        now: 2_000,
    };
    assert_eq!(ids(at(None, None), None, 10), ["key_1", "key_2", "key_3", "key_4"]);
    assert_eq!(ids(at(Some(KeyStatus::Active), None), None, 10), ["key_1", "key_3"]);
    assert_eq!(ids(at(Some(KeyStatus::Expired), None), None, 10), ["key_2"]);
    assert_eq!(ids(at(Some(KeyStatus::Revoked), None), None, 10), ["key_4"]);
    assert_eq!(ids(at(Some(KeyStatus::Revoked), Some("bob")), None, 10), Vec::<String>::new());
    assert_eq!(ids(at(None, Some("alice")), None, 10), ["key_1", "key_2", "key_4"]);
    assert_eq!(ids(at(Some(KeyStatus::Active), Some("alice")), None, 10), ["key_1"]);
    let first = store.list_keys(&at(None, None), None, 2).unwrap();
    assert_eq!(ids(at(None, None), Some(first[1].position), 2), ["key_3", "key_4"]);
    let key = store.get_key("key_3").unwrap();
    assert_eq!(
        (key.consumer_id.as_str(), key.scopes.as_slice(), key.signing),
        ("bob", &["read".to_owned()][..], None)
    );
    assert!(matches!(store.get_key("key_x"), Err(Error::NotFound { what: "key", .. })));
}

pub fn revoked_and_expired_keys_refuse_changes_and_revoking_twice_changes_nothing(store: &dyn Store) {
    store.create_key(&ctx(), new_key("key_1", "alice", 1)).unwrap();
    store.create_key(&ctx(), NewKey { expires_at: 900, ..new_key("key_2", "alice", 2) }).unwrap();
    let limit = crate::model::RateLimitPolicy {
        tier: "gold".into(),
        limits: vec![crate::model::RateLimit { rate: 5, period: crate::model::Period::Second, burst: 0 }],
    };
    let patch = KeyPatch {
        name: Some("renamed".into()),
        scopes: Some(vec!["a".into(), "b".into()]),
        rate_limit: Some(Some(limit.clone())),
        ..Default::default()
    };
    let updated = store.update_key(&ctx(), "key_1", patch).unwrap();
    assert_eq!(
        (updated.name.as_str(), updated.scopes.len(), updated.rate_limit.as_ref()),
        ("renamed", 2, Some(&limit))
    );
    let revoked = store.revoke_key(&ctx(), "key_1", "test").unwrap();
    assert_eq!((revoked.revoked_at, revoked.revoke_reason.as_str()), (1_000, "test"));
    let (_, head) = store.list_changes(0, 0).unwrap();
    let again = store.revoke_key(&Ctx { now: 5_000, ..ctx() }, "key_1", "other").unwrap();
    assert_eq!(again, revoked);
    assert_eq!(store.list_changes(0, 0).unwrap().1, head);
    let err = store.update_key(&ctx(), "key_1", KeyPatch::default()).unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition(_)), "{err:?}");
    let rotation = |id: &str| Rotation {
        key_id: id.into(),
        secret: StoredSecret { hash: [7; 32], display_prefix: "tgk_new".into() },
        grace_end: 0,
        pending: None,
        expect_birth: None,
    };
    let err = store.rotate_key(&ctx(), rotation("key_1")).unwrap_err();
    assert_eq!(err.to_string(), "key \"key_1\" is revoked");
    let err = store.rotate_key(&ctx(), rotation("key_2")).unwrap_err();
    assert_eq!(err.to_string(), "key \"key_2\" is expired; extend its expires_at first");
    assert!(matches!(store.revoke_key(&ctx(), "key_x", "x"), Err(Error::NotFound { .. })));
    assert_eq!(store.list_changes(0, 0).unwrap().1, head, "refused changes leave the feed alone");
}

pub fn signing_material_is_stored_read_and_resealed(store: &dyn Store) {
    let sealed = Sealed { version: 1, nonce: [3; 12], ciphertext: vec![1, 2, 3] };
    store
        .create_key(
            &ctx(),
            NewKey { signing: Some(NewSigning::Hmac(sealed.clone())), ..new_key("key_h", "alice", 1) },
        )
        .unwrap();
    store
        .create_key(
            &ctx(),
            NewKey { signing: Some(NewSigning::Ed25519([5; 32])), ..new_key("key_e", "alice", 2) },
        )
        .unwrap();
    store.create_key(&ctx(), new_key("key_n", "alice", 3)).unwrap();
    let hmac = store.get_signing("key_h").unwrap();
    assert_eq!(hmac.head_seq, 3);
    let (key, material) = hmac.found.unwrap();
    assert_eq!(key.signing, Some(crate::model::SigningAlgorithm::HmacSha256));
    assert!(matches!(material, NewSigning::Hmac(s) if s == sealed));
    let (_, material) = store.get_signing("key_e").unwrap().found.unwrap();
    assert!(matches!(material, NewSigning::Ed25519(k) if k == [5; 32]));
    assert!(store.get_signing("key_n").unwrap().found.is_none());
    assert_eq!(store.list_sealed().unwrap(), [("key_h".to_owned(), sealed.clone())]);
    let newer = Sealed { version: 2, nonce: [4; 12], ciphertext: vec![9] };
    // A stale read version changes nothing; the right one replaces the secret.
    assert_eq!(store.reseal(&[("key_h".into(), 7, newer.clone())]).unwrap(), 0);
    assert_eq!(store.reseal(&[("key_h".into(), 1, newer.clone())]).unwrap(), 1);
    assert_eq!(store.list_sealed().unwrap(), [("key_h".to_owned(), newer)]);
    assert_eq!(store.reseal(&[]).unwrap(), 0);
}

/// Sixteen writers, each on one of `stores` in turn (replicas of one database, or one store),
/// run `ops_per_writer` mixed operations, some of which fail and roll back. A reader follows the
/// feed meanwhile, as the service's feed does, and must see positions 1, 2, 3, … with nothing
/// skipped; afterwards the feed holds exactly the changes of the operations that succeeded, and
/// replaying it gives the keys and their revocations the store holds.
pub fn sixteen_writers_leave_a_feed_without_gaps_on(
    stores: &[&dyn Store],
    ops_per_writer: usize,
) -> FeedCheck {
    const WRITERS: usize = 16;
    let done = std::sync::atomic::AtomicBool::new(false);
    let (expected, followed) = std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let mut pos = 0u64;
            let mut reads = 0u64;
            let follow = |pos: &mut u64| {
                loop {
                    let (changes, head) = stores[0].list_changes(*pos, 500).unwrap();
                    for change in &changes {
                        assert_eq!(change.seq, *pos + 1, "the feed skipped from {pos} to {}", change.seq);
                        *pos = change.seq;
                    }
                    assert!(head >= *pos, "head {head} behind the changes read ({pos})");
                    if changes.len() < 500 {
                        return;
                    }
                }
            };
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                follow(&mut pos);
                reads += 1;
            }
            follow(&mut pos);
            (pos, reads)
        });
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let store = stores[w % stores.len()];
                scope.spawn(move || run_writer(store, w, ops_per_writer))
            })
            .collect();
        let expected: u64 = writers.into_iter().map(|h| h.join().unwrap()).sum();
        done.store(true, std::sync::atomic::Ordering::Release);
        (expected, reader.join().unwrap())
    });
    let (followed_to, reads) = followed;
    // Read back whole: positions 1..=head, one per successful change.
    let store = stores[stores.len() - 1];
    let mut all = Vec::new();
    loop {
        let (changes, _) = store.list_changes(all.len() as u64, 1000).unwrap();
        if changes.is_empty() {
            break;
        }
        all.extend(changes);
    }
    let (_, head) = store.list_changes(0, 0).unwrap();
    let gaps = all.iter().enumerate().filter(|(i, c)| c.seq != *i as u64 + 1).count();
    assert_eq!(gaps, 0, "positions must be 1, 2, 3, …");
    assert_eq!(head, all.len() as u64);
    assert_eq!(all.len() as u64, expected, "one change per successful operation");
    assert_eq!(followed_to, head, "the live reader saw every change");
    // Replay: the keys created and revoked on the feed are the store's.
    let created: BTreeSet<&str> =
        all.iter().filter(|c| c.kind == ChangeKind::KeyCreated).map(|c| c.key_id.as_str()).collect();
    let revoked: BTreeSet<&str> =
        all.iter().filter(|c| c.kind == ChangeKind::KeyRevoked).map(|c| c.key_id.as_str()).collect();
    let all_keys = |status| {
        let filter = KeyFilter { status, consumer_id: None, now: 1_000 };
        store.list_keys(&filter, None, 100_000).unwrap().into_iter().map(|k| k.id).collect::<BTreeSet<_>>()
    };
    assert_eq!(all_keys(None), created.iter().map(|s| (*s).to_owned()).collect());
    assert_eq!(all_keys(Some(KeyStatus::Revoked)), revoked.iter().map(|s| (*s).to_owned()).collect());
    FeedCheck {
        writers: WRITERS,
        operations: WRITERS * ops_per_writer,
        changes: head,
        gaps,
        live_reads: reads,
    }
}

/// What [`sixteen_writers_leave_a_feed_without_gaps_on`] saw.
#[derive(Debug)]
pub struct FeedCheck {
    pub writers: usize,
    pub operations: usize,
    pub changes: u64,
    pub gaps: usize,
    pub live_reads: u64,
}

/// One writer's operations; how many changes the successful ones put on the feed.
fn run_writer(store: &dyn Store, w: usize, ops: usize) -> u64 {
    let consumer = format!("writer-{w}");
    let hash = |n: usize| {
        let mut h = [0u8; 32];
        h[..8].copy_from_slice(&(w as u64).to_be_bytes());
        h[8..16].copy_from_slice(&(n as u64).to_be_bytes());
        h
    };
    let mut changes = 0u64;
    let mut secrets = 0usize;
    for op in 0..ops {
        let key = format!("w{w}-k{}", op / 6);
        match op % 6 {
            0 => {
                secrets += 1;
                store.create_key(&ctx(), new_key_hashed(&key, &consumer, hash(secrets))).unwrap();
                changes += 1;
            }
            1 => {
                store
                    .update_key(&ctx(), &key, KeyPatch { name: Some(format!("n{op}")), ..Default::default() })
                    .unwrap();
                changes += 1;
            }
            2 => {
                secrets += 1;
                let rotation = Rotation {
                    key_id: key,
                    secret: StoredSecret { hash: hash(secrets), display_prefix: "tgk_rot".into() },
                    grace_end: 2_000,
                    pending: None,
                    expect_birth: None,
                };
                store.rotate_key(&ctx(), rotation).unwrap();
                changes += 1;
            }
            3 if op % 12 == 3 => {
                store
                    .purge_cache(
                        &ctx(),
                        &CachePurge { target: PurgeTarget::All, host: String::new(), soft: false },
                    )
                    .unwrap();
                changes += 1;
            }
            3 => {
                let patch = ConsumerPatch {
                    name: None,
                    metadata: Some([("op".into(), op.to_string())].into_iter().collect()),
                };
                store.update_consumer(&ctx(), &consumer, patch).unwrap();
                changes += 1;
            }
            // The same key id again: fails after writing the key's consumer row, rolls back.
            4 => {
                secrets += 1;
                let err =
                    store.create_key(&ctx(), new_key_hashed(&key, &consumer, hash(secrets))).unwrap_err();
                assert!(matches!(err, Error::Internal(_)), "{err:?}");
                store.record_usage(&[(key, 1_000 + op as i64)]).unwrap();
            }
            _ => {
                if (op / 6) % 2 == 0 {
                    store.revoke_key(&ctx(), &key, "test").unwrap();
                    changes += 1;
                }
            }
        }
    }
    changes
}

pub fn sixteen_writers_leave_a_feed_without_gaps(store: &dyn Store) {
    let check = sixteen_writers_leave_a_feed_without_gaps_on(&[store], 60);
    assert_eq!(check.gaps, 0);
}

pub fn subjects_and_rate_limit_refusals_are_counted_and_read_for_a_window(store: &dyn Store) {
    store.create_key(&ctx(), new_key("key_1", "alice", 1)).unwrap();
    let subject = |s: &str, minute: i64, outcome: &str, n: u64| UsageCount {
        subject: s.into(),
        minute,
        outcome: outcome.into(),
        count: n,
        ..Default::default()
    };
    let counts = vec![
        subject("https://idp user-1", NOW - 60, "allowed", 3),
        subject("https://idp user-1", NOW - 60, "insufficient_scope", 1),
        subject("https://idp user-2", NOW, "allowed", 9),
        subject("https://idp user-3", NOW - 7200, "allowed", 50),
        limited("alice", "per-key", NOW - 60, 4),
        limited("alice", "per-key", NOW, 1),
        limited("alice", "burst", NOW, 2),
        limited("nobody", "per-key", NOW, 7),
    ];
    let applied = store.report_usage(&report("gw", 1, counts), NOW).unwrap();
    assert_eq!(applied.skipped, 1, "an unknown consumer");
    let window = |consumer_id: Option<&str>, key_ids: &[&str]| UsageQuery {
        key_ids: key_ids.iter().map(|k| (*k).to_owned()).collect(),
        consumer_id: consumer_id.map(str::to_owned),
        since: NOW - 3600,
        until: NOW + 60,
    };
    let (subjects, limits) = store.caller_usage(&window(None, &[])).unwrap();
    let summary: Vec<(&str, u64)> =
        subjects.iter().map(|s| (s.subject.as_str(), s.outcomes.values().sum())).collect();
    assert_eq!(
        summary,
        [("https://idp user-2", 9), ("https://idp user-1", 4)],
        "most first; user-3 is older"
    );
    assert_eq!(subjects[1].outcomes.get("insufficient_scope"), Some(&1));
    let limits: Vec<(&str, &str, u64)> =
        limits.iter().map(|l| (l.consumer_id.as_str(), l.rule.as_str(), l.limited)).collect();
    assert_eq!(limits, [("alice", "burst", 2), ("alice", "per-key", 5)]);
    let (subjects, limits) = store.caller_usage(&window(Some("bob"), &[])).unwrap();
    assert!(subjects.is_empty() && limits.is_empty(), "a consumer's view has no subjects");
    let (subjects, limits) = store.caller_usage(&window(None, &["key_1"])).unwrap();
    assert!(subjects.is_empty() && limits.is_empty(), "a view of keys has neither");
}

pub fn old_minutes_are_rolled_up_into_hours_and_still_counted(store: &dyn Store) {
    store.create_key(&ctx(), new_key("key_1", "alice", 1)).unwrap();
    let day = 86_400;
    let hour_start = NOW - 3 * day - (NOW - 3 * day).rem_euclid(3_600);
    let counts = vec![
        count("key_1", hour_start, "allowed", 5),
        count("key_1", hour_start + 60, "allowed", 7),
        count("key_1", hour_start + 120, "invalid_key", 1),
        count("key_1", NOW - 60, "allowed", 2),
    ];
    store.report_usage(&report("gw", 1, counts), NOW).unwrap();
    let window = |since: i64| UsageQuery { key_ids: vec![], consumer_id: None, since, until: NOW + 60 };
    let (all, _, _) = store.usage(&window(NOW - 4 * day)).unwrap();
    assert_eq!(all[0].outcomes.get("allowed"), Some(&14));
    assert_eq!(all[0].outcomes.get("invalid_key"), Some(&1));
    let (recent, _, _) = store.usage(&window(NOW - day)).unwrap();
    assert_eq!(recent[0].outcomes.get("allowed"), Some(&2));
    // A late report for the rolled-up hour adds to it.
    store.report_usage(&report("gw", 2, vec![count("key_1", hour_start + 180, "allowed", 1)]), NOW).unwrap();
    let (all, _, _) = store.usage(&window(NOW - 4 * day)).unwrap();
    assert_eq!(all[0].outcomes.get("allowed"), Some(&15));
}

pub fn usage_series_buckets_per_key_or_summed_over_every_key(store: &dyn Store) {
    store.create_key(&ctx(), new_key("key_1", "alice", 1)).unwrap();
    store.create_key(&ctx(), new_key("key_2", "bob", 2)).unwrap();
    let counts = vec![
        count("key_1", NOW - 3_600, "allowed", 1),
        count("key_1", NOW - 3_540, "allowed", 2),
        count("key_1", NOW - 60, "revoked_key", 4),
        count("key_2", NOW - 60, "allowed", 8),
        // Outside the window.
        count("key_2", NOW - 7_260, "allowed", 100),
    ];
    store.report_usage(&report("gw-1", 1, counts), NOW).unwrap();
    let since = NOW - 7_200;
    let point = |key: &str, bucket: i64, outcome: &str, count: u64| UsagePoint {
        key_id: key.into(),
        bucket,
        outcome: outcome.into(),
        count,
    };
    let ids = vec!["key_1".to_owned()];
    let per_key = store.usage_series(Some(&ids), since, NOW, 3_600).unwrap();
    assert_eq!(
        per_key,
        vec![point("key_1", NOW - 3_600, "allowed", 3), point("key_1", NOW - 3_600, "revoked_key", 4)]
    );
    let summed = store.usage_series(None, since, NOW, 3_600).unwrap();
    assert_eq!(summed, vec![point("", NOW - 3_600, "allowed", 11), point("", NOW - 3_600, "revoked_key", 4)]);
    assert!(store.usage_series(None, since, NOW, 0).is_err());
}

pub fn recent_audit_is_newest_first_and_filtered(store: &dyn Store) {
    store.create_key(&ctx(), new_key("key_1", "alice", 1)).unwrap();
    store.create_key(&ctx(), new_key("key_2", "bob", 2)).unwrap();
    store.revoke_key(&ctx(), "key_1", "test").unwrap();
    let all = store.list_audit_recent(&AuditFilter::default(), None, 100).unwrap();
    let seqs: Vec<u64> = all.iter().map(|e| e.seq).collect();
    let mut sorted = seqs.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(seqs, sorted);
    assert_eq!(all.first().map(|e| e.action.as_str()), Some("key.revoke"));
    let key_1 = AuditFilter { key_id: Some("key_1".into()), ..Default::default() };
    let trail = store.list_audit_recent(&key_1, None, 100).unwrap();
    assert!(trail.len() >= 2 && trail.iter().all(|e| e.key_id == "key_1"), "{trail:?}");
    let revokes = AuditFilter { action: Some("key.revoke".into()), ..Default::default() };
    assert_eq!(store.list_audit_recent(&revokes, None, 100).unwrap().len(), 1);
    let before_first = store.list_audit_recent(&key_1, Some(trail[0].seq), 100).unwrap();
    assert_eq!(before_first.len(), trail.len() - 1);
    let none = AuditFilter { consumer_id: Some("nobody".into()), ..Default::default() };
    assert!(store.list_audit_recent(&none, None, 100).unwrap().is_empty());
}

pub fn expiring_keys_are_soonest_first_without_revoked_or_expired_ones(store: &dyn Store) {
    let expiring = |id: &str, hash: u8, at: i64| NewKey { expires_at: at, ..new_key(id, id, hash) };
    store.create_key(&ctx(), expiring("late", 1, 5_000)).unwrap();
    store.create_key(&ctx(), expiring("soon", 2, 3_000)).unwrap();
    store.create_key(&ctx(), expiring("gone", 3, 1_500)).unwrap();
    store.create_key(&ctx(), expiring("revoked", 4, 3_000)).unwrap();
    store.create_key(&ctx(), expiring("never", 5, 0)).unwrap();
    store.create_key(&ctx(), expiring("far", 6, 90_000)).unwrap();
    store.revoke_key(&ctx(), "revoked", "test").unwrap();
    let ids: Vec<String> =
        store.list_expiring_keys(2_000, 10_000, 10).unwrap().into_iter().map(|k| k.id).collect();
    assert_eq!(ids, ["soon", "late"]);
    assert_eq!(store.list_expiring_keys(2_000, 10_000, 1).unwrap().len(), 1);
}

/// The default `--webhooks-disable-after`, in seconds.
const DISABLE_AFTER: i64 = 5 * 86_400;

fn new_webhook(id: &str, events: &[EventType]) -> NewWebhook {
    NewWebhook {
        id: id.into(),
        url: format!("https://hooks.example.com/{id}"),
        events: events.to_vec(),
        sealed: Sealed { version: 1, nonce: [3; 12], ciphertext: vec![1, 2, 3] },
    }
}

/// Claims every due message at `now` and records each as delivered; the claimed messages.
fn drain_outbox(store: &dyn Store, now: i64) -> Vec<Outgoing> {
    let claimed = store.claim_webhook_messages(now, now + 30, 1_000).unwrap();
    for message in &claimed {
        store
            .finish_webhook_attempt(
                &attempt_of(message, now, 200, Outcome::Delivered),
                Outcome::Delivered,
                DISABLE_AFTER,
            )
            .unwrap();
    }
    claimed
}

fn attempt_of(message: &Outgoing, at: i64, status: u16, outcome: Outcome) -> Attempt {
    Attempt {
        message_id: message.message_id.clone(),
        webhook_id: message.webhook_id.clone(),
        event_type: message.event_type.clone(),
        attempt: message.attempts + 1,
        at,
        status,
        latency_ms: 5,
        error: String::new(),
        outcome: outcome.as_str().into(),
        next_attempt_at: match outcome {
            Outcome::RetryAt(next) => next,
            _ => 0,
        },
    }
}

/// The outbox is written in the mutation's transaction: one message per enabled endpoint
/// subscribed to the event, none for a failed mutation or a no-op, none for other endpoints.
pub fn webhook_events_are_written_with_their_mutation_once_per_subscribed_endpoint(store: &dyn Store) {
    // No endpoint: nothing is written.
    store.create_key(&ctx(), new_key("key_0", "zed", 9)).unwrap();
    assert!(drain_outbox(store, 1_000).is_empty());

    store
        .create_webhook(
            &ctx(),
            new_webhook("wh_a", &[EventType::KeyCreated, EventType::KeyRevoked, EventType::ConsumerCreated]),
        )
        .unwrap();
    store.create_webhook(&ctx(), new_webhook("wh_b", &[EventType::KeyRevoked])).unwrap();
    assert!(matches!(
        store.create_webhook(&ctx(), new_webhook("wh_b", &[EventType::KeyRevoked])),
        Err(Error::AlreadyExists { .. })
    ));

    store.create_key(&ctx(), new_key("key_1", "alice", 1)).unwrap();
    let mut created: Vec<(String, String)> =
        drain_outbox(store, 1_000).into_iter().map(|m| (m.webhook_id, m.event_type)).collect();
    created.sort();
    assert_eq!(
        created,
        [("wh_a".to_owned(), "consumer.created".to_owned()), ("wh_a".to_owned(), "key.created".to_owned())]
    );

    // A failed mutation (its consumer insert succeeds, its key insert fails) leaves no message.
    store.create_key(&ctx(), new_key("key_1", "bob", 2)).unwrap_err();
    assert!(drain_outbox(store, 1_000).is_empty());

    store.revoke_key(&ctx(), "key_1", "test").unwrap();
    let revoked = drain_outbox(store, 1_000);
    let mut endpoints: Vec<&str> = revoked.iter().map(|m| m.webhook_id.as_str()).collect();
    endpoints.sort_unstable();
    assert_eq!(endpoints, ["wh_a", "wh_b"]);
    assert_ne!(revoked[0].message_id, revoked[1].message_id);
    let body: serde_json::Value = serde_json::from_str(&revoked[0].payload).unwrap();
    assert_eq!(
        body,
        serde_json::json!({
            "type": "key.revoked",
            "timestamp": "1970-01-01T00:16:40Z",
            "data": { "key_id": "key_1", "consumer_id": "alice" }
        })
    );
    // Revoking again changes nothing and sends nothing.
    store.revoke_key(&ctx(), "key_1", "test").unwrap();
    assert!(drain_outbox(store, 1_000).is_empty());

    let hooks = store.list_webhooks().unwrap();
    assert_eq!(hooks.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(), ["wh_a", "wh_b"]);
    assert!(hooks.iter().all(|h| h.enabled));
    let audited: Vec<String> = store.list_audit(0, 100).unwrap().into_iter().map(|e| e.action).collect();
    assert_eq!(audited.iter().filter(|a| *a == "webhook.create").count(), 2);
}

pub fn webhook_messages_keep_their_id_across_attempts_and_a_410_disables_the_endpoint(store: &dyn Store) {
    store.create_webhook(&ctx(), new_webhook("wh_a", &[EventType::KeyCreated])).unwrap();
    store.create_key(&ctx(), new_key("key_1", "alice", 1)).unwrap();
    let first = store.claim_webhook_messages(1_000, 1_030, 10).unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!((first[0].attempts, first[0].sealed.ciphertext.as_slice()), (0, &[1u8, 2, 3][..]));
    // Leased: not claimed again while the attempt runs.
    assert!(store.claim_webhook_messages(1_001, 1_031, 10).unwrap().is_empty());

    let retry = Outcome::RetryAt(1_005);
    store.finish_webhook_attempt(&attempt_of(&first[0], 1_000, 500, retry), retry, DISABLE_AFTER).unwrap();
    assert!(store.claim_webhook_messages(1_004, 1_034, 10).unwrap().is_empty(), "not due yet");
    let second = store.claim_webhook_messages(1_005, 1_035, 10).unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!((second[0].message_id.as_str(), second[0].attempts), (first[0].message_id.as_str(), 1));

    store
        .finish_webhook_attempt(
            &attempt_of(&second[0], 1_005, 410, Outcome::Disable),
            Outcome::Disable,
            DISABLE_AFTER,
        )
        .unwrap();
    let hook = store.list_webhooks().unwrap().remove(0);
    assert!(!hook.enabled);
    assert_eq!(hook.disabled_reason, "the receiver answered 410 at attempt 2");
    assert!(store.list_audit(0, 100).unwrap().iter().any(|e| e.action == "webhook.disable"));
    // A disabled endpoint gets no new messages.
    store.create_key(&ctx(), new_key("key_2", "bob", 2)).unwrap();
    assert!(store.claim_webhook_messages(9_999, 10_029, 10).unwrap().is_empty());

    let log = store.list_webhook_attempts(Some("wh_a"), 10).unwrap();
    let summary: Vec<(u32, u16, &str)> =
        log.iter().map(|a| (a.attempt, a.status, a.outcome.as_str())).collect();
    assert_eq!(summary, [(2, 410, "endpoint_disabled"), (1, 500, "retry")]);
    assert!(log.iter().all(|a| a.message_id == first[0].message_id));
    assert!(store.list_webhook_attempts(Some("wh_other"), 10).unwrap().is_empty());
    assert_eq!(store.list_webhook_attempts(None, 1).unwrap().len(), 1);

    store.delete_webhook(&ctx(), "wh_a").unwrap();
    assert!(store.list_webhooks().unwrap().is_empty());
    assert!(matches!(store.delete_webhook(&ctx(), "wh_a"), Err(Error::NotFound { .. })));
    assert_eq!(store.list_webhook_attempts(Some("wh_a"), 10).unwrap().len(), 2, "the log stays");
}

/// Disabling by hand holds an endpoint's pending messages and sends it no new ones; enabling it
/// again clears its reason and failing time and makes what it had pending due at once, with the
/// same ids. A new URL or new events apply to what is sent next.
pub fn an_endpoint_is_disabled_by_hand_enabled_again_and_changed(store: &dyn Store) {
    store.create_webhook(&ctx(), new_webhook("wh_a", &[EventType::KeyCreated])).unwrap();
    store.create_key(&ctx(), new_key("key_1", "alice", 1)).unwrap();
    let first = store.claim_webhook_messages(1_000, 1_030, 10).unwrap();
    let retry = Outcome::RetryAt(9_000);
    store.finish_webhook_attempt(&attempt_of(&first[0], 1_000, 500, retry), retry, DISABLE_AFTER).unwrap();
    assert_eq!(store.list_webhooks().unwrap()[0].failing_since, 1_000);

    let disable = WebhookUpdate { enabled: Some(false), ..Default::default() };
    let hook = store.update_webhook(&ctx_at(1_100), "wh_a", &disable).unwrap();
    assert!(!hook.enabled);
    assert_eq!(hook.disabled_reason, "disabled by test");
    assert!(store.claim_webhook_messages(9_000, 9_030, 10).unwrap().is_empty(), "held while disabled");
    store.create_key(&ctx_at(1_150), new_key("key_2", "bob", 2)).unwrap();

    let enable = WebhookUpdate { enabled: Some(true), ..Default::default() };
    let hook = store.update_webhook(&ctx_at(1_200), "wh_a", &enable).unwrap();
    assert!(hook.enabled);
    assert_eq!((hook.disabled_reason.as_str(), hook.failing_since), ("", 0));
    let again = store.claim_webhook_messages(1_200, 1_230, 10).unwrap();
    assert_eq!(again.len(), 1, "due at once, and nothing kept from while it was disabled: {again:?}");
    assert_eq!((again[0].message_id.as_str(), again[0].attempts), (first[0].message_id.as_str(), 1));
    store
        .finish_webhook_attempt(&attempt_of(&again[0], 1_200, 200, Outcome::Delivered), Outcome::Delivered, 0)
        .unwrap();
    // Enabling an enabled endpoint changes nothing.
    assert_eq!(store.update_webhook(&ctx_at(1_250), "wh_a", &enable).unwrap(), hook);

    let change = WebhookUpdate {
        url: Some("https://hooks.example.com/moved".into()),
        events: Some(vec![EventType::KeyRevoked]),
        enabled: None,
    };
    let hook = store.update_webhook(&ctx_at(1_300), "wh_a", &change).unwrap();
    assert_eq!(
        (hook.url.as_str(), hook.events.as_slice()),
        ("https://hooks.example.com/moved", &[EventType::KeyRevoked][..])
    );
    assert_eq!(store.list_webhooks().unwrap(), [hook]);
    store.create_key(&ctx_at(1_300), new_key("key_3", "carol", 3)).unwrap();
    store.revoke_key(&ctx_at(1_300), "key_3", "test").unwrap();
    let sent = store.claim_webhook_messages(1_300, 1_330, 10).unwrap();
    let sent: Vec<(&str, &str)> = sent.iter().map(|m| (m.event_type.as_str(), m.url.as_str())).collect();
    assert_eq!(sent, [("key.revoked", "https://hooks.example.com/moved")]);

    assert!(matches!(store.update_webhook(&ctx(), "wh_none", &enable), Err(Error::NotFound { .. })));
    let details = audit_details(store, "webhook.update");
    assert_eq!(details.len(), 4);
    assert_eq!(details[0], serde_json::json!({"webhook_id": "wh_a", "was_enabled": true, "enabled": false}));
    assert_eq!(details[1], serde_json::json!({"webhook_id": "wh_a", "was_enabled": false, "enabled": true}));
    assert_eq!(
        details[3],
        serde_json::json!({"webhook_id": "wh_a", "was_enabled": true,
            "url": "https://hooks.example.com/moved", "events": ["key.revoked"]})
    );
}

fn sealed(version: u32, byte: u8) -> Sealed {
    Sealed { version, nonce: [byte; 12], ciphertext: vec![byte; 3] }
}

fn ctx_at(now: i64) -> Ctx {
    Ctx { actor: "test".into(), now }
}

/// Events of `webhook_id` waiting in the outbox at `now` (claimed, then left to their lease).
fn outbox_of(store: &dyn Store, webhook_id: &str, now: i64) -> Vec<Outgoing> {
    let mut claimed = store.claim_webhook_messages(now, now + 1, 1_000).unwrap();
    claimed.retain(|m| m.webhook_id == webhook_id);
    claimed
}

/// A rotation keeps the old secret beside the new one, in every claim, until its grace ends;
/// pruning then drops it. A rotation without grace keeps none, and an unknown endpoint is
/// refused.
pub fn a_rotated_webhook_secret_signs_beside_the_new_one_until_its_grace_ends(store: &dyn Store) {
    store.create_webhook(&ctx(), new_webhook("wh_a", &[EventType::KeyCreated])).unwrap();
    store.create_key(&ctx(), new_key("key_1", "alice", 1)).unwrap();
    let before = store.claim_webhook_messages(1_000, 1_001, 10).unwrap();
    assert_eq!(
        (before[0].sealed.ciphertext.as_slice(), before[0].previous.clone()),
        (&[1u8, 2, 3][..], None)
    );

    let hook = store.rotate_webhook_secret(&ctx_at(1_100), "wh_a", sealed(1, 7), 1_200).unwrap();
    assert_eq!((hook.id.as_str(), hook.previous_secret_expires_at), ("wh_a", 1_200));
    let during = store.claim_webhook_messages(1_199, 1_200, 10).unwrap();
    assert_eq!(during.len(), 1, "the message again, its lease over");
    assert_eq!(during[0].sealed, sealed(1, 7), "the new secret signs first");
    assert_eq!(during[0].previous, Some(Sealed { version: 1, nonce: [3; 12], ciphertext: vec![1, 2, 3] }));
    // At the end of the grace the previous secret no longer signs, pruned or not.
    let after = store.claim_webhook_messages(1_200, 1_201, 10).unwrap();
    assert_eq!((after[0].sealed.clone(), after[0].previous.clone()), (sealed(1, 7), None));
    let pruned = store.prune_webhooks(0, 1_199, 100).unwrap();
    assert_eq!(pruned.secrets, 0, "still in its grace at 1199");
    let pruned = store.prune_webhooks(0, 1_200, 100).unwrap();
    assert_eq!((pruned.messages, pruned.attempts, pruned.secrets), (0, 0, 1));
    assert_eq!(store.list_webhooks().unwrap()[0].previous_secret_expires_at, 0);
    assert_eq!(store.list_webhook_secrets().unwrap().len(), 1);

    // Rotating twice keeps only the secret just replaced; without grace, none.
    store.rotate_webhook_secret(&ctx_at(1_300), "wh_a", sealed(1, 8), 1_400).unwrap();
    store.rotate_webhook_secret(&ctx_at(1_310), "wh_a", sealed(1, 9), 1_500).unwrap();
    let claimed = store.claim_webhook_messages(1_320, 1_321, 10).unwrap();
    assert_eq!((claimed[0].sealed.clone(), claimed[0].previous.clone()), (sealed(1, 9), Some(sealed(1, 8))));
    let hook = store.rotate_webhook_secret(&ctx_at(1_330), "wh_a", sealed(1, 10), 1_330).unwrap();
    assert_eq!(hook.previous_secret_expires_at, 0);
    let claimed = store.claim_webhook_messages(1_340, 1_341, 10).unwrap();
    assert_eq!((claimed[0].sealed.clone(), claimed[0].previous.clone()), (sealed(1, 10), None));

    let err = store.rotate_webhook_secret(&ctx(), "wh_none", sealed(1, 1), 2_000).unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    let rotations = audit_details(store, "webhook.rotate_secret");
    assert_eq!(rotations.len(), 4, "{rotations:?}");
    assert_eq!(rotations[0], serde_json::json!({ "webhook_id": "wh_a", "previous_expires_at": 1_200 }));
    assert_eq!(rotations[3]["previous_expires_at"], 0);
}

/// Both of an endpoint's secrets are listed by slot and resealed only under the version read.
pub fn webhook_secrets_current_and_previous_are_listed_and_resealed(store: &dyn Store) {
    store.create_webhook(&ctx(), new_webhook("wh_a", &[EventType::KeyCreated])).unwrap();
    store.create_webhook(&ctx(), new_webhook("wh_b", &[EventType::KeyCreated])).unwrap();
    store.rotate_webhook_secret(&ctx(), "wh_b", sealed(1, 5), 9_999).unwrap();
    let first = Sealed { version: 1, nonce: [3; 12], ciphertext: vec![1, 2, 3] };
    let secret = |id: &str, slot, sealed| SealedSecret { webhook_id: id.into(), slot, sealed };
    assert_eq!(
        store.list_webhook_secrets().unwrap(),
        [
            secret("wh_a", SecretSlot::Current, first.clone()),
            secret("wh_b", SecretSlot::Current, sealed(1, 5)),
            secret("wh_b", SecretSlot::Previous, first.clone()),
        ]
    );
    let updates = [
        ("wh_a".to_owned(), SecretSlot::Current, 1, sealed(2, 6)),
        ("wh_b".to_owned(), SecretSlot::Previous, 1, sealed(2, 7)),
        // Read under another version: left alone.
        ("wh_b".to_owned(), SecretSlot::Current, 9, sealed(2, 8)),
        // No previous secret to replace.
        ("wh_a".to_owned(), SecretSlot::Previous, 0, sealed(2, 9)),
    ];
    assert_eq!(store.reseal_webhook_secrets(&updates).unwrap(), 2);
    assert_eq!(
        store.list_webhook_secrets().unwrap(),
        [
            secret("wh_a", SecretSlot::Current, sealed(2, 6)),
            secret("wh_b", SecretSlot::Current, sealed(1, 5)),
            secret("wh_b", SecretSlot::Previous, sealed(2, 7)),
        ]
    );
    assert_eq!(store.reseal_webhook_secrets(&[]).unwrap(), 0);
    // Signing secrets are another list.
    assert!(store.list_sealed().unwrap().is_empty());
}

/// Replay puts delivered messages created since a time back in the outbox, due now, with their
/// ids; of one endpoint or of every enabled one. Older ones, other endpoints' and disabled
/// endpoints' stay as they are.
pub fn a_replay_queues_stored_messages_again_with_their_ids(store: &dyn Store) {
    store.create_webhook(&ctx(), new_webhook("wh_a", &[EventType::KeyCreated])).unwrap();
    store.create_webhook(&ctx(), new_webhook("wh_b", &[EventType::KeyCreated])).unwrap();
    store.create_key(&ctx_at(1_000), new_key("key_1", "alice", 1)).unwrap();
    store.create_key(&ctx_at(2_000), new_key("key_2", "bob", 2)).unwrap();
    store.create_key(&ctx_at(3_000), new_key("key_3", "carol", 3)).unwrap();
    let delivered = drain_outbox(store, 3_000);
    assert_eq!(delivered.len(), 6);
    assert!(drain_outbox(store, 9_000).is_empty());

    assert_eq!(store.replay_webhook_messages(&ctx_at(5_000), 2_000, Some("wh_a")).unwrap(), 2);
    let again = store.claim_webhook_messages(5_000, 5_030, 100).unwrap();
    let mut ids: Vec<&str> = again.iter().map(|m| m.message_id.as_str()).collect();
    ids.sort_unstable();
    let mut expected: Vec<&str> = delivered
        .iter()
        .filter(|m| m.webhook_id == "wh_a" && !m.payload.contains("key_1"))
        .map(|m| m.message_id.as_str())
        .collect();
    expected.sort_unstable();
    assert_eq!(ids, expected, "the same ids, wh_a's since 2000 only");
    assert!(again.iter().all(|m| m.attempts == 0), "a fresh count of attempts");
    for message in &again {
        store
            .finish_webhook_attempt(
                &attempt_of(message, 5_000, 200, Outcome::Delivered),
                Outcome::Delivered,
                60,
            )
            .unwrap();
    }

    // Every enabled endpoint: a disabled one's messages stay.
    let key_b = delivered.iter().find(|m| m.webhook_id == "wh_b").unwrap();
    store
        .finish_webhook_attempt(&attempt_of(key_b, 5_100, 410, Outcome::Disable), Outcome::Disable, 60)
        .unwrap();
    assert_eq!(store.replay_webhook_messages(&ctx_at(6_000), 1_000, None).unwrap(), 3);
    let again = store.claim_webhook_messages(6_000, 6_030, 100).unwrap();
    assert_eq!(again.len(), 3);
    assert!(again.iter().all(|m| m.webhook_id == "wh_a"));

    let err = store.replay_webhook_messages(&ctx(), 1, Some("wh_b")).unwrap_err();
    assert_eq!(err.to_string(), "webhook \"wh_b\" is disabled: nothing is delivered to it");
    let err = store.replay_webhook_messages(&ctx(), 1, Some("wh_none")).unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    let replays = audit_details(store, "webhook.replay");
    assert_eq!(
        replays,
        [
            serde_json::json!({ "webhook_id": "wh_a", "since": 2_000, "requeued": 2 }),
            serde_json::json!({ "webhook_id": null, "since": 1_000, "requeued": 3 }),
        ]
    );
}

/// Attempts that all fail from a first failure on disable the endpoint once `disable_after` has
/// passed; a success in between starts the count again. The disabling is audited and the other
/// enabled endpoints subscribed to `webhook.disabled` get an event; the endpoint itself does not.
pub fn an_endpoint_failing_too_long_is_disabled_and_the_other_endpoints_are_told(store: &dyn Store) {
    const LIMIT: i64 = 100;
    store
        .create_webhook(&ctx(), new_webhook("wh_a", &[EventType::KeyCreated, EventType::WebhookDisabled]))
        .unwrap();
    store.create_webhook(&ctx(), new_webhook("wh_b", &[EventType::WebhookDisabled])).unwrap();
    store.create_webhook(&ctx(), new_webhook("wh_c", &[EventType::KeyCreated])).unwrap();
    store.create_key(&ctx_at(1_000), new_key("key_1", "alice", 1)).unwrap();
    let fail = |at: i64| {
        let message = outbox_of(store, "wh_a", at).remove(0);
        let retry = Outcome::RetryAt(at + 1);
        store.finish_webhook_attempt(&attempt_of(&message, at, 500, retry), retry, LIMIT).unwrap();
    };
    let failing_since = || store.list_webhooks().unwrap()[0].failing_since;
    fail(1_000);
    assert_eq!(failing_since(), 1_000);
    fail(1_050);
    assert_eq!(failing_since(), 1_000, "the first failure counts");
    // A success (of another message) ends the failing time.
    store.create_key(&ctx_at(1_060), new_key("key_2", "bob", 2)).unwrap();
    let second = outbox_of(store, "wh_a", 1_060).into_iter().find(|m| m.payload.contains("key_2")).unwrap();
    store
        .finish_webhook_attempt(
            &attempt_of(&second, 1_060, 200, Outcome::Delivered),
            Outcome::Delivered,
            LIMIT,
        )
        .unwrap();
    assert_eq!(failing_since(), 0);
    fail(1_070);
    fail(1_169);
    assert!(store.list_webhooks().unwrap()[0].enabled, "99 s of failures");
    assert!(outbox_of(store, "wh_b", 1_169).is_empty());
    fail(1_170);

    let hooks = store.list_webhooks().unwrap();
    assert!(!hooks[0].enabled);
    let reason = "every attempt has failed since 1970-01-01T00:17:50Z (100 s; endpoints failing for 100 s are \
                  disabled)";
    assert_eq!(hooks[0].disabled_reason, reason);
    assert!(hooks[1].enabled && hooks[2].enabled);
    let log = store.list_webhook_attempts(Some("wh_a"), 1).unwrap();
    assert_eq!(
        (log[0].status, log[0].outcome.as_str(), log[0].next_attempt_at),
        (500, "endpoint_disabled", 0)
    );
    let audit: Vec<_> =
        store.list_audit(0, 100).unwrap().into_iter().filter(|e| e.action == "webhook.disable").collect();
    assert_eq!(audit.len(), 1);
    assert_eq!((audit[0].actor.as_str(), audit[0].at), ("webhook-delivery", 1_170));
    assert_eq!(audit[0].detail["reason"], reason);

    let told = outbox_of(store, "wh_b", 1_170);
    assert_eq!(told.len(), 1, "one webhook.disabled to wh_b");
    assert_eq!(told[0].event_type, "webhook.disabled");
    let body: serde_json::Value = serde_json::from_str(&told[0].payload).unwrap();
    assert_eq!(
        body["data"],
        serde_json::json!({ "webhook_id": "wh_a", "url": "https://hooks.example.com/wh_a", "reason": reason })
    );
    assert!(outbox_of(store, "wh_a", 1_170).is_empty(), "disabled: nothing more");
    assert!(
        outbox_of(store, "wh_c", 1_170).iter().all(|m| m.event_type == "key.created"),
        "wh_c is not subscribed to webhook.disabled"
    );
    // A 410 also tells the others.
    let c_message = outbox_of(store, "wh_c", 1_200).remove(0);
    store
        .finish_webhook_attempt(
            &attempt_of(&c_message, 1_200, 410, Outcome::Disable),
            Outcome::Disable,
            LIMIT,
        )
        .unwrap();
    let told = outbox_of(store, "wh_b", 1_200);
    let reasons: Vec<String> = told
        .iter()
        .map(|m| serde_json::from_str::<serde_json::Value>(&m.payload).unwrap()["data"]["reason"].to_string())
        .collect();
    assert!(reasons.iter().any(|r| r.contains("answered 410")), "{reasons:?}");
}

/// Pruning deletes delivered and given-up messages created before the cut and log rows from
/// before it, at most `limit` of each per call, and never a pending message.
pub fn old_delivered_messages_and_attempts_are_pruned_in_batches(store: &dyn Store) {
    store.create_webhook(&ctx(), new_webhook("wh_a", &[EventType::KeyCreated])).unwrap();
    for (i, at) in [1_000, 1_001, 1_002, 5_000].into_iter().enumerate() {
        let n = u8::try_from(i).unwrap() + 1;
        store.create_key(&ctx_at(at), new_key(&format!("key_{n}"), "alice", n)).unwrap();
    }
    // key_1 and key_4 delivered, key_2 given up, key_3 still pending (its retry due later).
    for message in store.claim_webhook_messages(5_000, 5_001, 100).unwrap() {
        let outcome = if message.payload.contains("key_2") {
            Outcome::GaveUp
        } else if message.payload.contains("key_3") {
            Outcome::RetryAt(99_999)
        } else {
            Outcome::Delivered
        };
        let at = if message.payload.contains("key_4") { 5_000 } else { 1_500 };
        store
            .finish_webhook_attempt(&attempt_of(&message, at, 200, outcome), outcome, DISABLE_AFTER)
            .unwrap();
    }
    assert_eq!(store.list_webhook_attempts(None, 100).unwrap().len(), 4);

    let pruned = store.prune_webhooks(2_000, 5_000, 1).unwrap();
    assert_eq!((pruned.messages, pruned.attempts), (1, 1), "one of each per call at most");
    let pruned = store.prune_webhooks(2_000, 5_000, 100).unwrap();
    assert_eq!((pruned.messages, pruned.attempts), (1, 2));
    assert_eq!(store.prune_webhooks(2_000, 5_000, 100).unwrap(), Default::default());
    let log = store.list_webhook_attempts(None, 100).unwrap();
    assert_eq!(log.iter().map(|a| a.at).collect::<Vec<_>>(), [5_000], "only the newer attempt is left");

    // What is left: the pending key_3 (kept whatever its age) and the newer key_4; a replay
    // from the beginning reaches those two only.
    assert_eq!(store.replay_webhook_messages(&ctx_at(6_000), 1, None).unwrap(), 2);
    let left = store.claim_webhook_messages(6_000, 6_001, 100).unwrap();
    assert_eq!(left.len(), 2);
    assert!(["key_3", "key_4"].iter().all(|k| left.iter().any(|m| m.payload.contains(k))), "{left:?}");
}

/// One `quota.exhausted` per consumer, rule and UTC day, written by the report that brings the
/// day's first refusal (naming its earliest minute), never by a batch sent again, later
/// refusals of the day or refusals of an unknown consumer.
pub fn quota_exhausted_is_written_once_per_consumer_rule_and_day(store: &dyn Store) {
    store.create_webhook(&ctx(), new_webhook("wh_q", &[EventType::QuotaExhausted])).unwrap();
    store.create_webhook(&ctx(), new_webhook("wh_k", &[EventType::KeyCreated])).unwrap();
    store.create_key(&ctx(), new_key("key_1", "alice", 1)).unwrap();
    store.create_key(&ctx(), new_key("key_2", "bob", 2)).unwrap();
    drain_outbox(store, 1_000);
    let events = |now: i64| -> Vec<serde_json::Value> {
        let mut out: Vec<serde_json::Value> = drain_outbox(store, now)
            .into_iter()
            .map(|m| {
                assert_eq!((m.webhook_id.as_str(), m.event_type.as_str()), ("wh_q", "quota.exhausted"));
                serde_json::from_str::<serde_json::Value>(&m.payload).unwrap()["data"].clone()
            })
            .collect();
        out.sort_by_key(|d| (d["consumer_id"].to_string(), d["day"].to_string(), d["rule"].to_string()));
        out
    };
    let first = report(
        "gw",
        1,
        vec![
            limited("alice", "per-consumer", NOW, 3),
            limited("alice", "per-consumer", NOW - 60, 1),
            limited("alice", "burst", NOW, 1),
            limited("nobody", "per-consumer", NOW, 5),
            count("key_1", NOW, "allowed", 4),
        ],
    );
    store.report_usage(&first, NOW).unwrap();
    assert_eq!(
        events(NOW),
        [
            serde_json::json!({ "consumer_id": "alice", "rule": "burst", "day": "2027-01-15",
                                "first_refused_at": "2027-01-15T08:00:00Z" }),
            serde_json::json!({ "consumer_id": "alice", "rule": "per-consumer", "day": "2027-01-15",
                                "first_refused_at": "2027-01-15T07:59:00Z" }),
        ]
    );
    // The same batch again, and more refusals the same day: nothing more.
    store.report_usage(&first, NOW).unwrap();
    let later = report("gw", 2, vec![limited("alice", "per-consumer", NOW + 60, 9)]);
    store.report_usage(&later, NOW + 60).unwrap();
    assert!(events(NOW + 60).is_empty());
    // Another consumer the same day, and alice the next day (UTC): one each.
    let next_day = NOW + 16 * 3_600;
    let more = report(
        "gw",
        3,
        vec![limited("bob", "per-consumer", NOW + 120, 1), limited("alice", "per-consumer", next_day, 2)],
    );
    store.report_usage(&more, next_day).unwrap();
    let told = events(next_day);
    let who: Vec<(&str, &str)> =
        told.iter().map(|d| (d["consumer_id"].as_str().unwrap(), d["day"].as_str().unwrap())).collect();
    assert_eq!(who, [("alice", "2027-01-16"), ("bob", "2027-01-15")]);
    // The counts are kept as before.
    let (_, limits) = store
        .caller_usage(&UsageQuery { since: NOW - 3_600, until: next_day + 60, ..Default::default() })
        .unwrap();
    let alice: u64 = limits.iter().filter(|l| l.consumer_id == "alice").map(|l| l.limited).sum();
    assert_eq!(alice, 3 + 1 + 1 + 9 + 2);
}
