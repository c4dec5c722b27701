//! Global transaction identity and the messages that end a transaction.
//!
//! Owns the text form of tpmon's XA identifiers (what resource managers store and what
//! operators read in `pg_prepared_xacts` or `XA RECOVER`) and the wire shapes of a
//! branch, a commit/rollback request and its outcome. It knows nothing of sockets,
//! logs or resource managers.

use crate::codec::{DecodeError, Reader, Writer};

/// XA format identifier of every tpmon XID: "tpmn" in ASCII.
pub const FORMAT_ID: i32 = 0x7470_6D6E;

/// Longest gtrid or bqual, in bytes (the XA limit).
pub const XID_PART_BYTES_MAX: usize = 64;

/// Largest sequence number an originator may use (11 hex digits); past it the
/// originator must reconnect for a new client id.
pub const SEQ_MAX: u64 = (1 << 44) - 1;

/// Longest domain name plus node name, so that every gtrid fits [`XID_PART_BYTES_MAX`].
pub const NAMES_BYTES_MAX: usize = XID_PART_BYTES_MAX - 40;

/// Most branches one transaction may have.
pub const BRANCHES_MAX: usize = 256;

/// A global transaction id as tpmon makes them:
/// `DOMAIN:NODE:EPOCH:ORIGIN:SEQ:DEADLINE`, numbers in lower-case hex.
///
/// * `EPOCH` is the coordinating daemon's boot number (durable, rising at every boot,
///   at least the boot's Unix second), so ids stay unique across restarts and a branch
///   of an earlier epoch its log issued is known to have no live originator.
/// * `ORIGIN` is the low 32 bits of the originator's client id (unique within a boot)
///   and `SEQ` its own counter, so beginning a transaction needs no message.
/// * `DEADLINE` is the transaction's deadline in Unix seconds: anyone holding only a
///   prepared branch (a recovery sweep) knows when no commit can be decided any more.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Gtrid {
    /// Domain name.
    pub domain: String,
    /// Coordinating node.
    pub node: String,
    /// Boot epoch of the coordinating node.
    pub epoch: u64,
    /// Originator within the epoch.
    pub origin: u32,
    /// Originator's sequence number.
    pub seq: u64,
    /// Deadline in Unix seconds.
    pub deadline_s: u64,
}

impl Gtrid {
    /// The text form (at most [`XID_PART_BYTES_MAX`] bytes for names the configuration
    /// accepts).
    pub fn encode(&self) -> String {
        format!(
            "{}:{}:{:x}:{:x}:{:x}:{:x}",
            self.domain, self.node, self.epoch, self.origin, self.seq, self.deadline_s
        )
    }

    /// Parses the text form; None for anything that is not a tpmon gtrid.
    pub fn parse(text: &[u8]) -> Option<Gtrid> {
        let text = std::str::from_utf8(text).ok()?;
        let mut it = text.split(':');
        let domain = it.next()?.to_string();
        let node = it.next()?.to_string();
        let num = |s: Option<&str>| -> Option<u64> {
            let s = s?;
            if s.is_empty() || s.len() > 16 {
                return None;
            }
            u64::from_str_radix(s, 16).ok()
        };
        let epoch = num(it.next())?;
        let origin = u32::try_from(num(it.next())?).ok()?;
        let seq = num(it.next())?;
        let deadline_s = num(it.next())?;
        if it.next().is_some() || domain.is_empty() || node.is_empty() {
            return None;
        }
        Some(Gtrid {
            domain,
            node,
            epoch,
            origin,
            seq,
            deadline_s,
        })
    }

    /// The prefix every gtrid of this domain and node starts with.
    pub fn prefix(domain: &str, node: &str) -> String {
        format!("{domain}:{node}:")
    }

    /// Longest gtrid text for these names: epochs and deadlines fit 32 bits, sequence
    /// numbers [`SEQ_MAX`].
    pub fn longest(domain: &str, node: &str) -> usize {
        domain.len() + node.len() + 5 + 8 + 8 + 11 + 8
    }
}

/// How a branch voted when it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Vote {
    /// Prepared: in doubt until told to commit or roll back.
    Prepared,
    /// Read-only: nothing to commit; takes no part in phase 2.
    ReadOnly,
    /// Not prepared (the work failed or was rolled back): the transaction is doomed.
    /// Still reported so that its owner can be told to discard it.
    Failed,
}

