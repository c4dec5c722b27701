//! The mesh of node links (spec 02 §2.4): this member listens on its link address
//! and keeps one connection of its own (active) to every other member, which in turn
//! connects to it (passive). Everything this member sends to a peer goes out on its
//! active connection; everything it receives from a peer arrives on the passive one.
//!
//! Owns the connections, the handshake's time limit, heartbeats and failure
//! detection (a passive connection that carries nothing, not even a heartbeat, for
//! `dead_after` is closed; the passive side answers each heartbeat, and an active
//! connection that hears no answer for `dead_after` is closed too, so a peer whose
//! traffic is dropped, not refused, is found dead from both sides), reconnection with
//! exponential back-off (cut short by [`Mesh::reconnect_now`]), the per-peer
//! state shown by `tpmon status`, and the frame size limit. It must not interpret
//! bodies: frames other than heartbeats go to the owner's channel.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::frame::{check_size, Frame, Item};
use crate::handshake::{self, Identity};

/// Frames waiting to go out to one peer before `send` reports the link busy.
pub const OUTBOX_FRAMES: usize = 4096;

/// How a member joins the mesh.
#[derive(Clone)]
pub struct MeshConfig {
    /// Domain, secret, our position and the number of members.
    pub identity: Identity,
    /// Every member's link address, by position.
    pub addrs: Vec<SocketAddr>,
    /// How often an active connection sends a heartbeat (the passive side answers it).
    pub heartbeat: Duration,
    /// A passive connection silent for this long is dead, and so is an active one
    /// whose heartbeats got no answer for this long.
    pub dead_after: Duration,
    /// Longest a connection may take to connect and authenticate.
    pub handshake_timeout: Duration,
    /// First wait before reconnecting after a failure; it doubles at each failed
    /// attempt up to `backoff_max` and is back to this after a success or
    /// [`Mesh::reconnect_now`].
    pub backoff_min: Duration,
    /// Longest wait between two reconnection attempts.
    pub backoff_max: Duration,
    /// Largest packet accepted or sent.
    pub packet_max: usize,
}

impl MeshConfig {
    /// Defaults for everything but who and where: heartbeats every 500 ms, dead
    /// after 2 s of silence, 5 s to connect and authenticate, back-off from 50 ms up
    /// to 5 s,
    /// packets up to 16 MiB.
    pub fn new(identity: Identity, addrs: Vec<SocketAddr>) -> MeshConfig {
        MeshConfig {
            identity,
            addrs,
            heartbeat: Duration::from_millis(500),
            dead_after: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            packet_max: crate::frame::PACKET_BYTES_MAX,
        }
    }
}

/// One frame received from a peer.
#[derive(Debug)]
pub struct Incoming {
    /// The peer's position (checked against the handshake).
    pub from: u32,
    /// The frame.
    pub frame: Frame,
}

/// A peer as this member sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// Its position.
    pub position: u32,
    /// Its link address.
    pub addr: SocketAddr,
    /// Our connection to it is up (authenticated).
    pub outbound_up: bool,
    /// Its connection to us is up and alive.
    pub inbound_up: bool,
    /// Successful outbound connections so far.
    pub connects: u64,
    /// The last failure, if any (connect, handshake, read or write).
    pub last_error: String,
    /// Times a direction of this link went down or was replaced by a new connection.
    /// A value that changed since a frame was sent means that the frame, or its
    /// response, may have been lost.
    pub downs: u64,
}

impl PeerStatus {
    /// Both directions up.
    pub fn up(&self) -> bool {
        self.outbound_up && self.inbound_up
    }
}

/// Why a frame could not be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// No such member (or ourselves).
    #[error("no member at position {0}")]
    NoSuchMember(u32),
    /// The link is down right now.
    #[error("the link to member {0} is down")]
    Down(u32),
    /// Too many frames are waiting for that peer.
    #[error("the link to member {0} is busy ({OUTBOX_FRAMES} frames waiting)")]
    Busy(u32),
    /// Over the packet limit.
    #[error("a frame of {size} bytes exceeds the link's limit of {max}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
}

