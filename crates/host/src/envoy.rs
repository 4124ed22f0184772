//! [`Host`] over the proxy-wasm ABI, for the real proxy.
//!
//! Every call goes through [`crate::abi`], whose wrappers turn every status the host answers
//! into a value: a refused call is `false`, `None` or an error here, never a panic. Two calls
//! still go through the SDK's `proxy_wasm::hostcalls`, because only they register the call's
//! token with the SDK's context dispatch (which is private to the SDK) so that the response
//! reaches the context that made the call:
//!
//! - `dispatch_http_call` panics on statuses other than Ok, BadArgument and InternalFailure.
//!   Envoy answers only those (BadArgument: unknown cluster, a missing `:method`, `:path` or
//!   `:authority`, a negative timeout; InternalFailure: the request could not start), plus
//!   InvalidMemoryAccess, which valid slices never cause.
//! - `dispatch_grpc_call` panics on statuses other than Ok, ParseFailure and InternalFailure.
//!   Envoy also answers BadArgument, when its cluster argument decodes as a serialized
//!   `GrpcService` whose client cannot be made (and one without a target stops Envoy itself).
//!   [`EnvoyHost::grpc_call`] refuses such a cluster argument before the call, so Envoy answers
//!   only ParseFailure (unknown cluster), InternalFailure or Ok.
//!
//! The SDK's dispatch itself calls `set_effective_context(..).unwrap()` before delivering a
//! callout response to the context that made the call. Envoy answers BadArgument only for a
//! context it does not have, and the SDK only delivers to contexts in its own maps: Envoy
//! creates a context before `proxy_on_context_create` and deletes it only after
//! `proxy_on_delete` (when the SDK drops it), so that unwrap cannot fail while the VM runs.

use std::time::Duration;

use proxy_wasm::hostcalls;

use crate::abi::{self, Buffer, Map};
use crate::wire::{self, HostError};
use crate::{CallRefused, Host, LogLevel, SharedError, attributes, lossy, valid_field_value};

/// Longest timeout a callout is given: Envoy reads the milliseconds as a signed 32-bit number
/// and refuses a negative one (about 24.8 days).
const MAX_CALLOUT_TIMEOUT: Duration = Duration::from_millis(i32::MAX as u64);

/// The real host. Zero-sized: every call goes straight to the proxy.
#[derive(Debug, Default, Clone, Copy)]
pub struct EnvoyHost;

impl Host for EnvoyHost {
    fn now_ms(&self) -> u64 {
        abi::current_time_nanos().map_or(0, |nanos| nanos / 1_000_000)
    }

    fn log(&self, level: LogLevel, message: &str) {
        let _ = abi::log(level as u32, message);
    }

    fn request_header_bytes(&self, name: &str) -> Option<Vec<u8>> {
        abi::get_map_value(Map::Request, name).ok()
    }

    fn request_headers(&self) -> Vec<(String, Vec<u8>)> {
        headers(Map::Request)
    }

    fn set_request_header(&self, name: &str, value: Option<&[u8]>) -> bool {
        set_header(Map::Request, name, value)
    }

    fn add_request_header(&self, name: &str, value: &[u8]) -> bool {
        valid_field_value(value) && abi::add_map_value(Map::Request, name, value).is_ok()
    }

    fn response_header_bytes(&self, name: &str) -> Option<Vec<u8>> {
        abi::get_map_value(Map::Response, name).ok()
    }

    fn response_headers(&self) -> Vec<(String, Vec<u8>)> {
        headers(Map::Response)
    }

    fn set_response_header(&self, name: &str, value: Option<&[u8]>) -> bool {
        set_header(Map::Response, name, value)
    }

    fn add_response_header(&self, name: &str, value: &[u8]) -> bool {
        valid_field_value(value) && abi::add_map_value(Map::Response, name, value).is_ok()
    }

    fn request_body(&self, start: usize, size: usize) -> Option<Vec<u8>> {
        buffer(Buffer::Request, start, size)
    }

    fn set_request_body(&self, start: usize, size: usize, body: &[u8]) -> bool {
        abi::set_buffer(Buffer::Request, start, size, body).is_ok()
    }

    fn response_body(&self, start: usize, size: usize) -> Option<Vec<u8>> {
        buffer(Buffer::Response, start, size)
    }

    fn set_response_body(&self, start: usize, size: usize, body: &[u8]) -> bool {
        abi::set_buffer(Buffer::Response, start, size, body).is_ok()
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        if !attributes::is_readable(path) {
            return None;
        }
        abi::get_property(path).ok().filter(|v| !v.is_empty())
    }

    fn set_property(&self, path: &[&str], value: &[u8]) -> bool {
        attributes::is_writable(path) && abi::set_property(path, value).is_ok()
    }

