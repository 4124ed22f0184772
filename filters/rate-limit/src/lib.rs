//! rate-limit filter (being written).
