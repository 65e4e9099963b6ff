//! In-process tests of [`Client`] against fake `routemq.v1.Cluster` servers on 127.0.0.1:0
//! (the shared `routemq_testkit::cluster::FakeCluster`):
//! leader following, waiting out an election, failover to learned members, timeouts, final
//! errors and giving up.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use routemq_proto::v1::{
    ClusterStatus, LocateResponse, Member, PartitionTable, ReadConsistency, RemoveNodeResponse,
};
use routemq_testkit::cluster::{self, Action, Call, FakeCluster, Served};
use tokio::net::TcpListener;
use tonic::metadata::MetadataValue;
use tonic::transport::Server;
use tonic::{Code, Status};

use crate::{Client, ClientError, ClientOptions};

type Behaviour = Box<dyn Fn(Call) -> Action + Send + Sync>;

/// A bound but not yet serving address.
struct Bound {
    listener: TcpListener,
    addr: String,
}

async fn bind() -> Bound {
    let (listener, addr) = cluster::bind().await;
    Bound { listener, addr }
}

/// An address where nothing listens.
async fn dead_addr() -> String {
    cluster::dead_addr().await
}

struct Running {
    addr: String,
    calls: Arc<AtomicU32>,
    served: Served,
}

impl Running {
    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }

    async fn stop(self) {
        // Graceful shutdown waits for requests in flight; a hanging one is cut short.
        self.served.stop().await;
    }
}

fn serve(bound: Bound, name: &str, members: Vec<Member>, behaviour: Behaviour) -> Running {
    serve_with_table(bound, name, members, PartitionTable::default(), behaviour)
}

/// A fake node `name`: a status listing `members`, `table`, any key located here, any node
/// removed at epoch 8; every request first decided by `behaviour`.
fn serve_with_table(
    bound: Bound,
    name: &str,
    members: Vec<Member>,
    table: PartitionTable,
    behaviour: Behaviour,
) -> Running {
    let owner = name.to_string();
    let fake = FakeCluster::new(ClusterStatus {
        cluster_id: "c1".into(),
        epoch: 7,
        members,
        answered_by: name.to_string(),
        ..ClusterStatus::default()
    })
    .partitions(table)
    .locate(move |request| {
        Ok(LocateResponse {
            key: request.key,
            partition: 3,
            owner: owner.clone(),
            owner_grpc_addr: String::new(),
            epoch: 7,
        })
    })
    .remove_node(|_| Ok(RemoveNodeResponse { epoch: 8 }))
    .gate(behaviour);
    let calls = fake.calls();
    let served = cluster::serve(bound.listener, Server::builder().add_service(fake.into_server()));
    Running {
        addr: bound.addr,
        calls,
        served,
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
