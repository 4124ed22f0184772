//! The suite's tests of rotation policies, lifecycle transitions, leases and pending secrets.

use super::{ctx, drain_outbox, new_key, new_webhook};
use crate::error::Error;
use crate::lifecycle::{DeadlineAction, PolicyMode, PolicyTarget, RotationPolicy, Transition, birth};
use crate::master::Sealed;
use crate::model::{ChangeKind, Ctx, Rotation, StoredSecret};
use crate::store::Store;
use crate::webhooks::EventType;

const DAY: i64 = 86_400;
const T0: i64 = 1_800_000_000;

fn at(now: i64) -> Ctx {
    Ctx { actor: "test".into(), now }
}

fn policy(mode: PolicyMode) -> RotationPolicy {
    RotationPolicy {
        max_age: 10 * DAY,
        notify_before: vec![3 * DAY, DAY],
        grace: DAY,
        mode,
        revoke_unused_previous_after: 0,
    }
}

fn changes_since(store: &dyn Store, after: u64) -> Vec<ChangeKind> {
    store.list_changes(after, 100).unwrap().0.into_iter().map(|c| c.kind).collect()
}

fn actions(store: &dyn Store) -> Vec<String> {
    store.list_audit(0, 1_000).unwrap().into_iter().map(|a| a.action).collect()
}

pub fn rotation_policies_are_set_listed_replaced_and_deleted(store: &dyn Store) {
    store.create_key(&ctx(), new_key("key_1", "alice", 1)).unwrap();
    store.create_key(&ctx(), new_key("key_2", "alice", 2)).unwrap();
    let consumer = PolicyTarget::Consumer("alice".into());
    let own = PolicyTarget::Key("key_2".into());
    let record = store.set_rotation_policy(&ctx(), &consumer, &policy(PolicyMode::Notify)).unwrap();
    assert_eq!((record.consumer_id.as_str(), record.key_id.as_str()), ("alice", ""));
    let mut auto = policy(PolicyMode::Auto);
    auto.max_age = 20 * DAY;
    store.set_rotation_policy(&ctx(), &own, &auto).unwrap();
    assert_eq!(store.effective_policy("key_1").unwrap(), Some(policy(PolicyMode::Notify)));
    assert_eq!(store.effective_policy("key_2").unwrap(), Some(auto.clone()));
    assert_eq!(store.effective_policy("nope").unwrap(), None);
    // Setting again replaces.
    let mut shorter = policy(PolicyMode::Notify);
    shorter.max_age = 5 * DAY;
    store.set_rotation_policy(&at(2_000), &consumer, &shorter).unwrap();
    let listed = store.list_rotation_policies(Some("alice")).unwrap();
    assert_eq!(
        listed.iter().map(|p| (p.key_id.as_str(), p.policy.max_age)).collect::<Vec<_>>(),
        [("", 5 * DAY), ("key_2", 20 * DAY)]
    );
    assert_eq!(listed[0].updated_at, 2_000);
    assert_eq!(store.list_rotation_policies(None).unwrap().len(), 2);
    store.delete_rotation_policy(&ctx(), &own).unwrap();
    assert_eq!(store.effective_policy("key_2").unwrap(), Some(shorter));
    assert!(matches!(store.delete_rotation_policy(&ctx(), &own), Err(Error::NotFound { .. })));
    assert!(matches!(
        store.set_rotation_policy(&ctx(), &PolicyTarget::Consumer("bob".into()), &policy(PolicyMode::Notify)),
        Err(Error::NotFound { .. })
    ));
    let audited = actions(store);
    assert_eq!(audited.iter().filter(|a| *a == "policy.set").count(), 3);
    assert_eq!(audited.iter().filter(|a| *a == "policy.delete").count(), 1);
}

