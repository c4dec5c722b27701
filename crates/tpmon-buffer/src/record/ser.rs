//! The record serializer: Rust values to record bytes (format in `record/mod.rs`).
//!
//! This module owns writing; it never fails except where the format has a limit (a
//! length over `u32::MAX`) or the value's own `Serialize` reports an error.
//! Sequences and maps whose length serde does not know up front get a placeholder
//! count that is patched when they end.

use serde::ser::{self, Serialize};

use super::error::RecordError;
use super::RECORD_FORMAT_VERSION;

/// Writes one record into a byte vector.
pub(crate) struct RecordSerializer {
    out: Vec<u8>,
}

impl RecordSerializer {
    /// A serializer whose output starts with the format version.
    pub(crate) fn new() -> Self {
        RecordSerializer {
            out: vec![RECORD_FORMAT_VERSION],
        }
    }

    /// The bytes written.
    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.out
    }

    fn put(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    fn put_len(&mut self, len: usize, what: &str) -> Result<(), RecordError> {
        let len = u32::try_from(len).map_err(|_| {
            RecordError::Custom(format!(
                "{what} of {len} is over the format's limit of 2^32-1"
            ))
        })?;
        self.put(&len.to_be_bytes());
        Ok(())
    }

    fn put_variant(&mut self, index: u32) {
        self.put(&index.to_be_bytes());
    }
}

/// A sequence, map, tuple or struct being written.
pub(crate) struct Compound<'a> {
    ser: &'a mut RecordSerializer,
    /// Where the element count goes, for sequences and maps.
    count_at: Option<usize>,
    count: usize,
}

impl<'a> Compound<'a> {
    fn counted(ser: &'a mut RecordSerializer) -> Self {
        let count_at = ser.out.len();
        ser.put(&[0; 4]);
        Compound {
            ser,
            count_at: Some(count_at),
            count: 0,
        }
    }

    fn fixed(ser: &'a mut RecordSerializer) -> Self {
        Compound {
            ser,
            count_at: None,
            count: 0,
        }
    }

    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), RecordError> {
        self.count += 1;
        value.serialize(&mut *self.ser)
    }

    fn finish(self) -> Result<(), RecordError> {
        if let Some(at) = self.count_at {
            let count = u32::try_from(self.count).map_err(|_| {
                RecordError::Custom(format!(
                    "{} elements are over the format's limit of 2^32-1",
                    self.count
                ))
            })?;
            self.ser.out[at..at + 4].copy_from_slice(&count.to_be_bytes());
        }
        Ok(())
    }
}

impl<'a> ser::Serializer for &'a mut RecordSerializer {
    type Ok = ();
    type Error = RecordError;
    type SerializeSeq = Compound<'a>;
    type SerializeTuple = Compound<'a>;
    type SerializeTupleStruct = Compound<'a>;
    type SerializeTupleVariant = Compound<'a>;
    type SerializeMap = Compound<'a>;
    type SerializeStruct = Compound<'a>;
    type SerializeStructVariant = Compound<'a>;

    fn serialize_bool(self, v: bool) -> Result<(), RecordError> {
        self.put(&[u8::from(v)]);
        Ok(())
    }

    fn serialize_i8(self, v: i8) -> Result<(), RecordError> {
        self.put(&v.to_be_bytes());
        Ok(())
    }

    fn serialize_i16(self, v: i16) -> Result<(), RecordError> {
        self.put(&v.to_be_bytes());
        Ok(())
    }

    fn serialize_i32(self, v: i32) -> Result<(), RecordError> {
        self.put(&v.to_be_bytes());
        Ok(())
    }

    fn serialize_i64(self, v: i64) -> Result<(), RecordError> {
        self.put(&v.to_be_bytes());
        Ok(())
    }

    fn serialize_i128(self, v: i128) -> Result<(), RecordError> {
        self.put(&v.to_be_bytes());
        Ok(())
    }

    fn serialize_u8(self, v: u8) -> Result<(), RecordError> {
        self.put(&[v]);
        Ok(())
    }

    fn serialize_u16(self, v: u16) -> Result<(), RecordError> {
        self.put(&v.to_be_bytes());
        Ok(())
    }

    fn serialize_u32(self, v: u32) -> Result<(), RecordError> {
        self.put(&v.to_be_bytes());
        Ok(())
    }

    fn serialize_u64(self, v: u64) -> Result<(), RecordError> {
        self.put(&v.to_be_bytes());
        Ok(())
    }

    fn serialize_u128(self, v: u128) -> Result<(), RecordError> {
        self.put(&v.to_be_bytes());
        Ok(())
    }

