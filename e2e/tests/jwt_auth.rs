//! jwt-auth end to end: real Envoy, a real JWKS endpoint on loopback, a real upstream.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tollgate_e2e::{
    Echo, Envoy, EnvoyOpts, H2Request, RawRequest, RawResponse, Response, Value, eventually, json,
    static_cluster, wasm_filter, wasm_module,
};
use tollgate_testkit::jwt::{self, Es256, JwtKey, b64url};

const ROOT_ID: &str = "tollgate.jwt_auth";
const STATS: &str = "wasmcustom.tollgate.jwt_auth.";
const ISS: &str = "https://idp.test/realms/demo";

/// A fresh P-256 key from the OS's randomness.
fn new_key() -> Es256 {
    jwt::random_es256().unwrap()
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// An ES256 token for `ISS`/`api`, subject alice, valid for 10 minutes, with `extra` claims on top.
fn token(k: &Es256, kid: &str, extra: Value) -> String {
    let mut claims = json!({"iss": ISS, "aud": "api", "sub": "alice", "exp": now() + 600, "iat": now(),
                            "scope": "read", "email": "alice@example.com"});
    for (name, v) in extra.as_object().unwrap() {
        claims[name] = v.clone();
    }
    jwt::mint(k, kid, &claims)
}

/// A loopback JWKS endpoint: serves the current document, or 503 when it is `None`, after the
/// current delay. Each connection is served on its own thread.
struct Jwks {
    addr: SocketAddr,
    doc: Arc<Mutex<Option<String>>>,
    served: Arc<Mutex<u32>>,
    delay: Arc<Mutex<Duration>>,
}

impl Jwks {
    fn start(doc: Value) -> Jwks {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let doc = Arc::new(Mutex::new(Some(doc.to_string())));
        let served = Arc::new(Mutex::new(0));
        let delay = Arc::new(Mutex::new(Duration::ZERO));
        let (d, s, w) = (doc.clone(), served.clone(), delay.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let (d, s, w) = (d.clone(), s.clone(), w.clone());
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 65_536 {
                        match stream.read(&mut chunk) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    *s.lock().unwrap() += 1;
                    let delay = *w.lock().unwrap();
                    std::thread::sleep(delay);
                    let reply = match d.lock().unwrap().clone() {
                        Some(body) => format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        ),
                        None => "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\nconnection: close\r\n\r\ndown".to_owned(),
                    };
                    let _ = stream.write_all(reply.as_bytes());
                });
            }
        });
        Jwks { addr, doc, served, delay }
    }

    fn set(&self, doc: Option<Value>) {
        *self.doc.lock().unwrap() = doc.map(|d| d.to_string());
    }

    /// Every answer from now on comes this much later.
    fn set_delay(&self, delay: Duration) {
        *self.delay.lock().unwrap() = delay;
    }

    fn served(&self) -> u32 {
        *self.served.lock().unwrap()
    }
}

async fn gateway(echo: &Echo, jwks: &Jwks) -> Envoy {
    let config = json!({
        "providers": [{
            "name": "demo", "issuer": ISS, "audiences": ["api"], "algorithms": ["ES256"],
            "remote_jwks": {"cluster": "idp_jwks", "path": "/realms/demo/protocol/openid-connect/certs",
                            "authority": "idp.test", "timeout": "2s", "refresh_interval": "1s",
                            "refetch_cooldown": "1s", "max_stale": "1h"}
        }],
        "routes": [{"path_prefix": "/admin", "scopes": ["admin"]}],
        "claim_headers": {"x-user-email": "email"}
    });
    start_gateway(echo, &config, "idp_jwks", jwks.addr).await
}

/// Envoy with 2 workers, the jwt-auth filter configured with `config`, and the identity provider at
/// `idp` as cluster `cluster`.
async fn start_gateway(echo: &Echo, config: &Value, cluster: &str, idp: SocketAddr) -> Envoy {
    start_with(echo, config, |o| o.cluster(static_cluster(cluster, idp, false))).await
}

async fn call(envoy: &Envoy, path: &str, token: &str) -> Response {
    envoy.get(path).header("authorization", &format!("Bearer {token}")).send().await
}

fn assert_invalid_token(res: &Response, what: &str) {
    assert_eq!(res.status, 401, "{what}: {}", res.text());
    let challenge = res.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.starts_with("Bearer ") && challenge.contains("error=\"invalid_token\""),
        "{what}: {challenge}"
    );
    assert_eq!(res.json()["error"], "unauthorized", "{what}");
}

