//! [`SimStorage`]: an in-memory [`Storage`] that knows, for every file, which bytes
//! were written and which are durable, and for the directory, which entries are
//! durable; it can fail the k-th sync or write, freeze (power loss) after the k-th
//! operation, and produce a *crash image*: what a disk could hold after a power loss.
//!
//! The crash model, per file: the durable bytes survive; of the bytes written since the
//! last successful `sync_data` (past the durable end, or over durable bytes, as when
//! the log writes over zeros it laid down ahead), a seeded choice survives: nothing,
//! a prefix (in file order), all of them, or all of them with some 512-byte sectors
//! missing (such a sector keeps its durable content, or reads back as zeros past the
//! durable end, the way a file system shows blocks whose size update reached the disk
//! but whose data did not), possibly with the size update cut short too. Sectors are
//! atomic. A truncation not yet synced may or may not have happened. Per directory: the
//! entries as of the last successful `sync_dir`, plus a seeded prefix of the changes
//! made since (metadata journals commit in order). The seeds come from [`XorShift64`],
//! so a run replays exactly.
//!
//! Owns simulation only; it must never be used for real data. Faults it injects are
//! the ones the log must survive: failed syncs, failed or short writes, power loss at
//! any operation.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::storage::{Storage, StorageFile};

/// Sector size of the simulated disk: the unit that a crash loses or keeps whole.
pub const SECTOR_BYTES: usize = 512;

/// A tiny deterministic PRNG (xorshift64*), so that a seed replays a run.
#[derive(Debug, Clone)]
pub struct XorShift64(u64);

impl XorShift64 {
    /// A generator from a seed (any value, zero included).
    pub fn new(seed: u64) -> XorShift64 {
        // Zero is a fixed point of xorshift; mix the seed so every seed works.
        XorShift64(seed ^ 0x9E37_79B9_7F4A_7C15 | 1)
    }

    /// The next 64 pseudo-random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
}

#[derive(Debug, Clone, Default)]
struct SimData {
    /// What a read sees: every write so far.
    data: Vec<u8>,
    /// What survives a crash for sure: the content at the last successful sync.
    durable: Vec<u8>,
}

#[derive(Debug, Clone)]
enum DirOp {
    Link(String, u64),
    Unlink(String),
}

#[derive(Debug, Default)]
struct Sim {
    files: HashMap<u64, SimData>,
    next_id: u64,
    names: BTreeMap<String, u64>,
    durable_names: BTreeMap<String, u64>,
    dir_ops: Vec<DirOp>,
    ops: u64,
    freeze_at_op: Option<u64>,
    syncs: u64,
    fail_sync_at: Option<u64>,
    writes: u64,
    fail_write_at: Option<u64>,
    sync_delay: Duration,
}

fn eio(what: &str) -> io::Error {
    io::Error::other(format!("simulated I/O error: {what}"))
}

impl Sim {
    /// Counts a mutating operation; fails it if the disk is frozen (powered off).
    fn op(&mut self, what: &str) -> io::Result<()> {
        self.ops += 1;
        match self.freeze_at_op {
            Some(k) if self.ops > k => Err(eio(&format!("{what} after power loss"))),
            _ => Ok(()),
        }
    }
}

/// The simulated storage; clones share the same disk.
#[derive(Debug, Clone, Default)]
pub struct SimStorage {
    sim: Arc<Mutex<Sim>>,
}

impl SimStorage {
    /// An empty disk.
    pub fn new() -> SimStorage {
        SimStorage::default()
    }

    fn lock(&self) -> MutexGuard<'_, Sim> {
        // A panic in another test thread must not hide this one's result.
        self.sim.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the `k`-th sync from now (1-based; file or directory) fail with EIO;
    /// nothing it covered becomes durable.
    pub fn fail_sync_at(&self, k: u64) {
        let mut s = self.lock();
        s.fail_sync_at = Some(s.syncs + k);
    }

    /// Makes the `k`-th write from now (1-based) store only half its bytes and fail.
    pub fn fail_write_at(&self, k: u64) {
        let mut s = self.lock();
        s.fail_write_at = Some(s.writes + k);
    }

