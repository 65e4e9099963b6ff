//! Handoff I/O: the task that fetches partitions this node now owns, and the gRPC service
//! that answers other nodes' fetches. What to fetch, whom to believe and when a holder may
//! answer are decided by [`crate::ownership`]; this module moves the bytes.
//!
//! Peers are called through [`PeerNetwork`] (gRPC `routemq.v1.Handoff` in the node, the
//! in-memory twin in tests); [`HandoffService`] answers them, as a [`HandoffTarget`] and as
//! the gRPC service.
//!
//! A fetch asks every other member (active or leaving) about a batch of partitions. Each answers per partition: not a holder, not yet, or the data
//! with its version (streamed in chunks). Once every member answered without "not yet", the
//! newest version is imported into the journal in one durable write (replacing whatever stale
//! copy was here) and the partition becomes active. Members that do not answer are asked
//! again; a member removed from the config (failed over) is no longer asked.
//!
//! A node that was failed over and is a member again *returns* the history it held
//! (`Handoff/Return`): the current owner puts it before its own entries, as a job in the
//! partition's lane so it is serialized with processing. If the returning node is itself
//! the owner again, its old history is merged into what it fetches.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::StreamExt;
use routemq_proto::v1 as pb;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::backoff::Backoff;
use crate::fencing::{ConfigSource, Fence};
use crate::handler::{Handled, Handler, HandlerContext, HandlerError, Message, Pipeline};
use crate::journal::{Journal, PartitionData};
use crate::lease::LeaseStatus;
use crate::ownership::{Answer, FetchDecision, Phase};
use crate::peer::{
    ActiveOf, FetchReply, FetchRequest, HandoffTarget, PartitionAnswer, PeerError, PeerNetwork, Refusal,
    ReturnRequest,
};
use crate::processor::{ProcessError, Processor, Refused};

/// Most partitions asked for in one request.
const FETCH_BATCH: usize = 1024;
/// How long one fetch round may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a handoff request was not served.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HandoffError {
    /// The request is malformed (too many partitions, data of another partition).
    #[error("{0}")]
    Invalid(String),
    /// The partition is not active here (a return must wait for the owner to activate it).
    #[error("partition {0} is not active here")]
    NotActive(u32),
    /// The partition's lane did not run the merge.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// Merging failed.
    #[error("{0}")]
    Failed(String),
}

impl From<HandoffError> for PeerError {
    fn from(e: HandoffError) -> PeerError {
        match e {
            HandoffError::Invalid(why) => PeerError::refused(Refusal::Invalid, why),
            HandoffError::NotActive(_) | HandoffError::Refused(_) => PeerError::Unavailable(e.to_string()),
            HandoffError::Failed(why) => PeerError::refused(Refusal::Internal, why),
        }
    }
}

/// Fetches partitions this node owns but does not hold yet, until `cancel`, over gRPC.
pub async fn fetch_loop(
    fence: Arc<Fence>,
    config: Arc<dyn ConfigSource>,
    journal: Journal,
    node_id: String,
    cancel: CancellationToken,
) {
    fetch_loop_via(
        crate::peer::grpc::shared(),
        fence,
        config,
        journal,
        node_id,
        cancel,
    )
    .await
}

