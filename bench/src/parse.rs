//! The load generators' output: wrk's text summary and oha's `--json` document.

use serde_json::Value;

use crate::{Error, Result};

/// What a closed-loop wrk run reports.
#[derive(Debug, Clone, PartialEq)]
pub struct WrkSummary {
    /// Completed requests.
    pub requests: u64,
    /// Length of the run in seconds, as wrk measured it.
    pub seconds: f64,
    /// `Requests/sec`.
    pub requests_per_sec: f64,
    /// Responses with a status outside 2xx and 3xx.
    pub non_2xx: u64,
    /// connect + read + write + timeout errors.
    pub socket_errors: u64,
}

/// Parses wrk's text output (with or without `--latency`).
pub fn wrk(output: &str) -> Result<WrkSummary> {
    let mut requests = None;
    let mut seconds = None;
    let mut requests_per_sec = None;
    let mut non_2xx = 0;
    let mut socket_errors = 0;
    for line in output.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            requests_per_sec = Some(number(rest.trim(), "Requests/sec")?);
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            non_2xx = integer(rest.trim(), "Non-2xx responses")?;
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            // `connect 0, read 1, write 0, timeout 2`
            for part in rest.split(',') {
                let count = part.split_whitespace().nth(1).ok_or_else(|| bad("Socket errors", part))?;
                socket_errors += integer(count, "Socket errors")?;
            }
        } else if let Some((count, rest)) = line.split_once(" requests in ") {
            // `12345 requests in 2.00s, 1.23MB read`
            requests = Some(integer(count.trim(), "requests")?);
            let duration = rest.split(',').next().unwrap_or_default().trim();
            seconds = Some(duration_seconds(duration)?);
        }
    }
    let requests = requests.ok_or_else(|| Error::from("wrk output has no `N requests in T` line"))?;
    let seconds = seconds.ok_or_else(|| Error::from("wrk output has no duration"))?;
    let requests_per_sec =
        requests_per_sec.ok_or_else(|| Error::from("wrk output has no `Requests/sec` line"))?;
    Ok(WrkSummary { requests, seconds, requests_per_sec, non_2xx, socket_errors })
}

/// A wrk duration (`850.12us`, `2.00s`, `1.50m`, `3.2ms`) in seconds.
pub fn duration_seconds(text: &str) -> Result<f64> {
    let units: [(&str, f64); 5] = [("us", 1e-6), ("ms", 1e-3), ("m", 60.0), ("h", 3600.0), ("s", 1.0)];
    for (suffix, scale) in units {
        if let Some(value) = text.strip_suffix(suffix)
            && let Ok(value) = value.parse::<f64>()
        {
            return Ok(value * scale);
        }
    }
    Err(bad("duration", text))
}

/// What an open-loop oha run reports (latencies in milliseconds).
#[derive(Debug, Clone, PartialEq)]
pub struct OhaSummary {
    /// Requests answered (any status).
    pub requests: u64,
    pub requests_per_sec: f64,
    /// Share of requests without a transport error, 0 to 1.
    pub success_rate: f64,
    /// Answers with a status outside 2xx.
    pub non_2xx: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
}

/// Parses oha's `--json` output (latencies are in seconds there).
pub fn oha(json: &str) -> Result<OhaSummary> {
    let doc: Value = serde_json::from_str(json).map_err(|e| Error(format!("oha JSON: {e}")))?;
    let summary = &doc["summary"];
    let percentiles = &doc["latencyPercentiles"];
    let field = |v: &Value, name: &str| v[name].as_f64().ok_or_else(|| bad("oha JSON field", name));
    let mut requests = 0;
    let mut non_2xx = 0;
    if let Some(statuses) = doc["statusCodeDistribution"].as_object() {
        for (status, count) in statuses {
            let count = count.as_u64().ok_or_else(|| bad("oha status count", status))?;
            requests += count;
            if !status.starts_with('2') {
                non_2xx += count;
            }
        }
    }
    Ok(OhaSummary {
        requests,
        requests_per_sec: field(summary, "requestsPerSec")?,
        success_rate: field(summary, "successRate")?,
        non_2xx,
        p50_ms: field(percentiles, "p50")? * 1e3,
        p99_ms: field(percentiles, "p99")? * 1e3,
        p999_ms: field(percentiles, "p99.9")? * 1e3,
    })
}

