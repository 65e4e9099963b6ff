//! A peer's `tonic::Status` read back into a [`PeerError`] (the inverse of
//! `crate::api::peer_status`).

use tonic::{Code, Status};

use crate::peer::{PeerError, Refusal};

/// The error a peer at `addr` answered.
pub fn from_status(addr: &str, status: &Status) -> PeerError {
    let message = status.message().to_string();
    let leader = status
        .metadata()
        .get(routemq_proto::LEADER_ADDR_METADATA)
        .map(|v| v.to_str().ok().filter(|a| !a.is_empty()).map(str::to_string));
    match status.code() {
        // NotLeader always carries the (maybe empty) leader address; a FAILED_PRECONDITION
        // without it is a rejection by the config state machine.
        Code::FailedPrecondition => match leader {
            Some(leader) => PeerError::NotLeader { leader },
            None => PeerError::refused(Refusal::Rejected, message),
        },
        Code::NotFound => PeerError::refused(Refusal::NotFound, message),
        Code::InvalidArgument | Code::OutOfRange => PeerError::refused(Refusal::Invalid, message),
        Code::AlreadyExists => PeerError::refused(Refusal::Conflict, message),
        Code::PermissionDenied | Code::Unauthenticated => PeerError::refused(Refusal::Denied, message),
        Code::Internal | Code::DataLoss | Code::Unimplemented => {
            PeerError::refused(Refusal::Internal, message)
        }
        Code::DeadlineExceeded => PeerError::Timeout,
        Code::Unavailable if is_transport(status) => PeerError::unreachable(addr, message),
        Code::Unknown | Code::Cancelled => PeerError::unreachable(addr, message),
        _ => PeerError::Unavailable(message),
    }
}

/// Whether tonic itself made this status (the connection failed) rather than the peer.
fn is_transport(status: &Status) -> bool {
    std::error::Error::source(status).is_some()
}
