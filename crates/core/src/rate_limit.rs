//! rate-limit decisions (being written).
