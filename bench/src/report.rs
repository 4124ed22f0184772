//! Results: per-round samples, their medians and ratios, and the Markdown and JSON renderings.

use serde::Serialize;

use crate::stats::{median, median_difference, median_ratio};

/// One variant in one round.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    pub round: usize,
    /// Closed-loop saturation throughput (wrk).
    pub rps: Option<f64>,
    /// Envoy CPU time per request during the saturation run, in µs.
    pub cpu_us_per_request: Option<f64>,
    /// Envoy's CPU time during the saturation run over its length: 1.0 is its whole core.
    pub envoy_cpu_share: Option<f64>,
    /// The open-loop rate of the latency run (requests/s).
    pub fixed_rate: Option<f64>,
    /// Latency percentiles at `fixed_rate`, corrected for coordinated omission, in ms.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    /// Non-2xx answers and transport errors over both runs.
    pub errors: u64,
    /// Why part of the round could not be measured.
    pub failure: Option<String>,
}

/// Everything measured for one variant.
#[derive(Debug, Clone, Serialize)]
pub struct VariantRun {
    /// Short name, e.g. `rate-limit`.
    pub name: String,
    /// What runs in Envoy.
    pub what: String,
    /// Name of the native equivalent's variant.
    pub native: Option<String>,
    pub samples: Vec<Sample>,
}

/// Medians over rounds of one variant, with its ratios.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub name: String,
    pub what: String,
    pub native: Option<String>,
    pub rounds: usize,
    pub rps: Option<f64>,
    /// Median over rounds of this round's rps / the same round's baseline rps.
    pub rps_vs_baseline: Option<f64>,
    /// Median over rounds of this round's rps / the same round's native-equivalent rps.
    pub rps_vs_native: Option<f64>,
    pub cpu_us_per_request: Option<f64>,
    /// Median over rounds of the baseline's CPU µs/request / this variant's, in the same round:
    /// how much of Envoy alone's speed is left (1.0 = as cheap as Envoy alone).
    pub cpu_vs_baseline: Option<f64>,
    /// The same against the native equivalent.
    pub cpu_vs_native: Option<f64>,
    /// Median over rounds of Envoy's share of its core at saturation.
    pub envoy_cpu_share: Option<f64>,
    /// Median over rounds of CPU µs/request minus the same round's baseline.
    pub cpu_us_over_baseline: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    pub errors: u64,
    pub failures: Vec<String>,
}

fn column(run: &VariantRun, rounds: usize, pick: impl Fn(&Sample) -> Option<f64>) -> Vec<Option<f64>> {
    (0..rounds).map(|r| run.samples.iter().find(|s| s.round == r).and_then(&pick)).collect()
}

fn median_of(run: &VariantRun, pick: impl Fn(&Sample) -> Option<f64>) -> Option<f64> {
    let values: Vec<f64> = run.samples.iter().filter_map(pick).collect();
    median(&values)
}

/// Medians and ratios of every variant; `baseline` names the no-filter variant.
pub fn summarize(runs: &[VariantRun], baseline: &str) -> Vec<Summary> {
    let rounds = runs.iter().flat_map(|r| r.samples.iter().map(|s| s.round + 1)).max().unwrap_or(0);
    let base = runs.iter().find(|r| r.name == baseline);
    let base_rps = base.map(|b| column(b, rounds, |s| s.rps)).unwrap_or_default();
    let base_cpu = base.map(|b| column(b, rounds, |s| s.cpu_us_per_request)).unwrap_or_default();
    runs.iter()
        .map(|run| {
            let rps = column(run, rounds, |s| s.rps);
            let cpu = column(run, rounds, |s| s.cpu_us_per_request);
            let native = run.native.as_ref().and_then(|n| runs.iter().find(|r| &r.name == n));
            Summary {
                name: run.name.clone(),
                what: run.what.clone(),
                native: run.native.clone(),
                rounds: run.samples.len(),
                rps: median_of(run, |s| s.rps),
                rps_vs_baseline: median_ratio(&rps, &base_rps),
                rps_vs_native: native.and_then(|n| median_ratio(&rps, &column(n, rounds, |s| s.rps))),
                cpu_us_per_request: median_of(run, |s| s.cpu_us_per_request),
                cpu_vs_baseline: median_ratio(&base_cpu, &cpu),
                cpu_vs_native: native
                    .and_then(|n| median_ratio(&column(n, rounds, |s| s.cpu_us_per_request), &cpu)),
                envoy_cpu_share: median_of(run, |s| s.envoy_cpu_share),
                cpu_us_over_baseline: median_difference(&cpu, &base_cpu),
                p50_ms: median_of(run, |s| s.p50_ms),
                p99_ms: median_of(run, |s| s.p99_ms),
                p999_ms: median_of(run, |s| s.p999_ms),
                errors: run.samples.iter().map(|s| s.errors).sum(),
                failures: run.samples.iter().filter_map(|s| s.failure.clone()).collect(),
            }
        })
        .collect()
}

