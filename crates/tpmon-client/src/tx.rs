//! The TX interface (X/Open TX): begin, commit, rollback, info and the settings, on a
//! client context. The context that calls `tx_begin` is the transaction's originator;
//! its calls carry the transaction to every service they reach, each reply reports
//! the branches the call made, and `tx_commit` hands them to the node's transaction
//! manager, which decides.
//!
//! Beginning needs no message: the gtrid is built from the daemon's boot epoch, this
//! context's client id and a counter (see `tpmon_proto::Gtrid`).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tpmon_proto::{
    encode_frame, Branch, ErrorKind, FrameDecoder, Gtrid, Message, Reply, ReplyStatus, TxContext,
    TxDone, TxEnd, TxOutcome, Vote, FORMAT_ID, SEQ_MAX,
};

use crate::transport::Transport;
use crate::{CallError, Client};

/// When `tx_commit` returns (`tx_set_commit_return`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CommitReturn {
    /// As soon as the commit decision is durable (TX_COMMIT_DECISION_LOGGED); phase 2
    /// runs after.
    #[default]
    DecisionLogged,
    /// Once every branch has committed (TX_COMMIT_COMPLETED).
    Completed,
}

/// Whether a new transaction begins when one ends (`tx_set_transaction_control`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TxControl {
    /// No (TX_UNCHAINED).
    #[default]
    Unchained,
    /// Yes (TX_CHAINED).
    Chained,
}

/// State of the current transaction in [`TxInfo`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxStatus {
    /// Running.
    Active,
    /// A participant failed, a call was abandoned or the deadline passed: it can only
    /// roll back.
    RollbackOnly,
    /// Its deadline passed.
    TimedOut,
}

/// What `tx_info` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxInfo {
    /// The gtrid when in a transaction.
    pub xid: Option<String>,
    /// Its state.
    pub status: Option<TxStatus>,
    /// The transaction timeout that the next `tx_begin` uses.
    pub timeout: Duration,
    /// Commit-return setting.
    pub commit_return: CommitReturn,
    /// Transaction control setting.
    pub control: TxControl,
    /// Branches joined so far.
    pub branches: usize,
}

/// A TX call's failure, with the X/Open TX return code it corresponds to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    /// TX_PROTOCOL_ERROR: not valid now (begin inside a transaction, commit outside).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// TX_ROLLBACK: commit was asked but the transaction rolled back.
    #[error("the transaction rolled back: {0}")]
    RolledBack(String),
    /// TX_HAZARD: a branch's outcome is unknown (heuristic hazard).
    #[error("heuristic hazard: {0}")]
    Hazard(String),
    /// TX_MIXED: branches ended differently (heuristic mix).
    #[error("heuristic mix: {0}")]
    Mixed(String),
    /// TX_FAIL / TX_ERROR: the transaction manager could not be reached or refused;
    /// the outcome is unknown to this context (recovery finishes it).
    #[error("transaction manager error: {0}")]
    Error(String),
    /// TX_EINVAL: a bad argument.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// TX_NO_BEGIN and its variants (chained control only): the transaction ended
    /// with `outcome` (what the call returns without chaining: `Ok` when it committed
    /// or rolled back as asked, else [`TxError::RolledBack`], [`TxError::Hazard`] or
    /// [`TxError::Mixed`]), but the next transaction could not begin: the context is
    /// outside any transaction.
    #[error("{}; the chained tx_begin failed: {why}", ended_text(.outcome))]
    NoBegin {
        /// How the transaction ended.
        outcome: Box<Result<Committed, TxError>>,
        /// Why the next one did not begin.
        why: String,
    },
}

fn ended_text(outcome: &Result<Committed, TxError>) -> String {
    match outcome {
        Ok(Committed::Done) => "the transaction ended as asked".into(),
        Ok(Committed::Pending) => "the transaction committed (some branches later)".into(),
        Err(e) => e.to_string(),
    }
}

