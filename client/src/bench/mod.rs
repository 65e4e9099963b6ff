//! The load tool behind `routemq-ctl bench`: producers publish keyed, sequenced messages over
//! gRPC or MQTT at a target rate, then (with verification) the journals are read back and
//! compared with what was acknowledged.
//!
//! ## The workload
//! - K bench keys `<run>-0 … <run>-(K-1)`, fresh per run; key `k` belongs to producer
//!   `k % P`, so every key has exactly one producer and per-key order is well defined.
//! - Producer `p` sends its share of the N messages (N/P, the first N%P producers one more)
//!   with sequence numbers 0, 1, 2… in order, message `s` to its key number `s % (its keys)`,
//!   paced at R/P messages per second (R = 0: as fast as the window allows). A message's topic
//!   is the template with `{key}` replaced, its payload `key|producer|seq|` padded to the
//!   payload size ([`payload`]), its message id `<run>-<producer>-<seq>`.
//! - The run stops after N messages or the duration limit, whichever comes first (and early,
//!   after [`MAX_CONSECUTIVE_FAILURES`] failures in a row, when the cluster is clearly down).
//!   Messages queued but not yet published then are dropped, so the limit is overrun by at
//!   most one publish's retry budget (gRPC) or the acknowledgement timeout (MQTT).
//!
//! ## Transports
//! - **gRPC** (unary `Publish`, one [`Client`] per producer, producers spread over the
//!   members): each producer runs C lanes; a key always goes to the same lane and a lane
//!   publishes one message at a time, so at most C messages of a producer are in flight and
//!   never two of one key; a retry (same message id) finishes before the key's next message
//!   is sent. Acknowledged = the cluster accepted (journal: durably appended).
//! - **MQTT** (rumqttc, QoS 1, one connection per producer with a window of C unacknowledged
//!   publishes): acknowledged = the broker's PUBACK, which says nothing about the cluster;
//!   `--verify` tells what reached the journals. The broker keeps a connection's order; a lost
//!   connection ends that producer (its unacknowledged messages count as `connection_lost`).
//!
//! Latency is measured per acknowledged message from the publish call to its acknowledgement
//! (for MQTT this includes waiting in the client's queue). It is not corrected for coordinated
//! omission: at a rate the cluster cannot keep up with, the pacing slips instead.
//!
//! ## Delivery
//! With verification, the run also measures where the messages land ([`delivery`]): distinct
//! messages in the journals over the time from the first publish to the last journal entry,
//! and each message's publish-to-journal time. For MQTT this, not the PUBACK rate, is the
//! cluster's throughput.
//!
//! ## Broker only
//! [`BenchConfig::broker_only`] runs the same MQTT producers against the broker with no
//! RouteMQ node: one rumqttc subscriber (QoS 1) takes the bench topics ([`subscriber`]), and
//! what it receives is checked like journals and measured the same way. That is the baseline
//! for "what the broker alone delivers to one MQTT client".

pub mod delivery;
pub mod payload;
pub mod subscriber;
pub mod verify;

mod grpc;
mod mqtt;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use routemq_proto::v1::{ReadConsistency, Route, RouteMode};
use serde::Serialize;
use tonic::Code;

pub use self::mqtt::parse_broker;
use self::payload::Header;
use self::subscriber::Subscriber;
use self::verify::{check_key, summarize, summarize_at, unreadable, KeyCheck, Sent, VerifyReport};
use crate::error::ClientError;
use crate::spec::{effective_pattern, is_journal, key_of};
use crate::Client;

/// A run stops early after this many publishes in a row failed.
pub const MAX_CONSECUTIVE_FAILURES: u32 = 200;

/// Journals read at once while verifying.
const READ_CONCURRENCY: usize = 16;

/// Pause between verification passes.
const PASS_INTERVAL: Duration = Duration::from_millis(300);

/// Largest latency recorded, in microseconds (an hour); larger values are clamped.
pub(crate) const MAX_LATENCY_US: u64 = 3_600_000_000;

/// How messages are published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// gRPC `Publish` to the cluster's nodes.
    Grpc,
    /// MQTT QoS 1 to a broker.
    Mqtt {
        /// Broker `host:port`.
        broker: String,
    },
}

impl Transport {
    fn name(&self) -> &'static str {
        match self {
            Transport::Grpc => "grpc",
            Transport::Mqtt { .. } => "mqtt",
        }
    }
}

