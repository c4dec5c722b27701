//! Segments: file naming, the 4096-byte header block, and writing a new segment
//! (header + snapshot + snapshot-end marker) so that it appears under its final name
//! only once it is durable.
//!
//! ```text
//! header block (4096 bytes, big-endian)
//!   0   8  magic "TPMONTXL"
//!   8   4  format version (1)
//!  12   4  header block size in bytes (4096)
//!  16  16  log id (random, chosen by `create`; every segment of one log has it)
//!  32   8  segment seq (also the 16 hex digits of the file name)
//!  40   8  first lsn: the lsn of the first record after the snapshot
//!  48   2  domain name length, 50..114 domain name (UTF-8, zero padded)
//! 114   2  node name length,  116..180 node name (UTF-8, zero padded)
//! 180   4  CRC32C of bytes 0..180
//! 184 ..  zero
//! ```
//!
//! Owns the layout above and the write protocol of a new segment: write it as
//! `<name>.tmp`, fdatasync, rename without replacing to `<name>`, fsync the directory.
//! Because of that protocol a file with a segment name is complete and durable; a crash
//! can only leave a `.tmp` file behind (recovery deletes it). It must never overwrite
//! an existing segment. Faults: any I/O error is returned with the file and offset; the
//! caller decides whether it poisons the log.

use thiserror::Error;

use crate::entry::Entry;
use crate::error::LogError;
use crate::record::{encode_record, Lsn, Op, LSN_LIMIT};
use crate::storage::{Storage, StorageFile};

/// Bytes of the header block at the start of every segment.
pub const HEADER_BLOCK_BYTES: usize = 4096;
/// Longest domain or node name stored in a header, in bytes.
pub const NAME_BYTES_MAX: usize = 64;
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

const MAGIC: [u8; 8] = *b"TPMONTXL";
const CRC_OFFSET: usize = 180;
/// Snapshot records are written in chunks of this many bytes so a large snapshot does
/// not need one buffer as large as itself.
const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

const PREFIX: &str = "txlog-";
const SUFFIX: &str = ".seg";
const TMP_SUFFIX: &str = ".tmp";

/// The file name of segment `seq`.
pub(crate) fn segment_name(seq: u64) -> String {
    format!("{PREFIX}{seq:016x}{SUFFIX}")
}

/// What a directory entry is, judged by its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FileKind {
    /// `txlog-<16 hex>.seg`.
    Segment(u64),
    /// `txlog-<16 hex>.seg.tmp`: a segment whose write did not finish.
    Temp,
    /// Anything else: not ours, left alone.
    Other,
}

/// Classifies a directory entry.
pub(crate) fn classify(name: &str) -> FileKind {
    let (stem, temp) = match name.strip_suffix(TMP_SUFFIX) {
        Some(s) => (s, true),
        None => (name, false),
    };
    let Some(hex) = stem
        .strip_prefix(PREFIX)
        .and_then(|s| s.strip_suffix(SUFFIX))
    else {
        return FileKind::Other;
    };
    if hex.len() != 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return FileKind::Other;
    }
    match (u64::from_str_radix(hex, 16), temp) {
        (Ok(_), true) => FileKind::Temp,
        (Ok(seq), false) => FileKind::Segment(seq),
        (Err(_), _) => FileKind::Other,
    }
}

/// Which domain and node a log belongs to; every segment header names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogIdentity {
    /// Domain name, 1..=[`NAME_BYTES_MAX`] bytes.
    pub domain: String,
    /// Node name, 1..=[`NAME_BYTES_MAX`] bytes.
    pub node: String,
}

impl LogIdentity {
    /// An identity from a domain and a node name.
    pub fn new(domain: impl Into<String>, node: impl Into<String>) -> LogIdentity {
        LogIdentity {
            domain: domain.into(),
            node: node.into(),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), LogError> {
        for (what, v) in [("domain", &self.domain), ("node", &self.node)] {
            if v.is_empty() || v.len() > NAME_BYTES_MAX {
                return Err(LogError::InvalidOptions {
                    what: format!("the {what} name must have 1..={NAME_BYTES_MAX} bytes"),
                });
            }
        }
        Ok(())
    }
}

/// The decoded header block of a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub(crate) log_id: u128,
    pub(crate) seq: u64,
    pub(crate) first_lsn: Lsn,
    pub(crate) identity: LogIdentity,
}

