//! The embedded resource manager's errors.

use std::path::PathBuf;

use thiserror::Error;

/// What went wrong in the embedded resource manager.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RmError {
    /// A file cannot be read or written.
    #[error("{path}: {what}: {error}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The system's message.
        error: String,
    },
    /// A file holds something that is not what we wrote (and not a torn tail).
    #[error("{path}: corrupt at offset {offset}: {what}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Byte offset of the bad frame.
        offset: u64,
        /// What is wrong.
        what: String,
    },
    /// An earlier write or sync failed; the site refuses every later change until it
    /// is restarted (a failed fsync cannot be retried safely).
    #[error("the operation log failed earlier and refuses changes: {0}")]
    Poisoned(String),
    /// A lock was not granted within the lock-wait timeout (a deadlock, or a holder
    /// that is slow or in doubt).
    #[error("lock wait timeout on {table}/{key} after {waited_ms} ms")]
    LockTimeout {
        /// Table.
        table: String,
        /// Key, shown as text where possible.
        key: String,
        /// How long it waited.
        waited_ms: u64,
    },
    /// The branch is not known (XAER_NOTA).
    #[error("unknown branch {0}")]
    UnknownBranch(String),
    /// The call is not valid in the branch's state (XAER_PROTO).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The branch can no longer commit (its work was lost in a rollback-recovery, or a
    /// statement failed); prepare votes no.
    #[error("the branch is doomed: {0}")]
    Doomed(String),
    /// An insert found the key present.
    #[error("duplicate key {key} in table {table}")]
    Duplicate {
        /// Table.
        table: String,
        /// Key.
        key: String,
    },
    /// A value or name over the limits.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The paper's "Inconsistency Checkpoint": a record older than the checkpoint
    /// being restored was found after it.
    #[error("Inconsistency Checkpoint at site {site}: record {lsn} has GCPN {gcpn} after checkpoint {n}")]
    InconsistencyCheckpoint {
        /// The site.
        site: u16,
        /// The record.
        lsn: u64,
        /// Its GCPN.
        gcpn: u64,
        /// The checkpoint restored.
        n: u64,
    },
    /// The checkpoint asked for is not on disk.
    #[error("checkpoint {0} is not on disk")]
    NoCheckpoint(u64),
    /// The site cannot be reached (session protocol).
    #[error("site unavailable: {0}")]
    Unavailable(String),
    /// An error the site reported over a session.
    #[error("{message}")]
    Remote {
        /// Its class.
        kind: ErrorKind,
        /// The site's message.
        message: String,
    },
}

/// Classes of [`RmError`], as a service (or the session protocol) tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A lock was not granted in time.
    LockTimeout,
    /// Unknown branch.
    UnknownBranch,
    /// Invalid in the branch's state.
    Protocol,
    /// The branch can no longer commit.
    Doomed,
    /// An insert found the key.
    Duplicate,
    /// A bad name, key or value.
    Invalid,
    /// The site cannot be reached.
    Unavailable,
    /// Anything else (I/O, corruption, a failed log).
    Failed,
}

impl ErrorKind {
    /// The wire code (never 0, which means success).
    pub fn code(self) -> u8 {
        match self {
            ErrorKind::LockTimeout => 1,
            ErrorKind::UnknownBranch => 2,
            ErrorKind::Protocol => 3,
            ErrorKind::Doomed => 4,
            ErrorKind::Duplicate => 5,
            ErrorKind::Invalid => 6,
            ErrorKind::Unavailable => 7,
            ErrorKind::Failed => 8,
        }
    }

    /// The kind with this wire code ([`ErrorKind::Failed`] for unknown codes).
    pub fn from_code(c: u8) -> ErrorKind {
        match c {
            1 => ErrorKind::LockTimeout,
            2 => ErrorKind::UnknownBranch,
            3 => ErrorKind::Protocol,
            4 => ErrorKind::Doomed,
            5 => ErrorKind::Duplicate,
            6 => ErrorKind::Invalid,
            7 => ErrorKind::Unavailable,
            _ => ErrorKind::Failed,
        }
    }
}

impl RmError {
    /// The error's class.
    pub fn kind(&self) -> ErrorKind {
        match self {
            RmError::LockTimeout { .. } => ErrorKind::LockTimeout,
            RmError::UnknownBranch(_) => ErrorKind::UnknownBranch,
            RmError::Protocol(_) => ErrorKind::Protocol,
            RmError::Doomed(_) => ErrorKind::Doomed,
            RmError::Duplicate { .. } => ErrorKind::Duplicate,
            RmError::Invalid(_) => ErrorKind::Invalid,
            RmError::Unavailable(_) => ErrorKind::Unavailable,
            RmError::Remote { kind, .. } => *kind,
            RmError::Io { .. }
            | RmError::Corrupt { .. }
            | RmError::Poisoned(_)
            | RmError::InconsistencyCheckpoint { .. }
            | RmError::NoCheckpoint(_) => ErrorKind::Failed,
        }
    }

    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, what: &'static str, e: std::io::Error) -> RmError {
        RmError::Io {
            path: path.into(),
            what,
            error: e.to_string(),
        }
    }
}

/// Shows a key as text when it is printable UTF-8, else as hex.
pub fn show_key(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(s) if s.chars().all(|c| !c.is_control()) => s.to_string(),
        _ => key.iter().map(|b| format!("{b:02x}")).collect(),
    }
}
