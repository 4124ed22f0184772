//! The rate-limit filter end to end: real Envoy with 1 and 4 workers, the real key service and
//! key-auth for identities and tiers, a real upstream. Counts are exact: with no refill during a
//! burst (limits per hour), N concurrent requests against a bucket of L let exactly L through.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tollgate_e2e::{
    Echo, Envoy, EnvoyOpts, HttpClient, Keyd, RawRequest, RawResponse, Response, Value, eventually, json,
};
use tollgate_proto::v1::{CreateKeyRequest, Period, RateLimit, RateLimitPolicy};

const STATS: &str = "wasmcustom.tollgate.rate_limit.";
/// Concurrent connections of the load loops.
const CONCURRENCY: usize = 24;

fn rate_limit_filter(config: &Value) -> Value {
    tollgate_e2e::wasm_filter(
        "rate_limit",
        "tollgate.rate_limit",
        &tollgate_e2e::wasm_module("tollgate_rate_limit"),
        config,
    )
}

struct Gateway {
    _echo: Echo,
    envoy: Envoy,
    client: HttpClient,
}

impl Gateway {
    /// Envoy with only the rate-limit filter.
    async fn start(config: Value, workers: u32) -> Self {
        Self::start_with(config, workers, |o| o).await
    }

    /// Envoy with only the rate-limit filter, its options (routes, connection manager) adjusted.
    async fn start_with(config: Value, workers: u32, opts: impl FnOnce(EnvoyOpts) -> EnvoyOpts) -> Self {
        let echo = Echo::start();
        let base = EnvoyOpts::new(echo.addr()).http_filter(rate_limit_filter(&config)).workers(workers);
        let envoy = Envoy::start(opts(base)).await;
        Self { _echo: echo, envoy, client: HttpClient::fresh_connections() }
    }

    /// One request written byte for byte (raw paths, header bytes that are not UTF-8).
    async fn raw(&self, request: RawRequest) -> RawResponse {
        request.send(self.envoy.addr()).await.unwrap()
    }

    /// Statuses of `n` GETs of `path`, one after another.
    async fn statuses(&self, path: &str, headers: &[(&str, &str)], n: usize) -> Vec<u16> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.get(path, headers).await.status);
        }
        out
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        self.client.get(self.envoy.url(path)).headers(headers.iter().copied()).send().await
    }

    /// Sends `n` requests over `CONCURRENCY` concurrent connections (a new connection per
    /// request, so they spread over the workers); returns every response.
    async fn burst(&self, path: &str, headers: &[(&str, &str)], n: usize) -> Vec<Response> {
        burst(&self.client, self.envoy.url(path), headers, n).await
    }

    async fn stat(&self, name: &str) -> u64 {
        self.envoy.stat(&format!("{STATS}{name}")).await.unwrap_or(0)
    }

    /// Waits until stat `name` reaches `value` (stats land as streams end); returns the last value.
    async fn stat_reaches(&self, name: &str, value: u64) -> u64 {
        eventually(Duration::from_secs(5), || async { self.stat(name).await >= value }).await;
        self.stat(name).await
    }
}