struct Slot {
    out: Option<mpsc::Sender<Frame>>,
    status: PeerStatus,
    /// Generation of the current inbound connection (a newer one replaces it).
    inbound_gen: u64,
}

/// A running member of the mesh; dropping it stops every task.
pub struct Mesh {
    cfg: MeshConfig,
    slots: Vec<Mutex<Slot>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    gens: AtomicU64,
    /// Inbound connections open (authenticated or not), bounded.
    inbound: std::sync::atomic::AtomicUsize,
    /// Counts every change of any peer's state (a direction up or down).
    changes: watch::Sender<u64>,
    /// By position: wakes that peer's connect loop out of its back-off.
    wake: Vec<Arc<tokio::sync::Notify>>,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if let Ok(t) = self.tasks.lock() {
            for h in t.iter() {
                h.abort();
            }
        }
    }
}

impl Mesh {
    /// Binds our link address and joins the mesh. Frames from peers arrive on the
    /// returned channel.
    pub async fn start(cfg: MeshConfig) -> std::io::Result<(Arc<Mesh>, mpsc::Receiver<Incoming>)> {
        let me = cfg.identity.me as usize;
        let addr = *cfg.addrs.get(me).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "our position has no address",
            )
        })?;
        let listener = TcpListener::bind(addr).await?;
        Ok(Mesh::start_on(cfg, listener))
    }

    /// [`Mesh::start`] on a listener bound already (tests bind port 0 first).
    pub fn start_on(
        cfg: MeshConfig,
        listener: TcpListener,
    ) -> (Arc<Mesh>, mpsc::Receiver<Incoming>) {
        let (tx, rx) = mpsc::channel(OUTBOX_FRAMES);
        let n = cfg.addrs.len();
        let slots = cfg
            .addrs
            .iter()
            .enumerate()
            .map(|(i, a)| {
                Mutex::new(Slot {
                    out: None,
                    status: PeerStatus {
                        position: i as u32,
                        addr: *a,
                        outbound_up: false,
                        inbound_up: false,
                        connects: 0,
                        last_error: String::new(),
                        downs: 0,
                    },
                    inbound_gen: 0,
                })
            })
            .collect();
        let mesh = Arc::new(Mesh {
            cfg,
            slots,
            tasks: Mutex::new(Vec::new()),
            gens: AtomicU64::new(1),
            inbound: std::sync::atomic::AtomicUsize::new(0),
            changes: watch::channel(0).0,
            wake: (0..n)
                .map(|_| Arc::new(tokio::sync::Notify::new()))
                .collect(),
        });
        let mut handles = vec![tokio::spawn(accept_loop(
            Arc::downgrade(&mesh),
            listener,
            tx,
        ))];
        for p in 0..mesh.cfg.addrs.len() as u32 {
            if p != mesh.cfg.identity.me {
                handles.push(tokio::spawn(connect_loop(Arc::downgrade(&mesh), p)));
            }
        }
        if let Ok(mut t) = mesh.tasks.lock() {
            t.extend(handles);
        }
        (mesh, rx)
    }

    fn slot(&self, p: u32) -> Option<std::sync::MutexGuard<'_, Slot>> {
        if p == self.cfg.identity.me {
            return None;
        }
        self.slots
            .get(p as usize)
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Sends `frame` to the member at position `to` on our active connection.
    pub fn send(&self, to: u32, frame: Frame) -> Result<(), SendError> {
        let size = crate::frame::HEADER_BYTES + frame.body.len();
        if size > self.cfg.packet_max {
            return Err(SendError::TooLarge {
                size,
                max: self.cfg.packet_max,
            });
        }
        let out = self
            .slot(to)
            .ok_or(SendError::NoSuchMember(to))?
            .out
            .clone()
            .ok_or(SendError::Down(to))?;
        out.try_send(frame).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SendError::Busy(to),
            mpsc::error::TrySendError::Closed(_) => SendError::Down(to),
        })
    }

    /// Every peer's state, by position (ourselves left out).
    pub fn peers(&self) -> Vec<PeerStatus> {
        (0..self.slots.len() as u32)
            .filter_map(|p| self.slot(p).map(|s| s.status.clone()))
            .collect()
    }

    /// Whether the link to the member at `p` is up in both directions, and its
    /// [`PeerStatus::downs`] count (`None` for ourselves or no such member). Cheaper
    /// than [`Mesh::peers`]: made for routing each call.
    pub fn link_state(&self, p: u32) -> Option<(bool, u64)> {
        self.slot(p).map(|s| (s.status.up(), s.status.downs))
    }

    /// Resets the reconnection back-off for the member at `p` and, if our outbound
    /// connection to it is down, makes the next attempt at once instead of after the
    /// back-off (what a CONNECT_GLOBAL_RECOVERY_MEMBER from that member asks for: it
    /// is back, so waiting out a long back-off only delays the mesh). Returns whether
    /// an attempt was woken; `false` when the link is up already or `p` is ourselves
    /// or no member.
    pub fn reconnect_now(&self, p: u32) -> bool {
        let down = match self.slot(p) {
            Some(s) => !s.status.outbound_up,
            None => return false,
        };
        if down {
            if let Some(w) = self.wake.get(p as usize) {
                // Stored as a permit if the loop is between two waits (connecting).
                w.notify_one();
            }
        }
        down
    }

    /// Our position.
    pub fn me(&self) -> u32 {
        self.cfg.identity.me
    }

    /// A receiver that is marked changed whenever a direction of any link goes up or
    /// down, so that the owner can react at once (fail the calls in flight to a peer
    /// that went down) instead of polling [`Mesh::peers`].
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn note_error(&self, p: u32, what: String) {
        if let Some(mut s) = self.slot(p) {
            if s.status.last_error != what {
                tracing::warn!(peer = p, addr = %s.status.addr, "node link: {what}");
            }
            s.status.last_error = what;
        }
    }
}

