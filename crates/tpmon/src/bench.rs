//! `tpmon bench …`: benchmarks that run their baseline in the same run and print the
//! ratio. Results and the commands that reproduce them go into docs/benchmarks.md.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Subcommand;
use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType};
use serde_json::json;
use tpmon_client::{Buffer, Client, ClientOptions, Flags};

use crate::quickstart::TempDomain;

/// Benchmarks.
#[derive(Subcommand)]
pub enum BenchCommand {
    /// tpcall round trips against a raw Unix-socket ping-pong between two processes.
    Call {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Seconds measured per point.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Client counts to measure.
        #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
        clients: Vec<usize>,
    },
    /// A call to a service of another node (client on n1, service on n2, over the
    /// node link on loopback) against the same call on n2 itself; boots both nodes.
    Remote {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Seconds measured per point.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Client counts to measure.
        #[arg(long, value_delimiter = ',', default_value = "1,4")]
        clients: Vec<usize>,
        /// Global transactions instead of plain calls: begin, the call, commit with a
        /// durable decision, the service's group on n2 having the no-op resource
        /// manager; from n1 (n1's TM coordinates, n2's is its subordinate over the
        /// link) against the same on n2 alone.
        #[arg(long)]
        tx: bool,
    },
    /// Global transaction log: group commit against one fdatasync per change, on real
    /// files in a temporary directory.
    Log {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Seconds measured per mode.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Concurrent committing threads.
        #[arg(long, default_value_t = 64)]
        writers: usize,
    },
    /// Global transactions: with the no-op resource manager (against Enduro/X's
    /// figures), and over two PostgreSQL databases against a driver-only baseline.
    Tx {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Seconds measured per point.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Client counts for the no-op resource manager.
        #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
        clients: Vec<usize>,
        /// Concurrency for PostgreSQL.
        #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
        concurrency: Vec<usize>,
        /// Only the no-op resource manager.
        #[arg(long)]
        no_postgres: bool,
        /// Database 1 (libpq connection string); without it a private server is started.
        #[arg(long, requires = "db2")]
        db1: Option<String>,
        /// Database 2.
        #[arg(long, requires = "db1")]
        db2: Option<String>,
        /// The domains' `[domain.tx] log_commit_delay_us` (default: the default, 100;
        /// 0 turns the commit delay off, for comparison).
        #[arg(long)]
        log_commit_delay_us: Option<u64>,
        /// The domains' `[domain.tx] log_preallocate_kib` (default: the default, 1024;
        /// 0 turns preallocation off, for comparison).
        #[arg(long)]
        log_preallocate_kib: Option<u64>,
        /// Instances of each bank server in the PostgreSQL part (default: twice the
        /// CPUs, a pool sized to the machine that the clients share; never more than
        /// the clients).
        #[arg(long)]
        instances: Option<usize>,
        /// Which side of the PostgreSQL comparison runs (one side alone is for
        /// profiling it).
        #[arg(long, value_enum, default_value = "both")]
        only: crate::bench_tx::Side,
    },
    /// The embedded resource manager: transactions/s over two embedded sites with and
    /// without checkpoints (p99 interference), messages and storage per checkpoint,
    /// restart recovery time against log size, and the same transfer on PostgreSQL.
    Rm {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Seconds measured per point.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Concurrent clients.
        #[arg(long, default_value_t = 4)]
        clients: usize,
        /// Rounds of (without, with checkpoints); the figures are medians.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Checkpoint interval (delta) of the run with checkpoints, in ms.
        #[arg(long, default_value_t = 100)]
        delta_ms: u64,
        /// Skip the PostgreSQL comparison.
        #[arg(long)]
        no_postgres: bool,
        /// Database 1 (libpq connection string); without it a private server is started.
        #[arg(long, requires = "db2")]
        db1: Option<String>,
        /// Database 2.
        #[arg(long, requires = "db1")]
        db2: Option<String>,
    },
}

pub(crate) const PAYLOAD_BYTES: usize = 64;

/// Enduro/X on this machine type (issue figures): calls/s at 1, 2, 4, 8 clients.
const ENDUROX: [(usize, f64); 4] = [(1, 17_700.0), (2, 37_000.0), (4, 101_000.0), (8, 104_000.0)];

