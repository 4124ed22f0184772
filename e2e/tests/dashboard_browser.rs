//! The dashboard in a real headless Chromium (Debian's `chromium` and `chromium-driver`, which
//! `make chromium` installs; never downloaded by a tool), driven over WebDriver: log in through
//! the form, move between pages, create a key through the form and read its secret, revoke it,
//! and check in the browser what the HTTP tests cannot: a consumer named like a script does not
//! run, the Content-Security-Policy blocks an injected inline script, and the page's script
//! cannot read the session cookie. A screenshot of each page goes to the test's output folder.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tollgate_e2e::{ADMIN_TOKEN, Keyd, VIEWER_TOKEN};
use tollgate_proto::v1::{VerifyKeyRequest, VerifyResult};

const CHROMIUM: &str = "/usr/bin/chromium";
const XSS_CONSUMER: &str = "<script>alert(1)</script>";

fn chromedriver() -> PathBuf {
    ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!("chromedriver is not installed: run `make chromium` (Debian's chromium-driver package)")
        })
}

/// A chromedriver process on a free loopback port; terminated on drop (it ends its browsers).
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    async fn start() -> Driver {
        assert!(
            Path::new(CHROMIUM).exists(),
            "{CHROMIUM} is not installed: run `make chromium` (Debian's chromium package)"
        );
        let driver = chromedriver();
        let mut last = String::new();
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let mut child = Command::new(&driver)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("start {}: {e}", driver.display()));
            let url = format!("http://127.0.0.1:{port}");
            let ready = tollgate_e2e::eventually(Duration::from_secs(15), || async {
                tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
            })
            .await;
            if ready && matches!(child.try_wait(), Ok(None)) {
                return Driver { child, url };
            }
            last = format!("chromedriver did not listen on port {port}");
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("{last}");
    }

    /// A new headless browser session with a fresh profile in `profile`.
    async fn browser(&self, profile: &Path) -> Client {
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--no-first-run", "--window-size=1280,1000",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        });
        let Value::Object(capabilities) = capabilities else { unreachable!() };
        ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("start a Chromium session through chromedriver: {e}"))
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // SIGTERM lets chromedriver end the browsers it started.
        let pid = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where screenshots go: the test's output folder.
fn screenshot_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(browser: &Client, name: &str) {
    let png = browser.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    std::fs::write(screenshot_dir().join(format!("{name}.png")), png).unwrap();
}

/// Waits (at most 10 s) until `read` gives `expected` — a click that submits a form or follows a
/// link may return before the next page is there — and returns what it read last.
async fn settle<F, Fut>(expected: &str, mut read: F) -> String
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<String>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = read().await.unwrap_or_default();
        if got == expected || tokio::time::Instant::now() >= deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts the page's title, once the page is there.
async fn wait_title(browser: &Client, expected: &str) {
    assert_eq!(settle(expected, || async { browser.title().await.ok() }).await, expected);
}

/// Asserts the page's path, once the page is there.
async fn wait_path(browser: &Client, expected: &str) {
    let path = || async { browser.current_url().await.ok().map(|u| u.path().to_owned()) };
    assert_eq!(settle(expected, path).await, expected);
}

/// Asserts the text of an element, once the page holding it is there.
async fn wait_text(browser: &Client, css: &str, expected: &str) {
    let text = || async {
        let element = browser.find(Locator::Css(css)).await.ok()?;
        element.text().await.ok()
    };
    assert_eq!(settle(expected, text).await, expected, "{css}");
}

async fn text_of(browser: &Client, css: &str) -> String {
    browser.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}")).text().await.unwrap()
}

async fn verify(keyd: &Keyd, secret: &str) -> VerifyResult {
    let key_hash = Sha256::digest(secret.as_bytes()).to_vec();
    let response = keyd.dataplane_client().await.verify_key(VerifyKeyRequest { key_hash }).await.unwrap();
    VerifyResult::try_from(response.into_inner().result).unwrap()
}

async fn log_in(browser: &Client, base: &str, token: &str) {
    browser.goto(&format!("{base}/")).await.unwrap();
    assert_eq!(browser.current_url().await.unwrap().path(), "/login", "no session: the login page");
    browser.find(Locator::Css("#token")).await.unwrap().send_keys(token).await.unwrap();
    browser.find(Locator::Css("#login button[type=submit]")).await.unwrap().click().await.unwrap();
    wait_path(browser, "/").await;
    wait_title(browser, "Overview · Tollgate").await;
}

