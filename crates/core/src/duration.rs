//! Durations in configs are strings such as `"250ms"`, `"5s"`, `"10m"`, `"1h"`, `"7d"`.

use std::time::Duration;

/// Parses `<integer><unit>` with unit `ms`, `s`, `m`, `h` or `d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err(format!("`{text}` is not a duration (expected e.g. \"250ms\", \"5s\", \"1h\")"));
    }
    let n: u64 = digits.parse().map_err(|_| format!("`{text}` is too large"))?;
    let millis = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        "" => return Err(format!("`{text}` has no unit (use ms, s, m, h or d)")),
        other => {
            return Err(format!("`{text}` has an unknown unit `{other}` (use ms, s, m, h or d)"));
        }
    };
    millis.map(Duration::from_millis).ok_or_else(|| format!("`{text}` is too large"))
}

/// Why [`compound_secs`] refused a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompoundError {
    /// Empty, a character that is no digit nor unit, or a unit without a number.
    Malformed,
    /// Digits at the end with no unit after them.
    MissingUnit(String),
    /// Past `u64` seconds.
    TooLong,
}

/// Parses a duration a person types — `90s`, `15m`, `12h`, `30d`, `1w`, `1h30m`, or a bare `0` —
/// into seconds (units `s`, `m`, `h`, `d`, `w`; surrounding spaces ignored). Callers word the
/// error for their audience (a command line, a form).
pub fn compound_secs(text: &str) -> Result<u64, CompoundError> {
    let text = text.trim();
    if text == "0" {
        return Ok(0);
    }
    if text.is_empty() {
        return Err(CompoundError::Malformed);
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit: u64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return Err(CompoundError::Malformed),
        };
        if digits.is_empty() {
            return Err(CompoundError::Malformed);
        }
        let n: u64 = digits.parse().map_err(|_| CompoundError::TooLong)?;
        digits.clear();
        total = n.checked_mul(unit).and_then(|secs| total.checked_add(secs)).ok_or(CompoundError::TooLong)?;
    }
    if !digits.is_empty() {
        return Err(CompoundError::MissingUnit(digits));
    }
    Ok(total)
}

/// Serde helper: `#[serde(deserialize_with = "duration::de")]` on a `Duration` field.
pub fn de<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = <String as serde::Deserialize>::deserialize(d)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

/// Serde helper for `Option<Duration>`.
pub fn de_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compound_durations_add_their_parts_and_say_what_is_wrong() {
        assert_eq!(compound_secs(" 1h30m "), Ok(5_400));
        assert_eq!(compound_secs("0"), Ok(0));
        assert_eq!(compound_secs("1w2d"), Ok(777_600));
        for bad in ["", "h", "1x", "-1h", "1h 30m", "1.5h"] {
            assert_eq!(compound_secs(bad), Err(CompoundError::Malformed), "{bad:?}");
        }
        assert_eq!(compound_secs("1h30"), Err(CompoundError::MissingUnit("30".into())));
        assert_eq!(compound_secs("99999999999999999999s"), Err(CompoundError::TooLong));
        assert_eq!(compound_secs("30000000000000000w"), Err(CompoundError::TooLong));
    }

    #[test]
    fn units_parse() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
    }

    #[test]
    fn bad_durations_say_why() {
        assert!(parse_duration("5").unwrap_err().contains("no unit"));
        assert!(parse_duration("5 sec").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("ms").unwrap_err().contains("not a duration"));
        assert!(parse_duration("-5s").unwrap_err().contains("not a duration"));
        assert!(parse_duration("99999999999999999999s").unwrap_err().contains("too large"));
    }
}
