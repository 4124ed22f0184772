//! The rate-limit service's own figures (`tollgate-ratelimitd`, issue 19): `ShouldRateLimit`
//! decisions per second at saturation and latency at a fixed rate, per store, and their Markdown.
//! The binary's `rls_bench.rs` starts the service and drives the load.

use serde::Serialize;

/// One store (Redis or memory): saturation, then a fixed rate.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StoreRun {
    /// `Redis` or `memory`.
    pub store: String,
    /// Answered calls per second at saturation.
    pub decisions_per_second: Option<f64>,
    /// CPU time of the service process per answered call at saturation, in µs.
    pub service_cpu_us_per_decision: Option<f64>,
    /// CPU time of redis-server per answered call at saturation, in µs (Redis only).
    pub redis_cpu_us_per_decision: Option<f64>,
    /// The service's and Redis's CPU time at saturation over its length: 1.0 is one whole core.
    pub core_share: Option<f64>,
    /// The rate the latency run sends at (calls/s), and the rate it achieved.
    pub fixed_rate: Option<f64>,
    pub achieved_rate: Option<f64>,
    /// Latency percentiles at `fixed_rate`, in ms.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    /// Calls that failed, timed out or were answered `OVER_LIMIT` (the limits never refuse).
    pub errors: u64,
    /// Why part of it could not be measured.
    pub failure: Option<String>,
}

/// The service benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct RlsService {
    /// Where the service, Redis and the client ran.
    pub placement: String,
    /// gRPC connections, and calls in flight on each at saturation.
    pub connections: usize,
    pub in_flight_per_connection: usize,
    /// Length of each run.
    pub seconds: f64,
    /// What each call asks.
    pub request: String,
    pub runs: Vec<StoreRun>,
}

fn num(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "–".to_owned(), |v| format!("{v:.decimals$}"))
}

impl RlsService {
    /// The section of `results.md`.
    pub fn markdown(&self) -> String {
        let mut md = String::from("\n## Rate-limit service (`tollgate-ratelimitd`)\n\n");
        md.push_str(&format!(
            "`ShouldRateLimit` called directly from a tonic client: {request}. Saturation: {c} connections \
             with {f} calls in flight on each, {s} s; then {s} s at a fixed rate, half the saturation, sent \
             on schedule (1 ms batches) whatever the answers, latency measured from each call's send to its \
             answer. {placement} CPU per decision is the process's user + system time during the saturation \
             run over the calls answered.\n\n",
            request = self.request,
            c = self.connections,
            f = self.in_flight_per_connection,
            s = self.seconds,
            placement = self.placement,
        ));
        md.push_str(
            "| store | decisions/s | service CPU µs/decision | Redis CPU µs/decision | service core used | fixed rate/s | achieved/s | p50 ms | p99 ms | p99.9 ms | errors |\n",
        );
        md.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for r in &self.runs {
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                r.store,
                num(r.decisions_per_second, 0),
                num(r.service_cpu_us_per_decision, 1),
                num(r.redis_cpu_us_per_decision, 1),
                r.core_share.map_or_else(|| "–".to_owned(), |c| format!("{:.0} %", c * 100.0)),
                num(r.fixed_rate, 0),
                num(r.achieved_rate, 0),
                num(r.p50_ms, 3),
                num(r.p99_ms, 3),
                num(r.p999_ms, 3),
                r.errors,
            ));
        }
        for r in &self.runs {
            if let Some(failure) = &r.failure {
                md.push_str(&format!("\n- {}: not measured — {failure}\n", r.store));
            }
        }
        md
    }
}

/// The `q` quantile (0..=1) of `values` by the nearest-rank method; `None` when empty.
pub fn percentile(values: &[f64], q: f64) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    let index = ((sorted.len() as f64 * q).ceil() as usize).saturating_sub(1);
    sorted.get(index).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let values: Vec<f64> = (1..=1000).rev().map(f64::from).collect();
        assert_eq!(percentile(&values, 0.5), Some(500.0));
        assert_eq!(percentile(&values, 0.99), Some(990.0));
        assert_eq!(percentile(&values, 0.999), Some(999.0));
        assert_eq!(percentile(&values, 1.0), Some(1000.0));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn the_table_has_a_row_per_store_and_names_what_failed() {
        let service = RlsService {
            placement: "Service and Redis on CPU 0.".to_owned(),
            connections: 4,
            in_flight_per_connection: 16,
            seconds: 10.0,
            request: "one descriptor".to_owned(),
            runs: vec![
                StoreRun {
                    store: "Redis".to_owned(),
                    decisions_per_second: Some(20_000.4),
                    p99_ms: Some(1.23456),
                    ..StoreRun::default()
                },
                StoreRun {
                    store: "memory".to_owned(),
                    failure: Some("no".to_owned()),
                    ..StoreRun::default()
                },
            ],
        };
        let md = service.markdown();
        assert!(md.contains("| Redis | 20000 | – | – | – | – | – | – | 1.235 | – | 0 |"), "{md}");
        assert!(md.contains("- memory: not measured — no"), "{md}");
    }
}
