//! The daemon's shared state: configuration, routing table, queues, status table, the
//! per-server supervision records, the node-link mesh and the calls between nodes.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::watch;
use tpmon_config::DomainConfig;
use tpmon_ipc::{Endpoint, StatusTable};
use tpmon_proto::{ClientId, Welcome};

use crate::relay::RelayHub;

/// Supervision record of one instance slot.
#[derive(Debug, Default, Clone)]
pub struct SlotRecord {
    /// The process, when one runs.
    pub pid: Option<u32>,
    /// Human-readable state: starting, running, stopping, restarting, stopped, failed.
    pub state: &'static str,
    /// Times this slot's process was restarted.
    pub restarts: u64,
    /// Requests served by earlier processes of this slot.
    pub served_before: u64,
    /// Why the daemon killed the current process, if it did.
    pub kill_reason: Option<String>,
    /// Last exit or start failure.
    pub last_exit: Option<String>,
    /// A supervision task owns this slot.
    pub active: bool,
}

/// Supervision record of one server.
#[derive(Debug, Default)]
pub struct ServerRecord {
    /// Slots, `max_instances` of them.
    pub slots: Vec<SlotRecord>,
    /// Set when the restart limit was exceeded; the reason.
    pub failed: Option<String>,
    /// Recent restart times, for the restart window.
    pub recent_restarts: VecDeque<Instant>,
}

/// One server's runtime parts. Every server of the configuration has one, so that
/// indices match the configuration, the status table and the routing table; a server
/// of another node has no queue and is never started here.
pub struct ServerRt {
    /// Index in the configuration.
    pub index: usize,
    /// The queue socket (the daemon keeps it so queued requests survive instance
    /// restarts and can be answered if the server fails); `None` for a server of
    /// another node.
    pub queue: Option<Endpoint>,
    /// Its path (empty for a server of another node).
    pub queue_path: PathBuf,
    /// The node that runs this server when it is not this daemon's node.
    pub remote: Option<String>,
    /// First slot number in the status table.
    pub slot_base: usize,
    /// Supervision state.
    pub record: Mutex<ServerRecord>,
}

/// Everything the daemon's tasks share.
pub struct Domain {
    /// The configuration.
    pub config: DomainConfig,
    /// The node this daemon runs.
    pub node: String,
    /// Its index in the configuration's nodes (its position in the mesh).
    pub node_index: usize,
    /// The node-link mesh with the domain's other nodes (`None` in a single-node
    /// domain).
    pub mesh: Option<Arc<tpmon_link::Mesh>>,
    /// Calls to and from the other nodes (`None` in a single-node domain).
    pub remote: Option<Arc<crate::remote::Remote>>,
    /// The transaction manager's requests to and from the other nodes' (`None` in a
    /// single-node domain).
    pub tm_links: Option<crate::tm_link::TmLinks>,
    /// The status table.
    pub table: Arc<StatusTable>,
    /// Routing table template (client id filled per client).
    pub welcome: Welcome,
    /// Servers.
    pub servers: Vec<ServerRt>,
    /// Directory searched first for bare executable names (the tpmon binary's).
    pub exe_dir: Option<PathBuf>,
    /// Next client id.
    pub next_client: AtomicU64,
    /// Connected TCP clients.
    pub clients: AtomicUsize,
    /// Set once shutdown began.
    pub stopping: AtomicBool,
    /// Set once shutdown ended (every instance is gone).
    pub finished: AtomicBool,
    /// Broadcasts shutdown to tasks.
    pub shutdown_tx: watch::Sender<bool>,
    /// The relay for TCP clients.
    pub relay: RelayHub,
    /// When the daemon booted.
    pub started: Instant,
    /// The node's transaction manager.
    pub tm: Arc<tpmon_tm::Tm>,
    /// The embedded sites this node hosts.
    pub sites: crate::sites::Sites,
}

impl Domain {
    /// A fresh client id: the boot generation in the high bits keeps ids unique across
    /// daemon restarts.
    pub fn new_client_id(&self) -> ClientId {
        let n = self.next_client.fetch_add(1, Ordering::Relaxed);
        ClientId((self.table.generation() << 32) | (n & 0xFFFF_FFFF))
    }

    /// True once shutdown began.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// True once shutdown ended: no instance is left to reply.
    pub fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    /// A receiver that turns true at shutdown.
    pub fn shutdown_rx(&self) -> watch::Receiver<bool> {
        self.shutdown_tx.subscribe()
    }

    /// Logs a server-level event with the server's name.
    pub fn server_name(&self, server: usize) -> &str {
        &self.config.servers[server].name
    }
}
