//! A seeded, replayable, deterministic simulation of three embedded sites (spec 03)
//! driven through the real [`Site`] code: random distributed transactions under strict
//! 2PL with a test-side two-phase-commit coordinator (Algorithm 1), decision messages
//! delivered late and out of order, one commit checkpoint per site per delta period at
//! a random moment (Algorithm 2), crashes with restart recovery (a site loses its
//! memory; sometimes the crash also tore the last log append, or came inside a
//! checkpoint: after its log switch, perhaps steps later with more logged, or after its
//! file was in place but before the old files were removed), and rollback-recovery
//! (Algorithms 3 and 4) with the redo messages routed through a queue. Two small tests
//! at the end pin down the crash cases inside a checkpoint and at a torn log write.
//!
//! Everything runs on one thread: a lock wait can only time out (nobody else can
//! release), so every run of a seed takes the same path. A failure names the seed;
//! `TPMON_SIM_SEED=<seed> cargo test -p tpmon-rm --test simulation` replays it alone,
//! `TPMON_SIM_SEEDS=<count>` runs more seeds, `TPMON_SIM_TORN=0` leaves out the torn
//! log writes at crashes.
//!
//! Checked (spec 03 §3.5 and the implementation's file layout):
//! * every site's committed state equals a model (the serial order of the committed
//!   transactions: decision order, which strict 2PL makes the serialisation order),
//!   after every delivery, crash and rollback-recovery, and at the end; reads, inserts,
//!   deletes and scans inside transactions see what the model says;
//! * Property 1: every commit record on any site's disk carries the coordinator's
//!   outcome, GCPN and originating site, and every yes-voting participant of every
//!   committed transaction was seen with that GCPN;
//! * Theorem 1: a transaction with GCPN g, delivered to site x while LCPN_x = d, is in
//!   the delta of CCP_x(g) (stored) or among the compensation records CL_x(g) stored with
//!   CCP_x(g+1), exactly once, checked whenever those files are on disk;
//! * Theorem 2: the commit records after CCP_x(n) (carry and log) have GCPN n..=n+2;
//! * exactly once: a record is in one place only across the previous checkpoint's
//!   delta, the newest checkpoint's delta and carry, and the log; none is missing;
//!   LSNs are unique; each checkpoint's image is the replay of the records it should
//!   hold;
//! * storage: at most two checkpoint files, and no log generation older than CCP(n);
//! * Table 1: taking a checkpoint sends no message;
//! * Theorems 3, 4 and 5: during rollback-recovery every site restores CCP(n-1) (only when
//!   it is its current one) or CCP(n), sends at most one redo to each other site and
//!   acts on at most one from each; the redo messages sent are exactly those Algorithms
//!   3 and 4 prescribe for the records on disk.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::prelude::*;

use tpmon_rm::checkpoint::{ccp_name, checkpoints, Checkpoint, Tables};
use tpmon_rm::codec::frame;
use tpmon_rm::oplog::{generations, log_name, read_log};
use tpmon_rm::record::{LogEntry, Merger, Op, Record, Status, NO_ORIGIN};
use tpmon_rm::site::RestartReport;
use tpmon_rm::{Links, RedoEvent, RmError, Site, SiteConfig};

const SITES: u16 = 3;
const KEYS: u32 = 10;
const TABLE: &str = "acct";
const TXNS: usize = 200;
const SEEDS: u64 = 20;
/// Simulated steps per delta period: every site takes exactly one checkpoint in each.
const PERIOD: u64 = 32;
/// Transactions running at once (interleaved step by step).
const MAX_ACTIVE: usize = 3;
/// Short: in one thread a lock wait always ends in a timeout.
const LOCK_TIMEOUT: Duration = Duration::from_millis(1);
const P_CRASH: f64 = 0.008;
const P_RECOVERY: f64 = 0.02;
const P_DELIVER: f64 = 0.2;
const P_DELIVER_AT_ONCE: f64 = 0.3;
/// Percent of checkpoints interrupted by a crash after the log switch (and as many
/// after the checkpoint file is in place, before the old files are removed).
const P_CRASH_IN_CHECKPOINT: u32 = 3;

type Map = BTreeMap<Vec<u8>, Vec<u8>>;
type Writes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// The redo messages in flight (Algorithms 3 and 4): a queue the test delivers.
#[derive(Default)]
struct Queue {
    q: Mutex<VecDeque<(u16, u16, u64)>>,
}

impl Links for Queue {
    fn send_redo(&self, from: u16, to: u16, n: u64) {
        self.lock().push_back((from, to, n));
    }
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(u16, u16, u64)>> {
        self.q.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn len(&self) -> usize {
        self.lock().len()
    }
    fn take(&self, i: usize) -> (u16, u16, u64) {
        self.lock().remove(i).expect("queue index")
    }
    fn from(&self, i: usize) -> Vec<(u16, u16, u64)> {
        self.lock().iter().skip(i).copied().collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Running,
    Committed { gcpn: u64, origin: u16 },
    Aborted,
    ReadOnly,
}

struct Txn {
    gtrid: String,
    /// Participant sites; the first is the originating site.
    parts: Vec<u16>,
    ops_left: u32,
    /// Mirror of each branch's write set (`None` deletes).
    writes: BTreeMap<u16, Writes>,
    /// Sites that voted yes (they hold log records of the transaction).
    yes: BTreeSet<u16>,
    /// Sites whose branch ended at prepare (read-only, or a no vote).
    ended: BTreeSet<u16>,
    /// Sites that crashed or were rolled back while the transaction was running.
    disturbed: BTreeSet<u16>,
    outcome: Outcome,
    /// Site -> its LCPN when the commit was delivered.
    delivered: BTreeMap<u16, u64>,
    /// Site -> GCPNs seen on its commit records on disk.
    observed: BTreeMap<u16, BTreeSet<u64>>,
}

impl Txn {
    fn xid(&self, x: u16) -> String {
        format!("{}|{}", self.gtrid, x)
    }
}

fn parse_tid(tid: &str) -> Option<(usize, u16)> {
    let (g, b) = tid.split_once('|')?;
    Some((g.strip_prefix('t')?.parse().ok()?, b.parse().ok()?))
}

/// A crash scheduled inside checkpoint `n` of a site (see
/// [`Sim::fire_mid_checkpoint_crash`]).
struct MidCheckpoint {
    n: u64,
    /// The checkpoint and log files before checkpoint n began.
    before: Vec<(PathBuf, Vec<u8>)>,
    fire_at: u64,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    txn: usize,
    site: u16,
}

#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    committed: u64,
    aborted: u64,
    read_only: u64,
    lock_timeouts: u64,
    lost_branches: u64,
    doomed: u64,
    delayed: u64,
    forced: u64,
    checkpoints: u64,
    stored: u64,
    compensation: u64,
    carried: u64,
    crashes: u64,
    crash_in_checkpoint: u64,
    crash_in_checkpoint_begun: u64,
    crash_before_cleanup: u64,
    torn_tails: u64,
    in_doubt: u64,
    lost_aborts: u64,
    recoveries: u64,
    redo_sent: u64,
    redo_acted: u64,
    redo_ignored: u64,
    restored_previous: u64,
}

impl Counters {
    fn add(&mut self, o: &Counters) {
        self.committed += o.committed;
        self.aborted += o.aborted;
        self.read_only += o.read_only;
        self.lock_timeouts += o.lock_timeouts;
        self.lost_branches += o.lost_branches;
        self.doomed += o.doomed;
        self.delayed += o.delayed;
        self.forced += o.forced;
        self.checkpoints += o.checkpoints;
        self.stored += o.stored;
        self.compensation += o.compensation;
        self.carried += o.carried;
        self.crashes += o.crashes;
        self.crash_in_checkpoint += o.crash_in_checkpoint;
        self.crash_in_checkpoint_begun += o.crash_in_checkpoint_begun;
        self.crash_before_cleanup += o.crash_before_cleanup;
        self.torn_tails += o.torn_tails;
        self.in_doubt += o.in_doubt;
        self.lost_aborts += o.lost_aborts;
        self.recoveries += o.recoveries;
        self.redo_sent += o.redo_sent;
        self.redo_acted += o.redo_acted;
        self.redo_ignored += o.redo_ignored;
        self.restored_previous += o.restored_previous;
    }
}

/// Where a record was found on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// The delta of CCP(n-1); true for a compensation record.
    Prev(bool),
    /// The delta of CCP(n); true for a compensation record.
    Cur(bool),
    /// After CCP(n): its carry or the log.
    After,
}

/// Where the records of one (transaction, key) were found, with their status.
type Found = Vec<(Place, Status)>;

/// A site's files.
struct Disk {
    ccps: Vec<u64>,
    gens: Vec<u64>,
    prev: Option<Checkpoint>,
    cur: Checkpoint,
    /// The records after CCP(n) (carry, then the log generations from n on).
    after: Vec<Record>,
}

macro_rules! ensure {
    ($sim:expr, $site:expr, $prop:expr, $cond:expr, $($fmt:tt)+) => {
        if !$cond {
            $sim.fail($site, $prop, format!($($fmt)+))
        }
    };
}

