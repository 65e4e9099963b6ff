//! [`NodeError`]: why a node could not start or stopped early. Each names what failed and,
//! where possible, what to do about it. Only fatal errors live here; per-request errors belong
//! to the modules that answer requests.

use std::net::SocketAddr;

use crate::datadir::DataDirError;
use crate::membership::MembershipError;

/// Fatal errors of a node. Each names what failed and, where possible, what to do.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The data directory cannot be used.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// A listener could not be bound.
    #[error("cannot listen for {what} on {addr}: {source}{}", in_use_hint(.source))]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Gossip could not start.
    #[error(transparent)]
    Gossip(#[from] MembershipError),
    /// The Raft database could not be opened.
    #[error("cannot open the raft database in {path}: {message}")]
    Storage {
        /// The path.
        path: String,
        /// Why.
        message: String,
    },
    /// Raft or config failure at start.
    #[error("config raft: {0}")]
    Raft(String),
    /// A fresh data directory, and neither seeds nor bootstrap.
    #[error("data directory {0} is empty: give --seed (gossip address of a running node) to join a cluster, or --bootstrap to start a new one")]
    NoWayIn(String),
    /// The cluster refused this node.
    #[error("the cluster refused to admit this node: {0}")]
    JoinRejected(String),
    /// The data directory belongs to another cluster than the seeds'.
    #[error("data directory {path} belongs to cluster {ours}, but the seeds gossip cluster {theirs}; use an empty data directory to join that cluster")]
    OtherCluster {
        /// The directory.
        path: String,
        /// Its cluster id.
        ours: String,
        /// The seeds' cluster id.
        theirs: String,
    },
    /// A server task failed.
    #[error("{what} server failed: {message}")]
    Server {
        /// Which server.
        what: &'static str,
        /// Why.
        message: String,
    },
}

fn in_use_hint(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::AddrInUse {
        " (is another routemq node or program using this port?)"
    } else {
        ""
    }
}
