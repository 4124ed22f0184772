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
