//! The filters' metrics as Prometheus sees them: Envoy's `/stats/prometheus` with the shipped
//! `stats_tags`, labels from closed sets and configuration names only.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tollgate_e2e::{
    Echo, Envoy, EnvoyOpts, HttpClient, Keyd, eventually, json, stats_config, stats_config_of, wasm_filter,
    wasm_module,
};

fn gateway_opts(echo: &Echo, keyd: &Keyd) -> EnvoyOpts {
    let rate_limit = json!({"rules": [{"name": "per-consumer", "by": ["consumer"],
        "limits": [{"rate": 2, "per": "hour"}]}]});
    EnvoyOpts::new(echo.addr()).key_auth(keyd.key_auth_config()).keyd(keyd.addr()).http_filter(wasm_filter(
        "rate_limit",
        "tollgate.rate_limit",
        &wasm_module("tollgate_rate_limit"),
        &rate_limit,
    ))
}

/// Envoy's Prometheus text.
async fn prometheus(envoy: &Envoy) -> String {
    let url = format!("http://{}/stats/prometheus", envoy.admin_addr());
    let res = HttpClient::fresh_connections().get(url).send().await;
    assert_eq!(res.status, 200);
    res.text()
}

/// The samples of Tollgate's metrics: `name{labels}` → value.
fn tollgate_samples(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| l.starts_with("tollgate_"))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// A series as `name{a="1",b="2"}` with its labels sorted, `name` alone when it has none (Envoy
/// writes `name{}`, and labels in the order its tag specifiers found them).
fn canonical(series: &str) -> String {
    let Some((name, labels)) = series.split_once('{') else {
        return series.to_owned();
    };
    let labels = labels.trim_end_matches('}');
    if labels.is_empty() {
        return name.to_owned();
    }
    let mut pairs: Vec<&str> = labels.split(',').collect();
    pairs.sort_unstable();
    format!("{name}{{{}}}", pairs.join(","))
}

