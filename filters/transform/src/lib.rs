//! transform: rewrites requests and responses — headers, path, query, method, host, status and
//! JSON bodies — by ordered rules compiled at configure time.
//!
//! Bodies are buffered only when a matching rule changes them and they are JSON within the
//! configured cap; everything else (streams, other types, large bodies) flows through
//! unbuffered. The decisions live in `tollgate_core::transform`; this crate maps them to
//! hostcalls.

mod http;
mod root;

pub use http::TransformHttp;
pub use root::{Filter, TransformRoot};

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    tollgate_host::install_panic_hook();
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::new(TransformRoot::new(std::rc::Rc::new(tollgate_host::EnvoyHost)))
    });
}}

#[cfg(test)]
mod tests;
