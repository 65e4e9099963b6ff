//! The public gRPC API (`routemq.v1.Cluster`): cluster state, partition table, key location
//! and membership administration.
//!
//! Reads are linearizable by default: the leader confirms its leadership with a quorum and
//! answers from a state that includes every write committed before the request; a follower
//! answers NotLeader with the leader's address so the client can follow. A read can ask for
//! `LOCAL` consistency instead: fast, from whichever node answers, possibly stale.
//!
//! Errors become `tonic::Status` here and only here ([`ApiError`]).

use std::sync::Arc;

use routemq_proto::v1 as pb;
use routemq_proto::v1::cluster_server::Cluster;
use tonic::{Request, Response, Status};

use crate::config::state::{ConfigError, Member, MemberState};
use crate::config::{ConfigService, ConfigServiceError, ConfigView};
use crate::coordinator::{is_alive, AdminError, Coordinator};
use crate::coordinator::{JoinOutcome, LeaseGrant};
use crate::membership::{Membership, Peer};
use crate::message::PublishError;
use crate::peer::{ClusterTarget, JoinRequest, PeerError, PeerNetwork, Refusal};

pub mod messages;
pub mod routes;
pub mod stats;

/// Longest key accepted by `Locate`, in bytes.
pub const MAX_KEY_LEN: usize = 1024;

/// An API failure, mapped to a gRPC status in one place.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A config operation failed.
    #[error(transparent)]
    Config(#[from] ConfigServiceError),
    /// Membership administration failed.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// The request is malformed.
    #[error("{0}")]
    InvalidArgument(String),
}

impl From<ApiError> for Status {
    fn from(err: ApiError) -> Status {
        let message = err.to_string();
        match err {
            ApiError::Config(e) | ApiError::Admin(AdminError::Config(e)) => match e {
                ConfigServiceError::NotLeader {
                    leader_id,
                    leader_addr,
                } => {
                    let mut status = Status::failed_precondition(message);
                    // Always present (empty when the leader is unknown) so clients can tell
                    // NotLeader from a final FAILED_PRECONDITION without parsing the message.
                    let addr = leader_addr
                        .and_then(|a| a.parse().ok())
                        .unwrap_or_else(|| tonic::metadata::MetadataValue::from_static(""));
                    status
                        .metadata_mut()
                        .insert(routemq_proto::LEADER_ADDR_METADATA, addr);
                    if let Some(id) = leader_id.and_then(|a| a.parse().ok()) {
                        status
                            .metadata_mut()
                            .insert(routemq_proto::LEADER_ID_METADATA, id);
                    }
                    status
                }
                ConfigServiceError::Rejected(ConfigError::UnknownNode(_) | ConfigError::UnknownRoute(_)) => {
                    Status::not_found(message)
                }
                ConfigServiceError::Rejected(ConfigError::InvalidRoute(_) | ConfigError::Invalid { .. }) => {
                    Status::invalid_argument(message)
                }
                ConfigServiceError::Rejected(ConfigError::VersionMismatch { .. }) => {
                    Status::failed_precondition(message)
                }
                ConfigServiceError::Rejected(_) => Status::failed_precondition(message),
                ConfigServiceError::Unavailable(_) => Status::unavailable(message),
            },
            ApiError::Admin(AdminError::NodeIdInUse { .. }) => Status::already_exists(message),
            ApiError::Admin(AdminError::ClusterMismatch { .. }) => Status::permission_denied(message),
            ApiError::Admin(AdminError::Invalid(_)) | ApiError::InvalidArgument(_) => {
                Status::invalid_argument(message)
            }
        }
    }
}

