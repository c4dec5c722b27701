//! Supervision of server instances: how many run, what a caller sees when its instance
//! dies, crashes, panics, hangs or asks for a restart, when the daemon gives up on a
//! server, how a clean shutdown runs tpsvrdone, and how the request queue is bounded
//! and served by more instances under load.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{
    alive, all_pids, kill9, restarts, s, server, serving_pids, text, wait_for, wait_until, Config,
    Domain,
};
use tpmon_client::{Client, ErrorKind, Flags};

const AWAIT: Duration = Duration::from_secs(15);

/// The test server offering every fault-injection service.
fn faulty(extra: &[&str]) -> Config {
    let mut lines = vec!["shutdown_timeout_s = 2"];
    lines.extend_from_slice(extra);
    Config::new()
        .server("s", &lines)
        .services("s", &["ECHO", "PID", "CRASH", "PANIC", "EXIT", "SLEEP"])
        .service("HANG", "s", &["timeout_s = 1"])
}

fn pid_of(c: &mut Client) -> u32 {
    let r = c.call("PID", &s(""), Flags::NONE).expect("PID");
    text(&r).parse().expect("PID returns a number")
}

fn slot<'a>(st: &'a Value, srv: &str, k: u64) -> &'a Value {
    server(st, srv)["instances"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["slot"] == k))
        .unwrap_or_else(|| panic!("no slot {k} of {srv}: {st}"))
}

#[test]
fn min_instances_start_distinct_live_processes() {
    let dom = Domain::boot("min2", &faulty(&["min_instances = 2"]));
    let st = dom.status();
    let srv = server(&st, "s");
    assert_eq!(srv["state"], "running");
    assert_eq!(srv["running"], 2);
    let pids = serving_pids(&st, "s");
    assert_eq!(pids.len(), 2, "two instances: {st}");
    assert_ne!(pids[0], pids[1], "two different processes");
    for p in &pids {
        assert!(alive(*p), "instance {p} is a live process");
    }
    assert_eq!(restarts(&st, "s"), 0);
}

