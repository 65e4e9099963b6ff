//! One suite, [`peer_suite`], run against both peer networks: gRPC on loopback ports and the
//! in-memory twin. The nodes it calls serve fakes of the three target traits; what the suite
//! checks is the transport: messages, answers and typed errors arrive the same way.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use routemq_proto::v1 as pb;
use tokio_util::sync::CancellationToken;

use super::leader::{LeaderClient, LeaderHints};
use super::*;
use crate::forward::{ForwardService, ForwardTarget, Forwarder};
use crate::journal::JournalRecord;

/// A node's fake services.
struct Fake {
    me: String,
    /// Where the leader is (`me` when this node leads).
    leader: String,
    received: Mutex<Vec<String>>,
}

impl Fake {
    fn new(me: &str, leader: &str) -> Arc<Self> {
        Arc::new(Self {
            me: me.to_string(),
            leader: leader.to_string(),
            received: Mutex::new(Vec::new()),
        })
    }

    fn not_leader(&self) -> Result<(), PeerError> {
        if self.leader == self.me {
            Ok(())
        } else {
            Err(PeerError::NotLeader {
                leader: Some(self.leader.clone()),
            })
        }
    }
}

#[async_trait::async_trait]
impl ForwardTarget for Fake {
    async fn accept(
        self: Arc<Self>,
        _sender_epoch: u64,
        message: Forwarded,
    ) -> BoxFuture<'static, ForwardReply> {
        self.received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(message.message_id.clone());
        let outcome = match message.key.as_str() {
            "fail" => ForwardOutcome::Failed("handler said no".into()),
            "moved" => ForwardOutcome::NotOwner {
                owner: "n9".into(),
                reason: "not mine".into(),
            },
            "later" => ForwardOutcome::Unavailable("no lease".into()),
            _ => ForwardOutcome::Processed { by: self.me.clone() },
        };
        let reply = ForwardReply {
            seq: message.seq,
            epoch: 4,
            outcome,
        };
        async move { reply }.boxed()
    }

    async fn read_local_journal(self: Arc<Self>, query: JournalQuery) -> Result<JournalPage, PeerError> {
        if query.route == "missing" {
            return Err(PeerError::refused(
                Refusal::NotFound,
                "no route named \"missing\"",
            ));
        }
        Ok(JournalPage {
            entries: vec![record(query.from_offset, &query.key)],
            next_offset: query.from_offset + 1,
            end: false,
        })
    }
}

fn record(offset: u64, key: &str) -> JournalRecord {
    JournalRecord {
        offset,
        message_id: format!("m-{key}"),
        topic: format!("t/{key}"),
        payload: b"payload".to_vec(),
        processed_by: "n1".into(),
        epoch: 3,
        processed_at_unix_ms: 1_700_000_000_000,
        partition: 5,
        error: String::new(),
    }
}

fn data_of(p: u32) -> PartitionData {
    PartitionData {
        entries: vec![(p.to_be_bytes().to_vec(), b"entry".to_vec())],
        ids: vec![([p.to_be_bytes().as_slice(), b"id"].concat(), b"1".to_vec())],
    }
}

#[async_trait::async_trait]
impl HandoffTarget for Fake {
    fn fetch(&self, request: FetchRequest) -> Result<BoxStream<'static, PartitionAnswer>, PeerError> {
        if request.partitions.len() > 100 {
            return Err(PeerError::refused(
                Refusal::Invalid,
                "too many partitions in one fetch",
            ));
        }
        let answers = request.partitions.into_iter().map(|p| match p % 3 {
            0 => (
                p,
                Answer::Data {
                    version: u64::from(p),
                },
                Some(data_of(p)),
            ),
            1 => (p, Answer::NotYet, None),
            _ => (p, Answer::NotHolder, None),
        });
        Ok(futures::stream::iter(answers.collect::<Vec<_>>()).boxed())
    }

    async fn give_back(&self, request: ReturnRequest) -> Result<u64, PeerError> {
        if request.partition == 0 {
            return Err(PeerError::Unavailable("partition 0 is not active here".into()));
        }
        Ok(request.data.entries.len() as u64)
    }

    fn active_of(&self, partitions: &[u32]) -> Result<ActiveOf, PeerError> {
        Ok(ActiveOf {
            active: partitions.iter().copied().filter(|p| p % 2 == 0).collect(),
            epoch: 7,
        })
    }
}

