//! The cluster config: replicated by Raft (openraft), stored in RocksDB, the authority on
//! ring membership and ownership epochs.
//!
//! - [`state`]: the config itself and its deterministic state machine (pure, no I/O);
//! - [`voters`]: which members should vote (pure);
//! - [`store`]: Raft log and state machine storage in RocksDB;
//! - [`network`]: openraft RPCs over gRPC.
//!
//! [`ConfigService`] is what the rest of the node uses: propose a command (leader only),
//! read the config linearizably (leader, after confirming leadership with a quorum) or locally
//! (fast, may lag), and watch applied changes. Gossip never changes the config; only committed
//! commands do.

pub mod network;
pub mod state;
pub mod store;
pub mod voters;

use std::collections::BTreeSet;
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, RaftMetrics, ServerState};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::ring::Ring;
use crate::routes::RouteTable;
use state::{Command, ConfigError};
use store::AppliedState;

/// Raft node ids are random u64s, one per incarnation of a node (kept in its data directory).
pub type RaftId = u64;

/// Result of applying one command, returned to the proposer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApplyResponse {
    /// What the command changed, or why it was rejected.
    pub result: Result<state::Applied, ConfigError>,
}

openraft::declare_raft_types!(
    /// openraft type configuration of the config Raft group.
    pub TypeConfig:
        D = Command,
        R = ApplyResponse,
);

/// The openraft instance of the config group.
pub type ConfigRaft = openraft::Raft<TypeConfig>;