#[test]
fn a_killed_instance_is_replaced_by_a_new_process() {
    let dom = Domain::boot("kill9", &faulty(&["min_instances = 2"]));
    let before = serving_pids(&dom.status(), "s");
    assert_eq!(before.len(), 2);
    let victim = before[0];
    kill9(victim);
    let st = dom.wait_status("the killed instance is replaced", AWAIT, |st| {
        let now = serving_pids(st, "s");
        now.len() == 2 && !now.contains(&victim) && restarts(st, "s") == 1
    });
    let now = serving_pids(&st, "s");
    assert!(
        now.contains(&before[1]),
        "the other instance was left alone: {now:?}"
    );
    let k = server(&st, "s")["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["restarts"] == 1)
        .expect("the restarted slot")
        .clone();
    assert_eq!(k["last_exit"], "was killed by signal 9", "{k}");
    assert!(!alive(victim));
    // The replacement serves.
    let mut c = dom.client();
    assert_eq!(text(&c.call("ECHO", &s("ok"), Flags::NONE).unwrap()), "ok");
}

/// The daemon answers for an instance that died mid-request: at once, not when the
/// caller's blocking timeout expires.
#[test]
fn crash_mid_request_gives_tpesvcerr_promptly_and_restarts_on_both_paths() {
    let dom = Domain::boot("crash", &faulty(&[]));
    for (n, (path, mut c)) in dom.both_clients().into_iter().enumerate() {
        let before = pid_of(&mut c);
        c.set_blocking_timeout(Duration::from_secs(30));
        let t = Instant::now();
        let e = c.call("CRASH", &s(""), Flags::NONE).unwrap_err();
        let took = t.elapsed();
        assert_eq!(e.kind, ErrorKind::SvcErr, "{path}: {e}");
        assert!(
            took < Duration::from_secs(5),
            "{path}: answered after {took:?}"
        );
        assert!(
            e.detail.contains("CRASH"),
            "{path}: detail names the service: {e}"
        );
        assert!(
            e.detail.contains(&before.to_string()),
            "{path}: detail names the pid: {e}"
        );
        let want = n as u64 + 1;
        dom.wait_status(
            &format!("{path}: the crashed instance is restarted"),
            AWAIT,
            |st| restarts(st, "s") == want && serving_pids(st, "s").len() == 1,
        );
        let after = pid_of(&mut c);
        assert_ne!(after, before, "{path}: a new process serves");
        assert!(!alive(before), "{path}");
    }
}

#[test]
fn panic_gives_tpesvcerr_and_restarts() {
    let dom = Domain::boot("panic", &faulty(&[]));
    let mut c = dom.client();
    let before = pid_of(&mut c);
    let e = c.call("PANIC", &s(""), Flags::NONE).unwrap_err();
    assert_eq!(e.kind, ErrorKind::SvcErr, "{e}");
    assert!(
        e.detail.contains("asked to panic"),
        "detail has the panic message: {e}"
    );
    dom.wait_status("the panicked instance is restarted", AWAIT, |st| {
        restarts(st, "s") == 1 && serving_pids(st, "s").len() == 1
    });
    assert_ne!(pid_of(&mut c), before);
}

#[test]
fn tpexit_fails_the_call_with_its_urcode_and_restarts_the_instance() {
    let dom = Domain::boot("exit", &faulty(&[]));
    for (path, mut c) in dom.both_clients() {
        let e = c.call("EXIT", &s(""), Flags::NONE).unwrap_err();
        assert_eq!(e.kind, ErrorKind::SvcFail, "{path}: {e}");
        assert_eq!(e.urcode, 7, "{path}");
        let exited: u32 = e
            .reply
            .as_ref()
            .and_then(|b| b.as_str())
            .and_then(|t| t.parse().ok())
            .expect("EXIT replies with its pid");
        // The request waits in the queue for the replacement instance.
        let next = pid_of(&mut c);
        assert_ne!(next, exited, "{path}: PID is served by a new process");
    }
    let st = dom.status();
    assert_eq!(restarts(&st, "s"), 2);
}

#[test]
fn a_hung_service_is_killed_at_its_time_limit_on_both_paths() {
    let dom = Domain::boot("hang", &faulty(&[]));
    for (n, (path, mut c)) in dom.both_clients().into_iter().enumerate() {
        let before = pid_of(&mut c);
        c.set_blocking_timeout(Duration::from_secs(30));
        let t = Instant::now();
        let e = c.call("HANG", &s(""), Flags::NONE).unwrap_err();
        let took = t.elapsed();
        assert_eq!(e.kind, ErrorKind::SvcErr, "{path}: {e}");
        assert!(
            e.detail.contains("time limit"),
            "{path}: detail mentions the time limit: {e}"
        );
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(5),
            "{path}: killed after its 1 s limit, answered after {took:?}"
        );
        let want = n as u64 + 1;
        dom.wait_status(
            &format!("{path}: the hung instance is replaced"),
            AWAIT,
            |st| restarts(st, "s") == want && serving_pids(st, "s").len() == 1,
        );
        assert_ne!(pid_of(&mut c), before, "{path}");
        assert!(!alive(before), "{path}");
    }
}

#[test]
fn a_missing_executable_fails_its_server_only() {
    let missing = "/nonexistent/tpmon-no-such-server";
    let cfg = Config::new()
        .server("good", &[])
        .service("ECHO", "good", &[])
        .server_exe(
            "ghost",
            &format!("executable = \"{missing}\""),
            &["restart_max = 2", "restart_backoff_ms = 10"],
        )
        .service("GHOSTSVC", "ghost", &[]);
    let dom = Domain::boot("missing", &cfg);
    let st = dom.wait_status("the ghost server is marked failed", AWAIT, |st| {
        server(st, "ghost")["state"] == "failed"
    });
    let failure = server(&st, "ghost")["failure"]
        .as_str()
        .expect("a failure reason")
        .to_string();
    assert!(
        failure.contains(missing),
        "the reason names the file: {failure}"
    );
    assert_eq!(server(&st, "good")["state"], "running");
    for (path, mut c) in dom.both_clients() {
        let t = Instant::now();
        let e = c.call("GHOSTSVC", &s("x"), Flags::NONE).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NoEnt, "{path}: {e}");
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "{path}: answered promptly"
        );
        assert_eq!(
            text(&c.call("ECHO", &s("fine"), Flags::NONE).unwrap()),
            "fine"
        );
    }
}