#[async_trait::async_trait]
impl ClusterTarget for Fake {
    async fn renew_lease(&self, node_id: &str, _raft_id: u64) -> Result<LeaseGrant, PeerError> {
        self.not_leader()?;
        Ok(LeaseGrant {
            epoch: 5,
            member: node_id != "stranger",
        })
    }

    async fn join(&self, request: JoinRequest) -> Result<JoinOutcome, PeerError> {
        self.not_leader()?;
        if request.member.node_id == "taken" {
            return Err(PeerError::refused(
                Refusal::Conflict,
                "node id \"taken\" is in use",
            ));
        }
        Ok(JoinOutcome {
            cluster_id: "c1".into(),
            epoch: 6,
            voter: true,
        })
    }

    async fn remove_node(&self, node_id: &str, graceful: bool) -> Result<u64, PeerError> {
        self.not_leader()?;
        match node_id {
            "ghost" => Err(PeerError::refused(
                Refusal::NotFound,
                "node \"ghost\" is not a member",
            )),
            "last" => Err(PeerError::refused(
                Refusal::Rejected,
                "the last member cannot leave",
            )),
            _ => Ok(if graceful { 8 } else { 9 }),
        }
    }

    async fn leave(&self, _node_id: &str) -> Result<u64, PeerError> {
        Ok(3)
    }
}

fn handlers(fake: &Arc<Fake>) -> Handlers {
    Handlers {
        forward: Some(fake.clone()),
        handoff: Some(fake.clone()),
        cluster: Some(fake.clone()),
    }
}

fn forwarded(id: &str, key: &str) -> Forwarded {
    Forwarded {
        route: "r".into(),
        key: key.into(),
        partition: 5,
        topic: format!("t/{key}"),
        payload: vec![1, 2, 3],
        message_id: id.into(),
        received_at_unix_ms: 1,
        ..Default::default()
    }
}

fn member(node_id: &str) -> crate::config::state::Member {
    crate::config::state::Member {
        node_id: node_id.into(),
        raft_id: 42,
        grpc_addr: "127.0.0.1:1".into(),
        gossip_addr: "127.0.0.1:2".into(),
        http_addr: "127.0.0.1:3".into(),
        weight: 1,
        state: Default::default(),
    }
}

/// Hints pointing at fixed addresses.
struct FixedHints {
    raft: Option<String>,
    gossip: Option<String>,
}

impl LeaderHints for FixedHints {
    fn raft_leader(&self) -> Option<String> {
        self.raft.clone()
    }

    fn gossip_leader(&self) -> BoxFuture<'_, Option<String>> {
        let gossip = self.gossip.clone();
        async move { gossip }.boxed()
    }
}

