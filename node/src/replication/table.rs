//! The replicas, ISR and owner of every partition at one config: placement plus the ISR
//! records the config keeps. Built by [`crate::config::state::ClusterConfig::replica_table`].

use std::collections::BTreeMap;

use super::isr::{self, PartitionIsr};
use super::placement::Placement;

/// One partition's replication state, for status and for the owner's tracker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionReplicas {
    /// Placement, preferred owner first.
    pub replicas: Vec<String>,
    /// The ISR: placed members in sync (placement order), then retiring ones.
    pub isr: Vec<String>,
    /// The owner (None only without members).
    pub owner: Option<String>,
    /// Placed replicas not in sync.
    pub lagging: Vec<String>,
    /// In-sync members no longer placed, followed until the placed ones are in sync.
    pub retiring: Vec<String>,
    /// Epoch at which every in-sync copy was lost (0: none since it was last fully in sync).
    pub unclean_epoch: u64,
}

impl PartitionReplicas {
    /// Every replica the owner streams to: placed and retiring, the owner excluded.
    pub fn followers(&self) -> Vec<String> {
        self.replicas
            .iter()
            .chain(self.retiring.iter())
            .filter(|n| Some(*n) != self.owner.as_ref())
            .cloned()
            .collect()
    }
}

/// Placement and ISR records of one config.
#[derive(Debug, Clone)]
pub struct ReplicaTable {
    placement: Placement,
    records: BTreeMap<u32, PartitionIsr>,
    factor: usize,
    partitions: u32,
}

impl ReplicaTable {
    /// The table of `placement` with the config's records.
    pub fn new(
        placement: Placement,
        records: BTreeMap<u32, PartitionIsr>,
        factor: usize,
        partitions: u32,
    ) -> Self {
        Self {
            placement,
            records,
            factor,
            partitions,
        }
    }

    /// The placement.
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// The owner of `partition`.
    pub fn owner(&self, partition: u32) -> Option<String> {
        isr::owner(&self.placement.replicas(partition), self.records.get(&partition))
    }

    /// The ISR of `partition`.
    pub fn isr(&self, partition: u32) -> Vec<String> {
        isr::in_sync(&self.placement.replicas(partition), self.records.get(&partition))
    }

    /// Everything about `partition`.
    pub fn partition(&self, partition: u32) -> PartitionReplicas {
        let placed = self.placement.replicas(partition);
        let record = self.records.get(&partition);
        PartitionReplicas {
            replicas: placed.iter().map(|n| n.to_string()).collect(),
            isr: isr::in_sync(&placed, record),
            owner: isr::owner(&placed, record),
            lagging: record
                .map(|r| r.lagging.iter().cloned().collect())
                .unwrap_or_default(),
            retiring: record
                .map(|r| r.retiring.iter().cloned().collect())
                .unwrap_or_default(),
            unclean_epoch: record.map_or(0, |r| r.unclean_epoch),
        }
    }

    /// Partitions whose ISR has fewer than R members (the replication factor, not clamped).
    pub fn under_replicated(&self) -> u32 {
        (0..self.partitions)
            .filter(|p| self.isr(*p).len() < self.factor)
            .count() as u32
    }
}
