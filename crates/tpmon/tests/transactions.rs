//! Global transactions end to end with the scripted fake resource manager: the TX API
//! in clients and services, two-phase commit across two groups, dooming, one-phase
//! commit, scripted RM failures with exact call counts, the timeout-against-end race,
//! recovery after kill -9 at named steps, and the `tpmon tx` commands.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::{s, tpmon, Config, Domain};
use tpmon_client::{Client, CommitReturn, Committed, ErrorKind, Flags, TxError, TxStatus};
use tpmon_xa::fake::FakeRm;

const LONG: Duration = Duration::from_secs(20);

/// Two groups, each with its own fake RM: `ga` runs NESTED, FAIL, SLEEP, CRASH, FWD;
/// `gb` runs ECHO (which NESTED and FWD reach). Recovery runs every 50 ms.
fn config(dir_a: &Path, dir_b: &Path, extra_tx: &[&str]) -> Config {
    let mut tx = String::from("[domain.tx]\nrecovery_interval_ms = 50\n");
    for l in extra_tx {
        tx.push_str(l);
        tx.push('\n');
    }
    Config::new()
        .section(&tx)
        .section(&format!(
            "[[group]]\nname = \"ga\"\n[group.rm]\nkind = \"fake\"\nopen = {}\n",
            support::toml_string(&dir_a.display().to_string())
        ))
        .section(&format!(
            "[[group]]\nname = \"gb\"\n[group.rm]\nkind = \"fake\"\nopen = {}\n",
            support::toml_string(&dir_b.display().to_string())
        ))
        .server("sa", &["group = \"ga\"", "max_instances = 2"])
        .server("sb", &["group = \"gb\""])
        .services("sa", &["NESTED", "FAIL", "SLEEP", "CRASH", "FWD"])
        .services("sb", &["ECHO"])
}

struct Fakes {
    _tmp: support::TempDir,
    a: PathBuf,
    b: PathBuf,
}

fn fakes(tag: &str) -> Fakes {
    let tmp = support::TempDir::new(tag);
    let a = tmp.path.join("rm-a");
    let b = tmp.path.join("rm-b");
    std::fs::create_dir_all(&a).expect("rm-a");
    std::fs::create_dir_all(&b).expect("rm-b");
    Fakes { _tmp: tmp, a, b }
}

fn calls(dir: &Path, op: &str, result: Option<&str>) -> usize {
    FakeRm::count_calls(dir, op, result)
}

/// Rollbacks of any result on both fake RMs.
fn rollbacks(f: &Fakes) -> usize {
    calls(&f.a, "rollback", None) + calls(&f.b, "rollback", None)
}

fn tx_list(d: &Domain) -> serde_json::Value {
    let run = tpmon([
        "tx",
        "list",
        "--json",
        "-c",
        d.config.to_str().unwrap_or_default(),
        "--run-dir",
        d.run_dir.to_str().unwrap_or_default(),
    ]);
    assert!(run.ok(), "tpmon tx list failed: {run:?}");
    serde_json::from_str(&run.stdout).expect("tx list JSON")
}

fn nothing_left(d: &Domain, f: &Fakes) {
    support::wait_until(
        "no branch stays prepared and the log is empty",
        LONG,
        || {
            FakeRm::prepared(&f.a).is_empty()
                && FakeRm::prepared(&f.b).is_empty()
                && tx_list(d).as_array().is_some_and(Vec::is_empty)
        },
    );
}

#[test]
fn commit_spans_two_groups_with_nested_calls_and_forwards() {
    let f = fakes("tx-commit");
    let cfg = config(&f.a, &f.b, &[]);
    let d = Domain::boot("tx-commit", &cfg);
    for (label, mut c) in d.both_clients() {
        c.tx_begin().expect("begin");
        let r = c.call("NESTED", &s("hi"), Flags::NONE).expect("NESTED");
        assert_eq!(support::text(&r), "hi", "{label}");
        c.call("FWD", &s("fw"), Flags::NONE).expect("FWD");
        assert_eq!(c.tx_info().branches, 4, "{label}: NESTED, ECHO, FWD, ECHO");
        assert_eq!(c.tx_commit(), Ok(Committed::Done), "{label}");
        assert!(!c.in_transaction());
    }
    nothing_left(&d, &f);
    // Per client: NESTED and FWD on a, two ECHOs on b; each prepared and committed once.
    assert_eq!(calls(&f.a, "prepare", Some("ok")), 4);
    assert_eq!(calls(&f.a, "commit", Some("ok")), 4);
    assert_eq!(calls(&f.b, "prepare", Some("ok")), 4);
    assert_eq!(calls(&f.b, "commit", Some("ok")), 4);
    assert_eq!(rollbacks(&f), 0);
}

#[test]
fn a_failing_participant_dooms_the_transaction() {
    let f = fakes("tx-doom");
    let d = Domain::boot("tx-doom", &config(&f.a, &f.b, &[]));
    let mut c = d.client();
    c.tx_begin().expect("begin");
    c.call("NESTED", &s("x"), Flags::NONE).expect("NESTED");
    let e = c.call("FAIL", &s("no"), Flags::NONE).expect_err("FAIL");
    assert_eq!(e.kind, ErrorKind::SvcFail);
    assert_eq!(c.tx_info().status, Some(TxStatus::RollbackOnly));
    match c.tx_commit() {
        Err(TxError::RolledBack(why)) => assert!(why.contains("TPFAIL"), "{why}"),
        other => panic!("commit of a doomed transaction: {other:?}"),
    }
    nothing_left(&d, &f);
    assert_eq!(calls(&f.a, "rollback_active", None), 1, "FAIL's branch");
    assert_eq!(
        calls(&f.a, "rollback", Some("ok")),
        1,
        "NESTED's prepared branch"
    );
    assert_eq!(
        calls(&f.b, "rollback", Some("ok")),
        1,
        "ECHO's prepared branch"
    );
    assert_eq!(calls(&f.a, "commit", None) + calls(&f.b, "commit", None), 0);

    // A crash of a participant dooms it too.
    c.tx_begin().expect("begin");
    let e = c.call("CRASH", &s(""), Flags::NONE).expect_err("CRASH");
    assert_eq!(e.kind, ErrorKind::SvcErr);
    assert!(matches!(c.tx_commit(), Err(TxError::RolledBack(_))));
    // begin inside a transaction is a protocol error and the transaction continues.
    c.tx_begin().expect("begin");
    assert!(matches!(c.tx_begin(), Err(TxError::Protocol(_))));
    c.call("NESTED", &s("y"), Flags::NONE).expect("NESTED");
    assert_eq!(c.tx_commit(), Ok(Committed::Done));
    // Outside a transaction commit is a protocol error.
    assert!(matches!(c.tx_commit(), Err(TxError::Protocol(_))));
    nothing_left(&d, &f);
}

#[test]
fn one_branch_commits_in_one_phase_and_read_only_needs_nothing() {
    let f = fakes("tx-1pc");
    let d = Domain::boot("tx-1pc", &config(&f.a, &f.b, &[]));
    let mut c = d.client();
    c.tx_begin().expect("begin");
    c.call("ECHO", &s("one"), Flags::NONE).expect("ECHO");
    assert_eq!(c.tx_commit(), Ok(Committed::Done));
    assert_eq!(calls(&f.b, "commit", Some("ok")), 1);
    // No call at all: nothing to commit.
    c.tx_begin().expect("begin");
    assert_eq!(c.tx_commit(), Ok(Committed::Done));
    // TPNOTRAN calls stay out of the transaction.
    c.tx_begin().expect("begin");
    c.call("ECHO", &s("out"), Flags::NOTRAN).expect("ECHO");
    assert_eq!(c.tx_info().branches, 0);
    c.tx_rollback().expect("rollback");
    assert_eq!(calls(&f.b, "prepare", None), 1);
    nothing_left(&d, &f);
}

