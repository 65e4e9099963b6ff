//! The retry policy, without I/O: what a failed attempt means ([`classify`]) and where and
//! when to try next (the crate-internal `RetryPlan`).
//!
//! Rules:
//! - Transport failures (no gRPC answer), timeouts, `UNAVAILABLE`, `DEADLINE_EXCEEDED`,
//!   `CANCELLED` and `ABORTED` are retried at the next known address. After every known
//!   address failed once, the plan pauses for a backoff (doubling, capped) before the next round.
//! - NotLeader (`FAILED_PRECONDITION` with `x-routemq-leader-addr` metadata) is retried at the
//!   leader's address at once, unless that address already failed since the last pause (a
//!   stale or circular hint), in which case it is retried there after a backoff.
//! - NotLeader without a leader address (election in progress) is retried after a backoff.
//! - Everything else is final, including a `FAILED_PRECONDITION` that is not a NotLeader
//!   answer (e.g. "cannot remove the last member").
//! - A call stops after `max_attempts` attempts or when the next backoff would overrun its
//!   total time budget.
//!
//! A NotLeader answer is recognised by the leader metadata (`x-routemq-leader-addr` or
//! `x-routemq-leader-id`, even with an empty value) or, failing that, by the node's message
//! ("not the Raft leader..."), because the node also uses `FAILED_PRECONDITION` for final
//! rejections.

use std::error::Error as _;
use std::time::Duration;

use tonic::{Code, Status};

use crate::addr::normalize_addr;

/// What a failed attempt means for the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryDecision {
    /// The answer is final: return it to the caller.
    Final,
    /// The node could not answer (transport failure, `UNAVAILABLE`, timeout): try another node.
    TryAnotherNode,
    /// The node is not the Raft leader and named the leader's gRPC address (normalised): try
    /// there.
    FollowLeader(String),
    /// The node is not the Raft leader and does not know the leader yet: retry after a backoff.
    WaitForLeader,
}

/// Classifies a failed attempt's status.
pub fn classify(status: &Status) -> RetryDecision {
    if is_not_leader(status) {
        return match leader_hint(status) {
            Some(addr) => RetryDecision::FollowLeader(addr),
            None => RetryDecision::WaitForLeader,
        };
    }
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted => {
            RetryDecision::TryAnotherNode
        }
        // No gRPC answer at all (connection reset, protocol error): tonic attaches the
        // underlying error as the source. A node's own answer never has one.
        _ if status.source().is_some() => RetryDecision::TryAnotherNode,
        _ => RetryDecision::Final,
    }
}

/// True when the status is a NotLeader answer: `FAILED_PRECONDITION` carrying leader metadata
/// (possibly empty), or whose message says the node is not the Raft leader.
pub fn is_not_leader(status: &Status) -> bool {
    if status.code() != Code::FailedPrecondition {
        return false;
    }
    let metadata = status.metadata();
    metadata.contains_key(routemq_proto::LEADER_ADDR_METADATA)
        || metadata.contains_key(routemq_proto::LEADER_ID_METADATA)
        || status
            .message()
            .to_ascii_lowercase()
            .starts_with("not the raft leader")
}

/// The leader's normalised gRPC address from a NotLeader answer's `x-routemq-leader-addr`
/// metadata; `None` when absent, empty or invalid.
pub fn leader_hint(status: &Status) -> Option<String> {
    let value = status.metadata().get(routemq_proto::LEADER_ADDR_METADATA)?;
    let text = value.to_str().ok()?;
    normalize_addr(text).ok()
}

/// The leader's node id from a NotLeader answer's `x-routemq-leader-id` metadata, if any.
pub fn leader_id_hint(status: &Status) -> Option<String> {
    let value = status.metadata().get(routemq_proto::LEADER_ID_METADATA)?;
    let text = value.to_str().ok()?.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// Retry limits of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RetryLimits {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

/// The next step of a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Wait `delay`, then send the request to `addr`.
    Try { addr: String, delay: Duration },
    /// Stop retrying and report the last failure.
    GiveUp,
}

