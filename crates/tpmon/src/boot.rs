//! `tpmon boot`: run the node daemon in the foreground, or detached.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use clap::Args;
use tpmon_daemon::{BootOptions, ReadyNotice};

/// Arguments of `tpmon boot`.
#[derive(Args, Clone)]
pub struct BootArgs {
    /// Domain configuration file.
    #[arg(short, long)]
    pub config: PathBuf,
    /// Return once the domain is ready; the daemon keeps running in the background.
    #[arg(long)]
    pub detach: bool,
    /// Node to run (multi-node domains; default the first). Its run directory is
    /// `run_dir/NODE` when the domain has more than one node.
    #[arg(long)]
    pub node: Option<String>,
    /// Override the client listen address (port 0 picks a free port).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Override the run directory.
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
}

/// Environment variable telling a detached daemon to report readiness on stdout.
const ENV_READY_ON_STDOUT: &str = "TPMON_READY_ON_STDOUT";

pub fn boot(a: BootArgs) -> anyhow::Result<()> {
    let cfg = crate::load_config(
        &a.config,
        a.node.as_deref(),
        a.listen,
        a.run_dir.clone(),
        tpmon_config::Reader::Daemon,
    )?;
    if a.detach {
        return detach(&a, &cfg);
    }
    let ready = if std::env::var_os(ENV_READY_ON_STDOUT).is_some() {
        // SAFETY: fd 1 is our stdout, a pipe to the waiting parent; nothing else in
        // the process writes to stdout.
        let dup = nix::unistd::dup(std::io::stdout()).context("dup stdout")?;
        let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
        // From now on stdout is /dev/null, so the parent exiting cannot hurt us.
        nix::unistd::dup2_stdout(&null).context("dup2 stdout")?;
        Some(ReadyNotice(unsafe {
            std::fs::File::from_raw_fd(dup.into_raw_fd())
        }))
    } else {
        None
    };
    tpmon_daemon::run(
        cfg,
        BootOptions {
            node: a.node.clone(),
            exe_dir: crate::exe_dir(),
            ready,
        },
    )?;
    Ok(())
}

/// Starts the daemon in a new session with its log in the run directory and waits for
/// its readiness line.
fn detach(a: &BootArgs, cfg: &tpmon_config::DomainConfig) -> anyhow::Result<()> {
    let run_dir = &cfg.domain.run_dir;
    std::fs::create_dir_all(run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let log_path = cfg
        .domain
        .log_path()
        .unwrap_or_else(|| run_dir.join("tpmon.log"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening the log {}", log_path.display()))?;
    let exe = std::env::current_exe().context("locating the tpmon binary")?;
    let mut cmd = Command::new(exe);
    cmd.arg("boot").arg("-c").arg(&a.config);
    if let Some(n) = &a.node {
        cmd.arg("--node").arg(n);
    }
    if let Some(l) = a.listen {
        cmd.arg("--listen").arg(l.to_string());
    }
    if let Some(r) = &a.run_dir {
        cmd.arg("--run-dir").arg(r);
    }
    cmd.env(ENV_READY_ON_STDOUT, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log));
    // SAFETY: setsid is async-signal-safe; it detaches the daemon from our terminal.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()
                .map(|_| ())
                .map_err(std::io::Error::from)
        });
    }
    let mut child = cmd.spawn().context("starting the daemon")?;
    let Some(out) = child.stdout.take() else {
        bail!("no pipe to the daemon");
    };
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line)?;
    let line = line.trim();
    if let Some(rest) = line.strip_prefix("ready ") {
        let mut it = rest.split_whitespace();
        let pid = it.next().unwrap_or("?");
        let addr = it.next().unwrap_or("?");
        println!(
            "domain {} is ready: daemon pid {pid}, clients at {addr}, log {}",
            cfg.domain.name,
            log_path.display()
        );
        return Ok(());
    }
    let _ = child.wait();
    if let Some(err) = line.strip_prefix("error: ") {
        bail!("{err}");
    }
    bail!("the daemon exited during boot; see {}", log_path.display())
}
