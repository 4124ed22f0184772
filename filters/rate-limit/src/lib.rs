//! rate-limit: exact token buckets shared by every worker of one Envoy.
//!
//! Request path: the rules matching the request (route name, path prefix, method) each build a
//! bucket key from the request (consumer, key id, client IP, a header, the path, the route),
//! pick the key's own limits when key-auth published them, and take a token from the bucket in
//! shared data with a compare-and-swap loop. A refusing rule answers 429 unless it is in shadow
//! mode; allowed responses carry the `RateLimit` headers. With `global`, a request the rules let
//! through is then asked about in one call to a rate-limit service (`rls.rs`), which may refuse
//! it; `global.failure_mode` decides when the service cannot answer.
//!
//! The logic lives in `tollgate_core::rate_limit`; this crate is the glue to the proxy.

mod http;
mod rls;
mod root;
mod store;
mod worker;

pub use root::RateLimit;

#[cfg(all(target_arch = "wasm32", feature = "module"))]
proxy_wasm::main! {{
    tollgate_host::start::<RateLimit>();
}}

#[cfg(test)]
mod tests;
