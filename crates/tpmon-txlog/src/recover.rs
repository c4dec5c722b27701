//! Recovery at open: the decision table, and the scan that finds which row applies.
//!
//! Owns the answer to "what does this directory hold, and what may we do about it".
//! Every situation the scan can meet is a [`Case`] with one [`Decision`]; the table is
//! [`Case::ALL`] and is copied verbatim into docs/log-format.md (a test checks it).
//! It must never read damage as "no transaction": anything that could hide an
//! acknowledged change is refused with the file and byte offset, and the refusal
//! changes nothing on disk (all repairs are planned first and carried out only when
//! the whole directory has been judged).
//!
//! Faults it survives: a crash at any point of any write (torn tails, zero tails,
//! sectors of the last batch persisted out of order, an interrupted segment rotation,
//! an interrupted `create`). Faults it detects and refuses: bit rot or lost writes in
//! acknowledged records, headers of other logs or versions, damaged snapshots.

use std::path::PathBuf;

use crate::error::LogError;
use crate::index::{apply, Index};
use crate::record::{
    batch_pos, decode_payload, read_frame, DecodeError, Frame, Lsn, Op, LSN_LIMIT,
    RECORD_HEADER_BYTES,
};
use crate::segment::{
    classify, FileKind, HeaderError, LogIdentity, SegmentHeader, HEADER_BLOCK_BYTES,
};
use crate::storage::{Storage, StorageFile};

/// What recovery does about a [`Case`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Nothing to do.
    Accept,
    /// Cut the file at the offset, then fdatasync it.
    Truncate,
    /// Delete the file, then fsync the directory.
    Delete,
    /// Do not open the log; change nothing; return an error naming file and offset.
    Refuse,
}

/// Every situation recovery can find; see [`Case::decision`] and [`Case::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Case {
    /// No segment in the directory.
    NoSegment,
    /// A `.tmp` segment left by an interrupted create or rotation.
    TempFile,
    /// A segment header that is short, has a bad magic or checksum, or is malformed.
    HeaderInvalid,
    /// A segment header of another format version.
    VersionUnsupported,
    /// A header of another domain, node or log.
    HeaderForeign,
    /// The newest segment's snapshot is damaged or incomplete.
    SnapshotIncomplete,
    /// The records end exactly at the end of the file.
    CleanEnd,
    /// Only zero bytes follow the last valid record.
    ZeroTail,
    /// An invalid record with no valid later record after it.
    TornTail,
    /// An invalid record with valid later records after it, all of the same write.
    TornBatch,
    /// An invalid record with a valid later record of a later write after it.
    MidLogCorruption,
    /// A valid record whose lsn does not follow the previous one.
    LsnDiscontinuity,
    /// A valid record of an unknown kind.
    UnknownKind,
    /// A valid record whose payload cannot be decoded or applied.
    MalformedRecord,
    /// A segment older than the newest one, of this log.
    StaleSegment,
}

impl Case {
    /// The decision table, in the order of docs/log-format.md.
    pub const ALL: [Case; 15] = [
        Case::NoSegment,
        Case::TempFile,
        Case::HeaderInvalid,
        Case::VersionUnsupported,
        Case::HeaderForeign,
        Case::StaleSegment,
        Case::SnapshotIncomplete,
        Case::CleanEnd,
        Case::ZeroTail,
        Case::TornTail,
        Case::TornBatch,
        Case::MidLogCorruption,
        Case::LsnDiscontinuity,
        Case::UnknownKind,
        Case::MalformedRecord,
    ];

    /// The decision for this case.
    pub const fn decision(self) -> Decision {
        match self {
            Case::CleanEnd => Decision::Accept,
            Case::ZeroTail => Decision::Accept,
            Case::TornTail | Case::TornBatch => Decision::Truncate,
            Case::TempFile | Case::StaleSegment => Decision::Delete,
            Case::NoSegment
            | Case::HeaderInvalid
            | Case::VersionUnsupported
            | Case::HeaderForeign
            | Case::SnapshotIncomplete
            | Case::MidLogCorruption
            | Case::LsnDiscontinuity
            | Case::UnknownKind
            | Case::MalformedRecord => Decision::Refuse,
        }
    }