#[test]
fn scripted_rm_failures_have_exact_call_counts() {
    let f = fakes("tx-script");
    let d = Domain::boot("tx-script", &config(&f.a, &f.b, &[]));
    let mut c = d.client();
    // ECHO's prepare fails once: NESTED sees the error and fails, the transaction rolls back.
    std::fs::write(f.b.join("script"), "prepare fail 1\n").expect("script");
    c.tx_begin().expect("begin");
    let e = c.call("NESTED", &s("p"), Flags::NONE).expect_err("NESTED");
    assert_eq!(e.kind, ErrorKind::SvcFail, "{e:?}");
    assert!(matches!(c.tx_commit(), Err(TxError::RolledBack(_))));
    nothing_left(&d, &f);
    assert_eq!(calls(&f.b, "prepare", Some("fail")), 1);
    assert_eq!(calls(&f.b, "prepare", Some("ok")), 0);
    assert_eq!(
        calls(&f.a, "prepare", None),
        0,
        "NESTED failed before preparing"
    );
    assert_eq!(calls(&f.a, "rollback_active", None), 1);
    assert_eq!(
        calls(&f.b, "rollback_active", None),
        1,
        "ECHO's failed branch is rolled back while active"
    );

    // ECHO's prepare finds the database unavailable (RMFAIL): the same, once.
    std::fs::write(f.b.join("script"), "prepare fail 1\nprepare rmfail 1\n").expect("script");
    c.tx_begin().expect("begin");
    let e = c.call("NESTED", &s("r"), Flags::NONE).expect_err("NESTED");
    assert_eq!(e.kind, ErrorKind::SvcFail, "{e:?}");
    assert!(matches!(c.tx_commit(), Err(TxError::RolledBack(_))));
    nothing_left(&d, &f);
    assert_eq!(calls(&f.b, "prepare", Some("rmfail")), 1);
    assert_eq!(calls(&f.b, "prepare", Some("ok")), 0);
    assert_eq!(calls(&f.b, "rollback_active", None), 2);
    assert_eq!(calls(&f.a, "rollback_active", None), 2);

    // Commit on b reports RMFAIL twice: the decision stands, recovery finishes it.
    std::fs::write(
        f.b.join("script"),
        "prepare fail 1\nprepare rmfail 1\ncommit rmfail 2\n",
    )
    .expect("script");
    c.tx_set_commit_return(CommitReturn::Completed);
    c.tx_begin().expect("begin");
    c.call("NESTED", &s("q"), Flags::NONE).expect("NESTED");
    // The pool retries once on a new session, so both failures are used at once.
    assert_eq!(c.tx_commit(), Ok(Committed::Pending));
    nothing_left(&d, &f);
    assert_eq!(calls(&f.b, "commit", Some("rmfail")), 2);
    assert_eq!(calls(&f.b, "commit", Some("ok")), 1);
    assert_eq!(calls(&f.a, "commit", Some("ok")), 1);
    assert_eq!(calls(&f.a, "prepare", Some("ok")), 1);
    assert_eq!(calls(&f.b, "prepare", Some("ok")), 1);
    assert_eq!(rollbacks(&f), 0);
}

/// A database that cannot be listed at recovery (RMFAIL three times) is retried (with
/// back-off between passes), and the branches it holds are resolved once it answers; the other
/// database's branch does not wait for it.
#[test]
fn a_database_down_at_recovery_is_retried_with_back_off() {
    let f = fakes("tx-rm-down");
    let cfg = config(&f.a, &f.b, &[]);
    let mut d = Domain::boot_env(
        "tx-rm-down",
        &cfg,
        &[("TPMON_FAILPOINTS", "tm.before_decision=kill")],
    );
    let mut c = d.client();
    c.tx_begin().expect("begin");
    c.call("NESTED", &s("down"), Flags::NONE).expect("NESTED");
    assert!(
        c.tx_commit().is_err(),
        "the daemon died before the decision"
    );
    support::wait_until("the daemon is gone", LONG, || !support::alive(d.daemon_pid));
    drop(c);
    std::fs::write(f.a.join("script"), "recover rmfail 3\n").expect("script");
    d.crash_and_reboot(&cfg, &[]);
    support::wait_until("b's branch is rolled back at once", LONG, || {
        calls(&f.b, "rollback", Some("ok")) == 1
    });
    nothing_left(&d, &f);
    assert_eq!(calls(&f.a, "recover", Some("rmfail")), 3);
    assert_eq!(calls(&f.a, "rollback", Some("ok")), 1);
    assert_eq!(calls(&f.b, "rollback", Some("ok")), 1);
    assert_eq!(calls(&f.a, "commit", None) + calls(&f.b, "commit", None), 0);
    // Each pass's listing retries once on a new session (two of the failures), so
    // at least one pass found the database down and backed off.
    let log = d.log();
    assert!(
        log.contains("recovery cannot reach a resource manager"),
        "the failed attempt is logged:\n{log}"
    );
}

#[test]
fn a_branch_prepared_after_the_timeout_rollback_is_rolled_back() {
    let f = fakes("tx-race");
    let d = Domain::boot("tx-race", &config(&f.a, &f.b, &[]));
    let mut c = d.client();
    c.tx_set_timeout(Duration::from_secs(1)).expect("timeout");
    c.tx_begin().expect("begin");
    // The service is still working when the transaction times out.
    let e = c
        .call("SLEEP", &s("2500"), Flags::NONE)
        .expect_err("the call ends at the transaction's deadline");
    assert_eq!(e.kind, ErrorKind::Time);
    assert!(matches!(c.tx_commit(), Err(TxError::RolledBack(_))));
    // The service then prepares its branch, after the rollback was issued ...
    support::wait_until("the late branch prepared", LONG, || {
        calls(&f.a, "prepare", Some("ok")) == 1
    });
    // ... and recovery rolls it back; nothing of ours stays prepared.
    nothing_left(&d, &f);
    assert_eq!(calls(&f.a, "rollback", Some("ok")), 1);
    assert_eq!(calls(&f.a, "commit", None), 0);
}

#[test]
fn kill_9_after_the_decision_is_durable_commits_after_reboot() {
    let f = fakes("tx-kill");
    let cfg = config(&f.a, &f.b, &[]);
    let mut d = Domain::boot_env(
        "tx-kill",
        &cfg,
        &[("TPMON_FAILPOINTS", "tm.after_decision=kill")],
    );
    let mut c = d.client();
    c.tx_begin().expect("begin");
    c.call("NESTED", &s("k"), Flags::NONE).expect("NESTED");
    let e = c.tx_commit().expect_err("the daemon died during commit");
    assert!(matches!(e, TxError::Error(_)), "{e:?}");
    support::wait_until("the daemon is gone", LONG, || !support::alive(d.daemon_pid));
    drop(c);
    d.crash_and_reboot(&cfg, &[]);
    nothing_left(&d, &f);
    assert_eq!(calls(&f.a, "commit", Some("ok")), 1);
    assert_eq!(calls(&f.b, "commit", Some("ok")), 1);
    assert_eq!(rollbacks(&f), 0);
}

#[test]
fn kill_9_before_the_decision_rolls_back_after_reboot() {
    let f = fakes("tx-kill0");
    let cfg = config(&f.a, &f.b, &[]);
    let mut d = Domain::boot_env(
        "tx-kill0",
        &cfg,
        &[("TPMON_FAILPOINTS", "tm.before_decision=kill")],
    );
    let mut c = d.client();
    c.tx_begin().expect("begin");
    c.call("NESTED", &s("k"), Flags::NONE).expect("NESTED");
    assert!(c.tx_commit().is_err());
    drop(c);
    d.crash_and_reboot(&cfg, &[]);
    nothing_left(&d, &f);
    assert_eq!(calls(&f.a, "rollback", Some("ok")), 1);
    assert_eq!(calls(&f.b, "rollback", Some("ok")), 1);
    assert_eq!(calls(&f.a, "commit", None) + calls(&f.b, "commit", None), 0);
}

#[test]
fn a_lost_log_never_presumes_abort() {
    // A node whose log is lost (deleted here; a wrong `log_dir` is the same) boots
    // with a new, empty log. The prepared branches of the lost log's transactions may
    // belong to a commit that log had decided: recovery must not presume them aborted.
    let f = fakes("tx-lostlog");
    let cfg = config(&f.a, &f.b, &[]);
    let mut d = Domain::boot_env(
        "tx-lostlog",
        &cfg,
        &[("TPMON_FAILPOINTS", "tm.before_decision=kill")],
    );
    let mut c = d.client();
    c.tx_set_timeout(Duration::from_secs(1)).expect("timeout");
    c.tx_begin().expect("begin");
    c.call("NESTED", &s("lost"), Flags::NONE).expect("NESTED");
    let gtrid = c.tx_info().xid.expect("xid");
    assert!(c.tx_commit().is_err());
    drop(c);
    kill_everything(&d);
    std::fs::remove_dir_all(d.run_dir.join("txlog")).expect("remove the log");
    // A new log's first epoch is the second it is created in; the lost one's first
    // epoch was the second of the first boot. Only a log lost and replaced within the
    // same second (or one that booted more than once a second) could share epochs.
    left_in_doubt_then_committed_by_hand(&mut d, &cfg, &f, &gtrid);
}

/// Kills the daemon and every instance, and waits until they are gone.
fn kill_everything(d: &Domain) {
    let pids = d
        .try_status()
        .map(|st| support::all_pids(&st))
        .unwrap_or_default();
    d.kill_all(&pids);
}

