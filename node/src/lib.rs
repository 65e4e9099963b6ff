//! RouteMQ node: a clustered MQTT message router.
//!
//! See `ARCHITECTURE.md` at the repository root for how the parts fit together. In short:
//! - [`membership`]: gossip (chitchat), liveness hints;
//! - [`config`]: the Raft-replicated cluster config, the authority on ownership;
//! - [`ring`]: consistent hashing of keys to partitions to owners, a pure function of the config;
//! - [`coordinator`]: what the Raft leader does to admit, remove and fail over nodes;
//! - [`ownership`] (pure), [`lease`] (pure), [`fencing`], [`handoff`]: who may process a
//!   partition now, leases that fence a cut-off owner, and the handoff of partitions;
//! - [`ingress`]: the MQTT ingress, and who holds which ordered route; [`publisher`]: the
//!   broker connection `republish` publishes through;
//! - [`api`]: the gRPC cluster API; [`http`]: health, readiness and metrics;
//! - [`node`]: start-up, entering the cluster, the status loop, leaving, shutdown;
//! - [`settings`]: flags, env and file.

pub mod api;
pub mod backoff;
pub mod config;
pub mod console;
pub mod coordinator;
pub mod datadir;
pub mod dispatch;
pub mod fencing;
pub mod forward;
pub mod handler;
pub mod handoff;
pub mod hotkeys;
pub mod http;
pub mod ingress;
pub mod journal;
pub mod lease;
pub mod membership;
pub mod message;
pub mod metrics;
pub mod node;
pub mod ownership;
pub mod peer;
pub mod processor;
pub mod publisher;
pub mod replication;
pub mod ring;
pub mod routes;
pub mod settings;
pub mod stats;
