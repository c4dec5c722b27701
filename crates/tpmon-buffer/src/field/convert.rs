//! Conversions between field types (the `CFget`/`CFadd` family) and from text.
//!
//! This module owns the conversion rules below and nothing else; it must never convert
//! silently where information would be invented (text that is not a number, a value
//! out of the target's range, a NUL byte going into a string): those are
//! [`BufferError::Conversion`] errors.
//!
//! Rows are the source type, columns the target. "text" means: the bytes must be UTF-8;
//! ASCII whitespace around the number is ignored.
//!
//! | from \ to | short / long | char | float / double | string | carray |
//! |---|---|---|---|---|---|
//! | short, long | range-checked | must be 0..=255 | nearest value | decimal | decimal |
//! | char | the byte's value 0..=255 | same | the byte's value | the one byte (NUL: error) | the one byte |
//! | float, double | truncated toward zero; NaN, ±inf or out of range: error | truncated, must be 0..=255 | widened exactly, or narrowed to nearest (finite overflow: error) | shortest text that reads back to the same value | same as string |
//! | string, carray | text parsed as a decimal integer (`+`/`-` allowed), range-checked | the first byte (empty: error) | text parsed as a float (`1.5`, `-2e10`, `inf`, `NaN`; finite text that overflows: error) | the bytes (carray with NUL: error) | the bytes |
//!
//! Converting to the value's own type returns it unchanged. Floats print in plain
//! decimal (`0.1`, `1500`, `-0`) unless they are 1e16 or more, or less than 1e-5, in
//! magnitude, where they print in exponent form (`1e16`, `2.5e-7`); NaN and the
//! infinities print as `NaN`, `inf`, `-inf`. Every printed float reads back to the same
//! value (NaN payloads and the sign of NaN are not kept).

use std::num::IntErrorKind;

use super::{FieldType, FieldValue};
use crate::error::BufferError;

/// Longest rendering of a value inside an error message, in characters.
const ERROR_VALUE_CHARS_MAX: usize = 40;

