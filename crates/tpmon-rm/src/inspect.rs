//! What `tpmon rm inspect` shows of a site, read from its files (the daemon may be
//! running or not): LCPN, the checkpoints on disk, and the log records after the
//! newest checkpoint sorted into the classes of spec 03 §3.3.
//!
//! Read-only: it never cuts a torn tail or removes a file.

use std::path::Path;

use serde::Serialize;

use crate::checkpoint::{ccp_name, checkpoints, Checkpoint};
use crate::error::RmError;
use crate::oplog::generations;
use crate::record::Status;
use crate::site::records_after;

/// One checkpoint file.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointInfo {
    /// N.
    pub n: u64,
    /// When it was written (ms since the Unix epoch).
    pub created_ms: u64,
    /// Rows in CCP(N).
    pub rows: usize,
    /// Records of its delta applied from the log (GCPN = N: the SL class).
    pub stored: usize,
    /// Compensation records CL(N-1) stored with it.
    pub compensation: usize,
    /// Records carried to later checkpoints.
    pub carried: usize,
    /// File size in bytes.
    pub bytes: u64,
}

/// A site's state on disk.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    /// Directory.
    pub dir: String,
    /// LCPN (the newest checkpoint, or one more while a checkpoint is being made).
    pub lcpn: u64,
    /// Checkpoints on disk, oldest first (at most two).
    pub checkpoints: Vec<CheckpointInfo>,
    /// Log generations on disk.
    pub log_generations: Vec<u64>,
    /// Bytes of log files.
    pub log_bytes: u64,
    /// UL: undecided records.
    pub undecided: usize,
    /// DL: decided commit with GCPN > LCPN.
    pub decided_later: usize,
    /// SL: decided with GCPN = LCPN and stored in CCP(LCPN) (its delta).
    pub stored: usize,
    /// CL: decided commit with GCPN = LCPN, after CCP(LCPN) was made; stored with the
    /// next checkpoint as CL(LCPN).
    pub compensation: usize,
    /// Committed records older than LCPN still in the log (the bounded-delay
    /// assumption was broken; they are kept, never dropped).
    pub late: usize,
    /// Aborted records (dropped at the next checkpoint).
    pub aborted: usize,
    /// Prepared branches in the log (in doubt).
    pub in_doubt_branches: usize,
}

/// Reads the site in `dir`. The site may be running: a checkpoint or log generation
/// it retires between the listing and the read is gone when read, and the reading
/// starts again (a few times) rather than fail.
pub fn inspect(dir: &Path) -> Result<Inspection, RmError> {
    let mut attempt = 0;
    loop {
        match inspect_once(dir) {
            Err(RmError::Io { path, .. }) if attempt < 4 && !path.exists() => attempt += 1,
            other => return other,
        }
    }
}

fn inspect_once(dir: &Path) -> Result<Inspection, RmError> {
    let ccps = checkpoints(dir)?;
    let Some(&n) = ccps.last() else {
        return Err(RmError::NoCheckpoint(0));
    };
    let mut infos = Vec::new();
    let mut newest = None;
    for c in &ccps {
        let path = dir.join(ccp_name(*c));
        let ck = Checkpoint::read(&path)?;
        infos.push(CheckpointInfo {
            n: ck.n,
            created_ms: ck.created_ms,
            rows: ck.image.values().map(|t| t.len()).sum(),
            stored: ck.delta.iter().filter(|(_, cl)| !cl).count(),
            compensation: ck.delta.iter().filter(|(_, cl)| *cl).count(),
            carried: ck.carry.len(),
            bytes: std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
        });
        if *c == n {
            newest = Some(ck);
        }
    }
    let newest = newest.ok_or(RmError::NoCheckpoint(n))?;
    let gens = generations(dir)?;
    let log_bytes = gens
        .iter()
        .map(|g| {
            std::fs::metadata(dir.join(crate::oplog::log_name(*g)))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum();
    // An empty generation above n was created ahead by checkpoint n; a non-empty
    // one means checkpoint n+1 has begun (LCPN is n+1 until it is written).
    let lcpn = gens
        .iter()
        .copied()
        .filter(|g| {
            *g > n
                && std::fs::metadata(dir.join(crate::oplog::log_name(*g)))
                    .is_ok_and(|m| m.len() > 0)
        })
        .max()
        .unwrap_or(n);
    let (records, _, _) = records_after(dir, &newest, n, false)?;
    let mut out = Inspection {
        dir: dir.display().to_string(),
        lcpn,
        stored: infos.last().map(|i| i.stored).unwrap_or(0),
        checkpoints: infos,
        log_generations: gens,
        log_bytes,
        undecided: 0,
        decided_later: 0,
        compensation: 0,
        late: 0,
        aborted: 0,
        in_doubt_branches: 0,
    };
    let mut in_doubt = std::collections::HashSet::new();
    for r in &records {
        match r.status {
            Status::Undecided => {
                out.undecided += 1;
                in_doubt.insert(r.tid.clone());
            }
            Status::Abort => out.aborted += 1,
            Status::Commit if r.gcpn > n => out.decided_later += 1,
            Status::Commit if r.gcpn == n => out.compensation += 1,
            Status::Commit => out.late += 1,
        }
    }
    out.in_doubt_branches = in_doubt.len();
    Ok(out)
}
