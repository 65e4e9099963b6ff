//! In-process tests of the `Routes` and `Messages` calls of [`Client`] against scripted fake
//! servers on 127.0.0.1:0: leader following for route writes, final compare-and-set
//! mismatches, publish retries that keep the message id, final publish errors, journal paging.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use routemq_proto::v1::messages_server::{Messages, MessagesServer};
use routemq_proto::v1::routes_server::{Routes, RoutesServer};
use routemq_proto::v1::{
    DeleteRouteRequest, DeleteRouteResponse, GetRouteRequest, GetRouteResponse, JournalEntry,
    ListRoutesRequest, ListRoutesResponse, PublishRequest, PublishResponse, PutRouteRequest,
    PutRouteResponse, ReadConsistency, ReadJournalRequest, ReadJournalResponse, Route,
};
use tokio::net::TcpListener;
use tonic::metadata::MetadataValue;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::{Client, ClientError, ClientOptions};

type Behaviour = Box<dyn Fn(u32) -> Option<Status> + Send + Sync>;

/// A node that fails request n with `behaviour(n)` (None: answers), records publish message
/// ids and serves a journal of `journal_len` entries in pages of `page` entries.
struct Scripted {
    name: &'static str,
    calls: Arc<AtomicU32>,
    behaviour: Behaviour,
    ids: Arc<Mutex<Vec<String>>>,
    journal_len: u64,
    page: u64,
    /// Answer pages whose next offset does not move.
    stuck: bool,
}

impl Scripted {
    fn decide(&self) -> Result<(), Status> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        match (self.behaviour)(n) {
            Some(status) => Err(status),
            None => Ok(()),
        }
    }
}

#[tonic::async_trait]
impl Routes for Scripted {
    async fn put_route(
        &self,
        request: Request<PutRouteRequest>,
    ) -> Result<Response<PutRouteResponse>, Status> {
        self.decide()?;
        let mut route = request.into_inner().route.unwrap_or_default();
        route.version = 12;
        route.pattern = format!("{}@{}", route.pattern, self.name);
        Ok(Response::new(PutRouteResponse {
            route: Some(route),
            epoch: 9,
        }))
    }

    async fn get_route(
        &self,
        request: Request<GetRouteRequest>,
    ) -> Result<Response<GetRouteResponse>, Status> {
        self.decide()?;
        let request = request.into_inner();
        let route = (request.name == "known").then(|| Route {
            name: request.name,
            pattern: format!("answered-by/{}", self.name),
            ..Route::default()
        });
        Ok(Response::new(GetRouteResponse { route }))
    }

    async fn list_routes(
        &self,
        _: Request<ListRoutesRequest>,
    ) -> Result<Response<ListRoutesResponse>, Status> {
        self.decide()?;
        Ok(Response::new(ListRoutesResponse {
            routes: vec![Route {
                name: self.name.into(),
                ..Route::default()
            }],
        }))
    }

    async fn delete_route(
        &self,
        request: Request<DeleteRouteRequest>,
    ) -> Result<Response<DeleteRouteResponse>, Status> {
        self.decide()?;
        match request.into_inner().name.as_str() {
            "known" => Ok(Response::new(DeleteRouteResponse { deleted: true })),
            other => Err(Status::not_found(format!("no route named {other:?}"))),
        }
    }
}

