//! The status report (`tpmon status`) and the client side of the admin socket.
//!
//! Owns the JSON shape of the report: the daemon, the domain's nodes with the state of
//! the links to the others, the servers (those of other nodes marked `remote`), the
//! services and the embedded sites. It reads state and must not change any.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use thiserror::Error;
use tpmon_proto::{encode_frame, AdminRequest, FrameDecoder, Message};

use crate::domain::Domain;

/// Builds the status report.
/// The embedded sites: numbers, branches and the counters that show what 2PC and
/// the checkpoints cost.
fn sites(dom: &Domain) -> Vec<Value> {
    use std::sync::atomic::Ordering::Relaxed;
    let mut out = Vec::new();
    for (i, s) in dom.sites.by_group.iter().enumerate() {
        let Some(s) = s else { continue };
        let st = &s.stats;
        let (active, prepared) = s.branch_counts();
        let events = s.redo_events();
        let count = |f: fn(&tpmon_rm::RedoEvent) -> bool| events.iter().filter(|e| f(e)).count();
        out.push(json!({
            "site": i,
            "group": dom.sites.names.get(i).cloned().unwrap_or_default(),
            "lcpn": s.lcpn(),
            "checkpoint": s.checkpoint_number(),
            "active_branches": active,
            "prepared_branches": prepared,
            "begins": st.begins.load(Relaxed),
            "operations": st.operations.load(Relaxed),
            "prepares": st.prepares.load(Relaxed),
            "commits": st.commits.load(Relaxed),
            "rollbacks": st.rollbacks.load(Relaxed),
            "checkpoints": st.checkpoints.load(Relaxed),
            "checkpoint_messages": st.checkpoint_messages.load(Relaxed),
            "late_records": st.late_records.load(Relaxed),
            "corruptions": st.corruptions.load(Relaxed),
            "rollback_recoveries": st.rollback_recoveries.load(Relaxed),
            "redo_sent": count(|e| matches!(e, tpmon_rm::RedoEvent::Sent { .. })),
            "redo_acted": count(|e| matches!(e, tpmon_rm::RedoEvent::Acted { .. })),
            "redo_ignored": count(|e| matches!(e, tpmon_rm::RedoEvent::Ignored { .. })),
        }));
    }
    out
}

/// Every node of the domain: this one, and the others with the state of the links to
/// them (multi-node domains).
fn nodes(dom: &Domain) -> Vec<Value> {
    let cfg = &dom.config;
    let peers = dom.mesh.as_ref().map(|m| m.peers()).unwrap_or_default();
    cfg.nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let this = i == dom.node_index;
            let mut v = json!({
                "name": n.name,
                "this": this,
                "host": n.host,
                // This node's real address (it may have been booted with --listen).
                "listen": if this { cfg.domain.listen } else { n.listen }.to_string(),
                "link": n.link.map(|a| a.to_string()),
            });
            if this {
                // CHECK_RECOVERED_NODE: the others route new work here only once
                // this node's boot recovery has finished.
                // GET_MAX_SCN: this node's commit sequence number.
                v["scn"] = json!(dom.tm.scn());
                v["recovery"] = json!(if dom.tm.recovered() {
                    "recovered"
                } else {
                    "recovering"
                });
            }
            if let Some(p) = peers.iter().find(|p| p.position as usize == i) {
                v["link_up"] = json!(p.up());
                v["outbound_up"] = json!(p.outbound_up);
                v["inbound_up"] = json!(p.inbound_up);
                v["connects"] = json!(p.connects);
                v["last_error"] = if p.last_error.is_empty() {
                    Value::Null
                } else {
                    json!(p.last_error)
                };
            }
            if let Some(c) = dom.remote.as_ref().and_then(|r| r.counters(i as u32)) {
                v["routable"] = json!(c.routable);
                v["recovered"] = json!(c.recovered);
                v["calls_sent"] = json!(c.sent);
                v["calls_received"] = json!(c.received);
                v["calls_in_flight"] = json!(c.in_flight);
                v["calls_serving"] = json!(c.serving);
                v["calls_failed_link_down"] = json!(c.failed_link);
            }
            v
        })
        .collect()
}

/// The status entry of a server that another node runs: nothing of it lives here.
fn remote_server(scfg: &tpmon_config::Server, node: &str) -> Value {
    json!({
        "name": scfg.name,
        "node": node,
        "state": "remote",
        "failure": null,
        "executable": scfg.executable,
        "min_instances": scfg.min_instances,
        "max_instances": scfg.max_instances,
        "running": 0,
        "restarts": 0,
        "served": 0,
        "queued": 0,
        "instances": [],
    })
}