/// Errors of config operations, as the API reports them.
#[derive(Debug, thiserror::Error)]
pub enum ConfigServiceError {
    /// This node is not the leader; `leader_addr` says where to go when known.
    #[error("not the Raft leader{}", leader_hint(.leader_id, .leader_addr))]
    NotLeader {
        /// Node id of the leader, if known.
        leader_id: Option<String>,
        /// gRPC address of the leader, if known.
        leader_addr: Option<String>,
    },
    /// The state machine rejected the command.
    #[error(transparent)]
    Rejected(#[from] ConfigError),
    /// The operation could not complete now (no quorum, timeout, shutting down).
    #[error("config unavailable: {0}")]
    Unavailable(String),
}

fn leader_hint(id: &Option<String>, addr: &Option<String>) -> String {
    match (id, addr) {
        (Some(id), Some(addr)) => format!("; the leader is {id} at {addr}"),
        (None, Some(addr)) => format!("; the leader is at {addr}"),
        _ => "; the leader is not known yet (election in progress?)".to_string(),
    }
}

/// Why the config Raft member could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConfigStartError {
    /// The Raft timing gives an invalid openraft configuration.
    #[error("invalid raft settings: {0}")]
    Settings(#[from] openraft::ConfigError),
    /// The state machine could not be read from the database.
    #[error("config storage: {0}")]
    Storage(#[source] Box<openraft::StorageError<RaftId>>),
    /// openraft could not start the member.
    #[error("{0}")]
    Raft(#[source] Box<openraft::error::Fatal<RaftId>>),
}

impl ConfigServiceError {
    /// True when retrying later (or elsewhere) may succeed.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, ConfigServiceError::Rejected(_))
    }
}

/// The applied config with its ring, as seen by one node at one log index.
#[derive(Clone)]
pub struct ConfigView {
    /// Applied state (config, log id, Raft membership).
    pub state: Arc<AppliedState>,
    /// The ring computed from `state.config`.
    pub ring: Arc<Ring>,
    /// The route table of `state.config`, in matching order.
    pub routes: Arc<RouteTable>,
}

impl ConfigView {
    /// Index of the last applied log entry (0 before anything was applied).
    pub fn applied_index(&self) -> u64 {
        self.state.last_applied.map(|l| l.index).unwrap_or(0)
    }
}

/// Raft timing; see the README's configuration reference.
#[derive(Debug, Clone, Copy)]
pub struct RaftTiming {
    /// Leader heartbeat interval.
    pub heartbeat: Duration,
    /// Minimum election timeout (the maximum is twice this).
    pub election_timeout: Duration,
}

/// Handle on the local member of the config Raft group.
pub struct ConfigService {
    raft: ConfigRaft,
    raft_id: RaftId,
    applied: watch::Receiver<Arc<AppliedState>>,
    committed_index: Arc<AtomicU64>,
    ring_cache: Mutex<Option<(u64, Arc<Ring>)>>,
    routes_cache: Mutex<Option<(u64, Arc<RouteTable>)>>,
    /// openraft changes membership one change at a time; joins and removals queue here.
    pub(crate) membership_lock: tokio::sync::Mutex<()>,
}

impl ConfigService {
    /// Starts the Raft member `raft_id` on the database `db`.
    pub async fn start(
        raft_id: RaftId,
        db: Arc<rocksdb::DB>,
        timing: RaftTiming,
    ) -> Result<Self, ConfigStartError> {
        let heartbeat_ms = timing.heartbeat.as_millis().max(10) as u64;
        let election_ms = timing.election_timeout.as_millis().max(2 * heartbeat_ms as u128) as u64;
        let raft_config = openraft::Config {
            cluster_name: "routemq-config".into(),
            heartbeat_interval: heartbeat_ms,
            election_timeout_min: election_ms,
            election_timeout_max: election_ms * 2,
            install_snapshot_timeout: 5_000,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(2_000),
            max_in_snapshot_log_to_keep: 500,
            ..Default::default()
        }
        .validate()?;
        let committed_index = Arc::new(AtomicU64::new(0));
        let log_store = store::LogStore::new(db.clone(), committed_index.clone());
        let (state_machine, applied) =
            store::StateMachineStore::open(db).map_err(|e| ConfigStartError::Storage(Box::new(e)))?;
        let raft = openraft::Raft::new(
            raft_id,
            Arc::new(raft_config),
            network::GrpcRaftNetwork,
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| ConfigStartError::Raft(Box::new(e)))?;
        Ok(Self {
            raft,
            raft_id,
            applied,
            committed_index,
            ring_cache: Mutex::new(None),
            routes_cache: Mutex::new(None),
            membership_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// The openraft handle (for the RPC server and membership changes).
    pub fn raft(&self) -> &ConfigRaft {
        &self.raft
    }

    /// This member's raft id.
    pub fn raft_id(&self) -> RaftId {
        self.raft_id
    }

    /// Latest Raft metrics.
    pub fn metrics(&self) -> RaftMetrics<RaftId, BasicNode> {
        self.raft.metrics().borrow().clone()
    }

    /// Highest log index this node knows to be committed.
    pub fn committed_index(&self) -> u64 {
        let applied = self.applied.borrow().last_applied.map(|l| l.index).unwrap_or(0);
        self.committed_index.load(Ordering::Relaxed).max(applied)
    }

    /// True if this node is the Raft leader.
    pub fn is_leader(&self) -> bool {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        metrics.state == ServerState::Leader && metrics.current_leader == Some(self.raft_id)
    }

    /// A receiver that sees every newly applied state.
    pub fn subscribe(&self) -> watch::Receiver<Arc<AppliedState>> {
        self.applied.clone()
    }

    /// The config as applied locally: fast, may lag the leader.
    pub fn local_view(&self) -> ConfigView {
        let state = self.applied.borrow().clone();
        self.view_of(state)
    }

    fn view_of(&self, state: Arc<AppliedState>) -> ConfigView {
        let epoch = state.config.epoch;
        let mut cache = self
            .ring_cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let ring = match cache.as_ref() {
            Some((cached_epoch, ring)) if *cached_epoch == epoch && epoch != 0 => ring.clone(),
            _ => {
                // An invalid config cannot be committed (apply validates), so an error here
                // means an empty, unbootstrapped config: its ring has no owners.
                let ring = Arc::new(state.config.ring().unwrap_or_else(|_| Ring::empty()));
                *cache = Some((epoch, ring.clone()));
                ring
            }
        };
        drop(cache);
        let revision = state.config.routes_revision;
        let mut cache = self
            .routes_cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let routes = match cache.as_ref() {
            Some((cached, routes)) if *cached == revision => routes.clone(),
            _ => {
                // Committed routes were validated as a table when applied.
                let routes = Arc::new(state.config.route_table().unwrap_or_else(|_| RouteTable::empty()));
                *cache = Some((revision, routes.clone()));
                routes
            }
        };
        ConfigView { state, ring, routes }
    }

    /// A linearizable read: confirms leadership with a quorum, waits until everything committed
    /// before the call is applied, then reads. Only the leader can serve it.
    pub async fn linearizable_view(&self) -> Result<ConfigView, ConfigServiceError> {
        match self.raft.ensure_linearizable().await {
            Ok(read_log_id) => {
                let wanted = read_log_id.map(|l| l.index).unwrap_or(0);
                let mut applied = self.applied.clone();
                let state = tokio::time::timeout(
                    Duration::from_secs(5),
                    applied.wait_for(|s| s.last_applied.map(|l| l.index).unwrap_or(0) >= wanted),
                )
                .await
                .map_err(|_| ConfigServiceError::Unavailable("timed out applying the log".into()))?
                .map_err(|_| ConfigServiceError::Unavailable("shutting down".into()))?
                .clone();
                Ok(self.view_of(state))
            }
            Err(RaftError::APIError(e)) => Err(self.not_leader_error(format!("{e}"))),
            Err(RaftError::Fatal(e)) => Err(ConfigServiceError::Unavailable(e.to_string())),
        }
    }

    /// Proposes a command; leader only. Returns what it changed once applied.
    pub async fn propose(&self, command: Command) -> Result<state::Applied, ConfigServiceError> {
        match self.raft.client_write(command).await {
            Ok(response) => Ok(response.data.result?),
            Err(e) => Err(self.write_error(e)),
        }
    }

    /// Maps an openraft write error to ours.
    pub(crate) fn write_error(
        &self,
        e: RaftError<RaftId, ClientWriteError<RaftId, BasicNode>>,
    ) -> ConfigServiceError {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => {
                self.not_leader_error("forward to leader".into())
            }
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                ConfigServiceError::Unavailable(format!("membership change refused: {e}"))
            }
            RaftError::Fatal(e) => ConfigServiceError::Unavailable(e.to_string()),
        }
    }

    /// A NotLeader error carrying the leader's id and address as far as this node knows them.
    pub fn not_leader_error(&self, _why: String) -> ConfigServiceError {
        let metrics = self.metrics();
        let view = self.local_view();
        let leader = metrics
            .current_leader
            .filter(|l| *l != self.raft_id || metrics.state != ServerState::Leader);
        let leader_addr = leader.and_then(|id| {
            metrics
                .membership_config
                .membership()
                .get_node(&id)
                .map(|n| n.addr.clone())
        });
        let leader_id =
            leader.and_then(|id| view.state.config.member_by_raft_id(id).map(|m| m.node_id.clone()));
        ConfigServiceError::NotLeader {
            leader_id,
            leader_addr,
        }
    }

    /// Raft ids of the current voters and learners.
    pub fn raft_members(&self) -> (BTreeSet<RaftId>, BTreeSet<RaftId>) {
        let metrics = self.metrics();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<RaftId> = membership.voter_ids().collect();
        let learners: BTreeSet<RaftId> = membership.learner_ids().collect();
        (voters, learners)
    }

    /// Adds a learner and waits until it has caught up.
    pub(crate) async fn add_learner(
        &self,
        raft_id: RaftId,
        grpc_addr: &str,
    ) -> Result<(), ConfigServiceError> {
        self.raft
            .add_learner(raft_id, BasicNode::new(grpc_addr), true)
            .await
            .map(|_| ())
            .map_err(|e| self.write_error(e))
    }

    /// Sets the voter set (joint consensus) and removes any Raft member not in
    /// `voters ∪ keep_learners`.
    pub(crate) async fn set_membership(
        &self,
        voters: BTreeSet<RaftId>,
        remove: BTreeSet<RaftId>,
    ) -> Result<(), ConfigServiceError> {
        let (current_voters, _) = self.raft_members();
        if voters != current_voters {
            self.raft
                .change_membership(ChangeMembers::ReplaceAllVoters(voters), true)
                .await
                .map_err(|e| self.write_error(e))?;
        }
        if !remove.is_empty() {
            self.raft
                .change_membership(ChangeMembers::RemoveNodes(remove), false)
                .await
                .map_err(|e| self.write_error(e))?;
        }
        Ok(())
    }

    /// Stops the Raft member.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft did not shut down cleanly");
        }
    }
}
