//! [`MqttPublisher`]: the broker connection `republish` handlers publish through (the
//! [`Publisher`] of nodes with a broker). One clean-session connection per node, client id
//! `<prefix>-<node>-publisher`, reconnecting in the background with backoff; QoS 1 publishes
//! are resent by rumqttc until the broker acknowledges them.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, QoS};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::handler::{Publisher, RepublishError};
use crate::ingress::IngressSettings;

/// Publishes to the broker over one clean-session connection (for `republish`).
pub struct MqttPublisher {
    client: AsyncClient,
    cancel: CancellationToken,
    task: tokio::sync::Mutex<Option<JoinHandle<()>>>,
}

impl MqttPublisher {
    /// Connects (in the background, reconnecting with backoff) with client id
    /// `<prefix>-<node>-publisher`.
    pub fn start(settings: &IngressSettings, node_id: &str) -> Self {
        let client_id = format!("{}-{node_id}-publisher", settings.client_id_prefix);
        let mut options = MqttOptions::new(client_id, settings.host.clone(), settings.port);
        options.set_keep_alive(Duration::from_secs(30));
        if let (Some(user), Some(password)) = (&settings.username, &settings.password) {
            options.set_credentials(user.clone(), password.clone());
        }
        let (client, mut eventloop) = AsyncClient::new(options, 1024);
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let task = tokio::spawn(async move {
            let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    event = eventloop.poll() => match event {
                        Ok(Event::Incoming(_)) | Ok(Event::Outgoing(_)) => backoff.reset(),
                        Err(e) => {
                            tracing::warn!(error = %e, retry_in = ?backoff.peek(), "MQTT publisher disconnected");
                            tokio::select! {
                                _ = stop.cancelled() => return,
                                _ = tokio::time::sleep(backoff.next_delay()) => {}
                            }
                        }
                    },
                }
            }
        });
        Self {
            client,
            cancel,
            task: tokio::sync::Mutex::new(Some(task)),
        }
    }

    /// Disconnects and stops the connection task.
    pub async fn shutdown(&self) {
        let _ = self.client.try_disconnect();
        self.cancel.cancel();
        if let Some(task) = self.task.lock().await.take() {
            let _ = task.await;
        }
    }
}

#[async_trait::async_trait]
impl Publisher for MqttPublisher {
    async fn publish(&self, topic: &str, payload: &[u8], qos: u8) -> Result<(), RepublishError> {
        let qos = match qos {
            0 => QoS::AtMostOnce,
            _ => QoS::AtLeastOnce,
        };
        // Queued to the connection; rumqttc resends QoS 1 until the broker's PUBACK.
        self.client
            .publish(topic, qos, false, payload.to_vec())
            .await
            .map_err(|e| RepublishError::Client {
                topic: topic.to_owned(),
                source: Box::new(e),
            })
    }
}
