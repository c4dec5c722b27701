//! Tests of the log's API and of every row of the recovery decision table, on the
//! simulated storage and (briefly, to keep fsyncs few) on real files.

use std::sync::Arc;
use std::time::Duration;

use crate::record::{encode_record, frame, read_frame, Frame, Op, RECORD_BYTES_MAX};
use crate::segment::{segment_name, HEADER_BLOCK_BYTES};
use crate::test_dir::TestDir;
use crate::{
    Advice, Branch, Case, Decision, Entry, GroupCommit, LogError, LogIdentity, Options, SimStorage,
    TxLog, TxState,
};

pub(crate) fn ident() -> LogIdentity {
    LogIdentity::new("bank", "node-a")
}

pub(crate) fn small_options() -> Options {
    Options {
        entries_max: 10_000,
        batch_bytes_max: RECORD_BYTES_MAX,
        segment_bytes_max: 1 << 20,
        group_commit: GroupCommit::On,
        commit_delay: crate::COMMIT_DELAY_DEFAULT,
        // The format tests look at files that end at their last record.
        preallocate_bytes: 0,
    }
}

pub(crate) fn entry(key: &str, state: TxState, data_bytes: usize) -> Entry {
    Entry {
        gtrid: key.as_bytes().to_vec(),
        state,
        advice: Advice::None,
        branches: vec![Branch {
            rm: 7,
            bqual: b"b1".to_vec(),
            state: 1,
        }],
        data: vec![0xAB; data_bytes],
    }
}

fn first_segment() -> String {
    segment_name(1)
}

fn open_sim(s: &SimStorage) -> Result<(TxLog<SimStorage>, crate::OpenReport), LogError> {
    TxLog::open_in(s.clone(), ident(), small_options())
}

fn new_sim() -> (SimStorage, TxLog<SimStorage>) {
    let s = SimStorage::new();
    let log = TxLog::create_in(s.clone(), ident(), small_options()).expect("create");
    (s, log)
}

#[test]
fn changes_are_visible_and_survive_reopen() {
    let (s, log) = new_sim();
    assert!(log.is_empty());
    let l1 = log.put(entry("t1", TxState::Prepare, 10)).expect("put");
    let l2 = log.put(entry("t2", TxState::Active, 0)).expect("put");
    assert_eq!((l1, l2), (1, 2));
    log.update(b"t2", Some(TxState::Prepare), Some(Advice::Commit))
        .expect("update");
    log.put(entry("t3", TxState::Commit, 0)).expect("put");
    log.remove(b"t3").expect("remove");
    assert_eq!(log.len(), 2);
    assert!(log.contains(b"t1") && !log.contains(b"t3"));
    let t2 = log.get(b"t2").expect("t2");
    assert_eq!((t2.state, t2.advice), (TxState::Prepare, Advice::Commit));
    assert_eq!(log.in_state(TxState::Prepare).len(), 2);
    assert!(log.in_state(TxState::Active).is_empty());
    let all: Vec<Entry> = log.iter().collect();
    assert_eq!(all.len(), 2);
    assert_eq!(log.durable_lsn(), 5);
    drop(log);

    let (log, report) = open_sim(&s).expect("reopen");
    assert!(report.repairs.is_empty(), "{report:?}");
    assert_eq!(report.last_lsn, 5);
    assert_eq!(report.entries, 2);
    assert_eq!(log.iter().collect::<Vec<_>>(), all);
    assert_eq!(log.put(entry("t4", TxState::Active, 0)).expect("put"), 6);
}

#[test]
fn misuse_is_reported_without_writing() {
    let (s, log) = new_sim();
    let writes = s.write_count();
    assert!(matches!(
        log.update(b"nope", Some(TxState::Commit), None),
        Err(LogError::NotFound { .. })
    ));
    assert!(matches!(
        log.remove(b"nope"),
        Err(LogError::NotFound { .. })
    ));
    assert!(matches!(
        log.update(b"nope", None, None),
        Err(LogError::InvalidEntry(crate::EntryError::EmptyUpdate))
    ));
    assert!(matches!(
        log.put(entry("", TxState::Active, 0)),
        Err(LogError::InvalidEntry(crate::EntryError::GtridEmpty))
    ));
    assert!(matches!(
        log.put(entry("x", TxState::Active, 4097)),
        Err(LogError::InvalidEntry(_))
    ));
    assert!(matches!(
        log.remove(&[1; 65]),
        Err(LogError::InvalidEntry(_))
    ));
    assert_eq!(s.write_count(), writes);
    assert!(!log.is_poisoned());
}

