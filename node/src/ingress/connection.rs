//! One MQTT connection: the poll loop that drives rumqttc, and the worker that dispatches what
//! it receives and acknowledges what the cluster accepted.
//!
//! The poll loop owns the [`EventLoop`] and never waits on a dispatch: it forwards every
//! PUBLISH to the worker over a bounded channel (for QoS 1/2 the broker's in-flight window
//! bounds how many can be outstanding; a QoS 0 message that finds the channel full is dropped
//! and counted, as QoS 0 allows). The worker dispatches (an ordered route's worker through the
//! [`OrderedWindow`]: keys concurrently, each key in order, acknowledgements in arrival order)
//! and acknowledges through an [`AckGate`], which ties every message to the connection
//! generation it arrived on:
//!
//! - an acknowledgement is sent only on the connection the message came on (a packet id means
//!   nothing on the next one, and could acknowledge a different message there);
//! - after a reconnect, a copy from the old connection is dropped undispatched when the broker
//!   resumed the persistent session (it redelivers the message itself, in order), and is
//!   dispatched without acknowledgement when the session is gone (clean sessions always).
//!
//! An ordered route's connection runs only under the node's hold on the route
//! ([`Dispatch::take_ordered_hold`]): it waits for the hold before it connects, dispatches a
//! message only while the hold is valid, and once the hold is no longer valid (the route moved,
//! or the lease ran out) it finishes what it dispatched, acknowledges, disconnects, releases the
//! hold and waits to be granted it again. After sending DISCONNECT it keeps reading until the
//! broker closes the connection: closing a socket with unread data resets it, and the reset
//! would discard the last acknowledgements, making the broker redeliver processed messages to
//! the next holder.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Outgoing, Packet, Publish, QoS, StateError,
    SubscribeReasonCode,
};
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep, sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::guard::{AfterPeerClose, TakeoverGuard};
use super::message_id::{generated_message_id, payload_message_id};
use super::plan::{ConnSpec, SubscriptionMode};
use super::settings::IngressSettings;
use super::status::{ConnMetrics, ConnectionStatus, StatusRegistry};
use super::window::{Finish, OrderedWindow, Slot};
use crate::backoff::Backoff;
use crate::message::{Accepted, Dispatch, InboundMessage, OrderedHold, PublishError};
use crate::routes::{validate_topic, MAX_TOPIC_LEN};

/// Capacity of rumqttc's request channel (acks, subscribe, disconnect).
const REQUEST_CAPACITY: usize = 1024;
/// Messages received but not yet taken by the worker.
const DELIVERY_CAPACITY: usize = 1024;
/// A draining shared connection disconnects after this long without a new message.
const SHARED_DRAIN_IDLE: Duration = Duration::from_millis(200);
/// After DISCONNECT, how long to wait for the broker to close the connection (proof that it
/// read the acknowledgements sent before).
const DISCONNECT_LINGER: Duration = Duration::from_secs(2);
/// How often an ordered connection checks that its hold is still valid (the lease also runs
/// out with time, not only on events), and asks for a hold it does not have.
const HOLD_CHECK_INTERVAL: Duration = Duration::from_millis(50);

/// Everything one connection task needs.
pub(crate) struct Conn<D> {
    pub spec: ConnSpec,
    pub settings: Arc<IngressSettings>,
    pub dispatcher: Arc<D>,
    pub status: Arc<StatusRegistry>,
    /// Graceful stop: finish (within `shutdown_grace`), acknowledge, disconnect.
    pub stop: CancellationToken,
    /// For an ordered route: the node's hold on the route, checked before every dispatch.
    pub hold: Option<Arc<dyn OrderedHold>>,
}

impl<D> Conn<D> {
    /// This connection's parts, for one session under `hold`, ended by `stop`.
    fn session(&self, stop: CancellationToken, hold: Arc<dyn OrderedHold>) -> Self {
        Self {
            spec: self.spec.clone(),
            settings: self.settings.clone(),
            dispatcher: self.dispatcher.clone(),
            status: self.status.clone(),
            stop,
            hold: Some(hold),
        }
    }

    /// False when the hold this connection runs under is no longer valid.
    fn may_dispatch(&self) -> bool {
        self.hold.as_ref().is_none_or(|h| h.is_valid())
    }
}

/// A received message and the connection generation it arrived on.
#[derive(Clone)]
struct Delivery {
    publish: Publish,
    generation: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Link {
    /// Bumped each time the connection is lost.
    generation: u64,
    connected: bool,
    /// Messages of generations below this will not be redelivered by the broker.
    lost_before: u64,
    /// Acknowledgements queued on this generation's connection, and how many of them rumqttc
    /// has written to the socket (in order).
    acks_queued: u64,
    acks_written: u64,
}

/// What will become of a message received on an earlier connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// It came on the live connection: dispatch and acknowledge.
    Current,
    /// The broker resumed the session and sends it again: drop this copy.
    Redelivered,
    /// The session is gone: dispatch it, but there is nothing to acknowledge.
    Lost,
    /// Disconnected; we learn which at the next CONNACK.
    Unknown,
}

