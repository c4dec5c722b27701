//! `tpmon quickstart`: the main job. Boots the example domain in a temporary directory
//! on a free port, runs a sample workload through the client library, prints what
//! happened and shuts the domain down.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use tpmon_client::{Buffer, Client, ClientOptions, ErrorKind, Flags};
use tpmon_daemon::admin_request;
use tpmon_proto::AdminRequest;

/// The example domain, compiled in so the quickstart runs from anywhere.
pub const QUICKSTART_TOML: &str = include_str!("../../../examples/quickstart/domain.toml");
/// Its field table, written beside it.
pub const QUICKSTART_FLD: &str = include_str!("../../../examples/quickstart/quickstart.fld");

/// Arguments of `tpmon quickstart`.
#[derive(Args)]
pub struct QuickstartArgs {
    /// Keep the temporary directory (configuration, run directory, log) afterwards.
    #[arg(long)]
    keep: bool,
}

/// The money part: global transactions over two embedded sites, a rollback, a
/// checkpoint, a crash and a restart that recovers the state.
fn bank(dom: &mut TempDomain, r: &mut Report) -> anyhow::Result<()> {
    use tpmon_buffer::{FieldBuffer, FieldTable, FieldValue};
    println!("\nglobal transactions over two embedded sites (site1, site2):\n");
    let table = FieldTable::parse(QUICKSTART_FLD, "quickstart.fld")?;
    let key = |n: &str| table.key_of(n).context("quickstart.fld lacks a field");
    let (from_k, to_k, amount_k, total_k) =
        (key("FROM")?, key("TO")?, key("AMOUNT")?, key("TOTAL")?);
    let fields = |pairs: &[(tpmon_buffer::FieldKey, i64)]| -> anyhow::Result<Buffer> {
        let mut f = FieldBuffer::new();
        for (k, v) in pairs {
            f.add(*k, FieldValue::Long(*v))?;
        }
        Ok(Buffer::Field(f))
    };
    let long_of = |b: &Option<Buffer>| match b {
        Some(Buffer::Field(f)) => f.get_long(total_k, 0).ok(),
        _ => None,
    };
    let connect = |dom: &TempDomain| Client::connect(&ClientOptions::new(dom.addr.clone()));
    let total = |c: &mut Client| -> anyhow::Result<i64> {
        let rep = c.call("TOTAL", &fields(&[])?, Flags::NONE)?;
        long_of(&rep.buffer).context("TOTAL answered no TOTAL")
    };
    let balance = |c: &mut Client, service: &str, account: i64| -> anyhow::Result<i64> {
        let rep = c.call(service, &fields(&[(from_k, account)])?, Flags::NONE)?;
        long_of(&rep.buffer).context("no balance")
    };
    const START_TOTAL: i64 = 2 * 100 * 1000;
    let mut c = connect(dom)?;
    // Commit returns once every branch committed (not just once the decision is
    // durable), so that the balances read next already show it.
    c.tx_set_commit_return(tpmon_client::CommitReturn::Completed);
    let t0 = total(&mut c)?;
    r.check(
        "TOTAL of both sites at first boot",
        t0 == START_TOTAL,
        format!("-> {t0} (100 accounts x 1000 on each site)"),
    );

    // Transfers: account i on site 1 pays i to account i on site 2.
    let mut expect1 = std::collections::BTreeMap::new();
    let mut expect2 = std::collections::BTreeMap::new();
    let transfer = |c: &mut Client, from: i64, to: i64, amount: i64| -> anyhow::Result<()> {
        c.tx_begin()?;
        let called = c.call(
            "TRANSFER",
            &fields(&[(from_k, from), (to_k, to), (amount_k, amount)])?,
            Flags::NONE,
        );
        match called {
            Ok(_) => {
                c.tx_commit()?;
                Ok(())
            }
            Err(e) => {
                let _ = c.tx_rollback();
                Err(e.into())
            }
        }
    };
    let mut ok = 0;
    let t = Instant::now();
    for i in 1..=20i64 {
        if transfer(&mut c, i, 21 - i, 10 * i).is_ok() {
            ok += 1;
            *expect1.entry(i).or_insert(1000) -= 10 * i;
            *expect2.entry(21 - i).or_insert(1000) += 10 * i;
        }
    }
    r.check(
        "20 TRANSFERs, each one global transaction",
        ok == 20,
        format!(
            "-> {ok} committed in {:?} (2PC over site1 and site2)",
            t.elapsed()
        ),
    );

    // A participant fails: DEBIT1 refuses to overdraw, which dooms the transaction.
    c.tx_begin()?;
    let refused = c.call(
        "TRANSFER",
        &fields(&[(from_k, 7), (to_k, 7), (amount_k, 5000)])?,
        Flags::NONE,
    );
    let outcome = c.tx_commit();
    let rolled_back =
        refused.is_err() && matches!(outcome, Err(tpmon_client::TxError::RolledBack(_)));
    r.check(
        "TRANSFER of 5000 from account 7 (holds 930)",
        rolled_back,
        format!(
            "-> {}; commit: {}",
            refused.err().map(|e| e.to_string()).unwrap_or_default(),
            match &outcome {
                Ok(_) => "committed?!".to_string(),
                Err(e) => e.to_string(),
            }
        ),
    );
    let b7 = balance(&mut c, "BALANCE1", 7)?;
    let b14 = balance(&mut c, "BALANCE2", 7)?;
    r.check(
        "nothing of it stayed",
        b7 == expect1[&7] && b14 == expect2[&7],
        format!("-> site1 #7 = {b7}, site2 #7 = {b14}"),
    );

    // A checkpoint of each site, then more work that only the log holds.
    for site in ["site1", "site2"] {
        let text = admin_request(
            &dom.run_dir,
            AdminRequest::RmCheckpoint { site: site.into() },
            Duration::from_secs(60),
        )?;
        r.check(&format!("checkpoint of {site}"), true, format!("-> {text}"));
    }
    let mut more = 0;
    for i in 21..=30i64 {
        if transfer(&mut c, i, i, 25).is_ok() {
            more += 1;
            *expect1.entry(i).or_insert(1000) -= 25;
            *expect2.entry(i).or_insert(1000) += 25;
        }
    }
    r.check(
        "10 more TRANSFERs after the checkpoint",
        more == 10,
        format!("-> {more} committed (in the operation log only)"),
    );
    drop(c);

    // Crash: kill -9 the daemon (which hosts the sites) and every server, then boot
    // again on the same directory.
    let pids = dom.pids()?;
    let t = Instant::now();
    dom.kill_all(&pids)?;
    dom.reboot()?;
    r.check(
        "kill -9 of the daemon and all servers, then boot again",
        true,
        format!(
            "-> {} processes killed; up again in {:?}",
            pids.len(),
            t.elapsed()
        ),
    );
    let mut c = connect(dom)?;
    let t1 = total(&mut c)?;
    r.check(
        "TOTAL after the restart (invariant)",
        t1 == START_TOTAL,
        format!("-> {t1}, expected {START_TOTAL}"),
    );
    let mut same = true;
    let mut shown = Vec::new();
    for (a, want) in &expect1 {
        let got = balance(&mut c, "BALANCE1", *a)?;
        same &= got == *want;
        if shown.len() < 4 {
            shown.push(format!("site1 #{a} = {got}"));
        }
    }
    for (a, want) in &expect2 {
        let got = balance(&mut c, "BALANCE2", *a)?;
        same &= got == *want;
        if shown.len() < 8 {
            shown.push(format!("site2 #{a} = {got}"));
        }
    }
    r.check(
        &format!(
            "{} balances recovered from checkpoint + log",
            expect1.len() + expect2.len()
        ),
        same,
        format!("-> {} ...", shown.join(", ")),
    );
    drop(c);
    println!("\nthe sites on disk (tpmon rm inspect):");
    for (name, dir) in [
        ("site1", dom.run_dir.join("rm/site1")),
        ("site2", dom.run_dir.join("rm/site2")),
    ] {
        match tpmon_rm::inspect::inspect(&dir) {
            Ok(i) => println!(
                "  {name}: LCPN {}, checkpoints {:?}, log {} bytes: UL {} DL {} CL {} aborted {}",
                i.lcpn,
                i.checkpoints.iter().map(|c| c.n).collect::<Vec<_>>(),
                i.log_bytes,
                i.undecided,
                i.decided_later,
                i.compensation,
                i.aborted
            ),
            Err(e) => println!("  {name}: {e}"),
        }
    }
    Ok(())
}

