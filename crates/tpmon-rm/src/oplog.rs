//! The operation log on disk: files `log.<GEN>` (one generation per checkpoint
//! interval), checksummed frames appended with group commit.
//!
//! Owns appending, group commit (concurrent callers share one `fdatasync`), switching
//! to the next generation at a checkpoint, and reading a generation back with torn
//! tail detection. It must not interpret what it stores beyond [`LogEntry`] decoding,
//! and must never report a sequence durable before its `fdatasync` returned.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::codec::{frame, next_frame, FrameAt};
use crate::error::RmError;
use crate::record::LogEntry;

/// The file name of log generation `gen`.
pub fn log_name(gen: u64) -> String {
    format!("log.{gen:020}")
}

/// Parses [`log_name`]'s form.
pub fn parse_log_name(name: &str) -> Option<u64> {
    name.strip_prefix("log.")?.parse().ok()
}

/// Opens (creating) a directory's handle and fsyncs it, so that a create, rename or
/// remove inside it is durable.
pub fn sync_dir(dir: &Path) -> Result<(), RmError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| RmError::io(dir, "cannot sync the directory", e))
}

/// Makes the path to a site's directory durable: its entry in its parent, and so on to
/// the root (`create_dir_all` may have made several levels, the daemon others, none
/// fsynced); else a power failure could take the site's files with their directory and
/// the next boot would start the site empty. Ancestors this process may not open are
/// left to whoever made them.
pub fn sync_path(dir: &Path) -> Result<(), RmError> {
    let abs = dir
        .canonicalize()
        .map_err(|e| RmError::io(dir, "cannot resolve the directory", e))?;
    for (level, d) in abs.ancestors().enumerate() {
        match File::open(d).and_then(|f| f.sync_all()) {
            Ok(()) => {}
            Err(e) if level >= 1 && e.kind() == std::io::ErrorKind::PermissionDenied => {}
            Err(e) => return Err(RmError::io(d, "cannot sync the directory", e)),
        }
    }
    Ok(())
}

struct Inner {
    gen: u64,
    file: Arc<File>,
    path: PathBuf,
    pending: Vec<u8>,
    /// Sequence number of the last entry appended.
    appended: u64,
    /// Sequence number of the last entry known durable.
    durable: u64,
    flushing: bool,
    poisoned: Option<String>,
    next_lsn: u64,
}

/// The site's operation log.
pub struct OpLog {
    dir: PathBuf,
    sync: bool,
    inner: Mutex<Inner>,
    cv: Condvar,
}

