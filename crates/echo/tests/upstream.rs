//! The switches tests use ([`Options`], [`Upstream`]), spoken to over real TCP; and the demo's
//! answers where those switches are off.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::header::HeaderMap;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tollgate_echo::{Options, Upstream, ws};

struct Server {
    addr: SocketAddr,
    upstream: Upstream,
    _stop: oneshot::Sender<()>,
}

async fn start(options: Options) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let upstream = Upstream::new(options);
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = upstream.clone();
    tokio::spawn(async move {
        serving
            .serve(listener, async {
                let _ = stopped.await;
            })
            .await;
    });
    Server { addr, upstream, _stop: stop }
}

async fn send<B>(addr: SocketAddr, req: Request<B>) -> (StatusCode, HeaderMap, Bytes)
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let response = sender.send_request(req).await.unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    (status, headers, response.into_body().collect().await.unwrap().to_bytes())
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path).header("host", "echo.test").body(Full::default()).unwrap()
}

#[tokio::test]
async fn recording_keeps_exact_field_lines_body_and_trailers() {
    let server = start(Options::new("rec").record()).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(
            b"POST /up?x=1 HTTP/1.1\r\nHost: echo.test\r\nTransfer-Encoding: chunked\r\nX-Bin: caf\xe9\r\n\
              X-Twice: a\r\nx-twice: b\r\nConnection: close\r\n\r\n\
              6\r\nhello \r\n5\r\nworld\r\n0\r\nX-Checksum: abc\r\n\r\n",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""body":"hello world""#), "{answer}");

    assert_eq!(server.upstream.requests(), 1);
    let seen = server.upstream.last_request().unwrap();
    assert_eq!((seen.method.as_str(), seen.path.as_str(), seen.query.as_str()), ("POST", "/up", "x=1"));
    assert_eq!(seen.body.as_ref(), b"hello world");
    assert_eq!(seen.header_lines("X-Bin"), vec![&b"caf\xe9"[..]]);
    assert_eq!(seen.header("x-twice"), Some("a, b"));
    assert_eq!(seen.header_lines("x-twice"), vec![&b"a"[..], &b"b"[..]]);
    assert_eq!(seen.trailers, vec![("x-checksum".to_owned(), b"abc".to_vec())]);

    server.upstream.reset();
    assert_eq!((server.upstream.requests(), server.upstream.received().len()), (0, 0));
}

#[tokio::test]
async fn without_recording_requests_are_counted_not_kept() {
    let server = start(Options::new("demo")).await;
    send(server.addr, get("/a")).await;
    assert_eq!(server.upstream.requests(), 1);
    assert!(server.upstream.received().is_empty() && server.upstream.last_request().is_none());
}

#[tokio::test]
async fn the_health_path_follows_the_switch_and_is_not_a_request() {
    let server = start(Options::new("a").health_path("/healthz")).await;
    let (status, headers, body) = send(server.addr, get("/healthz")).await;
    assert_eq!((status, body.len()), (StatusCode::OK, 0));
    assert_eq!(headers["x-echo-instance"], "a");
    server.upstream.set_healthy(false);
    assert_eq!(send(server.addr, get("/healthz")).await.0, StatusCode::SERVICE_UNAVAILABLE);
    server.upstream.set_healthy(true);
    assert_eq!(send(server.addr, get("/healthz")).await.0, StatusCode::OK);
    assert_eq!((server.upstream.health_checks(), server.upstream.requests()), (3, 0));
}

#[tokio::test]
async fn the_demo_echoes_the_health_path_and_upgrade_requests() {
    let server = start(Options::new("demo")).await;
    let (status, _, body) = send(server.addr, get("/healthz")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["path"], "/healthz");
    let upgrade = Request::get("/ws")
        .header("host", "echo.test")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(Full::<Bytes>::default())
        .unwrap();
    let (status, _, body) = send(server.addr, upgrade).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["headers"]["upgrade"], "websocket");
    assert_eq!(server.upstream.health_checks(), 0);
}

#[tokio::test]
async fn fail_with_overrides_every_status_until_cleared() {
    let server = start(Options::new("f")).await;
    server.upstream.fail_with(503);
    for path in ["/", "/status/201", "/delay/1"] {
        let (status, headers, body) = send(server.addr, get(path)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert_eq!(headers["x-echo-instance"], "f");
        assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["path"], path);
    }
    server.upstream.fail_with(0);
    assert_eq!(send(server.addr, get("/status/201")).await.0, StatusCode::CREATED);
}

#[tokio::test]
async fn a_delay_holds_requests_in_flight_together() {
    let server = start(Options::new("d")).await;
    server.upstream.set_delay(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let (a, b) = tokio::join!(send(server.addr, get("/a")), send(server.addr, get("/b")));
    assert_eq!((a.0, b.0), (StatusCode::OK, StatusCode::OK));
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(server.upstream.max_in_flight(), 2);
    server.upstream.reset();
    assert_eq!(server.upstream.max_in_flight(), 0);
}

#[tokio::test]
async fn websocket_messages_are_echoed_after_the_rfc_handshake() {
    let server = start(Options::new("web").websocket().record()).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(
            b"GET /ws/chat HTTP/1.1\r\nHost: echo.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(stream.read(&mut byte).await.unwrap(), 1, "closed during the handshake: {head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="), "{head}");
    assert!(head.contains("x-echo-instance: web"), "{head}");

    ws::write_frame(&mut stream, ws::TEXT, b"hello", true).await.unwrap();
    assert_eq!(ws::read_frame(&mut stream).await.unwrap(), (ws::TEXT, b"hello".to_vec()));
    ws::write_frame(&mut stream, ws::BINARY, &[0, 255], true).await.unwrap();
    assert_eq!(ws::read_frame(&mut stream).await.unwrap(), (ws::BINARY, vec![0, 255]));
    ws::write_frame(&mut stream, ws::CLOSE, &[0x03, 0xe8], true).await.unwrap();
    assert_eq!(ws::read_frame(&mut stream).await.unwrap().0, ws::CLOSE);
    assert_eq!(server.upstream.requests(), 1);
    assert_eq!(server.upstream.last_request().unwrap().path, "/ws/chat");
}
