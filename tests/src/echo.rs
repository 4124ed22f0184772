//! In-process upstream that echoes requests and records them.
//!
//! It answers like `tollgate-echo` (`{"instance","method","path","query","headers","body"}`,
//! header `x-echo-instance`, `/status/{code}`, `/delay/{ms}`), and also counts and keeps every
//! request so tests can assert what reached the upstream and what did not.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};
use tokio::sync::oneshot;

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct EchoRequest {
    pub method: String,
    pub path: String,
    pub query: String,
    /// Lowercased names; repeated headers joined with `", "`; bytes that are not UTF-8 replaced.
    pub headers: BTreeMap<String, String>,
    /// Every field line as received: lower-case name, exact value bytes.
    pub raw_headers: Vec<(String, Vec<u8>)>,
    pub body: Bytes,
    /// Trailers of a chunked request body, if any.
    pub trailers: Vec<(String, Vec<u8>)>,
}

impl EchoRequest {
    /// Every value of a header as exact bytes, one per field line.
    pub fn header_lines(&self, name: &str) -> Vec<&[u8]> {
        let name = name.to_ascii_lowercase();
        self.raw_headers.iter().filter(|(n, _)| *n == name).map(|(_, v)| v.as_slice()).collect()
    }

    /// A header's value, by any case of its name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }
}

/// The running upstream; stops on drop.
pub struct Echo {
    addr: SocketAddr,
    name: String,
    received: Arc<Mutex<Vec<EchoRequest>>>,
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
        let received = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = oneshot::channel();
        let thread = {
            let received = Arc::clone(&received);
            let name = name.to_owned();
            std::thread::Builder::new()
                .name(format!("echo-{addr}"))
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("echo runtime");
                    runtime.block_on(serve(listener, name, received, rx));
                })
                .expect("spawn echo thread")
        };
        Echo { addr, name: name.to_owned(), received, shutdown: Some(tx), thread: Some(thread) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `http://127.0.0.1:PORT{path}`, for calling the upstream directly.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// How many requests arrived so far.
    pub fn requests(&self) -> usize {
        self.received.lock().map(|r| r.len()).unwrap_or(0)
    }

    /// Every request so far, oldest first.
    pub fn received(&self) -> Vec<EchoRequest> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// The newest request.
    pub fn last_request(&self) -> Option<EchoRequest> {
        self.received.lock().ok().and_then(|r| r.last().cloned())
    }

    /// Forgets the requests seen so far (the counter restarts at 0).
    pub fn reset(&self) {
        if let Ok(mut r) = self.received.lock() {
            r.clear();
        }
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

async fn serve(
    listener: std::net::TcpListener,
    name: String,
    received: Arc<Mutex<Vec<EchoRequest>>>,
    mut shutdown: oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let name = name.clone();
                let received = Arc::clone(&received);
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(req, name.clone(), Arc::clone(&received)));
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    name: String,
    received: Arc<Mutex<Vec<EchoRequest>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let (body, trailers) = match body.collect().await {
        Ok(collected) => {
            let trailers: Vec<(String, Vec<u8>)> = collected
                .trailers()
                .map(|t| t.iter().map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec())).collect())
                .unwrap_or_default();
            (collected.to_bytes(), trailers)
        }
        Err(_) => (Bytes::new(), Vec::new()),
    };
    let raw_headers: Vec<(String, Vec<u8>)> =
        parts.headers.iter().map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec())).collect();
    let mut headers = BTreeMap::<String, String>::new();
    for (k, v) in &parts.headers {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        headers
            .entry(k.as_str().to_owned())
            .and_modify(|existing| {
                existing.push_str(", ");
                existing.push_str(&v);
            })
            .or_insert(v);
    }
    let seen = EchoRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        headers,
        raw_headers,
        body,
        trailers,
    };
    if let Ok(mut r) = received.lock() {
        r.push(seen.clone());
    }

    let mut status = StatusCode::OK;
    if let Some(code) = seen.path.strip_prefix("/status/") {
        status =
            code.parse().ok().and_then(|c| StatusCode::from_u16(c).ok()).unwrap_or(StatusCode::BAD_REQUEST);
    } else if let Some(ms) = seen.path.strip_prefix("/delay/") {
        let ms: u64 = ms.parse().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms.min(60_000))).await;
    }

    let headers: Map<String, Value> =
        seen.headers.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
    let doc = json!({
        "instance": name,
        "method": seen.method,
        "path": seen.path,
        "query": seen.query,
        "headers": headers,
        "body": String::from_utf8_lossy(&seen.body),
    });
    let response = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-echo-instance", name)
        .body(Full::new(Bytes::from(doc.to_string())))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())));
    Ok(response)
}
