//! The transform filter in real Envoy: every operation seen by the upstream or the client, the
//! caller's identity from key-auth, the body cap, an event stream passing unbuffered, and an
//! invalid config refused.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tollgate_e2e::{Echo, Envoy, EnvoyOpts, Keyd, Value, eventually, json};

const STATS: &str = "wasmcustom.tollgate.transform.";
/// Bound on any wait for a stream; never an assertion about speed.
const BOUND: Duration = Duration::from_secs(15);

fn transform(config: &Value) -> Value {
    tollgate_e2e::wasm_filter(
        "transform",
        "tollgate.transform",
        &tollgate_e2e::wasm_module("tollgate_transform"),
        config,
    )
}

fn rules() -> Value {
    json!({
        "max_body_bytes": 2048,
        "on_oversize": "reject",
        "rules": [
            {
                "name": "v1-to-v2",
                "match": {"path_prefix": "/api/v1/"},
                "request": {
                    "path": {"regex": "^/api/v1/(.*)$", "replace": "/v2/$1"},
                    "headers": [
                        {"op": "set", "name": "x-original-path", "value": "{path}"},
                        {"op": "add", "name": "x-api-version", "value": "2"},
                        {"op": "add", "name": "x-kept", "value": "not-used"},
                        {"op": "append", "name": "x-tags", "value": "gw"},
                        {"op": "rename", "name": "x-old", "to": "x-new"},
                        {"op": "replace", "name": "x-mode", "value": "{query.mode}-checked"},
                        {"op": "remove", "name": "x-debug"}
                    ],
                    "query": [
                        {"op": "remove", "name": "debug"},
                        {"op": "rename", "name": "page_size", "to": "limit"},
                        {"op": "set", "name": "client", "value": "{header.x-client}"}
                    ],
                    "body": [
                        {"op": "set", "path": "meta.client", "value": "{header.x-client}"},
                        {"op": "set", "path": "/meta/count", "value": "{query.n}", "type": "number"},
                        {"op": "remove", "path": "password"}
                    ]
                },
                "response": {
                    "headers": [{"op": "set", "name": "x-transformed", "value": "{method}"}],
                    "body": [{"op": "remove", "path": "instance"}, {"op": "remove", "path": "headers.x-client"}]
                }
            },
            {
                "name": "legacy",
                "match": {"path_prefix": "/legacy/", "methods": ["GET"]},
                "request": {"method": "POST", "host": "legacy.internal"},
                "response": {"status": {"404": 200}}
            }
        ]
    })
}

