//! The transaction manager's blocking PostgreSQL sessions (`Pool::commit_blocking`),
//! against a real server: a commit, its answers for unknown branches, the limit of
//! `pool_max`, which sessions stay open, closing them when the pool is dropped inside
//! a runtime, and the deadline of a commit on a database server that has stopped.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// A private PostgreSQL server with database `tm` holding table `t`, and its URL.
fn server_with_table() -> (PgServer, String) {
    let server = PgServer::start().unwrap_or_else(|e| panic!("{e}"));
    server
        .create_database("tm")
        .unwrap_or_else(|e| panic!("{e}"));
    let url = server.url("tm");
    postgres::Client::connect(&url, postgres::NoTls)
        .expect("connect")
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .expect("table");
    (server, url)
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
    let (_server, url) = server_with_table();
    let mut res = XaResource::new(RmKind::Postgres, url.clone());
    res.pool_max = 1;
    let pool = Arc::new(Pool::new(res));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    assert!(pool.blocking_capable());

    let a = Xid::new("d:n:1:1:1:9", "a");
    prepare(&url, &a);
    assert_eq!(prepared(&url), vec![a.gid()]);
    assert_eq!(pool.commit_blocking(rt.handle(), &a), Some(Ok(())));
    assert!(prepared(&url).is_empty());
    // Committed already: the database no longer knows it.
    assert!(matches!(
        pool.commit_blocking(rt.handle(), &a),
        Some(Err(XaError::NotFound(_)))
    ));

    // An asynchronous session goes idle (recovery's listing). With `pool_max` 1 the
    // pool keeps one session idle plus that one asynchronous session: the next
    // blocking commit keeps its own session, and the commits after it reuse it
    // (closing it instead would open a session per commit under load), while the
    // listing's session stays for the next sweep (else a session per sweep).
    let b = Xid::new("d:n:1:1:2:9", "bb");
    prepare(&url, &b);
    let listed = rt.block_on(pool.recover("d:")).expect("recover");
    assert_eq!(listed, vec![b.clone()]);
    assert_eq!(pool.commit_blocking(rt.handle(), &b), Some(Ok(())));
    assert!(prepared(&url).is_empty());
    let before = session_pids(&url);
    assert_eq!(before.len(), 2, "{before:?}");
    let committer = |s: &[(i32, String)]| {
        s.iter()
            .find(|(_, q)| q.starts_with("COMMIT PREPARED"))
            .map(|(p, _)| *p)
    };
    let kept = committer(&before).expect("the committing session is kept");
    let mut last = String::new();
    for k in 0..3 {
        let x = Xid::new(format!("d:n:1:1:{}:9", 10 + k), "r".repeat(k + 1));
        prepare(&url, &x);
        assert_eq!(pool.commit_blocking(rt.handle(), &x), Some(Ok(())));
        last = x.gid();
    }
    // The same two sessions; the kept one ran the last commit.
    let now = session_pids(&url);
    let pids = |s: &[(i32, String)]| s.iter().map(|(p, _)| *p).collect::<Vec<_>>();
    assert_eq!(pids(&now), pids(&before), "{now:?}");
    assert_eq!(committer(&now), Some(kept), "{now:?}");
    assert!(
        now.iter().any(|(p, q)| *p == kept && q.contains(&last)),
        "{now:?}"
    );
    rt.block_on(pool.recover("d:")).expect("recover");
    assert_eq!(
        pids(&session_pids(&url)),
        pids(&before),
        "the listing reuses its session"
    );

    drop(pool);
    // Dropping a pool that keeps an idle blocking session on a runtime thread must
    // not panic: the session closes on a thread of its own.
    let pool = Pool::new(XaResource::new(RmKind::Postgres, url.clone()));
    let c = Xid::new("d:n:1:1:3:9", "ccc");
    prepare(&url, &c);
    assert_eq!(pool.commit_blocking(rt.handle(), &c), Some(Ok(())));
    rt.block_on(async move { drop(pool) });
    assert!(prepared(&url).is_empty());
}

#[test]
fn a_stopped_database_server_holds_a_blocking_commit_only_until_its_deadline() {
    let (_server, url) = server_with_table();
    let limit = Duration::from_secs(2);
    let pool = Arc::new(
        Pool::new(XaResource::new(RmKind::Postgres, url.clone())).with_call_timeout(limit),
    );
    assert_eq!(pool.call_timeout(), limit);
    let rt = tokio::runtime::Runtime::new().expect("runtime");

    // A first commit opens the pool's blocking session; find its backend.
    let a = Xid::new("d:n:1:1:1:9", "a");
    prepare(&url, &a);
    assert_eq!(pool.commit_blocking(rt.handle(), &a), Some(Ok(())));
    let backend = session_pids(&url)
        .into_iter()
        .find(|(_, q)| q.starts_with("COMMIT PREPARED"))
        .map(|(p, _)| p)
        .expect("the committing session");

    // That backend stops (its kernel still acknowledges the bytes, so no TCP timeout
    // fires): the next commit gives up at its deadline instead of holding the thread.
    let b = Xid::new("d:n:1:1:2:9", "bb");
    prepare(&url, &b);
    let resume = common::stop(u32::try_from(backend).expect("a pid"));
    let (tx, rx) = std::sync::mpsc::channel();
    let (p, h, x) = (pool.clone(), rt.handle().clone(), b.clone());
    std::thread::spawn(move || {
        let t = Instant::now();
        let r = p.commit_blocking(&h, &x);
        let _ = tx.send((r, t.elapsed()));
    });
    let (r, waited) = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the commit must give up at its deadline while the server is stopped");
    assert!(matches!(r, Some(Err(XaError::Unavailable(_)))), "{r:?}");
    assert!(
        waited >= limit,
        "gave up after {waited:?}, before its deadline"
    );
    drop(resume);

    // Resumed, the backend may still run the statement it had received; either way a
    // retry (recovery's job) finishes the branch on a new session.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match pool.commit_blocking(rt.handle(), &b) {
            Some(Ok(())) | Some(Err(XaError::NotFound(_))) => break,
            other => assert!(Instant::now() < deadline, "{other:?}"),
        }
    }
    assert!(prepared(&url).is_empty());
    let c = Xid::new("d:n:1:1:3:9", "ccc");
    prepare(&url, &c);
    assert_eq!(pool.commit_blocking(rt.handle(), &c), Some(Ok(())));
    assert!(prepared(&url).is_empty());
}
