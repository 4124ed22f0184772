//! Shared-data layout, under `tollgate.jwt_auth.<config digest>.`: each remote provider's key set
//! (`jwks.<provider>`: when it was fetched, then the JWKS as fetched) and fetch record
//! (`fetch.<provider>`: [`tollgate_core::jwt::fetch::FetchState`]), and the verified-token cache
//! (`c.<slot>`).

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

    /// A provider's fetch record (its lease, back-off and last start).
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
