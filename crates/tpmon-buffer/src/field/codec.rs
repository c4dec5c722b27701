//! The wire encoding of FIELD bodies: [`FieldBuffer::encode`] and
//! [`FieldBuffer::decode`].
//!
//! This module owns the byte layout, which is canonical (one buffer, one encoding):
//!
//! ```text
//! u32 BE   entry count N (total occurrences)
//! N times, in ascending key order, occurrences of one key in order:
//!   u32 BE   key = type code << 25 | field number
//!   value:   short  2 bytes, i16 BE
//!            long   8 bytes, i64 BE
//!            char   1 byte
//!            float  4 bytes, IEEE 754 bits BE
//!            double 8 bytes, IEEE 754 bits BE
//!            string u32 BE length L, then L bytes, none of them NUL
//!            carray u32 BE length L, then L bytes
//! ```
//!
//! Fault model: the decoder gets bytes from the network. It checks the size limit
//! before anything else, the entry count against the bytes left (every entry takes at
//! least 5), each length against the bytes left before slicing, key types and numbers,
//! ascending key order, NULs in strings, the occurrence limit, and trailing bytes. It
//! never allocates from a length it has not checked against the input, so memory stays
//! a small multiple of the body size. Every error carries the offset of the entry,
//! key or value at fault. It must never accept two encodings of the same buffer: that
//! keeps "decode, then encode" the identity on every body it accepts.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use super::buffer::{COUNT_BYTES, KEY_BYTES};
use super::{FieldBuffer, FieldKey, FieldType, FieldValue};
use crate::error::{BufferError, DecodeProblem};
use crate::limits::{FIELD_BODY_BYTES_MAX, FIELD_OCCURRENCES_MAX};
use crate::wire::Reader;
use crate::BufferType;

/// Smallest encoded entry: a key and a `char`.
const ENTRY_BYTES_MIN: u64 = 5;

/// Name used in I/O errors of [`FieldBuffer::write_to`] and [`FieldBuffer::read_from`].
const STREAM_NAME: &str = "field buffer stream";

/// Limits a receiver applies when decoding a FIELD body. Values above the crate's
/// limits ([`FIELD_BODY_BYTES_MAX`], [`FIELD_OCCURRENCES_MAX`]) are lowered to them, so
/// a decoded buffer can always be changed and re-sent through the normal API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldLimits {
    /// Largest body accepted, in bytes.
    pub body_bytes_max: usize,
    /// Most occurrences accepted for one key.
    pub occurrences_max: usize,
}

impl Default for FieldLimits {
    fn default() -> Self {
        FieldLimits {
            body_bytes_max: FIELD_BODY_BYTES_MAX,
            occurrences_max: FIELD_OCCURRENCES_MAX,
        }
    }
}

