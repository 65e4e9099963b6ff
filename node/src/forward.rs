//! Forwarding: moving messages to their partition's owner over the peer network
//! ([`crate::peer::PeerNetwork::forward`]).
//!
//! Client side ([`Forwarder`]): one long-lived bidirectional stream per peer, carried by a
//! [`PeerLink`] task. Callers queue messages on the link (a bounded queue: when
//! it is full they wait, which is the backpressure that reaches ingress); the link batches
//! whatever is queued (up to [`MAX_BATCH`] messages per frame), tags each batch with the
//! sender's epoch and each message with a sequence number, and completes each caller when the
//! peer acknowledges its message. The peer answers acks in the order it received the batches,
//! so the link matches them FIFO. If the stream breaks, every unacknowledged message is
//! answered `Unavailable` and its caller re-sends (in order: a caller has one message in
//! flight per key).
//!
//! Server side ([`serve_stream`], behind the gRPC [`ForwardService`] and the in-memory
//! network alike): for each batch, in order, each message is checked for
//! ownership at the receiver's epoch and handed to the processor's partition lane (so order is
//! kept across batches), then the results are sent back in batch order. A receiver that does
//! not own the partition answers `NotOwner { owner, epoch }`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{BoxStream, FuturesOrdered};
use futures::StreamExt;
use routemq_proto::v1 as pb;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::backoff::Backoff;
use crate::peer::{ForwardBatch, ForwardReply, Forwarded, JournalPage, JournalQuery, PeerError, PeerNetwork};

/// Most messages in one forwarded frame.
pub const MAX_BATCH: usize = 256;
/// Messages queued per peer before callers wait.
const LINK_QUEUE: usize = 4096;
/// Batches a receiver works on at once per stream.
const SERVE_WINDOW: usize = 64;

/// Outcome of forwarding one message: the owner's answer, or why there was none (the peer
/// could not be reached or the stream broke before it answered; the caller re-sends).
pub type ForwardOutcome = Result<ForwardReply, PeerError>;

struct Pending {
    message: Forwarded,
    epoch: u64,
    reply: oneshot::Sender<ForwardOutcome>,
}

type InFlight = VecDeque<(u64, oneshot::Sender<ForwardOutcome>)>;

/// Long-lived forwarding links to peers, created on first use.
pub struct Forwarder {
    node_id: String,
    network: Arc<dyn PeerNetwork>,
    links: Mutex<HashMap<String, mpsc::Sender<Pending>>>,
    tasks: Mutex<JoinSet<()>>,
    cancel: CancellationToken,
}

impl Forwarder {
    /// A forwarder for node `node_id` over gRPC ([`crate::peer::grpc::shared`]).
    pub fn new(node_id: String) -> Self {
        Self::with_network(node_id, crate::peer::grpc::shared())
    }

    /// A forwarder for node `node_id` over `network`.
    pub fn with_network(node_id: String, network: Arc<dyn PeerNetwork>) -> Self {
        Self {
            node_id,
            network,
            links: Mutex::new(HashMap::new()),
            tasks: Mutex::new(JoinSet::new()),
            cancel: CancellationToken::new(),
        }
    }

    /// The peer network the links run over (also used for the dispatcher's journal reads).
    pub fn network(&self) -> Arc<dyn PeerNetwork> {
        self.network.clone()
    }

    /// Forwards `message` to the node at `addr`, tagged with the sender's `epoch`; resolves with
    /// the peer's result for it.
    pub async fn forward(&self, addr: &str, epoch: u64, message: Forwarded) -> ForwardOutcome {
        let link = self.link(addr);
        let (reply, done) = oneshot::channel();
        let stopped = || PeerError::unreachable(addr, "forwarder stopped");
        link.send(Pending {
            message,
            epoch,
            reply,
        })
        .await
        .map_err(|_| stopped())?;
        done.await.map_err(|_| stopped())?
    }

    fn link(&self, addr: &str) -> mpsc::Sender<Pending> {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(link) = links.get(addr) {
            if !link.is_closed() {
                return link.clone();
            }
        }
        let (tx, rx) = mpsc::channel(LINK_QUEUE);
        let link = PeerLink {
            addr: addr.to_string(),
            sender: self.node_id.clone(),
            network: self.network.clone(),
            queue: rx,
            cancel: self.cancel.clone(),
        };
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .spawn(link.run());
        links.insert(addr.to_string(), tx.clone());
        tx
    }

