//! The client port: authentication, then either a fast-path session (the client calls
//! the queues itself) or relayed calls (to this node's queues, or through the node
//! links to a service only other nodes offer).
//!
//! Owns the per-connection protocol state and its limits: nothing but a Hello is
//! accepted before authentication, frames are bounded (small before authentication),
//! a connection that does not authenticate in time is closed, and the number of
//! connections is capped. Every violation closes only the offending connection, with a
//! log line naming the peer and the problem.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tpmon_proto::{encode_frame, ErrorKind, FrameDecoder, Hello, Message};

use crate::domain::Domain;

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// Accepts client connections until shutdown.
pub async fn serve(dom: Arc<Domain>, listener: TcpListener) {
    let mut shutdown = dom.shutdown_rx();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let dom = dom.clone();
        tokio::spawn(async move {
            let max = dom.config.limits.clients_max as usize;
            if dom.clients.fetch_add(1, Ordering::AcqRel) >= max {
                dom.clients.fetch_sub(1, Ordering::AcqRel);
                tracing::warn!(%peer, "refused a client: {max} clients are connected (clients_max)");
                refuse(
                    stream,
                    ErrorKind::Limit,
                    format!("the domain allows {max} clients"),
                )
                .await;
                return;
            }
            connection(&dom, stream, peer).await;
            dom.clients.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

async fn refuse(mut stream: TcpStream, kind: ErrorKind, reason: String) {
    let mut frame = Vec::new();
    encode_frame(&Message::Refused { kind, reason }.encode(), &mut frame);
    let _ = stream.write_all(&frame).await;
    let _ = stream.shutdown().await;
}

/// Compares secrets in time independent of where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

async fn read_hello(stream: &mut TcpStream, decoder: &mut FrameDecoder) -> Result<Hello, String> {
    let mut buf = [0u8; 4096];
    loop {
        match decoder.next_frame() {
            Ok(Some(body)) => {
                return match Message::decode(&body) {
                    Ok(Message::Hello(h)) => Ok(h),
                    Ok(other) => Err(format!(
                        "sent {} before authenticating",
                        message_name(&other)
                    )),
                    Err(e) => Err(format!("malformed hello: {e}")),
                }
            }
            Ok(None) => {}
            Err(e) => return Err(format!("before authenticating: {e}")),
        }
        match stream.read(&mut buf).await {
            Ok(0) => return Err("closed the connection before authenticating".into()),
            Ok(n) => decoder.extend(&buf[..n]),
            Err(e) => return Err(format!("read error: {e}")),
        }
    }
}

fn message_name(m: &Message) -> &'static str {
    match m {
        Message::Hello(_) => "a hello",
        Message::Welcome(_) => "a welcome",
        Message::Refused { .. } => "a refusal",
        Message::Request(_) => "a request",
        Message::Reply(_) => "a reply",
        Message::Control(_) => "a control message",
        Message::Admin(_) => "an admin request",
        Message::AdminReply { .. } => "an admin reply",
        Message::Shutdown => "a shutdown message",
        Message::TxEnd(_) => "a transaction end",
        Message::TxDone(_) => "a transaction outcome",
        Message::Call(_) => "a call",
    }
}

async fn connection(dom: &Arc<Domain>, mut stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let limits = &dom.config.limits;
    let mut decoder = FrameDecoder::new(limits.unauthenticated_frame_bytes_max as usize);
    let hello = match tokio::time::timeout(
        limits.handshake_timeout,
        read_hello(&mut stream, &mut decoder),
    )
    .await
    {
        Ok(Ok(h)) => h,
        Ok(Err(why)) => {
            tracing::warn!(%peer, "closing client connection: {why}");
            refuse(stream, ErrorKind::Proto, why).await;
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, "closing client connection: no hello within {:?}", limits.handshake_timeout);
            refuse(stream, ErrorKind::Time, "authentication timed out".into()).await;
            return;
        }
    };
    if let Some(pw) = &dom.config.domain.password {
        if !same_secret(pw.expose(), &hello.domain_password) {
            let what = if hello.domain_password.is_empty() {
                "no"
            } else {
                "a wrong"
            };
            tracing::warn!(%peer, client = %hello.client_name, user = %hello.user_name, "refused a client: {what} domain password");
            refuse(stream, ErrorKind::Perm, format!("{what} domain password")).await;
            return;
        }
    }
    let mut welcome = dom.welcome.clone();
    welcome.client_id = dom.new_client_id();
    let client_id = welcome.client_id;
    tracing::debug!(%peer, client = %hello.client_name, id = welcome.client_id.0, "client authenticated");
    let mut frame = Vec::new();
    encode_frame(&Message::Welcome(welcome).encode(), &mut frame);
    if stream.write_all(&frame).await.is_err() {
        return;
    }
    decoder.set_max(limits.frame_bytes_max as usize);

    let conn = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let outstanding = Arc::new(AtomicUsize::new(0));
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        let mut out = Vec::new();
        while let Some(body) = rx.recv().await {
            out.clear();
            encode_frame(&body, &mut out);
            // Coalesce what is already queued into one write.
            while let Ok(more) = rx.try_recv() {
                encode_frame(&more, &mut out);
            }
            if wr.write_all(&out).await.is_err() {
                return;
            }
        }
    });
    let mut shutdown = dom.shutdown_rx();
    let mut buf = vec![0u8; 64 * 1024];
    let why = 'conn: loop {
        loop {
            match decoder.next_frame() {
                Ok(Some(body)) => match Message::decode(&body) {
                    Ok(Message::Request(req)) => {
                        if let Err(reply) = dom
                            .relay
                            .relay(dom, conn, &tx, &outstanding, req, None)
                            .await
                        {
                            let _ = tx.send(Message::Reply(reply).encode());
                        }
                    }
                    Ok(Message::Call(call)) => {
                        // A call for a service of another node (v5): routed like a
                        // request, with the caller's timeout.
                        if let Err(reply) = dom
                            .relay
                            .relay(
                                dom,
                                conn,
                                &tx,
                                &outstanding,
                                call.request,
                                Some(call.timeout_ms),
                            )
                            .await
                        {
                            let _ = tx.send(Message::Reply(reply).encode());
                        }
                    }
                    Ok(Message::TxEnd(end)) => {
                        // A remote originator ends its own transactions only: the gtrid
                        // names the client that began it.
                        let own = tpmon_proto::Gtrid::parse(&end.gtrid).is_some_and(|g| {
                            u64::from(g.origin) == client_id.0 & 0xFFFF_FFFF
                                && g.epoch == dom.tm.epoch()
                        });
                        if !own {
                            tracing::warn!(%peer, "refused to end a transaction this client did not begin");
                            let done = tpmon_proto::TxDone {
                                gtrid: end.gtrid,
                                outcome: tpmon_proto::TxOutcome::Refused,
                                detail: "this session did not begin the transaction".into(),
                            };
                            let _ = tx.send(Message::TxDone(done).encode());
                            continue;
                        }
                        let (dom, tx) = (dom.clone(), tx.clone());
                        tokio::spawn(async move {
                            let done = dom.tm.end(end).await;
                            let _ = tx.send(Message::TxDone(done).encode());
                        });
                    }
                    Ok(other) => {
                        break 'conn format!("protocol violation: sent {}", message_name(&other))
                    }
                    Err(e) => break 'conn format!("malformed frame: {e}"),
                },
                Ok(None) => break,
                Err(e) => break 'conn format!("bad frame: {e}"),
            }
        }
        tokio::select! {
            r = rd.read(&mut buf) => match r {
                Ok(0) => break String::new(),
                Ok(n) => decoder.extend(&buf[..n]),
                Err(e) => break format!("read error: {e}"),
            },
            _ = shutdown.changed() => break String::new(),
        }
    };
    if !why.is_empty() {
        tracing::warn!(%peer, "closing client connection: {why}");
    }
    dom.relay.forget_connection(conn);
    if let Some(remote) = &dom.remote {
        remote.forget_connection(conn);
    }
    drop(tx);
    writer.abort();
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
        assert!(!same_secret("", "x"));
        assert!(same_secret("", ""));
    }
}
