//! The node-link handshake: spec 02 §2.4's position exchange, then a mutual
//! challenge-response over the domain secret, before anything else is read or sent.
//!
//! 1. connector → acceptor: the link protocol's magic and version (`"TPL"` and
//!    [`LINK_PROTOCOL_VERSION`]), its position and the position it believes the
//!    acceptor has (two big-endian u32), and a 32-byte random challenge;
//! 2. the acceptor refuses another version (naming both), checks the positions (the
//!    spec's two refusals, with its messages), then answers with its own challenge and
//!    HMAC-SHA256(secret, "tpmon-link/accept" | domain | positions | both challenges);
//! 3. the connector checks that MAC (the acceptor knows the secret) and answers with
//!    HMAC-SHA256(secret, "tpmon-link/connect" | domain | positions | both challenges);
//! 4. the acceptor checks it. Only then is the link up, and both sides derive the
//!    connection's two direction keys (HMAC-SHA256(secret, "tpmon-link-frames v1" |
//!    direction | domain | positions | both challenges)) with which every later
//!    packet is tagged ([`crate::seal`]).
//!
//! Owns the message layouts and the checks; the caller owns the socket and its time
//! limits. It must never log the secret, a MAC or a key. A challenge comes from
//! /dev/urandom only: without it the handshake fails (a predictable challenge would
//! let a recorded handshake be replayed).

use hmac::{Hmac, Mac};
use sha2::Sha256;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::seal::{DirectionKey, LinkKeys, KEY_BYTES};

/// The node-link protocol version this build speaks. 1 was the unversioned
/// handshake with untagged packets; 2 adds the version field and the per-packet tags.
pub const LINK_PROTOCOL_VERSION: u8 = 2;
/// The first bytes of a hello: `"TPL"` then the version.
const MAGIC: [u8; 3] = *b"TPL";

/// Bytes of a challenge.
pub const CHALLENGE_BYTES: usize = 32;
/// Bytes of a MAC.
pub const MAC_BYTES: usize = 32;

/// Why a handshake failed.
#[derive(Debug, Error)]
pub enum HandshakeError {
    /// The peer believes we have another position.
    #[error("connection information mismatch; my member pos (received {received}, local {local})")]
    Mismatch {
        /// What the peer sent.
        received: u32,
        /// Our position.
        local: u32,
    },
    /// The peer's own position is out of range (or ours).
    #[error("connection information is invalid; peer member pos (received {received}, max {max})")]
    Invalid {
        /// What the peer sent.
        received: u32,
        /// The highest valid position.
        max: u32,
    },
    /// The peer does not know the domain secret (or belongs to another domain).
    #[error("authentication failed: the peer does not know this domain's secret")]
    Auth,
    /// The connector closed the handshake after our proof instead of sending its own:
    /// it found our proof wrong, so the two sides hold different secrets (or domain
    /// names).
    #[error(
        "authentication failed: member {from} closed the handshake instead of proving it \
         knows this domain's secret (different secrets?)"
    )]
    Abandoned {
        /// The position the connector claimed.
        from: u32,
    },
    /// The peer speaks another version of the link protocol (another tpmon build).
    #[error(
        "the peer speaks node-link protocol {theirs}, this node speaks {LINK_PROTOCOL_VERSION}: \
         run the same tpmon version on every node"
    )]
    Version {
        /// Its version (1: a build from before the version field).
        theirs: String,
    },
    /// No random challenge could be drawn.
    #[error("cannot read /dev/urandom for a handshake challenge: {0}")]
    Random(std::io::Error),
    /// The socket failed or closed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn random_bytes() -> Result<[u8; CHALLENGE_BYTES], HandshakeError> {
    let mut b = [0u8; CHALLENGE_BYTES];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .map_err(HandshakeError::Random)?;
    Ok(b)
}

/// HMAC-SHA256(secret, label | u32 BE len(domain) | domain | from | to | a | b), not
/// finalized yet (the caller finalizes or verifies it).
fn mac(
    secret: &[u8],
    label: &str,
    domain: &str,
    from: u32,
    to: u32,
    a: &[u8],
    b: &[u8],
) -> Hmac<Sha256> {
    let mut m =
        <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes keys of any length");
    m.update(label.as_bytes());
    m.update(&(domain.len() as u32).to_be_bytes());
    m.update(domain.as_bytes());
    m.update(&from.to_be_bytes());
    m.update(&to.to_be_bytes());
    m.update(a);
    m.update(b);
    m
}

