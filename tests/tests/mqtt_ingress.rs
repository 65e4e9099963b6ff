//! 3 nodes + a real Mosquitto: 10,000 messages over 500 keys, half published over MQTT QoS 1
//! by real MQTT clients and half over gRPC to random nodes; every key's journal on its owner
//! holds all of its messages, in producer order, once each. A route that reads message ids
//! from JSON payloads (`message_id_field`) journals a message delivered twice once. A node whose
//! broker is down is not ready, says why in `/ready`, and is ready again once the broker is back.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use rand::{Rng, SeedableRng};
use routemq_proto::v1 as pb;
use routemq_tests::{http_get, ordered_journal_route, read_journal_with, Mosquitto, TestCluster};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

const KEYS: usize = 500;
const PER_KEY: usize = 20;
const MQTT_PRODUCERS: usize = 5;

/// A real Mosquitto and three nodes joined through n1, all ready.
async fn three_nodes_with_broker() -> Result<(TestCluster, Mosquitto)> {
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
    Ok((cluster, broker))
}

fn seq_of(entry: &pb::JournalEntry) -> usize {
    String::from_utf8_lossy(&entry.payload)
        .split('|')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(usize::MAX)
}

#[tokio::test(flavor = "multi_thread")]
async fn mqtt_and_grpc_messages_are_journaled_in_order_once_each() -> Result<()> {
    let (cluster, broker) = three_nodes_with_broker().await?;
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

/// Publishes `messages` at QoS 1 from one MQTT client, in order, and waits for every PUBACK.
async fn mqtt_publish(broker: &str, client_id: &str, messages: Vec<(String, Vec<u8>)>) -> Result<()> {
    let (host, port) = broker
        .rsplit_once(':')
        .map(|(h, p)| (h.to_string(), p.parse::<u16>().unwrap_or(1883)))
        .unwrap_or_default();
    let mut options = MqttOptions::new(client_id, host, port);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 100);
    let total = messages.len();
    let publisher = tokio::spawn(async move {
        for (topic, payload) in messages {
            client.publish(topic, QoS::AtLeastOnce, false, payload).await?;
        }
        Ok::<AsyncClient, anyhow::Error>(client)
    });
    let mut acked = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked < total {
        ensure!(
            Instant::now() < deadline,
            "{client_id}: {acked} of {total} PUBACKs"
        );
        if let Ok(Ok(Event::Incoming(Packet::PubAck(_)))) =
            tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await
        {
            acked += 1;
        }
    }
    let client = publisher.await??;
    let _ = client.disconnect().await;
    Ok(())
}

