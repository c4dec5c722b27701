//! Per-frame integrity after the handshake: every packet on a link, heartbeats
//! included, ends with a 16-byte tag
//! `HMAC-SHA256(K_dir, u64 BE sequence | packet bytes from its size field to the end
//! of its body)` truncated to its first 16 bytes, where `K_dir` is the key of that
//! direction of that connection (derived by the handshake from the secret and both
//! challenges, so it is new for every connection) and the sequence counts the
//! packets sent in that direction on that connection, from 0.
//!
//! Owns the tag computation and its check; it does no I/O. Faults it survives: a
//! packet altered in flight (the tag does not match), replayed, reordered or dropped
//! (the expected sequence number differs, so the tag does not match), or spliced in
//! from another connection or direction (another key). The receiver closes the
//! connection at the first mismatch: nothing after it can be trusted. It gives
//! integrity and authenticity, not confidentiality: the bytes travel in clear.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::frame::{check_size, Frame, FrameError, TAG_BYTES};

type HmacSha256 = Hmac<Sha256>;

/// Bytes of a direction key.
pub const KEY_BYTES: usize = 32;

/// The key of one direction of one connection.
#[derive(Clone)]
pub struct DirectionKey(pub(crate) [u8; KEY_BYTES]);

impl std::fmt::Debug for DirectionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A key must never reach a log.
        f.write_str("DirectionKey(..)")
    }
}

/// The two keys of a connection, as one side sees them.
#[derive(Debug, Clone)]
pub struct LinkKeys {
    /// Tags the packets this side sends.
    pub send: DirectionKey,
    /// Checks the packets this side receives.
    pub recv: DirectionKey,
}

fn tag(key: &DirectionKey, seq: u64, bytes: &[u8]) -> HmacSha256 {
    let mut m = <HmacSha256 as Mac>::new_from_slice(&key.0).expect("HMAC takes keys of any length");
    m.update(&seq.to_be_bytes());
    m.update(bytes);
    m
}

/// Tags the packets sent in one direction.
#[derive(Debug)]
pub struct Sealer {
    key: DirectionKey,
    seq: u64,
}

impl Sealer {
    /// A sealer whose first packet gets sequence 0.
    pub fn new(key: DirectionKey) -> Sealer {
        Sealer { key, seq: 0 }
    }

    /// The bytes on the wire for `frame`: size, header, body, tag.
    pub fn seal(&mut self, frame: &Frame) -> Vec<u8> {
        let mut out = frame.encode();
        let full = tag(&self.key, self.seq, &out).finalize().into_bytes();
        out.extend_from_slice(&full[..TAG_BYTES]);
        self.seq = self.seq.wrapping_add(1);
        out
    }
}

/// Why a received packet was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Malformed (size, item type).
    #[error("{0}")]
    Frame(#[from] FrameError),
    /// The tag does not match: altered, replayed, reordered or forged.
    #[error("packet {seq} failed its integrity check (altered, replayed or forged in flight)")]
    Tag {
        /// The sequence number it should have had.
        seq: u64,
    },
}

/// Checks the packets received in one direction.
#[derive(Debug)]
pub struct Opener {
    key: DirectionKey,
    seq: u64,
    max: usize,
}

impl Opener {
    /// An opener expecting sequence 0 first, and packets of at most `max` bytes
    /// (size field excluded, tag included).
    pub fn new(key: DirectionKey, max: usize) -> Opener {
        Opener { key, seq: 0, max }
    }

    /// Takes the next whole packet from the front of `buf[*pos..]`, if there is one:
    /// advances `pos` past it and returns its frame. `Ok(None)` when the packet is not
    /// whole yet (read more).
    pub fn take(&mut self, buf: &[u8], pos: &mut usize) -> Result<Option<Frame>, OpenError> {
        let rest = &buf[*pos..];
        let Some(size) = rest.get(..4) else {
            return Ok(None);
        };
        let n = check_size(
            u32::from_be_bytes([size[0], size[1], size[2], size[3]]),
            self.max,
        )?;
        let Some(packet) = rest.get(..4 + n) else {
            return Ok(None);
        };
        let (signed, their_tag) = packet.split_at(4 + n - TAG_BYTES);
        if tag(&self.key, self.seq, signed)
            .verify_truncated_left(their_tag)
            .is_err()
        {
            return Err(OpenError::Tag { seq: self.seq });
        }
        // Authentic: only now is it decoded.
        let frame = Frame::decode(&signed[4..])?;
        self.seq = self.seq.wrapping_add(1);
        *pos += 4 + n;
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Item, PACKET_BYTES_MAX};

    fn pair() -> (Sealer, Opener) {
        let k = DirectionKey([7u8; KEY_BYTES]);
        (Sealer::new(k.clone()), Opener::new(k, PACKET_BYTES_MAX))
    }

    fn open_all(o: &mut Opener, bytes: &[u8]) -> Result<Vec<Frame>, OpenError> {
        let mut pos = 0;
        let mut out = Vec::new();
        while let Some(f) = o.take(bytes, &mut pos)? {
            out.push(f);
        }
        Ok(out)
    }

    #[test]
    fn sealed_frames_open_in_order_and_partial_packets_wait() {
        let (mut s, mut o) = pair();
        let a = Frame::request(Item::Call, 1, b"one".to_vec());
        let b = Frame::request(Item::Heartbeat, 1, vec![]);
        let mut bytes = s.seal(&a);
        bytes.extend(s.seal(&b));
        let cut = bytes.len() - 3;
        let mut pos = 0;
        assert_eq!(o.take(&bytes[..cut], &mut pos), Ok(Some(a)));
        assert_eq!(o.take(&bytes[..cut], &mut pos), Ok(None));
        assert_eq!(o.take(&bytes, &mut pos), Ok(Some(b)));
        assert_eq!(pos, bytes.len());
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        let (mut s, _) = pair();
        let bytes = s.seal(&Frame::request(Item::Commit, 1, b"gtrid".to_vec()));
        for i in 4..bytes.len() {
            for bit in 0..8 {
                let mut bad = bytes.clone();
                bad[i] ^= 1 << bit;
                let (_, mut o) = pair();
                let r = open_all(&mut o, &bad);
                assert!(r.is_err(), "byte {i} bit {bit}: {r:?}");
            }
        }
    }

    #[test]
    fn replayed_reordered_and_foreign_packets_are_refused() {
        let (mut s, mut o) = pair();
        let first = s.seal(&Frame::request(Item::Rollback, 1, vec![1]));
        let second = s.seal(&Frame::request(Item::Commit, 1, vec![2]));
        assert!(open_all(&mut o, &first).is_ok());
        // The same packet again: sequence 1 expected, it was tagged with 0.
        assert_eq!(open_all(&mut o, &first), Err(OpenError::Tag { seq: 1 }));
        // Reordered: the second packet first.
        let (_, mut o) = pair();
        assert_eq!(open_all(&mut o, &second), Err(OpenError::Tag { seq: 0 }));
        // Another key (the other direction, another connection).
        let mut o = Opener::new(DirectionKey([8u8; KEY_BYTES]), PACKET_BYTES_MAX);
        assert_eq!(open_all(&mut o, &first), Err(OpenError::Tag { seq: 0 }));
    }
}
