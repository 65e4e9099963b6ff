//! The message path's shared vocabulary: what enters the cluster, what accepting it means,
//! and how it can fail.
//!
//! Ingress (MQTT, gRPC `Publish`) hands an [`InboundMessage`] to a [`Dispatch`]; the
//! dispatcher matches a route, finds the key's partition owner, forwards if needed, and
//! resolves once the owner accepted the message (journal: durably appended; other handlers:
//! handler done). Only then may the ingress acknowledge to its producer (gRPC OK, MQTT PUBACK).

use std::future::Future;

/// A message entering the cluster from a producer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundMessage {
    /// MQTT topic.
    pub topic: String,
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// Producer-chosen id for duplicate suppression; empty means "generate one".
    pub message_id: String,
    /// Taken in by an ordered route's MQTT ingress under this node's hold on the route: an
    /// owner elsewhere accepts it only if this node is at the owner's epoch (a holder that
    /// lost the route cannot slip a message in after the next holder's).
    pub ordered_ingress: bool,
    /// An ingress's in-place retry of a message it dispatched before (same delivery, same
    /// id): `routemq_messages_received_total` counted it on its first attempt.
    pub retry: bool,
}

/// What the cluster did with an accepted message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The message id (generated if the producer gave none).
    pub message_id: String,
    /// Route that matched.
    pub route: String,
    /// The ordering key.
    pub key: String,
    /// The key's partition.
    pub partition: u32,
    /// Node that processed (ordered) or accepted (shared) it.
    pub processed_by: String,
    /// Config epoch under which it was processed.
    pub epoch: u64,
}

/// Why a message was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// No route matches the topic.
    #[error("no route matches topic {0:?}")]
    NoRoute(String),
    /// The topic is not a valid MQTT topic name (empty, wildcards, NUL, too long).
    #[error("invalid topic: {0}")]
    InvalidTopic(String),
    /// The payload exceeds the configured limit.
    #[error("payload of {size} bytes exceeds the limit of {limit} bytes")]
    PayloadTooLarge {
        /// Payload size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The owner cannot be reached or cannot process now; retrying later is safe.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The handler failed (the failure went to the dead-letter journal).
    #[error("handler failed: {0}")]
    HandlerFailed(String),
}

impl PublishError {
    /// True when the producer should retry (the message may or may not have been processed;
    /// duplicates are suppressed by message id where a handler keeps state).
    pub fn is_retryable(&self) -> bool {
        matches!(self, PublishError::Unavailable(_))
    }
}

/// Takes messages into the cluster. Implemented by the node's dispatcher; ingress code depends
/// only on this trait, so it can be tested with a fake.
pub trait Dispatch: Send + Sync + 'static {
    /// Resolves once the owner accepted the message, or with why not. Concurrent calls carry no
    /// order between them: a caller that needs two messages processed in order dispatches the
    /// second only after the first resolved.
    fn dispatch(
        &self,
        message: InboundMessage,
    ) -> impl Future<Output = Result<Accepted, PublishError>> + Send;

    /// The ordering key of a message to `topic` under the current routes: messages with equal
    /// keys must be dispatched one after the other to keep their order; messages with different
    /// keys may be dispatched concurrently. Two topics whose messages share a route key must
    /// map to the same value (coarser is slower, never wrong).
    fn ordering_key(&self, topic: &str) -> String;

    /// Takes this node's hold on ordered route `route`'s MQTT ingress: `Some` if this node may
    /// take the route's messages in now, `None` if not yet (another node holds the route or
    /// is still handing it over: ask again later). The ingress dispatches only while the hold
    /// is valid, and drops it once it has acknowledged what it processed and disconnected from
    /// the broker. The default (for fakes and single-process use) always grants.
    fn take_ordered_hold(&self, route: &str) -> Option<Box<dyn OrderedHold>> {
        let _ = route;
        Some(Box::new(UnconditionalHold))
    }
}

/// A node's hold on an ordered route's MQTT ingress ([`Dispatch::take_ordered_hold`]).
/// Dropping it releases the hold.
pub trait OrderedHold: Send + Sync {
    /// Whether the ingress may still dispatch the route's messages.
    fn is_valid(&self) -> bool;
}

/// A hold that is always valid.
pub struct UnconditionalHold;

impl OrderedHold for UnconditionalHold {
    fn is_valid(&self) -> bool {
        true
    }
}
