//! RFC 9421 signature bases and RFC 9530 digests (being written).
