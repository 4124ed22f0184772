//! The echo server run in-process, spoken to over real TCP.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(name: &str) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(tollgate_echo::serve(listener, name.to_owned(), async {
            let _ = stopped.await;
        }));
        Server { addr, stop: Some(stop), task }
    }

    async fn send(&self, req: Request<Full<Bytes>>) -> (StatusCode, hyper::HeaderMap, Bytes) {
        let stream = TcpStream::connect(self.addr).await.unwrap();
        let (mut sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        let response = sender.send_request(req).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, headers, body)
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.unwrap();
    }
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path).header("host", "echo.test").body(Full::default()).unwrap()
}

#[tokio::test]
async fn echoes_method_path_query_headers_and_body() {
    let server = Server::start("blue").await;
    let req = Request::post("/a/b?x=1&y=two")
        .header("host", "echo.test")
        .header("X-Custom", "one")
        .header("x-custom", "two")
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from_static(b"hello")))
        .unwrap();
    let (status, headers, body) = server.send(req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["x-echo-instance"], "blue");
    let json: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["instance"], "blue");
    assert_eq!(json["method"], "POST");
    assert_eq!(json["path"], "/a/b");
    assert_eq!(json["query"], "x=1&y=two");
    assert_eq!(json["headers"]["x-custom"], "one, two");
    assert_eq!(json["headers"]["host"], "echo.test");
    assert_eq!(json["body"], "hello");
    server.stop().await;
}

#[tokio::test]
async fn missing_query_is_empty_string() {
    let server = Server::start("echo").await;
    let (_, _, body) = server.send(get("/")).await;
    let json: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["query"], "");
    assert_eq!(json["method"], "GET");
    server.stop().await;
}

#[tokio::test]
async fn status_path_answers_that_status_with_the_echo() {
    let server = Server::start("echo").await;
    let (status, _, body) = server.send(get("/status/418")).await;
    assert_eq!(status, StatusCode::IM_A_TEAPOT);
    let json: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["path"], "/status/418");
    server.stop().await;
}

#[tokio::test]
async fn delay_path_waits_then_echoes() {
    let server = Server::start("echo").await;
    let started = std::time::Instant::now();
    let (status, _, _) = server.send(get("/delay/120")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(started.elapsed() >= std::time::Duration::from_millis(120));
    server.stop().await;
}

#[tokio::test]
async fn sse_delivers_the_requested_number_of_events_then_ends() {
    let server = Server::start("echo").await;
    let (status, headers, body) = server.send(get("/sse?events=4&interval_ms=5")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["transfer-encoding"], "chunked");
    let text = String::from_utf8(body.to_vec()).unwrap();
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events, ["data: {\"n\":0}", "data: {\"n\":1}", "data: {\"n\":2}", "data: {\"n\":3}"]);
    server.stop().await;
}

#[tokio::test]
async fn shutdown_stops_accepting() {
    let server = Server::start("echo").await;
    let addr = server.addr;
    server.stop().await;
    assert!(TcpStream::connect(addr).await.is_err());
}
