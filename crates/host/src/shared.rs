//! Read–modify–write helpers over shared data, which every worker of one proxy sees. Shared
//! data has no delete, no per-key expiry and no atomic update other than compare-and-swap, so
//! every update here is a CAS loop with bounded retries.

use crate::{Host, SharedError};

/// Retries of a compare-and-swap loop before giving up.
pub const CAS_RETRIES: usize = 8;

/// Updates `key` with compare-and-swap: `f` gets the current value and returns the new one, or
/// `None` to leave it as it is. Returns false when the retries ran out or the host refused.
///
/// A key that does not exist yet has no CAS token, so two workers racing on its first insert
/// both succeed and the later write wins: use this for values where either outcome is correct
/// (maximums, merges of monotonic fields), or create the key before serving (see
/// [`cas_apply`]).
pub fn cas_update<H: Host + ?Sized>(
    host: &H,
    key: &str,
    f: impl Fn(Option<&[u8]>) -> Option<Vec<u8>>,
) -> bool {
    let step = |current: Option<&[u8]>| match f(current) {
        Some(next) => Cas::Write(next, ()),
        None => Cas::Keep(()),
    };
    cas_apply(host, key, CAS_RETRIES, None, step).is_some()
}

/// What one step of [`cas_apply`] does with the value it read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cas<T> {
    /// Write this value, guarded by the CAS token it was read with; once it is written, the
    /// update answers `T`. Someone else's write in between means reading again.
    Write(Vec<u8>, T),
    /// Leave the value as it is; the update answers `T`.
    Keep(T),
}

/// The one compare-and-swap loop: reads `key`, lets `step` decide from its value, and writes
/// under the CAS token read with it, at most `retries` times. `None` when the retries ran out or
/// the host refused a write.
///
/// With `create`, a key that has no CAS token (it does not exist) is first written as `create`
/// (a value every reader takes for the default), and read again: every write `step` asks for is
/// then guarded, so two workers racing on a first insert cannot both succeed. Creating takes
/// one of the retries.
pub fn cas_apply<H: Host + ?Sized, T>(
    host: &H,
    key: &str,
    retries: usize,
    create: Option<&[u8]>,
    mut step: impl FnMut(Option<&[u8]>) -> Cas<T>,
) -> Option<T> {
    for _ in 0..retries {
        let (current, cas) = host.shared_get(key);
        if let (None, Some(initial)) = (cas, create) {
            let _ = host.shared_set(key, initial, None);
            continue;
        }
        match step(current.as_deref()) {
            Cas::Keep(answer) => return Some(answer),
            Cas::Write(next, answer) => match host.shared_set(key, &next, cas) {
                Ok(()) => return Some(answer),
                Err(SharedError::CasMismatch) => continue,
                Err(SharedError::Failed) => return None,
            },
        }
    }
    None
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use crate::mock::MockHost;

    #[test]
    fn an_update_that_creates_its_key_guards_every_write_and_gives_up_after_its_retries() {
        let host = MockHost::new();
        let take = |current: Option<&[u8]>| match current {
            Some([n]) if *n > 0 => Cas::Write(vec![n - 1], true),
            _ => Cas::Keep(false),
        };
        assert_eq!(cas_apply(&*host, "k", 4, Some(&[2]), take), Some(true), "created, then taken");
        assert_eq!(host.shared_get("k").0, Some(vec![1]));
        assert_eq!(cas_apply(&*host, "k", 4, Some(&[2]), take), Some(true));
        assert_eq!(cas_apply(&*host, "k", 4, Some(&[2]), take), Some(false), "none left: nothing written");
        assert_eq!(host.shared_get("k").0, Some(vec![0]));
        host.fail_next_cas(3);
        assert_eq!(cas_apply(&*host, "j", 4, Some(&[1]), take), None, "creating took one retry");
        assert_eq!(host.shared_get("j").0, Some(vec![1]), "created, never taken");
    }
}
