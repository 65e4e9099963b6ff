//! The journal: a durable per-key log in RocksDB, kept by the key's owner.
//!
//! Layout (one RocksDB database under `<data-dir>/journal`, column family `entries` and
//! `ids`): keys start with the partition (big-endian u32) so that everything a partition holds
//! is one contiguous range — what a handoff will move — then the route and the key, each
//! length-prefixed so no separator can be forged by a key's bytes:
//!
//! ```text
//! entries: [partition u32][len u16][route][len u16][key][offset u64]  -> JournalRecord (JSON)
//! ids:     [partition u32][len u16][route][len u16][key][message id]  -> offset u64
//! held:    [partition u32]                                          -> version u64
//! ```
//!
//! `held` records, per partition whose data this node activated, the epoch of that
//! activation (the copy's version): written in the same durable batch as an import, or on its
//! own when a partition activates with what is here. After a restart it tells the ownership
//! machine which copies it holds and how new they are.
//!
//! Promises: offsets per (route, key) start at 0 and grow by one without gaps; an append is
//! durable (WAL fsync) before it returns; appending a message id already in the journal returns
//! the existing offset and writes nothing (duplicate suppression, G4). Appends for one
//! (route, key) must be serialized by the caller (the partition's worker does that); appends
//! to different keys may run concurrently.

use std::path::Path;
use std::sync::Arc;

use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};

const CF_ENTRIES: &str = "entries";
const CF_IDS: &str = "ids";
const CF_HELD: &str = "held";

/// One journal entry as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalRecord {
    /// Offset in the key's journal.
    pub offset: u64,
    /// Producer message id.
    pub message_id: String,
    /// Topic the message arrived on.
    pub topic: String,
    /// Payload.
    pub payload: Vec<u8>,
    /// Node that processed it.
    pub processed_by: String,
    /// Config epoch it was processed under.
    pub epoch: u64,
    /// Wall-clock processing time, Unix milliseconds.
    pub processed_at_unix_ms: i64,
    /// Partition of the key.
    pub partition: u32,
    /// Dead-letter entries: why processing failed (empty otherwise).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// Journal errors.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// RocksDB failed.
    #[error("journal storage: {0}")]
    Storage(#[from] rocksdb::Error),
    /// A stored record or key could not be decoded (corruption or a foreign directory).
    #[error("journal record is corrupt: {0}")]
    Corrupt(String),
    /// Route or key too long to encode.
    #[error("{0} is longer than 65535 bytes")]
    TooLong(&'static str),
}

/// Result of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Offset of the entry.
    pub offset: u64,
    /// True if the message id was already journaled (nothing was written).
    pub duplicate: bool,
}

/// The journal database.
#[derive(Clone)]
pub struct Journal {
    db: Arc<DB>,
}

fn prefix(partition: u32, route: &str, key: &str) -> Result<Vec<u8>, JournalError> {
    let route_len = u16::try_from(route.len()).map_err(|_| JournalError::TooLong("route name"))?;
    let key_len = u16::try_from(key.len()).map_err(|_| JournalError::TooLong("key"))?;
    let mut out = Vec::with_capacity(8 + route.len() + key.len() + 8);
    out.extend_from_slice(&partition.to_be_bytes());
    out.extend_from_slice(&route_len.to_be_bytes());
    out.extend_from_slice(route.as_bytes());
    out.extend_from_slice(&key_len.to_be_bytes());
    out.extend_from_slice(key.as_bytes());
    Ok(out)
}