/// After the log that decided `gtrid` (whose two branches, one on each fake RM, are
/// prepared) was replaced: boots the domain again in a later second than the
/// transaction's epoch, and checks that recovery lists the branches for the operator,
/// pass after pass, well past the transaction's deadline and the grace after it (the
/// caller set 1 s; + 2 s), and touches neither, saying why in the daemon's log. Then
/// commits it by hand, as the operator who knows it committed would.
fn left_in_doubt_then_committed_by_hand(d: &mut Domain, cfg: &Config, f: &Fakes, gtrid: &str) {
    let epoch = tpmon_proto::Gtrid::parse(gtrid.as_bytes())
        .expect("a tpmon gtrid")
        .epoch;
    support::wait_until("the next second", LONG, || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .is_ok_and(|t| t.as_secs() > epoch)
    });
    d.reboot(cfg, &[]);
    let item = support::wait_for("the branches listed for 4 s", LONG, || {
        tx_list(d)
            .as_array()
            .and_then(|a| a.iter().find(|t| t["gtrid"] == gtrid).cloned())
            .filter(|t| t["age_s"].as_u64().unwrap_or(0) >= 4)
    });
    assert!(
        item["state"]
            .as_str()
            .unwrap_or("")
            .contains("from a log this node no longer has"),
        "{item}"
    );
    assert_eq!(item["logged"], false);
    assert_eq!(item["branches"].as_array().map_or(0, Vec::len), 2, "{item}");
    assert_eq!(FakeRm::prepared(&f.a).len(), 1);
    assert_eq!(FakeRm::prepared(&f.b).len(), 1);
    assert_eq!(rollbacks(f), 0);
    assert!(
        d.log()
            .contains("an epoch this node's transaction log did not issue"),
        "the daemon's log says why"
    );
    // Committing by hand is allowed, since no log decided otherwise.
    let conf = d.client_config.to_str().unwrap_or_default().to_string();
    let run_dir = d.run_dir.to_str().unwrap_or_default().to_string();
    let run = tpmon(["tx", "commit", "-c", &conf, "--run-dir", &run_dir, gtrid]);
    assert!(run.ok(), "{run:?}");
    nothing_left(d, f);
    assert_eq!(calls(&f.a, "commit", Some("ok")), 1);
    assert_eq!(calls(&f.b, "commit", Some("ok")), 1);
    assert_eq!(rollbacks(f), 0);
}

/// A prepared branch with this node's prefix that its log cannot have begun (an epoch
/// later than the current boot's) is listed for the operator, said once in the log,
/// never presumed aborted, and resolved by hand.
#[test]
fn a_branch_this_log_cannot_have_begun_is_listed_and_left_to_the_operator() {
    let f = fakes("tx-strange");
    let cfg = config(&f.a, &f.b, &[]);
    let d = Domain::boot("tx-strange", &cfg);
    let mut c = d.client();
    c.tx_begin().expect("begin");
    let ours = c.tx_info().xid.expect("xid");
    c.tx_rollback().expect("rollback");
    let mut g = tpmon_proto::Gtrid::parse(ours.as_bytes()).expect("a tpmon gtrid");
    g.epoch += 5;
    g.deadline_s = 1;
    let gtrid = g.encode();
    std::fs::write(f.a.join("prepared").join(format!("{gtrid}|1.2.3")), b"")
        .expect("a prepared branch");
    // And one of a node the configuration does not know: nobody can be asked.
    let mut ghost = tpmon_proto::Gtrid::parse(ours.as_bytes()).expect("a tpmon gtrid");
    ghost.node = "ghost".into();
    let ghost = ghost.encode();
    let ghost_file = f.b.join("prepared").join(format!("{ghost}|1.2.4"));
    std::fs::write(&ghost_file, b"").expect("a prepared branch");
    let item = support::wait_for("the ghost's branch listed", LONG, || {
        tx_list(&d)
            .as_array()
            .and_then(|a| a.iter().find(|t| t["gtrid"] == ghost.as_str()).cloned())
    });
    assert!(
        item["state"]
            .as_str()
            .unwrap_or("")
            .starts_with("left alone: its coordinator is not a node of this domain"),
        "{item}"
    );
    let item = support::wait_for("the branch listed for 3 s", LONG, || {
        tx_list(&d)
            .as_array()
            .and_then(|a| a.iter().find(|t| t["gtrid"] == gtrid.as_str()).cloned())
            .filter(|t| t["age_s"].as_u64().unwrap_or(0) >= 3)
    });
    assert!(
        item["state"]
            .as_str()
            .unwrap_or("")
            .starts_with("left alone: not from this log"),
        "{item}"
    );
    assert_eq!(rollbacks(&f), 0, "never presumed aborted");
    let log = d.log();
    assert_eq!(
        log.matches("that this log cannot have begun").count(),
        1,
        "said once, not at every pass:\n{log}"
    );
    assert_eq!(
        log.matches("whose coordinating node is not in this domain")
            .count(),
        1,
        "said once, not at every pass:\n{log}"
    );
    // Finished in its database by the operator: no longer listed.
    std::fs::remove_file(&ghost_file).expect("finish the ghost's branch");
    let conf = d.client_config.to_str().unwrap_or_default().to_string();
    let run_dir = d.run_dir.to_str().unwrap_or_default().to_string();
    let run = tpmon(["tx", "rollback", "-c", &conf, "--run-dir", &run_dir, &gtrid]);
    assert!(run.ok(), "{run:?}");
    nothing_left(&d, &f);
    assert_eq!(calls(&f.a, "rollback", Some("ok")), 1);
}

/// An older copy of the log (restored from a backup) does not presume aborted the
/// transactions of the newer log it replaced: their epochs are not its own. `hot`:
/// the copy is taken while the daemon runs, in the boot that then decides the
/// commit, so the operator marks the restored log (`RESTORED`).
fn a_restored_copy_of_the_log(tag: &str, hot: bool) {
    let f = fakes(tag);
    let cfg = config(&f.a, &f.b, &[]);
    let mut d = Domain::boot(tag, &cfg);
    let log_dir = d.run_dir.join("txlog");
    let backup = d.run_dir.join("txlog-backup");
    let copy = |from: &Path, to: &Path| {
        std::fs::create_dir_all(to).expect("mkdir");
        for e in std::fs::read_dir(from).expect("read the log dir") {
            let e = e.expect("entry");
            std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
        }
    };
    kill_everything(&d);
    if !hot {
        // The log as the first boot left it, the daemon stopped.
        copy(&log_dir, &backup);
    }
    d.reboot(&cfg, &[("TPMON_FAILPOINTS", "tm.after_decision=kill")]);
    if hot {
        // A snapshot of the running boot's log, before its transaction.
        copy(&log_dir, &backup);
    }
    // The newer log decides a commit and dies before phase 2.
    let mut c = d.client();
    c.tx_set_timeout(Duration::from_secs(1)).expect("timeout");
    c.tx_begin().expect("begin");
    c.call("NESTED", &s("restored"), Flags::NONE)
        .expect("NESTED");
    let gtrid = c.tx_info().xid.expect("xid");
    assert!(c.tx_commit().is_err(), "the daemon died during commit");
    support::wait_until("the daemon is gone", LONG, || !support::alive(d.daemon_pid));
    drop(c);
    kill_everything(&d);
    // The operator restores the backup, which never saw that decision.
    std::fs::remove_dir_all(&log_dir).expect("remove the newer log");
    copy(&backup, &log_dir);
    if hot {
        std::fs::write(log_dir.join("RESTORED"), b"").expect("mark the log restored");
    }
    left_in_doubt_then_committed_by_hand(&mut d, &cfg, &f, &gtrid);
    assert!(!log_dir.join("RESTORED").exists(), "the mark is consumed");
}

#[test]
fn a_restored_older_copy_of_the_log_never_presumes_abort() {
    a_restored_copy_of_the_log("tx-restored", false);
}

#[test]
fn a_restored_snapshot_of_a_running_log_marked_restored_never_presumes_abort() {
    a_restored_copy_of_the_log("tx-restored-hot", true);
}

