//! In-process tests of [`Client`] against fake `routemq.v1.Cluster` servers on 127.0.0.1:0:
//! leader following, waiting out an election, failover to learned members, timeouts, final
//! errors and giving up.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use routemq_proto::v1::cluster_server::{Cluster, ClusterServer};
use routemq_proto::v1::{
    ClusterStatus, JoinRequest, JoinResponse, LocateRequest, LocateResponse, Member, PartitionTable,
    PartitionsRequest, ReadConsistency, RemoveNodeRequest, RemoveNodeResponse, StatusRequest,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::metadata::MetadataValue;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic::{Code, Request, Response, Status};

use crate::{Client, ClientError, ClientOptions};

/// One request as the fake sees it.
#[derive(Debug, Clone, Copy)]
struct Call {
    /// 0 for the first request this server received, 1 for the second...
    n: u32,
    consistency: ReadConsistency,
}

/// What the fake does with a request.
enum Action {
    Answer,
    Fail(Status),
    Hang,
}

type Behaviour = Box<dyn Fn(Call) -> Action + Send + Sync>;

struct Fake {
    name: String,
    calls: Arc<AtomicU32>,
    behaviour: Behaviour,
    members: Vec<Member>,
    table: PartitionTable,
}

impl Fake {
    async fn decide(&self, consistency: i32) -> Result<(), Status> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let consistency = ReadConsistency::try_from(consistency).unwrap_or(ReadConsistency::Linearizable);
        match (self.behaviour)(Call { n, consistency }) {
            Action::Answer => Ok(()),
            Action::Fail(status) => Err(status),
            Action::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Err(Status::internal("woke up"))
            }
        }
    }
}

#[tonic::async_trait]
impl Cluster for Fake {
    async fn get_status(&self, request: Request<StatusRequest>) -> Result<Response<ClusterStatus>, Status> {
        let consistency = request.into_inner().consistency;
        self.decide(consistency).await?;
        Ok(Response::new(ClusterStatus {
            cluster_id: "c1".into(),
            epoch: 7,
            members: self.members.clone(),
            answered_by: self.name.clone(),
            consistency,
            ..ClusterStatus::default()
        }))
    }

    async fn get_partitions(
        &self,
        request: Request<PartitionsRequest>,
    ) -> Result<Response<PartitionTable>, Status> {
        self.decide(request.into_inner().consistency).await?;
        Ok(Response::new(self.table.clone()))
    }

    async fn locate(&self, request: Request<LocateRequest>) -> Result<Response<LocateResponse>, Status> {
        let request = request.into_inner();
        self.decide(request.consistency).await?;
        Ok(Response::new(LocateResponse {
            key: request.key,
            partition: 3,
            owner: self.name.clone(),
            owner_grpc_addr: String::new(),
            epoch: 7,
        }))
    }

    async fn remove_node(
        &self,
        _request: Request<RemoveNodeRequest>,
    ) -> Result<Response<RemoveNodeResponse>, Status> {
        self.decide(ReadConsistency::Linearizable as i32).await?;
        Ok(Response::new(RemoveNodeResponse { epoch: 8 }))
    }

