//! A replica's partition log as replication sees it: where it ends, which epochs its entries
//! carry, and the follower's decisions on appends and truncation. No entries, no I/O: the
//! journal holds the data and does what these decisions say.
//!
//! - [`EpochCache`] (Kafka's leader-epoch cache): `(epoch, first offset)` for every epoch the
//!   log holds entries of, and [`EpochCache::end_offset_for`], the answer an owner gives a
//!   follower that asks where an epoch ends.
//! - [`FollowerLog`]: one follower's state for one partition. It refuses appends from an
//!   epoch older than the newest it has seen, truncates against every new owner before
//!   following it (KIP-101/279), accepts only contiguous offsets, and acknowledges only what is
//!   durable.

use serde::{Deserialize, Serialize};

/// `(epoch, first offset)` per epoch present in a log, epochs and offsets increasing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochCache {
    entries: Vec<(u64, u64)>,
}

impl EpochCache {
    /// The pairs, oldest first.
    pub fn entries(&self) -> &[(u64, u64)] {
        &self.entries
    }

    /// The newest epoch with entries.
    pub fn last_epoch(&self) -> Option<u64> {
        self.entries.last().map(|e| e.0)
    }

    /// An entry of `epoch` was written at `offset` (entries are written in offset order, their
    /// epochs never decrease). A new epoch starts a new pair.
    pub fn record(&mut self, epoch: u64, offset: u64) {
        match self.entries.last() {
            Some(&(last, _)) if last >= epoch => {}
            _ => self.entries.push((epoch, offset)),
        }
    }

    /// The log was cut to end at `end`: forget epochs that started at or after it.
    pub fn truncate(&mut self, end: u64) {
        self.entries.retain(|&(_, start)| start < end);
    }

    /// Where this log's entries of the largest epoch ≤ `epoch` end (given the log ends at
    /// `log_end`): `(that epoch, end offset)`. With no epoch ≤ `epoch`: `(None, the start of
    /// the oldest epoch held)`, or `(None, log_end)` for an empty cache.
    pub fn end_offset_for(&self, epoch: u64, log_end: u64) -> (Option<u64>, u64) {
        let at = self.entries.partition_point(|&(e, _)| e <= epoch);
        match at.checked_sub(1).and_then(|i| self.entries.get(i)) {
            Some(&(found, _)) => (Some(found), self.entries.get(at).map_or(log_end, |e| e.1)),
            None => (None, self.entries.first().map_or(log_end, |e| e.1)),
        }
    }
}

/// The follower's standing with its current owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FollowState {
    /// No owner known.
    Idle,
    /// Asked the owner where its last epoch ends; accepts no appends until the answer.
    Truncating {
        /// The owner asked.
        owner: String,
        /// The epoch asked about.
        asked: Option<u64>,
    },
    /// Its log is a prefix of the owner's: takes appends from `end`.
    Following {
        /// The owner.
        owner: String,
    },
}

/// What the follower asks its I/O to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FollowerAction {
    /// Ask `owner` for [`EpochCache::end_offset_for`] of `epoch` (None: the log is empty, the
    /// answer is always "from 0").
    AskEndOffset {
        /// The owner.
        owner: String,
        /// The follower's last epoch.
        epoch: Option<u64>,
    },
    /// Delete every entry at or after `to`, then follow from there.
    Truncate {
        /// The new log end.
        to: u64,
    },
    /// Write these entries (offsets `first..first + epochs.len()`), then sync.
    Write {
        /// Offset of the first.
        first: u64,
        /// How many.
        count: u64,
    },
    /// Acknowledge to the owner: everything below `durable_end` is on disk here.
    Ack {
        /// The owner's epoch being followed.
        epoch: u64,
        /// Durable end.
        durable_end: u64,
    },
}

/// Why an append is refused; the owner's answer to each is in the variant's doc.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendRefusal {
    /// An older epoch than the newest seen (or another owner at the epoch of the one
    /// followed). The sender waits until it has applied an epoch at least `fence`; if it still
    /// owns the partition then, it resends, otherwise it was deposed.
    #[error("stale epoch {epoch}: this replica has seen epoch {fence}")]
    StaleEpoch {
        /// The append's epoch.
        epoch: u64,
        /// The newest seen.
        fence: u64,
    },
    /// Not truncated against this owner yet: resend after the end-offset exchange.
    #[error("truncating against the owner first")]
    Truncating,
    /// Offsets must be contiguous: resend from `expected`.
    #[error("out of order: expected offset {expected}, got {got}")]
    OutOfOrder {
        /// The follower's log end.
        expected: u64,
        /// The append's first offset.
        got: u64,
    },
    /// An entry carries a newer epoch than the batch, or epochs go backwards.
    #[error("malformed append: entry epochs must not decrease and not exceed the batch's epoch")]
    Malformed,
}

