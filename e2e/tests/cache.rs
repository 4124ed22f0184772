//! The cache filter in real Envoy, in front of an origin whose answers each test scripts: a miss
//! then a hit with `Age` and `Cache-Status`, expiry, what is never stored, `Vary` variants,
//! per-consumer keys behind key-auth, conditional requests, `only-if-cached`,
//! stale-while-revalidate refreshed in the background, coalesced misses, stale-if-error, unsafe
//! methods invalidating, and bad input.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tollgate_e2e::scripted::{Script, ScriptedUpstream};
use tollgate_e2e::{
    Envoy, EnvoyOpts, H2Request, HttpClient, Keyd, RawRequest, UPSTREAM_CLUSTER, Value, eventually, json,
};

const STATS: &str = "wasmcustom.tollgate.cache.";
/// Bound on any wait; never an assertion about speed.
const BOUND: Duration = Duration::from_secs(15);

/// How the origin answers a path.
#[derive(Clone, Default)]
struct Answer {
    status: u16,
    headers: Headers,
    delay: Duration,
}

/// Lower-case names, exact bytes.
type Headers = Vec<(String, Vec<u8>)>;

#[derive(Default)]
struct OriginState {
    answers: HashMap<String, Answer>,
    /// Requests seen, by path (query included).
    hits: HashMap<String, usize>,
    /// Every request's target and headers.
    seen: Vec<(String, Headers)>,
    /// When each request for a target arrived.
    arrivals: HashMap<String, Vec<std::time::Instant>>,
}

/// An origin on loopback: answers each path as scripted (200 with no headers otherwise), with
/// the body `n=<requests for this target> lang=<accept-language> consumer=<consumer header>`.
struct Origin {
    addr: SocketAddr,
    state: Arc<Mutex<OriginState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Origin {
    async fn start() -> Origin {
        Self::start_on(TcpListener::bind("127.0.0.1:0").await.unwrap()).await
    }

    async fn start_on(listener: TcpListener) -> Origin {
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(OriginState::default()));
        let shared = Arc::clone(&state);
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let state = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| answer(Arc::clone(&state), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                });
            }
        });
        Origin { addr, state, task }
    }

    fn script(&self, path: &str, status: u16, headers: &[(&str, &[u8])]) {
        self.script_slow(path, status, headers, Duration::ZERO);
    }

    fn script_slow(&self, path: &str, status: u16, headers: &[(&str, &[u8])], delay: Duration) {
        let headers = headers.iter().map(|(n, v)| (n.to_string(), v.to_vec())).collect();
        self.state.lock().unwrap().answers.insert(path.to_owned(), Answer { status, headers, delay });
    }

    fn hits(&self, target: &str) -> usize {
        self.state.lock().unwrap().hits.get(target).copied().unwrap_or(0)
    }

    fn arrivals(&self, target: &str) -> Vec<std::time::Instant> {
        self.state.lock().unwrap().arrivals.get(target).cloned().unwrap_or_default()
    }

    fn last_headers(&self) -> Headers {
        self.state.lock().unwrap().seen.last().map(|(_, h)| h.clone()).unwrap_or_default()
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    state: Arc<Mutex<OriginState>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let target = req.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
    let path = req.uri().path().to_owned();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default()
    };
    let (lang, consumer) = (header("accept-language"), header("x-tollgate-consumer-id"));
    let (n, script) = {
        let mut state = state.lock().unwrap();
        let headers =
            req.headers().iter().map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec())).collect();
        state.seen.push((target.clone(), headers));
        state.arrivals.entry(target.clone()).or_default().push(std::time::Instant::now());
        let n = {
            let count = state.hits.entry(target.clone()).or_insert(0);
            *count += 1;
            *count
        };
        (n, state.answers.get(&path).cloned().unwrap_or(Answer { status: 200, ..Answer::default() }))
    };
    if !script.delay.is_zero() {
        tokio::time::sleep(script.delay).await;
    }
    // A request naming the scripted ETag gets 304 with the scripted headers.
    let etag = script.headers.iter().find(|(n, _)| n == "etag").map(|(_, v)| v.clone());
    let not_modified =
        etag.is_some_and(|e| req.headers().get("if-none-match").is_some_and(|v| v.as_bytes() == e));
    let body = if not_modified { String::new() } else { format!("n={n} lang={lang} consumer={consumer}") };
    let status = if not_modified { 304 } else { script.status };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    for (name, value) in script.headers {
        response.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_bytes(&value).unwrap(),
        );
    }
    Ok(response)
}

fn cache_filter(config: &Value) -> Value {
    tollgate_e2e::wasm_filter("cache", "tollgate.cache", &tollgate_e2e::wasm_module("tollgate_cache"), config)
}

fn config() -> Value {
    json!({
        "max_object_bytes": 65536,
        "max_memory_bytes": 1048576,
        "stale_while_revalidate_max": "60s",
        "stale_if_error_max": "1h",
        "origin_cluster": UPSTREAM_CLUSTER,
        "lock_timeout": "5s"
    })
}

async fn gateway(origin: &Origin, workers: u32) -> Envoy {
    gateway_with(origin, workers, &config()).await
}

async fn gateway_with(origin: &Origin, workers: u32, config: &Value) -> Envoy {
    Envoy::start(EnvoyOpts::new(origin.addr).workers(workers).http_filter(cache_filter(config))).await
}

async fn stat(envoy: &Envoy, name: &str) -> u64 {
    envoy.stat(&format!("{STATS}{name}")).await.unwrap_or(0)
}

