//! [`FieldKey`]: a field identifier that carries its value type.
//!
//! Layout of the 32 bits: `type code << 25 | field number`, with the type code in bits
//! 25..=31 and the number in bits 0..=24 (1..=2^25-1). This module owns that layout and
//! the printed form `((type) number)`; it must never let an invalid key exist, so every
//! `FieldKey` has a known type and a non-zero number.

use std::fmt;
use std::str::FromStr;

use super::FieldType;
use crate::error::BufferError;
use crate::limits::FIELD_NUMBER_MAX;

/// Bit position of the type code in a key.
const TYPE_SHIFT: u32 = 25;

/// A field key: `(type code << 25) | field number`. Ordered by its raw value, which is
/// the order fields have in a [`crate::FieldBuffer`] and on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FieldKey(u32);

impl FieldKey {
    /// The key for field `number` (1..=2^25-1) of type `ty`.
    pub fn new(ty: FieldType, number: u32) -> Result<FieldKey, BufferError> {
        if number == 0 || number > FIELD_NUMBER_MAX {
            return Err(BufferError::InvalidFieldNumber {
                number: u64::from(number),
            });
        }
        Ok(FieldKey((ty.code() << TYPE_SHIFT) | number))
    }

    /// The key whose raw value is `raw`, if it has a known type and a non-zero number.
    pub fn from_raw(raw: u32) -> Option<FieldKey> {
        let ty = FieldType::from_code(raw >> TYPE_SHIFT)?;
        FieldKey::new(ty, raw & FIELD_NUMBER_MAX).ok()
    }

    /// The raw 32-bit value, as sent on the wire.
    pub fn raw(self) -> u32 {
        self.0
    }

    /// The type of this field's values.
    pub fn field_type(self) -> FieldType {
        match FieldType::from_code(self.0 >> TYPE_SHIFT) {
            Some(ty) => ty,
            // Construction guarantees a known code; this arm keeps the function total.
            None => FieldType::Carray,
        }
    }

    /// The field number, 1..=2^25-1.
    pub fn number(self) -> u32 {
        self.0 & FIELD_NUMBER_MAX
    }
}

impl fmt::Display for FieldKey {
    /// Prints `((type) number)`, for example `((long) 10)`: the form used for keys that
    /// have no name in the field table. [`FieldKey::from_str`] parses it back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "(({}) {})", self.field_type(), self.number())
    }
}

impl fmt::Debug for FieldKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FieldKey{self}")
    }
}

impl FromStr for FieldKey {
    type Err = BufferError;

    /// Parses the printed form `((type) number)`; spaces inside are optional.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BufferError::InvalidKeyText { text: s.to_owned() };
        let inner = s
            .trim()
            .strip_prefix("((")
            .and_then(|r| r.strip_suffix(')'))
            .ok_or_else(bad)?;
        let (ty, number) = inner.split_once(')').ok_or_else(bad)?;
        let ty = FieldType::from_name(ty.trim()).ok_or_else(bad)?;
        let number = number.trim();
        if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let number: u64 = number.parse().map_err(|_| bad())?;
        let number =
            u32::try_from(number).map_err(|_| BufferError::InvalidFieldNumber { number })?;
        FieldKey::new(ty, number)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_type_then_number() {
        let k = FieldKey::new(FieldType::Long, 10).unwrap();
        assert_eq!(k.raw(), (1 << 25) | 10);
        assert_eq!(k.field_type(), FieldType::Long);
        assert_eq!(k.number(), 10);
        let k = FieldKey::new(FieldType::Carray, FIELD_NUMBER_MAX).unwrap();
        assert_eq!(k.raw(), (6 << 25) | FIELD_NUMBER_MAX);
    }

    #[test]
    fn number_range_is_checked() {
        assert!(FieldKey::new(FieldType::Short, 0).is_err());
        assert!(FieldKey::new(FieldType::Short, FIELD_NUMBER_MAX + 1).is_err());
        assert!(FieldKey::new(FieldType::Short, 1).is_ok());
    }

    #[test]
    fn from_raw_rejects_unknown_types_and_zero() {
        assert_eq!(FieldKey::from_raw(0), None);
        assert_eq!(FieldKey::from_raw(7 << 25 | 1), None);
        assert_eq!(FieldKey::from_raw(u32::MAX), None);
        assert_eq!(
            FieldKey::from_raw(5 << 25 | 3),
            Some(FieldKey::new(FieldType::String, 3).unwrap())
        );
    }

    #[test]
    fn display_and_parse_round_trip() {
        for ty in FieldType::ALL {
            let k = FieldKey::new(ty, 4711).unwrap();
            let s = k.to_string();
            assert_eq!(s.parse::<FieldKey>().unwrap(), k);
        }
        assert_eq!(
            FieldKey::new(FieldType::Long, 10).unwrap().to_string(),
            "((long) 10)"
        );
        assert_eq!(
            "((double)7)".parse::<FieldKey>().unwrap(),
            FieldKey::new(FieldType::Double, 7).unwrap()
        );
        for bad in [
            "",
            "long 10",
            "((long) )",
            "((int) 3)",
            "((long) -1)",
            "((long) 0)",
            "((long) 99999999999)",
        ] {
            assert!(bad.parse::<FieldKey>().is_err(), "{bad}");
        }
    }

    #[test]
    fn order_is_by_raw_value() {
        let a = FieldKey::new(FieldType::Short, 500).unwrap();
        let b = FieldKey::new(FieldType::Long, 1).unwrap();
        assert!(a < b);
    }
}
