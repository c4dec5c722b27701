//! The error kinds a caller sees (the XATMI `tperrno` values).
//!
//! Owns the numeric codes that travel on the wire; they are the X/Open XATMI values so
//! that a C ABI can hand them to existing programs unchanged.

use std::fmt;

/// A `tperrno`-equivalent error kind (spec 01 §1.7). The discriminants are the XATMI
/// values from `atmi.h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ErrorKind {
    /// TPEABORT: the transaction was aborted.
    Abort = 1,
    /// TPEBADDESC: bad call descriptor.
    BadDesc = 2,
    /// TPEBLOCK: the call would block and TPNOBLOCK was given.
    Block = 3,
    /// TPEINVAL: bad argument.
    Inval = 4,
    /// TPELIMIT: a limit was reached (outstanding calls, connections, sizes).
    Limit = 5,
    /// TPENOENT: no such service, or no server offers it.
    NoEnt = 6,
    /// TPEOS: an operating-system error.
    Os = 7,
    /// TPEPERM: permission denied (bad domain password, not authorised).
    Perm = 8,
    /// TPEPROTO: the call was made out of order.
    Proto = 9,
    /// TPESVCERR: the service failed abnormally (crashed, timed out, bad return).
    SvcErr = 10,
    /// TPESVCFAIL: the service returned TPFAIL or TPEXIT; reply data is delivered.
    SvcFail = 11,
    /// TPESYSTEM: an internal error of the monitor.
    System = 12,
    /// TPETIME: the blocking timeout or transaction timeout expired.
    Time = 13,
    /// TPETRAN: the transaction could not be started or joined.
    Tran = 14,
    /// TPGOTSIG: interrupted by a signal.
    GotSig = 15,
    /// TPERMERR: a resource manager error.
    RmErr = 16,
    /// TPEITYPE: the service does not accept the request's buffer type.
    IType = 17,
    /// TPEOTYPE: the caller does not accept the reply's buffer type.
    OType = 18,
    /// TPERELEASE: a peer of an older release.
    Release = 19,
    /// TPEHAZARD: heuristic hazard.
    Hazard = 20,
    /// TPEHEURISTIC: heuristic decision (mixed outcome).
    Heuristic = 21,
    /// TPEEVENT: a conversational event occurred.
    Event = 22,
    /// TPEMATCH: a name conflict.
    Match = 23,
    /// TPEDIAGNOSTIC: see the diagnostic.
    Diagnostic = 24,
    /// TPEMIB: an administrative request failed.
    Mib = 25,
}

impl ErrorKind {
    const ALL: [ErrorKind; 25] = [
        ErrorKind::Abort,
        ErrorKind::BadDesc,
        ErrorKind::Block,
        ErrorKind::Inval,
        ErrorKind::Limit,
        ErrorKind::NoEnt,
        ErrorKind::Os,
        ErrorKind::Perm,
        ErrorKind::Proto,
        ErrorKind::SvcErr,
        ErrorKind::SvcFail,
        ErrorKind::System,
        ErrorKind::Time,
        ErrorKind::Tran,
        ErrorKind::GotSig,
        ErrorKind::RmErr,
        ErrorKind::IType,
        ErrorKind::OType,
        ErrorKind::Release,
        ErrorKind::Hazard,
        ErrorKind::Heuristic,
        ErrorKind::Event,
        ErrorKind::Match,
        ErrorKind::Diagnostic,
        ErrorKind::Mib,
    ];

    /// The wire / `tperrno` code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The kind for a code, if it is one.
    pub fn from_code(code: u8) -> Option<ErrorKind> {
        Self::ALL.iter().copied().find(|k| k.code() == code)
    }

    /// The XATMI name, e.g. `TPENOENT`.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Abort => "TPEABORT",
            ErrorKind::BadDesc => "TPEBADDESC",
            ErrorKind::Block => "TPEBLOCK",
            ErrorKind::Inval => "TPEINVAL",
            ErrorKind::Limit => "TPELIMIT",
            ErrorKind::NoEnt => "TPENOENT",
            ErrorKind::Os => "TPEOS",
            ErrorKind::Perm => "TPEPERM",
            ErrorKind::Proto => "TPEPROTO",
            ErrorKind::SvcErr => "TPESVCERR",
            ErrorKind::SvcFail => "TPESVCFAIL",
            ErrorKind::System => "TPESYSTEM",
            ErrorKind::Time => "TPETIME",
            ErrorKind::Tran => "TPETRAN",
            ErrorKind::GotSig => "TPGOTSIG",
            ErrorKind::RmErr => "TPERMERR",
            ErrorKind::IType => "TPEITYPE",
            ErrorKind::OType => "TPEOTYPE",
            ErrorKind::Release => "TPERELEASE",
            ErrorKind::Hazard => "TPEHAZARD",
            ErrorKind::Heuristic => "TPEHEURISTIC",
            ErrorKind::Event => "TPEEVENT",
            ErrorKind::Match => "TPEMATCH",
            ErrorKind::Diagnostic => "TPEDIAGNOSTIC",
            ErrorKind::Mib => "TPEMIB",
        }
    }

    /// A one-line description, like `tpstrerror`.
    pub fn description(self) -> &'static str {
        match self {
            ErrorKind::Abort => "transaction aborted",
            ErrorKind::BadDesc => "bad call descriptor",
            ErrorKind::Block => "the call would block",
            ErrorKind::Inval => "invalid argument",
            ErrorKind::Limit => "limit reached",
            ErrorKind::NoEnt => "no such service",
            ErrorKind::Os => "operating-system error",
            ErrorKind::Perm => "permission denied",
            ErrorKind::Proto => "call out of order",
            ErrorKind::SvcErr => "service error",
            ErrorKind::SvcFail => "service failed",
            ErrorKind::System => "internal system error",
            ErrorKind::Time => "timed out",
            ErrorKind::Tran => "transaction error",
            ErrorKind::GotSig => "interrupted by a signal",
            ErrorKind::RmErr => "resource manager error",
            ErrorKind::IType => "request buffer type not accepted",
            ErrorKind::OType => "reply buffer type not accepted",
            ErrorKind::Release => "incompatible release",
            ErrorKind::Hazard => "heuristic hazard",
            ErrorKind::Heuristic => "heuristic decision",
            ErrorKind::Event => "conversational event",
            ErrorKind::Match => "name conflict",
            ErrorKind::Diagnostic => "diagnostic available",
            ErrorKind::Mib => "administrative request failed",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_unique() {
        for k in ErrorKind::ALL {
            assert_eq!(ErrorKind::from_code(k.code()), Some(k));
        }
        assert_eq!(ErrorKind::from_code(0), None);
        assert_eq!(ErrorKind::from_code(26), None);
        assert_eq!(ErrorKind::NoEnt.code(), 6);
        assert_eq!(ErrorKind::Time.code(), 13);
    }
}
