//! The record codec: how one change to the log is framed and encoded, byte by byte.
//!
//! ```text
//! record  = payload_len u32 | crc u32 | lsn u64 | payload          (all big-endian)
//! crc     = CRC32C(lsn as 8 big-endian bytes || payload)
//! payload = kind u8 | batch_pos u32 | fields
//!   batch_pos: how many records precede this one in the same write, so that
//!   lsn - batch_pos is the first lsn of that write (recovery uses it to tell a torn
//!   last write from damage in an earlier, acknowledged one)
//!   1 put     gtrid_len u8, gtrid, state u8, advice u8, data_len u16, data,
//!             branch_count u16, branch_count x (rm u32, bqual_len u8, bqual, state u8)
//!   2 update  gtrid_len u8, gtrid, flags u8 (bit 0: state valid, bit 1: advice valid),
//!             state u8 (0 unless valid), advice u8 (0 unless valid)
//!   3 remove  gtrid_len u8, gtrid
//!   4 snapshot end  entries u64 (how many put records the snapshot holds)
//! ```
//!
//! Owns encoding and decoding only (sans I/O, so it is trivially testable). It must
//! never panic on any byte string: decoding untrusted bytes returns a typed result.
//! Faults it detects: truncated headers and payloads, implausible lengths, checksum
//! mismatches, unknown kinds and payloads that do not decode exactly or break a limit.
//! It does not decide what a damaged record means; that is `recover`'s decision table.

use std::ops::Range;

use crate::entry::{
    validate_gtrid, Advice, Branch, Entry, TxState, BQUAL_BYTES_MAX, BRANCHES_MAX, DATA_BYTES_MAX,
    GTRID_BYTES_MAX,
};

/// Log sequence number: consecutive across the records of the log, starting at 1.
pub type Lsn = u64;

/// LSNs are below this bound (2^63: centuries at millions of changes per second), so
/// that `lsn + 1` never overflows whatever a damaged file claims.
pub(crate) const LSN_LIMIT: Lsn = 1 << 63;

/// Bytes of a record's frame header (length, checksum, lsn).
pub const RECORD_HEADER_BYTES: usize = 16;

/// Largest payload a valid record can carry: a put of an entry at every limit.
pub const RECORD_PAYLOAD_BYTES_MAX: usize = 1 // kind
    + 4 // batch_pos
    + 1 + GTRID_BYTES_MAX
    + 1 + 1 // state, advice
    + 2 + DATA_BYTES_MAX
    + 2 + BRANCHES_MAX * (4 + 1 + BQUAL_BYTES_MAX + 1);

/// Largest record, frame header included.
pub const RECORD_BYTES_MAX: usize = RECORD_HEADER_BYTES + RECORD_PAYLOAD_BYTES_MAX;

const KIND_PUT: u8 = 1;
const KIND_UPDATE: u8 = 2;
const KIND_REMOVE: u8 = 3;
const KIND_SNAPSHOT_END: u8 = 4;

const FLAG_STATE: u8 = 0x01;
const FLAG_ADVICE: u8 = 0x02;

/// One change to the log, as carried by a record's payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    /// Insert or replace the full image of an entry.
    Put(Entry),
    /// Set the state, the advice or both of an existing entry.
    Update {
        gtrid: Vec<u8>,
        state: Option<TxState>,
        advice: Option<Advice>,
    },
    /// The transaction completed: forget the entry.
    Remove { gtrid: Vec<u8> },
    /// Closes the snapshot at the start of a segment; `entries` put records precede it.
    SnapshotEnd { entries: u64 },
}

impl Op {
    /// The gtrid the op changes, if it changes one.
    pub(crate) fn gtrid(&self) -> Option<&[u8]> {
        match self {
            Op::Put(e) => Some(&e.gtrid),
            Op::Update { gtrid, .. } | Op::Remove { gtrid } => Some(gtrid),
            Op::SnapshotEnd { .. } => None,
        }
    }
}

