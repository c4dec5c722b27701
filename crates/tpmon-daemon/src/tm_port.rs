//! The transaction manager's local port: a Unix stream socket in the run directory
//! (`tm.sock`, mode 0600 in a 0700 directory, and the peer's uid is checked) on which
//! local originators (fast-path clients and server instances) send `TxEnd` frames and
//! read `TxDone` frames. Remote clients send the same frames on their TCP session.
//!
//! Owns only the framing and the per-connection limits; the decisions are the
//! transaction manager's.

use std::sync::Arc;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::{UnixListener, UnixStream};
use tpmon_proto::{encode_frame, FrameDecoder, Message};
use tpmon_tm::LogCall;

use crate::domain::Domain;

/// File name of the socket in the run directory.
pub const TM_SOCKET: &str = "tm.sock";

/// Largest request frame (a TxEnd with the most branches fits easily).
const FRAME_MAX: usize = 256 * 1024;

/// Accepts originators until shutdown.
pub async fn serve(dom: Arc<Domain>, listener: UnixListener) {
    let mut shutdown = dom.shutdown_rx();
    // SAFETY: getuid has no preconditions.
    let me = unsafe { libc::getuid() };
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "tm socket: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        match stream.peer_cred() {
            Ok(c) if c.uid() == me => {}
            Ok(c) => {
                tracing::warn!(
                    uid = c.uid(),
                    "tm socket: refused a process of another user"
                );
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "tm socket: cannot read the peer's credentials");
                continue;
            }
        }
        connection(dom.clone(), stream);
    }
}

/// Serves one originator on a thread of its own: it sleeps in `read` until a request
/// comes, makes the decision durable itself and answers, so that a commit costs no
/// hop between threads beyond the two the socket needs. Ends when the peer closes.
fn connection(dom: Arc<Domain>, stream: UnixStream) {
    // One thread per originator: bounded by the domain's clients plus its server
    // instances (each may originate), so that a runaway local process cannot spawn
    // threads without end.
    let limit = dom.config.limits.clients_max as usize
        + dom
            .config
            .servers
            .iter()
            .map(|s| s.max_instances as usize)
            .sum::<usize>();
    if OPEN.fetch_add(1, Ordering::AcqRel) >= limit {
        OPEN.fetch_sub(1, Ordering::AcqRel);
        tracing::warn!(
            "tm socket: refused a connection: {limit} are open (clients_max plus instances)"
        );
        return;
    }
    let stream = match stream
        .into_std()
        .and_then(|s| s.set_nonblocking(false).map(|()| s))
    {
        Ok(s) => s,
        Err(e) => {
            OPEN.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(error = %e, "tm socket: cannot take over a connection");
            return;
        }
    };
    // An answer the peer does not read within this long closes the connection (its
    // phase 2 still runs): a peer that sends ends without reading cannot hold the
    // thread, and with it a decided transaction, in `write`.
    if let Err(e) = stream.set_write_timeout(Some(ANSWER_WRITE_TIMEOUT)) {
        OPEN.fetch_sub(1, Ordering::AcqRel);
        tracing::warn!(error = %e, "tm socket: cannot set a write timeout");
        return;
    }
    let handle = tokio::runtime::Handle::current();
    let spawned = std::thread::Builder::new()
        .name("tpmon-tm-port".into())
        .spawn(move || {
            // Counted out however the thread ends, a panic included.
            let _open = Opened;
            serve_blocking(&dom, &handle, stream);
        });
    if let Err(e) = spawned {
        OPEN.fetch_sub(1, Ordering::AcqRel);
        tracing::warn!(error = %e, "tm socket: cannot start a thread for a connection");
    }
}

/// Connections being served.
static OPEN: AtomicUsize = AtomicUsize::new(0);

/// Longest wait for the peer to take an answer.
const ANSWER_WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// One connection counted in [`OPEN`], until dropped.
struct Opened;

impl Drop for Opened {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::AcqRel);
    }
}

fn serve_blocking(
    dom: &Arc<Domain>,
    handle: &tokio::runtime::Handle,
    mut stream: std::os::unix::net::UnixStream,
) {
    let mut decoder = FrameDecoder::new(FRAME_MAX);
    let mut buf = vec![0u8; 16 * 1024];
    let mut out = Vec::new();
    loop {
        loop {
            match decoder.next_frame() {
                Ok(Some(body)) => {
                    let (reply, after) = match Message::decode(&body) {
                        Ok(Message::TxEnd(end)) => {
                            let (done, job) =
                                handle.block_on(dom.tm.end_deferred(end, LogCall::Direct));
                            (Message::TxDone(done), job)
                        }
                        Ok(_) => {
                            tracing::warn!("tm socket: unexpected message; closing");
                            return;
                        }
                        Err(e) => {
                            tracing::warn!("tm socket: malformed frame ({e}); closing");
                            return;
                        }
                    };
                    out.clear();
                    encode_frame(&reply.encode(), &mut out);
                    let sent = stream.write_all(&out);
                    // Phase 2 on this thread, after the answer: the originator's next
                    // request waits for it, which is the back-pressure it needs.
                    if let Some(job) = after {
                        job.run_blocking(handle);
                    }
                    if sent.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!("tm socket: bad frame ({e}); closing");
                    return;
                }
            }
        }
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => decoder.extend(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}
