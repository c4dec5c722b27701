//! [`FieldType`]: the seven value types a field can have, their codes and names.
//!
//! This module owns the type codes that field keys carry in their top bits and the names
//! field table files use. The codes are on the wire and in every field table header a
//! legacy application compiled, so they must never change.

use std::fmt;

/// The type of a field's values. The discriminant is the type code stored in the top
/// seven bits of a [`crate::FieldKey`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum FieldType {
    /// 16-bit signed integer.
    Short = 0,
    /// 64-bit signed integer.
    Long = 1,
    /// One byte.
    Char = 2,
    /// 32-bit IEEE 754 float.
    Float = 3,
    /// 64-bit IEEE 754 float.
    Double = 4,
    /// Bytes without NUL (text in any encoding).
    String = 5,
    /// Bytes with an explicit length.
    Carray = 6,
}

impl FieldType {
    /// Every field type, in code order.
    pub const ALL: [FieldType; 7] = [
        FieldType::Short,
        FieldType::Long,
        FieldType::Char,
        FieldType::Float,
        FieldType::Double,
        FieldType::String,
        FieldType::Carray,
    ];

    /// The type code stored in keys.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// The type with code `code`, if any.
    pub fn from_code(code: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.code() == code)
    }

    /// The name used in field tables and printed keys: `"short"`, `"long"`, `"char"`,
    /// `"float"`, `"double"`, `"string"`, `"carray"`.
    pub fn name(self) -> &'static str {
        match self {
            FieldType::Short => "short",
            FieldType::Long => "long",
            FieldType::Char => "char",
            FieldType::Float => "float",
            FieldType::Double => "double",
            FieldType::String => "string",
            FieldType::Carray => "carray",
        }
    }

    /// The type called `name`, compared case-insensitively.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// Size in bytes of an encoded value of this type, or `None` for the
    /// length-prefixed types (string, carray).
    pub fn fixed_size(self) -> Option<usize> {
        match self {
            FieldType::Short => Some(2),
            FieldType::Long => Some(8),
            FieldType::Char => Some(1),
            FieldType::Float => Some(4),
            FieldType::Double => Some(8),
            FieldType::String | FieldType::Carray => None,
        }
    }
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_names_round_trip() {
        for (i, t) in FieldType::ALL.into_iter().enumerate() {
            assert_eq!(t.code(), i as u32);
            assert_eq!(FieldType::from_code(t.code()), Some(t));
            assert_eq!(FieldType::from_name(t.name()), Some(t));
            assert_eq!(FieldType::from_name(&t.name().to_uppercase()), Some(t));
        }
        assert_eq!(FieldType::from_code(7), None);
        assert_eq!(FieldType::from_name("int"), None);
    }
}