#[tokio::test]
async fn jwt_auth_against_a_real_jwks_endpoint() {
    let k1 = new_key();
    let jwks = Jwks::start(json!({"keys": [k1.jwk("k1")]}));
    let echo = Echo::start();
    let envoy = gateway(&echo, &jwks).await;
    let good = token(&k1, "k1", json!({}));

    // Keys arrive with the first fetch.
    let ready =
        eventually(Duration::from_secs(15), || async { call(&envoy, "/hello", &good).await.status == 200 })
            .await;
    assert!(ready, "no 200 with a valid token; log:\n{}", envoy.logs());
    let res = envoy
        .get("/hello")
        .header("authorization", &format!("Bearer {good}"))
        .header("x-tollgate-consumer-id", "mallory")
        .header("x-tollgate-key-id", "key_forged")
        .header("x-user-email", "forged@evil.test")
        .send()
        .await;
    assert_eq!(res.status, 200);
    let seen = res.json();
    assert_eq!(
        seen["headers"]["x-tollgate-key-id"],
        Value::Null,
        "every identity header a client sends is removed"
    );
    assert_eq!(seen["headers"]["x-tollgate-consumer-id"], "alice", "{seen}");
    assert_eq!(seen["headers"]["x-tollgate-issuer"], ISS);
    assert_eq!(seen["headers"]["x-tollgate-scopes"], "read");
    assert_eq!(seen["headers"]["x-user-email"], "alice@example.com");

    // Refusals.
    let missing = envoy.get("/hello").send().await;
    assert_eq!(missing.status, 401);
    assert_eq!(missing.header("www-authenticate"), Some("Bearer realm=\"tollgate\""));
    let expired = call(&envoy, "/hello", &token(&k1, "k1", json!({"exp": now() - 3600}))).await;
    assert_invalid_token(&expired, "expired");
    assert!(expired.header("www-authenticate").unwrap().contains("expired"));
    assert_invalid_token(
        &call(&envoy, "/hello", &token(&k1, "k1", json!({"iss": "https://evil.test"}))).await,
        "issuer",
    );
    assert_invalid_token(
        &call(&envoy, "/hello", &token(&k1, "k1", json!({"aud": "other"}))).await,
        "audience",
    );
    let forged = token(&new_key(), "k1", json!({}));
    assert_invalid_token(&call(&envoy, "/hello", &forged).await, "bad signature");
    let none = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none"}"#),
        b64url(json!({"iss": ISS, "aud": "api", "sub": "x", "exp": now() + 60}).to_string().as_bytes())
    );
    assert_invalid_token(&call(&envoy, "/hello", &none).await, "alg none");
    let two = envoy
        .get("/hello?x=1")
        .header("authorization", &format!("Bearer {good}"))
        .header("authorization", &format!("Bearer {good}"))
        .send()
        .await;
    assert_eq!(two.status, 401, "two tokens");

    // Scope → 403.
    let scoped = call(&envoy, "/admin/users", &good).await;
    assert_eq!(scoped.status, 403);
    assert!(scoped.header("www-authenticate").unwrap().contains("insufficient_scope"));
    assert_eq!(scoped.json()["error"], "forbidden");
    assert_eq!(
        call(&envoy, "/admin/users", &token(&k1, "k1", json!({"scope": "read admin"}))).await.status,
        200
    );

    // Only allowed requests reached the upstream.
    let upstream_before = echo.requests();

    // Key rotation at the IdP: a token with a new kid is accepted without restarting Envoy.
    let k2 = new_key();
    jwks.set(Some(json!({"keys": [k1.jwk("k1"), k2.jwk("k2")]})));
    let rotated = token(&k2, "k2", json!({"sub": "bob"}));
    let accepted = eventually(Duration::from_secs(10), || async {
        call(&envoy, "/hello", &rotated).await.status == 200
    })
    .await;
    assert!(accepted, "rotated key not accepted; log:\n{}", envoy.logs());
    assert!(echo.requests() > upstream_before);

    // The JWKS endpoint goes down: fetches fail, the last good keys keep working.
    jwks.set(None);
    let served = jwks.served();
    let errors_before = envoy.stat(&format!("{STATS}jwks_fetches_total.outcome.error")).await.unwrap_or(0);
    let failing = eventually(Duration::from_secs(10), || async {
        jwks.served() > served
            && envoy.stat(&format!("{STATS}jwks_fetches_total.outcome.error")).await.unwrap_or(0)
                > errors_before
    })
    .await;
    assert!(failing, "no failed fetch seen");
    assert_eq!(call(&envoy, "/hello", &good).await.status, 200);
    let res = call(&envoy, "/hello", &rotated).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.json()["headers"]["x-tollgate-consumer-id"], "bob");
    // A brand-new key cannot be learned while the endpoint is down.
    assert_invalid_token(&call(&envoy, "/hello", &token(&new_key(), "k3", json!({}))).await, "unknown kid");

    let stats = envoy.stats("jwt_auth").await;
    assert!(
        stats.get(&format!("{STATS}requests_total.decision.allow")).copied().unwrap_or(0) >= 5,
        "{stats:?}"
    );
    assert!(
        stats.get(&format!("{STATS}requests_total.decision.deny.reason.expired")).copied().unwrap_or(0) >= 1,
        "{stats:?}"
    );
}