/// How a successful commit ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// Committed; with [`CommitReturn::Completed`] every branch is done.
    Done,
    /// The decision is durable and some branches complete later (recovery drives
    /// them); only with [`CommitReturn::Completed`].
    Pending,
}

/// Per-context TX settings.
#[derive(Debug, Clone, Default)]
pub(crate) struct TxSettings {
    pub timeout: Option<Duration>,
    pub commit_return: CommitReturn,
    pub control: TxControl,
    pub seq: u64,
}

/// The transaction a context is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveTx {
    /// Text gtrid.
    pub gtrid: String,
    /// Deadline in Unix milliseconds.
    pub deadline_ms: u64,
    /// Branches reported by the calls made in it (and, for a participant, those it
    /// was handed by a forward).
    pub branches: Vec<Branch>,
    /// Why it can only roll back, if it can.
    pub doomed: Option<String>,
    /// This context began it.
    pub originator: bool,
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl ActiveTx {
    /// A participant's view of the transaction of a request it serves.
    pub fn participant(ctx: TxContext) -> ActiveTx {
        ActiveTx {
            gtrid: String::from_utf8_lossy(&ctx.gtrid).into_owned(),
            deadline_ms: ctx.deadline_ms,
            branches: ctx.branches,
            doomed: None,
            originator: false,
        }
    }

    /// The context requests carry.
    pub fn context(&self) -> TxContext {
        TxContext {
            format_id: FORMAT_ID,
            gtrid: self.gtrid.as_bytes().to_vec(),
            deadline_ms: self.deadline_ms,
            branches: Vec::new(),
        }
    }

    /// The deadline on this machine's monotonic clock.
    pub fn deadline_instant(&self) -> Instant {
        let left = self.deadline_ms.saturating_sub(now_unix_ms());
        Instant::now() + Duration::from_millis(left)
    }

    /// Dooms a transaction whose branches no longer fit one commit request (their
    /// list is cut at [`tpmon_proto::BRANCHES_MAX`]; recovery rolls back the rest).
    pub fn check_size(&mut self) {
        if self.branches.len() > tpmon_proto::BRANCHES_MAX {
            self.doom(format!(
                "more than {} branches in one transaction",
                tpmon_proto::BRANCHES_MAX
            ));
        }
    }

    /// Marks it rollback-only (the first reason is kept).
    pub fn doom(&mut self, why: impl Into<String>) {
        if self.doomed.is_none() {
            self.doomed = Some(why.into());
        }
    }

    /// Takes in what a reply reports: its branches, and its failure.
    pub fn absorb(&mut self, r: &Reply) {
        self.branches.extend(r.branches.iter().cloned());
        self.check_size();
        match r.status {
            ReplyStatus::Success => {}
            ReplyStatus::Fail => self.doom("a participant returned TPFAIL"),
            ReplyStatus::Error(k) => self.doom(format!(
                "a call of the transaction failed ({}): {}",
                k.name(),
                r.detail
            )),
        }
        if r.branches.iter().any(|b| b.vote == Vote::Failed) {
            self.doom("a branch failed to prepare");
        }
    }
}

impl Client {
    /// `tx_begin`: starts a global transaction with this context as originator.
    pub fn tx_begin(&mut self) -> Result<(), TxError> {
        self.begin(self.tx_settings.timeout)
    }

    /// Begins a transaction with the domain's default timeout, whatever this
    /// context's `tx_set_timeout` says: the server runtime's automatic transactions,
    /// which must not inherit what a routine set for the transactions it begins itself.
    #[doc(hidden)]
    pub fn begin_automatic(&mut self) -> Result<(), TxError> {
        self.begin(None)
    }

