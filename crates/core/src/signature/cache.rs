//! Cached signing material of one key id, as the filter keeps it in a shared-data slot.
//! Invalidation reuses key-auth's change-feed consumer ([`crate::key_auth::cache::feed_step`]):
//! an entry fetched before a change to its key id is not used.

use std::time::Duration;

use crate::key_auth::cache::Freshness;

use super::verify::KeyMaterial;

/// What the key service said about a key id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaterialState {
    Valid,
    NotFound,
    Revoked,
    Expired,
}

/// One cached answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaterialEntry {
    pub key_id: String,
    pub state: MaterialState,
    /// Present when `state` is `Valid`.
    pub material: Option<KeyMaterial>,
    pub consumer_id: String,
    /// The key's expiry, Unix seconds (0 = never); checked at use time.
    pub expires_at_s: i64,
    pub fetched_at_ms: u64,
    pub feed_seq: u64,
}

const VERSION: u8 = 1;
const MAX_STR: usize = 4096;

impl MaterialEntry {
    /// Whether the key may sign at `now_s`.
    pub fn usable_at(&self, now_s: i64) -> MaterialState {
        match self.state {
            MaterialState::Valid if self.expires_at_s != 0 && now_s >= self.expires_at_s => {
                MaterialState::Expired
            }
            state => state,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![VERSION];
        out.push(match self.state {
            MaterialState::Valid => 0,
            MaterialState::NotFound => 1,
            MaterialState::Revoked => 2,
            MaterialState::Expired => 3,
        });
        let (alg, bytes): (u8, &[u8]) = match &self.material {
            None => (0, &[]),
            Some(KeyMaterial::Hmac(secret)) => (1, secret),
            Some(KeyMaterial::Ed25519(key)) => (2, key),
        };
        out.push(alg);
        out.extend_from_slice(&self.fetched_at_ms.to_le_bytes());
        out.extend_from_slice(&self.expires_at_s.to_le_bytes());
        out.extend_from_slice(&self.feed_seq.to_le_bytes());
        for part in [self.key_id.as_bytes(), self.consumer_id.as_bytes(), bytes] {
            let len = u16::try_from(part.len().min(MAX_STR)).unwrap_or(0);
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&part[..usize::from(len)]);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader { bytes, pos: 0 };
        if r.take(1)? != [VERSION] {
            return None;
        }
        let state = match r.take(1)?.first()? {
            0 => MaterialState::Valid,
            1 => MaterialState::NotFound,
            2 => MaterialState::Revoked,
            3 => MaterialState::Expired,
            _ => return None,
        };
        let alg = *r.take(1)?.first()?;
        let fetched_at_ms = u64::from_le_bytes(r.take(8)?.try_into().ok()?);
        let expires_at_s = i64::from_le_bytes(r.take(8)?.try_into().ok()?);
        let feed_seq = u64::from_le_bytes(r.take(8)?.try_into().ok()?);
        let key_id = String::from_utf8(r.chunk()?.to_vec()).ok()?;
        let consumer_id = String::from_utf8(r.chunk()?.to_vec()).ok()?;
        let raw = r.chunk()?;
        let material = match alg {
            0 => None,
            1 => Some(KeyMaterial::Hmac(raw.to_vec())),
            2 => Some(KeyMaterial::Ed25519(raw.try_into().ok()?)),
            _ => return None,
        };
        if r.pos != bytes.len() || (state == MaterialState::Valid) != material.is_some() {
            return None;
        }
        Some(Self { key_id, state, material, consumer_id, expires_at_s, fetched_at_ms, feed_seq })
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let out = self.bytes.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(out)
    }

    fn chunk(&mut self) -> Option<&'a [u8]> {
        let n = usize::from(u16::from_le_bytes(self.take(2)?.try_into().ok()?));
        if n > MAX_STR {
            return None;
        }
        self.take(n)
    }
}

/// The cache slot of a key id (FNV-1a).
pub fn cache_slot(key_id: &str, slots: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(slots.max(1))) as u32
}

/// The cached entry for `key_id` if it may be used at `now_ms`: same key id, within its TTL
/// (the negative TTL for unknown keys) and not invalidated by the change feed.
pub fn fresh(
    entry: Option<MaterialEntry>,
    key_id: &str,
    now_ms: u64,
    freshness: Freshness,
    ttl: Duration,
    negative_ttl: Duration,
) -> Option<MaterialEntry> {
    let entry = entry.filter(|e| e.key_id == key_id)?;
    if freshness.invalidated_at > entry.feed_seq || entry.feed_seq < freshness.base {
        return None;
    }
    let ttl = if entry.state == MaterialState::NotFound { negative_ttl } else { ttl };
    let age = Duration::from_millis(now_ms.saturating_sub(entry.fetched_at_ms));
    (age < ttl).then_some(entry)
}
