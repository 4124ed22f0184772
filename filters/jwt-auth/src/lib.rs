//! jwt-auth: bearer tokens (JWTs) checked against identity providers' keys.
//!
//! Request path: identity and mapped-claim headers sent by the client are removed; the token
//! is read from the configured sources (two tokens are refused); a token verified before is
//! answered from the verified-token cache in shared data (claims are checked again); otherwise
//! it is parsed, its provider found by its exact `iss`, its signature verified with the
//! provider's keys (algorithm chosen by the key), its claims and the route's requirements
//! checked. Remote key sets are fetched by the root context on its tick, shared by all workers
//! through shared data, and fetched again on an unknown `kid` (with a cooldown); every request
//! that needs the fetch waits for that one fetch (in any worker); the last good set is kept
//! while fetches fail, for at most `max_stale`. A provider may instead name an OpenID
//! discovery document, fetched once per worker, for its key-set (and introspection) path.
//! Opaque tokens are introspected (RFC 7662) by the request's context, which waits for the
//! answer; answers are cached like verified tokens, and a failing endpoint means 503.
//!
//! The logic lives in `tollgate_core::jwt`; this crate is the glue to the proxy.

mod http;
mod root;
mod store;
mod worker;

pub use root::JwtAuth;

#[cfg(all(target_arch = "wasm32", feature = "module"))]
proxy_wasm::main! {{
    tollgate_host::start::<JwtAuth>();
}}

#[cfg(test)]
mod tests;
