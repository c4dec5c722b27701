//! Unix datagram endpoints: service queues and reply addresses.
//!
//! A server's request queue is a datagram socket bound to a path in the run directory;
//! every instance of the server inherits the same socket and blocks in `recv` on it, so
//! the kernel hands each request to exactly one idle instance (exclusive wake-up) and
//! keeps the rest queued. A caller owns an endpoint bound to an abstract address and
//! receives its replies there. A message larger than [`INLINE_BYTES_MAX`] travels in a
//! memfd passed with SCM_RIGHTS, so the limit on message size is the configured
//! frame limit, not the kernel's socket buffer.

use std::io::{IoSlice, IoSliceMut, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{
    self, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
    UnixAddr,
};
use thiserror::Error;

/// Largest message sent inline in one datagram; larger ones go through a memfd.
pub const INLINE_BYTES_MAX: usize = 60 * 1024;
/// First byte of a datagram that announces an out-of-line message. Inline messages
/// start with the protocol version, which is never this value.
const OUT_OF_LINE_MARKER: u8 = 0xFD;

/// An IPC failure.
#[derive(Debug, Error)]
pub enum IpcError {
    /// The destination queue is full and the caller asked not to wait.
    #[error("the destination queue is full")]
    WouldBlock,
    /// No reply arrived within the timeout.
    #[error("timed out")]
    TimedOut,
    /// Nobody listens at the destination (the process or queue is gone).
    #[error("nobody listens at {0}")]
    Gone(String),
    /// The message is larger than allowed.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Size of the message.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A datagram from another user was refused (only this process's user and root
    /// may talk to tpmon's sockets).
    #[error("refused a datagram from uid {uid} (pid {pid})")]
    Foreign {
        /// The sender's user id.
        uid: u32,
        /// The sender's process id.
        pid: i32,
    },
    /// A malformed datagram arrived (bad marker, truncated, bad fd).
    #[error("malformed datagram: {0}")]
    Malformed(String),
    /// An operating-system error.
    #[error("{context}: {source}")]
    Os {
        /// What we were doing.
        context: String,
        /// The errno.
        source: Errno,
    },
}

fn os(context: impl Into<String>) -> impl FnOnce(Errno) -> IpcError {
    let context = context.into();
    move |source| IpcError::Os { context, source }
}

/// Limits how many processes poll at once: polling only pays while there is a CPU
/// for every poller; beyond that it takes time slices the peers need.
pub trait SpinGate {
    /// Asks to poll; false means sleep instead.
    fn enter(&self) -> bool;
    /// Done polling (called once after every successful `enter`).
    fn leave(&self);
}

/// A gate that always allows polling.
pub struct NoGate;

impl SpinGate for NoGate {
    fn enter(&self) -> bool {
        true
    }
    fn leave(&self) {}
}

/// Adaptive polling state for [`Endpoint::recv_spinning`].
#[derive(Debug, Clone, Copy)]
pub struct Spin {
    limit: Duration,
    misses: u8,
}

impl Spin {
    /// Polls for at most `limit` before sleeping (zero: never poll).
    pub fn new(limit: Duration) -> Spin {
        Spin { limit, misses: 0 }
    }
}

/// A received message.
#[derive(Debug)]
pub struct Received {
    /// The message body.
    pub body: Vec<u8>,
}

/// A Unix datagram socket: a service queue or a caller's reply address.
#[derive(Debug)]
pub struct Endpoint {
    fd: OwnedFd,
    /// The abstract name (without the leading NUL) or filesystem path it is bound to.
    name: Vec<u8>,
    recv_buf: Vec<u8>,
    cmsg_buf: Vec<u8>,
    /// Sender credentials are checked (SO_PASSCRED could be set).
    passcred: bool,
    recv_timeout: Option<Duration>,
    message_bytes_max: usize,
}

fn dgram_socket() -> Result<OwnedFd, IpcError> {
    socket::socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(os("creating a Unix datagram socket"))
}

impl Endpoint {
    /// Binds a new endpoint to a fresh abstract address starting with `prefix`.
    pub fn bind_abstract(prefix: &str, message_bytes_max: usize) -> Result<Endpoint, IpcError> {
        let fd = dgram_socket()?;
        let mut last = Errno::EADDRINUSE;
        for _ in 0..16 {
            let name =
                format!("{prefix}/{}/{:016x}", std::process::id(), random_u64()).into_bytes();
            let addr = UnixAddr::new_abstract(&name).map_err(os("abstract address"))?;
            match socket::bind(fd.as_raw_fd(), &addr) {
                Ok(()) => return Ok(Self::from_parts(fd, name, message_bytes_max)),
                Err(e) => last = e,
            }
        }
        Err(IpcError::Os {
            context: "binding a reply address".into(),
            source: last,
        })
    }

    /// Binds a queue socket at a filesystem path (removing a stale socket file first).
    pub fn bind_path(path: &Path, message_bytes_max: usize) -> Result<Endpoint, IpcError> {
        let fd = dgram_socket()?;
        let _ = std::fs::remove_file(path);
        let addr = UnixAddr::new(path).map_err(os(format!("queue path {}", path.display())))?;
        socket::bind(fd.as_raw_fd(), &addr).map_err(os(format!("binding {}", path.display())))?;
        Ok(Self::from_parts(
            fd,
            path.as_os_str().as_encoded_bytes().to_vec(),
            message_bytes_max,
        ))
    }

    /// An unbound socket connected to the queue at `path`, for sending only: each
    /// send then skips the path lookup of `sendto`.
    pub fn connect_path(path: &Path, message_bytes_max: usize) -> Result<Endpoint, IpcError> {
        let fd = dgram_socket()?;
        let addr = UnixAddr::new(path).map_err(os(format!("queue path {}", path.display())))?;
        match socket::connect(fd.as_raw_fd(), &addr) {
            Ok(()) => {}
            Err(Errno::ECONNREFUSED) | Err(Errno::ENOENT) => {
                return Err(IpcError::Gone(path.display().to_string()))
            }
            Err(e) => {
                return Err(IpcError::Os {
                    context: format!("connecting to {}", path.display()),
                    source: e,
                })
            }
        }
        Ok(Self::from_parts(
            fd,
            path.as_os_str().as_encoded_bytes().to_vec(),
            message_bytes_max,
        ))
    }

    /// Sends on a socket made by [`Endpoint::connect_path`].
    pub fn send_connected(&self, body: &[u8], nonblock: bool) -> Result<(), IpcError> {
        self.send(None, body, nonblock, || {
            String::from_utf8_lossy(&self.name).into_owned()
        })
    }

    /// Adopts an inherited socket (a server instance's queue, passed by the daemon).
    ///
    /// # Safety
    /// `fd` must be an open Unix datagram socket that nothing else owns.
    pub unsafe fn from_raw_fd(fd: RawFd, message_bytes_max: usize) -> Endpoint {
        // SAFETY: the caller guarantees ownership of an open socket.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Self::from_parts(fd, Vec::new(), message_bytes_max)
    }

    fn from_parts(fd: OwnedFd, name: Vec<u8>, message_bytes_max: usize) -> Endpoint {
        // A bigger send buffer lets inline datagrams up to INLINE_BYTES_MAX through
        // even where the default is small; failure only costs the memfd path sooner.
        let _ = socket::setsockopt(&fd, socket::sockopt::SndBuf, &(4 * INLINE_BYTES_MAX));
        Endpoint {
            fd,
            name,
            recv_buf: vec![0u8; INLINE_BYTES_MAX + 64],
            cmsg_buf: nix::cmsg_space!(socket::UnixCredentials, [RawFd; 4]),
            passcred: false,
            recv_timeout: None,
            message_bytes_max,
        }
    }

    /// From now on, refuse datagrams of other users ([`IpcError::Foreign`]): the kernel
    /// stamps every datagram with its sender's credentials. Abstract addresses have no
    /// file permissions, so any local user can send to them; this check costs about a
    /// microsecond per message, so the hot path (callers' reply addresses) relies on
    /// unguessable call ids instead and only the daemon's relay socket uses it.
    pub fn refuse_other_users(&mut self) -> Result<(), IpcError> {
        socket::setsockopt(&self.fd, socket::sockopt::PassCred, &true)
            .map_err(os("setting SO_PASSCRED"))?;
        self.passcred = true;
        Ok(())
    }

    /// The bound name: abstract name bytes, or the path for a queue.
    pub fn name(&self) -> &[u8] {
        &self.name
    }

    /// The underlying descriptor (for polling).
    pub fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Duplicates the socket, e.g. to hand it to a child process.
    pub fn try_clone_fd(&self) -> Result<OwnedFd, IpcError> {
        self.fd
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| IpcError::Os {
                context: "duplicating a socket".into(),
                source: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
            })
    }

    /// Sends `body` to the queue at `path`.
    pub fn send_to_path(&self, path: &Path, body: &[u8], nonblock: bool) -> Result<(), IpcError> {
        let addr = UnixAddr::new(path).map_err(os(format!("queue path {}", path.display())))?;
        self.send(Some(&addr), body, nonblock, || path.display().to_string())
    }

    /// Sends `body` to the abstract address `name`.
    pub fn send_to_abstract(
        &self,
        name: &[u8],
        body: &[u8],
        nonblock: bool,
    ) -> Result<(), IpcError> {
        let addr = UnixAddr::new_abstract(name).map_err(os("abstract address"))?;
        self.send(Some(&addr), body, nonblock, || {
            format!("@{}", String::from_utf8_lossy(name))
        })
    }

    fn send(
        &self,
        addr: Option<&UnixAddr>,
        body: &[u8],
        nonblock: bool,
        describe: impl Fn() -> String,
    ) -> Result<(), IpcError> {
        if body.len() > self.message_bytes_max {
            return Err(IpcError::TooLarge {
                len: body.len(),
                max: self.message_bytes_max,
            });
        }
        let flags = if nonblock {
            MsgFlags::MSG_DONTWAIT
        } else {
            MsgFlags::empty()
        };
        let result = if body.len() <= INLINE_BYTES_MAX {
            match addr {
                Some(a) => socket::sendto(self.fd.as_raw_fd(), body, a, flags).map(|_| ()),
                None => socket::send(self.fd.as_raw_fd(), body, flags).map(|_| ()),
            }
        } else {
            let memfd = write_memfd(body)?;
            let mut head = [0u8; 9];
            head[0] = OUT_OF_LINE_MARKER;
            head[1..9].copy_from_slice(&(body.len() as u64).to_be_bytes());
            let fds = [memfd.as_raw_fd()];
            let cmsg = [ControlMessage::ScmRights(&fds)];
            let iov = [IoSlice::new(&head)];
            socket::sendmsg(self.fd.as_raw_fd(), &iov, &cmsg, flags, addr).map(|_| ())
        };
        match result {
            Ok(()) => Ok(()),
            Err(Errno::EAGAIN) => Err(IpcError::WouldBlock),
            Err(Errno::ECONNREFUSED) | Err(Errno::ENOENT) => Err(IpcError::Gone(describe())),
            Err(e) => Err(IpcError::Os {
                context: format!("sending to {}", describe()),
                source: e,
            }),
        }
    }

    /// Sets how long [`Endpoint::recv`] waits (`None` = forever). Cached: no system
    /// call when the value does not change.
    pub fn set_recv_timeout(&mut self, timeout: Option<Duration>) -> Result<(), IpcError> {
        if self.recv_timeout == timeout {
            return Ok(());
        }
        // A zero timeval means "forever" to the kernel; round tiny timeouts up.
        let tv = match timeout {
            None => nix::sys::time::TimeVal::new(0, 0),
            Some(d) => {
                let us = d.as_micros().clamp(1, i64::MAX as u128) as i64;
                nix::sys::time::TimeVal::new(us / 1_000_000, us % 1_000_000)
            }
        };
        socket::setsockopt(&self.fd, socket::sockopt::ReceiveTimeout, &tv)
            .map_err(os("setting the receive timeout"))?;
        self.recv_timeout = timeout;
        Ok(())
    }

    /// Receives one message like `recv(false)`, but first polls without blocking for
    /// up to the spin limit when recent waits were short: when the peer answers within
    /// that time this process never sleeps and the peer's send needs no wake-up (on a
    /// small virtual machine the wake-up is most of a round trip). After two polls in a
    /// row that found nothing, polling stops until a blocking wait again ends within
    /// the limit, so an idle process does not burn CPU.
    pub fn recv_spinning(
        &mut self,
        spin: &mut Spin,
        gate: &dyn SpinGate,
    ) -> Result<Received, IpcError> {
        self.recv_spinning_when(spin, gate, || true)
    }

    /// [`Endpoint::recv_spinning`], polling the socket only while `ready()` says a
    /// message may be there (e.g. a queue count in shared memory), so that polling
    /// costs memory reads instead of system calls.
    pub fn recv_spinning_when(
        &mut self,
        spin: &mut Spin,
        gate: &dyn SpinGate,
        ready: impl Fn() -> bool,
    ) -> Result<Received, IpcError> {
        if spin.limit.is_zero() {
            return self.recv(false);
        }
        if spin.misses < 2 && gate.enter() {
            let r = self.spin_then_recv(spin, ready);
            gate.leave();
            return r;
        }
        let t = std::time::Instant::now();
        let r = self.recv(false);
        if t.elapsed() <= spin.limit {
            spin.misses = 0;
        }
        r
    }

    fn spin_then_recv(
        &mut self,
        spin: &mut Spin,
        ready: impl Fn() -> bool,
    ) -> Result<Received, IpcError> {
        {
            let until = std::time::Instant::now() + spin.limit;
            loop {
                if ready() {
                    match self.recv(true) {
                        Err(IpcError::WouldBlock) => {}
                        other => {
                            spin.misses = 0;
                            return other;
                        }
                    }
                }
                if std::time::Instant::now() >= until {
                    break;
                }
                std::hint::spin_loop();
            }
            spin.misses += 1;
            self.recv(false)
        }
    }

    /// Receives one message, waiting up to the receive timeout (or not at all when
    /// `nonblock`).
    pub fn recv(&mut self, nonblock: bool) -> Result<Received, IpcError> {
        let flags = if nonblock {
            MsgFlags::MSG_DONTWAIT
        } else {
            MsgFlags::empty()
        };
        loop {
            let (len, truncated, fds, sender) = {
                let mut iov = [IoSliceMut::new(&mut self.recv_buf)];
                let msg = match socket::recvmsg::<()>(
                    self.fd.as_raw_fd(),
                    &mut iov,
                    Some(&mut self.cmsg_buf),
                    flags | MsgFlags::MSG_CMSG_CLOEXEC,
                ) {
                    Ok(m) => m,
                    Err(Errno::EINTR) => continue,
                    Err(Errno::EAGAIN) => {
                        return Err(if nonblock {
                            IpcError::WouldBlock
                        } else {
                            IpcError::TimedOut
                        })
                    }
                    Err(e) => {
                        return Err(IpcError::Os {
                            context: "receiving".into(),
                            source: e,
                        })
                    }
                };
                let mut fds = Vec::new();
                let mut sender = None;
                if let Ok(cmsgs) = msg.cmsgs() {
                    for c in cmsgs {
                        match c {
                            ControlMessageOwned::ScmRights(r) => {
                                // SAFETY: the kernel just installed these descriptors for us.
                                fds.extend(
                                    r.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                                );
                            }
                            ControlMessageOwned::ScmCredentials(c) => {
                                sender = Some((c.uid(), c.pid()))
                            }
                            _ => {}
                        }
                    }
                }
                (
                    msg.bytes,
                    msg.flags.contains(MsgFlags::MSG_TRUNC),
                    fds,
                    sender,
                )
            };
            if self.passcred {
                // Dropping `fds` closes anything a stranger passed us.
                match sender {
                    Some((uid, _)) if uid == 0 || uid == nix::unistd::geteuid().as_raw() => {}
                    Some((uid, pid)) => return Err(IpcError::Foreign { uid, pid }),
                    None => {
                        return Err(IpcError::Malformed(
                            "datagram without sender credentials".into(),
                        ))
                    }
                }
            }
            if truncated {
                return Err(IpcError::Malformed(format!(
                    "inline datagram larger than {INLINE_BYTES_MAX} bytes"
                )));
            }
            if len == 0 {
                return Err(IpcError::Malformed("empty datagram".into()));
            }
            if self.recv_buf[0] != OUT_OF_LINE_MARKER {
                if !fds.is_empty() {
                    return Err(IpcError::Malformed("unexpected descriptor".into()));
                }
                return Ok(Received {
                    body: self.recv_buf[..len].to_vec(),
                });
            }
            if len != 9 || fds.len() != 1 {
                return Err(IpcError::Malformed(
                    "out-of-line header without exactly one descriptor".into(),
                ));
            }
            let mut n = [0u8; 8];
            n.copy_from_slice(&self.recv_buf[1..9]);
            let n = u64::from_be_bytes(n) as usize;
            if n > self.message_bytes_max {
                return Err(IpcError::TooLarge {
                    len: n,
                    max: self.message_bytes_max,
                });
            }
            let mut file = std::fs::File::from(
                fds.into_iter()
                    .next()
                    .ok_or_else(|| IpcError::Malformed("missing descriptor".into()))?,
            );
            let mut body = Vec::with_capacity(n);
            file.seek(SeekFrom::Start(0))
                .and_then(|_| {
                    Read::by_ref(&mut file)
                        .take(n as u64)
                        .read_to_end(&mut body)
                })
                .map_err(|e| IpcError::Malformed(format!("reading out-of-line message: {e}")))?;
            if body.len() != n {
                return Err(IpcError::Malformed(format!(
                    "out-of-line message holds {} bytes, {n} announced",
                    body.len()
                )));
            }
            return Ok(Received { body });
        }
    }
}

