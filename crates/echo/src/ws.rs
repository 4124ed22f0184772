//! WebSocket (RFC 6455), just enough for an echo server and a test client: the handshake's
//! accept key, and unfragmented frames read and written whole.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha1::{Digest as _, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// Appended to the client's key before hashing (RFC 6455 §1.3).
pub const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Opcode of a text frame.
pub const TEXT: u8 = 0x1;
/// Opcode of a binary frame.
pub const BINARY: u8 = 0x2;
/// Opcode of a close frame.
pub const CLOSE: u8 = 0x8;

/// Largest payload [`read_frame`] reads; longer frames are cut to this.
pub const MAX_PAYLOAD: u64 = 1 << 20;

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let digest = Sha1::new().chain_update(key.as_bytes()).chain_update(GUID.as_bytes()).finalize();
    STANDARD.encode(digest)
}

/// Reads one frame; returns `(opcode, unmasked payload)`.
pub async fn read_frame<R: AsyncRead + Unpin>(io: &mut R) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    io.read_exact(&mut head).await?;
    let opcode = head[0] & 0x0f;
    let masked = head[1] & 0x80 != 0;
    let mut len = u64::from(head[1] & 0x7f);
    if len == 126 {
        let mut ext = [0u8; 2];
        io.read_exact(&mut ext).await?;
        len = u64::from(u16::from_be_bytes(ext));
    } else if len == 127 {
        let mut ext = [0u8; 8];
        io.read_exact(&mut ext).await?;
        len = u64::from_be_bytes(ext);
    }
    let mut mask = [0u8; 4];
    if masked {
        io.read_exact(&mut mask).await?;
    }
    let mut payload = vec![0u8; usize::try_from(len.min(MAX_PAYLOAD)).unwrap_or(0)];
    io.read_exact(&mut payload).await?;
    if masked {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    Ok((opcode, payload))
}

/// Writes one final frame; clients must mask (`masked = true`), servers must not.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    io: &mut W,
    opcode: u8,
    payload: &[u8],
    masked: bool,
) -> std::io::Result<()> {
    let mut frame = vec![0x80 | opcode];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => frame.push(mask_bit | u8::try_from(n).unwrap_or(0)),
        n if n <= 0xffff => {
            frame.push(mask_bit | 126);
            frame.extend_from_slice(&u16::try_from(n).unwrap_or(0).to_be_bytes());
        }
        n => {
            frame.push(mask_bit | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let mask = mask_key();
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        frame.extend_from_slice(payload);
    }
    io.write_all(&frame).await?;
    io.flush().await
}

/// A masking key that changes from frame to frame (masking is no secret; RFC 6455 §5.3 asks
/// only that a proxy cannot predict it, which does not matter on loopback).
fn mask_key() -> [u8; 4] {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos());
    nanos.unwrap_or(0x5a5a_5a5a).to_be_bytes()
}

/// Echoes every text or binary message on `io` until the peer closes (answering its close).
pub(crate) async fn echo_messages<S: AsyncRead + AsyncWrite + Unpin>(mut io: S) {
    while let Ok((opcode, payload)) = read_frame(&mut io).await {
        match opcode {
            CLOSE => {
                let _ = write_frame(&mut io, CLOSE, &payload, false).await;
                return;
            }
            TEXT | BINARY if write_frame(&mut io, opcode, &payload, false).await.is_err() => return,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn websocket_accept_matches_rfc_6455_example() {
        assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[tokio::test]
    async fn frames_round_trip_masked_and_unmasked_at_every_length_encoding() {
        for len in [0usize, 125, 126, 65_535, 65_536] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            for masked in [false, true] {
                let mut wire = Vec::new();
                write_frame(&mut wire, BINARY, &payload, masked).await.unwrap();
                assert_eq!(wire[1] & 0x80 != 0, masked, "mask bit, {len} bytes");
                let (opcode, read) = read_frame(&mut wire.as_slice()).await.unwrap();
                assert_eq!((opcode, read.len()), (BINARY, len));
                assert!(read == payload, "payload of {len} bytes, masked {masked}");
            }
        }
    }
}
