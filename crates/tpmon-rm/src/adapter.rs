//! The embedded site as an XA resource manager ([`tpmon_xa::Rm`]): for server
//! instances, a session over the site's socket; for the transaction manager in the
//! daemon that hosts the site, direct calls (no message at all).
//!
//! Owns the mapping of XA calls and of the service-facing data API onto a site, and
//! of [`RmError`] onto [`XaError`]. It must not keep branch state beyond the current
//! branch's id.

use std::any::Any;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tpmon_config::{RmKind, XaResource};
use tpmon_xa::{Rm, Vote, XaError, Xid};

use crate::error::{ErrorKind, RmError};
use crate::record::NO_ORIGIN;
use crate::session::{Answer, Request, Session};
use crate::site::{Rows, Site};

/// How long a session waits for an answer (longer than any lock wait).
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(120);

fn registry() -> &'static Mutex<HashMap<PathBuf, Weak<Site>>> {
    static SITES: std::sync::OnceLock<Mutex<HashMap<PathBuf, Weak<Site>>>> =
        std::sync::OnceLock::new();
    SITES.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Records that `site` is served in this process at `socket`: sessions opened here
/// on that path call it directly.
pub fn register(socket: &Path, site: &Arc<Site>) {
    if let Ok(mut r) = registry().lock() {
        r.insert(socket.to_path_buf(), Arc::downgrade(site));
    }
}

/// The site served in this process at `socket`, if any.
pub fn local_site(socket: &Path) -> Option<Arc<Site>> {
    registry().lock().ok()?.get(socket)?.upgrade()
}

/// Opens a session with a group's resource manager: the embedded site for
/// [`RmKind::Embedded`] (its open string is the site's socket), else through
/// [`tpmon_xa::open`].
pub fn open(res: &XaResource) -> Result<Box<dyn Rm>, XaError> {
    if res.kind == RmKind::Embedded {
        Ok(Box::new(EmbeddedRm::connect(Path::new(res.open.expose()))?))
    } else {
        tpmon_xa::open(res)
    }
}

/// Maps a site's error onto XA's classes.
pub fn xa_error(e: RmError) -> XaError {
    match e.kind() {
        ErrorKind::UnknownBranch => XaError::NotFound(e.to_string()),
        ErrorKind::Protocol => XaError::Protocol(e.to_string()),
        // An I/O error, a failed log or a damaged file: the site cannot act now, but
        // the branch keeps its state (a prepared branch stays prepared and is
        // finished after the site restarts) - XAER_RMFAIL, never a heuristic.
        ErrorKind::Unavailable | ErrorKind::Failed => XaError::Unavailable(e.to_string()),
        ErrorKind::LockTimeout | ErrorKind::Doomed | ErrorKind::Duplicate | ErrorKind::Invalid => {
            XaError::Failed(e.to_string())
        }
    }
}

enum Target {
    Local(Arc<Site>),
    Remote(Option<Session>),
}

/// One session with an embedded site.
pub struct EmbeddedRm {
    socket: PathBuf,
    target: Target,
    current: Option<String>,
}

impl EmbeddedRm {
    /// A session with the site at `socket` (direct when the site lives in this
    /// process).
    pub fn connect(socket: &Path) -> Result<EmbeddedRm, XaError> {
        let target = match local_site(socket) {
            Some(site) => Target::Local(site),
            None => Target::Remote(Some(
                Session::connect(socket, SESSION_TIMEOUT).map_err(xa_error)?,
            )),
        };
        Ok(EmbeddedRm {
            socket: socket.to_path_buf(),
            target,
            current: None,
        })
    }

    fn call(&mut self, req: Request) -> Result<Answer, RmError> {
        match &mut self.target {
            Target::Local(site) => req.run(site),
            Target::Remote(slot) => {
                if slot.is_none() {
                    *slot = Some(Session::connect(&self.socket, SESSION_TIMEOUT)?);
                }
                let Some(s) = slot.as_mut() else {
                    return Err(RmError::Unavailable("no session".into()));
                };
                let r = s.call(&req);
                if matches!(&r, Err(RmError::Unavailable(_))) {
                    *slot = None;
                }
                r
            }
        }
    }

    fn xid(&self) -> String {
        self.current.clone().unwrap_or_default()
    }

    /// The branch in progress on this session, if any.
    pub fn current_branch(&self) -> Option<&str> {
        self.current.as_deref()
    }