/// The suite: `net` is node n0's network; `leader` (n1) leads, `follower` (n2) does not and
/// `dead` has no node.
async fn peer_suite(
    net: Arc<dyn PeerNetwork>,
    leader: &str,
    follower: &str,
    dead: &str,
    fakes: &[Arc<Fake>],
) {
    // Forwarding: batches out, one ack per batch, in order, every outcome kind.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut acks = net
        .forward(leader, tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
        .await
        .expect("stream opens");
    let mut first = ForwardBatch {
        epoch: 3,
        sender: "n0".into(),
        messages: vec![forwarded("a", "k1"), forwarded("b", "fail")],
    };
    first.messages[1].seq = 1;
    tx.send(first).await.unwrap();
    let mut second = ForwardBatch {
        epoch: 3,
        sender: "n0".into(),
        messages: vec![forwarded("c", "moved"), forwarded("d", "later")],
    };
    second.messages[0].seq = 2;
    second.messages[1].seq = 3;
    tx.send(second).await.unwrap();
    let one = acks.next().await.expect("an ack").expect("no error");
    assert_eq!(
        one.iter().map(|r| (r.seq, r.outcome.clone())).collect::<Vec<_>>(),
        [
            (0, ForwardOutcome::Processed { by: "n1".into() }),
            (1, ForwardOutcome::Failed("handler said no".into()))
        ]
    );
    let two = acks.next().await.expect("an ack").expect("no error");
    assert_eq!(
        two.iter().map(|r| r.outcome.clone()).collect::<Vec<_>>(),
        [
            ForwardOutcome::NotOwner {
                owner: "n9".into(),
                reason: "not mine".into()
            },
            ForwardOutcome::Unavailable("no lease".into())
        ]
    );
    assert!(two.iter().all(|r| r.epoch == 4));
    drop(tx);
    assert!(
        acks.next().await.is_none(),
        "the stream ends when the sender closes it"
    );
    assert_eq!(*fakes[0].received.lock().unwrap(), ["a", "b", "c", "d"]);

    // The forwarder over the same network.
    let forwarder = Forwarder::with_network("n0".into(), net.clone());
    let reply = forwarder.forward(leader, 3, forwarded("e", "k2")).await.unwrap();
    assert_eq!(reply.outcome, ForwardOutcome::Processed { by: "n1".into() });
    let err = forwarder
        .forward(dead, 3, forwarded("f", "k2"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, PeerError::Unreachable { .. }) && err.is_retryable(),
        "{err:?}"
    );
    forwarder.shutdown().await;

    // Journal reads.
    let query = JournalQuery {
        route: "r".into(),
        key: "k1".into(),
        from_offset: 4,
        limit: 0,
    };
    let page = net.read_journal(leader, query.clone()).await.unwrap();
    assert_eq!(page.entries, [record(4, "k1")]);
    assert_eq!((page.next_offset, page.end), (5, false));
    let missing = JournalQuery {
        route: "missing".into(),
        ..query
    };
    let err = net.read_journal(leader, missing).await.unwrap_err();
    assert!(
        matches!(&err, PeerError::Refused { kind: Refusal::NotFound, message } if message.contains("missing")),
        "{err:?}"
    );
    assert!(!err.is_retryable());

    // Handoff.
    let request = FetchRequest {
        requester: "n0".into(),
        epoch: 3,
        partitions: vec![3, 4, 5],
    };
    let reply = net.fetch(leader, request).await.unwrap();
    let expected: FetchReply = BTreeMap::from([
        (3, (Answer::Data { version: 3 }, Some(data_of(3)))),
        (4, (Answer::NotYet, None)),
        (5, (Answer::NotHolder, None)),
    ]);
    assert_eq!(reply, expected);
    let too_many = FetchRequest {
        partitions: (0..200).collect(),
        ..Default::default()
    };
    let err = net.fetch(leader, too_many).await.unwrap_err();
    assert!(
        matches!(
            err,
            PeerError::Refused {
                kind: Refusal::Invalid,
                ..
            }
        ),
        "{err:?}"
    );
    let back = ReturnRequest {
        from: "n0".into(),
        partition: 3,
        version: 2,
        data: data_of(3),
    };
    assert_eq!(net.give_back(leader, back.clone()).await, Ok(1));
    let err = net
        .give_back(leader, ReturnRequest { partition: 0, ..back })
        .await
        .unwrap_err();
    assert_eq!(
        err,
        PeerError::Unavailable("partition 0 is not active here".into())
    );
    assert!(err.is_retryable());
    assert_eq!(
        net.active_of(leader, vec![1, 2, 3, 4]).await,
        Ok(ActiveOf {
            active: vec![2, 4],
            epoch: 7
        })
    );

    // Cluster calls: the leader answers, a follower names the leader.
    assert_eq!(
        net.renew_lease(leader, "n0", 42).await,
        Ok(LeaseGrant {
            epoch: 5,
            member: true
        })
    );
    assert_eq!(
        net.renew_lease(follower, "n0", 42).await,
        Err(PeerError::NotLeader {
            leader: Some(leader.to_string())
        })
    );
    let join = JoinRequest {
        member: member("n7"),
        cluster_id: String::new(),
    };
    assert_eq!(net.join(leader, join.clone()).await.unwrap().epoch, 6);
    let taken = JoinRequest {
        member: member("taken"),
        ..join.clone()
    };
    let err = net.join(leader, taken).await.unwrap_err();
    assert!(
        matches!(
            err,
            PeerError::Refused {
                kind: Refusal::Conflict,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(net.remove_node(leader, "n7", true).await, Ok(8));
    let err = net.remove_node(leader, "ghost", false).await.unwrap_err();
    assert!(
        matches!(
            err,
            PeerError::Refused {
                kind: Refusal::NotFound,
                ..
            }
        ),
        "{err:?}"
    );
    let err = net.remove_node(leader, "last", false).await.unwrap_err();
    assert!(
        matches!(
            err,
            PeerError::Refused {
                kind: Refusal::Rejected,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(net.leave(follower, "n2").await, Ok(3));
    let err = net.renew_lease(dead, "n0", 42).await.unwrap_err();
    assert!(matches!(err, PeerError::Unreachable { .. }), "{err:?}");

    // The leader client follows NotLeader answers and remembers where the leader is.
    let hints = Arc::new(FixedHints {
        raft: Some(follower.to_string()),
        gossip: None,
    });
    let client = LeaderClient::new(net.clone(), hints);
    assert!(matches!(
        client.renew_lease("n0", 42).await,
        Err(PeerError::NotLeader { .. })
    ));
    assert_eq!(
        client.renew_lease("n0", 42).await,
        Ok(LeaseGrant {
            epoch: 5,
            member: true
        })
    );
    assert_eq!(client.remove_node("n7", false).await, Ok(9));
    assert!(matches!(
        client.remove_node("ghost", false).await,
        Err(PeerError::Refused {
            kind: Refusal::NotFound,
            ..
        })
    ));
    // Joining: gossip names the follower, which names the leader.
    let hints = Arc::new(FixedHints {
        raft: None,
        gossip: Some(follower.to_string()),
    });
    let client = LeaderClient::new(net.clone(), hints);
    assert_eq!(client.join(join).await.unwrap().cluster_id, "c1");
}

// --- gRPC on loopback ports --------------------------------------------------------------

/// `routemq.v1.Handoff` over any [`HandoffTarget`] (the node serves its `HandoffService`).
struct GrpcHandoff(Arc<Fake>);

#[tonic::async_trait]
impl pb::handoff_server::Handoff for GrpcHandoff {
    type FetchStream = BoxStream<'static, Result<pb::FetchChunk, tonic::Status>>;

    async fn fetch(
        &self,
        request: tonic::Request<pb::FetchRequest>,
    ) -> Result<tonic::Response<Self::FetchStream>, tonic::Status> {
        let answers = HandoffTarget::fetch(&*self.0, request.into_inner().into())
            .map_err(|e| crate::api::peer_status(&e))?;
        Ok(tonic::Response::new(
            answers
                .flat_map(|a| futures::stream::iter(convert::handoff::chunks(a).into_iter().map(Ok)))
                .boxed(),
        ))
    }

    async fn r#return(
        &self,
        request: tonic::Request<pb::ReturnRequest>,
    ) -> Result<tonic::Response<pb::ReturnResponse>, tonic::Status> {
        let restored = self
            .0
            .give_back(request.into_inner().into())
            .await
            .map_err(|e| crate::api::peer_status(&e))?;
        Ok(tonic::Response::new(pb::ReturnResponse { restored }))
    }

    async fn active_of(
        &self,
        request: tonic::Request<pb::ActiveOfRequest>,
    ) -> Result<tonic::Response<pb::ActiveOfResponse>, tonic::Status> {
        let answer = HandoffTarget::active_of(&*self.0, &request.into_inner().partitions)
            .map_err(|e| crate::api::peer_status(&e))?;
        Ok(tonic::Response::new(answer.into()))
    }
}

/// The peer calls of `routemq.v1.Cluster` over a [`ClusterTarget`] (the node serves its
/// `ClusterApi`).
struct GrpcCluster(Arc<Fake>);

type Reply<T> = Result<tonic::Response<T>, tonic::Status>;

fn unimplemented<T>() -> Reply<T> {
    Err(tonic::Status::unimplemented("not in the test"))
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for GrpcCluster {
    async fn get_status(&self, _: tonic::Request<pb::StatusRequest>) -> Reply<pb::ClusterStatus> {
        unimplemented()
    }
    async fn get_partitions(&self, _: tonic::Request<pb::PartitionsRequest>) -> Reply<pb::PartitionTable> {
        unimplemented()
    }
    async fn locate(&self, _: tonic::Request<pb::LocateRequest>) -> Reply<pb::LocateResponse> {
        unimplemented()
    }
    async fn remove_node(
        &self,
        request: tonic::Request<pb::RemoveNodeRequest>,
    ) -> Reply<pb::RemoveNodeResponse> {
        let r = request.into_inner();
        let epoch = ClusterTarget::remove_node(&*self.0, &r.node_id, r.graceful)
            .await
            .map_err(|e| crate::api::peer_status(&e))?;
        Ok(tonic::Response::new(pb::RemoveNodeResponse { epoch }))
    }
    async fn leave(&self, request: tonic::Request<pb::LeaveRequest>) -> Reply<pb::LeaveResponse> {
        let epoch = ClusterTarget::leave(&*self.0, &request.into_inner().node_id)
            .await
            .map_err(|e| crate::api::peer_status(&e))?;
        Ok(tonic::Response::new(pb::LeaveResponse { epoch }))
    }
    async fn renew_lease(
        &self,
        request: tonic::Request<pb::RenewLeaseRequest>,
    ) -> Reply<pb::RenewLeaseResponse> {
        let r = request.into_inner();
        let grant = ClusterTarget::renew_lease(&*self.0, &r.node_id, r.raft_id)
            .await
            .map_err(|e| crate::api::peer_status(&e))?;
        Ok(tonic::Response::new(grant.into()))
    }
    async fn join(&self, request: tonic::Request<pb::JoinRequest>) -> Reply<pb::JoinResponse> {
        let outcome = ClusterTarget::join(&*self.0, request.into_inner().into())
            .await
            .map_err(|e| crate::api::peer_status(&e))?;
        Ok(tonic::Response::new(outcome.into()))
    }
}

/// Serves `fake` on a loopback port until `stop`; its address.
async fn serve_grpc(fake: Arc<Fake>, stop: CancellationToken) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = tonic::transport::Server::builder()
        .add_service(pb::forward_server::ForwardServer::new(ForwardService::new(
            fake.clone(),
            stop.clone(),
        )))
        .add_service(pb::handoff_server::HandoffServer::new(GrpcHandoff(fake.clone())))
        .add_service(pb::cluster_server::ClusterServer::new(GrpcCluster(fake)));
    tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let _ = server
            .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
            .await;
    });
    addr
}

#[tokio::test]
async fn grpc_network_passes_the_suite() {
    let stop = CancellationToken::new();
    // A fake leads when its `leader` is its own name; the follower names the leader's address.
    let n1 = Fake::new("n1", "n1");
    let n1_addr = serve_grpc(n1.clone(), stop.clone()).await;
    let n2_addr = serve_grpc(Fake::new("n2", &n1_addr), stop.clone()).await;
    let dead = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().to_string()
    };
    let net: Arc<dyn PeerNetwork> = Arc::new(grpc::GrpcNetwork::new());
    peer_suite(net, &n1_addr, &n2_addr, &dead, &[n1]).await;
    stop.cancel();
}

#[tokio::test]
async fn memory_network_passes_the_suite() {
    let memory = memory::MemoryNetwork::new();
    let n1 = Fake::new("n1", "n1");
    let n2 = Fake::new("n2", "addr-1");
    memory.register("addr-1", handlers(&n1));
    memory.register("addr-2", handlers(&n2));
    peer_suite(memory.endpoint("addr-0"), "addr-1", "addr-2", "addr-dead", &[n1]).await;
}

#[tokio::test]
async fn memory_links_cut_heal_and_break_streams() {
    let memory = memory::MemoryNetwork::new();
    let n1 = Fake::new("n1", "n1");
    memory.register("a1", handlers(&n1));
    let net = memory.endpoint("a0");
    assert_eq!(net.leave("a1", "n1").await, Ok(3));

    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut acks = net
        .forward("a1", tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
        .await
        .unwrap();
    let batch = ForwardBatch {
        epoch: 1,
        sender: "n0".into(),
        messages: vec![forwarded("a", "k")],
    };
    tx.send(batch.clone()).await.unwrap();
    assert!(acks.next().await.unwrap().is_ok());

    memory.cut("a1", "a0");
    assert!(matches!(
        net.leave("a1", "n1").await,
        Err(PeerError::Unreachable { .. })
    ));
    assert!(matches!(
        acks.next().await,
        Some(Err(PeerError::Unreachable { .. }))
    ));
    assert!(acks.next().await.is_none(), "a broken stream ends");
    // Other links are not affected.
    memory.register("a2", handlers(&Fake::new("n2", "n1")));
    assert_eq!(net.leave("a2", "n2").await, Ok(3));

    memory.heal("a0", "a1");
    assert_eq!(net.leave("a1", "n1").await, Ok(3));
    // A restart (registered again) breaks the streams to the old incarnation.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut acks = net
        .forward("a1", tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
        .await
        .unwrap();
    memory.register("a1", handlers(&Fake::new("n1", "n1")));
    tx.send(batch).await.unwrap();
    assert!(matches!(
        acks.next().await,
        Some(Err(PeerError::Unreachable { .. }))
    ));
    memory.unregister("a1");
    assert!(matches!(
        net.leave("a1", "n1").await,
        Err(PeerError::Unreachable { .. })
    ));
}