#[tokio::test]
async fn a_miss_is_stored_and_the_next_request_is_a_hit_with_age_and_cache_status() {
    let origin = Origin::start().await;
    origin.script(
        "/a",
        200,
        &[("cache-control", b"max-age=300"), ("content-type", b"text/plain"), ("x-custom", b"1")],
    );
    let envoy = gateway(&origin, 2).await;

    let first = envoy.get("/a").send().await;
    assert_eq!(first.status, 200);
    assert_eq!(first.text(), "n=1 lang= consumer=");
    assert_eq!(first.header("cache-status"), Some("tollgate; fwd=uri-miss; stored"));

    let second = envoy.get("/a").send().await;
    assert_eq!(second.status, 200);
    assert_eq!(second.text(), "n=1 lang= consumer=", "answered from the cache");
    assert!(
        second.header("cache-status").unwrap().starts_with("tollgate; hit; ttl="),
        "{:?}",
        second.headers
    );
    assert!(second.header("age").unwrap().parse::<u64>().is_ok());
    assert_eq!(second.header("content-type"), Some("text/plain"));
    assert_eq!(second.header("x-custom"), Some("1"));
    assert_eq!(origin.hits("/a"), 1);

    // HEAD is answered from the GET entry, with no body.
    let head = envoy.request(hyper::Method::HEAD, "/a").send().await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert!(head.header("cache-status").unwrap().contains("hit"));
    assert_eq!(origin.hits("/a"), 1);

    // The query is part of the key, sorted.
    envoy.get("/a?y=2&x=1").send().await;
    let sorted = envoy.get("/a?x=1&y=2").send().await;
    assert!(sorted.header("cache-status").unwrap().contains("hit"), "{:?}", sorted.headers);
    assert_eq!(origin.hits("/a?y=2&x=1") + origin.hits("/a?x=1&y=2"), 1);

    assert!(stat(&envoy, "cache_lookups_total.result.hit").await >= 3);
    assert!(stat(&envoy, "stored_total").await >= 2);
    assert!(envoy.stat(&format!("{STATS}memory_bytes")).await.is_some());
}

#[tokio::test]
async fn max_age_expires() {
    let origin = Origin::start().await;
    // Ages count in whole seconds (and the origin's `Date` may be a second behind): 3 s keep
    // the second request fresh wherever the seconds turn.
    origin.script("/short", 200, &[("cache-control", b"max-age=3")]);
    let envoy = gateway(&origin, 1).await;
    assert_eq!(envoy.get("/short").send().await.text(), "n=1 lang= consumer=");
    assert_eq!(envoy.get("/short").send().await.text(), "n=1 lang= consumer=");
    tokio::time::sleep(Duration::from_millis(4100)).await;
    let after = envoy.get("/short").send().await;
    assert_eq!(after.text(), "n=2 lang= consumer=");
    assert_eq!(after.header("cache-status"), Some("tollgate; fwd=stale; stored"));
}

#[tokio::test]
async fn no_store_private_vary_star_and_set_cookie_are_never_stored() {
    let origin = Origin::start().await;
    origin.script("/no-store", 200, &[("cache-control", b"max-age=60, no-store")]);
    origin.script("/private", 200, &[("cache-control", b"private, max-age=60")]);
    origin.script("/vary-star", 200, &[("cache-control", b"max-age=60"), ("vary", b"*")]);
    origin.script("/cookie", 200, &[("cache-control", b"max-age=60"), ("set-cookie", b"s=1")]);
    origin.script("/none", 200, &[]);
    origin.script("/error", 500, &[("cache-control", b"max-age=60")]);
    let envoy = gateway(&origin, 1).await;
    for path in ["/no-store", "/private", "/vary-star", "/cookie", "/none", "/error"] {
        for _ in 0..2 {
            let res = envoy.get(path).send().await;
            assert_eq!(res.header("cache-status"), Some("tollgate; fwd=uri-miss"), "{path}");
        }
        assert_eq!(origin.hits(path), 2, "{path}");
    }
    // A request with Authorization is stored only when the response says it may be shared.
    origin.script("/auth", 200, &[("cache-control", b"max-age=60")]);
    origin.script("/auth-public", 200, &[("cache-control", b"public, max-age=60")]);
    for _ in 0..2 {
        envoy.get("/auth").header("authorization", "Bearer x").send().await;
        envoy.get("/auth-public").header("authorization", "Bearer x").send().await;
    }
    assert_eq!(origin.hits("/auth"), 2);
    assert_eq!(origin.hits("/auth-public"), 1);
    assert!(stat(&envoy, "not_stored_total").await >= 12);
}

#[tokio::test]
async fn vary_keeps_variants_apart() {
    let origin = Origin::start().await;
    origin.script("/v", 200, &[("cache-control", b"max-age=60"), ("vary", b"Accept-Language")]);
    let envoy = gateway(&origin, 1).await;
    let en = envoy.get("/v").header("accept-language", "en").send().await;
    let fr = envoy.get("/v").header("accept-language", "fr").send().await;
    assert_eq!(en.text(), "n=1 lang=en consumer=");
    assert_eq!(fr.text(), "n=2 lang=fr consumer=");
    assert_eq!(fr.header("cache-status"), Some("tollgate; fwd=vary-miss; stored"));
    let en2 = envoy.get("/v").header("accept-language", "en").send().await;
    let fr2 = envoy.get("/v").header("accept-language", "fr").send().await;
    let none = envoy.get("/v").send().await;
    assert_eq!(en2.text(), "n=1 lang=en consumer=");
    assert_eq!(fr2.text(), "n=2 lang=fr consumer=");
    assert_eq!(none.text(), "n=3 lang= consumer=");
    assert_eq!(origin.hits("/v"), 3);
}