#[test]
fn operators_list_and_resolve_transactions() {
    let f = fakes("tx-ops");
    let d = Domain::boot("tx-ops", &config(&f.a, &f.b, &[]));
    let conf = d.client_config.to_str().unwrap_or_default().to_string();
    let run_dir = d.run_dir.to_str().unwrap_or_default().to_string();
    // `tpmon call --tx` commits.
    let run = tpmon([
        "call",
        "-c",
        &conf,
        "--run-dir",
        &run_dir,
        "NESTED",
        "--string",
        "cli",
        "--tx",
    ]);
    assert!(run.ok(), "{run:?}");
    assert!(run.stderr.contains("committed "), "{}", run.stderr);
    // A failing call under --tx rolls back and exits with its error.
    let run = tpmon(["call", "-c", &conf, "--run-dir", &run_dir, "FAIL", "--tx"]);
    assert_eq!(run.code, Some(i32::from(ErrorKind::SvcFail.code())));
    assert!(run.stderr.contains("rolled back "), "{}", run.stderr);

    // b cannot commit for a while: the transaction stays logged and visible.
    std::fs::write(f.b.join("script"), "commit rmfail 1000000\n").expect("script");
    let mut c: Client = d.client();
    c.tx_begin().expect("begin");
    c.call("NESTED", &s("o"), Flags::NONE).expect("NESTED");
    let gtrid = c.tx_info().xid.expect("xid");
    assert_eq!(c.tx_commit(), Ok(Committed::Done), "decision logged");
    let item = support::wait_for("the transaction to be retried", LONG, || {
        tx_list(&d)
            .as_array()
            .and_then(|a| a.first().cloned())
            .filter(|t| t["retries"].as_u64().unwrap_or(0) >= 1)
    });
    assert_eq!(item["gtrid"], gtrid.as_str());
    assert_eq!(item["logged"], true);
    assert!(
        item["last_error"].as_str().unwrap_or("").contains("rmfail"),
        "{item}"
    );
    let human = tpmon(["tx", "list", "-c", &conf, "--run-dir", &run_dir]);
    assert!(human.stdout.contains(&gtrid), "{human:?}");
    // The log decided commit: rollback by hand is refused.
    let run = tpmon(["tx", "rollback", "-c", &conf, "--run-dir", &run_dir, &gtrid]);
    assert!(!run.ok());
    assert!(run.stderr.contains("already decided commit"), "{run:?}");
    // Once b works again, a manual commit finishes it.
    std::fs::write(f.b.join("script"), "").expect("script");
    let run = tpmon(["tx", "commit", "-c", &conf, "--run-dir", &run_dir, &gtrid]);
    assert!(run.ok(), "{run:?}");
    nothing_left(&d, &f);
    assert_eq!(calls(&f.b, "commit", Some("ok")), 2);
}

#[test]
fn a_group_with_automatic_transactions_runs_each_call_in_its_own() {
    let f = fakes("tx-auto");
    let cfg = Config::new()
        .section("[domain.tx]\nrecovery_interval_ms = 50\n")
        .section(&format!(
            "[[group]]\nname = \"ga\"\nauto_transaction = true\n[group.rm]\nkind = \"fake\"\nopen = {}\n",
            support::toml_string(&f.a.display().to_string())
        ))
        .server("sa", &["group = \"ga\""])
        .services("sa", &["ECHO", "FAIL", "TXINFO"]);
    let d = Domain::boot("tx-auto", &cfg);
    let mut c = d.client();
    // Outside a transaction: the server begins, prepares and commits on its own.
    let r = c.call("ECHO", &s("auto"), Flags::NONE).expect("ECHO");
    assert_eq!(support::text(&r), "auto");
    assert_eq!(calls(&f.a, "prepare", Some("ok")), 1);
    assert_eq!(calls(&f.a, "commit", Some("ok")), 1);
    // A failing routine rolls its automatic transaction back.
    let e = c.call("FAIL", &s("x"), Flags::NONE).expect_err("FAIL");
    assert_eq!(e.kind, ErrorKind::SvcFail);
    assert_eq!(calls(&f.a, "rollback_active", None), 1);
    // Inside the caller's transaction the call joins it instead.
    c.tx_begin().expect("begin");
    c.call("ECHO", &s("joined"), Flags::NONE).expect("ECHO");
    assert_eq!(c.tx_info().branches, 1);
    assert_eq!(c.tx_commit(), Ok(Committed::Done));
    assert_eq!(calls(&f.a, "commit", Some("ok")), 2);
    // TPNOTRAN from inside a transaction (Tuxedo's AUTOTRAN): the call runs in a
    // transaction of its own, which commits whatever becomes of the caller's.
    c.tx_begin().expect("begin");
    c.call("ECHO", &s("apart"), Flags::NOTRAN).expect("ECHO");
    assert_eq!(c.tx_info().branches, 0, "the call did not join");
    c.tx_rollback().expect("rollback");
    assert_eq!(calls(&f.a, "commit", Some("ok")), 3);
    // The routine is told it runs in a transaction (TPTRAN), its own or the caller's.
    let r = c.call("TXINFO", &s(""), Flags::NONE).expect("TXINFO");
    assert!(support::text(&r).starts_with("tran=true "), "{r:?}");
    c.tx_begin().expect("begin");
    let r = c.call("TXINFO", &s(""), Flags::NOTRAN).expect("TXINFO");
    assert!(support::text(&r).starts_with("tran=true "), "{r:?}");
    assert_eq!(c.tx_commit(), Ok(Committed::Done));
    nothing_left_in(&d, &[&f.a]);
}

#[test]
fn an_automatic_transaction_group_survives_a_failed_branch_start_and_chained_control() {
    let f = fakes("tx-auto-fail");
    let cfg = Config::new()
        .section("[domain.tx]\nrecovery_interval_ms = 50\n")
        .section(&format!(
            "[[group]]\nname = \"ga\"\nauto_transaction = true\n[group.rm]\nkind = \"fake\"\nopen = {}\n",
            support::toml_string(&f.a.display().to_string())
        ))
        .server("sa", &["group = \"ga\""])
        .services("sa", &["ECHO", "CHAINED", "TXINFO"]);
    let d = Domain::boot("tx-auto-fail", &cfg);
    let mut c = d.client();
    // The database refuses the first branch (a refusal: no retry on a new session).
    std::fs::write(f.a.join("script"), "begin fail 1\n").expect("script");
    let e = c.call("ECHO", &s("first"), Flags::NONE).expect_err("ECHO");
    assert_eq!(e.kind, ErrorKind::SvcErr, "{e:?}");
    assert!(
        e.detail.contains("cannot start the transaction branch"),
        "{e:?}"
    );
    // The database is fine again: the next automatic transactions work.
    for n in 0..3 {
        let r = c
            .call("ECHO", &s("next"), Flags::NONE)
            .expect("ECHO after the failed begin");
        assert_eq!(support::text(&r), "next", "{n}");
    }
    assert_eq!(calls(&f.a, "commit", Some("ok")), 3);
    // A routine that sets chained control: the runtime still ends its automatic
    // transaction unchained, so the next request begins its own.
    c.call("CHAINED", &s("c"), Flags::NONE).expect("CHAINED");
    let r = c
        .call("ECHO", &s("after"), Flags::NONE)
        .expect("ECHO after CHAINED");
    assert_eq!(support::text(&r), "after");
    assert_eq!(calls(&f.a, "commit", Some("ok")), 5);
    // CHAINED also set a one-second timeout for the routine's own transactions; the
    // automatic ones keep the domain's default (30 s).
    let r = c.call("TXINFO", &s(""), Flags::NONE).expect("TXINFO");
    let left: u64 = support::text(&r)
        .split("left_ms=")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("left_ms");
    assert!(
        left > 10_000,
        "the automatic transaction has {left} ms: {r:?}"
    );
    assert_eq!(calls(&f.a, "begin", Some("fail")), 1);
    nothing_left_in(&d, &[&f.a]);
    let log = d.log();
    assert!(
        !log.contains("still open"),
        "no transaction was left over:\n{log}"
    );
}

