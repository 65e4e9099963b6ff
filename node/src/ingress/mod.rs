//! MQTT ingress: takes messages from a real broker (Mosquitto, through rumqttc) into the
//! cluster through [`Dispatch`], and acknowledges each to the broker only once the key's owner
//! accepted it.
//!
//! # What it owns
//! The MQTT connections of this node, as asked for by an [`IngressPlan`] that the node computes
//! from the routes and ownership and publishes on a `watch` channel. When the plan changes the
//! ingress diffs it by route and client id ([`plan`]): unchanged connections keep running,
//! removed ones finish and disconnect, new ones connect. Every connection is one task owned by
//! the ingress; [`IngressHandle::shutdown`] returns once all of them have ended.
//!
//! # Shared routes
//! `worker_count` connections per node subscribe to `$share/<group>/<filter>` with client ids
//! `<prefix>-<node>-<route>-<i>` and clean sessions; the broker spreads the messages over every
//! node's connections. Each connection dispatches up to `shared_max_in_flight` messages at
//! once, in no order. A QoS 1/2 message is acknowledged after `dispatch` returned `Ok`.
//!
//! A retryable failure (`Unavailable`) is retried in place with backoff, at most
//! `shared_dispatch_attempts` times. Not acknowledging is no way to get a redelivery here:
//! Mosquitto redelivers an unacknowledged message only when a *persistent* session reconnects,
//! so on a clean session the message would be lost anyway, and meanwhile it would hold one of
//! the broker's in-flight slots for the connection until the connection stalls. After the last
//! attempt the message is therefore acknowledged, counted (`reason="retries_exhausted"`) and
//! logged at error level: it is lost, and that is visible.
//!
//! # Ordered routes
//! A shared subscription would scatter one device's messages over nodes. An ordered route is
//! instead held by one node at a time (the node's plan says which: `ordered_held`) over ONE
//! connection with the route's fixed client id, a persistent session (`clean_session = false`)
//! and manual acknowledgements:
//!
//! - the connection runs under the node's *hold* on the route ([`Dispatch::take_ordered_hold`]):
//!   it connects only once the hold is granted (on a node: the partition of the route's
//!   `$ingress` key is active there, so the previous holder has finished), dispatches a message
//!   only while the hold is valid (checked before every attempt, on the monotonic clock, so a
//!   holder resumed after a long pause dispatches nothing from its socket buffer), and when the
//!   hold ends it finishes, acknowledges, disconnects and only then releases the hold;
//! - after DISCONNECT it reads until the broker closes the connection: closing a socket with
//!   unread data resets it, and the reset would discard the acknowledgements just written;
//! - messages of different keys (the route's key, [`Dispatch::ordering_key`]) are dispatched
//!   concurrently; a key's messages one at a time, in arrival order: the next only once the
//!   previous one was acknowledged (accepted or given up, and every message before it too) and
//!   that PUBACK was written to the socket (so even a holder killed at once has told the
//!   broker). A
//!   retryable failure is retried in place, forever (with backoff), holding its key: later
//!   messages of the key never overtake it;
//! - PUBACKs leave in the order the PUBLISH packets arrived (MQTT 3.1.1 §4.6): a message is
//!   acknowledged only after it and every message received before it were accepted, so an
//!   acknowledged prefix is always fully processed. A message that is not acknowledged
//!   (abandoned on stop, or its connection was lost) withholds the acknowledgements of every
//!   later message of its connection; the broker redelivers them all;
//! - at most `ordered_max_in_flight` (default 256) messages are held at once: dispatching,
//!   waiting for their key, or done and waiting for an earlier acknowledgement. The decisions
//!   are [`window`]'s, a plain struct tested without sockets;
//! - a message that can never succeed (no route, invalid topic, payload over the limit, failed
//!   handler) is acknowledged, counted and logged at warn level, so it cannot block the route;
//! - when the connection drops, the broker keeps the session: messages that were sent but not
//!   acknowledged are redelivered first, in order, then the ones queued meanwhile. Copies of
//!   such messages still held on our side are dropped undispatched (or, if already
//!   dispatching, finish first: a redelivered copy waits for its key like any message);
//! - a second holder connecting with the same client id takes the session over: the broker
//!   closes the first connection (it is fenced), and the new holder resumes the queued messages
//!   and the unacknowledged ones. This is how a failover resumes where the dead holder stopped.
//!   A message the old holder had processed but not acknowledged is processed again (at least
//!   once, G4; a `journal` route with `message_id_field` keeps one): at most one per key, and
//!   right after its original, since a key's next message waits for the previous one's
//!   acknowledgement to be written. On a planned move (join, leave) there are none: the new
//!   holder connects only after the old one's acknowledgements reached the broker;
//! - MQTT 3.1.1 gives no reason when the broker closes a connection, so a repeated close shortly
//!   after connecting is taken as a takeover fight: the connection then stays away with a
//!   growing delay instead of throwing the other holder off in a loop ([`guard`]). The plan,
//!   not this guard, decides who holds a route.
//!
//! **Throughput bound.** One key: at most `1 / dispatch latency` messages per second (one in
//! flight per key, and its next waits for the acknowledgement, so for the messages before it
//! too). The route: at most `c / dispatch latency`, where `c`, the messages dispatching at
//! once, is no more than `ordered_max_in_flight`, no more than the distinct keys among the
//! messages held (a key repeated inside the window waits for itself), and no more than the
//! broker's in-flight window where the broker enforces one (acknowledgements leave in order, so
//! it sends at most that many past the oldest unacknowledged message). Mosquitto 2.0.11 did
//! not hold us to its `max_inflight_messages` (20): up to 100 dispatches, one per key, ran at
//! once. One hot key gets no concurrency: split order-dependent traffic over keys, or over
//! several ordered routes (each has its own connection and holder). `scripts/bench.sh`
//! measures a cluster (README, *Benchmarks*); the ignored
//! `ingress_mosquitto::bench_ordered_route_throughput` measures the ingress alone with a fake
//! dispatcher, one key and 100 keys, beside what Mosquitto delivers to one plain subscriber.
//!
//! Broker settings ordered routes rely on: `max_queued_messages` must cover what piles up during
//! a failover (Mosquitto drops beyond it; 1000 by default), and `persistence true` if queued
//! messages must survive a broker restart.
//!
//! Caveats, all on the side of duplicates (at least once), never loss or reordering:
//! - Mosquitto 2.0 sends a resumed session's whole backlog at once, beyond its in-flight window.
//!   The ingress buffers 1024 messages per connection (plus `ordered_max_in_flight` held by an
//!   ordered route's window) and then stops reading (TCP backpressure);
//!   if a dispatch then stays stuck longer than 1.5 x keep-alive, the broker drops the
//!   connection and redelivers the unacknowledged messages on the next one.
//! - A holder that stays stuck in a dispatch longer than `shutdown_grace` after its hold ended
//!   abandons it unacknowledged: the next holder gets that message again (a duplicate, in place
//!   if it had been processed).
//!
//! # Failure handling
//! Reconnects use exponential backoff; [`IngressHandle::status`] tells whether each connection
//! is up (for `/ready`) with its last error, and the `routemq_mqtt_*` metrics count messages,
//! acknowledgements, errors by reason, reconnects and connection state. Nothing on the network
//! is unwrapped. Malformed input never reaches `dispatch`: a topic that is not a valid topic
//! name and a payload over `max_payload_bytes` (the node's `--max-payload-bytes`, the limit
//! gRPC `Publish` enforces too) are acknowledged, logged with the reason and counted with it
//! (`routemq_messages_rejected_total{reason}`, as gRPC's refusals, and
//! `routemq_mqtt_dispatch_errors_total{reason}`): refused, never dropped silently. A topic
//! that is not UTF-8 is refused by Mosquitto at the publisher (MQTT-1.5.3); from a broker that
//! forwarded one anyway, rumqttc would fail to decode the packet, and the connection would be
//! reset and the event counted (`reason="malformed_topic"`).
//!
//! # Message ids
//! MQTT 3.1.1 carries no producer message id. Each delivery gets one id, kept across its
//! in-place retries: read from the payload through the route's `message_id_field` (a JSON
//! pointer such as `/id`), so that a redelivered copy carries the same id and a `journal` route
//! keeps one; or generated when the route has no such field or the payload does not carry it
//! (counted in [`MESSAGE_ID_MISSING`]). The field is read with the subscription's route; a
//! topic that a higher-priority route takes is still dispatched to that route, with this id.
//!
//! # Non-goals
//! MQTT 5 and websocket transports.