/// One follower's state for one partition.
#[derive(Debug, Clone)]
pub struct FollowerLog {
    end: u64,
    durable: u64,
    epochs: EpochCache,
    fence: u64,
    state: FollowState,
}

impl FollowerLog {
    /// The state of a log that ends at `end` (all of it durable: it was read from disk) with
    /// these epochs.
    pub fn new(end: u64, epochs: EpochCache) -> Self {
        let fence = epochs.last_epoch().unwrap_or(0);
        Self {
            end,
            durable: end,
            epochs,
            fence,
            state: FollowState::Idle,
        }
    }

    /// Log end (next offset).
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Durable end.
    pub fn durable_end(&self) -> u64 {
        self.durable
    }

    /// The epochs held.
    pub fn epochs(&self) -> &EpochCache {
        &self.epochs
    }

    /// The newest epoch seen for this partition.
    pub fn fence(&self) -> u64 {
        self.fence
    }

    /// Where it stands with its owner.
    pub fn state(&self) -> &FollowState {
        &self.state
    }

    /// The applied config says `owner` owns the partition at `epoch` (this node is a follower).
    /// A new owner starts a truncation exchange and fences every epoch before `epoch`. The same
    /// owner at a newer epoch changes nothing (its appends may still carry the epoch it
    /// applied last).
    pub fn observe(&mut self, owner: &str, epoch: u64) -> Option<FollowerAction> {
        if epoch < self.fence || self.owner() == Some(owner) {
            return None;
        }
        self.fence = epoch;
        Some(self.start_truncation(owner))
    }

    /// The owner followed (or being truncated against).
    pub fn owner(&self) -> Option<&str> {
        match &self.state {
            FollowState::Following { owner } | FollowState::Truncating { owner, .. } => Some(owner),
            FollowState::Idle => None,
        }
    }

    fn start_truncation(&mut self, owner: &str) -> FollowerAction {
        let asked = self.epochs.last_epoch();
        self.state = FollowState::Truncating {
            owner: owner.to_string(),
            asked,
        };
        FollowerAction::AskEndOffset {
            owner: owner.to_string(),
            epoch: asked,
        }
    }

    /// The owner answered the end-offset question with `(its epoch ≤ ours, end)`. Returns the
    /// truncation to perform (possibly to the current end: nothing to cut).
    pub fn end_offset(&mut self, from: &str, answer: (Option<u64>, u64)) -> Option<FollowerAction> {
        let asked = match &self.state {
            FollowState::Truncating { owner, asked } if owner == from => *asked,
            _ => return None,
        };
        let (their_epoch, their_end) = answer;
        let own_end = match (their_epoch, asked) {
            (Some(theirs), Some(ours)) if theirs < ours => self.epochs.end_offset_for(theirs, self.end).1,
            (None, _) => self
                .epochs
                .entries()
                .first()
                .map_or(self.end, |e| e.1)
                .min(self.end),
            _ => self.end,
        };
        let to = their_end.min(own_end).min(self.end);
        self.end = to;
        self.durable = self.durable.min(to);
        self.epochs.truncate(to);
        self.state = FollowState::Following {
            owner: from.to_string(),
        };
        Some(FollowerAction::Truncate { to })
    }

    /// An append from `from` at its `epoch`, starting at `first`, with each entry's epoch.
    pub fn append(
        &mut self,
        from: &str,
        epoch: u64,
        first: u64,
        entry_epochs: &[u64],
    ) -> Result<FollowerAction, AppendRefusal> {
        let known = self.owner() == Some(from);
        if epoch < self.fence || (!known && epoch == self.fence && self.owner().is_some()) {
            // Older than the newest epoch seen, or another owner than the one followed at the
            // same epoch: a deposed owner.
            return Err(AppendRefusal::StaleEpoch {
                epoch,
                fence: self.fence,
            });
        }
        self.fence = epoch;
        if !known {
            // A newer owner than the config showed us (or the first one): truncate first.
            self.start_truncation(from);
            return Err(AppendRefusal::Truncating);
        }
        if matches!(self.state, FollowState::Truncating { .. }) {
            return Err(AppendRefusal::Truncating);
        }
        if first != self.end {
            return Err(AppendRefusal::OutOfOrder {
                expected: self.end,
                got: first,
            });
        }
        let mut last = self.epochs.last_epoch().unwrap_or(0);
        if entry_epochs.iter().any(|&e| {
            let bad = e < last || e > epoch;
            last = e;
            bad
        }) {
            return Err(AppendRefusal::Malformed);
        }
        for (i, &e) in entry_epochs.iter().enumerate() {
            self.epochs.record(e, first + i as u64);
        }
        let count = entry_epochs.len() as u64;
        self.end += count;
        Ok(FollowerAction::Write { first, count })
    }

