//! `tpmon bench tx`: global transactions per second.
//!
//! * With the no-op resource manager: begin, one call, commit with a durable (fsynced)
//!   decision record, at 1, 2 and 4 clients; compared with the figures of Enduro/X's
//!   transaction manager with its null switch on this machine type.
//! * Over two PostgreSQL databases (a private server started for the run, or the
//!   databases given): the bank's TRANSFER (a debit and a journal row in database 1, a
//!   credit and a journal row in database 2, both prepared) and commit, at concurrency
//!   1, 8 and 32; and, in the same run, a baseline program that issues the same
//!   statements, PREPARE TRANSACTION on both, one fsynced decision record, and COMMIT
//!   PREPARED on both, straight through the driver.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Barrier};
use std::time::Instant;

use anyhow::{bail, Context};
use serde_json::json;
use tpmon_buffer::{Buffer, FieldBuffer, FieldTable, FieldValue};
use tpmon_client::{Client, ClientOptions, Flags};
use tpmon_xa::drivers::postgres;

use crate::bench::{join_latencies, machine_busy_us, summarize, timed_loop, Point};
use crate::quickstart::TempDomain;

/// Enduro/X's transaction manager with the null switch on this machine type (issue
/// figures; its log only reaches the page cache): transactions/s at 1, 2, 4 clients.
const ENDUROX_TX: [(usize, f64); 3] = [(1, 5_500.0), (2, 7_800.0), (4, 9_400.0)];

const BANK_FLD: &str = include_str!("../../../examples/bank/bank.fld");

/// Accounts per database in the PostgreSQL benchmark (few conflicts at 32).
const ACCOUNTS: i64 = 10_000;

/// The `[domain.tx]` lines setting the log's commit delay and preallocation, where
/// asked for.
pub(crate) fn log_lines(commit_delay_us: Option<u64>, preallocate_kib: Option<u64>) -> String {
    let mut s = String::new();
    if let Some(us) = commit_delay_us {
        s.push_str(&format!("log_commit_delay_us = {us}\n"));
    }
    if let Some(kib) = preallocate_kib {
        s.push_str(&format!("log_preallocate_kib = {kib}\n"));
    }
    s
}

fn noop_domain_toml(instances: usize, delay: &str) -> String {
    format!(
        r#"[domain]
name = "benchtx"
listen = "127.0.0.1:7498"
run_dir = "run"

[domain.tx]
# Every commit writes and fsyncs its decision, even with one branch.
one_phase_commit = false
{delay}
[[group]]
name = "null"
rm = "noop"

[[server]]
name = "echo"
group = "null"
executable = "tpmon-quickstart-server"
min_instances = {instances}
max_instances = {instances}

[[service]]
name = "ECHO"
server = "echo"
"#
    )
}

fn bank_domain_toml(db1: &str, db2: &str, instances: usize, delay: &str) -> String {
    let spin_us: u64 = std::env::var("TPMON_BENCH_SPIN_US")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    format!(
        r#"[domain]
name = "benchbank"
listen = "127.0.0.1:7497"
run_dir = "run"
field_tables = ["bank.fld"]

[domain.limits]
spin_us = {spin_us}

[domain.tx]
{delay}
[[group]]
name = "db1"
[group.rm]
kind = "postgres"
open = {db1}
pool_max = 4

[[group]]
name = "db2"
[group.rm]
kind = "postgres"
open = {db2}
pool_max = 4

[[server]]
name = "bank1"
group = "db1"
executable = "tpmon-bank-server"
min_instances = {instances}
max_instances = {instances}
env = {{ TPMON_BANK_ACCOUNTS = "{ACCOUNTS}" }}

[[server]]
name = "bank2"
group = "db2"
executable = "tpmon-bank-server"
min_instances = {instances}
max_instances = {instances}
env = {{ TPMON_BANK_ACCOUNTS = "{ACCOUNTS}" }}

[[service]]
name = "TRANSFER"
server = "bank1"

[[service]]
name = "CREDIT"
server = "bank2"
"#,
        db1 = q(db1),
        db2 = q(db2),
    )
}

