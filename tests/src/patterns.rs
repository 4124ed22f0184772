//! Helpers for the gateway-pattern scenarios (`examples/<scenario>/`): render a shipped config
//! template with test ports, run it in Envoy, and upstreams whose behaviour a test can change
//! while traffic flows (health, failures, latency, SSE, WebSocket).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::{Body, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::envoy::Envoy;
use crate::keyd::DATAPLANE_TOKEN;
use crate::paths::{wasm_dir, workspace_root};

/// Renders an Envoy config template shipped in the repository (e.g. `examples/routing/envoy.yaml`):
/// `__WASM_DIR__` and `__DATAPLANE_TOKEN__` get the test values, `__GATEWAY_PORT__` and
/// `__ADMIN_PORT__` default to 0 (the kernel picks), and every `(NAME, value)` in `vars` replaces
/// `__NAME__`. Panics when a placeholder is left.
pub fn render_template(template: &str, vars: &[(&str, String)]) -> String {
    let path = workspace_root().join(template);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    render_text(&text, vars)
}

/// [`render_template`] on a string.
pub fn render_text(text: &str, vars: &[(&str, String)]) -> String {
    let mut all: BTreeMap<String, String> = BTreeMap::new();
    all.insert("WASM_DIR".into(), wasm_dir().to_string_lossy().into_owned());
    all.insert("DATAPLANE_TOKEN".into(), DATAPLANE_TOKEN.into());
    all.insert("GATEWAY_PORT".into(), "0".into());
    all.insert("ADMIN_PORT".into(), "0".into());
    for (name, value) in vars {
        all.insert((*name).to_owned(), value.clone());
    }
    let mut out = text.to_owned();
    for (name, value) in &all {
        out = out.replace(&format!("__{name}__"), value);
    }
    // Placeholders are `__UPPER_CASE__`; report any left over.
    let left: Vec<&str> = out
        .split("__")
        .skip(1)
        .step_by(2)
        .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .collect();
    assert!(left.is_empty(), "placeholders left after rendering: {left:?}");
    out
}

/// Starts Envoy with a complete YAML bootstrap (as rendered by [`render_template`]).
pub async fn start_yaml(yaml: &str, workers: u32) -> Envoy {
    let args = vec!["--config-yaml".to_owned(), yaml.to_owned(), "-l".to_owned(), "info".to_owned()];
    match Envoy::start_config(&json!({}), workers, &args).await {
        Ok(envoy) => envoy,
        Err(log) => panic!("Envoy did not start:\n{log}"),
    }
}

/// The bound address of the listener called `name`.
pub async fn listener_addr(envoy: &Envoy, name: &str) -> SocketAddr {
    let text = envoy.admin_get("/listeners?format=json").await;
    let doc: Value = serde_json::from_str(&text).expect("listeners JSON");
    for status in doc["listener_statuses"].as_array().into_iter().flatten() {
        if status["name"] == name {
            let socket = &status["local_address"]["socket_address"];
            let ip = socket["address"].as_str().and_then(|a| a.parse().ok()).expect("listener ip");
            let port = socket["port_value"].as_u64().and_then(|p| u16::try_from(p).ok()).expect("port");
            return SocketAddr::new(ip, port);
        }
    }
    panic!("no listener named {name}: {text}");
}

/// Health of every host of `cluster` as Envoy sees it: `(address, healthy)`.
pub async fn host_health(envoy: &Envoy, cluster: &str) -> Vec<(SocketAddr, bool)> {
    let text = envoy.admin_get("/clusters?format=json").await;
    let doc: Value = serde_json::from_str(&text).expect("clusters JSON");
    let mut out = Vec::new();
    for status in doc["cluster_statuses"].as_array().into_iter().flatten() {
        if status["name"] != cluster {
            continue;
        }
        for host in status["host_statuses"].as_array().into_iter().flatten() {
            let socket = &host["address"]["socket_address"];
            let Some(ip) = socket["address"].as_str().and_then(|a| a.parse().ok()) else { continue };
            let port = socket["port_value"].as_u64().and_then(|p| u16::try_from(p).ok()).unwrap_or(0);
            let health = &host["health_status"];
            let healthy = health["eds_health_status"].as_str().unwrap_or("HEALTHY") == "HEALTHY"
                && health.as_object().is_some_and(|h| {
                    h.iter().all(|(k, v)| k == "eds_health_status" || v != &Value::Bool(true))
                });
            out.push((SocketAddr::new(ip, port), healthy));
        }
    }
    out
}

