//! The bank example's client (`tpmon-bank-client`): concurrent transfers, each its own
//! global transaction (tx_begin, TRANSFER, tx_commit), then the invariant check: the
//! total over every database is unchanged.
//!
//! ```text
//! tpmon-bank-client -c examples/bank/domain.toml --clients 8 --seconds 5
//! ```
//!
//! Exit status: 0 when the total holds, 2 when it does not, 1 on other errors.
//! `--journal FILE` appends the TXID of every transfer whose commit was acknowledged,
//! one per line, for crash tests that check each of them is durable.

use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tpmon_buffer::{Buffer, FieldBuffer, FieldTable, FieldValue};
use tpmon_client::{Client, ClientOptions, Flags, TxError};

const BANK_FLD: &str = include_str!("bank.fld");
const OPENING_BALANCE: i64 = 1000;

struct Args {
    config: String,
    run_dir: Option<String>,
    clients: usize,
    transfers: Option<u64>,
    seconds: f64,
    accounts: i64,
    max_amount: i64,
    seed: u64,
    todb: i64,
    journal: Option<String>,
    databases: i64,
}

fn usage() -> ! {
    eprintln!(
        "usage: tpmon-bank-client -c FILE [--run-dir DIR] [--clients N] [--transfers N | --seconds S]\n\
         \x20      [--accounts N] [--max-amount A] [--seed S] [--todb 2|3] [--journal FILE]"
    );
    std::process::exit(1)
}

fn parse_args() -> Args {
    let mut a = Args {
        config: String::new(),
        run_dir: None,
        clients: 4,
        transfers: None,
        seconds: 3.0,
        accounts: std::env::var("TPMON_BANK_ACCOUNTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100),
        max_amount: 50,
        seed: 1,
        todb: 2,
        journal: None,
        databases: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "-c" | "--config" => a.config = val(),
            "--run-dir" => a.run_dir = Some(val()),
            "--clients" => a.clients = val().parse().unwrap_or_else(|_| usage()),
            "--transfers" => a.transfers = Some(val().parse().unwrap_or_else(|_| usage())),
            "--seconds" => a.seconds = val().parse().unwrap_or_else(|_| usage()),
            "--accounts" => a.accounts = val().parse().unwrap_or_else(|_| usage()),
            "--max-amount" => a.max_amount = val().parse().unwrap_or_else(|_| usage()),
            "--seed" => a.seed = val().parse().unwrap_or_else(|_| usage()),
            "--todb" => a.todb = val().parse().unwrap_or_else(|_| usage()),
            "--journal" => a.journal = Some(val()),
            _ => usage(),
        }
    }
    if a.config.is_empty() || a.clients == 0 {
        usage();
    }
    a
}

/// A small deterministic generator (xorshift64*), one per client thread.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

#[derive(Default)]
struct Counts {
    committed: AtomicU64,
    refused: AtomicU64,
    errors: AtomicU64,
}

