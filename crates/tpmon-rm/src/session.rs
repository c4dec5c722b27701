//! The session protocol between a server process and a site hosted by the node
//! daemon, over a Unix stream socket (`run_dir/rm/<group>.sock`): one request, one
//! answer, each a `u32` length and a payload.
//!
//! Owns the byte layout of requests and answers, the serving loop (one thread per
//! session, the peer checked to be the domain's user, a cap on sessions, a frame size
//! limit), and the client side. It must not interpret the data it carries; a session
//! that breaks rolls back the branches it left active.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::codec::{CodecError, Reader, Writer, FRAME_BYTES_MAX};
use crate::error::{ErrorKind, RmError};
use crate::site::{Rows, Site};

/// Most sessions one site serves at a time.
pub const SESSIONS_MAX: usize = 1024;
/// Most branches one session may have begun and not yet prepared or rolled back.
pub const SESSION_BRANCHES_MAX: usize = 64;

/// One request of the session protocol. Fields: `xid` is the branch (`GTRID|BQUAL`,
/// empty outside a branch), `table`, `key` and `value` are the row's.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Start a branch.
    Begin(String),
    /// Read a key (`xid` empty: outside a branch).
    Get {
        xid: String,
        table: String,
        key: Vec<u8>,
    },
    /// Read under an exclusive lock (in a branch).
    GetForUpdate {
        xid: String,
        table: String,
        key: Vec<u8>,
    },
    /// Upsert.
    Put {
        xid: String,
        table: String,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// Insert (fails on a duplicate).
    Insert {
        xid: String,
        table: String,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// Delete.
    Delete {
        xid: String,
        table: String,
        key: Vec<u8>,
    },
    /// Range scan.
    Scan {
        xid: String,
        table: String,
        from: Vec<u8>,
        to: Option<Vec<u8>>,
        limit: u32,
    },
    /// Prepare; answers the vote and checkpoint number.
    Prepare(String),
    /// Roll back (active or prepared).
    Rollback(String),
    /// Commit with GCPN and originating site.
    Commit { xid: String, gcpn: u64, origin: u16 },
    /// The prepared branches with this prefix.
    Recover(String),
    /// XA forget of a heuristically completed branch (there never is one).
    Forget(String),
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Done, nothing to return.
    Done,
    /// A value or none.
    Value(Option<Vec<u8>>),
    /// Whether the key existed.
    Existed(bool),
    /// Rows.
    Rows(Rows),
    /// Vote: yes (with the checkpoint number) or read-only.
    Vote {
        /// Yes (false: read-only, already ended).
        yes: bool,
        /// The vote's checkpoint number.
        cpn: u64,
    },
    /// Branch ids.
    Xids(Vec<String>),
}

fn opt(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

impl Request {
    /// Encodes the request.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        match self {
            Request::Begin(x) => {
                w.u8(1).str(x);
            }
            Request::Get { xid, table, key } => {
                w.u8(2).str(xid).str(table).bytes(key);
            }
            Request::Put {
                xid,
                table,
                key,
                value,
            } => {
                w.u8(3).str(xid).str(table).bytes(key).bytes(value);
            }
            Request::Insert {
                xid,
                table,
                key,
                value,
            } => {
                w.u8(4).str(xid).str(table).bytes(key).bytes(value);
            }
            Request::Delete { xid, table, key } => {
                w.u8(5).str(xid).str(table).bytes(key);
            }
            Request::Scan {
                xid,
                table,
                from,
                to,
                limit,
            } => {
                w.u8(6)
                    .str(xid)
                    .str(table)
                    .bytes(from)
                    .u8(u8::from(to.is_some()));
                w.bytes(to.as_deref().unwrap_or_default()).u32(*limit);
            }
            Request::Prepare(x) => {
                w.u8(7).str(x);
            }
            Request::Rollback(x) => {
                w.u8(8).str(x);
            }
            Request::Commit { xid, gcpn, origin } => {
                w.u8(9).str(xid).u64(*gcpn).u16(*origin);
            }
            Request::Recover(p) => {
                w.u8(10).str(p);
            }
            Request::GetForUpdate { xid, table, key } => {
                w.u8(11).str(xid).str(table).bytes(key);
            }
            Request::Forget(x) => {
                w.u8(12).str(x);
            }
        }
        w.buf
    }

    /// Decodes a request.
    pub fn decode(b: &[u8]) -> Result<Request, CodecError> {
        let mut r = Reader::new(b);
        Ok(match r.u8()? {
            1 => Request::Begin(r.str()?),
            2 => Request::Get {
                xid: r.str()?,
                table: r.str()?,
                key: r.bytes()?,
            },
            3 => Request::Put {
                xid: r.str()?,
                table: r.str()?,
                key: r.bytes()?,
                value: r.bytes()?,
            },
            4 => Request::Insert {
                xid: r.str()?,
                table: r.str()?,
                key: r.bytes()?,
                value: r.bytes()?,
            },
            5 => Request::Delete {
                xid: r.str()?,
                table: r.str()?,
                key: r.bytes()?,
            },
            6 => {
                let (xid, table, from) = (r.str()?, r.str()?, r.bytes()?);
                let has_to = r.u8()? != 0;
                let to = r.bytes()?;
                Request::Scan {
                    xid,
                    table,
                    from,
                    to: has_to.then_some(to),
                    limit: r.u32()?,
                }
            }
            7 => Request::Prepare(r.str()?),
            8 => Request::Rollback(r.str()?),
            9 => Request::Commit {
                xid: r.str()?,
                gcpn: r.u64()?,
                origin: r.u16()?,
            },
            10 => Request::Recover(r.str()?),
            12 => Request::Forget(r.str()?),
            11 => Request::GetForUpdate {
                xid: r.str()?,
                table: r.str()?,
                key: r.bytes()?,
            },
            _ => {
                return Err(CodecError::Invalid {
                    what: "request code",
                    at: 0,
                })
            }
        })
    }

    /// Runs the request on `site`.
    pub fn run(&self, site: &Site) -> Result<Answer, RmError> {
        if matches!(
            self,
            Request::Get { .. }
                | Request::GetForUpdate { .. }
                | Request::Put { .. }
                | Request::Insert { .. }
                | Request::Delete { .. }
                | Request::Scan { .. }
        ) {
            site.stats
                .operations
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(match self {
            Request::Begin(x) => {
                site.begin(x)?;
                Answer::Done
            }
            Request::Get { xid, table, key } => Answer::Value(site.get(opt(xid), table, key)?),
            Request::GetForUpdate { xid, table, key } => match opt(xid) {
                Some(x) => Answer::Value(site.get_for_update(x, table, key)?),
                None => Answer::Value(site.get(None, table, key)?),
            },
            Request::Put {
                xid,
                table,
                key,
                value,
            } => {
                site.put(opt(xid), table, key, value)?;
                Answer::Done
            }
            Request::Insert {
                xid,
                table,
                key,
                value,
            } => {
                site.insert(opt(xid), table, key, value)?;
                Answer::Done
            }
            Request::Delete { xid, table, key } => {
                Answer::Existed(site.delete(opt(xid), table, key)?)
            }
            Request::Scan {
                xid,
                table,
                from,
                to,
                limit,
            } => Answer::Rows(site.scan(opt(xid), table, from, to.as_deref(), *limit as usize)?),
            Request::Prepare(x) => {
                let (yes, cpn) = site.prepare(x)?;
                Answer::Vote { yes, cpn }
            }
            Request::Rollback(x) => {
                site.rollback(x)?;
                Answer::Done
            }
            Request::Commit { xid, gcpn, origin } => {
                site.commit(xid, *gcpn, *origin)?;
                Answer::Done
            }
            Request::Recover(p) => Answer::Xids(site.recover(p)),
            Request::Forget(x) => {
                site.forget(x)?;
                Answer::Done
            }
        })
    }
}

impl Answer {
    fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(0);
        match self {
            Answer::Done => {
                w.u8(0);
            }
            Answer::Value(v) => {
                w.u8(1)
                    .u8(u8::from(v.is_some()))
                    .bytes(v.as_deref().unwrap_or_default());
            }
            Answer::Existed(e) => {
                w.u8(2).u8(u8::from(*e));
            }
            Answer::Rows(rows) => {
                w.u8(3).u32(rows.len() as u32);
                for (k, v) in rows {
                    w.bytes(k).bytes(v);
                }
            }
            Answer::Vote { yes, cpn } => {
                w.u8(4).u8(u8::from(*yes)).u64(*cpn);
            }
            Answer::Xids(xs) => {
                w.u8(5).u32(xs.len() as u32);
                for x in xs {
                    w.str(x);
                }
            }
        }
        w.buf
    }

    fn decode(b: &[u8]) -> Result<Result<Answer, RmError>, CodecError> {
        let mut r = Reader::new(b);
        let status = r.u8()?;
        if status != 0 {
            let kind = ErrorKind::from_code(status);
            return Ok(Err(RmError::Remote {
                kind,
                message: r.str()?,
            }));
        }
        Ok(Ok(match r.u8()? {
            0 => Answer::Done,
            1 => {
                let some = r.u8()? != 0;
                let v = r.bytes()?;
                Answer::Value(some.then_some(v))
            }
            2 => Answer::Existed(r.u8()? != 0),
            3 => {
                let n = r.u32()? as usize;
                let mut rows = Vec::with_capacity(n.min(4096));
                for _ in 0..n {
                    rows.push((r.bytes()?, r.bytes()?));
                }
                Answer::Rows(rows)
            }
            4 => Answer::Vote {
                yes: r.u8()? != 0,
                cpn: r.u64()?,
            },
            5 => {
                let n = r.u32()? as usize;
                let mut xs = Vec::with_capacity(n.min(4096));
                for _ in 0..n {
                    xs.push(r.str()?);
                }
                Answer::Xids(xs)
            }
            _ => {
                return Err(CodecError::Invalid {
                    what: "answer code",
                    at: 1,
                })
            }
        }))
    }
}

