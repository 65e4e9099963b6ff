//! A RouteMQ node: wires the parts together and runs them until shutdown.
//!
//! Start-up order matters and is checked step by step, each failure a clear [`NodeError`]:
//! 1. lock the data directory and read its identity (refusing another node's directory);
//! 2. bind the gRPC and HTTP listeners (an occupied port is an error, not a retry);
//! 3. open RocksDB and start the Raft member of the config group;
//! 4. start gossip (binds the UDP port) announcing this node;
//! 5. serve gRPC (cluster API, Raft transport, health, reflection) and HTTP;
//! 6. bootstrap a new cluster, or join one through the seeds, or simply resume as the member
//!    the data directory says this node is;
//! 7. run the status loop (gossip the Raft view, readiness, metrics, leader duties: voters
//!    and failover) until the shutdown future completes or the node is asked to leave;
//! 8. leave gracefully (hand every partition over, bounded by the leave timeout), then stop
//!    every task and wait for it.
//!
//! Alongside: the fence observes every applied config, the lease is renewed through the
//! leader, partitions this node gains are fetched from their holders, and a node that learns
//! it was removed (failed over while cut off) joins again as a fresh member.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use routemq_proto::v1 as pb;
use routemq_proto::v1::cluster_client::ClusterClient;
use routemq_proto::v1::cluster_server::ClusterServer;
use routemq_proto::v1::raft_transport_server::RaftTransportServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::api::messages::MessagesApi;
use crate::api::routes::RoutesApi;
use crate::api::ClusterApi;
use crate::config::network::{lazy_channel, RaftTransportService};
use crate::config::state::{Command, Member};
use crate::config::{store, ConfigService, RaftTiming};
use crate::coordinator::Coordinator;
use crate::datadir::{DataDir, DataDirError};
use crate::dispatch::{DispatchLimits, Dispatcher};
use crate::fencing::Fence;
use crate::forward::{ForwardService, Forwarder};
use crate::handler::{HandlerContext, HandlerRegistry, NoBroker, Publisher};
use crate::handoff::HandoffService;
use crate::http::Readiness;
use crate::ingress::{spawn_ingress, IngressPlan, IngressStatusSource};
use crate::journal::Journal;
use crate::lease::LeaseStatus;
use crate::membership::{GossipSettings, Lifecycle, Membership, MembershipError, SelfInfo};
use crate::metrics::ClusterGauges;
use crate::mqtt::{ingress_plan, MqttPublisher};
use crate::processor::Processor;
use crate::settings::Settings;
use routemq_proto::v1::forward_server::ForwardServer;
use routemq_proto::v1::messages_server::MessagesServer;
use routemq_proto::v1::routes_server::RoutesServer;

/// Fatal errors of a node. Each names what failed and, where possible, what to do.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The data directory cannot be used.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// A listener could not be bound.
    #[error("cannot listen for {what} on {addr}: {source}{}", in_use_hint(.source))]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Gossip could not start.
    #[error(transparent)]
    Gossip(#[from] MembershipError),
    /// The Raft database could not be opened.
    #[error("cannot open the raft database in {path}: {message}")]
    Storage {
        /// The path.
        path: String,
        /// Why.
        message: String,
    },
    /// Raft or config failure at start.
    #[error("config raft: {0}")]
    Raft(String),
    /// A fresh data directory, and neither seeds nor bootstrap.
    #[error("data directory {0} is empty: give --seed (gossip address of a running node) to join a cluster, or --bootstrap to start a new one")]
    NoWayIn(String),
    /// The cluster refused this node.
    #[error("the cluster refused to admit this node: {0}")]
    JoinRejected(String),
    /// The data directory belongs to another cluster than the seeds'.
    #[error("data directory {path} belongs to cluster {ours}, but the seeds gossip cluster {theirs}; use an empty data directory to join that cluster")]
    OtherCluster {
        /// The directory.
        path: String,
        /// Its cluster id.
        ours: String,
        /// The seeds' cluster id.
        theirs: String,
    },
    /// A server task failed.
    #[error("{what} server failed: {message}")]
    Server {
        /// Which server.
        what: &'static str,
        /// Why.
        message: String,
    },
}

fn in_use_hint(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::AddrInUse {
        " (is another routemq node or program using this port?)"
    } else {
        ""
    }
}

