//! Throwaway real database servers for tpmon's tests and benchmarks.
//!
//! This crate owns starting, crashing, restarting and removing private PostgreSQL
//! ([`PgServer`]) and MariaDB ([`MariaServer`]) servers, each on its own free port
//! on 127.0.0.1 with its data in a fresh directory under [`std::env::temp_dir`], and
//! installing the products with `apt-get` when they are missing ([`install_pg`],
//! [`install_maria`]). It does not own any schema or any test: callers create their
//! databases and tables.
//!
//! Each server runs in its own process group, so that a Ctrl-C on the terminal does
//! not reach it. [`PgServer::kill9`] / [`MariaServer::kill9`] take down the whole
//! server at once, exactly as a crash would: the server is stopped, its descendants
//! (PostgreSQL's backends live in process groups of their own) are listed and all
//! are killed, and the call returns only once none of them is alive. Dropping a server stops it
//! and removes its directory (and, for a PostgreSQL server that was killed, the shared
//! memory it left); servers still alive when the process exits normally (for example
//! ones held in a `static`, which is never dropped) are stopped and removed by an
//! `atexit` handler.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, Once};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

mod maria;
mod pg;

pub use maria::{install_maria, maria_installed, MariaServer};
pub use pg::{install_pg, pg_bin_dir, pg_installed, PgServer};

/// How long a server may take to accept its first query.
const READY_DEADLINE: Duration = Duration::from_secs(30);
/// How long a graceful stop may take before the server is killed.
const STOP_DEADLINE: Duration = Duration::from_secs(20);
/// How many lines of a server's log an error message quotes.
const LOG_TAIL_LINES: usize = 30;

/// Locks a mutex, ignoring poisoning (a panicking test must not break the others).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A fresh, empty directory under the system temp dir whose name starts with `tag`.
fn unique_dir(tag: &str) -> Result<PathBuf, String> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let base = std::env::temp_dir();
    for _ in 0..100 {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = base.join(format!(
            "{tag}-{}-{}-{nanos:x}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
        }
    }
    Err(format!(
        "cannot find a free directory name for {tag} under {}",
        base.display()
    ))
}

/// A TCP port on 127.0.0.1 that was free a moment ago and that this process has not
/// handed out before (two servers started at once never get the same one).
fn free_port() -> Result<u16, String> {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    for _ in 0..50 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("cannot bind 127.0.0.1:0 to find a free port: {e}"))?
            .port();
        if lock(&GIVEN).get_or_insert_with(HashSet::new).insert(port) {
            return Ok(port);
        }
    }
    Err("cannot find a free TCP port on 127.0.0.1".into())
}

/// True when something accepts TCP connections on 127.0.0.1:`port`.
fn port_open(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// The last `lines` lines of the file at `path` (at most 64 KiB are read).
fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Opens (creating) `path` for appending, for a server's stdout and stderr.
fn log_file(path: &Path) -> Result<File, String> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("cannot open log file {}: {e}", path.display()))
}

