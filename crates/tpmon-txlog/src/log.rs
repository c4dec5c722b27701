//! [`TxLog`]: the public face of the log — create, open (with recovery), durable
//! changes, queries from memory — and its [`Options`].
//!
//! Owns the life cycle of a log directory: `create` makes the first segment and never
//! overwrites an existing log; `open` runs recovery and refuses a log of another
//! domain or node or a missing one. It must never report a change as done before it is
//! durable, and never serve from memory a state that is not durable. Faults: those of
//! `recover` at open and of `group` at run time.

use std::path::Path;

use crate::entry::{validate_gtrid, Advice, Entry, EntryError, TxState};
use crate::error::LogError;
use crate::group::{Engine, Writer};
use crate::record::{Lsn, Op, RECORD_BYTES_MAX};
use crate::recover::{recover, OpenReport};
use crate::segment::{
    classify, new_log_id, write_segment, FileKind, LogIdentity, SegmentHeader, HEADER_BLOCK_BYTES,
};
use crate::storage::{FileStorage, Storage};

/// Default [`Options::entries_max`].
pub const ENTRIES_MAX_DEFAULT: usize = 1_000_000;
/// Default [`Options::batch_bytes_max`]: 1 MiB.
pub const BATCH_BYTES_MAX_DEFAULT: usize = 1024 * 1024;
/// Default [`Options::segment_bytes_max`]: 64 MiB.
pub const SEGMENT_BYTES_MAX_DEFAULT: u64 = 64 * 1024 * 1024;
/// Largest accepted [`Options::batch_bytes_max`]: 1 GiB.
pub const BATCH_BYTES_MAX_LIMIT: usize = 1024 * 1024 * 1024;

/// Whether concurrent changes share flushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GroupCommit {
    /// Changes made while a flush runs are written and synced together by the next one.
    #[default]
    On,
    /// Every change writes and fdatasyncs its own record under the lock: the baseline
    /// that benchmarks compare group commit with.
    Off,
}

/// Limits and modes of a log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Most entries the log holds; a put of a new gtrid beyond it fails with
    /// [`LogError::Full`].
    pub entries_max: usize,
    /// Most bytes of records one flush writes (callers wait while the pending batch is
    /// full); at least [`RECORD_BYTES_MAX`]. Recovery also takes it as the longest
    /// possible torn write: lowering it between a crash and the next open can turn a
    /// repair into a refusal, never the reverse.
    pub batch_bytes_max: usize,
    /// Size in bytes past which the active segment is replaced by a new one that
    /// starts with a snapshot of the live entries (at least 8192).
    pub segment_bytes_max: u64,
    /// Group commit on (the default) or off (the baseline).
    pub group_commit: GroupCommit,
    /// Longest wait of a flush for callers committing side by side to join its batch
    /// (0: never wait). A flush waits only when the previous one showed concurrent
    /// callers and fewer are in its batch, and stops waiting as soon as they are in.
    /// At most [`COMMIT_DELAY_MAX`].
    pub commit_delay: std::time::Duration,
    /// Bytes of zeros the writer lays down ahead of its records (0: none). Writing a
    /// record over zeros already on disk lets its fdatasync skip the update of the
    /// file's size and block map, which on ext4 makes it about a fifth cheaper. At most
    /// [`PREALLOCATE_BYTES_MAX`].
    pub preallocate_bytes: u64,
}

/// The default [`Options::preallocate_bytes`]: 1 MiB (a few thousand decisions; laying
/// it down costs one flush about a millisecond).
pub const PREALLOCATE_BYTES_DEFAULT: u64 = 1024 * 1024;
/// The largest [`Options::preallocate_bytes`].
pub const PREALLOCATE_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// The default [`Options::commit_delay`].
pub const COMMIT_DELAY_DEFAULT: std::time::Duration = std::time::Duration::from_micros(100);
/// The largest [`Options::commit_delay`].
pub const COMMIT_DELAY_MAX: std::time::Duration = std::time::Duration::from_millis(10);

impl Default for Options {
    fn default() -> Options {
        Options {
            entries_max: ENTRIES_MAX_DEFAULT,
            batch_bytes_max: BATCH_BYTES_MAX_DEFAULT,
            segment_bytes_max: SEGMENT_BYTES_MAX_DEFAULT,
            group_commit: GroupCommit::On,
            commit_delay: COMMIT_DELAY_DEFAULT,
            preallocate_bytes: PREALLOCATE_BYTES_DEFAULT,
        }
    }
}

