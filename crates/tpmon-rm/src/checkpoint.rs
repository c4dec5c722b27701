//! Commit checkpoint files `ccp.<N>`: the site's committed state at checkpoint N
//! (CCP(N)), the records that took CCP(N-1) to it (its delta, the compensation
//! records CL(N-1) among them), and the records carried over to later checkpoints
//! (undecided, or decided for a later GCPN).
//!
//! Owns the file format and its atomic replacement (write `ccp.<N>.tmp`, fsync,
//! rename, fsync the directory). It must not decide which records go where
//! (Algorithm 2 lives in `site`), and must never expose a file whose footer is
//! missing: a checkpoint is whole or absent.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::codec::{frame, next_frame, FrameAt, Reader, Writer};
use crate::error::RmError;
use crate::oplog::sync_dir;
use crate::record::Record;

/// Committed data: table name → key → value.
pub type Tables = BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>>;

const MAGIC: &[u8; 8] = b"TPMONCCP";
const VERSION: u32 = 1;
const TAG_HEADER: u8 = b'H';
const TAG_IMAGE: u8 = b'I';
const TAG_DELTA: u8 = b'D';
const TAG_CARRY: u8 = b'C';
const TAG_FOOTER: u8 = b'F';

/// The file name of checkpoint `n`.
pub fn ccp_name(n: u64) -> String {
    format!("ccp.{n:020}")
}

/// Parses [`ccp_name`]'s form (temporary files do not parse).
pub fn parse_ccp_name(name: &str) -> Option<u64> {
    name.strip_prefix("ccp.")?.parse().ok()
}

/// One checkpoint as stored.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Checkpoint {
    /// The site.
    pub site: u16,
    /// The checkpoint number N.
    pub n: u64,
    /// The site's next LSN when the checkpoint was made.
    pub next_lsn: u64,
    /// When it was made (ms since the Unix epoch).
    pub created_ms: u64,
    /// CCP(N): the committed state.
    pub image: Tables,
    /// The records applied to CCP(N-1) to make CCP(N), each with `true` when it is a
    /// compensation record (in CL(N-1): GCPN N-1, decided after CCP(N-1) was made).
    pub delta: Vec<(Record, bool)>,
    /// The records kept for later checkpoints (UL and DL of spec 03 §3.3).
    pub carry: Vec<Record>,
}

impl Checkpoint {
    /// Records of CL(N-1) stored with this checkpoint.
    pub fn compensation(&self) -> impl Iterator<Item = &Record> {
        self.delta.iter().filter(|(_, cl)| *cl).map(|(r, _)| r)
    }

    /// Writes the checkpoint as `dir/ccp.<N>`, atomically and durably.
    pub fn write(&self, dir: &Path, sync: bool) -> Result<PathBuf, RmError> {
        let path = dir.join(ccp_name(self.n));
        let tmp = dir.join(format!("{}.tmp", ccp_name(self.n)));
        let mut out = Vec::new();
        let mut w = Writer::new();
        w.u8(TAG_HEADER);
        w.buf.extend_from_slice(MAGIC);
        w.u32(VERSION)
            .u16(self.site)
            .u64(self.n)
            .u64(self.next_lsn)
            .u64(self.created_ms);
        out.extend_from_slice(&frame(&w.buf));
        let mut rows = 0u64;
        for (table, kv) in &self.image {
            for (k, v) in kv {
                let mut w = Writer::new();
                w.u8(TAG_IMAGE).str(table).bytes(k).bytes(v);
                out.extend_from_slice(&frame(&w.buf));
                rows += 1;
            }
        }
        for (r, cl) in &self.delta {
            let mut w = Writer::new();
            w.u8(TAG_DELTA).u8(u8::from(*cl)).bytes(&r.encode());
            out.extend_from_slice(&frame(&w.buf));
        }
        for r in &self.carry {
            let mut w = Writer::new();
            w.u8(TAG_CARRY).bytes(&r.encode());
            out.extend_from_slice(&frame(&w.buf));
        }
        let mut w = Writer::new();
        w.u8(TAG_FOOTER)
            .u64(rows)
            .u64(self.delta.len() as u64)
            .u64(self.carry.len() as u64);
        out.extend_from_slice(&frame(&w.buf));
        let mut f = std::fs::File::create(&tmp)
            .map_err(|e| RmError::io(&tmp, "cannot create the checkpoint", e))?;
        f.write_all(&out)
            .map_err(|e| RmError::io(&tmp, "cannot write the checkpoint", e))?;
        if sync {
            f.sync_all()
                .map_err(|e| RmError::io(&tmp, "cannot sync the checkpoint", e))?;
        }
        drop(f);
        std::fs::rename(&tmp, &path)
            .map_err(|e| RmError::io(&path, "cannot rename the checkpoint into place", e))?;
        if sync {
            sync_dir(dir)?;
        }
        Ok(path)
    }