/// A performance goal from the filters' issues.
#[derive(Debug, Clone, Serialize)]
pub struct Goal {
    pub goal: String,
    pub measured: Option<f64>,
    pub met: Option<bool>,
}

/// Envoy's CPU per request: `native ÷ variant ≥ min` (or the baseline's, with `native` false).
pub fn cpu_goal(summaries: &[Summary], variant: &str, native: bool, min: f64) -> Goal {
    let found = summaries.iter().find(|s| s.name == variant);
    let against = if native {
        found.and_then(|s| s.native.clone()).unwrap_or_else(|| "native".to_owned())
    } else {
        "Envoy alone".to_owned()
    };
    let measured = found.and_then(|s| if native { s.cpu_vs_native } else { s.cpu_vs_baseline });
    Goal {
        goal: format!("{variant} ≥ {min} × {against} (CPU per request)"),
        measured,
        met: measured.map(|m| m >= min),
    }
}

/// Requests/s: `variant ÷ its native ≥ min` (the same round, median over rounds).
pub fn rps_goal(summaries: &[Summary], variant: &str, min: f64) -> Goal {
    let found = summaries.iter().find(|s| s.name == variant);
    let against = found.and_then(|s| s.native.clone()).unwrap_or_else(|| "native".to_owned());
    let measured = found.and_then(|s| s.rps_vs_native);
    Goal {
        goal: format!("{variant} ≥ {min} × {against} (requests/s)"),
        measured,
        met: measured.map(|m| m >= min),
    }
}

/// One variant against another run in the same rounds.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub variant: String,
    pub against: String,
    /// Median over rounds of the variant's req/s ÷ the other's.
    pub rps_ratio: Option<f64>,
    /// Median over rounds of the other's CPU µs/request ÷ the variant's (above 1: the variant is
    /// cheaper).
    pub cpu_ratio: Option<f64>,
}

/// `variant` against `against`, round by round.
pub fn compare(runs: &[VariantRun], variant: &str, against: &str) -> Comparison {
    let rounds = runs.iter().flat_map(|r| r.samples.iter().map(|s| s.round + 1)).max().unwrap_or(0);
    let pick = |name: &str, f: fn(&Sample) -> Option<f64>| {
        runs.iter().find(|r| r.name == name).map(|r| column(r, rounds, f)).unwrap_or_default()
    };
    Comparison {
        variant: variant.to_owned(),
        against: against.to_owned(),
        rps_ratio: median_ratio(&pick(variant, |s| s.rps), &pick(against, |s| s.rps)),
        cpu_ratio: median_ratio(
            &pick(against, |s| s.cpu_us_per_request),
            &pick(variant, |s| s.cpu_us_per_request),
        ),
    }
}

