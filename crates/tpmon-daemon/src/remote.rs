//! Calls between nodes: routing a call for a service that this node does not run to a
//! node that does, over the node links, and serving the calls other nodes route here.
//!
//! The caller's side. Local callers (clients and server instances on this host) send
//! a `RemoteCall` datagram to `run_dir/remote.sock`; relayed clients send theirs on
//! their TCP session (`relay`). The daemon picks a node offering the service whose
//! link is up in both directions, that answered CHECK_RECOVERED_NODE with "recovered"
//! on that link (asked when the link comes up) and that has not announced it is
//! leaving, round-robin
//! among them per service, and sends a Call frame (its async sequence is this daemon's
//! link call id). The Call response carries the Reply, which goes to the caller as a
//! local reply would (a datagram to its reply address, or a frame on its connection).
//! When the link to a node goes down (or is replaced), every call in flight to it is
//! answered at once with TPESVCERR: the service may or may not have run.
//!
//! The serving side. A Call frame from another node is put into the local server's
//! queue by the relay with the daemon's reply address; the reply goes back as the Call
//! response. A malformed frame closes nothing: it is answered with an error and logged
//! with the peer's position.
//!
//! Owns the outgoing calls in flight (link call id → caller), the choice of node, the
//! per-link and per-caller bounds of outgoing calls and the per-link bound of incoming
//! ones, and the per-node counters shown in `tpmon status`. It must not put requests
//! into queues itself (the relay does), route a call a second time (a node serves only
//! its own services: no multi-hop). A call inside a global transaction carries its
//! TxContext to the serving node, whose servers join it with branches of their own
//! groups and report them in the Reply (the coordinator's TM ends them through the
//! serving node's TM: `tm_link`).

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tpmon_config::DomainConfig;
use tpmon_ipc::{Endpoint, IpcError};
use tpmon_link::{Frame, Item, Mesh, SendError};
use tpmon_proto::{ErrorKind, Flags, Message, RemoteCall, Reply, Request};

use crate::domain::Domain;
use crate::relay::{error_reply, ConnSender, InjectError, ReplyTo};

/// How long past a caller's timeout the daemons keep a call's state (the caller has
/// stopped waiting by then; a reply arriving later is dropped).
const EXPIRY_GRACE: Duration = Duration::from_secs(1);
/// How often expired calls are swept (link failures are acted on at once).
const SWEEP_PERIOD: Duration = Duration::from_millis(100);
/// How often a node that answered "recovering" is asked again.
const CHECK_PERIOD: Duration = Duration::from_millis(200);
/// Bytes a Call or Reply message adds around a frame of `frame_bytes_max` (its
/// timeout, the message kind): what the configuration keeps free in a link packet.
const LINK_CALL_ENVELOPE_BYTES: usize = 4096;
const _: () = assert!(
    tpmon_config::LINK_FRAME_BYTES_MAX as usize + LINK_CALL_ENVELOPE_BYTES
        <= tpmon_link::frame::BODY_BYTES_MAX
);

/// Why no new call goes to a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unroutable {
    /// Its link is down.
    Down,
    /// It announced that it is shutting down.
    Leaving,
    /// It has not answered that its boot recovery has finished.
    Recovering,
}

/// Who waits for the reply of a call sent to another node.
pub enum Origin {
    /// A caller on this host: the reply is a datagram to its address.
    Local {
        /// Its reply address.
        reply_to: Vec<u8>,
        /// Its call id.
        call_id: u64,
    },
    /// A relayed client: the reply is a frame on its connection.
    Conn {
        /// The connection.
        conn: u64,
        /// The client's call id.
        client_call: u64,
        /// The connection's outgoing frames.
        tx: ConnSender,
        /// The connection's calls in flight (bounded by `pending_calls_max`).
        outstanding: Arc<AtomicUsize>,
    },
}

/// One call sent to another node, awaiting its response.
struct OutCall {
    peer: u32,
    /// The link's `downs` count when the call was sent.
    downs: u64,
    /// When the call is given up: the caller's timeout, or the blocking timeout for
    /// a caller without one (TPNOTIME), plus [`EXPIRY_GRACE`].
    expires: Instant,
    /// The caller has no timeout: at expiry it is answered TPETIME (a caller with a
    /// timeout has stopped waiting by then).
    notime: bool,
    origin: Origin,
    service: String,
}

#[derive(Default)]
struct OutTable {
    calls: HashMap<u64, OutCall>,
    /// Calls in flight per local caller (by reply address).
    per_caller: HashMap<Vec<u8>, usize>,
}