    /// Reads `path`; anything but a whole, valid file is an error naming the offset.
    pub fn read(path: &Path) -> Result<Checkpoint, RmError> {
        let data = std::fs::read(path).map_err(|e| RmError::io(path, "cannot read", e))?;
        let corrupt = |offset: usize, what: String| RmError::Corrupt {
            path: path.into(),
            offset: offset as u64,
            what,
        };
        let mut c = Checkpoint::default();
        let mut at = 0usize;
        let mut header = false;
        let mut rows = 0u64;
        loop {
            let (payload, next) = match next_frame(&data, at) {
                FrameAt::Frame(p, n) => (p, n),
                FrameAt::End => {
                    return Err(corrupt(at, "no footer: the file is incomplete".into()))
                }
                FrameAt::Torn => return Err(corrupt(at, "incomplete frame".into())),
                FrameAt::Bad(what) => return Err(corrupt(at, what.into())),
            };
            let mut r = Reader::new(payload);
            let bad = |e: crate::codec::CodecError| corrupt(at, e.to_string());
            let tag = r.u8().map_err(bad)?;
            if !header && tag != TAG_HEADER {
                return Err(corrupt(at, "no header".into()));
            }
            match tag {
                TAG_HEADER => {
                    let mut magic = [0u8; 8];
                    for m in &mut magic {
                        *m = r.u8().map_err(bad)?;
                    }
                    if &magic != MAGIC {
                        return Err(corrupt(at, "not a tpmon checkpoint".into()));
                    }
                    let v = r.u32().map_err(bad)?;
                    if v != VERSION {
                        return Err(corrupt(at, format!("unknown version {v}")));
                    }
                    c.site = r.u16().map_err(bad)?;
                    c.n = r.u64().map_err(bad)?;
                    c.next_lsn = r.u64().map_err(bad)?;
                    c.created_ms = r.u64().map_err(bad)?;
                    let named = path
                        .file_name()
                        .and_then(|n| n.to_str())
                        .and_then(parse_ccp_name);
                    if named.is_some_and(|n| n != c.n) {
                        return Err(corrupt(
                            at,
                            format!(
                                "the file holds checkpoint {} under another number's name",
                                c.n
                            ),
                        ));
                    }
                    header = true;
                }
                TAG_IMAGE => {
                    let table = r.str().map_err(bad)?;
                    let k = r.bytes().map_err(bad)?;
                    let v = r.bytes().map_err(bad)?;
                    c.image.entry(table).or_default().insert(k, v);
                    rows += 1;
                }
                TAG_DELTA => {
                    let cl = r.u8().map_err(bad)? != 0;
                    let rec = Record::decode(&r.bytes().map_err(bad)?).map_err(bad)?;
                    c.delta.push((rec, cl));
                }
                TAG_CARRY => {
                    let rec = Record::decode(&r.bytes().map_err(bad)?).map_err(bad)?;
                    c.carry.push(rec);
                }
                TAG_FOOTER => {
                    let (nr, nd, nc) = (
                        r.u64().map_err(bad)?,
                        r.u64().map_err(bad)?,
                        r.u64().map_err(bad)?,
                    );
                    if (nr, nd, nc) != (rows, c.delta.len() as u64, c.carry.len() as u64) {
                        return Err(corrupt(at, "the footer's counts do not match".into()));
                    }
                    if next != data.len() {
                        return Err(corrupt(next, "data after the footer".into()));
                    }
                    return Ok(c);
                }
                other => return Err(corrupt(at, format!("unknown frame tag {other}"))),
            }
            at = next;
        }
    }
}

/// Every checkpoint number in `dir`, sorted.
pub fn checkpoints(dir: &Path) -> Result<Vec<u64>, RmError> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| RmError::io(dir, "cannot list", e))? {
        let e = e.map_err(|e| RmError::io(dir, "cannot list", e))?;
        if let Some(n) = e.file_name().to_str().and_then(parse_ccp_name) {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Op, Status};

    #[test]
    fn round_trips_and_any_truncation_or_flip_is_refused() {
        let dir = std::env::temp_dir().join(format!("tpmon-ccp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let rec = Record {
            lsn: 3,
            tid: "g|1".into(),
            origin: 1,
            table: "t".into(),
            key: b"k".to_vec(),
            op: Op::Put,
            after: b"v".to_vec(),
            status: Status::Commit,
            gcpn: 4,
            vote: 4,
        };
        let mut c = Checkpoint {
            site: 2,
            n: 4,
            next_lsn: 9,
            created_ms: 1,
            ..Checkpoint::default()
        };
        c.image
            .entry("t".into())
            .or_default()
            .insert(b"k".to_vec(), b"v".to_vec());
        c.delta.push((rec.clone(), true));
        c.carry.push(Record {
            status: Status::Undecided,
            gcpn: 0,
            ..rec
        });
        let path = c.write(&dir, true).expect("write");
        assert_eq!(Checkpoint::read(&path).expect("read"), c);
        assert_eq!(checkpoints(&dir).expect("list"), vec![4]);
        let data = std::fs::read(&path).expect("read");
        for cut in 0..data.len() {
            std::fs::write(&path, &data[..cut]).expect("write");
            assert!(Checkpoint::read(&path).is_err(), "cut at {cut} accepted");
        }
        for i in 0..data.len() {
            let mut d = data.clone();
            d[i] ^= 0x40;
            std::fs::write(&path, &d).expect("write");
            assert!(Checkpoint::read(&path).is_err(), "flip at {i} accepted");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