fn number(text: &str, what: &str) -> Result<f64> {
    text.parse().map_err(|_| bad(what, text))
}

fn integer(text: &str, what: &str) -> Result<u64> {
    text.parse().map_err(|_| bad(what, text))
}

fn bad(what: &str, text: &str) -> Error {
    Error(format!("unreadable {what}: `{text}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 2s test @ http://127.0.0.1:41000/api/bench
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   812.35us  201.40us   4.12ms   85.00%
    Req/Sec    19.71k   612.33    20.50k    70.00%
  Latency Distribution
     50%  790.00us
     75%  850.00us
     90%  950.00us
     99%    1.50ms
  39215 requests in 2.00s, 4.86MB read
  Non-2xx or 3xx responses: 12
  Socket errors: connect 0, read 3, write 0, timeout 1
Requests/sec:  19607.50
Transfer/sec:      2.43MB
";

    #[test]
    fn wrk_summary_is_read_with_errors() {
        let s = wrk(WRK).unwrap();
        assert_eq!(s.requests, 39_215);
        assert!((s.seconds - 2.0).abs() < 1e-9);
        assert!((s.requests_per_sec - 19_607.5).abs() < 1e-9);
        assert_eq!(s.non_2xx, 12);
        assert_eq!(s.socket_errors, 4);
    }

    #[test]
    fn wrk_summary_without_errors_counts_zero() {
        let clean = "  100 requests in 1.00m, 1KB read\nRequests/sec:      1.67\n";
        let s = wrk(clean).unwrap();
        assert_eq!((s.requests, s.non_2xx, s.socket_errors), (100, 0, 0));
        assert!((s.seconds - 60.0).abs() < 1e-9);
    }

    #[test]
    fn wrk_output_without_a_summary_is_an_error() {
        let err = wrk("unable to connect to 127.0.0.1:1 Connection refused\n").unwrap_err();
        assert!(err.0.contains("requests in"), "{err}");
    }

    #[test]
    fn wrk_durations_have_units() {
        assert!((duration_seconds("850.5us").unwrap() - 850.5e-6).abs() < 1e-12);
        assert!((duration_seconds("3.2ms").unwrap() - 3.2e-3).abs() < 1e-12);
        assert!((duration_seconds("10.01s").unwrap() - 10.01).abs() < 1e-12);
        assert!((duration_seconds("1.5m").unwrap() - 90.0).abs() < 1e-9);
        assert!(duration_seconds("fast").is_err());
    }

    #[test]
    fn oha_json_is_read_in_milliseconds() {
        let json = r#"{
            "summary": {"successRate": 1.0, "total": 2.0, "requestsPerSec": 5000.5},
            "latencyPercentiles": {"p50": 0.0005, "p99": 0.002, "p99.9": 0.0105},
            "statusCodeDistribution": {"200": 9990, "429": 10},
            "errorDistribution": {}
        }"#;
        let s = oha(json).unwrap();
        assert_eq!(s.requests, 10_000);
        assert_eq!(s.non_2xx, 10);
        assert!((s.requests_per_sec - 5000.5).abs() < 1e-9);
        assert!((s.p50_ms - 0.5).abs() < 1e-9);
        assert!((s.p99_ms - 2.0).abs() < 1e-9);
        assert!((s.p999_ms - 10.5).abs() < 1e-9);
    }

    #[test]
    fn oha_json_without_percentiles_is_an_error() {
        let err = oha(r#"{"summary": {"successRate": 1.0, "requestsPerSec": 1.0}}"#).unwrap_err();
        assert!(err.0.contains("p50"), "{err}");
        assert!(oha("not json").is_err());
    }
}
