//! Sessions with one resource manager for the transaction manager's own use (phase 2,
//! recovery): at most `pool_max` at a time, opened on demand, dropped when they break.
//!
//! PostgreSQL sessions are asynchronous (tokio-postgres on the daemon's runtime), so a
//! COMMIT PREPARED costs no thread hop; the other adapters block and run on tokio's
//! blocking threads. The local port's threads, which live outside the runtime, commit
//! PostgreSQL branches with blocking sessions of their own ([`Pool::commit_blocking`],
//! `blocking_pg`), which saves the hand-offs to the runtime's threads and
//! back. Every call, waiting for a free session included, has a deadline
//! ([`Pool::call_timeout`]). The transaction
//! manager uses only [`Pool::commit`], [`Pool::commit_blocking`], [`Pool::rollback`]
//! and [`Pool::recover`].

use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;
use tpmon_config::{RmKind, XaResource};
use tpmon_xa::postgres::{classify, literal};
use tpmon_xa::{Rm, XaError, Xid};

use crate::blocking_pg::{BlockingPg, Deadline};

/// Longest wait for a new blocking session.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Longest a resource-manager call of the transaction manager may take by default;
/// past it the call counts as "unavailable" (retried later), so that a hung database
/// cannot hold phase 2 or recovery forever.
pub const RM_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A session for the transaction manager: a MariaDB connection whose reads, writes
/// and connects give up after `io_timeout` (the call's deadline), so that a call that
/// missed its deadline frees its thread and place soon after, even against a server
/// stopped outright; other kinds as any session.
fn open_bounded(res: &XaResource, io_timeout: std::time::Duration) -> Result<Box<dyn Rm>, XaError> {
    if res.kind == RmKind::Mariadb {
        let rm = tpmon_xa::mariadb::MariaRm::connect_bounded(res.open.expose(), io_timeout)?;
        return Ok(Box::new(rm));
    }
    tpmon_rm::open(res)
}

async fn bounded<T>(
    limit: std::time::Duration,
    call: impl std::future::Future<Output = Result<T, XaError>>,
) -> Result<T, XaError> {
    match tokio::time::timeout(limit, call).await {
        Ok(r) => r,
        Err(_) => Err(XaError::Unavailable(format!("no answer within {limit:?}"))),
    }
}

impl Drop for Pool {
    /// A blocking session closes itself by running its own small runtime, which is
    /// not allowed inside another runtime's context: when the pool goes away on a
    /// runtime thread, its blocking sessions are closed on a thread of their own.
    fn drop(&mut self) {
        let idle = self
            .pg_blocking_idle
            .get_mut()
            .map(std::mem::take)
            .unwrap_or_default();
        if idle.is_empty() {
            return;
        }
        if tokio::runtime::Handle::try_current().is_err() {
            drop(idle);
            return;
        }
        let slot = Arc::new(Mutex::new(Some(idle)));
        let theirs = slot.clone();
        let closer = std::thread::Builder::new()
            .name("tpmon-pool-close".into())
            .spawn(move || drop(theirs.lock().ok().and_then(|mut s| s.take())));
        match closer {
            Ok(t) => {
                let _ = t.join();
            }
            Err(_) => {
                // No thread: leave the sessions to the end of the process rather than
                // close them here.
                if let Some(idle) = slot.lock().ok().and_then(|mut s| s.take()) {
                    std::mem::forget(idle);
                }
            }
        }
    }
}

/// A pool of sessions with one resource manager.
pub struct Pool {
    res: XaResource,
    idle: Mutex<Vec<Box<dyn Rm>>>,
    /// Idle asynchronous PostgreSQL sessions.
    pg_idle: Mutex<Vec<tokio_postgres::Client>>,
    /// Idle blocking PostgreSQL sessions, for [`Pool::commit_blocking`].
    pg_blocking_idle: Mutex<Vec<BlockingPg>>,
    permits: Arc<Semaphore>,
    call_timeout: std::time::Duration,
}

