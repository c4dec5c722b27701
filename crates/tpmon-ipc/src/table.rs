//! The shared status table: one memory-mapped file per node daemon.
//!
//! The daemon creates `run_dir/status.shm`; server instances and local clients map it.
//! It holds, as 64-bit atomic words (never plain memory, so concurrent writers from
//! several processes are well defined):
//! - per server: the number of requests waiting in its queue;
//! - per instance slot: pid, state, requests served and the request being served (call
//!   id, reply address, start time) so that the daemon can answer the caller with
//!   TPESVCERR when the instance dies or overruns its service time limit;
//! - per service: calls, failures, errors, total latency and a latency histogram.
//!
//! It must not hold anything the protocol relies on for correctness after a daemon
//! restart: it is rebuilt at every boot. Fault model: a truncated or foreign file is
//! refused at open with the path named; out-of-range indices are ignored, never a panic.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use memmap2::MmapMut;
use thiserror::Error;

const MAGIC: u64 = u64::from_be_bytes(*b"TPMONST1");
const VERSION: u64 = 1;
const HEADER_WORDS: usize = 8;
const SERVER_WORDS: usize = 4;
const SLOT_WORDS: usize = 32;
/// Latency histogram buckets per service.
pub const LATENCY_BUCKETS: usize = 128;
const SERVICE_WORDS: usize = 4 + LATENCY_BUCKETS;
/// Longest reply address stored in a slot.
pub const REPLY_ADDR_BYTES_MAX: usize = 128;

// Slot word offsets.
const S_PID: usize = 0;
const S_STATE: usize = 1;
const S_SERVED: usize = 2;
const S_SEQ: usize = 3;
const S_CALL: usize = 4;
const S_SERVICE: usize = 5;
const S_STARTED: usize = 6;
const S_FLAGS: usize = 7;
const S_CLIENT: usize = 8;
const S_ADDR_LEN: usize = 9;
const S_ADDR: usize = 10; // 16 words
const S_FOLLOWING: usize = 26;

// Server word offsets.
const Q_QUEUED: usize = 0;
const Q_LEADER: usize = 1; // slot + 1 of the instance waiting on the queue socket, or 0
const Q_SLEEPERS: usize = 2; // instances asleep on the futex
const Q_FUTEX: usize = 3; // low 32 bits: futex generation

/// How long a follower sleeps at most before it looks at the queue again: the bound on
/// any stall a lost wake-up could cause.
const FOLLOWER_NAP: std::time::Duration = std::time::Duration::from_millis(100);

/// A status-table failure.
#[derive(Debug, Error)]
pub enum TableError {
    /// The file could not be created, opened or mapped.
    #[error("status table {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a status table of this build, or is truncated.
    #[error("status table {path}: {what}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
}

/// How many servers, instance slots and services a table holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableShape {
    /// Servers (queues).
    pub servers: u32,
    /// Instance slots (the sum of every server's maximum instances).
    pub slots: u32,
    /// Services.
    pub services: u32,
}

impl TableShape {
    fn words(&self) -> usize {
        HEADER_WORDS
            + self.servers as usize * SERVER_WORDS
            + self.slots as usize * SLOT_WORDS
            + self.services as usize * SERVICE_WORDS
    }
}

/// State of an instance slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// No process.
    Free,
    /// Started, running tpsvrinit.
    Starting,
    /// Serving requests.
    Running,
    /// Running tpsvrdone.
    Stopping,
}

impl SlotState {
    fn from_word(w: u64) -> SlotState {
        match w {
            1 => SlotState::Starting,
            2 => SlotState::Running,
            3 => SlotState::Stopping,
            _ => SlotState::Free,
        }
    }
    fn word(self) -> u64 {
        match self {
            SlotState::Free => 0,
            SlotState::Starting => 1,
            SlotState::Running => 2,
            SlotState::Stopping => 3,
        }
    }
}

/// A consistent-enough copy of one slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotSnapshot {
    /// Process id (0 = none).
    pub pid: u32,
    /// State.
    pub state: SlotState,
    /// Requests served by the instance in this slot since it started.
    pub served: u64,
    /// Request sequence: odd while a request is being served.
    pub seq: u64,
    /// The request being served, when `seq` is odd.
    pub busy: Option<BusyRequest>,
}

/// The request an instance is serving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusyRequest {
    /// Caller's call id.
    pub call_id: u64,
    /// Service index.
    pub service: u32,
    /// When it started (monotonic µs).
    pub started_us: u64,
    /// The request's flags.
    pub flags: u32,
    /// The caller's client id.
    pub client: u64,
    /// The caller's reply address.
    pub reply_to: Vec<u8>,
}

