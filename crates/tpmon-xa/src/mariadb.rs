//! MariaDB: a branch is an XA transaction `XA START` … `XA END`, `XA PREPARE`
//! under (gtrid, bqual, format id); `XA COMMIT` / `XA ROLLBACK` finish it from any
//! connection (MariaDB 10.5+ keeps prepared XA transactions across disconnects);
//! `XA RECOVER` lists what is in doubt.
//!
//! The server's version is checked on the session's first connection
//! (`SELECT @@version`, once per [`MariaRm`]): MariaDB before 10.5 rolls a prepared XA
//! branch back when its connection closes, which this adapter does after every
//! `XA PREPARE`, so every branch would be lost silently; such a server, and MySQL (whose
//! handling of prepared branches across disconnects this adapter was not verified on),
//! are refused as [`XaError::Unavailable`] with the version found: a configuration
//! error, but never one the transaction manager may take for a branch's refusal.
//!
//! A prepared XA transaction stays attached to the connection that prepared it until
//! that connection ends: meanwhile `XA COMMIT` from another connection answers
//! XAER_NOTA (which the transaction manager takes for "already finished") and the
//! connection cannot start another branch (XAER_RMFAIL, "in the PREPARED state").
//! So [`Rm::prepare`] closes the connection after `XA PREPARE` and waits until the
//! server has let go of it; the next call opens a new one. (`COM_RESET_CONNECTION`
//! also detaches it, but in 10.11 the commit then loses the branch's rows and the
//! connection fails every later InnoDB statement with error 1031.)
//!
//! Unlike PostgreSQL, a failed statement (a duplicate key, say) undoes only itself: the
//! branch goes on and prepares with its other work. Errors that roll the whole
//! transaction back (a deadlock) make the branch refuse to end, and `prepare` fails.
//!
//! MariaDB rolls back a prepared branch that wrote nothing when its connection ends,
//! and `XA COMMIT` of it then answers XA_RBROLLBACK once and XAER_NOTA after that: a
//! read-only branch still votes [`Vote::Prepared`]. [`Rm::commit`] takes an XA_RB*
//! answer for success: a branch that wrote something and prepared is durable in
//! MariaDB (it survives disconnects and restarts), so only a branch with nothing to
//! commit is rolled back behind our back.

use std::any::Any;
use std::time::{Duration, Instant};

use mysql::prelude::Queryable;
use mysql::{Conn, Opts};
use tpmon_config::RmKind;
use tpmon_proto::FORMAT_ID;

use crate::{Rm, Vote, XaError, Xid};

/// One connection to a MariaDB or MySQL server.
pub struct MariaRm {
    open: String,
    conn: Option<Conn>,
    /// A branch is active on `conn`: a lost connection must not be replaced until it
    /// ends, or the routine's next statements would commit on their own.
    in_branch: bool,
    /// The server's version was checked (on the first connection).
    version_checked: bool,
    /// A deadline for every read, write and connect of the connection, for sessions
    /// that must give up on a database that stops answering (the transaction
    /// manager's); `None` for servers, whose services may run long statements.
    io_timeout: Option<std::time::Duration>,
}

/// The oldest MariaDB that keeps a prepared XA branch when its connection closes.
pub const MARIADB_MIN: (u16, u16, u16) = (10, 5, 0);

