//! The `tpmon` command line as an operator uses it: `call` prints replies and exits with
//! the XATMI error number, `status --json` describes the daemon and its instances, and
//! `quickstart` runs end to end.

mod support;

use std::collections::HashSet;

use serde_json::Value;
use support::{alive, server, tpmon, Config, Domain, Run};

fn domain(tag: &str) -> Domain {
    let cfg = Config::new()
        .server("s", &["min_instances = 2", "shutdown_timeout_s = 2"])
        .services("s", &["ECHO", "FAIL", "SLEEP"])
        .service("STRONLY", "s", &["buffer_types = [\"STRING\"]"]);
    Domain::boot(tag, &cfg)
}

/// `tpmon call -c CLIENT_CONFIG ARGS...`
fn call(dom: &Domain, args: &[&str]) -> Run {
    let cfg = dom.client_config.display().to_string();
    let mut all = vec!["call", "-c", cfg.as_str()];
    all.extend_from_slice(args);
    tpmon(all)
}

fn json(run: &Run) -> Value {
    serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {run:?}"))
}

#[test]
fn call_prints_the_reply_and_exits_zero() {
    let dom = domain("callok");
    for relay in [&[][..], &["--relay"][..]] {
        let mut args = vec!["ECHO", "--string", "hi"];
        args.extend_from_slice(relay);
        let run = call(&dom, &args);
        assert!(run.ok(), "{relay:?}: {run:?}");
        assert_eq!(run.stdout, "hi\n", "{relay:?}");
        assert_eq!(run.stderr, "", "{relay:?}");
    }
}

#[test]
fn call_of_a_failing_service_exits_with_tpesvcfail() {
    let dom = domain("callfail");
    let run = call(&dom, &["FAIL", "--string", "x"]);
    assert_eq!(run.code, Some(11), "{run:?}");
    assert!(run.stderr.contains("TPESVCFAIL"), "{}", run.stderr);
    assert!(
        run.stderr.contains("42"),
        "the urcode is shown: {}",
        run.stderr
    );
    assert_eq!(run.stdout, "x\n", "TPFAIL's reply data is printed");
}

#[test]
fn call_exit_codes_are_xatmi_error_numbers() {
    let dom = domain("callcodes");
    let run = call(&dom, &["NOSUCHSVC", "--string", "x"]);
    assert_eq!(run.code, Some(6), "TPENOENT: {run:?}");
    assert!(run.stderr.contains("TPENOENT"), "{}", run.stderr);
    let run = call(&dom, &["STRONLY", "--octet-hex", "00"]);
    assert_eq!(run.code, Some(17), "TPEITYPE: {run:?}");
    let run = call(&dom, &["SLEEP", "--string", "1000", "--timeout", "0.2"]);
    assert_eq!(run.code, Some(13), "TPETIME: {run:?}");
    assert!(run.stderr.contains("TPETIME"), "{}", run.stderr);
    let run = call(
        &dom,
        &["SLEEP", "--string", "1000", "--timeout", "0.2", "--relay"],
    );
    assert_eq!(run.code, Some(13), "TPETIME on the relay: {run:?}");
    let run = call(&dom, &["ECHO", "--octet-hex", "0g"]);
    assert_eq!(run.code, Some(1), "a usage error: {run:?}");
    assert!(run.stderr.contains("--octet-hex"), "{}", run.stderr);
}

#[test]
fn call_round_trips_hex_buffers() {
    let dom = domain("callhex");
    let run = call(&dom, &["ECHO", "--octet-hex", "0a0b"]);
    assert!(run.ok(), "{run:?}");
    assert_eq!(run.stdout, "0a0b\n");
    let run = call(&dom, &["ECHO", "--carray-hex", "00ff10", "--relay"]);
    assert!(run.ok(), "{run:?}");
    assert_eq!(run.stdout, "00ff10\n");
}

#[test]
fn call_json_output_parses() {
    let dom = domain("calljson");
    let run = call(&dom, &["ECHO", "--octet-hex", "0a0b", "--json"]);
    assert!(run.ok(), "{run:?}");
    let v = json(&run);
    assert_eq!(v["ok"], true);
    assert_eq!(v["kind"], Value::Null);
    assert_eq!(v["type"], "X_OCTET");
    assert_eq!(v["data"], "0a0b");
    assert_eq!(v["urcode"], 0);

    let run = call(&dom, &["FAIL", "--string", "why", "--json"]);
    assert_eq!(run.code, Some(11), "{run:?}");
    let v = json(&run);
    assert_eq!(v["ok"], false);
    assert_eq!(v["kind"], "TPESVCFAIL");
    assert_eq!(v["urcode"], 42);
    assert_eq!(v["type"], "STRING");
    assert_eq!(v["data"], "why");
}