#[tokio::test]
async fn every_operation_is_visible_upstream_and_at_the_client() {
    let echo = Echo::start();
    let envoy = Envoy::start(EnvoyOpts::new(echo.addr()).http_filter(transform(&rules()))).await;

    let body = json!({"name": "bob", "password": "hunter2"});
    let res = envoy
        .post("/api/v1/users?debug=1&page_size=5&mode=fast&n=3")
        .header("x-client", "web")
        .header("x-kept", "mine")
        .header("x-tags", "client")
        .header("x-old", "moved")
        .header("x-mode", "slow")
        .header("x-debug", "1")
        .json(&body)
        .send()
        .await;
    assert_eq!(res.status, 200, "{}", res.text());

    // Upstream: path, query, headers and body as the rule says.
    let seen = echo.last_request().unwrap();
    assert_eq!(seen.path, "/v2/users");
    assert_eq!(seen.query, "limit=5&mode=fast&n=3&client=web");
    assert_eq!(seen.header("x-original-path"), Some("/api/v1/users"));
    assert_eq!(seen.header("x-api-version"), Some("2"));
    assert_eq!(seen.header("x-kept"), Some("mine"), "add never overwrites");
    assert_eq!(seen.header("x-tags"), Some("client, gw"), "append keeps the client's value");
    assert_eq!((seen.header("x-old"), seen.header("x-new")), (None, Some("moved")));
    assert_eq!(seen.header("x-mode"), Some("fast-checked"));
    assert_eq!(seen.header("x-debug"), None);
    let sent: Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(sent, json!({"name": "bob", "meta": {"client": "web", "count": 3}}));
    // The announced length was dropped when the body was buffered: chunked framing, never a
    // stale length.
    assert_eq!(seen.header("content-length"), None);
    assert_eq!(seen.header("transfer-encoding"), Some("chunked"));

    // Client: the response header is set and the response fields are gone.
    assert_eq!(res.header("x-transformed"), Some("POST"));
    let doc = res.json();
    assert!(doc.get("instance").is_none(), "{doc}");
    assert!(doc["headers"].get("x-client").is_none(), "{doc}");
    assert_eq!(doc["path"], "/v2/users");
    assert!(res.header("content-length").is_none_or(|l| l == res.body.len().to_string()));

    // Method, host and status mapping.
    let res = envoy.get("/legacy/status/404").send().await;
    assert_eq!(res.status, 200, "404 mapped to 200: {}", res.text());
    let seen = echo.last_request().unwrap();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.header("host"), Some("legacy.internal"));

    // A request no rule matches is left alone.
    let res = envoy.get("/other?debug=1").header("x-debug", "1").send().await;
    assert_eq!(res.status, 200);
    let seen = echo.last_request().unwrap();
    assert_eq!(
        (seen.path.as_str(), seen.query.as_str(), seen.header("x-debug")),
        ("/other", "debug=1", Some("1"))
    );
    assert!(res.json().get("instance").is_some());

    // Over the cap: 413 with the uniform body, nothing reaches the upstream.
    let before = echo.requests();
    let big = json!({"padding": "x".repeat(4096)});
    let res = envoy.post("/api/v1/users").json(&big).send().await;
    assert_eq!(res.status, 413, "{}", res.text());
    assert_eq!(res.json()["error"], "payload_too_large");
    assert!(res.json()["request_id"].as_str().is_some_and(|id| !id.is_empty()));
    assert_eq!(echo.requests(), before);

    // Malformed JSON passes through untouched (the default), never truncated.
    let broken = r#"{"name": "bob", "password": "#;
    let res =
        envoy.post("/api/v1/users").header("content-type", "application/json").body(broken).send().await;
    assert_eq!(res.status, 200);
    assert_eq!(echo.last_request().unwrap().body, broken.as_bytes());

    let counted = eventually(Duration::from_secs(5), || async {
        envoy.stat(&format!("{STATS}rejected")).await == Some(1)
            && envoy.stat(&format!("{STATS}invalid_json")).await == Some(1)
            && envoy.stat(&format!("{STATS}body_transformed")).await >= Some(2)
    })
    .await;
    assert!(counted, "{:?}", envoy.stats("transform").await);
}

#[tokio::test]
async fn identity_from_key_auth_becomes_a_header_and_a_body_field() {
    let echo = Echo::start();
    let keyd = Keyd::start_temp().await;
    let config = json!({"rules": [{
        "name": "identity",
        "request": {
            "headers": [
                {"op": "set", "name": "x-consumer", "value": "{identity.consumer_id}"},
                {"op": "set", "name": "x-caller", "value": "{identity.key_id}@{client_ip}"}
            ],
            "body": [{"op": "set", "path": "owner", "value": "{identity.consumer_id}"}]
        }
    }]});
    let envoy = Envoy::start(
        EnvoyOpts::new(echo.addr())
            .key_auth(keyd.key_auth_config())
            .keyd(keyd.addr())
            .http_filter(transform(&config)),
    )
    .await;
    let (key_id, key) = keyd.create_key("alice", &[]).await;

    let res = envoy.post("/orders").header("x-api-key", &key).json(&json!({"item": 1})).send().await;
    assert_eq!(res.status, 200, "{}", res.text());
    let seen = echo.last_request().unwrap();
    assert_eq!(seen.header("x-consumer"), Some("alice"));
    assert_eq!(seen.header("x-caller"), Some(format!("{key_id}@127.0.0.1").as_str()));
    assert_eq!(serde_json::from_slice::<Value>(&seen.body).unwrap(), json!({"item": 1, "owner": "alice"}));
}

