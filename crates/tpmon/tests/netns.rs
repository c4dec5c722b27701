//! Two nodes on two network namespaces joined by a veth pair (issue 5: a real network
//! between the nodes, not loopback). Each daemon is booted with `ip netns exec NS
//! tpmon boot ...` and links to the other over the veth (10.77.0.1 and 10.77.0.2); the
//! test's client joins n1's namespace (setns on the thread that connects). Checked: a
//! remote call, a global transaction with branches on both nodes (fake resource
//! managers), then the veth taken down (`ip link set ... down`): the link is found
//! dead on both sides within the failure-detection time, a call in flight fails with
//! TPESVCERR and new calls get TPENOENT; the veth up again: the links come back and
//! calls reach n2 again.
//!
//! Needs root and `ip netns` (iproute2). Where the machine does not allow it (not
//! root, no `ip`, namespaces refused, as in many containers) the test prints why and
//! passes without running. The namespaces (and the veth pair with them) are deleted
//! by a guard, after the daemons are down, whatever happens.

mod support;

use std::ffi::OsStr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{alive, all_pids, kill9, s, text, toml_string, tpmon, wait_until, TempDir, TPMON};
use tpmon_client::{Client, ClientOptions, ErrorKind, Flags};

const LIMIT: Duration = Duration::from_secs(30);
const SECRET: &str = "the-domain-link-secret";
const NODES: [&str; 2] = ["n1", "n2"];
const ADDRS: [&str; 2] = ["10.77.0.1", "10.77.0.2"];
const LINK_PORT: u16 = 7491;

/// Runs `ip ARGS`; the error is what it printed.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Two namespaces and the veth pair between them; deleted on drop.
struct Netns {
    ns: [String; 2],
    veth: [String; 2],
    made: Vec<String>,
}

impl Netns {
    /// Creates the namespaces and the veth pair, addresses up; `Err` says why the
    /// machine does not allow it (what was made is deleted).
    fn create() -> Result<Netns, String> {
        if unsafe { libc::geteuid() } != 0 {
            return Err("not running as root".into());
        }
        let id = std::process::id();
        let mut n = Netns {
            ns: [format!("tpmon-a-{id}"), format!("tpmon-b-{id}")],
            veth: [format!("tpva{id}"), format!("tpvb{id}")],
            made: Vec::new(),
        };
        for i in 0..2 {
            ip(&["netns", "add", &n.ns[i]])?;
            n.made.push(n.ns[i].clone());
        }
        ip(&[
            "link", "add", &n.veth[0], "type", "veth", "peer", "name", &n.veth[1],
        ])?;
        for (i, addr) in ADDRS.iter().enumerate() {
            let (ns, veth) = (n.ns[i].clone(), n.veth[i].clone());
            ip(&["link", "set", &veth, "netns", &ns])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                &veth,
            ])?;
            ip(&["-n", &ns, "link", "set", &veth, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(n)
    }

    /// Takes n1's end of the veth down (`up = false`) or up again.
    fn set_veth(&self, up: bool) {
        ip(&[
            "-n",
            &self.ns[0],
            "link",
            "set",
            &self.veth[0],
            if up { "up" } else { "down" },
        ])
        .expect("setting the veth");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // A veth left in the root namespace (creation failed half-way) goes too;
        // deleting a namespace deletes the veth end inside it.
        let _ = ip(&["link", "del", &self.veth[0]]);
        for ns in &self.made {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("could not delete network namespace {ns}: {e}");
            }
        }
    }
}

/// The two daemons, each in its namespace; shut down (killed if need be) on drop,
/// before the namespaces go.
struct Nodes {
    configs: Vec<PathBuf>,
    run_dir: PathBuf,
    pids: Vec<Option<u32>>,
    addrs: Vec<String>,
    _dir: TempDir,
    // Last: the namespaces go after the daemons are down.
    net: Netns,
}

impl Nodes {
    fn args<'a>(&'a self, i: usize, command: &'a str) -> Vec<&'a OsStr> {
        vec![
            OsStr::new(command),
            OsStr::new("-c"),
            self.configs[i].as_os_str(),
            OsStr::new("--node"),
            OsStr::new(NODES[i]),
            OsStr::new("--run-dir"),
            self.run_dir.as_os_str(),
        ]
    }

