//! `tpmon bench rm`: the embedded resource manager (spec 03).
//!
//! * Global transactions over two embedded sites (the quickstart's TRANSFER: a debit
//!   on site 1 and a credit on site 2, two-phase commit), with checkpoints effectively
//!   off and with a checkpoint every `--delta-ms` on each site: transactions/s, p50,
//!   p99, and the interference ratio p99(with) / p99(without) (target <= 1.1).
//! * What the checkpoints cost in messages (0) and what 2PC costs per transaction at
//!   each site, from the sites' own counters.
//! * Storage per site: its two checkpoints and its log, on disk.
//! * Restart recovery time against log size, on a site opened in this process.
//! * For comparison, in the same run, the bank TRANSFER over two PostgreSQL databases.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;
use tpmon_buffer::{Buffer, FieldBuffer, FieldTable, FieldValue};
use tpmon_client::{Client, ClientOptions, Flags};
use tpmon_daemon::admin_request;
use tpmon_proto::AdminRequest;

use crate::bench::Point;
use crate::quickstart::{TempDomain, QUICKSTART_FLD, QUICKSTART_TOML};

fn domain_toml(delta_ms: u64) -> String {
    QUICKSTART_TOML.replace(
        "checkpoint_interval_ms = 5000",
        &format!("checkpoint_interval_ms = {delta_ms}"),
    )
}

fn sites(dom: &TempDomain) -> anyhow::Result<Vec<serde_json::Value>> {
    let s = admin_request(&dom.run_dir, AdminRequest::Status, Duration::from_secs(10))?;
    let v: serde_json::Value = serde_json::from_str(&s)?;
    Ok(v["sites"].as_array().cloned().unwrap_or_default())
}

fn counter(sites: &[serde_json::Value], key: &str) -> u64 {
    sites.iter().filter_map(|s| s[key].as_u64()).sum()
}

struct Run {
    point: Point,
    per_tx: serde_json::Value,
    checkpoints: u64,
    checkpoint_messages: u64,
    storage: Vec<serde_json::Value>,
}

/// TRANSFERs from `clients` threads for `seconds` on a fresh quickstart domain whose
/// sites checkpoint every `delta_ms`.
fn embedded_point(delta_ms: u64, clients: usize, seconds: f64) -> anyhow::Result<Run> {
    let dom = TempDomain::boot(
        &format!("bench-rm-{delta_ms}"),
        &domain_toml(delta_ms),
        false,
    )?;
    let table = FieldTable::parse(QUICKSTART_FLD, "quickstart.fld")?;
    let key = |n: &str| table.key_of(n).context("quickstart.fld lacks a field");
    let (from_k, to_k, amount_k) = (key("FROM")?, key("TO")?, key("AMOUNT")?);
    let before = sites(&dom)?;
    let addr = dom.addr.clone();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = done.clone();
    let point = crate::bench_tx::clients_point(clients, seconds, move |i| {
        let counted = counted.clone();
        let mut c = Client::connect(&ClientOptions::new(addr.clone()))?;
        let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ (i as u64 + 1);
        Ok(Box::new(move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let from = (seed % 100) as i64 + 1;
            let to = ((seed >> 20) % 100) as i64 + 1;
            let mut f = FieldBuffer::new();
            f.add(from_k, FieldValue::Long(from))?;
            f.add(to_k, FieldValue::Long(to))?;
            f.add(amount_k, FieldValue::Long(1))?;
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            c.tx_begin().map_err(|e| anyhow::anyhow!("{e}"))?;
            match c.call("TRANSFER", &Buffer::Field(f), Flags::NONE) {
                Ok(_) => {
                    // A lock-wait timeout or an empty account rolls back: counted as
                    // a transaction all the same (it did the work).
                    let _ = c.tx_commit();
                }
                Err(_) => {
                    let _ = c.tx_rollback();
                }
            }
            Ok(())
        }))
    })?;
    let after = sites(&dom)?;
    // Phase 2 of the last transactions may still be running: wait for it.
    let txs_done = done.load(std::sync::atomic::Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut after = after;
    while counter(&after, "commits") + counter(&after, "rollbacks")
        < counter(&before, "commits") + counter(&before, "rollbacks") + 2 * txs_done
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
        after = sites(&dom)?;
    }
    let delta = |k: &str| counter(&after, k).saturating_sub(counter(&before, k));
    let txs = txs_done.max(1) as f64;
    let per_tx = json!({
        "begins": delta("begins") as f64 / txs,
        "operations": delta("operations") as f64 / txs,
        "prepares": delta("prepares") as f64 / txs,
        "commits": delta("commits") as f64 / txs,
    });
    let mut storage = Vec::new();
    for (name, dir) in [
        ("site1", dom.run_dir.join("rm/site1")),
        ("site2", dom.run_dir.join("rm/site2")),
    ] {
        let i = tpmon_rm::inspect::inspect(&dir).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        let ck: u64 = i.checkpoints.iter().map(|c| c.bytes).sum();
        storage.push(json!({
            "site": name,
            "checkpoints_on_disk": i.checkpoints.len(),
            "checkpoint_bytes": ck,
            "log_bytes": i.log_bytes,
            "total_bytes": ck + i.log_bytes,
        }));
    }
    Ok(Run {
        point,
        per_tx,
        checkpoints: delta("checkpoints"),
        checkpoint_messages: counter(&after, "checkpoint_messages"),
        storage,
    })
}

