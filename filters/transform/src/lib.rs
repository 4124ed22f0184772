//! transform filter (being written).
