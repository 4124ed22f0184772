//! Demo upstream for Tollgate, and the upstream of its end-to-end tests.
//!
//! Every request is answered with `200 application/json` describing what arrived:
//!
//! ```json
//! {"instance": "echo", "method": "GET", "path": "/a/b", "query": "x=1",
//!  "headers": {"host": "..."}, "body": ""}
//! ```
//!
//! Repeated headers are joined with `", "`; bytes that are not UTF-8 are replaced.
//!
//! Special paths:
//! - `/status/{code}` answers with that status and the same JSON;
//! - `/delay/{ms}` waits that long (capped at [`MAX_DELAY_MS`]) and then echoes;
//! - `/sse?events=N&interval_ms=M` streams `N` server-sent events `data: {"n":i}` with `M` ms
//!   between them, then ends the response;
//! - `/cacheable/{bytes}` answers `200` with a body of that many bytes (capped at
//!   [`MAX_BODY_BYTES`]) and `cache-control: public, max-age=3600`: a response every shared
//!   cache may store (the benchmark's cache hits).
//!
//! Every response carries the header `x-echo-instance: <name>`.
//!
//! The demo binary serves [`Options::new`] as it is. Tests turn on more ([`Options`]) and steer
//! the running server through its [`Upstream`] handle: keep every request, answer a health-check
//! path from a switch, fail or delay every request, echo WebSocket messages.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

pub mod ws;

/// Header naming the instance that answered.
pub const INSTANCE_HEADER: &str = "x-echo-instance";
/// Largest request body echoed back; bigger bodies get 413.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// What `/cacheable/{bytes}` answers with: any shared cache may keep it for an hour.
pub const CACHEABLE_CACHE_CONTROL: &str = "public, max-age=3600";
/// Longest wait `/delay/{ms}` honours.
pub const MAX_DELAY_MS: u64 = 300_000;
/// Most events `/sse` sends in one response.
pub const MAX_SSE_EVENTS: u64 = 100_000;
/// How long open connections may take to finish after shutdown was requested.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

const DEFAULT_SSE_EVENTS: u64 = 5;
const DEFAULT_SSE_INTERVAL_MS: u64 = 100;

type Body = BoxBody<Bytes, Infallible>;

/// Serves the demo upstream ([`Options::new`]) named `name`: see [`Upstream::serve`].
pub async fn serve(listener: TcpListener, name: String, shutdown: impl Future<Output = ()>) {
    Upstream::new(Options::new(name)).serve(listener, shutdown).await;
}

/// What a server does beyond echoing.
#[derive(Debug, Clone)]
pub struct Options {
    name: String,
    record: bool,
    health_path: Option<String>,
    websocket: bool,
}

impl Options {
    /// The demo: echoes, named `name` (in the JSON and the `x-echo-instance` header).
    pub fn new(name: impl Into<String>) -> Options {
        Options { name: name.into(), record: false, health_path: None, websocket: false }
    }

    /// Keeps every request for [`Upstream::received`] (memory grows with traffic: for tests).
    pub fn record(mut self) -> Options {
        self.record = true;
        self
    }

    /// Requests to `path` are health checks: `200` while [`Upstream::set_healthy`] says so, else
    /// `503`, empty body; counted by [`Upstream::health_checks`], not as requests.
    pub fn health_path(mut self, path: impl Into<String>) -> Options {
        self.health_path = Some(path.into());
        self
    }

    /// A WebSocket upgrade (`upgrade: websocket`) on any path is accepted (`101`) and every text
    /// or binary message is echoed back. Connections that can be upgraded are not waited for on
    /// shutdown.
    pub fn websocket(mut self) -> Options {
        self.websocket = true;
        self
    }
}

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct EchoRequest {
    pub method: String,
    pub path: String,
    pub query: String,
    /// Lowercased names; repeated headers joined with `", "`; bytes that are not UTF-8 replaced.
    pub headers: BTreeMap<String, String>,
    /// Every field line as received: lower-case name, exact value bytes.
    pub raw_headers: Vec<(String, Vec<u8>)>,
    pub body: Bytes,
    /// Trailers of a chunked request body, if any.
    pub trailers: Vec<(String, Vec<u8>)>,
}

