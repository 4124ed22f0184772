//! Global rate limits (issue 19): `tollgate-ratelimitd` on Redis behind Envoy — its native
//! `envoy.filters.http.ratelimit` filter and the `rate-limit` filter's `global` mode, both a call
//! per request — and the service's own decisions per second and latency, on Redis and in memory.
//!
//! During the Envoy rounds Redis and the service run on the load generators' core, so the calls
//! cost Envoy only its own side of them. For the service's own figures they move to the Envoy core
//! (idle by then) with nothing else, and the tonic client stays on the load core.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::task::JoinSet;
use tollgate_bench::rls::{RlsService, StoreRun, percentile};
use tollgate_bench::{Error, Result, procfs};
use tollgate_e2e::{
    Ratelimitd, Redis, UPSTREAM_CLUSTER, native_ratelimit_filter, ratelimit_cluster, wasm_dir, wasm_filter,
};
use tollgate_ratelimitd::proto::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use tollgate_ratelimitd::proto::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use tollgate_ratelimitd::proto::envoy::service::ratelimit::v3::rate_limit_response::Code;
use tollgate_ratelimitd::proto::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use tollgate_ratelimitd::proto::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use tonic::transport::Channel;

use crate::Settings;
use crate::measure::{Running, pin};
use crate::variants::{PATH, Variant};

/// Envoy's native rate-limit filter calling the service, before a local reply (see [`TERMINAL`]).
pub(crate) const RLS_NATIVE: &str = "rls-native";
/// The `rate-limit` filter in `global` mode calling the service.
pub(crate) const RATE_LIMIT_GLOBAL: &str = "rate-limit global";
/// Envoy with only the local reply [`RLS_NATIVE`] ends with: what that reply costs.
pub(crate) const TERMINAL: &str = "fault-abort 200";
/// The `BENCH_ONLY` name of the service's own benchmark.
pub(crate) const SERVICE: &str = "ratelimitd";

const DOMAIN: &str = "bench";
/// Limits that never refuse: every call charges a bucket (a refusal would write nothing).
const LIMITS: &str = "\
domain: bench
descriptors:
  - key: generic_key
    value: bench
    rate_limit: {unit: second, requests_per_unit: 1000000000, name: bench}
  - key: tenant
    rate_limit: {unit: second, requests_per_unit: 1000000000, name: per-tenant}
";
/// Distinct tenants the direct calls cycle through (a bucket each).
const TENANTS: usize = 1000;
const CONNECTIONS: usize = 4;
const IN_FLIGHT: usize = 16;
/// A call not answered by then counts as an error.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether the variant calls the rate-limit service on every request: its latency is measured
/// at a rate of its own (half the slowest of them's saturation), and left out of the latency goals.
pub(crate) fn calls_service(variant: &str) -> bool {
    variant == RLS_NATIVE || variant == RATE_LIMIT_GLOBAL
}

/// Which parts `BENCH_ONLY` asks for: (the Envoy variants, the service's own benchmark).
pub(crate) fn wanted(only: Option<&str>) -> (bool, bool) {
    let Some(only) = only else { return (true, true) };
    let names: Vec<&str> = only.split(',').map(str::trim).collect();
    let envoy = [RLS_NATIVE, RATE_LIMIT_GLOBAL, TERMINAL].iter().any(|n| names.contains(n));
    (envoy, names.contains(&SERVICE))
}

/// Redis and the service on it.
pub(crate) struct Rls {
    redis: Redis,
    service: Ratelimitd,
}

impl Rls {
    /// Starts Redis and the service on Redis, both pinned to `cpu`.
    pub(crate) async fn start(cpu: &str) -> Result<Rls> {
        let redis = Redis::start().await;
        let service = Ratelimitd::try_start(LIMITS, Some(&redis.url()))
            .await
            .map_err(|log| Error(format!("tollgate-ratelimitd did not start:\n{log}")))?;
        let rls = Rls { redis, service };
        rls.pin(cpu).await;
        Ok(rls)
    }

    async fn pin(&self, cpu: &str) {
        for pid in [self.redis.pid(), self.service.pid()].into_iter().flatten() {
            pin(pid, cpu).await;
        }
    }

