//! What crosses the proxy-wasm ABI as bytes and numbers: the host's status codes, header-map
//! pairs and property paths. Plain safe code, compiled (and tested) on every target; the imports
//! that use it live in the wasm-only `abi` module.

/// Why a host call failed: a status other than `Ok` (the proxy-wasm status codes), or an `Ok`
/// answer whose data does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostError {
    NotFound,
    BadArgument,
    SerializationFailure,
    ParseFailure,
    BadExpression,
    InvalidMemoryAccess,
    Empty,
    CasMismatch,
    ResultMismatch,
    InternalFailure,
    BrokenConnection,
    Unimplemented,
    /// A status code the ABI does not define.
    Unknown(u32),
    /// The host answered `Ok`, but what it handed back does not decode.
    Malformed,
}

impl HostError {
    /// A status code as the host returned it: `Ok` (0) is `Ok(())`, anything else an error.
    /// Every `u32` maps to something; nothing here can fail.
    pub fn check(code: u32) -> Result<(), HostError> {
        Err(match code {
            0 => return Ok(()),
            1 => Self::NotFound,
            2 => Self::BadArgument,
            3 => Self::SerializationFailure,
            4 => Self::ParseFailure,
            5 => Self::BadExpression,
            6 => Self::InvalidMemoryAccess,
            7 => Self::Empty,
            8 => Self::CasMismatch,
            9 => Self::ResultMismatch,
            10 => Self::InternalFailure,
            11 => Self::BrokenConnection,
            12 => Self::Unimplemented,
            other => Self::Unknown(other),
        })
    }
}

impl std::fmt::Display for HostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unknown(code) => write!(f, "unknown status {code}"),
            Self::Malformed => f.write_str("malformed answer"),
            other => write!(f, "{other:?}"),
        }
    }
}

impl std::error::Error for HostError {}

/// Field lines of a header map, in order: `(name, value)` as bytes.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Most pairs a proxy-wasm host reads from one serialized map; past this it reads none.
pub const MAX_PAIRS: usize = 1024;
/// Largest serialized map a proxy-wasm host reads; past this it reads none.
pub const MAX_PAIRS_BYTES: usize = 1024 * 1024;

/// Why a map cannot be serialized for the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    /// More than [`MAX_PAIRS`] pairs, or more than [`MAX_PAIRS_BYTES`] bytes: the host would
    /// silently take none of them.
    TooLarge,
}

/// Serializes pairs the way the host reads them: the number of pairs (u32, little-endian), then
/// each pair's key and value lengths (u32 each), then each key and value followed by a NUL.
pub fn encode_pairs(pairs: &[(&[u8], &[u8])]) -> Result<Vec<u8>, EncodeError> {
    if pairs.len() > MAX_PAIRS {
        return Err(EncodeError::TooLarge);
    }
    let mut size: usize = 4;
    for (key, value) in pairs {
        size = size
            .checked_add(8)
            .and_then(|s| s.checked_add(key.len()))
            .and_then(|s| s.checked_add(value.len()))
            .and_then(|s| s.checked_add(2))
            .filter(|&s| s <= MAX_PAIRS_BYTES)
            .ok_or(EncodeError::TooLarge)?;
    }
    // Every length is below MAX_PAIRS_BYTES, so each fits in a u32.
    let len32 = |n: usize| u32::try_from(n).map(u32::to_le_bytes).map_err(|_| EncodeError::TooLarge);
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&len32(pairs.len())?);
    for (key, value) in pairs {
        out.extend_from_slice(&len32(key.len())?);
        out.extend_from_slice(&len32(value.len())?);
    }
    for (key, value) in pairs {
        out.extend_from_slice(key);
        out.push(0);
        out.extend_from_slice(value);
        out.push(0);
    }
    Ok(out)
}

/// Reads pairs serialized as [`encode_pairs`] writes them. An empty buffer is no pairs (the host
/// hands back nothing for an empty map). Anything else must be exactly one well-formed map:
/// a count the buffer can hold, lengths that stay inside it, a NUL after every key and value,
/// and no bytes left over. A malformed buffer is an error, never a partial answer.
pub fn decode_pairs(bytes: &[u8]) -> Result<Pairs, HostError> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let mut reader = Reader(bytes);
    let count = reader.u32()?;
    // Each pair needs at least its two lengths and two NULs: a count the buffer cannot hold is
    // refused before anything is allocated for it.
    if count > reader.0.len() / 10 {
        return Err(HostError::Malformed);
    }
    let mut sizes = Vec::with_capacity(count);
    for _ in 0..count {
        sizes.push((reader.u32()?, reader.u32()?));
    }
    let mut pairs = Vec::with_capacity(count);
    for (key_len, value_len) in sizes {
        let key = reader.terminated(key_len)?;
        let value = reader.terminated(value_len)?;
        pairs.push((key.to_vec(), value.to_vec()));
    }
    if reader.0.is_empty() { Ok(pairs) } else { Err(HostError::Malformed) }
}