mod connection;
mod guard;
mod holder;
mod message_id;
mod plan;
mod settings;
mod status;
mod window;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::message::Dispatch;
use connection::{run_connection, Conn};
use plan::{desired_connections, diff, ConnSpec, Naming};

pub use holder::{ingress_partition, ingress_plan, ordered_client_id, ordered_holder};
pub use message_id::{generated_message_id, payload_message_id, MESSAGE_ID_MISSING};
pub use plan::{IngressPlan, OrderedSubscription, SharedSubscription, SubscriptionMode, MAX_WORKER_COUNT};
pub use settings::{
    IngressSettings, IngressSettingsError, ENV_VARS, MAX_ORDERED_IN_FLIGHT, MQTT_MAX_PACKET_BYTES,
};
pub use status::{
    describe_metrics, ConnectionStatus, IngressReadiness, IngressStatus, MQTT_ACKS, MQTT_CONNECTED,
    MQTT_DISPATCH_ERRORS, MQTT_MESSAGES_RECEIVED, MQTT_RECONNECTS, MQTT_TAKEOVER_FENCES,
};

use status::StatusRegistry;

/// Extra time, beyond `shutdown_grace`, a stopping connection gets to send DISCONNECT before
/// its task is aborted.
const STOP_SLACK: Duration = Duration::from_secs(3);
/// How often the supervisor re-checks its connections even when the plan did not change.
const SUPERVISE_INTERVAL: Duration = Duration::from_secs(5);

