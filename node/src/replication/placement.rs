//! Replica placement: which members hold a partition's replicas, in preference order.
//!
//! A pure function of the ring parameters, the active members (weights and zones) and the
//! replication factor R, so every node that applied the same config computes the same
//! placement, as it computes the same ring.
//!
//! The algorithm: walk the ring clockwise from the partition's position
//! ([`TokenRing::walk`]), meeting each member once; the first is the ring's owner, the
//! *preferred owner*. Take the first member met of each zone, in walk order, up to R
//! (members without a zone share the zone `""`); then fill the remaining places with the
//! earliest members not taken, in walk order. The placement is the zone representatives
//! followed by the fillers. Without zones (one zone) this is simply the first R members of the
//! walk. R is clamped to the number of members.
//!
//! Promises (property tests in this file):
//! - `min(R, members)` distinct members per partition, the ring's owner first;
//! - replicas spread over `min(R, zones)` distinct zones;
//! - minimal movement: when a member joins, each partition's replica set changes at most by
//!   the joiner taking the place of one replica; when one leaves, only by one member taking
//!   the leaver's place (the walk is the same with the member inserted or removed, and the
//!   choice is monotone in it).

use std::collections::BTreeSet;

use crate::ring::{RingError, RingParams, TokenRing};

/// A member as placement sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlacementMember<'a> {
    /// Node id.
    pub node_id: &'a str,
    /// Ring weight (>= 1).
    pub weight: u32,
    /// Zone (`""`: none given).
    pub zone: &'a str,
}

/// The replicas of every partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Node ids in increasing order.
    nodes: Vec<String>,
    /// Replicas per partition: `min(factor, nodes)`.
    width: usize,
    /// `partitions × width` indexes into `nodes`, partition by partition, preference order.
    replicas: Vec<u16>,
}

impl Placement {
    /// Places `factor` replicas (0 counts as 1) of every partition on `members`.
    pub fn build<'a, I>(params: &RingParams, members: I, factor: u32) -> Result<Self, RingError>
    where
        I: IntoIterator<Item = PlacementMember<'a>>,
    {
        let members: Vec<PlacementMember<'a>> = members.into_iter().collect();
        let tokens = TokenRing::build(params, members.iter().map(|m| (m.node_id, m.weight)))?;
        let nodes = tokens.nodes().to_vec();
        // Zone of each node index (nodes are sorted; members may come in any order).
        let zone_of: Vec<&str> = nodes
            .iter()
            .map(|n| members.iter().find(|m| m.node_id == n).map_or("", |m| m.zone))
            .collect();
        let zones = zone_of.iter().collect::<BTreeSet<_>>().len();
        let width = (factor.max(1) as usize).min(nodes.len());
        let mut replicas = Vec::with_capacity(params.partitions as usize * width);
        for partition in 0..params.partitions {
            place(tokens.walk(partition), &zone_of, zones, width, &mut replicas);
        }
        Ok(Self {
            nodes,
            width,
            replicas,
        })
    }

    /// Replicas per partition: `min(R, members)`.
    pub fn width(&self) -> usize {
        self.width
    }

    /// The replicas of `partition`, preferred owner first; empty without members or out of
    /// range.
    pub fn replicas(&self, partition: u32) -> Vec<&str> {
        let start = partition as usize * self.width;
        self.replicas
            .get(start..start + self.width)
            .unwrap_or_default()
            .iter()
            .filter_map(|i| self.nodes.get(usize::from(*i)).map(String::as_str))
            .collect()
    }

    /// The preferred owner of `partition` (the ring's owner).
    pub fn preferred_owner(&self, partition: u32) -> Option<&str> {
        let index = self.replicas.get(partition as usize * self.width)?;
        self.nodes.get(usize::from(*index)).map(String::as_str)
    }

    /// The members, in increasing order.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }
}