/// Counters of the calls exchanged with one other node.
#[derive(Default)]
struct PeerCalls {
    sent: AtomicU64,
    received: AtomicU64,
    failed_link: AtomicU64,
    /// Calls sent to that node and awaited.
    out_now: AtomicUsize,
    /// Calls that node sent here, being served.
    in_now: Arc<AtomicUsize>,
    /// `downs + 1` of the link when the node announced it is leaving
    /// (INVALIDATE_SHARD_TARGET); 0: it did not. Routing skips it while the link's
    /// `downs` count is unchanged.
    leaving: AtomicU64,
    /// `downs + 1` of the link when the node answered CHECK_RECOVERED_NODE with
    /// "recovered"; routing skips it while this differs from the link's count (a node
    /// that restarted takes new work only once its boot recovery has finished).
    recovered: AtomicU64,
    /// When CHECK_RECOVERED_NODE was last sent to it (ms since the daemon started).
    asked_ms: AtomicU64,
    /// CONNECT_GLOBAL_RECOVERY_MEMBER has been sent to it since this daemon booted.
    member_sent: std::sync::atomic::AtomicBool,
    /// `downs + 1` of the link on which our INVALIDATE_SHARD_TARGET was last sent to
    /// it (0: never); while we are leaving, it is sent again on every new link.
    leaving_sent: AtomicU64,
}

/// The calls of one node daemon to and from the other nodes.
pub struct Remote {
    mesh: Arc<Mesh>,
    me: u32,
    nodes: Vec<String>,
    /// Service → the positions of the other nodes offering it, with a round-robin
    /// counter.
    offers: HashMap<String, (Vec<u32>, AtomicUsize)>,
    out: Mutex<OutTable>,
    next: AtomicU64,
    peers: Vec<PeerCalls>,
    link_calls_max: usize,
    pending_calls_max: usize,
    /// The caller's limit for calls without a timeout (TPNOTIME), and how long a
    /// reply may wait for room on a congested link.
    blocking_timeout: Duration,
    /// This node announced that it is shutting down.
    leaving: std::sync::atomic::AtomicBool,
    /// The daemon's own reply address: calls forwarded on behalf of relayed clients
    /// and other nodes carry it, and are bounded where they entered this node, not as
    /// one caller.
    relay_address: Vec<u8>,
    /// `run_dir/remote.sock`, taken by the reader thread.
    socket: Mutex<Option<Endpoint>>,
    path: PathBuf,
    /// The origin of `PeerCalls::asked_ms`.
    born: Instant,
}

/// A peer's counters for `tpmon status`.
pub struct PeerCounters {
    /// Calls sent to it.
    pub sent: u64,
    /// Calls it sent here.
    pub received: u64,
    /// Calls to it answered with TPESVCERR because its link went down.
    pub failed_link: u64,
    /// Calls sent to it and awaited now.
    pub in_flight: usize,
    /// Calls it sent here being served now.
    pub serving: usize,
    /// New calls may be routed to it: the link is up, it answered that its boot
    /// recovery has finished and it did not announce that it is leaving.
    pub routable: bool,
    /// It answered CHECK_RECOVERED_NODE with "recovered" on the current link.
    pub recovered: bool,
}

impl Remote {
    /// The remote-call state of node `me` of `config`, with its socket bound at
    /// `run_dir/remote.sock`; `relay_address` is the daemon's own reply address.
    pub fn new(
        config: &DomainConfig,
        me: usize,
        mesh: Arc<Mesh>,
        relay_address: &[u8],
    ) -> Result<Remote, IpcError> {
        let path = config.domain.run_dir.join(tpmon_proto::REMOTE_SOCKET);
        let socket = Endpoint::bind_path(&path, config.limits.frame_bytes_max as usize)?;
        let mut offers: HashMap<String, (Vec<u32>, AtomicUsize)> = HashMap::new();
        for s in &config.services {
            let node = config.groups[config.servers[s.server].group].node;
            if node == me {
                continue;
            }
            let entry = offers.entry(s.name.clone()).or_default();
            if !entry.0.contains(&(node as u32)) {
                entry.0.push(node as u32);
            }
        }
        Ok(Remote {
            mesh,
            me: me as u32,
            nodes: config.nodes.iter().map(|n| n.name.clone()).collect(),
            offers,
            out: Mutex::new(OutTable::default()),
            next: AtomicU64::new(tpmon_ipc::random_u64() >> 1),
            peers: config.nodes.iter().map(|_| PeerCalls::default()).collect(),
            link_calls_max: config.limits.link_calls_max as usize,
            pending_calls_max: config.limits.pending_calls_max as usize,
            blocking_timeout: config.limits.blocking_timeout,
            leaving: std::sync::atomic::AtomicBool::new(false),
            relay_address: relay_address.to_vec(),
            socket: Mutex::new(Some(socket)),
            path,
            born: Instant::now(),
        })
    }

    /// The path of the remote-call socket (removed at shutdown).
    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    fn name(&self, peer: u32) -> &str {
        self.nodes.get(peer as usize).map_or("?", String::as_str)
    }

