//! Measuring a running variant: load at saturation (wrk) and at a fixed rate (oha), Envoy's CPU
//! time per request and memory, percentiles, key-auth's cache misses and the key service's own
//! throughput.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::process::Command;
use tollgate_bench::report::{CacheMiss, Memory, Sample};
use tollgate_bench::{Error, Result, parse, procfs, stats};
use tollgate_e2e::{DATAPLANE_TOKEN, Envoy, HttpClient, Keyd};

use crate::Settings;
use crate::keyd_bench::verify::verify_key_load;
use crate::origin::Origin;
use crate::variants::{
    BODY, CACHE_BODY_BYTES, CACHE_PATH, CacheRole, Credentials, PATH, Variant, start_envoy,
};

/// Every external process gets this much longer than its own bound before it is killed.
const GRACE: Duration = Duration::from_secs(30);

/// A started variant.
pub(crate) struct Running {
    pub(crate) variant: Variant,
    pub(crate) envoy: Envoy,
    pub(crate) pid: u32,
    pub(crate) wrk_script: PathBuf,
    /// For a variant whose every request is signed: the headers of a signed request kept for
    /// the warm-up's check (the load sends the others).
    pub(crate) probe_headers: Option<Vec<(String, String)>>,
    pub(crate) samples: Vec<Sample>,
}