/// A command as a shell would show it, for error messages.
fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion; an error names the command and quotes its output.
fn run(cmd: &mut Command) -> Result<Output, String> {
    let what = describe(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `{what}`: {e}"))?;
    if out.status.success() {
        return Ok(out);
    }
    Err(format!(
        "`{what}` failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// Installs Debian packages with apt-get, once per process and never two at once
/// across processes (a file lock in the temp dir), refreshing the package lists when
/// the first attempt fails. `present` is checked again under the lock.
fn apt_install(packages: &[&str], present: impl Fn() -> bool) -> Result<(), String> {
    static INSTALL: Mutex<()> = Mutex::new(());
    let _guard = lock(&INSTALL);
    let lock_path = std::env::temp_dir().join("tpmon-testdb-apt.lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
    let _flock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| format!("cannot lock {}: {e}", lock_path.display()))?;
    if present() {
        return Ok(());
    }
    let install = || {
        let mut cmd = Command::new("apt-get");
        cmd.env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(packages);
        run(&mut cmd)
    };
    if let Err(first) = install() {
        // Perhaps stale or missing package lists: refresh them and try again.
        let mut update = Command::new("apt-get");
        update
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["update", "-q"]);
        run(&mut update).map_err(|e| format!("{first}\nthen {e}"))?;
        install()?;
    }
    if present() {
        Ok(())
    } else {
        Err(format!(
            "apt-get installed {} but the binaries are still missing",
            packages.join(" ")
        ))
    }
}

/// A server process, started in its own process group.
#[derive(Debug)]
struct Proc {
    child: Child,
}

impl Proc {
    /// Spawns `cmd` in a new process group with stdout and stderr appended to `log`.
    fn spawn(cmd: &mut Command, log: &Path) -> Result<Proc, String> {
        use std::os::unix::process::CommandExt;
        let out = log_file(log)?;
        let err = out
            .try_clone()
            .map_err(|e| format!("cannot clone log file {}: {e}", log.display()))?;
        let what = describe(cmd);
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start `{what}`: {e}"))?;
        Ok(Proc { child })
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// True while the process has not exited.
    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `limit` for the process to exit; true when it did.
    fn wait_for(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if !self.running() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs the server and every process it started, reaps the server and waits
    /// until none of them is alive (up to 20 s: a process in an uninterruptible disk
    /// wait dies only when the I/O completes), so that none still holds the server's
    /// shared memory, files or port.
    ///
    /// Killing the process group is not enough: PostgreSQL's backends call `setsid()`
    /// and live in groups of their own. So the server is first stopped (SIGSTOP: it
    /// can fork no more), its descendants are listed from `/proc`, and then all of
    /// them are killed at once, as a machine crash would.
    fn kill9(&mut self) {
        let pid = self.pid();
        let _ = kill(pid, Signal::SIGSTOP);
        let stop_deadline = Instant::now() + Duration::from_secs(1);
        while !matches!(proc_state(pid), None | Some('T' | 't' | 'Z' | 'X'))
            && Instant::now() < stop_deadline
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        let family = descendants(pid);
        let _ = killpg(pid, Signal::SIGKILL);
        let _ = kill(pid, Signal::SIGKILL);
        for &p in &family {
            let _ = kill(p, Signal::SIGKILL);
        }
        let _ = self.child.wait();
        let deadline = Instant::now() + STOP_DEADLINE;
        loop {
            let alive: Vec<Pid> = family
                .iter()
                .copied()
                .filter(|&p| !matches!(proc_state(p), None | Some('Z' | 'X')))
                .collect();
            if (alive.is_empty() && !group_alive(pid)) || Instant::now() >= deadline {
                break;
            }
            let _ = killpg(pid, Signal::SIGKILL);
            for p in alive {
                let _ = kill(p, Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends `sig` to the server and waits up to `limit` for it to exit, then kills
    /// the group.
    fn stop(&mut self, sig: Signal, limit: Duration) {
        if self.running() {
            let _ = kill(self.pid(), sig);
            let _ = self.wait_for(limit);
        }
        self.kill9();
    }
}

/// The state letter of process `pid` from `/proc/PID/stat` (`R`, `S`, `D`, `T`, `Z`,
/// ...), or `None` when there is no such process.
fn proc_state(pid: Pid) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw())).ok()?;
    // "pid (comm) state ...": comm may hold spaces and parentheses.
    let (_, rest) = stat.rsplit_once(") ")?;
    rest.chars().next()
}

/// Every live descendant of `root` (children, their children, ...), from `/proc`.
fn descendants(root: Pid) -> Vec<Pid> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut parent_of: Vec<(i32, i32)> = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        if let Some(ppid) = rest.split(' ').nth(1).and_then(|f| f.parse::<i32>().ok()) {
            parent_of.push((pid, ppid));
        }
    }
    let mut found = vec![root.as_raw()];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        for &(pid, ppid) in &parent_of {
            if ppid == parent && !found.contains(&pid) {
                found.push(pid);
            }
        }
        i += 1;
    }
    found.into_iter().skip(1).map(Pid::from_raw).collect()
}

/// True while a process of group `pgid` is alive: exited members (zombies waiting for
/// init to reap them) do not count.
fn group_alive(pgid: Pid) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        // No /proc: fall back on the signal check, which counts zombies too.
        return killpg(pgid, None).is_ok();
    };
    let want = pgid.as_raw().to_string();
    dir.flatten().any(|entry| {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            return false;
        };
        // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            return false;
        };
        let mut fields = rest.split(' ');
        let state = fields.next().unwrap_or("Z");
        let pgrp = fields.nth(1).unwrap_or("");
        pgrp == want && state != "Z" && state != "X"
    })
}