/// An upstream that sends one event, then waits for the test to let it finish the stream.
async fn gated_event_stream() -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (open, gate) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = socket.read(&mut buf).await.unwrap();
            assert!(n > 0, "request ended early");
            request.extend_from_slice(&buf[..n]);
        }
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
        let chunk = |data: &str| format!("{:x}\r\n{data}\r\n", data.len());
        socket.write_all(head.as_bytes()).await.unwrap();
        socket.write_all(chunk("data: {\"n\":1}\n\n").as_bytes()).await.unwrap();
        socket.flush().await.unwrap();
        let _ = gate.await;
        socket.write_all(chunk("data: {\"n\":2}\n\n").as_bytes()).await.unwrap();
        socket.write_all(b"0\r\n\r\n").await.unwrap();
        socket.flush().await.unwrap();
    });
    (addr, open)
}

/// Reads from `stream` into `seen` until `needle` appears; `false` when the stream ends or the
/// bound passes first.
async fn read_until(stream: &mut TcpStream, seen: &mut Vec<u8>, needle: &str) -> bool {
    let found = |seen: &[u8]| String::from_utf8_lossy(seen).contains(needle);
    let read = async {
        let mut buf = [0u8; 4096];
        while !found(seen) {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        true
    };
    tokio::time::timeout(BOUND, read).await.unwrap_or(false)
}

#[tokio::test]
async fn event_stream_passes_unbuffered_despite_body_rules() {
    let (upstream, open_gate) = gated_event_stream().await;
    let config = json!({"rules": [{"response": {"body": [{"op": "remove", "path": "n"}]}}]});
    let envoy = Envoy::start(EnvoyOpts::new(upstream).http_filter(transform(&config))).await;

    let mut stream = TcpStream::connect(envoy.addr()).await.unwrap();
    stream.write_all(b"GET /events HTTP/1.1\r\nhost: gw\r\naccept: text/event-stream\r\n\r\n").await.unwrap();
    let mut seen = Vec::new();
    // The upstream holds the stream open until the gate opens: had the filter buffered the
    // body, the first event could not arrive here.
    assert!(
        read_until(&mut stream, &mut seen, "data: {\"n\":1}").await,
        "{}",
        String::from_utf8_lossy(&seen)
    );
    assert!(!String::from_utf8_lossy(&seen).contains("\"n\":2"));
    open_gate.send(()).unwrap();
    assert!(
        read_until(&mut stream, &mut seen, "data: {\"n\":2}").await,
        "{}",
        String::from_utf8_lossy(&seen)
    );
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("text/event-stream"), "{text}");

    let counted = eventually(Duration::from_secs(5), || async {
        envoy.stat(&format!("{STATS}body_skipped_not_json")).await == Some(1)
    })
    .await;
    assert!(counted, "{:?}", envoy.stats("transform").await);
}

#[tokio::test]
async fn invalid_config_is_refused_naming_the_rule_and_field() {
    let echo = Echo::start();
    let config = json!({"rules": [{"name": "broken-rewrite", "request": {
        "path": {"regex": "^/v1/(.*", "replace": "/v2/$1"}
    }}]});
    let log = Envoy::expect_refusal(EnvoyOpts::new(echo.addr()).http_filter(transform(&config))).await;
    assert!(log.contains("rule `broken-rewrite`"), "{log}");
    assert!(log.contains("rules[0].request.path.regex"), "{log}");

    let log = Envoy::expect_refusal(EnvoyOpts::new(echo.addr()).http_filter(transform(
        &json!({"rules": [{"name": "t", "request": {"headers": [
            {"op": "set", "name": "x-a", "value": "{identity}"}
        ]}}]}),
    )))
    .await;
    assert!(
        log.contains("rules[0].request.headers[0].value") && log.contains("unknown placeholder"),
        "{log}"
    );
}
