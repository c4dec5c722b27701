//! The bank example over real databases (PostgreSQL, and MariaDB as a third), and the
//! crash tests of global transactions: kill -9 of servers and of the daemon, and a
//! database restart, at each step of two-phase commit (named failpoints, not timing),
//! plus a seeded random kill loop. Every case ends with the same checks: nothing of
//! ours stays prepared, the log holds no transaction, the money is all there, every
//! transfer is on both sides or neither, and every acknowledged transfer is present.

mod support;

use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::bank::{transfer, BankDbs, Fields, Transfer};
use support::{tpmon, tpmon_env_without, wait_until, Domain, TempDir};

const LONG: Duration = Duration::from_secs(60);

static NEXT_TXID: AtomicI64 = AtomicI64::new(1);

fn txid() -> i64 {
    NEXT_TXID.fetch_add(1, Ordering::Relaxed)
}

#[test]
fn bank_example_over_postgres_and_mariadb() {
    let dbs = BankDbs::start(true);
    let cfg = dbs.config(&[], &[]);
    let d = Domain::boot("bank-e2e", &cfg);
    let journal = d.dir().join("acked.txt");
    for todb in ["2", "3"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tpmon-bank-client"))
            .args(["-c", d.config.to_str().unwrap_or_default()])
            .args(["--run-dir", d.run_dir.to_str().unwrap_or_default()])
            .args(["--clients", "3", "--transfers", "20", "--todb", todb])
            .args([
                "--seed",
                todb,
                "--journal",
                journal.to_str().unwrap_or_default(),
            ])
            .output()
            .expect("running tpmon-bank-client");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("invariant holds"),
            "bank client (todb {todb}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("transfers committed"), "{stdout}");
    }
    // `tpmon call TRANSFER --tx` with the given fields.
    let conf = d.client_config.to_str().unwrap_or_default().to_string();
    let run_dir = d.run_dir.to_str().unwrap_or_default().to_string();
    let call_transfer = |fields: &[&str]| {
        let mut args = vec![
            "call",
            "-c",
            &conf,
            "--run-dir",
            &run_dir,
            "TRANSFER",
            "--tx",
        ];
        for f in fields {
            args.extend(["--field", f]);
        }
        tpmon(args)
    };
    // Funds short: the transfer fails and the transaction rolls back.
    let run = call_transfer(&["FROM=1", "TO=2", "AMOUNT=1000000", "TXID=999999999"]);
    assert_eq!(run.code, Some(11), "TPESVCFAIL: {run:?}");
    assert!(run.stdout.contains("insufficient funds"), "{run:?}");
    assert!(run.stderr.contains("rolled back"), "{}", run.stderr);
    // And one by hand that commits.
    let run = call_transfer(&["FROM=3", "TO=4", "AMOUNT=5", "TXID=999999998", "TODB=3"]);
    assert!(run.ok(), "{run:?}");
    // FROM, TO and AMOUNT alone: TRANSFER derives the transfer's id from the global
    // transaction and replies with it.
    let run = call_transfer(&["FROM=5", "TO=6", "AMOUNT=7"]);
    assert!(run.ok(), "{run:?}");
    let derived: i64 = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("TXID\t"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("the reply names the TXID: {run:?}"));
    // Funds short inside the caller's own transaction: the failure dooms it, so the
    // commit that follows reports the rollback.
    let f = Fields::new();
    let mut c = d.client();
    c.tx_begin().expect("begin");
    let e = c
        .call(
            "TRANSFER",
            &f.transfer(7, 8, 1_000_000, 999_999_997, 2),
            tpmon_client::Flags::NONE,
        )
        .expect_err("funds are short");
    assert_eq!(e.kind, tpmon_client::ErrorKind::SvcFail, "{e:?}");
    assert!(
        matches!(c.tx_commit(), Err(tpmon_client::TxError::RolledBack(_))),
        "a doomed transaction does not commit"
    );
    // A branch that only reads votes read-only: it commits at once, nothing stays
    // prepared, and the commit needs no phase 2 for it. (The commits above answered
    // once their decisions were logged: their phase 2 may still run.)
    wait_until("earlier phase 2 finished", LONG, || {
        dbs.prepared().is_empty()
    });
    let mut c = d.client();
    c.tx_begin().expect("begin");
    c.call(
        "SUM1",
        &tpmon_client::Buffer::string(""),
        tpmon_client::Flags::NONE,
    )
    .expect("SUM1 in a transaction");
    assert_eq!(c.tx_info().branches, 1);
    assert!(
        dbs.prepared().is_empty(),
        "a read-only branch is not left prepared"
    );
    assert!(c.tx_commit().is_ok());
    let mut acked: Vec<i64> = std::fs::read_to_string(&journal)
        .expect("journal")
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect();
    assert!(acked.len() >= 60, "most transfers commit: {}", acked.len());
    acked.push(999_999_998);
    acked.push(derived);
    dbs.check(&d, &acked);
    assert!(!dbs.debited().contains(&999_999_997));
}