/// Restart recovery of one site whose log holds `ops` committed operations (in
/// branches of 100), after a checkpoint of `rows` rows.
fn recovery_point(ops: usize) -> anyhow::Result<serde_json::Value> {
    let dir = std::env::temp_dir().join(format!(
        "tpmon-bench-rm-restart-{}-{ops}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = tpmon_rm::SiteConfig {
        site: 1,
        name: "bench".into(),
        dir: dir.clone(),
        checkpoint_interval: Duration::from_secs(3600),
        lock_timeout: Duration::from_secs(5),
        sync: true,
    };
    let err = |e: tpmon_rm::RmError| anyhow::anyhow!("{e}");
    {
        let (site, _) = tpmon_rm::Site::open(cfg.clone()).map_err(err)?;
        for b in 0..ops.div_ceil(100) {
            let xid = format!("bench|{b}");
            site.begin(&xid).map_err(err)?;
            for i in 0..100 {
                let k = format!("{:08}", (b * 100 + i) % 50_000);
                site.put(Some(&xid), "t", k.as_bytes(), &[7u8; 32])
                    .map_err(err)?;
            }
            let (_, cpn) = site.prepare(&xid).map_err(err)?;
            site.commit(&xid, cpn, 1).map_err(err)?;
        }
    }
    let log_bytes: u64 = tpmon_rm::oplog::generations(&dir)
        .map_err(err)?
        .iter()
        .map(|g| std::fs::metadata(dir.join(tpmon_rm::oplog::log_name(*g))).map_or(0, |m| m.len()))
        .sum();
    let t = Instant::now();
    let (_, report) = tpmon_rm::Site::open(cfg).map_err(err)?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(json!({"ops": ops, "redone": report.redone, "log_bytes": log_bytes, "restart_ms": ms}))
}

/// Runs `tpmon bench rm`.
pub fn bench_rm(
    as_json: bool,
    seconds: f64,
    rounds: usize,
    clients: usize,
    delta_ms: u64,
    skip_postgres: bool,
    urls: Option<(String, String)>,
) -> anyhow::Result<()> {
    if !(seconds.is_finite() && seconds > 0.0) {
        bail!("--seconds must be positive");
    }
    crate::quickstart::require_example_server()?;
    if !as_json {
        println!("two embedded sites: tx_begin, TRANSFER (debit site 1, credit site 2), tx_commit; {clients} clients");
        println!("{rounds} rounds, each a fresh domain without checkpoints then one with a checkpoint every {delta_ms} ms per site");
        crate::bench_tx::header("");
    }
    // Rounds alternate the two configurations so that drift in the machine (other
    // load, the disk's state) hits both alike; the figures are the medians.
    let mut offs = Vec::new();
    let mut ons = Vec::new();
    for r in 0..rounds.max(1) {
        let off = embedded_point(86_400_000, clients, seconds)?;
        let on = embedded_point(delta_ms, clients, seconds)?;
        if !as_json {
            crate::bench_tx::row(&format!("round {}: checkpoints off", r + 1), &off.point, "");
            crate::bench_tx::row(
                &format!("round {}: a checkpoint every {delta_ms} ms", r + 1),
                &on.point,
                &format!(
                    "p99 {:.2}x; {} checkpoints",
                    on.point.p99_us / off.point.p99_us.max(1e-9),
                    on.checkpoints
                ),
            );
        }
        offs.push(off);
        ons.push(on);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        v[v.len() / 2]
    };
    let p99_off = median(offs.iter().map(|r| r.point.p99_us).collect());
    let p99_on = median(ons.iter().map(|r| r.point.p99_us).collect());
    let tps_off = median(offs.iter().map(|r| r.point.calls_per_s).collect());
    let tps_on = median(ons.iter().map(|r| r.point.calls_per_s).collect());
    let ratio = p99_on / p99_off.max(1e-9);
    let n_rounds = offs.len();
    let (off, on) = (offs.remove(0), ons.remove(ons.len() - 1));
    if !as_json {
        println!(
            "medians: {tps_off:.0} tx/s, p99 {p99_off:.0} us without checkpoints; {tps_on:.0} tx/s, p99 {p99_on:.0} us with: p99 {ratio:.2}x (target <= 1.1x)"
        );
        println!(
            "messages sent by checkpoints: {} (of {} checkpoints); requests to the sites per transaction (both sites): {} (with checkpoints) vs {} (without)",
            on.checkpoint_messages, on.checkpoints, on.per_tx, off.per_tx
        );
        for s in &on.storage {
            println!(
                "storage {}: {} checkpoints on disk, {} bytes + log {} bytes = {} bytes",
                s["site"],
                s["checkpoints_on_disk"],
                s["checkpoint_bytes"],
                s["log_bytes"],
                s["total_bytes"]
            );
        }
        println!("\nrestart recovery of one site against its log size:");
    }
    let mut restarts = Vec::new();
    for ops in [10_000, 100_000, 400_000] {
        let r = recovery_point(ops)?;
        if !as_json {
            println!(
                "  {:>7} operations, log {:>6.1} MB: restart in {:>7.1} ms",
                ops,
                r["log_bytes"].as_f64().unwrap_or(0.0) / 1e6,
                r["restart_ms"].as_f64().unwrap_or(0.0)
            );
        }
        restarts.push(r);
    }
    let pg = if skip_postgres {
        serde_json::Value::Null
    } else {
        crate::bench_tx::postgres_part(&crate::bench_tx::PgBench {
            seconds,
            concurrency: vec![clients],
            urls,
            as_json,
            log: String::new(),
            instances: None,
            side: crate::bench_tx::Side::Both,
        })?
    };
    if as_json {
        let pj = |p: &Point| json!({"clients": p.clients, "tx_per_s": p.calls_per_s, "mean_us": p.mean_us, "p50_us": p.p50_us, "p99_us": p.p99_us});
        println!(
            "{}",
            json!({
                "embedded": {
                    "rounds": n_rounds,
                    "median_tx_per_s_off": tps_off,
                    "median_tx_per_s_on": tps_on,
                    "median_p99_us_off": p99_off,
                    "median_p99_us_on": p99_on,
                    "first_round_off": pj(&off.point),
                    "last_round_on": pj(&on.point),
                    "delta_ms": delta_ms,
                    "p99_ratio": ratio,
                    "checkpoints": on.checkpoints,
                    "checkpoint_messages": on.checkpoint_messages,
                    "per_tx_with": on.per_tx,
                    "per_tx_without": off.per_tx,
                    "storage": on.storage,
                },
                "restart": restarts,
                "postgres": pg,
            })
        );
    }
    Ok(())
}
