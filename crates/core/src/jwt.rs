//! JWT and OAuth 2.0 token checks (being written).
