//! Crash tests: run workloads on [`SimStorage`], lose power at a chosen operation,
//! reopen from a crash image and check the log against a model (a `BTreeMap`):
//!
//! 1. every change whose call returned Ok is there (acknowledged durability);
//! 2. the state is the model after a prefix, in lsn order, of the issued changes that
//!    includes every acknowledged one (nothing invented, nothing reordered);
//! 3. open never fails on a crash image (only on real corruption);
//! 4. a flipped byte in an acknowledged record far from the tail is refused with the
//!    record's offset.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use crate::index::{apply, Index};
use crate::log_tests::{entry, ident, small_options};
use crate::record::{read_frame, Frame, Op};
use crate::segment::HEADER_BLOCK_BYTES;
use crate::{Advice, Case, LogError, Options, SimStorage, TxLog, TxState, XorShift64};

/// A change as the workload issues it.
#[derive(Debug, Clone)]
enum Step {
    Put {
        key: u8,
        state: u8,
        data: u16,
    },
    Update {
        key: u8,
        state: Option<u8>,
        advice: Option<u8>,
    },
    Remove {
        key: u8,
    },
}

fn key(k: u8) -> String {
    format!("gtrid-{k}")
}

fn to_op(s: &Step) -> Op {
    match *s {
        Step::Put {
            key: k,
            state,
            data,
        } => Op::Put(entry(
            &key(k),
            TxState::from_code(state).unwrap_or(TxState::Active),
            data as usize,
        )),
        Step::Update {
            key: k,
            state,
            advice,
        } => Op::Update {
            gtrid: key(k).into_bytes(),
            state: state.and_then(TxState::from_code),
            advice: advice.and_then(Advice::from_code),
        },
        Step::Remove { key: k } => Op::Remove {
            gtrid: key(k).into_bytes(),
        },
    }
}

fn step_strategy(keys: u8) -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..keys, 1u8..=7, 0u16..300).prop_map(|(key, state, data)| Step::Put { key, state, data }),
        2 => (0..keys, proptest::option::of(1u8..=7), proptest::option::of(0u8..=2))
            .prop_map(|(key, state, advice)| Step::Update {
                key,
                state: state.or(if advice.is_none() { Some(4) } else { None }),
                advice,
            }),
        2 => (0..keys).prop_map(|key| Step::Remove { key }),
    ]
}