impl EchoRequest {
    fn new(parts: &hyper::http::request::Parts, body: Bytes, trailers: Option<&HeaderMap>) -> EchoRequest {
        let lines = |map: &HeaderMap| -> Vec<(String, Vec<u8>)> {
            map.iter().map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec())).collect()
        };
        let mut headers = BTreeMap::<String, String>::new();
        for (name, value) in &parts.headers {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            headers
                .entry(name.as_str().to_owned())
                .and_modify(|existing| {
                    existing.push_str(", ");
                    existing.push_str(&value);
                })
                .or_insert(value);
        }
        EchoRequest {
            method: parts.method.as_str().to_owned(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().unwrap_or("").to_owned(),
            headers,
            raw_headers: lines(&parts.headers),
            body,
            trailers: trailers.map(lines).unwrap_or_default(),
        }
    }

    /// Every value of a header as exact bytes, one per field line.
    pub fn header_lines(&self, name: &str) -> Vec<&[u8]> {
        let name = name.to_ascii_lowercase();
        self.raw_headers.iter().filter(|(n, _)| *n == name).map(|(_, v)| v.as_slice()).collect()
    }

    /// A header's value, by any case of its name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }

    /// The JSON answer describing this request.
    fn echo(&self, instance: &str) -> Value {
        let headers: Map<String, Value> =
            self.headers.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
        json!({
            "instance": instance,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": headers,
            "body": String::from_utf8_lossy(&self.body),
        })
    }
}

/// A server's shared state: its switches and what it has seen. Clones share it.
#[derive(Debug, Clone)]
pub struct Upstream {
    state: Arc<State>,
}

#[derive(Debug)]
struct State {
    options: Options,
    healthy: AtomicBool,
    /// Status every request gets; 0 when off.
    fail_status: AtomicU16,
    delay_ms: AtomicU64,
    log: Mutex<Log>,
    health_checks: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

#[derive(Debug, Default)]
struct Log {
    requests: usize,
    received: Vec<EchoRequest>,
}

impl Upstream {
    pub fn new(options: Options) -> Upstream {
        Upstream {
            state: Arc::new(State {
                options,
                healthy: AtomicBool::new(true),
                fail_status: AtomicU16::new(0),
                delay_ms: AtomicU64::new(0),
                log: Mutex::new(Log::default()),
                health_checks: AtomicUsize::new(0),
                in_flight: AtomicUsize::new(0),
                max_in_flight: AtomicUsize::new(0),
            }),
        }
    }

    /// The instance name.
    pub fn name(&self) -> &str {
        &self.state.options.name
    }

    /// Requests that arrived so far (health checks not counted).
    pub fn requests(&self) -> usize {
        self.state.log.lock().map(|log| log.requests).unwrap_or(0)
    }

    /// Every request so far, oldest first (with [`Options::record`]; else none).
    pub fn received(&self) -> Vec<EchoRequest> {
        self.state.log.lock().map(|log| log.received.clone()).unwrap_or_default()
    }

    /// The newest request (with [`Options::record`]).
    pub fn last_request(&self) -> Option<EchoRequest> {
        self.state.log.lock().ok().and_then(|log| log.received.last().cloned())
    }

    /// Forgets the requests seen so far and the most in flight (both restart at 0).
    pub fn reset(&self) {
        if let Ok(mut log) = self.state.log.lock() {
            *log = Log::default();
        }
        self.state.max_in_flight.store(0, Ordering::SeqCst);
    }

    /// Health checks seen (with [`Options::health_path`]).
    pub fn health_checks(&self) -> usize {
        self.state.health_checks.load(Ordering::SeqCst)
    }

    /// The most requests this server had in flight at once (from arrival of the whole request
    /// until the answer's head is ready).
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }

    /// What health checks get: `200` when `healthy` (the start), else `503`.
    pub fn set_healthy(&self, healthy: bool) {
        self.state.healthy.store(healthy, Ordering::SeqCst);
    }

    /// Answers every request (but health checks, WebSocket upgrades and `/sse`) with `status`
    /// instead; 0 returns to normal.
    pub fn fail_with(&self, status: u16) {
        self.state.fail_status.store(status, Ordering::SeqCst);
    }

    /// Every request (but health checks and WebSocket upgrades) waits this long before it is
    /// answered; `/delay/{ms}` waits its own time instead.
    pub fn set_delay(&self, delay: Duration) {
        self.state.delay_ms.store(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    /// Serves HTTP/1.1 on `listener` until `shutdown` completes, then stops accepting and lets open
    /// connections finish (at most [`SHUTDOWN_GRACE`]).
    pub async fn serve(&self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let graceful = GracefulShutdown::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(conn) => conn,
                        Err(err) => {
                            eprintln!("tollgate-echo: accept failed: {err}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let state = Arc::clone(&self.state);
                    let service = service_fn(move |req| handle(req, Arc::clone(&state)));
                    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                    if self.state.options.websocket {
                        // hyper-util cannot watch a connection that may be upgraded.
                        let conn = conn.with_upgrades();
                        tokio::spawn(async move {
                            if let Err(err) = conn.await {
                                log_conn_error(peer, &err);
                            }
                        });
                    } else {
                        let conn = graceful.watch(conn);
                        tokio::spawn(async move {
                            if let Err(err) = conn.await {
                                log_conn_error(peer, &err);
                            }
                        });
                    }
                }
                () = &mut shutdown => break,
            }
        }
        drop(listener);
        if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await.is_err() {
            eprintln!("tollgate-echo: connections still open after {SHUTDOWN_GRACE:?}; closing");
        }
    }
}

impl State {
    fn record(&self, request: EchoRequest) {
        if let Ok(mut log) = self.log.lock() {
            log.requests += 1;
            if self.options.record {
                log.received.push(request);
            }
        }
    }

