//! What the ingress subscribes to ([`IngressPlan`], computed from the applied config by
//! [`super::ingress_plan`]), the MQTT connections that plan asks for, and how a new plan
//! differs from the running one. Pure functions: no I/O, unit-tested here.
//!
//! Connections are keyed by MQTT client id, which embeds the route: a shared route `r` with
//! `worker_count = n` asks for `n` connections `<prefix>-<node>-r-<i>`; an ordered route asks
//! for one connection under the plan's fixed client id. A connection whose subscription is
//! unchanged between two plans keeps running untouched (no reconnect, nothing lost).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

/// Largest `worker_count` the ingress accepts for one shared route on one node.
pub const MAX_WORKER_COUNT: u32 = 256;

/// What this node's ingress subscribes to, computed from the routes and ownership by
/// [`super::ingress_plan`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngressPlan {
    /// Shared routes: every node subscribes through `$share/<group>/<filter>`.
    pub shared: Vec<SharedSubscription>,
    /// Ordered routes this node currently holds (the node decides who holds what).
    pub ordered_held: Vec<OrderedSubscription>,
}

/// A shared route's subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedSubscription {
    /// Route name.
    pub route: String,
    /// MQTT topic filter, without the `$share/<group>/` prefix.
    pub filter: String,
    /// Subscription QoS (0, 1 or 2).
    pub qos: u8,
    /// MQTT connections this node opens for the route.
    pub worker_count: u32,
    /// The route's `message_id_field`: JSON pointer to the message id in the payload.
    pub message_id_field: Option<String>,
}

/// An ordered route held by this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderedSubscription {
    /// Route name.
    pub route: String,
    /// MQTT topic filter.
    pub filter: String,
    /// Subscription QoS (0, 1 or 2).
    pub qos: u8,
    /// The route's fixed MQTT client id; every holder uses the same one, so the broker keeps
    /// one persistent session for the route and fences a second holder by session takeover.
    pub client_id: String,
    /// The route's `message_id_field`: JSON pointer to the message id in the payload.
    pub message_id_field: Option<String>,
}

/// How a connection's messages are processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionMode {
    /// Clean session, concurrent dispatch, no order.
    Shared,
    /// Persistent session; each key in arrival order (keys concurrently), PUBACKs in arrival order.
    Ordered,
}

/// One MQTT connection the plan asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConnSpec {
    pub route: String,
    pub client_id: String,
    /// The filter as subscribed, `$share/<group>/...` included for shared routes.
    pub subscribe_filter: String,
    pub qos: u8,
    pub mode: SubscriptionMode,
    /// Filters the persistent session may still hold from a previous version of this
    /// subscription (ordered routes whose filter changed); unsubscribed on first connect.
    pub unsubscribe_first: Vec<String>,
    /// JSON pointer to the message id in the payload (the route's `message_id_field`).
    pub message_id_field: Option<String>,
}

impl ConnSpec {
    /// True when both ask for the same connection and subscription, and read message ids the
    /// same way (a connection takes its settings when it starts, so a changed
    /// `message_id_field` restarts it; a persistent session keeps its messages meanwhile).
    fn same_subscription(&self, other: &ConnSpec) -> bool {
        self.route == other.route
            && self.client_id == other.client_id
            && self.subscribe_filter == other.subscribe_filter
            && self.qos == other.qos
            && self.mode == other.mode
            && self.message_id_field == other.message_id_field
    }
}

/// A plan entry the ingress refused, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PlanIssue {
    pub route: String,
    pub reason: String,
}

impl std::fmt::Display for PlanIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "route {:?}: {}", self.route, self.reason)
    }
}

/// Names used to build client ids and shared filters.
#[derive(Debug, Clone)]
pub(crate) struct Naming<'a> {
    pub node_id: &'a str,
    pub client_id_prefix: &'a str,
    pub group_name: &'a str,
}

