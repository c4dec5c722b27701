//! MariaDB: `mariadb-install-db` into a fresh directory and a `mariadbd` on a free
//! port, run as root (`--user=root`), with a password-less `root@127.0.0.1`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use mysql::prelude::Queryable;
use nix::sys::signal::Signal;

use crate::{
    apt_install, free_port, log_tail, port_open, port_taken, register, run, set_pid, unique_dir,
    unregister, wait_ready, Proc, LOG_TAIL_LINES, STOP_DEADLINE,
};

/// The server binary of Debian's `mariadb-server`.
const MARIADBD: &str = "/usr/sbin/mariadbd";
/// The data-directory initialiser of Debian's `mariadb-server`.
const INSTALL_DB: &str = "/usr/bin/mariadb-install-db";

/// True when MariaDB's server binaries (`/usr/sbin/mariadbd`,
/// `/usr/bin/mariadb-install-db`) are installed.
pub fn maria_installed() -> bool {
    Path::new(MARIADBD).is_file() && Path::new(INSTALL_DB).is_file()
}

/// Makes sure MariaDB is installed: does nothing when [`maria_installed`], otherwise
/// runs `apt-get install -y mariadb-server` (noninteractive; one install at a time per
/// machine). [`MariaServer::start`] calls it first.
pub fn install_maria() -> Result<(), String> {
    if maria_installed() {
        return Ok(());
    }
    apt_install(&["mariadb-server"], maria_installed)
}

/// A private MariaDB server on 127.0.0.1, for tests and benchmarks.
///
/// Its data directory (`data`), Unix socket (`mysql.sock`), pid file and error log
/// (`err.log`) live in a fresh temp directory. It runs with
/// `innodb_flush_log_at_trx_commit=1`, `max_connections=300` and a 64 MB buffer pool;
/// `root` connects from 127.0.0.1 without a password. Dropping it kills the server
/// and removes the directory.
#[derive(Debug)]
pub struct MariaServer {
    dir: PathBuf,
    port: u16,
    proc: Option<Proc>,
    reg: u64,
}

impl MariaServer {
    /// Installs MariaDB if needed ([`install_maria`]), creates the system tables with
    /// `mariadb-install-db` in a fresh temp directory and starts a server on a free
    /// port, returning once it answers `SELECT 1` (30 s at most).
    pub fn start() -> Result<MariaServer, String> {
        install_maria()?;
        let dir = unique_dir("tpmon-maria")?;
        let mut server = MariaServer {
            reg: register(&dir, Signal::SIGKILL, |_| {}),
            dir,
            port: 0,
            proc: None,
        };
        let mut cmd = Command::new(INSTALL_DB);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", server.data().display()))
            .args([
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--skip-name-resolve",
            ])
            // A private temp dir: concurrent installs into the shared one collide on
            // temporary table names ("Unknown table 'mysql.tmp_user_sys'").
            .arg(format!("--tmpdir={}", server.dir.display()))
            .args(as_root())
            .env("TMPDIR", &server.dir)
            .current_dir(&server.dir);
        run(&mut cmd)?;
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

    /// The temp directory holding the data directory, the socket and the logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A URL for database `db` as root: `mysql://root@127.0.0.1:P/DB`.
    pub fn url(&self, db: &str) -> String {
        format!("mysql://root@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates database `name` (a plain identifier; it is quoted).
    pub fn create_database(&self, name: &str) -> Result<(), String> {
        let mut c = connect(&self.url(""), Duration::from_secs(10))?;
        c.query_drop(format!("CREATE DATABASE `{}`", name.replace('`', "``")))
            .map_err(|e| format!("CREATE DATABASE {name} failed: {e}"))
    }

    /// The last lines of the server's error log, for diagnostics.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log(), LOG_TAIL_LINES)
    }

    /// Stops the server cleanly (SIGTERM), killing it if it takes more than 20 s.
    /// The data stays; see [`MariaServer::start_again`].
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop(Signal::SIGTERM, STOP_DEADLINE);
        }
        set_pid(self.reg, None);
    }

