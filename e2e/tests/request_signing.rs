//! The request-signing filter end to end: real Envoy (2 workers), the real key service, a real
//! upstream, requests signed with the `tollgate sign` CLI.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hyper::Method;
use tollgate_e2e::{
    DATAPLANE_TOKEN, Echo, Envoy, EnvoyOpts, H2Request, HttpClient, KEYD_CLUSTER, Keyd, RawRequest, Response,
    Value, base64_standard, binary, eventually, json, wasm_filter, wasm_module,
};

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
        Self::start_with(|_| {}, |o| o).await
    }

    /// A gateway whose filter config and Envoy options the test adjusts.
    async fn start_with(config: impl FnOnce(&mut Value), opts: impl FnOnce(EnvoyOpts) -> EnvoyOpts) -> Self {
        let echo = Echo::start();
        let keyd = Keyd::start_temp().await;
        let mut filter_config = json!({
            "key_service": {"cluster": KEYD_CLUSTER, "token": DATAPLANE_TOKEN, "poll_interval": "200ms"},
            "policy": {"max_age": "60s", "clock_skew": "10s"},
            "max_body_bytes": 1024,
            "cache": {"ttl": "60s"}
        });
        config(&mut filter_config);
        let filter = wasm_filter(ROOT_ID, ROOT_ID, &wasm_module("tollgate_request_signing"), &filter_config);
        let envoy =
            Envoy::start(opts(EnvoyOpts::new(echo.addr()).keyd(keyd.addr()).http_filter(filter).workers(2)))
                .await;
        Self { echo, keyd, envoy, client: HttpClient::fresh_connections(), dir: tempfile::tempdir().unwrap() }
    }

    /// Creates an HMAC key; returns its id and the secret file.
    async fn hmac_key(&self, consumer: &str) -> (String, PathBuf) {
        let (id, secret) = self.keyd.create_hmac_key(consumer).await;
        assert_eq!(secret.len(), 32);
        let path = self.dir.path().join(format!("{id}.secret"));
        std::fs::write(&path, base64_standard(&secret)).unwrap();
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
    let extra: Vec<&OsStr> = extra.iter().map(OsStr::new).collect();
    sign_os(key_arg, key_id, method, url, body, &extra)
}

/// [`sign`] with arguments that may hold any bytes (a `-H` value that is not UTF-8).
fn sign_os(
    key_arg: (&str, &Path),
    key_id: &str,
    method: &str,
    url: &str,
    body: Option<&Path>,
    extra: &[&OsStr],
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

/// The value of header `name` among `headers`.
fn value<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).unwrap()
}

/// An HTTP/1.1 request written byte for byte, carrying `headers`. Its `Host` is `gateway`: sign
/// it for `http://gateway{target}`.
fn raw(method: &str, target: &str, headers: &[(String, String)]) -> RawRequest {
    headers.iter().fold(RawRequest::new(method, target.as_bytes()), |r, (k, v)| r.header(k, v))
}

/// An HTTP/2 request carrying `headers`; its `:authority` is the listener's address.
fn h2(method: Method, path: &str, headers: &[(String, String)]) -> H2Request {
    headers.iter().fold(H2Request::new(method, path), |r, (k, v)| r.header(k, v))
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
    assert!(
        gw.stat("requests_total.decision.deny.reason.revoked_key").await >= 1
            || gw.stat("requests_total.decision.deny.reason.replayed").await >= 1
    );

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
    assert!(gw.stat("requests_total.decision.allow").await >= 3);
    assert!(gw.stat("requests_total.decision.deny.reason.replayed").await >= 1);
    assert!(gw.stat("requests_total.decision.deny.reason.digest_mismatch").await >= 1);
}

const BODY: &[u8] = br#"{"amount": 10}"#;
const TAMPERED: &[u8] = br#"{"amount": 99}"#;

