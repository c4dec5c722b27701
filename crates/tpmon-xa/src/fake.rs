//! A scripted resource manager for fault injection: its "database" is a directory, so
//! that the server instances (which prepare) and the transaction manager (which
//! commits and recovers) see the same state, and a killed process loses nothing.
//!
//! Layout of the directory:
//! * `script`: one rule per line, `OP OUTCOME COUNT`: the next COUNT calls of OP
//!   (`begin`, `prepare`, `commit`, `rollback`, `recover`) fail with OUTCOME (`fail`:
//!   the RM refuses, `rmfail`: the RM is unavailable, `nota`: unknown branch; `hang`:
//!   the call blocks while a file `hold` exists in the directory, at most a minute,
//!   then goes on as if nothing was scripted: a database that stopped answering).
//!   Rules for the same OP apply in order. Lines starting with `#` are comments.
//! * `consumed`: how many failures of each rule were used (kept by this module).
//! * `calls`: one line per call, `OP GID RESULT` (`ok` or the outcome): what tests
//!   count.
//! * `prepared/GID`: a file per prepared branch; `committed` and `rolledback` list
//!   the gids that completed each way.
//!
//! Every call takes an exclusive `flock` on `lock` so that processes interleave
//! whole calls.

use std::any::Any;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use tpmon_config::RmKind;

use crate::{Rm, Vote, XaError, Xid};

/// A session with the fake resource manager in one directory.
#[derive(Debug)]
pub struct FakeRm {
    dir: PathBuf,
}

struct Lock(File);

impl Lock {
    fn take(dir: &Path) -> Result<Lock, XaError> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))
            .map_err(|e| XaError::Unavailable(format!("fake RM lock: {e}")))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(XaError::Unavailable(format!(
                "fake RM lock: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(Lock(f))
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // SAFETY: as above; closing the file would release it too.
        unsafe {
            libc::flock(self.0.as_raw_fd(), libc::LOCK_UN);
        }
    }
}

fn io(e: std::io::Error) -> XaError {
    XaError::Unavailable(format!("fake RM: {e}"))
}

/// File-name form of a gid (gids hold `:` and `|`, which are fine on Linux, and `/`,
/// which never appears in tpmon gids).
fn file_name(xid: &Xid) -> String {
    xid.gid().replace('/', "%2F")
}

impl FakeRm {
    /// Opens (creating) the fake RM in `dir`.
    pub fn open(dir: &str) -> Result<FakeRm, XaError> {
        let dir = PathBuf::from(dir);
        fs::create_dir_all(dir.join("prepared")).map_err(io)?;
        Ok(FakeRm { dir })
    }

    /// Number of calls of `op` recorded in `dir/calls` (for tests).
    pub fn count_calls(dir: &Path, op: &str, result: Option<&str>) -> usize {
        fs::read_to_string(dir.join("calls"))
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                let mut w = l.split(' ');
                w.next() == Some(op) && result.is_none_or(|r| w.nth(1) == Some(r))
            })
            .count()
    }

    /// The gids prepared and not yet finished (for tests).
    pub fn prepared(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir.join("prepared"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().replace("%2F", "/"))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    fn append(&self, file: &str, line: &str) -> Result<(), XaError> {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(file))
            .map_err(io)?;
        writeln!(f, "{line}").map_err(io)
    }

    /// The scripted outcome for the next call of `op`, consuming it.
    fn scripted(&self, op: &str) -> Result<Option<String>, XaError> {
        let script = fs::read_to_string(self.dir.join("script")).unwrap_or_default();
        let consumed_text = fs::read_to_string(self.dir.join("consumed")).unwrap_or_default();
        let mut consumed: Vec<u64> = consumed_text
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        let rules: Vec<(String, String, u64)> = script
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                Some((
                    w.next()?.to_string(),
                    w.next()?.to_string(),
                    w.next()?.parse().ok()?,
                ))
            })
            .collect();
        consumed.resize(rules.len(), 0);
        let mut outcome = None;
        for (i, (rop, result, count)) in rules.iter().enumerate() {
            if rop == op && consumed[i] < *count {
                consumed[i] += 1;
                outcome = Some(result.clone());
                break;
            }
        }
        if outcome.is_some() {
            let text: Vec<String> = consumed.iter().map(u64::to_string).collect();
            fs::write(self.dir.join("consumed"), text.join(" ")).map_err(io)?;
        }
        Ok(outcome)
    }

    /// Records the call and returns the scripted failure, if any.
    fn call(&self, op: &str, gid: &str) -> Result<(), XaError> {
        let outcome = self.scripted(op)?;
        let result = outcome.as_deref().unwrap_or("ok");
        self.append("calls", &format!("{op} {gid} {result}"))?;
        match outcome.as_deref() {
            None => Ok(()),
            Some("hang") => {
                let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
                while self.dir.join("hold").exists() && std::time::Instant::now() < until {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Ok(())
            }
            Some("rmfail") => Err(XaError::Unavailable(format!("scripted {op} rmfail"))),
            Some("nota") => Err(XaError::NotFound(format!("scripted {op} nota"))),
            Some(_) => Err(XaError::Failed(format!("scripted {op} failure"))),
        }
    }
}

