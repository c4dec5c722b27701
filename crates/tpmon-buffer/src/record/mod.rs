//! RECORD buffers: named, typed records encoded with our own serde format.
//!
//! This module tree owns the record body format and the conversions between Rust values
//! and RECORD buffers. It must not depend on the host's byte order or word size (the
//! point of STRUCT-style buffers is that unlike machines agree), and must not trust the
//! data it decodes: lengths are checked against the input, nesting depth and the total
//! number of sequence/map elements are bounded ([`RECORD_DEPTH_MAX`],
//! [`RECORD_ELEMENTS_MAX`]), and every error names its byte offset.
//!
//! The format is compact and not self-describing: the reader must use the type the
//! writer used (the record name, sent as the subtype, says which). Byte by byte:
//!
//! | serde type | encoding |
//! |---|---|
//! | (record start) | one byte, format version = 1 |
//! | bool | one byte, 0 or 1 |
//! | i8..i128, u8..u128 | fixed width, big-endian |
//! | f32, f64 | IEEE 754 bits, big-endian |
//! | char | u32 BE Unicode scalar value |
//! | str, String | u32 BE byte length, UTF-8 bytes |
//! | bytes | u32 BE length, bytes |
//! | option | one byte: 0 = None, 1 = Some followed by the value |
//! | unit, unit struct | nothing |
//! | newtype struct | the inner value |
//! | seq | u32 BE element count, elements |
//! | map | u32 BE entry count, key then value for each |
//! | tuple, tuple struct, struct | the fields in order, no count, no names |
//! | enum | u32 BE variant index, then the variant's content as above |
//!
//! A record must be read completely: bytes left over are an error. Because the format
//! has no type tags, serde features that need to look at the data first
//! (`deserialize_any`: untagged or internally tagged enums, `#[serde(flatten)]`,
//! skipping unknown fields) are refused with an error.

mod de;
mod error;
mod ser;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{BufferError, DecodeProblem};
use crate::limits::RECORD_NAME_BYTES_MAX;
#[cfg(doc)]
use crate::limits::{RECORD_DEPTH_MAX, RECORD_ELEMENTS_MAX};
use crate::wire::Reader;
use crate::{Buffer, BufferType};

/// The format version byte every record body starts with.
pub const RECORD_FORMAT_VERSION: u8 = 1;

/// Encodes `value` as a RECORD buffer called `name` (see [`validate_name`]).
pub fn to_record<T: Serialize + ?Sized>(name: &str, value: &T) -> Result<Buffer, BufferError> {
    validate_name(name)?;
    let data = encode_record(value).map_err(|e| match e {
        BufferError::RecordEncode { message, .. } => BufferError::RecordEncode {
            name: name.to_owned(),
            message,
        },
        other => other,
    })?;
    Ok(Buffer::Record {
        name: name.to_owned(),
        data,
    })
}

/// Decodes the record in a RECORD buffer, whatever its name.
pub fn from_record<T: DeserializeOwned>(buffer: &Buffer) -> Result<T, BufferError> {
    match buffer {
        Buffer::Record { data, .. } => decode_record(data),
        other => Err(BufferError::WrongBufferType {
            expected: BufferType::Record,
            found: other.buffer_type(),
        }),
    }
}

/// Decodes the record in a RECORD buffer after checking that it is called `name`.
pub fn from_record_named<T: DeserializeOwned>(
    buffer: &Buffer,
    name: &str,
) -> Result<T, BufferError> {
    if let Buffer::Record { name: found, .. } = buffer {
        if found != name {
            return Err(BufferError::RecordNameMismatch {
                expected: name.to_owned(),
                found: found.clone(),
            });
        }
    }
    from_record(buffer)
}

/// Encodes `value` as record data (version byte included), without a name.
pub fn encode_record<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, BufferError> {
    let mut serializer = ser::RecordSerializer::new();
    value
        .serialize(&mut serializer)
        .map_err(|e| BufferError::RecordEncode {
            name: String::new(),
            message: e.to_string(),
        })?;
    Ok(serializer.into_bytes())
}