/// Starts the ingress. It follows `routes_rx` until [`IngressHandle::shutdown`]; if the plan's
/// sender is dropped, the last plan stays in force. Must be called inside a Tokio runtime.
///
/// Settings that fail [`IngressSettings::validate`] start nothing: the error is logged and shown
/// in [`IngressHandle::status`].
pub fn spawn_ingress<D: Dispatch>(
    settings: IngressSettings,
    dispatcher: Arc<D>,
    routes_rx: watch::Receiver<Arc<IngressPlan>>,
) -> IngressHandle {
    describe_metrics();
    let status = Arc::new(StatusRegistry::default());
    let shutdown = CancellationToken::new();
    let abort = CancellationToken::new();
    let supervisor = Supervisor {
        settings: Arc::new(settings),
        dispatcher,
        status: status.clone(),
        running: BTreeMap::new(),
        last_issues: Vec::new(),
    };
    let task = tokio::spawn(supervisor.run(routes_rx, shutdown.clone(), abort.clone()));
    IngressHandle {
        status,
        shutdown,
        abort,
        task: Some(task),
    }
}

/// The running ingress. Dropping it aborts every connection (like [`abort`](Self::abort)).
pub struct IngressHandle {
    status: Arc<StatusRegistry>,
    shutdown: CancellationToken,
    abort: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl IngressHandle {
    /// Connection states and counters, for `/ready`, metrics and logs.
    pub fn status(&self) -> IngressStatus {
        self.status.snapshot()
    }

    /// A reader of [`status`](Self::status) that can be handed to another task.
    pub fn status_source(&self) -> IngressStatusSource {
        IngressStatusSource(self.status.clone())
    }

    /// Graceful stop: in-flight dispatches may finish within `shutdown_grace` and are
    /// acknowledged, shared connections unsubscribe and drain, every connection sends
    /// DISCONNECT. Returns once every task has ended.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                error!(error = %e, "MQTT ingress supervisor ended abnormally");
            }
        }
    }

    /// Stops at once, like a crash: no DISCONNECT, nothing more acknowledged, in-flight
    /// dispatches dropped. Persistent sessions keep the unacknowledged messages for the next
    /// holder. Returns once every task has ended (and every socket is closed).
    pub async fn abort(mut self) {
        self.abort.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for IngressHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            self.abort.cancel();
            task.abort();
        }
    }
}

/// Reads the ingress status (for the node's readiness); outliving the ingress is harmless.
#[derive(Clone)]
pub struct IngressStatusSource(Arc<StatusRegistry>);

impl IngressStatusSource {
    /// Connection states and counters now.
    pub fn snapshot(&self) -> IngressStatus {
        self.0.snapshot()
    }
}

/// A task that is aborted when this handle is dropped, so none outlives its owner.
struct OwnedTask(JoinHandle<()>);

impl Drop for OwnedTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Running {
    spec: ConnSpec,
    stop: CancellationToken,
    task: OwnedTask,
}

struct Supervisor<D> {
    settings: Arc<IngressSettings>,
    dispatcher: Arc<D>,
    status: Arc<StatusRegistry>,
    running: BTreeMap<String, Running>,
    last_issues: Vec<String>,
}

