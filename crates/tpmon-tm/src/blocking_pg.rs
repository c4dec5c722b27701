//! A PostgreSQL session driven from a thread outside the daemon's runtime (the local
//! port's threads), with a deadline on every call.
//!
//! The session is a `tokio-postgres` client on a small current-thread runtime of its
//! own, which the calling thread runs for the length of each call. Unlike the
//! blocking `postgres` crate, whose calls cannot be given a deadline, a call here
//! gives up when its deadline passes, also when the database server has stopped
//! outright (its kernel still acknowledges the bytes, so no TCP timeout fires): the
//! session is then closed and the caller leaves the branch to recovery.
//!
//! It owns the session and its runtime only; which sessions are kept, and how many,
//! is the pool's business. It must not be used, nor dropped, on a thread of another
//! runtime (a runtime may not run inside another).

use std::time::{Duration, Instant};

use tpmon_xa::postgres::classify;
use tpmon_xa::XaError;

/// When a call must have its answer: `of` after it began.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    at: Instant,
    of: Duration,
}

impl Deadline {
    /// `of` from now.
    pub(crate) fn after(of: Duration) -> Deadline {
        Deadline {
            at: Instant::now() + of,
            of,
        }
    }

    /// The time left (zero once it has passed).
    pub(crate) fn left(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// The error of a call that missed it.
    pub(crate) fn missed(&self) -> XaError {
        XaError::Unavailable(format!("no answer within {:?}", self.of))
    }
}

/// A session's runtime, shut down without waiting when dropped: a connect that missed
/// its deadline may leave a name lookup running on the runtime's blocking thread,
/// which an ordinary drop would wait for.
struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl OwnRuntime {
    fn get(&self) -> &tokio::runtime::Runtime {
        // Only `drop` takes it.
        self.0
            .as_ref()
            .expect("the runtime lives as long as its owner")
    }
}

/// One blocking PostgreSQL session with deadlines.
pub(crate) struct BlockingPg {
    client: tokio_postgres::Client,
    /// Runs the session's connection task while a call waits; dropping it closes the
    /// connection.
    rt: OwnRuntime,
}

impl BlockingPg {
    /// Opens a session with `cfg`, giving up after `limit` or at `deadline`,
    /// whichever comes first.
    pub(crate) fn connect(
        cfg: &tokio_postgres::Config,
        limit: Duration,
        deadline: Deadline,
    ) -> Result<Self, XaError> {
        let unavailable =
            |e: String| XaError::Unavailable(format!("cannot connect to PostgreSQL: {e}"));
        let rt = OwnRuntime(Some(
            tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()
                .map_err(|e| unavailable(format!("no runtime for the session: {e}")))?,
        ));
        let wait = limit.min(deadline.left());
        // The timer is made inside the runtime (it needs its context).
        let connected = rt.get().block_on(async {
            tokio::time::timeout(wait, cfg.connect(tokio_postgres::NoTls)).await
        });
        let (client, connection) = match connected {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(unavailable(e.to_string())),
            Err(_) if wait < limit => return Err(deadline.missed()),
            Err(_) => return Err(unavailable(format!("no answer within {limit:?}"))),
        };
        rt.get().spawn(async move {
            // Ends when the session closes or breaks; the client then reports closed.
            let _ = connection.await;
        });
        Ok(BlockingPg { client, rt })
    }

    /// Runs `sql` (one or more statements without results), giving up at `deadline`:
    /// then the answer is [`XaError::Unavailable`] and the session must be dropped,
    /// since the statement may still run.
    pub(crate) fn batch_execute(&mut self, sql: &str, deadline: Deadline) -> Result<(), XaError> {
        let client = &self.client;
        let limit = deadline.left();
        match self
            .rt
            .get()
            .block_on(async { tokio::time::timeout(limit, client.batch_execute(sql)).await })
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(classify(e)),
            Err(_) => Err(deadline.missed()),
        }
    }

    /// True when the session has broken or closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
}
