//! The tpmon node daemon.
//!
//! One daemon runs per node. It reads the domain configuration, prepares the run
//! directory (pid lock, host token, status table, one request queue per server),
//! starts and supervises server instances, authenticates clients on the TCP port,
//! relays the calls of clients that cannot use the local fast path, and answers
//! administrative requests (status, down, tx list, tx resolve, rm recover, rm
//! checkpoint) on a Unix socket in the run directory. It hosts the node's transaction
//! manager (`tpmon-tm`, with its `tm.sock`) and embedded sites (`tpmon-rm`). In a
//! multi-node domain it runs its own node only (its own run directory, the servers of
//! its node's groups, its node's embedded sites) and keeps the node links
//! (`tpmon-link`) with the other nodes' daemons, over which it routes the calls of its
//! callers to services that only other nodes offer and serves theirs; the links also
//! carry the transaction managers' requests and the sites' redo requests between nodes.
//!
//! The daemon routes and supervises; it does not carry the bytes of local calls, which
//! go straight from caller to server queue and back. It owns: the processes, the
//! restart decisions, the answer a caller gets when the instance serving it dies, the
//! relay state of TCP clients and the calls in flight between nodes. Fault model: any client or server may send garbage
//! or die at any moment; the daemon logs the offender, closes that one connection or
//! restarts that one instance, and keeps serving everyone else.

mod admin;
mod clients;
mod domain;
mod error;
mod relay;
mod remote;
mod run;
mod sites;
mod status;
mod supervise;
mod tm_link;
mod tm_port;

pub use error::DaemonError;
pub use run::{run, BootOptions, ReadyNotice};
pub use status::{admin_request, AdminError};

/// Name of the admin socket in the run directory.
pub const ADMIN_SOCKET: &str = "admin.sock";
/// Name of the pid/lock file in the run directory.
pub const PID_FILE: &str = "tpmon.pid";
