//! One site of spec 03: the memory-resident store, its branches, its operation log,
//! its checkpoints (Algorithm 2) and its recovery (restart, and Algorithms 3 and 4).
//!
//! Owns the committed tables (in memory), the branches' private write sets (deferred
//! update: nothing of a branch touches the tables before its commit), their locks,
//! and the site's files. It must not decide a transaction's outcome (the transaction
//! manager does) and never answers a prepare or a commit before the log records it
//! relies on are durable.
//!
//! Durability order:
//! * prepare: the branch's operations (status undecided) are fsynced, then the vote
//!   (with the site's checkpoint number) is returned;
//! * commit: the decision (with the GCPN) is fsynced, then the write set is applied to
//!   the tables, the locks released and the answer returned;
//! * rollback: the abort record is appended without waiting (presumed abort: losing
//!   it leaves a prepared branch that recovery rolls back again);
//! * checkpoint N: `ccp.N` is written to a temporary file, fsynced, renamed and the
//!   directory fsynced; only then are `ccp.N-2` and the log generations before N
//!   removed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::checkpoint::{ccp_name, checkpoints, Checkpoint, Tables};
use crate::error::RmError;
use crate::locks::{Held, Locks, Mode, TableMode};
use crate::oplog::{generations, log_name, read_log, OpLog};
use crate::record::{LogEntry, Merger, Op, OpImage, Record, Status, NO_ORIGIN};

/// Longest table name, in bytes.
pub const TABLE_BYTES_MAX: usize = 64;
/// Longest key, in bytes.
pub const KEY_BYTES_MAX: usize = 1024;
/// Largest value, in bytes.
pub const VALUE_BYTES_MAX: usize = 1 << 20;

/// Rows of a scan: (key, value), in key order.
pub type Rows = Vec<(Vec<u8>, Vec<u8>)>;

/// Most bytes one branch's operations may take: they are logged as one frame at
/// prepare, which must stay under the frame limit.
pub const BRANCH_BYTES_MAX: usize = crate::codec::FRAME_BYTES_MAX - (64 << 10);

/// Branch ids of writes made outside any transaction start with this.
pub const LOCAL_PREFIX: &str = "~local";

/// How a site is set up.
#[derive(Debug, Clone)]
pub struct SiteConfig {
    /// The site's id (the server group's index).
    pub site: u16,
    /// The site's name (the group's name), for messages.
    pub name: String,
    /// Where its log and checkpoints live.
    pub dir: PathBuf,
    /// delta: how often a checkpoint is taken.
    pub checkpoint_interval: Duration,
    /// Longest a lock request waits.
    pub lock_timeout: Duration,
    /// fsync (false only in simulations).
    pub sync: bool,
}

/// Where a branch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BranchState {
    Active,
    /// Its operations are being made durable (claimed by `prepare`).
    Preparing,
    Prepared,
    /// Its commit decision is being made durable (claimed by `commit`).
    Committing,
}

struct Branch {
    state: BranchState,
    /// The checkpoint number of its yes vote (0 before prepare).
    vote: u64,
    /// Bytes its operations take in the log (bounded by [`BRANCH_BYTES_MAX`]).
    bytes: usize,
    /// Deferred writes: `None` deletes.
    writes: BTreeMap<(String, Vec<u8>), Option<Vec<u8>>>,
    held: Held,
    doom: Option<String>,
}

impl Branch {
    fn new() -> Branch {
        Branch {
            state: BranchState::Active,
            vote: 0,
            bytes: 0,
            writes: BTreeMap::new(),
            held: Held::default(),
            doom: None,
        }
    }
}

/// Sends redo requests to other sites (Algorithms 3 and 4); the node's router in the
/// daemon, a message queue in simulations.
pub trait Links: Send + Sync {
    /// Delivers `redo(from, n)` to site `to`, asynchronously.
    fn send_redo(&self, from: u16, to: u16, n: u64);
}

/// One event of a rollback-recovery, kept for tests and `tpmon rm inspect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedoEvent {
    /// This site sent redo(n) to `to`.
    Sent {
        /// Checkpoint number.
        n: u64,
        /// Target site.
        to: u16,
    },
    /// This site acted on redo(n) from `from`, restoring checkpoint `restored`.
    Acted {
        /// Checkpoint number.
        n: u64,
        /// Requesting site.
        from: u16,
        /// Checkpoint restored.
        restored: u64,
    },
    /// This site ignored a second redo(n) from `from`.
    Ignored {
        /// Checkpoint number.
        n: u64,
        /// Requesting site.
        from: u16,
    },
}

#[derive(Default)]
struct RedoState {
    /// Site_id_list (and REDO_x(n)) per checkpoint number.
    lists: HashMap<u64, HashSet<u16>>,
    events: Vec<RedoEvent>,
}

/// Counters, for tests, `inspect` and benchmarks.
#[derive(Debug, Default)]
pub struct SiteStats {
    /// Branches begun.
    pub begins: AtomicU64,
    /// Data requests (get, put, insert, delete, scan) received, inside or outside
    /// branches.
    pub operations: AtomicU64,
    /// Rollback-recoveries run (Algorithm 3 here, or Algorithm 4 on a redo request).
    pub rollback_recoveries: AtomicU64,
    /// Prepare requests answered (each is one 2PC message in and one out).
    pub prepares: AtomicU64,
    /// Commit decisions received.
    pub commits: AtomicU64,
    /// Rollback decisions received.
    pub rollbacks: AtomicU64,
    /// Checkpoints taken.
    pub checkpoints: AtomicU64,
    /// Messages the checkpointer sent to anyone (always 0: Table 1 of the paper).
    pub checkpoint_messages: AtomicU64,
    /// Commit records whose GCPN was older than the checkpoint they landed after (the
    /// paper's bounded-delay assumption broken, e.g. by a long in-doubt period).
    pub late_records: AtomicU64,
    /// Audits that found the memory state corrupt.
    pub corruptions: AtomicU64,
}

struct Data {
    tables: Tables,
    digest: u64,
    /// Bumped by every change, so that an audit done in pieces knows whether the
    /// tables moved under it.
    generation: u64,
}

/// Rows an audit checks per hold of the tables' read lock.
pub const AUDIT_CHUNK: usize = 4096;

fn row_hash(table: &str, key: &[u8], value: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    table.hash(&mut h);
    key.hash(&mut h);
    value.hash(&mut h);
    h.finish()
}

fn digest_of(tables: &Tables) -> u64 {
    let mut d = 0u64;
    for (t, kv) in tables {
        for (k, v) in kv {
            d ^= row_hash(t, k, v);
        }
    }
    d
}

fn apply_row(data: &mut Data, table: &str, key: &[u8], value: Option<&[u8]>) {
    data.generation += 1;
    let t = data.tables.entry(table.to_string()).or_default();
    if let Some(old) = t.get(key) {
        data.digest ^= row_hash(table, key, old);
    }
    match value {
        Some(v) => {
            data.digest ^= row_hash(table, key, v);
            t.insert(key.to_vec(), v.to_vec());
        }
        None => {
            t.remove(key);
        }
    }
}

