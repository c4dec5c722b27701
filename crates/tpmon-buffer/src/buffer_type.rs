//! [`BufferType`]: the kinds of typed buffer and their wire codes and names.
//!
//! This module owns the mapping code ↔ type ↔ name. The codes are part of the wire
//! protocol and must never be renumbered; new types get new codes.

use std::fmt;

/// The buffer types tpmon knows. Wire code = the `u8` discriminant via
/// [`BufferType::code`] / [`BufferType::from_code`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum BufferType {
    /// NUL-free text (`STRING`).
    String = 1,
    /// Bytes with an explicit length (`CARRAY`).
    Carray = 2,
    /// Bytes with an explicit length (`X_OCTET`, the X/Open name for CARRAY).
    XOctet = 3,
    /// A self-describing field buffer (`FIELD`).
    Field = 4,
    /// A named serde record (`RECORD`, the modern STRUCT).
    Record = 5,
}

impl BufferType {
    /// Every buffer type, in code order.
    pub const ALL: [BufferType; 5] = [
        BufferType::String,
        BufferType::Carray,
        BufferType::XOctet,
        BufferType::Field,
        BufferType::Record,
    ];

    /// The wire code of this type.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The type with wire code `code`, if any.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.code() == code)
    }

    /// The type's name as applications spell it: `"STRING"`, `"CARRAY"`, `"X_OCTET"`,
    /// `"FIELD"`, `"RECORD"`.
    pub fn name(self) -> &'static str {
        match self {
            BufferType::String => "STRING",
            BufferType::Carray => "CARRAY",
            BufferType::XOctet => "X_OCTET",
            BufferType::Field => "FIELD",
            BufferType::Record => "RECORD",
        }
    }

    /// The type called `name`, compared case-insensitively (`"x_octet"` works).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// Whether buffers of this type carry a subtype (only RECORD does).
    pub fn has_subtype(self) -> bool {
        self == BufferType::Record
    }
}

impl fmt::Display for BufferType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_the_wire_values() {
        assert_eq!(BufferType::String.code(), 1);
        assert_eq!(BufferType::Carray.code(), 2);
        assert_eq!(BufferType::XOctet.code(), 3);
        assert_eq!(BufferType::Field.code(), 4);
        assert_eq!(BufferType::Record.code(), 5);
    }

    #[test]
    fn code_round_trip_and_unknown_codes() {
        for t in BufferType::ALL {
            assert_eq!(BufferType::from_code(t.code()), Some(t));
        }
        assert_eq!(BufferType::from_code(0), None);
        assert_eq!(BufferType::from_code(6), None);
        assert_eq!(BufferType::from_code(255), None);
    }

    #[test]
    fn names_are_case_insensitive() {
        for t in BufferType::ALL {
            assert_eq!(BufferType::from_name(t.name()), Some(t));
            assert_eq!(BufferType::from_name(&t.name().to_lowercase()), Some(t));
        }
        assert_eq!(BufferType::from_name("x_octet"), Some(BufferType::XOctet));
        assert_eq!(BufferType::from_name("STRUCT"), None);
        assert_eq!(BufferType::from_name(""), None);
        assert_eq!(BufferType::Field.to_string(), "FIELD");
    }
}