/// The latency histogram bucket for a duration in microseconds: exact below 16 µs,
/// then four buckets per power of two (about 19 % resolution) up to 2^32 µs.
pub fn latency_bucket(us: u64) -> usize {
    if us < 16 {
        return us as usize;
    }
    let e = 63 - us.leading_zeros() as usize; // >= 4
    let sub = ((us >> (e - 2)) & 3) as usize;
    (16 + (e - 4) * 4 + sub).min(LATENCY_BUCKETS - 1)
}

/// The smallest latency (µs) that falls in `bucket`.
fn bucket_floor(bucket: usize) -> u64 {
    if bucket < 16 {
        return bucket as u64;
    }
    let e = (bucket - 16) / 4 + 4;
    let sub = ((bucket - 16) % 4) as u64;
    (1u64 << e) + (sub << (e - 2))
}

/// Statistics of one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ServiceStats {
    /// Calls served (any outcome).
    pub calls: u64,
    /// Calls that ended in TPFAIL / TPEXIT.
    pub failures: u64,
    /// Calls that ended in a service error (bad buffer type, crash, overrun).
    pub errors: u64,
    /// Mean service time in µs.
    pub mean_us: u64,
    /// 99th percentile service time in µs (upper edge of its histogram bucket: at most
    /// about 19 % above the true value, never below it).
    pub p99_us: u64,
}

/// How a served call ended, for the statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// TPSUCCESS.
    Success,
    /// TPFAIL / TPEXIT.
    Failure,
    /// Service error.
    Error,
}

/// A mapped status table.
#[derive(Debug)]
pub struct StatusTable {
    map: MmapMut,
    shape: TableShape,
    path: PathBuf,
}