fn failing_start(tag: &str, arg: &str) -> (Domain, String) {
    let cfg = Config::new()
        .server("good", &[])
        .service("ECHO", "good", &[])
        .server(
            "bad",
            &[
                &format!("args = [\"{arg}\"]"),
                "restart_max = 2",
                "restart_backoff_ms = 10",
            ],
        )
        .service("PID", "bad", &[]);
    let dom = Domain::boot(tag, &cfg);
    let st = dom.wait_status("the bad server is marked failed", AWAIT, |st| {
        server(st, "bad")["state"] == "failed"
    });
    let bad = server(&st, "bad");
    assert_eq!(
        bad["restarts"], 2,
        "restart_max restarts, then failed: {bad}"
    );
    assert_eq!(bad["running"], 0);
    let failure = bad["failure"]
        .as_str()
        .expect("a failure reason")
        .to_string();
    assert!(failure.contains("more than 2 restarts"), "{failure}");
    assert_eq!(server(&st, "good")["state"], "running");
    let mut c = dom.client();
    let e = c.call("PID", &s("x"), Flags::NONE).unwrap_err();
    assert_eq!(e.kind, ErrorKind::NoEnt, "{e}");
    assert_eq!(
        text(&c.call("ECHO", &s("fine"), Flags::NONE).unwrap()),
        "fine"
    );
    (dom, failure)
}

#[test]
fn a_server_exiting_at_start_is_failed_after_restart_max() {
    let (_dom, failure) = failing_start("exitstart", "--exit-at-start");
    assert!(failure.contains("exited with status 3"), "{failure}");
}

#[test]
fn a_server_failing_tpsvrinit_is_failed_after_restart_max() {
    let (_dom, failure) = failing_start("failinit", "--fail-init");
    assert!(
        failure.contains("tpsvrinit"),
        "the failure names tpsvrinit: {failure}"
    );
    assert!(
        failure.contains("asked to fail by --fail-init"),
        "{failure}"
    );
}

/// Crashes the only instance of a `restart = "never"` server and waits until its slot
/// is stopped for good.
fn crash_unrestartable(tag: &str) -> (Domain, Client) {
    let dom = Domain::boot(tag, &faulty(&["restart = \"never\""]));
    let mut c = dom.client();
    let victim = pid_of(&mut c);
    let e = c.call("CRASH", &s(""), Flags::NONE).unwrap_err();
    assert_eq!(e.kind, ErrorKind::SvcErr, "{e}");
    let st = dom.wait_status("the crashed instance is stopped", AWAIT, |st| {
        slot(st, "s", 0)["state"] == "stopped"
    });
    assert_eq!(restarts(&st, "s"), 0);
    assert_eq!(server(&st, "s")["running"], 0);
    assert_eq!(server(&st, "s")["state"], "down");
    assert!(slot(&st, "s", 0)["pid"].is_null());
    assert_eq!(slot(&st, "s", 0)["last_exit"], "was killed by signal 6");
    assert!(!alive(victim));
    (dom, c)
}

#[test]
fn restart_never_leaves_a_crashed_instance_down() {
    let (dom, _c) = crash_unrestartable("never");
    assert!(serving_pids(&dom.status(), "s").is_empty());
}

#[test]

fn restart_never_instance_is_not_revived_by_a_waiting_request() {
    let (dom, mut c) = crash_unrestartable("neverrevive");
    c.set_blocking_timeout(Duration::from_millis(500));
    let e = c.call("ECHO", &s("anyone?"), Flags::NONE).unwrap_err();
    assert!(
        matches!(e.kind, ErrorKind::NoEnt | ErrorKind::Time),
        "nobody serves ECHO any more: {e}"
    );
    let st = dom.status();
    assert_eq!(restarts(&st, "s"), 0);
    assert!(
        serving_pids(&st, "s").is_empty(),
        "no instance was started: {st}"
    );
}

