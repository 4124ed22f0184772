//! `tollgate-bench`: runs every variant (Envoy alone, each Tollgate filter, the chain, Envoy's
//! native equivalents, and a 10 KB cache hit against Envoy's own caches, through an origin in this
//! process) as its own single-worker Envoy pinned to one core, loads it from the other core, and
//! writes `results.md` and `results.json`. `make bench` builds everything and runs it.
//!
//! Settings (environment): `BENCH_QUICK=1` (one short round, for smoke checks), `BENCH_ROUNDS`,
//! `BENCH_SECONDS` (length of each load run), `BENCH_CONNECTIONS`, `BENCH_ENVOY_CPU` / `BENCH_LOAD_CPU`
//! (default 0 / 1), `BENCH_WRK` / `BENCH_OHA` (the load generators), `BENCH_OUT` (output folder,
//! default `bench/`), `BENCH_ONLY` (comma-separated variant names to run beside the baseline; `ratelimitd`
//! is the rate-limit service's own benchmark, see `rls_bench.rs`), `BENCH_PROBE=1` (price
//! each host call instead: see `probe.rs`). Binaries and filters come from `TOLLGATE_BIN_DIR`, `TOLLGATE_WASM_DIR` and
//! `ENVOY_BIN` like the end-to-end tests.
//!
//! After the Envoy variants it measures the key service itself (`keyd_bench.rs`: `VerifyKey` on
//! SQLite and PostgreSQL with one and three replicas, the dashboard with 10,000 keys);
//! `BENCH_KEYD_ONLY=1` runs only that (no Envoy, no load generator) and writes `keyd.md` and
//! `keyd.json` instead of the main report.

mod keyd_bench;
mod measure;
mod origin;
mod probe;
mod rls_bench;
mod variants;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::process::Command;
use tollgate_bench::report::{self, Report, Skipped, VariantRun};
use tollgate_bench::{Error, Result, noop, procfs};
use tollgate_e2e::{Envoy, Keyd, wasm_dir, workspace_root};

