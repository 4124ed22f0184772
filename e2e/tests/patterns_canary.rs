//! `examples/canary`: a 90/10 weighted split measured over 400 requests, and overrides that send a
//! caller to the canary by header or by consumer (identified by key-auth).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use tollgate_e2e::patterns::{render_template, start_yaml, tally};
use tollgate_e2e::{Echo, HttpClient, Keyd};

#[tokio::test]
async fn weighted_split_and_header_and_consumer_overrides_send_callers_to_the_canary() {
    let (stable, canary) = (Echo::start_named("stable"), Echo::start_named("canary"));
    let keyd = Keyd::start_temp().await;
    let yaml = render_template(
        "examples/canary/envoy.yaml",
        &[
            ("UPSTREAM_A_PORT", stable.port()),
            ("UPSTREAM_B_PORT", canary.port()),
            ("KEYD_PORT", keyd.addr().port().to_string()),
        ],
    );
    let envoy = start_yaml(&yaml, 2).await;
    let client = HttpClient::new();
    let (_, alice) = keyd.create_key("alice", &[]).await;
    let (_, tester) = keyd.create_key("beta-tester", &[]).await;

    let instance = |key: String, headers: Vec<(&'static str, &'static str)>| {
        let req = client.get(envoy.url("/app")).header("x-api-key", &key).headers(headers);
        async move {
            let res = req.send().await;
            assert_eq!(res.status, 200, "{}", res.text());
            res.header("x-echo-instance").unwrap().to_owned()
        }
    };

    // No key: denied before any routing decision reaches an upstream.
    let denied = client.get(envoy.url("/app")).header("x-canary", "1").send().await;
    assert_eq!(denied.status, 401);

    // 90/10 split over N = 400: the canary share is 10 % ± 6 %.
    const N: usize = 400;
    let mut seen = Vec::with_capacity(N);
    for _ in 0..N {
        seen.push(instance(alice.clone(), vec![]).await);
    }
    let counts = tally(seen);
    let canary_share = counts.get("canary").copied().unwrap_or(0) as f64 / N as f64;
    assert!((0.04..=0.16).contains(&canary_share), "canary share {canary_share}: {counts:?}");
    assert_eq!(counts.values().sum::<usize>(), N);

    // Header override: always the canary.
    for _ in 0..20 {
        assert_eq!(instance(alice.clone(), vec![("x-canary", "1")]).await, "canary");
    }
    // Consumer override: the beta tester's key always lands on the canary ...
    for _ in 0..20 {
        assert_eq!(instance(tester.clone(), vec![]).await, "canary");
    }
    // ... and alice cannot claim to be the beta tester: key-auth replaces the spoofed header.
    let spoofed = tally(
        futures_collect(
            (0..40).map(|_| instance(alice.clone(), vec![("x-tollgate-consumer-id", "beta-tester")])),
        )
        .await,
    );
    assert!(spoofed.get("stable").copied().unwrap_or(0) >= 25, "{spoofed:?}");
}

async fn futures_collect<F: std::future::Future<Output = String>>(
    futs: impl Iterator<Item = F>,
) -> Vec<String> {
    let mut out = Vec::new();
    for f in futs {
        out.push(f.await);
    }
    out
}
