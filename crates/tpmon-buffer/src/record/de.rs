//! The record deserializer: record bytes to Rust values (format in `record/mod.rs`).
//!
//! This module owns reading untrusted record data. Fault model: any byte may be wrong.
//! Every length is checked against the input before use; nesting deeper than
//! [`RECORD_DEPTH_MAX`] and more than [`RECORD_ELEMENTS_MAX`] declared sequence/map
//! elements in total are refused, so neither recursion nor zero-sized elements can
//! exhaust the stack or the CPU. It must never ask the data what type comes next: the
//! format has no tags, so `deserialize_any` is an error.

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};

use super::error::RecordError;
use crate::error::{BufferError, DecodeProblem};
use crate::limits::{RECORD_DEPTH_MAX, RECORD_ELEMENTS_MAX};
use crate::wire::Reader;

/// Reads one record.
pub(crate) struct RecordDeserializer<'de> {
    r: Reader<'de>,
    depth: usize,
    elements_left: usize,
}

type Result<T> = std::result::Result<T, RecordError>;

impl<'de> RecordDeserializer<'de> {
    /// A deserializer reading from `r` (positioned after the version byte).
    pub(crate) fn new(r: Reader<'de>) -> Self {
        RecordDeserializer {
            r,
            depth: 0,
            elements_left: RECORD_ELEMENTS_MAX,
        }
    }

    /// Succeeds only if the whole input was read.
    pub(crate) fn finish(&self) -> std::result::Result<(), BufferError> {
        self.r.finish()
    }

    /// Turns an error from serde into a [`BufferError`]; messages without an offset get
    /// the current one.
    pub(crate) fn into_buffer_error(self, e: RecordError) -> BufferError {
        match e {
            RecordError::Buffer(e) => e,
            RecordError::Custom(message) => self.r.error(DecodeProblem::Record(message)),
        }
    }

    fn problem(&self, at: usize, problem: DecodeProblem) -> RecordError {
        RecordError::Buffer(self.r.error_at(at, problem))
    }

    fn enter(&mut self) -> Result<()> {
        if self.depth >= RECORD_DEPTH_MAX {
            return Err(self.problem(
                self.r.offset(),
                DecodeProblem::DepthLimit {
                    max: RECORD_DEPTH_MAX,
                },
            ));
        }
        self.depth += 1;
        Ok(())
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    /// Reads a `u32` element count and charges it to the element budget.
    fn count(&mut self, what: &'static str) -> Result<usize> {
        let at = self.r.offset();
        let count = self.r.u32(what)? as usize;
        if count > self.elements_left {
            return Err(self.problem(
                at,
                DecodeProblem::ElementLimit {
                    max: RECORD_ELEMENTS_MAX,
                },
            ));
        }
        self.elements_left -= count;
        Ok(count)
    }

    /// Runs `visit` one level deeper.
    fn nested<T>(&mut self, visit: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.enter()?;
        let out = visit(self);
        self.leave();
        out
    }

    /// Visits `len` elements as a sequence and checks that all were read.
    fn visit_elements<V: Visitor<'de>>(&mut self, len: usize, visitor: V) -> Result<V::Value> {
        self.nested(|de| {
            let mut access = Elements { de, left: len };
            let value = visitor.visit_seq(&mut access)?;
            match access.left {
                0 => Ok(value),
                count => Err(access.de.problem(
                    access.de.r.offset(),
                    DecodeProblem::UnreadElements { count },
                )),
            }
        })
    }

    fn not_self_describing(&self, what: &'static str) -> RecordError {
        self.problem(self.r.offset(), DecodeProblem::NotSelfDescribing { what })
    }
}

macro_rules! fixed {
    ($method:ident, $visit:ident, $t:ty, $what:literal) => {
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
            visitor.$visit(<$t>::from_be_bytes(self.r.array($what)?))
        }
    };
}

