//! The transaction manager's blocking PostgreSQL sessions (`Pool::commit_blocking`),
//! against a real server: a commit, its answers for unknown branches, the limit of
//! `pool_max`, and closing the sessions when the pool is dropped inside a runtime.

use std::sync::Arc;

use tpmon_config::{RmKind, XaResource};
use tpmon_testdb::PgServer;
use tpmon_tm::pool::Pool;
use tpmon_xa::drivers::postgres;
use tpmon_xa::{XaError, Xid};

fn prepared(url: &str) -> Vec<String> {
    let mut c = postgres::Client::connect(url, postgres::NoTls).expect("connect");
    c.query("SELECT gid FROM pg_prepared_xacts ORDER BY gid", &[])
        .expect("query")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Backend pid and last statement of each session with the database other than the
/// asking one.
fn session_pids(url: &str) -> Vec<(i32, String)> {
    let mut c = postgres::Client::connect(url, postgres::NoTls).expect("connect");
    c.query(
        "SELECT pid, query FROM pg_stat_activity WHERE datname = current_database() \
         AND pid <> pg_backend_pid() ORDER BY pid",
        &[],
    )
    .expect("query")
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

fn prepare(url: &str, xid: &Xid) {
    let mut c = postgres::Client::connect(url, postgres::NoTls).expect("connect");
    c.batch_execute(&format!(
        "BEGIN; INSERT INTO t VALUES ({}); PREPARE TRANSACTION '{}'",
        xid.bqual.len() * 1000 + xid.gtrid.len(),
        xid.gid()
    ))
    .expect("prepare");
}

#[test]
fn blocking_commits_respect_pool_max_and_close_safely_inside_a_runtime() {
    let server = PgServer::start().unwrap_or_else(|e| panic!("{e}"));
    server
        .create_database("tm")
        .unwrap_or_else(|e| panic!("{e}"));
    let url = server.url("tm");
    postgres::Client::connect(&url, postgres::NoTls)
        .expect("connect")
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .expect("table");
    let mut res = XaResource::new(RmKind::Postgres, url.clone());
    res.pool_max = 1;
    let pool = Arc::new(Pool::new(res));
    assert!(pool.blocking_capable());

    let a = Xid::new("d:n:1:1:1:9", "a");
    prepare(&url, &a);
    assert_eq!(prepared(&url), vec![a.gid()]);
    assert_eq!(pool.commit_blocking(&a), Some(Ok(())));
    assert!(prepared(&url).is_empty());
    // Committed already: the database no longer knows it.
    assert!(matches!(
        pool.commit_blocking(&a),
        Some(Err(XaError::NotFound(_)))
    ));

    // An asynchronous session goes idle (recovery's listing). With `pool_max` 1 the
    // pool keeps one session idle: the next blocking commit closes the asynchronous
    // one and keeps its own, and the commits after it reuse that session (closing
    // it instead would open a session per commit under load).
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let b = Xid::new("d:n:1:1:2:9", "bb");
    prepare(&url, &b);
    let listed = rt.block_on(pool.recover("d:")).expect("recover");
    assert_eq!(listed, vec![b.clone()]);
    assert_eq!(pool.commit_blocking(&b), Some(Ok(())));
    assert!(prepared(&url).is_empty());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let kept = loop {
        let pids = session_pids(&url);
        if pids.len() == 1 {
            break pids[0].0;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} sessions of the pool, expected 1",
            pids.len()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut last = String::new();
    for k in 0..3 {
        let x = Xid::new(format!("d:n:1:1:{}:9", 10 + k), "r".repeat(k + 1));
        prepare(&url, &x);
        assert_eq!(pool.commit_blocking(&x), Some(Ok(())));
        last = x.gid();
    }
    // One session, the one kept, and it ran the last commit.
    let now = session_pids(&url);
    assert_eq!(now.len(), 1, "{now:?}");
    assert_eq!(now[0].0, kept, "the blocking session is reused: {now:?}");
    assert!(now[0].1.contains(&last), "{now:?}");
    assert!(prepared(&url).is_empty());

    drop(pool);
    // Dropping a pool that keeps an idle blocking session on a runtime thread must
    // not panic: the session closes on a thread of its own.
    let pool = Pool::new(XaResource::new(RmKind::Postgres, url.clone()));
    let c = Xid::new("d:n:1:1:3:9", "ccc");
    prepare(&url, &c);
    assert_eq!(pool.commit_blocking(&c), Some(Ok(())));
    rt.block_on(async move { drop(pool) });
    assert!(prepared(&url).is_empty());
}