impl Gateway {
    /// A signed GET with a nonce: afterwards the key's material is cached.
    async fn warm(&self, key_id: &str, secret: &Path) {
        let headers = sign(("--secret-file", secret), key_id, "GET", &self.url("/warm"), None, &["--nonce"]);
        assert_eq!(self.send("GET", "/warm", &headers, None).await.status, 200);
    }

    fn body_file(&self) -> PathBuf {
        let path = self.dir.path().join("body.json");
        std::fs::write(&path, BODY).unwrap();
        path
    }

    /// Whether the upstream ever received `body`.
    fn upstream_saw(&self, body: &[u8]) -> bool {
        self.echo.received().iter().any(|r| r.body.as_ref() == body)
    }
}

/// HTTP/2 requests whose stream ends with a trailers frame: the body is complete only when the
/// trailers arrive, and its digest is checked there, whether the key's material is cached, still
/// being fetched while the body and trailers arrive, or fetched before the body arrives. With a
/// `content-length` a body lost on the way would leave the upstream waiting (a 504 after the
/// route timeout); without one, the upstream would see an empty body.
#[tokio::test]
async fn h2_bodies_ending_with_trailers_are_checked() {
    let gw = Gateway::start().await;
    let body_path = gw.body_file();
    let mut tampered = 0;
    // (key cached, the client pauses before each frame so the key can arrive first, content-length)
    let cases = [
        (false, false, false),
        (false, false, true),
        (true, false, false),
        (true, false, true),
        (false, true, false),
    ];
    for (cached, paced, with_length) in cases {
        for genuine in [false, true] {
            let case =
                format!("cached={cached} paced={paced} content-length={with_length} genuine={genuine}");
            let (key_id, secret) = gw.hmac_key("alice").await;
            if cached {
                gw.warm(&key_id, &secret).await;
            }
            let url = gw.url("/pay");
            let mut headers =
                sign(("--secret-file", &secret), &key_id, "POST", &url, Some(&body_path), &["--nonce"]);
            if with_length {
                headers.push(("content-length".into(), BODY.len().to_string()));
            }
            let pause = if paced { Duration::from_millis(300) } else { Duration::ZERO };
            let sent = if genuine { BODY } else { TAMPERED };
            let res = h2(Method::POST, "/pay", &headers)
                .chunks(vec![sent[..5].to_vec().into(), sent[5..].to_vec().into()])
                .trailer("x-checksum", "none")
                .pause(pause)
                .send(gw.envoy.addr())
                .await
                .unwrap_or_else(|e| panic!("{case}: {e}"));
            if genuine {
                assert_eq!(res.status, 200, "{case}: {}", res.text());
                assert_eq!(res.json()["body"], String::from_utf8_lossy(BODY).as_ref(), "{case}");
            } else {
                tampered += 1;
                assert_eq!(res.status, 401, "{case}: {}", res.text());
                assert_eq!(res.json()["error"], "unauthorized", "{case}");
            }
        }
    }
    assert!(!gw.upstream_saw(TAMPERED), "a tampered body reached the upstream");
    assert_eq!(gw.stat("requests_total.decision.deny.reason.digest_mismatch").await, tampered);
    assert_eq!(gw.stat("requests_total.decision.deny.reason.replayed").await, 0);
}