    /// Stops every link; queued messages are answered `Unreachable`.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        let mut tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        while tasks.join_next().await.is_some() {}
        self.links.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// One peer's stream: batches queued messages, matches acks, reconnects after failures.
struct PeerLink {
    addr: String,
    sender: String,
    network: Arc<dyn PeerNetwork>,
    queue: mpsc::Receiver<Pending>,
    cancel: CancellationToken,
}

impl PeerLink {
    async fn run(mut self) {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
        loop {
            // Wait for work before connecting, so idle peers cost nothing.
            let first = tokio::select! {
                _ = self.cancel.cancelled() => return,
                item = self.queue.recv() => match item { Some(p) => p, None => return },
            };
            match self.session(first).await {
                Ok(()) => return,
                Err(reason) => {
                    tracing::debug!(peer = %self.addr, %reason, "forward stream ended; reconnecting");
                    tokio::select! {
                        _ = self.cancel.cancelled() => return,
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                }
            }
        }
    }

    /// Runs one stream until it breaks (Err) or the forwarder stops (Ok).
    async fn session(&mut self, first: Pending) -> Result<(), PeerError> {
        let mut in_flight = InFlight::new();
        let result = self.session_inner(first, &mut in_flight).await;
        let error = match &result {
            Ok(()) => PeerError::unreachable(&self.addr, "forwarder stopped"),
            Err(e) => e.clone(),
        };
        for (_, reply) in in_flight.drain(..) {
            let _ = reply.send(Err(error.clone()));
        }
        metrics::gauge!(crate::metrics::FORWARD_IN_FLIGHT, "peer" => self.addr.clone()).set(0.0);
        result
    }

    async fn session_inner(&mut self, first: Pending, in_flight: &mut InFlight) -> Result<(), PeerError> {
        let closed = |addr: &str| PeerError::unreachable(addr, "stream closed");
        let (out_tx, out_rx) = mpsc::channel::<ForwardBatch>(8);
        let mut next_seq: u64 = 0;
        let mut batch = self.batch_with(first, &mut next_seq, in_flight);
        // Open the stream with the first batch already queued.
        out_tx.send(batch).await.map_err(|_| closed(&self.addr))?;
        let mut inbound = self
            .network
            .forward(&self.addr, ReceiverStream::new(out_rx).boxed())
            .await?;
        loop {
            metrics::gauge!(crate::metrics::FORWARD_IN_FLIGHT, "peer" => self.addr.clone())
                .set(in_flight.len() as f64);
            tokio::select! {
                _ = self.cancel.cancelled() => return Ok(()),
                item = self.queue.recv(), if in_flight.len() < LINK_QUEUE => {
                    let Some(pending) = item else { return Ok(()) };
                    batch = self.batch_with(pending, &mut next_seq, in_flight);
                    out_tx.send(batch).await.map_err(|_| closed(&self.addr))?;
                }
                ack = inbound.next() => {
                    let replies = ack.ok_or_else(|| PeerError::unreachable(&self.addr, "peer closed the stream"))??;
                    for reply in replies {
                        match in_flight.pop_front() {
                            Some((seq, done)) if seq == reply.seq => { let _ = done.send(Ok(reply)); }
                            Some((seq, done)) => {
                                let error = PeerError::Protocol(format!(
                                    "ack out of order (expected {seq}, got {})", reply.seq
                                ));
                                let _ = done.send(Err(error.clone()));
                                return Err(error);
                            }
                            None => return Err(PeerError::Protocol("ack for nothing in flight".into())),
                        }
                    }
                }
            }
        }
    }

    /// Builds a batch from `first` and whatever else is queued (up to [`MAX_BATCH`]). The
    /// batch carries the highest sender epoch of its messages: epochs only grow, and the
    /// receiver uses it only to wait until its own config has caught up.
    fn batch_with(&mut self, first: Pending, next_seq: &mut u64, in_flight: &mut InFlight) -> ForwardBatch {
        let mut epoch = 0;
        let mut messages = Vec::new();
        let mut next = Some(first);
        while let Some(mut pending) = next.take() {
            epoch = epoch.max(pending.epoch);
            pending.message.seq = *next_seq;
            in_flight.push_back((*next_seq, pending.reply));
            *next_seq += 1;
            messages.push(pending.message);
            if messages.len() < MAX_BATCH {
                next = self.queue.try_recv().ok();
            }
        }
        metrics::histogram!(crate::metrics::FORWARD_BATCH_SIZE).record(messages.len() as f64);
        ForwardBatch {
            epoch,
            sender: self.sender.clone(),
            messages,
        }
    }
}

/// Receives forwarded messages: decides ownership and processes them.
#[async_trait::async_trait]
pub trait ForwardTarget: Send + Sync + 'static {
    /// Takes one forwarded message sent under `sender_epoch`. Awaiting this enqueues the message
    /// (waiting if the partition's queue is full); the returned future resolves with its result.
    /// Messages accepted one after the other are processed in that order.
    async fn accept(
        self: Arc<Self>,
        sender_epoch: u64,
        message: Forwarded,
    ) -> futures::future::BoxFuture<'static, ForwardReply>;