struct Sim {
    seed: u64,
    rng: StdRng,
    root: PathBuf,
    sites: Vec<Option<Arc<Site>>>,
    links: Arc<Queue>,
    txns: Vec<Txn>,
    active: Vec<usize>,
    pending: Vec<Pending>,
    /// Per site: committed state in decision order (every committed transaction).
    model: Vec<Map>,
    /// Per site: committed state in delivery order (what the site has been told).
    applied: Vec<Map>,
    /// Per site: (transaction, checkpoint its records belong to) in delivery order.
    deliveries: Vec<Vec<(usize, u64)>>,
    max_gcpn_delivered: Vec<u64>,
    /// The test's copy of each site instance's Site_id_list per checkpoint number.
    oracle_lists: Vec<BTreeMap<u64, BTreeSet<u16>>>,
    schedule: Vec<u64>,
    /// Per site: a crash scheduled inside its last checkpoint.
    mid: Vec<Option<MidCheckpoint>>,
    /// Crashes may tear the last log append (`TPMON_SIM_TORN=0` turns that off).
    torn: bool,
    step: u64,
    c: Counters,
}

fn table_of(t: &Tables) -> (Map, Vec<String>) {
    let others = t
        .iter()
        .filter(|(n, kv)| n.as_str() != TABLE && !kv.is_empty())
        .map(|(n, _)| n.clone())
        .collect();
    (t.get(TABLE).cloned().unwrap_or_default(), others)
}

fn apply(m: &mut Map, w: &Writes) {
    for (k, v) in w {
        match v {
            Some(v) => {
                m.insert(k.clone(), v.clone());
            }
            None => {
                m.remove(k);
            }
        }
    }
}