impl FieldValue {
    /// This value converted to type `to` by the rules in the module documentation
    /// (`crate::field::convert`).
    pub fn convert(&self, to: FieldType) -> Result<FieldValue, BufferError> {
        let from = self.field_type();
        if from == to {
            return Ok(self.clone());
        }
        let fail = |reason: &'static str| BufferError::Conversion {
            from,
            to,
            value: describe(self),
            reason,
        };
        Ok(match to {
            FieldType::Short => {
                let v = self.to_integer().map_err(fail)?;
                FieldValue::Short(i16::try_from(v).map_err(|_| fail("out of range for short"))?)
            }
            FieldType::Long => FieldValue::Long(self.to_integer().map_err(fail)?),
            FieldType::Char => match self {
                FieldValue::String(b) | FieldValue::Carray(b) => FieldValue::Char(
                    *b.first()
                        .ok_or_else(|| fail("empty text has no first byte"))?,
                ),
                _ => {
                    let v = self.to_integer().map_err(fail)?;
                    FieldValue::Char(
                        u8::try_from(v).map_err(|_| fail("out of range for char (0..=255)"))?,
                    )
                }
            },
            FieldType::Float => FieldValue::Float(self.to_f32().map_err(fail)?),
            FieldType::Double => FieldValue::Double(self.to_f64().map_err(fail)?),
            FieldType::String => {
                let bytes = self.to_bytes();
                if bytes.contains(&0) {
                    return Err(fail("a string cannot contain a NUL byte"));
                }
                FieldValue::String(bytes)
            }
            FieldType::Carray => FieldValue::Carray(self.to_bytes()),
        })
    }

    /// A value of type `ty` from text, as a command line gives it (`NAME=VALUE`): the
    /// same rules as converting a `string` value, except that a `carray` may hold any
    /// byte of the text and a `string` refuses a NUL.
    pub fn from_text(ty: FieldType, text: &str) -> Result<FieldValue, BufferError> {
        FieldValue::Carray(text.as_bytes().to_vec()).convert(ty)
    }

    /// The value as text, by the conversion-to-string rules, without the NUL check
    /// (a `char` NUL gives a one-byte NUL string; a `carray` its bytes).
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            FieldValue::Short(v) => v.to_string().into_bytes(),
            FieldValue::Long(v) => v.to_string().into_bytes(),
            FieldValue::Char(c) => vec![*c],
            FieldValue::Float(v) => format_f32(*v).into_bytes(),
            FieldValue::Double(v) => format_f64(*v).into_bytes(),
            FieldValue::String(b) | FieldValue::Carray(b) => b.clone(),
        }
    }

    fn to_integer(&self) -> Result<i64, &'static str> {
        match self {
            FieldValue::Short(v) => Ok(i64::from(*v)),
            FieldValue::Long(v) => Ok(*v),
            FieldValue::Char(v) => Ok(i64::from(*v)),
            FieldValue::Float(v) => float_to_i64(f64::from(*v)),
            FieldValue::Double(v) => float_to_i64(*v),
            FieldValue::String(b) | FieldValue::Carray(b) => {
                let text = number_text(b).ok_or("not an integer")?;
                text.parse::<i64>().map_err(|e| match e.kind() {
                    IntErrorKind::PosOverflow | IntErrorKind::NegOverflow => {
                        "out of range for long"
                    }
                    _ => "not an integer",
                })
            }
        }
    }

    fn to_f64(&self) -> Result<f64, &'static str> {
        match self {
            FieldValue::Short(v) => Ok(f64::from(*v)),
            // Nearest double: a long above 2^53 may round, as in C.
            FieldValue::Long(v) => Ok(*v as f64),
            FieldValue::Char(v) => Ok(f64::from(*v)),
            FieldValue::Float(v) => Ok(f64::from(*v)),
            FieldValue::Double(v) => Ok(*v),
            FieldValue::String(b) | FieldValue::Carray(b) => {
                let text = number_text(b).ok_or("not a number")?;
                let v = text.parse::<f64>().map_err(|_| "not a number")?;
                if v.is_infinite() && !names_infinity(text) {
                    return Err("out of range for double");
                }
                Ok(v)
            }
        }
    }

    fn to_f32(&self) -> Result<f32, &'static str> {
        match self {
            FieldValue::Short(v) => Ok(f32::from(*v)),
            // Nearest float, as in C.
            FieldValue::Long(v) => Ok(*v as f32),
            FieldValue::Char(v) => Ok(f32::from(*v)),
            FieldValue::Float(v) => Ok(*v),
            FieldValue::Double(v) => {
                let narrowed = *v as f32;
                if v.is_finite() && narrowed.is_infinite() {
                    return Err("out of range for float");
                }
                Ok(narrowed)
            }
            FieldValue::String(b) | FieldValue::Carray(b) => {
                let text = number_text(b).ok_or("not a number")?;
                // Parsed as f32 directly: going through f64 could round twice.
                let v = text.parse::<f32>().map_err(|_| "not a number")?;
                if v.is_infinite() && !names_infinity(text) {
                    return Err("out of range for float");
                }
                Ok(v)
            }
        }
    }
}

/// The number text inside `bytes`: UTF-8 with surrounding ASCII whitespace removed.
fn number_text(bytes: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(bytes).ok()?;
    let text = text.trim_matches(|c: char| c.is_ascii_whitespace());
    (!text.is_empty()).then_some(text)
}

/// Whether `text` spells an infinity rather than a finite number too big to represent.
fn names_infinity(text: &str) -> bool {
    text.to_ascii_lowercase().contains("inf")
}

/// Truncates toward zero; NaN, the infinities and values outside `i64` are errors.
fn float_to_i64(v: f64) -> Result<i64, &'static str> {
    // 2^63 is exactly representable; i64 covers [-2^63, 2^63).
    const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;
    if !v.is_finite() {
        return Err("not a finite number");
    }
    let t = v.trunc();
    if !(-TWO_POW_63..TWO_POW_63).contains(&t) {
        return Err("out of range for long");
    }
    Ok(t as i64)
}

/// Whether a float of this magnitude prints in exponent form.
fn wants_exponent(abs: f64) -> bool {
    abs != 0.0 && abs.is_finite() && !(1e-5..1e16).contains(&abs)
}

