//! The printed form of a FIELD buffer (`Fprint` / `Fextread` style), both ways.
//!
//! This module owns the text format: one line per occurrence, in iteration order,
//! `NAME<TAB>VALUE<LF>`. NAME is the field table name, or the key's printed form
//! `((type) number)` when the table has none. VALUE is:
//!
//! * short, long: decimal; float, double: as converted to string (see `convert.rs`);
//! * char, string, carray: the bytes, where `\` prints as `\\`, every byte of a control
//!   character or of invalid UTF-8 prints as `\hh` (two lowercase hex digits), and
//!   everything else prints as the UTF-8 text it is.
//!
//! So a value never contains a tab or a line break, and [`FieldBuffer::parse_printed`]
//! reads back exactly what [`FieldBuffer::print`] wrote (NaN payloads aside). The
//! parser skips empty lines and reports every problem with its line number. This
//! module must not guess: an unknown name or a malformed escape is an error.

use std::fmt::Write as _;

use super::convert::{format_f32, format_f64};
use super::{FieldBuffer, FieldKey, FieldTable, FieldType, FieldValue};
use crate::error::{BufferError, PrintProblem};

impl FieldBuffer {
    /// The printed form, with names from `table` (see the module documentation).
    pub fn print(&self, table: &FieldTable) -> String {
        let mut out = String::new();
        for (key, _, value) in self {
            out.push_str(&table.display_key(key));
            out.push('\t');
            print_value(value, &mut out);
            out.push('\n');
        }
        out
    }

    /// Parses the printed form back into a buffer, resolving names with `table`.
    pub fn parse_printed(text: &str, table: &FieldTable) -> Result<FieldBuffer, BufferError> {
        let mut buffer = FieldBuffer::new();
        for (index, line) in text.lines().enumerate() {
            let fail = |problem| BufferError::Print {
                line: index + 1,
                problem,
            };
            if line.is_empty() {
                continue;
            }
            let (name, printed) = line
                .split_once('\t')
                .ok_or(fail(PrintProblem::MissingTab))?;
            let key = table
                .resolve(name)
                .ok_or_else(|| fail(PrintProblem::UnknownName(name.to_owned())))?;
            let bytes =
                unescape(printed).map_err(|column| fail(PrintProblem::BadEscape { column }))?;
            let bad_value = |reason: String| fail(PrintProblem::BadValue { key, reason });
            let value = parse_value(key, bytes).map_err(bad_value)?;
            buffer
                .add(key, value)
                .map_err(|e| bad_value(e.to_string()))?;
        }
        Ok(buffer)
    }
}

/// Appends the printed value.
fn print_value(value: &FieldValue, out: &mut String) {
    match value {
        FieldValue::Short(v) => {
            let _ = write!(out, "{v}");
        }
        FieldValue::Long(v) => {
            let _ = write!(out, "{v}");
        }
        FieldValue::Float(v) => out.push_str(&format_f32(*v)),
        FieldValue::Double(v) => out.push_str(&format_f64(*v)),
        FieldValue::Char(c) => escape(&[*c], out),
        FieldValue::String(b) | FieldValue::Carray(b) => escape(b, out),
    }
}

/// Appends `bytes` with `\\` and `\hh` escapes (see the module documentation).
fn escape(bytes: &[u8], out: &mut String) {
    let hex = |b: u8, out: &mut String| {
        let _ = write!(out, "\\{b:02x}");
    };
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' {
                out.push_str("\\\\");
            } else if c.is_control() {
                let mut buf = [0u8; 4];
                for &b in c.encode_utf8(&mut buf).as_bytes() {
                    hex(b, out);
                }
            } else {
                out.push(c);
            }
        }
        for &b in chunk.invalid() {
            hex(b, out);
        }
    }
}

/// Undoes [`escape`]; on error returns the 1-based byte column of the bad backslash.
fn unescape(text: &str) -> Result<Vec<u8>, usize> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        match bytes.get(i + 1) {
            Some(b'\\') => {
                out.push(b'\\');
                i += 2;
            }
            _ => {
                let digits = bytes.get(i + 1..i + 3).ok_or(i + 1)?;
                let byte = std::str::from_utf8(digits)
                    .ok()
                    .filter(|d| d.bytes().all(|b| b.is_ascii_hexdigit()))
                    .and_then(|d| u8::from_str_radix(d, 16).ok())
                    .ok_or(i + 1)?;
                out.push(byte);
                i += 3;
            }
        }
    }
    Ok(out)
}

