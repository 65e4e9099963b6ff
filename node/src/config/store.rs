//! Raft log and state machine storage in RocksDB (openraft storage v2).
//!
//! One RocksDB database under `<data-dir>/raft` holds four column families:
//! - `log`: log entries keyed by big-endian index (so iteration order is log order);
//! - `meta`: the vote, the last purged log id and the committed log id;
//! - `state`: the applied state machine ([`AppliedState`]) as one record, rewritten after each
//!   applied batch (the config is small; one atomic write keeps it consistent with its log id);
//! - `snapshot`: the latest snapshot (meta + data).
//!
//! Writes that Raft's safety depends on (log appends, votes) are synced before they are
//! acknowledged. Entries and state are serialized with serde_json: the volume is tiny (config
//! changes), and a readable format helps when inspecting a data directory.

// openraft's storage traits fix the error type (StorageError, ~224 bytes); helpers return it too.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::state::{Applied, ClusterConfig};
use super::{ApplyResponse, RaftId, TypeConfig};

const CF_LOG: &str = "log";
const CF_META: &str = "meta";
const CF_STATE: &str = "state";
const CF_SNAPSHOT: &str = "snapshot";

const KEY_VOTE: &[u8] = b"vote";
const KEY_PURGED: &[u8] = b"last_purged";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_STATE: &[u8] = b"applied";
const KEY_SNAPSHOT: &[u8] = b"current";

type StorageResult<T> = Result<T, StorageError<RaftId>>;

/// The state machine's durable content: the config and how far the log has been applied.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AppliedState {
    /// Last log id applied to `config`.
    pub last_applied: Option<LogId<RaftId>>,
    /// Last Raft membership seen in the applied log.
    pub last_membership: StoredMembership<RaftId, openraft::BasicNode>,
    /// The cluster config at `last_applied`.
    pub config: ClusterConfig,
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<RaftId, openraft::BasicNode>,
    data: Vec<u8>,
}

/// Opens (or creates) the Raft database in `dir`.
pub fn open_db(dir: &Path) -> Result<Arc<DB>, rocksdb::Error> {
    let mut options = Options::default();
    options.create_if_missing(true);
    options.create_missing_column_families(true);
    let cfs = [CF_LOG, CF_META, CF_STATE, CF_SNAPSHOT]
        .into_iter()
        .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
    Ok(Arc::new(DB::open_cf_descriptors(&options, dir, cfs)?))
}

fn sync_writes() -> WriteOptions {
    let mut options = WriteOptions::default();
    options.set_sync(true);
    options
}

fn io_error(
    subject: ErrorSubject<RaftId>,
    verb: ErrorVerb,
    e: impl std::error::Error + 'static,
) -> StorageError<RaftId> {
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError<RaftId> {
    io_error(ErrorSubject::Store, ErrorVerb::Read, e)
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError<RaftId> {
    io_error(ErrorSubject::Store, ErrorVerb::Write, e)
}

fn cf<'a>(db: &'a DB, name: &str) -> StorageResult<&'a rocksdb::ColumnFamily> {
    db.cf_handle(name)
        .ok_or_else(|| read_err(std::io::Error::other(format!("column family {name} is missing"))))
}

fn get_json<T: serde::de::DeserializeOwned>(db: &DB, cf_name: &str, key: &[u8]) -> StorageResult<Option<T>> {
    match db.get_cf(cf(db, cf_name)?, key).map_err(read_err)? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(read_err),
    }
}

fn put_json<T: Serialize>(db: &DB, cf_name: &str, key: &[u8], value: &T) -> StorageResult<()> {
    let bytes = serde_json::to_vec(value).map_err(write_err)?;
    db.put_cf_opt(cf(db, cf_name)?, key, bytes, &sync_writes())
        .map_err(write_err)
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn key_index(key: &[u8]) -> StorageResult<u64> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| read_err(std::io::Error::other("malformed log key")))?;
    Ok(u64::from_be_bytes(bytes))
}

