//! `tollgate-ratelimitd`: a server of Envoy's rate-limit service API
//! (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`), so Envoy's native
//! `envoy.filters.http.ratelimit` filter enforces limits shared by every Envoy of a cluster.
//!
//! - [`config`]: the limits, in envoyproxy/ratelimit's YAML shape;
//! - [`gcra`]: the algorithm, every bucket of a request checked before any is charged;
//! - [`store`]: buckets in memory (one instance) or in Redis ([`redis`], any number of instances);
//! - [`service`]: the gRPC handler; [`metrics`]: the Prometheus endpoint.
//!
//! It is a binary of its own rather than a mode of the key service: it scales with the request
//! rate rather than with key administration, fails without taking key lookups with it (and the
//! other way round), and keeps no state besides Redis.

pub mod config;
pub mod gcra;
pub mod metrics;
pub mod proto;
pub mod redis;
pub mod service;
pub mod store;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::proto::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
pub use crate::service::{Limiter, Service};

/// Full gRPC name of the service.
pub const SERVICE_NAME: &str = "envoy.service.ratelimit.v3.RateLimitService";

/// Serves `limiter` over gRPC on `listener` (with gRPC health checking), and its metrics on
/// `metrics_listener` when given, until `shutdown` completes.
pub async fn serve(
    limiter: Arc<Limiter>,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), String> {
    let metrics_task =
        metrics_listener.map(|l| tokio::spawn(metrics::serve(l, Arc::clone(limiter.metrics()))));
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_service_status(SERVICE_NAME, tonic_health::ServingStatus::Serving).await;
    let result = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(RateLimitServiceServer::new(Service(limiter)))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
        .map_err(|e| format!("gRPC server: {e}"));
    if let Some(task) = metrics_task {
        task.abort();
    }
    result
}
