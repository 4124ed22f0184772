//! `examples/routing`: routing by host, path prefix, path regex, header and method, and a
//! per-route timeout, against three real upstreams.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use tollgate_e2e::patterns::{render_template, start_yaml};
use tollgate_e2e::{Echo, HttpClient, RawRequest};

/// (method, path, extra headers, expected instance)
type Case = (&'static str, &'static str, &'static [(&'static str, &'static str)], &'static str);

#[tokio::test]
async fn requests_route_by_host_path_regex_header_and_method_with_per_route_timeouts() {
    let (a, b, c) = (Echo::start_named("a"), Echo::start_named("b"), Echo::start_named("c"));
    let yaml = render_template(
        "examples/routing/envoy.yaml",
        &[("UPSTREAM_A_PORT", a.port()), ("UPSTREAM_B_PORT", b.port()), ("UPSTREAM_C_PORT", c.port())],
    );
    let envoy = start_yaml(&yaml, 1).await;
    let client = HttpClient::new();

    let cases: &[Case] = &[
        ("GET", "/", &[], "a"),
        ("GET", "/anything/else", &[], "a"),
        ("GET", "/", &[("host", "admin.example.com")], "c"),
        ("POST", "/users/7", &[("host", "admin.example.com")], "c"),
        ("GET", "/orders/42", &[], "a"),
        ("POST", "/orders", &[], "b"),
        ("GET", "/users/123", &[], "b"),
        ("GET", "/users/abc", &[], "a"),
        ("GET", "/users/123/photos", &[], "a"),
        ("GET", "/catalog", &[("x-beta", "1")], "c"),
        ("GET", "/catalog", &[("x-beta", "0")], "a"),
    ];
    for (method, path, headers, want) in cases {
        let res = client
            .request(method.parse().unwrap(), envoy.url(path))
            .headers(headers.iter().copied())
            .send()
            .await;
        assert_eq!(res.status, 200, "{method} {path} {headers:?}: {}", res.text());
        assert_eq!(res.header("x-echo-instance"), Some(*want), "{method} {path} {headers:?}");
        assert_eq!(res.json()["path"], *path);
    }

    // Per-route timeout: /delay/ allows 500 ms.
    let fast = client.get(envoy.url("/delay/50")).send().await;
    assert_eq!(fast.status, 200, "{}", fast.text());
    let slow = client.get(envoy.url("/delay/3000")).timeout(Duration::from_secs(10)).send().await;
    assert_eq!(slow.status, 504, "{}", slow.text());
    assert_eq!(slow.text(), "upstream request timeout");
    // The default route's timeout (15 s) lets the same delay through elsewhere.
    let elsewhere = client.get(envoy.url("/delay/700")).header("x-beta", "1").send().await;
    assert_eq!(elsewhere.status, 200, "{}", elsewhere.text());
    assert_eq!(elsewhere.header("x-echo-instance"), Some("c"));
    assert_eq!(envoy.stat("cluster.service_a.upstream_rq_timeout").await, Some(1));
}

/// The shipped configs normalise paths before routing: `/users/x/../123` reaches the route of
/// `/users/123`, `//orders/42` that of `/orders/42`, and an encoded slash is refused.
#[tokio::test]
async fn the_shipped_config_routes_on_the_normalised_path() {
    let (a, b, c) = (Echo::start_named("a"), Echo::start_named("b"), Echo::start_named("c"));
    let yaml = render_template(
        "examples/routing/envoy.yaml",
        &[("UPSTREAM_A_PORT", a.port()), ("UPSTREAM_B_PORT", b.port()), ("UPSTREAM_C_PORT", c.port())],
    );
    let envoy = start_yaml(&yaml, 1).await;
    for (spelling, normal, want) in [
        ("/users/x/../123", "/users/123", "b"),
        ("//users//123", "/users/123", "b"),
        ("/%75sers/123", "/users/123", "b"),
    ] {
        let res = RawRequest::get(spelling).send(envoy.addr()).await.unwrap();
        assert_eq!(res.status, 200, "{spelling}: {}", res.text());
        assert_eq!(res.header("x-echo-instance").as_deref(), Some(want), "{spelling}");
        assert_eq!(res.json()["path"], normal, "the upstream sees the normalised path");
    }
    let res = RawRequest::get("/users%2F123").send(envoy.addr()).await.unwrap();
    assert_eq!(res.status, 400, "an encoded slash is refused: {}", res.text());
}

/// Every HTTP connection manager Tollgate ships normalises paths the way the filters' rules do.
#[test]
fn every_shipped_connection_manager_normalises_paths() {
    let root = tollgate_e2e::workspace_root();
    let mut files = vec![root.join("envoy/quickstart.yaml"), root.join("envoy/gateway.yaml")];
    for entry in std::fs::read_dir(root.join("examples")).unwrap() {
        let path = entry.unwrap().path().join("envoy.yaml");
        if path.exists() {
            files.push(path);
        }
    }
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let managers = text.matches("http_connection_manager.v3.HttpConnectionManager").count();
        for setting in [
            "normalize_path: true",
            "merge_slashes: true",
            "path_with_escaped_slashes_action: REJECT_REQUEST",
        ] {
            assert_eq!(text.matches(setting).count(), managers, "{}: `{setting}`", file.display());
        }
    }
}