fn connect(a: &Args) -> Result<Client, String> {
    let cfg = tpmon_config::load_for(std::path::Path::new(&a.config), tpmon_config::Reader::Tool)
        .map_err(|e| e.to_string())?;
    let run_dir = a
        .run_dir
        .clone()
        .map(std::path::PathBuf::from)
        .unwrap_or(cfg.domain.run_dir.clone());
    // A running daemon may listen elsewhere than configured (booted with --listen).
    let addr = tpmon_daemon::admin_request(
        &run_dir,
        tpmon_proto::AdminRequest::Status,
        Duration::from_secs(10),
    )
    .ok()
    .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
    .and_then(|v| v["daemon"]["client_address"].as_str().map(str::to_string))
    .unwrap_or_else(|| cfg.domain.listen.to_string());
    Client::connect(&ClientOptions {
        addr: Some(addr),
        domain_password: cfg
            .domain
            .password
            .as_ref()
            .map(|p| p.expose().to_string())
            .unwrap_or_default(),
        client_name: "bank".into(),
        ..ClientOptions::default()
    })
    .map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let mut a = parse_args();
    let table = match FieldTable::parse(BANK_FLD, "bank.fld") {
        Ok(t) => t,
        Err(e) => {
            eprintln!("bank.fld: {e}");
            return ExitCode::from(1);
        }
    };
    let key = |n: &str| table.key_of(n).expect("bank.fld defines the field");
    let (from_k, to_k, amount_k, txid_k, todb_k, total_k, count_k) = (
        key("FROM"),
        key("TO"),
        key("AMOUNT"),
        key("TXID"),
        key("TODB"),
        key("TOTAL"),
        key("COUNT"),
    );
    let mut probe = match connect(&a) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot connect: {e}");
            return ExitCode::from(1);
        }
    };
    a.databases = ["SUM1", "SUM2", "SUM3"]
        .iter()
        .filter(|s| probe.route(s).is_ok())
        .count() as i64;
    let total_of = |c: &mut Client| -> Result<(i64, i64), String> {
        let r = c
            .call("TOTAL", &Buffer::string(""), Flags::NONE)
            .map_err(|e| format!("TOTAL: {e}"))?;
        let b = r
            .buffer
            .as_ref()
            .and_then(Buffer::as_field)
            .ok_or("TOTAL returned no FIELD buffer")?;
        Ok((
            b.get_long(total_k, 0).map_err(|e| e.to_string())?,
            b.get_long(count_k, 0).map_err(|e| e.to_string())?,
        ))
    };
    let (before, journal_before) = match total_of(&mut probe) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    let a = Arc::new(a);
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<i64>::new()));
    let started = Instant::now();
    let base = (u64::from(std::process::id()) << 40) ^ (a.seed << 52);
    let mut threads = Vec::new();
    for t in 0..a.clients {
        let (a, counts, stop, acked) = (a.clone(), counts.clone(), stop.clone(), acked.clone());
        threads.push(std::thread::spawn(move || -> Result<(), String> {
            let mut c = connect(&a)?;
            // The teller checks the total at the end: wait for every branch to commit.
            c.tx_set_commit_return(tpmon_client::CommitReturn::Completed);
            let mut rng =
                Rng(a.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (t as u64 + 1) << 17 | 1);
            let mut n = 0u64;
            loop {
                if stop.load(Ordering::Relaxed) || a.transfers.is_some_and(|m| n >= m) {
                    return Ok(());
                }
                n += 1;
                let txid = ((base | ((t as u64) << 32) | n) & (i64::MAX as u64)) as i64;
                let mut fb = FieldBuffer::new();
                let add = |fb: &mut FieldBuffer, k, v| fb.add(k, FieldValue::Long(v));
                add(&mut fb, from_k, 1 + rng.below(a.accounts as u64) as i64)
                    .and_then(|()| add(&mut fb, to_k, 1 + rng.below(a.accounts as u64) as i64))
                    .and_then(|()| {
                        add(&mut fb, amount_k, 1 + rng.below(a.max_amount as u64) as i64)
                    })
                    .and_then(|()| add(&mut fb, txid_k, txid))
                    .and_then(|()| add(&mut fb, todb_k, a.todb))
                    .map_err(|e| e.to_string())?;
                if let Err(e) = c.tx_begin() {
                    return Err(format!("tx_begin: {e}"));
                }
                match c.call("TRANSFER", &Buffer::Field(fb), Flags::NONE) {
                    Ok(_) => match c.tx_commit() {
                        Ok(_) => {
                            counts.committed.fetch_add(1, Ordering::Relaxed);
                            if let Ok(mut v) = acked.lock() {
                                v.push(txid);
                            }
                        }
                        Err(TxError::RolledBack(_)) => {
                            counts.refused.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            counts.errors.fetch_add(1, Ordering::Relaxed);
                            eprintln!("commit of transfer {txid}: {e}");
                            // The session may be gone (the daemon died): reconnect.
                            if let Ok(fresh) = connect(&a) {
                                c = fresh;
                            } else {
                                std::thread::sleep(Duration::from_millis(100));
                            }
                        }
                    },
                    Err(e) => {
                        if e.kind == tpmon_client::ErrorKind::SvcFail {
                            counts.refused.fetch_add(1, Ordering::Relaxed);
                        } else {
                            counts.errors.fetch_add(1, Ordering::Relaxed);
                            eprintln!("TRANSFER {txid}: {e}");
                        }
                        let _ = c.tx_rollback();
                        if e.kind == tpmon_client::ErrorKind::System
                            || e.kind == tpmon_client::ErrorKind::Os
                        {
                            if let Ok(fresh) = connect(&a) {
                                c = fresh;
                            } else {
                                std::thread::sleep(Duration::from_millis(100));
                            }
                        }
                    }
                }
            }
        }));
    }
    if a.transfers.is_none() {
        std::thread::sleep(Duration::from_secs_f64(a.seconds));
        stop.store(true, Ordering::Relaxed);
    }
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("a client stopped: {e}"),
            Err(_) => eprintln!("a client thread panicked"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let committed = counts.committed.load(Ordering::Relaxed);
    println!(
        "{} clients, {:.1} s: {committed} transfers committed ({:.0}/s), {} rolled back (funds short), {} errors",
        a.clients,
        elapsed,
        committed as f64 / elapsed.max(1e-9),
        counts.refused.load(Ordering::Relaxed),
        counts.errors.load(Ordering::Relaxed)
    );
    if let Some(path) = &a.journal {
        let ids = acked.lock().map(|v| v.clone()).unwrap_or_default();
        let text: String = ids.iter().map(|i| format!("{i}\n")).collect();
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(text.as_bytes()));
        if let Err(e) = written {
            eprintln!("cannot write {path}: {e}");
            return ExitCode::from(1);
        }
    }
    let mut check = match connect(&a) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot connect for the check: {e}");
            return ExitCode::from(1);
        }
    };
    let expected = a.accounts * OPENING_BALANCE * a.databases;
    match total_of(&mut check) {
        Ok((after, journal_after)) => {
            println!(
                "total before {before}, after {after}, expected {expected}; journal rows +{}",
                journal_after - journal_before
            );
            if after == before && after == expected {
                println!("invariant holds: no money was created or lost");
                ExitCode::SUCCESS
            } else {
                println!("INVARIANT VIOLATED");
                ExitCode::from(2)
            }
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}