    /// Ends the current transaction as its originator, unchained and returning once
    /// the decision is logged, whatever this context's TX settings: the server
    /// runtime's end of a transaction it owns (an automatic transaction, or one a
    /// routine left open). The context is outside any transaction afterwards,
    /// whatever the outcome.
    ///
    /// Refused (TX_PROTOCOL_ERROR, nothing changed) while a server's own branch is
    /// active ([`Client::set_local_branch`]): the server's context ends that first.
    #[doc(hidden)]
    pub fn end_automatic(&mut self, commit: bool) -> Result<Committed, TxError> {
        if self.local_branch {
            return Err(TxError::Protocol(
                "the server's own branch of the transaction is still active".into(),
            ));
        }
        if let Some(t) = &mut self.txn {
            t.originator = true;
        }
        let r = self.end(commit, CommitReturn::DecisionLogged);
        self.txn = None;
        r
    }

    fn begin(&mut self, timeout: Option<Duration>) -> Result<(), TxError> {
        if self.txn.is_some() {
            return Err(TxError::Protocol(
                "already in a transaction; the running transaction continues".into(),
            ));
        }
        let w = &self.welcome;
        if w.epoch == 0 {
            return Err(TxError::Error(
                "the domain's daemon does not offer transactions".into(),
            ));
        }
        let max = Duration::from_millis(u64::from(w.tx_timeout_max_ms.max(1)));
        let timeout = timeout
            .unwrap_or(Duration::from_millis(u64::from(w.tx_timeout_ms.max(1))))
            .min(max);
        if self.tx_settings.seq >= SEQ_MAX {
            return Err(TxError::Error(
                "this context used all its transaction ids; connect again".into(),
            ));
        }
        self.tx_settings.seq += 1;
        // Rounded up: a timeout under a millisecond must not start the transaction
        // already expired.
        let deadline_ms = now_unix_ms() + timeout.as_nanos().div_ceil(1_000_000) as u64;
        let g = Gtrid {
            domain: w.domain.clone(),
            node: w.node.clone(),
            epoch: w.epoch,
            origin: (w.client_id.0 & 0xFFFF_FFFF) as u32,
            seq: self.tx_settings.seq,
            deadline_s: deadline_ms.div_ceil(1000),
        };
        let gtrid = g.encode();
        if gtrid.len() > tpmon_proto::XID_PART_BYTES_MAX {
            return Err(TxError::Error(format!(
                "the domain and node names are too long for a 64-byte XA gtrid ({gtrid})"
            )));
        }
        self.txn = Some(ActiveTx {
            gtrid,
            deadline_ms,
            branches: Vec::new(),
            doomed: None,
            originator: true,
        });
        Ok(())
    }

    /// `tx_commit`: commits the current transaction (two-phase commit by the
    /// transaction manager). With chained control a new transaction begins after.
    pub fn tx_commit(&mut self) -> Result<Committed, TxError> {
        let r = self.end(true, self.tx_settings.commit_return);
        self.chain(r)
    }

    /// `tx_rollback`: rolls the current transaction back. With chained control a new
    /// transaction begins after.
    pub fn tx_rollback(&mut self) -> Result<(), TxError> {
        let r = self.end(false, self.tx_settings.commit_return);
        self.chain(r).map(|_| ())
    }

    /// `tx_info`.
    pub fn tx_info(&self) -> TxInfo {
        let w = &self.welcome;
        TxInfo {
            xid: self.txn.as_ref().map(|t| t.gtrid.clone()),
            status: self.txn.as_ref().map(|t| {
                if now_unix_ms() >= t.deadline_ms {
                    TxStatus::TimedOut
                } else if t.doomed.is_some() {
                    TxStatus::RollbackOnly
                } else {
                    TxStatus::Active
                }
            }),
            timeout: self
                .tx_settings
                .timeout
                .unwrap_or(Duration::from_millis(u64::from(w.tx_timeout_ms))),
            commit_return: self.tx_settings.commit_return,
            control: self.tx_settings.control,
            branches: self.txn.as_ref().map_or(0, |t| t.branches.len()),
        }
    }