impl Options {
    fn validate(&self) -> Result<(), LogError> {
        let bad = |what: String| Err(LogError::InvalidOptions { what });
        if self.entries_max == 0 {
            return bad("entries_max must be at least 1".into());
        }
        if !(RECORD_BYTES_MAX..=BATCH_BYTES_MAX_LIMIT).contains(&self.batch_bytes_max) {
            return bad(format!(
                "batch_bytes_max must be in {RECORD_BYTES_MAX}..={BATCH_BYTES_MAX_LIMIT} (the largest record must fit one batch)"
            ));
        }
        if self.commit_delay > COMMIT_DELAY_MAX {
            return bad(format!("commit_delay must be at most {COMMIT_DELAY_MAX:?}"));
        }
        if self.preallocate_bytes > PREALLOCATE_BYTES_MAX {
            return bad(format!(
                "preallocate_bytes must be at most {PREALLOCATE_BYTES_MAX}"
            ));
        }
        if self.segment_bytes_max < 2 * HEADER_BLOCK_BYTES as u64 {
            return bad(format!(
                "segment_bytes_max must be at least {}",
                2 * HEADER_BLOCK_BYTES
            ));
        }
        Ok(())
    }
}

/// Counters since open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogStats {
    /// Writes followed by an fdatasync (one per batch).
    pub flushes: u64,
    /// Records made durable.
    pub records: u64,
    /// Bytes of records made durable.
    pub bytes: u64,
    /// Segment rotations.
    pub rotations: u64,
    /// Flushes that first waited for callers committing side by side
    /// ([`Options::commit_delay`]).
    pub delayed: u64,
}

/// The durable global transaction log: a map gtrid → [`Entry`] whose every change is
/// on disk before the call returns. `Send + Sync`; share it with an `Arc`.
pub struct TxLog<S: Storage = FileStorage> {
    engine: Engine<S>,
}

fn open_dir(dir: &Path) -> Result<FileStorage, LogError> {
    FileStorage::new(dir).map_err(|source| {
        if source.kind() == std::io::ErrorKind::WouldBlock {
            LogError::InUse {
                dir: dir.to_path_buf(),
                source,
            }
        } else {
            LogError::Io {
                file: dir.to_path_buf(),
                offset: 0,
                op: "open directory",
                source,
            }
        }
    })
}

impl TxLog<FileStorage> {
    /// Creates a new log in `dir` (created if missing); fails with
    /// [`LogError::AlreadyExists`] if a log is there.
    pub fn create(
        dir: impl AsRef<Path>,
        identity: LogIdentity,
        options: Options,
    ) -> Result<TxLog<FileStorage>, LogError> {
        TxLog::create_in(open_dir(dir.as_ref())?, identity, options)
    }

    /// Opens the log in `dir`, recovering it (see [`OpenReport`] for what was
    /// repaired). Refuses a missing log, a log of another domain or node, and damage
    /// that could hide acknowledged changes.
    pub fn open(
        dir: impl AsRef<Path>,
        identity: LogIdentity,
        options: Options,
    ) -> Result<(TxLog<FileStorage>, OpenReport), LogError> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(LogError::NoLog {
                dir: dir.to_path_buf(),
            });
        }
        TxLog::open_in(open_dir(dir)?, identity, options)
    }
}

