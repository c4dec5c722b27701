//! The tpmon client library: XATMI-style calls from Rust.
//!
//! A [`Client`] is one client context (what `tpinit` creates). It authenticates with the
//! node daemon over TCP; when it runs on the daemon's host and may read the daemon's run
//! directory it then calls services directly through their Unix datagram queues (one
//! kernel round trip per call), otherwise every call is relayed by the daemon over the
//! TCP connection (one extra hop). Server instances use the same type for nested calls.
//! A service that only other nodes of the domain offer is called through the client's
//! own node daemon (a [`tpmon_proto::RemoteCall`] on `run_dir/remote.sock`, or on the
//! TCP session when relayed), which picks the node; the reply comes back the same way
//! as a local one.
//!
//! This crate owns call descriptors, timeouts, reply matching and the mapping of
//! failures to [`ErrorKind`]s. It chooses between this node and "another node" (its
//! own node's servers first) but must not choose among other nodes (the daemon does,
//! from the links' state), and must not supervise anything.
//! Fault model: the daemon or a server may vanish mid-call (the call fails with a typed
//! error, never hangs past its timeout); late replies of abandoned calls are discarded.

mod client;
mod convert;
mod error;
mod options;
mod transport;
mod tx;

pub use client::{CallReply, Cd, Client, Route};
pub use convert::{from_wire, to_wire};
pub use error::CallError;
pub use options::ClientOptions;
pub use tpmon_buffer::Buffer;
pub use tpmon_proto::{ClientId, ErrorKind, Flags, UnsolMode};
pub use tx::{ActiveTx, CommitReturn, Committed, TxControl, TxError, TxInfo, TxStatus};
