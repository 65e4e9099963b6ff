//! Three real processes form a cluster, agree on members and epoch, and answer consistently.

use std::time::{Duration, Instant};

use anyhow::Result;
use routemq_proto::v1 as pb;
use routemq_tests::{http_get, TestCluster};

#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_form_a_cluster_and_agree() -> Result<()> {
    let started = Instant::now();
    let cluster = TestCluster::start(3).await?;
    let formed_in = started.elapsed();
    println!("3-node cluster ready in {formed_in:?}");
    assert!(
        formed_in < Duration::from_secs(30),
        "formation took {formed_in:?}"
    );

    // Linearizable status (through the leader) lists all three, alive, as voters.
    let status = cluster
        .client()
        .await?
        .status(pb::ReadConsistency::Linearizable)
        .await?;
    let ids: Vec<&str> = status.members.iter().map(|m| m.node_id.as_str()).collect();
    assert_eq!(ids, ["n1", "n2", "n3"]);
    assert!(!status.raft_leader.is_empty());
    for member in &status.members {
        assert_eq!(member.raft_role, pb::RaftRole::Voter as i32, "{member:?}");
        assert!(member.partitions > 0, "{member:?}");
    }
    let total: u32 = status.members.iter().map(|m| m.partitions).sum();
    assert_eq!(total, status.partition_count);

    // Every node, read locally, reports the same members and epoch once gossip has converged.
    for id in ["n1", "n2", "n3"] {
        let expected = status.clone();
        TestCluster::eventually(Duration::from_secs(10), &format!("{id} agrees"), || {
            let expected = expected.clone();
            let cluster = &cluster;
            async move {
                let local = cluster.local_status(id).await?;
                let same_members = local
                    .members
                    .iter()
                    .map(|m| (&m.node_id, m.raft_id))
                    .collect::<Vec<_>>()
                    == expected
                        .members
                        .iter()
                        .map(|m| (&m.node_id, m.raft_id))
                        .collect::<Vec<_>>();
                let all_alive = local
                    .members
                    .iter()
                    .all(|m| m.liveness == pb::Liveness::Alive as i32);
                Ok((same_members
                    && all_alive
                    && local.epoch == expected.epoch
                    && local.cluster_id == expected.cluster_id)
                    .then_some(()))
            }
        })
        .await?;
    }

    // Every node locates a key to the same owner.
    let mut owners = Vec::new();
    for id in ["n1", "n2", "n3"] {
        let client = cluster.client_of(id).await?;
        owners.push(
            client
                .locate("device-42", pb::ReadConsistency::Local)
                .await?
                .owner,
        );
    }
    assert!(owners.windows(2).all(|w| w[0] == w[1]), "{owners:?}");

    // HTTP endpoints.
    for id in ["n1", "n2", "n3"] {
        let http = cluster.node(id).http();
        assert_eq!(http_get(&http, "/health").await?.0, 200);
        let (code, body) = http_get(&http, "/ready").await?;
        assert_eq!(code, 200, "{body}");
        let (code, metrics) = http_get(&http, "/metrics").await?;
        assert_eq!(code, 200);
        assert!(metrics.contains("routemq_config_epoch"), "{metrics}");
        assert!(metrics.contains("routemq_partitions_owned"), "{metrics}");
    }

    // SIGTERM to every node at once: each stops cleanly, within the shutdown grace period,
    // although their peers' streams go away at the same moment.
    let mut cluster = cluster;
    let pids: Vec<u32> = ["n1", "n2", "n3"]
        .iter()
        .filter_map(|id| cluster.node(id).pid())
        .collect();
    for pid in &pids {
        unsafe {
            libc::kill(*pid as i32, libc::SIGTERM);
        }
    }
    for id in ["n1", "n2", "n3"] {
        let code = cluster.wait_exit(id, Duration::from_secs(20)).await?;
        assert_eq!(code, Some(0), "{id} exit code");
    }
    Ok(())
}