impl<S: Storage> TxLog<S> {
    /// [`TxLog::create`] on any storage.
    pub fn create_in(
        storage: S,
        identity: LogIdentity,
        options: Options,
    ) -> Result<TxLog<S>, LogError> {
        identity.validate()?;
        options.validate()?;
        let dir_io = |op: &'static str| {
            let file = storage.path_of("");
            move |source| LogError::Io {
                file,
                offset: 0,
                op,
                source,
            }
        };
        let names = storage.list().map_err(dir_io("list"))?;
        if names
            .iter()
            .any(|n| matches!(classify(n), FileKind::Segment(_)))
        {
            return Err(LogError::AlreadyExists {
                dir: storage.path_of(""),
            });
        }
        // Leftovers of an interrupted create: never acknowledged, safe to drop.
        let temps: Vec<&String> = names
            .iter()
            .filter(|n| classify(n) == FileKind::Temp)
            .collect();
        for t in &temps {
            storage.remove(t).map_err(dir_io("remove"))?;
        }
        if !temps.is_empty() {
            storage.sync_dir().map_err(dir_io("fsync directory"))?;
        }
        let header = SegmentHeader {
            log_id: new_log_id(),
            seq: 1,
            first_lsn: 1,
            identity: identity.clone(),
        };
        write_segment(&storage, &header, std::iter::empty())?;
        TxLog::open_in(storage, identity, options).map(|(log, _)| log)
    }

    /// [`TxLog::open`] on any storage.
    pub fn open_in(
        storage: S,
        identity: LogIdentity,
        options: Options,
    ) -> Result<(TxLog<S>, OpenReport), LogError> {
        identity.validate()?;
        options.validate()?;
        let r = recover(&storage, &identity, options.batch_bytes_max)?;
        let writer = Writer {
            file: r.file,
            name: r.name,
            seq: r.header.seq,
            log_id: r.header.log_id,
            identity: r.header.identity,
            end: r.end,
            allocated: r.size,
            preallocate: options.preallocate_bytes,
            snapshot_bytes: r.snapshot_bytes,
        };
        let engine = Engine::new(storage, options, writer, r.index, r.last_lsn);
        Ok((TxLog { engine }, r.report))
    }

    /// Inserts `entry` or replaces the entry with its gtrid, durably; returns the lsn.
    pub fn put(&self, entry: Entry) -> Result<Lsn, LogError> {
        entry.validate()?;
        self.engine.submit(Op::Put(entry))
    }

    /// Sets the state, the advice or both of an existing entry, durably; fails with
    /// [`LogError::NotFound`] if the log does not hold `gtrid`.
    pub fn update(
        &self,
        gtrid: &[u8],
        state: Option<TxState>,
        advice: Option<Advice>,
    ) -> Result<Lsn, LogError> {
        validate_gtrid(gtrid)?;
        if state.is_none() && advice.is_none() {
            return Err(EntryError::EmptyUpdate.into());
        }
        self.engine.submit(Op::Update {
            gtrid: gtrid.to_vec(),
            state,
            advice,
        })
    }

    /// Forgets a completed transaction, durably; fails with [`LogError::NotFound`] if
    /// the log does not hold `gtrid`.
    pub fn remove(&self, gtrid: &[u8]) -> Result<Lsn, LogError> {
        validate_gtrid(gtrid)?;
        self.engine.submit(Op::Remove {
            gtrid: gtrid.to_vec(),
        })
    }

    /// Forgets a completed transaction without waiting: the removal is written with
    /// the next flush (another change's, or [`TxLog::sync`]), so it costs no
    /// fdatasync of its own. Until then [`TxLog::get`] still returns the entry and a
    /// crash brings it back; use it only where that is harmless (recovery finishes a
    /// completed transaction again and finds nothing to do). Fails with
    /// [`LogError::NotFound`] if the log does not hold `gtrid`.
    pub fn remove_lazy(&self, gtrid: &[u8]) -> Result<Lsn, LogError> {
        validate_gtrid(gtrid)?;
        self.engine.submit_lazy(Op::Remove {
            gtrid: gtrid.to_vec(),
        })
    }

    /// Makes every change made so far durable, lazy removals included.
    pub fn sync(&self) -> Result<(), LogError> {
        self.engine.sync()
    }

    /// Whether `gtrid` is in the log counting changes not yet durable (false right
    /// after [`TxLog::remove_lazy`]).
    pub fn holds(&self, gtrid: &[u8]) -> bool {
        self.engine.present_pending(gtrid)
    }

    /// The durable entry for `gtrid`.
    pub fn get(&self, gtrid: &[u8]) -> Option<Entry> {
        self.engine.read_index().get(gtrid).cloned()
    }

    /// Whether the log durably holds `gtrid`.
    pub fn contains(&self, gtrid: &[u8]) -> bool {
        self.engine.read_index().contains_key(gtrid)
    }

    /// A copy of every durable entry, in gtrid order.
    pub fn iter(&self) -> std::vec::IntoIter<Entry> {
        let v: Vec<Entry> = self.engine.read_index().values().cloned().collect();
        v.into_iter()
    }

    /// The durable entries in `state` (e.g. every PREPARE entry), in gtrid order.
    pub fn in_state(&self, state: TxState) -> Vec<Entry> {
        self.engine
            .read_index()
            .values()
            .filter(|e| e.state == state)
            .cloned()
            .collect()
    }

    /// Number of durable entries.
    pub fn len(&self) -> usize {
        self.engine.read_index().len()
    }

    /// Whether the log holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The lsn of the last durable record.
    pub fn durable_lsn(&self) -> Lsn {
        self.engine.durable_lsn()
    }

    /// Whether an I/O failure poisoned the log (changes fail; reopen it).
    pub fn is_poisoned(&self) -> bool {
        self.engine.poisoned().is_some()
    }

    /// Counters since open.
    pub fn stats(&self) -> LogStats {
        self.engine.stats()
    }

    /// The options the log was opened with.
    pub fn options(&self) -> &Options {
        &self.engine.options
    }

    /// The storage (for tests that inspect it).
    pub fn storage(&self) -> &S {
        &self.engine.storage
    }
}

impl<S: Storage> std::fmt::Debug for TxLog<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxLog")
            .field("dir", &self.engine.storage.path_of(""))
            .field("durable_lsn", &self.durable_lsn())
            .field("entries", &self.len())
            .finish()
    }
}
