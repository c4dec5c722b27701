//! Failpoints: named steps of the commit protocol where a test makes the process die
//! or wait, configured by the environment variable `TPMON_FAILPOINTS`.
//!
//! The value is a comma-separated list of `NAME=ACTION`, where ACTION is `kill` (the
//! process sends itself SIGKILL: exactly a `kill -9` at that step), `kill@N` (on the
//! N-th hit, counting from 1), or `wait:PATH` (on the first hit only: create the file
//! PATH, then block until it is removed; the test restarts a database or kills another
//! process meanwhile), `wait@N:PATH` (the same on the N-th hit), or `fire` (for [`fires`]: fault injection the caller performs,
//! such as corrupting a site's memory).
//!
//! Why not the `fail` crate: it can panic or return at a failpoint but not kill the
//! process the way `kill -9` does, and its actions are process-local, while ours must
//! reach server processes started by the daemon; reading one environment variable
//! once is all it takes. With the variable unset a failpoint is one atomic load.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

enum Action {
    Fire,
    Kill { at: u64 },
    Wait { at: u64, path: std::path::PathBuf },
}

struct Point {
    name: String,
    action: Action,
    hits: AtomicU64,
}

/// The environment variable read at the first failpoint.
pub const ENV: &str = "TPMON_FAILPOINTS";

fn points() -> &'static [Point] {
    static POINTS: OnceLock<Vec<Point>> = OnceLock::new();
    POINTS.get_or_init(|| {
        let Ok(spec) = std::env::var(ENV) else {
            return Vec::new();
        };
        spec.split(',')
            .filter_map(|item| {
                let (name, action) = item.trim().split_once('=')?;
                let action = if let Some(path) = action.strip_prefix("wait:") {
                    Action::Wait {
                        at: 1,
                        path: path.into(),
                    }
                } else if let Some((n, path)) = action
                    .strip_prefix("wait@")
                    .and_then(|rest| rest.split_once(':'))
                {
                    Action::Wait {
                        at: n.parse().ok()?,
                        path: path.into(),
                    }
                } else if let Some(n) = action.strip_prefix("kill@") {
                    Action::Kill {
                        at: n.parse().ok()?,
                    }
                } else if action == "fire" {
                    Action::Fire
                } else if action == "kill" {
                    Action::Kill { at: 1 }
                } else {
                    eprintln!("tpmon: ignoring failpoint {item:?}: unknown action");
                    return None;
                };
                Some(Point {
                    name: name.to_string(),
                    action,
                    hits: AtomicU64::new(0),
                })
            })
            .collect()
    })
}

/// Marks the step `name`; acts if a failpoint is configured for it.
pub fn hit(name: &str) {
    let points = points();
    if points.is_empty() {
        return;
    }
    for p in points.iter().filter(|p| p.name == name) {
        let n = p.hits.fetch_add(1, Ordering::AcqRel) + 1;
        match &p.action {
            Action::Kill { at } if *at == n => {
                eprintln!(
                    "tpmon: failpoint {name}: killing process {}",
                    std::process::id()
                );
                // SAFETY: kill(2) on our own pid with a constant signal has no memory
                // effects.
                unsafe {
                    libc::kill(libc::getpid(), libc::SIGKILL);
                }
            }
            Action::Kill { .. } => {}
            Action::Wait { at, path } if *at == n => {
                let _ = std::fs::write(path, std::process::id().to_string());
                while path.exists() {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            Action::Wait { .. } | Action::Fire => {}
        }
    }
}

/// True every time step `name` is reached when the failpoint is configured with the
/// action `fire` (a behaviour switched off for a whole test, such as a subordinate's
/// own asking for the outcome).
pub fn fires_always(name: &str) -> bool {
    points()
        .iter()
        .any(|p| p.name == name && matches!(p.action, Action::Fire))
}

/// True the first time step `name` is reached when the failpoint is configured with
/// the action `fire` (fault injection that is not a crash: the caller acts).
pub fn fires(name: &str) -> bool {
    points().iter().any(|p| {
        p.name == name
            && matches!(p.action, Action::Fire)
            && p.hits.fetch_add(1, Ordering::AcqRel) == 0
    })
}
