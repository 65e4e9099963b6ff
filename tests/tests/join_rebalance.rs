//! A fourth node joins: the partition table changes by about 1/4, all of it towards the new
//! node; removing it again moves exactly its partitions back.

use std::time::Duration;

use anyhow::Result;
use routemq_proto::v1 as pb;
use routemq_tests::TestCluster;

fn owners(table: &pb::PartitionTable) -> Vec<&str> {
    table
        .owners
        .iter()
        .map(|&i| table.nodes[i as usize].as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn fourth_node_takes_about_a_quarter() -> Result<()> {
    let mut cluster = TestCluster::start(3).await?;
    let client = cluster.client().await?;
    let before = client.partitions(pb::ReadConsistency::Linearizable).await?;

    let seed = cluster.node("n2").gossip();
    cluster.add_node("n4", &["--seed", &seed])?;
    cluster.wait_ready("n4", Duration::from_secs(60)).await?;
    let after = client.partitions(pb::ReadConsistency::Linearizable).await?;
    assert!(after.epoch > before.epoch);

    let (old, new) = (owners(&before), owners(&after));
    let moved: Vec<usize> = (0..old.len()).filter(|&p| old[p] != new[p]).collect();
    let p = f64::from(before.partition_count);
    let ratio = moved.len() as f64 / (p / 4.0);
    println!(
        "join moved {} of {} partitions = {ratio:.3} x P/4",
        moved.len(),
        before.partition_count
    );
    assert!(
        moved.iter().all(|&p| new[p] == "n4"),
        "a join moves partitions only to the new node"
    );
    assert!((0.8..=1.15).contains(&ratio), "moved {ratio:.3} x P/4");

    // The status agrees with the table, and learners/voters are as capped.
    let status = client.status(pb::ReadConsistency::Linearizable).await?;
    let n4 = status
        .members
        .iter()
        .find(|m| m.node_id == "n4")
        .expect("n4 is a member");
    assert_eq!(n4.partitions as usize, moved.len());
    let voters = status
        .members
        .iter()
        .filter(|m| m.raft_role == pb::RaftRole::Voter as i32)
        .count();
    assert_eq!(voters, 3, "4 members keep an odd number of voters");

    // Removing n4 moves exactly its partitions, back to their previous owners.
    let removed = client.remove_node("n4").await?;
    assert!(removed.epoch > after.epoch);
    let back = client.partitions(pb::ReadConsistency::Linearizable).await?;
    assert_eq!(owners(&back), old, "leave restores the previous table");
    Ok(())
}
