//! The proxy-wasm 0.2.1 ABI imports the filters use, each behind a safe wrapper that maps every
//! status the host can answer to a `Result`.
//!
//! The SDK's `proxy_wasm::hostcalls` wrap the same imports but `panic!` on any status they do
//! not expect, and Envoy answers such statuses in ordinary situations (a header map that does not
//! exist in the current callback, a body buffer that is not there, a property written from the
//! root context). A panic kills the VM and every later request of the worker fails, so these
//! wrappers never panic: every status, and every malformed answer, is an error value.
//!
//! The declarations carry the same names and the same wasm signatures as the SDK's (statuses and
//! enums as `u32`, sizes as `usize`), so a module's import list is what it was. The SDK still
//! provides the context dispatch and `proxy_on_memory_allocate`, the allocator through which the
//! host hands buffers back; [`take`] returns them to Rust exactly as that allocator made them.
//!
//! `unsafe` is allowed in this module only (the workspace denies it elsewhere): calling an
//! import and taking back a host-filled buffer cannot be written without it. Every block says
//! why it is sound.

#![deny(clippy::undocumented_unsafe_blocks)]

use std::ptr::{self, null_mut};

use crate::wire::{self, HostError};

/// Buffer types of the ABI (the ones the filters read or write).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Buffer {
    /// The HTTP request body.
    Request = 0,
    /// The HTTP response body.
    Response = 1,
    /// The body of the HTTP call response being delivered.
    HttpCall = 4,
    /// The message of the gRPC response being delivered.
    Grpc = 5,
    /// The plugin's configuration (in `on_configure`).
    PluginConfiguration = 7,
}

/// Header map types of the ABI (the ones the filters read or write).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Map {
    /// The HTTP request headers.
    Request = 0,
    /// The HTTP response headers.
    Response = 2,
    /// The headers of the HTTP call response being delivered.
    HttpCall = 6,
}

/// The stream `proxy_continue_stream` resumes.
const STREAM_HTTP_REQUEST: u32 = 0;
/// `proxy_define_metric`'s metric types.
pub const METRIC_COUNTER: u32 = 0;
pub const METRIC_GAUGE: u32 = 1;
pub const METRIC_HISTOGRAM: u32 = 2;
/// `proxy_send_local_response`'s "no gRPC status" (a plain HTTP reply).
const NO_GRPC_STATUS: i32 = -1;

