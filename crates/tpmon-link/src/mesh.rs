//! The mesh of node links (spec 02 §2.4): this member listens on its link address
//! and keeps one connection of its own (active) to every other member, which in turn
//! connects to it (passive). Everything this member sends to a peer goes out on its
//! active connection; everything it receives from a peer arrives on the passive one.
//!
//! Owns the connections, the handshake's time and count limits, the packet tags
//! ([`crate::seal`]: a packet whose tag does not match closes its connection),
//! heartbeats and failure detection, reconnection with exponential back-off (cut
//! short by [`Mesh::reconnect_now`]), the per-peer state shown by `tpmon status`, and
//! the frame size limit. It must not interpret bodies: frames other than heartbeats go
//! to the owner's channel.
//!
//! Faults it survives:
//! * a peer that dies, or whose traffic is dropped rather than refused: a passive
//!   connection on which no byte arrives for `dead_after` is closed (progress, not
//!   whole frames: a large frame on a slow network is not death); the passive side
//!   answers each heartbeat, and an active connection whose oldest unanswered
//!   heartbeat is `dead_after` old is closed (bytes already received are read before
//!   that is judged); a write that makes no progress for `dead_after` (a peer that
//!   stopped reading) closes the connection too;
//! * a slow owner: a passive connection keeps reading and answering heartbeats while
//!   the owner's channel is full, holding what it read in a bounded per-connection
//!   backlog; a peer that overflows it is closed (counted in `downs`, so the owner
//!   knows frames may be lost) instead of stalling the other peers' links;
//! * strangers: handshakes have their own small cap ([`HANDSHAKES_MAX`]) and a short
//!   time limit, only authenticated connections count towards the per-member limit
//!   ([`INBOUND_PER_MEMBER`]), and refusals are logged at most once a second;
//! * a link that authenticates and dies at once: the back-off is reset only after a
//!   link stayed up for `dead_after`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::frame::{Frame, Item};
use crate::handshake::{self, Identity};
use crate::seal::{Opener, Sealer};

/// Frames waiting to go out to one peer before `send` reports the link busy.
pub const OUTBOX_FRAMES: usize = 4096;
/// Frames received on one passive connection and waiting for room in the owner's
/// channel; one more closes the connection (the peer overloads us).
pub const INBOX_FRAMES: usize = 4096;
/// Bytes of the frames waiting as [`INBOX_FRAMES`] counts them, at most.
pub const INBOX_BYTES_MAX: usize = 64 << 20;
/// Inbound connections still in their handshake at a time; more are refused at once.
pub const HANDSHAKES_MAX: usize = 16;
/// Authenticated inbound connections from one member at a time (one, two while a new
/// one replaces an old one, and some slack).
pub const INBOUND_PER_MEMBER: usize = 4;
/// Largest write or read in one piece: a long frame goes out in pieces of this size,
/// each of which must make progress within `dead_after`.
const IO_CHUNK_BYTES: usize = 64 << 10;
/// Send buffer of an active connection. The kernel wakes a blocked writer only once
/// about a third of its send buffer has drained: with the megabytes that Linux grows
/// a buffer to, a long frame to a slow (but reading) peer would show no progress for
/// seconds and be taken for a wedged peer. With this, a peer reading faster than
/// about 256 KiB per `dead_after` shows progress in time.
const SEND_BUFFER_BYTES: u32 = 256 << 10;

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
    /// Longest a connection may take to connect and authenticate (both sides).
    pub handshake_timeout: Duration,
    /// First wait before reconnecting after a failure; it doubles at each failed
    /// attempt (and each link that went down within `dead_after` of coming up) up to
    /// `backoff_max`, and is back to this after a link stayed up for `dead_after` or
    /// [`Mesh::reconnect_now`].
    pub backoff_min: Duration,
    /// Longest wait between two reconnection attempts.
    pub backoff_max: Duration,
    /// Largest packet accepted or sent.
    pub packet_max: usize,
}