    /// When the case applies (a sentence for the documentation).
    pub const fn condition(self) -> &'static str {
        match self {
            Case::NoSegment => "no `txlog-*.seg` file in the directory",
            Case::TempFile => "a `txlog-*.seg.tmp` file",
            Case::HeaderInvalid => "a segment's header block is short, has a wrong magic or checksum, is malformed, or names a seq other than its file name",
            Case::VersionUnsupported => "a segment's header has a format version other than 1",
            Case::HeaderForeign => "the newest segment names another domain or node, or an older segment has another log id",
            Case::StaleSegment => "a segment older than the newest, with a valid header of this log",
            Case::SnapshotIncomplete => "the newest segment's snapshot (puts with lsn first_lsn - 1, then a snapshot-end record with their count) is damaged, incomplete or inconsistent",
            Case::CleanEnd => "after the snapshot, valid records with consecutive lsns end exactly at the end of the file",
            Case::ZeroTail => "only zero bytes follow the last valid record",
            Case::TornTail => "an invalid record (header cut off, length out of range, payload past the end, checksum mismatch) and no valid record with a higher lsn anywhere after it",
            Case::TornBatch => "an invalid record that should have lsn L, and valid records with higher lsns after it, each of the same write as L (lsn - batch_pos <= L) and ending within `batch_bytes_max` bytes of the invalid record's start",
            Case::MidLogCorruption => "an invalid record that should have lsn L, and a valid record with a higher lsn after it that is of a later write (lsn - batch_pos > L) or ends more than `batch_bytes_max` bytes after the invalid record's start",
            Case::LsnDiscontinuity => "a valid record whose lsn is not the previous one plus 1, or is 2^63 or more",
            Case::UnknownKind => "a valid record whose kind is not 1 to 4",
            Case::MalformedRecord => "a valid record whose payload does not decode exactly, breaks a limit, updates or removes an absent gtrid, or is a snapshot-end outside the snapshot",
        }
    }

    /// Why the decision is right (a sentence for the documentation).
    pub const fn reason(self) -> &'static str {
        match self {
            Case::NoSegment => "an empty directory is not an empty log: a wrong path must not start a node that has forgotten its in-doubt transactions (\"no log in DIR: create it first\")",
            Case::TempFile => "a segment whose write or rename did not finish; no record in it was acknowledged, because batches go to a segment only after its rename is durable",
            Case::HeaderInvalid => "a segment gets its name only after its header and snapshot are durable, so a bad header is media damage or a foreign file",
            Case::VersionUnsupported => "written by another version of tpmon; reading on could misread its records",
            Case::HeaderForeign => "the log of another node or domain must never be taken for ours (\"this log belongs to domain D node N\")",
            Case::StaleSegment => "a rotation stopped after the new segment became durable; the new segment's snapshot holds everything the old one described",
            Case::SnapshotIncomplete => "the snapshot was durable before the segment was renamed and before older segments were deleted, so damage is corruption; falling back to an older segment could lose acknowledged changes",
            Case::CleanEnd => "the normal case",
            Case::ZeroTail => "the writer lays zeros down ahead of its records (`preallocate_bytes`), and a write whose size update reached the disk but whose data did not leaves zeros too (its fdatasync never returned, so nobody relied on it); zeros are never a record, and the next write starts at the end of the valid records, over them",
            Case::TornTail => "the last batch was being written when the node stopped; its fdatasync never returned, so nobody relied on it",
            Case::TornBatch => "the valid records belong to the same unacknowledged write: a disk may persist the sectors of one write in any order",
            Case::MidLogCorruption => "a write is issued only after the previous one's fdatasync returned, so the damaged record was acknowledged; reading on would silently forget a transaction",
            Case::LsnDiscontinuity => "the writer never skips or repeats an lsn; a record is lost or misplaced",
            Case::UnknownKind => "a newer format? a record we do not understand must not be skipped",
            Case::MalformedRecord => "the writer never produces it; a bug or damage that the checksum did not catch",
        }
    }
}

