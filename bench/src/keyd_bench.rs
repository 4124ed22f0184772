//! The key service's own benchmark: `VerifyKey` calls/s and latency on SQLite and on PostgreSQL
//! with one and three replicas (issue 18), and the dashboard's pages with 10,000 keys (issue 16).
//!
//! Every key service (and PostgreSQL's server, a private cluster from `tollgate-testkit`) runs on
//! the service core (`BENCH_ENVOY_CPU`), the load from this process on the load core. `make bench`
//! runs it after the Envoy variants; `BENCH_KEYD_ONLY=1` runs only this and writes `keyd.md` and
//! `keyd.json`.

mod dashboard;
pub(crate) mod verify;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use tollgate_bench::keyd_report::{KeydReport, VerifyComparison, VerifyRun, thousands};
use tollgate_bench::report::Goal;
use tollgate_bench::{Error, Result};
use tollgate_e2e::{DATAPLANE_TOKEN, KeyClient, Keyd};
use tollgate_proto::v1::CreateKeyRequest;
use tollgate_testkit::postgres::Cluster;

use crate::Settings;
use crate::measure::{output, pin};

/// Keys the `VerifyKey` load looks up among.
const VERIFY_KEYS: usize = 1000;
/// `VerifyKey` calls kept in flight, as in the one-core measurement of the main report.
const IN_FLIGHT: usize = 64;
/// Keys in the dashboard's store.
const DASHBOARD_KEYS: usize = 10_000;

/// A folder removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Result<Scratch> {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
        let dir = std::env::temp_dir().join(format!("tollgate-bench-{what}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| Error(format!("create {}: {e}", dir.display())))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One store with its replicas (one or more key services), each pinned to the service core.
struct Service {
    store: &'static str,
    replicas: Vec<Keyd>,
    // Dropped after the replicas: their data folders live in it.
    _dir: Scratch,
}

impl Service {
    async fn sqlite(settings: &Settings) -> Result<Service> {
        let dir = Scratch::new("keyd-sqlite")?;
        let keyd = Keyd::start(dir.0.join("data")).await;
        pin_keyd(&keyd, settings).await;
        Ok(Service { store: "SQLite", replicas: vec![keyd], _dir: dir })
    }

    /// `n` replicas on a new database of `cluster`, sharing one pepper and master key.
    async fn postgres(settings: &Settings, cluster: &Cluster, name: &str, n: usize) -> Result<Service> {
        let url = cluster.create_database(name).map_err(|e| Error(format!("create database: {e}")))?;
        let dir = Scratch::new("keyd-postgres")?;
        let args = vec![
            "--store".to_owned(),
            url,
            "--pepper-file".to_owned(),
            dir.0.join("pepper").display().to_string(),
            "--master-key-file".to_owned(),
            dir.0.join("master.key").display().to_string(),
        ];
        let mut replicas = Vec::new();
        // One at a time: the first creates the shared pepper and master key files.
        for i in 0..n {
            let keyd = Keyd::start_with_args(dir.0.join(format!("replica-{i}")), &args).await;
            pin_keyd(&keyd, settings).await;
            replicas.push(keyd);
        }
        Ok(Service { store: "PostgreSQL", replicas, _dir: dir })
    }

    async fn dataplane_clients(&self) -> Vec<KeyClient> {
        let mut clients = Vec::new();
        for keyd in &self.replicas {
            clients.push(keyd.client(DATAPLANE_TOKEN).await);
        }
        clients
    }
}

async fn pin_keyd(keyd: &Keyd, settings: &Settings) {
    if let Some(pid) = keyd.pid() {
        pin(pid, &settings.envoy_cpu).await;
    }
}

/// Starts a private PostgreSQL cluster and pins its server processes (and so every backend it
/// forks later) to the service core.
async fn start_postgres(settings: &Settings) -> Result<Cluster> {
    let cluster = tokio::task::spawn_blocking(Cluster::start)
        .await
        .map_err(|e| Error(format!("start PostgreSQL: {e}")))?
        .map_err(|e| Error(format!("start PostgreSQL: {e}")))?;
    let pid_file = cluster.dir().join("data").join("postmaster.pid");
    let postmaster: u32 = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()))
        .ok_or_else(|| Error(format!("no process id in {}", pid_file.display())))?;
    pin(postmaster, &settings.envoy_cpu).await;
    for child in children(postmaster) {
        pin(child, &settings.envoy_cpu).await;
    }
    Ok(cluster)
}