/// Sends acknowledgements only on the connection a message arrived on.
struct AckGate {
    link: watch::Sender<Link>,
    client: AsyncClient,
    persistent: bool,
    /// Acknowledgements that found rumqttc's request channel full, in order, with their
    /// generation. The poll loop moves them over between polls. The worker never waits for the
    /// request channel: the poll loop that drains it may itself be waiting for the worker to
    /// take a message (a broker that ignores its in-flight window floods us on session resume).
    overflow: Mutex<VecDeque<(u64, Publish)>>,
}

impl AckGate {
    fn new(client: AsyncClient, persistent: bool) -> Self {
        Self {
            link: watch::Sender::new(Link::default()),
            client,
            persistent,
            overflow: Mutex::new(VecDeque::new()),
        }
    }

    fn overflow(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, Publish)>> {
        self.overflow
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn generation(&self) -> u64 {
        self.link.borrow().generation
    }

    fn is_connected(&self) -> bool {
        self.link.borrow().connected
    }

    fn fate(&self, generation: u64) -> Fate {
        let link = *self.link.borrow();
        if link.connected && link.generation == generation {
            Fate::Current
        } else if !self.persistent || generation < link.lost_before {
            Fate::Lost
        } else if link.connected {
            Fate::Redelivered
        } else {
            Fate::Unknown
        }
    }

    /// Waits until the message's fate is known; `None` if `stop` fires first.
    async fn settled_fate(&self, generation: u64, stop: &CancellationToken) -> Option<Fate> {
        let mut changes = self.link.subscribe();
        loop {
            match self.fate(generation) {
                Fate::Unknown => {}
                fate => return Some(fate),
            }
            tokio::select! {
                biased;
                _ = stop.cancelled() => return None,
                changed = changes.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
            }
        }
    }

    /// Called by the poll loop on CONNACK.
    fn on_connected(&self, session_present: bool) {
        let persistent = self.persistent;
        self.link.send_modify(|link| {
            link.connected = true;
            if !(persistent && session_present) {
                link.lost_before = link.generation;
            }
        });
    }

    /// Called by the poll loop when the connection is gone. Under the same lock as the
    /// generation bump, drops acknowledgements queued for the old connection (rumqttc's
    /// `clean` keeps every other request), so none can leak onto the next connection.
    fn on_disconnected(&self, eventloop: &mut EventLoop) {
        self.link.send_modify(|link| {
            link.generation += 1;
            link.connected = false;
            link.acks_queued = 0;
            link.acks_written = 0;
            eventloop.clean();
            self.overflow().clear();
        });
    }

    /// Queues the PUBACK (PUBREC for QoS 2) if `generation` is still the live connection.
    /// Returns whether it was queued. Never waits.
    fn ack(&self, generation: u64, publish: &Publish) -> bool {
        if publish.qos == QoS::AtMostOnce {
            return false;
        }
        // Wakes the waiters on the link: the poll loop must now go on polling to write it.
        self.link.send_if_modified(|link| {
            if !(link.connected && link.generation == generation) {
                return false;
            }
            let mut overflow = self.overflow();
            if !(overflow.is_empty() && self.client.try_ack(publish).is_ok()) {
                // Only the packet id and QoS matter for the acknowledgement.
                let mut ack = Publish::new("", publish.qos, Vec::new());
                ack.pkid = publish.pkid;
                overflow.push_back((generation, ack));
            }
            link.acks_queued += 1;
            true
        })
    }

    /// Called by the poll loop when rumqttc wrote an acknowledgement to the socket.
    fn on_ack_written(&self) {
        self.link.send_modify(|link| link.acks_written += 1);
    }

    /// Whether every acknowledgement queued on `generation` so far was written to the socket,
    /// or that connection is gone (its unacknowledged messages come again). What a key's next
    /// message waits for: once the previous PUBACK is in the kernel, even a holder killed now
    /// gets that message redelivered no more.
    fn acks_written(&self, generation: u64) -> bool {
        let link = self.link.borrow();
        link.generation != generation || link.acks_written >= link.acks_queued
    }

    /// Called by the poll loop between polls: moves overflowed acknowledgements of the live
    /// connection into the request channel while it has room; drops those of a lost one.
    fn flush_overflow(&self) {
        let link = self.link.borrow();
        let mut overflow = self.overflow();
        while let Some((generation, ack)) = overflow.front() {
            if link.connected && *generation == link.generation && self.client.try_ack(ack).is_err() {
                break;
            }
            overflow.pop_front();
        }
    }

    /// Asks the poll loop to send DISCONNECT (it then ends). When not connected the poll loop
    /// ends by itself on `stop`.
    async fn request_disconnect(&self) {
        for _ in 0..200 {
            // Acknowledgements still waiting in the overflow must go out before DISCONNECT.
            if self.is_connected() && !self.overflow().is_empty() {
                sleep(Duration::from_millis(10)).await;
                continue;
            }
            if !self.is_connected() || self.client.try_disconnect().is_ok() {
                return;
            }
            sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Runs one connection until `conn.stop` (graceful) or until the task is aborted. An ordered
/// route's connection runs in sessions, each under one hold of the route (see the module
/// docs).
pub(crate) async fn run_connection<D: Dispatch>(conn: Conn<D>) {
    let spec = &conn.spec;
    let m = ConnMetrics::new(&spec.route, &spec.client_id);
    conn.status
        .insert(ConnectionStatus::new(&spec.route, &spec.client_id, spec.mode));
    m.connected(false);
    match spec.mode {
        SubscriptionMode::Shared => run_session(&conn, &m).await,
        SubscriptionMode::Ordered => loop {
            let Some(hold) = wait_for_hold(&conn).await else {
                break;
            };
            let session = conn.session(conn.stop.child_token(), Arc::from(hold));
            let run = async {
                run_session(&session, &m).await;
                session.stop.cancel();
            };
            let watch_hold = async {
                loop {
                    tokio::select! {
                        _ = sleep(HOLD_CHECK_INTERVAL) => {}
                        _ = session.stop.cancelled() => return,
                    }
                    if !session.may_dispatch() {
                        info!(client = %spec.client_id, route = %spec.route,
                            "this node no longer holds the ordered route (it moved, or the lease ran out): finishing, acknowledging and disconnecting");
                        session.stop.cancel();
                        return;
                    }
                }
            };
            tokio::join!(run, watch_hold);
            // Dropping the session releases the hold: the route may be handed over now.
            drop(session);
            if conn.stop.is_cancelled() {
                break;
            }
        },
    }
    conn.status.remove(&spec.client_id);
    m.connected(false);
    debug!(client = %spec.client_id, "MQTT ingress connection stopped");
}

/// Waits until the node grants the hold on the connection's ordered route; `None` on stop.
async fn wait_for_hold<D: Dispatch>(conn: &Conn<D>) -> Option<Box<dyn OrderedHold>> {
    let mut logged = false;
    loop {
        if let Some(hold) = conn.dispatcher.take_ordered_hold(&conn.spec.route) {
            conn.status
                .update(&conn.spec.client_id, |st| st.awaiting_hold = false);
            return Some(hold);
        }
        if !logged {
            logged = true;
            conn.status
                .update(&conn.spec.client_id, |st| st.awaiting_hold = true);
            debug!(client = %conn.spec.client_id, route = %conn.spec.route,
                "waiting for the route's previous holder to hand it over before connecting");
        }
        tokio::select! {
            _ = sleep(HOLD_CHECK_INTERVAL) => {}
            _ = conn.stop.cancelled() => return None,
        }
    }
}

/// One session: connects (reconnecting with backoff) and runs until `conn.stop`.
async fn run_session<D: Dispatch>(conn: &Conn<D>, m: &ConnMetrics) {
    let spec = &conn.spec;
    let persistent = spec.mode == SubscriptionMode::Ordered;

    let mut backoff = Backoff::new(
        conn.settings.reconnect_backoff_min,
        conn.settings.reconnect_backoff_max,
    );
    let (options, network) = loop {
        match conn.settings.mqtt_options(&spec.client_id, !persistent) {
            Ok(built) => break built,
            Err(e) => {
                warn!(client = %spec.client_id, error = %e, "MQTT ingress cannot build its connection settings");
                conn.status.set_error(&spec.client_id, e.to_string());
                tokio::select! {
                    _ = sleep(backoff.next_delay()) => {}
                    _ = conn.stop.cancelled() => return,
                }
            }
        }
    };
    let (client, mut eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
    eventloop.set_network_options(network);
    let gate = AckGate::new(client, persistent);
    let (tx, rx) = mpsc::channel(DELIVERY_CAPACITY);

    let poller = poll_loop(conn, eventloop, &gate, tx, m);
    match spec.mode {
        SubscriptionMode::Ordered => {
            tokio::join!(poller, ordered_worker(conn, &gate, rx, m));
        }
        SubscriptionMode::Shared => {
            tokio::join!(poller, shared_worker(conn, &gate, rx, m));
        }
    }
    m.connected(false);
}

/// Drives rumqttc: connects, subscribes, forwards messages, reconnects with backoff.
async fn poll_loop<D: Dispatch>(
    conn: &Conn<D>,
    mut eventloop: EventLoop,
    gate: &AckGate,
    tx: mpsc::Sender<Delivery>,
    m: &ConnMetrics,
) {
    let s = &conn.settings;
    let spec = &conn.spec;
    let id = spec.client_id.as_str();
    let mut backoff = Backoff::new(s.reconnect_backoff_min, s.reconnect_backoff_max);
    let mut guard = TakeoverGuard::new(s.takeover_window, s.takeover_fence_min, s.takeover_fence_max);
    let mut connected = false;
    let mut subscribed_once = false;
    let mut subscribe_pending = false;
    let mut failures_in_a_row = 0u32;
    // Set once DISCONNECT went out: read until the broker closes, at most until then.
    let mut linger_until: Option<Instant> = None;
    // Received, not yet taken by the worker. The poll loop never waits for the worker while
    // acknowledgements are still to be written: the worker may be waiting for exactly that.
    let mut backlog: VecDeque<Delivery> = VecDeque::new();
    let mut acks = gate.link.subscribe();
    let qos = match spec.qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    };

    loop {
        gate.flush_overflow();
        while let Some(delivery) = backlog.pop_front() {
            match tx.try_send(delivery) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(delivery)) => {
                    backlog.push_front(delivery);
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    // The worker has stopped: the messages stay unacknowledged.
                    backlog.clear();
                }
            }
        }
        // Backpressure: with this many waiting, stop reading (TCP holds the rest) until the
        // worker takes one, but go on polling whenever acknowledgements are to be written.
        while backlog.len() >= DELIVERY_CAPACITY && gate.acks_written(gate.generation()) {
            tokio::select! {
                permit = tx.reserve() => {
                    match (permit, backlog.pop_front()) {
                        (Ok(permit), Some(delivery)) => permit.send(delivery),
                        _ => backlog.clear(),
                    }
                }
                changed = acks.changed() => if changed.is_err() { break },
            }
        }
        if subscribe_pending && connected {
            subscribe_pending = !send_subscribe(gate, spec, qos, subscribed_once);
        }
        let event = if let Some(deadline) = linger_until {
            // Only reading now (nothing more is sent after DISCONNECT): safe to cancel.
            tokio::select! {
                _ = sleep_until(deadline) => {
                    debug!(client = id, "the broker did not close the connection after DISCONNECT in time");
                    break;
                }
                event = eventloop.poll() => event,
            }
        } else if connected {
            // Never cancelled while connected: rumqttc's poll is not cancel-safe mid-write.
            // A stop reaches us as a DISCONNECT request from the worker.
            eventloop.poll().await
        } else {
            tokio::select! {
                biased;
                _ = conn.stop.cancelled() => break,
                event = eventloop.poll() => event,
            }
        };
        if linger_until.is_some() {
            match event {
                // Closed by the broker: it read everything sent before DISCONNECT. Messages
                // that arrived meanwhile stay unacknowledged, for the next session.
                Err(_) => break,
                Ok(_) => continue,
            }
        }
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                connected = true;
                failures_in_a_row = 0;
                backoff.reset();
                guard.on_connected(std::time::Instant::now());
                gate.on_connected(ack.session_present);
                // A persistent session the broker kept still has our subscription; subscribing
                // again would make the broker resend retained messages.
                let resubscribe = !subscribed_once || !ack.session_present || !gate.persistent;
                conn.status.update(id, |st| {
                    st.connected = true;
                    st.fenced = false;
                    st.connects += 1;
                    st.last_error = None;
                    if resubscribe {
                        st.subscribed = false;
                    }
                });
                m.connected(true);
                info!(
                    client = id,
                    route = %spec.route,
                    session_present = ack.session_present,
                    broker = %s.broker_address(),
                    "MQTT ingress connected"
                );
                if conn.stop.is_cancelled() {
                    let _ = gate.client.try_disconnect();
                } else if resubscribe {
                    subscribe_pending = true;
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                m.received();
                conn.status.update(id, |st| st.received += 1);
                let at_most_once = publish.qos == QoS::AtMostOnce;
                let delivery = Delivery {
                    publish,
                    generation: gate.generation(),
                };
                if at_most_once {
                    if tx.try_send(delivery).is_err() {
                        m.dispatch_error("overflow");
                        conn.status.update(id, |st| st.rejected += 1);
                        debug!(client = id, "QoS 0 message dropped: the worker is behind");
                    }
                } else {
                    backlog.push_back(delivery);
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure))
                {
                    let e = format!(
                        "the broker refused the subscription to {:?}",
                        spec.subscribe_filter
                    );
                    warn!(client = id, route = %spec.route, "{e}");
                    conn.status.set_error(id, e);
                } else {
                    subscribed_once = true;
                    conn.status.update(id, |st| st.subscribed = true);
                    debug!(client = id, filter = %spec.subscribe_filter, "MQTT ingress subscribed");
                }
            }
            Ok(Event::Outgoing(Outgoing::PubAck(_) | Outgoing::PubRec(_))) => gate.on_ack_written(),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                linger_until = Some(Instant::now() + DISCONNECT_LINGER);
            }
            Ok(_) => {}
            Err(e) => {
                let was_connected = connected;
                connected = false;
                gate.on_disconnected(&mut eventloop);
                m.connected(false);
                if conn.stop.is_cancelled() {
                    break;
                }
                if let Some(reason) = bad_packet_reason(&e) {
                    // The broker sent something rumqttc cannot decode; it is lost to us.
                    m.dispatch_error(reason);
                    conn.status.update(id, |st| st.rejected += 1);
                }
                let now = std::time::Instant::now();
                let peer_close = was_connected && is_peer_close(&e);
                let (delay, fence) = if peer_close {
                    match guard.on_peer_close(now) {
                        AfterPeerClose::Reconnect => (backoff.next_delay(), false),
                        AfterPeerClose::Fence(delay) => (delay, true),
                    }
                } else {
                    guard.on_other_failure(now);
                    (backoff.next_delay(), false)
                };
                let message = if fence {
                    format!(
                        "the broker closed the connection twice within {:?}: another client is probably \
                         taking over session {id:?}; staying away {delay:?} (the node's plan decides who \
                         holds the route)",
                        s.takeover_window
                    )
                } else if peer_close {
                    format!("connection closed by the broker: {e}")
                } else {
                    format!("{e}")
                };
                conn.status.update(id, |st| {
                    st.connected = false;
                    st.fenced = fence;
                    st.reconnects += 1;
                    if peer_close {
                        st.peer_closes += 1;
                    }
                    if fence {
                        st.fences += 1;
                    }
                });
                conn.status.set_error(id, message.clone());
                m.reconnect();
                if fence {
                    m.fenced();
                    warn!(client = id, route = %spec.route, "{message}");
                } else if was_connected || failures_in_a_row == 0 {
                    warn!(client = id, route = %spec.route, error = %message, retry_in = ?delay, "MQTT ingress connection lost");
                } else {
                    debug!(client = id, error = %message, retry_in = ?delay, "MQTT ingress still cannot connect");
                }
                failures_in_a_row = failures_in_a_row.saturating_add(1);
                tokio::select! {
                    _ = sleep(delay) => {}
                    _ = conn.stop.cancelled() => break,
                }
            }
        }
    }
    if connected {
        gate.on_disconnected(&mut eventloop);
    }
    conn.status.update(id, |st| st.connected = false);
    m.connected(false);
}

