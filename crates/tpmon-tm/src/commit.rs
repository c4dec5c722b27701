//! Ending a transaction at its originator's request: roll back, commit one prepared
//! branch directly, or decide commit durably and run phase 2.

use std::sync::Arc;
use std::time::SystemTime;

use tpmon_proto::{Branch, Gtrid, TxDone, TxEnd, TxOutcome, Vote};
use tpmon_txlog::{Branch as LogBranch, Entry, TxState};
use tpmon_xa::{failpoint, XaError, Xid};

use crate::{now_unix_ms, Decision, Tm, Tracked};

/// Phase 2 of a transaction whose originator was already answered (see
/// [`Tm::end_deferred`]).
#[must_use = "phase 2 must run: call `run`"]
pub struct PhaseTwoJob {
    tm: Arc<Tm>,
    gtrid: String,
    branches: Vec<Branch>,
    decision: Decision,
    _slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl PhaseTwoJob {
    /// Commits every branch (recovery finishes what fails).
    pub async fn run(self) {
        self.tm
            .phase_two(&self.gtrid, &self.branches, self.decision)
            .await;
    }

    /// [`PhaseTwoJob::run`] on a thread of its own outside the runtime (never on a
    /// runtime worker): branches on local PostgreSQL databases are committed on this
    /// thread with blocking sessions, which saves the hand-offs to the runtime's
    /// threads and back; anything else runs as `run` does, on `handle`.
    pub fn run_blocking(self, handle: &tokio::runtime::Handle) {
        let done = self
            .tm
            .phase_two_blocking(handle, &self.gtrid, &self.branches, self.decision);
        if done.is_none() {
            handle.block_on(self.run());
        }
    }
}

/// How [`Tm::end_on`] makes its blocking log write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogCall {
    /// On the calling thread (a thread of its own, not a runtime worker).
    Direct,
    /// With `block_in_place` on a multi-threaded runtime's worker (else on a blocking
    /// thread).
    InPlace,
}

/// Outcome of one branch's phase 2.
#[derive(Clone)]
enum BranchEnd {
    Done,
    Pending(String),
    /// The resource manager refused to commit a branch the decision says to commit
    /// (it rolled it back on its own, or cannot commit it): a heuristic outcome.
    Heuristic(String),
}

/// Where phase 2 left a transaction.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PhaseTwo {
    pub committed: usize,
    pub pending: usize,
    pub heuristic: usize,
}

/// Branch state in a log entry: phase 2 not done yet.
pub(crate) const BRANCH_PENDING: u8 = 0;
/// Branch state in a log entry: committed (or rolled back, for a rollback entry).
pub(crate) const BRANCH_DONE: u8 = 1;
/// Branch state in a log entry: the resource manager refused the decision; kept for
/// the operator, never retried by recovery on its own.
pub(crate) const BRANCH_HEURISTIC: u8 = 2;

/// What a resource manager's answer to a commit means for the branch.
fn branch_end(r: Result<(), XaError>) -> BranchEnd {
    match r {
        // Unknown after a commit decision: an earlier attempt committed it.
        Ok(()) | Err(XaError::NotFound(_)) => BranchEnd::Done,
        Err(e @ XaError::Failed(_)) => BranchEnd::Heuristic(e.to_string()),
        Err(e) => BranchEnd::Pending(e.to_string()),
    }
}

/// True when `bqual` can name a branch in every resource manager and in recovery's
/// listings: UTF-8 text without control characters (PostgreSQL cannot carry a NUL)
/// and without `|` (the separator of PostgreSQL's gid, [`Xid::gid`]).
pub(crate) fn usable_bqual(bqual: &[u8]) -> bool {
    std::str::from_utf8(bqual).is_ok_and(|t| !t.chars().any(|c| c.is_control() || c == '|'))
}

fn done(gtrid: &[u8], outcome: TxOutcome, detail: impl Into<String>) -> TxDone {
    TxDone {
        gtrid: gtrid.to_vec(),
        outcome,
        detail: detail.into(),
    }
}

