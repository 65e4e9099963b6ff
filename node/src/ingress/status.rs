//! Connection state as the node sees it (`/ready`, logs) and as Prometheus sees it (metrics).

use std::sync::Mutex;

use serde::Serialize;

use super::plan::SubscriptionMode;

/// Messages received from the broker, by route.
pub const MQTT_MESSAGES_RECEIVED: &str = "routemq_mqtt_messages_received_total";
/// PUBACKs (PUBRECs for QoS 2) sent to the broker, by route.
pub const MQTT_ACKS: &str = "routemq_mqtt_acks_total";
/// Messages that could not be dispatched (or needed a retry), by route and reason.
pub const MQTT_DISPATCH_ERRORS: &str = "routemq_mqtt_dispatch_errors_total";
/// 1 while a connection is up, by route and client id.
pub const MQTT_CONNECTED: &str = "routemq_mqtt_connected";
/// Reconnect attempts after a failed or lost connection, by route.
pub const MQTT_RECONNECTS: &str = "routemq_mqtt_reconnects_total";
/// Times the takeover guard fenced a connection (another client with the same id), by route.
pub const MQTT_TAKEOVER_FENCES: &str = "routemq_mqtt_takeover_fences_total";

/// Registers the ingress metrics' descriptions with the installed recorder.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(
        MQTT_MESSAGES_RECEIVED,
        "MQTT messages received from the broker, by route"
    );
    describe_counter!(MQTT_ACKS, "MQTT acknowledgements sent to the broker, by route");
    describe_counter!(
        MQTT_DISPATCH_ERRORS,
        "MQTT messages that failed to dispatch (retried or given up), by route and reason"
    );
    describe_gauge!(
        MQTT_CONNECTED,
        "1 while an MQTT ingress connection is up, by route and client"
    );
    describe_counter!(MQTT_RECONNECTS, "MQTT ingress reconnect attempts, by route");
    describe_counter!(
        MQTT_TAKEOVER_FENCES,
        "MQTT connections held back after repeated session takeovers, by route"
    );
    describe_counter!(
        super::MESSAGE_ID_MISSING,
        "Messages of a route with message_id_field whose payload carried no id (a generated id was used), by route and reason"
    );
}

/// Snapshot of the ingress: one entry per MQTT connection the current plan asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct IngressStatus {
    /// Connections, sorted by client id.
    pub connections: Vec<ConnectionStatus>,
    /// The most recent error of any connection (cleared only by a newer one).
    pub last_error: Option<String>,
    /// Plan entries the ingress refused (bad filter, duplicate client id, ...).
    pub plan_issues: Vec<String>,
    /// Why the ingress did not start (invalid settings), if it did not.
    pub not_started: Option<String>,
}

/// The ingress as `/ready` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct IngressReadiness {
    /// MQTT connections this node holds (its shared routes' workers, the ordered routes it
    /// holds).
    pub connections: usize,
    /// How many of them are connected to the broker.
    pub connected: usize,
    /// Why this node takes no messages from the broker, when it cannot (then it is not ready).
    pub problem: Option<String>,
    /// The most recent connection error, even when the ingress works.
    pub last_error: Option<String>,
}

impl IngressStatus {
    /// Whether the ingress can take messages from the broker. It cannot when it did not start,
    /// or when it holds connections and none is up: the broker is down, unreachable or refuses
    /// us (the reason is the connections' last error). A connection held back by the takeover
    /// guard means the broker is up (another client holds the session), and a node without
    /// connections (no shared routes, no ordered route held) has nothing to take.
    pub fn readiness(&self) -> IngressReadiness {
        let connections = self.connections.len();
        let connected = self.connections.iter().filter(|c| c.connected).count();
        // Held back on purpose: another client holds the session, or another node is still
        // handing the route over. Neither says anything about the broker.
        let fenced = self.connections.iter().any(|c| c.fenced || c.awaiting_hold);
        let problem = if let Some(why) = &self.not_started {
            Some(format!("MQTT ingress not started: {why}"))
        } else if connections > 0 && connected == 0 && !fenced {
            Some(
                match self.connections.iter().find_map(|c| c.last_error.as_deref()) {
                    Some(e) => format!("MQTT broker unreachable ({connections} connections down): {e}"),
                    None => "MQTT ingress connecting to the broker".to_string(),
                },
            )
        } else {
            None
        };
        IngressReadiness {
            connections,
            connected,
            problem,
            last_error: self.last_error.clone(),
        }
    }

