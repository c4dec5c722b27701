//! The transaction manager: it ends global transactions by two-phase commit over the
//! branches their originators report, keeps the decisions in the durable global
//! transaction log, and recovers: it drives logged decisions to completion and rolls
//! back prepared branches that no decision covers (presumed abort).
//!
//! It runs inside the node daemon, which hands it the originators' requests; it owns
//! the log, the sessions it opens to resource managers and the in-memory view of the
//! transactions it is deciding. It never runs service code and never talks to clients
//! itself.
//!
//! In a multi-node domain it coordinates the transactions whose gtrid names its node,
//! preparing and ending the branches of other nodes' groups through those nodes'
//! managers, and is a subordinate for the transactions other nodes coordinate: it logs
//! its node's branches as prepared at the coordinator's Prepare, carries out the
//! coordinator's outcome, and when in doubt asks (the coordinator, else the other
//! nodes) rather than guess ([`subordinate`]; the daemon carries the requests over the
//! node links).
//!
//! Ordering rules (docs/design-transactions.md has the full argument):
//! * a commit decision is durable in the log before any branch is told to commit and
//!   before the originator hears "committed";
//! * no commit is decided after the transaction's deadline, and recovery rolls back a
//!   prepared branch of the current epoch only after that deadline plus a grace, or
//!   once this manager rolled the transaction back; both checks happen under one lock
//!   with the set of transactions being decided, so they never race;
//! * a branch of an earlier epoch this log issued without a decision is rolled back at
//!   once: its originator's session died with the previous daemon, so nobody can
//!   decide it; one of an epoch this log did not issue (the log was replaced, or an
//!   older copy restored: module `epochs`) is never presumed aborted.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tpmon_config::DomainConfig;
use tpmon_proto::Gtrid;
use tpmon_txlog::{Entry, LogError, LogIdentity, Options, TxLog, TxState};

mod blocking_pg;
mod commit;
mod epochs;
pub mod pool;
mod recover;
pub mod subordinate;
mod view;

pub use commit::{LogCall, PhaseTwoJob};
pub use subordinate::{Links, ScnAnswer, Status as SubStatus, SubAnswer, SubItem, SubRequest};

/// What a commit decision tells the resource managers besides "commit": spec 03's
/// global checkpoint number (the largest checkpoint number among the yes votes,
/// Algorithm 1) and the transaction's originating site (the group of its first branch
/// that votes with a checkpoint number). Stored in the log entry's `data`, so that a
/// decision finished by recovery carries the same numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// GCPN (0 when no branch voted with a checkpoint number).
    pub gcpn: u64,
    /// Originating site (`u16::MAX`: none).
    pub origin: u16,
}

impl Default for Decision {
    fn default() -> Decision {
        Decision {
            gcpn: 0,
            origin: u16::MAX,
        }
    }
}

const DECISION_TAG: u8 = 1;

impl Decision {
    /// The decision for these yes votes.
    pub fn of(prepared: &[tpmon_proto::Branch]) -> Decision {
        Decision {
            gcpn: prepared.iter().map(|b| b.cpn).max().unwrap_or(0),
            origin: prepared
                .iter()
                .find(|b| b.cpn > 0)
                .map_or(u16::MAX, |b| b.group),
        }
    }

    /// The bytes kept in the log entry's `data` (empty when there is nothing to keep).
    pub fn encode(&self) -> Vec<u8> {
        if *self == Decision::default() {
            return Vec::new();
        }
        let mut v = vec![DECISION_TAG];
        v.extend_from_slice(&self.gcpn.to_le_bytes());
        v.extend_from_slice(&self.origin.to_le_bytes());
        v
    }

    /// Reads [`Decision::encode`]'s bytes (anything else: the default).
    pub fn decode(data: &[u8]) -> Decision {
        match data {
            [DECISION_TAG, rest @ ..] if rest.len() == 10 => {
                let mut g = [0u8; 8];
                g.copy_from_slice(&rest[..8]);
                Decision {
                    gcpn: u64::from_le_bytes(g),
                    origin: u16::from_le_bytes([rest[8], rest[9]]),
                }
            }
            _ => Decision::default(),
        }
    }
}
pub use view::{TxView, TxViewBranch};

use pool::Pool;

/// Gtrid of the log entry that holds the boot epoch counter (never a real gtrid:
/// those start with the domain name).
const EPOCH_KEY: &[u8] = b"#epoch";

/// A file an operator creates in the log directory after restoring the log from a
/// copy: the next boot counts no earlier epoch as the log's own
/// (`EpochHistory::next_boot` in module `epochs`) and removes it.
pub const RESTORED_MARK: &str = "RESTORED";

/// Most transactions in phase 2 at once after their originators were answered (the
/// others' answers wait): bounds the prepared branches left in resource managers.
pub const PHASE_TWO_MAX: usize = 64;

