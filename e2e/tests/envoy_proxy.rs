//! Envoy itself, without Tollgate filters: the harness's baseline.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use tollgate_e2e::{Echo, Envoy, EnvoyOpts, HttpClient, eventually, render_envoy_template};

#[tokio::test]
async fn echo_upstream_answers_and_counts_requests() {
    let echo = Echo::start();
    let res = HttpClient::new().post(echo.url("/a/b?x=1")).header("X-Test", "yes").body("hi").send().await;
    assert_eq!(res.status, 200);
    assert_eq!(res.header("x-echo-instance"), Some("echo"));
    let doc = res.json();
    assert_eq!(doc["method"], "POST");
    assert_eq!(doc["path"], "/a/b");
    assert_eq!(doc["query"], "x=1");
    assert_eq!(doc["headers"]["x-test"], "yes");
    assert_eq!(doc["body"], "hi");
    assert_eq!(echo.requests(), 1);
    assert_eq!(echo.last_request().unwrap().header("X-Test"), Some("yes"));

    let res = HttpClient::new().get(echo.url("/status/503")).send().await;
    assert_eq!(res.status, 503);
    assert_eq!(echo.requests(), 2);
}

#[tokio::test]
async fn envoy_without_filters_proxies_to_the_upstream() {
    let echo = Echo::start();
    let envoy = Envoy::start(EnvoyOpts::new(echo.addr())).await;

    let res = envoy.get("/hello?name=tollgate").header("x-custom", "1").send().await;
    assert_eq!(res.status, 200, "{}", res.text());
    let doc = res.json();
    assert_eq!(doc["path"], "/hello");
    assert_eq!(doc["query"], "name=tollgate");
    assert_eq!(doc["headers"]["x-custom"], "1");
    // The connection manager gives every request an id.
    assert!(doc["headers"]["x-request-id"].as_str().is_some_and(|id| !id.is_empty()), "{doc}");
    assert_eq!(echo.requests(), 1);

    // Stats and the access log are written when the stream ends, maybe just after the client
    // has its response.
    let counted = eventually(Duration::from_secs(5), || async {
        envoy.stat("http.gateway.downstream_rq_2xx").await == Some(1)
    })
    .await;
    assert!(counted, "{:?}", envoy.stats("downstream_rq").await);
    let logged = eventually(Duration::from_secs(5), || async {
        envoy.access_log().contains("GET /hello?name=tollgate 200")
    })
    .await;
    assert!(logged, "{}", envoy.access_log());
}

#[tokio::test]
async fn envoy_with_two_workers_starts_and_proxies() {
    let echo = Echo::start();
    let envoy = Envoy::start(EnvoyOpts::new(echo.addr()).workers(2)).await;

    let info: serde_json::Value = serde_json::from_str(&envoy.admin_get("/server_info").await).unwrap();
    assert_eq!(info["command_line_options"]["concurrency"], 2, "{info}");

    let client = HttpClient::fresh_connections();
    for i in 0..20 {
        let res = client.get(envoy.url(&format!("/n/{i}"))).send().await;
        assert_eq!(res.status, 200);
        assert_eq!(res.json()["path"], format!("/n/{i}"));
    }
    assert_eq!(echo.requests(), 20);
}

#[tokio::test]
async fn several_envoys_run_side_by_side() {
    let first = Echo::start_named("first");
    let second = Echo::start_named("second");
    let (a, b) =
        tokio::join!(Envoy::start(EnvoyOpts::new(first.addr())), Envoy::start(EnvoyOpts::new(second.addr())));
    assert_ne!(a.addr(), b.addr());
    assert_eq!(a.get("/").send().await.json()["instance"], "first");
    assert_eq!(b.get("/").send().await.json()["instance"], "second");
}

#[tokio::test]
async fn envoy_refusing_a_config_reports_its_log() {
    let echo = Echo::start();
    let mut config = EnvoyOpts::new(echo.addr()).render();
    let route = &mut config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        ["route_config"]["virtual_hosts"][0]["routes"][0]["route"];
    route["cluster"] = "no_such_cluster".into();

    let err = match Envoy::start_config(&config, 1, &[]).await {
        Ok(_) => panic!("Envoy accepted a route to an unknown cluster"),
        Err(log) => log,
    };
    assert!(err.contains("no_such_cluster"), "{err}");
}

#[test]
fn quickstart_config_validates() {
    let dir = tempfile::tempdir().unwrap();
    let rendered =
        render_envoy_template(Path::new("envoy/quickstart.yaml"), dir.path(), tollgate_e2e::DATAPLANE_TOKEN);
    let text = std::fs::read_to_string(&rendered).unwrap();
    assert!(text.contains(tollgate_e2e::DATAPLANE_TOKEN), "{text}");
    if let Err(output) = Envoy::validate(&rendered) {
        panic!("envoy --mode validate rejected envoy/quickstart.yaml:\n{output}");
    }
}

#[test]
fn validate_rejects_a_broken_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.yaml");
    std::fs::write(&path, "static_resources:\n  clusters:\n    - name: x\n      no_such_field: 1\n").unwrap();
    let err = Envoy::validate(&path).unwrap_err();
    assert!(err.contains("no_such_field"), "{err}");
}
