//! Properties of the consistent-hash ring: determinism, minimal movement on join and leave,
//! full coverage (proptest over random member sets with small parameters), and the balance and
//! movement figures at the default parameters (fixed inputs, so the figures are exact and
//! asserted; run with `--nocapture` to see them).

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::sample::Index;
use routemq_node::ring::{PartitionMove, Ring, RingParams};

/// Small parameters keep each proptest case fast.
const SMALL: RingParams = RingParams {
    partitions: 1024,
    vnodes_per_weight: 64,
};

/// Node ids: a few characters from the sets real ids use (names, host:port).
fn node_id() -> impl Strategy<Value = String> {
    "[a-z0-9.:-]{1,12}"
}

/// 1 to 30 members with distinct ids and weights 1 to 3.
fn member_set() -> impl Strategy<Value = BTreeMap<String, u32>> {
    prop::collection::btree_map(node_id(), 1..=3u32, 1..=30)
}

fn owners(ring: &Ring) -> Vec<Option<&str>> {
    (0..ring.params().partitions)
        .map(|p| ring.owner_of_partition(p))
        .collect()
}

proptest! {
    // Integration tests have no source file proptest can keep regressions next to; a failure
    // prints its minimal input instead.
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Building twice, or from the members listed in another order, gives the same table.
    #[test]
    fn build_is_deterministic(
        (members, shuffled) in member_set().prop_flat_map(|members| {
            let listed: Vec<(String, u32)> = members.into_iter().collect();
            (Just(listed.clone()), Just(listed).prop_shuffle())
        })
    ) {
        let first = Ring::build(&SMALL, members.clone()).unwrap();
        let again = Ring::build(&SMALL, members).unwrap();
        let reordered = Ring::build(&SMALL, shuffled).unwrap();
        prop_assert_eq!(first.owners_table(), again.owners_table());
        prop_assert_eq!(first.owners_table(), reordered.owners_table());
    }

    /// With at least one member, every partition has an owner, and the counts add up.
    #[test]
    fn every_partition_has_an_owner(members in member_set()) {
        let ring = Ring::build(&SMALL, members.clone()).unwrap();
        prop_assert!(owners(&ring).iter().all(Option::is_some));
        let counts = ring.partitions_per_node();
        prop_assert_eq!(counts.len(), members.len());
        prop_assert_eq!(counts.values().sum::<u32>(), SMALL.partitions);
    }

    /// A join moves partitions only to the new member.
    #[test]
    fn join_moves_partitions_only_to_the_new_member(
        members in member_set(),
        joiner in node_id(),
        weight in 1..=3u32,
    ) {
        prop_assume!(!members.contains_key(&joiner));
        let before = Ring::build(&SMALL, members.clone()).unwrap();
        let after = Ring::build(&SMALL, members.into_iter().chain([(joiner.clone(), weight)])).unwrap();
        let moves = before.diff(&after).unwrap();
        for PartitionMove { to, .. } in &moves {
            prop_assert_eq!(to.as_deref(), Some(joiner.as_str()));
        }
        prop_assert_eq!(moves.len() as u32, after.partitions_per_node()[joiner.as_str()]);
    }

    /// A leave moves exactly the leaver's partitions, to the remaining members.
    #[test]
    fn leave_moves_only_the_leavers_partitions(
        members in member_set().prop_filter("needs two members", |m| m.len() >= 2),
        leaver in any::<Index>(),
    ) {
        let leaver = leaver.get(&members.keys().collect::<Vec<_>>()).to_string();
        let before = Ring::build(&SMALL, members.clone()).unwrap();
        let remaining = members.into_iter().filter(|(id, _)| *id != leaver);
        let after = Ring::build(&SMALL, remaining).unwrap();
        let moves = before.diff(&after).unwrap();
        for PartitionMove { from, to, .. } in &moves {
            prop_assert_eq!(from.as_deref(), Some(leaver.as_str()));
            prop_assert!(to.is_some());
        }
        prop_assert_eq!(moves.len() as u32, before.partitions_per_node()[leaver.as_str()]);
    }

    /// The table survives a trip through `owners_table` and `from_table`.
    #[test]
    fn table_round_trips(members in member_set()) {
        let ring = Ring::build(&SMALL, members).unwrap();
        let (nodes, owner_indices) = ring.owners_table();
        let rebuilt = Ring::from_table(&SMALL, nodes.to_vec(), owner_indices.to_vec()).unwrap();
        prop_assert_eq!(rebuilt, ring);
    }
}

/// Two naming schemes, so the figures do not depend on one lucky family of ids.
fn named(scheme: &str, count: usize) -> Vec<(String, u32)> {
    (0..count)
        .map(|i| match scheme {
            "node" => (format!("node-{i}"), 1),
            _ => (format!("10.0.{}.{}:7001", i / 256, i % 256), 1),
        })
        .collect()
}

/// Largest share over the mean share.
fn max_over_mean(ring: &Ring) -> f64 {
    let counts = ring.partitions_per_node();
    let max = counts.values().copied().max().unwrap_or(0);
    let mean = f64::from(ring.params().partitions) / counts.len() as f64;
    f64::from(max) / mean
}

