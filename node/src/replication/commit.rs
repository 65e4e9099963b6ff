//! The owner's commit tracking for one partition: which entries every in-sync replica has on
//! disk (the commit point), whether new writes are admitted, how far each follower lags, and
//! which ISR changes to ask the config for.
//!
//! Rules (see `ARCHITECTURE.md`, *Replication*):
//! - the commit point is the minimum durable end over the committed ISR and every member whose
//!   join this owner has proposed (a join counts from the proposal, a leave only once the
//!   config has it), so every entry below it is on every member of the old and the new ISR;
//!   it never moves back. Entries below it are readable: no in-sync copy lacks them, so no
//!   owner chosen from the ISR ever truncates them;
//! - the acknowledgement point follows the commit point only while the committed ISR has at
//!   least min-insync members: a write is acknowledged only with min-insync copies. A write
//!   that becomes committed while the ISR is smaller is answered `Unavailable` by the caller
//!   (the producer retries; the journal deduplicates it by message id);
//! - new writes are refused while the committed ISR has fewer than min-insync members;
//! - a follower lags when its oldest missing entry was appended more than the lag bound ago;
//!   a lagging ISR follower is proposed to leave unless that takes the ISR below min-insync;
//! - a lagging replica of the member's current incarnation is proposed to join once its
//!   durable end reached the commit point and the start of this owner's epoch;
//! - acknowledgements of another incarnation, or of an epoch outside this owner's term (before
//!   it, or newer than the config it applied: the follower follows someone else), count for
//!   nothing.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use super::isr::IsrChange;

/// Batches remembered for the lag measurement; beyond this the oldest are forgotten (a
/// follower that far behind is out of the ISR already; its lag time is then under-reported).
const MAX_BATCHES: usize = 65_536;

/// What the applied config says about the partition, as the owner needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackerView {
    /// Config epoch.
    pub epoch: u64,
    /// The committed ISR (the owner included).
    pub isr: Vec<String>,
    /// Every replica but the owner (placed and retiring) with its current incarnation (0: not
    /// reported yet).
    pub followers: Vec<(String, u64)>,
    /// The floor.
    pub min_insync: usize,
}

/// A request for the config (batched with other partitions' into one `AlterIsr`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsrRequest {
    /// The owner's applied epoch (the config refuses any other).
    pub epoch: u64,
    /// The change.
    pub change: IsrChange,
}

/// How far a follower is behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lag {
    /// Entries it does not have durably.
    pub messages: u64,
    /// How long ago its oldest missing entry was appended.
    pub time: Duration,
}

/// Why a write is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

#[derive(Debug, Clone)]
struct Progress {
    incarnation: u64,
    durable: u64,
}

/// The commit tracker of one partition on its owner.
#[derive(Debug, Clone)]
pub struct CommitTracker {
    partition: u32,
    me: String,
    /// The epoch this owner's term started at, and the log end then.
    term_epoch: u64,
    term_start: u64,
    lag_bound: Duration,
    view: TrackerView,
    isr: BTreeSet<String>,
    followers: BTreeMap<String, Progress>,
    end: u64,
    own_durable: u64,
    commit: u64,
    acknowledged: u64,
    /// (log end after the batch, when it was appended), oldest first.
    batches: VecDeque<(u64, Instant)>,
    /// Members in the ISR change proposed and not yet seen in a config.
    pending_join: BTreeSet<String>,
    pending_leave: BTreeSet<String>,
}

impl CommitTracker {
    /// `me` became owner of `partition` at `view.epoch` with a log ending at `end` (all
    /// durable) and a known commit point `commit` (what it knew as a follower, or 0).
    pub fn new(
        partition: u32,
        me: impl Into<String>,
        view: TrackerView,
        end: u64,
        commit: u64,
        lag_bound: Duration,
    ) -> Self {
        let mut tracker = Self {
            partition,
            me: me.into(),
            term_epoch: view.epoch,
            term_start: end,
            lag_bound,
            view: view.clone(),
            isr: BTreeSet::new(),
            followers: BTreeMap::new(),
            end,
            own_durable: end,
            commit: commit.min(end),
            acknowledged: commit.min(end),
            batches: VecDeque::new(),
            pending_join: BTreeSet::new(),
            pending_leave: BTreeSet::new(),
        };
        tracker.configure(view);
        tracker
    }

    /// A newer config was applied (this node still owns the partition). Ends any pending
    /// request: it was applied or refused, the next tick decides again.
    pub fn configure(&mut self, view: TrackerView) {
        self.isr = view.isr.iter().cloned().collect();
        let mut followers = BTreeMap::new();
        for (node, incarnation) in &view.followers {
            let durable = match self.followers.get(node) {
                Some(p) if p.incarnation == *incarnation => p.durable,
                _ => 0,
            };
            followers.insert(
                node.clone(),
                Progress {
                    incarnation: *incarnation,
                    durable,
                },
            );
        }
        self.followers = followers;
        if view.epoch != self.view.epoch {
            self.pending_join.clear();
            self.pending_leave.clear();
        }
        self.pending_join.retain(|n| !self.isr.contains(n));
        self.pending_leave.retain(|n| self.isr.contains(n));
        self.view = view;
        self.advance();
    }

