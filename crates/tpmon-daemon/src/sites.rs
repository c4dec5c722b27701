//! The embedded sites (spec 03) this node hosts: one per group with `rm =
//! "embedded"`, opened (and recovered) at boot, served to the group's servers on
//! `run_dir/rm/<group index>.sock`, checkpointed by a thread each, and linked to one
//! another for rollback-recovery's redo requests: directly between the sites of this
//! node, over the node links (Redo items) to the sites of other nodes.
//!
//! Owns the sites' lifetime in the daemon, the redo links and the Redo item's body. It
//! must not touch a site's data itself; the transaction manager reaches a site through
//! its XA adapter (direct calls: the adapter finds the site in this process).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use thiserror::Error;
use tpmon_config::{DomainConfig, Password, RmKind};
use tpmon_link::{Frame, Item, Mesh};
use tpmon_rm::{Links, Site, SiteConfig};

/// Version byte of a Redo item's body.
pub const REDO_BODY_VERSION: u8 = 1;
/// Bytes of a Redo request's body: version, from, to, n.
pub const REDO_BODY_BYTES: usize = 1 + 2 + 2 + 8;
/// How long a redo request for another node's site is retried (every
/// [`REDO_RESEND`] until that node acknowledges it) before it is given up, logged.
pub const REDO_GIVE_UP: Duration = Duration::from_secs(60);
/// Wait for an acknowledgement before sending a redo request again.
pub const REDO_RESEND: Duration = Duration::from_secs(1);

/// A redo request, redo(from, n) for site `to` (spec 03 Algorithms 3 and 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedoRequest {
    /// The sending site (its group index).
    pub from: u16,
    /// The site that must act on it (its group index).
    pub to: u16,
    /// The checkpoint number.
    pub n: u64,
}

/// A Redo item's body that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RedoBodyError {
    /// Not [`REDO_BODY_BYTES`] long.
    #[error("a redo request body of {0} bytes (expected {REDO_BODY_BYTES})")]
    Length(usize),
    /// Another version.
    #[error("a redo request body of version {0} (expected {REDO_BODY_VERSION})")]
    Version(u8),
}

impl RedoRequest {
    /// The body of a Redo request (integers little-endian): `u8 version = 1`,
    /// `u16 from`, `u16 to`, `u64 n`.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(REDO_BODY_BYTES);
        b.push(REDO_BODY_VERSION);
        b.extend_from_slice(&self.from.to_le_bytes());
        b.extend_from_slice(&self.to.to_le_bytes());
        b.extend_from_slice(&self.n.to_le_bytes());
        b
    }

    /// Reads a Redo request's body.
    pub fn decode(b: &[u8]) -> Result<RedoRequest, RedoBodyError> {
        let b: &[u8; REDO_BODY_BYTES] = b.try_into().map_err(|_| RedoBodyError::Length(b.len()))?;
        if b[0] != REDO_BODY_VERSION {
            return Err(RedoBodyError::Version(b[0]));
        }
        let mut n = [0u8; 8];
        n.copy_from_slice(&b[5..13]);
        Ok(RedoRequest {
            from: u16::from_le_bytes([b[1], b[2]]),
            to: u16::from_le_bytes([b[3], b[4]]),
            n: u64::from_le_bytes(n),
        })
    }
}

use crate::error::DaemonError;

/// The node's sites, by group index (`None`: the group has no embedded site).
#[derive(Default)]
pub struct Sites {
    /// By group index.
    pub by_group: Vec<Option<Arc<Site>>>,
    /// Group names, by group index.
    pub names: Vec<String>,
    /// The redo links of this node's sites (none without sites).
    links: Option<Arc<NodeLinks>>,
}

impl Sites {
    /// The site of the group named `name`.
    pub fn named(&self, name: &str) -> Option<&Arc<Site>> {
        let i = self.names.iter().position(|n| n == name)?;
        self.by_group.get(i)?.as_ref()
    }

    /// Lets the sites send redo requests to the sites of other nodes over `mesh`
    /// (this node at position `me`; `node_of_group[g]`: the node hosting group g).
    pub fn link_nodes(&self, mesh: Arc<Mesh>, me: u32, node_of_group: Vec<usize>) {
        if let Some(l) = &self.links {
            let _ = l.remote.set(Arc::new(RemoteRedo {
                mesh,
                me,
                node_of_group,
                next: AtomicU64::new(1),
                waiting: Mutex::new(HashMap::new()),
            }));
        }
    }

    /// A Redo frame from the node at position `from_node`: a request is acknowledged
    /// at once and acted on by the site it names on a thread of its own; a response
    /// is the acknowledgement of one of ours.
    pub fn on_link_redo(&self, from_node: u32, frame: Frame) {
        let Some(links) = &self.links else {
            tracing::warn!(
                peer = from_node,
                "redo request from another node, but this node hosts no site"
            );
            return;
        };
        let Some(remote) = links.remote.get() else {
            return;
        };
        if frame.response {
            let waiter = remote.waiting().remove(&frame.async_seq);
            if let Some(w) = waiter {
                let _ = w.send(());
            }
            return;
        }
        let req = match RedoRequest::decode(&frame.body) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(peer = from_node, error = %e, "malformed redo request from another node; dropped");
                return;
            }
        };
        let sender_hosts_it = remote
            .node_of_group
            .get(usize::from(req.from))
            .is_some_and(|&n| n == from_node as usize);
        let target = links.local(req.to);
        if !sender_hosts_it || target.is_none() {
            tracing::warn!(
                peer = from_node,
                from = req.from,
                to = req.to,
                n = req.n,
                "redo request from another node naming a site it does not host, or one this node does not host; dropped"
            );
            return;
        }
        // Acknowledged (received), then acted on: a repeated request is ignored by
        // Algorithm 4 itself (its site is in the list for n already).
        let ack = Frame {
            response: true,
            async_seq: frame.async_seq,
            ..Frame::request(Item::Redo, remote.me, Vec::new())
        };
        if let Err(e) = remote.mesh.send(from_node, ack) {
            tracing::debug!(peer = from_node, error = %e, "could not acknowledge a redo request");
        }
        if let Some(site) = target {
            deliver(site, req);
        }
    }
}