/// Queues UNSUBSCRIBE for stale filters (first time only) and SUBSCRIBE. False if the request
/// channel was full; the poll loop tries again after the next event.
fn send_subscribe(gate: &AckGate, spec: &ConnSpec, qos: QoS, subscribed_once: bool) -> bool {
    if !subscribed_once {
        for old in &spec.unsubscribe_first {
            if gate.client.try_unsubscribe(old.clone()).is_err() {
                return false;
            }
        }
    }
    gate.client
        .try_subscribe(spec.subscribe_filter.clone(), qos)
        .is_ok()
}

/// The broker closed an established connection (EOF or reset), as on a session takeover.
fn is_peer_close(e: &ConnectionError) -> bool {
    use std::io::ErrorKind::*;
    match e {
        ConnectionError::MqttState(StateError::ConnectionAborted) => true,
        ConnectionError::MqttState(StateError::Io(io)) | ConnectionError::Io(io) => {
            matches!(
                io.kind(),
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
            )
        }
        _ => false,
    }
}

/// A packet from the broker that rumqttc could not decode.
fn bad_packet_reason(e: &ConnectionError) -> Option<&'static str> {
    use rumqttc::mqttbytes::Error as E;
    match e {
        ConnectionError::MqttState(StateError::Deserialization(inner)) => Some(match inner {
            E::TopicNotUtf8 => "malformed_topic",
            E::PayloadSizeLimitExceeded(_) => "packet_too_large",
            _ => "malformed_packet",
        }),
        _ => None,
    }
}

