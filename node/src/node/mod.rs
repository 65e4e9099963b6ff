//! A RouteMQ node: starts its parts in order, runs them until shutdown, and stops every one.
//!
//! Start-up order matters and is checked step by step, each failure a clear [`NodeError`]:
//! 1. lock the data directory and read its identity (refusing another node's directory);
//! 2. bind the gRPC and HTTP listeners (an occupied port is an error, not a retry);
//! 3. open RocksDB and start the Raft member of the config group;
//! 4. start gossip (binds the UDP port) announcing this node;
//! 5. open the journal and build the message path (fence, processor, forwarder, dispatcher);
//!    start the background tasks ([`background`]) and serve gRPC and HTTP ([`server`]);
//! 6. bootstrap a new cluster, or join one through the seeds, or simply resume as the member
//!    the data directory says this node is ([`enter`]);
//! 7. run the status loop ([`status`]: gossip the Raft view, readiness, metrics, leader
//!    duties) until the shutdown future completes or the node is asked to leave; a node the
//!    leader removed while cut off joins again ([`leave::Rejoin`]);
//! 8. leave gracefully ([`leave::Leave`]: hand every partition over, bounded by the leave
//!    timeout), then stop every task ([`tasks`]: 5 s grace, then abort) and every part (10 s
//!    together).
//!
//! Promise: [`run`] returns only when every task it started has ended (or was aborted) and
//! every part was stopped or given up on after its bound.

mod background;
mod enter;
mod error;
mod leave;
mod server;
mod status;
mod tasks;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{store, ConfigService, RaftTiming};
use crate::coordinator::Coordinator;
use crate::datadir::{DataDir, Identity};
use crate::dispatch::{DispatchLimits, Dispatcher};
use crate::fencing::Fence;
use crate::forward::Forwarder;
use crate::handler::{HandlerContext, HandlerRegistry, NoBroker, Publisher};
use crate::http::Readiness;
use crate::ingress::IngressHandle;
use crate::journal::Journal;
use crate::membership::{GossipSettings, Lifecycle, Membership, SelfInfo};
use crate::processor::Processor;
use crate::publisher::MqttPublisher;
use crate::settings::Settings;
use crate::stats::NodeStats;
use enter::{enter_cluster, me_of};
use leave::{Leave, Rejoin};
use server::GrpcDeps;
use status::StatusLoop;
use tasks::Tasks;

pub use error::NodeError;

/// How long running tasks get to finish after shutdown was requested.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long the node's parts (ingress, forwarder, processor, Raft, gossip) get to stop, one
/// after the other, after the tasks' grace period.
const STOP_PARTS_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs a node until `shutdown` completes. Returns when every task it started has ended.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> Result<(), NodeError> {
    run_with(settings, HandlerRegistry::new(), shutdown).await
}

/// Runs a node with custom handlers and middleware registered through the library API.
pub async fn run_with(
    settings: Settings,
    registry: HandlerRegistry,
    shutdown: impl Future<Output = ()>,
) -> Result<(), NodeError> {
    let mut data_dir = DataDir::open(&settings.data_dir, &settings.node_id)?;
    let identity = data_dir.identity().clone();
    tracing::info!(node = %settings.node_id, raft_id = identity.raft_id, data_dir = %settings.data_dir.display(),
        cluster_id = %identity.cluster_id, "starting routemq node");

    let grpc_listener = bind("gRPC", settings.grpc_listen).await?;
    let http_listener = bind("HTTP", settings.http_listen).await?;
    let (config, initialized) = open_config(&settings, &data_dir).await?;
    let membership = start_gossip(&settings, &identity, &config).await?;
    let node = Node::assemble(settings, &data_dir, config, membership, registry)?;

    let mut tasks = Tasks::new();
    let (readiness_tx, readiness_rx) = watch::channel(Readiness {
        reason: "starting".into(),
        ..Default::default()
    });
    // Ownership: observe every applied config, renew the lease, fetch gained partitions.
    let (removed_tx, removed_rx) = watch::channel(false);
    let (fence, config) = (&node.fence, &node.config);
    background::spawn_ownership_observer(&mut tasks, fence.clone(), config.clone());
    background::spawn_lease_renewal(
        &mut tasks,
        fence.clone(),
        config.clone(),
        node.membership.clone(),
        node.settings.lease,
        removed_tx,
    );
    background::spawn_handoff_fetch(
        &mut tasks,
        fence.clone(),
        config.clone(),
        node.journal.clone(),
        node.settings.node_id.clone(),
    );
    // MQTT: the ingress following the routes and ring (the publisher for `republish` is a part).
    let ingress = node.settings.mqtt.clone().map(|mqtt| {
        background::spawn_ingress_with_plan(
            &mut tasks,
            mqtt,
            node.dispatcher.clone(),
            config.clone(),
            fence,
            node.settings.node_id.clone(),
        )
    });
    // gRPC: must run before bootstrap/join, since the leader replicates to us over it.
    let (leave_tx, leave_rx) = watch::channel(false);
    let (router, health, console) = server::grpc_server(node.grpc_deps(leave_tx), &tasks)?;
    server::spawn_grpc_server(&mut tasks, router, grpc_listener);
    server::spawn_http_server(
        &mut tasks,
        http_listener,
        node.settings.node_id.clone(),
        readiness_rx,
        console,
    );
    background::spawn_stats_sampler(&mut tasks, node.stats.clone());

    let signals = Signals {
        leave: leave_rx,
        removed: removed_rx,
        readiness: readiness_tx,
        health,
        ingress: ingress.as_ref().map(|i| i.status_source()),
    };
    let outcome = node
        .enter_and_serve(&mut data_dir, initialized, &mut tasks, shutdown, signals)
        .await;

    tracing::info!("shutting down");
    node.membership.set_lifecycle(Lifecycle::Leaving).await;
    tasks.shutdown(SHUTDOWN_GRACE).await;
    node.stop(ingress).await;
    tracing::info!("stopped");
    outcome
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, NodeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::Bind { what, addr, source })
}