/// Verification settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyOptions {
    /// The journals count as settled once they have not grown for this long. Default 3 s.
    pub settle: Duration,
    /// Longest wait for the journals to settle. Default 60 s.
    pub timeout: Duration,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            settle: Duration::from_secs(3),
            timeout: Duration::from_secs(60),
        }
    }
}

/// What to run. [`BenchConfig::new`] gives the defaults of `routemq-ctl bench`.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchConfig {
    /// The route the messages are for (it must exist; with verification, journal handler).
    pub route: String,
    /// Topic template; must contain `{key}`.
    pub topic_template: String,
    /// Number of keys (K).
    pub keys: u32,
    /// Number of messages (N).
    pub messages: u64,
    /// Target messages per second over all producers; 0: as fast as possible.
    pub rate: u64,
    /// Payload size in bytes (at least the header's size is sent).
    pub payload_bytes: usize,
    /// gRPC or MQTT.
    pub transport: Transport,
    /// Number of producers (P), at most K.
    pub producers: u32,
    /// Messages in flight per producer (C).
    pub concurrency: u32,
    /// Stop sending after this long, even before N messages.
    pub duration: Option<Duration>,
    /// Read the journals back afterwards.
    pub verify: Option<VerifyOptions>,
    /// Run id (key and message-id prefix); generated when `None`.
    pub run_id: Option<String>,
    /// How long to wait for outstanding acknowledgements once sending stopped (MQTT).
    pub ack_timeout: Duration,
    /// MQTT only: no cluster; one subscriber takes the messages from the broker (see the
    /// module docs). The route is not looked up and the subscriber's stream is verified.
    pub broker_only: bool,
}

impl BenchConfig {
    /// Defaults: template `bench/{key}/data`, 100 keys, 10,000 messages, no rate limit,
    /// 100-byte payloads, gRPC, 1 producer, 16 in flight, no verification.
    pub fn new(route: impl Into<String>) -> Self {
        Self {
            route: route.into(),
            topic_template: "bench/{key}/data".into(),
            keys: 100,
            messages: 10_000,
            rate: 0,
            payload_bytes: 100,
            transport: Transport::Grpc,
            producers: 1,
            concurrency: 16,
            duration: None,
            verify: None,
            run_id: None,
            ack_timeout: Duration::from_secs(10),
            broker_only: false,
        }
    }

    /// Checks the numbers and the template.
    pub fn validate(&self) -> Result<(), BenchError> {
        let invalid = |text: String| Err(BenchError::Invalid(text));
        if !self.topic_template.contains("{key}") {
            return invalid(format!(
                "topic template {:?} has no {{key}} placeholder",
                self.topic_template
            ));
        }
        if self.keys == 0 || self.producers == 0 || self.concurrency == 0 {
            return invalid("keys, producers and concurrency must be at least 1".into());
        }
        if self.producers > self.keys {
            return invalid(format!(
                "{} producers for {} keys: every producer needs a key of its own",
                self.producers, self.keys
            ));
        }
        if self.broker_only && self.transport == Transport::Grpc {
            return invalid("a broker-only run publishes over MQTT: use the MQTT transport".into());
        }
        if let Transport::Mqtt { broker } = &self.transport {
            parse_broker(broker).map_err(BenchError::Invalid)?;
            if self.concurrency > u32::from(u16::MAX) - 1 {
                return invalid("MQTT allows at most 65534 messages in flight per connection".into());
            }
        }
        Ok(())
    }
}

/// Why a run could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The configuration does not fit (or does not fit the route).
    #[error("{0}")]
    Invalid(String),
    /// A cluster call failed (looking up the route).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The MQTT broker could not be used.
    #[error("MQTT broker {broker}: {reason}")]
    Mqtt {
        /// Broker `host:port`.
        broker: String,
        /// What went wrong.
        reason: String,
    },
}

/// Latency percentiles of acknowledged publishes, in microseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Latency {
    /// Acknowledged publishes measured.
    pub count: u64,
    /// Fastest.
    pub min: u64,
    /// Mean, rounded.
    pub mean: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Slowest.
    pub max: u64,
}