fn error_bytes(e: &RmError) -> Vec<u8> {
    let mut w = Writer::new();
    w.u8(e.kind().code()).str(&e.to_string());
    w.buf
}

fn read_frame(s: &mut UnixStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match s.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let n = u32::from_le_bytes(len) as usize;
    if n > FRAME_BYTES_MAX {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {n} bytes is over the limit of {FRAME_BYTES_MAX}"),
        ));
    }
    // Grown as the bytes arrive: a peer that announces a large frame and sends
    // nothing holds no memory for it.
    let mut buf = Vec::new();
    s.take(n as u64).read_to_end(&mut buf)?;
    if buf.len() < n {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the session closed inside a frame",
        ));
    }
    Ok(Some(buf))
}

fn write_frame(s: &mut UnixStream, payload: &[u8]) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(payload.len() + 4);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    s.write_all(&out)
}

/// Serves `site` on a Unix socket at `path` (replacing a stale one) from a thread of
/// its own; returns once the socket is bound.
pub fn serve(site: Arc<Site>, path: &Path) -> Result<(), RmError> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)
        .map_err(|e| RmError::io(path, "cannot bind the site socket", e))?;
    let live = Arc::new(AtomicUsize::new(0));
    let name = format!("rm-{}", site.config().name);
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            for conn in listener.incoming() {
                let stream = match conn {
                    Ok(s) => s,
                    Err(e) => {
                        // Out of descriptors or memory: back off instead of spinning.
                        tracing::warn!(site = site.id(), error = %e, "cannot accept a site session");
                        std::thread::sleep(std::time::Duration::from_millis(100));
                        continue;
                    }
                };
                if let Err(why) = check_peer(&stream) {
                    tracing::warn!(site = site.id(), "refusing a site session: {why}");
                    continue;
                }
                if live.fetch_add(1, Ordering::AcqRel) >= SESSIONS_MAX {
                    live.fetch_sub(1, Ordering::AcqRel);
                    tracing::warn!(
                        site = site.id(),
                        "refusing a site session: {SESSIONS_MAX} sessions open"
                    );
                    continue;
                }
                let (site, live) = (site.clone(), live.clone());
                let spawned =
                    std::thread::Builder::new()
                        .name("rm-session".into())
                        .spawn(move || {
                            session(&site, stream);
                            live.fetch_sub(1, Ordering::AcqRel);
                        });
                if spawned.is_err() {
                    tracing::error!("cannot start a site session thread");
                }
            }
        })
        .map_err(|e| RmError::io(path, "cannot start the site's thread", e))?;
    Ok(())
}