impl Tm {
    /// Ends a transaction as its originator asks. Returns once the outcome is known:
    /// for a commit, once the decision is durable (or, with `wait_completed`, once
    /// every branch finished). Call it from a runtime worker; see [`Tm::end_on`].
    pub async fn end(self: &Arc<Self>, req: TxEnd) -> TxDone {
        self.end_on(req, LogCall::InPlace).await
    }

    /// [`Tm::end`], saying how the decision's (blocking) log write is made: on the
    /// calling thread when it is a thread of its own that drives this future with
    /// `Handle::block_on` (the local port does that: no hop between threads on the
    /// commit path), or in place on a runtime worker.
    pub async fn end_on(self: &Arc<Self>, req: TxEnd, how: LogCall) -> TxDone {
        let mut after = None;
        let answer = self.end_inner(req, how, &mut after).await;
        if let Some(job) = after {
            tokio::spawn(job.run());
        }
        answer
    }

    /// [`Tm::end_on`] that leaves phase 2 to the caller when the answer does not wait
    /// for it: the caller sends the answer, then runs the returned job. The local
    /// port does that on its own thread, which saves handing phase 2 to the runtime
    /// (a wake-up per commit).
    pub async fn end_deferred(
        self: &Arc<Self>,
        req: TxEnd,
        how: LogCall,
    ) -> (TxDone, Option<PhaseTwoJob>) {
        let mut after = None;
        let answer = self.end_inner(req, how, &mut after).await;
        (answer, after)
    }