#[tonic::async_trait]
impl Messages for Scripted {
    async fn publish(&self, request: Request<PublishRequest>) -> Result<Response<PublishResponse>, Status> {
        let request = request.into_inner();
        self.ids.lock().unwrap().push(request.message_id.clone());
        self.decide()?;
        Ok(Response::new(PublishResponse {
            message_id: request.message_id,
            route: "r".into(),
            key: "k".into(),
            processed_by: self.name.into(),
            ..PublishResponse::default()
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
        self.decide()?;
        let request = request.into_inner();
        let limit = if request.limit == 0 {
            self.page
        } else {
            u64::from(request.limit)
        };
        let from = request.from_offset.min(self.journal_len);
        let to = (from + limit).min(self.journal_len);
        let entries = (from..to)
            .map(|offset| JournalEntry {
                offset,
                message_id: format!("m{offset}"),
                ..JournalEntry::default()
            })
            .collect();
        Ok(Response::new(ReadJournalResponse {
            entries,
            next_offset: if self.stuck { from } else { to },
            end: to == self.journal_len && !self.stuck,
        }))
    }
}

struct Node {
    addr: String,
    calls: Arc<AtomicU32>,
    ids: Arc<Mutex<Vec<String>>>,
}

impl Node {
    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }

    fn ids(&self) -> Vec<String> {
        self.ids.lock().unwrap().clone()
    }
}

async fn node_with(
    name: &'static str,
    behaviour: Behaviour,
    journal_len: u64,
    page: u64,
    stuck: bool,
) -> Node {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let calls = Arc::new(AtomicU32::new(0));
    let ids = Arc::new(Mutex::new(Vec::new()));
    let fake = Arc::new(Scripted {
        name,
        calls: calls.clone(),
        behaviour,
        ids: ids.clone(),
        journal_len,
        page,
        stuck,
    });
    tokio::spawn(
        Server::builder()
            .add_service(RoutesServer::from_arc(fake.clone()))
            .add_service(MessagesServer::from_arc(fake))
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    Node { addr, calls, ids }
}

async fn node(name: &'static str, behaviour: Behaviour) -> Node {
    node_with(name, behaviour, 0, 2, false).await
}

fn ok() -> Behaviour {
    Box::new(|_| None)
}

fn not_leader(leader_addr: &str) -> Status {
    let mut status = Status::failed_precondition("not the Raft leader");
    status.metadata_mut().insert(
        crate::LEADER_ADDR_METADATA,
        MetadataValue::try_from(leader_addr).unwrap(),
    );
    status
}

fn quick() -> ClientOptions {
    ClientOptions::default()
        .with_connect_timeout(Duration::from_millis(500))
        .with_request_timeout(Duration::from_secs(2))
        .with_total_timeout(Duration::from_secs(5))
        .with_backoff(Duration::from_millis(10), Duration::from_millis(50))
}

#[tokio::test]
async fn route_writes_follow_the_leader() {
    let leader = node("leader", ok()).await;
    let hint = leader.addr.clone();
    let follower = node("follower", Box::new(move |_| Some(not_leader(&hint)))).await;
    let client = Client::connect_with([follower.addr.clone()], quick())
        .await
        .unwrap();

    let put = client
        .put_route(
            Route {
                name: "r".into(),
                pattern: "a/{k}".into(),
                ..Route::default()
            },
            Some(0),
        )
        .await
        .unwrap();
    let route = put.route.unwrap();
    assert_eq!(
        (route.pattern.as_str(), route.version, put.epoch),
        ("a/{k}@leader", 12, 9)
    );
    assert_eq!((follower.calls(), leader.calls()), (1, 1));
    // The next write goes straight to the leader; so does a linearizable read.
    assert!(client.delete_route("known", Some(12)).await.unwrap());
    let got = client
        .get_route("known", ReadConsistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(got.unwrap().pattern, "answered-by/leader");
    assert_eq!((follower.calls(), leader.calls()), (1, 3));
}

#[tokio::test]
async fn a_version_mismatch_is_final() {
    let node_a = node(
        "a",
        Box::new(|_| {
            Some(Status::failed_precondition(
                "route \"r\" is at version 14, not 12",
            ))
        }),
    )
    .await;
    let node_b = node("b", ok()).await;
    let client = Client::connect_with([node_a.addr.clone(), node_b.addr.clone()], quick())
        .await
        .unwrap();
    let err = client.put_route(Route::default(), Some(12)).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::FailedPrecondition));
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("version 14, not 12"), "{err}");
    let err = client.delete_route("r", Some(12)).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::FailedPrecondition));
    assert_eq!((node_a.calls(), node_b.calls()), (2, 0));
}