/// The processes whose parent is `parent`.
fn children(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // Field 4, after the command name in parentheses.
            let ppid: u32 = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == parent).then_some(pid)
        })
        .collect()
}

/// Creates `n` keys through `CreateKey`, spread over `consumers` consumers (the first key of each
/// creates it), `parallel` calls at a time; returns each key's id and secret.
pub(crate) async fn create_keys(
    admin: &KeyClient,
    n: usize,
    consumers: usize,
    parallel: usize,
) -> Result<Vec<(String, String)>> {
    let consumers = consumers.clamp(1, n.max(1));
    let create = move |mut client: KeyClient, i: usize| async move {
        let request = CreateKeyRequest {
            consumer: format!("bench-consumer-{:03}", i % consumers),
            create_consumer: true,
            name: format!("bench-key-{i}"),
            scopes: vec!["read".to_owned()],
            ..Default::default()
        };
        let answer = client
            .create_key(request)
            .await
            .map_err(|status| Error(format!("CreateKey {i}: {status}")))?
            .into_inner();
        let id = answer.key.map(|k| k.id).unwrap_or_default();
        if id.is_empty() || answer.secret.is_empty() {
            return Err(Error(format!("CreateKey {i} returned no id or secret")));
        }
        Ok::<_, Error>((id, answer.secret))
    };
    // The consumers one at a time (two creating the same consumer at once would race), then the
    // rest in parallel.
    let mut keys = Vec::with_capacity(n);
    for i in 0..consumers.min(n) {
        keys.push(create(admin.clone(), i).await?);
    }
    let next = Arc::new(AtomicUsize::new(keys.len()));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..parallel.max(1) {
        let (client, next) = (admin.clone(), next.clone());
        tasks.spawn(async move {
            let mut made = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, Error>(made);
                }
                made.push(create(client.clone(), i).await?);
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        keys.extend(joined.map_err(|e| Error(format!("create task: {e}")))??);
    }
    Ok(keys)
}

/// Runs both measurements. Failures (PostgreSQL not installed, a call refused) are reported in
/// the report, not raised: the rest of the benchmark stands without them.
pub(crate) async fn run(settings: &Settings) -> KeydReport {
    let mut report = KeydReport {
        verify: VerifyComparison {
            keys: VERIFY_KEYS,
            in_flight: IN_FLIGHT,
            seconds: settings.seconds,
            rounds: settings.rounds,
            ..VerifyComparison::default()
        },
        ..KeydReport::default()
    };
    eprintln!("bench: key service stores and replicas");
    let load_before = load_average();
    let cluster = match start_postgres(settings).await {
        Ok(cluster) => Some(cluster),
        Err(e) => {
            report.verify.failures.push(format!("PostgreSQL: {e}"));
            report.dashboard_failures.push(format!("PostgreSQL: {e}"));
            None
        }
    };
    if let Err(e) = verify_stores(settings, cluster.as_ref(), &mut report.verify).await {
        report.verify.failures.push(e.0);
    }

    eprintln!("bench: dashboard with {} keys", thousands(DASHBOARD_KEYS));
    let plan = dashboard::Plan {
        keys: DASHBOARD_KEYS,
        consumers: 100,
        usage_every: 10,
        requests: if settings.quick { 5 } else { 20 },
    };
    let stores: Vec<&str> = if cluster.is_some() { vec!["SQLite", "PostgreSQL"] } else { vec!["SQLite"] };
    for store in stores {
        let service = match (store, cluster.as_ref()) {
            ("PostgreSQL", Some(cluster)) => Service::postgres(settings, cluster, "dashboard", 1).await,
            _ => Service::sqlite(settings).await,
        };
        let measured = match service {
            Ok(service) => match service.replicas.first() {
                Some(keyd) => dashboard::measure(keyd, store, &plan).await,
                None => Err(Error("no key service".to_owned())),
            },
            Err(e) => Err(e),
        };
        match measured {
            Ok(run) => report.dashboard.push(run),
            Err(e) => report.dashboard_failures.push(format!("{store}: {e}")),
        }
    }
    // The cores are not ours alone when other work runs beside the benchmark: say how busy the
    // machine was.
    report.notes.push(format!(
        "load average (1 min) when these measurements started: {load_before}; when they ended: {}",
        load_average()
    ));
    report
}

/// The 1-minute load average (`/proc/loadavg`), as text.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Starts SQLite with one replica and PostgreSQL with one and three, fills each with the keys,
/// then measures them round by round, interleaved.
async fn verify_stores(
    settings: &Settings,
    cluster: Option<&Cluster>,
    out: &mut VerifyComparison,
) -> Result<()> {
    let mut services = vec![Service::sqlite(settings).await?];
    if let Some(cluster) = cluster {
        services.push(Service::postgres(settings, cluster, "verify_one", 1).await?);
        services.push(Service::postgres(settings, cluster, "verify_three", 3).await?);
    }
    let mut targets = Vec::new();
    for service in &services {
        let first = service.replicas.first().ok_or_else(|| Error("no key service".to_owned()))?;
        let keys = create_keys(&first.admin_client().await, VERIFY_KEYS, 10, 8).await?;
        let hashes: Vec<Vec<u8>> = keys.iter().map(|(_, secret)| Sha256::digest(secret).to_vec()).collect();
        targets.push((service.dataplane_clients().await, hashes));
        out.runs.push(VerifyRun {
            store: service.store.to_owned(),
            replicas: service.replicas.len(),
            ..VerifyRun::default()
        });
    }
    let duration = Duration::from_secs(settings.seconds);
    for round in 0..settings.rounds {
        eprintln!("  round {} of {}", round + 1, settings.rounds);
        for ((clients, hashes), run) in targets.iter().zip(out.runs.iter_mut()) {
            match verify::verify_key_load(clients, hashes, IN_FLIGHT, duration).await {
                Ok(load) => {
                    eprintln!(
                        "  {:<10} × {}  {:>8.0} calls/s  p50 {:>6.2} ms  p99 {:>6.2} ms",
                        run.store, run.replicas, load.calls_per_second, load.p50_ms, load.p99_ms
                    );
                    run.calls_per_second.push(load.calls_per_second);
                    run.p50_ms.push(load.p50_ms);
                    run.p99_ms.push(load.p99_ms);
                    run.errors += load.failed;
                }
                Err(e) => run.failures.push(format!("round {}: {e}", round + 1)),
            }
        }
    }
    Ok(())
}

/// `BENCH_KEYD_ONLY=1`: only these measurements, written to `keyd.md` and `keyd.json` in the
/// output folder (the main report's files are left alone).
pub(crate) async fn run_only(settings: &Settings) -> Result<()> {
    // This process (the load) on the load core; the services are pinned as they start.
    pin(std::process::id(), &settings.load_cpu).await;
    let report = run(settings).await;
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    // Counted from /proc/cpuinfo: this process is pinned to one core by now.
    let cores = std::fs::read_to_string("/proc/cpuinfo")
        .map(|c| c.lines().filter(|l| l.starts_with("processor")).count())
        .unwrap_or(0);
    let date =
        output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).await.map(|d| d.trim().to_owned()).unwrap_or_default();
    let md = standalone_markdown(&report, &date, &cpu_model, cores, settings);
    println!("{md}");
    write(&settings.out_dir, "keyd.md", &md)?;
    let json = serde_json::to_string_pretty(&report).map_err(|e| Error(format!("keyd.json: {e}")))?;
    write(&settings.out_dir, "keyd.json", &json)?;
    eprintln!("bench: wrote keyd.md and keyd.json to {}", settings.out_dir.display());
    Ok(())
}