    fn out(&self) -> std::sync::MutexGuard<'_, OutTable> {
        self.out.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Why no new call may go to `peer` now, or its link's `downs` count when one
    /// may: the link is up, `peer` answered that its recovery has finished and did
    /// not announce it is leaving.
    fn route_state(&self, peer: u32) -> Result<u64, Unroutable> {
        let (up, downs) = self.mesh.link_state(peer).ok_or(Unroutable::Down)?;
        let c = &self.peers[peer as usize];
        if !up {
            Err(Unroutable::Down)
        } else if c.leaving.load(Ordering::Acquire) == downs.wrapping_add(1) {
            Err(Unroutable::Leaving)
        } else if c.recovered.load(Ordering::Acquire) != downs.wrapping_add(1) {
            Err(Unroutable::Recovering)
        } else {
            Ok(downs)
        }
    }

    /// The link to `peer` is up, `peer` has recovered and did not announce it is
    /// leaving; its `downs` count.
    fn routable(&self, peer: u32) -> Option<u64> {
        self.route_state(peer).ok()
    }

    /// Picks a node for `service` among those that offer it and can be reached,
    /// round-robin, skipping `tried`.
    fn pick(&self, service: &str, tried: &[u32]) -> Result<(u32, u64), InjectError> {
        let Some((nodes, rr)) = self.offers.get(service) else {
            return Err((ErrorKind::NoEnt, format!("no service named {service}")));
        };
        let mut up: Vec<(u32, u64)> = Vec::new();
        let mut recovering = Vec::new();
        for &p in nodes.iter().filter(|p| !tried.contains(p)) {
            match self.route_state(p) {
                Ok(d) => up.push((p, d)),
                Err(Unroutable::Recovering) => recovering.push(self.name(p)),
                Err(_) => {}
            }
        }
        if up.is_empty() {
            let names: Vec<&str> = nodes.iter().map(|&p| self.name(p)).collect();
            let still = if recovering.is_empty() {
                String::new()
            } else {
                format!(
                    "; {} still recovering after a restart (boot recovery not finished)",
                    tpmon_proto::node_list(&recovering)
                )
            };
            let why = if names.len() == 1 && recovering.is_empty() {
                "which cannot be reached now (its link is down or it is shutting down)".to_string()
            } else if names.len() == 1 {
                "which is still recovering after a restart (boot recovery not finished)".to_string()
            } else {
                format!(
                    "none of which can be reached now (links down or nodes shutting down{still})"
                )
            };
            return Err((
                ErrorKind::NoEnt,
                format!(
                    "service {service:?} is offered on {}, {why}",
                    tpmon_proto::node_list(&names)
                ),
            ));
        }
        let k = rr.fetch_add(1, Ordering::Relaxed) % up.len();
        Ok(up[k])
    }

