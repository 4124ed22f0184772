//! Host-independent logic shared by the Tollgate filters, the key service and the CLI.
//!
//! Nothing here talks to Envoy or the network: decisions are plain functions over plain data
//! with the clock passed in, so they are tested natively.

pub mod cache;
pub mod config;
pub mod credentials;
pub mod duration;
pub mod error;
pub mod feed;
pub mod identity;
pub mod jwt;
pub mod key;
pub mod key_auth;
pub mod local;
pub mod rate_limit;
pub mod route;
pub mod secret;
pub mod signature;
pub mod transform;
