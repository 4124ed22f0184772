//! request-signing: RFC 9421 HTTP Message Signatures, verified against signing material from
//! the Tollgate key service, with RFC 9530 `Content-Digest` checks of the buffered body and
//! replay protection in shared data.
//!
//! Request path: identity headers sent by the client are removed; `Signature-Input` and
//! `Signature` (every field line) are parsed and checked against the route's policy (no lookup
//! for a malformed or stale signature, nor for a signed body that was stripped); the key's
//! material comes from the shared-data cache or one GetSigningKey call; the signature is
//! verified over the header bytes received and the headers go on; a body bound by
//! `Content-Digest` is held up to `max_body_bytes` (over it: 413) until the end of the stream or
//! the trailers, and checked; only then is the signature (or nonce) remembered for the replay
//! window and the request counted as allowed. The root context polls the key service's change
//! feed so revocations reach every worker within a poll interval.
//!
//! The logic lives in `tollgate_core::signature`; this crate is the glue to the proxy.

mod http;
mod reply;
mod root;
mod store;
mod worker;

pub use root::RequestSigning;

#[cfg(all(target_arch = "wasm32", feature = "module"))]
proxy_wasm::main! {{
    tollgate_host::start::<RequestSigning>();
}}

#[cfg(test)]
mod tests;
