//! One site on its own: data operations and isolation, strict 2PL and the lock-wait
//! timeout that breaks deadlocks, prepare/commit/rollback, restart recovery (prepared
//! branches come back in doubt, a torn log tail is cut, an interrupted checkpoint is
//! finished), checkpoints that never wait for running transactions, and corrupt files
//! refused with the file and offset.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tpmon_rm::checkpoint::checkpoints;
use tpmon_rm::oplog::{generations, log_name};
use tpmon_rm::{ErrorKind, RmError, Site, SiteConfig};

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir(tag: &str) -> Dir {
    let p = std::env::temp_dir().join(format!("tpmon-rm-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    Dir(p)
}

fn cfg(d: &Dir) -> SiteConfig {
    SiteConfig {
        site: 1,
        name: "s".into(),
        dir: d.0.clone(),
        checkpoint_interval: Duration::from_secs(3600),
        lock_timeout: Duration::from_millis(100),
        sync: true,
    }
}

fn open(d: &Dir) -> Arc<Site> {
    Site::open(cfg(d)).expect("open").0
}

#[test]
fn branches_see_their_own_writes_and_nobody_else_sees_them_before_commit() {
    let d = dir("iso");
    let s = open(&d);
    s.begin("g1|1").expect("begin");
    s.put(Some("g1|1"), "t", b"a", b"1").expect("put");
    s.insert(Some("g1|1"), "t", b"b", b"2").expect("insert");
    assert_eq!(
        s.get(Some("g1|1"), "t", b"a").expect("get"),
        Some(b"1".to_vec())
    );
    assert_eq!(
        s.get(None, "t", b"a").expect("get"),
        None,
        "uncommitted is invisible"
    );
    let e = s
        .insert(Some("g1|1"), "t", b"a", b"x")
        .expect_err("duplicate");
    assert_eq!(e.kind(), ErrorKind::Duplicate);
    let rows = s.scan(Some("g1|1"), "t", b"", None, 10).expect("scan");
    assert_eq!(rows.len(), 2);
    assert_eq!(s.prepare("g1|1").expect("prepare"), (true, 1));
    s.commit("g1|1", 1, 1).expect("commit");
    assert_eq!(s.get(None, "t", b"b").expect("get"), Some(b"2".to_vec()));
    // Delete, read-only branches, rollback.
    s.begin("g2|1").expect("begin");
    assert!(s.delete(Some("g2|1"), "t", b"a").expect("delete"));
    assert!(!s.delete(Some("g2|1"), "t", b"zz").expect("delete missing"));
    s.rollback("g2|1").expect("rollback");
    assert_eq!(s.get(None, "t", b"a").expect("get"), Some(b"1".to_vec()));
    s.begin("g3|1").expect("begin");
    s.get(Some("g3|1"), "t", b"a").expect("get");
    assert_eq!(s.prepare("g3|1").expect("read-only"), (false, 0));
    assert!(matches!(
        s.commit("g3|1", 1, 1),
        Err(RmError::UnknownBranch(_))
    ));
    // Bad input is refused with a reason.
    assert_eq!(
        s.put(None, "", b"k", b"v").expect_err("empty table").kind(),
        ErrorKind::Invalid
    );
    assert_eq!(
        s.put(None, "t", &[0u8; 2000], b"v")
            .expect_err("long key")
            .kind(),
        ErrorKind::Invalid
    );
}

#[test]
fn a_deadlock_is_broken_by_the_lock_wait_timeout_and_dooms_the_waiter() {
    let d = dir("dead");
    let s = open(&d);
    s.put(None, "t", b"x", b"0").expect("seed");
    s.put(None, "t", b"y", b"0").expect("seed");
    s.begin("a|1").expect("a");
    s.begin("b|1").expect("b");
    s.put(Some("a|1"), "t", b"x", b"a").expect("a x");
    s.put(Some("b|1"), "t", b"y", b"b").expect("b y");
    let s2 = s.clone();
    let waiter = std::thread::spawn(move || s2.put(Some("b|1"), "t", b"x", b"b"));
    let e = s.put(Some("a|1"), "t", b"y", b"a");
    let e2 = waiter.join().expect("join");
    // At least one of the two timed out, and a timed-out branch cannot commit.
    let timed_out: Vec<&str> = [("a|1", &e), ("b|1", &e2)]
        .iter()
        .filter(|(_, r)| matches!(r, Err(RmError::LockTimeout { .. })))
        .map(|(x, _)| *x)
        .collect();
    assert!(!timed_out.is_empty(), "{e:?} {e2:?}");
    for x in &timed_out {
        assert_eq!(s.prepare(x).expect_err("doomed").kind(), ErrorKind::Doomed);
    }
    // The survivor (if any) commits; the locks of the doomed one are gone.
    for x in ["a|1", "b|1"] {
        if !timed_out.contains(&x) {
            s.prepare(x).expect("prepare");
            s.commit(x, 1, 1).expect("commit");
        }
    }
    s.begin("c|1").expect("c");
    s.put(Some("c|1"), "t", b"x", b"c").expect("free again");
    s.put(Some("c|1"), "t", b"y", b"c").expect("free again");
}

#[test]
fn a_scan_holds_its_table_against_writers_until_its_branch_ends() {
    let d = dir("scan");
    let s = open(&d);
    s.put(None, "t", b"1", b"a").expect("seed");
    s.begin("r|1").expect("reader");
    assert_eq!(
        s.scan(Some("r|1"), "t", b"", None, 10).expect("scan").len(),
        1
    );
    s.begin("w|1").expect("writer");
    let e = s
        .insert(Some("w|1"), "t", b"2", b"b")
        .expect_err("phantom blocked");
    assert_eq!(e.kind(), ErrorKind::LockTimeout);
    s.rollback("r|1").expect("end reader");
    s.begin("w|2").expect("writer");
    s.insert(Some("w|2"), "t", b"2", b"b")
        .expect("after the scan ended");
}

#[test]
fn restart_recovers_committed_work_and_brings_prepared_branches_back_in_doubt() {
    let d = dir("restart");
    {
        let s = open(&d);
        s.put(None, "t", b"auto", b"1").expect("autocommit");
        s.begin("c|1").expect("begin");
        s.put(Some("c|1"), "t", b"committed", b"1").expect("put");
        s.prepare("c|1").expect("prepare");
        s.commit("c|1", 1, 1).expect("commit");
        assert_eq!(s.checkpoint_now().expect("checkpoint"), 1);
        s.begin("p|1").expect("begin");
        s.put(Some("p|1"), "t", b"prepared", b"1").expect("put");
        s.prepare("p|1").expect("prepare");
        s.begin("a|1").expect("begin");
        s.put(Some("a|1"), "t", b"active", b"1").expect("put");
        s.begin("r|1").expect("begin");
        s.put(Some("r|1"), "t", b"rolled", b"1").expect("put");
        s.prepare("r|1").expect("prepare");
        s.rollback("r|1").expect("rollback");
        s.log_flush_for_test();
        // Dropped without any shutdown: a crash.
    }
    let (s, report) = Site::open(cfg(&d)).expect("reopen");
    assert_eq!(report.checkpoint, 1);
    assert_eq!(report.in_doubt, 1);
    assert_eq!(s.recover(""), vec!["p|1".to_string()]);
    for (k, want) in [
        ("auto", true),
        ("committed", true),
        ("prepared", false),
        ("active", false),
        ("rolled", false),
    ] {
        assert_eq!(
            s.get(None, "t", k.as_bytes()).expect("get").is_some(),
            want,
            "{k}"
        );
    }
    // The in-doubt branch keeps its lock until it is decided, then commits.
    s.begin("x|1").expect("begin");
    assert_eq!(
        s.put(Some("x|1"), "t", b"prepared", b"2")
            .expect_err("locked")
            .kind(),
        ErrorKind::LockTimeout
    );
    s.commit("p|1", 2, 1).expect("commit after restart");
    assert_eq!(
        s.get(None, "t", b"prepared").expect("get"),
        Some(b"1".to_vec())
    );
}

#[test]
fn a_torn_log_tail_is_cut_and_a_corrupt_middle_is_refused_with_the_offset() {
    let d = dir("torn");
    {
        let s = open(&d);
        s.put(None, "t", b"a", b"1").expect("put");
        s.put(None, "t", b"b", b"2").expect("put");
    }
    let log = d.0.join(log_name(0));
    let good = std::fs::read(&log).expect("log");
    // A torn append: half a frame at the end.
    let mut torn = good.clone();
    torn.extend_from_slice(&good[..20]);
    std::fs::write(&log, &torn).expect("write");
    let (s, report) = Site::open(cfg(&d)).expect("a torn tail is cut");
    assert_eq!(report.torn.len(), 1);
    assert_eq!(s.get(None, "t", b"b").expect("get"), Some(b"2".to_vec()));
    drop(s);
    assert_eq!(std::fs::read(&log).expect("log"), good, "the tail was cut");
    // A flipped byte in the first frame, with more frames after it.
    let mut bad = good.clone();
    bad[10] ^= 0xff;
    std::fs::write(&log, &bad).expect("write");
    match Site::open(cfg(&d)) {
        Err(RmError::Corrupt { path, offset, .. }) => {
            assert_eq!(path, log);
            assert_eq!(offset, 0);
        }
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("a corrupt log was accepted"),
    }
}

#[test]
fn an_interrupted_checkpoint_is_finished_at_restart_and_two_checkpoints_stay() {
    let d = dir("ckpt");
    {
        let s = open(&d);
        for i in 0..3u8 {
            s.put(None, "t", &[i], b"v").expect("put");
            s.checkpoint_now().expect("checkpoint");
        }
        assert_eq!(checkpoints(&d.0).expect("list"), vec![2, 3]);
        // Generation 3 is being written; 4 was created ahead for the next checkpoint.
        assert_eq!(generations(&d.0).expect("gens"), vec![3, 4]);
    }
    // An empty generation 4 is only the one created ahead: nothing to finish.
    let (s, _) = Site::open(cfg(&d)).expect("reopen");
    assert_eq!((s.checkpoint_number(), s.lcpn()), (3, 3));
    drop(s);
    // Simulate a crash after the log moved to generation 4 and something was written
    // there, but before ccp.4.
    let entry = tpmon_rm::record::LogEntry::Decision {
        lsn: 99,
        tid: "x|1".into(),
        commit: false,
        gcpn: 0,
        origin: 1,
    };
    std::fs::write(
        d.0.join(log_name(4)),
        tpmon_rm::codec::frame(&entry.encode()),
    )
    .expect("gen 4");
    let (s, _) = Site::open(cfg(&d)).expect("reopen");
    assert_eq!(s.checkpoint_number(), 4);
    assert_eq!(s.lcpn(), 4);
    assert_eq!(checkpoints(&d.0).expect("list"), vec![3, 4]);
    assert_eq!(s.snapshot()["t"].len(), 3);
}

#[test]
fn a_checkpoint_does_not_wait_for_running_or_prepared_transactions() {
    let d = dir("noblock");
    let s = open(&d);
    s.begin("long|1").expect("begin");
    s.put(Some("long|1"), "t", b"k", b"v").expect("put");
    // Active and holding locks: the checkpoint goes on without it.
    assert_eq!(s.checkpoint_now().expect("checkpoint"), 1);
    s.prepare("long|1").expect("prepare");
    assert_eq!(s.checkpoint_now().expect("checkpoint"), 2);
    // The undecided record was carried; its commit with GCPN 2 lands as a
    // compensation record at the next checkpoint, and nothing is lost.
    s.commit("long|1", 2, 1).expect("commit");
    assert_eq!(s.checkpoint_now().expect("checkpoint"), 3);
    let i = tpmon_rm::inspect::inspect(&d.0).expect("inspect");
    assert_eq!(i.checkpoints.last().map(|c| c.compensation), Some(1));
    drop(s);
    let s = open(&d);
    assert_eq!(s.get(None, "t", b"k").expect("get"), Some(b"v".to_vec()));
}

#[test]
fn a_checkpoint_file_that_is_damaged_is_refused_with_the_file() {
    let d = dir("badccp");
    {
        let s = open(&d);
        s.put(None, "t", b"k", b"v").expect("put");
        s.checkpoint_now().expect("checkpoint");
    }
    let path = d.0.join(tpmon_rm::checkpoint::ccp_name(1));
    let mut data = std::fs::read(&path).expect("ccp");
    let n = data.len();
    data.truncate(n - 3);
    std::fs::write(&path, &data).expect("write");
    match Site::open(cfg(&d)) {
        Err(RmError::Corrupt { path: p, .. }) => assert_eq!(p, path),
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("a damaged checkpoint was accepted"),
    }
}

#[test]
fn a_write_outside_transactions_cut_by_a_crash_is_rolled_back_at_restart() {
    let d = dir("local");
    {
        let s = open(&d);
        s.put(None, "t", b"before", b"1").expect("put");
    }
    // What a crash between the prepare and the commit of a write made outside any
    // transaction leaves: its operations, undecided, with the id of a local branch.
    let entry = tpmon_rm::record::LogEntry::Ops {
        first_lsn: 1000,
        tid: format!("{}1:999:0", tpmon_rm::site::LOCAL_PREFIX),
        vote: 1,
        ops: vec![tpmon_rm::record::OpImage {
            table: "t".into(),
            key: b"cut".to_vec(),
            op: tpmon_rm::record::Op::Put,
            after: b"x".to_vec(),
        }],
    };
    let log = d.0.join(log_name(0));
    let mut data = std::fs::read(&log).expect("log");
    data.extend_from_slice(&tpmon_rm::codec::frame(&entry.encode()));
    std::fs::write(&log, &data).expect("write");
    for _ in 0..2 {
        let (s, report) = Site::open(cfg(&d)).expect("reopen");
        assert_eq!(report.in_doubt, 0);
        assert!(s.recover("").is_empty(), "no local branch left in doubt");
        assert_eq!(s.get(None, "t", b"cut").expect("get"), None);
        assert_eq!(
            s.get(None, "t", b"before").expect("get"),
            Some(b"1".to_vec())
        );
        // Not locked; and new local writes do not collide with the old branch id.
        s.put(None, "t", b"cut", b"y").expect("the key is free");
        s.delete(None, "t", b"cut").expect("delete");
    }
}

#[test]
fn one_directory_holds_one_site_and_a_branch_is_bounded_by_the_frame_limit() {
    let d = dir("bounds");
    let s = open(&d);
    match Site::open(cfg(&d)) {
        Err(RmError::Io { what, .. }) => assert!(what.contains("in use"), "{what}"),
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("a second site opened the same directory"),
    }
    s.begin("big|1").expect("begin");
    let mb = vec![7u8; 1 << 20];
    let mut refused = None;
    for i in 0..20u8 {
        if let Err(e) = s.put(Some("big|1"), "t", &[i], &mb) {
            refused = Some((i, e));
            break;
        }
    }
    let (i, e) = refused.expect("a branch over the frame limit is refused");
    assert!(i >= 14, "refused too early, at {i} MiB");
    assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
    assert_eq!(
        s.prepare("big|1").expect_err("doomed").kind(),
        ErrorKind::Doomed
    );
    drop(s);
    // Released with the site: it opens again, and nothing of the branch is there.
    let s = open(&d);
    assert_eq!(s.get(None, "t", &[0]).expect("get"), None);
}

mod scan_model {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// A scan inside a branch equals the committed rows with the branch's own
        /// writes laid over them, in key order, cut to the range and the limit.
        #[test]
        fn a_scan_sees_committed_rows_with_its_own_writes_laid_over(
            committed in proptest::collection::btree_map(0u8..40, any::<u8>(), 0..25),
            own in proptest::collection::btree_map(0u8..40, proptest::option::of(any::<u8>()), 0..12),
            from in 0u8..40,
            to in proptest::option::of(0u8..45),
            limit in 0usize..30,
        ) {
            let d = dir(&format!("scan-model-{from}-{limit}-{}", committed.len()));
            let mut c = cfg(&d);
            c.sync = false;
            let (s, _) = Site::open(c).expect("open");
            for (k, v) in &committed {
                s.put(None, "t", &[*k], &[*v]).expect("seed");
            }
            s.begin("x|1").expect("begin");
            for (k, v) in &own {
                match v {
                    Some(v) => s.put(Some("x|1"), "t", &[*k], &[*v]).expect("put"),
                    None => {
                        s.delete(Some("x|1"), "t", &[*k]).expect("delete");
                    }
                }
            }
            let mut model: BTreeMap<u8, u8> = committed.clone();
            for (k, v) in &own {
                match v {
                    Some(v) => {
                        model.insert(*k, *v);
                    }
                    None => {
                        model.remove(k);
                    }
                }
            }
            let want: Vec<(Vec<u8>, Vec<u8>)> = model
                .iter()
                .filter(|(k, _)| **k >= from && to.is_none_or(|t| **k < t))
                .take(limit)
                .map(|(k, v)| (vec![*k], vec![*v]))
                .collect();
            let to_key = to.map(|t| vec![t]);
            let got = s.scan(Some("x|1"), "t", &[from], to_key.as_deref(), limit).expect("scan");
            prop_assert_eq!(got, want);
        }
    }
}

#[test]
fn zeros_after_the_last_record_are_a_torn_tail_and_a_bad_length_in_the_middle_is_refused() {
    let d = dir("zeros");
    {
        let s = open(&d);
        s.put(None, "t", b"a", b"1").expect("put");
        s.put(None, "t", b"b", b"2").expect("put");
    }
    let log = d.0.join(log_name(0));
    let good = std::fs::read(&log).expect("log");
    // What a file system may leave after a crash during an unsynced append: the
    // file's new size, filled with zeros.
    let mut zeros = good.clone();
    zeros.extend_from_slice(&[0u8; 4096]);
    std::fs::write(&log, &zeros).expect("write");
    let (s, report) = Site::open(cfg(&d)).expect("zeros at the tail are cut");
    assert_eq!(report.torn.len(), 1);
    assert_eq!(s.get(None, "t", b"b").expect("get"), Some(b"2".to_vec()));
    drop(s);
    // A length field damaged so that it points past the end, with valid records
    // after it: refused, never cut (that would drop acknowledged records).
    let mut bad = good.clone();
    bad[2] = 0x7f;
    std::fs::write(&log, &bad).expect("write");
    assert!(matches!(
        Site::open(cfg(&d)),
        Err(RmError::Corrupt { offset: 0, .. })
    ));
}

#[test]
fn a_decision_outside_what_the_vote_allows_is_corrected_and_writes_after_prepare_are_refused() {
    let d = dir("gcpn");
    let s = open(&d);
    s.begin("a|1").expect("begin");
    s.put(Some("a|1"), "t", b"k", b"1").expect("put");
    let (_, vote) = s.prepare("a|1").expect("prepare");
    assert_eq!(
        s.put(Some("a|1"), "t", b"j", b"x")
            .expect_err("after prepare")
            .kind(),
        ErrorKind::Protocol
    );
    assert_eq!(
        s.rollback("nope|1").expect_err("unknown").kind(),
        ErrorKind::UnknownBranch
    );
    // A hostile or broken decision far in the future does not poison later votes.
    s.commit("a|1", u64::MAX, 1).expect("commit");
    s.begin("b|1").expect("begin");
    s.put(Some("b|1"), "t", b"k", b"2").expect("put");
    let (_, next) = s.prepare("b|1").expect("prepare");
    assert!(
        next <= vote + 2,
        "vote {next} after a decision clamped to {}",
        vote + 2
    );
    // And one below the vote is raised to it: the record lands where its vote says.
    s.commit("b|1", 0, 1).expect("commit");
    let n = s.checkpoint_now().expect("checkpoint");
    drop(s);
    let ck = tpmon_rm::checkpoint::Checkpoint::read(&d.0.join(tpmon_rm::checkpoint::ccp_name(n)))
        .expect("checkpoint");
    let gcpns: Vec<u64> = ck
        .delta
        .iter()
        .map(|(r, _)| r.gcpn)
        .chain(ck.carry.iter().map(|r| r.gcpn))
        .collect();
    assert!(
        gcpns.iter().all(|g| *g >= vote && *g <= vote + 2),
        "{gcpns:?}"
    );
}

#[test]
fn a_session_acts_only_on_its_own_branches_and_never_decides() {
    use tpmon_rm::session::{serve, Request, Session};
    let d = dir("session");
    let s = open(&d);
    let sock = d.0.join("s.sock");
    serve(s.clone(), &sock).expect("serve");
    let mut a = Session::connect(&sock, Duration::from_secs(10)).expect("connect");
    let mut b = Session::connect(&sock, Duration::from_secs(10)).expect("connect");
    a.call(&Request::Begin("x|1".into())).expect("begin");
    a.call(&Request::Put {
        xid: "x|1".into(),
        table: "t".into(),
        key: b"k".to_vec(),
        value: b"v".to_vec(),
    })
    .expect("put");
    // Another session cannot touch it, even by beginning it again.
    for req in [
        Request::Put {
            xid: "x|1".into(),
            table: "t".into(),
            key: b"k".to_vec(),
            value: b"w".to_vec(),
        },
        Request::Prepare("x|1".into()),
        Request::Rollback("x|1".into()),
        Request::Begin("x|1".into()),
    ] {
        assert!(b.call(&req).is_err(), "{req:?} was allowed");
    }
    a.call(&Request::Prepare("x|1".into())).expect("prepare");
    // Decisions are the transaction manager's.
    for req in [
        Request::Commit {
            xid: "x|1".into(),
            gcpn: 1,
            origin: 1,
        },
        Request::Recover(String::new()),
        Request::Forget("x|1".into()),
    ] {
        let e = a.call(&req).expect_err("a session decided");
        assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
    }
    // b's failed begin did not make it an owner: closing b leaves the branch alone.
    drop(b);
    assert_eq!(s.recover(""), vec!["x|1".to_string()]);
    s.commit("x|1", 1, 1).expect("the TM commits");
    assert_eq!(s.get(None, "t", b"k").expect("get"), Some(b"v".to_vec()));
}
