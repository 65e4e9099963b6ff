//! Peers: every call one node makes to another (except openraft's own transport, see
//! [`crate::config::network`]) goes through [`PeerNetwork`].
//!
//! Two implementations share one test suite (`tests` below): [`grpc::GrpcNetwork`] (tonic, one
//! cached channel per address) and [`memory::MemoryNetwork`] (in-process, a registry of the
//! nodes' handlers whose links can be cut and healed). What a node answers is behind three
//! server-side traits, one per service family: [`crate::forward::ForwardTarget`] (the
//! forwarded-message stream and journal reads), [`HandoffTarget`] and [`ClusterTarget`].
//! The gRPC services and the in-memory twin both call them, so the code that decides is the
//! same whichever transport carries the bytes.
//!
//! The types here are the domain's, not protobuf's: the conversions live in [`convert`], one
//! file per message family. Errors are typed ([`PeerError`]); they become `tonic::Status` only
//! in [`crate::api`].
//!
//! [`leader::LeaderClient`] is the one client that finds and follows the Raft leader.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::stream::BoxStream;

use crate::config::state::Member;
use crate::coordinator::{JoinOutcome, LeaseGrant};
use crate::journal::{JournalRecord, PartitionData};
use crate::ownership::Answer;

pub mod convert;
pub mod grpc;
pub mod leader;
pub mod memory;

#[cfg(test)]
mod tests;

/// Why a call to a peer did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// The peer could not be reached, or the connection broke before it answered.
    #[error("peer {addr} unreachable: {reason}")]
    Unreachable {
        /// The peer's address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The call went to a node that is not the Raft leader; `leader` is where it is, if known.
    #[error("not the leader (leader at {})", leader.as_deref().unwrap_or("unknown"))]
    NotLeader {
        /// The leader's gRPC address, if the node knows it.
        leader: Option<String>,
    },
    /// The node does not own the partition at `epoch`; `owner` does.
    #[error("not the owner at epoch {epoch} (owner {owner:?})")]
    NotOwner {
        /// The owner at `epoch` (empty if none).
        owner: String,
        /// The answering node's epoch.
        epoch: u64,
    },
    /// The peer cannot serve this now (no lease, handing over, shutting down): ask again.
    #[error("{0}")]
    Unavailable(String),
    /// The call took too long.
    #[error("timed out")]
    Timeout,
    /// The peer refused the request for good.
    #[error("{message}")]
    Refused {
        /// What kind of refusal.
        kind: Refusal,
        /// The peer's reason.
        message: String,
    },
    /// The answer did not make sense (a bug or a version mismatch).
    #[error("malformed answer: {0}")]
    Protocol(String),
}

/// Kinds of [`PeerError::Refused`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The thing asked about does not exist (a node id, a route).
    NotFound,
    /// The request is malformed.
    Invalid,
    /// It conflicts with what exists (a node id held by another incarnation).
    Conflict,
    /// Not allowed (another cluster's data directory).
    Denied,
    /// The config state machine rejected the change (e.g. the last member cannot leave).
    Rejected,
    /// The peer failed while doing it.
    Internal,
}

impl PeerError {
    /// Whether asking again (possibly elsewhere) may succeed.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, PeerError::Refused { .. } | PeerError::Protocol(_))
    }

    /// A refusal of `kind`.
    pub fn refused(kind: Refusal, message: impl Into<String>) -> Self {
        PeerError::Refused {
            kind,
            message: message.into(),
        }
    }

    /// Unreachable `addr`.
    pub fn unreachable(addr: &str, reason: impl std::fmt::Display) -> Self {
        PeerError::Unreachable {
            addr: addr.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// A message forwarded to its partition's owner.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Forwarded {
    /// Sequence number in the stream (set by the forwarding link).
    pub seq: u64,
    /// Route that matched at the sender.
    pub route: String,
    /// The ordering key.
    pub key: String,
    /// The key's partition at the sender's epoch.
    pub partition: u32,
    /// MQTT topic.
    pub topic: String,
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// Message id.
    pub message_id: String,
    /// When the sender received it.
    pub received_at_unix_ms: i64,
    /// Taken in by an ordered route's MQTT ingress (see [`crate::message::InboundMessage`]).
    pub ordered_ingress: bool,
}

/// Forwarded messages sent together, under the sender's epoch.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ForwardBatch {
    /// The highest sender epoch of the messages.
    pub epoch: u64,
    /// The sender's node id.
    pub sender: String,
    /// The messages, in order.
    pub messages: Vec<Forwarded>,
}

/// The owner's answer to one forwarded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardReply {
    /// The message's sequence number.
    pub seq: u64,
    /// The answering node's epoch.
    pub epoch: u64,
    /// What happened.
    pub outcome: ForwardOutcome,
}

/// What the receiver did with a forwarded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardOutcome {
    /// Processed by `by`.
    Processed {
        /// The node that processed it.
        by: String,
    },
    /// The receiver does not own the partition at its epoch: re-send to `owner` once caught up.
    NotOwner {
        /// The owner at the receiver's epoch (empty if none).
        owner: String,
        /// Why, for logs.
        reason: String,
    },
    /// The handler failed (dead-lettered at the receiver).
    Failed(String),
    /// Not processed now; the sender re-sends.
    Unavailable(String),
}

/// The acks of forwarded batches, one `Vec` per batch, in the order the batches were sent.
pub type ReplyStream = BoxStream<'static, Result<Vec<ForwardReply>, PeerError>>;