/// Checks every variant answers 200, then sends it a few hundred requests and, unless quick, a
/// short wrk run. A cache variant is checked to answer as it claims (see [`check_cache`]), and a
/// cache's wrk run must not reach the origin.
pub(crate) async fn warm_up(
    settings: &Settings,
    running: &mut [Running],
    creds: &Credentials,
    origin: Option<&Origin>,
) -> Result<()> {
    for r in running {
        if let Some(role) = r.variant.cache {
            let origin = origin.ok_or_else(|| Error("the cache variants need the origin".to_owned()))?;
            check_cache(r, role, origin, if settings.quick { 20 } else { 200 }).await?;
            if settings.warmup_seconds > 0 {
                let before = origin.requests();
                let _ = wrk(settings, &r.envoy.url(CACHE_PATH), &r.wrk_script, settings.warmup_seconds).await;
                let fetched = origin.requests() - before;
                if role != CacheRole::Origin && fetched > 0 {
                    return Err(Error(format!(
                        "variant `{}`: {fetched} requests of the warm-up load reached the origin: not every answer was a hit",
                        r.variant.name
                    )));
                }
            }
            continue;
        }
        let headers = r.probe_headers.clone().unwrap_or_else(|| creds.headers(r.variant.token));
        let probe = r
            .envoy
            .post(PATH)
            .headers(headers.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .body(BODY)
            .try_send()
            .await;
        match probe {
            Ok(res) if res.status == 200 => {}
            Ok(res) => {
                return Err(Error(format!(
                    "variant `{}` answers {}: {}",
                    r.variant.name,
                    res.status,
                    res.text()
                )));
            }
            Err(e) => return Err(Error(format!("variant `{}`: {e}", r.variant.name))),
        }
        // A signed variant's requests are each signed once: only wrk sends them.
        let warm_requests = if r.probe_headers.is_some() {
            0
        } else if settings.quick {
            20
        } else {
            200
        };
        for _ in 0..warm_requests {
            let _ = r
                .envoy
                .post(PATH)
                .headers(creds.headers(r.variant.token).iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .body(BODY)
                .try_send()
                .await;
        }
        if settings.warmup_seconds > 0 {
            let url = r.envoy.url(PATH);
            let _ = wrk(settings, &url, &r.wrk_script, settings.warmup_seconds).await;
        }
    }
    Ok(())
}

/// Whether `res` is a hit of the cache `role` names: Tollgate's says `cache-status: tollgate;
/// hit…`, Envoy's adds `age`.
fn is_hit(role: CacheRole, res: &tollgate_e2e::Response) -> bool {
    match role {
        CacheRole::Origin => false,
        CacheRole::Tollgate => res.header("cache-status").is_some_and(|v| v.starts_with("tollgate; hit")),
        CacheRole::Envoy => res.header("age").is_some(),
    }
}

/// Fails loudly unless a cache variant answers as it claims: the 10 KB body every time; with no
/// cache, `n` requests reach the origin `n` times; with a cache, once a first hit has come (the
/// first request fills it), `n` more are each a hit and none reaches the origin.
async fn check_cache(r: &Running, role: CacheRole, origin: &Origin, n: usize) -> Result<()> {
    let name = &r.variant.name;
    let get = || async {
        let res =
            r.envoy.get(CACHE_PATH).try_send().await.map_err(|e| Error(format!("variant `{name}`: {e}")))?;
        if res.status != 200 || res.body.len() != CACHE_BODY_BYTES {
            return Err(Error(format!(
                "variant `{name}` answers {} with {} bytes, not 200 with {CACHE_BODY_BYTES}: {:?}",
                res.status,
                res.body.len(),
                res.headers
            )));
        }
        Ok(res)
    };
    if role == CacheRole::Origin {
        let before = origin.requests();
        for _ in 0..n {
            get().await?;
        }
        let fetched = origin.requests() - before;
        if fetched != n {
            return Err(Error(format!("variant `{name}`: {n} requests reached the origin {fetched} times")));
        }
        return Ok(());
    }
    // A cache may store an answer a moment after sending it: up to 50 tries, 20 ms apart.
    let mut last = None;
    for _ in 0..50 {
        let res = get().await?;
        if is_hit(role, &res) {
            last = None;
            break;
        }
        last = Some(res.headers);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some(headers) = last {
        return Err(Error(format!(
            "variant `{name}` never answered a cache hit; last answer's headers: {headers:?}"
        )));
    }
    let before = origin.requests();
    for i in 0..n {
        let res = get().await?;
        if !is_hit(role, &res) {
            return Err(Error(format!(
                "variant `{name}`: request {} of {n} after the first hit was not a hit: {:?}",
                i + 1,
                res.headers
            )));
        }
    }
    let fetched = origin.requests() - before;
    if fetched > 0 {
        return Err(Error(format!("variant `{name}`: {fetched} of {n} hits reached the origin")));
    }
    Ok(())
}

pub(crate) fn envoy_pid(envoy: &Envoy) -> Result<u32> {
    let config = envoy.config_path();
    procfs::find_pid(&["envoy", &config.to_string_lossy()])
        .ok_or_else(|| Error(format!("no process runs Envoy with {}", config.display())))
}

/// wrk at saturation; records rps and CPU µs/request. Returns the rps.
pub(crate) async fn measure_saturation(settings: &Settings, r: &mut Running, round: usize) -> Option<f64> {
    let url = r.envoy.url(r.variant.path());
    let before = procfs::cpu_ticks(r.pid);
    let started = Instant::now();
    let result = wrk(settings, &url, &r.wrk_script, settings.seconds).await;
    let after = procfs::cpu_ticks(r.pid);
    let wall = started.elapsed().as_secs_f64();
    let sample = sample_for(&mut r.samples, round);
    match result {
        Ok(summary) => {
            sample.rps = Some(summary.requests_per_sec);
            sample.errors += summary.non_2xx + summary.socket_errors;
            if let (Ok(before), Ok(after)) = (before, after) {
                let cpu_seconds = after.saturating_sub(before) as f64 / settings.ticks_per_second as f64;
                sample.envoy_cpu_share = (wall > 0.0).then(|| cpu_seconds / wall);
                sample.cpu_us_per_request = procfs::cpu_us_per_request(
                    after.saturating_sub(before),
                    settings.ticks_per_second,
                    summary.requests,
                );
            }
            eprintln!(
                "  {:<18} {:>8.0} req/s  {:>6.1} µs CPU/req  Envoy {:>3.0} %",
                r.variant.name,
                summary.requests_per_sec,
                sample.cpu_us_per_request.unwrap_or(f64::NAN),
                sample.envoy_cpu_share.unwrap_or(f64::NAN) * 100.0
            );
            Some(summary.requests_per_sec)
        }
        Err(e) => {
            sample.failure = Some(format!("round {}: wrk: {e}", round + 1));
            None
        }
    }
}

/// oha at a fixed rate; records the corrected latency percentiles.
pub(crate) async fn measure_latency(
    settings: &Settings,
    r: &mut Running,
    round: usize,
    rate: f64,
    creds: &Credentials,
) {
    if r.variant.signed {
        // oha sends the same headers every time: a signed request more than once is a replay.
        return;
    }
    let url = r.envoy.url(r.variant.path());
    let mut args = vec![
        "--no-tui".to_owned(),
        "--output-format".to_owned(),
        "json".to_owned(),
        "--latency-correction".to_owned(),
        "-z".to_owned(),
        format!("{}s", settings.seconds),
        "-q".to_owned(),
        format!("{rate:.0}"),
        "-c".to_owned(),
        settings.connections.to_string(),
    ];
    // The cache variants GET with nothing more (oha's default); the others POST with credentials.
    if r.variant.cache.is_none() {
        args.extend(["-m".to_owned(), "POST".to_owned(), "-d".to_owned(), BODY.to_owned()]);
        for (name, value) in creds.headers(r.variant.token) {
            args.push("-H".to_owned());
            args.push(format!("{name}: {value}"));
        }
    }
    args.push(url);
    let result =
        load(settings, &settings.oha, &args, settings.seconds).await.and_then(|out| parse::oha(&out));
    let sample = sample_for(&mut r.samples, round);
    sample.fixed_rate = Some(rate);
    match result {
        Ok(summary) => {
            sample.p50_ms = Some(summary.p50_ms);
            sample.p99_ms = Some(summary.p99_ms);
            sample.p999_ms = Some(summary.p999_ms);
            let failed = ((1.0 - summary.success_rate) * summary.requests as f64).round() as u64;
            sample.errors += summary.non_2xx + failed;
        }
        Err(e) => {
            let failure = format!("round {}: oha: {e}", round + 1);
            sample.failure =
                Some(sample.failure.take().map_or(failure.clone(), |f| format!("{f}; {failure}")));
        }
    }
}

fn sample_for(samples: &mut Vec<Sample>, round: usize) -> &mut Sample {
    let index = match samples.iter().position(|s| s.round == round) {
        Some(i) => i,
        None => {
            samples.push(Sample { round, ..Sample::default() });
            samples.len() - 1
        }
    };
    &mut samples[index]
}

async fn wrk(settings: &Settings, url: &str, script: &Path, seconds: u64) -> Result<parse::WrkSummary> {
    let args = [
        "-t1".to_owned(),
        format!("-c{}", settings.connections),
        format!("-d{seconds}s"),
        "-s".to_owned(),
        script.to_string_lossy().into_owned(),
        url.to_owned(),
    ];
    parse::wrk(&load(settings, &settings.wrk, &args, seconds).await?)
}

/// Runs a load generator pinned to the load core; killed if it overruns its bound.
async fn load(settings: &Settings, program: &str, args: &[String], seconds: u64) -> Result<String> {
    let mut command = Command::new("taskset");
    command.arg("-c").arg(&settings.load_cpu).arg(program).args(args).kill_on_drop(true);
    let bound = Duration::from_secs(seconds) + GRACE;
    let out = tokio::time::timeout(bound, command.output())
        .await
        .map_err(|_| Error(format!("{program} ran longer than {bound:?}")))?
        .map_err(|e| Error(format!("run {program}: {e}")))?;
    if !out.status.success() {
        return Err(Error(format!(
            "{program} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A wrk script sending the benchmark request.
pub(crate) fn wrk_script_text(headers: &[(String, String)]) -> String {
    let mut script = format!("wrk.method = \"POST\"\nwrk.body = [[{BODY}]]\n");
    for (name, value) in headers {
        script.push_str(&format!("wrk.headers[\"{name}\"] = [[{value}]]\n"));
    }
    script
}

/// A wrk script sending the cache variants' request: a GET of the URL wrk is given, nothing more.
pub(crate) fn cache_wrk_script_text() -> String {
    "wrk.method = \"GET\"\n".to_owned()
}

/// A wrk script sending the benchmark request signed: each request takes the next (Signature-Input,
/// Signature) line of `requests` (tab-separated), all with the same `digest` of the body. Past the
/// last line it sends the last one again (a replay, refused and counted as an error).
pub(crate) fn signed_wrk_script_text(requests: &Path, digest: &str) -> String {
    format!(
        "local inputs, signatures = {{}}, {{}}\n\
         for line in io.lines([[{path}]]) do\n\
           local tab = line:find(\"\\t\", 1, true)\n\
           inputs[#inputs + 1] = line:sub(1, tab - 1)\n\
           signatures[#signatures + 1] = line:sub(tab + 1)\n\
         end\n\
         local i = 0\n\
         local body = [[{BODY}]]\n\
         request = function()\n\
           if i < #inputs then i = i + 1 end\n\
           return wrk.format(\"POST\", nil, {{\n\
             [\"content-type\"] = \"application/json\",\n\
             [\"content-digest\"] = [[{digest}]],\n\
             [\"signature-input\"] = inputs[i],\n\
             [\"signature\"] = signatures[i],\n\
           }}, body)\n\
         end\n",
        path = requests.display(),
    )
}

/// Pins every thread of `pid` to `cpu` (best effort: without `taskset` nothing is pinned).
pub(crate) async fn pin(pid: u32, cpu: &str) {
    if let Err(e) = output("taskset", &["-a", "-p", "-c", cpu, &pid.to_string()]).await {
        eprintln!("bench: could not pin {pid} to CPU {cpu}: {e}");
    }
}

pub(crate) async fn output(program: &str, args: &[&str]) -> Result<String> {
    let out = tokio::time::timeout(GRACE, Command::new(program).args(args).kill_on_drop(true).output())
        .await
        .map_err(|_| Error(format!("{program} did not finish")))?
        .map_err(|e| Error(format!("{program}: {e}")))?;
    if !out.status.success() {
        return Err(Error(format!("{program} failed: {}", String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// Latency of first requests with fresh keys (key-auth calls the key service), then of the same
/// keys cached.
pub(crate) async fn cache_miss(keyd: &Keyd, envoy: &Envoy, keys: usize) -> CacheMiss {
    let mut secrets = Vec::new();
    for i in 0..keys {
        secrets.push(keyd.create_key(&format!("miss-{i}"), &[]).await.1);
    }
    let client = HttpClient::new();
    let timed = |secrets: &[String]| {
        let client = client.clone();
        let secrets = secrets.to_vec();
        let url = envoy.url(PATH);
        async move {
            let mut ms = Vec::new();
            for secret in &secrets {
                let start = Instant::now();
                let res = client.get(url.clone()).header("x-api-key", secret).try_send().await;
                if matches!(res, Ok(ref r) if r.status == 200) {
                    ms.push(start.elapsed().as_secs_f64() * 1e3);
                }
            }
            ms
        }
    };
    let misses = timed(&secrets).await;
    let hits = timed(&secrets).await;
    CacheMiss {
        keys: misses.len(),
        p50_ms: percentile(&misses, 0.5),
        p99_ms: percentile(&misses, 0.99),
        max_ms: misses.iter().copied().reduce(f64::max),
        hit_p50_ms: stats::median(&hits),
    }
}

fn percentile(values: &[f64], q: f64) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let index = ((sorted.len() as f64 * q).ceil() as usize).saturating_sub(1);
    sorted.get(index).copied()
}

/// RSS of Envoy with no filter at 1 worker, and with `every_filter` (each filter its own module and
/// VM) and `bundled` (the same filters from the bundle, one VM) at 1 and 2 workers.
pub(crate) async fn memory(keyd: &Keyd, every_filter: &[Value], bundled: &[Value]) -> Memory {
    let rss = |filters: Vec<Value>, workers: u32, keyd_addr: Option<std::net::SocketAddr>| async move {
        let envoy = start_envoy(&filters, keyd_addr, workers, None).await.ok()?;
        // Let every worker finish loading its VMs.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let _ = envoy.get(PATH).try_send().await;
        procfs::rss_kib(envoy_pid(&envoy).ok()?).ok()
    };
    let (no_filter_1_worker_kib, all_filters_1_worker_kib, all_filters_2_workers_kib) = tokio::join!(
        rss(vec![], 1, None),
        rss(every_filter.to_vec(), 1, Some(keyd.addr())),
        rss(every_filter.to_vec(), 2, Some(keyd.addr()))
    );
    let (bundle_1_worker_kib, bundle_2_workers_kib) = tokio::join!(
        rss(bundled.to_vec(), 1, Some(keyd.addr())),
        rss(bundled.to_vec(), 2, Some(keyd.addr()))
    );
    Memory {
        no_filter_1_worker_kib,
        all_filters_1_worker_kib,
        all_filters_2_workers_kib,
        bundle_1_worker_kib,
        bundle_2_workers_kib,
    }
}

/// VerifyKey calls per second the key service answers on its core, from a tonic client with 64
/// calls in flight on the other core (the load of `keyd_bench::verify`, with one key).
pub(crate) async fn verify_key_throughput(keyd: &Keyd, api_key: &str, duration: Duration) -> Result<f64> {
    let client = keyd.client(DATAPLANE_TOKEN).await;
    let key_hash = Sha256::digest(api_key.as_bytes()).to_vec();
    let load = verify_key_load(&[client], &[key_hash], 64, duration).await?;
    if load.failed > 0 {
        return Err(Error(format!("{} VerifyKey calls failed", load.failed)));
    }
    Ok(load.calls_per_second)
}
