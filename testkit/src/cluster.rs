//! A fake `routemq.v1.Cluster` service for client tests, and helpers to serve fake gRPC nodes
//! on loopback.
//!
//! [`FakeCluster`] answers `GetStatus` with a status of the test's making (the request's read
//! consistency copied in), and `GetPartitions`, `Locate` and `RemoveNode` with what the test
//! gave it (`UNIMPLEMENTED` otherwise, as for `Join`, `Leave` and `RenewLease`). Before
//! answering one of those four, it asks an optional [`Gate`] what to do with the request (the
//! `n`th it received, at which read consistency): answer, fail with a status, or hang; it
//! counts every request so tests can assert where calls went.
//!
//! [`serve`] runs a tonic router on a bound listener until [`Served::stop`]; dropping the
//! [`Served`] leaves the server running until the runtime ends.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use routemq_proto::v1::cluster_server::{Cluster, ClusterServer};
use routemq_proto::v1::{
    ClusterStatus, JoinRequest, JoinResponse, LeaveRequest, LeaveResponse, LocateRequest, LocateResponse,
    PartitionTable, PartitionsRequest, ReadConsistency, RemoveNodeRequest, RemoveNodeResponse,
    RenewLeaseRequest, RenewLeaseResponse, StatusRequest,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::server::{Router, TcpIncoming};
use tonic::{Request, Response, Status};

/// One request as the fake sees it.
#[derive(Debug, Clone, Copy)]
pub struct Call {
    /// 0 for the first request this fake received, 1 for the second...
    pub n: u32,
    /// The request's read consistency (linearizable for `RemoveNode`).
    pub consistency: ReadConsistency,
}

/// What the fake does with a request.
#[derive(Debug)]
pub enum Action {
    /// Answers as configured.
    Answer,
    /// Fails with this status.
    Fail(Status),
    /// Never answers (well, after an hour).
    Hang,
}

/// Decides what to do with each request.
pub type Gate = Arc<dyn Fn(Call) -> Action + Send + Sync>;

type Answer<Q, A> = Arc<dyn Fn(Q) -> Result<A, Status> + Send + Sync>;

/// The fake service; see the module docs.
#[derive(Clone)]
pub struct FakeCluster {
    status: Arc<dyn Fn() -> ClusterStatus + Send + Sync>,
    partitions: Option<PartitionTable>,
    locate: Option<Answer<LocateRequest, LocateResponse>>,
    remove_node: Option<Answer<RemoveNodeRequest, RemoveNodeResponse>>,
    gate: Option<Gate>,
    calls: Arc<AtomicU32>,
}

impl FakeCluster {
    /// A fake answering `GetStatus` with `status`.
    pub fn new(status: ClusterStatus) -> Self {
        Self::with_status(move || status.clone())
    }

    /// A fake answering `GetStatus` with what `status` returns at the time.
    pub fn with_status(status: impl Fn() -> ClusterStatus + Send + Sync + 'static) -> Self {
        Self {
            status: Arc::new(status),
            partitions: None,
            locate: None,
            remove_node: None,
            gate: None,
            calls: Arc::new(AtomicU32::new(0)),
        }
    }

    /// Answers `GetPartitions` with `table`.
    pub fn partitions(mut self, table: PartitionTable) -> Self {
        self.partitions = Some(table);
        self
    }

    /// Answers `Locate` with `answer(request)`.
    pub fn locate(
        mut self,
        answer: impl Fn(LocateRequest) -> Result<LocateResponse, Status> + Send + Sync + 'static,
    ) -> Self {
        self.locate = Some(Arc::new(answer));
        self
    }

    /// Answers `RemoveNode` with `answer(request)`.
    pub fn remove_node(
        mut self,
        answer: impl Fn(RemoveNodeRequest) -> Result<RemoveNodeResponse, Status> + Send + Sync + 'static,
    ) -> Self {
        self.remove_node = Some(Arc::new(answer));
        self
    }

    /// Asks `gate` before answering each request.
    pub fn gate(mut self, gate: impl Fn(Call) -> Action + Send + Sync + 'static) -> Self {
        self.gate = Some(Arc::new(gate));
        self
    }

    /// The count of requests received, shared with the service.
    pub fn calls(&self) -> Arc<AtomicU32> {
        self.calls.clone()
    }

    /// The tonic service.
    pub fn into_server(self) -> ClusterServer<Self> {
        ClusterServer::new(self)
    }

    async fn admit(&self, consistency: i32) -> Result<(), Status> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let consistency = ReadConsistency::try_from(consistency).unwrap_or(ReadConsistency::Linearizable);
        let Some(gate) = &self.gate else {
            return Ok(());
        };
        match gate(Call { n, consistency }) {
            Action::Answer => Ok(()),
            Action::Fail(status) => Err(status),
            Action::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Err(Status::internal("woke up"))
            }
        }
    }
}

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("fake"))
}

#[tonic::async_trait]
impl Cluster for FakeCluster {
    async fn get_status(&self, request: Request<StatusRequest>) -> Result<Response<ClusterStatus>, Status> {
        let consistency = request.into_inner().consistency;
        self.admit(consistency).await?;
        Ok(Response::new(ClusterStatus {
            consistency,
            ..(self.status)()
        }))
    }

    async fn get_partitions(
        &self,
        request: Request<PartitionsRequest>,
    ) -> Result<Response<PartitionTable>, Status> {
        let Some(table) = &self.partitions else {
            return unimplemented();
        };
        self.admit(request.into_inner().consistency).await?;
        Ok(Response::new(table.clone()))
    }

    async fn locate(&self, request: Request<LocateRequest>) -> Result<Response<LocateResponse>, Status> {
        let Some(answer) = &self.locate else {
            return unimplemented();
        };
        let request = request.into_inner();
        self.admit(request.consistency).await?;
        answer(request).map(Response::new)
    }

    async fn remove_node(
        &self,
        request: Request<RemoveNodeRequest>,
    ) -> Result<Response<RemoveNodeResponse>, Status> {
        let Some(answer) = &self.remove_node else {
            return unimplemented();
        };
        self.admit(ReadConsistency::Linearizable as i32).await?;
        answer(request.into_inner()).map(Response::new)
    }

    async fn join(&self, _: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        unimplemented()
    }

    async fn leave(&self, _: Request<LeaveRequest>) -> Result<Response<LeaveResponse>, Status> {
        unimplemented()
    }

    async fn renew_lease(
        &self,
        _: Request<RenewLeaseRequest>,
    ) -> Result<Response<RenewLeaseResponse>, Status> {
        unimplemented()
    }
}

/// A listener bound on 127.0.0.1:0, and its address.
pub async fn bind() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("cannot bind a loopback port: {e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("no local address: {e}"))
        .to_string();
    (listener, addr)
}

/// An address where nothing listens.
pub async fn dead_addr() -> String {
    bind().await.1
}

/// A fake node being served.
pub struct Served {
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Served {
    /// Stops serving: requests in flight may finish for 2 s, then the server is aborted.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if tokio::time::timeout(Duration::from_secs(2), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}

/// Serves `router` on `listener` until [`Served::stop`].
pub fn serve(listener: TcpListener, router: Router) -> Served {
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let stop = async {
            // A dropped handle is not a stop.
            if rx.await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        if let Err(e) = router
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), stop)
            .await
        {
            panic!("fake node failed: {e}");
        }
    });
    Served {
        shutdown: Some(tx),
        task,
    }
}

/// Serves `router` on a fresh loopback port; answers the address and the handle.
pub async fn serve_local(router: Router) -> (String, Served) {
    let (listener, addr) = bind().await;
    (addr, serve(listener, router))
}