/// The outcome of a run: `routemq-ctl bench --json` prints it as is.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchReport {
    /// Run id: prefix of the keys and message ids.
    pub run_id: String,
    /// `grpc` or `mqtt`.
    pub transport: &'static str,
    /// `cluster`, or `broker_only` (no node: one MQTT subscriber takes the messages).
    pub target: &'static str,
    /// What an acknowledgement means: `cluster` (gRPC) or `broker_puback` (MQTT).
    pub ack: &'static str,
    /// Route name.
    pub route: String,
    /// Topic template.
    pub topic_template: String,
    /// Keys (K).
    pub keys: u32,
    /// Producers (P).
    pub producers: u32,
    /// In flight per producer (C).
    pub concurrency: u32,
    /// Requested payload size.
    pub payload_bytes: usize,
    /// Target rate in messages per second; null: as fast as possible.
    pub target_rate: Option<u64>,
    /// Messages asked for (N).
    pub messages_planned: u64,
    /// Messages published.
    pub messages_sent: u64,
    /// Messages acknowledged.
    pub messages_acked: u64,
    /// Messages that failed or were never acknowledged (the `errors` add up to this).
    pub messages_failed: u64,
    /// `messages` (all sent), `duration` (the limit struck first) or `errors` (too many
    /// failures in a row).
    pub stopped_by: &'static str,
    /// From the first publish to the last acknowledgement or failure, in milliseconds.
    pub duration_ms: u64,
    /// Acknowledged messages per second over `duration_ms`.
    pub throughput_per_s: f64,
    /// Latency of acknowledged publishes; null when none was acknowledged.
    pub latency_us: Option<Latency>,
    /// Failed messages per error: gRPC codes in snake_case (`unavailable`,
    /// `deadline_exceeded`, `not_found`...), `no_reachable_node`, `other_route` (another route
    /// took the message), `connection_lost`, `no_puback`.
    pub errors: BTreeMap<String, u64>,
    /// What reached the journals (the subscriber, broker-only); null without `--verify`.
    pub verify: Option<VerifyReport>,
    /// How fast the messages reached the journals (the subscriber, broker-only), from the
    /// first publish; null without `--verify` or when nothing arrived.
    pub delivery: Option<delivery::Delivery>,
}

impl BenchReport {
    /// True when verification ran and did not pass.
    pub fn verify_failed(&self) -> bool {
        self.verify
            .as_ref()
            .is_some_and(|v| v.verdict != verify::Verdict::Pass)
    }
}

/// One message as the producer saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Record {
    pub key_index: u32,
    pub producer: u32,
    pub seq: u64,
    pub acked: bool,
    /// Wall-clock time of the publish, microseconds since the Unix epoch (0: not sent).
    pub sent_unix_us: u64,
}

/// What one producer did.
pub(crate) struct ProducerResult {
    pub records: Vec<Record>,
    pub latencies: Histogram<u64>,
    pub errors: BTreeMap<String, u64>,
    /// Time of the last acknowledgement or failure.
    pub last_event: Option<Instant>,
    /// The duration limit stopped it.
    pub hit_deadline: bool,
}

impl ProducerResult {
    pub fn new() -> Self {
        Self {
            records: Vec::new(),
            latencies: new_histogram(),
            errors: BTreeMap::new(),
            last_event: None,
            hit_deadline: false,
        }
    }

    pub fn acked(&mut self, record: Record, latency: Duration) {
        self.records.push(Record {
            acked: true,
            ..record
        });
        self.latencies
            .saturating_record((latency.as_micros() as u64).clamp(1, MAX_LATENCY_US));
        self.last_event = Some(Instant::now());
    }

    pub fn failed(&mut self, record: Record, error: &str) {
        self.records.push(Record {
            acked: false,
            ..record
        });
        *self.errors.entry(error.to_string()).or_default() += 1;
        self.last_event = Some(Instant::now());
    }

    pub fn merge(&mut self, other: ProducerResult) {
        self.records.extend(other.records);
        // Same bounds on both sides: adding cannot fail.
        let _ = self.latencies.add(&other.latencies);
        for (code, n) in other.errors {
            *self.errors.entry(code).or_default() += n;
        }
        self.last_event = self.last_event.max(other.last_event);
        self.hit_deadline |= other.hit_deadline;
    }
}

pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// The run's fixed plan and its shared stop signals.
pub(crate) struct Plan {
    pub run_id: String,
    pub route: String,
    /// Topic of each bench key.
    pub topics: Vec<String>,
    /// Name of each bench key.
    pub keys: Vec<String>,
    pub producers: u32,
    pub messages: u64,
    pub payload_bytes: usize,
    pub concurrency: u32,
    pub rate: u64,
    pub deadline: Option<Instant>,
    pub ack_timeout: Duration,
    stop: AtomicBool,
    consecutive_failures: AtomicU32,
}

