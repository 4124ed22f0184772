//! Requests written byte for byte, for spellings a well-behaved client library refuses to send:
//! header values that are not UTF-8, raw paths such as `//admin` or `/%61dmin`, repeated field
//! lines, chunked bodies with trailers, bodies sent in bursts.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response read off the wire.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    /// Lower-case names, values as bytes, one entry per field line.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of a header, as lossy text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
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

/// An HTTP/1.1 request built from parts; `send` writes exactly what was built.
#[derive(Debug, Clone)]
pub struct RawRequest {
    head: Vec<u8>,
    /// Body pieces, written one after another with `pause` between them.
    pieces: Vec<Vec<u8>>,
    pause: Duration,
    timeout: Duration,
}

impl RawRequest {
    /// `METHOD target HTTP/1.1` with `Host` and `Connection: close`. `target` is sent as given.
    pub fn new(method: &str, target: &[u8]) -> Self {
        let mut head = Vec::new();
        head.extend_from_slice(method.as_bytes());
        head.push(b' ');
        head.extend_from_slice(target);
        head.extend_from_slice(b" HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\n");
        Self { head, pieces: Vec::new(), pause: Duration::ZERO, timeout: Duration::from_secs(10) }
    }

    pub fn get(target: &str) -> Self {
        Self::new("GET", target.as_bytes())
    }

    /// Adds a field line with a value of any bytes (repeat for repeated headers).
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.head.extend_from_slice(name.as_bytes());
        self.head.extend_from_slice(b": ");
        self.head.extend_from_slice(value.as_ref());
        self.head.extend_from_slice(b"\r\n");
        self
    }

    /// A body with `Content-Length`.
    pub fn body(self, body: impl AsRef<[u8]>) -> Self {
        let body = body.as_ref().to_vec();
        let mut req = self.header("content-length", body.len().to_string());
        req.pieces = vec![body];
        req
    }

    /// A chunked body: each chunk its own piece (written after `pause`), then the trailers.
    pub fn chunked(self, chunks: &[&[u8]], trailers: &[(&str, &str)]) -> Self {
        let mut req = self.header("transfer-encoding", "chunked");
        req.pieces = chunks
            .iter()
            .filter(|c| !c.is_empty())
            .map(|c| {
                let mut piece = format!("{:x}\r\n", c.len()).into_bytes();
                piece.extend_from_slice(c);
                piece.extend_from_slice(b"\r\n");
                piece
            })
            .collect();
        let mut last = b"0\r\n".to_vec();
        for (name, value) in trailers {
            last.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        last.extend_from_slice(b"\r\n");
        req.pieces.push(last);
        req
    }

    /// Waits this long between body pieces (default: none, so everything goes out in one burst).
    pub fn pause(mut self, pause: Duration) -> Self {
        self.pause = pause;
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends the request and reads the whole response; `Err` on connection errors or timeout.
    pub async fn send(self, addr: SocketAddr) -> Result<RawResponse, String> {
        crate::within(self.timeout, self.exchange(addr)).await
    }

    async fn exchange(self, addr: SocketAddr) -> Result<RawResponse, String> {
        let mut stream = TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
        let mut head = self.head;
        head.extend_from_slice(b"\r\n");
        stream.write_all(&head).await.map_err(|e| format!("write head: {e}"))?;
        for piece in &self.pieces {
            if !self.pause.is_zero() {
                tokio::time::sleep(self.pause).await;
            }
            // The proxy may answer (and close) before the body is all out: that is an answer too.
            if stream.write_all(piece).await.is_err() {
                break;
            }
        }
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.map_err(|e| format!("read: {e}"))?;
        parse_response(&raw)
    }
}

/// Parses one HTTP/1.1 response (`Content-Length`, chunked, or to the end).
pub fn parse_response(raw: &[u8]) -> Result<RawResponse, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no complete response head in {} bytes", raw.len()))?;
    let head = &raw[..end];
    let rest = &raw[end + 4..];
    let mut lines = head.split(|b| *b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let status_line = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut headers = Vec::new();
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else { continue };
        let name = String::from_utf8_lossy(&line[..colon]).to_ascii_lowercase();
        let value = line[colon + 1..].trim_ascii().to_vec();
        headers.push((name, value));
    }
    let value = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v): &(String, Vec<u8>)| String::from_utf8_lossy(v).to_ascii_lowercase())
    };
    let body = if value("transfer-encoding").is_some_and(|te| te.contains("chunked")) {
        dechunk(rest)?
    } else if let Some(len) = value("content-length").and_then(|l| l.trim().parse::<usize>().ok()) {
        rest.get(..len).ok_or_else(|| format!("body shorter than content-length {len}"))?.to_vec()
    } else {
        rest.to_vec()
    };
    Ok(RawResponse { status, headers, body })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").ok_or("truncated chunk size")?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or_default().trim(), 16)
            .map_err(|e| format!("bad chunk size {size_text:?}: {e}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        body.extend_from_slice(data.get(..size).ok_or("truncated chunk")?);
        data = data.get(size + 2..).ok_or("truncated chunk end")?;
    }
}