    /// Powers the disk off after `k` more mutating operations (writes, truncations,
    /// syncs, creations, renames, removals): every later one fails and changes nothing.
    pub fn freeze_after_ops(&self, k: u64) {
        let mut s = self.lock();
        s.freeze_at_op = Some(s.ops + k);
    }

    /// Makes every `sync_data` take this long (outside the simulator's lock), so that
    /// concurrent callers form batches as they do on a real disk.
    pub fn set_sync_delay(&self, d: Duration) {
        self.lock().sync_delay = d;
    }

    /// Mutating operations so far.
    pub fn op_count(&self) -> u64 {
        self.lock().ops
    }

    /// Syncs attempted so far.
    pub fn sync_count(&self) -> u64 {
        self.lock().syncs
    }

    /// Writes attempted so far.
    pub fn write_count(&self) -> u64 {
        self.lock().writes
    }

    /// The file names in the directory, sorted.
    pub fn names(&self) -> Vec<String> {
        self.lock().names.keys().cloned().collect()
    }

    /// The current content of a file.
    pub fn file_bytes(&self, name: &str) -> Option<Vec<u8>> {
        let s = self.lock();
        let id = s.names.get(name)?;
        s.files.get(id).map(|f| f.data.clone())
    }

    /// Media corruption: XORs `mask` into the byte at `offset` of `name`, durably.
    /// Returns false if there is no such byte.
    pub fn corrupt(&self, name: &str, offset: usize, mask: u8) -> bool {
        let mut s = self.lock();
        let Some(&id) = s.names.get(name) else {
            return false;
        };
        let Some(f) = s.files.get_mut(&id) else {
            return false;
        };
        let mut hit = false;
        for buf in [&mut f.data, &mut f.durable] {
            if let Some(b) = buf.get_mut(offset) {
                *b ^= mask;
                hit = true;
            }
        }
        hit
    }

    /// Replaces (or creates) a file with `bytes`, durably; for tests that craft files.
    pub fn put_file(&self, name: &str, bytes: &[u8]) {
        let mut s = self.lock();
        let id = s.next_id;
        s.next_id += 1;
        s.files.insert(
            id,
            SimData {
                data: bytes.to_vec(),
                durable: bytes.to_vec(),
            },
        );
        s.names.insert(name.to_string(), id);
        s.durable_names.insert(name.to_string(), id);
    }

    /// What the disk could hold after a power loss now, chosen by `seed` (see the module
    /// header). The image is a fresh disk on which everything is durable.
    pub fn crash_image(&self, seed: u64) -> SimStorage {
        let s = self.lock();
        let mut rng = XorShift64::new(seed);
        let mut names = s.durable_names.clone();
        let keep = rng.below(s.dir_ops.len() as u64 + 1) as usize;
        for op in &s.dir_ops[..keep] {
            match op {
                DirOp::Link(n, id) => {
                    names.insert(n.clone(), *id);
                }
                DirOp::Unlink(n) => {
                    names.remove(n);
                }
            }
        }
        let mut image = Sim::default();
        let mut contents: HashMap<u64, Vec<u8>> = HashMap::new();
        for (name, id) in &names {
            let bytes = match contents.get(id) {
                Some(b) => b.clone(),
                None => {
                    let f = s.files.get(id).cloned().unwrap_or_default();
                    let b = crash_content(&f, &mut rng);
                    contents.insert(*id, b.clone());
                    b
                }
            };
            image.files.insert(
                *id,
                SimData {
                    data: bytes.clone(),
                    durable: bytes,
                },
            );
            image.names.insert(name.clone(), *id);
        }
        image.durable_names = image.names.clone();
        image.next_id = s.next_id;
        SimStorage {
            sim: Arc::new(Mutex::new(image)),
        }
    }
}

