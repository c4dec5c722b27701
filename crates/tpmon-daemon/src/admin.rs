//! The admin socket (`run_dir/admin.sock`, mode 0600): status, transaction listing
//! and manual resolution (`tpmon tx`), embedded-site recovery and checkpoints
//! (`tpmon rm`), and shutdown requests.
//! Access is by file permission: only the domain's user can connect.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tpmon_proto::{encode_frame, AdminRequest, FrameDecoder, Message};

use crate::domain::Domain;

/// Serves the admin socket; a Down request is passed to `down` together with the
/// connection, which is answered once the domain has stopped.
pub async fn serve(
    dom: Arc<Domain>,
    listener: UnixListener,
    down: mpsc::UnboundedSender<UnixStream>,
) {
    let mut shutdown = dom.shutdown_rx();
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let dom = dom.clone();
        let down = down.clone();
        tokio::spawn(async move {
            let mut stream = stream;
            let mut dec = FrameDecoder::new(4096);
            let mut buf = [0u8; 4096];
            let req = loop {
                match dec.next_frame() {
                    Ok(Some(body)) => break Message::decode(&body).ok(),
                    Ok(None) => {}
                    Err(_) => break None,
                }
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => dec.extend(&buf[..n]),
                }
            };
            match req {
                Some(Message::Admin(AdminRequest::Status)) => {
                    let text = crate::status::report(&dom).to_string();
                    reply(&mut stream, true, text).await;
                }
                Some(Message::Admin(AdminRequest::TxList)) => {
                    let list = dom.tm.list();
                    let text = serde_json::to_string(&list).unwrap_or_else(|_| "[]".into());
                    reply(&mut stream, true, text).await;
                }
                Some(Message::Admin(AdminRequest::TxResolve { gtrid, commit })) => {
                    let gtrid = String::from_utf8_lossy(&gtrid).into_owned();
                    tracing::info!(%gtrid, commit, "operator resolves a transaction");
                    match dom.tm.resolve(&gtrid, commit).await {
                        Ok(text) => reply(&mut stream, true, text).await,
                        Err(text) => reply(&mut stream, false, text).await,
                    }
                }
                Some(Message::Admin(AdminRequest::RmRecover { site })) => {
                    let Some(s) = dom.sites.named(&site).cloned() else {
                        reply(
                            &mut stream,
                            false,
                            format!("no embedded site named {site:?} on this node"),
                        )
                        .await;
                        return;
                    };
                    tracing::info!(%site, "operator starts rollback-recovery (Algorithm 3)");
                    let r = tokio::task::spawn_blocking(move || s.recover_failed()).await;
                    match r {
                        Ok(Ok(n)) => {
                            reply(
                                &mut stream,
                                true,
                                format!("site {site:?} restored checkpoint {n} and redid its log"),
                            )
                            .await
                        }
                        Ok(Err(e)) => {
                            reply(
                                &mut stream,
                                false,
                                format!("rollback-recovery of {site:?} failed: {e}"),
                            )
                            .await
                        }
                        Err(e) => {
                            reply(
                                &mut stream,
                                false,
                                format!("rollback-recovery of {site:?} failed: {e}"),
                            )
                            .await
                        }
                    }
                }
                Some(Message::Admin(AdminRequest::RmCheckpoint { site })) => {
                    let Some(s) = dom.sites.named(&site).cloned() else {
                        reply(
                            &mut stream,
                            false,
                            format!("no embedded site named {site:?} on this node"),
                        )
                        .await;
                        return;
                    };
                    let r = tokio::task::spawn_blocking(move || s.checkpoint_now()).await;
                    match r {
                        Ok(Ok(n)) => {
                            reply(
                                &mut stream,
                                true,
                                format!("site {site:?} took checkpoint {n}"),
                            )
                            .await
                        }
                        Ok(Err(e)) => {
                            reply(
                                &mut stream,
                                false,
                                format!("checkpoint of {site:?} failed: {e}"),
                            )
                            .await
                        }
                        Err(e) => {
                            reply(
                                &mut stream,
                                false,
                                format!("checkpoint of {site:?} failed: {e}"),
                            )
                            .await
                        }
                    }
                }
                Some(Message::Admin(AdminRequest::Down)) => {
                    tracing::info!("shutdown requested on the admin socket");
                    let _ = down.send(stream);
                }
                _ => {
                    tracing::warn!("admin socket: malformed request");
                    reply(&mut stream, false, "malformed admin request".into()).await;
                }
            }
        });
    }
}

/// Writes an admin reply.
pub async fn reply(stream: &mut UnixStream, ok: bool, text: String) {
    let mut frame = Vec::new();
    encode_frame(&Message::AdminReply { ok, text }.encode(), &mut frame);
    let _ = stream.write_all(&frame).await;
}