/// Removes the whole frames at the front of `buf` (bytes read on our active
/// connection to `peer`), which must all be heartbeat answers from `peer`; a partial
/// frame stays for the next read.
fn take_heartbeat_answers(buf: &mut Vec<u8>, peer: u32, max: usize) -> Result<(), String> {
    loop {
        let Some(size) = buf.get(..4) else {
            return Ok(());
        };
        let size = u32::from_be_bytes([size[0], size[1], size[2], size[3]]);
        let n = check_size(size, max).map_err(|e| e.to_string())?;
        if buf.len() < 4 + n {
            return Ok(());
        }
        let frame = Frame::decode(&buf[4..4 + n]).map_err(|e| e.to_string())?;
        if frame.item != Item::Heartbeat || !frame.response || frame.sender != peer {
            return Err(format!(
                "unexpected {:?} (response: {}) from member {} instead of a heartbeat answer",
                frame.item, frame.response, frame.sender
            ));
        }
        buf.drain(..4 + n);
    }
}

async fn write_frame(w: &mut (impl AsyncWriteExt + Unpin), f: &Frame) -> std::io::Result<()> {
    w.write_all(&f.encode()).await
}

/// Waits `backoff`, or less if [`Mesh::reconnect_now`] wakes `peer`'s loop; true
/// when woken (the back-off is reset), false after the whole wait or if the mesh is
/// gone.
async fn back_off(mesh: &std::sync::Weak<Mesh>, peer: u32, backoff: Duration) -> bool {
    // Only the notifier is kept, not the mesh: a sleeping loop must not keep a
    // dropped mesh alive.
    let Some(w) = mesh
        .upgrade()
        .and_then(|m| m.wake.get(peer as usize).cloned())
    else {
        return false;
    };
    tokio::select! {
        _ = tokio::time::sleep(backoff) => false,
        _ = w.notified() => true,
    }
}

