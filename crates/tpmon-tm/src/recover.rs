//! Recovery: drive logged decisions to completion, and resolve the prepared branches
//! the resource managers hold that no decision covers (presumed abort). Runs at boot
//! and then periodically; a resource manager that is down is retried with back-off.
//!
//! The table of cases (docs/design-transactions.md repeats it):
//!
//! | log entry | gtrid epoch | other facts | action on a prepared branch |
//! |---|---|---|---|
//! | COMMIT | any | | commit (unknown branch = already done) |
//! | ROLLBACK | any | | roll back |
//! | none | being decided now | | leave (the decision is in progress) |
//! | none | earlier, not issued by this log | | leave, shown for the operator (the log that decided it was replaced) |
//! | none | earlier epoch this log issued | | roll back (its originator died with that daemon) |
//! | none | later than this boot's, or not our format | | leave, shown for the operator |
//! | none | this epoch | rolled back here | roll back (a branch that prepared late) |
//! | none | this epoch | deadline + grace passed | roll back (no commit can be decided) |
//! | none | this epoch | before its deadline | leave (still running) |
//! | not ours (other domain or node) | | | never returned by the RM query (prefix) |

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tpmon_proto::Gtrid;
use tpmon_txlog::TxState;
use tpmon_xa::{XaError, Xid};

use crate::commit::{BRANCH_DONE, BRANCH_HEURISTIC, BRANCH_PENDING};
use crate::subordinate::InDoubt;
use crate::{now_unix_ms, Tm, Tracked, DEADLINE_GRACE, EPOCH_KEY};

/// Holds a transaction in the deciding set for as long as it lives (unless `keep`).
struct Hold<'a> {
    tm: &'a Tm,
    gtrid: String,
    keep: bool,
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        if !self.keep {
            self.tm.lock().deciding.remove(&self.gtrid);
        }
    }
}

/// What recovery does with one prepared branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Commit,
    RollBack,
    Leave,
    /// Leave: of an epoch this node's log did not issue (before it began, or between
    /// two of its boots), so no decision of it can be known here.
    LeaveUnknown,
    /// Leave: a gtrid this log cannot have begun (an epoch later than this boot's, or
    /// our prefix without our format); only an operator can tell what it is.
    LeaveStrange,
}

/// How `tpmon tx list` shows a branch recovery leaves because its epoch is one this
/// node's log did not issue ([`Action::LeaveUnknown`]).
pub(crate) const OLDER_THAN_LOG: &str =
    "in doubt: from a log this node no longer has (resolve by hand)";

/// How `tpmon tx list` shows a prepared branch of another node's transaction that no
/// entry here covers, while its coordinator gives no definite outcome.
pub(crate) const FOREIGN_ASKING: &str = "prepared (subordinate, no entry; asking the coordinator)";

/// How `tpmon tx list` shows such a branch while carrying out the coordinator's
/// outcome fails (the database refuses or is down); recovery retries.
pub(crate) const FOREIGN_COMMITTING: &str =
    "prepared (subordinate, no entry; committing as the coordinator decided, retrying)";
/// The same for a rollback.
pub(crate) const FOREIGN_ROLLING_BACK: &str =
    "prepared (subordinate, no entry; rolling back as the coordinator decided, retrying)";

/// How `tpmon tx list` shows a prepared branch whose gtrid names a node that is not in
/// the domain's configuration: nobody can be asked about it.
pub(crate) const UNKNOWN_COORDINATOR: &str =
    "left alone: its coordinator is not a node of this domain (resolve in the database)";

/// The states a recovery pass finds again each time (so the pass replaces them).
fn swept(state: &str) -> bool {
    [
        "in flight",
        OLDER_THAN_LOG,
        NOT_THIS_LOGS,
        FOREIGN_ASKING,
        FOREIGN_COMMITTING,
        FOREIGN_ROLLING_BACK,
        UNKNOWN_COORDINATOR,
    ]
    .contains(&state)
}

/// How `tpmon tx list` shows a branch recovery leaves because this log cannot have
/// begun it ([`Action::LeaveStrange`]).
pub(crate) const NOT_THIS_LOGS: &str =
    "left alone: not from this log (later epoch or unknown format; resolve by hand)";

/// At most this many subordinate entries are resolved at once by one recovery pass.
const SUBORDINATE_DRIVES: usize = 32;

const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

