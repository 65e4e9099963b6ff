//! Who holds which ordered route's MQTT ingress, and what a node's ingress subscribes to
//! ([`ingress_plan`]). Pure functions of the applied config: no I/O.
//!
//! Holder of an ordered route: the ring owner of the partition of the key
//! `$ingress/<route>` ([`ingress_partition`]). Every node that applied the same epoch computes
//! the same holder, and a holder change is an ownership change (the epoch moves). The hold
//! follows that partition's handoff: the new holder connects only once the partition is active
//! there (the old holder's ingress acknowledged what it processed and disconnected before the
//! partition was handed over, see [`crate::ownership::Slot::ingress_hold`]), and each message
//! is dispatched only while the hold is valid (active, lease valid). The broker still fences a
//! stale holder by session takeover, because every holder uses the route's fixed client id.

use super::plan::{IngressPlan, OrderedSubscription, SharedSubscription};
use crate::config::ConfigView;
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::state::{ClusterConfig, Command, Member, MemberState};
    use crate::config::store::AppliedState;
    use crate::ring::RingParams;
    use crate::routes::{HandlerSpec, RouteSpec};

    fn member(id: &str, raft_id: u64) -> Member {
        Member {
            node_id: id.into(),
            raft_id,
            grpc_addr: format!("127.0.0.1:{}", 7000 + raft_id),
            gossip_addr: format!("127.0.0.1:{}", 7100 + raft_id),
            http_addr: format!("127.0.0.1:{}", 7200 + raft_id),
            weight: 1,
            state: MemberState::Active,
        }
    }

    fn route(name: &str, mode: RouteMode) -> RouteSpec {
        RouteSpec {
            name: name.into(),
            pattern: format!("{name}/{{device}}"),
            group: String::new(),
            key_param: None,
            qos: 1,
            mode,
            handler: HandlerSpec::Log,
            priority: 0,
            message_id_field: None,
        }
    }

    /// Three members, a shared route and ten ordered ones.
    fn view() -> ConfigView {
        let mut config = ClusterConfig::default();
        let mut commands = vec![
            Command::Bootstrap {
                cluster_id: "3f2a-9c1b-77de".into(),
                ring: RingParams::default(),
                max_voters: 3,
                first: member("n1", 1),
            },
            Command::AddMember(member("n2", 2)),
            Command::AddMember(member("n3", 3)),
            Command::PutRoute {
                spec: route("shared", RouteMode::Shared { worker_count: 2 }),
                expected_version: None,
            },
        ];
        commands.extend((0..10).map(|i| Command::PutRoute {
            spec: route(&format!("ordered{i}"), RouteMode::Ordered),
            expected_version: None,
        }));
        for (index, command) in commands.iter().enumerate() {
            config.apply(index as u64 + 1, command).expect("valid command");
        }
        ConfigView {
            ring: Arc::new(config.ring().expect("ring")),
            routes: Arc::new(config.route_table().expect("routes")),
            state: Arc::new(AppliedState {
                config,
                ..Default::default()
            }),
        }
    }

    #[test]
    fn ordered_client_id_is_fixed_per_cluster_and_route() {
        assert_eq!(
            ordered_client_id("3f2a-9c1b-77de", "orders"),
            "routemq-3f2a9c1b-orders"
        );
        assert_eq!(ordered_client_id("", "orders"), "routemq--orders");
    }

    #[test]
    fn every_node_subscribes_to_shared_routes_and_exactly_one_holds_each_ordered_route() {
        let view = view();
        let plans: Vec<IngressPlan> = ["n1", "n2", "n3"]
            .iter()
            .map(|n| ingress_plan(&view, n))
            .collect();
        for plan in &plans {
            assert_eq!(plan.shared.len(), 1);
            assert_eq!(plan.shared[0].route, "shared");
            assert_eq!(plan.shared[0].worker_count, 2);
        }
        for i in 0..10 {
            let name = format!("ordered{i}");
            let holders: Vec<&str> = ["n1", "n2", "n3"]
                .into_iter()
                .zip(&plans)
                .filter(|(_, plan)| plan.ordered_held.iter().any(|o| o.route == name))
                .map(|(node, _)| node)
                .collect();
            assert_eq!(holders.len(), 1, "{name}: {holders:?}");
            assert_eq!(ordered_holder(&view, &name), Some(holders[0]));
            assert_eq!(
                view.ring.owner_of_partition(ingress_partition(&view, &name)),
                Some(holders[0])
            );
        }
        let held = plans
            .iter()
            .flat_map(|p| &p.ordered_held)
            .next()
            .expect("some route held");
        assert_eq!(held.client_id, ordered_client_id("3f2a-9c1b-77de", &held.route));
        assert!(
            plans.iter().all(|p| p.ordered_held.len() < 10),
            "spread over the nodes"
        );
    }
}
