//! The harness of tpmon's integration tests: a real domain, booted with the real `tpmon`
//! binary in a temporary directory of its own, on a port the operating system picks.
//!
//! Every test builds its own domain with [`Config`], boots it with [`Domain::boot`] and
//! talks to it as users do: through `tpmon_client::Client`, the `tpmon` command line and
//! raw sockets. Dropping the [`Domain`] shuts it down with `tpmon down` (killing the
//! daemon and its instances if that fails) and removes the directory, so tests can run
//! in parallel and a failed test leaves no processes behind.
//!
//! Waiting is always for a condition with a deadline ([`wait_until`], [`wait_for`],
//! [`Domain::wait_status`]), never a fixed sleep.

#![allow(dead_code)] // each test file uses a different part of the harness

pub mod bank;

use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tpmon_client::{Buffer, CallReply, Client, ClientOptions};

/// The `tpmon` command-line tool under test.
pub const TPMON: &str = env!("CARGO_BIN_EXE_tpmon");
/// The fault-injection server (services ECHO, CRASH, HANG, SLEEP, ...).
pub const TESTSRV: &str = env!("CARGO_BIN_EXE_tpmon-testsrv");

/// How often conditions are polled.
const POLL: Duration = Duration::from_millis(20);
/// Longest a `tpmon` command may run before the test fails instead of hanging.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Waits until `cond` holds; fails the test naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    wait_for(what, timeout, || cond().then_some(()));
}

/// Waits until `f` returns a value and returns it; fails the test after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting until {what}"
        );
        std::thread::sleep(POLL);
    }
}

/// A fresh directory under the system's temporary directory, removed on drop.
pub struct TempDir {
    /// The directory.
    pub path: PathBuf,
}

impl TempDir {
    /// Creates `tpmon-it-TAG-PID-N-NANOS`.
    pub fn new(tag: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "tpmon-it-{tag}-{}-{}-{nanos:x}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("creating the test directory");
        TempDir { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // TPMON_TEST_KEEP=1 keeps the directories of failed tests (logs, run dirs).
        if std::thread::panicking() && std::env::var_os("TPMON_TEST_KEEP").is_some() {
            eprintln!("kept {}", self.path.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// What a finished command printed and how it exited.
#[derive(Debug)]
pub struct Run {
    /// Exit code (None when killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    /// True when the command exited with status 0.
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs `tpmon ARGS` to completion (failing the test if it takes more than a minute).
pub fn tpmon<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    tpmon_env(args, &[])
}

/// [`tpmon`] with extra environment variables (e.g. `TPMON_FAILPOINTS` for a daemon).
pub fn tpmon_env<I, S>(args: I, env: &[(&str, &str)]) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    tpmon_env_without(args, env, &[])
}

/// [`tpmon_env`], with the variables `without` removed from the environment.
pub fn tpmon_env_without<I, S>(args: I, env: &[(&str, &str)], without: &[&str]) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(TPMON);
    for var in without {
        cmd.env_remove(var);
    }
    let mut child = cmd
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting tpmon");
    let mut out = child.stdout.take().expect("stdout pipe");
    let mut err = child.stderr.take().expect("stderr pipe");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for tpmon") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tpmon did not finish within {COMMAND_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Run {
        code: status.code(),
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

/// True while process `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => {
            // The state follows the command name, which is in parentheses and may
            // itself contain spaces or parentheses.
            let state = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].trim_start().chars().next());
            !matches!(state, Some('Z') | Some('X') | None)
        }
    }
}

/// Sends SIGKILL to `pid`.
pub fn kill9(pid: u32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill -9 {pid}: {}", std::io::Error::last_os_error());
}

/// Removes terminal colour sequences (`ESC [ ... letter`) from log text.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The text of a STRING reply.
pub fn text(reply: &CallReply) -> String {
    reply
        .buffer
        .as_ref()
        .and_then(|b| b.as_str())
        .expect("a STRING reply")
        .to_string()
}

/// A STRING buffer.
pub fn s(text: &str) -> Buffer {
    Buffer::string(text)
}

/// A domain configuration under construction. The domain is named `it`, its run
/// directory is `run` next to the file, and servers run [`TESTSRV`] unless told
/// otherwise.
#[derive(Clone)]
pub struct Config {
    /// A whole file given as text (see [`Config::raw`]).
    raw: Option<String>,
    listen: String,
    domain: Vec<String>,
    limits: Vec<String>,
    sections: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config::new()
    }
}