/// Opens the Raft database and starts this node's member of the config group. Also says
/// whether the directory held Raft state (a member before, or at least a joiner that got that
/// far).
async fn open_config(
    settings: &Settings,
    data_dir: &DataDir,
) -> Result<(Arc<ConfigService>, bool), NodeError> {
    let identity = data_dir.identity();
    let raft_dir = data_dir.raft_dir();
    let storage = |message: String| NodeError::Storage {
        path: raft_dir.display().to_string(),
        message,
    };
    let db = store::open_db(&raft_dir).map_err(|e| storage(e.to_string()))?;
    let initialized = store::has_raft_state(&db).map_err(|e| storage(e.to_string()))?;
    if !initialized && !identity.cluster_id.is_empty() {
        // Identity says we belonged to a cluster, but the Raft state is gone: refuse rather than
        // silently becoming a stranger with the same raft id.
        return Err(storage(format!(
            "the directory belongs to cluster {} but its Raft state is missing; wipe the whole data directory to join afresh",
            identity.cluster_id
        )));
    }
    let timing = RaftTiming {
        heartbeat: settings.raft_heartbeat,
        election_timeout: settings.raft_election_timeout,
    };
    let config = ConfigService::start(identity.raft_id, db, timing)
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?;
    Ok((Arc::new(config), initialized))
}

/// Starts gossip, announcing this node as active (a member in its applied config) or joining.
/// On failure the config service is shut down before the error is returned.
async fn start_gossip(
    settings: &Settings,
    identity: &Identity,
    config: &ConfigService,
) -> Result<Arc<Membership>, NodeError> {
    let generation = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let gossip_settings = GossipSettings {
        node_id: settings.node_id.clone(),
        generation,
        listen_addr: settings.gossip_listen,
        advertise_addr: settings.gossip_advertise,
        seeds: settings.seeds.clone(),
        cluster_name: settings.cluster_name.clone(),
        interval: settings.gossip_interval,
        phi_threshold: settings.phi_threshold,
    };
    let is_member = config
        .local_view()
        .state
        .config
        .member_by_raft_id(identity.raft_id)
        .is_some();
    let me = SelfInfo {
        grpc_addr: settings.grpc_advertise.to_string(),
        http_addr: settings.http_advertise.to_string(),
        raft_id: identity.raft_id,
        cluster_id: identity.cluster_id.clone(),
        lifecycle: if is_member {
            Lifecycle::Active
        } else {
            Lifecycle::Joining
        },
    };
    let membership = match Membership::spawn(&gossip_settings, &me).await {
        Ok(membership) => Arc::new(membership),
        Err(e) => {
            config.shutdown().await;
            return Err(e.into());
        }
    };
    tracing::info!(
        gossip = %settings.gossip_advertise,
        interval = ?gossip_settings.interval,
        phi_threshold = gossip_settings.phi_threshold,
        "gossiping"
    );
    Ok(membership)
}