async fn connect_loop(mesh: std::sync::Weak<Mesh>, peer: u32) {
    let Some(start) = mesh.upgrade().map(|m| m.cfg.backoff_min) else {
        return;
    };
    let mut backoff = start;
    loop {
        let Some(m) = mesh.upgrade() else { return };
        let cfg = m.cfg.clone();
        let addr = cfg.addrs[peer as usize];
        let attempt = tokio::time::timeout(cfg.handshake_timeout, async {
            let mut s = TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            handshake::connect(&mut s, &cfg.identity, peer)
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            Ok::<TcpStream, std::io::Error>(s)
        })
        .await;
        let stream = match attempt {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                m.note_error(peer, format!("cannot connect to {addr}: {e}"));
                drop(m);
                backoff = if back_off(&mesh, peer, backoff).await {
                    cfg.backoff_min
                } else {
                    (backoff * 2).min(cfg.backoff_max)
                };
                continue;
            }
            Err(_) => {
                m.note_error(
                    peer,
                    format!(
                        "no handshake with {addr} within {:?}",
                        cfg.handshake_timeout
                    ),
                );
                drop(m);
                backoff = if back_off(&mesh, peer, backoff).await {
                    cfg.backoff_min
                } else {
                    (backoff * 2).min(cfg.backoff_max)
                };
                continue;
            }
        };
        backoff = cfg.backoff_min;
        let (tx, mut rx) = mpsc::channel::<Frame>(OUTBOX_FRAMES);
        if let Some(mut s) = m.slot(peer) {
            s.out = Some(tx);
            s.status.outbound_up = true;
            s.status.connects += 1;
            tracing::info!(peer, %addr, "node link up (outbound)");
        }
        m.changed();
        let me = cfg.identity.me;
        drop(m);
        let (mut rd, mut wr) = stream.into_split();
        let mut tick = tokio::time::interval(cfg.heartbeat);
        let mut last_heard = Instant::now();
        let mut acks = Vec::new();
        let mut chunk = [0u8; 512];
        let why = loop {
            tokio::select! {
                f = rx.recv() => {
                    let Some(f) = f else { break "closed".to_string() };
                    if let Err(e) = write_frame(&mut wr, &f).await {
                        break format!("write to {addr} failed: {e}");
                    }
                }
                _ = tick.tick() => {
                    // Writes into a peer that went silent (traffic dropped, not
                    // refused) may succeed for a long time: its answers to our
                    // heartbeats are what proves it alive.
                    if last_heard.elapsed() >= cfg.dead_after {
                        break format!(
                            "{addr} answered no heartbeat for {:?}, taken for dead",
                            cfg.dead_after
                        );
                    }
                    if let Err(e) = write_frame(&mut wr, &Frame::request(Item::Heartbeat, me, Vec::new())).await {
                        break format!("heartbeat to {addr} failed: {e}");
                    }
                }
                r = rd.read(&mut chunk) => {
                    // Only heartbeat answers come back on an active connection.
                    match r {
                        Ok(0) => break format!("{addr} closed the link"),
                        Ok(n) => {
                            last_heard = Instant::now();
                            acks.extend_from_slice(&chunk[..n]);
                            if let Err(e) = take_heartbeat_answers(&mut acks, peer, cfg.packet_max) {
                                break format!("{addr} on our outbound link: {e}");
                            }
                        }
                        Err(e) => break format!("read from {addr} failed: {e}"),
                    }
                }
            }
        };
        let Some(m) = mesh.upgrade() else { return };
        if let Some(mut s) = m.slot(peer) {
            s.out = None;
            s.status.outbound_up = false;
            s.status.downs += 1;
        }
        m.changed();
        m.note_error(peer, why);
        drop(m);
        back_off(&mesh, peer, backoff).await;
    }
}