/// Checks a server's `@@version` text: MariaDB [`MARIADB_MIN`] or later is accepted
/// (and its version returned); an older MariaDB, MySQL or anything unrecognised is
/// refused with a message naming the version found.
pub fn supported_version(version: &str) -> Result<(u16, u16, u16), String> {
    let v = version.trim();
    if !v.to_ascii_lowercase().contains("mariadb") {
        return Err(format!(
            "the database server reports version {v:?}, which is not MariaDB: tpmon's \
             XA adapter supports MariaDB 10.5 or later only (it closes the connection \
             after XA PREPARE, and keeping the prepared branch across that is not \
             verified on MySQL)"
        ));
    }
    // Old servers and proxies prefix "5.5.5-" for old clients.
    let bare = v.strip_prefix("5.5.5-").unwrap_or(v);
    let mut parts = bare
        .split(|c: char| !c.is_ascii_digit())
        .take(3)
        .map(|p| p.parse::<u16>());
    let parsed = match (parts.next(), parts.next(), parts.next()) {
        (Some(Ok(a)), Some(Ok(b)), Some(Ok(c))) => (a, b, c),
        _ => {
            return Err(format!(
                "cannot read the MariaDB version from {v:?}: tpmon needs MariaDB 10.5 or later"
            ))
        }
    };
    if parsed < MARIADB_MIN {
        return Err(format!(
            "MariaDB {}.{}.{} ({v:?}) is too old: tpmon needs MariaDB 10.5 or later, because \
             older versions roll back a prepared XA branch when its connection closes, \
             which tpmon does after every XA PREPARE (every branch would be lost)",
            parsed.0, parsed.1, parsed.2
        ));
    }
    Ok(parsed)
}

impl std::fmt::Debug for MariaRm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MariaRm")
            .field("connected", &self.conn.is_some())
            .finish()
    }
}

/// How long `prepare` waits for the server to let go of the preparing connection.
const DETACH_DEADLINE: Duration = Duration::from_secs(10);

/// ER_XAER_NOTA: unknown XID.
const XAER_NOTA: u16 = 1397;
/// ER_XA_RBROLLBACK and friends: the branch was rolled back.
const XA_RB: [u16; 3] = [1402, 1613, 1614];

fn classify(e: mysql::Error) -> XaError {
    match e {
        mysql::Error::MySqlError(m) if m.code == XAER_NOTA => XaError::NotFound(m.message),
        mysql::Error::MySqlError(m) if XA_RB.contains(&m.code) => XaError::Failed(m.message),
        // Server shutdown in progress, lost connection, gone away.
        mysql::Error::MySqlError(m) if [1053, 2006, 2013, 1927].contains(&m.code) => {
            XaError::Unavailable(m.message)
        }
        mysql::Error::MySqlError(m) => XaError::Failed(format!("{} ({})", m.message, m.code)),
        other => XaError::Unavailable(other.to_string()),
    }
}

