//! End-to-end test harness of Tollgate.
//!
//! Everything runs for real on loopback ports chosen by the kernel, so tests run in parallel:
//!
//! - [`Echo`]: `tollgate-echo`'s upstream run in-process: answers every request with a JSON
//!   description of it, records what it received, and has switches for health checks, failures,
//!   delays and WebSocket;
//! - [`Keyd`]: the `tollgate-keyd` binary with a temporary data directory and fixed test tokens;
//! - [`Redis`] and [`Ratelimitd`]: a `redis-server` on a free port with no persistence, and the
//!   `tollgate-ratelimitd` binary with a given limits file, in memory or on that Redis;
//! - [`Envoy`]: Envoy with a generated config (optionally the key-auth wasm filter), one or more
//!   workers, its admin API and logs;
//! - [`HttpClient`]: a small HTTP/1.1 client returning status, headers and body;
//! - [`RawRequest`]: an HTTP/1.1 request written byte for byte (raw paths, non-UTF-8 header bytes,
//!   repeated field lines, chunked bodies with trailers, bursts);
//! - [`H2Request`]: an HTTP/2 request whose framing the test controls (END_STREAM on HEADERS,
//!   DATA frames, trailers);
//! - [`WebhookReceiver`]: a Python receiver verifying webhook deliveries with `standardwebhooks`.
//!
//! Binaries come from `TOLLGATE_BIN_DIR` (default `target/debug`), filters from
//! `TOLLGATE_WASM_DIR` (default `target/wasm32-wasip1/wasm`) and Envoy from `ENVOY_BIN` (default
//! `.venv/bin/envoy`), relative to the workspace root. `make test` builds and installs all of them;
//! after that `cargo test -p tollgate-e2e` works on its own (rebuild the binaries you change).
//!
//! ```no_run
//! # async fn demo() {
//! use tollgate_e2e::{Echo, Envoy, EnvoyOpts, Keyd};
//!
//! let echo = Echo::start();
//! let keyd = Keyd::start_temp().await;
//! let envoy = Envoy::start(
//!     EnvoyOpts::new(echo.addr()).key_auth(keyd.key_auth_config()).keyd(keyd.addr()).workers(2),
//! )
//! .await;
//! let (_id, key) = keyd.create_key("alice", &[]).await;
//! let res = envoy.get("/hello").header("x-api-key", &key).send().await;
//! assert_eq!(res.status, 200);
//! assert_eq!(res.json()["path"], "/hello");
//! # }
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod echo;
mod envoy;
mod h2;
mod http;
mod keyd;
mod paths;
pub mod patterns;
mod process;
pub mod prometheus;
mod ratelimitd;
mod raw;
pub mod scripted;
mod webhook_receiver;

pub use echo::Echo;
pub use envoy::{
    Envoy, EnvoyOpts, KEY_AUTH_ROOT_ID, KEYD_CLUSTER, NODE_ID, UPSTREAM_CLUSTER, static_cluster,
    stats_config, stats_config_of, wasm_filter,
};
pub use h2::{H2Request, H2Response};
pub use http::{HttpClient, RequestBuilder, Response};
pub use keyd::{
    ADMIN_TOKEN, BearerToken, DATAPLANE_TOKEN, KeyClient, Keyd, StoreBackup, VIEWER_TOKEN, keyd_command,
};
pub use paths::{bin_dir, binary, envoy_bin, render_envoy_template, wasm_dir, wasm_module, workspace_root};
pub use ratelimitd::{RATELIMIT_CLUSTER, Ratelimitd, Redis, native_ratelimit_filter, ratelimit_cluster};
pub use raw::{RawRequest, RawResponse};
pub use webhook_receiver::WebhookReceiver;

pub use serde_json::{Value, json};
pub use tollgate_echo::EchoRequest;

/// Standard base64 with padding (what `tollgate keys create --signing hmac` prints).
pub fn base64_standard(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Runs `exchange`, failing with "timed out after …" when it takes longer than `timeout`.
pub(crate) async fn within<T>(
    timeout: std::time::Duration,
    exchange: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::time::timeout(timeout, exchange).await.map_err(|_| format!("timed out after {timeout:?}"))?
}

/// Waits until every worker of a gateway has ticked since a change-feed poll another worker
/// applied: the poller refuses a revoked key at once, the other workers when their tick reads
/// the feed record again, one poll interval later (docs/performance.md). A test that has seen
/// the refusal on some connections waits this long before asserting it on every worker.
pub async fn every_worker_ticked(poll_interval: std::time::Duration) {
    // Slack for a tick that fires late on a loaded machine.
    tokio::time::sleep(poll_interval + std::time::Duration::from_millis(300)).await;
}

/// Polls `check` every 50 ms until it returns `true` or `timeout` passes; returns whether it did.
pub async fn eventually<F, Fut>(timeout: std::time::Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
