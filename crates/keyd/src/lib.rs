//! Key service.
