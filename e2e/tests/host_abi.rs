//! `EnvoyHost` in real Envoy when Envoy refuses a host call. The probe module (`e2e/probe`)
//! makes, through `EnvoyHost`, calls that Envoy refuses in the callback at hand — a header map or
//! body that does not exist there, a write into the middle of a buffered body, filter state from
//! the root context, a context that is gone, callouts Envoy will not start — and reports what
//! each answered in `x-probe-<call>` response headers.
//!
//! A host call that panics on a refusal kills the VM: that request fails and, from then on, so
//! does every request through the filter. So every test here sends several requests and asserts
//! that each is answered, that each refused call came back as an error (and each control call,
//! which Envoy accepts, as a success), that a plain request still goes through afterwards, and
//! that Envoy's log holds no panic.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::header::HeaderValue;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tollgate_e2e::{Echo, Envoy, EnvoyOpts, json, static_cluster, wasm_filter, wasm_module};

/// Requests of each kind a test sends (each one must be answered).
const ROUNDS: usize = 3;

/// What the probe reports for `/refusals`: `(call, answer)`. `some`/`ok` for the controls Envoy
/// accepts, `none`/`error` for every call Envoy refuses.
const REFUSALS: &[(&str, &str)] = &[
    // While the request headers are processed. Controls first.
    ("get-request-header", "some"),
    ("set-request-header", "ok"),
    ("set-property", "ok"),
    // No response headers yet: Envoy answers BadArgument for any access to that map.
    ("get-response-header", "none"),
    ("get-response-headers", "none"),
    ("set-response-header", "error"),
    ("remove-response-header", "error"),
    ("add-response-header", "error"),
    // No body buffered (a GET): reads are empty, writes are refused (BadArgument).
    ("get-request-body", "none"),
    ("set-request-body", "error"),
    ("set-response-body", "error"),
    // No callout response is being delivered (BadArgument for the header map, NotFound for the
    // body).
    ("get-call-header", "none"),
    ("get-call-body", "none"),
    ("get-grpc-body", "none"),
    ("get-grpc-message", "none"),
    ("get-shared-missing", "none"),
    // The previous request's context is gone (BadArgument); the root context exists but has no
    // stream: no request headers (BadArgument), no filter state (NotFound).
    ("effective-gone", "error"),
    ("effective-root", "ok"),
    ("root-get-request-header", "none"),
    ("root-set-property", "error"),
    ("effective-back", "ok"),
    // Callouts Envoy will not start: an unknown cluster (gRPC: ParseFailure; HTTP:
    // BadArgument), a cluster argument Envoy would read as a service config (refused before the
    // call), an HTTP call without `:path` (BadArgument).
    ("grpc-unknown-cluster", "error"),
    ("grpc-config-cluster", "error"),
    ("http-unknown-cluster", "error"),
    ("http-no-path", "error"),
    // While the response headers are processed: the request went upstream, so its headers and
    // body are gone (BadArgument), and the response body does not exist yet (BadArgument).
    ("late-get-request-header", "none"),
    ("late-set-request-header", "error"),
    ("late-add-request-header", "error"),
    ("late-set-request-body", "error"),
    ("late-set-response-body", "error"),
    ("late-get-response-header", "some"),
];

/// Envoy with the probe module in front of `echo`.
fn probe(echo: &Echo) -> EnvoyOpts {
    EnvoyOpts::new(echo.addr()).http_filter(wasm_filter(
        "probe",
        "probe",
        &wasm_module("tollgate_host_probe"),
        &json!({}),
    ))
}