#[test]
fn down_runs_tpsvrdone_in_every_instance_and_leaves_none_alive() {
    let tmp = support::TempDir::new("donemark");
    let marker = tmp.path.join("done.txt");
    let cfg = Config::new()
        .server(
            "s",
            &[
                "min_instances = 3",
                &format!(
                    "args = [\"--done-marker\", {}]",
                    support::toml_string(&marker.display().to_string())
                ),
            ],
        )
        .services("s", &["ECHO"]);
    let mut dom = Domain::boot("down", &cfg);
    let pids: HashSet<u32> = serving_pids(&dom.status(), "s").into_iter().collect();
    assert_eq!(pids.len(), 3);
    let daemon = dom.daemon_pid;
    let run = dom.down();
    assert!(run.ok(), "tpmon down: {run:?}");
    assert!(run.stdout.contains("down"), "{run:?}");
    let done: Vec<u32> = std::fs::read_to_string(&marker)
        .expect("tpsvrdone wrote the marker")
        .lines()
        .map(|l| l.parse().expect("a pid per line"))
        .collect();
    assert_eq!(done.len(), 3, "tpsvrdone ran once per instance: {done:?}");
    assert_eq!(done.into_iter().collect::<HashSet<_>>(), pids);
    for p in &pids {
        assert!(!alive(*p), "instance {p} is gone after down");
    }
    wait_until("the daemon exits", AWAIT, || !alive(daemon));
    assert!(dom.try_status().is_none(), "no daemon answers after down");
    let st = support::tpmon(["status", "-c", &dom.config.display().to_string()]);
    assert!(!st.ok());
}

#[test]
fn a_full_queue_refuses_noblock_calls_with_tpeblock() {
    let cfg = Config::new()
        .server(
            "s",
            &[
                "max_instances = 1",
                "queue_max = 2",
                "shutdown_timeout_s = 2",
            ],
        )
        .services("s", &["ECHO", "SLEEP"]);
    let dom = Domain::boot("queue", &cfg);
    for (path, mut c) in dom.both_clients() {
        let sleeper = c.acall("SLEEP", &s("1000"), Flags::NONE).unwrap();
        dom.wait_status(&format!("{path}: the only instance is busy"), AWAIT, |st| {
            server(st, "s")["instances"][0]["state"] == "busy" && server(st, "s")["queued"] == 0
        });
        let q1 = c.acall("ECHO", &s("q1"), Flags::NOBLOCK).unwrap();
        let q2 = c.acall("ECHO", &s("q2"), Flags::NOBLOCK).unwrap();
        // The third does not fit: refused at once on the fast path, answered with
        // TPEBLOCK by the daemon on the relay.
        let third = c.acall("ECHO", &s("q3"), Flags::NOBLOCK);
        let e = match third {
            Err(e) => e,
            Ok(cd) => c.getrply(Some(cd), Flags::NONE).unwrap_err(),
        };
        assert_eq!(e.kind, ErrorKind::Block, "{path}: {e}");
        assert_eq!(
            text(&c.getrply(Some(sleeper), Flags::NONE).unwrap().1),
            "slept 1000"
        );
        assert_eq!(
            text(&c.getrply(Some(q1), Flags::NONE).unwrap().1),
            "q1",
            "{path}"
        );
        assert_eq!(
            text(&c.getrply(Some(q2), Flags::NONE).unwrap().1),
            "q2",
            "{path}"
        );
        // With room again, NOBLOCK requests are sent.
        let cd = c.acall("ECHO", &s("room"), Flags::NOBLOCK).unwrap();
        let (_, r) = c.getrply(Some(cd), Flags::NONE).unwrap();
        assert_eq!(text(&r), "room", "{path}");
    }
}

