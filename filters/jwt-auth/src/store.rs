//! Shared-data layout, under `tollgate.jwt_auth.<config digest>.`: each remote provider's key set
//! (`jwks.<provider>`: when it was fetched, then the JWKS as fetched) and fetch lease
//! (`fetch.<provider>`), and the verified-token cache (`c.<slot>`).

use sha2::{Digest, Sha256};
use tollgate_core::jwt::cache;
use tollgate_host::Host;

/// Names of this filter's shared-data keys.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Shared data is per proxy: scoped by configuration, so two jwt-auth filters with different
    /// providers never read each other's records.
    pub fn new(raw_config: &[u8]) -> Self {
        let digest = Sha256::digest(raw_config);
        let short = digest.get(..6).unwrap_or_default();
        Self { prefix: format!("tollgate.jwt_auth.{}.", hex::encode(short)) }
    }

    /// A provider's key set.
    pub fn jwks(&self, provider: &str) -> String {
        format!("{}jwks.{provider}", self.prefix)
    }

    /// A provider's fetch lease.
    pub fn fetch(&self, provider: &str) -> String {
        format!("{}fetch.{provider}", self.prefix)
    }

    fn cache(&self, slot: u32) -> String {
        format!("{}c.{slot}", self.prefix)
    }
}

/// A stored key set: when it was fetched (ms since the epoch), then the JWKS as fetched.
pub fn encode_key_set(fetched_at_ms: u64, body: &[u8]) -> Vec<u8> {
    let mut record = fetched_at_ms.to_le_bytes().to_vec();
    record.extend_from_slice(body);
    record
}

/// The time and the JWKS of a stored key set.
pub fn decode_key_set(record: &[u8]) -> Option<(u64, &[u8])> {
    let (stamp, body) = record.split_first_chunk::<8>()?;
    Some((u64::from_le_bytes(*stamp), body))
}

/// The proxy-wide fetch record of one provider.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FetchLease {
    /// A fetch is in flight until this time (ms): others wait for it rather than fetch.
    pub in_flight_until: u64,
    /// After a failed fetch, none before this time (ms).
    pub not_before: u64,
    /// When the last fetch started (ms), for the unknown-`kid` cooldown.
    pub last_start: u64,
}

impl FetchLease {
    pub fn decode(bytes: Option<&[u8]>) -> Self {
        let Some(b) = bytes.filter(|b| b.len() == 24) else { return Self::default() };
        let get =
            |i: usize| b.get(i * 8..i * 8 + 8).and_then(|s| s.try_into().ok()).map_or(0, u64::from_le_bytes);
        Self { in_flight_until: get(0), not_before: get(1), last_start: get(2) }
    }

    pub fn encode(&self) -> Vec<u8> {
        [self.in_flight_until, self.not_before, self.last_start]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect()
    }
}

/// A cached verification of the token with this hash, if any (`slots` 0: no cache).
pub fn cache_get<H: Host + ?Sized>(
    host: &H,
    keys: &Keys,
    slots: u32,
    hash: &[u8; 32],
) -> Option<cache::Entry> {
    if slots == 0 {
        return None;
    }
    let bytes = host.shared_get(&keys.cache(cache::slot(hash, slots))).0?;
    cache::Entry::lookup(&bytes, hash, (host.now_ms() / 1000) as i64)
}

/// Caches a verification. Last writer wins: the hash in the entry tells tokens sharing a slot
/// apart.
pub fn cache_put<H: Host + ?Sized>(host: &H, keys: &Keys, slots: u32, entry: &cache::Entry) {
    if slots == 0 {
        return;
    }
    let _ = host.shared_set(&keys.cache(cache::slot(&entry.hash, slots)), &entry.encode(), None);
}