/// How long running tasks get to finish after shutdown was requested.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long the node's parts (ingress, forwarder, processor, Raft, gossip) get to stop, one
/// after the other, after the tasks' grace period.
const STOP_PARTS_TIMEOUT: Duration = Duration::from_secs(10);

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, NodeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::Bind { what, addr, source })
}

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

    let raft_dir = data_dir.raft_dir();
    let db = store::open_db(&raft_dir).map_err(|e| NodeError::Storage {
        path: raft_dir.display().to_string(),
        message: e.to_string(),
    })?;
    let initialized = store::has_raft_state(&db).map_err(|e| NodeError::Storage {
        path: raft_dir.display().to_string(),
        message: e.to_string(),
    })?;
    if !initialized && !identity.cluster_id.is_empty() {
        // Identity says we belonged to a cluster, but the Raft state is gone: refuse rather than
        // silently becoming a stranger with the same raft id.
        return Err(NodeError::Storage {
            path: raft_dir.display().to_string(),
            message: format!(
                "the directory belongs to cluster {} but its Raft state is missing; wipe the whole data directory to join afresh",
                identity.cluster_id
            ),
        });
    }

    let timing = RaftTiming {
        heartbeat: settings.raft_heartbeat,
        election_timeout: settings.raft_election_timeout,
    };
    let config = Arc::new(
        ConfigService::start(identity.raft_id, db, timing)
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?,
    );

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
    let membership = match Membership::spawn(
        &gossip_settings,
        &SelfInfo {
            grpc_addr: settings.grpc_advertise.to_string(),
            http_addr: settings.http_advertise.to_string(),
            raft_id: identity.raft_id,
            cluster_id: identity.cluster_id.clone(),
            lifecycle: if is_member {
                Lifecycle::Active
            } else {
                Lifecycle::Joining
            },
        },
    )
    .await
    {
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

    let coordinator = Arc::new(Coordinator::new(
        config.clone(),
        membership.clone(),
        settings.failover_timeout,
    ));
    // The message path: journal, processor, forwarder, dispatcher.
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
    let handler_ctx_journal = journal.clone();
    let stats = crate::stats::NodeStats::new();
    let handler_ctx = HandlerContext {
        node_id: settings.node_id.clone(),
        publisher,
        journal,
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
    let cancel = CancellationToken::new();
    let mut tasks: JoinSet<Result<(), NodeError>> = JoinSet::new();
    // Names of the tasks, to say which ones do not stop in time at shutdown.
    let mut spawned: Vec<(&str, tokio::task::AbortHandle)> = Vec::new();
    let (readiness_tx, readiness_rx) = watch::channel(Readiness {
        reason: "starting".into(),
        ..Default::default()
    });

    // Ownership: observe every applied config, renew the lease, fetch gained partitions.
    let (removed_tx, mut removed_rx) = watch::channel(false);
    {
        let (fence, config, cancel) = (fence.clone(), config.clone(), cancel.clone());
        spawned.push((
            "ownership observer",
            tasks.spawn(async move {
                let mut applied = config.subscribe();
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => return Ok(()),
                        changed = applied.changed() => if changed.is_err() { return Ok(()) },
                    }
                    fence.observe(&config.local_view());
                }
            }),
        ));
    }
    {
        let (fence, config, cancel) = (fence.clone(), config.clone(), cancel.clone());
        let membership_for_lease = membership.clone();
        let lease = settings.lease;
        spawned.push((
            "lease renewal",
            tasks.spawn(async move {
                fence
                    .renew_loop(config, membership_for_lease, lease, removed_tx, cancel)
                    .await;
                Ok(())
            }),
        ));
    }
    {
        let (fence, config, cancel) = (fence.clone(), config.clone(), cancel.clone());
        let (journal, node_id) = (handler_ctx_journal.clone(), settings.node_id.clone());
        spawned.push((
            "handoff fetch",
            tasks.spawn(async move {
                crate::handoff::fetch_loop(fence, config, journal, node_id, cancel).await;
                Ok(())
            }),
        ));
    }

    // MQTT: a publisher for `republish`, and the ingress following the routes and ring.
    let mut ingress = None;
    if let Some(mqtt) = settings.mqtt.clone() {
        let (plan_tx, plan_rx) = watch::channel(Arc::new(IngressPlan::default()));
        ingress = Some(spawn_ingress(mqtt, dispatcher.clone(), plan_rx));
        let config = config.clone();
        let node_id = settings.node_id.clone();
        let cancel = cancel.clone();
        let mut lease_valid = fence.lease_valid();
        spawned.push((
            "readiness/metrics loop",
            tasks.spawn(async move {
                let mut applied = config.subscribe();
                loop {
                    let view = config.local_view();
                    let mut plan = ingress_plan(&view, &node_id);
                    if !*lease_valid.borrow_and_update() {
                        // Cut off from the majority: let go of ordered routes so that the
                        // majority's holder can take over the broker session.
                        plan.ordered_held.clear();
                    }
                    if **plan_tx.borrow() != plan {
                        tracing::info!(
                            shared = plan.shared.len(),
                            ordered_held = plan.ordered_held.len(),
                            "ingress plan changed"
                        );
                        plan_tx.send_replace(Arc::new(plan));
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => return Ok(()),
                        changed = applied.changed() => if changed.is_err() { return Ok(()) },
                        changed = lease_valid.changed() => if changed.is_err() { return Ok(()) },
                    }
                }
            }),
        ));
    }

    // gRPC: must run before bootstrap/join, since the leader replicates to us over it.
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(routemq_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| NodeError::Server {
            what: "gRPC reflection",
            message: e.to_string(),
        })?;
    let (leave_tx, mut leave_rx) = watch::channel(false);
    let api = Arc::new(ClusterApi::new(
        settings.node_id.clone(),
        config.clone(),
        membership.clone(),
        coordinator.clone(),
        leave_tx,
    ));
    let routes_api = Arc::new(RoutesApi::new(config.clone()));
    let messages_api = Arc::new(MessagesApi::new(dispatcher.clone(), config.clone()));
    let stats_api = Arc::new(crate::api::stats::StatsApi::new(
        settings.node_id.clone(),
        stats.clone(),
        config.clone(),
    ));
    let console = crate::console::Console {
        cluster: api.clone(),
        routes: routes_api.clone(),
        messages: messages_api.clone(),
        stats: stats_api.clone(),
    };
    spawned.push((
        "stats sampler",
        tasks.spawn({
            let sampler = crate::stats::spawn_sampler(stats.clone(), cancel.clone());
            async move {
                let _ = sampler.await;
                Ok(())
            }
        }),
    ));
    // Keepalive pings find connections that died silently (packets dropped, peer paused) in
    // seconds rather than at TCP's retransmission timeout. Many streams opened and cancelled
    // behind a healed partition arrive at once; h2's default limit of 20 such streams would
    // close the whole connection (and every stream on it) with GOAWAY.
    let grpc_server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(1)))
        .http2_keepalive_timeout(Some(Duration::from_secs(2)))
        .http2_max_pending_accept_reset_streams(Some(1024))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(ClusterServer::from_arc(api))
        .add_service(RoutesServer::from_arc(routes_api))
        .add_service(MessagesServer::from_arc(messages_api).max_decoding_message_size(16 << 20))
        .add_service(routemq_proto::v1::stats_server::StatsServer::from_arc(stats_api))
        .add_service(
            ForwardServer::new(ForwardService::new(dispatcher.clone(), cancel.clone()))
                .max_decoding_message_size(64 << 20),
        )
        .add_service(
            routemq_proto::v1::handoff_server::HandoffServer::new(HandoffService::new(
                fence.clone(),
                handler_ctx_journal.clone(),
                processor.clone(),
            ))
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20),
        )
        .add_service(
            RaftTransportServer::new(RaftTransportService::new(config.raft().clone()))
                .max_decoding_message_size(64 << 20),
        );
    {
        let cancel = cancel.clone();
        spawned.push((
            "gRPC server",
            tasks.spawn(async move {
                grpc_server
                    .serve_with_incoming_shutdown(
                        // TCP_NODELAY: a small answer must not wait for the client's delayed
                        // ACK (40 ms per unary publish without it).
                        tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
                        cancel.cancelled_owned(),
                    )
                    .await
                    .map_err(|e| NodeError::Server {
                        what: "gRPC",
                        message: e.to_string(),
                    })
            }),
        ));
    }
    {
        let cancel = cancel.clone();
        let node_id = settings.node_id.clone();
        let prometheus = crate::metrics::install();
        spawned.push((
            "HTTP server",
            tasks.spawn(async move {
                crate::http::serve(
                    http_listener,
                    node_id,
                    readiness_rx,
                    prometheus,
                    Some(console),
                    cancel,
                )
                .await
                .map_err(|e| NodeError::Server {
                    what: "HTTP",
                    message: e.to_string(),
                })
            }),
        ));
    }

    let entering = async {
        enter_cluster(&settings, &mut data_dir, initialized, &config, &membership).await?;
        membership.set_lifecycle(Lifecycle::Active).await;
        Ok::<(), NodeError>(())
    };
    let shutdown = async move {
        shutdown.await;
    };
    tokio::pin!(shutdown);
    // Ok(true): a member, go on; Ok(false): asked to stop before that.
    let entered = tokio::select! {
        r = entering => r.map(|()| true),
        _ = &mut shutdown => Ok(false),
        Some(Ok(Err(e))) = tasks.join_next() => Err(e),
    };

    let outcome = match entered {
        Err(e) => Err(e),
        Ok(false) => Ok(()),
        Ok(true) => {
            let status_loop = StatusLoop {
                node_id: settings.node_id.clone(),
                config: config.clone(),
                membership: membership.clone(),
                coordinator: coordinator.clone(),
                fence: fence.clone(),
                processor: processor.clone(),
                ingress: ingress.as_ref().map(|i| i.status_source()),
                readiness: readiness_tx,
                health: health_reporter,
            };
            let leaving = CancellationToken::new();
            let rejoin = Rejoin {
                settings: &settings,
                cluster_id: data_dir.identity().cluster_id.clone(),
                me: me_of(&settings, data_dir.identity().raft_id),
                membership: membership.clone(),
            };
            let outcome = tokio::select! {
                _ = &mut shutdown => Ok(true),
                _ = leave_rx.wait_for(|l| *l) => Ok(true),
                _ = status_loop.run(cancel.clone()) => Ok(false),
                _ = rejoin.run(&mut removed_rx, leaving.clone()) => Ok(false),
                Some(joined) = tasks.join_next() => match joined {
                    Ok(Err(e)) => Err(e),
                    Ok(Ok(())) => Ok(false),
                    Err(e) => Err(NodeError::Server { what: "node", message: e.to_string() }),
                },
            };
            match outcome {
                Ok(true) => {
                    leaving.cancel();
                    let leave = Leave {
                        node_id: &settings.node_id,
                        config: &config,
                        coordinator: &coordinator,
                        membership: &membership,
                        fence: &fence,
                        timeout: settings.leave_timeout,
                    };
                    leave.run().await;
                    Ok(())
                }
                Ok(false) => Ok(()),
                Err(e) => Err(e),
            }
        }
    };

    tracing::info!("shutting down");
    membership.set_lifecycle(Lifecycle::Leaving).await;
    cancel.cancel();
    // Long-lived streams from peers that are stopping too can hold the gRPC server's graceful
    // shutdown open; give every task a grace period, then abort what is left.
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while let Some(joined) = tasks.join_next().await {
            if let Ok(Err(e)) = joined {
                tracing::warn!(error = %e, "task ended with an error during shutdown");
            }
        }
    })
    .await;
    if drained.is_err() {
        let running: Vec<&str> = spawned
            .iter()
            .filter(|(_, h)| !h.is_finished())
            .map(|(n, _)| *n)
            .collect();
        tracing::warn!(grace = ?SHUTDOWN_GRACE, ?running, "tasks still running after the shutdown grace period; aborting them");
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    // The parts stop in order; bounded so that a stuck part cannot keep the process alive
    // (the caller's runtime then drops whatever is left).
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
    tracing::info!("stopped");
    outcome
}