#[tokio::test]
async fn per_consumer_entries_never_cross_consumers() {
    let origin = Origin::start().await;
    origin.script("/me", 200, &[("cache-control", b"public, max-age=60")]);
    let keyd = Keyd::start_temp().await;
    let mut config = config();
    config["per_consumer"] = json!(true);
    let envoy = Envoy::start(
        EnvoyOpts::new(origin.addr)
            .workers(1)
            .key_auth(keyd.key_auth_config())
            .keyd(keyd.addr())
            .http_filter(cache_filter(&config)),
    )
    .await;
    let (_, alice) = keyd.create_key("alice", &[]).await;
    let (_, bob) = keyd.create_key("bob", &[]).await;
    let a1 = envoy.get("/me").header("x-api-key", &alice).send().await;
    let b1 = envoy.get("/me").header("x-api-key", &bob).send().await;
    let a2 = envoy.get("/me").header("x-api-key", &alice).send().await;
    let b2 = envoy.get("/me").header("x-api-key", &bob).send().await;
    assert_eq!(a1.text(), "n=1 lang= consumer=alice");
    assert_eq!(b1.text(), "n=2 lang= consumer=bob");
    assert_eq!(a2.text(), "n=1 lang= consumer=alice");
    assert_eq!(b2.text(), "n=2 lang= consumer=bob");
    assert!(a2.header("cache-status").unwrap().contains("hit"));
    assert_eq!(origin.hits("/me"), 2);
}

#[tokio::test]
async fn conditional_requests_get_304_from_the_cache() {
    let origin = Origin::start().await;
    origin.script(
        "/c",
        200,
        &[
            ("cache-control", b"max-age=60"),
            ("etag", b"\"v1\""),
            ("last-modified", b"Tue, 14 Nov 2023 22:13:20 GMT"),
        ],
    );
    let envoy = gateway(&origin, 1).await;
    envoy.get("/c").send().await;
    let etag = envoy.get("/c").header("if-none-match", "W/\"v0\", W/\"v1\"").send().await;
    assert_eq!(etag.status, 304);
    assert!(etag.body.is_empty());
    assert_eq!(etag.header("etag"), Some("\"v1\""));
    let other = envoy.get("/c").header("if-none-match", "\"v2\"").send().await;
    assert_eq!(other.status, 200);
    assert_eq!(other.text(), "n=1 lang= consumer=");
    let since = envoy.get("/c").header("if-modified-since", "Wed, 15 Nov 2023 00:00:00 GMT").send().await;
    assert_eq!(since.status, 304);
    let before = envoy.get("/c").header("if-modified-since", "Mon, 13 Nov 2023 00:00:00 GMT").send().await;
    assert_eq!(before.status, 200);
    assert_eq!(origin.hits("/c"), 1);
    assert_eq!(stat(&envoy, "not_modified_total").await, 2);
}

#[tokio::test]
async fn only_if_cached_miss_is_504_and_never_reaches_the_origin() {
    let origin = Origin::start().await;
    origin.script("/o", 200, &[("cache-control", b"max-age=60")]);
    let envoy = gateway(&origin, 1).await;
    let miss = envoy.get("/o").header("cache-control", "only-if-cached").send().await;
    assert_eq!(miss.status, 504);
    assert_eq!(miss.json()["error"], "gateway_timeout");
    assert_eq!(origin.hits("/o"), 0);
    envoy.get("/o").send().await;
    let hit = envoy.get("/o").header("cache-control", "only-if-cached").send().await;
    assert_eq!(hit.status, 200);
    assert_eq!(origin.hits("/o"), 1);
    // `no-cache` goes to the origin even with a fresh entry.
    let forced = envoy.get("/o").header("cache-control", "no-cache").send().await;
    assert_eq!(forced.text(), "n=2 lang= consumer=");
    assert_eq!(forced.header("cache-status"), Some("tollgate; fwd=request; stored"));
}

#[tokio::test]
async fn stale_while_revalidate_answers_at_once_and_refreshes_once_in_the_background() {
    let origin = Origin::start().await;
    origin.script("/swr", 200, &[("cache-control", b"max-age=1, stale-while-revalidate=30")]);
    let envoy = gateway(&origin, 1).await;
    assert_eq!(envoy.get("/swr").send().await.text(), "n=1 lang= consumer=");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // The origin answers slowly now: stale answers do not wait for it.
    origin.script_slow("/swr", 200, &[("cache-control", b"max-age=60")], Duration::from_millis(500));
    for _ in 0..5 {
        let stale = envoy.get("/swr").send().await;
        assert_eq!(stale.text(), "n=1 lang= consumer=");
        let status = stale.header("cache-status").unwrap();
        assert!(status.contains("hit") && status.contains("detail=stale-while-revalidate"), "{status}");
    }
    let refreshed =
        eventually(BOUND, || async { envoy.get("/swr").send().await.text() == "n=2 lang= consumer=" }).await;
    assert!(refreshed, "the background refresh never replaced the entry");
    assert_eq!(origin.hits("/swr"), 2, "one refresh for every stale answer");
    assert_eq!(stat(&envoy, "revalidated_total").await, 1);
    assert!(stat(&envoy, "stale_served_total.reason.while_revalidate").await >= 5);
}

