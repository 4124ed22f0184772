//! `examples/discovery`: STRICT_DNS through `localhost`, and endpoints from a file Envoy watches:
//! an endpoint added to the file gets traffic without a restart.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use tollgate_e2e::patterns::{render_template, render_text, replace_file, start_yaml};
use tollgate_e2e::{Echo, HttpClient, eventually, workspace_root};

#[tokio::test]
async fn strict_dns_resolves_localhost_and_an_endpoint_added_to_the_eds_file_gets_traffic() {
    let (a, b) = (Echo::start_named("a"), Echo::start_named("b"));
    let xds = tempfile::tempdir().unwrap();
    let endpoints = xds.path().join("endpoints.yaml");
    let shipped =
        std::fs::read_to_string(workspace_root().join("examples/discovery/endpoints.yaml")).unwrap();
    std::fs::write(&endpoints, render_text(&shipped, &[("UPSTREAM_A_PORT", a.port())])).unwrap();
    let yaml = render_template(
        "examples/discovery/envoy.yaml",
        &[("UPSTREAM_A_PORT", a.port()), ("XDS_DIR", xds.path().to_string_lossy().into_owned())],
    );
    let envoy = start_yaml(&yaml, 1).await;
    let client = HttpClient::new();

    // STRICT_DNS: `localhost` resolved to the instance.
    let res = client.get(envoy.url("/dns/x")).send().await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.header("x-echo-instance"), Some("a"));

    // EDS from the file: only a so far.
    for _ in 0..10 {
        let res = client.get(envoy.url("/svc")).send().await;
        assert_eq!(res.header("x-echo-instance"), Some("a"), "{}", res.text());
    }
    assert_eq!(b.requests(), 0);

    // Add b to the file (written beside it, then moved into place).
    let both = shipped.replace(
        "          - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: __UPSTREAM_A_PORT__ } } }\n",
        "          - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: __UPSTREAM_A_PORT__ } } }\n          - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: __UPSTREAM_B_PORT__ } } }\n",
    ).replace("version_info: \"1\"", "version_info: \"2\"");
    assert_ne!(both, shipped);
    replace_file(
        &endpoints,
        &render_text(&both, &[("UPSTREAM_A_PORT", a.port()), ("UPSTREAM_B_PORT", b.port())]),
    );

    let reached = eventually(Duration::from_secs(10), || async {
        let res = client.get(envoy.url("/svc")).send().await;
        res.status == 200 && res.header("x-echo-instance") == Some("b")
    })
    .await;
    assert!(reached, "b never got traffic after it was added to the file");
    // From now on both share the traffic.
    a.reset();
    b.reset();
    for _ in 0..20 {
        assert_eq!(client.get(envoy.url("/svc")).send().await.status, 200);
    }
    assert_eq!((a.requests(), b.requests()), (10, 10));
}
