//! The shipped Grafana dashboard and Prometheus alert rules against a real Prometheus scraping
//! real Envoys (with the Tollgate filters and the shipped `stats_tags`) and a real key service:
//! every panel's queries and every alert's expression return data.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::Duration;

use tollgate_e2e::prometheus::{Prometheus, Scrape};
use tollgate_e2e::{
    Echo, Envoy, EnvoyOpts, HttpClient, Keyd, Value, eventually, json, static_cluster, wasm_filter,
    wasm_module, workspace_root,
};
use tollgate_proto::v1::ListKeysRequest;

fn dashboard() -> Value {
    let path = workspace_root().join("observability/grafana/tollgate.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn rules_path() -> PathBuf {
    workspace_root().join("observability/prometheus/rules.yml")
}

/// Every panel's queries, with Grafana's variables replaced as Grafana would.
fn panel_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap().to_owned();
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let expr = expr
                .replace("$__rate_interval", "1m")
                .replace("$__interval", "15s")
                .replace("$__range", "5m");
            assert!(!expr.contains('$'), "{title}: a variable the test does not know: {expr}");
            out.push((format!("{title} [{}]", target["refId"].as_str().unwrap_or("?")), expr));
        }
    }
    out
}

/// Polls `expr` until it returns at least one sample (`Ok`) or `within` passes (`Err` with what
/// it returned last).
async fn returns_data(prometheus: &Prometheus, expr: &str, within: Duration) -> Result<(), String> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let last = prometheus.query(expr).await;
        if last.as_ref().is_ok_and(|samples| !samples.is_empty()) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(format!("{last:?}"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[test]
fn every_panel_has_a_title_description_unit_and_the_datasource_variable() {
    let dashboard = dashboard();
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(
        variables
            .iter()
            .any(|v| v["name"] == "datasource" && v["type"] == "datasource" && v["query"] == "prometheus"),
        "a ${{datasource}} variable of type datasource"
    );
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "{panel}");
        assert!(panel["description"].as_str().is_some_and(|d| d.len() > 20), "{title}: description");
        assert!(
            panel["fieldConfig"]["defaults"]["unit"].as_str().is_some_and(|u| !u.is_empty()),
            "{title}: unit"
        );
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{title}");
        }
    }
}

/// Envoy A: key-auth → rate-limit (a limit on `/limited/`, a shadow limit on everything).
fn key_auth_gateway(echo: &Echo, keyd: &Keyd) -> EnvoyOpts {
    let mut key_auth = keyd.key_auth_config();
    key_auth["key_service"]["poll_interval"] = json!("200ms");
    let rate_limit = json!({"rules": [
        {"name": "limited", "match": {"path_prefix": "/limited/"}, "by": ["consumer"], "limits": [{"rate": 2, "per": "hour"}]},
        {"name": "shadow", "mode": "shadow", "limits": [{"rate": 1, "per": "hour"}]}
    ]});
    EnvoyOpts::new(echo.addr())
        .key_auth(key_auth)
        .keyd(keyd.addr())
        .http_filter(wasm_filter(
            "rate_limit",
            "tollgate.rate_limit",
            &wasm_module("tollgate_rate_limit"),
            &rate_limit,
        ))
        .workers(2)
}

