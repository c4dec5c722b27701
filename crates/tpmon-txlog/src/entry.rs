//! The log's data model: one [`Entry`] per global transaction, its [`TxState`],
//! [`Advice`] and [`Branch`]es, and the limits every entry must respect.
//!
//! Owns the validation of entries against the limits (the codec relies on it: a valid
//! entry always encodes into a record no larger than the record limit). It must never
//! touch storage. Faults: none of its own; it refuses out-of-limit values from callers
//! with a typed [`EntryError`] so that nothing oversized ever reaches the disk.

use thiserror::Error;

/// Longest global transaction id, in bytes (the XA limit).
pub const GTRID_BYTES_MAX: usize = 64;
/// Longest branch qualifier, in bytes (the XA limit).
pub const BQUAL_BYTES_MAX: usize = 64;
/// Largest opaque `data` the transaction manager may attach to an entry, in bytes.
pub const DATA_BYTES_MAX: usize = 4096;
/// Most branches one entry may list.
pub const BRANCHES_MAX: usize = 256;

/// State of a global transaction (spec 02 §2.2); the discriminant is the on-disk code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum TxState {
    /// Work in progress.
    Active = 1,
    /// Blocked (waiting).
    Block = 2,
    /// Prepared: voted yes, in doubt until told the outcome.
    Prepare = 3,
    /// Decided or completed commit.
    Commit = 4,
    /// Decided or completed rollback.
    Rollback = 5,
    /// Slot free.
    Idle = 6,
    /// Committed in memory, durable commit pending.
    PreCommit = 7,
}

impl TxState {
    /// Every state, in code order.
    pub const ALL: [TxState; 7] = [
        TxState::Active,
        TxState::Block,
        TxState::Prepare,
        TxState::Commit,
        TxState::Rollback,
        TxState::Idle,
        TxState::PreCommit,
    ];

    /// The on-disk code (1..=7).
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The state with this on-disk code, if any.
    pub const fn from_code(code: u8) -> Option<TxState> {
        match code {
            1 => Some(TxState::Active),
            2 => Some(TxState::Block),
            3 => Some(TxState::Prepare),
            4 => Some(TxState::Commit),
            5 => Some(TxState::Rollback),
            6 => Some(TxState::Idle),
            7 => Some(TxState::PreCommit),
            _ => None,
        }
    }
}

/// What whoever knows the outcome advises for an in-doubt transaction; the
/// discriminant is the on-disk code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[repr(u8)]
pub enum Advice {
    /// No advice yet.
    #[default]
    None = 0,
    /// Commit it.
    Commit = 1,
    /// Roll it back.
    Rollback = 2,
}

impl Advice {
    /// The on-disk code (0..=2).
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The advice with this on-disk code, if any.
    pub const fn from_code(code: u8) -> Option<Advice> {
        match code {
            0 => Some(Advice::None),
            1 => Some(Advice::Commit),
            2 => Some(Advice::Rollback),
            _ => None,
        }
    }
}

/// One branch of a global transaction: which resource manager, which branch qualifier,
/// and how far the branch got (opaque to the log).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Branch {
    /// Resource manager id.
    pub rm: u32,
    /// XA branch qualifier, at most [`BQUAL_BYTES_MAX`] bytes.
    pub bqual: Vec<u8>,
    /// Branch progress, interpreted by the transaction manager only.
    pub state: u8,
}

/// The durable image of one global transaction.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Entry {
    /// XA global transaction id, 1..=[`GTRID_BYTES_MAX`] bytes; the key of the log.
    pub gtrid: Vec<u8>,
    /// Transaction state.
    pub state: TxState,
    /// Advice for an in-doubt transaction.
    pub advice: Advice,
    /// The branches, at most [`BRANCHES_MAX`].
    pub branches: Vec<Branch>,
    /// Opaque bytes for the transaction manager, at most [`DATA_BYTES_MAX`].
    pub data: Vec<u8>,
}

impl Entry {
    /// An entry with no advice, no branches and no data.
    pub fn new(gtrid: impl Into<Vec<u8>>, state: TxState) -> Entry {
        Entry {
            gtrid: gtrid.into(),
            state,
            advice: Advice::None,
            branches: Vec::new(),
            data: Vec::new(),
        }
    }

