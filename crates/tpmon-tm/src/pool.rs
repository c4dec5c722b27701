//! Sessions with one resource manager for the transaction manager's own use (phase 2,
//! recovery): at most `pool_max` at a time, opened on demand, dropped when they break.
//! Resource-manager calls block, so they run on tokio's blocking threads.

use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;
use tpmon_config::XaResource;
use tpmon_xa::{Rm, XaError};

/// A pool of sessions with one resource manager.
pub struct Pool {
    res: XaResource,
    idle: Mutex<Vec<Box<dyn Rm>>>,
    permits: Arc<Semaphore>,
}

impl Pool {
    /// A pool for `res`; nothing is opened yet.
    pub fn new(res: XaResource) -> Pool {
        let n = res.pool_max.max(1) as usize;
        Pool {
            res,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(n)),
        }
    }

    /// The resource this pool talks to.
    pub fn resource(&self) -> &XaResource {
        &self.res
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
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| XaError::Unavailable("the pool is closed".into()))?;
        let cached = self.idle.lock().map(|mut v| v.pop()).unwrap_or(None);
        let res = self.res.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let mut rm = match cached {
                Some(rm) => rm,
                None => match tpmon_xa::open(&res) {
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