/// One server registered for cleanup at process exit.
struct Live {
    id: u64,
    pid: Option<i32>,
    dir: PathBuf,
    graceful: Signal,
    /// Releases what a killed server leaves outside its directory.
    after_kill: fn(&Path),
}

static LIVE: Mutex<Vec<Live>> = Mutex::new(Vec::new());

/// Registers a server directory for the exit-time cleanup, which stops a running
/// server with `graceful` (killing it after 5 s), calls `after_kill` and removes the
/// directory; returns the registration's id.
fn register(dir: &Path, graceful: Signal, after_kill: fn(&Path)) -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    static AT_EXIT: Once = Once::new();
    AT_EXIT.call_once(|| {
        // SAFETY: registering a plain `extern "C" fn()` that never unwinds (it catches
        // panics) has no preconditions.
        unsafe {
            libc::atexit(cleanup_at_exit);
        }
    });
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    lock(&LIVE).push(Live {
        id,
        pid: None,
        dir: dir.to_path_buf(),
        graceful,
        after_kill,
    });
    id
}

/// Records the running server process of registration `id` (None: not running).
fn set_pid(id: u64, pid: Option<Pid>) {
    if let Some(l) = lock(&LIVE).iter_mut().find(|l| l.id == id) {
        l.pid = pid.map(Pid::as_raw);
    }
}

/// Forgets registration `id` (its owner cleaned up).
fn unregister(id: u64) {
    lock(&LIVE).retain(|l| l.id != id);
}

extern "C" fn cleanup_at_exit() {
    let _ = std::panic::catch_unwind(|| {
        let live = std::mem::take(&mut *lock(&LIVE));
        for l in live {
            if let Some(raw) = l.pid {
                let pid = Pid::from_raw(raw);
                let _ = kill(pid, l.graceful);
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline {
                    match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                        Ok(WaitStatus::StillAlive) => {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        _ => break,
                    }
                }
                let _ = killpg(pid, Signal::SIGKILL);
                let _ = kill(pid, Signal::SIGKILL);
                let _ = waitpid(pid, None);
            }
            (l.after_kill)(&l.dir);
            let _ = std::fs::remove_dir_all(&l.dir);
        }
    });
}

/// Polls `ready` every 50 ms until it succeeds, the process exits or the deadline
/// passes; an error quotes the last error of `ready` and the tail of `log`.
fn wait_ready(
    what: &str,
    proc: &mut Proc,
    log: &Path,
    mut ready: impl FnMut() -> Result<(), String>,
) -> Result<(), String> {
    let deadline = Instant::now() + READY_DEADLINE;
    loop {
        if let Ok(Some(status)) = proc.child.try_wait() {
            return Err(format!(
                "{what} exited during startup ({status}); last lines of {}:\n{}",
                log.display(),
                log_tail(log, LOG_TAIL_LINES)
            ));
        }
        let last = match ready() {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "{what} not ready after {} s (last error: {last}); last lines of {}:\n{}",
                READY_DEADLINE.as_secs(),
                log.display(),
                log_tail(log, LOG_TAIL_LINES)
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// True when a startup error says the port was taken (another process got it
/// between [`free_port`] and the bind): the caller retries on another port.
fn port_taken(err: &str) -> bool {
    err.contains("Address already in use") || err.contains("Do you already have another")
}
