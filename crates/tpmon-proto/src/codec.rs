//! Primitive big-endian encoders and bounds-checked decoders.
//!
//! Owns the encoding of integers, strings and byte strings. Every read checks the
//! remaining input first, so a hostile length field can never cause a large allocation
//! or an out-of-bounds read: the decoder fails with the offset of the bad field.

use thiserror::Error;

/// A message could not be decoded; `offset` is the byte position of the bad field.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("malformed message at byte {offset}: {what}")]
pub struct DecodeError {
    /// Byte offset into the message body.
    pub offset: usize,
    /// What was wrong there.
    pub what: String,
}

/// Appends big-endian fields to a byte vector.
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// A writer with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        Writer {
            buf: Vec::with_capacity(capacity),
        }
    }
    /// One byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }
    /// A big-endian u16.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    /// A big-endian u32.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    /// A big-endian u64.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    /// A big-endian i32.
    pub fn i32(&mut self, v: i32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    /// A big-endian i64.
    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    /// A boolean as one byte, 0 or 1.
    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.u8(u8::from(v))
    }
    /// A short string: u16 length then the bytes. Longer input is truncated to 65535
    /// bytes; callers validate names before they get here.
    pub fn str16(&mut self, v: &str) -> &mut Self {
        self.bytes16(v.as_bytes())
    }
    /// Short bytes: u16 length then the bytes (truncated to 65535).
    pub fn bytes16(&mut self, v: &[u8]) -> &mut Self {
        let n = v.len().min(u16::MAX as usize);
        self.u16(n as u16);
        self.buf.extend_from_slice(&v[..n]);
        self
    }
    /// Long bytes: u32 length then the bytes.
    pub fn bytes32(&mut self, v: &[u8]) -> &mut Self {
        let n = v.len().min(u32::MAX as usize);
        self.u32(n as u32);
        self.buf.extend_from_slice(&v[..n]);
        self
    }
    /// Raw bytes without a length.
    pub fn raw(&mut self, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(v);
        self
    }
    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }
    /// True when nothing was written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    /// A mutable view, for patching a length written earlier.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buf
    }
    /// The encoded bytes.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads big-endian fields from a byte slice, tracking the offset for error messages.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader over `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }
    /// Current offset.
    pub fn offset(&self) -> usize {
        self.pos
    }
    /// Bytes left.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    /// An error at the current offset.
    pub fn error(&self, what: impl Into<String>) -> DecodeError {
        DecodeError {
            offset: self.pos,
            what: what.into(),
        }
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(self.error(format!(
                "truncated {what}: need {n} bytes, {} left",
                self.remaining()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], DecodeError> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    /// One byte.
    pub fn u8(&mut self, what: &str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }
    /// A big-endian u16.
    pub fn u16(&mut self, what: &str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }
    /// A big-endian u32.
    pub fn u32(&mut self, what: &str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }
    /// A big-endian u64.
    pub fn u64(&mut self, what: &str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }
    /// A big-endian i32.
    pub fn i32(&mut self, what: &str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(what)?))
    }
    /// A big-endian i64.
    pub fn i64(&mut self, what: &str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(what)?))
    }
    /// A boolean byte; anything but 0 or 1 is an error.
    pub fn bool(&mut self, what: &str) -> Result<bool, DecodeError> {
        let at = self.pos;
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(DecodeError {
                offset: at,
                what: format!("{what}: {v} is not a boolean"),
            }),
        }
    }
    /// Short bytes (u16 length).
    pub fn bytes16(&mut self, what: &str) -> Result<&'a [u8], DecodeError> {
        let n = self.u16(what)? as usize;
        self.take(n, what)
    }
    /// Long bytes (u32 length), refused above `max`.
    pub fn bytes32(&mut self, what: &str, max: usize) -> Result<&'a [u8], DecodeError> {
        let at = self.pos;
        let n = self.u32(what)? as usize;
        if n > max {
            return Err(DecodeError {
                offset: at,
                what: format!("{what}: length {n} exceeds the limit of {max}"),
            });
        }
        self.take(n, what)
    }
    /// A short UTF-8 string.
    pub fn str16(&mut self, what: &str) -> Result<String, DecodeError> {
        let at = self.pos;
        let b = self.bytes16(what)?;
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError {
            offset: at,
            what: format!("{what}: not valid UTF-8"),
        })
    }
    /// Fails unless every byte was consumed.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.remaining() != 0 {
            return Err(self.error(format!("{} trailing bytes", self.remaining())));
        }
        Ok(())
    }
}
