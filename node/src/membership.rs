//! Membership by gossip (chitchat): who is out there, how to reach them, and whether they
//! look alive.
//!
//! Each node gossips its id, generation (its start time, so a restart is a new generation),
//! addresses, lifecycle state (`joining`, `active`, `leaving`), raft id, cluster id, the Raft
//! leader it sees and its committed index. A phi-accrual failure detector marks peers dead.
//!
//! Gossip is fast and eventually consistent. It is a *hint* used to find the leader, to show
//! liveness, and (later) to suggest removals to the coordinator; it never decides ownership.
//! That is the Raft config's job.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use chitchat::transport::UdpTransport;
use chitchat::{
    spawn_chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, NodeState,
};

/// Gossip keys.
mod keys {
    pub const GRPC: &str = "grpc";
    pub const HTTP: &str = "http";
    pub const STATE: &str = "state";
    pub const RAFT_ID: &str = "raft_id";
    pub const CLUSTER_ID: &str = "cluster_id";
    pub const LEADER: &str = "raft_leader";
    pub const COMMITTED: &str = "committed";
    pub const LOAD: &str = "load";
}

/// Lifecycle state a node gossips about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// Started, not yet a ring member.
    Joining,
    /// A ring member.
    Active,
    /// Shutting down.
    Leaving,
}

impl Lifecycle {
    /// The gossiped string.
    pub fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Joining => "joining",
            Lifecycle::Active => "active",
            Lifecycle::Leaving => "leaving",
        }
    }
}

/// Gossip and failure-detector settings.
#[derive(Debug, Clone)]
pub struct GossipSettings {
    /// This node's id.
    pub node_id: String,
    /// Generation: bumped on every restart (milliseconds since the Unix epoch at start).
    pub generation: u64,
    /// UDP address to bind.
    pub listen_addr: SocketAddr,
    /// UDP address peers use to reach this node.
    pub advertise_addr: SocketAddr,
    /// Seed addresses (`host:port`, DNS names allowed).
    pub seeds: Vec<String>,
    /// Gossip namespace: nodes with another name ignore each other.
    pub cluster_name: String,
    /// Interval between gossip rounds.
    pub interval: Duration,
    /// Phi threshold of the failure detector.
    pub phi_threshold: f64,
}

/// What this node gossips about itself at start.
#[derive(Debug, Clone)]
pub struct SelfInfo {
    /// Advertised gRPC address.
    pub grpc_addr: String,
    /// Advertised HTTP address.
    pub http_addr: String,
    /// Raft id of this incarnation.
    pub raft_id: u64,
    /// Cluster id, empty if not known yet.
    pub cluster_id: String,
    /// Initial lifecycle state.
    pub lifecycle: Lifecycle,
}

/// One node as seen through gossip.
#[derive(Debug, Clone, PartialEq)]
pub struct Peer {
    /// Node id.
    pub node_id: String,
    /// Generation (process start).
    pub generation: u64,
    /// Gossip address.
    pub gossip_addr: SocketAddr,
    /// Whether the failure detector considers it alive (always true for self).
    pub alive: bool,
    /// Gossiped gRPC address.
    pub grpc_addr: Option<String>,
    /// Gossiped HTTP address.
    pub http_addr: Option<String>,
    /// Gossiped lifecycle state string.
    pub state: Option<String>,
    /// Gossiped raft id.
    pub raft_id: Option<u64>,
    /// Gossiped cluster id (empty when the node has none yet).
    pub cluster_id: Option<String>,
    /// Raft leader (raft id) that the node sees.
    pub raft_leader: Option<u64>,
    /// Committed log index the node knows of.
    pub committed: Option<u64>,
}

/// A running gossip member.
pub struct Membership {
    handle: ChitchatHandle,
    self_id: ChitchatId,
}