impl<D: Dispatch> Supervisor<D> {
    async fn run(
        mut self,
        mut routes_rx: watch::Receiver<Arc<IngressPlan>>,
        shutdown: CancellationToken,
        abort: CancellationToken,
    ) {
        if let Err(e) = self.settings.validate() {
            error!(error = %e, "MQTT ingress not started: invalid settings");
            self.status.set_not_started(e.to_string());
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = abort.cancelled() => {}
            }
            return;
        }
        let mut plan_open = true;
        loop {
            let plan = routes_rx.borrow_and_update().clone();
            let aborted = tokio::select! {
                biased;
                _ = abort.cancelled() => true,
                _ = self.apply(&plan) => false,
            };
            if aborted {
                self.abort_all().await;
                return;
            }
            tokio::select! {
                biased;
                _ = abort.cancelled() => {
                    self.abort_all().await;
                    return;
                }
                _ = shutdown.cancelled() => break,
                changed = routes_rx.changed(), if plan_open => {
                    if changed.is_err() {
                        plan_open = false;
                    }
                }
                _ = tokio::time::sleep(SUPERVISE_INTERVAL) => {}
            }
        }
        let ids: Vec<String> = self.running.keys().cloned().collect();
        let aborted = tokio::select! {
            biased;
            _ = abort.cancelled() => true,
            _ = self.stop(ids) => false,
        };
        if aborted {
            self.abort_all().await;
        }
    }

    /// Brings the running connections in line with `plan`.
    async fn apply(&mut self, plan: &IngressPlan) {
        let naming = Naming {
            node_id: &self.settings.node_id,
            client_id_prefix: &self.settings.client_id_prefix,
            group_name: &self.settings.group_name,
        };
        let (desired, issues) = desired_connections(plan, &naming);
        let issues: Vec<String> = issues.iter().map(ToString::to_string).collect();
        if issues != self.last_issues {
            for issue in issues.iter().filter(|i| !self.last_issues.contains(i)) {
                warn!("MQTT ingress refused a plan entry: {issue}");
            }
            self.status.set_plan_issues(issues.clone());
            self.last_issues = issues;
        }

        // A connection task never ends on its own; if one did (a bug), start it again.
        let ended: Vec<String> = self
            .running
            .iter()
            .filter(|(_, r)| r.task.0.is_finished())
            .map(|(id, _)| id.clone())
            .collect();
        for id in ended {
            error!(client = %id, "MQTT ingress connection task ended unexpectedly; restarting it");
            self.running.remove(&id);
            self.status.remove(&id);
        }

        let current: BTreeMap<String, ConnSpec> = self
            .running
            .iter()
            .map(|(id, r)| (id.clone(), r.spec.clone()))
            .collect();
        let change = diff(&current, &desired);
        // Stops first: a restarted client id must not overlap with itself at the broker.
        self.stop(change.stop).await;
        for spec in change.start {
            self.start(spec);
        }
    }

    fn start(&mut self, spec: ConnSpec) {
        let stop = CancellationToken::new();
        let conn = Conn {
            spec: spec.clone(),
            settings: self.settings.clone(),
            dispatcher: self.dispatcher.clone(),
            status: self.status.clone(),
            stop: stop.clone(),
            hold: None,
        };
        let task = OwnedTask(tokio::spawn(run_connection(conn)));
        self.running
            .insert(spec.client_id.clone(), Running { spec, stop, task });
    }

    /// Gracefully stops these connections, concurrently; aborts any that overrun.
    async fn stop(&mut self, ids: Vec<String>) {
        let limit = self.settings.shutdown_grace + STOP_SLACK;
        let stopping: Vec<(String, Running)> = ids
            .into_iter()
            .filter_map(|id| self.running.remove_entry(&id))
            .collect();
        for (_, r) in &stopping {
            r.stop.cancel();
        }
        let status = &self.status;
        futures::future::join_all(stopping.into_iter().map(|(id, mut r)| async move {
            if tokio::time::timeout(limit, &mut r.task.0).await.is_err() {
                warn!(client = %id, "MQTT ingress connection did not stop within {limit:?}; aborting it");
                r.task.0.abort();
                let _ = (&mut r.task.0).await;
            }
            status.remove(&id);
        }))
        .await;
    }

    /// Aborts every connection and waits until their tasks (and sockets) are gone.
    async fn abort_all(&mut self) {
        let running = std::mem::take(&mut self.running);
        for r in running.values() {
            r.task.0.abort();
        }
        for (id, mut r) in running {
            let _ = (&mut r.task.0).await;
            self.status.remove(&id);
            metrics::gauge!(MQTT_CONNECTED, "route" => r.spec.route.clone(), "client" => id.clone()).set(0.0);
        }
    }
}
