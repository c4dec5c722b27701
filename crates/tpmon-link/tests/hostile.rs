//! The mesh against hostile or unlucky conditions: a test peer that speaks the
//! protocol by hand alters and replays packets after the handshake (the link
//! closes), strangers hold connections open without finishing a handshake (a real
//! member still links), a large frame crosses a slow network (not taken for death),
//! the owner stops taking frames for a while (heartbeats are still answered), and a
//! peer that authenticates then hangs up at once (the back-off grows).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tpmon_link::seal::Sealer;
use tpmon_link::{handshake, Frame, Identity, Incoming, Item, Mesh, MeshConfig, SendError};

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

fn identity(me: u32, members: usize) -> Identity {
    Identity {
        domain: "it".into(),
        secret: b"s3cret-s3cret-s3cret".to_vec(),
        me,
        members: members as u32,
    }
}

fn config(me: u32, addrs: &[SocketAddr]) -> MeshConfig {
    let mut c = MeshConfig::new(identity(me, addrs.len()), addrs.to_vec());
    c.heartbeat = Duration::from_millis(100);
    c.dead_after = Duration::from_millis(600);
    c.backoff_max = Duration::from_millis(300);
    c
}

/// Waits (polling the condition) until `cond` holds, at most `limit`.
async fn until_within(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn until(what: &str, cond: impl FnMut() -> bool) {
    until_within(LIMIT, what, cond).await;
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

/// Reads until the other side closes (or fails).
async fn closed(s: &mut TcpStream) {
    let mut b = [0u8; 256];
    tokio::time::timeout(LIMIT, async {
        while let Ok(n) = s.read(&mut b).await {
            if n == 0 {
                return;
            }
        }
    })
    .await
    .expect("closed in time");
}

/// Member 0 runs; the test is member 1, by hand.
async fn member_0_and_a_hand_peer() -> (Arc<Mesh>, mpsc::Receiver<Incoming>) {
    let (ls, addrs) = listeners(2).await;
    let mut it = ls.into_iter();
    // Member 1's listener is dropped: member 0's own connection to it fails, which
    // does not matter here (only member 0's inbound side is tested).
    let (m0, rx0) = Mesh::start_on(config(0, &addrs), it.next().expect("l0"));
    (m0, rx0)
}

async fn hand_connect(m0: &Mesh) -> (TcpStream, Sealer) {
    let to = m0.listen_addr();
    let mut s = TcpStream::connect(to).await.expect("connect");
    let keys = handshake::connect(&mut s, &identity(1, 2), 0)
        .await
        .expect("handshake");
    (s, Sealer::new(keys.send))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packet_altered_after_the_handshake_closes_the_link() {
    let (m0, mut rx0) = member_0_and_a_hand_peer().await;
    let (mut s, mut sealer) = hand_connect(&m0).await;
    let good = Frame::request(Item::Call, 1, b"one".to_vec());
    s.write_all(&sealer.seal(&good)).await.expect("write");
    let got = next(&mut rx0).await;
    assert_eq!((got.from, got.frame), (1, good));
    until("member 1's inbound link up", || m0.peers()[0].inbound_up).await;

    // A Commit whose body is altered in flight (one bit).
    let mut bad = sealer.seal(&Frame::request(Item::Commit, 1, b"gtrid-7".to_vec()));
    let body_at = 4 + tpmon_link::frame::HEADER_BYTES;
    bad[body_at + 2] ^= 0x01;
    s.write_all(&bad).await.expect("write");
    closed(&mut s).await;
    until("member 1's inbound link down", || !m0.peers()[0].inbound_up).await;
    let e = m0.peers()[0].last_error.clone();
    assert!(e.contains("integrity"), "{e}");
    assert!(rx0.try_recv().is_err(), "the altered frame was delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_packet_closes_the_link() {
    let (m0, mut rx0) = member_0_and_a_hand_peer().await;
    let (mut s, mut sealer) = hand_connect(&m0).await;
    let commit = Frame::request(Item::Commit, 1, b"gtrid-8".to_vec());
    let captured = sealer.seal(&commit);
    s.write_all(&captured).await.expect("write");
    assert_eq!(next(&mut rx0).await.frame, commit);
    // The same bytes again on the same connection: refused (sequence number).
    s.write_all(&captured).await.expect("write");
    closed(&mut s).await;
    until("member 1's inbound link down", || !m0.peers()[0].inbound_up).await;
    assert!(rx0.try_recv().is_err(), "the replayed frame was delivered");

    // And on a new connection (new keys): refused too.
    let (mut s2, _) = hand_connect(&m0).await;
    s2.write_all(&captured).await.expect("write");
    closed(&mut s2).await;
    assert!(rx0.try_recv().is_err(), "the replayed frame was delivered");
    assert!(m0.peers()[0].last_error.contains("integrity"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_strangers_do_not_keep_a_member_from_linking() {
    let (ls, addrs) = listeners(2).await;
    let mut it = ls.into_iter();
    let (m0, _rx0) = Mesh::start_on(config(0, &addrs), it.next().expect("l0"));
    // Strangers hold connections open without a word, and open a new one as soon as
    // one is closed: more than the whole inbound cap had been before handshakes got
    // their own.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let to = addrs[0];
    for _ in 0..12 {
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let Ok(mut s) = TcpStream::connect(to).await else {
                    continue;
                };
                let mut b = [0u8; 16];
                while let Ok(n) = s.read(&mut b).await {
                    if n == 0 {
                        break;
                    }
                }
            }
        });
    }
    let (m1, _rx1) = Mesh::start_on(config(1, &addrs), it.next().expect("l1"));
    until_within(Duration::from_secs(3), "both linked", || {
        all_up(&m0) && all_up(&m1)
    })
    .await;
    stop.store(true, Ordering::SeqCst);
}

/// A TCP proxy to `to` that forwards the direction towards `to` at about
/// `bytes_per_s` (a slow network) and the other at full speed.
async fn slow_proxy(to: SocketAddr, bytes_per_s: usize) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = l.local_addr().expect("proxy addr");
    tokio::spawn(async move {
        while let Ok((client, _)) = l.accept().await {
            let Ok(upstream) = TcpStream::connect(to).await else {
                continue;
            };
            let (mut cr, mut cw) = client.into_split();
            let (mut ur, mut uw) = upstream.into_split();
            tokio::spawn(async move {
                let mut buf = vec![0u8; bytes_per_s / 100];
                let mut tick = tokio::time::interval(Duration::from_millis(10));
                loop {
                    tick.tick().await;
                    match cr.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if uw.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut ur, &mut cw).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_frame_on_a_slow_network_is_not_taken_for_death() {
    let (ls, addrs) = listeners(2).await;
    // Member 0 reaches member 1 through a slow network (about 2 MiB/s): a 6 MiB
    // frame takes about 3 s, five times dead_after.
    let via = slow_proxy(addrs[1], 2 << 20).await;
    let mut it = ls.into_iter();
    let (m0, _rx0) = Mesh::start_on(config(0, &[addrs[0], via]), it.next().expect("l0"));
    let (m1, mut rx1) = Mesh::start_on(config(1, &addrs), it.next().expect("l1"));
    until("both linked", || all_up(&m0) && all_up(&m1)).await;
    let (_, downs0) = m0.link_state(1).expect("member 1");
    let (_, downs1) = m1.link_state(0).expect("member 0");
    let big = Frame::request(Item::Call, 0, vec![0x5a; 6 << 20]);
    m0.send(1, big.clone()).expect("send");
    let after = Frame::request(Item::Call, 0, b"after".to_vec());
    m0.send(1, after.clone()).expect("send");
    assert_eq!(next(&mut rx1).await.frame, big);
    assert_eq!(next(&mut rx1).await.frame, after);
    assert_eq!(m0.link_state(1), Some((true, downs0)), "{:?}", m0.peers());
    assert_eq!(m1.link_state(0), Some((true, downs1)), "{:?}", m1.peers());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_owner_does_not_make_a_healthy_peer_look_dead() {
    let (ls, addrs) = listeners(2).await;
    let mut it = ls.into_iter();
    let (m0, _rx0) = Mesh::start_on(config(0, &addrs), it.next().expect("l0"));
    let (m1, mut rx1) = Mesh::start_on(config(1, &addrs), it.next().expect("l1"));
    until("both linked", || all_up(&m0) && all_up(&m1)).await;
    let (_, downs) = m0.link_state(1).expect("member 1");
    // Member 1's owner takes nothing for a while: more frames than its channel holds.
    let n = 6000u64;
    for i in 0..n {
        let mut f = Frame::request(Item::Call, 0, vec![]);
        f.async_seq = i;
        loop {
            match m0.send(1, f.clone()) {
                Ok(()) => break,
                Err(SendError::Busy(_)) => tokio::task::yield_now().await,
                Err(e) => panic!("frame {i}: {e}"),
            }
        }
    }
    // An observation window of several dead_after: the link must stay up although
    // nobody takes the frames.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(m0.link_state(1), Some((true, downs)), "{:?}", m0.peers());
    for i in 0..n {
        assert_eq!(next(&mut rx1).await.frame.async_seq, i);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_hangs_up_after_the_handshake_is_retried_with_growing_back_off() {
    let (ls, addrs) = listeners(2).await;
    let mut it = ls.into_iter();
    let l0 = it.next().expect("l0");
    let l1 = it.next().expect("l1");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l1.accept().await {
            if handshake::accept(&mut s, &identity(1, 2)).await.is_ok() {
                count.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    let (_m0, _rx0) = Mesh::start_on(config(0, &addrs), l0);
    until("a first link", || accepted.load(Ordering::SeqCst) >= 1).await;
    let first = accepted.load(Ordering::SeqCst);
    // An observation window: with a back-off reset after each handshake the link
    // would be retried every 50 ms (about 30 times); growing to 300 ms, about 6.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let more = accepted.load(Ordering::SeqCst) - first;
    assert!((2..=12).contains(&more), "{more} reconnections in 1.5 s");
}
