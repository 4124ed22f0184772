//! The key service's web dashboard over real HTTP against the real `tollgate-keyd` binary:
//! logins, security headers on every page, CSRF and viewer refusals that change nothing, keys
//! created, rotated and revoked through the forms (checked with VerifyKey and the audit log),
//! escaping, and cookies that do not verify.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use tollgate_e2e::{ADMIN_TOKEN, HttpClient, Keyd, Response, VIEWER_TOKEN};
use tollgate_proto::v1::{
    GetKeyRequest, KeyStatus, ListKeysRequest, ReportUsageRequest, RotationMode, RotationPolicy,
    SetRotationPolicyRequest, UsageCount, VerifyKeyRequest, VerifyResult,
};

/// A browser-less client of one key service's dashboard, holding at most one session cookie.
struct Dashboard {
    base: String,
    http: HttpClient,
}

const XSS_CONSUMER: &str = "<script>alert(1)</script>";

fn form_encode(pairs: &[(&str, &str)]) -> String {
    let encode = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    pairs.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect::<Vec<_>>().join("&")
}

impl Dashboard {
    fn new(keyd: &Keyd) -> Self {
        Self { base: format!("http://{}", keyd.http_addr()), http: HttpClient::fresh_connections() }
    }

    async fn get(&self, path: &str, cookie: Option<&str>) -> Response {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        request.send().await
    }

    async fn post(&self, path: &str, cookie: Option<&str>, form: &[(&str, &str)]) -> Response {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form_encode(form));
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        request.send().await
    }

    /// Logs in; returns the `cookie` header value of the session.
    async fn login(&self, token: &str) -> String {
        let response = self.post("/login", None, &[("token", token)]).await;
        assert_eq!(response.status, 303, "login: {}", response.text());
        assert_eq!(response.header("location"), Some("/"));
        session_cookie(&response)
    }

    /// A page that must be there (200), with the security headers.
    async fn page(&self, path: &str, cookie: &str) -> String {
        let response = self.get(path, Some(cookie)).await;
        assert_eq!(response.status, 200, "GET {path}: {}", response.text());
        assert_security_headers(&response, path);
        response.text()
    }

    /// The CSRF token in a page's forms.
    async fn csrf(&self, cookie: &str) -> String {
        csrf_of(&self.page("/", cookie).await)
    }
}

fn session_cookie(response: &Response) -> String {
    let set = response.header("set-cookie").expect("a session cookie");
    let pair = set.split(';').next().unwrap().trim();
    assert!(pair.starts_with("tollgate_session="), "{set}");
    pair.to_owned()
}

fn csrf_of(html: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let start = html.find(marker).unwrap_or_else(|| panic!("no CSRF field in {html}")) + marker.len();
    html[start..].split('"').next().unwrap().to_owned()
}

/// The text of `<code id="secret">` on a page that shows a new key.
fn secret_of(html: &str) -> String {
    let marker = "<code id=\"secret\">";
    let start = html.find(marker).unwrap_or_else(|| panic!("no secret on {html}")) + marker.len();
    html[start..].split('<').next().unwrap().to_owned()
}

fn assert_security_headers(response: &Response, what: &str) {
    let csp = response.header("content-security-policy").unwrap_or_default();
    assert!(csp.starts_with("default-src 'self'"), "{what}: CSP {csp:?}");
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
    ] {
        assert_eq!(response.header(name), Some(value), "{what}: {name}");
    }
}

async fn verify(keyd: &Keyd, secret: &str) -> VerifyResult {
    let key_hash = Sha256::digest(secret.as_bytes()).to_vec();
    let response = keyd.dataplane_client().await.verify_key(VerifyKeyRequest { key_hash }).await.unwrap();
    VerifyResult::try_from(response.into_inner().result).unwrap()
}

async fn key_status(keyd: &Keyd, id: &str) -> tollgate_proto::v1::Key {
    keyd.admin_client().await.get_key(GetKeyRequest { id: id.to_owned() }).await.unwrap().into_inner()
}

async fn key_count(keyd: &Keyd) -> usize {
    let request = ListKeysRequest { page_size: 500, ..Default::default() };
    keyd.admin_client().await.list_keys(request).await.unwrap().into_inner().keys.len()
}

/// How many audit entries the audit page lists (at most a page of them).
async fn audit_rows(dash: &Dashboard, cookie: &str) -> usize {
    dash.page("/audit", cookie).await.matches("<tr><td class=\"num\">").count()
}