/// A loopback identity provider: an OpenID discovery document, its JWKS, and an introspection
/// endpoint answering `active` for one token and `inactive` for any other (Basic credentials
/// checked). Counts introspection calls.
struct Idp {
    addr: SocketAddr,
    introspected: Arc<Mutex<u32>>,
}

const ACTIVE: &str = "opaque-active-2YotnFZFEjr1zCsicMWpAA";
const INACTIVE: &str = "opaque-revoked-tGzv3JOkF0XG5Qx2TlKWIA";

impl Idp {
    fn start(jwks: Value) -> Idp {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let introspected = Arc::new(Mutex::new(0));
        let count = introspected.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                let mut head_end = None;
                loop {
                    if head_end.is_none() {
                        head_end = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
                    }
                    if let Some(end) = head_end {
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if buf.len() >= end + len {
                            break;
                        }
                    }
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&buf).into_owned();
                let first = text.lines().next().unwrap_or_default().to_owned();
                let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
                // base64("gateway:s3cret")
                let authorized =
                    text.to_ascii_lowercase().contains("authorization: basic z2f0zxdhetpzm2nyzxq=");
                let (status, reply) = if first.starts_with("GET /.well-known/openid-configuration ") {
                    let doc = json!({"issuer": ISS, "jwks_uri": "http://idp.test/certs",
                                     "introspection_endpoint": "http://idp.test/introspect"});
                    ("200 OK", doc.to_string())
                } else if first.starts_with("GET /certs ") {
                    ("200 OK", jwks.to_string())
                } else if first.starts_with("POST /introspect ") && authorized {
                    *count.lock().unwrap() += 1;
                    let answer = if body.starts_with(&format!("token={ACTIVE}")) {
                        json!({"active": true, "sub": "svc-reports", "scope": "read", "exp": now() + 300,
                               "iss": ISS, "aud": "api", "email": "reports@example.com"})
                    } else {
                        json!({"active": false})
                    };
                    ("200 OK", answer.to_string())
                } else if first.starts_with("POST /introspect ") {
                    ("401 Unauthorized", json!({"error": "invalid_client"}).to_string())
                } else {
                    ("404 Not Found", "{}".to_owned())
                };
                let reply = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
                    reply.len()
                );
                let _ = stream.write_all(reply.as_bytes());
            }
        });
        Idp { addr, introspected }
    }

    fn introspected(&self) -> u32 {
        *self.introspected.lock().unwrap()
    }
}

