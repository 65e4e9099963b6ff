//! [`MqttPublisher`]: the broker connection `republish` handlers publish through (the
//! [`Publisher`] of nodes with a broker). One clean-session connection per node, client id
//! `<prefix>-<node>-publisher`, reconnecting in the background with backoff, with the ingress's
//! broker settings: address, credentials, TLS (`MQTT_TLS_*`), and a largest packet that fits
//! the node's payload limit.
//!
//! A publish resolves when the message is kept, never when it is only queued: a QoS 1 publish
//! on the broker's PUBACK, a QoS 0 one once written to the connection. [`PendingAcks`] (pure)
//! ties rumqttc's events to the waiting publishes: rumqttc writes requests in queue order and
//! reports each as `Outgoing::Publish(packet id)`, and the broker's `PubAck` names that packet
//! id. A publish that finds no connection waits for one; the whole wait (connection, queue,
//! PUBACK) is bounded by the ack timeout and ends with an error that says which step failed.
//! When the connection is lost, every publish not yet acknowledged fails at once (rumqttc's
//! copies are dropped, the session is clean): the handler fails and the message goes where
//! handler failures go (dead letters, or a retry by its producer); the broker may then have it
//! twice, never zero times.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Outgoing, Packet, QoS};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout_at, Instant};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::handler::{Publisher, RepublishError};
use crate::ingress::{IngressSettings, MQTT_MAX_PACKET_BYTES};

/// How long a publish may wait for a connection, room in the queue and the broker's PUBACK.
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Capacity of rumqttc's request channel.
const REQUEST_CAPACITY: usize = 1024;
/// Room above the payload limit in an outgoing PUBLISH: the longest topic and the header.
const TOPIC_ROOM: usize = 65_535 + 16;
/// Pause before trying a full request queue again.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(5);

/// The answer a waiting publish gets.
type Reply = oneshot::Sender<Result<(), String>>;

/// Publishes waiting to be written or acknowledged, in the order rumqttc handles them.
#[derive(Default)]
pub struct PendingAcks {
    /// Queued to rumqttc, not yet written, in queue order (rumqttc writes in that order).
    queued: VecDeque<(QoS, Reply)>,
    /// Written at QoS 1, waiting for the broker's PUBACK, by packet id (a packet id whose
    /// publish collided holds a second one behind the first).
    awaiting: HashMap<u16, VecDeque<Reply>>,
    /// Packet ids rumqttc held back on a collision: their later `Outgoing::Publish` is the
    /// held publish being written, not the next queued one.
    collided: HashSet<u16>,
}

impl PendingAcks {
    /// A publish was queued to rumqttc.
    pub fn queued(&mut self, qos: QoS, reply: Reply) {
        self.queued.push_back((qos, reply));
    }

    /// rumqttc wrote a PUBLISH with `pkid` (`Outgoing::Publish`).
    pub fn written(&mut self, pkid: u16) {
        if self.collided.remove(&pkid) {
            return;
        }
        let Some((qos, reply)) = self.queued.pop_front() else {
            return;
        };
        if qos == QoS::AtMostOnce {
            let _ = reply.send(Ok(()));
        } else {
            self.awaiting.entry(pkid).or_default().push_back(reply);
        }
    }

    /// rumqttc held the next publish back because `pkid` is still unacknowledged
    /// (`Outgoing::AwaitAck`); it writes it with that packet id after the PUBACK.
    pub fn collided(&mut self, pkid: u16) {
        if let Some((_, reply)) = self.queued.pop_front() {
            self.awaiting.entry(pkid).or_default().push_back(reply);
            self.collided.insert(pkid);
        }
    }

    /// The broker acknowledged `pkid`.
    pub fn acked(&mut self, pkid: u16) {
        if let Some(waiting) = self.awaiting.get_mut(&pkid) {
            if let Some(reply) = waiting.pop_front() {
                let _ = reply.send(Ok(()));
            }
            if waiting.is_empty() {
                self.awaiting.remove(&pkid);
            }
        }
    }

    /// The connection is gone: every publish not acknowledged fails with `why`.
    pub fn fail_all(&mut self, why: &str) {
        let awaiting = self.awaiting.drain().flat_map(|(_, replies)| replies);
        for reply in self.queued.drain(..).map(|(_, r)| r).chain(awaiting) {
            let _ = reply.send(Err(why.to_string()));
        }
        self.collided.clear();
    }