/// Bootstraps, joins, or resumes membership. Returns once this node is a ring member.
async fn enter_cluster(
    settings: &Settings,
    data_dir: &mut DataDir,
    initialized: bool,
    config: &Arc<ConfigService>,
    membership: &Arc<Membership>,
) -> Result<(), NodeError> {
    let identity = data_dir.identity().clone();
    let me = me_of(settings, identity.raft_id);
    if initialized {
        if !identity.cluster_id.is_empty() && !settings.seeds.is_empty() {
            check_seeds_cluster(data_dir, membership).await?;
        }
        let member = config
            .local_view()
            .state
            .config
            .member_by_raft_id(me.raft_id)
            .is_some();
        if member || settings.seeds.is_empty() {
            tracing::info!(cluster_id = %identity.cluster_id, "resuming as an existing member");
            wait_until_member(config, &me).await;
            return Ok(());
        }
        // The directory says we left (or were removed): join again, as a fresh member.
        tracing::info!(cluster_id = %identity.cluster_id, "no longer a member (left or removed); joining again");
        return join(settings, data_dir, config, membership, me).await;
    }
    if !settings.bootstrap && settings.seeds.is_empty() {
        return Err(NodeError::NoWayIn(data_dir.path().display().to_string()));
    }
    if settings.bootstrap {
        bootstrap(settings, data_dir, config, membership, me).await
    } else {
        join(settings, data_dir, config, membership, me).await
    }
}