/// HTTP/1.1 chunked bodies with trailers. With `enable_trailers` Envoy hands the trailers to the
/// filter (the body ends there, as over HTTP/2); without it Envoy drops them and the body ends
/// with its last chunk. Either way the digest is checked.
#[tokio::test]
async fn chunked_bodies_with_trailers_are_checked() {
    for enable_trailers in [true, false] {
        let gw = Gateway::start_with(
            |_| {},
            |o| o.hcm_field("http_protocol_options", json!({"enable_trailers": enable_trailers})),
        )
        .await;
        let body_path = gw.body_file();
        let mut tampered = 0;
        for cached in [false, true] {
            for genuine in [false, true] {
                let (key_id, secret) = gw.hmac_key("alice").await;
                if cached {
                    gw.warm(&key_id, &secret).await;
                }
                let headers = sign(
                    ("--secret-file", &secret),
                    &key_id,
                    "POST",
                    "http://gateway/pay",
                    Some(&body_path),
                    &["--nonce"],
                );
                let sent = if genuine { BODY } else { TAMPERED };
                let res = raw("POST", "/pay", &headers)
                    .chunked(&[&sent[..5], &sent[5..]], &[("x-checksum", "none")])
                    .send(gw.envoy.addr())
                    .await
                    .unwrap();
                let case = format!("enable_trailers={enable_trailers} cached={cached} genuine={genuine}");
                if genuine {
                    assert_eq!(res.status, 200, "{case}: {}", res.text());
                    assert_eq!(res.json()["body"], String::from_utf8_lossy(BODY).as_ref(), "{case}");
                } else {
                    tampered += 1;
                    assert_eq!(res.status, 401, "{case}: {}", res.text());
                }
            }
        }
        assert!(!gw.upstream_saw(TAMPERED), "a tampered body reached the upstream");
        assert_eq!(gw.stat("requests_total.decision.deny.reason.digest_mismatch").await, tampered);
    }
}

/// A signature covering `Content-Digest` binds the body: a copy sent without it (HTTP/1.1
/// `Content-Length: 0`, HTTP/2 END_STREAM on HEADERS) is refused, and refusing it does not use
/// up the nonce, so the genuine request still goes through.
#[tokio::test]
async fn a_signed_body_cannot_be_stripped() {
    let gw = Gateway::start().await;
    let (key_id, secret) = gw.hmac_key("alice").await;
    let hmac = ("--secret-file", secret.as_path());
    let body_path = gw.body_file();

    // HTTP/1.1: the same signature with `Content-Length: 0`, then with the body.
    let headers = sign(hmac, &key_id, "POST", "http://gateway/pay", Some(&body_path), &["--nonce"]);
    let res =
        raw("POST", "/pay", &headers).header("content-length", "0").send(gw.envoy.addr()).await.unwrap();
    assert_eq!(res.status, 401, "stripped HTTP/1.1 copy: {}", res.text());
    let res = raw("POST", "/pay", &headers).body(BODY).send(gw.envoy.addr()).await.unwrap();
    assert_eq!(res.status, 200, "genuine HTTP/1.1 request after the stripped copy: {}", res.text());
    assert_eq!(res.json()["body"], String::from_utf8_lossy(BODY).as_ref());

    // HTTP/2: END_STREAM on HEADERS, then with the body.
    let url = gw.url("/pay");
    let headers = sign(hmac, &key_id, "POST", &url, Some(&body_path), &["--nonce"]);
    let res = h2(Method::POST, "/pay", &headers).send(gw.envoy.addr()).await.unwrap();
    assert_eq!(res.status, 401, "stripped HTTP/2 copy: {}", res.text());
    let res = h2(Method::POST, "/pay", &headers).body(BODY).send(gw.envoy.addr()).await.unwrap();
    assert_eq!(res.status, 200, "genuine HTTP/2 request after the stripped copy: {}", res.text());

    // A request that sends a Content-Digest, covered or not, is held to it.
    let headers = sign(hmac, &key_id, "GET", &gw.url("/a"), None, &["--nonce"]);
    let mut with_digest = headers.clone();
    with_digest
        .push(("Content-Digest".into(), "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:".into()));
    assert_401(&gw.send("GET", "/a", &with_digest, None).await);
    assert_eq!(gw.send("GET", "/a", &headers, None).await.status, 200);

    assert_eq!(gw.stat("requests_total.decision.deny.reason.digest_mismatch").await, 3);
    assert_eq!(gw.stat("requests_total.decision.deny.reason.replayed").await, 0);
    assert!(gw.echo.received().iter().filter(|r| r.path == "/pay").all(|r| r.body.as_ref() == BODY));
}

