//! Helpers for the gateway-pattern scenarios (`examples/<scenario>/`): render a shipped config
//! template with test ports, run it in Envoy, read its listeners and cluster health, and a
//! WebSocket client. The upstreams are [`crate::Echo`]s, whose health, failures and latency a test
//! can change while traffic flows.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tollgate_echo::ws;

use crate::envoy::Envoy;
use crate::keyd::DATAPLANE_TOKEN;
use crate::paths::{wasm_dir, workspace_root};

/// Renders an Envoy config template shipped in the repository (e.g. `examples/routing/envoy.yaml`):
/// `__WASM_DIR__` and `__DATAPLANE_TOKEN__` get the test values, `__GATEWAY_PORT__` and
/// `__ADMIN_PORT__` default to 0 (the kernel picks), and every `(NAME, value)` in `vars` replaces
/// `__NAME__`. Panics when a placeholder is left.
pub fn render_template(template: &str, vars: &[(&str, String)]) -> String {
    let path = workspace_root().join(template);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    render_text(&text, vars)
}

/// [`render_template`] on a string.
pub fn render_text(text: &str, vars: &[(&str, String)]) -> String {
    let mut all: BTreeMap<String, String> = BTreeMap::new();
    all.insert("WASM_DIR".into(), wasm_dir().to_string_lossy().into_owned());
    all.insert("DATAPLANE_TOKEN".into(), DATAPLANE_TOKEN.into());
    all.insert("GATEWAY_PORT".into(), "0".into());
    all.insert("ADMIN_PORT".into(), "0".into());
    for (name, value) in vars {
        all.insert((*name).to_owned(), value.clone());
    }
    let mut out = text.to_owned();
    for (name, value) in &all {
        out = out.replace(&format!("__{name}__"), value);
    }
    // Placeholders are `__UPPER_CASE__`; report any left over.
    let left: Vec<&str> = out
        .split("__")
        .skip(1)
        .step_by(2)
        .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .collect();
    assert!(left.is_empty(), "placeholders left after rendering: {left:?}");
    out
}

/// Starts Envoy with a complete YAML bootstrap (as rendered by [`render_template`]).
pub async fn start_yaml(yaml: &str, workers: u32) -> Envoy {
    let args = vec!["--config-yaml".to_owned(), yaml.to_owned(), "-l".to_owned(), "info".to_owned()];
    match Envoy::start_config(&json!({}), workers, &args).await {
        Ok(envoy) => envoy,
        Err(log) => panic!("Envoy did not start:\n{log}"),
    }
}

/// The bound address of the listener called `name`.
pub async fn listener_addr(envoy: &Envoy, name: &str) -> SocketAddr {
    let text = envoy.admin_get("/listeners?format=json").await;
    let doc: Value = serde_json::from_str(&text).expect("listeners JSON");
    for status in doc["listener_statuses"].as_array().into_iter().flatten() {
        if status["name"] == name {
            let socket = &status["local_address"]["socket_address"];
            let ip = socket["address"].as_str().and_then(|a| a.parse().ok()).expect("listener ip");
            let port = socket["port_value"].as_u64().and_then(|p| u16::try_from(p).ok()).expect("port");
            return SocketAddr::new(ip, port);
        }
    }
    panic!("no listener named {name}: {text}");
}

/// Health of every host of `cluster` as Envoy sees it: `(address, healthy)`.
pub async fn host_health(envoy: &Envoy, cluster: &str) -> Vec<(SocketAddr, bool)> {
    let text = envoy.admin_get("/clusters?format=json").await;
    let doc: Value = serde_json::from_str(&text).expect("clusters JSON");
    let mut out = Vec::new();
    for status in doc["cluster_statuses"].as_array().into_iter().flatten() {
        if status["name"] != cluster {
            continue;
        }
        for host in status["host_statuses"].as_array().into_iter().flatten() {
            let socket = &host["address"]["socket_address"];
            let Some(ip) = socket["address"].as_str().and_then(|a| a.parse().ok()) else { continue };
            let port = socket["port_value"].as_u64().and_then(|p| u16::try_from(p).ok()).unwrap_or(0);
            let health = &host["health_status"];
            let healthy = health["eds_health_status"].as_str().unwrap_or("HEALTHY") == "HEALTHY"
                && health.as_object().is_some_and(|h| {
                    h.iter().all(|(k, v)| k == "eds_health_status" || v != &Value::Bool(true))
                });
            out.push((SocketAddr::new(ip, port), healthy));
        }
    }
    out
}

