//! Protobuf <-> domain conversions of the peer messages, one file per message family (in the
//! manner of openraft's `examples/raft-kv-memstore-grpc/src/pb_impl/`). Nothing else in the
//! node builds peer protobuf messages by hand.
//!
//! `status` reads a `tonic::Status` answered by a peer into a [`super::PeerError`]; building a
//! `Status` from an error is [`crate::api`]'s job.

pub mod cluster;
pub mod forward;
pub mod handoff;
pub mod journal;
pub mod status;
