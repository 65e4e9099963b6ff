//! `routemq.v1.Cluster` messages peers send each other: join, remove, leave, lease renewal.

use routemq_proto::v1 as pb;

use crate::config::state::Member;
use crate::coordinator::{JoinOutcome, LeaseGrant};
use crate::peer::JoinRequest;

impl From<JoinRequest> for pb::JoinRequest {
    fn from(r: JoinRequest) -> Self {
        pb::JoinRequest {
            node_id: r.member.node_id,
            raft_id: r.member.raft_id,
            cluster_id: r.cluster_id,
            grpc_addr: r.member.grpc_addr,
            gossip_addr: r.member.gossip_addr,
            http_addr: r.member.http_addr,
            weight: r.member.weight,
        }
    }
}

impl From<pb::JoinRequest> for JoinRequest {
    fn from(r: pb::JoinRequest) -> Self {
        JoinRequest {
            member: Member {
                node_id: r.node_id,
                raft_id: r.raft_id,
                grpc_addr: r.grpc_addr,
                gossip_addr: r.gossip_addr,
                http_addr: r.http_addr,
                weight: r.weight,
                state: Default::default(),
            },
            cluster_id: r.cluster_id,
        }
    }
}

impl From<JoinOutcome> for pb::JoinResponse {
    fn from(o: JoinOutcome) -> Self {
        pb::JoinResponse {
            cluster_id: o.cluster_id,
            epoch: o.epoch,
            voter: o.voter,
        }
    }
}

impl From<pb::JoinResponse> for JoinOutcome {
    fn from(r: pb::JoinResponse) -> Self {
        JoinOutcome {
            cluster_id: r.cluster_id,
            epoch: r.epoch,
            voter: r.voter,
        }
    }
}

impl From<LeaseGrant> for pb::RenewLeaseResponse {
    fn from(g: LeaseGrant) -> Self {
        pb::RenewLeaseResponse {
            epoch: g.epoch,
            member: g.member,
        }
    }
}

impl From<pb::RenewLeaseResponse> for LeaseGrant {
    fn from(r: pb::RenewLeaseResponse) -> Self {
        LeaseGrant {
            epoch: r.epoch,
            member: r.member,
        }
    }
}
