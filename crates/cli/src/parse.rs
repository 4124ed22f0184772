//! Parsers for command-line values: durations, `k=v` pairs, rates and times.
//!
//! Each returns `Result<_, String>` so clap can use it as a value parser and print the message as a
//! usage error.

use jiff::Timestamp;
use tollgate_core::rate_limit::bucket::Period;
use tollgate_proto::v1::{self, RateLimit};

/// Parses a duration such as `30d`, `12h`, `15m`, `90s`, `1w` or `1h30m` into seconds.
/// Units: `s`, `m`, `h`, `d`, `w`. A bare `0` is accepted.
pub fn duration_secs(text: &str) -> Result<u64, String> {
    use tollgate_core::duration::{CompoundError, compound_secs};
    compound_secs(text).map_err(|e| match e {
        CompoundError::Malformed => {
            format!("invalid duration {text:?}: expected e.g. 90s, 15m, 12h, 30d or 1h30m")
        }
        CompoundError::MissingUnit(digits) => {
            format!("invalid duration {text:?}: missing unit (s, m, h, d or w) after {digits}")
        }
        CompoundError::TooLong => format!("duration {text:?} is too long"),
    })
}

/// Parses `key=value`. The key must not be empty; the value may be empty or contain `=`.
pub fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => Ok((key.trim().to_owned(), value.to_owned())),
        _ => Err(format!("invalid metadata {text:?}: expected key=value")),
    }
}

/// Parses a rate such as `100/s`, `1000/min`, `5000/h` or `100000/day` (burst 0 = same as rate).
pub fn rate(text: &str) -> Result<RateLimit, String> {
    let bad = || format!("invalid rate {text:?}: expected N/s, N/min, N/h or N/day");
    let (count, unit) = text.trim().split_once('/').ok_or_else(bad)?;
    let rate: u64 = count.trim().parse().map_err(|_| bad())?;
    if rate == 0 {
        return Err(format!("invalid rate {text:?}: must be at least 1"));
    }
    let period = match unit.trim().to_ascii_lowercase().as_str() {
        "s" | "sec" | "second" => Period::Second,
        "m" | "min" | "minute" => Period::Minute,
        "h" | "hour" => Period::Hour,
        "d" | "day" => Period::Day,
        _ => return Err(bad()),
    };
    Ok(RateLimit { rate, period: v1::Period::from(period) as i32, burst: 0 })
}

/// Parses an absolute time: RFC 3339 (`2030-01-01T00:00:00Z`, `2030-01-01T02:00:00+02:00`), a
/// date (`2030-01-01`, midnight UTC) or Unix seconds (`1893456000`). Returns Unix seconds.
pub fn timestamp(text: &str) -> Result<i64, String> {
    let text = text.trim();
    if !text.is_empty() && text.chars().all(|c| c.is_ascii_digit()) {
        return text.parse::<i64>().map_err(|_| format!("invalid time {text:?}: Unix seconds out of range"));
    }
    let parsed = if text.len() == 10 {
        format!("{text}T00:00:00Z").parse::<Timestamp>()
    } else {
        text.parse::<Timestamp>()
    };
    parsed.map(|ts| ts.as_second()).map_err(|_| {
        format!("invalid time {text:?}: expected RFC 3339 (2030-01-01T00:00:00Z), a date or Unix seconds")
    })
}

/// A start time given as a duration ago or as a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// This many seconds before now.
    Ago(u64),
    /// Unix seconds.
    At(i64),
}

impl Since {
    /// Unix seconds, given the time now.
    pub fn at(self, now: i64) -> i64 {
        match self {
            Self::Ago(secs) => now.saturating_sub(i64::try_from(secs).unwrap_or(i64::MAX)),
            Self::At(at) => at,
        }
    }
}

/// Parses a start time: a duration ago (`2h`, `30m`, `1d12h`) or an absolute time as
/// [`timestamp`] takes it (RFC 3339, a date or Unix seconds).
pub fn since(text: &str) -> Result<Since, String> {
    if let Ok(secs) = tollgate_core::duration::compound_secs(text) {
        return Ok(Since::Ago(secs));
    }
    timestamp(text).map(Since::At).map_err(|_| {
        format!(
            "invalid time {:?}: expected a duration ago (2h, 30m, 1d) or a time (2030-01-01T00:00:00Z, \
             2030-01-01 or Unix seconds)",
            text.trim()
        )
    })
}