fn show(m: &Map) -> String {
    let kv: Vec<String> = m
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                String::from_utf8_lossy(k),
                String::from_utf8_lossy(v)
            )
        })
        .collect();
    format!("{{{}}}", kv.join(", "))
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let root = std::env::temp_dir().join(format!("tpmon-rm-sim-{}-{seed}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        Sim {
            seed,
            rng: StdRng::seed_from_u64(seed),
            root,
            sites: (0..SITES).map(|_| None).collect(),
            links: Arc::new(Queue::default()),
            txns: Vec::new(),
            active: Vec::new(),
            pending: Vec::new(),
            model: vec![Map::new(); SITES as usize],
            applied: vec![Map::new(); SITES as usize],
            deliveries: vec![Vec::new(); SITES as usize],
            max_gcpn_delivered: vec![0; SITES as usize],
            oracle_lists: vec![BTreeMap::new(); SITES as usize],
            schedule: vec![0; SITES as usize],
            mid: (0..SITES).map(|_| None).collect(),
            torn: torn_tails_on(),
            step: 0,
            c: Counters::default(),
        }
    }

    fn fail(&self, site: Option<u16>, property: &str, msg: String) -> ! {
        let at = match site {
            Some(x) => format!("site {x}"),
            None => "all sites".to_string(),
        };
        panic!(
            "\n*** simulation seed {} (replay: TPMON_SIM_SEED={} cargo test -p tpmon-rm --test simulation), step {}, {at}\n*** property violated: {property}\n*** {msg}\n",
            self.seed, self.seed, self.step
        )
    }

    fn site(&self, x: u16) -> Arc<Site> {
        match &self.sites[x as usize] {
            Some(s) => s.clone(),
            None => self.fail(Some(x), "simulation", "the site is not open".into()),
        }
    }

    fn cfg(&self, x: u16) -> SiteConfig {
        SiteConfig {
            site: x,
            name: format!("s{x}"),
            dir: self.root.join(format!("site{x}")),
            checkpoint_interval: Duration::from_secs(3600),
            lock_timeout: LOCK_TIMEOUT,
            sync: false,
        }
    }

    fn open(&mut self, x: u16) -> RestartReport {
        let (s, rep) = Site::open(self.cfg(x)).unwrap_or_else(|e| {
            self.fail(
                Some(x),
                "restart recovery",
                format!("Site::open failed: {e}"),
            )
        });
        let links: Arc<dyn Links> = self.links.clone();
        s.set_links(links);
        self.sites[x as usize] = Some(s);
        rep
    }

    fn rand_site(&mut self) -> u16 {
        self.rng.random_range(0..SITES)
    }

    // ---- the run --------------------------------------------------------------

    fn run(&mut self) {
        for x in 0..SITES {
            let rep = self.open(x);
            ensure!(
                self,
                Some(x),
                "fresh site",
                rep.checkpoint == 0 && rep.in_doubt == 0,
                "a new site starts at checkpoint 0 with nothing in doubt, got {rep:?}"
            );
        }
        let mut started = 0;
        while started < TXNS || !self.active.is_empty() {
            let phase = self.step % PERIOD;
            if phase == 0 {
                for x in 0..SITES as usize {
                    self.schedule[x] = self.rng.random_range(0..PERIOD);
                }
            }
            for x in 0..SITES {
                if self.mid[x as usize]
                    .as_ref()
                    .is_some_and(|m| m.fire_at <= self.step)
                {
                    self.fire_mid_checkpoint_crash(x);
                }
                if self.schedule[x as usize] == phase {
                    self.checkpoint(x);
                }
            }
            let can_start = started < TXNS && self.active.len() < MAX_ACTIVE;
            if can_start && (self.active.is_empty() || self.rng.random_bool(0.3)) {
                self.start_txn();
                started += 1;
            } else if !self.active.is_empty() {
                let t = self.active[self.rng.random_range(0..self.active.len())];
                self.step_txn(t);
            }
            if !self.pending.is_empty() && self.rng.random_bool(P_DELIVER) {
                let i = self.rng.random_range(0..self.pending.len());
                self.deliver(i);
            }
            if self.rng.random_bool(P_CRASH) {
                let x = self.rand_site();
                self.crash(x);
            }
            if self.rng.random_bool(P_RECOVERY) {
                // Half the time a site that is ahead fails: the others then restore
                // CCP(n-1), their current checkpoint (Algorithm 4, LCPN_k < n).
                let lcpns: Vec<u64> = (0..SITES).map(|y| self.site(y).lcpn()).collect();
                let top = lcpns.iter().copied().max().unwrap_or(0);
                let ahead: Vec<u16> = (0..SITES).filter(|y| lcpns[*y as usize] == top).collect();
                let x = if ahead.len() < SITES as usize && self.rng.random_bool(0.5) {
                    ahead[self.rng.random_range(0..ahead.len())]
                } else {
                    self.rand_site()
                };
                for y in 0..SITES {
                    // A checkpoint being built holds off rollback-recovery.
                    self.fire_mid_checkpoint_crash(y);
                }
                self.rollback_recovery(x);
            }
            self.step += 1;
        }
        // Finish the current period: the sites that have not checkpointed in it do.
        let phase = self.step % PERIOD;
        for x in 0..SITES {
            if self.schedule[x as usize] >= phase {
                self.checkpoint(x);
            }
        }
        self.finish();
    }

    fn finish(&mut self) {
        for x in 0..SITES {
            self.fire_mid_checkpoint_crash(x);
        }
        while !self.pending.is_empty() {
            let i = self.rng.random_range(0..self.pending.len());
            self.deliver(i);
        }
        for x in 0..SITES {
            let counts = self.site(x).branch_counts();
            ensure!(
                self,
                Some(x),
                "end of the run",
                counts == (0, 0),
                "every branch is decided and delivered, yet (active, prepared) = {counts:?}"
            );
        }
        // Checkpoint until every delivered record is in a checkpoint image.
        let target = self
            .deliveries
            .iter()
            .flatten()
            .map(|(_, l)| *l)
            .max()
            .unwrap_or(0);
        let mut periods = 0;
        while (0..SITES).any(|x| self.site(x).checkpoint_number() < target) {
            periods += 1;
            ensure!(
                self,
                None,
                "simulation",
                periods <= 3,
                "the checkpoints do not catch up with checkpoint {target}"
            );
            let mut order: Vec<u16> = (0..SITES).collect();
            order.shuffle(&mut self.rng);
            for x in order {
                self.checkpoint(x);
            }
        }
        for x in 0..SITES {
            let snap = table_of(&self.site(x).snapshot()).0;
            ensure!(
                self,
                Some(x),
                "model (final state)",
                snap == self.model[x as usize] && snap == self.applied[x as usize],
                "site state {}\nmodel (decision order) {}\nmodel (delivery order) {}",
                show(&snap),
                show(&self.model[x as usize]),
                show(&self.applied[x as usize])
            );
            let disk = self.read_disk(x);
            let (image, _) = table_of(&disk.cur.image);
            ensure!(
                self,
                Some(x),
                "final checkpoint image",
                image == self.model[x as usize],
                "CCP({}) holds {} but every committed transaction gives {}",
                disk.cur.n,
                show(&image),
                show(&self.model[x as usize])
            );
            let late: Vec<&Record> = disk
                .after
                .iter()
                .filter(|r| r.status == Status::Commit)
                .collect();
            ensure!(
                self,
                Some(x),
                "final checkpoint",
                late.is_empty(),
                "commit records left after the checkpoint that should hold them all: {late:?}"
            );
        }
        // Property 1 over the whole run.
        for t in 0..self.txns.len() {
            let txn = &self.txns[t];
            match txn.outcome {
                Outcome::Committed { gcpn, .. } => {
                    for x in 0..SITES {
                        let seen = txn.observed.get(&x).cloned().unwrap_or_default();
                        let want: BTreeSet<u64> = if txn.yes.contains(&x) {
                            [gcpn].into()
                        } else {
                            BTreeSet::new()
                        };
                        ensure!(
                            self,
                            Some(x),
                            "Property 1",
                            seen == want,
                            "transaction t{t} committed with GCPN {gcpn} (yes votes {:?}); commit records seen on this site's disk carried GCPNs {seen:?}",
                            txn.yes
                        );
                    }
                }
                Outcome::Aborted | Outcome::ReadOnly => ensure!(
                    self,
                    None,
                    "Property 1",
                    txn.observed.is_empty(),
                    "transaction t{t} ended {:?} but commit records were seen: {:?}",
                    txn.outcome,
                    txn.observed
                ),
                Outcome::Running => self.fail(None, "simulation", format!("t{t} still running")),
            }
        }
        // Restart every site from its files, then a rollback-recovery at each.
        for x in 0..SITES {
            self.crash(x);
        }
        for x in 0..SITES {
            self.rollback_recovery(x);
        }
        for x in 0..SITES {
            let s = self.sites[x as usize].take().expect("open");
            ensure!(
                self,
                Some(x),
                "simulation",
                Arc::strong_count(&s) == 1,
                "someone still holds the site"
            );
        }
    }

    // ---- transactions -----------------------------------------------------------

    fn start_txn(&mut self) {
        let id = self.txns.len();
        let k = self.rng.random_range(1..=SITES as usize);
        let mut parts: Vec<u16> = (0..SITES).collect();
        parts.shuffle(&mut self.rng);
        parts.truncate(k);
        let ops_left = k as u32 * self.rng.random_range(1..=3u32);
        let txn = Txn {
            gtrid: format!("t{id}"),
            parts: parts.clone(),
            ops_left,
            writes: parts.iter().map(|x| (*x, Writes::new())).collect(),
            yes: BTreeSet::new(),
            ended: BTreeSet::new(),
            disturbed: BTreeSet::new(),
            outcome: Outcome::Running,
            delivered: BTreeMap::new(),
            observed: BTreeMap::new(),
        };
        for &x in &parts {
            if let Err(e) = self.site(x).begin(&txn.xid(x)) {
                self.fail(
                    Some(x),
                    "begin",
                    format!("begin {} failed: {e}", txn.xid(x)),
                );
            }
        }
        self.txns.push(txn);
        self.active.push(id);
    }

    /// An operation failed: a lock timeout, or a branch lost (crash) or doomed
    /// (rollback-recovery) while the transaction ran. The transaction aborts.
    fn op_error(&mut self, t: usize, x: u16, what: &str, e: RmError) {
        let disturbed = self.txns[t].disturbed.contains(&x);
        match e {
            RmError::LockTimeout { .. } => self.c.lock_timeouts += 1,
            RmError::UnknownBranch(_) if disturbed => self.c.lost_branches += 1,
            RmError::Doomed(_) if disturbed => self.c.doomed += 1,
            e => self.fail(
                Some(x),
                "branch operation",
                format!("{what} in t{t} failed unexpectedly: {e:?}"),
            ),
        }
        self.abort_txn(t);
    }

    fn step_txn(&mut self, t: usize) {
        if self.txns[t].ops_left == 0 {
            self.two_phase_commit(t);
            return;
        }
        self.txns[t].ops_left -= 1;
        if self.rng.random_bool(0.03) {
            self.abort_txn(t);
            return;
        }
        let parts = self.txns[t].parts.clone();
        let x = parts[self.rng.random_range(0..parts.len())];
        let key = format!("k{}", self.rng.random_range(0..KEYS)).into_bytes();
        let xid = self.txns[t].xid(x);
        let own = self.txns[t].writes[&x].get(&key).cloned();
        let committed = self.applied[x as usize].get(&key).cloned();
        let current = own.clone().unwrap_or_else(|| committed.clone());
        let value = format!("t{t}.s{x}.{}", self.step).into_bytes();
        let kshow = String::from_utf8_lossy(&key).to_string();
        let site = self.site(x);
        let roll = self.rng.random_range(0..100u32);
        match roll {
            0..30 => match site.get(Some(&xid), TABLE, &key) {
                Ok(v) => {
                    ensure!(
                        self,
                        Some(x),
                        "serialisability (read)",
                        v == current,
                        "t{t} read {kshow} = {:?}, the model says {:?}",
                        v.map(|v| String::from_utf8_lossy(&v).to_string()),
                        current.map(|v| String::from_utf8_lossy(&v).to_string())
                    );
                    ensure!(
                        self,
                        Some(x),
                        "strict 2PL",
                        self.model[x as usize].get(&key) == committed.as_ref(),
                        "t{t} could lock {kshow} although a committed transaction that wrote it has not been told yet"
                    );
                }
                Err(e) => self.op_error(t, x, "get", e),
            },
            30..62 => match site.put(Some(&xid), TABLE, &key, &value) {
                Ok(()) => {
                    self.txns[t]
                        .writes
                        .entry(x)
                        .or_default()
                        .insert(key, Some(value));
                }
                Err(e) => self.op_error(t, x, "put", e),
            },
            62..80 => match site.delete(Some(&xid), TABLE, &key) {
                Ok(existed) => {
                    ensure!(
                        self,
                        Some(x),
                        "serialisability (delete)",
                        existed == current.is_some(),
                        "t{t} deleting {kshow}: the site says existed={existed}, the model says {current:?}"
                    );
                    if existed {
                        self.txns[t].writes.entry(x).or_default().insert(key, None);
                    }
                }
                Err(e) => self.op_error(t, x, "delete", e),
            },
            80..96 => match site.insert(Some(&xid), TABLE, &key, &value) {
                Ok(()) => {
                    ensure!(
                        self,
                        Some(x),
                        "serialisability (insert)",
                        current.is_none(),
                        "t{t} inserted {kshow}, which the model says exists: {current:?}"
                    );
                    self.txns[t]
                        .writes
                        .entry(x)
                        .or_default()
                        .insert(key, Some(value));
                }
                Err(RmError::Duplicate { .. }) => ensure!(
                    self,
                    Some(x),
                    "serialisability (insert)",
                    current.is_some(),
                    "t{t}: insert of {kshow} refused as a duplicate, but the model has no such row"
                ),
                Err(e) => self.op_error(t, x, "insert", e),
            },
            _ => match site.scan(Some(&xid), TABLE, b"", None, 1000) {
                Ok(rows) => {
                    let mut want = self.applied[x as usize].clone();
                    apply(&mut want, &self.txns[t].writes[&x]);
                    let got: Map = rows.into_iter().collect();
                    ensure!(
                        self,
                        Some(x),
                        "serialisability (scan)",
                        got == want,
                        "t{t} scanned {} but the model says {}",
                        show(&got),
                        show(&want)
                    );
                }
                Err(e) => self.op_error(t, x, "scan", e),
            },
        }
    }

    /// The coordinator: prepare every participant (Algorithm 1), decide, and send the
    /// decision (some deliveries at once, the others later, in any order).
    fn two_phase_commit(&mut self, t: usize) {
        let mut order = self.txns[t].parts.clone();
        order.shuffle(&mut self.rng);
        let mut votes = Vec::new();
        let mut no = false;
        for x in order {
            let site = self.site(x);
            let xid = self.txns[t].xid(x);
            let lcpn = site.lcpn();
            let has_writes = !self.txns[t].writes[&x].is_empty();
            match site.prepare(&xid) {
                Ok((true, cpn)) => {
                    ensure!(
                        self,
                        Some(x),
                        "prepare",
                        has_writes,
                        "t{t} voted yes with no write at this site"
                    );
                    ensure!(
                        self,
                        Some(x),
                        "Algorithm 1 (vote)",
                        cpn == lcpn + 1 || cpn == lcpn + 2,
                        "t{t}: the vote carries checkpoint number {cpn} at LCPN {lcpn}"
                    );
                    ensure!(
                        self,
                        Some(x),
                        "Algorithm 1 (vote)",
                        cpn >= self.max_gcpn_delivered[x as usize],
                        "t{t}: the vote carries {cpn}, below GCPN {} already committed here (a later transaction would land in an earlier checkpoint)",
                        self.max_gcpn_delivered[x as usize]
                    );
                    self.txns[t].yes.insert(x);
                    votes.push(cpn);
                }
                Ok((false, cpn)) => {
                    ensure!(
                        self,
                        Some(x),
                        "prepare",
                        !has_writes && cpn == 0,
                        "t{t} voted read-only ({cpn}) although it wrote {:?}",
                        self.txns[t].writes[&x]
                    );
                    self.txns[t].ended.insert(x);
                }
                Err(e) => {
                    let disturbed = self.txns[t].disturbed.contains(&x);
                    match e {
                        RmError::UnknownBranch(_) if disturbed => self.c.lost_branches += 1,
                        RmError::Doomed(_) if disturbed => self.c.doomed += 1,
                        e => self.fail(
                            Some(x),
                            "prepare",
                            format!("prepare of t{t} failed unexpectedly: {e:?}"),
                        ),
                    }
                    self.txns[t].ended.insert(x);
                    no = true;
                    break;
                }
            }
        }
        if no || self.rng.random_bool(0.03) {
            self.abort_txn(t);
            return;
        }
        self.active.retain(|a| *a != t);
        if votes.is_empty() {
            self.txns[t].outcome = Outcome::ReadOnly;
            self.c.read_only += 1;
            return;
        }
        let gcpn = votes.iter().copied().max().unwrap_or(0);
        let origin = self.txns[t].parts[0];
        self.txns[t].outcome = Outcome::Committed { gcpn, origin };
        self.c.committed += 1;
        let mut yes: Vec<u16> = self.txns[t].yes.iter().copied().collect();
        for &x in &yes {
            let w = self.txns[t].writes[&x].clone();
            apply(&mut self.model[x as usize], &w);
        }
        yes.shuffle(&mut self.rng);
        for x in yes {
            self.pending.push(Pending { txn: t, site: x });
            if self.rng.random_bool(P_DELIVER_AT_ONCE) {
                let i = self.pending.len() - 1;
                self.deliver(i);
            } else {
                self.c.delayed += 1;
            }
        }
    }

    fn abort_txn(&mut self, t: usize) {
        self.active.retain(|a| *a != t);
        self.txns[t].outcome = Outcome::Aborted;
        self.c.aborted += 1;
        let parts = self.txns[t].parts.clone();
        for x in parts {
            if self.txns[t].yes.contains(&x) {
                self.pending.push(Pending { txn: t, site: x });
                if self.rng.random_bool(0.5) {
                    let i = self.pending.len() - 1;
                    self.deliver(i);
                }
                continue;
            }
            let xid = self.txns[t].xid(x);
            let gone = self.txns[t].ended.contains(&x) || self.txns[t].disturbed.contains(&x);
            match self.site(x).rollback(&xid) {
                Ok(()) => {}
                Err(RmError::UnknownBranch(_)) if gone => {}
                Err(e) => self.fail(
                    Some(x),
                    "rollback",
                    format!("rollback of the active branch {xid} failed: {e:?}"),
                ),
            }
        }
    }

    /// Delivers the decision `pending[i]`.
    fn deliver(&mut self, i: usize) {
        let Pending { txn: t, site: x } = self.pending.remove(i);
        let site = self.site(x);
        let xid = self.txns[t].xid(x);
        match self.txns[t].outcome {
            Outcome::Committed { gcpn, origin } => {
                let d = site.lcpn();
                ensure!(
                    self,
                    Some(x),
                    "simulation (bounded delay)",
                    d <= gcpn,
                    "t{t} with GCPN {gcpn} delivered at LCPN {d}"
                );
                if let Err(e) = site.commit(&xid, gcpn, origin) {
                    self.fail(
                        Some(x),
                        "Property 1 (commit)",
                        format!("commit of the prepared branch {xid} failed: {e:?}"),
                    );
                }
                self.txns[t].delivered.insert(x, d);
                self.deliveries[x as usize].push((t, gcpn.max(d + 1)));
                let w = self.txns[t].writes[&x].clone();
                apply(&mut self.applied[x as usize], &w);
                let m = &mut self.max_gcpn_delivered[x as usize];
                *m = (*m).max(gcpn);
                let snap = table_of(&site.snapshot()).0;
                ensure!(
                    self,
                    Some(x),
                    "model (after a commit)",
                    snap == self.applied[x as usize],
                    "after committing t{t}: site {} model {}",
                    show(&snap),
                    show(&self.applied[x as usize])
                );
            }
            Outcome::Aborted => {
                if let Err(e) = site.rollback(&xid) {
                    self.fail(
                        Some(x),
                        "rollback",
                        format!("rollback of the prepared branch {xid} failed: {e:?}"),
                    );
                }
            }
            o => self.fail(Some(x), "simulation", format!("t{t} pending while {o:?}")),
        }
    }

    // ---- checkpoints --------------------------------------------------------------

    fn checkpoint(&mut self, x: u16) {
        self.checkpoint_with(x, true)
    }

    /// Site x takes its checkpoint of this period (Algorithm 2). With `crashes`, the
    /// site may die inside it: while the new checkpoint is being built (after the log
    /// switch, perhaps a while later with more entries in the new generation) or once
    /// its file is in place, before the old files are removed.
    fn checkpoint_with(&mut self, x: u16, crashes: bool) {
        if self.mid[x as usize].is_some() {
            self.fire_mid_checkpoint_crash(x);
        }
        let site = self.site(x);
        let lcpn = site.lcpn();
        drop(site);
        // Bounded message delay (the paper's assumption): a decision reaches a site
        // before it takes the checkpoint after the transaction's GCPN.
        loop {
            let due = self.pending.iter().position(|p| {
                p.site == x
                    && matches!(self.txns[p.txn].outcome, Outcome::Committed { gcpn, .. } if gcpn <= lcpn)
            });
            match due {
                Some(i) => {
                    self.c.forced += 1;
                    self.deliver(i);
                }
                None => break,
            }
        }
        let queued = self.links.len();
        let roll = if crashes {
            self.rng.random_range(0..100u32)
        } else {
            100
        };
        let mid_crash = roll < P_CRASH_IN_CHECKPOINT;
        let cleanup_crash = !mid_crash && roll < 2 * P_CRASH_IN_CHECKPOINT;
        let site = self.site(x);
        let dir = site.dir().to_path_buf();
        // The files as they are before the checkpoint: what a crash inside it leaves.
        let mut before: Vec<(PathBuf, Vec<u8>)> = Vec::new();
        if mid_crash || cleanup_crash {
            for e in std::fs::read_dir(&dir)
                .expect("list the site's files")
                .flatten()
            {
                let name = e.file_name().to_string_lossy().to_string();
                if tpmon_rm::checkpoint::parse_ccp_name(&name).is_some()
                    || tpmon_rm::oplog::parse_log_name(&name).is_some()
                {
                    before.push((e.path(), std::fs::read(e.path()).expect("read")));
                }
            }
        }
        self.c.checkpoints += 1;
        let n = site.checkpoint_now().unwrap_or_else(|e| {
            self.fail(
                Some(x),
                "Algorithm 2",
                format!("checkpoint {} failed: {e}", lcpn + 1),
            )
        });
        ensure!(
            self,
            Some(x),
            "Algorithm 2",
            n == lcpn + 1 && site.lcpn() == n && site.checkpoint_number() == n,
            "checkpoint at LCPN {lcpn} returned {n}; LCPN now {}, newest checkpoint {}",
            site.lcpn(),
            site.checkpoint_number()
        );
        ensure!(
            self,
            Some(x),
            "Table 1 (no message to checkpoint)",
            self.links.len() == queued
                && site.stats.checkpoint_messages.load(Ordering::Relaxed) == 0,
            "taking checkpoint {n} sent messages"
        );
        ensure!(
            self,
            Some(x),
            "bounded delay",
            site.stats.late_records.load(Ordering::Relaxed) == 0,
            "the site counted late records although every decision arrived in time"
        );
        drop(site);
        if cleanup_crash {
            // Every old file is still there: the removals had not happened.
            self.c.crash_before_cleanup += 1;
            let edit = move |_: &Path| {
                for (path, bytes) in &before {
                    if !path.exists() {
                        std::fs::write(path, bytes).expect("restore a file");
                    }
                }
            };
            self.crash_restart(x, Some(&edit), n, &[n], false);
        } else if mid_crash {
            // The site dies before the file of checkpoint n is in place, at once or
            // a few steps later (building it took long; the site went on meanwhile).
            let delay = self.rng.random_range(0..8u64);
            self.mid[x as usize] = Some(MidCheckpoint {
                n,
                before,
                fire_at: self.step + delay,
            });
            if delay == 0 {
                self.fire_mid_checkpoint_crash(x);
            }
        }
        let lcpns: Vec<u64> = (0..SITES).map(|y| self.site(y).lcpn()).collect();
        let spread = lcpns.iter().max().unwrap_or(&0) - lcpns.iter().min().unwrap_or(&0);
        ensure!(
            self,
            None,
            "simulation (|LCPN_x - LCPN_y| <= 1)",
            spread <= 1,
            "LCPNs {lcpns:?}"
        );
        self.check_files(x, "after a checkpoint", true);
    }

    /// The crash scheduled inside checkpoint n at site x: the files are put back as
    /// they were when the site died, after the log switch but before `ccp.<n>` was in
    /// place (anything logged since is in generation n), and the site restarts.
    fn fire_mid_checkpoint_crash(&mut self, x: u16) {
        let Some(mid) = self.mid[x as usize].take() else {
            return;
        };
        let n = mid.n;
        self.c.crash_in_checkpoint += 1;
        let site = self.site(x);
        ensure!(
            self,
            Some(x),
            "simulation",
            site.checkpoint_number() == n,
            "a crash inside checkpoint {n} scheduled, but the site is at {}",
            site.checkpoint_number()
        );
        let dir = site.dir().to_path_buf();
        drop(site);
        let begun = std::fs::metadata(dir.join(log_name(n))).is_ok_and(|m| m.len() > 0);
        if begun {
            self.c.crash_in_checkpoint_begun += 1;
        }
        let half = self.rng.random_bool(0.5);
        let junk: Vec<u8> = (0..self.rng.random_range(1..200usize))
            .map(|_| self.rng.random())
            .collect();
        let before = mid.before;
        let edit = move |dir: &Path| {
            let _ = std::fs::remove_file(dir.join(ccp_name(n)));
            // A next generation made ahead of time by checkpoint n did not exist yet.
            let next = dir.join(log_name(n + 1));
            if std::fs::metadata(&next).is_ok_and(|m| m.len() == 0) {
                let _ = std::fs::remove_file(&next);
            }
            for (path, bytes) in &before {
                if !path.exists() {
                    std::fs::write(path, bytes).expect("restore a file");
                }
            }
            // Generation n exists from the switch on.
            let gen_n = dir.join(log_name(n));
            if !gen_n.exists() {
                std::fs::write(&gen_n, b"").expect("log file");
            }
            if half {
                std::fs::write(dir.join(format!("{}.tmp", ccp_name(n))), &junk).expect("tmp file");
            }
        };
        // With something logged in generation n, the checkpoint had begun and
        // restart must finish it; with nothing there, restarting at n-1 (the
        // checkpoint never happened) is as good.
        let to: Vec<u64> = if begun { vec![n] } else { vec![n - 1, n] };
        self.crash_restart(x, Some(&edit), n - 1, &to, false);
        if self.site(x).checkpoint_number() + 1 == n {
            // The checkpoint of this period is still to be taken.
            self.checkpoint_with(x, false);
        }
    }

    fn read_disk(&self, x: u16) -> Disk {
        let site = self.site(x);
        let dir = site.dir().to_path_buf();
        let n = site.checkpoint_number();
        let io =
            |what: &str, e: RmError| -> ! { self.fail(Some(x), "files", format!("{what}: {e}")) };
        let ccps = checkpoints(&dir).unwrap_or_else(|e| io("listing checkpoints", e));
        let gens = generations(&dir).unwrap_or_else(|e| io("listing log generations", e));
        let cur =
            Checkpoint::read(&dir.join(ccp_name(n))).unwrap_or_else(|e| io("reading CCP(n)", e));
        let prev = if n >= 1 && ccps.contains(&(n - 1)) {
            Some(
                Checkpoint::read(&dir.join(ccp_name(n - 1)))
                    .unwrap_or_else(|e| io("reading CCP(n-1)", e)),
            )
        } else {
            None
        };
        let mut m = Merger::new();
        for r in cur.carry.iter().cloned() {
            m.add_record(r);
        }
        for g in gens.iter().filter(|g| **g >= n) {
            let log =
                read_log(&dir.join(log_name(*g))).unwrap_or_else(|e| io("reading the log", e));
            for e in log.entries {
                m.add_entry(e);
            }
        }
        Disk {
            ccps,
            gens,
            prev,
            cur,
            after: m.finish(),
        }
    }

    /// The state CCP_x(m) must hold: the deliveries at x that belong to checkpoints
    /// up to m, replayed in delivery order.
    fn expected_image(&self, x: u16, m: u64) -> Map {
        let mut img = Map::new();
        for &(t, l) in &self.deliveries[x as usize] {
            if l <= m {
                apply(&mut img, &self.txns[t].writes[&x]);
            }
        }
        img
    }

    fn is_pending(&self, t: usize, x: u16) -> bool {
        self.pending.iter().any(|p| p.txn == t && p.site == x)
    }

    /// Checks site x's files against what the coordinator decided and delivered.
    fn check_files(&mut self, x: u16, ctx: &str, count: bool) {
        let site = self.site(x);
        let n = site.checkpoint_number();
        ensure!(
            self,
            Some(x),
            "LCPN",
            site.lcpn() == n,
            "{ctx}: LCPN {} but the newest checkpoint is {n}",
            site.lcpn()
        );
        drop(site);
        let disk = self.read_disk(x);
        let want: Vec<u64> = if n == 0 { vec![0] } else { vec![n - 1, n] };
        ensure!(
            self,
            Some(x),
            "two checkpoints on stable storage",
            disk.ccps == want,
            "{ctx}: checkpoint files {:?}, expected {want:?}",
            disk.ccps
        );
        ensure!(
            self,
            Some(x),
            "storage (log after CCP(n) only)",
            disk.gens.iter().all(|g| *g >= n),
            "{ctx}: log generations {:?} kept with checkpoint {n}",
            disk.gens
        );
        ensure!(
            self,
            Some(x),
            "checkpoint file",
            disk.cur.n == n && disk.cur.site == x,
            "{ctx}: ccp.{n} says site {} checkpoint {}",
            disk.cur.site,
            disk.cur.n
        );
        // Every record on disk, with where it is.
        let mut seen: Vec<(Place, &Record)> = Vec::new();
        if let Some(p) = &disk.prev {
            seen.extend(p.delta.iter().map(|(r, cl)| (Place::Prev(*cl), r)));
        }
        seen.extend(disk.cur.delta.iter().map(|(r, cl)| (Place::Cur(*cl), r)));
        seen.extend(disk.after.iter().map(|r| (Place::After, r)));
        let mut lsns: BTreeMap<u64, Vec<(Place, String)>> = BTreeMap::new();
        // (transaction, key) -> where its record is, with what status.
        let mut by_key: BTreeMap<(usize, Vec<u8>), Found> = BTreeMap::new();
        for &(place, r) in &seen {
            lsns.entry(r.lsn).or_default().push((place, r.tid.clone()));
            let Some((t, bx)) = parse_tid(&r.tid) else {
                self.fail(
                    Some(x),
                    "records",
                    format!("{ctx}: a record of an unknown branch: {r:?}"),
                )
            };
            ensure!(
                self,
                Some(x),
                "records",
                bx == x && t < self.txns.len(),
                "{ctx}: a record of another site's branch or an unknown transaction: {r:?}"
            );
            let txn = &self.txns[t];
            let w = txn.writes.get(&x).and_then(|w| w.get(&r.key));
            let matches = match w {
                Some(Some(v)) => r.op == Op::Put && &r.after == v && r.table == TABLE,
                Some(None) => r.op == Op::Delete && r.after.is_empty() && r.table == TABLE,
                None => false,
            };
            ensure!(
                self,
                Some(x),
                "records",
                matches,
                "{ctx}: {place:?} record {r:?} is not in t{t}'s write set {:?}",
                txn.writes.get(&x)
            );
            by_key
                .entry((t, r.key.clone()))
                .or_default()
                .push((place, r.status));
            match r.status {
                Status::Commit => {
                    let Outcome::Committed { gcpn, origin } = txn.outcome else {
                        self.fail(
                            Some(x),
                            "Property 1 (same outcome)",
                            format!("{ctx}: t{t} is {:?} but this site holds a commit record {r:?} ({place:?})", txn.outcome),
                        )
                    };
                    ensure!(
                        self,
                        Some(x),
                        "Property 1 (same GCPN)",
                        r.gcpn == gcpn && r.origin == origin,
                        "{ctx}: t{t} committed with GCPN {gcpn} from site {origin}; the record says GCPN {} origin {} ({place:?})",
                        r.gcpn,
                        r.origin
                    );
                    ensure!(
                        self,
                        Some(x),
                        "commit durability",
                        txn.delivered.contains_key(&x),
                        "{ctx}: a commit record of t{t} that was never delivered here: {r:?}"
                    );
                    match place {
                        Place::Prev(cl) => ensure!(
                            self,
                            Some(x),
                            "Algorithm 2 (delta of CCP(n-1))",
                            n >= 1 && (r.gcpn + 1 == n && !cl || r.gcpn + 2 == n && cl),
                            "{ctx}: ccp.{} holds {r:?} with compensation flag {cl}",
                            n.saturating_sub(1)
                        ),
                        Place::Cur(cl) => ensure!(
                            self,
                            Some(x),
                            "Algorithm 2 (delta of CCP(n))",
                            r.gcpn == n && !cl || r.gcpn + 1 == n && cl,
                            "{ctx}: ccp.{n} holds {r:?} with compensation flag {cl}"
                        ),
                        Place::After => ensure!(
                            self,
                            Some(x),
                            "Theorem 2",
                            r.gcpn >= n && r.gcpn <= n + 2,
                            "{ctx}: LCPN {n} but a commit record after CCP({n}) has GCPN {}: {r:?}",
                            r.gcpn
                        ),
                    }
                    self.txns[t].observed.entry(x).or_default().insert(r.gcpn);
                }
                Status::Undecided => {
                    let ok = place == Place::After
                        && match txn.outcome {
                            Outcome::Committed { .. } => !txn.delivered.contains_key(&x),
                            Outcome::Aborted => txn.yes.contains(&x),
                            _ => false,
                        };
                    ensure!(
                        self,
                        Some(x),
                        "records (undecided)",
                        ok,
                        "{ctx}: t{t} is {:?} (delivered here: {}) but its record is undecided: {r:?} ({place:?})",
                        txn.outcome,
                        txn.delivered.contains_key(&x)
                    );
                }
                Status::Abort => ensure!(
                    self,
                    Some(x),
                    "Property 1 (same outcome)",
                    place == Place::After && txn.outcome == Outcome::Aborted,
                    "{ctx}: t{t} is {:?} but its record is aborted: {r:?} ({place:?})",
                    txn.outcome
                ),
            }
            if count && place == Place::Cur(true) {
                self.c.compensation += 1;
            }
            if count && place == Place::Cur(false) {
                self.c.stored += 1;
            }
            if count && place == Place::After && r.status == Status::Commit {
                self.c.carried += 1;
            }
        }
        for (lsn, at) in &lsns {
            ensure!(
                self,
                Some(x),
                "exactly once (LSN)",
                at.len() == 1,
                "{ctx}: LSN {lsn} appears {} times: {at:?}",
                at.len()
            );
        }
        // Every branch of this site: its records where they must be, exactly once.
        for t in 0..self.txns.len() {
            let txn = &self.txns[t];
            if !txn.yes.contains(&x) {
                continue;
            }
            for key in txn.writes[&x].keys() {
                let found = by_key.get(&(t, key.clone())).cloned().unwrap_or_default();
                let kshow = String::from_utf8_lossy(key);
                match (txn.outcome, txn.delivered.get(&x)) {
                    (Outcome::Committed { gcpn, .. }, Some(&d)) => {
                        let l = gcpn.max(d + 1);
                        ensure!(
                            self,
                            Some(x),
                            "Theorem 1",
                            l <= gcpn + 1,
                            "t{t} with GCPN {gcpn} was decided here at LCPN {d}: it can be neither in CCP({gcpn}) nor in CL({gcpn})"
                        );
                        let want: Vec<(Place, Status)> = if l + 1 < n {
                            vec![]
                        } else if l + 1 == n {
                            vec![(Place::Prev(gcpn < l), Status::Commit)]
                        } else if l == n {
                            vec![(Place::Cur(gcpn < l), Status::Commit)]
                        } else {
                            vec![(Place::After, Status::Commit)]
                        };
                        ensure!(
                            self,
                            Some(x),
                            if l <= n { "Theorem 1 / exactly once" } else { "exactly once (after CCP(n))" },
                            found == want,
                            "{ctx}: t{t} (GCPN {gcpn}, delivered at LCPN {d}, so in {} of ccp.{l}) record for {kshow}: expected at {want:?}, found at {found:?} (newest checkpoint {n})",
                            if gcpn < l { format!("CL({gcpn}), stored with") } else { "the delta".to_string() }
                        );
                    }
                    (Outcome::Committed { .. }, None) => ensure!(
                        self,
                        Some(x),
                        "prepared branch durable",
                        found == vec![(Place::After, Status::Undecided)],
                        "{ctx}: t{t} committed, decision not yet delivered here; record for {kshow} found at {found:?}"
                    ),
                    (Outcome::Aborted, _) if self.is_pending(t, x) => ensure!(
                        self,
                        Some(x),
                        "prepared branch durable",
                        found == vec![(Place::After, Status::Undecided)],
                        "{ctx}: t{t} aborted, decision not yet delivered here; record for {kshow} found at {found:?}"
                    ),
                    (Outcome::Aborted, _) => ensure!(
                        self,
                        Some(x),
                        "aborted records",
                        found.len() <= 1 && found.iter().all(|(p, s)| *p == Place::After && *s != Status::Commit),
                        "{ctx}: t{t} aborted; record for {kshow} found at {found:?}"
                    ),
                    (o, _) => self.fail(
                        Some(x),
                        "simulation",
                        format!("t{t} voted yes here but is {o:?}"),
                    ),
                }
            }
        }
        // The images: CCP(n-1) and CCP(n) hold exactly the deliveries up to them.
        let mut images = vec![(n, &disk.cur)];
        if let Some(p) = &disk.prev {
            images.push((n - 1, p));
        }
        for (m, c) in images {
            let (img, others) = table_of(&c.image);
            let want = self.expected_image(x, m);
            ensure!(
                self,
                Some(x),
                "checkpoint image (CCP(n) consistent)",
                img == want && others.is_empty(),
                "{ctx}: ccp.{m} image {} (other tables {others:?}), expected {}",
                show(&img),
                show(&want)
            );
        }
    }

    // ---- failures ---------------------------------------------------------------------

    /// The site loses its memory and restarts from its files; now and then a write
    /// of the log was torn by the crash.
    fn crash(&mut self, x: u16) {
        if self.mid[x as usize].is_some() {
            self.fire_mid_checkpoint_crash(x);
            return;
        }
        let n = self.site(x).checkpoint_number();
        if self.torn && self.rng.random_bool(0.3) {
            // A log append under way when the site died: part of one frame at the end
            // of the active generation (never acknowledged: a decision that will be
            // sent again, or an entry of no consequence).
            let entry = LogEntry::Decision {
                lsn: u64::MAX,
                tid: format!("torn|{x}"),
                commit: true,
                gcpn: 1,
                origin: x,
            };
            let bytes = frame(&entry.encode());
            let cut = self.rng.random_range(1..bytes.len());
            let active = log_name(self.site(x).lcpn());
            let edit = move |dir: &Path| {
                let path = dir.join(&active);
                let mut data = std::fs::read(&path).expect("read the active log");
                data.extend_from_slice(&bytes[..cut]);
                std::fs::write(&path, data).expect("tear the log");
            };
            self.c.torn_tails += 1;
            self.crash_restart(x, Some(&edit), n, &[n], true);
        } else {
            self.crash_restart(x, None, n, &[n], false);
        }
    }

    /// Drops site x (losing its memory), lets `edit` change its files as the crash
    /// left them, reopens it and checks what restart recovery made of it: it restored
    /// CCP(`from`) and is at checkpoint `to` now.
    fn crash_restart(
        &mut self,
        x: u16,
        edit: Option<&dyn Fn(&Path)>,
        from: u64,
        to: &[u64],
        torn: bool,
    ) {
        self.c.crashes += 1;
        for &t in &self.active {
            if self.txns[t].parts.contains(&x) {
                self.txns[t].disturbed.insert(x);
            }
        }
        let old = self.sites[x as usize].take().expect("open");
        let dir = old.dir().to_path_buf();
        let lcpn_old = old.lcpn();
        ensure!(
            self,
            Some(x),
            "simulation",
            Arc::strong_count(&old) == 1,
            "someone still holds the site: it cannot be dropped"
        );
        drop(old);
        let active_log = dir.join(log_name(lcpn_old));
        let log_len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let len_before = log_len(&active_log);
        if let Some(edit) = edit {
            edit(&dir);
        }
        let rep = self.open(x);
        let site = self.site(x);
        ensure!(
            self,
            Some(x),
            "restart recovery",
            rep.checkpoint == from
                && site.lcpn() == site.checkpoint_number()
                && to.contains(&site.checkpoint_number()),
            "restarted from checkpoint {} and is at LCPN {} / checkpoint {}; expected CCP({from}), then one of {to:?}",
            rep.checkpoint,
            site.lcpn(),
            site.checkpoint_number()
        );
        let want_torn = if torn {
            vec![(active_log.clone(), len_before)]
        } else {
            vec![]
        };
        let got_torn: Vec<(PathBuf, u64)> =
            rep.torn.iter().map(|(p, o, _)| (p.clone(), *o)).collect();
        ensure!(
            self,
            Some(x),
            "restart recovery (torn tail)",
            got_torn == want_torn && (!torn || log_len(&active_log) == len_before),
            "torn tails reported {:?}, expected {want_torn:?}; the log is {} bytes, was {len_before} before the crash",
            rep.torn,
            log_len(&active_log)
        );
        let back: BTreeSet<String> = site.recover("").into_iter().collect();
        ensure!(
            self,
            Some(x),
            "restart recovery (in doubt)",
            back.len() == rep.in_doubt,
            "report says {} in doubt, recover lists {back:?}",
            rep.in_doubt
        );
        let expected: BTreeSet<String> = self
            .pending
            .iter()
            .filter(|p| p.site == x)
            .map(|p| self.txns[p.txn].xid(x))
            .collect();
        let missing: Vec<&String> = expected.difference(&back).collect();
        ensure!(
            self,
            Some(x),
            "restart recovery (prepared branches survive)",
            missing.is_empty(),
            "prepared branches awaiting their decision were lost in the crash: {missing:?} (back: {back:?})"
        );
        self.c.in_doubt += expected.len() as u64;
        for xid in back.difference(&expected) {
            let ok = parse_tid(xid).is_some_and(|(t, bx)| {
                bx == x
                    && t < self.txns.len()
                    && self.txns[t].outcome == Outcome::Aborted
                    && self.txns[t].yes.contains(&x)
            });
            ensure!(
                self,
                Some(x),
                "restart recovery (in doubt)",
                ok,
                "{xid} came back prepared, but only a rolled-back branch whose abort record was not yet written may"
            );
            // Presumed abort: the coordinator rolls it back again.
            if let Err(e) = site.rollback(xid) {
                self.fail(
                    Some(x),
                    "restart recovery",
                    format!("rollback of the in-doubt branch {xid}: {e}"),
                );
            }
            self.c.lost_aborts += 1;
        }
        let snap = table_of(&site.snapshot()).0;
        ensure!(
            self,
            Some(x),
            "model (after restart recovery)",
            snap == self.applied[x as usize] && site.audit(),
            "restarted state {}\nmodel (delivered here) {}",
            show(&snap),
            show(&self.applied[x as usize])
        );
        drop(site);
        self.oracle_lists[x as usize].clear();
        self.check_files(x, "after restart", false);
    }

    /// The records after restore point CCP_k(m), as Algorithms 3 and 4 read them.
    fn records_after_point(&self, k: u16, m: u64) -> Vec<Record> {
        let site = self.site(k);
        let dir = site.dir().to_path_buf();
        let newest = site.checkpoint_number();
        let io = |e: RmError| -> ! { self.fail(Some(k), "files", format!("{e}")) };
        let top = Checkpoint::read(&dir.join(ccp_name(newest))).unwrap_or_else(|e| io(e));
        let mut merger = Merger::new();
        if m + 1 == newest {
            for (r, _) in top.delta {
                merger.add_record(r);
            }
        } else if m != newest {
            self.fail(
                Some(k),
                "Theorem 3",
                format!("restore point {m} with newest checkpoint {newest}"),
            );
        }
        for r in top.carry {
            merger.add_record(r);
        }
        for g in generations(&dir).unwrap_or_else(|e| io(e)) {
            if g >= newest {
                for e in read_log(&dir.join(log_name(g)))
                    .unwrap_or_else(|e| io(e))
                    .entries
                {
                    merger.add_entry(e);
                }
            }
        }
        merger.finish()
    }

    fn events(&self, x: u16) -> Vec<RedoEvent> {
        self.site(x).redo_events()
    }

    /// Algorithm 3 at x, and Algorithm 4 at every site a redo reaches, until no redo
    /// message is left.
    fn rollback_recovery(&mut self, x: u16) {
        self.c.recoveries += 1;
        ensure!(
            self,
            None,
            "simulation",
            self.links.len() == 0,
            "redo messages left over"
        );
        let before: Vec<usize> = (0..SITES).map(|s| self.events(s).len()).collect();
        let site = self.site(x);
        let n = site.checkpoint_number();
        let r = site.recover_failed();
        drop(site);
        match r {
            Ok(m) => ensure!(
                self,
                Some(x),
                "Algorithm 3",
                m == n,
                "recover_failed restored {m}, the site's LCPN is {n}"
            ),
            Err(e) => self.fail(
                Some(x),
                "Algorithm 3 / Theorem 4",
                format!("recover_failed at LCPN {n} failed: {e}"),
            ),
        }
        let mut touched: BTreeSet<u16> = [x].into();
        // The oracle: whom Algorithm 3 must ask.
        let recs = self.records_after_point(x, n);
        let mut want = Vec::new();
        {
            let list = self.oracle_lists[x as usize].entry(n).or_default();
            for r in &recs {
                if r.status == Status::Commit
                    && r.origin != NO_ORIGIN
                    && r.origin != x
                    && list.insert(r.origin)
                {
                    want.push(r.origin);
                }
            }
        }
        self.check_redo_call(x, before[x as usize], 0, &[], &want, n, "Algorithm 3");
        // Deliver the redo messages, in any order.
        while self.links.len() > 0 {
            let i = self.rng.random_range(0..self.links.len());
            let (from, to, m) = self.links.take(i);
            ensure!(
                self,
                Some(from),
                "Algorithms 3/4 (redo message)",
                m == n && from != to && to < SITES,
                "redo({from} -> {to}, {m}) during the recovery of site {x} at checkpoint {n}"
            );
            let k = to;
            let site = self.site(k);
            let ev0 = site.redo_events().len();
            let q0 = self.links.len();
            let lcpn_k = site.checkpoint_number();
            let res = site.on_redo(from, m);
            drop(site);
            let res = res.unwrap_or_else(|e| {
                self.fail(
                    Some(k),
                    "Algorithm 4 / Theorem 4",
                    format!("on_redo({from}, {m}) at LCPN {lcpn_k} failed: {e}"),
                )
            });
            let fresh = self.oracle_lists[k as usize]
                .entry(m)
                .or_default()
                .insert(from);
            if !fresh {
                ensure!(
                    self,
                    Some(k),
                    "Algorithm 4 (Site_id_list)",
                    res.is_none(),
                    "a second redo({m}) from site {from} was acted on (restored {res:?})"
                );
                self.check_redo_call(
                    k,
                    ev0,
                    q0,
                    &[RedoEvent::Ignored { n: m, from }],
                    &[],
                    m,
                    "Algorithm 4 (ignored)",
                );
                continue;
            }
            let restored = if lcpn_k < m { m - 1 } else { m };
            ensure!(
                self,
                Some(k),
                "Theorem 3",
                res == Some(restored) && lcpn_k + 1 >= m && lcpn_k <= m + 1,
                "redo({m}) from {from} at LCPN {lcpn_k}: restored {res:?}, expected Some({restored})"
            );
            touched.insert(k);
            let recs = self.records_after_point(k, restored);
            let mut want = Vec::new();
            {
                let list = self.oracle_lists[k as usize].entry(m).or_default();
                for r in &recs {
                    let send = lcpn_k >= m || r.gcpn >= m;
                    if r.status == Status::Commit
                        && send
                        && r.origin != NO_ORIGIN
                        && r.origin != k
                        && list.insert(r.origin)
                    {
                        want.push(r.origin);
                    }
                }
            }
            self.check_redo_call(
                k,
                ev0,
                q0,
                &[RedoEvent::Acted {
                    n: m,
                    from,
                    restored,
                }],
                &want,
                m,
                "Algorithm 4",
            );
            let snap = table_of(&self.site(k).snapshot()).0;
            ensure!(
                self,
                Some(k),
                "model (after Algorithm 4)",
                snap == self.applied[k as usize],
                "state {} model {}",
                show(&snap),
                show(&self.applied[k as usize])
            );
        }
        // Theorems 4 and 5 over this recovery's events.
        for s in 0..SITES {
            let ev: Vec<RedoEvent> = self.events(s).split_off(before[s as usize]);
            let mut sent: BTreeMap<(u64, u16), u32> = BTreeMap::new();
            let mut acted: BTreeMap<(u64, u16), u32> = BTreeMap::new();
            for e in &ev {
                match *e {
                    RedoEvent::Sent { n: m, to } => {
                        self.c.redo_sent += 1;
                        ensure!(self, Some(s), "Theorem 5", to != s, "sent a redo to itself");
                        *sent.entry((m, to)).or_default() += 1;
                    }
                    RedoEvent::Acted {
                        n: m,
                        from,
                        restored,
                    } => {
                        self.c.redo_acted += 1;
                        if restored < m {
                            self.c.restored_previous += 1;
                        }
                        ensure!(
                            self,
                            Some(s),
                            "Theorem 4 (no domino effect)",
                            restored + 1 >= n && restored <= m && m == n,
                            "restored checkpoint {restored} for redo({m}) from {from}; site {x} failed at LCPN {n}"
                        );
                        *acted.entry((m, from)).or_default() += 1;
                    }
                    RedoEvent::Ignored { .. } => self.c.redo_ignored += 1,
                }
            }
            for ((m, to), c) in sent {
                ensure!(
                    self,
                    Some(s),
                    "Theorem 5 (no cyclic restart)",
                    c <= 1,
                    "sent {c} redo({m}) requests to site {to} in one recovery"
                );
            }
            for ((m, from), c) in acted {
                ensure!(
                    self,
                    Some(s),
                    "Theorem 5 (no cyclic restart)",
                    c <= 1,
                    "acted on {c} redo({m}) requests from site {from} in one recovery"
                );
            }
        }
        for &t in &self.active {
            for s in &touched {
                if self.txns[t].parts.contains(s) {
                    self.txns[t].disturbed.insert(*s);
                }
            }
        }
        for s in 0..SITES {
            let site = self.site(s);
            let snap = table_of(&site.snapshot()).0;
            ensure!(
                self,
                Some(s),
                "model (after rollback-recovery)",
                snap == self.applied[s as usize] && site.audit(),
                "after the recovery of site {x}: state {} model (delivered here) {}",
                show(&snap),
                show(&self.applied[s as usize])
            );
            drop(site);
            self.check_files(s, "after rollback-recovery", false);
        }
    }

    /// The events one redo call added at site k, and the messages it queued, are
    /// `head` followed by one Sent per site of `to`.
    #[allow(clippy::too_many_arguments)]
    fn check_redo_call(
        &self,
        k: u16,
        ev0: usize,
        q0: usize,
        head: &[RedoEvent],
        to: &[u16],
        n: u64,
        what: &str,
    ) {
        let got: Vec<RedoEvent> = self.events(k).split_off(ev0);
        let mut want: Vec<RedoEvent> = head.to_vec();
        want.extend(to.iter().map(|&t| RedoEvent::Sent { n, to: t }));
        let (mut g, mut w) = (got.clone(), want.clone());
        let key = |e: &RedoEvent| format!("{e:?}");
        g.sort_by_key(key);
        w.sort_by_key(key);
        ensure!(
            self,
            Some(k),
            what,
            g == w,
            "redo events {got:?}, the algorithm prescribes {want:?} for the records on disk"
        );
        let mut queued = self.links.from(q0);
        queued.sort_unstable();
        let mut msgs: Vec<(u16, u16, u64)> = to.iter().map(|&t| (k, t, n)).collect();
        msgs.sort_unstable();
        ensure!(
            self,
            Some(k),
            what,
            queued == msgs,
            "messages queued {queued:?}, expected {msgs:?}"
        );
    }
}