    async fn join(&self, _request: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn leave(
        &self,
        _: Request<routemq_proto::v1::LeaveRequest>,
    ) -> Result<Response<routemq_proto::v1::LeaveResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn renew_lease(
        &self,
        _: Request<routemq_proto::v1::RenewLeaseRequest>,
    ) -> Result<Response<routemq_proto::v1::RenewLeaseResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

/// A bound but not yet serving address.
struct Bound {
    listener: TcpListener,
    addr: String,
}

async fn bind() -> Bound {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    Bound { listener, addr }
}

/// An address where nothing listens.
async fn dead_addr() -> String {
    bind().await.addr
}

struct Running {
    addr: String,
    calls: Arc<AtomicU32>,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }

    async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // Graceful shutdown waits for requests in flight; a hanging one is cut short.
        if tokio::time::timeout(Duration::from_secs(2), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}

fn serve(bound: Bound, name: &str, members: Vec<Member>, behaviour: Behaviour) -> Running {
    serve_with_table(bound, name, members, PartitionTable::default(), behaviour)
}

fn serve_with_table(
    bound: Bound,
    name: &str,
    members: Vec<Member>,
    table: PartitionTable,
    behaviour: Behaviour,
) -> Running {
    let calls = Arc::new(AtomicU32::new(0));
    let fake = Fake {
        name: name.to_string(),
        calls: calls.clone(),
        behaviour,
        members,
        table,
    };
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        Server::builder()
            .add_service(ClusterServer::new(fake))
            .serve_with_incoming_shutdown(TcpIncoming::from(bound.listener), async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    Running {
        addr: bound.addr,
        calls,
        shutdown: Some(tx),
        task,
    }
}

fn member(id: &str, grpc: &str) -> Member {
    Member {
        node_id: id.into(),
        grpc_addr: grpc.into(),
        ..Member::default()
    }
}

fn not_leader(leader_addr: Option<&str>) -> Status {
    let mut status = Status::failed_precondition("not the Raft leader");
    if let Some(addr) = leader_addr {
        status.metadata_mut().insert(
            crate::LEADER_ADDR_METADATA,
            MetadataValue::try_from(addr).unwrap(),
        );
    }
    status
}

fn always_ok() -> Behaviour {
    Box::new(|_| Action::Answer)
}

/// Fast options for tests.
fn quick() -> ClientOptions {
    ClientOptions::default()
        .with_connect_timeout(Duration::from_millis(500))
        .with_request_timeout(Duration::from_secs(2))
        .with_total_timeout(Duration::from_secs(5))
        .with_backoff(Duration::from_millis(10), Duration::from_millis(50))
}

#[tokio::test]
async fn follows_the_leader_hint_from_a_follower() {
    let (follower, leader) = (bind().await, bind().await);
    let leader_addr = leader.addr.clone();
    let follower = serve(
        follower,
        "follower",
        vec![],
        Box::new(move |call| match call.consistency {
            ReadConsistency::Linearizable => Action::Fail(not_leader(Some(&format!("http://{leader_addr}")))),
            ReadConsistency::Local => Action::Answer,
        }),
    );
    let leader = serve(leader, "leader", vec![], always_ok());

    let client = Client::connect_with([follower.addr.clone()], quick())
        .await
        .unwrap();
    let status = client.status(ReadConsistency::Linearizable).await.unwrap();
    assert_eq!(status.answered_by, "leader");
    assert_eq!((follower.calls(), leader.calls()), (1, 1));
    assert_eq!(client.leader_addr().as_deref(), Some(leader.addr.as_str()));

    // The next leader-bound call goes straight to the leader.
    let removed = client.remove_node("n3").await.unwrap();
    assert_eq!(removed.epoch, 8);
    assert_eq!((follower.calls(), leader.calls()), (1, 2));

    // A local read is served by the last node that answered, the leader.
    let status = client.status(ReadConsistency::Local).await.unwrap();
    assert_eq!(status.answered_by, "leader");
    follower.stop().await;
    leader.stop().await;
}

#[tokio::test]
async fn local_reads_are_answered_by_a_follower() {
    let follower = serve(
        bind().await,
        "follower",
        vec![],
        Box::new(|call| match call.consistency {
            ReadConsistency::Linearizable => Action::Fail(not_leader(None)),
            ReadConsistency::Local => Action::Answer,
        }),
    );
    let client = Client::connect_with([follower.addr.clone()], quick())
        .await
        .unwrap();
    let located = client.locate("device-42", ReadConsistency::Local).await.unwrap();
    assert_eq!(
        (located.key.as_str(), located.owner.as_str()),
        ("device-42", "follower")
    );
    assert_eq!(follower.calls(), 1);
    follower.stop().await;
}

#[tokio::test]
async fn waits_out_an_election() {
    // No leader for the first three requests, then this node is elected.
    let node = serve(
        bind().await,
        "n1",
        vec![],
        Box::new(|call| {
            if call.n < 3 {
                Action::Fail(not_leader(None))
            } else {
                Action::Answer
            }
        }),
    );
    let client = Client::connect_with([node.addr.clone()], quick()).await.unwrap();
    let status = client.status(ReadConsistency::Linearizable).await.unwrap();
    assert_eq!(status.answered_by, "n1");
    assert_eq!(node.calls(), 4);
    node.stop().await;
}

#[tokio::test]
async fn skips_unreachable_seeds() {
    let dead = dead_addr().await;
    let node = serve(bind().await, "n1", vec![], always_ok());
    let client = Client::connect_with([dead.clone(), node.addr.clone()], quick())
        .await
        .unwrap();
    assert_eq!(
        client.status(ReadConsistency::Local).await.unwrap().answered_by,
        "n1"
    );

    // A lazy client whose first seed is dead moves on as well.
    let lazy = Client::new([dead, node.addr.clone()], quick()).unwrap();
    assert_eq!(
        lazy.status(ReadConsistency::Linearizable)
            .await
            .unwrap()
            .answered_by,
        "n1"
    );
    node.stop().await;
}

#[tokio::test]
async fn fails_over_to_members_learned_from_status() {
    let (a, b) = (bind().await, bind().await);
    let members = vec![member("a", &a.addr), member("b", &b.addr)];
    let a = serve(a, "a", members.clone(), always_ok());
    let b = serve(b, "b", members, always_ok());

    let client = Client::connect_with([a.addr.clone()], quick()).await.unwrap();
    assert_eq!(
        client.status(ReadConsistency::Local).await.unwrap().answered_by,
        "a"
    );
    assert_eq!(client.known_addrs(), vec![a.addr.clone(), b.addr.clone()]);

    a.stop().await;
    assert_eq!(
        client.status(ReadConsistency::Local).await.unwrap().answered_by,
        "b"
    );
    b.stop().await;
}

#[tokio::test]
async fn a_hanging_node_is_abandoned_after_the_request_timeout() {
    let hanging = serve(bind().await, "hanging", vec![], Box::new(|_| Action::Hang));
    let node = serve(bind().await, "n1", vec![], always_ok());
    let options = quick().with_request_timeout(Duration::from_millis(200));
    let client = Client::connect_with([hanging.addr.clone(), node.addr.clone()], options)
        .await
        .unwrap();
    let started = Instant::now();
    assert_eq!(
        client.status(ReadConsistency::Local).await.unwrap().answered_by,
        "n1"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    hanging.stop().await;
    node.stop().await;
}

#[tokio::test]
async fn final_errors_are_returned_at_once() {
    let node = serve(
        bind().await,
        "n1",
        vec![],
        Box::new(|call| match call.n {
            0 => Action::Fail(Status::not_found("node \"n9\" is not a member of the cluster")),
            _ => Action::Fail(Status::failed_precondition(
                "cannot remove \"n1\": it is the last member of the cluster",
            )),
        }),
    );
    let other = serve(bind().await, "other", vec![], always_ok());
    let client = Client::connect_with([node.addr.clone(), other.addr.clone()], quick())
        .await
        .unwrap();

    let err = client.remove_node("n9").await.unwrap_err();
    assert_eq!(err.code(), Some(Code::NotFound));
    assert!(!err.is_retryable());
    assert!(matches!(&err, ClientError::Rpc { addr, .. } if *addr == node.addr));

    let err = client.remove_node("n1").await.unwrap_err();
    assert_eq!(err.code(), Some(Code::FailedPrecondition));
    assert!(!err.is_retryable());
    assert_eq!((node.calls(), other.calls()), (2, 0));
    node.stop().await;
    other.stop().await;
}

#[tokio::test]
async fn gives_up_with_the_last_answer_when_no_node_can_serve() {
    let node = serve(
        bind().await,
        "n1",
        vec![],
        Box::new(|_| Action::Fail(Status::unavailable("config unavailable: no quorum"))),
    );
    let options = quick().with_total_timeout(Duration::from_millis(300));
    let client = Client::connect_with([node.addr.clone()], options).await.unwrap();
    let started = Instant::now();
    let err = client.status(ReadConsistency::Linearizable).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert!(err.is_retryable());
    match &err {
        ClientError::Rpc { addr, status } => {
            assert_eq!(addr, &node.addr);
            assert_eq!(status.code(), Code::Unavailable);
        }
        other => panic!("expected Rpc, got {other:?}"),
    }
    assert!(node.calls() > 1, "retried: {}", node.calls());
    assert!(err.to_string().contains("no quorum"), "{err}");
    node.stop().await;
}

#[tokio::test]
async fn max_attempts_bounds_a_call() {
    let node = serve(
        bind().await,
        "n1",
        vec![],
        Box::new(|_| Action::Fail(Status::unavailable("shutting down"))),
    );
    let options = quick().with_max_attempts(3);
    let client = Client::connect_with([node.addr.clone()], options).await.unwrap();
    client.status(ReadConsistency::Local).await.unwrap_err();
    assert_eq!(node.calls(), 3);
    node.stop().await;
}

#[tokio::test]
async fn no_reachable_node_names_the_addresses() {
    let (dead1, dead2) = (dead_addr().await, dead_addr().await);
    let err = Client::connect_with([dead1.clone(), dead2.clone()], quick())
        .await
        .unwrap_err();
    match &err {
        ClientError::NoReachableNode { tried, .. } => {
            assert_eq!(tried, &vec![dead1.clone(), dead2.clone()])
        }
        other => panic!("expected NoReachableNode, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        format!("no RouteMQ node reachable at {dead1}, {dead2} (connection refused)")
    );

    // The same through a lazy client's call, bounded by the total timeout.
    let options = quick().with_total_timeout(Duration::from_millis(300));
    let client = Client::new([dead1.clone()], options).unwrap();
    let started = Instant::now();
    let err = client.partitions(ReadConsistency::Local).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert!(matches!(&err, ClientError::NoReachableNode { tried, .. } if *tried == vec![dead1.clone()]));
    assert!(err.is_retryable());
}

#[tokio::test]
async fn inconsistent_partition_tables_are_rejected() {
    let table = PartitionTable {
        epoch: 1,
        partition_count: 2,
        vnodes_per_weight: 4,
        nodes: vec!["n1".into()],
        owners: vec![0, 5],
        answered_by: "n1".into(),
    };
    let node = serve_with_table(bind().await, "n1", vec![], table, always_ok());
    let client = Client::connect_with([node.addr.clone()], quick()).await.unwrap();
    let err = client.partitions(ReadConsistency::Local).await.unwrap_err();
    assert!(matches!(err, ClientError::InvalidResponse { .. }), "{err:?}");
    assert!(err.to_string().contains("owner index 5"), "{err}");
    node.stop().await;
}
