//! [`Buffer`]: a typed buffer as applications see it, and its body encoding.
//!
//! This module owns the choice of body encoding per buffer type and the decode entry
//! point that the protocol layer calls with the type code and subtype from the message
//! header. It must not encode the type or subtype itself (the header carries them) and
//! must not look inside RECORD data (the record module does that, on request).
//!
//! Body encodings:
//!
//! | type | body |
//! |---|---|
//! | STRING | the text bytes, no terminating NUL; a NUL inside is a decode error |
//! | CARRAY, X_OCTET | the bytes as they are |
//! | FIELD | see [`crate::field`] (count, then key/value entries, big-endian) |
//! | RECORD | the record data as built by [`crate::record`]; subtype = record name |

use crate::error::{BufferError, DecodeProblem};
use crate::field::FieldBuffer;
use crate::record;
use crate::BufferType;

/// A typed buffer as applications see it.
#[derive(Clone, Debug, PartialEq)]
pub enum Buffer {
    /// STRING: text without NUL bytes (bytes, not necessarily UTF-8: legacy apps use
    /// EUC-KR etc.).
    String(Vec<u8>),
    /// CARRAY: bytes with an explicit length, passed through untouched.
    Carray(Vec<u8>),
    /// X_OCTET: the X/Open name for the same thing as CARRAY; kept apart so that a
    /// service that accepts only one of them can say so.
    XOctet(Vec<u8>),
    /// FIELD: a self-describing buffer of (field key, value) occurrences.
    Field(FieldBuffer),
    /// A typed record (the modern STRUCT): subtype = record name, body = our serde
    /// encoding (see [`crate::record`]).
    Record {
        /// The record name, sent as the subtype.
        name: String,
        /// The encoded record.
        data: Vec<u8>,
    },
}

impl Buffer {
    /// A STRING buffer from text. XATMI semantics: a STRING ends at its first NUL, so
    /// anything from the first NUL on is dropped (use [`Buffer::try_string`] to get an
    /// error instead). Never panics.
    pub fn string(s: impl Into<String>) -> Buffer {
        let mut bytes = s.into().into_bytes();
        if let Some(nul) = bytes.iter().position(|&b| b == 0) {
            bytes.truncate(nul);
        }
        Buffer::String(bytes)
    }

    /// A STRING buffer from bytes in any encoding; fails if they contain a NUL byte.
    pub fn try_string(bytes: impl Into<Vec<u8>>) -> Result<Buffer, BufferError> {
        let bytes = bytes.into();
        match bytes.iter().position(|&b| b == 0) {
            Some(offset) => Err(BufferError::NulInString { offset }),
            None => Ok(Buffer::String(bytes)),
        }
    }

    /// A CARRAY buffer.
    pub fn carray(bytes: impl Into<Vec<u8>>) -> Buffer {
        Buffer::Carray(bytes.into())
    }

    /// An X_OCTET buffer.
    pub fn x_octet(bytes: impl Into<Vec<u8>>) -> Buffer {
        Buffer::XOctet(bytes.into())
    }

    /// The buffer's type.
    pub fn buffer_type(&self) -> BufferType {
        match self {
            Buffer::String(_) => BufferType::String,
            Buffer::Carray(_) => BufferType::Carray,
            Buffer::XOctet(_) => BufferType::XOctet,
            Buffer::Field(_) => BufferType::Field,
            Buffer::Record { .. } => BufferType::Record,
        }
    }

    /// The subtype: the record name for RECORD, `""` for every other type.
    pub fn subtype(&self) -> &str {
        match self {
            Buffer::Record { name, .. } => name,
            _ => "",
        }
    }