/// Encodes `op`'s payload with batch_pos 0 (see [`set_batch_pos`]). The caller has
/// validated the op against the limits, so the payload never exceeds
/// [`RECORD_PAYLOAD_BYTES_MAX`] and every length fits its field.
pub(crate) fn encode_payload(op: &Op, out: &mut Vec<u8>) {
    let kind = match op {
        Op::Put(_) => KIND_PUT,
        Op::Update { .. } => KIND_UPDATE,
        Op::Remove { .. } => KIND_REMOVE,
        Op::SnapshotEnd { .. } => KIND_SNAPSHOT_END,
    };
    out.push(kind);
    out.extend_from_slice(&0u32.to_be_bytes());
    match op {
        Op::Put(e) => {
            put_bytes8(out, &e.gtrid);
            out.push(e.state.code());
            out.push(e.advice.code());
            out.extend_from_slice(&(e.data.len() as u16).to_be_bytes());
            out.extend_from_slice(&e.data);
            out.extend_from_slice(&(e.branches.len() as u16).to_be_bytes());
            for b in &e.branches {
                out.extend_from_slice(&b.rm.to_be_bytes());
                put_bytes8(out, &b.bqual);
                out.push(b.state);
            }
        }
        Op::Update {
            gtrid,
            state,
            advice,
        } => {
            put_bytes8(out, gtrid);
            let mut flags = 0;
            if state.is_some() {
                flags |= FLAG_STATE;
            }
            if advice.is_some() {
                flags |= FLAG_ADVICE;
            }
            out.push(flags);
            out.push(state.map_or(0, TxState::code));
            out.push(advice.map_or(0, Advice::code));
        }
        Op::Remove { gtrid } => put_bytes8(out, gtrid),
        Op::SnapshotEnd { entries } => {
            out.extend_from_slice(&entries.to_be_bytes());
        }
    }
}

/// Sets the batch_pos field of an encoded payload.
pub(crate) fn set_batch_pos(payload: &mut [u8], pos: u32) {
    if let Some(field) = payload.get_mut(1..5) {
        field.copy_from_slice(&pos.to_be_bytes());
    }
}

/// The batch_pos field of a payload (`None` if the payload is too short to hold it).
pub(crate) fn batch_pos(payload: &[u8]) -> Option<u32> {
    payload.get(1..5).map(be_u32)
}

fn put_bytes8(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(bytes.len() as u8);
    out.extend_from_slice(bytes);
}

/// The checksum of a record: CRC32C over the lsn (big-endian) and the payload, so a
/// record copied to the wrong place in the sequence does not verify.
pub(crate) fn record_crc(lsn: Lsn, payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&lsn.to_be_bytes()), payload)
}

/// Appends a whole record (frame header and payload) for an already encoded payload.
pub(crate) fn frame(lsn: Lsn, payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&record_crc(lsn, payload).to_be_bytes());
    out.extend_from_slice(&lsn.to_be_bytes());
    out.extend_from_slice(payload);
}

/// Appends a whole record for `op`.
pub(crate) fn encode_record(lsn: Lsn, op: &Op, out: &mut Vec<u8>) {
    let mut payload = Vec::with_capacity(64);
    encode_payload(op, &mut payload);
    frame(lsn, &payload, out);
}

/// What lies at an offset of a segment's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame {
    /// The offset is exactly the end of the bytes.
    End,
    /// A record whose length is plausible and whose checksum verifies.
    Valid {
        lsn: Lsn,
        payload: Range<usize>,
        /// Offset just past the record.
        end: usize,
    },
    /// Not a valid record.
    Bad(BadFrame),
}

/// Why the bytes at an offset are not a valid record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadFrame {
    /// Fewer than [`RECORD_HEADER_BYTES`] bytes remain.
    HeaderTruncated,
    /// The length is zero or above [`RECORD_PAYLOAD_BYTES_MAX`].
    LengthInvalid(u32),
    /// The payload runs past the end of the bytes.
    PayloadTruncated,
    /// The checksum does not match.
    CrcMismatch,
}

impl BadFrame {
    /// A sentence for error messages.
    pub(crate) fn describe(self) -> String {
        match self {
            BadFrame::HeaderTruncated => {
                "the record header is cut off by the end of the file".into()
            }
            BadFrame::LengthInvalid(n) => {
                format!("the record length {n} is outside 1..={RECORD_PAYLOAD_BYTES_MAX}")
            }
            BadFrame::PayloadTruncated => "the record payload runs past the end of the file".into(),
            BadFrame::CrcMismatch => "the record checksum does not match".into(),
        }
    }
}