    /// Sends `call` to a node offering its service; the reply will go to `origin`.
    /// On failure, the error the caller gets (nothing was sent, nothing is kept).
    pub fn start(&self, call: RemoteCall, origin: Origin) -> Result<(), InjectError> {
        let RemoteCall {
            timeout_ms,
            mut request,
        } = call;
        let noreply = request.flags.contains(Flags::NOREPLY);
        if !noreply {
            let busy = match &origin {
                Origin::Local { reply_to, .. } if *reply_to == self.relay_address => 0,
                Origin::Local { reply_to, .. } => {
                    self.out().per_caller.get(reply_to).copied().unwrap_or(0)
                }
                Origin::Conn { outstanding, .. } => outstanding.load(Ordering::Acquire),
            };
            if busy >= self.pending_calls_max {
                return Err((
                    ErrorKind::Limit,
                    format!(
                        "{busy} calls of this caller are already in flight (pending_calls_max)"
                    ),
                ));
            }
        }
        // Every call has a lifetime, even without a timeout: a reply lost on the way
        // (a link too congested to carry it) must not keep its caller waiting forever.
        let notime = timeout_ms == 0;
        let lifetime = if notime {
            self.blocking_timeout
        } else {
            Duration::from_millis(u64::from(timeout_ms))
        };
        let expires = Instant::now() + lifetime + EXPIRY_GRACE;
        let service = request.service.clone();
        let client = request.client.0;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        request.call_id = id;
        request.reply_to = Vec::new();
        let body = Message::Call(RemoteCall {
            timeout_ms,
            request,
        })
        .encode();
        let mut tried = Vec::new();
        let mut origin = Some(origin);
        // A node that cannot take the call now (link_calls_max reached, its link
        // busy) is skipped like one whose link is down; only when no node is left is
        // the caller told why the last one refused (TPELIMIT).
        let mut saturated: Option<InjectError> = None;
        loop {
            let (peer, downs) = match self.pick(&service, &tried) {
                Ok(x) => x,
                Err(e) => return Err(saturated.unwrap_or(e)),
            };
            let counters = &self.peers[peer as usize];
            // Counted before the check passes, so that concurrent callers cannot
            // pass the bound together; `release` uncounts it. A TPNOREPLY call is
            // checked against the bound too, but not kept (no reply will end it).
            let taken = counters.out_now.fetch_add(1, Ordering::AcqRel);
            if noreply || taken >= self.link_calls_max {
                counters.out_now.fetch_sub(1, Ordering::AcqRel);
            }
            if taken >= self.link_calls_max {
                tried.push(peer);
                saturated = Some((
                    ErrorKind::Limit,
                    format!(
                        "{} calls to node {:?} are in flight already (link_calls_max)",
                        self.link_calls_max,
                        self.name(peer)
                    ),
                ));
                continue;
            }
            // Recorded before sending, so that the fastest response finds it.
            if let Some(o) = origin.take().filter(|_| !noreply) {
                self.insert(
                    id,
                    OutCall {
                        peer,
                        downs,
                        expires,
                        notime,
                        origin: o,
                        service: service.clone(),
                    },
                );
            }
            let mut frame = Frame::request(Item::Call, self.me, body.clone());
            frame.async_seq = id;
            frame.session = client;
            match self.mesh.send(peer, frame) {
                Ok(()) => {
                    counters.sent.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Err(e) => {
                    if !noreply {
                        match self.remove(id) {
                            Some(c) => origin = Some(c.origin),
                            // The sweep saw the link go down first and answered the
                            // caller (TPESVCERR): nothing is left to do.
                            None => return Ok(()),
                        }
                    }
                    match e {
                        // The link went down since it was picked: try another node.
                        SendError::Down(_) | SendError::NoSuchMember(_) => tried.push(peer),
                        SendError::Busy(_) => {
                            tried.push(peer);
                            saturated = Some((
                                ErrorKind::Limit,
                                format!("the link to node {:?} is busy", self.name(peer)),
                            ));
                        }
                        SendError::TooLarge { size, max } => {
                            return Err((
                                ErrorKind::Limit,
                                format!(
                                    "the call is {size} bytes with its frame; node links \
                                     carry at most {max}"
                                ),
                            ))
                        }
                    }
                }
            }
        }
    }

    /// Records a call whose place in its peer's `out_now` is taken already.
    fn insert(&self, id: u64, call: OutCall) {
        let mut out = self.out();
        match &call.origin {
            Origin::Local { reply_to, .. } => {
                *out.per_caller.entry(reply_to.clone()).or_default() += 1;
            }
            Origin::Conn { outstanding, .. } => {
                outstanding.fetch_add(1, Ordering::AcqRel);
            }
        }
        out.calls.insert(id, call);
    }

    /// Removes a call and releases what counts it.
    fn remove(&self, id: u64) -> Option<OutCall> {
        let mut out = self.out();
        let call = out.calls.remove(&id)?;
        Self::release(&mut out, &self.peers, &call);
        Some(call)
    }

    fn release(out: &mut OutTable, peers: &[PeerCalls], call: &OutCall) {
        peers[call.peer as usize]
            .out_now
            .fetch_sub(1, Ordering::AcqRel);
        match &call.origin {
            Origin::Local { reply_to, .. } => {
                if let Some(n) = out.per_caller.get_mut(reply_to) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        out.per_caller.remove(reply_to);
                    }
                }
            }
            Origin::Conn { outstanding, .. } => {
                outstanding.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Hands a reply to the caller that waits for it.
    fn deliver(dom: &Domain, origin: Origin, mut reply: Reply) {
        match origin {
            Origin::Local { reply_to, call_id } => {
                reply.call_id = call_id;
                let body = Message::Reply(reply).encode();
                match dom.relay.tx.send_to_abstract(&reply_to, &body, true) {
                    Ok(()) | Err(IpcError::Gone(_)) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "could not hand a reply from another node to its caller")
                    }
                }
            }
            Origin::Conn {
                client_call, tx, ..
            } => {
                reply.call_id = client_call;
                let _ = tx.send(Message::Reply(reply).encode());
            }
        }
    }

    /// A Call response from `from`: the reply of one of our calls.
    pub fn on_response(&self, dom: &Domain, from: u32, frame: Frame) {
        let id = frame.async_seq;
        let call = {
            let mut out = self.out();
            match out.calls.get(&id) {
                Some(c) if c.peer == from => {
                    let c = out.calls.remove(&id);
                    if let Some(c) = &c {
                        Self::release(&mut out, &self.peers, c);
                    }
                    c
                }
                _ => None,
            }
        };
        let Some(call) = call else {
            tracing::debug!(
                peer = from,
                id,
                "a reply from another node for a call no one waits for: dropped"
            );
            return;
        };
        let reply = match Message::decode(&frame.body) {
            Ok(Message::Reply(r)) => r,
            other => {
                let what = match other {
                    Ok(_) => "not a reply".to_string(),
                    Err(e) => e.to_string(),
                };
                tracing::warn!(
                    peer = from,
                    node = self.name(from),
                    service = %call.service,
                    "malformed call response from another node: {what}"
                );
                error_reply(
                    id,
                    ErrorKind::System,
                    format!(
                        "node {:?} sent a malformed reply to the call of {}: {what}",
                        self.name(from),
                        call.service
                    ),
                )
            }
        };
        Self::deliver(dom, call.origin, reply);
    }