/// Every variant's p99 (p99.9 when `p999`) at the common rate ≤ `max` × the baseline's.
pub fn latency_goal(summaries: &[Summary], baseline: &str, p999: bool, max: f64) -> Goal {
    let pick = |s: &Summary| if p999 { s.p999_ms } else { s.p99_ms };
    let base = summaries.iter().find(|s| s.name == baseline).and_then(pick);
    let worst = summaries
        .iter()
        .filter(|s| s.name != baseline)
        .filter_map(|s| Some(pick(s)? / base?))
        .fold(None, |acc: Option<f64>, r| Some(acc.map_or(r, |a| a.max(r))));
    let which = if p999 { "p99.9" } else { "p99" };
    Goal {
        goal: format!("every variant's {which} at the common rate ≤ {max} × Envoy alone's (worst)"),
        measured: worst,
        met: worst.map(|w| w <= max),
    }
}

/// A measured value against an upper (`at_most`) or lower bound.
pub fn bound_goal(goal: &str, measured: Option<f64>, bound: f64, at_most: bool) -> Goal {
    Goal {
        goal: goal.to_owned(),
        measured,
        met: measured.map(|m| if at_most { m <= bound } else { m >= bound }),
    }
}

/// `variant CPU µs/request − baseline ≤ max`.
pub fn overhead_goal(summaries: &[Summary], variant: &str, max_us: f64) -> Goal {
    let measured = summaries.iter().find(|s| s.name == variant).and_then(|s| s.cpu_us_over_baseline);
    Goal {
        goal: format!("{variant} ≤ {max_us} µs CPU/request over baseline"),
        measured,
        met: measured.map(|m| m <= max_us),
    }
}

/// A variant that was not run, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub name: String,
    pub reason: String,
}

/// Latency of requests whose key is not cached yet (key-auth calls the key service).
#[derive(Debug, Clone, Serialize)]
pub struct CacheMiss {
    pub keys: usize,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// The same requests again, now cached.
    pub hit_p50_ms: Option<f64>,
}

/// Envoy's resident memory with every filter loaded.
#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    pub no_filter_1_worker_kib: Option<u64>,
    pub all_filters_1_worker_kib: Option<u64>,
    pub all_filters_2_workers_kib: Option<u64>,
    /// The same filters from the bundle module, in one VM per worker.
    pub bundle_1_worker_kib: Option<u64>,
    pub bundle_2_workers_kib: Option<u64>,
}

impl Memory {
    /// What one more worker costs with every filter loaded.
    pub fn per_worker_kib(&self) -> Option<i64> {
        Some(self.all_filters_2_workers_kib? as i64 - self.all_filters_1_worker_kib? as i64)
    }

    /// Every filter from the bundle, one worker, over Envoy alone.
    pub fn bundle_over_alone_kib(&self) -> Option<i64> {
        Some(self.bundle_1_worker_kib? as i64 - self.no_filter_1_worker_kib? as i64)
    }

    /// What one more worker costs with every filter from the bundle.
    pub fn bundle_per_worker_kib(&self) -> Option<i64> {
        Some(self.bundle_2_workers_kib? as i64 - self.bundle_1_worker_kib? as i64)
    }
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub date: String,
    pub cpu_model: String,
    pub cores: usize,
    pub envoy_version: String,
    pub rustc_version: String,
    pub mode: String,
    pub rounds: usize,
    pub saturation_seconds: f64,
    pub latency_seconds: f64,
    pub connections: u32,
    pub upstream: String,
    pub summaries: Vec<Summary>,
    /// The cache variants, against Envoy alone fetching from the origin (empty when not run).
    pub cache_summaries: Vec<Summary>,
    /// Tollgate's cache against each of Envoy's.
    pub cache_comparisons: Vec<Comparison>,
    pub goals: Vec<Goal>,
    pub skipped: Vec<Skipped>,
    pub keyd_verify_rps: Option<f64>,
    pub keyd_verify_failure: Option<String>,
    pub cache_miss: Option<CacheMiss>,
    pub wasm_sizes: Vec<(String, u64)>,
    pub memory: Option<Memory>,
    /// The key service's stores, replicas and dashboard (`keyd_report.rs`).
    pub keyd: Option<crate::keyd_report::KeydReport>,
    /// The rate-limit service's own benchmark (when run).
    pub rls_service: Option<crate::rls::RlsService>,
    pub notes: Vec<String>,
    pub runs: Vec<VariantRun>,
}

