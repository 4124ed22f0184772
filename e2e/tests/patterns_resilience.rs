//! `examples/resilience`: retries within a retry budget, outlier detection ejecting a failing
//! host, and circuit-breaker thresholds answering 503 with `x-envoy-overloaded`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use tollgate_e2e::patterns::{render_template, start_yaml, tally};
use tollgate_e2e::{Echo, Envoy, HttpClient, eventually};

struct Setup {
    a: Echo,
    b: Echo,
    c: Echo,
    envoy: Envoy,
    client: HttpClient,
}

async fn setup() -> Setup {
    let (a, b, c) = (Echo::start_named("a"), Echo::start_named("b"), Echo::start_named("c"));
    let yaml = render_template(
        "examples/resilience/envoy.yaml",
        &[("UPSTREAM_A_PORT", a.port()), ("UPSTREAM_B_PORT", b.port()), ("UPSTREAM_C_PORT", c.port())],
    );
    let envoy = start_yaml(&yaml, 1).await;
    Setup { a, b, c, envoy, client: HttpClient::new() }
}

#[tokio::test]
async fn a_failing_host_is_retried_on_another_and_retries_stay_bounded() {
    let s = setup().await;
    s.a.fail_with(503);
    for i in 0..40 {
        let res = s.client.get(s.envoy.url(&format!("/retry/{i}"))).send().await;
        assert_eq!(res.status, 200, "request {i}: {}", res.text());
        assert_eq!(res.header("x-echo-instance"), Some("b"));
    }
    assert!(s.a.requests() >= 10, "round robin tried a first for some requests: {}", s.a.requests());
    let retries = s.envoy.stat("cluster.retrying.upstream_rq_retry").await.unwrap_or(0);
    assert_eq!(retries, s.a.requests() as u64, "every failed first try was retried once");

    // Both hosts failing: each request makes at most 1 + 2 attempts and ends in 503.
    s.b.fail_with(503);
    s.a.reset();
    s.b.reset();
    for i in 0..10 {
        let res = s.client.get(s.envoy.url(&format!("/retry/all-down/{i}"))).send().await;
        assert_eq!(res.status, 503, "{}", res.text());
    }
    let attempts = s.a.requests() + s.b.requests();
    assert!((10..=30).contains(&attempts), "{attempts} attempts for 10 requests");
}

#[tokio::test]
async fn outlier_detection_ejects_a_host_after_consecutive_5xx() {
    let s = setup().await;
    s.a.fail_with(500);
    let mut answers = Vec::new();
    for i in 0..6 {
        let res = s.client.get(s.envoy.url(&format!("/outlier/{i}"))).send().await;
        answers.push(format!("{}:{}", res.header("x-echo-instance").unwrap_or("-"), res.status));
    }
    assert_eq!(tally(answers.clone()).get("a:500"), Some(&3), "{answers:?}");
    // The third consecutive 5xx ejects a (Envoy applies it asynchronously, within moments).
    let ejected = eventually(Duration::from_secs(5), || async {
        s.envoy.stat("cluster.ejecting.outlier_detection.ejections_active").await == Some(1)
    })
    .await;
    assert!(ejected, "{:?}", s.envoy.stats("ejecting.outlier").await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = s.a.requests();
    for i in 0..20 {
        let res = s.client.get(s.envoy.url(&format!("/outlier/after/{i}"))).send().await;
        answers.push(format!("{}:{}", res.header("x-echo-instance").unwrap_or("-"), res.status));
        assert_eq!(res.status, 200, "{answers:?}");
        assert_eq!(res.header("x-echo-instance"), Some("b"), "{answers:?}");
    }
    assert_eq!(s.a.requests(), before, "the ejected host gets no traffic");
    let enforced =
        s.envoy.stat("cluster.ejecting.outlier_detection.ejections_enforced_consecutive_5xx").await;
    assert_eq!(enforced, Some(1));
}

#[tokio::test]
async fn circuit_breaker_refuses_excess_requests_with_503_overloaded() {
    let s = setup().await;
    s.c.set_delay(Duration::from_millis(600));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let client = HttpClient::fresh_connections();
        let url = s.envoy.url(&format!("/guarded/{i}"));
        tasks.push(tokio::spawn(async move { client.get(url).send().await }));
    }
    let mut ok = 0;
    let mut overloaded = 0;
    for task in tasks {
        let res = task.await.unwrap();
        match res.status {
            200 => ok += 1,
            503 => {
                assert_eq!(res.header("x-envoy-overloaded"), Some("true"), "{:?}", res.headers);
                overloaded += 1;
            }
            other => panic!("unexpected {other}: {}", res.text()),
        }
    }
    // One request active and one pending fit; the others are refused at once.
    assert!(ok >= 1 && overloaded >= 4, "ok={ok} overloaded={overloaded}");
    assert_eq!(s.c.max_in_flight(), 1, "the upstream never saw more than one request at once");
    let overflow = s.envoy.stat("cluster.guarded.upstream_rq_pending_overflow").await.unwrap_or(0);
    assert_eq!(overflow, overloaded);
}