/// Fetches partitions this node owns but does not hold yet, until `cancel`, over `network`.
pub async fn fetch_loop_via(
    network: Arc<dyn PeerNetwork>,
    fence: Arc<Fence>,
    config: Arc<dyn ConfigSource>,
    journal: Journal,
    node_id: String,
    cancel: CancellationToken,
) {
    let mut changes = fence.lease_valid(); // any wake-up source; the tick does the rest
    let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(250));
    loop {
        let pass = tokio::select! {
            _ = cancel.cancelled() => return,
            pass = fetch_once(&*network, &fence, &*config, &journal, &node_id) => pass,
        };
        let delay = match pass {
            None => {
                backoff.reset();
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = changes.changed() => {}
                    _ = tokio::time::sleep(Duration::from_millis(25)) => {}
                }
                continue;
            }
            Some(0) => backoff.next_delay(),
            Some(_) => {
                backoff.reset();
                backoff.next_delay()
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// One pass of the fetch loop: with nothing to fetch, gives orphaned history back and returns
/// `None`; otherwise asks every member once about every partition being fetched, imports what
/// the answers allow, and returns how many partitions became active.
pub async fn fetch_once(
    network: &dyn PeerNetwork,
    fence: &Arc<Fence>,
    config: &dyn ConfigSource,
    journal: &Journal,
    node_id: &str,
) -> Option<usize> {
    let (partitions, peers, epoch) = fence.fetch_plan();
    if partitions.is_empty() {
        return_orphans(network, fence, config, journal, node_id).await;
        return None;
    }
    let started = Instant::now();
    let view = config.local_view();
    let addrs: BTreeMap<String, Option<String>> = peers
        .iter()
        .map(|p| {
            (
                p.clone(),
                view.state.config.members.get(p).map(|m| m.grpc_addr.clone()),
            )
        })
        .collect();
    let mut progressed = 0usize;
    for batch in partitions.chunks(FETCH_BATCH) {
        let round = fetch_round(network, node_id, epoch, batch, &addrs).await;
        progressed += apply_round(fence, journal, batch, round).await;
    }
    if progressed > 0 {
        tracing::info!(
            partitions = progressed,
            took = ?started.elapsed(),
            "handoff: partitions fetched and activated"
        );
    }
    Some(progressed)
}

/// Answers and data of one round, per partition and member.
struct Round {
    answers: BTreeMap<u32, BTreeMap<String, Option<Answer>>>,
    data: HashMap<(u32, String), PartitionData>,
}

async fn fetch_round(
    network: &dyn PeerNetwork,
    node_id: &str,
    epoch: u64,
    batch: &[u32],
    addrs: &BTreeMap<String, Option<String>>,
) -> Round {
    let calls = addrs.iter().map(|(peer, addr)| async move {
        let result = match addr {
            Some(addr) => {
                let request = FetchRequest {
                    requester: node_id.to_string(),
                    epoch,
                    partitions: batch.to_vec(),
                };
                tokio::time::timeout(FETCH_TIMEOUT, network.fetch(addr, request))
                    .await
                    .unwrap_or(Err(PeerError::Timeout))
            }
            None => Err(PeerError::Unavailable("no address".into())),
        };
        (peer.clone(), result)
    });
    let mut round = Round {
        answers: batch.iter().map(|p| (*p, BTreeMap::new())).collect(),
        data: HashMap::new(),
    };
    for (peer, result) in futures::future::join_all(calls).await {
        match result {
            Ok(per_partition) => {
                let per_partition: FetchReply = per_partition;
                for (p, (answer, data)) in per_partition {
                    if let Some(answers) = round.answers.get_mut(&p) {
                        answers.insert(peer.clone(), Some(answer));
                        if let Some(data) = data {
                            round.data.insert((p, peer.clone()), data);
                        }
                    }
                }
                for answers in round.answers.values_mut() {
                    answers.entry(peer.clone()).or_insert(None);
                }
            }
            Err(why) => {
                tracing::debug!(%peer, %why, "handoff fetch failed; will ask again");
                for answers in round.answers.values_mut() {
                    answers.insert(peer.clone(), None);
                }
            }
        }
    }
    round
}

/// Applies one round's decisions; returns how many partitions became active.
async fn apply_round(fence: &Arc<Fence>, journal: &Journal, batch: &[u32], mut round: Round) -> usize {
    let mut imports = Vec::new();
    let mut keep = Vec::new();
    // One look at the slots for the whole round (each `with_ownership` locks and wakes watchers).
    let decisions: Vec<(u32, FetchDecision)> = fence.with_ownership(|o| {
        batch
            .iter()
            .filter_map(|p| {
                round
                    .answers
                    .get(p)
                    .map(|answers| (*p, o.decide_fetch(*p, answers)))
            })
            .collect()
    });
    for (p, decision) in decisions {
        match decision {
            FetchDecision::Retry => {}
            FetchDecision::KeepOwn { .. } => keep.push(p),
            FetchDecision::Fresh => imports.push((p, 0, PartitionData::default())),
            FetchDecision::Import { from, version } => match round.data.remove(&(p, from.clone())) {
                Some(data) => imports.push((p, version, data)),
                None => {
                    tracing::warn!(partition = p, %from, "handoff data missing from the answer; asking again")
                }
            },
        }
    }
    if imports.is_empty() && keep.is_empty() {
        return 0;
    }
    let fence = fence.clone();
    let journal = journal.clone();
    tokio::task::spawn_blocking(move || {
        // Under the fence's lock: the slots cannot change between the check and the import;
        // one durable write for the whole round.
        let result = fence.with_ownership(|o| {
            let fetching = |p: &u32| o.slot(*p).map(|s| s.phase) == Some(Phase::Fetching);
            let ready: Vec<(u32, u64, &PartitionData)> = imports
                .iter()
                .filter(|(p, _, _)| fetching(p))
                .map(|(p, v, d)| (*p, *v, d))
                .collect();
            let kept: Vec<u32> = keep.iter().copied().filter(fetching).collect();
            // The copy's new version: this activation's epoch, recorded with the data.
            let epoch = o.epoch();
            let parts: Vec<(u32, &PartitionData)> = ready.iter().map(|(p, _, d)| (*p, *d)).collect();
            // Our own history of a partition we held before we were failed over goes first.
            let orphans: Vec<u32> = o.orphans().into_iter().map(|(p, _)| p).collect();
            tracing::debug!(
                orphans = orphans.len(),
                importing = parts.len(),
                "importing fetched partitions"
            );
            let mut mine = Vec::new();
            for (p, _) in &parts {
                if orphans.contains(p) {
                    let older = journal.export_partition(*p)?;
                    if older.entries.is_empty() {
                        o.orphan_returned(*p);
                    } else {
                        mine.push((*p, older));
                    }
                }
            }
            journal.import_partitions(&parts, epoch)?;
            journal.record_held(&kept.iter().map(|p| (*p, epoch)).collect::<Vec<_>>())?;
            for (p, older) in mine {
                let restored = journal.merge_older(p, &older)?;
                tracing::info!(
                    partition = p,
                    restored,
                    "own history from before the failover put back"
                );
                o.orphan_returned(p);
            }
            let activated = ready.iter().map(|(p, _, _)| *p).chain(kept);
            Ok::<usize, crate::journal::JournalError>(activated.filter(|p| o.fetched(*p)).count())
        });
        match result {
            Ok(activated) => activated,
            Err(e) => {
                tracing::error!(error = %e, "cannot import handed-over partition data; will fetch again");
                0
            }
        }
    })
    .await
    .unwrap_or(0)
}

/// Most orphaned partitions given back per round.
const RETURN_BATCH: usize = 64;

/// Gives the history of partitions this node held when it was failed over back to their
/// current owners (once it is a member with a valid lease again).
async fn return_orphans(
    network: &dyn PeerNetwork,
    fence: &Arc<Fence>,
    config: &dyn ConfigSource,
    journal: &Journal,
    node_id: &str,
) {
    let orphans = fence.with_ownership(|o| o.orphans());
    if orphans.is_empty() || fence.lease_status() != LeaseStatus::Valid {
        return;
    }
    let view = config.local_view();
    for (p, version) in orphans.into_iter().take(RETURN_BATCH) {
        let Some(owner) = view.ring.owner_of_partition(p).map(str::to_string) else {
            continue;
        };
        if owner == node_id {
            // Ours again: merged when the fetch imports it (or, if already active, it is ours).
            if fence.with_ownership(|o| o.accepts_return(p)) {
                fence.with_ownership(|o| o.orphan_returned(p));
            }
            continue;
        }
        let Some(addr) = view.state.config.members.get(&owner).map(|m| m.grpc_addr.clone()) else {
            continue;
        };
        let j = journal.clone();
        let data = match tokio::task::spawn_blocking(move || j.export_partition(p)).await {
            Ok(Ok(data)) => data,
            _ => continue,
        };
        if data.entries.is_empty() {
            fence.with_ownership(|o| o.orphan_returned(p));
            continue;
        }
        let request = ReturnRequest {
            from: node_id.to_string(),
            partition: p,
            version,
            data,
        };
        match tokio::time::timeout(FETCH_TIMEOUT, network.give_back(&addr, request)).await {
            Ok(Ok(restored)) => {
                tracing::info!(partition = p, to = %owner, restored,
                    "history from before the failover given back to the owner");
                fence.with_ownership(|o| o.orphan_returned(p));
            }
            Ok(Err(why)) => tracing::debug!(partition = p, %why, "owner cannot take the history back yet"),
            Err(_) => tracing::debug!(partition = p, "giving history back timed out"),
        }
    }
}

/// Merges returned history into a partition's journal, run in the partition's lane.
struct MergeReturned {
    data: PartitionData,
}

#[async_trait::async_trait]
impl Handler for MergeReturned {
    async fn handle(&self, ctx: &HandlerContext, message: &Message) -> Result<Handled, HandlerError> {
        let (journal, data, p) = (ctx.journal.clone(), self.data.clone(), message.partition);
        let restored = tokio::task::spawn_blocking(move || journal.merge_older(p, &data))
            .await
            .map_err(|e| HandlerError::Failed(e.to_string()))?
            .map_err(|e| HandlerError::Failed(e.to_string()))?;
        tracing::info!(partition = p, restored, from = %message.key, "history of a failed-over node put back");
        Ok(Handled::default())
    }
}

/// Answers other nodes' fetches from this node's journal, and takes back the history of
/// returning nodes: as a [`HandoffTarget`] (any peer network) and as the gRPC
/// `routemq.v1.Handoff` service.
pub struct HandoffService {
    fence: Arc<Fence>,
    journal: Journal,
    processor: Arc<Processor>,
}

impl HandoffService {
    /// The service over this node's fence, journal and processor.
    pub fn new(fence: Arc<Fence>, journal: Journal, processor: Arc<Processor>) -> Self {
        Self {
            fence,
            journal,
            processor,
        }
    }

    /// The answers to a fetch, one partition after the other, lazily (as the asker reads).
    pub fn answer_fetch(
        &self,
        request: FetchRequest,
    ) -> Result<BoxStream<'static, PartitionAnswer>, HandoffError> {
        if request.partitions.len() > 4 * FETCH_BATCH {
            return Err(HandoffError::Invalid("too many partitions in one fetch".into()));
        }
        let fence = self.fence.clone();
        let journal = self.journal.clone();
        let (epoch, requester) = (request.epoch, request.requester);
        Ok(futures::stream::iter(request.partitions)
            .then(move |p| answer_one(fence.clone(), journal.clone(), p, epoch, requester.clone()))
            .boxed())
    }

    /// Puts a returning node's history of a partition before the owner's own entries (as a job
    /// in the partition's lane); how many entries it sent.
    pub async fn take_back(&self, request: ReturnRequest) -> Result<u64, HandoffError> {
        let p = request.partition;
        let start = p.to_be_bytes();
        let data = request.data;
        if data
            .entries
            .iter()
            .chain(&data.ids)
            .any(|(k, _)| !k.starts_with(&start))
        {
            return Err(HandoffError::Invalid(
                "returned data holds keys of another partition".into(),
            ));
        }
        if !self.fence.with_ownership(|o| o.accepts_return(p)) {
            return Err(HandoffError::NotActive(p));
        }
        let entries = data.entries.len() as u64;
        let message = Message {
            route: "$return".into(),
            topic: String::new(),
            params: Vec::new(),
            key: request.from,
            partition: p,
            payload: Vec::new(),
            message_id: format!("$return/{}/{}", p, request.version),
            epoch: request.version,
        };
        match self
            .processor
            .process_ordered(
                message,
                Pipeline::new(Vec::new(), Arc::new(MergeReturned { data })),
            )
            .await
        {
            Ok(_) => Ok(entries),
            Err(ProcessError::Refused(r)) => Err(HandoffError::Refused(r)),
            Err(ProcessError::Handler(e)) => Err(HandoffError::Failed(e.to_string())),
        }
    }

    /// Which of `partitions` this node is the active owner of, and at which epoch.
    pub fn answer_active_of(&self, partitions: &[u32]) -> Result<ActiveOf, HandoffError> {
        if partitions.len() > 4 * FETCH_BATCH {
            return Err(HandoffError::Invalid("too many partitions in one request".into()));
        }
        let (active, epoch) = self.fence.active_of(partitions);
        Ok(ActiveOf { active, epoch })
    }
}

#[async_trait::async_trait]
impl HandoffTarget for HandoffService {
    fn fetch(&self, request: FetchRequest) -> Result<BoxStream<'static, PartitionAnswer>, PeerError> {
        Ok(self.answer_fetch(request)?)
    }

    async fn give_back(&self, request: ReturnRequest) -> Result<u64, PeerError> {
        Ok(self.take_back(request).await?)
    }

    fn active_of(&self, partitions: &[u32]) -> Result<ActiveOf, PeerError> {
        Ok(self.answer_active_of(partitions)?)
    }
}

type ChunkStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::FetchChunk, Status>> + Send>>;

fn status(e: HandoffError) -> Status {
    crate::api::peer_status(&PeerError::from(e))
}

#[tonic::async_trait]
impl pb::handoff_server::Handoff for HandoffService {
    type FetchStream = ChunkStream;

    async fn fetch(&self, request: Request<pb::FetchRequest>) -> Result<Response<Self::FetchStream>, Status> {
        let answers = self.answer_fetch(request.into_inner().into()).map_err(status)?;
        let chunks = answers.flat_map(|answer| {
            futures::stream::iter(crate::peer::convert::handoff::chunks(answer).into_iter().map(Ok))
        });
        Ok(Response::new(Box::pin(chunks)))
    }

    async fn r#return(
        &self,
        request: Request<pb::ReturnRequest>,
    ) -> Result<Response<pb::ReturnResponse>, Status> {
        let restored = self
            .take_back(request.into_inner().into())
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ReturnResponse { restored }))
    }

    async fn active_of(
        &self,
        request: Request<pb::ActiveOfRequest>,
    ) -> Result<Response<pb::ActiveOfResponse>, Status> {
        let answer = self
            .answer_active_of(&request.into_inner().partitions)
            .map_err(status)?;
        Ok(Response::new(answer.into()))
    }
}