pub fn lifecycle_candidates_are_keys_with_a_policy_a_previous_secret_or_a_recent_expiry(store: &dyn Store) {
    let c = at(T0);
    store.create_key(&c, new_key("key_plain", "alice", 1)).unwrap();
    store.create_key(&c, new_key("key_policy", "bob", 2)).unwrap();
    let mut expiring = new_key("key_expired", "carol", 3);
    expiring.expires_at = T0 + DAY;
    store.create_key(&c, expiring).unwrap();
    let mut long_ago = new_key("key_long_ago", "carol", 4);
    long_ago.expires_at = T0 + 10;
    long_ago.create_consumer = None;
    store.create_key(&c, long_ago).unwrap();
    store.create_key(&c, new_key("key_rotated", "dave", 5)).unwrap();
    let rotation = Rotation {
        key_id: "key_rotated".into(),
        secret: StoredSecret { hash: [6; 32], display_prefix: "tgk_new".into() },
        grace_end: T0 + 5 * DAY,
        pending: None,
        expect_birth: None,
    };
    store.rotate_key(&c, rotation).unwrap();
    store.create_key(&c, new_key("key_revoked", "erin", 7)).unwrap();
    store
        .set_rotation_policy(&c, &PolicyTarget::Consumer("bob".into()), &policy(PolicyMode::Notify))
        .unwrap();
    store
        .set_rotation_policy(&c, &PolicyTarget::Consumer("erin".into()), &policy(PolicyMode::Notify))
        .unwrap();
    store.revoke_key(&c, "key_revoked", "test").unwrap();

    let now = T0 + 7 * DAY + 20;
    let found = store.lifecycle_candidates(now, 0, 100).unwrap();
    let ids: Vec<&str> = found.iter().map(|c| c.key.id.as_str()).collect();
    // key_long_ago expired more than the lookback before `now`.
    assert_eq!(ids, ["key_policy", "key_expired", "key_rotated"]);
    assert_eq!(found[0].policy, Some(policy(PolicyMode::Notify)));
    assert_eq!(found[0].policy_set_at, T0);
    assert_eq!(found[1].policy, None);
    let previous = found[2].previous.unwrap();
    assert_eq!((previous.expires_at, previous.last_used_at), (T0 + 5 * DAY, 0));
    store.record_previous_use(&[("key_rotated".into(), T0 + 2 * DAY), ("key_plain".into(), T0)]).unwrap();
    let found = store.lifecycle_candidates(now, 0, 100).unwrap();
    assert_eq!(found[2].previous.unwrap().last_used_at, T0 + 2 * DAY);
    // Pages by position.
    let first = store.lifecycle_candidates(now, 0, 1).unwrap();
    let rest = store.lifecycle_candidates(now, first[0].key.position, 100).unwrap();
    assert_eq!(rest.iter().map(|c| c.key.id.as_str()).collect::<Vec<_>>(), ["key_expired", "key_rotated"]);
}

