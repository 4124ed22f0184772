use super::*;
use crate::model::Metadata;

const DAY: i64 = 86_400;
const T0: i64 = 1_700_000_000;

fn key() -> Key {
    Key {
        id: "key_1".into(),
        consumer_id: "con_1".into(),
        name: String::new(),
        display_prefix: "tg_abcd".into(),
        scopes: Vec::new(),
        metadata: Metadata::new(),
        rate_limit: None,
        expires_at: 0,
        created_at: T0,
        last_used_at: 0,
        revoked_at: 0,
        revoke_reason: String::new(),
        previous_display_prefix: String::new(),
        previous_expires_at: 0,
        rotated_at: 0,
        position: 1,
        signing: None,
    }
}

fn policy(mode: PolicyMode) -> RotationPolicy {
    RotationPolicy {
        max_age: 90 * DAY,
        notify_before: vec![30 * DAY, 7 * DAY, DAY],
        grace: DAY,
        mode,
        revoke_unused_previous_after: 0,
    }
}

fn candidate(mode: PolicyMode) -> Candidate {
    Candidate {
        key: key(),
        policy: Some(policy(mode)),
        policy_set_at: T0,
        previous: None,
        notices: Vec::new(),
    }
}

/// Applies the notices a plan records, as the store would.
fn record(c: &mut Candidate, plan: &[Transition]) {
    for t in plan {
        match t {
            Transition::Expiring { deadline, lead, overtaken, .. } => {
                c.notices.push((*deadline, expiring_stage(*lead)));
                c.notices.extend(overtaken.iter().map(|l| (*deadline, expiring_stage(*l))));
            }
            Transition::Expired { expires_at, .. } => c.notices.push((*expires_at, STAGE_EXPIRED.into())),
            Transition::EndGrace { rotated_at, .. } => {
                c.notices.push((*rotated_at, STAGE_GRACE_ENDED.into()))
            }
            Transition::Rotate { .. } => {}
        }
    }
}

