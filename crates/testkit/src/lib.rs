//! Helpers shared by Tollgate's tests (core, filters, end to end) and the benchmark.
//!
//! - [`jwt`]: mint HS256, ES256, RS256 and EdDSA tokens from claims with a given key and `kid`,
//!   and the JWK that verifies them.

pub mod jwt;