impl Vote {
    fn code(self) -> u8 {
        match self {
            Vote::Prepared => 1,
            Vote::ReadOnly => 2,
            Vote::Failed => 3,
        }
    }

    fn from_code(c: u8) -> Option<Vote> {
        Some(match c {
            1 => Vote::Prepared,
            2 => Vote::ReadOnly,
            3 => Vote::Failed,
            _ => return None,
        })
    }
}

/// One branch of a global transaction: the server group whose resource manager holds
/// it and its branch qualifier.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Branch {
    /// Index of the server group in the domain configuration.
    pub group: u16,
    /// Branch qualifier (text, at most [`XID_PART_BYTES_MAX`] bytes).
    pub bqual: Vec<u8>,
    /// The branch's vote.
    pub vote: Vote,
    /// The checkpoint number the vote carries (spec 03: the site's LCPN+1; 0 for
    /// resource managers without checkpoints). The transaction's GCPN is the largest.
    pub cpn: u64,
}

/// What the originator wants done with its transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxEnd {
    /// The transaction.
    pub gtrid: Vec<u8>,
    /// Commit (true) or roll back (false).
    pub commit: bool,
    /// Answer only once every branch completed phase 2 (TX_COMMIT_COMPLETED) instead
    /// of as soon as the decision is durable (TX_COMMIT_DECISION_LOGGED).
    pub wait_completed: bool,
    /// Every branch the originator learned of.
    pub branches: Vec<Branch>,
    /// Why the originator must roll back although it asked to commit (empty: not
    /// doomed).
    pub doomed: String,
}

/// The outcome of a transaction as the transaction manager reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxOutcome {
    /// Committed; every branch completed.
    Committed,
    /// Committed (the decision is durable); some branches complete later, driven by
    /// recovery.
    CommittedPending,
    /// Rolled back.
    RolledBack,
    /// Heuristic hazard: a branch's outcome is unknown.
    Hazard,
    /// Heuristic mix: some branches committed and some rolled back.
    Mixed,
    /// The request was refused (protocol error, unknown or foreign transaction).
    Refused,
}

impl TxOutcome {
    fn code(self) -> u8 {
        match self {
            TxOutcome::Committed => 1,
            TxOutcome::CommittedPending => 2,
            TxOutcome::RolledBack => 3,
            TxOutcome::Hazard => 4,
            TxOutcome::Mixed => 5,
            TxOutcome::Refused => 6,
        }
    }

    fn from_code(c: u8) -> Option<TxOutcome> {
        Some(match c {
            1 => TxOutcome::Committed,
            2 => TxOutcome::CommittedPending,
            3 => TxOutcome::RolledBack,
            4 => TxOutcome::Hazard,
            5 => TxOutcome::Mixed,
            6 => TxOutcome::Refused,
            _ => return None,
        })
    }
}

/// The transaction manager's answer to a [`TxEnd`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxDone {
    /// The transaction.
    pub gtrid: Vec<u8>,
    /// What happened.
    pub outcome: TxOutcome,
    /// Why, for anything but a plain commit.
    pub detail: String,
}

pub(crate) fn encode_branches(w: &mut Writer, branches: &[Branch]) {
    if branches.len() <= BRANCHES_MAX {
        w.u16(branches.len() as u16);
        for b in branches {
            w.u16(b.group)
                .bytes16(&b.bqual)
                .u8(b.vote.code())
                .u64(b.cpn);
        }
        return;
    }
    // Too many to carry: the list is cut, and its last entry is a failed vote, so
    // that whoever receives it rolls the transaction back (recovery rolls back the
    // branches that were cut off, once the deadline passed).
    w.u16(BRANCHES_MAX as u16);
    for b in &branches[..BRANCHES_MAX - 1] {
        w.u16(b.group)
            .bytes16(&b.bqual)
            .u8(b.vote.code())
            .u64(b.cpn);
    }
    w.u16(u16::MAX)
        .bytes16(b"too-many-branches")
        .u8(Vote::Failed.code())
        .u64(0);
}

