//! Transactions spanning nodes: the coordinator's requests to the transaction managers
//! of the other nodes whose groups hold branches, and those managers' side as
//! subordinates.
//!
//! The coordinator is the transaction manager of the node the gtrid names (where the
//! transaction began). A branch of a group of another node X was prepared by X's
//! server before it replied, so X's TM has nothing to ask its resource managers at
//! prepare time: it makes its own log entry durable (state Prepare, the branches) and
//! answers ready. Ordering of the durable writes (docs/design-transactions.md):
//! 1. every subordinate's Prepare entry (before it answers ready);
//! 2. the coordinator's Commit decision, listing every branch (a branch's group says
//!    which node holds it);
//! 3. phase 2: each subordinate commits its branches, then forgets its entry;
//! 4. the coordinator forgets its decision once every branch and subordinate is done.
//!
//! Presumed abort everywhere: a subordinate with a Prepare entry and no outcome asks the
//! coordinator (QUERY_ADVICE); the coordinator answers from its log, and without an
//! entry answers "roll back" only when no commit can be decided any more (an earlier
//! epoch, rolled back here, or the deadline plus the grace passed), else "wait". A
//! subordinate never guesses: unreachable coordinator, "wait": it asks again later.
//!
//! Bodies of the link items (Prepare, Commit, Rollback, QueryAdvice; all integers
//! little-endian), documented in docs/protocol.md:
//! * request: `u8 version (1)`, `u16 len` + gtrid, `u64 gcpn`, `u16 origin`,
//!   `u16 n`, then per branch `u16 group`, `u16 len` + bqual;
//! * response: `u8 version (1)`, `u8 status` (see [`Status`]), `u64 gcpn`,
//!   `u16 origin`, `u16 len` + detail text.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tpmon_proto::Gtrid;
use tpmon_txlog::{Advice, Branch as LogBranch, Entry, TxState};
use tpmon_xa::{failpoint, XaError, Xid};

use crate::commit::{BRANCH_DONE, BRANCH_HEURISTIC};
use crate::{now_unix_ms, Decision, Tm, Tracked, DEADLINE_GRACE};

/// What the coordinator asks another node's transaction manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubItem {
    /// Log the branches as prepared (they are, in the resource managers) and answer.
    Prepare,
    /// Commit the branches with the decision's numbers, then forget them.
    Commit,
    /// Roll the branches back, then forget them.
    Rollback,
    /// (Subordinate to coordinator, or to another node when the coordinator cannot be
    /// reached) what was decided for this transaction?
    QueryAdvice,
    /// (Subordinate to any node) its commit sequence number: the body of the request
    /// is empty, the answer's is [`ScnAnswer`]'s.
    GetMaxScn,
    /// RECOVER_INDOUBT_GLOBAL_TX (coordinator to subordinate): resolve these in-doubt
    /// transactions with their outcomes; bodies [`InDoubt::encode_list`] and
    /// [`encode_gtrids`].
    RecoverInDoubt,
}

/// One transaction of a RECOVER_INDOUBT_GLOBAL_TX request: its outcome as the
/// coordinator's log holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InDoubt {
    /// The transaction.
    pub gtrid: Vec<u8>,
    /// Commit (true) or roll back.
    pub commit: bool,
    /// The decision's numbers (commit only).
    pub decision: Decision,
}

impl InDoubt {
    /// The request body: `u8 version = 1`, `u16 n`, then per transaction `u16 len` +
    /// gtrid, `u8 outcome` (1 commit, 2 roll back), `u64 gcpn`, `u16 origin` (all
    /// little-endian).
    pub fn encode_list(list: &[InDoubt]) -> Vec<u8> {
        let mut v = vec![VERSION];
        let n = list.len().min(u16::MAX as usize);
        v.extend_from_slice(&(n as u16).to_le_bytes());
        for t in &list[..n] {
            put16(&mut v, &t.gtrid);
            v.push(if t.commit { 1 } else { 2 });
            v.extend_from_slice(&t.decision.gcpn.to_le_bytes());
            v.extend_from_slice(&t.decision.origin.to_le_bytes());
        }
        v
    }

    /// Reads [`InDoubt::encode_list`]'s bytes.
    pub fn decode_list(body: &[u8]) -> Option<Vec<InDoubt>> {
        let mut r = Rd(body);
        if r.u8()? != VERSION {
            return None;
        }
        let n = r.u16()? as usize;
        let mut out = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            let gtrid = r.bytes16()?;
            let commit = match r.u8()? {
                1 => true,
                2 => false,
                _ => return None,
            };
            let gcpn = r.u64()?;
            let origin = r.u16()?;
            out.push(InDoubt {
                gtrid,
                commit,
                decision: Decision { gcpn, origin },
            });
        }
        r.0.is_empty().then_some(out)
    }
}

/// RECOVER_INDOUBT_GLOBAL_TX's answer: the transactions the subordinate finished,
/// `u8 version = 1`, `u16 n`, then per transaction `u16 len` + gtrid.
pub fn encode_gtrids(done: &[Vec<u8>]) -> Vec<u8> {
    let mut v = vec![VERSION];
    let n = done.len().min(u16::MAX as usize);
    v.extend_from_slice(&(n as u16).to_le_bytes());
    for g in &done[..n] {
        put16(&mut v, g);
    }
    v
}

/// Reads [`encode_gtrids`]'s bytes.
pub fn decode_gtrids(body: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut r = Rd(body);
    if r.u8()? != VERSION {
        return None;
    }
    let n = r.u16()? as usize;
    let mut out = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        out.push(r.bytes16()?);
    }
    r.0.is_empty().then_some(out)
}

/// GET_MAX_SCN's answer: the node's commit sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScnAnswer(pub u64);

impl ScnAnswer {
    /// The wire form: `u8 version = 1`, `u64` SCN little-endian.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = vec![VERSION];
        v.extend_from_slice(&self.0.to_le_bytes());
        v
    }

    /// Reads [`ScnAnswer::encode`]'s bytes.
    pub fn decode(body: &[u8]) -> Option<ScnAnswer> {
        let mut r = Rd(body);
        if r.u8()? != VERSION {
            return None;
        }
        let scn = r.u64()?;
        r.0.is_empty().then_some(ScnAnswer(scn))
    }
}

