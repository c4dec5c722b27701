//! What a routine can use besides its request: nested calls, the TX API, its group's
//! database session and server facts.
//!
//! This module owns the instance's branch of a transaction the routine began itself
//! (enlisted at the first use of the database inside it, prepared or rolled back by
//! [`ServiceClient::tx_commit`] / [`ServiceClient::tx_rollback`]). The branch of a
//! request's transaction (the caller's, or an automatic one) belongs to the runtime;
//! this module must not end it.

use std::ops::{Deref, DerefMut};

use tpmon_client::{CallError, Client, Committed, TxError, TxStatus};
use tpmon_proto::{Branch, ErrorKind, Vote};
use tpmon_rm::EmbeddedRm;
use tpmon_xa::drivers::{mysql, postgres};
use tpmon_xa::mariadb::MariaRm;
use tpmon_xa::postgres::PgRm;
use tpmon_xa::{Rm, Xid};

/// The server's context, passed to init, done and every routine.
pub struct Context {
    pub(crate) client: Client,
    pub(crate) server_name: String,
    pub(crate) args: Vec<String>,
    pub(crate) slot: u32,
    /// The server's group (the `group` of the branches it reports).
    pub(crate) group: u16,
    /// The group's resource manager session (XA mode), opened at start.
    pub(crate) rm: Option<Box<dyn Rm>>,
    /// This instance's branch is active on `rm` (from its begin until its prepare or
    /// rollback): the session's work belongs to the context's transaction.
    pub(crate) in_branch: bool,
    /// The active branch on `rm` of a transaction the routine began itself (`None`
    /// while the routine has not used its database in it).
    pub(crate) own_branch: Option<Xid>,
    /// Branches started by this instance (for unique bquals).
    pub(crate) branch_seq: u64,
    /// An invocation on this instance failed since the database session was last
    /// checked: the next [`Context::mariadb`] outside a branch pings the connection
    /// (and replaces it if it broke) before handing it out.
    pub(crate) suspect_session: bool,
}

/// The routine's client context ([`Context::client`]): nested calls (`tpcall`,
/// `tpacall`, `tpgetrply`) and the TX API, through [`Client`], which it
/// dereferences to. Its own [`ServiceClient::tx_commit`] and
/// [`ServiceClient::tx_rollback`] first prepare or roll back this instance's branch of
/// a transaction the routine began itself.
pub struct ServiceClient<'a> {
    ctx: &'a mut Context,
}

impl Deref for ServiceClient<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.ctx.client
    }
}

impl DerefMut for ServiceClient<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.ctx.client
    }
}

impl ServiceClient<'_> {
    /// `tx_commit` of a transaction the routine began: prepares this instance's branch
    /// of it (if the routine used its database in it) and then commits the whole
    /// through the transaction manager, as [`Client::tx_commit`]. A branch that fails
    /// to prepare rolls the transaction back (`TxError::RolledBack`).
    pub fn tx_commit(&mut self) -> Result<Committed, TxError> {
        if self.ctx.client.is_originator() {
            self.ctx.end_own_branch(true);
        }
        self.ctx.client.tx_commit()
    }

    /// `tx_rollback` of a transaction the routine began: rolls this instance's branch
    /// of it back, then the rest through the transaction manager, as
    /// [`Client::tx_rollback`].
    pub fn tx_rollback(&mut self) -> Result<(), TxError> {
        if self.ctx.client.is_originator() {
            self.ctx.end_own_branch(false);
        }
        self.ctx.client.tx_rollback()
    }
}

fn no_rm(what: &str) -> CallError {
    CallError::new(
        ErrorKind::Proto,
        format!("this server's group has no {what} resource manager"),
    )
}

impl Context {
    /// A new branch id of this instance for `gtrid`: slot, process and sequence make
    /// it unique among the branches of the domain.
    pub(crate) fn next_xid(&mut self, gtrid: String) -> Xid {
        self.branch_seq += 1;
        Xid::new(
            gtrid,
            format!(
                "{:x}.{:x}.{:x}",
                self.slot,
                std::process::id(),
                self.branch_seq
            ),
        )
    }

