//! MQTT ingress against a real Mosquitto, with real rumqttc publishers and a fake dispatcher.
//!
//! Every test starts its own broker on a free loopback port and is bounded in time. The bench
//! is ignored by default:
//! `cargo nextest run --workspace --run-ignored only -E 'test(bench_ordered_route_throughput)' --no-capture`
//! (knobs: `BENCH_MESSAGES`, `BENCH_SLOW_MESSAGES`, `BENCH_KEYS`, `BENCH_ORDERED_IN_FLIGHT`).

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use routemq_node::ingress::{
    spawn_ingress, IngressHandle, IngressPlan, IngressSettings, IngressStatus, OrderedSubscription,
    SharedSubscription,
};
use routemq_node::message::{Accepted, Dispatch, InboundMessage, PublishError};
use routemq_testkit::mosquitto::{self, Mosquitto};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// Upper bound for any one test.
const TEST_LIMIT: Duration = Duration::from_secs(120);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

async fn bounded<F: Future<Output = ()>>(body: F) {
    init_tracing();
    tokio::time::timeout(TEST_LIMIT, body)
        .await
        .expect("test exceeded its time limit");
}

// ---------------------------------------------------------------------------------------------
// A fake dispatcher whose answer per call is chosen by a closure.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    Accept,
    /// `Unavailable`: retryable.
    Retry,
    /// `NoRoute`: final.
    NoRoute,
    /// Never answers (a dispatch in flight when the holder dies).
    Hang,
    /// Accepts after this long.
    Slow(Duration),
}

type Behaviour = Box<dyn Fn(u64, &InboundMessage) -> Act + Send + Sync>;

struct FakeDispatcher {
    behaviour: Behaviour,
    calls: AtomicU64,
    /// Every call, in call order.
    attempts: Mutex<Vec<InboundMessage>>,
    /// Every message answered with `Ok`, in answer order.
    accepted: Mutex<Vec<InboundMessage>>,
    /// Time spent in `Act::Slow` dispatches.
    busy: Mutex<Duration>,
    /// Topics with a dispatch running now.
    running: Mutex<Vec<String>>,
    /// Most dispatches running at once.
    max_running: AtomicU64,
    /// Dispatches that started while another of the same topic (ordering key) was running.
    overlaps: AtomicU64,
}

impl FakeDispatcher {
    fn new(behaviour: impl Fn(u64, &InboundMessage) -> Act + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(Self {
            behaviour: Box::new(behaviour),
            calls: AtomicU64::new(0),
            attempts: Mutex::new(Vec::new()),
            accepted: Mutex::new(Vec::new()),
            busy: Mutex::new(Duration::ZERO),
            running: Mutex::new(Vec::new()),
            max_running: AtomicU64::new(0),
            overlaps: AtomicU64::new(0),
        })
    }

    fn accepting() -> Arc<Self> {
        Self::new(|_, _| Act::Accept)
    }

    fn accepted(&self) -> Vec<InboundMessage> {
        self.accepted.lock().unwrap().clone()
    }

    fn accepted_count(&self) -> usize {
        self.accepted.lock().unwrap().len()
    }

    fn attempts(&self) -> Vec<InboundMessage> {
        self.attempts.lock().unwrap().clone()
    }

    fn accepted_seqs(&self) -> Vec<u64> {
        self.accepted().iter().map(seq_of).collect()
    }

    /// Sequence numbers accepted per topic, in answer order.
    fn accepted_by_topic(&self) -> std::collections::BTreeMap<String, Vec<u64>> {
        let mut by_topic = std::collections::BTreeMap::<String, Vec<u64>>::new();
        for m in self.accepted() {
            by_topic.entry(m.topic.clone()).or_default().push(seq_of(&m));
        }
        by_topic
    }
}

/// Removes the topic from the running set when a dispatch ends (or is dropped).
struct Running<'a> {
    dispatcher: &'a FakeDispatcher,
    topic: String,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut running = self.dispatcher.running.lock().unwrap();
        if let Some(i) = running.iter().position(|t| *t == self.topic) {
            running.swap_remove(i);
        }
    }
}

impl Dispatch for FakeDispatcher {
    fn dispatch(
        &self,
        message: InboundMessage,
    ) -> impl Future<Output = Result<Accepted, PublishError>> + Send {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let act = (self.behaviour)(call, &message);
        self.attempts.lock().unwrap().push(message.clone());
        async move {
            let _running = {
                let mut running = self.running.lock().unwrap();
                if running.contains(&message.topic) {
                    self.overlaps.fetch_add(1, Ordering::SeqCst);
                }
                running.push(message.topic.clone());
                self.max_running.fetch_max(running.len() as u64, Ordering::SeqCst);
                Running {
                    dispatcher: self,
                    topic: message.topic.clone(),
                }
            };
            match act {
                Act::Accept => {}
                Act::Slow(d) => {
                    let started = Instant::now();
                    tokio::time::sleep(d).await;
                    *self.busy.lock().unwrap() += started.elapsed();
                }
                Act::Retry => return Err(PublishError::Unavailable("owner unreachable (test)".into())),
                Act::NoRoute => return Err(PublishError::NoRoute(message.topic.clone())),
                Act::Hang => std::future::pending::<()>().await,
            }
            self.accepted.lock().unwrap().push(message.clone());
            Ok(Accepted {
                message_id: String::new(),
                route: "test".into(),
                key: message.topic,
                partition: 0,
                processed_by: "test".into(),
                epoch: 1,
            })
        }
    }

    /// One key per topic, as a route keyed by the whole topic.
    fn ordering_key(&self, topic: &str) -> String {
        topic.to_string()
    }
}

fn seq_of(m: &InboundMessage) -> u64 {
    let text = String::from_utf8_lossy(&m.payload);
    text.split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(u64::MAX)
}

/// A payload starting with the sequence number, padded with spaces to `size` bytes.
fn payload(seq: u64, size: usize) -> Vec<u8> {
    let mut p = format!("{seq} ").into_bytes();
    p.resize(size.max(p.len()), b'.');
    p
}

// ---------------------------------------------------------------------------------------------
// Ingress and publisher helpers.

fn settings(port: u16, node: &str) -> IngressSettings {
    IngressSettings {
        host: "127.0.0.1".into(),
        port,
        node_id: node.into(),
        client_id_prefix: "test".into(),
        group_name: "routemq".into(),
        keep_alive: Duration::from_secs(5),
        reconnect_backoff_min: Duration::from_millis(100),
        reconnect_backoff_max: Duration::from_secs(1),
        dispatch_retry_min: Duration::from_millis(5),
        dispatch_retry_max: Duration::from_millis(50),
        takeover_window: Duration::from_secs(10),
        takeover_fence_min: Duration::from_secs(2),
        takeover_fence_max: Duration::from_secs(8),
        shutdown_grace: Duration::from_secs(2),
        ..IngressSettings::default()
    }
}

fn ordered(route: &str, filter: &str, client_id: &str) -> OrderedSubscription {
    OrderedSubscription {
        route: route.into(),
        filter: filter.into(),
        qos: 1,
        client_id: client_id.into(),
        message_id_field: None,
    }
}

