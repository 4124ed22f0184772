//! key-auth.