    /// The last request was refused by the config: forget it (the next tick decides again).
    pub fn refused(&mut self) {
        self.pending_join.clear();
        self.pending_leave.clear();
        self.advance();
    }

    /// The owner appended entries up to `end` at `now` (not durable yet).
    pub fn appended(&mut self, end: u64, now: Instant) {
        if end > self.end {
            self.end = end;
            self.batches.push_back((end, now));
            if self.batches.len() > MAX_BATCHES {
                self.batches.pop_front();
            }
        }
    }

    /// The owner's own log is durable below `durable_end`. Returns true if the acknowledgement
    /// point moved.
    pub fn synced(&mut self, durable_end: u64) -> bool {
        self.own_durable = self.own_durable.max(durable_end.min(self.end));
        self.advance()
    }

    /// A follower acknowledged `durable_end`, following this owner at `epoch`, as
    /// `incarnation`. Returns true if the acknowledgement point moved.
    pub fn ack(&mut self, node: &str, incarnation: u64, epoch: u64, durable_end: u64) -> bool {
        if epoch < self.term_epoch || epoch > self.view.epoch {
            // Followed an earlier owner, or already follows a newer one: not about this log.
            return false;
        }
        match self.followers.get_mut(node) {
            Some(p) if p.incarnation == incarnation && incarnation != 0 => {
                p.durable = durable_end.min(self.end);
            }
            _ => return false,
        }
        self.advance()
    }

    fn required(&self) -> impl Iterator<Item = &String> {
        self.isr
            .iter()
            .chain(self.pending_join.iter())
            .filter(|n| **n != self.me)
    }

    /// Moves the commit point (and, with min-insync members in the ISR, the acknowledgement
    /// point). Returns true if the acknowledgement point moved.
    fn advance(&mut self) -> bool {
        let candidate = self
            .required()
            .map(|n| self.followers.get(n).map_or(0, |p| p.durable))
            .fold(self.own_durable, u64::min);
        self.trim();
        self.commit = self.commit.max(candidate);
        if self.isr.len() >= self.view.min_insync && self.commit > self.acknowledged {
            self.acknowledged = self.commit;
            true
        } else {
            false
        }
    }

    fn trim(&mut self) {
        let slowest = self
            .followers
            .values()
            .map(|p| p.durable)
            .fold(self.own_durable, u64::min);
        while self.batches.front().is_some_and(|&(end, _)| end <= slowest) {
            self.batches.pop_front();
        }
    }

    /// Entries below this are on disk on every ISR member: serve them to readers.
    pub fn commit_point(&self) -> u64 {
        self.commit
    }

    /// Entries below this were committed with at least min-insync members in the ISR:
    /// acknowledge them to their producers. Entries from here to the commit point are answered
    /// `Unavailable` (the ISR was too small when they became committed).
    pub fn acknowledge_point(&self) -> u64 {
        self.acknowledged
    }

    /// The log end.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Whether a new write may be taken now.
    pub fn admit(&self) -> Result<(), Unavailable> {
        if self.isr.len() >= self.view.min_insync {
            return Ok(());
        }
        let lagging: Vec<String> = self
            .followers
            .iter()
            .filter(|(n, _)| !self.isr.contains(*n))
            .map(|(n, p)| format!("{n} {} behind", self.end.saturating_sub(p.durable)))
            .collect();
        Err(Unavailable(format!(
            "partition {}: the in-sync set [{}] has {} of the {} members min-insync requires; not in sync: [{}]",
            self.partition,
            self.isr.iter().cloned().collect::<Vec<_>>().join(", "),
            self.isr.len(),
            self.view.min_insync,
            lagging.join(", "),
        )))
    }

    /// How far `node` is behind at `now` (None: not a follower).
    pub fn lag(&self, node: &str, now: Instant) -> Option<Lag> {
        let durable = self.followers.get(node)?.durable;
        let time = if durable >= self.end {
            Duration::ZERO
        } else {
            self.batches
                .iter()
                .find(|&&(end, _)| end > durable)
                .map_or(Duration::ZERO, |&(_, at)| now.saturating_duration_since(at))
        };
        Some(Lag {
            messages: self.end.saturating_sub(durable),
            time,
        })
    }

