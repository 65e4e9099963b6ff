//! MQTT producers: one rumqttc connection per producer (clean session, client id
//! `routemq-bench-<run>-<producer>`), QoS 1 publishes with at most C unacknowledged, in
//! sequence order; an acknowledgement is the broker's PUBACK.
//!
//! PUBACKs carry only a packet id, so the event loop pairs them with messages: publishes leave
//! the client in the order they were queued, each as an `Outgoing::Publish(pkid)` event (or an
//! `AwaitAck(pkid)` first when its packet id collides with an unacknowledged one, and the
//! `Outgoing::Publish` once it is sent). A lost connection ends the producer: with a clean
//! session rumqttc drops what was unacknowledged, so those messages count as
//! `connection_lost` (they may still have reached the broker).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::Semaphore;

use super::delivery::unix_us_now;
use super::{Plan, ProducerResult, Record};

/// How long to wait for the broker's CONNACK.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Requests queued in the rumqttc client ahead of the event loop.
const CLIENT_QUEUE: usize = 64;

/// Parses a broker address: `host:port`, optionally prefixed `mqtt://` or `tcp://`; IPv6 in
/// brackets.
pub fn parse_broker(text: &str) -> Result<(String, u16), String> {
    let trimmed = text.trim();
    let rest = trimmed
        .strip_prefix("mqtt://")
        .or_else(|| trimmed.strip_prefix("tcp://"))
        .unwrap_or(trimmed)
        .trim_end_matches('/');
    let invalid = |why: &str| format!("invalid MQTT broker address {text:?}: {why} (expected host:port)");
    let (host, port) = rest.rsplit_once(':').ok_or_else(|| invalid("missing port"))?;
    let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(ipv6) if ipv6.parse::<std::net::Ipv6Addr>().is_ok() => ipv6,
        Some(_) => return Err(invalid("bad IPv6 address")),
        None if host.contains(':') => return Err(invalid("IPv6 addresses go in brackets")),
        None => host,
    };
    if host.is_empty() || host.contains(['/', '[', ']']) || host.contains(char::is_whitespace) {
        return Err(invalid("bad host"));
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(invalid("bad port")),
        Ok(port) => Ok((host.to_string(), port)),
    }
}

/// A connected producer connection.
pub(super) struct Connection {
    client: AsyncClient,
    eventloop: EventLoop,
}

/// Connects producer `p` and waits for the broker's CONNACK.
pub(super) async fn connect(plan: &Plan, host: &str, port: u16, p: u32) -> Result<Connection, String> {
    let mut options = MqttOptions::new(format!("routemq-bench-{}-{p}", plan.run_id), host, port);
    let longest_topic = plan.topics.iter().map(String::len).max().unwrap_or(0);
    let packet = (plan.payload_bytes + longest_topic + 1024).max(10 * 1024);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_inflight(plan.concurrency.clamp(1, u32::from(u16::MAX) - 1) as u16)
        .set_max_packet_size(packet, packet);
    let (client, mut eventloop) = AsyncClient::new(options, CLIENT_QUEUE);
    let connected = tokio::time::timeout(CONNECT_TIMEOUT, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(err) => return Err(err.to_string()),
            }
        }
    })
    .await;
    match connected {
        Ok(Ok(())) => Ok(Connection { client, eventloop }),
        Ok(Err(reason)) => Err(reason),
        Err(_) => Err(format!("no CONNACK within {CONNECT_TIMEOUT:?}")),
    }
}

/// Messages between the producer and the event loop.
#[derive(Default)]
struct Tracker {
    /// Queued in the client, not yet written (in order).
    queued: VecDeque<(Record, Instant)>,
    /// Written, waiting for a PUBACK, by packet id.
    in_flight: HashMap<u16, (Record, Instant)>,
    /// A publish held back by a packet id collision.
    collided: Option<(u16, Record, Instant)>,
    /// The connection was lost.
    lost: bool,
}

impl Tracker {
    fn outstanding(&mut self) -> Vec<Record> {
        let mut records: Vec<Record> = self.queued.drain(..).map(|(r, _)| r).collect();
        records.extend(self.in_flight.drain().map(|(_, (r, _))| r));
        records.extend(self.collided.take().map(|(_, r, _)| r));
        records.sort_by_key(|r| r.seq);
        records
    }
}