/// A service outside any transaction, in a group with the database of `rm` (the
/// lines of its `[group.rm]`, holding an empty table `t`), that begins a transaction itself: its own statements
/// join it (a branch begun at their first use) and commit or roll back with the work
/// of the services it calls, in chained transactions too; a transaction it leaves open
/// is rolled back with its statements and its caller told; ending past the server's
/// context is refused. `rows` reads `t`'s ids in order, `prepared` counts the
/// database's prepared branches.
fn a_transaction_a_service_began_itself(
    tag: &str,
    rm: &str,
    failed_statement_dooms: bool,
    rows: impl Fn(&Domain) -> Vec<i64>,
    prepared: impl Fn() -> usize,
) {
    let f = fakes(tag);
    let cfg = Config::new()
        .section("[domain.tx]\nrecovery_interval_ms = 50\n")
        .section(&format!("[[group]]\nname = \"gp\"\n[group.rm]\n{rm}\n"))
        .section(&format!(
            "[[group]]\nname = \"gb\"\n[group.rm]\nkind = \"fake\"\nopen = {}\n",
            support::toml_string(&f.b.display().to_string())
        ))
        .server("sp", &["group = \"gp\""])
        .server("sb", &["group = \"gb\""])
        .services("sp", &["SELFTX", "SQL", "ROWS"])
        .services("sb", &["ECHO"]);
    let d = Domain::boot(tag, &cfg);
    let mut c = d.client();
    let rows = || rows(&d);
    // The commit returns once the decision is logged; phase 2 follows.
    let committed = |ids: &[i64]| {
        support::wait_until("the committed rows are visible", LONG, || rows() == ids);
    };
    let mut selftx = |arg: &str| -> String {
        let r = c
            .call("SELFTX", &s(arg), Flags::NONE)
            .unwrap_or_else(|e| panic!("SELFTX {arg}: {e:?}"));
        support::text(&r)
    };

    // Committed: the routine's statement and ECHO's work together.
    let said = selftx("commit INSERT INTO t VALUES (1)");
    assert_eq!(said, "sql: ok; echo: Ok(()); end: Ok(Done)");
    committed(&[1]);
    assert_eq!(calls(&f.b, "commit", Some("ok")), 1);
    // Rolled back: neither stays.
    let said = selftx("rollback INSERT INTO t VALUES (2)");
    assert_eq!(said, "sql: ok; echo: Ok(()); end: Ok(())");
    assert_eq!(rows(), [1]);
    assert_eq!(calls(&f.b, "commit", Some("ok")), 1);
    // Ending past the server's context would lose the instance's branch: refused, and
    // the transaction continues (here to its rollback).
    let said = selftx("bypass INSERT INTO t VALUES (3)");
    assert!(
        said.starts_with("sql: ok; bypass: Err(Protocol(")
            && said.contains("ctx.client()")
            && said.ends_with("end: Ok(())"),
        "{said}"
    );
    assert_eq!(rows(), [1]);
    // Chained: the second transaction enlists the database again.
    let said = selftx("chained INSERT INTO t VALUES (4)|INSERT INTO t VALUES (5)");
    assert_eq!(said, "sql: ok; commit: Ok(Done); sql: ok; end: Ok(())");
    committed(&[1, 4]);
    // A statement that failed in the branch (PostgreSQL's transaction is then
    // aborted) fails its prepare: the whole transaction rolls back.
    let mut echo_rollbacks = 2;
    if failed_statement_dooms {
        let said = selftx("commit INSERT INTO t VALUES (1)");
        assert!(
            !said.starts_with("sql: ok;") && said.contains("end: Err(RolledBack("),
            "{said}"
        );
        echo_rollbacks += 1;
    }
    // Left open: rolled back with the routine's statement, and the caller is told.
    for arg in ["leave INSERT INTO t VALUES (6)", "leave-open"] {
        let e = c
            .call("SELFTX", &s(arg), Flags::NONE)
            .expect_err("SELFTX leave");
        assert_eq!(e.kind, ErrorKind::SvcErr, "{e:?}");
        assert!(
            e.detail
                .contains("began itself was still open; rolled back"),
            "{e:?}"
        );
    }
    support::wait_until("ECHO's branches are rolled back", LONG, || {
        calls(&f.b, "rollback", Some("ok")) == echo_rollbacks + 1
    });
    assert_eq!(rows(), [1, 4]);
    // Outside a transaction the same routine's database autocommits.
    let r = c
        .call("SQL", &s("INSERT INTO t VALUES (7)"), Flags::NONE)
        .expect("SQL");
    assert_eq!(support::text(&r), "ok");
    assert_eq!(rows(), [1, 4, 7]);
    assert_eq!(calls(&f.b, "commit", Some("ok")), 1);
    nothing_left_in(&d, &[&f.b]);
    assert_eq!(prepared(), 0, "no branch of the database stays prepared");
}

/// A private PostgreSQL server (stopped when dropped) with database `name` holding an
/// empty table `t (id bigint primary key)`, the database's URL, and a session on it.
fn pg_with_table(
    name: &str,
) -> (
    tpmon_testdb::PgServer,
    String,
    tpmon_xa::drivers::postgres::Client,
) {
    use tpmon_xa::drivers::postgres;
    let pg = tpmon_testdb::PgServer::start().unwrap_or_else(|e| panic!("{e}"));
    pg.create_database(name).unwrap_or_else(|e| panic!("{e}"));
    let url = pg.url(name);
    let mut db = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
    db.batch_execute("CREATE TABLE t (id bigint PRIMARY KEY)")
        .expect("table");
    (pg, url, db)
}

/// A domain whose group `gp` uses the PostgreSQL database at `url`, with recovery
/// every 50 ms; the caller adds the servers.
fn pg_group(url: &str) -> Config {
    Config::new()
        .section("[domain.tx]\nrecovery_interval_ms = 50\n")
        .section(&format!(
            "[[group]]\nname = \"gp\"\n[group.rm]\nkind = \"postgres\"\nopen = {}\n",
            support::toml_string(url)
        ))
}

#[test]
fn a_transaction_a_service_began_itself_includes_its_postgres_work() {
    let (_pg, url, db) = pg_with_table("selftx");
    let db = std::cell::RefCell::new(db);
    a_transaction_a_service_began_itself(
        "tx-selftx-pg",
        &format!("kind = \"postgres\"\nopen = {}", support::toml_string(&url)),
        true,
        |_| {
            db.borrow_mut()
                .query("SELECT id FROM t ORDER BY id", &[])
                .expect("rows")
                .iter()
                .map(|r| r.get(0))
                .collect()
        },
        || {
            db.borrow_mut()
                .query("SELECT gid FROM pg_prepared_xacts", &[])
                .expect("prepared")
                .len()
        },
    );
}

#[test]
fn a_transaction_a_service_began_itself_includes_its_mariadb_work() {
    use tpmon_xa::drivers::mysql::{self, prelude::Queryable};
    let maria = tpmon_testdb::MariaServer::start().unwrap_or_else(|e| panic!("{e}"));
    maria
        .create_database("selftx")
        .unwrap_or_else(|e| panic!("{e}"));
    let url = maria.url("selftx");
    let conn = || mysql::Conn::new(mysql::Opts::from_url(&url).expect("url")).expect("connect");
    conn()
        .query_drop("CREATE TABLE t (id bigint PRIMARY KEY) ENGINE=InnoDB")
        .expect("table");
    a_transaction_a_service_began_itself(
        "tx-selftx-maria",
        &format!("kind = \"mariadb\"\nopen = {}", support::toml_string(&url)),
        false,
        |_| conn().query("SELECT id FROM t ORDER BY id").expect("rows"),
        || {
            let r: Vec<mysql::Row> = conn().query("XA RECOVER").expect("xa recover");
            r.len()
        },
    );
}

/// A transaction that tpsvrinit began and left open is rolled back as soon as init
/// returns, with its statements: its locks are not held until the first request.
#[test]
fn a_transaction_tpsvrinit_leaves_open_is_rolled_back_at_once() {
    let (_pg, url, mut db) = pg_with_table("inittx");
    let cfg = pg_group(&url)
        .server(
            "sp",
            &[
                "group = \"gp\"",
                "args = [\"--init-tx-sql\", \"INSERT INTO t VALUES (9)\"]",
            ],
        )
        .services("sp", &["SQL"]);
    let d = Domain::boot("tx-init-open", &cfg);
    support::wait_until(
        "no session of the database stays in a transaction",
        LONG,
        || {
            let open: i64 = db
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE datname = 'inittx' AND state LIKE 'idle in transaction%'",
                    &[],
                )
                .expect("activity")
                .get(0);
            open == 0
        },
    );
    assert!(
        d.log().contains("still open on this instance's context"),
        "the cleanup is logged:\n{}",
        d.log()
    );
    // The row was never committed, and its key is free.
    db.batch_execute("INSERT INTO t VALUES (9)")
        .expect("the key is free");
}

#[test]
fn a_transaction_a_service_began_itself_includes_its_embedded_site_work() {
    a_transaction_a_service_began_itself(
        "tx-selftx-emb",
        "kind = \"embedded\"",
        false,
        |d| {
            let r = d.client().call("ROWS", &s(""), Flags::NONE).expect("ROWS");
            support::text(&r)
                .split(',')
                .filter(|n| !n.is_empty())
                .map(|n| n.parse().expect("id"))
                .collect()
        },
        // The site's prepared branches are in its memory; the log's emptiness
        // (checked by the helper) and the rows say what became of them.
        || 0,
    );
}