impl Config {
    /// A domain without servers.
    pub fn new() -> Config {
        Config {
            raw: None,
            listen: "127.0.0.1:7480".into(),
            domain: Vec::new(),
            limits: Vec::new(),
            sections: Vec::new(),
        }
    }

    /// Sets `domain.listen` (the harness boots with `--listen 127.0.0.1:0` anyway).
    pub fn listen(mut self, addr: &str) -> Config {
        self.listen = addr.into();
        self
    }

    /// Adds a line to `[domain]`, e.g. `password = "x"`.
    pub fn domain(mut self, line: &str) -> Config {
        self.domain.push(line.into());
        self
    }

    /// Adds a line to `[domain.limits]`.
    pub fn limit(mut self, line: &str) -> Config {
        self.limits.push(line.into());
        self
    }

    /// Adds a `[[server]]` running the test server, with extra `key = value` lines.
    pub fn server(self, name: &str, extra: &[&str]) -> Config {
        let exe = format!("executable = {}", toml_string(TESTSRV));
        self.server_exe(name, &exe, extra)
    }

    /// Adds a `[[server]]` with an explicit `executable = ...` line.
    pub fn server_exe(mut self, name: &str, executable_line: &str, extra: &[&str]) -> Config {
        let mut s = format!("[[server]]\nname = \"{name}\"\n{executable_line}\n");
        for l in extra {
            s.push_str(l);
            s.push('\n');
        }
        self.sections.push(s);
        self
    }

    /// Adds a raw section (e.g. a `[[group]]` or `[domain.tx]` table).
    pub fn section(mut self, text: &str) -> Config {
        self.sections.push(text.to_string());
        self
    }

    /// Adds one `[[service]]` offered by `server`, with extra lines.
    pub fn service(mut self, name: &str, server: &str, extra: &[&str]) -> Config {
        let mut s = format!("[[service]]\nname = \"{name}\"\nserver = \"{server}\"\n");
        for l in extra {
            s.push_str(l);
            s.push('\n');
        }
        self.sections.push(s);
        self
    }

    /// Adds plain services offered by `server`.
    pub fn services(mut self, server: &str, names: &[&str]) -> Config {
        for n in names {
            self = self.service(n, server, &[]);
        }
        self
    }

    /// A configuration given as a whole text (its `listen` line is rewritten for
    /// client configurations).
    pub fn raw(text: &str) -> Config {
        Config {
            raw: Some(text.to_string()),
            ..Config::new()
        }
    }