#[tokio::test]
async fn login_with_the_admin_or_viewer_token_and_not_with_a_wrong_one() {
    let keyd = Keyd::start_temp().await;
    let dash = Dashboard::new(&keyd);

    // No session: every page leads to the login form.
    for path in ["/", "/keys", "/keys/key_x", "/audit", "/consumers"] {
        let response = dash.get(path, None).await;
        assert_eq!(response.status, 303, "{path}");
        assert_eq!(response.header("location"), Some("/login"), "{path}");
        assert_security_headers(&response, path);
    }
    let login = dash.get("/login", None).await;
    assert_eq!(login.status, 200);
    assert_security_headers(&login, "/login");
    assert!(login.text().contains("id=\"login\""));

    // A wrong token: 401 with the login form, no cookie, nothing about why.
    for wrong in ["tga_wrong", "", &ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1], &format!("{ADMIN_TOKEN}x")] {
        let response = dash.post("/login", None, &[("token", wrong)]).await;
        assert_eq!(response.status, 401, "{wrong:?}");
        assert_security_headers(&response, "failed login");
        assert!(response.header("set-cookie").is_none());
        let body = response.text();
        assert!(body.contains("id=\"login\"") && body.contains("not valid"), "{body}");
        assert!(!body.contains(ADMIN_TOKEN) && !body.contains(VIEWER_TOKEN));
    }
    // The data-plane token is no dashboard login either.
    let response = dash.post("/login", None, &[("token", tollgate_e2e::DATAPLANE_TOKEN)]).await;
    assert_eq!(response.status, 401);

    // Admin: the cookie is HttpOnly, SameSite=Strict, Path=/, and expires.
    let response = dash.post("/login", None, &[("token", ADMIN_TOKEN)]).await;
    assert_eq!(response.status, 303);
    let set = response.header("set-cookie").unwrap().to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=28800"] {
        assert!(set.split("; ").any(|a| a == attribute), "{attribute} missing from {set}");
    }
    let admin = session_cookie(&response);
    let overview = dash.page("/", &admin).await;
    assert!(overview.contains("<span class=\"role\">admin</span>"), "{overview}");
    assert!(overview.contains("href=\"/keys/new\""));

    let viewer = dash.login(VIEWER_TOKEN).await;
    let overview = dash.page("/", &viewer).await;
    assert!(overview.contains("<span class=\"role\">viewer</span>"));
    assert!(!overview.contains("/keys/new"), "a viewer is not offered the create form");

    // Logging out ends the session, also for a copy of the cookie.
    let csrf = dash.csrf(&admin).await;
    let response = dash.post("/logout", Some(&admin), &[("csrf", &csrf)]).await;
    assert_eq!(response.status, 303);
    assert_eq!(response.header("location"), Some("/login"));
    assert!(response.header("set-cookie").unwrap().contains("Max-Age=0"));
    let after = dash.get("/", Some(&admin)).await;
    assert_eq!((after.status, after.header("location")), (303, Some("/login")));
    // The viewer's session is another one and goes on.
    dash.page("/", &viewer).await;
}

