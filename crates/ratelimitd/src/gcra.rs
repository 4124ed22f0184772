//! The generic cell rate algorithm over the buckets of one request, check-all-then-charge-all.
//!
//! A bucket is one number, its *theoretical arrival time* (TAT): the instant, in microseconds,
//! at which it will be full again. A bucket with no TAT, or a TAT in the past, is full. A charge
//! of `hits` moves the TAT `hits × interval` ahead of `max(TAT, now)`; it fits when the new TAT
//! is at most `tolerance` (burst × interval) ahead of now.
//!
//! Every charge of a request is checked first; only when every enforced one fits (shadow-mode
//! charges never refuse) are the fitting ones written. A refused request writes nothing, so it
//! consumes nothing from any of its buckets. Two charges of one request on the same bucket see
//! each other: the second is checked against the TAT the first would leave.
//!
//! [`evaluate`] is the algorithm for the in-memory store; the Redis store runs the same steps in
//! its Lua script (`redis.rs`, [`crate::redis::SCRIPT`]) against Redis's clock. Both are checked
//! against the same expectations.

use std::collections::HashMap;

/// One bucket to charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// The bucket's key in the store.
    pub key: String,
    /// Microseconds one hit's token takes to come back.
    pub interval: u64,
    /// The burst times the interval.
    pub tolerance: u64,
    /// The burst (requests per unit).
    pub burst: u64,
    /// Hits this request adds (at least 1).
    pub hits: u64,
    /// Never refuses the request.
    pub shadow: bool,
}

/// What one charge found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The hits fit in the bucket.
    pub fits: bool,
    /// Requests that still fit after this one (after its charge when the request was admitted).
    pub remaining: u64,
    /// Microseconds until the bucket is full again.
    pub reset: u64,
}

/// The answer for a whole request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Every enforced charge fits: the request passes and the fitting charges were written.
    pub admitted: bool,
    pub outcomes: Vec<Outcome>,
}

/// The new TAT if `charge` fits on a bucket at `tat` at `now`, `None` otherwise.
fn fit(charge: &Charge, tat: u64, now: u64) -> Option<u64> {
    if charge.hits > charge.burst {
        return None;
    }
    let new_tat = tat.max(now).checked_add(charge.hits.checked_mul(charge.interval)?)?;
    (new_tat - now <= charge.tolerance).then_some(new_tat)
}

fn remaining(charge: &Charge, tat: u64, now: u64) -> u64 {
    let ahead = tat.saturating_sub(now);
    charge.tolerance.saturating_sub(ahead) / charge.interval.max(1)
}

