//! The status loop: once the node is a member, every 250 ms it gossips this node's Raft view
//! (leader, committed index), computes readiness ([`readiness`], pure) for `/ready` and the
//! gRPC health service, gossips lifecycle and load, records the cluster metrics, and does the
//! leader's periodic duties through the coordinator (fail dead members over; every 2 s, keep
//! Raft voters in line with the ring). Every 5 s it samples the data directory (free space, the
//! journal's size) for the metrics.
//!
//! Readiness says whether this node may take traffic: a ring member in its applied config,
//! with a valid lease, a known Raft leader, its config caught up with what the leader
//! committed, and (with a broker) an MQTT ingress that can reach it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::ConfigService;
use crate::coordinator::Coordinator;
use crate::fencing::Fence;
use crate::http::Readiness;
use crate::ingress::{IngressReadiness, IngressStatusSource};
use crate::lease::LeaseStatus;
use crate::membership::{Lifecycle, Membership, Peer};
use crate::metrics::ClusterGauges;
use crate::processor::Processor;

/// How often the status loop runs.
const TICK: Duration = Duration::from_millis(250);
/// How often the leader reconciles Raft membership with the ring.
const RECONCILE_EVERY: Duration = Duration::from_secs(2);
/// How often the data directory is sampled (free space, journal size).
const DISK_EVERY: Duration = Duration::from_secs(5);

/// What readiness is decided from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ReadinessInputs {
    /// This node is a ring member in its applied config.
    pub member: bool,
    /// This node's lease.
    pub lease: LeaseStatus,
    /// A Raft leader is known.
    pub leader_known: bool,
    /// The applied config index.
    pub applied_index: u64,
    /// The committed index the leader gossips (0 if unknown).
    pub leader_committed_index: u64,
    /// The MQTT ingress (absent without a broker).
    pub mqtt: Option<IngressReadiness>,
}

/// Whether the node is ready, and why not: the first of not a member, lease not valid, no
/// leader known, config catching up, MQTT ingress problem.
pub(super) fn readiness(inputs: ReadinessInputs) -> Readiness {
    let ReadinessInputs {
        member,
        lease,
        leader_known,
        applied_index: applied,
        leader_committed_index: leader_committed,
        mqtt,
    } = inputs;
    let mqtt_problem = mqtt.as_ref().and_then(|m| m.problem.clone());
    let (ready, reason) = if !member {
        (false, "not a ring member in the applied config".to_string())
    } else if let LeaseStatus::Invalid(why) = lease {
        (false, why)
    } else if !leader_known {
        (false, "no Raft leader known".to_string())
    } else if applied < leader_committed {
        (
            false,
            format!("config catching up: applied {applied} of {leader_committed}"),
        )
    } else if let Some(problem) = mqtt_problem {
        (false, problem)
    } else {
        (true, "ready".to_string())
    };
    Readiness {
        ready,
        reason,
        member,
        leader_known,
        applied_index: applied,
        leader_committed_index: leader_committed,
        mqtt,
    }
}

/// Periodic work once the node is a member: gossip the Raft view, compute readiness, publish
/// metrics, and on the leader keep Raft membership in line with the ring.
pub(super) struct StatusLoop {
    pub node_id: String,
    pub config: Arc<ConfigService>,
    pub membership: Arc<Membership>,
    pub coordinator: Arc<Coordinator>,
    pub fence: Arc<Fence>,
    pub processor: Arc<Processor>,
    pub ingress: Option<IngressStatusSource>,
    pub readiness: watch::Sender<Readiness>,
    pub health: tonic_health::server::HealthReporter,
    /// The data directory (its `journal` subdirectory holds the journal).
    pub data_dir: PathBuf,
}

/// What the loop remembers between ticks.
struct Memory {
    last_reconcile: Instant,
    was_ready: Option<bool>,
    last_disk_sample: Option<Instant>,
    /// The last failed sample's error, logged once until it changes.
    disk_error: Option<String>,
}