    /// Checks every limit; the log calls this before accepting an entry.
    pub fn validate(&self) -> Result<(), EntryError> {
        validate_gtrid(&self.gtrid)?;
        if self.data.len() > DATA_BYTES_MAX {
            return Err(EntryError::DataTooLong {
                bytes: self.data.len(),
            });
        }
        if self.branches.len() > BRANCHES_MAX {
            return Err(EntryError::TooManyBranches {
                count: self.branches.len(),
            });
        }
        for (index, b) in self.branches.iter().enumerate() {
            if b.bqual.len() > BQUAL_BYTES_MAX {
                return Err(EntryError::BqualTooLong {
                    branch: index,
                    bytes: b.bqual.len(),
                });
            }
        }
        Ok(())
    }
}

/// Checks a gtrid's length (1..=[`GTRID_BYTES_MAX`]).
pub fn validate_gtrid(gtrid: &[u8]) -> Result<(), EntryError> {
    if gtrid.is_empty() {
        return Err(EntryError::GtridEmpty);
    }
    if gtrid.len() > GTRID_BYTES_MAX {
        return Err(EntryError::GtridTooLong { bytes: gtrid.len() });
    }
    Ok(())
}

/// An entry or update that breaks a limit; nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EntryError {
    /// The gtrid is empty.
    #[error("the gtrid is empty")]
    GtridEmpty,
    /// The gtrid is longer than [`GTRID_BYTES_MAX`].
    #[error("the gtrid has {bytes} bytes; at most {GTRID_BYTES_MAX} are allowed")]
    GtridTooLong {
        /// Its length.
        bytes: usize,
    },
    /// A branch qualifier is longer than [`BQUAL_BYTES_MAX`].
    #[error("branch {branch}'s bqual has {bytes} bytes; at most {BQUAL_BYTES_MAX} are allowed")]
    BqualTooLong {
        /// Index of the branch in `branches`.
        branch: usize,
        /// Its length.
        bytes: usize,
    },
    /// `data` is longer than [`DATA_BYTES_MAX`].
    #[error("the data has {bytes} bytes; at most {DATA_BYTES_MAX} are allowed")]
    DataTooLong {
        /// Its length.
        bytes: usize,
    },
    /// More than [`BRANCHES_MAX`] branches.
    #[error("the entry has {count} branches; at most {BRANCHES_MAX} are allowed")]
    TooManyBranches {
        /// How many.
        count: usize,
    },
    /// An update that sets neither the state nor the advice.
    #[error("an update must set the state, the advice or both")]
    EmptyUpdate,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_match_the_spec() {
        for s in TxState::ALL {
            assert_eq!(TxState::from_code(s.code()), Some(s));
        }
        assert_eq!(TxState::Prepare.code(), 3);
        assert_eq!(TxState::PreCommit.code(), 7);
        assert_eq!(TxState::from_code(0), None);
        assert_eq!(TxState::from_code(8), None);
        for a in [Advice::None, Advice::Commit, Advice::Rollback] {
            assert_eq!(Advice::from_code(a.code()), Some(a));
        }
        assert_eq!(Advice::from_code(3), None);
    }

    #[test]
    fn limits_are_enforced_at_their_boundaries() {
        let mut e = Entry::new(vec![1; GTRID_BYTES_MAX], TxState::Prepare);
        e.data = vec![0; DATA_BYTES_MAX];
        e.branches = vec![
            Branch {
                rm: 1,
                bqual: vec![2; BQUAL_BYTES_MAX],
                state: 0
            };
            BRANCHES_MAX
        ];
        assert_eq!(e.validate(), Ok(()));

        let mut bad = e.clone();
        bad.gtrid.push(0);
        assert_eq!(bad.validate(), Err(EntryError::GtridTooLong { bytes: 65 }));
        bad = e.clone();
        bad.gtrid.clear();
        assert_eq!(bad.validate(), Err(EntryError::GtridEmpty));
        bad = e.clone();
        bad.data.push(0);
        assert_eq!(bad.validate(), Err(EntryError::DataTooLong { bytes: 4097 }));
        bad = e.clone();
        bad.branches.push(Branch::default());
        assert_eq!(
            bad.validate(),
            Err(EntryError::TooManyBranches { count: 257 })
        );
        bad = e;
        bad.branches[7].bqual.push(0);
        assert_eq!(
            bad.validate(),
            Err(EntryError::BqualTooLong {
                branch: 7,
                bytes: 65
            })
        );
    }
}
