//! The operation log's records (spec 03 §3.3) and their encodings.
//!
//! On disk the log holds two kinds of entries: [`LogEntry::Ops`], written when a
//! branch prepares (its operations with their after images, status undecided), and
//! [`LogEntry::Decision`], written when the branch is told the outcome (commit with
//! the transaction's GCPN and originating site, or abort). [`Merger`] joins them into
//! the paper's records ([`Record`]: LSN, Tid with originating site, Rid, status, GCPN,
//! operation, after image), which checkpoint files store as they are.
//!
//! Owns the byte layout of these entries and the join; it must not do I/O.

use std::collections::HashMap;

use crate::codec::{CodecError, Reader, Writer};

/// "No originating site known" (the record is undecided, or its transaction had no
/// embedded branch first).
pub const NO_ORIGIN: u16 = u16::MAX;

/// What an operation did to its resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// Set the value (insert or update); the after image is the new value.
    Put,
    /// Remove the key; the after image is empty.
    Delete,
}

/// A record's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Prepared, outcome not known yet.
    Undecided,
    /// Committed.
    Commit,
    /// Rolled back.
    Abort,
}

/// One operation as the paper's log record.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Record {
    /// Log sequence number (unique and increasing per site).
    pub lsn: u64,
    /// The branch: `GTRID|BQUAL`.
    pub tid: String,
    /// The transaction's originating site ([`NO_ORIGIN`] while undecided).
    pub origin: u16,
    /// Resource id: the table ...
    pub table: String,
    /// ... and the key.
    pub key: Vec<u8>,
    /// What the operation did.
    pub op: Op,
    /// The value after the operation (empty for a delete).
    pub after: Vec<u8>,
    /// Undecided, commit or abort.
    pub status: Status,
    /// The transaction's GCPN (0 while undecided or aborted).
    pub gcpn: u64,
    /// The checkpoint number this site voted with at prepare (kept so that a branch
    /// in doubt after a restart is committed with a GCPN no lower than its vote).
    pub vote: u64,
}

/// One operation of a branch, as logged at prepare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpImage {
    /// Table.
    pub table: String,
    /// Key.
    pub key: Vec<u8>,
    /// Put or delete.
    pub op: Op,
    /// After image.
    pub after: Vec<u8>,
}

/// An entry of the operation log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEntry {
    /// A prepared branch's operations; the i-th has LSN `first_lsn + i`.
    Ops {
        /// LSN of the first operation.
        first_lsn: u64,
        /// The branch.
        tid: String,
        /// The checkpoint number of the site's vote.
        vote: u64,
        /// Its operations, in order.
        ops: Vec<OpImage>,
    },
    /// The outcome of a branch.
    Decision {
        /// LSN of the decision itself.
        lsn: u64,
        /// The branch.
        tid: String,
        /// Commit (true) or abort.
        commit: bool,
        /// The transaction's GCPN (commits only).
        gcpn: u64,
        /// The transaction's originating site.
        origin: u16,
    },
}

const TAG_OPS: u8 = 1;
const TAG_DECISION: u8 = 2;
const TAG_RECORD: u8 = 3;

fn op_code(op: Op) -> u8 {
    match op {
        Op::Put => 1,
        Op::Delete => 2,
    }
}

fn op_from(code: u8, at: usize) -> Result<Op, CodecError> {
    match code {
        1 => Ok(Op::Put),
        2 => Ok(Op::Delete),
        _ => Err(CodecError::Invalid {
            what: "operation code",
            at,
        }),
    }
}