/// Counts values, e.g. which instance answered each request.
pub fn tally<I: IntoIterator<Item = String>>(items: I) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for item in items {
        *out.entry(item).or_insert(0) += 1;
    }
    out
}

/// Writes `contents` next to `path` and renames it into place, the way Envoy's filesystem xDS
/// expects an update (it watches for moves).
pub fn replace_file(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename into {}: {e}", path.display()));
}

/// A loopback port the kernel picked and that was free a moment ago, for a listener Envoy's own
/// config must point at (e.g. a cluster sending to a second listener of the same Envoy), where
/// port 0 cannot be used. Another process could take it in between; the kernel hands out
/// ephemeral ports in turn, so that is unlikely within a test.
pub fn reserve_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

// ---------------------------------------------------------------------------------------------
// Backend: an upstream whose behaviour changes at run time.

type BoxedBody = BoxBody<Bytes, Infallible>;

struct State {
    name: String,
    healthy: AtomicBool,
    fail_status: AtomicU16,
    delay_ms: AtomicU64,
    requests: AtomicUsize,
    health_checks: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// An HTTP/1.1 upstream on `127.0.0.1:0`, answering like [`crate::Echo`]
/// (`{"instance","method","path","headers"}` and header `x-echo-instance`) with knobs:
///
/// - `GET /healthz`: 200 while [`Backend::set_healthy`] is true, else 503 (not counted as a request);
/// - [`Backend::fail_with`]: every other request gets that status;
/// - [`Backend::set_delay`]: every other request waits that long first; `/delay/{ms}` too;
/// - `/status/{code}`: answers with that status;
/// - `/sse?events=N&gap_ms=M`: a `text/event-stream` of N events, M ms apart;
/// - a WebSocket upgrade on any path: echoes every text or binary message back.
pub struct Backend {
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    pub fn start(name: &str) -> Backend {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind backend");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("backend address");
        let state = Arc::new(State {
            name: name.to_owned(),
            healthy: AtomicBool::new(true),
            fail_status: AtomicU16::new(0),
            delay_ms: AtomicU64::new(0),
            requests: AtomicUsize::new(0),
            health_checks: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        });
        let (tx, rx) = oneshot::channel();
        let thread = {
            let state = Arc::clone(&state);
            std::thread::Builder::new()
                .name(format!("backend-{name}"))
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("backend runtime");
                    runtime.block_on(serve(listener, state, rx));
                })
                .expect("spawn backend")
        };
        Backend { addr, state, shutdown: Some(tx), thread: Some(thread) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> String {
        self.addr.port().to_string()
    }

    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// Requests served (health checks not counted).
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Health-check requests (`/healthz`) seen.
    pub fn health_checks(&self) -> usize {
        self.state.health_checks.load(Ordering::SeqCst)
    }

    /// The most requests this backend had in flight at once.
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }

    pub fn reset(&self) {
        self.state.requests.store(0, Ordering::SeqCst);
        self.state.max_in_flight.store(0, Ordering::SeqCst);
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.state.healthy.store(healthy, Ordering::SeqCst);
    }

    /// Answers every request with `status` (0 returns to normal).
    pub fn fail_with(&self, status: u16) {
        self.state.fail_status.store(status, Ordering::SeqCst);
    }

    pub fn set_delay(&self, delay: Duration) {
        self.state.delay_ms.store(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), Ordering::SeqCst);
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(listener: std::net::TcpListener, state: Arc<State>, mut shutdown: oneshot::Receiver<()>) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let state = Arc::clone(&state);
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(req, Arc::clone(&state)));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        }
    }
}

fn full(bytes: impl Into<Bytes>) -> BoxedBody {
    http_body_util::Full::new(bytes.into()).boxed()
}

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

