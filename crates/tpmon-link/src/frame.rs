//! Node-link frames (spec 02 §2.4): a 4-byte packet size, a header of seven
//! big-endian fields (item type, sender position, session id, session sequence,
//! driver transaction id, async sequence, response queue id), the body, then a
//! 16-byte integrity tag ([`crate::seal`] computes and checks it; the packet size
//! counts header, body and tag).
//!
//! Owns the byte layout and its limits; decoding never panics and refuses unknown
//! item types (the connection that sent one is closed). It does no I/O.

use thiserror::Error;

/// Bytes of the header after the packet size.
pub const HEADER_BYTES: usize = 4 + 4 + 8 + 8 + 8 + 8 + 8;
/// Bytes of the integrity tag that ends every packet ([`crate::seal`]).
pub const TAG_BYTES: usize = 16;
/// Default largest packet (header, body and tag; the size field excluded).
pub const PACKET_BYTES_MAX: usize = 16 << 20;
/// Largest body a packet of [`PACKET_BYTES_MAX`] bytes can carry.
pub const BODY_BYTES_MAX: usize = PACKET_BYTES_MAX - HEADER_BYTES - TAG_BYTES;
/// Item types with this bit set are responses; without it, requests.
pub const RESPONSE_BIT: u32 = 0x8000_0000;

/// What a frame carries. The value is the wire code; a response has
/// [`RESPONSE_BIT`] set on its request's code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Item {
    /// Liveness, sent every heartbeat interval on an otherwise idle link.
    Heartbeat,
    /// CONNECT_GLOBAL_RECOVERY_MEMBER: (re)establish the mesh with a member.
    ConnectMember,
    /// CHECK_RECOVERED_NODE: has the member finished its recovery?
    CheckRecovered,
    /// GET_MAX_SCN: the member's highest commit sequence number.
    GetMaxScn,
    /// QUERY_ADVICE_INDOUBT_GTX: the advice for a transaction prepared here.
    QueryAdvice,
    /// RECOVER_INDOUBT_GLOBAL_TX: resolve in-doubt transactions with the advice.
    RecoverInDoubt,
    /// INVALIDATE_SHARD_TARGET: a failed member's services leave routing.
    InvalidateTarget,
    /// A service call routed to the member.
    Call,
    /// A subordinate's branch work: prepare.
    Prepare,
    /// A subordinate's branch work: commit.
    Commit,
    /// A subordinate's branch work: roll back.
    Rollback,
    /// An embedded site's redo request (spec 03 Algorithms 3 and 4).
    Redo,
}

impl Item {
    /// Every item type.
    pub const ALL: [Item; 12] = [
        Item::Heartbeat,
        Item::ConnectMember,
        Item::CheckRecovered,
        Item::GetMaxScn,
        Item::QueryAdvice,
        Item::RecoverInDoubt,
        Item::InvalidateTarget,
        Item::Call,
        Item::Prepare,
        Item::Commit,
        Item::Rollback,
        Item::Redo,
    ];

    /// The request's wire code.
    pub fn code(self) -> u32 {
        match self {
            Item::Heartbeat => 1,
            Item::ConnectMember => 2,
            Item::CheckRecovered => 3,
            Item::GetMaxScn => 4,
            Item::QueryAdvice => 5,
            Item::RecoverInDoubt => 6,
            Item::InvalidateTarget => 7,
            Item::Call => 16,
            Item::Prepare => 17,
            Item::Commit => 18,
            Item::Rollback => 19,
            Item::Redo => 20,
        }
    }

    /// The item with this code (the response bit cleared), if any.
    pub fn from_code(code: u32) -> Option<(Item, bool)> {
        let response = code & RESPONSE_BIT != 0;
        let base = code & !RESPONSE_BIT;
        Item::ALL
            .iter()
            .copied()
            .find(|i| i.code() == base)
            .map(|i| (i, response))
    }
}

/// One node-link frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What it carries.
    pub item: Item,
    /// A response (true) or a request.
    pub response: bool,
    /// The sending member's position.
    pub sender: u32,
    /// Session id (the caller's conversation; 0 when none).
    pub session: u64,
    /// Sequence number within the session.
    pub seq: u64,
    /// The driver's transaction id (0 when none).
    pub txid: u64,
    /// Asynchronous sequence (matches a response to its request).
    pub async_seq: u64,
    /// The queue the response goes to.
    pub reply_queue: u64,
    /// The body.
    pub body: Vec<u8>,
}

impl Frame {
    /// A request of `item` from `sender` with `body`, every other field 0.
    pub fn request(item: Item, sender: u32, body: Vec<u8>) -> Frame {
        Frame {
            item,
            response: false,
            sender,
            session: 0,
            seq: 0,
            txid: 0,
            async_seq: 0,
            reply_queue: 0,
            body,
        }
    }

