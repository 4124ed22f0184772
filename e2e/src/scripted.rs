//! Upstreams that answer from a script, for framings the echo upstream never produces: chunked
//! bodies written in bursts or paced, trailers after a body, over HTTP/1.1 (bytes written as
//! given) or HTTP/2 (DATA frames and a trailers frame).
//!
//! Every connection gets the same answer. The requests are recorded (head and de-chunked body).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

/// An HTTP/1.1 answer: bytes written as given, in bursts separated by pauses.
#[derive(Debug, Clone, Default)]
pub struct Script {
    /// Each burst is written with one `write_all`, after its pause.
    bursts: Vec<(Duration, Vec<u8>)>,
}

impl Script {
    /// `HTTP/1.1 <status>` with these headers and `transfer-encoding: chunked`.
    pub fn chunked(status: u16, headers: &[(&str, &str)]) -> Self {
        let mut head = format!("HTTP/1.1 {status} Scripted\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("transfer-encoding: chunked\r\n\r\n");
        Self::default().raw(head.as_bytes())
    }

    /// Appends bytes to the current burst.
    pub fn raw(mut self, bytes: &[u8]) -> Self {
        match self.bursts.last_mut() {
            Some((_, burst)) => burst.extend_from_slice(bytes),
            None => self.bursts.push((Duration::ZERO, bytes.to_vec())),
        }
        self
    }

    /// Appends one chunk to the current burst.
    pub fn chunk(self, data: &[u8]) -> Self {
        let mut bytes = format!("{:x}\r\n", data.len()).into_bytes();
        bytes.extend_from_slice(data);
        bytes.extend_from_slice(b"\r\n");
        self.raw(&bytes)
    }

    /// Appends the last chunk and these trailers to the current burst.
    pub fn end(self, trailers: &[(&str, &str)]) -> Self {
        let mut bytes = b"0\r\n".to_vec();
        for (name, value) in trailers {
            bytes.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        bytes.extend_from_slice(b"\r\n");
        self.raw(&bytes)
    }

    /// Waits this long, then starts a new burst.
    pub fn pause(mut self, pause: Duration) -> Self {
        self.bursts.push((pause, Vec::new()));
        self
    }
}

/// An HTTP/2 answer: HEADERS, one DATA frame per chunk, then a trailers frame if any.
#[derive(Debug, Clone, Default)]
pub struct H2Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub chunks: Vec<Bytes>,
    pub trailers: Vec<(String, String)>,
}

impl H2Answer {
    pub fn new(status: u16) -> Self {
        Self { status, ..Self::default() }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn chunk(mut self, data: impl Into<Bytes>) -> Self {
        self.chunks.push(data.into());
        self
    }

    pub fn trailer(mut self, name: &str, value: &str) -> Self {
        self.trailers.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// A request the scripted upstream received.
#[derive(Debug, Clone)]
pub struct ScriptedRequest {
    /// The request line or `:method :path`, e.g. `GET /x`.
    pub target: String,
    /// Lower-case names, exact value bytes.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

/// The running upstream; stops on drop.
pub struct ScriptedUpstream {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<ScriptedRequest>>>,
    task: JoinHandle<()>,
}

impl ScriptedUpstream {
    /// Answers every HTTP/1.1 request with `script`, then closes the connection.
    pub async fn http1(script: Script) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind scripted upstream");
        let addr = listener.local_addr().expect("scripted upstream address");
        let received = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&received);
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let script = script.clone();
                let seen = Arc::clone(&seen);
                tokio::spawn(async move {
                    let _ = answer_http1(socket, &script, &seen).await;
                });
            }
        });
        Self { addr, received, task }
    }

