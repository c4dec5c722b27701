//! PostgreSQL: `initdb` into a fresh directory and a `postgres` postmaster on a free
//! port, run as the `postgres` system user when we are root (initdb and postgres
//! refuse to run as root).

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sys::signal::Signal;
use nix::unistd::{Gid, Uid, User};

use crate::{
    apt_install, free_port, log_tail, port_open, port_taken, register, run, set_pid, unique_dir,
    unregister, wait_ready, Proc, LOG_TAIL_LINES, STOP_DEADLINE,
};

/// Where Debian installs PostgreSQL's versioned binaries.
const PG_LIB: &str = "/usr/lib/postgresql";
/// The system user the server runs as when we are root.
const PG_USER: &str = "postgres";

/// The `bin` directory of the newest PostgreSQL under `/usr/lib/postgresql/<version>`
/// that has `initdb` and `postgres`, if any.
pub fn pg_bin_dir() -> Option<PathBuf> {
    let mut best: Option<(Vec<u32>, PathBuf)> = None;
    for entry in std::fs::read_dir(PG_LIB).ok()?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(version) = name
            .split('.')
            .map(str::parse::<u32>)
            .collect::<Result<Vec<u32>, _>>()
        else {
            continue;
        };
        let bin = entry.path().join("bin");
        if !bin.join("postgres").is_file() || !bin.join("initdb").is_file() {
            continue;
        }
        if best.as_ref().is_none_or(|(v, _)| version > *v) {
            best = Some((version, bin));
        }
    }
    best.map(|(_, bin)| bin)
}

/// True when PostgreSQL's server binaries are installed ([`pg_bin_dir`] finds them).
pub fn pg_installed() -> bool {
    pg_bin_dir().is_some()
}

/// Makes sure PostgreSQL is installed: does nothing when [`pg_installed`], otherwise
/// runs `apt-get install -y postgresql` (noninteractive; one install at a time per
/// machine). [`PgServer::start`] calls it first.
pub fn install_pg() -> Result<(), String> {
    if pg_installed() {
        return Ok(());
    }
    apt_install(&["postgresql"], pg_installed)
}

/// The uid and gid to run PostgreSQL as: none when we are not root, else the
/// `postgres` system user, created when missing.
fn run_as() -> Result<Option<(Uid, Gid)>, String> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    let lookup =
        || User::from_name(PG_USER).map_err(|e| format!("cannot look up user {PG_USER}: {e}"));
    let user = match lookup()? {
        Some(u) => u,
        None => {
            let mut cmd = Command::new("useradd");
            cmd.args([
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/var/lib/postgresql",
                "--shell",
                "/usr/sbin/nologin",
                PG_USER,
            ]);
            // Another process may have created it meanwhile: look again either way.
            let created = run(&mut cmd);
            match lookup()? {
                Some(u) => u,
                None => {
                    return Err(created.err().unwrap_or_else(|| {
                        format!("useradd {PG_USER} succeeded but the user is missing")
                    }))
                }
            }
        }
    };
    Ok(Some((user.uid, user.gid)))
}

/// Replaces the pid on the first line of the stale lock file `path`, if any, with ours.
fn disown(path: &Path) -> Result<(), String> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let rest = text.split_once('\n').map_or("", |(_, rest)| rest);
    std::fs::write(path, format!("{}\n{rest}", std::process::id()))
        .map_err(|e| format!("cannot rewrite stale lock file {}: {e}", path.display()))
}

/// Removes the System V shared memory segment that a dead postmaster of the server in
/// `dir` left behind (key and id are on line 7 of `postmaster.pid`), if it is still
/// there and nothing is attached to it.
fn remove_stale_shm(dir: &Path) {
    let Ok(text) = std::fs::read_to_string(dir.join("data").join("postmaster.pid")) else {
        return;
    };
    let mut ids = text.lines().nth(6).unwrap_or("").split_whitespace();
    let (Some(key), Some(shmid)) = (
        ids.next().and_then(|k| k.parse::<libc::key_t>().ok()),
        ids.next().and_then(|i| i.parse::<libc::c_int>().ok()),
    ) else {
        return;
    };
    // SAFETY: IPC_STAT fills the zeroed plain-data struct we own; IPC_RMID takes no
    // buffer.
    unsafe {
        let mut ds: libc::shmid_ds = std::mem::zeroed();
        if libc::shmctl(shmid, libc::IPC_STAT, &mut ds) == 0
            && ds.shm_perm.__key == key
            && ds.shm_nattch == 0
        {
            libc::shmctl(shmid, libc::IPC_RMID, std::ptr::null_mut());
        }
    }
}

