//! Supervision of server instances: start, watch, answer orphaned callers, restart
//! with back-off and a restart limit, enforce service time limits, add instances under
//! load, and answer the queue of a server that has failed for good.
//!
//! Owns every decision about a server process's life. Fault model: an instance may
//! fail to start (missing binary, tpsvrinit error, start timeout), crash at any moment
//! (a caller it was serving gets TPESVCERR at once from the daemon), hang (killed when
//! its service time limit passes) or ask to be restarted (TPEXIT). It must never start
//! a server of another node (such a server has no queue here).

use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tpmon_config::RestartPolicy;
use tpmon_ipc::{monotonic_us, IpcError, SlotState};
use tpmon_proto::{encode_frame, ControlMessage, ErrorKind, Flags, FrameDecoder, Message};

use crate::domain::Domain;
use crate::relay::error_reply;

/// How often the watchdog looks at time limits and queue depth.
const WATCHDOG_PERIOD: Duration = Duration::from_millis(20);
/// Every this many watchdog periods (one second) the shared counters are reconciled.
const RECONCILE_TICKS: u64 = 50;

/// Claims slot `k` of `server` and starts a supervision task for it; false when the
/// slot already has one, the server has failed or runs on another node.
pub fn start_slot(dom: &Arc<Domain>, server: usize, k: usize) -> bool {
    if dom.servers[server].remote.is_some() {
        return false;
    }
    {
        let Ok(mut rec) = dom.servers[server].record.lock() else {
            return false;
        };
        if rec.failed.is_some() || dom.is_stopping() {
            return false;
        }
        let Some(slot) = rec.slots.get_mut(k) else {
            return false;
        };
        if slot.active {
            return false;
        }
        slot.active = true;
        slot.state = "starting";
    }
    let dom = dom.clone();
    tokio::spawn(async move {
        slot_task(&dom, server, k).await;
        if let Ok(mut rec) = dom.servers[server].record.lock() {
            if let Some(s) = rec.slots.get_mut(k) {
                s.active = false;
                s.pid = None;
            }
        }
        maybe_drain(&dom, server);
    });
    true
}

fn set_slot<F: FnOnce(&mut crate::domain::SlotRecord)>(
    dom: &Domain,
    server: usize,
    k: usize,
    f: F,
) {
    if let Ok(mut rec) = dom.servers[server].record.lock() {
        if let Some(s) = rec.slots.get_mut(k) {
            f(s);
        }
    }
}

struct Running {
    child: tokio::process::Child,
    control: UnixStream,
    decoder: FrameDecoder,
    pid: u32,
}

enum Ended {
    /// The process exited; `tpexit` when it announced TPEXIT or a panic first.
    Exited {
        status: ExitStatus,
        tpexit: Option<String>,
    },
}