#[tokio::test]
async fn concurrent_misses_on_one_worker_reach_the_origin_once() {
    let origin = Origin::start().await;
    origin.script_slow("/cold", 200, &[("cache-control", b"max-age=60")], Duration::from_millis(300));
    let envoy = gateway(&origin, 1).await;
    let client = HttpClient::fresh_connections();
    let requests = (0..50).map(|_| {
        let client = client.clone();
        let url = envoy.url("/cold");
        tokio::spawn(async move { client.get(url).send().await })
    });
    let mut collapsed = 0;
    for request in requests.collect::<Vec<_>>() {
        let res = request.await.unwrap();
        assert_eq!(res.status, 200);
        assert_eq!(res.text(), "n=1 lang= consumer=");
        if res.header("cache-status").unwrap().contains("collapsed") {
            collapsed += 1;
        }
    }
    assert_eq!(origin.hits("/cold"), 1);
    assert_eq!(stat(&envoy, "coalesced_total").await, collapsed);
}

/// Connections each worker of `envoy` accepted (`listener.<addr>.worker_<n>.downstream_cx_total`).
async fn connections_per_worker(envoy: &Envoy) -> Vec<u64> {
    let stats = envoy.stats("worker_.*downstream_cx_total").await;
    stats.iter().filter(|(name, _)| name.starts_with("listener.127.0.0.1")).map(|(_, n)| *n).collect()
}

/// 500 concurrent requests for a cold key, spread over 4 workers: one reaches the origin; the
/// others wait on it (in its worker, or in another one through the shared tier) and get its
/// answer.
#[tokio::test]
async fn a_cold_key_reaches_the_origin_once_across_four_workers() {
    let origin = Origin::start().await;
    origin.script_slow("/cold", 200, &[("cache-control", b"max-age=60")], Duration::from_millis(500));
    let envoy = gateway(&origin, 4).await;
    let client = HttpClient::fresh_connections();
    let requests: Vec<_> = (0..500)
        .map(|_| {
            let (client, url) = (client.clone(), envoy.url("/cold"));
            tokio::spawn(async move { client.get(url).send().await })
        })
        .collect();
    for request in requests {
        let res = request.await.unwrap();
        assert_eq!((res.status, res.text()), (200, "n=1 lang= consumer=".to_owned()));
    }
    assert_eq!(origin.hits("/cold"), 1);
    let workers = connections_per_worker(&envoy).await;
    assert!(workers.iter().filter(|n| **n > 0).count() >= 2, "the requests reached one worker: {workers:?}");
    assert!(stat(&envoy, "coalesced_total").await >= 1);
}

/// `max-age=1, stale-while-revalidate=30` from an origin that takes 500 ms, under 100 clients on
/// 4 workers for 4 s: after the first fill every answer comes from the cache at once (hit or
/// stale), and the origin sees one refresh per expiry, never two at once.
#[tokio::test]
async fn stale_while_revalidate_under_load_refreshes_once_per_expiry_across_workers() {
    let origin = Origin::start().await;
    origin.script_slow(
        "/swr",
        200,
        &[("cache-control", b"max-age=1, stale-while-revalidate=30")],
        Duration::from_millis(500),
    );
    let envoy = gateway(&origin, 4).await;
    assert_eq!(envoy.get("/swr").send().await.status, 200);
    let client = HttpClient::fresh_connections();
    let until = tokio::time::Instant::now() + Duration::from_secs(4);
    let clients: Vec<_> = (0..100)
        .map(|_| {
            let (client, url) = (client.clone(), envoy.url("/swr"));
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                // Bounded in time and count.
                while tokio::time::Instant::now() < until && statuses.len() < 400 {
                    let res = client.get(url.clone()).send().await;
                    statuses.push((res.status, res.header("cache-status").unwrap_or_default().to_owned()));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                statuses
            })
        })
        .collect();
    let mut answers = 0;
    for c in clients {
        for (status, cache_status) in c.await.unwrap() {
            answers += 1;
            assert_eq!(status, 200);
            assert!(
                cache_status.starts_with("tollgate; hit"),
                "a request went to the origin: {cache_status}"
            );
        }
    }
    // A refresh still on its way when the clients stopped finishes within the origin's 500 ms;
    // with no request, no new one starts.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let arrivals = origin.arrivals("/swr");
    assert!(arrivals.len() >= 3, "expected a refresh per expiry over 4 s: {} requests", arrivals.len());
    for pair in arrivals.windows(2) {
        let gap = pair[1] - pair[0];
        // A refresh starts only after the previous one answered (500 ms) and the copy expired.
        assert!(gap >= Duration::from_millis(450), "two refreshes {gap:?} apart (of {})", arrivals.len());
    }
    eprintln!("{answers} answers from the cache, {} origin requests", arrivals.len());
    assert_eq!(stat(&envoy, "revalidated_total").await as usize, arrivals.len() - 1);
}