    /// Sends the reply of a call that `peer` sent here.
    pub fn respond(&self, peer: u32, link_call: u64, mut reply: Reply) {
        reply.call_id = link_call;
        let msg = Message::Reply(reply);
        let frame = Frame {
            response: true,
            async_seq: link_call,
            ..Frame::request(Item::Call, self.me, msg.encode())
        };
        // A congested link makes the reply wait for room rather than be lost.
        match self.mesh.send_or_wait(peer, frame, self.blocking_timeout) {
            Ok(()) => {}
            Err(SendError::TooLarge { size, max }) => {
                // The caller must hear something: a small error in place of the reply.
                tracing::warn!(
                    peer,
                    node = self.name(peer),
                    size,
                    "a reply to another node exceeds the node links' packet limit; answered TPELIMIT"
                );
                let mut error = error_reply(
                    link_call,
                    ErrorKind::Limit,
                    format!(
                        "the reply is {size} bytes with its frame; node links carry at most {max}"
                    ),
                );
                if let Message::Reply(r) = msg {
                    // The branches the call made here, so that the originator's
                    // rollback reaches them at once rather than at the deadline.
                    error.branches = r.branches;
                }
                let frame = Frame {
                    response: true,
                    async_seq: link_call,
                    ..Frame::request(Item::Call, self.me, Message::Reply(error).encode())
                };
                if let Err(e) = self.mesh.send_or_wait(peer, frame, self.blocking_timeout) {
                    tracing::warn!(peer, node = self.name(peer), error = %e, "could not send a reply to another node");
                }
            }
            // Down: the caller's node fails the call itself when it sees the link down.
            Err(e) => {
                tracing::warn!(peer, node = self.name(peer), error = %e, "could not send a reply to another node")
            }
        }
    }