/// What reading one generation found.
pub struct ReadLog {
    /// The entries, in order.
    pub entries: Vec<LogEntry>,
    /// Bytes of valid frames (the rest, if any, is a torn tail).
    pub valid_len: u64,
    /// Set when a torn tail was found: where and what.
    pub torn: Option<(u64, &'static str)>,
}

/// Reads generation file `path`. A short or bad frame that ends the file is a torn
/// tail (never acknowledged: appends are acknowledged after their fdatasync); a bad
/// frame followed by more data is corruption, refused with the offset.
pub fn read_log(path: &Path) -> Result<ReadLog, RmError> {
    let data = std::fs::read(path).map_err(|e| RmError::io(path, "cannot read", e))?;
    let mut entries = Vec::new();
    let mut at = 0usize;
    loop {
        let what = match next_frame(&data, at) {
            FrameAt::Frame(payload, next) => match LogEntry::decode(payload) {
                Ok(e) => {
                    entries.push(e);
                    at = next;
                    continue;
                }
                Err(_) => "a frame that does not decode",
            },
            FrameAt::End => {
                return Ok(ReadLog {
                    entries,
                    valid_len: at as u64,
                    torn: None,
                })
            }
            FrameAt::Torn => "incomplete frame",
            FrameAt::Bad(what) => what,
        };
        // Appends are acknowledged only after their fdatasync, so an append torn by a
        // crash can only be followed by garbage (or zeros the file system left): with
        // no valid frame after it, it is a torn tail. A valid frame after it means
        // damage in the middle of the log: refused, never skipped.
        if crate::codec::valid_frame_after(&data, at) {
            return Err(RmError::Corrupt {
                path: path.into(),
                offset: at as u64,
                what: format!("{what}, followed by valid records"),
            });
        }
        return Ok(ReadLog {
            entries,
            valid_len: at as u64,
            torn: Some((at as u64, what)),
        });
    }
}

impl OpLog {
    /// Opens generation `gen` in `dir` for appending (creating it; a torn tail found
    /// by [`read_log`] must have been cut by the caller). LSNs continue at `next_lsn`.
    /// `sync = false` skips fdatasync (simulations only).
    pub fn open(dir: &Path, gen: u64, next_lsn: u64, sync: bool) -> Result<OpLog, RmError> {
        let (file, path) = open_gen(dir, gen, sync)?;
        Ok(OpLog {
            dir: dir.to_path_buf(),
            sync,
            inner: Mutex::new(Inner {
                gen,
                file: Arc::new(file),
                path,
                pending: Vec::new(),
                appended: 0,
                durable: 0,
                flushing: false,
                poisoned: None,
                next_lsn,
            }),
            cv: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The active generation.
    pub fn generation(&self) -> u64 {
        self.lock().gen
    }

    /// Appends the entry `build` makes from the next free LSN (it returns the entry
    /// and how many LSNs it used). Returns the entry's sequence number for
    /// [`OpLog::sync_to`]. Nothing is durable until then.
    pub fn append(&self, build: impl FnOnce(u64) -> (LogEntry, u64)) -> Result<u64, RmError> {
        let mut g = self.lock();
        if let Some(p) = &g.poisoned {
            return Err(RmError::Poisoned(p.clone()));
        }
        let (entry, used) = build(g.next_lsn);
        g.next_lsn += used.max(1);
        let bytes = frame(&entry.encode());
        g.pending.extend_from_slice(&bytes);
        g.appended += 1;
        Ok(g.appended)
    }

    /// Returns once entry `seq` is durable: the first waiter writes and syncs what is
    /// pending for everyone (group commit).
    pub fn sync_to(&self, seq: u64) -> Result<(), RmError> {
        let mut g = self.lock();
        loop {
            if let Some(p) = &g.poisoned {
                return Err(RmError::Poisoned(p.clone()));
            }
            if g.durable >= seq {
                return Ok(());
            }
            if g.flushing {
                g = self.cv.wait(g).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            g.flushing = true;
            let buf = std::mem::take(&mut g.pending);
            let upto = g.appended;
            let file = g.file.clone();
            let path = g.path.clone();
            drop(g);
            let r = (&*file).write_all(&buf).and_then(|_| {
                if self.sync {
                    file.sync_data()
                } else {
                    Ok(())
                }
            });
            g = self.lock();
            g.flushing = false;
            match r {
                Ok(()) => g.durable = upto,
                Err(e) => {
                    g.poisoned = Some(format!("{}: {e}", path.display()));
                }
            }
            self.cv.notify_all();
        }
    }

    /// Writes what is pending without waiting for anyone in particular (used for
    /// entries that need not be durable before an answer, like rollbacks).
    pub fn flush(&self) -> Result<(), RmError> {
        let seq = self.lock().appended;
        self.sync_to(seq)
    }

    /// Starts generation `gen`: later flushes go to its file. Waits for a flush in
    /// progress, so that the previous generations' files are complete on return.
    pub fn switch(&self, gen: u64) -> Result<(), RmError> {
        let (file, path) = open_gen(&self.dir, gen, self.sync)?;
        let mut g = self.lock();
        while g.flushing {
            g = self.cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        g.gen = gen;
        g.file = Arc::new(file);
        g.path = path;
        Ok(())
    }

    /// The next LSN to be used.
    pub fn next_lsn(&self) -> u64 {
        self.lock().next_lsn
    }
}

fn open_gen(dir: &Path, gen: u64, sync: bool) -> Result<(File, PathBuf), RmError> {
    let path = dir.join(log_name(gen));
    let existed = path.exists();
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| RmError::io(&path, "cannot open the operation log", e))?;
    if !existed && sync {
        sync_dir(dir)?;
    }
    Ok((file, path))
}

/// Creates the (empty) file of generation `gen` if missing, without syncing the
/// directory: the caller syncs it with its next rename.
pub fn precreate(dir: &Path, gen: u64) -> Result<(), RmError> {
    let path = dir.join(log_name(gen));
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map(|_| ())
        .map_err(|e| RmError::io(&path, "cannot create the next operation log", e))
}

/// Every log generation in `dir`, sorted.
pub fn generations(dir: &Path) -> Result<Vec<u64>, RmError> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| RmError::io(dir, "cannot list", e))? {
        let e = e.map_err(|e| RmError::io(dir, "cannot list", e))?;
        if let Some(g) = e.file_name().to_str().and_then(parse_log_name) {
            out.push(g);
        }
    }
    out.sort_unstable();
    Ok(out)
}
