//! `tpmon`: the command-line tool of the tpmon TP monitor.
//!
//! Boots and stops domains, shows their status, calls services, runs the quickstart
//! and the benchmarks. Every subcommand reads the domain configuration given with
//! `-c FILE`; errors are reported with context and a non-zero exit status.

mod bench;
mod bench_remote;
mod bench_rm;
mod bench_tx;
mod boot;
mod call;
mod quickstart;
mod rmcmd;
mod status;
mod txcmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The tpmon transaction processing monitor.
#[derive(Parser)]
#[command(
    name = "tpmon",
    version,
    about = "The tpmon transaction processing monitor"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a domain (node daemon and its servers).
    Boot(boot::BootArgs),
    /// Shut a domain's node down cleanly (servers run their shutdown routine).
    Down {
        /// Domain configuration file.
        #[arg(short, long)]
        config: PathBuf,
        /// The node whose daemon to stop (multi-node domains; default the first).
        #[arg(long)]
        node: Option<String>,
        /// Override the run directory.
        #[arg(long)]
        run_dir: Option<PathBuf>,
    },
    /// Show the daemon, nodes, servers and services of a running domain's node.
    Status {
        /// Domain configuration file.
        #[arg(short, long)]
        config: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// The node whose daemon to ask (multi-node domains; default the first).
        #[arg(long)]
        node: Option<String>,
        /// Override the run directory.
        #[arg(long)]
        run_dir: Option<PathBuf>,
    },
    /// Call a service and print the reply.
    Call(call::CallArgs),
    /// Global transactions: list the unfinished ones, resolve one by hand.
    Tx {
        #[command(subcommand)]
        which: txcmd::TxCommand,
    },
    /// Embedded sites: inspect their checkpoints and logs, rollback-recovery, checkpoint.
    Rm {
        #[command(subcommand)]
        which: rmcmd::RmCommand,
    },
    /// Boot the sample domain in a temporary directory, run a sample workload, shut down.
    Quickstart(quickstart::QuickstartArgs),
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        which: bench::BenchCommand,
    },
    /// Internal: the peer of the raw round-trip baseline in `tpmon bench call`.
    #[command(hide = true)]
    BenchPong {
        /// Inherited socket descriptor.
        fd: i32,
        /// Microseconds to poll before sleeping.
        #[arg(default_value_t = 0)]
        spin_us: u64,
    },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TPMON_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Boot(a) => {
            init_logging();
            boot::boot(a)
        }
        Command::Down {
            config,
            node,
            run_dir,
        } => status::down(&config, node.as_deref(), run_dir),
        Command::Status {
            config,
            json,
            node,
            run_dir,
        } => status::status(&config, json, node.as_deref(), run_dir),
        Command::Call(a) => return call::call(a),
        Command::Tx { which } => txcmd::run(which),
        Command::Rm { which } => rmcmd::run(which),
        Command::Quickstart(a) => quickstart::run(a),
        Command::Bench { which } => bench::run(which),
        Command::BenchPong { fd, spin_us } => bench::pong(fd, spin_us),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tpmon: {}", error_text(&e));
            ExitCode::from(1)
        }
    }
}

/// The error and its causes on one line, skipping a cause whose text the message
/// before it already contains (several of our errors print their source themselves).
pub(crate) fn error_text(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// Loads a configuration as the daemon of `node` (default: the first node) sees it,
/// with the common overrides applied: in a multi-node domain the node's own run
/// directory (`run_dir/<node>`), transaction log and client address. Only `tpmon boot`
/// reads it as the daemon; the other commands read it as a tool
/// ([`tpmon_config::Reader::Tool`]), so that they need no database password.
pub(crate) fn load_config(
    path: &std::path::Path,
    node: Option<&str>,
    listen: Option<std::net::SocketAddr>,
    run_dir: Option<PathBuf>,
    reader: tpmon_config::Reader,
) -> anyhow::Result<tpmon_config::DomainConfig> {
    let mut cfg = tpmon_config::load_for(path, reader)?;
    cfg.select_node(node)?;
    Ok(cfg.with_overrides(listen, run_dir)?)
}

/// [`load_config`] for the commands other than `tpmon boot`: read as a tool, without
/// a client address override.
pub(crate) fn load_tool_config(
    path: &std::path::Path,
    node: Option<&str>,
    run_dir: Option<PathBuf>,
) -> anyhow::Result<tpmon_config::DomainConfig> {
    load_config(path, node, None, run_dir, tpmon_config::Reader::Tool)
}

/// The directory holding this executable (where the example servers are built too).
pub(crate) fn exe_dir() -> Option<PathBuf> {
    std::env::current_exe()
        .ok()?
        .parent()
        .map(|p| p.to_path_buf())
}