/// End to end over PostgreSQL: a service that commits the branch's database
/// transaction itself fails its call and the global transaction rolls back, with a
/// message saying why; normal and read-only branches commit.
#[test]
fn a_service_that_commits_its_postgres_branch_itself_fails_the_transaction() {
    use tpmon_xa::drivers::postgres;
    let (_pg, url, mut db) = pg_with_table("ended");
    let cfg = pg_group(&url)
        .server("sp", &["group = \"gp\""])
        .services("sp", &["SQL"]);
    let d = Domain::boot("tx-pg-ended", &cfg);
    let mut c = d.client();
    let has = |db: &mut postgres::Client, id: i64| -> bool {
        db.query_one("SELECT count(*) FROM t WHERE id = $1", &[&id])
            .expect("count")
            .get::<_, i64>(0)
            == 1
    };

    c.tx_begin().expect("begin");
    let e = c
        .call("SQL", &s("INSERT INTO t VALUES (1); COMMIT"), Flags::NONE)
        .expect_err("a service that committed its branch");
    assert_eq!(e.kind, ErrorKind::SvcErr, "{e:?}");
    assert!(
        e.detail
            .contains("committed or rolled back the database transaction itself")
            && e.detail.contains("not part of the global transaction"),
        "{e:?}"
    );
    assert!(matches!(c.tx_commit(), Err(TxError::RolledBack(_))));
    assert!(has(&mut db, 1), "what the service committed itself stays");
    support::wait_until("the instance logged it", LONG, || {
        d.log().contains("failed to prepare")
    });

    // Normal and read-only branches commit.
    c.tx_begin().expect("begin");
    c.call("SQL", &s("INSERT INTO t VALUES (2)"), Flags::NONE)
        .expect("SQL");
    c.call("SQL", &s("SELECT 1"), Flags::NONE).expect("SQL");
    assert_eq!(c.tx_commit(), Ok(Committed::Done));
    assert!(has(&mut db, 2));
    let prepared: i64 = db
        .query_one("SELECT count(*) FROM pg_prepared_xacts", &[])
        .expect("prepared")
        .get(0);
    assert_eq!(prepared, 0);
}

/// A group on database `kind` at `url` whose server offers SQL; the database is
/// restarted by `restart` after a first statement: a non-transactional service then
/// fails at most once, and works on a new session after that. `count` reads `t`'s rows.
fn restart_outside_transactions(
    tag: &str,
    kind: &str,
    url: &str,
    restart: impl FnOnce(),
    count: impl Fn() -> i64,
) {
    let cfg = Config::new()
        .section(&format!(
            "[[group]]\nname = \"gm\"\n[group.rm]\nkind = \"{kind}\"\nopen = {}\n",
            support::toml_string(url)
        ))
        .server("sm", &["group = \"gm\""])
        .services("sm", &["SQL"]);
    let d = Domain::boot(tag, &cfg);
    let mut c = d.client();
    let sql = |c: &mut Client, text: &str| c.call("SQL", &s(text), Flags::NONE);
    assert_eq!(
        support::text(&sql(&mut c, "INSERT INTO t VALUES (1)").expect("SQL")),
        "ok"
    );
    restart();
    // The instance's session died with the server: the first statement may fail
    // (TPFAIL from the routine), the next one runs on a new session.
    if let Err(e) = sql(&mut c, "INSERT INTO t VALUES (2)") {
        assert_eq!(e.kind, ErrorKind::SvcFail, "{e:?}");
        sql(&mut c, "INSERT INTO t VALUES (2)").expect("SQL after the failure");
    }
    sql(&mut c, "INSERT INTO t VALUES (3)").expect("SQL again");
    assert_eq!(count(), 3);
}

/// After a MariaDB restart a non-transactional service fails at most once: the failure
/// makes the instance check its connection (a ping) and replace the broken one.
#[test]
fn a_mariadb_session_broken_by_a_restart_is_replaced_outside_transactions() {
    use tpmon_xa::drivers::mysql::{self, prelude::Queryable};
    let mut maria = tpmon_testdb::MariaServer::start().unwrap_or_else(|e| panic!("{e}"));
    maria
        .create_database("restart")
        .unwrap_or_else(|e| panic!("{e}"));
    let url = maria.url("restart");
    let conn = || mysql::Conn::new(mysql::Opts::from_url(&url).expect("url")).expect("connect");
    conn()
        .query_drop("CREATE TABLE t (id int PRIMARY KEY) ENGINE=InnoDB")
        .expect("table");
    restart_outside_transactions(
        "maria-restart",
        "mariadb",
        &url,
        || {
            maria.stop();
            maria.start_again().unwrap_or_else(|e| panic!("{e}"));
        },
        || {
            conn()
                .query_first("SELECT COUNT(*) FROM t")
                .expect("count")
                .unwrap_or(-1)
        },
    );
}

/// The same with PostgreSQL, whose driver notices the closed session at the failed
/// statement.
#[test]
fn a_postgres_session_broken_by_a_restart_is_replaced_outside_transactions() {
    use tpmon_xa::drivers::postgres;
    let mut pg = tpmon_testdb::PgServer::start().unwrap_or_else(|e| panic!("{e}"));
    pg.create_database("restart")
        .unwrap_or_else(|e| panic!("{e}"));
    let url = pg.url("restart");
    let conn = || postgres::Client::connect(&url, postgres::NoTls).expect("connect");
    conn()
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .expect("table");
    restart_outside_transactions(
        "pg-restart",
        "postgres",
        &url,
        || {
            pg.stop();
            pg.start_again().unwrap_or_else(|e| panic!("{e}"));
        },
        || {
            conn()
                .query_one("SELECT count(*) FROM t", &[])
                .expect("count")
                .get(0)
        },
    );
}

fn nothing_left_in(d: &Domain, dirs: &[&Path]) {
    support::wait_until(
        "no branch stays prepared and the log is empty",
        LONG,
        || {
            dirs.iter().all(|p| FakeRm::prepared(p).is_empty())
                && tx_list(d).as_array().is_some_and(Vec::is_empty)
        },
    );
}

#[test]
fn manual_resolution_follows_presumed_abort() {
    let f = fakes("tx-manual");
    let d = Domain::boot("tx-manual", &config(&f.a, &f.b, &[]));
    let conf = d.client_config.to_str().unwrap_or_default().to_string();
    let run_dir = d.run_dir.to_str().unwrap_or_default().to_string();
    // A prepared branch nobody decided, still within its deadline.
    let mut c = d.client();
    c.tx_set_timeout(Duration::from_secs(60)).expect("timeout");
    c.tx_begin().expect("begin");
    c.call("ECHO", &s("undecided"), Flags::NONE).expect("ECHO");
    let gtrid = c.tx_info().xid.expect("xid");
    // Without a logged decision commit is refused (presumed abort) ...
    let run = tpmon(["tx", "commit", "-c", &conf, "--run-dir", &run_dir, &gtrid]);
    assert!(
        !run.ok() && run.stderr.contains("presumed aborted"),
        "{run:?}"
    );
    // ... and rollback too while the originator may still end it.
    let run = tpmon(["tx", "rollback", "-c", &conf, "--run-dir", &run_dir, &gtrid]);
    assert!(
        !run.ok() && run.stderr.contains("may still be running"),
        "{run:?}"
    );
    assert_eq!(c.tx_commit(), Ok(Committed::Done));
    nothing_left(&d, &f);
}

#[test]
fn a_log_directory_without_a_log_is_refused() {
    let f = fakes("tx-logdir");
    let dir = support::TempDir::new("tx-logdir-files");
    std::fs::write(dir.path.join("notes.txt"), "not a log").expect("file");
    let cfg = config(
        &f.a,
        &f.b,
        &[&format!(
            "log_dir = {}",
            support::toml_string(&dir.path.display().to_string())
        )],
    );
    let tmp = support::TempDir::new("tx-logdir-domain");
    let conf = tmp.path.join("domain.toml");
    std::fs::write(&conf, cfg.render()).expect("config");
    let run = support::boot_detached(&conf, &tmp.path.join("run"));
    assert!(!run.ok(), "boot must refuse: {run:?}");
    let text = format!("{}{}", run.stdout, run.stderr);
    assert!(text.contains("holds no log"), "{text}");
    assert!(text.contains(&dir.path.display().to_string()), "{text}");
}