#[tokio::test]
async fn jwt_auth_discovery_and_introspection_against_a_real_idp() {
    let k1 = new_key();
    let idp = Idp::start(json!({"keys": [k1.jwk("k1")]}));
    let echo = Echo::start();
    let config = json!({
        "providers": [{
            "name": "demo", "issuer": ISS, "audiences": ["api"], "algorithms": ["ES256"],
            "discovery": {"cluster": "idp", "authority": "idp.test"},
            "introspection": {"client_id": "gateway", "client_secret": "s3cret", "cache_ttl": "60s"}
        }],
        "routes": [{"path_prefix": "/admin", "scopes": ["admin"]}],
        "claim_headers": {"x-user-email": "email"}
    });
    let envoy = start_gateway(&echo, &config, "idp", idp.addr).await;

    // Keys found through the discovery document.
    let good = token(&k1, "k1", json!({}));
    let ready =
        eventually(Duration::from_secs(15), || async { call(&envoy, "/hello", &good).await.status == 200 })
            .await;
    assert!(ready, "no 200 with a valid JWT; log:\n{}", envoy.logs());

    // An active opaque token: introspected, identity passed upstream. Each worker reads the
    // discovery document itself (the key set is shared, the introspection endpoint is not yet),
    // so a worker may answer 503 until its own discovery is done: wait for that, fail closed.
    let introspecting =
        eventually(Duration::from_secs(15), || async { call(&envoy, "/hello", ACTIVE).await.status == 200 })
            .await;
    assert!(introspecting, "no 200 with an active opaque token; log:\n{}", envoy.logs());
    let res = call(&envoy, "/hello", ACTIVE).await;
    assert_eq!(res.status, 200, "{}; log:\n{}", res.text(), envoy.logs());
    let seen = res.json();
    assert_eq!(seen["headers"]["x-tollgate-consumer-id"], "svc-reports", "{seen}");
    assert_eq!(seen["headers"]["x-tollgate-scopes"], "read");
    assert_eq!(seen["headers"]["x-user-email"], "reports@example.com");
    // Scope rules apply.
    let scoped = call(&envoy, "/admin/x", ACTIVE).await;
    assert_eq!(scoped.status, 403);
    // Cached: the endpoint is not asked again for every request.
    let asked = idp.introspected();
    for _ in 0..5 {
        assert_eq!(call(&envoy, "/hello", ACTIVE).await.status, 200);
    }
    assert!(idp.introspected() <= asked + 2, "cache not used: {} calls", idp.introspected());

    // An inactive one: 401.
    assert_invalid_token(&call(&envoy, "/hello", INACTIVE).await, "inactive");
    let stats = envoy.stats("jwt_auth").await;
    assert!(
        stats
            .get(&format!("{STATS}requests_total.decision.deny.reason.inactive_token"))
            .copied()
            .unwrap_or(0)
            >= 1,
        "{stats:?}"
    );
    assert!(
        stats.get(&format!("{STATS}discovery_fetches_total.outcome.ok")).copied().unwrap_or(0) >= 1,
        "{stats:?}"
    );
}

/// Envoy with 2 workers, the jwt-auth filter configured with `config` and whatever `more` adds
/// (named routes, clusters).
async fn start_with(echo: &Echo, config: &Value, more: impl FnOnce(EnvoyOpts) -> EnvoyOpts) -> Envoy {
    let filter = wasm_filter(ROOT_ID, ROOT_ID, &wasm_module("tollgate_jwt_auth"), config);
    let opts = more(EnvoyOpts::new(echo.addr()).http_filter(filter).workers(2));
    Envoy::start(opts).await
}

/// A provider whose keys are in the configuration (no fetch to wait for).
fn inline_provider(keys: &[Value]) -> Value {
    json!({"name": "demo", "issuer": ISS, "audiences": ["api"], "algorithms": ["ES256"],
           "jwks": {"keys": keys}})
}

/// A provider whose keys are fetched from the cluster `idp_jwks`; unknown `kid`s fetch again at
/// most every second, the periodic refresh is rare.
fn remote_provider(timeout: &str) -> Value {
    json!({"name": "demo", "issuer": ISS, "audiences": ["api"], "algorithms": ["ES256", "RS256"],
           "remote_jwks": {"cluster": "idp_jwks", "path": "/certs", "authority": "idp.test",
                           "timeout": timeout, "refresh_interval": "5m", "refetch_cooldown": "1s",
                           "max_stale": "1h"}})
}