    async fn end_inner(
        self: &Arc<Self>,
        req: TxEnd,
        how: LogCall,
        after: &mut Option<PhaseTwoJob>,
    ) -> TxDone {
        let Some(g) = Gtrid::parse(&req.gtrid) else {
            return done(&req.gtrid, TxOutcome::Refused, "not a tpmon transaction id");
        };
        if g.domain != self.domain || g.node != self.node {
            return done(
                &req.gtrid,
                TxOutcome::Refused,
                format!(
                    "transaction of {}:{} sent to the manager of {}:{}",
                    g.domain, g.node, self.domain, self.node
                ),
            );
        }
        let text = g.encode();
        if text.as_bytes() != req.gtrid.as_slice() {
            // Branches were prepared under the id as sent; deciding under another
            // spelling would miss them.
            return done(
                &req.gtrid,
                TxOutcome::Refused,
                "not a transaction id in tpmon's canonical form",
            );
        }
        // One end per transaction: a second request (a retry after a lost answer, or
        // a confused or hostile originator) never changes what was decided.
        if let Some(answer) = self.already_ended(&text, &req) {
            return answer;
        }
        // A test holds an end here while another end of the same gtrid goes ahead.
        failpoint::hit("tm.end_checked");
        // A prepared branch that cannot be committed here: no server makes a qualifier
        // no resource manager can hold, and a decision naming one could never be
        // carried out (PostgreSQL cannot even be sent a NUL), so logged, it would stay
        // in the log for good; a group without a resource manager has nothing to
        // commit with. What can be is rolled back, and the answer says why.
        let impossible = req.branches.iter().find_map(|b| {
            if b.vote != Vote::Prepared {
                None
            } else if !usable_bqual(&b.bqual) {
                Some(format!(
                    "branch of group #{} has a qualifier no resource manager can hold \
                     (not UTF-8 text, a control character, or '|')",
                    b.group
                ))
            } else if self.pool(b.group).is_none() && self.remote_node(b.group).is_none() {
                Some(format!(
                    "branch of group #{} which has no resource manager",
                    b.group
                ))
            } else {
                None
            }
        });
        if let Some(why) = impossible {
            if let Some(answer) = self.claim_rollback(&text, &req, g.deadline_s) {
                return answer;
            }
            self.roll_back(&text, &req.branches, g.deadline_s).await;
            return done(&req.gtrid, TxOutcome::Refused, why);
        }
        let failed = req.branches.iter().any(|b| b.vote == Vote::Failed);
        let why_not = if !req.commit {
            Some(String::new())
        } else if !req.doomed.is_empty() {
            Some(req.doomed.clone())
        } else if failed {
            Some("a branch failed".to_string())
        } else if g.epoch != self.epoch {
            Some("the transaction manager restarted since the transaction began".to_string())
        } else if g.deadline_s.saturating_mul(1000)
            > now_unix_ms() + self.timeout_max.as_millis() as u64 + 2000
        {
            Some(format!(
                "the transaction's deadline is beyond the domain's limit of {:?}",
                self.timeout_max
            ))
        } else {
            None
        };
        if let Some(why) = why_not {
            if let Some(answer) = self.claim_rollback(&text, &req, g.deadline_s) {
                return answer;
            }
            self.roll_back(&text, &req.branches, g.deadline_s).await;
            return done(&req.gtrid, TxOutcome::RolledBack, why);
        }
        let prepared: Vec<Branch> = req
            .branches
            .iter()
            .filter(|b| b.vote == Vote::Prepared)
            .cloned()
            .collect();
        if prepared.is_empty() {
            return done(&req.gtrid, TxOutcome::Committed, "");
        }
        // The deadline check and the registration are one step under the lock that
        // recovery takes before it presumes abort. Another end deciding the
        // transaction goes first: a timeout found here must not roll back a commit
        // that is under way. A timeout is claimed in the same step, so no commit can
        // pass the gate after it.
        enum Gate {
            Ended,
            TimedOut,
            Busy,
            Go,
        }
        let gate = {
            let mut st = self.lock();
            if st.rolled_back.contains_key(&text) || self.log.holds(text.as_bytes()) {
                Gate::Ended
            } else if st.deciding.contains(&text) {
                Gate::Busy
            } else if now_unix_ms() >= g.deadline_s.saturating_mul(1000) {
                let until = self.rollback_memory(g.deadline_s);
                st.rolled_back.insert(text.clone(), until);
                Gate::TimedOut
            } else {
                st.deciding.insert(text.clone());
                Gate::Go
            }
        };
        match gate {
            Gate::Ended => {
                return done(
                    &req.gtrid,
                    TxOutcome::Refused,
                    "the transaction already ended",
                )
            }
            Gate::TimedOut => {
                self.roll_back(&text, &req.branches, g.deadline_s).await;
                return done(
                    &req.gtrid,
                    TxOutcome::RolledBack,
                    "the transaction timed out",
                );
            }
            Gate::Busy => {
                return done(
                    &req.gtrid,
                    TxOutcome::Refused,
                    "the transaction is being ended already",
                )
            }
            Gate::Go => {}
        }
        failpoint::hit("tm.before_decision");
        // Phase 1 on the other nodes holding branches: each logs them as prepared
        // (their servers prepared them before replying) and answers ready. One that
        // cannot (unreachable, refused) rolls the transaction back.
        let remote: Vec<(u16, Vec<u8>)> = prepared
            .iter()
            .filter(|b| self.remote_node(b.group).is_some())
            .map(|b| (b.group, b.bqual.clone()))
            .collect();
        if !remote.is_empty() {
            if let Err(why) = self.prepare_remote(&text, &remote).await {
                tracing::warn!(gtrid = %text, error = %why, "a subordinate node could not prepare; rolling back");
                // Marked rolled back in the same critical section that lets it out of
                // `deciding`: a second end in between would otherwise pass the gate.
                {
                    let until = self.rollback_memory(g.deadline_s);
                    let mut st = self.lock();
                    st.rolled_back.insert(text.clone(), until);
                    st.deciding.remove(&text);
                }
                self.roll_back(&text, &req.branches, g.deadline_s).await;
                return done(
                    &req.gtrid,
                    TxOutcome::RolledBack,
                    format!("another node could not prepare its branches: {why}"),
                );
            }
            failpoint::hit("tm.after_remote_prepare");
        }
        // Set when a one-phase commit may have committed without an answer: from then
        // on the transaction must never be rolled back.
        let mut maybe_committed = false;
        if prepared.len() == 1 && remote.is_empty() && self.one_phase_commit {
            let b = &prepared[0];
            match self.commit_branch(&text, b, Decision::of(&prepared)).await {
                BranchEnd::Done => {
                    self.lock().deciding.remove(&text);
                    return done(&req.gtrid, TxOutcome::Committed, "");
                }
                BranchEnd::Pending(e) => {
                    // The branch is still prepared and nothing else decided; make the
                    // decision durable and let recovery finish it.
                    tracing::warn!(gtrid = %text, error = %e, "one-phase commit failed; logging the decision");
                    maybe_committed = true;
                }
                BranchEnd::Heuristic(e) => {
                    // The only branch refused to commit: nothing committed and nothing
                    // was logged, so the transaction is rolled back (recovery rolls
                    // the branch back if it is still prepared).
                    {
                        let until = self.rollback_memory(g.deadline_s);
                        let mut st = self.lock();
                        st.deciding.remove(&text);
                        st.rolled_back.insert(text.clone(), until);
                    }
                    return done(
                        &req.gtrid,
                        TxOutcome::RolledBack,
                        format!("the resource manager refused to commit: {e}"),
                    );
                }
            }
        }
        let decision = Decision::of(&prepared);
        let entry = Entry {
            gtrid: text.as_bytes().to_vec(),
            state: TxState::Commit,
            advice: tpmon_txlog::Advice::None,
            branches: prepared
                .iter()
                .map(|b| LogBranch {
                    rm: u32::from(b.group),
                    bqual: b.bqual.clone(),
                    state: 0,
                })
                .collect(),
            data: decision.encode(),
        };
        // The decision's fdatasync is the commit point. It blocks this worker thread in
        // place (the runtime moves the worker's other tasks elsewhere) instead of
        // hopping to a blocking thread and back: two wake-ups fewer per commit.
        let logged = match how {
            LogCall::Direct => self.log.put(entry),
            LogCall::InPlace
                if tokio::runtime::Handle::current().runtime_flavor()
                    == tokio::runtime::RuntimeFlavor::MultiThread =>
            {
                tokio::task::block_in_place(|| self.log.put(entry))
            }
            LogCall::InPlace => self.log_op(move |log| log.put(entry)).await,
        };
        if let Err(e) = logged {
            if !maybe_committed
                && matches!(
                    e,
                    tpmon_txlog::LogError::Full { .. } | tpmon_txlog::LogError::InvalidEntry(_)
                )
            {
                // Refused before anything was written (the log is full, or the entry is
                // invalid): nothing durable, so presumed abort holds and the
                // transaction rolls back. An I/O error or a poisoned log may have lost
                // or kept the record: that case is below.
                tracing::error!(gtrid = %text, error = %e, "cannot log the commit decision; rolling back");
                // Marked rolled back in the same critical section that lets it out of
                // `deciding`: a second end in between would otherwise pass the gate.
                {
                    let until = self.rollback_memory(g.deadline_s);
                    let mut st = self.lock();
                    st.rolled_back.insert(text.clone(), until);
                    st.deciding.remove(&text);
                }
                self.roll_back(&text, &req.branches, g.deadline_s).await;
                return done(
                    &req.gtrid,
                    TxOutcome::RolledBack,
                    format!("the commit decision could not be logged: {e}"),
                );
            }
            // The flush carrying the record failed: it may or may not be on the disk,
            // and the log refuses every later change (it is poisoned). Neither outcome
            // can be promised: the branches stay prepared (the transaction stays in
            // `deciding`, so recovery leaves them alone) and the next boot's recovery
            // decides from what the log on disk holds.
            tracing::error!(gtrid = %text, error = %e, "cannot log the commit decision; the outcome is decided by recovery at the next boot");
            return done(
                &req.gtrid,
                TxOutcome::Hazard,
                format!(
                    "the commit decision could not be made durable ({e}); the outcome is \
                     decided when the domain restarts"
                ),
            );
        }
        // One more commit decision logged: the commit sequence number (GET_MAX_SCN).
        self.scn.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        failpoint::hit("tm.after_decision");
        self.lock().tracked.insert(
            text.clone(),
            Tracked {
                state: "committing",
                since: SystemTime::now(),
                branches: prepared
                    .iter()
                    .map(|b| {
                        (
                            b.group,
                            String::from_utf8_lossy(&b.bqual).into_owned(),
                            false,
                        )
                    })
                    .collect(),
                retries: 0,
                last_error: String::new(),
            },
        );
        if req.wait_completed {
            let p = self.phase_two(&text, &prepared, decision).await;
            if p.heuristic > 0 && p.committed > 0 {
                done(
                    &req.gtrid,
                    TxOutcome::Mixed,
                    format!(
                        "{} branch(es) committed, {} refused by their resource manager; kept for the operator (tpmon tx list)",
                        p.committed, p.heuristic
                    ),
                )
            } else if p.heuristic > 0 {
                done(
                    &req.gtrid,
                    TxOutcome::Hazard,
                    format!(
                        "{} branch(es) refused by their resource manager; kept for the operator (tpmon tx list)",
                        p.heuristic
                    ),
                )
            } else if p.pending == 0 {
                done(&req.gtrid, TxOutcome::Committed, "")
            } else {
                done(
                    &req.gtrid,
                    TxOutcome::CommittedPending,
                    format!("{} branch(es) will be committed by recovery", p.pending),
                )
            }
        } else {
            // Back-pressure: originators that do not wait for phase 2 must not run
            // ahead of it, or prepared branches pile up in the resource managers
            // (which cap them: max_prepared_transactions). The answer waits for a
            // place among the transactions in phase 2.
            let permit = self.phase_two_slots.clone().acquire_owned().await;
            *after = Some(PhaseTwoJob {
                tm: self.clone(),
                gtrid: text,
                branches: prepared,
                decision,
                _slot: permit.ok(),
            });
            done(&req.gtrid, TxOutcome::Committed, "")
        }
    }

