//! Rust client of a RouteMQ cluster's gRPC API (`routemq.v1`: `Cluster`, `Routes`,
//! `Messages`), used by `routemq-ctl` and the integration tests.
//!
//! [`Client::connect`] takes the `host:port` gRPC addresses of any nodes (seeds). Each call
//! goes to one node and, when that node cannot serve it, moves on by itself:
//! - transport failures, timeouts and `UNAVAILABLE` are retried at the next known node, with
//!   a doubling backoff after every round over all known nodes;
//! - a NotLeader answer (`FAILED_PRECONDITION` with `x-routemq-leader-addr` metadata) is
//!   retried at once at the leader; without a leader address (election in progress) after a
//!   backoff;
//! - other errors (`INVALID_ARGUMENT`, `NOT_FOUND`, `ALREADY_EXISTS`, a `FAILED_PRECONDITION`
//!   without leader metadata such as a route version mismatch, ...) are returned at once;
//! - a call gives up after [`ClientOptions::total_timeout`] (10 s by default) or
//!   [`ClientOptions::max_attempts`].
//!
//! Calls:
//! - cluster: [`Client::status`], [`Client::partitions`], [`Client::locate`],
//!   [`Client::remove_node`];
//! - routes (writes at the leader, compare-and-set by version): [`Client::put_route`],
//!   [`Client::get_route`], [`Client::list_routes`], [`Client::delete_route`];
//! - messages: [`Client::publish`] (any node; a message id is generated when none is given and
//!   kept across retries, so a retry is a duplicate the journal suppresses),
//!   [`Client::read_journal`], [`Client::read_journal_from`], [`Client::read_journal_all`].
//!
//! Calls return the generated protobuf messages ([`ClusterStatus`], [`Route`],
//! [`PublishResponse`], [`JournalEntry`], ...), re-exported here with the whole generated
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
//! let published = client.publish("sensors/device-42/data", b"{\"t\":21}".to_vec(), None).await?;
//! println!("{} processed by {}", published.message_id, published.processed_by);
//! for entry in client.read_journal_all("telemetry", "device-42").await? {
//!     println!("{} {}", entry.offset, entry.message_id);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Modules: [`addr`] normalises addresses, [`retry`] decides retries without I/O, `client`
//! performs calls (`routing` the routes and messages ones), `options` holds
//! [`ClientOptions`], `error` defines [`ClientError`], [`table`] reads partition tables,
//! [`spec`] turns route text (command line, routes files) into [`Route`]s, [`bench`](mod@bench) is
//! the load tool with its verifier, and [`journal_check`] is the one rule that judges journals
//! read back against what was sent (the verifier's, the integration tests' and the fault
//! harness's).

#![warn(missing_docs)]

pub mod addr;
pub mod bench;
mod client;
mod error;
pub mod journal_check;
mod options;
pub mod retry;
mod routing;
pub mod spec;
pub mod table;

#[cfg(test)]
mod routing_tests;
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
    ClusterStatus, Handler, JournalEntry, Liveness, LocateResponse, Member, PartitionTable, PublishResponse,
    PutRouteResponse, RaftRole, ReadConsistency, ReadJournalResponse, RemoveNodeResponse, Route, RouteMode,
};
pub use routemq_proto::{LEADER_ADDR_METADATA, LEADER_ID_METADATA};
pub use routing::new_message_id;
