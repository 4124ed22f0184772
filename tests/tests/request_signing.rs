//! The request-signing filter end to end: real Envoy (2 workers), the real key service, a real
//! upstream, requests signed with the `tollgate sign` CLI.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tollgate_e2e::{
    DATAPLANE_TOKEN, Echo, Envoy, EnvoyOpts, HttpClient, KEYD_CLUSTER, Keyd, Response, Value, binary,
    eventually, json, wasm_filter, wasm_module,
};
use tollgate_proto::v1::{CreateKeyRequest, SigningAlgorithm};

const ROOT_ID: &str = "tollgate.request_signing";
const STATS: &str = "wasmcustom.tollgate.request_signing.";
/// The Ed25519 test key of RFC 9421 (B.1.4).
const ED25519_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF\n-----END PRIVATE KEY-----\n";
const ED25519_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=\n-----END PUBLIC KEY-----\n";

struct Gateway {
    echo: Echo,
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
            "max_body_bytes": 1024,
            "cache": {"ttl": "60s"}
        });
        let filter = wasm_filter(ROOT_ID, ROOT_ID, &wasm_module("tollgate_request_signing"), &config);
        let envoy =
            Envoy::start(EnvoyOpts::new(echo.addr()).keyd(keyd.addr()).http_filter(filter).workers(2)).await;
        Self { echo, keyd, envoy, client: HttpClient::fresh_connections(), dir: tempfile::tempdir().unwrap() }
    }

    /// Creates an HMAC key; returns its id and the secret file.
    async fn hmac_key(&self, consumer: &str) -> (String, PathBuf) {
        let response = self
            .keyd
            .admin_client()
            .await
            .create_key(CreateKeyRequest {
                consumer: consumer.into(),
                create_consumer: true,
                signing_algorithm: SigningAlgorithm::HmacSha256 as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.signing_secret.len(), 32);
        let id = response.key.unwrap().id;
        let path = self.dir.path().join(format!("{id}.secret"));
        std::fs::write(&path, base64(&response.signing_secret)).unwrap();
        (id, path)
    }

    fn url(&self, path: &str) -> String {
        self.envoy.url(path)
    }

    /// Sends `method path` with `headers` and `body`.
    async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: Option<&[u8]>,
    ) -> Response {
        let method = method.parse().unwrap();
        let mut req = self.client.request(method, self.url(path));
        for (k, v) in headers {
            req = req.header(k, v);
        }
        if let Some(b) = body {
            req = req.body(b.to_vec());
        }
        req.send().await
    }

    async fn stat(&self, name: &str) -> u64 {
        self.envoy.stat(&format!("{STATS}{name}")).await.unwrap_or(0)
    }
}

/// Runs `tollgate sign` and returns the headers it printed.
fn sign(
    key_arg: (&str, &Path),
    key_id: &str,
    method: &str,
    url: &str,
    body: Option<&Path>,
    extra: &[&str],
) -> Vec<(String, String)> {
    let mut cmd = Command::new(binary("tollgate"));
    cmd.args(["sign", "--key-id", key_id, key_arg.0]).arg(key_arg.1).args(["-X", method, "--url", url]);
    if let Some(b) = body {
        cmd.arg("--body-file").arg(b);
    }
    cmd.args(extra);
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "tollgate sign failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(": ").map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect()
}

/// Standard base64 with padding (what `keys create --signing hmac` prints).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn assert_401(res: &Response) {
    assert_eq!(res.status, 401, "{}", res.text());
    assert_eq!(res.json()["error"], "unauthorized");
    assert!(res.header("www-authenticate").is_some_and(|v| v.starts_with("Signature realm=")));
}

