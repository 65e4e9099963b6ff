//! The ordered-stream workload (G2-G5): producers publish `(key, producer, seq)` to an ordered
//! route with the journal handler; readers read journals back.
//!
//! - Setup: `Routes.PutRoute` of `jstream` = pattern `jstream/{key}/{producer}`, key parameter
//!   `key`, mode ordered, handler journal (retried until it succeeds or 30 s pass).
//! - `publish` (producers, over gRPC `Messages.Publish` to the node they are bound to): topic
//!   `jstream/<key>/<process>`, message id `<key>:<process>:<seq>`, payload the same as JSON.
//!   The process id is the producer: after an `info` the producer continues as a new process,
//!   so its sequence numbers only need to be ordered among its own, acknowledged or not.
//! - `publish` over MQTT (`--mqtt-producers`; value `via: "mqtt"`, node `mqtt`): QoS 1 to the
//!   broker, ok on the broker's PUBACK, `info` on a timeout or a lost connection. MQTT 3.1.1
//!   carries no message id, so the node generates one; the harness identifies such entries by
//!   the `id` in their payload.
//! - `read-journal` (one reader during the run) and `final-read` (after healing, a fresh process
//!   per key, retried on every node in turn): `Messages.ReadJournal` from offset 0 to the end.
//!
//! If the Messages or Routes service answers `UNIMPLEMENTED`, every operation is recorded as
//! `fail` with that reason and the clients slow down to one attempt per second; the checkers
//! then report `not-run`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use routemq_proto::v1::messages_client::MessagesClient;
use routemq_proto::v1::routes_client::RoutesClient;
use routemq_proto::v1::{
    handler, Handler, JournalHandler, PublishRequest, PutRouteRequest, ReadJournalRequest, Route, RouteMode,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use serde_json::{json, Value};
use tokio::time::{sleep, timeout, Instant};

use super::{classify, status_text, Channels, Classified, WorkloadConfig};
use crate::checker::stream::message_id;
use crate::history::{Op, OpKind, Process, Recorder};

/// Name of the route.
pub const ROUTE: &str = "jstream";

/// Key names.
pub fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("k{i}")).collect()
}

/// The route definition.
pub fn route() -> Route {
    Route {
        name: ROUTE.to_string(),
        pattern: "jstream/{key}/{producer}".to_string(),
        key_param: "key".to_string(),
        qos: 1,
        mode: RouteMode::Ordered as i32,
        worker_count: 1,
        handler: Some(Handler {
            kind: Some(handler::Kind::Journal(JournalHandler {})),
        }),
        group: String::new(),
        version: 0,
        priority: 0,
        message_id_field: String::new(),
    }
}

/// Creates the route through any node, following NotLeader answers; records it as a
/// `setup-route` operation. Returns the error text if it never succeeded.
pub async fn setup(
    recorder: &Recorder,
    nodes: &[(String, String)],
    process: u64,
    within: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + within;
    let mut channels = Channels::default();
    let mut attempt = 0usize;
    loop {
        let (node, addr) = &nodes[attempt % nodes.len()];
        let invoke = recorder.record(
            Op::new(OpKind::Invoke, Process::Client(process), "setup-route")
                .key(ROUTE)
                .node(node),
        );
        let mut at = addr.clone();
        let mut outcome = Err(Classified::Fail("no attempt".into()));
        for _ in 0..4 {
            let channel = match channels.get(&at) {
                Ok(c) => c,
                Err(s) => {
                    outcome = Err(Classified::Fail(status_text(&s)));
                    break;
                }
            };
            let req = PutRouteRequest {
                route: Some(route()),
                expected_version: None,
            };
            match timeout(Duration::from_secs(5), RoutesClient::new(channel).put_route(req)).await {
                Ok(Ok(_)) => {
                    outcome = Ok(());
                    break;
                }
                Ok(Err(status)) => match classify(&status, false) {
                    Classified::Redirect(leader) => at = leader,
                    other => {
                        outcome = Err(other);
                        break;
                    }
                },
                Err(_) => {
                    outcome = Err(Classified::Info("TIMEOUT".into()));
                    break;
                }
            }
        }
        match outcome {
            Ok(()) => {
                recorder.record(Op::completion_of(&invoke, OpKind::Ok));
                return Ok(());
            }
            Err(Classified::Fail(e) | Classified::Redirect(e)) => {
                let stop = e.starts_with("UNIMPLEMENTED");
                recorder.record(Op::completion_of(&invoke, OpKind::Fail).error(e.clone()));
                if stop || Instant::now() > deadline {
                    return Err(e);
                }
            }
            Err(Classified::Info(e)) => {
                recorder.record(Op::completion_of(&invoke, OpKind::Info).error(e.clone()));
                if Instant::now() > deadline {
                    return Err(e);
                }
            }
        }
        attempt += 1;
        sleep(Duration::from_millis(500)).await;
    }
}

