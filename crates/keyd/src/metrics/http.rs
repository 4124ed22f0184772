//! The metrics endpoint: a small HTTP/1.1 server.
//!
//! - `GET /metrics` and `HEAD /metrics`: 200, the OpenMetrics text ([`CONTENT_TYPE`]);
//! - any other method on `/metrics`: 405 with `Allow: GET, HEAD`;
//! - any other path: 404.
//!
//! The query string is ignored. At most [`MAX_CONNECTIONS`] connections are served at once
//! (more are closed at once), and a client gets [`HEADER_READ_TIMEOUT`] to send its request
//! head.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::Exporter;

/// The content type of a scrape: OpenMetrics text 1.0.0.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The path metrics are served on.
pub const PATH: &str = "/metrics";

/// Connections served at once: plenty for a few Prometheus servers, few enough that a crowd of
/// idle connections costs little.
pub const MAX_CONNECTIONS: usize = 64;

/// How long a client gets to send its request head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What a request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Scrape,
    MethodNotAllowed,
    NotFound,
}

fn route(method: &Method, path: &str) -> Route {
    match (path, method) {
        (PATH, &Method::GET | &Method::HEAD) => Route::Scrape,
        (PATH, _) => Route::MethodNotAllowed,
        _ => Route::NotFound,
    }
}

/// Serves `exporter` on `listener` until `stop` turns `true` (or its sender is gone); open
/// connections are closed then.
pub async fn serve(listener: TcpListener, exporter: Arc<Exporter>, mut stop: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    // Dropping the set at the end aborts the connections still open.
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stop| *stop) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of file descriptors, say: wait a little instead of spinning.
                tracing::warn!(error = %err, "metrics: could not accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!("metrics: too many connections; closing a new one");
            continue;
        };
        let exporter = Arc::clone(&exporter);
        connections.spawn(async move {
            let _slot = slot;
            let service = service_fn(move |request| {
                let exporter = Arc::clone(&exporter);
                async move {
                    let route = route(request.method(), request.uri().path());
                    Ok::<_, Infallible>(respond(&exporter, route).await)
                }
            });
            let mut builder = http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
            if let Err(err) = builder.serve_connection(TokioIo::new(stream), service).await {
                tracing::debug!(error = %err, "metrics: connection ended with an error");
            }
        });
    }
}

async fn respond(exporter: &Exporter, route: Route) -> Response<Full<Bytes>> {
    match route {
        Route::Scrape => reply(StatusCode::OK, CONTENT_TYPE, exporter.scrape().await),
        Route::MethodNotAllowed => {
            let mut response = reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain; charset=utf-8",
                "method not allowed\n".into(),
            );
            response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            response
        }
        Route::NotFound => reply(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "not found\n".into()),
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_and_head_on_the_metrics_path_scrape() {
        for (method, path, expected) in [
            (Method::GET, "/metrics", Route::Scrape),
            (Method::HEAD, "/metrics", Route::Scrape),
            (Method::POST, "/metrics", Route::MethodNotAllowed),
            (Method::PUT, "/metrics", Route::MethodNotAllowed),
            (Method::DELETE, "/metrics", Route::MethodNotAllowed),
            (Method::OPTIONS, "/metrics", Route::MethodNotAllowed),
            (Method::from_bytes(b"PROPFIND").unwrap(), "/metrics", Route::MethodNotAllowed),
            (Method::GET, "/other", Route::NotFound),
            (Method::GET, "/", Route::NotFound),
            (Method::GET, "/metrics/", Route::NotFound),
            (Method::GET, "/Metrics", Route::NotFound),
            (Method::GET, "/metrics/../metrics", Route::NotFound),
            (Method::POST, "/other", Route::NotFound),
        ] {
            assert_eq!(route(&method, path), expected, "{method} {path}");
        }
    }
}
