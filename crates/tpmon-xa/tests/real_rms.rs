//! The PostgreSQL and MariaDB adapters against real servers (started by
//! `tpmon-testdb`, one per test, so that tests cannot disturb each other): two-phase
//! commit and rollback from another session, votes of failed branches, rollback of
//! active branches, recovery by prefix, and a prepared branch surviving a crash of the
//! database while the sessions that used it reconnect.

use std::thread;
use std::time::Duration;

use mysql::prelude::Queryable;
use tpmon_testdb::{MariaServer, PgServer};
use tpmon_xa::mariadb::MariaRm;
use tpmon_xa::postgres::PgRm;
use tpmon_xa::{with_reconnect, Rm, Vote, XaError, Xid};

/// A branch of the global transaction `PREFIX` + `n`.
fn xid(prefix: &str, n: u32) -> Xid {
    Xid::new(format!("{prefix}{n}"), format!("b{n}"))
}

fn is_not_found<T: std::fmt::Debug>(r: Result<T, XaError>) -> bool {
    matches!(r, Err(XaError::NotFound(_)))
}

fn is_unavailable<T: std::fmt::Debug>(r: &Result<T, XaError>) -> bool {
    matches!(r, Err(XaError::Unavailable(_)))
}

// ---------------------------------------------------------------- PostgreSQL

/// A server with database `xa` holding the empty table `t (id int primary key)`.
fn pg_start() -> (PgServer, String) {
    let server = PgServer::start().unwrap_or_else(|e| panic!("{e}"));
    server
        .create_database("xa")
        .unwrap_or_else(|e| panic!("{e}"));
    let url = server.url("xa");
    pg(&url)
        .client()
        .expect("session")
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .expect("create table");
    (server, url)
}

fn pg(url: &str) -> PgRm {
    PgRm::connect(url).unwrap_or_else(|e| panic!("connect {url}: {e}"))
}

fn pg_insert(rm: &mut PgRm, id: i32) -> Result<u64, postgres::Error> {
    rm.client()
        .expect("session")
        .execute("INSERT INTO t VALUES ($1)", &[&id])
}

/// True when row `id` is committed (seen from `rm`, outside any branch).
fn pg_has(rm: &mut PgRm, id: i32) -> bool {
    let row = rm
        .client()
        .expect("session")
        .query_one("SELECT count(*) FROM t WHERE id = $1", &[&id])
        .expect("count");
    row.get::<_, i64>(0) == 1
}

#[test]
fn pg_prepared_branches_finish_from_another_session() {
    let (_server, url) = pg_start();
    let p = "tpmtest:pg1:";
    let (mut a, mut b) = (pg(&url), pg(&url));

    // Branch 1: prepared on `a`, committed from `b`.
    let x1 = xid(p, 1);
    a.begin(&x1).expect("begin");
    pg_insert(&mut a, 1).expect("insert");
    assert_eq!(a.prepare(&x1), Ok(Vote::Prepared));
    assert!(!pg_has(&mut b, 1), "prepared work is not visible yet");
    assert_eq!(b.recover(p), Ok(vec![x1.clone()]));
    assert_eq!(b.commit(&x1), Ok(()));
    assert!(pg_has(&mut b, 1));
    assert!(is_not_found(b.commit(&x1)), "second commit");
    assert!(is_not_found(a.rollback(&x1)), "rollback after commit");

    // Branch 2: `a` starts the next branch at once; rolled back from `b`.
    let x2 = xid(p, 2);
    a.begin(&x2).expect("begin");
    pg_insert(&mut a, 2).expect("insert");
    assert_eq!(a.prepare(&x2), Ok(Vote::Prepared));
    assert_eq!(b.rollback(&x2), Ok(()));
    assert!(!pg_has(&mut b, 2));
    assert!(is_not_found(b.rollback(&x2)), "second rollback");
    assert!(is_not_found(b.commit(&x2)), "commit after rollback");
    assert_eq!(b.recover(p), Ok(vec![]));
}

