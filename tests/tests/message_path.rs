//! The message path on 3 real nodes: messages published to random nodes reach their key's
//! owner, are journaled there in producer order, once each; shared routes run everywhere; bad
//! input is refused with a clear error and disturbs nothing.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use rand::{Rng, SeedableRng};
use routemq_proto::v1 as pb;
use routemq_tests::{http_get, ordered_journal_route, read_journal_with, TestCluster};

const KEYS: usize = 500;
const PER_KEY: usize = 20; // 10,000 messages

fn payload(key: usize, seq: usize) -> Vec<u8> {
    format!("dev-{key}|{seq}").into_bytes()
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_publishes_reach_owners_in_order_once_each() -> Result<()> {
    let cluster = TestCluster::start(3).await?;
    cluster
        .put_route(ordered_journal_route("telemetry", "sensors/{device_id}/data"))
        .await?;
    // Routes are in the config; wait until every node applied them.
    for id in ["n1", "n2", "n3"] {
        let mut routes = cluster.routes(id).await?;
        TestCluster::eventually(Duration::from_secs(10), "route applied", || {
            let mut routes = routes.clone();
            async move {
                let r = routes
                    .get_route(pb::GetRouteRequest {
                        name: "telemetry".into(),
                        consistency: pb::ReadConsistency::Local as i32,
                    })
                    .await?
                    .into_inner();
                Ok(r.route.map(|_| ()))
            }
        })
        .await?;
        let listed = routes
            .list_routes(pb::ListRoutesRequest {
                consistency: pb::ReadConsistency::Local as i32,
            })
            .await?
            .into_inner();
        ensure!(
            listed.routes.len() == 1,
            "{id} lists {} routes",
            listed.routes.len()
        );
    }

    // 50 producers, each owning 10 keys, each publishing its keys' messages in order to random
    // nodes; one message in flight per producer.
    let started = Instant::now();
    let mut producers = Vec::new();
    let nodes: Vec<String> = vec!["n1".into(), "n2".into(), "n3".into()];
    let mut clients = Vec::new();
    for id in &nodes {
        clients.push(cluster.messages(id).await?);
    }
    for producer in 0..50 {
        let clients = clients.clone();
        producers.push(tokio::spawn(async move {
            let keys: Vec<usize> = (0..KEYS).filter(|k| k % 50 == producer).collect();
            let mut rng = rand::rngs::StdRng::seed_from_u64(producer as u64);
            for seq in 0..PER_KEY {
                for &key in &keys {
                    let mut client = clients[rng.random_range(0..clients.len())].clone();
                    let request = pb::PublishRequest {
                        topic: format!("sensors/dev-{key}/data"),
                        payload: payload(key, seq),
                        message_id: format!("dev-{key}-{seq}"),
                        request_id: 0,
                    };
                    // Retry on Unavailable: duplicates are suppressed by message id.
                    let mut attempts = 0;
                    loop {
                        match client.publish(request.clone()).await {
                            Ok(_) => break,
                            Err(status) if status.code() == tonic::Code::Unavailable && attempts < 20 => {
                                attempts += 1;
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            Err(status) => anyhow::bail!("publish dev-{key}/{seq}: {status}"),
                        }
                    }
                }
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    for producer in producers {
        producer.await??;
    }
    let elapsed = started.elapsed();
    println!(
        "published {} messages in {elapsed:?} ({:.0}/s, unary, 50 producers)",
        KEYS * PER_KEY,
        (KEYS * PER_KEY) as f64 / elapsed.as_secs_f64()
    );

    // Every key's journal, read through a random node, holds its messages in order, once each,
    // processed by the key's owner.
    let client = cluster.client().await?;
    let table = client.partitions(pb::ReadConsistency::Linearizable).await?;
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for key in 0..KEYS {
        let key_name = format!("dev-{key}");
        let partition = client
            .locate(key_name.clone(), pb::ReadConsistency::Local)
            .await?
            .partition;
        let owner = table.nodes[table.owners[partition as usize] as usize].clone();
        let reader = &mut clients[key % nodes.len()];
        let entries = read_journal_with(reader, "telemetry", &key_name).await?;
        let seqs: Vec<usize> = entries
            .iter()
            .map(|e| {
                String::from_utf8_lossy(&e.payload)
                    .split('|')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(usize::MAX)
            })
            .collect();
        ensure!(
            seqs == (0..PER_KEY).collect::<Vec<_>>(),
            "key {key_name}: journal seqs {seqs:?}"
        );
        ensure!(
            entries.iter().all(|e| e.processed_by == owner),
            "key {key_name} processed off-owner"
        );
        ensure!(
            entries.iter().enumerate().all(|(i, e)| e.offset == i as u64),
            "key {key_name}: offsets have gaps"
        );
        *per_node.entry(owner).or_default() += entries.len();
    }
    println!("journaled per owner: {per_node:?}");
    ensure!(per_node.len() == 3, "every node owns some keys: {per_node:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn shared_route_runs_on_every_node_and_bad_input_is_refused() -> Result<()> {
    let cluster = TestCluster::start(3).await?;
    cluster
        .put_route(ordered_journal_route("telemetry", "sensors/{device_id}/data"))
        .await?;
    cluster
        .put_route(pb::Route {
            name: "events".into(),
            pattern: "events/#".into(),
            mode: pb::RouteMode::Shared as i32,
            worker_count: 2,
            handler: Some(pb::Handler {
                kind: Some(pb::handler::Kind::Log(pb::LogHandler {})),
            }),
            ..Default::default()
        })
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (i, id) in ["n1", "n2", "n3"].iter().enumerate() {
        let mut client = cluster.messages(id).await?;
        for j in 0..20 {
            client
                .publish(pb::PublishRequest {
                    topic: format!("events/{i}/{j}"),
                    payload: b"e".to_vec(),
                    ..Default::default()
                })
                .await?;
        }
    }
    for id in ["n1", "n2", "n3"] {
        let (_, metrics) = http_get(&cluster.node(id).http(), "/metrics").await?;
        let processed = metrics
            .lines()
            .find(|l| l.starts_with("routemq_messages_processed_total") && l.contains("route=\"events\""))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        ensure!(processed >= 20.0, "{id} processed {processed} shared messages");
    }

    // Some good traffic to check it is undisturbed afterwards.
    let mut client = cluster.messages("n2").await?;
    for seq in 0..5 {
        client
            .publish(pb::PublishRequest {
                topic: "sensors/dev-x/data".into(),
                payload: format!("dev-x|{seq}").into_bytes(),
                message_id: format!("x-{seq}"),
                request_id: 0,
            })
            .await?;
    }
    let bad = [
        (
            "nothing/matches/this",
            b"p".to_vec(),
            tonic::Code::NotFound,
            "no route matches",
        ),
        (
            "sensors/+/data",
            b"p".to_vec(),
            tonic::Code::InvalidArgument,
            "invalid topic",
        ),
        ("", b"p".to_vec(), tonic::Code::InvalidArgument, "invalid topic"),
        (
            "sensors/dev-x/data",
            vec![0u8; 300 * 1024],
            tonic::Code::InvalidArgument,
            "exceeds the limit",
        ),
    ];
    for (topic, payload, code, text) in bad {
        let err = client
            .publish(pb::PublishRequest {
                topic: topic.into(),
                payload,
                ..Default::default()
            })
            .await
            .expect_err("bad input must fail");
        ensure!(
            err.code() == code && err.message().contains(text),
            "{topic:?}: {err:?}"
        );
    }
    let mut routes = cluster.routes("n1").await?;
    let leader = cluster
        .client()
        .await?
        .status(pb::ReadConsistency::Linearizable)
        .await?
        .raft_leader;
    let mut leader_routes = cluster.routes(&leader).await?;
    let err = leader_routes
        .delete_route(pb::DeleteRouteRequest {
            name: "no-such-route".into(),
            expected_version: None,
        })
        .await
        .expect_err("unknown route");
    ensure!(err.code() == tonic::Code::NotFound, "{err:?}");
    let err = leader_routes
        .put_route(pb::PutRouteRequest {
            route: Some(pb::Route {
                key_param: "nope".into(),
                ..ordered_journal_route("broken", "a/{device_id}")
            }),
            expected_version: None,
        })
        .await
        .expect_err("key param not in pattern");
    ensure!(err.code() == tonic::Code::InvalidArgument, "{err:?}");
    // Compare-and-set: a stale version is refused.
    let current = routes
        .get_route(pb::GetRouteRequest {
            name: "telemetry".into(),
            consistency: 0,
        })
        .await;
    let version = match current {
        Ok(r) => r.into_inner().route.map(|r| r.version).unwrap_or(0),
        Err(_) => leader_routes
            .get_route(pb::GetRouteRequest {
                name: "telemetry".into(),
                consistency: 0,
            })
            .await?
            .into_inner()
            .route
            .map(|r| r.version)
            .unwrap_or(0),
    };
    let err = leader_routes
        .put_route(pb::PutRouteRequest {
            route: Some(ordered_journal_route("telemetry", "sensors/{device_id}/data")),
            expected_version: Some(version + 1000),
        })
        .await
        .expect_err("stale version");
    ensure!(err.code() == tonic::Code::FailedPrecondition, "{err:?}");

    // Rejections are counted, and the journal is intact.
    let (_, metrics) = http_get(&cluster.node("n2").http(), "/metrics").await?;
    ensure!(
        metrics.contains("routemq_messages_rejected_total{reason=\"no_route\"}"),
        "no_route metric"
    );
    ensure!(
        metrics.contains("routemq_messages_rejected_total{reason=\"payload_too_large\"}"),
        "too large metric"
    );
    let entries = cluster.read_journal("n3", "telemetry", "dev-x").await?;
    ensure!(entries.len() == 5, "journal intact: {} entries", entries.len());
    Ok(())
}
