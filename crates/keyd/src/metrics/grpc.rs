//! The tower layer that counts and times gRPC calls.
//!
//! A gRPC status travels either in the response headers (a trailers-only response: refused by
//! authentication, an unknown method, a handler error) or in the trailers after the messages.
//! The layer records a call when its status passes by; a call whose client goes away first is
//! recorded as `CANCELLED`.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::{Body as _, Frame, SizeHint};
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Bytes, Service, http};
use tonic::{Code, Status};
use tower_layer::Layer;

use super::{Metrics, method_label};

/// Wraps a gRPC server (see [`Metrics::grpc_layer`]).
#[derive(Debug, Clone)]
pub struct GrpcMetricsLayer {
    metrics: Metrics,
}

impl GrpcMetricsLayer {
    pub(super) fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics { inner, metrics: self.metrics.clone() }
    }
}

/// A gRPC service whose calls are counted and timed.
#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, B> Service<http::Request<B>> for GrpcMetrics<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let call = method_label(request.uri().path()).map(|method| Call::start(self.metrics.clone(), method));
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = match response.await {
                Ok(response) => response,
                Err(err) => {
                    if let Some(call) = call {
                        call.finish(Code::Unknown);
                    }
                    return Err(err);
                }
            };
            let Some(call) = call else { return Ok(response) };
            if let Some(code) = status_code(response.headers()) {
                call.finish(code);
                return Ok(response);
            }
            Ok(response.map(|body| {
                if body.is_end_stream() {
                    // No status in the headers and no trailers to come: the client sees none.
                    call.finish(Code::Unknown);
                    body
                } else {
                    Body::new(MeteredBody { inner: body, call: Some(call) })
                }
            }))
        })
    }
}

const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

/// The code in a `grpc-status` header or trailer, if there is one. A value that is not a
/// number reads as `UNKNOWN`, like a client would read it.
fn status_code(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get(GRPC_STATUS)?;
    let code = value.to_str().ok().and_then(|v| v.parse::<i32>().ok()).map_or(Code::Unknown, Code::from_i32);
    Some(code)
}

/// One call being served: recorded once, when its status is known, or as `CANCELLED` when it
/// is dropped before that.
struct Call {
    metrics: Metrics,
    method: &'static str,
    started: Instant,
    recorded: bool,
}

impl Call {
    fn start(metrics: Metrics, method: &'static str) -> Self {
        Self { metrics, method, started: Instant::now(), recorded: false }
    }

    fn finish(mut self, code: Code) {
        self.record(code);
    }

