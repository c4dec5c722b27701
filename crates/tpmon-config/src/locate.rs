//! From TOML text to the raw structures, with errors that point into the file.
//!
//! Owns the two TOML steps: parsing the text into a spanned document tree (syntax
//! errors, duplicate keys) and deserializing that tree into [`RawFile`] (unknown keys,
//! wrong types). The `toml` crate reports both kinds of error with a byte span only; this
//! module turns the span into a line and column and recovers the key path (for example
//! `server "qsrv"`, key `min_instances`) by searching the document tree for the key or
//! value at that offset. It never panics on what the tree or the error contains: a span
//! that matches nothing yields an error without a key path.

use std::ops::Range;
use std::path::Path;

use serde::Deserialize;
use serde_spanned::Spanned;
use toml::de::{DeTable, DeValue};

use crate::error::{ConfigError, ErrorKind, Position};
use crate::raw::RawFile;

/// The sections that are arrays of named tables; errors inside them are reported per
/// entry (`server "qsrv"`).
const NAMED_SECTIONS: [&str; 4] = ["node", "group", "server", "service"];

/// One step of a key path.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// Parses `text` into the raw structures.
pub(crate) fn parse_raw(text: &str, source: &Path) -> Result<RawFile, ConfigError> {
    let (tree, errors) = DeTable::parse_recoverable(text);
    if let Some(first) = errors
        .into_iter()
        .min_by_key(|e| e.span().map_or(0, |s| s.start))
    {
        return Err(parse_error(text, source, tree.get_ref(), &first));
    }
    let root = tree.get_ref().clone();
    RawFile::deserialize(toml::de::Deserializer::from(tree))
        .map_err(|e| deserialize_error(text, source, &root, &e))
}

/// Converts an error of the TOML parser (syntax, duplicate key).
fn parse_error(text: &str, source: &Path, root: &DeTable<'_>, e: &toml::de::Error) -> ConfigError {
    let span = e.span().unwrap_or(0..0);
    let position = Position::from_offset(text, span.start);
    if e.message().starts_with("duplicate key") {
        let written = text.get(span.clone()).unwrap_or("");
        let name = unquote(written);
        let mut first: Option<(Vec<Seg>, usize)> = None;
        walk(root, &mut Vec::new(), &mut |path, key_span, _| {
            let Some(key_span) = key_span else { return };
            let before = key_span.start < span.start;
            let later = first.as_ref().is_none_or(|(_, s)| key_span.start > *s);
            if before && later && path.last() == Some(&Seg::Key(name.to_string())) {
                first = Some((path.to_vec(), key_span.start));
            }
        });
        if let Some((path, start)) = first {
            let (item, key) = describe(root, &path);
            let line = Position::from_offset(text, start).line;
            return ConfigError::at(
                ErrorKind::DuplicateKey,
                source,
                position,
                item,
                key,
                format!("duplicate key (first defined at line {line})"),
            );
        }
        // A `[table]` header given twice: the parser keeps only the second header's key,
        // so the first one is found in the text.
        if let Some((header, line)) = earlier_header(text, position.line) {
            return ConfigError::at(
                ErrorKind::DuplicateKey,
                source,
                position,
                None,
                Some(header),
                format!("duplicate key (first defined at line {line})"),
            );
        }
        return ConfigError::at(
            ErrorKind::DuplicateKey,
            source,
            position,
            None,
            Some(name.to_string()),
            "duplicate key",
        );
    }
    ConfigError::at(ErrorKind::Syntax, source, position, None, None, e.message())
}

/// Converts an error of the deserializer (unknown key, wrong type).
fn deserialize_error(
    text: &str,
    source: &Path,
    root: &DeTable<'_>,
    e: &toml::de::Error,
) -> ConfigError {
    let Some(span) = e.span() else {
        return ConfigError::at(
            ErrorKind::WrongType,
            source,
            Position { line: 1, column: 1 },
            None,
            None,
            e.message(),
        );
    };
    let path = path_at(root, span.start);
    let (item, key) = describe(root, &path);
    let (kind, message) = humanize(e.message());
    ConfigError::at(
        kind,
        source,
        Position::from_offset(text, span.start),
        item,
        key,
        message,
    )
}

/// Classifies a serde message and rewords it in TOML terms.
fn humanize(message: &str) -> (ErrorKind, String) {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        // "unknown field `x`, expected one of `a`, `b`" -> "unknown key, expected one of ..."
        let tail = rest.split_once("`, ").map_or("", |(_, tail)| tail);
        let message = if tail.is_empty() || tail.starts_with("there are no fields") {
            "unknown key".to_string()
        } else {
            format!("unknown key, {tail}")
        };
        return (ErrorKind::UnknownKey, message);
    }
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        let (found, expected) = rest.rsplit_once(", expected ").unwrap_or((rest, ""));
        let found = match found {
            "sequence" => "array",
            "map" => "table",
            other => other,
        };
        let expected = match expected {
            "i64" => "an integer",
            "a sequence" => "an array",
            "a map" => "a table",
            other => other,
        };
        let message = if expected.is_empty() {
            format!("wrong type: {found}")
        } else {
            format!("wrong type: {found}, expected {expected}")
        };
        return (ErrorKind::WrongType, message);
    }
    if message.starts_with("missing field") {
        return (ErrorKind::MissingKey, message.to_string());
    }
    (ErrorKind::InvalidValue, message.to_string())
}

