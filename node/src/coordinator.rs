//! The coordinator: membership administration performed by the Raft leader.
//!
//! It admits joining nodes (learner first, caught up, then a ring member, then a voter if the
//! voter cap allows), removes nodes on an operator's request, starts graceful leaves, grants
//! ownership leases ([`crate::lease`]) and fails over members that stopped renewing them and
//! that gossip reports dead, and keeps the voter set at its desired size
//! ([`crate::config::voters::desired_voters`]). Every step is a committed Raft operation;
//! gossip only informs it (is the other holder of a node id alive?).
//!
//! openraft allows one membership change at a time, so all of this runs under
//! `ConfigService::membership_lock`.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::state::{Command, Member};
use crate::config::voters::{desired_voters, Candidate};
use crate::config::{ConfigService, ConfigServiceError};
use crate::lease::RenewalTracker;
use crate::membership::{Membership, Peer};

/// How long a joiner may take to catch up as a learner before the join fails.
const LEARNER_CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of membership administration.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// A config operation failed (not leader, rejected, unavailable).
    #[error(transparent)]
    Config(#[from] ConfigServiceError),
    /// The node id belongs to a live member of another incarnation.
    #[error("node id {node_id:?} is already used by a live member (raft id {raft_id}, gossip address {gossip_addr}); stop it first or choose another node id")]
    NodeIdInUse {
        /// The node id.
        node_id: String,
        /// Raft id of the live member.
        raft_id: u64,
        /// Where it gossips from.
        gossip_addr: String,
    },
    /// The joiner's data directory belongs to another cluster.
    #[error("the joining node's data directory belongs to cluster {theirs}, but this is cluster {ours}; start it with an empty data directory")]
    ClusterMismatch {
        /// The joiner's cluster id.
        theirs: String,
        /// This cluster's id.
        ours: String,
    },
    /// The request is malformed.
    #[error("invalid request: {0}")]
    Invalid(String),
}

/// Result of admitting a node.
#[derive(Debug, Clone)]
pub struct JoinOutcome {
    /// The cluster's id.
    pub cluster_id: String,
    /// Epoch after the join.
    pub epoch: u64,
    /// Whether the node became a voter.
    pub voter: bool,
}

/// A lease renewal's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseGrant {
    /// The leader's applied epoch at the grant.
    pub epoch: u64,
    /// False: the asker is not a member (no lease granted).
    pub member: bool,
}

/// Membership administration on the leader.
pub struct Coordinator {
    config: Arc<ConfigService>,
    membership: Arc<Membership>,
    renewals: Mutex<RenewalTracker>,
    failover_timeout: Duration,
}

impl Coordinator {
    /// A coordinator acting through `config`, informed by `membership`; it fails over members
    /// silent for longer than `failover_timeout`.
    pub fn new(config: Arc<ConfigService>, membership: Arc<Membership>, failover_timeout: Duration) -> Self {
        Self {
            config,
            membership,
            renewals: Mutex::new(RenewalTracker::new()),
            failover_timeout,
        }
    }

    fn renewals(&self) -> std::sync::MutexGuard<'_, RenewalTracker> {
        self.renewals.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Grants an ownership lease to member `node_id` (incarnation `raft_id`) after confirming
    /// this node's leadership with a quorum.
    pub async fn renew_lease(&self, node_id: &str, raft_id: u64) -> Result<LeaseGrant, AdminError> {
        self.require_leader()?;
        let view = self.config.linearizable_view().await?;
        let config = &view.state.config;
        let member = config.members.get(node_id).is_some_and(|m| m.raft_id == raft_id);
        if member {
            self.renewals().renewed(node_id, Instant::now());
        }
        Ok(LeaseGrant {
            epoch: config.epoch,
            member,
        })
    }

    /// Leader duty, called periodically: removes members that have not renewed their lease
    /// for the failover timeout and that gossip reports dead. Their leases ran out before that
    /// (failover timeout > lease + margin), so nobody processes their partitions twice.
    pub async fn fail_over_dead(&self) {
        let leader = self.config.is_leader();
        let now = Instant::now();
        self.renewals().set_leader(leader, now);
        if !leader {
            return;
        }
        let view = self.config.local_view();
        let me = self.config.raft_id();
        let peers = self.membership.peers().await;
        let silent: Vec<(String, Duration)> = {
            let renewals = self.renewals();
            view.state
                .config
                .members
                .values()
                .filter(|m| m.raft_id != me && !is_alive(&peers, m))
                .filter_map(|m| {
                    renewals
                        .silent_for(&m.node_id, now)
                        .filter(|s| *s > self.failover_timeout)
                        .map(|s| (m.node_id.clone(), s))
                })
                .collect()
        };
        for (node_id, silent) in silent {
            tracing::warn!(node = %node_id, silent = ?silent, failover_timeout = ?self.failover_timeout,
                "member is dead (gossip) and has not renewed its lease: failing it over");
            match self.remove(&node_id).await {
                Ok(epoch) => {
                    metrics::counter!(crate::metrics::FAILOVERS).increment(1);
                    tracing::info!(node = %node_id, epoch, "failed over: its partitions have new owners")
                }
                Err(e) => {
                    tracing::warn!(node = %node_id, error = %e, "failover did not complete; will retry")
                }
            }
        }
    }