/// How long after a transaction's deadline recovery waits before it presumes abort for
/// a prepared branch of the current epoch.
pub const DEADLINE_GRACE: Duration = Duration::from_secs(2);

/// Why the transaction manager could not start.
#[derive(Debug, thiserror::Error)]
pub enum TmError {
    /// The log could not be created or opened.
    #[error("global transaction log {dir}: {source}")]
    Log {
        /// The log directory.
        dir: String,
        /// Why.
        #[source]
        source: LogError,
    },
    /// The log directory exists but holds no log.
    #[error(
        "global transaction log {dir}: the directory exists but holds no log (no txlog-*.seg); \
         restore the log, or, for a new domain, remove the directory"
    )]
    LogMissing {
        /// The log directory.
        dir: String,
    },
    /// The log's epoch entry cannot be read: which epochs the log issued is unknown.
    #[error(
        "global transaction log {dir}: its #epoch entry is damaged ({bytes} bytes that are \
         none of its formats); the log cannot tell its own transactions from others'"
    )]
    EpochDamaged {
        /// The log directory.
        dir: String,
        /// The entry's data length.
        bytes: usize,
    },
}

/// What the manager knows of one transaction it is working on, for `tpmon tx list`.
#[derive(Debug, Clone)]
pub(crate) struct Tracked {
    pub state: &'static str,
    pub since: SystemTime,
    pub branches: Vec<(u16, String, bool)>,
    pub retries: u32,
    pub last_error: String,
}

impl Tracked {
    /// A transaction known from its log entry `e`, in `state`: a branch is done when
    /// its state in the entry says so.
    pub(crate) fn of_entry(
        e: &tpmon_txlog::Entry,
        state: &'static str,
        retries: u32,
        last_error: String,
    ) -> Tracked {
        Tracked {
            state,
            since: SystemTime::now(),
            branches: e
                .branches
                .iter()
                .map(|b| {
                    (
                        b.rm as u16,
                        String::from_utf8_lossy(&b.bqual).into_owned(),
                        b.state == commit::BRANCH_DONE,
                    )
                })
                .collect(),
            retries,
            last_error,
        }
    }
}

#[derive(Default)]
pub(crate) struct State {
    /// Transactions whose commit is being decided or driven: recovery leaves them alone.
    pub deciding: HashSet<String>,
    /// Transactions of this epoch rolled back here, until their deadline has passed.
    pub rolled_back: HashMap<String, u64>,
    /// Transactions with work left, for the operator.
    pub tracked: HashMap<String, Tracked>,
    /// Per resource manager: last error and when to try again.
    pub rm_down: HashMap<usize, (String, std::time::Instant, Duration)>,
    /// Subordinate: transactions another node coordinates whose branches were logged
    /// prepared here, and when (recovery asks the coordinator only after a while).
    pub sub_prepared: HashMap<String, std::time::Instant>,
}

