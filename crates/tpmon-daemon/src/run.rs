//! Boot, run and shut down one node daemon.
//!
//! Owns the order of boot (node selection, run directory lock, sites, transaction
//! manager, queues of this node's servers, client port, node links and the remote-call
//! socket) and of shutdown (which first tells the other nodes to route nothing more
//! here).
//! In a multi-node domain the daemon runs its own node only: the servers of groups on
//! other nodes get no queue and no instance here, and the mesh of node links keeps this
//! node connected to the others. It must not start anything of another node.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tpmon_buffer::BufferType;
use tpmon_config::DomainConfig;
use tpmon_ipc::{Endpoint, StatusTable, TableShape};
use tpmon_proto::{ServerRoute, ServiceRoute, Welcome};

use crate::domain::{Domain, ServerRecord, ServerRt, SlotRecord};
use crate::relay::RelayHub;
use crate::{admin, clients, supervise, tm_port, DaemonError, ADMIN_SOCKET, PID_FILE};

/// Where to report readiness: a pipe to the `tpmon boot --detach` parent, which waits
/// for one line: `ready` or `error: …`.
pub struct ReadyNotice(pub File);

impl ReadyNotice {
    fn send(mut self, line: &str) {
        let _ = writeln!(self.0, "{line}");
    }
}

/// Options of one boot.
#[derive(Default)]
pub struct BootOptions {
    /// Node to run (multi-node domains); default the node the configuration was
    /// narrowed to ([`tpmon_config::DomainConfig::select_node`]), else the first.
    pub node: Option<String>,
    /// Directory searched first for bare executable names.
    pub exe_dir: Option<PathBuf>,
    /// Readiness pipe.
    pub ready: Option<ReadyNotice>,
}

/// Kernel datagram queue length the daemon asks for when it may set it.
const KERNEL_QUEUE_LEN_WANTED: usize = 1024;

/// Boots the domain's node `opts.node` and serves until it is shut down (admin `down`,
/// SIGTERM or SIGINT). In a multi-node domain the run directory, transaction log and
/// client address are the node's own ([`tpmon_config::DomainConfig::select_node`]).
pub fn run(config: DomainConfig, mut opts: BootOptions) -> Result<(), DaemonError> {
    let ready = opts.ready.take();
    match boot(config, opts) {
        Ok(b) => {
            let Booted {
                rt,
                dom,
                listener,
                admin_listener,
                tm_listener,
                links,
                lock,
            } = b;
            let r = rt.block_on(serve(
                dom,
                listener,
                admin_listener,
                tm_listener,
                links,
                ready,
            ));
            drop(lock);
            r
        }
        Err(e) => {
            if let Some(n) = ready {
                n.send(&format!("error: {e}"));
            }
            Err(e)
        }
    }
}

/// What a successful boot hands to [`serve`].
struct Booted {
    rt: tokio::runtime::Runtime,
    dom: Arc<Domain>,
    listener: tokio::net::TcpListener,
    admin_listener: tokio::net::UnixListener,
    tm_listener: tokio::net::UnixListener,
    /// Frames from the other nodes (multi-node domains).
    links: Option<mpsc::Receiver<tpmon_link::Incoming>>,
    lock: File,
}

