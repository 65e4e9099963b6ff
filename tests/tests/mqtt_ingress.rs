//! 3 nodes + a real Mosquitto: 10,000 messages over 500 keys, half published over MQTT QoS 1
//! by real MQTT clients and half over gRPC to random nodes; every key's journal on its owner
//! holds all of its messages, in producer order, once each.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use rand::{Rng, SeedableRng};
use routemq_proto::v1 as pb;
use routemq_tests::{ordered_journal_route, read_journal_with, Mosquitto, TestCluster};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

const KEYS: usize = 500;
const PER_KEY: usize = 20;
const MQTT_PRODUCERS: usize = 5;

fn seq_of(entry: &pb::JournalEntry) -> usize {
    String::from_utf8_lossy(&entry.payload)
        .split('|')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(usize::MAX)
}

#[tokio::test(flavor = "multi_thread")]
async fn mqtt_and_grpc_messages_are_journaled_in_order_once_each() -> Result<()> {
    let mut cluster = TestCluster::new()?;
    let broker = Mosquitto::start(&cluster).await?;
    cluster.extra_args = vec!["--mqtt".into(), broker.addr.clone()];
    cluster.add_node("n1", &["--bootstrap"])?;
    let seed = cluster.node("n1").gossip();
    cluster.add_node("n2", &["--seed", &seed])?;
    cluster.add_node("n3", &["--seed", &seed])?;
    for id in ["n1", "n2", "n3"] {
        cluster.wait_ready(id, Duration::from_secs(60)).await?;
    }
    cluster
        .put_route(ordered_journal_route("telemetry", "sensors/{device_id}/data"))
        .await?;
    // Let every node apply the route and the holder subscribe.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let started = Instant::now();
    // MQTT producers: keys 0..250, each producer owns keys k % 5 == p, publishes in seq order.
    let mut producers = Vec::new();
    for producer in 0..MQTT_PRODUCERS {
        let (host, port) = broker
            .addr
            .rsplit_once(':')
            .map(|(h, p)| (h.to_string(), p.parse::<u16>().unwrap_or(1883)))
            .unwrap_or_default();
        producers.push(tokio::spawn(async move {
            let mut options = MqttOptions::new(format!("producer-{producer}"), host, port);
            options.set_keep_alive(Duration::from_secs(30));
            options.set_inflight(100);
            let (client, mut eventloop) = AsyncClient::new(options, 1000);
            let total = (0..KEYS / 2).filter(|k| k % MQTT_PRODUCERS == producer).count() * PER_KEY;
            let publisher = tokio::spawn(async move {
                for seq in 0..PER_KEY {
                    for key in (0..KEYS / 2).filter(|k| k % MQTT_PRODUCERS == producer) {
                        client
                            .publish(
                                format!("sensors/dev-{key}/data"),
                                QoS::AtLeastOnce,
                                false,
                                format!("dev-{key}|{seq}").into_bytes(),
                            )
                            .await?;
                    }
                }
                Ok::<AsyncClient, anyhow::Error>(client)
            });
            let mut acked = 0;
            let deadline = Instant::now() + Duration::from_secs(120);
            while acked < total && Instant::now() < deadline {
                if let Event::Incoming(Packet::PubAck(_)) = eventloop.poll().await? {
                    acked += 1;
                }
            }
            let client = publisher.await??;
            let _ = client.disconnect().await;
            ensure!(acked == total, "producer {producer}: {acked} of {total} PUBACKs");
            Ok::<usize, anyhow::Error>(acked)
        }));
    }
    // gRPC producers: keys 250..500 to random nodes.
    let mut clients = Vec::new();
    for id in ["n1", "n2", "n3"] {
        clients.push(cluster.messages(id).await?);
    }
    let mut grpc = Vec::new();
    for producer in 0..25usize {
        let clients = clients.clone();
        grpc.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(producer as u64);
            for seq in 0..PER_KEY {
                for key in (KEYS / 2..KEYS).filter(|k| k % 25 == producer) {
                    let mut client = clients[rng.random_range(0..clients.len())].clone();
                    client
                        .publish(pb::PublishRequest {
                            topic: format!("sensors/dev-{key}/data"),
                            payload: format!("dev-{key}|{seq}").into_bytes(),
                            message_id: format!("dev-{key}-{seq}"),
                            request_id: 0,
                        })
                        .await?;
                }
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    for p in producers {
        p.await??;
    }
    for p in grpc {
        p.await??;
    }
    println!(
        "published {} messages (half MQTT QoS 1, half gRPC) in {:?}",
        KEYS * PER_KEY,
        started.elapsed()
    );

    // MQTT messages are acknowledged by the broker before the cluster processes them; wait
    // (bounded) until every journal is complete, then check order and uniqueness.
    let mut readers = clients.clone();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for key in 0..KEYS {
        let name = format!("dev-{key}");
        let reader = &mut readers[key % 3];
        let entries = loop {
            let entries = read_journal_with(reader, "telemetry", &name).await?;
            if entries.len() >= PER_KEY || Instant::now() > deadline {
                break entries;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let seqs: Vec<usize> = entries.iter().map(seq_of).collect();
        ensure!(seqs == (0..PER_KEY).collect::<Vec<_>>(), "key {name}: {seqs:?}");
        for e in &entries {
            *per_node.entry(e.processed_by.clone()).or_default() += 1;
        }
    }
    println!(
        "all {} messages journaled in order once each after {:?}; per owner {per_node:?}",
        KEYS * PER_KEY,
        started.elapsed()
    );
    drop(broker);
    Ok(())
}