/// A response's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Done (ready, committed, rolled back).
    Ok = 0,
    /// Could not do it now (detail says why); the coordinator retries.
    Failed = 1,
    /// QueryAdvice: commit (with the decision).
    Commit = 2,
    /// QueryAdvice: roll back.
    Rollback = 3,
    /// QueryAdvice: nothing decided yet; ask again later.
    Wait = 4,
    /// Commit: a resource manager refused to commit a branch (a heuristic outcome
    /// there, kept for the operator); the detail says which.
    Heuristic = 5,
}

/// How a transaction manager reaches the others (the daemon implements it over the
/// node links). `request` answers the response body, or why there is none.
pub trait Links: Send + Sync {
    /// Sends `body` as `item` to node `node` and waits for the response.
    fn request(
        &self,
        node: usize,
        item: SubItem,
        body: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send>>;
}

/// A request's body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubRequest {
    /// The transaction.
    pub gtrid: Vec<u8>,
    /// The decision's numbers (Commit only).
    pub decision: Decision,
    /// (group, bqual) of the branches concerned.
    pub branches: Vec<(u16, Vec<u8>)>,
}

/// A response's body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAnswer {
    /// What happened.
    pub status: Status,
    /// The decision (QueryAdvice answered Commit).
    pub decision: Decision,
    /// Why (Failed).
    pub detail: String,
}

/// (group, bqual) of a branch.
pub(crate) type BranchRef = (u16, Vec<u8>);

const VERSION: u8 = 1;

fn put16(v: &mut Vec<u8>, b: &[u8]) {
    let n = b.len().min(u16::MAX as usize);
    v.extend_from_slice(&(n as u16).to_le_bytes());
    v.extend_from_slice(&b[..n]);
}

struct Rd<'a>(&'a [u8]);

impl Rd<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    fn u64(&mut self) -> Option<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Some(u64::from_le_bytes(a))
    }
    fn bytes16(&mut self) -> Option<Vec<u8>> {
        let n = self.u16()? as usize;
        self.take(n).map(<[u8]>::to_vec)
    }
}

impl SubRequest {
    /// The wire form.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = vec![VERSION];
        put16(&mut v, &self.gtrid);
        v.extend_from_slice(&self.decision.gcpn.to_le_bytes());
        v.extend_from_slice(&self.decision.origin.to_le_bytes());
        v.extend_from_slice(&(self.branches.len().min(u16::MAX as usize) as u16).to_le_bytes());
        for (g, b) in self.branches.iter().take(u16::MAX as usize) {
            v.extend_from_slice(&g.to_le_bytes());
            put16(&mut v, b);
        }
        v
    }

    /// Reads [`SubRequest::encode`]'s bytes.
    pub fn decode(body: &[u8]) -> Option<SubRequest> {
        let mut r = Rd(body);
        if r.u8()? != VERSION {
            return None;
        }
        let gtrid = r.bytes16()?;
        let gcpn = r.u64()?;
        let origin = r.u16()?;
        let n = r.u16()? as usize;
        // No transaction has more branches than its log entry can hold; a request
        // with more would only make this node start a task per branch for nothing.
        if n > tpmon_txlog::BRANCHES_MAX {
            return None;
        }
        let mut branches = Vec::with_capacity(n);
        for _ in 0..n {
            let g = r.u16()?;
            branches.push((g, r.bytes16()?));
        }
        r.0.is_empty().then_some(SubRequest {
            gtrid,
            decision: Decision { gcpn, origin },
            branches,
        })
    }
}

impl SubAnswer {
    fn new(status: Status, detail: impl Into<String>) -> SubAnswer {
        SubAnswer {
            status,
            decision: Decision::default(),
            detail: detail.into(),
        }
    }

    /// The wire form.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = vec![VERSION, self.status as u8];
        v.extend_from_slice(&self.decision.gcpn.to_le_bytes());
        v.extend_from_slice(&self.decision.origin.to_le_bytes());
        put16(&mut v, self.detail.as_bytes());
        v
    }

    /// Reads [`SubAnswer::encode`]'s bytes.
    pub fn decode(body: &[u8]) -> Option<SubAnswer> {
        let mut r = Rd(body);
        if r.u8()? != VERSION {
            return None;
        }
        let status = match r.u8()? {
            0 => Status::Ok,
            1 => Status::Failed,
            2 => Status::Commit,
            3 => Status::Rollback,
            4 => Status::Wait,
            5 => Status::Heuristic,
            _ => return None,
        };
        let gcpn = r.u64()?;
        let origin = r.u16()?;
        let detail = String::from_utf8_lossy(&r.bytes16()?).into_owned();
        Some(SubAnswer {
            status,
            decision: Decision { gcpn, origin },
            detail,
        })
    }
}

/// How long a subordinate's Prepare entry waits for the coordinator's phase 2 before
/// recovery asks the coordinator itself.
const ASK_AFTER: Duration = Duration::from_secs(3);

impl Tm {
    /// Sets how this manager reaches the other nodes' (once, at boot).
    pub fn set_links(&self, links: Arc<dyn Links>) {
        let _ = self.links.set(links);
    }

    /// The node holding `group`'s branches when it is another node than this one.
    pub(crate) fn remote_node(&self, group: u16) -> Option<usize> {
        let me = self.me?;
        self.node_of_group
            .get(group as usize)
            .copied()
            .filter(|n| *n != me)
    }

    /// Sends a request to node `node` and reads the answer.
    pub(crate) async fn ask(
        &self,
        node: usize,
        item: SubItem,
        req: SubRequest,
    ) -> Result<SubAnswer, String> {
        let Some(links) = self.links.get() else {
            return Err("no node links".into());
        };
        let name = self.nodes.get(node).cloned().unwrap_or_default();
        let body = links
            .request(node, item, req.encode())
            .await
            .map_err(|e| format!("node {name:?}: {e}"))?;
        SubAnswer::decode(&body).ok_or_else(|| format!("node {name:?}: malformed answer"))
    }

    /// Groups `branches` (group, bqual) by the other node holding them.
    pub(crate) fn by_node(&self, branches: &[BranchRef]) -> Vec<(usize, Vec<BranchRef>)> {
        let mut out: Vec<(usize, Vec<BranchRef>)> = Vec::new();
        for (g, b) in branches {
            if let Some(n) = self.remote_node(*g) {
                match out.iter_mut().find(|(k, _)| *k == n) {
                    Some((_, v)) => v.push((*g, b.clone())),
                    None => out.push((n, vec![(*g, b.clone())])),
                }
            }
        }
        out
    }