async fn handle(req: Request<Incoming>, state: Arc<State>) -> Result<Response<BoxedBody>, Infallible> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    if path == "/healthz" {
        state.health_checks.fetch_add(1, Ordering::SeqCst);
        let status = if state.healthy.load(Ordering::SeqCst) { 200 } else { 503 };
        return Ok(status_response(status, &state.name, full("")));
    }
    state.requests.fetch_add(1, Ordering::SeqCst);

    let is_upgrade = req
        .headers()
        .get("upgrade")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if is_upgrade {
        return Ok(websocket_accept(req, &state.name));
    }

    let _in_flight = InFlight::enter(&state);
    let mut delay = state.delay_ms.load(Ordering::SeqCst);
    if let Some(ms) = path.strip_prefix("/delay/") {
        delay = ms.parse::<u64>().unwrap_or(0).min(60_000);
    }
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }

    if path == "/sse" {
        let params: BTreeMap<&str, u64> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
            .collect();
        let events = params.get("events").copied().unwrap_or(3);
        let gap = Duration::from_millis(params.get("gap_ms").copied().unwrap_or(500));
        return Ok(sse_response(&state.name, events, gap));
    }

    let mut status = state.fail_status.load(Ordering::SeqCst);
    if status == 0 {
        status = path.strip_prefix("/status/").and_then(|c| c.parse().ok()).unwrap_or(200);
    }
    let headers: Map<String, Value> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), Value::String(String::from_utf8_lossy(v.as_bytes()).into())))
        .collect();
    let method = req.method().to_string();
    let _ = req.into_body().collect().await;
    let doc = json!({
        "instance": state.name,
        "method": method,
        "path": path,
        "query": query,
        "headers": headers,
    });
    Ok(status_response(status, &state.name, full(doc.to_string())))
}

fn status_response(status: u16, name: &str, body: BoxedBody) -> Response<BoxedBody> {
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert("content-type", "application/json".parse().expect("static header"));
    if let Ok(value) = name.parse() {
        response.headers_mut().insert("x-echo-instance", value);
    }
    response
}

/// A body fed from a channel, so the response streams.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

fn sse_response(name: &str, events: u64, gap: Duration) -> Response<BoxedBody> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        for i in 1..=events {
            if i > 1 {
                tokio::time::sleep(gap).await;
            }
            let event = format!("id: {i}\nevent: tick\ndata: {{\"n\":{i}}}\n\n");
            if tx.send(Bytes::from(event)).await.is_err() {
                return;
            }
        }
    });
    let mut response = Response::new(ChannelBody(rx).boxed());
    let headers = response.headers_mut();
    headers.insert("content-type", "text/event-stream".parse().expect("static header"));
    headers.insert("cache-control", "no-cache".parse().expect("static header"));
    if let Ok(value) = name.parse() {
        headers.insert("x-echo-instance", value);
    }
    response
}

// ---------------------------------------------------------------------------------------------
// WebSocket (RFC 6455), just enough for tests: one unfragmented message per frame.

const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

fn websocket_accept(mut req: Request<Incoming>, name: &str) -> Response<BoxedBody> {
    let key = req.headers().get("sec-websocket-key").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let accept = base64_encode(&sha1(format!("{key}{WS_GUID}").as_bytes()));
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut io = TokioIo::new(upgraded);
        while let Ok((opcode, payload)) = read_frame(&mut io).await {
            match opcode {
                0x8 => {
                    let _ = write_frame(&mut io, 0x8, &payload, false).await;
                    return;
                }
                0x1 | 0x2 if write_frame(&mut io, opcode, &payload, false).await.is_err() => return,
                _ => {}
            }
        }
    });
    let mut response = Response::new(full(""));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert("upgrade", "websocket".parse().expect("static header"));
    headers.insert("connection", "Upgrade".parse().expect("static header"));
    if let Ok(value) = accept.parse() {
        headers.insert("sec-websocket-accept", value);
    }
    if let Ok(value) = name.parse() {
        headers.insert("x-echo-instance", value);
    }
    response
}

/// Reads one frame; returns `(opcode, unmasked payload)`.
pub async fn read_frame<R: tokio::io::AsyncRead + Unpin>(io: &mut R) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    io.read_exact(&mut head).await?;
    let opcode = head[0] & 0x0f;
    let masked = head[1] & 0x80 != 0;
    let mut len = u64::from(head[1] & 0x7f);
    if len == 126 {
        let mut ext = [0u8; 2];
        io.read_exact(&mut ext).await?;
        len = u64::from(u16::from_be_bytes(ext));
    } else if len == 127 {
        let mut ext = [0u8; 8];
        io.read_exact(&mut ext).await?;
        len = u64::from_be_bytes(ext);
    }
    let mut mask = [0u8; 4];
    if masked {
        io.read_exact(&mut mask).await?;
    }
    let mut payload = vec![0u8; usize::try_from(len.min(1 << 20)).unwrap_or(0)];
    io.read_exact(&mut payload).await?;
    if masked {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    Ok((opcode, payload))
}

