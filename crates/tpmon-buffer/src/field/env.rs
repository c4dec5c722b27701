//! Finding field tables the way legacy monitors do: `FIELDTBLS` and `FLDTBLDIR`.
//!
//! This module owns the lookup rules; it reads the two environment variables and the
//! file system, nothing else, and never falls back to a default table: with `FIELDTBLS`
//! unset the table is empty, so a misconfigured program fails on its first unknown name
//! rather than quietly using another program's fields.
//!
//! * `FIELDTBLS`: comma-separated field table file names, loaded in order.
//! * `FLDTBLDIR`: colon-separated directories searched, in order, for each name that is
//!   not absolute. When unset or empty, names are taken relative to the current
//!   directory. Empty list entries are skipped.

use std::path::{Path, PathBuf};

use super::FieldTable;
use crate::error::BufferError;

/// Environment variable listing the field table files.
pub const FIELDTBLS_VAR: &str = "FIELDTBLS";

/// Environment variable listing the directories searched for them.
pub const FLDTBLDIR_VAR: &str = "FLDTBLDIR";

impl FieldTable {
    /// Loads the tables named by `FIELDTBLS`, searched in `FLDTBLDIR`; an empty table
    /// when `FIELDTBLS` is unset or empty. Variables that are not valid Unicode are
    /// treated as unset.
    pub fn from_env() -> Result<FieldTable, BufferError> {
        let tables = std::env::var(FIELDTBLS_VAR).ok();
        let dirs = std::env::var(FLDTBLDIR_VAR).ok();
        FieldTable::from_env_values(tables.as_deref(), dirs.as_deref())
    }

    /// [`FieldTable::from_env`] with the two variables' values given explicitly.
    pub fn from_env_values(
        fieldtbls: Option<&str>,
        fldtbldir: Option<&str>,
    ) -> Result<FieldTable, BufferError> {
        let dirs: Vec<PathBuf> = fldtbldir
            .unwrap_or_default()
            .split(':')
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .collect();
        let mut table = FieldTable::new();
        for name in fieldtbls
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
        {
            let path = locate(name, &dirs)?;
            table.load_file(&path)?;
        }
        Ok(table)
    }
}

/// The file for table `name`: itself when absolute or when there are no directories,
/// else the first directory that holds it.
fn locate(name: &str, dirs: &[PathBuf]) -> Result<PathBuf, BufferError> {
    let path = Path::new(name);
    if path.is_absolute() || dirs.is_empty() {
        return Ok(path.to_path_buf());
    }
    dirs.iter()
        .map(|d| d.join(path))
        .find(|p| p.is_file())
        .ok_or_else(|| BufferError::TableNotFound {
            name: name.to_owned(),
            dirs: dirs.to_vec(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let p =
                std::env::temp_dir().join(format!("tpmon-buffer-env-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn unset_gives_an_empty_table() {
        assert!(FieldTable::from_env_values(None, None).unwrap().is_empty());
        assert!(FieldTable::from_env_values(Some(""), Some("/nowhere"))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn searches_directories_in_order() {
        let one = TempDir::new("one");
        let two = TempDir::new("two");
        std::fs::write(one.0.join("a.fld"), "A 1 long\n").unwrap();
        std::fs::write(two.0.join("a.fld"), "A 9 long\n").unwrap();
        std::fs::write(two.0.join("b.fld"), "B 2 string\n").unwrap();
        let dirs = format!("{}:{}", one.0.display(), two.0.display());
        let t = FieldTable::from_env_values(Some("a.fld, b.fld"), Some(&dirs)).unwrap();
        assert_eq!(t.key_of("A").unwrap().number(), 1);
        assert_eq!(t.key_of("B").unwrap().number(), 2);
    }

    #[test]
    fn absolute_names_and_missing_files() {
        let d = TempDir::new("abs");
        let file = d.0.join("c.fld");
        std::fs::write(&file, "C 3 char\n").unwrap();
        let name = file.display().to_string();
        let t = FieldTable::from_env_values(Some(&name), Some("/does/not/exist")).unwrap();
        assert_eq!(t.len(), 1);
        let e = FieldTable::from_env_values(Some("nope.fld"), Some(&d.0.display().to_string()))
            .unwrap_err();
        assert!(matches!(e, BufferError::TableNotFound { .. }));
        assert!(e.to_string().contains("nope.fld"));
    }

    #[test]
    fn errors_name_the_file_found() {
        let d = TempDir::new("bad");
        std::fs::write(d.0.join("bad.fld"), "X 1 long\nY 2 bogus\n").unwrap();
        let e = FieldTable::from_env_values(Some("bad.fld"), Some(&d.0.display().to_string()))
            .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("bad.fld:2: unknown field type \"bogus\""),
            "{text}"
        );
    }
}
