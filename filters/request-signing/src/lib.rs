//! request-signing: RFC 9421 HTTP Message Signatures, verified against signing material from
//! the Tollgate key service, with RFC 9530 `Content-Digest` checks of the buffered body and
//! replay protection in shared data.
//!
//! Request path: identity headers sent by the client are removed; `Signature-Input` and
//! `Signature` are parsed and checked against the route's policy (no lookup for a malformed
//! or stale signature); the key's material comes from the shared-data cache or one
//! GetSigningKey call; a body is buffered up to `max_body_bytes` (over it: 413) and checked
//! against `Content-Digest`; then the signature is verified, the signature (or nonce) is
//! remembered for the replay window, and the identity is published. The root context polls
//! the key service's change feed so revocations reach every worker within a poll interval.

mod http;
mod root;
mod store;

pub use http::SigningHttp;
pub use root::{SigningRoot, Worker};

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    tollgate_host::install_panic_hook();
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::new(SigningRoot::new(std::rc::Rc::new(tollgate_host::EnvoyHost)))
    });
}}

#[cfg(test)]
mod tests;
