//! The relay for clients that cannot reach the service queues themselves (remote TCP
//! clients): one extra hop, client → daemon → server queue, and the reply back.
//!
//! Owns the map from the daemon's call ids to (connection, client call id). A reply
//! whose connection is gone is dropped; a connection that closes forgets its calls.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tpmon_ipc::{Endpoint, IpcError};
use tpmon_proto::{ErrorKind, Flags, Message, Reply, ReplyStatus, Request};

use crate::domain::Domain;

/// Frames queued for one client connection.
pub type ConnSender = mpsc::UnboundedSender<Vec<u8>>;

struct PendingRelay {
    conn: u64,
    client_call: u64,
    tx: ConnSender,
    outstanding: Arc<AtomicUsize>,
}

/// The daemon's reply address and the calls relayed through it.
pub struct RelayHub {
    /// Sending socket (also used to answer callers of dead instances).
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

    /// Starts the thread that receives replies and hands them to connections.
    pub fn start_reader(dom: Arc<Domain>) {
        let Some(mut rx) = dom.relay.rx.lock().ok().and_then(|mut g| g.take()) else {
            return;
        };
        let spawned = std::thread::Builder::new()
            .name("tpmon-relay".into())
            .spawn(move || {
                let _ = rx.set_recv_timeout(Some(Duration::from_millis(200)));
                while !dom.is_stopping() {
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
                    if let Some(p) = entry {
                        p.outstanding.fetch_sub(1, Ordering::AcqRel);
                        reply.call_id = p.client_call;
                        let _ = p.tx.send(Message::Reply(reply).encode());
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the relay thread");
        }
    }

    /// Forgets every call of a closed connection.
    pub fn forget_connection(&self, conn: u64) {
        if let Ok(mut p) = self.pending.lock() {
            p.retain(|_, v| v.conn != conn);
        }
    }

    /// Relays one request of connection `conn`. On failure returns the error reply
    /// the client should get (built once per failed call, so its size does not matter).
    #[allow(clippy::result_large_err)]
    pub async fn relay(
        &self,
        dom: &Domain,
        conn: u64,
        tx: &ConnSender,
        outstanding: &Arc<AtomicUsize>,
        mut req: Request,
    ) -> Result<(), Reply> {
        let client_call = req.call_id;
        let fail = |kind, detail: String| Err(error_reply(client_call, kind, detail));
        let Some(route) = dom.welcome.services.iter().find(|s| s.name == req.service) else {
            return fail(
                ErrorKind::NoEnt,
                format!("no service named {}", req.service),
            );
        };
        if let Some(node) = dom.welcome.remote_node(route) {
            return fail(
                ErrorKind::NoEnt,
                tpmon_proto::remote_service_detail(&req.service, node),
            );
        }
        if route.conversational {
            return fail(
                ErrorKind::NoEnt,
                format!("{} is conversational", req.service),
            );
        }
        let noreply = req.flags.contains(Flags::NOREPLY);
        let limit = dom.config.limits.pending_calls_max as usize;
        if !noreply && outstanding.load(Ordering::Acquire) >= limit {
            return fail(
                ErrorKind::Limit,
                format!("{limit} calls are already outstanding"),
            );
        }
        let server = route.server as usize;
        let srv = &dom.servers[server];
        let max = u64::from(dom.config.servers[server].queue_max);
        let nonblock = req.flags.contains(Flags::NOBLOCK);
        let give_up = Instant::now() + dom.config.limits.blocking_timeout;
        while !dom.table.queue_reserve(server, max) {
            if nonblock {
                return fail(ErrorKind::Block, "the service queue is full".into());
            }
            if Instant::now() >= give_up {
                return fail(
                    ErrorKind::Time,
                    "timed out waiting for room in the queue".into(),
                );
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        req.call_id = id;
        req.reply_to = self.rx_name.clone();
        if !noreply {
            outstanding.fetch_add(1, Ordering::AcqRel);
            if let Ok(mut p) = self.pending.lock() {
                p.insert(
                    id,
                    PendingRelay {
                        conn,
                        client_call,
                        tx: tx.clone(),
                        outstanding: outstanding.clone(),
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
                outstanding.fetch_sub(1, Ordering::AcqRel);
                if let Ok(mut p) = self.pending.lock() {
                    p.remove(&id);
                }
            }
            let kind = match e {
                IpcError::WouldBlock => ErrorKind::Block,
                IpcError::TooLarge { .. } => ErrorKind::Limit,
                _ => ErrorKind::System,
            };
            return fail(kind, e.to_string());
        }
        Ok(())
    }
}