    fn serialize_f32(self, v: f32) -> Result<(), RecordError> {
        self.put(&v.to_bits().to_be_bytes());
        Ok(())
    }

    fn serialize_f64(self, v: f64) -> Result<(), RecordError> {
        self.put(&v.to_bits().to_be_bytes());
        Ok(())
    }

    fn serialize_char(self, v: char) -> Result<(), RecordError> {
        self.put(&u32::from(v).to_be_bytes());
        Ok(())
    }

    fn serialize_str(self, v: &str) -> Result<(), RecordError> {
        self.put_len(v.len(), "string length")?;
        self.put(v.as_bytes());
        Ok(())
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<(), RecordError> {
        self.put_len(v.len(), "byte string length")?;
        self.put(v);
        Ok(())
    }

    fn serialize_none(self) -> Result<(), RecordError> {
        self.put(&[0]);
        Ok(())
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), RecordError> {
        self.put(&[1]);
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<(), RecordError> {
        Ok(())
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), RecordError> {
        Ok(())
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        index: u32,
        _variant: &'static str,
    ) -> Result<(), RecordError> {
        self.put_variant(index);
        Ok(())
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), RecordError> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        index: u32,
        _variant: &'static str,
        value: &T,
    ) -> Result<(), RecordError> {
        self.put_variant(index);
        value.serialize(self)
    }

    fn serialize_seq(self, _len: Option<usize>) -> Result<Compound<'a>, RecordError> {
        Ok(Compound::counted(self))
    }

    fn serialize_tuple(self, _len: usize) -> Result<Compound<'a>, RecordError> {
        Ok(Compound::fixed(self))
    }

    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Compound<'a>, RecordError> {
        Ok(Compound::fixed(self))
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Compound<'a>, RecordError> {
        self.put_variant(index);
        Ok(Compound::fixed(self))
    }

    fn serialize_map(self, _len: Option<usize>) -> Result<Compound<'a>, RecordError> {
        Ok(Compound::counted(self))
    }

    fn serialize_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Compound<'a>, RecordError> {
        Ok(Compound::fixed(self))
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Compound<'a>, RecordError> {
        self.put_variant(index);
        Ok(Compound::fixed(self))
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

impl ser::SerializeSeq for Compound<'_> {
    type Ok = ();
    type Error = RecordError;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), RecordError> {
        self.element(value)
    }

    fn end(self) -> Result<(), RecordError> {
        self.finish()
    }
}

impl ser::SerializeTuple for Compound<'_> {
    type Ok = ();
    type Error = RecordError;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), RecordError> {
        self.element(value)
    }

    fn end(self) -> Result<(), RecordError> {
        self.finish()
    }
}

impl ser::SerializeTupleStruct for Compound<'_> {
    type Ok = ();
    type Error = RecordError;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), RecordError> {
        self.element(value)
    }

    fn end(self) -> Result<(), RecordError> {
        self.finish()
    }
}

impl ser::SerializeTupleVariant for Compound<'_> {
    type Ok = ();
    type Error = RecordError;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), RecordError> {
        self.element(value)
    }

    fn end(self) -> Result<(), RecordError> {
        self.finish()
    }
}

impl ser::SerializeMap for Compound<'_> {
    type Ok = ();
    type Error = RecordError;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), RecordError> {
        self.element(key)
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), RecordError> {
        value.serialize(&mut *self.ser)
    }

    fn end(self) -> Result<(), RecordError> {
        self.finish()
    }
}

impl ser::SerializeStruct for Compound<'_> {
    type Ok = ();
    type Error = RecordError;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        _key: &'static str,
        value: &T,
    ) -> Result<(), RecordError> {
        self.element(value)
    }

    fn skip_field(&mut self, key: &'static str) -> Result<(), RecordError> {
        // Fields are positional: a skipped field would shift every later one.
        Err(RecordError::Custom(format!(
            "field {key:?} is skipped when serializing; the record format has no field names, so it cannot skip fields"
        )))
    }

    fn end(self) -> Result<(), RecordError> {
        self.finish()
    }
}

impl ser::SerializeStructVariant for Compound<'_> {
    type Ok = ();
    type Error = RecordError;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        _key: &'static str,
        value: &T,
    ) -> Result<(), RecordError> {
        self.element(value)
    }

    fn skip_field(&mut self, key: &'static str) -> Result<(), RecordError> {
        Err(RecordError::Custom(format!(
            "field {key:?} is skipped when serializing; the record format has no field names, so it cannot skip fields"
        )))
    }

    fn end(self) -> Result<(), RecordError> {
        self.finish()
    }
}
