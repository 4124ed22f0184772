//! [`Host`] over `proxy_wasm::hostcalls`, for the real proxy.

use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, MetricType, Status};

use crate::{Host, LogLevel, SharedError, attributes, lossy, valid_field_value};

/// The real host. Zero-sized: every call goes straight to the proxy.
#[derive(Debug, Default, Clone, Copy)]
pub struct EnvoyHost;

impl Host for EnvoyHost {
    fn now_ms(&self) -> u64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    fn log(&self, level: LogLevel, message: &str) {
        let _ = hostcalls::log(level, message);
    }

    fn request_header_bytes(&self, name: &str) -> Option<Vec<u8>> {
        // Header values may carry bytes that are not UTF-8; the SDK's string getter would panic.
        hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name).ok().flatten()
    }

    fn request_headers(&self) -> Vec<(String, Vec<u8>)> {
        hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default()
    }

    fn set_request_header(&self, name: &str, value: Option<&[u8]>) -> bool {
        set_header(MapType::HttpRequestHeaders, name, value)
    }

    fn add_request_header(&self, name: &str, value: &[u8]) -> bool {
        valid_field_value(value)
            && hostcalls::add_map_value_bytes(MapType::HttpRequestHeaders, name, value).is_ok()
    }

    fn response_header_bytes(&self, name: &str) -> Option<Vec<u8>> {
        hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, name).ok().flatten()
    }

    fn response_headers(&self) -> Vec<(String, Vec<u8>)> {
        hostcalls::get_map_bytes(MapType::HttpResponseHeaders).unwrap_or_default()
    }

    fn set_response_header(&self, name: &str, value: Option<&[u8]>) -> bool {
        set_header(MapType::HttpResponseHeaders, name, value)
    }

    fn add_response_header(&self, name: &str, value: &[u8]) -> bool {
        valid_field_value(value)
            && hostcalls::add_map_value_bytes(MapType::HttpResponseHeaders, name, value).is_ok()
    }

    fn request_body(&self, start: usize, size: usize) -> Option<Vec<u8>> {
        hostcalls::get_buffer(BufferType::HttpRequestBody, start, size).ok().flatten()
    }

    fn set_request_body(&self, start: usize, size: usize, body: &[u8]) -> bool {
        hostcalls::set_buffer(BufferType::HttpRequestBody, start, size, body).is_ok()
    }

    fn response_body(&self, start: usize, size: usize) -> Option<Vec<u8>> {
        hostcalls::get_buffer(BufferType::HttpResponseBody, start, size).ok().flatten()
    }

    fn set_response_body(&self, start: usize, size: usize, body: &[u8]) -> bool {
        hostcalls::set_buffer(BufferType::HttpResponseBody, start, size, body).is_ok()
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        if !attributes::is_readable(path) {
            return None;
        }
        hostcalls::get_property(path.to_vec()).ok().flatten()
    }

    fn set_property(&self, path: &[&str], value: &[u8]) -> bool {
        attributes::is_writable(path) && hostcalls::set_property(path.to_vec(), Some(value)).is_ok()
    }

    fn shared_get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        hostcalls::get_shared_data(key).unwrap_or((None, None))
    }

    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedError> {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(SharedError::CasMismatch),
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
    ) -> Result<u32, crate::CallRefused> {
        hostcalls::dispatch_grpc_call(cluster, service, method, metadata.to_vec(), Some(message), timeout)
            .map_err(|_| crate::CallRefused)
    }

    fn grpc_response_body(&self, size: usize) -> Option<Vec<u8>> {
        hostcalls::get_buffer(proxy_wasm::types::BufferType::GrpcReceiveBuffer, 0, size).ok().flatten()
    }

    fn grpc_status_message(&self) -> Option<String> {
        hostcalls::get_grpc_status().ok().and_then(|(_, m)| m)
    }

    fn http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, crate::CallRefused> {
        hostcalls::dispatch_http_call(cluster, headers.to_vec(), body, vec![], timeout)
            .map_err(|_| crate::CallRefused)
    }

    fn http_call_response_header(&self, name: &str) -> Option<String> {
        hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, name).ok().flatten().map(lossy)
    }

    fn http_call_response_body(&self, size: usize) -> Option<Vec<u8>> {
        hostcalls::get_buffer(proxy_wasm::types::BufferType::HttpCallResponseBody, 0, size).ok().flatten()
    }

    fn send_response(&self, status: u32, headers: &[(&str, &str)], body: &[u8]) -> bool {
        hostcalls::send_http_response(status, headers.to_vec(), Some(body)).is_ok()
    }

    fn resume_request(&self) -> bool {
        hostcalls::resume_http_request().is_ok()
    }

    fn set_effective_context(&self, context_id: u32) -> bool {
        hostcalls::set_effective_context(context_id).is_ok()
    }

    fn set_tick_period(&self, period: Duration) {
        let _ = hostcalls::set_tick_period(period);
    }

    fn plugin_configuration(&self) -> Option<Vec<u8>> {
        hostcalls::get_buffer(proxy_wasm::types::BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
    }

    fn define_counter(&self, name: &str) -> Option<u32> {
        hostcalls::define_metric(MetricType::Counter, name).ok()
    }

    fn increment_counter(&self, id: u32, by: i64) {
        let _ = hostcalls::increment_metric(id, by);
    }
}

/// Sets or removes a header. An invalid value removes the header (never leaving an older value
/// in place) and is refused.
fn set_header(map: MapType, name: &str, value: Option<&[u8]>) -> bool {
    match value {
        Some(v) if valid_field_value(v) => hostcalls::set_map_value_bytes(map, name, Some(v)).is_ok(),
        Some(_) => {
            let _ = hostcalls::set_map_value_bytes(map, name, None);
            false
        }
        None => hostcalls::set_map_value_bytes(map, name, None).is_ok(),
    }
}

/// Logs a panic at critical level through the host before the VM aborts, so the reason is in
/// Envoy's log rather than lost.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let _ = hostcalls::log(LogLevel::Critical, &format!("tollgate filter panicked: {info}"));
    }));
}