    /// Reads `table/key` (in the current branch, or committed data outside one).
    pub fn get(&mut self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, RmError> {
        match self.call(Request::Get {
            xid: self.xid(),
            table: table.into(),
            key: key.to_vec(),
        })? {
            Answer::Value(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    /// XA forget: the site never completes a branch heuristically, so this always
    /// fails (XAER_NOTA for an unknown branch, XAER_PROTO for a known one).
    pub fn forget(&mut self, xid: &Xid) -> Result<(), XaError> {
        self.call(Request::Forget(xid.gid()))
            .map(|_| ())
            .map_err(xa_error)
    }

    /// Reads `table/key` for update: in a branch under an exclusive lock (use it for a
    /// value the branch changes next, or two branches doing the same deadlock until
    /// the lock-wait timeout); outside a branch like [`EmbeddedRm::get`].
    pub fn get_for_update(&mut self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, RmError> {
        match self.call(Request::GetForUpdate {
            xid: self.xid(),
            table: table.into(),
            key: key.to_vec(),
        })? {
            Answer::Value(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    /// Sets `table/key` (outside a branch: committed at once, durably).
    pub fn put(&mut self, table: &str, key: &[u8], value: &[u8]) -> Result<(), RmError> {
        self.call(Request::Put {
            xid: self.xid(),
            table: table.into(),
            key: key.to_vec(),
            value: value.to_vec(),
        })
        .map(|_| ())
    }

    /// Inserts `table/key`; an error of kind [`ErrorKind::Duplicate`] if present.
    pub fn insert(&mut self, table: &str, key: &[u8], value: &[u8]) -> Result<(), RmError> {
        self.call(Request::Insert {
            xid: self.xid(),
            table: table.into(),
            key: key.to_vec(),
            value: value.to_vec(),
        })
        .map(|_| ())
    }

    /// Deletes `table/key`; false when absent.
    pub fn delete(&mut self, table: &str, key: &[u8]) -> Result<bool, RmError> {
        match self.call(Request::Delete {
            xid: self.xid(),
            table: table.into(),
            key: key.to_vec(),
        })? {
            Answer::Existed(e) => Ok(e),
            other => Err(unexpected(other)),
        }
    }

    /// Rows with `from <= key < to` (to `None`: no bound), at most `limit`.
    pub fn scan(
        &mut self,
        table: &str,
        from: &[u8],
        to: Option<&[u8]>,
        limit: u32,
    ) -> Result<Rows, RmError> {
        match self.call(Request::Scan {
            xid: self.xid(),
            table: table.into(),
            from: from.to_vec(),
            to: to.map(<[u8]>::to_vec),
            limit,
        })? {
            Answer::Rows(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }
}

fn unexpected(a: Answer) -> RmError {
    RmError::Unavailable(format!("unexpected answer from the site: {a:?}"))
}

impl Rm for EmbeddedRm {
    fn kind(&self) -> RmKind {
        RmKind::Embedded
    }

    fn begin(&mut self, xid: &Xid) -> Result<(), XaError> {
        self.call(Request::Begin(xid.gid())).map_err(xa_error)?;
        self.current = Some(xid.gid());
        Ok(())
    }

    fn prepare(&mut self, xid: &Xid) -> Result<Vote, XaError> {
        self.prepare_cpn(xid).map(|(v, _)| v)
    }

    fn prepare_cpn(&mut self, xid: &Xid) -> Result<(Vote, u64), XaError> {
        self.current = None;
        match self.call(Request::Prepare(xid.gid())).map_err(xa_error)? {
            Answer::Vote { yes: true, cpn } => Ok((Vote::Prepared, cpn)),
            Answer::Vote { yes: false, .. } => Ok((Vote::ReadOnly, 0)),
            other => Err(xa_error(unexpected(other))),
        }
    }

    fn rollback_active(&mut self, xid: &Xid) -> Result<(), XaError> {
        self.current = None;
        match self.call(Request::Rollback(xid.gid())) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == ErrorKind::UnknownBranch => Ok(()),
            Err(e) => Err(xa_error(e)),
        }
    }

    fn commit(&mut self, xid: &Xid) -> Result<(), XaError> {
        self.commit_at(xid, 0, NO_ORIGIN)
    }

    fn commit_at(&mut self, xid: &Xid, gcpn: u64, origin: u16) -> Result<(), XaError> {
        self.call(Request::Commit {
            xid: xid.gid(),
            gcpn,
            origin,
        })
        .map(|_| ())
        .map_err(xa_error)
    }

    fn rollback(&mut self, xid: &Xid) -> Result<(), XaError> {
        self.call(Request::Rollback(xid.gid()))
            .map(|_| ())
            .map_err(xa_error)
    }

    fn recover(&mut self, prefix: &str) -> Result<Vec<Xid>, XaError> {
        match self
            .call(Request::Recover(prefix.to_string()))
            .map_err(xa_error)?
        {
            Answer::Xids(xs) => Ok(xs.iter().filter_map(|g| Xid::from_gid(g)).collect()),
            other => Err(xa_error(unexpected(other))),
        }
    }

    fn ensure_open(&mut self) -> Result<(), XaError> {
        if let Target::Remote(slot) = &mut self.target {
            if slot.is_none() {
                *slot = Some(Session::connect(&self.socket, SESSION_TIMEOUT).map_err(xa_error)?);
            }
        }
        Ok(())
    }

    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
}
