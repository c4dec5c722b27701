//! Multi-node domains on one machine: three nodes on loopback, each daemon booted with
//! `--node` in its own run directory (`run_dir/<node>`). Every daemon links up with the
//! two others (authenticated node links), runs only its own node's servers, serves
//! local calls, and answers a call to a service of another node with TPENOENT naming
//! that node (on the fast path, through the relay, from a nested call and from the
//! command line). A node killed with `kill -9` is seen down by the others and links up
//! again when it is booted again; a node with the wrong `link_secret` never links up,
//! and the others log the refusal.

mod support;

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use support::{
    alive, all_pids, kill9, s, strip_ansi, text, toml_string, tpmon, tpmon_env, wait_until,
    TempDir, TESTSRV,
};
use tpmon_client::{Client, ClientOptions, ErrorKind, Flags};
use tpmon_proto::{encode_frame, FrameDecoder, Hello, Message, ReplyStatus, Request};

/// Longest wait for a link or a process (links reconnect with back-off up to 5 s).
const LIMIT: Duration = Duration::from_secs(30);

const NODES: [&str; 3] = ["n1", "n2", "n3"];
const SECRET: &str = "the-domain-link-secret";

/// The server of each node and the services it offers (the test server's routines).
const SERVERS: [(&str, &str, &[&str]); 3] = [
    ("s1", "n1", &["ECHO"]),
    ("s2", "n2", &["PID"]),
    ("s3", "n3", &["STRONLY", "NESTED"]),
];

/// A free TCP port on loopback (bound and released: node links need fixed addresses
/// in the file, which every node reads).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("binding port 0");
    l.local_addr().expect("local address").port()
}

/// The domain's file with the given link secret and link ports.
fn config_text(secret: &str, links: &[u16]) -> String {
    let mut t = format!(
        "[domain]\nname = \"mn\"\nlisten = \"127.0.0.1:7480\"\nrun_dir = \"run\"\n\
         link_secret = \"{secret}\"\n"
    );
    for (i, (node, port)) in NODES.iter().zip(links).enumerate() {
        // The client ports in the file are placeholders: each daemon is booted with
        // `--listen 127.0.0.1:0`.
        t.push_str(&format!(
            "\n[[node]]\nname = \"{node}\"\nlisten = \"127.0.0.1:{}\"\nlink = \"127.0.0.1:{port}\"\n",
            17480 + i
        ));
    }
    for (server, node, _) in SERVERS {
        t.push_str(&format!(
            "\n[[group]]\nname = \"g{server}\"\nnode = \"{node}\"\n"
        ));
    }
    for (server, _, services) in SERVERS {
        t.push_str(&format!(
            "\n[[server]]\nname = \"{server}\"\ngroup = \"g{server}\"\nexecutable = {}\n\
             shutdown_timeout_s = 2\n",
            toml_string(TESTSRV)
        ));
        for svc in services {
            t.push_str(&format!(
                "\n[[service]]\nname = \"{svc}\"\nserver = \"{server}\"\n"
            ));
        }
    }
    t
}

/// One node's running daemon.
struct Daemon {
    pid: u32,
    addr: String,
}

/// Three nodes of one domain in a temporary directory; every daemon still running is
/// shut down on drop (killed if that fails).
struct Cluster {
    /// Per node: the configuration file its daemon is booted from.
    configs: Vec<PathBuf>,
    /// The domain's run directory (each node's is a subdirectory).
    run_dir: PathBuf,
    /// Each node's link port.
    links: Vec<u16>,
    daemons: Vec<Option<Daemon>>,
    // Last: the directory goes after the daemons are down (held, never read).
    _dir: TempDir,
}

impl Cluster {
    /// Writes the domain's file; node `bad`, if any, gets a file of its own with
    /// another link secret.
    fn new(tag: &str, bad: Option<usize>) -> Cluster {
        let dir = TempDir::new(tag);
        let links: Vec<u16> = NODES.iter().map(|_| free_port()).collect();
        let good = dir.path.join("domain.toml");
        std::fs::write(&good, config_text(SECRET, &links)).expect("writing domain.toml");
        let configs = (0..NODES.len())
            .map(|i| {
                if Some(i) == bad {
                    let f = dir.path.join("wrong-secret.toml");
                    std::fs::write(&f, config_text("not-the-domain-secret", &links))
                        .expect("writing wrong-secret.toml");
                    f
                } else {
                    good.clone()
                }
            })
            .collect();
        Cluster {
            configs,
            run_dir: dir.path.join("run"),
            links,
            daemons: NODES.iter().map(|_| None).collect(),
            _dir: dir,
        }
    }

