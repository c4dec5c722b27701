//! Group commit: many threads' changes share one write and one fdatasync.
//!
//! A caller encodes its record, then, under the commit mutex, checks it against the
//! *pending view* (the durable index plus the changes not yet durable), takes the next
//! lsn and appends the record to the pending buffer. If no flush is running it becomes
//! the flusher: it takes the whole pending buffer, writes it with one positioned write
//! at the end of the active segment, fdatasyncs, applies the batch to the index in lsn
//! order, publishes the new durable lsn and wakes the batch's callers. Meanwhile new
//! records accumulate for the next batch; when the flush ends, one of their callers is
//! woken to flush them. Waiting callers are parked threads registered with their
//! batch: a finished flush unparks exactly its own callers (they see the durable lsn in
//! an atomic and return without touching the mutex) plus one flusher for the next
//! batch. On a machine with few cores, waking threads into a contended mutex costs
//! more than the fdatasync itself, so the mutex is taken once per change, and the
//! segment is released before the wake-ups so the next write overlaps them.
//!
//! Owns the commit protocol, the pending view, the active segment and its rotation. It
//! must never acknowledge a change before the fdatasync covering it returned Ok, never
//! make a change visible to readers before it is durable, never issue a write before
//! the previous write's fdatasync returned (recovery's decision table relies on it: one
//! flusher at a time, and each record's batch_pos says where its write began), never
//! retry a failed
//! write or sync: the first I/O error poisons the log (every later change fails with
//! [`LogError::Poisoned`]), because after a failed fdatasync the kernel may have
//! dropped the dirty pages and only recovery from the disk can tell what is there.
//! Faults it survives: I/O errors (poison, no hang: every waiter is woken and fails),
//! a full log (an error, never a wait), a full pending buffer (callers wait for the
//! flush in progress, bounded by `batch_bytes_max`).

use std::collections::HashMap;
use std::mem;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::{self, Thread};

use crate::error::LogError;
use crate::index::{apply, Index};
use crate::log::{GroupCommit, LogStats, Options};
use crate::record::{encode_payload, frame, set_batch_pos, Lsn, Op, RECORD_HEADER_BYTES};
use crate::segment::{write_segment, LogIdentity, SegmentHeader, HEADER_BLOCK_BYTES};
use crate::storage::{Storage, StorageFile};

/// The segment being appended to; only the flusher touches it.
pub(crate) struct Writer<F> {
    pub(crate) file: F,
    pub(crate) name: String,
    pub(crate) seq: u64,
    pub(crate) log_id: u128,
    pub(crate) identity: LogIdentity,
    /// Where the next batch goes: the end of the valid records.
    pub(crate) end: u64,
    /// The file's size: from `end` to here the file holds zeros laid down ahead
    /// (or the zero tail recovery found).
    pub(crate) allocated: u64,
    /// [`Options::preallocate_bytes`].
    pub(crate) preallocate: u64,
    /// Bytes of the snapshot (and its marker) at the start of the segment.
    pub(crate) snapshot_bytes: u64,
}

