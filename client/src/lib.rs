//! Rust client of a RouteMQ cluster's `routemq.v1.Cluster` gRPC API, used by `routemq-ctl`
//! and the integration tests.
//!
//! [`Client::connect`] takes the `host:port` gRPC addresses of any nodes (seeds). Each call
//! goes to one node and, when that node cannot serve it, moves on by itself:
//! - transport failures, timeouts and `UNAVAILABLE` are retried at the next known node, with
//!   a doubling backoff after every round over all known nodes;
//! - a NotLeader answer (`FAILED_PRECONDITION` with `x-routemq-leader-addr` metadata) is
//!   retried at once at the leader; without a leader address (election in progress) after a
//!   backoff;
//! - other errors (`INVALID_ARGUMENT`, `NOT_FOUND`, `ALREADY_EXISTS`, ...) are returned at once;
//! - a call gives up after [`ClientOptions::total_timeout`] (10 s by default) or
//!   [`ClientOptions::max_attempts`].
//!
//! Calls return the generated protobuf messages ([`ClusterStatus`], [`PartitionTable`],
//! [`LocateResponse`], [`RemoveNodeResponse`]), re-exported here with the whole generated
//! package as [`proto`].
//!
//! ```no_run
//! use routemq_client::{Client, ReadConsistency};
//!
//! # async fn example() -> Result<(), routemq_client::ClientError> {
//! let client = Client::connect(["127.0.0.1:7001", "127.0.0.1:7002"]).await?;
//! let status = client.status(ReadConsistency::Linearizable).await?;
//! println!("epoch {} led by {}", status.epoch, status.raft_leader);
//! let located = client.locate("device-42", ReadConsistency::Local).await?;
//! println!("partition {} owned by {}", located.partition, located.owner);
//! # Ok(())
//! # }
//! ```
//!
//! Modules: [`addr`] normalises addresses, [`retry`] decides retries without I/O, `client`
//! performs calls, `options` holds [`ClientOptions`], `error` defines [`ClientError`], and
//! [`table`] reads partition tables.

#![warn(missing_docs)]

pub mod addr;
mod client;
mod error;
mod options;
pub mod retry;
pub mod table;

#[cfg(test)]
mod tests;

pub use addr::normalize_addr;
pub use client::Client;
pub use error::{code_name, describe_status, ClientError};
pub use options::ClientOptions;
pub use retry::{classify, RetryDecision};
pub use table::{owner_counts, owner_ids, TableError};

/// The generated protobuf package `routemq.v1` (messages, enums, service clients and servers).
pub use routemq_proto::v1 as proto;
pub use routemq_proto::v1::{
    ClusterStatus, Liveness, LocateResponse, Member, PartitionTable, RaftRole, ReadConsistency,
    RemoveNodeResponse,
};
pub use routemq_proto::{LEADER_ADDR_METADATA, LEADER_ID_METADATA};