#[test]
fn waiting_requests_bring_up_more_instances() {
    let cfg = Config::new()
        .server(
            "s",
            &[
                "min_instances = 1",
                "max_instances = 3",
                "shutdown_timeout_s = 2",
            ],
        )
        .services("s", &["SLEEP", "PID"]);
    let dom = Domain::boot("grow", &cfg);
    assert_eq!(serving_pids(&dom.status(), "s").len(), 1);
    let mut c = dom.client();
    let t = Instant::now();
    let cds: Vec<_> = (0..6)
        .map(|_| c.acall("SLEEP", &s("700"), Flags::NONE).unwrap())
        .collect();
    let st = dom.wait_status("more than one instance runs", AWAIT, |st| {
        serving_pids(st, "s").len() > 1
    });
    assert!(
        server(&st, "s")["running"].as_u64().unwrap() <= 3,
        "never above max_instances"
    );
    for cd in cds {
        let (_, r) = c.getrply(Some(cd), Flags::NONE).unwrap();
        assert_eq!(text(&r), "slept 700");
    }
    let took = t.elapsed();
    assert!(
        took < Duration::from_millis(6 * 700),
        "work was spread over several instances: 6 x 700 ms took {took:?}"
    );
    let served: u64 = wait_for("the served counters add up", AWAIT, || {
        let st = dom.status();
        let per: Vec<u64> = server(&st, "s")["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["served"].as_u64().unwrap())
            .collect();
        (per.iter().sum::<u64>() == 6).then(|| per.iter().filter(|n| **n > 0).count() as u64)
    });
    assert!(served > 1, "more than one instance served requests");
}

/// A caller that died between counting its request and sending it leaves the queue
/// count high; the daemon notices that an idle instance never takes it and resets it,
/// and calls keep working meanwhile.
#[test]
fn a_leftover_queue_count_is_reconciled() {
    let cfg = Config::new()
        .server("s", &["shutdown_timeout_s = 2"])
        .services("s", &["ECHO"]);
    let dom = Domain::boot("leftover-count", &cfg);
    let table = tpmon_ipc::StatusTable::open(&dom.run_dir.join("status.shm"))
        .expect("map the status table");
    // Three phantom requests: reserved, never sent.
    for _ in 0..3 {
        assert!(table.queue_reserve(0, 100));
    }
    assert_eq!(table.queued(0), 3);
    let mut c = dom.client();
    assert_eq!(
        text(
            &c.call("ECHO", &s("still served"), Flags::NONE)
                .expect("call")
        ),
        "still served"
    );
    dom.wait_status("the phantom count is gone", AWAIT, |st| {
        st["servers"][0]["queued"].as_u64() == Some(0)
    });
    assert_eq!(
        text(&c.call("ECHO", &s("after"), Flags::NONE).expect("call")),
        "after"
    );
}

/// kill -9 of the daemon takes its instances with it (they would hold a queue nobody
/// routes to), `tpmon down` then says no daemon runs, and the same configuration and
/// run directory boot again despite the stale pid file and sockets.
#[test]
fn instances_die_with_a_killed_daemon_and_the_domain_boots_again() {
    let cfg = Config::new()
        .server("s", &["min_instances = 2", "shutdown_timeout_s = 2"])
        .services("s", &["ECHO"]);
    let mut dom = Domain::boot("daemon-kill", &cfg);
    let pids = serving_pids(&dom.status(), "s");
    assert_eq!(pids.len(), 2, "{pids:?}");
    kill9(dom.daemon_pid);
    wait_until("the daemon and its instances are gone", AWAIT, || {
        !alive(dom.daemon_pid) && pids.iter().all(|p| !alive(*p))
    });
    let run = dom.down();
    assert!(!run.ok(), "{run:?}");
    assert!(run.stderr.contains("no daemon is running"), "{run:?}");

    let run = support::boot_detached(&dom.config, &dom.run_dir);
    assert!(run.ok(), "second boot: {run:?}\n{}", dom.log());
    let st = dom.status();
    let addr = st["daemon"]["client_address"]
        .as_str()
        .expect("address")
        .to_string();
    let new_pids = serving_pids(&st, "s");
    assert_eq!(new_pids.len(), 2);
    assert!(new_pids.iter().all(|p| !pids.contains(p)));
    let mut c = Client::connect(&tpmon_client::ClientOptions::new(addr)).expect("connect");
    assert_eq!(
        text(&c.call("ECHO", &s("again"), Flags::NONE).expect("call")),
        "again"
    );
    drop(c);
    assert!(dom.down().ok(), "down after the second boot");
    assert!(new_pids.iter().all(|p| !alive(*p)));
}

/// A local client waiting for a reply whose node daemon dies (kill -9; its instances
/// die with it) is not left waiting until its blocking timeout: it notices that the
/// daemon closed its session and answers TPESYSTEM, the outcome unknown.
#[test]
fn a_local_caller_learns_at_once_that_its_daemon_died() {
    let mut dom = Domain::boot("daemon-dies", &faulty(&[]));
    let mut c = dom.client();
    c.set_blocking_timeout(Duration::from_secs(120));
    let pids = all_pids(&dom.status());
    let e = std::thread::scope(|scope| {
        let call = scope.spawn(|| c.call("SLEEP", &s("60000"), Flags::NONE));
        dom.wait_status("SLEEP is being served", AWAIT, |st| {
            st["servers"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|s| s["instances"].as_array().into_iter().flatten())
                .any(|i| i["state"] == "busy")
        });
        dom.kill_all(&pids);
        call.join().expect("the calling thread")
    })
    .expect_err("the daemon died during the call");
    assert_eq!(e.kind, ErrorKind::System, "{e}");
    assert!(e.detail.contains("daemon went away"), "{e}");
    dom.reboot(&faulty(&[]), &[]);
}