/// One producer.
#[derive(Debug, Clone)]
pub struct ProducerSpec {
    /// First process id.
    pub process: u64,
    /// Added to the process id after an `info`.
    pub stride: u64,
    /// Node it publishes to.
    pub node: String,
    /// That node's gRPC address.
    pub addr: String,
    /// RNG seed.
    pub seed: u64,
}

/// Runs one producer until `deadline`.
pub async fn run_producer(
    spec: ProducerSpec,
    keys: Arc<Vec<String>>,
    cfg: WorkloadConfig,
    recorder: Arc<Recorder>,
    deadline: Instant,
) {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let mut channels = Channels::default();
    let mut process = spec.process;
    let mut seqs: HashMap<String, u64> = HashMap::new();
    loop {
        let think = cfg.think.mul_f64(rng.random_range(0.0..2.0));
        if Instant::now() + think >= deadline {
            break;
        }
        sleep(think).await;
        let key = keys[rng.random_range(0..keys.len())].clone();
        let seq = {
            let s = seqs.entry(key.clone()).or_insert(0);
            *s += 1;
            *s
        };
        let id = message_id(&key, process, seq);
        let value = json!({"key": key, "producer": process, "seq": seq, "id": id, "via": "grpc"});
        let invoke = recorder.record(
            Op::new(OpKind::Invoke, Process::Client(process), "publish")
                .key(&key)
                .node(&spec.node)
                .value(value.clone()),
        );
        let req = PublishRequest {
            topic: format!("jstream/{key}/{process}"),
            payload: value.to_string().into_bytes(),
            message_id: id.clone(),
            request_id: 0,
        };
        let call = async {
            let channel = channels.get(&spec.addr)?;
            MessagesClient::new(channel).publish(req).await
        };
        let done = match timeout(cfg.op_timeout, call).await {
            Ok(Ok(resp)) => {
                let r = resp.into_inner();
                Op::completion_of(&invoke, OpKind::Ok)
                    .value(json!(id))
                    .extra(json!({
                        "partition": r.partition, "processed_by": r.processed_by, "epoch": r.epoch,
                        "route": r.route, "key": r.key,
                    }))
            }
            Ok(Err(status)) => match classify(&status, false) {
                Classified::Fail(e) | Classified::Redirect(e) => {
                    Op::completion_of(&invoke, OpKind::Fail).value(json!(id)).error(e)
                }
                Classified::Info(e) if e.to_ascii_lowercase().contains("connection refused") => {
                    Op::completion_of(&invoke, OpKind::Fail).value(json!(id)).error(e)
                }
                Classified::Info(e) => Op::completion_of(&invoke, OpKind::Info).value(json!(id)).error(e),
            },
            Err(_) => Op::completion_of(&invoke, OpKind::Info)
                .value(json!(id))
                .error(format!("TIMEOUT: no answer within {:?}", cfg.op_timeout)),
        };
        let kind = done.kind;
        let unimplemented = done
            .error
            .as_deref()
            .is_some_and(|e| e.starts_with("UNIMPLEMENTED"));
        recorder.record(done);
        match kind {
            OpKind::Info => {
                // Crashed: a new producer takes over (its sequence numbers start again at 1).
                process += spec.stride;
                seqs.clear();
                sleep(Duration::from_millis(200)).await;
            }
            OpKind::Fail if unimplemented => sleep(Duration::from_secs(1)).await,
            OpKind::Fail => sleep(Duration::from_millis(100)).await,
            _ => {}
        }
    }
}

