//! openraft's network over gRPC: the client side ([`RaftNetworkFactory`]) and the server side
//! ([`RaftTransportService`]) of the `routemq.v1.RaftTransport` service.
//!
//! openraft's request and response types are serde types; each RPC carries one of them as
//! JSON in a `RaftMessage`. A remote Raft error travels inside the JSON as `Err(..)`, so the
//! caller can tell "the peer answered no" (RemoteError) from "the peer was unreachable"
//! (Unreachable, which makes openraft back off).

use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use routemq_proto::v1::raft_transport_client::RaftTransportClient;
use routemq_proto::v1::raft_transport_server::RaftTransport;
use routemq_proto::v1::RaftMessage;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use super::{ConfigRaft, RaftId, TypeConfig};

/// Creates a gRPC client per Raft peer. Connections are lazy and reconnect by themselves.
#[derive(Clone, Default)]
pub struct GrpcRaftNetwork;

/// A connection to one Raft peer.
pub struct GrpcRaftPeer {
    target: RaftId,
    addr: String,
    client: Option<RaftTransportClient<Channel>>,
}

/// Builds a lazily connecting channel to `addr` (`host:port`).
pub fn lazy_channel(addr: &str) -> Result<Channel, tonic::transport::Error> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        // A connection that died silently (a partition drops packets, the peer is paused)
        // fails its streams within ~3 s, so forwarding links and Raft reconnect.
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(2))
        .keep_alive_while_idle(true)
        .connect_lazy())
}

impl RaftNetworkFactory<TypeConfig> for GrpcRaftNetwork {
    type Network = GrpcRaftPeer;

    async fn new_client(&mut self, target: RaftId, node: &BasicNode) -> Self::Network {
        GrpcRaftPeer {
            target,
            addr: node.addr.clone(),
            client: None,
        }
    }
}

impl GrpcRaftPeer {
    fn client(&mut self) -> Result<RaftTransportClient<Channel>, Unreachable> {
        if let Some(client) = &self.client {
            return Ok(client.clone());
        }
        let channel = lazy_channel(&self.addr).map_err(|e| Unreachable::new(&e))?;
        let client = RaftTransportClient::new(channel).max_decoding_message_size(64 << 20);
        self.client = Some(client.clone());
        Ok(client)
    }

    async fn call<Req, Resp, E>(
        &mut self,
        kind: RpcKind,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<RaftId, BasicNode, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let data = serde_json::to_vec(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut client = self.client().map_err(RPCError::Unreachable)?;
        let mut grpc_request = tonic::Request::new(RaftMessage { data });
        grpc_request.set_timeout(option.hard_ttl());
        let response = match kind {
            RpcKind::AppendEntries => client.append_entries(grpc_request).await,
            RpcKind::Vote => client.vote(grpc_request).await,
            RpcKind::InstallSnapshot => client.install_snapshot(grpc_request).await,
        };
        let message = response.map_err(|status| {
            // Transport-level failures: the peer is down or cut off.
            RPCError::Unreachable(Unreachable::new(&std::io::Error::other(format!(
                "raft rpc to {} ({}) failed: {}",
                self.target,
                self.addr,
                status.message()
            ))))
        })?;
        let result: Result<Resp, E> = serde_json::from_slice(&message.into_inner().data)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

#[derive(Clone, Copy)]
enum RpcKind {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

impl RaftNetwork<TypeConfig> for GrpcRaftPeer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<RaftId>, RPCError<RaftId, BasicNode, RaftError<RaftId>>> {
        self.call(RpcKind::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<RaftId>,
        RPCError<RaftId, BasicNode, RaftError<RaftId, InstallSnapshotError>>,
    > {
        self.call(RpcKind::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<RaftId>,
        option: RPCOption,
    ) -> Result<VoteResponse<RaftId>, RPCError<RaftId, BasicNode, RaftError<RaftId>>> {
        self.call(RpcKind::Vote, &rpc, &option).await
    }
}

/// Server side of `routemq.v1.RaftTransport`: hands each RPC to the local Raft node.
pub struct RaftTransportService {
    raft: ConfigRaft,
}

impl RaftTransportService {
    /// Serves RPCs for `raft`.
    pub fn new(raft: ConfigRaft) -> Self {
        Self { raft }
    }
}

fn decode<T: DeserializeOwned>(request: tonic::Request<RaftMessage>) -> Result<T, tonic::Status> {
    serde_json::from_slice(&request.into_inner().data)
        .map_err(|e| tonic::Status::invalid_argument(format!("malformed raft message: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<tonic::Response<RaftMessage>, tonic::Status> {
    serde_json::to_vec(value)
        .map(|data| tonic::Response::new(RaftMessage { data }))
        .map_err(|e| tonic::Status::internal(format!("cannot encode raft response: {e}")))
}

#[tonic::async_trait]
impl RaftTransport for RaftTransportService {
    async fn append_entries(
        &self,
        request: tonic::Request<RaftMessage>,
    ) -> Result<tonic::Response<RaftMessage>, tonic::Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode(request)?;
        encode(&self.raft.append_entries(rpc).await)
    }

    async fn vote(
        &self,
        request: tonic::Request<RaftMessage>,
    ) -> Result<tonic::Response<RaftMessage>, tonic::Status> {
        let rpc: VoteRequest<RaftId> = decode(request)?;
        encode(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: tonic::Request<RaftMessage>,
    ) -> Result<tonic::Response<RaftMessage>, tonic::Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(request)?;
        encode(&self.raft.install_snapshot(rpc).await)
    }
}