/// A domain booted by this process in a directory of its own; shut down on drop.
pub struct TempDomain {
    /// The directory.
    pub dir: PathBuf,
    /// The run directory.
    pub run_dir: PathBuf,
    /// The client address.
    pub addr: String,
    keep: bool,
    up: bool,
}

impl TempDomain {
    /// Writes `toml` to a fresh directory and boots it detached on a free port.
    pub fn boot(name: &str, toml: &str, keep: bool) -> anyhow::Result<TempDomain> {
        TempDomain::boot_with(name, toml, keep, &[])
    }

    /// [`TempDomain::boot`] with extra files written next to the configuration.
    pub fn boot_with(
        name: &str,
        toml: &str,
        keep: bool,
        files: &[(&str, &str)],
    ) -> anyhow::Result<TempDomain> {
        let dir = std::env::temp_dir().join(format!("tpmon-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let config = dir.join("domain.toml");
        std::fs::write(&config, toml)?;
        std::fs::write(dir.join("quickstart.fld"), QUICKSTART_FLD)?;
        for (file, text) in files {
            std::fs::write(dir.join(file), text)?;
        }
        let run_dir = dir.join("run");
        let exe = std::env::current_exe()?;
        let out = Command::new(exe)
            .args(["boot", "--detach", "--listen", "127.0.0.1:0", "-c"])
            .arg(&config)
            .arg("--run-dir")
            .arg(&run_dir)
            .output()
            .context("running tpmon boot")?;
        if !out.status.success() {
            bail!(
                "boot failed: {}{}",
                String::from_utf8_lossy(&out.stderr).trim(),
                read_log_tail(&run_dir.join("tpmon.log"))
            );
        }
        let status = admin_request(&run_dir, AdminRequest::Status, Duration::from_secs(10))?;
        let v: serde_json::Value = serde_json::from_str(&status)?;
        let addr = v["daemon"]["client_address"]
            .as_str()
            .context("status without a client address")?
            .to_string();
        Ok(TempDomain {
            dir,
            run_dir,
            addr,
            keep,
            up: true,
        })
    }

    /// Boots the domain again in its directory (after it went down or was killed).
    pub fn reboot(&mut self) -> anyhow::Result<()> {
        let config = self.dir.join("domain.toml");
        let out = Command::new(std::env::current_exe()?)
            .args(["boot", "--detach", "--listen", "127.0.0.1:0", "-c"])
            .arg(&config)
            .arg("--run-dir")
            .arg(&self.run_dir)
            .output()
            .context("running tpmon boot")?;
        if !out.status.success() {
            bail!(
                "boot failed: {}{}",
                String::from_utf8_lossy(&out.stderr).trim(),
                read_log_tail(&self.run_dir.join("tpmon.log"))
            );
        }
        let v = self.status()?;
        self.addr = v["daemon"]["client_address"]
            .as_str()
            .context("status without a client address")?
            .to_string();
        self.up = true;
        Ok(())
    }

    /// The daemon's pid and every server instance's.
    pub fn pids(&self) -> anyhow::Result<Vec<i32>> {
        let v = self.status()?;
        let mut pids = vec![v["daemon"]["pid"].as_i64().context("no daemon pid")? as i32];
        for s in v["servers"].as_array().into_iter().flatten() {
            for i in s["instances"].as_array().into_iter().flatten() {
                if let Some(p) = i["pid"].as_i64() {
                    pids.push(p as i32);
                }
            }
        }
        Ok(pids)
    }

    /// Kills these processes with SIGKILL and waits until they are gone.
    pub fn kill_all(&mut self, pids: &[i32]) -> anyhow::Result<()> {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        for p in pids {
            let _ = kill(Pid::from_raw(*p), Signal::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for p in pids {
            // Gone, or a zombie waiting for its parent (not ours to reap).
            while std::fs::read_to_string(format!("/proc/{p}/stat"))
                .is_ok_and(|s| !s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
            {
                if Instant::now() > deadline {
                    bail!("process {p} survived SIGKILL for 20 s");
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        self.up = false;
        Ok(())
    }

    /// The status report as JSON.
    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        let s = admin_request(&self.run_dir, AdminRequest::Status, Duration::from_secs(10))?;
        Ok(serde_json::from_str(&s)?)
    }

    /// Shuts the domain down.
    pub fn down(&mut self) -> anyhow::Result<()> {
        if self.up {
            self.up = false;
            admin_request(&self.run_dir, AdminRequest::Down, Duration::from_secs(60))?;
        }
        Ok(())
    }
}

impl Drop for TempDomain {
    fn drop(&mut self) {
        let _ = self.down();
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn read_log_tail(p: &Path) -> String {
    match std::fs::read_to_string(p) {
        Ok(s) => {
            let lines: Vec<&str> = s.lines().rev().take(10).collect();
            format!(
                "\nlast lines of {}:\n{}",
                p.display(),
                lines.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        }
        Err(_) => String::new(),
    }
}

struct Report {
    passed: usize,
    failed: usize,
}

impl Report {
    /// Checks that a call succeeded with STRING `want`.
    fn expect_text(
        &mut self,
        what: &str,
        res: Result<tpmon_client::CallReply, tpmon_client::CallError>,
        want: &str,
    ) {
        let got = res
            .as_ref()
            .map(|x| text(&x.buffer))
            .unwrap_or_else(|e| e.to_string());
        self.check(what, got == want, format!("-> {got:?}"));
    }

    fn check(&mut self, what: &str, ok: bool, detail: String) {
        if ok {
            self.passed += 1;
            println!("  ok    {what:<44} {detail}");
        } else {
            self.failed += 1;
            println!("  FAIL  {what:<44} {detail}");
        }
    }
}

fn text(b: &Option<Buffer>) -> String {
    b.as_ref()
        .and_then(|b| b.as_str())
        .unwrap_or_default()
        .to_string()
}

/// Fails with a clear message when the example server was not built.
pub fn require_example_server() -> anyhow::Result<()> {
    let dir = crate::exe_dir().context("locating the tpmon binary")?;
    let server = dir.join("tpmon-quickstart-server");
    if !server.exists() {
        bail!(
            "{} is missing: build the workspace first (cargo build --release)",
            server.display()
        );
    }
    Ok(())
}

pub fn run(a: QuickstartArgs) -> anyhow::Result<()> {
    require_example_server()?;
    println!("tpmon quickstart: booting examples/quickstart/domain.toml in a temporary directory");
    let mut dom = TempDomain::boot("quickstart", QUICKSTART_TOML, a.keep)?;
    println!(
        "  domain up at {} (run directory {})\n",
        dom.addr,
        dom.run_dir.display()
    );
    let mut r = Report {
        passed: 0,
        failed: 0,
    };
    let opts = ClientOptions::new(dom.addr.clone());
    let mut c = Client::connect(&opts).context("connecting to the quickstart domain")?;
    println!(
        "client {} connected ({} path)\n",
        c.client_id().0,
        if c.is_local() {
            "local fast"
        } else {
            "relayed"
        }
    );

    let t = Instant::now();
    let res = c.call("TOUPPER", &Buffer::string("hello, tpmon"), Flags::NONE);
    let got = res
        .as_ref()
        .map(|x| text(&x.buffer))
        .unwrap_or_else(|e| e.to_string());
    r.check(
        "tpcall TOUPPER \"hello, tpmon\"",
        got == "HELLO, TPMON",
        format!("-> {got:?} in {:?}", t.elapsed()),
    );

    let octets = Buffer::x_octet(vec![0xde, 0xad, 0xbe, 0xef]);
    let res = c.call("ECHO", &octets, Flags::NONE);
    r.check(
        "tpcall ECHO X_OCTET de ad be ef",
        res.as_ref()
            .map(|x| x.buffer.as_ref() == Some(&octets))
            .unwrap_or(false),
        "-> the same four bytes".into(),
    );

    let words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"];
    let mut cds = Vec::new();
    for w in words {
        cds.push(c.acall("TOUPPER", &Buffer::string(w), Flags::NONE)?);
    }
    let mut answers = Vec::new();
    for _ in 0..cds.len() {
        match c.getrply(None, Flags::GETANY) {
            Ok((_, rep)) => answers.push(text(&rep.buffer)),
            Err(e) => answers.push(e.to_string()),
        }
    }
    answers.sort();
    let mut want: Vec<String> = words.iter().map(|w| w.to_uppercase()).collect();
    want.sort();
    r.check(
        "6 x tpacall TOUPPER, tpgetrply(TPGETANY)",
        answers == want,
        format!("-> {}", answers.join(" ")),
    );

    let table = tpmon_buffer::FieldTable::parse(QUICKSTART_FLD, "quickstart.fld")?;
    let mut fb = tpmon_buffer::FieldBuffer::new();
    let key = |n: &str| table.key_of(n).context("quickstart.fld lacks a field");
    fb.add(key("NAME")?, tpmon_buffer::FieldValue::string("alice"))?;
    fb.add(key("AMOUNT")?, tpmon_buffer::FieldValue::Long(250))?;
    fb.add(key("AMOUNT")?, tpmon_buffer::FieldValue::Long(7))?;
    let field = Buffer::Field(fb);
    let res = c.call("ECHO", &field, Flags::NONE);
    r.check(
        "tpcall ECHO FIELD NAME=alice AMOUNT=250,7",
        res.as_ref()
            .map(|x| x.buffer.as_ref() == Some(&field))
            .unwrap_or(false),
        "-> the same fields and occurrences".into(),
    );

    r.expect_text(
        "GREET forwards to TOUPPER (tpforward)",
        c.call("GREET", &Buffer::string("operator"), Flags::NONE),
        "HELLO, OPERATOR",
    );

    r.expect_text(
        "SHOUT calls TOUPPER (nested tpcall)",
        c.call("SHOUT", &Buffer::string("nested"), Flags::NONE),
        "NESTED!",
    );

    match c.call("REFUSE", &Buffer::string("please"), Flags::NONE) {
        Err(e) if e.kind == ErrorKind::SvcFail && e.urcode == 42 => r.check(
            "REFUSE fails (TPFAIL)",
            true,
            format!(
                "-> {} urcode {} data {:?}",
                e.kind,
                e.urcode,
                text(&e.reply)
            ),
        ),
        other => r.check("REFUSE fails (TPFAIL)", false, format!("-> {other:?}")),
    }

    let saved = c.blocking_timeout();
    c.set_blocking_timeout(Duration::from_millis(300));
    let t = Instant::now();
    match c.call("SLOW", &Buffer::string("1200"), Flags::NONE) {
        Err(e) if e.kind == ErrorKind::Time => r.check(
            "SLOW 1200 ms with a 300 ms blocking timeout",
            true,
            format!("-> {} after {:?}", e.kind, t.elapsed()),
        ),
        other => r.check(
            "SLOW 1200 ms with a 300 ms blocking timeout",
            false,
            format!("-> {other:?}"),
        ),
    }
    c.set_blocking_timeout(saved);
    // The late SLOW reply arrives while this call waits; it must be discarded.
    std::thread::sleep(Duration::from_millis(1000));
    r.expect_text(
        "the late reply is discarded",
        c.call("TOUPPER", &Buffer::string("after the timeout"), Flags::NONE),
        "AFTER THE TIMEOUT",
    );

    match c.call("NOSUCH", &Buffer::string("x"), Flags::NONE) {
        Err(e) if e.kind == ErrorKind::NoEnt => {
            r.check("tpcall NOSUCH", true, format!("-> {}", e.kind))
        }
        other => r.check("tpcall NOSUCH", false, format!("-> {other:?}")),
    }

    let n = 2000;
    let t = Instant::now();
    let mut ok = 0;
    for i in 0..n {
        if c.call("ECHO", &Buffer::string(format!("ping {i}")), Flags::NONE)
            .is_ok()
        {
            ok += 1;
        }
    }
    let el = t.elapsed();
    r.check(
        &format!("{n} sequential tpcalls of ECHO"),
        ok == n,
        format!(
            "-> {:.0} calls/s, {:.1} us each",
            n as f64 / el.as_secs_f64(),
            el.as_secs_f64() * 1e6 / n as f64
        ),
    );

    let mut remote = Client::connect(&ClientOptions {
        force_relay: true,
        ..opts.clone()
    })?;
    r.expect_text(
        "a remote-style client relayed by the daemon",
        remote.call("TOUPPER", &Buffer::string("relayed"), Flags::NONE),
        "RELAYED",
    );

    drop(remote);
    drop(c);
    bank(&mut dom, &mut r)?;

    println!("\nstatus of the domain:\n");
    print!("{}", crate::status::render(&dom.status()?));
    dom.down()?;
    println!(
        "\ndomain shut down cleanly; {} checks passed, {} failed",
        r.passed, r.failed
    );
    if a.keep {
        println!("kept {}", dom.dir.display());
    }
    if r.failed > 0 {
        bail!("{} quickstart checks failed", r.failed);
    }
    Ok(())
}
