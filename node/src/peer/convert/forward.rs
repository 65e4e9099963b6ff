//! `routemq.v1.Forward/Stream` messages.

use routemq_proto::v1 as pb;
use routemq_proto::v1::forward_result::Outcome;

use crate::peer::{ForwardBatch, ForwardOutcome, ForwardReply, Forwarded, PeerError};

impl From<Forwarded> for pb::ForwardedMessage {
    fn from(m: Forwarded) -> Self {
        pb::ForwardedMessage {
            seq: m.seq,
            route: m.route,
            key: m.key,
            partition: m.partition,
            topic: m.topic,
            payload: m.payload,
            message_id: m.message_id,
            received_at_unix_ms: m.received_at_unix_ms,
            ordered_ingress: m.ordered_ingress,
        }
    }
}

impl From<pb::ForwardedMessage> for Forwarded {
    fn from(m: pb::ForwardedMessage) -> Self {
        Forwarded {
            seq: m.seq,
            route: m.route,
            key: m.key,
            partition: m.partition,
            topic: m.topic,
            payload: m.payload,
            message_id: m.message_id,
            received_at_unix_ms: m.received_at_unix_ms,
            ordered_ingress: m.ordered_ingress,
        }
    }
}

impl From<ForwardBatch> for pb::ForwardBatch {
    fn from(b: ForwardBatch) -> Self {
        pb::ForwardBatch {
            epoch: b.epoch,
            sender: b.sender,
            messages: b.messages.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<pb::ForwardBatch> for ForwardBatch {
    fn from(b: pb::ForwardBatch) -> Self {
        ForwardBatch {
            epoch: b.epoch,
            sender: b.sender,
            messages: b.messages.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<ForwardReply> for pb::ForwardResult {
    fn from(r: ForwardReply) -> Self {
        let (outcome, owner, error) = match r.outcome {
            ForwardOutcome::Processed { by } => (Outcome::Processed, by, String::new()),
            ForwardOutcome::NotOwner { owner, reason } => (Outcome::NotOwner, owner, reason),
            ForwardOutcome::Failed(error) => (Outcome::Failed, String::new(), error),
            ForwardOutcome::Unavailable(error) => (Outcome::Unavailable, String::new(), error),
        };
        pb::ForwardResult {
            seq: r.seq,
            outcome: outcome as i32,
            owner,
            epoch: r.epoch,
            error,
        }
    }
}

impl From<pb::ForwardResult> for ForwardReply {
    fn from(r: pb::ForwardResult) -> Self {
        let outcome = match Outcome::try_from(r.outcome) {
            Ok(Outcome::Processed) => ForwardOutcome::Processed { by: r.owner },
            Ok(Outcome::NotOwner) => ForwardOutcome::NotOwner {
                owner: r.owner,
                reason: r.error,
            },
            Ok(Outcome::Failed) => ForwardOutcome::Failed(r.error),
            // An outcome this node does not know: not processed as far as it can tell.
            Ok(Outcome::Unavailable) | Err(_) => ForwardOutcome::Unavailable(r.error),
        };
        ForwardReply {
            seq: r.seq,
            epoch: r.epoch,
            outcome,
        }
    }
}

/// The replies of one acknowledged batch.
pub fn replies(ack: pb::ForwardAck) -> Vec<ForwardReply> {
    ack.results.into_iter().map(Into::into).collect()
}

/// The ack of one batch.
pub fn ack(replies: Vec<ForwardReply>) -> pb::ForwardAck {
    pb::ForwardAck {
        results: replies.into_iter().map(Into::into).collect(),
    }
}

/// A broken forwarding stream.
pub fn stream_error(addr: &str, status: &tonic::Status) -> PeerError {
    PeerError::unreachable(addr, status.message())
}