pub fn run(which: BenchCommand) -> anyhow::Result<()> {
    match which {
        BenchCommand::Rm {
            json,
            seconds,
            rounds,
            clients,
            delta_ms,
            no_postgres,
            db1,
            db2,
        } => crate::bench_rm::bench_rm(
            json,
            seconds,
            rounds,
            clients,
            delta_ms,
            no_postgres,
            db1.zip(db2),
        ),
        BenchCommand::Call {
            json,
            seconds,
            clients,
        } => bench_call(json, seconds, &clients),
        BenchCommand::Remote {
            json,
            seconds,
            clients,
            tx: false,
        } => crate::bench_remote::bench_remote(json, seconds, &clients),
        BenchCommand::Remote {
            json,
            seconds,
            clients,
            tx: true,
        } => crate::bench_remote::bench_remote_tx(json, seconds, &clients),
        BenchCommand::Log {
            json,
            seconds,
            writers,
        } => bench_log(json, seconds, writers),
        BenchCommand::Tx {
            json,
            seconds,
            clients,
            concurrency,
            no_postgres,
            db1,
            db2,
            log_commit_delay_us,
            log_preallocate_kib,
            instances,
            only,
        } => crate::bench_tx::bench_tx(
            &clients,
            no_postgres,
            &crate::bench_tx::PgBench {
                seconds,
                concurrency,
                urls: db1.zip(db2),
                as_json: json,
                log: crate::bench_tx::log_lines(log_commit_delay_us, log_preallocate_kib),
                instances,
                side: only,
            },
        ),
    }
}

/// One measured point.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Point {
    pub clients: usize,
    pub calls_per_s: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Busy CPU time of the whole machine per operation (µs), when measured
    /// ([`machine_busy_us`] around the timed run); every process of the run counts,
    /// databases included.
    pub cpu_us: Option<f64>,
}

/// Busy CPU time of the whole machine so far, in µs (all CPUs, from /proc/stat: user,
/// nice, system, irq, softirq, steal), or `None` where /proc/stat cannot be read.
pub(crate) fn machine_busy_us() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy = [0usize, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| v.get(i))
        .sum::<u64>();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    Some(busy * 1_000_000 / hz)
}

pub(crate) fn summarize(clients: usize, mut lat_ns: Vec<u64>, elapsed: Duration) -> Point {
    lat_ns.sort_unstable();
    let n = lat_ns.len().max(1);
    let pct = |p: f64| {
        lat_ns
            .get(((n as f64 * p) as usize).min(n - 1))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    Point {
        clients,
        calls_per_s: lat_ns.len() as f64 / elapsed.as_secs_f64(),
        mean_us: lat_ns.iter().sum::<u64>() as f64 / n as f64 / 1000.0,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        cpu_us: None,
    }
}

/// Runs `op` repeatedly for `seconds`, recording each run's latency in nanoseconds.
pub(crate) fn timed_loop(
    seconds: f64,
    lat: &mut Vec<u64>,
    mut op: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    while Instant::now() < until {
        let t = Instant::now();
        op()?;
        lat.push(t.elapsed().as_nanos() as u64);
    }
    Ok(())
}

/// Joins the benchmark threads and merges their latencies.
pub(crate) fn join_latencies(
    handles: Vec<std::thread::JoinHandle<anyhow::Result<Vec<u64>>>>,
    who: &str,
) -> anyhow::Result<Vec<u64>> {
    let mut all = Vec::new();
    for h in handles {
        let lat = h
            .join()
            .map_err(|_| anyhow::anyhow!("a benchmark {who} panicked"))??;
        all.extend(lat);
    }
    Ok(all)
}

/// Receives on a raw socket, polling for up to `spin` first (as tpmon's endpoints do).
fn recv_raw(fd: i32, buf: &mut [u8], spin: Duration) -> nix::Result<usize> {
    if !spin.is_zero() {
        let until = Instant::now() + spin;
        while Instant::now() < until {
            match socket::recv(fd, buf, MsgFlags::MSG_DONTWAIT) {
                Err(nix::errno::Errno::EAGAIN) => std::hint::spin_loop(),
                other => return other,
            }
        }
    }
    loop {
        match socket::recv(fd, buf, MsgFlags::empty()) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => return other,
        }
    }
}

/// The peer of the raw baseline: echoes every datagram on the inherited socket,
/// polling for `spin_us` before sleeping.
pub fn pong(fd: i32, spin_us: u64) -> anyhow::Result<()> {
    // SAFETY: the parent passed this descriptor to us for our exclusive use.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let spin = Duration::from_micros(spin_us);
    let mut buf = [0u8; 65536];
    loop {
        let n = match recv_raw(sock.as_raw_fd(), &mut buf, spin) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(_) => return Ok(()),
        };
        if socket::send(sock.as_raw_fd(), &buf[..n], MsgFlags::empty()).is_err() {
            return Ok(());
        }
    }
}

