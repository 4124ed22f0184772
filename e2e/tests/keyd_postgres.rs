//! Several key-service replicas on one PostgreSQL: real `tollgate-keyd` processes, a private
//! PostgreSQL cluster (tollgate-testkit), real Envoy with the key-auth filter.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tokio::sync::Mutex;
use tollgate_e2e::{
    Echo, Envoy, EnvoyOpts, HttpClient, KeyClient, Keyd, WebhookReceiver, eventually, every_worker_ticked,
    json,
};
use tollgate_proto::v1::{
    CreateKeyRequest, GetKeyRequest, ListChangesRequest, RevokeKeyRequest, VerifyKeyRequest, VerifyResult,
};
use tollgate_testkit::postgres::Cluster;
use tonic::Code;

const WORKERS: u32 = 2;
/// The gateway's change-feed poll interval.
const POLL: Duration = Duration::from_millis(200);

/// Replicas of the key service on one database. Each has its own data directory (address and
/// log files) and all share one pepper and one master key, as replicas must.
struct Replicas {
    replicas: Vec<Keyd>,
    _dir: TempDir,
}

impl Replicas {
    async fn start(url: &str, n: usize) -> Self {
        Self::start_each(url, &vec![&[][..]; n]).await
    }

    /// One replica per entry of `flags`, each with those flags besides the shared ones.
    async fn start_each(url: &str, flags: &[&[&str]]) -> Self {
        let dir = tempfile::Builder::new().prefix("tollgate-replicas-").tempdir().unwrap();
        let shared = replica_args(url, dir.path());
        let mut replicas = Vec::new();
        // One at a time: the first creates the shared pepper and master key files.
        for (i, more) in flags.iter().enumerate() {
            let args: Vec<String> =
                shared.iter().cloned().chain(more.iter().map(|f| f.to_string())).collect();
            replicas.push(Keyd::start_with_args(dir.path().join(format!("replica-{i}")), &args).await);
        }
        Self { replicas, _dir: dir }
    }
}

fn replica_args(url: &str, shared: &Path) -> Vec<String> {
    vec![
        "--store".into(),
        url.into(),
        "--pepper-file".into(),
        shared.join("pepper").display().to_string(),
        "--master-key-file".into(),
        shared.join("master.key").display().to_string(),
    ]
}

fn key_hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

async fn verify(client: &mut KeyClient, secret: &str) -> Result<i32, Code> {
    client
        .verify_key(VerifyKeyRequest { key_hash: key_hash(secret) })
        .await
        .map(|r| r.into_inner().result)
        .map_err(|status| status.code())
}

/// Every change from position 0, read through `client`.
async fn whole_feed(client: &mut KeyClient) -> (Vec<u64>, u64) {
    let mut seqs = Vec::new();
    loop {
        let after = seqs.last().copied().unwrap_or(0);
        let page = client
            .list_changes(ListChangesRequest { after_seq: after, limit: 1000 })
            .await
            .unwrap()
            .into_inner();
        if page.changes.is_empty() {
            return (seqs, page.head_seq);
        }
        seqs.extend(page.changes.iter().map(|c| c.seq));
    }
}

#[tokio::test]
async fn a_key_revoked_through_replica_a_is_refused_by_a_gateway_on_replica_c_within_two_seconds() {
    let url = Cluster::shared().create_database("revoke_across").unwrap();
    let replicas = Replicas::start(&url, 3).await;
    let (a, c) = (&replicas.replicas[0], &replicas.replicas[2]);
    let echo = Echo::start();
    let mut config = c.key_auth_config();
    config["key_service"]["poll_interval"] = json!(format!("{}ms", POLL.as_millis()));
    let envoy =
        Envoy::start(EnvoyOpts::new(echo.addr()).key_auth(config).keyd(c.addr()).workers(WORKERS)).await;
    let client = HttpClient::fresh_connections();
    let statuses = |key: String| {
        let (client, envoy) = (&client, &envoy);
        async move {
            let mut out = Vec::new();
            for _ in 0..8 {
                out.push(client.get(envoy.url("/")).header("x-api-key", &key).send().await.status);
            }
            out
        }
    };

    // Made through A, verified by the gateway through C, and cached on both workers.
    let (id, key) = a.create_key("alice", &[]).await;
    let (_, other) = replicas.replicas[1].create_key("bob", &[]).await;
    assert!(statuses(key.clone()).await.iter().all(|s| *s == 200));
    assert!(statuses(other.clone()).await.iter().all(|s| *s == 200), "a key made through B works too");
    let polls = "wasmcustom.tollgate.key_auth.feed_polls_total";
    assert!(eventually(Duration::from_secs(5), || async { envoy.stat(polls).await.unwrap_or(0) >= 2 }).await);

    let revoked_at = Instant::now();
    a.revoke_key(&id).await;
    let refused = eventually(Duration::from_secs(2), || async {
        statuses(key.clone()).await.iter().all(|s| *s == 401)
    })
    .await;
    let took = revoked_at.elapsed();
    assert!(refused, "still accepted through replica C {took:?} after the revocation through A");
    // The requests above may all have met the worker that polled; the other learns on its tick.
    every_worker_ticked(POLL).await;
    let seen = statuses(key.clone()).await;
    assert!(seen.iter().all(|s| *s == 401), "every worker refuses it: {seen:?}");
    assert!(statuses(other).await.iter().all(|s| *s == 200), "other keys unaffected");
    eprintln!("a revocation through replica A took effect through replica C after {took:?}");
}

