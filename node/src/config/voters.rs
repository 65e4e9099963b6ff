//! Which Raft members should vote: a pure decision, made by the leader after every
//! membership change.
//!
//! Voters are capped ([`super::state::ClusterConfig::max_voters`]); every other ring member
//! is a Raft learner. The voter count is kept odd (an even count tolerates no more failures
//! than the odd count below it, and needs a larger quorum). Existing voters are kept while
//! they are members, so a membership change never moves more votes than it must.

use std::collections::BTreeSet;

/// A Raft member as seen by the voter planner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Raft id.
    pub raft_id: u64,
    /// Whether gossip currently sees the node alive; live learners are promoted first.
    pub alive: bool,
}

/// The voter set the cluster should have, given its ring members (`members`), the current
/// voters and the cap. Deterministic: ties are broken by raft id.
pub fn desired_voters(
    members: &[Candidate],
    current_voters: &BTreeSet<u64>,
    max_voters: u32,
) -> BTreeSet<u64> {
    let member_ids: BTreeSet<u64> = members.iter().map(|c| c.raft_id).collect();
    let cap = (max_voters.max(1) as usize).min(member_ids.len().max(1));
    let target = if cap.is_multiple_of(2) { cap - 1 } else { cap };

    // Keep current voters that are still members, preferring live ones.
    let mut kept: Vec<&Candidate> = members
        .iter()
        .filter(|c| current_voters.contains(&c.raft_id))
        .collect();
    kept.sort_by_key(|c| (!c.alive, c.raft_id));
    let mut voters: BTreeSet<u64> = kept.iter().take(target).map(|c| c.raft_id).collect();

    // Promote learners, live ones first.
    let mut learners: Vec<&Candidate> = members.iter().filter(|c| !voters.contains(&c.raft_id)).collect();
    learners.sort_by_key(|c| (!c.alive, c.raft_id));
    for learner in learners {
        if voters.len() >= target {
            break;
        }
        voters.insert(learner.raft_id);
    }
    voters
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(ids: &[u64]) -> Vec<Candidate> {
        ids.iter()
            .map(|&raft_id| Candidate { raft_id, alive: true })
            .collect()
    }

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    #[test]
    fn grows_to_the_cap_and_stays_odd() {
        assert_eq!(desired_voters(&live(&[1]), &set(&[1]), 5), set(&[1]));
        assert_eq!(desired_voters(&live(&[1, 2]), &set(&[1]), 5), set(&[1]));
        assert_eq!(desired_voters(&live(&[1, 2, 3]), &set(&[1]), 5), set(&[1, 2, 3]));
        assert_eq!(
            desired_voters(&live(&[1, 2, 3, 4]), &set(&[1, 2, 3]), 5),
            set(&[1, 2, 3])
        );
        assert_eq!(
            desired_voters(&live(&[1, 2, 3, 4, 5, 6]), &set(&[1, 2, 3]), 5),
            set(&[1, 2, 3, 4, 5])
        );
        assert_eq!(
            desired_voters(&live(&[1, 2, 3, 4, 5, 6]), &set(&[1, 2, 3]), 3),
            set(&[1, 2, 3])
        );
    }

    #[test]
    fn removed_voter_is_replaced_by_a_live_learner() {
        let mut members = live(&[1, 3, 4, 5]);
        members[2].alive = false; // 4 is dead
        assert_eq!(desired_voters(&members, &set(&[1, 2, 3]), 3), set(&[1, 3, 5]));
    }

    #[test]
    fn keeps_existing_voters() {
        assert_eq!(
            desired_voters(&live(&[1, 2, 3, 4]), &set(&[2, 3, 4]), 3),
            set(&[2, 3, 4])
        );
    }
}