#[test]
fn a_branch_refused_in_phase_two_is_a_heuristic_mix_kept_for_the_operator() {
    let f = fakes("tx-heur");
    let d = Domain::boot("tx-heur", &config(&f.a, &f.b, &[]));
    let conf = d.client_config.to_str().unwrap_or_default().to_string();
    let run_dir = d.run_dir.to_str().unwrap_or_default().to_string();
    std::fs::write(f.b.join("script"), "commit fail 1\n").expect("script");
    let mut c = d.client();
    c.tx_set_commit_return(CommitReturn::Completed);
    c.tx_begin().expect("begin");
    c.call("NESTED", &s("h"), Flags::NONE).expect("NESTED");
    let gtrid = c.tx_info().xid.expect("xid");
    match c.tx_commit() {
        Err(TxError::Mixed(why)) => assert!(why.contains("refused"), "{why}"),
        other => panic!("expected a heuristic mix, got {other:?}"),
    }
    // Kept for the operator: listed, and recovery does not retry it on its own.
    let item = support::wait_for("the heuristic transaction is listed", LONG, || {
        tx_list(&d).as_array().and_then(|a| a.first().cloned())
    });
    assert_eq!(item["gtrid"], gtrid.as_str());
    assert!(
        item["state"].as_str().unwrap_or("").contains("heuristic"),
        "{item}"
    );
    std::thread::sleep(Duration::from_millis(300)); // a few recovery passes (50 ms each)
    assert_eq!(
        calls(&f.b, "commit", None),
        1,
        "recovery leaves it alone: {}",
        std::fs::read_to_string(f.b.join("calls")).unwrap_or_default()
    );
    assert_eq!(calls(&f.a, "commit", Some("ok")), 1);
    // The operator drives it again once the resource manager accepts.
    let run = tpmon(["tx", "commit", "-c", &conf, "--run-dir", &run_dir, &gtrid]);
    assert!(run.ok(), "{run:?}");
    nothing_left(&d, &f);
    assert_eq!(calls(&f.b, "commit", Some("ok")), 1);
}

#[test]
fn chained_control_and_tx_info() {
    let f = fakes("tx-chain");
    let d = Domain::boot("tx-chain", &config(&f.a, &f.b, &[]));
    let mut c = d.client();
    let info = c.tx_info();
    assert_eq!(info.xid, None);
    assert_eq!(
        info.timeout,
        Duration::from_secs(30),
        "the domain's default"
    );
    assert!(
        c.tx_set_timeout(Duration::from_secs(100_000)).is_err(),
        "beyond timeout_max_s"
    );
    c.tx_set_timeout(Duration::from_secs(5)).expect("timeout");
    c.tx_set_commit_return(CommitReturn::Completed);
    c.tx_set_control(tpmon_client::TxControl::Chained);
    // Ending nothing is a protocol error that leaves the context as it was: no
    // transaction begins behind the caller's back.
    assert!(matches!(c.tx_rollback(), Err(TxError::Protocol(_))));
    assert!(matches!(c.tx_commit(), Err(TxError::Protocol(_))));
    assert!(!c.in_transaction(), "a protocol error chains nothing");
    c.tx_begin().expect("begin");
    let first = c.tx_info().xid.expect("xid");
    assert_eq!(c.tx_info().status, Some(TxStatus::Active));
    c.call("ECHO", &s("1"), Flags::NONE).expect("ECHO");
    assert_eq!(c.tx_commit(), Ok(Committed::Done));
    // Chained: the next transaction began with the commit.
    let second = c.tx_info().xid.expect("chained xid");
    assert_ne!(first, second);
    assert_eq!(c.tx_info().timeout, Duration::from_secs(5));
    assert_eq!(c.tx_info().commit_return, CommitReturn::Completed);
    c.tx_rollback().expect("rollback");
    assert!(c.in_transaction(), "rollback chains too");
    c.tx_set_control(tpmon_client::TxControl::Unchained);
    c.tx_rollback().expect("rollback");
    assert!(!c.in_transaction());
    assert_eq!(calls(&f.b, "commit", Some("ok")), 1);
    nothing_left(&d, &f);
}

#[test]
fn a_transaction_ends_once_and_servers_join_only_this_domains_transactions() {
    use std::io::{Read, Write};
    use tpmon_proto::{encode_frame, Branch, FrameDecoder, Message, TxEnd, TxOutcome, Vote};

    let f = fakes("tx-once");
    let d = Domain::boot("tx-once", &config(&f.a, &f.b, &[]));
    // b cannot roll back for now: the rollback leaves b's branch prepared.
    std::fs::write(f.b.join("script"), "rollback rmfail 2\n").expect("script");
    let mut c = d.client();
    c.tx_begin().expect("begin");
    c.call("NESTED", &s("once"), Flags::NONE).expect("NESTED");
    let gtrid = c.tx_info().xid.expect("xid");
    let on_b = FakeRm::prepared(&f.b);
    assert_eq!(on_b.len(), 1);
    let bqual = on_b[0].split('|').nth(1).expect("bqual").to_string();
    c.tx_rollback().expect("rollback");
    // Someone sends a commit for the same transaction with b's branch: refused.
    let mut tm =
        std::os::unix::net::UnixStream::connect(d.run_dir.join("tm.sock")).expect("tm.sock");
    let mut frame = Vec::new();
    let end = TxEnd {
        gtrid: gtrid.clone().into_bytes(),
        commit: true,
        wait_completed: true,
        branches: vec![Branch {
            group: 1,
            bqual: bqual.into_bytes(),
            vote: Vote::Prepared,
            cpn: 0,
        }],
        doomed: String::new(),
    };
    encode_frame(&Message::TxEnd(end).encode(), &mut frame);
    tm.write_all(&frame).expect("send");
    let mut dec = FrameDecoder::new(1 << 20);
    let mut buf = [0u8; 4096];
    let answer = loop {
        if let Some(body) = dec.next_frame().expect("frame") {
            break Message::decode(&body).expect("decode");
        }
        let n = tm.read(&mut buf).expect("read");
        assert!(n > 0, "the daemon closed the socket");
        dec.extend(&buf[..n]);
    };
    match answer {
        Message::TxDone(done) => assert_eq!(done.outcome, TxOutcome::RolledBack, "{done:?}"),
        other => panic!("unexpected answer {other:?}"),
    }
    assert_eq!(
        calls(&f.b, "commit", None),
        0,
        "nothing commits after a rollback"
    );
    // Recovery finishes the rollback once b works again.
    nothing_left(&d, &f);

    // A server refuses to join a transaction of another domain.
    c.set_transaction(Some(tpmon_proto::TxContext {
        format_id: tpmon_proto::FORMAT_ID,
        gtrid: b"other:node:1:1:1:ffffffff".to_vec(),
        deadline_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |t| t.as_millis() as u64)
            + 10_000,
        branches: Vec::new(),
    }));
    let e = c
        .call("ECHO", &s("x"), Flags::NONE)
        .expect_err("foreign transaction");
    assert_eq!(e.kind, ErrorKind::Tran, "{e:?}");
    assert!(FakeRm::prepared(&f.b).is_empty());

    // Nor one of this domain that names a node the domain does not have: no node
    // could ever decide it, so its branch would stay prepared for good.
    let domain = gtrid.split(':').next().expect("domain").to_string();
    let deadline_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.as_millis() as u64)
        + 10_000;
    let ghost = tpmon_proto::Gtrid {
        domain,
        node: "ghost".into(),
        epoch: 1,
        origin: 1,
        seq: 1,
        deadline_s: deadline_ms.div_ceil(1000),
    };
    c.set_transaction(Some(tpmon_proto::TxContext {
        format_id: tpmon_proto::FORMAT_ID,
        gtrid: ghost.encode().into_bytes(),
        deadline_ms,
        branches: Vec::new(),
    }));
    let e = c
        .call("ECHO", &s("x"), Flags::NONE)
        .expect_err("a transaction of no node of the domain");
    assert_eq!(e.kind, ErrorKind::Tran, "{e:?}");
    assert!(e.to_string().contains("not a node of domain"), "{e}");
    assert!(FakeRm::prepared(&f.b).is_empty());
}

#[test]
fn another_domains_log_is_refused() {
    let f = fakes("tx-foreign-log");
    let logs = support::TempDir::new("tx-foreign-log-dir");
    let log_dir = logs.path.join("txlog");
    let line = format!(
        "log_dir = {}",
        support::toml_string(&log_dir.display().to_string())
    );
    let cfg = config(&f.a, &f.b, &[&line]);
    let mut d = Domain::boot("tx-foreign-log", &cfg);
    assert!(d.down().ok());
    // The same log directory for a domain of another name.
    let other = cfg.render().replace("name = \"it\"", "name = \"other\"");
    assert!(other.contains("name = \"other\""));
    let tmp = support::TempDir::new("tx-foreign-log-other");
    let conf = tmp.path.join("domain.toml");
    std::fs::write(&conf, other).expect("config");
    let run = support::boot_detached(&conf, &tmp.path.join("run"));
    assert!(!run.ok(), "boot must refuse another domain's log: {run:?}");
    let text = format!("{}{}", run.stdout, run.stderr);
    assert!(text.contains(&log_dir.display().to_string()), "{text}");
    assert!(
        text.contains("belongs to domain it node it"),
        "names the owner: {text}"
    );
}