fn value(samples: &[(String, f64)], series: &str) -> Option<f64> {
    let wanted = canonical(series);
    samples.iter().find(|(s, _)| canonical(s) == wanted).map(|(_, v)| *v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_sees_decisions_reasons_and_rules_as_labels() {
    let echo = Echo::start();
    let keyd = Keyd::start_temp().await;
    let envoy = Envoy::start(gateway_opts(&echo, &keyd)).await;
    let client = HttpClient::fresh_connections();

    assert_eq!(client.get(envoy.url("/")).send().await.status, 401);
    let (id, key) = keyd.create_key("alice", &[]).await;
    let statuses: Vec<u16> = {
        let mut out = Vec::new();
        for _ in 0..3 {
            out.push(client.get(envoy.url("/")).header("x-api-key", &key).send().await.status);
        }
        out
    };
    assert_eq!(statuses, [200, 200, 429]);
    keyd.revoke_key(&id).await;
    let revoked = eventually(Duration::from_secs(5), || async {
        client.get(envoy.url("/")).header("x-api-key", &key).send().await.status == 401
    })
    .await;
    assert!(revoked);

    // Counters land as streams end; histograms on Envoy's stats flush.
    let deadline = Instant::now() + Duration::from_secs(15);
    let (samples, complete) = loop {
        let samples = tollgate_samples(&prometheus(&envoy).await);
        let complete =
            value(&samples, "tollgate_key_auth_requests_total{decision=\"deny\",reason=\"revoked_key\"}")
                .is_some_and(|v| v >= 1.0)
                && value(&samples, "tollgate_key_auth_key_service_call_ms_count").is_some_and(|v| v >= 1.0);
        if complete || Instant::now() > deadline {
            break (samples, complete);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let names: BTreeSet<&str> = samples.iter().map(|(s, _)| s.split('{').next().unwrap_or("")).collect();
    assert!(complete, "{samples:#?}");

    let at_least = |series: &str, min: f64| {
        let v = value(&samples, series).unwrap_or_else(|| panic!("no series {series} in {names:#?}"));
        assert!(v >= min, "{series} = {v}, want ≥ {min}");
    };
    at_least("tollgate_key_auth_requests_total{decision=\"allow\"}", 3.0);
    at_least("tollgate_key_auth_requests_total{decision=\"deny\",reason=\"missing_key\"}", 1.0);
    at_least("tollgate_key_auth_requests_total{decision=\"deny\",reason=\"revoked_key\"}", 1.0);
    at_least("tollgate_key_auth_requests_total{decision=\"deny\",reason=\"unknown_key\"}", 0.0);
    at_least("tollgate_key_auth_cache_lookups_total{result=\"miss\"}", 1.0);
    at_least("tollgate_key_auth_cache_lookups_total{result=\"hit\"}", 1.0);
    at_least("tollgate_key_auth_feed_polls_total", 1.0);
    at_least("tollgate_key_auth_feed_errors_total", 0.0);
    at_least("tollgate_key_auth_feed_lag_seconds", 0.0);
    at_least("tollgate_key_auth_key_service_call_ms_count", 1.0);
    at_least("tollgate_rate_limit_requests_total{decision=\"allow\"}", 2.0);
    at_least("tollgate_rate_limit_requests_total{decision=\"deny\",reason=\"limited\"}", 1.0);
    at_least("tollgate_rate_limit_rule_decisions_total{decision=\"allowed\",rule=\"per-consumer\"}", 2.0);
    at_least("tollgate_rate_limit_rule_decisions_total{decision=\"limited\",rule=\"per-consumer\"}", 1.0);
    assert!(
        samples.iter().any(|(s, _)| s.starts_with("tollgate_key_auth_key_service_call_ms_bucket{le=")),
        "the call latency is a histogram with buckets: {names:#?}"
    );

    // Every name is a clean Prometheus name (no pair left in it), and no label value is a key,
    // a key id or a consumer.
    for (series, _) in &samples {
        let name = series.split('{').next().unwrap_or("");
        assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'), "{series}");
        for secret in [key.as_str(), id.as_str(), "alice"] {
            assert!(!series.contains(secret), "{series} names {secret}");
        }
    }
    for pair in [".decision.", ".reason.", ".result.", ".rule."] {
        assert!(names.iter().all(|n| !n.contains(pair)), "{names:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_number_of_series_does_not_grow_with_the_number_of_keys() {
    let echo = Echo::start();
    let keyd = Keyd::start_temp().await;
    let envoy = Envoy::start(gateway_opts(&echo, &keyd)).await;
    let client = HttpClient::fresh_connections();
    let mut used = 0;
    let mut counts = Vec::new();
    for total in [10, 1000] {
        while used < total {
            let (_, key) = keyd.create_key(&format!("consumer-{used}"), &[]).await;
            let res = client.get(envoy.url("/")).header("x-api-key", &key).send().await;
            assert_eq!(res.status, 200, "{}", res.text());
            used += 1;
        }
        let text = prometheus(&envoy).await;
        let series: BTreeSet<String> = tollgate_samples(&text).into_iter().map(|(s, _)| s).collect();
        counts.push(series.len());
    }
    eprintln!(
        "Tollgate series on /stats/prometheus with 10 keys: {}, with 1,000 keys: {}",
        counts[0], counts[1]
    );
    assert!(counts[0] > 10, "{counts:?}");
    assert_eq!(counts[0], counts[1], "series grew with the keys");
}

#[test]
fn every_shipped_envoy_config_carries_the_same_stats_tags() {
    let root = tollgate_e2e::workspace_root();
    let shipped = stats_config();
    assert_eq!(shipped["stats_tags"].as_array().map(Vec::len), Some(6), "{shipped}");
    for file in ["envoy/gateway.yaml", "envoy/quickstart.yaml"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let block =
            &text[text.find("\nstats_config:").unwrap_or_else(|| panic!("{file} has no stats_config"))..];
        let end = block[1..].find("\nadmin:").map_or(block.len(), |i| i + 1);
        assert_eq!(stats_config_of(&block[..end]), shipped, "{file}");
    }
}