#[tokio::test]
async fn origin_errors_and_outages_are_answered_stale_within_stale_if_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = Origin::start_on(listener).await;
    origin.script("/sie", 200, &[("cache-control", b"max-age=1, stale-if-error=300")]);
    origin.script("/gone", 200, &[("cache-control", b"max-age=1")]);
    let envoy = gateway(&origin, 1).await;
    envoy.get("/sie").send().await;
    envoy.get("/gone").send().await;
    tokio::time::sleep(Duration::from_millis(2100)).await;

    // The origin answers 503: the stored copy stands in.
    origin.script("/sie", 503, &[]);
    origin.script("/gone", 503, &[]);
    let stale = envoy.get("/sie").send().await;
    assert_eq!(stale.status, 200);
    assert_eq!(stale.text(), "n=1 lang= consumer=");
    assert!(stale.header("cache-status").unwrap().contains("detail=stale-if-error"));
    // Without stale-if-error, the error goes through.
    assert_eq!(envoy.get("/gone").send().await.status, 503);

    // The origin is down altogether (connection refused).
    let addr = origin.addr;
    drop(origin);
    let refused = tokio::net::TcpStream::connect(addr).await;
    assert!(refused.is_err(), "the origin still listens");
    let down = envoy.get("/sie").send().await;
    assert_eq!(down.status, 200, "{}", down.text());
    assert_eq!(down.text(), "n=1 lang= consumer=");
    assert_eq!(stat(&envoy, "stale_served_total.reason.if_error").await, 2);
    // As Prometheus sees it: the reason is a label.
    let text = envoy.admin_get("/stats/prometheus").await;
    let sample =
        text.lines().find(|l| l.starts_with("tollgate_cache_stale_served_total{reason=\"if_error\"}"));
    assert!(sample.is_some_and(|l| l.ends_with(" 2")), "{sample:?}");
    assert!(text.lines().any(|l| l.starts_with("tollgate_cache_cache_lookups_total{result=\"miss\"}")));
}

/// A POST through one worker drops the URL in every worker: requests on fresh connections
/// (spread over 4 workers) all see the new answer.
#[tokio::test]
async fn unsafe_methods_invalidate_the_url_in_every_worker() {
    let origin = Origin::start().await;
    origin.script("/item", 200, &[("cache-control", b"max-age=60")]);
    let envoy = gateway(&origin, 4).await;
    let client = HttpClient::fresh_connections();
    let get_all = |n: usize| {
        let requests: Vec<_> = (0..n)
            .map(|_| {
                let (client, url) = (client.clone(), envoy.url("/item"));
                tokio::spawn(async move { client.get(url).send().await.text() })
            })
            .collect();
        async move {
            let mut bodies = Vec::new();
            for r in requests {
                bodies.push(r.await.unwrap());
            }
            bodies
        }
    };
    envoy.get("/item").send().await;
    // Stored once the filter has seen the end of the response (the client may have it sooner).
    let stored = || async {
        envoy.get("/item").send().await.header("cache-status").is_some_and(|s| s.contains("hit"))
    };
    assert!(eventually(BOUND, stored).await);
    assert!(get_all(40).await.iter().all(|b| b == "n=1 lang= consumer="));
    let post = client.post(envoy.url("/item")).body("x").send().await;
    assert_eq!(post.status, 200);
    let after = get_all(40).await;
    assert!(after.iter().all(|b| b == "n=3 lang= consumer="), "{after:?}");
    assert_eq!(origin.hits("/item"), 3);
    assert!(stat(&envoy, "invalidations_total").await >= 1);
}

#[tokio::test]
async fn bad_input_never_crashes_and_is_not_cached() {
    let origin = Origin::start().await;
    origin.script("/garbled", 200, &[("cache-control", b",,max-age=\"\", =, max-age=abc, \"x")]);
    origin.script("/absurd", 200, &[("cache-control", b"max-age=99999999999999999999999999999999")]);
    let many: Vec<String> = (0..200).map(|i| format!("x-h{i}")).collect();
    let many = many.join(", ");
    origin.script("/huge-vary", 200, &[("cache-control", b"max-age=60"), ("vary", many.as_bytes())]);
    origin.script("/bytes", 200, &[("cache-control", b"max-age=60"), ("x-odd", b"caf\xe9")]);
    origin.script("/cc-bytes", 200, &[("cache-control", b"max-age=60\xff")]);
    let envoy = gateway(&origin, 1).await;
    for path in ["/garbled", "/huge-vary", "/bytes", "/cc-bytes"] {
        for _ in 0..2 {
            assert_eq!(envoy.get(path).send().await.status, 200, "{path}");
        }
        assert_eq!(origin.hits(path), 2, "{path} was cached");
    }
    // An absurd max-age is clamped, not overflowed: stored and fresh.
    envoy.get("/absurd").send().await;
    let hit = envoy.get("/absurd").send().await;
    assert!(hit.header("cache-status").unwrap().contains("hit"));
    assert_eq!(origin.hits("/absurd"), 1);

    // Request side: garbled directives, non-UTF-8 bytes, an encoded slash.
    origin.script("/req", 200, &[("cache-control", b"max-age=60")]);
    let odd = RawRequest::get("/req")
        .header("cache-control", b"max-age=\xff\xfe")
        .send(envoy.addr())
        .await
        .unwrap();
    assert_eq!(odd.status, 200);
    let garbled = envoy.get("/req").header("cache-control", "=,,max-stale=zz, min-fresh=").send().await;
    assert_eq!(garbled.status, 200);
    let slash = envoy.get("/a%2Fb").send().await;
    assert_eq!(slash.status, 200);
    assert!(stat(&envoy, "bypass_total").await >= 2);
    // Still serving.
    assert_eq!(envoy.get("/absurd").send().await.status, 200);
    assert!(origin.last_headers().iter().any(|(n, _)| n == "host"));
}