    /// `ip netns exec NS tpmon boot --detach ...` for node i.
    fn boot(&mut self, i: usize) {
        let mut args: Vec<&OsStr> = vec![
            OsStr::new("netns"),
            OsStr::new("exec"),
            OsStr::new(&self.net.ns[i]),
            OsStr::new(TPMON),
        ];
        args.extend(self.args(i, "boot"));
        args.extend([
            OsStr::new("--detach"),
            OsStr::new("--listen"),
            OsStr::new("127.0.0.1:0"),
        ]);
        let out = Command::new("ip")
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("running ip netns exec");
        assert!(
            out.status.success(),
            "booting {}: {}{}",
            NODES[i],
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let st = self.status(i).expect("status right after boot");
        self.pids[i] = st["daemon"]["pid"].as_u64().map(|p| p as u32);
        self.addrs[i] = st["daemon"]["client_address"]
            .as_str()
            .expect("client address")
            .to_string();
    }

    /// `tpmon status --json` (over the admin socket: a file, reachable from here).
    fn status(&self, i: usize) -> Option<Value> {
        let mut args = self.args(i, "status");
        args.push(OsStr::new("--json"));
        let run = tpmon(args);
        run.ok()
            .then(|| serde_json::from_str(&run.stdout).ok())
            .flatten()
    }

    fn wait_status(&self, i: usize, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
        let mut found = None;
        wait_until(&format!("{}: {what}", NODES[i]), LIMIT, || {
            found = self.status(i).filter(|st| cond(st));
            found.is_some()
        });
        found.unwrap_or(Value::Null)
    }

    /// A relayed client of node i, connected from inside its namespace (the socket
    /// stays in the namespace it was made in).
    fn client(&self, i: usize) -> Client {
        let ns = PathBuf::from("/var/run/netns").join(&self.net.ns[i]);
        let addr = self.addrs[i].clone();
        std::thread::spawn(move || {
            let f = std::fs::File::open(&ns).expect("opening the namespace");
            // SAFETY: setns on this thread only, with a descriptor we own.
            let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            Client::connect(&ClientOptions {
                addr: Some(addr),
                connect_timeout: Some(Duration::from_secs(5)),
                client_name: "netns".into(),
                force_relay: true,
                ..ClientOptions::default()
            })
            .expect("connecting a client")
        })
        .join()
        .expect("the connecting thread")
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for (i, name) in NODES.iter().enumerate() {
            let Some(pid) = self.pids[i].take() else {
                continue;
            };
            let pids = self.status(i).map(|st| all_pids(&st)).unwrap_or_default();
            let run = tpmon(self.args(i, "down"));
            if !run.ok() {
                eprintln!("tpmon down --node {name}: {run:?}");
            }
            for p in std::iter::once(pid).chain(pids) {
                if alive(p) {
                    kill9(p);
                }
            }
        }
    }
}

/// Both directions of the link to node `name` up, its recovery done, routable.
fn linked(st: &Value, name: &str) -> bool {
    node(st, name)
        .is_some_and(|n| n["link_up"] == true && n["recovered"] == true && n["routable"] == true)
}

fn node<'a>(st: &'a Value, name: &str) -> Option<&'a Value> {
    st["nodes"]
        .as_array()
        .and_then(|a| a.iter().find(|n| n["name"] == name))
}

fn config_text(rms: &Path) -> String {
    let mut t = format!(
        "[domain]\nname = \"nsd\"\nlisten = \"127.0.0.1:7480\"\nrun_dir = \"run\"\n\
         link_secret = \"{SECRET}\"\n\n[domain.tx]\nrecovery_interval_ms = 100\n"
    );
    for (i, name) in NODES.iter().enumerate() {
        t.push_str(&format!(
            "\n[[node]]\nname = \"{name}\"\nlisten = \"127.0.0.1:{}\"\nlink = \"{}:{LINK_PORT}\"\n",
            17480 + i,
            ADDRS[i]
        ));
    }
    for (group, node) in [("gs1", "n1"), ("gs2", "n2")] {
        t.push_str(&format!(
            "\n[[group]]\nname = \"{group}\"\nnode = \"{node}\"\n[group.rm]\nkind = \"fake\"\nopen = {}\n",
            toml_string(&rms.join(group).display().to_string())
        ));
    }
    for (server, group, services) in [
        ("s1", "gs1", &["ECHO"][..]),
        ("s2", "gs2", &["STRONLY", "NESTED", "SLEEP"][..]),
    ] {
        t.push_str(&format!(
            "\n[[server]]\nname = \"{server}\"\ngroup = \"{group}\"\nexecutable = {}\n\
             shutdown_timeout_s = 2\n",
            toml_string(support::TESTSRV)
        ));
        for svc in services {
            t.push_str(&format!(
                "\n[[service]]\nname = \"{svc}\"\nserver = \"{server}\"\n"
            ));
        }
    }
    t
}