#[tokio::test]
async fn route_reads_and_missing_routes() {
    let n = node("n1", ok()).await;
    let client = Client::connect_with([n.addr.clone()], quick()).await.unwrap();
    assert!(client
        .get_route("nope", ReadConsistency::Local)
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        client.list_routes(ReadConsistency::Local).await.unwrap()[0].name,
        "n1"
    );
    // Deleting a route that does not exist answers false, not an error.
    assert!(!client.delete_route("nope", None).await.unwrap());
}

#[tokio::test]
async fn publish_retries_elsewhere_with_the_same_message_id() {
    let down = node("down", Box::new(|_| Some(Status::unavailable("no quorum")))).await;
    let up = node("up", ok()).await;
    let client = Client::connect_with([down.addr.clone(), up.addr.clone()], quick())
        .await
        .unwrap();

    let published = client.publish("a/b", b"x".to_vec(), None).await.unwrap();
    assert_eq!(published.processed_by, "up");
    let generated = published.message_id.clone();
    assert!(uuid::Uuid::parse_str(&generated).is_ok(), "{generated}");
    assert_eq!(down.ids(), vec![generated.clone()]);
    assert_eq!(up.ids(), vec![generated]);

    // A given id is kept; the next publish starts at the node that answered.
    let published = client
        .publish("a/b", b"y".to_vec(), Some("m-7".into()))
        .await
        .unwrap();
    assert_eq!(published.message_id, "m-7");
    assert_eq!(down.calls(), 1);
    // An empty id counts as none.
    let published = client
        .publish("a/b", b"z".to_vec(), Some(String::new()))
        .await
        .unwrap();
    assert!(!published.message_id.is_empty());
}

#[tokio::test]
async fn publish_errors_that_are_final() {
    for status in [
        Status::not_found("no route matches topic \"x/y\""),
        Status::invalid_argument("payload of 2000000 bytes is over the limit of 1048576"),
        Status::internal("handler \"billing\" failed: boom"),
    ] {
        let code = status.code();
        let status = Arc::new(status);
        let first = node(
            "first",
            Box::new(move |_| Some(Status::new(status.code(), status.message()))),
        )
        .await;
        let second = node("second", ok()).await;
        let client = Client::connect_with([first.addr.clone(), second.addr.clone()], quick())
            .await
            .unwrap();
        let err = client.publish("x/y", b"p".to_vec(), None).await.unwrap_err();
        assert_eq!(err.code(), Some(code));
        assert!(!err.is_retryable());
        assert!(matches!(err, ClientError::Rpc { ref addr, .. } if *addr == first.addr));
        assert_eq!((first.calls(), second.calls()), (1, 0), "{code:?}");
    }
}

#[tokio::test]
async fn journals_are_read_page_by_page() {
    let n = node_with("n1", ok(), 7, 3, false).await;
    let client = Client::connect_with([n.addr.clone()], quick()).await.unwrap();
    let all = client.read_journal_all("r", "k").await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.offset).collect::<Vec<_>>(),
        (0..7).collect::<Vec<_>>()
    );
    assert_eq!(n.calls(), 3);
    let (rest, next) = client.read_journal_from("r", "k", 5).await.unwrap();
    assert_eq!((rest.len(), next), (2, 7));
    let page = client.read_journal("r", "k", 2, 2).await.unwrap();
    assert_eq!((page.entries.len(), page.next_offset, page.end), (2, 4, false));
    // Past the end: nothing, and the offset stays.
    let (none, next) = client.read_journal_from("r", "k", 7).await.unwrap();
    assert_eq!((none.len(), next), (0, 7));
}

#[tokio::test]
async fn a_journal_that_does_not_advance_is_an_invalid_response() {
    let n = node_with("n1", ok(), 7, 3, true).await;
    let client = Client::connect_with([n.addr.clone()], quick()).await.unwrap();
    let err = client.read_journal_all("r", "k").await.unwrap_err();
    assert!(matches!(err, ClientError::InvalidResponse { .. }), "{err:?}");
    assert!(err.to_string().contains("next offset 0"), "{err}");
}