/// Shortest text that reads back to the same `f64` (see the module documentation).
pub(crate) fn format_f64(v: f64) -> String {
    if wants_exponent(v.abs()) {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

/// Shortest text that reads back to the same `f32` (see the module documentation).
pub(crate) fn format_f32(v: f32) -> String {
    if wants_exponent(f64::from(v).abs()) {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

/// A short rendering of a value for error messages.
fn describe(value: &FieldValue) -> String {
    let text = match value {
        FieldValue::String(b) | FieldValue::Carray(b) => {
            format!("{:?}", String::from_utf8_lossy(b))
        }
        other => String::from_utf8_lossy(&other.to_bytes()).into_owned(),
    };
    if text.chars().count() > ERROR_VALUE_CHARS_MAX {
        let mut short: String = text.chars().take(ERROR_VALUE_CHARS_MAX).collect();
        short.push('…');
        short
    } else {
        text
    }
}

/// A Rust type that a field value can be converted to, for
/// [`crate::FieldBuffer::get_as`].
pub trait FromFieldValue: Sized {
    /// The field type values are converted to first.
    const FIELD_TYPE: FieldType;

    /// Converts `value` (of any type) to `Self`.
    fn from_field_value(value: &FieldValue) -> Result<Self, BufferError>;
}

/// The error for a conversion that produced an unexpected variant; cannot happen, as
/// [`FieldValue::convert`] always returns the type asked for, but keeps the code total.
fn not_converted(value: &FieldValue, to: FieldType) -> BufferError {
    BufferError::Conversion {
        from: value.field_type(),
        to,
        value: describe(value),
        reason: "conversion produced another type",
    }
}

macro_rules! from_field_value {
    ($t:ty, $ft:ident) => {
        impl FromFieldValue for $t {
            const FIELD_TYPE: FieldType = FieldType::$ft;

            fn from_field_value(value: &FieldValue) -> Result<Self, BufferError> {
                match value.convert(FieldType::$ft)? {
                    FieldValue::$ft(v) => Ok(v),
                    _ => Err(not_converted(value, FieldType::$ft)),
                }
            }
        }
    };
}

from_field_value!(i16, Short);
from_field_value!(i64, Long);
from_field_value!(u8, Char);
from_field_value!(f32, Float);
from_field_value!(f64, Double);
from_field_value!(Vec<u8>, Carray);

impl FromFieldValue for i32 {
    const FIELD_TYPE: FieldType = FieldType::Long;

    fn from_field_value(value: &FieldValue) -> Result<Self, BufferError> {
        let v = i64::from_field_value(value)?;
        i32::try_from(v).map_err(|_| BufferError::Conversion {
            from: value.field_type(),
            to: FieldType::Long,
            value: describe(value),
            reason: "out of range for i32",
        })
    }
}

impl FromFieldValue for String {
    const FIELD_TYPE: FieldType = FieldType::String;

    /// Converts to `string`, then requires UTF-8.
    fn from_field_value(value: &FieldValue) -> Result<Self, BufferError> {
        match value.convert(FieldType::String)? {
            FieldValue::String(b) => String::from_utf8(b).map_err(|_| BufferError::Conversion {
                from: value.field_type(),
                to: FieldType::String,
                value: describe(value),
                reason: "not valid UTF-8",
            }),
            _ => Err(not_converted(value, FieldType::String)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use FieldType as T;
    use FieldValue as V;

    fn conv(v: V, to: T) -> Result<V, BufferError> {
        v.convert(to)
    }

    fn s(text: &str) -> V {
        V::String(text.as_bytes().to_vec())
    }

    #[test]
    fn integers_to_integers() {
        assert_eq!(conv(V::Short(-5), T::Long).unwrap(), V::Long(-5));
        assert_eq!(conv(V::Long(32767), T::Short).unwrap(), V::Short(32767));
        assert!(conv(V::Long(32768), T::Short).is_err());
        assert!(conv(V::Long(-32769), T::Short).is_err());
        assert_eq!(conv(V::Char(200), T::Short).unwrap(), V::Short(200));
        assert_eq!(conv(V::Long(65), T::Char).unwrap(), V::Char(b'A'));
        assert!(conv(V::Long(256), T::Char).is_err());
        assert!(conv(V::Short(-1), T::Char).is_err());
    }

    #[test]
    fn floats_to_integers_truncate() {
        assert_eq!(conv(V::Double(12.9), T::Long).unwrap(), V::Long(12));
        assert_eq!(conv(V::Double(-12.9), T::Long).unwrap(), V::Long(-12));
        assert_eq!(conv(V::Float(3.99), T::Short).unwrap(), V::Short(3));
        assert_eq!(conv(V::Double(65.5), T::Char).unwrap(), V::Char(65));
        assert!(conv(V::Double(f64::NAN), T::Long).is_err());
        assert!(conv(V::Double(f64::INFINITY), T::Long).is_err());
        assert!(conv(V::Double(9.3e18), T::Long).is_err());
        assert_eq!(
            conv(V::Double(-9_223_372_036_854_775_808.0), T::Long).unwrap(),
            V::Long(i64::MIN)
        );
        assert!(conv(V::Double(9_223_372_036_854_775_808.0), T::Long).is_err());
        assert!(conv(V::Double(40000.0), T::Short).is_err());
    }

    #[test]
    fn text_to_integers() {
        assert_eq!(conv(s("123"), T::Long).unwrap(), V::Long(123));
        assert_eq!(conv(s("  -7 \n"), T::Long).unwrap(), V::Long(-7));
        assert_eq!(conv(s("+7"), T::Short).unwrap(), V::Short(7));
        assert!(conv(s("abc"), T::Long).is_err());
        assert!(conv(s("12abc"), T::Long).is_err());
        assert!(conv(s("12.5"), T::Long).is_err());
        assert!(conv(s(""), T::Long).is_err());
        assert!(conv(s("99999"), T::Short).is_err());
        assert!(conv(s("99999999999999999999"), T::Long).is_err());
        assert!(conv(V::Carray(vec![0xff, b'1']), T::Long).is_err());
        assert_eq!(
            conv(V::Carray(b"42".to_vec()), T::Long).unwrap(),
            V::Long(42)
        );
    }

    #[test]
    fn text_to_char_takes_first_byte() {
        assert_eq!(conv(s("Yes"), T::Char).unwrap(), V::Char(b'Y'));
        assert_eq!(conv(s("65"), T::Char).unwrap(), V::Char(b'6'));
        assert!(conv(s(""), T::Char).is_err());
    }

    #[test]
    fn to_floats() {
        assert_eq!(conv(V::Long(3), T::Double).unwrap(), V::Double(3.0));
        assert_eq!(conv(V::Char(b'A'), T::Float).unwrap(), V::Float(65.0));
        assert_eq!(conv(V::Float(0.5), T::Double).unwrap(), V::Double(0.5));
        assert_eq!(conv(V::Double(0.1), T::Float).unwrap(), V::Float(0.1));
        assert!(conv(V::Double(1e300), T::Float).is_err());
        assert_eq!(
            conv(V::Double(f64::INFINITY), T::Float).unwrap(),
            V::Float(f32::INFINITY)
        );
        assert_eq!(conv(s("1.5"), T::Double).unwrap(), V::Double(1.5));
        assert_eq!(conv(s(" -2e3 "), T::Float).unwrap(), V::Float(-2000.0));
        assert_eq!(conv(s("inf"), T::Double).unwrap(), V::Double(f64::INFINITY));
        assert!(conv(s("1e400"), T::Double).is_err());
        assert!(conv(s("1e39"), T::Float).is_err());
        assert!(conv(s("abc"), T::Double).is_err());
        assert!(matches!(conv(s("NaN"), T::Double).unwrap(), V::Double(v) if v.is_nan()));
    }

    #[test]
    fn to_text() {
        assert_eq!(conv(V::Long(-42), T::String).unwrap(), s("-42"));
        assert_eq!(
            conv(V::Short(7), T::Carray).unwrap(),
            V::Carray(b"7".to_vec())
        );
        assert_eq!(conv(V::Char(b'x'), T::String).unwrap(), s("x"));
        assert!(conv(V::Char(0), T::String).is_err());
        assert_eq!(conv(V::Char(0), T::Carray).unwrap(), V::Carray(vec![0]));
        assert_eq!(conv(V::Double(1500.0), T::String).unwrap(), s("1500"));
        assert_eq!(conv(V::Double(0.1), T::String).unwrap(), s("0.1"));
        assert_eq!(conv(V::Double(-0.0), T::String).unwrap(), s("-0"));
        assert_eq!(conv(V::Double(1e16), T::String).unwrap(), s("1e16"));
        assert_eq!(conv(V::Double(2.5e-7), T::String).unwrap(), s("2.5e-7"));
        assert_eq!(conv(V::Float(0.1), T::String).unwrap(), s("0.1"));
        assert_eq!(
            conv(V::Double(f64::NEG_INFINITY), T::String).unwrap(),
            s("-inf")
        );
        assert!(conv(V::Carray(b"a\0b".to_vec()), T::String).is_err());
        assert_eq!(
            conv(s("abc"), T::Carray).unwrap(),
            V::Carray(b"abc".to_vec())
        );
    }

    #[test]
    fn printed_floats_read_back() {
        for v in [
            0.1,
            1.0 / 3.0,
            1e300,
            -1e-300,
            123456.789,
            f64::MAX,
            f64::MIN_POSITIVE,
            5e-324,
        ] {
            let text = format_f64(v);
            assert_eq!(
                text.parse::<f64>().unwrap().to_bits(),
                v.to_bits(),
                "{text}"
            );
        }
        for v in [0.1f32, 1.0 / 3.0, 3e38, 1e-45] {
            let text = format_f32(v);
            assert_eq!(
                text.parse::<f32>().unwrap().to_bits(),
                v.to_bits(),
                "{text}"
            );
        }
    }

    #[test]
    fn from_text_for_each_type() {
        assert_eq!(V::from_text(T::Short, "12").unwrap(), V::Short(12));
        assert_eq!(V::from_text(T::Long, "-12").unwrap(), V::Long(-12));
        assert_eq!(V::from_text(T::Char, "Y").unwrap(), V::Char(b'Y'));
        assert_eq!(V::from_text(T::Float, "1.25").unwrap(), V::Float(1.25));
        assert_eq!(V::from_text(T::Double, "1.25").unwrap(), V::Double(1.25));
        assert_eq!(V::from_text(T::String, "hi").unwrap(), s("hi"));
        assert_eq!(
            V::from_text(T::Carray, "a\0").unwrap(),
            V::Carray(b"a\0".to_vec())
        );
        assert!(V::from_text(T::String, "a\0").is_err());
        assert!(V::from_text(T::Long, "x").is_err());
    }

    #[test]
    fn error_message_names_types_value_and_reason() {
        let e = conv(s("abc"), T::Long).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot convert string value \"abc\" to long: not an integer"
        );
        let e = conv(V::Carray(vec![b'x'; 100]), T::Long).unwrap_err();
        assert!(e.to_string().contains('…'));
    }

    #[test]
    fn from_field_value_for_rust_types() {
        assert_eq!(i64::from_field_value(&s("5")).unwrap(), 5);
        assert_eq!(i32::from_field_value(&V::Double(7.9)).unwrap(), 7);
        assert!(i32::from_field_value(&V::Long(1 << 40)).is_err());
        assert_eq!(String::from_field_value(&V::Long(9)).unwrap(), "9");
        assert!(String::from_field_value(&V::String(vec![0xff])).is_err());
        assert_eq!(Vec::<u8>::from_field_value(&s("ab")).unwrap(), b"ab");
        assert_eq!(f64::from_field_value(&V::Short(2)).unwrap(), 2.0);
        assert_eq!(u8::from_field_value(&V::Long(66)).unwrap(), b'B');
        assert_eq!(f32::from_field_value(&V::Long(2)).unwrap(), 2.0);
        assert_eq!(i16::from_field_value(&V::Long(2)).unwrap(), 2);
    }
}
