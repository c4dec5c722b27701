//! PostgreSQL: a branch is a local transaction prepared with `PREPARE TRANSACTION`
//! under the gid `GTRID|BQUAL`; `COMMIT PREPARED` / `ROLLBACK PREPARED` finish it from
//! any session of the same database; `pg_prepared_xacts` lists what is in doubt. The
//! server needs `max_prepared_transactions` above zero.
//!
//! A session that breaks inside a branch takes the branch's work with it; until the
//! branch is ended ([`Rm::prepare`] or [`Rm::rollback_active`]), [`PgRm::client`]
//! then refuses to hand out a new session, whose statements would run in autocommit,
//! outside the global transaction.
//!
//! The branch is marked at its begin (`SET LOCAL tpmon.branch = 'gid'`, in the same
//! round trip as `BEGIN`), and the prepare checks the mark in the same round trip as
//! `PREPARE TRANSACTION`. A service that ended the database transaction itself
//! (`COMMIT`, `ROLLBACK`, `postgres::Client::transaction()` and its commit) took the
//! mark with it: its committed work is outside the global transaction, and the
//! prepare fails instead of reading the branch as read-only.

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
/// A backslash makes it an escape string (`E'…'`, backslashes doubled), which reads the
/// same whatever `standard_conforming_strings` is.
pub fn literal(gid: &str) -> String {
    let quoted = gid.replace('\'', "''");
    if quoted.contains('\\') {
        format!("E'{}'", quoted.replace('\\', "\\\\"))
    } else {
        format!("'{quoted}'")
    }
}

/// The session setting that marks the active branch (`SET LOCAL`, so it ends with the
/// database transaction).
const BRANCH_MARK: &str = "tpmon.branch";

/// A setting that does not exist: reading it is how the prepare's statement fails when
/// the branch's mark is missing. Its name is in PostgreSQL's error message, by which
/// [`PgRm::prepare`] recognises the failure.
const MARK_MISSING: &str = "tpmon.branch_ended_by_the_service";

/// Why a branch whose mark is gone cannot prepare.
pub const ENDED_BY_SERVICE: &str = "the service committed or rolled back the database \
    transaction itself inside a global transaction (COMMIT, ROLLBACK or \
    postgres::Client::transaction() on the branch's session): work it committed that way \
    is not part of the global transaction and stays committed whatever the transaction's \
    outcome; the branch is rolled back and votes failed";

/// The statements that begin the branch of `gid` and mark it, for one round trip.
fn begin_sql(gid: &str) -> String {
    format!("BEGIN; SET LOCAL {BRANCH_MARK} = {}", literal(gid))
}

/// The statements that check the mark, tell whether the branch wrote anything and
/// prepare it, for one round trip. The `SELECT` fails, and the rest is not run, when
/// the transaction is aborted ("current transaction is aborted") and when the mark is
/// not this branch's: the `ELSE` reads a setting that does not exist. `current_setting`
/// is stable, not immutable, so the planner does not evaluate it ahead of the `CASE`.
fn prepare_sql(gid: &str) -> String {
    let gid = literal(gid);
    format!(
        "SELECT CASE WHEN current_setting('{BRANCH_MARK}', true) = {gid} \
         THEN txid_current_if_assigned() IS NULL \
         ELSE current_setting('{MARK_MISSING}')::boolean END; \
         PREPARE TRANSACTION {gid}"
    )
}

/// True when the error is the prepare's missing-mark failure.
fn is_mark_missing(e: &postgres::Error) -> bool {
    e.as_db_error()
        .is_some_and(|d| d.message().contains(MARK_MISSING))
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

    fn begin(&mut self, xid: &Xid) -> Result<(), XaError> {
        self.branch_session = None;
        self.exec(&begin_sql(&xid.gid()))?;
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
        // read-only, so phase 2 skips it. The SELECT checks the branch's mark too: a
        // service that committed or rolled back the database transaction itself took it
        // with it, and the prepare fails. It runs on the branch's own session only
        // (`client` refuses a replacement session).
        let gid = literal(&xid.gid());
        let sql = prepare_sql(&xid.gid());
        let r = match self.client() {
            Ok(c) => c.simple_query(&sql).map_err(|e| {
                if is_mark_missing(&e) {
                    XaError::Failed(ENDED_BY_SERVICE.into())
                } else {
                    classify(e)
                }
            }),
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
