//! The verified-token cache: one shared-data slot per token hash, holding the payload of a
//! token whose signature verified, until its `exp` (or a maximum TTL). Claims are checked
//! again on every hit, so expiry and route rules never depend on the cache.

/// Format version of an entry.
const VERSION: u8 = 1;
const HEADER: usize = 1 + 32 + 8 + 2;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// SHA-256 of the whole token.
    pub hash: [u8; 32],
    /// Unix seconds after which the entry is not used.
    pub valid_until_s: i64,
    /// Index of the provider whose key verified it.
    pub provider: u16,
    /// The token's payload as signed (JSON).
    pub payload: Vec<u8>,
}

impl Entry {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.payload.len());
        out.push(VERSION);
        out.extend_from_slice(&self.hash);
        out.extend_from_slice(&self.valid_until_s.to_le_bytes());
        out.extend_from_slice(&self.provider.to_le_bytes());
        out.extend_from_slice(&self.payload);
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Entry> {
        if bytes.len() < HEADER || bytes[0] != VERSION {
            return None;
        }
        Some(Entry {
            hash: bytes[1..33].try_into().ok()?,
            valid_until_s: i64::from_le_bytes(bytes[33..41].try_into().ok()?),
            provider: u16::from_le_bytes(bytes[41..43].try_into().ok()?),
            payload: bytes[HEADER..].to_vec(),
        })
    }

    /// The entry, if it is for `hash` and still valid at `now_s`.
    pub fn lookup(bytes: &[u8], hash: &[u8; 32], now_s: i64) -> Option<Entry> {
        Self::decode(bytes).filter(|e| e.hash == *hash && now_s < e.valid_until_s)
    }
}

/// The slot of a token hash among `slots`.
pub fn slot(hash: &[u8; 32], slots: u32) -> u32 {
    u32::from_le_bytes([hash[0], hash[1], hash[2], hash[3]]) % slots.max(1)
}

/// Until when a verified token may be served from the cache.
pub fn valid_until(now_s: i64, exp: Option<i64>, max_ttl_s: i64) -> i64 {
    let cap = now_s.saturating_add(max_ttl_s);
    exp.map_or(cap, |e| e.min(cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_lookup_rules() {
        let e = Entry { hash: [3; 32], valid_until_s: 100, provider: 2, payload: br#"{"sub":"a"}"#.to_vec() };
        let bytes = e.encode();
        assert_eq!(Entry::decode(&bytes), Some(e.clone()));
        assert_eq!(Entry::lookup(&bytes, &[3; 32], 99), Some(e));
        assert_eq!(Entry::lookup(&bytes, &[3; 32], 100), None, "expired");
        assert_eq!(Entry::lookup(&bytes, &[4; 32], 50), None, "another token in the slot");
        assert_eq!(Entry::decode(&bytes[..20]), None);
        let mut wrong = bytes.clone();
        wrong[0] = 9;
        assert_eq!(Entry::decode(&wrong), None);
        assert_eq!(Entry::decode(&[]), None);
    }

    #[test]
    fn validity_is_capped() {
        assert_eq!(valid_until(1000, Some(1100), 300), 1100);
        assert_eq!(valid_until(1000, Some(5000), 300), 1300);
        assert_eq!(valid_until(1000, None, 300), 1300);
        assert!(slot(&[255; 32], 7) < 7);
        assert_eq!(slot(&[1; 32], 0), 0);
    }
}