    /// The journal synced everything below `durable_end`: acknowledge it to the owner.
    pub fn synced(&mut self, durable_end: u64) -> Option<FollowerAction> {
        self.durable = self.durable.max(durable_end.min(self.end));
        match &self.state {
            FollowState::Following { .. } => Some(FollowerAction::Ack {
                epoch: self.fence,
                durable_end: self.durable,
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(pairs: &[(u64, u64)]) -> EpochCache {
        let mut c = EpochCache::default();
        for &(e, o) in pairs {
            c.record(e, o);
        }
        c
    }

    #[test]
    fn end_offset_for_finds_the_largest_epoch_not_after() {
        let c = cache(&[(2, 0), (5, 10), (7, 15)]);
        assert_eq!(c.end_offset_for(2, 20), (Some(2), 10));
        assert_eq!(c.end_offset_for(4, 20), (Some(2), 10));
        assert_eq!(c.end_offset_for(5, 20), (Some(5), 15));
        assert_eq!(c.end_offset_for(9, 20), (Some(7), 20));
        assert_eq!(c.end_offset_for(1, 20), (None, 0));
        assert_eq!(EpochCache::default().end_offset_for(3, 0), (None, 0));
    }

    #[test]
    fn a_returning_owner_truncates_what_the_new_owner_does_not_have() {
        // Old owner: epoch 1 entries 0..10. New owner (epoch 3) had 0..8 of epoch 1.
        let mut old = FollowerLog::new(10, cache(&[(1, 0)]));
        let ask = old.observe("b", 3);
        assert_eq!(
            ask,
            Some(FollowerAction::AskEndOffset {
                owner: "b".into(),
                epoch: Some(1)
            })
        );
        let owner_cache = cache(&[(1, 0), (3, 8)]);
        let answer = owner_cache.end_offset_for(1, 12);
        assert_eq!(
            old.end_offset("b", answer),
            Some(FollowerAction::Truncate { to: 8 })
        );
        assert_eq!(old.end(), 8);
        assert_eq!(
            old.append("b", 3, 8, &[3, 3]),
            Ok(FollowerAction::Write { first: 8, count: 2 })
        );
        assert_eq!(
            old.synced(10),
            Some(FollowerAction::Ack {
                epoch: 3,
                durable_end: 10
            })
        );
    }

    #[test]
    fn diverged_epochs_truncate_to_the_common_one() {
        // Follower has epoch 2 entries (from an owner that never got them acknowledged); the
        // owner skipped epoch 2: it answers for epoch 1.
        let mut f = FollowerLog::new(12, cache(&[(1, 0), (2, 9)]));
        f.observe("c", 4);
        let owner = cache(&[(1, 0), (4, 11)]);
        let answer = owner.end_offset_for(2, 14);
        assert_eq!(answer, (Some(1), 11));
        assert_eq!(
            f.end_offset("c", answer),
            Some(FollowerAction::Truncate { to: 9 })
        );
        assert_eq!(f.epochs().entries(), &[(1, 0)]);
    }

    #[test]
    fn stale_epochs_and_gaps_are_refused() {
        let mut f = FollowerLog::new(0, EpochCache::default());
        f.observe("a", 2);
        f.end_offset("a", (None, 0));
        assert_eq!(
            f.append("a", 2, 0, &[2]),
            Ok(FollowerAction::Write { first: 0, count: 1 })
        );
        assert_eq!(
            f.append("a", 2, 5, &[2]),
            Err(AppendRefusal::OutOfOrder { expected: 1, got: 5 })
        );
        assert_eq!(f.append("a", 2, 1, &[3]), Err(AppendRefusal::Malformed));
        // A newer owner appears in an append before the config: truncate first.
        assert_eq!(f.append("b", 3, 1, &[3]), Err(AppendRefusal::Truncating));
        assert_eq!(
            f.append("a", 2, 1, &[2]),
            Err(AppendRefusal::StaleEpoch { epoch: 2, fence: 3 })
        );
    }
}