    /// Size of its packet on the wire (header, body and tag; the size field
    /// excluded).
    pub fn packet_bytes(&self) -> usize {
        HEADER_BYTES + self.body.len() + TAG_BYTES
    }

    /// The bytes on the wire up to the tag: packet size (which counts the tag),
    /// header, body. [`crate::seal::Sealer::seal`] appends the tag.
    pub fn encode(&self) -> Vec<u8> {
        let size = self.packet_bytes() as u32;
        let mut out = Vec::with_capacity(4 + size as usize);
        out.extend_from_slice(&size.to_be_bytes());
        let code = self.item.code() | if self.response { RESPONSE_BIT } else { 0 };
        out.extend_from_slice(&code.to_be_bytes());
        out.extend_from_slice(&self.sender.to_be_bytes());
        for v in [
            self.session,
            self.seq,
            self.txid,
            self.async_seq,
            self.reply_queue,
        ] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out.extend_from_slice(&self.body);
        out
    }

    /// Decodes one packet without its 4-byte size prefix and without its tag
    /// (checked already).
    pub fn decode(packet: &[u8]) -> Result<Frame, FrameError> {
        if packet.len() < HEADER_BYTES {
            return Err(FrameError::Short(packet.len()));
        }
        let u32_at =
            |i: usize| u32::from_be_bytes([packet[i], packet[i + 1], packet[i + 2], packet[i + 3]]);
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&packet[i..i + 8]);
            u64::from_be_bytes(b)
        };
        let code = u32_at(0);
        let (item, response) = Item::from_code(code).ok_or(FrameError::UnknownItem(code))?;
        Ok(Frame {
            item,
            response,
            sender: u32_at(4),
            session: u64_at(8),
            seq: u64_at(16),
            txid: u64_at(24),
            async_seq: u64_at(32),
            reply_queue: u64_at(40),
            body: packet[HEADER_BYTES..].to_vec(),
        })
    }
}

/// Checks a packet size read from the wire.
pub fn check_size(size: u32, max: usize) -> Result<usize, FrameError> {
    let n = size as usize;
    if n < HEADER_BYTES + TAG_BYTES {
        return Err(FrameError::Short(n));
    }
    if n > max {
        return Err(FrameError::TooLarge { size: n, max });
    }
    Ok(n)
}

/// A malformed frame.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// Smaller than a header and a tag.
    #[error(
        "packet of {0} bytes is shorter than the {HEADER_BYTES}-byte header and the \
         {TAG_BYTES}-byte tag"
    )]
    Short(usize),
    /// Over the limit.
    #[error("packet of {size} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Announced size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// An item type nobody defined.
    #[error("unknown item type {0:#x}")]
    UnknownItem(u32),
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn item() -> impl Strategy<Value = Item> {
        (0..Item::ALL.len()).prop_map(|i| Item::ALL[i])
    }

    proptest! {
        #[test]
        fn frames_round_trip(item in item(), response in any::<bool>(), sender in any::<u32>(),
                             f in proptest::array::uniform5(any::<u64>()),
                             body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let fr = Frame { item, response, sender, session: f[0], seq: f[1], txid: f[2], async_seq: f[3], reply_queue: f[4], body };
            let bytes = fr.encode();
            let size = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
            prop_assert_eq!(check_size(size, PACKET_BYTES_MAX), Ok(bytes.len() - 4 + TAG_BYTES));
            prop_assert_eq!(Frame::decode(&bytes[4..]), Ok(fr));
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = Frame::decode(&data);
            if data.len() >= 4 {
                let _ = check_size(u32::from_be_bytes([data[0], data[1], data[2], data[3]]), PACKET_BYTES_MAX);
            }
        }
    }

    #[test]
    fn unknown_items_and_bad_sizes_are_refused() {
        let mut p = Frame::request(Item::Call, 1, vec![]).encode();
        p[4..8].copy_from_slice(&0x0000_0999u32.to_be_bytes());
        assert_eq!(Frame::decode(&p[4..]), Err(FrameError::UnknownItem(0x999)));
        assert!(matches!(
            check_size(3, PACKET_BYTES_MAX),
            Err(FrameError::Short(3))
        ));
        // A header without a tag is short too.
        assert!(matches!(
            check_size(HEADER_BYTES as u32, PACKET_BYTES_MAX),
            Err(FrameError::Short(_))
        ));
        assert!(check_size(PACKET_BYTES_MAX as u32, PACKET_BYTES_MAX).is_ok());
        assert!(check_size(PACKET_BYTES_MAX as u32 + 1, PACKET_BYTES_MAX).is_err());
        assert!(matches!(
            check_size(u32::MAX, PACKET_BYTES_MAX),
            Err(FrameError::TooLarge { .. })
        ));
    }
}