impl MeshConfig {
    /// Defaults for everything but who and where: heartbeats every 500 ms, dead
    /// after 2 s of silence, 1 s to connect and authenticate, back-off from 50 ms up
    /// to 5 s, packets up to 16 MiB (tag included).
    pub fn new(identity: Identity, addrs: Vec<SocketAddr>) -> MeshConfig {
        MeshConfig {
            identity,
            addrs,
            heartbeat: Duration::from_millis(500),
            dead_after: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(1),
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
    /// Authenticated inbound connections from this member open now.
    inbound_links: usize,
}

/// Refusal warnings are logged at most once per second; this counts the others.
struct Refusals {
    last: Option<Instant>,
    suppressed: u64,
}

/// A running member of the mesh; dropping it stops every task.
pub struct Mesh {
    cfg: MeshConfig,
    slots: Vec<Mutex<Slot>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    gens: AtomicU64,
    /// Inbound connections in their handshake now, bounded by [`HANDSHAKES_MAX`].
    handshakes: Arc<AtomicUsize>,
    refusals: Mutex<Refusals>,
    /// Counts every change of any peer's state (a direction up or down).
    changes: watch::Sender<u64>,
    /// By position: wakes that peer's connect loop out of its back-off.
    wake: Vec<Arc<tokio::sync::Notify>>,
    /// The runtime the mesh was started on ([`Mesh::send_or_wait`] waits there).
    runtime: tokio::runtime::Handle,
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
                    inbound_links: 0,
                })
            })
            .collect();
        let mesh = Arc::new(Mesh {
            cfg,
            slots,
            tasks: Mutex::new(Vec::new()),
            gens: AtomicU64::new(1),
            handshakes: Arc::new(AtomicUsize::new(0)),
            refusals: Mutex::new(Refusals {
                last: None,
                suppressed: 0,
            }),
            changes: watch::channel(0).0,
            wake: (0..n)
                .map(|_| Arc::new(tokio::sync::Notify::new()))
                .collect(),
            runtime: tokio::runtime::Handle::current(),
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

    /// The outbox of the active connection to `to`, once `frame` is known to fit a
    /// packet.
    fn outbox(&self, to: u32, frame: &Frame) -> Result<mpsc::Sender<Frame>, SendError> {
        let size = frame.packet_bytes();
        if size > self.cfg.packet_max {
            return Err(SendError::TooLarge {
                size,
                max: self.cfg.packet_max,
            });
        }
        self.slot(to)
            .ok_or(SendError::NoSuchMember(to))?
            .out
            .clone()
            .ok_or(SendError::Down(to))
    }

    /// Sends `frame` to the member at position `to` on our active connection.
    pub fn send(&self, to: u32, frame: Frame) -> Result<(), SendError> {
        let out = self.outbox(to, &frame)?;
        out.try_send(frame).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SendError::Busy(to),
            mpsc::error::TrySendError::Closed(_) => SendError::Down(to),
        })
    }

    /// Like [`Mesh::send`], but when the peer's outbox is full the frame waits up to
    /// `wait` for room (in a task of the mesh's runtime: callable from any thread)
    /// instead of being refused; for frames that must not be lost to a moment of
    /// congestion, such as replies. A frame still without room after `wait` is dropped
    /// with a warning (the link is congested for that long: the peer is as good as
    /// unreachable, and its own limits answer its caller).
    pub fn send_or_wait(&self, to: u32, frame: Frame, wait: Duration) -> Result<(), SendError> {
        let out = self.outbox(to, &frame)?;
        match out.try_send(frame) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SendError::Down(to)),
            Err(mpsc::error::TrySendError::Full(frame)) => {
                self.runtime.spawn(async move {
                    let item = frame.item;
                    if !matches!(tokio::time::timeout(wait, out.send(frame)).await, Ok(Ok(()))) {
                        tracing::warn!(
                            peer = to,
                            ?item,
                            "node link: a frame found no room on the link within {wait:?} (or the link went down): dropped"
                        );
                    }
                });
                Ok(())
            }
        }
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

    /// Our link address as configured.
    pub fn listen_addr(&self) -> SocketAddr {
        self.cfg.addrs[self.cfg.identity.me as usize]
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

    /// Logs a refused inbound connection, at most once a second (strangers can open
    /// connections faster than anyone reads logs), with the number left unlogged.
    fn refused(&self, addr: SocketAddr, why: &str) {
        let mut r = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        if r.last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            r.suppressed += 1;
            return;
        }
        let unlogged = std::mem::take(&mut r.suppressed);
        r.last = Some(Instant::now());
        drop(r);
        tracing::warn!(peer = %addr, unlogged, "node link refused: {why}");
    }
}