fn boot(mut config: DomainConfig, opts: BootOptions) -> Result<Booted, DaemonError> {
    // A configuration read as a tool left values empty that the daemon needs (an
    // open string, the link secret): never run on those.
    if let Some(u) = config.unresolved.first() {
        return Err(DaemonError::Config(u.message.clone()));
    }
    // The node first: in a multi-node domain it decides the run directory.
    let node_index = config
        .select_node(opts.node.as_deref())
        .map_err(|e| DaemonError::Config(e.to_string()))?;
    let node = config.nodes[node_index].name.clone();
    let run_dir = config.domain.run_dir.clone();
    let rd_err = |source| DaemonError::RunDir {
        path: run_dir.clone(),
        source,
    };
    std::fs::create_dir_all(run_dir.join("q")).map_err(rd_err)?;
    std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o700)).map_err(rd_err)?;
    let lock = lock_pid_file(&config, &run_dir)?;
    let link_plan = link_plan(&config, node_index)?;
    // The run directory's lock is held: no other daemon has these files open. The
    // sites first: their groups' open strings become the sites' sockets, which the
    // transaction manager and the servers use.
    let sites = crate::sites::open_sites(&mut config, &node)?;
    let tm = tpmon_tm::Tm::start(&config, &node)?;
    let qlen = tpmon_ipc::raise_kernel_queue_len(KERNEL_QUEUE_LEN_WANTED);
    if qlen < 64 {
        tracing::warn!(
            "net.unix.max_dgram_qlen is {qlen}: a client can have at most {} calls outstanding and queues block early; run as root once or set it to {KERNEL_QUEUE_LEN_WANTED}",
            qlen.saturating_sub(2)
        );
    }

    let std_listener = std::net::TcpListener::bind(config.domain.listen).map_err(|source| {
        DaemonError::Listen {
            addr: config.domain.listen,
            source,
        }
    })?;
    std_listener.set_nonblocking(true).map_err(rd_err)?;
    let listen_addr = std_listener.local_addr().map_err(rd_err)?;

    let generation = random_u64() & 0x7FFF_FFFF;
    let host_token = random_u64();
    write_private(&run_dir.join("host.token"), &format!("{host_token}\n")).map_err(rd_err)?;

    let slots: u32 = config.servers.iter().map(|s| s.max_instances).sum();
    let shape = TableShape {
        servers: config.servers.len() as u32,
        slots,
        services: config.services.len() as u32,
    };
    let table = Arc::new(
        StatusTable::create(&run_dir.join("status.shm"), shape, generation)
            .map_err(|e| DaemonError::Ipc(e.to_string()))?,
    );
    let frame_max = config.limits.frame_bytes_max as usize;
    let mut servers = Vec::new();
    let mut slot_base = 0usize;
    for (i, s) in config.servers.iter().enumerate() {
        let server_node = config.groups[s.group].node;
        let remote = (server_node != node_index).then(|| config.nodes[server_node].name.clone());
        // A server of another node gets no queue here: nobody may send to it.
        let (queue, queue_path) = if remote.is_some() {
            (None, PathBuf::new())
        } else {
            let queue_path = run_dir.join("q").join(format!("{}.sock", s.name));
            let queue = Endpoint::bind_path(&queue_path, frame_max)
                .map_err(|e| DaemonError::Ipc(format!("queue of server {}: {e}", s.name)))?;
            (Some(queue), queue_path)
        };
        servers.push(ServerRt {
            index: i,
            queue,
            queue_path,
            remote,
            slot_base,
            record: Mutex::new(ServerRecord {
                slots: vec![SlotRecord::default(); s.max_instances as usize],
                ..ServerRecord::default()
            }),
        });
        slot_base += s.max_instances as usize;
    }
    let welcome = Welcome {
        client_id: tpmon_proto::ClientId(0),
        domain: config.domain.name.clone(),
        node: node.clone(),
        run_dir: run_dir.display().to_string(),
        host_token,
        blocking_timeout_ms: config
            .limits
            .blocking_timeout
            .as_millis()
            .min(u128::from(u32::MAX)) as u32,
        spin_us: config.limits.spin.as_micros().min(u128::from(u32::MAX)) as u32,
        epoch: tm.epoch(),
        tx_timeout_ms: config
            .domain
            .tx
            .timeout
            .as_millis()
            .min(u128::from(u32::MAX)) as u32,
        tx_timeout_max_ms: config
            .domain
            .tx
            .timeout_max
            .as_millis()
            .min(u128::from(u32::MAX)) as u32,
        message_bytes_max: config.limits.frame_bytes_max,
        servers: servers
            .iter()
            .map(|s| ServerRoute {
                name: config.servers[s.index].name.clone(),
                queue_path: s.queue_path.display().to_string(),
                queue_max: config.servers[s.index].queue_max,
                node: s.remote.clone().unwrap_or_else(|| node.clone()),
            })
            .collect(),
        services: config
            .services
            .iter()
            .map(|s| ServiceRoute {
                name: s.name.clone(),
                server: s.server as u16,
                timeout_ms: s
                    .timeout
                    .map_or(0, |t| t.as_millis().clamp(1, u128::from(u32::MAX)) as u32),
                conversational: s.conversational,
                buffer_types: s
                    .buffer_types
                    .iter()
                    .filter_map(|t| BufferType::from_name(t))
                    .fold(0u32, |m, t| m | (1u32 << t.code())),
            })
            .collect(),
        nodes: config.nodes.iter().map(|n| n.name.clone()).collect(),
    };
    let relay = RelayHub::new(&config.domain.name, frame_max)
        .map_err(|e| DaemonError::Ipc(e.to_string()))?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("tpmon-daemon")
        .build()
        .map_err(DaemonError::Runtime)?;
    let (listener, admin_listener, tm_listener) = {
        let _g = rt.enter();
        let listener = tokio::net::TcpListener::from_std(std_listener).map_err(rd_err)?;
        let admin_path = run_dir.join(ADMIN_SOCKET);
        let _ = std::fs::remove_file(&admin_path);
        let admin_listener = tokio::net::UnixListener::bind(&admin_path).map_err(rd_err)?;
        std::fs::set_permissions(&admin_path, std::fs::Permissions::from_mode(0o600))
            .map_err(rd_err)?;
        let tm_path = run_dir.join(tm_port::TM_SOCKET);
        let _ = std::fs::remove_file(&tm_path);
        let tm_listener = tokio::net::UnixListener::bind(&tm_path).map_err(rd_err)?;
        std::fs::set_permissions(&tm_path, std::fs::Permissions::from_mode(0o600))
            .map_err(rd_err)?;
        (listener, admin_listener, tm_listener)
    };
    let (mesh, links) = match link_plan {
        Some(mesh_config) => {
            let addr = mesh_config.addrs[node_index];
            let (mesh, links) = rt
                .block_on(tpmon_link::Mesh::start(mesh_config))
                .map_err(|source| DaemonError::Link { addr, source })?;
            (Some(mesh), Some(links))
        }
        None => (None, None),
    };
    let remote = match &mesh {
        Some(mesh) => Some(Arc::new(
            crate::remote::Remote::new(&config, node_index, mesh.clone(), relay.reply_address())
                .map_err(|e| DaemonError::Ipc(format!("the remote-call socket: {e}")))?,
        )),
        None => None,
    };
    let tm_links = mesh.as_ref().map(|mesh| {
        let l = crate::tm_link::TmLinks::new(mesh.clone(), node_index as u32, tm.epoch());
        tm.set_links(Arc::new(l.clone()));
        l
    });
    if let Some(mesh) = &mesh {
        sites.link_nodes(
            mesh.clone(),
            node_index as u32,
            config.groups.iter().map(|g| g.node).collect(),
        );
    }
    let (shutdown_tx, _) = watch::channel(false);
    let mut config = config;
    config.domain.listen = listen_addr;
    let dom = Arc::new(Domain {
        config,
        node,
        node_index,
        mesh,
        remote,
        tm_links,
        table,
        welcome,
        servers,
        exe_dir: opts.exe_dir,
        next_client: AtomicU64::new(1),
        clients: AtomicUsize::new(0),
        stopping: AtomicBool::new(false),
        finished: AtomicBool::new(false),
        shutdown_tx,
        relay,
        started: Instant::now(),
        tm,
        sites,
    });
    Ok(Booted {
        rt,
        dom,
        listener,
        admin_listener,
        tm_listener,
        links,
        lock,
    })
}