/// The two direction keys of a connection from `from` (the connector) to `to`, with
/// the connector's challenge `c` and the acceptor's `a`.
fn keys(id: &Identity, from: u32, to: u32, c: &[u8], a: &[u8]) -> (DirectionKey, DirectionKey) {
    let key = |dir: &str| {
        let label = format!("tpmon-link-frames v1/{dir}");
        let mut k = [0u8; KEY_BYTES];
        k.copy_from_slice(
            &mac(&id.secret, &label, &id.domain, from, to, c, a)
                .finalize()
                .into_bytes(),
        );
        DirectionKey(k)
    };
    (key("connector-to-acceptor"), key("acceptor-to-connector"))
}

fn hello_version(head: [u8; 4]) -> Result<(), HandshakeError> {
    if head[..3] != MAGIC {
        // A build from before the version field sends its position first.
        return Err(HandshakeError::Version { theirs: "1".into() });
    }
    if head[3] != LINK_PROTOCOL_VERSION {
        return Err(HandshakeError::Version {
            theirs: head[3].to_string(),
        });
    }
    Ok(())
}

/// Who is on each side and what they share.
#[derive(Clone)]
pub struct Identity {
    /// The domain's name.
    pub domain: String,
    /// The domain secret.
    pub secret: Vec<u8>,
    /// Our position.
    pub me: u32,
    /// Number of members.
    pub members: u32,
}

/// Bytes of a hello.
pub const HELLO_BYTES: usize = 4 + 8 + CHALLENGE_BYTES;

/// Runs the connecting side towards the member at position `peer`; returns the keys
/// of the connection.
pub async fn connect<S>(s: &mut S, id: &Identity, peer: u32) -> Result<LinkKeys, HandshakeError>
where
    S: AsyncReadExt + AsyncWriteExt + Unpin,
{
    let mine = random_bytes()?;
    let mut hello = Vec::with_capacity(HELLO_BYTES);
    hello.extend_from_slice(&MAGIC);
    hello.push(LINK_PROTOCOL_VERSION);
    hello.extend_from_slice(&id.me.to_be_bytes());
    hello.extend_from_slice(&peer.to_be_bytes());
    hello.extend_from_slice(&mine);
    s.write_all(&hello).await?;
    let mut answer = [0u8; CHALLENGE_BYTES + MAC_BYTES];
    s.read_exact(&mut answer).await?;
    let (theirs, their_mac) = answer.split_at(CHALLENGE_BYTES);
    // Constant time: a MAC must not be guessable byte by byte from timing.
    mac(
        &id.secret,
        "tpmon-link/accept",
        &id.domain,
        id.me,
        peer,
        &mine,
        theirs,
    )
    .verify_slice(their_mac)
    .map_err(|_| HandshakeError::Auth)?;
    let proof = mac(
        &id.secret,
        "tpmon-link/connect",
        &id.domain,
        id.me,
        peer,
        &mine,
        theirs,
    )
    .finalize()
    .into_bytes();
    s.write_all(&proof).await?;
    let (send, recv) = keys(id, id.me, peer, &mine, theirs);
    Ok(LinkKeys { send, recv })
}

/// Runs the accepting side; returns the connector's position and the keys of the
/// connection.
pub async fn accept<S>(s: &mut S, id: &Identity) -> Result<(u32, LinkKeys), HandshakeError>
where
    S: AsyncReadExt + AsyncWriteExt + Unpin,
{
    let mut head = [0u8; 4];
    s.read_exact(&mut head).await?;
    hello_version(head)?;
    let mut hello = [0u8; 8 + CHALLENGE_BYTES];
    s.read_exact(&mut hello).await?;
    let from = u32::from_be_bytes([hello[0], hello[1], hello[2], hello[3]]);
    let to = u32::from_be_bytes([hello[4], hello[5], hello[6], hello[7]]);
    check_positions(id, from, to)?;
    let theirs = &hello[8..];
    let mine = random_bytes()?;
    let proof = mac(
        &id.secret,
        "tpmon-link/accept",
        &id.domain,
        from,
        to,
        theirs,
        &mine,
    )
    .finalize()
    .into_bytes();
    let mut answer = Vec::with_capacity(CHALLENGE_BYTES + MAC_BYTES);
    answer.extend_from_slice(&mine);
    answer.extend_from_slice(&proof);
    s.write_all(&answer).await?;
    let mut their_mac = [0u8; MAC_BYTES];
    s.read_exact(&mut their_mac).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            HandshakeError::Abandoned { from }
        } else {
            HandshakeError::Io(e)
        }
    })?;
    mac(
        &id.secret,
        "tpmon-link/connect",
        &id.domain,
        from,
        to,
        theirs,
        &mine,
    )
    .verify_slice(&their_mac)
    .map_err(|_| HandshakeError::Auth)?;
    let (recv, send) = keys(id, from, to, theirs, &mine);
    Ok((from, LinkKeys { send, recv }))
}