/// The connections `plan` asks for, keyed by client id, and the entries refused.
pub(crate) fn desired_connections(
    plan: &IngressPlan,
    naming: &Naming<'_>,
) -> (BTreeMap<String, ConnSpec>, Vec<PlanIssue>) {
    let mut conns = BTreeMap::new();
    let mut issues = Vec::new();
    let mut routes_seen = BTreeSet::new();
    let mut refuse = |route: &str, reason: String| {
        issues.push(PlanIssue {
            route: route.to_string(),
            reason,
        })
    };

    for sub in &plan.ordered_held {
        if let Err(reason) = check_common(&sub.route, &sub.filter, sub.qos) {
            refuse(&sub.route, reason);
            continue;
        }
        if sub.client_id.is_empty() {
            refuse(&sub.route, "ordered route without a client id".into());
            continue;
        }
        if !routes_seen.insert(sub.route.clone()) {
            refuse(&sub.route, "route listed twice in the plan".into());
            continue;
        }
        if conns.contains_key(&sub.client_id) {
            refuse(
                &sub.route,
                format!("client id {:?} already used by another route", sub.client_id),
            );
            continue;
        }
        conns.insert(
            sub.client_id.clone(),
            ConnSpec {
                route: sub.route.clone(),
                client_id: sub.client_id.clone(),
                subscribe_filter: sub.filter.clone(),
                qos: sub.qos,
                mode: SubscriptionMode::Ordered,
                unsubscribe_first: Vec::new(),
                message_id_field: sub.message_id_field.clone(),
            },
        );
    }

    for sub in &plan.shared {
        if let Err(reason) = check_common(&sub.route, &sub.filter, sub.qos) {
            refuse(&sub.route, reason);
            continue;
        }
        if sub.worker_count > MAX_WORKER_COUNT {
            refuse(
                &sub.route,
                format!(
                    "worker_count {} exceeds the limit of {MAX_WORKER_COUNT}",
                    sub.worker_count
                ),
            );
            continue;
        }
        if !routes_seen.insert(sub.route.clone()) {
            refuse(&sub.route, "route listed twice in the plan".into());
            continue;
        }
        let filter = format!("$share/{}/{}", naming.group_name, sub.filter);
        let ids: Vec<String> = (0..sub.worker_count)
            .map(|i| format!("{}-{}-{}-{i}", naming.client_id_prefix, naming.node_id, sub.route))
            .collect();
        if let Some(taken) = ids.iter().find(|id| conns.contains_key(*id)) {
            refuse(
                &sub.route,
                format!("client id {taken:?} already used by another route"),
            );
            continue;
        }
        for client_id in ids {
            conns.insert(
                client_id.clone(),
                ConnSpec {
                    route: sub.route.clone(),
                    client_id,
                    subscribe_filter: filter.clone(),
                    qos: sub.qos,
                    mode: SubscriptionMode::Shared,
                    unsubscribe_first: Vec::new(),
                    message_id_field: sub.message_id_field.clone(),
                },
            );
        }
    }
    (conns, issues)
}

fn check_common(route: &str, filter: &str, qos: u8) -> Result<(), String> {
    if route.is_empty() {
        return Err("empty route name".into());
    }
    if qos > 2 {
        return Err(format!("QoS {qos} is not 0, 1 or 2"));
    }
    validate_filter(filter)
}

/// Checks an MQTT topic filter (MQTT 3.1.1 section 4.7). `$share/` prefixes are refused: the
/// ingress adds it for shared routes, and an ordered route must never be shared.
pub(crate) fn validate_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("empty topic filter".into());
    }
    if filter.len() > 65_535 {
        return Err("topic filter longer than 65535 bytes".into());
    }
    if filter.contains('\0') {
        return Err("topic filter contains NUL".into());
    }
    if filter.starts_with("$share/") {
        return Err(format!("topic filter {filter:?} must not start with $share/"));
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        let last = i + 1 == levels.len();
        if level.contains('#') && (*level != "#" || !last) {
            return Err(format!(
                "topic filter {filter:?}: '#' must be a whole level and the last one"
            ));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!("topic filter {filter:?}: '+' must be a whole level"));
        }
    }
    Ok(())
}

