//! PostgreSQL: a branch is a local transaction prepared with `PREPARE TRANSACTION`
//! under the gid `GTRID|BQUAL`; `COMMIT PREPARED` / `ROLLBACK PREPARED` finish it from
//! any session of the same database; `pg_prepared_xacts` lists what is in doubt. The
//! server needs `max_prepared_transactions` above zero.
//!
//! A session that breaks inside a branch takes the branch's work with it; until the
//! branch is ended ([`Rm::prepare`] or [`Rm::rollback_active`]), [`PgRm::client`]
//! then refuses to hand out a new session, whose statements would run in autocommit,
//! outside the global transaction.

use std::any::Any;

use postgres::error::SqlState;
use postgres::{Client, NoTls};
use tpmon_config::RmKind;

use crate::{Rm, Vote, XaError, Xid};

/// One session with a PostgreSQL database.
pub struct PgRm {
    open: String,
    client: Option<Client>,
    /// Counts the sessions opened, to tell the branch's session from a later one.
    session: u64,
    /// The session the active branch began on, from `begin` until `prepare` or
    /// `rollback_active`.
    branch_session: Option<u64>,
}

impl std::fmt::Debug for PgRm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The open string may hold a password.
        f.debug_struct("PgRm")
            .field("connected", &self.client.is_some())
            .finish()
    }
}

/// Classifies a PostgreSQL error by what the caller must do (shared with the
/// transaction manager's asynchronous sessions).
pub fn classify(e: postgres::Error) -> XaError {
    if e.is_closed() || e.as_db_error().is_none() {
        return XaError::Unavailable(e.to_string());
    }
    let code = e.code().cloned();
    let text = e
        .as_db_error()
        .map_or_else(|| e.to_string(), |d| d.message().to_string());
    match code {
        Some(c) if c == SqlState::UNDEFINED_OBJECT => XaError::NotFound(text),
        // "prepared transaction … is busy": another session is finishing it; retry.
        Some(c) if c == SqlState::OBJECT_IN_USE => XaError::Unavailable(text),
        Some(c) if c == SqlState::ADMIN_SHUTDOWN || c == SqlState::CRASH_SHUTDOWN => {
            XaError::Unavailable(text)
        }
        Some(c) if c.code().starts_with("08") || c.code().starts_with("57") => {
            XaError::Unavailable(text)
        }
        _ => XaError::Failed(text),
    }
}

/// Quotes a gid as a SQL string literal (gids are tpmon's own text, but quote anyway).
pub fn literal(gid: &str) -> String {
    format!("'{}'", gid.replace('\'', "''"))
}

impl PgRm {
    /// Connects with a libpq-style connection string or URL.
    pub fn connect(open: &str) -> Result<PgRm, XaError> {
        let mut rm = PgRm {
            open: open.to_string(),
            client: None,
            session: 0,
            branch_session: None,
        };
        rm.ensure_open()?;
        Ok(rm)
    }

    /// The session, for the service's own statements inside the branch.
    ///
    /// Inside a branch whose session broke this is [`XaError::Unavailable`] rather
    /// than a new session: the branch's work is lost, and statements on a new session
    /// would commit on their own.
    pub fn client(&mut self) -> Result<&mut Client, XaError> {
        if let Some(branch) = self.branch_session {
            let alive = self.client.as_ref().is_some_and(|c| !c.is_closed());
            if branch != self.session || !alive {
                return Err(XaError::Unavailable(
                    "the session broke inside the transaction branch, which is rolled back".into(),
                ));
            }
        }
        self.ensure_open()?;
        self.client
            .as_mut()
            .ok_or_else(|| XaError::Unavailable("not connected".into()))
    }

    fn exec(&mut self, sql: &str) -> Result<(), XaError> {
        let c = self.client()?;
        match c.batch_execute(sql) {
            Ok(()) => Ok(()),
            Err(e) => {
                let err = classify(e);
                if err.is_unavailable() {
                    self.client = None;
                }
                Err(err)
            }
        }
    }
}

impl Rm for PgRm {
    fn kind(&self) -> RmKind {
        RmKind::Postgres
    }

    fn begin(&mut self, _xid: &Xid) -> Result<(), XaError> {
        self.branch_session = None;
        self.exec("BEGIN")?;
        self.branch_session = Some(self.session);
        Ok(())
    }

    fn prepare(&mut self, xid: &Xid) -> Result<Vote, XaError> {
        // PREPARE TRANSACTION on a failed transaction rolls it back and reports
        // ROLLBACK without an error. The SELECT in front fails instead ("current
        // transaction is aborted"), and the rest of the string is then not run: one
        // round trip, and a failed branch never reads as prepared. The SELECT also
        // tells whether the branch wrote anything (a transaction id is assigned at the
        // first write): a read-only branch is committed here at once and votes
        // read-only, so phase 2 skips it. It runs on the branch's own session only
        // (`client` refuses a replacement session).
        let gid = literal(&xid.gid());
        let sql = format!("SELECT txid_current_if_assigned() IS NULL; PREPARE TRANSACTION {gid}");
        let r = match self.client() {
            Ok(c) => c.simple_query(&sql).map_err(classify),
            Err(e) => Err(e),
        };
        self.branch_session = None;
        let messages = match r {
            Ok(m) => m,
            Err(e) => {
                if e.is_unavailable() {
                    self.client = None;
                } else {
                    // Leave the session ready for the next branch.
                    let _ = self.exec("ROLLBACK");
                }
                return Err(e);
            }
        };
        let read_only = messages.iter().any(
            |m| matches!(m, postgres::SimpleQueryMessage::Row(row) if row.get(0) == Some("t")),
        );
        if read_only {
            // Nothing to commit, nothing to hold: finish it now.
            self.exec(&format!("COMMIT PREPARED {gid}"))?;
            return Ok(Vote::ReadOnly);
        }
        Ok(Vote::Prepared)
    }

    fn rollback_active(&mut self, _xid: &Xid) -> Result<(), XaError> {
        self.branch_session = None;
        match self.exec("ROLLBACK") {
            // A broken session rolled the work back with it.
            Err(XaError::Unavailable(_)) => Ok(()),
            other => other,
        }
    }

    fn commit(&mut self, xid: &Xid) -> Result<(), XaError> {
        self.exec(&format!("COMMIT PREPARED {}", literal(&xid.gid())))
    }

    fn rollback(&mut self, xid: &Xid) -> Result<(), XaError> {
        self.exec(&format!("ROLLBACK PREPARED {}", literal(&xid.gid())))
    }

    fn recover(&mut self, prefix: &str) -> Result<Vec<Xid>, XaError> {
        let c = self.client()?;
        let rows = match c.query(
            "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() \
             AND starts_with(gid, $1)",
            &[&prefix],
        ) {
            Ok(r) => r,
            Err(e) => {
                let err = classify(e);
                if err.is_unavailable() {
                    self.client = None;
                }
                return Err(err);
            }
        };
        Ok(rows
            .iter()
            .filter_map(|r| r.try_get::<_, String>(0).ok())
            .filter_map(|g| Xid::from_gid(&g))
            .collect())
    }

    fn ensure_open(&mut self) -> Result<(), XaError> {
        if let Some(c) = &self.client {
            if !c.is_closed() {
                return Ok(());
            }
        }
        self.client = None;
        let c = Client::connect(&self.open, NoTls)
            .map_err(|e| XaError::Unavailable(format!("cannot connect to PostgreSQL: {e}")))?;
        self.client = Some(c);
        self.session += 1;
        Ok(())
    }

    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
}
