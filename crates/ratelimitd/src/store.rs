//! Where the buckets live: in this process's memory (one instance, exact) or in Redis (any
//! number of instances sharing it, exact). Both decide with the same algorithm ([`crate::gcra`])
//! in one atomic step per request: under one lock, or in one Lua script.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::gcra::{Charge, Decision, evaluate};
use crate::redis::RedisStore;

/// Why the store could not decide. The request is answered `UNAVAILABLE`, so Envoy applies its
/// own failure mode.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(String),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the in-memory bucket table is full ({0} buckets that are not full yet)")]
    Full(usize),
}

/// The store of the buckets.
pub enum Store {
    Memory(MemoryStore),
    Redis(RedisStore),
}

impl Store {
    /// Checks every charge, then charges all of them when every enforced one fits.
    pub async fn decide(&self, charges: &[Charge]) -> Result<Decision, StoreError> {
        if charges.is_empty() {
            return Ok(Decision { admitted: true, outcomes: Vec::new() });
        }
        match self {
            Store::Memory(store) => store.decide(charges),
            Store::Redis(store) => store.decide(charges).await,
        }
    }
}

/// Buckets in a map behind one lock: exact for one instance. At most `max_buckets` buckets that
/// are not full are kept; a full bucket is the same as none, so full ones are dropped when room
/// is needed. When every slot holds a bucket that is not full, requests that need a new bucket are
/// answered as a store failure rather than let through or refused on a guess.
pub struct MemoryStore {
    inner: Mutex<Table>,
    max_buckets: usize,
    epoch: Instant,
}

struct Table {
    tats: HashMap<String, u64>,
    last_sweep: Option<u64>,
}

/// How often a full table may be swept for full buckets.
const SWEEP_EVERY_MICROS: u64 = 1_000_000;

impl MemoryStore {
    pub fn new(max_buckets: usize) -> Self {
        MemoryStore {
            inner: Mutex::new(Table { tats: HashMap::new(), last_sweep: None }),
            max_buckets: max_buckets.max(1),
            epoch: Instant::now(),
        }
    }

    /// Microseconds on a monotonic clock (never 0, so "no bucket" is always in the past).
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX).saturating_add(1)
    }

    fn decide(&self, charges: &[Charge]) -> Result<Decision, StoreError> {
        let now = self.now();
        self.decide_at(now, charges)
    }

    pub(crate) fn decide_at(&self, now: u64, charges: &[Charge]) -> Result<Decision, StoreError> {
        let mut table = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (decision, writes) = evaluate(now, charges, |key| table.tats.get(key).copied());
        let new = writes.iter().filter(|(key, _)| !table.tats.contains_key(key)).count();
        if table.tats.len() + new > self.max_buckets {
            let due = table.last_sweep.is_none_or(|at| now.saturating_sub(at) >= SWEEP_EVERY_MICROS);
            if due {
                table.tats.retain(|_, tat| *tat > now);
                table.last_sweep = Some(now);
            }
            if table.tats.len() + new > self.max_buckets {
                return Err(StoreError::Full(table.tats.len()));
            }
        }
        table.tats.extend(writes);
        Ok(decision)
    }

    /// Buckets held (full ones not swept yet included).
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).tats.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gcra::tests::charge;

    #[test]
    fn a_full_table_drops_full_buckets_and_refuses_to_guess_when_none_are_full() {
        let store = MemoryStore::new(2);
        assert!(store.decide_at(1_000_000, &[charge("a", 1, 1)]).unwrap().admitted);
        assert!(store.decide_at(1_000_000, &[charge("b", 1, 1)]).unwrap().admitted);
        // "a" and "b" are full again only at 2 s: no room for "c".
        assert!(matches!(store.decide_at(1_500_000, &[charge("c", 1, 1)]), Err(StoreError::Full(2))));
        // An existing bucket still works.
        assert!(!store.decide_at(1_500_000, &[charge("a", 1, 1)]).unwrap().admitted);
        // At 3 s both are full again: swept, "c" gets a slot.
        assert!(store.decide_at(3_000_000, &[charge("c", 1, 1)]).unwrap().admitted);
        assert_eq!(store.len(), 1);
    }
}