/// Ordered: messages of different keys are dispatched concurrently, a key's messages one at a
/// time in arrival order (the next once the previous one's PUBACK was written to the socket),
/// acknowledgements in
/// arrival order, at most `ordered_max_in_flight` messages held ([`OrderedWindow`] decides). A retryable failure is retried in
/// place, holding its key and the acknowledgements after it, until it succeeds, the broker
/// will redeliver it, or `stop`. On stop nothing new is taken or started: what is dispatching
/// finishes (within `shutdown_grace`), the acknowledgeable prefix is acknowledged, and the rest
/// stays with the persistent session for the next holder.
async fn ordered_worker<D: Dispatch>(
    conn: &Conn<D>,
    gate: &AckGate,
    mut rx: mpsc::Receiver<Delivery>,
    m: &ConnMetrics,
) {
    let mut window: OrderedWindow<Delivery> = OrderedWindow::new(conn.settings.ordered_max_in_flight);
    let dispatch = |slot: Slot, delivery: Delivery| async move {
        let how = process(conn, gate, &delivery, m, None).await;
        (slot, how)
    };
    let mut dispatching = FuturesUnordered::new();
    // Messages whose key's previous message was released, waiting until its PUBACK (and every
    // one queued before it) is written: (connection generation, slot).
    let mut deferred: Vec<(u64, Slot)> = Vec::new();
    let mut link = gate.link.subscribe();
    let mut stopping = false;
    loop {
        if stopping && !deferred.is_empty() {
            let withheld = deferred.drain(..).map(|(_, s)| (s, Finish::Withhold)).collect();
            release(conn, gate, m, &mut window, withheld, None);
        }
        if stopping && dispatching.is_empty() {
            break;
        }
        // Start what waited for its predecessor's acknowledgement to be written.
        deferred.retain(|&(generation, slot)| {
            if !gate.acks_written(generation) {
                return true;
            }
            if let Some(delivery) = window.item(slot) {
                dispatching.push(dispatch(slot, delivery.clone()));
            }
            false
        });
        tokio::select! {
            biased;
            Some((slot, how)) = dispatching.next(), if !dispatching.is_empty() => {
                let starts = (!stopping).then_some(&mut deferred);
                release(conn, gate, m, &mut window, vec![(slot, how)], starts);
            }
            changed = link.changed(), if !deferred.is_empty() => {
                if changed.is_err() {
                    stopping = true;
                }
            }
            _ = conn.stop.cancelled(), if !stopping => stopping = true,
            d = rx.recv(), if !stopping && window.has_room() => match d {
                Some(delivery) => {
                    let key = conn.dispatcher.ordering_key(&delivery.publish.topic);
                    if let Some(slot) = window.receive(key, delivery.generation, delivery.clone()) {
                        dispatching.push(dispatch(slot, delivery));
                    }
                }
                // The poll loop ended (after DISCONNECT or on stop): nothing can be acknowledged.
                None => stopping = true,
            },
        }
    }
    // Messages still queued here stay unacknowledged: the persistent session keeps them for
    // the next holder.
    drop(rx);
    gate.request_disconnect().await;
}