    /// Commits (or rolls back) branches on node `node` through its TM.
    pub(crate) async fn remote_end(
        &self,
        node: usize,
        gtrid: &str,
        branches: Vec<(u16, Vec<u8>)>,
        commit: bool,
        decision: Decision,
    ) -> Result<(), XaError> {
        let req = SubRequest {
            gtrid: gtrid.as_bytes().to_vec(),
            decision,
            branches,
        };
        let item = if commit {
            SubItem::Commit
        } else {
            SubItem::Rollback
        };
        let a = self
            .ask(node, item, req)
            .await
            .map_err(XaError::Unavailable)?;
        let why = format!(
            "node {:?}: {}",
            self.nodes.get(node).map_or("?", String::as_str),
            a.detail
        );
        match a.status {
            Status::Ok => Ok(()),
            // Its resource manager refused the commit: a heuristic outcome there.
            Status::Heuristic if commit => Err(XaError::Failed(why)),
            _ => Err(XaError::Unavailable(why)),
        }
    }

    /// Phase 1 on the other nodes: each must log its branches as prepared. Fails if
    /// one cannot (unreachable, refused).
    pub(crate) async fn prepare_remote(
        self: &Arc<Self>,
        gtrid: &str,
        branches: &[BranchRef],
    ) -> Result<(), String> {
        // In parallel: the slowest node, not their sum, bounds phase 1.
        let mut tasks = Vec::new();
        for (node, bs) in self.by_node(branches) {
            let req = SubRequest {
                gtrid: gtrid.as_bytes().to_vec(),
                decision: Decision::default(),
                branches: bs,
            };
            let me = self.clone();
            tasks.push(tokio::spawn(async move {
                me.ask(node, SubItem::Prepare, req).await
            }));
        }
        let mut why = None;
        for t in tasks {
            match t.await {
                Ok(Ok(a)) if a.status == Status::Ok => {}
                Ok(Ok(a)) => why = Some(a.detail),
                Ok(Err(e)) => why = Some(e),
                Err(e) => why = Some(e.to_string()),
            }
        }
        why.map_or(Ok(()), Err)
    }

    /// A request from another node's TM; returns the response body.
    pub async fn on_link_request(
        self: &Arc<Self>,
        from: usize,
        item: SubItem,
        body: &[u8],
    ) -> Vec<u8> {
        if item == SubItem::GetMaxScn {
            return ScnAnswer(self.scn()).encode();
        }
        if item == SubItem::RecoverInDoubt {
            let Some(list) = InDoubt::decode_list(body) else {
                tracing::warn!(
                    peer = from,
                    bytes = body.len(),
                    "malformed RECOVER_INDOUBT_GLOBAL_TX from another node; nothing resolved"
                );
                return encode_gtrids(&[]);
            };
            return encode_gtrids(&self.recover_pushed(from, list).await);
        }
        let Some(req) = SubRequest::decode(body) else {
            return SubAnswer::new(Status::Failed, "malformed request").encode();
        };
        let answer = match item {
            // Answered above (their bodies are not SubRequests).
            SubItem::GetMaxScn | SubItem::RecoverInDoubt => {
                SubAnswer::new(Status::Failed, "malformed request")
            }
            SubItem::QueryAdvice => self.advise(&req),
            SubItem::Prepare => self.sub_prepare(from, req).await,
            SubItem::Commit => self.sub_end(from, req, true).await,
            SubItem::Rollback => self.sub_end(from, req, false).await,
        };
        answer.encode()
    }

    /// Coordinator: what was decided for a transaction a subordinate asks about.
    fn advise(&self, req: &SubRequest) -> SubAnswer {
        let text = String::from_utf8_lossy(&req.gtrid).into_owned();
        let Some(g) = Gtrid::parse(&req.gtrid) else {
            return SubAnswer::new(Status::Failed, "not a tpmon transaction id");
        };
        if g.domain != self.domain {
            return SubAnswer::new(Status::Failed, "not a transaction of this domain");
        }
        if g.node != self.node {
            // Not the coordinator: asked because the coordinator cannot be reached.
            // Only a Prepare entry here holding the coordinator's advice is a definite
            // answer; anything else is "unknown" (never a guess).
            return match self
                .log
                .get(&req.gtrid)
                .filter(|e| self.log.holds(&req.gtrid) && e.state == TxState::Prepare)
                .map(|e| (e.advice, e.data))
            {
                Some((Advice::Commit, data)) => SubAnswer {
                    status: Status::Commit,
                    decision: Decision::decode(&data),
                    detail: String::new(),
                },
                Some((Advice::Rollback, _)) => SubAnswer::new(Status::Rollback, ""),
                _ => SubAnswer::new(
                    Status::Wait,
                    format!("node {:?} does not know the outcome", self.node),
                ),
            };
        }
        let st = self.lock();
        if let Some(e) = self
            .log
            .get(&req.gtrid)
            .filter(|_| self.log.holds(&req.gtrid))
        {
            // A commit decision covers the branches it lists (no branches asked about:
            // those this node told the subordinate to prepare). A branch is matched by
            // its bqual alone, as recovery's `presume` does: groups of two nodes may
            // share one database, whose sweep then finds the other node's branches
            // under its own group. A branch the decision does not list (an orphan,
            // prepared by a server whose reply never came) is never answered "roll
            // back" while the decision is kept: it waits until phase 2 is over.
            let covered = req
                .branches
                .iter()
                .all(|(_, b)| e.branches.iter().any(|x| x.bqual == *b));
            match e.state {
                TxState::Commit if covered => {
                    return SubAnswer {
                        status: Status::Commit,
                        decision: Decision::decode(&e.data),
                        detail: String::new(),
                    }
                }
                TxState::Commit => {
                    return SubAnswer::new(
                        Status::Wait,
                        "a commit decision that does not list this branch is being completed",
                    )
                }
                TxState::Rollback => return SubAnswer::new(Status::Rollback, ""),
                _ => {}
            }
        }
        if st.deciding.contains(&text) {
            return SubAnswer::new(Status::Wait, "being decided");
        }
        if self.epoch_of_another_log(g.epoch) {
            // The log that knew its outcome was replaced: not presumed aborted.
            return SubAnswer::new(
                Status::Wait,
                "from a log the coordinator no longer has, so it cannot know its outcome; \
                 resolve it by hand",
            );
        }
        if g.epoch > self.epoch {
            // Not begun by this log (a newer log it replaced, or a clock set back):
            // never presumed aborted, as recovery leaves such a branch here too.
            return SubAnswer::new(
                Status::Wait,
                "of a later epoch than the coordinator's log, which cannot know its \
                 outcome; resolve it by hand",
            );
        }
        let grace = DEADLINE_GRACE.as_millis() as u64;
        if g.epoch < self.epoch
            || st.rolled_back.contains_key(&text)
            || now_unix_ms() >= g.deadline_s.saturating_mul(1000).saturating_add(grace)
        {
            // Presumed abort: no decision, and none can be made any more.
            SubAnswer::new(Status::Rollback, "")
        } else {
            SubAnswer::new(Status::Wait, "still running")
        }
    }