/// The decision table as a Markdown table, as it appears in docs/log-format.md.
pub fn decision_table_markdown() -> String {
    let mut s = String::from("| case | condition | decision | why |\n|---|---|---|---|\n");
    for c in Case::ALL {
        s.push_str(&format!(
            "| {:?} | {} | {:?} | {} |\n",
            c,
            c.condition(),
            c.decision(),
            c.reason()
        ));
    }
    s
}

/// One repair recovery made (or, with [`Decision::Accept`], one finding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repair {
    /// The case found.
    pub case: Case,
    /// What was done.
    pub decision: Decision,
    /// The file.
    pub file: PathBuf,
    /// Byte offset (where the file was cut; 0 for deletions).
    pub offset: u64,
    /// Bytes discarded.
    pub bytes: u64,
    /// Details (what was invalid at the offset).
    pub detail: String,
}

/// What `open` found and repaired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenReport {
    /// The segment the log continues in.
    pub segment: PathBuf,
    /// Entries in the log.
    pub entries: usize,
    /// The lsn of the last durable record (the next change gets this plus 1).
    pub last_lsn: Lsn,
    /// Repairs made, in the order they were made; empty after a clean shutdown.
    pub repairs: Vec<Repair>,
    /// Zero bytes after the last record ([`Case::ZeroTail`]: space the writer laid
    /// down ahead, or a write that never reached the disk); the log writes over them.
    pub zero_tail_bytes: u64,
}

/// The result of recovery: the newest segment, ready to append to, and the index.
pub(crate) struct Recovered<F> {
    pub(crate) header: SegmentHeader,
    pub(crate) file: F,
    pub(crate) name: String,
    pub(crate) end: u64,
    /// The file's size once repaired (zeros may lie between `end` and it).
    pub(crate) size: u64,
    pub(crate) snapshot_bytes: u64,
    pub(crate) index: Index,
    pub(crate) last_lsn: Lsn,
    pub(crate) report: OpenReport,
}

struct Judge<'a, S: Storage> {
    storage: &'a S,
}

impl<S: Storage> Judge<'_, S> {
    fn refuse(&self, name: &str, offset: usize, case: Case, what: impl Into<String>) -> LogError {
        debug_assert_eq!(case.decision(), Decision::Refuse);
        LogError::Corrupt {
            file: self.storage.path_of(name),
            offset: offset as u64,
            case,
            what: what.into(),
        }
    }

    fn io(
        &self,
        name: &str,
        offset: u64,
        op: &'static str,
    ) -> impl FnOnce(std::io::Error) -> LogError {
        let file = self.storage.path_of(name);
        move |source| LogError::Io {
            file,
            offset,
            op,
            source,
        }
    }

    fn read_all(&self, name: &str) -> Result<(S::File, Vec<u8>), LogError> {
        let file = self.storage.open(name).map_err(self.io(name, 0, "open"))?;
        let len = file.size().map_err(self.io(name, 0, "stat"))?;
        let len = usize::try_from(len).map_err(|_| {
            self.refuse(
                name,
                0,
                Case::HeaderInvalid,
                "the file is larger than memory can address",
            )
        })?;
        // A size no segment of ours reaches (a damaged file system, a sparse file) must
        // be a named refusal, not an aborted process.
        let mut buf = Vec::new();
        buf.try_reserve_exact(len).map_err(|_| {
            self.refuse(
                name,
                0,
                Case::HeaderInvalid,
                format!("the file's size ({len} bytes) cannot be held in memory"),
            )
        })?;
        buf.resize(len, 0);
        file.read_at(0, &mut buf)
            .map_err(self.io(name, 0, "read"))?;
        Ok((file, buf))
    }

    /// The file's length and its first (up to) [`HEADER_BLOCK_BYTES`] bytes.
    fn read_head(&self, name: &str) -> Result<(u64, Vec<u8>), LogError> {
        let file = self.storage.open(name).map_err(self.io(name, 0, "open"))?;
        let len = file.size().map_err(self.io(name, 0, "stat"))?;
        let mut buf = vec![0u8; len.min(HEADER_BLOCK_BYTES as u64) as usize];
        file.read_at(0, &mut buf)
            .map_err(self.io(name, 0, "read"))?;
        Ok((len, buf))
    }

    fn header(&self, name: &str, buf: &[u8]) -> Result<SegmentHeader, LogError> {
        SegmentHeader::decode(buf).map_err(|e| {
            let case = match e {
                HeaderError::Version(_) => Case::VersionUnsupported,
                _ => Case::HeaderInvalid,
            };
            self.refuse(name, 0, case, e.to_string())
        })
    }
}