/// Records finished dispatches in the window and acknowledges what that releases. The messages
/// it lets start go to `starts` (tagged with the connection generation, to wait there for the
/// previous PUBACK to be written); with `None` (stopping) they are not started but withheld:
/// the broker sends them again, and every later one of their connection, whose
/// acknowledgements it then withholds.
fn release<D>(
    conn: &Conn<D>,
    gate: &AckGate,
    m: &ConnMetrics,
    window: &mut OrderedWindow<Delivery>,
    mut finished: Vec<(Slot, Finish)>,
    mut starts: Option<&mut Vec<(u64, Slot)>>,
) {
    while let Some((slot, how)) = finished.pop() {
        let released = window.finish(slot, how);
        for delivery in &released.acks {
            if gate.ack(delivery.generation, &delivery.publish) {
                acked(conn, m);
            }
        }
        for next in released.start {
            match starts.as_deref_mut() {
                Some(starts) => starts.push((gate.generation(), next)),
                None => finished.push((next, Finish::Withhold)),
            }
        }
    }
}

/// Shared: up to `shared_max_in_flight` dispatches at once, no order. On stop: unsubscribe,
/// finish what arrived (within `shutdown_grace`), then disconnect.
async fn shared_worker<D: Dispatch>(
    conn: &Conn<D>,
    gate: &AckGate,
    mut rx: mpsc::Receiver<Delivery>,
    m: &ConnMetrics,
) {
    let max_in_flight = conn.settings.shared_max_in_flight;
    let attempts = Some(conn.settings.shared_dispatch_attempts);
    let mut in_flight = FuturesUnordered::new();
    let mut input_open = true;
    let mut draining = false;
    let mut disconnect_requested = false;
    let far_future = Instant::now() + Duration::from_secs(86_400 * 365);
    let idle = sleep_until(far_future);
    let deadline = sleep_until(far_future);
    tokio::pin!(idle, deadline);

    while input_open || !in_flight.is_empty() {
        tokio::select! {
            biased;
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {
                if draining {
                    idle.as_mut().reset(Instant::now() + SHARED_DRAIN_IDLE);
                }
            }
            _ = conn.stop.cancelled(), if !draining => {
                draining = true;
                // No new messages for us; what the broker already sent still arrives.
                let _ = gate.client.try_unsubscribe(conn.spec.subscribe_filter.clone());
                idle.as_mut().reset(Instant::now() + SHARED_DRAIN_IDLE);
                deadline.as_mut().reset(Instant::now() + conn.settings.shutdown_grace);
            }
            d = rx.recv(), if input_open && in_flight.len() < max_in_flight => match d {
                Some(d) => {
                    in_flight.push(async move {
                        let how = process(conn, gate, &d, m, attempts).await;
                        if how == Finish::Acknowledge && gate.ack(d.generation, &d.publish) {
                            acked(conn, m);
                        }
                    });
                    if draining {
                        idle.as_mut().reset(Instant::now() + SHARED_DRAIN_IDLE);
                    }
                }
                None => input_open = false,
            },
            _ = &mut idle, if draining && !disconnect_requested && in_flight.is_empty() && rx.is_empty() => {
                disconnect_requested = true;
                gate.request_disconnect().await;
            }
            _ = &mut deadline, if draining && !disconnect_requested => {
                disconnect_requested = true;
                gate.request_disconnect().await;
            }
        }
    }
}

