//! The relay: requests that the daemon itself puts into a server queue of this node,
//! with the daemon's own reply address, and whose replies it hands on. They come from
//! remote TCP clients (one extra hop: client → daemon → server queue, and the reply
//! back) and from other nodes (a node link's Call frame: the reply goes back as the
//! Call response, see `remote`).
//!
//! Owns the map from the daemon's call ids to where each reply goes (a connection and
//! the client's call id, or a peer node and the link's call id), and the counters that
//! bound them. A reply whose destination is gone is dropped; a connection that closes,
//! and a node whose link goes down, forget their calls. It must not route between
//! nodes (the `remote` module does).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tpmon_ipc::{Endpoint, IpcError};
use tpmon_proto::{ErrorKind, Flags, Message, RemoteCall, Reply, ReplyStatus, Request};

use crate::domain::Domain;

/// Frames queued for one client connection.
pub type ConnSender = mpsc::UnboundedSender<Vec<u8>>;

/// Where the reply to a relayed request goes.
pub enum ReplyTo {
    /// A relayed client's TCP connection.
    Conn {
        /// The connection.
        conn: u64,
        /// The client's call id.
        client_call: u64,
        /// The connection's outgoing frames.
        tx: ConnSender,
    },
    /// Another node, which sent the call over its link: a Call response frame.
    Peer {
        /// Its position.
        peer: u32,
        /// The link's call id (the frame's async sequence).
        link_call: u64,
        /// The link's `downs` count when the call arrived: once it changes, the
        /// caller's node has failed the call, and the reply is not sent.
        downs: u64,
    },
}

struct PendingRelay {
    to: ReplyTo,
    /// Calls in flight of the connection or peer; decremented when the entry goes.
    counter: Arc<AtomicUsize>,
    /// When to forget the call if no reply came (the caller stopped waiting).
    expires: Option<Instant>,
}

/// The daemon's reply address and the calls relayed through it.
pub struct RelayHub {
    /// Sending socket (also used to answer callers of dead instances and local
    /// callers of other nodes' services).
    pub tx: Endpoint,
    rx_name: Vec<u8>,
    rx: Mutex<Option<Endpoint>>,
    pending: Mutex<HashMap<u64, PendingRelay>>,
    next: AtomicU64,
}

/// A reply with an error, for a call that could not be relayed.
pub fn error_reply(call_id: u64, kind: ErrorKind, detail: impl Into<String>) -> Reply {
    Reply {
        call_id,
        status: ReplyStatus::Error(kind),
        urcode: 0,
        buffer: None,
        detail: detail.into(),
        branches: Vec::new(),
    }
}

/// Why a request could not be put into a queue: the kind the caller gets, and why.
pub type InjectError = (ErrorKind, String);

impl RelayHub {
    /// Binds the daemon's reply and send sockets.
    pub fn new(domain: &str, message_bytes_max: usize) -> Result<RelayHub, IpcError> {
        let mut rx = Endpoint::bind_abstract(&format!("tpmon/{domain}/daemon"), message_bytes_max)?;
        // Replies relayed to remote clients must come from this user's processes.
        rx.refuse_other_users()?;
        let tx = Endpoint::bind_abstract(&format!("tpmon/{domain}/daemon-tx"), message_bytes_max)?;
        Ok(RelayHub {
            tx,
            rx_name: rx.name().to_vec(),
            rx: Mutex::new(Some(rx)),
            pending: Mutex::new(HashMap::new()),
            // Unguessable ids: a reply is accepted only for a pending id, so another
            // local user cannot forge one without guessing 63 random bits.
            next: AtomicU64::new(tpmon_ipc::random_u64() >> 1),
        })
    }

    /// The daemon's reply address (the `reply_to` of the requests it relays).
    pub fn reply_address(&self) -> &[u8] {
        &self.rx_name
    }