impl Journal {
    /// Opens (or creates) the journal database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, JournalError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        let cfs = [CF_ENTRIES, CF_IDS, CF_HELD]
            .into_iter()
            .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
        Ok(Self {
            db: Arc::new(DB::open_cf_descriptors(&options, dir, cfs)?),
        })
    }

    /// Writes `batch` atomically, the WAL synced before it returns.
    fn write_durably(&self, batch: WriteBatch) -> Result<(), JournalError> {
        let mut options = WriteOptions::default();
        options.set_sync(true);
        self.db.write_opt(batch, &options)?;
        Ok(())
    }

    fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily, JournalError> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| JournalError::Corrupt(format!("column family {name} missing")))
    }

    /// Next offset of (route, key): one past the last entry.
    fn next_offset(&self, prefix: &[u8]) -> Result<u64, JournalError> {
        let mut upper = prefix.to_vec();
        upper.extend_from_slice(&u64::MAX.to_be_bytes());
        let mut iter = self.db.iterator_cf(
            self.cf(CF_ENTRIES)?,
            IteratorMode::From(&upper, Direction::Reverse),
        );
        match iter.next() {
            Some(item) => {
                let (k, _) = item?;
                if k.len() == prefix.len() + 8 && k.starts_with(prefix) {
                    let bytes: [u8; 8] = k[prefix.len()..]
                        .try_into()
                        .map_err(|_| JournalError::Corrupt("offset".into()))?;
                    Ok(u64::from_be_bytes(bytes) + 1)
                } else {
                    Ok(0)
                }
            }
            None => Ok(0),
        }
    }

    /// Appends `record` (its `offset` is assigned here) unless its message id is already in the
    /// key's journal. Durable (WAL fsync) before it returns. Blocking: call from a blocking
    /// context.
    pub fn append(
        &self,
        route: &str,
        key: &str,
        mut record: JournalRecord,
    ) -> Result<Appended, JournalError> {
        let prefix = prefix(record.partition, route, key)?;
        let mut id_key = prefix.clone();
        id_key.extend_from_slice(record.message_id.as_bytes());
        if let Some(existing) = self.db.get_cf(self.cf(CF_IDS)?, &id_key)? {
            let bytes: [u8; 8] = existing
                .as_slice()
                .try_into()
                .map_err(|_| JournalError::Corrupt("message id index".into()))?;
            return Ok(Appended {
                offset: u64::from_be_bytes(bytes),
                duplicate: true,
            });
        }
        let offset = self.next_offset(&prefix)?;
        record.offset = offset;
        let mut entry_key = prefix;
        entry_key.extend_from_slice(&offset.to_be_bytes());
        let value = serde_json::to_vec(&record).map_err(|e| JournalError::Corrupt(e.to_string()))?;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_ENTRIES)?, entry_key, value);
        batch.put_cf(self.cf(CF_IDS)?, id_key, offset.to_be_bytes());
        self.write_durably(batch)?;
        Ok(Appended {
            offset,
            duplicate: false,
        })
    }

    /// Reads up to `limit` entries of (route, key) from `from_offset`. Returns the entries and
    /// whether the end of the journal was reached.
    pub fn read(
        &self,
        partition: u32,
        route: &str,
        key: &str,
        from_offset: u64,
        limit: usize,
    ) -> Result<(Vec<JournalRecord>, bool), JournalError> {
        let prefix = prefix(partition, route, key)?;
        let mut start = prefix.clone();
        start.extend_from_slice(&from_offset.to_be_bytes());
        let iter = self.db.iterator_cf(
            self.cf(CF_ENTRIES)?,
            IteratorMode::From(&start, Direction::Forward),
        );
        let mut out = Vec::new();
        for item in iter {
            let (k, v) = item?;
            if k.len() != prefix.len() + 8 || !k.starts_with(&prefix) {
                return Ok((out, true));
            }
            if out.len() >= limit {
                return Ok((out, false));
            }
            out.push(serde_json::from_slice(&v).map_err(|e| JournalError::Corrupt(e.to_string()))?);
        }
        Ok((out, true))
    }

    /// Records the versions of copies activated with what is here (no import), durably.
    /// Blocking.
    pub fn record_held(&self, versions: &[(u32, u64)]) -> Result<(), JournalError> {
        if versions.is_empty() {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        let held = self.cf(CF_HELD)?;
        for (partition, version) in versions {
            batch.put_cf(held, partition.to_be_bytes(), version.to_be_bytes());
        }
        self.write_durably(batch)?;
        Ok(())
    }

    /// Forgets every held-copy record (the data stays, claimed by nobody). Blocking.
    pub fn forget_held(&self) -> Result<(), JournalError> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.cf(CF_HELD)?, &[0u8; 4][..], &[0xffu8; 5][..]);
        self.write_durably(batch)?;
        Ok(())
    }

    /// The copies this node holds: partition → version, as recorded. Blocking.
    pub fn held(&self) -> Result<std::collections::BTreeMap<u32, u64>, JournalError> {
        let mut out = std::collections::BTreeMap::new();
        for item in self.db.iterator_cf(self.cf(CF_HELD)?, IteratorMode::Start) {
            let (k, v) = item?;
            let (Ok(p), Ok(version)) = (<[u8; 4]>::try_from(&k[..]), <[u8; 8]>::try_from(&v[..])) else {
                return Err(JournalError::Corrupt(
                    "a held-copy record has the wrong size".into(),
                ));
            };
            out.insert(u32::from_be_bytes(p), u64::from_be_bytes(version));
        }
        Ok(out)
    }

    /// Everything one partition holds, for a handoff: raw key/value pairs of both column
    /// families (the format is the same on every node). Blocking.
    pub fn export_partition(&self, partition: u32) -> Result<PartitionData, JournalError> {
        let scan = |cf: &str| -> Result<Pairs, JournalError> {
            let start = partition.to_be_bytes();
            let mut out = Vec::new();
            for item in self
                .db
                .iterator_cf(self.cf(cf)?, IteratorMode::From(&start, Direction::Forward))
            {
                let (k, v) = item?;
                if !k.starts_with(&start) {
                    break;
                }
                out.push((k.to_vec(), v.to_vec()));
            }
            Ok(out)
        };
        Ok(PartitionData {
            entries: scan(CF_ENTRIES)?,
            ids: scan(CF_IDS)?,
        })
    }

    /// Replaces everything this node holds of `partition` with `data` (from a handoff), in one
    /// durable write, and records the copy's `version`. Keys outside the partition are
    /// refused. Blocking.
    pub fn import_partition(
        &self,
        partition: u32,
        data: &PartitionData,
        version: u64,
    ) -> Result<(), JournalError> {
        self.import_partitions(&[(partition, data)], version)
    }

    /// [`Journal::import_partition`] for many partitions in one durable write (one fsync).
    pub fn import_partitions(
        &self,
        parts: &[(u32, &PartitionData)],
        version: u64,
    ) -> Result<(), JournalError> {
        let mut batch = WriteBatch::default();
        let held = self.cf(CF_HELD)?;
        for (partition, data) in parts {
            batch.put_cf(held, partition.to_be_bytes(), version.to_be_bytes());
            let start = partition.to_be_bytes();
            let end = partition
                .checked_add(1)
                .map(|p| p.to_be_bytes().to_vec())
                .unwrap_or_else(|| vec![0xff; 5]);
            for (cf, pairs) in [(CF_ENTRIES, &data.entries), (CF_IDS, &data.ids)] {
                let cf = self.cf(cf)?;
                batch.delete_range_cf(cf, &start[..], &end[..]);
                for (k, v) in pairs {
                    if !k.starts_with(&start) {
                        return Err(JournalError::Corrupt(format!(
                            "handoff data for partition {partition} holds a key of another partition"
                        )));
                    }
                    batch.put_cf(cf, k, v);
                }
            }
        }
        self.write_durably(batch)?;
        Ok(())
    }

    /// Puts back the history of a node that was failed over and has returned (`older`: its
    /// entries of `partition`) into what is held here: per (route, key), the two histories
    /// are merged in the order of the epochs the entries were processed at, each side's own
    /// order kept, on a tie the returned side first; a returned message whose id is held here
    /// (a producer retried it here) keeps the place it has here; offsets are renumbered. Sound because one
    /// partition's ownership intervals are disjoint and ordered by epoch (G2: a failed-over
    /// node processed everything before the next owner started). The epoch order matters when
    /// the history held here already holds older entries than those returned: two nodes failed
    /// over one after the other, the older copy returned first. One durable write. Blocking;
    /// the caller serializes it with the partition's processing. Returns how many returned
    /// entries were not held here.
    pub fn merge_older(&self, partition: u32, older: &PartitionData) -> Result<usize, JournalError> {
        use std::collections::BTreeMap;
        let current = self.export_partition(partition)?;
        let start = partition.to_be_bytes();
        // (route, key) prefix -> records in offset order
        let mut keys: BTreeMap<Vec<u8>, (Vec<JournalRecord>, Vec<JournalRecord>)> = BTreeMap::new();
        for (side, data) in [(0, older), (1, &current)] {
            for (k, v) in &data.entries {
                if k.len() < 4 + 8 || !k.starts_with(&start) {
                    return Err(JournalError::Corrupt("journal key of another partition".into()));
                }
                let prefix = k[..k.len() - 8].to_vec();
                let record: JournalRecord =
                    serde_json::from_slice(v).map_err(|e| JournalError::Corrupt(e.to_string()))?;
                let entry = keys.entry(prefix).or_default();
                if side == 0 {
                    entry.0.push(record);
                } else {
                    entry.1.push(record);
                }
            }
        }
        let mut batch = WriteBatch::default();
        let end = partition
            .checked_add(1)
            .map(|p| p.to_be_bytes().to_vec())
            .unwrap_or_else(|| vec![0xff; 5]);
        let (entries_cf, ids_cf) = (self.cf(CF_ENTRIES)?, self.cf(CF_IDS)?);
        batch.delete_range_cf(entries_cf, &start[..], &end[..]);
        batch.delete_range_cf(ids_cf, &start[..], &end[..]);
        let mut restored = 0;
        for (prefix, (old, new)) in keys {
            let held: std::collections::HashSet<&str> = new.iter().map(|r| r.message_id.as_str()).collect();
            // A message held here too (a producer retried it here) keeps its place here.
            let old: Vec<&JournalRecord> = old
                .iter()
                .filter(|r| !held.contains(r.message_id.as_str()))
                .collect();
            let mut seen = std::collections::HashSet::new();
            let (mut i, mut j) = (0, 0);
            let mut merged = Vec::with_capacity(old.len() + new.len());
            while i < old.len() || j < new.len() {
                let returned = j >= new.len() || (i < old.len() && old[i].epoch <= new[j].epoch);
                let record = if returned {
                    i += 1;
                    old[i - 1]
                } else {
                    j += 1;
                    &new[j - 1]
                };
                if seen.insert(record.message_id.as_str()) {
                    restored += usize::from(returned);
                    merged.push(record);
                }
            }
            for (offset, record) in merged.into_iter().enumerate() {
                let mut record = record.clone();
                record.offset = offset as u64;
                let mut key = prefix.clone();
                key.extend_from_slice(&(offset as u64).to_be_bytes());
                let value = serde_json::to_vec(&record).map_err(|e| JournalError::Corrupt(e.to_string()))?;
                batch.put_cf(entries_cf, key, value);
                let mut id_key = prefix.clone();
                id_key.extend_from_slice(record.message_id.as_bytes());
                batch.put_cf(ids_cf, id_key, (offset as u64).to_be_bytes());
            }
        }
        self.write_durably(batch)?;
        Ok(restored)
    }
}