    /// The Envoy variants: [`TERMINAL`], [`RLS_NATIVE`] and [`RATE_LIMIT_GLOBAL`], each request
    /// of the last two one call with the descriptor `[generic_key=bench]`.
    pub(crate) fn variants(&self) -> Vec<Variant> {
        let cluster = ratelimit_cluster(&[self.service.addr()]);
        // Envoy's filter asks the service only on a route with a route entry: a `direct_response`
        // route has none. The route names a cluster, and the fault filter answers 200 before the
        // router would use it.
        let route = json!({
            "match": {"prefix": "/"},
            "route": {
                "cluster": UPSTREAM_CLUSTER,
                "rate_limits": [{"actions": [{"generic_key": {"descriptor_value": "bench"}}]}]
            }
        });
        let terminal = json!({
            "name": "envoy.filters.http.fault",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
                "abort": {"http_status": 200, "percentage": {"numerator": 100, "denominator": "HUNDRED"}}
            }
        });
        let mut native = native_ratelimit_filter(DOMAIN, true);
        let typed = &mut native["typed_config"];
        typed["timeout"] = json!("1s");
        // Like the Tollgate variant below (`"ietf": false`): no rate-limit headers.
        if let Some(typed) = typed.as_object_mut() {
            typed.remove("enable_x_ratelimit_headers");
        }
        let mut global = wasm_filter(
            "rate_limit",
            "tollgate.rate_limit",
            &wasm_dir().join("tollgate_rate_limit.wasm"),
            &json!({
                "slots": 1024,
                "headers": {"ietf": false},
                "rules": [{"name": "bench", "limits": [{"rate": 1_000_000_000u64, "per": "second"}]}],
                "global": {
                    "cluster": tollgate_e2e::RATELIMIT_CLUSTER,
                    "domain": DOMAIN,
                    "timeout": "1s",
                    "failure_mode": "deny",
                    "descriptors": [[{"key": "generic_key", "value": "bench"}]]
                }
            }),
        );
        global["typed_config"]["config"]["vm_config"]["vm_id"] = json!("tollgate_rate_limit");
        vec![
            Variant::new(
                TERMINAL,
                "native `fault` answering 200 to every request on a route to a cluster (never reached): the local reply `rls-native` ends with",
                vec![terminal.clone()],
            )
            .route(route.clone()),
            Variant::new(
                RLS_NATIVE,
                "native `ratelimit` filter: one call per request to tollgate-ratelimitd on Redis ([generic_key=bench], never over the limit, `failure_mode_deny`), then the `fault-abort 200` reply",
                vec![native, terminal],
            )
            .route(route)
            .cluster(cluster.clone())
            .native("local_ratelimit"),
            Variant::new(
                RATE_LIMIT_GLOBAL,
                "rate-limit in `global` mode: the local rule of `rate-limit`, then one call per request to tollgate-ratelimitd on Redis ([generic_key=bench], never over the limit, `failure_mode: deny`)",
                vec![global],
            )
            .cluster(cluster)
            .native(RLS_NATIVE),
        ]
    }

    /// Checks every request of the global variants made one call to the service.
    pub(crate) async fn check_calls(&self, running: &[Running]) -> Result<()> {
        const N: u32 = 20;
        let calls = r#"tollgate_ratelimitd_requests_total{result="OK"}"#;
        for r in running.iter().filter(|r| [RLS_NATIVE, RATE_LIMIT_GLOBAL].contains(&r.variant.name.as_str()))
        {
            let before = self.service.metric(calls).await;
            for _ in 0..N {
                let res = r.envoy.get(PATH).try_send().await.map_err(Error)?;
                if res.status != 200 {
                    return Err(Error(format!("variant `{}` answered {}", r.variant.name, res.status)));
                }
            }
            let made = self.service.metric(calls).await - before;
            if made < f64::from(N) {
                return Err(Error(format!(
                    "variant `{}`: {N} requests made {made} calls to the rate-limit service",
                    r.variant.name
                )));
            }
        }
        Ok(())
    }

    /// The service's own benchmark: the service on Redis, then a second one in memory, each at
    /// saturation and then at half of it. Both services and Redis move to the Envoy core.
    pub(crate) async fn measure_service(&self, settings: &Settings) -> RlsService {
        self.pin(&settings.envoy_cpu).await;
        let seconds = Duration::from_secs(settings.seconds);
        let mut runs = vec![
            measure_store("Redis", &self.service, self.redis.pid(), seconds, settings.ticks_per_second).await,
        ];
        match Ratelimitd::try_start(LIMITS, None).await {
            Ok(memory) => {
                if let Some(pid) = memory.pid() {
                    pin(pid, &settings.envoy_cpu).await;
                }
                runs.push(measure_store("memory", &memory, None, seconds, settings.ticks_per_second).await);
            }
            Err(log) => runs.push(StoreRun {
                store: "memory".to_owned(),
                failure: Some(format!("the service did not start: {log}")),
                ..StoreRun::default()
            }),
        }
        self.pin(&settings.load_cpu).await;
        RlsService {
            placement: format!(
                "The service (tokio's multi-threaded runtime) and redis-server share CPU {envoy}, the Envoy \
                 core, idle by then; the client is this harness on CPU {load}. During the Envoy rounds above, \
                 the service and Redis ran on CPU {load} with the load generators, Envoy alone on CPU {envoy}.",
                envoy = settings.envoy_cpu,
                load = settings.load_cpu,
            ),
            connections: CONNECTIONS,
            in_flight_per_connection: IN_FLIGHT,
            seconds: settings.seconds as f64,
            request: format!(
                "domain `{DOMAIN}`, one descriptor `[tenant=t<n>]` over {TENANTS} tenants in turn (a bucket \
                 each), a limit that never refuses, so every call charges a bucket"
            ),
            runs,
        }
    }
}