/// Reads the frame at `off` without trusting anything in it.
pub(crate) fn read_frame(buf: &[u8], off: usize) -> Frame {
    let Some(rest) = buf.get(off..) else {
        return Frame::Bad(BadFrame::HeaderTruncated);
    };
    if rest.is_empty() {
        return Frame::End;
    }
    let Some(header) = rest.get(..RECORD_HEADER_BYTES) else {
        return Frame::Bad(BadFrame::HeaderTruncated);
    };
    let len = be_u32(&header[0..4]);
    let crc = be_u32(&header[4..8]);
    let lsn = be_u64(&header[8..16]);
    if len == 0 || len as usize > RECORD_PAYLOAD_BYTES_MAX {
        return Frame::Bad(BadFrame::LengthInvalid(len));
    }
    let start = off + RECORD_HEADER_BYTES;
    let end = start + len as usize;
    let Some(payload) = buf.get(start..end) else {
        return Frame::Bad(BadFrame::PayloadTruncated);
    };
    if record_crc(lsn, payload) != crc {
        return Frame::Bad(BadFrame::CrcMismatch);
    }
    Frame::Valid {
        lsn,
        payload: start..end,
        end,
    }
}

fn be_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(b);
    u32::from_be_bytes(a)
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    u64::from_be_bytes(a)
}

/// Why a payload with a valid checksum does not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// The kind byte is not one this version knows (a newer format?).
    UnknownKind(u8),
    /// The payload is malformed; the string says how.
    Malformed(String),
}

