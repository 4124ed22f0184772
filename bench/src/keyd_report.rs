//! The key service's own measurements as plain data: `VerifyKey` on SQLite and PostgreSQL with one
//! and three replicas, and the dashboard's pages with 10,000 keys; their Markdown and goal rows.
//! `src/keyd_bench.rs` runs them.

use serde::Serialize;

use crate::report::{Goal, bound_goal};
use crate::stats::median;

/// The keys-page goal: each timed GET of a keys page, with 10,000 keys, under this many ms.
pub const KEYS_PAGE_GOAL_MS: f64 = 1000.0;

/// One store and replica count under `VerifyKey` load, over rounds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyRun {
    /// `SQLite` or `PostgreSQL`.
    pub store: String,
    pub replicas: usize,
    /// Per round: answered calls per second.
    pub calls_per_second: Vec<f64>,
    /// Per round: the median and 99th percentile of the calls' latency, in ms.
    pub p50_ms: Vec<f64>,
    pub p99_ms: Vec<f64>,
    /// Calls that failed, over every round.
    pub errors: u64,
    /// Why a round could not be measured.
    pub failures: Vec<String>,
}

impl VerifyRun {
    pub fn calls_per_second(&self) -> Option<f64> {
        median(&self.calls_per_second)
    }

    pub fn p50_ms(&self) -> Option<f64> {
        median(&self.p50_ms)
    }

    pub fn p99_ms(&self) -> Option<f64> {
        median(&self.p99_ms)
    }
}

/// The `VerifyKey` comparison of stores and replica counts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyComparison {
    /// Keys created before the load; each call looks one of them up at random.
    pub keys: usize,
    /// Calls in flight at any time (closed loop), spread round-robin over the replicas.
    pub in_flight: usize,
    pub seconds: u64,
    pub rounds: usize,
    /// The first run is the reference of the ratios (SQLite, one replica).
    pub runs: Vec<VerifyRun>,
    /// Why nothing (or only part) could be measured, e.g. PostgreSQL is not installed.
    pub failures: Vec<String>,
}

/// The time of one dashboard page over repeated GETs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PageTiming {
    /// What the page is, e.g. `keys, first page`.
    pub page: String,
    /// The path requested (page tokens included).
    pub path: String,
    /// Every timed request's wall time, in ms.
    pub ms: Vec<f64>,
    /// Rows of keys on the page (keys pages only).
    pub rows: Option<usize>,
}

impl PageTiming {
    pub fn median_ms(&self) -> Option<f64> {
        median(&self.ms)
    }

    pub fn max_ms(&self) -> Option<f64> {
        self.ms.iter().copied().filter(|v| v.is_finite()).reduce(f64::max)
    }
}

/// The dashboard with many keys.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DashboardRun {
    pub store: String,
    pub keys: usize,
    pub consumers: usize,
    /// Keys with usage reported (`ReportUsage`) over the last 24 hours.
    pub keys_with_usage: usize,
    /// The usage counts reported in all.
    pub usage_counts: usize,
    /// Wall time of creating the keys through `CreateKey`.
    pub create_seconds: f64,
    pub pages: Vec<PageTiming>,
}

impl DashboardRun {
    /// The slowest GET of any keys page, in ms.
    pub fn worst_keys_page_ms(&self) -> Option<f64> {
        self.pages.iter().filter(|p| p.rows.is_some()).filter_map(PageTiming::max_ms).reduce(f64::max)
    }
}

/// Everything the key-service benchmark measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KeydReport {
    pub verify: VerifyComparison,
    pub dashboard: Vec<DashboardRun>,
    pub dashboard_failures: Vec<String>,
    pub notes: Vec<String>,
}

/// `10000` as `10,000`.
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn num(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "–".to_owned(), |v| format!("{v:.decimals$}"))
}

impl KeydReport {
    /// The goal rows: the keys page with 10,000 keys under a second (its slowest GET).
    pub fn goals(&self) -> Vec<Goal> {
        let worst = self.dashboard.iter().filter_map(DashboardRun::worst_keys_page_ms).reduce(f64::max);
        let keys = self.dashboard.iter().map(|d| d.keys).max().unwrap_or(10_000);
        vec![bound_goal(
            &format!(
                "dashboard keys page with {} keys < 1 s (slowest GET of the first and a deep page, in ms)",
                thousands(keys)
            ),
            worst,
            KEYS_PAGE_GOAL_MS,
            true,
        )]
    }

