//! tpmon's durable global transaction log.
//!
//! The node daemon's transaction manager records here, before any protocol step that
//! depends on it, the state of every global transaction it coordinates or takes part
//! in (spec 02 §2.2–2.3). The log is a durable map gtrid → [`Entry`]: [`TxLog::put`],
//! [`TxLog::update`] and [`TxLog::remove`] return only once the change is on disk
//! (fdatasync returned Ok); queries ([`TxLog::get`], [`TxLog::in_state`], …) are
//! answered from memory and only ever show durable state.
//!
//! On disk it is a directory of append-only, checksummed segments (docs/log-format.md
//! draws every byte); concurrent changes share one write and one fdatasync (group
//! commit); the size is bounded by rotating to a new segment that starts with a
//! snapshot of the live entries.
//!
//! Fault model: the process or machine may stop at any instant (every write can be
//! torn, its sectors persisted in any order); a write or fdatasync may fail (the log
//! poisons itself and must be reopened); the disk may rot (recovery refuses damage
//! that could hide an acknowledged change, naming file and byte offset, and repairs
//! only what provably was never acknowledged). Nothing a file can contain causes a
//! panic. Recovery's decisions are the table in [`Case`].
//!
//! ```
//! use tpmon_txlog::{Advice, Entry, LogIdentity, Options, SimStorage, TxLog, TxState};
//!
//! // `TxLog::create(dir, …)` on real files; the simulated disk here keeps the example pure.
//! let log = TxLog::create_in(SimStorage::new(), LogIdentity::new("bank", "node-a"), Options::default())?;
//! log.put(Entry::new(b"node-a:42".to_vec(), TxState::Prepare))?; // durable when it returns
//! log.update(b"node-a:42", None, Some(Advice::Commit))?;
//! assert_eq!(log.in_state(TxState::Prepare).len(), 1);
//! log.remove(b"node-a:42")?; // completed: space reclaimed
//! assert!(log.is_empty());
//! # Ok::<(), tpmon_txlog::LogError>(())
//! ```
//!
//! Module map: `entry` (model and limits), `record` (record codec), `segment` (header
//! block, segment files), `storage` (trait and real files), `sim` (crash-simulating
//! storage), `index` (in-memory map), `recover` (decision table), `group` (group
//! commit and rotation), `log` ([`TxLog`]).

mod entry;
mod error;
mod group;
mod index;
mod log;
mod record;
mod recover;
mod segment;
mod sim;
mod storage;

#[cfg(test)]
mod crash_tests;
#[cfg(test)]
mod log_tests;
#[cfg(test)]
mod test_dir;

pub use entry::{
    validate_gtrid, Advice, Branch, Entry, EntryError, TxState, BQUAL_BYTES_MAX, BRANCHES_MAX,
    DATA_BYTES_MAX, GTRID_BYTES_MAX,
};
pub use error::LogError;
pub use log::{
    GroupCommit, LogStats, Options, TxLog, BATCH_BYTES_MAX_DEFAULT, BATCH_BYTES_MAX_LIMIT,
    COMMIT_DELAY_DEFAULT, COMMIT_DELAY_MAX, ENTRIES_MAX_DEFAULT, PREALLOCATE_BYTES_DEFAULT,
    PREALLOCATE_BYTES_MAX, SEGMENT_BYTES_MAX_DEFAULT,
};
pub use record::{Lsn, RECORD_BYTES_MAX, RECORD_HEADER_BYTES, RECORD_PAYLOAD_BYTES_MAX};
pub use recover::{decision_table_markdown, Case, Decision, OpenReport, Repair};
pub use segment::{LogIdentity, FORMAT_VERSION, HEADER_BLOCK_BYTES, NAME_BYTES_MAX};
pub use sim::{SimFile, SimStorage, XorShift64, SECTOR_BYTES};
pub use storage::{FileStorage, RealFile, Storage, StorageFile};