#[tokio::test]
async fn every_page_is_served_with_the_security_headers_and_shows_the_usage() {
    let keyd = Keyd::start_temp().await;
    let (key_id, _secret) = keyd.create_key("alice", &["read"]).await;
    // A gateway's report: 7 allowed and 2 refused in the current minute.
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let minute = now - now % 60;
    let count = |outcome: &str, count| UsageCount {
        key_id: key_id.clone(),
        minute,
        outcome: outcome.into(),
        count,
        ..Default::default()
    };
    let report = ReportUsageRequest {
        gateway: "edge-gw-1".into(),
        batch: 1,
        feed_seq: 0,
        counts: vec![count("allowed", 7), count("revoked_key", 2)],
    };
    keyd.dataplane_client().await.report_usage(report).await.unwrap();

    let dash = Dashboard::new(&keyd);
    let cookie = dash.login(ADMIN_TOKEN).await;
    for path in [
        "/",
        "/consumers",
        "/keys",
        "/keys?status=active",
        "/keys?consumer=alice",
        &format!("/keys/{key_id}"),
        "/keys/new",
        "/audit",
        "/audit?action=key.create",
        &format!("/audit?key={key_id}"),
        "/static/style.css",
    ] {
        dash.page(path, &cookie).await;
    }
    let css = dash.get("/static/style.css", Some(&cookie)).await;
    assert_eq!(css.header("content-type"), Some("text/css; charset=utf-8"));
    let missing = dash.get("/no/such/page", Some(&cookie)).await;
    assert_eq!(missing.status, 404);
    assert_security_headers(&missing, "404");

    let overview = dash.page("/", &cookie).await;
    assert!(overview.contains("id=\"allowed-24h\">7<"), "{overview}");
    assert!(overview.contains("id=\"denied-24h\">2<"), "{overview}");
    assert!(overview.contains("denied: revoked_key"), "{overview}");
    assert!(overview.contains("edge-gw-1"), "the gateway is listed: {overview}");
    assert!(overview.contains("<svg class=\"spark\""));
    assert!(overview.contains(&format!("href=\"/keys/{}\"", key_id.replace('_', "%5F"))), "top keys link");

    let keys = dash.page("/keys", &cookie).await;
    let row_start = keys.find(&format!("data-key=\"{key_id}\"")).expect("the key's row");
    let row = &keys[row_start..keys[row_start..].find("</tr>").unwrap() + row_start];
    assert!(row.contains("<td class=\"num\">7</td><td class=\"num\">2</td>"), "{row}");
    assert!(row.contains("<span class=\"status active\">active</span>"), "{row}");
    assert!(row.contains("<svg class=\"spark\""), "{row}");

    let detail = dash.page(&format!("/keys/{key_id}"), &cookie).await;
    assert!(detail.contains("denied: revoked_key</td><td class=\"num\">2<"), "{detail}");
    assert!(detail.contains("key.create"), "the key's audit trail: {detail}");
    assert!(detail.contains("<p id=\"policy\">No rotation policy.</p>"), "{detail}");
    // A consumer's rotation policy shows on its keys' pages.
    let policy = RotationPolicy {
        max_age_seconds: 90 * 86_400,
        notify_before_seconds: vec![30 * 86_400, 86_400],
        grace_seconds: 86_400,
        mode: RotationMode::Auto as i32,
        revoke_unused_previous_after_seconds: 0,
    };
    keyd.admin_client()
        .await
        .set_rotation_policy(SetRotationPolicyRequest {
            consumer: "alice".into(),
            key_id: String::new(),
            policy: Some(policy),
        })
        .await
        .unwrap();
    let detail = dash.page(&format!("/keys/{key_id}"), &cookie).await;
    assert!(
        detail.contains("Rotation policy: rotated automatically ")
            && detail.contains("(max age 90d; notices 30d, 1d; grace 1d)"),
        "{detail}"
    );
    // No inline script or style anywhere.
    for page in [&overview, &keys, &detail] {
        assert!(!page.contains("<script") && !page.contains("style="), "inline script or style");
    }
}

#[tokio::test]
async fn changes_without_the_csrf_token_are_refused_and_change_nothing() {
    let keyd = Keyd::start_temp().await;
    let (key_id, secret) = keyd.create_key("alice", &["read"]).await;
    let dash = Dashboard::new(&keyd);
    let cookie = dash.login(ADMIN_TOKEN).await;
    // Another session's token is no better than none.
    let other = dash.login(ADMIN_TOKEN).await;
    let other_csrf = dash.csrf(&other).await;
    let keys_before = key_count(&keyd).await;
    let audit_before = audit_rows(&dash, &cookie).await;

    for csrf in [None, Some(""), Some(other_csrf.as_str()), Some("AAAA")] {
        let with = |mut form: Vec<(&'static str, String)>| {
            if let Some(csrf) = csrf {
                form.push(("csrf", csrf.to_owned()));
            }
            form
        };
        let attempts = [
            ("/keys".to_owned(), with(vec![("consumer", "mallory".into())])),
            (format!("/keys/{key_id}/revoke"), with(vec![("reason", "csrf".into())])),
            (format!("/keys/{key_id}/rotate"), with(vec![("grace", "0".into())])),
        ];
        for (path, form) in attempts {
            let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let response = dash.post(&path, Some(&cookie), &form).await;
            assert_eq!(response.status, 403, "POST {path} with csrf {csrf:?}: {}", response.text());
            assert_security_headers(&response, "403");
            assert!(response.text().contains("CSRF"), "{}", response.text());
        }
    }
    assert_eq!(key_count(&keyd).await, keys_before, "no key was created");
    let key = key_status(&keyd, &key_id).await;
    assert_eq!(key.status, KeyStatus::Active as i32, "the key was not revoked");
    assert_eq!(key.rotated_at, 0, "the key was not rotated");
    assert_eq!(verify(&keyd, &secret).await, VerifyResult::Valid);
    assert_eq!(audit_rows(&dash, &cookie).await, audit_before, "no audit entry");
    // Logging out needs the token too.
    assert_eq!(dash.post("/logout", Some(&cookie), &[]).await.status, 403);
    dash.page("/", &cookie).await;
}