/// What the MQTT connection task reports.
#[derive(Debug)]
enum MqttEvent {
    /// A PUBLISH left with this packet id.
    Sent(u16),
    /// The broker acknowledged this packet id.
    Acked(u16),
    /// The connection failed (rumqttc reconnects on the next poll).
    Error(String),
}

/// Runs one MQTT QoS 1 producer (connected to the broker, not to a node) until `deadline`.
pub async fn run_mqtt_producer(
    spec: ProducerSpec,
    keys: Arc<Vec<String>>,
    cfg: WorkloadConfig,
    recorder: Arc<Recorder>,
    deadline: Instant,
) {
    let (host, port) = match cfg.broker.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse().unwrap_or(1883)),
        None => (cfg.broker.clone(), 1883),
    };
    let mut conn = MqttConn::open(&host, port, spec.process);
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let mut process = spec.process;
    let mut seqs: HashMap<String, u64> = HashMap::new();
    loop {
        let think = cfg.think.mul_f64(rng.random_range(0.0..2.0));
        if Instant::now() + think >= deadline {
            break;
        }
        sleep(think).await;
        while conn.rx.try_recv().is_ok() {}
        let key = keys[rng.random_range(0..keys.len())].clone();
        let seq = {
            let s = seqs.entry(key.clone()).or_insert(0);
            *s += 1;
            *s
        };
        let id = message_id(&key, process, seq);
        let value = json!({"key": key, "producer": process, "seq": seq, "id": id, "via": "mqtt"});
        let invoke = recorder.record(
            Op::new(OpKind::Invoke, Process::Client(process), "publish")
                .key(&key)
                .node("mqtt")
                .value(value.clone()),
        );
        let (client, rx) = (&conn.client, &mut conn.rx);
        let wait = async {
            client
                .publish(
                    format!("jstream/{key}/{process}"),
                    QoS::AtLeastOnce,
                    false,
                    value.to_string(),
                )
                .await
                .map_err(|e| (false, format!("CLIENT: {e}")))?;
            let mut pkid = None;
            while let Some(ev) = rx.recv().await {
                match ev {
                    MqttEvent::Sent(p) if pkid.is_none() => pkid = Some(p),
                    MqttEvent::Acked(p) if Some(p) == pkid => return Ok(p),
                    // Queued in the client: it may still go out after the reconnect.
                    MqttEvent::Error(e) => return Err((true, format!("CONNECTION: {e}"))),
                    _ => {}
                }
            }
            Err((true, "CONNECTION: event loop ended".to_string()))
        };
        let done = match timeout(cfg.op_timeout, wait).await {
            Ok(Ok(pkid)) => Op::completion_of(&invoke, OpKind::Ok)
                .value(json!(id))
                .extra(json!({"pkid": pkid})),
            // Never handed to the connection: the broker cannot have it.
            Ok(Err((false, e))) => Op::completion_of(&invoke, OpKind::Fail).value(json!(id)).error(e),
            Ok(Err((true, e))) => Op::completion_of(&invoke, OpKind::Info).value(json!(id)).error(e),
            Err(_) => Op::completion_of(&invoke, OpKind::Info)
                .value(json!(id))
                .error(format!("TIMEOUT: no PUBACK within {:?}", cfg.op_timeout)),
        };
        let kind = done.kind;
        recorder.record(done);
        if kind == OpKind::Info {
            // Crashed: a new producer with a new connection, so that a late PUBLISH of the
            // old message can never be taken for the new one's.
            process += spec.stride;
            seqs.clear();
            conn.close().await;
            conn = MqttConn::open(&host, port, process);
            sleep(Duration::from_millis(200)).await;
        }
    }
    conn.close().await;
}

/// One MQTT connection of a producer: the client and the task polling its event loop.
struct MqttConn {
    client: AsyncClient,
    rx: tokio::sync::mpsc::UnboundedReceiver<MqttEvent>,
    events: tokio::task::JoinHandle<()>,
}

