//! An HTTP/2 (prior knowledge, cleartext) client that controls the framing: a request with no
//! body ends with END_STREAM on its HEADERS frame; a body goes out as the DATA frames given
//! (optionally paced); trailers end the stream with a second HEADERS frame.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Empty, StreamBody};
use hyper::body::Frame;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio_stream::wrappers::ReceiverStream;

type FrameResult = Result<Frame<Bytes>, std::convert::Infallible>;
type H2Body = Either<Empty<Bytes>, StreamBody<ReceiverStream<FrameResult>>>;

/// A complete HTTP/2 response.
#[derive(Debug, Clone)]
pub struct H2Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl H2Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("response body is not JSON ({e}); status {}: {}", self.status, self.text())
        })
    }
}

/// One HTTP/2 request; build it, then [`H2Request::send`].
#[must_use = "a request does nothing until it is sent"]
#[derive(Debug, Clone)]
pub struct H2Request {
    method: Method,
    path: String,
    headers: Vec<(String, Vec<u8>)>,
    /// `None`: END_STREAM on HEADERS. `Some(chunks)`: one DATA frame per chunk.
    chunks: Option<Vec<Bytes>>,
    trailers: Vec<(String, String)>,
    pause: Duration,
    timeout: Duration,
}

impl H2Request {
    pub fn new(method: Method, path: &str) -> Self {
        Self {
            method,
            path: path.to_owned(),
            headers: Vec::new(),
            chunks: None,
            trailers: Vec::new(),
            pause: Duration::ZERO,
            timeout: Duration::from_secs(10),
        }
    }

    pub fn get(path: &str) -> Self {
        Self::new(Method::GET, path)
    }

    pub fn post(path: &str) -> Self {
        Self::new(Method::POST, path)
    }

    /// Adds a header; the value may be any bytes HTTP/2 carries (repeat for repeated headers).
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers.push((name.to_owned(), value.as_ref().to_vec()));
        self
    }

    /// The body in one DATA frame.
    pub fn body(self, body: impl Into<Bytes>) -> Self {
        self.chunks(vec![body.into()])
    }

    /// The body as these DATA frames (an empty list sends HEADERS, then END_STREAM on an empty
    /// DATA frame or on the trailers).
    pub fn chunks(mut self, chunks: Vec<Bytes>) -> Self {
        self.chunks = Some(chunks);
        self
    }

    /// Ends the stream with a trailers frame carrying these fields.
    pub fn trailer(mut self, name: &str, value: &str) -> Self {
        self.trailers.push((name.to_owned(), value.to_owned()));
        self.chunks.get_or_insert_with(Vec::new);
        self
    }

    /// Waits this long before each DATA frame and before the trailers.
    pub fn pause(mut self, pause: Duration) -> Self {
        self.pause = pause;
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends the request on a new connection; `Err` on connection errors, resets and timeouts.
    pub async fn send(self, addr: SocketAddr) -> Result<H2Response, String> {
        crate::within(self.timeout, self.exchange(addr)).await
    }

    async fn exchange(self, addr: SocketAddr) -> Result<H2Response, String> {
        let stream = TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake::<_, _, H2Body>(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let uri = format!("http://{addr}{}", self.path);
        let mut builder = Request::builder().method(self.method).uri(uri);
        for (name, value) in &self.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| format!("header {name}: {e}"))?;
            let value = HeaderValue::from_bytes(value).map_err(|e| format!("header {name} value: {e}"))?;
            builder = builder.header(name, value);
        }
        let body = match self.chunks {
            None => Either::Left(Empty::new()),
            Some(chunks) => {
                let (tx, rx) = tokio::sync::mpsc::channel::<FrameResult>(chunks.len() + 2);
                let mut trailers = HeaderMap::new();
                for (name, value) in &self.trailers {
                    let name =
                        HeaderName::from_bytes(name.as_bytes()).map_err(|e| format!("trailer: {e}"))?;
                    let value = HeaderValue::from_str(value).map_err(|e| format!("trailer value: {e}"))?;
                    trailers.append(name, value);
                }
                let pause = self.pause;
                tokio::spawn(async move {
                    for chunk in chunks {
                        if !pause.is_zero() {
                            tokio::time::sleep(pause).await;
                        }
                        if tx.send(Ok(Frame::data(chunk))).await.is_err() {
                            return;
                        }
                    }
                    if !trailers.is_empty() {
                        if !pause.is_zero() {
                            tokio::time::sleep(pause).await;
                        }
                        let _ = tx.send(Ok(Frame::trailers(trailers))).await;
                    }
                });
                Either::Right(StreamBody::new(ReceiverStream::new(rx)))
            }
        };
        let request = builder.body(body).map_err(|e| format!("bad request: {e}"))?;
        let response = sender.send_request(request).await.map_err(|e| format!("{e:?}"))?;
        let (parts, mut body) = response.into_parts();
        let mut data = Vec::new();
        let mut trailers = None;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("reading body: {e:?}"))?;
            match frame.into_data() {
                Ok(chunk) => data.extend_from_slice(&chunk),
                Err(frame) => trailers = frame.into_trailers().ok(),
            }
        }
        Ok(H2Response {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: Bytes::from(data),
            trailers,
        })
    }
}
