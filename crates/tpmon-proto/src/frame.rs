//! Length-prefixed framing for stream sockets (client TCP, admin socket, node links).
//!
//! A frame is a big-endian u32 body length followed by the body. The decoder enforces a
//! maximum body length before it buffers anything, so a peer announcing a huge frame is
//! refused at once instead of being allowed to make the reader allocate.

use thiserror::Error;

/// Bytes of the length prefix.
pub const FRAME_HEADER_BYTES: usize = 4;

/// A framing violation by the peer.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// The announced body is larger than allowed.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// Allowed maximum.
        max: usize,
    },
    /// A zero-length frame (never sent by tpmon peers).
    #[error("empty frame")]
    Empty,
}

/// Prefixes `body` with its length.
pub fn encode_frame(body: &[u8], out: &mut Vec<u8>) {
    out.reserve(FRAME_HEADER_BYTES + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
}

/// Incremental frame splitter: feed bytes, take whole frame bodies out.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    max: usize,
}

impl FrameDecoder {
    /// A decoder that refuses bodies longer than `max` bytes.
    pub fn new(max: usize) -> Self {
        FrameDecoder {
            buf: Vec::new(),
            max,
        }
    }
    /// Changes the limit (e.g. raised after authentication).
    pub fn set_max(&mut self, max: usize) {
        self.max = max;
    }
    /// Appends received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }
    /// Bytes buffered but not yet returned.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
    /// The next whole frame body, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        if self.buf.len() < FRAME_HEADER_BYTES {
            return Ok(None);
        }
        let mut len_bytes = [0u8; 4];
        len_bytes.copy_from_slice(&self.buf[..4]);
        let len = u32::from_be_bytes(len_bytes) as usize;
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if len > self.max {
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        if self.buf.len() < FRAME_HEADER_BYTES + len {
            return Ok(None);
        }
        let body = self.buf[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + len].to_vec();
        self.buf.drain(..FRAME_HEADER_BYTES + len);
        Ok(Some(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_frames_fed_byte_by_byte() {
        let mut wire = Vec::new();
        encode_frame(b"hello", &mut wire);
        encode_frame(b"w", &mut wire);
        let mut d = FrameDecoder::new(100);
        let mut got = Vec::new();
        for b in wire {
            d.extend(&[b]);
            while let Some(f) = d.next_frame().expect("valid frames") {
                got.push(f);
            }
        }
        assert_eq!(got, vec![b"hello".to_vec(), b"w".to_vec()]);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn refuses_oversized_before_buffering_body() {
        let mut d = FrameDecoder::new(16);
        d.extend(&1_000_000u32.to_be_bytes());
        assert_eq!(
            d.next_frame(),
            Err(FrameError::TooLarge {
                len: 1_000_000,
                max: 16
            })
        );
        let mut d = FrameDecoder::new(16);
        d.extend(&0u32.to_be_bytes());
        assert_eq!(d.next_frame(), Err(FrameError::Empty));
    }
}