/// Chooses `width` members from the walk: one per zone first (walk order), then the earliest
/// others. Stops walking once the choice cannot change.
fn place(walk: impl Iterator<Item = u16>, zone_of: &[&str], zones: usize, width: usize, out: &mut Vec<u16>) {
    let mut representatives: Vec<u16> = Vec::with_capacity(width);
    let mut others: Vec<u16> = Vec::new();
    let mut used: BTreeSet<&str> = BTreeSet::new();
    for index in walk {
        let zone = zone_of.get(usize::from(index)).copied().unwrap_or("");
        if representatives.len() < width && used.insert(zone) {
            representatives.push(index);
        } else {
            others.push(index);
        }
        let all_zones = used.len() == zones || representatives.len() == width;
        if all_zones && representatives.len() + others.len() >= width {
            break;
        }
    }
    let fill = width.saturating_sub(representatives.len());
    out.extend(representatives.iter().chain(others.iter().take(fill)));
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn params() -> RingParams {
        RingParams {
            partitions: 64,
            vnodes_per_weight: 8,
        }
    }

    fn build(members: &[(String, u32, String)], factor: u32) -> Placement {
        Placement::build(
            &params(),
            members.iter().map(|(n, w, z)| PlacementMember {
                node_id: n,
                weight: *w,
                zone: z,
            }),
            factor,
        )
        .unwrap()
    }

    fn set(placement: &Placement, p: u32) -> BTreeSet<String> {
        placement.replicas(p).into_iter().map(str::to_owned).collect()
    }

    fn members_strategy() -> impl Strategy<Value = Vec<(String, u32, String)>> {
        // Up to 8 members with weights 1-3 and up to 4 zones (or none).
        (1usize..=8, prop::bool::ANY).prop_flat_map(|(n, zoned)| {
            prop::collection::vec((1u32..=3, 0u8..4), n).prop_map(move |v| {
                v.into_iter()
                    .enumerate()
                    .map(|(i, (w, z))| {
                        let zone = if zoned { format!("z{z}") } else { String::new() };
                        (format!("n{i}"), w, zone)
                    })
                    .collect()
            })
        })
    }

    #[test]
    fn without_zones_the_first_members_clockwise() {
        let members: Vec<(String, u32, String)> =
            (1..=5).map(|i| (format!("n{i}"), 1, String::new())).collect();
        let placement = build(&members, 3);
        let tokens = TokenRing::build(&params(), members.iter().map(|(n, w, _)| (n, *w))).unwrap();
        for p in 0..64 {
            let walk: Vec<&str> = tokens
                .walk(p)
                .take(3)
                .map(|i| tokens.nodes()[usize::from(i)].as_str())
                .collect();
            assert_eq!(placement.replicas(p), walk);
        }
        assert_eq!(placement.replicas(64), Vec::<&str>::new());
    }

    #[test]
    fn factor_is_clamped_to_the_members() {
        let members = vec![
            ("a".to_string(), 1, String::new()),
            ("b".to_string(), 1, String::new()),
        ];
        let placement = build(&members, 3);
        assert_eq!(placement.width(), 2);
        assert_eq!(build(&members, 0).width(), 1);
        let empty = build(&[], 3);
        assert_eq!(empty.width(), 0);
        assert_eq!(empty.preferred_owner(0), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn replicas_are_distinct_owner_first_and_spread_over_zones(
            members in members_strategy(), factor in 1u32..=5,
        ) {
            let placement = build(&members, factor);
            let ring = crate::ring::Ring::build(&params(), members.iter().map(|(n, w, _)| (n, *w))).unwrap();
            let zones: BTreeSet<&str> = members.iter().map(|m| m.2.as_str()).collect();
            let width = (factor as usize).min(members.len());
            for p in 0..64 {
                let replicas = placement.replicas(p);
                prop_assert_eq!(replicas.len(), width);
                prop_assert_eq!(set(&placement, p).len(), width);
                prop_assert_eq!(replicas.first().copied(), ring.owner_of_partition(p));
                let spread: BTreeSet<&str> = replicas
                    .iter()
                    .map(|r| members.iter().find(|m| m.0 == *r).map_or("", |m| m.2.as_str()))
                    .collect();
                prop_assert_eq!(spread.len(), width.min(zones.len()));
            }
        }

        #[test]
        fn a_join_or_leave_replaces_at_most_one_replica(
            members in members_strategy(), factor in 1u32..=5, zone in 0u8..5, weight in 1u32..=3,
        ) {
            let zoned = members.iter().any(|m| !m.2.is_empty());
            let joiner = ("new".to_string(), weight, if zoned { format!("z{zone}") } else { String::new() });
            let before = build(&members, factor);
            let mut with = members.clone();
            with.push(joiner.clone());
            let after = build(&with, factor);
            for p in 0..64 {
                let (old, new) = (set(&before, p), set(&after, p));
                // Join: only the joiner comes in.
                prop_assert!(new.difference(&old).all(|n| *n == joiner.0), "p{} {:?} -> {:?}", p, old, new);
                // The same pair read backwards is a leave of the joiner: only it goes.
                prop_assert!(new.len() >= old.len());
                prop_assert!(old.difference(&new).count() <= 1);
            }
        }

        #[test]
        fn placement_ignores_member_order(members in members_strategy(), factor in 1u32..=5) {
            let mut reversed = members.clone();
            reversed.reverse();
            prop_assert_eq!(build(&members, factor), build(&reversed, factor));
        }
    }
}