#[tokio::test]
async fn a_viewer_sees_every_page_and_cannot_change_anything() {
    let keyd = Keyd::start_temp().await;
    let (key_id, secret) = keyd.create_key("alice", &["read"]).await;
    let dash = Dashboard::new(&keyd);
    let viewer = dash.login(VIEWER_TOKEN).await;
    for path in ["/", "/consumers", "/keys", "/audit"] {
        dash.page(path, &viewer).await;
    }
    let detail = dash.page(&format!("/keys/{key_id}"), &viewer).await;
    assert!(!detail.contains("id=\"revoke\"") && !detail.contains("id=\"rotate\""), "no forms for viewers");
    assert_eq!(dash.get("/keys/new", Some(&viewer)).await.status, 403);

    // With the viewer session's own valid CSRF token: still 403.
    let csrf = dash.csrf(&viewer).await;
    let keys_before = key_count(&keyd).await;
    for (path, form) in [
        ("/keys".to_owned(), vec![("csrf", csrf.as_str()), ("consumer", "mallory")]),
        (format!("/keys/{key_id}/revoke"), vec![("csrf", csrf.as_str()), ("reason", "viewer")]),
        (format!("/keys/{key_id}/rotate"), vec![("csrf", csrf.as_str()), ("grace", "0")]),
    ] {
        let response = dash.post(&path, Some(&viewer), &form).await;
        assert_eq!(response.status, 403, "POST {path}: {}", response.text());
        assert_security_headers(&response, "viewer 403");
    }
    assert_eq!(key_count(&keyd).await, keys_before);
    let key = key_status(&keyd, &key_id).await;
    assert_eq!((key.status, key.rotated_at), (KeyStatus::Active as i32, 0));
    assert_eq!(verify(&keyd, &secret).await, VerifyResult::Valid);
}

#[tokio::test]
async fn a_key_created_in_the_dashboard_shows_its_secret_once_and_works() {
    let keyd = Keyd::start_temp().await;
    let dash = Dashboard::new(&keyd);
    let cookie = dash.login(ADMIN_TOKEN).await;
    let csrf = dash.csrf(&cookie).await;
    let form = [
        ("csrf", csrf.as_str()),
        ("consumer", "alice"),
        ("name", "ci"),
        ("scopes", "read write"),
        ("ttl", "30d"),
    ];
    let response = dash.post("/keys", Some(&cookie), &form).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_security_headers(&response, "created");
    let page = response.text();
    let secret = secret_of(&page);
    assert!(secret.starts_with("tgk_"), "{secret}");
    assert_eq!(verify(&keyd, &secret).await, VerifyResult::Valid, "the new key works");

    let keys =
        keyd.admin_client().await.list_keys(ListKeysRequest::default()).await.unwrap().into_inner().keys;
    let [key] = keys.as_slice() else { panic!("one key: {keys:?}") };
    assert_eq!((key.consumer_id.as_str(), key.name.as_str()), ("alice", "ci"));
    assert_eq!(key.scopes, ["read", "write"]);
    assert!(key.expires_at > 0, "30d expiry");

    // Never shown again: not on the key's page, the list, the overview or the audit log.
    for path in ["/", "/keys", &format!("/keys/{}", key.id), "/audit", "/consumers"] {
        let page = dash.page(path, &cookie).await;
        assert!(!page.contains(&secret), "{path} shows the secret");
        assert!(!page.contains(&secret[4..]), "{path} shows the secret's body");
    }
    let audit = dash.page("/audit?action=key.create", &cookie).await;
    assert!(audit.contains(&key.id), "{audit}");
}

