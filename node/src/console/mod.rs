//! The web console at `/ui`: one page (`index.html`, embedded in the binary; no build step)
//! and the JSON it polls under `/ui/api/`.
//!
//! Promise: the console shows what the gRPC API says. Every JSON answer is made by calling
//! this node's own gRPC service implementations in process (`Cluster`, `Routes`, `Messages`,
//! `Stats`) with local reads, then reshaped for the page; nothing is computed twice. Read-only:
//! the console has no endpoint that changes anything.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use routemq_proto::v1 as pb;
use routemq_proto::v1::messages_server::Messages as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The page itself.
const INDEX_HTML: &str = include_str!("index.html");
/// Journal entries a key lookup shows (the last ones).
const LOOKUP_ENTRIES: usize = 10;
/// Journal pages a key lookup reads at most to find the last entries.
const LOOKUP_MAX_PAGES: usize = 20;

/// The services the console reads, shared with the gRPC server.
#[derive(Clone)]
pub struct Console {
    /// `routemq.v1.Cluster`.
    pub cluster: Arc<dyn pb::cluster_server::Cluster>,
    /// `routemq.v1.Routes`.
    pub routes: Arc<dyn pb::routes_server::Routes>,
    /// `routemq.v1.Messages` (a concrete type: the trait has a stream type).
    pub messages: Arc<crate::api::messages::MessagesApi>,
    /// `routemq.v1.Stats`.
    pub stats: Arc<dyn pb::stats_server::Stats>,
}

/// A console request that failed: the gRPC status, as JSON `{ "error": ... }`.
struct ConsoleError(tonic::Status);

impl From<tonic::Status> for ConsoleError {
    fn from(status: tonic::Status) -> Self {
        Self(status)
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let code = match self.0.code() {
            tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
            tonic::Code::NotFound => StatusCode::NOT_FOUND,
            tonic::Code::Unavailable | tonic::Code::FailedPrecondition => StatusCode::SERVICE_UNAVAILABLE,
            tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (code, Json(json!({ "error": self.0.message() }))).into_response()
    }
}

type ConsoleResult = Result<Json<Value>, ConsoleError>;

fn local<T>(message: T) -> tonic::Request<T> {
    tonic::Request::new(message)
}

/// The routes of the console, to merge into the HTTP server's router.
pub fn router(console: Console) -> Router {
    Router::new()
        .route("/ui", get(index))
        .route("/ui/", get(index))
        .route("/ui/api/cluster", get(cluster))
        .route("/ui/api/routes", get(routes))
        .route("/ui/api/series", get(series))
        .route("/ui/api/hotkeys", get(hot_keys))
        .route("/ui/api/locate", get(locate))
        .with_state(console)
}

async fn index() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-cache")], Html(INDEX_HTML))
}

/// Runs of consecutive partitions with one owner: `[first, count, owner]`.
fn owner_runs(table: &pb::PartitionTable) -> Vec<(u32, u32, String)> {
    let mut runs: Vec<(u32, u32, String)> = Vec::new();
    for (partition, &index) in table.owners.iter().enumerate() {
        let owner = table.nodes.get(index as usize).cloned().unwrap_or_default();
        match runs.last_mut() {
            Some((_, count, last)) if *last == owner => *count += 1,
            _ => runs.push((partition as u32, 1, owner)),
        }
    }
    runs
}

fn raft_role(member: &pb::Member, leader: &str) -> &'static str {
    if !leader.is_empty() && member.node_id == leader {
        return "leader";
    }
    match pb::RaftRole::try_from(member.raft_role) {
        Ok(pb::RaftRole::Voter) => "voter",
        Ok(pb::RaftRole::Learner) => "learner",
        _ => "none",
    }
}

async fn cluster(State(console): State<Console>) -> ConsoleResult {
    let consistency = pb::ReadConsistency::Local as i32;
    let status = console
        .cluster
        .get_status(local(pb::StatusRequest { consistency }))
        .await?
        .into_inner();
    let table = console
        .cluster
        .get_partitions(local(pb::PartitionsRequest { consistency }))
        .await?
        .into_inner();
    let members: Vec<Value> = status
        .members
        .iter()
        .map(|m| {
            json!({
                "node_id": m.node_id,
                "state": if m.ring_state.is_empty() { m.state.clone() } else { m.ring_state.clone() },
                "gossip_state": m.state,
                "alive": pb::Liveness::try_from(m.liveness) == Ok(pb::Liveness::Alive),
                "raft": raft_role(m, &status.raft_leader),
                "partitions_owned": m.partitions,
                "grpc_addr": m.grpc_addr,
                "http_addr": m.http_addr,
            })
        })
        .collect();
    Ok(Json(json!({
        "node_id": status.answered_by,
        "cluster_id": status.cluster_id,
        "epoch": status.epoch,
        "leader": status.raft_leader,
        "term": status.raft_term,
        "partitions": table.partition_count,
        "table_epoch": table.epoch,
        "members": members,
        "owners": owner_runs(&table),
    })))
}

