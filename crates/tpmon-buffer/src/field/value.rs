//! [`FieldValue`]: one value of a field, tagged with its type.
//!
//! This module owns the value representation, its encoded size, and equality. Equality
//! is *wire identity*: two values are equal when they have the same type and encode to
//! the same bytes, so floats compare by their bits (`NaN == NaN` with the same bits,
//! `0.0 != -0.0`). That makes `FieldValue` `Eq` and `Hash` and makes "decodes to itself"
//! testable. Conversions between types live in `convert.rs`, not here.

use std::cmp::Ordering;
use std::hash::{Hash, Hasher};

use super::FieldType;

/// One value of a field.
#[derive(Clone, Debug)]
pub enum FieldValue {
    /// A `short` value.
    Short(i16),
    /// A `long` value.
    Long(i64),
    /// A `char` value: one byte.
    Char(u8),
    /// A `float` value.
    Float(f32),
    /// A `double` value.
    Double(f64),
    /// A `string` value: bytes without NUL, in any encoding.
    String(Vec<u8>),
    /// A `carray` value: any bytes.
    Carray(Vec<u8>),
}

impl FieldValue {
    /// The value's type.
    pub fn field_type(&self) -> FieldType {
        match self {
            FieldValue::Short(_) => FieldType::Short,
            FieldValue::Long(_) => FieldType::Long,
            FieldValue::Char(_) => FieldType::Char,
            FieldValue::Float(_) => FieldType::Float,
            FieldValue::Double(_) => FieldType::Double,
            FieldValue::String(_) => FieldType::String,
            FieldValue::Carray(_) => FieldType::Carray,
        }
    }

    /// Bytes this value takes on the wire, without its key (a string or carray adds a
    /// 4-byte length).
    pub fn encoded_len(&self) -> usize {
        match self {
            FieldValue::String(b) | FieldValue::Carray(b) => 4 + b.len(),
            other => other.field_type().fixed_size().unwrap_or(0),
        }
    }

    /// A `string` value from text; anything from the first NUL on is dropped, as a
    /// STRING ends at its NUL.
    pub fn string(s: impl Into<String>) -> FieldValue {
        let mut bytes = s.into().into_bytes();
        if let Some(nul) = bytes.iter().position(|&b| b == 0) {
            bytes.truncate(nul);
        }
        FieldValue::String(bytes)
    }

    /// Offset of the first NUL byte, if this is a `string` value that contains one
    /// (such a value cannot be stored or sent).
    pub fn nul_offset(&self) -> Option<usize> {
        match self {
            FieldValue::String(b) => b.iter().position(|&b| b == 0),
            _ => None,
        }
    }

    /// The bytes of a `string` or `carray` value.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            FieldValue::String(b) | FieldValue::Carray(b) => Some(b),
            _ => None,
        }
    }

    /// A total order over values: first by type code, then by value, with floats
    /// ordered by [`f64::total_cmp`] and bytes lexicographically. Consistent with `==`.
    pub fn total_cmp(&self, other: &FieldValue) -> Ordering {
        use FieldValue as V;
        match (self, other) {
            (V::Short(a), V::Short(b)) => a.cmp(b),
            (V::Long(a), V::Long(b)) => a.cmp(b),
            (V::Char(a), V::Char(b)) => a.cmp(b),
            (V::Float(a), V::Float(b)) => a.total_cmp(b),
            (V::Double(a), V::Double(b)) => a.total_cmp(b),
            (V::String(a), V::String(b)) | (V::Carray(a), V::Carray(b)) => a.cmp(b),
            (a, b) => a.field_type().cmp(&b.field_type()),
        }
    }
}

impl PartialEq for FieldValue {
    fn eq(&self, other: &Self) -> bool {
        self.total_cmp(other) == Ordering::Equal
    }
}

impl Eq for FieldValue {}