/// What the running node listens to and reports through, beside its parts.
struct Signals {
    /// Set by `Cluster/Leave`.
    leave: watch::Receiver<bool>,
    /// Set while the leader says this node is not a member (see the lease renewal).
    removed: watch::Receiver<bool>,
    /// What `/ready` answers.
    readiness: watch::Sender<Readiness>,
    /// The gRPC health service's status.
    health: tonic_health::server::HealthReporter,
    /// The MQTT ingress's state, for readiness.
    ingress: Option<crate::ingress::IngressStatusSource>,
}

/// The node's long-lived parts, built once gossip runs; stopped in order by [`Node::stop`].
struct Node {
    settings: Settings,
    config: Arc<ConfigService>,
    membership: Arc<Membership>,
    coordinator: Arc<Coordinator>,
    journal: Journal,
    fence: Arc<Fence>,
    processor: Arc<Processor>,
    forwarder: Arc<Forwarder>,
    dispatcher: Arc<Dispatcher>,
    /// The broker connection of `republish` (with a broker only).
    mqtt_publisher: Option<Arc<MqttPublisher>>,
    /// Live statistics for the console and `Stats`.
    stats: NodeStats,
}

impl Node {
    /// Builds the coordinator and the message path: journal, fence, processor, forwarder,
    /// dispatcher.
    fn assemble(
        settings: Settings,
        data_dir: &DataDir,
        config: Arc<ConfigService>,
        membership: Arc<Membership>,
        registry: HandlerRegistry,
    ) -> Result<Self, NodeError> {
        let coordinator = Arc::new(Coordinator::new(
            config.clone(),
            membership.clone(),
            settings.failover_timeout,
        ));
        let journal_dir = data_dir.path().join("journal");
        let storage_error = |e: crate::journal::JournalError| NodeError::Storage {
            path: journal_dir.display().to_string(),
            message: e.to_string(),
        };
        let journal = Journal::open(&journal_dir).map_err(storage_error)?;
        let fence = Arc::new(Fence::new(
            &settings.node_id,
            &settings.lease,
            Arc::new(journal.clone()),
        ));
        // The copies on disk: owned ones are fetched again (the own copy counting as an answer),
        // the others offered to their owners. See ownership.rs.
        fence.restore(journal.held().map_err(storage_error)?);
        fence.observe(&config.local_view());

        let mqtt_publisher = settings
            .mqtt
            .as_ref()
            .map(|mqtt| Arc::new(MqttPublisher::start(mqtt, &settings.node_id)));
        let publisher: Arc<dyn Publisher> = match &mqtt_publisher {
            Some(p) => p.clone(),
            None => Arc::new(NoBroker),
        };
        let stats = NodeStats::new();
        let handler_ctx = HandlerContext {
            node_id: settings.node_id.clone(),
            publisher,
            journal: journal.clone(),
            stats: stats.clone(),
        };
        let processor = Arc::new(Processor::new(handler_ctx.clone(), fence.clone()));
        let forwarder = Arc::new(Forwarder::new(settings.node_id.clone()));
        let dispatcher = Arc::new(Dispatcher::new(
            settings.node_id.clone(),
            config.clone(),
            processor.clone(),
            forwarder.clone(),
            registry,
            handler_ctx,
            DispatchLimits {
                max_payload: settings.max_payload_bytes,
                ..DispatchLimits::default()
            },
            fence.clone(),
        ));
        Ok(Self {
            settings,
            config,
            membership,
            coordinator,
            journal,
            fence,
            processor,
            forwarder,
            dispatcher,
            mqtt_publisher,
            stats,
        })
    }

    /// What the gRPC services need.
    fn grpc_deps(&self, leave: watch::Sender<bool>) -> GrpcDeps {
        GrpcDeps {
            node_id: self.settings.node_id.clone(),
            config: self.config.clone(),
            membership: self.membership.clone(),
            coordinator: self.coordinator.clone(),
            dispatcher: self.dispatcher.clone(),
            fence: self.fence.clone(),
            journal: self.journal.clone(),
            processor: self.processor.clone(),
            stats: self.stats.clone(),
            leave,
        }
    }

