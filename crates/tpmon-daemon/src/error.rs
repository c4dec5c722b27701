//! Errors that stop the daemon from booting or running.

use std::path::PathBuf;

use thiserror::Error;

/// Why the daemon could not boot or had to stop.
#[derive(Debug, Error)]
pub enum DaemonError {
    /// The run directory could not be prepared.
    #[error("run directory {path}: {source}")]
    RunDir {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Another daemon holds the run directory.
    #[error("domain {domain} is already running (pid {pid}, run directory {run_dir})")]
    AlreadyRunning {
        /// Domain name.
        domain: String,
        /// The other daemon's pid.
        pid: String,
        /// Its run directory.
        run_dir: PathBuf,
    },
    /// The client port could not be opened.
    #[error("cannot listen for clients on {addr}: {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// A queue or the status table could not be created.
    #[error("{0}")]
    Ipc(String),
    /// The async runtime could not start.
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    /// The transaction manager could not start (its log is damaged or unreadable).
    #[error("{0}")]
    Tm(#[from] tpmon_tm::TmError),
    /// The configuration cannot be run as given: the node to run is not one of its
    /// nodes (or it was narrowed to another node already), or a multi-node domain
    /// lacks what its links need.
    #[error("{0}")]
    Config(String),
    /// The node-link address could not be opened (multi-node domains).
    #[error("cannot listen for node links on {addr}: {source}")]
    Link {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// An embedded site could not be opened (its files are damaged or unreadable).
    #[error("embedded site of group {group:?}: {error}")]
    Site {
        /// The group.
        group: String,
        /// Why.
        error: tpmon_rm::RmError,
    },
}