fn apply_record(tables: &mut Tables, r: &Record) {
    let t = tables.entry(r.table.clone()).or_default();
    match r.op {
        Op::Put => {
            t.insert(r.key.clone(), r.after.clone());
        }
        Op::Delete => {
            t.remove(&r.key);
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One embedded site.
pub struct Site {
    cfg: SiteConfig,
    data: RwLock<Data>,
    branches: Mutex<HashMap<String, Branch>>,
    locks: Locks,
    log: OpLog,
    /// LCPN: the site's local checkpoint number.
    lcpn: AtomicU64,
    /// The number of the newest checkpoint on disk.
    ccp: AtomicU64,
    /// Highest GCPN committed here: later votes are at least this, so that a
    /// transaction serialised after another never lands in an earlier checkpoint.
    max_gcpn: AtomicU64,
    /// Serialises checkpoints and restores.
    ckpt: Mutex<()>,
    /// Commits hold it shared from their decision record to their apply; a
    /// rollback-recovery holds it exclusive from reading the log to installing the
    /// restored state, so no commit falls between the two.
    gate: RwLock<()>,
    redo: Mutex<RedoState>,
    links: RwLock<Option<Arc<dyn Links>>>,
    local_seq: AtomicU64,
    /// The first LSN of this boot (makes local branch ids unique across restarts).
    boot_lsn: u64,
    wake: (Mutex<bool>, Condvar),
    stopping: AtomicBool,
    /// Counters.
    pub stats: SiteStats,
    /// The directory's lock (released when the site is dropped or the process dies).
    _lock: std::fs::File,
}

/// Takes the exclusive lock of the site directory: two sites (or two daemons) on one
/// directory would corrupt each other's files.
fn lock_dir(dir: &Path) -> Result<std::fs::File, RmError> {
    use std::os::fd::AsRawFd;
    let path = dir.join("LOCK");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| RmError::io(&path, "cannot open the lock file", e))?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r != 0 {
        return Err(RmError::Io {
            path,
            what: "the site directory is in use by another site or process",
            error: std::io::Error::last_os_error().to_string(),
        });
    }
    Ok(f)
}

/// What restart recovery found.
#[derive(Debug, Default, Clone)]
pub struct RestartReport {
    /// The checkpoint restored.
    pub checkpoint: u64,
    /// Committed records redone.
    pub redone: usize,
    /// Prepared branches re-established (in doubt until the TM decides).
    pub in_doubt: usize,
    /// Torn tails cut (file, offset, what).
    pub torn: Vec<(PathBuf, u64, String)>,
    /// How long it took.
    pub elapsed: Duration,
}

impl Site {
    /// Opens the site in `cfg.dir` (creating it on first use) and recovers it: the
    /// newest checkpoint, then every committed record after it redone; prepared
    /// branches are re-established with their locks, for the transaction manager's
    /// recovery to resolve. A checkpoint that was interrupted is finished.
    pub fn open(cfg: SiteConfig) -> Result<(Arc<Site>, RestartReport), RmError> {
        let started = Instant::now();
        std::fs::create_dir_all(&cfg.dir)
            .map_err(|e| RmError::io(&cfg.dir, "cannot create the site directory", e))?;
        crate::oplog::sync_path(&cfg.dir)?;
        let lock = lock_dir(&cfg.dir)?;
        // Leftovers of an interrupted checkpoint write.
        if let Ok(rd) = std::fs::read_dir(&cfg.dir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().ends_with(".tmp") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let mut ccps = checkpoints(&cfg.dir)?;
        let gens = generations(&cfg.dir)?;
        if ccps.is_empty() {
            if !gens.is_empty() {
                return Err(RmError::Corrupt {
                    path: cfg.dir.join(log_name(gens[0])),
                    offset: 0,
                    what: "operation log files but no checkpoint: the site's files are incomplete"
                        .into(),
                });
            }
            let first = Checkpoint {
                site: cfg.site,
                n: 0,
                next_lsn: 1,
                created_ms: now_ms(),
                ..Checkpoint::default()
            };
            first.write(&cfg.dir, cfg.sync)?;
            ccps.push(0);
        }
        let n = *ccps.last().unwrap_or(&0);
        let ccp = Checkpoint::read(&cfg.dir.join(ccp_name(n)))?;
        let mut report = RestartReport {
            checkpoint: n,
            ..RestartReport::default()
        };
        let (records, next_lsn, torn) = records_after(&cfg.dir, &ccp, n, true)?;
        report.torn = torn;
        let mut tables = ccp.image.clone();
        let mut prepared: BTreeMap<String, Vec<Record>> = BTreeMap::new();
        let mut max_gcpn = n;
        for r in &records {
            match r.status {
                Status::Commit => {
                    apply_record(&mut tables, r);
                    max_gcpn = max_gcpn.max(r.gcpn);
                    report.redone += 1;
                }
                Status::Undecided => prepared.entry(r.tid.clone()).or_default().push(r.clone()),
                Status::Abort => {}
            }
        }
        // An empty generation after n was created ahead of time by checkpoint n (or
        // started with nothing durable in it): checkpoint n+1 did not begin.
        let top_gen = gens
            .iter()
            .copied()
            .filter(|g| {
                *g == n
                    || (*g > n
                        && std::fs::metadata(cfg.dir.join(log_name(*g))).is_ok_and(|m| m.len() > 0))
            })
            .max()
            .unwrap_or(n);
        let lcpn = top_gen.max(n);
        // Files a crash left behind: checkpoints before the previous one, generations
        // the newest checkpoint covers.
        for c in &ccps {
            if c + 1 < n {
                let _ = std::fs::remove_file(cfg.dir.join(ccp_name(*c)));
            }
        }
        for g in &gens {
            if *g < n {
                let _ = std::fs::remove_file(cfg.dir.join(log_name(*g)));
            }
        }
        let log = OpLog::open(&cfg.dir, lcpn, next_lsn.max(ccp.next_lsn), cfg.sync)?;
        let digest = digest_of(&tables);
        let site = Arc::new(Site {
            data: RwLock::new(Data {
                tables,
                digest,
                generation: 0,
            }),
            branches: Mutex::new(HashMap::new()),
            locks: Locks::new(),
            log,
            lcpn: AtomicU64::new(lcpn),
            ccp: AtomicU64::new(n),
            max_gcpn: AtomicU64::new(max_gcpn),
            ckpt: Mutex::new(()),
            gate: RwLock::new(()),
            redo: Mutex::new(RedoState::default()),
            links: RwLock::new(None),
            local_seq: AtomicU64::new(0),
            boot_lsn: next_lsn.max(ccp.next_lsn),
            wake: (Mutex::new(false), Condvar::new()),
            stopping: AtomicBool::new(false),
            stats: SiteStats::default(),
            _lock: lock,
            cfg,
        });
        {
            let mut bs = site.lock_branches();
            for (tid, recs) in prepared {
                if tid.starts_with(LOCAL_PREFIX) {
                    // A write outside any transaction that crashed between its
                    // prepare and its commit: it never returned success, so it is
                    // rolled back (no transaction manager knows it).
                    let t = tid.clone();
                    site.log.append(move |lsn| {
                        (
                            LogEntry::Decision {
                                lsn,
                                tid: t,
                                commit: false,
                                gcpn: 0,
                                origin: NO_ORIGIN,
                            },
                            1,
                        )
                    })?;
                    continue;
                }
                let mut b = Branch::new();
                b.state = BranchState::Prepared;
                for r in recs {
                    b.vote = b.vote.max(r.vote);
                    // Two branches in doubt never hold the same key (2PL); if the
                    // files say otherwise, the restart goes on and says so.
                    let locked = site
                        .locks
                        .lock_table(
                            &tid,
                            &mut b.held,
                            &r.table,
                            TableMode::IntentExclusive,
                            Duration::ZERO,
                        )
                        .and_then(|_| {
                            site.locks.lock_key(
                                &tid,
                                &mut b.held,
                                &r.table,
                                &r.key,
                                Mode::Exclusive,
                                Duration::ZERO,
                            )
                        });
                    if let Err(e) = locked {
                        tracing::warn!(site = site.cfg.site, tid, error = %e, "two branches in doubt hold the same row; both are kept");
                    }
                    let v = match r.op {
                        Op::Put => Some(r.after),
                        Op::Delete => None,
                    };
                    b.writes.insert((r.table, r.key), v);
                }
                bs.insert(tid, b);
                report.in_doubt += 1;
            }
        }
        site.log.flush()?;
        if lcpn > n {
            // A checkpoint was started (the log moved on) but not written: finish it.
            site.checkpoint_now()?;
        }
        report.elapsed = started.elapsed();
        Ok((site, report))
    }

    /// The site's id.
    pub fn id(&self) -> u16 {
        self.cfg.site
    }

    /// The site's configuration.
    pub fn config(&self) -> &SiteConfig {
        &self.cfg
    }

    /// LCPN.
    pub fn lcpn(&self) -> u64 {
        self.lcpn.load(Ordering::Acquire)
    }

    /// The number of the newest checkpoint on disk (equal to LCPN except while a
    /// checkpoint is being made, when LCPN is one more).
    pub fn checkpoint_number(&self) -> u64 {
        self.ccp.load(Ordering::Acquire)
    }

    /// Sets how redo requests reach other sites.
    pub fn set_links(&self, links: Arc<dyn Links>) {
        *self.links.write().unwrap_or_else(|p| p.into_inner()) = Some(links);
    }

    fn lock_branches(&self) -> MutexGuard<'_, HashMap<String, Branch>> {
        self.branches.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check_names(&self, table: &str, key: &[u8]) -> Result<(), RmError> {
        if table.is_empty() || table.len() > TABLE_BYTES_MAX {
            return Err(RmError::Invalid(format!(
                "a table name has 1 to {TABLE_BYTES_MAX} bytes (got {})",
                table.len()
            )));
        }
        if key.len() > KEY_BYTES_MAX {
            return Err(RmError::Invalid(format!(
                "a key has at most {KEY_BYTES_MAX} bytes (got {})",
                key.len()
            )));
        }
        Ok(())
    }

    /// Starts branch `xid`.
    pub fn begin(&self, xid: &str) -> Result<(), RmError> {
        self.stats.begins.fetch_add(1, Ordering::Relaxed);
        if xid.is_empty() || xid.len() > 160 {
            return Err(RmError::Invalid("bad branch id".into()));
        }
        let mut bs = self.lock_branches();
        if bs.contains_key(xid) {
            return Err(RmError::Protocol(format!("branch {xid} exists already")));
        }
        bs.insert(xid.to_string(), Branch::new());
        Ok(())
    }

    /// Takes the branch's lock set out (locks are waited for without holding the
    /// branch table), runs `f`, and puts it back.
    fn with_locks<T>(
        &self,
        xid: &str,
        f: impl FnOnce(&mut Held) -> Result<T, RmError>,
    ) -> Result<T, RmError> {
        let mut held = {
            let mut bs = self.lock_branches();
            let b = bs
                .get_mut(xid)
                .ok_or_else(|| RmError::UnknownBranch(xid.to_string()))?;
            if b.state != BranchState::Active {
                return Err(RmError::Protocol(format!("branch {xid} is prepared")));
            }
            if let Some(d) = &b.doom {
                return Err(RmError::Doomed(d.clone()));
            }
            std::mem::take(&mut b.held)
        };
        let r = f(&mut held);
        let mut bs = self.lock_branches();
        match bs.get_mut(xid) {
            Some(b) => {
                // Merge: the branch may have been doomed meanwhile, never ended (only
                // its own session ends it).
                let mut old = std::mem::take(&mut b.held);
                merge_held(&mut old, held);
                b.held = old;
            }
            None => {
                drop(bs);
                self.locks.release(xid, held);
            }
        }
        r
    }

    fn doom_on_error<T>(&self, xid: &str, r: Result<T, RmError>) -> Result<T, RmError> {
        if let Err(e) = &r {
            if matches!(e, RmError::LockTimeout { .. }) {
                if let Some(b) = self.lock_branches().get_mut(xid) {
                    b.doom.get_or_insert_with(|| e.to_string());
                }
            }
        }
        r
    }

    /// Reads `table/key`: inside branch `xid` under a shared lock (seeing its own
    /// writes), or outside any branch the last committed value, without locking.
    pub fn get(
        &self,
        xid: Option<&str>,
        table: &str,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, RmError> {
        self.check_names(table, key)?;
        let Some(xid) = xid else {
            return Ok(self.committed(table, key));
        };
        let r = self.with_locks(xid, |held| {
            self.locks
                .lock_key(xid, held, table, key, Mode::Shared, self.cfg.lock_timeout)
        });
        self.doom_on_error(xid, r)?;
        if let Some(b) = self.lock_branches().get(xid) {
            if let Some(w) = b.writes.get(&(table.to_string(), key.to_vec())) {
                return Ok(w.clone());
            }
        }
        Ok(self.committed(table, key))
    }

    /// Reads `table/key` inside branch `xid` under an exclusive lock, for a value the
    /// branch is about to change (a shared lock that is upgraded later deadlocks with
    /// any other branch doing the same).
    pub fn get_for_update(
        &self,
        xid: &str,
        table: &str,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, RmError> {
        self.check_names(table, key)?;
        self.write_locked(xid, table, key)?;
        Ok(self.current(xid, table, key))
    }

    fn committed(&self, table: &str, key: &[u8]) -> Option<Vec<u8>> {
        let d = self.data.read().unwrap_or_else(|p| p.into_inner());
        d.tables.get(table).and_then(|t| t.get(key)).cloned()
    }

    fn write_locked(&self, xid: &str, table: &str, key: &[u8]) -> Result<(), RmError> {
        let r = self.with_locks(xid, |held| {
            self.locks.lock_table(
                xid,
                held,
                table,
                TableMode::IntentExclusive,
                self.cfg.lock_timeout,
            )?;
            self.locks.lock_key(
                xid,
                held,
                table,
                key,
                Mode::Exclusive,
                self.cfg.lock_timeout,
            )
        });
        self.doom_on_error(xid, r)
    }

    fn current(&self, xid: &str, table: &str, key: &[u8]) -> Option<Vec<u8>> {
        if let Some(b) = self.lock_branches().get(xid) {
            if let Some(w) = b.writes.get(&(table.to_string(), key.to_vec())) {
                return w.clone();
            }
        }
        self.committed(table, key)
    }

    fn record_write(
        &self,
        xid: &str,
        table: &str,
        key: &[u8],
        value: Option<Vec<u8>>,
    ) -> Result<(), RmError> {
        let mut bs = self.lock_branches();
        let b = bs
            .get_mut(xid)
            .ok_or_else(|| RmError::UnknownBranch(xid.to_string()))?;
        if b.state != BranchState::Active {
            return Err(RmError::Protocol(format!(
                "branch {xid} is not active; no more writes"
            )));
        }
        if let Some(d) = &b.doom {
            return Err(RmError::Doomed(d.clone()));
        }
        let cost = table.len() + key.len() + value.as_ref().map_or(0, Vec::len) + 16;
        if b.bytes + cost > BRANCH_BYTES_MAX {
            let why = format!(
                "the branch's writes would take more than {BRANCH_BYTES_MAX} bytes in the log; split the work into several transactions"
            );
            b.doom.get_or_insert_with(|| why.clone());
            return Err(RmError::Invalid(why));
        }
        b.bytes += cost;
        b.writes.insert((table.to_string(), key.to_vec()), value);
        Ok(())
    }

    /// Runs one write outside any branch as its own local transaction.
    fn autocommit<T>(&self, f: impl FnOnce(&str) -> Result<T, RmError>) -> Result<T, RmError> {
        // Unique across restarts: the boot's first LSN, then a counter.
        let xid = format!(
            "{LOCAL_PREFIX}{}:{}:{}",
            self.cfg.site,
            self.boot_lsn,
            self.local_seq.fetch_add(1, Ordering::Relaxed)
        );
        self.begin(&xid)?;
        match f(&xid) {
            Ok(v) => {
                self.commit_one_phase(&xid)?;
                Ok(v)
            }
            Err(e) => {
                let _ = self.rollback(&xid);
                Err(e)
            }
        }
    }

    /// Sets `table/key` to `value` (insert or update).
    pub fn put(
        &self,
        xid: Option<&str>,
        table: &str,
        key: &[u8],
        value: &[u8],
    ) -> Result<(), RmError> {
        self.check_names(table, key)?;
        if value.len() > VALUE_BYTES_MAX {
            return Err(RmError::Invalid(format!(
                "a value has at most {VALUE_BYTES_MAX} bytes"
            )));
        }
        let Some(xid) = xid else {
            return self.autocommit(|x| self.put(Some(x), table, key, value));
        };
        self.write_locked(xid, table, key)?;
        self.record_write(xid, table, key, Some(value.to_vec()))
    }

    /// Inserts `table/key`; [`RmError::Duplicate`] when it exists.
    pub fn insert(
        &self,
        xid: Option<&str>,
        table: &str,
        key: &[u8],
        value: &[u8],
    ) -> Result<(), RmError> {
        self.check_names(table, key)?;
        if value.len() > VALUE_BYTES_MAX {
            return Err(RmError::Invalid(format!(
                "a value has at most {VALUE_BYTES_MAX} bytes"
            )));
        }
        let Some(xid) = xid else {
            return self.autocommit(|x| self.insert(Some(x), table, key, value));
        };
        self.write_locked(xid, table, key)?;
        if self.current(xid, table, key).is_some() {
            return Err(RmError::Duplicate {
                table: table.to_string(),
                key: crate::error::show_key(key),
            });
        }
        self.record_write(xid, table, key, Some(value.to_vec()))
    }

    /// Deletes `table/key`; false when it did not exist.
    pub fn delete(&self, xid: Option<&str>, table: &str, key: &[u8]) -> Result<bool, RmError> {
        self.check_names(table, key)?;
        let Some(xid) = xid else {
            return self.autocommit(|x| self.delete(Some(x), table, key));
        };
        self.write_locked(xid, table, key)?;
        if self.current(xid, table, key).is_none() {
            return Ok(false);
        }
        self.record_write(xid, table, key, None)?;
        Ok(true)
    }

    /// The rows of `table` with `from <= key < to` (no upper bound when `to` is
    /// `None`), at most `limit`, in key order. Inside a branch the table is locked
    /// shared (no writer can add a row to the range until the branch ends) and the
    /// branch's own writes are seen.
    pub fn scan(
        &self,
        xid: Option<&str>,
        table: &str,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Rows, RmError> {
        self.check_names(table, from)?;
        let in_range = |k: &[u8]| k >= from && to.is_none_or(|t| k < t);
        // The branch's own writes in the range (few), merged in key order with the
        // committed rows, which are read only as far as the limit needs.
        let mut own: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        if let Some(xid) = xid {
            let r = self.with_locks(xid, |held| {
                self.locks
                    .lock_table(xid, held, table, TableMode::Shared, self.cfg.lock_timeout)
            });
            self.doom_on_error(xid, r)?;
            if let Some(b) = self.lock_branches().get(xid) {
                for ((t, k), v) in &b.writes {
                    if t == table && in_range(k) {
                        own.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        let mut out: Rows = Vec::new();
        if limit == 0 || to.is_some_and(|t| t <= from) {
            // An empty range (BTreeMap::range would panic on an inverted one).
            return Ok(out);
        }
        let mut own = own.into_iter().peekable();
        let mut bytes = 0usize;
        let d = self.data.read().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = d.tables.get(table) {
            let upper = match to {
                Some(t) => std::ops::Bound::Excluded(t.to_vec()),
                None => std::ops::Bound::Unbounded,
            };
            for (k, v) in t.range((std::ops::Bound::Included(from.to_vec()), upper)) {
                // The branch's writes of keys before this one come first.
                while let Some((ok, _)) = own.peek() {
                    if ok >= k {
                        break;
                    }
                    if let Some((ok, Some(ov))) = own.next() {
                        out.push((ok, ov));
                        if out.len() >= limit {
                            return Self::bounded(out);
                        }
                    }
                }
                match own.peek() {
                    Some((ok, _)) if ok == k => {
                        if let Some((ok, Some(ov))) = own.next() {
                            out.push((ok, ov));
                        }
                    }
                    _ => {
                        bytes += k.len() + v.len() + 8;
                        if bytes > BRANCH_BYTES_MAX {
                            // Stop copying now (commits wait for this read lock).
                            return Self::bounded(
                                out.into_iter()
                                    .chain(std::iter::once((k.clone(), v.clone())))
                                    .collect(),
                            );
                        }
                        out.push((k.clone(), v.clone()));
                    }
                }
                if out.len() >= limit {
                    return Self::bounded(out);
                }
            }
        }
        for (ok, ov) in own {
            if let Some(ov) = ov {
                out.push((ok, ov));
                if out.len() >= limit {
                    break;
                }
            }
        }
        Self::bounded(out)
    }

    /// Refuses a scan answer that could not travel in one frame.
    fn bounded(rows: Rows) -> Result<Rows, RmError> {
        let bytes: usize = rows.iter().map(|(k, v)| k.len() + v.len() + 8).sum();
        if bytes > BRANCH_BYTES_MAX {
            return Err(RmError::Invalid(format!(
                "the scan's rows take more than {BRANCH_BYTES_MAX} bytes; scan a smaller range or with a lower limit"
            )));
        }
        Ok(rows)
    }

    /// The vote's checkpoint number: LCPN+1 (Algorithm 1), raised to the highest
    /// GCPN committed here so that a transaction that follows another at this site
    /// never gets an earlier checkpoint.
    fn vote_cpn(&self) -> u64 {
        (self.lcpn() + 1).max(self.max_gcpn.load(Ordering::Acquire))
    }

    /// Prepares branch `xid`: its operations are made durable with status undecided.
    /// Returns `(true, cpn)` for a yes vote carrying the checkpoint number, `(false,
    /// 0)` for a read-only branch (already ended: nothing to commit).
    pub fn prepare(&self, xid: &str) -> Result<(bool, u64), RmError> {
        self.stats.prepares.fetch_add(1, Ordering::Relaxed);
        // The vote's number is taken before the branch is claimed, so that it is
        // never below a GCPN committed before this prepare began.
        let cpn = self.vote_cpn();
        let ops: Vec<OpImage> = {
            let mut bs = self.lock_branches();
            let b = bs
                .get_mut(xid)
                .ok_or_else(|| RmError::UnknownBranch(xid.to_string()))?;
            if b.state != BranchState::Active {
                return Err(RmError::Protocol(format!(
                    "branch {xid} is not active (it is {:?})",
                    b.state
                )));
            }
            if let Some(d) = b.doom.clone() {
                let b = bs.remove(xid);
                drop(bs);
                if let Some(b) = b {
                    self.locks.release(xid, b.held);
                }
                return Err(RmError::Doomed(d));
            }
            if b.writes.is_empty() {
                let b = bs.remove(xid);
                drop(bs);
                if let Some(b) = b {
                    self.locks.release(xid, b.held);
                }
                return Ok((false, 0));
            }
            // Claimed: no write, rollback or second prepare gets in until the
            // operations are durable.
            b.state = BranchState::Preparing;
            b.vote = cpn;
            b.writes
                .iter()
                .map(|((t, k), v)| OpImage {
                    table: t.clone(),
                    key: k.clone(),
                    op: if v.is_some() { Op::Put } else { Op::Delete },
                    after: v.clone().unwrap_or_default(),
                })
                .collect()
        };
        let n = ops.len() as u64;
        let tid = xid.to_string();
        let seq = self.log.append(move |lsn| {
            (
                LogEntry::Ops {
                    first_lsn: lsn,
                    tid,
                    vote: cpn,
                    ops,
                },
                n,
            )
        });
        let synced = seq.and_then(|s| self.log.sync_to(s));
        let mut bs = self.lock_branches();
        if let Err(e) = synced {
            // Not durable (the log is poisoned from now on): the branch cannot be
            // prepared.
            if let Some(b) = bs.remove(xid) {
                drop(bs);
                self.locks.release(xid, b.held);
            }
            return Err(e);
        }
        if let Some(b) = bs.get_mut(xid) {
            b.state = BranchState::Prepared;
        }
        Ok((true, cpn))
    }

    fn commit_one_phase(&self, xid: &str) -> Result<(), RmError> {
        match self.prepare(xid)? {
            (false, _) => Ok(()),
            (true, cpn) => self.commit(xid, cpn, self.cfg.site),
        }
    }

    /// Commits branch `xid` with the transaction's GCPN and originating site: the
    /// decision is made durable, then applied. An active branch is committed in one
    /// phase (prepared first). Unknown: [`RmError::UnknownBranch`].
    ///
    /// The GCPN used is never below this site's own vote (Algorithm 1 makes the GCPN
    /// the largest vote, so an honest decision is unchanged) and never more than two
    /// above it (Theorem 2's bound); a decision outside that range is corrected and
    /// logged, so that no caller can place a transaction before work it followed, or
    /// push the site's numbers out of range.
    pub fn commit(&self, xid: &str, gcpn: u64, origin: u16) -> Result<(), RmError> {
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        let claimed = {
            let mut bs = self.lock_branches();
            match bs.get_mut(xid) {
                None => return Err(RmError::UnknownBranch(xid.to_string())),
                Some(b) if b.state == BranchState::Prepared => {
                    b.state = BranchState::Committing;
                    Some(b.vote)
                }
                Some(b) if b.state == BranchState::Active => None,
                Some(b) => {
                    return Err(RmError::Protocol(format!(
                        "branch {xid} is {:?}; it cannot be committed now",
                        b.state
                    )))
                }
            }
        };
        let Some(vote) = claimed else {
            return match self.prepare(xid)? {
                (false, _) => Ok(()),
                (true, cpn) => self.commit(xid, gcpn.max(cpn), origin),
            };
        };
        let bounded = gcpn.clamp(vote, vote.saturating_add(2));
        if bounded != gcpn {
            tracing::warn!(
                site = self.cfg.site,
                xid,
                gcpn,
                vote,
                used = bounded,
                "a commit decision's GCPN is outside what this site's vote allows; corrected"
            );
        }
        let gcpn = bounded;
        let _gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
        let tid = xid.to_string();
        let logged = self
            .log
            .append(move |lsn| {
                (
                    LogEntry::Decision {
                        lsn,
                        tid,
                        commit: true,
                        gcpn,
                        origin,
                    },
                    1,
                )
            })
            .and_then(|seq| self.log.sync_to(seq));
        if let Err(e) = logged {
            // Not durable: the branch stays prepared (the log refuses everything
            // from now on; the restart finishes it through the TM's recovery).
            if let Some(b) = self.lock_branches().get_mut(xid) {
                b.state = BranchState::Prepared;
            }
            return Err(e);
        }
        let Some(b) = self.lock_branches().remove(xid) else {
            return Err(RmError::Protocol(format!(
                "branch {xid} vanished while it was being committed"
            )));
        };
        {
            let mut d = self.data.write().unwrap_or_else(|p| p.into_inner());
            for ((t, k), v) in &b.writes {
                apply_row(&mut d, t, k, v.as_deref());
            }
        }
        self.max_gcpn.fetch_max(gcpn, Ordering::AcqRel);
        self.locks.release(xid, b.held);
        if gcpn > self.lcpn().saturating_add(2) {
            // Another site is ahead: catch up now rather than at the next tick.
            self.wake_checkpointer();
        }
        Ok(())
    }

    /// Rolls branch `xid` back (active or prepared). A branch that is being prepared
    /// or committed right now cannot be: [`RmError::Protocol`] (the caller retries;
    /// the transaction manager's recovery does).
    pub fn rollback(&self, xid: &str) -> Result<(), RmError> {
        self.stats.rollbacks.fetch_add(1, Ordering::Relaxed);
        let b = {
            let mut bs = self.lock_branches();
            match bs.get(xid).map(|b| b.state) {
                None => return Err(RmError::UnknownBranch(xid.to_string())),
                Some(BranchState::Preparing | BranchState::Committing) => {
                    return Err(RmError::Protocol(format!(
                        "branch {xid} is being prepared or committed; roll it back later"
                    )))
                }
                Some(_) => bs.remove(xid),
            }
        };
        let Some(b) = b else {
            return Err(RmError::UnknownBranch(xid.to_string()));
        };
        if b.state == BranchState::Prepared {
            let tid = xid.to_string();
            // Not waited for: a lost abort record leaves a prepared branch that the
            // transaction manager's recovery rolls back again (presumed abort).
            let _ = self.log.append(move |lsn| {
                (
                    LogEntry::Decision {
                        lsn,
                        tid,
                        commit: false,
                        gcpn: 0,
                        origin: NO_ORIGIN,
                    },
                    1,
                )
            });
        }
        self.locks.release(xid, b.held);
        Ok(())
    }

    /// XA forget: the site never completes a branch heuristically, so there is never
    /// anything to forget; an unknown branch is [`RmError::UnknownBranch`] (XAER_NOTA),
    /// a known one [`RmError::Protocol`] (XAER_PROTO).
    pub fn forget(&self, xid: &str) -> Result<(), RmError> {
        if self.lock_branches().contains_key(xid) {
            return Err(RmError::Protocol(format!(
                "branch {xid} was not completed heuristically; nothing to forget"
            )));
        }
        Err(RmError::UnknownBranch(xid.to_string()))
    }

    /// Rolls back branch `xid` if it is still active (its session broke before it
    /// prepared); a prepared branch is left to the transaction manager.
    pub fn abandon(&self, xid: &str) {
        let active = self
            .lock_branches()
            .get(xid)
            .is_some_and(|b| b.state == BranchState::Active);
        if active {
            let _ = self.rollback(xid);
        }
    }

    /// Writes every pending log entry (tests: the abort records that are not waited
    /// for).
    #[doc(hidden)]
    pub fn log_flush_for_test(&self) {
        let _ = self.log.flush();
    }

    /// The prepared branches whose id starts with `prefix`.
    pub fn recover(&self, prefix: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .lock_branches()
            .iter()
            .filter(|(x, b)| b.state == BranchState::Prepared && x.starts_with(prefix))
            .map(|(x, _)| x.clone())
            .collect();
        v.sort();
        v
    }

    /// Number of branches, active and prepared.
    pub fn branch_counts(&self) -> (usize, usize) {
        let bs = self.lock_branches();
        let prepared = bs
            .values()
            .filter(|b| b.state == BranchState::Prepared)
            .count();
        (bs.len() - prepared, prepared)
    }

    /// A copy of the committed tables (tests, TOTAL-style audits, inspection).
    pub fn snapshot(&self) -> Tables {
        self.data
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .tables
            .clone()
    }

    /// Checks the memory state against its running digest; false when corrupt.
    pub fn audit(&self) -> bool {
        loop {
            if let Some(ok) = self.audit_in_pieces() {
                return ok;
            }
        }
    }

    /// The audit as the checkpointer runs it: the rows are hashed [`AUDIT_CHUNK`] at
    /// a time, the read lock released in between so that commits are never held up
    /// for more than a chunk. `None` when a commit changed the tables meanwhile (the
    /// result would mean nothing; the next interval tries again).
    pub fn audit_in_pieces(&self) -> Option<bool> {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        let (gen0, want) = {
            let d = self.data.read().unwrap_or_else(|p| p.into_inner());
            (d.generation, d.digest)
        };
        let mut acc = 0u64;
        let mut cursor: Option<(String, Vec<u8>)> = None;
        loop {
            let d = self.data.read().unwrap_or_else(|p| p.into_inner());
            if d.generation != gen0 {
                return None;
            }
            let mut n = 0;
            let mut next = None;
            let tables = match &cursor {
                Some((t, _)) => d.tables.range::<String, _>((Included(t), Unbounded)),
                None => d.tables.range::<String, _>(..),
            };
            'tables: for (t, kv) in tables {
                let rows = match &cursor {
                    Some((ct, ck)) if ct == t => kv.range::<Vec<u8>, _>((Excluded(ck), Unbounded)),
                    _ => kv.range::<Vec<u8>, _>(..),
                };
                for (k, v) in rows {
                    acc ^= row_hash(t, k, v);
                    n += 1;
                    if n == AUDIT_CHUNK {
                        next = Some((t.clone(), k.clone()));
                        break 'tables;
                    }
                }
            }
            match next {
                Some(c) => cursor = Some(c),
                None => return Some(acc == want),
            }
        }
    }

    /// Fault injection: changes a committed value in memory behind the digest's back,
    /// as a stray write or a bit flip would.
    #[doc(hidden)]
    pub fn corrupt_for_test(&self, table: &str, key: &[u8], value: &[u8]) {
        let mut d = self.data.write().unwrap_or_else(|p| p.into_inner());
        d.tables
            .entry(table.to_string())
            .or_default()
            .insert(key.to_vec(), value.to_vec());
    }

    fn wake_checkpointer(&self) {
        let (m, cv) = &self.wake;
        *m.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_all();
    }

    /// Algorithm 2: takes checkpoint LCPN+1 (or finishes an interrupted one), without
    /// blocking running transactions: the log moves to a new generation, and the new
    /// checkpoint is built from the previous one and the old generations by this
    /// thread alone. Returns the new checkpoint number.
    pub fn checkpoint_now(&self) -> Result<u64, RmError> {
        let _g = self.ckpt.lock().unwrap_or_else(|p| p.into_inner());
        let n = self.ccp.load(Ordering::Acquire);
        let mut target = self.lcpn();
        if target == n {
            target = n + 1;
            // Step 1: LCPN := n+1. New operations and decisions go to the new
            // generation; the old ones are complete once `switch` returns.
            self.log.switch(target)?;
            self.lcpn.store(target, Ordering::Release);
        }
        let dir = &self.cfg.dir;
        let prev = Checkpoint::read(&dir.join(ccp_name(n)))?;
        let mut merger = Merger::new();
        for r in prev.carry.iter().cloned() {
            merger.add_record(r);
        }
        for g in generations(dir)?
            .into_iter()
            .filter(|g| *g >= n && *g < target)
        {
            let path = dir.join(log_name(g));
            let read = read_log(&path)?;
            if let Some((offset, what)) = read.torn {
                // A finished generation is whole (the switch waited for its last
                // write): a bad tail here is damage, and checkpointing past it would
                // drop records.
                return Err(RmError::Corrupt {
                    path,
                    offset,
                    what: format!("{what} in a finished log generation"),
                });
            }
            for e in read.entries {
                merger.add_entry(e);
            }
        }
        let mut next = Checkpoint {
            site: self.cfg.site,
            n: target,
            next_lsn: self.log.next_lsn(),
            created_ms: now_ms(),
            image: prev.image,
            delta: Vec::new(),
            carry: Vec::new(),
        };
        // Step 2, record by record.
        for r in merger.finish() {
            match r.status {
                Status::Commit if r.gcpn == target => {
                    apply_record(&mut next.image, &r);
                    next.delta.push((r, false));
                }
                Status::Commit if r.gcpn < target => {
                    if r.gcpn.saturating_add(1) < target {
                        self.stats.late_records.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(site = self.cfg.site, lsn = r.lsn, gcpn = r.gcpn, checkpoint = target,
                            "a commit decided later than the checkpoint interval allows; stored with the compensation records");
                    }
                    apply_record(&mut next.image, &r);
                    next.delta.push((r, true));
                }
                Status::Commit | Status::Undecided => next.carry.push(r),
                Status::Abort => {}
            }
        }
        tpmon_xa::failpoint::hit("rm.before_checkpoint_write");
        // The next generation's file is created now, so that the directory sync of
        // this checkpoint's rename also makes it durable: the switch to it at the next
        // checkpoint costs no sync.
        crate::oplog::precreate(dir, target + 1)?;
        next.write(dir, self.cfg.sync)?;
        tpmon_xa::failpoint::hit("rm.after_checkpoint_write");
        self.ccp.store(target, Ordering::Release);
        // Keep only the current and the previous checkpoint, and the log after it.
        // Not synced: a removal lost in a crash is redone by the next open.
        for c in checkpoints(dir)? {
            if c + 1 < target {
                let _ = std::fs::remove_file(dir.join(ccp_name(c)));
            }
        }
        for g in generations(dir)? {
            if g < target {
                let _ = std::fs::remove_file(dir.join(log_name(g)));
            }
        }
        self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        Ok(target)
    }

    /// The checkpointer's loop: a checkpoint every delta (or at once when a decision
    /// shows another site ahead), an audit of the memory state before each, and
    /// rollback-recovery (Algorithm 3) when the audit fails. Returns when
    /// [`Site::stop`] is called.
    pub fn run_checkpointer(self: &Arc<Self>) {
        // Background work: below the transactions' threads in the scheduler.
        // SAFETY: setpriority on the calling thread (who = 0 means this thread on
        // Linux) has no memory effects; failure leaves the default priority.
        unsafe {
            libc::setpriority(libc::PRIO_PROCESS, 0, 10);
        }
        let (m, cv) = &self.wake;
        let mut next = Instant::now() + self.cfg.checkpoint_interval;
        loop {
            {
                let mut woken = m.lock().unwrap_or_else(|p| p.into_inner());
                while !*woken && Instant::now() < next && !self.stopping.load(Ordering::Acquire) {
                    let wait = next.saturating_duration_since(Instant::now());
                    woken = cv
                        .wait_timeout(woken, wait)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                *woken = false;
            }
            if self.stopping.load(Ordering::Acquire) {
                return;
            }
            next = Instant::now() + self.cfg.checkpoint_interval;
            if tpmon_xa::failpoint::fires("rm.corrupt_memory") {
                self.corrupt_for_test("__corrupt__", b"k", b"v");
            }
            if self.audit_in_pieces() == Some(false) {
                self.stats.corruptions.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    site = self.cfg.site,
                    "the site's memory state is corrupt; rollback-recovery (Algorithm 3)"
                );
                if let Err(e) = self.recover_failed() {
                    // The checkpoint below is built from the files, not from memory:
                    // taking it keeps the site's numbers moving, and the next audit
                    // tries the recovery again from it.
                    tracing::error!(site = self.cfg.site, error = %e, "rollback-recovery failed; retried after the next checkpoint");
                }
            }
            match self.checkpoint_now() {
                Ok(n) => tracing::debug!(site = self.cfg.site, checkpoint = n, "checkpoint taken"),
                Err(e) => {
                    tracing::error!(site = self.cfg.site, error = %e, "checkpoint failed; retrying at the next interval")
                }
            }
        }
    }

    /// Stops the checkpointer loop.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.wake_checkpointer();
    }

    fn send(&self, to: u16, n: u64) {
        self.lock_redo().events.push(RedoEvent::Sent { n, to });
        if let Some(l) = self
            .links
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            l.send_redo(self.cfg.site, to, n);
        }
    }

    fn lock_redo(&self) -> MutexGuard<'_, RedoState> {
        self.redo.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The rollback-recovery events so far.
    pub fn redo_events(&self) -> Vec<RedoEvent> {
        self.lock_redo().events.clone()
    }

    /// Algorithm 3, at this (failed) site with LCPN n: restores CCP(n), redoes its log
    /// and sends redo(n) once to the originating site of each record. Returns n.
    pub fn recover_failed(&self) -> Result<u64, RmError> {
        let _g = self.ckpt.lock().unwrap_or_else(|p| p.into_inner());
        let n = self.ccp.load(Ordering::Acquire);
        let me = self.cfg.site;
        let _gate = self.gate.write().unwrap_or_else(|p| p.into_inner());
        let (image, records) = self.restore_point(n)?;
        let mut targets = Vec::new();
        {
            let mut redo = self.lock_redo();
            // Worked out on a copy: REDO_x(n) only records requests actually sent.
            let mut list = redo.lists.get(&n).cloned().unwrap_or_default();
            for r in &records {
                if r.status == Status::Commit && r.gcpn < n {
                    return Err(RmError::InconsistencyCheckpoint {
                        site: me,
                        lsn: r.lsn,
                        gcpn: r.gcpn,
                        n,
                    });
                }
                let k = r.origin;
                if r.status == Status::Commit && k != NO_ORIGIN && k != me && list.insert(k) {
                    targets.push(k);
                }
            }
            redo.lists.insert(n, list);
        }
        self.install(image, &records);
        self.stats
            .rollback_recoveries
            .fetch_add(1, Ordering::Relaxed);
        for k in targets {
            self.send(k, n);
        }
        Ok(n)
    }

    /// Algorithm 4, at a related site on receiving redo(from, n). Returns the
    /// checkpoint restored, or `None` when the request was ignored (a second one from
    /// the same site).
    pub fn on_redo(&self, from: u16, n: u64) -> Result<Option<u64>, RmError> {
        let _g = self.ckpt.lock().unwrap_or_else(|p| p.into_inner());
        let me = self.cfg.site;
        {
            let mut redo = self.lock_redo();
            if !redo.lists.entry(n).or_default().insert(from) {
                redo.events.push(RedoEvent::Ignored { n, from });
                return Ok(None);
            }
        }
        let lcpn = self.ccp.load(Ordering::Acquire);
        let restored = if lcpn < n { n.saturating_sub(1) } else { n };
        let _gate = self.gate.write().unwrap_or_else(|p| p.into_inner());
        let forget_request = || {
            // Not acted on: a later request from the same site must not be ignored.
            if let Some(l) = self.lock_redo().lists.get_mut(&n) {
                l.remove(&from);
            }
        };
        let (image, records) = match self.restore_point(restored) {
            Ok(x) => x,
            Err(e) => {
                forget_request();
                return Err(e);
            }
        };
        let mut targets = Vec::new();
        {
            let mut redo = self.lock_redo();
            let mut list = redo.lists.get(&n).cloned().unwrap_or_default();
            for r in &records {
                if r.status != Status::Commit {
                    continue;
                }
                let too_old = if lcpn < n {
                    r.gcpn.saturating_add(1) < n
                } else {
                    r.gcpn < n
                };
                if too_old {
                    drop(redo);
                    forget_request();
                    return Err(RmError::InconsistencyCheckpoint {
                        site: me,
                        lsn: r.lsn,
                        gcpn: r.gcpn,
                        n: restored,
                    });
                }
                let send = if lcpn < n { r.gcpn >= n } else { true };
                let i = r.origin;
                if send && i != NO_ORIGIN && i != me && list.insert(i) {
                    targets.push(i);
                }
            }
            redo.lists.insert(n, list);
            redo.events.push(RedoEvent::Acted { n, from, restored });
        }
        self.install(image, &records);
        self.stats
            .rollback_recoveries
            .fetch_add(1, Ordering::Relaxed);
        for i in targets {
            self.send(i, n);
        }
        Ok(Some(restored))
    }

    /// CCP(m) and the records after it, from disk: m is the newest checkpoint or the
    /// one before it.
    fn restore_point(&self, m: u64) -> Result<(Tables, Vec<Record>), RmError> {
        let dir = &self.cfg.dir;
        let newest = self.ccp.load(Ordering::Acquire);
        if m != newest && m + 1 != newest {
            return Err(RmError::NoCheckpoint(m));
        }
        let base = Checkpoint::read(&dir.join(ccp_name(m)))?;
        let mut merger = Merger::new();
        if m + 1 == newest {
            let top = Checkpoint::read(&dir.join(ccp_name(newest)))?;
            for (r, _) in top.delta {
                merger.add_record(r);
            }
            for r in top.carry {
                merger.add_record(r);
            }
        } else {
            for r in base.carry.iter().cloned() {
                merger.add_record(r);
            }
        }
        // The active generation is still being written: flush it first.
        self.log.flush()?;
        for g in generations(dir)?.into_iter().filter(|g| *g >= newest) {
            for e in read_log(&dir.join(log_name(g)))?.entries {
                merger.add_entry(e);
            }
        }
        Ok((base.image, merger.finish()))
    }

    /// Replaces the memory state by `image` with the committed `records` redone.
    /// Active branches are doomed (what they read may have been corrupt); prepared
    /// ones keep their write sets (they are in the log) and their locks.
    fn install(&self, mut image: Tables, records: &[Record]) {
        for r in records {
            if r.status == Status::Commit {
                apply_record(&mut image, r);
            }
        }
        {
            let mut bs = self.lock_branches();
            for b in bs.values_mut() {
                if b.state == BranchState::Active {
                    b.doom
                        .get_or_insert_with(|| "the site was rolled back to a checkpoint".into());
                }
            }
            let digest = digest_of(&image);
            let mut d = self.data.write().unwrap_or_else(|p| p.into_inner());
            let generation = d.generation + 1;
            *d = Data {
                tables: image,
                digest,
                generation,
            };
        }
    }

    /// The directory of the site.
    pub fn dir(&self) -> &Path {
        &self.cfg.dir
    }
}

fn merge_held(into: &mut Held, from: Held) {
    // Held has private fields; rebuild through the lock manager's types.
    *into = crate::locks::merge(std::mem::take(into), from);
}

/// The records after checkpoint `ccp` (number `n`) for restart: its carry, then every
/// log generation from n on. Torn tails of the last generation are cut when `cut`.
/// Returns the records, the next free LSN and the tails cut.
#[allow(clippy::type_complexity)]
pub(crate) fn records_after(
    dir: &Path,
    ccp: &Checkpoint,
    n: u64,
    cut: bool,
) -> Result<(Vec<Record>, u64, Vec<(PathBuf, u64, String)>), RmError> {
    let mut merger = Merger::new();
    let mut next_lsn = ccp.next_lsn;
    for r in ccp.carry.iter().cloned() {
        next_lsn = next_lsn.max(r.lsn + 1);
        merger.add_record(r);
    }
    let gens: Vec<u64> = generations(dir)?.into_iter().filter(|g| *g >= n).collect();
    let mut torn = Vec::new();
    for (i, g) in gens.iter().enumerate() {
        let path = dir.join(log_name(*g));
        let read = read_log(&path)?;
        if let Some((offset, what)) = read.torn {
            // Only the generation being written can hold a torn append; the ones after
            // it may exist but must be empty (created ahead by a checkpoint).
            let later_empty = gens[i + 1..]
                .iter()
                .all(|g| std::fs::metadata(dir.join(log_name(*g))).is_ok_and(|m| m.len() == 0));
            if !later_empty {
                return Err(RmError::Corrupt {
                    path,
                    offset,
                    what: format!("{what} in a log generation that is not the last"),
                });
            }
            if cut {
                tracing::warn!(file = %path.display(), offset, what, "cutting a torn tail of the operation log (never acknowledged)");
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| RmError::io(&path, "cannot open to cut a torn tail", e))?;
                f.set_len(read.valid_len)
                    .and_then(|_| f.sync_all())
                    .map_err(|e| RmError::io(&path, "cannot cut a torn tail", e))?;
            }
            torn.push((path.clone(), offset, what.to_string()));
        }
        for e in read.entries {
            next_lsn = next_lsn.max(e.last_lsn() + 1);
            merger.add_entry(e);
        }
    }
    Ok((merger.finish(), next_lsn, torn))
}
