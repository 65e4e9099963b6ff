//! Ownership leases: the fence that keeps a cut-off node from processing.
//!
//! Every node renews a lease through the Raft majority: the leader grants it only after
//! confirming its leadership with a quorum (openraft's `ensure_linearizable`) and only to a
//! current member. A lease granted to a request *sent* at `t` is valid until `t + duration`
//! on the node's monotonic clock, and only once the node has applied the leader's epoch at the
//! time of the grant (so it never processes on a config older than what the leader had).
//!
//! The leader, for its part, removes a member only after it has not renewed for the failover
//! timeout, counted from the latest renewal it granted or, for a new leader, from when it became
//! leader ([`RenewalTracker`]). A renewal reaches the leader after it was sent, so the removal
//! happens after `sent + failover_timeout > sent + duration + margin`: the node has stopped.
//! Settings enforce `failover_timeout >= lease + margin` ([`crate::settings`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A node's own lease.
#[derive(Debug, Clone)]
pub struct Lease {
    duration: Duration,
    valid_until: Option<Instant>,
    granted_epoch: u64,
    disabled: bool,
    last_refusal: Option<String>,
}

/// Whether this node may process now, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseStatus {
    /// Valid.
    Valid,
    /// Not valid; the reason is for the error a client sees.
    Invalid(String),
}

impl Lease {
    /// A lease of `duration` per renewal, not yet granted. `disabled` (a test switch) makes it
    /// always valid, to show what fencing is for.
    pub fn new(duration: Duration, disabled: bool) -> Self {
        Self {
            duration,
            valid_until: None,
            granted_epoch: 0,
            disabled,
            last_refusal: None,
        }
    }

    /// The leader granted a renewal whose request was sent at `sent`, at the leader's `epoch`.
    pub fn granted(&mut self, sent: Instant, epoch: u64) {
        let until = sent + self.duration;
        if self.valid_until.is_none_or(|v| until > v) {
            self.valid_until = Some(until);
        }
        self.granted_epoch = self.granted_epoch.max(epoch);
        self.last_refusal = None;
    }

    /// A renewal failed (no leader, no quorum, not a member...).
    pub fn refused(&mut self, why: String) {
        self.last_refusal = Some(why);
    }

    /// Drops the lease at once (removed from the cluster, shutting down).
    pub fn revoke(&mut self, why: String) {
        self.valid_until = None;
        self.last_refusal = Some(why);
    }

    /// Status at `now` for a node that has applied `applied_epoch`.
    pub fn status(&self, now: Instant, applied_epoch: u64) -> LeaseStatus {
        if self.disabled {
            return LeaseStatus::Valid;
        }
        let why = || {
            self.last_refusal
                .as_ref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        };
        match self.valid_until {
            None => LeaseStatus::Invalid(format!(
                "this node holds no ownership lease yet (not confirmed by the Raft majority){}",
                why()
            )),
            Some(until) if now >= until => LeaseStatus::Invalid(format!(
                "ownership lease expired {:?} ago: this node is cut off from the Raft majority{}",
                now - until,
                why()
            )),
            Some(_) if applied_epoch < self.granted_epoch => LeaseStatus::Invalid(format!(
                "config catching up: applied epoch {applied_epoch}, the leader is at {}",
                self.granted_epoch
            )),
            Some(_) => LeaseStatus::Valid,
        }
    }

    /// Until when the lease is valid (None: never granted or revoked).
    pub fn valid_until(&self) -> Option<Instant> {
        self.valid_until
    }
}

/// On the leader: when each member last renewed, to decide who has failed.
#[derive(Debug, Clone)]
pub struct RenewalTracker {
    leader_since: Option<Instant>,
    last: HashMap<String, Instant>,
}

impl Default for RenewalTracker {
    fn default() -> Self {
        Self::new()
    }
}

impl RenewalTracker {
    /// A tracker of a node that is not leader.
    pub fn new() -> Self {
        Self {
            leader_since: None,
            last: HashMap::new(),
        }
    }

    /// Leadership observed at `now` (`true`) or lost. A new leader forgets what an earlier
    /// term saw and counts everyone from its own start.
    pub fn set_leader(&mut self, leader: bool, now: Instant) {
        match (leader, self.leader_since) {
            (true, None) => {
                self.leader_since = Some(now);
                self.last.clear();
            }
            (false, Some(_)) => {
                self.leader_since = None;
                self.last.clear();
            }
            _ => {}
        }
    }

    /// A renewal of `node` was granted at `now`.
    pub fn renewed(&mut self, node: &str, now: Instant) {
        self.last.insert(node.to_string(), now);
    }

    /// How long `node` has gone without renewing, as far as this leader can tell (None when
    /// not leader).
    pub fn silent_for(&self, node: &str, now: Instant) -> Option<Duration> {
        let since = self.leader_since?;
        let last = self.last.get(node).copied().unwrap_or(since).max(since);
        Some(now.saturating_duration_since(last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_runs_from_the_send_time_and_needs_the_granted_epoch() {
        let t0 = Instant::now();
        let mut lease = Lease::new(Duration::from_millis(1500), false);
        assert!(matches!(lease.status(t0, 5), LeaseStatus::Invalid(_)));
        lease.granted(t0, 5);
        assert_eq!(
            lease.status(t0 + Duration::from_millis(1000), 5),
            LeaseStatus::Valid
        );
        assert!(matches!(lease.status(t0, 4), LeaseStatus::Invalid(r) if r.contains("catching up")));
        let expired = lease.status(t0 + Duration::from_millis(1500), 5);
        assert!(matches!(expired, LeaseStatus::Invalid(r) if r.contains("cut off")));
        // An older grant arriving late never shortens the lease.
        lease.granted(t0 + Duration::from_millis(500), 5);
        lease.granted(t0, 5);
        assert_eq!(
            lease.status(t0 + Duration::from_millis(1900), 5),
            LeaseStatus::Valid
        );
        lease.revoke("removed".into());
        assert!(matches!(lease.status(t0, 5), LeaseStatus::Invalid(r) if r.contains("removed")));
    }

    #[test]
    fn a_new_leader_counts_silence_from_its_own_start() {
        let t0 = Instant::now();
        let mut tracker = RenewalTracker::new();
        assert_eq!(tracker.silent_for("n2", t0), None);
        tracker.set_leader(true, t0);
        assert_eq!(
            tracker.silent_for("n2", t0 + Duration::from_secs(1)),
            Some(Duration::from_secs(1))
        );
        tracker.renewed("n2", t0 + Duration::from_secs(2));
        assert_eq!(
            tracker.silent_for("n2", t0 + Duration::from_secs(3)),
            Some(Duration::from_secs(1))
        );
        tracker.set_leader(false, t0 + Duration::from_secs(4));
        tracker.set_leader(true, t0 + Duration::from_secs(10));
        assert_eq!(
            tracker.silent_for("n2", t0 + Duration::from_secs(11)),
            Some(Duration::from_secs(1)),
            "renewals seen in an earlier term do not count"
        );
    }
}