impl Pool {
    /// A pool for `res`; nothing is opened yet.
    pub fn new(res: XaResource) -> Pool {
        let n = res.pool_max.max(1) as usize;
        Pool {
            res,
            idle: Mutex::new(Vec::new()),
            pg_idle: Mutex::new(Vec::new()),
            pg_blocking_idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(n)),
            call_timeout: RM_CALL_TIMEOUT,
        }
    }

    /// The same pool with another deadline for each call than [`RM_CALL_TIMEOUT`]
    /// (tests use a short one).
    pub fn with_call_timeout(mut self, limit: std::time::Duration) -> Pool {
        self.call_timeout = limit;
        self
    }

    /// The deadline of each call, waiting for a free session included.
    pub fn call_timeout(&self) -> std::time::Duration {
        self.call_timeout
    }

    /// How many of the `pool_max` places are free now (a call that missed its
    /// deadline keeps its place until the driver returns).
    pub fn places_free(&self) -> usize {
        self.permits.available_permits()
    }

    /// The resource this pool talks to.
    pub fn resource(&self) -> &XaResource {
        &self.res
    }

    /// Commits a prepared branch with the decision's checkpoint information.
    pub async fn commit(
        self: &Arc<Self>,
        xid: &Xid,
        decision: crate::Decision,
    ) -> Result<(), XaError> {
        bounded(self.call_timeout, self.commit_inner(xid, decision)).await
    }

    /// True when [`Pool::commit_blocking`] serves this resource manager.
    pub fn blocking_capable(&self) -> bool {
        self.res.kind == RmKind::Postgres
    }

    /// Commits a prepared branch with a blocking session on the calling thread,
    /// which must be a thread of its own outside the runtime (the blocking driver
    /// runs its own event loop there): no hand-off to the runtime's threads and back.
    /// Counts against `pool_max` like the asynchronous sessions: when all of the
    /// pool's sessions are in use it waits for one (on `handle`, up to
    /// [`Pool::call_timeout`], then the branch is "unavailable" and left to recovery),
    /// rather than open an asynchronous session that the idle cap would soon close.
    /// The statement has the same deadline, also when the database server has
    /// stopped outright; a session that missed it is closed.
    /// `None` when the resource manager has no blocking sessions; the caller then
    /// uses [`Pool::commit`].
    pub fn commit_blocking(
        &self,
        handle: &tokio::runtime::Handle,
        xid: &Xid,
    ) -> Option<Result<(), XaError>> {
        if !self.blocking_capable() {
            return None;
        }
        // One deadline for the whole call: the wait for a place, the statement and its
        // retry on a new session (as the asynchronous calls).
        let deadline = Deadline::after(self.call_timeout);
        let _permit = match self.permits.try_acquire() {
            Ok(p) => p,
            Err(_) => {
                match handle.block_on(tokio::time::timeout(
                    deadline.left(),
                    self.permits.acquire(),
                )) {
                    Ok(Ok(p)) => p,
                    Ok(Err(_)) => {
                        return Some(Err(XaError::Unavailable("the pool is closed".into())))
                    }
                    Err(_) => {
                        return Some(Err(XaError::Unavailable(format!(
                            "no session with the database free within {:?}",
                            self.call_timeout
                        ))))
                    }
                }
            }
        };
        let sql = format!("COMMIT PREPARED {}", literal(&xid.gid()));
        for attempt in 0..2 {
            if deadline.left().is_zero() {
                return Some(Err(deadline.missed()));
            }
            let cached = self
                .pg_blocking_idle
                .lock()
                .map(|mut v| v.pop())
                .unwrap_or(None)
                .filter(|c| !c.is_closed());
            let mut client = match cached {
                Some(c) => c,
                None => match self.pg_connect_blocking(deadline) {
                    Ok(c) => c,
                    Err(e) => return Some(Err(e)),
                },
            };
            match client.batch_execute(&sql, deadline) {
                Ok(()) => {
                    self.put_back_blocking(client);
                    return Some(Ok(()));
                }
                Err(err) => {
                    if !err.is_unavailable() {
                        self.put_back_blocking(client);
                        return Some(Err(err));
                    }
                    if attempt == 1 {
                        return Some(Err(err));
                    }
                }
            }
        }
        Some(Err(XaError::Unavailable("unreachable".into())))
    }

    /// Keeps a blocking session for later. The pool keeps at most `pool_max` sessions
    /// idle, of both kinds together, plus one asynchronous session for recovery's
    /// periodic listing (which would otherwise open a session every sweep). When that
    /// many are idle already, a spare idle asynchronous session is closed to make
    /// room, because the blocking path is the one the local port commits on; only
    /// when all of them are blocking ones is this session closed instead.
    fn put_back_blocking(&self, client: BlockingPg) {
        let cap = self.idle_cap();
        let blocking_idle = self.pg_blocking_idle.lock().map_or(cap, |v| v.len());
        if blocking_idle >= cap {
            // Dropped here, on the local port's thread (outside the runtime).
            drop(client);
            return;
        }
        if let Ok(mut idle) = self.pg_idle.lock() {
            if blocking_idle + idle.len() >= cap && idle.len() > 1 {
                // Closing an asynchronous session is a message to its connection
                // task: safe on any thread.
                drop(idle.pop());
            }
        }
        if let Ok(mut idle) = self.pg_blocking_idle.lock() {
            idle.push(client);
        }
    }

    /// Keeps an asynchronous session for later if it is the only one idle or fewer
    /// than `pool_max` sessions of both kinds are idle; else it is closed (a blocking
    /// session must not be closed on the runtime's threads, where this runs).
    fn put_back_async(&self, client: tokio_postgres::Client) {
        let cap = self.idle_cap();
        let blocking_idle = self.pg_blocking_idle.lock().map_or(cap, |v| v.len());
        if let Ok(mut idle) = self.pg_idle.lock() {
            if idle.is_empty() || idle.len() + blocking_idle < cap {
                idle.push(client);
            }
        }
    }

    /// Most sessions kept idle, of both kinds together.
    fn idle_cap(&self) -> usize {
        self.res.pool_max.max(1) as usize
    }

    /// A blocking session that gives up on a database that stops answering: each call
    /// has a deadline of its own ([`Pool::call_timeout`]); a statement timeout of the
    /// same length stops a statement that the server is still running (stuck on a
    /// lock or a slow disk), and a TCP user timeout breaks a session with a host
    /// that vanished.
    fn pg_connect_blocking(&self, deadline: Deadline) -> Result<BlockingPg, XaError> {
        let mut cfg: tokio_postgres::Config = self
            .res
            .open
            .expose()
            .parse()
            .map_err(|e| XaError::Unavailable(format!("cannot connect to PostgreSQL: {e}")))?;
        cfg.connect_timeout(CONNECT_TIMEOUT)
            .tcp_user_timeout(self.call_timeout)
            .keepalives(true)
            .keepalives_idle(std::time::Duration::from_secs(10));
        let mut client = BlockingPg::connect(&cfg, CONNECT_TIMEOUT, deadline)?;
        // A session that cannot be set up is one the database did not give: never a
        // verdict on the branch (which `Failed` would be).
        client
            .batch_execute(
                &format!("SET statement_timeout = {}", self.call_timeout.as_millis()),
                deadline,
            )
            .map_err(|e| match e {
                XaError::Failed(why) => {
                    XaError::Unavailable(format!("cannot set up the session: {why}"))
                }
                other => other,
            })?;
        Ok(client)
    }

    /// Rolls back a prepared branch.
    pub async fn rollback(self: &Arc<Self>, xid: &Xid) -> Result<(), XaError> {
        bounded(self.call_timeout, self.rollback_inner(xid)).await
    }

    /// The prepared branches whose gtrid starts with `prefix`.
    pub async fn recover(self: &Arc<Self>, prefix: &str) -> Result<Vec<Xid>, XaError> {
        bounded(self.call_timeout, self.recover_inner(prefix)).await
    }

    async fn commit_inner(
        self: &Arc<Self>,
        xid: &Xid,
        decision: crate::Decision,
    ) -> Result<(), XaError> {
        if self.res.kind == RmKind::Postgres {
            return self
                .pg_statement(format!("COMMIT PREPARED {}", literal(&xid.gid())))
                .await;
        }
        let xid = xid.clone();
        self.run(move |rm| rm.commit_at(&xid, decision.gcpn, decision.origin))
            .await
    }

    async fn rollback_inner(self: &Arc<Self>, xid: &Xid) -> Result<(), XaError> {
        if self.res.kind == RmKind::Postgres {
            return self
                .pg_statement(format!("ROLLBACK PREPARED {}", literal(&xid.gid())))
                .await;
        }
        let xid = xid.clone();
        self.run(move |rm| rm.rollback(&xid)).await
    }

    async fn recover_inner(self: &Arc<Self>, prefix: &str) -> Result<Vec<Xid>, XaError> {
        if self.res.kind == RmKind::Postgres {
            let prefix = prefix.to_string();
            return self
                .pg(move |c| {
                    let prefix = prefix.clone();
                    Box::pin(async move {
                        let rows = c
                            .query(
                                "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() \
                                 AND starts_with(gid, $1)",
                                &[&prefix],
                            )
                            .await?;
                        Ok(rows
                            .iter()
                            .filter_map(|r| r.try_get::<_, String>(0).ok())
                            .filter_map(|g| Xid::from_gid(&g))
                            .collect())
                    })
                })
                .await;
        }
        let prefix = prefix.to_string();
        self.run(move |rm| rm.recover(&prefix)).await
    }

    /// Runs one statement on an asynchronous PostgreSQL session.
    async fn pg_statement(self: &Arc<Self>, sql: String) -> Result<(), XaError> {
        self.pg(move |c| {
            let sql = sql.clone();
            Box::pin(async move { c.batch_execute(&sql).await })
        })
        .await
    }

    /// Runs `op` on an asynchronous PostgreSQL session, once more on a fresh session
    /// when the first one turns out broken.
    async fn pg<T>(
        self: &Arc<Self>,
        op: impl for<'c> Fn(
            &'c tokio_postgres::Client,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, tokio_postgres::Error>> + Send + 'c>,
        >,
    ) -> Result<T, XaError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| XaError::Unavailable("the pool is closed".into()))?;
        for attempt in 0..2 {
            let cached = self
                .pg_idle
                .lock()
                .map(|mut v| v.pop())
                .unwrap_or(None)
                .filter(|c| !c.is_closed());
            let client = match cached {
                Some(c) => c,
                None => self.pg_connect().await?,
            };
            match op(&client).await {
                Ok(v) => {
                    self.put_back_async(client);
                    return Ok(v);
                }
                Err(e) => {
                    let err = classify(e);
                    if !err.is_unavailable() {
                        self.put_back_async(client);
                        return Err(err);
                    }
                    if attempt == 1 {
                        return Err(err);
                    }
                }
            }
        }
        Err(XaError::Unavailable("unreachable".into()))
    }

    async fn pg_connect(&self) -> Result<tokio_postgres::Client, XaError> {
        let (client, connection) =
            tokio_postgres::connect(self.res.open.expose(), tokio_postgres::NoTls)
                .await
                .map_err(|e| XaError::Unavailable(format!("cannot connect to PostgreSQL: {e}")))?;
        tokio::spawn(async move {
            // Ends when the session closes or breaks; the client then reports closed.
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Runs `op` on a session (reconnecting once if the session had broken).
    pub async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        mut op: impl FnMut(&mut dyn Rm) -> Result<T, XaError> + Send + 'static,
    ) -> Result<T, XaError> {
        if self.res.kind == tpmon_config::RmKind::Noop {
            // Nothing blocks: no thread hop.
            return op(&mut tpmon_xa::noop::NoopRm);
        }
        // The place goes with the blocking call, not with this future: a call that
        // missed its deadline leaves its thread blocked in the driver until the
        // database answers or the connection breaks, and must keep counting against
        // `pool_max` until then, or a hung database would collect threads without end.
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| XaError::Unavailable("the pool is closed".into()))?;
        let cached = self.idle.lock().map(|mut v| v.pop()).unwrap_or(None);
        let res = self.res.clone();
        let io_timeout = self.call_timeout;
        let joined = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut rm = match cached {
                Some(rm) => rm,
                None => match open_bounded(&res, io_timeout) {
                    Ok(rm) => rm,
                    Err(e) => return (None, Err(e)),
                },
            };
            let r = tpmon_xa::with_reconnect(rm.as_mut(), op);
            let keep = !matches!(&r, Err(e) if e.is_unavailable());
            (keep.then_some(rm), r)
        })
        .await;
        match joined {
            Ok((rm, r)) => {
                if let Some(rm) = rm {
                    if let Ok(mut idle) = self.idle.lock() {
                        idle.push(rm);
                    }
                }
                r
            }
            Err(e) => Err(XaError::Unavailable(format!(
                "resource manager call failed: {e}"
            ))),
        }
    }
}