fn request(n: usize) -> RateLimitRequest {
    RateLimitRequest {
        domain: DOMAIN.to_owned(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![Entry { key: "tenant".to_owned(), value: format!("t{}", n % TENANTS) }],
            ..Default::default()
        }],
        hits_addend: 0,
    }
}

/// One call: whether it was answered `OK`, and how long it took.
async fn call(mut client: RateLimitServiceClient<Channel>, n: usize) -> (bool, Duration) {
    let started = Instant::now();
    let answer = tokio::time::timeout(CALL_TIMEOUT, client.should_rate_limit(request(n))).await;
    let ok = matches!(answer, Ok(Ok(ref r)) if ok(r.get_ref()));
    (ok, started.elapsed())
}

fn ok(response: &RateLimitResponse) -> bool {
    response.overall_code == Code::Ok as i32
}

async fn measure_store(
    store: &str,
    service: &Ratelimitd,
    redis_pid: Option<u32>,
    seconds: Duration,
    ticks_per_second: u64,
) -> StoreRun {
    let mut run = StoreRun { store: store.to_owned(), ..StoreRun::default() };
    eprintln!("bench: rate-limit service ({store}) at saturation");
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        match RateLimitServiceClient::connect(format!("http://{}", service.addr())).await {
            Ok(client) => clients.push(client),
            Err(e) => {
                run.failure = Some(format!("connect: {e}"));
                return run;
            }
        }
    }
    // Warm up, and check a call works at all.
    let (ok, _) = call(clients[0].clone(), 0).await;
    if !ok {
        run.failure = Some("the first call was not answered OK".to_owned());
        return run;
    }
    let ticks = |pid: Option<u32>| pid.and_then(|p| procfs::cpu_ticks(p).ok());
    let (service_before, redis_before) = (ticks(service.pid()), ticks(redis_pid));
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + seconds;
    let mut tasks = JoinSet::new();
    for (i, client) in clients.iter().cycle().take(CONNECTIONS * IN_FLIGHT).enumerate() {
        let client = client.clone();
        tasks.spawn(async move {
            let (mut answered, mut failed, mut n) = (0u64, 0u64, i);
            while tokio::time::Instant::now() < deadline {
                if call(client.clone(), n).await.0 {
                    answered += 1
                } else {
                    failed += 1
                }
                n += CONNECTIONS * IN_FLIGHT;
            }
            (answered, failed)
        });
    }
    let mut answered = 0;
    while let Some(joined) = tasks.join_next().await {
        let (a, f) = joined.unwrap_or((0, 1));
        answered += a;
        run.errors += f;
    }
    let wall = started.elapsed().as_secs_f64();
    let (service_after, redis_after) = (ticks(service.pid()), ticks(redis_pid));
    let per_decision = |before: Option<u64>, after: Option<u64>| {
        procfs::cpu_us_per_request(after?.saturating_sub(before?), ticks_per_second, answered)
    };
    run.decisions_per_second = Some(answered as f64 / wall);
    run.service_cpu_us_per_decision = per_decision(service_before, service_after);
    run.redis_cpu_us_per_decision = per_decision(redis_before, redis_after);
    let used = |before: Option<u64>, after: Option<u64>| match (before, after) {
        (Some(b), Some(a)) => a.saturating_sub(b),
        _ => 0,
    };
    let cpu_seconds = (used(service_before, service_after) + used(redis_before, redis_after)) as f64
        / ticks_per_second.max(1) as f64;
    run.core_share = (wall > 0.0 && service_before.is_some()).then(|| cpu_seconds / wall);
    eprintln!(
        "  {store:<8} {:>8.0} decisions/s  {:>6.1} µs service CPU/decision",
        answered as f64 / wall,
        run.service_cpu_us_per_decision.unwrap_or(f64::NAN)
    );

    let rate = (answered as f64 / wall * 0.5).max(100.0);
    eprintln!("bench: rate-limit service ({store}) at {rate:.0} calls/s");
    run.fixed_rate = Some(rate);
    let (latencies, failed, achieved) = fixed_rate(&clients, rate, seconds).await;
    run.errors += failed;
    run.achieved_rate = Some(achieved);
    run.p50_ms = percentile(&latencies, 0.5);
    run.p99_ms = percentile(&latencies, 0.99);
    run.p999_ms = percentile(&latencies, 0.999);
    run
}