async fn raw(envoy: &Envoy, req: RawRequest) -> RawResponse {
    req.send(envoy.addr()).await.unwrap_or_else(|e| panic!("request failed: {e}; log:\n{}", envoy.logs()))
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A route rule keyed on Envoy's route name applies: the filter reads the name where Envoy 1.40
/// provides it (`xds.route_name`).
#[tokio::test]
async fn a_route_name_rule_applies_through_envoy() {
    let k1 = new_key();
    let echo = Echo::start();
    let config = json!({
        "providers": [inline_provider(&[k1.jwk("k1")])],
        "routes": [{"route_name": "admin-console", "scopes": ["admin"]}]
    });
    let envoy = start_with(&echo, &config, |o| o.named_route("admin-console", "/console")).await;
    let reader = token(&k1, "k1", json!({"scope": "read"}));
    let admin = token(&k1, "k1", json!({"scope": "read admin"}));

    let refused = call(&envoy, "/console/users", &reader).await;
    assert_eq!(refused.status, 403, "the named route requires `admin`: {}", refused.text());
    assert!(refused.header("www-authenticate").unwrap().contains("insufficient_scope"));
    assert_eq!(echo.requests(), 0, "nothing reached the upstream");
    assert_eq!(call(&envoy, "/console/users", &admin).await.status, 200);
    // Another route (the catch-all `main`) has no such rule.
    assert_eq!(call(&envoy, "/hello", &reader).await.status, 200);
    assert_eq!(echo.requests(), 2);
}

/// A `path_prefix` rule applies to every spelling of its path, and a path whose meaning depends
/// on the upstream (an encoded slash) is refused.
#[tokio::test]
async fn a_path_rule_applies_to_every_spelling_of_the_path() {
    let k1 = new_key();
    let echo = Echo::start();
    let config = json!({
        "providers": [inline_provider(&[k1.jwk("k1")])],
        "routes": [{"path_prefix": "/admin", "scopes": ["admin"]}]
    });
    let envoy = start_with(&echo, &config, |o| o).await;
    let reader = bearer(&token(&k1, "k1", json!({"scope": "read"})));
    let admin = bearer(&token(&k1, "k1", json!({"scope": "admin"})));

    for target in ["/admin", "//admin", "/./admin", "/%61dmin", "/x/../admin", "/admin/./x", "/%2e/admin/x"] {
        let res = raw(&envoy, RawRequest::get(target).header("authorization", &reader)).await;
        assert_eq!(res.status, 403, "{target}: {}", res.text());
        assert_eq!(res.json()["error"], "forbidden", "{target}");
    }
    assert_eq!(echo.requests(), 0, "no spelling of /admin reached the upstream");
    for target in ["/admin%2Fx", "/%2Fadmin", "/admin%5cx"] {
        let res = raw(&envoy, RawRequest::get(target).header("authorization", &admin)).await;
        assert_eq!(res.status, 400, "{target}: {}", res.text());
        assert_eq!(res.json()["error"], "bad_request", "{target}");
    }
    assert_eq!(echo.requests(), 0);
    // With the scope, the same spellings pass (rules refuse nothing else).
    let res = raw(&envoy, RawRequest::get("//admin").header("authorization", &admin)).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let res = raw(&envoy, RawRequest::get("/x/../hello").header("authorization", &reader)).await;
    assert_eq!(res.status, 200, "{}", res.text());
}

/// Requests with a `kid` the key set does not know yet all wait for the one fetch it triggers,
/// on every worker, instead of being refused while it is in flight.
#[tokio::test]
async fn requests_with_a_new_kid_wait_for_one_slow_fetch() {
    let k1 = new_key();
    let jwks = Jwks::start(json!({"keys": [k1.jwk("k1")]}));
    let echo = Echo::start();
    let mut config = json!({"providers": [remote_provider("5s")]});
    // No cooldown: the first request with k2 fetches at once, however soon after the first fetch.
    config["providers"][0]["remote_jwks"]["refetch_cooldown"] = json!("0s");
    let envoy = start_with(&echo, &config, |o| o.cluster(static_cluster("idp_jwks", jwks.addr, false))).await;
    let old = token(&k1, "k1", json!({}));
    let ready =
        eventually(Duration::from_secs(15), || async { call(&envoy, "/hello", &old).await.status == 200 })
            .await;
    assert!(ready, "no 200 with a valid token; log:\n{}", envoy.logs());
    // Both workers know k1 (each has answered a request with it).
    for _ in 0..8 {
        let res = raw(&envoy, RawRequest::get("/hello").header("authorization", bearer(&old))).await;
        assert_eq!(res.status, 200);
    }

    // The IdP rotates to k2 and answers slowly.
    let k2 = new_key();
    jwks.set(Some(json!({"keys": [k1.jwk("k1"), k2.jwk("k2")]})));
    jwks.set_delay(Duration::from_millis(1500));
    let served = jwks.served();
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..10 {
        let auth = bearer(&token(&k2, "k2", json!({"sub": format!("user-{i}")})));
        let addr = envoy.addr();
        // One connection each, so the requests spread over the workers.
        requests.spawn(async move {
            let res = RawRequest::get(&format!("/hello/{i}")).header("authorization", auth).send(addr).await;
            (i, res)
        });
    }
    let mut ok = 0;
    while let Some(done) = requests.join_next().await {
        let (i, res) = done.unwrap();
        let res = res.unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(res.status, 200, "request {i}: {}; log:\n{}", res.text(), envoy.logs());
        assert_eq!(res.json()["headers"]["x-tollgate-consumer-id"], format!("user-{i}"));
        ok += 1;
    }
    assert_eq!(ok, 10);
    assert!(jwks.served() - served <= 2, "one fetch for all of them, not {}", jwks.served() - served);
}

/// A request that goes away while it waits for a key-set fetch (here the one that started it:
/// the proxy cancels its call) does not strand the others: they are answered when the fetch the
/// root context makes again for them ends.
#[tokio::test]
async fn a_waiting_request_that_goes_away_does_not_strand_the_others() {
    let k1 = new_key();
    let jwks = Jwks::start(json!({"keys": [k1.jwk("k1")]}));
    let echo = Echo::start();
    let mut config = json!({"providers": [remote_provider("5s")]});
    config["providers"][0]["remote_jwks"]["refetch_cooldown"] = json!("0s");
    let envoy =
        start_with(&echo, &config, |o| o.cluster(static_cluster("idp_jwks", jwks.addr, false)).workers(1))
            .await;
    let old = token(&k1, "k1", json!({}));
    let ready =
        eventually(Duration::from_secs(15), || async { call(&envoy, "/hello", &old).await.status == 200 })
            .await;
    assert!(ready, "no 200 with a valid token; log:\n{}", envoy.logs());

    let k2 = new_key();
    jwks.set(Some(json!({"keys": [k1.jwk("k1"), k2.jwk("k2")]})));
    jwks.set_delay(Duration::from_millis(1500));
    // The first request starts the fetch, then its client gives up and closes the connection.
    let impatient = RawRequest::get("/first")
        .header("authorization", bearer(&token(&k2, "k2", json!({}))))
        .timeout(Duration::from_millis(400))
        .send(envoy.addr());
    let addr = envoy.addr();
    let others = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut requests = tokio::task::JoinSet::new();
        for i in 0..4 {
            let auth = bearer(&token(&k2, "k2", json!({"sub": format!("user-{i}")})));
            requests.spawn(async move {
                (i, RawRequest::get(&format!("/next/{i}")).header("authorization", auth).send(addr).await)
            });
        }
        requests.join_all().await
    };
    let (first, others) = tokio::join!(impatient, others);
    assert!(first.is_err(), "the first request waits for the slow fetch: {first:?}");
    for (i, res) in others {
        let res = res.unwrap_or_else(|e| panic!("request {i}: {e}; log:\n{}", envoy.logs()));
        assert_eq!(res.status, 200, "request {i}: {}; log:\n{}", res.text(), envoy.logs());
        assert_eq!(res.json()["headers"]["x-tollgate-consumer-id"], format!("user-{i}"));
    }
    assert!(
        echo.received().iter().all(|r| r.path != "/first"),
        "the request that went away never reached the upstream"
    );
}