/// What a failed dispatch counts as.
fn error_reason(e: &PublishError) -> &'static str {
    match e {
        PublishError::NoRoute(_) => "no_route",
        PublishError::InvalidTopic(_) => "invalid_topic",
        PublishError::PayloadTooLarge { .. } => "payload_too_large",
        PublishError::Unavailable(_) => "unavailable",
        PublishError::HandlerFailed(_) => "handler_failed",
    }
}

/// Refusals at the edge: these messages can never succeed.
fn edge_check(publish: &Publish, settings: &IngressSettings) -> Result<(), PublishError> {
    validate_topic(&publish.topic, MAX_TOPIC_LEN).map_err(|e| PublishError::InvalidTopic(e.to_string()))?;
    if publish.payload.len() > settings.max_payload_bytes {
        return Err(PublishError::PayloadTooLarge {
            size: publish.payload.len(),
            limit: settings.max_payload_bytes,
        });
    }
    Ok(())
}

/// Dispatches one message, retrying retryable failures up to `max_attempts` (or forever), and
/// says whether to acknowledge it: yes once accepted or once it can never succeed (counted),
/// no when the broker sends it again (its connection was lost) or on stop.
async fn process<D: Dispatch>(
    conn: &Conn<D>,
    gate: &AckGate,
    delivery: &Delivery,
    m: &ConnMetrics,
    max_attempts: Option<u32>,
) -> Finish {
    let Delivery { publish, generation } = delivery;
    let generation = *generation;
    let id = conn.spec.client_id.as_str();
    let route = conn.spec.route.as_str();

    if !still_to_dispatch(conn, gate, generation).await {
        return Finish::Withhold;
    }
    if let Err(e) = edge_check(publish, &conn.settings) {
        let reason = error_reason(&e);
        warn!(client = id, route, topic = %publish.topic, reason, "MQTT message refused: {e}");
        // Counted as the dispatcher counts a gRPC message it refuses for the same reason.
        metrics::counter!(crate::metrics::MESSAGES_REJECTED, "reason" => reason).increment(1);
        give_up(conn, m, reason);
        return Finish::Acknowledge;
    }

    // One id per delivery, kept across in-place retries, so a retry whose first attempt did
    // reach the owner is suppressed there. With the route's `message_id_field`, a redelivered
    // copy (a failover, a reconnect) also carries the same id.
    let message_id = conn
        .spec
        .message_id_field
        .as_deref()
        .and_then(|field| payload_message_id(route, field, &publish.payload))
        .unwrap_or_else(generated_message_id);
    let message = InboundMessage {
        topic: publish.topic.clone(),
        payload: publish.payload.to_vec(),
        message_id,
        ordered_ingress: conn.hold.is_some(),
        retry: false,
    };
    let mut retry = Backoff::new(conn.settings.dispatch_retry_min, conn.settings.dispatch_retry_max);
    let mut attempt = 0u32;
    loop {
        attempt = attempt.saturating_add(1);
        if !conn.may_dispatch() {
            // The route moved or the lease ran out (perhaps while this process was paused):
            // the next holder gets it from the broker.
            debug!(client = id, topic = %publish.topic, "not dispatched: this node no longer holds the route");
            return Finish::Withhold;
        }
        let attempt_message = InboundMessage {
            retry: attempt > 1,
            ..message.clone()
        };
        let Some(result) = dispatch_within_grace(conn, attempt_message).await else {
            debug!(client = id, topic = %publish.topic, "dispatch abandoned on shutdown; not acknowledged");
            return Finish::Withhold;
        };
        match result {
            Ok(_) => {
                conn.status.update(id, |st| st.dispatched += 1);
                return Finish::Acknowledge;
            }
            Err(e) if e.is_retryable() => {
                m.dispatch_error(error_reason(&e));
                conn.status.update(id, |st| st.retries += 1);
                if max_attempts.is_some_and(|max| attempt >= max) {
                    error!(
                        client = id, route, topic = %publish.topic, attempts = attempt, error = %e,
                        "giving up on an MQTT message: dispatch kept failing; acknowledging it so the \
                         connection does not stall (the message is lost)"
                    );
                    give_up(conn, m, "retries_exhausted");
                    return Finish::Acknowledge;
                }
                debug!(client = id, topic = %publish.topic, attempt, error = %e, "dispatch failed; retrying");
                tokio::select! {
                    _ = sleep(retry.next_delay()) => {}
                    _ = conn.stop.cancelled() => return Finish::Withhold,
                }
                if !still_to_dispatch(conn, gate, generation).await {
                    return Finish::Withhold;
                }
            }
            Err(e) => {
                let reason = error_reason(&e);
                warn!(client = id, route, topic = %publish.topic, reason, error = %e, "MQTT message cannot be dispatched; acknowledging it");
                give_up(conn, m, reason);
                return Finish::Acknowledge;
            }
        }
    }
}

