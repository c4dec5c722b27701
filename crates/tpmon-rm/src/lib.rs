//! tpmon's embedded memory-resident resource manager (spec 03).
//!
//! Each server group configured with `rm = "embedded"` is one **site** of the 1995
//! paper: named tables of records held in memory, strict two-phase locking with
//! lock-wait timeouts, an operation log with group commit, and commit checkpoints
//! taken every delta on the site's own, kept globally consistent by the checkpoint
//! numbers that ride on the two-phase commit messages (the prepare vote carries the
//! site's LCPN+1, the decision the transaction's GCPN). Restart recovery restores the
//! newest checkpoint and redoes the log; rollback-recovery follows Algorithms 3 and 4.
//!
//! Modules: [`codec`] (bytes and checksummed frames), [`record`] (the log's records),
//! [`oplog`] (log files, group commit), [`checkpoint`] (checkpoint files), [`locks`]
//! (2PL), [`site`] (the store, XA, Algorithms 2–4), [`session`] (the socket protocol
//! between servers and the site), [`adapter`] (the site as a [`tpmon_xa::Rm`]),
//! [`inspect`] (what `tpmon rm inspect` shows).
//!
//! The site lives in the node daemon; servers reach it over a Unix socket. This crate
//! must not decide transaction outcomes (the transaction manager does).

pub mod adapter;
pub mod checkpoint;
pub mod codec;
pub mod error;
pub mod inspect;
pub mod locks;
pub mod oplog;
pub mod record;
pub mod session;
pub mod site;

pub use adapter::{open, EmbeddedRm};
pub use error::{ErrorKind, RmError};
pub use site::{Links, RedoEvent, Site, SiteConfig};