    /// `tx_set_transaction_timeout` for the following transactions; zero means the
    /// domain's default (`[domain.tx] timeout_s`). Longer than the domain allows
    /// (`timeout_max_s`) is refused.
    pub fn tx_set_timeout(&mut self, timeout: Duration) -> Result<(), TxError> {
        let max = Duration::from_millis(u64::from(self.welcome.tx_timeout_max_ms));
        if timeout > max {
            return Err(TxError::Invalid(format!(
                "a transaction timeout of {timeout:?} exceeds the domain's limit of {max:?}"
            )));
        }
        self.tx_settings.timeout = (!timeout.is_zero()).then_some(timeout);
        Ok(())
    }

    /// `tx_set_commit_return`.
    pub fn tx_set_commit_return(&mut self, when: CommitReturn) {
        self.tx_settings.commit_return = when;
    }

    /// `tx_set_transaction_control`.
    pub fn tx_set_control(&mut self, control: TxControl) {
        self.tx_settings.control = control;
    }

    /// True while this context is in a transaction.
    pub fn in_transaction(&self) -> bool {
        self.txn.is_some()
    }

    /// With chained control, begins the next transaction after one that ended:
    /// committed, rolled back or with a heuristic outcome. Not after a protocol error
    /// (nothing ended: the caller's state stays as it was) nor when the outcome is
    /// unknown here (TX_FAIL). A begin that fails turns the result into
    /// [`TxError::NoBegin`], which carries it.
    fn chain(&mut self, ended: Result<Committed, TxError>) -> Result<Committed, TxError> {
        let over = matches!(
            ended,
            Ok(_) | Err(TxError::RolledBack(_) | TxError::Hazard(_) | TxError::Mixed(_))
        );
        if !over || self.tx_settings.control != TxControl::Chained || self.txn.is_some() {
            return ended;
        }
        match self.tx_begin() {
            Ok(()) => ended,
            Err(e) => Err(TxError::NoBegin {
                outcome: Box::new(ended),
                why: e.to_string(),
            }),
        }
    }

    fn end(&mut self, commit: bool, when: CommitReturn) -> Result<Committed, TxError> {
        let Some(t) = &self.txn else {
            return Err(TxError::Protocol("not in a transaction".into()));
        };
        if !t.originator {
            return Err(TxError::Protocol(
                "only the transaction's originator may end it".into(),
            ));
        }
        if self.local_branch {
            return Err(TxError::Protocol(
                "the service's own database work is part of the transaction: end it with \
                 tx_commit / tx_rollback on the server's context (ctx.client()), which \
                 prepare or roll back that branch first; the transaction continues"
                    .into(),
            ));
        }
        // Calls still outstanding in the transaction: their branches are unknown, so
        // it cannot commit; abandon them (which dooms it).
        let outstanding = self.outstanding_in_tx();
        for id in outstanding {
            self.forget(id);
        }
        let Some(mut t) = self.txn.take() else {
            return Err(TxError::Protocol("not in a transaction".into()));
        };
        if commit && now_unix_ms() >= t.deadline_ms {
            t.doom("the transaction timed out");
        }
        let doomed = t.doomed.clone().unwrap_or_default();
        let req = TxEnd {
            gtrid: t.gtrid.as_bytes().to_vec(),
            commit,
            wait_completed: when == CommitReturn::Completed,
            branches: t.branches,
            doomed: doomed.clone(),
        };
        let done = self.ask_tm(&req)?;
        match done.outcome {
            TxOutcome::Committed if commit => Ok(Committed::Done),
            TxOutcome::CommittedPending if commit => Ok(Committed::Pending),
            TxOutcome::RolledBack if !commit => Ok(Committed::Done),
            TxOutcome::RolledBack => Err(TxError::RolledBack(if doomed.is_empty() {
                done.detail
            } else {
                doomed
            })),
            TxOutcome::Committed | TxOutcome::CommittedPending => Err(TxError::Error(format!(
                "asked to roll back but the transaction manager committed: {}",
                done.detail
            ))),
            TxOutcome::Hazard => Err(TxError::Hazard(done.detail)),
            TxOutcome::Mixed => Err(TxError::Mixed(done.detail)),
            TxOutcome::Refused => Err(TxError::Error(done.detail)),
        }
    }