impl<'de> de::Deserializer<'de> for &mut RecordDeserializer<'de> {
    type Error = RecordError;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value> {
        Err(self.not_self_describing("deserialize_any (untagged enums, flatten, ...)"))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let at = self.r.offset();
        match self.r.u8("bool")? {
            0 => visitor.visit_bool(false),
            1 => visitor.visit_bool(true),
            byte => Err(self.problem(at, DecodeProblem::InvalidBool { byte })),
        }
    }

    fixed!(deserialize_i8, visit_i8, i8, "i8");
    fixed!(deserialize_i16, visit_i16, i16, "i16");
    fixed!(deserialize_i32, visit_i32, i32, "i32");
    fixed!(deserialize_i64, visit_i64, i64, "i64");
    fixed!(deserialize_i128, visit_i128, i128, "i128");
    fixed!(deserialize_u8, visit_u8, u8, "u8");
    fixed!(deserialize_u16, visit_u16, u16, "u16");
    fixed!(deserialize_u32, visit_u32, u32, "u32");
    fixed!(deserialize_u64, visit_u64, u64, "u64");
    fixed!(deserialize_u128, visit_u128, u128, "u128");

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_f32(f32::from_bits(u32::from_be_bytes(self.r.array("f32")?)))
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_f64(f64::from_bits(u64::from_be_bytes(self.r.array("f64")?)))
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let at = self.r.offset();
        let value = self.r.u32("char")?;
        match char::from_u32(value) {
            Some(c) => visitor.visit_char(c),
            None => Err(self.problem(at, DecodeProblem::InvalidChar { value })),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let at = self.r.offset();
        let bytes = self.r.length_prefixed("string")?;
        match std::str::from_utf8(bytes) {
            Ok(s) => visitor.visit_borrowed_str(s),
            Err(_) => Err(self.problem(at, DecodeProblem::InvalidUtf8 { what: "string" })),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_borrowed_bytes(self.r.length_prefixed("byte string")?)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let at = self.r.offset();
        match self.r.u8("option tag")? {
            0 => visitor.visit_none(),
            1 => self.nested(|de| visitor.visit_some(de)),
            byte => Err(self.problem(at, DecodeProblem::InvalidOptionTag { byte })),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        self.nested(|de| visitor.visit_newtype_struct(de))
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let len = self.count("sequence length")?;
        self.visit_elements(len, visitor)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value> {
        self.visit_elements(len, visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value> {
        self.visit_elements(len, visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let len = self.count("map length")?;
        self.nested(|de| {
            let mut access = Entries { de, left: len };
            let value = visitor.visit_map(&mut access)?;
            match access.left {
                0 => Ok(value),
                count => Err(access.de.problem(
                    access.de.r.offset(),
                    DecodeProblem::UnreadElements { count },
                )),
            }
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        self.visit_elements(fields.len(), visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        self.nested(|de| visitor.visit_enum(Variant { de }))
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value> {
        Err(self.not_self_describing("field or variant names"))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value> {
        Err(self.not_self_describing("skipping unknown data"))
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

/// The elements of a sequence, tuple or struct.
struct Elements<'a, 'de> {
    de: &'a mut RecordDeserializer<'de>,
    left: usize,
}

impl<'de> de::SeqAccess<'de> for Elements<'_, 'de> {
    type Error = RecordError;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        // Never more than the bytes left, so a hostile count cannot make a caller
        // pre-allocate beyond the input.
        Some(self.left.min(self.de.r.remaining()))
    }
}

/// The entries of a map.
struct Entries<'a, 'de> {
    de: &'a mut RecordDeserializer<'de>,
    left: usize,
}

impl<'de> de::MapAccess<'de> for Entries<'_, 'de> {
    type Error = RecordError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        seed.deserialize(&mut *self.de)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left.min(self.de.r.remaining()))
    }
}

/// An enum: the variant index, then its content.
struct Variant<'a, 'de> {
    de: &'a mut RecordDeserializer<'de>,
}

impl<'a, 'de> de::EnumAccess<'de> for Variant<'a, 'de> {
    type Error = RecordError;
    type Variant = Self;

    fn variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<(T::Value, Self)> {
        let index = self.de.r.u32("enum variant index")?;
        let index: de::value::U32Deserializer<RecordError> = index.into_deserializer();
        let value = seed.deserialize(index)?;
        Ok((value, self))
    }
}

impl<'de> de::VariantAccess<'de> for Variant<'_, 'de> {
    type Error = RecordError;

    fn unit_variant(self) -> Result<()> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value> {
        seed.deserialize(&mut *self.de)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value> {
        self.de.visit_elements(len, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        self.de.visit_elements(fields.len(), visitor)
    }
}