fn check_peer(s: &UnixStream) -> Result<(), String> {
    let cred = nix::sys::socket::getsockopt(s, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| format!("cannot read the peer's credentials: {e}"))?;
    let me = nix::unistd::geteuid().as_raw();
    if cred.uid() != me && cred.uid() != 0 {
        return Err(format!(
            "peer pid {} runs as uid {}, not the domain's user {me}",
            cred.pid(),
            cred.uid()
        ));
    }
    Ok(())
}

/// What a server's session may ask: its own branches only (those it began and has
/// not ended), a bounded number of them, and never a decision - commit, recover and
/// forget belong to the transaction manager, which calls the site directly.
fn session_check(req: &Request, open: &HashSet<String>) -> Result<(), RmError> {
    let own = |x: &str| {
        if x.is_empty() || open.contains(x) {
            Ok(())
        } else {
            Err(RmError::Protocol(format!(
                "branch {x} was not begun on this session"
            )))
        }
    };
    match req {
        Request::Begin(_) if open.len() >= SESSION_BRANCHES_MAX => Err(RmError::Invalid(format!(
            "a session may have at most {SESSION_BRANCHES_MAX} branches open"
        ))),
        Request::Begin(_) => Ok(()),
        Request::Get { xid, .. }
        | Request::GetForUpdate { xid, .. }
        | Request::Put { xid, .. }
        | Request::Insert { xid, .. }
        | Request::Delete { xid, .. }
        | Request::Scan { xid, .. } => own(xid),
        Request::Prepare(x) | Request::Rollback(x) => {
            if x.is_empty() {
                return Err(RmError::Invalid("no branch named".into()));
            }
            own(x)
        }
        Request::Commit { .. } | Request::Recover(_) | Request::Forget(_) => {
            Err(RmError::Protocol(
                "commit, recover and forget are the transaction manager's, not a session's".into(),
            ))
        }
    }
}

