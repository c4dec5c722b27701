//! The boot epochs this node's log issued, kept in the log's `#epoch` entry.
//!
//! A gtrid carries the epoch of the boot that began it, and presumed abort rests on
//! one fact: a branch of an earlier epoch that no log entry covers was never decided
//! to commit. That holds only for epochs this very log issued. A log that replaced
//! another (a new one after the old was lost, or an older copy restored from a
//! backup) did not issue the other's epochs, and may not know their decisions.
//!
//! So each boot's epoch is at least the current Unix second (and above the last one),
//! and the history records what this log issued: every epoch from `known_from` to
//! the current one except the gaps between boots (each boot after a pause of more than
//! a second leaves one). A replaced log's epochs fall before `first_epoch` (a new log
//! starts at the second it is created) or into a gap (a restored copy resumes at the
//! current second, past the epochs its lost successor used). Only the latest
//! [`GAPS_MAX`] gaps are kept; epochs before the oldest kept one count as not issued,
//! which only makes recovery leave a branch that old to the operator.
//!
//! This module owns the entry's data format; it must not decide what recovery does.

/// Gaps kept in the entry (16 bytes each; the entry stays within the log's 4 KiB of
/// data).
pub(crate) const GAPS_MAX: usize = 250;

/// The highest epoch ever issued: room is left below 2^32 (which the gtrid's length
/// bound assumes) for a million boots after a clock set far ahead.
const EPOCH_MAX: u64 = u32::MAX as u64 - (1 << 20);

/// What the `#epoch` entry holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EpochHistory {
    /// This boot's epoch (the last one issued).
    pub current: u64,
    /// The epoch the log began with.
    pub first: u64,
    /// Epochs below this are not known to be this log's.
    pub known_from: u64,
    /// Inclusive ranges of epochs between `known_from` and `current` that this log
    /// never issued, oldest first.
    pub gaps: Vec<(u64, u64)>,
}

impl EpochHistory {
    /// The history of a log created at Unix second `now`.
    pub fn new_log(now: u64) -> EpochHistory {
        let first = now.clamp(1, EPOCH_MAX);
        EpochHistory {
            current: first,
            first,
            known_from: first,
            gaps: Vec::new(),
        }
    }

    /// The next boot's history, at Unix second `now`: its epoch is above the last one
    /// and at least `now`; the epochs skipped become a gap.
    ///
    /// `restored`: the operator says the log was restored from a copy, which may
    /// have been taken while a boot was still running (a snapshot or a replica): then
    /// none of the earlier epochs counts as this log's, not even the copy's last,
    /// whose later decisions the copy may lack.
    pub fn next_boot(&self, now: u64, restored: bool) -> EpochHistory {
        let mut next = self.clone();
        let after = self.current + 1;
        next.current = after.max(now.min(EPOCH_MAX));
        if restored {
            next.known_from = next.current;
            next.gaps.clear();
            return next;
        }
        if next.current > after {
            next.gaps.push((after, next.current - 1));
        }
        while next.gaps.len() > GAPS_MAX {
            let (_, end) = next.gaps.remove(0);
            next.known_from = end + 1;
        }
        next
    }

    /// How far this log's epochs run ahead of Unix second `now` (0 when they do not):
    /// more than one boot a second, or a clock set back. A log restored later could
    /// then issue an epoch again that the one it replaces used.
    pub fn ahead_of(&self, now: u64) -> u64 {
        self.current.saturating_sub(now)
    }

    /// True when this log issued `epoch` (a boot of it began transactions with it).
    pub fn issued(&self, epoch: u64) -> bool {
        epoch >= self.known_from
            && epoch <= self.current
            && !self.gaps.iter().any(|&(s, e)| s <= epoch && epoch <= e)
    }

