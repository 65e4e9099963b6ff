//! MQTT glue owned by the node: who holds which ordered route's ingress ([`ingress_plan`],
//! pure), and the publisher `republish` handlers use ([`MqttPublisher`]).
//!
//! Holder of an ordered route: the ring owner of the partition of the key
//! `$ingress/<route>`. Every node that applied the same epoch computes the same holder, and a
//! holder change is an ownership change (the epoch moves). The hold follows that partition's
//! handoff: the new holder connects only once the partition is active there (the old holder's
//! ingress acknowledged what it processed and disconnected before the partition was handed
//! over, see [`crate::ownership::Slot::ingress_hold`]), and each message is dispatched only
//! while the hold is valid (active, lease valid). The broker still fences a stale holder by
//! session takeover, because every holder uses the route's fixed client id.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, QoS};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::ConfigView;
use crate::handler::{Publisher, RepublishError};
use crate::ingress::{IngressPlan, IngressSettings, OrderedSubscription, SharedSubscription};
use crate::ring::partition_for_key;
use crate::routes::RouteMode;

/// The partition whose owner holds `route`'s ordered ingress.
pub fn ingress_partition(view: &ConfigView, route: &str) -> u32 {
    partition_for_key(&view.state.config.ring, &format!("$ingress/{route}"))
}

/// The node that holds `route`'s ordered ingress at this view's epoch.
pub fn ordered_holder<'a>(view: &'a ConfigView, route: &str) -> Option<&'a str> {
    view.ring.owner_of_partition(ingress_partition(view, route))
}

/// The fixed MQTT client id of an ordered route in this cluster.
pub fn ordered_client_id(cluster_id: &str, route: &str) -> String {
    let short: String = cluster_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(8)
        .collect();
    format!("routemq-{short}-{route}")
}

/// What `node_id` subscribes to at this view: every shared route, and the ordered routes it
/// holds.
pub fn ingress_plan(view: &ConfigView, node_id: &str) -> IngressPlan {
    let mut plan = IngressPlan::default();
    for route in view.routes.routes() {
        let filter = route.pattern().mqtt_filter();
        match route.mode() {
            RouteMode::Shared { worker_count } => plan.shared.push(SharedSubscription {
                route: route.name().to_string(),
                filter,
                qos: route.qos(),
                worker_count,
                message_id_field: route.message_id_field().map(str::to_string),
            }),
            RouteMode::Ordered => {
                if ordered_holder(view, route.name()) == Some(node_id) {
                    plan.ordered_held.push(OrderedSubscription {
                        route: route.name().to_string(),
                        filter,
                        qos: route.qos(),
                        client_id: ordered_client_id(&view.state.config.cluster_id, route.name()),
                        message_id_field: route.message_id_field().map(str::to_string),
                    });
                }
            }
        }
    }
    plan
}

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
            let mut backoff = Duration::from_millis(100);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    event = eventloop.poll() => match event {
                        Ok(Event::Incoming(_)) | Ok(Event::Outgoing(_)) => backoff = Duration::from_millis(100),
                        Err(e) => {
                            tracing::warn!(error = %e, retry_in = ?backoff, "MQTT publisher disconnected");
                            tokio::select! {
                                _ = stop.cancelled() => return,
                                _ = tokio::time::sleep(backoff) => {}
                            }
                            backoff = (backoff * 2).min(Duration::from_secs(5));
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