    /// The answer to a second end of a transaction this manager already ended or is
    /// ending, if it is one.
    fn already_ended(&self, text: &str, req: &TxEnd) -> Option<TxDone> {
        let st = self.lock();
        self.ended_answer(&st, text, req)
    }

    /// Claims the transaction for a rollback, in one step under the lock: refused
    /// (with the answer [`Tm::already_ended`] would give) while another end is
    /// deciding it or the log holds its decision, which a rollback must never
    /// contradict. Otherwise it is remembered as rolled back, so that no commit passes
    /// the gate after this.
    fn claim_rollback(&self, text: &str, req: &TxEnd, deadline_s: u64) -> Option<TxDone> {
        let mut st = self.lock();
        if let Some(answer) = self.ended_answer(&st, text, req) {
            if answer.outcome != TxOutcome::RolledBack {
                return Some(answer);
            }
        }
        let until = self.rollback_memory(deadline_s);
        st.rolled_back.insert(text.to_string(), until);
        None
    }

    /// How long a rolled-back transaction is remembered: until its deadline, which
    /// servers refuse beyond now + the domain's longest timeout (+ 2 s), so a
    /// deadline further ahead than that (a confused or hostile client) cannot make
    /// the memory grow for good.
    pub(crate) fn rollback_memory(&self, deadline_s: u64) -> u64 {
        let cap = (now_unix_ms() + self.timeout_max.as_millis() as u64 + 2000).div_ceil(1000);
        deadline_s.min(cap)
    }