/// A journal read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JournalQuery {
    /// Route name (or `$dead-letter/<route>`).
    pub route: String,
    /// Key.
    pub key: String,
    /// First offset to return.
    pub from_offset: u64,
    /// Most entries to return (0: the server's maximum).
    pub limit: u32,
}

/// One page of a journal.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JournalPage {
    /// The entries, in offset order.
    pub entries: Vec<JournalRecord>,
    /// Where the next read starts.
    pub next_offset: u64,
    /// True when `next_offset` is the end of the journal at the time of the read.
    pub end: bool,
}

/// A handoff fetch: `requester` (at `epoch`) asks for these partitions.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FetchRequest {
    /// The asking node.
    pub requester: String,
    /// Its epoch.
    pub epoch: u64,
    /// The partitions.
    pub partitions: Vec<u32>,
}

/// One partition's answer to a fetch: not a holder, not yet, or the data with its version.
pub type PartitionAnswer = (u32, Answer, Option<PartitionData>);

/// Every partition's answer to a fetch.
pub type FetchReply = BTreeMap<u32, (Answer, Option<PartitionData>)>;

/// A failed-over node gives a partition's history back to its owner.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReturnRequest {
    /// The returning node.
    pub from: String,
    /// The partition.
    pub partition: u32,
    /// The version of the returned copy.
    pub version: u64,
    /// The data.
    pub data: PartitionData,
}

/// Which of the asked partitions a node is the active owner of, at which epoch.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ActiveOf {
    /// The active ones.
    pub active: Vec<u32>,
    /// The node's epoch.
    pub epoch: u64,
}

/// A node asks to join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinRequest {
    /// The joiner.
    pub member: Member,
    /// Its cluster id (empty for a fresh data directory).
    pub cluster_id: String,
}

/// Calls to other nodes, by gRPC address.
#[async_trait::async_trait]
pub trait PeerNetwork: Send + Sync + 'static {
    /// Opens a forwarding stream to `addr`: `batches` go out in order; the answer yields one
    /// ack per batch, in the same order, until the stream breaks.
    async fn forward(
        &self,
        addr: &str,
        batches: BoxStream<'static, ForwardBatch>,
    ) -> Result<ReplyStream, PeerError>;
    /// Reads a journal at `addr` (the owner of the key's partition).
    async fn read_journal(&self, addr: &str, query: JournalQuery) -> Result<JournalPage, PeerError>;
    /// Asks `addr` for partitions' data (handoff).
    async fn fetch(&self, addr: &str, request: FetchRequest) -> Result<FetchReply, PeerError>;
    /// Gives a partition's history back to its owner at `addr`; the owner says how many
    /// entries it took.
    async fn give_back(&self, addr: &str, request: ReturnRequest) -> Result<u64, PeerError>;
    /// Asks `addr` which of `partitions` it is the active owner of.
    async fn active_of(&self, addr: &str, partitions: Vec<u32>) -> Result<ActiveOf, PeerError>;
    /// Renews the lease of `node_id`/`raft_id` with the leader at `addr`.
    async fn renew_lease(&self, addr: &str, node_id: &str, raft_id: u64) -> Result<LeaseGrant, PeerError>;
    /// Asks the leader at `addr` to admit a node.
    async fn join(&self, addr: &str, request: JoinRequest) -> Result<JoinOutcome, PeerError>;
    /// Asks the leader at `addr` to remove `node_id` (`graceful`: start its leave); the epoch
    /// after.
    async fn remove_node(&self, addr: &str, node_id: &str, graceful: bool) -> Result<u64, PeerError>;
    /// Asks the node at `addr` to leave if it is `node_id`; its epoch.
    async fn leave(&self, addr: &str, node_id: &str) -> Result<u64, PeerError>;
}

/// A node's answers to handoff calls.
#[async_trait::async_trait]
pub trait HandoffTarget: Send + Sync + 'static {
    /// The answers to a fetch, one partition after the other, lazily.
    fn fetch(&self, request: FetchRequest) -> Result<BoxStream<'static, PartitionAnswer>, PeerError>;
    /// Takes back a failed-over node's history; how many entries it held.
    async fn give_back(&self, request: ReturnRequest) -> Result<u64, PeerError>;
    /// Which of `partitions` this node is the active owner of.
    fn active_of(&self, partitions: &[u32]) -> Result<ActiveOf, PeerError>;
}

/// A node's answers to cluster administration calls.
#[async_trait::async_trait]
pub trait ClusterTarget: Send + Sync + 'static {
    /// Renews a lease (leader only).
    async fn renew_lease(&self, node_id: &str, raft_id: u64) -> Result<LeaseGrant, PeerError>;
    /// Admits a node (leader only).
    async fn join(&self, request: JoinRequest) -> Result<JoinOutcome, PeerError>;
    /// Removes a node or starts its leave (leader only).
    async fn remove_node(&self, node_id: &str, graceful: bool) -> Result<u64, PeerError>;
    /// Leaves if `node_id` is this node, or passes it on.
    async fn leave(&self, node_id: &str) -> Result<u64, PeerError>;
}

/// Everything a node serves to its peers.
#[derive(Clone, Default)]
pub struct Handlers {
    /// Forwarded messages and journal reads.
    pub forward: Option<Arc<dyn crate::forward::ForwardTarget>>,
    /// Handoff.
    pub handoff: Option<Arc<dyn HandoffTarget>>,
    /// Cluster administration.
    pub cluster: Option<Arc<dyn ClusterTarget>>,
}
