//! The one error type of this crate, [`BufferError`], and the detail enums it carries.
//!
//! This module owns the wording of every failure: each message names the problem and
//! where it happened (a byte offset for decoding, `file:line` for field tables, a line
//! number for printed buffers). It must not decide anything: callers build the errors.

use std::fmt;
use std::path::PathBuf;

use crate::field::{FieldKey, FieldType};
use crate::BufferType;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BufferError {
    /// A body received from outside does not decode.
    #[error("decoding {ty} body at byte offset {offset}: {problem}")]
    Decode {
        /// The buffer type that was being decoded.
        ty: BufferType,
        /// Offset in the body where the problem starts.
        offset: usize,
        /// What is wrong.
        problem: DecodeProblem,
    },
    /// A buffer type that has no subtype was given one.
    #[error("{ty} buffers have no subtype, got {subtype:?}")]
    UnexpectedSubtype {
        /// The buffer type.
        ty: BufferType,
        /// The subtype that came with it.
        subtype: String,
    },
    /// A STRING buffer was built from bytes that contain a NUL.
    #[error("STRING contains a NUL byte at offset {offset}")]
    NulInString {
        /// Offset of the first NUL byte.
        offset: usize,
    },
    /// A field table file is malformed.
    #[error("{at}: {problem}")]
    Table {
        /// The file and line, or the run-time definition, at fault.
        at: Origin,
        /// What is wrong.
        problem: TableProblem,
    },
    /// A field table named in FIELDTBLS was found in none of the FLDTBLDIR directories.
    #[error("field table {name:?} not found in FLDTBLDIR directories {dirs:?}")]
    TableNotFound {
        /// The name from FIELDTBLS.
        name: String,
        /// The directories searched, in order.
        dirs: Vec<PathBuf>,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file (or stream) concerned.
        path: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A field number outside 1..=2^25-1, or a raw key that is not a valid key.
    #[error("invalid field number {number}: must be between 1 and {max}", max = crate::limits::FIELD_NUMBER_MAX)]
    InvalidFieldNumber {
        /// The number given.
        number: u64,
    },
    /// Text that should be a printed key `((type) number)` is not one.
    #[error("invalid field key {text:?}: expected ((type) number)")]
    InvalidKeyText {
        /// The text.
        text: String,
    },
    /// A value of one type was put into a field of another.
    #[error("field {key} holds {expected} values, got a {found} value")]
    TypeMismatch {
        /// The key written to.
        key: FieldKey,
        /// The type the key encodes.
        expected: FieldType,
        /// The type of the value given.
        found: FieldType,
    },
    /// A string field value contains a NUL byte.
    #[error("string value for field {key} contains a NUL byte at offset {offset}")]
    NulInFieldString {
        /// The key written to.
        key: FieldKey,
        /// Offset of the first NUL byte in the value.
        offset: usize,
    },
    /// The requested occurrence of a field does not exist.
    #[error("field {key} occurrence {occurrence} is not present")]
    NotPresent {
        /// The key.
        key: FieldKey,
        /// The occurrence asked for (0-based).
        occurrence: usize,
    },
    /// An insert or update names an occurrence past the end.
    #[error("field {key} has {count} occurrences; occurrence {occurrence} is past the end")]
    OccurrenceOutOfRange {
        /// The key.
        key: FieldKey,
        /// The occurrence asked for (0-based).
        occurrence: usize,
        /// How many occurrences the key has.
        count: usize,
    },
    /// A field would get more occurrences than the limit allows.
    #[error("field {key} would have more than {max} occurrences")]
    TooManyOccurrences {
        /// The key.
        key: FieldKey,
        /// The limit.
        max: usize,
    },
    /// A FIELD buffer would grow past its size limit.
    #[error("FIELD buffer would be {bytes} bytes, over the limit of {max} bytes")]
    FieldBufferTooLarge {
        /// The size it would have had.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// A value cannot be converted to another field type.
    #[error("cannot convert {from} value {value} to {to}: {reason}")]
    Conversion {
        /// The type of the value.
        from: FieldType,
        /// The type asked for.
        to: FieldType,
        /// The value, printed (shortened when long).
        value: String,
        /// Why not.
        reason: &'static str,
    },
    /// Printed field-buffer text does not parse.
    #[error("line {line} of printed field buffer: {problem}")]
    Print {
        /// Line number, counting from 1.
        line: usize,
        /// What is wrong.
        problem: PrintProblem,
    },
    /// A buffer of one type was used where another was required.
    #[error("expected a {expected} buffer, got {found}")]
    WrongBufferType {
        /// The type required.
        expected: BufferType,
        /// The type given.
        found: BufferType,
    },
    /// A record name (RECORD subtype) is not acceptable.
    #[error("invalid record name {name:?}: {reason}")]
    InvalidRecordName {
        /// The name.
        name: String,
        /// Why not.
        reason: &'static str,
    },
    /// A RECORD buffer holds a different record than the one asked for.
    #[error("expected record {expected:?}, got record {found:?}")]
    RecordNameMismatch {
        /// The name asked for.
        expected: String,
        /// The name in the buffer.
        found: String,
    },
    /// A value could not be serialized as a record.
    #[error("encoding record {name:?}: {message}")]
    RecordEncode {
        /// The record name.
        name: String,
        /// What serde or the format reported.
        message: String,
    },
}

/// What is wrong with a body being decoded (see [`BufferError::Decode`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeProblem {
    /// The body ends in the middle of something.
    #[error("truncated {what}: need {needed} bytes, {available} left")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Bytes needed.
        needed: usize,
        /// Bytes left.
        available: usize,
    },
    /// Bytes follow the end of the encoded value.
    #[error("{count} trailing bytes after the end of the body")]
    TrailingBytes {
        /// How many.
        count: usize,
    },
    /// The body is bigger than the limit.
    #[error("body of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Body length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The entry count cannot be right: the rest of the body is too short for it.
    #[error("entry count {count} needs at least {needed} more bytes, {available} left")]
    ImpossibleCount {
        /// The count read.
        count: u64,
        /// The minimum bytes that many entries take.
        needed: u64,
        /// Bytes left.
        available: usize,
    },
    /// A field key carries a type code this crate does not know.
    #[error("field key {key:#010x} has unknown type code {code}")]
    UnknownFieldType {
        /// The raw key.
        key: u32,
        /// Its type code (top 7 bits).
        code: u32,
    },
    /// A field key has field number 0.
    #[error("field key {key:#010x} has field number 0")]
    FieldNumberZero {
        /// The raw key.
        key: u32,
    },
    /// Field entries are not in ascending key order.
    #[error("field key {key} follows {previous}: entries must be in ascending key order")]
    KeyOutOfOrder {
        /// The key read.
        key: FieldKey,
        /// The key before it.
        previous: FieldKey,
    },
    /// A NUL byte where none is allowed.
    #[error("NUL byte in {what}")]
    NulByte {
        /// What contains it.
        what: &'static str,
    },
    /// A field has more occurrences than the limit.
    #[error("field {key} has more than {max} occurrences")]
    TooManyOccurrences {
        /// The key.
        key: FieldKey,
        /// The limit.
        max: usize,
    },
    /// A record starts with a format version this crate does not know.
    #[error("unsupported record format version {version}")]
    UnsupportedVersion {
        /// The version byte.
        version: u8,
    },
    /// A boolean byte other than 0 or 1.
    #[error("invalid bool byte {byte}")]
    InvalidBool {
        /// The byte.
        byte: u8,
    },
    /// An option tag other than 0 or 1.
    #[error("invalid option tag {byte}")]
    InvalidOptionTag {
        /// The byte.
        byte: u8,
    },
    /// A `char` that is not a Unicode scalar value.
    #[error("invalid char {value:#x}")]
    InvalidChar {
        /// The value read.
        value: u32,
    },
    /// Text that should be UTF-8 is not.
    #[error("{what} is not valid UTF-8")]
    InvalidUtf8 {
        /// What was being read.
        what: &'static str,
    },
    /// Records nest deeper than the limit.
    #[error("record nests deeper than {max} levels")]
    DepthLimit {
        /// The limit.
        max: usize,
    },
    /// Records declare more sequence/map elements than the limit.
    #[error("record declares more than {max} sequence and map elements")]
    ElementLimit {
        /// The limit.
        max: usize,
    },
    /// A sequence declared more elements than the reader took.
    #[error("{count} sequence elements left unread")]
    UnreadElements {
        /// How many.
        count: usize,
    },
    /// The target type asked for something the record format cannot provide.
    #[error("{what} needs a self-describing format; the record format is not one")]
    NotSelfDescribing {
        /// What was asked for.
        what: &'static str,
    },
    /// The target type rejected the data (a serde message).
    #[error("{0}")]
    Record(String),
}