    /// Subordinate: RECOVER_INDOUBT_GLOBAL_TX from node `from`. Resolves each listed
    /// transaction that `from` coordinates and for which this node holds a Prepare
    /// entry (its branches committed or rolled back with the outcome given, then the
    /// entry removed); returns the gtrids finished. A transaction not held here, being
    /// resolved here already, or whose branches could not all be ended is left out:
    /// the coordinator falls back to Commit or Rollback for it.
    pub(crate) async fn recover_pushed(&self, from: usize, list: Vec<InDoubt>) -> Vec<Vec<u8>> {
        let coordinator = self.nodes.get(from).cloned().unwrap_or_default();
        let mut done = Vec::new();
        for t in list {
            let text = String::from_utf8_lossy(&t.gtrid).into_owned();
            match Gtrid::parse(&t.gtrid) {
                Some(g) if g.domain == self.domain && g.node == coordinator => {}
                _ => {
                    tracing::warn!(gtrid = %text, peer = from, "RECOVER_INDOUBT_GLOBAL_TX names a transaction the sender does not coordinate; left alone");
                    continue;
                }
            }
            let held = self
                .log
                .get(&t.gtrid)
                .filter(|e| self.log.holds(&t.gtrid) && e.state == TxState::Prepare)
                .is_some();
            if !held || !self.lock().deciding.insert(text.clone()) {
                continue;
            }
            let r = self
                .finish_sub(&text, Vec::new(), t.commit, t.decision)
                .await;
            self.lock().deciding.remove(&text);
            match r {
                Ok(()) => {
                    self.pushed_resolved
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::info!(gtrid = %text, commit = t.commit, coordinator = %coordinator, "resolved an in-doubt transaction with the outcome its coordinator pushed (RECOVER_INDOUBT_GLOBAL_TX)");
                    done.push(t.gtrid);
                }
                Err(e) => {
                    tracing::warn!(gtrid = %text, commit = t.commit, error = %e, "could not resolve a pushed in-doubt transaction; will retry")
                }
            }
        }
        done
    }

    /// Coordinator: pushes RECOVER_INDOUBT_GLOBAL_TX to node `node` with `list` and
    /// returns the gtrids it finished (none when it cannot be reached).
    pub(crate) async fn push_in_doubt(&self, node: usize, list: &[InDoubt]) -> Vec<Vec<u8>> {
        let Some(links) = self.links.get() else {
            return Vec::new();
        };
        let name = self.nodes.get(node).map_or("?", String::as_str);
        match links
            .request(node, SubItem::RecoverInDoubt, InDoubt::encode_list(list))
            .await
        {
            Ok(body) => match decode_gtrids(&body) {
                Some(done) => {
                    tracing::info!(
                        node = name,
                        pushed = list.len(),
                        finished = done.len(),
                        "RECOVER_INDOUBT_GLOBAL_TX: pushed logged outcomes to another node"
                    );
                    done
                }
                None => {
                    tracing::warn!(node = name, "malformed RECOVER_INDOUBT_GLOBAL_TX answer");
                    Vec::new()
                }
            },
            Err(e) => {
                tracing::debug!(node = name, error = %e, "could not push RECOVER_INDOUBT_GLOBAL_TX");
                Vec::new()
            }
        }
    }