/// This node as a ring member.
fn me_of(settings: &Settings, raft_id: u64) -> Member {
    Member {
        node_id: settings.node_id.clone(),
        raft_id,
        grpc_addr: settings.grpc_advertise.to_string(),
        gossip_addr: settings.gossip_advertise.to_string(),
        http_addr: settings.http_advertise.to_string(),
        weight: settings.weight,
        state: Default::default(),
    }
}

/// Fails if the seeds gossip another cluster id than the data directory's.
async fn check_seeds_cluster(data_dir: &DataDir, membership: &Membership) -> Result<(), NodeError> {
    let ours = data_dir.identity().cluster_id.clone();
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let peers = membership.peers().await;
        let others: Vec<String> = peers
            .iter()
            .filter(|p| p.alive && p.raft_id != Some(data_dir.identity().raft_id))
            .filter_map(|p| p.cluster_id.clone())
            .collect();
        if others.contains(&ours) {
            return Ok(());
        }
        if let Some(theirs) = others.into_iter().next() {
            return Err(NodeError::OtherCluster {
                path: data_dir.path().display().to_string(),
                ours,
                theirs,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nobody answered: we may be the first to restart. Raft will sort it out.
    Ok(())
}

async fn wait_until_member(config: &ConfigService, me: &Member) {
    let mut applied = config.subscribe();
    let mut warned = Instant::now();
    loop {
        if applied.borrow().config.member_by_raft_id(me.raft_id).is_some() {
            return;
        }
        if warned.elapsed() > Duration::from_secs(10) {
            tracing::warn!("not a ring member in the applied config yet; waiting for the leader");
            warned = Instant::now();
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), applied.changed()).await;
    }
}

async fn bootstrap(
    settings: &Settings,
    data_dir: &mut DataDir,
    config: &ConfigService,
    membership: &Membership,
    me: Member,
) -> Result<(), NodeError> {
    let cluster_id = uuid::Uuid::new_v4().to_string();
    tracing::info!(%cluster_id, partitions = settings.ring.partitions, vnodes = settings.ring.vnodes_per_weight,
        "bootstrapping a new cluster");
    let mut nodes = std::collections::BTreeMap::new();
    nodes.insert(me.raft_id, openraft::BasicNode::new(&me.grpc_addr));
    config
        .raft()
        .initialize(nodes)
        .await
        .map_err(|e| NodeError::Raft(format!("initialize: {e}")))?;
    // A single voter elects itself at once; wait for it before proposing.
    let mut metrics = config.raft().metrics();
    tokio::time::timeout(
        Duration::from_secs(30),
        metrics.wait_for(|m| m.current_leader == Some(me.raft_id)),
    )
    .await
    .map_err(|_| NodeError::Raft("no leadership 30 s after initializing".into()))?
    .map_err(|_| NodeError::Raft("raft stopped".into()))?;
    let epoch = config
        .propose(Command::Bootstrap {
            cluster_id: cluster_id.clone(),
            ring: settings.ring,
            max_voters: settings.max_voters,
            first: me,
        })
        .await
        .map_err(|e| NodeError::Raft(format!("bootstrap: {e}")))?
        .epoch;
    data_dir.set_cluster_id(&cluster_id)?;
    membership.set_cluster_id(&cluster_id).await;
    tracing::info!(%cluster_id, epoch, "cluster bootstrapped");
    for spec in &settings.bootstrap_routes {
        config
            .propose(Command::PutRoute {
                spec: spec.clone(),
                expected_version: None,
            })
            .await
            .map_err(|e| NodeError::Raft(format!("route {} from the routes file: {e}", spec.name)))?;
        tracing::info!(route = %spec.name, "route loaded from the routes file");
    }
    Ok(())
}

async fn join(
    settings: &Settings,
    data_dir: &mut DataDir,
    config: &ConfigService,
    membership: &Membership,
    me: Member,
) -> Result<(), NodeError> {
    let response = join_loop(settings, membership, &me, &data_dir.identity().cluster_id).await?;
    data_dir.set_cluster_id(&response.cluster_id)?;
    membership.set_cluster_id(&response.cluster_id).await;
    tracing::info!(cluster_id = %response.cluster_id, epoch = response.epoch, voter = response.voter, "joined");
    wait_until_member(config, &me).await;
    Ok(())
}

/// Asks the leader (found through gossip) to admit `me`, until it does or refuses for good.
async fn join_loop(
    settings: &Settings,
    membership: &Membership,
    me: &Member,
    cluster_id: &str,
) -> Result<pb::JoinResponse, NodeError> {
    let mut backoff = Duration::from_millis(200);
    let started = Instant::now();
    let mut hinted: Option<String> = None;
    loop {
        let target = match hinted.take() {
            Some(addr) => Some(addr),
            None => leader_grpc_addr(membership, me.raft_id).await,
        };
        let Some(target) = target else {
            if started.elapsed() > Duration::from_secs(2) {
                tracing::warn!(seeds = ?settings.seeds, retry_in = ?backoff,
                    "no RouteMQ node reachable through the seeds yet; retrying");
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            continue;
        };
        tracing::info!(via = %target, "asking to join the cluster");
        match request_join(&target, me, cluster_id).await {
            Ok(response) => return Ok(response),
            Err(status) => match status.code() {
                tonic::Code::AlreadyExists | tonic::Code::PermissionDenied | tonic::Code::InvalidArgument => {
                    return Err(NodeError::JoinRejected(status.message().to_string()));
                }
                tonic::Code::FailedPrecondition => {
                    hinted = status
                        .metadata()
                        .get(routemq_proto::LEADER_ADDR_METADATA)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    if hinted.is_none() {
                        tokio::time::sleep(backoff).await;
                    }
                }
                _ => {
                    tracing::warn!(via = %target, error = %status.message(), retry_in = ?backoff, "join attempt failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            },
        }
    }
}

/// The gRPC address of the Raft leader as gossip reports it, or of any live peer.
pub(crate) async fn leader_grpc_addr(membership: &Membership, self_raft_id: u64) -> Option<String> {
    let peers = membership.peers().await;
    let others: Vec<_> = peers
        .iter()
        .filter(|p| p.alive && p.raft_id != Some(self_raft_id))
        .collect();
    let leader = others.iter().find_map(|p| p.raft_leader).and_then(|leader| {
        others
            .iter()
            .find(|p| p.raft_id == Some(leader))
            .and_then(|p| p.grpc_addr.clone())
    });
    leader.or_else(|| others.iter().find_map(|p| p.grpc_addr.clone()))
}

async fn request_join(
    target: &str,
    me: &Member,
    cluster_id: &str,
) -> Result<pb::JoinResponse, tonic::Status> {
    let channel = lazy_channel(target).map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut client = ClusterClient::new(channel);
    let mut request = tonic::Request::new(pb::JoinRequest {
        node_id: me.node_id.clone(),
        raft_id: me.raft_id,
        cluster_id: cluster_id.to_string(),
        grpc_addr: me.grpc_addr.clone(),
        gossip_addr: me.gossip_addr.clone(),
        http_addr: me.http_addr.clone(),
        weight: me.weight,
    });
    request.set_timeout(Duration::from_secs(45));
    client.join(request).await.map(|r| r.into_inner())
}

/// Periodic work once the node is a member: gossip the Raft view, compute readiness, publish
/// metrics, and on the leader keep Raft membership in line with the ring.
struct StatusLoop {
    node_id: String,
    config: Arc<ConfigService>,
    membership: Arc<Membership>,
    coordinator: Arc<Coordinator>,
    fence: Arc<Fence>,
    processor: Arc<Processor>,
    ingress: Option<IngressStatusSource>,
    readiness: watch::Sender<Readiness>,
    health: tonic_health::server::HealthReporter,
}

impl StatusLoop {
    async fn run(self, cancel: CancellationToken) {
        let mut ticker = tokio::time::interval(Duration::from_millis(250));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_reconcile = Instant::now();
        let mut was_ready = None;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let metrics = self.config.metrics();
            let view = self.config.local_view();
            let committed = self.config.committed_index();
            self.membership
                .set_raft_view(metrics.current_leader, committed)
                .await;
            let peers = self.membership.peers().await;
            let member = view
                .state
                .config
                .member_by_raft_id(self.config.raft_id())
                .is_some();
            let leader_committed = metrics
                .current_leader
                .and_then(|leader| peers.iter().find(|p| p.raft_id == Some(leader)))
                .and_then(|p| p.committed)
                .unwrap_or(0);
            let applied = view.applied_index();
            let leader_known = metrics.current_leader.is_some();
            let lease = self.fence.lease_status();
            let mqtt = self.ingress.as_ref().map(|i| i.snapshot().readiness());
            let mqtt_problem = mqtt.as_ref().and_then(|m| m.problem.clone());
            let (ready, reason) = if !member {
                (false, "not a ring member in the applied config".to_string())
            } else if let LeaseStatus::Invalid(why) = &lease {
                (false, why.clone())
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
            if was_ready != Some(ready) {
                tracing::info!(ready, %reason, "readiness changed");
                let status = if ready {
                    tonic_health::ServingStatus::Serving
                } else {
                    tonic_health::ServingStatus::NotServing
                };
                self.health.set_service_status("", status).await;
                self.health.set_service_status("routemq.v1.Cluster", status).await;
                was_ready = Some(ready);
            }
            self.readiness.send_replace(Readiness {
                ready,
                reason,
                member,
                leader_known,
                applied_index: applied,
                leader_committed_index: leader_committed,
                mqtt,
            });
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
                lease_valid: lease == LeaseStatus::Valid,
            });
            self.coordinator.fail_over_dead().await;
            if is_leader && last_reconcile.elapsed() > Duration::from_secs(2) {
                last_reconcile = Instant::now();
                if let Err(e) = self.coordinator.reconcile().await {
                    tracing::warn!(error = %e, "could not reconcile raft membership");
                }
            }
        }
    }
}

/// Joins again after the leader said this node is no longer a member (it was failed over
/// while cut off or paused). Its partitions were dropped by the fence; as a fresh member it
/// gets partitions back by handoff.
struct Rejoin<'a> {
    settings: &'a Settings,
    cluster_id: String,
    me: Member,
    membership: Arc<Membership>,
}

impl Rejoin<'_> {
    /// Runs until `leaving` (never returns otherwise).
    async fn run(&self, removed: &mut watch::Receiver<bool>, leaving: CancellationToken) {
        loop {
            tokio::select! {
                _ = leaving.cancelled() => return std::future::pending().await,
                r = removed.wait_for(|r| *r) => if r.is_err() { return std::future::pending().await },
            }
            self.membership.set_lifecycle(Lifecycle::Joining).await;
            tracing::info!("rejoining the cluster as a fresh member");
            let joined = tokio::select! {
                _ = leaving.cancelled() => return std::future::pending().await,
                r = join_loop(self.settings, &self.membership, &self.me, &self.cluster_id) => r,
            };
            match joined {
                Ok(response) => {
                    tracing::info!(epoch = response.epoch, "rejoined");
                    // The lease loop clears `removed` at its first renewal as a member.
                    let _ = tokio::time::timeout(Duration::from_secs(10), removed.wait_for(|r| !*r)).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot rejoin; retrying in 5 s");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
        }
    }
}

/// A graceful leave: stop owning (through the leader), wait until every partition this node
/// held was fetched by its new owner, then leave the config. Bounded by `timeout`.
struct Leave<'a> {
    node_id: &'a str,
    config: &'a Arc<ConfigService>,
    coordinator: &'a Arc<Coordinator>,
    membership: &'a Arc<Membership>,
    fence: &'a Arc<Fence>,
    timeout: Duration,
}

impl Leave<'_> {
    async fn run(&self) {
        let started = Instant::now();
        let deadline = started + self.timeout;
        self.membership.set_lifecycle(Lifecycle::Leaving).await;
        if !self
            .config
            .local_view()
            .state
            .config
            .members
            .contains_key(self.node_id)
        {
            tracing::info!("not a member; nothing to hand over");
            return;
        }
        tracing::info!(timeout = ?self.timeout, "leaving the cluster: handing partitions over");
        let epoch = loop {
            match self.ask_leader(true).await {
                Ok(epoch) => break epoch,
                Err(LeaveStep::Final(why)) => {
                    tracing::info!(reason = %why, "not handing over");
                    return;
                }
                Err(LeaveStep::Retry(why)) => {
                    if Instant::now() >= deadline || !self.others_alive().await {
                        tracing::warn!(reason = %why, "could not start the handoff; stopping without it");
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        let mut applied = self.config.subscribe();
        let _ = tokio::time::timeout(
            deadline.saturating_duration_since(Instant::now()),
            applied.wait_for(|s| s.config.epoch >= epoch),
        )
        .await;
        loop {
            crate::handoff::confirm_handed_over(self.fence, self.config).await;
            let held = self.fence.still_held();
            if held == 0 {
                tracing::info!(took = ?started.elapsed(), "every partition handed over");
                self.fence.left();
                break;
            }
            if Instant::now() >= deadline {
                tracing::warn!(held, timeout = ?self.timeout,
                    "leave timeout: partitions not handed over; their data stays in this data directory");
                return;
            }
            if !self.others_alive().await {
                tracing::warn!(held, "no other live member to hand partitions to; stopping");
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        loop {
            match self.ask_leader(false).await {
                Ok(epoch) => {
                    tracing::info!(epoch, "left the cluster");
                    return;
                }
                Err(LeaveStep::Final(why)) => {
                    tracing::info!(reason = %why, "left the cluster");
                    return;
                }
                Err(LeaveStep::Retry(why)) if Instant::now() >= deadline => {
                    tracing::warn!(reason = %why, "could not leave the config before the timeout");
                    return;
                }
                // Everyone is stopping at once (no active member left to run the config):
                // nothing is left to hand over to, and nobody to record the leave.
                Err(LeaveStep::Retry(why)) if !self.others_alive().await => {
                    tracing::warn!(reason = %why, "no other live member to record the leave; stopping");
                    return;
                }
                Err(LeaveStep::Retry(_)) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// True if another active member looks alive (someone can take our partitions).
    async fn others_alive(&self) -> bool {
        let view = self.config.local_view();
        let peers = self.membership.peers().await;
        let alive = view
            .state
            .config
            .active_members()
            .filter(|m| m.node_id != self.node_id)
            .any(|m| crate::coordinator::is_alive(&peers, m));
        alive
    }

    /// Starts the leave (`graceful`) or removes this node, through the leader.
    async fn ask_leader(&self, graceful: bool) -> Result<u64, LeaveStep> {
        if self.config.is_leader() {
            let result = if graceful {
                self.coordinator.start_leave(self.node_id).await
            } else {
                self.coordinator.remove(self.node_id).await
            };
            return result.map_err(|e| match e {
                crate::coordinator::AdminError::Config(crate::config::ConfigServiceError::Rejected(r)) => {
                    LeaveStep::Final(r.to_string())
                }
                other => LeaveStep::Retry(other.to_string()),
            });
        }
        let metrics = self.config.metrics();
        let mut addr = metrics.current_leader.and_then(|l| {
            metrics
                .membership_config
                .membership()
                .get_node(&l)
                .map(|n| n.addr.clone())
        });
        if addr.is_none() {
            addr = leader_grpc_addr(self.membership, self.config.raft_id()).await;
        }
        let mut addr = addr.ok_or_else(|| LeaveStep::Retry("no Raft leader known".into()))?;
        // Follow NotLeader hints a few hops (our own Raft view may be stale).
        for _ in 0..3 {
            let channel = lazy_channel(&addr).map_err(|e| LeaveStep::Retry(e.to_string()))?;
            let mut client = ClusterClient::new(channel);
            let mut request = tonic::Request::new(pb::RemoveNodeRequest {
                node_id: self.node_id.to_string(),
                graceful,
            });
            request.set_timeout(Duration::from_secs(5));
            match client.remove_node(request).await {
                Ok(r) => return Ok(r.into_inner().epoch),
                Err(s) if matches!(s.code(), tonic::Code::NotFound) => {
                    return Err(LeaveStep::Final(s.message().to_string()))
                }
                Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                    match s.metadata().get(routemq_proto::LEADER_ADDR_METADATA) {
                        // LastMember and other rejections by the state machine: final.
                        None => return Err(LeaveStep::Final(s.message().to_string())),
                        Some(hint) => match hint.to_str().ok().filter(|h| !h.is_empty()) {
                            Some(hint) => addr = hint.to_string(),
                            None => return Err(LeaveStep::Retry(s.message().to_string())),
                        },
                    }
                }
                Err(s) => return Err(LeaveStep::Retry(s.message().to_string())),
            }
        }
        Err(LeaveStep::Retry("the leader moved while asking".into()))
    }
}

/// Why a step of a leave did not happen.
enum LeaveStep {
    /// Try again (no leader, unavailable).
    Retry(String),
    /// Do not try again (the last member cannot leave; already removed).
    Final(String),
}
