//! An in-memory, single-node stand-in for a RouteMQ node, for the command tests: a routes
//! table with compare-and-set versions, publish that matches routes (first match wins) and
//! appends journal-route messages to per-key journals with duplicate suppression by message
//! id, paged journal reads, and a status naming itself as the only member (the shared
//! [`FakeCluster`] answering with this node's epoch). Faults can be
//! injected to check that `bench --verify` notices them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use routemq_client::bench::payload;
use routemq_client::proto::messages_server::{Messages, MessagesServer};
use routemq_client::proto::routes_server::{Routes, RoutesServer};
use routemq_client::proto::{
    DeleteRouteRequest, DeleteRouteResponse, GetRouteRequest, GetRouteResponse, ListRoutesRequest,
    ListRoutesResponse, PublishRequest, PutRouteRequest, ReadJournalRequest,
};
use routemq_client::spec::{effective_pattern, is_journal, key_of, topic_matches};
use routemq_client::{
    ClusterStatus, JournalEntry, Member, PublishResponse, PutRouteResponse, ReadJournalResponse, Route,
};
use routemq_testkit::cluster::{self, FakeCluster};
use tonic::{Request, Response, Status, Streaming};

/// Page size of journal reads without a limit (small, to exercise paging).
const PAGE: usize = 7;

/// A fault applied to bench messages of producer 0 with this sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Acknowledge without journaling.
    Lose(u64),
    /// Journal twice (bypassing duplicate suppression).
    Duplicate(u64),
    /// Journal after the producer's next message.
    Reorder(u64),
}

#[derive(Default)]
struct State {
    routes: BTreeMap<String, Route>,
    version: u64,
    epoch: u64,
    journals: HashMap<(String, String), Vec<JournalEntry>>,
    /// A message held back by a reorder fault.
    held: Option<(String, String, JournalEntry)>,
}

/// The fake node.
#[derive(Clone)]
pub struct Memory {
    addr: String,
    state: Arc<Mutex<State>>,
    fault: Option<Fault>,
}

impl Memory {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }
}

/// Starts a fake node on 127.0.0.1:0; answers its address.
pub async fn start(fault: Option<Fault>) -> String {
    let (listener, addr) = cluster::bind().await;
    let memory = Memory {
        addr: addr.clone(),
        state: Arc::new(Mutex::new(State {
            version: 10,
            epoch: 7,
            ..State::default()
        })),
        fault,
    };
    let status = {
        let memory = memory.clone();
        move || ClusterStatus {
            cluster_id: "c-1".into(),
            epoch: memory.state().epoch,
            raft_leader: "n1".into(),
            members: vec![Member {
                node_id: "n1".into(),
                grpc_addr: memory.addr.clone(),
                ..Member::default()
            }],
            answered_by: "n1".into(),
            ..ClusterStatus::default()
        }
    };
    let router = tonic::transport::Server::builder()
        .add_service(FakeCluster::with_status(status).into_server())
        .add_service(RoutesServer::new(memory.clone()))
        .add_service(MessagesServer::new(memory));
    // Served until the test's runtime ends.
    drop(cluster::serve(listener, router));
    addr
}

fn sorted(routes: &BTreeMap<String, Route>) -> Vec<Route> {
    let mut routes: Vec<Route> = routes.values().cloned().collect();
    routes.sort_by(|a, b| (a.priority, &a.name).cmp(&(b.priority, &b.name)));
    routes
}

fn check_version(current: Option<&Route>, expected: Option<u64>, name: &str) -> Result<(), Status> {
    match (expected, current) {
        (None, _) => Ok(()),
        (Some(0), None) => Ok(()),
        (Some(0), Some(route)) => Err(Status::failed_precondition(format!(
            "route {name:?} already exists (version {})",
            route.version
        ))),
        (Some(v), Some(route)) if route.version == v => Ok(()),
        (Some(v), Some(route)) => Err(Status::failed_precondition(format!(
            "route {name:?} is at version {}, not {v}",
            route.version
        ))),
        (Some(v), None) => Err(Status::failed_precondition(format!(
            "route {name:?} does not exist (expected version {v})"
        ))),
    }
}

#[tonic::async_trait]
impl Routes for Memory {
    async fn put_route(
        &self,
        request: Request<PutRouteRequest>,
    ) -> Result<Response<PutRouteResponse>, Status> {
        let request = request.into_inner();
        let mut route = request
            .route
            .ok_or_else(|| Status::invalid_argument("route is required"))?;
        if route.name.is_empty() || route.name.contains(' ') {
            return Err(Status::invalid_argument(format!(
                "route name {:?} is invalid",
                route.name
            )));
        }
        if route.pattern.contains("#/") {
            return Err(Status::invalid_argument(format!(
                "pattern {:?} is invalid: '#' must be the last level",
                route.pattern
            )));
        }
        let mut state = self.state();
        check_version(
            state.routes.get(&route.name),
            request.expected_version,
            &route.name,
        )?;
        state.version += 1;
        state.epoch += 1;
        route.version = state.version;
        state.routes.insert(route.name.clone(), route.clone());
        Ok(Response::new(PutRouteResponse {
            route: Some(route),
            epoch: state.epoch,
        }))
    }