/// Errors starting gossip.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// The UDP socket could not be bound.
    #[error("cannot listen for gossip on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why (chitchat reports it untyped).
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Membership {
    /// Binds the gossip socket and starts gossiping.
    pub async fn spawn(settings: &GossipSettings, me: &SelfInfo) -> Result<Self, MembershipError> {
        let self_id = ChitchatId::new(
            settings.node_id.clone(),
            settings.generation,
            settings.advertise_addr,
        );
        // Without a prior, phi would need many samples before it means anything; a prior equal to
        // the gossip interval makes detection time ~ interval * threshold * ln 10 from the start.
        let failure_detector_config = FailureDetectorConfig {
            phi_threshold: settings.phi_threshold,
            sampling_window_size: 200,
            max_interval: settings.interval * 20,
            initial_interval: settings.interval,
            dead_node_grace_period: Duration::from_secs(3600),
        };
        let config = ChitchatConfig {
            chitchat_id: self_id.clone(),
            cluster_id: settings.cluster_name.clone(),
            gossip_interval: settings.interval,
            listen_addr: settings.listen_addr,
            seed_nodes: settings.seeds.clone(),
            failure_detector_config,
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: chitchat::ProtocolVersion::V0,
        };
        let initial = vec![
            (keys::GRPC.to_string(), me.grpc_addr.clone()),
            (keys::HTTP.to_string(), me.http_addr.clone()),
            (keys::RAFT_ID.to_string(), me.raft_id.to_string()),
            (keys::CLUSTER_ID.to_string(), me.cluster_id.clone()),
            (keys::STATE.to_string(), me.lifecycle.as_str().to_string()),
        ];
        let handle = spawn_chitchat(config, initial, &UdpTransport)
            .await
            .map_err(|source| MembershipError::Bind {
                addr: settings.listen_addr,
                source: source.into(),
            })?;
        Ok(Self { handle, self_id })
    }

    /// Sets a key of this node's gossiped state (no-op if unchanged).
    async fn set(&self, key: &str, value: String) {
        let chitchat = self.handle.chitchat();
        let mut chitchat = chitchat.lock().await;
        let node = chitchat.self_node_state();
        if node.get(key) != Some(value.as_str()) {
            node.set(key, value);
        }
    }

    /// Gossips a new lifecycle state.
    pub async fn set_lifecycle(&self, lifecycle: Lifecycle) {
        self.set(keys::STATE, lifecycle.as_str().to_string()).await;
    }

    /// Gossips the cluster id once known.
    pub async fn set_cluster_id(&self, cluster_id: &str) {
        self.set(keys::CLUSTER_ID, cluster_id.to_string()).await;
    }

    /// Gossips this node's view of Raft (leader and committed index).
    pub async fn set_raft_view(&self, leader: Option<u64>, committed: u64) {
        self.set(keys::LEADER, leader.map(|l| l.to_string()).unwrap_or_default())
            .await;
        self.set(keys::COMMITTED, committed.to_string()).await;
    }

    /// Gossips a load figure (partitions owned, for now).
    pub async fn set_load(&self, load: u64) {
        self.set(keys::LOAD, load.to_string()).await;
    }

    /// Every node known to gossip, live or dead, self included. When an incarnation (node id
    /// and raft id) restarted, only its newest generation is returned; two processes claiming
    /// the same node id with different raft ids are both returned.
    pub async fn peers(&self) -> Vec<Peer> {
        let chitchat = self.handle.chitchat();
        let chitchat = chitchat.lock().await;
        let live: std::collections::HashSet<&ChitchatId> = chitchat.live_nodes().collect();
        let mut newest: BTreeMap<(String, Option<u64>), Peer> = BTreeMap::new();
        let states: Vec<(&ChitchatId, &NodeState)> = chitchat.node_states().iter().collect();
        for (id, state) in states {
            let alive = live.contains(id) || *id == self.self_id;
            let peer = peer_from_state(id, state, alive);
            let key = (peer.node_id.clone(), peer.raft_id);
            match newest.get(&key) {
                Some(existing) if (existing.generation, existing.alive) >= (peer.generation, peer.alive) => {}
                _ => {
                    newest.insert(key, peer);
                }
            }
        }
        newest.into_values().collect()
    }

    /// Where to reach the Raft leader, as gossip reports it: the leader's gRPC address, or else
    /// any other live node's (which answers with the leader's address); `None` while no other
    /// node is known alive. A hint for finding the leader, nothing more: gossip lags Raft.
    pub async fn leader_hint(&self, self_raft_id: u64) -> Option<String> {
        leader_hint(&self.peers().await, self_raft_id)
    }

    /// Stops gossiping.
    pub async fn shutdown(self) {
        if let Err(e) = self.handle.shutdown().await {
            tracing::warn!(error = %e, "gossip did not shut down cleanly");
        }
    }
}