async fn routes(State(console): State<Console>) -> ConsoleResult {
    let listed = console
        .routes
        .list_routes(local(pb::ListRoutesRequest {
            consistency: pb::ReadConsistency::Local as i32,
        }))
        .await?
        .into_inner();
    let routes: Vec<Value> = listed
        .routes
        .iter()
        .map(|r| {
            let mode = match pb::RouteMode::try_from(r.mode) {
                Ok(pb::RouteMode::Shared) => format!("shared ({} workers)", r.worker_count),
                _ => "ordered".to_string(),
            };
            let handler = match r.handler.as_ref().and_then(|h| h.kind.as_ref()) {
                Some(pb::handler::Kind::Journal(_)) => "journal".to_string(),
                Some(pb::handler::Kind::Republish(p)) => format!("republish:{}", p.topic),
                Some(pb::handler::Kind::Custom(name)) => format!("custom:{name}"),
                _ => "log".to_string(),
            };
            json!({ "name": r.name, "pattern": r.pattern, "mode": mode, "handler": handler })
        })
        .collect();
    Ok(Json(json!({ "routes": routes })))
}

async fn series(State(console): State<Console>) -> ConsoleResult {
    let answer = console
        .stats
        .get_series(local(pb::SeriesRequest { local: false }))
        .await?
        .into_inner();
    let routes: serde_json::Map<String, Value> = route_series(&answer.nodes, answer.interval_s)
        .into_iter()
        .map(|(route, points)| {
            let points: Vec<Value> = points
                .into_iter()
                .map(|p| json!({ "t": p.at_unix_ms, "processed_per_s": p.processed_per_s, "p99_ms": p.p99_ms }))
                .collect();
            (route, Value::Array(points))
        })
        .collect();
    let mut nodes = serde_json::Map::new();
    let mut leases = serde_json::Map::new();
    let mut errors = serde_json::Map::new();
    for node in answer.nodes {
        let samples: Vec<Value> = node
            .samples
            .iter()
            .map(|s| {
                json!({
                    "t": s.at_unix_ms,
                    "processed_per_s": s.processed_per_s,
                    "received_per_s": s.received_per_s,
                    "p99_ms": s.p99_ms,
                })
            })
            .collect();
        if node.error.is_empty() {
            leases.insert(
                node.node_id.clone(),
                json!({ "valid": node.lease_valid, "remaining_ms": node.lease_remaining_ms, "problem": node.lease_problem }),
            );
        } else {
            errors.insert(node.node_id.clone(), Value::String(node.error));
        }
        nodes.insert(node.node_id, Value::Array(samples));
    }
    Ok(Json(json!({
        "interval_s": answer.interval_s,
        "nodes": nodes,
        "leases": leases,
        "routes": routes,
        "errors": errors,
    })))
}

/// One point of a route's series over the whole cluster.
#[derive(Debug, Clone, PartialEq)]
struct RoutePoint {
    at_unix_ms: u64,
    /// Sum over the nodes.
    processed_per_s: f64,
    /// The largest of the nodes' p99s (an upper bound of the cluster's p99).
    p99_ms: Option<f64>,
}

/// Every route's series over the cluster: the nodes' samples that fall in the same interval
/// (their clocks and sampling phases differ) are added up.
fn route_series(
    nodes: &[pb::NodeSeries],
    interval_s: u32,
) -> std::collections::BTreeMap<String, Vec<RoutePoint>> {
    let interval_ms = u64::from(interval_s.max(1)) * 1000;
    let mut by_route: std::collections::BTreeMap<String, std::collections::BTreeMap<u64, RoutePoint>> =
        Default::default();
    for node in nodes {
        for sample in &node.samples {
            let slot = sample.at_unix_ms / interval_ms;
            for r in &sample.routes {
                let point = by_route
                    .entry(r.route.clone())
                    .or_default()
                    .entry(slot)
                    .or_insert(RoutePoint {
                        at_unix_ms: (slot + 1) * interval_ms,
                        processed_per_s: 0.0,
                        p99_ms: None,
                    });
                point.processed_per_s += r.processed_per_s;
                point.p99_ms = match (point.p99_ms, r.p99_ms) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
            }
        }
    }
    by_route
        .into_iter()
        .map(|(route, points)| (route, points.into_values().collect()))
        .collect()
}

/// `?route=R[&limit=N]`.
#[derive(Debug, Deserialize)]
struct HotKeysQuery {
    route: String,
    limit: Option<u32>,
}

async fn hot_keys(State(console): State<Console>, Query(query): Query<HotKeysQuery>) -> ConsoleResult {
    let answer = console
        .stats
        .get_hot_keys(local(pb::HotKeysRequest {
            route: query.route,
            limit: query.limit.unwrap_or(10),
            local: false,
        }))
        .await?
        .into_inner();
    let window = f64::from(answer.window_s.max(1));
    let keys: Vec<Value> = answer
        .keys
        .iter()
        .map(|k| json!({ "key": k.key, "count": k.count, "error": k.error, "rate_per_s": k.count as f64 / window }))
        .collect();
    Ok(Json(json!({
        "route": answer.route,
        "window_s": answer.window_s,
        "keys": keys,
        "total": answer.total,
        "nodes": answer.nodes.len(),
        "missing": answer.missing,
        "floor": answer.floor,
    })))
}