/// A leaving node asks the owners of the partitions it handed over whether they are active
/// with them (over gRPC), and marks those that are as confirmed. Returns how many were
/// confirmed.
pub async fn confirm_handed_over(fence: &Fence, config: &dyn ConfigSource) -> usize {
    confirm_handed_over_via(&*crate::peer::grpc::shared(), fence, config).await
}

/// [`confirm_handed_over`] over `network`.
pub async fn confirm_handed_over_via(
    network: &dyn PeerNetwork,
    fence: &Fence,
    config: &dyn ConfigSource,
) -> usize {
    let (unconfirmed, epoch) = fence.unconfirmed();
    if unconfirmed.is_empty() {
        return 0;
    }
    let view = config.local_view();
    let mut by_owner: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for p in unconfirmed {
        if let Some(owner) = view.ring.owner_of_partition(p) {
            by_owner.entry(owner.to_string()).or_default().push(p);
        }
    }
    let calls = by_owner.into_iter().filter_map(|(owner, partitions)| {
        let addr = view.state.config.members.get(&owner)?.grpc_addr.clone();
        Some(async move {
            let mut confirmed = Vec::new();
            for chunk in partitions.chunks(4 * FETCH_BATCH) {
                match tokio::time::timeout(FETCH_TIMEOUT, network.active_of(&addr, chunk.to_vec())).await {
                    // An owner behind our epoch may still lose the partition: ask again later.
                    Ok(Ok(answer)) if answer.epoch >= epoch => confirmed.extend(answer.active),
                    Ok(Ok(_)) => {}
                    Ok(Err(why)) => tracing::debug!(%owner, %why, "cannot ask the owner; will ask again"),
                    Err(_) => tracing::debug!(%owner, "asking the owner timed out; will ask again"),
                }
            }
            confirmed
        })
    });
    let confirmed: Vec<u32> = futures::future::join_all(calls)
        .await
        .into_iter()
        .flatten()
        .collect();
    fence.confirm(&confirmed);
    confirmed.len()
}

/// The answer to a fetch of one partition.
async fn answer_one(
    fence: Arc<Fence>,
    journal: Journal,
    p: u32,
    epoch: u64,
    requester: String,
) -> PartitionAnswer {
    match fence.with_ownership(|o| o.serve(p, epoch)) {
        Answer::Data { version } => {
            match tokio::task::spawn_blocking(move || journal.export_partition(p)).await {
                Ok(Ok(data)) => {
                    tracing::debug!(partition = p, to = %requester, version, entries = data.entries.len(),
                    "handing partition over");
                    (p, Answer::Data { version }, Some(data))
                }
                Ok(Err(e)) => {
                    tracing::error!(partition = p, error = %e, "cannot export partition");
                    (p, Answer::NotYet, None)
                }
                Err(_) => (p, Answer::NotYet, None),
            }
        }
        other => (p, other, None),
    }
}
