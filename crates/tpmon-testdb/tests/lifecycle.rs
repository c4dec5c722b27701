//! Each server starts, answers, restarts after a clean stop and after a crash, keeps
//! its data across both, and leaves nothing behind when dropped.

use std::time::Instant;

use mysql::prelude::Queryable;
use tpmon_testdb::{MariaServer, PgServer};

/// True while a process with this pid exists (zombies included).
fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// True while a process with this pid exists and is not a zombie.
fn live_process(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
    })
}

fn pid_in(file: &std::path::Path) -> i32 {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines()
        .next()
        .unwrap_or("")
        .trim()
        .parse()
        .unwrap_or(0)
}

/// A process of the `postgres` user (when we are root) whose pid is written into the
/// lock file `path`; killed when dropped.
struct Squatter(Option<std::process::Child>);

impl Drop for Squatter {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn squat(path: &std::path::Path) -> Squatter {
    use std::os::unix::process::CommandExt;
    let Ok(Some(user)) = nix::unistd::User::from_name("postgres") else {
        return Squatter(None);
    };
    if !nix::unistd::Uid::effective().is_root() {
        return Squatter(None);
    }
    let child = std::process::Command::new("sleep")
        .arg("60")
        .uid(user.uid.as_raw())
        .gid(user.gid.as_raw())
        .spawn()
        .expect("spawn sleep");
    let text = std::fs::read_to_string(path).expect("lock file");
    let rest = text.split_once('\n').map_or("", |(_, r)| r);
    std::fs::write(path, format!("{}\n{rest}", child.id())).expect("rewrite lock file");
    Squatter(Some(child))
}

#[test]
fn pg_server_lifecycle() {
    let t = Instant::now();
    let mut s = PgServer::start().unwrap_or_else(|e| panic!("{e}"));
    eprintln!("pg start: {:?}", t.elapsed());
    s.create_database("life").unwrap_or_else(|e| panic!("{e}"));
    let url = s.url("life");
    assert!(url.contains(&format!("port={}", s.port())));
    let connect = || postgres::Client::connect(&url, postgres::NoTls).expect("connect");
    connect()
        .batch_execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
        .expect("write");
    let count = |c: &mut postgres::Client| -> i64 {
        c.query_one("SELECT count(*) FROM t", &[])
            .expect("count")
            .get(0)
    };
    let max_prepared: String = connect()
        .query_one("SHOW max_prepared_transactions", &[])
        .expect("show")
        .get(0);
    assert_eq!(max_prepared, "200");

    let t = Instant::now();
    s.stop();
    eprintln!("pg stop: {:?}", t.elapsed());
    assert!(!s.is_running());
    assert!(postgres::Client::connect(&url, postgres::NoTls).is_err());
    s.start_again().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(count(&mut connect()), 1);

    let mut c = connect();
    c.batch_execute("INSERT INTO t VALUES (2)").expect("write");
    // A backend busy computing does not notice its postmaster's death.
    let mut busy = connect();
    let backend: i32 = busy
        .query_one("SELECT pg_backend_pid()", &[])
        .expect("backend pid")
        .get(0);
    let spinner = std::thread::spawn(move || {
        let _ = busy.simple_query("SELECT count(*) FROM generate_series(1, 10000000000)");
    });
    let spin_deadline = Instant::now() + std::time::Duration::from_secs(10);
    while !connect()
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND state = 'active'",
            &[&backend],
        )
        .expect("activity")
        .get::<_, i64>(0)
        .eq(&1)
    {
        assert!(
            Instant::now() < spin_deadline,
            "the busy query never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let t = Instant::now();
    s.kill9();
    eprintln!("pg kill9: {:?}", t.elapsed());
    assert!(!s.is_running());
    // Backends live in process groups of their own; kill9 returns only once they
    // are gone too (else a restart finds the shared memory still attached).
    assert!(!live_process(backend), "the backend outlived kill9");
    let _ = spinner.join();
    assert!(c.simple_query("SELECT 1").is_err(), "old sessions are cut");
    // The dead postmaster's pid now belongs to another process of the same user
    // (pids wrap quickly): the restart must not take it for a live server.
    let _squatter = squat(&s.dir().join("data/postmaster.pid"));
    let t = Instant::now();
    s.start_again().unwrap_or_else(|e| panic!("{e}"));
    eprintln!("pg start after crash: {:?}", t.elapsed());
    assert_eq!(count(&mut connect()), 2, "committed work survives a crash");

    let dir = s.dir().to_path_buf();
    let pid = pid_in(&dir.join("data/postmaster.pid"));
    assert!(pid > 0 && alive(pid));
    let (shmid, dsm) = pg_shared_memory(&dir, pid);
    let t = Instant::now();
    drop(s);
    eprintln!("pg drop: {:?}", t.elapsed());
    assert!(!dir.exists(), "the directory is removed");
    assert!(!alive(pid), "the server is gone");
    assert_released(shmid, &dsm);
}

/// The System V segment id and the /dev/shm segments of the running postmaster `pid`
/// of the server in `dir`.
fn pg_shared_memory(dir: &std::path::Path, pid: i32) -> (i32, Vec<String>) {
    let text = std::fs::read_to_string(dir.join("data/postmaster.pid")).expect("pid file");
    let shmid = text
        .lines()
        .nth(6)
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|i| i.parse().ok())
        .expect("shmid on line 7");
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let mut dsm: Vec<String> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| p.starts_with("/dev/shm/PostgreSQL."))
        .map(str::to_string)
        .collect();
    dsm.dedup();
    (shmid, dsm)
}