use crate::measure::{
    Running, cache_miss, cache_wrk_script_text, envoy_pid, measure_latency, measure_saturation, memory,
    output, pin, signed_wrk_script_text, verify_key_throughput, warm_up, wrk_script_text,
};
use crate::origin::Origin;
use crate::variants::{
    BASELINE, CACHE_BASELINE, Credentials, ENVOY_CACHES, PATH, SIGNED_PER_SECOND, SigningKey, TOLLGATE_CACHE,
    every_filter, signed_requests, start_envoy_with, variants,
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tollgate-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

struct Settings {
    quick: bool,
    rounds: usize,
    seconds: u64,
    warmup_seconds: u64,
    connections: u32,
    envoy_cpu: String,
    load_cpu: String,
    wrk: String,
    oha: String,
    out_dir: PathBuf,
    ticks_per_second: u64,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> Result<T> {
    match env(name) {
        Some(text) => text.parse().map_err(|_| Error(format!("{name}=`{text}` is not a number"))),
        None => Ok(default),
    }
}

impl Settings {
    async fn from_env() -> Result<Settings> {
        let quick = env("BENCH_QUICK").is_some_and(|v| v != "0");
        let ticks =
            output("getconf", &["CLK_TCK"]).await.ok().and_then(|t| t.trim().parse().ok()).unwrap_or(100);
        Ok(Settings {
            quick,
            rounds: env_number("BENCH_ROUNDS", if quick { 1 } else { 3 })?.max(1),
            seconds: env_number("BENCH_SECONDS", if quick { 1 } else { 10 })?.max(1),
            warmup_seconds: if quick { 0 } else { 3 },
            connections: env_number("BENCH_CONNECTIONS", 16)?.max(1),
            envoy_cpu: env("BENCH_ENVOY_CPU").unwrap_or_else(|| "0".to_owned()),
            load_cpu: env("BENCH_LOAD_CPU").unwrap_or_else(|| "1".to_owned()),
            wrk: env("BENCH_WRK").unwrap_or_else(|| "wrk".to_owned()),
            oha: env("BENCH_OHA").unwrap_or_else(|| "oha".to_owned()),
            out_dir: env("BENCH_OUT").map_or_else(|| workspace_root().join("bench"), PathBuf::from),
            ticks_per_second: ticks,
        })
    }
}

async fn run() -> Result<()> {
    let settings = Settings::from_env().await?;
    if env("BENCH_KEYD_ONLY").is_some_and(|v| v != "0") {
        return keyd_bench::run_only(&settings).await;
    }
    let started = Instant::now();
    let scratch = tempdir()?;

    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let cores = std::fs::read_to_string("/proc/cpuinfo")
        .map(|c| c.lines().filter(|l| l.starts_with("processor")).count())
        .unwrap_or(0);
    let envoy_version = output(&tollgate_e2e::envoy_bin().to_string_lossy(), &["--version"])
        .await
        .map(|v| {
            // `envoy  version: <commit>/1.40.0/Clean/RELEASE/BoringSSL`
            let build = v.split_whitespace().find(|w| w.contains("/1.")).unwrap_or(v.trim());
            build.split('/').nth(1).unwrap_or(build).to_owned()
        })
        .unwrap_or_else(|e| e.0);
    let rustc_version =
        output("rustc", &["--version"]).await.map(|v| v.trim().to_owned()).unwrap_or_else(|e| e.0);
    let date =
        output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).await.map(|d| d.trim().to_owned()).unwrap_or_default();
    for tool in [&settings.wrk, &settings.oha] {
        // wrk answers `--version` with a non-zero exit: only check that it starts.
        Command::new(tool)
            .arg("--version")
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| Error(format!("load generator `{tool}` does not run: {e}")))?;
    }
    // The harness itself (and every process it starts until re-pinned) stays off the Envoy core.
    pin(std::process::id(), &settings.load_cpu).await;

    eprintln!("bench: key service and credentials");
    let keyd = Keyd::start_temp().await;
    if let Some(pid) = procfs::find_pid(&["tollgate-keyd", &keyd.data_dir().to_string_lossy()]) {
        pin(pid, &settings.envoy_cpu).await;
    }
    let (_, api_key) = keyd.create_key("bench", &[]).await;
    let (creds, keys) = Credentials::mint(api_key.clone())?;
    let (key_id, secret) = keyd.create_hmac_key("bench-signer").await;
    let signing_key = SigningKey { key_id, secret };

    let noop_path = scratch.join("tollgate_bench_noop.wasm");
    std::fs::write(&noop_path, noop::module()).map_err(|e| Error(format!("write noop module: {e}")))?;
    let probe_mode = env("BENCH_PROBE").is_some_and(|v| v != "0");
    let mut variants =
        if probe_mode { probe::variants() } else { variants(&keyd, &api_key, &keys, &noop_path) };
    // Global rate limits: Redis and the rate-limit service, on the load generators' core.
    let (rls_variants, rls_service) =
        if probe_mode { (false, false) } else { rls_bench::wanted(env("BENCH_ONLY").as_deref()) };
    let rls = if rls_variants || rls_service {
        eprintln!("bench: Redis and the rate-limit service");
        Some(rls_bench::Rls::start(&settings.load_cpu).await?)
    } else {
        None
    };
    variants.extend(rls.iter().flat_map(rls_bench::Rls::variants));
    // BENCH_ONLY=a,b keeps the baseline and the named variants (to rerun one comparison quickly).
    if let Some(only) = env("BENCH_ONLY") {
        let wanted: Vec<&str> = only.split(',').map(str::trim).collect();
        variants.retain(|v| {
            v.name == BASELINE || v.name == probe::PROBE_BASELINE || wanted.contains(&v.name.as_str())
        });
    }
    let skipped = vec![Skipped {
        name: "ext_authz".to_owned(),
        reason: "not comparable: it makes a gRPC call per request (no cache), while key-auth answers a \
                     cached key without any call, and the key service does not speak the ext_authz protocol"
            .to_owned(),
    }];

    // The cache variants' origin, on this process's (the load generators') core.
    let origin = if variants.iter().any(|v| v.cache.is_some()) { Some(Origin::start()?) } else { None };

    eprintln!("bench: starting {} Envoys", variants.len());
    // Started together: most of the time goes into compiling the modules.
    let mut starting = tokio::task::JoinSet::new();
    for (index, variant) in variants.iter().enumerate() {
        let (filters, keyd_addr) = (variant.filters.clone(), variant.keyd.then(|| keyd.addr()));
        let (clusters, route) = (variant.clusters.clone(), variant.route.clone());
        let origin_addr = variant.cache.and(origin.as_ref().map(Origin::addr));
        starting.spawn(async move {
            let envoy = start_envoy_with(&filters, &clusters, route.as_ref(), keyd_addr, 1, origin_addr);
            (index, envoy.await)
        });
    }
    let mut envoys: Vec<Option<Envoy>> = variants.iter().map(|_| None).collect();
    while let Some(joined) = starting.join_next().await {
        let (index, envoy) = joined.map_err(|e| Error(format!("start task: {e}")))?;
        let name = variants.get(index).map_or("?", |v| v.name.as_str());
        let envoy = envoy.map_err(|e| Error(format!("variant `{name}`: {e}")))?;
        if let Some(slot) = envoys.get_mut(index) {
            *slot = Some(envoy);
        }
    }
    let mut running = Vec::new();
    for (variant, envoy) in variants.into_iter().zip(envoys) {
        let envoy = envoy.ok_or_else(|| Error(format!("variant `{}` did not start", variant.name)))?;
        let pid = envoy_pid(&envoy)?;
        pin(pid, &settings.envoy_cpu).await;
        let wrk_script = scratch.join(format!("wrk-{}.lua", running.len()));
        let (script, probe_headers) = if variant.signed {
            // More than wrk can send it: the warm-up and every round at up to 12,000 requests/s.
            let seconds = settings.warmup_seconds + settings.rounds as u64 * settings.seconds;
            let count = (seconds as usize * SIGNED_PER_SECOND).max(20_000);
            let (requests, digest) = signed_requests(&signing_key, &envoy.url(PATH), count)?;
            let (first, rest) =
                requests.split_first().ok_or_else(|| Error("no signed request".to_owned()))?;
            let lines: String =
                rest.iter().map(|(input, signature)| format!("{input}\t{signature}\n")).collect();
            let data = scratch.join(format!("signed-{}.txt", running.len()));
            std::fs::write(&data, lines).map_err(|e| Error(format!("write signed requests: {e}")))?;
            let probe = vec![
                ("content-type".to_owned(), "application/json".to_owned()),
                ("content-digest".to_owned(), digest.clone()),
                ("signature-input".to_owned(), first.0.clone()),
                ("signature".to_owned(), first.1.clone()),
            ];
            (signed_wrk_script_text(&data, &digest), Some(probe))
        } else if variant.cache.is_some() {
            (cache_wrk_script_text(), None)
        } else {
            (wrk_script_text(&creds.headers(variant.token)), None)
        };
        std::fs::write(&wrk_script, script).map_err(|e| Error(format!("write wrk script: {e}")))?;
        running.push(Running { variant, envoy, pid, wrk_script, probe_headers, samples: Vec::new() });
    }

    eprintln!("bench: warming up");
    warm_up(&settings, &mut running, &creds, origin.as_ref()).await?;
    if let Some(rls) = &rls {
        rls.check_calls(&running).await?;
    }

    for round in 0..settings.rounds {
        eprintln!("bench: round {} of {}", round + 1, settings.rounds);
        // Interleaved: each round starts with the baseline and rotates the others.
        let others = running.len() - 1;
        let order: Vec<usize> =
            std::iter::once(0).chain((0..others).map(|i| 1 + (i + round) % others)).collect();
        // The slowest saturation of the filter variants, and of the cache variants apart (they
        // serve another request, through an origin).
        let (mut slowest, mut slowest_cache): (Option<f64>, Option<f64>) = (None, None);
        // The variants calling the rate-limit service share the load core with it: apart too.
        let mut slowest_global: Option<f64> = None;
        for index in &order {
            if let Some(r) = running.get_mut(*index)
                && let Some(rps) = measure_saturation(&settings, r, round).await
            {
                let group = if r.variant.cache.is_some() {
                    &mut slowest_cache
                } else if rls_bench::calls_service(&r.variant.name) {
                    &mut slowest_global
                } else {
                    &mut slowest
                };
                *group = Some(group.map_or(rps, |s: f64| s.min(rps)));
            }
        }
        if probe_mode {
            continue;
        }
        // Every variant's latency at one rate: half the slowest variant's saturation, so no
        // variant is measured near its own limit and the percentiles compare like with like.
        let rate_of = |slowest: Option<f64>| slowest.map(|rps| (rps * 0.5).max(100.0)).unwrap_or(1000.0);
        let (rate, cache_rate) = (rate_of(slowest), rate_of(slowest_cache));
        if slowest_cache.is_some() {
            eprintln!("  latency at {rate:.0} req/s (cache variants: {cache_rate:.0} req/s)");
        } else {
            eprintln!("  latency at {rate:.0} req/s");
        }
        for index in &order {
            if let Some(r) = running.get_mut(*index) {
                let rate = if r.variant.cache.is_some() {
                    cache_rate
                } else if rls_bench::calls_service(&r.variant.name) {
                    rate_of(slowest_global)
                } else {
                    rate
                };
                measure_latency(&settings, r, round, rate, &creds).await;
            }
        }
    }

    if probe_mode {
        let runs: Vec<(String, Vec<report::Sample>)> =
            running.iter().map(|r| (r.variant.name.clone(), r.samples.clone())).collect();
        let text = format!(
            "# Host-call prices\n\n- date: {date}\n- machine: {cpu_model} ({cores} cores)\n- Envoy {envoy_version}, \
             {rounds} round(s) of {seconds} s, wrk with {connections} connections, Envoy pinned to one core\n\n\
             Envoy's CPU time per request with the probe module making each call n times, minus the same module \
             making none, divided by n.\n\n{}",
            probe::table(&runs),
            rounds = settings.rounds,
            seconds = settings.seconds,
            connections = settings.connections,
        );
        println!("{text}");
        std::fs::create_dir_all(&settings.out_dir)
            .map_err(|e| Error(format!("create {}: {e}", settings.out_dir.display())))?;
        let path = settings.out_dir.join("probe.md");
        std::fs::write(&path, text).map_err(|e| Error(format!("write {}: {e}", path.display())))?;
        let _ = std::fs::remove_dir_all(&scratch);
        return Ok(());
    }

    let is_cache: Vec<bool> = running.iter().map(|r| r.variant.cache.is_some()).collect();
    let runs: Vec<VariantRun> = running
        .iter()
        .map(|r| VariantRun {
            name: r.variant.name.clone(),
            what: r.variant.what.clone(),
            native: r.variant.native.clone(),
            samples: r.samples.clone(),
        })
        .collect();
    let key_auth_envoy = running.iter().position(|r| r.variant.name == "key-auth");

    eprintln!("bench: key-auth cache misses");
    let cache_miss = match key_auth_envoy {
        Some(i) => Some(cache_miss(&keyd, &running[i].envoy, if settings.quick { 10 } else { 200 }).await),
        None => None,
    };
    // Free the core before the remaining measurements.
    drop(running);
    drop(origin);

    eprintln!("bench: memory with every filter loaded");
    let memory =
        memory(&keyd, &every_filter(&keyd, &keys.hs256, false), &every_filter(&keyd, &keys.hs256, true))
            .await;
    let rls_report = match &rls {
        Some(rls) if rls_service => Some(rls.measure_service(&settings).await),
        _ => None,
    };
    eprintln!("bench: key service VerifyKey throughput");
    let (keyd_verify_rps, keyd_verify_failure) =
        match verify_key_throughput(&keyd, &api_key, Duration::from_secs(settings.seconds)).await {
            Ok(rps) => (Some(rps), None),
            Err(e) => (None, Some(e.0)),
        };
    let keyd_report = keyd_bench::run(&settings).await;

    // The filter variants against Envoy alone; the cache variants against Envoy alone fetching
    // from the origin.
    let (mut cache_runs, mut filter_runs) = (Vec::new(), Vec::new());
    for (run, cache) in runs.iter().zip(&is_cache) {
        if *cache { &mut cache_runs } else { &mut filter_runs }.push(run.clone());
    }
    let summaries = report::summarize(&filter_runs, BASELINE);
    // The latency goals are for filters answering without a call.
    let local_summaries: Vec<report::Summary> =
        summaries.iter().filter(|s| !rls_bench::calls_service(&s.name)).cloned().collect();
    let cache_summaries = report::summarize(&cache_runs, CACHE_BASELINE);
    let cache_comparisons: Vec<report::Comparison> = ENVOY_CACHES
        .iter()
        .filter(|native| cache_runs.iter().any(|r| r.name == **native))
        .map(|native| report::compare(&cache_runs, TOLLGATE_CACHE, native))
        .collect();
    let mib = |kib: Option<i64>| kib.map(|k| k as f64 / 1024.0);
    let mut goals = vec![
        report::cpu_goal(&summaries, "key-auth", false, 0.85),
        report::cpu_goal(&summaries, "jwt-auth HS256", true, 1.0),
        report::cpu_goal(&summaries, "jwt-auth ES256", true, 1.0),
        report::cpu_goal(&summaries, "rate-limit", true, 0.9),
        report::cpu_goal(&summaries, "transform headers", false, 0.85),
        report::cpu_goal(&summaries, "pipeline", false, 0.75),
        report::rps_goal(&cache_summaries, TOLLGATE_CACHE, 1.0),
        report::cpu_goal(&cache_summaries, TOLLGATE_CACHE, true, 1.0),
        report::latency_goal(&local_summaries, BASELINE, false, 2.0),
        report::latency_goal(&local_summaries, BASELINE, true, 3.0),
        report::bound_goal(
            "every filter in one VM (the bundle), 1 worker: MiB RSS over Envoy alone ≤ 20",
            mib(memory.bundle_over_alone_kib()),
            20.0,
            true,
        ),
        report::bound_goal(
            "every filter in one VM (the bundle): MiB RSS per extra worker ≤ 4",
            mib(memory.bundle_per_worker_kib()),
            4.0,
            true,
        ),
        report::bound_goal(
            "key service VerifyKey calls/s on one core ≥ 20,000",
            keyd_verify_rps,
            20_000.0,
            false,
        ),
    ];
    goals.extend(keyd_report.goals());
    let mut notes = vec![
        "the native jwt_authn runs with its verified-token cache on (`jwt_cache_config`), like jwt-auth's cache".to_owned(),
        "each Tollgate filter is its own module and VM, except in `chain (bundle)`, where the three filters come from `tollgate.wasm` and share one VM per worker, and `pipeline`, where they are the stages of one filter of that module".to_owned(),
    ];
    if rls_variants {
        notes.push(rls_bench::note(&settings));
    }
    if settings.quick {
        notes.push("quick mode: one short round — a smoke check, not a measurement".to_owned());
    }
    notes.push(format!("total run time {:.0} s", started.elapsed().as_secs_f64()));
    let report = Report {
        date,
        cpu_model,
        cores,
        envoy_version,
        rustc_version,
        mode: if settings.quick { "quick" } else { "full" }.to_owned(),
        rounds: settings.rounds,
        saturation_seconds: settings.seconds as f64,
        latency_seconds: settings.seconds as f64,
        connections: settings.connections,
        upstream: "Envoy `direct_response` (200, small JSON body) on every filter variant: no upstream process competes for the two cores; the cache variants route to an origin (`tollgate-echo`'s server, in the harness's process on the load generators' core) answering GET /cacheable/10000 with 10,000 bytes and `cache-control: public, max-age=3600`".to_owned(),
        summaries,
        cache_summaries,
        cache_comparisons,
        goals,
        skipped,
        keyd_verify_rps,
        keyd_verify_failure,
        cache_miss,
        wasm_sizes: wasm_sizes(),
        memory: Some(memory),
        keyd: Some(keyd_report),
        rls_service: rls_report,
        notes,
        runs,
    };
    let md = report.markdown();
    println!("{md}");
    std::fs::create_dir_all(&settings.out_dir)
        .map_err(|e| Error(format!("create {}: {e}", settings.out_dir.display())))?;
    for (name, text) in [("results.md", md), ("results.json", report.json())] {
        let path = settings.out_dir.join(name);
        std::fs::write(&path, text).map_err(|e| Error(format!("write {}: {e}", path.display())))?;
    }
    eprintln!("bench: wrote results.md and results.json to {}", settings.out_dir.display());
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

fn tempdir() -> Result<PathBuf> {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
    let dir = std::env::temp_dir().join(format!("tollgate-bench-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| Error(format!("create {}: {e}", dir.display())))?;
    Ok(dir)
}

/// Size of every `.wasm` in the wasm directory.
fn wasm_sizes() -> Vec<(String, u64)> {
    let mut sizes: Vec<(String, u64)> = std::fs::read_dir(wasm_dir())
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let size = e.metadata().ok()?.len();
                    name.ends_with(".wasm").then_some((name, size))
                })
                .collect()
        })
        .unwrap_or_default();
    sizes.push(("tollgate_bench_noop.wasm (bench only)".to_owned(), noop::module().len() as u64));
    sizes.sort();
    sizes
}