    /// Before the database session is handed out: inside a transaction the routine
    /// began itself, of which this instance has no branch yet, starts one (the
    /// session's work then belongs to the transaction, and the end prepares it).
    fn enlist(&mut self) -> Result<(), CallError> {
        let current = self.client.current_gtrid();
        // A branch of a transaction the context is no longer in (left through the
        // client's runtime-only methods): its work can never commit.
        if self
            .own_branch
            .as_ref()
            .is_some_and(|x| Some(&x.gtrid) != current.as_ref())
        {
            self.end_own_branch(false);
        }
        if self.in_branch || !self.client.is_originator() {
            return Ok(());
        }
        let Some(gtrid) = current else {
            return Ok(());
        };
        let xid = self.next_xid(gtrid);
        let Some(rm) = self.rm.as_mut() else {
            return Ok(());
        };
        if let Err(e) = tpmon_xa::with_reconnect(rm.as_mut(), |rm| rm.begin(&xid)) {
            let _ = rm.rollback_active(&xid);
            return Err(CallError::new(
                ErrorKind::System,
                format!("cannot start this instance's branch of the transaction: {e}"),
            ));
        }
        self.in_branch = true;
        self.client.set_local_branch(true);
        self.own_branch = Some(xid);
        Ok(())
    }

    /// Ends the branch of a transaction the routine began itself, if it has one:
    /// prepared and added to the transaction's branches (`commit`, and the
    /// transaction can still commit), else rolled back. A branch that fails to
    /// prepare is reported as failed, which dooms the transaction.
    pub(crate) fn end_own_branch(&mut self, commit: bool) {
        let Some(xid) = self.own_branch.take() else {
            return;
        };
        self.in_branch = false;
        self.client.set_local_branch(false);
        let Some(rm) = self.rm.as_mut() else {
            return;
        };
        let current = self.client.current_gtrid();
        if current.as_ref() != Some(&xid.gtrid) {
            // The context left the branch's transaction behind (through the client's
            // runtime-only methods): the branch cannot belong to the current one.
            let _ = rm.rollback_active(&xid);
            if current.is_some() {
                self.client.join_branch(Branch {
                    group: self.group,
                    bqual: b"abandoned".to_vec(),
                    vote: Vote::Failed,
                    cpn: 0,
                });
            }
            return;
        }
        let can_commit = commit && self.client.tx_info().status == Some(TxStatus::Active);
        if !can_commit {
            let _ = rm.rollback_active(&xid);
            return;
        }
        let (vote, cpn) = match rm.prepare_cpn(&xid) {
            Ok(v) => v,
            Err(e) => {
                let _ = rm.rollback_active(&xid);
                eprintln!(
                    "tpmon server {}[{}]: the branch {xid} of a transaction the service began \
                     failed to prepare: {e}",
                    self.server_name,
                    std::process::id()
                );
                (Vote::Failed, 0)
            }
        };
        self.client.join_branch(Branch {
            group: self.group,
            bqual: xid.bqual.into_bytes(),
            vote,
            cpn,
        });
    }