impl<F: StorageFile> Writer<F> {
    /// Writes `buf` at the end and makes it durable.
    fn append<S: Storage<File = F>>(&mut self, storage: &S, buf: &[u8]) -> Result<(), LogError> {
        let io = |op: &'static str, offset: u64| {
            let file = storage.path_of(&self.name);
            move |source| LogError::Io {
                file,
                offset,
                op,
                source,
            }
        };
        self.file
            .write_at(self.end, buf)
            .map_err(io("write", self.end))?;
        let end = self.end + buf.len() as u64;
        // Running short of zeros ahead: lay the next stretch down now, covered by the
        // same fdatasync, so that the following batches overwrite space that is
        // already on disk (their fdatasync then need not touch the file's metadata).
        if self.preallocate > 0 && self.allocated < end + self.preallocate / 4 {
            let from = self.allocated.max(end);
            let to = (end + self.preallocate).next_multiple_of(4096);
            match write_zeros(&self.file, from, to) {
                Ok(()) => self.allocated = to,
                // Only space ahead failed (a full disk, say): the batch's own write
                // succeeded and its fdatasync follows, so the log carries on without
                // preallocation (zeros that did get written are harmless); a disk
                // that is really full fails the next write, which poisons the log.
                Err(_) => self.preallocate = 0,
            }
        }
        self.file.sync_data().map_err(io("fdatasync", self.end))?;
        self.end = end;
        self.allocated = self.allocated.max(end);
        Ok(())
    }

    /// Rotation is due when the segment passed its size limit and the records since the
    /// snapshot are at least as large as the snapshot, so that a log with many live
    /// entries does not rewrite its snapshot at every flush.
    fn rotation_due(&self, segment_bytes_max: u64) -> bool {
        let body = self
            .end
            .saturating_sub(HEADER_BLOCK_BYTES as u64 + self.snapshot_bytes);
        self.end > segment_bytes_max && body >= self.snapshot_bytes
    }

    /// Starts segment `seq + 1` with a snapshot of `index` (the state at `durable`),
    /// then deletes the current one. The order (new segment durable under its name and
    /// in the directory, then the old one removed) is what recovery relies on.
    fn rotate<S: Storage<File = F>>(
        &mut self,
        storage: &S,
        index: &Index,
        durable: Lsn,
    ) -> Result<(), LogError> {
        let header = SegmentHeader {
            log_id: self.log_id,
            seq: self.seq + 1,
            first_lsn: durable + 1,
            identity: self.identity.clone(),
        };
        let new = write_segment(storage, &header, index.values())?;
        let old = mem::replace(&mut self.name, new.name);
        self.file = new.file;
        self.seq = header.seq;
        self.end = new.end;
        self.allocated = new.end;
        self.snapshot_bytes = new.snapshot_bytes;
        storage.remove(&old).map_err(|source| LogError::Io {
            file: storage.path_of(&old),
            offset: 0,
            op: "remove",
            source,
        })?;
        storage.sync_dir().map_err(|source| LogError::Io {
            file: storage.path_of(""),
            offset: 0,
            op: "fsync directory",
            source,
        })
    }
}

/// Writes zeros over `from..to` of `file`.
fn write_zeros<F: StorageFile>(file: &F, from: u64, to: u64) -> std::io::Result<()> {
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    let mut at = from;
    while at < to {
        let n = (to - at).min(ZEROS.len() as u64) as usize;
        file.write_at(at, &ZEROS[..n])?;
        at += n as u64;
    }
    Ok(())
}

/// State under the commit mutex.
struct Commit {
    next_lsn: Lsn,
    durable_lsn: Lsn,
    /// Encoded records not yet taken by a flusher, in lsn order.
    pending: Vec<u8>,
    /// The same records, decoded, to apply once durable.
    pending_ops: Vec<Op>,
    /// The threads waiting for the pending records (each parks until unparked).
    pending_waiters: Vec<Thread>,
    /// A cleared buffer kept for the next batch, to avoid an allocation per flush.
    spare: Vec<u8>,
    flushing: bool,
    poisoned: Option<String>,
    /// The pending view: presence and lsn of the last non-durable change per gtrid.
    delta: HashMap<Vec<u8>, (bool, Lsn)>,
    /// Entries in the pending view.
    view_len: usize,
    /// Callers waiting on `space`, so that a flush wakes it only when someone waits.
    space_waiters: usize,
    /// Callers (not lazy changes) whose records are in the pending batch.
    batch_submitters: usize,
    /// Callers the last flush served plus those who arrived while it ran: how many
    /// are committing side by side. A flusher with fewer in its batch waits up to
    /// [`Options::commit_delay`] for the others (see [`Engine::flush`]).
    expected: usize,
    /// A flusher is waiting (on `gather`) for more callers before it writes.
    gathering: bool,
}