impl Plan {
    fn new(config: &BenchConfig, run_id: String) -> Self {
        let keys: Vec<String> = (0..config.keys).map(|i| payload::key_name(&run_id, i)).collect();
        let topics = keys
            .iter()
            .map(|k| payload::topic(&config.topic_template, k))
            .collect();
        Self {
            run_id,
            route: config.route.clone(),
            topics,
            keys,
            producers: config.producers,
            messages: config.messages,
            payload_bytes: config.payload_bytes,
            concurrency: config.concurrency,
            rate: config.rate,
            deadline: None,
            ack_timeout: config.ack_timeout,
            stop: AtomicBool::new(false),
            consecutive_failures: AtomicU32::new(0),
        }
    }

    /// Key indexes owned by producer `p`.
    pub fn producer_keys(&self, p: u32) -> Vec<u32> {
        (0..self.keys.len() as u32)
            .filter(|k| k % self.producers == p)
            .collect()
    }

    /// Messages producer `p` sends.
    pub fn producer_messages(&self, p: u32) -> u64 {
        let producers = u64::from(self.producers);
        self.messages / producers + u64::from(u64::from(p) < self.messages % producers)
    }

    /// When producer `p`'s message `seq` is due (rate R/P from `start`); `None`: no pacing.
    pub fn due(&self, start: Instant, seq: u64) -> Option<Instant> {
        if self.rate == 0 {
            return None;
        }
        let per_producer = self.rate as f64 / f64::from(self.producers);
        Some(start + Duration::from_secs_f64(seq as f64 / per_producer))
    }

    /// Message `seq` of producer `p`, whose keys are `own`.
    pub fn message(&self, p: u32, seq: u64, own: &[u32]) -> Message {
        let key_index = own[(seq % own.len() as u64) as usize];
        let header = Header {
            key: self.keys[key_index as usize].clone(),
            producer: p,
            seq,
        };
        Message {
            record: Record {
                key_index,
                producer: p,
                seq,
                acked: false,
                sent_unix_us: 0,
            },
            topic: self.topics[key_index as usize].clone(),
            payload: payload::encode(&header, self.payload_bytes),
            message_id: payload::message_id(&self.run_id, p, seq),
        }
    }

    /// Whether producers must stop sending now: a stop signal, or the deadline.
    pub fn should_stop(&self, result: &mut ProducerResult) -> bool {
        if self.stop.load(Ordering::Relaxed) {
            return true;
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            result.hit_deadline = true;
            return true;
        }
        false
    }

    pub fn note_success(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
    }

    pub fn note_failure(&self) {
        if self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1 >= MAX_CONSECUTIVE_FAILURES {
            self.stop.store(true, Ordering::Relaxed);
        }
    }

