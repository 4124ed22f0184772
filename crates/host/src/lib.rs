//! proxy-wasm host glue shared by the Tollgate filters.
//!
//! Filter logic talks to the host only through [`Host`]. `EnvoyHost` (built for wasm32)
//! implements it over the proxy-wasm ABI through this crate's own import wrappers, which map
//! every status the host answers to a value: the SDK's `proxy_wasm::hostcalls` panic on statuses
//! they do not expect, and a panic inside Envoy kills the VM. [`mock::MockHost`] implements it in
//! memory for native tests, with [`mock::Harness`] to drive a filter through its contexts.
//!
//! Every filter runs on the one generic root context ([`root::Root`]), supplying only what
//! differs ([`root::Filter`]); its stats come from one list ([`stats`]), its refusals go out
//! through [`send_reply`], and a credential comes off a request through [`remove_credentials`].

use std::time::Duration;

// The ABI imports and the buffers the host hands back cannot be used without `unsafe`; it is
// allowed in this one module only (the workspace denies it everywhere else), and every block
// there says why it is sound.
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
mod abi;
pub mod attributes;
#[cfg(target_arch = "wasm32")]
mod envoy;
pub mod feed;
#[cfg(not(target_arch = "wasm32"))]
pub mod mock;
pub mod root;
pub mod shared;
pub mod stats;
pub mod usage;
pub mod wire;
#[cfg(target_arch = "wasm32")]
pub use envoy::{EnvoyHost, install_panic_hook};
#[cfg(target_arch = "wasm32")]
pub use root::start;
pub use root::{Filter, Root};
pub use stats::{Counters, Stat};
use tollgate_core::credentials::Removal;
use tollgate_core::error::Reply;

pub use proxy_wasm::types::LogLevel;

/// Why a shared-data write failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedError {
    /// Someone else wrote the key since it was read: read again and retry.
    CasMismatch,
    /// Any other host failure.
    Failed,
}

/// The host refused to start a call (e.g. the cluster does not exist).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallRefused;

impl std::fmt::Display for CallRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the proxy refused to start the call")
    }
}

impl std::error::Error for CallRefused {}

/// Everything the filters need from the proxy. Methods never panic; failures are values.
pub trait Host {
    /// Host clock, milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
    fn log(&self, level: LogLevel, message: &str);

    /// The first value of a request header, as the bytes the client sent. Envoy answers only
    /// the first of a repeated header here: read [`Host::request_headers`] where repetition
    /// matters.
    fn request_header_bytes(&self, name: &str) -> Option<Vec<u8>>;
    /// The first value of a request header as text, bytes that are not UTF-8 replaced by U+FFFD
    /// (so a garbled value stays present and can never equal a valid token). Use
    /// [`Host::request_header_bytes`] wherever the exact bytes matter.
    fn request_header(&self, name: &str) -> Option<String> {
        self.request_header_bytes(name).map(lossy)
    }
    /// Every request header in order, as bytes; a repeated header appears once per field line.
    fn request_headers(&self) -> Vec<(String, Vec<u8>)>;
    /// Sets a request header, replacing every value it had (`Some`), or removes it (`None`).
    /// A value that is not a valid field value ([`valid_field_value`]) is refused: the header
    /// is removed rather than left with an older value, and the call returns false.
    fn set_request_header(&self, name: &str, value: Option<&[u8]>) -> bool;
    /// Adds a request field line, keeping the values already there. Refuses (false) a value
    /// that is not a valid field value.
    fn add_request_header(&self, name: &str, value: &[u8]) -> bool;

    /// The first value of a response header (in `on_http_response_headers` and later).
    fn response_header_bytes(&self, name: &str) -> Option<Vec<u8>>;
    /// [`Host::response_header_bytes`] as lossy text, like [`Host::request_header`].
    fn response_header(&self, name: &str) -> Option<String> {
        self.response_header_bytes(name).map(lossy)
    }
    /// Every response header in order, as bytes; a repeated header appears once per field line.
    fn response_headers(&self) -> Vec<(String, Vec<u8>)>;
    /// Like [`Host::set_request_header`], for the response.
    fn set_response_header(&self, name: &str, value: Option<&[u8]>) -> bool;
    /// Like [`Host::add_request_header`], for the response.
    fn add_response_header(&self, name: &str, value: &[u8]) -> bool;

    /// `size` bytes of the buffered request body from `start` (in `on_http_request_body`).
    fn request_body(&self, start: usize, size: usize) -> Option<Vec<u8>>;
    /// Replaces bytes `start..start + size` of the buffered request body with `body`.
    fn set_request_body(&self, start: usize, size: usize, body: &[u8]) -> bool;
    /// `size` bytes of the buffered response body from `start` (in `on_http_response_body`).
    fn response_body(&self, start: usize, size: usize) -> Option<Vec<u8>>;
    /// Replaces bytes `start..start + size` of the buffered response body with `body`.
    fn set_response_body(&self, start: usize, size: usize, body: &[u8]) -> bool;