    /// Crashes the server with SIGKILL (to its whole process group). Committed and
    /// prepared transactions survive: InnoDB writes its log at every commit and
    /// prepare.
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
        set_pid(self.reg, None);
    }

    /// Starts the server again on the same data directory and port (after
    /// [`MariaServer::stop`] or [`MariaServer::kill9`]; crash recovery runs as
    /// needed) and waits until it answers. Does nothing when it is running.
    pub fn start_again(&mut self) -> Result<(), String> {
        if self.is_running() {
            return Ok(());
        }
        if let Some(mut p) = self.proc.take() {
            // It died on its own: reap it.
            p.kill9();
        }
        self.spawn_and_wait()
    }

    /// The server's process id while it runs (for tests that stop it with SIGSTOP).
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(|p| p.child.id())
    }

    /// True while the server process is alive.
    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(Proc::running)
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("err.log")
    }

    /// Starts mariadbd on `self.port` and waits until it answers.
    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let d = |name: &str| self.dir.join(name).display().to_string();
        let mut cmd = Command::new(MARIADBD);
        // --no-defaults must come first.
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", self.data().display()))
            .arg(format!("--port={}", self.port))
            .arg(format!("--socket={}", d("mysql.sock")))
            .arg(format!("--pid-file={}", d("mariadbd.pid")))
            .arg(format!("--log-error={}", d("err.log")))
            .arg(format!("--tmpdir={}", self.dir.display()))
            .args(as_root())
            .args([
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                "--innodb-flush-log-at-trx-commit=1",
                "--innodb-buffer-pool-size=64M",
                "--max-connections=300",
            ])
            .current_dir(&self.dir);
        // mariadbd writes to the error log itself; its stdout/stderr (early failures)
        // go next to it.
        let mut proc = Proc::spawn(&mut cmd, &self.dir.join("stderr.log"))?;
        set_pid(self.reg, Some(proc.pid()));
        let url = self.url("");
        let port = self.port;
        let ready = wait_ready("MariaDB", &mut proc, &self.log(), || {
            if !port_open(port) {
                return Err(format!("nothing listens on 127.0.0.1:{port} yet"));
            }
            let mut c = connect(&url, Duration::from_secs(2))?;
            c.query_drop("SELECT 1").map_err(|e| e.to_string())
        });
        match ready {
            Ok(()) => {
                self.proc = Some(proc);
                Ok(())
            }
            Err(e) => {
                proc.kill9();
                set_pid(self.reg, None);
                let early = log_tail(&self.dir.join("stderr.log"), LOG_TAIL_LINES);
                Err(if early.trim().is_empty() || early.starts_with("(no log") {
                    e
                } else {
                    format!("{e}\nstderr:\n{early}")
                })
            }
        }
    }
}

/// `--user=root` when we are root (mariadbd refuses root without it), else nothing:
/// the server runs as whoever we are.
fn as_root() -> Option<&'static str> {
    nix::unistd::Uid::effective()
        .is_root()
        .then_some("--user=root")
}

/// A TCP connection (never switched to the Unix socket) with timeouts.
fn connect(url: &str, timeout: Duration) -> Result<mysql::Conn, String> {
    let opts = mysql::Opts::from_url(url).map_err(|e| format!("bad URL {url}: {e}"))?;
    let opts = mysql::OptsBuilder::from_opts(opts)
        .prefer_socket(false)
        .tcp_connect_timeout(Some(timeout))
        .read_timeout(Some(timeout * 5))
        .write_timeout(Some(timeout * 5));
    mysql::Conn::new(opts).map_err(|e| format!("cannot connect to {url}: {e}"))
}

impl Drop for MariaServer {
    /// Kills the server (the data is thrown away, and a clean MariaDB shutdown takes
    /// seconds) and removes its directory.
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        unregister(self.reg);
    }
}