    /// Starts a graceful leave of `node_id`: it stays a member but owns nothing from the new
    /// epoch on, so the new owners fetch its partitions from it. Returns the new epoch.
    pub async fn start_leave(&self, node_id: &str) -> Result<u64, AdminError> {
        let _guard = self.config.membership_lock.lock().await;
        self.require_leader()?;
        let epoch = self
            .config
            .propose(Command::SetLeaving {
                node_id: node_id.to_string(),
            })
            .await?
            .epoch;
        tracing::info!(node = %node_id, epoch, "node is leaving: its partitions move to the others");
        Ok(epoch)
    }

    fn require_leader(&self) -> Result<(), AdminError> {
        if self.config.is_leader() {
            Ok(())
        } else {
            Err(self.config.not_leader_error("admin".into()).into())
        }
    }

    /// Admits `joiner` (with the cluster id of its data directory, empty if fresh).
    pub async fn join(&self, joiner: Member, joiner_cluster_id: &str) -> Result<JoinOutcome, AdminError> {
        let _guard = self.config.membership_lock.lock().await;
        self.require_leader()?;
        let view = self.config.linearizable_view().await?;
        let config = &view.state.config;
        if !joiner_cluster_id.is_empty() && joiner_cluster_id != config.cluster_id {
            return Err(AdminError::ClusterMismatch {
                theirs: joiner_cluster_id.to_string(),
                ours: config.cluster_id.clone(),
            });
        }
        if let Some(existing) = config.members.get(&joiner.node_id) {
            if existing.raft_id != joiner.raft_id {
                let peers = self.membership.peers().await;
                if let Some(live) = peers
                    .iter()
                    .find(|p| p.alive && p.node_id == existing.node_id && p.raft_id == Some(existing.raft_id))
                {
                    return Err(AdminError::NodeIdInUse {
                        node_id: existing.node_id.clone(),
                        raft_id: existing.raft_id,
                        gossip_addr: live.gossip_addr.to_string(),
                    });
                }
                tracing::info!(node = %joiner.node_id, old_raft_id = existing.raft_id, new_raft_id = joiner.raft_id,
                    "replacing a dead incarnation of the node");
            }
        }
        tracing::info!(node = %joiner.node_id, raft_id = joiner.raft_id, "admitting node as a learner");
        tokio::time::timeout(
            LEARNER_CATCH_UP_TIMEOUT,
            self.config.add_learner(joiner.raft_id, &joiner.grpc_addr),
        )
        .await
        .map_err(|_| {
            ConfigServiceError::Unavailable(format!(
                "{} did not catch up within {:?}; is {} reachable from the leader?",
                joiner.node_id, LEARNER_CATCH_UP_TIMEOUT, joiner.grpc_addr
            ))
        })??;
        let epoch = self
            .config
            .propose(Command::AddMember(joiner.clone()))
            .await?
            .epoch;
        self.reconcile_locked().await?;
        let (voters, _) = self.config.raft_members();
        tracing::info!(node = %joiner.node_id, epoch, voter = voters.contains(&joiner.raft_id), "node joined");
        Ok(JoinOutcome {
            cluster_id: view.state.config.cluster_id.clone(),
            epoch,
            voter: voters.contains(&joiner.raft_id),
        })
    }

    /// Removes `node_id` from the ring, then from Raft. Returns the new epoch.
    pub async fn remove(&self, node_id: &str) -> Result<u64, AdminError> {
        let _guard = self.config.membership_lock.lock().await;
        self.require_leader()?;
        // Ownership first: once the ring no longer names the node, its partitions have new owners.
        let epoch = self
            .config
            .propose(Command::RemoveMember {
                node_id: node_id.to_string(),
            })
            .await?
            .epoch;
        tracing::info!(node = %node_id, epoch, "node removed from the ring");
        self.reconcile_locked().await?;
        Ok(epoch)
    }

    /// Brings Raft membership in line with the ring: voters as [`desired_voters`] says, and no
    /// Raft member that is not a ring member. Called periodically by the leader.
    pub async fn reconcile(&self) -> Result<(), AdminError> {
        let _guard = self.config.membership_lock.lock().await;
        self.require_leader()?;
        self.reconcile_locked().await
    }

    async fn reconcile_locked(&self) -> Result<(), AdminError> {
        let view = self.config.local_view();
        let config = &view.state.config;
        if !config.is_bootstrapped() {
            return Ok(());
        }
        let peers = self.membership.peers().await;
        let candidates: Vec<Candidate> = config
            .members
            .values()
            .map(|m| Candidate {
                raft_id: m.raft_id,
                alive: is_alive(&peers, m),
            })
            .collect();
        let (voters, learners) = self.config.raft_members();
        let desired = desired_voters(&candidates, &voters, config.max_voters);
        let ring_raft_ids: BTreeSet<u64> = candidates.iter().map(|c| c.raft_id).collect();
        let stale: BTreeSet<u64> = voters
            .union(&learners)
            .filter(|id| !ring_raft_ids.contains(id))
            .copied()
            .collect();
        // Ring members that are not Raft members yet (e.g. a join cut short) are re-added by
        // their own join retry; they cannot vote before they are learners.
        let desired: BTreeSet<u64> = desired
            .into_iter()
            .filter(|id| voters.contains(id) || learners.contains(id))
            .collect();
        if desired.is_empty() || (desired == voters && stale.is_empty()) {
            return Ok(());
        }
        tracing::info!(?voters, ?desired, ?stale, "changing raft membership");
        self.config.set_membership(desired, stale).await?;
        Ok(())
    }
}

/// True if gossip sees this incarnation of the member alive.
pub fn is_alive(peers: &[Peer], member: &Member) -> bool {
    peers
        .iter()
        .any(|p| p.alive && p.node_id == member.node_id && p.raft_id == Some(member.raft_id))
}