fn assert_released(shmid: i32, dsm: &[String]) {
    // SAFETY: IPC_STAT fills the zeroed plain-data struct we own.
    let stat = unsafe {
        let mut ds: libc::shmid_ds = std::mem::zeroed();
        libc::shmctl(shmid, libc::IPC_STAT, &mut ds)
    };
    assert_ne!(stat, 0, "System V segment {shmid} is left behind");
    for f in dsm {
        assert!(!std::path::Path::new(f).exists(), "{f} is left behind");
    }
}

#[test]
fn pg_dropping_a_killed_server_releases_its_shared_memory() {
    let mut s = PgServer::start().unwrap_or_else(|e| panic!("{e}"));
    let dir = s.dir().to_path_buf();
    let pid = pid_in(&dir.join("data/postmaster.pid"));
    let (shmid, dsm) = pg_shared_memory(&dir, pid);
    assert!(!dsm.is_empty(), "the postmaster maps its control segment");
    s.kill9();
    let t = Instant::now();
    drop(s);
    eprintln!("pg drop after kill9: {:?}", t.elapsed());
    assert!(!dir.exists(), "the directory is removed");
    assert_released(shmid, &dsm);
}

#[test]
fn maria_server_lifecycle() {
    let t = Instant::now();
    let mut s = MariaServer::start().unwrap_or_else(|e| panic!("{e}"));
    eprintln!("maria start: {:?}", t.elapsed());
    s.create_database("life").unwrap_or_else(|e| panic!("{e}"));
    let url = s.url("life");
    assert!(url.contains(&format!(":{}/", s.port())));
    let connect = || mysql::Conn::new(mysql::Opts::from_url(&url).expect("url")).expect("connect");
    connect()
        .query_drop("CREATE TABLE t (id int) ENGINE=InnoDB; INSERT INTO t VALUES (1)")
        .expect("write");
    let count = |c: &mut mysql::Conn| -> u64 {
        c.query_first("SELECT COUNT(*) FROM t")
            .expect("count")
            .unwrap_or(0)
    };

    let t = Instant::now();
    s.stop();
    eprintln!("maria stop: {:?}", t.elapsed());
    assert!(!s.is_running());
    assert!(mysql::Conn::new(mysql::Opts::from_url(&url).expect("url")).is_err());
    s.start_again().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(count(&mut connect()), 1);

    let mut c = connect();
    c.query_drop("INSERT INTO t VALUES (2)").expect("write");
    let t = Instant::now();
    s.kill9();
    eprintln!("maria kill9: {:?}", t.elapsed());
    assert!(!s.is_running());
    assert!(c.query_drop("SELECT 1").is_err(), "old connections are cut");
    let t = Instant::now();
    s.start_again().unwrap_or_else(|e| panic!("{e}"));
    eprintln!("maria start after crash: {:?}", t.elapsed());
    assert_eq!(count(&mut connect()), 2, "committed work survives a crash");

    let dir = s.dir().to_path_buf();
    let pid = pid_in(&dir.join("mariadbd.pid"));
    assert!(pid > 0 && alive(pid));
    let t = Instant::now();
    drop(s);
    eprintln!("maria drop: {:?}", t.elapsed());
    assert!(!dir.exists(), "the directory is removed");
    assert!(!alive(pid), "the server is gone");
}

/// Set in the child process of [`servers_in_statics_are_removed_at_exit`].
const STATIC_CHILD: &str = "TPMON_TESTDB_STATIC_CHILD";

#[test]
fn servers_in_statics_are_removed_at_exit() {
    static HELD: std::sync::OnceLock<std::sync::Mutex<PgServer>> = std::sync::OnceLock::new();
    if std::env::var_os(STATIC_CHILD).is_some() {
        // The child: start a server that is never dropped, report it and exit.
        let s = PgServer::start().unwrap_or_else(|e| panic!("{e}"));
        let pid = pid_in(&s.dir().join("data/postmaster.pid"));
        println!("DIR={}", s.dir().display());
        println!("PID={pid}");
        let _ = HELD.set(std::sync::Mutex::new(s));
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "servers_in_statics_are_removed_at_exit",
            "--nocapture",
        ])
        .env(STATIC_CHILD, "1")
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let value = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {stdout}"))
            .to_string()
    };
    let dir = std::path::PathBuf::from(value("DIR="));
    let pid: i32 = value("PID=").parse().expect("pid");
    assert!(pid > 0);
    assert!(!dir.exists(), "the directory is removed at exit");
    // The server was the child's child: init reaps it, so allow a zombie a moment.
    let deadline = Instant::now() + std::time::Duration::from_secs(5);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        !alive(pid) || state.contains(") Z"),
        "the server is stopped at exit"
    );
}
