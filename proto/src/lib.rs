//! RouteMQ's gRPC protocol, package `routemq.v1`, generated from `proto/routemq/v1/*.proto`.
//!
//! The node serves these services and the client calls them; both depend on this crate so
//! the wire contract lives in exactly one place.

#![allow(clippy::all, missing_docs)]

/// Generated types and services of package `routemq.v1`.
pub mod v1 {
    tonic::include_proto!("routemq.v1");
}

/// Encoded `FileDescriptorSet` of package `routemq.v1`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("routemq_v1_descriptor");

/// gRPC metadata key carrying the Raft leader's gRPC address on a NotLeader error.
pub const LEADER_ADDR_METADATA: &str = "x-routemq-leader-addr";
/// gRPC metadata key carrying the Raft leader's node id on a NotLeader error.
pub const LEADER_ID_METADATA: &str = "x-routemq-leader-id";