fn write_memfd(body: &[u8]) -> Result<OwnedFd, IpcError> {
    let fd = nix::sys::memfd::memfd_create("tpmon-msg", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .map_err(os("memfd_create"))?;
    let mut file = std::fs::File::from(fd);
    file.write_all(body).map_err(|e| IpcError::Os {
        context: format!("writing a {}-byte message to a memfd", body.len()),
        source: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
    })?;
    Ok(OwnedFd::from(file))
}

/// A random number from the kernel (falls back to time and pid).
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_err()
    {
        // Falling back to time and pid is enough for uniqueness of a socket name.
        let t = crate::clock::monotonic_us();
        return t ^ (u64::from(std::process::id()) << 40);
    }
    u64::from_be_bytes(b)
}

/// The kernel's per-socket datagram queue length (`net.unix.max_dgram_qlen`).
pub fn kernel_queue_len() -> usize {
    std::fs::read_to_string("/proc/sys/net/unix/max_dgram_qlen")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(10)
}

/// Raises `net.unix.max_dgram_qlen` to `want` when it is lower and we may write it.
/// Returns the value in force afterwards. Sockets created later get the new length.
pub fn raise_kernel_queue_len(want: usize) -> usize {
    let now = kernel_queue_len();
    if now >= want {
        return now;
    }
    let _ = std::fs::write("/proc/sys/net/unix/max_dgram_qlen", want.to_string());
    kernel_queue_len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_and_large_messages_cross() {
        let mut a = Endpoint::bind_abstract("tpmon-test", 8 << 20).expect("bind a");
        let b = Endpoint::bind_abstract("tpmon-test", 8 << 20).expect("bind b");
        let small = vec![1u8; 100];
        b.send_to_abstract(a.name(), &small, false)
            .expect("send small");
        assert_eq!(a.recv(false).expect("recv").body, small);
        let large: Vec<u8> = (0..(3usize << 20)).map(|i| (i % 251) as u8 + 1).collect();
        b.send_to_abstract(a.name(), &large, false)
            .expect("send large");
        assert_eq!(a.recv(false).expect("recv").body, large);
    }

    #[test]
    fn limits_and_timeouts_are_typed() {
        let mut a = Endpoint::bind_abstract("tpmon-test", 1000).expect("bind");
        assert!(matches!(
            a.send_to_abstract(b"nobody-here", &[1], true),
            Err(IpcError::Gone(_))
        ));
        assert!(matches!(
            a.send_to_abstract(b"x", &[1u8; 2000], true),
            Err(IpcError::TooLarge {
                len: 2000,
                max: 1000
            })
        ));
        assert!(matches!(a.recv(true), Err(IpcError::WouldBlock)));
        a.set_recv_timeout(Some(Duration::from_millis(5)))
            .expect("timeout");
        assert!(matches!(a.recv(false), Err(IpcError::TimedOut)));
    }

    #[test]
    fn datagrams_of_other_users_are_refused() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to send as another user");
            return;
        }
        let mut a = Endpoint::bind_abstract("tpmon-test", 1 << 20).expect("bind");
        a.refuse_other_users().expect("passcred");
        let name = a.name().to_vec();
        let addr = UnixAddr::new_abstract(&name).expect("addr");
        // A child process that becomes `nobody` and sends a forged datagram. Only
        // system calls between fork and _exit.
        // SAFETY: the child calls only async-signal-safe functions and exits.
        match unsafe { nix::unistd::fork() }.expect("fork") {
            nix::unistd::ForkResult::Child => unsafe {
                let ok = libc::setuid(65534) == 0
                    && socket::socket(
                        AddressFamily::Unix,
                        SockType::Datagram,
                        SockFlag::empty(),
                        None,
                    )
                    .ok()
                    .and_then(|fd| {
                        socket::sendto(fd.as_raw_fd(), b"\x01forged", &addr, MsgFlags::empty()).ok()
                    })
                    .is_some();
                libc::_exit(if ok { 0 } else { 1 });
            },
            nix::unistd::ForkResult::Parent { child } => {
                let status = nix::sys::wait::waitpid(child, None).expect("wait");
                assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
        match a.recv(true) {
            Err(IpcError::Foreign { uid, .. }) => assert_eq!(uid, 65534),
            other => panic!("expected a refusal, got {other:?}"),
        }
        // Our own datagrams still pass.
        let b = Endpoint::bind_abstract("tpmon-test", 1 << 20).expect("bind");
        b.send_to_abstract(&name, b"\x01ours", true).expect("send");
        assert_eq!(a.recv(true).expect("recv").body, b"\x01ours");
    }

    #[test]
    fn queue_socket_by_path() {
        let dir = std::env::temp_dir().join(format!("tpmon-ipc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("q.sock");
        let mut q = Endpoint::bind_path(&path, 1 << 20).expect("bind path");
        let c = Endpoint::bind_abstract("tpmon-test", 1 << 20).expect("bind");
        c.send_to_path(&path, b"\x01req", false).expect("send");
        assert_eq!(q.recv(false).expect("recv").body, b"\x01req");
        drop(q);
        assert!(matches!(
            c.send_to_path(&path, b"\x01x", true),
            Err(IpcError::Gone(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