/// Where and when one call tries next. Pure: the caller performs the attempts and sleeps and
/// tells the plan how each attempt failed and how much time is left.
#[derive(Debug)]
pub(crate) struct RetryPlan {
    /// Candidate addresses, the preferred one first; leader hints are appended.
    addrs: Vec<String>,
    limits: RetryLimits,
    attempts: u32,
    next_backoff: Duration,
    /// Addresses tried since the last pause (or the start).
    since_pause: Vec<String>,
}

impl RetryPlan {
    /// A plan over `addrs` (must not be empty; the first is tried first).
    pub(crate) fn new(addrs: Vec<String>, limits: RetryLimits) -> Self {
        Self {
            addrs,
            limits,
            attempts: 0,
            next_backoff: limits.initial_backoff,
            since_pause: Vec::new(),
        }
    }

    /// The first attempt.
    pub(crate) fn first(&mut self) -> Step {
        match self.addrs.first().cloned() {
            Some(addr) if self.limits.max_attempts > 0 => self.attempt(addr, Duration::ZERO),
            _ => Step::GiveUp,
        }
    }

    /// The step after the attempt at `failed_at` failed with `decision`, with `remaining` time
    /// left in the call's budget.
    pub(crate) fn after_failure(
        &mut self,
        failed_at: &str,
        decision: &RetryDecision,
        remaining: Duration,
    ) -> Step {
        if self.attempts >= self.limits.max_attempts || remaining.is_zero() {
            return Step::GiveUp;
        }
        let (addr, delay) = match decision {
            RetryDecision::Final => return Step::GiveUp,
            RetryDecision::FollowLeader(leader) => {
                if !self.addrs.contains(leader) {
                    self.addrs.push(leader.clone());
                }
                if leader != failed_at && !self.since_pause.contains(leader) {
                    (leader.clone(), Duration::ZERO)
                } else {
                    (leader.clone(), self.pause())
                }
            }
            RetryDecision::TryAnotherNode => {
                let next = self.after(failed_at);
                if self.since_pause.contains(&next) {
                    (next, self.pause())
                } else {
                    (next, Duration::ZERO)
                }
            }
            RetryDecision::WaitForLeader => {
                let next = self.after(failed_at);
                (next, self.pause())
            }
        };
        if delay >= remaining {
            return Step::GiveUp;
        }
        self.attempt(addr, delay)
    }

    /// Number of attempts planned so far.
    #[cfg(test)]
    pub(crate) fn attempts(&self) -> u32 {
        self.attempts
    }

    fn attempt(&mut self, addr: String, delay: Duration) -> Step {
        self.attempts += 1;
        self.since_pause.push(addr.clone());
        Step::Try { addr, delay }
    }

    /// The address after `addr` in rotation order (the first one if `addr` is unknown).
    fn after(&self, addr: &str) -> String {
        let next = match self.addrs.iter().position(|a| a == addr) {
            Some(i) => (i + 1) % self.addrs.len(),
            None => 0,
        };
        self.addrs[next].clone()
    }