#[tokio::test]
async fn rotate_and_revoke_change_the_key_and_appear_in_the_audit_log() {
    let keyd = Keyd::start_temp().await;
    let (key_id, old_secret) = keyd.create_key("alice", &["read"]).await;
    let dash = Dashboard::new(&keyd);
    let cookie = dash.login(ADMIN_TOKEN).await;
    let detail = dash.page(&format!("/keys/{key_id}"), &cookie).await;
    assert!(detail.contains("id=\"rotate\"") && detail.contains("id=\"revoke\""));
    let csrf = csrf_of(&detail);

    let response = dash
        .post(&format!("/keys/{key_id}/rotate"), Some(&cookie), &[("csrf", &csrf), ("grace", "1h")])
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    let new_secret = secret_of(&response.text());
    assert_ne!(new_secret, old_secret);
    assert_eq!(verify(&keyd, &new_secret).await, VerifyResult::Valid);
    assert_eq!(verify(&keyd, &old_secret).await, VerifyResult::Valid, "the old secret works for the grace");
    let key = key_status(&keyd, &key_id).await;
    assert!(key.rotated_at > 0);
    let grace = key.previous_expires_at - key.rotated_at;
    assert!((3_590..=3_610).contains(&grace), "grace of an hour: {grace}");
    let detail = dash.page(&format!("/keys/{key_id}"), &cookie).await;
    assert!(detail.contains("keeps working until"), "{detail}");
    assert!(!detail.contains(&new_secret));

    let response = dash
        .post(&format!("/keys/{key_id}/revoke"), Some(&cookie), &[("csrf", &csrf), ("reason", "leaked <b>")])
        .await;
    assert_eq!(response.status, 303, "{}", response.text());
    assert_eq!(response.header("location"), Some(format!("/keys/{}", key_id.replace('_', "%5F")).as_str()));
    assert_eq!(key_status(&keyd, &key_id).await.status, KeyStatus::Revoked as i32);
    assert_eq!(verify(&keyd, &new_secret).await, VerifyResult::Revoked);
    let detail = dash.page(&format!("/keys/{key_id}"), &cookie).await;
    assert!(detail.contains("id=\"key-status\">revoked<"), "{detail}");
    assert!(detail.contains("leaked &lt;b&gt;"), "the reason, escaped: {detail}");
    assert!(!detail.contains("id=\"revoke\""), "no revoke form on a revoked key");

    let audit = dash.page(&format!("/audit?key={key_id}"), &cookie).await;
    for action in ["key.create", "key.rotate", "key.revoke"] {
        assert!(audit.contains(&format!("<td>{action}</td>")), "{action} in {audit}");
    }
    // Newest first; the dashboard's changes carry the admin token's actor, as the RPCs do.
    assert!(audit.find("key.revoke").unwrap() < audit.find("key.rotate").unwrap());
    let revokes = dash.page("/audit?action=key.revoke", &cookie).await;
    assert_eq!(revokes.matches("<td>key.revoke</td>").count(), 1, "{revokes}");
    assert!(revokes.contains("<td>admin-token</td>"), "{revokes}");
}

#[tokio::test]
async fn bad_input_gets_a_400_page_and_changes_nothing() {
    let keyd = Keyd::start_temp().await;
    let (key_id, secret) = keyd.create_key("alice", &["read"]).await;
    let dash = Dashboard::new(&keyd);
    let cookie = dash.login(ADMIN_TOKEN).await;
    let csrf = dash.csrf(&cookie).await;
    let audit_before = audit_rows(&dash, &cookie).await;
    let rotate = format!("/keys/{key_id}/rotate");
    let long_id = format!("/keys/{}/revoke", "k".repeat(100));
    let long_scope = "s".repeat(200);
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (&rotate, vec![("csrf", &csrf), ("grace", "forever")], "grace"),
        (&rotate, vec![("csrf", &csrf), ("grace", "31d")], "30 days"),
        (&rotate, vec![("csrf", &csrf), ("grace", "")], "grace"),
        (&rotate, vec![("csrf", &csrf), ("grace", "-1h")], "grace"),
        ("/keys", vec![("csrf", &csrf), ("consumer", "")], "consumer"),
        ("/keys", vec![("csrf", &csrf), ("consumer", "bob"), ("ttl", "soon")], "expires after"),
        ("/keys", vec![("csrf", &csrf), ("consumer", "bob"), ("scopes", &long_scope)], "scopes"),
        (&long_id, vec![("csrf", &csrf)], "not a key id"),
    ];
    for (path, form, says) in cases {
        let response = dash.post(path, Some(&cookie), &form).await;
        assert_eq!(response.status, 400, "POST {path} {form:?}: {}", response.text());
        assert_security_headers(&response, "400");
        assert!(response.text().contains(says), "POST {path}: {} should say {says}", response.text());
    }
    let unknown = dash.post("/keys/key_nosuchkey/revoke", Some(&cookie), &[("csrf", &csrf)]).await;
    assert_eq!(unknown.status, 404, "{}", unknown.text());
    for path in ["/keys?status=bogus", "/keys?after=garbage", "/consumers?after=garbage", "/audit?before=x"] {
        let response = dash.get(path, Some(&cookie)).await;
        assert_eq!(response.status, 400, "GET {path}: {}", response.text());
        assert_security_headers(&response, path);
    }
    assert_eq!(dash.get("/keys/key_nosuchkey", Some(&cookie)).await.status, 404);

    assert_eq!(key_count(&keyd).await, 1, "no key was created");
    assert!(
        keyd.admin_client()
            .await
            .get_consumer(tollgate_proto::v1::GetConsumerRequest { id: "bob".into() })
            .await
            .is_err()
    );
    let key = key_status(&keyd, &key_id).await;
    assert_eq!((key.status, key.rotated_at), (KeyStatus::Active as i32, 0));
    assert_eq!(verify(&keyd, &secret).await, VerifyResult::Valid);
    assert_eq!(audit_rows(&dash, &cookie).await, audit_before);
}