impl From<ApiError> for PeerError {
    /// The same error as a peer sees it (what [`crate::peer::convert::status`] reads back from
    /// the `Status` above).
    fn from(err: ApiError) -> PeerError {
        let message = err.to_string();
        match err {
            ApiError::Config(e) | ApiError::Admin(AdminError::Config(e)) => match e {
                ConfigServiceError::NotLeader { leader_addr, .. } => PeerError::NotLeader {
                    leader: leader_addr.filter(|a| !a.is_empty()),
                },
                ConfigServiceError::Rejected(ConfigError::UnknownNode(_) | ConfigError::UnknownRoute(_)) => {
                    PeerError::refused(Refusal::NotFound, message)
                }
                ConfigServiceError::Rejected(ConfigError::InvalidRoute(_) | ConfigError::Invalid { .. }) => {
                    PeerError::refused(Refusal::Invalid, message)
                }
                ConfigServiceError::Rejected(_) => PeerError::refused(Refusal::Rejected, message),
                ConfigServiceError::Unavailable(_) => PeerError::Unavailable(message),
            },
            ApiError::Admin(AdminError::NodeIdInUse { .. }) => PeerError::refused(Refusal::Conflict, message),
            ApiError::Admin(AdminError::ClusterMismatch { .. }) => {
                PeerError::refused(Refusal::Denied, message)
            }
            ApiError::Admin(AdminError::Invalid(_)) | ApiError::InvalidArgument(_) => {
                PeerError::refused(Refusal::Invalid, message)
            }
        }
    }
}

/// The gRPC status of a peer error: what a node answers its peers (handoff, forwarded journal
/// reads) and what it passes on from a peer (a forwarded leave, a journal read at the owner).
/// [`crate::peer::convert::status::from_status`] reads it back.
pub fn peer_status(error: &PeerError) -> Status {
    let message = error.to_string();
    match error {
        PeerError::NotLeader { leader } => {
            let mut status = Status::failed_precondition(message);
            let addr = leader
                .as_deref()
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| tonic::metadata::MetadataValue::from_static(""));
            status
                .metadata_mut()
                .insert(routemq_proto::LEADER_ADDR_METADATA, addr);
            status
        }
        PeerError::Unreachable { .. } | PeerError::Unavailable(_) | PeerError::NotOwner { .. } => {
            Status::unavailable(message)
        }
        PeerError::Timeout => Status::deadline_exceeded(message),
        PeerError::Refused { kind, .. } => match kind {
            Refusal::NotFound => Status::not_found(message),
            Refusal::Invalid => Status::invalid_argument(message),
            Refusal::Conflict => Status::already_exists(message),
            Refusal::Denied => Status::permission_denied(message),
            Refusal::Rejected => Status::failed_precondition(message),
            Refusal::Internal => Status::internal(message),
        },
        PeerError::Protocol(_) => Status::internal(message),
    }
}

/// The gRPC status of a failed journal read.
pub fn journal_read_status(error: &crate::dispatch::ReadError) -> Status {
    use crate::dispatch::ReadError;
    let message = error.to_string();
    match error {
        ReadError::Invalid(_) => Status::invalid_argument(message),
        ReadError::NoRoute(_) => Status::not_found(message),
        ReadError::Unavailable(_) => Status::unavailable(message),
        ReadError::Internal(_) => Status::internal(message),
        ReadError::Peer(e) => peer_status(e),
    }
}

/// The gRPC status of a publish failure (used by unary and streaming publish alike).
pub fn publish_error_status(error: &PublishError) -> Status {
    let message = error.to_string();
    metrics::counter!(crate::metrics::PUBLISH_ERRORS, "code" => publish_error_code(error)).increment(1);
    match error {
        PublishError::NoRoute(_) => Status::not_found(message),
        PublishError::InvalidTopic(_) | PublishError::PayloadTooLarge { .. } => {
            Status::invalid_argument(message)
        }
        PublishError::Unavailable(_) => Status::unavailable(message),
        PublishError::HandlerFailed(_) => Status::internal(message),
    }
}

fn publish_error_code(error: &PublishError) -> &'static str {
    match error {
        PublishError::NoRoute(_) => "no_route",
        PublishError::InvalidTopic(_) => "invalid_topic",
        PublishError::PayloadTooLarge { .. } => "payload_too_large",
        PublishError::Unavailable(_) => "unavailable",
        PublishError::HandlerFailed(_) => "handler_failed",
    }
}