/// Keys the JWKS marks as not for verifying signatures (`key_ops` without `verify`, `use` other
/// than `sig`) never verify a token; the other keys of the set keep working.
#[tokio::test]
async fn keys_not_meant_for_verification_are_skipped() {
    let (k1, k_ops, k_enc, k_verify) = (new_key(), new_key(), new_key(), new_key());
    let mut sign_only = k_ops.jwk("sign-only");
    sign_only["key_ops"] = json!(["sign"]);
    let mut encryption = k_enc.jwk("encryption");
    encryption["use"] = json!("enc");
    let mut verifying = k_verify.jwk("verifying");
    verifying["key_ops"] = json!(["verify"]);
    verifying.as_object_mut().unwrap().remove("use");
    let jwks = Jwks::start(json!({"keys": [k1.jwk("k1"), sign_only, encryption, verifying]}));
    let echo = Echo::start();
    let config = json!({"providers": [remote_provider("2s")]});
    let envoy = start_with(&echo, &config, |o| o.cluster(static_cluster("idp_jwks", jwks.addr, false))).await;
    let good = token(&k1, "k1", json!({}));
    let ready =
        eventually(Duration::from_secs(15), || async { call(&envoy, "/hello", &good).await.status == 200 })
            .await;
    assert!(ready, "no 200 with a valid token; log:\n{}", envoy.logs());
    assert_eq!(call(&envoy, "/hello", &token(&k_verify, "verifying", json!({}))).await.status, 200);
    let upstream = echo.requests();
    assert_invalid_token(&call(&envoy, "/hello", &token(&k_ops, "sign-only", json!({}))).await, "key_ops");
    assert_invalid_token(&call(&envoy, "/hello", &token(&k_enc, "encryption", json!({}))).await, "use enc");
    assert_eq!(echo.requests(), upstream, "refused tokens never reach the upstream");
}

