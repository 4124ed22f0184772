//! The upstream of the tests: `tollgate-echo`'s server, run in-process.
//!
//! It answers like `tollgate-echo` (`{"instance","method","path","query","headers","body"}`,
//! header `x-echo-instance`, `/status/{code}`, `/delay/{ms}`, `/sse`), and with every switch of
//! [`tollgate_echo::Options`] on: it keeps every request so tests can assert what reached the
//! upstream and what did not, answers health checks on `/healthz` from
//! [`Upstream::set_healthy`], can fail or delay every request, and echoes WebSocket messages.

use std::net::SocketAddr;
use std::ops::Deref;
use std::thread::JoinHandle;

use tokio::sync::oneshot;
use tollgate_echo::{Options, Upstream};

/// The path of health checks.
pub const HEALTH_PATH: &str = "/healthz";

/// The running upstream; stops on drop. What it has seen and the switches that change its
/// answers are those of [`Upstream`], reached through `Deref`.
pub struct Echo {
    addr: SocketAddr,
    upstream: Upstream,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Echo {
    /// Starts an upstream named `echo` on `127.0.0.1:0`. It runs on its own thread, so it works
    /// from sync and async tests alike.
    pub fn start() -> Echo {
        Self::start_named("echo")
    }

    /// Starts an upstream whose answers carry `instance: name` (to tell several apart).
    pub fn start_named(name: &str) -> Echo {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind echo upstream");
        listener.set_nonblocking(true).expect("nonblocking listener");
        let addr = listener.local_addr().expect("echo address");
        let upstream = Upstream::new(Options::new(name).record().health_path(HEALTH_PATH).websocket());
        let (tx, rx) = oneshot::channel::<()>();
        let thread = {
            let upstream = upstream.clone();
            std::thread::Builder::new()
                .name(format!("echo-{name}-{addr}"))
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("echo runtime");
                    runtime.block_on(async move {
                        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                        // Dropped at once on shutdown, with every open connection (no grace).
                        tokio::select! {
                            () = upstream.serve(listener, std::future::pending()) => {}
                            _ = rx => {}
                        }
                    });
                })
                .expect("spawn echo thread")
        };
        Echo { addr, upstream, shutdown: Some(tx), thread: Some(thread) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port, as text for config templates.
    pub fn port(&self) -> String {
        self.addr.port().to_string()
    }

    /// `http://127.0.0.1:PORT{path}`, for calling the upstream directly.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Deref for Echo {
    type Target = Upstream;

    fn deref(&self) -> &Upstream {
        &self.upstream
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
