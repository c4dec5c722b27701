//! What a routine can use besides its request: nested calls and server facts.

use tpmon_client::{CallError, Client};
use tpmon_proto::ErrorKind;
use tpmon_rm::EmbeddedRm;
use tpmon_xa::drivers::{mysql, postgres};
use tpmon_xa::mariadb::MariaRm;
use tpmon_xa::postgres::PgRm;
use tpmon_xa::Rm;

/// The server's context, passed to init, done and every routine.
pub struct Context {
    pub(crate) client: Client,
    pub(crate) server_name: String,
    pub(crate) args: Vec<String>,
    pub(crate) slot: u32,
    /// The group's resource manager session (XA mode), opened at start.
    pub(crate) rm: Option<Box<dyn Rm>>,
    /// This instance's branch is active on `rm` (from its begin until its prepare or
    /// rollback): the session's work belongs to the context's transaction.
    pub(crate) in_branch: bool,
    /// An invocation on this instance failed since the database session was last
    /// checked: the next [`Context::mariadb`] outside a branch pings the connection
    /// (and replaces it if it broke) before handing it out.
    pub(crate) suspect_session: bool,
}

/// Why a routine cannot use its group's database in a transaction it began itself.
const NOT_ENLISTED: &str = "not supported yet: a service cannot enlist its own database \
    in a transaction it began itself (its statements would commit on their own, outside \
    the transaction); use auto_transaction on the group, or call a service of the group \
    inside the transaction";

fn no_rm(what: &str) -> CallError {
    CallError::new(
        ErrorKind::Proto,
        format!("this server's group has no {what} resource manager"),
    )
}

impl Context {
    /// Refuses the database session while the context is in a global transaction that
    /// this instance has no branch of (one the routine began with `tx_begin`): the
    /// session's statements would autocommit while the calls made in the transaction
    /// are part of it.
    fn unenlisted(&self) -> bool {
        self.client.in_transaction() && !self.in_branch
    }

    /// A client context for nested calls (`tpcall`, `tpacall`, `tpgetrply` from a
    /// service). Calls made inside a transaction carry it.
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
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

    /// The PostgreSQL session of the group's resource manager. Inside a global
    /// transaction the statements run in the request's branch (tpmon begins it before
    /// the routine and prepares or rolls it back after); outside one, in autocommit.
    ///
    /// The routine must not end the branch itself (`COMMIT`, `ROLLBACK`,
    /// `postgres::Client::transaction()`): its prepare then fails. In a transaction the
    /// routine began itself (`tx_begin` on [`Context::client`]) the session is refused
    /// (TPEPROTO): this instance has no branch of it.
    pub fn postgres(&mut self) -> Result<&mut postgres::Client, CallError> {
        let unenlisted = self.unenlisted();
        let rm = self.rm.as_mut().ok_or_else(|| no_rm("PostgreSQL"))?;
        let pg = rm
            .as_any()
            .downcast_mut::<PgRm>()
            .ok_or_else(|| no_rm("PostgreSQL"))?;
        if unenlisted {
            return Err(CallError::new(ErrorKind::Proto, NOT_ENLISTED));
        }
        pg.client()
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
        let unenlisted = self.unenlisted();
        let check = self.suspect_session && !self.in_branch;
        let rm = self.rm.as_mut().ok_or_else(|| no_rm("MariaDB"))?;
        let m = rm
            .as_any()
            .downcast_mut::<MariaRm>()
            .ok_or_else(|| no_rm("MariaDB"))?;
        if unenlisted {
            return Err(CallError::new(ErrorKind::Proto, NOT_ENLISTED));
        }
        if check {
            m.check_connection()
                .map_err(|e| CallError::new(ErrorKind::System, e.to_string()))?;
            self.suspect_session = false;
        }
        m.conn()
            .map_err(|e| CallError::new(ErrorKind::System, e.to_string()))
    }

    /// The session with the group's embedded site (`rm = "embedded"`): get, put,
    /// insert, delete and scan over named tables. Inside a global transaction the
    /// operations belong to the request's branch (locked until the transaction
    /// ends, applied at its commit); outside one, each write commits at once. In a
    /// transaction the routine began itself the session is refused, as for
    /// [`Context::postgres`].
    pub fn embedded(&mut self) -> Result<&mut EmbeddedRm, CallError> {
        let unenlisted = self.unenlisted();
        let rm = self.rm.as_mut().ok_or_else(|| no_rm("embedded"))?;
        let site = rm
            .as_any()
            .downcast_mut::<EmbeddedRm>()
            .ok_or_else(|| no_rm("embedded"))?;
        if unenlisted {
            return Err(CallError::new(ErrorKind::Proto, NOT_ENLISTED));
        }
        Ok(site)
    }

    /// Reads a FIELD buffer stored with [`Context::embedded_put_field`] (in the
    /// request's branch, like [`EmbeddedRm::get`]); `None` when the key is absent.
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

    /// Stores a FIELD buffer as the record `table/key` (its wire encoding), in the
    /// request's branch.
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

    /// The resource manager session itself, if the group has one.
    pub fn resource_manager(&mut self) -> Option<&mut (dyn Rm + 'static)> {
        self.rm.as_deref_mut()
    }
}