/// One client loop of `seconds`: `op` per transaction.
pub(crate) fn clients_point(
    clients: usize,
    seconds: f64,
    make: impl Fn(usize) -> anyhow::Result<Box<dyn FnMut() -> anyhow::Result<()> + Send>>,
) -> anyhow::Result<Point> {
    let barrier = Arc::new(Barrier::new(clients + 1));
    let mut handles = Vec::new();
    for i in 0..clients {
        let mut op = make(i)?;
        let barrier = barrier.clone();
        handles.push(std::thread::spawn(move || -> anyhow::Result<Vec<u64>> {
            let warm: anyhow::Result<()> = (0..50).try_for_each(|_| op());
            // Everyone meets at the barrier, even a client that failed, so that a
            // failure is reported instead of hanging the others.
            barrier.wait();
            warm?;
            let mut lat = Vec::with_capacity(100_000);
            timed_loop(seconds, &mut lat, &mut op)?;
            Ok(lat)
        }));
    }
    barrier.wait();
    let start = Instant::now();
    let busy0 = machine_busy_us();
    let all = join_latencies(handles, "client")?;
    let elapsed = start.elapsed();
    let busy1 = machine_busy_us();
    let mut p = summarize(clients, all, elapsed);
    if let (Some(a), Some(b)) = (busy0, busy1) {
        let ops = p.calls_per_s * elapsed.as_secs_f64();
        if ops >= 1.0 {
            p.cpu_us = Some(b.saturating_sub(a) as f64 / ops);
        }
    }
    Ok(p)
}

pub(crate) fn row(label: &str, p: &Point, other: &str) {
    let cpu = p.cpu_us.map_or("-".to_string(), |c| format!("{c:.0}"));
    println!(
        "{:<46} {:>9.0} {:>9.1} {:>9.1} {:>9.1} {:>8}  {}",
        label, p.calls_per_s, p.mean_us, p.p50_us, p.p99_us, cpu, other
    );
}

pub(crate) fn header(what: &str) {
    println!(
        "{:<46} {:>9} {:>9} {:>9} {:>9} {:>8}  {}",
        "", "tx/s", "mean us", "p50 us", "p99 us", "cpu us", what
    );
}

fn pj(p: &Point) -> serde_json::Value {
    json!({"clients": p.clients, "tx_per_s": p.calls_per_s, "mean_us": p.mean_us, "p50_us": p.p50_us, "p99_us": p.p99_us, "cpu_us_per_tx": p.cpu_us})
}

/// The no-op resource manager part.
fn noop_part(
    seconds: f64,
    clients: &[usize],
    as_json: bool,
    log: &str,
) -> anyhow::Result<serde_json::Value> {
    let instances = clients.iter().copied().max().unwrap_or(1);
    let dom = TempDomain::boot("bench-tx-noop", &noop_domain_toml(instances, log), false)?;
    let addr = dom.addr.clone();
    if !as_json {
        println!("no-op resource manager: tx_begin, tpcall ECHO, tx_commit (decision fsynced)");
        header("Enduro/X (null switch, page-cache log)");
    }
    let mut out = Vec::new();
    for &n in clients {
        let addr = addr.clone();
        let p = clients_point(n, seconds, move |_| {
            let mut c = Client::connect(&ClientOptions::new(addr.clone()))?;
            if !c.is_local() {
                bail!("the benchmark client did not get the local fast path");
            }
            let req = Buffer::string("x".repeat(64));
            Ok(Box::new(move || {
                c.tx_begin().map_err(|e| anyhow::anyhow!("{e}"))?;
                c.call("ECHO", &req, Flags::NONE)?;
                c.tx_commit().map_err(|e| anyhow::anyhow!("{e}"))?;
                Ok(())
            }))
        })?;
        let ex = ENDUROX_TX.iter().find(|(c, _)| *c == n).map(|(_, v)| *v);
        if !as_json {
            let cmp = ex.map_or("-".to_string(), |e| {
                format!("{e:.0} (tpmon {:.2}x)", p.calls_per_s / e)
            });
            row(&format!("tpmon, {n} client(s)"), &p, &cmp);
        }
        out.push(json!({"point": pj(&p), "endurox_tx_per_s": ex}));
    }
    drop(dom);
    Ok(json!(out))
}

fn fields() -> anyhow::Result<(FieldTable, [tpmon_buffer::FieldKey; 4])> {
    let t = FieldTable::parse(BANK_FLD, "bank.fld")?;
    let k = |n: &str| t.key_of(n).context("bank.fld lacks a field");
    let keys = [k("FROM")?, k("TO")?, k("AMOUNT")?, k("TXID")?];
    Ok((t, keys))
}

