//! The one client that calls the Raft leader: it asks where it last found the leader (or where
//! a `NotLeader` answer said it is), else where this node's own Raft says it is, else where
//! gossip says it is, and follows `NotLeader { leader }` answers. Lease renewal, joining and
//! removing a node (leave) all go through it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::time::Instant;

use super::{JoinRequest, PeerError, PeerNetwork, Refusal};
use crate::backoff::Backoff;
use crate::coordinator::{JoinOutcome, LeaseGrant};

/// How many `NotLeader` hints one removal follows before giving up for this attempt.
const REMOVE_HOPS: usize = 3;

/// Where the leader may be.
pub trait LeaderHints: Send + Sync + 'static {
    /// The leader's gRPC address as this node's own Raft knows it (None: no leader known).
    fn raft_leader(&self) -> Option<String>;
    /// The leader's gRPC address as gossip reports it, or any live peer's.
    fn gossip_leader(&self) -> BoxFuture<'_, Option<String>>;
}

/// Hints from the node's Raft metrics and its gossip.
pub struct RaftAndGossip {
    config: Arc<crate::config::ConfigService>,
    membership: Arc<crate::membership::Membership>,
}

impl RaftAndGossip {
    /// Hints of the node running `config` and `membership`.
    pub fn new(
        config: Arc<crate::config::ConfigService>,
        membership: Arc<crate::membership::Membership>,
    ) -> Self {
        Self { config, membership }
    }
}

impl LeaderHints for RaftAndGossip {
    fn raft_leader(&self) -> Option<String> {
        let metrics = self.config.metrics();
        let leader = metrics.current_leader?;
        metrics
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())
    }

    fn gossip_leader(&self) -> BoxFuture<'_, Option<String>> {
        Box::pin(async move { self.membership.leader_hint(self.config.raft_id()).await })
    }
}

/// Calls the leader over a [`PeerNetwork`].
pub struct LeaderClient {
    network: Arc<dyn PeerNetwork>,
    hints: Arc<dyn LeaderHints>,
    /// Where the leader was last found (or last said to be).
    last: Mutex<Option<String>>,
}

impl LeaderClient {
    /// A client over `network`, starting from `hints`.
    pub fn new(network: Arc<dyn PeerNetwork>, hints: Arc<dyn LeaderHints>) -> Self {
        Self {
            network,
            hints,
            last: Mutex::new(None),
        }
    }

    fn take_last(&self) -> Option<String> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn set_last(&self, addr: Option<String>) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = addr;
    }

    /// One call where the leader is believed to be: the last address that answered or that a
    /// `NotLeader` named, else this node's Raft leader, else gossip's (a node removed from Raft
    /// hears nothing from the leader). Remembers where to ask next time.
    pub async fn call_once<T, F, Fut>(&self, call: F) -> Result<T, PeerError>
    where
        F: FnOnce(Arc<dyn PeerNetwork>, String) -> Fut,
        Fut: std::future::Future<Output = Result<T, PeerError>>,
    {
        let mut target = self.take_last();
        if target.is_none() {
            target = match self.hints.raft_leader() {
                Some(addr) => Some(addr),
                None => self.hints.gossip_leader().await,
            };
        }
        let addr = target.ok_or_else(|| PeerError::Unavailable("no Raft leader known".into()))?;
        let result = call(self.network.clone(), addr.clone()).await;
        self.set_last(match &result {
            // Keep asking there while nothing says otherwise.
            Ok(_) => Some(addr),
            Err(PeerError::NotLeader { leader }) => leader.clone(),
            Err(_) => None,
        });
        result
    }

    /// Renews the lease of `node_id`/`raft_id` (one attempt).
    pub async fn renew_lease(&self, node_id: &str, raft_id: u64) -> Result<LeaseGrant, PeerError> {
        self.call_once(|net, addr| async move { net.renew_lease(&addr, node_id, raft_id).await })
            .await
    }

    /// Asks the leader (found through gossip) to admit a node, until it does or refuses for
    /// good (invalid request, node id in use, another cluster's data): those errors are
    /// returned, everything else is retried with backoff.
    pub async fn join(&self, request: JoinRequest) -> Result<JoinOutcome, PeerError> {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let started = Instant::now();
        loop {
            let target = match self.take_last() {
                Some(addr) => Some(addr),
                None => self.hints.gossip_leader().await,
            };
            let Some(target) = target else {
                if started.elapsed() > Duration::from_secs(2) {
                    tracing::warn!(retry_in = ?backoff.peek(), "no RouteMQ node reachable through the seeds yet; retrying");
                }
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            };
            tracing::info!(via = %target, "asking to join the cluster");
            match self.network.join(&target, request.clone()).await {
                Ok(outcome) => return Ok(outcome),
                Err(
                    e @ PeerError::Refused {
                        kind: Refusal::Invalid | Refusal::Conflict | Refusal::Denied,
                        ..
                    },
                ) => return Err(e),
                Err(PeerError::NotLeader { leader }) => {
                    if leader.is_none() {
                        tokio::time::sleep(backoff.peek()).await;
                    }
                    self.set_last(leader);
                }
                Err(e) => {
                    tracing::warn!(via = %target, error = %e, retry_in = ?backoff.peek(), "join attempt failed; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }

    /// Asks the leader to remove `node_id` (`graceful`: start its leave), following up to three
    /// `NotLeader` hints. Returns the epoch after; a `Refused` error (`NotFound`: not a member;
    /// `Rejected`: e.g. the last member) is final, anything else may be retried.
    pub async fn remove_node(&self, node_id: &str, graceful: bool) -> Result<u64, PeerError> {
        let mut addr = match self.hints.raft_leader() {
            Some(addr) => addr,
            None => self
                .hints
                .gossip_leader()
                .await
                .ok_or_else(|| PeerError::Unavailable("no Raft leader known".into()))?,
        };
        for _ in 0..REMOVE_HOPS {
            match self.network.remove_node(&addr, node_id, graceful).await {
                Err(PeerError::NotLeader { leader: Some(leader) }) => addr = leader,
                other => return other,
            }
        }
        Err(PeerError::Unavailable("the leader moved while asking".into()))
    }
}
