//! The embedded resource manager end to end, on the quickstart domain (two embedded
//! sites, TRANSFER from site 1 to site 2): global transactions, the checkpoint numbers
//! riding on 2PC with no message added, kill -9 at named steps (checkpoint writes,
//! the commit decision, phase 2) with restart recovery, operator rollback-recovery
//! (Algorithms 3 and 4) and the automatic one when a site finds its memory corrupt.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use support::{Config, Domain};
use tpmon_buffer::{FieldBuffer, FieldKey, FieldTable, FieldValue};
use tpmon_client::{Buffer, Client, Flags};

const LONG: Duration = Duration::from_secs(30);
const START_TOTAL: i64 = 2 * 100 * 1000;
const FLD: &str = include_str!("../../../examples/quickstart/quickstart.fld");

/// The quickstart domain with absolute paths, checkpoints every `delta_ms`, and
/// failpoints for the daemon given by the caller's environment.
fn config(delta_ms: u64) -> Config {
    let root = env!("CARGO_MANIFEST_DIR");
    let text = include_str!("../../../examples/quickstart/domain.toml")
        .replace(
            "executable = \"tpmon-quickstart-server\"",
            &format!(
                "executable = {}",
                support::toml_string(env!("CARGO_BIN_EXE_tpmon-quickstart-server"))
            ),
        )
        .replace(
            "field_tables = [\"quickstart.fld\"]",
            &format!(
                "field_tables = [{}]",
                support::toml_string(&format!("{root}/../../examples/quickstart/quickstart.fld"))
            ),
        )
        .replace(
            "checkpoint_interval_ms = 5000",
            &format!("checkpoint_interval_ms = {delta_ms}"),
        )
        .replace("[domain.tx]\n", "[domain.tx]\nrecovery_interval_ms = 100\n");
    Config::raw(&text)
}

struct Keys {
    from: FieldKey,
    to: FieldKey,
    amount: FieldKey,
    total: FieldKey,
}

fn keys() -> Keys {
    let t = FieldTable::parse(FLD, "quickstart.fld").expect("field table");
    let k = |n: &str| t.key_of(n).expect("field");
    Keys {
        from: k("FROM"),
        to: k("TO"),
        amount: k("AMOUNT"),
        total: k("TOTAL"),
    }
}

fn fields(pairs: &[(FieldKey, i64)]) -> Buffer {
    let mut f = FieldBuffer::new();
    for (k, v) in pairs {
        f.add(*k, FieldValue::Long(*v)).expect("add");
    }
    Buffer::Field(f)
}

fn long(b: &Option<Buffer>, k: FieldKey) -> i64 {
    match b {
        Some(Buffer::Field(f)) => f.get_long(k, 0).expect("long"),
        other => panic!("not a FIELD buffer: {other:?}"),
    }
}

fn total(c: &mut Client, k: &Keys) -> i64 {
    let r = c.call("TOTAL", &fields(&[]), Flags::NONE).expect("TOTAL");
    long(&r.buffer, k.total)
}

fn balance(c: &mut Client, k: &Keys, service: &str, account: i64) -> i64 {
    let r = c
        .call(service, &fields(&[(k.from, account)]), Flags::NONE)
        .expect(service);
    long(&r.buffer, k.total)
}

/// One TRANSFER in a global transaction; true when it committed.
fn transfer(c: &mut Client, k: &Keys, from: i64, to: i64, amount: i64) -> bool {
    c.tx_begin().expect("tx_begin");
    let req = fields(&[(k.from, from), (k.to, to), (k.amount, amount)]);
    match c.call("TRANSFER", &req, Flags::NONE) {
        Ok(_) => c.tx_commit().is_ok(),
        Err(_) => {
            let _ = c.tx_rollback();
            false
        }
    }
}

fn site<'a>(status: &'a Value, group: &str) -> &'a Value {
    status["sites"]
        .as_array()
        .and_then(|v| v.iter().find(|s| s["group"] == group))
        .unwrap_or_else(|| panic!("no site {group} in {status}"))
}

fn n(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("no {key} in {v}"))
}

/// Expected balances after committed transfers.
#[derive(Default)]
struct Book {
    one: BTreeMap<i64, i64>,
    two: BTreeMap<i64, i64>,
}

impl Book {
    fn moved(&mut self, from: i64, to: i64, amount: i64) {
        *self.one.entry(from).or_insert(1000) -= amount;
        *self.two.entry(to).or_insert(1000) += amount;
    }