#[test]
fn garbage_on_the_tm_socket_closes_only_that_connection() {
    use std::io::{Read, Write};

    let f = fakes("tx-garbage");
    let d = Domain::boot("tx-garbage", &config(&f.a, &f.b, &[]));
    for junk in [
        &b"\x00\x00\x00\x05hello"[..],    // a frame that is not a message
        &b"\xff\xff\xff\xffxxxx"[..],     // a frame far beyond the limit
        &b"\x00\x00\x00\x02\x02\x0a"[..], // a TxEnd cut short
    ] {
        let mut s =
            std::os::unix::net::UnixStream::connect(d.run_dir.join("tm.sock")).expect("tm.sock");
        s.write_all(junk).expect("send");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        assert_eq!(
            s.read(&mut buf).expect("the daemon closes the connection"),
            0
        );
    }
    // Everyone else is still served.
    let mut c = d.client();
    c.tx_begin().expect("begin");
    c.call("NESTED", &s("after"), Flags::NONE).expect("NESTED");
    assert_eq!(c.tx_commit(), Ok(Committed::Done));
    nothing_left(&d, &f);
    assert!(d.log().contains("tm socket"), "the daemon logs why");
}

/// Sends one TxEnd on the TM's socket and reads its answer.
fn send_tx_end(tm: &mut std::os::unix::net::UnixStream, end: tpmon_proto::TxEnd) {
    use std::io::Write;
    use tpmon_proto::{encode_frame, Message};
    let mut frame = Vec::new();
    encode_frame(&Message::TxEnd(end).encode(), &mut frame);
    tm.write_all(&frame).expect("send");
}

fn read_tx_done(tm: &mut std::os::unix::net::UnixStream) -> tpmon_proto::TxDone {
    use std::io::Read;
    use tpmon_proto::{FrameDecoder, Message};
    let mut dec = FrameDecoder::new(1 << 20);
    let mut buf = [0u8; 4096];
    loop {
        if let Some(body) = dec.next_frame().expect("frame") {
            match Message::decode(&body).expect("decode") {
                Message::TxDone(done) => return done,
                other => panic!("unexpected answer {other:?}"),
            }
        }
        let n = tm.read(&mut buf).expect("read");
        assert!(n > 0, "the daemon closed the socket");
        dec.extend(&buf[..n]);
    }
}

#[test]
fn a_rollback_never_runs_beside_a_commit_under_way() {
    use tpmon_proto::{Branch, TxEnd, TxOutcome, Vote};

    let f = fakes("tx-race");
    let tmp = support::TempDir::new("tx-race-holds");
    let (checked, deciding) = (tmp.path.join("checked"), tmp.path.join("deciding"));
    let fp = format!(
        "tm.end_checked=wait:{},tm.before_decision=wait:{}",
        checked.display(),
        deciding.display()
    );
    let d = Domain::boot_env(
        "tx-race",
        &config(&f.a, &f.b, &[]),
        &[("TPMON_FAILPOINTS", fp.as_str())],
    );
    let mut c = d.client();
    c.tx_begin().expect("begin");
    c.call("NESTED", &s("race"), Flags::NONE).expect("NESTED");
    let gtrid = c.tx_info().xid.expect("xid");
    let branch = |dir: &Path, group: u16| {
        let p = FakeRm::prepared(dir);
        assert_eq!(p.len(), 1, "{p:?}");
        Branch {
            group,
            bqual: p[0].split('|').nth(1).expect("bqual").as_bytes().to_vec(),
            vote: Vote::Prepared,
            cpn: 0,
        }
    };
    let branches = vec![branch(&f.a, 0), branch(&f.b, 1)];

    // A rollback of the same transaction (a confused or hostile process on the TM's
    // socket) gets past the check for an ended transaction first, and is held there.
    let mut tm =
        std::os::unix::net::UnixStream::connect(d.run_dir.join("tm.sock")).expect("tm.sock");
    send_tx_end(
        &mut tm,
        TxEnd {
            gtrid: gtrid.clone().into_bytes(),
            commit: false,
            wait_completed: true,
            branches,
            doomed: String::new(),
        },
    );
    support::wait_until("the rollback is held", LONG, || checked.exists());
    // The originator's commit passes the gate and is held before its decision.
    let committer = std::thread::spawn(move || {
        let r = c.tx_commit();
        (c, r)
    });
    support::wait_until("the commit is deciding", LONG, || deciding.exists());
    // The rollback goes on: it must not roll back a transaction being committed.
    std::fs::remove_file(&checked).expect("release the rollback");
    let answer = read_tx_done(&mut tm);
    assert_eq!(answer.outcome, TxOutcome::Refused, "{answer:?}");
    assert!(answer.detail.contains("being ended"), "{answer:?}");
    assert_eq!(rollbacks(&f), 0);
    std::fs::remove_file(&deciding).expect("release the commit");
    let (_c, r) = committer.join().expect("committer");
    assert!(r.is_ok(), "{r:?}");
    nothing_left(&d, &f);
    assert_eq!(calls(&f.a, "commit", Some("ok")), 1);
    assert_eq!(calls(&f.b, "commit", Some("ok")), 1);
    assert_eq!(rollbacks(&f), 0);
}

#[test]
fn a_commit_naming_an_impossible_branch_is_refused_and_logs_nothing() {
    use tpmon_proto::{Branch, TxEnd, TxOutcome, Vote};

    let f = fakes("tx-nul");
    let d = Domain::boot("tx-nul", &config(&f.a, &f.b, &[]));
    let mut c = d.client();
    c.tx_begin().expect("begin");
    c.call("NESTED", &s("nul"), Flags::NONE).expect("NESTED");
    let gtrid = c.tx_info().xid.expect("xid");
    let real = FakeRm::prepared(&f.a);
    assert_eq!(real.len(), 1, "{real:?}");
    let mut tm =
        std::os::unix::net::UnixStream::connect(d.run_dir.join("tm.sock")).expect("tm.sock");
    let branch = |bqual: &[u8]| Branch {
        group: 0,
        bqual: bqual.to_vec(),
        vote: Vote::Prepared,
        cpn: 0,
    };
    // A commit of the transaction whose second branch no resource manager could hold
    // (PostgreSQL cannot be sent a NUL): logged, it could never complete.
    send_tx_end(
        &mut tm,
        TxEnd {
            gtrid: gtrid.into_bytes(),
            commit: true,
            wait_completed: true,
            branches: vec![
                branch(real[0].split('|').nth(1).expect("bqual").as_bytes()),
                branch(b"x\0y"),
            ],
            doomed: String::new(),
        },
    );
    let answer = read_tx_done(&mut tm);
    assert_eq!(answer.outcome, TxOutcome::Refused, "{answer:?}");
    assert!(answer.detail.contains("qualifier"), "{answer:?}");
    // The real branch is rolled back, nothing is logged or left.
    nothing_left(&d, &f);
    assert_eq!(calls(&f.a, "commit", None), 0);
    assert_eq!(calls(&f.a, "rollback", Some("ok")), 1);
    drop(c);
}

#[test]
fn a_forward_refused_by_its_target_still_reports_the_forwarded_branch() {
    let f = fakes("tx-fwd-refused");
    // ECHO accepts only FIELD buffers, so FWD's STRING is refused where it is forwarded
    // to; recovery sweeps only once a minute, so what rolls FWD's branch back at once
    // can only be the originator's rollback, which must know of it.
    let cfg = Config::new()
        .section("[domain.tx]\nrecovery_interval_ms = 60000\n")
        .section(&format!(
            "[[group]]\nname = \"ga\"\n[group.rm]\nkind = \"fake\"\nopen = {}\n",
            support::toml_string(&f.a.display().to_string())
        ))
        .section(&format!(
            "[[group]]\nname = \"gb\"\n[group.rm]\nkind = \"fake\"\nopen = {}\n",
            support::toml_string(&f.b.display().to_string())
        ))
        .server("sa", &["group = \"ga\""])
        .server("sb", &["group = \"gb\""])
        .services("sa", &["FWD"])
        .service("ECHO", "sb", &["buffer_types = [\"FIELD\"]"]);
    let d = Domain::boot("tx-fwd-refused", &cfg);
    let mut c = d.client();
    c.tx_begin().expect("begin");
    let e = c
        .call("FWD", &s("not a field buffer"), Flags::NONE)
        .expect_err("the forward's target refuses the buffer");
    assert_eq!(e.kind, ErrorKind::IType, "{e:?}");
    assert_eq!(FakeRm::prepared(&f.a).len(), 1, "FWD prepared its branch");
    let r = c.tx_commit();
    assert!(matches!(r, Err(TxError::RolledBack(_))), "{r:?}");
    assert!(
        FakeRm::prepared(&f.a).is_empty(),
        "the rollback knew FWD's branch and rolled it back at once"
    );
    assert_eq!(calls(&f.a, "rollback", Some("ok")), 1);
}