/// `Signature-Input` and `Signature` sent as several field lines are one dictionary each
/// (RFC 9110 section 5.3): the signature on the second line is found.
#[tokio::test]
async fn signatures_on_several_field_lines_are_combined() {
    let gw = Gateway::start().await;
    let (key_id, secret) = gw.hmac_key("alice").await;
    let hmac = ("--secret-file", secret.as_path());
    for http2 in [false, true] {
        let url = if http2 { gw.url("/items?id=1") } else { "http://gateway/items?id=1".to_owned() };
        // sig1 covers too little for the policy, so sig2 (on the second lines) is the one used.
        let sig1 = sign(hmac, &key_id, "GET", &url, None, &["--label", "sig1", "--component", "@method"]);
        let sig2 = sign(hmac, &key_id, "GET", &url, None, &["--label", "sig2", "--nonce"]);
        let lines: Vec<(String, String)> = ["Signature-Input", "Signature"]
            .iter()
            .flat_map(|name| {
                [
                    (name.to_string(), value(&sig1, name).to_owned()),
                    (name.to_string(), value(&sig2, name).to_owned()),
                ]
            })
            .collect();
        let (status, text) = if http2 {
            let res = h2(Method::GET, "/items?id=1", &lines).send(gw.envoy.addr()).await.unwrap();
            (res.status, res.text())
        } else {
            let res = raw("GET", "/items?id=1", &lines).send(gw.envoy.addr()).await.unwrap();
            (res.status, res.text())
        };
        assert_eq!(status, 200, "http2={http2}: {text}");
        let seen = gw.echo.last_request().unwrap();
        assert_eq!(seen.header_lines("signature").len(), 2, "http2={http2}: both lines go upstream");
    }
    assert_eq!(gw.stat("requests_total.decision.allow").await, 2);
}

/// Header values that are not UTF-8 are signed as the bytes they are: with `;bs` (base64 of the
/// exact bytes) and without (the raw bytes in the signature base). The same signature over other
/// invalid bytes is refused.
#[tokio::test]
async fn non_utf8_header_bytes_are_signed_exactly() {
    use std::os::unix::ffi::OsStrExt;
    let gw = Gateway::start().await;
    let (key_id, secret) = gw.hmac_key("alice").await;
    let signed_bytes: &[u8] = &[0xff, 0xfe];
    let other_bytes: &[u8] = &[0xfe, 0xff];
    let mut header_arg = b"X-Bin: ".to_vec();
    header_arg.extend_from_slice(signed_bytes);
    for component in [r#""x-bin";bs"#, "x-bin"] {
        let mut args: Vec<&OsStr> = vec!["--nonce".as_ref(), "-H".as_ref(), OsStr::from_bytes(&header_arg)];
        for c in ["@method", "@authority", "@path", "@query", component] {
            args.extend(["--component".as_ref(), OsStr::new(c)]);
        }
        let headers = sign_os(("--secret-file", &secret), &key_id, "GET", "http://gateway/bin", None, &args);
        let res =
            raw("GET", "/bin", &headers).header("x-bin", other_bytes).send(gw.envoy.addr()).await.unwrap();
        assert_eq!(res.status, 401, "{component} over other bytes: {}", res.text());
        let res =
            raw("GET", "/bin", &headers).header("x-bin", signed_bytes).send(gw.envoy.addr()).await.unwrap();
        assert_eq!(res.status, 200, "{component} over the signed bytes: {}", res.text());
        assert_eq!(gw.echo.last_request().unwrap().header_lines("x-bin"), vec![signed_bytes]);
    }
    assert_eq!(gw.stat("requests_total.decision.deny.reason.bad_signature").await, 2);
}

