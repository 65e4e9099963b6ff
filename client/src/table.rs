//! Reading a [`PartitionTable`]: the owner node id of each partition and partitions per node.
//!
//! On the wire, `owners[p]` is an index into the table's `nodes`; these helpers resolve it and
//! check that the table adds up. [`Client::partitions`](crate::Client::partitions) only returns
//! tables that pass [`owner_ids`].

use std::collections::BTreeMap;

use routemq_proto::v1::PartitionTable;

/// Why a partition table is inconsistent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// `owners` does not have one entry per partition.
    #[error("{owners} owners listed for {partition_count} partitions")]
    LengthMismatch {
        /// Entries in `owners`.
        owners: usize,
        /// `partition_count`.
        partition_count: u32,
    },
    /// An owner index points past the end of `nodes`.
    #[error("partition {partition} has owner index {index} but only {nodes} nodes are listed")]
    OwnerOutOfRange {
        /// The partition.
        partition: usize,
        /// Its owner index.
        index: u32,
        /// Entries in `nodes`.
        nodes: usize,
    },
}

/// The owner node id of every partition; element `p` is partition `p`'s owner.
pub fn owner_ids(table: &PartitionTable) -> Result<Vec<&str>, TableError> {
    if table.owners.len() != table.partition_count as usize {
        return Err(TableError::LengthMismatch {
            owners: table.owners.len(),
            partition_count: table.partition_count,
        });
    }
    table
        .owners
        .iter()
        .enumerate()
        .map(|(partition, &index)| {
            table
                .nodes
                .get(index as usize)
                .map(String::as_str)
                .ok_or(TableError::OwnerOutOfRange {
                    partition,
                    index,
                    nodes: table.nodes.len(),
                })
        })
        .collect()
}

/// Partitions owned per node id, sorted by node id; every node listed in `nodes` appears,
/// with 0 if it owns nothing.
pub fn owner_counts(table: &PartitionTable) -> Result<BTreeMap<&str, u32>, TableError> {
    let mut counts: BTreeMap<&str, u32> = table.nodes.iter().map(|n| (n.as_str(), 0)).collect();
    for owner in owner_ids(table)? {
        *counts.entry(owner).or_default() += 1;
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(nodes: &[&str], owners: &[u32]) -> PartitionTable {
        PartitionTable {
            epoch: 3,
            partition_count: owners.len() as u32,
            vnodes_per_weight: 16,
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            owners: owners.to_vec(),
            answered_by: "n1".into(),
        }
    }

    #[test]
    fn resolves_owners_and_counts() {
        let t = table(&["n2", "n1", "n3"], &[0, 1, 1, 0, 1]);
        assert_eq!(owner_ids(&t).unwrap(), vec!["n2", "n1", "n1", "n2", "n1"]);
        let counts: Vec<(&str, u32)> = owner_counts(&t).unwrap().into_iter().collect();
        assert_eq!(counts, vec![("n1", 3), ("n2", 2), ("n3", 0)]);
    }

    #[test]
    fn rejects_inconsistent_tables() {
        let t = table(&["n1"], &[0, 1]);
        assert_eq!(
            owner_ids(&t),
            Err(TableError::OwnerOutOfRange {
                partition: 1,
                index: 1,
                nodes: 1
            })
        );
        let mut t = table(&["n1"], &[0, 0]);
        t.partition_count = 3;
        assert_eq!(
            owner_counts(&t),
            Err(TableError::LengthMismatch {
                owners: 2,
                partition_count: 3
            })
        );
    }
}