/// If line `line` (1-based) is a `[table]` header, the header's key path and the line of
/// an earlier, identical header.
fn earlier_header(text: &str, line: usize) -> Option<(String, usize)> {
    let header = |l: &str| -> Option<String> {
        let l = l.split('#').next().unwrap_or("").trim();
        let inner = l.strip_prefix('[')?.strip_suffix(']')?;
        if inner.starts_with('[') {
            return None;
        }
        Some(inner.chars().filter(|c| !c.is_whitespace()).collect())
    };
    let lines: Vec<&str> = text.lines().collect();
    let wanted = header(lines.get(line.checked_sub(1)?)?)?;
    let first = lines
        .iter()
        .take(line - 1)
        .position(|l| header(l).as_deref() == Some(wanted.as_str()))?;
    Some((wanted, first + 1))
}

/// Strips TOML quotes from a key as written.
fn unquote(written: &str) -> &str {
    let trimmed = written.trim();
    for quote in ['"', '\''] {
        if let Some(inner) = trimmed
            .strip_prefix(quote)
            .and_then(|s| s.strip_suffix(quote))
        {
            return inner;
        }
    }
    trimmed
}

/// Callback of [`walk`]: path to the value, span of its key (`None` for array elements),
/// and the value.
type Visitor<'v> = dyn FnMut(&[Seg], Option<Range<usize>>, &Spanned<DeValue<'_>>) + 'v;

/// Visits every key/value pair and array element of the tree, depth first.
///
/// The callback gets the path to the value, the span of its key (`None` for array
/// elements) and the value.
fn walk(table: &DeTable<'_>, path: &mut Vec<Seg>, visit: &mut Visitor<'_>) {
    for (key, value) in table.iter() {
        path.push(Seg::Key(key.get_ref().to_string()));
        visit(path, Some(key.span()), value);
        walk_value(value, path, visit);
        path.pop();
    }
}

fn walk_value(value: &Spanned<DeValue<'_>>, path: &mut Vec<Seg>, visit: &mut Visitor<'_>) {
    match value.get_ref() {
        DeValue::Table(table) => walk(table, path, visit),
        DeValue::Array(array) => {
            for (index, element) in array.iter().enumerate() {
                path.push(Seg::Index(index));
                visit(path, None, element);
                walk_value(element, path, visit);
                path.pop();
            }
        }
        _ => {}
    }
}

/// The path of the deepest key or value whose span contains `offset`.
fn path_at(root: &DeTable<'_>, offset: usize) -> Vec<Seg> {
    let contains = |span: &Range<usize>| {
        (span.start <= offset && offset < span.end) || (span.is_empty() && span.start == offset)
    };
    let mut best: Vec<Seg> = Vec::new();
    walk(root, &mut Vec::new(), &mut |path, key_span, value| {
        let hit = key_span.as_ref().is_some_and(contains) || contains(&value.span());
        if hit && path.len() >= best.len() {
            best = path.to_vec();
        }
    });
    best
}

/// Splits a path into the entry it belongs to and the key path inside it.
fn describe(root: &DeTable<'_>, path: &[Seg]) -> (Option<String>, Option<String>) {
    if let [Seg::Key(section), Seg::Index(index), rest @ ..] = path {
        if NAMED_SECTIONS.contains(&section.as_str()) {
            let item = Some(entry_label(root, section, *index));
            let key = (!rest.is_empty()).then(|| join(rest));
            return (item, key);
        }
    }
    (None, (!path.is_empty()).then(|| join(path)))
}

/// `server "qsrv"` if the entry has a string name, else `server #2`.
fn entry_label(root: &DeTable<'_>, section: &str, index: usize) -> String {
    let name = root
        .iter()
        .find(|(k, _)| k.get_ref() == section)
        .and_then(|(_, v)| v.get_ref().as_array())
        .and_then(|a| a.get(index))
        .and_then(|e| e.get_ref().as_table())
        .and_then(|t| t.iter().find(|(k, _)| k.get_ref() == "name"))
        .and_then(|(_, v)| v.get_ref().as_str().map(str::to_string));
    crate::validate::label(section, index, name.as_deref())
}

fn join(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Seg::Index(index) => out.push_str(&format!("[{index}]")),
        }
    }
    out
}