/// What one file could hold after a crash.
fn crash_content(f: &SimData, rng: &mut XorShift64) -> Vec<u8> {
    let (old, new) = (&f.durable, &f.data);
    if old == new {
        return old.clone();
    }
    if new.len() < old.len() {
        // A truncation that was not synced: it happened or not.
        return if rng.below(2) == 0 {
            old.clone()
        } else {
            new.clone()
        };
    }
    // Writes since the last sync: over durable bytes (where `new` differs from `old`),
    // after them (the part of `new` past `old`), or both.
    let first = old
        .iter()
        .zip(new.iter())
        .position(|(a, b)| a != b)
        .unwrap_or(old.len());
    match rng.below(5) {
        0 => old.clone(),
        1 => new.clone(),
        2 => {
            // The writes reached the disk in order, up to a point.
            let keep = first + rng.below((new.len() - first) as u64 + 1) as usize;
            let mut out = new[..keep].to_vec();
            if keep < old.len() {
                out.extend_from_slice(&old[keep..]);
            }
            out
        }
        mode => {
            // Sectors persisted in any order: each changed sector may hold its old
            // content (zeros past the old end).
            let mut out = new.clone();
            let first_sector = first / SECTOR_BYTES;
            let last_sector = new.len().div_ceil(SECTOR_BYTES);
            for sector in first_sector..last_sector {
                if rng.below(3) == 0 {
                    let from = (sector * SECTOR_BYTES).max(first);
                    let to = ((sector + 1) * SECTOR_BYTES).min(out.len());
                    for (i, b) in out.iter_mut().enumerate().take(to).skip(from) {
                        *b = old.get(i).copied().unwrap_or(0);
                    }
                }
            }
            if mode == 4 && new.len() > old.len() {
                // And the size update reached the disk only in part.
                let keep = rng.below((new.len() - old.len()) as u64 + 1) as usize;
                out.truncate(old.len() + keep);
            }
            out
        }
    }
}

impl Storage for SimStorage {
    type File = SimFile;

    fn path_of(&self, name: &str) -> PathBuf {
        PathBuf::from("sim:").join(name)
    }

    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.names())
    }

    fn create_new(&self, name: &str) -> io::Result<SimFile> {
        let mut s = self.lock();
        s.op("create")?;
        if s.names.contains_key(name) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        let id = s.next_id;
        s.next_id += 1;
        s.files.insert(id, SimData::default());
        s.names.insert(name.to_string(), id);
        s.dir_ops.push(DirOp::Link(name.to_string(), id));
        Ok(SimFile {
            sim: self.clone(),
            id,
        })
    }

    fn open(&self, name: &str) -> io::Result<SimFile> {
        let s = self.lock();
        let id = *s
            .names
            .get(name)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        Ok(SimFile {
            sim: self.clone(),
            id,
        })
    }

    fn rename_noreplace(&self, from: &str, to: &str) -> io::Result<()> {
        let mut s = self.lock();
        s.op("rename")?;
        if s.names.contains_key(to) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        let id = s
            .names
            .remove(from)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        s.names.insert(to.to_string(), id);
        // As FileStorage does it: link, then unlink.
        s.dir_ops.push(DirOp::Link(to.to_string(), id));
        s.dir_ops.push(DirOp::Unlink(from.to_string()));
        Ok(())
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        let mut s = self.lock();
        s.op("remove")?;
        s.names
            .remove(name)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        s.dir_ops.push(DirOp::Unlink(name.to_string()));
        Ok(())
    }

    fn sync_dir(&self) -> io::Result<()> {
        let mut s = self.lock();
        s.op("fsync directory")?;
        s.syncs += 1;
        if s.fail_sync_at == Some(s.syncs) {
            return Err(eio("fsync directory"));
        }
        s.durable_names = s.names.clone();
        s.dir_ops.clear();
        Ok(())
    }
}

/// A file of [`SimStorage`].
#[derive(Debug)]
pub struct SimFile {
    sim: SimStorage,
    id: u64,
}

impl SimFile {
    fn with<T>(&self, f: impl FnOnce(&mut Sim, u64) -> io::Result<T>) -> io::Result<T> {
        let mut s = self.sim.lock();
        f(&mut s, self.id)
    }
}

fn file(s: &mut Sim, id: u64) -> io::Result<&mut SimData> {
    s.files
        .get_mut(&id)
        .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
}

impl StorageFile for SimFile {
    fn size(&self) -> io::Result<u64> {
        self.with(|s, id| Ok(file(s, id)?.data.len() as u64))
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.with(|s, id| {
            let f = file(s, id)?;
            let start = usize::try_from(offset).map_err(|_| eio("offset"))?;
            let src = f
                .data
                .get(start..start + buf.len())
                .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
            buf.copy_from_slice(src);
            Ok(())
        })
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.with(|s, id| {
            s.op("write")?;
            s.writes += 1;
            let short = s.fail_write_at == Some(s.writes);
            let data = if short { &data[..data.len() / 2] } else { data };
            let f = file(s, id)?;
            let start = usize::try_from(offset).map_err(|_| eio("offset"))?;
            if f.data.len() < start + data.len() {
                f.data.resize(start + data.len(), 0);
            }
            f.data[start..start + data.len()].copy_from_slice(data);
            if short {
                Err(eio("write"))
            } else {
                Ok(())
            }
        })
    }

