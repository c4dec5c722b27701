//! A bounds-checked, big-endian reader over a body being decoded.
//!
//! This module owns offset bookkeeping and the "truncated" and "trailing bytes" checks
//! that every decoder needs. It must never index past the input or panic: each read
//! either returns the bytes or a [`BufferError::Decode`] carrying the offset where the
//! read started.

use crate::error::{BufferError, DecodeProblem};
use crate::BufferType;

/// A cursor over untrusted bytes.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    ty: BufferType,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `bytes`, which is a body of type `ty` (named in errors).
    pub(crate) fn new(bytes: &'a [u8], ty: BufferType) -> Self {
        Reader { bytes, pos: 0, ty }
    }

    /// Offset of the next byte to read.
    pub(crate) fn offset(&self) -> usize {
        self.pos
    }

    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// An error at `offset`.
    pub(crate) fn error_at(&self, offset: usize, problem: DecodeProblem) -> BufferError {
        BufferError::Decode {
            ty: self.ty,
            offset,
            problem,
        }
    }

    /// An error at the current offset.
    pub(crate) fn error(&self, problem: DecodeProblem) -> BufferError {
        self.error_at(self.pos, problem)
    }

    /// The next `len` bytes; `what` names them in the error if fewer are left.
    pub(crate) fn bytes(
        &mut self,
        len: usize,
        what: &'static str,
    ) -> Result<&'a [u8], BufferError> {
        let available = self.remaining();
        if len > available {
            return Err(self.error(DecodeProblem::Truncated {
                what,
                needed: len,
                available,
            }));
        }
        let out = &self.bytes[self.pos..self.pos + len];
        self.pos += len;
        Ok(out)
    }

    /// The next `N` bytes as an array.
    pub(crate) fn array<const N: usize>(
        &mut self,
        what: &'static str,
    ) -> Result<[u8; N], BufferError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N, what)?);
        Ok(out)
    }

    /// One byte.
    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, BufferError> {
        Ok(self.array::<1>(what)?[0])
    }

    /// A big-endian `u32`.
    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, BufferError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    /// A big-endian `u32` length followed by that many bytes. The length is checked
    /// against the input left before anything is allocated or sliced.
    pub(crate) fn length_prefixed(&mut self, what: &'static str) -> Result<&'a [u8], BufferError> {
        let start = self.pos;
        let len = self.u32(what)? as usize;
        let available = self.remaining();
        if len > available {
            return Err(self.error_at(
                start,
                DecodeProblem::Truncated {
                    what,
                    needed: len,
                    available,
                },
            ));
        }
        self.bytes(len, what)
    }

    /// Succeeds only if every byte has been read.
    pub(crate) fn finish(&self) -> Result<(), BufferError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(self.error(DecodeProblem::TrailingBytes { count })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_big_endian_and_tracks_offset() {
        let mut r = Reader::new(&[0, 0, 1, 2, 9], BufferType::Field);
        assert_eq!(r.u32("count").ok(), Some(258));
        assert_eq!(r.offset(), 4);
        assert_eq!(r.u8("char").ok(), Some(9));
        assert!(r.finish().is_ok());
    }

    #[test]
    fn truncation_reports_offset_and_sizes() {
        let mut r = Reader::new(&[0, 0, 0, 9, 1, 2], BufferType::Field);
        let e = r.length_prefixed("string value").unwrap_err();
        match e {
            BufferError::Decode {
                offset, problem, ..
            } => {
                assert_eq!(offset, 0);
                assert_eq!(
                    problem,
                    DecodeProblem::Truncated {
                        what: "string value",
                        needed: 9,
                        available: 2
                    }
                );
            }
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut r = Reader::new(&[1, 2, 3], BufferType::Carray);
        r.u8("x").unwrap();
        let e = r.finish().unwrap_err();
        assert!(matches!(
            e,
            BufferError::Decode {
                offset: 1,
                problem: DecodeProblem::TrailingBytes { count: 2 },
                ..
            }
        ));
    }
}