    /// True when every connection is up (and there is at least one).
    pub fn all_connected(&self) -> bool {
        !self.connections.is_empty() && self.connections.iter().all(|c| c.connected)
    }

    /// The connection with this client id.
    pub fn connection(&self, client_id: &str) -> Option<&ConnectionStatus> {
        self.connections.iter().find(|c| c.client_id == client_id)
    }

    /// The connections of one route.
    pub fn route<'a>(&'a self, route: &'a str) -> impl Iterator<Item = &'a ConnectionStatus> + 'a {
        self.connections.iter().filter(move |c| c.route == route)
    }
}

/// State and counters of one MQTT connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnectionStatus {
    /// Route served.
    pub route: String,
    /// MQTT client id.
    pub client_id: String,
    /// Shared or ordered.
    pub mode: SubscriptionMode,
    /// Connected to the broker (CONNACK received, no error since).
    pub connected: bool,
    /// The broker acknowledged the subscription (on this or, for a resumed persistent
    /// session, an earlier connection).
    pub subscribed: bool,
    /// Held back by the takeover guard (another client uses this client id).
    pub fenced: bool,
    /// The last connection or subscription error.
    pub last_error: Option<String>,
    /// Successful connections (CONNACKs).
    pub connects: u64,
    /// Reconnect attempts after a failure.
    pub reconnects: u64,
    /// Established connections closed by the broker.
    pub peer_closes: u64,
    /// Times the takeover guard held the connection back.
    pub fences: u64,
    /// Messages received.
    pub received: u64,
    /// Messages dispatched and accepted.
    pub dispatched: u64,
    /// Acknowledgements sent to the broker.
    pub acked: u64,
    /// Dispatch attempts that failed with a retryable error.
    pub retries: u64,
    /// Messages given up: refused at the edge, final dispatch error, or retries exhausted.
    pub rejected: u64,
    /// Messages dropped without dispatch because the broker redelivers them (persistent
    /// session resumed after the connection they came on was lost).
    pub superseded: u64,
    /// An ordered route's connection waiting for the route's previous holder to hand it over
    /// (it connects once this node holds the route).
    pub awaiting_hold: bool,
}

impl ConnectionStatus {
    pub(crate) fn new(route: &str, client_id: &str, mode: SubscriptionMode) -> Self {
        Self {
            route: route.to_string(),
            client_id: client_id.to_string(),
            mode,
            connected: false,
            subscribed: false,
            fenced: false,
            last_error: None,
            connects: 0,
            reconnects: 0,
            peer_closes: 0,
            fences: 0,
            received: 0,
            dispatched: 0,
            acked: 0,
            retries: 0,
            rejected: 0,
            superseded: 0,
            awaiting_hold: false,
        }
    }
}

/// The shared, mutable status behind [`IngressStatus`].
#[derive(Debug, Default)]
pub(crate) struct StatusRegistry {
    inner: Mutex<IngressStatus>,
}

impl StatusRegistry {
    pub fn snapshot(&self) -> IngressStatus {
        self.lock().clone()
    }

    pub fn insert(&self, status: ConnectionStatus) {
        let mut inner = self.lock();
        inner.connections.retain(|c| c.client_id != status.client_id);
        inner.connections.push(status);
        inner.connections.sort_by(|a, b| a.client_id.cmp(&b.client_id));
    }

    pub fn remove(&self, client_id: &str) {
        self.lock().connections.retain(|c| c.client_id != client_id);
    }

    pub fn update(&self, client_id: &str, f: impl FnOnce(&mut ConnectionStatus)) {
        let mut inner = self.lock();
        if let Some(c) = inner.connections.iter_mut().find(|c| c.client_id == client_id) {
            f(c);
        }
    }