impl StatusTable {
    /// Creates (or replaces) the table file at `path`.
    pub fn create(
        path: &Path,
        shape: TableShape,
        generation: u64,
    ) -> Result<StatusTable, TableError> {
        let io = |source| TableError::Io {
            path: path.to_path_buf(),
            source,
        };
        let _ = std::fs::remove_file(path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(io)?;
        file.set_len((shape.words() * 8) as u64).map_err(io)?;
        // SAFETY: the file was just created by us with the right length; every access
        // goes through AtomicU64, so concurrent writers in other processes are sound.
        let map = unsafe { MmapMut::map_mut(&file) }.map_err(io)?;
        let t = StatusTable {
            map,
            shape,
            path: path.to_path_buf(),
        };
        let h = t.words();
        h[1].store(VERSION, Ordering::Relaxed);
        h[2].store(generation, Ordering::Relaxed);
        h[3].store(u64::from(shape.servers), Ordering::Relaxed);
        h[4].store(u64::from(shape.slots), Ordering::Relaxed);
        h[5].store(u64::from(shape.services), Ordering::Relaxed);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        h[7].store(cpus as u64, Ordering::Relaxed);
        h[0].store(MAGIC, Ordering::Release);
        Ok(t)
    }

    /// Maps an existing table, checking its header against the file size.
    pub fn open(path: &Path) -> Result<StatusTable, TableError> {
        let io = |source| TableError::Io {
            path: path.to_path_buf(),
            source,
        };
        let invalid = |what: String| TableError::Invalid {
            path: path.to_path_buf(),
            what,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io)?;
        let len = file.metadata().map_err(io)?.len() as usize;
        if len < HEADER_WORDS * 8 {
            return Err(invalid(format!("{len} bytes is shorter than the header")));
        }
        // SAFETY: as in `create`; the size is validated below before any word past the
        // header is touched.
        let map = unsafe { MmapMut::map_mut(&file) }.map_err(io)?;
        let mut t = StatusTable {
            map,
            shape: TableShape {
                servers: 0,
                slots: 0,
                services: 0,
            },
            path: path.to_path_buf(),
        };
        let h = t.words();
        if h[0].load(Ordering::Acquire) != MAGIC {
            return Err(invalid("not a tpmon status table (bad magic)".into()));
        }
        if h[1].load(Ordering::Relaxed) != VERSION {
            return Err(invalid(format!(
                "version {} is not {VERSION}",
                h[1].load(Ordering::Relaxed)
            )));
        }
        let get = |i: usize| u32::try_from(h[i].load(Ordering::Relaxed)).unwrap_or(u32::MAX);
        let shape = TableShape {
            servers: get(3),
            slots: get(4),
            services: get(5),
        };
        if shape.servers > 65_535 || shape.slots > 1 << 20 || shape.services > 65_535 {
            return Err(invalid("implausible counts in the header".into()));
        }
        if shape.words() * 8 > len {
            return Err(invalid(format!(
                "truncated: {len} bytes, the header needs {}",
                shape.words() * 8
            )));
        }
        t.shape = shape;
        Ok(t)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The counts.
    pub fn shape(&self) -> TableShape {
        self.shape
    }

    /// The boot generation written by the daemon.
    pub fn generation(&self) -> u64 {
        self.words()[2].load(Ordering::Relaxed)
    }

    fn words(&self) -> &[AtomicU64] {
        let n = self.map.len() / 8;
        // SAFETY: the mapping is page-aligned, n words long, lives as long as self, and
        // is only ever accessed atomically.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().cast::<AtomicU64>(), n) }
    }

    fn server_words(&self, server: usize) -> Option<&[AtomicU64]> {
        if server >= self.shape.servers as usize {
            return None;
        }
        let at = HEADER_WORDS + server * SERVER_WORDS;
        Some(&self.words()[at..at + SERVER_WORDS])
    }

    fn slot_words(&self, slot: usize) -> Option<&[AtomicU64]> {
        if slot >= self.shape.slots as usize {
            return None;
        }
        let at = HEADER_WORDS + self.shape.servers as usize * SERVER_WORDS + slot * SLOT_WORDS;
        Some(&self.words()[at..at + SLOT_WORDS])
    }

    fn service_words(&self, service: usize) -> Option<&[AtomicU64]> {
        if service >= self.shape.services as usize {
            return None;
        }
        let at = HEADER_WORDS
            + self.shape.servers as usize * SERVER_WORDS
            + self.shape.slots as usize * SLOT_WORDS
            + service * SERVICE_WORDS;
        Some(&self.words()[at..at + SERVICE_WORDS])
    }

    /// Processes allowed to poll at once: the machine's CPUs.
    fn spinners_max(&self) -> u64 {
        self.words()[7].load(Ordering::Relaxed).max(1)
    }

    /// Forgets the pollers count. A process killed while polling leaves its mark
    /// behind; the daemon calls this now and then. Polls last microseconds, so live
    /// pollers are counted again at once; a reset only allows a few extra pollers for
    /// that instant.
    pub fn reset_spinners(&self) {
        self.words()[6].store(0, Ordering::Release);
    }

    /// Reserves a place in a server's queue: true when the queue had room (below
    /// `max`), false (and nothing reserved) when it is full.
    pub fn queue_reserve(&self, server: usize, max: u64) -> bool {
        let Some(w) = self.server_words(server) else {
            return true;
        };
        let before = w[Q_QUEUED].fetch_add(1, Ordering::AcqRel);
        if before >= max {
            w[Q_QUEUED].fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Gives a reserved place back (the request was taken, or its send failed).
    pub fn queue_release(&self, server: usize) {
        if let Some(w) = self.server_words(server) {
            // Never wrap below zero, even if a caller died between reserve and send.
            let _ = w[0].fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(v.saturating_sub(1))
            });
        }
    }

    /// Leader/followers: makes the instance in `slot` the one that waits on its
    /// server's queue socket, if none does. Only the leader sits in `recv`, so a send
    /// never wakes an instance that another instance's polling would have beaten.
    pub fn try_lead(&self, server: usize, slot: usize) -> bool {
        let Some(w) = self.server_words(server) else {
            return true;
        };
        w[Q_LEADER]
            .compare_exchange(0, slot as u64 + 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The leader in `slot` took a message and stops waiting on the socket. When more
    /// requests are already queued, a follower is woken to take the next one.
    pub fn unlead(&self, server: usize, slot: usize) {
        let Some(w) = self.server_words(server) else {
            return;
        };
        let _ =
            w[Q_LEADER].compare_exchange(slot as u64 + 1, 0, Ordering::AcqRel, Ordering::Acquire);
        if w[Q_QUEUED].load(Ordering::Acquire) > 0 && w[Q_SLEEPERS].load(Ordering::Acquire) > 0 {
            self.wake_follower(server);
        }
    }

    /// Clears the leadership of a dead instance (the daemon, when it reaps `slot`) and
    /// its follower mark, then wakes a follower to take over the socket.
    pub fn release_dead(&self, server: usize, slot: usize) {
        let Some(w) = self.server_words(server) else {
            return;
        };
        if let Some(s) = self.slot_words(slot) {
            if s[S_FOLLOWING].swap(0, Ordering::AcqRel) == 1 {
                let _ = w[Q_SLEEPERS].fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                    Some(v.saturating_sub(1))
                });
            }
        }
        let _ =
            w[Q_LEADER].compare_exchange(slot as u64 + 1, 0, Ordering::AcqRel, Ordering::Acquire);
        self.wake_follower(server);
    }

    /// An idle instance that is not the leader sleeps until a sender or the leader
    /// wakes it, or at most 100 ms (`FOLLOWER_NAP`).
    pub fn follow(&self, server: usize, slot: usize) {
        let (Some(w), Some(s)) = (self.server_words(server), self.slot_words(slot)) else {
            return;
        };
        let futex = self.futex_word(server);
        let generation = futex.load(Ordering::Acquire);
        s[S_FOLLOWING].store(1, Ordering::Release);
        w[Q_SLEEPERS].fetch_add(1, Ordering::AcqRel);
        // Sleep only while somebody waits on the socket; otherwise go and lead.
        if w[Q_LEADER].load(Ordering::Acquire) != 0 {
            futex_wait(futex, generation, FOLLOWER_NAP);
        }
        w[Q_SLEEPERS].fetch_sub(1, Ordering::AcqRel);
        s[S_FOLLOWING].store(0, Ordering::Release);
    }

    /// A sender put a request in `server`'s queue: when no instance waits on the
    /// socket but some sleep, wake one.
    pub fn after_send(&self, server: usize) {
        let Some(w) = self.server_words(server) else {
            return;
        };
        if w[Q_LEADER].load(Ordering::Acquire) == 0 && w[Q_SLEEPERS].load(Ordering::Acquire) > 0 {
            self.wake_follower(server);
        }
    }

    /// Wakes every follower of a server (shutdown).
    pub fn wake_all_followers(&self, server: usize) {
        if self.server_words(server).is_some() {
            let f = self.futex_word(server);
            f.fetch_add(1, Ordering::AcqRel);
            futex_wake(f, i32::MAX);
        }
    }

    fn wake_follower(&self, server: usize) {
        let f = self.futex_word(server);
        f.fetch_add(1, Ordering::AcqRel);
        futex_wake(f, 1);
    }

    fn futex_word(&self, server: usize) -> &AtomicU32 {
        let at = HEADER_WORDS + server * SERVER_WORDS + Q_FUTEX;
        // SAFETY: the word is in bounds (callers checked `server`), 8-byte aligned,
        // and only ever accessed as this AtomicU32 (its first four bytes).
        unsafe { AtomicU32::from_ptr(self.map.as_ptr().add(at * 8).cast::<u32>().cast_mut()) }
    }

    /// Requests waiting in a server's queue.
    pub fn queued(&self, server: usize) -> u64 {
        self.server_words(server)
            .map_or(0, |w| w[0].load(Ordering::Acquire))
    }

    /// Resets a server's queue count (the daemon, when it drains a dead queue).
    pub fn queue_reset(&self, server: usize) {
        if let Some(w) = self.server_words(server) {
            w[0].store(0, Ordering::Release);
        }
    }

    /// Sets a slot's process and state (the daemon and the instance).
    pub fn set_slot(&self, slot: usize, pid: u32, state: SlotState) {
        if let Some(w) = self.slot_words(slot) {
            w[S_PID].store(u64::from(pid), Ordering::Relaxed);
            w[S_STATE].store(state.word(), Ordering::Release);
        }
    }

    /// Clears a slot for a new process.
    pub fn reset_slot(&self, slot: usize) {
        if let Some(w) = self.slot_words(slot) {
            for x in w {
                x.store(0, Ordering::Relaxed);
            }
        }
    }

    /// The instance starts serving a request: record it so the daemon can answer the
    /// caller if the instance dies.
    pub fn begin_request(&self, slot: usize, req: &BusyRequest) {
        let Some(w) = self.slot_words(slot) else {
            return;
        };
        w[S_CALL].store(req.call_id, Ordering::Relaxed);
        w[S_SERVICE].store(u64::from(req.service), Ordering::Relaxed);
        w[S_STARTED].store(req.started_us, Ordering::Relaxed);
        w[S_FLAGS].store(u64::from(req.flags), Ordering::Relaxed);
        w[S_CLIENT].store(req.client, Ordering::Relaxed);
        let addr = &req.reply_to[..req.reply_to.len().min(REPLY_ADDR_BYTES_MAX)];
        w[S_ADDR_LEN].store(addr.len() as u64, Ordering::Relaxed);
        for (i, chunk) in addr.chunks(8).enumerate() {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            w[S_ADDR + i].store(u64::from_be_bytes(b), Ordering::Relaxed);
        }
        // Odd sequence = busy; Release publishes the fields above.
        w[S_SEQ].fetch_add(1, Ordering::Release);
    }

    /// The instance finished the request it began.
    pub fn end_request(&self, slot: usize) {
        if let Some(w) = self.slot_words(slot) {
            w[S_SERVED].fetch_add(1, Ordering::Relaxed);
            w[S_SEQ].fetch_add(1, Ordering::Release);
        }
    }

    /// Reads a slot.
    pub fn slot(&self, slot: usize) -> Option<SlotSnapshot> {
        let w = self.slot_words(slot)?;
        let seq = w[S_SEQ].load(Ordering::Acquire);
        let busy = if seq % 2 == 1 {
            let len = (w[S_ADDR_LEN].load(Ordering::Relaxed) as usize).min(REPLY_ADDR_BYTES_MAX);
            let mut addr = Vec::with_capacity(len);
            for i in 0..len.div_ceil(8) {
                addr.extend_from_slice(&w[S_ADDR + i].load(Ordering::Relaxed).to_be_bytes());
            }
            addr.truncate(len);
            Some(BusyRequest {
                call_id: w[S_CALL].load(Ordering::Relaxed),
                service: u32::try_from(w[S_SERVICE].load(Ordering::Relaxed)).unwrap_or(u32::MAX),
                started_us: w[S_STARTED].load(Ordering::Relaxed),
                flags: w[S_FLAGS].load(Ordering::Relaxed) as u32,
                client: w[S_CLIENT].load(Ordering::Relaxed),
                reply_to: addr,
            })
        } else {
            None
        };
        Some(SlotSnapshot {
            pid: w[S_PID].load(Ordering::Relaxed) as u32,
            state: SlotState::from_word(w[S_STATE].load(Ordering::Acquire)),
            served: w[S_SERVED].load(Ordering::Relaxed),
            seq,
            busy,
        })
    }

    /// Records one served call.
    pub fn record_call(&self, service: usize, latency_us: u64, outcome: CallOutcome) {
        let Some(w) = self.service_words(service) else {
            return;
        };
        w[0].fetch_add(1, Ordering::Relaxed);
        match outcome {
            CallOutcome::Success => {}
            CallOutcome::Failure => {
                w[1].fetch_add(1, Ordering::Relaxed);
            }
            CallOutcome::Error => {
                w[2].fetch_add(1, Ordering::Relaxed);
            }
        }
        w[3].fetch_add(latency_us, Ordering::Relaxed);
        w[4 + latency_bucket(latency_us)].fetch_add(1, Ordering::Relaxed);
    }

    /// A service's statistics.
    pub fn service_stats(&self, service: usize) -> ServiceStats {
        let Some(w) = self.service_words(service) else {
            return ServiceStats::default();
        };
        let calls = w[0].load(Ordering::Relaxed);
        let hist: Vec<u64> = (0..LATENCY_BUCKETS)
            .map(|i| w[4 + i].load(Ordering::Relaxed))
            .collect();
        let total: u64 = hist.iter().sum();
        let mut p99 = 0;
        if total > 0 {
            let rank = total - total / 100; // the call at the 99th percentile
            let mut seen = 0;
            for (i, n) in hist.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    // Report the bucket's upper edge: never below the true value.
                    p99 = if i + 1 < LATENCY_BUCKETS {
                        bucket_floor(i + 1).saturating_sub(1).max(bucket_floor(i))
                    } else {
                        bucket_floor(i)
                    };
                    break;
                }
            }
        }
        ServiceStats {
            calls,
            failures: w[1].load(Ordering::Relaxed),
            errors: w[2].load(Ordering::Relaxed),
            mean_us: w[3].load(Ordering::Relaxed).checked_div(total).unwrap_or(0),
            p99_us: p99,
        }
    }
}