#[tokio::test]
async fn signatures_are_verified_end_to_end() {
    let mut gw = Gateway::start().await;
    let (key_id, secret) = gw.hmac_key("alice").await;
    let hmac = ("--secret-file", secret.as_path());
    let body_path = gw.dir.path().join("body.json");
    std::fs::write(&body_path, br#"{"amount": 10}"#).unwrap();
    let url = gw.url("/pay?id=1");
    assert_401(&gw.send("GET", "/x", &[], None).await);

    // Signed with `tollgate sign`: allowed, identity published, client copies replaced.
    let mut headers = sign(hmac, &key_id, "POST", &url, Some(&body_path), &[]);
    let digest = headers.iter().find(|(k, _)| k == "Content-Digest").cloned();
    headers.push(("x-tollgate-consumer-id".into(), "mallory".into()));
    let res = gw.send("POST", "/pay?id=1", &headers, Some(br#"{"amount": 10}"#)).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let seen = gw.echo.last_request().unwrap();
    assert_eq!(seen.header("x-tollgate-consumer-id"), Some("alice"));
    assert_eq!(seen.header("x-tollgate-key-id"), Some(key_id.as_str()));

    // The same request again: a replay.
    assert_401(&gw.send("POST", "/pay?id=1", &headers, Some(br#"{"amount": 10}"#)).await);

    // Body changed after signing (fresh signature over the original body).
    let headers = sign(hmac, &key_id, "POST", &url, Some(&body_path), &["--nonce"]);
    assert_eq!(headers.iter().find(|(k, _)| k == "Content-Digest").cloned(), digest);
    assert_401(&gw.send("POST", "/pay?id=1", &headers, Some(br#"{"amount": 99}"#)).await);

    // `created` too old.
    let old = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() - 600)
        .to_string();
    let headers = sign(hmac, &key_id, "GET", &gw.url("/a"), None, &["--created", &old]);
    assert_401(&gw.send("GET", "/a", &headers, None).await);

    // Wrong algorithm: an Ed25519 signature for an HMAC key.
    let ed_file = gw.dir.path().join("ed.pem");
    std::fs::write(&ed_file, ED25519_PRIVATE).unwrap();
    let headers = sign(("--private-key", &ed_file), &key_id, "GET", &gw.url("/a"), None, &[]);
    assert_401(&gw.send("GET", "/a", &headers, None).await);

    // An Ed25519 key registered with its public key works.
    let pub_file = gw.dir.path().join("ed.pub");
    std::fs::write(&pub_file, ED25519_PUBLIC).unwrap();
    let out = Command::new(binary("tollgate"))
        .args([
            "--server",
            &format!("http://{}", gw.keyd.addr()),
            "--token",
            tollgate_e2e::ADMIN_TOKEN,
            "--json",
        ])
        .args(["keys", "create", "--consumer", "bob", "--signing", "ed25519", "--public-key"])
        .arg(&pub_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ed_id = created["id"].as_str().unwrap().to_owned();
    let headers = sign(("--private-key", &ed_file), &ed_id, "GET", &gw.url("/b"), None, &[]);
    assert_eq!(gw.send("GET", "/b", &headers, None).await.status, 200);

    // Oversized body: 413.
    let big = gw.dir.path().join("big");
    std::fs::write(&big, vec![b'x'; 4096]).unwrap();
    let headers = sign(hmac, &key_id, "POST", &url, Some(&big), &[]);
    let res = gw.send("POST", "/pay?id=1", &headers, Some(&vec![b'x'; 4096])).await;
    assert_eq!(res.status, 413, "{}", res.text());

    // Revoked key: refused once the change feed reports it (cached material is invalidated).
    gw.keyd.revoke_key(&key_id).await;
    let revoked = eventually(Duration::from_secs(5), || async {
        let headers = sign(hmac, &key_id, "GET", &gw.url("/c"), None, &["--nonce"]);
        gw.send("GET", "/c", &headers, None).await.status == 401
    })
    .await;
    assert!(revoked, "revocation did not reach the gateway");
    assert!(gw.stat("denied.revoked_key").await >= 1 || gw.stat("denied.replayed").await >= 1);

    // Master-key rotation: a key created before the rotation and first used after it works.
    let (fresh_id, fresh_secret) = gw.hmac_key("carol").await;
    gw.keyd.stop().await;
    let out = Command::new(binary("tollgate-keyd"))
        .arg("--data-dir")
        .arg(gw.keyd.data_dir())
        .arg("rotate-master-key")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("version 2 is current"));
    gw.keyd.restart().await;
    let rotated = eventually(Duration::from_secs(10), || async {
        let headers =
            sign(("--secret-file", &fresh_secret), &fresh_id, "GET", &gw.url("/d"), None, &["--nonce"]);
        gw.send("GET", "/d", &headers, None).await.status == 200
    })
    .await;
    assert!(rotated, "a key stopped working after the master-key rotation");
    assert!(gw.stat("allowed").await >= 3);
    assert!(gw.stat("denied.replayed").await >= 1);
    assert!(gw.stat("denied.digest_mismatch").await >= 1);
}