/// The transaction manager of one node.
pub struct Tm {
    domain: String,
    node: String,
    epoch: u64,
    /// The epoch this node's log began with (the SCN counts from it).
    pub(crate) first_epoch: u64,
    /// The epochs this node's log issued. A branch of an earlier epoch that this log
    /// did not issue and no entry covers comes from a log this one replaced (lost,
    /// deleted, an older copy restored, or `log_dir` pointed elsewhere): its decision
    /// is unknown here, so it is never presumed aborted, only shown for the operator
    /// to resolve.
    pub(crate) epochs: epochs::EpochHistory,
    prefix: String,
    one_phase_commit: bool,
    recovery_interval: Duration,
    /// Longest transaction timeout originators may use; a deadline beyond it is refused.
    pub(crate) timeout_max: Duration,
    log: Arc<TxLog>,
    /// Per configured group: its resource manager's pool.
    pools: Vec<Option<Arc<Pool>>>,
    /// Per group: the index of the first group with the same resource manager, so
    /// that recovery asks each database once.
    rm_of_group: Vec<usize>,
    /// This node's index among the domain's nodes (None: a single-node domain).
    pub(crate) me: Option<usize>,
    /// Names of the domain's nodes.
    pub(crate) nodes: Vec<String>,
    /// Per group: the index of its node.
    pub(crate) node_of_group: Vec<usize>,
    /// How this manager reaches the other nodes' (multi-node domains).
    pub(crate) links: std::sync::OnceLock<Arc<dyn subordinate::Links>>,
    /// Places for transactions in phase 2 whose originator did not wait for it.
    pub(crate) phase_two_slots: Arc<tokio::sync::Semaphore>,
    pub(crate) state: Mutex<State>,
    /// The boot recovery pass has finished (CHECK_RECOVERED_NODE): the logged
    /// decisions were driven and the in-doubt subordinate entries resolved or their
    /// coordinators asked. Until then the other nodes route no new work here.
    pub(crate) recovered: std::sync::atomic::AtomicBool,
    /// In-doubt transactions resolved here with an outcome their coordinator pushed
    /// (RECOVER_INDOUBT_GLOBAL_TX).
    pub(crate) pushed_resolved: std::sync::atomic::AtomicU64,
    /// Commit sequence number (GET_MAX_SCN): `epoch - first_epoch + 1` (which grows
    /// at every boot) `<< 32` plus the commit decisions logged since this boot.
    /// Durable at no cost: the epoch is (the log's epoch record, advanced at every
    /// boot), so it never goes back across restarts; the node with the highest one
    /// decided most recently.
    pub(crate) scn: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Tm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tm")
            .field("domain", &self.domain)
            .field("node", &self.node)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Tm {
    /// Opens (creating on first use) the node's log, advances the boot epoch durably
    /// and prepares a pool per resource manager of the node's groups. `node` is this
    /// daemon's node name.
    pub fn start(cfg: &DomainConfig, node: &str) -> Result<Arc<Tm>, TmError> {
        let settings = &cfg.domain.tx;
        let dir = &settings.log_dir;
        let identity = LogIdentity::new(cfg.domain.name.clone(), node.to_string());
        let options = Options {
            entries_max: settings.entries_max as usize + 1,
            commit_delay: settings.log_commit_delay,
            preallocate_bytes: settings.log_preallocate_bytes,
            ..Options::default()
        };
        let log_err = |source| TmError::Log {
            dir: dir.display().to_string(),
            source,
        };
        let log = match log_dir_state(dir) {
            LogDir::HasLog => {
                let (log, report) = TxLog::open(dir, identity, options).map_err(log_err)?;
                tracing::info!(dir = %dir.display(), ?report, entries = log.len(), "global transaction log opened");
                log
            }
            LogDir::Fresh => {
                tracing::info!(dir = %dir.display(), "global transaction log created");
                TxLog::create(dir, identity, options).map_err(log_err)?
            }
            LogDir::Lost => {
                // An existing directory without a log is not a new log: a wrong path
                // or a lost log would forget every in-doubt transaction.
                return Err(TmError::LogMissing {
                    dir: dir.display().to_string(),
                });
            }
        };
        let now_s = now_unix_ms() / 1000;
        // The operator's word that the log was restored from a copy (the file is
        // removed once this boot's epoch entry is durable).
        let restored_mark = dir.join(RESTORED_MARK);
        let restored = restored_mark.exists();
        let epochs = match log.get(EPOCH_KEY) {
            Some(e) => epochs::EpochHistory::decode(&e.data)
                .ok_or_else(|| TmError::EpochDamaged {
                    dir: dir.display().to_string(),
                    bytes: e.data.len(),
                })?
                .next_boot(now_s, restored),
            None => epochs::EpochHistory::new_log(now_s),
        };
        let (epoch, first_epoch) = (epochs.current, epochs.first);
        let mut marker = Entry::new(EPOCH_KEY.to_vec(), TxState::Idle);
        marker.data = epochs.encode();
        log.put(marker).map_err(log_err)?;
        if restored {
            tracing::warn!(
                dir = %dir.display(),
                epoch,
                "the log was marked restored ({RESTORED_MARK}): no prepared branch of an \
                 earlier boot is presumed aborted; `tpmon tx list` shows them for the \
                 operator"
            );
            std::fs::remove_file(&restored_mark).map_err(|e| TmError::Log {
                dir: dir.display().to_string(),
                source: LogError::Io {
                    file: restored_mark.clone(),
                    offset: 0,
                    op: "remove the restored mark",
                    source: e,
                },
            })?;
        }
        let ahead = epochs.ahead_of(now_s);
        if ahead > 1 {
            tracing::warn!(
                epoch,
                seconds = ahead,
                "this log's epochs run ahead of the clock (more than one boot a second, or \
                 the clock was set back): a copy of this log restored within that time \
                 could repeat an epoch; restore copies with the {RESTORED_MARK} mark"
            );
        }
        let mut pools = Vec::with_capacity(cfg.groups.len());
        let mut rm_of_group = Vec::with_capacity(cfg.groups.len());
        let this_node = cfg.node_index(node);
        for (i, g) in cfg.groups.iter().enumerate() {
            // Only this node's groups: the resource managers of another node's groups
            // are that node's TM's (its embedded sites are not even in this process).
            let ours = this_node.is_none_or(|n| n == g.node);
            let res = g.rm.xa().filter(|_| ours).cloned();
            let same = res.as_ref().and_then(|r| {
                cfg.groups[..i].iter().position(|o| {
                    this_node.is_none_or(|n| n == o.node)
                        && o.rm
                            .xa()
                            .is_some_and(|x| x.kind == r.kind && x.open == r.open)
                })
            });
            rm_of_group.push(same.unwrap_or(i));
            pools.push(res.map(|r| Arc::new(Pool::new(r))));
        }
        Ok(Arc::new(Tm {
            prefix: Gtrid::prefix(&cfg.domain.name, node),
            domain: cfg.domain.name.clone(),
            node: node.to_string(),
            epoch,
            first_epoch,
            epochs,
            one_phase_commit: settings.one_phase_commit,
            recovery_interval: settings.recovery_interval,
            timeout_max: settings.timeout_max,
            log: Arc::new(log),
            pools,
            rm_of_group,
            me: this_node,
            nodes: cfg.nodes.iter().map(|n| n.name.clone()).collect(),
            node_of_group: cfg.groups.iter().map(|g| g.node).collect(),
            links: std::sync::OnceLock::new(),
            phase_two_slots: Arc::new(tokio::sync::Semaphore::new(PHASE_TWO_MAX)),
            state: Mutex::new(State::default()),
            recovered: std::sync::atomic::AtomicBool::new(false),
            pushed_resolved: std::sync::atomic::AtomicU64::new(0),
            // Relative to the log's first epoch, not the epoch itself, so that the
            // counter of decisions keeps its 32 bits.
            scn: std::sync::atomic::AtomicU64::new((epoch.saturating_sub(first_epoch) + 1) << 32),
        }))
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// This boot's epoch (part of every gtrid begun here).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The epoch the node's log began with ([`Tm::epoch`] at the log's first boot).
    pub fn first_epoch(&self) -> u64 {
        self.first_epoch
    }

    /// True when `epoch` is earlier than this boot's and this node's log did not issue
    /// it: a branch of it that no entry covers belongs to a log this one replaced, so
    /// nothing here knows its decision.
    pub(crate) fn epoch_of_another_log(&self, epoch: u64) -> bool {
        epoch < self.epoch && !self.epochs.issued(epoch)
    }

    /// The prefix of every gtrid this node coordinates.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Number of transactions the log holds (the epoch marker excluded).
    pub fn logged(&self) -> usize {
        self.log
            .iter()
            .filter(|e| e.gtrid != EPOCH_KEY && self.log.holds(&e.gtrid))
            .count()
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn pool(&self, group: u16) -> Option<&Arc<Pool>> {
        self.pools.get(group as usize).and_then(|p| p.as_ref())
    }

    /// Runs a blocking log operation off the async threads.
    pub(crate) async fn log_op<T: Send + 'static>(
        &self,
        op: impl FnOnce(&TxLog) -> Result<T, LogError> + Send + 'static,
    ) -> Result<T, LogError> {
        let log = self.log.clone();
        match tokio::task::spawn_blocking(move || op(&log)).await {
            Ok(r) => r,
            Err(e) => Err(LogError::Io {
                file: Default::default(),
                offset: 0,
                op: "join",
                source: std::io::Error::other(e.to_string()),
            }),
        }
    }

    /// This node's commit sequence number (see the field `scn`; GET_MAX_SCN).
    pub fn scn(&self) -> u64 {
        self.scn.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether this node's boot recovery has finished (CHECK_RECOVERED_NODE: other
    /// nodes route new calls here only then).
    pub fn recovered(&self) -> bool {
        self.recovered.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Runs recovery now and then every `recovery_interval` until `stop` resolves.
    /// The end of the first pass marks the node recovered ([`Tm::recovered`]); the
    /// failpoint `tm.boot_recovery` (before that pass) lets a test hold it.
    pub async fn run_recovery(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        if !self.recovered() {
            let _ =
                tokio::task::spawn_blocking(|| tpmon_xa::failpoint::hit("tm.boot_recovery")).await;
        }
        loop {
            self.recover_once().await;
            if !self
                .recovered
                .swap(true, std::sync::atomic::Ordering::AcqRel)
            {
                tracing::info!(
                    node = %self.node,
                    "boot recovery finished: this node takes new work from the others"
                );
            }
            tokio::select! {
                _ = tokio::time::sleep(self.recovery_interval) => {}
                _ = &mut stop => return,
            }
        }
    }
}

enum LogDir {
    /// Segments are there: open (and recover) them.
    HasLog,
    /// No directory, or only what an interrupted create leaves: create the log.
    Fresh,
    /// A directory with other files but no segment.
    Lost,
}

fn log_dir_state(dir: &Path) -> LogDir {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return LogDir::Fresh;
    };
    let names: Vec<String> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if names.iter().any(|n| n.ends_with(".seg")) {
        LogDir::HasLog
    } else if names.iter().all(|n| n.ends_with(".seg.tmp")) {
        LogDir::Fresh
    } else {
        LogDir::Lost
    }
}