    /// The two sections, as Markdown (each starting with a `##` heading).
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let mut line = |text: String| {
            md.push_str(&text);
            md.push('\n');
        };
        let v = &self.verify;
        line(String::new());
        line("## Key service: VerifyKey on SQLite and PostgreSQL".to_owned());
        line(String::new());
        line(format!(
            "{} keys created first; each call looks one of them up at random. A tonic client on the load core \
             keeps {} calls in flight (closed loop, at saturation), each call sent to the next replica in turn; \
             {} round(s) of {} s, interleaved, medians over rounds. The key service's core holds every replica \
             and PostgreSQL's server processes: the service side gets one core whatever the replica count, so \
             three replicas measure what spreading costs, not what more machines would add. Latency is each \
             call's wall time at saturation (mostly queueing: {} calls in flight over the calls/s), not at a \
             fixed rate.",
            v.keys, v.in_flight, v.rounds, v.seconds, v.in_flight
        ));
        line(String::new());
        line("| store | replicas | calls/s | × SQLite, 1 replica | p50 ms | p99 ms | errors |".to_owned());
        line("|---|---:|---:|---:|---:|---:|---:|".to_owned());
        let reference = v.runs.first().and_then(VerifyRun::calls_per_second);
        for r in &v.runs {
            let ratio = match (r.calls_per_second(), reference) {
                (Some(c), Some(base)) if base > 0.0 => Some(c / base),
                _ => None,
            };
            line(format!(
                "| {} | {} | {} | {} | {} | {} | {} |",
                r.store,
                r.replicas,
                num(r.calls_per_second(), 0),
                num(ratio, 2),
                num(r.p50_ms(), 2),
                num(r.p99_ms(), 2),
                r.errors
            ));
        }
        for r in &v.runs {
            for failure in &r.failures {
                line(format!("- {} × {}: not measured — {failure}", r.store, r.replicas));
            }
        }
        for failure in &v.failures {
            line(format!("- not measured: {failure}"));
        }
        line(String::new());
        line("## Dashboard with 10,000 keys".to_owned());
        line(String::new());
        for d in &self.dashboard {
            let requests = d.pages.iter().map(|p| p.ms.len()).max().unwrap_or(0);
            line(format!(
                "{} keys of {} consumers on {}, created through `CreateKey` in {:.1} s; usage reported \
                 (`ReportUsage`, {} counts) for {} of them over the last 24 hours. Logged in as admin, one GET \
                 at a time over one connection from the load core, after one untimed GET of each page; {} timed \
                 GETs of each page (wall time to the whole body).",
                thousands(d.keys),
                d.consumers,
                d.store,
                d.create_seconds,
                thousands(d.usage_counts),
                thousands(d.keys_with_usage),
                requests
            ));
            line(String::new());
            line("| page | rows | median ms | max ms |".to_owned());
            line("|---|---:|---:|---:|".to_owned());
            for p in &d.pages {
                line(format!(
                    "| {} | {} | {} | {} |",
                    p.page,
                    p.rows.map_or_else(String::new, |r| r.to_string()),
                    num(p.median_ms(), 2),
                    num(p.max_ms(), 2)
                ));
            }
            line(String::new());
        }
        for failure in &self.dashboard_failures {
            line(format!("- not measured: {failure}"));
        }
        for note in &self.notes {
            line(format!("- {note}"));
        }
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> KeydReport {
        let run = |store: &str, replicas, cps: &[f64]| VerifyRun {
            store: store.to_owned(),
            replicas,
            calls_per_second: cps.to_vec(),
            p50_ms: vec![1.0, 2.0, 3.0],
            p99_ms: vec![4.0, 6.0, 5.0],
            ..VerifyRun::default()
        };
        let page = |page: &str, rows, ms: &[f64]| PageTiming {
            page: page.to_owned(),
            path: "/keys".to_owned(),
            ms: ms.to_vec(),
            rows,
        };
        KeydReport {
            verify: VerifyComparison {
                keys: 1000,
                in_flight: 64,
                seconds: 10,
                rounds: 3,
                runs: vec![
                    run("SQLite", 1, &[20_000.0, 22_000.0, 21_000.0]),
                    run("PostgreSQL", 3, &[10_500.0, 9_000.0, 11_000.0]),
                ],
                failures: vec![],
            },
            dashboard: vec![DashboardRun {
                store: "SQLite".to_owned(),
                keys: 10_000,
                pages: vec![
                    page("keys, first page", Some(50), &[3.0, 5.0, 4.0]),
                    page("keys, deep", Some(50), &[6.0, 9.0, 7.0]),
                    page("overview", None, &[20.0, 2000.0]),
                ],
                ..DashboardRun::default()
            }],
            ..KeydReport::default()
        }
    }

    #[test]
    fn the_table_has_medians_and_the_ratio_to_sqlite_with_one_replica() {
        let md = report().markdown();
        assert!(md.contains("| SQLite | 1 | 21000 | 1.00 | 2.00 | 5.00 | 0 |"), "{md}");
        assert!(md.contains("| PostgreSQL | 3 | 10500 | 0.50 | 2.00 | 5.00 | 0 |"), "{md}");
        assert!(md.contains("| keys, deep | 50 | 7.00 | 9.00 |"), "{md}");
        assert!(md.contains("| overview |  | 1010.00 | 2000.00 |"), "{md}");
    }

    #[test]
    fn the_goal_takes_the_slowest_keys_page_and_not_the_overview() {
        let goals = report().goals();
        assert_eq!(goals[0].measured, Some(9.0));
        assert_eq!(goals[0].met, Some(true));
        assert!(goals[0].goal.starts_with("dashboard keys page with 10,000 keys < 1 s"), "{}", goals[0].goal);
        assert_eq!(KeydReport::default().goals()[0].met, None);
        assert_eq!(
            (thousands(999), thousands(1000), thousands(1_234_567)),
            ("999".into(), "1,000".into(), "1,234,567".into())
        );
    }
}
