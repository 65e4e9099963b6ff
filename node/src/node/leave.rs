//! Leaving and coming back: the graceful [`Leave`] (hand every partition over through the
//! leader, then leave the config, bounded by the leave timeout) and the [`Rejoin`] of a node
//! the leader removed while it was cut off or paused (it joins again as a fresh member).
//!
//! Promises: a leave never blocks shutdown for longer than its timeout, and stops early when no
//! other live member could take the partitions; a rejoin runs only until the node leaves.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::enter::join_through_leader;
use crate::config::state::Member;
use crate::config::ConfigService;
use crate::coordinator::Coordinator;
use crate::fencing::Fence;
use crate::membership::{Lifecycle, Membership};
use crate::peer::leader::{LeaderClient, RaftAndGossip};
use crate::peer::{PeerError, Refusal};

/// Joins again after the leader said this node is no longer a member (it was failed over
/// while cut off or paused). Its partitions were dropped by the fence; as a fresh member it
/// gets partitions back by handoff.
pub(super) struct Rejoin {
    pub(super) cluster_id: String,
    pub(super) me: Member,
    pub(super) config: Arc<ConfigService>,
    pub(super) membership: Arc<Membership>,
}

impl Rejoin {
    /// Runs until `leaving` (never returns otherwise).
    pub(super) async fn run(&self, removed: &mut watch::Receiver<bool>, leaving: CancellationToken) {
        loop {
            tokio::select! {
                _ = leaving.cancelled() => return std::future::pending().await,
                r = removed.wait_for(|r| *r) => if r.is_err() { return std::future::pending().await },
            }
            self.membership.set_lifecycle(Lifecycle::Joining).await;
            tracing::info!("rejoining the cluster as a fresh member");
            let joined = tokio::select! {
                _ = leaving.cancelled() => return std::future::pending().await,
                r = join_through_leader(&self.config, &self.membership, &self.me, &self.cluster_id) => r,
            };
            match joined {
                Ok(response) => {
                    tracing::info!(epoch = response.epoch, "rejoined");
                    // The lease loop clears `removed` at its first renewal as a member.
                    let _ = tokio::time::timeout(Duration::from_secs(10), removed.wait_for(|r| !*r)).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot rejoin; retrying in 5 s");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
        }
    }
}

/// A graceful leave: stop owning (through the leader), wait until every partition this node
/// held was fetched by its new owner, then leave the config. Bounded by `timeout`.
pub(super) struct Leave<'a> {
    pub(super) node_id: &'a str,
    pub(super) config: &'a Arc<ConfigService>,
    pub(super) coordinator: &'a Arc<Coordinator>,
    pub(super) membership: &'a Arc<Membership>,
    pub(super) fence: &'a Arc<Fence>,
    pub(super) timeout: Duration,
}

impl Leave<'_> {
    pub(super) async fn run(&self) {
        let started = Instant::now();
        let deadline = started + self.timeout;
        self.membership.set_lifecycle(Lifecycle::Leaving).await;
        if !self
            .config
            .local_view()
            .state
            .config
            .members
            .contains_key(self.node_id)
        {
            tracing::info!("not a member; nothing to hand over");
            return;
        }
        tracing::info!(timeout = ?self.timeout, "leaving the cluster: handing partitions over");
        let epoch = loop {
            match self.ask_leader(true).await {
                Ok(epoch) => break epoch,
                Err(LeaveStep::Final(why)) => {
                    tracing::info!(reason = %why, "not handing over");
                    return;
                }
                Err(LeaveStep::Retry(why)) => {
                    if Instant::now() >= deadline || !self.others_alive().await {
                        tracing::warn!(reason = %why, "could not start the handoff; stopping without it");
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        let mut applied = self.config.subscribe();
        let _ = tokio::time::timeout(
            deadline.saturating_duration_since(Instant::now()),
            applied.wait_for(|s| s.config.epoch >= epoch),
        )
        .await;
        loop {
            crate::handoff::confirm_handed_over(self.fence, self.config).await;
            let held = self.fence.still_held();
            if held == 0 {
                tracing::info!(took = ?started.elapsed(), "every partition handed over");
                self.fence.left();
                break;
            }
            if Instant::now() >= deadline {
                tracing::warn!(held, timeout = ?self.timeout,
                    "leave timeout: partitions not handed over; their data stays in this data directory");
                return;
            }
            if !self.others_alive().await {
                tracing::warn!(held, "no other live member to hand partitions to; stopping");
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        loop {
            match self.ask_leader(false).await {
                Ok(epoch) => {
                    tracing::info!(epoch, "left the cluster");
                    return;
                }
                Err(LeaveStep::Final(why)) => {
                    tracing::info!(reason = %why, "left the cluster");
                    return;
                }
                Err(LeaveStep::Retry(why)) if Instant::now() >= deadline => {
                    tracing::warn!(reason = %why, "could not leave the config before the timeout");
                    return;
                }
                // Everyone is stopping at once (no active member left to run the config):
                // nothing is left to hand over to, and nobody to record the leave.
                Err(LeaveStep::Retry(why)) if !self.others_alive().await => {
                    tracing::warn!(reason = %why, "no other live member to record the leave; stopping");
                    return;
                }
                Err(LeaveStep::Retry(_)) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// True if another active member looks alive (someone can take our partitions).
    async fn others_alive(&self) -> bool {
        let view = self.config.local_view();
        let peers = self.membership.peers().await;
        let alive = view
            .state
            .config
            .active_members()
            .filter(|m| m.node_id != self.node_id)
            .any(|m| crate::coordinator::is_alive(&peers, m));
        alive
    }

    /// Starts the leave (`graceful`) or removes this node, through the leader.
    async fn ask_leader(&self, graceful: bool) -> Result<u64, LeaveStep> {
        if self.config.is_leader() {
            let result = if graceful {
                self.coordinator.start_leave(self.node_id).await
            } else {
                self.coordinator.remove(self.node_id).await
            };
            return result.map_err(|e| match e {
                crate::coordinator::AdminError::Config(crate::config::ConfigServiceError::Rejected(r)) => {
                    LeaveStep::Final(r.to_string())
                }
                other => LeaveStep::Retry(other.to_string()),
            });
        }
        let leader = LeaderClient::new(
            crate::peer::grpc::shared(),
            Arc::new(RaftAndGossip::new(self.config.clone(), self.membership.clone())),
        );
        leader
            .remove_node(self.node_id, graceful)
            .await
            .map_err(|e| match e {
                // Not a member any more, or the config refuses (the last member cannot leave).
                PeerError::Refused {
                    kind: Refusal::NotFound | Refusal::Rejected,
                    message,
                } => LeaveStep::Final(message),
                other => LeaveStep::Retry(other.to_string()),
            })
    }
}

/// Why a step of a leave did not happen.
enum LeaveStep {
    /// Try again (no leader, unavailable).
    Retry(String),
    /// Do not try again (the last member cannot leave; already removed).
    Final(String),
}