impl MqttConn {
    fn open(host: &str, port: u16, process: u64) -> MqttConn {
        let mut options = MqttOptions::new(format!("jepsen-producer-{process}"), host, port);
        options
            .set_keep_alive(Duration::from_secs(5))
            .set_clean_session(true);
        let (client, mut eventloop) = AsyncClient::new(options, 16);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let events = tokio::spawn(async move {
            loop {
                let event = match eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Some(MqttEvent::Sent(pkid)),
                    Ok(Event::Incoming(Packet::PubAck(ack))) => Some(MqttEvent::Acked(ack.pkid)),
                    Ok(_) => None,
                    Err(e) => {
                        let _ = tx.send(MqttEvent::Error(e.to_string()));
                        sleep(Duration::from_millis(300)).await;
                        None
                    }
                };
                if let Some(ev) = event {
                    if tx.send(ev).is_err() {
                        break;
                    }
                }
            }
        });
        MqttConn { client, rx, events }
    }

    async fn close(&mut self) {
        let _ = timeout(Duration::from_millis(500), self.client.disconnect()).await;
        self.events.abort();
    }
}

/// Reads a key's whole journal through `addr`: the entries as history values.
async fn read_journal(channels: &mut Channels, addr: &str, key: &str) -> Result<Vec<Value>, String> {
    let channel = channels.get(addr).map_err(|s| status_text(&s))?;
    let mut client = MessagesClient::new(channel);
    let mut from = 0u64;
    let mut out = Vec::new();
    for _ in 0..10_000 {
        let resp = client
            .read_journal(ReadJournalRequest {
                route: ROUTE.to_string(),
                key: key.to_string(),
                from_offset: from,
                limit: 1000,
            })
            .await
            .map_err(|s| status_text(&s))?
            .into_inner();
        let n = resp.entries.len();
        for e in resp.entries {
            // The producer's id travels in the payload too (MQTT messages get a generated
            // message id).
            let payload_id = serde_json::from_slice::<Value>(&e.payload)
                .ok()
                .and_then(|v| v.get("id").and_then(Value::as_str).map(String::from));
            let id = payload_id.unwrap_or_else(|| e.message_id.clone());
            out.push(
                json!({"o": e.offset, "id": id, "mid": e.message_id, "by": e.processed_by,
                            "ep": e.epoch, "at": e.processed_at_unix_ms, "p": e.partition}),
            );
        }
        if resp.end || n == 0 {
            return Ok(out);
        }
        from = resp.next_offset.max(from + n as u64);
    }
    Err("journal did not end after 10000 pages".into())
}

/// Performs and records one journal read (`f` = `read-journal` or `final-read`).
/// `at` = (node, gRPC address).
async fn read_once(
    recorder: &Recorder,
    channels: &mut Channels,
    f: &str,
    process: u64,
    at: (&str, &str),
    key: &str,
    within: Duration,
) -> Result<Vec<Value>, String> {
    let (node, addr) = at;
    let invoke = recorder.record(
        Op::new(OpKind::Invoke, Process::Client(process), f)
            .key(key)
            .node(node),
    );
    let result = match timeout(within, read_journal(channels, addr, key)).await {
        Ok(r) => r,
        Err(_) => Err(format!("TIMEOUT: no answer within {within:?}")),
    };
    match result {
        Ok(entries) => {
            let n = entries.len();
            recorder.record(
                Op::completion_of(&invoke, OpKind::Ok)
                    .value(Value::Array(entries.clone()))
                    .extra(json!({"entries": n})),
            );
            Ok(entries)
        }
        Err(e) => {
            recorder.record(Op::completion_of(&invoke, OpKind::Fail).error(e.clone()));
            Err(e)
        }
    }
}

/// The reader's settings.
#[derive(Debug, Clone)]
pub struct ReaderSpec {
    /// Its process id.
    pub process: u64,
    /// (node, gRPC address) of every node; it reads through each in turn.
    pub nodes: Vec<(String, String)>,
    /// Pause between reads.
    pub period: Duration,
    /// Deadline of one whole-journal read.
    pub op_timeout: Duration,
    /// RNG seed.
    pub seed: u64,
}

