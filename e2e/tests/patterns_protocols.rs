//! `examples/protocols`: WebSocket, gRPC unary and server streaming, and server-sent events, all
//! through the key-auth filter.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio_stream::wrappers::TcpListenerStream;
use tollgate_e2e::patterns::{WebSocket, render_template, start_yaml};
use tollgate_e2e::{Echo, Envoy, Keyd};
use tonic::metadata::MetadataValue;
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const SERVICE: &str = "tollgate.demo.Orders";

struct Setup {
    envoy: Envoy,
    keyd: Keyd,
    _web: Echo,
    reporter: tonic_health::server::HealthReporter,
}

async fn setup() -> Setup {
    let web = Echo::start_named("web");
    // A real gRPC upstream: the standard health service, with unary Check and streaming Watch.
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter.set_service_status(SERVICE, ServingStatus::Serving).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_port = listener.local_addr().unwrap().port();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let keyd = Keyd::start_temp().await;
    let yaml = render_template(
        "examples/protocols/envoy.yaml",
        &[
            ("UPSTREAM_A_PORT", web.port()),
            ("UPSTREAM_B_PORT", grpc_port.to_string()),
            ("KEYD_PORT", keyd.addr().port().to_string()),
        ],
    );
    let envoy = start_yaml(&yaml, 2).await;
    Setup { envoy, keyd, _web: web, reporter }
}

#[tokio::test]
async fn websocket_upgrade_goes_through_key_auth() {
    let s = setup().await;
    let (_, key) = s.keyd.create_key("alice", &[]).await;
    let addr = s.envoy.addr();

    let denied = WebSocket::connect(addr, "/ws/chat", &[]).await.err().expect("no key, no upgrade");
    assert!(denied.starts_with("HTTP/1.1 401"), "{denied}");

    let mut ws = WebSocket::connect(addr, "/ws/chat", &[("x-api-key", &key)]).await.unwrap();
    assert!(
        ws.handshake.to_ascii_lowercase().contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{}",
        ws.handshake
    );
    for i in 0..5 {
        let msg = format!("hello {i}");
        assert_eq!(ws.roundtrip(&msg).await.unwrap(), msg);
    }
    ws.close().await.unwrap();
}

#[tokio::test]
async fn grpc_unary_and_streaming_calls_go_through_key_auth() {
    let s = setup().await;
    let (_, key) = s.keyd.create_key("alice", &[]).await;
    let channel = tonic::transport::Channel::from_shared(s.envoy.url("")).unwrap().connect().await.unwrap();
    let mut client = HealthClient::new(channel);
    let request = |key: Option<&str>| {
        let mut req = tonic::Request::new(HealthCheckRequest { service: SERVICE.to_owned() });
        if let Some(key) = key {
            req.metadata_mut().insert("x-api-key", MetadataValue::try_from(key).unwrap());
        }
        req
    };

    // No key: the call fails as unauthenticated (HTTP 401 from key-auth).
    let denied = client.check(request(None)).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::Unauthenticated, "{denied:?}");

    // Unary.
    let res = client.check(request(Some(&key))).await.unwrap().into_inner();
    assert_eq!(res.status, ServingStatus::Serving as i32);

    // Server streaming: the first status now, the next when it changes.
    let mut stream = client.watch(request(Some(&key))).await.unwrap().into_inner();
    let first =
        tokio::time::timeout(Duration::from_secs(10), stream.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);
    s.reporter.set_service_status(SERVICE, ServingStatus::NotServing).await;
    let second =
        tokio::time::timeout(Duration::from_secs(10), stream.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(second.status, ServingStatus::NotServing as i32);
}

#[tokio::test]
async fn sse_events_stream_through_the_filters_without_buffering() {
    let s = setup().await;
    let (_, key) = s.keyd.create_key("alice", &[]).await;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();

    let denied = client
        .request(hyper::Request::get(s.envoy.url("/events")).body(Full::default()).unwrap())
        .await
        .unwrap();
    assert_eq!(denied.status(), 401);

    // 3 events, 1.5 s apart.
    let req = hyper::Request::get(s.envoy.url("/events?events=3&interval_ms=1500"))
        .header("x-api-key", &key)
        .body(Full::default())
        .unwrap();
    let res = tokio::time::timeout(Duration::from_secs(10), client.request(req)).await.unwrap().unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut body = res.into_body();
    let mut text = String::new();
    // The first event arrives alone: the stream is still open, the later events not yet written.
    while !text.contains("\n\n") {
        let frame =
            tokio::time::timeout(Duration::from_secs(10), body.frame()).await.unwrap().unwrap().unwrap();
        if let Ok(data) = frame.into_data() {
            text.push_str(&String::from_utf8_lossy(&data));
        }
    }
    assert!(text.starts_with("data: {\"n\":0}\n"), "{text}");
    assert!(!text.contains("\"n\":1"), "events were held back and delivered together: {text}");
    // The rest follow, then the stream ends.
    let rest =
        tokio::time::timeout(Duration::from_secs(10), body.collect()).await.unwrap().unwrap().to_bytes();
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.contains("data: {\"n\":1}\n") && rest.contains("data: {\"n\":2}\n"), "{rest}");
}