fn torn_tails_on() -> bool {
    std::env::var("TPMON_SIM_TORN").map_or(true, |v| v.trim() != "0")
}

fn run_seed(seed: u64) -> Counters {
    println!("simulation seed {seed}");
    let mut sim = Sim::new(seed);
    let r = catch_unwind(AssertUnwindSafe(|| sim.run()));
    match r {
        Ok(()) => {
            let _ = std::fs::remove_dir_all(&sim.root);
            sim.c
        }
        Err(p) => {
            eprintln!(
                "simulation seed {seed} failed at step {}; replay with TPMON_SIM_SEED={seed} cargo test -p tpmon-rm --test simulation; the sites' files are in {}",
                sim.step,
                sim.root.display()
            );
            resume_unwind(p)
        }
    }
}

#[test]
fn three_sites_checkpoints_crashes_and_rollback_recovery() {
    let started = Instant::now();
    let one: Option<u64> = std::env::var("TPMON_SIM_SEED")
        .ok()
        .map(|s| s.trim().parse().expect("TPMON_SIM_SEED is a number"));
    let count: u64 = std::env::var("TPMON_SIM_SEEDS")
        .ok()
        .map(|s| s.trim().parse().expect("TPMON_SIM_SEEDS is a number"))
        .unwrap_or(SEEDS);
    let seeds: Vec<u64> = match one {
        Some(s) => vec![s],
        None => (1..=count).collect(),
    };
    let mut total = Counters::default();
    for &seed in &seeds {
        let c = run_seed(seed);
        println!("  {c:?}");
        total.add(&c);
    }
    println!(
        "{} seeds in {:.1} s: {total:?}",
        seeds.len(),
        started.elapsed().as_secs_f64()
    );
    if one.is_none() {
        // The runs must have gone through what they are meant to test.
        let covered = [
            ("commits", total.committed),
            ("aborts", total.aborted),
            ("lock timeouts", total.lock_timeouts),
            ("delayed decisions", total.delayed),
            ("decisions due at a checkpoint", total.forced),
            ("stored records (SL)", total.stored),
            ("compensation records (CL)", total.compensation),
            ("records carried (DL)", total.carried),
            ("crashes", total.crashes),
            (
                "crashes after a checkpoint's log switch",
                total.crash_in_checkpoint,
            ),
            (
                "crashes inside a checkpoint with its log generation begun",
                total.crash_in_checkpoint_begun,
            ),
            (
                "crashes before a checkpoint's cleanup",
                total.crash_before_cleanup,
            ),
            ("torn log tails", total.torn_tails),
            ("branches in doubt after a crash", total.in_doubt),
            ("rollback-recoveries", total.recoveries),
            ("redo requests sent", total.redo_sent),
            ("redo requests acted on", total.redo_acted),
            ("restores of CCP(n-1)", total.restored_previous),
        ];
        for (what, n) in covered {
            if what == "torn log tails" && !torn_tails_on() {
                continue;
            }
            assert!(n > 0, "the simulation never exercised {what}: {total:?}");
        }
    }
}