fn session(site: &Site, mut stream: UnixStream) {
    // Branches this session began and has not ended: rolled back if it breaks (the
    // server died inside a service), unless they were prepared (then the
    // transaction manager decides).
    let mut open: HashSet<String> = HashSet::new();
    loop {
        let frame = match read_frame(&mut stream) {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(site = site.id(), error = %e, "closing a site session");
                break;
            }
        };
        let answer = match Request::decode(&frame) {
            Ok(req) => match session_check(&req, &open) {
                Err(e) => error_bytes(&e),
                Ok(()) => {
                    let result = req.run(site);
                    match &req {
                        Request::Begin(x) if result.is_ok() => {
                            open.insert(x.clone());
                        }
                        Request::Prepare(x) | Request::Rollback(x) => {
                            open.remove(x);
                        }
                        _ => {}
                    }
                    match result {
                        Ok(a) => {
                            let bytes = a.encode();
                            if bytes.len() > FRAME_BYTES_MAX {
                                error_bytes(&RmError::Invalid(format!(
                                "the answer has {} bytes, over the limit of {FRAME_BYTES_MAX}; scan a smaller range or with a lower limit",
                                bytes.len()
                            )))
                            } else {
                                bytes
                            }
                        }
                        Err(e) => error_bytes(&e),
                    }
                }
            },
            Err(e) => {
                tracing::warn!(site = site.id(), error = %e, "malformed site request; closing the session");
                let _ = write_frame(
                    &mut stream,
                    &error_bytes(&RmError::Invalid(format!("malformed request: {e}"))),
                );
                break;
            }
        };
        if write_frame(&mut stream, &answer).is_err() {
            break;
        }
    }
    for x in open {
        site.abandon(&x);
    }
}

/// A client session with a site over its socket.
pub struct Session {
    stream: UnixStream,
}

impl Session {
    /// Connects to the site at `path`.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Session, RmError> {
        let stream = UnixStream::connect(path).map_err(|e| {
            RmError::Unavailable(format!("cannot connect to {}: {e}", path.display()))
        })?;
        stream
            .set_read_timeout(Some(timeout))
            .map_err(|e| RmError::Unavailable(e.to_string()))?;
        Ok(Session { stream })
    }

    /// Sends `req` and waits for the answer. A transport failure is
    /// [`RmError::Unavailable`] and the session must be dropped.
    pub fn call(&mut self, req: &Request) -> Result<Answer, RmError> {
        let broken =
            |e: std::io::Error| RmError::Unavailable(format!("the site session broke: {e}"));
        write_frame(&mut self.stream, &req.encode()).map_err(broken)?;
        let frame = read_frame(&mut self.stream)
            .map_err(broken)?
            .ok_or_else(|| RmError::Unavailable("the site closed the session".into()))?;
        Answer::decode(&frame)
            .map_err(|e| RmError::Unavailable(format!("malformed answer: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn decoding_garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Request::decode(&data);
            let _ = Answer::decode(&data);
        }
    }

    #[test]
    fn requests_round_trip() {
        let reqs = vec![
            Request::Begin("g|1".into()),
            Request::Get {
                xid: String::new(),
                table: "t".into(),
                key: b"k".to_vec(),
            },
            Request::Put {
                xid: "x".into(),
                table: "t".into(),
                key: b"k".to_vec(),
                value: b"v".to_vec(),
            },
            Request::Scan {
                xid: "x".into(),
                table: "t".into(),
                from: vec![],
                to: Some(b"z".to_vec()),
                limit: 9,
            },
            Request::Scan {
                xid: "x".into(),
                table: "t".into(),
                from: vec![1],
                to: None,
                limit: 9,
            },
            Request::Commit {
                xid: "x".into(),
                gcpn: 7,
                origin: 3,
            },
            Request::Recover("p".into()),
            Request::Forget("x".into()),
            Request::GetForUpdate {
                xid: "x".into(),
                table: "t".into(),
                key: b"k".to_vec(),
            },
        ];
        for r in reqs {
            assert_eq!(Request::decode(&r.encode()), Ok(r));
        }
        let a = Answer::Rows(vec![(b"a".to_vec(), b"1".to_vec())]);
        assert_eq!(Answer::decode(&a.encode()), Ok(Ok(a)));
    }
}