#[tokio::test]
async fn invalid_configs_are_refused_naming_the_field() {
    let origin = Origin::start().await;
    for (config, field) in [
        (json!({"max_object_bytes": 0}), "`max_object_bytes`"),
        (json!({"default_methods": ["POST"]}), "`default_methods[0]`"),
        (json!({"lock_timeout": "5"}), "`lock_timeout`"),
        (json!({"nope": 1}), "nope"),
    ] {
        let log = Envoy::expect_refusal(EnvoyOpts::new(origin.addr).http_filter(cache_filter(&config))).await;
        assert!(log.contains("invalid cache config") && log.contains(field), "{field}: {log}");
    }
}

/// A chunked body that comes in several pieces (`n` bytes in all), each of a different byte.
fn chunked(n: usize, trailers: &[(&str, &str)], content_type: &str) -> (Script, Vec<u8>) {
    let mut script = Script::chunked(200, &[("cache-control", "max-age=60"), ("content-type", content_type)]);
    let mut body = Vec::new();
    let piece = n / 4;
    for i in 0..4u8 {
        let chunk = vec![b'a' + i; piece];
        body.extend_from_slice(&chunk);
        script = script.chunk(&chunk).pause(Duration::from_millis(30));
    }
    (script.end(trailers), body)
}

#[tokio::test]
async fn a_body_in_many_chunks_is_stored_whole_and_one_past_the_cap_is_not() {
    let (script, body) = chunked(40_000, &[], "application/octet-stream");
    let upstream = ScriptedUpstream::http1(script).await;
    let envoy = Envoy::start(EnvoyOpts::new(upstream.addr()).http_filter(cache_filter(&config()))).await;
    let first = envoy.get("/big").send().await;
    assert_eq!(first.body.as_ref(), body.as_slice());
    let hit = envoy.get("/big").send().await;
    assert!(hit.header("cache-status").unwrap().contains("hit"), "{:?}", hit.headers);
    assert_eq!(hit.body.as_ref(), body.as_slice());
    assert_eq!(upstream.received().len(), 1);

    // Past max_object_bytes (65536): passed through whole, never stored.
    let (script, body) = chunked(80_000, &[], "application/octet-stream");
    let upstream = ScriptedUpstream::http1(script).await;
    let envoy = Envoy::start(EnvoyOpts::new(upstream.addr()).http_filter(cache_filter(&config()))).await;
    for _ in 0..2 {
        assert_eq!(envoy.get("/big").send().await.body.as_ref(), body.as_slice());
    }
    assert_eq!(upstream.received().len(), 2);
    assert_eq!(stat(&envoy, "not_stored_too_large_total").await, 2);
}

#[tokio::test]
async fn event_streams_are_never_buffered_nor_stored() {
    let (script, body) = chunked(4_000, &[], "text/event-stream");
    let upstream = ScriptedUpstream::http1(script).await;
    let envoy = Envoy::start(EnvoyOpts::new(upstream.addr()).http_filter(cache_filter(&config()))).await;
    for _ in 0..2 {
        let res = envoy.get("/events").send().await;
        assert_eq!(res.body.as_ref(), body.as_slice());
        assert_eq!(res.header("cache-status"), Some("tollgate; fwd=uri-miss"));
    }
    assert_eq!(upstream.received().len(), 2);
}

#[tokio::test]
async fn repeated_lines_empty_bodies_and_http2_clients() {
    let origin = Origin::start().await;
    // Two field lines are one list: `no-store` in the second wins.
    origin.script("/two-lines", 200, &[("cache-control", b"max-age=60"), ("cache-control", b"no-store")]);
    // Vary spread over many lines.
    let lines: Vec<Vec<u8>> = (0..40).map(|i| format!("x-v{i}").into_bytes()).collect();
    let vary: Vec<(&str, &[u8])> = std::iter::once(("cache-control", &b"max-age=60"[..]))
        .chain(lines.iter().map(|l| ("vary", l.as_slice())))
        .collect();
    origin.script("/vary-lines", 200, &vary);
    origin.script("/empty", 204, &[("cache-control", b"max-age=60"), ("x-kept", b"a"), ("x-kept", b"b")]);
    let envoy = gateway(&origin, 1).await;
    for path in ["/two-lines", "/vary-lines"] {
        envoy.get(path).send().await;
        envoy.get(path).send().await;
        assert_eq!(origin.hits(path), 2, "{path}");
    }
    // An empty body is stored and replayed empty; repeated headers come back as one line.
    assert_eq!(envoy.get("/empty").send().await.status, 204);
    let empty = envoy.get("/empty").send().await;
    assert_eq!(empty.status, 204);
    assert!(empty.body.is_empty());
    assert!(empty.header("cache-status").unwrap().contains("hit"));
    assert_eq!(empty.header("x-kept"), Some("a, b"));
    assert_eq!(origin.hits("/empty"), 1);

    // Over HTTP/2, the same entry answers (same authority and path).
    origin.script("/h2", 200, &[("cache-control", b"max-age=60")]);
    envoy.get("/h2").send().await;
    let h2 = H2Request::get("/h2").send(envoy.addr()).await.unwrap();
    assert_eq!(h2.status, 200);
    assert_eq!(h2.text(), "n=1 lang= consumer=");
    assert!(h2.header("cache-status").unwrap().contains("hit"));
    assert_eq!(origin.hits("/h2"), 1);
}

