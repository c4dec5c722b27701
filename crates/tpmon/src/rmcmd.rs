//! `tpmon rm`: the embedded sites of a domain (spec 03). `inspect` reads a site's
//! files (the daemon may be up or down); `recover` and `checkpoint` ask the running
//! daemon.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail};
use clap::Subcommand;
use tpmon_config::{DomainConfig, RmKind};
use tpmon_daemon::admin_request;
use tpmon_proto::AdminRequest;

/// `tpmon rm …`.
#[derive(Debug, Subcommand)]
pub enum RmCommand {
    /// Show each embedded site's LCPN, its checkpoints on disk and its log records by
    /// class (UL, DL, SL, CL of spec 03 §3.3).
    Inspect {
        /// Domain configuration file.
        #[arg(short, long)]
        config: PathBuf,
        /// Only this site (its group's name).
        #[arg(long)]
        site: Option<String>,
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
    /// Coordinated rollback-recovery (Algorithms 3 and 4): the site restores its
    /// current checkpoint and redoes its log; the sites its records came from do the
    /// same once.
    Recover {
        /// Domain configuration file.
        #[arg(short, long)]
        config: PathBuf,
        /// The site (its group's name).
        #[arg(long)]
        site: String,
        /// The node whose daemon to ask (multi-node domains; default the first).
        #[arg(long)]
        node: Option<String>,
        /// Override the run directory.
        #[arg(long)]
        run_dir: Option<PathBuf>,
    },
    /// Take a checkpoint of a site now (besides the one every delta).
    Checkpoint {
        /// Domain configuration file.
        #[arg(short, long)]
        config: PathBuf,
        /// The site (its group's name).
        #[arg(long)]
        site: String,
        /// The node whose daemon to ask (multi-node domains; default the first).
        #[arg(long)]
        node: Option<String>,
        /// Override the run directory.
        #[arg(long)]
        run_dir: Option<PathBuf>,
    },
}

/// The directory of each embedded site: (group name, directory, or the error of an
/// `open` whose variable is not set here). In a multi-node domain, only the sites of
/// the node the configuration was narrowed to.
pub fn site_dirs(cfg: &DomainConfig) -> Vec<(String, Result<PathBuf, String>)> {
    cfg.groups
        .iter()
        .filter(|g| cfg.nodes.len() < 2 || cfg.selected_node.is_none_or(|n| n == g.node))
        .filter_map(|g| {
            let rm = g.rm.xa().filter(|r| r.kind == RmKind::Embedded)?;
            let item = format!("group \"{}\"", g.name);
            if let Some(u) = cfg.unresolved_value(&item, "rm.open") {
                return Some((g.name.clone(), Err(u.message.clone())));
            }
            let dir = if rm.open.expose().is_empty() {
                cfg.domain.run_dir.join("rm").join(&g.name)
            } else {
                PathBuf::from(rm.open.expose())
            };
            Some((g.name.clone(), Ok(dir)))
        })
        .collect()
}

fn print_site(name: &str, dir: &Path) -> anyhow::Result<serde_json::Value> {
    let i = tpmon_rm::inspect::inspect(dir).map_err(|e| anyhow!("site {name:?}: {e}"))?;
    Ok(serde_json::json!({ "site": name, "state": i }))
}

/// Runs a `tpmon rm` command.
pub fn run(cmd: RmCommand) -> anyhow::Result<()> {
    match cmd {
        RmCommand::Inspect {
            config,
            site,
            json,
            node,
            run_dir,
        } => {
            let cfg = crate::load_tool_config(&config, node.as_deref(), run_dir)?;
            let mut sites = site_dirs(&cfg);
            if sites.is_empty() {
                bail!("the domain has no embedded site (rm = \"embedded\")");
            }
            if let Some(s) = &site {
                sites.retain(|(n, _)| n == s);
                if sites.is_empty() {
                    bail!("no embedded site named {s:?}");
                }
            }
            let mut all = Vec::new();
            for (name, dir) in &sites {
                let dir = dir.as_ref().map_err(|e| anyhow!("site {name:?}: {e}"))?;
                all.push(print_site(name, dir)?);
            }
            if json {
                println!("{}", serde_json::Value::Array(all));
                return Ok(());
            }
            for v in all {
                let s = &v["state"];
                println!(
                    "site {}  ({})",
                    v["site"].as_str().unwrap_or("?"),
                    s["dir"].as_str().unwrap_or("")
                );
                println!("  LCPN {}", s["lcpn"]);
                for c in s["checkpoints"].as_array().cloned().unwrap_or_default() {
                    println!(
                        "  checkpoint {:>6}: {} rows, {} stored (SL), {} compensation CL({}), {} carried, {} bytes",
                        c["n"], c["rows"], c["stored"], c["compensation"],
                        c["n"].as_u64().unwrap_or(1).saturating_sub(1), c["carried"], c["bytes"]
                    );
                }
                println!(
                    "  log: generations {}, {} bytes",
                    s["log_generations"], s["log_bytes"]
                );
                println!(
                    "  records after CCP(LCPN): UL {}  DL {}  CL {}  aborted {}  late {}  (SL {} in CCP(LCPN)); in-doubt branches {}",
                    s["undecided"], s["decided_later"], s["compensation"], s["aborted"], s["late"], s["stored"], s["in_doubt_branches"]
                );
            }
            Ok(())
        }
        RmCommand::Recover {
            config,
            site,
            node,
            run_dir,
        } => admin(
            &config,
            node.as_deref(),
            run_dir,
            AdminRequest::RmRecover { site },
        ),
        RmCommand::Checkpoint {
            config,
            site,
            node,
            run_dir,
        } => admin(
            &config,
            node.as_deref(),
            run_dir,
            AdminRequest::RmCheckpoint { site },
        ),
    }
}

fn admin(
    config: &Path,
    node: Option<&str>,
    run_dir: Option<PathBuf>,
    req: AdminRequest,
) -> anyhow::Result<()> {
    let cfg = crate::load_tool_config(config, node, run_dir)?;
    let text = admin_request(&cfg.domain.run_dir, req, Duration::from_secs(300))?;
    println!("{text}");
    Ok(())
}