pub(crate) fn decode_branches(r: &mut Reader<'_>) -> Result<Vec<Branch>, DecodeError> {
    let at = r.offset();
    let n = r.u16("branch count")? as usize;
    if n > BRANCHES_MAX {
        return Err(DecodeError {
            offset: at,
            what: format!("{n} branches exceed {BRANCHES_MAX}"),
        });
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let group = r.u16("branch group")?;
        let bqual = xid_part(r, "bqual")?;
        let c = r.u8("vote")?;
        let vote = Vote::from_code(c).ok_or_else(|| r.error(format!("unknown vote {c}")))?;
        let cpn = r.u64("checkpoint number")?;
        out.push(Branch {
            group,
            bqual,
            vote,
            cpn,
        });
    }
    Ok(out)
}

pub(crate) fn xid_part(r: &mut Reader<'_>, what: &str) -> Result<Vec<u8>, DecodeError> {
    let at = r.offset();
    let b = r.bytes16(what)?;
    if b.len() > XID_PART_BYTES_MAX {
        return Err(DecodeError {
            offset: at,
            what: format!("{what} of {} bytes exceeds {XID_PART_BYTES_MAX}", b.len()),
        });
    }
    Ok(b.to_vec())
}

pub(crate) fn encode_end(w: &mut Writer, e: &TxEnd) {
    w.bytes16(&e.gtrid)
        .bool(e.commit)
        .bool(e.wait_completed)
        .str16(&e.doomed);
    encode_branches(w, &e.branches);
}

pub(crate) fn decode_end(r: &mut Reader<'_>) -> Result<TxEnd, DecodeError> {
    Ok(TxEnd {
        gtrid: xid_part(r, "gtrid")?,
        commit: r.bool("commit")?,
        wait_completed: r.bool("wait completed")?,
        doomed: r.str16("doomed")?,
        branches: decode_branches(r)?,
    })
}

pub(crate) fn encode_done(w: &mut Writer, d: &TxDone) {
    w.bytes16(&d.gtrid).u8(d.outcome.code()).str16(&d.detail);
}

pub(crate) fn decode_done(r: &mut Reader<'_>) -> Result<TxDone, DecodeError> {
    let gtrid = xid_part(r, "gtrid")?;
    let c = r.u8("outcome")?;
    let outcome = TxOutcome::from_code(c).ok_or_else(|| r.error(format!("unknown outcome {c}")))?;
    Ok(TxDone {
        gtrid,
        outcome,
        detail: r.str16("detail")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_many_branches_are_cut_with_a_failed_vote() {
        let many: Vec<Branch> = (0..BRANCHES_MAX + 5)
            .map(|i| Branch {
                group: 1,
                bqual: i.to_string().into_bytes(),
                vote: Vote::Prepared,
                cpn: 0,
            })
            .collect();
        let mut w = Writer::with_capacity(64);
        encode_branches(&mut w, &many);
        let bytes = w.finish();
        let mut r = Reader::new(&bytes);
        let got = decode_branches(&mut r).expect("decodes");
        assert_eq!(got.len(), BRANCHES_MAX);
        assert_eq!(got.last().map(|b| b.vote), Some(Vote::Failed));
        assert_eq!(got[..BRANCHES_MAX - 1], many[..BRANCHES_MAX - 1]);
    }

    #[test]
    fn gtrid_round_trips_and_fits() {
        let g = Gtrid {
            domain: "bank".into(),
            node: "n1".into(),
            epoch: u64::from(u32::MAX),
            origin: u32::MAX,
            seq: SEQ_MAX,
            deadline_s: u64::from(u32::MAX),
        };
        let t = g.encode();
        assert!(t.starts_with(&Gtrid::prefix("bank", "n1")));
        assert_eq!(Gtrid::parse(t.as_bytes()), Some(g));
        assert_eq!(t.len(), Gtrid::longest("bank", "n1"));
        assert_eq!(
            Gtrid::longest(&"d".repeat(12), &"n".repeat(12)),
            XID_PART_BYTES_MAX
        );
        for bad in [
            "",
            "a:b",
            "a:b:1:2:3",
            "a:b:1:2:3:4:5",
            "a:b:x:2:3:4",
            ":b:1:2:3:4",
        ] {
            assert_eq!(Gtrid::parse(bad.as_bytes()), None, "{bad}");
        }
    }
}