/// Waits until the fate of a message received on connection `generation` is known, and says
/// whether to (go on trying to) dispatch it: yes when it came on the live connection or its
/// session is gone (nobody sends it again); no when the broker redelivers it on the resumed
/// session (this copy is dropped, counted as superseded) or on stop. Either way a `false`
/// means: withhold the acknowledgement.
async fn still_to_dispatch<D>(conn: &Conn<D>, gate: &AckGate, generation: u64) -> bool {
    match gate.settled_fate(generation, &conn.stop).await {
        None => false,
        Some(Fate::Redelivered) => {
            superseded(conn);
            false
        }
        Some(Fate::Current | Fate::Lost | Fate::Unknown) => true,
    }
}

/// Runs one dispatch; `None` if `stop` fired and `shutdown_grace` ran out first. A panicking
/// dispatcher counts as a failed handler.
async fn dispatch_within_grace<D: Dispatch>(
    conn: &Conn<D>,
    message: InboundMessage,
) -> Option<Result<Accepted, PublishError>> {
    let dispatch = AssertUnwindSafe(conn.dispatcher.dispatch(message)).catch_unwind();
    let grace_over = async {
        conn.stop.cancelled().await;
        sleep(conn.settings.shutdown_grace).await;
    };
    tokio::select! {
        result = dispatch => Some(result.unwrap_or_else(|_| Err(PublishError::HandlerFailed("dispatch panicked".into())))),
        _ = grace_over => None,
    }
}