/// A crash after `ccp.<N>` is in place but before the checkpoint removed `ccp.<N-2>` and
/// the log generations before N: restart recovery must finish the cleanup, so that
/// the site again keeps only the current and the previous checkpoint (spec 03 §3.3 and
/// Table 1: storage of two checkpoints per site).
#[test]
fn restart_after_a_crash_in_checkpoint_cleanup_keeps_two_checkpoints() {
    let dir = std::env::temp_dir().join(format!("tpmon-rm-sim-cleanup-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = SiteConfig {
        site: 0,
        name: "s0".into(),
        dir: dir.clone(),
        checkpoint_interval: Duration::from_secs(3600),
        lock_timeout: LOCK_TIMEOUT,
        sync: false,
    };
    let (site, _) = Site::open(cfg.clone()).expect("open");
    site.begin("a|0").expect("begin");
    site.put(Some("a|0"), TABLE, b"k", b"v").expect("put");
    let (yes, cpn) = site.prepare("a|0").expect("prepare");
    assert!(yes);
    site.commit("a|0", cpn, 0).expect("commit");
    assert_eq!(site.checkpoint_now().expect("checkpoint"), 1);
    assert_eq!(site.checkpoint_now().expect("checkpoint"), 2);
    // What checkpoint 3 removes once ccp.3 is in place.
    let saved: Vec<(PathBuf, Vec<u8>)> = [dir.join(ccp_name(1)), dir.join(log_name(2))]
        .into_iter()
        .map(|p| {
            let b = std::fs::read(&p).expect("read");
            (p, b)
        })
        .collect();
    assert_eq!(site.checkpoint_now().expect("checkpoint"), 3);
    drop(site);
    // The crash came before the removals.
    for (p, b) in &saved {
        std::fs::write(p, b).expect("write");
    }
    let (site, rep) = Site::open(cfg).expect("reopen");
    let n = site.checkpoint_number();
    let snap = site.snapshot();
    drop(site);
    let ccps = checkpoints(&dir).expect("checkpoints");
    let gens = generations(&dir).expect("generations");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        (rep.checkpoint, n),
        (3, 3),
        "restart recovery restored {rep:?}"
    );
    assert_eq!(
        snap.get(TABLE).and_then(|t| t.get(&b"k"[..])).cloned(),
        Some(b"v".to_vec())
    );
    assert!(
        ccps == vec![2, 3] && gens.iter().all(|g| *g >= 3),
        "\n*** property violated: two checkpoints on stable storage\n*** after a crash between \
         writing ccp.3 and removing the old files, Site::open restarted at checkpoint {n} but \
         leaves checkpoint files {ccps:?} and log generations {gens:?} (expected [2, 3] and \
         generations >= 3) until the next checkpoint: restart recovery finishes a checkpoint \
         interrupted before its file was written, not one interrupted during its cleanup\n"
    );
}

