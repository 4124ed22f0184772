//! `examples/load-balancing`: round robin, least request, ring hash and Maglev over three real
//! upstream instances.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::time::Duration;

use tollgate_e2e::patterns::{render_template, start_yaml, tally};
use tollgate_e2e::{Echo, Envoy, HttpClient};

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
        "examples/load-balancing/envoy.yaml",
        &[("UPSTREAM_A_PORT", a.port()), ("UPSTREAM_B_PORT", b.port()), ("UPSTREAM_C_PORT", c.port())],
    );
    // One worker: Envoy balances per worker, so the round robin spread is exact.
    let envoy = start_yaml(&yaml, 1).await;
    Setup { a, b, c, envoy, client: HttpClient::new() }
}

impl Setup {
    async fn instance(&self, path: &str, headers: &[(&str, &str)]) -> String {
        let res = self.client.get(self.envoy.url(path)).headers(headers.iter().copied()).send().await;
        assert_eq!(res.status, 200, "{path}: {}", res.text());
        res.header("x-echo-instance").unwrap().to_owned()
    }
}

#[tokio::test]
async fn round_robin_spreads_requests_evenly() {
    let s = setup().await;
    let mut seen = Vec::new();
    for i in 0..90 {
        seen.push(s.instance(&format!("/rr/{i}"), &[]).await);
    }
    let counts = tally(seen);
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(counts.values().all(|n| *n == 30), "round robin is exact on one worker: {counts:?}");
    assert_eq!((s.a.requests(), s.b.requests(), s.c.requests()), (30, 30, 30));
}

#[tokio::test]
async fn least_request_sends_less_to_a_slow_instance() {
    let s = setup().await;
    // c answers in 500 ms, a and b at once, so c always has requests in flight and the least-request
    // pick avoids it unless all three samples land on it (1 in 27).
    s.c.set_delay(Duration::from_millis(500));
    // 6 concurrent callers, 25 requests each.
    let mut tasks = Vec::new();
    for caller in 0..6 {
        let client = s.client.clone();
        let url = s.envoy.url(&format!("/lr/{caller}"));
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..25 {
                let res = client.get(url.clone()).send().await;
                assert_eq!(res.status, 200);
                seen.push(res.header("x-echo-instance").unwrap().to_owned());
            }
            seen
        }));
    }
    let mut seen = Vec::new();
    for task in tasks {
        seen.extend(task.await.unwrap());
    }
    let counts = tally(seen);
    let slow = counts.get("c").copied().unwrap_or(0);
    eprintln!("least request spread: {counts:?}");
    // An even spread (round robin) would give c 50 of 150; least request gives it less than half that.
    assert!(slow < 25, "the slow instance got {slow} of 150: {counts:?}");
    assert!(
        counts.get("a").copied().unwrap_or(0) > 40 && counts.get("b").copied().unwrap_or(0) > 40,
        "{counts:?}"
    );
}

#[tokio::test]
async fn ring_hash_keeps_a_user_on_one_instance() {
    let s = setup().await;
    let mut instances = BTreeSet::new();
    for user in 0..24 {
        let user = format!("user-{user}");
        let first = s.instance("/ring/x", &[("x-user-id", &user)]).await;
        for _ in 0..4 {
            assert_eq!(s.instance("/ring/y", &[("x-user-id", &user)]).await, first, "{user} moved");
        }
        instances.insert(first);
    }
    assert!(instances.len() >= 2, "24 users should hash to more than one instance: {instances:?}");
}

#[tokio::test]
async fn maglev_sets_a_session_cookie_and_keeps_the_client_on_one_instance() {
    let s = setup().await;
    // Without a cookie, Envoy makes one up and returns it; the client then sticks.
    let res = s.client.get(s.envoy.url("/maglev/")).send().await;
    assert_eq!(res.status, 200);
    let set_cookie = res.header("set-cookie").expect("Envoy sets the session cookie").to_owned();
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    assert!(cookie.starts_with("session="), "{set_cookie}");
    let first = s.instance("/maglev/a", &[("cookie", &cookie)]).await;
    for _ in 0..5 {
        assert_eq!(s.instance("/maglev/b", &[("cookie", &cookie)]).await, first, "{cookie} moved");
    }

    // Sessions the application issued itself stick too, and spread over the instances.
    let mut instances = BTreeSet::new();
    for session in 0..24 {
        let cookie = format!("session=s{session}");
        let first = s.instance("/maglev/a", &[("cookie", &cookie)]).await;
        for _ in 0..4 {
            assert_eq!(s.instance("/maglev/b", &[("cookie", &cookie)]).await, first, "{cookie} moved");
        }
        instances.insert(first);
    }
    assert!(instances.len() >= 2, "24 sessions should land on more than one instance: {instances:?}");
}
