//! The two ways a client's requests travel: straight to the service queues (local fast
//! path) or through the daemon over TCP (relay).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tpmon_ipc::{Endpoint, IpcError, Spin, StatusTable};
use tpmon_proto::{encode_frame, ErrorKind, FrameDecoder, Hello, Message, Reply, Welcome};

use crate::CallError;

/// Why no reply was received.
pub(crate) enum RecvFailure {
    /// The timeout expired.
    TimedOut,
    /// Nothing ready and the caller asked not to wait.
    WouldBlock,
    /// The transport broke.
    Fatal(CallError),
}

/// Local fast path: our own reply endpoint and the shared status table.
pub(crate) struct Local {
    pub endpoint: Endpoint,
    pub table: Arc<StatusTable>,
    /// The daemon's socket for calls to other nodes (boxed: rarely used, and the
    /// transport stays small).
    pub remote: Box<RemoteSocket>,
    pub queues: Vec<PathBuf>,
    pub queue_max: Vec<u64>,
    /// Sockets connected to each server's queue, made on first use.
    pub senders: Vec<Option<Endpoint>>,
    /// Adaptive polling for replies.
    pub spin: Spin,
    /// The authenticated session with the daemon, held open for the client's lifetime
    /// (non-blocking: only peeked at, to learn that the daemon is gone).
    pub session: Option<TcpStream>,
    /// Connection to the transaction manager's socket, made at the first commit.
    pub tm: Option<(std::os::unix::net::UnixStream, FrameDecoder)>,
}

/// The way to the daemon's socket for calls to other nodes.
pub(crate) struct RemoteSocket {
    /// `run_dir/remote.sock`.
    pub path: PathBuf,
    /// A socket connected to it, made on first use.
    pub sock: Option<Endpoint>,
}

/// Relay: every message goes over the TCP session.
pub(crate) struct Relay {
    pub stream: TcpStream,
    pub decoder: FrameDecoder,
    pub read_timeout: Option<Option<Duration>>,
    /// Replies read while waiting for a transaction outcome.
    pub stash: Vec<Reply>,
}

pub(crate) enum Transport {
    Local(Local),
    Relay(Relay),
}

/// Longest a local caller waits for a reply before it checks that its node's daemon
/// is still there.
const DAEMON_CHECK: Duration = Duration::from_millis(500);

impl Local {
    /// Whether the daemon closed the session (it died or shut down).
    fn daemon_gone(&self) -> bool {
        let Some(s) = &self.session else {
            return false;
        };
        let mut b = [0u8; 1];
        match s.peek(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
            ),
        }
    }
}

/// Granularity of the socket receive timeout.
const TIMEOUT_GRAIN: Duration = Duration::from_millis(10);

/// Rounds a wait down to [`TIMEOUT_GRAIN`] so that the socket's receive timeout stays
/// the same from one call to the next (no `setsockopt` on the hot path). Rounding down
/// never waits past the deadline; the caller loops and waits for the rest.
fn coarse(d: Duration) -> Duration {
    if d <= TIMEOUT_GRAIN {
        return d;
    }
    let grains = d.as_nanos() / TIMEOUT_GRAIN.as_nanos();
    TIMEOUT_GRAIN * grains as u32
}

/// Time slice a caller sleeps while a server's queue is full.
const QUEUE_FULL_POLL: Duration = Duration::from_micros(200);

fn ipc_error(e: IpcError) -> CallError {
    match e {
        IpcError::WouldBlock => CallError::new(ErrorKind::Block, "the service queue is full"),
        IpcError::TimedOut => CallError::new(ErrorKind::Time, "timed out"),
        IpcError::Gone(what) => CallError::new(
            ErrorKind::System,
            format!("the queue {what} is gone (is the domain down?)"),
        ),
        IpcError::TooLarge { len, max } => CallError::new(
            ErrorKind::Limit,
            format!("message of {len} bytes exceeds the limit of {max}"),
        ),
        other => CallError::new(ErrorKind::Os, other.to_string()),
    }
}