    /// Starts a new round: returns the backoff to wait and doubles the next one.
    fn pause(&mut self) -> Duration {
        self.since_pause.clear();
        let delay = self.next_backoff;
        self.next_backoff = delay.saturating_mul(2).min(self.limits.max_backoff);
        delay
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tonic::metadata::MetadataValue;

    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const LOTS: Duration = Duration::from_secs(60);

    fn not_leader(addr: Option<&str>, id: Option<&str>) -> Status {
        let mut status = Status::failed_precondition("not the Raft leader");
        if let Some(addr) = addr {
            status.metadata_mut().insert(
                routemq_proto::LEADER_ADDR_METADATA,
                MetadataValue::try_from(addr).unwrap(),
            );
        }
        if let Some(id) = id {
            status.metadata_mut().insert(
                routemq_proto::LEADER_ID_METADATA,
                MetadataValue::try_from(id).unwrap(),
            );
        }
        status
    }

    fn limits() -> RetryLimits {
        RetryLimits {
            max_attempts: 10,
            initial_backoff: 50 * MS,
            max_backoff: 200 * MS,
        }
    }

    fn plan(addrs: &[&str]) -> RetryPlan {
        RetryPlan::new(addrs.iter().map(|a| a.to_string()).collect(), limits())
    }

    fn try_at(addr: &str, delay: Duration) -> Step {
        Step::Try {
            addr: addr.to_string(),
            delay,
        }
    }

    #[test]
    fn leader_hint_is_extracted_and_normalised() {
        let status = not_leader(Some("http://Node-2:7001"), Some("node-2"));
        assert_eq!(leader_hint(&status).as_deref(), Some("node-2:7001"));
        assert_eq!(leader_id_hint(&status).as_deref(), Some("node-2"));
        assert_eq!(
            classify(&status),
            RetryDecision::FollowLeader("node-2:7001".into())
        );
    }

    #[test]
    fn not_leader_without_usable_address_waits_for_leader() {
        for status in [
            not_leader(None, None),
            not_leader(None, Some("node-2")),
            not_leader(Some(""), None),
            not_leader(Some("garbage"), None),
        ] {
            assert_eq!(leader_hint(&status), None);
            assert_eq!(classify(&status), RetryDecision::WaitForLeader, "{status:?}");
        }
        // Metadata alone marks NotLeader, whatever the message says.
        let mut status = Status::failed_precondition("leader unknown");
        status.metadata_mut().insert(
            routemq_proto::LEADER_ADDR_METADATA,
            MetadataValue::from_static(""),
        );
        assert_eq!(classify(&status), RetryDecision::WaitForLeader);
    }

    #[test]
    fn other_failed_preconditions_are_final() {
        let status =
            Status::failed_precondition("cannot remove \"n1\": it is the last member of the cluster");
        assert!(!is_not_leader(&status));
        assert_eq!(classify(&status), RetryDecision::Final);
    }

    #[test]
    fn retryable_and_final_codes() {
        for status in [
            Status::unavailable("config unavailable: no quorum"),
            Status::deadline_exceeded("timeout"),
            Status::cancelled("Timeout expired"),
            Status::aborted("conflict"),
        ] {
            assert_eq!(classify(&status), RetryDecision::TryAnotherNode, "{status:?}");
        }
        for status in [
            Status::invalid_argument("bad"),
            Status::not_found("no such node"),
            Status::already_exists("taken"),
            Status::permission_denied("other cluster"),
            Status::unimplemented("old node"),
            Status::internal("bug"),
            Status::unknown("?"),
            Status::resource_exhausted("busy"),
        ] {
            assert_eq!(classify(&status), RetryDecision::Final, "{status:?}");
        }
    }

    #[test]
    fn transport_failures_are_retryable_whatever_the_code() {
        let mut status = Status::unknown("connection closed before message completed");
        status.set_source(Arc::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert_eq!(classify(&status), RetryDecision::TryAnotherNode);
    }

    #[test]
    fn rotates_then_pauses_after_a_full_round() {
        let mut p = plan(&["a:1", "b:1", "c:1"]);
        assert_eq!(p.first(), try_at("a:1", Duration::ZERO));
        let again = RetryDecision::TryAnotherNode;
        assert_eq!(
            p.after_failure("a:1", &again, LOTS),
            try_at("b:1", Duration::ZERO)
        );
        assert_eq!(
            p.after_failure("b:1", &again, LOTS),
            try_at("c:1", Duration::ZERO)
        );
        assert_eq!(p.after_failure("c:1", &again, LOTS), try_at("a:1", 50 * MS));
        assert_eq!(
            p.after_failure("a:1", &again, LOTS),
            try_at("b:1", Duration::ZERO)
        );
        assert_eq!(
            p.after_failure("b:1", &again, LOTS),
            try_at("c:1", Duration::ZERO)
        );
        assert_eq!(p.after_failure("c:1", &again, LOTS), try_at("a:1", 100 * MS));
        assert_eq!(
            p.after_failure("a:1", &again, LOTS),
            try_at("b:1", Duration::ZERO)
        );
        assert_eq!(
            p.after_failure("b:1", &again, LOTS),
            try_at("c:1", Duration::ZERO)
        );
        assert_eq!(p.after_failure("c:1", &again, LOTS), try_at("a:1", 200 * MS));
        assert_eq!(p.attempts(), 10);
        assert_eq!(p.after_failure("a:1", &again, LOTS), Step::GiveUp);
    }

    #[test]
    fn single_address_backs_off_with_a_cap() {
        let mut p = plan(&["a:1"]);
        p.first();
        let again = RetryDecision::TryAnotherNode;
        let delays: Vec<Duration> = (0..4)
            .map(|_| match p.after_failure("a:1", &again, LOTS) {
                Step::Try { delay, .. } => delay,
                Step::GiveUp => panic!("gave up early"),
            })
            .collect();
        assert_eq!(delays, vec![50 * MS, 100 * MS, 200 * MS, 200 * MS]);
    }

    #[test]
    fn follows_the_leader_at_once_and_learns_its_address() {
        let mut p = plan(&["a:1"]);
        p.first();
        let follow = RetryDecision::FollowLeader("b:1".into());
        assert_eq!(
            p.after_failure("a:1", &follow, LOTS),
            try_at("b:1", Duration::ZERO)
        );
        // b fails: rotation now includes b and goes back to a.
        let again = RetryDecision::TryAnotherNode;
        assert_eq!(p.after_failure("b:1", &again, LOTS), try_at("a:1", 50 * MS));
    }

    #[test]
    fn circular_or_stale_leader_hints_back_off() {
        let mut p = plan(&["a:1", "b:1"]);
        p.first();
        // a says b leads, b says a leads: the second hop waits.
        let to_b = RetryDecision::FollowLeader("b:1".into());
        let to_a = RetryDecision::FollowLeader("a:1".into());
        assert_eq!(p.after_failure("a:1", &to_b, LOTS), try_at("b:1", Duration::ZERO));
        assert_eq!(p.after_failure("b:1", &to_a, LOTS), try_at("a:1", 50 * MS));
        // A node naming itself as the leader (stale) also waits.
        assert_eq!(p.after_failure("a:1", &to_a, LOTS), try_at("a:1", 100 * MS));
    }

    #[test]
    fn unknown_leader_waits_then_moves_on() {
        let mut p = plan(&["a:1", "b:1"]);
        p.first();
        let wait = RetryDecision::WaitForLeader;
        assert_eq!(p.after_failure("a:1", &wait, LOTS), try_at("b:1", 50 * MS));
        assert_eq!(p.after_failure("b:1", &wait, LOTS), try_at("a:1", 100 * MS));
    }

    #[test]
    fn gives_up_on_final_answers_and_when_time_runs_out() {
        let mut p = plan(&["a:1", "b:1"]);
        p.first();
        assert_eq!(p.after_failure("a:1", &RetryDecision::Final, LOTS), Step::GiveUp);

        let mut p = plan(&["a:1"]);
        p.first();
        // The backoff (50 ms) does not fit in the 40 ms left.
        assert_eq!(
            p.after_failure("a:1", &RetryDecision::TryAnotherNode, 40 * MS),
            Step::GiveUp
        );
        let mut p = plan(&["a:1", "b:1"]);
        p.first();
        assert_eq!(
            p.after_failure("a:1", &RetryDecision::TryAnotherNode, Duration::ZERO),
            Step::GiveUp
        );
    }

    #[test]
    fn no_addresses_or_attempts_means_no_attempt() {
        assert_eq!(RetryPlan::new(Vec::new(), limits()).first(), Step::GiveUp);
        let zero = RetryLimits {
            max_attempts: 0,
            ..limits()
        };
        assert_eq!(RetryPlan::new(vec!["a:1".into()], zero).first(), Step::GiveUp);
    }
}