/// A bounds-checked reader over a payload.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], DecodeError> {
        let s = self
            .buf
            .get(self.pos..self.pos + n)
            .ok_or_else(|| DecodeError::Malformed(format!("the payload ends inside {what}")))?;
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self, what: &str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, DecodeError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &str) -> Result<u32, DecodeError> {
        Ok(be_u32(self.take(4, what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64, DecodeError> {
        Ok(be_u64(self.take(8, what)?))
    }
    fn bytes8(&mut self, max: usize, what: &str) -> Result<Vec<u8>, DecodeError> {
        let n = self.u8(what)? as usize;
        if n > max {
            return Err(DecodeError::Malformed(format!(
                "{what} has {n} bytes; at most {max} are allowed"
            )));
        }
        Ok(self.take(n, what)?.to_vec())
    }
    fn gtrid(&mut self) -> Result<Vec<u8>, DecodeError> {
        let g = self.bytes8(GTRID_BYTES_MAX, "the gtrid")?;
        validate_gtrid(&g).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        Ok(g)
    }
    fn state(&mut self) -> Result<TxState, DecodeError> {
        let c = self.u8("the state")?;
        TxState::from_code(c)
            .ok_or_else(|| DecodeError::Malformed(format!("unknown transaction state {c}")))
    }
    fn advice(&mut self) -> Result<Advice, DecodeError> {
        let c = self.u8("the advice")?;
        Advice::from_code(c).ok_or_else(|| DecodeError::Malformed(format!("unknown advice {c}")))
    }
}

/// Decodes a payload whose checksum verified. Every byte must be consumed.
pub(crate) fn decode_payload(payload: &[u8]) -> Result<Op, DecodeError> {
    let mut r = Reader {
        buf: payload,
        pos: 0,
    };
    let kind = r.u8("the kind")?;
    r.u32("the batch position")?;
    let op = match kind {
        KIND_PUT => {
            let gtrid = r.gtrid()?;
            let state = r.state()?;
            let advice = r.advice()?;
            let data_len = r.u16("the data length")? as usize;
            if data_len > DATA_BYTES_MAX {
                return Err(DecodeError::Malformed(format!(
                    "the data has {data_len} bytes; at most {DATA_BYTES_MAX} are allowed"
                )));
            }
            let data = r.take(data_len, "the data")?.to_vec();
            let count = r.u16("the branch count")? as usize;
            if count > BRANCHES_MAX {
                return Err(DecodeError::Malformed(format!(
                    "{count} branches; at most {BRANCHES_MAX} are allowed"
                )));
            }
            let mut branches = Vec::with_capacity(count);
            for _ in 0..count {
                let rm = r.u32("a branch's rm")?;
                let bqual = r.bytes8(BQUAL_BYTES_MAX, "a branch's bqual")?;
                let state = r.u8("a branch's state")?;
                branches.push(Branch { rm, bqual, state });
            }
            Op::Put(Entry {
                gtrid,
                state,
                advice,
                branches,
                data,
            })
        }
        KIND_UPDATE => {
            let gtrid = r.gtrid()?;
            let flags = r.u8("the flags")?;
            if flags & !(FLAG_STATE | FLAG_ADVICE) != 0 || flags == 0 {
                return Err(DecodeError::Malformed(format!(
                    "update flags {flags:#04x} are not a non-empty subset of 0x03"
                )));
            }
            let state_code = r.u8("the state")?;
            let advice_code = r.u8("the advice")?;
            let state = if flags & FLAG_STATE != 0 {
                Some(TxState::from_code(state_code).ok_or_else(|| {
                    DecodeError::Malformed(format!("unknown transaction state {state_code}"))
                })?)
            } else if state_code != 0 {
                // The writer puts 0 where the flag is clear; anything else is not ours.
                return Err(DecodeError::Malformed(format!(
                    "state byte {state_code} without the state flag (must be 0)"
                )));
            } else {
                None
            };
            let advice = if flags & FLAG_ADVICE != 0 {
                Some(Advice::from_code(advice_code).ok_or_else(|| {
                    DecodeError::Malformed(format!("unknown advice {advice_code}"))
                })?)
            } else if advice_code != 0 {
                return Err(DecodeError::Malformed(format!(
                    "advice byte {advice_code} without the advice flag (must be 0)"
                )));
            } else {
                None
            };
            Op::Update {
                gtrid,
                state,
                advice,
            }
        }
        KIND_REMOVE => Op::Remove { gtrid: r.gtrid()? },
        KIND_SNAPSHOT_END => Op::SnapshotEnd {
            entries: r.u64("the entry count")?,
        },
        other => return Err(DecodeError::UnknownKind(other)),
    };
    if r.pos != payload.len() {
        return Err(DecodeError::Malformed(format!(
            "{} bytes follow the fields",
            payload.len() - r.pos
        )));
    }
    Ok(op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn full_entry() -> Entry {
        Entry {
            gtrid: vec![7; GTRID_BYTES_MAX],
            state: TxState::PreCommit,
            advice: Advice::Rollback,
            branches: vec![
                Branch {
                    rm: u32::MAX,
                    bqual: vec![9; BQUAL_BYTES_MAX],
                    state: 255,
                };
                BRANCHES_MAX
            ],
            data: vec![3; DATA_BYTES_MAX],
        }
    }

    #[test]
    fn the_largest_put_fills_the_payload_limit_exactly() {
        let mut p = Vec::new();
        encode_payload(&Op::Put(full_entry()), &mut p);
        assert_eq!(p.len(), RECORD_PAYLOAD_BYTES_MAX);
        // The figures docs/log-format.md quotes.
        assert_eq!((RECORD_PAYLOAD_BYTES_MAX, RECORD_BYTES_MAX), (22092, 22108));
        assert_eq!(decode_payload(&p), Ok(Op::Put(full_entry())));
    }

    #[test]
    fn layout_is_big_endian_as_documented() {
        let mut out = Vec::new();
        encode_record(
            0x0102_0304_0506_0708,
            &Op::Remove {
                gtrid: b"ab".to_vec(),
            },
            &mut out,
        );
        assert_eq!(&out[0..4], &[0, 0, 0, 8]);
        assert_eq!(&out[8..16], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&out[16..], &[KIND_REMOVE, 0, 0, 0, 0, 2, b'a', b'b']);
        let mut payload = out[16..].to_vec();
        set_batch_pos(&mut payload, 0x0a0b_0c0d);
        assert_eq!(&payload[1..5], &[10, 11, 12, 13]);
        assert_eq!(batch_pos(&payload), Some(0x0a0b_0c0d));
        let crc = record_crc(0x0102_0304_0506_0708, &out[16..]);
        assert_eq!(&out[4..8], &crc.to_be_bytes());
    }

    #[test]
    fn frames_detect_every_kind_of_damage() {
        let mut out = Vec::new();
        encode_record(5, &Op::SnapshotEnd { entries: 3 }, &mut out);
        let n = out.len();
        assert_eq!(
            read_frame(&out, 0),
            Frame::Valid {
                lsn: 5,
                payload: 16..n,
                end: n
            }
        );
        assert_eq!(read_frame(&out, n), Frame::End);
        assert_eq!(
            read_frame(&out[..10], 0),
            Frame::Bad(BadFrame::HeaderTruncated)
        );
        assert_eq!(
            read_frame(&out[..n - 1], 0),
            Frame::Bad(BadFrame::PayloadTruncated)
        );
        let mut flipped = out.clone();
        flipped[n - 1] ^= 1;
        assert_eq!(read_frame(&flipped, 0), Frame::Bad(BadFrame::CrcMismatch));
        let mut lsn_changed = out.clone();
        lsn_changed[15] ^= 1;
        assert_eq!(
            read_frame(&lsn_changed, 0),
            Frame::Bad(BadFrame::CrcMismatch)
        );
        assert_eq!(
            read_frame(&[0u8; 32], 0),
            Frame::Bad(BadFrame::LengthInvalid(0))
        );
    }

    #[test]
    fn malformed_payloads_are_typed_errors() {
        assert_eq!(
            decode_payload(&[9, 0, 0, 0, 0]),
            Err(DecodeError::UnknownKind(9))
        );
        assert!(matches!(
            decode_payload(&[]),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            decode_payload(&[KIND_REMOVE, 0, 0]),
            Err(DecodeError::Malformed(_))
        ));
        // An update with no flags, and a remove with trailing bytes.
        assert!(matches!(
            decode_payload(&[KIND_UPDATE, 0, 0, 0, 0, 1, b'g', 0, 0, 0]),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            decode_payload(&[KIND_REMOVE, 0, 0, 0, 0, 1, b'g', 0]),
            Err(DecodeError::Malformed(_))
        ));
        // An empty gtrid.
        assert!(matches!(
            decode_payload(&[KIND_REMOVE, 0, 0, 0, 0, 0]),
            Err(DecodeError::Malformed(_))
        ));
        // An update's state or advice byte set while its flag is clear.
        let update = |flags, state, advice| {
            decode_payload(&[KIND_UPDATE, 0, 0, 0, 0, 1, b'g', flags, state, advice])
        };
        assert!(update(FLAG_STATE, 1, 0).is_ok());
        assert!(update(FLAG_ADVICE, 0, 1).is_ok());
        assert!(matches!(
            update(FLAG_STATE, 1, 2),
            Err(DecodeError::Malformed(m)) if m.contains("advice byte 2")
        ));
        assert!(matches!(
            update(FLAG_ADVICE, 3, 1),
            Err(DecodeError::Malformed(m)) if m.contains("state byte 3")
        ));
    }

    fn arb_entry() -> impl Strategy<Value = Entry> {
        (
            proptest::collection::vec(any::<u8>(), 1..=GTRID_BYTES_MAX),
            1u8..=7,
            0u8..=2,
            proptest::collection::vec(
                (
                    any::<u32>(),
                    proptest::collection::vec(any::<u8>(), 0..=BQUAL_BYTES_MAX),
                    any::<u8>(),
                ),
                0..4,
            ),
            proptest::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(|(gtrid, s, a, branches, data)| Entry {
                gtrid,
                state: TxState::from_code(s).unwrap_or(TxState::Active),
                advice: Advice::from_code(a).unwrap_or_default(),
                branches: branches
                    .into_iter()
                    .map(|(rm, bqual, state)| Branch { rm, bqual, state })
                    .collect(),
                data,
            })
    }

    proptest! {
        #[test]
        fn puts_round_trip(e in arb_entry(), lsn in any::<u64>()) {
            let mut out = Vec::new();
            encode_record(lsn, &Op::Put(e.clone()), &mut out);
            match read_frame(&out, 0) {
                Frame::Valid { lsn: l, payload, end } => {
                    prop_assert_eq!(l, lsn);
                    prop_assert_eq!(end, out.len());
                    prop_assert_eq!(decode_payload(&out[payload]), Ok(Op::Put(e)));
                }
                other => prop_assert!(false, "{:?}", other),
            }
        }

        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_payload(&bytes);
            for off in 0..bytes.len() {
                let _ = read_frame(&bytes, off);
            }
        }
    }
}