/// The way to the sites of other nodes.
struct RemoteRedo {
    mesh: Arc<Mesh>,
    me: u32,
    node_of_group: Vec<usize>,
    next: AtomicU64,
    /// Requests sent and not acknowledged yet: async sequence → waiter.
    waiting: Mutex<HashMap<u64, mpsc::Sender<()>>>,
}

impl RemoteRedo {
    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<u64, mpsc::Sender<()>>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `req` to `node` until it acknowledges it (a thread; at-least-once:
    /// Algorithm 4 ignores a repeated request) or [`REDO_GIVE_UP`] has passed.
    fn send(self: &RemoteRedoRef, node: usize, req: RedoRequest) {
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("rm-redo-send".into())
            .spawn(move || {
                let id = me.next.fetch_add(1, Ordering::Relaxed);
                let (tx, rx) = mpsc::channel();
                me.waiting().insert(id, tx);
                let started = Instant::now();
                let mut last_error = String::new();
                let acked = loop {
                    let frame = Frame {
                        async_seq: id,
                        ..Frame::request(Item::Redo, me.me, req.encode())
                    };
                    match me.mesh.send(node as u32, frame) {
                        Ok(()) => {
                            if rx.recv_timeout(REDO_RESEND).is_ok() {
                                break true;
                            }
                            last_error = "no acknowledgement".into();
                        }
                        Err(e) => {
                            last_error = e.to_string();
                            // The link is down: wait before the next try (an
                            // acknowledgement of an earlier try may still come).
                            if rx.recv_timeout(REDO_RESEND).is_ok() {
                                break true;
                            }
                        }
                    }
                    if started.elapsed() >= REDO_GIVE_UP {
                        break false;
                    }
                };
                me.waiting().remove(&id);
                if acked {
                    tracing::info!(
                        from = req.from,
                        to = req.to,
                        n = req.n,
                        node,
                        "redo request delivered to another node"
                    );
                } else {
                    tracing::error!(
                        from = req.from,
                        to = req.to,
                        n = req.n,
                        node,
                        last_error,
                        "redo request for a site of another node not acknowledged within {REDO_GIVE_UP:?}; given up (run `tpmon rm recover` on that site)"
                    );
                }
            });
        if spawned.is_err() {
            tracing::error!("cannot start a redo thread");
        }
    }
}

/// A shared [`RemoteRedo`] (the sending threads hold it).
type RemoteRedoRef = Arc<RemoteRedo>;

/// Redo requests of this node's sites: to a site of this node, delivered on a thread
/// of its own (a site acting on one may send others; none waits for another); to a
/// site of another node, sent over the link as a Redo item.
struct NodeLinks {
    sites: OnceLock<Vec<Option<Weak<Site>>>>,
    remote: OnceLock<RemoteRedoRef>,
}

impl NodeLinks {
    fn local(&self, site: u16) -> Option<Arc<Site>> {
        self.sites
            .get()
            .and_then(|v| v.get(usize::from(site)).cloned().flatten())
            .and_then(|w| w.upgrade())
    }
}

/// Site `req.to` acts on `req` (Algorithm 4), on a thread of its own.
fn deliver(site: Arc<Site>, req: RedoRequest) {
    let RedoRequest { from, to, n } = req;
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

impl Links for NodeLinks {
    fn send_redo(&self, from: u16, to: u16, n: u64) {
        let req = RedoRequest { from, to, n };
        if let Some(site) = self.local(to) {
            deliver(site, req);
            return;
        }
        let remote = self.remote.get();
        let node = remote.and_then(|r| r.node_of_group.get(usize::from(to)).copied());
        match (remote, node) {
            (Some(r), Some(node)) if node != r.me as usize => r.send(node, req),
            _ => tracing::warn!(
                from,
                to,
                n,
                "redo request for a site no node hosts; dropped"
            ),
        }
    }
}

/// Opens every embedded site of the configuration, starts serving and checkpointing
/// it, and points its group's open string at the site's socket.
pub fn open_sites(config: &mut DomainConfig, node: &str) -> Result<Sites, DaemonError> {
    let run_dir = config.domain.run_dir.clone();
    let links = Arc::new(NodeLinks {
        sites: OnceLock::new(),
        remote: OnceLock::new(),
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
    sites.links = Some(links);
    Ok(sites)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redo_body_round_trips_and_bad_ones_are_refused() {
        let r = RedoRequest {
            from: 4,
            to: 1,
            n: 0x0102_0304_0506_0708,
        };
        let b = r.encode();
        assert_eq!(b.len(), REDO_BODY_BYTES);
        assert_eq!(&b[..5], &[1, 4, 0, 1, 0]);
        assert_eq!(RedoRequest::decode(&b), Ok(r));
        assert_eq!(
            RedoRequest::decode(&b[..12]),
            Err(RedoBodyError::Length(12))
        );
        let mut v2 = b.clone();
        v2[0] = 2;
        assert_eq!(RedoRequest::decode(&v2), Err(RedoBodyError::Version(2)));
        let mut long = b;
        long.push(0);
        assert_eq!(RedoRequest::decode(&long), Err(RedoBodyError::Length(14)));
    }
}