    /// Sends the request to the transaction manager and waits for its answer: on the
    /// TCP session for a relayed client, on the run directory's `tm.sock` otherwise.
    fn ask_tm(&mut self, req: &TxEnd) -> Result<TxDone, TxError> {
        let body = Message::TxEnd(req.clone()).encode();
        let mut frame = Vec::with_capacity(body.len() + 4);
        encode_frame(&body, &mut frame);
        let lost = |e: String| {
            TxError::Error(format!("transaction manager: {e}; the outcome is unknown here (recovery completes the transaction)"))
        };
        // The answer may wait for phase 2 (TX_COMMIT_COMPLETED); never longer than the
        // blocking timeout, after which the outcome is unknown here.
        let patience = Some(self.blocking_timeout());
        match &mut self.transport {
            Transport::Local(l) => {
                if l.tm.is_none() {
                    let path = Path::new(&self.welcome.run_dir).join("tm.sock");
                    let s = UnixStream::connect(&path).map_err(|e| {
                        TxError::Error(format!("cannot reach {}: {e}", path.display()))
                    })?;
                    l.tm = Some((s, FrameDecoder::new(1 << 20)));
                }
                if let Some((s, _)) = &l.tm {
                    let _ = s.set_read_timeout(patience);
                }
                let Some((s, dec)) = &mut l.tm else {
                    return Err(lost("not connected".into()));
                };
                let r = s
                    .write_all(&frame)
                    .map_err(|e| e.to_string())
                    .and_then(|()| read_done(s, dec));
                if r.is_err() {
                    l.tm = None;
                }
                r.map_err(lost)
            }
            Transport::Relay(r) => {
                r.stream
                    .write_all(&frame)
                    .map_err(|e| lost(e.to_string()))?;
                if r.read_timeout != Some(patience) {
                    r.stream
                        .set_read_timeout(patience)
                        .map_err(|e| lost(e.to_string()))?;
                    r.read_timeout = Some(patience);
                }
                let mut buf = [0u8; 16 * 1024];
                loop {
                    match r.decoder.next_frame() {
                        Ok(Some(body)) => match Message::decode(&body) {
                            Ok(Message::TxDone(d)) if d.gtrid == req.gtrid => return Ok(d),
                            // A late answer to an earlier request that timed out.
                            Ok(Message::TxDone(_)) => {}
                            // Replies of other outstanding calls wait for getrply.
                            Ok(Message::Reply(rep)) => r.stash.push(rep),
                            Ok(_) => {}
                            Err(e) => return Err(lost(e.to_string())),
                        },
                        Ok(None) => match r.stream.read(&mut buf) {
                            Ok(0) => return Err(lost("the daemon closed the connection".into())),
                            Ok(n) => r.decoder.extend(&buf[..n]),
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                            Err(e) => return Err(lost(e.to_string())),
                        },
                        Err(e) => return Err(lost(e.to_string())),
                    }
                }
            }
        }
    }
}

fn read_done(s: &mut UnixStream, dec: &mut FrameDecoder) -> Result<TxDone, String> {
    let mut buf = [0u8; 4096];
    loop {
        match dec.next_frame() {
            Ok(Some(body)) => {
                return match Message::decode(&body) {
                    Ok(Message::TxDone(d)) => Ok(d),
                    Ok(other) => Err(format!("unexpected answer {other:?}")),
                    Err(e) => Err(e.to_string()),
                }
            }
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
        match s.read(&mut buf) {
            Ok(0) => return Err("the daemon closed the connection".into()),
            Ok(n) => dec.extend(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

impl From<TxError> for CallError {
    fn from(e: TxError) -> CallError {
        CallError::new(ErrorKind::Tran, e.to_string())
    }
}
