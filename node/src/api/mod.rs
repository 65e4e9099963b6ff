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
use crate::membership::{Membership, Peer};
use crate::message::PublishError;

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
        }
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
        if node_id.is_empty() {
            return Err(ApiError::InvalidArgument("node_id is required".into()).into());
        }
        let view = self.config.local_view();
        if node_id == self.node_id {
            tracing::info!("asked to leave the cluster");
            self.leave.send_replace(true);
            return Ok(Response::new(pb::LeaveResponse {
                epoch: view.state.config.epoch,
            }));
        }
        // Not us: pass it on to the node that is to leave.
        let addr = view
            .state
            .config
            .members
            .get(&node_id)
            .map(|m| m.grpc_addr.clone())
            .ok_or_else(|| Status::not_found(format!("node {node_id:?} is not a member of the cluster")))?;
        let channel =
            crate::config::network::lazy_channel(&addr).map_err(|e| Status::unavailable(e.to_string()))?;
        let mut client = pb::cluster_client::ClusterClient::new(channel);
        let mut forwarded = Request::new(pb::LeaveRequest { node_id });
        forwarded.set_timeout(std::time::Duration::from_secs(5));
        client.leave(forwarded).await
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