impl Hash for FieldValue {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.field_type().hash(state);
        match self {
            FieldValue::Short(v) => v.hash(state),
            FieldValue::Long(v) => v.hash(state),
            FieldValue::Char(v) => v.hash(state),
            FieldValue::Float(v) => v.to_bits().hash(state),
            FieldValue::Double(v) => v.to_bits().hash(state),
            FieldValue::String(v) | FieldValue::Carray(v) => v.hash(state),
        }
    }
}

impl From<i16> for FieldValue {
    fn from(v: i16) -> Self {
        FieldValue::Short(v)
    }
}

impl From<i32> for FieldValue {
    /// An `i32` becomes a `long` (so that integer literals work).
    fn from(v: i32) -> Self {
        FieldValue::Long(i64::from(v))
    }
}

impl From<i64> for FieldValue {
    fn from(v: i64) -> Self {
        FieldValue::Long(v)
    }
}

impl From<u8> for FieldValue {
    fn from(v: u8) -> Self {
        FieldValue::Char(v)
    }
}

impl From<f32> for FieldValue {
    fn from(v: f32) -> Self {
        FieldValue::Float(v)
    }
}

impl From<f64> for FieldValue {
    fn from(v: f64) -> Self {
        FieldValue::Double(v)
    }
}

impl From<&str> for FieldValue {
    /// Text becomes a `string` value, cut at its first NUL.
    fn from(v: &str) -> Self {
        FieldValue::string(v)
    }
}

impl From<String> for FieldValue {
    /// Text becomes a `string` value, cut at its first NUL.
    fn from(v: String) -> Self {
        FieldValue::string(v)
    }
}

impl From<Vec<u8>> for FieldValue {
    /// Bytes become a `carray` value.
    fn from(v: Vec<u8>) -> Self {
        FieldValue::Carray(v)
    }
}

impl From<&[u8]> for FieldValue {
    /// Bytes become a `carray` value.
    fn from(v: &[u8]) -> Self {
        FieldValue::Carray(v.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equality_is_bitwise_for_floats() {
        assert_eq!(FieldValue::Double(f64::NAN), FieldValue::Double(f64::NAN));
        assert_ne!(FieldValue::Double(0.0), FieldValue::Double(-0.0));
        assert_ne!(FieldValue::Float(1.0), FieldValue::Double(1.0));
        assert_ne!(
            FieldValue::String(b"a".to_vec()),
            FieldValue::Carray(b"a".to_vec())
        );
    }

    #[test]
    fn encoded_len_per_type() {
        assert_eq!(FieldValue::Short(1).encoded_len(), 2);
        assert_eq!(FieldValue::Long(1).encoded_len(), 8);
        assert_eq!(FieldValue::Char(1).encoded_len(), 1);
        assert_eq!(FieldValue::Float(1.0).encoded_len(), 4);
        assert_eq!(FieldValue::Double(1.0).encoded_len(), 8);
        assert_eq!(FieldValue::from("abc").encoded_len(), 7);
        assert_eq!(FieldValue::from(vec![0u8; 2]).encoded_len(), 6);
    }

    #[test]
    fn conversions_from_rust_types() {
        assert_eq!(FieldValue::from(5), FieldValue::Long(5));
        assert_eq!(FieldValue::from("a\0b"), FieldValue::String(b"a".to_vec()));
        assert_eq!(
            FieldValue::from(&b"a\0b"[..]),
            FieldValue::Carray(b"a\0b".to_vec())
        );
        assert_eq!(FieldValue::String(b"a\0".to_vec()).nul_offset(), Some(1));
    }

    #[test]
    fn total_order_orders_types_first() {
        assert_eq!(
            FieldValue::Short(100).total_cmp(&FieldValue::Long(-1)),
            Ordering::Less
        );
        assert_eq!(
            FieldValue::Double(-1.0).total_cmp(&FieldValue::Double(1.0)),
            Ordering::Less
        );
    }
}