#[test]
fn two_nodes_in_network_namespaces_call_commit_and_survive_a_cut_veth() {
    let net = match Netns::create() {
        Ok(n) => n,
        Err(why) => {
            eprintln!(
                "netns test not run: this machine does not allow network namespaces \
                 ({why}); see the header of crates/tpmon/tests/netns.rs"
            );
            return;
        }
    };
    let dir = TempDir::new("netns");
    let rms = dir.path.join("rms");
    for g in ["gs1", "gs2"] {
        std::fs::create_dir_all(rms.join(g)).expect("a fake RM directory");
    }
    let config = dir.path.join("domain.toml");
    std::fs::write(&config, config_text(&rms)).expect("writing the file");
    let mut nodes = Nodes {
        configs: vec![config.clone(), config],
        run_dir: dir.path.join("run"),
        pids: vec![None, None],
        addrs: vec![String::new(), String::new()],
        _dir: dir,
        net,
    };
    nodes.boot(0);
    nodes.boot(1);
    nodes.wait_status(0, "linked to n2", |st| linked(st, "n2"));
    nodes.wait_status(1, "linked to n1", |st| linked(st, "n1"));

    // A remote call over the veth, and a global transaction on both nodes (NESTED on
    // n2 calls ECHO on n1 inside it).
    let mut client = nodes.client(0);
    let r = client
        .call("STRONLY", &s("over the veth"), Flags::NONE)
        .expect("STRONLY (n2)");
    assert_eq!(text(&r), "over the veth");
    client.tx_begin().expect("begin");
    let r = client
        .call("ECHO", &s("here"), Flags::NONE)
        .expect("ECHO (n1)");
    assert_eq!(text(&r), "here");
    let r = client
        .call("NESTED", &s("there"), Flags::NONE)
        .expect("NESTED (n2)");
    assert_eq!(text(&r), "there");
    assert_eq!(client.tx_commit(), Ok(tpmon_client::Committed::Done));
    let count =
        |g: &str, op: &str| tpmon_xa::fake::FakeRm::count_calls(&rms.join(g), op, Some("ok"));
    // Phase 2 on n2's branch may finish after tx_commit returned.
    wait_until("both nodes' branches committed", LIMIT, || {
        count("gs1", "commit") >= 1 && count("gs2", "commit") >= 1
    });
    for g in ["gs1", "gs2"] {
        assert_eq!(
            tpmon_xa::fake::FakeRm::count_calls(&rms.join(g), "rollback", None),
            0,
            "{g}"
        );
    }

    // The veth goes down with a call in flight to n2.
    let cd = client
        .acall("SLEEP", &s("10000"), Flags::NONE)
        .expect("acall");
    nodes.wait_status(0, "the SLEEP call in flight to n2", |st| {
        node(st, "n2").is_some_and(|n| n["calls_in_flight"] == 1)
    });
    nodes.net.set_veth(false);
    let cut = Instant::now();
    let e = client
        .getrply(Some(cd), Flags::NONE)
        .expect_err("the veth went down");
    assert_eq!(e.kind, ErrorKind::SvcErr, "{e}");
    assert!(
        cut.elapsed() < Duration::from_secs(6),
        "{:?}",
        cut.elapsed()
    );
    nodes.wait_status(0, "n2's link down", |st| {
        node(st, "n2").is_some_and(|n| n["link_up"] == false && n["routable"] == false)
    });
    nodes.wait_status(1, "n1's link down", |st| {
        node(st, "n1").is_some_and(|n| n["link_up"] == false)
    });
    let e = client
        .call("STRONLY", &s("x"), Flags::NONE)
        .expect_err("n2 cannot be reached");
    assert_eq!(e.kind, ErrorKind::NoEnt, "{e}");

    // Up again: the links come back and n2 serves again.
    nodes.net.set_veth(true);
    nodes.wait_status(0, "linked to n2 again", |st| linked(st, "n2"));
    nodes.wait_status(1, "linked to n1 again", |st| linked(st, "n1"));
    let r = client
        .call("STRONLY", &s("back"), Flags::NONE)
        .expect("STRONLY (n2) again");
    assert_eq!(text(&r), "back");
}
