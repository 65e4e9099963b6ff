//! [`PeerNetwork`] over tonic: one lazily connecting channel per address, cached and shared by
//! every call to that address (HTTP/2 multiplexes them; a broken connection is re-established
//! by the channel itself on the next call).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::StreamExt;
use routemq_proto::v1 as pb;
use routemq_proto::v1::cluster_client::ClusterClient;
use routemq_proto::v1::forward_client::ForwardClient;
use routemq_proto::v1::handoff_client::HandoffClient;
use tonic::transport::Channel;

use super::convert::handoff::Assembler;
use super::convert::status::from_status;
use super::{
    ActiveOf, FetchReply, FetchRequest, ForwardBatch, JoinRequest, JournalPage, JournalQuery, PeerError,
    PeerNetwork, ReplyStream, ReturnRequest,
};
use crate::coordinator::{JoinOutcome, LeaseGrant};

/// Largest message accepted or sent (handoff data, journal pages).
const MAX_MESSAGE: usize = 64 << 20;
/// How long the leader may take to admit a joiner (catching up as a learner included).
const JOIN_TIMEOUT: Duration = Duration::from_secs(45);
/// How long a removal or a passed-on leave may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The gRPC peer network.
#[derive(Default)]
pub struct GrpcNetwork {
    channels: Mutex<HashMap<String, Channel>>,
}

/// The process's gRPC peer network (one channel cache for every part of the node).
pub fn shared() -> Arc<GrpcNetwork> {
    static SHARED: OnceLock<Arc<GrpcNetwork>> = OnceLock::new();
    SHARED.get_or_init(|| Arc::new(GrpcNetwork::default())).clone()
}

impl GrpcNetwork {
    /// A network with its own (empty) channel cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The cached channel to `addr` (one HTTP/2 connection per peer, shared by every call).
    pub(crate) fn channel(&self, addr: &str) -> Result<Channel, PeerError> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        let channel =
            crate::config::network::lazy_channel(addr).map_err(|e| PeerError::unreachable(addr, e))?;
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }

    fn forward_client(&self, addr: &str) -> Result<ForwardClient<Channel>, PeerError> {
        Ok(ForwardClient::new(self.channel(addr)?)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE))
    }

    fn handoff_client(&self, addr: &str) -> Result<HandoffClient<Channel>, PeerError> {
        Ok(HandoffClient::new(self.channel(addr)?)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE))
    }

    fn cluster_client(&self, addr: &str) -> Result<ClusterClient<Channel>, PeerError> {
        Ok(ClusterClient::new(self.channel(addr)?))
    }
}

fn with_timeout<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

#[async_trait::async_trait]
impl PeerNetwork for GrpcNetwork {
    async fn forward(
        &self,
        addr: &str,
        batches: BoxStream<'static, ForwardBatch>,
    ) -> Result<ReplyStream, PeerError> {
        let client = self.forward_client(addr)?;
        open_stream(client, batches, addr.to_string()).await
    }

    async fn read_journal(&self, addr: &str, query: JournalQuery) -> Result<JournalPage, PeerError> {
        let mut client = self.forward_client(addr)?;
        client
            .read_journal(pb::ReadJournalRequest::from(query))
            .await
            .map(|r| r.into_inner().into())
            .map_err(|s| from_status(addr, &s))
    }

    async fn fetch(&self, addr: &str, request: FetchRequest) -> Result<FetchReply, PeerError> {
        let mut client = self.handoff_client(addr)?;
        let mut stream = client
            .fetch(pb::FetchRequest::from(request))
            .await
            .map_err(|s| from_status(addr, &s))?
            .into_inner();
        let mut assembler = Assembler::default();
        while let Some(chunk) = stream.next().await {
            assembler.push(chunk.map_err(|s| from_status(addr, &s))?)?;
        }
        Ok(assembler.finish())
    }

    async fn give_back(&self, addr: &str, request: ReturnRequest) -> Result<u64, PeerError> {
        let mut client = self.handoff_client(addr)?;
        client
            .r#return(pb::ReturnRequest::from(request))
            .await
            .map(|r| r.into_inner().restored)
            .map_err(|s| from_status(addr, &s))
    }

    async fn active_of(&self, addr: &str, partitions: Vec<u32>) -> Result<ActiveOf, PeerError> {
        let mut client = self.handoff_client(addr)?;
        client
            .active_of(pb::ActiveOfRequest { partitions })
            .await
            .map(|r| r.into_inner().into())
            .map_err(|s| from_status(addr, &s))
    }

    async fn renew_lease(&self, addr: &str, node_id: &str, raft_id: u64) -> Result<LeaseGrant, PeerError> {
        let mut client = self.cluster_client(addr)?;
        client
            .renew_lease(pb::RenewLeaseRequest {
                node_id: node_id.to_string(),
                raft_id,
            })
            .await
            .map(|r| r.into_inner().into())
            .map_err(|s| from_status(addr, &s))
    }

    async fn join(&self, addr: &str, request: JoinRequest) -> Result<JoinOutcome, PeerError> {
        let mut client = self.cluster_client(addr)?;
        client
            .join(with_timeout(pb::JoinRequest::from(request), JOIN_TIMEOUT))
            .await
            .map(|r| r.into_inner().into())
            .map_err(|s| from_status(addr, &s))
    }

    async fn remove_node(&self, addr: &str, node_id: &str, graceful: bool) -> Result<u64, PeerError> {
        let mut client = self.cluster_client(addr)?;
        let request = pb::RemoveNodeRequest {
            node_id: node_id.to_string(),
            graceful,
        };
        client
            .remove_node(with_timeout(request, ADMIN_TIMEOUT))
            .await
            .map(|r| r.into_inner().epoch)
            .map_err(|s| from_status(addr, &s))
    }

    async fn leave(&self, addr: &str, node_id: &str) -> Result<u64, PeerError> {
        let mut client = self.cluster_client(addr)?;
        let request = pb::LeaveRequest {
            node_id: node_id.to_string(),
        };
        client
            .leave(with_timeout(request, ADMIN_TIMEOUT))
            .await
            .map(|r| r.into_inner().epoch)
            .map_err(|s| from_status(addr, &s))
    }
}

/// Opens a forwarding stream; its acks as domain replies.
async fn open_stream(
    mut client: ForwardClient<Channel>,
    batches: BoxStream<'static, ForwardBatch>,
    addr: String,
) -> Result<ReplyStream, PeerError> {
    // tonic gets a concrete stream of protobuf batches (a boxed one trips a higher-ranked
    // lifetime limitation of the compiler's Send check); a small pump converts.
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::ForwardBatch>(8);
    tokio::spawn(async move {
        let mut batches = batches;
        while let Some(batch) = batches.next().await {
            if tx.send(batch.into()).await.is_err() {
                return;
            }
        }
    });
    let inbound = client
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|s| from_status(&addr, &s))?
        .into_inner();
    Ok(inbound
        .map(move |ack| {
            ack.map(super::convert::forward::replies)
                .map_err(|s| super::convert::forward::stream_error(&addr, &s))
        })
        .boxed())
}
