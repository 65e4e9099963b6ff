//! The node's servers: gRPC (cluster API, routes, messages, forwarding, handoff, the Raft
//! transport, live stats, health and reflection) on one listener, and HTTP (`/health`,
//! `/ready`, `/metrics`, the console at `/ui`) on another. Built here, run as named tasks of the node.
//!
//! The gRPC server must serve before the node bootstraps or joins: the leader replicates to
//! a joiner over it. Both stop on the node's cancellation token.

use std::sync::Arc;
use std::time::Duration;

use routemq_proto::v1::cluster_server::ClusterServer;
use routemq_proto::v1::forward_server::ForwardServer;
use routemq_proto::v1::handoff_server::HandoffServer;
use routemq_proto::v1::messages_server::MessagesServer;
use routemq_proto::v1::raft_transport_server::RaftTransportServer;
use routemq_proto::v1::routes_server::RoutesServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::{Router, TcpIncoming};
use tonic_health::server::HealthReporter;

use super::tasks::Tasks;
use super::NodeError;
use crate::api::messages::MessagesApi;
use crate::api::routes::RoutesApi;
use crate::api::stats::StatsApi;
use crate::api::ClusterApi;
use crate::config::network::RaftTransportService;
use crate::config::ConfigService;
use crate::console::Console;
use crate::coordinator::Coordinator;
use crate::dispatch::Dispatcher;
use crate::fencing::Fence;
use crate::forward::ForwardService;
use crate::handoff::HandoffService;
use crate::http::Readiness;
use crate::journal::Journal;
use crate::membership::Membership;
use crate::processor::Processor;
use crate::stats::NodeStats;
use routemq_proto::v1::stats_server::StatsServer;

/// What the gRPC services answer with.
pub(super) struct GrpcDeps {
    pub node_id: String,
    pub config: Arc<ConfigService>,
    pub membership: Arc<Membership>,
    pub coordinator: Arc<Coordinator>,
    pub dispatcher: Arc<Dispatcher>,
    pub fence: Arc<Fence>,
    pub journal: Journal,
    pub processor: Arc<Processor>,
    pub stats: NodeStats,
    /// Set by `Cluster/Leave`.
    pub leave: watch::Sender<bool>,
}

/// Builds the gRPC server with every service; the reporter sets the health service's status;
/// the console reads the same service implementations.
pub(super) fn grpc_server(
    deps: GrpcDeps,
    tasks: &Tasks,
) -> Result<(Router, HealthReporter, Console), NodeError> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(routemq_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| NodeError::Server {
            what: "gRPC reflection",
            message: e.to_string(),
        })?;
    let stats_api = Arc::new(StatsApi::new(
        deps.node_id.clone(),
        deps.stats,
        deps.config.clone(),
        deps.fence.clone(),
    ));
    let api = Arc::new(ClusterApi::new(
        deps.node_id,
        deps.config.clone(),
        deps.membership,
        deps.coordinator,
        deps.leave,
    ));
    let routes_api = Arc::new(RoutesApi::new(deps.config.clone()));
    let messages_api = Arc::new(MessagesApi::new(deps.dispatcher.clone(), deps.config.clone()));
    let console = Console {
        cluster: api.clone(),
        routes: routes_api.clone(),
        messages: messages_api.clone(),
        stats: stats_api.clone(),
    };
    // Keepalive pings find connections that died silently (packets dropped, peer paused) in
    // seconds rather than at TCP's retransmission timeout. Many streams opened and cancelled
    // behind a healed partition arrive at once; h2's default limit of 20 such streams would
    // close the whole connection (and every stream on it) with GOAWAY.
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(1)))
        .http2_keepalive_timeout(Some(Duration::from_secs(2)))
        .http2_max_pending_accept_reset_streams(Some(1024))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(ClusterServer::from_arc(api))
        .add_service(RoutesServer::from_arc(routes_api))
        .add_service(MessagesServer::from_arc(messages_api).max_decoding_message_size(16 << 20))
        .add_service(StatsServer::from_arc(stats_api))
        .add_service(
            // Inbound streams end on the node's token: peers keep them open, and the server's
            // graceful shutdown would otherwise wait for them.
            ForwardServer::new(ForwardService::new(deps.dispatcher, tasks.cancel_token()))
                .max_decoding_message_size(64 << 20),
        )
        .add_service(
            HandoffServer::new(HandoffService::new(deps.fence, deps.journal, deps.processor))
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
        )
        .add_service(
            RaftTransportServer::new(RaftTransportService::new(deps.config.raft().clone()))
                .max_decoding_message_size(64 << 20),
        );
    Ok((router, health_reporter, console))
}

/// Serves gRPC on `listener` as the task "gRPC server", until the node's token is cancelled.
pub(super) fn spawn_grpc_server(tasks: &mut Tasks, router: Router, listener: TcpListener) {
    let cancel = tasks.cancel_token();
    tasks.spawn("gRPC server", async move {
        router
            .serve_with_incoming_shutdown(
                // TCP_NODELAY: a small answer must not wait for the client's delayed ACK (40 ms
                // per unary publish without it).
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                cancel.cancelled_owned(),
            )
            .await
            .map_err(|e| NodeError::Server {
                what: "gRPC",
                message: e.to_string(),
            })
    });
}

/// Serves HTTP on `listener` as the task "HTTP server" (installing the Prometheus recorder),
/// until the node's token is cancelled.
pub(super) fn spawn_http_server(
    tasks: &mut Tasks,
    listener: TcpListener,
    node_id: String,
    readiness: watch::Receiver<Readiness>,
    console: Console,
) {
    let cancel = tasks.cancel_token();
    let prometheus = crate::metrics::install();
    tasks.spawn("HTTP server", async move {
        crate::http::serve(listener, node_id, readiness, prometheus, Some(console), cancel)
            .await
            .map_err(|e| NodeError::Server {
                what: "HTTP",
                message: e.to_string(),
            })
    });
}
