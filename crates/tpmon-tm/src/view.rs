//! What the operator sees and may do: the list of transactions with work left, and
//! resolving one by hand.

use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;
use tpmon_proto::Gtrid;
use tpmon_txlog::{Branch as LogBranch, Entry, TxState};
use tpmon_xa::{XaError, Xid};

use crate::{now_unix_ms, Tm, DEADLINE_GRACE, EPOCH_KEY};

/// One branch in [`TxView`].
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TxViewBranch {
    /// Server group index.
    pub group: u16,
    /// Branch qualifier.
    pub bqual: String,
    /// Finished (committed or rolled back).
    pub done: bool,
}

/// One transaction with work left, as `tpmon tx list` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TxView {
    /// The gtrid.
    pub gtrid: String,
    /// The node whose transaction manager coordinates it (the one the gtrid names;
    /// this node unless it holds the branches as a subordinate).
    pub coordinator: String,
    /// `committing`, `rolling back`, `… (retrying)` or `in flight` (prepared branches
    /// of a transaction that is still running or not yet past its deadline).
    pub state: String,
    /// Whether the log holds a decision for it.
    pub logged: bool,
    /// Seconds since the manager first saw it.
    pub age_s: u64,
    /// Its branches.
    pub branches: Vec<TxViewBranch>,
    /// Attempts recovery made.
    pub retries: u32,
    /// The last error, if any.
    pub last_error: String,
}

/// The node a gtrid names (empty if it is not one of tpmon's).
fn coordinator_of(gtrid: &str) -> String {
    Gtrid::parse(gtrid.as_bytes()).map_or(String::new(), |g| g.node)
}

impl Tm {
    /// The transactions with work left: logged decisions not yet completed, and
    /// prepared branches recovery has seen that no decision covers yet.
    pub fn list(&self) -> Vec<TxView> {
        let st = self.lock();
        let mut out = Vec::new();
        let age = |since: SystemTime| since.elapsed().map_or(0, |d| d.as_secs());
        for e in self
            .log
            .iter()
            .filter(|e| e.gtrid != EPOCH_KEY && self.log.holds(&e.gtrid))
        {
            let gtrid = String::from_utf8_lossy(&e.gtrid).into_owned();
            let tr = st.tracked.get(&gtrid);
            let heuristic = e
                .branches
                .iter()
                .any(|b| b.state == crate::commit::BRANCH_HEURISTIC);
            let state = match (e.state, tr) {
                (_, Some(t)) => t.state.to_string(),
                (_, None) if heuristic => "heuristic (operator)".into(),
                (TxState::Commit, None) => "committing".into(),
                (TxState::Rollback, None) => "rolling back".into(),
                (TxState::Prepare, None) => "prepared (subordinate)".into(),
                (other, None) => format!("{other:?}"),
            };
            let branches = e
                .branches
                .iter()
                .enumerate()
                .map(|(i, b)| TxViewBranch {
                    group: b.rm as u16,
                    bqual: String::from_utf8_lossy(&b.bqual).into_owned(),
                    done: b.state == crate::commit::BRANCH_DONE
                        || tr.and_then(|t| t.branches.get(i)).is_some_and(|x| x.2),
                })
                .collect();
            out.push(TxView {
                coordinator: coordinator_of(&gtrid),
                gtrid,
                state,
                logged: true,
                age_s: tr.map_or(0, |t| age(t.since)),
                branches,
                retries: tr.map_or(0, |t| t.retries),
                last_error: tr.map_or(String::new(), |t| t.last_error.clone()),
            });
        }
        for (gtrid, t) in st.tracked.iter() {
            if self.log.holds(gtrid.as_bytes()) {
                continue;
            }
            out.push(TxView {
                coordinator: coordinator_of(gtrid),
                gtrid: gtrid.clone(),
                state: t.state.to_string(),
                logged: false,
                age_s: age(t.since),
                branches: t
                    .branches
                    .iter()
                    .map(|(g, b, d)| TxViewBranch {
                        group: *g,
                        bqual: b.clone(),
                        done: *d,
                    })
                    .collect(),
                retries: t.retries,
                last_error: t.last_error.clone(),
            });
        }
        out.sort_by(|a, b| a.gtrid.cmp(&b.gtrid));
        out
    }

    /// Resolves one transaction by hand and drives it on every resource manager.
    /// Returns a message for the operator.
    ///
    /// * A logged decision is driven again (after a resource manager came back);
    ///   asking for the other outcome is refused.
    /// * Without a logged decision, presumed abort has decided rollback: `commit` is
    ///   refused, and `rollback` is refused while the transaction may still be running
    ///   (its originator may still end it).
    ///
    /// The transaction is held in the set of transactions being decided meanwhile,
    /// so recovery does not act on it at the same time.
    pub async fn resolve(self: &Arc<Self>, gtrid: &str, commit: bool) -> Result<String, String> {
        {
            let mut st = self.lock();
            if !st.deciding.insert(gtrid.to_string()) {
                return Err(format!("refused: {gtrid} is being decided right now"));
            }
        }
        let r = self.resolve_held(gtrid, commit).await;
        self.lock().deciding.remove(gtrid);
        r
    }