    fn stopped_by_errors(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// One message ready to publish.
#[derive(Debug, Clone)]
pub(crate) struct Message {
    pub record: Record,
    pub topic: String,
    pub payload: Vec<u8>,
    pub message_id: String,
}

/// The snake_case error name of a failed gRPC publish, for the report's `errors`.
pub fn error_name(err: &ClientError) -> String {
    match err {
        // Nodes that accepted connections but did not answer in time are not "unreachable".
        ClientError::NoReachableNode { last_error, .. } if last_error.code() == Code::DeadlineExceeded => {
            "deadline_exceeded".into()
        }
        ClientError::NoReachableNode { .. } => "no_reachable_node".into(),
        ClientError::Rpc { status, .. } => code_snake(status.code()).into(),
        ClientError::InvalidResponse { .. } => "invalid_response".into(),
        ClientError::NoSeeds | ClientError::InvalidAddress { .. } => "invalid_address".into(),
    }
}

/// A gRPC code in snake_case, e.g. `deadline_exceeded`.
pub fn code_snake(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// A new run id: 8 random hex digits.
pub fn new_run_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_string()
}

/// Runs a bench: checks the route, publishes, and verifies when asked. `client` is used for
/// the route lookup, the member list (gRPC producers are spread over the members) and the
/// journal reads; a broker-only run does not use it.
pub async fn run(client: &Client, config: BenchConfig) -> Result<BenchReport, BenchError> {
    config.validate()?;
    let run_id = config.run_id.clone().unwrap_or_else(new_run_id);
    let mut plan = Plan::new(&config, run_id);
    // The route, and the key each bench key is checked under (its journal key; broker-only:
    // the bench key itself).
    let (route, journal_keys) = if config.broker_only {
        (None, plan.keys.clone())
    } else {
        let route = client
            .get_route(config.route.as_str(), ReadConsistency::Linearizable)
            .await?
            .ok_or_else(|| BenchError::Invalid(format!("no route named {:?}", config.route)))?;
        let journal_keys = journal_keys(&route, &plan)?;
        if config.verify.is_some() && !is_journal(&route) {
            return Err(BenchError::Invalid(format!(
                "route {:?} does not use the journal handler: --verify reads journals back",
                route.name
            )));
        }
        (Some(route), journal_keys)
    };
    let subscriber = match (&config.transport, config.broker_only) {
        (Transport::Mqtt { broker }, true) => {
            let (host, port) = parse_broker(broker).map_err(BenchError::Invalid)?;
            let started = Subscriber::start(
                &host,
                port,
                format!("routemq-bench-{}-sub", plan.run_id),
                subscriber::filter_of(&config.topic_template),
                format!("{}-", plan.run_id),
            )
            .await
            .map_err(|reason| BenchError::Mqtt {
                broker: broker.clone(),
                reason,
            })?;
            Some(started)
        }
        _ => None,
    };

    let start = Instant::now();
    let start_unix_us = delivery::unix_us_now();
    plan.deadline = config.duration.map(|d| start + d);
    let plan = std::sync::Arc::new(plan);
    let mut total = ProducerResult::new();
    match &config.transport {
        Transport::Grpc => {
            let clients = grpc::producer_clients(client, config.producers).await?;
            let tasks: Vec<_> = clients
                .into_iter()
                .enumerate()
                .map(|(p, producer_client)| {
                    tokio::spawn(grpc::producer(plan.clone(), producer_client, p as u32, start))
                })
                .collect();
            for task in tasks {
                total.merge(task.await.expect("gRPC producer panicked"));
            }
        }
        Transport::Mqtt { broker } => {
            let (host, port) = parse_broker(broker).map_err(BenchError::Invalid)?;
            let mut tasks = Vec::new();
            for p in 0..config.producers {
                let connection =
                    mqtt::connect(&plan, &host, port, p)
                        .await
                        .map_err(|reason| BenchError::Mqtt {
                            broker: broker.clone(),
                            reason,
                        })?;
                tasks.push(connection);
            }
            let tasks: Vec<_> = tasks
                .into_iter()
                .enumerate()
                .map(|(p, connection)| {
                    tokio::spawn(mqtt::producer(plan.clone(), connection, p as u32, start))
                })
                .collect();
            for task in tasks {
                total.merge(task.await.expect("MQTT producer panicked"));
            }
        }
    }

    let mut report = report(&config, &plan, &total, start);
    let options = config.verify.unwrap_or_default();
    match (subscriber, &route) {
        (Some(subscriber), _) => {
            let (verify, delivered) =
                drain_subscriber(subscriber, &plan, &total.records, options, start_unix_us).await;
            report.verify = Some(verify);
            report.delivery = delivered;
        }
        (None, Some(route)) if config.verify.is_some() => {
            let (verify, delivered) = verify_journals(
                client,
                &plan,
                route,
                &journal_keys,
                &total.records,
                options,
                start_unix_us,
            )
            .await;
            report.verify = Some(verify);
            report.delivery = delivered;
        }
        _ => {}
    }
    Ok(report)
}

/// Publish time of every message sent, by identity.
fn sent_times(plan: &Plan, records: &[Record]) -> HashMap<Header, u64> {
    records
        .iter()
        .filter(|r| r.sent_unix_us > 0)
        .map(|r| {
            (
                Header {
                    key: plan.keys[r.key_index as usize].clone(),
                    producer: r.producer,
                    seq: r.seq,
                },
                r.sent_unix_us,
            )
        })
        .collect()
}

/// Broker-only: waits until the subscriber has every message sent, or has received nothing
/// new for `settle`, or `timeout` passed; then checks what it received like journals.
async fn drain_subscriber(
    subscriber: Subscriber,
    plan: &Plan,
    records: &[Record],
    options: VerifyOptions,
    start_unix_us: u64,
) -> (VerifyReport, Option<delivery::Delivery>) {
    let started = Instant::now();
    let mut last_count = subscriber.received();
    let mut last_growth = Instant::now();
    let settled = loop {
        if subscriber.distinct() >= records.len() {
            break true;
        }
        let now = Instant::now();
        let count = subscriber.received();
        if count != last_count {
            (last_count, last_growth) = (count, now);
        }
        if now.duration_since(last_growth) >= options.settle {
            break true;
        }
        if now.duration_since(started) >= options.timeout {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let arrivals = match subscriber.stop().await {
        Ok(arrivals) => arrivals,
        Err(reason) => return (unreadable(&reason, started.elapsed()), None),
    };
    let mut entries: HashMap<&str, Vec<routemq_proto::v1::JournalEntry>> = HashMap::new();
    for (offset, arrival) in arrivals.iter().enumerate() {
        entries
            .entry(arrival.header.key.as_str())
            .or_default()
            .push(routemq_proto::v1::JournalEntry {
                offset: offset as u64,
                topic: arrival.topic.clone(),
                payload: arrival.payload.clone(),
                processed_at_unix_ms: (arrival.at_unix_us / 1000) as i64,
                ..Default::default()
            });
    }
    let sent = sent_by_journal_key(plan, &plan.keys, records);
    let checks: Vec<KeyCheck> = sent
        .iter()
        .map(|(key, sent)| {
            let got = entries.get(key.as_str()).map_or(&[][..], Vec::as_slice);
            check_key(&plan.run_id, key, sent, got)
        })
        .collect();
    let verify = summarize_at(
        checks,
        true,
        settled,
        started.elapsed(),
        "reached the subscriber for",
    );
    let delivered = delivery::delivery(
        "subscriber",
        start_unix_us,
        &sent_times(plan, records),
        arrivals.iter().map(|a| (a.header.clone(), a.at_unix_us)),
    );
    (verify, delivered)
}

/// The journal key of every bench key, checking that the route takes the bench's topics.
fn journal_keys(route: &Route, plan: &Plan) -> Result<Vec<String>, BenchError> {
    plan.topics
        .iter()
        .map(|topic| {
            key_of(route, topic).ok_or_else(|| {
                BenchError::Invalid(format!(
                    "topic {topic:?} does not match route {:?} (pattern {:?}{})",
                    route.name,
                    effective_pattern(route),
                    if route.key_param.is_empty() {
                        String::new()
                    } else {
                        format!(", key parameter {:?}", route.key_param)
                    }
                ))
            })
        })
        .collect()
}

fn report(config: &BenchConfig, plan: &Plan, total: &ProducerResult, start: Instant) -> BenchReport {
    let sent = total.records.len() as u64;
    let acked = total.records.iter().filter(|r| r.acked).count() as u64;
    let elapsed = total
        .last_event
        .map(|t| t.saturating_duration_since(start))
        .unwrap_or_default();
    let seconds = elapsed.as_secs_f64();
    let h = &total.latencies;
    let latency = (!h.is_empty()).then(|| Latency {
        count: h.len(),
        min: h.min(),
        mean: h.mean().round() as u64,
        p50: h.value_at_quantile(0.50),
        p90: h.value_at_quantile(0.90),
        p99: h.value_at_quantile(0.99),
        max: h.max(),
    });
    let stopped_by = if plan.stopped_by_errors() {
        "errors"
    } else if total.hit_deadline {
        "duration"
    } else {
        "messages"
    };
    BenchReport {
        run_id: plan.run_id.clone(),
        transport: config.transport.name(),
        target: if config.broker_only {
            "broker_only"
        } else {
            "cluster"
        },
        ack: match config.transport {
            Transport::Grpc => "cluster",
            Transport::Mqtt { .. } => "broker_puback",
        },
        route: config.route.clone(),
        topic_template: config.topic_template.clone(),
        keys: config.keys,
        producers: config.producers,
        concurrency: config.concurrency,
        payload_bytes: config.payload_bytes,
        target_rate: (config.rate > 0).then_some(config.rate),
        messages_planned: config.messages,
        messages_sent: sent,
        messages_acked: acked,
        messages_failed: sent - acked,
        stopped_by,
        duration_ms: elapsed.as_millis() as u64,
        throughput_per_s: if seconds > 0.0 {
            acked as f64 / seconds
        } else {
            0.0
        },
        latency_us: latency,
        errors: total.errors.clone(),
        verify: None,
        delivery: None,
    }
}

/// Groups what was sent by journal key.
fn sent_by_journal_key(
    plan: &Plan,
    journal_keys: &[String],
    records: &[Record],
) -> BTreeMap<String, Vec<Sent>> {
    let mut by_key: BTreeMap<String, Vec<Sent>> = BTreeMap::new();
    for record in records {
        by_key
            .entry(journal_keys[record.key_index as usize].clone())
            .or_default()
            .push(Sent {
                header: Header {
                    key: plan.keys[record.key_index as usize].clone(),
                    producer: record.producer,
                    seq: record.seq,
                },
                acked: record.acked,
            });
    }
    by_key
}

/// Reads every journal key the run wrote to, pass after pass, until the journals hold every
/// acknowledged message and stop growing, or have not grown for `settle`, or `timeout` passed.
/// A journal that cannot be read for a retryable reason (its owner is failing over) is tried
/// again in the next pass; one still unreadable at the timeout makes the verdict `error`.
async fn verify_journals(
    client: &Client,
    plan: &Plan,
    route: &Route,
    journal_keys: &[String],
    records: &[Record],
    options: VerifyOptions,
    start_unix_us: u64,
) -> (VerifyReport, Option<delivery::Delivery>) {
    let started = Instant::now();
    let order_checked = route.mode == RouteMode::Ordered as i32;
    let sent = sent_by_journal_key(plan, journal_keys, records);
    let mut journals: HashMap<String, (Vec<routemq_proto::v1::JournalEntry>, u64)> =
        sent.keys().map(|k| (k.clone(), (Vec::new(), 0))).collect();
    let mut last_growth = Instant::now();
    loop {
        // One pass: every key from where the last pass stopped.
        let reads = futures::stream::iter(journals.iter().map(|(key, (_, offset))| {
            let (key, offset) = (key.clone(), *offset);
            async move {
                let read = client.read_journal_from(&route.name, &key, offset).await;
                (key, read)
            }
        }))
        .buffer_unordered(READ_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
        let mut grew = false;
        // A key whose journal could not be read in this pass (e.g. its owner is failing over).
        let mut unread: Option<String> = None;
        for (key, read) in reads {
            match read {
                Ok((entries, next)) => {
                    let journal = journals.get_mut(&key).expect("key read");
                    grew |= !entries.is_empty();
                    journal.0.extend(entries);
                    journal.1 = next;
                }
                Err(err) if err.is_retryable() => {
                    tracing::debug!(%key, error = %err, "journal not readable yet");
                    unread = Some(format!("journal of key {key:?}: {err}"));
                }
                Err(err) => {
                    let reason = format!("journal of key {key:?}: {err}");
                    return (unreadable(&reason, started.elapsed()), None);
                }
            }
        }
        let now = Instant::now();
        if grew {
            last_growth = now;
        }
        let checks: Vec<KeyCheck> = sent
            .iter()
            .map(|(key, sent)| check_key(&plan.run_id, key, sent, &journals[key].0))
            .collect();
        let complete = checks.iter().all(|c| c.lost == 0);
        let settled =
            unread.is_none() && ((complete && !grew) || now.duration_since(last_growth) >= options.settle);
        let timed_out = now.duration_since(started) >= options.timeout;
        if let (Some(reason), true) = (&unread, timed_out) {
            return (unreadable(reason, started.elapsed()), None);
        }
        if settled || timed_out {
            let run_prefix = format!("{}-", plan.run_id);
            let arrivals = journals.values().flat_map(|(entries, _)| {
                entries.iter().filter_map(|e| {
                    let header = payload::decode(&e.payload).filter(|h| h.key.starts_with(&run_prefix))?;
                    Some((
                        header,
                        (e.processed_at_unix_ms.max(0) as u64).saturating_mul(1000),
                    ))
                })
            });
            let delivered =
                delivery::delivery("journal", start_unix_us, &sent_times(plan, records), arrivals);
            return (
                summarize(checks, order_checked, settled, started.elapsed()),
                delivered,
            );
        }
        tokio::time::sleep(PASS_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(keys: u32, producers: u32, messages: u64, rate: u64) -> Plan {
        let mut config = BenchConfig::new("bench");
        config.keys = keys;
        config.producers = producers;
        config.messages = messages;
        config.rate = rate;
        Plan::new(&config, "run1".into())
    }

    #[test]
    fn keys_and_messages_are_split_between_producers() {
        let p = plan(5, 2, 7, 0);
        assert_eq!(p.producer_keys(0), vec![0, 2, 4]);
        assert_eq!(p.producer_keys(1), vec![1, 3]);
        assert_eq!((p.producer_messages(0), p.producer_messages(1)), (4, 3));
        let own = p.producer_keys(1);
        let m = p.message(1, 3, &own);
        assert_eq!(m.record.key_index, 3);
        assert_eq!(m.topic, "bench/run1-3/data");
        assert_eq!(m.message_id, "run1-1-3");
        assert_eq!(m.payload.len(), 100);
        assert_eq!(
            payload::decode(&m.payload),
            Some(Header {
                key: "run1-3".into(),
                producer: 1,
                seq: 3
            })
        );
    }

    #[test]
    fn pacing_spreads_the_rate_over_producers() {
        let start = Instant::now();
        assert_eq!(plan(4, 2, 10, 0).due(start, 5), None);
        // 100/s over 2 producers: one message per 20 ms each.
        assert_eq!(
            plan(4, 2, 10, 100).due(start, 5),
            Some(start + Duration::from_millis(100))
        );
    }

    #[test]
    fn config_validation() {
        let ok = BenchConfig::new("r");
        assert!(ok.validate().is_ok());
        let bad = |f: fn(&mut BenchConfig)| {
            let mut c = BenchConfig::new("r");
            f(&mut c);
            c.validate().unwrap_err().to_string()
        };
        assert!(bad(|c| c.topic_template = "bench/x".into()).contains("no {key} placeholder"));
        assert!(bad(|c| c.producers = 200).contains("200 producers for 100 keys"));
        assert!(bad(|c| c.concurrency = 0).contains("at least 1"));
        assert!(bad(|c| c.transport = Transport::Mqtt {
            broker: "nohost".into()
        })
        .contains("host:port"));
    }

    #[test]
    fn journal_keys_follow_the_route() {
        let p = plan(2, 1, 1, 0);
        let keyed = Route {
            name: "bench".into(),
            pattern: "bench/{id}/data".into(),
            key_param: "id".into(),
            ..Route::default()
        };
        assert_eq!(journal_keys(&keyed, &p).unwrap(), vec!["run1-0", "run1-1"]);
        let whole = Route {
            key_param: String::new(),
            ..keyed.clone()
        };
        assert_eq!(
            journal_keys(&whole, &p).unwrap(),
            vec!["bench/run1-0/data", "bench/run1-1/data"]
        );
        let other = Route {
            pattern: "sensors/{id}".into(),
            ..keyed
        };
        let err = journal_keys(&other, &p).unwrap_err().to_string();
        assert_eq!(
            err,
            "topic \"bench/run1-0/data\" does not match route \"bench\" (pattern \"sensors/{id}\", key parameter \"id\")"
        );
    }

    #[test]
    fn report_adds_up() {
        let p = plan(2, 1, 3, 0);
        let start = Instant::now();
        let mut total = ProducerResult::new();
        let rec = |seq| Record {
            key_index: 0,
            producer: 0,
            seq,
            acked: false,
            sent_unix_us: 0,
        };
        total.acked(rec(0), Duration::from_millis(2));
        total.acked(rec(1), Duration::from_millis(4));
        total.failed(rec(2), "unavailable");
        let config = BenchConfig::new("bench");
        let report = report(&config, &p, &total, start);
        assert_eq!(
            (
                report.messages_sent,
                report.messages_acked,
                report.messages_failed
            ),
            (3, 2, 1)
        );
        assert_eq!(report.errors, BTreeMap::from([("unavailable".to_string(), 1)]));
        let latency = report.latency_us.clone().unwrap();
        assert_eq!(latency.count, 2);
        assert!((1990..=2010).contains(&latency.p50), "{latency:?}");
        assert!((3990..=4010).contains(&latency.max), "{latency:?}");
        assert_eq!(report.stopped_by, "messages");
        assert_eq!(report.ack, "cluster");
        assert!(!report.verify_failed());
    }

    #[test]
    fn error_names_are_snake_case() {
        let rpc = |status| ClientError::Rpc {
            addr: "a:1".into(),
            status,
        };
        assert_eq!(error_name(&rpc(tonic::Status::unavailable("x"))), "unavailable");
        assert_eq!(
            error_name(&rpc(tonic::Status::deadline_exceeded("x"))),
            "deadline_exceeded"
        );
        assert_eq!(
            error_name(&ClientError::NoReachableNode {
                tried: vec![],
                last_error: tonic::Status::unavailable("x")
            }),
            "no_reachable_node"
        );
        assert_eq!(
            error_name(&ClientError::NoReachableNode {
                tried: vec![],
                last_error: tonic::Status::deadline_exceeded("no answer within 3s")
            }),
            "deadline_exceeded"
        );
        let id = new_run_id();
        assert_eq!(id.len(), 8);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
