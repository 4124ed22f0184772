//! Helpers shared by Tollgate's tests (core, filters, key service, end to end) and the benchmark.
//!
//! - [`jwt`] (feature `jwt`, on by default): mint HS256, ES256, RS256 and EdDSA tokens from claims
//!   with a given key and `kid`, and the JWK that verifies them.
//! - [`postgres`]: a private PostgreSQL cluster in a temporary folder on a free port.

#[cfg(feature = "jwt")]
pub mod jwt;
pub mod postgres;
