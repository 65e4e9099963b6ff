//! kill -9 the Raft leader: a new leader is elected, the config stays readable and writable,
//! and the killed node, restarted with its data directory, rejoins as itself.

use std::time::Duration;

use anyhow::{Context, Result};
use routemq_proto::v1 as pb;
use routemq_tests::TestCluster;

#[tokio::test(flavor = "multi_thread")]
async fn killed_leader_is_replaced_and_rejoins_as_itself() -> Result<()> {
    let mut cluster = TestCluster::start(3).await?;
    let client = cluster.client().await?;
    let before = client.status(pb::ReadConsistency::Linearizable).await?;
    let old_leader = before.raft_leader.clone();
    let old_member = before
        .members
        .iter()
        .find(|m| m.node_id == old_leader)
        .context("leader is a member")?
        .clone();

    let survivor = before
        .members
        .iter()
        .map(|m| m.node_id.clone())
        .find(|id| *id != old_leader)
        .context("a survivor")?;
    let survivor_client = cluster.client_of(&survivor).await?;
    cluster.kill(&old_leader);
    let killed_at = std::time::Instant::now();

    // Measured on a survivor's local view, polled every 20 ms: when it sees a new leader, and
    // when its gossip marks the killed node dead.
    let (mut elected_after, mut dead_after) = (None, None);
    while (elected_after.is_none() || dead_after.is_none()) && killed_at.elapsed() < Duration::from_secs(20) {
        if let Ok(local) = survivor_client.status(pb::ReadConsistency::Local).await {
            if elected_after.is_none() && !local.raft_leader.is_empty() && local.raft_leader != old_leader {
                elected_after = Some(killed_at.elapsed());
            }
            let dead = local
                .members
                .iter()
                .any(|m| m.node_id == old_leader && m.liveness == pb::Liveness::Dead as i32);
            if dead_after.is_none() && dead {
                dead_after = Some(killed_at.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "on {survivor}: new leader after {elected_after:?}, {old_leader} marked dead after {dead_after:?}"
    );

    // A new leader, and a linearizable read through it.
    let after = TestCluster::eventually(Duration::from_secs(20), "new leader", || {
        let client = client.clone();
        let old_leader = old_leader.clone();
        async move {
            let status = client.status(pb::ReadConsistency::Linearizable).await?;
            Ok((!status.raft_leader.is_empty() && status.raft_leader != old_leader).then_some(status))
        }
    })
    .await?;
    println!(
        "new leader {} elected {:?} after kill -9 of {old_leader}",
        after.raft_leader,
        killed_at.elapsed()
    );
    assert!(after.raft_term > before.raft_term);
    assert_eq!(
        after.epoch, before.epoch,
        "a leader change is not an ownership change"
    );

    // Gossip marks the killed node dead.
    TestCluster::eventually(Duration::from_secs(10), "killed node seen dead", || {
        let client = client.clone();
        let old_leader = old_leader.clone();
        async move {
            let status = client.status(pb::ReadConsistency::Linearizable).await?;
            Ok(status
                .members
                .iter()
                .any(|m| m.node_id == old_leader && m.liveness == pb::Liveness::Dead as i32)
                .then_some(()))
        }
    })
    .await?;
    println!(
        "killed node marked dead by gossip {:?} after kill -9",
        killed_at.elapsed()
    );

    // Writable: a new node joins (a committed config change) while the old leader is down.
    let seed = cluster.node(&after.raft_leader).gossip();
    cluster.add_node("n4", &["--seed", &seed])?;
    cluster.wait_ready("n4", Duration::from_secs(60)).await?;
    let with_n4 = client.status(pb::ReadConsistency::Linearizable).await?;
    assert_eq!(with_n4.members.len(), 4);
    assert!(with_n4.epoch > after.epoch);

    // The killed node restarts with its data directory and is the same member again.
    cluster.restart(&old_leader)?;
    cluster.wait_ready(&old_leader, Duration::from_secs(60)).await?;
    let rejoined = TestCluster::eventually(Duration::from_secs(15), "old leader alive again", || {
        let client = client.clone();
        let old_leader = old_leader.clone();
        async move {
            let status = client.status(pb::ReadConsistency::Linearizable).await?;
            let member = status.members.iter().find(|m| m.node_id == old_leader).cloned();
            Ok(member.filter(|m| m.liveness == pb::Liveness::Alive as i32))
        }
    })
    .await?;
    assert_eq!(
        rejoined.raft_id, old_member.raft_id,
        "same incarnation, same raft id"
    );
    assert!(
        rejoined.generation > old_member.generation,
        "a restart is a new gossip generation"
    );
    let final_status = client.status(pb::ReadConsistency::Linearizable).await?;
    assert_eq!(final_status.members.len(), 4);
    Ok(())
}
