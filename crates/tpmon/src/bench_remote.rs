//! `tpmon bench remote`: the round trip of a call to a service of another node (client
//! on n1, service on n2, over the node link on loopback) against the same call made on
//! n2 itself, on the fast path and relayed. With `--tx`, global transactions instead
//! (begin, the call, commit with a durable decision; the service's group has the no-op
//! resource manager): from n1, a transaction spanning two nodes (n1's TM coordinates,
//! n2's prepares and logs its branch as a subordinate over the link), against the same
//! transaction on n2 alone. It boots the two nodes itself, in a temporary directory,
//! and shuts them down.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;
use tpmon_daemon::admin_request;
use tpmon_proto::AdminRequest;

use crate::bench::{point_json, row, tpcall_point, Point, PAYLOAD_BYTES};

const NODES: [&str; 2] = ["n1", "n2"];

/// The two-node domain: the echo server runs on n2 only; with `tx`, its group has the
/// no-op resource manager and every commit logs its decision (no one-phase commit).
fn toml(links: &[u16], instances: usize, tx: bool) -> String {
    let mut t = String::from(
        "[domain]\nname = \"benchr\"\nlisten = \"127.0.0.1:7499\"\nrun_dir = \"run\"\n\
         link_secret = \"bench-remote-link-secret\"\n",
    );
    if tx {
        t.push_str("\n[domain.tx]\none_phase_commit = false\n");
    }
    for (i, (node, port)) in NODES.iter().zip(links).enumerate() {
        t.push_str(&format!(
            "\n[[node]]\nname = \"{node}\"\nlisten = \"127.0.0.1:{}\"\nlink = \"127.0.0.1:{port}\"\n",
            17499 + i
        ));
    }
    let rm = if tx { "rm = \"noop\"\n" } else { "" };
    t.push_str(&format!(
        "\n[[group]]\nname = \"g2\"\nnode = \"n2\"\n{rm}\n[[server]]\nname = \"echo\"\n\
         group = \"g2\"\nexecutable = \"tpmon-quickstart-server\"\nmin_instances = {instances}\n\
         max_instances = {instances}\n\n[[service]]\nname = \"ECHO\"\nserver = \"echo\"\n"
    ));
    t
}

/// Two node daemons booted from one file in a temporary directory; shut down on drop.
struct TwoNodes {
    dir: PathBuf,
    config: PathBuf,
    /// Each node's client address, when it is up.
    addrs: Vec<Option<String>>,
}