/// What is wrong with a field table line (see [`BufferError::Table`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum TableProblem {
    /// The line lacks a column.
    #[error("missing {column} column (expected NAME NUMBER TYPE [FLAGS] [COMMENT])")]
    MissingColumn {
        /// The column's name.
        column: &'static str,
    },
    /// A field name that is not an identifier or is too long.
    #[error("invalid field name {name:?}: {reason}")]
    BadName {
        /// The name.
        name: String,
        /// Why not.
        reason: &'static str,
    },
    /// The number column is not a decimal number.
    #[error("invalid field number {text:?}")]
    BadNumber {
        /// The text.
        text: String,
    },
    /// The number, after adding the base, is outside 1..=2^25-1.
    #[error("field number {number} (base included) is outside 1..={max}", max = crate::limits::FIELD_NUMBER_MAX)]
    NumberOutOfRange {
        /// The number with the base added.
        number: u64,
    },
    /// The type column names no known field type.
    #[error(
        "unknown field type {name:?} (expected short, long, char, float, double, string or carray)"
    )]
    UnknownType {
        /// The text.
        name: String,
    },
    /// A `*` directive other than `*base N`.
    #[error("invalid directive {text:?} (expected \"*base N\")")]
    BadDirective {
        /// The line.
        text: String,
    },
    /// A name defined twice with different keys.
    #[error("field name {name} already defined as {first_key} at {first}")]
    DuplicateName {
        /// The name.
        name: String,
        /// The key of the first definition.
        first_key: FieldKey,
        /// Where the first definition is.
        first: Origin,
    },
    /// A number given to two different names.
    #[error("field number {number} of {name} already belongs to {other} at {first}")]
    DuplicateNumber {
        /// The number.
        number: u32,
        /// The name on this line.
        name: String,
        /// The name it already belongs to.
        other: String,
        /// Where that definition is.
        first: Origin,
    },
}

