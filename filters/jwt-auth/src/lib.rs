//! jwt-auth filter (being written).