/// The number of accounts is the servers' `TPMON_BANK_ACCOUNTS`: 40 here, which the
/// bank client's invariant (`--accounts 40`) then finds.
#[test]
fn the_number_of_accounts_is_configurable() {
    let dbs = BankDbs::start(false);
    let mut text = dbs.config(&[], &[]).render();
    for server in ["bank1", "bank2"] {
        let anchor = format!("name = \"{server}\"\n");
        text = text.replace(
            &anchor,
            &format!("{anchor}env = {{ TPMON_BANK_ACCOUNTS = \"40\" }}\n"),
        );
    }
    let d = Domain::boot("bank-accounts", &support::Config::raw(&text));
    bank_client(
        &d,
        &["--clients", "2", "--transfers", "10", "--accounts", "40"],
        "total before 80000, after 80000",
    );
}

/// Runs `tpmon-bank-client ARGS` on `d` (without the databases' URL variables in its
/// environment: it does not need them) and checks that it succeeds and prints `expect`.
fn bank_client(d: &Domain, args: &[&str], expect: &str) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tpmon-bank-client"))
        .env_remove(URL_VARS[0])
        .env_remove(URL_VARS[1])
        .args(["-c", d.config.to_str().unwrap_or_default()])
        .args(["--run-dir", d.run_dir.to_str().unwrap_or_default()])
        .args(args)
        .output()
        .expect("running tpmon-bank-client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(expect),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The example's configuration as shipped: the daemon takes the databases' URLs from
/// `TPMON_BANK_DB1` and `TPMON_BANK_DB2`, while the bank client, `tpmon call`, `tpmon
/// tx list` and `tpmon down` run without them (an operator's shell need not hold the
/// database passwords), and `tpmon boot` without them names the variable.
/// The variables the bank example's configuration takes its URLs from.
const URL_VARS: [&str; 2] = ["TPMON_BANK_DB1", "TPMON_BANK_DB2"];

#[test]
fn the_database_urls_come_from_the_environment() {
    let dbs = BankDbs::start(false);
    let cfg = dbs.config_from_env(&[], &[]);
    let env = dbs.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();

    // Without the variables the daemon refuses to start, naming the first one.
    let dir = TempDir::new("bank-env-missing");
    let path = dir.path.join("domain.toml");
    std::fs::write(&path, cfg.render()).expect("writing the configuration");
    let run_dir = dir.path.join("run");
    let run = tpmon_env_without(
        [
            OsStr::new("boot"),
            OsStr::new("-c"),
            path.as_os_str(),
            OsStr::new("--run-dir"),
            run_dir.as_os_str(),
        ],
        &[],
        &URL_VARS,
    );
    assert!(
        !run.ok() && run.stderr.contains("`TPMON_BANK_DB1` is not set"),
        "{run:?}"
    );

    let mut d = Domain::boot_env("bank-env", &cfg, &env);
    let config = d.config.to_str().unwrap_or_default().to_string();
    let run_dir = d.run_dir.to_str().unwrap_or_default().to_string();
    bank_client(
        &d,
        &["--clients", "2", "--transfers", "10"],
        "total before 200000, after 200000",
    );
    let call = tpmon_env_without(
        [
            "call",
            "-c",
            &config,
            "--run-dir",
            &run_dir,
            "TRANSFER",
            "--tx",
            "--field",
            "FROM=1",
            "--field",
            "TO=2",
            "--field",
            "AMOUNT=5",
        ],
        &[],
        &URL_VARS,
    );
    assert!(call.ok(), "{call:?}");
    // Phase 2 of the last commits may still be running (they returned once the
    // decision was logged): wait for all 21 debits, 10 from each client and one call.
    let debited = support::wait_for("21 committed transfers in bank1", LONG, || {
        let d = dbs.debited();
        (d.len() >= 21).then_some(d)
    });
    assert_eq!(debited.len(), 21, "{debited:?}");
    dbs.check(&d, &debited.iter().copied().collect::<Vec<_>>());
    let down = d.down();
    assert!(down.ok(), "{down:?}");
}

/// Where a crash case puts its failpoint.
enum Point {
    /// In the daemon (the transaction manager).
    Daemon(&'static str),
    /// In one bank server.
    Server(&'static str, &'static str),
}

/// What the case does at the failpoint.
enum Act {
    /// The failpoint kills the process (on its N-th hit).
    Kill(u64),
    /// The process waits at the failpoint (on its N-th hit) while the test restarts
    /// the database the transfer credits (PostgreSQL, or MariaDB for database 3).
    RestartDb(u64),
    /// A server waits at the failpoint while the test kills the daemon and every
    /// instance with `kill -9`.
    KillDaemon,
}

struct Case {
    tag: &'static str,
    point: Point,
    act: Act,
    /// What the client must see for the transfer that meets the failpoint.
    first: Expect,
    /// What recovery must make of that transfer whatever the client saw: committed
    /// (its commit decision was durable) or rolled back (it was not).
    ends: Ends,
    /// The database the transfers credit: 2 (PostgreSQL) or 3 (MariaDB).
    todb: i64,
}

/// The first transfer's outcome as the client sees it.
#[derive(Debug, PartialEq, Eq)]
enum Expect {
    Committed,
    RolledBack,
    Unknown,
    /// The daemon dies right after answering, or right before: either.
    CommittedOrUnknown,
}

/// The first transfer's outcome after recovery.
#[derive(Debug, PartialEq, Eq)]
enum Ends {
    Committed,
    RolledBack,
}

fn crash_case(case: Case) {
    let dbs_holder = Arc::new(Mutex::new(BankDbs::start(case.todb == 3)));
    let tmp = TempDir::new(case.tag);
    let wait_file: PathBuf = tmp.path.join("at-failpoint");
    let (Point::Daemon(p) | Point::Server(_, p)) = &case.point;
    let spec = match case.act {
        Act::Kill(n) => format!("{p}=kill@{n}"),
        Act::RestartDb(n) => format!("{p}=wait@{n}:{}", wait_file.display()),
        Act::KillDaemon => format!("{p}=wait:{}", wait_file.display()),
    };
    type Pairs<'a> = Vec<(&'a str, &'a str)>;
    let (server_fp, daemon_env): (Pairs, Pairs) = match &case.point {
        Point::Server(s, _) => (vec![(*s, spec.as_str())], vec![]),
        Point::Daemon(_) => (vec![], vec![("TPMON_FAILPOINTS", spec.as_str())]),
    };
    let cfg = dbs_holder
        .lock()
        .map(|d| d.config(&server_fp, &[]))
        .expect("config");
    let clean_cfg = dbs_holder
        .lock()
        .map(|d| d.config(&[], &[]))
        .expect("config");
    let mut d = Domain::boot_env(case.tag, &cfg, &daemon_env);
    let f = Fields::new();
    let mut acked = Vec::new();
    let mut c = d.client();
    // Short transactions, so that branches nobody reported are presumed aborted soon.
    c.tx_set_timeout(Duration::from_secs(3)).expect("timeout");
    // The restart of the database, or the kill of the daemon, happens while the
    // process waits at the failpoint.
    let victims: Vec<u32> = std::iter::once(d.daemon_pid)
        .chain(support::all_pids(&d.status()))
        .collect();
    let side = match case.act {
        Act::Kill(_) => None,
        Act::RestartDb(_) => {
            let (dbs, wait_file, todb) = (dbs_holder.clone(), wait_file.clone(), case.todb);
            Some(std::thread::spawn(move || {
                wait_until("the process reaches the failpoint", LONG, || {
                    wait_file.exists()
                });
                if let Ok(mut dbs) = dbs.lock() {
                    match dbs.maria.as_mut().filter(|_| todb == 3) {
                        Some(m) => {
                            m.kill9();
                            m.start_again().expect("MariaDB restarts");
                        }
                        None => {
                            dbs.pg.kill9();
                            dbs.pg.start_again().expect("PostgreSQL restarts");
                        }
                    }
                }
                let _ = std::fs::remove_file(&wait_file);
            }))
        }
        Act::KillDaemon => {
            let wait_file = wait_file.clone();
            let victims = victims.clone();
            Some(std::thread::spawn(move || {
                wait_until("the server reaches the failpoint", LONG, || {
                    wait_file.exists()
                });
                for &pid in &victims {
                    support::kill9(pid);
                }
            }))
        }
    };
    let id = txid();
    let first = transfer(&mut c, &f, 1, 2, 10, id, case.todb);
    if first == Transfer::Committed {
        acked.push(id);
    }
    if let Some(t) = side {
        t.join().expect("the test's side thread");
    }
    let seen = match &first {
        Transfer::Committed => Expect::Committed,
        Transfer::RolledBack(_) => Expect::RolledBack,
        Transfer::Unknown(_) => Expect::Unknown,
    };
    let as_expected = seen == case.first
        || (case.first == Expect::CommittedOrUnknown
            && matches!(seen, Expect::Committed | Expect::Unknown));
    assert!(
        as_expected,
        "{}: first transfer {first:?}, expected {:?}",
        case.tag, case.first
    );
    // A daemon killed (by its failpoint or by the test) is booted again without
    // failpoints.
    let daemon_killed = matches!(
        (&case.point, &case.act),
        (Point::Daemon(_), Act::Kill(_)) | (_, Act::KillDaemon)
    );
    if daemon_killed {
        wait_until("the daemon died", LONG, || !support::alive(d.daemon_pid));
        drop(c);
        // The servers' failpoints live in the configuration file.
        std::fs::write(&d.config, clean_cfg.render()).expect("the configuration");
        d.crash_and_reboot(&clean_cfg, &[]);
        c = d.client();
        c.tx_set_timeout(Duration::from_secs(3)).expect("timeout");
    }
    // The domain keeps working (a killed server was restarted by the daemon; its
    // failpoint fires again, so only the daemon cases expect successes here).
    for k in 0..3 {
        let id = txid();
        let t = transfer(&mut c, &f, 3 + k, 4 + k, 1, id, case.todb);
        if t == Transfer::Committed {
            acked.push(id);
        } else {
            eprintln!("{}: follow-up transfer {id}: {t:?}", case.tag);
        }
    }
    let dbs = dbs_holder.lock().expect("dbs");
    // A durable commit decision is carried out even when the client never heard of
    // it; an undecided transfer is rolled back everywhere.
    if case.ends == Ends::Committed && !acked.contains(&id) {
        acked.push(id);
    }
    dbs.check(&d, &acked);
    if case.ends == Ends::RolledBack {
        assert!(
            !dbs.debited().contains(&id),
            "{}: the undecided transfer {id} committed",
            case.tag
        );
    }
    if daemon_killed {
        assert!(
            acked.len() >= 3,
            "{}: transfers commit after recovery",
            case.tag
        );
    }
}

#[test]
fn crash_server_before_its_prepare() {
    crash_case(Case {
        tag: "bank-srv-before-prepare",
        point: Point::Server("bank2", "server.before_prepare"),
        act: Act::Kill(1),
        first: Expect::RolledBack,
        ends: Ends::RolledBack,
        todb: 2,
    });
}

#[test]
fn crash_server_between_the_prepares() {
    // CREDIT (bank2) prepared; TRANSFER (bank1) dies before preparing its own branch.
    crash_case(Case {
        tag: "bank-srv-between",
        point: Point::Server("bank1", "server.before_prepare"),
        act: Act::Kill(1),
        first: Expect::RolledBack,
        ends: Ends::RolledBack,
        todb: 2,
    });
}

#[test]
fn crash_server_after_every_prepare_before_its_reply() {
    crash_case(Case {
        tag: "bank-srv-after-prepare",
        point: Point::Server("bank1", "server.after_prepare"),
        act: Act::Kill(1),
        first: Expect::RolledBack,
        ends: Ends::RolledBack,
        todb: 2,
    });
}

#[test]
fn crash_daemon_before_a_prepare() {
    // CREDIT waits before preparing while the whole node dies.
    crash_case(Case {
        tag: "bank-tm-before-prepare",
        point: Point::Server("bank2", "server.before_prepare"),
        act: Act::KillDaemon,
        first: Expect::RolledBack,
        ends: Ends::RolledBack,
        todb: 2,
    });
}

#[test]
fn crash_daemon_between_the_prepares() {
    // CREDIT prepared; TRANSFER waits before its own prepare while the node dies.
    crash_case(Case {
        tag: "bank-tm-between",
        point: Point::Server("bank1", "server.before_prepare"),
        act: Act::KillDaemon,
        first: Expect::RolledBack,
        ends: Ends::RolledBack,
        todb: 2,
    });
}

#[test]
fn crash_daemon_before_the_decision_is_durable() {
    crash_case(Case {
        tag: "bank-tm-before-decision",
        point: Point::Daemon("tm.before_decision"),
        act: Act::Kill(1),
        first: Expect::Unknown,
        ends: Ends::RolledBack,
        todb: 2,
    });
}

#[test]
fn crash_daemon_after_the_decision_before_phase_two() {
    crash_case(Case {
        tag: "bank-tm-after-decision",
        point: Point::Daemon("tm.after_decision"),
        act: Act::Kill(1),
        first: Expect::Unknown,
        ends: Ends::Committed,
        todb: 2,
    });
}

#[test]
fn crash_daemon_during_phase_two() {
    // Dies before the second COMMIT PREPARED: one branch committed, the other not.
    crash_case(Case {
        tag: "bank-tm-phase2",
        point: Point::Daemon("tm.phase2"),
        act: Act::Kill(2),
        first: Expect::CommittedOrUnknown,
        ends: Ends::Committed,
        todb: 2,
    });
}

#[test]
fn crash_daemon_after_phase_two_before_forgetting() {
    crash_case(Case {
        tag: "bank-tm-after-phase2",
        point: Point::Daemon("tm.after_phase2"),
        act: Act::Kill(1),
        first: Expect::CommittedOrUnknown,
        ends: Ends::Committed,
        todb: 2,
    });
}

#[test]
fn database_restart_between_decision_and_phase_two() {
    crash_case(Case {
        tag: "bank-db-restart-phase2",
        point: Point::Daemon("tm.after_decision"),
        act: Act::RestartDb(1),
        first: Expect::Committed,
        ends: Ends::Committed,
        todb: 2,
    });
}

#[test]
fn database_restart_before_a_prepare() {
    crash_case(Case {
        tag: "bank-db-restart-prepare",
        point: Point::Server("bank2", "server.before_prepare"),
        act: Act::RestartDb(1),
        first: Expect::RolledBack,
        ends: Ends::RolledBack,
        todb: 2,
    });
}

/// A tiny seeded generator, so that a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

#[test]
fn random_kill_loop_keeps_the_bank_consistent() {
    let seed: u64 = std::env::var("TPMON_KILL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x7470_6D6E);
    eprintln!("random kill loop seed {seed} (replay with TPMON_KILL_SEED={seed})");
    let mut rng = Rng(seed | 1);
    let dbs = BankDbs::start(false);
    let cfg = dbs.config(&[], &[]);
    let mut d = Domain::boot("bank-kill-loop", &cfg);
    let acked = Arc::new(Mutex::new(Vec::new()));
    // Whatever the seed, one round kills the whole node.
    let daemon_round = rng.below(4);
    for round in 0..4 {
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for w in 0..2u64 {
            let (stop, acked) = (stop.clone(), acked.clone());
            let mut c = d.client();
            c.tx_set_timeout(Duration::from_secs(3)).expect("timeout");
            let mut wr = Rng(seed ^ (round * 7 + w + 1).wrapping_mul(0x9E37_79B9));
            workers.push(std::thread::spawn(move || {
                let f = Fields::new();
                while !stop.load(Ordering::Relaxed) {
                    let id = txid();
                    let from = 1 + wr.below(100) as i64;
                    let to = 1 + wr.below(100) as i64;
                    match transfer(&mut c, &f, from, to, 1 + wr.below(20) as i64, id, 2) {
                        Transfer::Committed => acked.lock().expect("acked").push(id),
                        Transfer::RolledBack(_) => {}
                        // The daemon died: this worker is done for the round.
                        Transfer::Unknown(_) => return,
                    }
                }
            }));
        }
        std::thread::sleep(Duration::from_millis(150 + rng.below(400)));
        let st = d.status();
        let pids = support::all_pids(&st);
        let kill_daemon = round == daemon_round || rng.below(3) == 0;
        if kill_daemon || pids.is_empty() {
            eprintln!("round {round}: kill -9 the daemon");
            d.kill_all(&pids);
        } else {
            let victim = pids[rng.below(pids.len() as u64) as usize];
            eprintln!("round {round}: kill -9 server instance {victim}");
            support::kill9(victim);
        }
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            let _ = w.join();
        }
        if kill_daemon || pids.is_empty() {
            d.reboot(&cfg, &[]);
        }
    }
    let acked = acked.lock().expect("acked").clone();
    eprintln!("{} transfers acknowledged", acked.len());
    dbs.check(&d, &acked);
}

#[test]
fn database_restart_between_the_prepares() {
    // CREDIT (database 2) prepared; TRANSFER waits at its own prepare while PostgreSQL
    // restarts: its session is gone, so the transaction rolls back, CREDIT's prepared
    // branch included.
    crash_case(Case {
        tag: "bank-db-restart-between",
        point: Point::Server("bank1", "server.before_prepare"),
        act: Act::RestartDb(1),
        first: Expect::RolledBack,
        ends: Ends::RolledBack,
        todb: 2,
    });
}

#[test]
fn database_restart_after_every_prepare_before_the_decision() {
    crash_case(Case {
        tag: "bank-db-restart-before-decision",
        point: Point::Daemon("tm.before_decision"),
        act: Act::RestartDb(1),
        first: Expect::Committed,
        ends: Ends::Committed,
        todb: 2,
    });
}

#[test]
fn database_restart_during_phase_two() {
    // The first branch committed; PostgreSQL restarts before the second COMMIT
    // PREPARED.
    crash_case(Case {
        tag: "bank-db-restart-phase2-during",
        point: Point::Daemon("tm.phase2"),
        act: Act::RestartDb(2),
        first: Expect::Committed,
        ends: Ends::Committed,
        todb: 2,
    });
}

// The same steps with MariaDB as the credited database (TODB 3): its restart, the
// node's death and a server's death.

#[test]
fn mariadb_restart_before_its_prepare() {
    crash_case(Case {
        tag: "bank-maria-restart-prepare",
        point: Point::Server("bank3", "server.before_prepare"),
        act: Act::RestartDb(1),
        first: Expect::RolledBack,
        ends: Ends::RolledBack,
        todb: 3,
    });
}

#[test]
fn mariadb_restart_after_every_prepare_before_the_decision() {
    crash_case(Case {
        tag: "bank-maria-restart-before-decision",
        point: Point::Daemon("tm.before_decision"),
        act: Act::RestartDb(1),
        first: Expect::Committed,
        ends: Ends::Committed,
        todb: 3,
    });
}

#[test]
fn mariadb_restart_between_decision_and_phase_two() {
    crash_case(Case {
        tag: "bank-maria-restart-phase2",
        point: Point::Daemon("tm.after_decision"),
        act: Act::RestartDb(1),
        first: Expect::Committed,
        ends: Ends::Committed,
        todb: 3,
    });
}

#[test]
fn crash_mariadb_server_after_its_prepare() {
    crash_case(Case {
        tag: "bank-maria-srv-after-prepare",
        point: Point::Server("bank3", "server.after_prepare"),
        act: Act::Kill(1),
        first: Expect::RolledBack,
        ends: Ends::RolledBack,
        todb: 3,
    });
}

#[test]
fn crash_daemon_during_phase_two_with_mariadb() {
    crash_case(Case {
        tag: "bank-maria-tm-phase2",
        point: Point::Daemon("tm.phase2"),
        act: Act::Kill(2),
        first: Expect::CommittedOrUnknown,
        ends: Ends::Committed,
        todb: 3,
    });
}

#[test]
fn crash_daemon_before_the_decision_with_mariadb() {
    crash_case(Case {
        tag: "bank-maria-tm-before-decision",
        point: Point::Daemon("tm.before_decision"),
        act: Act::Kill(1),
        first: Expect::Unknown,
        ends: Ends::RolledBack,
        todb: 3,
    });
}