    fn truncate(&self, len: u64) -> io::Result<()> {
        self.with(|s, id| {
            s.op("truncate")?;
            let len = usize::try_from(len).map_err(|_| eio("length"))?;
            file(s, id)?.data.resize(len, 0);
            Ok(())
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        let delay = self.with(|s, _| Ok(s.sync_delay))?;
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        self.with(|s, id| {
            s.op("fdatasync")?;
            s.syncs += 1;
            if s.fail_sync_at == Some(s.syncs) {
                return Err(eio("fdatasync"));
            }
            let f = file(s, id)?;
            f.durable = f.data.clone();
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(s: &SimStorage, name: &str, durable: &[u8], more: &[u8]) -> SimFile {
        let f = s.create_new(name).expect("create");
        f.write_at(0, durable).expect("write");
        f.sync_data().expect("sync");
        f.write_at(durable.len() as u64, more).expect("write");
        f
    }

    #[test]
    fn unsynced_directory_entries_may_vanish() {
        let s = SimStorage::new();
        let _f = written(&s, "a", b"x", b"");
        let mut seen_missing = false;
        let mut seen_present = false;
        for seed in 0..64 {
            match s.crash_image(seed).file_bytes("a") {
                None => seen_missing = true,
                Some(b) => {
                    assert_eq!(b, b"x");
                    seen_present = true;
                }
            }
        }
        assert!(seen_missing && seen_present);
        s.sync_dir().expect("sync dir");
        for seed in 0..16 {
            assert_eq!(s.crash_image(seed).file_bytes("a"), Some(b"x".to_vec()));
        }
    }

    #[test]
    fn crash_images_keep_durable_bytes_and_vary_the_rest() {
        let s = SimStorage::new();
        let durable = vec![1u8; 700];
        let more = vec![2u8; 3000];
        let _f = written(&s, "a", &durable, &more);
        s.sync_dir().expect("sync dir");
        let mut lens = std::collections::BTreeSet::new();
        let mut saw_hole = false;
        for seed in 0..200 {
            let b = s.crash_image(seed).file_bytes("a").expect("file");
            assert_eq!(&b[..700], &durable[..], "durable bytes survive");
            assert!(b.len() <= 3700);
            assert!(b[700..].iter().all(|&x| x == 2 || x == 0));
            saw_hole |= b[700..].contains(&0);
            lens.insert(b.len());
        }
        assert!(saw_hole);
        assert!(lens.contains(&700) && lens.contains(&3700) && lens.len() > 3);
        // The same seed gives the same image.
        assert_eq!(
            s.crash_image(7).file_bytes("a"),
            s.crash_image(7).file_bytes("a")
        );
    }

    #[test]
    fn failed_syncs_and_freezes_change_nothing_durable() {
        let s = SimStorage::new();
        let f = written(&s, "a", b"abc", b"def");
        s.sync_dir().expect("sync dir");
        s.fail_sync_at(1);
        assert!(f.sync_data().is_err());
        f.sync_data().expect("a later sync works");
        s.freeze_after_ops(1);
        f.write_at(6, b"g")
            .expect("the last write before power loss");
        assert!(f.write_at(7, b"h").is_err());
        assert!(f.sync_data().is_err());
        assert_eq!(s.file_bytes("a"), Some(b"abcdefg".to_vec()));
        for seed in 0..32 {
            let b = s.crash_image(seed).file_bytes("a").expect("file");
            assert!(b == b"abcdef" || b == b"abcdefg", "{b:?}");
        }
    }

    #[test]
    fn short_writes_fail() {
        let s = SimStorage::new();
        let f = s.create_new("a").expect("create");
        s.fail_write_at(1);
        assert!(f.write_at(0, b"abcd").is_err());
        assert_eq!(s.file_bytes("a"), Some(b"ab".to_vec()));
    }
}
