//! tpmon's node links: the authenticated TCP mesh between the nodes of a multi-node
//! domain (spec 02 §2.4).
//!
//! * [`frame`]: the packet layout (size, seven-field big-endian header, body) and the
//!   item types, requests and responses, including the recovery commands;
//! * [`handshake`]: the version and position exchange with the spec's two refusals,
//!   then a mutual HMAC-SHA256 challenge-response over the domain secret, which also
//!   derives the connection's keys;
//! * [`seal`]: the integrity tag on every packet after the handshake (authenticated
//!   and integrity-protected, not encrypted);
//! * [`mesh`]: one active and one passive connection per pair of members,
//!   heartbeats, failure detection, reconnection with back-off, per-peer state.
//!
//! Status: each node daemon of a multi-node domain joins the mesh at boot, shows the
//! links in `tpmon status`, and sends over them its remote calls (Call), its shutdown
//! notice (INVALIDATE_SHARD_TARGET), CONNECT_GLOBAL_RECOVERY_MEMBER (the receiver
//! reconnects at once: [`Mesh::reconnect_now`]), CHECK_RECOVERED_NODE, the transaction managers'
//! items (Prepare, Commit, Rollback, QUERY_ADVICE_INDOUBT_GTX, GET_MAX_SCN, RECOVER_INDOUBT_GLOBAL_TX) and the
//! embedded sites' redo requests (Redo); it learns of link failures from
//! [`Mesh::changes`] and [`Mesh::link_state`]. This crate must not interpret frame
//! bodies (the daemon does).

pub mod frame;
pub mod handshake;
pub mod mesh;
pub mod seal;

pub use frame::{Frame, Item};
pub use handshake::{HandshakeError, Identity};
pub use mesh::{Incoming, Mesh, MeshConfig, PeerStatus, SendError};
