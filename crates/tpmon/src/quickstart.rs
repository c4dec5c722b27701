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

    println!("\nstatus of the domain:\n");
    print!("{}", crate::status::render(&dom.status()?));
    drop(c);
    drop(remote);
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
