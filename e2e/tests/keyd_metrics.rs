//! The key service's Prometheus endpoint, scraped from the real `tollgate-keyd` binary after real
//! gRPC calls.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use tollgate_e2e::{ADMIN_TOKEN, DATAPLANE_TOKEN, HttpClient, Keyd, Response, eventually, keyd_command};
use tollgate_proto::v1::{
    CreateKeyRequest, GetKeyRequest, ListChangesRequest, RevokeKeyRequest, VerifyKeyRequest, VerifyResult,
};

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The samples of an OpenMetrics text, by series (`name{labels}` as written); panics on any line
/// that is not a well-formed comment or sample, or when the text does not end with `# EOF`.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.pop(), Some("# EOF"), "no # EOF at the end:\n{text}");
    assert!(text.ends_with("# EOF\n"), "the text does not end with a newline after # EOF");
    let mut samples = BTreeMap::new();
    for line in lines {
        if let Some(comment) = line.strip_prefix("# ") {
            let mut words = comment.splitn(3, ' ');
            let (kind, name, rest) = (words.next(), words.next(), words.next());
            assert!(matches!(kind, Some("HELP" | "TYPE" | "UNIT")), "bad comment {line:?}");
            assert!(name.is_some_and(is_metric_name) && rest.is_some(), "bad comment {line:?}");
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample {line:?}"));
        let name = series.split_once('{').map_or(series, |(name, labels)| {
            let labels = labels.strip_suffix('}').unwrap_or_else(|| panic!("bad labels {line:?}"));
            for label in split_labels(labels) {
                let (key, value) = label.split_once('=').unwrap_or_else(|| panic!("bad label {line:?}"));
                assert!(is_metric_name(key) && !key.contains(':'), "bad label name {line:?}");
                assert!(
                    value.len() >= 2 && value.starts_with('"') && value.ends_with('"'),
                    "bad value {line:?}"
                );
            }
            name
        });
        assert!(is_metric_name(name), "bad metric name {line:?}");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value {line:?}")),
        };
        assert!(samples.insert(series.to_owned(), value).is_none(), "repeated series {line:?}");
    }
    samples
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `a="x",b="y,z"` split at the commas between labels (label values here hold no quotes).
fn split_labels(labels: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in labels.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&labels[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&labels[start..]);
    out
}

fn url(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

async fn scrape(keyd: &Keyd) -> (Response, BTreeMap<String, f64>) {
    let response = HttpClient::new().get(url(keyd.metrics_addr(), "/metrics")).send().await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("content-type"), Some(CONTENT_TYPE));
    let samples = parse(&response.text());
    (response, samples)
}

