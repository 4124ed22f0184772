//! `VerifyKey` load: a closed loop of calls kept in flight from this process, spread round-robin
//! over one or more replicas, each call a lookup of a random key among those given; calls per
//! second and each call's latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tollgate_bench::{Error, Result, stats};
use tollgate_e2e::KeyClient;
use tollgate_proto::v1::{VerifyKeyRequest, VerifyResult};

/// What one load run measured.
#[derive(Debug, Clone)]
pub(crate) struct Load {
    pub(crate) calls_per_second: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) failed: u64,
}

/// A small xorshift generator: which key each call looks up (no need for a cryptographic one).
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

/// Keeps `in_flight` `VerifyKey` calls going for `duration`, call after call sent to the next of
/// `clients` in turn, each looking up one of `key_hashes` at random. Every call is checked first
/// (each key must verify as valid on every replica).
pub(crate) async fn verify_key_load(
    clients: &[KeyClient],
    key_hashes: &[Vec<u8>],
    in_flight: usize,
    duration: Duration,
) -> Result<Load> {
    if clients.is_empty() || key_hashes.is_empty() {
        return Err(Error("VerifyKey load needs a client and a key".to_owned()));
    }
    // Warm up, and check the call works at all, on every replica.
    for (i, client) in clients.iter().enumerate() {
        for key_hash in key_hashes.iter().take(3) {
            let answer = client
                .clone()
                .verify_key(VerifyKeyRequest { key_hash: key_hash.clone() })
                .await
                .map_err(|status| Error(format!("VerifyKey on replica {}: {status}", i + 1)))?
                .into_inner();
            if answer.result != VerifyResult::Valid as i32 {
                return Err(Error(format!(
                    "VerifyKey on replica {} answers {} for a key just created",
                    i + 1,
                    answer.result
                )));
            }
        }
    }
    let clients = Arc::new(clients.to_vec());
    let key_hashes = Arc::new(key_hashes.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = tokio::time::Instant::now() + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..in_flight {
        let (mut clients, key_hashes, next) = (clients.as_ref().clone(), key_hashes.clone(), next.clone());
        tasks.spawn(async move {
            let mut random = XorShift(0x9E37_79B9_7F4A_7C15 ^ ((task as u64 + 1) * 0x2545_F491_4F6C_DD1D));
            let (mut latencies_us, mut failed) = (Vec::new(), 0u64);
            while tokio::time::Instant::now() < deadline {
                let replica = next.fetch_add(1, Ordering::Relaxed) % clients.len();
                let key_hash = key_hashes[random.below(key_hashes.len())].clone();
                let started = Instant::now();
                let answer = clients[replica].verify_key(VerifyKeyRequest { key_hash }).await;
                match answer {
                    Ok(a) if a.get_ref().result == VerifyResult::Valid as i32 => {
                        latencies_us.push(started.elapsed().as_secs_f64() * 1e6)
                    }
                    _ => failed += 1,
                }
            }
            (latencies_us, failed)
        });
    }
    let start = Instant::now();
    let (mut latencies_us, mut failed) = (Vec::new(), 0);
    while let Some(joined) = tasks.join_next().await {
        let (l, f) = joined.map_err(|e| Error(format!("load task: {e}")))?;
        latencies_us.extend(l);
        failed += f;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let ok = latencies_us.len();
    let mut ms = |q: f64| percentile(&mut latencies_us, q).map_or(f64::NAN, |us| us / 1e3);
    Ok(Load { calls_per_second: ok as f64 / elapsed, p50_ms: ms(0.5), p99_ms: ms(0.99), failed })
}

/// The `q` quantile (nearest rank) of `values`, sorting them in place.
fn percentile(values: &mut [f64], q: f64) -> Option<f64> {
    if q == 0.5 {
        return stats::median(values);
    }
    values.sort_by(f64::total_cmp);
    let index = ((values.len() as f64 * q).ceil() as usize).saturating_sub(1);
    values.get(index).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let mut values: Vec<f64> = (1..=100).map(f64::from).rev().collect();
        assert_eq!(percentile(&mut values, 0.99), Some(99.0));
        assert_eq!(percentile(&mut values, 0.5), Some(50.5));
        assert_eq!(percentile(&mut [], 0.99), None);
    }

    #[test]
    fn random_picks_stay_in_range_and_vary() {
        let mut random = XorShift(42);
        let picks: Vec<usize> = (0..1000).map(|_| random.below(7)).collect();
        assert!(picks.iter().all(|p| *p < 7));
        assert!((0..7).all(|k| picks.contains(&k)), "{picks:?}");
    }
}