#[tokio::test]
async fn no_acknowledged_write_is_lost_when_a_replica_is_killed_during_writes() {
    let url = Cluster::shared().create_database("kill_replica").unwrap();
    let mut replicas = Replicas::start(&url, 3).await;
    let acknowledged = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Four writers on each of A and B, until stopped (or 400 writes each).
    let mut writers = Vec::new();
    for (r, replica) in replicas.replicas[..2].iter().enumerate() {
        for w in 0..4 {
            let mut client = replica.admin_client().await;
            let (acknowledged, stop) = (Arc::clone(&acknowledged), Arc::clone(&stop));
            writers.push(tokio::spawn(async move {
                let mut failed = 0u32;
                for n in 0..400 {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let request = CreateKeyRequest {
                        consumer: format!("writer-{r}-{w}"),
                        create_consumer: n == 0,
                        ..Default::default()
                    };
                    match client.create_key(request).await {
                        Ok(response) => {
                            let response = response.into_inner();
                            acknowledged.lock().await.push((response.key.unwrap().id, response.secret));
                        }
                        // The replica was killed under this call: not acknowledged.
                        Err(_) => failed += 1,
                    }
                }
                failed
            }));
        }
    }
    // Kill B while the writes go on.
    let written_before_kill =
        eventually(Duration::from_secs(20), || async { acknowledged.lock().await.len() >= 200 }).await;
    assert!(written_before_kill, "the writers made too little progress");
    replicas.replicas[1].kill();
    let at_kill = acknowledged.lock().await.len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut failed = 0;
    for writer in writers {
        failed += writer.await.unwrap();
    }
    let acknowledged = acknowledged.lock().await.clone();
    assert!(failed > 0, "some writes went to the killed replica and failed");
    assert!(acknowledged.len() > at_kill, "writes through A went on after B died");

    // Every acknowledged key is there, through C, with its secret, and the feed has no gaps.
    let c = &replicas.replicas[2];
    let mut admin = c.admin_client().await;
    let mut dataplane = c.dataplane_client().await;
    for (id, secret) in &acknowledged {
        let key = admin.get_key(GetKeyRequest { id: id.clone() }).await.unwrap().into_inner();
        assert_eq!(key.id, *id);
        assert_eq!(verify(&mut dataplane, secret).await, Ok(VerifyResult::Valid as i32), "{id}");
    }
    let (seqs, head) = whole_feed(&mut dataplane).await;
    assert_eq!(seqs, (1..=head).collect::<Vec<_>>(), "feed positions 1..={head} with no gaps");
    let ids: BTreeSet<&str> = acknowledged.iter().map(|(id, _)| id.as_str()).collect();
    assert!(seqs.len() >= ids.len(), "one change per key at least");
    eprintln!(
        "{} writes acknowledged ({at_kill} before the kill), {failed} failed with the killed replica, feed head {head}",
        acknowledged.len()
    );

    // The killed replica comes back and serves the same store.
    replicas.replicas[1].restart().await;
    let mut back = replicas.replicas[1].dataplane_client().await;
    let (_, secret) = &acknowledged[acknowledged.len() - 1];
    assert_eq!(verify(&mut back, secret).await, Ok(VerifyResult::Valid as i32));
}