/// Calls at `rate` for `duration`, sent on schedule in 1 ms batches whatever the answers (open
/// loop), round robin over `clients`. Returns the latencies of the calls answered OK in ms, the
/// number of the others, and the rate achieved.
async fn fixed_rate(
    clients: &[RateLimitServiceClient<Channel>],
    rate: f64,
    duration: Duration,
) -> (Vec<f64>, u64, f64) {
    let total = (rate * duration.as_secs_f64()) as usize;
    let mut latencies = Vec::with_capacity(total);
    let mut failed = 0u64;
    let mut record = |result: std::result::Result<(bool, Duration), tokio::task::JoinError>| match result {
        Ok((true, took)) => latencies.push(took.as_secs_f64() * 1e3),
        _ => failed += 1,
    };
    let mut tasks = JoinSet::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut sent = 0;
    while sent < total {
        ticker.tick().await;
        let due = ((started.elapsed().as_secs_f64() * rate) as usize).min(total);
        while sent < due {
            tasks.spawn(call(clients[sent % clients.len()].clone(), sent));
            sent += 1;
        }
        while let Some(done) = tasks.try_join_next() {
            record(done);
        }
    }
    let sending = started.elapsed().as_secs_f64();
    // Every call ends within its timeout.
    while let Some(done) = tasks.join_next().await {
        record(done);
    }
    (latencies, failed, if sending > 0.0 { sent as f64 / sending } else { 0.0 })
}

/// The filters' config parts the Envoy variants share, for the report's notes.
pub(crate) fn note(settings: &Settings) -> String {
    format!(
        "`{RLS_NATIVE}` and `{RATE_LIMIT_GLOBAL}` call one tollgate-ratelimitd (release build) on one \
         redis-server (`--save \"\" --appendonly no`), both pinned to CPU {load}, the load generators' core, \
         never Envoy's (CPU {envoy}): Envoy's figures are its own side of each call (gRPC over HTTP/2 on \
         loopback); the load core is shared, so their req/s is load-bound. `{RLS_NATIVE}` ends with \
         `{TERMINAL}`'s local reply (Envoy's filter calls only on a route with a route entry, which a \
         `direct_response` route lacks): its cost over Envoy alone is its CPU minus `{TERMINAL}`'s. \
         Their latency is measured at half the slowest of the two's saturation, and left out of the \
         latency goals",
        load = settings.load_cpu,
        envoy = settings.envoy_cpu,
    )
}