    /// A property (see [`attributes`] for the paths Envoy answers; any other path is refused).
    fn property(&self, path: &[&str]) -> Option<Vec<u8>>;
    /// Writes filter state for later filters of the same request (only `tollgate.*` names; see
    /// [`attributes::is_writable`]).
    fn set_property(&self, path: &[&str], value: &[u8]) -> bool;

    /// A shared-data value and its CAS token.
    fn shared_get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedError>;

    /// Starts a unary gRPC call on an Envoy cluster; returns its token.
    fn grpc_call(
        &self,
        cluster: &str,
        service: &str,
        method: &str,
        metadata: &[(&str, &[u8])],
        message: &[u8],
        timeout: Duration,
    ) -> Result<u32, CallRefused>;
    /// The body of the gRPC response being delivered.
    fn grpc_response_body(&self, size: usize) -> Option<Vec<u8>>;
    /// The status message of the gRPC response being delivered.
    fn grpc_status_message(&self) -> Option<String>;

    /// Starts an HTTP call on an Envoy cluster (`headers` include `:method`, `:path` and
    /// `:authority`); returns its token.
    fn http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, CallRefused>;
    /// A header of the HTTP call response being delivered (`:status` among them).
    fn http_call_response_header(&self, name: &str) -> Option<String>;
    /// Every header of the HTTP call response being delivered, in order, as bytes (`:status`
    /// among them).
    fn http_call_response_headers(&self) -> Vec<(String, Vec<u8>)>;
    /// The body of the HTTP call response being delivered.
    fn http_call_response_body(&self, size: usize) -> Option<Vec<u8>>;

    /// Sends a local reply and stops the request.
    fn send_response(&self, status: u32, headers: &[(&str, &str)], body: &[u8]) -> bool;
    /// Resumes a request paused in `on_http_request_headers`.
    fn resume_request(&self) -> bool;
    /// Makes later calls act on another context (to finish a request that waited on this one).
    fn set_effective_context(&self, context_id: u32) -> bool;

    fn set_tick_period(&self, period: Duration);
    /// The plugin's configuration bytes (in `on_configure`).
    fn plugin_configuration(&self) -> Option<Vec<u8>>;

    /// Defines (or finds) a counter; `None` if the host refuses.
    fn define_counter(&self, name: &str) -> Option<u32>;
    fn increment_counter(&self, id: u32, by: i64);
    /// Defines (or finds) a gauge; `None` if the host refuses.
    fn define_gauge(&self, name: &str) -> Option<u32>;
    /// Defines (or finds) a histogram; `None` if the host refuses.
    fn define_histogram(&self, name: &str) -> Option<u32>;
    /// Sets gauge `id` to `value`, or records `value` in histogram `id`.
    fn record_metric(&self, id: u32, value: u64);
}

/// Bytes as text, anything that is not UTF-8 replaced by U+FFFD.
pub fn lossy(bytes: Vec<u8>) -> String {
    match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

/// Whether `value` may be sent as an HTTP field value (RFC 9110 §5.5: visible characters,
/// obs-text, space and tab). Envoy stores a value with CR, LF or NUL as empty and an upstream
/// refuses other control bytes, so such values are never set.
pub fn valid_field_value(value: &[u8]) -> bool {
    value.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// Sends a local reply (a refusal: see [`tollgate_core::error::denial_reply`]) and stops the
/// request. False when the host refused.
pub fn send_reply<H: Host + ?Sized>(host: &H, reply: &Reply) -> bool {
    let headers: Vec<(&str, &str)> = reply.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    host.send_response(reply.status, &headers, &reply.body)
}

/// Takes a credential off the request (see [`tollgate_core::credentials::removal`]): removes
/// its headers, then rewrites `:path` when its query carried it.
pub fn remove_credentials<H: Host + ?Sized>(host: &H, removal: &Removal<'_>) {
    for name in &removal.headers {
        host.set_request_header(name, None);
    }
    if let Some(path) = &removal.path {
        host.set_request_header(":path", Some(path.as_bytes()));
    }
}

/// gRPC status codes the filters act on.
pub mod grpc_status {
    pub const OK: u32 = 0;
    pub const DEADLINE_EXCEEDED: u32 = 4;
    pub const NOT_FOUND: u32 = 5;
    pub const UNAVAILABLE: u32 = 14;
    pub const UNAUTHENTICATED: u32 = 16;
}