#[tokio::test]
async fn a_consumer_named_like_a_script_is_shown_as_text() {
    let keyd = Keyd::start_temp().await;
    let dash = Dashboard::new(&keyd);
    let cookie = dash.login(ADMIN_TOKEN).await;
    let csrf = dash.csrf(&cookie).await;
    let key_name = "<img src=x onerror=alert(2)>";
    let form = [("csrf", csrf.as_str()), ("consumer", XSS_CONSUMER), ("name", key_name)];
    let response = dash.post("/keys", Some(&cookie), &form).await;
    assert_eq!(response.status, 200, "{}", response.text());

    let consumers = dash.page("/consumers", &cookie).await;
    assert!(consumers.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{consumers}");
    let keys = dash.page("/keys", &cookie).await;
    assert!(keys.contains("&lt;img src=x onerror=alert(2)&gt;"), "{keys}");
    for path in ["/", "/consumers", "/keys", "/audit"] {
        let page = dash.page(path, &cookie).await;
        assert!(
            !page.contains(XSS_CONSUMER) && !page.contains("<img src=x"),
            "{path} renders markup: {page}"
        );
    }
    // Filters echo what was typed, escaped.
    let filtered = dash.page("/keys?consumer=%22%3E%3Cscript%3Ealert(3)%3C%2Fscript%3E", &cookie).await;
    assert!(!filtered.contains("<script>alert(3)"), "{filtered}");
    assert!(filtered.contains("&quot;&gt;&lt;script&gt;alert(3)"), "{filtered}");
}

#[tokio::test]
async fn tampered_or_outdated_cookies_lead_to_the_login_page() {
    let mut keyd = Keyd::start_temp().await;
    let dash = Dashboard::new(&keyd);
    let viewer = dash.login(VIEWER_TOKEN).await;
    dash.page("/", &viewer).await;
    let value = viewer.strip_prefix("tollgate_session=").unwrap();
    let parts: Vec<&str> = value.split('.').collect();
    assert_eq!(parts.len(), 5, "{value}");
    let far = (parts[2].parse::<i64>().unwrap() + 86_400).to_string();
    let tampered = [
        // Promoted to admin, MAC kept.
        format!("tollgate_session={}.admin.{}.{}.{}", parts[0], parts[2], parts[3], parts[4]),
        // Expiry pushed a day later.
        format!("tollgate_session={}.{}.{far}.{}.{}", parts[0], parts[1], parts[3], parts[4]),
        // Another MAC.
        format!("tollgate_session={}.{}.{}.{}.{}", parts[0], parts[1], parts[2], parts[3], "A".repeat(43)),
        // No MAC, garbage, empty.
        format!("tollgate_session={}.{}.{}.{}", parts[0], parts[1], parts[2], parts[3]),
        "tollgate_session=garbage".to_owned(),
        "tollgate_session=".to_owned(),
    ];
    for cookie in &tampered {
        let response = dash.get("/", Some(cookie)).await;
        assert_eq!((response.status, response.header("location")), (303, Some("/login")), "{cookie}");
        let cleared = response.header("set-cookie").unwrap_or_default();
        assert!(cleared.contains("Max-Age=0"), "the bad cookie is removed: {cleared}");
        let post = dash.post("/keys", Some(cookie), &[("consumer", "mallory")]).await;
        assert_eq!(post.status, 303, "{cookie}");
    }
    // A session from before a restart: the signing key is new, the session is gone.
    keyd.restart().await;
    let dash = Dashboard::new(&keyd);
    let response = dash.get("/", Some(&viewer)).await;
    assert_eq!((response.status, response.header("location")), (303, Some("/login")));
    assert_eq!(key_count(&keyd).await, 0);
}
