//! Byte-level encoding shared by the operation log, the checkpoint files and the
//! session protocol: little-endian integers, length-prefixed byte strings, and
//! checksummed frames (`len u32 | crc32c u32 | payload`).
//!
//! Owns bounds checking of every read: a short or oversized input is a typed
//! [`CodecError`], never a panic. It must not do I/O.

use thiserror::Error;

/// Largest frame payload anything of the embedded RM writes or accepts (16 MiB).
pub const FRAME_BYTES_MAX: usize = 16 << 20;

/// A malformed encoding.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CodecError {
    /// The input ended inside a value.
    #[error("truncated: needed {needed} more byte(s) at offset {at}")]
    Truncated {
        /// Offset inside the payload.
        at: usize,
        /// Bytes missing.
        needed: usize,
    },
    /// A value is not valid (bad tag, bad UTF-8, length over the limit).
    #[error("invalid {what} at offset {at}")]
    Invalid {
        /// What was being read.
        what: &'static str,
        /// Offset inside the payload.
        at: usize,
    },
}

/// Appends values to a byte vector.
#[derive(Default)]
pub struct Writer {
    /// The bytes written so far.
    pub buf: Vec<u8>,
}

impl Writer {
    /// An empty writer.
    pub fn new() -> Writer {
        Writer::default()
    }
    /// One byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }
    /// A little-endian u16.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// A little-endian u32.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// A little-endian u64.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// A byte string with a u32 length prefix.
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.u32(v.len() as u32);
        self.buf.extend_from_slice(v);
        self
    }
    /// A UTF-8 string with a u32 length prefix.
    pub fn str(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }
}

/// Reads values from a byte slice.
pub struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, at: 0 }
    }
    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.at
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.remaining() < n {
            return Err(CodecError::Truncated {
                at: self.at,
                needed: n - self.remaining(),
            });
        }
        let s = &self.buf[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
    /// One byte.
    pub fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }
    /// A little-endian u16.
    pub fn u16(&mut self) -> Result<u16, CodecError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    /// A little-endian u32.
    pub fn u32(&mut self) -> Result<u32, CodecError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// A little-endian u64.
    pub fn u64(&mut self) -> Result<u64, CodecError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    /// A length-prefixed byte string.
    pub fn bytes(&mut self) -> Result<Vec<u8>, CodecError> {
        let at = self.at;
        let n = self.u32()? as usize;
        if n > FRAME_BYTES_MAX {
            return Err(CodecError::Invalid { what: "length", at });
        }
        Ok(self.take(n)?.to_vec())
    }
    /// A length-prefixed UTF-8 string.
    pub fn str(&mut self) -> Result<String, CodecError> {
        let at = self.at;
        String::from_utf8(self.bytes()?).map_err(|_| CodecError::Invalid {
            what: "UTF-8 text",
            at,
        })
    }
}

/// The frame checksum: crc32c over the length field and the payload, so that a
/// damaged length is caught too (and eight zero bytes are never a valid frame).
fn frame_crc(len: [u8; 4], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&len), payload)
}

/// `payload` (never empty) as a checksummed frame: `len u32 | crc32c(len, payload)
/// u32 | payload`.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_le_bytes();
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(&len);
    out.extend_from_slice(&frame_crc(len, payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// True when a valid frame starts at some offset after `at` (used to tell a torn
/// tail, after which nothing valid follows, from damage in the middle).
pub fn valid_frame_after(data: &[u8], at: usize) -> bool {
    (at + 1..data.len()).any(|i| matches!(next_frame(data, i), FrameAt::Frame(..)))
}

/// What [`next_frame`] found at an offset.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameAt<'a> {
    /// A whole, valid frame and the offset after it.
    Frame(&'a [u8], usize),
    /// The end of the data.
    End,
    /// Fewer bytes than a frame needs: a torn write at the tail.
    Torn,
    /// A frame whose length or checksum is wrong.
    Bad(&'static str),
}

/// Reads the frame at `at` in `data`.
pub fn next_frame(data: &[u8], at: usize) -> FrameAt<'_> {
    if at == data.len() {
        return FrameAt::End;
    }
    if data.len() - at < 8 {
        return FrameAt::Torn;
    }
    let len = u32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]) as usize;
    let crc = u32::from_le_bytes([data[at + 4], data[at + 5], data[at + 6], data[at + 7]]);
    if len == 0 {
        return FrameAt::Bad("empty frame");
    }
    if len > FRAME_BYTES_MAX {
        return FrameAt::Bad("frame length over the limit");
    }
    if data.len() - at - 8 < len {
        return FrameAt::Torn;
    }
    let payload = &data[at + 8..at + 8 + len];
    let lenb = [data[at], data[at + 1], data[at + 2], data[at + 3]];
    if frame_crc(lenb, payload) != crc {
        return FrameAt::Bad("checksum mismatch");
    }
    FrameAt::Frame(payload, at + 8 + len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn frames_round_trip_and_any_cut_is_torn(payload in proptest::collection::vec(any::<u8>(), 1..200), cut in 0usize..208) {
            let f = frame(&payload);
            prop_assert_eq!(next_frame(&f, 0), FrameAt::Frame(&payload[..], f.len()));
            let cut = cut.min(f.len());
            if cut < f.len() {
                prop_assert_eq!(next_frame(&f[..cut], 0), if cut == 0 { FrameAt::End } else { FrameAt::Torn });
            }
        }

        #[test]
        fn a_flipped_bit_is_never_read_as_a_frame(payload in proptest::collection::vec(any::<u8>(), 1..100), bit in 0usize..800) {
            let mut f = frame(&payload);
            let bit = bit % (f.len() * 8);
            f[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(!matches!(next_frame(&f, 0), FrameAt::Frame(..)));
        }

        #[test]
        fn reader_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut r = Reader::new(&data);
            let _ = r.str();
            let _ = r.u64();
            let _ = r.bytes();
        }
    }

    #[test]
    fn zeros_are_never_a_frame() {
        assert_eq!(next_frame(&[0u8; 64], 0), FrameAt::Bad("empty frame"));
        assert!(!valid_frame_after(&[0u8; 64], 0));
    }
}