    /// Decides the ISR change to ask for, if any (one request at a time).
    pub fn tick(&mut self, now: Instant) -> Option<IsrRequest> {
        if !self.pending_join.is_empty() || !self.pending_leave.is_empty() {
            return None;
        }
        let mut change = IsrChange {
            partition: self.partition,
            join: Vec::new(),
            leave: Vec::new(),
        };
        let mut size = self.isr.len();
        // The most lagging first.
        let mut lagging: Vec<(Duration, &String)> = self
            .isr
            .iter()
            .filter(|n| **n != self.me)
            .filter_map(|n| self.lag(n, now).map(|l| (l.time, n)))
            .filter(|(time, _)| *time > self.lag_bound)
            .collect();
        lagging.sort_by(|a, b| b.cmp(a));
        for (_, node) in lagging {
            if size > self.view.min_insync {
                change.leave.push(node.clone());
                size -= 1;
            }
        }
        let floor = self.commit.max(self.term_start);
        for (node, progress) in &self.followers {
            let caught_up =
                progress.durable >= floor && self.lag(node, now).is_some_and(|l| l.time <= self.lag_bound);
            if !self.isr.contains(node) && progress.incarnation != 0 && caught_up {
                change.join.push((node.clone(), progress.incarnation));
            }
        }
        if change.join.is_empty() && change.leave.is_empty() {
            return None;
        }
        self.pending_join = change.join.iter().map(|(n, _)| n.clone()).collect();
        self.pending_leave = change.leave.iter().cloned().collect();
        Some(IsrRequest {
            epoch: self.view.epoch,
            change,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(isr: &[&str], followers: &[&str], min: usize) -> TrackerView {
        TrackerView {
            epoch: 4,
            isr: isr.iter().map(|s| s.to_string()).collect(),
            followers: followers.iter().map(|s| (s.to_string(), 1)).collect(),
            min_insync: min,
        }
    }

    #[test]
    fn commit_waits_for_every_isr_member() {
        let t0 = Instant::now();
        let mut t = CommitTracker::new(
            0,
            "a",
            view(&["a", "b", "c"], &["b", "c"], 2),
            0,
            0,
            Duration::from_secs(1),
        );
        t.appended(3, t0);
        assert!(!t.synced(3));
        assert!(!t.ack("b", 1, 4, 3));
        assert_eq!(t.commit_point(), 0);
        assert!(t.ack("c", 1, 4, 2));
        assert_eq!(t.commit_point(), 2);
        // Another incarnation, or an older epoch, counts for nothing.
        assert!(!t.ack("c", 2, 4, 3));
        assert!(!t.ack("c", 1, 3, 3));
        assert!(!t.ack("c", 1, 5, 3), "c follows a newer owner");
        assert!(t.ack("c", 1, 4, 3));
        assert_eq!(t.commit_point(), 3);
    }

    #[test]
    fn a_lagging_follower_is_proposed_out_but_not_below_min() {
        let t0 = Instant::now();
        let bound = Duration::from_millis(500);
        let mut t = CommitTracker::new(0, "a", view(&["a", "b", "c"], &["b", "c"], 2), 0, 0, bound);
        t.appended(1, t0);
        t.synced(1);
        t.ack("b", 1, 4, 1);
        assert_eq!(t.tick(t0 + bound), None);
        let request = t.tick(t0 + bound + Duration::from_millis(1)).unwrap();
        assert_eq!(request.change.leave, vec!["c".to_string()]);
        assert_eq!(t.tick(t0 + bound * 4), None, "one request at a time");
        t.configure(TrackerView {
            epoch: 4,
            ..view(&["a", "b"], &["b", "c"], 2)
        });
        assert_eq!(t.commit_point(), 1);
        // b lags too, but leaving would take the ISR below 2.
        t.appended(2, t0 + bound * 5);
        t.synced(2);
        assert_eq!(t.tick(t0 + bound * 10), None);
        assert!(t.admit().is_ok());
    }

    #[test]
    fn entries_committed_below_min_insync_are_readable_but_not_acknowledged() {
        let t0 = Instant::now();
        let mut t = CommitTracker::new(0, "a", view(&["a", "b"], &["b"], 2), 0, 0, Duration::from_secs(1));
        t.appended(2, t0);
        t.synced(2);
        // b is failed over before it acknowledged: the ISR is a alone.
        t.configure(view(&["a"], &[], 2));
        assert_eq!(t.commit_point(), 2, "on every in-sync copy: readable");
        assert_eq!(t.acknowledge_point(), 0, "never acknowledged with one copy");
        assert!(t.admit().is_err());
    }

    #[test]
    fn writes_are_refused_below_min_insync_with_a_reason() {
        let t = CommitTracker::new(7, "a", view(&["a"], &["b"], 2), 5, 5, Duration::from_secs(1));
        let err = t.admit().unwrap_err();
        assert_eq!(
            err.to_string(),
            "partition 7: the in-sync set [a] has 1 of the 2 members min-insync requires; not in sync: [b 5 behind]"
        );
    }

    #[test]
    fn a_caught_up_replica_is_proposed_in_and_counts_from_the_proposal() {
        let t0 = Instant::now();
        let mut t = CommitTracker::new(
            0,
            "a",
            view(&["a", "b"], &["b", "c"], 2),
            10,
            10,
            Duration::from_secs(1),
        );
        t.ack("b", 1, 4, 10);
        t.ack("c", 1, 4, 9);
        assert_eq!(t.tick(t0), None);
        t.ack("c", 1, 4, 10);
        let request = t.tick(t0).unwrap();
        assert_eq!(request.change.join, vec![("c".to_string(), 1)]);
        t.appended(12, t0);
        t.synced(12);
        t.ack("b", 1, 4, 12);
        assert_eq!(t.commit_point(), 10, "c's join is pending: it counts");
        t.ack("c", 1, 4, 12);
        assert_eq!(t.commit_point(), 12);
    }
}