async fn slot_task(dom: &Arc<Domain>, server: usize, k: usize) {
    let cfg = &dom.config.servers[server];
    let slot = dom.servers[server].slot_base + k;
    let mut backoff = cfg.restart_backoff;
    let mut shutdown = dom.shutdown_rx();
    loop {
        if dom.is_stopping() {
            set_slot(dom, server, k, |s| s.state = "stopped");
            return;
        }
        let started = Instant::now();
        let (failure, tpexit) = match start_instance(dom, server, k, slot).await {
            Ok(running) => {
                let pid = running.pid;
                set_slot(dom, server, k, |s| {
                    s.pid = Some(pid);
                    s.state = "running";
                    s.kill_reason = None;
                });
                tracing::info!(server = %cfg.name, pid, slot, "instance ready");
                let Ended::Exited { status, tpexit } = watch_instance(running).await;
                let reason = describe_exit(status);
                answer_orphan(dom, server, k, slot, pid, &reason);
                let snapshot = dom.table.slot(slot);
                set_slot(dom, server, k, |s| {
                    s.served_before += snapshot.map_or(0, |x| x.served);
                    s.pid = None;
                    s.last_exit = Some(reason.clone());
                });
                dom.table.release_dead(server, slot);
                dom.table.reset_slot(slot);
                if dom.is_stopping() {
                    set_slot(dom, server, k, |s| s.state = "stopped");
                    return;
                }
                let crashed = !status.success();
                if let Some(why) = &tpexit {
                    tracing::info!(server = %cfg.name, pid, "instance exits for a restart: {why}");
                } else if crashed {
                    tracing::warn!(server = %cfg.name, pid, "instance {reason}");
                }
                let restart = tpexit.is_some()
                    || match cfg.restart {
                        RestartPolicy::Always => true,
                        RestartPolicy::OnFailure => crashed,
                        RestartPolicy::Never => false,
                    };
                if !restart {
                    tracing::info!(server = %cfg.name, pid, "instance {reason}; not restarted (restart = {})", cfg.restart.as_str());
                    set_slot(dom, server, k, |s| s.state = "stopped");
                    return;
                }
                (reason, tpexit.is_some())
            }
            Err(e) => {
                dom.table.release_dead(server, slot);
                dom.table.reset_slot(slot);
                tracing::error!(server = %cfg.name, slot, "instance failed to start: {e}");
                set_slot(dom, server, k, |s| {
                    s.pid = None;
                    s.last_exit = Some(e.clone());
                });
                if dom.is_stopping() {
                    set_slot(dom, server, k, |s| s.state = "stopped");
                    return;
                }
                (e, false)
            }
        };
        // The restart budget: at most restart_max restarts within restart_window.
        let over_budget = {
            let Ok(mut rec) = dom.servers[server].record.lock() else {
                return;
            };
            let now = Instant::now();
            rec.recent_restarts.push_back(now);
            while rec
                .recent_restarts
                .front()
                .is_some_and(|t| now.duration_since(*t) > cfg.restart_window)
            {
                rec.recent_restarts.pop_front();
            }
            if rec.recent_restarts.len() > cfg.restart_max as usize {
                let why = format!(
                    "more than {} restarts within {:?}; last: {failure}",
                    cfg.restart_max, cfg.restart_window
                );
                rec.failed = Some(why);
                if let Some(s) = rec.slots.get_mut(k) {
                    s.state = "failed";
                }
                true
            } else {
                if let Some(s) = rec.slots.get_mut(k) {
                    s.state = "restarting";
                    s.restarts += 1;
                }
                false
            }
        };
        if over_budget {
            tracing::error!(server = %cfg.name, "server marked failed: restart limit reached");
            return;
        }
        if started.elapsed() > cfg.restart_window {
            backoff = cfg.restart_backoff;
        }
        let delay = if tpexit { Duration::ZERO } else { backoff };
        backoff = (backoff * 2).min(cfg.restart_backoff_max);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => {}
        }
    }
}

fn describe_exit(status: ExitStatus) -> String {
    if let Some(sig) = status.signal() {
        format!("was killed by signal {sig}")
    } else {
        format!("exited with status {}", status.code().unwrap_or(-1))
    }
}

/// The instance in `slot` ended while serving a request: tell the caller now.
fn answer_orphan(dom: &Domain, server: usize, k: usize, slot: usize, pid: u32, reason: &str) {
    let Some(busy) = dom.table.slot(slot).and_then(|s| s.busy) else {
        return;
    };
    let kill_reason = dom.servers[server]
        .record
        .lock()
        .ok()
        .and_then(|r| r.slots.get(k).and_then(|s| s.kill_reason.clone()));
    let service = dom
        .welcome
        .services
        .get(busy.service as usize)
        .map_or("?", |s| s.name.as_str());
    let detail = match kill_reason {
        Some(why) => format!(
            "service {service} {why} (server {} pid {pid})",
            dom.server_name(server)
        ),
        None => format!(
            "server {} pid {pid} {reason} while serving {service}",
            dom.server_name(server)
        ),
    };
    let svc = busy.service as usize;
    if svc < dom.welcome.services.len() {
        dom.table.record_call(
            svc,
            monotonic_us().saturating_sub(busy.started_us),
            tpmon_ipc::CallOutcome::Error,
        );
    }
    if Flags(busy.flags).contains(Flags::NOREPLY) || busy.reply_to.is_empty() {
        return;
    }
    let body = Message::Reply(error_reply(busy.call_id, ErrorKind::SvcErr, detail)).encode();
    match dom.relay.tx.send_to_abstract(&busy.reply_to, &body, true) {
        Ok(()) | Err(IpcError::Gone(_)) => {}
        Err(e) => tracing::warn!(error = %e, "could not tell a caller that its server died"),
    }
}

