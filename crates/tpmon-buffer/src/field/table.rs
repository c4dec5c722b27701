//! [`FieldTable`]: field names ↔ keys, read from Tuxedo-style field table files.
//!
//! This module owns the text format of field tables and the name/key/number mapping.
//! It must not read environment variables (see `env.rs`) and must not accept a table
//! that maps one name to two keys or one number to two names: such a table would make
//! two programs disagree about what a buffer means.
//!
//! File format, one definition per line:
//!
//! ```text
//! # comment (also blank lines)
//! $ lines starting with $ are C-header passthrough, ignored here
//! *base 1000
//! NAME    NUMBER  TYPE    [FLAGS]  [COMMENT...]
//! ACCOUNT 1       long    -        account number, becomes field 1001
//! ```
//!
//! `*base N` adds N to the numbers of the definitions that follow it in the same file
//! (each file starts at base 0). NAME is an identifier (letter or `_`, then letters,
//! digits or `_`) of at most [`FIELD_NAME_BYTES_MAX`] bytes. TYPE is `short`, `long`,
//! `char`, `float`, `double`, `string` or `carray` (any case). FLAGS and COMMENT are
//! ignored. Defining the same name with the same key twice is allowed (two tables that
//! share a definition); a name with two keys, or one number for two names (whatever
//! the types), is an error that names both places.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::{FieldKey, FieldType};
use crate::error::{BufferError, Origin, TableProblem};
use crate::limits::{FIELD_NAME_BYTES_MAX, FIELD_NUMBER_MAX};

/// One field definition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldDef {
    /// The field name.
    pub name: String,
    /// Its key (type and number).
    pub key: FieldKey,
    /// Where it was defined.
    pub origin: Origin,
}

/// A set of field definitions: name ↔ key ↔ number ↔ type.
#[derive(Clone, Debug, Default)]
pub struct FieldTable {
    defs: BTreeMap<FieldKey, FieldDef>,
    by_name: HashMap<String, FieldKey>,
    by_number: HashMap<u32, FieldKey>,
}

impl FieldTable {
    /// An empty table.
    pub fn new() -> FieldTable {
        FieldTable::default()
    }

    /// Parses one field table file's text; `file_name` is used in error messages.
    pub fn parse(text: &str, file_name: &str) -> Result<FieldTable, BufferError> {
        let mut table = FieldTable::new();
        table.add_text(text, file_name)?;
        Ok(table)
    }

    /// Reads the field table files `paths`, in order, into one table.
    pub fn load<I, P>(paths: I) -> Result<FieldTable, BufferError>
    where
        I: IntoIterator<Item = P>,
        P: AsRef<Path>,
    {
        let mut table = FieldTable::new();
        for path in paths {
            table.load_file(path.as_ref())?;
        }
        Ok(table)
    }