/// A value of the key's type from unescaped bytes.
fn parse_value(key: FieldKey, bytes: Vec<u8>) -> Result<FieldValue, String> {
    match key.field_type() {
        FieldType::Char => match bytes.as_slice() {
            [c] => Ok(FieldValue::Char(*c)),
            _ => Err(format!(
                "a char value is exactly one byte, got {}",
                bytes.len()
            )),
        },
        FieldType::String => match bytes.iter().position(|&b| b == 0) {
            Some(at) => Err(format!("NUL byte at offset {at} in a string value")),
            None => Ok(FieldValue::String(bytes)),
        },
        FieldType::Carray => Ok(FieldValue::Carray(bytes)),
        ty => FieldValue::Carray(bytes)
            .convert(ty)
            .map_err(|e| e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> FieldTable {
        FieldTable::parse(
            "AMOUNT 1 long\nRATE 2 double\nFLAG 3 char\nNAME 4 string\nBLOB 5 carray\nSMALL 6 short\nF 7 float\n",
            "t.fld",
        )
        .unwrap()
    }

    fn k(t: &FieldTable, name: &str) -> FieldKey {
        t.key_of(name).unwrap()
    }

    #[test]
    fn prints_one_line_per_occurrence() {
        let t = table();
        let mut b = FieldBuffer::new();
        b.add(k(&t, "AMOUNT"), FieldValue::Long(-5)).unwrap();
        b.add(k(&t, "AMOUNT"), FieldValue::Long(7)).unwrap();
        b.add(k(&t, "RATE"), FieldValue::Double(0.25)).unwrap();
        b.add(k(&t, "FLAG"), FieldValue::Char(b'\t')).unwrap();
        b.add(
            k(&t, "NAME"),
            FieldValue::String("a\\b ü".as_bytes().to_vec()),
        )
        .unwrap();
        b.add(
            k(&t, "BLOB"),
            FieldValue::Carray(vec![0, b'x', 0xff, b'\n']),
        )
        .unwrap();
        let unnamed = FieldKey::new(FieldType::Short, 99).unwrap();
        b.add(unnamed, FieldValue::Short(3)).unwrap();
        let text = b.print(&t);
        assert_eq!(
            text,
            "((short) 99)\t3\n\
             AMOUNT\t-5\n\
             AMOUNT\t7\n\
             FLAG\t\\09\n\
             RATE\t0.25\n\
             NAME\ta\\\\b ü\n\
             BLOB\t\\00x\\ff\\0a\n"
        );
        assert_eq!(FieldBuffer::parse_printed(&text, &t).unwrap(), b);
    }

    #[test]
    fn euc_kr_strings_print_as_hex_and_read_back() {
        let t = table();
        let mut b = FieldBuffer::new();
        b.add(k(&t, "NAME"), FieldValue::String(vec![0xc7, 0xd1]))
            .unwrap();
        let text = b.print(&t);
        assert_eq!(text, "NAME\t\\c7\\d1\n");
        assert_eq!(FieldBuffer::parse_printed(&text, &t).unwrap(), b);
    }

    #[test]
    fn parse_errors_carry_line_numbers() {
        let t = table();
        type Check = fn(&PrintProblem) -> bool;
        let cases: [(&str, usize, Check); 8] = [
            ("AMOUNT 5", 1, |p| *p == PrintProblem::MissingTab),
            ("AMOUNT\t1\n\nNOPE\t1", 3, |p| {
                matches!(p, PrintProblem::UnknownName(_))
            }),
            ("NAME\tab\\q", 1, |p| {
                *p == PrintProblem::BadEscape { column: 3 }
            }),
            ("NAME\tab\\1", 1, |p| {
                *p == PrintProblem::BadEscape { column: 3 }
            }),
            ("AMOUNT\tabc", 1, |p| {
                matches!(p, PrintProblem::BadValue { .. })
            }),
            ("FLAG\tab", 1, |p| {
                matches!(p, PrintProblem::BadValue { .. })
            }),
            ("NAME\ta\\00", 1, |p| {
                matches!(p, PrintProblem::BadValue { .. })
            }),
            ("SMALL\t70000", 1, |p| {
                matches!(p, PrintProblem::BadValue { .. })
            }),
        ];
        for (text, want_line, check) in cases {
            match FieldBuffer::parse_printed(text, &t) {
                Err(BufferError::Print { line, problem }) => {
                    assert_eq!(line, want_line, "{text}");
                    assert!(check(&problem), "{text}: {problem:?}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn keys_without_names_and_crlf() {
        let t = FieldTable::new();
        let b = FieldBuffer::parse_printed("((long) 4)\t12\r\n((float) 2)\t1.5\r\n", &t).unwrap();
        assert_eq!(
            b.get_long(FieldKey::new(FieldType::Long, 4).unwrap(), 0)
                .unwrap(),
            12
        );
        assert_eq!(b.field_count(), 2);
    }

    #[test]
    fn floats_print_round_trip() {
        let t = table();
        let mut b = FieldBuffer::new();
        for v in [0.1, -0.0, 1e300, 5e-324, f64::INFINITY] {
            b.add(k(&t, "RATE"), FieldValue::Double(v)).unwrap();
        }
        b.add(k(&t, "F"), FieldValue::Float(3.4e38)).unwrap();
        let text = b.print(&t);
        assert_eq!(FieldBuffer::parse_printed(&text, &t).unwrap(), b);
    }
}