impl FieldBuffer {
    /// Appends the encoded body to `out` (exactly [`FieldBuffer::encoded_len`] bytes).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        // The limits keep the count far below u32::MAX (each entry takes 5 bytes or more).
        let count = u32::try_from(self.field_count()).unwrap_or(u32::MAX);
        out.extend_from_slice(&count.to_be_bytes());
        for (key, values) in self.groups() {
            for value in values {
                out.extend_from_slice(&key.raw().to_be_bytes());
                encode_value(value, out);
            }
        }
    }

    /// The encoded body as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode(&mut out);
        out
    }

    /// Decodes a body with the default [`FieldLimits`].
    pub fn decode(body: &[u8]) -> Result<FieldBuffer, BufferError> {
        FieldBuffer::decode_with_limits(body, &FieldLimits::default())
    }

    /// Decodes a body, refusing anything over `limits`.
    pub fn decode_with_limits(
        body: &[u8],
        limits: &FieldLimits,
    ) -> Result<FieldBuffer, BufferError> {
        let body_max = limits.body_bytes_max.min(FIELD_BODY_BYTES_MAX);
        let occurrences_max = limits.occurrences_max.min(FIELD_OCCURRENCES_MAX);
        let mut r = Reader::new(body, BufferType::Field);
        if body.len() > body_max {
            return Err(r.error(DecodeProblem::TooLarge {
                len: body.len(),
                max: body_max,
            }));
        }
        let count = r.u32("entry count")?;
        let needed = u64::from(count) * ENTRY_BYTES_MIN;
        if needed > r.remaining() as u64 {
            return Err(r.error_at(
                0,
                DecodeProblem::ImpossibleCount {
                    count: u64::from(count),
                    needed,
                    available: r.remaining(),
                },
            ));
        }
        let mut fields: BTreeMap<FieldKey, Vec<FieldValue>> = BTreeMap::new();
        let mut previous: Option<FieldKey> = None;
        for _ in 0..count {
            let at = r.offset();
            let key = decode_key(&mut r)?;
            if let Some(previous) = previous.filter(|p| key < *p) {
                return Err(r.error_at(at, DecodeProblem::KeyOutOfOrder { key, previous }));
            }
            previous = Some(key);
            let value = decode_value(&mut r, key.field_type())?;
            let values = fields.entry(key).or_default();
            if values.len() >= occurrences_max {
                return Err(r.error_at(
                    at,
                    DecodeProblem::TooManyOccurrences {
                        key,
                        max: occurrences_max,
                    },
                ));
            }
            values.push(value);
        }
        r.finish()?;
        Ok(FieldBuffer::from_checked_parts(fields, body.len()))
    }

    /// Writes the buffer to a stream as a `u32` BE body length followed by the body
    /// (the "write to a file" operation).
    pub fn write_to<W: Write>(&self, mut writer: W) -> Result<(), BufferError> {
        let body = self.to_bytes();
        let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
        writer
            .write_all(&len.to_be_bytes())
            .and_then(|()| writer.write_all(&body))
            .map_err(|source| BufferError::Io {
                path: STREAM_NAME.into(),
                source,
            })
    }

    /// Reads one buffer written by [`FieldBuffer::write_to`]. The length is checked
    /// against [`FIELD_BODY_BYTES_MAX`] before reading, and the body is read as it
    /// comes rather than allocated up front.
    pub fn read_from<R: Read>(reader: R) -> Result<FieldBuffer, BufferError> {
        let io = |source| BufferError::Io {
            path: STREAM_NAME.into(),
            source,
        };
        let mut reader = reader;
        let mut len = [0u8; 4];
        reader.read_exact(&mut len).map_err(io)?;
        let len = u32::from_be_bytes(len) as usize;
        let decode_error = |offset, problem| BufferError::Decode {
            ty: BufferType::Field,
            offset,
            problem,
        };
        if len > FIELD_BODY_BYTES_MAX {
            return Err(decode_error(
                0,
                DecodeProblem::TooLarge {
                    len,
                    max: FIELD_BODY_BYTES_MAX,
                },
            ));
        }
        let mut body = Vec::new();
        reader.take(len as u64).read_to_end(&mut body).map_err(io)?;
        if body.len() < len {
            return Err(decode_error(
                body.len(),
                DecodeProblem::Truncated {
                    what: "field buffer body",
                    needed: len - body.len(),
                    available: 0,
                },
            ));
        }
        FieldBuffer::decode(&body)
    }
}

/// Appends one value's encoding.
fn encode_value(value: &FieldValue, out: &mut Vec<u8>) {
    match value {
        FieldValue::Short(v) => out.extend_from_slice(&v.to_be_bytes()),
        FieldValue::Long(v) => out.extend_from_slice(&v.to_be_bytes()),
        FieldValue::Char(v) => out.push(*v),
        FieldValue::Float(v) => out.extend_from_slice(&v.to_bits().to_be_bytes()),
        FieldValue::Double(v) => out.extend_from_slice(&v.to_bits().to_be_bytes()),
        FieldValue::String(b) | FieldValue::Carray(b) => {
            // The size limit keeps every length far below u32::MAX.
            let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(b);
        }
    }
}

/// Reads and validates a key.
fn decode_key(r: &mut Reader<'_>) -> Result<FieldKey, BufferError> {
    let at = r.offset();
    let raw = r.u32("field key")?;
    if let Some(key) = FieldKey::from_raw(raw) {
        return Ok(key);
    }
    let code = raw >> 25;
    let problem = if FieldType::from_code(code).is_none() {
        DecodeProblem::UnknownFieldType { key: raw, code }
    } else {
        DecodeProblem::FieldNumberZero { key: raw }
    };
    Err(r.error_at(at, problem))
}

