//! The shared tier's wire forms: a stored response in one of a proxy's fixed set of shared-data
//! slots (shared data has no delete, so the slots are reused, never removed), and the locks that
//! make one request per proxy go to the origin for a miss or a refresh.
//!
//! Every decode checks its bounds and answers `None` for bytes it did not write: a slot that
//! cannot be read is a miss.

use super::policy::Freshness;
use super::purge::{Reader, put_bytes, put_str};
use super::store::Object;

/// Version byte of an encoded entry.
const ENTRY_V1: u8 = 1;

/// FNV-1a, 64 bits: spreads keys over the slots (not a defence: a collision costs a miss).
pub fn hash(key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The slot of a primary key among `slots` (at least 1).
pub fn slot_of(primary: &str, slots: u32) -> u32 {
    u32::try_from(hash(primary) % u64::from(slots.max(1))).unwrap_or(0)
}

/// A response in the shared tier, with the keys it is stored under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub primary: String,
    pub full: String,
    pub object: Object,
}

pub fn encode_entry(primary: &str, full: &str, o: &Object) -> Vec<u8> {
    let headers: usize = o.headers.iter().map(|(n, v)| n.len() + v.len() + 8).sum();
    let mut out = Vec::with_capacity(primary.len() + full.len() + headers + o.body.len() + 128);
    out.push(ENTRY_V1);
    put_str(&mut out, primary);
    put_str(&mut out, full);
    out.extend_from_slice(&o.status.to_be_bytes());
    out.extend_from_slice(&u32::try_from(o.headers.len()).unwrap_or(u32::MAX).to_be_bytes());
    for (n, v) in &o.headers {
        put_str(&mut out, n);
        put_str(&mut out, v);
    }
    put_bytes(&mut out, &o.body);
    let f = &o.freshness;
    for v in [f.lifetime, f.age_value, f.stale_while_revalidate, f.stale_if_error, o.request_ms] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    for v in [f.date, o.request_time, o.response_time] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.push(u8::from(f.must_revalidate) | u8::from(f.s_maxage) << 1);
    for list in [&o.vary, &o.tags] {
        out.extend_from_slice(&u32::try_from(list.len()).unwrap_or(u32::MAX).to_be_bytes());
        for s in list.iter() {
            put_str(&mut out, s);
        }
    }
    out
}

fn strings(r: &mut Reader<'_>) -> Option<Vec<String>> {
    let n = r.u32()?;
    // Each string takes at least 4 bytes: a count past what is left is not ours.
    if usize::try_from(n).ok()? > r.0.len() / 4 {
        return None;
    }
    (0..n).map(|_| r.str()).collect()
}

pub fn decode_entry(bytes: &[u8]) -> Option<Entry> {
    let mut r = Reader(bytes);
    if r.u8()? != ENTRY_V1 {
        return None;
    }
    let primary = r.str()?;
    let full = r.str()?;
    let status = r.u32()?;
    let n = r.u32()?;
    if usize::try_from(n).ok()? > r.0.len() / 8 {
        return None;
    }
    let headers = (0..n).map(|_| Some((r.str()?, r.str()?))).collect::<Option<Vec<_>>>()?;
    let body = r.bytes()?;
    let (lifetime, age_value, swr, sie, request_ms) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?, r.u64()?);
    let (date, request_time, response_time) = (r.i64()?, r.i64()?, r.i64()?);
    let flags = r.u8()?;
    let vary = strings(&mut r)?;
    let tags = strings(&mut r)?;
    if !r.0.is_empty() {
        return None;
    }
    let freshness = Freshness {
        lifetime,
        date,
        age_value,
        stale_while_revalidate: swr,
        stale_if_error: sie,
        must_revalidate: flags & 1 != 0,
        s_maxage: flags & 2 != 0,
    };
    let object =
        Object { status, headers, body, freshness, request_time, response_time, vary, tags, request_ms };
    Some(Entry { primary, full, object })
}

/// A lock in a shared-data slot: held by `owner` for the key hashing to `key` until `until_ms`.
/// A released lock has `until_ms` 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lock {
    pub key: u64,
    pub owner: u64,
    pub until_ms: u64,
}

impl Lock {
    pub fn encode(&self) -> [u8; 24] {
        let mut out = [0u8; 24];
        out[..8].copy_from_slice(&self.key.to_be_bytes());
        out[8..16].copy_from_slice(&self.owner.to_be_bytes());
        out[16..].copy_from_slice(&self.until_ms.to_be_bytes());
        out
    }

    /// Anything that is not a lock reads as a released one.
    pub fn decode(bytes: Option<&[u8]>) -> Lock {
        let Some(mut r) = bytes.map(Reader) else {
            return Lock::default();
        };
        match (r.u64(), r.u64(), r.u64()) {
            (Some(key), Some(owner), Some(until_ms)) => Lock { key, owner, until_ms },
            _ => Lock::default(),
        }
    }

    pub fn held(&self, now_ms: u64) -> bool {
        self.until_ms > now_ms
    }
}