    /// A STRING buffer's text, if it is valid UTF-8; `None` for other types or other
    /// encodings.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Buffer::String(bytes) => std::str::from_utf8(bytes).ok(),
            _ => None,
        }
    }

    /// The raw bytes of a STRING, CARRAY or X_OCTET buffer; `None` for FIELD and RECORD.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Buffer::String(b) | Buffer::Carray(b) | Buffer::XOctet(b) => Some(b),
            _ => None,
        }
    }

    /// The field buffer inside a FIELD buffer.
    pub fn as_field(&self) -> Option<&FieldBuffer> {
        match self {
            Buffer::Field(f) => Some(f),
            _ => None,
        }
    }

    /// The field buffer inside a FIELD buffer, for changing it.
    pub fn as_field_mut(&mut self) -> Option<&mut FieldBuffer> {
        match self {
            Buffer::Field(f) => Some(f),
            _ => None,
        }
    }

    /// Appends the encoded body (without type code and subtype: those travel in the
    /// message header) to `out`.
    pub fn encode_body(&self, out: &mut Vec<u8>) {
        match self {
            Buffer::String(b) | Buffer::Carray(b) | Buffer::XOctet(b) => out.extend_from_slice(b),
            Buffer::Field(f) => f.encode(out),
            Buffer::Record { data, .. } => out.extend_from_slice(data),
        }
    }

    /// The length in bytes that [`Buffer::encode_body`] appends.
    pub fn encoded_body_len(&self) -> usize {
        match self {
            Buffer::String(b) | Buffer::Carray(b) | Buffer::XOctet(b) => b.len(),
            Buffer::Field(f) => f.encoded_len(),
            Buffer::Record { data, .. } => data.len(),
        }
    }

    /// Decodes a body received with type `ty` and subtype `subtype` (both from the
    /// message header). Validates everything: a STRING must hold no NUL, a FIELD body
    /// must be canonical and within [`crate::limits`], a RECORD needs a valid name and
    /// the other types no subtype at all.
    pub fn decode(ty: BufferType, subtype: &str, body: &[u8]) -> Result<Buffer, BufferError> {
        if !ty.has_subtype() && !subtype.is_empty() {
            return Err(BufferError::UnexpectedSubtype {
                ty,
                subtype: subtype.to_owned(),
            });
        }
        Ok(match ty {
            BufferType::String => {
                if let Some(offset) = body.iter().position(|&b| b == 0) {
                    return Err(BufferError::Decode {
                        ty,
                        offset,
                        problem: DecodeProblem::NulByte { what: "STRING" },
                    });
                }
                Buffer::String(body.to_vec())
            }
            BufferType::Carray => Buffer::Carray(body.to_vec()),
            BufferType::XOctet => Buffer::XOctet(body.to_vec()),
            BufferType::Field => Buffer::Field(FieldBuffer::decode(body)?),
            BufferType::Record => {
                record::validate_name(subtype)?;
                Buffer::Record {
                    name: subtype.to_owned(),
                    data: body.to_vec(),
                }
            }
        })
    }
}

impl From<FieldBuffer> for Buffer {
    fn from(fields: FieldBuffer) -> Self {
        Buffer::Field(fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::field::{FieldKey, FieldType, FieldValue};

    fn round_trip(b: &Buffer) -> Buffer {
        let mut body = Vec::new();
        b.encode_body(&mut body);
        assert_eq!(body.len(), b.encoded_body_len());
        Buffer::decode(b.buffer_type(), b.subtype(), &body).unwrap()
    }

    #[test]
    fn string_truncates_at_nul() {
        assert_eq!(Buffer::string("abc\0def"), Buffer::String(b"abc".to_vec()));
        assert_eq!(Buffer::string("héllo").as_str(), Some("héllo"));
    }

    #[test]
    fn try_string_rejects_nul_and_keeps_legacy_bytes() {
        assert!(matches!(
            Buffer::try_string(&b"ab\0"[..]),
            Err(BufferError::NulInString { offset: 2 })
        ));
        // EUC-KR for "한" is B0 A1 C7 D1: fine as a STRING, not UTF-8.
        let b = Buffer::try_string(vec![0xC7, 0xD1]).unwrap();
        assert_eq!(b.as_str(), None);
        assert_eq!(b.as_bytes(), Some(&[0xC7, 0xD1][..]));
    }

    #[test]
    fn every_type_round_trips() {
        let key = FieldKey::new(FieldType::String, 3).unwrap();
        let mut f = FieldBuffer::new();
        f.add(key, FieldValue::String(b"x".to_vec())).unwrap();
        for b in [
            Buffer::string("hello"),
            Buffer::carray(vec![0, 1, 2]),
            Buffer::x_octet(vec![]),
            Buffer::Field(f),
            Buffer::Record {
                name: "Order".into(),
                data: vec![1, 2, 3],
            },
        ] {
            assert_eq!(round_trip(&b), b);
        }
    }

    #[test]
    fn subtype_only_for_records() {
        assert_eq!(Buffer::string("x").subtype(), "");
        assert!(matches!(
            Buffer::decode(BufferType::Carray, "foo", b""),
            Err(BufferError::UnexpectedSubtype { .. })
        ));
        assert!(matches!(
            Buffer::decode(BufferType::Record, "", b""),
            Err(BufferError::InvalidRecordName { .. })
        ));
    }

    #[test]
    fn string_body_with_nul_is_rejected_with_offset() {
        let e = Buffer::decode(BufferType::String, "", b"ab\0c").unwrap_err();
        assert_eq!(
            e.to_string(),
            "decoding STRING body at byte offset 2: NUL byte in STRING"
        );
    }
}
