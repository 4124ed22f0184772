//! key-auth: API keys checked against the Tollgate key service, cached in shared data.
//!
//! Request path: identity headers sent by the client are removed; the key is read from the
//! configured sources and its format and checksum checked (a malformed key costs no lookup);
//! the cache in shared data answers most requests; a miss makes one VerifyKey call per key per
//! worker (later requests for the same key wait on it). The root context polls the key
//! service's change feed so revocations reach every worker within a poll interval.
//!
//! The logic lives in `tollgate_core::key_auth`; this crate is the glue to the proxy.

mod http;
mod reply;
mod root;
mod store;
mod worker;

pub use root::KeyAuth;

#[cfg(all(target_arch = "wasm32", feature = "module"))]
proxy_wasm::main! {{
    tollgate_host::start::<KeyAuth>();
}}

#[cfg(test)]
mod tests;