/// Why a header block does not decode.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub(crate) enum HeaderError {
    #[error("the file is shorter than its {HEADER_BLOCK_BYTES}-byte header block")]
    Short,
    #[error("the magic is not \"TPMONTXL\"")]
    Magic,
    #[error("format version {0} is not supported (this build reads version {FORMAT_VERSION})")]
    Version(u32),
    #[error("the header checksum does not match")]
    Crc,
    #[error("the header is malformed: {0}")]
    Malformed(String),
}

impl SegmentHeader {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_BLOCK_BYTES];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_be_bytes());
        b[12..16].copy_from_slice(&(HEADER_BLOCK_BYTES as u32).to_be_bytes());
        b[16..32].copy_from_slice(&self.log_id.to_be_bytes());
        b[32..40].copy_from_slice(&self.seq.to_be_bytes());
        b[40..48].copy_from_slice(&self.first_lsn.to_be_bytes());
        put_name(&mut b[48..114], &self.identity.domain);
        put_name(&mut b[114..180], &self.identity.node);
        let crc = crc32c::crc32c(&b[..CRC_OFFSET]);
        b[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Result<SegmentHeader, HeaderError> {
        let b = b.get(..HEADER_BLOCK_BYTES).ok_or(HeaderError::Short)?;
        if b[0..8] != MAGIC {
            return Err(HeaderError::Magic);
        }
        // The version is checked before the checksum: a newer version may lay the
        // header out differently, and "unsupported version" is the useful message.
        let version = u32::from_be_bytes([b[8], b[9], b[10], b[11]]);
        if version != FORMAT_VERSION {
            return Err(HeaderError::Version(version));
        }
        let crc = u32::from_be_bytes([
            b[CRC_OFFSET],
            b[CRC_OFFSET + 1],
            b[CRC_OFFSET + 2],
            b[CRC_OFFSET + 3],
        ]);
        if crc32c::crc32c(&b[..CRC_OFFSET]) != crc {
            return Err(HeaderError::Crc);
        }
        let block = u32::from_be_bytes([b[12], b[13], b[14], b[15]]);
        if block as usize != HEADER_BLOCK_BYTES {
            return Err(HeaderError::Malformed(format!(
                "header block size {block}, expected {HEADER_BLOCK_BYTES}"
            )));
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&b[16..32]);
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&b[32..40]);
        let mut first = [0u8; 8];
        first.copy_from_slice(&b[40..48]);
        let first_lsn = u64::from_be_bytes(first);
        if first_lsn == 0 || first_lsn >= LSN_LIMIT {
            return Err(HeaderError::Malformed(format!(
                "first lsn {first_lsn} is outside 1..2^63"
            )));
        }
        Ok(SegmentHeader {
            log_id: u128::from_be_bytes(id),
            seq: u64::from_be_bytes(seq),
            first_lsn,
            identity: LogIdentity {
                domain: get_name(&b[48..114], "domain")?,
                node: get_name(&b[114..180], "node")?,
            },
        })
    }
}

fn put_name(field: &mut [u8], name: &str) {
    // Names were validated to fit; the length prefix is 2 bytes, the text at most 64.
    let n = name.len().min(NAME_BYTES_MAX);
    field[0..2].copy_from_slice(&(n as u16).to_be_bytes());
    field[2..2 + n].copy_from_slice(&name.as_bytes()[..n]);
}

fn get_name(field: &[u8], what: &str) -> Result<String, HeaderError> {
    let n = u16::from_be_bytes([field[0], field[1]]) as usize;
    if n == 0 || n > NAME_BYTES_MAX {
        return Err(HeaderError::Malformed(format!(
            "{what} name length {n} is outside 1..={NAME_BYTES_MAX}"
        )));
    }
    String::from_utf8(field[2..2 + n].to_vec())
        .map_err(|_| HeaderError::Malformed(format!("the {what} name is not UTF-8")))
}

/// A 128-bit id that is, for all practical purposes, unique: the standard library's
/// per-process random hash keys (seeded by the OS) mixed with the time and the pid.
pub(crate) fn new_log_id() -> u128 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut halves = [0u64; 2];
    for (i, half) in halves.iter_mut().enumerate() {
        let mut h = RandomState::new().build_hasher();
        h.write_u128(nanos);
        h.write_u32(std::process::id());
        h.write_usize(i);
        *half = h.finish();
    }
    (u128::from(halves[0]) << 64) | u128::from(halves[1])
}

/// A segment that was just written and is durable under its final name.
pub(crate) struct NewSegment<F> {
    pub(crate) file: F,
    pub(crate) name: String,
    /// Bytes written: header block, snapshot and marker.
    pub(crate) end: u64,
    /// Bytes of the snapshot and its marker.
    pub(crate) snapshot_bytes: u64,
}

