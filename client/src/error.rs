//! The client's error type, [`ClientError`], and how a failed call is described to people.
//!
//! A call either fails at once with a final answer from a node ([`ClientError::Rpc`] with a
//! non-retryable status, e.g. `NOT_FOUND`), or after its retries ran out: then the error is the
//! last answer a node gave ([`ClientError::Rpc`] with a retryable status, e.g. `UNAVAILABLE`
//! from a node without quorum), or [`ClientError::NoReachableNode`] when no node answered at
//! all. Messages are one line, suitable for `error: {err}` on a terminal.

use std::error::Error as _;

use tonic::{Code, Status};

use crate::retry::{classify, RetryDecision};

/// Errors of [`Client`](crate::Client) calls.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No seed address was given.
    #[error("no RouteMQ node address given")]
    NoSeeds,
    /// An address is not a valid `host:port` gRPC address.
    #[error("invalid node address {addr:?}: {reason}")]
    InvalidAddress {
        /// The address as given.
        addr: String,
        /// Why it was rejected.
        reason: String,
    },
    /// No node answered: every attempt failed to connect or timed out.
    #[error("no RouteMQ node reachable at {} ({})", tried.join(", "), describe_status(last_error))]
    NoReachableNode {
        /// Addresses tried, in the order first tried, without repetitions.
        tried: Vec<String>,
        /// The last transport failure or timeout (code `UNAVAILABLE`, `DEADLINE_EXCEEDED`...).
        last_error: Status,
    },
    /// A node answered with an error: a final one, or the last retryable one when the retry
    /// budget ran out.
    #[error("{} ({}; answered by {addr})", describe_status(status), code_name(status.code()))]
    Rpc {
        /// Address of the node that answered.
        addr: String,
        /// Its answer.
        status: Status,
    },
    /// A node's answer is inconsistent (e.g. a partition table that does not add up).
    #[error("invalid response from {addr}: {reason}")]
    InvalidResponse {
        /// Address of the node that answered.
        addr: String,
        /// What is wrong with the answer.
        reason: String,
    },
}

impl ClientError {
    /// True when the same call may succeed if made again later: no node was reachable, or the
    /// last answer was retryable (`UNAVAILABLE`, leader unknown...). False for final answers
    /// (`INVALID_ARGUMENT`, `NOT_FOUND`, `ALREADY_EXISTS`, `PERMISSION_DENIED`...), invalid
    /// addresses and invalid responses.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::NoReachableNode { .. } => true,
            ClientError::Rpc { status, .. } => classify(status) != RetryDecision::Final,
            ClientError::NoSeeds
            | ClientError::InvalidAddress { .. }
            | ClientError::InvalidResponse { .. } => false,
        }
    }

    /// The gRPC status of the node's answer or of the last transport failure, if any.
    pub fn status(&self) -> Option<&Status> {
        match self {
            ClientError::NoReachableNode { last_error, .. } => Some(last_error),
            ClientError::Rpc { status, .. } => Some(status),
            _ => None,
        }
    }

    /// The gRPC code of [`status`](Self::status), if any.
    pub fn code(&self) -> Option<Code> {
        self.status().map(Status::code)
    }
}

/// A short, human description of a status: the root cause of a transport failure
/// ("connection refused", "dns error: ..."), otherwise the status message, or the code's name
/// when the message is empty.
pub fn describe_status(status: &Status) -> String {
    if let Some(source) = status.source() {
        let mut cause: &(dyn std::error::Error + 'static) = source;
        loop {
            if let Some(io) = cause.downcast_ref::<std::io::Error>() {
                return describe_io_error(io);
            }
            match cause.source() {
                Some(next) => cause = next,
                None => break,
            }
        }
        let text = cause.to_string();
        if !text.is_empty() {
            return text;
        }
    }
    if status.message().is_empty() {
        code_name(status.code()).to_string()
    } else {
        status.message().to_string()
    }
}

fn describe_io_error(err: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match err.kind() {
        ConnectionRefused | ConnectionReset | ConnectionAborted | TimedOut | NotConnected | BrokenPipe
        | AddrNotAvailable | HostUnreachable | NetworkUnreachable | NetworkDown => err.kind().to_string(),
        _ => err.to_string(),
    }
}

/// Lowercase name of a gRPC code, e.g. "not found", "failed precondition".
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown error",
        Code::InvalidArgument => "invalid argument",
        Code::DeadlineExceeded => "deadline exceeded",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::PermissionDenied => "permission denied",
        Code::ResourceExhausted => "resource exhausted",
        Code::FailedPrecondition => "failed precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out of range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal error",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn no_reachable_node_names_addresses_and_root_cause() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let mut status = Status::unavailable("tcp connect error");
        status.set_source(Arc::new(io));
        let err = ClientError::NoReachableNode {
            tried: vec!["127.0.0.1:7001".into(), "127.0.0.1:7002".into()],
            last_error: status,
        };
        assert_eq!(
            err.to_string(),
            "no RouteMQ node reachable at 127.0.0.1:7001, 127.0.0.1:7002 (connection refused)"
        );
        assert!(err.is_retryable());
        assert_eq!(err.code(), Some(Code::Unavailable));
    }

    #[test]
    fn rpc_error_shows_message_code_and_node() {
        let err = ClientError::Rpc {
            addr: "127.0.0.1:7001".into(),
            status: Status::not_found("node \"n9\" is not a member of the cluster"),
        };
        assert_eq!(
            err.to_string(),
            "node \"n9\" is not a member of the cluster (not found; answered by 127.0.0.1:7001)"
        );
        assert!(!err.is_retryable());
    }

    #[test]
    fn empty_message_falls_back_to_code_name() {
        assert_eq!(describe_status(&Status::unavailable("")), "unavailable");
    }

    #[test]
    fn retryability_follows_the_answer() {
        let rpc = |status| ClientError::Rpc {
            addr: "a:1".into(),
            status,
        };
        assert!(rpc(Status::unavailable("no quorum")).is_retryable());
        assert!(!rpc(Status::invalid_argument("bad key")).is_retryable());
        assert!(!rpc(Status::already_exists("x")).is_retryable());
        assert!(!ClientError::NoSeeds.is_retryable());
        assert!(!ClientError::InvalidResponse {
            addr: "a:1".into(),
            reason: "x".into()
        }
        .is_retryable());
    }
}
