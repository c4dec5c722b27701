//! The embedded sites (spec 03) this node hosts: one per group with `rm =
//! "embedded"`, opened (and recovered) at boot, served to the group's servers on
//! `run_dir/rm/<group index>.sock`, checkpointed by a thread each, and linked to one
//! another for rollback-recovery's redo requests.
//!
//! Owns the sites' lifetime in the daemon and the node-local links. It must not touch
//! a site's data itself; the transaction manager reaches a site through its XA adapter
//! (direct calls: the adapter finds the site in this process).

use std::path::PathBuf;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use tpmon_config::{DomainConfig, Password, RmKind};
use tpmon_rm::{Links, Site, SiteConfig};

use crate::error::DaemonError;

/// The node's sites, by group index (`None`: the group has no embedded site).
#[derive(Default)]
pub struct Sites {
    /// By group index.
    pub by_group: Vec<Option<Arc<Site>>>,
    /// Group names, by group index.
    pub names: Vec<String>,
}

impl Sites {
    /// The site of the group named `name`.
    pub fn named(&self, name: &str) -> Option<&Arc<Site>> {
        let i = self.names.iter().position(|n| n == name)?;
        self.by_group.get(i)?.as_ref()
    }
}

/// Redo requests between the sites of this node, each delivered on a thread of its
/// own (a site acting on one may send others; none waits for another).
struct NodeLinks {
    sites: OnceLock<Vec<Option<Weak<Site>>>>,
}

impl Links for NodeLinks {
    fn send_redo(&self, from: u16, to: u16, n: u64) {
        let target = self
            .sites
            .get()
            .and_then(|v| v.get(usize::from(to)).cloned().flatten())
            .and_then(|w| w.upgrade());
        let Some(site) = target else {
            tracing::warn!(
                from,
                to,
                n,
                "redo request for a site this node does not host; not supported yet across nodes"
            );
            return;
        };
        let spawned = std::thread::Builder::new()
            .name("rm-redo".into())
            .spawn(move || match site.on_redo(from, n) {
                Ok(Some(restored)) => {
                    tracing::info!(
                        site = to,
                        from,
                        n,
                        restored,
                        "redo request acted on (Algorithm 4)"
                    )
                }
                Ok(None) => tracing::info!(site = to, from, n, "second redo request ignored"),
                Err(e) => tracing::error!(site = to, from, n, error = %e, "redo request failed"),
            });
        if spawned.is_err() {
            tracing::error!("cannot start a redo thread");
        }
    }
}

/// Opens every embedded site of the configuration, starts serving and checkpointing
/// it, and points its group's open string at the site's socket.
pub fn open_sites(config: &mut DomainConfig, node: &str) -> Result<Sites, DaemonError> {
    let run_dir = config.domain.run_dir.clone();
    let links = Arc::new(NodeLinks {
        sites: OnceLock::new(),
    });
    let mut sites = Sites::default();
    let node_index = config.nodes.iter().position(|n| n.name == node);
    for (i, g) in config.groups.iter_mut().enumerate() {
        sites.names.push(g.name.clone());
        if node_index.is_some_and(|n| n != g.node) {
            // Another node hosts this group's site.
            sites.by_group.push(None);
            continue;
        }
        let Some(res) = g.rm.xa_mut().filter(|r| r.kind == RmKind::Embedded) else {
            sites.by_group.push(None);
            continue;
        };
        let fail = |error| DaemonError::Site {
            group: g.name.clone(),
            error,
        };
        let dir = if res.open.expose().is_empty() {
            run_dir.join("rm").join(&g.name)
        } else {
            PathBuf::from(res.open.expose())
        };
        let cfg = SiteConfig {
            site: i as u16,
            name: g.name.clone(),
            dir: dir.clone(),
            checkpoint_interval: Duration::from_millis(res.checkpoint_interval_ms),
            lock_timeout: Duration::from_millis(res.lock_timeout_ms),
            sync: true,
        };
        let (site, report) = Site::open(cfg).map_err(fail)?;
        tracing::info!(
            group = %g.name,
            site = i,
            dir = %dir.display(),
            checkpoint = report.checkpoint,
            redone = report.redone,
            in_doubt = report.in_doubt,
            elapsed_ms = report.elapsed.as_millis() as u64,
            "embedded site recovered"
        );
        let socket = run_dir.join("rm").join(format!("{i}.sock"));
        std::fs::create_dir_all(run_dir.join("rm")).map_err(|e| DaemonError::RunDir {
            path: run_dir.join("rm"),
            source: e,
        })?;
        tpmon_rm::session::serve(site.clone(), &socket).map_err(fail)?;
        tpmon_rm::adapter::register(&socket, &site);
        site.set_links(links.clone());
        let runner = site.clone();
        std::thread::Builder::new()
            .name(format!("rm-ckpt-{i}"))
            .spawn(move || runner.run_checkpointer())
            .map_err(|e| DaemonError::RunDir {
                path: dir,
                source: e,
            })?;
        res.open = Password::new(socket.display().to_string());
        sites.by_group.push(Some(site));
    }
    let _ = links.sites.set(
        sites
            .by_group
            .iter()
            .map(|s| s.as_ref().map(Arc::downgrade))
            .collect(),
    );
    Ok(sites)
}