/// Implementation of `routemq.v1.Cluster`.
pub struct ClusterApi {
    node_id: String,
    config: Arc<ConfigService>,
    membership: Arc<Membership>,
    coordinator: Arc<Coordinator>,
    leave: tokio::sync::watch::Sender<bool>,
    network: Arc<dyn PeerNetwork>,
}

impl ClusterApi {
    /// The API of node `node_id`.
    pub fn new(
        node_id: String,
        config: Arc<ConfigService>,
        membership: Arc<Membership>,
        coordinator: Arc<Coordinator>,
        leave: tokio::sync::watch::Sender<bool>,
    ) -> Self {
        Self {
            node_id,
            config,
            membership,
            coordinator,
            leave,
            network: crate::peer::grpc::shared(),
        }
    }

    /// The same API, passing leaves on over `network` instead of gRPC.
    pub fn with_network(mut self, network: Arc<dyn PeerNetwork>) -> Self {
        self.network = network;
        self
    }

    /// Leaves if `node_id` is this node; otherwise passes the request on to that node.
    async fn leave_or_pass_on(&self, node_id: &str) -> Result<u64, PeerError> {
        if node_id.is_empty() {
            return Err(PeerError::from(ApiError::InvalidArgument(
                "node_id is required".into(),
            )));
        }
        let view = self.config.local_view();
        if node_id == self.node_id {
            tracing::info!("asked to leave the cluster");
            self.leave.send_replace(true);
            return Ok(view.state.config.epoch);
        }
        let addr = view
            .state
            .config
            .members
            .get(node_id)
            .map(|m| m.grpc_addr.clone())
            .ok_or_else(|| {
                PeerError::refused(
                    Refusal::NotFound,
                    format!("node {node_id:?} is not a member of the cluster"),
                )
            })?;
        self.network.leave(&addr, node_id).await
    }

    async fn view(&self, consistency: i32) -> Result<(ConfigView, pb::ReadConsistency), ApiError> {
        let consistency = pb::ReadConsistency::try_from(consistency)
            .map_err(|_| ApiError::InvalidArgument(format!("unknown read consistency {consistency}")))?;
        let view = match consistency {
            pb::ReadConsistency::Linearizable => self.config.linearizable_view().await?,
            pb::ReadConsistency::Local => self.config.local_view(),
        };
        Ok((view, consistency))
    }
}

fn member_pb(member: &Member, peer: Option<&Peer>, alive: bool) -> pb::Member {
    pb::Member {
        node_id: member.node_id.clone(),
        raft_id: member.raft_id,
        grpc_addr: member.grpc_addr.clone(),
        gossip_addr: member.gossip_addr.clone(),
        http_addr: member.http_addr.clone(),
        weight: member.weight,
        state: peer.and_then(|p| p.state.clone()).unwrap_or_default(),
        liveness: match peer {
            None => pb::Liveness::Unknown,
            Some(_) if alive => pb::Liveness::Alive,
            Some(_) => pb::Liveness::Dead,
        } as i32,
        raft_role: pb::RaftRole::None as i32,
        partitions: 0,
        generation: peer.map(|p| p.generation).unwrap_or(0),
        ring_state: match member.state {
            MemberState::Active => "active",
            MemberState::Leaving => "leaving",
        }
        .into(),
    }
}