impl Transport {
    /// Sends an encoded request for a service of `server`.
    pub fn send(
        &mut self,
        server: usize,
        body: &[u8],
        nonblock: bool,
        deadline: Option<Instant>,
    ) -> Result<(), CallError> {
        match self {
            Transport::Local(l) => {
                let max = l.queue_max.get(server).copied().unwrap_or(u64::MAX);
                while !l.table.queue_reserve(server, max) {
                    if nonblock {
                        return Err(CallError::new(
                            ErrorKind::Block,
                            format!("the queue of server {server} holds {max} requests"),
                        ));
                    }
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(CallError::new(
                            ErrorKind::Time,
                            "timed out waiting for room in the service queue",
                        ));
                    }
                    std::thread::sleep(QUEUE_FULL_POLL);
                }
                let Some(path) = l.queues.get(server) else {
                    l.table.queue_release(server);
                    return Err(CallError::new(
                        ErrorKind::System,
                        "routing table is inconsistent",
                    ));
                };
                if l.senders.len() <= server {
                    l.senders.resize_with(server + 1, || None);
                }
                if l.senders[server].is_none() {
                    match Endpoint::connect_path(path, usize::MAX) {
                        Ok(s) => l.senders[server] = Some(s),
                        Err(e) => {
                            l.table.queue_release(server);
                            return Err(ipc_error(e));
                        }
                    }
                }
                let result = match &l.senders[server] {
                    Some(s) => s.send_connected(body, nonblock),
                    None => l.endpoint.send_to_path(path, body, nonblock),
                };
                match result {
                    Ok(()) => {
                        l.table.after_send(server);
                        Ok(())
                    }
                    Err(e) => {
                        l.table.queue_release(server);
                        Err(ipc_error(e))
                    }
                }
            }
            Transport::Relay(r) => {
                let mut frame = Vec::with_capacity(body.len() + 4);
                encode_frame(body, &mut frame);
                r.stream.write_all(&frame).map_err(|e| {
                    CallError::new(ErrorKind::System, format!("daemon connection: {e}"))
                })
            }
        }
    }

    /// Sends an encoded [`tpmon_proto::RemoteCall`] to this node's daemon, which routes
    /// it to another node: on the fast path to the daemon's remote-call socket (a full
    /// socket is waited on within the deadline, or TPEBLOCK with `nonblock`), relayed
    /// on the TCP session like any request.
    pub fn send_remote(
        &mut self,
        body: &[u8],
        nonblock: bool,
        deadline: Option<Instant>,
    ) -> Result<(), CallError> {
        let l = match self {
            Transport::Relay(_) => return self.send(0, body, nonblock, deadline),
            Transport::Local(l) => l,
        };
        let remote = &mut *l.remote;
        if remote.sock.is_none() {
            remote.sock =
                Some(Endpoint::connect_path(&remote.path, usize::MAX).map_err(ipc_error)?);
        }
        let Some(sock) = &remote.sock else {
            return Err(CallError::new(ErrorKind::System, "no remote-call socket"));
        };
        loop {
            match sock.send_connected(body, true) {
                Ok(()) => return Ok(()),
                Err(IpcError::WouldBlock) if !nonblock => {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(CallError::new(
                            ErrorKind::Time,
                            "timed out waiting for the daemon to take a call to another node",
                        ));
                    }
                    std::thread::sleep(QUEUE_FULL_POLL);
                }
                Err(IpcError::WouldBlock) => {
                    return Err(CallError::new(
                        ErrorKind::Block,
                        "the daemon's socket for calls to other nodes is full",
                    ))
                }
                Err(e) => return Err(ipc_error(e)),
            }
        }
    }

    /// Receives the next reply addressed to this client.
    pub fn recv(
        &mut self,
        timeout: Option<Duration>,
        nonblock: bool,
    ) -> Result<Reply, RecvFailure> {
        match self {
            Transport::Local(l) => {
                // Waits in slices of at most DAEMON_CHECK: a reply can only come while
                // the node's daemon lives (it owns the servers), so between slices the
                // session tells whether it is gone.
                let deadline = timeout.map(|t| Instant::now() + t);
                loop {
                    let slice = deadline.map_or(DAEMON_CHECK, |d| {
                        d.saturating_duration_since(Instant::now())
                            .min(DAEMON_CHECK)
                    });
                    if slice.is_zero() && !nonblock {
                        return Err(RecvFailure::TimedOut);
                    }
                    l.endpoint
                        .set_recv_timeout(Some(coarse(slice)))
                        .map_err(|e| RecvFailure::Fatal(ipc_error(e)))?;
                    let got = match if nonblock {
                        l.endpoint.recv(true)
                    } else {
                        l.endpoint.recv_spinning(&mut l.spin, &*l.table)
                    } {
                        Ok(r) => r,
                        Err(IpcError::TimedOut)
                            if deadline.is_some_and(|d| Instant::now() >= d) =>
                        {
                            return Err(RecvFailure::TimedOut)
                        }
                        Err(IpcError::TimedOut) => {
                            if l.daemon_gone() {
                                return Err(RecvFailure::Fatal(CallError::new(
                                    ErrorKind::System,
                                    "the node's daemon went away while waiting for the reply \
                                 (the call's outcome is unknown)",
                                )));
                            }
                            continue;
                        }
                        Err(IpcError::WouldBlock) => return Err(RecvFailure::WouldBlock),
                        // A malformed datagram from some other local process is dropped;
                        // it must not fail the caller's call.
                        Err(IpcError::Malformed(_))
                        | Err(IpcError::TooLarge { .. })
                        | Err(IpcError::Foreign { .. }) => continue,
                        Err(e) => return Err(RecvFailure::Fatal(ipc_error(e))),
                    };
                    if let Ok(Message::Reply(r)) = Message::decode(&got.body) {
                        return Ok(r);
                    }
                }
            }
            Transport::Relay(r) => loop {
                if !r.stash.is_empty() {
                    return Ok(r.stash.remove(0));
                }
                match r.decoder.next_frame() {
                    Ok(Some(body)) => match Message::decode(&body) {
                        Ok(Message::Reply(rep)) => return Ok(rep),
                        Ok(Message::Refused { kind, reason }) => {
                            return Err(RecvFailure::Fatal(CallError::new(kind, reason)))
                        }
                        Ok(_) => continue,
                        Err(e) => {
                            return Err(RecvFailure::Fatal(CallError::new(
                                ErrorKind::System,
                                format!("daemon sent a malformed frame: {e}"),
                            )))
                        }
                    },
                    Ok(None) => {}
                    Err(e) => {
                        return Err(RecvFailure::Fatal(CallError::new(
                            ErrorKind::System,
                            format!("daemon framing: {e}"),
                        )))
                    }
                }
                let t = if nonblock {
                    Some(Duration::from_micros(1))
                } else {
                    timeout
                };
                if r.read_timeout != Some(t) {
                    r.stream.set_read_timeout(t).map_err(|e| {
                        RecvFailure::Fatal(CallError::new(ErrorKind::Os, e.to_string()))
                    })?;
                    r.read_timeout = Some(t);
                }
                let mut buf = [0u8; 16 * 1024];
                match r.stream.read(&mut buf) {
                    Ok(0) => {
                        return Err(RecvFailure::Fatal(CallError::new(
                            ErrorKind::System,
                            "the daemon closed the connection",
                        )))
                    }
                    Ok(n) => r.decoder.extend(&buf[..n]),
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        return Err(if nonblock {
                            RecvFailure::WouldBlock
                        } else {
                            RecvFailure::TimedOut
                        })
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        return Err(RecvFailure::Fatal(CallError::new(
                            ErrorKind::System,
                            format!("daemon connection: {e}"),
                        )))
                    }
                }
            },
        }
    }
}