    fn fail_status(&self) -> Option<StatusCode> {
        match self.fail_status.load(Ordering::SeqCst) {
            0 => None,
            code => Some(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)),
        }
    }
}

/// Counts a request in flight while alive.
struct InFlight(Arc<State>);

impl InFlight {
    fn enter(state: &Arc<State>) -> InFlight {
        let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        state.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(Arc::clone(state))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn log_conn_error(peer: SocketAddr, err: &hyper::Error) {
    if !err.is_incomplete_message() {
        eprintln!("tollgate-echo: connection from {peer}: {err}");
    }
}

async fn handle(req: Request<Incoming>, state: Arc<State>) -> Result<Response<Body>, Infallible> {
    let name = state.options.name.as_str();
    if state.options.health_path.as_deref() == Some(req.uri().path()) {
        state.health_checks.fetch_add(1, Ordering::SeqCst);
        let status = if state.healthy.load(Ordering::SeqCst) {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        return Ok(response(status, name, "application/json", Full::new(Bytes::new()).boxed()));
    }
    if state.options.websocket && is_websocket_upgrade(req.headers()) {
        return Ok(websocket_accept(req, &state));
    }

    let (parts, body) = req.into_parts();
    let (body, trailers, complete) = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => {
            let trailers = collected.trailers().cloned();
            (collected.to_bytes(), trailers, true)
        }
        Err(_) => (Bytes::new(), None, false),
    };
    let seen = EchoRequest::new(&parts, body, trailers.as_ref());
    let echo = seen.echo(name);
    state.record(seen);
    if !complete {
        let msg = json!({"instance": name, "error": "request body too large or broken"});
        return Ok(json_response(StatusCode::PAYLOAD_TOO_LARGE, name, &msg));
    }

    let _in_flight = InFlight::enter(&state);
    let route = Route::parse(parts.uri.path(), parts.uri.query().unwrap_or(""));
    let delay = match route {
        Route::Delay(ms) => ms,
        _ => state.delay_ms.load(Ordering::SeqCst),
    };
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let status = match route {
        Route::Sse { events, interval } => return Ok(sse_response(name, events, interval)),
        Route::Cacheable(bytes) if state.fail_status().is_none() => {
            return Ok(cacheable_response(name, bytes));
        }
        Route::Echo | Route::Cacheable(_) | Route::Delay(_) => StatusCode::OK,
        Route::Status(status) => status,
        Route::BadStatus => StatusCode::BAD_REQUEST,
    };
    Ok(json_response(state.fail_status().unwrap_or(status), name, &echo))
}

fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(hyper::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Answers `101` and echoes messages on the upgraded connection.
fn websocket_accept(mut req: Request<Incoming>, state: &State) -> Response<Body> {
    let key = req.headers().get("sec-websocket-key").and_then(|v| v.to_str().ok()).unwrap_or("");
    let accept = ws::accept_key(key);
    let upgrade = hyper::upgrade::on(&mut req);
    let (parts, _) = req.into_parts();
    state.record(EchoRequest::new(&parts, Bytes::new(), None));
    tokio::spawn(async move {
        if let Ok(upgraded) = upgrade.await {
            ws::echo_messages(TokioIo::new(upgraded)).await;
        }
    });
    let name = state.options.name.as_str();
    let mut response = response(StatusCode::SWITCHING_PROTOCOLS, name, "", Full::new(Bytes::new()).boxed());
    let headers = response.headers_mut();
    headers.insert(hyper::header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(hyper::header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(value) = HeaderValue::from_str(&accept) {
        headers.insert(hyper::header::SEC_WEBSOCKET_ACCEPT, value);
    }
    response
}

/// What a request path asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Echo,
    Status(StatusCode),
    BadStatus,
    Delay(u64),
    Sse {
        events: u64,
        interval: Duration,
    },
    /// A storable body of this many bytes.
    Cacheable(usize),
}

impl Route {
    fn parse(path: &str, query: &str) -> Route {
        if let Some(code) = path.strip_prefix("/status/") {
            return match code.parse::<u16>().ok().and_then(|c| StatusCode::from_u16(c).ok()) {
                Some(status) => Route::Status(status),
                None => Route::BadStatus,
            };
        }
        if let Some(ms) = path.strip_prefix("/delay/") {
            return match ms.parse::<u64>() {
                Ok(ms) => Route::Delay(ms.min(MAX_DELAY_MS)),
                Err(_) => Route::BadStatus,
            };
        }
        if let Some(bytes) = path.strip_prefix("/cacheable/") {
            return match bytes.parse::<usize>() {
                Ok(bytes) => Route::Cacheable(bytes.min(MAX_BODY_BYTES)),
                Err(_) => Route::BadStatus,
            };
        }
        if path == "/sse" {
            let mut events = DEFAULT_SSE_EVENTS;
            let mut interval_ms = DEFAULT_SSE_INTERVAL_MS;
            for pair in query.split('&') {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                match (key, value.parse::<u64>()) {
                    ("events", Ok(n)) => events = n.min(MAX_SSE_EVENTS),
                    ("interval_ms", Ok(ms)) => interval_ms = ms.min(MAX_DELAY_MS),
                    _ => {}
                }
            }
            return Route::Sse { events, interval: Duration::from_millis(interval_ms) };
        }
        Route::Echo
    }
}

fn json_response(status: StatusCode, name: &str, value: &Value) -> Response<Body> {
    response(status, name, "application/json", Full::new(Bytes::from(value.to_string())).boxed())
}

/// A response with `content-type` (none when empty) and the instance header.
fn response(status: StatusCode, name: &str, content_type: &'static str, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    if !content_type.is_empty() {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    if let Ok(value) = HeaderValue::from_str(name) {
        headers.insert(INSTANCE_HEADER, value);
    }
    response
}

/// `bytes` bytes of `x`, storable by any shared cache for an hour.
fn cacheable_response(name: &str, bytes: usize) -> Response<Body> {
    let body = Full::new(Bytes::from(vec![b'x'; bytes])).boxed();
    let mut response = response(StatusCode::OK, name, "text/plain", body);
    response.headers_mut().insert("cache-control", HeaderValue::from_static(CACHEABLE_CACHE_CONTROL));
    response
}

fn sse_response(name: &str, events: u64, interval: Duration) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
    tokio::spawn(async move {
        for n in 0..events {
            if n > 0 {
                tokio::time::sleep(interval).await;
            }
            let event = Frame::data(Bytes::from(format!("data: {{\"n\":{n}}}\n\n")));
            if tx.send(Ok(event)).await.is_err() {
                return; // client went away
            }
        }
    });
    let body = StreamBody::new(ReceiverStream::new(rx)).boxed();
    let mut response = response(StatusCode::OK, name, "text/event-stream", body);
    response.headers_mut().insert("cache-control", HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_echo() {
        assert_eq!(Route::parse("/a/b", "x=1"), Route::Echo);
        assert_eq!(Route::parse("/status", ""), Route::Echo);
    }

    #[test]
    fn status_path_parses_code() {
        assert_eq!(Route::parse("/status/418", ""), Route::Status(StatusCode::IM_A_TEAPOT));
        assert_eq!(Route::parse("/status/abc", ""), Route::BadStatus);
        assert_eq!(Route::parse("/status/99", ""), Route::BadStatus);
    }

    #[test]
    fn delay_is_capped() {
        assert_eq!(Route::parse("/delay/250", ""), Route::Delay(250));
        assert_eq!(Route::parse("/delay/999999999", ""), Route::Delay(MAX_DELAY_MS));
    }

    #[test]
    fn cacheable_path_parses_size_and_caps_it() {
        assert_eq!(Route::parse("/cacheable/10000", ""), Route::Cacheable(10_000));
        assert_eq!(Route::parse("/cacheable/99999999999", ""), Route::Cacheable(MAX_BODY_BYTES));
        assert_eq!(Route::parse("/cacheable/10k", ""), Route::BadStatus);
    }

    #[test]
    fn sse_reads_query_with_defaults() {
        assert_eq!(
            Route::parse("/sse", "events=3&interval_ms=10"),
            Route::Sse { events: 3, interval: Duration::from_millis(10) }
        );
        assert_eq!(
            Route::parse("/sse", ""),
            Route::Sse {
                events: DEFAULT_SSE_EVENTS,
                interval: Duration::from_millis(DEFAULT_SSE_INTERVAL_MS)
            }
        );
    }
}