/// A scope holding a comma reaches the upstream as one scope (the list is space-separated); a
/// scope holding a space cannot be told apart from two scopes, so its token is refused.
#[tokio::test]
async fn scopes_reach_the_upstream_exactly_or_not_at_all() {
    let k1 = new_key();
    let echo = Echo::start();
    let config = json!({
        "providers": [inline_provider(&[k1.jwk("k1")])],
        "routes": [{"path_prefix": "/admin", "scopes": ["admin"]}]
    });
    let envoy = start_with(&echo, &config, |o| o).await;

    for claims in
        [json!({"scope": null, "scp": ["orders", "read,admin"]}), json!({"scope": ["orders", "read,admin"]})]
    {
        let comma = token(&k1, "k1", claims.clone());
        let res = call(&envoy, "/hello", &comma).await;
        assert_eq!(res.status, 200, "{claims}: {}", res.text());
        let published = res.json()["headers"]["x-tollgate-scopes"].as_str().unwrap().to_owned();
        assert_eq!(published, "orders read,admin", "{claims}");
        assert!(!published.split(' ').any(|s| s == "admin"), "{published}");
        // Nor does the filter itself read `admin` in it.
        assert_eq!(call(&envoy, "/admin/x", &comma).await.status, 403, "{claims}");
    }

    let upstream = echo.requests();
    for claims in [json!({"scope": null, "scp": ["read admin"]}), json!({"scope": "read\tadmin"})] {
        let spaced = token(&k1, "k1", claims.clone());
        for path in ["/hello", "/admin/x"] {
            let res = call(&envoy, path, &spaced).await;
            assert_invalid_token(&res, &format!("{claims} at {path}"));
        }
    }
    assert_eq!(echo.requests(), upstream, "refused tokens never reach the upstream");
    let stats = envoy.stats("jwt_auth").await;
    assert!(
        stats
            .get(&format!("{STATS}requests_total.decision.deny.reason.unpublishable_identity"))
            .copied()
            .unwrap_or(0)
            >= 4,
        "{stats:?}"
    );
}

/// A token in a cookie is found whatever the framing: a second `Cookie` line (Envoy keeps it as a
/// second field line, which a lookup by name does not answer), HTTP/2 cookie crumbs (joined with
/// `; `); two tokens are refused.
#[tokio::test]
async fn cookies_are_read_from_every_field_line() {
    let k1 = new_key();
    let echo = Echo::start();
    let config = json!({
        "providers": [inline_provider(&[k1.jwk("k1")])],
        "sources": [{"header": "authorization", "prefix": "Bearer "}, {"cookie": "access_token"}]
    });
    let envoy = start_with(&echo, &config, |o| o).await;
    let good = token(&k1, "k1", json!({}));
    let other = token(&k1, "k1", json!({"sub": "bob"}));

    let one_line =
        raw(&envoy, RawRequest::get("/a").header("cookie", format!("theme=dark; access_token={good}"))).await;
    assert_eq!(one_line.status, 200, "{}", one_line.text());
    let two_lines = raw(
        &envoy,
        RawRequest::get("/b").header("cookie", "theme=dark").header("cookie", format!("access_token={good}")),
    )
    .await;
    assert_eq!(two_lines.status, 200, "second Cookie line: {}", two_lines.text());
    assert_eq!(two_lines.json()["headers"]["x-tollgate-consumer-id"], "alice");
    let first_of_two = raw(
        &envoy,
        RawRequest::get("/c").header("cookie", format!("access_token={good}")).header("cookie", "theme=dark"),
    )
    .await;
    assert_eq!(first_of_two.status, 200, "first Cookie line: {}", first_of_two.text());

    let h2 = H2Request::get("/d")
        .header("cookie", "theme=dark")
        .header("cookie", format!("access_token={good}"))
        .header("cookie", "lang=en")
        .send(envoy.addr())
        .await
        .unwrap();
    assert_eq!(h2.status, 200, "HTTP/2 cookie crumbs: {}", h2.text());

    let upstream = echo.requests();
    let two_tokens = raw(
        &envoy,
        RawRequest::get("/e")
            .header("cookie", format!("access_token={good}"))
            .header("cookie", format!("access_token={other}")),
    )
    .await;
    assert_eq!(two_tokens.status, 401, "{}", two_tokens.text());
    assert!(two_tokens.header("www-authenticate").unwrap().contains("invalid_request"));
    let h2_two = H2Request::get("/f")
        .header("cookie", format!("access_token={good}"))
        .header("cookie", format!("access_token={other}"))
        .send(envoy.addr())
        .await
        .unwrap();
    assert_eq!(h2_two.status, 401, "{}", h2_two.text());
    let cookie_and_header = raw(
        &envoy,
        RawRequest::get("/g")
            .header("cookie", "theme=dark")
            .header("cookie", format!("access_token={good}"))
            .header("authorization", bearer(&other)),
    )
    .await;
    assert_eq!(cookie_and_header.status, 401, "{}", cookie_and_header.text());
    assert_eq!(echo.requests(), upstream);
    let stats = envoy.stats("jwt_auth").await;
    assert_eq!(
        stats.get(&format!("{STATS}requests_total.decision.deny.reason.multiple_tokens")).copied(),
        Some(3),
        "{stats:?}"
    );
}