/// Counts values, e.g. which instance answered each request.
pub fn tally<I: IntoIterator<Item = String>>(items: I) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for item in items {
        *out.entry(item).or_insert(0) += 1;
    }
    out
}

/// Writes `contents` next to `path` and renames it into place, the way Envoy's filesystem xDS
/// expects an update (it watches for moves).
pub fn replace_file(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename into {}: {e}", path.display()));
}

/// A loopback port the kernel picked and that was free a moment ago, for a listener Envoy's own
/// config must point at (e.g. a cluster sending to a second listener of the same Envoy), where
/// port 0 cannot be used. Another process could take it in between; the kernel hands out
/// ephemeral ports in turn, so that is unlikely within a test.
pub fn reserve_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

// ---------------------------------------------------------------------------------------------
// WebSocket (RFC 6455) client, just enough for tests: one unfragmented message per frame. The
// upstream side is `tollgate-echo`'s ([`crate::Echo`] accepts upgrades on any path).

/// A WebSocket client connection over plain TCP.
pub struct WebSocket {
    stream: TcpStream,
    /// The status line and headers of the handshake response.
    pub handshake: String,
}

impl WebSocket {
    /// Opens `ws://addr{path}` with extra request headers. `Err` carries the handshake response
    /// when it is not `101`.
    pub async fn connect(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<WebSocket, String> {
        let mut stream = TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
        // Read the response head byte by byte so no frame bytes are consumed.
        let mut head = Vec::new();
        let read = async {
            while !head.ends_with(b"\r\n\r\n") {
                let mut byte = [0u8; 1];
                if stream.read(&mut byte).await.map_err(|e| e.to_string())? == 0 {
                    break;
                }
                head.push(byte[0]);
            }
            Ok::<_, String>(())
        };
        tokio::time::timeout(Duration::from_secs(10), read).await.map_err(|_| "handshake timed out")??;
        let handshake = String::from_utf8_lossy(&head).into_owned();
        if !handshake.starts_with("HTTP/1.1 101") {
            // Read what body there is, for the error message.
            let mut rest = vec![0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut rest)).await;
            let body = match n {
                Ok(Ok(n)) => String::from_utf8_lossy(&rest[..n]).into_owned(),
                _ => String::new(),
            };
            return Err(format!("{handshake}{body}"));
        }
        Ok(WebSocket { stream, handshake })
    }

    /// Sends a text message and waits (up to 10 s) for the next message back.
    pub async fn roundtrip(&mut self, text: &str) -> Result<String, String> {
        ws::write_frame(&mut self.stream, ws::TEXT, text.as_bytes(), true)
            .await
            .map_err(|e| e.to_string())?;
        let (opcode, payload) =
            tokio::time::timeout(Duration::from_secs(10), ws::read_frame(&mut self.stream))
                .await
                .map_err(|_| "no answer within 10 s".to_owned())?
                .map_err(|e| e.to_string())?;
        if opcode != ws::TEXT {
            return Err(format!("expected a text frame, got opcode {opcode}"));
        }
        String::from_utf8(payload).map_err(|e| e.to_string())
    }

    /// Sends a close frame and waits for the peer's close.
    pub async fn close(mut self) -> Result<(), String> {
        ws::write_frame(&mut self.stream, ws::CLOSE, &[0x03, 0xe8], true).await.map_err(|e| e.to_string())?;
        let (opcode, _) = tokio::time::timeout(Duration::from_secs(10), ws::read_frame(&mut self.stream))
            .await
            .map_err(|_| "no close within 10 s".to_owned())?
            .map_err(|e| e.to_string())?;
        if opcode == ws::CLOSE { Ok(()) } else { Err(format!("expected close, got opcode {opcode}")) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_reports_leftover_placeholders() {
        let out = render_text("a: __WASM_DIR__\nb: __X_PORT__\n", &[("X_PORT", "1".into())]);
        assert!(out.ends_with("b: 1\n"));
        let left = std::panic::catch_unwind(|| render_text("c: __NOPE__", &[]));
        assert!(left.is_err());
    }
}