    /// The entry's data: `current`, `first`, `known_from` (u64 big-endian each), the
    /// number of gaps (u16 big-endian), then each gap's first and last epoch (u64
    /// big-endian).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(26 + 16 * self.gaps.len());
        for w in [self.current, self.first, self.known_from] {
            out.extend_from_slice(&w.to_be_bytes());
        }
        out.extend_from_slice(&(self.gaps.len() as u16).to_be_bytes());
        for &(s, e) in &self.gaps {
            out.extend_from_slice(&s.to_be_bytes());
            out.extend_from_slice(&e.to_be_bytes());
        }
        out
    }

    /// Reads the entry's data, in this format or an older one: 16 bytes (current and
    /// first epoch, no gaps: epochs then rose by one per boot) or 8 (the current epoch
    /// alone; such logs began at 1). `None` for anything else.
    pub fn decode(data: &[u8]) -> Option<EpochHistory> {
        let word = |at: usize| -> Option<u64> {
            Some(u64::from_be_bytes(data.get(at..at + 8)?.try_into().ok()?))
        };
        let h = match data.len() {
            8 => EpochHistory {
                current: word(0)?,
                first: 1,
                known_from: 1,
                gaps: Vec::new(),
            },
            16 => EpochHistory {
                current: word(0)?,
                first: word(8)?,
                known_from: word(8)?,
                gaps: Vec::new(),
            },
            _ => {
                // Any count the data holds is read (a later version may keep more);
                // the next boot trims to GAPS_MAX.
                let n = u16::from_be_bytes(data.get(24..26)?.try_into().ok()?) as usize;
                if data.len() != 26 + 16 * n {
                    return None;
                }
                EpochHistory {
                    current: word(0)?,
                    first: word(8)?,
                    known_from: word(16)?,
                    gaps: (0..n)
                        .map(|i| Some((word(26 + 16 * i)?, word(34 + 16 * i)?)))
                        .collect::<Option<Vec<_>>>()?,
                }
            }
        };
        let ordered = h.first <= h.known_from
            && h.known_from <= h.current
            && h.current <= EPOCH_MAX + (1 << 20)
            && h.gaps
                .iter()
                .all(|&(s, e)| h.known_from < s && s <= e && e < h.current)
            && h.gaps.windows(2).all(|w| w[0].1 < w[1].0);
        ordered.then_some(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restored_copy_does_not_claim_its_successors_epochs() {
        // The log is created, boots twice in the same second, then once 100 s later.
        let a = EpochHistory::new_log(1_000);
        let b = a.next_boot(1_000, false);
        assert_eq!(b.current, 1_001);
        let c = b.next_boot(1_100, false);
        assert_eq!(c.current, 1_100);
        assert_eq!(c.gaps, [(1_002, 1_099)]);
        for e in [1_000, 1_001, 1_100] {
            assert!(c.issued(e), "{e}");
        }
        for e in [999, 1_002, 1_050, 1_099, 1_101] {
            assert!(!c.issued(e), "{e}");
        }
        // A copy of `b` restored later: the epochs `c` (the lost successor) used are
        // not its own.
        let restored = EpochHistory::decode(&b.encode())
            .expect("decodes")
            .next_boot(1_200, false);
        assert!(!restored.issued(1_100));
        assert!(restored.issued(1_001) && restored.issued(1_200));
        // Said to be restored: nothing before this boot counts as its own, not even
        // the copy's last epoch (a snapshot taken while it ran).
        let said = EpochHistory::decode(&b.encode())
            .expect("decodes")
            .next_boot(1_200, true);
        assert!(!said.issued(1_001) && !said.issued(1_000) && said.issued(1_200));
        assert_eq!(EpochHistory::decode(&said.encode()), Some(said));
    }

    #[test]
    fn old_gaps_are_forgotten_as_not_issued() {
        let mut h = EpochHistory::new_log(10);
        for i in 0..(GAPS_MAX as u64 + 3) {
            h = h.next_boot(100 + 10 * i, false);
        }
        assert_eq!(h.gaps.len(), GAPS_MAX);
        assert!(!h.issued(10), "before the oldest kept gap: not known");
        assert!(h.issued(h.current));
        assert_eq!(EpochHistory::decode(&h.encode()), Some(h));
    }

    #[test]
    fn older_formats_and_damage() {
        let v1 = 7u64.to_be_bytes();
        let h = EpochHistory::decode(&v1).expect("8 bytes");
        assert_eq!((h.current, h.first, h.known_from), (7, 1, 1));
        let v2 = [9u64.to_be_bytes(), 5u64.to_be_bytes()].concat();
        let h = EpochHistory::decode(&v2).expect("16 bytes");
        assert!(h.issued(5) && h.issued(9) && !h.issued(4));
        assert_eq!(EpochHistory::decode(&[1, 2, 3]), None);
        let mut bad = EpochHistory::new_log(50).next_boot(60, false).encode();
        bad.push(0);
        assert_eq!(EpochHistory::decode(&bad), None);
        // Gaps out of order are refused.
        let h = EpochHistory {
            current: 100,
            first: 1,
            known_from: 1,
            gaps: vec![(50, 60), (10, 20)],
        };
        assert_eq!(EpochHistory::decode(&h.encode()), None);
        // A clock far ahead stays within the gtrid's bound.
        let h = EpochHistory::new_log(u64::MAX).next_boot(u64::MAX, false);
        assert!(h.current < 1 << 32);
        // An epoch far beyond the bound is damage, not a history.
        let far = EpochHistory {
            current: u64::MAX,
            first: 1,
            known_from: 1,
            gaps: Vec::new(),
        };
        assert_eq!(EpochHistory::decode(&far.encode()), None);
        // Running ahead of the clock is measured.
        assert_eq!(
            EpochHistory::new_log(100).next_boot(90, false).ahead_of(90),
            11
        );
    }
}