#[test]
fn each_stage_is_noticed_once_day_by_day_then_the_key_rotates_at_max_age() {
    let mut c = candidate(PolicyMode::Auto);
    let mut sent = Vec::new();
    let mut rotations = Vec::new();
    let mut grace_ends = Vec::new();
    for day in 0..=95 {
        let now = T0 + day * DAY;
        // Several ticks a day: nothing is noticed twice.
        for tick in 0..3 {
            let at = now + tick * 60;
            let plan = plan(&c, at);
            for t in &plan {
                match t {
                    Transition::Expiring { lead, action, overtaken, deadline, .. } => {
                        assert!(overtaken.is_empty(), "day by day no stage is overtaken");
                        assert_eq!(*action, DeadlineAction::Rotate);
                        assert_eq!(*deadline, T0 + 90 * DAY);
                        sent.push((day, stage_name(*lead)));
                    }
                    Transition::Rotate { birth, grace, .. } => {
                        assert_eq!((*birth, *grace), (T0, DAY));
                        rotations.push(day);
                        // What the store does: a new secret is born, the old one has a grace.
                        c.key.rotated_at = at;
                        c.previous = Some(Previous { expires_at: at + DAY, last_used_at: 0 });
                    }
                    Transition::EndGrace { reason, .. } => {
                        grace_ends.push((day, *reason));
                        c.previous = None;
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            record(&mut c, &plan);
        }
    }
    assert_eq!(sent, vec![(60, "30d".to_owned()), (83, "7d".to_owned()), (89, "1d".to_owned())]);
    assert_eq!(rotations, vec![90]);
    assert_eq!(grace_ends, vec![(91, "elapsed")]);
}

#[test]
fn a_jump_past_several_stages_sends_only_the_most_urgent_and_skips_the_others() {
    let c = candidate(PolicyMode::Notify);
    let plan = plan(&c, T0 + 89 * DAY + 1);
    assert_eq!(
        plan,
        vec![Transition::Expiring {
            key_id: "key_1".into(),
            consumer_id: "con_1".into(),
            deadline: T0 + 90 * DAY,
            lead: DAY,
            action: DeadlineAction::Expire,
            overtaken: vec![30 * DAY, 7 * DAY],
        }]
    );
}

#[test]
fn notify_mode_expires_the_key_at_max_age_and_then_says_nothing_more() {
    let mut c = candidate(PolicyMode::Notify);
    let now = T0 + 120 * DAY;
    let plan1 = plan(&c, now);
    assert_eq!(
        plan1,
        vec![Transition::Expired {
            key_id: "key_1".into(),
            consumer_id: "con_1".into(),
            expires_at: T0 + 90 * DAY,
            set_expiry: true,
            birth: T0,
        }]
    );
    record(&mut c, &plan1);
    c.key.expires_at = T0 + 90 * DAY;
    assert!(plan(&c, now).is_empty());
    assert!(plan(&c, now + 365 * DAY).is_empty());
}

#[test]
fn an_own_expiry_before_max_age_is_the_deadline_and_expires_the_key() {
    let mut c = candidate(PolicyMode::Auto);
    c.key.expires_at = T0 + 10 * DAY;
    match &plan(&c, T0 + 9 * DAY)[..] {
        [Transition::Expiring { lead, action, deadline, .. }] => {
            assert_eq!((*lead, *action, *deadline), (DAY, DeadlineAction::Expire, T0 + 10 * DAY));
        }
        other => panic!("{other:?}"),
    }
    match &plan(&c, T0 + 10 * DAY)[..] {
        [Transition::Expired { set_expiry: false, expires_at, .. }] => assert_eq!(*expires_at, T0 + 10 * DAY),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_key_without_a_policy_is_only_told_when_it_expires() {
    let mut c = candidate(PolicyMode::Notify);
    c.policy = None;
    c.key.expires_at = T0 + DAY;
    assert!(plan(&c, T0).is_empty());
    let p = plan(&c, T0 + DAY);
    assert!(matches!(&p[..], [Transition::Expired { set_expiry: false, .. }]), "{p:?}");
    record(&mut c, &p);
    assert!(plan(&c, T0 + 2 * DAY).is_empty());
}

#[test]
fn the_grace_ends_when_it_elapses_or_early_when_the_previous_secret_goes_unused() {
    let mut c = candidate(PolicyMode::Notify);
    c.key.rotated_at = T0 + DAY;
    c.previous = Some(Previous { expires_at: T0 + 8 * DAY, last_used_at: 0 });
    assert!(plan(&c, T0 + 2 * DAY).is_empty());
    let ends = |p: Vec<Transition>| match &p[..] {
        [Transition::EndGrace { reason, rotated_at, .. }] => Some((*reason, *rotated_at)),
        _ => None,
    };
    assert_eq!(ends(plan(&c, T0 + 8 * DAY)), Some(("elapsed", T0 + DAY)));
    // Unused for two days: ends early, but not while it is used.
    c.policy.as_mut().unwrap().revoke_unused_previous_after = 2 * DAY;
    assert_eq!(ends(plan(&c, T0 + 3 * DAY)), Some(("unused", T0 + DAY)));
    c.previous = Some(Previous { expires_at: T0 + 8 * DAY, last_used_at: T0 + 2 * DAY });
    assert_eq!(ends(plan(&c, T0 + 3 * DAY)), None);
    assert_eq!(ends(plan(&c, T0 + 4 * DAY)), Some(("unused", T0 + DAY)));
}

#[test]
fn a_policy_set_on_an_old_key_gives_the_longest_notice_before_it_acts() {
    let mut c = candidate(PolicyMode::Auto);
    // The key is 200 days old when the policy is set.
    c.policy_set_at = T0 + 200 * DAY;
    let set = c.policy_set_at;
    match &plan(&c, set)[..] {
        [Transition::Expiring { lead, deadline, overtaken, .. }] => {
            assert_eq!((*lead, *deadline), (30 * DAY, set + 30 * DAY));
            assert!(overtaken.is_empty());
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(&plan(&c, set + 30 * DAY - 1)[..], [Transition::Expiring { lead, .. }] if *lead == DAY));
    assert!(matches!(&plan(&c, set + 30 * DAY)[..], [Transition::Rotate { .. }]));
    // Without notices the policy acts at once.
    c.policy.as_mut().unwrap().notify_before.clear();
    assert!(matches!(&plan(&c, set)[..], [Transition::Rotate { .. }]));
}

#[test]
fn revoked_keys_have_nothing_due() {
    let mut c = candidate(PolicyMode::Auto);
    c.key.revoked_at = T0 + 1;
    assert!(plan(&c, T0 + 200 * DAY).is_empty());
}

#[test]
fn policies_are_checked_field_by_field() {
    let err = |p: RotationPolicy| p.validated().unwrap_err().to_string();
    let mut p = policy(PolicyMode::Notify);
    p.max_age = 60;
    assert!(err(p).contains("policy.max_age"));
    let mut p = policy(PolicyMode::Notify);
    p.notify_before = vec![DAY, 90 * DAY];
    assert!(err(p).contains("policy.notify_before[1]"));
    let mut p = policy(PolicyMode::Notify);
    p.notify_before = vec![DAY, DAY];
    assert!(err(p).contains("twice"));
    let mut p = policy(PolicyMode::Auto);
    p.grace = 0;
    assert!(err(p).contains("policy.grace"));
    let mut p = policy(PolicyMode::Notify);
    p.revoke_unused_previous_after = 5;
    assert!(err(p).contains("policy.revoke_unused_previous_after"));
    let mut p = policy(PolicyMode::Notify);
    p.notify_before = vec![DAY, 30 * DAY, 7 * DAY];
    assert_eq!(p.validated().unwrap().notify_before, vec![30 * DAY, 7 * DAY, DAY]);
}

#[test]
fn stage_names_use_the_largest_whole_unit() {
    assert_eq!(stage_name(30 * DAY), "30d");
    assert_eq!(stage_name(36 * 3_600), "36h");
    assert_eq!(stage_name(90 * 60), "90m");
    assert_eq!(stage_name(45), "45s");
}