    /// Reads a journal locally on behalf of another node.
    async fn read_local_journal(self: Arc<Self>, query: JournalQuery) -> Result<JournalPage, PeerError>;
}

/// Serves one inbound forwarding stream into `target`: every batch's messages are enqueued in
/// order, and one ack per batch comes out of the returned channel, in batch order. Ends when
/// `batches` ends or `stop` is cancelled (after answering what it accepted).
pub fn serve_stream<T: ForwardTarget + ?Sized>(
    target: Arc<T>,
    mut batches: BoxStream<'static, ForwardBatch>,
    stop: CancellationToken,
) -> mpsc::Receiver<Vec<ForwardReply>> {
    let (tx, rx) = mpsc::channel(16);
    // This task's lifetime is the stream's: it ends when the sender closes the stream, the
    // receiver of the acks is dropped, or `stop`.
    tokio::spawn(async move {
        let mut acks: FuturesOrdered<futures::future::BoxFuture<'static, Vec<ForwardReply>>> =
            FuturesOrdered::new();
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                batch = batches.next(), if acks.len() < SERVE_WINDOW => match batch {
                    Some(batch) => {
                        // Enqueue every message now, in order; await the results later.
                        let mut results = Vec::with_capacity(batch.messages.len());
                        for message in batch.messages {
                            results.push(target.clone().accept(batch.epoch, message).await);
                        }
                        acks.push_back(Box::pin(futures::future::join_all(results)));
                    }
                    None => break,
                },
                Some(ack) = acks.next() => {
                    if tx.send(ack).await.is_err() {
                        return;
                    }
                }
            }
        }
        while let Some(ack) = acks.next().await {
            if tx.send(ack).await.is_err() {
                return;
            }
        }
    });
    rx
}

/// gRPC `routemq.v1.Forward` server.
pub struct ForwardService<T> {
    target: Arc<T>,
    stop: CancellationToken,
}

impl<T> ForwardService<T> {
    /// Serves forwarded messages into `target`; open streams end (after answering what they
    /// accepted) when `stop` is cancelled, so that they do not hold the server's graceful
    /// shutdown open while the peers that opened them keep running.
    pub fn new(target: Arc<T>, stop: CancellationToken) -> Self {
        Self { target, stop }
    }
}

#[tonic::async_trait]
impl<T: ForwardTarget> pb::forward_server::Forward for ForwardService<T> {
    type StreamStream = ReceiverStream<Result<pb::ForwardAck, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<pb::ForwardBatch>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        // A broken inbound stream ends the batches like a closed one.
        let batches = futures::stream::unfold(request.into_inner(), |mut inbound| async move {
            match inbound.message().await {
                Ok(Some(batch)) => Some((ForwardBatch::from(batch), inbound)),
                _ => None,
            }
        })
        .boxed();
        let mut acks = serve_stream(self.target.clone(), batches, self.stop.clone());
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            while let Some(ack) = acks.recv().await {
                if tx
                    .send(Ok(crate::peer::convert::forward::ack(ack)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn read_journal(
        &self,
        request: Request<pb::ReadJournalRequest>,
    ) -> Result<Response<pb::ReadJournalResponse>, Status> {
        self.target
            .clone()
            .read_local_journal(request.into_inner().into())
            .await
            .map(|page| Response::new(page.into()))
            .map_err(|e| crate::api::peer_status(&e))
    }
}