impl Tm {
    /// One recovery pass.
    pub async fn recover_once(self: &Arc<Self>) {
        // Lazy removals of completed transactions become durable at least this often.
        if let Err(e) = self.log_op(|log| log.sync()).await {
            tracing::error!(error = %e, "the global transaction log cannot be flushed");
        }
        self.drive_logged().await;
        self.sweep_rms().await;
        let now = now_unix_ms();
        let grace = DEADLINE_GRACE.as_millis() as u64;
        self.lock()
            .rolled_back
            .retain(|_, deadline_s| deadline_s.saturating_mul(1000).saturating_add(grace) > now);
    }

    /// Decides what to do with a prepared branch of `gtrid` found in a resource
    /// manager (the table in the module documentation).
    pub(crate) fn presume(&self, xid: &Xid) -> Action {
        let gtrid = xid.gtrid.as_str();
        let st = self.lock();
        if st.deciding.contains(gtrid) {
            return Action::Leave;
        }
        // A logged decision covers the branches it lists; another branch of the same
        // gtrid (one nobody reported) falls to the rules below.
        if let Some(e) = self
            .log
            .get(gtrid.as_bytes())
            .filter(|e| e.branches.iter().any(|b| b.bqual == xid.bqual.as_bytes()))
        {
            if e.branches.iter().any(|b| b.state == BRANCH_HEURISTIC) {
                // Kept for the operator.
                return Action::Leave;
            }
            return match e.state {
                TxState::Commit => Action::Commit,
                TxState::Rollback => Action::RollBack,
                _ => Action::Leave,
            };
        }
        let Some(g) = Gtrid::parse(gtrid.as_bytes()) else {
            return Action::LeaveStrange;
        };
        if self.epoch_of_another_log(g.epoch) {
            return Action::LeaveUnknown;
        }
        if g.epoch < self.epoch || st.rolled_back.contains_key(gtrid) {
            return Action::RollBack;
        }
        if g.epoch > self.epoch {
            return Action::LeaveStrange;
        }
        let grace = DEADLINE_GRACE.as_millis() as u64;
        if now_unix_ms() >= g.deadline_s.saturating_mul(1000).saturating_add(grace) {
            Action::RollBack
        } else {
            Action::Leave
        }
    }

