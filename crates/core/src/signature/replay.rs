//! Replay protection over a bounded table of slots (the shared-data layout is the filter's).
//!
//! Each signature is remembered by a 16-byte id (SHA-256 of the key id and the nonce, or of
//! the key id and the signature bytes) until it could no longer be accepted anyway (created +
//! maximum age + clock skew). An id lives in one of [`PROBES`] consecutive slots from its home
//! slot. A slot is free when empty or when its entry has lapsed — evicting a lapsed entry is
//! safe because that signature is rejected as too old. When all probe slots hold live entries
//! of other ids, the request is refused (fail closed): a collision never lets a replay through.
//! Every write is a compare-and-swap on the slot it decided on, and the writer reads all probe
//! slots again afterwards: if the id shows up in another slot with another writer's tag, two
//! requests raced with the same signature and the later one is refused.

use sha2::{Digest as _, Sha256};

/// Slots probed per id.
pub const PROBES: u32 = 4;

/// Length of an encoded entry.
pub const ENTRY_LEN: usize = 32;

/// A remembered signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayEntry {
    pub id: [u8; 16],
    /// Unix milliseconds after which the entry may be evicted.
    pub until_ms: u64,
    /// Identifies the writer (worker and request), to detect two racing writers.
    pub writer: u64,
}

impl ReplayEntry {
    pub fn encode(&self) -> [u8; ENTRY_LEN] {
        let mut out = [0u8; ENTRY_LEN];
        out[..16].copy_from_slice(&self.id);
        out[16..24].copy_from_slice(&self.until_ms.to_le_bytes());
        out[24..].copy_from_slice(&self.writer.to_le_bytes());
        out
    }

    /// `None` for an empty (initialized) slot or bytes that are not an entry.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != ENTRY_LEN {
            return None;
        }
        let id: [u8; 16] = bytes[..16].try_into().ok()?;
        let until_ms = u64::from_le_bytes(bytes[16..24].try_into().ok()?);
        let writer = u64::from_le_bytes(bytes[24..].try_into().ok()?);
        Some(Self { id, until_ms, writer })
    }

    pub fn live(&self, now_ms: u64) -> bool {
        self.until_ms > now_ms
    }
}

/// The id under which a signature is remembered: by nonce when there is one, else by the
/// signature itself; always scoped by key id.
pub fn replay_id(key_id: &str, nonce: Option<&str>, signature: &[u8]) -> [u8; 16] {
    let mut hasher = Sha256::new();
    hasher.update(key_id.as_bytes());
    match nonce {
        Some(n) => {
            hasher.update(b"\x00nonce\x00");
            hasher.update(n.as_bytes());
        }
        None => {
            hasher.update(b"\x00sig\x00");
            hasher.update(signature);
        }
    }
    let digest = hasher.finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    id
}

/// The probe slots of an id, home slot first.
pub fn probe_slots(id: &[u8; 16], slots: u32) -> Vec<u32> {
    let slots = slots.max(1);
    let home = u32::from_le_bytes([id[0], id[1], id[2], id[3]]) % slots;
    (0..PROBES.min(slots)).map(|i| (home + i) % slots).collect()
}

/// What one look at the probe slots says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// The id is remembered and live: a replay.
    Seen,
    /// The id is not there; write it into this probe index.
    Free(usize),
    /// All probe slots hold live entries of other ids.
    Full,
}

/// Decides from the current contents of the probe slots (`None` = empty slot).
pub fn probe(entries: &[Option<ReplayEntry>], id: &[u8; 16], now_ms: u64) -> Probe {
    if entries.iter().flatten().any(|e| e.id == *id && e.live(now_ms)) {
        return Probe::Seen;
    }
    match entries.iter().position(|e| e.is_none_or(|e| !e.live(now_ms))) {
        Some(i) => Probe::Free(i),
        None => Probe::Full,
    }
}

/// After writing: true when the only live copy of the id is the one this writer wrote.
pub fn confirmed(entries: &[Option<ReplayEntry>], mine: &ReplayEntry, now_ms: u64) -> bool {
    let copies: Vec<&ReplayEntry> =
        entries.iter().flatten().filter(|e| e.id == mine.id && e.live(now_ms)).collect();
    copies.len() == 1 && copies.first().is_some_and(|e| e.writer == mine.writer)
}