async fn start_instance(
    dom: &Arc<Domain>,
    server: usize,
    k: usize,
    slot: usize,
) -> Result<Running, String> {
    let cfg = &dom.config.servers[server];
    dom.table.reset_slot(slot);
    dom.table.set_slot(slot, 0, SlotState::Starting);
    let exe = dom.config.resolve_executable(cfg, dom.exe_dir.as_deref());
    let (ours, theirs) =
        std::os::unix::net::UnixStream::pair().map_err(|e| format!("control socket pair: {e}"))?;
    let Some(queue) = dom.servers[server].queue.as_ref() else {
        return Err(format!(
            "server {} runs on another node; it has no queue here",
            cfg.name
        ));
    };
    let queue_fd = queue.as_raw_fd();
    let control_fd = theirs.as_raw_fd();
    let mut cmd = tokio::process::Command::new(&exe);
    cmd.args(&cfg.args)
        .envs(&cfg.env)
        .env(tpmon_server_env::SERVER_NAME, &cfg.name)
        .env(tpmon_server_env::NODE, &dom.node)
        .env(
            tpmon_server_env::MESSAGE_BYTES_MAX,
            dom.config.limits.frame_bytes_max.to_string(),
        )
        .env_remove(tpmon_server_env::RM_KIND)
        .env_remove(tpmon_server_env::RM_OPEN)
        .env_remove(tpmon_server_env::RM_POOL_MAX)
        .stdin(Stdio::null())
        .process_group(0)
        .kill_on_drop(false);
    let group = &dom.config.groups[cfg.group];
    if let Some(rm) = group.rm.xa() {
        // The open string may hold a password: it travels in the child's environment,
        // never on a command line or in a log.
        cmd.env(tpmon_server_env::RM_KIND, rm.kind.as_str())
            .env(tpmon_server_env::RM_OPEN, rm.open.expose())
            .env(tpmon_server_env::RM_POOL_MAX, rm.pool_max.to_string());
    }
    if group.auto_transaction {
        cmd.env(tpmon_server_env::AUTO_TRANSACTION, "1");
    } else {
        cmd.env_remove(tpmon_server_env::AUTO_TRANSACTION);
    }
    let daemon_pid = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls (prctl, getppid, fcntl, dup2) between fork
    // and exec. The descriptors are first moved above 10 so that placing them on 3 and
    // 4 cannot clobber one another.
    unsafe {
        cmd.pre_exec(move || {
            // An instance must not outlive its daemon: it would hold a queue nobody
            // routes to. (The daemon's worker threads live as long as the daemon.)
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0
                || libc::getppid() != daemon_pid
            {
                return Err(std::io::Error::other("the daemon is gone"));
            }
            let q = libc::fcntl(queue_fd, libc::F_DUPFD, 10);
            let c = libc::fcntl(control_fd, libc::F_DUPFD, 10);
            if q < 0 || c < 0 || libc::dup2(q, 3) < 0 || libc::dup2(c, 4) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(q);
            libc::close(c);
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    drop(theirs);
    let pid = child.id().unwrap_or(0);
    dom.table.set_slot(slot, pid, SlotState::Starting);
    set_slot(dom, server, k, |s| s.pid = Some(pid));
    ours.set_nonblocking(true)
        .map_err(|e| format!("control socket: {e}"))?;
    let control = UnixStream::from_std(ours).map_err(|e| format!("control socket: {e}"))?;
    let mut running = Running {
        child,
        control,
        decoder: FrameDecoder::new(1 << 20),
        pid,
    };
    let mut welcome = dom.welcome.clone();
    welcome.client_id = dom.new_client_id();
    let mut frame = Vec::new();
    encode_frame(
        &Message::Control(ControlMessage::Setup {
            welcome,
            server: server as u16,
            slot: slot as u32,
            group: cfg.group as u16,
        })
        .encode(),
        &mut frame,
    );
    if let Err(e) = running.control.write_all(&frame).await {
        let status = reap(&mut running).await;
        return Err(format!(
            "{} {} before set-up ({e})",
            exe.display(),
            describe_exit(status)
        ));
    }
    let wait_ready = async {
        loop {
            tokio::select! {
                status = running.child.wait() => {
                    let status = status.map_err(|e| format!("waiting for pid {pid}: {e}"))?;
                    // The instance may have said why before it exited: its message is
                    // still in the socket. (Bounded: a child of the instance could
                    // still hold the socket open.)
                    let said = tokio::time::timeout(Duration::from_millis(200), async {
                        while let Some(m) =
                            read_control(&mut running.control, &mut running.decoder).await
                        {
                            if let ControlMessage::InitFailed { reason } = m {
                                return Some(reason);
                            }
                        }
                        None
                    })
                    .await;
                    if let Ok(Some(reason)) = said {
                        return Err(reason);
                    }
                    return Err(format!("{} {} during start-up", exe.display(), describe_exit(status)));
                }
                msg = read_control(&mut running.control, &mut running.decoder) => match msg {
                    Some(ControlMessage::Ready { .. }) => return Ok(()),
                    Some(ControlMessage::InitFailed { reason }) => {
                        let _ = running.child.wait().await;
                        return Err(reason);
                    }
                    Some(_) => {}
                    None => {
                        let status = running.child.wait().await.map_err(|e| e.to_string())?;
                        return Err(format!("{} {} during start-up", exe.display(), describe_exit(status)));
                    }
                },
            }
        }
    };
    match tokio::time::timeout(cfg.start_timeout, wait_ready).await {
        Ok(Ok(())) => {
            dom.table.set_slot(slot, pid, SlotState::Running);
            Ok(running)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => {
            let _ = running.child.start_kill();
            let _ = running.child.wait().await;
            Err(format!(
                "tpsvrinit did not finish within {:?}; killed pid {pid}",
                cfg.start_timeout
            ))
        }
    }
}

async fn reap(r: &mut Running) -> ExitStatus {
    match r.child.wait().await {
        Ok(s) => s,
        Err(_) => ExitStatus::from_raw(-1),
    }
}

async fn read_control(
    control: &mut UnixStream,
    decoder: &mut FrameDecoder,
) -> Option<ControlMessage> {
    let mut buf = [0u8; 4096];
    loop {
        match decoder.next_frame() {
            Ok(Some(body)) => match Message::decode(&body) {
                Ok(Message::Control(c)) => return Some(c),
                _ => continue,
            },
            Ok(None) => {}
            Err(_) => return None,
        }
        match control.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => decoder.extend(&buf[..n]),
        }
    }
}

async fn watch_instance(mut r: Running) -> Ended {
    let mut tpexit = None;
    let mut control_open = true;
    loop {
        tokio::select! {
            status = r.child.wait() => {
                let status = status.unwrap_or_else(|_| ExitStatus::from_raw(-1));
                return Ended::Exited { status, tpexit };
            }
            msg = read_control(&mut r.control, &mut r.decoder), if control_open => match msg {
                Some(ControlMessage::Exiting { reason }) => tpexit = Some(reason),
                Some(_) => {}
                None => control_open = false,
            },
        }
    }
}

/// Environment names shared with the server runtime (kept here to avoid a dependency
/// of the daemon on the server crate).
mod tpmon_server_env {
    pub const SERVER_NAME: &str = "TPMON_SERVER_NAME";
    pub const NODE: &str = "TPMON_NODE";
    pub const MESSAGE_BYTES_MAX: &str = "TPMON_MESSAGE_BYTES_MAX";
    pub const RM_KIND: &str = "TPMON_RM_KIND";
    pub const RM_OPEN: &str = "TPMON_RM_OPEN";
    pub const RM_POOL_MAX: &str = "TPMON_RM_POOL_MAX";
    pub const AUTO_TRANSACTION: &str = "TPMON_AUTO_TRANSACTION";
}

/// Service time limits and growth under load, checked every few milliseconds.
pub async fn watchdog(dom: Arc<Domain>) {
    let mut tick = tokio::time::interval(WATCHDOG_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut shutdown = dom.shutdown_rx();
    let mut ticks: u64 = 0;
    // Per server: the queue count seen at the last reconciliation while an instance was idle.
    let mut stale: Vec<Option<u64>> = vec![None; dom.servers.len()];
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        ticks += 1;
        let reconcile = ticks % RECONCILE_TICKS == 0;
        if reconcile {
            dom.table.reset_spinners();
        }
        let now = monotonic_us();
        for (i, srv) in dom.servers.iter().enumerate() {
            if srv.remote.is_some() {
                continue; // another node supervises it
            }
            let cfg = &dom.config.servers[i];
            let mut idle = 0;
            let mut first_free = None;
            let mut to_kill = Vec::new();
            if let Ok(mut rec) = srv.record.lock() {
                if rec.failed.is_some() {
                    continue;
                }
                for (k, s) in rec.slots.iter_mut().enumerate() {
                    if !s.active {
                        // Growth uses only the slots above min_instances: a slot of
                        // the minimum that stopped did so by its restart policy.
                        if k >= cfg.min_instances as usize {
                            first_free.get_or_insert(k);
                        }
                        continue;
                    }
                    let Some(pid) = s.pid else { continue };
                    let Some(snap) = dom.table.slot(srv.slot_base + k) else {
                        continue;
                    };
                    if snap.state != SlotState::Running {
                        continue;
                    }
                    match snap.busy {
                        None => idle += 1,
                        Some(b) => {
                            let limit = dom
                                .welcome
                                .services
                                .get(b.service as usize)
                                .map_or(0, |s| s.timeout_ms);
                            if limit > 0
                                && s.kill_reason.is_none()
                                && now.saturating_sub(b.started_us) > u64::from(limit) * 1000
                            {
                                s.kill_reason = Some(format!(
                                    "exceeded its time limit of {} ms and its server was restarted",
                                    limit
                                ));
                                to_kill.push(pid);
                            }
                        }
                    }
                }
            }
            for pid in to_kill {
                tracing::warn!(server = %cfg.name, pid, "service time limit exceeded: killing the instance");
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            // A caller that died between counting its request and sending it leaves
            // the count too high, which costs idle instances needless wake-ups. An
            // idle instance takes a real request within microseconds, so a count that
            // stays the same across a whole period while an instance is idle is such a
            // leftover.
            if reconcile {
                let q = dom.table.queued(i);
                stale[i] = match (idle > 0 && q > 0, stale[i]) {
                    (true, Some(prev)) if prev == q => {
                        tracing::warn!(server = %cfg.name, count = q, "queue count without requests: reset");
                        dom.table.queue_reset(i);
                        None
                    }
                    (true, _) => Some(q),
                    (false, _) => None,
                };
            }
            if idle == 0 && dom.table.queued(i) > 0 && !dom.is_stopping() {
                if let Some(k) = first_free {
                    if start_slot(&dom, i, k) {
                        tracing::info!(server = %cfg.name, slot = k, "requests are waiting: adding an instance");
                    }
                }
            }
        }
    }
}

/// When a failed server has no instance left, answer everything in its queue.
fn maybe_drain(dom: &Arc<Domain>, server: usize) {
    let reason = {
        let Ok(rec) = dom.servers[server].record.lock() else {
            return;
        };
        match &rec.failed {
            Some(r) if rec.slots.iter().all(|s| !s.active) => r.clone(),
            _ => return,
        }
    };
    let Some(queue) = dom.servers[server].queue.as_ref() else {
        return; // a server of another node: nothing queued here
    };
    let fd = match queue.try_clone_fd() {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!(error = %e, "cannot drain the queue of a failed server");
            return;
        }
    };
    let dom = dom.clone();
    let name = dom.server_name(server).to_string();
    let spawned = std::thread::Builder::new()
        .name(format!("drain-{name}"))
        .spawn(move || {
            use std::os::fd::IntoRawFd;
            // SAFETY: a fresh duplicate that this thread alone owns.
            let mut q = unsafe {
                tpmon_ipc::Endpoint::from_raw_fd(
                    fd.into_raw_fd(),
                    dom.config.limits.frame_bytes_max as usize,
                )
            };
            let _ = q.set_recv_timeout(Some(Duration::from_millis(200)));
            while !dom.is_stopping() {
                let Ok(got) = q.recv(false) else { continue };
                dom.table.queue_release(server);
                if let Ok(Message::Request(req)) = Message::decode(&got.body) {
                    if req.flags.contains(Flags::NOREPLY) || req.reply_to.is_empty() {
                        continue;
                    }
                    let body = Message::Reply(error_reply(
                        req.call_id,
                        ErrorKind::NoEnt,
                        format!(
                            "server {name} of service {} has failed: {reason}",
                            req.service
                        ),
                    ))
                    .encode();
                    let _ = dom.relay.tx.send_to_abstract(&req.reply_to, &body, true);
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start a drain thread");
    }
}

/// Asks every instance to run tpsvrdone and exit, then waits; instances still alive
/// after their server's shutdown timeout are killed.
pub async fn stop_all(dom: &Arc<Domain>) {
    for (i, srv) in dom.servers.iter().enumerate() {
        if srv.queue.is_none() {
            continue; // a server of another node: no instance here
        }
        let n = srv
            .record
            .lock()
            .map(|r| r.slots.iter().filter(|s| s.pid.is_some()).count())
            .unwrap_or(0);
        let body = Message::Shutdown.encode();
        for _ in 0..n {
            // Counted like any request: an instance gives the place back when it
            // takes the message.
            dom.table.queue_reserve(i, u64::MAX);
            let path = Path::new(&srv.queue_path);
            let mut sent = false;
            for _ in 0..200 {
                match dom.relay.tx.send_to_path(path, &body, true) {
                    Err(IpcError::WouldBlock) => tokio::time::sleep(Duration::from_millis(5)).await,
                    Err(e) => {
                        tracing::warn!(server = %dom.server_name(i), error = %e, "cannot send shutdown");
                        break;
                    }
                    Ok(()) => {
                        sent = true;
                        break;
                    }
                }
            }
            if !sent {
                // The instances left will be killed after the shutdown timeout.
                dom.table.queue_release(i);
            }
        }
    }
    for i in 0..dom.servers.len() {
        dom.table.wake_all_followers(i);
    }
    let grace = dom
        .config
        .servers
        .iter()
        .map(|s| s.shutdown_timeout)
        .max()
        .unwrap_or(Duration::from_secs(10));
    let deadline = Instant::now() + grace;
    loop {
        let alive: Vec<u32> = dom
            .servers
            .iter()
            .flat_map(|s| {
                s.record
                    .lock()
                    .map(|r| {
                        r.slots
                            .iter()
                            .filter(|x| x.active)
                            .filter_map(|x| x.pid)
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default()
            })
            .collect();
        let any_active = dom.servers.iter().any(|s| {
            s.record
                .lock()
                .map(|r| r.slots.iter().any(|x| x.active))
                .unwrap_or(false)
        });
        if !any_active {
            return;
        }
        if Instant::now() >= deadline {
            for pid in alive {
                tracing::warn!(pid, "instance did not stop in time: killing it");
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