#[test]
fn a_full_log_refuses_new_gtrids_but_not_replacements() {
    let s = SimStorage::new();
    let opts = Options {
        entries_max: 3,
        ..small_options()
    };
    let log = TxLog::create_in(s, ident(), opts).expect("create");
    for k in ["a", "b", "c"] {
        log.put(entry(k, TxState::Prepare, 0)).expect("put");
    }
    let full = log.put(entry("d", TxState::Prepare, 0));
    assert!(
        matches!(full, Err(LogError::Full { entries_max: 3 })),
        "{full:?}"
    );
    log.put(entry("a", TxState::Commit, 0))
        .expect("replacing is fine");
    log.update(b"b", Some(TxState::Commit), None)
        .expect("update");
    log.remove(b"c").expect("remove");
    log.put(entry("d", TxState::Prepare, 0))
        .expect("room again");
    assert_eq!(log.len(), 3);
}

#[test]
fn create_never_overwrites_and_open_checks_identity() {
    let (s, log) = new_sim();
    log.put(entry("t1", TxState::Prepare, 0)).expect("put");
    drop(log);
    let again = TxLog::create_in(s.clone(), ident(), small_options());
    assert!(
        matches!(again, Err(LogError::AlreadyExists { .. })),
        "{again:?}"
    );
    let other = TxLog::open_in(
        s.clone(),
        LogIdentity::new("bank", "node-b"),
        small_options(),
    );
    match other {
        Err(e @ LogError::Foreign { .. }) => {
            assert!(
                e.to_string()
                    .contains("this log belongs to domain bank node node-a"),
                "{e}"
            );
        }
        other => panic!("expected Foreign, got {other:?}"),
    }
    let missing = open_sim(&SimStorage::new());
    match missing {
        Err(e @ LogError::NoLog { .. }) => assert!(e.to_string().contains("create it first")),
        other => panic!("expected NoLog, got {other:?}"),
    }
    let (log, _) = open_sim(&s).expect("still intact");
    assert!(log.contains(b"t1"));
}

#[test]
fn options_and_identity_are_validated() {
    let bad = [
        Options {
            entries_max: 0,
            ..small_options()
        },
        Options {
            batch_bytes_max: RECORD_BYTES_MAX - 1,
            ..small_options()
        },
        Options {
            segment_bytes_max: 100,
            ..small_options()
        },
    ];
    for o in bad {
        assert!(matches!(
            TxLog::create_in(SimStorage::new(), ident(), o),
            Err(LogError::InvalidOptions { .. })
        ));
    }
    assert!(matches!(
        TxLog::create_in(
            SimStorage::new(),
            LogIdentity::new("", "n"),
            small_options()
        ),
        Err(LogError::InvalidOptions { .. })
    ));
}

#[test]
fn a_failed_sync_poisons_the_log_for_good() {
    let (s, log) = new_sim();
    log.put(entry("ok", TxState::Prepare, 0)).expect("put");
    s.fail_sync_at(1);
    let r = log.put(entry("lost?", TxState::Prepare, 0));
    assert!(matches!(r, Err(LogError::Poisoned { .. })), "{r:?}");
    assert!(log.is_poisoned());
    let writes = s.write_count();
    let syncs = s.sync_count();
    for _ in 0..3 {
        assert!(matches!(
            log.put(entry("later", TxState::Prepare, 0)),
            Err(LogError::Poisoned { .. })
        ));
        assert!(matches!(log.remove(b"ok"), Err(LogError::Poisoned { .. })));
    }
    assert_eq!(
        (s.write_count(), s.sync_count()),
        (writes, syncs),
        "no retry"
    );
    // Reads still show the durable state, without the unacknowledged change.
    assert!(log.contains(b"ok") && !log.contains(b"lost?"));
    drop(log);
    for seed in 0..20 {
        let (log, _) = open_sim(&s.crash_image(seed)).expect("recover");
        assert!(log.contains(b"ok"));
        assert!(!log.contains(b"later"));
    }
}

#[test]
fn a_failed_write_poisons_the_log_and_recovery_cuts_the_half_record() {
    let (s, log) = new_sim();
    log.put(entry("ok", TxState::Prepare, 0)).expect("put");
    s.fail_write_at(1);
    assert!(matches!(
        log.put(entry("half", TxState::Prepare, 300)),
        Err(LogError::Poisoned { .. })
    ));
    drop(log);
    let (log, report) = open_sim(&s).expect("recover");
    assert!(log.contains(b"ok") && !log.contains(b"half"));
    assert_eq!(report.repairs.len(), 1, "{report:?}");
    assert_eq!(report.repairs[0].case, Case::TornTail);
}

