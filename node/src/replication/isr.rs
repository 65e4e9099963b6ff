//! The in-sync set (ISR) of a partition as the config keeps it, and the rules the config's
//! state machine applies to it. Pure functions; `config/state.rs` calls them.
//!
//! The config stores a [`PartitionIsr`] only for partitions whose ISR is not their whole
//! placement: ISR = (placement \ `lagging`) ∪ `retiring`. The owner is the first ISR member
//! in placement order, then the retiring ones ([`owner`]). Invariants kept by [`carry_over`]
//! and [`alter`]:
//! - `lagging` ⊆ placement, `retiring` ∩ placement = ∅;
//! - the ISR is never empty (when every in-sync copy is gone, the preferred owner becomes the
//!   sole member, and `unclean_epoch` records the loss);
//! - `retiring` is empty once `lagging` is: a member that is no longer placed is kept only
//!   until every placed one is in sync;
//! - a member joins only from `lagging`; a member leaves by request only while the ISR keeps
//!   `min_insync` members and never if it is the owner.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// A partition's ISR where it differs from its placement.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionIsr {
    /// Placed replicas that are not in sync (new followers catching up, laggards).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub lagging: BTreeSet<String>,
    /// In-sync members no longer placed here, followed until every placed one is in sync.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub retiring: BTreeSet<String>,
    /// The epoch at which the partition lost every in-sync copy (0: never, or since healed).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unclean_epoch: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl PartitionIsr {
    /// True when the ISR is the whole placement (nothing to store).
    pub fn is_default(&self) -> bool {
        self.lagging.is_empty() && self.retiring.is_empty() && self.unclean_epoch == 0
    }
}

/// The ISR of a partition placed on `placed` (preference order): placed members in sync, in
/// placement order, then retiring ones by node id.
pub fn in_sync(placed: &[&str], record: Option<&PartitionIsr>) -> Vec<String> {
    let lagging = |n: &&str| record.is_some_and(|r| r.lagging.contains(*n));
    placed
        .iter()
        .filter(|n| !lagging(n))
        .map(|n| n.to_string())
        .chain(record.into_iter().flat_map(|r| r.retiring.iter().cloned()))
        .collect()
}

/// The owner: the first ISR member (see [`in_sync`]); the preferred owner if the ISR is
/// empty (only before any member exists).
pub fn owner(placed: &[&str], record: Option<&PartitionIsr>) -> Option<String> {
    in_sync(placed, record)
        .into_iter()
        .next()
        .or_else(|| placed.first().map(|n| n.to_string()))
}

/// The record after a change of members: `old_isr` is the ISR before, `gone` tells which of
/// its members are gone (removed, or a new incarnation), `placed` is the new placement.
/// Returns None for the default (ISR = placement).
pub fn carry_over(
    old_isr: &[String],
    gone: impl Fn(&str) -> bool,
    placed: &[&str],
    epoch: u64,
    old_unclean: u64,
) -> Option<PartitionIsr> {
    let mut isr: BTreeSet<String> = old_isr.iter().filter(|n| !gone(n)).cloned().collect();
    let mut unclean_epoch = old_unclean;
    if isr.is_empty() {
        // No in-sync copy is left: the preferred owner starts over with what it can recover.
        match placed.first() {
            Some(first) => {
                isr.insert(first.to_string());
                unclean_epoch = epoch;
            }
            None => return None,
        }
    }
    normalize(PartitionIsr {
        lagging: placed
            .iter()
            .filter(|n| !isr.contains(**n))
            .map(|n| n.to_string())
            .collect(),
        retiring: isr
            .iter()
            .filter(|n| !placed.contains(&n.as_str()))
            .cloned()
            .collect(),
        unclean_epoch,
    })
}

fn normalize(mut record: PartitionIsr) -> Option<PartitionIsr> {
    if record.lagging.is_empty() {
        record.retiring.clear();
        record.unclean_epoch = 0;
    }
    (!record.is_default()).then_some(record)
}

/// One partition's requested ISR change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IsrChange {
    /// The partition.
    pub partition: u32,
    /// Lagging replicas that caught up, with the incarnation their acknowledgements named.
    #[serde(default)]
    pub join: Vec<(String, u64)>,
    /// ISR members that fell behind.
    #[serde(default)]
    pub leave: Vec<String>,
}

/// Why an ISR change is refused (deterministic: the config rejects the whole command).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IsrRefusal {
    /// The member is not a lagging replica of the partition.
    #[error("{node} is not a lagging replica of partition {partition}")]
    NotLagging {
        /// Partition.
        partition: u32,
        /// Member.
        node: String,
    },
    /// The acknowledgements came from another incarnation than the member's.
    #[error("{node} of partition {partition}: incarnation {reported} is not the member's ({current})")]
    WrongIncarnation {
        /// Partition.
        partition: u32,
        /// Member.
        node: String,
        /// Named by the request.
        reported: u64,
        /// In the config (0: none reported yet).
        current: u64,
    },
    /// The member is not in the ISR, or is its owner.
    #[error("{node} cannot leave the in-sync set of partition {partition}: not in it, or its owner")]
    CannotLeave {
        /// Partition.
        partition: u32,
        /// Member.
        node: String,
    },
    /// The leave would take the ISR below min-insync.
    #[error(
        "partition {partition}: the in-sync set would have {left} members, below min-insync {min_insync}"
    )]
    BelowMinInsync {
        /// Partition.
        partition: u32,
        /// Members that would be left.
        left: usize,
        /// The floor.
        min_insync: usize,
    },
}