#[tokio::test]
async fn replicas_answer_unavailable_while_postgresql_is_stopped_and_recover_by_themselves() {
    // A cluster of its own: the test stops it.
    let cluster = Cluster::start().unwrap();
    let url = cluster.create_database("outage").unwrap();
    let replicas = Replicas::start(&url, 2).await;
    let (a, b) = (&replicas.replicas[0], &replicas.replicas[1]);
    let (id, cached) = a.create_key("alice", &[]).await;
    let (_, unseen) = a.create_key("bob", &[]).await;
    let echo = Echo::start();
    let mut config = b.key_auth_config();
    config["key_service"]["poll_interval"] = json!(format!("{}ms", POLL.as_millis()));
    let envoy =
        Envoy::start(EnvoyOpts::new(echo.addr()).key_auth(config).keyd(b.addr()).workers(WORKERS)).await;
    let http = HttpClient::fresh_connections();
    let status = |key: &str| {
        let req = http.get(envoy.url("/")).header("x-api-key", key);
        async move { req.send().await.status }
    };
    for _ in 0..6 {
        assert_eq!(status(&cached).await, 200, "cached on both workers");
    }

    cluster.stop().unwrap();
    // Every replica: UNAVAILABLE, for reads and writes alike, never an answer.
    for replica in [a, b] {
        let mut dataplane = replica.dataplane_client().await;
        assert_eq!(verify(&mut dataplane, &cached).await, Err(Code::Unavailable));
        assert_eq!(verify(&mut dataplane, "tgk_never_issued").await, Err(Code::Unavailable));
        let mut admin = replica.admin_client().await;
        let revoke = admin.revoke_key(RevokeKeyRequest { id: id.clone(), reason: "outage".into() }).await;
        assert_eq!(revoke.unwrap_err().code(), Code::Unavailable);
        let changes = dataplane.list_changes(ListChangesRequest { after_seq: 0, limit: 10 }).await;
        assert_eq!(changes.unwrap_err().code(), Code::Unavailable);
    }
    // The gateway serves the cached key, and refuses the one it never saw with 503.
    for _ in 0..6 {
        assert_eq!(status(&cached).await, 200, "cached key keeps working");
    }
    assert_eq!(status(&unseen).await, 503);

    cluster.restart().unwrap();
    for replica in [a, b] {
        let mut dataplane = replica.dataplane_client().await;
        let back = eventually(Duration::from_secs(15), || {
            let mut dataplane = dataplane.clone();
            let cached = cached.clone();
            async move { verify(&mut dataplane, &cached).await == Ok(VerifyResult::Valid as i32) }
        })
        .await;
        assert!(back, "replica at {} did not recover", replica.addr());
        assert_eq!(verify(&mut dataplane, &unseen).await, Ok(VerifyResult::Valid as i32));
    }
    let recovered = eventually(Duration::from_secs(10), || async { status(&unseen).await == 200 }).await;
    assert!(recovered, "the gateway's unseen key works once the store is back");
    // The refused revocation did not happen; one now goes through and reaches the gateway.
    a.revoke_key(&id).await;
    let refused = eventually(Duration::from_secs(5), || async {
        let mut all = true;
        for _ in 0..4 {
            all &= status(&cached).await == 401;
        }
        all
    })
    .await;
    assert!(refused, "a revocation after the outage did not reach the gateway");
}

/// A webhook event committed through replica A, which delivers nothing, is delivered by replica
/// B at once: the commit's `NOTIFY` wakes B's delivery, whose own poll is a minute here. Each of
/// 50 events must arrive within 10 s; the latencies are printed.
#[tokio::test]
async fn an_event_committed_through_one_replica_is_delivered_by_another_without_waiting_for_its_poll() {
    const EVENTS: usize = 50;
    let url = Cluster::shared().create_database("notify_delivery").unwrap();
    let replicas = Replicas::start_each(
        &url,
        &[&["--webhooks-concurrency", "0"], &["--webhooks-allow-private", "--webhooks-poll-interval", "60s"]],
    )
    .await;
    let (a, b) = (&replicas.replicas[0], &replicas.replicas[1]);
    let dir = tempfile::tempdir().unwrap();
    let receiver = WebhookReceiver::start(dir.path(), "").await;
    // Registered through B: A refuses a loopback target (it has no --webhooks-allow-private).
    receiver.subscribe(b, &["key.created"]).await;

    let mut latencies = Vec::with_capacity(EVENTS);
    for i in 0..EVENTS {
        a.create_key(&format!("consumer-{i}"), &[]).await;
        let acknowledged = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
        let seen = receiver.wait_for("the event", Duration::from_secs(10), |s| s.len() > i).await;
        assert_eq!(seen.len(), i + 1, "one delivery per event: {seen:#?}");
        assert_eq!(seen[i]["verified"], true, "{}", seen[i]);
        latencies.push(seen[i]["received_at"].as_f64().unwrap() - acknowledged);
    }
    latencies.sort_by(f64::total_cmp);
    let ms = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize] * 1_000.0;
    eprintln!(
        "event committed through A, delivered by B: p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms ({EVENTS} events)",
        ms(0.5),
        ms(0.95),
        ms(1.0)
    );
}