async fn burst(client: &HttpClient, url: String, headers: &[(&str, &str)], n: usize) -> Vec<Response> {
    let headers: Arc<Vec<(String, String)>> =
        Arc::new(headers.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..CONCURRENCY.min(n) {
        let (client, url, headers, next) = (client.clone(), url.clone(), headers.clone(), next.clone());
        tasks.spawn(async move {
            let mut out = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                let req =
                    client.get(url.clone()).headers(headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                out.push(req.send().await);
            }
            out
        });
    }
    let mut all = Vec::with_capacity(n);
    while let Some(done) = tasks.join_next().await {
        all.extend(done.unwrap());
    }
    assert_eq!(all.len(), n);
    all
}

fn count(responses: &[Response], status: u16) -> usize {
    responses.iter().filter(|r| r.status == status).count()
}

/// A bucket of `burst` that refills one token per hour: nothing refills during a test.
fn hourly(name: &str, by: Value, burst: u64) -> Value {
    json!({"name": name, "by": by, "limits": [{"rate": 1, "per": "hour", "burst": burst}]})
}

async fn exactly_the_burst_gets_through(workers: u32) {
    const LIMIT: usize = 60;
    const SENT: usize = 400;
    let gw = Gateway::start(json!({"slots": 4096, "headers": {"legacy": true}, "rules": [hourly("all", json!([]), LIMIT as u64)]}), workers).await;
    let responses = gw.burst("/burst", &[], SENT).await;
    assert_eq!(count(&responses, 200), LIMIT, "workers={workers}");
    assert_eq!(count(&responses, 429), SENT - LIMIT, "workers={workers}");
    assert_eq!(
        gw.stat_reaches("rule_decisions_total.rule.all.decision.allowed", LIMIT as u64).await,
        LIMIT as u64
    );
    assert_eq!(
        gw.stat_reaches("rule_decisions_total.rule.all.decision.limited", (SENT - LIMIT) as u64).await,
        (SENT - LIMIT) as u64
    );
    assert_eq!(gw.stat("rule_events_total.rule.all.event.cas_exhausted").await, 0);

    // The headers: allowed responses count down; refused ones say when to come back.
    let mut remaining: Vec<u64> = responses
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| {
            // The quota is the burst; it comes back in full over 60 hours.
            assert_eq!(r.header("ratelimit-policy"), Some(r#""all";q=60;w=216000"#));
            assert_eq!(r.header("x-ratelimit-limit"), Some("60"));
            let v = r.header("ratelimit").unwrap();
            assert_eq!(r.header("x-ratelimit-remaining").unwrap().parse::<u64>().ok(), parse_r(v));
            parse_r(v).unwrap()
        })
        .collect();
    remaining.sort_unstable();
    assert_eq!(remaining, (0..LIMIT as u64).collect::<Vec<_>>(), "each token was handed out once");
    let refused = responses.iter().find(|r| r.status == 429).unwrap();
    assert_eq!(refused.header("retry-after"), Some("3600"));
    assert_eq!(refused.header("content-type"), Some("application/json"));
    // The next token comes back in an hour, as `Retry-After` says.
    assert_eq!(refused.header("ratelimit"), Some(r#""all";r=0;t=3600"#));
    let body = refused.json();
    assert_eq!(body["error"], "rate_limited");
    assert!(body["request_id"].as_str().is_some_and(|id| !id.is_empty()), "{body}");

    if workers > 1 {
        // The requests really were spread over the workers.
        let per_worker = gw.envoy.stats("worker_.*downstream_cx_total").await;
        let busy = per_worker.iter().filter(|(k, v)| k.starts_with("listener.127.") && **v > 0).count();
        assert!(busy >= 2, "{per_worker:?}");
    }
}

fn parse_r(header: &str) -> Option<u64> {
    header.split(';').find_map(|p| p.strip_prefix("r=")).and_then(|r| r.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_the_burst_gets_through_with_1_worker() {
    exactly_the_burst_gets_through(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_the_burst_gets_through_with_4_workers() {
    exactly_the_burst_gets_through(4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_do_not_share_a_bucket_and_tokens_refill() {
    let config = json!({"slots": 4096, "rules": [
        {"name": "client", "by": [{"header": "x-client"}], "missing": "deny",
         "limits": [{"rate": 5, "per": "second", "burst": 5}]}
    ]});
    let gw = Gateway::start(config, 4).await;
    let a = gw.burst("/", &[("x-client", "a")], 40).await;
    let b = gw.burst("/", &[("x-client", "b")], 40).await;
    // 5 per second: a slow machine may see one more token come back during the burst.
    assert!((5..=6).contains(&count(&a, 200)), "{}", count(&a, 200));
    assert!((5..=6).contains(&count(&b, 200)), "{}", count(&b, 200));
    // Without the header the rule denies.
    let missing = gw.get("/", &[]).await;
    assert_eq!(missing.status, 429);
    assert_eq!(missing.json()["error"], "rate_limited");
    // Refused now; a token back after waiting for it.
    assert_eq!(gw.get("/", &[("x-client", "a")]).await.status, 429);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(gw.get("/", &[("x-client", "a")]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn critical_requests_get_through_while_normal_ones_are_limited() {
    let mut rule = hourly("all", json!([]), 20);
    rule["priority"] =
        json!({"reserve_percent": 25, "critical": {"header": {"name": "x-priority", "value": "critical"}}});
    let gw = Gateway::start(json!({"slots": 1024, "rules": [rule]}), 4).await;
    let normal = gw.burst("/", &[], 100).await;
    assert_eq!(count(&normal, 200), 15);
    let critical = gw.burst("/", &[("x-priority", "critical")], 20).await;
    assert_eq!(count(&critical, 200), 5);
    assert_eq!(gw.get("/", &[]).await.status, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_mode_never_blocks() {
    let mut rule = hourly("shadow", json!([]), 10);
    rule["mode"] = json!("shadow");
    let gw = Gateway::start(json!({"slots": 1024, "rules": [rule]}), 4).await;
    let responses = gw.burst("/", &[], 60).await;
    assert_eq!(count(&responses, 200), 60);
    assert_eq!(gw.stat_reaches("rule_decisions_total.rule.shadow.decision.shadow_limited", 50).await, 50);
    assert_eq!(gw.stat("rule_decisions_total.rule.shadow.decision.allowed").await, 10);
    assert!(gw.envoy.logs().contains("would limit this request (shadow mode)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumers_tier_from_the_key_service_wins() {
    let echo = Echo::start();
    let keyd = Keyd::start_temp().await;
    let config = json!({"slots": 4096, "rules": [hourly("per-consumer", json!(["consumer"]), 3)]});
    let envoy = Envoy::start(
        EnvoyOpts::new(echo.addr())
            .key_auth(keyd.key_auth_config())
            .keyd(keyd.addr())
            .http_filter(rate_limit_filter(&config))
            .workers(4),
    )
    .await;
    let (_, plain) = keyd.create_key("plain", &[]).await;
    let gold = keyd
        .admin_client()
        .await
        .create_key(CreateKeyRequest {
            consumer: "gold".into(),
            create_consumer: true,
            rate_limit: Some(RateLimitPolicy {
                tier: "gold".into(),
                limits: vec![RateLimit { rate: 10, period: Period::Hour as i32, burst: 10 }],
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .secret;
    let client = HttpClient::fresh_connections();
    let plain = burst(&client, envoy.url("/"), &[("x-api-key", &plain)], 30).await;
    let gold = burst(&client, envoy.url("/"), &[("x-api-key", &gold)], 30).await;
    assert_eq!(count(&plain, 200), 3);
    assert_eq!(count(&gold, 200), 10);
    let gold_ok = gold.iter().find(|r| r.status == 200).unwrap();
    assert_eq!(gold_ok.header("ratelimit-policy"), Some(r#""per-consumer";q=10;w=3600"#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_config_is_refused_naming_the_field() {
    let echo = Echo::start();
    let config = json!({"rules": [{"name": "r", "limits": [{"rate": 1, "per": "week"}]}]});
    let log =
        match Envoy::try_start(EnvoyOpts::new(echo.addr()).http_filter(rate_limit_filter(&config))).await {
            Ok(_) => panic!("Envoy accepted an invalid rate-limit config"),
            Err(log) => log,
        };
    assert!(log.contains("invalid rate-limit config: `rules[0].limits[0].per`"), "{log}");
}

/// Envoy's heap in use, from the admin API.
async fn allocated(envoy: &Envoy) -> u64 {
    let memory: Value = serde_json::from_str(&envoy.admin_get("/memory").await).unwrap();
    memory["allocated"].as_str().and_then(|v| v.parse().ok()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_client_keys_stay_within_the_slot_budget() {
    const CLIENTS: usize = 100_000;
    const WARM_UP: usize = 4_000;
    const SLOTS: u64 = 2048;
    let config = json!({"slots": SLOTS, "headers": {"ietf": false},
        "rules": [{"name": "client", "by": [{"header": "x-client"}],
                   "limits": [{"rate": 1000, "per": "second", "burst": 10}]}]});
    // Envoy answers itself (the filters still run first): this test is about keys, so the
    // upstream and the HTTP client are kept out of the way.
    let echo = Echo::start();
    let mut bootstrap = EnvoyOpts::new(echo.addr()).http_filter(rate_limit_filter(&config)).render();
    let route = &mut bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        ["route_config"]["virtual_hosts"][0]["routes"][0];
    route.as_object_mut().unwrap().remove("route");
    route["direct_response"] = json!({"status": 200, "body": {"inline_string": "ok"}});
    let envoy = Envoy::start_config(&bootstrap, 2, &[]).await.unwrap_or_else(|log| panic!("{log}"));

    let ok = pipelined_clients(envoy.addr(), 0..WARM_UP).await;
    assert_eq!(ok, WARM_UP);
    let before = allocated(&envoy).await;
    let ok = pipelined_clients(envoy.addr(), WARM_UP..CLIENTS).await;
    let after = allocated(&envoy).await;
    // Every client is new and its bucket (10 tokens) holds plenty: all pass, including those whose
    // slot another client's bucket occupied in the same few milliseconds.
    assert_eq!(ok, CLIENTS - WARM_UP);
    // A bucket per client would take well over 100 bytes × 96 000 ≈ 10 MB; the slots were all
    // written before the first request. Allow 2 MB of noise.
    let grown = after.saturating_sub(before);
    assert!(grown < 2 << 20, "Envoy's heap grew by {grown} bytes for {CLIENTS} distinct keys");
}

/// Sends one `GET /` per id in `ids` with `x-client: c<id>` over kept-alive raw connections (a
/// window of requests in flight on each); returns how many answered 200.
async fn pipelined_clients(addr: std::net::SocketAddr, ids: std::ops::Range<usize>) -> usize {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const CONNECTIONS: usize = 16;
    const WINDOW: usize = 1;
    let ids: Vec<usize> = ids.collect();
    let mut tasks = JoinSet::new();
    for chunk in ids.chunks(ids.len().div_ceil(CONNECTIONS).max(1)) {
        let chunk = chunk.to_vec();
        tasks.spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut ok = 0;
            let mut buf = Vec::new();
            for window in chunk.chunks(WINDOW) {
                let mut out = String::new();
                for id in window {
                    out.push_str(&format!("GET / HTTP/1.1\r\nhost: gw\r\nx-client: c{id}\r\n\r\n"));
                }
                stream.write_all(out.as_bytes()).await.unwrap();
                let mut seen = 0;
                while seen < window.len() {
                    match take_response(&mut buf) {
                        Some(status) => {
                            seen += 1;
                            ok += usize::from(status == 200);
                        }
                        None => {
                            let mut chunk = [0u8; 16 * 1024];
                            let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
                                .await
                                .expect("Envoy stopped answering")
                                .unwrap();
                            assert!(n > 0, "Envoy closed the connection: {}", String::from_utf8_lossy(&buf));
                            buf.extend_from_slice(&chunk[..n]);
                        }
                    }
                }
            }
            ok
        });
    }
    let mut ok = 0;
    while let Some(done) = tasks.join_next().await {
        ok += done.unwrap();
    }
    ok
}

/// Removes one complete response (with a `content-length` body) from `buf`; its status.
fn take_response(buf: &mut Vec<u8>) -> Option<u16> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..end]).unwrap().to_ascii_lowercase();
    let status = head.get(9..12)?.parse().unwrap();
    let length: usize =
        head.lines().find_map(|l| l.strip_prefix("content-length:")).map_or(0, |v| v.trim().parse().unwrap());
    if buf.len() < end + length {
        return None;
    }
    buf.drain(..end + length);
    Some(status)
}

// --- Route names (Envoy's `xds.route_name`) ---------------------------------------------------

/// A rule matched by route name limits its route, and only its route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_name_rule_limits_its_route_only() {
    let mut rule = hourly("admin", json!([]), 2);
    rule["match"] = json!({"route_name": "admin"});
    let gw =
        Gateway::start_with(json!({"slots": 64, "rules": [rule]}), 2, |o| o.named_route("admin", "/admin"))
            .await;
    assert_eq!(gw.statuses("/admin/users", &[], 4).await, [200, 200, 429, 429]);
    let refused = gw.get("/admin", &[]).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.json()["error"], "rate_limited");
    // The catch-all route (named `main`) is not limited and carries no rate-limit headers.
    let other = gw.get("/public", &[]).await;
    assert_eq!(other.status, 200);
    assert_eq!(other.header("ratelimit"), None);
    assert_eq!(gw.statuses("/public", &[], 4).await, [200; 4]);
    assert_eq!(gw.stat_reaches("rule_decisions_total.rule.admin.decision.limited", 3).await, 3);
}

/// `by: ["route"]` gives every route its own bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_by_route_are_per_route() {
    let mut rule = hourly("per-route", json!(["route"]), 2);
    rule["missing"] = json!("deny");
    let gw = Gateway::start_with(json!({"slots": 64, "rules": [rule]}), 2, |o| {
        o.named_route("one", "/one").named_route("two", "/two")
    })
    .await;
    assert_eq!(gw.statuses("/one", &[], 3).await, [200, 200, 429]);
    assert_eq!(gw.statuses("/two/x", &[], 3).await, [200, 200, 429]);
    assert_eq!(gw.statuses("/elsewhere", &[], 3).await, [200, 200, 429], "the route named `main`");
    assert_eq!(gw.stat("rule_decisions_total.rule.per-route.decision.missing_denied").await, 0);
}

/// `critical.route_names`: requests on the named route may take the reserved share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_critical_route_name_takes_the_reserve() {
    let mut rule = hourly("all", json!([]), 10);
    rule["priority"] = json!({"reserve_percent": 30, "critical": {"route_names": ["health"]}});
    let gw =
        Gateway::start_with(json!({"slots": 64, "rules": [rule]}), 2, |o| o.named_route("health", "/health"))
            .await;
    let normal = gw.statuses("/api", &[], 10).await;
    assert_eq!(normal.iter().filter(|s| **s == 200).count(), 7, "{normal:?}");
    assert_eq!(gw.statuses("/health", &[], 5).await, [200, 200, 200, 429, 429]);
    assert_eq!(gw.get("/api", &[]).await.status, 429);
}

// --- Paths ---------------------------------------------------------------------------------------

/// Rules and `by: ["path"]` see the normalised path: another spelling of a path meets its rule
/// and its bucket rather than a fresh one. An encoded slash is refused. Envoy runs with its own
/// normalisation off (its default), so this is the filter's doing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spellings_of_a_path_share_its_bucket_and_meet_its_rule() {
    let mut per_path = hourly("per-path", json!(["path"]), 1);
    per_path["match"] = json!({"path_prefix": "/p/"});
    per_path["missing"] = json!("deny");
    let mut prefix = hourly("prefix", json!([]), 1);
    prefix["match"] = json!({"path_prefix": "/limited"});
    let gw = Gateway::start(json!({"slots": 256, "rules": [per_path, prefix]}), 2).await;

    assert_eq!(gw.raw(RawRequest::get("/p/a")).await.status, 200);
    for spelling in ["/p/a", "//p/a", "/p//a", "/p/%61", "/%70/a", "/p/x/../a", "/p/./a", "/x/../p/a"] {
        let res = gw.raw(RawRequest::get(spelling)).await;
        assert_eq!(res.status, 429, "{spelling}: {}", res.text());
        assert_eq!(res.json()["error"], "rate_limited", "{spelling}");
    }
    assert_eq!(gw.raw(RawRequest::get("/p/b")).await.status, 200, "another path, another bucket");

    assert_eq!(gw.raw(RawRequest::get("/limited")).await.status, 200);
    for spelling in ["//limited", "/%6Cimited", "/%6cimited/x", "/x/../limited", "/./limited"] {
        let res = gw.raw(RawRequest::get(spelling)).await;
        assert_eq!(res.status, 429, "{spelling}: {}", res.text());
    }

    for encoded in ["/p%2Fa", "/p/x%2F..%2Fa", "/p/x%5c..%5ca"] {
        let res = gw.raw(RawRequest::get(encoded)).await;
        assert_eq!(res.status, 400, "{encoded}: {}", res.text());
        assert_eq!(res.json()["error"], "bad_request", "{encoded}");
    }
    assert_eq!(gw.stat_reaches("requests_total.decision.deny.reason.bad_path", 3).await, 3);
}

// --- Header bytes --------------------------------------------------------------------------------

/// Buckets keyed by a header use its exact bytes: two values that are not UTF-8 (which a lossy
/// decoding would both turn into U+FFFD U+FFFD) are two clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_values_that_are_not_utf8_get_their_own_buckets() {
    let mut rule = hourly("client", json!([{"header": "x-client"}]), 1);
    rule["missing"] = json!("deny");
    let gw = Gateway::start(json!({"slots": 1024, "rules": [rule]}), 2).await;
    let send = |value: &'static [u8]| gw.raw(RawRequest::get("/").header("x-client", value));
    assert_eq!(send(b"\xff\xfe").await.status, 200);
    assert_eq!(send(b"\xfe\xff").await.status, 200, "a different byte sequence is another client");
    assert_eq!(send("\u{fffd}\u{fffd}".as_bytes()).await.status, 200, "so is the lossy text");
    assert_eq!(send(b"\xff\xfe").await.status, 429);
    assert_eq!(send(b"\xfe\xff").await.status, 429);
    // A second field line does not make a new client: the bucket is the first value's, as in
    // Envoy's own rate-limit descriptors.
    let repeated = RawRequest::get("/").header("x-client", b"\xff\xfe").header("x-client", "other");
    assert_eq!(gw.raw(repeated).await.status, 429);
}

// --- Client IP -----------------------------------------------------------------------------------

/// With `missing: "ip"` and no client IP to be had (here: the filter takes the IP from an
/// `x-forwarded-for` hop and the request has none), the request is counted in one bucket that
/// every IP-less request of the rule shares: never unlimited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_client_ip_share_one_bucket() {
    let config = json!({"slots": 256, "client_ip": {"forwarded_for_hop": 1},
        "rules": [hourly("per-ip", json!(["ip"]), 2)]});
    let gw = Gateway::start(config, 2).await;
    let first = gw.get("/", &[]).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("ratelimit"), Some(r#""per-ip";r=1;t=3600"#));
    assert_eq!(gw.statuses("/", &[], 3).await, [200, 429, 429]);
    // A request with an IP has its own bucket.
    assert_eq!(gw.statuses("/", &[("x-forwarded-for", "203.0.113.7")], 3).await, [200, 200, 429]);
    // A hop that is not an IP address is no IP either.
    assert_eq!(gw.get("/", &[("x-forwarded-for", "not-an-ip")]).await.status, 429);
    assert_eq!(gw.stat_reaches("rule_events_total.rule.per-ip.event.no_client_ip", 5).await, 5);
}

/// Per-IP limits take the client address Envoy computed. With Envoy's defaults a client names
/// its own address in `x-forwarded-for` and so picks its bucket; with `use_remote_address` the
/// address is the connection's peer and `x-forwarded-for` changes nothing; adding
/// `xff_num_trusted_hops` trusts that many proxies in front.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_buckets_follow_the_address_envoy_trusts() {
    let config = json!({"slots": 256, "rules": [hourly("per-ip", json!(["ip"]), 1)]});
    let xff = |ip: &'static str| [("x-forwarded-for", ip)];

    let defaults = Gateway::start(config.clone(), 1).await;
    assert_eq!(defaults.get("/", &xff("203.0.113.1")).await.status, 200);
    assert_eq!(defaults.get("/", &xff("203.0.113.2")).await.status, 200, "a chosen address, a fresh bucket");

    let remote =
        Gateway::start_with(config.clone(), 1, |o| o.hcm_field("use_remote_address", json!(true))).await;
    assert_eq!(remote.get("/", &xff("203.0.113.1")).await.status, 200);
    assert_eq!(remote.get("/", &xff("203.0.113.2")).await.status, 429, "the peer's bucket");
    assert_eq!(remote.get("/", &[]).await.status, 429);

    let behind_one_proxy = Gateway::start_with(config, 1, |o| {
        o.hcm_field("use_remote_address", json!(true)).hcm_field("xff_num_trusted_hops", json!(1))
    })
    .await;
    // The trusted proxy appended the client's address; what the client wrote before it is ignored.
    let a = behind_one_proxy.get("/", &xff("198.51.100.1, 203.0.113.1")).await;
    assert_eq!(a.status, 200);
    let b = behind_one_proxy.get("/", &xff("198.51.100.2, 203.0.113.1")).await;
    assert_eq!(b.status, 429, "same client behind the proxy");
    assert_eq!(behind_one_proxy.get("/", &xff("203.0.113.2")).await.status, 200, "another client");
}

/// The filter's own `forwarded_for_hop` counts the entry Envoy appends with
/// `use_remote_address`: hop 1 is the peer, hop 2 what the proxy in front appended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forwarded_for_hop_counts_envoys_own_entry() {
    let config = |hop: u8| {
        json!({"slots": 256, "client_ip": {"forwarded_for_hop": hop},
               "rules": [{"name": "per-ip", "by": ["ip"], "missing": "deny",
                          "limits": [{"rate": 1, "per": "hour"}]}]})
    };
    let remote = |o: EnvoyOpts| o.hcm_field("use_remote_address", json!(true));
    let xff = |ip: &'static str| [("x-forwarded-for", ip)];

    let hop2 = Gateway::start_with(config(2), 1, remote).await;
    assert_eq!(hop2.get("/", &xff("203.0.113.1")).await.status, 200);
    assert_eq!(hop2.get("/", &xff("203.0.113.1")).await.status, 429);
    assert_eq!(hop2.get("/", &xff("203.0.113.2")).await.status, 200);

    let hop1 = Gateway::start_with(config(1), 1, remote).await;
    assert_eq!(hop1.get("/", &xff("203.0.113.1")).await.status, 200);
    assert_eq!(hop1.get("/", &xff("203.0.113.2")).await.status, 429, "hop 1 is the peer, 127.0.0.1");
}

// --- Slots ---------------------------------------------------------------------------------------

/// Sends one GET of `path` for each value of `x-client`, `CONCURRENCY` at a time; the statuses
/// in the order of `clients`.
async fn one_request_per_client(gw: &Gateway, path: &str, clients: Vec<String>) -> Vec<u16> {
    let url = gw.envoy.url(path);
    let mut tasks = JoinSet::new();
    for (i, chunk) in clients.chunks(clients.len().div_ceil(CONCURRENCY).max(1)).enumerate() {
        let (client, url, chunk) = (gw.client.clone(), url.clone(), chunk.to_vec());
        tasks.spawn(async move {
            let mut out = Vec::new();
            for value in chunk {
                out.push(client.get(url.clone()).header("x-client", &value).send().await.status);
            }
            (i, out)
        });
    }
    let mut done = tasks.join_all().await;
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().flat_map(|(_, s)| s).collect()
}

/// A flood of distinct clients on one rule fills that rule's slots only: another rule's new
/// clients are served, and once the flooded rule's buckets are full again (a full bucket holds
/// no information) its new clients are served too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_rules_flood_does_not_refuse_another_rules_clients() {
    // Rule a: 4 requests per client, one back per second. Rule b: a short window (1 s), which a
    // debt of seconds inherited from a's buckets would refuse.
    let config = json!({"slots": 8, "rules": [
        {"name": "a", "match": {"path_prefix": "/a"}, "by": [{"header": "x-client"}], "missing": "deny",
         "limits": [{"rate": 1, "per": "second", "burst": 4}]},
        {"name": "b", "match": {"path_prefix": "/b"}, "by": [{"header": "x-client"}], "missing": "deny",
         "limits": [{"rate": 100, "per": "second", "burst": 100}]}
    ]});
    let gw = Gateway::start(config, 2).await;
    let clients = |prefix: &str, n: usize| (0..n).map(|i| format!("{prefix}-{i}")).collect::<Vec<_>>();

    let flood = one_request_per_client(&gw, "/a", clients("flood", 400)).await;
    assert!(flood.contains(&429), "rule a's slots are saturated");
    let b = one_request_per_client(&gw, "/b", clients("b", 6)).await;
    assert_eq!(b, [200; 6], "rule b's new clients are served during a's flood");

    // A bucket of rule a is full again 4 s after its last token was taken.
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    let a = one_request_per_client(&gw, "/a", clients("late", 6)).await;
    assert_eq!(a, [200; 6], "a's new clients are served once its buckets are full again");
}

// --- Configuration -------------------------------------------------------------------------------

/// Unknown fields inside a `by` header part are refused like everywhere else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_field_in_a_by_header_is_refused() {
    let echo = Echo::start();
    let config = json!({"rules": [{"name": "r", "by": ["ip", {"header": "authorization", "prefix": "Bearer "}],
        "limits": [{"rate": 1, "per": "second"}]}]});
    let log =
        Envoy::expect_refusal(EnvoyOpts::new(echo.addr()).http_filter(rate_limit_filter(&config))).await;
    assert!(log.contains("invalid rate-limit config: `rules[0].by[1].prefix`"), "{log}");
}

// --- Headers -------------------------------------------------------------------------------------

fn param(header: &str, name: &str) -> Option<u64> {
    header.split(';').find_map(|p| p.trim().strip_prefix(name)?.strip_prefix('=')?.parse().ok())
}

/// With a burst above the rate, the policy's quota is the burst (what a client can use at once)
/// and its window the time the burst takes to come back, so `r` never exceeds `q`; `t` is when
/// the next unit comes back, which on a 429 is `Retry-After`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_headers_never_report_more_than_the_quota() {
    let config = json!({"slots": 64, "headers": {"legacy": true},
        "rules": [{"name": "api", "limits": [{"rate": 2, "per": "hour", "burst": 6}]}]});
    let gw = Gateway::start(config, 2).await;
    for expected_r in (0..6).rev() {
        let res = gw.get("/", &[]).await;
        assert_eq!(res.status, 200);
        assert_eq!(res.header("ratelimit-policy"), Some(r#""api";q=6;w=10800"#));
        let rl = res.header("ratelimit").unwrap();
        assert_eq!(param(rl, "r"), Some(expected_r), "{rl}");
        // The next token is half an hour (one token interval) after the first was taken.
        assert!(param(rl, "t").is_some_and(|t| (1700..=1800).contains(&t)), "{rl}");
        assert_eq!(res.header("x-ratelimit-limit"), Some("6"));
        assert_eq!(res.header("x-ratelimit-remaining"), Some(expected_r.to_string().as_str()));
    }
    let refused = gw.get("/", &[]).await;
    assert_eq!(refused.status, 429);
    let retry_after = refused.header("retry-after").unwrap();
    assert!(retry_after.parse::<u64>().is_ok_and(|t| (1700..=1800).contains(&t)), "{retry_after}");
    assert_eq!(refused.header("ratelimit"), Some(format!(r#""api";r=0;t={retry_after}"#).as_str()));
    assert_eq!(refused.header("x-ratelimit-reset"), Some(retry_after));
}