/// What is wrong with a line of printed field-buffer text (see [`BufferError::Print`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PrintProblem {
    /// No tab separates the name from the value.
    #[error("expected NAME<TAB>VALUE")]
    MissingTab,
    /// The name is neither in the field table nor a `((type) number)` key.
    #[error("unknown field name {0:?}")]
    UnknownName(String),
    /// A backslash not followed by `\` or two hex digits.
    #[error("invalid escape at column {column} (expected \\\\ or \\hh)")]
    BadEscape {
        /// Byte column of the backslash in the value, counting from 1.
        column: usize,
    },
    /// The value does not fit the field's type.
    #[error("bad value for {key}: {reason}")]
    BadValue {
        /// The field.
        key: FieldKey,
        /// Why.
        reason: String,
    },
}

/// Where a field definition came from: a line of a field table file, or a call to
/// [`crate::FieldTable::define`] at run time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Origin {
    /// Line `line` (from 1) of the file `file`.
    File {
        /// The file name as given to the parser.
        file: String,
        /// Line number, counting from 1.
        line: usize,
    },
    /// Defined by a program at run time.
    Runtime,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { file, line } => write!(f, "{file}:{line}"),
            Origin::Runtime => f.write_str("run-time definition"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_error_names_type_offset_and_problem() {
        let e = BufferError::Decode {
            ty: BufferType::Field,
            offset: 12,
            problem: DecodeProblem::Truncated {
                what: "long value",
                needed: 8,
                available: 3,
            },
        };
        assert_eq!(
            e.to_string(),
            "decoding FIELD body at byte offset 12: truncated long value: need 8 bytes, 3 left"
        );
    }

    #[test]
    fn table_error_names_file_and_line() {
        let e = BufferError::Table {
            at: Origin::File {
                file: "bank.fld".into(),
                line: 7,
            },
            problem: TableProblem::UnknownType { name: "int".into() },
        };
        assert!(e
            .to_string()
            .starts_with("bank.fld:7: unknown field type \"int\""));
    }
}
