//! tpmon's node links: the authenticated TCP mesh between the nodes of a multi-node
//! domain (spec 02 §2.4).
//!
//! * [`frame`]: the packet layout (size, seven-field big-endian header, body) and the
//!   item types, requests and responses, including the recovery commands;
//! * [`handshake`]: the position exchange with the spec's two refusals, then a
//!   mutual HMAC-SHA256 challenge-response over the domain secret;
//! * [`mesh`]: one active and one passive connection per pair of members,
//!   heartbeats, failure detection, reconnection with back-off, per-peer state.
//!
//! Status: each node daemon of a multi-node domain joins the mesh at boot, shows the
//! links in `tpmon status`, and sends its remote calls (Call) and its shutdown notice
//! (INVALIDATE_SHARD_TARGET) over them; it learns of link failures from
//! [`Mesh::changes`] and [`Mesh::link_state`]. Cross-node transactions and the
//! recovery commands are issue 5's next steps. This crate must not interpret frame
//! bodies (the daemon does).

pub mod frame;
pub mod handshake;
pub mod mesh;

pub use frame::{Frame, Item};
pub use handshake::{HandshakeError, Identity};
pub use mesh::{Incoming, Mesh, MeshConfig, PeerStatus, SendError};