    /// How many in-doubt transactions this node resolved because their coordinator
    /// pushed the outcome (RECOVER_INDOUBT_GLOBAL_TX).
    pub fn pushed_resolved(&self) -> u64 {
        self.pushed_resolved
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Subordinate: log the branches as prepared.
    async fn sub_prepare(&self, from: usize, req: SubRequest) -> SubAnswer {
        let Some(g) = Gtrid::parse(&req.gtrid) else {
            return SubAnswer::new(Status::Failed, "not a tpmon transaction id");
        };
        if g.domain != self.domain || g.node == self.node {
            return SubAnswer::new(
                Status::Failed,
                "not a transaction another node of this domain coordinates",
            );
        }
        if self.nodes.get(from).map(String::as_str) != Some(g.node.as_str()) {
            return SubAnswer::new(Status::Failed, "only the coordinator may prepare it");
        }
        if let Some((grp, _)) = req
            .branches
            .iter()
            .find(|(grp, _)| self.pool(*grp).is_none())
        {
            return SubAnswer::new(
                Status::Failed,
                format!(
                    "group #{grp} has no resource manager on node {:?}",
                    self.node
                ),
            );
        }
        let text = String::from_utf8_lossy(&req.gtrid).into_owned();
        // Held while logged, like every other end of it here: a Rollback (after the
        // coordinator gave up waiting) or this node's recovery must not act on the
        // entry between its write and its registration below.
        if !self.lock().deciding.insert(text.clone()) {
            return SubAnswer::new(Status::Failed, "being resolved here already");
        }
        let answer = self.sub_prepare_held(&text, req).await;
        self.lock().deciding.remove(&text);
        answer
    }

    /// [`Tm::sub_prepare`] with the transaction held in `deciding`.
    async fn sub_prepare_held(&self, text: &str, req: SubRequest) -> SubAnswer {
        let text = text.to_string();
        let mut branches: Vec<LogBranch> = self
            .log
            .get(&req.gtrid)
            .filter(|e| self.log.holds(&req.gtrid) && e.state == TxState::Prepare)
            .map(|e| e.branches)
            .unwrap_or_default();
        for (grp, b) in &req.branches {
            if !branches
                .iter()
                .any(|x| x.rm == u32::from(*grp) && x.bqual == *b)
            {
                branches.push(LogBranch {
                    rm: u32::from(*grp),
                    bqual: b.clone(),
                    state: 0,
                });
            }
        }
        let entry = Entry {
            gtrid: req.gtrid.clone(),
            state: TxState::Prepare,
            advice: Advice::None,
            branches: branches.clone(),
            data: Vec::new(),
        };
        failpoint::hit("tm.subordinate_before_prepare");
        if let Err(e) = self.log_op(move |log| log.put(entry)).await {
            return SubAnswer::new(
                Status::Failed,
                format!("cannot log the prepared branches: {e}"),
            );
        }
        failpoint::hit("tm.subordinate_after_prepare");
        let mut st = self.lock();
        st.sub_prepared.insert(text.clone(), Instant::now());
        st.tracked.insert(
            text,
            Tracked {
                state: "prepared (subordinate)",
                since: SystemTime::now(),
                branches: branches
                    .iter()
                    .map(|b| {
                        (
                            b.rm as u16,
                            String::from_utf8_lossy(&b.bqual).into_owned(),
                            false,
                        )
                    })
                    .collect(),
                retries: 0,
                last_error: String::new(),
            },
        );
        SubAnswer::new(Status::Ok, "")
    }

    /// Subordinate: commit or roll back the branches (those listed and those the
    /// Prepare entry holds), then forget the entry.
    async fn sub_end(&self, from: usize, req: SubRequest, commit: bool) -> SubAnswer {
        let text = String::from_utf8_lossy(&req.gtrid).into_owned();
        match Gtrid::parse(&req.gtrid) {
            Some(g) if g.domain == self.domain && g.node != self.node => {
                if self.nodes.get(from).map(String::as_str) != Some(g.node.as_str()) {
                    tracing::warn!(gtrid = %text, peer = from, commit, "a node that does not coordinate a transaction asked to end it; refused");
                    return SubAnswer::new(Status::Failed, "only the coordinator may end it");
                }
            }
            _ => {
                return SubAnswer::new(Status::Failed, "not a transaction another node coordinates")
            }
        }
        if !self.lock().deciding.insert(text.clone()) {
            return SubAnswer::new(Status::Failed, "being resolved here already; try again");
        }
        let r = self
            .finish_sub(&text, req.branches, commit, req.decision)
            .await;
        self.lock().deciding.remove(&text);
        match r {
            Ok(()) => SubAnswer::new(Status::Ok, ""),
            Err(XaError::Failed(e)) => SubAnswer::new(Status::Heuristic, e),
            Err(e) => SubAnswer::new(Status::Failed, e.to_string()),
        }
    }

    /// Ends a subordinate's branches (the caller holds the transaction in `deciding`).
    ///
    /// `Err(XaError::Failed)` when a resource manager refused to commit a branch: a
    /// heuristic outcome here, recorded in the entry (the branch's state
    /// [`BRANCH_HEURISTIC`], the coordinator's advice and decision) and kept for the
    /// operator; any other error leaves the branches for a later attempt.
    async fn finish_sub(
        &self,
        text: &str,
        mut branches: Vec<(u16, Vec<u8>)>,
        commit: bool,
        decision: Decision,
    ) -> Result<(), XaError> {
        let entry = self
            .log
            .get(text.as_bytes())
            .filter(|_| self.log.holds(text.as_bytes()));
        if let Some(e) = &entry {
            for b in &e.branches {
                let k = (b.rm as u16, b.bqual.clone());
                if !branches.contains(&k) {
                    branches.push(k);
                }
            }
        }
        failpoint::hit("tm.subordinate_end");
        let mut tasks = Vec::new();
        let mut last = None;
        for (grp, bq) in branches {
            let Some(pool) = self.pool(grp).cloned() else {
                // Not silently done: the branch stays prepared in a database this node
                // no longer reaches (the configuration changed), and the coordinator
                // keeps its decision.
                last = Some(XaError::Unavailable(format!(
                    "group #{grp} has no resource manager on node {:?} (configuration changed?)",
                    self.node
                )));
                continue;
            };
            let xid = Xid::new(text, String::from_utf8_lossy(&bq).into_owned());
            tasks.push((
                grp,
                bq,
                tokio::spawn(async move {
                    let r = if commit {
                        pool.commit(&xid, decision).await
                    } else {
                        pool.rollback(&xid).await
                    };
                    match r {
                        Ok(()) | Err(XaError::NotFound(_)) => None,
                        Err(e) => Some(e),
                    }
                }),
            ));
        }
        let mut refused: Vec<(u16, Vec<u8>, String)> = Vec::new();
        let mut done: Vec<(u16, Vec<u8>)> = Vec::new();
        // Not finished for a passing reason: kept in the entry, for recovery to retry.
        let mut unfinished: Vec<(u16, Vec<u8>)> = Vec::new();
        for (grp, bq, t) in tasks {
            match t.await {
                Ok(None) => done.push((grp, bq)),
                Ok(Some(XaError::Failed(e))) if commit => refused.push((grp, bq, e)),
                Ok(Some(e)) => {
                    last = Some(e);
                    unfinished.push((grp, bq));
                }
                Err(e) => {
                    last = Some(XaError::Unavailable(e.to_string()));
                    unfinished.push((grp, bq));
                }
            }
        }
        if !refused.is_empty() || last.is_some() {
            // Keep the coordinator's advice, so that recovery finishes it without
            // asking again; a refused branch is marked heuristic (left to the
            // operator, never retried automatically).
            let mut e = entry.unwrap_or_else(|| Entry {
                gtrid: text.as_bytes().to_vec(),
                state: TxState::Prepare,
                advice: Advice::None,
                branches: Vec::new(),
                data: Vec::new(),
            });
            let kept = refused
                .iter()
                .map(|(grp, bq, _)| (grp, bq))
                .chain(unfinished.iter().map(|(grp, bq)| (grp, bq)));
            for (grp, bq) in kept {
                if !e
                    .branches
                    .iter()
                    .any(|b| b.rm == u32::from(*grp) && b.bqual == *bq)
                {
                    e.branches.push(LogBranch {
                        rm: u32::from(*grp),
                        bqual: bq.clone(),
                        state: 0,
                    });
                }
            }
            for b in &mut e.branches {
                let k = (b.rm as u16, b.bqual.clone());
                if refused.iter().any(|(g, q, _)| (*g, q) == (k.0, &k.1)) {
                    b.state = BRANCH_HEURISTIC;
                } else if done.contains(&k) {
                    b.state = BRANCH_DONE;
                }
            }
            e.advice = if commit {
                Advice::Commit
            } else {
                Advice::Rollback
            };
            e.data = decision.encode();
            let logged = self.log_op(move |log| log.put(e)).await;
            if let Some((grp, bq, why)) = refused.first() {
                let why = format!(
                    "group #{grp}'s resource manager refused to commit branch {} on node {:?}: {why}",
                    String::from_utf8_lossy(bq),
                    self.node
                );
                tracing::error!(gtrid = text, error = %why, "a heuristic outcome on a subordinate: kept for the operator (tpmon tx commit)");
                if let Some(t) = self.lock().tracked.get_mut(text) {
                    t.state = "heuristic (operator)";
                    t.last_error = why.clone();
                }
                return Err(match logged {
                    Ok(_) => XaError::Failed(why),
                    // Not durable: the next attempt finds the refusal again.
                    Err(e) => XaError::Unavailable(format!("{why}; not recorded: {e}")),
                });
            }
            return Err(last.unwrap_or_else(|| XaError::Unavailable("not finished".into())));
        }
        failpoint::hit("tm.subordinate_after_end");
        if entry.is_some() {
            if let Err(e) = self.log.remove_lazy(text.as_bytes()) {
                tracing::warn!(gtrid = text, error = %e, "cannot remove a completed subordinate entry");
            }
        }
        let mut st = self.lock();
        st.sub_prepared.remove(text);
        st.tracked.remove(text);
        Ok(())
    }

    /// Subordinate recovery: a prepared branch of a transaction another node
    /// coordinates that no Prepare entry here covers (its server prepared it, but the
    /// coordinator's Prepare never came, or its Rollback did not arrive). Asks the
    /// coordinator about that branch and acts on a definite answer only. Returns how
    /// `tpmon tx list` shows the branch while it stays (state, last error), or `None`
    /// when it was resolved or another path owns it.
    pub(crate) async fn resolve_foreign(
        &self,
        group: u16,
        pool: &Arc<crate::pool::Pool>,
        xid: Xid,
    ) -> Option<(&'static str, String)> {
        let gtrid = xid.gtrid.clone();
        {
            let st = self.lock();
            if st.deciding.contains(&gtrid)
                || st.sub_prepared.contains_key(&gtrid)
                || self.log.holds(gtrid.as_bytes())
            {
                return None;
            }
        }
        let g = Gtrid::parse(gtrid.as_bytes())?;
        let Some(node) = self.nodes.iter().position(|n| *n == g.node) else {
            // Nobody can be asked: the operator's (recovery warns once).
            return Some((crate::recover::UNKNOWN_COORDINATOR, String::new()));
        };
        // The resource manager may hold the branch for another group sharing it; the
        // coordinator knows it by the group that reported it, which recovery cannot
        // tell: ask with each group of this node using the same resource manager.
        let groups: Vec<u16> = (0..self.rm_of_group.len())
            .filter(|&i| self.rm_of_group[i] == group as usize && self.pool(i as u16).is_some())
            .map(|i| i as u16)
            .collect();
        let mut answer = None;
        let mut why = String::from("no group of this node uses the branch's database");
        for grp in groups {
            let req = SubRequest {
                gtrid: gtrid.as_bytes().to_vec(),
                decision: Decision::default(),
                branches: vec![(grp, xid.bqual.as_bytes().to_vec())],
            };
            match self.ask(node, SubItem::QueryAdvice, req).await {
                Ok(a) if a.status == Status::Commit => {
                    answer = Some((true, a.decision));
                    break;
                }
                Ok(a) if a.status == Status::Rollback => {
                    answer = Some((false, Decision::default()))
                }
                other => {
                    why = match other {
                        Ok(a) => format!("the coordinator answered {:?} {}", a.status, a.detail),
                        Err(e) => e,
                    };
                    answer = None;
                    break;
                }
            }
        }
        let Some((commit, decision)) = answer else {
            return Some((crate::recover::FOREIGN_ASKING, why));
        };
        let r = if commit {
            pool.commit(&xid, decision).await
        } else {
            pool.rollback(&xid).await
        };
        match r {
            Ok(()) | Err(XaError::NotFound(_)) => {
                tracing::info!(xid = %xid, commit, "recovery resolved a prepared branch another node coordinates");
                None
            }
            Err(e) => {
                tracing::warn!(xid = %xid, commit, error = %e, "recovery could not resolve a prepared branch; will retry");
                Some((
                    if commit {
                        crate::recover::FOREIGN_COMMITTING
                    } else {
                        crate::recover::FOREIGN_ROLLING_BACK
                    },
                    e.to_string(),
                ))
            }
        }
    }

    /// Subordinate recovery when the coordinator (`coordinator`) cannot be reached
    /// (`why`): asks every other reachable node its commit sequence number
    /// (GET_MAX_SCN), then QUERY_ADVICE of them from the highest SCN down, and returns
    /// the first definite answer (commit or roll back). Without one, why not: the
    /// transaction stays in doubt and recovery asks again (no guess).
    async fn ask_others(
        &self,
        why: &str,
        coordinator: usize,
        text: &str,
    ) -> Result<SubAnswer, String> {
        let Some(links) = self.links.get() else {
            return Err("no node links".into());
        };
        let mut scns: Vec<(u64, usize)> = Vec::new();
        for n in 0..self.nodes.len() {
            if Some(n) == self.me || n == coordinator {
                continue;
            }
            if let Ok(body) = links.request(n, SubItem::GetMaxScn, Vec::new()).await {
                if let Some(ScnAnswer(scn)) = ScnAnswer::decode(&body) {
                    scns.push((scn, n));
                }
            }
        }
        if scns.is_empty() {
            return Err("no other node could be asked".into());
        }
        scns.sort_by(|a, b| b.cmp(a));
        let mut answers = Vec::new();
        for (scn, n) in scns {
            let name = self.nodes.get(n).map_or("?", String::as_str);
            let req = SubRequest {
                gtrid: text.as_bytes().to_vec(),
                decision: Decision::default(),
                branches: Vec::new(),
            };
            match self.ask(n, SubItem::QueryAdvice, req).await {
                Ok(a) if matches!(a.status, Status::Commit | Status::Rollback) => {
                    tracing::info!(
                        gtrid = text,
                        node = name,
                        scn,
                        coordinator_unreachable = why,
                        "in doubt: the outcome came from another node (highest SCN that knows it)"
                    );
                    return Ok(a);
                }
                Ok(a) => answers.push(format!("asked {name:?} (SCN {scn}): {}", a.detail)),
                Err(e) => answers.push(format!("asked {name:?} (SCN {scn}): {e}")),
            }
        }
        tracing::info!(gtrid = text, coordinator_unreachable = why, answers = %answers.join("; "), "in doubt: the coordinator cannot be reached and no other node (GET_MAX_SCN, QUERY_ADVICE) knows the outcome; will ask again");
        Err(answers.join("; "))
    }

    /// Whether none of `branches` (of transaction `text`) is still prepared in this
    /// node's resource managers. False when one of them cannot be asked.
    async fn branches_all_ended(&self, text: &str, branches: &[LogBranch]) -> bool {
        let mut asked: Vec<usize> = Vec::new();
        for b in branches {
            let Some(group) = u16::try_from(b.rm).ok() else {
                return false;
            };
            let Some(pool) = self.pool(group).cloned() else {
                return false;
            };
            let rm = self
                .rm_of_group
                .get(group as usize)
                .copied()
                .unwrap_or(usize::MAX);
            if asked.contains(&rm) {
                continue;
            }
            asked.push(rm);
            match pool.recover(text).await {
                Ok(xids) => {
                    if xids.iter().any(|x| {
                        x.gtrid == text && branches.iter().any(|b| b.bqual == x.bqual.as_bytes())
                    }) {
                        return false;
                    }
                }
                Err(_) => return false,
            }
        }
        !branches.is_empty()
    }

    /// The outcome of a transaction another node coordinates: asks the coordinator
    /// (QUERY_ADVICE) and, when it cannot be reached, the other nodes from the highest
    /// SCN down. `Ok((commit, decision))` only on a definite answer; otherwise why
    /// there is none (the transaction stays in doubt: never a guess).
    pub(crate) async fn learn_outcome(
        &self,
        text: &str,
        branches: Vec<(u16, Vec<u8>)>,
    ) -> Result<(bool, Decision), String> {
        let g = Gtrid::parse(text.as_bytes()).ok_or("not a tpmon transaction id")?;
        let node = self
            .nodes
            .iter()
            .position(|n| *n == g.node)
            .ok_or_else(|| format!("its coordinator {:?} is not a node of this domain", g.node))?;
        // With `branches`, a commit is the answer only if the decision lists each of
        // them; without, the answer is the transaction's outcome for the branches the
        // coordinator itself asked this node to prepare.
        let req = SubRequest {
            gtrid: text.as_bytes().to_vec(),
            decision: Decision::default(),
            branches,
        };
        let asked = match self.ask(node, SubItem::QueryAdvice, req).await {
            // The coordinator cannot be reached: ask the others, highest SCN first
            // (spec 02 §2.4).
            Err(e) => match self.ask_others(&e, node, text).await {
                Ok(found) => Ok(found),
                Err(why) => Err(format!("{e}; {why}")),
            },
            other => other,
        };
        match asked {
            Ok(a) if a.status == Status::Commit => Ok((true, a.decision)),
            Ok(a) if a.status == Status::Rollback => Ok((false, Decision::default())),
            Ok(a) => Err(format!("node {:?}: {}", g.node, a.detail)),
            Err(e) => Err(e),
        }
    }

    /// `tpmon tx commit|rollback` of a transaction another node coordinates (the
    /// caller holds it in `deciding`). This node never decides it: the outcome comes
    /// from the subordinate entry's advice or from asking (as recovery does), and the
    /// operator's word must match it. With the outcome known and matching, this
    /// node's branches (the entry's and any prepared one the resource managers hold)
    /// are ended now.
    pub(crate) async fn resolve_by_hand(
        &self,
        text: &str,
        coordinator: &str,
        commit: bool,
        prepared_here: Vec<(u16, Vec<u8>)>,
    ) -> Result<String, String> {
        let word = |c: bool| if c { "commit" } else { "rollback" };
        let entry = self
            .log
            .get(text.as_bytes())
            .filter(|_| self.log.holds(text.as_bytes()));
        if entry.is_none() && prepared_here.is_empty() {
            return Err(format!(
                "refused: this node holds nothing of {text} (no entry in its log, no prepared \
                 branch in its resource managers)"
            ));
        }
        let (outcome, decision) = match entry.as_ref().map(|e| (e.advice, e)) {
            Some((Advice::Commit, e)) => (true, Decision::decode(&e.data)),
            Some((Advice::Rollback, _)) => (false, Decision::default()),
            _ => self.learn_outcome(text, Vec::new()).await.map_err(|why| {
                format!(
                    "refused: {text} is coordinated by node {coordinator:?} and no node can \
                     tell its outcome now ({why}); it stays in doubt here and is resolved as \
                     soon as one can. Not supported yet: deciding it on this node by hand \
                     (a heuristic decision)"
                )
            })?,
        };
        if outcome != commit {
            return Err(format!(
                "refused: its coordinator {coordinator:?} decided {} for {text}",
                word(outcome)
            ));
        }
        // The branches the coordinator asked this node to prepare are the entry's. A
        // branch prepared here that the entry does not list (an orphan: its server's
        // reply never reached the caller) is committed only if the coordinator's
        // decision lists it too; otherwise recovery resolves it on its own.
        let listed: Vec<(u16, Vec<u8>)> = entry.as_ref().map_or_else(Vec::new, |e| {
            e.branches
                .iter()
                .map(|b| (b.rm as u16, b.bqual.clone()))
                .collect()
        });
        let extras: Vec<(u16, Vec<u8>)> = prepared_here
            .into_iter()
            .filter(|k| !listed.contains(k))
            .collect();
        let mut to_end = listed;
        let mut left = 0;
        if !extras.is_empty() {
            let covered = !commit
                || matches!(
                    self.learn_outcome(text, extras.clone()).await,
                    Ok((true, _))
                );
            if covered {
                to_end.extend(extras);
            } else {
                left = extras.len();
            }
        }
        let n = to_end.len();
        self.finish_sub(text, to_end, commit, decision)
            .await
            .map_err(|e| {
                format!(
                    "{text}: {} failed here: {e}; recovery retries",
                    word(commit)
                )
            })?;
        tracing::info!(
            gtrid = text,
            commit,
            "an operator resolved a subordinate's branches with its coordinator's outcome"
        );
        let unlisted = if left > 0 {
            format!(
                "; {left} other prepared branch(es) here are not in its decision and are \
                 left to recovery"
            )
        } else {
            String::new()
        };
        Ok(format!(
            "{text}: {} done on {n} branch(es) here, as its coordinator {coordinator:?} \
             decided{unlisted}",
            word(commit)
        ))
    }

    /// Subordinate recovery: resolve the Prepare entries whose coordinator's phase 2
    /// did not come, by the logged advice or by asking the coordinator.
    pub(crate) async fn drive_subordinate(&self, e: Entry) {
        let text = String::from_utf8_lossy(&e.gtrid).into_owned();
        {
            let st = self.lock();
            if st
                .sub_prepared
                .get(&text)
                .is_some_and(|t| t.elapsed() < ASK_AFTER)
            {
                return;
            }
        }
        if e.branches.iter().any(|b| b.state == BRANCH_HEURISTIC) {
            // A resource manager here refused the coordinator's commit: kept for the
            // operator (`tpmon tx commit` on this node or on the coordinator).
            let mut st = self.lock();
            st.tracked.entry(text.clone()).or_insert_with(|| {
                Tracked::of_entry(
                    &e,
                    "heuristic (operator)",
                    0,
                    "a resource manager refused the coordinator's commit".into(),
                )
            });
            return;
        }
        if self.branches_all_ended(&text, &e.branches).await {
            // Phase 2 ended every branch here and the entry's removal (lazy: not
            // synced) was lost in a crash. Nothing is left to resolve: asking would
            // only find a coordinator that forgot the transaction too.
            if let Err(err) = self.log.remove_lazy(&e.gtrid) {
                tracing::warn!(gtrid = %text, error = %err, "cannot remove a subordinate entry");
                return;
            }
            let mut st = self.lock();
            st.sub_prepared.remove(&text);
            st.tracked.remove(&text);
            tracing::info!(gtrid = %text, "a subordinate entry whose branches are all ended already (its removal was lost in a crash); forgotten");
            return;
        }
        let (commit, decision) = match e.advice {
            Advice::Commit => (true, Decision::decode(&e.data)),
            Advice::Rollback => (false, Decision::default()),
            Advice::None => {
                if failpoint::fires_always("tm.subordinate_no_ask") {
                    // A test keeps this node from asking, so that only the
                    // coordinator's RECOVER_INDOUBT_GLOBAL_TX can resolve it.
                    return;
                }
                match self.learn_outcome(&text, Vec::new()).await {
                    Ok(found) => found,
                    Err(why) => {
                        let mut st = self.lock();
                        if let Some(t) = st.tracked.get_mut(&text) {
                            t.retries += 1;
                            t.last_error = why.clone();
                        } else {
                            st.tracked.insert(
                                text.clone(),
                                Tracked::of_entry(
                                    &e,
                                    "prepared (subordinate, waiting for the coordinator)",
                                    1,
                                    why.clone(),
                                ),
                            );
                        }
                        tracing::info!(gtrid = %text, why, "in doubt: the coordinator gave no outcome yet; will ask again");
                        return;
                    }
                }
            }
        };
        match self.finish_sub(&text, Vec::new(), commit, decision).await {
            Ok(()) => {
                tracing::info!(gtrid = %text, commit, "recovery resolved a subordinate's prepared branches")
            }
            Err(err) => {
                tracing::warn!(gtrid = %text, commit, error = %err, "recovery could not resolve a subordinate's branches; will retry")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scn_answers_round_trip() {
        for scn in [0, 1 << 32, u64::MAX] {
            let a = ScnAnswer(scn);
            assert_eq!(ScnAnswer::decode(&a.encode()), Some(a));
        }
        assert_eq!(ScnAnswer::decode(&[1, 2, 3]), None);
        assert_eq!(ScnAnswer::decode(&[]), None);
    }

    #[test]
    fn bodies_round_trip_and_garbage_is_refused() {
        let req = SubRequest {
            gtrid: b"mn:n1:3:1:2:6b014896".to_vec(),
            decision: Decision {
                gcpn: 42,
                origin: 2,
            },
            branches: vec![(2, b"2.1f.9".to_vec()), (0, Vec::new())],
        };
        let wire = req.encode();
        assert_eq!(SubRequest::decode(&wire), Some(req.clone()));
        for n in 0..wire.len() {
            assert_eq!(SubRequest::decode(&wire[..n]), None, "cut at {n}");
        }
        let mut longer = wire.clone();
        longer.push(0);
        assert_eq!(SubRequest::decode(&longer), None);
        // As many branches as a log entry holds, and one more.
        let mut many = SubRequest {
            branches: vec![(1, b"b".to_vec()); tpmon_txlog::BRANCHES_MAX],
            ..req
        };
        assert_eq!(SubRequest::decode(&many.encode()), Some(many.clone()));
        many.branches.push((1, b"c".to_vec()));
        assert_eq!(SubRequest::decode(&many.encode()), None);
        let a = SubAnswer {
            status: Status::Commit,
            decision: Decision { gcpn: 7, origin: 1 },
            detail: "why".into(),
        };
        assert_eq!(SubAnswer::decode(&a.encode()), Some(a));
        assert_eq!(SubAnswer::decode(&[1, 9, 0]), None);
        assert_eq!(SubAnswer::decode(&[2]), None);
    }

    #[test]
    fn recover_in_doubt_bodies_round_trip_and_garbage_is_refused() {
        let list = vec![
            InDoubt {
                gtrid: b"mn:n1:3:1:2:6b014896".to_vec(),
                commit: true,
                decision: Decision { gcpn: 9, origin: 1 },
            },
            InDoubt {
                gtrid: b"mn:n1:3:2:2:00000001".to_vec(),
                commit: false,
                decision: Decision::default(),
            },
        ];
        let wire = InDoubt::encode_list(&list);
        assert_eq!(InDoubt::decode_list(&wire), Some(list.clone()));
        for n in 0..wire.len() {
            assert_eq!(InDoubt::decode_list(&wire[..n]), None, "cut at {n}");
        }
        let mut bad = wire.clone();
        // The first transaction's outcome byte: neither commit nor roll back.
        bad[1 + 2 + 2 + list[0].gtrid.len()] = 3;
        assert_eq!(InDoubt::decode_list(&bad), None);
        let done = vec![list[0].gtrid.clone()];
        let wire = encode_gtrids(&done);
        assert_eq!(decode_gtrids(&wire), Some(done));
        let mut longer = wire.clone();
        longer.push(0);
        assert_eq!(decode_gtrids(&longer), None);
        assert_eq!(decode_gtrids(&[]), None);
    }
}