#[test]
fn pg_failed_statement_votes_no_and_active_branches_roll_back() {
    let (_server, url) = pg_start();
    let p = "tpmtest:pg2:";
    let (mut a, mut b) = (pg(&url), pg(&url));

    // A failed statement dooms the whole branch: prepare fails, nothing is prepared.
    let x1 = xid(p, 1);
    a.begin(&x1).expect("begin");
    pg_insert(&mut a, 10).expect("insert");
    assert!(pg_insert(&mut a, 10).is_err(), "duplicate key");
    assert!(
        matches!(a.prepare(&x1), Err(XaError::Failed(_))),
        "a failed branch votes no"
    );
    assert_eq!(b.recover(p), Ok(vec![]));
    assert!(is_not_found(b.commit(&x1)));
    assert!(!pg_has(&mut b, 10));

    // rollback_active undoes the branch's work on its own session.
    let x2 = xid(p, 2);
    a.begin(&x2).expect("begin");
    pg_insert(&mut a, 20).expect("insert");
    assert_eq!(a.rollback_active(&x2), Ok(()));
    assert!(!pg_has(&mut b, 20));
    assert_eq!(b.recover(p), Ok(vec![]));

    // The session is fine for the next branch.
    let x3 = xid(p, 3);
    a.begin(&x3).expect("begin");
    pg_insert(&mut a, 30).expect("insert");
    assert_eq!(a.prepare(&x3), Ok(Vote::Prepared));
    assert_eq!(b.commit(&x3), Ok(()));
    assert!(pg_has(&mut b, 30));
}

#[test]
fn pg_recover_lists_only_the_prefix() {
    let (_server, url) = pg_start();
    let (mut a, mut b) = (pg(&url), pg(&url));
    // `_` would match any character in a LIKE pattern: the prefix is literal.
    let ours = Xid::new("tpm_test:pg3:1", "b1");
    let lookalike = Xid::new("tpmXtest:pg3:1", "b1");
    let other = Xid::new("other:pg3:1", "b1");
    for (i, x) in [&ours, &lookalike, &other].into_iter().enumerate() {
        a.begin(x).expect("begin");
        pg_insert(&mut a, i as i32).expect("insert");
        assert_eq!(a.prepare(x), Ok(Vote::Prepared));
    }
    assert_eq!(b.recover("tpm_test:"), Ok(vec![ours.clone()]));
    assert_eq!(b.recover("other:"), Ok(vec![other.clone()]));
    assert_eq!(b.recover("nothing:"), Ok(vec![]));
    let mut all = b.recover("").expect("recover");
    all.sort();
    assert_eq!(all, vec![other.clone(), lookalike.clone(), ours.clone()]);
    assert_eq!(b.rollback(&other), Ok(()));
    assert_eq!(b.rollback(&lookalike), Ok(()));
    assert_eq!(b.commit(&ours), Ok(()));
    assert_eq!(b.recover(""), Ok(vec![]));
}

#[test]
fn pg_prepared_branch_survives_a_crash() {
    let (mut server, url) = pg_start();
    let p = "tpmtest:pg4:";
    let (mut a, mut b, mut idle) = (pg(&url), pg(&url), pg(&url));

    let x1 = xid(p, 1);
    a.begin(&x1).expect("begin");
    pg_insert(&mut a, 1).expect("insert");
    assert_eq!(a.prepare(&x1), Ok(Vote::Prepared));
    // Active, not prepared, when the database dies.
    let x2 = xid(p, 2);
    b.begin(&x2).expect("begin");
    pg_insert(&mut b, 2).expect("insert");

    server.kill9();
    assert!(!server.is_running());
    server.start_again().unwrap_or_else(|e| panic!("{e}"));
    assert!(server.is_running());

    // The old sessions broke: the next call says so, and reconnecting recovers.
    assert!(
        is_unavailable(&idle.recover(p)),
        "a broken session is unavailable"
    );
    assert_eq!(
        with_reconnect(&mut idle, |rm| rm.recover(p)),
        Ok(vec![x1.clone()])
    );

    // The prepared branch survived and commits from a brand-new session.
    let mut fresh = pg(&url);
    assert_eq!(fresh.commit(&x1), Ok(()));
    assert!(pg_has(&mut fresh, 1));
    assert!(
        !pg_has(&mut fresh, 2),
        "the active branch died with the server"
    );

    // The session of the lost branch never runs statements outside it: not on the
    // broken session, not on a new one, until the branch is ended.
    assert!(pg_insert(&mut b, 3).is_err());
    assert!(is_unavailable(&b.client().map(|_| ())));
    assert_eq!(b.ensure_open(), Ok(()));
    assert!(is_unavailable(&b.client().map(|_| ())));
    assert!(b.prepare(&x2).is_err(), "the lost branch cannot prepare");
    assert!(!pg_has(&mut b, 3));
    assert_eq!(fresh.recover(p), Ok(vec![]));

    // Both old sessions work again.
    let x3 = xid(p, 3);
    with_reconnect(&mut a, |rm| rm.begin(&x3)).expect("begin after the crash");
    pg_insert(&mut a, 3).expect("insert");
    assert_eq!(a.prepare(&x3), Ok(Vote::Prepared));
    assert_eq!(with_reconnect(&mut b, |rm| rm.commit(&x3)), Ok(()));
    assert!(pg_has(&mut b, 3));
}

