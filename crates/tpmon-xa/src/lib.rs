//! XA resource-manager adapters.
//!
//! One [`Rm`] is one session with a resource manager. The server runtime holds one per
//! instance and runs each service invocation inside a global transaction as its own
//! branch on it (begin, the routine's statements, prepare); the transaction manager
//! keeps a small pool per resource manager for phase 2 and recovery, which may finish
//! any prepared branch from any session.
//!
//! This crate owns the mapping of tpmon's XIDs onto each product's statements and the
//! classification of their errors; it does not decide anything (that is the
//! transaction manager's job) and keeps no state beyond its connection, except the
//! scripted fake, whose state lives in a directory so that every process of a domain
//! sees the same "database".

use std::any::Any;

use tpmon_config::{RmKind, XaResource};

pub mod failpoint;
pub mod fake;
pub mod mariadb;
pub mod noop;
pub mod postgres;

pub use tpmon_proto::Vote;

/// One branch's identity: the global transaction id and the branch qualifier (both
/// text), under tpmon's format id [`tpmon_proto::FORMAT_ID`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Xid {
    /// Global transaction id (text form of [`tpmon_proto::Gtrid`]).
    pub gtrid: String,
    /// Branch qualifier.
    pub bqual: String,
}

impl Xid {
    /// A branch of `gtrid`.
    pub fn new(gtrid: impl Into<String>, bqual: impl Into<String>) -> Xid {
        Xid {
            gtrid: gtrid.into(),
            bqual: bqual.into(),
        }
    }

    /// The single-string form used where a product has one id (PostgreSQL's gid):
    /// `GTRID|BQUAL`. Neither part can contain `|`.
    pub fn gid(&self) -> String {
        format!("{}|{}", self.gtrid, self.bqual)
    }

    /// Parses [`Xid::gid`]'s form.
    pub fn from_gid(gid: &str) -> Option<Xid> {
        let (g, b) = gid.split_once('|')?;
        if g.is_empty() || b.contains('|') {
            return None;
        }
        Some(Xid::new(g, b))
    }
}

impl std::fmt::Display for Xid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.gid())
    }
}

/// What went wrong in a resource-manager call, classified by what the caller must do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XaError {
    /// The resource manager cannot be reached or the session broke (XAER_RMFAIL):
    /// retry later on a new session; the branch's fate is unchanged.
    #[error("resource manager unavailable: {0}")]
    Unavailable(String),
    /// The resource manager does not know the branch (XAER_NOTA): already committed or
    /// rolled back, or never prepared.
    #[error("unknown branch {0}")]
    NotFound(String),
    /// The resource manager refused the operation (XAER_RMERR, or a prepare voted no):
    /// the branch is rolled back.
    #[error("resource manager error: {0}")]
    Failed(String),
    /// The call is not valid in the branch's state (XAER_PROTO): a bug or misuse.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl XaError {
    /// True for errors after which the session must be dropped and reopened.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, XaError::Unavailable(_))
    }
}

/// One session with a resource manager.
pub trait Rm: Send {
    /// The kind.
    fn kind(&self) -> RmKind;
    /// Starts a branch: the following statements on this session belong to it.
    fn begin(&mut self, xid: &Xid) -> Result<(), XaError>;
    /// Ends the branch's work and prepares it; the vote is the answer.
    fn prepare(&mut self, xid: &Xid) -> Result<Vote, XaError>;
    /// [`Rm::prepare`], with the checkpoint number the vote carries (spec 03's
    /// LCPN+1; 0 for resource managers without checkpoints).
    fn prepare_cpn(&mut self, xid: &Xid) -> Result<(Vote, u64), XaError> {
        Ok((self.prepare(xid)?, 0))
    }
    /// Rolls back the branch that is active on this session (not prepared).
    fn rollback_active(&mut self, xid: &Xid) -> Result<(), XaError>;
    /// Commits a prepared branch (from any session).
    fn commit(&mut self, xid: &Xid) -> Result<(), XaError>;
    /// [`Rm::commit`] with the transaction's global checkpoint number and
    /// originating site (spec 03's decision message); ignored by resource managers
    /// without checkpoints.
    fn commit_at(&mut self, xid: &Xid, gcpn: u64, origin: u16) -> Result<(), XaError> {
        let _ = (gcpn, origin);
        self.commit(xid)
    }
    /// Rolls back a prepared branch (from any session).
    fn rollback(&mut self, xid: &Xid) -> Result<(), XaError>;
    /// The prepared branches whose gtrid starts with `prefix`.
    fn recover(&mut self, prefix: &str) -> Result<Vec<Xid>, XaError>;
    /// Checks that the session is usable, reconnecting when it broke.
    fn ensure_open(&mut self) -> Result<(), XaError>;
    /// For typed access to the product's connection ([`postgres::PgRm::client`],
    /// [`mariadb::MariaRm::conn`]).
    fn as_any(&mut self) -> &mut dyn Any;
}

/// Opens a session with the resource manager a group is configured with.
pub fn open(res: &XaResource) -> Result<Box<dyn Rm>, XaError> {
    Ok(match res.kind {
        RmKind::Postgres => Box::new(postgres::PgRm::connect(res.open.expose())?),
        RmKind::Mariadb => Box::new(mariadb::MariaRm::connect(res.open.expose())?),
        RmKind::Noop => Box::new(noop::NoopRm),
        RmKind::Fake => Box::new(fake::FakeRm::open(res.open.expose())?),
        RmKind::Embedded => {
            return Err(XaError::Protocol(
                "the embedded resource manager is opened through tpmon_rm::open".into(),
            ))
        }
    })
}

/// Runs `op` and retries it once on a fresh session when the session had broken
/// (a database restart between two uses of a pooled or long-lived session).
pub fn with_reconnect<T>(
    rm: &mut dyn Rm,
    mut op: impl FnMut(&mut dyn Rm) -> Result<T, XaError>,
) -> Result<T, XaError> {
    match op(rm) {
        Err(e) if e.is_unavailable() => {
            rm.ensure_open()?;
            op(rm)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gid_round_trips() {
        let x = Xid::new("d:n:1:2:3:4", "5.6.7");
        assert_eq!(Xid::from_gid(&x.gid()), Some(x));
        assert_eq!(Xid::from_gid("no-bar"), None);
        assert_eq!(Xid::from_gid("|b"), None);
        assert_eq!(Xid::from_gid("a|b|c"), None);
    }
}

/// The database drivers the adapters use, for services that run statements on the
/// branch's session (`tpmon_server::Context::postgres` / `mariadb`).
pub mod drivers {
    pub use ::mysql;
    pub use ::postgres;
}