fn peer_from_state(id: &ChitchatId, state: &NodeState, alive: bool) -> Peer {
    let text = |key: &str| state.get(key).filter(|v| !v.is_empty()).map(str::to_string);
    let number = |key: &str| state.get(key).and_then(|v| v.parse::<u64>().ok());
    Peer {
        node_id: id.node_id.to_string(),
        generation: id.generation_id,
        gossip_addr: id.gossip_advertise_addr,
        alive,
        grpc_addr: text(keys::GRPC),
        http_addr: text(keys::HTTP),
        state: text(keys::STATE),
        raft_id: number(keys::RAFT_ID),
        cluster_id: text(keys::CLUSTER_ID),
        raft_leader: number(keys::LEADER),
        committed: number(keys::COMMITTED),
    }
}

/// The gRPC address of the Raft leader that the other live nodes gossip, or of any other live
/// node.
fn leader_hint(peers: &[Peer], self_raft_id: u64) -> Option<String> {
    let others: Vec<_> = peers
        .iter()
        .filter(|p| p.alive && p.raft_id != Some(self_raft_id))
        .collect();
    let leader = others.iter().find_map(|p| p.raft_leader).and_then(|leader| {
        others
            .iter()
            .find(|p| p.raft_id == Some(leader))
            .and_then(|p| p.grpc_addr.clone())
    });
    leader.or_else(|| others.iter().find_map(|p| p.grpc_addr.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(raft_id: u64, alive: bool, raft_leader: Option<u64>) -> Peer {
        Peer {
            node_id: format!("n{raft_id}"),
            generation: 1,
            gossip_addr: SocketAddr::from(([127, 0, 0, 1], 7000 + raft_id as u16)),
            alive,
            grpc_addr: Some(format!("127.0.0.1:{}", 9000 + raft_id)),
            http_addr: None,
            state: None,
            raft_id: Some(raft_id),
            cluster_id: None,
            raft_leader,
            committed: None,
        }
    }

    #[test]
    fn leader_hint_is_the_gossiped_leader() {
        let peers = [
            peer(1, true, Some(3)),
            peer(2, true, Some(3)),
            peer(3, true, Some(3)),
        ];
        assert_eq!(leader_hint(&peers, 1).as_deref(), Some("127.0.0.1:9003"));
    }

    #[test]
    fn leader_hint_falls_back_to_any_other_live_node() {
        // The gossiped leader is this node itself, or dead, or nobody knows one.
        let me_leader = [peer(1, true, Some(1)), peer(2, true, Some(1))];
        assert_eq!(leader_hint(&me_leader, 1).as_deref(), Some("127.0.0.1:9002"));
        let dead_leader = [
            peer(1, true, None),
            peer(2, false, Some(2)),
            peer(3, true, Some(2)),
        ];
        assert_eq!(leader_hint(&dead_leader, 1).as_deref(), Some("127.0.0.1:9003"));
        let no_leader = [peer(1, true, None), peer(2, true, None)];
        assert_eq!(leader_hint(&no_leader, 1).as_deref(), Some("127.0.0.1:9002"));
    }

    #[test]
    fn no_leader_hint_when_alone() {
        assert_eq!(leader_hint(&[peer(1, true, Some(1))], 1), None);
        assert_eq!(
            leader_hint(&[peer(1, true, None), peer(2, false, Some(2))], 1),
            None
        );
    }
}
