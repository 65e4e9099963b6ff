//! The broker-only baseline: one rumqttc subscriber (QoS 1, clean session, automatic PUBACKs)
//! on the bench topics, with no RouteMQ node involved, so a run measures what the broker
//! alone delivers to one MQTT client under the same producers and workload.
//!
//! The subscriber runs on a thread of its own with its own single-threaded runtime, so it
//! neither waits for the producers nor slows them down more than a separate process would. It
//! records every message of the run with its arrival time; the run then checks them like
//! journals (lost, duplicated, reordered) and measures the delivery rate.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::{oneshot, watch};

use super::delivery::unix_us_now;
use super::payload::{decode, Header};

/// How long to wait for the broker's CONNACK and SUBACK.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

/// One message received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Arrival {
    /// Its identity, from the payload.
    pub header: Header,
    /// Its topic.
    pub topic: String,
    /// Its payload.
    pub payload: Vec<u8>,
    /// Wall-clock arrival time, microseconds since the Unix epoch.
    pub at_unix_us: u64,
}

/// The MQTT filter of a topic template: every level holding `{key}` becomes `+`.
pub fn filter_of(template: &str) -> String {
    template
        .split('/')
        .map(|level| if level.contains("{key}") { "+" } else { level })
        .collect::<Vec<_>>()
        .join("/")
}

/// A running subscriber.
pub(super) struct Subscriber {
    arrivals: Arc<Mutex<Vec<Arrival>>>,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl Subscriber {
    /// Connects, subscribes to `filter` at QoS 1 and returns once the broker confirmed the
    /// subscription. Only messages whose payload is a bench header with a key starting with
    /// `key_prefix` are recorded.
    pub async fn start(
        host: &str,
        port: u16,
        client_id: String,
        filter: String,
        key_prefix: String,
    ) -> Result<Self, String> {
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = watch::channel(false);
        let (ready_tx, ready_rx) = oneshot::channel();
        let (host, sink) = (host.to_string(), arrivals.clone());
        let thread = std::thread::Builder::new()
            .name("bench-subscriber".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("cannot start the subscriber's runtime: {e}"))?;
                runtime.block_on(run(
                    host, port, client_id, filter, key_prefix, sink, stopped, ready_tx,
                ))
            })
            .map_err(|e| format!("cannot start the subscriber thread: {e}"))?;
        let mut subscriber = Self {
            arrivals,
            stop,
            thread: Some(thread),
        };
        match ready_rx.await {
            Ok(Ok(())) => Ok(subscriber),
            Ok(Err(reason)) => {
                let _ = subscriber.finish().await;
                Err(reason)
            }
            Err(_) => Err(subscriber
                .finish()
                .await
                .err()
                .unwrap_or_else(|| "the subscriber stopped before subscribing".into())),
        }
    }

    /// Distinct messages received so far (by identity).
    pub fn distinct(&self) -> usize {
        let arrivals = lock(&self.arrivals);
        let set: std::collections::HashSet<&Header> = arrivals.iter().map(|a| &a.header).collect();
        set.len()
    }

    /// Messages received so far, duplicates included.
    pub fn received(&self) -> usize {
        lock(&self.arrivals).len()
    }

    /// Disconnects, waits for the thread and returns every arrival, in arrival order.
    pub async fn stop(mut self) -> Result<Vec<Arrival>, String> {
        self.finish().await?;
        Ok(std::mem::take(&mut *lock(&self.arrivals)))
    }

    async fn finish(&mut self) -> Result<(), String> {
        let _ = self.stop.send(true);
        match self.thread.take() {
            None => Ok(()),
            Some(thread) => tokio::task::spawn_blocking(move || thread.join())
                .await
                .map_err(|e| format!("subscriber join: {e}"))?
                .map_err(|_| "the subscriber thread panicked".to_string())?,
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[allow(clippy::too_many_arguments)]
async fn run(
    host: String,
    port: u16,
    client_id: String,
    filter: String,
    key_prefix: String,
    sink: Arc<Mutex<Vec<Arrival>>>,
    mut stopped: watch::Receiver<bool>,
    ready: oneshot::Sender<Result<(), String>>,
) -> Result<(), String> {
    let mut options = MqttOptions::new(client_id, host, port);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);
    let subscribed = tokio::time::timeout(SUBSCRIBE_TIMEOUT, async {
        client
            .subscribe(filter.as_str(), QoS::AtLeastOnce)
            .await
            .map_err(|e| e.to_string())?;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    return if ack
                        .return_codes
                        .iter()
                        .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                    {
                        Err(format!("the broker refused the subscription to {filter:?}"))
                    } else {
                        Ok(())
                    };
                }
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await
    .unwrap_or_else(|_| Err(format!("no SUBACK within {SUBSCRIBE_TIMEOUT:?}")));
    let failed = subscribed.as_ref().err().cloned();
    let _ = ready.send(subscribed);
    if let Some(reason) = failed {
        return Err(reason);
    }
    loop {
        tokio::select! {
            biased;
            _ = stopped.wait_for(|stop| *stop) => break,
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let at_unix_us = unix_us_now();
                    if let Some(header) = decode(&publish.payload).filter(|h| h.key.starts_with(&key_prefix)) {
                        lock(&sink).push(Arrival {
                            header,
                            topic: publish.topic.clone(),
                            payload: publish.payload.to_vec(),
                            at_unix_us,
                        });
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "the bench subscriber lost its connection");
                    return Err(format!("the subscriber lost its connection: {e}"));
                }
            },
        }
    }
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while !matches!(
            eventloop.poll().await,
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_)
        ) {}
    })
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_replace_key_levels() {
        assert_eq!(filter_of("bench/{key}/data"), "bench/+/data");
        assert_eq!(filter_of("b/k-{key}"), "b/+");
        assert_eq!(filter_of("{key}"), "+");
        assert_eq!(filter_of("a/b"), "a/b");
    }
}