    /// The routine's client context: nested calls (`tpcall`, `tpacall`, `tpgetrply`
    /// from a service), which carry the transaction the routine runs in, and the TX
    /// API for a transaction the routine begins itself.
    pub fn client(&mut self) -> ServiceClient<'_> {
        ServiceClient { ctx: self }
    }
    /// The node this instance runs on (also in the environment as `TPMON_NODE`).
    pub fn node(&self) -> &str {
        &self.client.welcome().node
    }
    /// The server's name in the configuration.
    pub fn server_name(&self) -> &str {
        &self.server_name
    }
    /// The server's arguments from the configuration.
    pub fn args(&self) -> &[String] {
        &self.args
    }
    /// This instance's slot number in the domain's status table.
    pub fn instance(&self) -> u32 {
        self.slot
    }

    /// The group's resource manager as the adapter `T`, or TPEPROTO naming `what`
    /// the group lacks.
    fn rm_as<T: 'static>(&mut self, what: &str) -> Result<&mut T, CallError> {
        self.rm
            .as_mut()
            .and_then(|rm| rm.as_any().downcast_mut::<T>())
            .ok_or_else(|| no_rm(what))
    }

    /// The PostgreSQL session of the group's resource manager. Inside a global
    /// transaction the statements run in this instance's branch of it; outside one,
    /// in autocommit. The branch of a request's transaction (the caller's, or an
    /// automatic one) is begun by tpmon before the routine and prepared or rolled back
    /// after. In a transaction the routine began itself (`tx_begin` on
    /// [`Context::client`]), the first use begins the branch, and the routine's
    /// `tx_commit` / `tx_rollback` on [`Context::client`] prepares or rolls it back.
    ///
    /// The routine must not end the branch itself (`COMMIT`, `ROLLBACK`,
    /// `postgres::Client::transaction()`): its prepare then fails.
    pub fn postgres(&mut self) -> Result<&mut postgres::Client, CallError> {
        self.rm_as::<PgRm>("PostgreSQL")?;
        self.enlist()?;
        self.rm_as::<PgRm>("PostgreSQL")?
            .client()
            .map_err(|e| CallError::new(ErrorKind::System, e.to_string()))
    }

    /// The MariaDB connection of the group's resource manager (see
    /// [`Context::postgres`]; the routine must not run `XA` statements on it).
    ///
    /// The driver does not reconnect by itself: outside a branch, after an invocation
    /// on this instance failed (TPFAIL, an error), the connection is pinged first and
    /// replaced if it broke (a database restart), so one failure is all a restart
    /// costs a non-transactional service. A healthy instance pays no extra round trip.
    pub fn mariadb(&mut self) -> Result<&mut mysql::Conn, CallError> {
        let check = self.suspect_session && !self.in_branch;
        let m = self.rm_as::<MariaRm>("MariaDB")?;
        if check {
            m.check_connection()
                .map_err(|e| CallError::new(ErrorKind::System, e.to_string()))?;
            self.suspect_session = false;
        }
        self.enlist()?;
        self.rm_as::<MariaRm>("MariaDB")?
            .conn()
            .map_err(|e| CallError::new(ErrorKind::System, e.to_string()))
    }

    /// The session with the group's embedded site (`rm = "embedded"`): get, put,
    /// insert, delete and scan over named tables. Inside a global transaction the
    /// operations belong to this instance's branch of it (locked until the
    /// transaction ends, applied at its commit), begun as for [`Context::postgres`];
    /// outside one, each write commits at once.
    pub fn embedded(&mut self) -> Result<&mut EmbeddedRm, CallError> {
        self.rm_as::<EmbeddedRm>("embedded")?;
        self.enlist()?;
        self.rm_as::<EmbeddedRm>("embedded")
    }

    /// Reads a FIELD buffer stored with [`Context::embedded_put_field`] (in this
    /// instance's branch of the transaction, like [`Context::embedded`]); `None` when
    /// the key is absent.
    pub fn embedded_get_field(
        &mut self,
        table: &str,
        key: &[u8],
    ) -> Result<Option<tpmon_buffer::FieldBuffer>, CallError> {
        let site = self.embedded()?;
        let raw = site
            .get(table, key)
            .map_err(|e| CallError::new(ErrorKind::System, e.to_string()))?;
        raw.map(|b| {
            tpmon_buffer::FieldBuffer::decode(&b).map_err(|e| {
                CallError::new(
                    ErrorKind::System,
                    format!(
                        "{table}/{}: not a FIELD buffer: {e}",
                        tpmon_rm::error::show_key(key)
                    ),
                )
            })
        })
        .transpose()
    }

    /// Stores a FIELD buffer as the record `table/key` (its wire encoding), in this
    /// instance's branch of the transaction, like [`Context::embedded`].
    pub fn embedded_put_field(
        &mut self,
        table: &str,
        key: &[u8],
        value: &tpmon_buffer::FieldBuffer,
    ) -> Result<(), CallError> {
        let bytes = value.to_bytes();
        self.embedded()?
            .put(table, key, &bytes)
            .map_err(|e| CallError::new(ErrorKind::System, e.to_string()))
    }

    /// The resource manager adapter itself, if the group has one: for its kind, and for
    /// what the session accessors do not offer. Unlike [`Context::postgres`],
    /// [`Context::mariadb`] and [`Context::embedded`] it does not begin this instance's
    /// branch of a transaction the routine began itself: use one of those first, or
    /// the statements run through it there are outside the transaction.
    pub fn resource_manager(&mut self) -> Option<&mut (dyn Rm + 'static)> {
        self.rm.as_deref_mut()
    }
}