#[tokio::test]
async fn a_background_refresh_is_conditional_and_a_304_keeps_the_stored_body() {
    let origin = Origin::start().await;
    origin.script(
        "/tagged",
        200,
        &[("cache-control", b"max-age=1, stale-while-revalidate=30"), ("etag", b"\"t1\"")],
    );
    let envoy = gateway(&origin, 1).await;
    assert_eq!(envoy.get("/tagged").send().await.text(), "n=1 lang= consumer=");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    origin.script("/tagged", 200, &[("cache-control", b"max-age=60"), ("etag", b"\"t1\"")]);
    let stale = envoy.get("/tagged").send().await;
    assert!(stale.header("cache-status").unwrap().contains("stale-while-revalidate"));
    let revalidated = eventually(BOUND, || async { stat(&envoy, "revalidated_total").await == 1 }).await;
    assert!(revalidated, "no revalidation");
    assert_eq!(origin.hits("/tagged"), 2);
    let sent = origin.last_headers();
    assert!(sent.iter().any(|(n, v)| n == "if-none-match" && v == b"\"t1\""), "{sent:?}");
    // The stored body is kept, fresh again for 60 s.
    let hit = envoy.get("/tagged").send().await;
    assert_eq!(hit.status, 200);
    assert_eq!(hit.text(), "n=1 lang= consumer=");
    assert!(hit.header("cache-status").unwrap().starts_with("tollgate; hit; ttl="), "{:?}", hit.headers);
    assert!(!hit.header("cache-status").unwrap().contains("stale"));
    assert_eq!(origin.hits("/tagged"), 2);
}