/// The XID as MariaDB spells it: hex literals, so no quoting issue can arise.
fn spell(xid: &Xid) -> String {
    format!(
        "X'{}',X'{}',{}",
        hex(xid.gtrid.as_bytes()),
        hex(xid.bqual.as_bytes()),
        FORMAT_ID
    )
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl MariaRm {
    /// Connects with a `mysql://user:pass@host:port/db` URL.
    pub fn connect(open: &str) -> Result<MariaRm, XaError> {
        Self::connect_with(open, None)
    }

    /// [`MariaRm::connect`] whose connections give up on every read, write and connect
    /// that takes longer than `io_timeout` (the connection then counts as broken and
    /// the call as [`XaError::Unavailable`]): no call can hold its thread longer, even
    /// against a server stopped outright.
    pub fn connect_bounded(
        open: &str,
        io_timeout: std::time::Duration,
    ) -> Result<MariaRm, XaError> {
        Self::connect_with(open, Some(io_timeout))
    }

    fn connect_with(
        open: &str,
        io_timeout: Option<std::time::Duration>,
    ) -> Result<MariaRm, XaError> {
        let mut rm = MariaRm {
            open: open.to_string(),
            conn: None,
            in_branch: false,
            version_checked: false,
            io_timeout,
        };
        rm.ensure_open()?;
        Ok(rm)
    }

    /// The connection, for the service's own statements inside the branch.
    pub fn conn(&mut self) -> Result<&mut Conn, XaError> {
        if self.in_branch && self.conn.is_none() {
            return Err(XaError::Unavailable(
                "the connection broke inside the transaction branch, which is rolled back".into(),
            ));
        }
        self.ensure_open()?;
        self.conn
            .as_mut()
            .ok_or_else(|| XaError::Unavailable("not connected".into()))
    }

    /// Replaces the connection if it broke, outside a branch: pings it (one round
    /// trip) and reconnects when the ping fails. The driver does not reconnect by
    /// itself and a failed statement of the service's does not reach this adapter, so
    /// without it a connection lost to a database restart would fail every
    /// non-transactional statement for good. Callers use it when a failure suggests
    /// the connection may be broken, not on every call. Inside a branch it does
    /// nothing: the branch's connection is never replaced.
    pub fn check_connection(&mut self) -> Result<(), XaError> {
        if self.in_branch {
            return Ok(());
        }
        if let Some(c) = self.conn.as_mut() {
            if c.ping().is_err() {
                self.conn = None;
            }
        }
        self.ensure_open()
    }

    /// Ends the connection that holds a just-prepared branch and waits, on a new one,
    /// until the server has dropped the old one from its process list, which it does
    /// after detaching the branch: from then on any connection can finish it. On an
    /// error the branch is prepared but maybe still attached, so `prepare` fails: the
    /// transaction is rolled back, and recovery rolls the branch back once the server
    /// lets go of it.
    fn detach(&mut self) -> Result<(), XaError> {
        let Some(old) = self.conn.take() else {
            return Ok(());
        };
        let id = old.connection_id();
        drop(old); // sends COM_QUIT
        let deadline = Instant::now() + DETACH_DEADLINE;
        loop {
            let c = self.conn()?;
            let still: Result<Option<u64>, _> = c.query_first(format!(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = {id}"
            ));
            match still {
                Ok(Some(0)) => return Ok(()),
                Ok(_) => {}
                Err(e) => {
                    let err = classify(e);
                    if err.is_unavailable() {
                        self.conn = None;
                    }
                    return Err(err);
                }
            }
            if Instant::now() >= deadline {
                return Err(XaError::Unavailable(format!(
                    "connection {id} still open {} s after XA PREPARE: its branch cannot \
                     be finished from other connections yet",
                    DETACH_DEADLINE.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn exec(&mut self, sql: &str) -> Result<(), XaError> {
        let c = self.conn()?;
        match c.query_drop(sql) {
            Ok(()) => Ok(()),
            Err(e) => {
                let err = classify(e);
                if err.is_unavailable() {
                    self.conn = None;
                }
                Err(err)
            }
        }
    }
}

impl Rm for MariaRm {
    fn kind(&self) -> RmKind {
        RmKind::Mariadb
    }

    fn begin(&mut self, xid: &Xid) -> Result<(), XaError> {
        self.in_branch = false;
        self.exec(&format!("XA START {}", spell(xid)))?;
        self.in_branch = true;
        Ok(())
    }

    fn prepare(&mut self, xid: &Xid) -> Result<Vote, XaError> {
        let prepared = self
            .exec(&format!("XA END {}", spell(xid)))
            .and_then(|()| self.exec(&format!("XA PREPARE {}", spell(xid))));
        if let Err(e) = prepared {
            if matches!(e, XaError::Failed(_)) {
                // Rolled back already (a deadlock leaves it "ROLLBACK ONLY") or unable
                // to prepare: end it so that the connection can start another branch.
                let _ = self.exec(&format!("XA ROLLBACK {}", spell(xid)));
            }
            self.in_branch = false;
            return Err(e);
        }
        self.in_branch = false;
        self.detach()?;
        Ok(Vote::Prepared)
    }

    fn rollback_active(&mut self, xid: &Xid) -> Result<(), XaError> {
        // END may fail when the branch already ended; ROLLBACK decides. A lost
        // connection took the branch with it.
        if self.in_branch && self.conn.is_none() {
            self.in_branch = false;
            return Ok(());
        }
        self.in_branch = false;
        let _ = self.exec(&format!("XA END {}", spell(xid)));
        match self.exec(&format!("XA ROLLBACK {}", spell(xid))) {
            Err(XaError::Unavailable(_)) | Err(XaError::NotFound(_)) => Ok(()),
            other => other,
        }
    }

    fn commit(&mut self, xid: &Xid) -> Result<(), XaError> {
        let sql = format!("XA COMMIT {}", spell(xid));
        let c = self.conn()?;
        match c.query_drop(&sql) {
            Ok(()) => Ok(()),
            // A read-only branch, rolled back when its connection ended (see the
            // module documentation): nothing to commit.
            Err(mysql::Error::MySqlError(m)) if XA_RB.contains(&m.code) => Ok(()),
            Err(e) => {
                let err = classify(e);
                if err.is_unavailable() {
                    self.conn = None;
                }
                Err(err)
            }
        }
    }

    fn rollback(&mut self, xid: &Xid) -> Result<(), XaError> {
        self.exec(&format!("XA ROLLBACK {}", spell(xid)))
    }

    fn recover(&mut self, prefix: &str) -> Result<Vec<Xid>, XaError> {
        let c = self.conn()?;
        let rows: Vec<(i64, i64, i64, Vec<u8>)> = match c.query("XA RECOVER") {
            Ok(r) => r,
            Err(e) => {
                let err = classify(e);
                if err.is_unavailable() {
                    self.conn = None;
                }
                return Err(err);
            }
        };
        let mut out = Vec::new();
        for (format, glen, blen, data) in rows {
            if format != i64::from(FORMAT_ID) || glen < 0 || blen < 0 {
                continue;
            }
            let (g, b) = (glen as usize, blen as usize);
            if data.len() < g + b {
                continue;
            }
            let (Ok(gtrid), Ok(bqual)) = (
                String::from_utf8(data[..g].to_vec()),
                String::from_utf8(data[g..g + b].to_vec()),
            ) else {
                continue;
            };
            if gtrid.starts_with(prefix) {
                out.push(Xid::new(gtrid, bqual));
            }
        }
        Ok(out)
    }

    fn ensure_open(&mut self) -> Result<(), XaError> {
        // A broken connection is dropped by the call that found it broken.
        if self.conn.is_some() {
            return Ok(());
        }
        let mut opts = Opts::from_url(&self.open)
            .map_err(|e| XaError::Protocol(format!("bad MariaDB URL: {e}")))?;
        if let Some(t) = self.io_timeout {
            opts = mysql::OptsBuilder::from_opts(opts)
                .read_timeout(Some(t))
                .write_timeout(Some(t))
                .tcp_connect_timeout(Some(t))
                .into();
        }
        let mut c = Conn::new(opts)
            .map_err(|e| XaError::Unavailable(format!("cannot connect to MariaDB: {e}")))?;
        if !self.version_checked {
            // Once per session: the connections after it (one per prepared branch)
            // cost no extra round trip.
            // Setting up the session: any error here is the database not giving one
            // (unavailable), never a verdict on a branch, which `classify` could make
            // of a server error (a commit would then read as refused).
            let version: Option<String> = c.query_first("SELECT @@version").map_err(|e| {
                XaError::Unavailable(format!("cannot read the server's version: {e}"))
            })?;
            supported_version(version.as_deref().unwrap_or_default())
                .map_err(XaError::Unavailable)?;
            self.version_checked = true;
        }
        self.conn = Some(c);
        Ok(())
    }

    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_10_5_on_are_accepted() {
        for (v, want) in [
            ("10.11.6-MariaDB-0+deb12u1", (10, 11, 6)),
            ("10.5.0-MariaDB", (10, 5, 0)),
            ("5.5.5-10.6.18-MariaDB-log", (10, 6, 18)),
            ("11.4.2-MariaDB", (11, 4, 2)),
            (" 10.5.27-MariaDB-ubu2004 ", (10, 5, 27)),
        ] {
            assert_eq!(supported_version(v), Ok(want), "{v}");
        }
    }

    #[test]
    fn older_mariadb_mysql_and_garbage_are_refused_naming_the_version() {
        for v in [
            "10.4.32-MariaDB",
            "5.5.5-10.3.39-MariaDB-0+deb10u1",
            "5.5.68-MariaDB",
        ] {
            let e = supported_version(v).expect_err(v);
            assert!(e.contains("too old") && e.contains(v), "{v}: {e}");
        }
        for v in ["8.0.36", "8.4.0-commercial", "5.7.44-log"] {
            let e = supported_version(v).expect_err(v);
            assert!(e.contains("not MariaDB") && e.contains(v), "{v}: {e}");
        }
        for v in ["MariaDB", "x.y-MariaDB", ""] {
            assert!(supported_version(v).is_err(), "{v:?}");
        }
    }
}