/// Balance and movement at the default parameters, against the bounds the design promises:
/// max/mean partitions per node at most 1.15 at 10 nodes and 1.25 at 100; a join moves at most
/// 1.15 × P/(N+1) partitions, all to the joiner; a leave moves exactly the leaver's partitions.
#[test]
fn default_params_meet_balance_and_movement_figures() {
    let params = RingParams::default();
    let partitions = f64::from(params.partitions);
    let mut failures = Vec::new();

    for scheme in ["node", "ip"] {
        for (n, bound) in [(10, 1.15), (100, 1.25)] {
            let ring = Ring::build(&params, named(scheme, n)).unwrap();
            let ratio = max_over_mean(&ring);
            let min = ring.partitions_per_node().values().copied().min().unwrap_or(0);
            let mean = partitions / n as f64;
            println!(
                "balance  scheme={scheme:<4} N={n:<3} max/mean={ratio:.3} min/mean={:.3} (bound {bound})",
                f64::from(min) / mean
            );
            if ratio > bound {
                failures.push(format!("balance {scheme} N={n}: max/mean {ratio:.3} > {bound}"));
            }
        }

        for n in [3, 10, 100] {
            let members = named(scheme, n + 1);
            let before = Ring::build(&params, members[..n].to_vec()).unwrap();
            let after = Ring::build(&params, members.clone()).unwrap();
            let joiner = members[n].0.as_str();
            let moves = before.diff(&after).unwrap();
            let ideal = partitions / (n + 1) as f64;
            let ratio = moves.len() as f64 / ideal;
            println!(
                "join     scheme={scheme:<4} N={n:<3} moved={:<5} ideal P/(N+1)={ideal:.0} ratio={ratio:.3} (bound 1.15)",
                moves.len()
            );
            if ratio > 1.15 {
                failures.push(format!("join {scheme} N={n}: moved/ideal {ratio:.3} > 1.15"));
            }
            if moves.iter().any(|m| m.to.as_deref() != Some(joiner)) {
                failures.push(format!(
                    "join {scheme} N={n}: a partition moved elsewhere than {joiner}"
                ));
            }

            // Leave: the joiner leaves again, and so does the first original member.
            for leaver in [joiner, members[0].0.as_str()] {
                let remaining = members.iter().filter(|(id, _)| id != leaver).cloned();
                let left = Ring::build(&params, remaining).unwrap();
                let moves = after.diff(&left).unwrap();
                let owned = after.partitions_per_node()[leaver];
                let receivers: BTreeSet<_> = moves.iter().filter_map(|m| m.to.clone()).collect();
                println!(
                    "leave    scheme={scheme:<4} N={:<3} leaver={leaver:<14} owned={owned:<5} moved={:<5} receivers={}",
                    n + 1,
                    moves.len(),
                    receivers.len()
                );
                if moves.len() != owned as usize
                    || moves
                        .iter()
                        .any(|m| m.from.as_deref() != Some(leaver) || m.to.is_none())
                {
                    failures.push(format!(
                        "leave {scheme} N={}: {leaver} owned {owned} but {} partitions moved",
                        n + 1,
                        moves.len()
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "figures out of bounds:\n{}",
        failures.join("\n")
    );
}

/// Weights split partitions proportionally: at the default parameters each unit of weight gets
/// about the same share.
#[test]
fn weights_split_partitions_proportionally() {
    let members = [("a", 1), ("b", 2), ("c", 3), ("d", 1), ("e", 1)];
    let ring = Ring::build(&RingParams::default(), members).unwrap();
    let counts = ring.partitions_per_node();
    let per_weight = f64::from(RingParams::default().partitions) / 8.0;
    for (id, weight) in members {
        let share = f64::from(counts[id]) / (per_weight * f64::from(weight));
        println!(
            "weights  node={id} weight={weight} partitions={} share/ideal={share:.3}",
            counts[id]
        );
        assert!(
            (0.85..=1.15).contains(&share),
            "{id}: {share:.3} of its ideal share"
        );
    }
}

/// Pins the algorithm: a digest of the owner table for fixed members, plus the partitions of a
/// few keys. Any change to hashing, encoding or tie-breaking, on any machine, fails this test.
/// Clients that compute the ring themselves can use these values as test vectors.
#[test]
fn owner_table_digest_is_pinned() {
    let members = [("node-a", 1), ("node-b", 2), ("10.0.0.3:7001", 1), ("ñode-ü", 3)];
    let ring = Ring::build(&RingParams::default(), members).unwrap();
    let (nodes, owner_indices) = ring.owners_table();
    let mut hasher = blake3::Hasher::new();
    for node in nodes {
        hasher.update(node.as_bytes());
        hasher.update(&[0xff]);
    }
    for index in owner_indices {
        hasher.update(&index.to_le_bytes());
    }
    let digest = hasher.finalize().to_hex();
    let counts = ring.partitions_per_node();
    println!("pinned   digest={digest} partitions_per_node={counts:?}");

    let keys: Vec<(&str, u32)> = ["", "device-42", "sensors/abc/data", "ключ"]
        .into_iter()
        .map(|key| (key, ring.locate(key).partition))
        .collect();
    println!("pinned   key partitions={keys:?}");

    // Cross-checked against an independent Python implementation of the documented algorithm.
    assert_eq!(
        digest.as_str(),
        "366685810fed66929769d65d9fe8d4bf2a0aff81b3eedcbae316b246de2521a6"
    );
    let expected_counts = [
        ("10.0.0.3:7001", 2230),
        ("node-a", 2144),
        ("node-b", 4965),
        ("ñode-ü", 7045),
    ];
    assert_eq!(counts, BTreeMap::from(expected_counts));
    assert_eq!(
        keys,
        vec![
            ("", 5039),
            ("device-42", 1213),
            ("sensors/abc/data", 8218),
            ("ключ", 11560)
        ]
    );
}