#[test]
fn status_json_describes_the_daemon_and_every_instance() {
    let dom = domain("status");
    let cfg = dom.config.display().to_string();
    let run_dir = dom.run_dir.display().to_string();
    let run = tpmon(["status", "-c", &cfg, "--run-dir", &run_dir, "--json"]);
    assert!(run.ok(), "{run:?}");
    let v = json(&run);
    assert_eq!(v["domain"], "it");
    let pid = v["daemon"]["pid"].as_u64().expect("daemon.pid") as u32;
    assert_eq!(pid, dom.daemon_pid);
    assert!(alive(pid));
    assert_eq!(v["daemon"]["client_address"], dom.addr.as_str());
    assert_eq!(v["daemon"]["run_dir"], run_dir.as_str());
    let srv = server(&v, "s");
    let instances = srv["instances"].as_array().expect("instances");
    assert_eq!(instances.len(), 2);
    let pids: HashSet<u32> = instances
        .iter()
        .map(|i| i["pid"].as_u64().expect("each instance has a pid") as u32)
        .collect();
    assert_eq!(pids.len(), 2, "distinct pids");
    for p in &pids {
        assert!(alive(*p), "instance {p} runs");
        assert_ne!(*p, pid);
    }
    let names: Vec<&str> = v["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ECHO", "FAIL", "SLEEP", "STRONLY"]);

    // The human-readable form, with the run directory taken from the file.
    let client_cfg = dom.client_config.display().to_string();
    let run = tpmon(["status", "-c", &client_cfg]);
    assert!(run.ok(), "{run:?}");
    assert!(
        run.stdout.contains(&format!("daemon pid {pid}")),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains(&format!("clients at {}", dom.addr)),
        "{}",
        run.stdout
    );
    for p in &pids {
        assert!(
            run.stdout.contains(&format!("{p}(running)")),
            "{}",
            run.stdout
        );
    }
}

#[test]
fn quickstart_runs_clean() {
    let run = tpmon(["quickstart"]);
    assert!(run.ok(), "{run:?}");
    assert!(run.stdout.contains("0 failed"), "{}", run.stdout);
    assert!(
        !run.stdout
            .lines()
            .any(|l| l.trim_start().starts_with("FAIL")),
        "no check failed: {}",
        run.stdout
    );
}

#[test]
fn call_sends_field_buffers_named_by_the_field_table() {
    let fld = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/quickstart/quickstart.fld"
    );
    let cfg = Config::new()
        .domain(&format!("field_tables = [{}]", support::toml_string(fld)))
        .server("s", &["shutdown_timeout_s = 2"])
        .services("s", &["ECHO"]);
    let dom = Domain::boot("cli-field", &cfg);
    let run = call(
        &dom,
        &[
            "ECHO",
            "--field",
            "NAME=alice",
            "--field",
            "AMOUNT=250",
            "--field",
            "AMOUNT=7",
            "--field",
            "RATE=0.5",
        ],
    );
    assert!(run.ok(), "{run:?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    // Printed in key order (type, then number), occurrences in order.
    assert_eq!(
        lines,
        ["AMOUNT\t250", "AMOUNT\t7", "RATE\t0.5", "NAME\talice"],
        "{run:?}"
    );

    let run = call(&dom, &["ECHO", "--field", "NOSUCH=1"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("no field named NOSUCH"), "{run:?}");
    let run = call(&dom, &["ECHO", "--field", "AMOUNT=lots"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("AMOUNT=lots"), "{run:?}");
}

/// `tpmon boot` in the foreground, stopped by SIGTERM the way a service manager stops
/// it: it exits 0 after every instance ran tpsvrdone.
#[test]
fn foreground_boot_stops_cleanly_on_sigterm() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    let dir = support::TempDir::new("foreground");
    let marker = dir.path.join("done.txt");
    let cfg = Config::new()
        .server(
            "s",
            &[
                "min_instances = 2",
                "shutdown_timeout_s = 5",
                &format!(
                    "args = [\"--done-marker\", {}]",
                    support::toml_string(&marker.display().to_string())
                ),
            ],
        )
        .services("s", &["ECHO"]);
    let config = dir.path.join("domain.toml");
    std::fs::write(&config, cfg.render()).expect("config");
    let run_dir = dir.path.join("run");
    let mut child = Command::new(support::TPMON)
        .args(["boot", "--listen", "127.0.0.1:0", "-c"])
        .arg(&config)
        .arg("--run-dir")
        .arg(&run_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tpmon boot");
    let status_ok = || {
        tpmon([
            "status".as_ref(),
            "--json".as_ref(),
            "-c".as_ref(),
            config.as_os_str(),
            "--run-dir".as_ref(),
            run_dir.as_os_str(),
        ])
    };
    let st = support::wait_for(
        "the foreground daemon answers",
        Duration::from_secs(15),
        || {
            let run = status_ok();
            run.ok().then(|| json(&run))
        },
    );
    let pids = support::serving_pids(&st, "s");
    assert_eq!(pids.len(), 2, "{st}");
    // SAFETY: kill(2) has no memory-safety preconditions.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let code = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    assert!(code.success(), "exit {code:?}: {err}");
    assert!(err.contains("SIGTERM"), "{err}");
    let done: HashSet<u32> = std::fs::read_to_string(&marker)
        .expect("tpsvrdone markers")
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    assert_eq!(
        done,
        pids.iter().copied().collect::<HashSet<u32>>(),
        "every instance ran tpsvrdone"
    );
    assert!(pids.iter().all(|p| !alive(*p)));
    assert!(!status_ok().ok(), "no daemon answers any more");
}