/// Issues `step`; Ok(Some(lsn)) when acknowledged, Ok(None) when refused because the
/// gtrid is absent (nothing written), Err when the log failed.
fn issue(log: &TxLog<SimStorage>, step: &Step) -> Result<Option<u64>, LogError> {
    let r = match to_op(step) {
        Op::Put(e) => log.put(e),
        Op::Update {
            gtrid,
            state,
            advice,
        } => log.update(&gtrid, state, advice),
        Op::Remove { gtrid } => log.remove(&gtrid),
        Op::SnapshotEnd { .. } => unreachable!("never issued"),
    };
    match r {
        Ok(lsn) => Ok(Some(lsn)),
        Err(LogError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The state after `ops`; `None` if one cannot apply (a change refused for poisoning
/// before it was checked, so it was never written either).
fn model(ops: &[Op]) -> Option<Index> {
    let mut ix = Index::new();
    for op in ops {
        apply(&mut ix, op).ok()?;
    }
    Some(ix)
}

fn state_of(log: &TxLog<SimStorage>) -> Index {
    log.iter().map(|e| (e.gtrid.clone(), e)).collect()
}

fn crash_options() -> Options {
    Options {
        // Tiny segments: rotations happen every few dozen records.
        segment_bytes_max: 8192,
        // A small stretch, laid down again every few flushes.
        preallocate_bytes: 4096,
        ..small_options()
    }
}

/// [`crash_options`], with preallocation for odd seeds only: with it most batches
/// overwrite zeros, without it they extend the file; both shapes of torn write must
/// recover.
fn crash_options_for(seed: u64) -> Options {
    Options {
        preallocate_bytes: if seed % 2 == 1 { 4096 } else { 0 },
        ..crash_options()
    }
}

/// The cases an open exercised; a zero tail counts only where the log does not lay
/// zeros down itself (there it would be found at every open).
fn cases_of(report: &crate::OpenReport, opts: &Options) -> Vec<Case> {
    report
        .repairs
        .iter()
        .map(|r| r.case)
        .chain(
            (opts.preallocate_bytes == 0 && report.zero_tail_bytes > 0).then_some(Case::ZeroTail),
        )
        .collect()
}

/// One single-threaded run: issue `steps`, lose power after `crash_op` storage
/// operations, reopen the crash image chosen by `seed`, check properties 1 to 3.
/// Returns the recovery cases the crash image exercised.
fn run_interleaved(steps: &[Step], crash_op: u64, seed: u64) -> Result<Vec<Case>, TestCaseError> {
    let s = SimStorage::new();
    let opts = crash_options_for(seed);
    let log = TxLog::create_in(s.clone(), ident(), opts).expect("create");
    s.freeze_after_ops(crash_op);
    let mut acked: Vec<Op> = Vec::new();
    let mut last_acked = 0;
    let mut maybe: Option<Op> = None;
    let mut present: BTreeMap<Vec<u8>, ()> = BTreeMap::new();
    for step in steps {
        let op = to_op(step);
        match issue(&log, step) {
            Ok(Some(lsn)) => {
                prop_assert_eq!(lsn, last_acked + 1, "lsns are consecutive");
                last_acked = lsn;
                match &op {
                    Op::Put(e) => {
                        present.insert(e.gtrid.clone(), ());
                    }
                    Op::Remove { gtrid } => {
                        present.remove(gtrid);
                    }
                    _ => {}
                }
                acked.push(op);
            }
            Ok(None) => {
                let g = op.gtrid().map(<[u8]>::to_vec).unwrap_or_default();
                prop_assert!(!present.contains_key(&g), "NotFound for a present gtrid");
            }
            Err(LogError::Poisoned { .. }) => {
                maybe = Some(op);
                break;
            }
            Err(e) => return Err(TestCaseError::fail(format!("unexpected error {e}"))),
        }
    }
    drop(log);
    let image = s.crash_image(seed);
    let (log, report) = match TxLog::open_in(image.clone(), ident(), opts) {
        Ok(x) => x,
        Err(e) => {
            return Err(TestCaseError::fail(format!(
                "open failed on a crash image: {e}"
            )))
        }
    };
    let got = state_of(&log);
    let without = model(&acked);
    prop_assert!(without.is_some(), "acknowledged changes always apply");
    let matches_without = Some(&got) == without.as_ref() && report.last_lsn == last_acked;
    let matches_with = maybe.as_ref().is_some_and(|m| {
        let mut ops = acked.clone();
        ops.push(m.clone());
        Some(&got) == model(&ops).as_ref() && report.last_lsn == last_acked + 1
    });
    prop_assert!(
        matches_without || matches_with,
        "recovered {:?} (last lsn {}), acknowledged up to {}",
        got.keys().collect::<Vec<_>>(),
        report.last_lsn,
        last_acked
    );
    // The repaired log takes new changes and reopens cleanly.
    let lsn = log
        .put(entry("after", TxState::Prepare, 10))
        .map_err(|e| TestCaseError::fail(format!("put after recovery: {e}")))?;
    prop_assert_eq!(lsn, report.last_lsn + 1);
    drop(log);
    let (log, again) = TxLog::open_in(image, ident(), opts)
        .map_err(|e| TestCaseError::fail(format!("second open: {e}")))?;
    prop_assert!(again.repairs.is_empty(), "{:?}", again.repairs);
    prop_assert!(log.contains(b"after"));
    Ok(cases_of(&report, &opts))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    #[test]
    fn crash_anywhere_single_thread(
        steps in proptest::collection::vec(step_strategy(6), 1..120),
        crash_op in 0u64..300,
        seed in any::<u64>(),
    ) {
        run_interleaved(&steps, crash_op, seed)?;
    }
}

/// Exhaustive: a fixed workload with rotations, power lost at every storage operation,
/// several crash images each.
#[test]
fn crash_at_every_operation_including_every_step_of_rotation() {
    let mut rng = XorShift64::new(42);
    let steps: Vec<Step> = (0..90)
        .map(|_| {
            let k = rng.below(5) as u8;
            match rng.below(3) {
                0 | 1 => Step::Put {
                    key: k,
                    state: 3,
                    data: 200,
                },
                _ => Step::Remove { key: k },
            }
        })
        .collect();
    // How many operations the whole run takes, and that it rotates.
    let s = SimStorage::new();
    let log = TxLog::create_in(s.clone(), ident(), crash_options()).expect("create");
    let start = s.op_count();
    for st in &steps {
        issue(&log, st).expect("no faults");
    }
    let total = s.op_count() - start;
    assert!(log.stats().rotations >= 3, "{:?}", log.stats());
    drop(log);
    let mut seen = std::collections::HashSet::new();
    // Torn writes over the zeros laid down ahead, separately.
    let mut seen_preallocated = std::collections::HashSet::new();
    for crash_op in 0..=total {
        for seed in 0..6 {
            let seed = seed * 7919 + crash_op;
            match run_interleaved(&steps, crash_op, seed) {
                Ok(cases) => {
                    if crash_options_for(seed).preallocate_bytes > 0 {
                        seen_preallocated.extend(cases.iter().copied());
                    }
                    seen.extend(cases);
                }
                Err(e) => panic!("crash at op {crash_op} seed {seed}: {e}"),
            }
        }
    }
    // The crash images really exercised recovery.
    for case in [
        Case::TornTail,
        Case::ZeroTail,
        Case::StaleSegment,
        Case::TempFile,
    ] {
        assert!(seen.contains(&case), "{case:?} never happened: {seen:?}");
    }
    assert!(
        seen_preallocated.contains(&Case::TornTail),
        "no torn write over preallocated space: {seen_preallocated:?}"
    );
}

/// A multi-threaded run: each thread owns its gtrids, so its own changes are applied
/// in its issue order; the crash image must show, per thread, a prefix of its changes
/// that includes every acknowledged one, and lsns must be consistent across threads.
fn run_threads(
    per_thread: Vec<Vec<Step>>,
    crash_op: u64,
    seed: u64,
    opts: Options,
) -> Result<Vec<Case>, TestCaseError> {
    let s = SimStorage::new();
    s.set_sync_delay(Duration::from_micros(100));
    let log = Arc::new(TxLog::create_in(s.clone(), ident(), opts).expect("create"));
    s.freeze_after_ops(crash_op);
    let threads = per_thread.len() as u8;
    let handles: Vec<_> = per_thread
        .into_iter()
        .enumerate()
        .map(|(t, steps)| {
            let log = log.clone();
            std::thread::spawn(move || {
                // Thread t's keys are t, t + threads, t + 2 * threads, ...
                let mut done: Vec<(Op, Option<u64>)> = Vec::new();
                for st in steps {
                    let st = match st {
                        Step::Put { key, state, data } => Step::Put {
                            key: key * threads + t as u8,
                            state,
                            data,
                        },
                        Step::Update { key, state, advice } => Step::Update {
                            key: key * threads + t as u8,
                            state,
                            advice,
                        },
                        Step::Remove { key } => Step::Remove {
                            key: key * threads + t as u8,
                        },
                    };
                    match issue(&log, &st) {
                        Ok(Some(lsn)) => done.push((to_op(&st), Some(lsn))),
                        Ok(None) => {}
                        Err(_) => {
                            done.push((to_op(&st), None));
                            break;
                        }
                    }
                }
                done
            })
        })
        .collect();
    let results: Vec<Vec<(Op, Option<u64>)>> = handles
        .into_iter()
        .map(|h| h.join().expect("worker"))
        .collect();
    drop(log);
    let image = s.crash_image(seed);
    let (log, report) = TxLog::open_in(image, ident(), opts)
        .map_err(|e| TestCaseError::fail(format!("open failed on a crash image: {e}")))?;
    let got = state_of(&log);
    let mut max_acked = 0;
    let mut first_missing_acked = u64::MAX;
    for (t, done) in results.iter().enumerate() {
        let mine: Index = got
            .iter()
            .filter(|(k, _)| {
                let n: u8 = String::from_utf8_lossy(&k[6..]).parse().unwrap_or(255);
                n % threads == t as u8
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let acked = done.iter().filter(|d| d.1.is_some()).count();
        let ops: Vec<Op> = done.iter().map(|d| d.0.clone()).collect();
        let ok = model(&ops[..acked]).as_ref() == Some(&mine)
            || (acked < ops.len() && model(&ops).as_ref() == Some(&mine));
        prop_assert!(
            ok,
            "thread {}: recovered state is no prefix that holds its {} acknowledged changes",
            t,
            acked
        );
        for d in done {
            if let Some(l) = d.1 {
                max_acked = max_acked.max(l);
                if l > report.last_lsn {
                    first_missing_acked = first_missing_acked.min(l);
                }
            }
        }
    }
    prop_assert!(
        report.last_lsn >= max_acked,
        "acknowledged lsn {} lost (last {})",
        max_acked,
        report.last_lsn
    );
    prop_assert_eq!(first_missing_acked, u64::MAX);
    Ok(cases_of(&report, &opts))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn crash_anywhere_with_concurrent_writers(
        per_thread in proptest::collection::vec(proptest::collection::vec(step_strategy(3), 1..40), 2..5),
        crash_op in 0u64..200,
        seed in any::<u64>(),
    ) {
        run_threads(per_thread, crash_op, seed, crash_options_for(seed))?;
    }
}

/// Seeded multi-threaded runs that must, among them, hit a torn write of several
/// records whose sectors persisted out of order.
#[test]
fn concurrent_crashes_produce_and_repair_torn_batches() {
    let mut seen = std::collections::HashSet::new();
    let mut rng = XorShift64::new(7);
    // Large segments: no rotation, so most operations are batch writes and syncs.
    let opts = Options {
        segment_bytes_max: 1 << 20,
        ..small_options()
    };
    for round in 0..300u64 {
        let per_thread: Vec<Vec<Step>> = (0..6)
            .map(|_| {
                (0..30)
                    .map(|_| Step::Put {
                        key: rng.below(3) as u8,
                        state: 3,
                        data: 150 + rng.below(400) as u16,
                    })
                    .collect()
            })
            .collect();
        let crash_op = 10 + rng.below(60);
        match run_threads(per_thread, crash_op, round, opts) {
            Ok(cases) => seen.extend(cases),
            Err(e) => panic!("round {round}: {e}"),
        }
        if seen.contains(&Case::TornBatch) && seen.contains(&Case::ZeroTail) {
            break;
        }
    }
    assert!(
        seen.contains(&Case::TornBatch) && seen.contains(&Case::ZeroTail),
        "{seen:?}"
    );
}

/// Offsets of the records after the snapshot of a segment.
fn body_records(b: &[u8]) -> Vec<(usize, usize)> {
    let mut off = HEADER_BLOCK_BYTES;
    let mut snapshot_done = false;
    let mut v = Vec::new();
    while let Frame::Valid { end, payload, .. } = read_frame(b, off) {
        if snapshot_done {
            v.push((off, end));
        }
        if b[payload.start] == 4 {
            snapshot_done = true;
        }
        off = end;
    }
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn corruption_of_an_acknowledged_record_is_refused_with_its_offset(
        steps in proptest::collection::vec(step_strategy(8), 150..250),
        pick in any::<u64>(),
        byte in any::<u64>(),
        mask in 1u8..=255,
    ) {
        let s = SimStorage::new();
        let opts = Options { segment_bytes_max: 1 << 20, ..small_options() };
        let log = TxLog::create_in(s.clone(), ident(), opts).expect("create");
        for st in &steps {
            issue(&log, st).map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        drop(log);
        let name = s.names().pop().expect("segment");
        let b = s.file_bytes(&name).expect("bytes");
        // In this single-threaded run every record is a write of its own, so every
        // record but the last is followed by a later write: damage to it cannot be a
        // crash. (Damage to the last one is indistinguishable from a torn write and is
        // truncated: checked below.)
        let all = body_records(&b);
        prop_assume!(all.len() >= 2);
        let recs = &all[..all.len() - 1];
        let (off, end) = recs[(pick % recs.len() as u64) as usize];
        let at = off + (byte % (end - off) as u64) as usize;
        prop_assert!(s.corrupt(&name, at, mask));
        match TxLog::open_in(s.clone(), ident(), opts) {
            Err(LogError::Corrupt { case, offset, file, .. }) => {
                prop_assert_eq!(case, Case::MidLogCorruption);
                prop_assert_eq!(offset, off as u64);
                prop_assert!(file.to_string_lossy().ends_with(&name));
            }
            other => prop_assert!(false, "expected a refusal at {}, got {:?}", off, other.map(|x| x.1)),
        }
        // Undo it (XOR again); the same damage to the last record looks like a torn
        // write, and is repaired.
        prop_assert!(s.corrupt(&name, at, mask));
        let (last_off, last_end) = all[all.len() - 1];
        let at = last_off + (byte % (last_end - last_off) as u64) as usize;
        prop_assert!(s.corrupt(&name, at, mask));
        let (_, report) = TxLog::open_in(s.clone(), ident(), opts)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(report.repairs.len(), 1);
        prop_assert_eq!(report.repairs[0].case, Case::TornTail);
        prop_assert_eq!(report.repairs[0].offset, last_off as u64);
    }
}