/// The spec's two checks: the peer believes we are who we are, and its own position
/// exists (and is not ours).
pub fn check_positions(id: &Identity, from: u32, to: u32) -> Result<(), HandshakeError> {
    if to != id.me {
        return Err(HandshakeError::Mismatch {
            received: to,
            local: id.me,
        });
    }
    let max = id.members.saturating_sub(1);
    if from >= id.members || from == id.me {
        return Err(HandshakeError::Invalid {
            received: from,
            max,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(secret_b: &str) -> (Identity, Identity) {
        let a = Identity {
            domain: "d".into(),
            secret: b"s3cret".to_vec(),
            me: 0,
            members: 3,
        };
        let b = Identity {
            domain: "d".into(),
            secret: secret_b.as_bytes().to_vec(),
            me: 2,
            members: 3,
        };
        (a, b)
    }

    async fn run(
        a: Identity,
        b: Identity,
        believed: u32,
    ) -> (
        Result<LinkKeys, HandshakeError>,
        Result<(u32, LinkKeys), HandshakeError>,
    ) {
        let (mut x, mut y) = tokio::io::duplex(4096);
        let c = tokio::spawn(async move { connect(&mut x, &a, believed).await });
        let r = accept(&mut y, &b).await;
        drop(y);
        (c.await.expect("join"), r)
    }

    #[tokio::test]
    async fn both_sides_prove_the_secret() {
        let (a, b) = ids("s3cret");
        let (c, r) = run(a, b, 2).await;
        let c = c.expect("connected");
        let (from, r) = r.expect("accepted");
        assert_eq!(from, 0);
        // Each side's sending key is the other's receiving key, and the two
        // directions differ.
        assert_eq!(c.send.0, r.recv.0);
        assert_eq!(c.recv.0, r.send.0);
        assert_ne!(c.send.0, c.recv.0);
    }

    #[tokio::test]
    async fn every_connection_gets_new_keys() {
        let (a, b) = ids("s3cret");
        let (c1, _) = run(a.clone(), b.clone(), 2).await;
        let (c2, _) = run(a, b, 2).await;
        assert_ne!(c1.expect("c1").send.0, c2.expect("c2").send.0);
    }

    #[tokio::test]
    async fn another_protocol_version_is_refused_naming_both() {
        let (_, b) = ids("s3cret");
        // A build from before the version field: position, believed position,
        // challenge.
        let mut old = Vec::new();
        old.extend_from_slice(&0u32.to_be_bytes());
        old.extend_from_slice(&2u32.to_be_bytes());
        old.extend_from_slice(&[9u8; CHALLENGE_BYTES]);
        for (hello, theirs) in [(old, "1"), (b"TPL\x07".to_vec(), "7")] {
            let (mut x, mut y) = tokio::io::duplex(4096);
            tokio::io::AsyncWriteExt::write_all(&mut x, &hello)
                .await
                .expect("write");
            let e = accept(&mut y, &b).await.expect_err("refused");
            assert_eq!(
                e.to_string(),
                format!(
                    "the peer speaks node-link protocol {theirs}, this node speaks 2: run the \
                     same tpmon version on every node"
                )
            );
        }
    }

    #[tokio::test]
    async fn a_wrong_secret_is_refused_on_both_sides() {
        let (a, b) = ids("other");
        let (c, r) = run(a, b, 2).await;
        assert!(matches!(c, Err(HandshakeError::Auth)), "{c:?}");
        // The connector found the acceptor's proof wrong and hung up: the acceptor
        // says so, naming the member.
        assert!(
            matches!(r, Err(HandshakeError::Abandoned { from: 0 })),
            "{r:?}"
        );
    }

    #[tokio::test]
    async fn positions_are_checked_with_the_specs_messages() {
        let (a, b) = ids("s3cret");
        let (_, r) = run(a.clone(), b.clone(), 1).await;
        let e = r.expect_err("mismatch");
        assert_eq!(
            e.to_string(),
            "connection information mismatch; my member pos (received 1, local 2)"
        );
        let far = Identity { me: 7, ..a };
        let (_, r) = run(far, b, 2).await;
        assert_eq!(
            r.expect_err("invalid").to_string(),
            "connection information is invalid; peer member pos (received 7, max 2)"
        );
    }

    proptest::proptest! {
        /// Whatever a stranger sends, the acceptor refuses it with an error (never a
        /// panic, never a link).
        #[test]
        fn garbage_is_refused(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
            let (_, b) = ids("s3cret");
            let r = rt.block_on(async move {
                let (mut x, mut y) = tokio::io::duplex(4096);
                tokio::io::AsyncWriteExt::write_all(&mut x, &data).await.expect("write");
                drop(x);
                accept(&mut y, &b).await
            });
            proptest::prop_assert!(r.is_err());
        }
    }
}
