//! Call flags (the XATMI `TP*` flag bits).
//!
//! Owns the bit values; they are the X/Open values so that the C ABI passes them through.

use std::ops::{BitOr, BitOrAssign};

/// A set of XATMI call flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Flags(pub u32);

impl Flags {
    /// No flags.
    pub const NONE: Flags = Flags(0);
    /// TPNOBLOCK: fail with TPEBLOCK instead of waiting.
    pub const NOBLOCK: Flags = Flags(0x0000_0001);
    /// TPSIGRSTRT: restart interrupted system calls.
    pub const SIGRSTRT: Flags = Flags(0x0000_0002);
    /// TPNOREPLY: one-way request, no reply expected.
    pub const NOREPLY: Flags = Flags(0x0000_0004);
    /// TPNOTRAN: the request does not join the caller's transaction.
    pub const NOTRAN: Flags = Flags(0x0000_0008);
    /// TPTRAN: the request runs inside a global transaction (set for services).
    pub const TRAN: Flags = Flags(0x0000_0010);
    /// TPNOTIME: ignore the blocking timeout.
    pub const NOTIME: Flags = Flags(0x0000_0020);
    /// TPGETANY: take any reply.
    pub const GETANY: Flags = Flags(0x0000_0080);
    /// TPNOCHANGE: the reply must have the type of the buffer supplied.
    pub const NOCHANGE: Flags = Flags(0x0000_0100);
    /// TPCONV: a conversational request.
    pub const CONV: Flags = Flags(0x0000_0400);
    /// TPSENDONLY: conversation control stays with the sender.
    pub const SENDONLY: Flags = Flags(0x0000_0800);
    /// TPRECVONLY: conversation control passes to the receiver.
    pub const RECVONLY: Flags = Flags(0x0000_1000);

    /// True when every bit of `other` is set.
    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }
    /// These flags without `other`'s bits.
    pub fn without(self, other: Flags) -> Flags {
        Flags(self.0 & !other.0)
    }
}

impl BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

impl BitOrAssign for Flags {
    fn bitor_assign(&mut self, rhs: Flags) {
        self.0 |= rhs.0;
    }
}