/// Environment variable: a fixed reconnection back-off for the node links, in
/// milliseconds (the first wait and the longest alike; default 50 ms doubling up to
/// 5 s). Made for tests of CONNECT_GLOBAL_RECOVERY_MEMBER.
pub const LINK_BACKOFF_ENV: &str = "TPMON_LINK_BACKOFF_MS";

/// The mesh this node joins, in a multi-node domain: positions are the indices of the
/// configuration's nodes.
fn link_plan(
    config: &DomainConfig,
    node_index: usize,
) -> Result<Option<tpmon_link::MeshConfig>, DaemonError> {
    if config.nodes.len() < 2 {
        return Ok(None);
    }
    // Validation makes both present in a multi-node domain; a configuration built
    // otherwise is refused rather than run without authenticated links.
    let secret = config.domain.link_secret.as_ref().ok_or_else(|| {
        DaemonError::Config(format!(
            "{}: a multi-node domain needs [domain] link_secret",
            config.source.display()
        ))
    })?;
    let addrs = config
        .nodes
        .iter()
        .map(|n| {
            n.link.ok_or_else(|| {
                DaemonError::Config(format!(
                    "{}: node {:?} has no link address",
                    config.source.display(),
                    n.name
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let identity = tpmon_link::Identity {
        domain: config.domain.name.clone(),
        secret: secret.expose().as_bytes().to_vec(),
        me: node_index as u32,
        members: config.nodes.len() as u32,
    };
    let mut mesh = tpmon_link::MeshConfig::new(identity, addrs);
    if let Some(ms) = std::env::var(LINK_BACKOFF_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        // A fixed back-off (first wait and longest alike), for tests that need the
        // mesh to wait long before reconnecting on its own.
        mesh.backoff_min = Duration::from_millis(ms.max(1));
        mesh.backoff_max = mesh.backoff_min;
    }
    Ok(Some(mesh))
}

/// Hands the frames other nodes send to their owners: calls (requests and responses),
/// INVALIDATE_SHARD_TARGET, CONNECT_GLOBAL_RECOVERY_MEMBER and the answers to CHECK_RECOVERED_NODE to the remote-call
/// state; CHECK_RECOVERED_NODE requests are answered here from the TM's state; the transaction managers'
/// Prepare, Commit, Rollback, QueryAdvice, GET_MAX_SCN and RECOVER_INDOUBT_GLOBAL_TX (requests and responses) to the TM
/// links; Redo (requests and acknowledgements) to the embedded sites; anything else is logged at debug level and dropped. The channel is always drained, or the links would stop reading.
async fn dispatch_links(dom: Arc<Domain>, mut links: mpsc::Receiver<tpmon_link::Incoming>) {
    use tpmon_link::Item;
    while let Some(incoming) = links.recv().await {
        let (from, frame) = (incoming.from, incoming.frame);
        match (&dom.remote, frame.item, frame.response) {
            (Some(remote), Item::Call, false) => remote.on_request(&dom, from, frame),
            (Some(remote), Item::Call, true) => remote.on_response(&dom, from, frame),
            (Some(remote), Item::InvalidateTarget, false) => remote.on_leaving(from),
            (Some(remote), Item::ConnectMember, false) => remote.on_connect_member(from),
            (Some(remote), Item::CheckRecovered, true) => remote.on_recovered_answer(from, frame),
            (Some(_), Item::CheckRecovered, false) => {
                // CHECK_RECOVERED_NODE: 1 once this node's boot recovery has finished.
                let answer = tpmon_link::Frame {
                    response: true,
                    async_seq: frame.async_seq,
                    ..tpmon_link::Frame::request(
                        Item::CheckRecovered,
                        dom.node_index as u32,
                        vec![u8::from(dom.tm.recovered())],
                    )
                };
                if let Some(mesh) = &dom.mesh {
                    if let Err(e) = mesh.send(from, answer) {
                        tracing::debug!(peer = from, error = %e, "could not answer CHECK_RECOVERED_NODE");
                    }
                }
            }
            (
                _,
                Item::Prepare
                | Item::Commit
                | Item::Rollback
                | Item::QueryAdvice
                | Item::GetMaxScn
                | Item::RecoverInDoubt,
                response,
            ) if dom.tm_links.is_some() => {
                if let Some(l) = &dom.tm_links {
                    if response {
                        l.on_response(from, frame);
                    } else {
                        l.on_request(&dom, from, frame);
                    }
                }
            }
            (_, Item::Redo, _) => dom.sites.on_link_redo(from, frame),
            _ => tracing::debug!(
                from,
                item = ?frame.item,
                response = frame.response,
                bytes = frame.body.len(),
                "node link: frame dropped (nothing handles it yet)"
            ),
        }
    }
}

async fn serve(
    dom: Arc<Domain>,
    listener: tokio::net::TcpListener,
    admin_listener: tokio::net::UnixListener,
    tm_listener: tokio::net::UnixListener,
    links: Option<mpsc::Receiver<tpmon_link::Incoming>>,
    ready: Option<ReadyNotice>,
) -> Result<(), DaemonError> {
    tracing::info!(
        domain = %dom.config.domain.name,
        node = %dom.node,
        listen = %dom.config.domain.listen,
        run_dir = %dom.config.domain.run_dir.display(),
        "booting"
    );
    if let Some(links) = links {
        let link = dom.config.nodes[dom.node_index]
            .link
            .map_or_else(|| "-".to_string(), |a| a.to_string());
        tracing::info!(
            position = dom.node_index,
            %link,
            nodes = dom.config.nodes.len(),
            "node links: joined the mesh"
        );
        tokio::spawn(dispatch_links(dom.clone(), links));
    }
    if let Some(remote) = &dom.remote {
        remote.start_tasks(dom.clone());
    }
    RelayHub::start_reader(dom.clone());
    tokio::spawn(tm_port::serve(dom.clone(), tm_listener));
    {
        // Recovery runs for the daemon's whole life: a panic in it (a bug) is logged
        // and the loop started again, never left silently stopped.
        let dom = dom.clone();
        tokio::spawn(async move {
            loop {
                let mut stop = dom.shutdown_rx();
                let pass = tokio::spawn(dom.tm.clone().run_recovery(async move {
                    let _ = stop.changed().await;
                }));
                match pass.await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::error!(error = %e, "transaction recovery failed; starting it again");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                if dom.is_stopping() {
                    return;
                }
            }
        });
    }
    for (i, s) in dom.config.servers.iter().enumerate() {
        if dom.servers[i].remote.is_some() {
            continue; // another node runs it
        }
        for k in 0..s.min_instances as usize {
            supervise::start_slot(&dom, i, k);
        }
    }
    // Ready once every minimum instance is serving, or its server has given up.
    let boot_deadline = Instant::now()
        + dom
            .config
            .servers
            .iter()
            .map(|s| s.start_timeout)
            .max()
            .unwrap_or(Duration::from_secs(30))
        + Duration::from_secs(1);
    loop {
        let settled = dom.servers.iter().enumerate().all(|(i, s)| {
            s.remote.is_some()
                || s.record.lock().map_or(true, |r| {
                    r.failed.is_some()
                        || r.slots
                            .iter()
                            .take(dom.config.servers[i].min_instances as usize)
                            .all(|x| x.state == "running" || x.state == "stopped")
                })
        });
        if settled || Instant::now() > boot_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let failed: Vec<String> = dom
        .servers
        .iter()
        .filter_map(|s| {
            s.record
                .lock()
                .ok()
                .and_then(|r| r.failed.clone())
                .map(|f| format!("{}: {f}", dom.server_name(s.index)))
        })
        .collect();
    for f in &failed {
        tracing::error!("server failed at boot: {f}");
    }
    tokio::spawn(clients::serve(dom.clone(), listener));
    tokio::spawn(supervise::watchdog(dom.clone()));
    let (down_tx, mut down_rx) = mpsc::unbounded_channel();
    tokio::spawn(admin::serve(dom.clone(), admin_listener, down_tx));
    tracing::info!(listen = %dom.config.domain.listen, "domain is ready");
    if let Some(n) = ready {
        n.send(&format!(
            "ready {} {}",
            std::process::id(),
            dom.config.domain.listen
        ));
    }

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(DaemonError::Runtime)?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(DaemonError::Runtime)?;
    let mut waiting_admins = Vec::new();
    tokio::select! {
        s = down_rx.recv() => waiting_admins.extend(s),
        _ = sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = sigint.recv() => tracing::info!("SIGINT: shutting down"),
    }
    dom.stopping.store(true, Ordering::Release);
    if let Some(remote) = &dom.remote {
        // The other nodes stop routing new calls here at once; the calls already
        // queued are served before the instances stop.
        remote.announce_leaving();
    }
    let _ = dom.shutdown_tx.send(true);
    supervise::stop_all(&dom).await;
    dom.finished.store(true, Ordering::Release);
    while let Ok(s) = down_rx.try_recv() {
        waiting_admins.push(s);
    }
    let run_dir = &dom.config.domain.run_dir;
    for s in dom.servers.iter().filter(|s| s.queue.is_some()) {
        let _ = std::fs::remove_file(&s.queue_path);
    }
    if let Some(remote) = &dom.remote {
        let _ = std::fs::remove_file(remote.socket_path());
    }
    let _ = std::fs::remove_file(run_dir.join(ADMIN_SOCKET));
    let _ = std::fs::remove_file(run_dir.join(tm_port::TM_SOCKET));
    let _ = std::fs::remove_file(run_dir.join("host.token"));
    let _ = std::fs::remove_file(run_dir.join(PID_FILE));
    for mut s in waiting_admins {
        admin::reply(&mut s, true, "domain is down".into()).await;
    }
    tracing::info!("domain is down");
    Ok(())
}

/// Takes the run directory's lock; a second daemon for the same run directory is
/// refused with the first one's pid.
fn lock_pid_file(config: &DomainConfig, run_dir: &Path) -> Result<File, DaemonError> {
    let path = run_dir.join(PID_FILE);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|source| DaemonError::RunDir {
            path: path.clone(),
            source,
        })?;
    // SAFETY: flock on a descriptor we own.
    let rc = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    if rc != 0 {
        let mut pid = String::new();
        let _ = f.read_to_string(&mut pid);
        return Err(DaemonError::AlreadyRunning {
            domain: config.domain.name.clone(),
            pid: pid.trim().to_string(),
            run_dir: run_dir.to_path_buf(),
        });
    }
    let io = |source| DaemonError::RunDir {
        path: path.clone(),
        source,
    };
    f.set_len(0).map_err(io)?;
    f.write_all(format!("{}\n", std::process::id()).as_bytes())
        .map_err(io)?;
    Ok(f)
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    match File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)) {
        Ok(()) => u64::from_be_bytes(b),
        Err(_) => tpmon_ipc::monotonic_us() ^ (u64::from(std::process::id()) << 32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A configuration a tool read, with a daemon-only value left empty, is never
    /// run: the daemon reports the unset variable instead of opening "".
    #[test]
    fn a_configuration_read_as_a_tool_is_refused() {
        let text =
            "[domain]\nname = \"x\"\nlisten = \"127.0.0.1:7480\"\nrun_dir = \"/nonexistent/run\"\n\
                    [[group]]\nname = \"g\"\nrm = { kind = \"embedded\", open = \"${SITE}\" }\n";
        let cfg = tpmon_config::parse_with_env_for(
            text,
            std::path::Path::new("/etc/x.toml"),
            &|_| None,
            tpmon_config::Reader::Tool,
        )
        .expect("a tool reads it");
        assert_eq!(cfg.unresolved.len(), 1);
        match run(cfg, BootOptions::default()) {
            Err(DaemonError::Config(m)) => {
                assert!(
                    m.contains("`SITE` is not set") && m.contains("/etc/x.toml:7:"),
                    "{m}"
                )
            }
            other => panic!("expected a configuration error, got {other:?}"),
        }
    }
}