    /// A Call frame from `from`: serve it here, or answer with an error.
    pub fn on_request(self: &Arc<Self>, dom: &Arc<Domain>, from: u32, frame: Frame) {
        let id = frame.async_seq;
        let counters = &self.peers[from as usize];
        counters.received.fetch_add(1, Ordering::Relaxed);
        let request = match Message::decode(&frame.body) {
            Ok(Message::Call(c)) => c,
            other => {
                let what = match other {
                    Ok(_) => "the body is not a call".to_string(),
                    Err(e) => e.to_string(),
                };
                tracing::warn!(
                    peer = from,
                    node = self.name(from),
                    id,
                    "malformed call from another node; answered with an error: {what}"
                );
                self.respond(
                    from,
                    id,
                    error_reply(id, ErrorKind::Proto, format!("malformed call: {what}")),
                );
                return;
            }
        };
        let RemoteCall {
            timeout_ms,
            request,
        } = request;
        let noreply = request.flags.contains(Flags::NOREPLY);
        // A refusal carries the branches the request brought (a forward's prepared
        // branches), so that the originator's rollback reaches them at once.
        let carried = request
            .tx
            .as_ref()
            .map(|t| t.branches.clone())
            .unwrap_or_default();
        let refuse = |kind, detail: String| {
            if !noreply {
                let mut reply = error_reply(id, kind, detail);
                reply.branches = carried.clone();
                self.respond(from, id, reply);
            }
        };
        if dom.is_stopping() {
            return refuse(
                ErrorKind::NoEnt,
                format!("node {:?} is shutting down", self.name(self.me)),
            );
        }
        let Some((_, route)) = dom.welcome.local_route(&request.service) else {
            return refuse(
                ErrorKind::NoEnt,
                format!(
                    "service {:?} is not offered on node {:?}",
                    request.service,
                    self.name(self.me)
                ),
            );
        };
        if route.conversational {
            return refuse(
                ErrorKind::NoEnt,
                format!("{} is conversational", request.service),
            );
        }
        // Counted now, before the call is queued, so that a burst of frames cannot
        // pass the bound (the relay uncounts it when it ends; a TPNOREPLY call is
        // uncounted once it is in the queue, below).
        if counters.in_now.fetch_add(1, Ordering::AcqRel) >= self.link_calls_max {
            counters.in_now.fetch_sub(1, Ordering::AcqRel);
            return refuse(
                ErrorKind::Limit,
                format!(
                    "node {:?} is serving {} calls from node {:?} already (link_calls_max)",
                    self.name(self.me),
                    self.link_calls_max,
                    self.name(from)
                ),
            );
        }
        let downs = self.mesh.link_state(from).map_or(0, |(_, d)| d);
        let server = route.server as usize;
        let now = Instant::now();
        let wait = if timeout_ms == 0 {
            dom.config.limits.blocking_timeout
        } else {
            Duration::from_millis(u64::from(timeout_ms))
        };
        // Kept at most as long as the caller's side keeps the call (see `start`).
        let expires = Some(now + wait + EXPIRY_GRACE * 2);
        // A TPNOREPLY call does not wait for room in a full queue: nobody waits for
        // it, and waiting calls would pile up behind a stuck server (each with a
        // task). It is refused (logged) instead.
        let give_up = if noreply { now } else { now + wait };
        let to = ReplyTo::Peer {
            peer: from,
            link_call: id,
            downs,
        };
        let counter = counters.in_now.clone();
        let (me, dom) = (self.clone(), dom.clone());
        let mut serve = Box::pin(async move {
            let service = request.service.clone();
            let result = dom
                .relay
                .inject(&dom, server, request, to, counter.clone(), expires, give_up)
                .await;
            if noreply {
                counter.fetch_sub(1, Ordering::AcqRel);
            }
            if let Err((kind, detail)) = result {
                if noreply {
                    tracing::warn!(
                        peer = from,
                        node = me.name(from),
                        %service,
                        "a TPNOREPLY call from another node was not queued: {detail}"
                    );
                } else {
                    me.respond(from, id, error_reply(id, kind, detail));
                }
            }
        });
        // Usually the queue has room and the request goes in at once, here: a task
        // (and its wake-up) only for a request that must wait for room.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if serve.as_mut().poll(&mut cx).is_pending() {
            tokio::spawn(serve);
        }
    }

    /// INVALIDATE_SHARD_TARGET from `from`: it is shutting down; route nothing new
    /// to it until its link has gone down and come back.
    pub fn on_leaving(&self, from: u32) {
        if let Some((_, downs)) = self.mesh.link_state(from) {
            self.peers[from as usize]
                .leaving
                .store(downs.wrapping_add(1), Ordering::Release);
            tracing::info!(
                peer = from,
                node = self.name(from),
                "another node is shutting down: no new calls are routed to it"
            );
        }
    }

    /// Tells every other node that this one is shutting down
    /// (INVALIDATE_SHARD_TARGET, empty body): they stop routing new calls here at
    /// once, while the calls already here are served.
    ///
    /// Reliable: the notice waits for room on a busy link, and [`Remote::sweep`]
    /// sends it again on every link that comes up (or is replaced) while this node is
    /// leaving, since the other side forgets it when the link changes.
    pub fn announce_leaving(&self) {
        self.leaving.store(true, Ordering::Release);
        self.resend_leaving();
    }

    /// Sends INVALIDATE_SHARD_TARGET on every link that is up and has not carried it.
    fn resend_leaving(&self) {
        if !self.leaving.load(Ordering::Acquire) {
            return;
        }
        for p in 0..self.nodes.len() as u32 {
            if p == self.me {
                continue;
            }
            let Some((true, downs)) = self.mesh.link_state(p) else {
                continue;
            };
            let sent = &self.peers[p as usize].leaving_sent;
            if sent.swap(downs.wrapping_add(1), Ordering::AcqRel) == downs.wrapping_add(1) {
                continue;
            }
            let frame = Frame::request(Item::InvalidateTarget, self.me, Vec::new());
            if let Err(e) = self.mesh.send_or_wait(p, frame, self.blocking_timeout) {
                // Down since: the next link gets it.
                sent.store(0, Ordering::Release);
                tracing::debug!(peer = p, error = %e, "could not tell another node that this one is leaving");
            }
        }
    }

    /// Fails the calls in flight to nodes whose link went down (or was replaced)
    /// since they were sent, forgets the calls of those nodes being served here, and
    /// drops calls whose caller has stopped waiting.
    pub fn sweep(&self, dom: &Domain) {
        let now = Instant::now();
        let mut out = self.out();
        // The link states are read under the lock of the calls: a call recorded on a
        // link that came up after a snapshot taken earlier would look broken.
        let states: Vec<Option<(bool, u64)>> = (0..self.nodes.len() as u32)
            .map(|p| self.mesh.link_state(p))
            .collect();
        let broken = |peer: u32, downs: u64| {
            states
                .get(peer as usize)
                .copied()
                .flatten()
                .is_none_or(|(up, d)| !up || d != downs)
        };
        let (failed, expired, unanswered) = {
            let ids: Vec<(u64, bool)> = out
                .calls
                .iter()
                .filter_map(|(&id, c)| {
                    if broken(c.peer, c.downs) {
                        Some((id, true))
                    } else if c.expires <= now {
                        Some((id, false))
                    } else {
                        None
                    }
                })
                .collect();
            let mut failed = Vec::new();
            let mut expired = 0usize;
            let mut unanswered = Vec::new();
            for (id, link) in ids {
                if let Some(c) = out.calls.remove(&id) {
                    Self::release(&mut out, &self.peers, &c);
                    if link {
                        failed.push((id, c));
                    } else if c.notime {
                        unanswered.push((id, c));
                    } else {
                        expired += 1;
                    }
                }
            }
            drop(out);
            (failed, expired, unanswered)
        };
        for (id, c) in unanswered {
            // A caller without a timeout still waits: it is told.
            tracing::warn!(
                peer = c.peer,
                node = self.name(c.peer),
                service = %c.service,
                "no reply from another node within the blocking timeout; answered TPETIME"
            );
            let reply = error_reply(
                id,
                ErrorKind::Time,
                format!(
                    "no reply from node {:?} to the call of {} within the blocking timeout \
                     ({:?}); the service may or may not have run",
                    self.name(c.peer),
                    c.service,
                    self.blocking_timeout
                ),
            );
            Self::deliver(dom, c.origin, reply);
        }
        if expired > 0 {
            tracing::debug!(
                expired,
                "calls to other nodes whose callers stopped waiting: forgotten"
            );
        }
        for (id, c) in failed {
            let name = self.name(c.peer).to_string();
            self.peers[c.peer as usize]
                .failed_link
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                peer = c.peer,
                node = %name,
                service = %c.service,
                "the link to another node went down with a call in flight; answered TPESVCERR"
            );
            let reply = error_reply(
                id,
                ErrorKind::SvcErr,
                format!(
                    "the link to node {name:?} went down while the call to {} was in flight; \
                     the service may or may not have run",
                    c.service
                ),
            );
            Self::deliver(dom, c.origin, reply);
        }
        dom.relay.forget(None, broken, now);
        self.check_recovered();
        self.resend_leaving();
    }

    /// Forgets the calls of a relayed client's closed connection.
    pub fn forget_connection(&self, conn: u64) {
        let mut out = self.out();
        let ids: Vec<u64> = out
            .calls
            .iter()
            .filter(|(_, c)| matches!(c.origin, Origin::Conn { conn: k, .. } if k == conn))
            .map(|(&id, _)| id)
            .collect();
        for id in ids {
            if let Some(c) = out.calls.remove(&id) {
                Self::release(&mut out, &self.peers, &c);
            }
        }
    }

    /// The counters of the calls exchanged with the node at `peer`.
    pub fn counters(&self, peer: u32) -> Option<PeerCounters> {
        let c = self.peers.get(peer as usize)?;
        Some(PeerCounters {
            sent: c.sent.load(Ordering::Relaxed),
            received: c.received.load(Ordering::Relaxed),
            failed_link: c.failed_link.load(Ordering::Relaxed),
            in_flight: c.out_now.load(Ordering::Relaxed),
            serving: c.in_now.load(Ordering::Relaxed),
            routable: self.routable(peer).is_some(),
            recovered: self.mesh.link_state(peer).is_some_and(|(up, d)| {
                up && c.recovered.load(Ordering::Acquire) == d.wrapping_add(1)
            }),
        })
    }

    /// Asks CHECK_RECOVERED_NODE of every node whose link is up and that has not
    /// answered "recovered" on it yet (again every [`CHECK_PERIOD`] while it answers
    /// "recovering"). The request's async sequence is the link's `downs` count, so
    /// that an answer from an earlier link is recognised.
    fn check_recovered(&self) {
        let now = self.born.elapsed().as_millis() as u64;
        for p in 0..self.nodes.len() as u32 {
            if p == self.me {
                continue;
            }
            let Some((true, downs)) = self.mesh.link_state(p) else {
                continue;
            };
            let c = &self.peers[p as usize];
            if c.recovered.load(Ordering::Acquire) == downs.wrapping_add(1) {
                continue;
            }
            let last = c.asked_ms.load(Ordering::Acquire);
            if last != 0 && now.saturating_sub(last) < CHECK_PERIOD.as_millis() as u64 {
                continue;
            }
            c.asked_ms.store(now.max(1), Ordering::Release);
            let mut frame = Frame::request(Item::CheckRecovered, self.me, Vec::new());
            frame.async_seq = downs;
            if let Err(e) = self.mesh.send(p, frame) {
                tracing::debug!(peer = p, error = %e, "could not ask another node whether it has recovered");
            }
        }
    }

    /// Sends CONNECT_GLOBAL_RECOVERY_MEMBER, once per boot, to every node our
    /// outbound link to which is up: that node resets its reconnection back-off for
    /// us and, if its own link to us is down, reconnects at once, so that a restarted
    /// node is linked both ways without waiting out the other's back-off. A send that
    /// fails (the link went down again) is retried at the next sweep.
    fn connect_members(&self) {
        for peer in self.mesh.peers() {
            let Some(c) = self.peers.get(peer.position as usize) else {
                continue;
            };
            if !peer.outbound_up || c.member_sent.load(Ordering::Acquire) {
                continue;
            }
            let frame = Frame::request(Item::ConnectMember, self.me, Vec::new());
            match self.mesh.send(peer.position, frame) {
                Ok(()) => {
                    c.member_sent.store(true, Ordering::Release);
                    tracing::info!(
                        peer = peer.position,
                        node = self.name(peer.position),
                        "sent CONNECT_GLOBAL_RECOVERY_MEMBER to another node"
                    );
                }
                Err(e) => tracing::debug!(
                    peer = peer.position,
                    error = %e,
                    "could not send CONNECT_GLOBAL_RECOVERY_MEMBER; retried at the next sweep"
                ),
            }
        }
    }

    /// CONNECT_GLOBAL_RECOVERY_MEMBER from `from`: it (re)joined the mesh, so its
    /// back-off is reset and, if our outbound link to it is down, we reconnect now.
    pub fn on_connect_member(&self, from: u32) {
        let woken = self.mesh.reconnect_now(from);
        tracing::info!(
            peer = from,
            node = self.name(from),
            reconnecting = woken,
            "CONNECT_GLOBAL_RECOVERY_MEMBER from another node: back-off reset"
        );
    }

    /// A CHECK_RECOVERED_NODE answer from `from` (body: 1 recovered, 0 recovering).
    pub fn on_recovered_answer(&self, from: u32, frame: Frame) {
        let Some((true, downs)) = self.mesh.link_state(from) else {
            return;
        };
        let Some(c) = self.peers.get(from as usize) else {
            return;
        };
        if frame.async_seq != downs {
            return; // asked on an earlier link
        }
        if frame.body.first() == Some(&1) {
            if c.recovered.swap(downs.wrapping_add(1), Ordering::AcqRel) != downs.wrapping_add(1) {
                tracing::info!(
                    peer = from,
                    node = self.name(from),
                    "another node has finished its recovery: new calls may be routed to it"
                );
            }
        } else {
            // Asked again at the next sweep after CHECK_PERIOD.
            c.asked_ms.store(
                (self.born.elapsed().as_millis() as u64).max(1),
                Ordering::Release,
            );
            tracing::debug!(
                peer = from,
                node = self.name(from),
                "another node is still recovering: no new calls are routed to it"
            );
        }
    }

    /// Starts the thread that takes local callers' calls from `run_dir/remote.sock`
    /// and the task that acts on link failures and expiries.
    pub fn start_tasks(self: &Arc<Self>, dom: Arc<Domain>) {
        let socket = self.socket.lock().ok().and_then(|mut g| g.take());
        if let Some(mut rx) = socket {
            let (me, d) = (self.clone(), dom.clone());
            let spawned = std::thread::Builder::new()
                .name("tpmon-remote".into())
                .spawn(move || {
                    let _ = rx.set_recv_timeout(Some(Duration::from_millis(200)));
                    // Until the daemon is down: instances finishing the queued
                    // requests during a shutdown may still call other nodes.
                    while !d.is_finished() {
                        match rx.recv(false) {
                            Ok(got) => me.on_local_call(&d, &got.body),
                            Err(IpcError::TimedOut) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, "remote calls: dropped a datagram")
                            }
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start the remote-call thread");
            }
        }
        let me = self.clone();
        tokio::spawn(async move {
            let mut changes = me.mesh.changes();
            let mut tick = tokio::time::interval(SWEEP_PERIOD);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    r = changes.changed() => if r.is_err() { return },
                    _ = tick.tick() => {}
                }
                me.connect_members();
                me.sweep(&dom);
            }
        });
    }

    /// A datagram on `run_dir/remote.sock`: a local caller's call for another node.
    fn on_local_call(&self, dom: &Domain, body: &[u8]) {
        let call = match Message::decode(body) {
            Ok(Message::Call(c)) => c,
            Ok(_) | Err(_) => {
                tracing::warn!("remote calls: dropped a datagram that is not a call");
                return;
            }
        };
        let Request {
            call_id,
            ref reply_to,
            flags,
            ..
        } = call.request;
        let noreply = flags.contains(Flags::NOREPLY);
        if reply_to.is_empty() && !noreply {
            tracing::warn!("remote calls: dropped a call without a reply address");
            return;
        }
        let reply_to = reply_to.clone();
        let origin = Origin::Local {
            reply_to: reply_to.clone(),
            call_id,
        };
        if let Err((kind, detail)) = self.start(call, origin) {
            if !noreply {
                Self::deliver(
                    dom,
                    Origin::Local { reply_to, call_id },
                    error_reply(call_id, kind, detail),
                );
            }
        }
    }
}
