//! The error a failed call returns.

use std::fmt;

use tpmon_buffer::Buffer;
use tpmon_proto::ErrorKind;

/// A failed XATMI call: the `tperrno` kind, the service's `tpurcode`, the reply data
/// (delivered with TPESVCFAIL) and a detail text (`tperrordetail`).
#[derive(Debug, Clone, PartialEq)]
pub struct CallError {
    /// The error kind.
    pub kind: ErrorKind,
    /// The application return code (meaningful with TPESVCFAIL).
    pub urcode: i64,
    /// Reply data that came with TPESVCFAIL.
    pub reply: Option<Buffer>,
    /// What happened, for people.
    pub detail: String,
}

impl CallError {
    /// An error of `kind` with a detail text.
    pub fn new(kind: ErrorKind, detail: impl Into<String>) -> CallError {
        CallError {
            kind,
            urcode: 0,
            reply: None,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.kind, self.kind.description())?;
        if self.kind == ErrorKind::SvcFail || self.urcode != 0 {
            write!(f, ", urcode {}", self.urcode)?;
        }
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

impl std::error::Error for CallError {}