    /// Starts the thread that receives replies and hands them on.
    pub fn start_reader(dom: Arc<Domain>) {
        let Some(mut rx) = dom.relay.rx.lock().ok().and_then(|mut g| g.take()) else {
            return;
        };
        let spawned = std::thread::Builder::new()
            .name("tpmon-relay".into())
            .spawn(move || {
                let _ = rx.set_recv_timeout(Some(Duration::from_millis(200)));
                // Until the daemon is down: the requests still queued at a shutdown
                // are served, and their replies go to the nodes that sent them.
                while !dom.is_finished() {
                    let got = match rx.recv(false) {
                        Ok(g) => g,
                        Err(IpcError::TimedOut) => continue,
                        Err(e) => {
                            tracing::warn!(error = %e, "relay: dropped a datagram");
                            continue;
                        }
                    };
                    let Ok(Message::Reply(mut reply)) = Message::decode(&got.body) else {
                        tracing::warn!("relay: dropped a datagram that is not a reply");
                        continue;
                    };
                    let entry = dom
                        .relay
                        .pending
                        .lock()
                        .ok()
                        .and_then(|mut p| p.remove(&reply.call_id));
                    let Some(p) = entry else { continue };
                    p.counter.fetch_sub(1, Ordering::AcqRel);
                    match p.to {
                        ReplyTo::Conn {
                            client_call, tx, ..
                        } => {
                            reply.call_id = client_call;
                            let _ = tx.send(Message::Reply(reply).encode());
                        }
                        ReplyTo::Peer {
                            peer, link_call, ..
                        } => {
                            if let Some(remote) = &dom.remote {
                                remote.respond(peer, link_call, reply);
                            }
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the relay thread");
        }
    }

    /// Forgets the calls whose destination is gone or stopped waiting: those of
    /// connection `conn` (when given), those of peers for which `peer_gone(peer,
    /// downs)` holds (their link went down), and those past their expiry.
    pub fn forget(
        &self,
        conn: Option<u64>,
        mut peer_gone: impl FnMut(u32, u64) -> bool,
        now: Instant,
    ) {
        if let Ok(mut p) = self.pending.lock() {
            p.retain(|_, v| {
                let gone = match &v.to {
                    ReplyTo::Conn { conn: c, .. } => Some(*c) == conn,
                    ReplyTo::Peer { peer, downs, .. } => peer_gone(*peer, *downs),
                } || v.expires.is_some_and(|e| e <= now);
                if gone {
                    v.counter.fetch_sub(1, Ordering::AcqRel);
                }
                !gone
            });
        }
    }

    /// Forgets every call of a closed connection.
    pub fn forget_connection(&self, conn: u64) {
        self.forget(Some(conn), |_, _| false, Instant::now());
    }

    /// Relays one request of connection `conn`: into a queue of this node, or, for a
    /// service only other nodes offer, to one of them (`timeout_ms` is the caller's,
    /// when it sent a [`RemoteCall`]). On failure returns the error reply the client
    /// should get (built once per failed call, so its size does not matter).
    #[allow(clippy::result_large_err)]
    pub async fn relay(
        &self,
        dom: &Domain,
        conn: u64,
        tx: &ConnSender,
        outstanding: &Arc<AtomicUsize>,
        req: Request,
        timeout_ms: Option<u32>,
    ) -> Result<(), Reply> {
        let client_call = req.call_id;
        let fail = |(kind, detail): InjectError| Err(error_reply(client_call, kind, detail));
        let noreply = req.flags.contains(Flags::NOREPLY);
        let limit = dom.config.limits.pending_calls_max as usize;
        if !noreply && outstanding.load(Ordering::Acquire) >= limit {
            return fail((
                ErrorKind::Limit,
                format!("{limit} calls are already outstanding (pending_calls_max)"),
            ));
        }
        let Some((_, route)) = dom.welcome.local_route(&req.service) else {
            if let (Some(remote), false) = (
                &dom.remote,
                dom.welcome.remote_nodes(&req.service).is_empty(),
            ) {
                let blocking = dom.config.limits.blocking_timeout.as_millis();
                let call = RemoteCall {
                    timeout_ms: timeout_ms.unwrap_or(blocking.min(u128::from(u32::MAX)) as u32),
                    request: req,
                };
                let origin = crate::remote::Origin::Conn {
                    conn,
                    client_call,
                    tx: tx.clone(),
                    outstanding: outstanding.clone(),
                };
                return remote.start(call, origin).or_else(fail);
            }
            return fail((
                ErrorKind::NoEnt,
                format!("no service named {}", req.service),
            ));
        };
        if route.conversational {
            return fail((
                ErrorKind::NoEnt,
                format!("{} is conversational", req.service),
            ));
        }
        let server = route.server as usize;
        let to = ReplyTo::Conn {
            conn,
            client_call,
            tx: tx.clone(),
        };
        let give_up = Instant::now() + dom.config.limits.blocking_timeout;
        if !noreply {
            outstanding.fetch_add(1, Ordering::AcqRel);
        }
        self.inject(dom, server, req, to, outstanding.clone(), None, give_up)
            .await
            .or_else(fail)
    }

    /// Puts `req` into the queue of this node's `server` with the daemon's reply
    /// address; the reply will go to `to` (unless the request is TPNOREPLY). Unless it
    /// is TPNOREPLY the caller has already counted the call in `counter` (so that a
    /// burst cannot pass the bound before any call is counted); it is uncounted when
    /// the reply comes, when the call is forgotten, or here when it fails. A full
    /// queue is waited on until `give_up` (TPETIME), or refused at once with
    /// TPNOBLOCK (TPEBLOCK).
    #[allow(clippy::too_many_arguments)]
    pub async fn inject(
        &self,
        dom: &Domain,
        server: usize,
        mut req: Request,
        to: ReplyTo,
        counter: Arc<AtomicUsize>,
        expires: Option<Instant>,
        give_up: Instant,
    ) -> Result<(), InjectError> {
        let noreply = req.flags.contains(Flags::NOREPLY);
        let uncount = |e: InjectError| {
            if !noreply {
                counter.fetch_sub(1, Ordering::AcqRel);
            }
            Err(e)
        };
        let Some(srv) = dom.servers.get(server).filter(|s| s.queue.is_some()) else {
            return uncount((
                ErrorKind::System,
                format!("server {server} has no queue on this node"),
            ));
        };
        let max = u64::from(dom.config.servers[server].queue_max);
        let nonblock = req.flags.contains(Flags::NOBLOCK);
        while !dom.table.queue_reserve(server, max) {
            if nonblock {
                return uncount((ErrorKind::Block, "the service queue is full".into()));
            }
            if Instant::now() >= give_up {
                return uncount((
                    ErrorKind::Time,
                    "timed out waiting for room in the queue".into(),
                ));
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        req.call_id = id;
        req.reply_to = self.rx_name.clone();
        if !noreply {
            if let Ok(mut p) = self.pending.lock() {
                p.insert(
                    id,
                    PendingRelay {
                        to,
                        counter: counter.clone(),
                        expires,
                    },
                );
            }
        }
        let body = Message::Request(req).encode();
        let result = loop {
            match self
                .tx
                .send_to_path(Path::new(&srv.queue_path), &body, true)
            {
                Err(IpcError::WouldBlock) if !nonblock && Instant::now() < give_up => {
                    tokio::time::sleep(Duration::from_micros(500)).await;
                }
                other => break other,
            }
        };
        if result.is_ok() {
            dom.table.after_send(server);
        }
        if let Err(e) = result {
            dom.table.queue_release(server);
            if !noreply {
                // Unless the entry went already (a forget counted it off).
                let removed = self.pending.lock().ok().and_then(|mut p| p.remove(&id));
                if removed.is_some() {
                    counter.fetch_sub(1, Ordering::AcqRel);
                }
            }
            let kind = match e {
                IpcError::WouldBlock => ErrorKind::Block,
                IpcError::TooLarge { .. } => ErrorKind::Limit,
                _ => ErrorKind::System,
            };
            return Err((kind, e.to_string()));
        }
        Ok(())
    }
}