/// A private PostgreSQL server on 127.0.0.1, for tests and benchmarks.
///
/// Its data directory, Unix socket and log (`postgres.log`) live in a fresh temp
/// directory. It is configured with `max_prepared_transactions=200`,
/// `max_connections=300`, `fsync=on` and `shared_buffers=32MB`; the superuser
/// `postgres` connects without a password (`trust`). Dropping it stops the server
/// and removes the directory.
#[derive(Debug)]
pub struct PgServer {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    user: Option<(Uid, Gid)>,
    proc: Option<Proc>,
    reg: u64,
    /// Whether the server ever answered (then a restart on drop can clean up).
    ever_ready: bool,
}

impl PgServer {
    /// Installs PostgreSQL if needed ([`install_pg`]), creates a cluster with
    /// `initdb -A trust -U postgres` in a fresh temp directory and starts a server on
    /// a free port, returning once it answers `SELECT 1` (30 s at most).
    pub fn start() -> Result<PgServer, String> {
        install_pg()?;
        let bin = pg_bin_dir().ok_or("PostgreSQL is not installed")?;
        let user = run_as()?;
        let dir = unique_dir("tpmon-pg")?;
        let mut server = PgServer {
            reg: register(&dir, Signal::SIGQUIT, remove_stale_shm),
            dir,
            bin,
            port: 0,
            user,
            proc: None,
            ever_ready: false,
        };
        server.init()?;
        let mut tries = 0;
        loop {
            server.port = free_port()?;
            match server.spawn_and_wait() {
                Ok(()) => return Ok(server),
                Err(e) if port_taken(&e) && tries < 5 => tries += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// The TCP port the server listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The temp directory holding the data directory (`data`), the socket and the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A libpq connection string for database `db` as the superuser:
    /// `host=127.0.0.1 port=P user=postgres dbname=DB`.
    pub fn url(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={db}",
            self.port
        )
    }

    /// Creates database `name` (a plain identifier; it is quoted).
    pub fn create_database(&self, name: &str) -> Result<(), String> {
        let mut c = postgres::Client::connect(&self.url("postgres"), postgres::NoTls)
            .map_err(|e| format!("cannot connect to PostgreSQL on port {}: {e}", self.port))?;
        c.batch_execute(&format!(
            "CREATE DATABASE \"{}\"",
            name.replace('"', "\"\"")
        ))
        .map_err(|e| format!("CREATE DATABASE {name} failed: {e}"))
    }

    /// The last lines of the server's log, for diagnostics.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log(), LOG_TAIL_LINES)
    }

    /// Stops the server with a fast shutdown (SIGINT: sessions are cut, a checkpoint
    /// is written), killing it if it takes more than 20 s. The data stays; see
    /// [`PgServer::start_again`].
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop(Signal::SIGINT, STOP_DEADLINE);
        }
        set_pid(self.reg, None);
    }

    /// Crashes the server: SIGKILL to the postmaster and all its children at once
    /// (they share a process group). Committed and prepared transactions survive, as
    /// after a power cut with a honest disk.
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
        set_pid(self.reg, None);
    }

    /// Starts the server again on the same data directory and port (after
    /// [`PgServer::stop`] or [`PgServer::kill9`]; crash recovery runs as needed) and
    /// waits until it answers. Does nothing when it is running.
    pub fn start_again(&mut self) -> Result<(), String> {
        if self.is_running() {
            return Ok(());
        }
        if let Some(mut p) = self.proc.take() {
            // It died on its own: reap it and whatever is left of its group.
            p.kill9();
        }
        self.spawn_and_wait()
    }

    /// True while the server process is alive.
    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(Proc::running)
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// A command for one of PostgreSQL's binaries, run as the server's user in its
    /// directory.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        cmd.current_dir(&self.dir);
        for var in [
            "PGDATA",
            "PGPORT",
            "PGHOST",
            "PGUSER",
            "PGDATABASE",
            "PGOPTIONS",
        ] {
            cmd.env_remove(var);
        }
        if let Some((uid, gid)) = self.user {
            cmd.uid(uid.as_raw()).gid(gid.as_raw());
        }
        cmd
    }

    /// Hands the directory to the server's user and runs initdb.
    fn init(&self) -> Result<(), String> {
        if let Some((uid, gid)) = self.user {
            nix::unistd::chown(&self.dir, Some(uid), Some(gid))
                .map_err(|e| format!("cannot chown {}: {e}", self.dir.display()))?;
        }
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("cannot chmod {}: {e}", self.dir.display()))?;
        let mut cmd = self.command("initdb");
        cmd.arg("-D")
            .arg(self.data())
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C"])
            // No fsync of the fresh cluster: a throwaway that the tests crash only by
            // killing processes, which loses nothing the kernel already has.
            .arg("--no-sync");
        run(&mut cmd).map(|_| ())
    }

    /// Starts the postmaster on `self.port` and waits until it answers.
    fn spawn_and_wait(&mut self) -> Result<(), String> {
        // A previous server of ours is dead, but its lock files still name its pid,
        // which may belong to another process by now (pids wrap quickly under load):
        // postgres would then refuse to start. It takes its parent's pid, ours, for
        // stale.
        let socket_lock = self.dir.join(format!(".s.PGSQL.{}.lock", self.port));
        for lock in [self.data().join("postmaster.pid"), socket_lock] {
            disown(&lock)?;
        }
        let mut cmd = self.command("postgres");
        cmd.arg("-D")
            .arg(self.data())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-c")
            .arg(format!("unix_socket_directories={}", self.dir.display()));
        for setting in [
            "listen_addresses=127.0.0.1",
            "max_prepared_transactions=200",
            "max_connections=300",
            "fsync=on",
            "shared_buffers=32MB",
            "logging_collector=off",
            "log_destination=stderr",
        ] {
            cmd.arg("-c").arg(setting);
        }
        let mut proc = Proc::spawn(&mut cmd, &self.log())?;
        set_pid(self.reg, Some(proc.pid()));
        let url = format!("{} connect_timeout=2", self.url("postgres"));
        let port = self.port;
        let ready = wait_ready("PostgreSQL", &mut proc, &self.log(), || {
            if !port_open(port) {
                return Err(format!("nothing listens on 127.0.0.1:{port} yet"));
            }
            let mut c =
                postgres::Client::connect(&url, postgres::NoTls).map_err(|e| e.to_string())?;
            c.simple_query("SELECT 1").map_err(|e| e.to_string())?;
            Ok(())
        });
        match ready {
            Ok(()) => {
                self.proc = Some(proc);
                self.ever_ready = true;
                Ok(())
            }
            Err(e) => {
                proc.kill9();
                set_pid(self.reg, None);
                Err(e)
            }
        }
    }
}

impl Drop for PgServer {
    /// Stops the server (an immediate shutdown: the data is thrown away, but the
    /// server still releases its shared memory; SIGKILL if it takes more than 20 s)
    /// and removes its directory.
    ///
    /// A killed server leaves shared memory behind (a System V segment and the
    /// dynamic segments in /dev/shm) that only a postmaster starting on the same data
    /// directory releases: such a server is started once more, then shut down.
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop(Signal::SIGQUIT, STOP_DEADLINE);
        }
        if self.ever_ready && self.data().join("postmaster.pid").exists() {
            if self.start_again().is_ok() {
                if let Some(mut p) = self.proc.take() {
                    p.stop(Signal::SIGQUIT, STOP_DEADLINE);
                }
            }
            set_pid(self.reg, None);
        }
        remove_stale_shm(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
        unregister(self.reg);
    }
}
