//! A blocking resource manager (here the scripted fake; MariaDB in production) that
//! stops answering: each call gives up at its deadline, and the calls left blocked in
//! the driver keep their places in the pool, so that the threads they hold stay
//! bounded by `pool_max` however long the database hangs.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tpmon_config::{RmKind, XaResource};
use tpmon_tm::pool::Pool;
use tpmon_xa::fake::FakeRm;
use tpmon_xa::{XaError, Xid};

#[test]
fn calls_stuck_in_a_hung_driver_keep_their_places() {
    let dir = std::env::temp_dir().join(format!("tpmon-hung-rm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let mut res = XaResource::new(RmKind::Fake, dir.display().to_string());
    res.pool_max = 2;
    let limit = Duration::from_millis(300);
    let pool = Arc::new(Pool::new(res).with_call_timeout(limit));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    // Four prepared branches; every commit hangs while `hold` exists.
    let mut rm = FakeRm::open(&dir.display().to_string()).expect("fake");
    let xids: Vec<Xid> = (0..4)
        .map(|i| Xid::new(format!("d:n:1:1:{i}:9"), "b"))
        .collect();
    for x in &xids {
        tpmon_xa::Rm::prepare(&mut rm, x).expect("prepare");
    }
    drop(rm);
    std::fs::write(dir.join("hold"), "").expect("hold");
    std::fs::write(dir.join("script"), "commit hang 4\n").expect("script");
    for x in &xids {
        let t = Instant::now();
        let r = rt.block_on(pool.commit(x, Default::default()));
        assert!(matches!(r, Err(XaError::Unavailable(_))), "{r:?}");
        assert!(t.elapsed() >= limit, "gave up before its deadline");
    }
    // Two calls are stuck in the driver and hold both places; the other two found no
    // place and gave up without a thread of their own.
    assert_eq!(pool.places_free(), 0);
    std::fs::remove_file(dir.join("hold")).expect("release");
    let deadline = Instant::now() + Duration::from_secs(20);
    while pool.places_free() < 2 {
        assert!(Instant::now() < deadline, "the places came back");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The database answers again: what is left commits.
    for x in &xids {
        match rt.block_on(pool.commit(x, Default::default())) {
            Ok(()) | Err(XaError::NotFound(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(FakeRm::prepared(&dir).is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_stopped_mariadb_frees_the_thread_and_place_soon_after_the_deadline() {
    use tpmon_xa::Rm;

    let server = tpmon_testdb::MariaServer::start().unwrap_or_else(|e| panic!("{e}"));
    server
        .create_database("tm")
        .unwrap_or_else(|e| panic!("{e}"));
    let url = server.url("tm");
    let mut rm = tpmon_xa::mariadb::MariaRm::connect(&url).expect("connect");
    tpmon_xa::drivers::mysql::prelude::Queryable::query_drop(
        rm.conn().expect("connection"),
        "CREATE TABLE t (id int PRIMARY KEY) ENGINE=InnoDB",
    )
    .expect("table");
    let x = Xid::new("d:n:1:1:1:9", "m");
    rm.begin(&x).expect("begin");
    tpmon_xa::drivers::mysql::prelude::Queryable::query_drop(
        rm.conn().expect("connection"),
        "INSERT INTO t VALUES (1)",
    )
    .expect("insert");
    assert_eq!(rm.prepare(&x), Ok(tpmon_xa::Vote::Prepared));
    drop(rm);

    let mut res = XaResource::new(RmKind::Mariadb, url.clone());
    res.pool_max = 1;
    let limit = Duration::from_secs(1);
    let pool = Arc::new(Pool::new(res).with_call_timeout(limit));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let pid = server.pid().expect("running");
    let resume = common::stop(pid);
    let r = rt.block_on(pool.commit(&x, Default::default()));
    assert!(matches!(r, Err(XaError::Unavailable(_))), "{r:?}");
    // The driver's own deadline ends the blocked call while the server is still
    // stopped: the place comes back (without it, only when the server runs again).
    let deadline = Instant::now() + Duration::from_secs(15);
    while pool.places_free() < 1 {
        assert!(
            Instant::now() < deadline,
            "the place is still held by a call blocked in the driver"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(resume);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match rt.block_on(pool.commit(&x, Default::default())) {
            Ok(()) | Err(XaError::NotFound(_)) => break,
            other => assert!(Instant::now() < deadline, "{other:?}"),
        }
    }
    assert_eq!(rt.block_on(pool.recover("d:")), Ok(vec![]));
}