/// Raw round trip: 64-byte datagrams ping-ponged with a child process over a Unix
/// datagram socket pair (the same socket type tpmon's queues use), blocking calls only.
fn raw_baseline(seconds: f64, spin: Duration) -> anyhow::Result<Point> {
    let (ours, theirs) = socket::socketpair(
        AddressFamily::Unix,
        SockType::Datagram,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .context("socketpair")?;
    // Only the child's end may survive exec; ours must not, or the child never sees EOF.
    nix::fcntl::fcntl(
        &theirs,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .context("fcntl")?;
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .arg("bench-pong")
        .arg(theirs.as_raw_fd().to_string())
        .arg(spin.as_micros().to_string())
        .stdin(Stdio::null())
        .spawn()
        .context("starting the pong process")?;
    drop(theirs);
    let msg = [7u8; PAYLOAD_BYTES];
    let mut buf = [0u8; 256];
    let mut once = || -> anyhow::Result<()> {
        socket::send(ours.as_raw_fd(), &msg, MsgFlags::empty())?;
        recv_raw(ours.as_raw_fd(), &mut buf, spin)?;
        Ok(())
    };
    for _ in 0..2000 {
        once()?;
    }
    let mut lat = Vec::with_capacity(200_000);
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(seconds);
    while Instant::now() < until {
        let t = Instant::now();
        once()?;
        lat.push(t.elapsed().as_nanos() as u64);
    }
    let el = start.elapsed();
    // A datagram peer sees no end-of-file when we close: stop it.
    drop(ours);
    let _ = child.kill();
    let _ = child.wait();
    Ok(summarize(1, lat, el))
}

fn bench_domain_toml(instances: usize, spin_us: u64) -> String {
    format!(
        r#"[domain]
name = "bench"
listen = "127.0.0.1:7499"
run_dir = "run"

[domain.limits]
spin_us = {spin_us}

[[server]]
name = "echo"
executable = "tpmon-quickstart-server"
min_instances = {instances}
max_instances = {instances}

[[service]]
name = "ECHO"
server = "echo"
"#
    )
}

pub(crate) fn tpcall_point(
    addr: &str,
    clients: usize,
    seconds: f64,
    relay: bool,
) -> anyhow::Result<Point> {
    let barrier = Arc::new(Barrier::new(clients + 1));
    let mut handles = Vec::new();
    for _ in 0..clients {
        let barrier = barrier.clone();
        let opts = ClientOptions {
            force_relay: relay,
            ..ClientOptions::new(addr.to_string())
        };
        handles.push(std::thread::spawn(move || -> anyhow::Result<Vec<u64>> {
            let mut c = Client::connect(&opts)?;
            if !relay && !c.is_local() {
                bail!("the benchmark client did not get the local fast path");
            }
            let req = Buffer::string("x".repeat(PAYLOAD_BYTES));
            for _ in 0..1000 {
                c.call("ECHO", &req, Flags::NONE)?;
            }
            barrier.wait();
            let mut lat = Vec::with_capacity(500_000);
            timed_loop(seconds, &mut lat, || {
                c.call("ECHO", &req, Flags::NONE)?;
                Ok(())
            })?;
            Ok(lat)
        }));
    }
    barrier.wait();
    let start = Instant::now();
    let all = join_latencies(handles, "client")?;
    Ok(summarize(clients, all, start.elapsed()))
}

/// The default `spin_us` of a domain (see docs/configuration.md).
const SPIN_US_DEFAULT: u64 = 20;

pub(crate) fn row(label: &str, p: &Point, endurox: Option<f64>) {
    println!(
        "{:<44} {:>10.0} {:>9.1} {:>9.1} {:>9.1} {:>13}",
        label,
        p.calls_per_s,
        p.mean_us,
        p.p50_us,
        p.p99_us,
        endurox.map_or("-".to_string(), |e| format!("{e:.0}"))
    );
}

pub(crate) fn point_json(p: &Point) -> serde_json::Value {
    json!({"clients": p.clients, "calls_per_s": p.calls_per_s, "mean_us": p.mean_us, "p50_us": p.p50_us, "p99_us": p.p99_us})
}

fn bench_call(as_json: bool, seconds: f64, clients: &[usize]) -> anyhow::Result<()> {
    if !(seconds.is_finite() && seconds > 0.0) {
        bail!("--seconds must be positive");
    }
    crate::quickstart::require_example_server()?;
    let spin = Duration::from_micros(SPIN_US_DEFAULT);
    // Baselines: the issue's (blocking on both sides) and the like-for-like one for
    // tpmon's default mode (both sides poll for spin_us before sleeping).
    let raw_blocking = raw_baseline(seconds, Duration::ZERO)?;
    let raw_spinning = raw_baseline(seconds, spin)?;
    let instances = clients.iter().copied().max().unwrap_or(1).max(1);
    let mut points = Vec::new();
    let relay;
    {
        let mut dom = TempDomain::boot(
            "bench",
            &bench_domain_toml(instances, SPIN_US_DEFAULT),
            false,
        )?;
        for &c in clients {
            points.push(tpcall_point(&dom.addr, c, seconds, false)?);
        }
        relay = tpcall_point(&dom.addr, 1, seconds, true)?;
        dom.down()?;
    }
    // Like-for-like with the two baselines: one client, one instance.
    let single = |spin_us: u64| -> anyhow::Result<Point> {
        let mut dom = TempDomain::boot("bench-single", &bench_domain_toml(1, spin_us), false)?;
        let p = tpcall_point(&dom.addr, 1, seconds, false)?;
        dom.down()?;
        Ok(p)
    };
    let blocking = single(0)?;
    let spinning = single(SPIN_US_DEFAULT)?;
    let ratio_spinning = spinning.mean_us / raw_spinning.mean_us;
    let ratio_blocking = blocking.mean_us / raw_blocking.mean_us;
    let endurox = |c: usize| ENDUROX.iter().find(|e| e.0 == c).map(|e| e.1);
    if as_json {
        let v = json!({
            "payload_bytes": PAYLOAD_BYTES,
            "seconds_per_point": seconds,
            "spin_us": SPIN_US_DEFAULT,
            "raw_round_trip_blocking": point_json(&raw_blocking),
            "raw_round_trip_spinning": point_json(&raw_spinning),
            "tpcall": points.iter().map(|p| {
                let mut v = point_json(p);
                v["endurox_calls_per_s"] = json!(endurox(p.clients));
                v
            }).collect::<Vec<_>>(),
            "tpcall_1_client_1_instance_no_spin": point_json(&blocking),
            "tpcall_1_client_1_instance_spin": point_json(&spinning),
            "relayed_tcp_1_client": point_json(&relay),
            "ratio_1_client_to_raw_spinning": ratio_spinning,
            "ratio_1_client_no_spin_to_raw_blocking": ratio_blocking,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "tpmon bench call: {PAYLOAD_BYTES}-byte STRING echo, {seconds} s per point, spin_us = {SPIN_US_DEFAULT}\n"
    );
    println!(
        "{:<44} {:>10} {:>9} {:>9} {:>9} {:>13}",
        "", "calls/s", "mean us", "p50 us", "p99 us", "Enduro/X c/s"
    );
    row(
        "raw Unix datagram round trip, blocking",
        &raw_blocking,
        None,
    );
    row(
        &format!("raw Unix datagram round trip, spin {SPIN_US_DEFAULT} us"),
        &raw_spinning,
        None,
    );
    for p in &points {
        row(
            &format!("tpcall, {} local client(s)", p.clients),
            p,
            endurox(p.clients),
        );
    }
    row(
        &format!("tpcall, 1 client, 1 instance, spin {SPIN_US_DEFAULT} us"),
        &spinning,
        None,
    );
    row("tpcall, 1 client, 1 instance, no spin", &blocking, None);
    row("tpcall, 1 TCP client (relayed by daemon)", &relay, None);
    println!();
    println!(
        "1-client tpcall / raw round trip, both spinning: {ratio_spinning:.2}x (target <= 1.15x)"
    );
    println!(
        "1-client tpcall / raw round trip, both blocking: {ratio_blocking:.2}x (target <= 1.15x)"
    );
    Ok(())
}

/// One mode of `tpmon bench log`: the point plus the log's own counters.
struct LogPoint {
    point: Point,
    stats: tpmon_txlog::LogStats,
}

/// A transaction entry of about 200 bytes on disk (202 with the record frame).
fn bench_entry(writer: usize, n: u64) -> tpmon_txlog::Entry {
    let branch = |rm: u32| tpmon_txlog::Branch {
        rm,
        bqual: format!("bq-{rm:013}").into_bytes(),
        state: 1,
    };
    tpmon_txlog::Entry {
        gtrid: format!("node-a:{writer:04}:{n:020}").into_bytes(),
        state: tpmon_txlog::TxState::Prepare,
        advice: tpmon_txlog::Advice::None,
        branches: vec![branch(1), branch(2)],
        data: vec![0x5A; 96],
    }
}

/// `writers` threads each loop: put an entry, remove it (two durable records, one
/// "decision"), for `seconds`.
fn log_point(
    dir: &std::path::Path,
    writers: usize,
    seconds: f64,
    group_commit: tpmon_txlog::GroupCommit,
) -> anyhow::Result<LogPoint> {
    use tpmon_txlog::{LogIdentity, Options, TxLog};
    let options = Options {
        group_commit,
        ..Options::default()
    };
    let log = Arc::new(
        TxLog::create(dir, LogIdentity::new("bench", "node-a"), options)
            .with_context(|| format!("creating a log in {}", dir.display()))?,
    );
    let barrier = Arc::new(Barrier::new(writers + 1));
    let mut handles = Vec::new();
    for w in 0..writers {
        let log = log.clone();
        let barrier = barrier.clone();
        handles.push(std::thread::spawn(move || -> anyhow::Result<Vec<u64>> {
            let mut n = 0u64;
            let decide = |n: u64| -> anyhow::Result<()> {
                let e = bench_entry(w, n);
                let gtrid = e.gtrid.clone();
                log.put(e)?;
                log.remove(&gtrid)?;
                Ok(())
            };
            barrier.wait();
            let mut lat = Vec::with_capacity(100_000);
            timed_loop(seconds, &mut lat, || {
                decide(n)?;
                n += 1;
                Ok(())
            })?;
            Ok(lat)
        }));
    }
    barrier.wait();
    let start = Instant::now();
    let all = join_latencies(handles, "writer")?;
    let el = start.elapsed();
    let stats = log.stats();
    Ok(LogPoint {
        point: summarize(writers, all, el),
        stats,
    })
}

fn bench_log(as_json: bool, seconds: f64, writers: usize) -> anyhow::Result<()> {
    if !(seconds.is_finite() && seconds > 0.0) {
        bail!("--seconds must be positive");
    }
    if writers == 0 {
        bail!("--writers must be at least 1");
    }
    let root = std::env::temp_dir().join(format!("tpmon-bench-log-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let run = || -> anyhow::Result<(LogPoint, LogPoint)> {
        let baseline = log_point(
            &root.join("off"),
            writers,
            seconds,
            tpmon_txlog::GroupCommit::Off,
        )?;
        let group = log_point(
            &root.join("on"),
            writers,
            seconds,
            tpmon_txlog::GroupCommit::On,
        )?;
        Ok((baseline, group))
    };
    let result = run();
    let _ = std::fs::remove_dir_all(&root);
    let (baseline, group) = result?;
    let ratio = group.point.calls_per_s / baseline.point.calls_per_s.max(f64::MIN_POSITIVE);
    let per_flush = |p: &LogPoint| p.stats.records as f64 / p.stats.flushes.max(1) as f64;
    if as_json {
        let mode = |p: &LogPoint| {
            let mut v = point_json(&p.point);
            v["decisions_per_s"] = json!(p.point.calls_per_s);
            v["fdatasyncs"] = json!(p.stats.flushes);
            v["records"] = json!(p.stats.records);
            v["records_per_fdatasync"] = json!(per_flush(p));
            v["rotations"] = json!(p.stats.rotations);
            v
        };
        let v = json!({
            "writers": writers,
            "seconds_per_mode": seconds,
            "records_per_decision": 2,
            "dir": root.display().to_string(),
            "one_fdatasync_per_record": mode(&baseline),
            "group_commit": mode(&group),
            "ratio_group_to_baseline": ratio,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "tpmon bench log: {writers} writers, each deciding in a loop (put of a ~200-byte entry, then remove: 2 durable records), {seconds} s per mode, real files in {}\n",
        std::env::temp_dir().display()
    );
    println!(
        "{:<40} {:>12} {:>10} {:>10} {:>10} {:>14}",
        "", "decisions/s", "mean us", "p50 us", "p99 us", "records/fsync"
    );
    for (label, p) in [
        ("one fdatasync per record (baseline)", &baseline),
        ("group commit", &group),
    ] {
        println!(
            "{:<40} {:>12.0} {:>10.1} {:>10.1} {:>10.1} {:>14.1}",
            label,
            p.point.calls_per_s,
            p.point.mean_us,
            p.point.p50_us,
            p.point.p99_us,
            per_flush(p)
        );
    }
    println!();
    println!(
        "group commit / one fdatasync per record, {writers} writers: {ratio:.1}x (target >= 10x at 64 writers)"
    );
    Ok(())
}