impl TwoNodes {
    fn boot(instances: usize, tx: bool) -> anyhow::Result<TwoNodes> {
        let dir = std::env::temp_dir().join(format!("tpmon-bench-remote-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let links = (0..NODES.len())
            .map(|_| {
                let l = std::net::TcpListener::bind("127.0.0.1:0")?;
                Ok(l.local_addr()?.port())
            })
            .collect::<anyhow::Result<Vec<u16>>>()?;
        let config = dir.join("domain.toml");
        std::fs::write(&config, toml(&links, instances, tx))?;
        let mut nodes = TwoNodes {
            dir,
            config,
            addrs: vec![None; NODES.len()],
        };
        for (i, node) in NODES.iter().enumerate() {
            let out = Command::new(std::env::current_exe()?)
                .args([
                    "boot",
                    "--detach",
                    "--listen",
                    "127.0.0.1:0",
                    "--node",
                    node,
                ])
                .arg("-c")
                .arg(&nodes.config)
                .arg("--run-dir")
                .arg(nodes.dir.join("run"))
                .output()
                .context("running tpmon boot")?;
            if !out.status.success() {
                bail!(
                    "booting node {node} failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            let st = nodes.status(i)?;
            nodes.addrs[i] = Some(
                st["daemon"]["client_address"]
                    .as_str()
                    .context("status without a client address")?
                    .to_string(),
            );
        }
        // Ready once each node can route to the other.
        let deadline = Instant::now() + Duration::from_secs(30);
        for i in 0..NODES.len() {
            loop {
                let st = nodes.status(i)?;
                let linked = st["nodes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|n| n["this"] == false)
                    .all(|n| n["routable"] == true);
                if linked {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("the nodes did not link up within 30 s: {st}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(nodes)
    }

    fn run_dir(&self, i: usize) -> PathBuf {
        self.dir.join("run").join(NODES[i])
    }

    fn status(&self, i: usize) -> anyhow::Result<serde_json::Value> {
        let s = admin_request(
            &self.run_dir(i),
            AdminRequest::Status,
            Duration::from_secs(10),
        )?;
        Ok(serde_json::from_str(&s)?)
    }

    fn addr(&self, i: usize) -> anyhow::Result<&str> {
        self.addrs[i].as_deref().context("the node is down")
    }

    fn down(&mut self) -> anyhow::Result<()> {
        for i in 0..NODES.len() {
            if self.addrs[i].take().is_some() {
                admin_request(
                    &self.run_dir(i),
                    AdminRequest::Down,
                    Duration::from_secs(60),
                )?;
            }
        }
        Ok(())
    }
}

impl Drop for TwoNodes {
    fn drop(&mut self) {
        let _ = self.down();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The figures of one run.
struct Figures {
    local: Vec<Point>,
    remote: Vec<Point>,
    local_relayed: Point,
    remote_relayed: Point,
}

fn measure(nodes: &TwoNodes, seconds: f64, clients: &[usize]) -> anyhow::Result<Figures> {
    let (n1, n2) = (nodes.addr(0)?, nodes.addr(1)?);
    let mut local = Vec::new();
    let mut remote = Vec::new();
    // Alternating, so that a slow moment of the machine does not favour one side.
    for &c in clients {
        local.push(tpcall_point(n2, c, seconds, false)?);
        remote.push(tpcall_point(n1, c, seconds, false)?);
    }
    let local_relayed = tpcall_point(n2, 1, seconds, true)?;
    let remote_relayed = tpcall_point(n1, 1, seconds, true)?;
    Ok(Figures {
        local,
        remote,
        local_relayed,
        remote_relayed,
    })
}

/// Checks that n1's calls really went over the link: n1 sent them, n2 served them.
fn check_counters(nodes: &TwoNodes) -> anyhow::Result<(u64, u64)> {
    let peer = |st: &serde_json::Value, name: &str, field: &str| {
        st["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["name"] == name)
            .and_then(|n| n[field].as_u64())
            .unwrap_or(0)
    };
    let sent = peer(&nodes.status(0)?, "n2", "calls_sent");
    let received = peer(&nodes.status(1)?, "n1", "calls_received");
    if sent == 0 || received < sent {
        bail!("n1 sent {sent} calls over the link and n2 received {received}: the remote path was not measured");
    }
    Ok((sent, received))
}

pub fn bench_remote(as_json: bool, seconds: f64, clients: &[usize]) -> anyhow::Result<()> {
    if !(seconds.is_finite() && seconds > 0.0) {
        bail!("--seconds must be positive");
    }
    if clients.is_empty() || clients.contains(&0) {
        bail!("--clients needs counts of at least 1");
    }
    crate::quickstart::require_example_server()?;
    let instances = clients.iter().copied().max().unwrap_or(1);
    let mut nodes = TwoNodes::boot(instances, false)?;
    let figures = measure(&nodes, seconds, clients);
    let counted = check_counters(&nodes);
    nodes.down()?;
    let f = figures?;
    let (sent, _) = counted?;
    let ratio = |r: &Point, l: &Point| r.mean_us / l.mean_us.max(f64::MIN_POSITIVE);
    if as_json {
        let pairs: Vec<_> = f
            .local
            .iter()
            .zip(&f.remote)
            .map(|(l, r)| {
                json!({
                    "clients": l.clients,
                    "local": point_json(l),
                    "remote": point_json(r),
                    "ratio_mean_remote_to_local": ratio(r, l),
                })
            })
            .collect();
        let v = json!({
            "payload_bytes": PAYLOAD_BYTES,
            "seconds_per_point": seconds,
            "instances": instances,
            "fast_path": pairs,
            "relayed_1_client": {
                "local": point_json(&f.local_relayed),
                "remote": point_json(&f.remote_relayed),
                "ratio_mean_remote_to_local": ratio(&f.remote_relayed, &f.local_relayed),
            },
            "calls_sent_over_the_link": sent,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "tpmon bench remote: {PAYLOAD_BYTES}-byte STRING echo on n2 ({instances} instance(s)), \
         called from n2 (local) and from n1 (over the node link, loopback), {seconds} s per point\n"
    );
    println!(
        "{:<44} {:>10} {:>9} {:>9} {:>9} {:>13}",
        "", "calls/s", "mean us", "p50 us", "p99 us", ""
    );
    for (l, r) in f.local.iter().zip(&f.remote) {
        row(
            &format!("local tpcall (n2 -> n2), {} client(s)", l.clients),
            l,
            None,
        );
        row(
            &format!("remote tpcall (n1 -> n2), {} client(s)", r.clients),
            r,
            None,
        );
    }
    row(
        "local tpcall, 1 TCP client (relayed by n2)",
        &f.local_relayed,
        None,
    );
    row(
        "remote tpcall, 1 TCP client (relayed by n1)",
        &f.remote_relayed,
        None,
    );
    println!();
    for (l, r) in f.local.iter().zip(&f.remote) {
        println!(
            "remote / local mean round trip, {} client(s), fast path: {:.2}x (+{:.1} us)",
            l.clients,
            ratio(r, l),
            r.mean_us - l.mean_us
        );
    }
    println!(
        "remote / local mean round trip, 1 relayed client: {:.2}x (+{:.1} us)",
        ratio(&f.remote_relayed, &f.local_relayed),
        f.remote_relayed.mean_us - f.local_relayed.mean_us
    );
    println!("calls n1 sent over the link: {sent}");
    Ok(())
}

/// One transaction loop point: begin, ECHO, commit through node `i`'s daemon.
fn tx_point(nodes: &TwoNodes, i: usize, clients: usize, seconds: f64) -> anyhow::Result<Point> {
    let addr = nodes.addr(i)?.to_string();
    crate::bench_tx::clients_point(clients, seconds, move |_| {
        let mut c = tpmon_client::Client::connect(&tpmon_client::ClientOptions::new(addr.clone()))?;
        if !c.is_local() {
            bail!("the benchmark client did not get the local fast path");
        }
        let req = tpmon_buffer::Buffer::string("x".repeat(PAYLOAD_BYTES));
        Ok(Box::new(move || {
            c.tx_begin().map_err(|e| anyhow::anyhow!("{e}"))?;
            c.call("ECHO", &req, tpmon_client::Flags::NONE)?;
            c.tx_commit().map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok(())
        }))
    })
}

/// `tpmon bench remote --tx`: global transactions spanning two nodes against the same
/// transactions on one node.
pub fn bench_remote_tx(as_json: bool, seconds: f64, clients: &[usize]) -> anyhow::Result<()> {
    if !(seconds.is_finite() && seconds > 0.0) {
        bail!("--seconds must be positive");
    }
    if clients.is_empty() || clients.contains(&0) {
        bail!("--clients needs counts of at least 1");
    }
    crate::quickstart::require_example_server()?;
    let instances = clients.iter().copied().max().unwrap_or(1);
    let mut nodes = TwoNodes::boot(instances, true)?;
    let mut points = Vec::new();
    let mut failed = None;
    // Alternating, so that a slow moment of the machine does not favour one side.
    for &c in clients {
        match (
            tx_point(&nodes, 1, c, seconds),
            tx_point(&nodes, 0, c, seconds),
        ) {
            (Ok(l), Ok(r)) => points.push((l, r)),
            (Err(e), _) | (_, Err(e)) => {
                failed = Some(e);
                break;
            }
        }
    }
    let counted = check_counters(&nodes);
    nodes.down()?;
    if let Some(e) = failed {
        return Err(e);
    }
    let (sent, _) = counted?;
    let ratio = |r: &Point, l: &Point| r.calls_per_s / l.calls_per_s.max(f64::MIN_POSITIVE);
    if as_json {
        let pairs: Vec<_> = points
            .iter()
            .map(|(l, r)| {
                json!({
                    "clients": l.clients,
                    "one_node": point_json(l),
                    "two_nodes": point_json(r),
                    "ratio_tx_per_s_two_nodes_to_one": ratio(r, l),
                })
            })
            .collect();
        let v = json!({
            "payload_bytes": PAYLOAD_BYTES,
            "seconds_per_point": seconds,
            "instances": instances,
            "transactions": pairs,
            "calls_sent_over_the_link": sent,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "tpmon bench remote --tx: tx_begin, tpcall ECHO ({PAYLOAD_BYTES}-byte STRING, no-op \
         resource manager, on n2), tx_commit (decision fsynced), {seconds} s per point\n\
         one node: the client on n2; two nodes: the client on n1 (n1's TM coordinates, n2's \
         logs its branch prepared as a subordinate over the node link)\n"
    );
    crate::bench_tx::header("");
    for (l, r) in &points {
        crate::bench_tx::row(&format!("one node (n2), {} client(s)", l.clients), l, "");
        crate::bench_tx::row(
            &format!("two nodes (n1 -> n2), {} client(s)", r.clients),
            r,
            &format!("{:.2}x the transactions/s of one node", ratio(r, l)),
        );
    }
    println!("\ncalls n1 sent over the link: {sent}");
    Ok(())
}