impl LogEntry {
    /// The entry's payload (to be framed).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        match self {
            LogEntry::Ops {
                first_lsn,
                tid,
                vote,
                ops,
            } => {
                w.u8(TAG_OPS)
                    .u64(*first_lsn)
                    .str(tid)
                    .u64(*vote)
                    .u32(ops.len() as u32);
                for o in ops {
                    w.str(&o.table)
                        .bytes(&o.key)
                        .u8(op_code(o.op))
                        .bytes(&o.after);
                }
            }
            LogEntry::Decision {
                lsn,
                tid,
                commit,
                gcpn,
                origin,
            } => {
                w.u8(TAG_DECISION)
                    .u64(*lsn)
                    .str(tid)
                    .u8(u8::from(*commit))
                    .u64(*gcpn)
                    .u16(*origin);
            }
        }
        w.buf
    }

    /// Decodes a payload written by [`LogEntry::encode`].
    pub fn decode(payload: &[u8]) -> Result<LogEntry, CodecError> {
        let mut r = Reader::new(payload);
        match r.u8()? {
            TAG_OPS => {
                let first_lsn = r.u64()?;
                let tid = r.str()?;
                let vote = r.u64()?;
                let n = r.u32()? as usize;
                let mut ops = Vec::with_capacity(n.min(4096));
                for _ in 0..n {
                    let table = r.str()?;
                    let key = r.bytes()?;
                    let at = payload.len() - r.remaining();
                    let op = op_from(r.u8()?, at)?;
                    let after = r.bytes()?;
                    ops.push(OpImage {
                        table,
                        key,
                        op,
                        after,
                    });
                }
                Ok(LogEntry::Ops {
                    first_lsn,
                    tid,
                    vote,
                    ops,
                })
            }
            TAG_DECISION => {
                let lsn = r.u64()?;
                let tid = r.str()?;
                let commit = r.u8()? != 0;
                let gcpn = r.u64()?;
                let origin = r.u16()?;
                Ok(LogEntry::Decision {
                    lsn,
                    tid,
                    commit,
                    gcpn,
                    origin,
                })
            }
            _ => Err(CodecError::Invalid {
                what: "log entry tag",
                at: 0,
            }),
        }
    }

    /// The highest LSN the entry uses.
    pub fn last_lsn(&self) -> u64 {
        match self {
            LogEntry::Ops { first_lsn, ops, .. } => first_lsn + ops.len().saturating_sub(1) as u64,
            LogEntry::Decision { lsn, .. } => *lsn,
        }
    }
}

impl Record {
    /// The record's payload (to be framed), as checkpoint files store it.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        let status = match self.status {
            Status::Undecided => 0,
            Status::Commit => 1,
            Status::Abort => 2,
        };
        w.u8(TAG_RECORD)
            .u64(self.lsn)
            .str(&self.tid)
            .u16(self.origin)
            .str(&self.table)
            .bytes(&self.key)
            .u8(op_code(self.op))
            .bytes(&self.after)
            .u8(status)
            .u64(self.gcpn)
            .u64(self.vote);
        w.buf
    }

    /// Decodes a payload written by [`Record::encode`].
    pub fn decode(payload: &[u8]) -> Result<Record, CodecError> {
        let mut r = Reader::new(payload);
        if r.u8()? != TAG_RECORD {
            return Err(CodecError::Invalid {
                what: "record tag",
                at: 0,
            });
        }
        let lsn = r.u64()?;
        let tid = r.str()?;
        let origin = r.u16()?;
        let table = r.str()?;
        let key = r.bytes()?;
        let at = payload.len() - r.remaining();
        let op = op_from(r.u8()?, at)?;
        let after = r.bytes()?;
        let at = payload.len() - r.remaining();
        let status = match r.u8()? {
            0 => Status::Undecided,
            1 => Status::Commit,
            2 => Status::Abort,
            _ => return Err(CodecError::Invalid { what: "status", at }),
        };
        let gcpn = r.u64()?;
        let vote = r.u64()?;
        Ok(Record {
            vote,
            lsn,
            tid,
            origin,
            table,
            key,
            op,
            after,
            status,
            gcpn,
        })
    }
}

/// Joins operations and decisions, in log order, into [`Record`]s.
#[derive(Default)]
pub struct Merger {
    records: Vec<Record>,
    by_tid: HashMap<String, Vec<usize>>,
    /// Decisions for branches with no operation seen (ignored; counted for
    /// `tpmon rm inspect`).
    pub orphan_decisions: usize,
}