/// Reads one value of type `ty`.
fn decode_value(r: &mut Reader<'_>, ty: FieldType) -> Result<FieldValue, BufferError> {
    Ok(match ty {
        FieldType::Short => FieldValue::Short(i16::from_be_bytes(r.array("short value")?)),
        FieldType::Long => FieldValue::Long(i64::from_be_bytes(r.array("long value")?)),
        FieldType::Char => FieldValue::Char(r.u8("char value")?),
        FieldType::Float => {
            FieldValue::Float(f32::from_bits(u32::from_be_bytes(r.array("float value")?)))
        }
        FieldType::Double => {
            FieldValue::Double(f64::from_bits(u64::from_be_bytes(r.array("double value")?)))
        }
        FieldType::String => {
            let bytes = r.length_prefixed("string value")?;
            if let Some(nul) = bytes.iter().position(|&b| b == 0) {
                let offset = r.offset() - bytes.len() + nul;
                return Err(r.error_at(
                    offset,
                    DecodeProblem::NulByte {
                        what: "string value",
                    },
                ));
            }
            FieldValue::String(bytes.to_vec())
        }
        FieldType::Carray => FieldValue::Carray(r.length_prefixed("carray value")?.to_vec()),
    })
}

// The size bookkeeping in `buffer.rs` must agree with this encoder.
const _: () = assert!(COUNT_BYTES == 4 && KEY_BYTES == 4);

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ty: FieldType, n: u32) -> FieldKey {
        FieldKey::new(ty, n).unwrap()
    }

    fn decode_err(body: &[u8]) -> (usize, DecodeProblem) {
        match FieldBuffer::decode(body).unwrap_err() {
            BufferError::Decode {
                ty: BufferType::Field,
                offset,
                problem,
            } => (offset, problem),
            other => panic!("unexpected {other}"),
        }
    }

    fn sample() -> FieldBuffer {
        let mut b = FieldBuffer::new();
        b.add(key(FieldType::Short, 1), FieldValue::Short(-2))
            .unwrap();
        b.add(
            key(FieldType::Long, 2),
            FieldValue::Long(0x0102030405060708),
        )
        .unwrap();
        b.add(key(FieldType::Char, 3), FieldValue::Char(b'Z'))
            .unwrap();
        b.add(key(FieldType::Float, 4), FieldValue::Float(1.0))
            .unwrap();
        b.add(key(FieldType::Double, 5), FieldValue::Double(-2.0))
            .unwrap();
        b.add(key(FieldType::String, 6), FieldValue::from("hi"))
            .unwrap();
        b.add(key(FieldType::Carray, 7), FieldValue::Carray(vec![0, 255]))
            .unwrap();
        b
    }

    #[test]
    fn encoding_is_byte_exact() {
        let bytes = sample().to_bytes();
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            0, 0, 0, 7,                                  // 7 entries
            0x00, 0, 0, 1,     0xff, 0xfe,               // short 1 = -2
            0x02, 0, 0, 2,     1, 2, 3, 4, 5, 6, 7, 8,   // long 2
            0x04, 0, 0, 3,     b'Z',                     // char 3
            0x06, 0, 0, 4,     0x3f, 0x80, 0, 0,         // float 4 = 1.0
            0x08, 0, 0, 5,     0xc0, 0, 0, 0, 0, 0, 0, 0,// double 5 = -2.0
            0x0a, 0, 0, 6,     0, 0, 0, 2, b'h', b'i',   // string 6
            0x0c, 0, 0, 7,     0, 0, 0, 2, 0, 255,       // carray 7
        ];
        assert_eq!(bytes, want);
        assert_eq!(bytes.len(), sample().encoded_len());
        assert_eq!(FieldBuffer::decode(&bytes).unwrap(), sample());
    }

    #[test]
    fn example_from_the_docs() {
        // docs/typed-buffers.md, "FIELD body byte by byte".
        let mut b = FieldBuffer::new();
        b.add(key(FieldType::String, 3), FieldValue::from("hi"))
            .unwrap();
        b.add(key(FieldType::Long, 10), FieldValue::Long(1500))
            .unwrap();
        #[rustfmt::skip]
        let want = [
            0, 0, 0, 2,
            0x02, 0, 0, 0x0a,
            0, 0, 0, 0, 0, 0, 0x05, 0xdc,
            0x0a, 0, 0, 3,
            0, 0, 0, 2, b'h', b'i',
        ];
        assert_eq!(b.to_bytes(), want);
    }

    #[test]
    fn empty_buffer_is_four_zero_bytes() {
        assert_eq!(FieldBuffer::new().to_bytes(), [0, 0, 0, 0]);
        assert_eq!(
            FieldBuffer::decode(&[0, 0, 0, 0]).unwrap(),
            FieldBuffer::new()
        );
    }

    #[test]
    fn truncation_is_reported_with_offset() {
        let bytes = sample().to_bytes();
        for cut in 0..bytes.len() {
            assert!(FieldBuffer::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let (offset, p) = decode_err(&[0, 0, 0, 1, 0x02, 0, 0, 2, 1, 2, 3]);
        assert_eq!(offset, 8);
        assert_eq!(
            p,
            DecodeProblem::Truncated {
                what: "long value",
                needed: 8,
                available: 3
            }
        );
        assert!(matches!(
            decode_err(&[0, 0]),
            (0, DecodeProblem::Truncated { .. })
        ));
    }

    #[test]
    fn hostile_counts_and_lengths_are_refused_cheaply() {
        let (offset, p) = decode_err(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 0]);
        assert_eq!(offset, 0);
        assert!(matches!(p, DecodeProblem::ImpossibleCount { .. }));
        // A string claiming 4 GiB.
        let (offset, p) = decode_err(&[0, 0, 0, 1, 0x0a, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, b'a']);
        assert_eq!(offset, 8);
        assert!(matches!(
            p,
            DecodeProblem::Truncated {
                needed: 0xffff_ffff,
                ..
            }
        ));
    }

    #[test]
    fn bad_keys_are_refused() {
        let (offset, p) = decode_err(&[0, 0, 0, 1, 0x0e, 0, 0, 1, 0]);
        assert_eq!(
            (offset, p),
            (
                4,
                DecodeProblem::UnknownFieldType {
                    key: 0x0e00_0001,
                    code: 7
                }
            )
        );
        let (offset, p) = decode_err(&[0, 0, 0, 1, 0x04, 0, 0, 0, 0]);
        assert_eq!(
            (offset, p),
            (4, DecodeProblem::FieldNumberZero { key: 0x0400_0000 })
        );
    }

    #[test]
    fn unordered_keys_are_refused() {
        let body = [0, 0, 0, 2, 0x04, 0, 0, 2, b'a', 0x04, 0, 0, 1, b'b'];
        let (offset, p) = decode_err(&body);
        assert_eq!(offset, 9);
        assert!(matches!(p, DecodeProblem::KeyOutOfOrder { .. }));
        // Repeated keys (occurrences) are in order.
        let body = [0, 0, 0, 2, 0x04, 0, 0, 1, b'a', 0x04, 0, 0, 1, b'b'];
        let b = FieldBuffer::decode(&body).unwrap();
        assert_eq!(b.occurrences(key(FieldType::Char, 1)), 2);
    }

    #[test]
    fn nul_in_string_and_trailing_bytes_are_refused() {
        let (offset, p) = decode_err(&[0, 0, 0, 1, 0x0a, 0, 0, 1, 0, 0, 0, 3, b'a', 0, b'c']);
        assert_eq!(
            (offset, p),
            (
                13,
                DecodeProblem::NulByte {
                    what: "string value"
                }
            )
        );
        let (offset, p) = decode_err(&[0, 0, 0, 0, 9]);
        assert_eq!((offset, p), (4, DecodeProblem::TrailingBytes { count: 1 }));
    }

    #[test]
    fn limits_apply_on_decode() {
        let mut b = FieldBuffer::new();
        let k = key(FieldType::Char, 1);
        for _ in 0..3 {
            b.add(k, FieldValue::Char(1)).unwrap();
        }
        let body = b.to_bytes();
        let strict = FieldLimits {
            occurrences_max: 2,
            ..FieldLimits::default()
        };
        let e = FieldBuffer::decode_with_limits(&body, &strict).unwrap_err();
        assert!(matches!(
            e,
            BufferError::Decode {
                offset: 14,
                problem: DecodeProblem::TooManyOccurrences { max: 2, .. },
                ..
            }
        ));
        let small = FieldLimits {
            body_bytes_max: 10,
            ..FieldLimits::default()
        };
        assert!(matches!(
            FieldBuffer::decode_with_limits(&body, &small),
            Err(BufferError::Decode {
                problem: DecodeProblem::TooLarge { len: 19, max: 10 },
                ..
            })
        ));
    }

    #[test]
    fn stream_round_trip() {
        let mut file = Vec::new();
        sample().write_to(&mut file).unwrap();
        assert_eq!(FieldBuffer::read_from(file.as_slice()).unwrap(), sample());
        assert!(FieldBuffer::read_from(&file[..file.len() - 1]).is_err());
        assert!(FieldBuffer::read_from(&file[..2]).is_err());
        assert!(FieldBuffer::read_from(&[0xff, 0xff, 0xff, 0xff][..]).is_err());
    }
}
