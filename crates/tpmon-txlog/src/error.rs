//! [`LogError`]: every way a log operation can fail, each naming the file and byte
//! offset involved where there is one.
//!
//! Owns the error type only. It must never lose the cause: I/O errors keep their
//! `io::Error`, corruption keeps the recovery case that refused it.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

use crate::entry::EntryError;
use crate::recover::Case;

/// A failure of the transaction log.
#[derive(Debug, Error)]
pub enum LogError {
    /// `create` found a log in the directory; it never overwrites one.
    #[error("a transaction log already exists in {dir}")]
    AlreadyExists {
        /// The directory.
        dir: PathBuf,
    },
    /// `open` found no segment in the directory.
    #[error("no log in {dir}: create it first")]
    NoLog {
        /// The directory.
        dir: PathBuf,
    },
    /// Another process (or another handle of this one) has the log open.
    #[error("the transaction log in {dir} is in use by another handle: {source}")]
    InUse {
        /// The directory.
        dir: PathBuf,
        /// The lock error.
        source: io::Error,
    },
    /// The log's header names another domain or node.
    #[error("{file}: this log belongs to domain {domain} node {node}")]
    Foreign {
        /// The segment whose header was read.
        file: PathBuf,
        /// The domain it names.
        domain: String,
        /// The node it names.
        node: String,
    },
    /// The log is damaged in a way that recovery must not repair (see the decision
    /// table in docs/log-format.md); nothing was changed.
    #[error("{file} at byte {offset}: {what} ({case:?}: the log is not opened)")]
    Corrupt {
        /// The damaged file.
        file: PathBuf,
        /// Byte offset of the damage (of the record that starts there).
        offset: u64,
        /// The recovery case.
        case: Case,
        /// What is wrong.
        what: String,
    },
    /// A system call failed.
    #[error("{file} at byte {offset}: {op} failed: {source}")]
    Io {
        /// The file (or directory).
        file: PathBuf,
        /// Byte offset of the operation (0 when it has none).
        offset: u64,
        /// The operation.
        op: &'static str,
        /// The error.
        source: io::Error,
    },
    /// An earlier write or sync failed; the log accepts no more changes. Drop it and
    /// open the log again (recovery decides what reached the disk).
    #[error("the transaction log is poisoned by an earlier failure ({cause}); reopen it")]
    Poisoned {
        /// The failure that poisoned it.
        cause: String,
    },
    /// A put of a new gtrid when the log holds `entries_max` entries.
    #[error("the transaction log is full: it holds its maximum of {entries_max} entries")]
    Full {
        /// The limit.
        entries_max: usize,
    },
    /// An update or remove of a gtrid the log does not hold.
    #[error("no entry for gtrid {gtrid:02x?}")]
    NotFound {
        /// The gtrid.
        gtrid: Vec<u8>,
    },
    /// An entry or update that breaks a limit; nothing was written.
    #[error("invalid entry: {0}")]
    InvalidEntry(#[from] EntryError),
    /// Options or identity out of range.
    #[error("invalid options: {what}")]
    InvalidOptions {
        /// What is wrong.
        what: String,
    },
}