/// Connects to `addr` and authenticates; returns the open stream and the Welcome.
pub(crate) fn handshake(
    addr: &str,
    hello: &Hello,
    timeout: Duration,
) -> Result<(TcpStream, Welcome, FrameDecoder), CallError> {
    let unreachable =
        |e: String| CallError::new(ErrorKind::Os, format!("cannot reach {addr}: {e}"));
    let sockaddr = addr
        .to_socket_addrs()
        .map_err(|e| unreachable(e.to_string()))?
        .next()
        .ok_or_else(|| unreachable("no address".into()))?;
    let mut stream =
        TcpStream::connect_timeout(&sockaddr, timeout).map_err(|e| unreachable(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| unreachable(e.to_string()))?;
    let mut frame = Vec::new();
    encode_frame(&Message::Hello(hello.clone()).encode(), &mut frame);
    stream
        .write_all(&frame)
        .map_err(|e| unreachable(e.to_string()))?;
    let mut decoder = FrameDecoder::new(64 << 20);
    let mut buf = [0u8; 16 * 1024];
    loop {
        match decoder.next_frame() {
            Ok(Some(body)) => {
                return match Message::decode(&body) {
                    Ok(Message::Welcome(w)) => Ok((stream, w, decoder)),
                    Ok(Message::Refused { kind, reason }) => Err(CallError::new(kind, reason)),
                    Ok(other) => Err(CallError::new(
                        ErrorKind::System,
                        format!("unexpected answer to hello: {other:?}"),
                    )),
                    Err(e) => Err(CallError::new(ErrorKind::System, e.to_string())),
                }
            }
            Ok(None) => {}
            Err(e) => return Err(CallError::new(ErrorKind::System, e.to_string())),
        }
        match stream.read(&mut buf) {
            Ok(0) => {
                return Err(CallError::new(
                    ErrorKind::System,
                    format!("{addr} closed the connection during the handshake"),
                ))
            }
            Ok(n) => decoder.extend(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(CallError::new(
                    ErrorKind::Time,
                    format!("no answer from {addr} during the handshake: {e}"),
                ))
            }
        }
    }
}