    /// Answers every HTTP/2 (prior knowledge) request with `answer`.
    pub async fn http2(answer: H2Answer) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind scripted upstream");
        let addr = listener.local_addr().expect("scripted upstream address");
        let received = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&received);
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let answer = answer.clone();
                let seen = Arc::clone(&seen);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        answer_http2(req, answer.clone(), Arc::clone(&seen))
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                });
            }
        });
        Self { addr, received, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request so far, oldest first.
    pub fn received(&self) -> Vec<ScriptedRequest> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl Drop for ScriptedUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer_http1(
    mut socket: TcpStream,
    script: &Script,
    seen: &Mutex<Vec<ScriptedRequest>>,
) -> Result<(), String> {
    let request = read_http1_request(&mut socket).await?;
    if let Ok(mut r) = seen.lock() {
        r.push(request);
    }
    for (pause, burst) in &script.bursts {
        if !pause.is_zero() {
            tokio::time::sleep(*pause).await;
        }
        if !burst.is_empty() {
            socket.write_all(burst).await.map_err(|e| format!("write: {e}"))?;
            socket.flush().await.map_err(|e| format!("flush: {e}"))?;
        }
    }
    let _ = socket.shutdown().await;
    Ok(())
}

/// Reads one request: the head, then a body framed by `content-length` or chunks.
async fn read_http1_request(socket: &mut TcpStream) -> Result<ScriptedRequest, String> {
    let mut data = Vec::new();
    let head_end = loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        read_more(socket, &mut data).await?;
    };
    let head = data[..head_end].to_vec();
    let mut rest = data[head_end + 4..].to_vec();
    let mut lines = head.split(|b| *b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let request_line = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let target = request_line.rsplit_once(' ').map_or(request_line.clone(), |(t, _)| t.to_owned());
    let headers: Vec<(String, Vec<u8>)> = lines
        .filter_map(|line| {
            let colon = line.iter().position(|b| *b == b':')?;
            Some((
                String::from_utf8_lossy(&line[..colon]).to_ascii_lowercase(),
                line[colon + 1..].trim_ascii().to_vec(),
            ))
        })
        .collect();
    let value = |name: &str| {
        headers.iter().find(|(n, _)| n == name).map(|(_, v)| String::from_utf8_lossy(v).to_ascii_lowercase())
    };
    let body = if value("transfer-encoding").is_some_and(|te| te.contains("chunked")) {
        loop {
            if let Some(body) = complete_chunked(&rest)? {
                break body;
            }
            read_more(socket, &mut rest).await?;
        }
    } else {
        let len = value("content-length").and_then(|l| l.trim().parse::<usize>().ok()).unwrap_or(0);
        while rest.len() < len {
            read_more(socket, &mut rest).await?;
        }
        rest.truncate(len);
        rest
    };
    Ok(ScriptedRequest { target, headers, body })
}

async fn read_more(socket: &mut TcpStream, data: &mut Vec<u8>) -> Result<(), String> {
    let mut buf = [0u8; 16 * 1024];
    match socket.read(&mut buf).await {
        Ok(0) => Err("the request ended early".to_owned()),
        Ok(n) => {
            data.extend_from_slice(&buf[..n]);
            Ok(())
        }
        Err(e) => Err(format!("read: {e}")),
    }
}

/// The de-chunked body once the last chunk and the trailers are all there.
fn complete_chunked(mut data: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") else { return Ok(None) };
        let size_text = String::from_utf8_lossy(&data[..line_end]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or_default().trim(), 16)
            .map_err(|e| format!("bad chunk size {size_text:?}: {e}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            // Trailers, then an empty line.
            let done = data.starts_with(b"\r\n") || data.windows(4).any(|w| w == b"\r\n\r\n");
            return Ok(done.then_some(body));
        }
        let Some(chunk) = data.get(..size) else { return Ok(None) };
        body.extend_from_slice(chunk);
        let Some(after) = data.get(size + 2..) else { return Ok(None) };
        data = after;
    }
}

type FrameResult = Result<Frame<Bytes>, Infallible>;

async fn answer_http2(
    req: Request<Incoming>,
    answer: H2Answer,
    seen: Arc<Mutex<Vec<ScriptedRequest>>>,
) -> Result<Response<StreamBody<ReceiverStream<FrameResult>>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes().to_vec()).unwrap_or_default();
    let headers = parts.headers.iter().map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec())).collect();
    if let Ok(mut r) = seen.lock() {
        r.push(ScriptedRequest { target: format!("{} {}", parts.method, parts.uri.path()), headers, body });
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<FrameResult>(answer.chunks.len() + 1);
    let mut trailers = HeaderMap::new();
    for (name, value) in &answer.trailers {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
            trailers.append(n, v);
        }
    }
    let chunks = answer.chunks.clone();
    tokio::spawn(async move {
        for chunk in chunks {
            if tx.send(Ok(Frame::data(chunk))).await.is_err() {
                return;
            }
        }
        if !trailers.is_empty() {
            let _ = tx.send(Ok(Frame::trailers(trailers))).await;
        }
    });
    let mut response = Response::builder().status(answer.status);
    for (name, value) in &answer.headers {
        response = response.header(name, value);
    }
    Ok(response.body(StreamBody::new(ReceiverStream::new(rx))).expect("scripted response"))
}