/// The prepare of `x` fails as a branch whose service ended the database transaction
/// itself, and leaves nothing prepared.
fn assert_ended_by_service(rm: &mut PgRm, x: &Xid, p: &str) {
    match rm.prepare(x) {
        Err(XaError::Failed(why)) => assert!(
            why.contains("committed or rolled back the database transaction itself")
                && why.contains("not part of the global transaction"),
            "{why}"
        ),
        other => panic!("a branch ended by the service must fail to prepare: {other:?}"),
    }
    assert_eq!(rm.recover(p), Ok(vec![]), "nothing stays prepared");
}

#[test]
fn pg_a_branch_the_service_ended_itself_fails_to_prepare() {
    let (_server, url) = pg_start();
    let p = "tpmtest:pg5:";
    let (mut a, mut b) = (pg(&url), pg(&url));

    // The normal path: marked at begin, prepared.
    let x1 = xid(p, 1);
    a.begin(&x1).expect("begin");
    pg_insert(&mut a, 1).expect("insert");
    assert_eq!(a.prepare(&x1), Ok(Vote::Prepared));
    assert_eq!(b.commit(&x1), Ok(()));
    assert!(pg_has(&mut b, 1));

    // A branch that only read votes read-only and holds nothing.
    let x2 = xid(p, 2);
    a.begin(&x2).expect("begin");
    assert!(pg_has(&mut a, 1));
    assert_eq!(a.prepare(&x2), Ok(Vote::ReadOnly));
    assert_eq!(b.recover(p), Ok(vec![]));

    // COMMIT inside the branch: the work before it is committed for good, the work
    // after it autocommits, and the prepare fails instead of voting read-only.
    let x3 = xid(p, 3);
    a.begin(&x3).expect("begin");
    pg_insert(&mut a, 30).expect("insert");
    a.client()
        .expect("session")
        .batch_execute("COMMIT")
        .expect("COMMIT");
    pg_insert(&mut a, 31).expect("insert");
    assert_ended_by_service(&mut a, &x3, p);
    assert!(
        pg_has(&mut b, 30) && pg_has(&mut b, 31),
        "what PostgreSQL did"
    );

    // The driver's own transaction: its BEGIN only warns, its commit ends the branch.
    let x4 = xid(p, 4);
    a.begin(&x4).expect("begin");
    {
        let mut t = a
            .client()
            .expect("session")
            .transaction()
            .expect("transaction");
        t.execute("INSERT INTO t VALUES (40)", &[]).expect("insert");
        t.commit().expect("commit");
    }
    assert_ended_by_service(&mut a, &x4, p);

    // ROLLBACK, then a transaction of the service's own: it is rolled back, not
    // prepared.
    let x5 = xid(p, 5);
    a.begin(&x5).expect("begin");
    pg_insert(&mut a, 50).expect("insert");
    a.client()
        .expect("session")
        .batch_execute("ROLLBACK; BEGIN; INSERT INTO t VALUES (51)")
        .expect("ROLLBACK; BEGIN");
    assert_ended_by_service(&mut a, &x5, p);
    assert!(!pg_has(&mut b, 50) && !pg_has(&mut b, 51));

    // The session serves the next branch normally, and an aborted branch still fails
    // as before.
    let x6 = xid(p, 6);
    a.begin(&x6).expect("begin");
    pg_insert(&mut a, 60).expect("insert");
    assert_eq!(a.prepare(&x6), Ok(Vote::Prepared));
    assert_eq!(b.rollback(&x6), Ok(()));
    let x7 = xid(p, 7);
    a.begin(&x7).expect("begin");
    assert!(pg_insert(&mut a, 1).is_err(), "duplicate key");
    match a.prepare(&x7) {
        Err(XaError::Failed(why)) => assert!(why.contains("aborted"), "{why}"),
        other => panic!("an aborted branch must fail to prepare: {other:?}"),
    }
    assert_eq!(b.recover(p), Ok(vec![]));
    assert!(!pg_has(&mut b, 60));
}

