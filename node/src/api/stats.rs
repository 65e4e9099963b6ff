//! `routemq.v1.Stats`: this node's live samples and hot keys ([`crate::stats`]), and the same
//! merged over every member, for the console (`/ui`) and `routemq-ctl hot-keys`.
//!
//! A merged answer asks each other member for its own (`local`) figures with a short deadline;
//! a member that does not answer is listed as missing, never waited for: the console stays live
//! while a node is down.

use std::sync::Arc;
use std::time::Duration;

use routemq_proto::v1 as pb;
use routemq_proto::v1::stats_server::Stats;
use tonic::{Request, Response, Status};

use crate::config::ConfigService;
use crate::fencing::Fence;
use crate::hotkeys::{KeyCount, Summary};
use crate::lease::LeaseStatus;
use crate::stats::{NodeStats, HOT_KEY_CAPACITY, HOT_KEY_WINDOW, SAMPLE_EVERY};

/// How long a member gets to send its figures.
const PEER_DEADLINE: Duration = Duration::from_secs(2);
/// Keys returned when the request does not say.
const DEFAULT_LIMIT: usize = 10;

/// Implementation of `routemq.v1.Stats`.
pub struct StatsApi {
    node_id: String,
    stats: NodeStats,
    config: Arc<ConfigService>,
    fence: Arc<Fence>,
}

impl StatsApi {
    /// Serves `stats` of node `node_id` and its lease from `fence`; members come from `config`.
    pub fn new(node_id: String, stats: NodeStats, config: Arc<ConfigService>, fence: Arc<Fence>) -> Self {
        Self {
            node_id,
            stats,
            config,
            fence,
        }
    }

    fn local_series(&self) -> pb::NodeSeries {
        let lease = self.fence.lease_status();
        pb::NodeSeries {
            node_id: self.node_id.clone(),
            samples: self
                .stats
                .series()
                .into_iter()
                .map(|s| pb::Sample {
                    at_unix_ms: s.at_unix_ms,
                    processed_per_s: s.processed_per_s,
                    received_per_s: s.received_per_s,
                    p99_ms: s.p99_ms,
                    routes: s
                        .routes
                        .into_iter()
                        .map(|(route, r)| pb::RouteSample {
                            route,
                            processed_per_s: r.processed_per_s,
                            p99_ms: r.p99_ms,
                        })
                        .collect(),
                })
                .collect(),
            error: String::new(),
            lease_valid: matches!(lease, LeaseStatus::Valid),
            lease_remaining_ms: self.fence.lease_remaining().map(|d| d.as_millis() as u64),
            lease_problem: match lease {
                LeaseStatus::Valid => String::new(),
                LeaseStatus::Invalid(why) => why,
            },
        }
    }

    /// The other members and their gRPC addresses, from the applied config.
    fn peers(&self) -> Vec<(String, String)> {
        let view = self.config.local_view();
        view.state
            .config
            .members
            .values()
            .filter(|m| m.node_id != self.node_id)
            .map(|m| (m.node_id.clone(), m.grpc_addr.clone()))
            .collect()
    }
}

async fn stats_client(
    addr: &str,
) -> Result<pb::stats_client::StatsClient<tonic::transport::Channel>, String> {
    let channel = crate::config::network::lazy_channel(addr).map_err(|e| e.to_string())?;
    Ok(pb::stats_client::StatsClient::new(channel))
}

async fn peer_series(addr: String) -> Result<pb::NodeSeries, String> {
    let mut client = stats_client(&addr).await?;
    let mut request = Request::new(pb::SeriesRequest { local: true });
    request.set_timeout(PEER_DEADLINE);
    let answer = client
        .get_series(request)
        .await
        .map_err(|s| s.message().to_string())?;
    answer
        .into_inner()
        .nodes
        .into_iter()
        .next()
        .ok_or_else(|| "answered without samples".to_string())
}

async fn peer_hot_keys(addr: String, route: String) -> Result<Summary, String> {
    let mut client = stats_client(&addr).await?;
    let mut request = Request::new(pb::HotKeysRequest {
        route,
        limit: HOT_KEY_CAPACITY as u32,
        local: true,
    });
    request.set_timeout(PEER_DEADLINE);
    let answer = client
        .get_hot_keys(request)
        .await
        .map_err(|s| s.message().to_string())?;
    Ok(summary_from_pb(answer.into_inner()))
}

fn summary_from_pb(answer: pb::HotKeysResponse) -> Summary {
    Summary {
        keys: answer
            .keys
            .into_iter()
            .map(|k| KeyCount {
                key: k.key,
                count: k.count,
                error: k.error,
            })
            .collect(),
        floor: answer.floor,
        total: answer.total,
    }
}

#[tonic::async_trait]
impl Stats for StatsApi {
    async fn get_series(
        &self,
        request: Request<pb::SeriesRequest>,
    ) -> Result<Response<pb::SeriesResponse>, Status> {
        let mut nodes = vec![self.local_series()];
        if !request.into_inner().local {
            let peers = self.peers();
            let answers =
                futures::future::join_all(peers.iter().map(|(_, addr)| peer_series(addr.clone()))).await;
            for ((node_id, _), answer) in peers.into_iter().zip(answers) {
                nodes.push(match answer {
                    Ok(series) => series,
                    Err(error) => pb::NodeSeries {
                        node_id,
                        error,
                        ..Default::default()
                    },
                });
            }
        }
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(Response::new(pb::SeriesResponse {
            interval_s: SAMPLE_EVERY.as_secs() as u32,
            nodes,
            answered_by: self.node_id.clone(),
        }))
    }

    async fn get_hot_keys(
        &self,
        request: Request<pb::HotKeysRequest>,
    ) -> Result<Response<pb::HotKeysResponse>, Status> {
        let request = request.into_inner();
        if request.route.is_empty() {
            return Err(Status::invalid_argument("name the route whose hot keys to show"));
        }
        let limit = match request.limit {
            0 => DEFAULT_LIMIT,
            n => (n as usize).min(HOT_KEY_CAPACITY),
        };
        let mut merged = self.stats.hot_keys(&request.route);
        let mut nodes = vec![self.node_id.clone()];
        let mut missing = Vec::new();
        if !request.local {
            let peers = self.peers();
            let answers = futures::future::join_all(
                peers
                    .iter()
                    .map(|(_, addr)| peer_hot_keys(addr.clone(), request.route.clone())),
            )
            .await;
            for ((node_id, _), answer) in peers.into_iter().zip(answers) {
                match answer {
                    Ok(summary) => {
                        merged = merged.merge(&summary, HOT_KEY_CAPACITY);
                        nodes.push(node_id);
                    }
                    Err(error) => {
                        tracing::debug!(node = %node_id, %error, "no hot keys from a member");
                        missing.push(node_id);
                    }
                }
            }
        }
        nodes.sort();
        missing.sort();
        Ok(Response::new(pb::HotKeysResponse {
            route: request.route,
            window_s: HOT_KEY_WINDOW.as_secs() as u32,
            keys: merged
                .top(limit)
                .iter()
                .map(|k| pb::HotKey {
                    key: k.key.clone(),
                    count: k.count,
                    error: k.error,
                })
                .collect(),
            total: merged.total,
            nodes,
            missing,
            floor: merged.floor,
        }))
    }
}