/// Producer `p` over its connection.
pub(super) async fn producer(
    plan: Arc<Plan>,
    connection: Connection,
    p: u32,
    start: Instant,
) -> ProducerResult {
    let Connection { client, eventloop } = connection;
    let tracker = Arc::new(Mutex::new(Tracker::default()));
    let results = Arc::new(Mutex::new(ProducerResult::new()));
    let window = Arc::new(Semaphore::new(plan.concurrency as usize));
    let events = tokio::spawn(event_loop(
        eventloop,
        plan.clone(),
        tracker.clone(),
        results.clone(),
        window.clone(),
    ));

    let own = plan.producer_keys(p);
    let mut local = ProducerResult::new();
    for seq in 0..plan.producer_messages(p) {
        if let Some(due) = plan.due(start, seq) {
            let wake = plan.deadline.map_or(due, |deadline| due.min(deadline));
            tokio::time::sleep_until(wake.into()).await;
        }
        if plan.should_stop(&mut local) {
            break;
        }
        match window.acquire().await {
            Ok(permit) => permit.forget(),
            // Closed: the connection was lost.
            Err(_) => break,
        }
        let mut message = plan.message(p, seq, &own);
        message.record.sent_unix_us = unix_us_now();
        lock(&tracker).queued.push_back((message.record, Instant::now()));
        if client
            .publish(message.topic, QoS::AtLeastOnce, false, message.payload)
            .await
            .is_err()
        {
            // The event loop is gone (connection lost); the message stays outstanding.
            break;
        }
    }

    // Wait for the outstanding PUBACKs (the event loop gives a permit back for each).
    let window_size = plan.concurrency;
    let _ = tokio::time::timeout(plan.ack_timeout, window.acquire_many(window_size)).await;
    let _ = client.try_disconnect();
    let mut events = events;
    if tokio::time::timeout(Duration::from_secs(1), &mut events)
        .await
        .is_err()
    {
        events.abort();
    }

    let mut result = std::mem::replace(&mut *lock(&results), ProducerResult::new());
    let mut tracker = lock(&tracker);
    let error = if tracker.lost {
        "connection_lost"
    } else {
        "no_puback"
    };
    for record in tracker.outstanding() {
        result.failed(record, error);
        plan.note_failure();
    }
    result.hit_deadline |= local.hit_deadline;
    result
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn event_loop(
    mut eventloop: EventLoop,
    plan: Arc<Plan>,
    tracker: Arc<Mutex<Tracker>>,
    results: Arc<Mutex<ProducerResult>>,
    window: Arc<Semaphore>,
) {
    loop {
        match eventloop.poll().await {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                let mut t = lock(&tracker);
                let resent = match t.collided.take() {
                    Some((id, record, at)) if id == pkid && !t.in_flight.contains_key(&pkid) => {
                        Some((record, at))
                    }
                    other => {
                        t.collided = other;
                        None
                    }
                };
                if let Some(message) = resent.or_else(|| t.queued.pop_front()) {
                    t.in_flight.insert(pkid, message);
                }
            }
            Ok(Event::Outgoing(Outgoing::AwaitAck(pkid))) => {
                let mut t = lock(&tracker);
                if let Some((record, at)) = t.queued.pop_front() {
                    t.collided = Some((pkid, record, at));
                }
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                let acked = lock(&tracker).in_flight.remove(&ack.pkid);
                if let Some((record, at)) = acked {
                    lock(&results).acked(record, at.elapsed());
                    plan.note_success();
                    window.add_permits(1);
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(error = %err, "MQTT connection lost; this producer stops");
                lock(&tracker).lost = true;
                window.close();
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_addresses() {
        assert_eq!(parse_broker("127.0.0.1:1883"), Ok(("127.0.0.1".into(), 1883)));
        assert_eq!(
            parse_broker("mqtt://broker.local:1884/"),
            Ok(("broker.local".into(), 1884))
        );
        assert_eq!(parse_broker("tcp://[::1]:1883"), Ok(("::1".into(), 1883)));
        for bad in [
            "broker",
            "broker:",
            "broker:0",
            ":1883",
            "a b:1",
            "::1:1883",
            "broker:99999",
        ] {
            let err = parse_broker(bad).unwrap_err();
            assert!(err.contains("expected host:port"), "{bad}: {err}");
        }
    }

    #[test]
    fn outstanding_messages_come_back_in_order() {
        let record = |seq| Record {
            key_index: 0,
            producer: 0,
            seq,
            acked: false,
            sent_unix_us: 0,
        };
        let now = Instant::now();
        let mut t = Tracker::default();
        t.queued.push_back((record(5), now));
        t.in_flight.insert(2, (record(3), now));
        t.in_flight.insert(1, (record(4), now));
        t.collided = Some((1, record(2), now));
        let seqs: Vec<u64> = t.outstanding().iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![2, 3, 4, 5]);
        assert!(t.queued.is_empty() && t.in_flight.is_empty() && t.collided.is_none());
    }
}