/// Every `x-probe-*` header of a response, in order, as `(call, answer)`.
fn report(res: &tollgate_e2e::Response) -> Vec<(String, String)> {
    res.headers
        .iter()
        .filter_map(|(name, value)| {
            let call = name.as_str().strip_prefix("x-probe-")?;
            Some((call.to_owned(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
        })
        .collect()
}

fn expected(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(c, a)| ((*c).to_owned(), (*a).to_owned())).collect()
}

/// A request that makes no host call goes through (the VM still answers), and Envoy's log
/// shows no panic (the filters' panic hook logs "tollgate filter panicked") and no VM call that
/// failed ("Function: proxy_on_… failed: Uncaught RuntimeError").
async fn assert_alive(envoy: &Envoy) {
    let res = envoy.get("/plain").send().await;
    assert_eq!(res.status, 200, "a plain request after the probes: {}", res.text());
    assert_eq!(res.json()["path"], "/plain");
    let logs = envoy.logs();
    for sign in ["panicked", "Uncaught"] {
        assert!(!logs.contains(sign), "Envoy's log shows {sign:?}:\n{logs}");
    }
}

#[tokio::test]
async fn calls_envoy_refuses_while_headers_are_processed_come_back_as_errors() {
    let echo = Echo::start();
    let envoy = Envoy::start(probe(&echo)).await;
    for round in 0..ROUNDS {
        let res = envoy.get("/refusals").send().await;
        assert_eq!(res.status, 200, "round {round}: {}", res.text());
        // The request went upstream with the header the probe set.
        assert_eq!(res.json()["headers"]["x-probe"], "1", "round {round}");
        assert_eq!(report(&res), expected(REFUSALS), "round {round}");
    }
    assert_alive(&envoy).await;
}

#[tokio::test]
async fn a_write_into_the_middle_of_a_buffered_body_is_refused() {
    let echo = Echo::start();
    let envoy = Envoy::start(probe(&echo)).await;
    for round in 0..ROUNDS {
        let res = envoy.post("/body").body("hello world").send().await;
        assert_eq!(res.status, 200, "round {round}: {}", res.text());
        assert_eq!(res.json()["body"], "hello world", "round {round}: the body went up unchanged");
        // Envoy replaces from the start or appends; anything else is BadArgument. A read past
        // the end is empty and a write there appends (here nothing).
        let want = [
            ("body-get", "some"),
            ("body-set-middle", "error"),
            ("body-get-past-end", "none"),
            ("body-set-past-end", "ok"),
        ];
        assert_eq!(report(&res), expected(&want), "round {round}");
    }
    assert_alive(&envoy).await;
}

/// A gRPC upstream whose every call fails with status 13 and this `grpc-message` (raw bytes,
/// sent as a trailers-only response).
async fn failing_grpc_upstream(message: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |_: Request<hyper::body::Incoming>| async move {
                        let mut res = Response::new(Empty::<Bytes>::new());
                        let headers = res.headers_mut();
                        headers.insert("content-type", HeaderValue::from_static("application/grpc"));
                        headers.insert("grpc-status", HeaderValue::from_static("13"));
                        headers.insert("grpc-message", HeaderValue::from_bytes(message).unwrap());
                        Ok::<_, Infallible>(res)
                    });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(socket), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_grpc_status_message_that_is_not_utf8_reaches_the_filter_with_its_bad_bytes_replaced() {
    let grpc = failing_grpc_upstream(&[0xff, 0xfe, b'!']).await;
    let echo = Echo::start();
    let envoy = Envoy::start(probe(&echo).cluster(static_cluster("probe_grpc", grpc, true))).await;
    for round in 0..ROUNDS {
        let res = envoy.get("/grpc").send().await;
        assert_eq!(res.status, 200, "round {round}: {}", res.text());
        let report = report(&res);
        let answer = |call: &str| report.iter().find(|(c, _)| c == call).map(|(_, a)| a.as_str());
        assert_eq!(answer("grpc-call"), Some("ok"), "round {round}: {report:?}");
        assert_eq!(answer("grpc-status"), Some("13"), "round {round}: {report:?}");
        // U+FFFD twice (ef bf bd), then "!" (21); Envoy may append details of its own.
        let message = answer("grpc-message").unwrap_or_default();
        assert!(message.starts_with("efbfbdefbfbd21"), "round {round}: message {message}");
        assert_eq!(answer("grpc-resume"), Some("ok"), "round {round}: {report:?}");
    }
    assert_alive(&envoy).await;
}

#[tokio::test]
async fn calls_envoy_accepts_out_of_place_leave_the_vm_alive() {
    // Envoy answers Ok to both (it has no refusal for them): a second local reply is dropped,
    // resuming a request that is not paused does nothing.
    let echo = Echo::start();
    let envoy = Envoy::start(probe(&echo)).await;
    for round in 0..ROUNDS {
        let res = envoy.get("/local-reply-twice").send().await;
        assert_eq!((res.status, res.text().as_str()), (418, "first"), "round {round}");
        assert_eq!(report(&res), expected(&[("send-first", "ok"), ("send-second", "ok")]), "round {round}");

        let res = envoy.get("/resume-unpaused").send().await;
        assert_eq!(res.status, 200, "round {round}: {}", res.text());
        assert_eq!(res.json()["path"], "/resume-unpaused", "round {round}");
        assert_eq!(report(&res), expected(&[("resume-unpaused", "ok")]), "round {round}");
    }
    assert_alive(&envoy).await;
}