/// What to do to go from the running connections to the desired ones.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct PlanChange {
    /// Client ids to stop (before any start: a restarted client id must not overlap itself).
    pub stop: Vec<String>,
    /// Connections to start.
    pub start: Vec<ConnSpec>,
}

/// Diffs by client id (and so by route): unchanged connections are kept as they are.
pub(crate) fn diff(running: &BTreeMap<String, ConnSpec>, desired: &BTreeMap<String, ConnSpec>) -> PlanChange {
    let mut change = PlanChange::default();
    for (id, spec) in running {
        match desired.get(id) {
            Some(wanted) if wanted.same_subscription(spec) => {}
            _ => change.stop.push(id.clone()),
        }
    }
    for (id, wanted) in desired {
        match running.get(id) {
            Some(spec) if spec.same_subscription(wanted) => {}
            Some(old) => {
                let mut wanted = wanted.clone();
                if wanted.mode == SubscriptionMode::Ordered
                    && old.mode == SubscriptionMode::Ordered
                    && old.subscribe_filter != wanted.subscribe_filter
                {
                    // Same persistent session, new filter: drop the old subscription from it.
                    wanted.unsubscribe_first.push(old.subscribe_filter.clone());
                }
                change.start.push(wanted);
            }
            None => change.start.push(wanted.clone()),
        }
    }
    change
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naming() -> Naming<'static> {
        Naming {
            node_id: "n1",
            client_id_prefix: "rmq",
            group_name: "g",
        }
    }

    fn shared(route: &str, filter: &str, workers: u32) -> SharedSubscription {
        SharedSubscription {
            route: route.into(),
            filter: filter.into(),
            qos: 1,
            worker_count: workers,
            message_id_field: None,
        }
    }

    fn ordered(route: &str, filter: &str, client_id: &str) -> OrderedSubscription {
        OrderedSubscription {
            route: route.into(),
            filter: filter.into(),
            qos: 1,
            client_id: client_id.into(),
            message_id_field: None,
        }
    }

    #[test]
    fn shared_routes_get_worker_count_connections_on_the_share_filter() {
        let plan = IngressPlan {
            shared: vec![shared("temps", "sensors/+/temp", 3)],
            ordered_held: vec![],
        };
        let (conns, issues) = desired_connections(&plan, &naming());
        assert!(issues.is_empty());
        let ids: Vec<&str> = conns.keys().map(String::as_str).collect();
        assert_eq!(ids, ["rmq-n1-temps-0", "rmq-n1-temps-1", "rmq-n1-temps-2"]);
        assert!(conns
            .values()
            .all(|c| c.subscribe_filter == "$share/g/sensors/+/temp"));
        assert!(conns.values().all(|c| c.mode == SubscriptionMode::Shared));
    }

    #[test]
    fn ordered_routes_use_the_plan_client_id_and_the_plain_filter() {
        let plan = IngressPlan {
            shared: vec![],
            ordered_held: vec![ordered("orders", "orders/#", "routemq-orders")],
        };
        let (conns, issues) = desired_connections(&plan, &naming());
        assert!(issues.is_empty());
        let conn = &conns["routemq-orders"];
        assert_eq!(conn.subscribe_filter, "orders/#");
        assert_eq!(conn.mode, SubscriptionMode::Ordered);
    }

    #[test]
    fn bad_entries_are_refused_and_the_rest_kept() {
        let plan = IngressPlan {
            shared: vec![
                shared("a", "a/#/b", 1),
                shared("b", "$share/x/b", 1),
                shared("ok", "ok/+", 1),
                shared("many", "m", MAX_WORKER_COUNT + 1),
            ],
            ordered_held: vec![
                ordered("c", "c", ""),
                ordered("d", "d", "dup"),
                ordered("e", "e", "dup"),
                OrderedSubscription {
                    qos: 3,
                    ..ordered("f", "f", "f")
                },
                ordered("ok", "x", "x"),
            ],
        };
        let (conns, issues) = desired_connections(&plan, &naming());
        let refused: Vec<&str> = issues.iter().map(|i| i.route.as_str()).collect();
        assert_eq!(refused, ["c", "e", "f", "a", "b", "ok", "many"]);
        let ids: Vec<&str> = conns.keys().map(String::as_str).collect();
        assert_eq!(ids, ["dup", "x"]);
    }

    #[test]
    fn filters_and_topic_names_are_checked() {
        for ok in ["a", "a/b", "+", "#", "a/+/c", "a/#", "+/+", "/", "a//b"] {
            assert!(validate_filter(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a#", "a/#/b", "a+/b", "a/b+", "$share/g/a", "a\0b"] {
            assert!(validate_filter(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn diff_keeps_unchanged_connections_and_restarts_changed_ones() {
        let naming = naming();
        let before = IngressPlan {
            shared: vec![shared("s", "s/#", 3), shared("gone", "g", 1)],
            ordered_held: vec![ordered("o", "o/#", "oid"), ordered("same", "x", "xid")],
        };
        let after = IngressPlan {
            shared: vec![shared("s", "s/#", 2), shared("new", "n", 1)],
            ordered_held: vec![ordered("o", "o/+/v", "oid"), ordered("same", "x", "xid")],
        };
        let (running, _) = desired_connections(&before, &naming);
        let (desired, _) = desired_connections(&after, &naming);
        let change = diff(&running, &desired);
        assert_eq!(change.stop, ["oid", "rmq-n1-gone-0", "rmq-n1-s-2"]);
        let started: Vec<(&str, &[String])> = change
            .start
            .iter()
            .map(|c| (c.client_id.as_str(), c.unsubscribe_first.as_slice()))
            .collect();
        assert_eq!(
            started,
            [("oid", &["o/#".to_string()][..]), ("rmq-n1-new-0", &[][..])]
        );
        assert_eq!(diff(&desired, &desired), PlanChange::default());
    }

    #[test]
    fn a_changed_message_id_field_restarts_the_route_connections() {
        let naming = naming();
        let plan = |field: Option<&str>| IngressPlan {
            shared: vec![SharedSubscription {
                message_id_field: field.map(Into::into),
                ..shared("s", "s/#", 1)
            }],
            ordered_held: vec![OrderedSubscription {
                message_id_field: field.map(Into::into),
                ..ordered("o", "o/#", "oid")
            }],
        };
        let (running, _) = desired_connections(&plan(None), &naming);
        let (desired, _) = desired_connections(&plan(Some("/id")), &naming);
        assert!(desired
            .values()
            .all(|c| c.message_id_field.as_deref() == Some("/id")));
        let change = diff(&running, &desired);
        assert_eq!(change.stop, ["oid", "rmq-n1-s-0"]);
        let started: Vec<(&str, &[String])> = change
            .start
            .iter()
            .map(|c| (c.client_id.as_str(), c.unsubscribe_first.as_slice()))
            .collect();
        // Same filter: nothing to unsubscribe from the persistent session.
        assert_eq!(started, [("oid", &[][..]), ("rmq-n1-s-0", &[][..])]);
        assert_eq!(diff(&desired, &desired), PlanChange::default());
    }

    #[test]
    fn worker_count_growth_only_adds_connections() {
        let naming = naming();
        let (running, _) = desired_connections(
            &IngressPlan {
                shared: vec![shared("s", "s", 1)],
                ..Default::default()
            },
            &naming,
        );
        let (desired, _) = desired_connections(
            &IngressPlan {
                shared: vec![shared("s", "s", 3)],
                ..Default::default()
            },
            &naming,
        );
        let change = diff(&running, &desired);
        assert!(change.stop.is_empty());
        let ids: Vec<&str> = change.start.iter().map(|c| c.client_id.as_str()).collect();
        assert_eq!(ids, ["rmq-n1-s-1", "rmq-n1-s-2"]);
    }
}