impl Merger {
    /// An empty merger.
    pub fn new() -> Merger {
        Merger::default()
    }

    /// Adds a record as it is (from a checkpoint file).
    pub fn add_record(&mut self, r: Record) {
        self.by_tid
            .entry(r.tid.clone())
            .or_default()
            .push(self.records.len());
        self.records.push(r);
    }

    /// Adds a log entry: operations become undecided records; a decision sets the
    /// status, GCPN and origin of every record of its branch.
    pub fn add_entry(&mut self, e: LogEntry) {
        match e {
            LogEntry::Ops {
                first_lsn,
                tid,
                vote,
                ops,
            } => {
                for (i, o) in ops.into_iter().enumerate() {
                    self.add_record(Record {
                        vote,
                        lsn: first_lsn + i as u64,
                        tid: tid.clone(),
                        origin: NO_ORIGIN,
                        table: o.table,
                        key: o.key,
                        op: o.op,
                        after: o.after,
                        status: Status::Undecided,
                        gcpn: 0,
                    });
                }
            }
            LogEntry::Decision {
                tid,
                commit,
                gcpn,
                origin,
                ..
            } => match self.by_tid.get(&tid) {
                Some(ix) => {
                    for &i in ix {
                        let r = &mut self.records[i];
                        r.status = if commit {
                            Status::Commit
                        } else {
                            Status::Abort
                        };
                        r.gcpn = if commit { gcpn } else { 0 };
                        r.origin = origin;
                    }
                }
                None => self.orphan_decisions += 1,
            },
        }
    }

    /// The records, in the order they were added.
    pub fn finish(self) -> Vec<Record> {
        self.records
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn op() -> impl Strategy<Value = OpImage> {
        (
            "[a-z]{1,4}",
            proptest::collection::vec(any::<u8>(), 0..8),
            any::<bool>(),
            proptest::collection::vec(any::<u8>(), 0..8),
        )
            .prop_map(|(table, key, del, after)| OpImage {
                table,
                key,
                op: if del { Op::Delete } else { Op::Put },
                after,
            })
    }

    proptest! {
        #[test]
        fn entries_round_trip(lsn in any::<u64>(), tid in "[a-z0-9:|]{1,20}", ops in proptest::collection::vec(op(), 0..5), commit in any::<bool>(), gcpn in any::<u64>(), origin in any::<u16>()) {
            let a = LogEntry::Ops { first_lsn: lsn, tid: tid.clone(), vote: gcpn, ops };
            prop_assert_eq!(LogEntry::decode(&a.encode()), Ok(a));
            let d = LogEntry::Decision { lsn, tid, commit, gcpn, origin };
            prop_assert_eq!(LogEntry::decode(&d.encode()), Ok(d));
        }

        #[test]
        fn decoding_garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = LogEntry::decode(&data);
            let _ = Record::decode(&data);
        }
    }

    #[test]
    fn a_decision_sets_status_gcpn_and_origin() {
        let mut m = Merger::new();
        m.add_entry(LogEntry::Ops {
            first_lsn: 7,
            tid: "g|1".into(),
            vote: 5,
            ops: vec![OpImage {
                table: "t".into(),
                key: b"k".to_vec(),
                op: Op::Put,
                after: b"v".to_vec(),
            }],
        });
        m.add_entry(LogEntry::Decision {
            lsn: 8,
            tid: "g|1".into(),
            commit: true,
            gcpn: 5,
            origin: 2,
        });
        m.add_entry(LogEntry::Decision {
            lsn: 9,
            tid: "other".into(),
            commit: true,
            gcpn: 5,
            origin: 2,
        });
        assert_eq!(m.orphan_decisions, 1);
        let r = m.finish();
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].status, r[0].gcpn, r[0].origin, r[0].lsn),
            (Status::Commit, 5, 2, 7)
        );
        assert_eq!(Record::decode(&r[0].encode()), Ok(r[0].clone()));
    }
}