/// Raw key/value pairs of one column family.
type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// A partition's journal data in transit (raw pairs of the `entries` and `ids` families).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionData {
    /// Entries.
    pub entries: Vec<(Vec<u8>, Vec<u8>)>,
    /// Message id index.
    pub ids: Vec<(Vec<u8>, Vec<u8>)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, partition: u32) -> JournalRecord {
        JournalRecord {
            offset: 0,
            message_id: id.into(),
            topic: "t".into(),
            payload: id.as_bytes().to_vec(),
            processed_by: "n1".into(),
            epoch: 1,
            processed_at_unix_ms: 0,
            partition,
            error: String::new(),
        }
    }

    #[test]
    fn appends_are_gapless_and_duplicates_suppressed() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        assert_eq!(journal.append("r", "k", record("a", 7)).unwrap().offset, 0);
        assert_eq!(journal.append("r", "k", record("b", 7)).unwrap().offset, 1);
        let dup = journal.append("r", "k", record("a", 7)).unwrap();
        assert_eq!((dup.offset, dup.duplicate), (0, true));
        // A key that is a prefix of another does not see its entries.
        assert_eq!(journal.append("r", "k2", record("a", 7)).unwrap().offset, 0);
        assert_eq!(journal.append("r2", "k", record("a", 7)).unwrap().offset, 0);
        let (entries, end) = journal.read(7, "r", "k", 0, 10).unwrap();
        assert!(end);
        let ids: Vec<_> = entries
            .iter()
            .map(|e| (e.offset, e.message_id.as_str()))
            .collect();
        assert_eq!(ids, [(0, "a"), (1, "b")]);
        let (entries, end) = journal.read(7, "r", "k", 1, 1).unwrap();
        assert_eq!((entries.len(), end), (1, true));
        let (entries, end) = journal.read(7, "r", "k", 0, 1).unwrap();
        assert_eq!((entries.len(), end), (1, false));
    }

    #[test]
    fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let journal = Journal::open(dir.path()).unwrap();
            journal.append("r", "k", record("a", 1)).unwrap();
        }
        let journal = Journal::open(dir.path()).unwrap();
        assert_eq!(journal.append("r", "k", record("b", 1)).unwrap().offset, 1);
        assert!(journal.append("r", "k", record("a", 1)).unwrap().duplicate);
    }

    #[test]
    fn a_partition_moves_whole_and_replaces_what_was_there() {
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (
            Journal::open(a_dir.path()).unwrap(),
            Journal::open(b_dir.path()).unwrap(),
        );
        a.append("r", "k", record("m1", 7)).unwrap();
        a.append("r", "k", record("m2", 7)).unwrap();
        a.append("r", "other", record("m1", 8)).unwrap();
        b.append("r", "k", record("stale", 7)).unwrap();
        b.append("r", "x", record("kept", 6)).unwrap();
        let data = a.export_partition(7).unwrap();
        assert_eq!((data.entries.len(), data.ids.len()), (2, 2));
        b.import_partition(7, &data, 4).unwrap();
        let (entries, _) = b.read(7, "r", "k", 0, 10).unwrap();
        let ids: Vec<_> = entries.iter().map(|e| e.message_id.as_str()).collect();
        assert_eq!(ids, ["m1", "m2"], "the stale entry is gone, the history is whole");
        assert!(
            b.append("r", "k", record("m2", 7)).unwrap().duplicate,
            "ids moved too"
        );
        assert_eq!(b.append("r", "k", record("m3", 7)).unwrap().offset, 2);
        assert_eq!(
            b.read(6, "r", "x", 0, 10).unwrap().0.len(),
            1,
            "other partitions untouched"
        );
        let mut foreign = data.clone();
        foreign.entries[0].0[3] ^= 1;
        assert!(b.import_partition(7, &foreign, 5).is_err());
        assert_eq!(
            b.held().unwrap(),
            [(7, 4)].into(),
            "the failed import recorded nothing"
        );
    }

    #[test]
    fn held_copy_versions_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let journal = Journal::open(dir.path()).unwrap();
            assert!(journal.held().unwrap().is_empty());
            journal.record_held(&[(3, 2), (9, 2)]).unwrap();
            journal.import_partition(3, &PartitionData::default(), 5).unwrap();
        }
        let journal = Journal::open(dir.path()).unwrap();
        assert_eq!(journal.held().unwrap(), [(3, 5), (9, 2)].into());
        journal.forget_held().unwrap();
        assert!(journal.held().unwrap().is_empty());
    }

    #[test]
    fn a_returning_history_goes_first_without_duplicates() {
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (old, new) = (
            Journal::open(a_dir.path()).unwrap(),
            Journal::open(b_dir.path()).unwrap(),
        );
        for id in ["m1", "m2", "m3"] {
            old.append("r", "k", record(id, 7)).unwrap();
        }
        old.append("r", "only-old", record("x", 7)).unwrap();
        // m3 was processed by the failed node but not acknowledged: retried on the new owner.
        for id in ["m3", "m4"] {
            new.append("r", "k", record(id, 7)).unwrap();
        }
        new.append("r", "k", record("y", 8)).unwrap();
        let restored = new.merge_older(7, &old.export_partition(7).unwrap()).unwrap();
        assert_eq!(restored, 3, "m1, m2 and x come back; m3 is already here");
        let (entries, _) = new.read(7, "r", "k", 0, 10).unwrap();
        let ids: Vec<_> = entries
            .iter()
            .map(|e| (e.offset, e.message_id.as_str()))
            .collect();
        assert_eq!(ids, [(0, "m1"), (1, "m2"), (2, "m3"), (3, "m4")]);
        assert_eq!(new.read(7, "r", "only-old", 0, 10).unwrap().0.len(), 1);
        assert!(
            new.append("r", "k", record("m1", 7)).unwrap().duplicate,
            "ids follow"
        );
        assert_eq!(new.append("r", "k", record("m5", 7)).unwrap().offset, 4);
        assert_eq!(
            new.read(8, "r", "k", 0, 10).unwrap().0.len(),
            1,
            "other partitions untouched"
        );
    }

    fn at_epoch(id: &str, epoch: u64) -> JournalRecord {
        JournalRecord {
            epoch,
            ..record(id, 7)
        }
    }

    #[test]
    fn histories_merge_in_epoch_order_whichever_comes_back_first() {
        // n1 processed at epoch 5 and was failed over; n4 processed at epoch 7 and was failed
        // over too; n1 came back first (its history is held here, with epoch 9 entries after
        // it), then n4 returns its newer history: it belongs between the two.
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (returned, here) = (
            Journal::open(a_dir.path()).unwrap(),
            Journal::open(b_dir.path()).unwrap(),
        );
        for (id, epoch) in [("a", 5), ("b", 5), ("c", 9), ("d", 9)] {
            here.append("r", "k", at_epoch(id, epoch)).unwrap();
        }
        for (id, epoch) in [("x", 7), ("y", 7), ("c", 9)] {
            returned.append("r", "k", at_epoch(id, epoch)).unwrap();
        }
        let restored = here
            .merge_older(7, &returned.export_partition(7).unwrap())
            .unwrap();
        assert_eq!(restored, 2, "x and y come back; c is already here");
        let (entries, _) = here.read(7, "r", "k", 0, 10).unwrap();
        let ids: Vec<_> = entries.iter().map(|e| (e.message_id.as_str(), e.epoch)).collect();
        assert_eq!(ids, [("a", 5), ("b", 5), ("x", 7), ("y", 7), ("c", 9), ("d", 9)]);
    }
}