/// Builds the status message from a config view, Raft metrics and gossip.
pub fn build_status(
    answered_by: &str,
    consistency: pb::ReadConsistency,
    view: &ConfigView,
    config: &ConfigService,
    peers: &[Peer],
) -> pb::ClusterStatus {
    let metrics = config.metrics();
    let cfg = &view.state.config;
    let membership = metrics.membership_config.membership();
    let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
    let learners: std::collections::BTreeSet<u64> = membership.learner_ids().collect();
    let counts = view.ring.partitions_per_node();
    let members = cfg
        .members
        .values()
        .map(|m| {
            let peer = peers
                .iter()
                .find(|p| p.node_id == m.node_id && p.raft_id == Some(m.raft_id));
            let mut out = member_pb(m, peer, is_alive(peers, m));
            out.raft_role = if voters.contains(&m.raft_id) {
                pb::RaftRole::Voter
            } else if learners.contains(&m.raft_id) {
                pb::RaftRole::Learner
            } else {
                pb::RaftRole::None
            } as i32;
            out.partitions = counts.get(m.node_id.as_str()).copied().unwrap_or(0);
            out
        })
        .collect();
    let non_members = peers
        .iter()
        .filter(|p| p.alive)
        .filter(|p| {
            cfg.members
                .get(&p.node_id)
                .map(|m| Some(m.raft_id) != p.raft_id)
                .unwrap_or(true)
        })
        .map(|p| pb::Member {
            node_id: p.node_id.clone(),
            raft_id: p.raft_id.unwrap_or(0),
            grpc_addr: p.grpc_addr.clone().unwrap_or_default(),
            gossip_addr: p.gossip_addr.to_string(),
            http_addr: p.http_addr.clone().unwrap_or_default(),
            weight: 0,
            state: p.state.clone().unwrap_or_default(),
            liveness: pb::Liveness::Alive as i32,
            raft_role: if p.raft_id.is_some_and(|id| learners.contains(&id)) {
                pb::RaftRole::Learner
            } else {
                pb::RaftRole::None
            } as i32,
            partitions: 0,
            generation: p.generation,
            ring_state: String::new(),
        })
        .collect();
    let raft_leader = metrics
        .current_leader
        .and_then(|id| cfg.member_by_raft_id(id).map(|m| m.node_id.clone()))
        .unwrap_or_default();
    pb::ClusterStatus {
        cluster_id: cfg.cluster_id.clone(),
        epoch: cfg.epoch,
        raft_term: metrics.current_term,
        raft_leader,
        commit_index: config.committed_index(),
        applied_index: view.applied_index(),
        partition_count: cfg.ring.partitions,
        vnodes_per_weight: cfg.ring.vnodes_per_weight,
        max_voters: cfg.max_voters,
        members,
        answered_by: answered_by.to_string(),
        consistency: consistency as i32,
        non_members,
    }
}

