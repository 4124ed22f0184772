//! transform decisions (being written).