    fn shared_get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        match abi::get_shared_data(key) {
            Ok((value, cas)) => ((!value.is_empty()).then_some(value), (cas != 0).then_some(cas)),
            Err(_) => (None, None),
        }
    }

    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedError> {
        match abi::set_shared_data(key, value, cas.unwrap_or(0)) {
            Ok(()) => Ok(()),
            Err(HostError::CasMismatch) => Err(SharedError::CasMismatch),
            Err(_) => Err(SharedError::Failed),
        }
    }

    fn grpc_call(
        &self,
        cluster: &str,
        service: &str,
        method: &str,
        metadata: &[(&str, &[u8])],
        message: &[u8],
        timeout: Duration,
    ) -> Result<u32, CallRefused> {
        // Envoy would read such a cluster argument as a service config (see the module docs).
        if wire::decodes_as_protobuf(cluster.as_bytes()) {
            return Err(CallRefused);
        }
        hostcalls::dispatch_grpc_call(
            cluster,
            service,
            method,
            metadata.to_vec(),
            Some(message),
            timeout.min(MAX_CALLOUT_TIMEOUT),
        )
        .map_err(|_| CallRefused)
    }

    fn grpc_response_body(&self, size: usize) -> Option<Vec<u8>> {
        buffer(Buffer::Grpc, 0, size)
    }

    fn grpc_status_message(&self) -> Option<String> {
        // The message is whatever bytes the gRPC server sent: never assume UTF-8.
        abi::get_status().ok().filter(|(_, message)| !message.is_empty()).map(|(_, message)| lossy(message))
    }

    fn http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, CallRefused> {
        hostcalls::dispatch_http_call(
            cluster,
            headers.to_vec(),
            body,
            vec![],
            timeout.min(MAX_CALLOUT_TIMEOUT),
        )
        .map_err(|_| CallRefused)
    }

    fn http_call_response_header(&self, name: &str) -> Option<String> {
        abi::get_map_value(Map::HttpCall, name).ok().map(lossy)
    }

    fn http_call_response_headers(&self) -> Vec<(String, Vec<u8>)> {
        headers(Map::HttpCall)
    }

    fn http_call_response_body(&self, size: usize) -> Option<Vec<u8>> {
        buffer(Buffer::HttpCall, 0, size)
    }

    fn send_response(&self, status: u32, headers: &[(&str, &str)], body: &[u8]) -> bool {
        let headers: Vec<(&[u8], &[u8])> =
            headers.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())).collect();
        abi::send_local_response(status, &headers, body).is_ok()
    }

    fn resume_request(&self) -> bool {
        abi::resume_http_request().is_ok()
    }

    fn set_effective_context(&self, context_id: u32) -> bool {
        abi::set_effective_context(context_id).is_ok()
    }

    fn set_tick_period(&self, period: Duration) {
        let millis = u32::try_from(period.as_millis()).unwrap_or(u32::MAX);
        let _ = abi::set_tick_period(millis);
    }

    fn plugin_configuration(&self) -> Option<Vec<u8>> {
        buffer(Buffer::PluginConfiguration, 0, usize::MAX)
    }

    fn define_counter(&self, name: &str) -> Option<u32> {
        abi::define_metric(abi::METRIC_COUNTER, name).ok()
    }

    fn increment_counter(&self, id: u32, by: i64) {
        let _ = abi::increment_metric(id, by);
    }

    fn define_gauge(&self, name: &str) -> Option<u32> {
        abi::define_metric(abi::METRIC_GAUGE, name).ok()
    }

    fn define_histogram(&self, name: &str) -> Option<u32> {
        abi::define_metric(abi::METRIC_HISTOGRAM, name).ok()
    }

    fn record_metric(&self, id: u32, value: u64) {
        let _ = abi::record_metric(id, value);
    }
}

/// Bytes of a buffer; `None` when the host has none there or refuses.
fn buffer(buffer: Buffer, start: usize, size: usize) -> Option<Vec<u8>> {
    abi::get_buffer(buffer, start, size).ok().filter(|b| !b.is_empty())
}

/// Every field line of a header map; none when the map does not exist in this callback or the
/// host's answer does not decode. A name that is not UTF-8 (no HTTP codec lets one through, but
/// another filter could set one) is kept with U+FFFD in place of its bad bytes, so it never
/// equals a real header's name.
fn headers(map: Map) -> Vec<(String, Vec<u8>)> {
    abi::get_map(map).map_or_else(
        |_| Vec::new(),
        |pairs| pairs.into_iter().map(|(name, value)| (lossy(name), value)).collect(),
    )
}

/// Sets or removes a header. An invalid value removes the header (never leaving an older value
/// in place) and is refused.
fn set_header(map: Map, name: &str, value: Option<&[u8]>) -> bool {
    match value {
        Some(v) if valid_field_value(v) => abi::replace_map_value(map, name, v).is_ok(),
        Some(_) => {
            let _ = abi::remove_map_value(map, name);
            false
        }
        None => abi::remove_map_value(map, name).is_ok(),
    }
}

/// Logs a panic at critical level through the host before the VM aborts, so the reason is in
/// Envoy's log rather than lost.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let _ = abi::log(LogLevel::Critical as u32, &format!("tollgate filter panicked: {info}"));
    }));
}
