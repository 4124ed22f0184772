//! Cached signing material of one key id, as the filter keeps it in a shared-data slot.
//! Invalidation is the key service's change feed's ([`crate::feed`]): an entry fetched before a
//! change to its key id is not used, and neither is one fetched in an older feed epoch (before
//! the key service's store was restored from a backup). A slot holds the entry stamped with its
//! epoch ([`encode_slot`]); [`fresh_in_epoch`] asks [`feed::invalidated`] about both.

use std::time::Duration;

use crate::feed::{self, Freshness, Stamp};

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

const SLOT_VERSION: u8 = 2;

/// A cache slot's value: `entry` stamped with the feed epoch its answer belongs to.
pub fn encode_slot(entry: &MaterialEntry, epoch: u64) -> Vec<u8> {
    let entry = entry.encode();
    let mut out = Vec::with_capacity(9 + entry.len());
    out.push(SLOT_VERSION);
    out.extend_from_slice(&epoch.to_le_bytes());
    out.extend_from_slice(&entry);
    out
}

/// Decodes a slot into the entry and its epoch; `None` for anything malformed (a miss).
pub fn decode_slot(bytes: &[u8]) -> Option<(MaterialEntry, u64)> {
    let (&version, rest) = bytes.split_first()?;
    if version != SLOT_VERSION || rest.len() < 8 {
        return None;
    }
    let (epoch, entry) = rest.split_at(8);
    Some((MaterialEntry::decode(entry)?, u64::from_le_bytes(epoch.try_into().ok()?)))
}

/// The cached entry of a slot, stamped with `epoch`, if it may be used at `now_ms`: same key
/// id, not retired by the change feed ([`feed::invalidated`]: `freshness` says what the feed says
/// now about the key id), within its TTL (the negative TTL for unknown keys).
pub fn fresh_in_epoch(
    slot: Option<(MaterialEntry, u64)>,
    key_id: &str,
    now_ms: u64,
    freshness: Freshness,
    ttl: Duration,
    negative_ttl: Duration,
) -> Option<MaterialEntry> {
    let (entry, epoch) = slot?;
    usable(&entry, epoch, key_id, now_ms, freshness, ttl, negative_ttl).then_some(entry)
}

/// [`fresh_in_epoch`] without taking the entry: whether `entry`, cached in feed epoch `epoch`,
/// may be used for `key_id`.
pub fn usable(
    entry: &MaterialEntry,
    epoch: u64,
    key_id: &str,
    now_ms: u64,
    freshness: Freshness,
    ttl: Duration,
    negative_ttl: Duration,
) -> bool {
    if entry.key_id != key_id || feed::invalidated(Stamp { epoch, seq: entry.feed_seq }, freshness) {
        return false;
    }
    let ttl = if entry.state == MaterialState::NotFound { negative_ttl } else { ttl };
    let age = Duration::from_millis(now_ms.saturating_sub(entry.fetched_at_ms));
    age < ttl
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

/// [`fresh_in_epoch`] for an entry of the feed's current epoch.
pub fn fresh(
    entry: Option<MaterialEntry>,
    key_id: &str,
    now_ms: u64,
    freshness: Freshness,
    ttl: Duration,
    negative_ttl: Duration,
) -> Option<MaterialEntry> {
    let slot = entry.map(|e| (e, freshness.epoch));
    fresh_in_epoch(slot, key_id, now_ms, freshness, ttl, negative_ttl)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(state: MaterialState) -> MaterialEntry {
        MaterialEntry {
            key_id: "key_1".into(),
            state,
            material: (state == MaterialState::Valid).then(|| KeyMaterial::Hmac(vec![7; 32])),
            consumer_id: "alice".into(),
            expires_at_s: 0,
            fetched_at_ms: 1_000,
            feed_seq: 20,
        }
    }

    #[test]
    fn slots_carry_the_epoch_and_refuse_anything_else() {
        let e = entry(MaterialState::Valid);
        let bytes = encode_slot(&e, 3);
        assert_eq!(decode_slot(&bytes), Some((e.clone(), 3)));
        for cut in 0..bytes.len() {
            assert_eq!(decode_slot(&bytes[..cut]), None, "cut at {cut}");
        }
        assert_eq!(decode_slot(&e.encode()), None, "an entry without its epoch");
    }

    #[test]
    fn material_asked_for_before_a_feed_reset_is_not_used() {
        let ttl = Duration::from_secs(60);
        let f = Freshness::epoch_only(1);
        for state in [MaterialState::Valid, MaterialState::NotFound, MaterialState::Revoked] {
            let slot = |epoch| Some((entry(state), epoch));
            assert_eq!(fresh_in_epoch(slot(0), "key_1", 2_000, f, ttl, ttl), None, "{state:?}");
            assert!(fresh_in_epoch(slot(1), "key_1", 2_000, f, ttl, ttl).is_some(), "{state:?}");
            assert!(fresh_in_epoch(slot(2), "key_1", 2_000, f, ttl, ttl).is_some(), "{state:?}");
        }
    }
}
