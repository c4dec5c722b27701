//! Strict two-phase locking for the embedded store: shared and exclusive locks on
//! keys, shared and intention-exclusive locks on tables (a scan holds its table
//! shared, so no phantom can appear in its range), held until the branch ends, and a
//! lock-wait timeout that breaks deadlocks (spec 03's assumption).
//!
//! Owns the lock table and waiting; it must not know about branches beyond their
//! names, and it never releases a lock on its own.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::{show_key, RmError};

/// A key lock's mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Shared (read).
    Shared,
    /// Exclusive (write).
    Exclusive,
}

/// A table lock's mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableMode {
    /// Shared: a scan; no one else may write the table.
    Shared,
    /// Intention exclusive: a writer of some keys.
    IntentExclusive,
}

#[derive(Default)]
struct KeyLock {
    x: Option<String>,
    s: Vec<String>,
}

#[derive(Default)]
struct TableLock {
    s: Vec<String>,
    ix: Vec<String>,
}

#[derive(Default)]
struct LockTable {
    keys: HashMap<(String, Vec<u8>), KeyLock>,
    tables: HashMap<String, TableLock>,
}

/// What one branch holds, for release.
#[derive(Debug, Default, Clone)]
pub struct Held {
    keys: Vec<(String, Vec<u8>)>,
    tables: Vec<String>,
}

impl Held {
    /// Number of locks held.
    pub fn len(&self) -> usize {
        self.keys.len() + self.tables.len()
    }
    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `a` and `b` together (each lock once).
pub(crate) fn merge(mut a: Held, b: Held) -> Held {
    for k in b.keys {
        if !a.keys.contains(&k) {
            a.keys.push(k);
        }
    }
    for t in b.tables {
        if !a.tables.contains(&t) {
            a.tables.push(t);
        }
    }
    a
}

/// The lock manager of one site.
#[derive(Default)]
pub struct Locks {
    inner: Mutex<LockTable>,
    cv: Condvar,
}

fn others(v: &[String], owner: &str) -> bool {
    v.iter().any(|o| o != owner)
}

impl Locks {
    /// A lock manager with nothing locked.
    pub fn new() -> Locks {
        Locks::default()
    }

