//! RFC 9421 request signing (being written).
