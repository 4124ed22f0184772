//! request-signing filter (being written).