impl StatusLoop {
    /// Runs until `cancel`.
    pub(super) async fn run(self, cancel: CancellationToken) {
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut memory = Memory {
            last_reconcile: Instant::now(),
            was_ready: None,
            last_disk_sample: None,
            disk_error: None,
        };
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = ticker.tick() => {}
            }
            self.tick(&mut memory).await;
        }
    }

    async fn tick(&self, memory: &mut Memory) {
        let metrics = self.config.metrics();
        let view = self.config.local_view();
        let committed = self.config.committed_index();
        self.membership
            .set_raft_view(metrics.current_leader, committed)
            .await;
        let peers = self.membership.peers().await;
        let lease = self.fence.lease_status();
        let lease_valid = lease == LeaseStatus::Valid;
        let readiness = readiness(ReadinessInputs {
            member: view
                .state
                .config
                .member_by_raft_id(self.config.raft_id())
                .is_some(),
            lease,
            leader_known: metrics.current_leader.is_some(),
            applied_index: view.applied_index(),
            leader_committed_index: leader_committed(&peers, metrics.current_leader),
            mqtt: self.ingress.as_ref().map(|i| i.snapshot().readiness()),
        });
        let (ready, member, applied) = (readiness.ready, readiness.member, readiness.applied_index);
        if memory.was_ready != Some(ready) {
            tracing::info!(ready, reason = %readiness.reason, "readiness changed");
            self.set_health(ready).await;
            memory.was_ready = Some(ready);
        }
        self.readiness.send_replace(readiness);
        self.membership
            .set_lifecycle(if member {
                Lifecycle::Active
            } else {
                Lifecycle::Joining
            })
            .await;
        let owned = view
            .ring
            .partitions_per_node()
            .get(self.node_id.as_str())
            .copied()
            .unwrap_or(0);
        self.membership.set_load(u64::from(owned)).await;
        let is_leader = self.config.is_leader();
        crate::metrics::record_cluster_gauges(&ClusterGauges {
            epoch: view.state.config.epoch,
            applied_index: applied,
            committed_index: committed,
            term: metrics.current_term,
            is_leader,
            members: view.state.config.members.len(),
            partitions_owned: owned,
            live_nodes: peers.iter().filter(|p| p.alive).count(),
            dead_nodes: peers.iter().filter(|p| !p.alive).count(),
            ready,
            queue_depth: self.processor.queue_depth(),
            phases: self.fence.phase_counts(),
            lease_valid,
        });
        if memory
            .last_disk_sample
            .is_none_or(|at| at.elapsed() >= DISK_EVERY)
        {
            memory.last_disk_sample = Some(Instant::now());
            self.sample_disk(memory).await;
        }
        self.coordinator.fail_over_dead().await;
        if is_leader && memory.last_reconcile.elapsed() > RECONCILE_EVERY {
            memory.last_reconcile = Instant::now();
            if let Err(e) = self.coordinator.reconcile().await {
                tracing::warn!(error = %e, "could not reconcile raft membership");
            }
        }
    }

    /// Records the data directory's free space and the journal's size (off the async threads).
    async fn sample_disk(&self, memory: &mut Memory) {
        let data_dir = self.data_dir.clone();
        let sampled = tokio::task::spawn_blocking(move || {
            crate::metrics::sample_disk(&data_dir, &data_dir.join("journal"))
        })
        .await
        .unwrap_or_else(|e| Err(format!("disk sampling task: {e}")));
        match sampled {
            Ok(gauges) => {
                crate::metrics::record_disk_gauges(&gauges);
                memory.disk_error = None;
            }
            Err(e) => {
                if memory.disk_error.as_deref() != Some(e.as_str()) {
                    tracing::warn!(error = %e, "cannot sample the data directory for the disk metrics");
                }
                memory.disk_error = Some(e);
            }
        }
    }

    /// Serving or not, for the whole server and for `routemq.v1.Cluster`.
    async fn set_health(&self, ready: bool) {
        let status = if ready {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        self.health.set_service_status("", status).await;
        self.health.set_service_status("routemq.v1.Cluster", status).await;
    }
}