/// Decides a request at `now` on buckets whose stored TATs `stored` returns (`None`: no entry),
/// and returns the decision with the TATs to write (nothing when refused).
pub fn evaluate(
    now: u64,
    charges: &[Charge],
    mut stored: impl FnMut(&str) -> Option<u64>,
) -> (Decision, Vec<(String, u64)>) {
    // The TAT each bucket would have after the earlier charges of this request.
    let mut pending: HashMap<&str, u64> = HashMap::new();
    let mut seen: Vec<(u64, Option<u64>)> = Vec::with_capacity(charges.len());
    let mut admitted = true;
    for charge in charges {
        let tat = match pending.get(charge.key.as_str()) {
            Some(tat) => *tat,
            None => stored(&charge.key).unwrap_or(0),
        };
        let new_tat = fit(charge, tat, now);
        if let Some(new_tat) = new_tat {
            pending.insert(&charge.key, new_tat);
        } else if !charge.shadow {
            admitted = false;
        }
        seen.push((tat, new_tat));
    }
    let mut writes = Vec::new();
    let outcomes = charges
        .iter()
        .zip(&seen)
        .map(|(charge, (tat, new_tat))| match new_tat {
            Some(new_tat) if admitted => {
                writes.push((charge.key.clone(), *new_tat));
                Outcome { fits: true, remaining: remaining(charge, *new_tat, now), reset: new_tat - now }
            }
            _ => Outcome {
                fits: new_tat.is_some(),
                remaining: remaining(charge, *tat, now),
                reset: tat.saturating_sub(now),
            },
        })
        .collect();
    // The last write of a bucket holds every charge of the request on it.
    let mut last: HashMap<String, u64> = HashMap::new();
    for (key, tat) in writes {
        last.insert(key, tat);
    }
    (Decision { admitted, outcomes }, last.into_iter().collect())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn charge(key: &str, per_second: u64, hits: u64) -> Charge {
        let interval = 1_000_000u64.div_ceil(per_second);
        Charge {
            key: key.to_owned(),
            interval,
            tolerance: interval * per_second,
            burst: per_second,
            hits,
            shadow: false,
        }
    }

    fn run(store: &mut HashMap<String, u64>, now: u64, charges: &[Charge]) -> Decision {
        let (decision, writes) = evaluate(now, charges, |k| store.get(k).copied());
        store.extend(writes);
        decision
    }

    #[test]
    fn a_full_bucket_admits_its_burst_then_one_per_interval() {
        let mut store = HashMap::new();
        let now = 1_000_000_000;
        for i in 0..10 {
            let d = run(&mut store, now, &[charge("a", 10, 1)]);
            assert!(d.admitted, "request {i}");
            assert_eq!(d.outcomes[0].remaining, 9 - i);
        }
        let d = run(&mut store, now, &[charge("a", 10, 1)]);
        assert!(!d.admitted);
        assert_eq!(d.outcomes[0], Outcome { fits: false, remaining: 0, reset: 1_000_000 });
        // 100 ms later exactly one more token.
        assert!(run(&mut store, now + 100_000, &[charge("a", 10, 1)]).admitted);
        assert!(!run(&mut store, now + 100_000, &[charge("a", 10, 1)]).admitted);
    }

    #[test]
    fn a_refused_request_consumes_nothing_from_its_other_descriptors() {
        let mut store = HashMap::new();
        let now = 5_000_000;
        // Exhaust "a" (burst 2).
        assert!(run(&mut store, now, &[charge("a", 2, 2)]).admitted);
        let before = store.get("b").copied();
        let d = run(&mut store, now, &[charge("b", 10, 1), charge("a", 2, 1)]);
        assert!(!d.admitted);
        assert!(d.outcomes[0].fits);
        assert_eq!(d.outcomes[0].remaining, 10, "b untouched");
        assert_eq!(store.get("b").copied(), before);
    }

    #[test]
    fn shadow_charges_never_refuse_and_are_not_written_when_over() {
        let mut store = HashMap::new();
        let now = 0;
        let shadow = Charge { shadow: true, ..charge("s", 1, 1) };
        assert!(run(&mut store, now, std::slice::from_ref(&shadow)).admitted);
        let d = run(&mut store, now, &[shadow.clone(), charge("e", 10, 1)]);
        assert!(d.admitted);
        assert!(!d.outcomes[0].fits);
        assert_eq!(store.get("s").copied(), Some(1_000_000), "an over-limit shadow charge adds no debt");
    }

    #[test]
    fn two_charges_on_one_bucket_see_each_other() {
        let mut store = HashMap::new();
        let d = run(&mut store, 0, &[charge("a", 3, 2), charge("a", 3, 2)]);
        assert!(!d.admitted);
        assert!(store.is_empty());
        let d = run(&mut store, 0, &[charge("a", 3, 1), charge("a", 3, 2)]);
        assert!(d.admitted);
        assert_eq!(d.outcomes[1].remaining, 0);
        assert_eq!(store.get("a").copied(), Some(3 * 333_334));
    }

    #[test]
    fn more_hits_than_the_burst_never_fit_and_huge_hits_do_not_overflow() {
        let mut store = HashMap::new();
        assert!(!run(&mut store, 0, &[charge("a", 5, 6)]).admitted);
        assert!(!run(&mut store, u64::MAX - 1, &[charge("a", 5, u64::MAX)]).admitted);
        assert!(store.is_empty());
    }

    #[test]
    fn a_clock_going_backwards_adds_no_tokens() {
        let mut store = HashMap::new();
        assert!(run(&mut store, 10_000_000, &[charge("a", 1, 1)]).admitted);
        assert!(!run(&mut store, 9_000_000, &[charge("a", 1, 1)]).admitted);
    }
}