    async fn drive_logged(self: &Arc<Self>) {
        let entries: Vec<_> = self
            .log
            .iter()
            .filter(|e| e.gtrid != EPOCH_KEY && self.log.holds(&e.gtrid))
            .collect();
        let pushed = self.push_decisions(&entries).await;
        // A subordinate's entries are resolved by asking other nodes, which may take
        // up to the link request timeout each: they run side by side (at most
        // SUBORDINATE_DRIVES at once), so that one silent node delays neither the
        // others nor this node's own decisions below.
        let (subordinate, entries): (Vec<_>, Vec<_>) = entries
            .into_iter()
            .partition(|e| e.state == TxState::Prepare && self.me.is_some());
        let slots = Arc::new(tokio::sync::Semaphore::new(SUBORDINATE_DRIVES));
        let mut drives = Vec::with_capacity(subordinate.len());
        for e in subordinate {
            let (me, slots) = (self.clone(), slots.clone());
            drives.push(tokio::spawn(async move {
                let Ok(_slot) = slots.acquire_owned().await else {
                    return;
                };
                let gtrid = String::from_utf8_lossy(&e.gtrid).into_owned();
                if !me.lock().deciding.insert(gtrid.clone()) {
                    return;
                }
                let _hold = Hold {
                    tm: &me,
                    gtrid,
                    keep: false,
                };
                // Read it again: it may have been resolved meanwhile.
                if let Some(e) = me
                    .log
                    .get(&e.gtrid)
                    .filter(|x| me.log.holds(&e.gtrid) && x.state == TxState::Prepare)
                {
                    me.drive_subordinate(e).await;
                }
            }));
        }
        for e in entries {
            let gtrid = String::from_utf8_lossy(&e.gtrid).into_owned();
            // Held while driven, so that a manual resolution or a second end does not
            // act on it at the same time.
            if !self.lock().deciding.insert(gtrid.clone()) {
                continue;
            }
            let mut hold = Hold {
                tm: self,
                gtrid: gtrid.clone(),
                keep: false,
            };
            // Read it again: whoever decided it may have changed it (recorded a
            // heuristic outcome, completed it) before leaving the deciding set.
            let Some(e) = self.log.get(&e.gtrid).filter(|_| self.log.holds(&e.gtrid)) else {
                continue;
            };
            let commit = match e.state {
                TxState::Commit => true,
                TxState::Rollback => false,
                TxState::Prepare if self.me.is_some() => {
                    // A subordinate's entry: another node coordinates it.
                    self.drive_subordinate(e).await;
                    continue;
                }
                other => {
                    tracing::warn!(
                        gtrid,
                        ?other,
                        "log entry in an unexpected state; left alone"
                    );
                    continue;
                }
            };
            if e.branches.iter().any(|b| b.state == BRANCH_HEURISTIC) {
                // Kept for the operator (`tpmon tx commit` drives it again).
                let mut st = self.lock();
                st.tracked.entry(gtrid.clone()).or_insert_with(|| {
                    Tracked::of_entry(
                        &e,
                        "heuristic (operator)",
                        0,
                        "a resource manager refused the decision".into(),
                    )
                });
                continue;
            }
            let mut tasks = Vec::new();
            let decision = crate::Decision::decode(&e.data);
            // Branches on other nodes: one request per node to its TM.
            let listed: Vec<(u16, Vec<u8>)> = e
                .branches
                .iter()
                .filter(|b| b.state != BRANCH_DONE)
                .map(|b| (b.rm as u16, b.bqual.clone()))
                .collect();
            let mut remote_results = Vec::new();
            for (node, bs) in self.by_node(&listed) {
                if pushed.contains(&(node, e.gtrid.clone())) {
                    // Finished there by RECOVER_INDOUBT_GLOBAL_TX this pass.
                    remote_results.push((node, Ok(())));
                    continue;
                }
                let r = self.remote_end(node, &gtrid, bs, commit, decision).await;
                remote_results.push((node, r));
            }
            for b in &e.branches {
                if let Some(node) = self.remote_node(b.rm as u16) {
                    let r = remote_results
                        .iter()
                        .find(|(n, _)| *n == node)
                        .map_or(Ok(()), |(_, r)| r.clone());
                    tasks.push(Some(tokio::spawn(async move { r })));
                    continue;
                }
                let Some(pool) = u16::try_from(b.rm).ok().and_then(|g| self.pool(g)).cloned()
                else {
                    tasks.push(None);
                    continue;
                };
                let xid = Xid::new(
                    gtrid.clone(),
                    String::from_utf8_lossy(&b.bqual).into_owned(),
                );
                tasks.push(Some(tokio::spawn(async move {
                    if commit {
                        pool.commit(&xid, decision).await
                    } else {
                        pool.rollback(&xid).await
                    }
                })));
            }
            let mut pending = 0;
            let mut last_error = String::new();
            let mut done_flags = Vec::new();
            let mut states = Vec::new();
            let mut refused = 0;
            for t in tasks {
                // (state, error)
                let (state, err) = match t {
                    None => (
                        BRANCH_PENDING,
                        Some("its group has no resource manager any more".to_string()),
                    ),
                    Some(t) => match t.await {
                        Ok(Ok(())) | Ok(Err(XaError::NotFound(_))) => (BRANCH_DONE, None),
                        Ok(Err(e @ XaError::Failed(_))) => (BRANCH_HEURISTIC, Some(e.to_string())),
                        Ok(Err(e)) => (BRANCH_PENDING, Some(e.to_string())),
                        Err(e) => (BRANCH_PENDING, Some(e.to_string())),
                    },
                };
                done_flags.push(state == BRANCH_DONE);
                states.push(state);
                if state == BRANCH_HEURISTIC {
                    refused += 1;
                }
                if let Some(e) = err {
                    pending += 1;
                    last_error = e;
                }
            }
            if refused > 0 && commit {
                let mixed = done_flags.iter().any(|d| *d);
                // Not durable: stay held, so that nothing retries it automatically.
                hold.keep = !self
                    .keep_heuristic(&gtrid, &states, &last_error, mixed)
                    .await;
                continue;
            }
            if pending == 0 {
                match self.log.remove_lazy(&e.gtrid) {
                    Ok(_) => {
                        tracing::info!(gtrid, commit, "recovery completed a logged transaction");
                        self.lock().tracked.remove(&gtrid);
                    }
                    Err(err) => {
                        tracing::warn!(gtrid, error = %err, "cannot remove a completed transaction")
                    }
                }
            } else {
                let mut st = self.lock();
                let tr = st.tracked.entry(gtrid.clone()).or_insert_with(|| Tracked {
                    state: "",
                    since: SystemTime::now(),
                    branches: Vec::new(),
                    retries: 0,
                    last_error: String::new(),
                });
                tr.state = if commit {
                    "committing (retrying)"
                } else {
                    "rolling back (retrying)"
                };
                tr.retries += 1;
                tr.last_error = last_error;
                tr.branches = e
                    .branches
                    .iter()
                    .zip(done_flags)
                    .map(|(b, d)| {
                        (
                            b.rm as u16,
                            String::from_utf8_lossy(&b.bqual).into_owned(),
                            d,
                        )
                    })
                    .collect();
            }
        }
        for d in drives {
            let _ = d.await;
        }
    }

