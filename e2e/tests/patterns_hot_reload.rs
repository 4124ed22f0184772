//! `examples/hot-reload`: clusters (CDS), routes (RDS) and the key-auth filter's config (ECDS) from
//! files Envoy watches. While a request loop runs (some requests slow, so they are in flight at
//! every change), the test adds a cluster, switches the route to it and makes key-auth require a
//! scope; every change takes effect and not one request of the loop fails.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tollgate_e2e::patterns::{host_health, render_text, replace_file, start_yaml, tally};
use tollgate_e2e::{Echo, Envoy, HttpClient, Keyd, eventually, workspace_root};

/// The loop: at most this many requests per worker, and at most this long.
const MAX_REQUESTS_PER_WORKER: usize = 5_000;
const MAX_LOOP_TIME: Duration = Duration::from_secs(25);

fn shipped(name: &str) -> String {
    std::fs::read_to_string(workspace_root().join("examples/hot-reload").join(name)).unwrap()
}

struct Outcome {
    /// `x-echo-instance` of every 200.
    instances: Vec<String>,
    /// Everything that was not a 200: `status path` or the connection error.
    failures: Vec<String>,
}

/// Runs requests with `key` until `stop` (or the bounds), counting them in `done`.
fn spawn_worker(
    id: usize,
    url: String,
    key: String,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<Outcome> {
    tokio::spawn(async move {
        // Workers 0 and 1 reuse connections, worker 2 opens one per request.
        let client = if id == 2 { HttpClient::fresh_connections() } else { HttpClient::new() };
        let deadline = Instant::now() + MAX_LOOP_TIME;
        let mut outcome = Outcome { instances: Vec::new(), failures: Vec::new() };
        for i in 0..MAX_REQUESTS_PER_WORKER {
            if stop.load(Ordering::SeqCst) || Instant::now() >= deadline {
                break;
            }
            // Every other request takes a while upstream, so some are always in flight.
            let path = if i % 2 == 0 { "/delay/150" } else { "/orders" };
            match client.get(format!("{url}{path}")).header("x-api-key", &key).try_send().await {
                Ok(res) if res.status == 200 => {
                    outcome.instances.push(res.header("x-echo-instance").unwrap_or("?").to_owned());
                }
                Ok(res) => outcome.failures.push(format!("{} {path}: {}", res.status, res.text())),
                Err(e) => outcome.failures.push(format!("{path}: {e}")),
            }
            done.fetch_add(1, Ordering::SeqCst);
        }
        outcome
    })
}

/// Moves a new version of `name` into the watched directory.
fn update(dir: &Path, name: &str, text: &str, vars: &[(&str, String)]) {
    replace_file(&dir.join(name), &render_text(text, vars));
}

/// Waits until the loop has done `more` requests beyond `from`.
async fn loop_progress(done: &AtomicUsize, from: usize, more: usize) {
    let ok =
        eventually(Duration::from_secs(10), || async { done.load(Ordering::SeqCst) >= from + more }).await;
    assert!(ok, "the request loop stalled at {}", done.load(Ordering::SeqCst));
}

async fn instance(envoy: &Envoy, client: &HttpClient, key: &str) -> Option<String> {
    let res = client.get(envoy.url("/probe")).header("x-api-key", key).send().await;
    (res.status == 200).then(|| res.header("x-echo-instance").unwrap_or("?").to_owned())
}

#[tokio::test]
async fn routes_clusters_and_key_auth_config_change_under_load_without_a_failed_request() {
    let (blue, green) = (Echo::start_named("blue"), Echo::start_named("green"));
    let keyd = Keyd::start_temp().await;
    let xds = tempfile::tempdir().unwrap();
    let dir = xds.path();
    let vars = vec![
        ("UPSTREAM_A_PORT", blue.port()),
        ("UPSTREAM_B_PORT", green.port()),
        ("KEYD_PORT", keyd.addr().port().to_string()),
        ("XDS_DIR", dir.to_string_lossy().into_owned()),
    ];
    let (clusters, routes, key_auth) =
        (shipped("clusters.yaml"), shipped("routes.yaml"), shipped("key-auth.yaml"));
    for (name, text) in [("clusters.yaml", &clusters), ("routes.yaml", &routes), ("key-auth.yaml", &key_auth)]
    {
        std::fs::write(dir.join(name), render_text(text, &vars)).unwrap();
    }
    let envoy = start_yaml(&render_text(&shipped("envoy.yaml"), &vars), 2).await;
    let client = HttpClient::new();
    let (_, reader) = keyd.create_key("orders-app", &["orders:read"]).await;
    let (_, other) = keyd.create_key("other-app", &[]).await;

    // Before: blue serves, any valid key passes, no key is refused.
    assert_eq!(instance(&envoy, &client, &reader).await.as_deref(), Some("blue"));
    assert_eq!(instance(&envoy, &client, &other).await.as_deref(), Some("blue"));
    assert_eq!(client.get(envoy.url("/probe")).send().await.status, 401);

    // The loop, with the key that keeps working through every change.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..3)
        .map(|id| spawn_worker(id, envoy.url(""), reader.clone(), Arc::clone(&stop), Arc::clone(&done)))
        .collect();
    loop_progress(&done, 0, 20).await;

    // (b) Add cluster green (blue unchanged, so Envoy leaves it alone).
    let with_green = clusters.replace("version_info: \"1\"", "version_info: \"2\"")
        + r#"  - "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
    name: green
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: green
      endpoints:
        - lb_endpoints:
            - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: __UPSTREAM_B_PORT__ } } }
