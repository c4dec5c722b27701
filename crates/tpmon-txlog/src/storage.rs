//! The storage the log runs on: a [`Storage`] trait (one directory of files) and the
//! real implementation, [`FileStorage`], over `std::fs` with `fdatasync` and directory
//! `fsync`. The simulated, crash-image-producing implementation is in `sim`.
//!
//! Owns nothing but the mapping from the log's few storage operations to system calls.
//! It must never retry a failed `fdatasync`: after a failed sync the kernel may have
//! dropped the dirty pages and a second call can return success for data that is gone,
//! so every error is returned to the log, which poisons itself. Faults: every system
//! call error is returned as an `io::Error`, never a panic.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// A directory of files, as the log needs it. Names are plain file names (no `/`).
pub trait Storage: Send + Sync + 'static {
    /// An open file of this storage.
    type File: StorageFile;

    /// The path of `name` in this storage, for messages (`""` names the directory).
    fn path_of(&self, name: &str) -> PathBuf;
    /// Names of the files in the directory, in no particular order.
    fn list(&self) -> io::Result<Vec<String>>;
    /// Creates `name`, failing with `AlreadyExists` if it exists; opened read-write.
    fn create_new(&self, name: &str) -> io::Result<Self::File>;
    /// Opens an existing file read-write.
    fn open(&self, name: &str) -> io::Result<Self::File>;
    /// Renames `from` to `to`, failing with `AlreadyExists` (and changing nothing) if
    /// `to` exists. Not durable until [`Storage::sync_dir`].
    fn rename_noreplace(&self, from: &str, to: &str) -> io::Result<()>;
    /// Removes `name`. Not durable until [`Storage::sync_dir`].
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Makes the directory's entries (creations, renames, removals) durable.
    fn sync_dir(&self) -> io::Result<()>;
}

/// An open file: positioned reads and writes, truncation and data sync.
pub trait StorageFile: Send + Sync + 'static {
    /// The file's size in bytes.
    fn size(&self) -> io::Result<u64>;
    /// Fills `buf` from `offset`; fails if the file ends first.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Writes all of `data` at `offset` (growing the file as needed).
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Cuts the file to `len` bytes.
    fn truncate(&self, len: u64) -> io::Result<()>;
    /// `fdatasync`: the data written so far (and the size) are durable when it returns Ok.
    fn sync_data(&self) -> io::Result<()>;
}

/// The real storage: a directory of the local file system.
#[derive(Debug)]
pub struct FileStorage {
    dir: PathBuf,
    /// The directory, open for `fsync` and held with an exclusive `flock` so that two
    /// processes never append to one log.
    handle: File,
}

impl FileStorage {
    /// Opens `dir` (creating it, durably, if missing) and takes an exclusive lock on
    /// it; fails with `WouldBlock` if another handle holds the lock.
    pub fn new(dir: impl AsRef<Path>) -> io::Result<FileStorage> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir)?;
        sync_path(&dir)?;
        let handle = File::open(&dir)?;
        // SAFETY: flock on a descriptor we own; no memory is passed.
        let rc = unsafe { libc::flock(handle.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(FileStorage { dir, handle })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Makes the path to `dir` durable: `dir`'s entry in its parent, the parent's in its
/// own, and so on to the root. `create_dir_all` may have made several levels at once,
/// and an earlier step (the daemon's run directory) may have made others without an
/// fsync; until each level's entry is on disk, a power failure can take the whole log
/// with it, and the next boot would find no log and start an empty one. Directories
/// this process may not open (an ancestor with search permission only) are left to
/// whoever made them: nothing else can be done for them from here.
fn sync_path(dir: &Path) -> io::Result<()> {
    let dir = dir.canonicalize()?;
    for (level, d) in dir.ancestors().enumerate() {
        match File::open(d).and_then(|f| f.sync_all()) {
            Ok(()) => {}
            // The log's own directory is opened anyway; any other failure is real.
            Err(e) if level >= 1 && e.kind() == io::ErrorKind::PermissionDenied => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Storage for FileStorage {
    type File = RealFile;

    fn path_of(&self, name: &str) -> PathBuf {
        if name.is_empty() {
            self.dir.clone()
        } else {
            self.dir.join(name)
        }
    }

    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for e in std::fs::read_dir(&self.dir)? {
            let e = e?;
            if let Some(n) = e.file_name().to_str() {
                names.push(n.to_string());
            }
        }
        Ok(names)
    }

    fn create_new(&self, name: &str) -> io::Result<RealFile> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(self.dir.join(name))?;
        Ok(RealFile(f))
    }

    fn open(&self, name: &str) -> io::Result<RealFile> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.dir.join(name))?;
        Ok(RealFile(f))
    }

    fn rename_noreplace(&self, from: &str, to: &str) -> io::Result<()> {
        // link(2) fails with EEXIST instead of replacing, on every POSIX file system;
        // a crash between link and unlink leaves both names, and recovery deletes the
        // `.tmp` one.
        std::fs::hard_link(self.dir.join(from), self.dir.join(to))?;
        std::fs::remove_file(self.dir.join(from))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        std::fs::remove_file(self.dir.join(name))
    }

    fn sync_dir(&self) -> io::Result<()> {
        self.handle.sync_all()
    }
}

/// A file of [`FileStorage`].
#[derive(Debug)]
pub struct RealFile(File);

impl StorageFile for RealFile {
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.0.write_all_at(data, offset)
    }

    fn truncate(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        // SAFETY: fdatasync on a descriptor we own; no memory is passed.
        let rc = unsafe { libc::fdatasync(self.0.as_raw_fd()) };
        if rc == 0 {
            Ok(())
        } else {
            // Not retried, not even on EINTR: Linux's fdatasync does not return EINTR,
            // and after any other error a retry could report success for lost data.
            Err(io::Error::last_os_error())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_dir::TestDir;

    #[test]
    fn file_storage_does_what_the_trait_says() {
        let dir = TestDir::new("storage");
        let s = FileStorage::new(dir.path()).expect("open dir");
        let f = s.create_new("a").expect("create");
        assert_eq!(
            s.create_new("a").map(|_| ()).map_err(|e| e.kind()),
            Err(io::ErrorKind::AlreadyExists)
        );
        f.write_at(3, b"xyz").expect("write");
        assert_eq!(f.size().expect("len"), 6);
        let mut buf = [9u8; 6];
        f.read_at(0, &mut buf).expect("read");
        assert_eq!(&buf, b"\0\0\0xyz");
        f.sync_data().expect("sync");
        f.truncate(4).expect("truncate");
        assert!(f.read_at(0, &mut buf).is_err());
        s.create_new("b").expect("create b");
        assert_eq!(
            s.rename_noreplace("a", "b").map_err(|e| e.kind()),
            Err(io::ErrorKind::AlreadyExists)
        );
        s.rename_noreplace("a", "c").expect("rename");
        s.remove("b").expect("remove");
        s.sync_dir().expect("sync dir");
        let mut names = s.list().expect("list");
        names.sort();
        assert_eq!(names, vec!["c".to_string()]);
        // A second handle on the same directory is refused while the first lives.
        assert!(FileStorage::new(dir.path()).is_err());
        drop(s);
        assert!(FileStorage::new(dir.path()).is_ok());
    }

    #[test]
    fn missing_levels_are_created() {
        let dir = TestDir::new("storage-levels");
        let deep = dir.path().join("a").join("b").join("log");
        let s = FileStorage::new(&deep).expect("open a path three levels short");
        assert!(deep.is_dir());
        s.create_new("x").expect("usable");
    }
}