fn standalone_markdown(
    report: &KeydReport,
    date: &str,
    cpu: &str,
    cores: usize,
    settings: &Settings,
) -> String {
    let mut md = format!(
        "# Tollgate benchmark: the key service\n\n- date: {date}\n- machine: {cpu} ({cores} cores)\n- mode: {}, \
         key services and PostgreSQL pinned to CPU {}, the load to CPU {}\n",
        if settings.quick { "quick" } else { "full" },
        settings.envoy_cpu,
        settings.load_cpu
    );
    md.push_str(&report.markdown());
    md.push_str("\n## Goals\n\n| goal | measured | met |\n|---|---:|---|\n");
    for g in report.goals() {
        md.push_str(&goal_row(&g));
    }
    md
}

fn goal_row(g: &Goal) -> String {
    let met = match g.met {
        Some(true) => "yes",
        Some(false) => "not yet",
        None => "not measured",
    };
    let measured = g.measured.map_or_else(|| "–".to_owned(), |m| format!("{m:.2}"));
    format!("| {} | {measured} | {met} |\n", g.goal)
}

fn write(dir: &Path, name: &str, text: &str) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error(format!("create {}: {e}", dir.display())))?;
    let path = dir.join(name);
    std::fs::write(&path, text).map_err(|e| Error(format!("write {}: {e}", path.display())))
}
