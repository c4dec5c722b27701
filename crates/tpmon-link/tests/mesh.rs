//! Three members on loopback: every pair links up, frames flow both ways, a member
//! that stops is found dead within the heartbeat limits and comes back when it
//! restarts, a member whose traffic is dropped (a proxy that stops forwarding
//! without closing anything) is found dead from both sides and links up again when
//! the traffic flows, and a member with the wrong secret never joins.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tpmon_link::{Frame, Identity, Incoming, Item, Mesh, MeshConfig};

const LIMIT: Duration = Duration::from_secs(20);

async fn listeners(n: usize) -> (Vec<TcpListener>, Vec<SocketAddr>) {
    let mut ls = Vec::new();
    let mut addrs = Vec::new();
    for _ in 0..n {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        addrs.push(l.local_addr().expect("addr"));
        ls.push(l);
    }
    (ls, addrs)
}

fn config(me: u32, addrs: &[SocketAddr], secret: &str) -> MeshConfig {
    let mut c = MeshConfig::new(
        Identity {
            domain: "it".into(),
            secret: secret.as_bytes().to_vec(),
            me,
            members: addrs.len() as u32,
        },
        addrs.to_vec(),
    );
    c.heartbeat = Duration::from_millis(100);
    c.dead_after = Duration::from_millis(600);
    c.backoff_max = Duration::from_millis(300);
    c
}

/// Waits (without sleeping blindly: polls the condition) until `cond` holds.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn all_up(m: &Mesh) -> bool {
    m.peers().iter().all(|p| p.up())
}