/// Sleeps while `*word == expected`, at most `timeout` (shared, not private: the word
/// lives in a mapping shared between processes).
fn futex_wait(word: &AtomicU32, expected: u32, timeout: std::time::Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: FUTEX_WAIT reads the aligned u32 at `word`, which stays mapped for the
    // duration of the call; a spurious return is harmless to every caller.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
            std::ptr::null::<u32>(),
            0,
        );
    }
}

/// Wakes up to `n` sleepers on `word`.
fn futex_wake(word: &AtomicU32, n: i32) {
    // SAFETY: FUTEX_WAKE only uses the address as a key.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            n,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0,
        );
    }
}

impl crate::endpoint::SpinGate for StatusTable {
    fn enter(&self) -> bool {
        let w = &self.words()[6];
        if w.fetch_add(1, Ordering::AcqRel) >= self.spinners_max() {
            w.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }
    fn leave(&self) {
        // Saturating: the daemon may have reset the count meanwhile.
        let _ = self.words()[6].fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
            Some(v.saturating_sub(1))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("tpmon-table-{}-{name}", std::process::id()))
    }

    #[test]
    fn buckets_are_monotonic_and_floors_fit() {
        let mut last = 0;
        for us in 0..100_000u64 {
            let b = latency_bucket(us);
            assert!(b >= last);
            assert!(bucket_floor(b) <= us, "floor of bucket {b} above {us}");
            last = b;
        }
        assert_eq!(latency_bucket(u64::MAX), LATENCY_BUCKETS - 1);
    }

