//! Prometheus metrics of the rate-limit service, served as OpenMetrics text on a listener of their
//! own (`--metrics-listen`, loopback by default; see [`serve`]).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `tollgate_ratelimitd_hits_total` | counter | `domain`, `descriptor` |
//! | `tollgate_ratelimitd_over_limit_total` | counter | `domain`, `descriptor` |
//! | `tollgate_ratelimitd_near_limit_total` | counter | `domain`, `descriptor` |
//! | `tollgate_ratelimitd_shadow_mode_total` | counter | `domain`, `descriptor` |
//! | `tollgate_ratelimitd_requests_total` | counter | `result` |
//! | `tollgate_ratelimitd_redis_errors_total` | counter | |
//! | `tollgate_ratelimitd_redis_duration_seconds` | histogram | |
//!
//! The hit counters count hits (a request's `hits_addend`), per configured limit: `descriptor` is
//! the limit's place in the configuration (`tenant`, `generic_key=login.remote_address`), never a
//! value a request sent, so the label set is closed. `over_limit` counts hits refused,
//! `shadow_mode` hits a shadow-mode limit would have refused, `near_limit` hits admitted with
//! less than a fifth of the burst left. `requests_total` counts calls by `result`: `OK`,
//! `OVER_LIMIT` or the gRPC code of the error (`INVALID_ARGUMENT`, `NOT_FOUND`, `UNAVAILABLE`).

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
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// The content type of a scrape: OpenMetrics text 1.0.0.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The path metrics are served on.
pub const PATH: &str = "/metrics";
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a client gets to send its request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Histogram buckets in seconds, from 100 µs to 5 s.
const BUCKETS: [f64; 15] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DescriptorLabels {
    domain: String,
    descriptor: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// What one limit saw in one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HitKind {
    Within,
    Near,
    Over,
    Shadow,
}

/// The service's metrics.
pub struct Metrics {
    registry: Registry,
    hits: Family<DescriptorLabels, Counter>,
    over_limit: Family<DescriptorLabels, Counter>,
    near_limit: Family<DescriptorLabels, Counter>,
    shadow_mode: Family<DescriptorLabels, Counter>,
    requests: Family<ResultLabels, Counter>,
    redis_errors: Counter,
    redis_duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let hits = Family::<DescriptorLabels, Counter>::default();
        let over_limit = Family::<DescriptorLabels, Counter>::default();
        let near_limit = Family::<DescriptorLabels, Counter>::default();
        let shadow_mode = Family::<DescriptorLabels, Counter>::default();
        let requests = Family::<ResultLabels, Counter>::default();
        let redis_errors = Counter::default();
        let redis_duration = Histogram::new(BUCKETS);
        registry.register("tollgate_ratelimitd_hits", "Hits on a configured limit", hits.clone());
        registry.register("tollgate_ratelimitd_over_limit", "Hits refused by a limit", over_limit.clone());
        registry.register(
            "tollgate_ratelimitd_near_limit",
            "Hits admitted with less than a fifth of the burst left",
            near_limit.clone(),
        );
        registry.register(
            "tollgate_ratelimitd_shadow_mode",
            "Hits a shadow-mode limit would have refused",
            shadow_mode.clone(),
        );
        registry.register(
            "tollgate_ratelimitd_requests",
            "ShouldRateLimit calls by result",
            requests.clone(),
        );
        registry.register(
            "tollgate_ratelimitd_redis_errors",
            "Redis calls that failed or timed out",
            redis_errors.clone(),
        );
        registry.register_with_unit(
            "tollgate_ratelimitd_redis_duration",
            "Time of one Redis script call",
            Unit::Seconds,
            redis_duration.clone(),
        );
        Metrics {
            registry,
            hits,
            over_limit,
            near_limit,
            shadow_mode,
            requests,
            redis_errors,
            redis_duration,
        }
    }

    /// Creates the series of every configured limit at zero, so dashboards see them at once.
    pub fn declare(&self, domain: &str, descriptor: &str) {
        let labels = DescriptorLabels { domain: domain.to_owned(), descriptor: descriptor.to_owned() };
        drop(self.hits.get_or_create(&labels));
        drop(self.over_limit.get_or_create(&labels));
        drop(self.near_limit.get_or_create(&labels));
        drop(self.shadow_mode.get_or_create(&labels));
    }

    pub fn hit(&self, domain: &str, descriptor: &str, hits: u64, kind: HitKind) {
        let labels = DescriptorLabels { domain: domain.to_owned(), descriptor: descriptor.to_owned() };
        self.hits.get_or_create(&labels).inc_by(hits);
        let family = match kind {
            HitKind::Within => return,
            HitKind::Near => &self.near_limit,
            HitKind::Over => &self.over_limit,
            HitKind::Shadow => &self.shadow_mode,
        };
        family.get_or_create(&labels).inc_by(hits);
    }

    pub fn request(&self, result: &'static str) {
        self.requests.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn redis_call(&self, elapsed: Duration, ok: bool) {
        self.redis_duration.observe(elapsed.as_secs_f64());
        if !ok {
            self.redis_errors.inc();
        }
    }

    /// The OpenMetrics text of every metric.
    pub fn scrape(&self) -> String {
        let mut text = String::new();
        if let Err(err) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::warn!(error = %err, "metrics: could not encode");
        }
        text
    }
}

