//! Framing: every message is one frame.
//!
//! ```text
//! offset  size  field
//! 0       4     magic  b"NSTY"
//! 4       4     header length H, u32 big-endian (1 ≤ H ≤ limits.max_header)
//! 8       8     payload length P, u64 big-endian (0 ≤ P ≤ limits.max_payload)
//! 16      H     header: a UTF-8 JSON object with a "type" field
//! 16+H    P     payload: raw bytes (pixels, encoded images), sliced by the header
//! ```

use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The four bytes every frame starts with.
pub const MAGIC: [u8; 4] = *b"NSTY";
/// Bytes before the header.
pub const PREFIX_LEN: usize = 16;

/// Hard caps on frame sizes; a peer that exceeds them is cut off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_header: u32,
    pub max_payload: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_header: 1 << 20, max_payload: 1 << 30 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection error: {0}")]
    Io(#[from] io::Error),
    #[error("the connection closed in the middle of a frame")]
    Truncated,
    #[error("not a neural-style frame (bad magic {0:02x?}); is this the neural-style socket?")]
    BadMagic([u8; 4]),
    #[error("frame header of {0} bytes is empty or larger than the limit of {1} bytes")]
    HeaderSize(u32, u32),
    #[error("frame payload of {0} bytes exceeds the limit of {1} bytes")]
    PayloadTooLarge(u64, u64),
    #[error("frame header is not UTF-8")]
    NotUtf8,
    #[error("bad message: {0}")]
    BadMessage(String),
}

impl FrameError {
    /// Whether the stream is still at a frame boundary after this error (the peer may go on).
    pub fn recoverable(&self) -> bool {
        matches!(self, FrameError::NotUtf8 | FrameError::BadMessage(_))
    }
}

/// A frame as read from the wire: the header's raw bytes and the payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawFrame {
    pub header: Vec<u8>,
    pub payload: Vec<u8>,
}

impl RawFrame {
    /// Parses the header as a message of type `T`.
    pub fn message<T: DeserializeOwned>(&self) -> Result<T, FrameError> {
        let text = std::str::from_utf8(&self.header).map_err(|_| FrameError::NotUtf8)?;
        serde_json::from_str(text).map_err(|e| FrameError::BadMessage(e.to_string()))
    }
}

/// Encodes a message and payload as one frame.
pub fn encode<T: Serialize>(message: &T, payload: &[u8]) -> Vec<u8> {
    let header = serde_json::to_vec(message).expect("messages serialise");
    let mut out = Vec::with_capacity(PREFIX_LEN + header.len() + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&(header.len() as u32).to_be_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
    out
}

/// Writes one frame.
pub fn write<T: Serialize, W: Write>(w: &mut W, message: &T, payload: &[u8]) -> io::Result<()> {
    w.write_all(&encode(message, payload))?;
    w.flush()
}

fn read_exact_or_eof<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<bool, FrameError> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err(FrameError::Truncated),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

/// Reads one frame; `Ok(None)` on a clean end of stream between frames. The payload buffer is
/// only allocated after the lengths are checked against `limits`.
pub fn read<R: Read>(r: &mut R, limits: &Limits) -> Result<Option<RawFrame>, FrameError> {
    let mut prefix = [0u8; PREFIX_LEN];
    if !read_exact_or_eof(r, &mut prefix)? {
        return Ok(None);
    }
    let magic: [u8; 4] = prefix[0..4].try_into().expect("4 bytes");
    if magic != MAGIC {
        return Err(FrameError::BadMagic(magic));
    }
    let h = u32::from_be_bytes(prefix[4..8].try_into().expect("4 bytes"));
    let p = u64::from_be_bytes(prefix[8..16].try_into().expect("8 bytes"));
    if h == 0 || h > limits.max_header {
        return Err(FrameError::HeaderSize(h, limits.max_header));
    }
    if p > limits.max_payload {
        return Err(FrameError::PayloadTooLarge(p, limits.max_payload));
    }
    let mut header = vec![0u8; h as usize];
    if !read_exact_or_eof(r, &mut header)? {
        return Err(FrameError::Truncated);
    }
    let mut payload = vec![0u8; p as usize];
    if p > 0 && !read_exact_or_eof(r, &mut payload)? {
        return Err(FrameError::Truncated);
    }
    Ok(Some(RawFrame { header, payload }))
}

/// Decodes a frame held entirely in memory (the fuzz target's entry point). Returns the frame
/// and the number of bytes it used.
pub fn decode(bytes: &[u8], limits: &Limits) -> Result<(RawFrame, usize), FrameError> {
    let mut cursor = io::Cursor::new(bytes);
    let frame = read(&mut cursor, limits)?.ok_or(FrameError::Truncated)?;
    Ok((frame, cursor.position() as usize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trip_and_limits() {
        let bytes = encode(&json!({"type": "status"}), b"abc");
        let (f, used) = decode(&bytes, &Limits::default()).unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(f.payload, b"abc");
        let v: serde_json::Value = f.message().unwrap();
        assert_eq!(v["type"], "status");
        // truncated anywhere
        for cut in 1..bytes.len() {
            assert!(matches!(decode(&bytes[..cut], &Limits::default()), Err(FrameError::Truncated)), "cut {cut}");
        }
        // empty stream: clean EOF
        assert!(read(&mut io::Cursor::new(&[] as &[u8]), &Limits::default()).unwrap().is_none());
        // limits
        let small = Limits { max_header: 4, max_payload: 2 };
        assert!(matches!(decode(&bytes, &small), Err(FrameError::HeaderSize(..))));
        let small = Limits { max_header: 100, max_payload: 2 };
        assert!(matches!(decode(&bytes, &small), Err(FrameError::PayloadTooLarge(3, 2))));
        // huge declared payload is refused without allocating it
        let mut huge = bytes.clone();
        huge[8..16].copy_from_slice(&u64::MAX.to_be_bytes());
        assert!(matches!(decode(&huge, &Limits::default()), Err(FrameError::PayloadTooLarge(..))));
        // bad magic
        let mut bad = bytes.clone();
        bad[0] = b'X';
        assert!(matches!(decode(&bad, &Limits::default()), Err(FrameError::BadMagic(_))));
    }
}