    #[test]
    fn two_mappings_share_state() {
        let p = temp("share");
        let shape = TableShape {
            servers: 2,
            slots: 3,
            services: 2,
        };
        let a = StatusTable::create(&p, shape, 9).expect("create");
        let b = StatusTable::open(&p).expect("open");
        assert_eq!(b.shape(), shape);
        assert_eq!(b.generation(), 9);
        assert!(a.queue_reserve(1, 2));
        assert!(b.queue_reserve(1, 2));
        assert!(!a.queue_reserve(1, 2));
        assert_eq!(b.queued(1), 2);
        b.queue_release(1);
        b.queue_release(1);
        b.queue_release(1);
        assert_eq!(a.queued(1), 0);
        let req = BusyRequest {
            call_id: 77,
            service: 1,
            started_us: 5,
            flags: 4,
            client: 3,
            reply_to: b"tpmon/x/123/abcdef0123".to_vec(),
        };
        b.begin_request(2, &req);
        assert_eq!(a.slot(2).expect("slot").busy, Some(req));
        b.end_request(2);
        let s = a.slot(2).expect("slot");
        assert_eq!((s.busy, s.served), (None, 1));
        for i in 0..100 {
            a.record_call(0, if i == 99 { 10_000 } else { 10 }, CallOutcome::Success);
        }
        let st = b.service_stats(0);
        assert_eq!(st.calls, 100);
        assert_eq!(st.p99_us, 10); // exact below 16 us
        assert!(a.slot(3).is_none());
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn foreign_or_truncated_files_are_refused() {
        let p = temp("bad");
        std::fs::write(&p, b"hello").expect("write");
        let e = StatusTable::open(&p).expect_err("short");
        assert!(e.to_string().contains("shorter than the header"));
        std::fs::write(&p, [0u8; 64]).expect("write");
        assert!(StatusTable::open(&p)
            .expect_err("magic")
            .to_string()
            .contains("bad magic"));
        let shape = TableShape {
            servers: 1,
            slots: 1,
            services: 1,
        };
        drop(StatusTable::create(&p, shape, 1).expect("create"));
        let f = OpenOptions::new().write(true).open(&p).expect("open");
        f.set_len(100).expect("truncate");
        assert!(StatusTable::open(&p)
            .expect_err("trunc")
            .to_string()
            .contains("truncated"));
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn one_leader_at_a_time_and_dead_leaders_are_released() {
        let p = temp("lead");
        let shape = TableShape {
            servers: 1,
            slots: 3,
            services: 1,
        };
        let t = StatusTable::create(&p, shape, 1).expect("create");
        assert!(t.try_lead(0, 0));
        assert!(!t.try_lead(0, 1), "a second leader while the first waits");
        // Unlead by a non-leader changes nothing.
        t.unlead(0, 2);
        assert!(!t.try_lead(0, 1));
        t.unlead(0, 0);
        assert!(t.try_lead(0, 1));
        // The daemon reaps slot 1 while it leads: the socket is free again.
        t.release_dead(0, 1);
        assert!(t.try_lead(0, 2));
        // A follower with nobody else leading returns at once (it must go and lead).
        t.unlead(0, 2);
        t.follow(0, 0);
        assert!(t.try_lead(0, 0));
        // Out-of-range servers never block anyone.
        assert!(t.try_lead(7, 0));
        t.follow(7, 0);
        t.after_send(7);
        let _ = std::fs::remove_file(&p);
    }
}
