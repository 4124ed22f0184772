//! The origin of the cache variants: `tollgate-echo`'s server (not recording requests, only
//! counting them) on its own thread in this process, which stays on the load generators' core.
//! It answers `/cacheable/{bytes}` with a body of that size and `cache-control: public,
//! max-age=3600`.

use std::net::SocketAddr;
use std::thread::JoinHandle;

use tokio::sync::oneshot;
use tollgate_bench::{Error, Result};
use tollgate_echo::{Options, Upstream};

/// The running origin; stops on drop.
pub(crate) struct Origin {
    addr: SocketAddr,
    upstream: Upstream,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Origin {
    /// Starts the origin on `127.0.0.1:0`.
    pub(crate) fn start() -> Result<Origin> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| Error(format!("origin: bind: {e}")))?;
        let addr = listener.local_addr().map_err(|e| Error(format!("origin: address: {e}")))?;
        let upstream = Upstream::new(Options::new("origin"));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error(format!("origin: runtime: {e}")))?;
        let (tx, rx) = oneshot::channel::<()>();
        let serving = upstream.clone();
        let thread = std::thread::Builder::new()
            .name("bench-origin".to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => {
                            tokio::select! {
                                () = serving.serve(listener, std::future::pending()) => {}
                                _ = rx => {}
                            }
                        }
                        Err(e) => eprintln!("bench: origin: {e}"),
                    }
                });
            })
            .map_err(|e| Error(format!("origin: thread: {e}")))?;
        Ok(Origin { addr, upstream, shutdown: Some(tx), thread: Some(thread) })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests the origin has answered so far.
    pub(crate) fn requests(&self) -> usize {
        self.upstream.requests()
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