/// A base64url-encoded big-endian number of `bytes` random bytes with the top and bottom bits set.
fn random_odd_number(bytes: usize) -> String {
    let mut n = vec![0u8; bytes];
    getrandom::fill(&mut n).unwrap();
    n[0] |= 0x80;
    n[bytes - 1] |= 1;
    b64url(&n)
}

/// One key the filter cannot use (a 1024-bit RSA key) does not take the provider down: it is
/// skipped, counted and logged; the other keys work.
#[tokio::test]
async fn one_unusable_key_does_not_take_the_provider_down() {
    let k1 = new_key();
    let weak = json!({"kty": "RSA", "kid": "legacy-1024", "use": "sig", "alg": "RS256",
                      "n": random_odd_number(128), "e": "AQAB"});
    let jwks = Jwks::start(json!({"keys": [weak, k1.jwk("k1")]}));
    let echo = Echo::start();
    let config = json!({"providers": [remote_provider("2s")]});
    let envoy = start_with(&echo, &config, |o| o.cluster(static_cluster("idp_jwks", jwks.addr, false))).await;
    let good = token(&k1, "k1", json!({}));
    let ready =
        eventually(Duration::from_secs(15), || async { call(&envoy, "/hello", &good).await.status == 200 })
            .await;
    assert!(ready, "the good key is not used; log:\n{}", envoy.logs());
    let stats = envoy.stats("jwt_auth").await;
    assert!(stats.get(&format!("{STATS}jwks_key_skipped_total")).copied().unwrap_or(0) >= 1, "{stats:?}");
    assert!(
        stats.get(&format!("{STATS}jwks_fetches_total.outcome.ok")).copied().unwrap_or(0) >= 1,
        "{stats:?}"
    );
    let logs = envoy.logs();
    assert!(logs.contains("legacy-1024") && logs.contains("2048 bits"), "{logs}");
}

/// An identity that cannot travel in a header as it is (a `sub` with CR/LF or NUL, a mapped
/// claim with control characters) is refused: the request never reaches the upstream with an
/// empty or missing identity.
#[tokio::test]
async fn an_identity_that_cannot_be_carried_is_refused() {
    let k1 = new_key();
    let echo = Echo::start();
    let config = json!({
        "providers": [inline_provider(&[k1.jwk("k1")])],
        "claim_headers": {"x-user-email": "email"}
    });
    let envoy = start_with(&echo, &config, |o| o).await;
    let cases = [
        json!({"sub": "alice\r\nx-evil: 1"}),
        json!({"sub": "al\u{0}ice"}),
        json!({"sub": " alice"}),
        json!({"email": "alice@example.com\r\nx-evil: 1"}),
        json!({"email": {"primary": "alice@example.com"}}),
    ];
    for claims in cases {
        let res = call(&envoy, "/hello", &token(&k1, "k1", claims.clone())).await;
        assert_invalid_token(&res, &claims.to_string());
    }
    assert_eq!(echo.requests(), 0, "nothing reached the upstream");
    let stats = envoy.stats("jwt_auth").await;
    assert_eq!(
        stats.get(&format!("{STATS}requests_total.decision.deny.reason.unpublishable_identity")).copied(),
        Some(5),
        "{stats:?}"
    );
    // A faithful identity passes; one without a mapped claim passes without the header.
    let res = call(&envoy, "/hello", &token(&k1, "k1", json!({"email": null}))).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.json()["headers"]["x-tollgate-consumer-id"], "alice");
    assert!(res.json()["headers"].get("x-user-email").is_none());
}