/// Applies one owner's change to a partition's record. `incarnation` gives each member's
/// current incarnation. Returns the new record (None: default).
pub fn alter(
    placed: &[&str],
    record: Option<&PartitionIsr>,
    change: &IsrChange,
    incarnation: impl Fn(&str) -> u64,
    min_insync: usize,
) -> Result<Option<PartitionIsr>, IsrRefusal> {
    let partition = change.partition;
    let mut next = record.cloned().unwrap_or_default();
    for (node, reported) in &change.join {
        if !next.lagging.contains(node) {
            return Err(IsrRefusal::NotLagging {
                partition,
                node: node.clone(),
            });
        }
        let current = incarnation(node);
        if current == 0 || current != *reported {
            return Err(IsrRefusal::WrongIncarnation {
                partition,
                node: node.clone(),
                reported: *reported,
                current,
            });
        }
        next.lagging.remove(node);
    }
    let owner = owner(placed, record);
    for node in &change.leave {
        let isr = in_sync(placed, Some(&next));
        if Some(node) == owner.as_ref() || !isr.contains(node) {
            return Err(IsrRefusal::CannotLeave {
                partition,
                node: node.clone(),
            });
        }
        if isr.len() - 1 < min_insync {
            return Err(IsrRefusal::BelowMinInsync {
                partition,
                left: isr.len() - 1,
                min_insync,
            });
        }
        if !next.retiring.remove(node) {
            next.lagging.insert(node.clone());
        }
    }
    Ok(normalize(next))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_owner_is_the_first_in_sync_replica() {
        let placed = ["a", "b", "c"];
        assert_eq!(owner(&placed, None).as_deref(), Some("a"));
        let record = PartitionIsr {
            lagging: set(&["a"]),
            ..Default::default()
        };
        assert_eq!(in_sync(&placed, Some(&record)), strings(&["b", "c"]));
        assert_eq!(owner(&placed, Some(&record)).as_deref(), Some("b"));
        let record = PartitionIsr {
            lagging: set(&["x"]),
            retiring: set(&["old"]),
            ..Default::default()
        };
        assert_eq!(owner(&["x"], Some(&record)).as_deref(), Some("old"));
        assert_eq!(owner(&[], None), None);
    }

    #[test]
    fn a_member_change_keeps_survivors_in_sync_and_new_replicas_lagging() {
        // a (owner) removed; d is placed instead.
        let record = carry_over(&strings(&["a", "b", "c"]), |n| n == "a", &["b", "c", "d"], 5, 0).unwrap();
        assert_eq!(record.lagging, set(&["d"]));
        assert!(record.retiring.is_empty());
        assert_eq!(owner(&["b", "c", "d"], Some(&record)).as_deref(), Some("b"));
        // A joiner x placed first: a keeps ownership, c retires until x is in sync.
        let record = carry_over(&strings(&["a", "b", "c"]), |_| false, &["x", "a", "b"], 5, 0).unwrap();
        assert_eq!(record.lagging, set(&["x"]));
        assert_eq!(record.retiring, set(&["c"]));
        assert_eq!(owner(&["x", "a", "b"], Some(&record)).as_deref(), Some("a"));
        // Nothing changes: default.
        assert_eq!(
            carry_over(&strings(&["a", "b"]), |_| false, &["a", "b"], 5, 0),
            None
        );
    }

    #[test]
    fn losing_every_in_sync_copy_is_recorded() {
        let record = carry_over(&strings(&["a"]), |n| n == "a", &["b", "c"], 9, 0).unwrap();
        assert_eq!(record.lagging, set(&["c"]));
        assert_eq!(record.unclean_epoch, 9);
        assert_eq!(owner(&["b", "c"], Some(&record)).as_deref(), Some("b"));
        // R = 1: the new owner alone, nothing lagging: the record is the default again.
        assert_eq!(carry_over(&strings(&["a"]), |n| n == "a", &["b"], 9, 0), None);
    }

    #[test]
    fn joins_need_the_current_incarnation_and_retire_the_old_replicas() {
        let placed = ["x", "a", "b"];
        let record = PartitionIsr {
            lagging: set(&["x"]),
            retiring: set(&["c"]),
            ..Default::default()
        };
        let inc = |n: &str| if n == "x" { 7 } else { 1 };
        let join = |inc_x| IsrChange {
            partition: 3,
            join: vec![("x".into(), inc_x)],
            leave: vec![],
        };
        assert_eq!(
            alter(&placed, Some(&record), &join(6), inc, 2),
            Err(IsrRefusal::WrongIncarnation {
                partition: 3,
                node: "x".into(),
                reported: 6,
                current: 7
            })
        );
        // Caught up: x in sync, c retired, x owns again.
        assert_eq!(alter(&placed, Some(&record), &join(7), inc, 2), Ok(None));
        assert_eq!(
            alter(&placed, None, &join(7), inc, 2),
            Err(IsrRefusal::NotLagging {
                partition: 3,
                node: "x".into()
            })
        );
    }

    #[test]
    fn leaves_keep_min_insync_and_the_owner() {
        let placed = ["a", "b", "c"];
        let leave = |n: &str| IsrChange {
            partition: 0,
            join: vec![],
            leave: vec![n.into()],
        };
        let record = alter(&placed, None, &leave("c"), |_| 1, 2).unwrap().unwrap();
        assert_eq!(record.lagging, set(&["c"]));
        assert_eq!(
            alter(&placed, Some(&record), &leave("b"), |_| 1, 2),
            Err(IsrRefusal::BelowMinInsync {
                partition: 0,
                left: 1,
                min_insync: 2
            })
        );
        assert!(matches!(
            alter(&placed, None, &leave("a"), |_| 1, 1),
            Err(IsrRefusal::CannotLeave { .. })
        ));
    }
}