/// Counts a message that can never succeed (the caller acknowledges it, so the broker forgets
/// it).
fn give_up<D>(conn: &Conn<D>, m: &ConnMetrics, reason: &'static str) {
    m.dispatch_error(reason);
    conn.status.update(&conn.spec.client_id, |st| st.rejected += 1);
}

fn acked<D>(conn: &Conn<D>, m: &ConnMetrics) {
    m.acked();
    conn.status.update(&conn.spec.client_id, |st| st.acked += 1);
}

fn superseded<D>(conn: &Conn<D>) {
    conn.status.update(&conn.spec.client_id, |st| st.superseded += 1);
    debug!(client = %conn.spec.client_id, "message from a lost connection dropped: the broker redelivers it");
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::MqttOptions;

    fn conn(mode: SubscriptionMode) -> Conn<()> {
        let spec = ConnSpec {
            route: "r".into(),
            client_id: "c1".into(),
            subscribe_filter: "s/+".into(),
            qos: 1,
            mode,
            unsubscribe_first: Vec::new(),
            message_id_field: None,
        };
        let status = Arc::new(StatusRegistry::default());
        status.insert(ConnectionStatus::new("r", "c1", mode));
        Conn {
            spec,
            settings: Arc::new(IngressSettings::default()),
            dispatcher: Arc::new(()),
            status,
            stop: CancellationToken::new(),
            hold: None,
        }
    }

    /// An ack gate whose client never connects (nothing here polls the event loop).
    fn gate(persistent: bool) -> (AckGate, EventLoop) {
        let (client, eventloop) = AsyncClient::new(MqttOptions::new("c1", "localhost", 1883), 8);
        (AckGate::new(client, persistent), eventloop)
    }

    fn superseded_count(conn: &Conn<()>) -> u64 {
        conn.status.snapshot().connections[0].superseded
    }

    #[tokio::test]
    async fn a_message_of_the_live_connection_is_dispatched() {
        let conn = conn(SubscriptionMode::Ordered);
        let (gate, _eventloop) = gate(true);
        gate.on_connected(false);
        assert!(still_to_dispatch(&conn, &gate, 0).await);
        assert_eq!(superseded_count(&conn), 0);
    }

    #[tokio::test]
    async fn a_copy_the_resumed_session_redelivers_is_dropped_and_counted() {
        let conn = conn(SubscriptionMode::Ordered);
        let (gate, mut eventloop) = gate(true);
        gate.on_connected(false);
        gate.on_disconnected(&mut eventloop);
        gate.on_connected(true);
        assert_eq!(gate.fate(0), Fate::Redelivered);
        assert!(!still_to_dispatch(&conn, &gate, 0).await);
        assert_eq!(superseded_count(&conn), 1);
    }

    #[tokio::test]
    async fn a_copy_whose_session_is_gone_is_still_dispatched() {
        for (persistent, session_present) in [(true, false), (false, true), (false, false)] {
            let conn = conn(SubscriptionMode::Ordered);
            let (gate, mut eventloop) = gate(persistent);
            gate.on_connected(false);
            gate.on_disconnected(&mut eventloop);
            gate.on_connected(session_present);
            assert_eq!(gate.fate(0), Fate::Lost, "{persistent} {session_present}");
            assert!(still_to_dispatch(&conn, &gate, 0).await);
            assert_eq!(superseded_count(&conn), 0);
        }
    }

    #[tokio::test]
    async fn an_unknown_fate_waits_for_the_next_connack_or_stop() {
        let conn = conn(SubscriptionMode::Ordered);
        let (gate, mut eventloop) = gate(true);
        gate.on_connected(false);
        gate.on_disconnected(&mut eventloop);
        assert_eq!(gate.fate(0), Fate::Unknown);
        let waiting = still_to_dispatch(&conn, &gate, 0);
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(Duration::from_millis(20), waiting.as_mut())
                .await
                .is_err(),
            "undecided while disconnected"
        );
        gate.on_connected(true);
        assert!(!waiting.await, "resumed session: the broker redelivers it");

        gate.on_disconnected(&mut eventloop);
        conn.stop.cancel();
        assert!(!still_to_dispatch(&conn, &gate, 1).await, "stop withholds it");
        assert_eq!(superseded_count(&conn), 1);
    }

    #[test]
    fn the_edge_refuses_invalid_topics_and_oversized_payloads() {
        let settings = IngressSettings::default();
        let publish = |topic: &str, size: usize| Publish::new(topic, QoS::AtLeastOnce, vec![0u8; size]);
        assert_eq!(edge_check(&publish("a/b", 10), &settings), Ok(()));
        for topic in ["", "a/+", "a/#", "a\0"] {
            let e = edge_check(&publish(topic, 1), &settings).unwrap_err();
            assert!(matches!(e, PublishError::InvalidTopic(_)), "{topic:?}: {e}");
            assert_eq!(error_reason(&e), "invalid_topic");
        }
        let limit = settings.max_payload_bytes;
        assert_eq!(edge_check(&publish("a", limit), &settings), Ok(()));
        let e = edge_check(&publish("a", limit + 1), &settings).unwrap_err();
        assert_eq!(
            e,
            PublishError::PayloadTooLarge {
                size: limit + 1,
                limit
            }
        );
        assert_eq!(error_reason(&e), "payload_too_large");
    }
}