/// Writes `bytes`, each piece of [`IO_CHUNK_BYTES`] within `limit`: a peer that stops
/// reading is found out, one that reads slowly is not taken for dead.
async fn write_all_progress(
    w: &mut (impl AsyncWriteExt + Unpin),
    bytes: &[u8],
    limit: Duration,
) -> Result<(), String> {
    for piece in bytes.chunks(IO_CHUNK_BYTES) {
        match tokio::time::timeout(limit, w.write_all(piece)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => {
                return Err(format!(
                    "no write progress for {limit:?} (the peer stopped reading)"
                ))
            }
        }
    }
    Ok(())
}

/// Takes the whole packets at the front of `buf` (bytes read on our active
/// connection to `peer`), which must all be heartbeat answers from `peer`; returns how
/// many. A partial packet stays for the next read.
fn take_heartbeat_answers(
    buf: &mut Vec<u8>,
    opener: &mut Opener,
    peer: u32,
) -> Result<usize, String> {
    let mut pos = 0;
    let mut answers = 0;
    let r = loop {
        match opener.take(buf, &mut pos) {
            Ok(None) => break Ok(answers),
            Ok(Some(frame)) => {
                if frame.item != Item::Heartbeat || !frame.response || frame.sender != peer {
                    break Err(format!(
                        "unexpected {:?} (response: {}) from member {} instead of a heartbeat answer",
                        frame.item, frame.response, frame.sender
                    ));
                }
                answers += 1;
            }
            Err(e) => break Err(e.to_string()),
        }
    };
    buf.drain(..pos);
    r
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
    // The wait before the next attempt.
    let mut backoff = start;
    loop {
        let Some(m) = mesh.upgrade() else { return };
        let cfg = m.cfg.clone();
        let addr = cfg.addrs[peer as usize];
        let attempt = tokio::time::timeout(cfg.handshake_timeout, async {
            let sock = if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            sock.set_send_buffer_size(SEND_BUFFER_BYTES)?;
            let mut s = sock.connect(addr).await?;
            s.set_nodelay(true)?;
            let keys = handshake::connect(&mut s, &cfg.identity, peer)
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            Ok::<_, std::io::Error>((s, keys))
        })
        .await;
        let failure = match attempt {
            Ok(Ok(x)) => Ok(x),
            Ok(Err(e)) => Err(format!("cannot connect to {addr}: {e}")),
            Err(_) => Err(format!(
                "no handshake with {addr} within {:?}",
                cfg.handshake_timeout
            )),
        };
        let (stream, keys) = match failure {
            Ok(x) => x,
            Err(why) => {
                m.note_error(peer, why);
                drop(m);
                backoff = if back_off(&mesh, peer, backoff).await {
                    cfg.backoff_min
                } else {
                    (backoff * 2).min(cfg.backoff_max)
                };
                continue;
            }
        };
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
        let up_at = Instant::now();
        let (mut rd, mut wr) = stream.into_split();
        let mut sealer = Sealer::new(keys.send);
        let mut opener = Opener::new(keys.recv, cfg.packet_max);
        let mut tick = tokio::time::interval(cfg.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // When each heartbeat not answered yet was sent, oldest first.
        let mut unanswered: VecDeque<Instant> = VecDeque::new();
        let mut acks = Vec::new();
        let mut chunk = [0u8; 512];
        let why = loop {
            // Biased, reads first: answers that arrived while a long write blocked
            // this loop are taken before any heartbeat is judged unanswered.
            tokio::select! {
                biased;
                r = rd.read(&mut chunk) => {
                    // Only heartbeat answers come back on an active connection.
                    match r {
                        Ok(0) => break format!("{addr} closed the link"),
                        Ok(n) => {
                            acks.extend_from_slice(&chunk[..n]);
                            match take_heartbeat_answers(&mut acks, &mut opener, peer) {
                                Ok(k) => {
                                    for _ in 0..k {
                                        unanswered.pop_front();
                                    }
                                }
                                Err(e) => break format!("{addr} on our outbound link: {e}; closing it"),
                            }
                        }
                        Err(e) => break format!("read from {addr} failed: {e}"),
                    }
                }
                _ = tick.tick() => {
                    // Writes into a peer that went silent (traffic dropped, not
                    // refused) may succeed for a long time: its answers to our
                    // heartbeats are what proves it alive.
                    if unanswered.front().is_some_and(|t| t.elapsed() >= cfg.dead_after) {
                        break format!(
                            "{addr} answered no heartbeat for {:?}, taken for dead",
                            cfg.dead_after
                        );
                    }
                    let hb = sealer.seal(&Frame::request(Item::Heartbeat, me, Vec::new()));
                    if let Err(e) = write_all_progress(&mut wr, &hb, cfg.dead_after).await {
                        break format!("heartbeat to {addr} failed: {e}");
                    }
                    unanswered.push_back(Instant::now());
                }
                f = rx.recv() => {
                    let Some(f) = f else { break "closed".to_string() };
                    if let Err(e) = write_all_progress(&mut wr, &sealer.seal(&f), cfg.dead_after).await {
                        break format!("write to {addr} failed: {e}");
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
        // A link that died soon after it came up (a peer that authenticates then
        // fails at once) must not make us reconnect at the shortest back-off forever.
        if up_at.elapsed() >= cfg.dead_after {
            backoff = cfg.backoff_min;
        }
        backoff = if back_off(&mesh, peer, backoff).await {
            cfg.backoff_min
        } else {
            (backoff * 2).min(cfg.backoff_max)
        };
    }
}

/// Gives back a handshake slot when dropped (the task may also be aborted).
struct HandshakeSlot(Arc<AtomicUsize>);

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
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
        // Handshakes have their own small cap: strangers that never finish theirs
        // cannot take the places of authenticated links.
        if m.handshakes.fetch_add(1, Ordering::AcqRel) >= HANDSHAKES_MAX {
            m.handshakes.fetch_sub(1, Ordering::AcqRel);
            m.refused(
                addr,
                &format!("{HANDSHAKES_MAX} handshakes in progress already"),
            );
            continue;
        }
        let slot = HandshakeSlot(m.handshakes.clone());
        let (w, cfg, tx) = (mesh.clone(), m.cfg.clone(), tx.clone());
        tokio::spawn(passive(w, cfg, stream, addr, tx, slot));
    }
}

async fn passive(
    mesh: std::sync::Weak<Mesh>,
    cfg: MeshConfig,
    mut stream: TcpStream,
    addr: SocketAddr,
    tx: mpsc::Sender<Incoming>,
    slot: HandshakeSlot,
) {
    let _ = stream.set_nodelay(true);
    let accepted = tokio::time::timeout(
        cfg.handshake_timeout,
        handshake::accept(&mut stream, &cfg.identity),
    )
    .await;
    drop(slot);
    let refuse = |why: String| {
        if let Some(m) = mesh.upgrade() {
            m.refused(addr, &why);
        }
    };
    let (from, keys) = match accepted {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => return refuse(e.to_string()),
        Err(_) => return refuse(format!("no handshake within {:?}", cfg.handshake_timeout)),
    };
    let generation = {
        let Some(m) = mesh.upgrade() else { return };
        let g = m.gens.fetch_add(1, Ordering::Relaxed);
        let Some(mut s) = m.slot(from) else { return };
        if s.inbound_links >= INBOUND_PER_MEMBER {
            drop(s);
            return m.refused(
                addr,
                &format!("member {from} has {INBOUND_PER_MEMBER} inbound links open already"),
            );
        }
        s.inbound_links += 1;
        s.inbound_gen = g;
        if s.status.inbound_up {
            // A new connection replaces one that looked alive: what the peer sent
            // on the old one may be lost.
            s.status.downs += 1;
        }
        s.status.inbound_up = true;
        drop(s);
        m.changed();
        tracing::info!(peer = from, %addr, "node link up (inbound)");
        g
    };
    let why = serve_passive(&mesh, &cfg, stream, addr, from, keys, &tx).await;
    let Some(m) = mesh.upgrade() else { return };
    // One guard for the check and the update: a newer connection from the same
    // member must not be marked down by this one's end.
    let current = match m.slot(from) {
        Some(mut s) => {
            s.inbound_links = s.inbound_links.saturating_sub(1);
            let current = s.inbound_gen == generation;
            if current {
                s.status.inbound_up = false;
                s.status.downs += 1;
            }
            current
        }
        None => false,
    };
    if current {
        m.changed();
        if let Some(why) = why {
            m.note_error(from, why);
        }
    }
}

/// Reads the frames of an authenticated passive connection from `from` until it
/// fails; returns why (`None` when the member or its owner stopped).
async fn serve_passive(
    mesh: &std::sync::Weak<Mesh>,
    cfg: &MeshConfig,
    stream: TcpStream,
    addr: SocketAddr,
    from: u32,
    keys: crate::seal::LinkKeys,
    tx: &mpsc::Sender<Incoming>,
) -> Option<String> {
    let (mut rd, mut wr) = stream.into_split();
    let mut opener = Opener::new(keys.recv, cfg.packet_max);
    let mut sealer = Sealer::new(keys.send);
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; IO_CHUNK_BYTES];
    // Frames read and authenticated, waiting for room in the owner's channel.
    let mut backlog: VecDeque<Incoming> = VecDeque::new();
    let mut backlog_bytes = 0usize;
    let mut last_read = Instant::now();
    loop {
        if mesh.strong_count() == 0 {
            // The member stopped: its inbound links go with it.
            return None;
        }
        let mut frames = Vec::new();
        let mut pos = 0;
        let parsed = loop {
            match opener.take(&buf, &mut pos) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        buf.drain(..pos);
        for frame in frames {
            if frame.sender != from {
                return Some(format!("inbound link from {addr}: a frame claims sender {} on member {from}'s link; closing it", frame.sender));
            }
            if frame.item == Item::Heartbeat {
                // Answered at once, before anything that may wait: the peer's proof
                // that we still hear it, whatever the owner is doing.
                let mut answer = Frame::request(Item::Heartbeat, cfg.identity.me, Vec::new());
                answer.response = true;
                if let Err(e) =
                    write_all_progress(&mut wr, &sealer.seal(&answer), cfg.dead_after).await
                {
                    return Some(format!(
                        "inbound link from {addr}: answering a heartbeat: {e}"
                    ));
                }
                continue;
            }
            backlog_bytes += frame.packet_bytes();
            backlog.push_back(Incoming { from, frame });
            if backlog.len() > INBOX_FRAMES || backlog_bytes > INBOX_BYTES_MAX {
                return Some(format!(
                    "inbound link from {addr}: overloaded ({} frames, {backlog_bytes} bytes wait for this node to take them); closing it",
                    backlog.len()
                ));
            }
        }
        if let Err(e) = parsed {
            return Some(format!("inbound link from {addr}: {e}; closing it"));
        }
        // Biased: hand a frame over when there is room, else read; silence is judged
        // last, so bytes that arrived are read before the peer is taken for dead.
        tokio::select! {
            biased;
            permit = tx.reserve(), if !backlog.is_empty() => {
                let Ok(permit) = permit else { return None };
                if let Some(inc) = backlog.pop_front() {
                    backlog_bytes -= inc.frame.packet_bytes();
                    permit.send(inc);
                }
            }
            r = rd.read(&mut chunk) => match r {
                Ok(0) => return Some(format!("inbound link from {addr}: closed")),
                Ok(n) => {
                    last_read = Instant::now();
                    buf.extend_from_slice(&chunk[..n]);
                }
                Err(e) => return Some(format!("inbound link from {addr}: {e}")),
            },
            _ = tokio::time::sleep_until((last_read + cfg.dead_after).into()) => {
                return Some(format!(
                    "inbound link from {addr}: silent for {:?}, taken for dead",
                    cfg.dead_after
                ));
            }
        }
    }
}