/// Formats Unix seconds as RFC 3339 in UTC; `None` for 0 (unset) or out-of-range values.
pub fn rfc3339(secs: i64) -> Option<String> {
    if secs == 0 {
        return None;
    }
    Timestamp::from_second(secs).ok().map(|ts| ts.to_string())
}

/// The current time in Unix seconds.
pub fn now_secs() -> i64 {
    Timestamp::now().as_second()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_proto::v1::Period;

    #[test]
    fn durations_in_each_unit() {
        assert_eq!(duration_secs("90s"), Ok(90));
        assert_eq!(duration_secs("15m"), Ok(900));
        assert_eq!(duration_secs("12h"), Ok(43_200));
        assert_eq!(duration_secs("30d"), Ok(2_592_000));
        assert_eq!(duration_secs("2w"), Ok(1_209_600));
        assert_eq!(duration_secs("1h30m"), Ok(5_400));
        assert_eq!(duration_secs("0"), Ok(0));
    }

    #[test]
    fn durations_without_unit_or_with_junk_are_rejected() {
        for bad in ["", "30", "h", "1x", "1h30", "-5m", "1.5h"] {
            assert!(duration_secs(bad).is_err(), "{bad:?} accepted");
        }
        assert!(duration_secs("99999999999999999999d").is_err());
    }

    #[test]
    fn key_value_keeps_equals_in_value() {
        assert_eq!(key_value("team=payments"), Ok(("team".into(), "payments".into())));
        assert_eq!(key_value("q=a=b"), Ok(("q".into(), "a=b".into())));
        assert_eq!(key_value("empty="), Ok(("empty".into(), String::new())));
        assert!(key_value("=v").is_err());
        assert!(key_value("novalue").is_err());
    }

    #[test]
    fn rates_in_each_period() {
        let r = rate("100/s").unwrap();
        assert_eq!((r.rate, r.period(), r.burst), (100, Period::Second, 0));
        assert_eq!(rate("1000/min").unwrap().period(), Period::Minute);
        assert_eq!(rate("5000/h").unwrap().period(), Period::Hour);
        assert_eq!(rate("100000/day").unwrap().period(), Period::Day);
        assert!(rate("0/s").is_err());
        assert!(rate("100").is_err());
        assert!(rate("100/week").is_err());
        assert!(rate("x/s").is_err());
    }

    #[test]
    fn timestamps_from_rfc3339_date_or_unix() {
        assert_eq!(timestamp("2030-01-01T00:00:00Z"), Ok(1_893_456_000));
        assert_eq!(timestamp("2030-01-01T02:00:00+02:00"), Ok(1_893_456_000));
        assert_eq!(timestamp("2030-01-01"), Ok(1_893_456_000));
        assert_eq!(timestamp("1893456000"), Ok(1_893_456_000));
        assert!(timestamp("2030-01-01T00:00:00").is_err());
        assert!(timestamp("tomorrow").is_err());
    }

    #[test]
    fn a_start_is_a_duration_ago_or_a_time() {
        assert_eq!(since("2h"), Ok(Since::Ago(7_200)));
        assert_eq!(since("1d12h").unwrap().at(1_000_000), 1_000_000 - 129_600);
        assert_eq!(since("2030-01-01T00:00:00Z"), Ok(Since::At(1_893_456_000)));
        assert_eq!(since("2030-01-01T02:00:00+02:00").unwrap().at(5), 1_893_456_000);
        assert_eq!(since("1893456000"), Ok(Since::At(1_893_456_000)));
        for bad in ["", "yesterday", "2h ago", "2030-13-01T00:00:00Z"] {
            let err = since(bad).unwrap_err();
            assert!(
                err.starts_with(&format!("invalid time {:?}: expected a duration ago", bad.trim())),
                "{err}"
            );
        }
    }

    #[test]
    fn rfc3339_is_utc_and_zero_is_unset() {
        assert_eq!(rfc3339(1_893_456_000).as_deref(), Some("2030-01-01T00:00:00Z"));
        assert_eq!(rfc3339(0), None);
    }
}
