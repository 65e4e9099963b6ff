//! Pieces the RouteMQ tests and the fault harness share, written once:
//!
//! - [`mosquitto`]: a real Mosquitto broker in a process the caller owns, with a small builder
//!   for the settings that differ between the node's ingress tests, the multi-node tests and
//!   the fault harness (listener, queue limits, persistence place, network namespace);
//! - [`golden`]: the goldenscript directory runner (every file of a directory, each with a
//!   fresh runner, all failures reported together);
//! - [`cluster`]: a fake `routemq.v1.Cluster` service with scripted answers and failures, and
//!   serving helpers for fake gRPC nodes on loopback.
//!
//! The journal checker is not here: `routemq-ctl bench` uses it at run time, so it lives in
//! the client library (`routemq_client::journal_check`).

pub mod cluster;
pub mod golden;
pub mod mosquitto;
