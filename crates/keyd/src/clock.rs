//! Where the key service reads the time. Every time it uses — expiry checks, the end of a
//! rotation grace period, audit and change-feed timestamps, last-use times — comes from one
//! [`Clock`]: the system clock in the binary, a [`ManualClock`] in tests that need time to pass
//! without waiting for it.

use std::fmt::Debug;
use std::sync::atomic::{AtomicI64, Ordering};

/// A source of Unix time in whole seconds.
pub trait Clock: Debug + Send + Sync {
    fn now(&self) -> i64;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }
}

/// A clock that stands still until it is set or advanced (for tests).
#[derive(Debug)]
pub struct ManualClock {
    now: AtomicI64,
}

impl ManualClock {
    /// A clock showing `now`.
    pub fn new(now: i64) -> Self {
        Self { now: AtomicI64::new(now) }
    }

    /// A clock showing the system time, so the times it gives look like real ones.
    pub fn starting_now() -> Self {
        Self::new(SystemClock.now())
    }

    /// Shows `now` from here on.
    pub fn set(&self, now: i64) {
        self.now.store(now, Ordering::SeqCst);
    }

    /// Moves the clock by `secs` (negative goes back).
    pub fn advance(&self, secs: i64) {
        // The closure always returns `Some`, so the update cannot fail.
        let _ =
            self.now.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |now| Some(now.saturating_add(secs)));
    }
}

impl Clock for ManualClock {
    fn now(&self) -> i64 {
        self.now.load(Ordering::SeqCst)
    }
}

/// The system clock moved by a number of seconds read from a file, so that tests can move the
/// real binary's time (`--clock-offset-file`). The file is read again at most every 100 ms; one
/// that is missing or unreadable leaves the last offset.
#[derive(Debug)]
pub struct OffsetFileClock {
    path: std::path::PathBuf,
    offset: AtomicI64,
    /// Milliseconds after `start` of the last read (`u64::MAX`: never).
    read_at: std::sync::atomic::AtomicU64,
    start: std::time::Instant,
}

impl OffsetFileClock {
    pub fn new(path: std::path::PathBuf) -> Self {
        Self {
            path,
            offset: AtomicI64::new(0),
            read_at: std::sync::atomic::AtomicU64::new(u64::MAX),
            start: std::time::Instant::now(),
        }
    }
}

impl Clock for OffsetFileClock {
    fn now(&self) -> i64 {
        let elapsed = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        let last = self.read_at.load(Ordering::Relaxed);
        if last == u64::MAX || elapsed.saturating_sub(last) >= 100 {
            self.read_at.store(elapsed, Ordering::Relaxed);
            if let Some(offset) =
                std::fs::read_to_string(&self.path).ok().and_then(|text| text.trim().parse::<i64>().ok())
            {
                self.offset.store(offset, Ordering::Relaxed);
            }
        }
        SystemClock.now().saturating_add(self.offset.load(Ordering::Relaxed))
    }
}

/// Unix seconds as a UTC calendar date and time: `(year, month, day, hour, minute, second)`.
pub fn utc(at: i64) -> (i64, i64, i64, i64, i64, i64) {
    let days = at.div_euclid(86_400);
    let secs = at.rem_euclid(86_400);
    // Civil from days (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, secs / 3_600, secs % 3_600 / 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(1_000);
        assert_eq!(clock.now(), 1_000);
        clock.advance(5);
        assert_eq!(clock.now(), 1_005);
        clock.set(2_000);
        assert_eq!(clock.now(), 2_000);
        clock.advance(i64::MAX);
        assert_eq!(clock.now(), i64::MAX);
    }

    #[test]
    fn an_offset_file_moves_the_system_clock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("offset");
        std::fs::write(&path, "86400\n").unwrap();
        let clock = OffsetFileClock::new(path.clone());
        let shifted = clock.now() - SystemClock.now();
        assert!((86_399..=86_400).contains(&shifted), "{shifted}");
        std::fs::write(&path, "-60").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(150));
        let shifted = clock.now() - SystemClock.now();
        assert!((-61..=-60).contains(&shifted), "{shifted}");
        std::fs::remove_file(&path).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(150));
        let shifted = clock.now() - SystemClock.now();
        assert!((-61..=-60).contains(&shifted), "a missing file keeps the last offset: {shifted}");
    }
}