/// A per-route policy keyed on Envoy's route name applies to that route only (the name comes
/// from `xds.route_name`).
#[tokio::test]
async fn a_route_name_rule_applies_to_its_route() {
    let gw = Gateway::start_with(
        |c| c["routes"] = json!([{"route_name": "payments", "policy": {"require_nonce": true}}]),
        |o| o.named_route("payments", "/payments"),
    )
    .await;
    let (key_id, secret) = gw.hmac_key("alice").await;
    let hmac = ("--secret-file", secret.as_path());
    let headers = sign(hmac, &key_id, "GET", &gw.url("/payments/1"), None, &[]);
    assert_401(&gw.send("GET", "/payments/1", &headers, None).await);
    assert_eq!(gw.stat("requests_total.decision.deny.reason.missing_nonce").await, 1);
    let headers = sign(hmac, &key_id, "GET", &gw.url("/payments/1"), None, &["--nonce"]);
    assert_eq!(gw.send("GET", "/payments/1", &headers, None).await.status, 200);
    let headers = sign(hmac, &key_id, "GET", &gw.url("/orders/1"), None, &[]);
    assert_eq!(gw.send("GET", "/orders/1", &headers, None).await.status, 200, "other routes need no nonce");
}

/// A `path_prefix` policy applies to every spelling of its path: rules match the normalised
/// path, while the signature covers the path as sent.
#[tokio::test]
async fn spellings_of_a_ruled_path_do_not_escape_its_policy() {
    let gw = Gateway::start_with(
        |c| c["routes"] = json!([{"path_prefix": "/x", "policy": {"require_nonce": true}}]),
        |o| o,
    )
    .await;
    let (key_id, secret) = gw.hmac_key("alice").await;
    let hmac = ("--secret-file", secret.as_path());
    let spellings = ["/x", "//x", "/%78", "/a/../x", "/./x/y"];
    for spelling in spellings {
        let url = format!("http://gateway{spelling}");
        let headers = sign(hmac, &key_id, "GET", &url, None, &[]);
        let res = raw("GET", spelling, &headers).send(gw.envoy.addr()).await.unwrap();
        assert_eq!(res.status, 401, "{spelling} without a nonce: {}", res.text());
        let headers = sign(hmac, &key_id, "GET", &url, None, &["--nonce"]);
        let res = raw("GET", spelling, &headers).send(gw.envoy.addr()).await.unwrap();
        assert_eq!(res.status, 200, "{spelling} with a nonce: {}", res.text());
    }
    assert_eq!(gw.stat("requests_total.decision.deny.reason.missing_nonce").await, spellings.len() as u64);
    let headers = sign(hmac, &key_id, "GET", "http://gateway/y", None, &[]);
    let res = raw("GET", "/y", &headers).send(gw.envoy.addr()).await.unwrap();
    assert_eq!(res.status, 200, "other paths need no nonce: {}", res.text());
}

#[tokio::test]
async fn signed_requests_are_reported_per_key_to_the_key_service() {
    let gw = Gateway::start_with(|c| c["usage"] = json!({"report_interval": "1s"}), |o| o).await;
    let (key_id, secret) = gw.hmac_key("alice").await;
    let hmac = ("--secret-file", secret.as_path());
    for i in 0..4 {
        let url = gw.url(&format!("/orders/{i}"));
        let headers = sign(hmac, &key_id, "GET", &url, None, &["--nonce"]);
        assert_eq!(gw.send("GET", &format!("/orders/{i}"), &headers, None).await.status, 200);
        if i == 0 {
            // The same signature again: a replay, refused and counted against the key.
            assert_401(&gw.send("GET", "/orders/0", &headers, None).await);
        }
    }
    let mut admin = gw.keyd.admin_client().await;
    let query = tollgate_proto::v1::GetUsageRequest { key_ids: vec![key_id.clone()], ..Default::default() };
    let reported = eventually(Duration::from_secs(15), || {
        let (mut admin, query) = (admin.clone(), query.clone());
        async move {
            let usage = admin.get_usage(query).await.unwrap().into_inner();
            usage.keys.first().is_some_and(|k| k.allowed == 4 && k.outcomes.get("replayed") == Some(&1))
        }
    })
    .await;
    let usage = admin.get_usage(query).await.unwrap().into_inner();
    assert!(reported, "{usage:?}");
    assert_eq!(usage.gateways[0].gateway, tollgate_e2e::NODE_ID);
}
