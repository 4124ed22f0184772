//! transform: rewrites requests and responses — headers, path, query, method, host, status and
//! JSON bodies — by ordered rules compiled at configure time.
//!
//! Bodies are buffered only when a matching rule changes them and they are JSON within the
//! configured cap; everything else (streams, other types, large bodies) flows through
//! unbuffered.
//!
//! The logic lives in `tollgate_core::transform`; this crate is the glue to the proxy.

mod http;
mod root;
mod worker;

pub use root::Transform;

#[cfg(all(target_arch = "wasm32", feature = "module"))]
proxy_wasm::main! {{
    tollgate_host::start::<Transform>();
}}

#[cfg(test)]
mod tests;