/// Judges the directory, then carries out the repairs; see the module header.
pub(crate) fn recover<S: Storage>(
    storage: &S,
    identity: &LogIdentity,
    batch_bytes_max: usize,
) -> Result<Recovered<S::File>, LogError> {
    let judge = Judge { storage };
    let names = storage.list().map_err(judge.io("", 0, "list"))?;
    let mut segments = Vec::new();
    let mut temps = Vec::new();
    for n in names {
        match classify(&n) {
            FileKind::Segment(seq) => segments.push((seq, n)),
            FileKind::Temp => temps.push(n),
            FileKind::Other => {}
        }
    }
    segments.sort();
    temps.sort();
    let Some((seq, name)) = segments.pop() else {
        return Err(LogError::NoLog {
            dir: storage.path_of(""),
        });
    };

    // The newest segment is the base: see Case::SnapshotIncomplete for why never an
    // older one.
    let (file, buf) = judge.read_all(&name)?;
    let header = judge.header(&name, &buf)?;
    if header.identity != *identity {
        return Err(LogError::Foreign {
            file: storage.path_of(&name),
            domain: header.identity.domain,
            node: header.identity.node,
        });
    }
    if header.seq != seq {
        return Err(judge.refuse(
            &name,
            32,
            Case::HeaderInvalid,
            format!(
                "the header names segment {} but the file name {seq}",
                header.seq
            ),
        ));
    }

    let mut planned: Vec<Repair> = Vec::new();
    let (index, snapshot_end) = read_snapshot(&judge, &name, &buf, &header)?;
    let mut index = index;
    let (end, last_lsn) = read_body(
        &judge,
        &name,
        &buf,
        snapshot_end,
        header.first_lsn - 1,
        batch_bytes_max,
        &mut index,
        &mut planned,
    )?;

    // Older segments are deleted only if they are provably ours and superseded.
    let mut deletions = Vec::new();
    for (old_seq, old) in &segments {
        let (len, head) = judge.read_head(old)?;
        let h = judge.header(old, &head)?;
        if h.seq != *old_seq {
            return Err(judge.refuse(
                old,
                32,
                Case::HeaderInvalid,
                format!(
                    "the header names segment {} but the file name {old_seq}",
                    h.seq
                ),
            ));
        }
        if h.log_id != header.log_id || h.identity != header.identity {
            return Err(judge.refuse(
                old,
                16,
                Case::HeaderForeign,
                format!("an older segment of another log (id {:032x}, domain {} node {}) next to {name}", h.log_id, h.identity.domain, h.identity.node),
            ));
        }
        deletions.push((Case::StaleSegment, old.clone(), len));
    }
    for t in &temps {
        let len = storage.open(t).and_then(|f| f.size()).unwrap_or(0);
        deletions.push((Case::TempFile, t.clone(), len));
    }

    // Everything is judged; now repair.
    let mut repairs = Vec::new();
    let zero_tail_bytes = if planned.is_empty() {
        (buf.len() - end) as u64
    } else {
        0
    };
    let mut size = buf.len() as u64;
    for r in planned {
        size = size.min(r.offset);
        debug_assert_eq!(r.decision, Decision::Truncate);
        file.truncate(r.offset)
            .map_err(judge.io(&name, r.offset, "truncate"))?;
        file.sync_data()
            .map_err(judge.io(&name, r.offset, "fdatasync"))?;
        repairs.push(r);
    }
    for (case, n, bytes) in &deletions {
        storage.remove(n).map_err(judge.io(n, 0, "remove"))?;
        repairs.push(Repair {
            case: *case,
            decision: case.decision(),
            file: storage.path_of(n),
            offset: 0,
            bytes: *bytes,
            detail: match case {
                Case::StaleSegment => format!("superseded by {name}"),
                _ => "an unfinished segment write".to_string(),
            },
        });
    }
    if !deletions.is_empty() {
        storage
            .sync_dir()
            .map_err(judge.io("", 0, "fsync directory"))?;
    }
    Ok(Recovered {
        report: OpenReport {
            segment: storage.path_of(&name),
            entries: index.len(),
            last_lsn,
            repairs,
            zero_tail_bytes,
        },
        header,
        file,
        name,
        end: end as u64,
        size,
        snapshot_bytes: (snapshot_end - HEADER_BLOCK_BYTES) as u64,
        index,
        last_lsn,
    })
}