    /// [`Tm::already_ended`] with the lock held.
    fn ended_answer(&self, st: &crate::State, text: &str, req: &TxEnd) -> Option<TxDone> {
        let answer =
            |outcome, detail: &str| Some(done(text.as_bytes(), outcome, detail.to_string()));
        if st.deciding.contains(text) {
            return answer(TxOutcome::Refused, "the transaction is being ended already");
        }
        if self.log.holds(text.as_bytes()) {
            return match self.log.get(text.as_bytes()).map(|e| e.state) {
                Some(TxState::Commit) if req.commit => answer(
                    TxOutcome::CommittedPending,
                    "the commit was decided already",
                ),
                Some(TxState::Commit) => {
                    answer(TxOutcome::Refused, "the transaction was committed already")
                }
                _ => answer(
                    TxOutcome::RolledBack,
                    "the transaction was rolled back already",
                ),
            };
        }
        if st.rolled_back.contains_key(text) {
            return answer(
                TxOutcome::RolledBack,
                "the transaction was rolled back already",
            );
        }
        None
    }

    /// Commits every branch of a logged decision; forgets the decision when all are
    /// done. Returns the number of branches left for recovery.
    pub(crate) async fn phase_two(
        self: &Arc<Self>,
        gtrid: &str,
        branches: &[Branch],
        decision: Decision,
    ) -> PhaseTwo {
        let mut results = Vec::with_capacity(branches.len());
        let remote: Vec<(u16, Vec<u8>)> = branches
            .iter()
            .map(|b| (b.group, b.bqual.clone()))
            .collect();
        let remote = self.by_node(&remote);
        if let ([b], true) = (branches, remote.is_empty()) {
            failpoint::hit("tm.phase2");
            results.push(Ok(self.commit_branch(gtrid, b, decision).await));
        } else if !remote.is_empty() {
            // One request per other node for its branches; each local branch on its
            // own, all in parallel.
            let mut per_node = Vec::new();
            for (node, bs) in remote {
                let me = self.clone();
                let g = gtrid.to_string();
                per_node.push((
                    node,
                    tokio::spawn(async move {
                        failpoint::hit("tm.phase2");
                        match me.remote_end(node, &g, bs, true, decision).await {
                            Ok(()) => BranchEnd::Done,
                            Err(e @ XaError::Failed(_)) => BranchEnd::Heuristic(e.to_string()),
                            Err(e) => BranchEnd::Pending(e.to_string()),
                        }
                    }),
                ));
            }
            let mut local = Vec::new();
            for b in branches
                .iter()
                .filter(|b| self.remote_node(b.group).is_none())
            {
                let me = self.clone();
                let (g, b) = (gtrid.to_string(), b.clone());
                local.push(tokio::spawn(async move {
                    failpoint::hit("tm.phase2");
                    me.commit_branch(&g, &b, decision).await
                }));
            }
            let mut node_results = Vec::new();
            for (node, t) in per_node {
                node_results.push((node, t.await));
            }
            let mut local = local.into_iter();
            for b in branches {
                match self.remote_node(b.group) {
                    Some(n) => {
                        let r = node_results
                            .iter()
                            .find(|(k, _)| *k == n)
                            .map(|(_, r)| match r {
                                Ok(e) => e.clone(),
                                Err(e) => BranchEnd::Pending(e.to_string()),
                            })
                            .unwrap_or_else(|| BranchEnd::Pending("no answer".into()));
                        results.push(Ok(r));
                    }
                    None => match local.next() {
                        Some(t) => results.push(t.await),
                        None => results.push(Ok(BranchEnd::Pending("lost".into()))),
                    },
                }
            }
        } else {
            // In parallel (one branch's slow database does not hold up the others),
            // on the calling task: no hand-off to other runtime threads per branch.
            // A panic in one branch's commit leaves that branch to recovery (as a
            // failed task did when each branch had one).
            let ends = futures_util::future::join_all(branches.iter().map(|b| {
                futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(async move {
                    failpoint::hit("tm.phase2");
                    self.commit_branch(gtrid, b, decision).await
                }))
            }))
            .await;
            results.extend(ends.into_iter().map(|r| {
                Ok(r.unwrap_or_else(|_| BranchEnd::Pending("the commit panicked".into())))
            }));
        }
        self.finish_phase_two(gtrid, results).await
    }

    /// Phase 2 of a transaction whose branches are all on local PostgreSQL groups,
    /// on the calling thread with blocking sessions, one branch after the other; the
    /// caller is a thread of its own outside the runtime (the local port's), so a
    /// commit costs no hand-off between threads. `None` (nothing done) when any
    /// branch is elsewhere: use [`Tm::phase_two`].
    pub(crate) fn phase_two_blocking(
        self: &Arc<Self>,
        handle: &tokio::runtime::Handle,
        gtrid: &str,
        branches: &[Branch],
        decision: Decision,
    ) -> Option<PhaseTwo> {
        let pools: Vec<&Arc<crate::pool::Pool>> = branches
            .iter()
            .map(|b| {
                self.pool(b.group)
                    .filter(|p| p.blocking_capable() && self.remote_node(b.group).is_none())
            })
            .collect::<Option<_>>()?;
        let mut results = Vec::with_capacity(branches.len());
        // Groups whose database did not answer for an earlier branch of this job: their
        // other branches are left to recovery at once, so that a hung database holds
        // the thread for one deadline, not one per branch.
        let mut silent: Vec<(u16, String)> = Vec::new();
        for (b, pool) in branches.iter().zip(pools) {
            if let Some((_, e)) = silent.iter().find(|(g, _)| *g == b.group) {
                results.push(Ok(BranchEnd::Pending(format!(
                    "not tried: an earlier branch of its group got no answer ({e})"
                ))));
                continue;
            }
            failpoint::hit("tm.phase2");
            let xid = Xid::new(gtrid, String::from_utf8_lossy(&b.bqual).into_owned());
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                pool.commit_blocking(handle, &xid)
                    .unwrap_or_else(|| handle.block_on(pool.commit(&xid, decision)))
            }));
            let end = match r {
                Ok(r) => branch_end(r),
                // A bug, not a verdict: the branch is left to recovery.
                Err(_) => BranchEnd::Pending("the commit panicked".into()),
            };
            if let BranchEnd::Pending(e) = &end {
                silent.push((b.group, e.clone()));
            }
            results.push(Ok(end));
        }
        Some(handle.block_on(self.finish_phase_two(gtrid, results)))
    }

    /// Records what phase 2 did to each branch (in the order of the decision's
    /// branches) and forgets the decision when every branch is done.
    async fn finish_phase_two(
        self: &Arc<Self>,
        gtrid: &str,
        results: Vec<Result<BranchEnd, tokio::task::JoinError>>,
    ) -> PhaseTwo {
        let mut p = PhaseTwo::default();
        let mut last_error = String::new();
        let mut states = Vec::with_capacity(results.len());
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Ok(BranchEnd::Done) => {
                    p.committed += 1;
                    states.push(BRANCH_DONE);
                    if let Some(tr) = self.lock().tracked.get_mut(gtrid) {
                        if let Some(b) = tr.branches.get_mut(i) {
                            b.2 = true;
                        }
                    }
                }
                Ok(BranchEnd::Heuristic(e)) => {
                    p.heuristic += 1;
                    states.push(BRANCH_HEURISTIC);
                    last_error = e;
                }
                Ok(BranchEnd::Pending(e)) => {
                    p.pending += 1;
                    states.push(BRANCH_PENDING);
                    last_error = e;
                }
                Err(e) => {
                    p.pending += 1;
                    states.push(BRANCH_PENDING);
                    last_error = e.to_string();
                }
            }
        }
        if p.heuristic > 0 {
            if self
                .keep_heuristic(gtrid, &states, &last_error, p.committed > 0)
                .await
            {
                self.lock().deciding.remove(gtrid);
            }
            // Else the refusal is not durable: the transaction stays held (in
            // `deciding`) so that nothing retries it until the operator looks.
            return p;
        }
        let pending = p.pending;
        if pending == 0 {
            failpoint::hit("tm.after_phase2");
            // Losing this removal in a crash only makes recovery commit again, which
            // finds nothing to do; so it rides on the next flush (no fdatasync of its
            // own) and no one waits for it.
            if let Err(e) = self.log.remove_lazy(gtrid.as_bytes()) {
                tracing::warn!(gtrid, error = %e, "cannot remove a completed transaction from the log");
            }
            let mut st = self.lock();
            st.tracked.remove(gtrid);
            st.deciding.remove(gtrid);
        } else {
            tracing::warn!(gtrid, pending, error = %last_error, "phase 2 incomplete; recovery will retry");
            let mut st = self.lock();
            if let Some(tr) = st.tracked.get_mut(gtrid) {
                tr.state = "committing (retrying)";
                tr.last_error = last_error;
            }
            // Recovery drives it from the log from now on.
            st.deciding.remove(gtrid);
        }
        p
    }

    /// Records durably which branches the resource managers refused (state
    /// [`BRANCH_HEURISTIC`] in the entry), so that recovery leaves the transaction
    /// to the operator, and shows it in `tpmon tx list`.
    /// Returns whether the outcome is durable in the log.
    pub(crate) async fn keep_heuristic(
        &self,
        gtrid: &str,
        states: &[u8],
        why: &str,
        mixed: bool,
    ) -> bool {
        let kind = if mixed {
            "heuristic mixed"
        } else {
            "heuristic hazard"
        };
        tracing::error!(gtrid, error = %why, "{kind}: a resource manager refused the commit decision; kept for the operator");
        let mut durable = false;
        if let Some(mut e) = self
            .log
            .get(gtrid.as_bytes())
            .filter(|_| self.log.holds(gtrid.as_bytes()))
        {
            for (b, s) in e.branches.iter_mut().zip(states) {
                b.state = *s;
            }
            match self.log_op(move |log| log.put(e)).await {
                Ok(_) => durable = true,
                Err(err) => {
                    tracing::error!(gtrid, error = %err, "cannot record the heuristic outcome in the log")
                }
            }
        }
        let mut st = self.lock();
        let tr = st
            .tracked
            .entry(gtrid.to_string())
            .or_insert_with(|| Tracked {
                state: "",
                since: SystemTime::now(),
                branches: Vec::new(),
                retries: 0,
                last_error: String::new(),
            });
        tr.state = kind;
        tr.last_error = why.to_string();
        for (b, s) in tr.branches.iter_mut().zip(states) {
            b.2 = *s == BRANCH_DONE;
        }
        durable
    }

    async fn commit_branch(&self, gtrid: &str, b: &Branch, decision: Decision) -> BranchEnd {
        let Some(pool) = self.pool(b.group) else {
            return BranchEnd::Pending(format!("group #{} has no resource manager", b.group));
        };
        let xid = Xid::new(gtrid, String::from_utf8_lossy(&b.bqual).into_owned());
        branch_end(pool.commit(&xid, decision).await)
    }

    /// Rolls back the prepared branches it is told of and remembers the transaction
    /// as rolled back until its deadline passed, so that recovery also rolls back a
    /// branch that prepares late (after this rollback).
    pub(crate) async fn roll_back(&self, gtrid: &str, branches: &[Branch], deadline_s: u64) {
        let until = self.rollback_memory(deadline_s);
        self.lock().rolled_back.insert(gtrid.to_string(), until);
        let mut tasks = Vec::new();
        for b in branches
            .iter()
            .filter(|b| b.vote == Vote::Prepared && usable_bqual(&b.bqual))
        {
            let Some(pool) = self.pool(b.group).cloned() else {
                continue;
            };
            let xid = Xid::new(gtrid, String::from_utf8_lossy(&b.bqual).into_owned());
            tasks.push(tokio::spawn(async move {
                match pool.rollback(&xid).await {
                    Ok(()) | Err(XaError::NotFound(_)) => None,
                    Err(e) => Some(e.to_string()),
                }
            }));
        }
        for t in tasks {
            if let Ok(Some(e)) = t.await {
                // Recovery finds the branch still prepared and rolls it back later.
                tracing::warn!(gtrid, error = %e, "rollback of a branch failed; recovery will retry");
            }
        }
        // Branches on other nodes: their TMs roll them back (one that cannot be
        // reached asks this one later and hears "roll back").
        let remote: Vec<(u16, Vec<u8>)> = branches
            .iter()
            .filter(|b| b.vote == Vote::Prepared)
            .map(|b| (b.group, b.bqual.clone()))
            .collect();
        for (node, bs) in self.by_node(&remote) {
            if let Err(e) = self
                .remote_end(node, gtrid, bs, false, Decision::default())
                .await
            {
                tracing::warn!(gtrid, error = %e, "rollback on another node failed; it resolves by asking later");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::usable_bqual;

    #[test]
    fn only_printable_text_without_the_gid_separator_names_a_branch() {
        assert!(usable_bqual(b"3.1f2a.7"));
        assert!(usable_bqual(b""));
        assert!(usable_bqual("zweig-ü".as_bytes()));
        assert!(!usable_bqual(b"a\0b"));
        assert!(!usable_bqual(b"a\nb"));
        assert!(!usable_bqual(b"a|b"));
        assert!(!usable_bqual(&[0xff, 0xfe]));
    }
}
