//! `examples/health-checks`: an instance failing its health check stops receiving traffic and
//! gets it back when it passes again.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use tollgate_e2e::patterns::{host_health, render_template, start_yaml, tally};
use tollgate_e2e::{Echo, Envoy, HttpClient, eventually};

async fn healthy(envoy: &Envoy, backend: &Echo) -> Option<bool> {
    host_health(envoy, "service").await.into_iter().find(|(addr, _)| *addr == backend.addr()).map(|(_, h)| h)
}

async fn spread(envoy: &Envoy, client: &HttpClient, n: usize) -> std::collections::BTreeMap<String, usize> {
    let mut seen = Vec::new();
    for _ in 0..n {
        let res = client.get(envoy.url("/jobs")).send().await;
        assert_eq!(res.status, 200, "{}", res.text());
        seen.push(res.header("x-echo-instance").unwrap().to_owned());
    }
    tally(seen)
}

#[tokio::test]
async fn an_unhealthy_instance_stops_receiving_traffic_and_comes_back() {
    let (a, b) = (Echo::start_named("a"), Echo::start_named("b"));
    let yaml = render_template(
        "examples/health-checks/envoy.yaml",
        &[("UPSTREAM_A_PORT", a.port()), ("UPSTREAM_B_PORT", b.port())],
    );
    let envoy = start_yaml(&yaml, 1).await;
    let client = HttpClient::new();
    let wait = Duration::from_secs(10);

    assert!(eventually(wait, || async { healthy(&envoy, &a).await == Some(true) }).await);
    assert!(eventually(wait, || async { healthy(&envoy, &b).await == Some(true) }).await);
    let both = spread(&envoy, &client, 20).await;
    assert_eq!((both.get("a"), both.get("b")), (Some(&10), Some(&10)), "{both:?}");

    a.set_healthy(false);
    assert!(
        eventually(wait, || async { healthy(&envoy, &a).await == Some(false) }).await,
        "a never marked unhealthy"
    );
    let only_b = spread(&envoy, &client, 20).await;
    assert_eq!(only_b.get("b"), Some(&20), "{only_b:?}");

    a.set_healthy(true);
    assert!(
        eventually(wait, || async { healthy(&envoy, &a).await == Some(true) }).await,
        "a never came back"
    );
    // The load balancer picks the change up right after.
    let back = eventually(wait, || async {
        client.get(envoy.url("/probe")).send().await.header("x-echo-instance") == Some("a")
    })
    .await;
    assert!(back, "a healthy again but no traffic");
    let again = spread(&envoy, &client, 20).await;
    assert_eq!((again.get("a"), again.get("b")), (Some(&10), Some(&10)), "{again:?}");
    assert!(a.health_checks() >= 3 && b.health_checks() >= 3);
}