    /// The TOML text, listening on `listen`.
    pub fn render_with(&self, listen: &str) -> String {
        if let Some(raw) = &self.raw {
            let mut done = false;
            return raw
                .lines()
                .map(|l| {
                    if !done && l.trim_start().starts_with("listen =") {
                        done = true;
                        format!("listen = \"{listen}\"")
                    } else {
                        l.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
        }
        let mut t = format!("[domain]\nname = \"it\"\nlisten = \"{listen}\"\nrun_dir = \"run\"\n");
        for l in &self.domain {
            t.push_str(l);
            t.push('\n');
        }
        if !self.limits.is_empty() {
            t.push_str("\n[domain.limits]\n");
            for l in &self.limits {
                t.push_str(l);
                t.push('\n');
            }
        }
        for s in &self.sections {
            t.push('\n');
            t.push_str(s);
        }
        t
    }

    /// The TOML text.
    pub fn render(&self) -> String {
        self.render_with(&self.listen)
    }
}

/// A TOML basic string holding `s`.
pub fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A booted domain; shut down and removed on drop.
pub struct Domain {
    /// The configuration file the domain was booted from.
    pub config: PathBuf,
    /// The same configuration with the real client address, for `tpmon call`.
    pub client_config: PathBuf,
    /// The run directory.
    pub run_dir: PathBuf,
    /// The client address the daemon listens on.
    pub addr: String,
    /// The daemon's pid.
    pub daemon_pid: u32,
    stopped: bool,
    // Last: the directory goes after the domain is down.
    dir: TempDir,
}

impl Domain {
    /// Boots `cfg` detached on a free port; fails the test if the boot fails.
    pub fn boot(tag: &str, cfg: &Config) -> Domain {
        Domain::boot_env(tag, cfg, &[])
    }

    /// [`Domain::boot`] with extra environment variables for the daemon (and so its
    /// servers).
    pub fn boot_env(tag: &str, cfg: &Config, env: &[(&str, &str)]) -> Domain {
        let dir = TempDir::new(tag);
        let config = dir.path.join("domain.toml");
        std::fs::write(&config, cfg.render()).expect("writing the configuration");
        let run_dir = dir.path.join("run");
        let (addr, daemon_pid, client_config) =
            Domain::start(&dir.path, &config, &run_dir, cfg, env);
        Domain {
            config,
            client_config,
            run_dir,
            addr,
            daemon_pid,
            stopped: false,
            dir,
        }
    }

    /// Kills the daemon with SIGKILL (its instances die with it), waits until every
    /// process is gone, and boots the same domain again in the same directory (so the
    /// transaction log is recovered), with `env` for the new daemon.
    pub fn crash_and_reboot(&mut self, cfg: &Config, env: &[(&str, &str)]) {
        let pids = self
            .try_status()
            .map(|st| all_pids(&st))
            .unwrap_or_default();
        self.kill_all(&pids);
        self.reboot(cfg, env);
    }

    /// Kills the given processes and the daemon with SIGKILL and waits until they are gone.
    pub fn kill_all(&self, pids: &[u32]) {
        for pid in std::iter::once(self.daemon_pid).chain(pids.iter().copied()) {
            if alive(pid) {
                kill9(pid);
            }
        }
        for pid in std::iter::once(self.daemon_pid).chain(pids.iter().copied()) {
            wait_until("a killed process is gone", Duration::from_secs(10), || {
                !alive(pid)
            });
        }
    }

    /// Boots the domain again in its directory (after the daemon died).
    pub fn reboot(&mut self, cfg: &Config, env: &[(&str, &str)]) {
        let (addr, pid, client_config) =
            Domain::start(&self.dir.path, &self.config, &self.run_dir, cfg, env);
        self.addr = addr;
        self.daemon_pid = pid;
        self.client_config = client_config;
        self.stopped = false;
    }

    fn start(
        dir: &Path,
        config: &Path,
        run_dir: &Path,
        cfg: &Config,
        env: &[(&str, &str)],
    ) -> (String, u32, PathBuf) {
        let run = boot_detached_env(config, run_dir, env);
        assert!(
            run.ok(),
            "tpmon boot failed ({:?}): {}\n{}\nlog:\n{}",
            run.code,
            run.stdout,
            run.stderr,
            read_log(run_dir)
        );
        let status = status_of(config, run_dir).expect("status right after boot");
        let addr = status["daemon"]["client_address"]
            .as_str()
            .expect("daemon.client_address")
            .to_string();
        let daemon_pid = status["daemon"]["pid"].as_u64().expect("daemon.pid") as u32;
        assert!(
            run.stdout.contains(&addr),
            "boot reports the address the status shows: {} / {addr}",
            run.stdout
        );
        let client_config = dir.join("client.toml");
        std::fs::write(&client_config, cfg.render_with(&addr)).expect("writing client.toml");
        (addr, daemon_pid, client_config)
    }

    /// The domain's directory (holds the configuration and the run directory).
    pub fn dir(&self) -> &Path {
        &self.dir.path
    }

    /// Connects a client with `opts` (its address is filled in).
    pub fn connect(&self, opts: ClientOptions) -> Result<Client, tpmon_client::CallError> {
        Client::connect(&ClientOptions {
            addr: Some(self.addr.clone()),
            connect_timeout: Some(Duration::from_secs(5)),
            client_name: "it".into(),
            ..opts
        })
    }

    /// A client on the local fast path.
    pub fn client(&self) -> Client {
        let c = self
            .connect(ClientOptions::default())
            .expect("connecting a client");
        assert!(
            c.is_local(),
            "a client on the daemon's host uses the fast path"
        );
        c
    }

    /// A client whose calls the daemon relays over TCP.
    pub fn relay_client(&self) -> Client {
        let c = self
            .connect(ClientOptions {
                force_relay: true,
                ..ClientOptions::default()
            })
            .expect("connecting a relay client");
        assert!(!c.is_local(), "force_relay gives a relayed client");
        c
    }

    /// Both kinds of client, labelled, for tests that run on both paths.
    pub fn both_clients(&self) -> [(&'static str, Client); 2] {
        [("fast path", self.client()), ("relay", self.relay_client())]
    }

    /// `tpmon status --json`, or None if it fails.
    pub fn try_status(&self) -> Option<Value> {
        status_of(&self.config, &self.run_dir)
    }

    /// `tpmon status --json`.
    pub fn status(&self) -> Value {
        self.try_status().expect("tpmon status --json")
    }

    /// Polls the status until `cond` holds for it and returns that status.
    pub fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        mut cond: impl FnMut(&Value) -> bool,
    ) -> Value {
        let mut last = Value::Null;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_status() {
                if cond(&st) {
                    return st;
                }
                last = st;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting until {what}; last status:\n{}",
                serde_json::to_string_pretty(&last).unwrap_or_default()
            );
            std::thread::sleep(POLL);
        }
    }

    /// The log file of the detached daemon, colour sequences removed.
    pub fn log(&self) -> String {
        strip_ansi(&self.raw_log())
    }

    /// The log file as written.
    pub fn raw_log(&self) -> String {
        read_log(&self.run_dir)
    }

    /// `tpmon down`; the domain counts as stopped when it succeeds.
    pub fn down(&mut self) -> Run {
        let run = tpmon([
            OsStr::new("down"),
            OsStr::new("-c"),
            self.config.as_os_str(),
            OsStr::new("--run-dir"),
            self.run_dir.as_os_str(),
        ]);
        if run.ok() {
            self.stopped = true;
        }
        run
    }
}

impl Drop for Domain {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "--- tail of {}/tpmon.log ---\n{}",
                self.run_dir.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        if self.stopped {
            return;
        }
        let pids = self
            .try_status()
            .map(|st| all_pids(&st))
            .unwrap_or_default();
        let run = self.down();
        let left: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
        if !run.ok() || !left.is_empty() {
            for pid in std::iter::once(self.daemon_pid).chain(pids) {
                if alive(pid) {
                    // SAFETY: kill(2) has no memory-safety preconditions.
                    unsafe {
                        libc::kill(pid as libc::pid_t, libc::SIGKILL);
                    }
                }
            }
        }
        // Every test also checks that its domain shuts down cleanly.
        if !std::thread::panicking() {
            assert!(run.ok(), "tpmon down failed: {run:?}");
            assert!(left.is_empty(), "instances {left:?} outlived tpmon down");
        }
    }
}

/// `tpmon boot --detach --listen 127.0.0.1:0 --run-dir RUN -c CONFIG`.
pub fn boot_detached(config: &Path, run_dir: &Path) -> Run {
    boot_detached_env(config, run_dir, &[])
}

/// [`boot_detached`] with extra environment variables.
pub fn boot_detached_env(config: &Path, run_dir: &Path, env: &[(&str, &str)]) -> Run {
    tpmon_env(
        [
            OsStr::new("boot"),
            OsStr::new("--detach"),
            OsStr::new("--listen"),
            OsStr::new("127.0.0.1:0"),
            OsStr::new("--run-dir"),
            run_dir.as_os_str(),
            OsStr::new("-c"),
            config.as_os_str(),
        ],
        env,
    )
}

fn status_of(config: &Path, run_dir: &Path) -> Option<Value> {
    let run = tpmon([
        OsStr::new("status"),
        OsStr::new("--json"),
        OsStr::new("-c"),
        config.as_os_str(),
        OsStr::new("--run-dir"),
        run_dir.as_os_str(),
    ]);
    if !run.ok() {
        return None;
    }
    serde_json::from_str(&run.stdout).ok()
}

fn read_log(run_dir: &Path) -> String {
    std::fs::read_to_string(run_dir.join("tpmon.log")).unwrap_or_default()
}

/// The status entry of server `name`.
pub fn server<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["servers"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no server {name} in the status: {status}"))
}

/// The status entry of service `name`.
pub fn service<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["services"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no service {name} in the status: {status}"))
}

/// The pids of server `name`'s instances that are serving (state running or busy).
pub fn serving_pids(status: &Value, name: &str) -> Vec<u32> {
    server(status, name)["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["state"] == "running" || i["state"] == "busy")
        .filter_map(|i| i["pid"].as_u64().map(|p| p as u32))
        .collect()
}

/// Every instance pid the status shows, of any server.
pub fn all_pids(status: &Value) -> Vec<u32> {
    status["servers"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["instances"].as_array().into_iter().flatten())
        .filter_map(|i| i["pid"].as_u64().map(|p| p as u32))
        .collect()
}

/// Server `name`'s `restarts` counter.
pub fn restarts(status: &Value, name: &str) -> u64 {
    server(status, name)["restarts"].as_u64().expect("restarts")
}