    /// RECOVER_INDOUBT_GLOBAL_TX: for each other node holding unfinished branches of
    /// logged decisions (commit or roll back, no heuristic outcome, not being decided
    /// now), one request listing those transactions with their outcomes. Returns the
    /// (node, gtrid) pairs that node finished; the others go to Commit or Rollback one
    /// by one as before.
    async fn push_decisions(
        &self,
        entries: &[tpmon_txlog::Entry],
    ) -> std::collections::HashSet<(usize, Vec<u8>)> {
        let mut per_node: HashMap<usize, Vec<InDoubt>> = HashMap::new();
        {
            let st = self.lock();
            for e in entries {
                let commit = match e.state {
                    TxState::Commit => true,
                    TxState::Rollback => false,
                    _ => continue,
                };
                let text = String::from_utf8_lossy(&e.gtrid);
                if st.deciding.contains(text.as_ref())
                    || e.branches.iter().any(|b| b.state == BRANCH_HEURISTIC)
                {
                    continue;
                }
                let listed: Vec<(u16, Vec<u8>)> = e
                    .branches
                    .iter()
                    .filter(|b| b.state != BRANCH_DONE)
                    .map(|b| (b.rm as u16, b.bqual.clone()))
                    .collect();
                for (node, _) in self.by_node(&listed) {
                    per_node.entry(node).or_default().push(InDoubt {
                        gtrid: e.gtrid.clone(),
                        commit,
                        decision: crate::Decision::decode(&e.data),
                    });
                }
            }
        }
        let mut done = std::collections::HashSet::new();
        for (node, list) in per_node {
            for g in self.push_in_doubt(node, &list).await {
                done.insert((node, g));
            }
        }
        done
    }

