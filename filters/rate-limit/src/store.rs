//! Buckets in shared data: a fixed pool of slots per rule, pre-initialized, updated by
//! compare-and-swap.
//!
//! Shared data has no delete, and a key that does not exist yet has no CAS token: two workers
//! writing it "for the first time" would both succeed and one admission would be lost. So no
//! bucket is ever created on the request path. When the filter is configured (Envoy does this on
//! the main thread before the listener takes traffic, then on each worker) every slot that does
//! not exist yet is written as an idle entry, and a marker records how many slots exist. From then
//! on every admission is a CAS-guarded update of an existing entry. Writing an idle entry twice is
//! harmless: idle means "full bucket", the same as no entry.
//!
//! Each rule has its own pool (`tollgate.rate_limit.<domain>.<rule>.<slot>`), so a flood of
//! distinct keys on one rule fills that rule's slots and no other's: a slot shared with a bucket
//! of a long window would otherwise refuse a rule of short windows until that debt cleared. The
//! number of slots is fixed, so a flood cannot grow memory. Two bucket keys of a rule landing in
//! one slot share it: while the entry is busy (some bucket not full), the newcomer's tokens come
//! from the same debt, which can only refuse more, never admit more, than each key's own limit
//! (see `tollgate_core::rate_limit::bucket`). Once the entry is full again it carries no
//! information, and the next key takes it over with a full bucket, which is exactly what it
//! would have had alone.

use tollgate_core::rate_limit::bucket::{self, Class, Decision, Limit, State};
use tollgate_host::Host;
use tollgate_host::shared::{Cas, cas_apply};

/// Retries of the compare-and-swap loop before the request follows `failure_mode`.
pub const CAS_RETRIES: usize = 16;

/// One rule's pool of slots: shared-data keys `tollgate.rate_limit.<domain>.<rule>.<slot>`
/// (domains and rule names have no dots, so no two pools share a key).
#[derive(Debug, Clone)]
pub struct Slots {
    prefix: String,
    pub count: u32,
}

/// The CAS loop ran out of retries, or the host refused the write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exhausted;

impl Slots {
    pub fn new(domain: &str, rule: &str, count: u32) -> Self {
        Self { prefix: format!("tollgate.rate_limit.{domain}.{rule}."), count }
    }

    fn key(&self, slot: u32) -> String {
        format!("{}{slot}", self.prefix)
    }

    fn marker(&self) -> String {
        format!("{}slots", self.prefix)
    }

    /// Makes sure every slot exists (see the module documentation). Returns how many it wrote.
    pub fn initialize<H: Host + ?Sized>(&self, host: &H) -> u32 {
        let marker = self.marker();
        let ready = host
            .shared_get(&marker)
            .0
            .and_then(|b| b.as_slice().try_into().ok().map(u32::from_le_bytes))
            .unwrap_or(0);
        if ready >= self.count {
            return 0;
        }
        let idle = State::default().encode();
        let mut written = 0;
        for slot in 0..self.count {
            let key = self.key(slot);
            if host.shared_get(&key).0.is_none() && host.shared_set(&key, &idle, None).is_ok() {
                written += 1;
            }
        }
        let _ = host.shared_set(&marker, &self.count.to_le_bytes(), None);
        written
    }

    /// Takes one token for `owner` in `slot`. A refusal writes nothing.
    pub fn take<H: Host + ?Sized>(
        &self,
        host: &H,
        slot: u32,
        owner: u64,
        limits: &[Limit],
        class: Class,
    ) -> Result<Decision, Exhausted> {
        let idle = State::default().encode();
        // A slot that does not exist yet (it always does after configure) is created idle, then
        // taken from through the CAS path like every other admission.
        let decision = cas_apply(host, &self.key(slot), CAS_RETRIES, Some(&idle), |current| {
            let state = current.and_then(State::decode);
            let now_ns = bucket::ms_to_ns(host.now_ms());
            let decision = bucket::take(state.as_ref(), owner, limits, class, now_ns);
            match decision.next.as_ref().map(State::encode) {
                Some(next) => Cas::Write(next, decision),
                None => Cas::Keep(decision),
            }
        });
        decision.ok_or(Exhausted)
    }
}