#[link(wasm_import_module = "env")]
unsafe extern "C" {
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> u32;
    fn proxy_set_buffer_bytes(
        buffer_type: u32,
        start: usize,
        size: usize,
        buffer_data: *const u8,
        buffer_size: usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
    fn proxy_add_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_set_property(
        path_data: *const u8,
        path_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
        return_cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_continue_stream(stream_type: u32) -> u32;
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_get_status(
        return_code: *mut u32,
        return_message_data: *mut *mut u8,
        return_message_size: *mut usize,
    ) -> u32;
    fn proxy_set_effective_context(context_id: u32) -> u32;
    fn proxy_define_metric(
        metric_type: u32,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
}

/// Takes ownership of a buffer the host handed back: `size` bytes at `data`, or nothing.
///
/// # Safety
///
/// `data` is null, or it was returned by `proxy_on_memory_allocate(size)` (the SDK's allocator,
/// which the host calls to hand data back), the host wrote all `size` bytes, and nothing else
/// owns it. Every host call of the ABI that answers a buffer guarantees this for the pointer and
/// size it writes: it allocates exactly the size it reports, copies that many bytes and never
/// keeps the pointer; it writes a null pointer and a zero size when there is nothing to hand
/// back.
unsafe fn take(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() || size == 0 {
        // Nothing was allocated: the host never asks the allocator for zero bytes.
        return Vec::new();
    }
    // SAFETY: per this function's contract the allocator made this block as
    // `Box<[MaybeUninit<u8>]>` of exactly `size` elements (`Layout::array::<u8>(size)`) and the
    // host initialised every byte, so it is a valid `Box<[u8]>` of that length, owned by no one
    // else. `into_vec` keeps the allocation as it is (capacity == length), and dropping the Vec
    // frees it with the same layout.
    unsafe { Box::from_raw(ptr::slice_from_raw_parts_mut(data, size)) }.into_vec()
}

/// Logs `message` at `level` (0 trace … 5 critical).
pub fn log(level: u32, message: &str) -> Result<(), HostError> {
    // SAFETY: the pointer and length describe `message`, which outlives the call; the host only
    // reads them.
    HostError::check(unsafe { proxy_log(level, message.as_ptr(), message.len()) })
}

/// The host's clock, nanoseconds since the Unix epoch.
pub fn current_time_nanos() -> Result<u64, HostError> {
    let mut nanos: u64 = 0;
    // SAFETY: `nanos` is a live, aligned u64 the host writes once.
    HostError::check(unsafe { proxy_get_current_time_nanoseconds(&mut nanos) })?;
    Ok(nanos)
}

/// Calls the root context's `on_tick` every `millis` milliseconds (0 stops it).
pub fn set_tick_period(millis: u32) -> Result<(), HostError> {
    // SAFETY: no pointers cross; the import has no preconditions.
    HostError::check(unsafe { proxy_set_tick_period_milliseconds(millis) })
}

/// Up to `max_size` bytes of a buffer from `start`; empty when there are none there.
pub fn get_buffer(buffer: Buffer, start: usize, max_size: usize) -> Result<Vec<u8>, HostError> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: `data` and `size` are live locals the host writes; it only writes them.
    let status = unsafe { proxy_get_buffer_bytes(buffer as u32, start, max_size, &mut data, &mut size) };
    // SAFETY: whatever the status, `data` is null or a block the host allocated for us with
    // exactly `size` bytes (see `take`); taking it on an error too means it is never leaked.
    let bytes = unsafe { take(data, size) };
    HostError::check(status)?;
    Ok(bytes)
}

/// Replaces `size` bytes of a buffer from `start` with `value`.
pub fn set_buffer(buffer: Buffer, start: usize, size: usize, value: &[u8]) -> Result<(), HostError> {
    // SAFETY: the pointer and length describe `value`, which outlives the call; the host only
    // reads them.
    HostError::check(unsafe {
        proxy_set_buffer_bytes(buffer as u32, start, size, value.as_ptr(), value.len())
    })
}

/// Every field line of a header map, in order, as `(name, value)` bytes.
pub fn get_map(map: Map) -> Result<wire::Pairs, HostError> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: `data` and `size` are live locals the host writes; it only writes them.
    let status = unsafe { proxy_get_header_map_pairs(map as u32, &mut data, &mut size) };
    // SAFETY: as in `get_buffer`: null, or a host-allocated block of exactly `size` bytes.
    let bytes = unsafe { take(data, size) };
    HostError::check(status)?;
    wire::decode_pairs(&bytes)
}

/// The first value of `key` in a header map (`NotFound` when it has none).
pub fn get_map_value(map: Map, key: &str) -> Result<Vec<u8>, HostError> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: the key pointer and length describe `key`, which outlives the call; `data` and
    // `size` are live locals the host writes.
    let status =
        unsafe { proxy_get_header_map_value(map as u32, key.as_ptr(), key.len(), &mut data, &mut size) };
    // SAFETY: as in `get_buffer`: null, or a host-allocated block of exactly `size` bytes.
    let bytes = unsafe { take(data, size) };
    HostError::check(status)?;
    Ok(bytes)
}

/// Sets `key` to `value` in a header map, replacing every value it had.
pub fn replace_map_value(map: Map, key: &str, value: &[u8]) -> Result<(), HostError> {
    // SAFETY: both pointer/length pairs describe borrowed slices that outlive the call; the
    // host only reads them.
    HostError::check(unsafe {
        proxy_replace_header_map_value(map as u32, key.as_ptr(), key.len(), value.as_ptr(), value.len())
    })
}

/// Removes every value of `key` from a header map.
pub fn remove_map_value(map: Map, key: &str) -> Result<(), HostError> {
    // SAFETY: the pointer and length describe `key`, which outlives the call; the host only
    // reads them.
    HostError::check(unsafe { proxy_remove_header_map_value(map as u32, key.as_ptr(), key.len()) })
}

/// Adds a field line `key: value` to a header map.
pub fn add_map_value(map: Map, key: &str, value: &[u8]) -> Result<(), HostError> {
    // SAFETY: both pointer/length pairs describe borrowed slices that outlive the call; the
    // host only reads them.
    HostError::check(unsafe {
        proxy_add_header_map_value(map as u32, key.as_ptr(), key.len(), value.as_ptr(), value.len())
    })
}