    fn lock(&self) -> MutexGuard<'_, LockTable> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Locks `table/key` in `mode` for `owner`, waiting up to `timeout`.
    pub fn lock_key(
        &self,
        owner: &str,
        held: &mut Held,
        table: &str,
        key: &[u8],
        mode: Mode,
        timeout: Duration,
    ) -> Result<(), RmError> {
        let start = Instant::now();
        let id = (table.to_string(), key.to_vec());
        let mut g = self.lock();
        loop {
            let l = g.keys.entry(id.clone()).or_default();
            let x_free = l.x.as_deref().is_none_or(|o| o == owner);
            let grant = match mode {
                Mode::Shared => x_free,
                Mode::Exclusive => x_free && !others(&l.s, owner),
            };
            if grant {
                let already = l.x.as_deref() == Some(owner) || l.s.iter().any(|o| o == owner);
                match mode {
                    Mode::Shared if !already => l.s.push(owner.to_string()),
                    Mode::Exclusive if l.x.is_none() => l.x = Some(owner.to_string()),
                    _ => {}
                }
                if !already {
                    held.keys.push(id);
                }
                return Ok(());
            }
            let waited = start.elapsed();
            if waited >= timeout {
                return Err(RmError::LockTimeout {
                    table: table.to_string(),
                    key: show_key(key),
                    waited_ms: waited.as_millis() as u64,
                });
            }
            g = self
                .cv
                .wait_timeout(g, timeout - waited)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Locks `table` in `mode` for `owner`, waiting up to `timeout`.
    pub fn lock_table(
        &self,
        owner: &str,
        held: &mut Held,
        table: &str,
        mode: TableMode,
        timeout: Duration,
    ) -> Result<(), RmError> {
        let start = Instant::now();
        let mut g = self.lock();
        loop {
            let t = g.tables.entry(table.to_string()).or_default();
            let grant = match mode {
                TableMode::Shared => !others(&t.ix, owner),
                TableMode::IntentExclusive => !others(&t.s, owner),
            };
            if grant {
                let list = match mode {
                    TableMode::Shared => &mut t.s,
                    TableMode::IntentExclusive => &mut t.ix,
                };
                if !list.iter().any(|o| o == owner) {
                    list.push(owner.to_string());
                    if !held.tables.iter().any(|n| n == table) {
                        held.tables.push(table.to_string());
                    }
                }
                return Ok(());
            }
            let waited = start.elapsed();
            if waited >= timeout {
                return Err(RmError::LockTimeout {
                    table: table.to_string(),
                    key: "(table)".into(),
                    waited_ms: waited.as_millis() as u64,
                });
            }
            g = self
                .cv
                .wait_timeout(g, timeout - waited)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Releases everything `owner` holds.
    pub fn release(&self, owner: &str, held: Held) {
        if held.is_empty() {
            return;
        }
        let mut g = self.lock();
        for id in held.keys {
            let remove = match g.keys.get_mut(&id) {
                Some(l) => {
                    if l.x.as_deref() == Some(owner) {
                        l.x = None;
                    }
                    l.s.retain(|o| o != owner);
                    l.x.is_none() && l.s.is_empty()
                }
                None => false,
            };
            if remove {
                g.keys.remove(&id);
            }
        }
        for t in held.tables {
            let remove = match g.tables.get_mut(&t) {
                Some(l) => {
                    l.s.retain(|o| o != owner);
                    l.ix.retain(|o| o != owner);
                    l.s.is_empty() && l.ix.is_empty()
                }
                None => false,
            };
            if remove {
                g.tables.remove(&t);
            }
        }
        drop(g);
        self.cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_millis(50);

    #[test]
    fn shared_locks_share_and_exclusive_ones_wait_then_time_out() {
        let l = Locks::new();
        let (mut a, mut b) = (Held::default(), Held::default());
        l.lock_key("a", &mut a, "t", b"k", Mode::Shared, T)
            .expect("a S");
        l.lock_key("b", &mut b, "t", b"k", Mode::Shared, T)
            .expect("b S");
        let e = l.lock_key("b", &mut b, "t", b"k", Mode::Exclusive, T);
        assert!(matches!(e, Err(RmError::LockTimeout { .. })), "{e:?}");
        l.release("a", a);
        l.lock_key("b", &mut b, "t", b"k", Mode::Exclusive, T)
            .expect("upgrade once alone");
        let mut c = Held::default();
        assert!(l.lock_key("c", &mut c, "t", b"k", Mode::Shared, T).is_err());
        l.release("b", b);
        l.lock_key("c", &mut c, "t", b"k", Mode::Shared, T)
            .expect("free again");
    }

    #[test]
    fn a_scan_excludes_writers_of_its_table() {
        let l = Locks::new();
        let (mut a, mut b) = (Held::default(), Held::default());
        l.lock_table("a", &mut a, "t", TableMode::Shared, T)
            .expect("scan");
        assert!(l
            .lock_table("b", &mut b, "t", TableMode::IntentExclusive, T)
            .is_err());
        l.lock_table("b", &mut b, "u", TableMode::IntentExclusive, T)
            .expect("other table");
        l.lock_table("a", &mut a, "t", TableMode::IntentExclusive, T)
            .expect("own scan");
        l.release("a", a);
        l.lock_table("b", &mut b, "t", TableMode::IntentExclusive, T)
            .expect("after release");
    }

    #[test]
    fn a_waiter_is_granted_when_the_holder_releases() {
        let l = std::sync::Arc::new(Locks::new());
        let mut a = Held::default();
        l.lock_key("a", &mut a, "t", b"k", Mode::Exclusive, T)
            .expect("a X");
        let l2 = l.clone();
        let waiter = std::thread::spawn(move || {
            let mut b = Held::default();
            l2.lock_key(
                "b",
                &mut b,
                "t",
                b"k",
                Mode::Exclusive,
                Duration::from_secs(30),
            )
        });
        // The waiter may or may not be waiting yet; either way it must be granted.
        l.release("a", a);
        waiter.join().expect("join").expect("granted");
    }
}
