//! The in-memory index: gtrid → [`Entry`], the state the durable records describe.
//!
//! Owns applying one decoded change to the map, the same way at recovery (replaying
//! records) and at run time (after a batch is durable). It must never apply a change
//! that is not durable (the group-commit engine calls it only after fdatasync returned).
//! Faults: a change that cannot apply (update or remove of an absent gtrid) is reported,
//! not ignored; at recovery it means a malformed log.

use std::collections::BTreeMap;

use crate::entry::Entry;
use crate::record::Op;

/// The map; ordered so that iteration, snapshots and crash tests are deterministic.
pub(crate) type Index = BTreeMap<Vec<u8>, Entry>;

/// Applies `op` to `index`; `Err` says why it cannot apply.
pub(crate) fn apply(index: &mut Index, op: &Op) -> Result<(), &'static str> {
    match op {
        Op::Put(e) => {
            index.insert(e.gtrid.clone(), e.clone());
            Ok(())
        }
        Op::Update {
            gtrid,
            state,
            advice,
        } => {
            let e = index
                .get_mut(gtrid.as_slice())
                .ok_or("an update of a gtrid the log does not hold")?;
            if let Some(s) = state {
                e.state = *s;
            }
            if let Some(a) = advice {
                e.advice = *a;
            }
            Ok(())
        }
        Op::Remove { gtrid } => index
            .remove(gtrid.as_slice())
            .map(|_| ())
            .ok_or("a remove of a gtrid the log does not hold"),
        Op::SnapshotEnd { .. } => Err("a snapshot-end record outside a snapshot"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{Advice, TxState};

    #[test]
    fn apply_follows_the_valid_flags() {
        let mut ix = Index::new();
        apply(
            &mut ix,
            &Op::Put(Entry::new(b"g".to_vec(), TxState::Active)),
        )
        .expect("put");
        apply(
            &mut ix,
            &Op::Update {
                gtrid: b"g".to_vec(),
                state: None,
                advice: Some(Advice::Commit),
            },
        )
        .expect("update");
        let e = &ix[b"g".as_slice()];
        assert_eq!((e.state, e.advice), (TxState::Active, Advice::Commit));
        apply(
            &mut ix,
            &Op::Update {
                gtrid: b"g".to_vec(),
                state: Some(TxState::Prepare),
                advice: None,
            },
        )
        .expect("update");
        let e = &ix[b"g".as_slice()];
        assert_eq!((e.state, e.advice), (TxState::Prepare, Advice::Commit));
        apply(
            &mut ix,
            &Op::Remove {
                gtrid: b"g".to_vec(),
            },
        )
        .expect("remove");
        assert!(apply(
            &mut ix,
            &Op::Remove {
                gtrid: b"g".to_vec()
            }
        )
        .is_err());
        assert!(apply(&mut ix, &Op::SnapshotEnd { entries: 0 }).is_err());
    }
}
