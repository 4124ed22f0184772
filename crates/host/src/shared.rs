//! Read–modify–write helpers over shared data, which every worker of one proxy sees. Shared
//! data has no delete, no per-key expiry and no atomic update other than compare-and-swap, so
//! every update here is a CAS loop with bounded retries.

use tollgate_core::key_auth::cache::FeedState;

use crate::{Host, SharedError};

/// Retries of a compare-and-swap loop before giving up.
pub const CAS_RETRIES: usize = 8;

/// Updates `key` with compare-and-swap: `f` gets the current value and returns the new one, or
/// `None` to leave it as it is. Returns false when the retries ran out or the host refused.
///
/// A key that does not exist yet has no CAS token, so two workers racing on its first insert
/// both succeed and the later write wins: use this for values where either outcome is correct
/// (maximums, merges of monotonic fields), or create the key before serving.
pub fn cas_update<H: Host + ?Sized>(
    host: &H,
    key: &str,
    f: impl Fn(Option<&[u8]>) -> Option<Vec<u8>>,
) -> bool {
    for _ in 0..CAS_RETRIES {
        let (current, cas) = host.shared_get(key);
        let Some(next) = f(current.as_deref()) else { return true };
        match host.shared_set(key, &next, cas) {
            Ok(()) => return true,
            Err(SharedError::CasMismatch) => continue,
            Err(SharedError::Failed) => return false,
        }
    }
    false
}

/// A little-endian u64 value; 0 when missing or malformed.
pub fn read_u64<H: Host + ?Sized>(host: &H, key: &str) -> u64 {
    host.shared_get(key).0.and_then(|b| b.as_slice().try_into().ok().map(u64::from_le_bytes)).unwrap_or(0)
}

/// Raises a u64 value to at least `value`. Returns false when the retries ran out.
pub fn raise_u64<H: Host + ?Sized>(host: &H, key: &str, value: u64) -> bool {
    cas_update(host, key, |current| {
        let current = current.and_then(|b| b.try_into().ok().map(u64::from_le_bytes)).unwrap_or(0);
        (current < value).then(|| value.to_le_bytes().to_vec())
    })
}

/// A change-feed consumer's record and its CAS token.
pub fn read_feed<H: Host + ?Sized>(host: &H, key: &str) -> (FeedState, Option<u32>) {
    let (bytes, cas) = host.shared_get(key);
    (bytes.and_then(|b| FeedState::decode(&b)).unwrap_or_default(), cas)
}

/// Stores a change-feed consumer's next state after a poll, never moving the cursor backwards.
pub fn finish_poll<H: Host + ?Sized>(host: &H, key: &str, next: FeedState) -> bool {
    cas_update(host, key, |current| {
        let current = current.and_then(FeedState::decode).unwrap_or_default();
        let merged = if current.cursor > next.cursor && current.base >= next.base {
            FeedState { busy_until_ms: 0, ..current }
        } else {
            next
        };
        Some(merged.encode().to_vec())
    })
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use crate::mock::MockHost;

    #[test]
    fn raise_only_moves_up_and_survives_contention() {
        let host = MockHost::new();
        assert!(raise_u64(&*host, "k", 5));
        assert!(raise_u64(&*host, "k", 3));
        assert_eq!(read_u64(&*host, "k"), 5);
        host.fail_next_cas(CAS_RETRIES as u32 - 1);
        assert!(raise_u64(&*host, "k", 9), "succeeds on the last retry");
        assert_eq!(read_u64(&*host, "k"), 9);
        host.fail_next_cas(CAS_RETRIES as u32);
        assert!(!raise_u64(&*host, "k", 10), "gives up after the bounded retries");
        assert_eq!(read_u64(&*host, "k"), 9);
    }

    #[test]
    fn finishing_a_poll_never_moves_the_cursor_back() {
        let host = MockHost::new();
        let ahead = FeedState { started: true, cursor: 10, base: 2, busy_until_ms: 7 };
        assert!(finish_poll(&*host, "f", ahead));
        assert!(finish_poll(&*host, "f", FeedState { started: true, cursor: 4, base: 2, busy_until_ms: 0 }));
        assert_eq!(read_feed(&*host, "f").0, FeedState { busy_until_ms: 0, ..ahead });
    }
}