/// Sum of a counter's samples for `route` over every node's `/metrics`.
async fn counter_total(cluster: &TestCluster, name: &str, route: &str) -> Result<f64> {
    let mut total = 0.0;
    for id in ["n1", "n2", "n3"] {
        let (_, body) = http_get(&cluster.node(id).http(), "/metrics").await?;
        total += body
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(&format!("route=\"{route}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    Ok(total)
}

/// Reads a journal, retrying for up to 30 s while the cluster answers `Unavailable` (a
/// partition still being handed over after the joins).
async fn read_settled(
    reader: &mut pb::messages_client::MessagesClient<tonic::transport::Channel>,
    route: &str,
    key: &str,
) -> Result<Vec<pb::JournalEntry>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match read_journal_with(reader, route, key).await {
            Ok(entries) => return Ok(entries),
            Err(e) if Instant::now() < deadline && format!("{e:#}").contains("unavailable") => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_delivered_twice_are_journaled_once_by_their_payload_id() -> Result<()> {
    let (cluster, broker) = three_nodes_with_broker().await?;
    cluster
        .put_route(pb::Route {
            message_id_field: "/id".into(),
            ..ordered_journal_route("ids", "ids/{device_id}/data")
        })
        .await?;
    let mut reader = cluster.messages("n1").await?;

    // Until the holder has subscribed the broker drops what we publish: send one probe, with
    // one id, until it is journaled. However many copies arrive, the journal keeps one.
    let probe = || vec![("ids/probe/data".to_string(), br#"{"id":"probe-1"}"#.to_vec())];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        mqtt_publish(&broker.addr, "probe", probe()).await?;
        // Right after the joins, partitions may still be handed over (`Unavailable`).
        if read_journal_with(&mut reader, "ids", "probe")
            .await
            .is_ok_and(|entries| !entries.is_empty())
        {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the route's ingress never took a message"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    mqtt_publish(&broker.addr, "probe", probe()).await?;

    // Every message of dev-a twice (same payload, same id), as a broker redelivery or a
    // producer's resend would have it: the first copies from one client, the second from
    // another; and a payload that is not JSON twice.
    let json = |seq: usize| format!(r#"{{"id":"a-{seq}","seq":{seq},"t":21.5}}"#).into_bytes();
    let first: Vec<(String, Vec<u8>)> = (0..20)
        .map(|seq| ("ids/dev-a/data".to_string(), json(seq)))
        .collect();
    let mut second = first.clone();
    second.push(("ids/dev-b/data".to_string(), b"21.5 C".to_vec()));
    second.push(("ids/dev-b/data".to_string(), b"21.5 C".to_vec()));
    mqtt_publish(&broker.addr, "producer-1", first).await?;
    mqtt_publish(&broker.addr, "producer-2", second).await?;
    // The ordered ingress dispatches different keys concurrently: wait for both keys (dev-a's
    // 20 distinct messages, dev-b's 2), bounded.
    let deadline = Instant::now() + Duration::from_secs(60);
    let dev_b = loop {
        let entries = read_settled(&mut reader, "ids", "dev-b").await?;
        let dev_a = read_settled(&mut reader, "ids", "dev-a").await?;
        if (entries.len() >= 2 && dev_a.len() >= 20) || Instant::now() > deadline {
            break entries;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // gRPC without a message id, once the MQTT copies are in: the id comes from the payload
    // as well, and the journal already has it.
    let answer = cluster
        .messages("n2")
        .await?
        .publish(pb::PublishRequest {
            topic: "ids/dev-a/data".into(),
            payload: json(3),
            ..Default::default()
        })
        .await?
        .into_inner();
    ensure!(
        answer.message_id == "a-3",
        "gRPC publish got id {:?}",
        answer.message_id
    );

    let dev_a = read_settled(&mut reader, "ids", "dev-a").await?;
    let ids: Vec<&str> = dev_a.iter().map(|e| e.message_id.as_str()).collect();
    let expected: Vec<String> = (0..20).map(|seq| format!("a-{seq}")).collect();
    ensure!(ids == expected, "dev-a journal holds {ids:?}");
    let probes = read_settled(&mut reader, "ids", "probe").await?;
    ensure!(probes.len() == 1, "{} probe entries", probes.len());
    // Without an id in the payload each copy is a message of its own, with a generated id.
    ensure!(dev_b.len() == 2, "dev-b journal holds {} entries", dev_b.len());
    ensure!(
        dev_b[0].message_id != dev_b[1].message_id && dev_b.iter().all(|e| e.message_id.len() == 36),
        "generated ids: {:?}",
        dev_b.iter().map(|e| &e.message_id).collect::<Vec<_>>()
    );
    let missing = counter_total(&cluster, "routemq_message_id_missing_total", "ids").await?;
    ensure!(
        missing >= 2.0,
        "routemq_message_id_missing_total for route ids: {missing}"
    );
    println!(
        "40 MQTT deliveries of 20 messages and a gRPC copy: {} entries; 2 payloads without an id: {} entries, counted {missing}",
        dev_a.len(),
        dev_b.len()
    );
    drop(broker);
    Ok(())
}

/// Polls `/ready` until `want(code, body)` holds; the last answer otherwise.
async fn wait_for_ready_answer(
    http: &str,
    within: Duration,
    want: impl Fn(u16, &str) -> bool,
) -> Result<(u16, String)> {
    let deadline = Instant::now() + within;
    loop {
        let answer = http_get(http, "/ready").await?;
        if want(answer.0, &answer.1) || Instant::now() > deadline {
            return Ok(answer);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_down_makes_the_node_not_ready_with_the_reason() -> Result<()> {
    let mut cluster = TestCluster::new()?;
    let broker = Mosquitto::start(&cluster).await?;
    cluster.extra_args = vec!["--mqtt".into(), broker.addr.clone()];
    cluster.add_node("n1", &["--bootstrap"])?;
    cluster.wait_ready("n1", Duration::from_secs(60)).await?;
    // A shared route: the node holds its worker connections to the broker.
    cluster
        .put_route(pb::Route {
            name: "events".into(),
            pattern: "events/#".into(),
            mode: pb::RouteMode::Shared as i32,
            worker_count: 2,
            qos: 1,
            handler: Some(pb::Handler {
                kind: Some(pb::handler::Kind::Log(pb::LogHandler {})),
            }),
            ..Default::default()
        })
        .await?;
    let http = cluster.node("n1").http();
    let connected = |code: u16, body: &str| code == 200 && body.contains(r#""connected":2"#);
    let (code, body) = wait_for_ready_answer(&http, Duration::from_secs(20), connected).await?;
    ensure!(connected(code, &body), "with the broker up: {code} {body}");

    drop(broker);
    let (code, body) = wait_for_ready_answer(&http, Duration::from_secs(20), |code, _| code == 503).await?;
    ensure!(
        code == 503 && body.contains("MQTT broker unreachable"),
        "with the broker down: {code} {body}"
    );
    let (_, metrics) = http_get(&http, "/metrics").await?;
    let up: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("routemq_mqtt_connected{") && l.contains(r#"route="events""#))
        .collect();
    ensure!(
        up.len() == 2 && up.iter().all(|l| l.ends_with(" 0")),
        "routemq_mqtt_connected with the broker down: {up:?}"
    );
    println!("broker down: /ready {code} {body}");

    // Back up: the ingress reconnects (backoff) and the node is ready again.
    let broker = Mosquitto::start(&cluster).await?;
    let (code, body) = wait_for_ready_answer(&http, Duration::from_secs(45), connected).await?;
    ensure!(connected(code, &body), "with the broker back: {code} {body}");
    drop(broker);
    Ok(())
}