/// Writes one final frame; clients must mask (`masked = true`), servers must not.
pub async fn write_frame<W: tokio::io::AsyncWrite + Unpin>(
    io: &mut W,
    opcode: u8,
    payload: &[u8],
    masked: bool,
) -> std::io::Result<()> {
    let mut frame = vec![0x80 | opcode];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => frame.push(mask_bit | u8::try_from(n).unwrap_or(0)),
        n if n <= 0xffff => {
            frame.push(mask_bit | 126);
            frame.extend_from_slice(&u16::try_from(n).unwrap_or(0).to_be_bytes());
        }
        n => {
            frame.push(mask_bit | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let mask: [u8; 4] = rand_mask();
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        frame.extend_from_slice(payload);
    }
    io.write_all(&frame).await?;
    io.flush().await
}

fn rand_mask() -> [u8; 4] {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos());
    nanos.unwrap_or(0x5a5a_5a5a).to_be_bytes()
}

/// A WebSocket client connection over plain TCP.
pub struct WebSocket {
    stream: TcpStream,
    /// The status line and headers of the handshake response.
    pub handshake: String,
}

impl WebSocket {
    /// Opens `ws://addr{path}` with extra request headers. `Err` carries the handshake response
    /// when it is not `101`.
    pub async fn connect(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<WebSocket, String> {
        let mut stream = TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
        // Read the response head byte by byte so no frame bytes are consumed.
        let mut head = Vec::new();
        let read = async {
            while !head.ends_with(b"\r\n\r\n") {
                let mut byte = [0u8; 1];
                if stream.read(&mut byte).await.map_err(|e| e.to_string())? == 0 {
                    break;
                }
                head.push(byte[0]);
            }
            Ok::<_, String>(())
        };
        tokio::time::timeout(Duration::from_secs(10), read).await.map_err(|_| "handshake timed out")??;
        let handshake = String::from_utf8_lossy(&head).into_owned();
        if !handshake.starts_with("HTTP/1.1 101") {
            // Read what body there is, for the error message.
            let mut rest = vec![0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut rest)).await;
            let body = match n {
                Ok(Ok(n)) => String::from_utf8_lossy(&rest[..n]).into_owned(),
                _ => String::new(),
            };
            return Err(format!("{handshake}{body}"));
        }
        Ok(WebSocket { stream, handshake })
    }

    /// Sends a text message and waits (up to 10 s) for the next message back.
    pub async fn roundtrip(&mut self, text: &str) -> Result<String, String> {
        write_frame(&mut self.stream, 0x1, text.as_bytes(), true).await.map_err(|e| e.to_string())?;
        let (opcode, payload) = tokio::time::timeout(Duration::from_secs(10), read_frame(&mut self.stream))
            .await
            .map_err(|_| "no answer within 10 s".to_owned())?
            .map_err(|e| e.to_string())?;
        if opcode != 0x1 {
            return Err(format!("expected a text frame, got opcode {opcode}"));
        }
        String::from_utf8(payload).map_err(|e| e.to_string())
    }

    /// Sends a close frame and waits for the peer's close.
    pub async fn close(mut self) -> Result<(), String> {
        write_frame(&mut self.stream, 0x8, &[0x03, 0xe8], true).await.map_err(|e| e.to_string())?;
        let (opcode, _) = tokio::time::timeout(Duration::from_secs(10), read_frame(&mut self.stream))
            .await
            .map_err(|_| "no close within 10 s".to_owned())?
            .map_err(|e| e.to_string())?;
        if opcode == 0x8 { Ok(()) } else { Err(format!("expected close, got opcode {opcode}")) }
    }
}

fn base64_encode(data: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(TABLE[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// SHA-1, only for the WebSocket handshake's `Sec-WebSocket-Accept`.
fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x6745_2301, 0xEFCD_AB89, 0x98BA_DCFE, 0x1032_5476, 0xC3D2_E1F0];
    let mut msg = data.to_vec();
    let bit_len = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bit_len.to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 80];
        for (i, word) in block.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A82_7999),
                20..=39 => (b ^ c ^ d, 0x6ED9_EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1B_BCDC),
                _ => (b ^ c ^ d, 0xCA62_C1D6),
            };
            let temp = a.rotate_left(5).wrapping_add(f).wrapping_add(e).wrapping_add(k).wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = temp;
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 20];
    for (i, word) in h.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&word.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_accept_matches_rfc_6455_example() {
        let accept = base64_encode(&sha1(format!("dGhlIHNhbXBsZSBub25jZQ=={WS_GUID}").as_bytes()));
        assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn render_reports_leftover_placeholders() {
        let out = render_text("a: __WASM_DIR__\nb: __X_PORT__\n", &[("X_PORT", "1".into())]);
        assert!(out.ends_with("b: 1\n"));
        let left = std::panic::catch_unwind(|| render_text("c: __NOPE__", &[]));
        assert!(left.is_err());
    }
}