/// A crash in the middle of a log append leaves part of a frame at the end of the
/// active generation (never acknowledged). Restart recovery cuts it and goes on, even
/// when a later generation's file already exists (made ahead of time, empty).
#[test]
fn restart_after_a_torn_write_at_the_end_of_the_active_log() {
    let dir = std::env::temp_dir().join(format!("tpmon-rm-sim-torn-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = SiteConfig {
        site: 0,
        name: "s0".into(),
        dir: dir.clone(),
        checkpoint_interval: Duration::from_secs(3600),
        lock_timeout: LOCK_TIMEOUT,
        sync: false,
    };
    let (site, _) = Site::open(cfg.clone()).expect("open");
    site.begin("a|0").expect("begin");
    site.put(Some("a|0"), TABLE, b"k", b"v").expect("put");
    let (_, cpn) = site.prepare("a|0").expect("prepare");
    site.commit("a|0", cpn, 0).expect("commit");
    assert_eq!(site.checkpoint_now().expect("checkpoint"), 1);
    // A prepared branch in generation 1, then the crash tears the next append.
    site.begin("b|0").expect("begin");
    site.put(Some("b|0"), TABLE, b"j", b"w").expect("put");
    site.prepare("b|0").expect("prepare");
    let active = dir.join(log_name(site.lcpn()));
    drop(site);
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("list")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    files.sort();
    let mut data = std::fs::read(&active).expect("read the active log");
    let len = data.len() as u64;
    let torn = frame(
        &LogEntry::Decision {
            lsn: 99,
            tid: "b|0".into(),
            commit: true,
            gcpn: 2,
            origin: 0,
        }
        .encode(),
    );
    data.extend_from_slice(&torn[..torn.len() / 2]);
    std::fs::write(&active, data).expect("tear");
    let reopened = Site::open(cfg);
    let after = std::fs::metadata(&active).map(|m| m.len()).ok();
    let result = reopened.map(|(site, rep)| {
        let prepared = site.recover("");
        let value = site.get(None, TABLE, b"k").expect("get");
        (rep, prepared, value)
    });
    let _ = std::fs::remove_dir_all(&dir);
    match result {
        Ok((rep, prepared, value)) => {
            let torn: Vec<(PathBuf, u64)> =
                rep.torn.iter().map(|(p, o, _)| (p.clone(), *o)).collect();
            assert_eq!(torn, vec![(active.clone(), len)], "the torn tail reported");
            assert_eq!(after, Some(len), "the torn tail is cut");
            assert_eq!(
                prepared,
                vec!["b|0".to_string()],
                "the prepared branch survives"
            );
            assert_eq!(value, Some(b"v".to_vec()), "the committed value survives");
        }
        Err(e) => panic!(
            "\n*** property violated: restart recovery after a torn log write\n*** a crash \
             tore the last append to the active generation {} (files at the crash: {files:?}); \
             Site::open refuses to restart: {e}\n",
            active.display()
        ),
    }
}