fn shared(route: &str, filter: &str, worker_count: u32) -> SharedSubscription {
    SharedSubscription {
        route: route.into(),
        filter: filter.into(),
        qos: 1,
        worker_count,
        message_id_field: None,
    }
}

struct Ingress {
    handle: IngressHandle,
    plan: watch::Sender<Arc<IngressPlan>>,
}

impl Ingress {
    fn start<D: Dispatch>(settings: IngressSettings, dispatcher: Arc<D>, plan: IngressPlan) -> Self {
        let (tx, rx) = watch::channel(Arc::new(plan));
        Self {
            handle: spawn_ingress(settings, dispatcher, rx),
            plan: tx,
        }
    }

    fn status(&self) -> IngressStatus {
        self.handle.status()
    }

    fn set_plan(&self, plan: IngressPlan) {
        self.plan.send_replace(Arc::new(plan));
    }

    /// Waits until every connection of the plan is up and subscribed.
    async fn ready(&self, expected_connections: usize) {
        wait_for(
            "ingress connected and subscribed",
            Duration::from_secs(20),
            || {
                let st = self.status();
                st.connections.len() == expected_connections
                    && st.connections.iter().all(|c| c.connected && c.subscribed)
            },
        )
        .await;
    }
}

async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Publishes every message at `qos` and returns once the broker acknowledged them all.
async fn publish_all(port: u16, client_id: &str, messages: Vec<(String, Vec<u8>)>) {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_max_packet_size(1 << 20, 1 << 20);
    options.set_keep_alive(Duration::from_secs(10));
    let (client, mut eventloop) = AsyncClient::new(options, 1000);
    let total = messages.len();
    let send = async {
        for (topic, body) in messages {
            client
                .publish(topic, QoS::AtLeastOnce, false, body)
                .await
                .expect("queue publish");
        }
    };
    let drive = async {
        let mut acked = 0;
        while acked < total {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => panic!("publisher {client_id}: {e}"),
            }
        }
    };
    tokio::join!(send, drive);
    client.disconnect().await.expect("queue disconnect");
    loop {
        match eventloop.poll().await {
            Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

fn sequence(topic: &str, range: std::ops::Range<u64>, size: usize) -> Vec<(String, Vec<u8>)> {
    range.map(|seq| (topic.to_string(), payload(seq, size))).collect()
}

fn total(st: &IngressStatus, f: impl Fn(&routemq_node::ingress::ConnectionStatus) -> u64) -> u64 {
    st.connections.iter().map(f).sum()
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shared_route_delivers_every_message_across_worker_connections() {
    bounded(async {
        let broker = Mosquitto::start();
        let dispatcher = FakeDispatcher::accepting();
        let plan = IngressPlan {
            shared: vec![shared("telemetry", "telemetry/+/data", 3)],
            ordered_held: vec![],
        };
        let ingress = Ingress::start(settings(broker.port(), "n1"), dispatcher.clone(), plan);
        ingress.ready(3).await;
        let ids: Vec<String> = ingress
            .status()
            .connections
            .iter()
            .map(|c| c.client_id.clone())
            .collect();
        assert_eq!(
            ids,
            [
                "test-n1-telemetry-0",
                "test-n1-telemetry-1",
                "test-n1-telemetry-2"
            ]
        );

        const N: u64 = 600;
        let messages: Vec<(String, Vec<u8>)> = (0..N)
            .map(|i| (format!("telemetry/dev{}/data", i % 10), payload(i, 32)))
            .collect();
        publish_all(broker.port(), "pub-shared", messages).await;

        wait_for("all shared messages dispatched", Duration::from_secs(30), || {
            dispatcher.accepted_count() as u64 >= N
        })
        .await;
        wait_for(
            "all shared messages acknowledged",
            Duration::from_secs(10),
            || total(&ingress.status(), |c| c.acked) == N,
        )
        .await;
        let seen: HashSet<u64> = dispatcher.accepted_seqs().into_iter().collect();
        assert_eq!(seen, (0..N).collect::<HashSet<u64>>(), "every message arrives");
        assert_eq!(dispatcher.accepted_count() as u64, N, "no duplicates");
        let st = ingress.status();
        let per_connection: Vec<u64> = st.connections.iter().map(|c| c.received).collect();
        assert!(
            per_connection.iter().filter(|n| **n > 0).count() >= 2,
            "the broker spreads over the worker connections: {per_connection:?}"
        );
        println!("shared route: {N} messages over 3 connections, per connection {per_connection:?}");
        ingress.handle.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ordered_route_keeps_order_and_loses_nothing() {
    bounded(async {
        let broker = Mosquitto::start();
        let dispatcher = FakeDispatcher::accepting();
        let plan = IngressPlan {
            shared: vec![],
            ordered_held: vec![ordered("orders", "orders/#", "routemq-orders")],
        };
        let ingress = Ingress::start(settings(broker.port(), "n1"), dispatcher.clone(), plan);
        ingress.ready(1).await;

        publish_all(broker.port(), "pub-ordered", sequence("orders/dev1", 0..500, 32)).await;
        wait_for("500 ordered messages", Duration::from_secs(30), || {
            dispatcher.accepted_count() >= 500
        })
        .await;
        assert_eq!(
            dispatcher.accepted_seqs(),
            (0..500).collect::<Vec<u64>>(),
            "in order, none lost"
        );
        assert_eq!(dispatcher.attempts().len(), 500, "each dispatched once");
        wait_for("500 acknowledgements", Duration::from_secs(10), || {
            ingress.status().connections[0].acked == 500
        })
        .await;
        ingress.handle.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ordered_route_retries_in_place_on_retryable_failures() {
    bounded(async {
        let broker = Mosquitto::start();
        // Every 7th call fails retryably, the first time a message is tried.
        let failed_once = Mutex::new(HashSet::new());
        let dispatcher = FakeDispatcher::new(move |call, m| {
            if call % 7 == 0 && failed_once.lock().unwrap().insert(seq_of(m)) {
                Act::Retry
            } else {
                Act::Accept
            }
        });
        let plan = IngressPlan {
            shared: vec![],
            ordered_held: vec![ordered("orders", "orders/#", "routemq-orders-retry")],
        };
        let ingress = Ingress::start(settings(broker.port(), "n1"), dispatcher.clone(), plan);
        ingress.ready(1).await;

        publish_all(broker.port(), "pub-retry", sequence("orders/dev7", 0..500, 32)).await;
        wait_for("500 ordered messages", Duration::from_secs(30), || {
            dispatcher.accepted_count() >= 500
        })
        .await;
        assert_eq!(
            dispatcher.accepted_seqs(),
            (0..500).collect::<Vec<u64>>(),
            "in order, none lost"
        );
        let attempts = dispatcher.attempts();
        let failures = attempts.len() - 500;
        assert!(failures >= 500 / 7, "the dispatcher failed {failures} times");
        // A failed message is retried before anything after it is tried.
        let tried: Vec<u64> = attempts.iter().map(seq_of).collect();
        assert!(
            tried.windows(2).all(|w| w[1] == w[0] || w[1] == w[0] + 1),
            "never skips ahead"
        );
        let st = ingress.status();
        assert_eq!(st.connections[0].retries, failures as u64);
        // A retry is the same delivery: it keeps its (generated) message id.
        for pair in attempts.windows(2).filter(|w| seq_of(&w[0]) == seq_of(&w[1])) {
            assert_eq!(
                pair[0].message_id,
                pair[1].message_id,
                "retry of {}",
                seq_of(&pair[0])
            );
        }
        let ids: HashSet<&str> = attempts.iter().map(|m| m.message_id.as_str()).collect();
        assert_eq!(ids.len(), 500, "one id per message");
        // Retries say so: the dispatcher counts a message received once, not once per attempt.
        let first_attempts: Vec<u64> = attempts.iter().filter(|m| !m.retry).map(seq_of).collect();
        assert_eq!(
            first_attempts,
            (0..500).collect::<Vec<u64>>(),
            "every message's first attempt, and only it, is not a retry"
        );
        println!("ordered route with retryable failures: {failures} retries, order kept");
        ingress.handle.shutdown().await;
    })
    .await;
}

/// `keys` topics `orders/k<i>`, each with `per_key` messages `0..per_key`, interleaved the way
/// many devices publish: k0/0, k1/0, ..., k0/1, k1/1, ...
fn interleaved(keys: usize, per_key: u64) -> Vec<(String, Vec<u8>)> {
    (0..per_key)
        .flat_map(|seq| (0..keys).map(move |k| (format!("orders/k{k}"), payload(seq, 32))))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ordered_route_dispatches_keys_concurrently_and_each_key_in_order() {
    bounded(async {
        let broker = Mosquitto::start();
        let dispatcher = FakeDispatcher::new(|_, _| Act::Slow(Duration::from_millis(3)));
        let plan = IngressPlan {
            shared: vec![],
            ordered_held: vec![ordered("orders", "orders/#", "routemq-orders-keys")],
        };
        let ingress = Ingress::start(settings(broker.port(), "n1"), dispatcher.clone(), plan);
        ingress.ready(1).await;

        const KEYS: usize = 40;
        const PER_KEY: u64 = 25;
        let n = KEYS * PER_KEY as usize;
        publish_all(broker.port(), "pub-keys", interleaved(KEYS, PER_KEY)).await;
        wait_for("every message accepted", Duration::from_secs(60), || {
            dispatcher.accepted_count() >= n
        })
        .await;
        wait_for("every message acknowledged", Duration::from_secs(10), || {
            ingress.status().connections[0].acked == n as u64
        })
        .await;
        let by_topic = dispatcher.accepted_by_topic();
        assert_eq!(by_topic.len(), KEYS);
        for (topic, seqs) in &by_topic {
            assert_eq!(
                seqs,
                &(0..PER_KEY).collect::<Vec<u64>>(),
                "{topic}: in order, once each"
            );
        }
        assert_eq!(dispatcher.attempts().len(), n, "each dispatched once");
        assert_eq!(
            dispatcher.overlaps.load(Ordering::SeqCst),
            0,
            "never two messages of one key at once"
        );
        let max_running = dispatcher.max_running.load(Ordering::SeqCst);
        assert!(
            max_running > 1,
            "messages of different keys are dispatched concurrently (at most {max_running} at once)"
        );
        println!("{KEYS} keys x {PER_KEY}: up to {max_running} dispatches at once, each key in order");
        ingress.handle.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ordered_route_retry_holds_its_key_and_lets_the_others_through() {
    bounded(async {
        let broker = Mosquitto::start();
        // k0's message 3 fails retryably its first 10 times.
        let failures = Mutex::new(0u32);
        let dispatcher = FakeDispatcher::new(move |_, m| {
            if m.topic == "orders/k0" && seq_of(m) == 3 {
                let mut failures = failures.lock().unwrap();
                if *failures < 10 {
                    *failures += 1;
                    return Act::Retry;
                }
            }
            Act::Accept
        });
        let plan = IngressPlan {
            shared: vec![],
            ordered_held: vec![ordered("orders", "orders/#", "routemq-orders-hol")],
        };
        let ingress = Ingress::start(settings(broker.port(), "n1"), dispatcher.clone(), plan);
        ingress.ready(1).await;

        const KEYS: usize = 8;
        const PER_KEY: u64 = 20;
        let n = KEYS * PER_KEY as usize;
        publish_all(broker.port(), "pub-hol", interleaved(KEYS, PER_KEY)).await;
        wait_for("every message accepted", Duration::from_secs(60), || {
            dispatcher.accepted_count() >= n
        })
        .await;
        wait_for("every message acknowledged", Duration::from_secs(10), || {
            ingress.status().connections[0].acked == n as u64
        })
        .await;
        for (topic, seqs) in dispatcher.accepted_by_topic() {
            assert_eq!(
                seqs,
                (0..PER_KEY).collect::<Vec<u64>>(),
                "{topic}: in order, once each"
            );
        }
        let attempts = dispatcher.attempts();
        assert_eq!(
            attempts.len(),
            n + 10,
            "the 10 failures were retried, nothing else twice"
        );
        // k0 never skips ahead: its attempts are 0, 1, 2, 3 x 11, 4, 5, ...
        let k0: Vec<u64> = attempts
            .iter()
            .filter(|m| m.topic == "orders/k0")
            .map(seq_of)
            .collect();
        assert!(
            k0.windows(2).all(|w| w[1] == w[0] || w[1] == w[0] + 1),
            "k0 never skips ahead: {k0:?}"
        );
        // While k0/3 was failing, other keys' messages were dispatched.
        let first_failure = attempts
            .iter()
            .position(|m| m.topic == "orders/k0" && seq_of(m) == 3)
            .expect("k0/3 tried");
        let success = attempts
            .iter()
            .rposition(|m| m.topic == "orders/k0" && seq_of(m) == 3)
            .expect("k0/3 tried");
        let others = attempts[first_failure..success]
            .iter()
            .filter(|m| m.topic != "orders/k0")
            .count();
        assert!(others > 0, "the other keys waited for k0's retries");
        assert_eq!(ingress.status().connections[0].retries, 10);
        println!("k0/3 retried 10 times; meanwhile {others} messages of other keys were dispatched");
        ingress.handle.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ordered_route_drains_a_backlog_queued_while_offline() {
    bounded(async {
        // On session resume Mosquitto sends the whole backlog at once, beyond its in-flight
        // window: more than the ingress buffers, so backpressure and acknowledgements must
        // keep flowing without one waiting on the other.
        let broker = Mosquitto::start();
        let plan = IngressPlan {
            shared: vec![],
            ordered_held: vec![ordered("orders", "orders/#", "routemq-orders-backlog")],
        };
        let first = Ingress::start(
            settings(broker.port(), "n1"),
            FakeDispatcher::accepting(),
            plan.clone(),
        );
        first.ready(1).await;
        first.handle.shutdown().await;

        const N: u64 = 4_000;
        publish_all(broker.port(), "pub-backlog", sequence("orders/dev1", 0..N, 100)).await;
        let dispatcher = FakeDispatcher::accepting();
        let ingress = Ingress::start(settings(broker.port(), "n1"), dispatcher.clone(), plan);
        wait_for("the backlog drains", Duration::from_secs(60), || {
            dispatcher.accepted_count() as u64 >= N
        })
        .await;
        assert_eq!(
            dispatcher.accepted_seqs(),
            (0..N).collect::<Vec<u64>>(),
            "in order, once each"
        );
        wait_for("every message acknowledged", Duration::from_secs(10), || {
            ingress.status().connections[0].acked == N
        })
        .await;
        let c = &ingress.status().connections[0];
        assert_eq!((c.reconnects, c.superseded), (0, 0), "{c:?}");
        ingress.handle.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failover_resumes_the_persistent_session_in_order() {
    bounded(async {
        let broker = Mosquitto::start();
        let client_id = "routemq-orders-failover";
        let plan = IngressPlan {
            shared: vec![],
            ordered_held: vec![ordered("orders", "orders/#", client_id)],
        };

        // Holder A processes 0..199 and is stuck dispatching 200 when it dies.
        let a_dispatcher = FakeDispatcher::new(|_, m| if seq_of(m) == 200 { Act::Hang } else { Act::Accept });
        let a = Ingress::start(
            settings(broker.port(), "node-a"),
            a_dispatcher.clone(),
            plan.clone(),
        );
        a.ready(1).await;
        publish_all(
            broker.port(),
            "pub-failover-1",
            sequence("orders/dev1", 0..300, 32),
        )
        .await;
        wait_for("A reaches message 200", Duration::from_secs(30), || {
            a_dispatcher.attempts().iter().any(|m| seq_of(m) == 200)
        })
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Crash: no DISCONNECT, 200 never acknowledged.
        a.handle.abort().await;

        // Published while nobody holds the route: the broker queues them for the session.
        publish_all(
            broker.port(),
            "pub-failover-2",
            sequence("orders/dev1", 300..500, 32),
        )
        .await;

        // Holder B takes over with the same client id and resumes.
        let b_dispatcher = FakeDispatcher::accepting();
        let b = Ingress::start(settings(broker.port(), "node-b"), b_dispatcher.clone(), plan);
        wait_for("B receives up to 499", Duration::from_secs(30), || {
            b_dispatcher.accepted_seqs().last() == Some(&499)
        })
        .await;

        let a_seqs = a_dispatcher.accepted_seqs();
        let b_seqs = b_dispatcher.accepted_seqs();
        assert_eq!(a_seqs, (0..200).collect::<Vec<u64>>());
        assert!(
            b_seqs.first().is_some_and(|first| *first <= 200),
            "B starts with the unacknowledged one"
        );
        let merged: Vec<u64> = a_seqs.iter().chain(b_seqs.iter()).copied().collect();
        // Duplicates only as redeliveries of what A had not acknowledged; never a gap or reorder.
        let distinct: HashSet<u64> = merged.iter().copied().collect();
        assert_eq!(distinct, (0..500).collect::<HashSet<u64>>(), "nothing lost");
        let b_sorted = b_seqs.windows(2).all(|w| w[0] < w[1]);
        assert!(
            b_sorted,
            "B processes in order without duplicates of its own: {b_seqs:?}"
        );
        let duplicates = merged.len() - distinct.len();
        // The in-flight message 200 was tried by A and again by B.
        let tried_200 = a_dispatcher
            .attempts()
            .iter()
            .chain(b_dispatcher.attempts().iter())
            .filter(|m| seq_of(m) == 200)
            .count();
        assert_eq!(tried_200, 2, "the in-flight message is redelivered once");
        println!(
            "failover: A accepted {}, B accepted {} (first {:?}); duplicates among accepted: {duplicates}; \
             message 200 dispatched {tried_200} times (A's attempt abandoned)",
            a_seqs.len(),
            b_seqs.len(),
            b_seqs.first()
        );
        b.handle.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failover_with_many_keys_repeats_at_most_one_message_per_key_in_place() {
    bounded(async {
        // Holder A dispatches 4 keys concurrently and gets stuck on k1's message 5; messages
        // of other keys that A processed after that one stay unacknowledged. After A crashes,
        // B receives every unacknowledged message again: per key, at most one that A had
        // processed, right after A's copy, never after a later message of its key.
        let broker = Mosquitto::start();
        let client_id = "routemq-orders-failover-keys";
        let plan = IngressPlan {
            shared: vec![],
            ordered_held: vec![ordered("orders", "orders/#", client_id)],
        };
        let a_dispatcher = FakeDispatcher::new(|_, m| {
            if m.topic == "orders/k1" && seq_of(m) == 5 {
                Act::Hang
            } else {
                Act::Accept
            }
        });
        let a = Ingress::start(
            settings(broker.port(), "node-a"),
            a_dispatcher.clone(),
            plan.clone(),
        );
        a.ready(1).await;
        const KEYS: usize = 4;
        const PER_KEY: u64 = 50;
        publish_all(broker.port(), "pub-failover-keys", interleaved(KEYS, PER_KEY)).await;
        wait_for("A is stuck on k1/5", Duration::from_secs(30), || {
            a_dispatcher
                .attempts()
                .iter()
                .any(|m| m.topic == "orders/k1" && seq_of(m) == 5)
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        a.handle.abort().await;

        let b_dispatcher = FakeDispatcher::accepting();
        let b = Ingress::start(settings(broker.port(), "node-b"), b_dispatcher.clone(), plan);
        wait_for(
            "B receives every key's last message",
            Duration::from_secs(30),
            || {
                let by_topic = b_dispatcher.accepted_by_topic();
                by_topic.len() == KEYS && by_topic.values().all(|s| s.last() == Some(&(PER_KEY - 1)))
            },
        )
        .await;

        let a_by_topic = a_dispatcher.accepted_by_topic();
        let b_by_topic = b_dispatcher.accepted_by_topic();
        let mut repeats = 0;
        for k in 0..KEYS {
            let topic = format!("orders/k{k}");
            let merged: Vec<u64> = a_by_topic
                .get(&topic)
                .into_iter()
                .flatten()
                .chain(b_by_topic.get(&topic).into_iter().flatten())
                .copied()
                .collect();
            let distinct: HashSet<u64> = merged.iter().copied().collect();
            assert_eq!(
                distinct,
                (0..PER_KEY).collect::<HashSet<u64>>(),
                "{topic}: nothing lost"
            );
            assert!(
                merged.windows(2).all(|w| w[1] == w[0] || w[1] == w[0] + 1),
                "{topic}: a repeat only in place: {merged:?}"
            );
            let key_repeats = merged.len() - distinct.len();
            assert!(key_repeats <= 1, "{topic}: {key_repeats} repeats: {merged:?}");
            repeats += key_repeats;
        }
        println!(
            "failover with {KEYS} keys: A accepted {}, B accepted {}, {repeats} repeated in place",
            a_dispatcher.accepted_count(),
            b_dispatcher.accepted_count()
        );
        b.handle.shutdown().await;
    })
    .await;
}

/// A JSON payload `{"id":"m-<seq>","seq":<seq>}`, or, for `plain`, a payload that is not JSON.
fn json_payload(seq: u64, plain: bool) -> Vec<u8> {
    if plain {
        format!("{seq} not json").into_bytes()
    } else {
        format!(r#"{{"id":"m-{seq}","seq":{seq}}}"#).into_bytes()
    }
}

/// The sequence number of a [`json_payload`].
fn json_seq(m: &InboundMessage) -> u64 {
    serde_json::from_slice::<serde_json::Value>(&m.payload)
        .ok()
        .and_then(|v| v["seq"].as_u64())
        .unwrap_or_else(|| seq_of(m))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redelivery_after_failover_keeps_the_message_id_from_the_payload() {
    bounded(async {
        // The route reads message ids from `/id`: the copy a new holder receives after a
        // session takeover carries the id of the message the dead holder was dispatching, so
        // a journal keeps one. A payload without an id gets a generated one.
        let broker = Mosquitto::start();
        let client_id = "routemq-orders-ids";
        let plan = IngressPlan {
            shared: vec![],
            ordered_held: vec![OrderedSubscription {
                message_id_field: Some("/id".into()),
                ..ordered("orders", "orders/#", client_id)
            }],
        };
        let a_dispatcher = FakeDispatcher::new(|_, m| if json_seq(m) == 5 { Act::Hang } else { Act::Accept });
        let a = Ingress::start(
            settings(broker.port(), "node-a"),
            a_dispatcher.clone(),
            plan.clone(),
        );
        a.ready(1).await;
        let messages = |range: std::ops::Range<u64>| -> Vec<(String, Vec<u8>)> {
            range
                .map(|seq| ("orders/dev1".to_string(), json_payload(seq, seq == 8)))
                .collect()
        };
        publish_all(broker.port(), "pub-ids-1", messages(0..10)).await;
        wait_for("A is stuck on message 5", Duration::from_secs(30), || {
            a_dispatcher.attempts().iter().any(|m| json_seq(m) == 5)
        })
        .await;
        // Crash: message 5 was never acknowledged.
        a.handle.abort().await;

        let b_dispatcher = FakeDispatcher::accepting();
        let b = Ingress::start(settings(broker.port(), "node-b"), b_dispatcher.clone(), plan);
        wait_for("B receives up to 9", Duration::from_secs(30), || {
            b_dispatcher.accepted().iter().any(|m| json_seq(m) == 9)
        })
        .await;

        let attempts: Vec<InboundMessage> = a_dispatcher
            .attempts()
            .into_iter()
            .chain(b_dispatcher.attempts())
            .collect();
        let fives: Vec<&str> = attempts
            .iter()
            .filter(|m| json_seq(m) == 5)
            .map(|m| m.message_id.as_str())
            .collect();
        assert_eq!(fives, ["m-5", "m-5"], "the redelivered copy keeps the id");
        for m in &attempts {
            let seq = json_seq(m);
            if seq == 8 {
                assert_eq!(m.message_id.len(), 36, "generated id: {:?}", m.message_id);
            } else {
                assert_eq!(m.message_id, format!("m-{seq}"));
            }
        }
        let b_seqs: Vec<u64> = b_dispatcher.accepted().iter().map(json_seq).collect();
        assert_eq!(b_seqs, (5..10).collect::<Vec<u64>>(), "B resumes in order");
        b.handle.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn takeover_does_not_reconnect_in_a_tight_loop() {
    bounded(async {
        let broker = Mosquitto::start();
        let plan = IngressPlan {
            shared: vec![],
            ordered_held: vec![ordered("orders", "orders/#", "routemq-contended")],
        };
        let a = Ingress::start(settings(broker.port(), "node-a"), FakeDispatcher::accepting(), plan.clone());
        a.ready(1).await;
        let b = Ingress::start(settings(broker.port(), "node-b"), FakeDispatcher::accepting(), plan);

        let window = Duration::from_secs(8);
        let started = Instant::now();
        let mut both_connected_samples = 0;
        let mut samples = 0;
        while started.elapsed() < window {
            let (sa, sb) = (a.status(), b.status());
            let up = |s: &IngressStatus| s.connections.first().is_some_and(|c| c.connected);
            samples += 1;
            if up(&sa) && up(&sb) {
                both_connected_samples += 1;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (sa, sb) = (a.status(), b.status());
        let (ca, cb) = (&sa.connections[0], &sb.connections[0]);
        println!(
            "takeover over {window:?}: A connects {} reconnects {} broker closes {} fences {}; \
             B connects {} reconnects {} broker closes {} fences {}; both up in {both_connected_samples}/{samples} samples",
            ca.connects, ca.reconnects, ca.peer_closes, ca.fences, cb.connects, cb.reconnects, cb.peer_closes, cb.fences
        );
        assert!(ca.peer_closes >= 1, "the broker threw A off when B took the session over");
        assert!(ca.fences + cb.fences >= 1, "the fight was detected");
        // Without the guard each side would reconnect every ~100 ms (about 80 times in 8 s).
        assert!(
            ca.reconnects + cb.reconnects <= 12,
            "bounded reconnects: A {} + B {}",
            ca.reconnects,
            cb.reconnects
        );
        assert!(sa.last_error.is_some_and(|e| e.contains("taking over") || e.contains("closed by the broker")));
        a.handle.shutdown().await;
        b.handle.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_down_at_start_then_restarted() {
    bounded(async {
        let port = mosquitto::free_port();
        let dispatcher = FakeDispatcher::accepting();
        let plan = IngressPlan {
            shared: vec![shared("telemetry", "telemetry/#", 1)],
            ordered_held: vec![ordered("orders", "orders/#", "routemq-orders-restart")],
        };
        let ingress = Ingress::start(settings(port, "n1"), dispatcher.clone(), plan);

        // No broker yet.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let st = ingress.status();
        assert_eq!(st.connections.len(), 2);
        assert!(
            st.connections.iter().all(|c| !c.connected && c.reconnects >= 2),
            "{st:?}"
        );
        assert!(st.connections.iter().all(|c| c.last_error.is_some()));
        println!("broker down: {:?}", st.last_error);

        let mut broker = Mosquitto::start_on(port);
        ingress.ready(2).await;
        publish_all(
            port,
            "pub-restart-1",
            vec![
                ("telemetry/a".into(), payload(1, 8)),
                ("orders/a".into(), payload(2, 8)),
            ],
        )
        .await;
        wait_for("both routes deliver", Duration::from_secs(10), || {
            dispatcher.accepted_count() == 2
        })
        .await;

        // Restart the broker (persistence keeps the ordered route's session).
        broker.stop();
        wait_for("status shows the broker gone", Duration::from_secs(10), || {
            ingress.status().connections.iter().all(|c| !c.connected)
        })
        .await;
        broker.start_again();
        ingress.ready(2).await;
        publish_all(
            port,
            "pub-restart-2",
            vec![
                ("telemetry/b".into(), payload(3, 8)),
                ("orders/b".into(), payload(4, 8)),
            ],
        )
        .await;
        wait_for(
            "both routes deliver after the restart",
            Duration::from_secs(10),
            || dispatcher.accepted_count() == 4,
        )
        .await;
        let mut seqs = dispatcher.accepted_seqs();
        seqs.sort_unstable();
        assert_eq!(seqs, [1, 2, 3, 4]);
        let st = ingress.status();
        assert!(st.connections.iter().all(|c| c.connects >= 2), "{st:?}");
        ingress.handle.shutdown().await;
    })
    .await;
}

/// CONNECT (MQTT 3.1.1, clean session) with `client_id`.
fn raw_connect(client_id: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 30];
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend(body);
    packet
}

/// PUBLISH QoS 1, packet id 1, with raw topic bytes.
fn raw_publish(topic: &[u8], body: &[u8]) -> Vec<u8> {
    let mut rest = (topic.len() as u16).to_be_bytes().to_vec();
    rest.extend_from_slice(topic);
    rest.extend_from_slice(&[0, 1]);
    rest.extend_from_slice(body);
    let mut packet = vec![0x32, rest.len() as u8];
    packet.extend(rest);
    packet
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_acknowledged_counted_and_never_dispatched() {
    bounded(async {
        let broker = Mosquitto::start();
        let client_id = "routemq-bad-input";
        let plan = IngressPlan {
            shared: vec![],
            ordered_held: vec![ordered("bad", "bad/#", client_id)],
        };
        let mut s = settings(broker.port(), "n1");
        s.max_payload_bytes = 1024;
        let dispatcher = FakeDispatcher::new(|_, m| {
            if m.topic.starts_with("bad/unrouted/") {
                Act::NoRoute
            } else {
                Act::Accept
            }
        });
        let ingress = Ingress::start(s.clone(), dispatcher.clone(), plan.clone());
        ingress.ready(1).await;

        // A topic that is not UTF-8, from a raw socket: Mosquitto refuses it at the publisher.
        let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", broker.port()))
            .await
            .unwrap();
        raw.write_all(&raw_connect("raw-bad-utf8")).await.unwrap();
        let mut connack = [0u8; 4];
        raw.read_exact(&mut connack).await.unwrap();
        assert_eq!(connack, [0x20, 2, 0, 0], "CONNACK accepted");
        raw.write_all(&raw_publish(b"bad/\xff\xfe", b"x")).await.unwrap();
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut rest)).await;
        assert!(
            matches!(closed, Ok(Ok(_)) | Ok(Err(_))) && rest.is_empty(),
            "the broker closes the publisher without a PUBACK: {closed:?} {rest:?}"
        );

        // Oversized payload, a topic no route matches, then a good one.
        publish_all(
            broker.port(),
            "pub-bad",
            vec![
                ("bad/big".into(), payload(1, 4096)),
                ("bad/unrouted/x".into(), payload(2, 8)),
                ("bad/ok".into(), payload(3, 8)),
            ],
        )
        .await;
        wait_for("the good message", Duration::from_secs(10), || {
            dispatcher.accepted_count() == 1
        })
        .await;
        wait_for("three acknowledgements", Duration::from_secs(10), || {
            ingress.status().connections[0].acked == 3
        })
        .await;
        let tried: Vec<String> = dispatcher.attempts().iter().map(|m| m.topic.clone()).collect();
        assert_eq!(
            tried,
            ["bad/unrouted/x", "bad/ok"],
            "the oversized payload never reaches dispatch"
        );
        let st = ingress.status();
        let c = &st.connections[0];
        assert_eq!(
            (c.received, c.rejected, c.acked, c.dispatched),
            (3, 2, 3, 1),
            "{c:?}"
        );
        assert!(
            c.connected && c.reconnects == 0,
            "nothing disturbed the connection: {c:?}"
        );
        let log = broker.log();
        assert!(log.contains("raw-bad-utf8"), "the broker saw the raw publisher");
        ingress.handle.shutdown().await;
        // Wait until the broker has read our DISCONNECT (and the acknowledgements before it):
        // a new holder connecting earlier takes the session over first, and the broker drops
        // what it had not read yet from the old connection (a redelivery, allowed, but not what
        // this test is about).
        wait_for("the broker saw the DISCONNECT", Duration::from_secs(5), || {
            broker
                .log()
                .contains(&format!("Client {client_id} disconnected."))
        })
        .await;

        // The acknowledgements reached the broker: a new holder of the session gets none of
        // them again, only what is published next.
        let again = FakeDispatcher::accepting();
        let ingress = Ingress::start(s, again.clone(), plan);
        ingress.ready(1).await;
        publish_all(
            broker.port(),
            "pub-bad-2",
            vec![("bad/after".into(), payload(4, 8))],
        )
        .await;
        wait_for("the next message", Duration::from_secs(10), || {
            again.accepted_count() == 1
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let topics: Vec<String> = again.attempts().iter().map(|m| m.topic.clone()).collect();
        assert_eq!(
            topics,
            ["bad/after"],
            "nothing redelivered; status {:?}\nbroker log:\n{}",
            ingress.status(),
            broker.log()
        );
        ingress.handle.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plan_changes_start_and_stop_connections_by_route() {
    bounded(async {
        let broker = Mosquitto::start();
        let dispatcher = FakeDispatcher::accepting();
        let ingress = Ingress::start(
            settings(broker.port(), "n1"),
            dispatcher.clone(),
            IngressPlan {
                shared: vec![shared("a", "a/#", 2)],
                ordered_held: vec![],
            },
        );
        ingress.ready(2).await;

        ingress.set_plan(IngressPlan {
            shared: vec![shared("a", "a/#", 1)],
            ordered_held: vec![ordered("b", "b/#", "routemq-b")],
        });
        wait_for("the new plan's connections", Duration::from_secs(20), || {
            let st = ingress.status();
            let ids: Vec<&str> = st.connections.iter().map(|c| c.client_id.as_str()).collect();
            ids == ["routemq-b", "test-n1-a-0"] && st.connections.iter().all(|c| c.connected && c.subscribed)
        })
        .await;
        let st = ingress.status();
        let ids: Vec<&str> = st.connections.iter().map(|c| c.client_id.as_str()).collect();
        assert_eq!(ids, ["routemq-b", "test-n1-a-0"]);
        assert_eq!(
            st.connection("test-n1-a-0").map(|c| c.connects),
            Some(1),
            "kept, not restarted"
        );

        publish_all(
            broker.port(),
            "pub-plan",
            vec![("a/1".into(), payload(1, 8)), ("b/1".into(), payload(2, 8))],
        )
        .await;
        wait_for("both routes deliver", Duration::from_secs(10), || {
            dispatcher.accepted_count() == 2
        })
        .await;

        // A refused entry is reported, the rest keeps running.
        ingress.set_plan(IngressPlan {
            shared: vec![shared("a", "a/#", 1), shared("broken", "x/#/y", 1)],
            ordered_held: vec![],
        });
        wait_for("plan applied", Duration::from_secs(10), || {
            let st = ingress.status();
            st.connections.len() == 1 && !st.plan_issues.is_empty()
        })
        .await;
        println!("plan issues: {:?}", ingress.status().plan_issues);

        ingress.set_plan(IngressPlan::default());
        wait_for("no connections", Duration::from_secs(10), || {
            ingress.status().connections.is_empty()
        })
        .await;
        ingress.handle.shutdown().await;
    })
    .await;
}

/// `--max-payload-bytes` is the MQTT ingress's limit too (it used to stay at 256 KiB, so larger
/// messages were acknowledged and dropped): a message under the node's limit is dispatched, one
/// over it is refused (acknowledged, counted as rejected with its reason, logged), as gRPC
/// refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_node_payload_limit_reaches_the_mqtt_ingress() {
    use routemq_node::settings::{FileSettings, Settings, StartArgs};
    bounded(async {
        let broker = Mosquitto::start();
        let limit = 512 * 1024;
        let node = Settings::merge(
            StartArgs {
                node_id: Some("n1".into()),
                bootstrap: true,
                mqtt: Some(format!("127.0.0.1:{}", broker.port())),
                max_payload_bytes: Some(limit),
                ..Default::default()
            },
            FileSettings::default(),
        )
        .expect("node settings");
        let mut s = node.mqtt.expect("MQTT settings from --mqtt");
        s.reconnect_backoff_min = Duration::from_millis(100);
        s.reconnect_backoff_max = Duration::from_secs(1);
        let dispatcher = FakeDispatcher::accepting();
        let plan = IngressPlan {
            shared: vec![],
            ordered_held: vec![ordered("big", "big/#", "routemq-big")],
        };
        let ingress = Ingress::start(s, dispatcher.clone(), plan);
        ingress.ready(1).await;
        let messages = vec![
            ("big/k".to_string(), payload(0, 300 * 1024)),
            ("big/k".to_string(), payload(1, limit + 1)),
            ("big/k".to_string(), payload(2, limit)),
        ];
        publish_all(broker.port(), "pub-big", messages).await;
        wait_for("3 messages acknowledged", Duration::from_secs(20), || {
            ingress.status().connections[0].acked == 3
        })
        .await;
        assert_eq!(
            dispatcher.accepted_seqs(),
            [0, 2],
            "300 KiB and exactly the limit are dispatched; one byte over is not"
        );
        assert_eq!(
            ingress.status().connections[0].rejected,
            1,
            "the message over the limit is recorded as refused"
        );
        ingress.handle.shutdown().await;
    })
    .await;
}

/// The `republish` publisher resolves on the broker's PUBACK: a 64 KiB payload (over rumqttc's
/// default 10 KiB packet limit, which broke the connection) published at QoS 1 reaches a
/// subscriber; with the broker stopped, the `republish` handler fails within its bound (the
/// processor then dead-letters the message, as for any handler failure) instead of reporting
/// a message only queued locally as done.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn republish_is_done_on_the_brokers_puback_and_fails_without_a_broker() {
    use routemq_node::handler::{Handler, HandlerContext, Message, Publisher, RepublishHandler};
    use routemq_node::publisher::MqttPublisher;
    bounded(async {
        let mut broker = Mosquitto::start();
        let mut s = settings(broker.port(), "n1");
        s.max_payload_bytes = 256 * 1024;
        let publisher = Arc::new(MqttPublisher::with_ack_timeout(&s, "n1", Duration::from_secs(3)));

        // A subscriber for the republished messages.
        let mut options = MqttOptions::new("republish-sub", "127.0.0.1", broker.port());
        options.set_max_packet_size(1 << 20, 1 << 20);
        let (sub, mut sub_loop) = AsyncClient::new(options, 10);
        sub.subscribe("out/#", QoS::AtLeastOnce).await.expect("subscribe");
        let (got_tx, mut got_rx) = tokio::sync::mpsc::unbounded_channel();
        let sub_task = tokio::spawn(async move {
            loop {
                match sub_loop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = got_tx.send(None);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = got_tx.send(Some((p.topic.clone(), p.payload.len())));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        assert_eq!(got_rx.recv().await, Some(None), "subscribed");

        let big = payload(1, 64 * 1024);
        publisher
            .publish("out/big", &big, 1)
            .await
            .expect("a 64 KiB QoS 1 republish is acknowledged by the broker");
        let got = tokio::time::timeout(Duration::from_secs(10), got_rx.recv())
            .await
            .expect("the republished message arrives");
        assert_eq!(got, Some(Some(("out/big".to_string(), 64 * 1024))));
        let over = payload(2, 256 * 1024 + 1);
        let err = publisher
            .publish("out/over", &over, 1)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("payload limit"), "{err}");

        // Broker stopped: the handler fails, within the bound, saying why.
        broker.stop();
        let dir = tempfile::tempdir().expect("temp dir");
        let ctx = HandlerContext {
            node_id: "n1".into(),
            publisher: publisher.clone(),
            journal: routemq_node::journal::Journal::open(dir.path()).expect("journal"),
            stats: Default::default(),
        };
        let handler = RepublishHandler {
            topic_template: routemq_node::routes::Template::parse("out/{id}").expect("template"),
            qos: 1,
        };
        let message = Message {
            route: "r".into(),
            topic: "in/d1".into(),
            params: vec![("id".into(), "d1".into())],
            key: "d1".into(),
            partition: 0,
            payload: b"x".to_vec(),
            message_id: "m1".into(),
            epoch: 1,
        };
        let started = Instant::now();
        let err = handler
            .handle(&ctx, &message)
            .await
            .expect_err("no broker: the republish handler fails");
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "bounded: {:?}",
            started.elapsed()
        );
        let err = err.to_string();
        assert!(err.contains("out/d1") && err.contains("MQTT broker"), "{err}");

        // Back again: publishes succeed again.
        broker.start_again();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match publisher.publish("out/again", b"x", 1).await {
                Ok(()) => break,
                Err(e) => assert!(Instant::now() < deadline, "publisher did not recover: {e}"),
            }
        }
        sub_task.abort();
        publisher.shutdown().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Bench: one ordered route against a no-op dispatcher, beside one plain rumqttc subscriber with
// auto-acks, both draining the same number of messages the broker queued for their persistent
// sessions (so the publisher's speed is out of the measurement).

async fn plain_subscriber_drain(
    port: u16,
    client_id: &str,
    topic_filter: &str,
    publish_topic: &str,
    n: u64,
    size: usize,
) -> Duration {
    let options = |port| {
        let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
        o.set_clean_session(false);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_max_packet_size(1 << 20, 1 << 20);
        o
    };
    // Create the session and its subscription, then go offline.
    {
        let (client, mut eventloop) = AsyncClient::new(options(port), 100);
        client.subscribe(topic_filter, QoS::AtLeastOnce).await.unwrap();
        loop {
            if let Ok(Event::Incoming(Packet::SubAck(_))) = eventloop.poll().await {
                break;
            }
        }
        client.disconnect().await.unwrap();
        while !matches!(
            eventloop.poll().await,
            Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_)
        ) {}
    }
    publish_all(port, "bench-pub-plain", sequence(publish_topic, 0..n, size)).await;
    let (_client, mut eventloop) = AsyncClient::new(options(port), 100);
    // Same TCP setting as the ingress.
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);
    let started = Instant::now();
    let mut received = 0;
    while received < n {
        if let Ok(Event::Incoming(Packet::Publish(_))) = eventloop.poll().await {
            received += 1;
        }
    }
    started.elapsed()
}

/// Returns the drain time and the mean time spent inside `dispatch`.
/// Drains `n` messages spread round-robin over `keys` topics `<prefix>/k<i>` through one
/// ordered route. With `backlog` they are queued at the broker while the route is offline
/// (Mosquitto then sends them all at once, beyond its in-flight window); otherwise they are
/// published while it is connected (the broker's in-flight window applies). Returns the time
/// from start (connect, or first publish) to the last acceptance, and the mean dispatch time.
#[allow(clippy::too_many_arguments)]
async fn ordered_route_drain(
    port: u16,
    client_id: &str,
    filter: &str,
    prefix: &str,
    keys: usize,
    n: u64,
    act: Act,
    backlog: bool,
) -> (Duration, Duration) {
    let plan = IngressPlan {
        shared: vec![],
        ordered_held: vec![ordered("bench", filter, client_id)],
    };
    let mut s = settings(port, "bench");
    s.max_payload_bytes = 1024;
    if let Some(window) = std::env::var("BENCH_ORDERED_IN_FLIGHT")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        s.ordered_max_in_flight = window;
    }
    let keys = keys.max(1);
    let per_key = n.div_ceil(keys as u64);
    let n = per_key * keys as u64;
    let messages: Vec<(String, Vec<u8>)> = (0..per_key)
        .flat_map(|seq| (0..keys).map(move |k| (format!("{prefix}/k{k}"), payload(seq, 100))))
        .collect();
    let dispatcher = FakeDispatcher::new(move |_, _| act);
    let (started, ingress) = if backlog {
        // Create the session and its subscription, then go offline.
        let first = Ingress::start(s.clone(), FakeDispatcher::accepting(), plan.clone());
        first.ready(1).await;
        first.handle.shutdown().await;
        publish_all(port, "bench-pub-ordered", messages).await;
        (Instant::now(), Ingress::start(s, dispatcher.clone(), plan))
    } else {
        let ingress = Ingress::start(s, dispatcher.clone(), plan);
        ingress.ready(1).await;
        let started = Instant::now();
        publish_all(port, "bench-pub-ordered", messages).await;
        (started, ingress)
    };
    wait_for("the ordered route drains", Duration::from_secs(300), || {
        dispatcher.accepted_count() as u64 >= n
    })
    .await;
    let elapsed = started.elapsed();
    let by_topic = dispatcher.accepted_by_topic();
    assert_eq!(by_topic.len(), keys);
    for (topic, seqs) in by_topic {
        assert_eq!(
            seqs,
            (0..per_key).collect::<Vec<u64>>(),
            "{topic}: in order, none lost"
        );
    }
    let busy = *dispatcher.busy.lock().unwrap();
    println!(
        "  ({keys} keys, {n} msgs: up to {} dispatches at once)",
        dispatcher.max_running.load(Ordering::SeqCst)
    );
    ingress.handle.shutdown().await;
    (elapsed, busy / n.max(1) as u32)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "bench: run with --ignored --nocapture"]
async fn bench_ordered_route_throughput() {
    bounded(async {
        let broker = Mosquitto::start();
        let from_env = |name: &str, default: u64| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        let n = from_env("BENCH_MESSAGES", 5_000);
        let n_slow = from_env("BENCH_SLOW_MESSAGES", 1_000);
        let latency = Duration::from_millis(1);
        // Alternate the two, twice, so warm-up and background load hit both alike.
        let mut plain = Vec::new();
        let mut ordered = Vec::new();
        for round in 0..2 {
            let id = format!("bench-plain-{round}");
            let (filter, topic) = (format!("plain{round}/#"), format!("plain{round}/dev1"));
            plain.push(plain_subscriber_drain(broker.port(), &id, &filter, &topic, n, 100).await);
            let id = format!("bench-ordered-{round}");
            let (filter, prefix) = (format!("ordered{round}/#"), format!("ordered{round}"));
            ordered.push(
                ordered_route_drain(broker.port(), &id, &filter, &prefix, 1, n, Act::Accept, true)
                    .await
                    .0,
            );
        }
        let port = broker.port();
        let slow_run = |name: &'static str, keys: usize, n: u64, backlog: bool| {
            let filter = format!("{name}/#");
            async move {
                ordered_route_drain(
                    port,
                    &format!("bench-{name}"),
                    &filter,
                    name,
                    keys,
                    n,
                    Act::Slow(latency),
                    backlog,
                )
                .await
            }
        };
        let (slow, mean_dispatch) = slow_run("slow", 1, n_slow, true).await;
        let keys = from_env("BENCH_KEYS", 100) as usize;
        let n_keys = n_slow * 5;
        let (live_keys, live_dispatch) = slow_run("slowkeys", keys, n_keys, false).await;
        let (backlog_keys, backlog_dispatch) = slow_run("slowbacklog", keys, n_keys, true).await;
        let rate = |n: u64, d: Duration| n as f64 / d.as_secs_f64();
        let mean = |v: &[Duration]| v.iter().sum::<Duration>() / v.len() as u32;
        println!("--- MQTT ingress drain, QoS 1, 100-byte payloads, Mosquitto on loopback, one run ---");
        for (round, (p, o)) in plain.iter().zip(&ordered).enumerate() {
            println!(
                "round {round}: plain rumqttc subscriber (auto-acks) {:>7.0} msg/s ({p:.2?}); \
                 one ordered route (no-op dispatcher) {:>7.0} msg/s ({o:.2?})",
                rate(n, *p),
                rate(n, *o)
            );
        }
        let (p, o) = (mean(&plain), mean(&ordered));
        println!(
            "{n} messages: plain {:.0} msg/s, ordered route {:.0} msg/s = {:.2} x plain",
            rate(n, p),
            rate(n, o),
            rate(n, o) / rate(n, p)
        );
        println!(
            "one ordered route, sleep({latency:?}) dispatcher ({n_slow} msgs): {:.0} msg/s ({slow:.2?}); \
             measured dispatch latency {mean_dispatch:.2?} -> bound 1/latency = {:.0} msg/s",
            rate(n_slow, slow),
            1.0 / mean_dispatch.as_secs_f64().max(1e-9)
        );
        println!(
            "one ordered route, sleep({latency:?}) dispatcher, {keys} keys, {n_keys} msgs published live \
             (broker in-flight window 20): {:.0} msg/s ({live_keys:.2?}); dispatch latency {live_dispatch:.2?} \
             -> bound 20/latency = {:.0} msg/s",
            rate(n_keys, live_keys),
            20.0 / live_dispatch.as_secs_f64().max(1e-9)
        );
        println!(
            "one ordered route, sleep({latency:?}) dispatcher, {keys} keys, {n_keys} msgs queued while offline \
             (sent at once on resume): {:.0} msg/s ({backlog_keys:.2?}); dispatch latency {backlog_dispatch:.2?}",
            rate(n_keys, backlog_keys)
        );
    })
    .await;
}
