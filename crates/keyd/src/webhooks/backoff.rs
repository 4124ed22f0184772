//! When to try a message again: an exponential schedule with jitter, or what the receiver's
//! `Retry-After` asks for.

use std::time::{Duration, SystemTime};

/// The delay before attempt `n + 1` after `n` failed attempts (index `n - 1`), before jitter.
pub const SCHEDULE: [u64; 10] = [5, 30, 120, 600, 1_800, 3_600, 7_200, 14_400, 28_800, 28_800];

/// Attempts in all before a message is given up (about 23 hours after the first).
pub const MAX_ATTEMPTS: u32 = SCHEDULE.len() as u32 + 1;

/// The longest delay a `Retry-After` may ask for.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(28_800);

/// The delay after `failed` attempts (≥ 1), or `None` when they are used up. `jitter` is a
/// uniform sample in `[0, 1)`: the delay is spread over ±20% of the schedule's, so that
/// messages that failed together do not retry together.
pub fn delay(failed: u32, jitter: f64, retry_after: Option<Duration>) -> Option<Duration> {
    if failed >= MAX_ATTEMPTS {
        return None;
    }
    if let Some(asked) = retry_after {
        return Some(asked.min(MAX_RETRY_AFTER));
    }
    let index = usize::try_from(failed.max(1) - 1).unwrap_or(usize::MAX);
    let base = SCHEDULE.get(index).or(SCHEDULE.last()).copied().unwrap_or(5);
    let factor = 0.8 + 0.4 * jitter.clamp(0.0, 1.0);
    Some(Duration::from_secs_f64(base as f64 * factor))
}

/// A `Retry-After` value (RFC 9110 §10.2.3): delay-seconds, or an HTTP-date in any of the three
/// forms a recipient must accept (IMF-fixdate, RFC 850, asctime), taken as the time from `now`
/// (the wall clock: the receiver's date is in its time). A date already past asks for no delay;
/// anything else is not understood and the schedule applies.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_grows_and_stays_within_its_jitter() {
        assert_eq!(delay(1, 0.0, None), Some(Duration::from_secs(4)));
        assert_eq!(delay(1, 0.5, None), Some(Duration::from_secs(5)));
        assert!(delay(1, 0.999, None).unwrap() < Duration::from_secs(6));
        assert_eq!(delay(2, 0.5, None), Some(Duration::from_secs(30)));
        assert_eq!(delay(3, 0.5, None), Some(Duration::from_secs(120)));
        assert_eq!(delay(10, 0.5, None), Some(Duration::from_secs(28_800)));
    }

    #[test]
    fn attempts_end_after_the_last_step() {
        assert!(delay(MAX_ATTEMPTS - 1, 0.5, None).is_some());
        assert_eq!(delay(MAX_ATTEMPTS, 0.5, None), None);
        assert_eq!(delay(MAX_ATTEMPTS, 0.5, Some(Duration::from_secs(1))), None);
    }

    #[test]
    fn retry_after_replaces_the_schedule_up_to_a_cap() {
        assert_eq!(delay(1, 0.9, Some(Duration::from_secs(1))), Some(Duration::from_secs(1)));
        assert_eq!(delay(1, 0.9, Some(Duration::from_secs(999_999))), Some(MAX_RETRY_AFTER));
    }

    #[test]
    fn retry_after_is_read_in_seconds_or_as_an_http_date() {
        // 2015-10-21T07:28:00Z.
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(parse_retry_after(" 120 ", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("0", now), Some(Duration::ZERO));
        let in_90s = Some(Duration::from_secs(90));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:29:30 GMT", now), in_90s);
        assert_eq!(parse_retry_after("Wednesday, 21-Oct-15 07:29:30 GMT", now), in_90s, "RFC 850");
        assert_eq!(parse_retry_after("Wed Oct 21 07:29:30 2015", now), in_90s, "asctime");
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now), Some(Duration::ZERO), "past");
        for bad in ["-1", "1.5", "", "soon", "Wed, 21 Oct 2015 25:00:00 GMT", "18446744073709551616"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }
}