/// A bounds-checked cursor over a serialized map.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], HostError> {
        if n > self.0.len() {
            return Err(HostError::Malformed);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    /// A little-endian u32, as a length.
    fn u32(&mut self) -> Result<usize, HostError> {
        let raw: [u8; 4] = self.take(4)?.try_into().map_err(|_| HostError::Malformed)?;
        usize::try_from(u32::from_le_bytes(raw)).map_err(|_| HostError::Malformed)
    }

    /// `len` bytes followed by a NUL (which is consumed, not returned).
    fn terminated(&mut self, len: usize) -> Result<&'a [u8], HostError> {
        let field = self.take(len)?;
        match self.take(1)? {
            [0] => Ok(field),
            _ => Err(HostError::Malformed),
        }
    }
}

/// A property path as the host reads it: the segments joined by NUL.
pub fn encode_path(path: &[&str]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.iter().map(|p| p.len() + 1).sum());
    for (i, part) in path.iter().enumerate() {
        if i > 0 {
            out.push(0);
        }
        out.extend_from_slice(part.as_bytes());
    }
    out
}

/// Whether `bytes` decode as a protobuf message (any message: every field skipped as unknown).
///
/// Envoy's gRPC call first tries to read its cluster argument as a serialized `GrpcService`;
/// only when that fails is it a cluster name. A name that happens to decode is taken for a
/// service config instead (one without a target stops Envoy itself), so such a name is refused
/// before the call. A real cluster name (`tollgate_keyd`) does not decode.
pub fn decodes_as_protobuf(bytes: &[u8]) -> bool {
    <() as prost::Message>::decode(bytes).is_ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    /// The SDK's own serialized map (four pairs), byte for byte.
    #[rustfmt::skip]
    const SERIALIZED: &[u8] = &[
        4, 0, 0, 0,
        7, 0, 0, 0, 3, 0, 0, 0,
        5, 0, 0, 0, 8, 0, 0, 0,
        10, 0, 0, 0, 11, 0, 0, 0,
        10, 0, 0, 0, 10, 0, 0, 0,
        b':', b'm', b'e', b't', b'h', b'o', b'd', 0, b'G', b'E', b'T', 0,
        b':', b'p', b'a', b't', b'h', 0, b'/', b'b', b'y', b't', b'e', b's', b'/', b'1', 0,
        b':', b'a', b'u', b't', b'h', b'o', b'r', b'i', b't', b'y', 0,
        b'h', b't', b't', b'p', b'b', b'i', b'n', b'.', b'o', b'r', b'g', 0,
        b'P', b'o', b'w', b'e', b'r', b'e', b'd', b'-', b'B', b'y', 0,
        b'p', b'r', b'o', b'x', b'y', b'-', b'w', b'a', b's', b'm', 0,
    ];

    fn pairs() -> Vec<(&'static [u8], &'static [u8])> {
        vec![
            (b":method", b"GET"),
            (b":path", b"/bytes/1"),
            (b":authority", b"httpbin.org"),
            (b"Powered-By", b"proxy-wasm"),
        ]
    }

    fn owned(pairs: &[(&[u8], &[u8])]) -> Pairs {
        pairs.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect()
    }

    #[test]
    fn every_status_code_maps_to_a_result() {
        assert_eq!(HostError::check(0), Ok(()));
        assert_eq!(HostError::check(1), Err(HostError::NotFound));
        assert_eq!(HostError::check(2), Err(HostError::BadArgument));
        assert_eq!(HostError::check(8), Err(HostError::CasMismatch));
        assert_eq!(HostError::check(10), Err(HostError::InternalFailure));
        assert_eq!(HostError::check(12), Err(HostError::Unimplemented));
        assert_eq!(HostError::check(13), Err(HostError::Unknown(13)));
        assert_eq!(HostError::check(u32::MAX), Err(HostError::Unknown(u32::MAX)));
        for code in 1..=12 {
            assert!(!matches!(HostError::check(code), Ok(()) | Err(HostError::Unknown(_))), "{code}");
        }
    }

    #[test]
    fn pairs_encode_as_the_sdk_does_and_decode_back() {
        assert_eq!(encode_pairs(&pairs()).unwrap(), SERIALIZED);
        assert_eq!(decode_pairs(SERIALIZED).unwrap(), owned(&pairs()));
    }

    #[test]
    fn empty_maps_both_ways() {
        assert_eq!(encode_pairs(&[]).unwrap(), [0, 0, 0, 0]);
        assert_eq!(decode_pairs(&[]).unwrap(), Vec::new());
        assert_eq!(decode_pairs(&[0, 0, 0, 0]).unwrap(), Vec::new());
    }

    #[test]
    fn any_byte_survives_in_keys_and_values_except_the_structure() {
        let odd: Vec<(&[u8], &[u8])> =
            vec![(b"", b""), (&[0xff, 0xfe], &[0x80, b' ', 0x7f]), (b"k", &[0u8; 0])];
        let bytes = encode_pairs(&odd).unwrap();
        assert_eq!(decode_pairs(&bytes).unwrap(), owned(&odd));
        // A NUL inside a value is kept: lengths, not NULs, delimit fields.
        let with_nul: Vec<(&[u8], &[u8])> = vec![(b"k", b"a\0b")];
        assert_eq!(decode_pairs(&encode_pairs(&with_nul).unwrap()).unwrap(), owned(&with_nul));
    }

    #[test]
    fn every_truncation_of_a_map_is_refused() {
        for len in 1..SERIALIZED.len() {
            assert_eq!(decode_pairs(&SERIALIZED[..len]), Err(HostError::Malformed), "cut at {len}");
        }
    }

    #[test]
    fn bytes_after_the_last_pair_are_refused() {
        let mut long = SERIALIZED.to_vec();
        long.push(0);
        assert_eq!(decode_pairs(&long), Err(HostError::Malformed));
    }

    #[test]
    fn a_missing_terminator_is_refused() {
        // One pair, key "a" (terminator replaced), value "b".
        let bytes = [1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, b'a', b'x', b'b', 0];
        assert_eq!(decode_pairs(&bytes), Err(HostError::Malformed));
        let bytes = [1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, b'a', 0, b'b', b'x'];
        assert_eq!(decode_pairs(&bytes), Err(HostError::Malformed));
    }

    #[test]
    fn lengths_past_the_end_are_refused_without_overflow() {
        for (key_len, value_len) in [(u32::MAX, 1), (1, u32::MAX), (u32::MAX, u32::MAX), (100, 0)] {
            let mut bytes = vec![1, 0, 0, 0];
            bytes.extend_from_slice(&key_len.to_le_bytes());
            bytes.extend_from_slice(&value_len.to_le_bytes());
            bytes.extend_from_slice(b"a\0b\0");
            assert_eq!(decode_pairs(&bytes), Err(HostError::Malformed), "{key_len} {value_len}");
        }
    }

    #[test]
    fn a_count_the_buffer_cannot_hold_is_refused_before_allocating() {
        for count in [2u32, 1000, u32::MAX] {
            let mut bytes = count.to_le_bytes().to_vec();
            bytes.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            assert_eq!(decode_pairs(&bytes), Err(HostError::Malformed), "{count}");
        }
        // Exactly enough for one empty pair is fine.
        assert_eq!(decode_pairs(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap(), owned(&[(b"", b"")]));
    }

    #[test]
    fn every_single_byte_corruption_is_an_answer_or_an_error_never_a_panic() {
        for i in 0..SERIALIZED.len() {
            for byte in [0u8, 1, 0x7f, 0x80, 0xff] {
                let mut bytes = SERIALIZED.to_vec();
                bytes[i] = byte;
                let _ = decode_pairs(&bytes);
            }
        }
    }

    #[test]
    fn maps_the_host_would_drop_are_refused() {
        let pair: (&[u8], &[u8]) = (b"k", b"v");
        assert!(encode_pairs(&vec![pair; MAX_PAIRS]).is_ok());
        assert_eq!(encode_pairs(&vec![pair; MAX_PAIRS + 1]), Err(EncodeError::TooLarge));
        let big = vec![b'x'; MAX_PAIRS_BYTES];
        assert_eq!(encode_pairs(&[(b"k", &big)]), Err(EncodeError::TooLarge));
        let fits = vec![b'x'; MAX_PAIRS_BYTES - 4 - 8 - 2 - 1];
        assert_eq!(encode_pairs(&[(b"k", &fits)]).unwrap().len(), MAX_PAIRS_BYTES);
    }

    #[test]
    fn paths_join_with_nul() {
        assert_eq!(encode_path(&[]), b"");
        assert_eq!(encode_path(&["xds", "route_name"]), b"xds\0route_name");
        assert_eq!(encode_path(&["tollgate.identity"]), b"tollgate.identity");
    }

    #[test]
    fn cluster_names_that_envoy_would_read_as_a_service_config_are_spotted() {
        for name in
            ["tollgate_keyd", "keyd", "upstream", "outbound|8080||keyd.default.svc", "no_such_cluster"]
        {
            assert!(!decodes_as_protobuf(name.as_bytes()), "{name}");
        }
        // Empty, or a varint field: both decode (and Envoy would take them for a config).
        for name in ["", "0a", "\u{8}\u{1}"] {
            assert!(decodes_as_protobuf(name.as_bytes()), "{name:?}");
        }
    }
}