pub fn report(dom: &Domain) -> Value {
    let cfg = &dom.config;
    let mut servers = Vec::new();
    for (i, srv) in dom.servers.iter().enumerate() {
        let scfg = &cfg.servers[i];
        if let Some(node) = &srv.remote {
            servers.push(remote_server(scfg, node));
            continue;
        }
        let Ok(rec) = srv.record.lock() else { continue };
        let mut instances = Vec::new();
        let mut served_total = 0;
        let mut restarts = 0;
        let mut running = 0;
        for (k, s) in rec.slots.iter().enumerate() {
            let snap = dom.table.slot(srv.slot_base + k);
            let served_now = snap.as_ref().map_or(0, |x| x.served);
            served_total += s.served_before + served_now;
            restarts += s.restarts;
            if !s.active && s.restarts == 0 && s.last_exit.is_none() {
                continue; // a slot never used
            }
            let busy = snap.as_ref().and_then(|x| x.busy.as_ref()).is_some();
            if s.pid.is_some() && s.state == "running" {
                running += 1;
            }
            instances.push(json!({
                "slot": k,
                "pid": s.pid,
                "state": if busy && s.state == "running" { "busy" } else { s.state },
                "restarts": s.restarts,
                "served": s.served_before + served_now,
                "last_exit": s.last_exit,
            }));
        }
        let state = match (&rec.failed, running) {
            (Some(_), _) => "failed",
            (None, 0) => "down",
            (None, n) if n < scfg.min_instances as usize => "degraded",
            _ => "running",
        };
        servers.push(json!({
            "name": scfg.name,
            "node": dom.node,
            "state": state,
            "failure": rec.failed,
            "executable": scfg.executable,
            "min_instances": scfg.min_instances,
            "max_instances": scfg.max_instances,
            "running": running,
            "restarts": restarts,
            "served": served_total,
            "queued": dom.table.queued(i),
            "instances": instances,
        }));
    }
    let services: Vec<Value> = cfg
        .services
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let st = dom.table.service_stats(i);
            let node = cfg.groups[cfg.servers[s.server].group].node;
            json!({
                "name": s.name,
                "server": cfg.servers[s.server].name,
                "node": cfg.nodes[node].name,
                "queued": dom.table.queued(s.server),
                "calls": st.calls,
                "failures": st.failures,
                "errors": st.errors,
                "mean_us": st.mean_us,
                "p99_us": st.p99_us,
            })
        })
        .collect();
    json!({
        "domain": cfg.domain.name,
        "node": dom.node,
        "daemon": {
            "pid": std::process::id(),
            "client_address": cfg.domain.listen.to_string(),
            "run_dir": cfg.domain.run_dir.display().to_string(),
            "uptime_s": dom.started.elapsed().as_secs(),
            "clients": dom.clients.load(std::sync::atomic::Ordering::Relaxed),
            "stopping": dom.is_stopping(),
        },
        "nodes": nodes(dom),
        "servers": servers,
        "services": services,
        "sites": sites(dom),
    })
}

/// Failure talking to a daemon's admin socket.
#[derive(Debug, Error)]
pub enum AdminError {
    /// No daemon answers there.
    #[error("no daemon is running for run directory {dir} ({source})")]
    NotRunning {
        /// The run directory.
        dir: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The daemon answered something unexpected or broke off.
    #[error("admin socket: {0}")]
    Protocol(String),
    /// The daemon refused the request.
    #[error("daemon: {0}")]
    Refused(String),
}

/// Sends one admin request to the daemon of `run_dir` and returns its answer text.
pub fn admin_request(
    run_dir: &Path,
    req: AdminRequest,
    timeout: Duration,
) -> Result<String, AdminError> {
    let path = run_dir.join(crate::ADMIN_SOCKET);
    let mut s = UnixStream::connect(&path).map_err(|source| AdminError::NotRunning {
        dir: run_dir.display().to_string(),
        source,
    })?;
    let proto = |e: std::io::Error| AdminError::Protocol(e.to_string());
    s.set_read_timeout(Some(timeout)).map_err(proto)?;
    let mut frame = Vec::new();
    encode_frame(&Message::Admin(req).encode(), &mut frame);
    s.write_all(&frame).map_err(proto)?;
    let mut dec = FrameDecoder::new(64 << 20);
    let mut buf = [0u8; 16384];
    loop {
        if let Some(body) = dec
            .next_frame()
            .map_err(|e| AdminError::Protocol(e.to_string()))?
        {
            return match Message::decode(&body) {
                Ok(Message::AdminReply { ok: true, text }) => Ok(text),
                Ok(Message::AdminReply { ok: false, text }) => Err(AdminError::Refused(text)),
                Ok(other) => Err(AdminError::Protocol(format!("unexpected answer {other:?}"))),
                Err(e) => Err(AdminError::Protocol(e.to_string())),
            };
        }
        match s.read(&mut buf) {
            Ok(0) => {
                return Err(AdminError::Protocol(
                    "the daemon closed the connection".into(),
                ))
            }
            Ok(n) => dec.extend(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(proto(e)),
        }
    }
}