/// The group-commit engine behind [`crate::TxLog`].
pub(crate) struct Engine<S: Storage> {
    pub(crate) storage: S,
    pub(crate) options: Options,
    commit: Mutex<Commit>,
    /// `Commit::durable_lsn`, readable without the mutex; stored (Release) after the
    /// index holds the batch, so a caller that sees its lsn here sees its change.
    durable: AtomicU64,
    /// Set (Release) when `Commit::poisoned` is.
    poisoned: AtomicBool,
    /// Callers waiting for room in the pending buffer.
    space: Condvar,
    /// A gathering flusher waits here until enough callers joined its batch.
    gather: Condvar,
    index: RwLock<Index>,
    writer: Mutex<Writer<S::File>>,
    flushes: AtomicU64,
    records: AtomicU64,
    bytes: AtomicU64,
    rotations: AtomicU64,
    /// Flushes that waited for more callers (commit delay).
    delayed: AtomicU64,
}

// Poisoned std locks (a panic while held) must not turn into panics here: the guarded
// data is only mutated in ways that keep it consistent, and I/O poisoning is tracked
// separately in `Commit::poisoned`.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn poisoned_error(c: &Commit) -> LogError {
    LogError::Poisoned {
        cause: c.poisoned.clone().unwrap_or_default(),
    }
}

impl<S: Storage> Engine<S> {
    pub(crate) fn new(
        storage: S,
        options: Options,
        writer: Writer<S::File>,
        index: Index,
        last_lsn: Lsn,
    ) -> Engine<S> {
        Engine {
            storage,
            options,
            commit: Mutex::new(Commit {
                next_lsn: last_lsn + 1,
                durable_lsn: last_lsn,
                pending: Vec::new(),
                pending_ops: Vec::new(),
                pending_waiters: Vec::new(),
                spare: Vec::new(),
                flushing: false,
                poisoned: None,
                delta: HashMap::new(),
                view_len: index.len(),
                space_waiters: 0,
                batch_submitters: 0,
                expected: 1,
                gathering: false,
            }),
            durable: AtomicU64::new(last_lsn),
            poisoned: AtomicBool::new(false),
            space: Condvar::new(),
            gather: Condvar::new(),
            index: RwLock::new(index),
            writer: Mutex::new(writer),
            flushes: AtomicU64::new(0),
            records: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            rotations: AtomicU64::new(0),
            delayed: AtomicU64::new(0),
        }
    }