fn num(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "–".to_owned(), |v| format!("{v:.decimals$}"))
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "–".to_owned(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

impl Report {
    /// The report as Markdown.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let mut line = |text: String| {
            md.push_str(&text);
            md.push('\n');
        };
        line("# Tollgate benchmark".to_owned());
        line(String::new());
        line(format!("- date: {}", self.date));
        line(format!("- machine: {} ({} cores)", self.cpu_model, self.cores));
        line(format!("- versions: Envoy {}, {}", self.envoy_version, self.rustc_version));
        line(format!(
            "- mode: {}, {} round(s) interleaved; saturation {} s (wrk, closed loop, {} connections); \
             latency {} s (oha, open loop at the common rate, latency correction)",
            self.mode, self.rounds, self.saturation_seconds, self.connections, self.latency_seconds
        ));
        line(format!("- upstream: {}", self.upstream));
        line(String::new());
        line(
            "Medians over rounds. Ratios are taken per round (each round has its own baseline) and then the \
             median. CPU is the Envoy process's user + system time per request during the saturation run; \
             `× Envoy alone (CPU)` is the baseline's CPU per request over the variant's (1.00 = as cheap as \
             Envoy alone), and holds whether or not Envoy was the bottleneck. A req/s ratio is shown only \
             where Envoy used at least 90 % of its core; elsewhere the load generator was the bottleneck. \
             Latency is measured for every variant at one common rate per round, half the slowest \
             variant's saturation in that round."
                .to_owned(),
        );
        line(String::new());
        line(
            "| variant | CPU µs/req | +µs vs baseline | × Envoy alone (CPU) | × native (CPU) | Envoy CPU | req/s | × baseline (req/s) | p50 ms | p99 ms | p99.9 ms | errors |"
                .to_owned(),
        );
        line("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|".to_owned());
        for s in &self.summaries {
            let native = match (&s.native, s.cpu_vs_native) {
                (Some(n), Some(r)) => format!("{r:.2} ({n})"),
                (Some(n), None) => format!("– ({n})"),
                _ => String::new(),
            };
            // A req/s ratio says something only where Envoy was the bottleneck.
            let saturated = s.envoy_cpu_share.is_some_and(|c| c >= 0.9);
            let rps_ratio = if saturated { num(s.rps_vs_baseline, 2) } else { "(load-bound)".to_owned() };
            line(format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                s.name,
                num(s.cpu_us_per_request, 1),
                num(s.cpu_us_over_baseline, 1),
                num(s.cpu_vs_baseline, 2),
                native,
                s.envoy_cpu_share.map_or_else(|| "–".to_owned(), |c| format!("{:.0} %", c * 100.0)),
                num(s.rps, 0),
                rps_ratio,
                num(s.p50_ms, 3),
                num(s.p99_ms, 3),
                num(s.p999_ms, 3),
                s.errors
            ));
        }
        if !self.cache_summaries.is_empty() {
            self.cache_markdown(&mut line);
        }
        if let Some(rls) = &self.rls_service {
            line(rls.markdown());
        }
        line(String::new());
        line("## Variants".to_owned());
        line(String::new());
        for s in self.summaries.iter().chain(&self.cache_summaries) {
            line(format!("- **{}**: {}", s.name, s.what));
            for failure in &s.failures {
                line(format!("  - not measured: {failure}"));
            }
        }
        for skipped in &self.skipped {
            line(format!("- **{}**: skipped — {}", skipped.name, skipped.reason));
        }
        line(String::new());
        line("## Goals".to_owned());
        line(String::new());
        line("| goal | measured | met |".to_owned());
        line("|---|---:|---|".to_owned());
        for g in &self.goals {
            let met = match g.met {
                Some(true) => "yes",
                Some(false) => "not yet",
                None => "not measured",
            };
            line(format!("| {} | {} | {} |", g.goal, num(g.measured, 2), met));
        }
        line(String::new());
        line("## Other measurements".to_owned());
        line(String::new());
        match (self.keyd_verify_rps, &self.keyd_verify_failure) {
            (Some(rps), _) => line(format!(
                "- key service `VerifyKey`, one core (tonic client on the other): {rps:.0} calls/s"
            )),
            (None, Some(why)) => line(format!("- key service `VerifyKey`: not measured — {why}")),
            (None, None) => {}
        }
        if let Some(c) = &self.cache_miss {
            line(format!(
                "- key-auth cache miss through Envoy ({} fresh keys, one at a time): p50 {} ms, p99 {} ms, \
                 max {} ms; the same keys cached: p50 {} ms",
                c.keys,
                num(c.p50_ms, 3),
                num(c.p99_ms, 3),
                num(c.max_ms, 3),
                num(c.hit_p50_ms, 3)
            ));
        }
        if let Some(m) = &self.memory {
            line(format!(
                "- Envoy RSS: no filter, 1 worker {}; all filters, 1 worker {}; all filters, 2 workers {}; \
                 per extra worker {}",
                mib(m.no_filter_1_worker_kib),
                mib(m.all_filters_1_worker_kib),
                mib(m.all_filters_2_workers_kib),
                m.per_worker_kib()
                    .map_or_else(|| "–".to_owned(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
            ));
            line(format!(
                "- Envoy RSS with the same filters from the bundle (one VM per worker): 1 worker {}, 2 workers {}; \
                 over Envoy alone {}; per extra worker {}",
                mib(m.bundle_1_worker_kib),
                mib(m.bundle_2_workers_kib),
                m.bundle_over_alone_kib()
                    .map_or_else(|| "–".to_owned(), |k| format!("{:.1} MiB", k as f64 / 1024.0)),
                m.bundle_per_worker_kib()
                    .map_or_else(|| "–".to_owned(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
            ));
        }
        if !self.wasm_sizes.is_empty() {
            line("- wasm modules:".to_owned());
            for (name, bytes) in &self.wasm_sizes {
                line(format!("  - `{name}`: {:.1} KiB", *bytes as f64 / 1024.0));
            }
        }
        for note in &self.notes {
            line(format!("- {note}"));
        }
        if let Some(keyd) = &self.keyd {
            md.push_str(&keyd.markdown());
        }
        md
    }

    /// The cache comparison: its own table, against Envoy alone fetching from the origin.
    fn cache_markdown(&self, line: &mut impl FnMut(String)) {
        let base = self.cache_summaries.first().map_or("the origin", |s| s.name.as_str());
        line(String::new());
        line("## Cache hit, 10 KB body".to_owned());
        line(String::new());
        line(format!(
            "Every request a GET of the same URL, whose origin answer (10,000 bytes, `cache-control: public, \
             max-age=3600`) each cache holds after the warm-up; the warm-up checks every answer of a cache is a \
             hit that never reaches the origin. Ratios against `{base}` (Envoy alone, every request fetched \
             from the origin), per round then the median: `× {base} (CPU)` is its CPU per request over the \
             variant's (above 1: a hit costs Envoy less than a fetch). A req/s ratio is shown only where Envoy \
             used at least 90 % of its core."
        ));
        line(String::new());
        line(
            "| variant | CPU µs/req | × cache-origin (CPU) | × native (CPU) | Envoy CPU | req/s | × cache-origin (req/s) | × native (req/s) | p50 ms | p99 ms | errors |"
                .replace("cache-origin", base),
        );
        line("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|".to_owned());
        for s in &self.cache_summaries {
            let saturated = s.envoy_cpu_share.is_some_and(|c| c >= 0.9);
            let native = |ratio: Option<f64>| match &s.native {
                Some(n) => format!("{} ({n})", num(ratio, 2)),
                None => String::new(),
            };
            line(format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                s.name,
                num(s.cpu_us_per_request, 1),
                num(s.cpu_vs_baseline, 2),
                native(s.cpu_vs_native),
                s.envoy_cpu_share.map_or_else(|| "–".to_owned(), |c| format!("{:.0} %", c * 100.0)),
                num(s.rps, 0),
                if saturated { num(s.rps_vs_baseline, 2) } else { "(load-bound)".to_owned() },
                native(s.rps_vs_native),
                num(s.p50_ms, 3),
                num(s.p99_ms, 3),
                s.errors
            ));
        }
        line(String::new());
        for c in &self.cache_comparisons {
            line(format!(
                "- {} against {}: {} × its requests/s, {} × its CPU per request (its µs over {}'s)",
                c.variant,
                c.against,
                num(c.rps_ratio, 2),
                num(c.cpu_ratio, 2),
                c.variant
            ));
        }
    }

    /// The report as pretty JSON.
    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(name: &str, native: Option<&str>, rps: &[f64], cpu: &[f64]) -> VariantRun {
        VariantRun {
            name: name.to_owned(),
            what: format!("{name} alone"),
            native: native.map(str::to_owned),
            samples: rps
                .iter()
                .zip(cpu)
                .enumerate()
                .map(|(round, (rps, cpu))| Sample {
                    round,
                    rps: Some(*rps),
                    cpu_us_per_request: Some(*cpu),
                    p50_ms: Some(0.5),
                    p99_ms: Some(1.0),
                    p999_ms: Some(2.0),
                    ..Sample::default()
                })
                .collect(),
        }
    }

    fn runs() -> Vec<VariantRun> {
        vec![
            run("baseline", None, &[100.0, 50.0, 100.0], &[10.0, 20.0, 10.0]),
            run("rate-limit", Some("local_ratelimit"), &[90.0, 40.0, 80.0], &[12.0, 25.0, 13.0]),
            run("local_ratelimit", None, &[95.0, 50.0, 100.0], &[11.0, 20.0, 10.0]),
        ]
    }

    fn cache_runs() -> Vec<VariantRun> {
        vec![
            run("origin", None, &[100.0, 100.0, 100.0], &[40.0, 40.0, 40.0]),
            run("cache", Some("native cache"), &[300.0, 280.0, 310.0], &[10.0, 12.0, 10.0]),
            run("native cache", None, &[250.0, 280.0, 250.0], &[12.0, 12.0, 11.0]),
        ]
    }

    #[test]
    fn comparisons_take_per_round_ratios() {
        let c = compare(&cache_runs(), "cache", "native cache");
        // req/s per round: 1.2, 1.0, 1.24 → 1.2; CPU native ÷ variant: 1.2, 1.0, 1.1 → 1.1.
        assert!((c.rps_ratio.unwrap() - 1.2).abs() < 1e-9);
        assert!((c.cpu_ratio.unwrap() - 1.1).abs() < 1e-9);
        assert_eq!(compare(&cache_runs(), "cache", "missing").rps_ratio, None);
        let s = summarize(&cache_runs(), "origin");
        let g = rps_goal(&s, "cache", 1.0);
        assert_eq!(g.goal, "cache ≥ 1 × native cache (requests/s)");
        assert_eq!(g.met, Some(true));
        assert_eq!(rps_goal(&s, "cache", 1.25).met, Some(false));
    }

    #[test]
    fn summaries_take_per_round_ratios() {
        let s = summarize(&runs(), "baseline");
        let rl = &s[1];
        // Per round vs baseline: 0.9, 0.8, 0.8 → 0.8; vs native: 0.947, 0.8, 0.8 → 0.8.
        assert!((rl.rps_vs_baseline.unwrap() - 0.8).abs() < 1e-9);
        assert!((rl.rps_vs_native.unwrap() - 0.8).abs() < 1e-9);
        assert_eq!(rl.rps, Some(80.0));
        // CPU over baseline per round: 2, 5, 3 → 3.
        assert_eq!(rl.cpu_us_over_baseline, Some(3.0));
        assert_eq!(s[0].rps_vs_baseline, Some(1.0));
        assert_eq!(s[0].rps_vs_native, None);
    }

    #[test]
    fn goals_report_met_and_unmet() {
        let s = summarize(&runs(), "baseline");
        let g = cpu_goal(&s, "rate-limit", true, 0.9);
        // CPU native ÷ variant per round: 11/12, 20/25, 10/13 → 0.8.
        assert!((g.measured.unwrap() - 0.8).abs() < 1e-9);
        assert_eq!(g.met, Some(false));
        assert!(g.goal.contains("local_ratelimit"));
        assert_eq!(cpu_goal(&s, "rate-limit", true, 0.75).met, Some(true));
        assert_eq!(overhead_goal(&s, "rate-limit", 10.0).met, Some(true));
        assert_eq!(cpu_goal(&s, "missing", false, 1.0).met, None);
        // Every run has the same percentiles: the worst ratio is 1.
        assert_eq!(latency_goal(&s, "baseline", false, 2.0).measured, Some(1.0));
        assert_eq!(bound_goal("rss", Some(21.0), 20.0, true).met, Some(false));
    }

    #[test]
    fn markdown_has_a_row_per_variant_and_json_parses() {
        let summaries = summarize(&runs(), "baseline");
        let report = Report {
            date: "2025-01-01".to_owned(),
            cpu_model: "cpu".to_owned(),
            cores: 2,
            envoy_version: "1.40.0".to_owned(),
            rustc_version: "rustc 1.88".to_owned(),
            mode: "quick".to_owned(),
            rounds: 3,
            saturation_seconds: 1.0,
            latency_seconds: 1.0,
            connections: 16,
            upstream: "direct_response".to_owned(),
            goals: vec![cpu_goal(&summaries, "rate-limit", true, 0.9)],
            summaries,
            cache_summaries: summarize(&cache_runs(), "origin"),
            cache_comparisons: vec![compare(&cache_runs(), "cache", "native cache")],
            skipped: vec![Skipped { name: "request-signing".to_owned(), reason: "not built".to_owned() }],
            keyd_verify_rps: Some(1234.0),
            keyd_verify_failure: None,
            cache_miss: None,
            wasm_sizes: vec![("tollgate_key_auth.wasm".to_owned(), 2048)],
            memory: Some(Memory {
                no_filter_1_worker_kib: Some(1024),
                all_filters_1_worker_kib: Some(10_240),
                all_filters_2_workers_kib: Some(20_480),
                bundle_1_worker_kib: Some(4096),
                bundle_2_workers_kib: Some(6144),
            }),
            keyd: None,
            rls_service: None,
            notes: vec![],
            runs: runs(),
        };
        let md = report.markdown();
        assert!(
            md.contains(
                "| rate-limit | 13.0 | 3.0 | 0.80 | 0.80 (local_ratelimit) | – | 80 | (load-bound) |"
            ),
            "{md}"
        );
        assert!(md.contains("request-signing**: skipped — not built"), "{md}");
        // The cache table: CPU 40/10, 40/12, 40/10 → 4.00 over the origin; 1.10 over the native.
        assert!(
            md.contains(
                "| cache | 10.0 | 4.00 | 1.10 (native cache) | – | 300 | (load-bound) | 1.20 (native cache) |"
            ),
            "{md}"
        );
        assert!(
            md.contains("- cache against native cache: 1.20 × its requests/s, 1.10 × its CPU per request"),
            "{md}"
        );
        assert!(md.contains("per extra worker 10.0 MiB"), "{md}");
        assert!(
            md.contains("| rate-limit ≥ 0.9 × local_ratelimit (CPU per request) | 0.80 | not yet |"),
            "{md}"
        );
        let json: serde_json::Value = serde_json::from_str(&report.json()).unwrap();
        assert_eq!(json["summaries"][1]["name"], "rate-limit");
    }
}
