//! The data directory: an exclusive lock, the node's identity, and the Raft database.
//!
//! Layout:
//! - `LOCK`: held with an OS file lock while a node runs, so two processes never share a
//!   directory (the lock dies with the process, so a kill -9 leaves nothing to clean up);
//! - `identity.json`: node id, raft id of this incarnation, and the cluster id once known;
//! - `raft/`: RocksDB with the Raft log and the config state machine.
//!
//! A directory created by another node, or holding another cluster's data, is refused with
//! an error naming both, before anything in it is touched.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const IDENTITY_FILE: &str = "identity.json";
const LOCK_FILE: &str = "LOCK";

/// Who this data directory belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Node id that created the directory.
    pub node_id: String,
    /// Raft id of this incarnation.
    pub raft_id: u64,
    /// Cluster id, empty until the node bootstrapped or joined.
    #[serde(default)]
    pub cluster_id: String,
}

/// Errors opening a data directory.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// I/O failure on a path.
    #[error("data directory {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Another process holds the lock.
    #[error("data directory {0} is locked by another running routemq process")]
    Locked(PathBuf),
    /// The identity file is unreadable.
    #[error("data directory {path} has a malformed {IDENTITY_FILE}: {message}")]
    Malformed {
        /// The directory.
        path: PathBuf,
        /// Parser message.
        message: String,
    },
    /// The directory belongs to another node.
    #[error("data directory {path} belongs to node {found:?}, not {expected:?}; use that node id or another directory")]
    OtherNode {
        /// The directory.
        path: PathBuf,
        /// Node id found in it.
        found: String,
        /// Node id we were started with.
        expected: String,
    },
}

/// An open, locked data directory.
pub struct DataDir {
    path: PathBuf,
    identity: Identity,
    // Held for the life of the node; dropping it releases the lock.
    _lock: File,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl DataDir {
    /// Creates (if needed), locks and reads `path` for node `node_id`. A new directory gets a
    /// fresh random raft id.
    pub fn open(path: &Path, node_id: &str) -> Result<Self, DataDirError> {
        std::fs::create_dir_all(path).map_err(io(path))?;
        let lock_path = path.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(DataDirError::Locked(path.to_path_buf())),
            Err(std::fs::TryLockError::Error(e)) => return Err(io(&lock_path)(e)),
        }
        let identity_path = path.join(IDENTITY_FILE);
        let identity = match std::fs::read(&identity_path) {
            Ok(bytes) => {
                let identity: Identity =
                    serde_json::from_slice(&bytes).map_err(|e| DataDirError::Malformed {
                        path: path.to_path_buf(),
                        message: e.to_string(),
                    })?;
                if identity.node_id != node_id {
                    return Err(DataDirError::OtherNode {
                        path: path.to_path_buf(),
                        found: identity.node_id,
                        expected: node_id.to_string(),
                    });
                }
                identity
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let identity = Identity {
                    node_id: node_id.to_string(),
                    raft_id: fresh_raft_id(),
                    cluster_id: String::new(),
                };
                write_identity(&identity_path, &identity)?;
                identity
            }
            Err(e) => return Err(io(&identity_path)(e)),
        };
        Ok(Self {
            path: path.to_path_buf(),
            identity,
            _lock: lock,
        })
    }

    /// The directory's identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Where the Raft database lives.
    pub fn raft_dir(&self) -> PathBuf {
        self.path.join("raft")
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records the cluster this directory now belongs to.
    pub fn set_cluster_id(&mut self, cluster_id: &str) -> Result<(), DataDirError> {
        if self.identity.cluster_id == cluster_id {
            return Ok(());
        }
        let mut identity = self.identity.clone();
        identity.cluster_id = cluster_id.to_string();
        write_identity(&self.path.join(IDENTITY_FILE), &identity)?;
        self.identity = identity;
        Ok(())
    }
}

/// Writes the identity atomically (temp file, fsync, rename).
fn write_identity(path: &Path, identity: &Identity) -> Result<(), DataDirError> {
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(identity).map_err(|e| io(path)(std::io::Error::other(e)))?;
    let mut file = File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(&bytes).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

fn fresh_raft_id() -> u64 {
    loop {
        let id = u64::from_le_bytes(
            *uuid::Uuid::new_v4()
                .as_bytes()
                .first_chunk::<8>()
                .unwrap_or(&[1; 8]),
        );
        // Keep ids positive in JSON-consuming tools that parse numbers as i64, and never 0.
        let id = id >> 1;
        if id != 0 {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_survives_reopen_and_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let raft_id = {
            let mut data = DataDir::open(dir.path(), "n1").unwrap();
            data.set_cluster_id("c1").unwrap();
            data.identity().raft_id
        };
        let data = DataDir::open(dir.path(), "n1").unwrap();
        assert_eq!(data.identity().raft_id, raft_id);
        assert_eq!(data.identity().cluster_id, "c1");
        drop(data);
        let err = DataDir::open(dir.path(), "n2").err().unwrap();
        assert!(matches!(err, DataDirError::OtherNode { .. }), "{err}");
    }

    #[test]
    fn a_locked_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _held = DataDir::open(dir.path(), "n1").unwrap();
        let err = DataDir::open(dir.path(), "n1").err().unwrap();
        assert!(matches!(err, DataDirError::Locked(_)), "{err}");
    }

    #[test]
    fn a_malformed_identity_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(IDENTITY_FILE), b"{not json").unwrap();
        let err = DataDir::open(dir.path(), "n1").err().unwrap();
        assert!(matches!(err, DataDirError::Malformed { .. }), "{err}");
    }
}
