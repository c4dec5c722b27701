//! What a service routine receives and how it ends.

use tpmon_buffer::Buffer;
use tpmon_proto::{ClientId, Flags, TxContext};

/// The request as a service routine sees it (XATMI `TPSVCINFO`).
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceRequest {
    /// The service name the caller asked for.
    pub service: String,
    /// Flags: TPTRAN while the routine runs in a global transaction (the caller's or an
    /// automatic one; set by the runtime), TPNOREPLY when no reply is wanted.
    pub flags: Flags,
    /// The calling client.
    pub client: ClientId,
    /// The caller's call id (the connection descriptor of XATMI).
    pub call_id: u64,
    /// Request data.
    pub buffer: Option<Buffer>,
    /// The global transaction the request belongs to, if any.
    pub tx: Option<TxContext>,
}

/// How a routine ended (`tpreturn`'s `rval`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// TPSUCCESS.
    Success,
    /// TPFAIL: the caller gets TPESVCFAIL and the reply data.
    Fail,
    /// TPEXIT: like TPFAIL, then this server process exits and is restarted.
    Exit,
}

/// What a routine returns: a reply, or a forward to another service.
#[derive(Debug, Clone, PartialEq)]
pub enum ServiceResult {
    /// `tpreturn`.
    Return {
        /// The outcome.
        outcome: Outcome,
        /// Application return code (`tpurcode` at the caller).
        rcode: i64,
        /// Reply data.
        buffer: Option<Buffer>,
    },
    /// `tpforward`: the named service receives the request and replies to the caller.
    Forward {
        /// Target service.
        service: String,
        /// Data for it.
        buffer: Option<Buffer>,
    },
}

/// Ends a routine with a reply (`tpreturn`).
pub fn tpreturn(outcome: Outcome, rcode: i64, buffer: impl Into<Option<Buffer>>) -> ServiceResult {
    ServiceResult::Return {
        outcome,
        rcode,
        buffer: buffer.into(),
    }
}

/// Ends a routine by forwarding the request (`tpforward`).
pub fn tpforward(service: impl Into<String>, buffer: impl Into<Option<Buffer>>) -> ServiceResult {
    ServiceResult::Forward {
        service: service.into(),
        buffer: buffer.into(),
    }
}