/// Gids are quoted safely at begin and prepare: a quote or a backslash in the bqual
/// neither breaks the statements nor the mark's check.
#[test]
fn pg_odd_gids_are_quoted() {
    let (_server, url) = pg_start();
    let (mut a, mut b) = (pg(&url), pg(&url));
    for (n, bqual) in [(1, "o'q"), (2, "back\\slash'")] {
        let x = Xid::new(format!("tpmtest:pg6:{n}"), bqual);
        a.begin(&x).expect("begin");
        pg_insert(&mut a, n).expect("insert");
        assert_eq!(a.prepare(&x), Ok(Vote::Prepared), "{bqual}");
        assert_eq!(b.commit(&x), Ok(()), "{bqual}");
        assert!(pg_has(&mut b, n));
    }
}

// ------------------------------------------------------------------- MariaDB

/// A server with database `xa` holding the table `t (id int primary key, v int)`.
fn maria_start() -> (MariaServer, String) {
    let server = MariaServer::start().unwrap_or_else(|e| panic!("{e}"));
    server
        .create_database("xa")
        .unwrap_or_else(|e| panic!("{e}"));
    let url = server.url("xa");
    maria(&url)
        .conn()
        .expect("connection")
        .query_drop("CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL DEFAULT 0) ENGINE=InnoDB")
        .expect("create table");
    (server, url)
}

fn maria(url: &str) -> MariaRm {
    MariaRm::connect(url).unwrap_or_else(|e| panic!("connect {url}: {e}"))
}

fn maria_exec(rm: &mut MariaRm, sql: &str) -> Result<(), mysql::Error> {
    rm.conn().expect("connection").query_drop(sql)
}

fn maria_insert(rm: &mut MariaRm, id: i32) -> Result<(), mysql::Error> {
    maria_exec(rm, &format!("INSERT INTO t (id) VALUES ({id})"))
}

/// The committed `v` of row `id` (seen from `rm`, outside any branch).
fn maria_value(rm: &mut MariaRm, id: i32) -> Option<i32> {
    rm.conn()
        .expect("connection")
        .query_first(format!("SELECT v FROM t WHERE id = {id}"))
        .expect("select")
}

fn maria_has(rm: &mut MariaRm, id: i32) -> bool {
    maria_value(rm, id).is_some()
}

#[test]
fn maria_prepared_branches_finish_from_another_session() {
    let (_server, url) = maria_start();
    let p = "tpmtest:my1:";
    let (mut a, mut b) = (maria(&url), maria(&url));

    // Branch 1: prepared on `a`, committed from `b` while `a` is still open.
    let x1 = xid(p, 1);
    a.begin(&x1).expect("begin");
    maria_insert(&mut a, 1).expect("insert");
    assert_eq!(a.prepare(&x1), Ok(Vote::Prepared));
    assert!(!maria_has(&mut b, 1), "prepared work is not visible yet");
    assert_eq!(b.recover(p), Ok(vec![x1.clone()]));
    assert_eq!(b.commit(&x1), Ok(()));
    assert!(maria_has(&mut b, 1));
    assert!(is_not_found(b.commit(&x1)), "second commit");
    assert!(is_not_found(a.rollback(&x1)), "rollback after commit");

    // Branch 2: `a` starts the next branch at once; rolled back from `b`.
    let x2 = xid(p, 2);
    a.begin(&x2).expect("begin");
    maria_insert(&mut a, 2).expect("insert");
    assert_eq!(a.prepare(&x2), Ok(Vote::Prepared));
    assert_eq!(b.rollback(&x2), Ok(()));
    assert!(!maria_has(&mut b, 2));
    assert!(is_not_found(b.rollback(&x2)), "second rollback");
    assert!(is_not_found(b.commit(&x2)), "commit after rollback");

    // Many branches in a row on one session, each finished from the other at once.
    for n in 10..40 {
        let x = xid(p, n as u32);
        a.begin(&x).expect("begin");
        maria_insert(&mut a, n).expect("insert");
        assert_eq!(a.prepare(&x), Ok(Vote::Prepared));
        assert_eq!(b.commit(&x), Ok(()), "commit right after prepare");
    }
    assert!(maria_has(&mut b, 39));

    // A branch that wrote nothing: MariaDB rolls it back when the preparing
    // connection ends and answers XA_RBROLLBACK once, which commit takes for success
    // (nothing to commit); then the branch is unknown (documented in the adapter).
    let x3 = xid(p, 3);
    a.begin(&x3).expect("begin");
    assert!(maria_has(&mut a, 1));
    assert_eq!(a.prepare(&x3), Ok(Vote::Prepared));
    assert_eq!(b.commit(&x3), Ok(()));
    assert!(is_not_found(b.commit(&x3)));
    assert_eq!(b.recover(p), Ok(vec![]));
}

