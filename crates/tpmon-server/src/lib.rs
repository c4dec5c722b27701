//! The tpmon server runtime: the main loop of a server process.
//!
//! A server program registers service routines by name plus optional init and done
//! hooks (`tpsvrinit` / `tpsvrdone`), then hands control to [`Server::run`]. The node
//! daemon starts the process with its service queue and a control socket already open;
//! the runtime takes one request at a time from the queue (the kernel gives each request
//! to exactly one idle instance), runs the routine, and sends the reply straight to the
//! caller. Routines may call other services through their [`Context`] and may forward
//! the request instead of replying.
//!
//! This crate owns the per-request protocol of a server: queue accounting, the status
//! slot that lets the daemon answer the caller if this process dies, reply delivery and
//! statistics. It must not decide restarts or routing (the daemon does).
//! Fault model: a routine that panics is answered with TPESVCERR and the process exits
//! to be restarted; a malformed datagram is logged and dropped; a caller that vanished
//! before its reply is ignored.

mod context;
mod runtime;
mod service;

pub use context::{Context, ServiceClient};
pub use runtime::Server;
pub use service::{tpforward, tpreturn, Outcome, ServiceRequest, ServiceResult};
pub use tpmon_buffer::{Buffer, BufferType};
pub use tpmon_client::{CallError, CallReply, Cd, Client};
pub use tpmon_proto::{ClientId, ErrorKind, Flags};
pub use tpmon_rm::{EmbeddedRm, RmError};

/// The descriptor number of the service queue in a server process.
pub const QUEUE_FD: i32 = 3;
/// The descriptor number of the control socket in a server process.
pub const CONTROL_FD: i32 = 4;
/// Environment variable naming the server (set by the daemon).
pub const ENV_SERVER_NAME: &str = "TPMON_SERVER_NAME";
/// Environment variable naming the node the server runs on (set by the daemon; in a
/// single-node domain, the domain's only node).
pub const ENV_NODE: &str = "TPMON_NODE";
/// Environment variable with the largest message size in bytes (set by the daemon).
pub const ENV_MESSAGE_BYTES_MAX: &str = "TPMON_MESSAGE_BYTES_MAX";