    /// The branches of `gtrid` prepared in this node's resource managers.
    async fn prepared_in_rms(&self, gtrid: &str) -> Result<Vec<LogBranch>, String> {
        let mut branches = Vec::new();
        for (group, pool) in self.pools.iter().enumerate() {
            let Some(pool) = pool.clone() else { continue };
            if self.rm_of_group[group] != group {
                continue;
            }
            match pool.recover(gtrid).await {
                Ok(xids) => {
                    branches.extend(xids.into_iter().filter(|x| x.gtrid == gtrid).map(|x| {
                        LogBranch {
                            rm: group as u32,
                            bqual: x.bqual.into_bytes(),
                            state: 0,
                        }
                    }))
                }
                Err(e) => {
                    return Err(format!(
                        "cannot list the branches in group #{group}'s resource manager: {e}"
                    ))
                }
            }
        }
        Ok(branches)
    }

    async fn resolve_held(self: &Arc<Self>, gtrid: &str, commit: bool) -> Result<String, String> {
        let word = if commit { "commit" } else { "rollback" };
        match Gtrid::parse(gtrid.as_bytes()) {
            Some(g) if g.domain != self.domain => {
                return Err(format!(
                    "refused: {gtrid} belongs to domain {:?}; resolve it from there",
                    g.domain
                ))
            }
            Some(g) if g.node != self.node => {
                // This node is a subordinate: the coordinator's outcome decides.
                let here = self
                    .prepared_in_rms(gtrid)
                    .await?
                    .into_iter()
                    .filter_map(|b| u16::try_from(b.rm).ok().map(|g| (g, b.bqual)))
                    .collect();
                return self.resolve_by_hand(gtrid, &g.node, commit, here).await;
            }
            _ => {}
        }
        if let Some(e) = self
            .log
            .get(gtrid.as_bytes())
            .filter(|_| self.log.holds(gtrid.as_bytes()))
        {
            let logged_commit = e.state == TxState::Commit;
            if logged_commit != commit {
                return Err(format!(
                    "refused: the log already decided {} for {gtrid}",
                    if logged_commit { "commit" } else { "rollback" }
                ));
            }
        } else {
            // Older than the log: the log that decided it is gone, and the operator
            // decides (from the other databases' state) either way.
            let older_than_log =
                Gtrid::parse(gtrid.as_bytes()).is_some_and(|g| self.epoch_of_another_log(g.epoch));
            if commit && !older_than_log {
                return Err(format!(
                    "refused: the log holds no commit decision for {gtrid}, so it is \
                     presumed aborted (rolled back)"
                ));
            }
            {
                let st = self.lock();
                if let Some(g) = Gtrid::parse(gtrid.as_bytes()) {
                    let grace = DEADLINE_GRACE.as_millis() as u64;
                    let running = g.epoch == self.epoch
                        && !st.rolled_back.contains_key(gtrid)
                        && now_unix_ms() < g.deadline_s.saturating_mul(1000).saturating_add(grace);
                    if running {
                        return Err(format!(
                            "refused: {gtrid} may still be running (its deadline has not \
                             passed); end it from its originator or wait"
                        ));
                    }
                }
            }
            let branches = self.prepared_in_rms(gtrid).await?;
            if branches.is_empty() {
                return Err(format!(
                    "no resource manager holds a prepared branch of {gtrid}"
                ));
            }
            let entry = Entry {
                gtrid: gtrid.as_bytes().to_vec(),
                state: if commit {
                    TxState::Commit
                } else {
                    TxState::Rollback
                },
                advice: tpmon_txlog::Advice::None,
                branches,
                data: Vec::new(),
            };
            self.log_op(move |log| log.put(entry))
                .await
                .map_err(|e| format!("cannot log the decision: {e}"))?;
        }
        // Drive it now.
        let Some(e) = self
            .log
            .get(gtrid.as_bytes())
            .filter(|_| self.log.holds(gtrid.as_bytes()))
        else {
            return Ok(format!("{gtrid}: already completed"));
        };
        let mut left = 0;
        let mut last = String::new();
        let decision = crate::Decision::decode(&e.data);
        // Branches on other nodes: through their TMs (which carry out this decision,
        // their own heuristic outcome included).
        let remote: Vec<(u16, Vec<u8>)> = e
            .branches
            .iter()
            .filter_map(|b| u16::try_from(b.rm).ok().map(|g| (g, b.bqual.clone())))
            .filter(|(g, _)| self.remote_node(*g).is_some())
            .collect();
        for (node, bs) in self.by_node(&remote) {
            let n = bs.len();
            if let Err(err) = self.remote_end(node, gtrid, bs, commit, decision).await {
                left += n;
                last = err.to_string();
            }
        }
        for b in &e.branches {
            if u16::try_from(b.rm).is_ok_and(|g| self.remote_node(g).is_some()) {
                continue;
            }
            let Some(pool) = u16::try_from(b.rm).ok().and_then(|g| self.pool(g)).cloned() else {
                left += 1;
                continue;
            };
            let xid = Xid::new(gtrid, String::from_utf8_lossy(&b.bqual).into_owned());
            let r = if commit {
                pool.commit(&xid, decision).await
            } else {
                pool.rollback(&xid).await
            };
            match r {
                Ok(()) | Err(XaError::NotFound(_)) => {}
                Err(err) => {
                    left += 1;
                    last = err.to_string();
                }
            }
        }
        if left == 0 {
            let _ = self.log.remove_lazy(gtrid.as_bytes());
            self.lock().tracked.remove(gtrid);
            Ok(format!(
                "{gtrid}: {word} done on {} branch(es)",
                e.branches.len()
            ))
        } else {
            Ok(format!(
                "{gtrid}: {word} logged; {left} branch(es) left for recovery ({last})"
            ))
        }
    }
}