/// A reader during the run: every ~`period`, one random key's whole journal through the
/// next node.
pub async fn run_reader(
    spec: ReaderSpec,
    keys: Arc<Vec<String>>,
    recorder: Arc<Recorder>,
    deadline: Instant,
) {
    let (nodes, period, op_timeout) = (spec.nodes.clone(), spec.period, spec.op_timeout);
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let mut channels = Channels::default();
    let mut i = 0usize;
    while Instant::now() + period < deadline {
        sleep(period).await;
        let (node, addr) = &nodes[i % nodes.len()];
        i += 1;
        let key = &keys[rng.random_range(0..keys.len())];
        if let Err(e) = read_once(
            &recorder,
            &mut channels,
            "read-journal",
            spec.process,
            (node, addr),
            key,
            op_timeout,
        )
        .await
        {
            if e.starts_with("UNIMPLEMENTED") {
                sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

/// What the final reads saw.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FinalReads {
    /// Keys never read successfully.
    pub unread: Vec<String>,
    /// Rounds of reads (a key is read again while acknowledged messages are missing from it).
    pub rounds: u32,
    /// Acknowledged messages missing after the first round.
    pub missing_after_first_round: usize,
    /// Acknowledged messages missing after the last round.
    pub missing_at_end: usize,
    /// Seconds until nothing acknowledged was missing, if that happened.
    pub converged_after_s: Option<f64>,
}

/// Acknowledged publishes per key, from the history so far.
fn acked_by_key(recorder: &Recorder) -> HashMap<String, HashSet<String>> {
    let mut out: HashMap<String, HashSet<String>> = HashMap::new();
    for pair in crate::history::pairs(&recorder.ops()) {
        if pair.invoke.f == "publish" && pair.outcome() == OpKind::Ok {
            if let (Some(key), Some(id)) = (
                &pair.invoke.key,
                pair.invoke.value.get("id").and_then(Value::as_str),
            ) {
                out.entry(key.clone()).or_default().insert(id.to_string());
            }
        }
    }
    out
}

/// After healing: for every key a fresh process reads the journal to the end, trying the
/// nodes in turn until a read succeeds. While acknowledged messages are missing from a key's
/// journal (they may still be queued: at the broker, or behind a retrying ingress), its reads
/// are repeated every 2 s, until nothing is missing or `within` has passed; G4 judges the last
/// read of each key. `within` also bounds the retries of failing reads.
pub async fn final_reads(
    recorder: &Recorder,
    nodes: &[(String, String)],
    keys: &[String],
    first_process: u64,
    op_timeout: Duration,
    within: Duration,
) -> FinalReads {
    let start = Instant::now();
    let deadline = start + within;
    let acked = acked_by_key(recorder);
    let mut channels = Channels::default();
    let mut out = FinalReads::default();
    let mut pending: Vec<(usize, String)> = keys.iter().cloned().enumerate().collect();
    loop {
        out.rounds += 1;
        let mut again = Vec::new();
        let mut missing = 0usize;
        for (i, key) in &pending {
            let process = first_process + *i as u64;
            let mut attempt = 0usize;
            let entries = loop {
                let (node, addr) = &nodes[(i + attempt) % nodes.len()];
                let result = read_once(
                    recorder,
                    &mut channels,
                    "final-read",
                    process,
                    (node, addr),
                    key,
                    op_timeout,
                )
                .await;
                match result {
                    Ok(entries) => break Some(entries),
                    Err(e) if e.starts_with("UNIMPLEMENTED") => break None,
                    Err(_) => {}
                }
                attempt += 1;
                if Instant::now() > deadline {
                    break None;
                }
                sleep(Duration::from_millis(300)).await;
            };
            let Some(entries) = entries else {
                out.unread.push(key.clone());
                continue;
            };
            let present: HashSet<&str> = entries
                .iter()
                .filter_map(|e| e.get("id").and_then(Value::as_str))
                .collect();
            let absent = acked
                .get(key)
                .map(|ids| ids.iter().filter(|id| !present.contains(id.as_str())).count())
                .unwrap_or(0);
            if absent > 0 {
                missing += absent;
                again.push((*i, key.clone()));
            }
        }
        if out.rounds == 1 {
            out.missing_after_first_round = missing;
        }
        out.missing_at_end = missing;
        if again.is_empty() {
            out.converged_after_s = Some(start.elapsed().as_secs_f64());
            return out;
        }
        if Instant::now() + Duration::from_secs(2) > deadline {
            return out;
        }
        sleep(Duration::from_secs(2)).await;
        pending = again;
    }
}