    fn node_args<'a>(&'a self, i: usize, command: &'a str) -> Vec<&'a OsStr> {
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

    /// `tpmon boot --detach --node N --listen 127.0.0.1:0`.
    fn boot(&mut self, i: usize) {
        self.boot_env(i, &[]);
    }

    /// [`Cluster::boot`] with extra environment variables for the daemon.
    fn boot_env(&mut self, i: usize, env: &[(&str, &str)]) {
        let mut args = self.node_args(i, "boot");
        args.extend([
            OsStr::new("--detach"),
            OsStr::new("--listen"),
            OsStr::new("127.0.0.1:0"),
        ]);
        let run = tpmon_env(args, env);
        assert!(
            run.ok(),
            "booting {}: {run:?}\nlog:\n{}",
            NODES[i],
            self.log(i)
        );
        let st = self.status(i).expect("status right after boot");
        assert_eq!(st["node"], NODES[i]);
        assert_eq!(
            st["daemon"]["run_dir"].as_str(),
            Some(self.run_dir.join(NODES[i]).to_str().expect("utf-8 path")),
            "each node has its own run directory"
        );
        self.daemons[i] = Some(Daemon {
            pid: st["daemon"]["pid"].as_u64().expect("daemon.pid") as u32,
            addr: st["daemon"]["client_address"]
                .as_str()
                .expect("daemon.client_address")
                .to_string(),
        });
    }

    fn daemon(&self, i: usize) -> &Daemon {
        self.daemons[i].as_ref().expect("the node is up")
    }

    /// `tpmon status --json --node N`, or None if it fails.
    fn status(&self, i: usize) -> Option<Value> {
        let mut args = self.node_args(i, "status");
        args.push(OsStr::new("--json"));
        let run = tpmon(args);
        if !run.ok() {
            return None;
        }
        serde_json::from_str(&run.stdout).ok()
    }

    /// Polls node `i`'s status until `cond` holds for it.
    fn wait_status(&self, i: usize, what: &str, mut cond: impl FnMut(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        let mut found = None;
        wait_until(&format!("{}: {what}", NODES[i]), LIMIT, || {
            match self.status(i) {
                Some(st) if cond(&st) => found = Some(st),
                Some(st) => last = st,
                None => {}
            }
            found.is_some()
        });
        found.unwrap_or(last)
    }

    /// The node's log, colour sequences removed.
    fn log(&self, i: usize) -> String {
        strip_ansi(
            &std::fs::read_to_string(self.run_dir.join(NODES[i]).join("tpmon.log"))
                .unwrap_or_default(),
        )
    }

    fn client(&self, i: usize, relay: bool) -> Client {
        Client::connect(&ClientOptions {
            addr: Some(self.daemon(i).addr.clone()),
            connect_timeout: Some(Duration::from_secs(5)),
            client_name: "it".into(),
            force_relay: relay,
            ..ClientOptions::default()
        })
        .expect("connecting a client")
    }

    /// `kill -9` of node `i`'s daemon and its instances; waits until they are gone.
    fn kill(&mut self, i: usize) {
        let pids = self.status(i).map(|st| all_pids(&st)).unwrap_or_default();
        let daemon = self.daemons[i].take().expect("the node is up");
        for pid in std::iter::once(daemon.pid).chain(pids.iter().copied()) {
            if alive(pid) {
                kill9(pid);
            }
        }
        for pid in std::iter::once(daemon.pid).chain(pids) {
            wait_until("a killed process is gone", LIMIT, || !alive(pid));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        for (i, name) in NODES.iter().enumerate() {
            let Some(d) = self.daemons[i].take() else {
                continue;
            };
            if panicking {
                let log = self.log(i);
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                eprintln!(
                    "--- tail of {}'s log ---\n{}",
                    name,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            let pids = self.status(i).map(|st| all_pids(&st)).unwrap_or_default();
            let run = tpmon(self.node_args(i, "down"));
            let left: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
            if !run.ok() || !left.is_empty() {
                for pid in std::iter::once(d.pid).chain(pids) {
                    if alive(pid) {
                        kill9(pid);
                    }
                }
            }
            if !panicking {
                assert!(run.ok(), "tpmon down --node {}: {run:?}", name);
                assert!(left.is_empty(), "instances {left:?} outlived tpmon down");
            }
        }
    }
}

/// The status entry of node `name`.
fn node<'a>(st: &'a Value, name: &str) -> &'a Value {
    st["nodes"]
        .as_array()
        .and_then(|a| a.iter().find(|n| n["name"] == name))
        .unwrap_or_else(|| panic!("no node {name} in the status: {st}"))
}

/// The status entry of server `name`.
fn server<'a>(st: &'a Value, name: &str) -> &'a Value {
    st["servers"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no server {name} in the status: {st}"))
}

/// Both directions of the link to node `name` are up.
fn linked(st: &Value, name: &str) -> bool {
    let n = node(st, name);
    n["outbound_up"] == true && n["inbound_up"] == true && n["link_up"] == true
}

/// Both directions of the link to node `name` are down.
fn unlinked(st: &Value, name: &str) -> bool {
    let n = node(st, name);
    n["outbound_up"] == false && n["inbound_up"] == false && n["link_up"] == false
}

fn others(i: usize) -> impl Iterator<Item = usize> {
    (0..NODES.len()).filter(move |&j| j != i)
}

fn remote_detail(service: &str, node: &str) -> String {
    format!(
        "service \"{service}\" is offered on node \"{node}\"; calls to other nodes are not \
         supported yet"
    )
}

/// A raw relayed request (the client library would refuse it before sending): the
/// daemon's relay must answer it the same way.
fn raw_relay_call(addr: &str, service: &str) -> tpmon_proto::Reply {
    let mut sock = TcpStream::connect(addr).expect("connecting");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let mut dec = FrameDecoder::new(1 << 20);
    let mut send = |m: Message| {
        let mut f = Vec::new();
        encode_frame(&m.encode(), &mut f);
        sock.write_all(&f).expect("sending");
    };
    send(Message::Hello(Hello::default()));
    send(Message::Request(Request {
        call_id: 5,
        flags: Flags::NONE,
        service: service.into(),
        reply_to: Vec::new(),
        client: tpmon_proto::ClientId(0),
        tx: None,
        buffer: Some(tpmon_client::to_wire(&s("raw"))),
    }));
    let mut buf = [0u8; 65536];
    loop {
        while let Some(body) = dec.next_frame().expect("a frame") {
            match Message::decode(&body).expect("a message") {
                Message::Welcome(_) => {}
                Message::Reply(r) => return r,
                other => panic!("expected a reply, got {other:?}"),
            }
        }
        let n = sock.read(&mut buf).expect("reading from the daemon");
        assert!(n > 0, "the daemon closed the connection");
        dec.extend(&buf[..n]);
    }
}

#[test]
fn three_nodes_link_up_run_their_own_servers_refuse_remote_calls_and_survive_a_crash() {
    let mut c = Cluster::new("mesh", None);
    for i in 0..NODES.len() {
        c.boot(i);
    }
    // Every daemon sees both others linked, in both directions.
    for (i, name) in NODES.iter().enumerate() {
        let st = c.wait_status(i, "both other nodes linked", |st| {
            others(i).all(|j| linked(st, NODES[j]))
        });
        assert_eq!(node(&st, name)["this"], true);
        for j in others(i) {
            let n = node(&st, NODES[j]);
            assert_eq!(n["this"], false);
            assert!(n["connects"].as_u64() >= Some(1), "{n}");
        }
    }

    // Each daemon runs its own server only; the others' are remote, with no queue here.
    for (i, (own, _, _)) in SERVERS.iter().enumerate() {
        let st = c.status(i).expect("status");
        let mine = server(&st, own);
        assert_eq!(mine["state"], "running", "{mine}");
        assert_eq!(mine["node"], NODES[i]);
        assert_eq!(all_pids(&st).len(), 1, "one instance in all: {st}");
        let q = c.run_dir.join(NODES[i]).join("q");
        assert!(q.join(format!("{own}.sock")).exists());
        for (other, other_node, _) in SERVERS.iter().filter(|(n, _, _)| n != own) {
            let theirs = server(&st, other);
            assert_eq!(theirs["state"], "remote", "{theirs}");
            assert_eq!(theirs["node"], *other_node);
            assert_eq!(theirs["instances"].as_array().map(Vec::len), Some(0));
            assert!(!q.join(format!("{other}.sock")).exists());
        }
    }

    // Local calls work on every node; calls to other nodes' services are TPENOENT
    // naming the node, on both paths.
    let calls = [("ECHO", 0usize), ("PID", 1), ("STRONLY", 2)];
    for (i, name) in NODES.iter().enumerate() {
        for relay in [false, true] {
            let mut client = c.client(i, relay);
            assert_eq!(client.is_local(), !relay);
            for (svc, at) in calls {
                let r = client.call(svc, &s("hello"), Flags::NONE);
                if at == i {
                    let r = r.unwrap_or_else(|e| panic!("{svc} on {}: {e}", name));
                    if svc == "PID" {
                        assert!(text(&r).parse::<u32>().is_ok(), "{}", text(&r));
                    } else {
                        assert_eq!(text(&r), "hello");
                    }
                } else {
                    let e = r.expect_err("a service of another node");
                    assert_eq!(e.kind, ErrorKind::NoEnt, "{e}");
                    assert_eq!(e.detail, remote_detail(svc, NODES[at]));
                }
            }
            let e = client
                .call("NOSUCH", &s("x"), Flags::NONE)
                .expect_err("unknown");
            assert_eq!(e.kind, ErrorKind::NoEnt);
        }
        // The daemon's relay refuses the same way a client that sends anyway.
        let remote = calls.iter().find(|(_, at)| *at != i).expect("a remote one");
        let r = raw_relay_call(&c.daemon(i).addr, remote.0);
        assert_eq!(r.status, ReplyStatus::Error(ErrorKind::NoEnt));
        assert_eq!(r.detail, remote_detail(remote.0, NODES[remote.1]));
    }
    // A nested call from n3's server to n1's ECHO is refused in the instance.
    let e = c
        .client(2, false)
        .call("NESTED", &s("x"), Flags::NONE)
        .expect_err("NESTED calls ECHO on n1");
    assert_eq!(e.kind, ErrorKind::SvcFail, "{e}");
    let said = e
        .reply
        .as_ref()
        .and_then(|b| b.as_str())
        .unwrap_or_default();
    assert!(said.contains(&remote_detail("ECHO", "n1")), "{said}");

    // The command line addresses each node's daemon with --node.
    let mut args = c.node_args(1, "call");
    args.push(OsStr::new("PID"));
    let run = tpmon(args);
    assert!(run.ok(), "{run:?}");
    let mut args = c.node_args(0, "call");
    args.push(OsStr::new("PID"));
    let run = tpmon(args);
    assert_eq!(run.code, Some(6), "TPENOENT: {run:?}");
    assert!(
        run.stderr.contains(&remote_detail("PID", "n2")),
        "{}",
        run.stderr
    );
    let run = tpmon(c.node_args(0, "status"));
    assert!(run.ok(), "{run:?}");
    assert!(run.stdout.contains("remote (node n2)"), "{}", run.stdout);
    assert!(run.stdout.contains("NODE"), "{}", run.stdout);

    // kill -9 of n2: the others see both directions of its link go down.
    c.kill(1);
    for i in [0, 2] {
        let st = c.wait_status(i, "n2's link down", |st| unlinked(st, "n2"));
        assert!(!node(&st, "n2")["last_error"].is_null(), "{st}");
        assert!(linked(&st, NODES[2 - i]), "the third link stays up: {st}");
    }
    // Booted again (same run directory, same link address): everyone links up again.
    c.boot(1);
    for i in 0..NODES.len() {
        c.wait_status(i, "both other nodes linked again", |st| {
            others(i).all(|j| linked(st, NODES[j]))
        });
    }
    let st = c.status(0).expect("status");
    assert!(node(&st, "n2")["connects"].as_u64() >= Some(2), "{st}");
    let r = c
        .client(1, false)
        .call("PID", &s(""), Flags::NONE)
        .expect("n2 serves again");
    assert!(text(&r).parse::<u32>().is_ok());
}

#[test]
fn a_node_with_the_wrong_link_secret_never_links_up() {
    let mut c = Cluster::new("badsecret", Some(2));
    for i in 0..NODES.len() {
        c.boot(i);
    }
    for (i, j) in [(0, 1), (1, 0)] {
        c.wait_status(i, "the good pair linked", |st| linked(st, NODES[j]));
    }
    // Each good node refuses n3's connections (n3 finds the good node's proof wrong
    // and hangs up without proving anything) and finds n3's proof wrong on its own
    // connections to n3; it logs both. Wait for several refusals, so that n3 has
    // retried.
    for i in [0, 1] {
        wait_until(
            &format!("{} logs repeated refusals", NODES[i]),
            LIMIT,
            || {
                let log = c.log(i);
                let refusals = log
                    .lines()
                    .filter(|l| {
                        l.contains(
                            "node link refused: authentication failed: member 2 closed \
                                    the handshake",
                        )
                    })
                    .count();
                refusals >= 2
                    && log.lines().any(|l| {
                        l.contains("cannot connect to")
                            && l.contains("the peer does not know this domain's secret")
                    })
            },
        );
        let st = c.wait_status(i, "an error recorded for n3", |st| {
            !node(st, "n3")["last_error"].is_null()
        });
        assert!(unlinked(&st, "n3"), "{st}");
        assert_eq!(node(&st, "n3")["connects"], 0, "{st}");
    }
    let st = c.status(2).expect("n3's status");
    for j in [0, 1] {
        assert!(unlinked(&st, NODES[j]), "{st}");
        assert_eq!(node(&st, NODES[j])["connects"], 0, "{st}");
    }
    // n3 still serves its own clients.
    let r = c
        .client(2, false)
        .call("STRONLY", &s("alone"), Flags::NONE)
        .expect("a local call on n3");
    assert_eq!(text(&r), "alone");
}

#[test]
fn each_node_keeps_its_files_in_its_own_run_directory() {
    let mut c = Cluster::new("rundirs", None);
    c.boot(0);
    c.boot(1);
    for i in [0, 1] {
        let dir = c.run_dir.join(NODES[i]);
        for f in ["tpmon.pid", "admin.sock", "status.shm", "txlog"] {
            assert!(dir.join(f).exists(), "{}", dir.join(f).display());
        }
    }
    assert!(!c.run_dir.join("tpmon.pid").exists());
    // A second daemon for the same node is refused by its run directory's lock.
    let mut args = c.node_args(0, "boot");
    args.extend([
        OsStr::new("--detach"),
        OsStr::new("--listen"),
        OsStr::new("127.0.0.1:0"),
    ]);
    let run = tpmon(args);
    assert!(!run.ok(), "{run:?}");
    assert!(run.stderr.contains("already running"), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!("pid {}", c.daemon(0).pid)),
        "{}",
        run.stderr
    );
}

/// Frames other nodes send are drained (logged at debug and dropped: nothing handles
/// them yet), so a busy peer never stalls a daemon's links. The test process joins the
/// mesh as n3 with the domain's secret and sends n1 far more frames than the link's
/// channel, outbox and socket buffers hold together; every one is taken, and the link
/// stays up.
#[test]
fn frames_from_other_nodes_are_drained() {
    const FRAMES: usize = 20_000;
    let mut c = Cluster::new("drain", None);
    c.boot_env(0, &[("TPMON_LOG", "info,tpmon_daemon=debug")]);
    c.boot(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let addrs: Vec<std::net::SocketAddr> = c
        .links
        .iter()
        .map(|p| std::net::SocketAddr::from(([127, 0, 0, 1], *p)))
        .collect();
    let identity = tpmon_link::Identity {
        domain: "mn".into(),
        secret: SECRET.as_bytes().to_vec(),
        me: 2,
        members: 3,
    };
    let (mesh, _rx) = rt
        .block_on(tpmon_link::Mesh::start(tpmon_link::MeshConfig::new(
            identity, addrs,
        )))
        .expect("joining the mesh as n3");
    for i in [0, 1] {
        c.wait_status(i, "n3 (the test) linked", |st| linked(st, "n3"));
    }
    let deadline = std::time::Instant::now() + LIMIT;
    let mut sent = 0;
    while sent < FRAMES {
        let frame = tpmon_link::Frame::request(tpmon_link::Item::Call, 2, vec![7u8; 2048]);
        match mesh.send(0, frame) {
            Ok(()) => sent += 1,
            Err(tpmon_link::SendError::Busy(_)) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "n1 stopped taking frames after {sent}"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("sending frame {sent}: {e}"),
        }
    }
    wait_until("n1 logged the last frames it dropped", LIMIT, || {
        c.log(0)
            .matches("node link: frame dropped (nothing handles it yet)")
            .count()
            == FRAMES
    });
    let st = c.status(0).expect("n1's status");
    assert!(linked(&st, "n3"), "{st}");
    let r = c
        .client(0, false)
        .call("ECHO", &s("still here"), Flags::NONE)
        .expect("n1 serves");
    assert_eq!(text(&r), "still here");
    drop(mesh);
}