/// Envoy B: jwt-auth whose JWKS cannot be fetched (its cluster points at a closed port), then
/// request-signing.
fn jwt_gateway(echo: &Echo, keyd: &Keyd) -> EnvoyOpts {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let jwt = json!({"providers": [{"name": "idp", "issuer": "https://idp.test", "audiences": ["api"], "algorithms": ["ES256"],
        "remote_jwks": {"cluster": "idp", "path": "/jwks", "timeout": "200ms"}}]});
    let signing = json!({"key_service": keyd.key_auth_config()["key_service"]});
    EnvoyOpts::new(echo.addr())
        .keyd(keyd.addr())
        .cluster(static_cluster("idp", closed, false))
        .http_filter(wasm_filter("jwt_auth", "tollgate.jwt_auth", &wasm_module("tollgate_jwt_auth"), &jwt))
        .http_filter(wasm_filter(
            "request_signing",
            "tollgate.request_signing",
            &wasm_module("tollgate_request_signing"),
            &signing,
        ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_and_every_alert_returns_data_from_a_real_prometheus() {
    let echo = Echo::start();
    let mut keyd = Keyd::start_temp().await;
    let gw = Envoy::start(key_auth_gateway(&echo, &keyd)).await;
    let jwt_gw = Envoy::start(jwt_gateway(&echo, &keyd)).await;
    let keyd_metrics = keyd.metrics_addr();
    let prometheus = Prometheus::start(
        &[
            Scrape::new("envoy", "/stats/prometheus", &[gw.admin_addr(), jwt_gw.admin_addr()]),
            Scrape::new("tollgate-keyd", "/metrics", &[keyd_metrics]),
        ],
        &[&rules_path()],
    )
    .await;
    let client = HttpClient::fresh_connections();

    // Traffic: allowed, refused without a key, rate-limited, revoked, a bad JWT, an upstream 5xx.
    let (id, key) = keyd.create_key("alice", &[]).await;
    let (_, unseen) = keyd.create_key("bob", &[]).await;
    let get = |url: String, key: Option<&str>| {
        let mut req = client.get(url);
        if let Some(k) = key {
            req = req.header("x-api-key", k);
        }
        req.send()
    };
    for _ in 0..3 {
        assert_eq!(get(gw.url("/"), Some(&key)).await.status, 200);
    }
    assert_eq!(get(gw.url("/"), None).await.status, 401);
    let limited: Vec<u16> = {
        let mut out = Vec::new();
        for _ in 0..3 {
            out.push(get(gw.url("/limited/x"), Some(&key)).await.status);
        }
        out
    };
    assert_eq!(limited, [200, 200, 429]);
    echo.fail_with(500);
    assert_eq!(get(gw.url("/"), Some(&key)).await.status, 500);
    echo.fail_with(0);
    let bad_jwt = client.get(jwt_gw.url("/")).header("authorization", "Bearer not.a.jwt").send().await;
    assert_eq!(bad_jwt.status, 401, "{}", bad_jwt.text());
    let mut admin = keyd.admin_client().await;
    assert!(admin.list_keys(ListKeysRequest::default()).await.is_ok());
    let mut wrong = keyd.client("not-the-token").await;
    assert!(wrong.list_keys(ListKeysRequest::default()).await.is_err(), "a wrong token is refused");
    keyd.revoke_key(&id).await;
    assert!(
        eventually(Duration::from_secs(5), || async { get(gw.url("/"), Some(&key)).await.status == 401 })
            .await
    );

    // Every panel's queries, once Prometheus has scraped the counters twice (rates need two).
    let mut empty = Vec::new();
    for (panel, expr) in panel_queries(&dashboard()) {
        if let Err(last) = returns_data(&prometheus, &expr, Duration::from_secs(20)).await {
            empty.push(format!("{panel}: {expr} → {last}"));
        }
    }
    assert!(
        empty.is_empty(),
        "panels without data:\n{}\ntargets: {:?}",
        empty.join("\n"),
        prometheus.targets().await
    );

    // The traffic shows where it should.
    let value = |samples: &[Value]| -> f64 {
        samples
            .iter()
            .filter_map(|s| s["value"][1].as_str()?.parse::<f64>().ok())
            .filter(|v| v.is_finite())
            .sum()
    };
    for (expr, what) in [
        ("tollgate_key_auth_requests_total{decision=\"deny\",reason=\"revoked_key\"}", "revoked"),
        ("tollgate_key_auth_requests_total{decision=\"deny\",reason=\"missing_key\"}", "no key"),
        ("tollgate_rate_limit_rule_decisions_total{rule=\"limited\",decision=\"limited\"}", "rate-limited"),
        ("tollgate_rate_limit_rule_decisions_total{rule=\"shadow\",decision=\"shadow_limited\"}", "shadow"),
        ("tollgate_jwt_auth_requests_total{decision=\"deny\"}", "bad JWT"),
        ("tollgate_keyd_grpc_requests_total{code=\"UNAUTHENTICATED\"}", "wrong token"),
        ("envoy_http_downstream_rq_xx{envoy_response_code_class=\"5\"}", "5xx"),
    ] {
        let samples = prometheus.query(expr).await.unwrap();
        assert!(value(&samples) >= 1.0, "{what}: {expr} → {samples:?}");
    }

    // Faults: the key service goes away, requests for keys no gateway has seen get 503, JWKS
    // fetches keep failing; every alert's expression then holds.
    keyd.stop().await;
    for _ in 0..300 {
        let status = get(gw.url("/"), Some(&unseen)).await.status;
        assert_eq!(status, 503);
    }
    let alerts = prometheus.alert_rules().await;
    assert_eq!(alerts.len(), 5, "{alerts:?}");
    let mut quiet = Vec::new();
    for (name, expr) in &alerts {
        if let Err(last) = returns_data(&prometheus, expr, Duration::from_secs(40)).await {
            quiet.push(format!("{name}: {expr} → {last}"));
        }
    }
    assert!(quiet.is_empty(), "alerts whose condition never held:\n{}", quiet.join("\n"));
}