/// A property's value (empty when the host hands back nothing).
pub fn get_property(path: &[&str]) -> Result<Vec<u8>, HostError> {
    let path = wire::encode_path(path);
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: the path pointer and length describe `path`, which outlives the call; `data` and
    // `size` are live locals the host writes.
    let status = unsafe { proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size) };
    // SAFETY: as in `get_buffer`: null, or a host-allocated block of exactly `size` bytes.
    let bytes = unsafe { take(data, size) };
    HostError::check(status)?;
    Ok(bytes)
}

/// Writes a property (filter state) of the current stream.
pub fn set_property(path: &[&str], value: &[u8]) -> Result<(), HostError> {
    let path = wire::encode_path(path);
    // SAFETY: both pointer/length pairs describe buffers that outlive the call; the host only
    // reads them.
    HostError::check(unsafe { proxy_set_property(path.as_ptr(), path.len(), value.as_ptr(), value.len()) })
}

/// A shared-data value and its CAS token (0: none).
pub fn get_shared_data(key: &str) -> Result<(Vec<u8>, u32), HostError> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    let mut cas: u32 = 0;
    // SAFETY: the key pointer and length describe `key`, which outlives the call; `data`,
    // `size` and `cas` are live locals the host writes.
    let status = unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) };
    // SAFETY: as in `get_buffer`: null, or a host-allocated block of exactly `size` bytes.
    let bytes = unsafe { take(data, size) };
    HostError::check(status)?;
    Ok((bytes, cas))
}

/// Writes a shared-data value if its CAS token is still `cas` (0: unconditionally).
pub fn set_shared_data(key: &str, value: &[u8], cas: u32) -> Result<(), HostError> {
    // SAFETY: both pointer/length pairs describe borrowed slices that outlive the call; the
    // host only reads them.
    HostError::check(unsafe {
        proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas)
    })
}

/// Resumes the request paused in `on_http_request_headers`.
pub fn resume_http_request() -> Result<(), HostError> {
    // SAFETY: no pointers cross; the import has no preconditions.
    HostError::check(unsafe { proxy_continue_stream(STREAM_HTTP_REQUEST) })
}

/// Sends a local reply (`headers` serialized with [`wire::encode_pairs`]).
pub fn send_local_response(status: u32, headers: &[(&[u8], &[u8])], body: &[u8]) -> Result<(), HostError> {
    // The host reads no header at all from a map it considers too large: refuse it here.
    let headers = wire::encode_pairs(headers).map_err(|_| HostError::BadArgument)?;
    let details: &[u8] = &[];
    // SAFETY: every pointer/length pair describes a buffer that outlives the call (`details` is
    // empty); the host only reads them.
    HostError::check(unsafe {
        proxy_send_local_response(
            status,
            details.as_ptr(),
            details.len(),
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            NO_GRPC_STATUS,
        )
    })
}

/// The status code and message of the gRPC response being delivered.
pub fn get_status() -> Result<(u32, Vec<u8>), HostError> {
    let mut code: u32 = 0;
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: `code`, `data` and `size` are live locals the host writes; it only writes them.
    let status = unsafe { proxy_get_status(&mut code, &mut data, &mut size) };
    // SAFETY: as in `get_buffer`: null, or a host-allocated block of exactly `size` bytes.
    let message = unsafe { take(data, size) };
    HostError::check(status)?;
    Ok((code, message))
}

/// Makes later calls of this callback act on context `context_id`.
pub fn set_effective_context(context_id: u32) -> Result<(), HostError> {
    // SAFETY: no pointers cross; the import has no preconditions.
    HostError::check(unsafe { proxy_set_effective_context(context_id) })
}

/// Defines (or finds) a metric of type `kind` ([`METRIC_COUNTER`], [`METRIC_GAUGE`],
/// [`METRIC_HISTOGRAM`]); returns its id.
pub fn define_metric(kind: u32, name: &str) -> Result<u32, HostError> {
    let mut id: u32 = 0;
    // SAFETY: the name pointer and length describe `name`, which outlives the call; `id` is a
    // live local the host writes.
    HostError::check(unsafe { proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

/// Sets a gauge to `value`, or records `value` in a histogram.
pub fn record_metric(id: u32, value: u64) -> Result<(), HostError> {
    // SAFETY: no pointers cross; the import has no preconditions.
    HostError::check(unsafe { proxy_record_metric(id, value) })
}

/// Adds `offset` to a metric.
pub fn increment_metric(id: u32, offset: i64) -> Result<(), HostError> {
    // SAFETY: no pointers cross; the import has no preconditions.
    HostError::check(unsafe { proxy_increment_metric(id, offset) })
}