/// The Raft log in RocksDB.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    committed_index: Arc<AtomicU64>,
}

impl LogStore {
    /// A log store on `db`. `committed_index` is updated as Raft reports commits.
    pub fn new(db: Arc<DB>, committed_index: Arc<AtomicU64>) -> Self {
        Self { db, committed_index }
    }

    fn last_entry_log_id(&self) -> StorageResult<Option<LogId<RaftId>>> {
        let mut iter = self.db.iterator_cf(cf(&self.db, CF_LOG)?, IteratorMode::End);
        match iter.next() {
            None => Ok(None),
            Some(item) => {
                let (_, value) = item.map_err(read_err)?;
                let entry: Entry<TypeConfig> = serde_json::from_slice(&value).map_err(read_err)?;
                Ok(Some(entry.log_id))
            }
        }
    }
}

/// True if this database holds any Raft state (a vote or a log entry), i.e. the node was
/// already initialized or joined.
pub fn has_raft_state(db: &DB) -> Result<bool, StorageError<RaftId>> {
    if get_json::<Vote<RaftId>>(db, CF_META, KEY_VOTE)?.is_some() {
        return Ok(true);
    }
    let mut iter = db.iterator_cf(cf(db, CF_LOG)?, IteratorMode::Start);
    Ok(iter.next().is_some())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        use std::ops::Bound;
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let mut entries = Vec::new();
        let iter = self.db.iterator_cf(
            cf(&self.db, CF_LOG)?,
            IteratorMode::From(&index_key(start), Direction::Forward),
        );
        for item in iter {
            let (key, value) = item.map_err(read_err)?;
            let index = key_index(&key)?;
            if !range.contains(&index) {
                break;
            }
            entries.push(serde_json::from_slice(&value).map_err(read_err)?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged: Option<LogId<RaftId>> = get_json(&self.db, CF_META, KEY_PURGED)?;
        let last = self.last_entry_log_id()?.or(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<RaftId>) -> StorageResult<()> {
        put_json(&self.db, CF_META, KEY_VOTE, vote)
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<RaftId>>> {
        get_json(&self.db, CF_META, KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<RaftId>>) -> StorageResult<()> {
        if let Some(log_id) = committed {
            self.committed_index.fetch_max(log_id.index, Ordering::Relaxed);
        }
        put_json(&self.db, CF_META, KEY_COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<RaftId>>> {
        let committed: Option<Option<LogId<RaftId>>> = get_json(&self.db, CF_META, KEY_COMMITTED)?;
        let committed = committed.flatten();
        if let Some(log_id) = committed {
            self.committed_index.fetch_max(log_id.index, Ordering::Relaxed);
        }
        Ok(committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let log_cf = cf(&self.db, CF_LOG)?;
        let mut batch = WriteBatch::default();
        for entry in entries {
            let bytes = serde_json::to_vec(&entry).map_err(write_err)?;
            batch.put_cf(log_cf, index_key(entry.log_id.index), bytes);
        }
        let result = self.db.write_opt(batch, &sync_writes());
        let reported = result
            .as_ref()
            .map(|_| ())
            .map_err(|e| std::io::Error::other(e.to_string()));
        callback.log_io_completed(reported);
        result.map_err(write_err)
    }

    async fn truncate(&mut self, log_id: LogId<RaftId>) -> StorageResult<()> {
        // Delete every entry at or after log_id.index.
        let log_cf = cf(&self.db, CF_LOG)?;
        self.db
            .delete_range_cf(log_cf, index_key(log_id.index), index_key(u64::MAX))
            .map_err(write_err)?;
        self.db
            .delete_cf_opt(log_cf, index_key(u64::MAX), &sync_writes())
            .map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<RaftId>) -> StorageResult<()> {
        put_json(&self.db, CF_META, KEY_PURGED, &log_id)?;
        let log_cf = cf(&self.db, CF_LOG)?;
        self.db
            .delete_range_cf(log_cf, index_key(0), index_key(log_id.index.saturating_add(1)))
            .map_err(write_err)
    }
}

/// The config state machine in RocksDB; publishes every applied state on a watch channel.
pub struct StateMachineStore {
    db: Arc<DB>,
    state: AppliedState,
    applied_tx: watch::Sender<Arc<AppliedState>>,
    snapshot_seq: u64,
}

impl StateMachineStore {
    /// Loads the applied state from `db` (or starts empty) and returns the store with a receiver
    /// that sees every newly applied state.
    pub fn open(db: Arc<DB>) -> StorageResult<(Self, watch::Receiver<Arc<AppliedState>>)> {
        let state: AppliedState = get_json(&db, CF_STATE, KEY_STATE)?.unwrap_or_default();
        let (applied_tx, applied_rx) = watch::channel(Arc::new(state.clone()));
        Ok((
            Self {
                db,
                state,
                applied_tx,
                snapshot_seq: 0,
            },
            applied_rx,
        ))
    }

    fn persist_and_publish(&self) -> StorageResult<()> {
        put_json(&self.db, CF_STATE, KEY_STATE, &self.state)?;
        self.applied_tx.send_replace(Arc::new(self.state.clone()));
        Ok(())
    }
}

/// Builds snapshots from a copy of the applied state.
pub struct SnapshotBuilder {
    db: Arc<DB>,
    state: AppliedState,
    snapshot_id: String,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let data = serde_json::to_vec(&self.state).map_err(write_err)?;
        let meta = SnapshotMeta {
            last_log_id: self.state.last_applied,
            last_membership: self.state.last_membership.clone(),
            snapshot_id: self.snapshot_id.clone(),
        };
        put_json(
            &self.db,
            CF_SNAPSHOT,
            KEY_SNAPSHOT,
            &StoredSnapshot {
                meta: meta.clone(),
                data: data.clone(),
            },
        )?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(
        Option<LogId<RaftId>>,
        StoredMembership<RaftId, openraft::BasicNode>,
    )> {
        Ok((self.state.last_applied, self.state.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<ApplyResponse>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut responses = Vec::new();
        for entry in entries {
            self.state.last_applied = Some(entry.log_id);
            let unchanged = Applied {
                epoch: self.state.config.epoch,
                route_version: None,
            };
            let result = match entry.payload {
                EntryPayload::Blank => Ok(unchanged),
                EntryPayload::Normal(command) => self.state.config.apply(entry.log_id.index, &command),
                EntryPayload::Membership(membership) => {
                    self.state.last_membership = StoredMembership::new(Some(entry.log_id), membership);
                    Ok(unchanged)
                }
            };
            responses.push(ApplyResponse { result });
        }
        self.persist_and_publish()?;
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_seq += 1;
        let index = self.state.last_applied.map(|l| l.index).unwrap_or(0);
        SnapshotBuilder {
            db: self.db.clone(),
            state: self.state.clone(),
            snapshot_id: format!("{index}-{}", self.snapshot_seq),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<RaftId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let data = snapshot.into_inner();
        let state: AppliedState = serde_json::from_slice(&data)
            .map_err(|e| io_error(ErrorSubject::Snapshot(Some(meta.signature())), ErrorVerb::Read, e))?;
        put_json(
            &self.db,
            CF_SNAPSHOT,
            KEY_SNAPSHOT,
            &StoredSnapshot {
                meta: meta.clone(),
                data,
            },
        )?;
        self.state = AppliedState {
            last_applied: meta.last_log_id,
            last_membership: meta.last_membership.clone(),
            config: state.config,
        };
        self.persist_and_publish()
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let stored: Option<StoredSnapshot> = get_json(&self.db, CF_SNAPSHOT, KEY_SNAPSHOT)?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}