pub fn lifecycle_transitions_happen_once_with_their_change_audit_and_event(store: &dyn Store) {
    let c = at(T0);
    store
        .create_webhook(
            &c,
            new_webhook("wh_a", &[EventType::KeyExpiring, EventType::KeyExpired, EventType::KeyGraceEnded]),
        )
        .unwrap();
    store.create_key(&c, new_key("key_1", "alice", 1)).unwrap();
    store.set_rotation_policy(&c, &PolicyTarget::Key("key_1".into()), &policy(PolicyMode::Notify)).unwrap();
    let (_, head) = store.list_changes(0, 100).unwrap();
    let notice = Transition::Expiring {
        key_id: "key_1".into(),
        consumer_id: "alice".into(),
        deadline: T0 + 10 * DAY,
        lead: DAY,
        action: DeadlineAction::Expire,
        overtaken: vec![3 * DAY],
    };
    let later = at(T0 + 9 * DAY);
    assert!(store.apply_transition(&later, &notice).unwrap());
    assert!(!store.apply_transition(&later, &notice).unwrap(), "a notice is sent once");
    let sent = drain_outbox(store, T0 + 9 * DAY);
    assert_eq!(sent.len(), 1);
    let body: serde_json::Value = serde_json::from_str(&sent[0].payload).unwrap();
    assert_eq!(body["type"], "key.expiring");
    assert_eq!(body["data"]["stage"], "1d");
    assert_eq!(body["data"]["action"], "expire");
    let candidate = store.lifecycle_candidates(T0 + 9 * DAY, 0, 10).unwrap().remove(0);
    let mut notices = candidate.notices.clone();
    notices.sort();
    assert_eq!(
        notices,
        [(T0 + 10 * DAY, "expiring:1d".to_owned()), (T0 + 10 * DAY, "expiring:3d".to_owned())],
        "the overtaken stage is recorded so it is never sent later"
    );

    // Notify mode at max_age: the key expires, once.
    let expire = Transition::Expired {
        key_id: "key_1".into(),
        consumer_id: "alice".into(),
        expires_at: T0 + 10 * DAY,
        set_expiry: true,
        birth: T0,
    };
    let end = at(T0 + 10 * DAY + 5);
    assert!(store.apply_transition(&end, &expire).unwrap());
    assert!(!store.apply_transition(&end, &expire).unwrap());
    assert_eq!(store.get_key("key_1").unwrap().expires_at, T0 + 10 * DAY);
    let sent = drain_outbox(store, T0 + 10 * DAY + 5);
    assert_eq!(sent.iter().map(|m| m.event_type.as_str()).collect::<Vec<_>>(), ["key.expired"]);
    assert_eq!(changes_since(store, head), [ChangeKind::KeyExpiring, ChangeKind::KeyExpired]);
    let audited = actions(store);
    assert_eq!(audited.iter().filter(|a| *a == "key.expiring").count(), 1);
    assert_eq!(audited.iter().filter(|a| *a == "key.expire").count(), 1);
}

pub fn a_grace_ends_once_and_the_previous_secret_stops_matching(store: &dyn Store) {
    let c = at(T0);
    store.create_webhook(&c, new_webhook("wh_a", &[EventType::KeyGraceEnded])).unwrap();
    store.create_key(&c, new_key("key_1", "alice", 1)).unwrap();
    let rotation = Rotation {
        key_id: "key_1".into(),
        secret: StoredSecret { hash: [2; 32], display_prefix: "tgk_new".into() },
        grace_end: T0 + 7 * DAY,
        pending: None,
        expect_birth: None,
    };
    let rotated = store.rotate_key(&at(T0 + DAY), rotation).unwrap();
    assert!(store.lookup_secret(&[1; 32]).unwrap().found.is_some());
    let end = Transition::EndGrace {
        key_id: "key_1".into(),
        consumer_id: "alice".into(),
        rotated_at: rotated.rotated_at,
        reason: "unused",
    };
    // A transition planned for an older rotation does nothing.
    let stale = Transition::EndGrace {
        key_id: "key_1".into(),
        consumer_id: "alice".into(),
        rotated_at: T0,
        reason: "unused",
    };
    assert!(!store.apply_transition(&at(T0 + 3 * DAY), &stale).unwrap());
    assert!(store.lookup_secret(&[1; 32]).unwrap().found.is_some());
    assert!(store.apply_transition(&at(T0 + 3 * DAY), &end).unwrap());
    assert!(!store.apply_transition(&at(T0 + 3 * DAY), &end).unwrap());
    assert!(store.lookup_secret(&[1; 32]).unwrap().found.is_none(), "the previous secret is gone");
    assert!(store.lookup_secret(&[2; 32]).unwrap().found.is_some());
    assert_eq!(store.get_key("key_1").unwrap().previous_expires_at, T0 + 3 * DAY);
    let sent = drain_outbox(store, T0 + 3 * DAY);
    assert_eq!(sent.len(), 1);
    let body: serde_json::Value = serde_json::from_str(&sent[0].payload).unwrap();
    assert_eq!(body["data"]["reason"], "unused");
    assert!(store.lifecycle_candidates(T0 + 3 * DAY, 0, 10).unwrap().is_empty());
}