    /// Checks the total and every balance. Phase 2 may still be running (commit
    /// returns once the decision is durable), so a mismatch is waited out for a while
    /// before it fails.
    fn check(&self, c: &mut Client, k: &Keys) {
        let deadline = std::time::Instant::now() + LONG;
        loop {
            let t = total(c, k);
            let mut wrong = Vec::new();
            for (a, want) in &self.one {
                let got = balance(c, k, "BALANCE1", *a);
                if got != *want {
                    wrong.push(format!("site1 #{a}: {got} != {want}"));
                }
            }
            for (a, want) in &self.two {
                let got = balance(c, k, "BALANCE2", *a);
                if got != *want {
                    wrong.push(format!("site2 #{a}: {got} != {want}"));
                }
            }
            if t == START_TOTAL && wrong.is_empty() {
                return;
            }
            let last = format!("total {t}; {}", wrong.join(", "));
            assert!(
                std::time::Instant::now() < deadline,
                "the books are wrong: {last}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn rm(d: &Domain, args: &[&str]) -> support::Run {
    let mut all = vec!["rm"];
    all.extend_from_slice(args);
    let cfg = d.config.to_str().unwrap_or_default().to_string();
    let run = d.run_dir.to_str().unwrap_or_default().to_string();
    all.extend_from_slice(&["-c", &cfg, "--run-dir", &run]);
    support::tpmon(all)
}

#[test]
fn transfers_carry_checkpoint_numbers_with_no_message_added() {
    let k = keys();
    let cfg = config(40);
    let mut d = Domain::boot("emb-2pc", &cfg);
    let mut c = d.client();
    assert_eq!(total(&mut c, &k), START_TOTAL);
    let before = d.status();
    let mut book = Book::default();
    let transfers = 40u64;
    for i in 1..=transfers as i64 {
        assert!(transfer(&mut c, &k, i, i, i), "transfer {i}");
        book.moved(i, i, i);
        if i % 10 == 0 {
            // Let some checkpoints happen between transactions.
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let after = d.status();
    for g in ["site1", "site2"] {
        let (b, a) = (site(&before, g), site(&after, g));
        let delta = |key: &str| n(a, key) - n(b, key);
        // Per transaction and site: one branch begun, a get and a put, one prepare
        // (the vote carries LCPN+1), one commit (carrying the GCPN) - whatever number
        // of checkpoints ran meanwhile, and the checkpoints sent nothing.
        assert_eq!(delta("begins"), transfers, "{g}: {a}");
        assert_eq!(delta("operations"), 2 * transfers, "{g}: {a}");
        assert_eq!(delta("prepares"), transfers, "{g}: {a}");
        assert_eq!(delta("commits"), transfers, "{g}: {a}");
        assert!(
            delta("checkpoints") >= 2,
            "{g}: checkpoints ran meanwhile: {a}"
        );
        assert_eq!(n(a, "checkpoint_messages"), 0, "{g}");
        assert_eq!(n(a, "late_records"), 0, "{g}");
    }
    book.check(&mut c, &k);
    // inspect: LCPN and at most two checkpoints per site.
    let run = rm(&d, &["inspect", "--json"]);
    assert!(run.ok(), "{run:?}");
    let v: Value = serde_json::from_str(&run.stdout).expect("json");
    for s in v.as_array().expect("array") {
        let cps = s["state"]["checkpoints"].as_array().expect("checkpoints");
        assert!(!cps.is_empty() && cps.len() <= 2, "{s}");
        assert!(s["state"]["lcpn"].as_u64().expect("lcpn") >= 2, "{s}");
    }
    let text = rm(&d, &["inspect", "--site", "site2"]);
    assert!(text.ok() && text.stdout.contains("LCPN"), "{text:?}");
    drop(c);
    d.down();
}

#[test]
fn kill_at_checkpoint_and_commit_steps_then_restart_recovers() {
    let k = keys();
    let cfg = config(60_000);
    for step in [
        "rm.before_checkpoint_write",
        "rm.after_checkpoint_write",
        "tm.after_decision",
        "tm.phase2",
    ] {
        let mut d = Domain::boot(&format!("emb-kill-{step}"), &cfg);
        let mut c = d.client();
        let mut book = Book::default();
        for i in 1..=5 {
            assert!(transfer(&mut c, &k, i, i, 7));
            book.moved(i, i, 7);
        }
        drop(c);
        // Reboot with the failpoint armed, then reach it.
        let env = [("TPMON_FAILPOINTS", format!("{step}=kill"))];
        let env: Vec<(&str, &str)> = env.iter().map(|(a, b)| (*a, b.as_str())).collect();
        d.crash_and_reboot(&cfg, &env);
        let mut c = d.client();
        let pid = d.daemon_pid;
        let mut doubt = None;
        if step.starts_with("rm.") {
            let _ = rm(&d, &["checkpoint", "--site", "site1"]);
        } else {
            // The daemon dies after the decision is durable: the transfer is
            // committed, whatever the client heard.
            doubt = Some(transfer(&mut c, &k, 50, 50, 11));
        }
        support::wait_until("the daemon died at the failpoint", LONG, || {
            !support::alive(pid)
        });
        drop(c);
        d.crash_and_reboot(&cfg, &[]);
        let mut c = d.client();
        if doubt.is_some() {
            book.moved(50, 50, 11);
            support::wait_until("recovery commits the in-doubt transfer", LONG, || {
                balance(&mut c, &k, "BALANCE2", 50) == 1011
            });
        }
        book.check(&mut c, &k);
        let st = d.status();
        for g in ["site1", "site2"] {
            assert_eq!(n(site(&st, g), "prepared_branches"), 0, "{step}: {g}");
        }
        // Work goes on after recovery, and a checkpoint can be taken.
        assert!(transfer(&mut c, &k, 60, 60, 1));
        book.moved(60, 60, 1);
        let run = rm(&d, &["checkpoint", "--site", "site1"]);
        assert!(run.ok(), "{step}: {run:?}");
        book.check(&mut c, &k);
        drop(c);
        d.down();
    }
}

#[test]
fn operator_rollback_recovery_sends_one_redo_per_related_site() {
    let k = keys();
    let cfg = config(60_000);
    let mut d = Domain::boot("emb-redo", &cfg);
    let mut c = d.client();
    let mut book = Book::default();
    for i in 1..=10 {
        assert!(transfer(&mut c, &k, i, i, 3));
        book.moved(i, i, 3);
    }
    // site2's records come from transactions that originate at site1 (their first
    // branch): Algorithm 3 at site2 sends one redo to site1, which acts on it once.
    let run = rm(&d, &["recover", "--site", "site2"]);
    assert!(run.ok(), "{run:?}");
    assert!(run.stdout.contains("restored checkpoint"), "{run:?}");
    d.wait_status("site1 acted on the redo request", LONG, |st| {
        n(site(st, "site1"), "redo_acted") == 1
    });
    let st = d.status();
    assert_eq!(n(site(&st, "site2"), "redo_sent"), 1, "{st}");
    assert_eq!(n(site(&st, "site1"), "redo_sent"), 0, "{st}");
    book.check(&mut c, &k);
    // A second recovery at the same checkpoint number sends nothing new.
    let run = rm(&d, &["recover", "--site", "site2"]);
    assert!(run.ok(), "{run:?}");
    let st = d.status();
    assert_eq!(n(site(&st, "site2"), "redo_sent"), 1, "{st}");
    assert_eq!(n(site(&st, "site1"), "redo_acted"), 1, "{st}");
    let run = rm(&d, &["recover", "--site", "nosuch"]);
    assert!(
        !run.ok() && run.stderr.contains("no embedded site"),
        "{run:?}"
    );
    book.check(&mut c, &k);
    drop(c);
    d.down();
}

#[test]
fn a_site_that_finds_its_memory_corrupt_recovers_by_itself() {
    let k = keys();
    let cfg = config(100);
    let mut d = Domain::boot_env(
        "emb-corrupt",
        &cfg,
        &[("TPMON_FAILPOINTS", "rm.corrupt_memory=fire")],
    );
    let mut c = d.client();
    let mut book = Book::default();
    // A rollback-recovery dooms the branches still active at the site, so a transfer
    // that overlaps it rolls back: only committed ones count.
    for i in 1..=5 {
        if transfer(&mut c, &k, i, i, 2) {
            book.moved(i, i, 2);
        }
    }
    d.wait_status("the audit found the corruption and recovered", LONG, |st| {
        let sites = st["sites"].as_array().cloned().unwrap_or_default();
        sites
            .iter()
            .any(|s| n(s, "corruptions") == 1 && n(s, "rollback_recoveries") >= 1)
    });
    book.check(&mut c, &k);
    // A redo request the recovery sent may still be acted on (dooming what is
    // active there): the next transfers go through once it is done.
    support::wait_until("a transfer commits after the recovery", LONG, || {
        transfer(&mut c, &k, 9, 9, 1)
    });
    book.moved(9, 9, 1);
    book.check(&mut c, &k);
    drop(c);
    d.down();
}

#[test]
fn a_server_killed_inside_its_branch_leaves_nothing_behind() {
    let k = keys();
    for step in ["server.before_prepare", "server.after_prepare"] {
        // bank2's first instance to reach the step dies there; transactions time out
        // after 2 s, so recovery may presume abort for a branch prepared behind the
        // TM's back soon after.
        let text = config(60_000)
            .render()
            .replace("timeout_s = 30", "timeout_s = 2")
            .replace(
                "name = \"bank2\"",
                &format!("name = \"bank2\"\nenv = {{ TPMON_FAILPOINTS = \"{step}=kill\" }}"),
            );
        let cfg = Config::raw(&text);
        let mut d = Domain::boot(&format!("emb-srv-{step}"), &cfg);
        let mut c = d.client();
        let mut book = Book::default();
        let mut failed = 0;
        for i in 1..=6 {
            if transfer(&mut c, &k, i, i, 5) {
                book.moved(i, i, 5);
            } else {
                failed += 1;
            }
        }
        assert!(failed >= 1, "{step}: no transfer met the dying server");
        // Nothing stays active or prepared at either site: the broken session rolled
        // back the active branch, and recovery rolled back the one prepared after its
        // server died (presumed abort, once the deadline passed).
        d.wait_status("both sites hold no branch", LONG, |st| {
            ["site1", "site2"].iter().all(|g| {
                n(site(st, g), "prepared_branches") == 0 && n(site(st, g), "active_branches") == 0
            })
        });
        book.check(&mut c, &k);
        drop(c);
        d.down();
    }
}