    async fn get_route(
        &self,
        request: Request<GetRouteRequest>,
    ) -> Result<Response<GetRouteResponse>, Status> {
        let name = request.into_inner().name;
        Ok(Response::new(GetRouteResponse {
            route: self.state().routes.get(&name).cloned(),
        }))
    }

    async fn list_routes(
        &self,
        _: Request<ListRoutesRequest>,
    ) -> Result<Response<ListRoutesResponse>, Status> {
        Ok(Response::new(ListRoutesResponse {
            routes: sorted(&self.state().routes),
        }))
    }

    async fn delete_route(
        &self,
        request: Request<DeleteRouteRequest>,
    ) -> Result<Response<DeleteRouteResponse>, Status> {
        let request = request.into_inner();
        let mut state = self.state();
        if !state.routes.contains_key(&request.name) {
            return Err(Status::not_found(format!("no route named {:?}", request.name)));
        }
        check_version(
            state.routes.get(&request.name),
            request.expected_version,
            &request.name,
        )?;
        state.routes.remove(&request.name);
        state.epoch += 1;
        Ok(Response::new(DeleteRouteResponse { deleted: true }))
    }
}

fn append(journal: &mut Vec<JournalEntry>, mut entry: JournalEntry) {
    entry.offset = journal.len() as u64;
    journal.push(entry);
}

#[tonic::async_trait]
impl Messages for Memory {
    async fn publish(&self, request: Request<PublishRequest>) -> Result<Response<PublishResponse>, Status> {
        let request = request.into_inner();
        if request.topic.is_empty() || request.topic.contains(['+', '#']) {
            return Err(Status::invalid_argument(format!(
                "invalid topic {:?}",
                request.topic
            )));
        }
        let mut guard = self.state();
        let state = &mut *guard;
        let route = sorted(&state.routes)
            .into_iter()
            .find(|r| topic_matches(&effective_pattern(r), &request.topic))
            .ok_or_else(|| Status::not_found(format!("no route matches topic {:?}", request.topic)))?;
        let key = key_of(&route, &request.topic).unwrap_or_else(|| request.topic.clone());
        let epoch = state.epoch;
        if is_journal(&route) {
            let entry = JournalEntry {
                offset: 0,
                message_id: request.message_id.clone(),
                topic: request.topic.clone(),
                payload: request.payload.clone(),
                processed_by: "n1".into(),
                epoch,
                processed_at_unix_ms: 1_763_892_000_000,
                partition: 3,
            };
            let seq = payload::decode(&request.payload)
                .filter(|h| h.producer == 0)
                .map(|h| h.seq);
            let slot = (route.name.clone(), key.clone());
            let held = state.held.take();
            let journal = state.journals.entry(slot).or_default();
            let duplicate = journal.iter().any(|e| e.message_id == request.message_id);
            match (self.fault, seq) {
                (Some(Fault::Lose(s)), Some(seq)) if s == seq => {}
                (Some(Fault::Duplicate(s)), Some(seq)) if s == seq => {
                    append(journal, entry.clone());
                    append(journal, entry);
                }
                (Some(Fault::Reorder(s)), Some(seq)) if s == seq => {
                    state.held = Some((route.name.clone(), key.clone(), entry));
                }
                _ => {
                    if !duplicate {
                        append(journal, entry);
                    }
                    if let Some((route_name, held_key, entry)) = held {
                        append(state.journals.entry((route_name, held_key)).or_default(), entry);
                    }
                }
            }
        }
        Ok(Response::new(PublishResponse {
            request_id: request.request_id,
            message_id: request.message_id,
            route: route.name,
            key,
            partition: 3,
            processed_by: "n1".into(),
            epoch,
            error: String::new(),
            error_code: 0,
        }))
    }

    type PublishStreamStream = futures::stream::Empty<Result<PublishResponse, Status>>;

    async fn publish_stream(
        &self,
        _: Request<Streaming<PublishRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn read_journal(
        &self,
        request: Request<ReadJournalRequest>,
    ) -> Result<Response<ReadJournalResponse>, Status> {
        let request = request.into_inner();
        let state = self.state();
        if !state.routes.contains_key(&request.route) {
            return Err(Status::not_found(format!("no route named {:?}", request.route)));
        }
        let journal = state
            .journals
            .get(&(request.route.clone(), request.key.clone()))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let limit = if request.limit == 0 {
            PAGE
        } else {
            request.limit as usize
        };
        let from = (request.from_offset as usize).min(journal.len());
        let to = (from + limit).min(journal.len());
        Ok(Response::new(ReadJournalResponse {
            entries: journal[from..to].to_vec(),
            next_offset: to as u64,
            end: to == journal.len(),
        }))
    }
}
