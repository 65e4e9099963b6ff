//! The node's background tasks around ownership and the MQTT ingress, each spawned into
//! [`Tasks`] under its name:
//! - "ownership observer": feeds every applied config to the fence;
//! - "lease renewal": renews this node's lease through the leader, and says when the leader
//!   answered that this node is no longer a member;
//! - "handoff fetch": fetches the partitions this node gained from their holders;
//! - "stats sampler": closes the live statistics' samples and hot-key windows
//!   ([`crate::stats`]);
//! - "ingress plan publisher": tells the MQTT ingress what to subscribe to as the routes, the
//!   ring and the lease change ([`ingress_plan_now`], pure).
//!
//! Each ends when the node's token is cancelled (or its source of changes is gone); the
//! deciding is done elsewhere (fencing, handoff, the ingress plan), these only move events.

use std::sync::Arc;

use tokio::sync::watch;

use super::tasks::Tasks;
use crate::config::{ConfigService, ConfigView};
use crate::dispatch::Dispatcher;
use crate::fencing::{Fence, LeaseSettings};
use crate::ingress::{ingress_plan, spawn_ingress, IngressHandle, IngressPlan, IngressSettings};
use crate::journal::Journal;
use crate::membership::Membership;

/// Observes every applied config: the fence moves its partitions' phases.
pub(super) fn spawn_ownership_observer(tasks: &mut Tasks, fence: Arc<Fence>, config: Arc<ConfigService>) {
    let cancel = tasks.cancel_token();
    tasks.spawn_infallible("ownership observer", async move {
        let mut applied = config.subscribe();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                changed = applied.changed() => if changed.is_err() { return },
            }
            fence.observe(&config.local_view());
        }
    });
}

/// Renews the lease until the node stops; `removed` becomes true while the leader says this
/// node is not a member (see [`Fence::renew_loop`]).
pub(super) fn spawn_lease_renewal(
    tasks: &mut Tasks,
    fence: Arc<Fence>,
    config: Arc<ConfigService>,
    membership: Arc<Membership>,
    lease: LeaseSettings,
    removed: watch::Sender<bool>,
) {
    let cancel = tasks.cancel_token();
    tasks.spawn_infallible(
        "lease renewal",
        fence.renew_loop(config, membership, lease, removed, cancel),
    );
}

/// Closes the live statistics' intervals and hot-key windows (see [`crate::stats::run_sampler`]).
pub(super) fn spawn_stats_sampler(tasks: &mut Tasks, stats: crate::stats::NodeStats) {
    let cancel = tasks.cancel_token();
    tasks.spawn_infallible("stats sampler", crate::stats::run_sampler(stats, cancel));
}

/// Fetches gained partitions from their holders (see [`crate::handoff::fetch_loop`]).
pub(super) fn spawn_handoff_fetch(
    tasks: &mut Tasks,
    fence: Arc<Fence>,
    config: Arc<ConfigService>,
    journal: Journal,
    node_id: String,
) {
    let cancel = tasks.cancel_token();
    tasks.spawn_infallible(
        "handoff fetch",
        crate::handoff::fetch_loop(fence, config, journal, node_id, cancel),
    );
}

/// Starts the MQTT ingress and the task that publishes its plan: on every applied config and
/// every change of the lease's validity, the plan is computed again and sent when it changed.
pub(super) fn spawn_ingress_with_plan(
    tasks: &mut Tasks,
    settings: IngressSettings,
    dispatcher: Arc<Dispatcher>,
    config: Arc<ConfigService>,
    fence: &Fence,
    node_id: String,
) -> IngressHandle {
    let (plan_tx, plan_rx) = watch::channel(Arc::new(IngressPlan::default()));
    let ingress = spawn_ingress(settings, dispatcher, plan_rx);
    let cancel = tasks.cancel_token();
    let mut lease_valid = fence.lease_valid();
    tasks.spawn_infallible("ingress plan publisher", async move {
        let mut applied = config.subscribe();
        loop {
            let plan = ingress_plan_now(&config.local_view(), &node_id, *lease_valid.borrow_and_update());
            if **plan_tx.borrow() != plan {
                tracing::info!(
                    shared = plan.shared.len(),
                    ordered_held = plan.ordered_held.len(),
                    "ingress plan changed"
                );
                plan_tx.send_replace(Arc::new(plan));
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                changed = applied.changed() => if changed.is_err() { return },
                changed = lease_valid.changed() => if changed.is_err() { return },
            }
        }
    });
    ingress
}

/// What this node's ingress subscribes to now: the plan of the view, without its ordered
/// routes when the lease is not valid (cut off from the majority, the node lets go of them so
/// that the majority's holder can take over the broker session).
fn ingress_plan_now(view: &ConfigView, node_id: &str, lease_valid: bool) -> IngressPlan {
    let mut plan = ingress_plan(view, node_id);
    if !lease_valid {
        plan.ordered_held.clear();
    }
    plan
}
