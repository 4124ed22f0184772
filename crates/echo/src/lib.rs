//! Demo upstream for Tollgate.
//!
//! Every request is answered with `200 application/json` describing what arrived:
//!
//! ```json
//! {"instance": "echo", "method": "GET", "path": "/a/b", "query": "x=1",
//!  "headers": {"host": "..."}, "body": ""}
//! ```
//!
//! Special paths:
//! - `/status/{code}` answers with that status and the same JSON;
//! - `/delay/{ms}` waits that long (capped at [`MAX_DELAY_MS`]) and then echoes;
//! - `/sse?events=N&interval_ms=M` streams `N` server-sent events `data: {"n":i}` with `M` ms
//!   between them, then ends the response.
//!
//! Every response carries the header `x-echo-instance: <name>`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Header naming the instance that answered.
pub const INSTANCE_HEADER: &str = "x-echo-instance";
/// Largest request body echoed back; bigger bodies get 413.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Longest wait `/delay/{ms}` honours.
pub const MAX_DELAY_MS: u64 = 300_000;
/// Most events `/sse` sends in one response.
pub const MAX_SSE_EVENTS: u64 = 100_000;
/// How long open connections may take to finish after shutdown was requested.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

const DEFAULT_SSE_EVENTS: u64 = 5;
const DEFAULT_SSE_INTERVAL_MS: u64 = 100;

type Body = BoxBody<Bytes, Infallible>;

/// Serves HTTP/1.1 on `listener` until `shutdown` completes, then stops accepting and lets open
/// connections finish (at most [`SHUTDOWN_GRACE`]).
pub async fn serve(listener: TcpListener, name: String, shutdown: impl Future<Output = ()>) {
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
                let name = name.clone();
                let service = service_fn(move |req| handle(req, name.clone()));
                let conn = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(err) = conn.await {
                        log_conn_error(peer, &err);
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await.is_err() {
        eprintln!("tollgate-echo: connections still open after {SHUTDOWN_GRACE:?}; closing");
    }
}

fn log_conn_error(peer: SocketAddr, err: &hyper::Error) {
    if !err.is_incomplete_message() {
        eprintln!("tollgate-echo: connection from {peer}: {err}");
    }
}

async fn handle(req: Request<Incoming>, name: String) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or("").to_owned();

    let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            let msg = json!({"instance": name, "error": "request body too large or broken"});
            return Ok(json_response(StatusCode::PAYLOAD_TOO_LARGE, &name, &msg));
        }
    };

    let mut headers = Map::new();
    for (key, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match headers.get_mut(key.as_str()) {
            Some(Value::String(existing)) => {
                existing.push_str(", ");
                existing.push_str(&value);
            }
            _ => {
                headers.insert(key.as_str().to_owned(), Value::String(value));
            }
        }
    }
    let echo = json!({
        "instance": name,
        "method": parts.method.as_str(),
        "path": path,
        "query": query,
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });

    let route = Route::parse(&path, &query);
    let response = match route {
        Route::Echo => json_response(StatusCode::OK, &name, &echo),
        Route::Status(status) => json_response(status, &name, &echo),
        Route::BadStatus => json_response(StatusCode::BAD_REQUEST, &name, &echo),
        Route::Delay(ms) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            json_response(StatusCode::OK, &name, &echo)
        }
        Route::Sse { events, interval } => sse_response(&name, events, interval),
    };
    Ok(response)
}

/// What a request path asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Echo,
    Status(StatusCode),
    BadStatus,
    Delay(u64),
    Sse { events: u64, interval: Duration },
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
    let bytes = Bytes::from(value.to_string());
    let mut response = Response::new(Full::new(bytes).boxed());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(value) = HeaderValue::from_str(name) {
        headers.insert(INSTANCE_HEADER, value);
    }
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
    let mut response = Response::new(StreamBody::new(ReceiverStream::new(rx)).boxed());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert("cache-control", HeaderValue::from_static("no-cache"));
    if let Ok(value) = HeaderValue::from_str(name) {
        headers.insert(INSTANCE_HEADER, value);
    }
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