    /// Enters the cluster, then serves as a member until `shutdown`, a leave request or a task
    /// ending; leaves gracefully when asked to stop. A task failing is the node's error.
    async fn enter_and_serve(
        &self,
        data_dir: &mut DataDir,
        initialized: bool,
        tasks: &mut Tasks,
        shutdown: impl Future<Output = ()>,
        signals: Signals,
    ) -> Result<(), NodeError> {
        let entering = async {
            enter_cluster(
                &self.settings,
                data_dir,
                initialized,
                &self.config,
                &self.membership,
            )
            .await?;
            self.membership.set_lifecycle(Lifecycle::Active).await;
            Ok::<(), NodeError>(())
        };
        tokio::pin!(shutdown);
        // Ok(true): a member, go on; Ok(false): asked to stop before that.
        let entered = tokio::select! {
            r = entering => r.map(|()| true),
            _ = &mut shutdown => Ok(false),
            Some(Ok(Err(e))) = tasks.join_next() => Err(e),
        };
        if !entered? {
            return Ok(());
        }
        if self.serve(data_dir, tasks, shutdown, signals).await? {
            let leave = Leave {
                node_id: &self.settings.node_id,
                config: &self.config,
                coordinator: &self.coordinator,
                membership: &self.membership,
                fence: &self.fence,
                timeout: self.settings.leave_timeout,
            };
            leave.run().await;
        }
        Ok(())
    }

    /// Runs the status loop and the rejoin watch until asked to stop (`Ok(true)`: leave
    /// gracefully) or until a task ended (`Ok(false)`, or the task's error).
    async fn serve(
        &self,
        data_dir: &DataDir,
        tasks: &mut Tasks,
        mut shutdown: Pin<&mut impl Future<Output = ()>>,
        signals: Signals,
    ) -> Result<bool, NodeError> {
        let Signals {
            mut leave,
            mut removed,
            readiness,
            health,
            ingress,
        } = signals;
        let status_loop = StatusLoop {
            node_id: self.settings.node_id.clone(),
            config: self.config.clone(),
            membership: self.membership.clone(),
            coordinator: self.coordinator.clone(),
            fence: self.fence.clone(),
            processor: self.processor.clone(),
            ingress,
            readiness,
            health,
            data_dir: self.settings.data_dir.clone(),
        };
        let leaving = CancellationToken::new();
        let rejoin = Rejoin {
            cluster_id: data_dir.identity().cluster_id.clone(),
            me: me_of(&self.settings, data_dir.identity().raft_id),
            config: self.config.clone(),
            membership: self.membership.clone(),
        };
        let outcome = tokio::select! {
            _ = &mut shutdown => Ok(true),
            _ = leave.wait_for(|l| *l) => Ok(true),
            _ = status_loop.run(tasks.cancel_token()) => Ok(false),
            _ = rejoin.run(&mut removed, leaving.clone()) => Ok(false),
            Some(joined) = tasks.join_next() => match joined {
                Ok(Err(e)) => Err(e),
                Ok(Ok(())) => Ok(false),
                Err(e) => Err(NodeError::Server { what: "node", message: e.to_string() }),
            },
        };
        if let Ok(true) = outcome {
            leaving.cancel();
        }
        outcome
    }

    /// Stops the parts in order: MQTT ingress, MQTT publisher, forwarder, processor, Raft,
    /// gossip. Bounded together by [`STOP_PARTS_TIMEOUT`] so that a stuck part cannot keep the
    /// process alive (the caller's runtime then drops whatever is left); the log names it.
    async fn stop(self, ingress: Option<IngressHandle>) {
        let Node {
            config,
            membership,
            coordinator,
            processor,
            forwarder,
            mqtt_publisher,
            ..
        } = self;
        let step = Arc::new(std::sync::Mutex::new("MQTT ingress"));
        let stop_parts = {
            let step = step.clone();
            let set = move |name: &'static str| {
                *step.lock().unwrap_or_else(|p| p.into_inner()) = name;
            };
            async move {
                if let Some(ingress) = ingress {
                    ingress.shutdown().await;
                }
                set("MQTT publisher");
                if let Some(publisher) = mqtt_publisher {
                    publisher.shutdown().await;
                }
                set("forwarder");
                forwarder.shutdown().await;
                set("processor");
                processor.shutdown().await;
                set("Raft config");
                config.shutdown().await;
                drop(coordinator);
                set("membership");
                if let Ok(membership) = Arc::try_unwrap(membership) {
                    membership.shutdown().await;
                }
            }
        };
        if tokio::time::timeout(STOP_PARTS_TIMEOUT, stop_parts)
            .await
            .is_err()
        {
            let stuck = *step.lock().unwrap_or_else(|p| p.into_inner());
            tracing::warn!(timeout = ?STOP_PARTS_TIMEOUT, stuck,
                "a part of the node did not stop in time; exiting anyway");
        }
    }
}