/// Purges by tag, URL and prefix, issued once with the CLI to the key service, reach two Envoys
/// (2 workers each) through the change feed within 2 s; a soft purge serves stale while it
/// refreshes; what no purge names stays.
#[tokio::test]
async fn purges_from_the_cli_reach_two_envoys_within_two_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let keyd = Keyd::start(dir.path()).await;
    let origin = Origin::start().await;
    let cc: &[u8] = b"max-age=600, stale-while-revalidate=600";
    origin.script("/p/1", 200, &[("cache-control", cc), ("cache-tag", b"product, p1")]);
    origin.script("/p/2", 200, &[("cache-control", cc), ("surrogate-key", b"product p2")]);
    origin.script("/docs/a", 200, &[("cache-control", cc)]);
    origin.script("/docs/b", 200, &[("cache-control", cc)]);
    origin.script("/kept", 200, &[("cache-control", cc), ("cache-tag", b"other")]);
    let mut config = config();
    config["key_service"] = keyd.key_auth_config()["key_service"].clone();
    config["key_service"]["poll_interval"] = json!("500ms");
    // Enough slots that the five URLs do not share one (a shared slot holds one URL: two URLs in
    // one slot would each miss once more per Envoy).
    config["shared"] = json!({"slots": 65536, "max_bytes": 268_435_456});
    let mut envoys = Vec::new();
    for _ in 0..2 {
        let opts =
            EnvoyOpts::new(origin.addr).workers(2).keyd(keyd.addr()).http_filter(cache_filter(&config));
        envoys.push(Envoy::start(opts).await);
    }
    let client = HttpClient::fresh_connections();
    let paths = ["/p/1", "/p/2", "/docs/a", "/docs/b?x=1", "/kept"];
    // Warm each Envoy, several connections each (so both workers hold copies).
    for envoy in &envoys {
        for _ in 0..4 {
            for path in paths {
                assert_eq!(client.get(envoy.url(path)).send().await.status, 200);
            }
        }
    }
    // Warm: every answer now comes from the cache, on each Envoy and worker. (A client can have
    // a whole body before the filter sees the end of the stream and stores it, so the warm-up's
    // requests may miss more than once; what matters here is what the purges do.)
    for envoy in &envoys {
        for _ in 0..4 {
            for path in paths {
                let res = client.get(envoy.url(path)).send().await;
                assert!(
                    res.header("cache-status").unwrap_or_default().starts_with("tollgate; hit"),
                    "{path}"
                );
            }
        }
    }
    // Both Envoys follow the feed before the purge is issued.
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let cli = |args: &[&str]| {
        let out = std::process::Command::new(tollgate_e2e::binary("tollgate"))
            .args(["--server", &format!("http://{}", keyd.addr()), "--token", tollgate_e2e::ADMIN_TOKEN])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let status = |envoy: &Envoy, path: &str| {
        let (client, url) = (client.clone(), envoy.url(path));
        async move { client.get(url).send().await.header("cache-status").unwrap_or_default().to_owned() }
    };

    let issued = std::time::Instant::now();
    cli(&["cache", "purge", "--tag", "p1"]);
    cli(&["cache", "purge", "--url", "/docs/b?x=1", "--host", "127.0.0.1"]);
    cli(&["cache", "purge", "--tag", "p2", "--soft"]);
    let within = Duration::from_secs(2);
    for envoy in &envoys {
        // Hard: the next request is a miss (it goes to the origin).
        let hard = eventually(within, || async { status(envoy, "/p/1").await.contains("fwd=") }).await;
        // Soft: answered stale at once, and refreshed in the background.
        let soft = eventually(within, || async {
            status(envoy, "/p/2").await.contains("detail=stale-while-revalidate")
        })
        .await;
        assert!(hard && soft, "not purged within 2 s of the first purge (hard {hard}, soft {soft})");
    }
    eprintln!("both purges reached both Envoys {:?} after the first was issued", issued.elapsed());
    for envoy in &envoys {
        // The URL purge names a host: the request's host is 127.0.0.1:PORT, not 127.0.0.1.
        assert!(status(envoy, "/docs/b?x=1").await.starts_with("tollgate; hit"));
        assert!(status(envoy, "/kept").await.starts_with("tollgate; hit"));
        assert!(status(envoy, "/docs/a").await.starts_with("tollgate; hit"));
    }
    let host = envoys[0].addr().to_string();
    cli(&["cache", "purge", "--url", "/docs/b?x=1", "--host", &host]);
    cli(&["cache", "purge", "--prefix", "/docs/"]);
    for envoy in &envoys {
        assert!(eventually(BOUND, || async { status(envoy, "/docs/a").await.contains("fwd=") }).await);
    }
    assert!(status(&envoys[0], "/docs/b?x=1").await.contains("fwd="));
    assert!(status(&envoys[1], "/kept").await.starts_with("tollgate; hit"));
    // Bad purges are refused by the key service with the field named.
    let out = std::process::Command::new(tollgate_e2e::binary("tollgate"))
        .args(["--server", &format!("http://{}", keyd.addr()), "--token", tollgate_e2e::ADMIN_TOKEN])
        .args(["cache", "purge", "--prefix", "docs"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("purge.prefix"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for envoy in &envoys {
        assert!(stat(envoy, "purges_applied_total").await >= 5);
    }
}

/// 100,000 distinct URLs through 4 workers with a 1 MiB store per worker and a 1 MiB shared
/// tier: the stores stay within their budget, and Envoy's memory grows by far less than the
/// responses would take if kept (about 100 MB).
#[tokio::test]
async fn memory_stays_within_the_budget_after_100000_distinct_urls() {
    let origin = Origin::start().await;
    let big = vec![b'x'; 600];
    origin.script("/u", 200, &[("cache-control", b"max-age=600"), ("x-pad", big.as_slice())]);
    let mut config = config();
    config["max_memory_bytes"] = json!(1_048_576);
    config["max_object_bytes"] = json!(8192);
    config["shared"] = json!({"slots": 256, "max_bytes": 1_048_576});
    let envoy = gateway_with(&origin, 4, &config).await;
    let url = |i: usize| envoy.url(&format!("/u?i={i}"));
    // Warm up past the budget first, then measure what the rest adds.
    let run = |from: usize, to: usize| {
        let tasks: Vec<_> = (0..32)
            .map(|t| {
                let client = HttpClient::new();
                let urls: Vec<String> = (from..to).filter(|i| i % 32 == t).map(url).collect();
                tokio::spawn(async move {
                    for u in urls {
                        assert_eq!(client.get(u).send().await.status, 200);
                    }
                })
            })
            .collect();
        async move {
            for t in tasks {
                t.await.unwrap();
            }
        }
    };
    run(0, 20_000).await;
    let warm = envoy.rss_bytes();
    run(20_000, 100_000).await;
    let after = envoy.rss_bytes();
    assert_eq!(origin.hits("/u?i=99999"), 1);
    let memory = stat(&envoy, "memory_bytes").await;
    assert!(memory > 0 && memory <= 1_048_576, "a worker's store holds {memory} bytes");
    assert!(stat(&envoy, "evictions_total").await > 90_000);
    let grew = after.saturating_sub(warm);
    eprintln!("rss after warm-up {warm}, after 100,000 URLs {after}: +{grew} bytes");
    assert!(grew < 16 * 1024 * 1024, "Envoy grew by {grew} bytes over 80,000 more URLs");
}

/// A stale entry (no stale-while-revalidate) goes to the origin made conditional on its ETag; the
/// origin's 304 is answered with the stored body. A `no-cache` response with a validator is
/// stored and validated on every use.
#[tokio::test]
async fn stale_and_no_cache_entries_are_revalidated_with_the_origin() {
    let origin = Origin::start().await;
    origin.script("/rv", 200, &[("cache-control", b"max-age=1"), ("etag", b"\"v1\"")]);
    origin.script("/nc", 200, &[("cache-control", b"no-cache"), ("etag", b"\"n1\"")]);
    let envoy = gateway(&origin, 1).await;
    assert_eq!(envoy.get("/rv").send().await.text(), "n=1 lang= consumer=");
    assert_eq!(envoy.get("/nc").send().await.text(), "n=1 lang= consumer=");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let res = envoy.get("/rv").send().await;
    assert_eq!((res.status, res.text()), (200, "n=1 lang= consumer=".to_owned()), "the stored body");
    assert_eq!(res.header("cache-status"), Some("tollgate; fwd=stale; fwd-status=304"));
    let sent = origin.last_headers();
    assert!(sent.iter().any(|(n, v)| n == "if-none-match" && v == b"\"v1\""), "{sent:?}");
    assert_eq!(origin.hits("/rv"), 2);
    let hit = envoy.get("/rv").send().await;
    assert!(hit.header("cache-status").unwrap().starts_with("tollgate; hit"), "freshened by the 304");
    for n in 2..4 {
        let res = envoy.get("/nc").send().await;
        assert_eq!((res.status, res.text()), (200, "n=1 lang= consumer=".to_owned()));
        assert_eq!(origin.hits("/nc"), n, "validated on every use");
    }
    // A client's own conditional request goes to the origin as it is; the origin's 304 is its.
    let res = envoy.get("/nc").header("if-none-match", "\"n1\"").send().await;
    assert_eq!(res.status, 304);
    assert_eq!(origin.hits("/nc"), 4);
    assert_eq!(stat(&envoy, "revalidated_total").await, 3);
}