/// Reads the snapshot; returns the index it describes and the offset after its marker.
fn read_snapshot<S: Storage>(
    judge: &Judge<'_, S>,
    name: &str,
    buf: &[u8],
    header: &SegmentHeader,
) -> Result<(Index, usize), LogError> {
    let snap_lsn = header.first_lsn - 1;
    let mut index = Index::new();
    let mut off = HEADER_BLOCK_BYTES;
    let bad = |off: usize, what: String| judge.refuse(name, off, Case::SnapshotIncomplete, what);
    loop {
        match read_frame(buf, off) {
            Frame::Valid { lsn, payload, end } => {
                if lsn != snap_lsn {
                    return Err(bad(
                        off,
                        format!("a record with lsn {lsn} inside the snapshot of lsn {snap_lsn}"),
                    ));
                }
                match decode_payload(&buf[payload]) {
                    Ok(Op::Put(e)) => {
                        let g = e.gtrid.clone();
                        if index.insert(g, e).is_some() {
                            return Err(bad(off, "the snapshot holds a gtrid twice".into()));
                        }
                    }
                    Ok(Op::SnapshotEnd { entries }) => {
                        if entries != index.len() as u64 {
                            return Err(bad(off, format!("the snapshot-end record counts {entries} entries but the snapshot holds {}", index.len())));
                        }
                        return Ok((index, end));
                    }
                    Ok(_) => {
                        return Err(bad(off, "an update or remove inside the snapshot".into()))
                    }
                    Err(DecodeError::UnknownKind(k)) => {
                        return Err(judge.refuse(
                            name,
                            off,
                            Case::UnknownKind,
                            format!("record kind {k}"),
                        ))
                    }
                    Err(DecodeError::Malformed(w)) => {
                        return Err(judge.refuse(name, off, Case::MalformedRecord, w))
                    }
                }
                off = end;
            }
            Frame::End => {
                return Err(bad(
                    off,
                    "the file ends before the snapshot-end record".into(),
                ))
            }
            Frame::Bad(b) => return Err(bad(off, b.describe())),
        }
    }
}

/// What follows an invalid record.
enum After {
    Nothing,
    SameWrite,
    LaterWrite { at: usize, lsn: Lsn, why: String },
}

/// Looks for valid records with an lsn above `last` after the invalid record at `bad`
/// (which should have held lsn `last + 1`): are they of its write or of a later one?
fn scan_after(buf: &[u8], bad: usize, last: Lsn, window: usize) -> After {
    let mut found = After::Nothing;
    let mut p = bad + 1;
    while p + RECORD_HEADER_BYTES <= buf.len() {
        match read_frame(buf, p) {
            Frame::Valid { lsn, end, payload } if lsn > last => {
                let first =
                    batch_pos(&buf[payload]).and_then(|pos| lsn.checked_sub(u64::from(pos)));
                match first {
                    Some(first) if first > last.saturating_add(1) => {
                        return After::LaterWrite {
                            at: p,
                            lsn,
                            why: format!("of a later write (which began with lsn {first})"),
                        }
                    }
                    None => {
                        return After::LaterWrite {
                            at: p,
                            lsn,
                            why: "with an impossible batch position".into(),
                        }
                    }
                    Some(_) if end - bad > window => {
                        return After::LaterWrite {
                            at: p,
                            lsn,
                            why: format!("ending more than batch_bytes_max = {window} bytes later"),
                        }
                    }
                    Some(_) => {}
                }
                found = After::SameWrite;
                p = end;
            }
            _ => p += 1,
        }
    }
    found
}

