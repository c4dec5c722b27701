//! Local inter-process communication for one tpmon node.
//!
//! Owns two things: the datagram [`Endpoint`]s through which requests reach a server's
//! queue and replies reach a caller (one kernel round trip per call, no relay through
//! the daemon), and the shared [`StatusTable`] in which server instances publish what
//! they are doing and their statistics. It must not interpret messages (that is
//! `tpmon-proto`) nor decide routing (that is the client and the daemon).
//!
//! Fault model: peers may die at any moment (a send to a vanished reply address fails
//! with a typed error, never a panic); a status table file may be truncated or belong
//! to another build (refused at open with the file named).

mod clock;
mod endpoint;
mod table;

pub use clock::monotonic_us;
pub use endpoint::{
    kernel_queue_len, raise_kernel_queue_len, random_u64, Endpoint, IpcError, NoGate, Received,
    Spin, SpinGate, INLINE_BYTES_MAX,
};
pub use table::{
    latency_bucket, BusyRequest, CallOutcome, ServiceStats, SlotSnapshot, SlotState, StatusTable,
    TableError, TableShape, LATENCY_BUCKETS, REPLY_ADDR_BYTES_MAX,
};