    pub(crate) fn read_index(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_index(&self) -> RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn durable_lsn(&self) -> Lsn {
        self.durable.load(Ordering::Acquire)
    }

    pub(crate) fn poisoned(&self) -> Option<String> {
        lock(&self.commit).poisoned.clone()
    }

    pub(crate) fn stats(&self) -> LogStats {
        LogStats {
            flushes: self.flushes.load(Ordering::Relaxed),
            records: self.records.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            rotations: self.rotations.load(Ordering::Relaxed),
            delayed: self.delayed.load(Ordering::Relaxed),
        }
    }

    /// Makes `op` durable; returns its lsn once fdatasync covering it returned Ok.
    pub(crate) fn submit(&self, op: Op) -> Result<Lsn, LogError> {
        // Encoding needs no lock; only the lsn and the checksum are added under it.
        let mut payload = Vec::with_capacity(128);
        encode_payload(&op, &mut payload);
        let record_bytes = RECORD_HEADER_BYTES + payload.len();
        let mut c = lock(&self.commit);
        if self.options.group_commit == GroupCommit::Off {
            // batch_pos stays 0: every record is a write of its own.
            return self.submit_alone(c, op, &payload);
        }
        // Room in the pending buffer. A record may exceed the limit only if it is alone
        // in the batch (the options keep batch_bytes_max >= RECORD_BYTES_MAX).
        loop {
            if c.poisoned.is_some() {
                return Err(poisoned_error(&c));
            }
            if c.pending.is_empty()
                || c.pending.len() + record_bytes <= self.options.batch_bytes_max
            {
                break;
            }
            if !c.flushing {
                self.flush(c);
                c = lock(&self.commit);
            } else {
                c.space_waiters += 1;
                c = self.space.wait(c).unwrap_or_else(|p| p.into_inner());
                c.space_waiters -= 1;
            }
        }
        let lsn = self.append_pending(&mut c, op, &mut payload)?;
        c.batch_submitters += 1;
        if c.flushing {
            c.pending_waiters.push(thread::current());
            if c.gathering && c.batch_submitters >= c.expected {
                self.gather.notify_one();
            }
            drop(c);
        } else {
            self.flush(c);
        }
        self.wait_durable(lsn)
    }

    /// Appends `op` to the pending batch without waiting and without starting a flush:
    /// it becomes durable with the next flush (another caller's change, or
    /// [`Engine::sync`]). For changes whose loss in a crash is harmless (forgetting a
    /// completed transaction only makes recovery finish it again), so that they cost
    /// no fdatasync of their own. Returns its lsn.
    pub(crate) fn submit_lazy(&self, op: Op) -> Result<Lsn, LogError> {
        if self.options.group_commit == GroupCommit::Off {
            return self.submit(op);
        }
        let mut payload = Vec::with_capacity(128);
        encode_payload(&op, &mut payload);
        let record_bytes = RECORD_HEADER_BYTES + payload.len();
        let mut c = lock(&self.commit);
        if c.poisoned.is_some() {
            return Err(poisoned_error(&c));
        }
        if !c.pending.is_empty() && c.pending.len() + record_bytes > self.options.batch_bytes_max {
            // No room: fall back to an ordinary change (it waits for room).
            drop(c);
            return self.submit(op);
        }
        self.append_pending(&mut c, op, &mut payload)
    }

    /// Checks `op` against the pending view and appends it to the pending batch under
    /// the next lsn, which it returns.
    fn append_pending(
        &self,
        c: &mut MutexGuard<'_, Commit>,
        op: Op,
        payload: &mut [u8],
    ) -> Result<Lsn, LogError> {
        self.check(c, &op)?;
        let lsn = c.next_lsn;
        c.next_lsn += 1;
        // The pending buffer is written as one write: this record's position in it.
        set_batch_pos(payload, c.pending_ops.len() as u32);
        frame(lsn, payload, &mut c.pending);
        self.note(c, &op, lsn);
        c.pending_ops.push(op);
        Ok(lsn)
    }

    /// Makes every change submitted so far durable (lazy ones included).
    pub(crate) fn sync(&self) -> Result<(), LogError> {
        let mut c = lock(&self.commit);
        if c.poisoned.is_some() {
            return Err(poisoned_error(&c));
        }
        let last = c.next_lsn - 1;
        if self.durable.load(Ordering::Acquire) >= last {
            return Ok(());
        }
        if c.flushing {
            c.pending_waiters.push(thread::current());
            drop(c);
        } else {
            self.flush(c);
        }
        self.wait_durable(last).map(|_| ())
    }

    /// Whether the pending view (durable changes plus those not yet durable) holds
    /// `gtrid`.
    pub(crate) fn present_pending(&self, gtrid: &[u8]) -> bool {
        let c = lock(&self.commit);
        self.present(&c, gtrid)
    }

    /// Waits until `lsn` is durable (Ok) or the log is poisoned (Err), flushing the
    /// pending batch when handed it.
    fn wait_durable(&self, lsn: Lsn) -> Result<Lsn, LogError> {
        loop {
            // Durability first: a record made durable before a later failure poisoned
            // the log was acknowledged by the disk and is reported as such.
            if self.durable.load(Ordering::Acquire) >= lsn {
                return Ok(lsn);
            }
            if !self.poisoned.load(Ordering::Acquire) {
                // An unpark that came before this park makes it return at once, so a
                // wake-up between the check above and here is not lost.
                thread::park();
                if self.durable.load(Ordering::Acquire) >= lsn {
                    return Ok(lsn);
                }
            }
            let c = lock(&self.commit);
            if c.durable_lsn >= lsn {
                return Ok(lsn);
            }
            if c.poisoned.is_some() {
                return Err(poisoned_error(&c));
            }
            if !c.flushing {
                // Our record is in the pending batch and nobody flushes it: we do.
                self.flush(c);
            }
            // Otherwise a flush is running (with our record, or before it): whoever
            // takes our record unparks us when it is durable.
        }
    }

    /// The baseline ([`GroupCommit::Off`]): write and fdatasync this record alone,
    /// holding the commit mutex throughout.
    fn submit_alone(
        &self,
        mut c: MutexGuard<'_, Commit>,
        op: Op,
        payload: &[u8],
    ) -> Result<Lsn, LogError> {
        if c.poisoned.is_some() {
            return Err(poisoned_error(&c));
        }
        self.check(&c, &op)?;
        let lsn = c.next_lsn;
        let mut buf = Vec::with_capacity(RECORD_HEADER_BYTES + payload.len());
        frame(lsn, payload, &mut buf);
        let mut w = lock(&self.writer);
        if let Err(e) = w.append(&self.storage, &buf) {
            return Err(self.poison(&mut c, e));
        }
        c.next_lsn += 1;
        match &op {
            Op::Put(e) if !self.read_index().contains_key(&e.gtrid) => c.view_len += 1,
            Op::Remove { .. } => c.view_len -= 1,
            _ => {}
        }
        let _ = apply(&mut self.write_index(), &op);
        c.durable_lsn = lsn;
        self.durable.store(lsn, Ordering::Release);
        self.count_batch(1, buf.len());
        if w.rotation_due(self.options.segment_bytes_max) {
            match w.rotate(&self.storage, &self.read_index(), lsn) {
                Ok(()) => {
                    self.rotations.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    // The record itself is durable: report it so; the next call fails.
                    self.poison(&mut c, e);
                }
            }
        }
        Ok(lsn)
    }

    /// Validates `op` against the pending view, so that errors are reported at once and
    /// consistently with the order of lsns.
    fn check(&self, c: &Commit, op: &Op) -> Result<(), LogError> {
        match op {
            Op::Put(e) => {
                if !self.present(c, &e.gtrid) && c.view_len >= self.options.entries_max {
                    return Err(LogError::Full {
                        entries_max: self.options.entries_max,
                    });
                }
            }
            Op::Update { gtrid, .. } | Op::Remove { gtrid } => {
                if !self.present(c, gtrid) {
                    return Err(LogError::NotFound {
                        gtrid: gtrid.clone(),
                    });
                }
            }
            Op::SnapshotEnd { .. } => {}
        }
        Ok(())
    }

    fn present(&self, c: &Commit, gtrid: &[u8]) -> bool {
        match c.delta.get(gtrid) {
            Some(&(present, _)) => present,
            None => self.read_index().contains_key(gtrid),
        }
    }

    /// Records `op` (appended with `lsn`) in the pending view.
    fn note(&self, c: &mut Commit, op: &Op, lsn: Lsn) {
        match op {
            Op::Put(e) => {
                if !self.present(c, &e.gtrid) {
                    c.view_len += 1;
                }
                c.delta.insert(e.gtrid.clone(), (true, lsn));
            }
            Op::Remove { gtrid } => {
                c.view_len -= 1;
                c.delta.insert(gtrid.clone(), (false, lsn));
            }
            // An update does not change presence; the view needs nothing.
            Op::Update { .. } | Op::SnapshotEnd { .. } => {}
        }
    }

    fn count_batch(&self, records: usize, bytes: usize) {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        self.records.fetch_add(records as u64, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Poisons the log with `e`'s description, wakes every waiter, returns the error
    /// for the caller that hit it.
    fn poison(&self, c: &mut Commit, e: LogError) -> LogError {
        let cause = e.to_string();
        if c.poisoned.is_none() {
            c.poisoned = Some(cause.clone());
        }
        self.poisoned.store(true, Ordering::Release);
        for t in c.pending_waiters.drain(..) {
            t.unpark();
        }
        self.space.notify_all();
        LogError::Poisoned { cause }
    }

    /// Flushes the pending batch; called with the commit mutex held and no flush
    /// running; returns with it released.
    fn flush(&self, mut c: MutexGuard<'_, Commit>) {
        debug_assert!(!c.flushing);
        if c.pending.is_empty() || c.poisoned.is_some() {
            return;
        }
        c.flushing = true;
        // Commit delay: when callers have been committing side by side (the last flush
        // served several, or others arrived while it ran) and fewer of them are in this
        // batch, wait a little for the rest, woken as soon as they are all in: one
        // fdatasync then serves all of them. Two callers in step otherwise alternate,
        // one record per flush, each waiting for two flushes. A lone caller never
        // waits (expected is 1), and each wait is bounded by `commit_delay`.
        let delay = self.options.commit_delay;
        if !delay.is_zero() && c.batch_submitters >= 1 && c.batch_submitters < c.expected {
            c.gathering = true;
            self.delayed.fetch_add(1, Ordering::Relaxed);
            let until = std::time::Instant::now() + delay;
            loop {
                let now = std::time::Instant::now();
                if c.batch_submitters >= c.expected
                    || now >= until
                    || c.space_waiters > 0
                    || c.poisoned.is_some()
                {
                    break;
                }
                c = self
                    .gather
                    .wait_timeout(c, until - now)
                    .map_or_else(|p| p.into_inner().0, |(g, _)| g);
            }
            c.gathering = false;
            if c.poisoned.is_some() {
                c.flushing = false;
                return;
            }
        }
        let submitters = mem::take(&mut c.batch_submitters);
        let spare = mem::take(&mut c.spare);
        let mut buf = mem::replace(&mut c.pending, spare);
        let ops = mem::take(&mut c.pending_ops);
        let waiters = mem::take(&mut c.pending_waiters);
        let last = c.next_lsn - 1;
        let space_waiters = c.space_waiters;
        drop(c);
        if space_waiters > 0 {
            self.space.notify_all();
        }
        let me = thread::current().id();
        let wake = |waiters: Vec<Thread>| {
            for t in waiters {
                if t.id() != me {
                    t.unpark();
                }
            }
        };

        let mut w = lock(&self.writer);
        let written = w.append(&self.storage, &buf);
        if written.is_ok() {
            // Durable: now, and only now, readers may see the batch.
            let mut ix = self.write_index();
            for op in &ops {
                let applied = apply(&mut ix, op);
                debug_assert!(applied.is_ok(), "the pending view admitted {op:?}");
            }
        }
        let mut c = lock(&self.commit);
        if let Err(e) = written {
            drop(w);
            self.poison(&mut c, e);
            c.flushing = false;
            drop(c);
            wake(waiters);
            return;
        }
        self.count_batch(ops.len(), buf.len());
        // Those served plus those who arrived meanwhile (now in the next batch).
        c.expected = submitters + c.batch_submitters;
        c.durable_lsn = last;
        self.durable.store(last, Ordering::Release);
        for op in &ops {
            if let Some(g) = op.gtrid() {
                if matches!(c.delta.get(g), Some(&(_, l)) if l <= last) {
                    c.delta.remove(g);
                }
            }
        }
        buf.clear();
        c.spare = buf;
        let rotate = w.rotation_due(self.options.segment_bytes_max);
        let mut next = None;
        let mut writer = Some(w);
        if !rotate {
            c.flushing = false;
            next = c.pending_waiters.first().cloned();
            // The next flusher must not wait for our wake-ups to get the segment.
            writer = None;
        }
        // Wake outside the mutex, so that nobody woken queues on it behind us; the next
        // flusher first, so that the disk is busy again while the others wake up.
        drop(c);
        if let Some(t) = next.take() {
            t.unpark();
        }
        wake(waiters);
        if let Some(mut w) = writer {
            // The batch's callers are already free to go; the next batch waits until
            // the new segment exists (`flushing` stays set).
            let rotated = w.rotate(&self.storage, &self.read_index(), last);
            let mut c = lock(&self.commit);
            match rotated {
                Ok(()) => {
                    self.rotations.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    self.poison(&mut c, e);
                }
            }
            c.flushing = false;
            next = c.pending_waiters.first().cloned();
        }
        // Hand the next batch to one of its callers. A newcomer may flush it first;
        // then this wake-up is spurious, which `wait_durable` tolerates.
        if let Some(t) = next {
            t.unpark();
        }
    }
}
