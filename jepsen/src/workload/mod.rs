//! Workloads: logical client processes that drive the cluster and record every operation.
//!
//! Each logical client is a Tokio task bound to one node. It does one operation at a time:
//! records the invocation, performs it with a deadline, records `ok`, `fail` or `info`. After an
//! `info` it continues under a new process id (`process + stride`), as Jepsen does with a
//! crashed process: the old process' operation may still be in flight.
//!
//! How gRPC answers become completions ([`classify`]):
//! - definite failures (`fail`): NotLeader answers (the node did not propose), `UNIMPLEMENTED`,
//!   `INVALID_ARGUMENT`, `NOT_FOUND`, `ALREADY_EXISTS`, `PERMISSION_DENIED`, a
//!   `FAILED_PRECONDITION` that is not NotLeader (a compare-and-set guard that did not hold), an
//!   `ABORTED` that names a version mismatch;
//! - everything else is `info` for writes (timeouts, `UNAVAILABLE`, transport errors, `INTERNAL`):
//!   the write may have been applied;
//! - reads have no effect, so every failed read is `fail`.
//!
//! A NotLeader answer with a leader address is followed (at most 3 hops per operation, within
//! the same deadline); the operation stays bound to its node in the history.
//!
//! [`register`] is the config register (G1); [`stream`] the ordered stream (G2-G5).

pub mod register;
pub mod stream;

use std::collections::HashMap;
use std::time::Duration;

use routemq_client::retry::{is_not_leader, leader_hint};
use routemq_client::{code_name, describe_status};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// The workloads, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WorkloadKind {
    /// Concurrent route writes, compare-and-set and linearizable reads (G1).
    Register,
    /// Producers with per-key sequence numbers on an ordered journal route (G2-G5).
    OrderedStream,
}

impl WorkloadKind {
    /// Every workload.
    pub const ALL: [WorkloadKind; 2] = [WorkloadKind::Register, WorkloadKind::OrderedStream];

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            WorkloadKind::Register => "register",
            WorkloadKind::OrderedStream => "ordered-stream",
        }
    }

    /// Parses a name.
    pub fn from_name(name: &str) -> Option<WorkloadKind> {
        WorkloadKind::ALL.into_iter().find(|w| w.name() == name)
    }
}

/// Settings shared by the workloads.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    /// Client processes per node.
    pub clients_per_node: usize,
    /// Deadline of one operation (a write without an answer by then is `info`).
    pub op_timeout: Duration,
    /// Pause between two operations of one client (uniform in [0, 2x]).
    pub think: Duration,
    /// Register: independent keys in use at once. Stream: number of keys.
    pub keys: usize,
    /// Register: operations per key before the key is retired for a fresh one.
    pub ops_per_key: usize,
    /// Register: read with `READ_CONSISTENCY_LOCAL` (may be stale: G1 should then fail; a
    /// demonstration that the checker catches stale reads on a live cluster).
    pub local_reads: bool,
    /// Stream: producers publishing over MQTT QoS 1 through the broker (beside the gRPC ones).
    pub mqtt_producers: usize,
    /// Stream: the broker's `host:port`.
    pub broker: String,
}

/// What to do with a failed call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classified {
    /// Certainly not applied.
    Fail(String),
    /// Outcome unknown.
    Info(String),
    /// NotLeader with the leader's address: try there.
    Redirect(String),
}

/// `UNAVAILABLE`-style name of a gRPC code.
pub fn code_upper(code: Code) -> String {
    code_name(code)
        .to_ascii_uppercase()
        .replace(' ', "_")
        .replace("_ERROR", "")
}

/// `CODE: description` of a status, as recorded in the history.
pub fn status_text(status: &Status) -> String {
    format!("{}: {}", code_upper(status.code()), describe_status(status))
}

/// Classifies a failed call (see the module docs). `read` makes every failure definite.
pub fn classify(status: &Status, read: bool) -> Classified {
    let text = status_text(status);
    if is_not_leader(status) {
        return match leader_hint(status) {
            Some(addr) => Classified::Redirect(addr),
            None => Classified::Fail(text),
        };
    }
    if read {
        return Classified::Fail(text);
    }
    match status.code() {
        Code::Unimplemented
        | Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::FailedPrecondition => Classified::Fail(text),
        Code::Aborted if status.message().to_ascii_lowercase().contains("version") => Classified::Fail(text),
        _ => Classified::Info(text),
    }
}

/// gRPC channels by address, created lazily (one connection per address per client).
#[derive(Default)]
pub struct Channels {
    map: HashMap<String, Channel>,
}

impl Channels {
    /// The channel to `addr` (`ip:port`).
    pub fn get(&mut self, addr: &str) -> Result<Channel, Status> {
        if let Some(c) = self.map.get(addr) {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| Status::invalid_argument(format!("bad address {addr}: {e}")))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(2))
            .keep_alive_timeout(Duration::from_secs(2));
        let channel = endpoint.connect_lazy();
        self.map.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_is_conservative_for_writes() {
        assert!(matches!(
            classify(&Status::unavailable("no quorum"), false),
            Classified::Info(_)
        ));
        assert!(matches!(
            classify(&Status::internal("x"), false),
            Classified::Info(_)
        ));
        assert!(matches!(
            classify(&Status::deadline_exceeded("x"), false),
            Classified::Info(_)
        ));
        assert!(matches!(
            classify(&Status::unavailable("no quorum"), true),
            Classified::Fail(_)
        ));
        assert!(matches!(
            classify(&Status::unimplemented(""), false),
            Classified::Fail(_)
        ));
        assert!(matches!(
            classify(
                &Status::failed_precondition("route r is at version 7, not 5"),
                false
            ),
            Classified::Fail(_)
        ));
        assert!(matches!(
            classify(&Status::aborted("leader changed"), false),
            Classified::Info(_)
        ));
        assert!(matches!(
            classify(&Status::aborted("version mismatch"), false),
            Classified::Fail(_)
        ));
        let mut nl = Status::failed_precondition("not the Raft leader");
        nl.metadata_mut().insert(
            routemq_proto::LEADER_ADDR_METADATA,
            "10.77.0.12:7001".parse().unwrap(),
        );
        assert_eq!(
            classify(&nl, false),
            Classified::Redirect("10.77.0.12:7001".into())
        );
        let mut unknown = Status::failed_precondition("not the Raft leader");
        unknown
            .metadata_mut()
            .insert(routemq_proto::LEADER_ADDR_METADATA, "".parse().unwrap());
        assert!(matches!(classify(&unknown, false), Classified::Fail(_)));
        assert_eq!(code_upper(Code::Unavailable), "UNAVAILABLE");
        assert_eq!(code_upper(Code::Internal), "INTERNAL");
        assert_eq!(code_upper(Code::FailedPrecondition), "FAILED_PRECONDITION");
    }
}
