//! The lifecycle scheduler: every `interval`, the replica holding the `lifecycle` lease walks
//! the keys [`Store::lifecycle_candidates`] returns and applies what [`super::plan`] says is due.
//!
//! One replica at a time: the lease lasts three intervals and is renewed every tick, so when
//! its holder stops another replica takes over within three intervals. Even two schedulers at
//! once could not repeat a transition: the store records each under its `(key, generation,
//! stage)` in the transition's own transaction and skips one already recorded; an automatic
//! rotation happens only while the key's secret is still the one born at the planned time.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{Transition, plan};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::feed::Feed;
use crate::master::MasterKeys;
use crate::metrics::Metrics;
use crate::model::{Ctx, Rotation, StoredSecret};
use crate::secrets::{self, Pepper};
use crate::service::blocking;
use crate::store::Store;

/// The name of the scheduler's lease.
pub const LEASE: &str = "lifecycle";
/// The actor of the scheduler's transitions in the audit log.
pub const ACTOR: &str = "lifecycle";
/// Keys read per page.
const PAGE: usize = 500;

/// The additional authenticated data a pending secret is sealed under (apart from the key's
/// signing secret, sealed under the key id alone).
pub fn pending_aad(key_id: &str) -> String {
    format!("pending:{key_id}")
}

/// Makes a new API key and how it is stored.
pub fn new_secret(pepper: &Pepper) -> Result<(String, StoredSecret)> {
    let key = secrets::new_api_key()?;
    let hash = pepper.stored_hash(&tollgate_core::key::key_hash(&key))?;
    let display_prefix = tollgate_core::key::display_prefix(&key).to_owned();
    Ok((key, StoredSecret { hash, display_prefix }))
}

/// What a tick did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TickReport {
    pub leader: bool,
    pub keys: usize,
    pub applied: usize,
}

pub struct Scheduler {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    pepper: Arc<Pepper>,
    master: MasterKeys,
    feed: Feed,
    interval: Duration,
    holder: String,
    metrics: Metrics,
}

impl Scheduler {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        pepper: Arc<Pepper>,
        master: MasterKeys,
        feed: Feed,
        interval: Duration,
        metrics: Metrics,
    ) -> Result<Self> {
        let holder = format!("{}-{}", std::process::id(), secrets::random_base62(12)?);
        Ok(Self { store, clock, pepper, master, feed, interval, holder, metrics })
    }

    /// Ticks until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        loop {
            match self.tick().await {
                Ok(report) if report.applied > 0 => {
                    tracing::info!(keys = report.keys, applied = report.applied, "lifecycle tick");
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "lifecycle: tick failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
    }

    /// One pass over the keys, if this replica holds the lease.
    pub async fn tick(&self) -> Result<TickReport> {
        let now = self.clock.now();
        // Three intervals, and at least 3 s: whole seconds on the store's clock.
        let lease = i64::try_from(self.interval.as_secs().saturating_mul(3)).unwrap_or(i64::MAX / 4).max(3);
        let holder = self.holder.clone();
        let leader =
            match blocking(&self.store, move |s| s.take_lease(LEASE, &holder, now, now + lease)).await {
                Ok(leader) => leader,
                Err(err) => {
                    self.metrics.set_lifecycle_leader(false);
                    return Err(err);
                }
            };
        self.metrics.set_lifecycle_leader(leader);
        let mut report = TickReport { leader, ..TickReport::default() };
        if !leader {
            return Ok(report);
        }
        let mut after = 0;
        loop {
            let page = blocking(&self.store, move |s| s.lifecycle_candidates(now, after, PAGE)).await?;
            let full = page.len() >= PAGE;
            for candidate in &page {
                after = after.max(candidate.key.position);
                report.keys += 1;
                for transition in plan(candidate, now) {
                    let label = match &transition {
                        Transition::Expiring { .. } => "expiring",
                        Transition::Expired { .. } => "expired",
                        Transition::Rotate { .. } => "rotated",
                        Transition::EndGrace { .. } => "grace_ended",
                    };
                    match self.apply(transition, now).await {
                        Ok(true) => {
                            report.applied += 1;
                            self.metrics.lifecycle_transition(label);
                        }
                        Ok(false) => {}
                        Err(err) => {
                            tracing::warn!(key_id = %candidate.key.id, error = %err, "lifecycle: transition failed");
                        }
                    }
                }
            }
            if !full {
                break;
            }
        }
        if report.applied > 0 {
            self.feed.notify();
        }
        Ok(report)
    }

    async fn apply(&self, transition: Transition, now: i64) -> Result<bool> {
        let ctx = Ctx { actor: ACTOR.to_owned(), now };
        if let Transition::Rotate { key_id, birth, grace } = transition {
            let (secret, stored) = new_secret(&self.pepper)?;
            let pending = self.master.seal(&pending_aad(&key_id), secret.as_bytes())?;
            let rotation = Rotation {
                key_id,
                secret: stored,
                grace_end: now.saturating_add(grace),
                pending: Some(pending),
                expect_birth: Some(birth),
            };
            return match blocking(&self.store, move |s| s.rotate_key(&ctx, rotation)).await {
                Ok(key) => {
                    tracing::info!(key_id = %key.id, display_prefix = %key.display_prefix, "lifecycle: rotated a key");
                    Ok(true)
                }
                // Rotated or revoked meanwhile: nothing to do.
                Err(Error::FailedPrecondition(_)) => Ok(false),
                Err(err) => Err(err),
            };
        }
        blocking(&self.store, move |s| s.apply_transition(&ctx, &transition)).await
    }
}