async fn accept_loop(
    mesh: std::sync::Weak<Mesh>,
    listener: TcpListener,
    tx: mpsc::Sender<Incoming>,
) {
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "node link: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(m) = mesh.upgrade() else { return };
        // Each peer needs one inbound connection (two while one replaces another):
        // anything beyond a few per member is someone else, refused before reading.
        let cap = m.cfg.addrs.len() * 4;
        if m.inbound.fetch_add(1, Ordering::AcqRel) >= cap {
            m.inbound.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(peer = %addr, "node link refused: {cap} inbound connections open already");
            continue;
        }
        let (w, cfg, tx) = (mesh.clone(), m.cfg.clone(), tx.clone());
        tokio::spawn(async move {
            passive(w.clone(), cfg, stream, addr, tx).await;
            if let Some(m) = w.upgrade() {
                m.inbound.fetch_sub(1, Ordering::AcqRel);
            }
        });
    }
}

async fn passive(
    mesh: std::sync::Weak<Mesh>,
    cfg: MeshConfig,
    mut stream: TcpStream,
    addr: SocketAddr,
    tx: mpsc::Sender<Incoming>,
) {
    let _ = stream.set_nodelay(true);
    let from = match tokio::time::timeout(
        cfg.handshake_timeout,
        handshake::accept(&mut stream, &cfg.identity),
    )
    .await
    {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            tracing::warn!(peer = %addr, "node link refused: {e}");
            return;
        }
        Err(_) => {
            tracing::warn!(peer = %addr, "node link refused: no handshake within {:?}", cfg.handshake_timeout);
            return;
        }
    };
    let generation = {
        let Some(m) = mesh.upgrade() else { return };
        let g = m.gens.fetch_add(1, Ordering::Relaxed);
        if let Some(mut s) = m.slot(from) {
            s.inbound_gen = g;
            if s.status.inbound_up {
                // A new connection replaces one that looked alive: what the peer sent
                // on the old one may be lost.
                s.status.downs += 1;
            }
            s.status.inbound_up = true;
        }
        m.changed();
        tracing::info!(peer = from, %addr, "node link up (inbound)");
        g
    };
    let why = loop {
        if mesh.strong_count() == 0 {
            // The member stopped: its inbound links go with it.
            return;
        }
        let mut size = [0u8; 4];
        let read = tokio::time::timeout(cfg.dead_after, async {
            stream.read_exact(&mut size).await?;
            let n = check_size(u32::from_be_bytes(size), cfg.packet_max)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
            let mut packet = Vec::new();
            (&mut stream)
                .take(n as u64)
                .read_to_end(&mut packet)
                .await?;
            if packet.len() < n {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed inside a frame",
                ));
            }
            Ok(packet)
        })
        .await;
        let packet = match read {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => break format!("inbound link from {addr}: {e}"),
            Err(_) => {
                break format!(
                    "inbound link from {addr}: silent for {:?}, taken for dead",
                    cfg.dead_after
                )
            }
        };
        let frame = match Frame::decode(&packet) {
            Ok(f) => f,
            Err(e) => break format!("inbound link from {addr}: {e}; closing it"),
        };
        if frame.sender != from {
            break format!("inbound link from {addr}: a frame claims sender {} on member {from}'s link; closing it", frame.sender);
        }
        if frame.item == Item::Heartbeat {
            // Answered on this connection: the peer's proof that we still hear it.
            let mut answer = Frame::request(Item::Heartbeat, cfg.identity.me, Vec::new());
            answer.response = true;
            match tokio::time::timeout(cfg.dead_after, write_frame(&mut stream, &answer)).await {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => break format!("inbound link from {addr}: answering a heartbeat: {e}"),
                Err(_) => {
                    break format!(
                        "inbound link from {addr}: a heartbeat answer could not be written for {:?}, taken for dead",
                        cfg.dead_after
                    )
                }
            }
        }
        if tx.send(Incoming { from, frame }).await.is_err() {
            return;
        }
    };
    let Some(m) = mesh.upgrade() else { return };
    let current = m.slot(from).is_some_and(|s| s.inbound_gen == generation);
    if current {
        if let Some(mut s) = m.slot(from) {
            s.status.inbound_up = false;
            s.status.downs += 1;
        }
        m.changed();
        m.note_error(from, why);
    }
}