#[test]
fn maria_failed_branches_vote_no_and_active_branches_roll_back() {
    let (_server, url) = maria_start();
    let p = "tpmtest:my2:";
    let (mut a, mut b, mut c) = (maria(&url), maria(&url), maria(&url));
    maria_exec(&mut c, "INSERT INTO t (id) VALUES (100), (101)").expect("rows");

    // A failed statement undoes only itself in MariaDB: the branch prepares and
    // commits its other work.
    let x1 = xid(p, 1);
    a.begin(&x1).expect("begin");
    maria_insert(&mut a, 10).expect("insert");
    assert!(maria_insert(&mut a, 10).is_err(), "duplicate key");
    assert_eq!(a.prepare(&x1), Ok(Vote::Prepared));
    assert_eq!(c.commit(&x1), Ok(()));
    assert!(maria_has(&mut c, 10));

    // A deadlock rolls the whole branch back: it cannot prepare, nothing stays
    // prepared and its session can start another branch.
    let (xa, xb) = (xid(p, 2), xid(p, 3));
    a.begin(&xa).expect("begin");
    maria_exec(&mut a, "UPDATE t SET v = 1 WHERE id = 100").expect("update");
    b.begin(&xb).expect("begin");
    maria_exec(&mut b, "UPDATE t SET v = 2 WHERE id = 101").expect("update");
    let waiter = thread::spawn(move || {
        let r = maria_exec(&mut a, "UPDATE t SET v = 1 WHERE id = 101");
        (a, r)
    });
    thread::sleep(Duration::from_millis(300));
    let rb = maria_exec(&mut b, "UPDATE t SET v = 2 WHERE id = 100");
    let (mut a, ra) = waiter.join().expect("thread");
    let code = |r: &Result<(), mysql::Error>| match r {
        Err(mysql::Error::MySqlError(e)) => e.code,
        _ => 0,
    };
    let (victim, victim_x, winner, winner_x, value) = match (code(&ra), code(&rb)) {
        (1213, 0) => (&mut a, &xa, &mut b, &xb, 2),
        (0, 1213) => (&mut b, &xb, &mut a, &xa, 1),
        other => panic!("expected one deadlock victim, got {other:?}: {ra:?} / {rb:?}"),
    };
    assert!(
        matches!(victim.prepare(victim_x), Err(XaError::Failed(_))),
        "the deadlock victim votes no"
    );
    assert_eq!(winner.prepare(winner_x), Ok(Vote::Prepared));
    assert_eq!(c.recover(p), Ok(vec![winner_x.clone()]));
    assert_eq!(c.commit(winner_x), Ok(()));
    assert_eq!(maria_value(&mut c, 100), Some(value));
    assert_eq!(maria_value(&mut c, 101), Some(value));
    let x4 = xid(p, 4);
    victim
        .begin(&x4)
        .expect("the victim's session starts another branch");
    maria_insert(victim, 40).expect("insert");
    assert_eq!(victim.prepare(&x4), Ok(Vote::Prepared));
    assert_eq!(c.commit(&x4), Ok(()));
    assert!(maria_has(&mut c, 40));

    // rollback_active undoes the branch's work on its own session.
    let x5 = xid(p, 5);
    a.begin(&x5).expect("begin");
    maria_insert(&mut a, 50).expect("insert");
    assert_eq!(a.rollback_active(&x5), Ok(()));
    assert!(!maria_has(&mut c, 50));
    assert_eq!(c.recover(p), Ok(vec![]));
    let x6 = xid(p, 6);
    a.begin(&x6).expect("begin after rollback_active");
    assert_eq!(a.rollback_active(&x6), Ok(()));
}