/// Serves `metrics` on `listener` (`GET`/`HEAD /metrics`: 200; other methods there: 405; other
/// paths: 404) until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                tracing::warn!(error = %err, "metrics: could not accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            continue;
        };
        let metrics = Arc::clone(&metrics);
        connections.spawn(async move {
            let _slot = slot;
            let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let metrics = Arc::clone(&metrics);
                async move { Ok::<_, Infallible>(respond(&metrics, request.method(), request.uri().path())) }
            });
            let mut builder = http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
            if let Err(err) = builder.serve_connection(TokioIo::new(stream), service).await {
                tracing::debug!(error = %err, "metrics: connection ended with an error");
            }
        });
    }
}

fn respond(metrics: &Metrics, method: &Method, path: &str) -> Response<Full<Bytes>> {
    match (path, method) {
        (PATH, &Method::GET | &Method::HEAD) => reply(StatusCode::OK, CONTENT_TYPE, metrics.scrape()),
        (PATH, _) => {
            let mut response = reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain; charset=utf-8",
                "method not allowed\n".into(),
            );
            response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            response
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "not found\n".into()),
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
    fn hits_are_counted_by_kind_with_closed_labels() {
        let m = Metrics::new();
        m.declare("gw", "tenant");
        m.hit("gw", "tenant", 2, HitKind::Within);
        m.hit("gw", "tenant", 1, HitKind::Near);
        m.hit("gw", "tenant", 3, HitKind::Over);
        m.hit("gw", "login", 1, HitKind::Shadow);
        m.request("OVER_LIMIT");
        m.redis_call(Duration::from_millis(1), false);
        let text = m.scrape();
        for line in [
            r#"tollgate_ratelimitd_hits_total{domain="gw",descriptor="tenant"} 6"#,
            r#"tollgate_ratelimitd_over_limit_total{domain="gw",descriptor="tenant"} 3"#,
            r#"tollgate_ratelimitd_near_limit_total{domain="gw",descriptor="tenant"} 1"#,
            r#"tollgate_ratelimitd_shadow_mode_total{domain="gw",descriptor="login"} 1"#,
            r#"tollgate_ratelimitd_shadow_mode_total{domain="gw",descriptor="tenant"} 0"#,
            r#"tollgate_ratelimitd_requests_total{result="OVER_LIMIT"} 1"#,
            "tollgate_ratelimitd_redis_errors_total 1",
            "tollgate_ratelimitd_redis_duration_seconds_count 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
        let response = respond(&m, &Method::POST, PATH);
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(respond(&m, &Method::GET, "/other").status(), StatusCode::NOT_FOUND);
    }
}