    fn record(&mut self, code: Code) {
        if !self.recorded {
            self.recorded = true;
            self.metrics.observe_grpc(self.method, code, self.started.elapsed());
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.record(Code::Cancelled);
    }
}

/// A response body that records its call when the trailers go by.
struct MeteredBody {
    inner: Body,
    call: Option<Call>,
}

impl MeteredBody {
    fn finish(&mut self, code: Code) {
        if let Some(call) = self.call.take() {
            call.finish(code);
        }
    }
}

impl http_body::Body for MeteredBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    this.finish(status_code(trailers).unwrap_or(Code::Unknown));
                }
            }
            Poll::Ready(Some(Err(status))) => this.finish(status.code()),
            // The body ended without trailers: the client gets no status.
            Poll::Ready(None) => this.finish(Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::future::Ready;

    use http_body_util::{BodyExt, Full};

    use super::*;

    /// A gRPC service that answers every request with the response `answer` builds.
    #[derive(Clone)]
    struct Answer(fn() -> http::Response<Body>);

    impl Service<http::Request<()>> for Answer {
        type Response = http::Response<Body>;
        type Error = Infallible;
        type Future = Ready<Result<http::Response<Body>, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            std::future::ready(Ok((self.0)()))
        }
    }

    fn request(path: &str) -> http::Request<()> {
        http::Request::builder().uri(path).body(()).unwrap()
    }

    fn trailers(code: Code) -> http::HeaderMap {
        let mut trailers = http::HeaderMap::new();
        trailers.insert(GRPC_STATUS, (code as i32).into());
        trailers
    }

    /// A message, then trailers with `code`.
    fn streamed(code: Code) -> http::Response<Body> {
        let body = Full::new(Bytes::from_static(b"\0\0\0\0\x01x"))
            .with_trailers(std::future::ready(Some(Ok::<_, Infallible>(trailers(code)))));
        http::Response::new(Body::new(body))
    }

    fn count(metrics: &Metrics, method: &str, code: &str) -> Option<f64> {
        let series = format!(r#"tollgate_keyd_grpc_requests_total{{method="{method}",code="{code}"}}"#);
        metrics.encode().lines().find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
    }

    async fn serve(
        metrics: &Metrics,
        answer: fn() -> http::Response<Body>,
        path: &str,
    ) -> http::Response<Body> {
        metrics.grpc_layer().layer(Answer(answer)).call(request(path)).await.unwrap()
    }

    #[tokio::test]
    async fn a_trailers_only_answer_is_counted_when_it_is_returned() {
        let metrics = Metrics::new();
        let refused = || Status::unauthenticated("no token").into_http::<Body>();
        let response = serve(&metrics, refused, "/tollgate.keys.v1.KeyService/CreateKey").await;
        assert_eq!(count(&metrics, "CreateKey", "UNAUTHENTICATED"), Some(1.0));
        drop(response);
        let missing = || Status::unimplemented("").into_http::<Body>();
        serve(&metrics, missing, "/tollgate.keys.v1.KeyService/Nope").await;
        assert_eq!(count(&metrics, "unknown", "UNIMPLEMENTED"), Some(1.0));
    }

    #[tokio::test]
    async fn a_streamed_answer_is_counted_when_its_trailers_are_read() {
        let metrics = Metrics::new();
        let response =
            serve(&metrics, || streamed(Code::NotFound), "/tollgate.keys.v1.KeyService/GetKey").await;
        assert_eq!(count(&metrics, "GetKey", "NOT_FOUND"), None, "counted before the status was sent");
        let body = response.into_body().collect().await.unwrap();
        assert_eq!(body.trailers().and_then(status_code), Some(Code::NotFound), "trailers pass through");
        assert_eq!(count(&metrics, "GetKey", "NOT_FOUND"), Some(1.0));
        let text = metrics.encode();
        assert!(
            text.contains(r#"tollgate_keyd_grpc_request_duration_seconds_count{method="GetKey"} 1"#),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_call_dropped_before_its_status_is_cancelled() {
        let metrics = Metrics::new();
        let response =
            serve(&metrics, || streamed(Code::Ok), "/tollgate.keys.v1.KeyService/WatchChanges").await;
        drop(response);
        assert_eq!(count(&metrics, "WatchChanges", "CANCELLED"), Some(1.0));
        assert_eq!(count(&metrics, "WatchChanges", "OK"), None);
    }

    #[tokio::test]
    async fn health_and_reflection_are_not_counted() {
        let metrics = Metrics::new();
        for path in
            ["/grpc.health.v1.Health/Check", "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"]
        {
            serve(&metrics, || streamed(Code::Ok), path).await.into_body().collect().await.unwrap();
        }
        let text = metrics.encode();
        assert!(!text.contains("tollgate_keyd_grpc_requests_total{"), "{text}");
    }

    #[test]
    fn a_malformed_status_reads_as_unknown() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(status_code(&headers), None);
        headers.insert(GRPC_STATUS, http::HeaderValue::from_static("five"));
        assert_eq!(status_code(&headers), Some(Code::Unknown));
        headers.insert(GRPC_STATUS, http::HeaderValue::from_static("5"));
        assert_eq!(status_code(&headers), Some(Code::NotFound));
    }
}