impl Rm for FakeRm {
    fn kind(&self) -> RmKind {
        RmKind::Fake
    }

    fn begin(&mut self, xid: &Xid) -> Result<(), XaError> {
        let _l = Lock::take(&self.dir)?;
        self.call("begin", &xid.gid())
    }

    fn prepare(&mut self, xid: &Xid) -> Result<Vote, XaError> {
        let _l = Lock::take(&self.dir)?;
        self.call("prepare", &xid.gid())?;
        let path = self.dir.join("prepared").join(file_name(xid));
        let f = File::create(&path).map_err(io)?;
        f.sync_all().map_err(io)?;
        Ok(Vote::Prepared)
    }

    fn rollback_active(&mut self, xid: &Xid) -> Result<(), XaError> {
        let _l = Lock::take(&self.dir)?;
        self.append("calls", &format!("rollback_active {} ok", xid.gid()))
    }

    fn commit(&mut self, xid: &Xid) -> Result<(), XaError> {
        let _l = Lock::take(&self.dir)?;
        let path = self.dir.join("prepared").join(file_name(xid));
        if !path.exists() {
            self.append("calls", &format!("commit {} nota", xid.gid()))?;
            return Err(XaError::NotFound(xid.gid()));
        }
        self.call("commit", &xid.gid())?;
        self.append("committed", &xid.gid())?;
        fs::remove_file(path).map_err(io)
    }

    fn rollback(&mut self, xid: &Xid) -> Result<(), XaError> {
        let _l = Lock::take(&self.dir)?;
        let path = self.dir.join("prepared").join(file_name(xid));
        if !path.exists() {
            self.append("calls", &format!("rollback {} nota", xid.gid()))?;
            return Err(XaError::NotFound(xid.gid()));
        }
        self.call("rollback", &xid.gid())?;
        self.append("rolledback", &xid.gid())?;
        fs::remove_file(path).map_err(io)
    }

    fn recover(&mut self, prefix: &str) -> Result<Vec<Xid>, XaError> {
        let _l = Lock::take(&self.dir)?;
        self.call("recover", "-")?;
        Ok(FakeRm::prepared(&self.dir)
            .iter()
            .filter_map(|g| Xid::from_gid(g))
            .filter(|x| x.gtrid.starts_with(prefix))
            .collect())
    }

    fn ensure_open(&mut self) -> Result<(), XaError> {
        fs::create_dir_all(self.dir.join("prepared")).map_err(io)
    }

    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripted_failures_are_consumed_in_order_and_counted() {
        let dir = std::env::temp_dir().join(format!("tpmon-fake-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut rm = FakeRm::open(dir.to_str().unwrap_or_default()).expect("open");
        fs::write(dir.join("script"), "prepare fail 1\ncommit rmfail 2\n").expect("script");
        let x = Xid::new("d:n:1:1:1:1", "b1");
        assert!(matches!(rm.prepare(&x), Err(XaError::Failed(_))));
        assert_eq!(rm.prepare(&x), Ok(Vote::Prepared));
        assert!(rm.commit(&x).is_err_and(|e| e.is_unavailable()));
        assert!(rm.commit(&x).is_err_and(|e| e.is_unavailable()));
        assert_eq!(rm.recover("d:n:"), Ok(vec![x.clone()]));
        assert_eq!(rm.commit(&x), Ok(()));
        assert!(matches!(rm.commit(&x), Err(XaError::NotFound(_))));
        assert_eq!(FakeRm::count_calls(&dir, "prepare", None), 2);
        assert_eq!(FakeRm::count_calls(&dir, "commit", Some("rmfail")), 2);
        assert_eq!(FakeRm::count_calls(&dir, "commit", Some("ok")), 1);
        assert!(FakeRm::prepared(&dir).is_empty());
        let _ = fs::remove_dir_all(&dir);
    }
}
