//! Tollgate key service: API keys, consumers, rotation, revocation, an audit log and a change
//! feed over gRPC, stored in SQLite, or in PostgreSQL for several replicas.
//!
//! Secrets are stored only as HMAC-SHA256(pepper, SHA-256(key)); the pepper lives in a file
//! outside the database. Admin RPCs and data-plane RPCs take separate bearer tokens.

pub mod auth;
pub mod clock;
pub mod convert;
pub mod dashboard;
pub mod error;
pub mod feed;
pub mod files;
pub mod lifecycle;
pub mod master;
pub mod metrics;
pub mod model;
pub mod secrets;
pub mod server;
pub mod service;
pub mod store;
pub mod validate;
pub mod webhooks;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{Error, Result};
pub use server::{Config, Options, serve, serve_all, serve_with_metrics};
pub use store::{PostgresStore, SqliteStore, Store, StoreLocation};