/// Scrapes every 50 ms until `done` holds for the samples (at most `timeout`); returns the last
/// scrape's text and samples.
async fn scrape_until(
    keyd: &Keyd,
    timeout: Duration,
    done: impl Fn(&BTreeMap<String, f64>) -> bool,
) -> (String, BTreeMap<String, f64>) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let (response, samples) = scrape(keyd).await;
        if done(&samples) || tokio::time::Instant::now() >= deadline {
            return (response.text(), samples);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn calls(samples: &BTreeMap<String, f64>, method: &str, code: &str) -> f64 {
    let series = format!(r#"tollgate_keyd_grpc_requests_total{{method="{method}",code="{code}"}}"#);
    samples.get(&series).copied().unwrap_or(0.0)
}

fn sample(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    *samples.get(series).unwrap_or_else(|| panic!("no {series} in {samples:#?}"))
}

fn key_hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs().try_into().unwrap()
}

#[tokio::test]
async fn grpc_calls_keys_audit_writes_and_the_feed_head_show_in_the_metrics() {
    let keyd = Keyd::start_temp().await;
    let mut admin = keyd.admin_client().await;
    let mut dataplane = keyd.dataplane_client().await;
    let create = |consumer: &str, ttl_seconds: u64| CreateKeyRequest {
        consumer: consumer.into(),
        create_consumer: true,
        ttl_seconds,
        ..Default::default()
    };
    // Each creates its consumer too: two audit entries each.
    let alice = admin.create_key(create("alice", 0)).await.unwrap().into_inner();
    let bob = admin.create_key(create("bob", 0)).await.unwrap().into_inner();
    let carol = admin.create_key(create("carol", 1)).await.unwrap().into_inner();
    let (alice_key, bob_key, carol_key) = (alice.key.unwrap(), bob.key.unwrap(), carol.key.unwrap());

    let verified = dataplane
        .verify_key(VerifyKeyRequest { key_hash: key_hash(&alice.secret) })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(verified.result, VerifyResult::Valid as i32);
    let unknown = dataplane
        .verify_key(VerifyKeyRequest { key_hash: key_hash("tgk_this_key_was_never_issued") })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unknown.result, VerifyResult::NotFound as i32);
    let malformed = dataplane.verify_key(VerifyKeyRequest { key_hash: vec![7; 3] }).await.unwrap_err();
    assert_eq!(malformed.code(), tonic::Code::InvalidArgument);

    admin.revoke_key(RevokeKeyRequest { id: alice_key.id.clone(), reason: "leaked".into() }).await.unwrap();
    let missing = admin.get_key(GetKeyRequest { id: "key_does_not_exist".into() }).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    // The data-plane token may not create keys.
    let refused = dataplane.create_key(create("mallory", 0)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let head = dataplane.list_changes(ListChangesRequest::default()).await.unwrap().into_inner().head_seq;
    // Three keys created, one revoked.
    assert_eq!(head, 4);

    // Carol's key expires one second after its creation.
    assert!(
        eventually(Duration::from_secs(5), || async { unix_now() >= carol_key.expires_at }).await,
        "the clock did not reach {}",
        carol_key.expires_at
    );
    // The feed reader follows commits within moments.
    let (text, samples) = scrape_until(&keyd, Duration::from_secs(10), |samples| {
        samples.get("tollgate_keyd_feed_head_sequence") == Some(&4.0)
    })
    .await;

    for (method, code, expected) in [
        ("CreateKey", "OK", 3.0),
        ("CreateKey", "UNAUTHENTICATED", 1.0),
        ("VerifyKey", "OK", 2.0),
        ("VerifyKey", "INVALID_ARGUMENT", 1.0),
        ("RevokeKey", "OK", 1.0),
        ("GetKey", "NOT_FOUND", 1.0),
        ("ListChanges", "OK", 1.0),
        ("VerifyKey", "NOT_FOUND", 0.0),
        ("unknown", "UNIMPLEMENTED", 0.0),
    ] {
        assert_eq!(calls(&samples, method, code), expected, "{method} {code}:\n{text}");
    }
    for (method, expected) in [("CreateKey", 4.0), ("VerifyKey", 3.0), ("RevokeKey", 1.0), ("GetKey", 1.0)] {
        let series = format!(r#"tollgate_keyd_grpc_request_duration_seconds_count{{method="{method}"}}"#);
        assert_eq!(sample(&samples, &series), expected, "{series}:\n{text}");
        let inf =
            format!(r#"tollgate_keyd_grpc_request_duration_seconds_bucket{{le="+Inf",method="{method}"}}"#);
        assert_eq!(sample(&samples, &inf), expected, "{inf}:\n{text}");
    }
    // Only the two well-formed hashes reached the store.
    assert_eq!(
        sample(&samples, r#"tollgate_keyd_store_duration_seconds_count{operation="lookup_secret"}"#),
        2.0
    );
    assert_eq!(
        sample(&samples, r#"tollgate_keyd_store_duration_seconds_count{operation="create_key"}"#),
        3.0
    );
    for (status, expected) in [("active", 1.0), ("revoked", 1.0), ("expired", 1.0)] {
        assert_eq!(
            sample(&samples, &format!(r#"tollgate_keyd_keys{{status="{status}"}}"#)),
            expected,
            "{text}"
        );
    }
    // Three consumers, three keys, one revocation.
    assert_eq!(sample(&samples, "tollgate_keyd_audit_writes_total"), 7.0, "{text}");
    assert_eq!(sample(&samples, "tollgate_keyd_feed_head_sequence"), 4.0);
    assert_eq!(sample(&samples, "tollgate_keyd_feed_watchers"), 0.0);
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(sample(&samples, &format!(r#"tollgate_keyd_build_info{{version="{version}"}}"#)), 1.0);

    // No secret, key, id or name shows.
    let mut secrets = vec![ADMIN_TOKEN.to_owned(), DATAPLANE_TOKEN.to_owned()];
    for (secret, key) in [(&alice.secret, &alice_key), (&bob.secret, &bob_key), (&carol.secret, &carol_key)] {
        secrets.extend([secret.clone(), key.id.clone(), key.consumer_id.clone(), key.display_prefix.clone()]);
        secrets.push(hex(&key_hash(secret)));
    }
    secrets.extend(["alice", "bob", "carol", "mallory", "leaked"].map(str::to_owned));
    for secret in &secrets {
        assert!(!text.contains(secret.as_str()), "{secret:?} in the metrics:\n{text}");
    }
    // Every label value is from the documented sets.
    for series in samples.keys() {
        for label in
            series.split_once('{').map(|(_, l)| split_labels(l.trim_end_matches('}'))).unwrap_or_default()
        {
            let (key, value) = label.split_once('=').unwrap();
            let value = value.trim_matches('"');
            let known = match key {
                "method" => value == "unknown" || value.chars().all(|c| c.is_ascii_alphabetic()),
                "code" => value.chars().all(|c| c.is_ascii_uppercase() || c == '_'),
                "operation" => value.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "status" => ["active", "revoked", "expired"].contains(&value),
                "transition" => ["expiring", "expired", "rotated", "grace_ended"].contains(&value),
                "le" => value == "+Inf" || value.parse::<f64>().is_ok(),
                "version" => value == version,
                _ => false,
            };
            assert!(known, "unexpected label {label} in {series}");
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn an_open_watch_stream_is_a_feed_watcher_until_it_ends() {
    let keyd = Keyd::start_temp().await;
    let mut dataplane = keyd.dataplane_client().await;
    let mut stream = dataplane
        .watch_changes(tollgate_proto::v1::WatchChangesRequest { after_seq: 0 })
        .await
        .unwrap()
        .into_inner();
    let (text, samples) =
        scrape_until(&keyd, Duration::from_secs(10), |s| s.get("tollgate_keyd_feed_watchers") == Some(&1.0))
            .await;
    assert_eq!(
        sample(&samples, "tollgate_keyd_feed_watchers"),
        1.0,
        "the open stream is not counted:\n{text}"
    );
    // Still open: not counted as a call yet.
    assert_eq!(calls(&samples, "WatchChanges", "CANCELLED") + calls(&samples, "WatchChanges", "OK"), 0.0);
    let (id, _) = keyd.create_key("dora", &[]).await;
    let change =
        tokio::time::timeout(Duration::from_secs(10), stream.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(change.key_id, id);
    drop(stream);
    drop(dataplane);
    let (text, samples) = scrape_until(&keyd, Duration::from_secs(10), |s| {
        s.get("tollgate_keyd_feed_watchers") == Some(&0.0) && calls(s, "WatchChanges", "CANCELLED") == 1.0
    })
    .await;
    assert_eq!(sample(&samples, "tollgate_keyd_feed_watchers"), 0.0, "{text}");
    assert_eq!(calls(&samples, "WatchChanges", "CANCELLED"), 1.0, "{text}");
    assert_eq!(
        sample(&samples, r#"tollgate_keyd_grpc_request_duration_seconds_count{method="WatchChanges"}"#),
        1.0
    );
}

#[tokio::test]
async fn other_methods_get_405_and_other_paths_404_without_metrics() {
    let keyd = Keyd::start_temp().await;
    keyd.create_key("erin", &[]).await;
    let client = HttpClient::new();
    let addr = keyd.metrics_addr();
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        let response = client
            .request(method.parse().unwrap(), url(addr, "/metrics"))
            .header("content-type", "text/plain")
            .body("tollgate_keyd_keys 99\n")
            .send()
            .await;
        assert_eq!(response.status, 405, "{method}");
        assert_eq!(response.header("allow"), Some("GET, HEAD"), "{method}");
        assert!(!response.text().contains("tollgate_keyd"), "{method}: {}", response.text());
        assert!(response.body.len() < 100, "{method}: {} bytes", response.body.len());
    }
    for path in ["/other", "/", "/metrics/", "/METRICS", "/metrics%2F", "/debug/pprof"] {
        let response = client.get(url(addr, path)).send().await;
        assert_eq!(response.status, 404, "{path}");
        assert!(!response.text().contains("tollgate_keyd"), "{path}: {}", response.text());
        assert!(response.body.len() < 100, "{path}: {} bytes", response.body.len());
    }
    let head = client.request("HEAD".parse().unwrap(), url(addr, "/metrics")).send().await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), Some(CONTENT_TYPE));
    assert!(head.body.is_empty(), "HEAD got a body");
    // A query string does not change the answer, and the POSTed text was not taken in.
    let response = client.get(url(addr, "/metrics?name[]=tollgate_keyd_keys")).send().await;
    assert_eq!(response.status, 200);
    let samples = parse(&response.text());
    assert_eq!(sample(&samples, r#"tollgate_keyd_keys{status="active"}"#), 1.0);
}

#[tokio::test]
async fn sixteen_concurrent_scrapes_all_get_a_whole_parseable_answer() {
    let keyd = Keyd::start_temp().await;
    keyd.create_key("frank", &[]).await;
    let addr = keyd.metrics_addr();
    let scrapes: Vec<_> = (0..16)
        .map(|_| {
            // A connection of its own each.
            let client = HttpClient::fresh_connections();
            tokio::spawn(async move { client.get(url(addr, "/metrics")).send().await })
        })
        .collect();
    // gRPC traffic meanwhile.
    let mut dataplane = keyd.dataplane_client().await;
    for _ in 0..8 {
        dataplane.verify_key(VerifyKeyRequest { key_hash: key_hash("tgk_unknown") }).await.unwrap();
    }
    for scrape in scrapes {
        let response = tokio::time::timeout(Duration::from_secs(20), scrape).await.unwrap().unwrap();
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(response.header("content-type"), Some(CONTENT_TYPE));
        let samples = parse(&response.text());
        assert_eq!(sample(&samples, r#"tollgate_keyd_keys{status="active"}"#), 1.0);
        assert_eq!(sample(&samples, "tollgate_keyd_audit_writes_total"), 2.0);
    }
    let (_, samples) = scrape(&keyd).await;
    assert_eq!(calls(&samples, "VerifyKey", "OK"), 8.0);
}

/// The TCP ports `pid` listens on, read from its socket descriptors and the kernel's socket
/// tables.
fn listening_ports(pid: u32) -> BTreeSet<u16> {
    let mut inodes = BTreeSet::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let Ok(target) = std::fs::read_link(fd.unwrap().path()) else { continue };
        let target = target.to_string_lossy().into_owned();
        if let Some(inode) = target.strip_prefix("socket:[").and_then(|t| t.strip_suffix(']')) {
            inodes.insert(inode.to_owned());
        }
    }
    let mut ports = BTreeSet::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address is fields[1] (`ADDR:PORT` in hex), st fields[3] (0A = LISTEN), inode fields[9].
            if fields.len() > 9 && fields[3] == "0A" && inodes.contains(fields[9]) {
                let port = fields[1].rsplit_once(':').unwrap().1;
                ports.insert(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    ports
}

/// A `tollgate-keyd` started by the test with its own flags; killed on drop.
struct Started {
    child: Child,
    addr: SocketAddr,
    log: std::path::PathBuf,
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_with(dir: &Path, configure: impl FnOnce(&mut Command)) -> Started {
    std::fs::create_dir_all(dir).unwrap();
    let addr_file = dir.join("addr");
    let log = dir.join("keyd.log");
    let mut command = keyd_command("127.0.0.1:0", &dir.join("data"));
    command.arg("--addr-file").arg(&addr_file);
    configure(&mut command);
    let out = std::fs::File::create(&log).unwrap();
    let child = command.stdout(out.try_clone().unwrap()).stderr(out).spawn().unwrap();
    let mut started = Started { child, addr: "0.0.0.0:0".parse().unwrap(), log };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let written = std::fs::read_to_string(&addr_file).unwrap_or_default();
        if let Ok(addr) = written.trim().parse::<SocketAddr>()
            && tokio::net::TcpStream::connect(addr).await.is_ok()
        {
            started.addr = addr;
            return started;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "tollgate-keyd did not start:\n{}",
            std::fs::read_to_string(&started.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn metrics_listen_off_serves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // The flag, then the environment variable (the dashboard off too, the same two ways).
    let by_flag = start_with(&dir.path().join("flag"), |c| {
        c.arg("--metrics-listen").arg("off").arg("--http-listen").arg("off");
    })
    .await;
    let by_env = start_with(&dir.path().join("env"), |c| {
        c.env("TOLLGATE_KEYD_METRICS_LISTEN", "off").env("TOLLGATE_KEYD_HTTP_LISTEN", "off");
    })
    .await;
    for started in [&by_flag, &by_env] {
        // The key service answers...
        let channel = tonic::transport::Channel::from_shared(format!("http://{}", started.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = tollgate_proto::v1::key_service_client::KeyServiceClient::with_interceptor(
            channel,
            tollgate_e2e::BearerToken::new(DATAPLANE_TOKEN),
        );
        let answer = client.verify_key(VerifyKeyRequest { key_hash: key_hash("tgk_x") }).await.unwrap();
        assert_eq!(answer.into_inner().result, VerifyResult::NotFound as i32);
        // ...on its one port, and nothing else listens.
        assert_eq!(listening_ports(started.child.id()), BTreeSet::from([started.addr.port()]));
        let log = std::fs::read_to_string(&started.log).unwrap();
        assert!(log.contains("metrics endpoint off"), "{log}");
        assert!(!log.contains("metrics listening"), "{log}");
        assert!(log.contains("dashboard off") && !log.contains("dashboard listening"), "{log}");
    }

    // The harness's key service, metrics and dashboard on: three ports (so the check above can
    // fail).
    let keyd = Keyd::start_temp().await;
    assert_eq!(
        listening_ports(keyd.pid().unwrap()),
        BTreeSet::from([keyd.addr().port(), keyd.metrics_addr().port(), keyd.http_addr().port()])
    );
    let logs = keyd.logs();
    let announced =
        logs.lines().any(|l| l.contains("metrics listening") && l.contains(&keyd.metrics_addr().to_string()));
    assert!(announced, "{logs}");
}

#[tokio::test]
async fn a_metrics_address_file_with_metrics_off_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let output = keyd_command("127.0.0.1:0", &dir.path().join("data"))
        .arg("--metrics-listen")
        .arg("off")
        .arg("--metrics-addr-file")
        .arg(dir.path().join("metrics.addr"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--metrics-addr-file: "), "{stderr}");
    assert!(!dir.path().join("metrics.addr").exists());
}

#[tokio::test]
async fn a_metrics_address_that_cannot_be_bound_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let output = keyd_command("127.0.0.1:0", &dir.path().join("data"))
        .arg("--metrics-listen")
        .arg(taken_addr.to_string())
        .arg("--addr-file")
        .arg(dir.path().join("addr"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("--metrics-listen: cannot listen on {taken_addr}")), "{stderr}");
    assert!(!dir.path().join("addr").exists(), "the gRPC address was announced anyway");
}