    /// Adds the definitions of the field table file at `path`. Bytes that are not UTF-8
    /// (legacy comments in EUC-KR, say) are replaced; names must be ASCII anyway.
    pub fn load_file(&mut self, path: &Path) -> Result<(), BufferError> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| BufferError::Io {
            path: shown.clone(),
            source,
        })?;
        self.add_text(&String::from_utf8_lossy(&bytes), &shown)
    }

    /// Adds the definitions in `text` (one file's content; `file_name` is used in error
    /// messages). On error the table is left unchanged.
    pub fn add_text(&mut self, text: &str, file_name: &str) -> Result<(), BufferError> {
        // Parse into a copy so that a bad line leaves `self` as it was.
        let mut next = self.clone();
        let mut base: u64 = 0;
        for (index, line) in text.lines().enumerate() {
            let at = Origin::File {
                file: file_name.to_owned(),
                line: index + 1,
            };
            let fail = |problem| BufferError::Table {
                at: at.clone(),
                problem,
            };
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with('$') {
                continue;
            }
            if trimmed.starts_with('*') {
                base = parse_base(trimmed).map_err(fail)?;
                continue;
            }
            let mut columns = trimmed.split_whitespace();
            let name = columns.next().unwrap_or_default();
            let number = columns
                .next()
                .ok_or(TableProblem::MissingColumn { column: "NUMBER" })
                .map_err(fail)?;
            let ty = columns
                .next()
                .ok_or(TableProblem::MissingColumn { column: "TYPE" })
                .map_err(fail)?;
            check_name(name).map_err(fail)?;
            let number = parse_number(number, base).map_err(fail)?;
            let ty = FieldType::from_name(ty)
                .ok_or_else(|| TableProblem::UnknownType {
                    name: ty.to_owned(),
                })
                .map_err(fail)?;
            let key = FieldKey::new(ty, number)
                .map_err(|_| TableProblem::NumberOutOfRange {
                    number: u64::from(number),
                })
                .map_err(fail)?;
            next.insert(name, key, at.clone())?;
        }
        *self = next;
        Ok(())
    }

    /// Defines `name` as `key` at run time (the "create keys at run time" operation).
    pub fn define(&mut self, name: &str, key: FieldKey) -> Result<(), BufferError> {
        check_name(name).map_err(|problem| BufferError::Table {
            at: Origin::Runtime,
            problem,
        })?;
        self.insert(name, key, Origin::Runtime)
    }

    fn insert(&mut self, name: &str, key: FieldKey, origin: Origin) -> Result<(), BufferError> {
        if let Some(&first_key) = self.by_name.get(name) {
            if first_key == key {
                return Ok(());
            }
            let first = self.origin_of(first_key);
            return Err(BufferError::Table {
                at: origin,
                problem: TableProblem::DuplicateName {
                    name: name.to_owned(),
                    first_key,
                    first,
                },
            });
        }
        if let Some(&other_key) = self.by_number.get(&key.number()) {
            let (other, first) = match self.defs.get(&other_key) {
                Some(def) => (def.name.clone(), def.origin.clone()),
                None => (String::new(), Origin::Runtime),
            };
            return Err(BufferError::Table {
                at: origin,
                problem: TableProblem::DuplicateNumber {
                    number: key.number(),
                    name: name.to_owned(),
                    other,
                    first,
                },
            });
        }
        self.by_name.insert(name.to_owned(), key);
        self.by_number.insert(key.number(), key);
        self.defs.insert(
            key,
            FieldDef {
                name: name.to_owned(),
                key,
                origin,
            },
        );
        Ok(())
    }

    fn origin_of(&self, key: FieldKey) -> Origin {
        self.defs
            .get(&key)
            .map(|d| d.origin.clone())
            .unwrap_or(Origin::Runtime)
    }

    /// The key of the field called `name`.
    pub fn key_of(&self, name: &str) -> Option<FieldKey> {
        self.by_name.get(name).copied()
    }

    /// The name of the field with key `key`.
    pub fn name_of(&self, key: FieldKey) -> Option<&str> {
        self.defs.get(&key).map(|d| d.name.as_str())
    }

    /// The type of the field called `name`.
    pub fn type_of(&self, name: &str) -> Option<FieldType> {
        self.key_of(name).map(FieldKey::field_type)
    }

    /// The key of the field with number `number` (whatever its type).
    pub fn key_of_number(&self, number: u32) -> Option<FieldKey> {
        self.by_number.get(&number).copied()
    }

    /// The definition of the field called `name`.
    pub fn get(&self, name: &str) -> Option<&FieldDef> {
        self.key_of(name).and_then(|k| self.defs.get(&k))
    }

    /// The definition of the field with key `key`.
    pub fn def_of(&self, key: FieldKey) -> Option<&FieldDef> {
        self.defs.get(&key)
    }

    /// Resolves `text` as a field name, or else as a printed key `((type) number)`.
    pub fn resolve(&self, text: &str) -> Option<FieldKey> {
        self.key_of(text).or_else(|| text.parse().ok())
    }

    /// The name of `key`, or its printed form `((type) number)` if it has none.
    pub fn display_key(&self, key: FieldKey) -> String {
        match self.name_of(key) {
            Some(name) => name.to_owned(),
            None => key.to_string(),
        }
    }

    /// The definitions in key order.
    pub fn iter(&self) -> impl Iterator<Item = &FieldDef> + '_ {
        self.defs.values()
    }

    /// Number of definitions.
    pub fn len(&self) -> usize {
        self.defs.len()
    }

    /// Whether the table has no definitions.
    pub fn is_empty(&self) -> bool {
        self.defs.is_empty()
    }
}

impl<'a> IntoIterator for &'a FieldTable {
    type Item = &'a FieldDef;
    type IntoIter = std::collections::btree_map::Values<'a, FieldKey, FieldDef>;

    fn into_iter(self) -> Self::IntoIter {
        self.defs.values()
    }
}

/// Parses `*base N`.
fn parse_base(line: &str) -> Result<u64, TableProblem> {
    let bad = || TableProblem::BadDirective {
        text: line.to_owned(),
    };
    let mut words = line.split_whitespace();
    if words.next() != Some("*base") {
        return Err(bad());
    }
    let value = words.next().ok_or_else(bad)?;
    if words.next().is_some() {
        return Err(bad());
    }
    let base = parse_decimal(value).ok_or_else(bad)?;
    if base > u64::from(FIELD_NUMBER_MAX) {
        return Err(TableProblem::NumberOutOfRange { number: base });
    }
    Ok(base)
}