/// The committed index the leader gossips, 0 when unknown.
fn leader_committed(peers: &[Peer], leader: Option<u64>) -> u64 {
    leader
        .and_then(|leader| peers.iter().find(|p| p.raft_id == Some(leader)))
        .and_then(|p| p.committed)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready_inputs() -> ReadinessInputs {
        ReadinessInputs {
            member: true,
            lease: LeaseStatus::Valid,
            leader_known: true,
            applied_index: 7,
            leader_committed_index: 7,
            mqtt: None,
        }
    }

    fn mqtt(problem: Option<&str>) -> Option<IngressReadiness> {
        Some(IngressReadiness {
            connections: 2,
            connected: if problem.is_some() { 0 } else { 2 },
            problem: problem.map(str::to_string),
            last_error: None,
        })
    }

    fn reason(inputs: ReadinessInputs) -> (bool, String) {
        let r = readiness(inputs);
        (r.ready, r.reason)
    }

    #[test]
    fn ready_when_every_condition_holds() {
        let r = readiness(ReadinessInputs {
            mqtt: mqtt(None),
            ..ready_inputs()
        });
        assert_eq!(
            r,
            Readiness {
                ready: true,
                reason: "ready".into(),
                member: true,
                leader_known: true,
                applied_index: 7,
                leader_committed_index: 7,
                mqtt: mqtt(None),
            }
        );
        assert_eq!(
            reason(ready_inputs()),
            (true, "ready".into()),
            "no broker: ready too"
        );
    }

    #[test]
    fn not_ready_when_not_a_member() {
        let r = readiness(ReadinessInputs {
            member: false,
            ..ready_inputs()
        });
        assert!(!r.ready);
        assert_eq!(r.reason, "not a ring member in the applied config");
        assert!(!r.member);
    }

    #[test]
    fn not_ready_without_a_valid_lease_gives_the_lease_reason() {
        let inputs = ReadinessInputs {
            lease: LeaseStatus::Invalid("ownership lease expired 3 s ago".into()),
            ..ready_inputs()
        };
        assert_eq!(reason(inputs), (false, "ownership lease expired 3 s ago".into()));
    }

    #[test]
    fn not_ready_without_a_known_leader() {
        let inputs = ReadinessInputs {
            leader_known: false,
            ..ready_inputs()
        };
        assert_eq!(reason(inputs), (false, "no Raft leader known".into()));
    }

    #[test]
    fn not_ready_while_the_config_catches_up() {
        let inputs = ReadinessInputs {
            applied_index: 5,
            leader_committed_index: 9,
            ..ready_inputs()
        };
        assert_eq!(
            reason(inputs),
            (false, "config catching up: applied 5 of 9".into())
        );
        let ahead = ReadinessInputs {
            applied_index: 10,
            leader_committed_index: 9,
            ..ready_inputs()
        };
        assert!(
            readiness(ahead).ready,
            "applied past the gossiped index (gossip lags)"
        );
    }

    #[test]
    fn not_ready_when_the_mqtt_ingress_has_a_problem() {
        let inputs = ReadinessInputs {
            mqtt: mqtt(Some("MQTT broker unreachable (2 connections down): refused")),
            ..ready_inputs()
        };
        let r = readiness(inputs);
        assert!(!r.ready);
        assert_eq!(r.reason, "MQTT broker unreachable (2 connections down): refused");
        assert_eq!(
            r.mqtt,
            mqtt(Some("MQTT broker unreachable (2 connections down): refused"))
        );
    }

    #[test]
    fn the_first_failing_condition_is_the_reason() {
        let everything_wrong = ReadinessInputs {
            member: false,
            lease: LeaseStatus::Invalid("no lease".into()),
            leader_known: false,
            applied_index: 1,
            leader_committed_index: 2,
            mqtt: mqtt(Some("broker down")),
        };
        assert_eq!(
            reason(everything_wrong.clone()).1,
            "not a ring member in the applied config"
        );
        let member = ReadinessInputs {
            member: true,
            ..everything_wrong
        };
        assert_eq!(reason(member.clone()).1, "no lease");
        let leased = ReadinessInputs {
            lease: LeaseStatus::Valid,
            ..member
        };
        assert_eq!(reason(leased.clone()).1, "no Raft leader known");
        let led = ReadinessInputs {
            leader_known: true,
            ..leased
        };
        assert_eq!(reason(led.clone()).1, "config catching up: applied 1 of 2");
        let caught_up = ReadinessInputs {
            applied_index: 2,
            ..led
        };
        assert_eq!(reason(caught_up).1, "broker down");
    }

    #[test]
    fn leader_committed_index_comes_from_the_leaders_gossip() {
        let peer = |raft_id: u64, committed: Option<u64>| Peer {
            node_id: format!("n{raft_id}"),
            generation: 1,
            gossip_addr: "127.0.0.1:1".parse().expect("address"),
            alive: true,
            grpc_addr: None,
            http_addr: None,
            state: None,
            raft_id: Some(raft_id),
            cluster_id: None,
            raft_leader: None,
            committed,
        };
        let peers = [peer(1, Some(10)), peer(2, Some(12)), peer(3, None)];
        assert_eq!(leader_committed(&peers, Some(2)), 12);
        assert_eq!(
            leader_committed(&peers, Some(3)),
            0,
            "the leader gossips none yet"
        );
        assert_eq!(
            leader_committed(&peers, Some(9)),
            0,
            "the leader is not in gossip"
        );
        assert_eq!(leader_committed(&peers, None), 0);
    }
}
