//! The request-signing filter's cache of signing material against a key service whose store is
//! restored from a backup: real Envoy (2 workers), the real key service, requests signed with
//! the `tollgate sign` CLI. (key-auth's cache is tested the same way in `key_auth.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use tollgate_e2e::{
    DATAPLANE_TOKEN, Echo, Envoy, EnvoyOpts, HttpClient, KEYD_CLUSTER, Keyd, base64_standard, binary,
    eventually, json, wasm_filter, wasm_module,
};
use tollgate_proto::v1::UpdateKeyRequest;

const WORKERS: u32 = 2;
const ROOT_ID: &str = "tollgate.request_signing";
const STATS: &str = "wasmcustom.tollgate.request_signing.";

struct Gateway {
    _echo: Echo,
    keyd: Keyd,
    envoy: Envoy,
    client: HttpClient,
    dir: tempfile::TempDir,
}

impl Gateway {
    async fn start() -> Self {
        let echo = Echo::start();
        let keyd = Keyd::start_temp().await;
        let config = json!({
            "key_service": {"cluster": KEYD_CLUSTER, "token": DATAPLANE_TOKEN, "poll_interval": "200ms"},
            "policy": {"max_age": "60s", "clock_skew": "10s"},
            "cache": {"ttl": "60s"}
        });
        let filter = wasm_filter(ROOT_ID, ROOT_ID, &wasm_module("tollgate_request_signing"), &config);
        let envoy =
            Envoy::start(EnvoyOpts::new(echo.addr()).keyd(keyd.addr()).http_filter(filter).workers(WORKERS))
                .await;
        Self {
            _echo: echo,
            keyd,
            envoy,
            client: HttpClient::fresh_connections(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Creates an HMAC signing key; returns its id and the file holding its secret.
    async fn hmac_key(&self, consumer: &str) -> (String, PathBuf) {
        let (id, secret) = self.keyd.create_hmac_key(consumer).await;
        let path = self.dir.path().join(format!("{id}.secret"));
        std::fs::write(&path, base64_standard(&secret)).unwrap();
        (id, path)
    }

    /// A GET signed with the key (a fresh nonce each time, so no request is a replay); its status.
    async fn signed_get(&self, key: &(String, PathBuf)) -> u16 {
        let url = self.envoy.url("/signed");
        let out = Command::new(binary("tollgate"))
            .args(["sign", "--key-id", &key.0, "--secret-file"])
            .arg(&key.1)
            .args(["-X", "GET", "--url", &url, "--nonce"])
            .output()
            .unwrap();
        assert!(out.status.success(), "tollgate sign failed: {}", String::from_utf8_lossy(&out.stderr));
        let mut req = self.client.get(url);
        for line in String::from_utf8(out.stdout).unwrap().lines() {
            if let Some((name, value)) = line.split_once(": ") {
                req = req.header(name, value);
            }
        }
        req.send().await.status
    }

    /// The statuses of `n` signed requests with the key.
    async fn statuses(&self, key: &(String, PathBuf), n: usize) -> Vec<u16> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.signed_get(key).await);
        }
        out
    }

    async fn stat(&self, name: &str) -> u64 {
        self.envoy.stat(&format!("{STATS}{name}")).await.unwrap_or(0)
    }

    async fn stat_reaches(&self, name: &str, value: u64) -> bool {
        eventually(Duration::from_secs(5), || async { self.stat(name).await >= value }).await
    }
}

/// A key service restored from a backup: its change feed goes back to the backup's head, and
/// the changes made after the restore reuse sequence numbers the lost timeline had used. Signing
/// material cached before the restore is fetched again within a few polls (not a cache TTL), and
/// the changes of the new timeline invalidate as usual.
#[tokio::test]
async fn a_store_restored_from_a_backup_invalidates_signing_material_cached_before_the_restore() {
    let mut gw = Gateway::start().await;
    let kept = gw.hmac_key("alice").await;
    assert!(gw.statuses(&kept, 4).await.iter().all(|s| *s == 200), "cached on both workers");
    assert!(gw.stat_reaches("feed_polls_total", 2).await, "the feed consumer has started");

    let backup = gw.keyd.backup_store().await;

    // The timeline the restore loses: a new key, a change to the kept key, more changes.
    let lost = gw.hmac_key("bob").await;
    let mut admin = gw.keyd.admin_client().await;
    let rename = UpdateKeyRequest { id: kept.0.clone(), name: Some("renamed".into()), ..Default::default() };
    admin.update_key(rename).await.unwrap();
    for i in 0..4 {
        gw.keyd.create_key(&format!("filler{i}"), &[]).await;
    }
    assert!(gw.stat_reaches("feed_invalidations_total", 1).await, "the gateway learned of the change");
    assert!(gw.statuses(&kept, 4).await.iter().all(|s| *s == 200));
    assert!(gw.statuses(&lost, 4).await.iter().all(|s| *s == 200));

    gw.keyd.restore_store(&backup).await;

    // A key the restored store does not have stops working within a few polls (the cache TTL
    // is 60 s).
    // Every worker learns of the restore on its next tick.
    let gone = eventually(Duration::from_secs(5), || async {
        gw.statuses(&lost, 6).await.iter().all(|s| *s == 401)
    })
    .await;
    assert!(gone, "a signing key missing from the restored store still works on some worker");
    assert!(gw.stat_reaches("requests_total.decision.deny.reason.unknown_key", 1).await);

    // The kept key works, and its new answer is cached: the lost timeline's invalidations do
    // not make every request a lookup.
    assert_eq!(gw.signed_get(&kept).await, 200);
    let allowed = gw.stat("requests_total.decision.allow").await;
    let misses = gw.stat("cache_lookups_total.result.miss").await;
    assert!(gw.statuses(&kept, 6).await.iter().all(|s| *s == 200));
    assert!(gw.stat_reaches("requests_total.decision.allow", allowed + 6).await);
    let lookups = gw.stat("cache_lookups_total.result.miss").await - misses;
    assert!(lookups <= u64::from(WORKERS), "{lookups} lookups for cached material");

    // A revocation after the restore reuses a sequence number the lost timeline had used; it
    // still reaches every worker.
    gw.keyd.revoke_key(&kept.0).await;
    let revoked = eventually(Duration::from_secs(5), || async {
        gw.statuses(&kept, 6).await.iter().all(|s| *s == 401)
    })
    .await;
    assert!(revoked, "a signing key revoked after the restore still works on some worker");
    assert!(gw.stat_reaches("requests_total.decision.deny.reason.revoked_key", 1).await);
}