    /// Publishes not answered yet.
    pub fn len(&self) -> usize {
        self.queued.len() + self.awaiting.values().map(VecDeque::len).sum::<usize>()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the handlers and the connection task share.
struct Shared {
    pending: Mutex<PendingAcks>,
    /// Whether the connection is up (changed under `pending`'s lock by the task).
    connected: watch::Sender<bool>,
}

impl Shared {
    fn pending(&self) -> MutexGuard<'_, PendingAcks> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Publishes to the broker over one clean-session connection (for `republish`).
pub struct MqttPublisher {
    client: AsyncClient,
    shared: Arc<Shared>,
    broker: String,
    /// Why the publisher could not start (TLS files unreadable): every publish fails with it.
    broken: Option<String>,
    max_payload: usize,
    ack_timeout: Duration,
    cancel: CancellationToken,
    task: tokio::sync::Mutex<Option<JoinHandle<()>>>,
}

impl MqttPublisher {
    /// Connects (in the background, reconnecting with backoff) with client id
    /// `<prefix>-<node>-publisher`; publishes wait up to [`DEFAULT_ACK_TIMEOUT`].
    pub fn start(settings: &IngressSettings, node_id: &str) -> Self {
        Self::with_ack_timeout(settings, node_id, DEFAULT_ACK_TIMEOUT)
    }

    /// Like [`start`](Self::start), with another bound on a publish's wait. When the TLS
    /// files cannot be read, it logs why and every publish fails with that reason.
    pub fn with_ack_timeout(settings: &IngressSettings, node_id: &str, ack_timeout: Duration) -> Self {
        let client_id = format!("{}-{node_id}-publisher", settings.client_id_prefix);
        let shared = Arc::new(Shared {
            pending: Mutex::new(PendingAcks::default()),
            connected: watch::Sender::new(false),
        });
        let broker = settings.broker_address();
        let (options, network) = match publisher_options(settings, &client_id) {
            Ok(options) => options,
            Err(e) => {
                tracing::error!(broker = %broker, error = %e, "MQTT publisher cannot start: republish handlers will fail");
                let (client, _) = AsyncClient::new(rumqttc::MqttOptions::new(client_id, "localhost", 1), 1);
                return Self {
                    client,
                    shared,
                    broker,
                    broken: Some(e),
                    max_payload: settings.max_payload_bytes,
                    ack_timeout,
                    cancel: CancellationToken::new(),
                    task: tokio::sync::Mutex::new(None),
                };
            }
        };
        let (client, mut eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
        eventloop.set_network_options(network);
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let task_shared = shared.clone();
        let (backoff_min, backoff_max) = (settings.reconnect_backoff_min, settings.reconnect_backoff_max);
        let task_broker = broker.clone();
        let task = tokio::spawn(async move {
            let shared = task_shared;
            let mut backoff = Backoff::new(backoff_min, backoff_max);
            loop {
                let event = tokio::select! {
                    _ = stop.cancelled() => break,
                    event = eventloop.poll() => event,
                };
                match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        backoff.reset();
                        let _pending = shared.pending();
                        shared.connected.send_replace(true);
                        tracing::info!(broker = %task_broker, "MQTT publisher connected");
                    }
                    Ok(Event::Incoming(Packet::PubAck(ack))) => shared.pending().acked(ack.pkid),
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => shared.pending().written(pkid),
                    Ok(Event::Outgoing(Outgoing::AwaitAck(pkid))) => shared.pending().collided(pkid),
                    Ok(_) => {}
                    Err(e) => {
                        {
                            let mut pending = shared.pending();
                            shared.connected.send_replace(false);
                            // Nothing of the lost connection is sent again: its publishes fail
                            // now, so rumqttc's events stay in step with `pending`.
                            eventloop.clean();
                            eventloop.pending.clear();
                            let unanswered = pending.len();
                            pending.fail_all(&format!(
                                "the connection to the MQTT broker at {task_broker} was lost before the PUBACK: {e}"
                            ));
                            tracing::warn!(broker = %task_broker, error = %e, unanswered,
                                retry_in = ?backoff.peek(), "MQTT publisher disconnected");
                        }
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = sleep(backoff.next_delay()) => {}
                        }
                    }
                }
            }
            let mut pending = shared.pending();
            shared.connected.send_replace(false);
            pending.fail_all("the MQTT publisher stopped");
        });
        Self {
            client,
            shared,
            broker,
            broken: None,
            max_payload: settings.max_payload_bytes,
            ack_timeout,
            cancel,
            task: tokio::sync::Mutex::new(Some(task)),
        }
    }

    /// Disconnects and stops the connection task; publishes still waiting fail.
    pub async fn shutdown(&self) {
        let _ = self.client.try_disconnect();
        // Let the DISCONNECT go out before the task stops polling.
        sleep(Duration::from_millis(50)).await;
        self.cancel.cancel();
        if let Some(task) = self.task.lock().await.take() {
            let _ = task.await;
        }
    }

    /// Queues the publish once connected, with room in the queue; its answer comes on the
    /// returned receiver.
    async fn enqueue(
        &self,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        deadline: Instant,
    ) -> Result<oneshot::Receiver<Result<(), String>>, String> {
        let mut connected = self.shared.connected.subscribe();
        loop {
            if timeout_at(deadline, connected.wait_for(|up| *up)).await.is_err() {
                return Err(format!(
                    "not connected to the MQTT broker at {} within {:?}",
                    self.broker, self.ack_timeout
                ));
            }
            {
                let mut pending = self.shared.pending();
                if *self.shared.connected.borrow() {
                    let (reply, answer) = oneshot::channel();
                    if self
                        .client
                        .try_publish(topic, qos, false, payload.to_vec())
                        .is_ok()
                    {
                        pending.queued(qos, reply);
                        return Ok(answer);
                    }
                }
            }
            // Lost the connection meanwhile, or the queue is full: try again shortly.
            if Instant::now() + QUEUE_FULL_PAUSE >= deadline {
                return Err(format!(
                    "the MQTT publisher's queue stayed full for {:?}",
                    self.ack_timeout
                ));
            }
            sleep(QUEUE_FULL_PAUSE).await;
        }
    }
}

/// The publisher's rumqttc options: the ingress's (address, credentials, TLS), a clean
/// session, and outgoing packets up to the payload limit plus the longest topic.
fn publisher_options(
    settings: &IngressSettings,
    client_id: &str,
) -> Result<(rumqttc::MqttOptions, rumqttc::NetworkOptions), String> {
    let (mut options, network) = settings
        .mqtt_options(client_id, true)
        .map_err(|e| e.to_string())?;
    options.set_manual_acks(false);
    options.set_max_packet_size(settings.max_packet_bytes, outgoing_packet_limit(settings));
    Ok((options, network))
}

/// Largest PUBLISH the publisher writes: a payload at the limit with the longest topic
/// (rumqttc's default, 10 KiB, broke the connection on larger payloads).
fn outgoing_packet_limit(settings: &IngressSettings) -> usize {
    settings
        .max_payload_bytes
        .saturating_add(TOPIC_ROOM)
        .min(MQTT_MAX_PACKET_BYTES)
}

#[async_trait::async_trait]
impl Publisher for MqttPublisher {
    async fn publish(&self, topic: &str, payload: &[u8], qos: u8) -> Result<(), RepublishError> {
        let qos = match qos {
            0 => QoS::AtMostOnce,
            _ => QoS::AtLeastOnce,
        };
        let not_acked = |reason: String| RepublishError::NotAcknowledged {
            topic: topic.to_owned(),
            reason,
        };
        if let Some(why) = &self.broken {
            return Err(not_acked(why.clone()));
        }
        if payload.len() > self.max_payload {
            return Err(RepublishError::TooLarge {
                topic: topic.to_owned(),
                size: payload.len(),
                limit: self.max_payload,
            });
        }
        if !rumqttc::valid_topic(topic) || topic.contains(['+', '#']) {
            return Err(not_acked("not a valid MQTT topic name".into()));
        }
        let deadline = Instant::now() + self.ack_timeout;
        let answer = self
            .enqueue(topic, payload, qos, deadline)
            .await
            .map_err(not_acked)?;
        match timeout_at(deadline, answer).await {
            Ok(Ok(result)) => result.map_err(not_acked),
            Ok(Err(_)) => Err(not_acked("the MQTT publisher stopped".into())),
            Err(_) => Err(not_acked(format!(
                "no PUBACK from the MQTT broker at {} within {:?}",
                self.broker, self.ack_timeout
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiter() -> (Reply, oneshot::Receiver<Result<(), String>>) {
        oneshot::channel()
    }

    fn answer(rx: &mut oneshot::Receiver<Result<(), String>>) -> Option<Result<(), String>> {
        rx.try_recv().ok()
    }

    #[test]
    fn qos1_publishes_resolve_on_their_own_puback_only() {
        let mut p = PendingAcks::default();
        let (a, mut ra) = waiter();
        let (b, mut rb) = waiter();
        let (c, mut rc) = waiter();
        p.queued(QoS::AtLeastOnce, a);
        p.queued(QoS::AtMostOnce, b);
        p.queued(QoS::AtLeastOnce, c);
        p.written(1);
        assert_eq!(answer(&mut ra), None, "written is not acknowledged");
        p.written(0);
        assert_eq!(answer(&mut rb), Some(Ok(())), "QoS 0: done once written");
        p.written(2);
        p.acked(2);
        assert_eq!(answer(&mut rc), Some(Ok(())));
        assert_eq!(answer(&mut ra), None, "another packet's PUBACK");
        p.acked(1);
        assert_eq!(answer(&mut ra), Some(Ok(())));
        assert!(p.is_empty());
        p.acked(7); // unknown: ignored
    }

    #[test]
    fn a_collision_waits_behind_the_packet_id_it_collided_with() {
        let mut p = PendingAcks::default();
        let (a, mut ra) = waiter();
        let (b, mut rb) = waiter();
        let (c, mut rc) = waiter();
        p.queued(QoS::AtLeastOnce, a);
        p.queued(QoS::AtLeastOnce, b);
        p.queued(QoS::AtLeastOnce, c);
        p.written(1);
        p.collided(1); // b is held until 1 is acknowledged, then written as 1
        p.acked(1);
        assert_eq!(answer(&mut ra), Some(Ok(())));
        assert_eq!(answer(&mut rb), None);
        p.written(1); // the held b goes out: not the next queued one
        p.written(2); // c
        p.acked(1);
        assert_eq!(answer(&mut rb), Some(Ok(())));
        assert_eq!(answer(&mut rc), None);
        p.acked(2);
        assert_eq!(answer(&mut rc), Some(Ok(())));
    }

    #[test]
    fn a_lost_connection_fails_every_unacknowledged_publish() {
        let mut p = PendingAcks::default();
        let (a, mut ra) = waiter();
        let (b, mut rb) = waiter();
        p.queued(QoS::AtLeastOnce, a);
        p.queued(QoS::AtLeastOnce, b);
        p.written(1);
        p.fail_all("gone");
        assert_eq!(answer(&mut ra), Some(Err("gone".into())));
        assert_eq!(answer(&mut rb), Some(Err("gone".into())));
        assert!(p.is_empty());
    }

    #[test]
    fn options_honour_tls_and_the_payload_limit() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n").unwrap();
        let settings = IngressSettings {
            tls: true,
            port: 8883,
            tls_ca_file: Some(ca),
            max_payload_bytes: 1 << 20,
            ..IngressSettings::default()
        };
        let (options, _) = publisher_options(&settings, "p").unwrap();
        assert!(
            matches!(options.transport(), rumqttc::Transport::Tls(_)),
            "MQTT_TLS_* settings reach the publisher"
        );
        assert!(options.clean_session());
        assert!(outgoing_packet_limit(&settings) > (1 << 20) + 65_535);
        assert_eq!(
            outgoing_packet_limit(&IngressSettings {
                max_payload_bytes: MQTT_MAX_PACKET_BYTES,
                ..IngressSettings::default()
            }),
            MQTT_MAX_PACKET_BYTES
        );
        let plain = publisher_options(&IngressSettings::default(), "p").unwrap().0;
        assert!(matches!(plain.transport(), rumqttc::Transport::Tcp));
    }
}