"#;
    update(dir, "clusters.yaml", &with_green, &vars);
    let added =
        eventually(Duration::from_secs(10), || async { !host_health(&envoy, "green").await.is_empty() })
            .await;
    assert!(added, "cluster green never appeared");
    assert_eq!(green.requests(), 0, "nothing routes to green yet");
    loop_progress(&done, done.load(Ordering::SeqCst), 20).await;

    // (a) Switch the route from blue to green.
    let to_green = routes
        .replace("cluster: blue", "cluster: green")
        .replace("version_info: \"1\"", "version_info: \"2\"");
    assert_ne!(to_green, routes);
    update(dir, "routes.yaml", &to_green, &vars);
    let switched = eventually(Duration::from_secs(10), || async {
        instance(&envoy, &client, &reader).await.as_deref() == Some("green")
    })
    .await;
    assert!(switched, "the route never switched to green");
    loop_progress(&done, done.load(Ordering::SeqCst), 20).await;
    let blue_after_switch = blue.requests();

    // (c) key-auth now requires scope orders:read: the other key gets 403, the loop's key passes.
    let scoped = key_auth
        .replace(
            "\"hide_credentials\": true\n",
            "\"hide_credentials\": true,\n              \"routes\": [{\"path_prefix\": \"/\", \"scopes\": [\"orders:read\"]}]\n",
        )
        .replace("version_info: \"1\"", "version_info: \"2\"");
    assert_ne!(scoped, key_auth);
    update(dir, "key-auth.yaml", &scoped, &vars);
    let enforced = eventually(Duration::from_secs(10), || async {
        client.get(envoy.url("/probe")).header("x-api-key", &other).send().await.status == 403
    })
    .await;
    assert!(enforced, "key-auth never started requiring the scope");
    loop_progress(&done, done.load(Ordering::SeqCst), 20).await;

    stop.store(true, Ordering::SeqCst);
    let mut instances = Vec::new();
    let mut failures = Vec::new();
    for worker in workers {
        let outcome = worker.await.unwrap();
        instances.extend(outcome.instances);
        failures.extend(outcome.failures);
    }
    assert!(failures.is_empty(), "{} failed requests during the changes: {failures:#?}", failures.len());
    let counts = tally(instances);
    assert!(
        counts.get("blue").copied().unwrap_or(0) > 0 && counts.get("green").copied().unwrap_or(0) > 0,
        "{counts:?}"
    );
    // Once the switch was seen, blue got at most the requests already in flight (one per worker).
    assert!(blue.requests() <= blue_after_switch + 3, "blue still served after the switch");

    // After everything: green serves, the scoped key passes, the other is refused, none restarted.
    assert_eq!(instance(&envoy, &client, &reader).await.as_deref(), Some("green"));
    assert_eq!(client.get(envoy.url("/probe")).header("x-api-key", &other).send().await.status, 403);
    for (stat, at_least) in [
        ("cluster_manager.cds.update_success", 2),
        ("http.gateway.rds.gateway.update_success", 2),
        ("extension_config_discovery.http_filter.tollgate.key_auth.config_reload", 2),
    ] {
        let value = envoy.stat(stat).await;
        assert!(value.is_some_and(|v| v >= at_least), "{stat} = {value:?}");
    }
    assert_eq!(envoy.stat("server.hot_restart_epoch").await, Some(0));
}