    async fn sweep_rms(self: &Arc<Self>) {
        // Per gtrid left alone: how to show it, its branches (group, bqual), and the
        // last error.
        type Left = (&'static str, Vec<(u16, String)>, String);
        let mut found: HashMap<String, Left> = HashMap::new();
        for (group, pool) in self.pools.iter().enumerate() {
            let Some(pool) = pool.clone() else { continue };
            if self.rm_of_group[group] != group {
                continue;
            }
            if let Some((_, next, _)) = self.lock().rm_down.get(&group) {
                if Instant::now() < *next {
                    continue;
                }
            }
            // In a multi-node domain, also the branches of transactions other nodes
            // coordinate (`foreign` below).
            let prefix = match self.me {
                Some(_) => format!("{}:", self.domain),
                None => self.prefix.clone(),
            };
            let xids = match pool.recover(&prefix).await {
                Ok(x) => {
                    if self.lock().rm_down.remove(&group).is_some() {
                        tracing::info!(group, "resource manager reachable again");
                    }
                    x
                }
                Err(e) => {
                    let mut st = self.lock();
                    let backoff = st
                        .rm_down
                        .get(&group)
                        .map_or(BACKOFF_FIRST, |(_, _, b)| (*b * 2).min(BACKOFF_MAX));
                    tracing::warn!(group, error = %e, retry_in = ?backoff, "recovery cannot reach a resource manager");
                    st.rm_down
                        .insert(group, (e.to_string(), Instant::now() + backoff, backoff));
                    continue;
                }
            };
            let (xids, foreign): (Vec<Xid>, Vec<Xid>) = xids
                .into_iter()
                .partition(|x| x.gtrid.starts_with(&self.prefix));
            // Each asks the coordinator, which may take up to the link request timeout
            // when it does not answer: side by side (at most SUBORDINATE_DRIVES at
            // once; one transaction's branches one after the other), so that a silent
            // node does not hold this pass, nor the boot's `recovered`, for minutes.
            let mut by_gtrid: HashMap<String, Vec<Xid>> = HashMap::new();
            for xid in foreign {
                by_gtrid.entry(xid.gtrid.clone()).or_default().push(xid);
            }
            let slots = Arc::new(tokio::sync::Semaphore::new(SUBORDINATE_DRIVES));
            let mut asks = Vec::with_capacity(by_gtrid.len());
            for (_, xids) in by_gtrid {
                let (me, pool, slots) = (self.clone(), pool.clone(), slots.clone());
                asks.push(tokio::spawn(async move {
                    let mut left = Vec::new();
                    let Ok(_slot) = slots.acquire_owned().await else {
                        return left;
                    };
                    for xid in xids {
                        if let Some(shown) =
                            me.resolve_foreign(group as u16, &pool, xid.clone()).await
                        {
                            left.push((xid, shown));
                        }
                    }
                    left
                }));
            }
            for a in asks {
                for (xid, (state, why)) in a.await.unwrap_or_default() {
                    let e = found
                        .entry(xid.gtrid.clone())
                        .or_insert_with(|| (state, Vec::new(), String::new()));
                    e.1.push((group as u16, xid.bqual.clone()));
                    if !why.is_empty() {
                        e.2 = why;
                    }
                }
            }
            let mut tasks = Vec::new();
            for xid in xids {
                match self.presume(&xid) {
                    leave @ (Action::Leave | Action::LeaveUnknown | Action::LeaveStrange) => {
                        let state = match leave {
                            Action::LeaveUnknown => OLDER_THAN_LOG,
                            Action::LeaveStrange => NOT_THIS_LOGS,
                            _ => "in flight",
                        };
                        found
                            .entry(xid.gtrid.clone())
                            .or_insert_with(|| (state, Vec::new(), String::new()))
                            .1
                            .push((group as u16, xid.bqual.clone()));
                    }
                    action => {
                        let pool = pool.clone();
                        let decision = self
                            .log
                            .get(xid.gtrid.as_bytes())
                            .map(|e| crate::Decision::decode(&e.data))
                            .unwrap_or_default();
                        tasks.push(tokio::spawn(async move {
                            let r = if action == Action::Commit {
                                pool.commit(&xid, decision).await
                            } else {
                                pool.rollback(&xid).await
                            };
                            (xid, action, r)
                        }));
                    }
                }
            }
            for t in tasks {
                let Ok((xid, action, r)) = t.await else {
                    continue;
                };
                match r {
                    Ok(()) | Err(XaError::NotFound(_)) => {
                        tracing::info!(xid = %xid, ?action, "recovery resolved a prepared branch");
                    }
                    Err(e) => {
                        tracing::warn!(xid = %xid, ?action, error = %e, "recovery could not resolve a prepared branch; will retry");
                    }
                }
            }
        }
        let mut st = self.lock();
        let mut earlier: HashMap<String, SystemTime> = HashMap::new();
        st.tracked.retain(|g, t| {
            if swept(t.state) {
                earlier.insert(g.clone(), t.since);
                false
            } else {
                true
            }
        });
        for (gtrid, (state, branches, last_error)) in found {
            if st.tracked.contains_key(&gtrid) {
                continue;
            }
            let since = match earlier.get(&gtrid) {
                Some(t) => *t,
                None => {
                    // Said once, when first found (every pass finds it again).
                    if state == OLDER_THAN_LOG {
                        tracing::error!(
                            gtrid,
                            first_epoch = self.first_epoch,
                            "a prepared branch of an epoch this node's transaction log did \
                             not issue: the log that decided it was lost or replaced (by a new \
                             log, or by an older copy restored), so it is left in doubt; \
                             resolve it with `tpmon tx commit|rollback`"
                        );
                    } else if state == UNKNOWN_COORDINATOR {
                        tracing::warn!(
                            gtrid,
                            "a prepared branch of a transaction whose coordinating node is not \
                             in this domain's configuration: nobody can tell its outcome; left \
                             alone; finish it in its database once you know it"
                        );
                    } else if state == NOT_THIS_LOGS {
                        tracing::warn!(
                            gtrid,
                            epoch = self.epoch,
                            "a prepared branch with this node's prefix that this log cannot \
                             have begun (a later epoch, or not tpmon's gtrid format: another \
                             installation sharing the database and names?); left alone; \
                             resolve it with `tpmon tx rollback` once you know it is ours"
                        );
                    }
                    SystemTime::now()
                }
            };
            st.tracked.insert(
                gtrid,
                Tracked {
                    state,
                    since,
                    branches: branches.into_iter().map(|(g, b)| (g, b, false)).collect(),
                    retries: 0,
                    last_error,
                },
            );
        }
    }
}