/// Replays the records after the snapshot; returns the offset where the log continues
/// and the last lsn. Truncations are planned into `planned`, not carried out.
#[allow(clippy::too_many_arguments)]
fn read_body<S: Storage>(
    judge: &Judge<'_, S>,
    name: &str,
    buf: &[u8],
    mut off: usize,
    mut last: Lsn,
    window: usize,
    index: &mut Index,
    planned: &mut Vec<Repair>,
) -> Result<(usize, Lsn), LogError> {
    loop {
        match read_frame(buf, off) {
            Frame::End => return Ok((off, last)),
            Frame::Valid { lsn, payload, end } => {
                // last < LSN_LIMIT (header check, then this one), so last + 1 is exact.
                if lsn != last + 1 || lsn >= LSN_LIMIT {
                    return Err(judge.refuse(
                        name,
                        off,
                        Case::LsnDiscontinuity,
                        format!("lsn {lsn} follows lsn {last}"),
                    ));
                }
                let op = match decode_payload(&buf[payload]) {
                    Ok(op) => op,
                    Err(DecodeError::UnknownKind(k)) => {
                        return Err(judge.refuse(
                            name,
                            off,
                            Case::UnknownKind,
                            format!("record kind {k} (lsn {lsn})"),
                        ))
                    }
                    Err(DecodeError::Malformed(w)) => {
                        return Err(judge.refuse(
                            name,
                            off,
                            Case::MalformedRecord,
                            format!("{w} (lsn {lsn})"),
                        ))
                    }
                };
                apply(index, &op).map_err(|w| {
                    judge.refuse(name, off, Case::MalformedRecord, format!("{w} (lsn {lsn})"))
                })?;
                last = lsn;
                off = end;
            }
            Frame::Bad(why) => {
                let rest = &buf[off..];
                let (case, detail) = if rest.iter().all(|&b| b == 0) {
                    // Space laid down ahead (or a write that never reached the
                    // disk): the log continues here, nothing to repair.
                    debug_assert_eq!(Case::ZeroTail.decision(), Decision::Accept);
                    return Ok((off, last));
                } else {
                    match scan_after(buf, off, last, window) {
                        After::Nothing => (Case::TornTail, why.describe()),
                        After::SameWrite => (
                            Case::TornBatch,
                            format!("{}; valid records of the same write follow", why.describe()),
                        ),
                        After::LaterWrite { at, lsn, why: later } => {
                            return Err(judge.refuse(
                                name,
                                off,
                                Case::MidLogCorruption,
                                format!(
                                    "{} after lsn {last}, but a valid record with lsn {lsn} follows at byte {at}, {later}",
                                    why.describe()
                                ),
                            ))
                        }
                    }
                };
                planned.push(Repair {
                    case,
                    decision: case.decision(),
                    file: judge.storage.path_of(name),
                    offset: off as u64,
                    bytes: rest.len() as u64,
                    detail,
                });
                return Ok((off, last));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_case_is_in_the_table_once() {
        let mut seen = std::collections::HashSet::new();
        for c in Case::ALL {
            assert!(seen.insert(c));
            assert!(!c.condition().is_empty() && !c.reason().is_empty());
        }
        assert_eq!(seen.len(), 15);
    }

    #[test]
    fn the_documentation_holds_the_table_from_the_code() {
        let doc = include_str!("../../../docs/log-format.md");
        let table = decision_table_markdown();
        assert!(
            doc.contains(&table),
            "docs/log-format.md must contain exactly this table:\n{table}"
        );
    }

    #[test]
    fn refusals_never_truncate() {
        for c in Case::ALL {
            let d = c.decision();
            match c {
                Case::TornTail | Case::TornBatch => assert_eq!(d, Decision::Truncate),
                Case::ZeroTail | Case::CleanEnd => assert_eq!(d, Decision::Accept),
                Case::MidLogCorruption | Case::SnapshotIncomplete | Case::HeaderInvalid => {
                    assert_eq!(d, Decision::Refuse)
                }
                _ => {}
            }
        }
    }
}
