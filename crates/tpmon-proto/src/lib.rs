//! The tpmon wire protocol, sans I/O.
//!
//! This crate owns the byte layout of every message that crosses a socket in tpmon:
//! client to daemon (TCP, length-prefixed frames), client or server to a service queue
//! and back (Unix datagrams), and daemon to server instance (control socket pair). It
//! only turns messages into bytes and bytes into messages; it never opens a socket,
//! never blocks and never allocates more than the input it was given justifies, so it
//! can be fuzzed and property-tested on its own.
//!
//! Fault model: every decoder accepts arbitrary bytes from a hostile peer and answers
//! either a message or a [`DecodeError`] naming the byte offset; it never panics.
#![forbid(unsafe_code)]

mod codec;
mod flags;
mod frame;
mod kind;
mod message;
mod tx;

pub use codec::{DecodeError, Reader, Writer};
pub use flags::Flags;
pub use frame::{encode_frame, FrameDecoder, FrameError, FRAME_HEADER_BYTES};
pub use kind::ErrorKind;
pub use message::{
    AdminRequest, BufferWire, ClientId, ControlMessage, Hello, Message, RemoteCall, Reply,
    ReplyStatus, Request, ServerRoute, ServiceRoute, TxContext, UnsolMode, Welcome,
};
pub use tx::{
    Branch, Gtrid, TxDone, TxEnd, TxOutcome, Vote, BRANCHES_MAX, FORMAT_ID, NAMES_BYTES_MAX,
    SEQ_MAX, XID_PART_BYTES_MAX,
};

/// The protocol version spoken by this build; a peer with another version is refused.
pub const PROTOCOL_VERSION: u8 = 6;

/// v5: the Unix datagram socket in a node's run directory on which local callers
/// (clients and server instances on the daemon's host) send their [`RemoteCall`]s:
/// calls for services that only other nodes offer.
pub const REMOTE_SOCKET: &str = "remote.sock";

/// `node "a"` or `nodes "a", "b"`, for error details.
pub fn node_list(nodes: &[&str]) -> String {
    let quoted: Vec<String> = nodes.iter().map(|n| format!("{n:?}")).collect();
    match quoted.len() {
        1 => format!("node {}", quoted[0]),
        _ => format!("nodes {}", quoted.join(", ")),
    }
}

/// Longest service name, in bytes (XATMI allows 31 characters plus the terminating NUL).
pub const SERVICE_NAME_BYTES_MAX: usize = 31;