/// Time spent in TRANSFER calls and in commits, for the breakdown line.
static CALL_NS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static COMMIT_NS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static SPLITS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Transfer ids unique across runs on the same databases (the journal's key).
fn run_base() -> i64 {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    (ms & 0x3F_FFFF) << 40
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// The baseline: the same statements straight through the driver, both prepared, one
/// fsynced decision record (the thread's own file), both committed.
fn baseline_op(
    db1: &str,
    db2: &str,
    dir: &std::path::Path,
    thread: usize,
) -> anyhow::Result<Box<dyn FnMut() -> anyhow::Result<()> + Send>> {
    let mut c1 = postgres::Client::connect(db1, postgres::NoTls)?;
    let mut c2 = postgres::Client::connect(db2, postgres::NoTls)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(dir.join(format!("decisions-{thread}.log")))?;
    let mut rng = Rng(0x5EED ^ ((thread as u64 + 1) << 20));
    let mut n: i64 = 0;
    let base = run_base() + (1i64 << 62) + ((thread as i64) << 32);
    let mut offset = 0u64;
    Ok(Box::new(move || {
        n += 1;
        let txid = base + n;
        let from = 1 + rng.below(ACCOUNTS as u64) as i64;
        let to = 1 + rng.below(ACCOUNTS as u64) as i64;
        let gid = format!("base:{thread}:{n}");
        c1.batch_execute("BEGIN")?;
        let moved = c1.execute(
            "UPDATE accounts SET balance = balance + $2 WHERE id = $1 AND balance + $2 >= 0",
            &[&from, &-1i64],
        )?;
        c1.execute("INSERT INTO journal (txid) VALUES ($1)", &[&txid])?;
        c2.batch_execute("BEGIN")?;
        c2.execute(
            "UPDATE accounts SET balance = balance + $2 WHERE id = $1 AND balance + $2 >= 0",
            &[&to, &1i64],
        )?;
        c2.execute("INSERT INTO journal (txid) VALUES ($1)", &[&txid])?;
        if moved != 1 {
            c2.batch_execute("ROLLBACK")?;
            c1.batch_execute("ROLLBACK")?;
            return Ok(());
        }
        c2.batch_execute(&format!("PREPARE TRANSACTION '{gid}|2'"))?;
        c1.batch_execute(&format!("PREPARE TRANSACTION '{gid}|1'"))?;
        let mut rec = [0u8; 128];
        let text = format!("commit {gid}\n");
        rec[..text.len()].copy_from_slice(text.as_bytes());
        log.write_all_at(&rec, offset)?;
        log.sync_data()?;
        offset = (offset + 128) % (1 << 20);
        c1.batch_execute(&format!("COMMIT PREPARED '{gid}|1'"))?;
        c2.batch_execute(&format!("COMMIT PREPARED '{gid}|2'"))?;
        Ok(())
    }))
}

fn tpmon_op(
    addr: &str,
    thread: usize,
) -> anyhow::Result<Box<dyn FnMut() -> anyhow::Result<()> + Send>> {
    let (_, [from_k, to_k, amount_k, txid_k]) = fields()?;
    let mut c = Client::connect(&ClientOptions::new(addr.to_string()))?;
    if !c.is_local() {
        bail!("the benchmark client did not get the local fast path");
    }
    let mut rng = Rng(0xBA2C ^ ((thread as u64 + 1) << 20));
    let mut n: i64 = 0;
    let base = run_base() + ((thread as i64) << 32);
    Ok(Box::new(move || {
        n += 1;
        let mut fb = FieldBuffer::new();
        fb.add(
            from_k,
            FieldValue::Long(1 + rng.below(ACCOUNTS as u64) as i64),
        )?;
        fb.add(
            to_k,
            FieldValue::Long(1 + rng.below(ACCOUNTS as u64) as i64),
        )?;
        fb.add(amount_k, FieldValue::Long(1))?;
        fb.add(txid_k, FieldValue::Long(base + n))?;
        c.tx_begin().map_err(|e| anyhow::anyhow!("{e}"))?;
        let t0 = Instant::now();
        match c.call("TRANSFER", &Buffer::Field(fb), Flags::NONE) {
            Ok(_) => {
                let t1 = Instant::now();
                c.tx_commit().map_err(|e| anyhow::anyhow!("{e}"))?;
                let t2 = Instant::now();
                CALL_NS.fetch_add(
                    (t1 - t0).as_nanos() as u64,
                    std::sync::atomic::Ordering::Relaxed,
                );
                COMMIT_NS.fetch_add(
                    (t2 - t1).as_nanos() as u64,
                    std::sync::atomic::Ordering::Relaxed,
                );
                SPLITS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) if e.kind == tpmon_client::ErrorKind::SvcFail => {
                // Funds short: rolled back, as the baseline does.
                let _ = c.tx_rollback();
            }
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }))
}

/// Which side of the PostgreSQL comparison to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Side {
    /// tpmon and the baseline (the comparison).
    Both,
    /// tpmon only (for profiling it).
    Tpmon,
    /// The baseline program only.
    Baseline,
}

/// The settings of the PostgreSQL part.
#[derive(Debug, Clone)]
pub(crate) struct PgBench {
    /// Seconds measured per point.
    pub seconds: f64,
    /// Concurrent clients per point.
    pub concurrency: Vec<usize>,
    /// Databases given by the user (else a private server is started).
    pub urls: Option<(String, String)>,
    /// Print JSON.
    pub as_json: bool,
    /// Extra `[domain.tx]` lines for the log ([`log_lines`]).
    pub log: String,
    /// Instances of each bank server; `None`: twice the CPUs (at most the clients).
    pub instances: Option<usize>,
    /// Which side runs.
    pub side: Side,
}

pub(crate) fn postgres_part(b: &PgBench) -> anyhow::Result<serde_json::Value> {
    let (seconds, as_json) = (b.seconds, b.as_json);
    let urls = b.urls.clone();
    let server;
    let (db1, db2) = match urls {
        Some(u) => u,
        None => {
            if !as_json {
                println!("starting a private PostgreSQL server (fsync on) ...");
            }
            server = tpmon_testdb::PgServer::start().map_err(|e| anyhow::anyhow!(e))?;
            server
                .create_database("bench1")
                .map_err(|e| anyhow::anyhow!(e))?;
            server
                .create_database("bench2")
                .map_err(|e| anyhow::anyhow!(e))?;
            (server.url("bench1"), server.url("bench2"))
        }
    };
    if !as_json {
        println!(
            "\ntwo PostgreSQL databases: TRANSFER (UPDATE + INSERT in each, both prepared), commit"
        );
        header("tpmon / baseline");
    }
    let mut out = Vec::new();
    for &n in &b.concurrency {
        // Each point gets a domain of its own, with `instances` of each bank server:
        // by default a pool sized to the machine (twice its CPUs), as an operator
        // would configure it, which the clients share; never more than one per client
        // (more could never be busy).
        let cpus = std::thread::available_parallelism().map_or(2, |c| c.get());
        let instances = b.instances.unwrap_or(2 * cpus).clamp(1, n.max(1));
        let dom = TempDomain::boot_with(
            "bench-tx-pg",
            &bank_domain_toml(&db1, &db2, instances, &b.log),
            false,
            &[("bank.fld", BANK_FLD)],
        )?;
        let (d1, d2, d) = (db1.clone(), db2.clone(), dom.dir.clone());
        let base = if b.side == Side::Tpmon {
            None
        } else {
            Some(clients_point(n, seconds, move |i| {
                baseline_op(&d1, &d2, &d, i)
            })?)
        };
        let base_label = format!("baseline driver program, concurrency {n}");
        if b.side == Side::Baseline {
            if let Some(base) = &base {
                if !as_json {
                    row(&base_label, base, "");
                }
                out.push(json!({"concurrency": n, "baseline": pj(base)}));
            }
            drop(dom);
            continue;
        }
        let addr = dom.addr.clone();
        for s in [&CALL_NS, &COMMIT_NS, &SPLITS] {
            s.store(0, std::sync::atomic::Ordering::Relaxed);
        }
        let tp = clients_point(n, seconds, move |i| tpmon_op(&addr, i))?;
        let k = SPLITS.load(std::sync::atomic::Ordering::Relaxed).max(1) as f64;
        let call_us = CALL_NS.load(std::sync::atomic::Ordering::Relaxed) as f64 / k / 1000.0;
        let commit_us = COMMIT_NS.load(std::sync::atomic::Ordering::Relaxed) as f64 / k / 1000.0;
        let ratio = base
            .as_ref()
            .map(|base| tp.calls_per_s / base.calls_per_s.max(1e-9));
        if !as_json {
            if let Some(base) = &base {
                row(&base_label, base, "");
            }
            let vs = ratio.map_or(String::new(), |r| format!("{r:.2}x (target >= 0.8x); "));
            row(
                &format!("tpmon, concurrency {n}, {instances} instance(s)"),
                &tp,
                &format!("{vs}TRANSFER {call_us:.0} us + commit {commit_us:.0} us"),
            );
        }
        out.push(json!({
            "concurrency": n,
            "instances": instances,
            "tpmon": pj(&tp),
            "baseline": base.as_ref().map(pj),
            "ratio": ratio,
        }));
        drop(dom);
    }
    Ok(json!(out))
}

/// Runs `tpmon bench tx`: the no-op resource manager at `clients`, then (unless
/// `skip_postgres`) the PostgreSQL comparison set up by `pg`.
pub(crate) fn bench_tx(clients: &[usize], skip_postgres: bool, pg: &PgBench) -> anyhow::Result<()> {
    if !(pg.seconds.is_finite() && pg.seconds > 0.0) {
        bail!("--seconds must be positive");
    }
    crate::quickstart::require_example_server()?;
    let noop = if clients.is_empty() {
        serde_json::Value::Null
    } else {
        noop_part(pg.seconds, clients, pg.as_json, &pg.log)?
    };
    let pgv = if skip_postgres {
        serde_json::Value::Null
    } else {
        postgres_part(pg)?
    };
    if pg.as_json {
        println!("{}", json!({"noop": noop, "postgres": pgv}));
    }
    let _ = std::io::stdout().flush();
    Ok(())
}