#[tonic::async_trait]
impl Cluster for ClusterApi {
    async fn get_status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        let (view, consistency) = self.view(request.into_inner().consistency).await?;
        let peers = self.membership.peers().await;
        Ok(Response::new(build_status(
            &self.node_id,
            consistency,
            &view,
            &self.config,
            &peers,
        )))
    }

    async fn get_partitions(
        &self,
        request: Request<pb::PartitionsRequest>,
    ) -> Result<Response<pb::PartitionTable>, Status> {
        let (view, _) = self.view(request.into_inner().consistency).await?;
        let (nodes, owners) = view.ring.owners_table();
        Ok(Response::new(pb::PartitionTable {
            epoch: view.state.config.epoch,
            partition_count: view.state.config.ring.partitions,
            vnodes_per_weight: view.state.config.ring.vnodes_per_weight,
            nodes: nodes.to_vec(),
            owners: owners.iter().map(|&o| u32::from(o)).collect(),
            answered_by: self.node_id.clone(),
        }))
    }

    async fn locate(
        &self,
        request: Request<pb::LocateRequest>,
    ) -> Result<Response<pb::LocateResponse>, Status> {
        let request = request.into_inner();
        if request.key.is_empty() || request.key.len() > MAX_KEY_LEN {
            return Err(ApiError::InvalidArgument(format!(
                "key must be 1 to {MAX_KEY_LEN} bytes, got {}",
                request.key.len()
            ))
            .into());
        }
        let (view, _) = self.view(request.consistency).await?;
        let location = view.ring.locate(&request.key);
        let owner = location.owner.map(str::to_string).unwrap_or_default();
        let owner_grpc_addr = view
            .state
            .config
            .members
            .get(&owner)
            .map(|m| m.grpc_addr.clone())
            .unwrap_or_default();
        Ok(Response::new(pb::LocateResponse {
            key: request.key,
            partition: location.partition,
            owner,
            owner_grpc_addr,
            epoch: view.state.config.epoch,
        }))
    }

    async fn remove_node(
        &self,
        request: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        let request = request.into_inner();
        let node_id = request.node_id;
        if node_id.is_empty() {
            return Err(ApiError::InvalidArgument("node_id is required".into()).into());
        }
        let epoch = if request.graceful {
            self.coordinator.start_leave(&node_id).await
        } else {
            self.coordinator.remove(&node_id).await
        }
        .map_err(ApiError::from)?;
        Ok(Response::new(pb::RemoveNodeResponse { epoch }))
    }

    async fn leave(&self, request: Request<pb::LeaveRequest>) -> Result<Response<pb::LeaveResponse>, Status> {
        let node_id = request.into_inner().node_id;
        let epoch = self
            .leave_or_pass_on(&node_id)
            .await
            .map_err(|e| peer_status(&e))?;
        Ok(Response::new(pb::LeaveResponse { epoch }))
    }

    async fn renew_lease(
        &self,
        request: Request<pb::RenewLeaseRequest>,
    ) -> Result<Response<pb::RenewLeaseResponse>, Status> {
        let request = request.into_inner();
        let grant = self
            .coordinator
            .renew_lease(&request.node_id, request.raft_id)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::RenewLeaseResponse {
            epoch: grant.epoch,
            member: grant.member,
        }))
    }

    async fn join(&self, request: Request<pb::JoinRequest>) -> Result<Response<pb::JoinResponse>, Status> {
        let request = request.into_inner();
        let joiner = Member {
            node_id: request.node_id,
            raft_id: request.raft_id,
            grpc_addr: request.grpc_addr,
            gossip_addr: request.gossip_addr,
            http_addr: request.http_addr,
            weight: request.weight,
            state: Default::default(),
        };
        crate::config::state::validate_member(&joiner)
            .map_err(|e| ApiError::Admin(AdminError::Invalid(e.to_string())))?;
        let outcome = self
            .coordinator
            .join(joiner, &request.cluster_id)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::JoinResponse {
            cluster_id: outcome.cluster_id,
            epoch: outcome.epoch,
            voter: outcome.voter,
        }))
    }
}

/// The same administration, for peers on the in-memory network ([`crate::peer::memory`]).
#[async_trait::async_trait]
impl ClusterTarget for ClusterApi {
    async fn renew_lease(&self, node_id: &str, raft_id: u64) -> Result<LeaseGrant, PeerError> {
        Ok(self
            .coordinator
            .renew_lease(node_id, raft_id)
            .await
            .map_err(ApiError::from)?)
    }

    async fn join(&self, request: JoinRequest) -> Result<JoinOutcome, PeerError> {
        crate::config::state::validate_member(&request.member)
            .map_err(|e| ApiError::Admin(AdminError::Invalid(e.to_string())))?;
        Ok(self
            .coordinator
            .join(request.member, &request.cluster_id)
            .await
            .map_err(ApiError::from)?)
    }

    async fn remove_node(&self, node_id: &str, graceful: bool) -> Result<u64, PeerError> {
        if node_id.is_empty() {
            return Err(ApiError::InvalidArgument("node_id is required".into()).into());
        }
        let removed = if graceful {
            self.coordinator.start_leave(node_id).await
        } else {
            self.coordinator.remove(node_id).await
        };
        Ok(removed.map_err(ApiError::from)?)
    }

    async fn leave(&self, node_id: &str) -> Result<u64, PeerError> {
        self.leave_or_pass_on(node_id).await
    }
}