#[test]
fn poisoning_wakes_every_waiter() {
    let (s, log) = new_sim();
    s.set_sync_delay(Duration::from_millis(2));
    s.fail_sync_at(3);
    let log = Arc::new(log);
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut oks = 0;
                for i in 0..50 {
                    match log.put(entry(&format!("{t}-{i}"), TxState::Prepare, 0)) {
                        Ok(_) => oks += 1,
                        Err(LogError::Poisoned { .. }) => return oks,
                        Err(e) => panic!("{e}"),
                    }
                }
                oks
            })
        })
        .collect();
    let oks: usize = handles.into_iter().map(|h| h.join().expect("join")).sum();
    assert!(oks < 400);
    assert!(log.is_poisoned());
}

#[test]
fn concurrent_changes_share_flushes() {
    let (s, log) = new_sim();
    s.set_sync_delay(Duration::from_micros(300));
    let log = Arc::new(log);
    let handles: Vec<_> = (0..16)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 0..30 {
                    let k = format!("{t}-{i}");
                    log.put(entry(&k, TxState::Prepare, 50)).expect("put");
                    log.update(k.as_bytes(), Some(TxState::Commit), None)
                        .expect("update");
                    if i % 2 == 0 {
                        log.remove(k.as_bytes()).expect("remove");
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("join");
    }
    let st = log.stats();
    assert_eq!(st.records, 16 * (30 * 2 + 15));
    assert!(
        st.flushes * 3 < st.records,
        "batches should hold several records: {st:?}"
    );
    assert_eq!(log.len(), 16 * 15);
    let before: Vec<Entry> = log.iter().collect();
    drop(log);
    let (log, report) = open_sim(&s).expect("reopen");
    assert!(report.repairs.is_empty());
    assert_eq!(log.iter().collect::<Vec<_>>(), before);
}

#[test]
fn a_full_pending_buffer_makes_callers_wait_not_fail() {
    // Records of ~3 KB against a 22 KB batch limit: writers wait for room often.
    let (_s, log) = new_sim();
    let log = Arc::new(log);
    let handles: Vec<_> = (0..24)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 0..40 {
                    let k = format!("{t}-{i}");
                    log.put(entry(&k, TxState::Prepare, 3000)).expect("put");
                    log.remove(k.as_bytes()).expect("remove");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("join");
    }
    let st = log.stats();
    assert_eq!(st.records, 24 * 80);
    assert!(st.bytes / st.flushes <= RECORD_BYTES_MAX as u64);
    assert!(log.is_empty());
}

#[test]
fn group_commit_off_syncs_every_record() {
    let s = SimStorage::new();
    let opts = Options {
        group_commit: GroupCommit::Off,
        ..small_options()
    };
    let log = Arc::new(TxLog::create_in(s.clone(), ident(), opts).expect("create"));
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 0..10 {
                    let k = format!("{t}-{i}");
                    log.put(entry(&k, TxState::Prepare, 0)).expect("put");
                    log.remove(k.as_bytes()).expect("remove");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("join");
    }
    let st = log.stats();
    assert_eq!((st.records, st.flushes), (80, 80));
    assert!(log.is_empty());
}

#[test]
fn group_commit_off_rotates_and_recovers_too() {
    let s = SimStorage::new();
    let opts = Options {
        group_commit: GroupCommit::Off,
        segment_bytes_max: 8192,
        ..small_options()
    };
    let log = TxLog::create_in(s.clone(), ident(), opts).expect("create");
    for i in 0..200 {
        log.put(entry(&format!("k{}", i % 7), TxState::Prepare, 100))
            .expect("put");
    }
    assert!(log.stats().rotations > 2);
    let before: Vec<Entry> = log.iter().collect();
    drop(log);
    for seed in 0..10 {
        let (log, _) = TxLog::open_in(s.crash_image(seed), ident(), opts).expect("open");
        assert_eq!(log.iter().collect::<Vec<_>>(), before);
    }
}

#[test]
fn rotation_bounds_the_directory_and_keeps_the_state() {
    let s = SimStorage::new();
    let opts = Options {
        segment_bytes_max: 8192,
        ..small_options()
    };
    let log = TxLog::create_in(s.clone(), ident(), opts).expect("create");
    for i in 0..400 {
        let k = format!("k{}", i % 13);
        if log.contains(k.as_bytes()) && i % 3 == 0 {
            log.remove(k.as_bytes()).expect("remove");
        } else {
            log.put(entry(&k, TxState::Prepare, 100)).expect("put");
        }
        let names = s.names();
        assert_eq!(names.len(), 1, "one segment at rest: {names:?}");
    }
    assert!(log.stats().rotations > 5, "{:?}", log.stats());
    let before: Vec<Entry> = log.iter().collect();
    let lsn = log.durable_lsn();
    drop(log);
    let (log, report) = TxLog::open_in(s.clone(), ident(), opts).expect("reopen");
    assert!(report.repairs.is_empty());
    assert_eq!(report.last_lsn, lsn);
    assert_eq!(log.iter().collect::<Vec<_>>(), before);
}

// ---- the decision table, row by row, on crafted files ----

fn segment_bytes(s: &SimStorage) -> (String, Vec<u8>) {
    let name = s
        .names()
        .into_iter()
        .rfind(|n| n.ends_with(".seg"))
        .expect("a segment");
    let b = s.file_bytes(&name).expect("bytes");
    (name, b)
}

/// Offsets of the records after the snapshot.
fn record_offsets(b: &[u8]) -> Vec<usize> {
    let mut off = HEADER_BLOCK_BYTES;
    let mut v = Vec::new();
    while let Frame::Valid { end, .. } = read_frame(b, off) {
        v.push(off);
        off = end;
    }
    v
}

fn expect_refusal(s: &SimStorage, case: Case, offset: u64) {
    match open_sim(s) {
        Err(LogError::Corrupt {
            case: c, offset: o, ..
        }) => assert_eq!((c, o), (case, offset)),
        other => panic!("expected {case:?} at {offset}, got {other:?}"),
    }
}

fn log_with(n: usize) -> SimStorage {
    let (s, log) = new_sim();
    for i in 0..n {
        log.put(entry(&format!("t{i}"), TxState::Prepare, 100))
            .expect("put");
    }
    s
}

#[test]
fn case_clean_end() {
    let s = log_with(3);
    let (_, r) = open_sim(&s).expect("open");
    assert!(r.repairs.is_empty());
    assert_eq!(Case::CleanEnd.decision(), Decision::Accept);
}

#[test]
fn case_zero_tail_is_kept_and_written_over() {
    let s = log_with(3);
    let (name, mut b) = segment_bytes(&s);
    let len = b.len();
    b.extend_from_slice(&[0; 3000]);
    s.put_file(&name, &b);
    let (log, r) = open_sim(&s).expect("open");
    assert_eq!(log.len(), 3);
    assert!(r.repairs.is_empty(), "{r:?}");
    assert_eq!(Case::ZeroTail.decision(), Decision::Accept);
    assert_eq!(s.file_bytes(&name).map(|b| b.len()), Some(len + 3000));
    // The next record goes where the records end, over the zeros.
    log.put(entry("t3", TxState::Commit, 10)).expect("put");
    let after = s.file_bytes(&name).expect("segment");
    assert_eq!(after.len(), len + 3000);
    assert_eq!(record_offsets(&after).last().copied(), Some(len));
    drop(log);
    let (log, r) = open_sim(&s).expect("reopen");
    assert_eq!((log.len(), r.last_lsn), (4, 4));
    assert!(r.repairs.is_empty());
}

#[test]
fn preallocated_space_is_laid_down_ahead_and_survives_reopen_and_tears() {
    let opts = Options {
        preallocate_bytes: 4096,
        ..small_options()
    };
    let s = SimStorage::new();
    let log = TxLog::create_in(s.clone(), ident(), opts).expect("create");
    for i in 0..40 {
        log.put(entry(&format!("t{i}"), TxState::Prepare, 100))
            .expect("put");
    }
    let (name, b) = segment_bytes(&s);
    let offs = record_offsets(&b);
    let last = offs[offs.len() - 1];
    let records_end = b.len() - b.iter().rev().take_while(|&&x| x == 0).count();
    assert!(last < records_end);
    // Zeros ahead of the records: at least a quarter of the stretch, in whole pages.
    assert!(b.len() - records_end >= 1024, "{} {}", b.len(), records_end);
    assert_eq!(b.len() % 4096, 0);
    drop(log);
    let (log, r) = TxLog::open_in(s.clone(), ident(), opts).expect("reopen");
    assert!(r.repairs.is_empty(), "{r:?}");
    assert_eq!(log.len(), 40);
    log.put(entry("t40", TxState::Commit, 10)).expect("put");
    drop(log);
    // A write torn in the preallocated space (part of a record, zeros after it) is
    // a torn tail: cut off, and the log goes on.
    let (name2, mut b) = segment_bytes(&s);
    assert_eq!(name, name2);
    let offs = record_offsets(&b);
    let torn_at = offs[offs.len() - 1];
    for x in &mut b[torn_at + 20..torn_at + 60] {
        *x = 0;
    }
    s.put_file(&name, &b);
    let (log, r) = TxLog::open_in(s.clone(), ident(), opts).expect("open torn");
    assert_eq!(r.repairs.len(), 1, "{r:?}");
    assert_eq!(
        (r.repairs[0].case, r.repairs[0].offset),
        (Case::TornTail, torn_at as u64)
    );
    assert_eq!(log.len(), 40);
    for i in 41..100 {
        log.put(entry(&format!("t{i}"), TxState::Prepare, 100))
            .expect("put after the repair");
    }
    drop(log);
    let (log, r) = TxLog::open_in(s.clone(), ident(), opts).expect("reopen");
    assert!(r.repairs.is_empty(), "{r:?}");
    assert_eq!(log.len(), 99);
}

#[test]
fn case_torn_tail_is_truncated_with_file_and_offset() {
    let s = log_with(3);
    let (name, b) = segment_bytes(&s);
    let offs = record_offsets(&b);
    let last = offs[offs.len() - 1];
    // Cut the last record in its payload.
    s.put_file(&name, &b[..b.len() - 5]);
    let (log, r) = open_sim(&s).expect("open");
    assert_eq!(log.len(), 2);
    assert_eq!(r.last_lsn, 2);
    let rep = &r.repairs[0];
    assert_eq!((rep.case, rep.offset), (Case::TornTail, last as u64));
    assert!(rep.file.to_string_lossy().ends_with(&name));
    // Cut in the header, and garbage instead of a record.
    s.put_file(&name, &b[..last + 7]);
    assert_eq!(
        open_sim(&s).expect("open").1.repairs[0].case,
        Case::TornTail
    );
    let mut g = b[..last].to_vec();
    g.extend_from_slice(&[0x55; 40]);
    s.put_file(&name, &g);
    assert_eq!(
        open_sim(&s).expect("open").1.repairs[0].case,
        Case::TornTail
    );
}

#[test]
fn case_torn_batch_is_truncated() {
    let (s, log) = new_sim();
    log.put(entry("a", TxState::Prepare, 100)).expect("put");
    drop(log);
    let (name, mut b) = segment_bytes(&s);
    // One write holding lsns 2, 3, 4 whose first record lost a sector.
    let start = b.len();
    for (pos, lsn) in [(0u32, 2u64), (1, 3), (2, 4)] {
        let mut p = Vec::new();
        crate::record::encode_payload(
            &Op::Put(entry(&format!("x{lsn}"), TxState::Prepare, 100)),
            &mut p,
        );
        crate::record::set_batch_pos(&mut p, pos);
        frame(lsn, &p, &mut b);
    }
    b[start + 20] ^= 0xFF;
    s.put_file(&name, &b);
    let (log, r) = open_sim(&s).expect("open");
    assert_eq!(log.len(), 1);
    assert_eq!(
        (r.repairs[0].case, r.repairs[0].offset),
        (Case::TornBatch, start as u64)
    );
}

#[test]
fn case_mid_log_corruption_is_refused_when_a_later_write_follows() {
    // Two writes: lsn 2 alone, then lsn 3 alone. Damage to lsn 2 is refused even
    // though lsn 3 is close by: it was written after lsn 2's fdatasync returned.
    let s = log_with(3);
    let (name, b) = segment_bytes(&s);
    let offs = record_offsets(&b);
    s.corrupt(&name, offs[1] + 20, 0x01);
    expect_refusal(&s, Case::MidLogCorruption, offs[1] as u64);
    // And nothing was changed by the refusal.
    assert_eq!(s.file_bytes(&name).map(|x| x.len()), Some(b.len()));
}

#[test]
fn case_mid_log_corruption_is_refused_beyond_the_batch_window() {
    let (s, log) = new_sim();
    log.put(entry("a", TxState::Prepare, 100)).expect("put");
    drop(log);
    let (name, mut b) = segment_bytes(&s);
    // One huge write (as if batch_bytes_max had been larger): the record at its start
    // is damaged and valid records of the same write follow beyond the window.
    let start = b.len();
    let mut lsn = 2u64;
    while b.len() < start + 2 * RECORD_BYTES_MAX {
        let mut p = Vec::new();
        crate::record::encode_payload(
            &Op::Put(entry(&format!("x{lsn}"), TxState::Prepare, 3000)),
            &mut p,
        );
        crate::record::set_batch_pos(&mut p, (lsn - 2) as u32);
        frame(lsn, &p, &mut b);
        lsn += 1;
    }
    b[start + 20] ^= 0xFF;
    s.put_file(&name, &b);
    expect_refusal(&s, Case::MidLogCorruption, start as u64);
}

#[test]
fn case_lsn_discontinuity_is_refused() {
    let s = log_with(2);
    let (name, mut b) = segment_bytes(&s);
    let at = b.len();
    encode_record(
        7,
        &Op::Remove {
            gtrid: b"t0".to_vec(),
        },
        &mut b,
    );
    s.put_file(&name, &b);
    expect_refusal(&s, Case::LsnDiscontinuity, at as u64);
}

#[test]
fn case_unknown_kind_is_refused() {
    let s = log_with(2);
    let (name, mut b) = segment_bytes(&s);
    let at = b.len();
    frame(3, &[9, 0, 0, 0, 0, 1, 2, 3], &mut b);
    s.put_file(&name, &b);
    expect_refusal(&s, Case::UnknownKind, at as u64);
}

#[test]
fn case_malformed_record_is_refused() {
    let s = log_with(2);
    let (name, b) = segment_bytes(&s);
    let mut bad = b.clone();
    encode_record(
        3,
        &Op::Remove {
            gtrid: b"absent".to_vec(),
        },
        &mut bad,
    );
    s.put_file(&name, &bad);
    expect_refusal(&s, Case::MalformedRecord, b.len() as u64);
    let mut bad = b.clone();
    frame(3, &[3, 0, 0, 0, 0, 0], &mut bad);
    s.put_file(&name, &bad);
    expect_refusal(&s, Case::MalformedRecord, b.len() as u64);
    let mut bad = b.clone();
    encode_record(3, &Op::SnapshotEnd { entries: 0 }, &mut bad);
    s.put_file(&name, &bad);
    expect_refusal(&s, Case::MalformedRecord, b.len() as u64);
}

#[test]
fn case_header_invalid_and_version_unsupported_are_refused() {
    let s = log_with(1);
    let name = first_segment();
    s.corrupt(&name, 60, 0x10);
    expect_refusal(&s, Case::HeaderInvalid, 0);
    let s = log_with(1);
    s.corrupt(&name, 11, 0x02);
    expect_refusal(&s, Case::VersionUnsupported, 0);
    let s = log_with(1);
    let b = s.file_bytes(&name).expect("bytes");
    s.put_file(&name, &b[..100]);
    expect_refusal(&s, Case::HeaderInvalid, 0);
    // A file renamed to another seq.
    let s = log_with(1);
    let b = s.file_bytes(&name).expect("bytes");
    s.put_file(&segment_name(5), &b);
    expect_refusal(&s, Case::HeaderInvalid, 32);
}

#[test]
fn case_snapshot_incomplete_is_refused() {
    let s = SimStorage::new();
    let opts = Options {
        segment_bytes_max: 8192,
        ..small_options()
    };
    let log = TxLog::create_in(s.clone(), ident(), opts).expect("create");
    let mut i = 0;
    while log.stats().rotations == 0 {
        log.put(entry(&format!("k{}", i % 5), TxState::Prepare, 200))
            .expect("put");
        i += 1;
    }
    drop(log);
    let (name, _) = segment_bytes(&s);
    s.corrupt(&name, HEADER_BLOCK_BYTES + 30, 0x01);
    match TxLog::open_in(s.clone(), ident(), opts) {
        Err(LogError::Corrupt { case, offset, .. }) => {
            assert_eq!(
                (case, offset),
                (Case::SnapshotIncomplete, HEADER_BLOCK_BYTES as u64)
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn cases_temp_file_and_stale_segment_are_deleted() {
    let s = log_with(2);
    let b = s.file_bytes(&first_segment()).expect("bytes");
    // A stale segment 1 next to a segment 2 whose snapshot holds the same state.
    let (log, _) = open_sim(&s).expect("open");
    let entries: Vec<Entry> = log.iter().collect();
    drop(log);
    let header = crate::segment::SegmentHeader::decode(&b).expect("header");
    let h2 = crate::segment::SegmentHeader {
        seq: 2,
        first_lsn: 3,
        ..header
    };
    crate::segment::write_segment(&s, &h2, entries.iter()).expect("write seg 2");
    s.put_file("txlog-0000000000000003.seg.tmp", b"partial");
    s.put_file("unrelated.txt", b"keep me");
    let (log, r) = open_sim(&s).expect("open");
    assert_eq!(log.len(), 2);
    let cases: Vec<Case> = r.repairs.iter().map(|x| x.case).collect();
    assert_eq!(cases, vec![Case::StaleSegment, Case::TempFile]);
    assert_eq!(
        s.names(),
        vec![segment_name(2), "unrelated.txt".to_string()]
    );
}

#[test]
fn case_header_foreign_older_segment_is_refused() {
    let s = log_with(1);
    let other = log_with(1);
    let b = other.file_bytes(&first_segment()).expect("bytes");
    // Move ours to seq 2 (through a proper rotation) and put another log's as seq 1.
    let (log, _) = open_sim(&s).expect("open");
    let entries: Vec<Entry> = log.iter().collect();
    drop(log);
    let ours = crate::segment::SegmentHeader::decode(&s.file_bytes(&first_segment()).expect("b"))
        .expect("header");
    crate::segment::write_segment(
        &s,
        &crate::segment::SegmentHeader {
            seq: 2,
            first_lsn: 2,
            ..ours
        },
        entries.iter(),
    )
    .expect("seg 2");
    s.put_file(&first_segment(), &b);
    expect_refusal(&s, Case::HeaderForeign, 16);
}

#[test]
fn case_older_segment_with_another_seq_in_its_header_is_refused() {
    // Our own segment 1, copied to the name of segment 3 and then made the newest as
    // segment 4: the file named 3 is ours by log id but says it is segment 1. It is
    // refused, as the newest would be, rather than deleted as a stale segment.
    let s = log_with(1);
    let (log, _) = open_sim(&s).expect("open");
    let entries: Vec<Entry> = log.iter().collect();
    drop(log);
    let first = s.file_bytes(&first_segment()).expect("bytes");
    let ours = crate::segment::SegmentHeader::decode(&first).expect("header");
    s.put_file(&segment_name(3), &first);
    crate::segment::write_segment(
        &s,
        &crate::segment::SegmentHeader {
            seq: 4,
            first_lsn: 2,
            ..ours
        },
        entries.iter(),
    )
    .expect("seg 4");
    match open_sim(&s) {
        Err(LogError::Corrupt {
            case, offset, file, ..
        }) => {
            assert_eq!((case, offset), (Case::HeaderInvalid, 32));
            assert!(file.ends_with(segment_name(3)), "{file:?}");
        }
        other => panic!("expected a refusal of segment 3, got {other:?}"),
    }
    assert!(s.file_bytes(&segment_name(3)).is_some(), "nothing deleted");
}

#[test]
fn case_no_segment_is_refused() {
    assert_eq!(Case::NoSegment.decision(), Decision::Refuse);
    let s = SimStorage::new();
    s.put_file("txlog-0000000000000001.seg.tmp", b"an interrupted create");
    assert!(matches!(open_sim(&s), Err(LogError::NoLog { .. })));
    // create cleans the leftover up.
    TxLog::create_in(s.clone(), ident(), small_options()).expect("create");
    assert_eq!(s.names(), vec![first_segment()]);
}

// ---- real files (few fsyncs, to stay fast) ----

#[test]
fn real_files_create_open_refuse() {
    let dir = TestDir::new("real");
    let p = dir.path().join("log");
    assert!(matches!(
        TxLog::open(&p, ident(), Options::default()),
        Err(LogError::NoLog { .. })
    ));
    let log = TxLog::create(&p, ident(), Options::default()).expect("create");
    assert!(matches!(
        TxLog::open(&p, ident(), Options::default()),
        Err(LogError::InUse { .. })
    ));
    log.put(entry("t1", TxState::Prepare, 10)).expect("put");
    log.update(b"t1", None, Some(Advice::Rollback))
        .expect("update");
    drop(log);
    assert!(matches!(
        TxLog::create(&p, ident(), Options::default()),
        Err(LogError::AlreadyExists { .. })
    ));
    assert!(matches!(
        TxLog::open(&p, LogIdentity::new("other", "node-a"), Options::default()),
        Err(LogError::Foreign { .. })
    ));
    let (log, r) = TxLog::open(&p, ident(), Options::default()).expect("open");
    assert!(r.repairs.is_empty());
    assert_eq!(log.get(b"t1").map(|e| e.advice), Some(Advice::Rollback));
}

#[test]
fn real_files_group_commit_and_recovery() {
    let dir = TestDir::new("group");
    let opts = Options {
        segment_bytes_max: 16 * 1024,
        ..Options::default()
    };
    let log = Arc::new(TxLog::create(dir.path(), ident(), opts).expect("create"));
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 0..12 {
                    let k = format!("{t}-{i}");
                    log.put(entry(&k, TxState::Prepare, 150)).expect("put");
                    if i % 3 != 0 {
                        log.remove(k.as_bytes()).expect("remove");
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("join");
    }
    assert_eq!(log.len(), 8 * 4);
    let before: Vec<Entry> = log.iter().collect();
    let rotations = log.stats().rotations;
    drop(log);
    assert!(rotations > 0);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(|e| e.ok())
        .collect();
    assert_eq!(names.len(), 1, "one segment at rest");
    // A torn tail on a real file: a write cut short in the space laid down ahead.
    let seg = names[0].path();
    let mut bytes = std::fs::read(&seg).expect("read");
    let len = record_offsets(&bytes)
        .last()
        .and_then(|&o| match read_frame(&bytes, o) {
            Frame::Valid { end, .. } => Some(end),
            _ => None,
        })
        .expect("records");
    assert!(bytes.len() > len, "zeros laid down ahead of the records");
    bytes[len..len + 7].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7]);
    std::fs::write(&seg, &bytes).expect("write");
    let (log, r) = TxLog::open(dir.path(), ident(), opts).expect("open");
    assert_eq!(log.iter().collect::<Vec<_>>(), before);
    assert_eq!(r.repairs.len(), 1);
    assert_eq!(
        (r.repairs[0].case, r.repairs[0].offset),
        (Case::TornTail, len as u64)
    );
    assert_eq!(std::fs::metadata(&seg).expect("stat").len(), len as u64);
}

#[test]
fn lazy_removals_ride_on_the_next_flush() {
    let (s, log) = new_sim();
    log.put(entry("a", TxState::Commit, 50)).expect("put a");
    let flushes = log.stats().flushes;
    log.remove_lazy(b"a").expect("lazy remove");
    // Not durable yet: no flush of its own, still readable, gone from the pending view.
    assert_eq!(log.stats().flushes, flushes);
    assert!(log.get(b"a").is_some());
    assert!(!log.holds(b"a"));
    assert!(matches!(
        log.remove_lazy(b"a"),
        Err(LogError::NotFound { .. })
    ));
    // A crash now brings the entry back (harmless by contract).
    let (back, _) = open_sim(&s.crash_image(1)).expect("open crash image");
    assert!(back.get(b"a").is_some());
    // The next ordinary change flushes it along: one flush for both.
    log.put(entry("b", TxState::Commit, 50)).expect("put b");
    assert_eq!(log.stats().flushes, flushes + 1);
    assert!(log.get(b"a").is_none());
    // sync makes a lone lazy removal durable.
    log.remove_lazy(b"b").expect("lazy remove b");
    log.sync().expect("sync");
    assert!(log.get(b"b").is_none());
    let (reopened, _) = open_sim(&s.crash_image(2)).expect("reopen");
    assert!(reopened.get(b"a").is_none() && reopened.get(b"b").is_none());
    // sync with nothing pending does nothing.
    let f = log.stats().flushes;
    log.sync().expect("idle sync");
    assert_eq!(log.stats().flushes, f);
}

#[test]
fn a_lone_caller_never_waits_for_the_commit_delay() {
    let opts = Options {
        commit_delay: crate::COMMIT_DELAY_MAX,
        ..small_options()
    };
    let log = TxLog::create_in(SimStorage::new(), ident(), opts).expect("create");
    for i in 0..200 {
        let k = format!("k{i}");
        log.put(entry(&k, TxState::Commit, 0)).expect("put");
        log.remove(k.as_bytes()).expect("remove");
    }
    let st = log.stats();
    assert_eq!((st.records, st.flushes, st.delayed), (400, 400, 0));
}

#[test]
fn callers_committing_side_by_side_all_become_durable_with_the_commit_delay() {
    let opts = Options {
        commit_delay: crate::COMMIT_DELAY_MAX,
        ..small_options()
    };
    let log = Arc::new(TxLog::create_in(SimStorage::new(), ident(), opts).expect("create"));
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    let k = format!("{t}-{i}");
                    log.put(entry(&k, TxState::Commit, 0)).expect("put");
                    assert!(log.get(k.as_bytes()).is_some(), "durable once put returns");
                    log.remove_lazy(k.as_bytes()).expect("remove");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("join");
    }
    log.sync().expect("sync");
    assert!(log.is_empty());
    let st = log.stats();
    assert_eq!(st.records, 800);
    assert!(st.flushes < 800, "{st:?}");
}

#[test]
fn a_commit_delay_above_the_maximum_is_refused() {
    let opts = Options {
        commit_delay: crate::COMMIT_DELAY_MAX + std::time::Duration::from_micros(1),
        ..small_options()
    };
    assert!(matches!(
        TxLog::create_in(SimStorage::new(), ident(), opts),
        Err(LogError::InvalidOptions { .. })
    ));
}

#[test]
fn a_failed_preallocation_does_not_poison_the_log() {
    let opts = Options {
        preallocate_bytes: 4096,
        ..small_options()
    };
    let s = SimStorage::new();
    let log = TxLog::create_in(s.clone(), ident(), opts).expect("create");
    // The first put writes its record (write 1), then the zeros ahead (write 2):
    // fail the zeros, half written.
    s.fail_write_at(2);
    log.put(entry("a", TxState::Prepare, 10))
        .expect("the record is durable although the space ahead could not be laid down");
    for i in 0..20 {
        log.put(entry(&format!("b{i}"), TxState::Prepare, 10))
            .expect("the log carries on without preallocation");
    }
    drop(log);
    let (log, r) = TxLog::open_in(s.clone(), ident(), opts).expect("reopen");
    assert_eq!(log.len(), 21);
    assert!(r.repairs.is_empty(), "{r:?}");
}
