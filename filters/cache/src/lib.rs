//! cache: a shared HTTP cache (RFC 9111) with RFC 5861's `stale-while-revalidate` and
//! `stale-if-error`, kept per worker in the VM and in a tier all workers share, each bounded in
//! bytes.
//!
//! Fresh hits are answered from the VM with `Age` and `Cache-Status` (RFC 9211); concurrent
//! misses for one URL go upstream once per proxy; stale responses within
//! `stale-while-revalidate` are answered at once while one root context refreshes them; purges
//! come from unsafe methods and the key service's change feed (`feed`).
//!
//! The logic lives in `tollgate_core::cache`; this crate is the glue to the proxy.

mod feed;
mod http;
mod root;
mod worker;

pub use root::Cache;

#[cfg(all(target_arch = "wasm32", feature = "module"))]
proxy_wasm::main! {{
    tollgate_host::start::<Cache>();
}}

#[cfg(test)]
mod tests;