#[tokio::test]
async fn the_dashboard_works_in_a_real_browser_and_keeps_scripts_out() {
    let keyd = Keyd::start_temp().await;
    let (key_id, _) = keyd.create_key(XSS_CONSUMER, &["read"]).await;
    let base = format!("http://{}", keyd.http_addr());
    let driver = Driver::start().await;
    let profile = tempfile::tempdir().unwrap();
    let browser = driver.browser(profile.path()).await;

    // Log in through the form.
    log_in(&browser, &base, ADMIN_TOKEN).await;
    screenshot(&browser, "overview").await;

    // The session cookie is there for the browser, not for the page's scripts.
    let cookie = browser.get_named_cookie("tollgate_session").await.unwrap();
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(cookie.same_site().map(|s| s.to_string()).as_deref(), Some("Strict"));
    let visible = browser.execute("return document.cookie", vec![]).await.unwrap();
    assert!(!visible.as_str().unwrap_or_default().contains("tollgate_session"), "{visible}");

    // Overview → keys → key detail, through the links.
    browser.find(Locator::LinkText("Keys")).await.unwrap().click().await.unwrap();
    wait_title(&browser, "Keys · Tollgate").await;
    screenshot(&browser, "keys").await;
    browser
        .find(Locator::Css(&format!("tr[data-key='{key_id}'] td a")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_title(&browser, "Key · Tollgate").await;
    assert_eq!(text_of(&browser, "#key-id").await, key_id);
    screenshot(&browser, "key").await;

    // The consumer named like a script is text on the page, and nothing ran.
    browser.find(Locator::LinkText("Consumers")).await.unwrap().click().await.unwrap();
    wait_title(&browser, "Consumers · Tollgate").await;
    assert_eq!(text_of(&browser, "td.consumer-name").await, XSS_CONSUMER);
    assert!(browser.get_alert_text().await.is_err(), "an alert is open: the consumer name ran as a script");
    let scripts = browser.execute("return document.scripts.length", vec![]).await.unwrap();
    assert_eq!(scripts, json!(0), "no script element on the page");
    screenshot(&browser, "consumers").await;

    // An inline script injected into the page is blocked by the Content-Security-Policy.
    let injected = browser
        .execute_async(
            "const done = arguments[arguments.length - 1];
             let violated = null;
             document.addEventListener('securitypolicyviolation', e => { violated = e.violatedDirective; });
             const s = document.createElement('script');
             s.textContent = 'window.__tollgateInjected = true;';
             document.body.appendChild(s);
             setTimeout(() => done({ran: window.__tollgateInjected === true, violated}), 300);",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(injected["ran"], json!(false), "the inline script ran: {injected}");
    assert!(injected["violated"].as_str().unwrap_or_default().starts_with("script-src"), "{injected}");

    // Create a key through the form; the secret is on the response page and works.
    browser.find(Locator::LinkText("Create key")).await.unwrap().click().await.unwrap();
    wait_title(&browser, "Create key · Tollgate").await;
    browser.find(Locator::Css("#consumer")).await.unwrap().send_keys("browser-user").await.unwrap();
    browser.find(Locator::Css("#name")).await.unwrap().send_keys("made in a browser").await.unwrap();
    browser.find(Locator::Css("#scopes")).await.unwrap().send_keys("read").await.unwrap();
    screenshot(&browser, "create-key").await;
    browser.find(Locator::Css("#create button[type=submit]")).await.unwrap().click().await.unwrap();
    wait_title(&browser, "Key created · Tollgate").await;
    let secret = text_of(&browser, "#secret").await;
    assert!(secret.starts_with("tgk_"), "{secret}");
    assert_eq!(verify(&keyd, &secret).await, VerifyResult::Valid);
    screenshot(&browser, "key-created").await;

    // Its page does not show the secret again.
    browser.find(Locator::LinkText("Go to the key")).await.unwrap().click().await.unwrap();
    wait_title(&browser, "Key · Tollgate").await;
    assert!(!browser.source().await.unwrap().contains(&secret), "the secret is shown again");
    wait_text(&browser, "#key-status", "active").await;

    // Revoke it through the form.
    browser.find(Locator::Css("#reason")).await.unwrap().send_keys("done with the test").await.unwrap();
    browser.find(Locator::Css("#revoke button[type=submit]")).await.unwrap().click().await.unwrap();
    wait_title(&browser, "Key · Tollgate").await;
    wait_text(&browser, "#key-status", "revoked").await;
    assert_eq!(verify(&keyd, &secret).await, VerifyResult::Revoked);
    screenshot(&browser, "key-revoked").await;

    // The audit log shows both changes.
    browser.find(Locator::LinkText("Audit")).await.unwrap().click().await.unwrap();
    wait_title(&browser, "Audit log · Tollgate").await;
    let audit = browser.source().await.unwrap();
    assert!(audit.contains("key.revoke") && audit.contains("key.create"), "{audit}");
    screenshot(&browser, "audit").await;

    // Log out; a viewer gets no forms.
    browser.find(Locator::Css("nav form button[type=submit]")).await.unwrap().click().await.unwrap();
    wait_path(&browser, "/login").await;
    log_in(&browser, &base, VIEWER_TOKEN).await;
    browser.goto(&format!("{base}/keys/{key_id}")).await.unwrap();
    wait_title(&browser, "Key · Tollgate").await;
    assert!(browser.find(Locator::Css("#revoke")).await.is_err(), "a viewer is shown the revoke form");
    assert!(browser.find(Locator::LinkText("Create key")).await.is_err());

    browser.close().await.unwrap();
}
