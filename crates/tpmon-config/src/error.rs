//! The error type of this crate.
//!
//! Owns [`ConfigError`], its classification [`ErrorKind`] and the conversion of byte
//! offsets into 1-based line and column numbers. Every error the crate returns names the
//! configuration file; every error caused by the file's content also names the line, the
//! column and, where one applies, the key path. This module never panics on an offset
//! that lies outside the text or inside a multi-byte character: such offsets are clamped.

use std::fmt;
use std::path::{Path, PathBuf};

/// What kind of problem a [`ConfigError`] reports.
///
/// Callers usually just print the error; the kind is there for programs (and tests) that
/// react differently to, say, a missing file and a bad value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The file could not be read, or its directory could not be determined.
    Read,
    /// The text is not valid TOML (or not valid UTF-8).
    Syntax,
    /// A TOML key is defined twice in the same table.
    DuplicateKey,
    /// A key that the schema does not know.
    UnknownKey,
    /// A value of the wrong TOML type (a string where an integer belongs, ...).
    WrongType,
    /// A required key is absent.
    MissingKey,
    /// A value has the right type but is not acceptable (range, syntax, relation to
    /// another value).
    InvalidValue,
    /// Two entries of the same section share a name.
    DuplicateName,
    /// A name refers to an entry that does not exist (a service naming an unknown
    /// server, a server naming an unknown group, a group naming an unknown node).
    UnknownReference,
    /// A `${VAR}` reference names an environment variable that is not set.
    UnsetVariable,
    /// A value names a feature that this version of tpmon does not support yet.
    Unsupported,
}

/// A 1-based line and column (columns count characters, not bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Position {
    /// Line number, starting at 1.
    pub line: usize,
    /// Column number in characters, starting at 1.
    pub column: usize,
}

impl Position {
    /// Converts a byte offset into `text` into a line and column.
    ///
    /// Offsets past the end are clamped to the end; offsets inside a multi-byte character
    /// are moved back to the character's start.
    pub fn from_offset(text: &str, offset: usize) -> Position {
        let mut offset = offset.min(text.len());
        while offset > 0 && !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = text.get(..offset).unwrap_or("");
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line = before.matches('\n').count() + 1;
        let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
        Position { line, column }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// An error found while loading, parsing or validating a domain configuration file.
///
/// Displays as `FILE:LINE:COLUMN: ITEM: key `KEY`: MESSAGE`, for example
///
/// ```text
/// examples/quickstart/domain.toml:14:1: server "qsrv": key `min_instances`: must be at most max_instances (4)
/// ```
///
/// The position, item and key parts are left out where they do not apply (a file that
/// cannot be read has no line; a TOML syntax error has no key).
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    // Boxed so that `Result<_, ConfigError>` stays two words wide.
    details: Box<Details>,
    #[source]
    source: Option<std::io::Error>,
}

#[derive(Debug)]
struct Details {
    kind: ErrorKind,
    file: PathBuf,
    position: Option<Position>,
    item: Option<String>,
    key: Option<String>,
    message: String,
}

impl ConfigError {
    /// Builds an error located in the file's text.
    pub(crate) fn at(
        kind: ErrorKind,
        file: &Path,
        position: Position,
        item: Option<String>,
        key: Option<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            details: Box::new(Details {
                kind,
                file: file.to_path_buf(),
                position: Some(position),
                item,
                key,
                message: message.into(),
            }),
            source: None,
        }
    }

    /// Builds an error that concerns the file as a whole (no position).
    pub(crate) fn whole_file(
        kind: ErrorKind,
        file: &Path,
        key: Option<String>,
        message: impl Into<String>,
        source: Option<std::io::Error>,
    ) -> ConfigError {
        ConfigError {
            details: Box::new(Details {
                kind,
                file: file.to_path_buf(),
                position: None,
                item: None,
                key,
                message: message.into(),
            }),
            source,
        }
    }

    /// What kind of problem this is.
    pub fn kind(&self) -> ErrorKind {
        self.details.kind
    }

    /// The configuration file, as the caller named it.
    pub fn file(&self) -> &Path {
        &self.details.file
    }

    /// Line and column of the offending text, if the error concerns a place in the file.
    pub fn position(&self) -> Option<Position> {
        self.details.position
    }

    /// The 1-based line, if the error concerns a place in the file.
    pub fn line(&self) -> Option<usize> {
        self.details.position.map(|p| p.line)
    }

    /// The 1-based column, if the error concerns a place in the file.
    pub fn column(&self) -> Option<usize> {
        self.details.position.map(|p| p.column)
    }

    /// The entry the error belongs to, e.g. `server "qsrv"` or `group #2` (an entry
    /// without a valid name is numbered from 1 in file order). `None` for the `[domain]`
    /// table and for errors that are not about one entry.
    pub fn item(&self) -> Option<&str> {
        self.details.item.as_deref()
    }

    /// The key path inside the item, e.g. `min_instances`, `env.RUST_LOG`, `args[1]`, or
    /// `domain.limits.clients_max` for keys of the `[domain]` table.
    pub fn key(&self) -> Option<&str> {
        self.details.key.as_deref()
    }

    /// The description of the problem, without file, position, item and key.
    pub fn message(&self) -> &str {
        &self.details.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = &self.details;
        write!(f, "{}", d.file.display())?;
        if let Some(position) = d.position {
            write!(f, ":{position}")?;
        }
        f.write_str(": ")?;
        if let Some(item) = &d.item {
            write!(f, "{item}: ")?;
        }
        if let Some(key) = &d.key {
            write!(f, "key `{key}`: ")?;
        }
        f.write_str(&d.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let text = "ab\nçd = 1\n";
        assert_eq!(
            Position::from_offset(text, 0),
            Position { line: 1, column: 1 }
        );
        assert_eq!(
            Position::from_offset(text, 3),
            Position { line: 2, column: 1 }
        );
        // 'd' follows the two-byte 'ç': byte 5, character column 2.
        assert_eq!(
            Position::from_offset(text, 5),
            Position { line: 2, column: 2 }
        );
    }

    #[test]
    fn offsets_out_of_range_or_inside_a_character_are_clamped() {
        let text = "ç\nx";
        assert_eq!(
            Position::from_offset(text, 1),
            Position { line: 1, column: 1 }
        );
        assert_eq!(
            Position::from_offset(text, 999),
            Position { line: 2, column: 2 }
        );
        assert_eq!(
            Position::from_offset("", 7),
            Position { line: 1, column: 1 }
        );
    }

    #[test]
    fn display_has_every_part() {
        let e = ConfigError::at(
            ErrorKind::InvalidValue,
            Path::new("examples/quickstart/domain.toml"),
            Position {
                line: 14,
                column: 1,
            },
            Some("server \"qsrv\"".into()),
            Some("min_instances".into()),
            "must be at most max_instances (4)",
        );
        assert_eq!(
            e.to_string(),
            "examples/quickstart/domain.toml:14:1: server \"qsrv\": key `min_instances`: \
             must be at most max_instances (4)"
        );
        let e = ConfigError::whole_file(
            ErrorKind::Read,
            Path::new("d.toml"),
            None,
            "cannot read configuration file",
            Some(std::io::Error::new(std::io::ErrorKind::NotFound, "gone")),
        );
        assert_eq!(
            e.to_string(),
            "d.toml: cannot read configuration file: gone"
        );
        assert!(std::error::Error::source(&e).is_some());
    }
}