pub fn an_automatic_rotation_leaves_a_sealed_secret_picked_up_once(store: &dyn Store) {
    let c = at(T0);
    store.create_key(&c, new_key("key_1", "alice", 1)).unwrap();
    let sealed = Sealed { version: 1, nonce: [4; 12], ciphertext: vec![9, 8, 7] };
    let auto = |hash: u8, expect: i64| Rotation {
        key_id: "key_1".into(),
        secret: StoredSecret { hash: [hash; 32], display_prefix: "tgk_auto".into() },
        grace_end: T0 + 11 * DAY,
        pending: Some(sealed.clone()),
        expect_birth: Some(expect),
    };
    // Planned for a secret born at another time: refused, nothing changes.
    let later = at(T0 + 10 * DAY);
    assert!(matches!(store.rotate_key(&later, auto(2, T0 + 1)), Err(Error::FailedPrecondition(_))));
    assert!(store.lookup_secret(&[2; 32]).unwrap().found.is_none());
    let key = store.rotate_key(&later, auto(2, T0)).unwrap();
    assert_eq!(birth(&key), T0 + 10 * DAY);
    // The same plan again (another tick, another replica) is refused.
    assert!(matches!(store.rotate_key(&later, auto(3, T0)), Err(Error::FailedPrecondition(_))));
    assert_eq!(store.take_pending_secret(&later, "key_1").unwrap(), Some(sealed.clone()));
    assert_eq!(store.take_pending_secret(&later, "key_1").unwrap(), None, "picked up once");
    // Revoking a key drops its uncollected secret.
    store.create_key(&c, new_key("key_2", "bob", 8)).unwrap();
    let mut other = auto(9, T0);
    other.key_id = "key_2".into();
    store.rotate_key(&later, other).unwrap();
    store.revoke_key(&later, "key_2", "test").unwrap();
    assert_eq!(store.take_pending_secret(&later, "key_2").unwrap(), None);
    // A rotation by hand drops an uncollected secret.
    store.rotate_key(&later, auto(4, T0 + 10 * DAY)).unwrap();
    let manual = Rotation {
        key_id: "key_1".into(),
        secret: StoredSecret { hash: [5; 32], display_prefix: "tgk_hand".into() },
        grace_end: T0 + 11 * DAY,
        pending: None,
        expect_birth: None,
    };
    store.rotate_key(&at(T0 + 10 * DAY + 1), manual).unwrap();
    assert_eq!(store.take_pending_secret(&later, "key_1").unwrap(), None);
    let audit = store.list_audit(0, 100).unwrap();
    let automatic: Vec<bool> = audit
        .iter()
        .filter(|a| a.action == "key.rotate" && a.key_id == "key_1")
        .map(|a| a.detail["automatic"].as_bool().unwrap())
        .collect();
    assert_eq!(automatic, [true, true, false]);
    assert_eq!(audit.iter().filter(|a| a.action == "key.pickup").count(), 1);
}

pub fn a_lease_is_held_by_one_holder_until_it_runs_out(store: &dyn Store) {
    assert!(store.take_lease("lifecycle", "a", 100, 130).unwrap());
    assert!(!store.take_lease("lifecycle", "b", 110, 140).unwrap());
    assert!(store.take_lease("lifecycle", "a", 120, 150).unwrap(), "the holder renews");
    assert!(!store.take_lease("lifecycle", "b", 149, 179).unwrap());
    assert!(store.take_lease("lifecycle", "b", 150, 180).unwrap(), "taken over once it ran out");
    assert!(!store.take_lease("lifecycle", "a", 160, 190).unwrap());
    assert!(store.take_lease("other", "a", 160, 190).unwrap(), "leases are per name");
}