/// Writes segment `header.seq` holding a snapshot of `entries` (their lsn is
/// `header.first_lsn - 1`, the state they describe), durably and atomically: see the
/// module header. An existing segment of that name is never replaced.
pub(crate) fn write_segment<'a, S: Storage>(
    storage: &S,
    header: &SegmentHeader,
    entries: impl Iterator<Item = &'a Entry>,
) -> Result<NewSegment<S::File>, LogError> {
    let name = segment_name(header.seq);
    let tmp = format!("{name}{TMP_SUFFIX}");
    let io = |op: &'static str, offset: u64| {
        let file = storage.path_of(&tmp);
        move |source| LogError::Io {
            file,
            offset,
            op,
            source,
        }
    };
    let file = storage.create_new(&tmp).map_err(io("create", 0))?;
    let head = header.encode();
    file.write_at(0, &head).map_err(io("write", 0))?;
    let mut off = head.len() as u64;
    let snap_lsn = header.first_lsn - 1;
    let mut count = 0u64;
    let mut chunk = Vec::with_capacity(SNAPSHOT_CHUNK_BYTES.min(64 * 1024));
    for e in entries {
        encode_record(snap_lsn, &Op::Put(e.clone()), &mut chunk);
        count += 1;
        if chunk.len() >= SNAPSHOT_CHUNK_BYTES {
            file.write_at(off, &chunk).map_err(io("write", off))?;
            off += chunk.len() as u64;
            chunk.clear();
        }
    }
    encode_record(snap_lsn, &Op::SnapshotEnd { entries: count }, &mut chunk);
    file.write_at(off, &chunk).map_err(io("write", off))?;
    off += chunk.len() as u64;
    file.sync_data().map_err(io("fdatasync", off))?;
    storage
        .rename_noreplace(&tmp, &name)
        .map_err(io("rename", 0))?;
    storage.sync_dir().map_err(|source| LogError::Io {
        file: storage.path_of(""),
        offset: 0,
        op: "fsync directory",
        source,
    })?;
    Ok(NewSegment {
        file,
        name,
        end: off,
        snapshot_bytes: off - HEADER_BLOCK_BYTES as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> SegmentHeader {
        SegmentHeader {
            log_id: 0x0011_2233_4455_6677_8899_aabb_ccdd_eeff,
            seq: 42,
            first_lsn: 1000,
            identity: LogIdentity::new("bank", "node-a"),
        }
    }

    #[test]
    fn header_round_trips_and_has_the_documented_layout() {
        let b = header().encode();
        assert_eq!(b.len(), HEADER_BLOCK_BYTES);
        assert_eq!(&b[0..8], b"TPMONTXL");
        assert_eq!(&b[8..12], &[0, 0, 0, 1]);
        assert_eq!(&b[32..40], &42u64.to_be_bytes());
        assert_eq!(&b[48..50], &[0, 4]);
        assert_eq!(&b[50..54], b"bank");
        assert!(b[184..].iter().all(|&x| x == 0));
        assert_eq!(SegmentHeader::decode(&b), Ok(header()));
    }

    #[test]
    fn damaged_headers_are_refused_with_a_reason() {
        let good = header().encode();
        assert_eq!(SegmentHeader::decode(&good[..100]), Err(HeaderError::Short));
        let mut b = good.clone();
        b[0] = b'X';
        assert_eq!(SegmentHeader::decode(&b), Err(HeaderError::Magic));
        let mut b = good.clone();
        b[11] = 2;
        assert_eq!(SegmentHeader::decode(&b), Err(HeaderError::Version(2)));
        let mut b = good.clone();
        b[60] ^= 1;
        assert_eq!(SegmentHeader::decode(&b), Err(HeaderError::Crc));
    }

    #[test]
    fn names_classify() {
        assert_eq!(segment_name(1), "txlog-0000000000000001.seg");
        assert_eq!(classify(&segment_name(0xabc)), FileKind::Segment(0xabc));
        assert_eq!(classify("txlog-0000000000000abc.seg.tmp"), FileKind::Temp);
        assert_eq!(classify("txlog-abc.seg"), FileKind::Other);
        assert_eq!(classify("txlog-000000000000000g.seg"), FileKind::Other);
        assert_eq!(classify("notes.txt"), FileKind::Other);
    }

    #[test]
    fn log_ids_differ() {
        assert_ne!(new_log_id(), new_log_id());
    }
}