/// `?key=K[&route=R]`.
#[derive(Debug, Deserialize)]
struct LocateQuery {
    key: String,
    #[serde(default)]
    route: String,
}

#[derive(Debug, Serialize)]
struct EntryView {
    offset: u64,
    message_id: String,
    payload: String,
    processed_by: String,
    epoch: u64,
}

async fn locate(State(console): State<Console>, Query(query): Query<LocateQuery>) -> ConsoleResult {
    let found = console
        .cluster
        .locate(local(pb::LocateRequest {
            key: query.key.clone(),
            consistency: pb::ReadConsistency::Local as i32,
        }))
        .await?
        .into_inner();
    let mut answer = json!({
        "key": found.key,
        "partition": found.partition,
        "owner": found.owner,
        "owner_grpc_addr": found.owner_grpc_addr,
        "epoch": found.epoch,
    });
    if !query.route.is_empty() {
        let (entries, complete) = journal_tail(&console, &query.route, &query.key).await?;
        answer["journal"] = serde_json::to_value(entries).unwrap_or(Value::Null);
        answer["journal_complete"] = Value::Bool(complete);
    }
    Ok(Json(answer))
}

/// The last [`LOOKUP_ENTRIES`] entries of a key's journal, read page by page from the start
/// (the API reads forward only); false when the journal is longer than the pages read.
async fn journal_tail(
    console: &Console,
    route: &str,
    key: &str,
) -> Result<(Vec<EntryView>, bool), ConsoleError> {
    let mut tail: std::collections::VecDeque<EntryView> = std::collections::VecDeque::new();
    let mut from = 0;
    for _ in 0..LOOKUP_MAX_PAGES {
        let page = console
            .messages
            .read_journal(local(pb::ReadJournalRequest {
                route: route.to_string(),
                key: key.to_string(),
                from_offset: from,
                limit: 0,
            }))
            .await?
            .into_inner();
        for e in page.entries {
            if tail.len() == LOOKUP_ENTRIES {
                tail.pop_front();
            }
            tail.push_back(EntryView {
                offset: e.offset,
                message_id: e.message_id,
                payload: String::from_utf8_lossy(&e.payload).into_owned(),
                processed_by: e.processed_by,
                epoch: e.epoch,
            });
        }
        if page.end || page.next_offset <= from {
            return Ok((tail.into(), true));
        }
        from = page.next_offset;
    }
    Ok((tail.into(), false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_runs_compress_the_table() {
        let table = pb::PartitionTable {
            epoch: 3,
            partition_count: 6,
            vnodes_per_weight: 1,
            nodes: vec!["n1".into(), "n2".into()],
            owners: vec![0, 0, 1, 1, 1, 0],
            answered_by: "n1".into(),
        };
        assert_eq!(
            owner_runs(&table),
            vec![
                (0, 2, "n1".to_string()),
                (2, 3, "n2".to_string()),
                (5, 1, "n1".to_string())
            ]
        );
    }

    #[test]
    fn route_series_add_up_the_nodes_in_each_interval() {
        let sample = |at: u64, route: &str, rate: f64, p99: Option<f64>| pb::Sample {
            at_unix_ms: at,
            routes: vec![pb::RouteSample {
                route: route.into(),
                processed_per_s: rate,
                p99_ms: p99,
            }],
            ..Default::default()
        };
        let node = |samples| pb::NodeSeries {
            node_id: "n".into(),
            samples,
            ..Default::default()
        };
        let nodes = vec![
            node(vec![
                sample(10_100, "r", 2.0, Some(1.0)),
                sample(15_100, "r", 4.0, None),
            ]),
            node(vec![
                sample(12_900, "r", 3.0, Some(5.0)),
                sample(13_000, "q", 1.0, None),
            ]),
        ];
        let series = route_series(&nodes, 5);
        assert_eq!(
            series["r"],
            vec![
                RoutePoint {
                    at_unix_ms: 15_000,
                    processed_per_s: 5.0,
                    p99_ms: Some(5.0)
                },
                RoutePoint {
                    at_unix_ms: 20_000,
                    processed_per_s: 4.0,
                    p99_ms: None
                },
            ]
        );
        assert_eq!(series["q"].len(), 1);
    }

    #[test]
    fn the_page_polls_only_endpoints_the_router_serves() {
        for path in [
            "/ui/api/cluster",
            "/ui/api/routes",
            "/ui/api/series",
            "/ui/api/hotkeys",
            "/ui/api/locate",
        ] {
            assert!(INDEX_HTML.contains(path), "{path} not used by the page");
        }
    }
}
