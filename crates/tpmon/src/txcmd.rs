//! `tpmon tx`: the operator's view of unfinished global transactions and manual
//! resolution, through the daemon's admin socket.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail};
use clap::Subcommand;
use tpmon_daemon::admin_request;
use tpmon_proto::AdminRequest;

/// `tpmon tx …`.
#[derive(Debug, Subcommand)]
pub enum TxCommand {
    /// In-flight and in-doubt transactions: gtrid, coordinator, state, age, branches,
    /// retries, last error.
    List {
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
    /// Commit one transaction by hand: drives a logged commit decision again. Refused
    /// when the log decided rollback, and when it holds no decision (presumed abort)
    /// unless the transaction comes from a log this node no longer has; for a transaction another
    /// node coordinates, refused unless that node decided commit.
    Commit {
        /// Domain configuration file.
        #[arg(short, long)]
        config: PathBuf,
        /// The transaction's gtrid (as `tpmon tx list` shows it).
        xid: String,
        /// The node whose daemon to ask (multi-node domains; default the first).
        #[arg(long)]
        node: Option<String>,
        /// Override the run directory.
        #[arg(long)]
        run_dir: Option<PathBuf>,
    },
    /// Roll one transaction back by hand (refused when the log decided commit, and
    /// while the transaction may still be running; for a transaction another node
    /// coordinates, refused unless that node decided rollback).
    Rollback {
        /// Domain configuration file.
        #[arg(short, long)]
        config: PathBuf,
        /// The transaction's gtrid.
        xid: String,
        /// The node whose daemon to ask (multi-node domains; default the first).
        #[arg(long)]
        node: Option<String>,
        /// Override the run directory.
        #[arg(long)]
        run_dir: Option<PathBuf>,
    },
}

/// Runs a `tpmon tx` command.
pub fn run(cmd: TxCommand) -> anyhow::Result<()> {
    match cmd {
        TxCommand::List {
            config,
            json,
            node,
            run_dir,
        } => {
            let cfg = crate::load_tool_config(&config, node.as_deref(), run_dir)?;
            let text = admin_request(
                &cfg.domain.run_dir,
                AdminRequest::TxList,
                Duration::from_secs(30),
            )?;
            if json {
                println!("{text}");
                return Ok(());
            }
            let list: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| anyhow!("the daemon answered malformed JSON: {e}"))?;
            let items = list.as_array().cloned().unwrap_or_default();
            if items.is_empty() {
                println!("no unfinished transactions");
                return Ok(());
            }
            println!(
                "{:<52} {:<12} {:<24} {:>6} {:>8} {:>7}  last error",
                "gtrid", "coordinator", "state", "age s", "branches", "retries"
            );
            for t in items {
                let branches = t["branches"].as_array().map_or(0, Vec::len);
                let done = t["branches"]
                    .as_array()
                    .map_or(0, |b| b.iter().filter(|x| x["done"] == true).count());
                println!(
                    "{:<52} {:<12} {:<24} {:>6} {:>8} {:>7}  {}",
                    t["gtrid"].as_str().unwrap_or(""),
                    t["coordinator"].as_str().unwrap_or(""),
                    t["state"].as_str().unwrap_or(""),
                    t["age_s"],
                    format!("{done}/{branches}"),
                    t["retries"],
                    t["last_error"].as_str().unwrap_or("")
                );
            }
            Ok(())
        }
        TxCommand::Commit {
            config,
            xid,
            node,
            run_dir,
        } => resolve(&config, node.as_deref(), run_dir, xid, true),
        TxCommand::Rollback {
            config,
            xid,
            node,
            run_dir,
        } => resolve(&config, node.as_deref(), run_dir, xid, false),
    }
}

fn resolve(
    config: &std::path::Path,
    node: Option<&str>,
    run_dir: Option<PathBuf>,
    xid: String,
    commit: bool,
) -> anyhow::Result<()> {
    let cfg = crate::load_tool_config(config, node, run_dir)?;
    // `tpmon tx list` shows gtrids; a full gid (GTRID|BQUAL) names the same one.
    let gtrid = xid.split('|').next().unwrap_or_default().to_string();
    if gtrid.is_empty() {
        bail!("empty transaction id");
    }
    let text = admin_request(
        &cfg.domain.run_dir,
        AdminRequest::TxResolve {
            gtrid: gtrid.into_bytes(),
            commit,
        },
        Duration::from_secs(120),
    )?;
    println!("{text}");
    Ok(())
}
