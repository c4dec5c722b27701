//! The node-link handshake: spec 02 §2.4's position exchange, then a mutual
//! challenge-response over the domain secret, before anything else is read or sent.
//!
//! 1. connector → acceptor: its position and the position it believes the acceptor
//!    has (two big-endian u32), and a 32-byte random challenge;
//! 2. the acceptor checks the positions (the spec's two refusals, with its
//!    messages), then answers with its own challenge and
//!    HMAC-SHA256(secret, "tpmon-link/accept" | domain | positions | both challenges);
//! 3. the connector checks that MAC (the acceptor knows the secret) and answers with
//!    HMAC-SHA256(secret, "tpmon-link/connect" | domain | positions | both challenges);
//! 4. the acceptor checks it. Only then is the link up.
//!
//! Owns the message layouts and the checks; the caller owns the socket and its time
//! limits. It must never log the secret or a MAC.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
    /// The socket failed or closed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn random_bytes() -> [u8; CHALLENGE_BYTES] {
    let mut b = [0u8; CHALLENGE_BYTES];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .is_ok();
    if !ok {
        // No /dev/urandom: mix what is at hand (the challenge must only not repeat).
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        b[..16].copy_from_slice(&t.to_le_bytes());
        b[16..20].copy_from_slice(&std::process::id().to_le_bytes());
    }
    b
}

fn mac(
    secret: &[u8],
    label: &str,
    domain: &str,
    from: u32,
    to: u32,
    a: &[u8],
    b: &[u8],
) -> [u8; MAC_BYTES] {
    // HMAC accepts keys of any length.
    let mut m = match <Hmac<Sha256> as Mac>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return [0u8; MAC_BYTES],
    };
    m.update(label.as_bytes());
    m.update(&(domain.len() as u32).to_be_bytes());
    m.update(domain.as_bytes());
    m.update(&from.to_be_bytes());
    m.update(&to.to_be_bytes());
    m.update(a);
    m.update(b);
    let mut out = [0u8; MAC_BYTES];
    out.copy_from_slice(&m.finalize().into_bytes());
    out
}

fn same(a: &[u8], b: &[u8]) -> bool {
    // Constant time: a MAC must not be guessable byte by byte from timing.
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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

/// Runs the connecting side towards the member at position `peer`.
pub async fn connect<S>(s: &mut S, id: &Identity, peer: u32) -> Result<(), HandshakeError>
where
    S: AsyncReadExt + AsyncWriteExt + Unpin,
{
    let mine = random_bytes();
    let mut hello = Vec::with_capacity(8 + CHALLENGE_BYTES);
    hello.extend_from_slice(&id.me.to_be_bytes());
    hello.extend_from_slice(&peer.to_be_bytes());
    hello.extend_from_slice(&mine);
    s.write_all(&hello).await?;
    let mut answer = [0u8; CHALLENGE_BYTES + MAC_BYTES];
    s.read_exact(&mut answer).await?;
    let (theirs, their_mac) = answer.split_at(CHALLENGE_BYTES);
    let want = mac(
        &id.secret,
        "tpmon-link/accept",
        &id.domain,
        id.me,
        peer,
        &mine,
        theirs,
    );
    if !same(&want, their_mac) {
        return Err(HandshakeError::Auth);
    }
    let proof = mac(
        &id.secret,
        "tpmon-link/connect",
        &id.domain,
        id.me,
        peer,
        &mine,
        theirs,
    );
    s.write_all(&proof).await?;
    Ok(())
}

/// Runs the accepting side; returns the connector's position.
pub async fn accept<S>(s: &mut S, id: &Identity) -> Result<u32, HandshakeError>
where
    S: AsyncReadExt + AsyncWriteExt + Unpin,
{
    let mut hello = [0u8; 8 + CHALLENGE_BYTES];
    s.read_exact(&mut hello).await?;
    let from = u32::from_be_bytes([hello[0], hello[1], hello[2], hello[3]]);
    let to = u32::from_be_bytes([hello[4], hello[5], hello[6], hello[7]]);
    check_positions(id, from, to)?;
    let theirs = &hello[8..];
    let mine = random_bytes();
    let proof = mac(
        &id.secret,
        "tpmon-link/accept",
        &id.domain,
        from,
        to,
        theirs,
        &mine,
    );
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
    let want = mac(
        &id.secret,
        "tpmon-link/connect",
        &id.domain,
        from,
        to,
        theirs,
        &mine,
    );
    if !same(&want, &their_mac) {
        return Err(HandshakeError::Auth);
    }
    Ok(from)
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
    ) -> (Result<(), HandshakeError>, Result<u32, HandshakeError>) {
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
        assert!(c.is_ok(), "{c:?}");
        assert_eq!(r.expect("accepted"), 0);
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