    pub fn set_error(&self, client_id: &str, error: String) {
        let mut inner = self.lock();
        if let Some(c) = inner.connections.iter_mut().find(|c| c.client_id == client_id) {
            c.last_error = Some(error.clone());
        }
        inner.last_error = Some(format!("{client_id}: {error}"));
    }

    pub fn set_not_started(&self, why: String) {
        let mut inner = self.lock();
        inner.last_error = Some(why.clone());
        inner.not_started = Some(why);
    }

    pub fn set_plan_issues(&self, issues: Vec<String>) {
        self.lock().plan_issues = issues;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, IngressStatus> {
        // A panic while holding this lock cannot leave the status inconsistent in a way that
        // matters (plain counters), so recover from poisoning instead of propagating it.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Labels and metric handles of one connection.
#[derive(Debug, Clone)]
pub(crate) struct ConnMetrics {
    route: String,
    client: String,
}

impl ConnMetrics {
    pub fn new(route: &str, client: &str) -> Self {
        Self {
            route: route.to_string(),
            client: client.to_string(),
        }
    }

    pub fn received(&self) {
        metrics::counter!(MQTT_MESSAGES_RECEIVED, "route" => self.route.clone()).increment(1);
    }

    pub fn acked(&self) {
        metrics::counter!(MQTT_ACKS, "route" => self.route.clone()).increment(1);
    }

    pub fn dispatch_error(&self, reason: &'static str) {
        metrics::counter!(MQTT_DISPATCH_ERRORS, "route" => self.route.clone(), "reason" => reason)
            .increment(1);
    }

    pub fn connected(&self, up: bool) {
        metrics::gauge!(MQTT_CONNECTED, "route" => self.route.clone(), "client" => self.client.clone())
            .set(if up { 1.0 } else { 0.0 });
    }

    pub fn reconnect(&self) {
        metrics::counter!(MQTT_RECONNECTS, "route" => self.route.clone()).increment(1);
    }

    pub fn fenced(&self) {
        metrics::counter!(MQTT_TAKEOVER_FENCES, "route" => self.route.clone()).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(client: &str, connected: bool, fenced: bool, error: Option<&str>) -> ConnectionStatus {
        ConnectionStatus {
            connected,
            fenced,
            last_error: error.map(str::to_string),
            ..ConnectionStatus::new("r", client, SubscriptionMode::Shared)
        }
    }

    fn status(connections: Vec<ConnectionStatus>) -> IngressStatus {
        IngressStatus {
            connections,
            ..IngressStatus::default()
        }
    }

    #[test]
    fn broker_down_is_a_problem_with_the_reason() {
        let down = status(vec![
            conn("a", false, false, Some("I/O: Connection refused (os error 111)")),
            conn("b", false, false, None),
        ]);
        let r = down.readiness();
        assert_eq!((r.connections, r.connected), (2, 0));
        assert_eq!(
            r.problem.as_deref(),
            Some("MQTT broker unreachable (2 connections down): I/O: Connection refused (os error 111)")
        );
        let connecting = status(vec![conn("a", false, false, None)]).readiness();
        assert_eq!(
            connecting.problem.as_deref(),
            Some("MQTT ingress connecting to the broker")
        );
    }

    #[test]
    fn one_connection_up_or_fenced_or_none_held_is_no_problem() {
        let partly = status(vec![
            conn("a", true, false, None),
            conn("b", false, false, Some("refused")),
        ]);
        assert_eq!(partly.readiness().problem, None);
        assert_eq!(partly.readiness().connected, 1);
        let fenced = status(vec![conn("a", false, true, Some("closed twice"))]);
        assert_eq!(fenced.readiness().problem, None);
        assert_eq!(status(vec![]).readiness().problem, None);
    }

    #[test]
    fn settings_that_stopped_the_ingress_are_a_problem() {
        let registry = StatusRegistry::default();
        registry.set_not_started("keep_alive: must be at least 1 s".into());
        let r = registry.snapshot().readiness();
        assert_eq!(
            r.problem.as_deref(),
            Some("MQTT ingress not started: keep_alive: must be at least 1 s")
        );
    }
}