/// Decodes record data (version byte included) as a `T`.
pub fn decode_record<T: DeserializeOwned>(data: &[u8]) -> Result<T, BufferError> {
    let mut reader = Reader::new(data, BufferType::Record);
    let version = reader.u8("format version")?;
    if version != RECORD_FORMAT_VERSION {
        return Err(reader.error_at(0, DecodeProblem::UnsupportedVersion { version }));
    }
    let mut deserializer = de::RecordDeserializer::new(reader);
    let result = T::deserialize(&mut deserializer);
    match result {
        Ok(value) => {
            deserializer.finish()?;
            Ok(value)
        }
        Err(e) => Err(deserializer.into_buffer_error(e)),
    }
}

// The "longer than 64 bytes" message below spells the limit out.
const _: () = assert!(RECORD_NAME_BYTES_MAX == 64);

/// Checks a record name: 1 to [`RECORD_NAME_BYTES_MAX`] bytes of printable ASCII
/// without spaces (`Order`, `bank.Transfer`, `ORDER_V2`).
pub fn validate_name(name: &str) -> Result<(), BufferError> {
    let bad = |reason| BufferError::InvalidRecordName {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(bad("empty"));
    }
    if name.len() > RECORD_NAME_BYTES_MAX {
        return Err(bad("longer than 64 bytes"));
    }
    if !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad("only printable ASCII without spaces is allowed"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::collections::BTreeMap;

    #[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
    enum Side {
        Buy,
        Sell { limit: Option<i64> },
        Hold(u8, bool),
        Note(String),
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
    struct Order {
        id: u64,
        account: String,
        amount: f64,
        side: Side,
        tags: Vec<String>,
        extra: BTreeMap<String, i32>,
        raw: Option<Vec<u8>>,
        flag: char,
        pair: (i8, u16),
        unit: (),
        big: i128,
    }

    fn order() -> Order {
        Order {
            id: 7,
            account: "KR-100".into(),
            amount: 12.5,
            side: Side::Sell { limit: Some(-3) },
            tags: vec!["a".into(), "bé".into()],
            extra: BTreeMap::from([("x".into(), -1), ("y".into(), 2)]),
            raw: Some(vec![0, 1]),
            flag: '한',
            pair: (-1, 65535),
            unit: (),
            big: -(1 << 100),
        }
    }

    #[test]
    fn round_trips_through_a_buffer() {
        let buffer = to_record("Order", &order()).unwrap();
        assert_eq!(buffer.buffer_type(), BufferType::Record);
        assert_eq!(buffer.subtype(), "Order");
        let back: Order = from_record(&buffer).unwrap();
        assert_eq!(back, order());
        let back: Order = from_record_named(&buffer, "Order").unwrap();
        assert_eq!(back, order());
        let e = from_record_named::<Order>(&buffer, "Other").unwrap_err();
        assert!(matches!(e, BufferError::RecordNameMismatch { .. }));
    }

    #[test]
    fn every_variant_round_trips() {
        for side in [
            Side::Buy,
            Side::Sell { limit: None },
            Side::Hold(9, true),
            Side::Note("n".into()),
        ] {
            let data = encode_record(&side).unwrap();
            assert_eq!(decode_record::<Side>(&data).unwrap(), side);
        }
    }

    #[test]
    fn layout_is_big_endian_and_documented() {
        #[derive(Serialize)]
        struct S {
            a: u16,
            b: Option<bool>,
            c: &'static str,
            d: Vec<u8>,
        }
        let data = encode_record(&S {
            a: 0x0102,
            b: Some(true),
            c: "hi",
            d: vec![9],
        })
        .unwrap();
        #[rustfmt::skip]
        assert_eq!(data, [
            1,                    // version
            0x01, 0x02,           // a
            1, 1,                 // Some(true)
            0, 0, 0, 2, b'h', b'i', // "hi"
            0, 0, 0, 1, 9,        // seq of one u8
        ]);
        assert_eq!(
            encode_record(&Side::Hold(5, false)).unwrap(),
            [1, 0, 0, 0, 2, 5, 0]
        );
    }

    #[test]
    fn wrong_buffer_type_and_bad_names() {
        let e = from_record::<Order>(&Buffer::string("x")).unwrap_err();
        assert!(matches!(e, BufferError::WrongBufferType { .. }));
        assert!(to_record("", &1u8).is_err());
        assert!(to_record("has space", &1u8).is_err());
        assert!(to_record(&"n".repeat(65), &1u8).is_err());
        assert!(to_record(&"n".repeat(64), &1u8).is_ok());
    }

    #[test]
    fn decode_errors_carry_offsets() {
        let data = encode_record(&order()).unwrap();
        for cut in 0..data.len() {
            assert!(decode_record::<Order>(&data[..cut]).is_err(), "cut {cut}");
        }
        let mut longer = data.clone();
        longer.push(0);
        let e = decode_record::<Order>(&longer).unwrap_err();
        assert!(matches!(
            e,
            BufferError::Decode {
                problem: DecodeProblem::TrailingBytes { count: 1 },
                ..
            }
        ));
        let e = decode_record::<u8>(&[2, 0]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "decoding RECORD body at byte offset 0: unsupported record format version 2"
        );
        let e = decode_record::<bool>(&[1, 7]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "decoding RECORD body at byte offset 1: invalid bool byte 7"
        );
        let e = decode_record::<Option<u8>>(&[1, 2, 0]).unwrap_err();
        assert!(e.to_string().contains("invalid option tag 2"));
        let e = decode_record::<char>(&[1, 0, 0, 0xd8, 0]).unwrap_err();
        assert!(e.to_string().contains("invalid char 0xd800"));
        let e = decode_record::<String>(&[1, 0, 0, 0, 1, 0xff]).unwrap_err();
        assert!(e
            .to_string()
            .contains("byte offset 1: string is not valid UTF-8"));
        // An unknown variant index: serde's message, at the offset after the index.
        let e = decode_record::<Side>(&[1, 0, 0, 0, 9]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("decoding RECORD body at byte offset 5:"),
            "{e}"
        );
    }

    #[test]
    fn hostile_lengths_do_not_allocate_or_loop() {
        // 4 billion elements claimed, none present.
        let e = decode_record::<Vec<u64>>(&[1, 0xff, 0xff, 0xff, 0xff]).unwrap_err();
        assert!(matches!(e, BufferError::Decode { .. }));
        // 4 billion zero-sized elements: refused by the element budget.
        let e = decode_record::<Vec<()>>(&[1, 0xff, 0xff, 0xff, 0xff]).unwrap_err();
        assert!(e.to_string().contains("more than"), "{e}");
        // Nested units within the budget are fine.
        assert_eq!(decode_record::<Vec<()>>(&[1, 0, 0, 0, 3]).unwrap().len(), 3);
    }

    #[test]
    fn deep_nesting_is_refused() {
        #[derive(Serialize, Deserialize, Debug)]
        enum Tree {
            Leaf,
            Node(Box<Tree>),
        }
        // Variant 1 (Node) repeated far deeper than the limit.
        let mut data = vec![1];
        for _ in 0..10_000 {
            data.extend_from_slice(&[0, 0, 0, 1]);
        }
        data.extend_from_slice(&[0, 0, 0, 0]);
        let e = decode_record::<Tree>(&data).unwrap_err();
        assert!(e.to_string().contains("deeper than"), "{e}");
    }

    #[test]
    fn skipped_fields_are_refused_when_encoding() {
        #[derive(Serialize)]
        struct S {
            #[serde(skip_serializing_if = "Option::is_none")]
            a: Option<u8>,
            b: u8,
        }
        let e = to_record("S", &S { a: None, b: 1 }).unwrap_err();
        assert!(matches!(e, BufferError::RecordEncode { ref name, .. } if name == "S"));
        assert!(e.to_string().contains("cannot skip fields"), "{e}");
        assert!(to_record("S", &S { a: Some(1), b: 1 }).is_ok());
    }

    #[test]
    fn self_describing_features_are_refused() {
        #[derive(Deserialize, Debug)]
        #[serde(untagged)]
        #[allow(dead_code)] // never built: decoding it must fail
        enum Either {
            A(u8),
        }
        let e = decode_record::<Either>(&[1, 5]).unwrap_err();
        assert!(e.to_string().contains("self-describing"), "{e}");
    }
}