#[test]
fn maria_recover_lists_only_the_prefix() {
    let (_server, url) = maria_start();
    let (mut a, mut b) = (maria(&url), maria(&url));
    let ours = Xid::new("tpm_test:my3:1", "b1");
    let lookalike = Xid::new("tpmXtest:my3:1", "b1");
    let other = Xid::new("other:my3:1", "b1");
    for (i, x) in [&ours, &lookalike, &other].into_iter().enumerate() {
        a.begin(x).expect("begin");
        maria_insert(&mut a, i as i32).expect("insert");
        assert_eq!(a.prepare(x), Ok(Vote::Prepared));
    }
    assert_eq!(b.recover("tpm_test:"), Ok(vec![ours.clone()]));
    assert_eq!(b.recover("other:"), Ok(vec![other.clone()]));
    assert_eq!(b.recover("nothing:"), Ok(vec![]));
    let mut all = b.recover("").expect("recover");
    all.sort();
    assert_eq!(all, vec![other.clone(), lookalike.clone(), ours.clone()]);
    assert_eq!(b.rollback(&other), Ok(()));
    assert_eq!(b.rollback(&lookalike), Ok(()));
    assert_eq!(b.commit(&ours), Ok(()));
    assert_eq!(b.recover(""), Ok(vec![]));
}

#[test]
fn maria_prepared_branch_survives_a_crash() {
    let (mut server, url) = maria_start();
    let p = "tpmtest:my4:";
    let (mut a, mut b, mut idle) = (maria(&url), maria(&url), maria(&url));

    let x1 = xid(p, 1);
    a.begin(&x1).expect("begin");
    maria_insert(&mut a, 1).expect("insert");
    assert_eq!(a.prepare(&x1), Ok(Vote::Prepared));
    // Active, not prepared, when the database dies.
    let x2 = xid(p, 2);
    b.begin(&x2).expect("begin");
    maria_insert(&mut b, 2).expect("insert");

    server.kill9();
    assert!(!server.is_running());
    server.start_again().unwrap_or_else(|e| panic!("{e}"));
    assert!(server.is_running());

    // The old sessions broke: the next call says so, and reconnecting recovers.
    assert!(
        is_unavailable(&idle.recover(p)),
        "a broken session is unavailable"
    );
    assert_eq!(
        with_reconnect(&mut idle, |rm| rm.recover(p)),
        Ok(vec![x1.clone()])
    );

    // The prepared branch survived and commits from a brand-new session.
    let mut fresh = maria(&url);
    assert_eq!(fresh.commit(&x1), Ok(()));
    assert!(maria_has(&mut fresh, 1));
    assert!(
        !maria_has(&mut fresh, 2),
        "the active branch died with the server"
    );

    // The lost branch's session fails its statements and the branch's end, and is
    // usable again after that.
    assert!(maria_insert(&mut b, 3).is_err());
    assert!(b.prepare(&x2).is_err(), "the lost branch cannot prepare");
    assert_eq!(b.rollback_active(&x2), Ok(()));
    assert!(!maria_has(&mut fresh, 3));
    assert_eq!(fresh.recover(p), Ok(vec![]));

    let x3 = xid(p, 3);
    with_reconnect(&mut a, |rm| rm.begin(&x3)).expect("begin after the crash");
    maria_insert(&mut a, 3).expect("insert");
    assert_eq!(a.prepare(&x3), Ok(Vote::Prepared));
    assert_eq!(with_reconnect(&mut b, |rm| rm.commit(&x3)), Ok(()));
    assert!(maria_has(&mut b, 3));
}