async fn next(rx: &mut mpsc::Receiver<Incoming>) -> Incoming {
    tokio::time::timeout(LIMIT, rx.recv())
        .await
        .expect("a frame in time")
        .expect("channel open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_link_up_exchange_frames_and_survive_a_restart() {
    let (ls, addrs) = listeners(3).await;
    let mut meshes: Vec<Option<(Arc<Mesh>, mpsc::Receiver<Incoming>)>> = Vec::new();
    for (i, l) in ls.into_iter().enumerate() {
        meshes.push(Some(Mesh::start_on(config(i as u32, &addrs, "s3cret"), l)));
    }
    for (i, m) in meshes.iter().enumerate() {
        let m = m.as_ref().expect("mesh").0.clone();
        until(&format!("member {i} linked to all"), || all_up(&m)).await;
    }
    // Frames both ways, fields intact.
    let mut f = Frame::request(Item::Call, 0, b"hello n2".to_vec());
    f.session = 7;
    f.async_seq = 9;
    meshes[0]
        .as_ref()
        .expect("m0")
        .0
        .send(2, f.clone())
        .expect("send 0->2");
    let got = next(&mut meshes[2].as_mut().expect("m2").1).await;
    assert_eq!((got.from, got.frame), (0, f));
    let mut r = Frame::request(Item::Call, 2, b"hello n0".to_vec());
    r.response = true;
    meshes[2]
        .as_ref()
        .expect("m2")
        .0
        .send(0, r.clone())
        .expect("send 2->0");
    let got = next(&mut meshes[0].as_mut().expect("m0").1).await;
    assert_eq!((got.from, got.frame), (2, r));
    assert!(meshes[0]
        .as_ref()
        .expect("m0")
        .0
        .send(0, Frame::request(Item::Call, 0, vec![]))
        .is_err());

    // Member 1 stops: the others see it down (both directions), are told at once
    // (the change notification), count the failure in `downs`, and sends fail.
    let m0 = meshes[0].as_ref().expect("m0").0.clone();
    let (up, downs_before) = m0.link_state(1).expect("member 1");
    assert!(up);
    assert_eq!(m0.link_state(0), None, "no link to ourselves");
    let mut changes = m0.changes();
    changes.mark_unchanged();
    meshes[1] = None;
    tokio::time::timeout(LIMIT, changes.changed())
        .await
        .expect("a change in time")
        .expect("the mesh is alive");
    for i in [0usize, 2] {
        let m = meshes[i].as_ref().expect("mesh").0.clone();
        until(&format!("member {i} sees member 1 down"), || {
            m.peers()
                .iter()
                .any(|p| p.position == 1 && !p.inbound_up && !p.outbound_up)
        })
        .await;
        assert!(m
            .send(1, Frame::request(Item::Call, i as u32, vec![]))
            .is_err());
    }
    let (up, downs_after) = m0.link_state(1).expect("member 1");
    assert!(!up);
    assert!(
        downs_after >= downs_before + 2,
        "{downs_before} -> {downs_after}"
    );
    drop(m0);
    // It restarts on the same address and everyone links up again.
    let l = TcpListener::bind(addrs[1]).await.expect("rebind");
    meshes[1] = Some(Mesh::start_on(config(1, &addrs, "s3cret"), l));
    for (i, m) in meshes.iter().enumerate() {
        let m = m.as_ref().expect("mesh").0.clone();
        until(&format!("member {i} linked to all again"), || all_up(&m)).await;
    }
    let m0 = meshes[0].as_ref().expect("m0").0.clone();
    assert!(m0
        .peers()
        .iter()
        .any(|p| p.position == 1 && p.connects >= 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_the_wrong_secret_never_joins() {
    let (ls, addrs) = listeners(2).await;
    let mut it = ls.into_iter();
    let (good, _rx0) = Mesh::start_on(config(0, &addrs, "s3cret"), it.next().expect("l0"));
    let (bad, _rx1) = Mesh::start_on(config(1, &addrs, "guess"), it.next().expect("l1"));
    // Both keep trying and both keep refusing; neither direction ever comes up.
    until("the refusal is recorded", || {
        good.peers()
            .iter()
            .any(|p| p.last_error.contains("authentication") || p.last_error.contains("closed"))
            && bad.peers().iter().any(|p| !p.last_error.is_empty())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await; // several retry rounds
    for m in [&good, &bad] {
        assert!(
            m.peers().iter().all(|p| !p.outbound_up && !p.inbound_up),
            "{:?}",
            m.peers()
        );
    }
}

/// A TCP proxy to `to` on a port of its own. While `open` is false it forwards
/// nothing: bytes are read and dropped, new connections are accepted, and a side
/// that closes is not told to the other (traffic dropped, as on a cut cable).
async fn proxy(to: SocketAddr, open: Arc<AtomicBool>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = l.local_addr().expect("proxy addr");
    tokio::spawn(async move {
        while let Ok((client, _)) = l.accept().await {
            let Ok(upstream) = TcpStream::connect(to).await else {
                continue;
            };
            let (cr, cw) = client.into_split();
            let (ur, uw) = upstream.into_split();
            tokio::spawn(pump(cr, uw, open.clone()));
            tokio::spawn(pump(ur, cw, open.clone()));
        }
    });
    addr
}

async fn pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    open: Arc<AtomicBool>,
) {
    let mut buf = [0u8; 4096];
    loop {
        let n = r.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            // Closed: while cut, the other side must not learn it.
            while !open.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            return;
        }
        if open.load(Ordering::SeqCst) && w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_traffic_is_dropped_is_found_dead_from_both_sides_and_comes_back() {
    let (ls, addrs) = listeners(2).await;
    // Member 0 reaches member 1 through the proxy; member 1 reaches member 0 directly.
    let open = Arc::new(AtomicBool::new(true));
    let via = proxy(addrs[1], open.clone()).await;
    let mut it = ls.into_iter();
    let mut c0 = config(0, &[addrs[0], via], "s3cret");
    c0.handshake_timeout = Duration::from_millis(500);
    let mut c1 = config(1, &addrs, "s3cret");
    c1.handshake_timeout = Duration::from_millis(500);
    let (m0, _rx0) = Mesh::start_on(c0, it.next().expect("l0"));
    let (m1, _rx1) = Mesh::start_on(c1, it.next().expect("l1"));
    until("both linked", || all_up(&m0) && all_up(&m1)).await;

    open.store(false, Ordering::SeqCst);
    // Member 1 hears nothing from 0 any more; member 0's writes still succeed (the
    // proxy takes them) but its heartbeats go unanswered.
    until("member 1 sees its inbound link from 0 dead", || {
        !m1.peers()[0].inbound_up
    })
    .await;
    until("member 0 sees its outbound link to 1 dead", || {
        !m0.peers()[0].outbound_up
    })
    .await;
    assert!(
        m0.peers()[0].last_error.contains("answered no heartbeat"),
        "{:?}",
        m0.peers()
    );
    assert!(m0.send(1, Frame::request(Item::Call, 0, vec![])).is_err());
    assert!(!m1.link_state(0).expect("member 0").0);

    open.store(true, Ordering::SeqCst);
    until("both linked again", || all_up(&m0) && all_up(&m1)).await;
}