/// Parses the NUMBER column and adds the base.
fn parse_number(text: &str, base: u64) -> Result<u32, TableProblem> {
    let relative = parse_decimal(text).ok_or_else(|| TableProblem::BadNumber {
        text: text.to_owned(),
    })?;
    let number = relative.saturating_add(base);
    match u32::try_from(number) {
        Ok(n) if (1..=FIELD_NUMBER_MAX).contains(&n) => Ok(n),
        _ => Err(TableProblem::NumberOutOfRange { number }),
    }
}

/// A decimal number of plain ASCII digits; saturates instead of overflowing so that a
/// huge number is reported as out of range rather than as malformed.
fn parse_decimal(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.bytes().fold(0u64, |n, b| {
        n.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    }))
}

// The "longer than 30 bytes" message below spells the limit out.
const _: () = assert!(FIELD_NAME_BYTES_MAX == 30);

/// Checks that `name` is an identifier of acceptable length.
fn check_name(name: &str) -> Result<(), TableProblem> {
    let bad = |reason| TableProblem::BadName {
        name: name.to_owned(),
        reason,
    };
    let mut bytes = name.bytes();
    match bytes.next() {
        None => return Err(bad("empty")),
        Some(b) if b.is_ascii_alphabetic() || b == b'_' => {}
        Some(_) => return Err(bad("must start with a letter or '_'")),
    }
    if !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(bad("only letters, digits and '_' are allowed"));
    }
    if name.len() > FIELD_NAME_BYTES_MAX {
        return Err(bad("longer than 30 bytes"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BANK: &str = "\
# bank fields
$ /* passed to the C header */

*base 1000
ACCOUNT_ID   1   long    -   the account
NAME         2   string  -
BALANCE      3   double
*base 2000
FLAG         1   char    -   one byte
RAW          2   CARRAY
";

    fn problem(e: BufferError) -> (String, usize, TableProblem) {
        match e {
            BufferError::Table {
                at: Origin::File { file, line },
                problem,
            } => (file, line, problem),
            other => panic!("unexpected error {other}"),
        }
    }

    #[test]
    fn parses_definitions_with_base() {
        let t = FieldTable::parse(BANK, "bank.fld").unwrap();
        assert_eq!(t.len(), 5);
        let id = t.key_of("ACCOUNT_ID").unwrap();
        assert_eq!(id.number(), 1001);
        assert_eq!(id.field_type(), FieldType::Long);
        assert_eq!(t.name_of(id), Some("ACCOUNT_ID"));
        assert_eq!(t.type_of("RAW"), Some(FieldType::Carray));
        assert_eq!(t.key_of("FLAG").unwrap().number(), 2001);
        assert_eq!(t.key_of_number(1003), t.key_of("BALANCE"));
        assert_eq!(
            t.get("NAME").unwrap().origin,
            Origin::File {
                file: "bank.fld".into(),
                line: 6
            }
        );
        let names: Vec<_> = t.iter().map(|d| d.name.as_str()).collect();
        // Key order: type code first (long 1, char 2, double 4, string 5, carray 6).
        assert_eq!(names, ["ACCOUNT_ID", "FLAG", "BALANCE", "NAME", "RAW"]);
    }

    #[test]
    fn unknown_type_names_file_and_line() {
        let (file, line, p) =
            problem(FieldTable::parse("A 1 long\nB 2 int\n", "x.fld").unwrap_err());
        assert_eq!((file.as_str(), line), ("x.fld", 2));
        assert_eq!(p, TableProblem::UnknownType { name: "int".into() });
    }

    #[test]
    fn bad_numbers_are_reported() {
        for (text, want_line) in [
            ("A x long", 1),
            ("\n\nA -3 long", 3),
            ("A 0 long", 1),
            ("A 33554432 long", 1),
            ("*base 33554431\nA 1 long", 2),
            ("A 99999999999999999999999 long", 1),
        ] {
            let (_, line, p) = problem(FieldTable::parse(text, "t").unwrap_err());
            assert_eq!(line, want_line, "{text}");
            assert!(
                matches!(
                    p,
                    TableProblem::BadNumber { .. } | TableProblem::NumberOutOfRange { .. }
                ),
                "{p:?}"
            );
        }
    }

    #[test]
    fn missing_columns_and_bad_names_and_directives() {
        let (_, line, p) = problem(FieldTable::parse("A", "t").unwrap_err());
        assert_eq!(
            (line, p),
            (1, TableProblem::MissingColumn { column: "NUMBER" })
        );
        let (_, _, p) = problem(FieldTable::parse("A 1", "t").unwrap_err());
        assert_eq!(p, TableProblem::MissingColumn { column: "TYPE" });
        let (_, _, p) = problem(FieldTable::parse("1A 1 long", "t").unwrap_err());
        assert!(matches!(p, TableProblem::BadName { .. }));
        let (_, _, p) = problem(FieldTable::parse("A-B 1 long", "t").unwrap_err());
        assert!(matches!(p, TableProblem::BadName { .. }));
        let long = format!("{} 1 long", "N".repeat(31));
        let (_, _, p) = problem(FieldTable::parse(&long, "t").unwrap_err());
        assert!(matches!(p, TableProblem::BadName { .. }));
        for d in ["*base", "*base x", "*bass 3", "*base 1 2"] {
            let (_, _, p) = problem(FieldTable::parse(d, "t").unwrap_err());
            assert!(matches!(p, TableProblem::BadDirective { .. }), "{d}");
        }
    }

    #[test]
    fn duplicate_name_names_both_places() {
        let e = FieldTable::parse("A 1 long\nB 2 long\nA 3 long\n", "d.fld").unwrap_err();
        assert_eq!(
            e.to_string(),
            "d.fld:3: field name A already defined as ((long) 1) at d.fld:1"
        );
        // Same name, same number, other type: still two keys for one name.
        let (_, line, p) = problem(FieldTable::parse("A 1 long\nA 1 short\n", "d").unwrap_err());
        assert_eq!(line, 2);
        assert!(matches!(p, TableProblem::DuplicateName { .. }));
    }

    #[test]
    fn duplicate_number_names_both_places() {
        let e = FieldTable::parse("A 1 long\n*base 0\nB 1 string\n", "d.fld").unwrap_err();
        assert_eq!(
            e.to_string(),
            "d.fld:3: field number 1 of B already belongs to A at d.fld:1"
        );
    }

    #[test]
    fn identical_redefinition_across_files_is_fine() {
        let mut t = FieldTable::parse("A 1 long", "one.fld").unwrap();
        t.add_text("A 1 long\nB 2 short", "two.fld").unwrap();
        assert_eq!(t.len(), 2);
        // The base does not leak from one file into the next.
        let mut t = FieldTable::parse("*base 100\nA 1 long", "one.fld").unwrap();
        t.add_text("B 1 long", "two.fld").unwrap();
        assert_eq!(t.key_of("B").unwrap().number(), 1);
    }

    #[test]
    fn a_failed_add_leaves_the_table_unchanged() {
        let mut t = FieldTable::parse("A 1 long", "one.fld").unwrap();
        assert!(t.add_text("B 2 long\nC x long", "two.fld").is_err());
        assert_eq!(t.len(), 1);
        assert_eq!(t.key_of("B"), None);
    }

    #[test]
    fn runtime_definitions_and_resolution() {
        let mut t = FieldTable::new();
        let k = FieldKey::new(FieldType::Short, 7).unwrap();
        t.define("SEVEN", k).unwrap();
        assert_eq!(t.resolve("SEVEN"), Some(k));
        assert_eq!(t.resolve("((short) 7)"), Some(k));
        assert_eq!(t.resolve("NOPE"), None);
        assert_eq!(t.display_key(k), "SEVEN");
        let other = FieldKey::new(FieldType::Long, 8).unwrap();
        assert_eq!(t.display_key(other), "((long) 8)");
        let e = t.define("SEVEN", other).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("run-time definition: field name SEVEN"));
        assert!(t.define("bad name", other).is_err());
    }

    #[test]
    fn windows_line_endings_and_indentation() {
        let t = FieldTable::parse("  A 1 long\r\n\t# c\r\nB 2 short\r\n", "w").unwrap();
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn load_reads_files_and_reports_missing_ones() {
        let dir = std::env::temp_dir().join(format!("tpmon-buffer-table-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.fld");
        std::fs::write(&path, b"A 1 long # \xb0\xa1 euc-kr comment\n").unwrap();
        let t = FieldTable::load([&path]).unwrap();
        assert_eq!(t.len(), 1);
        let e = FieldTable::load([dir.join("missing.fld")]).unwrap_err();
        assert!(matches!(e, BufferError::Io { .. }));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
