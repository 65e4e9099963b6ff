//! The dispatcher: takes a message from any ingress to the node that processes it.
//!
//! For each message: validate the topic and payload size at the edge, match the first route,
//! extract the key, hash it to a partition, and look up the partition's owner in the config
//! applied on this node. Shared routes are processed right here (any node may process them).
//! Ordered routes are processed by the owner: locally when that is this node, otherwise
//! forwarded over the peer's stream ([`crate::forward`]). A receiver that is not the owner at
//! its epoch answers `NotOwner`; the sender waits until its own config reaches that epoch and
//! re-sends to the new owner. The caller's future resolves only once the owner accepted the
//! message, so an ingress acknowledges nothing that was not accepted.
//!
//! Ordered routes go through the node's fence ([`crate::fencing`]): a node without a valid
//! ownership lease (cut off from the Raft majority) answers `Unavailable` at once, and the
//! owner's processor admits a message only while ownership and lease allow it.
//!
//! The decisions are pure functions of the applied config: [`route`] (where a message goes)
//! and [`check_forwarded`] (whether a forwarded message is this node's to process). The
//! [`Dispatcher`] only carries the message where they say, and retries.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::config::ConfigView;
use crate::fencing::{ConfigSource, Fence};
use crate::forward::{ForwardTarget, Forwarder};
use crate::handler::{
    now_unix_ms, Handler, HandlerContext, HandlerRegistry, JournalHandler, LogHandler, Message, Pipeline,
    RepublishHandler,
};
use crate::lease::LeaseStatus;
use crate::message::{Accepted, Dispatch, InboundMessage, PublishError};
use crate::peer::{ForwardOutcome, ForwardReply, Forwarded, JournalPage, JournalQuery, PeerError, Refusal};
use crate::processor::{ProcessError, Processor, Refused};
use crate::ring::partition_for_key;
use crate::routes::{CompiledRoute, HandlerSpec, RouteMode, RouteSpec};

/// How long a message may take to reach its owner (retries included) before `Unavailable`.
const DISPATCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Most journal entries one read returns.
pub const MAX_JOURNAL_READ: usize = 1000;

/// Limits enforced at the edge.
#[derive(Debug, Clone, Copy)]
pub struct DispatchLimits {
    /// Largest accepted payload, bytes.
    pub max_payload: usize,
    /// Longest accepted topic, bytes.
    pub max_topic: usize,
}

impl Default for DispatchLimits {
    fn default() -> Self {
        Self {
            max_payload: 256 * 1024,
            max_topic: 1024,
        }
    }
}

/// A message's route, key and partition at one epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    /// The route that takes the topic.
    pub spec: RouteSpec,
    /// The same route as compiled in the table (its parsed republish template, ...).
    pub route: Arc<CompiledRoute>,
    /// The ordering key.
    pub key: String,
    /// The topic's parameters under the route's pattern.
    pub params: Vec<(String, String)>,
    /// The key's partition.
    pub partition: u32,
    /// The epoch of the view it was routed with.
    pub epoch: u64,
}

/// A topic's parameters under its route's pattern, in pattern order.
pub type RouteParams = Vec<(String, String)>;

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteDecision {
    /// Process it here (this node owns the partition, or the route is shared).
    Local(Routed),
    /// Forward it to `owner` at `addr`.
    Remote {
        /// The partition's owner.
        owner: String,
        /// The owner's gRPC address.
        addr: String,
        /// The message's route.
        routed: Routed,
    },
    /// It cannot go anywhere now.
    Reject(Rejection),
}

/// Why a message cannot be routed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// No route takes the topic.
    #[error("no route matches topic {0:?}")]
    NoRoute(String),
    /// The ring has no owner for the partition (not bootstrapped yet).
    #[error("no member owns the partition yet")]
    NoOwner,
    /// This node holds no valid lease (ordered routes only).
    #[error("{0}")]
    NoLease(String),
    /// The owner is not in the config's member list.
    #[error("no address for owner {0}")]
    NoAddress(String),
    /// This node is not a member of the config it applied (joining, or rejoining after it
    /// was removed): its routes may be missing or stale, so it can say nothing about the
    /// topic yet.
    #[error("this node is not a cluster member yet (joining or rejoining); retry, or send to another node")]
    NotMember,
}

impl From<Rejection> for PublishError {
    fn from(r: Rejection) -> PublishError {
        match r {
            Rejection::NoRoute(topic) => reject("no_route", PublishError::NoRoute(topic)),
            Rejection::NoLease(why) => reject("no_lease", PublishError::Unavailable(why)),
            other => PublishError::Unavailable(other.to_string()),
        }
    }
}

/// Where a message to `topic` goes, as node `node_id` sees it at `view` with lease `lease`:
/// shared routes here; ordered routes to the partition's owner, and nowhere without a valid
/// lease (cut off from the majority, this node cannot know who owns what).
pub fn route(view: &ConfigView, node_id: &str, lease: &LeaseStatus, topic: &str) -> RouteDecision {
    // Before it is a member a node has not applied the cluster's routes: "no route" (a final
    // NOT_FOUND) would be wrong for a route it has not heard of yet (seen by Jepsen
    // kill-wipe-one: a wiped node answered NOT_FOUND until it had joined).
    if !view.state.config.members.contains_key(node_id) {
        return RouteDecision::Reject(Rejection::NotMember);
    }
    let Some(found) = view.routes.route_for(topic) else {
        return RouteDecision::Reject(Rejection::NoRoute(topic.to_string()));
    };
    let spec = found.route().spec().clone();
    let key = found.key().to_string();
    let partition = partition_for_key(&view.state.config.ring, &key);
    let routed = Routed {
        route: found.route().clone(),
        params: params_vec(found.params()),
        key,
        partition,
        epoch: view.state.config.epoch,
        spec,
    };
    let owner = match routed.spec.mode {
        RouteMode::Shared { .. } => return RouteDecision::Local(routed),
        RouteMode::Ordered => view.ring.owner_of_partition(partition),
    };
    let Some(owner) = owner else {
        return RouteDecision::Reject(Rejection::NoOwner);
    };
    if let LeaseStatus::Invalid(why) = lease {
        return RouteDecision::Reject(Rejection::NoLease(why.clone()));
    }
    if owner == node_id {
        return RouteDecision::Local(routed);
    }
    match view.state.config.members.get(owner) {
        Some(member) => RouteDecision::Remote {
            owner: owner.to_string(),
            addr: member.grpc_addr.clone(),
            routed,
        },
        None => RouteDecision::Reject(Rejection::NoAddress(owner.to_string())),
    }
}

/// Whether node `node_id` at `view` processes `message`, forwarded under `sender_epoch`: the
/// route match if so, otherwise the answer to send back.
pub fn check_forwarded(
    view: &ConfigView,
    node_id: &str,
    sender_epoch: u64,
    message: &Forwarded,
) -> Result<(Arc<CompiledRoute>, RouteParams), ForwardOutcome> {
    let epoch = view.state.config.epoch;
    let owner = view.ring.owner_of_partition(message.partition);
    let expected_partition = partition_for_key(&view.state.config.ring, &message.key);
    if owner != Some(node_id) || expected_partition != message.partition {
        // Not ours at our epoch. A sender ahead of us is told to retry (we may become the
        // owner once we catch up); a sender behind us learns the owner and our epoch.
        let reason = format!(
            "{node_id} does not own partition {} at epoch {epoch}",
            message.partition
        );
        return Err(if sender_epoch > epoch {
            ForwardOutcome::Unavailable(reason)
        } else {
            ForwardOutcome::NotOwner {
                owner: owner.unwrap_or_default().to_string(),
                reason,
            }
        });
    }
    if message.ordered_ingress && sender_epoch != epoch {
        // The sender held the route at another epoch: at ours, another node may hold it.
        // Behind us it catches up (and finds it no longer holds the route, or sends again);
        // ahead of us it waits for us.
        let reason =
            format!("ordered-ingress message sent at epoch {sender_epoch}; {node_id} is at epoch {epoch}");
        return Err(if sender_epoch < epoch {
            ForwardOutcome::NotOwner {
                owner: node_id.to_string(),
                reason,
            }
        } else {
            ForwardOutcome::Unavailable(reason)
        });
    }
    let found = view
        .routes
        .route_for(&message.topic)
        .filter(|m| m.route().name() == message.route);
    let Some(found) = found else {
        return Err(ForwardOutcome::Failed(format!(
            "route {:?} does not match {:?} at epoch {epoch}",
            message.route, message.topic
        )));
    };
    Ok((found.route().clone(), params_vec(found.params())))
}

/// Why a journal read failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// The request is malformed.
    #[error("{0}")]
    Invalid(String),
    /// No route has that name.
    #[error("no route named {0:?}")]
    NoRoute(String),
    /// This node cannot answer now (it does not hold the newest data).
    #[error("{0}")]
    Unavailable(String),
    /// Reading the local journal failed.
    #[error("{0}")]
    Internal(String),
    /// The owner answered with an error, or could not be asked.
    #[error(transparent)]
    Peer(#[from] PeerError),
}

impl From<ReadError> for PeerError {
    fn from(e: ReadError) -> PeerError {
        match e {
            ReadError::Invalid(why) => PeerError::refused(Refusal::Invalid, why),
            ReadError::NoRoute(_) => PeerError::refused(Refusal::NotFound, e.to_string()),
            ReadError::Unavailable(why) => PeerError::Unavailable(why),
            ReadError::Internal(why) => PeerError::refused(Refusal::Internal, why),
            ReadError::Peer(e) => e,
        }
    }
}

/// The node's dispatcher.
pub struct Dispatcher {
    node_id: String,
    config: Arc<dyn ConfigSource>,
    processor: Arc<Processor>,
    forwarder: Arc<Forwarder>,
    registry: HandlerRegistry,
    ctx: HandlerContext,
    limits: DispatchLimits,
    fence: Arc<Fence>,
}

impl Dispatcher {
    /// A dispatcher for node `node_id`; it reaches peers through `forwarder` (and its network).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        node_id: String,
        config: Arc<dyn ConfigSource>,
        processor: Arc<Processor>,
        forwarder: Arc<Forwarder>,
        registry: HandlerRegistry,
        ctx: HandlerContext,
        limits: DispatchLimits,
        fence: Arc<Fence>,
    ) -> Self {
        Self {
            node_id,
            config,
            processor,
            forwarder,
            registry,
            ctx,
            limits,
            fence,
        }
    }

    /// The handler pipeline of a route.
    fn pipeline(&self, route: &CompiledRoute) -> Result<Pipeline, PublishError> {
        let spec = route.spec();
        let handler: Arc<dyn Handler> = match &spec.handler {
            HandlerSpec::Log => Arc::new(LogHandler),
            HandlerSpec::Journal => Arc::new(JournalHandler),
            HandlerSpec::Republish { .. } => {
                Arc::new(RepublishHandler::of_route(route).ok_or_else(|| {
                    PublishError::HandlerFailed(format!("route {} has no republish template", spec.name))
                })?)
            }
            HandlerSpec::Custom { name } => self.registry.get(name).ok_or_else(|| {
                PublishError::HandlerFailed(format!(
                    "route {} names custom handler {name:?}, which this node has not registered",
                    spec.name
                ))
            })?,
        };
        Ok(Pipeline::new(self.registry.middleware_chain(), handler))
    }

    /// Processes a message here (ordered: in its partition's lane, behind the fence).
    async fn process_local(
        &self,
        message: Message,
        route: &CompiledRoute,
    ) -> Result<crate::handler::Handled, ProcessError> {
        let pipeline = self
            .pipeline(route)
            .map_err(|e| ProcessError::Handler(crate::handler::HandlerError::Failed(e.to_string())))?;
        match route.mode() {
            RouteMode::Ordered => self.processor.process_ordered(message, pipeline).await,
            RouteMode::Shared { worker_count } => self
                .processor
                .process_shared(message, pipeline, worker_count)
                .await
                .map_err(ProcessError::from),
        }
    }

    /// Waits (bounded) until the locally applied epoch reaches `epoch`.
    async fn wait_for_epoch(&self, epoch: u64, deadline: Instant) {
        let mut applied = self.config.subscribe();
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_secs(2));
        let _ = tokio::time::timeout(wait, applied.wait_for(|s| s.config.epoch >= epoch)).await;
    }

    async fn dispatch_inner(&self, inbound: InboundMessage) -> Result<Accepted, PublishError> {
        let started = Instant::now();
        crate::routes::validate_topic(&inbound.topic, self.limits.max_topic)
            .map_err(|e| reject("invalid_topic", PublishError::InvalidTopic(e.to_string())))?;
        if inbound.payload.len() > self.limits.max_payload {
            return Err(reject(
                "payload_too_large",
                PublishError::PayloadTooLarge {
                    size: inbound.payload.len(),
                    limit: self.limits.max_payload,
                },
            ));
        }
        let message_id = if inbound.message_id.is_empty() {
            uuid::Uuid::new_v4().to_string()
        } else {
            inbound.message_id.clone()
        };
        let deadline = started + DISPATCH_TIMEOUT;
        let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(500));
        // Once per message: not again on re-sends below, nor on an ingress's retries.
        let mut counted = inbound.retry;
        loop {
            let view = self.config.local_view();
            let decision = route(&view, &self.node_id, &self.fence.lease_status(), &inbound.topic);
            if let RouteDecision::Local(routed) | RouteDecision::Remote { routed, .. } = &decision {
                if !std::mem::replace(&mut counted, true) {
                    metrics::counter!(crate::metrics::MESSAGES_RECEIVED, "route" => routed.spec.name.clone())
                        .increment(1);
                    self.ctx.stats.record_received();
                }
            }
            let retry_reason = match decision {
                RouteDecision::Reject(rejection) => return Err(rejection.into()),
                RouteDecision::Local(routed) => {
                    match self.run_here(&inbound, &message_id, &routed, started).await {
                        Ok(accepted) => return Ok(accepted),
                        Err(Retry::Again(why)) => why,
                        Err(Retry::Final(e)) => return Err(e),
                    }
                }
                RouteDecision::Remote { owner, addr, routed } => {
                    match self
                        .send_to_owner(&inbound, &message_id, &owner, &addr, &routed, started, deadline)
                        .await
                    {
                        Ok(accepted) => return Ok(accepted),
                        Err(Retry::Again(why)) => why,
                        Err(Retry::Final(e)) => return Err(e),
                    }
                }
            };
            let delay = backoff.next_delay();
            if Instant::now() + delay > deadline {
                return Err(PublishError::Unavailable(retry_reason));
            }
            tracing::debug!(reason = %retry_reason, "re-sending message");
            tokio::time::sleep(delay).await;
        }
    }

    /// Processes a routed message on this node.
    async fn run_here(
        &self,
        inbound: &InboundMessage,
        message_id: &str,
        routed: &Routed,
        started: Instant,
    ) -> Result<Accepted, Retry> {
        let message = Message {
            route: routed.spec.name.clone(),
            topic: inbound.topic.clone(),
            params: routed.params.clone(),
            key: routed.key.clone(),
            partition: routed.partition,
            payload: inbound.payload.clone(),
            message_id: message_id.to_string(),
            epoch: routed.epoch,
        };
        match self.process_local(message, &routed.route).await {
            Ok(_) => {
                record_latency(&routed.spec.name, started);
                Ok(accepted(message_id, routed, self.node_id.clone(), routed.epoch))
            }
            Err(ProcessError::Handler(e)) => Err(Retry::Final(PublishError::HandlerFailed(e.to_string()))),
            Err(ProcessError::Refused(Refused::Unavailable(why))) => {
                Err(Retry::Final(PublishError::Unavailable(why)))
            }
            // Ownership moved under us: look again with a newer view.
            Err(ProcessError::Refused(moved @ Refused::Moved { .. })) => Err(Retry::Again(moved.to_string())),
        }
    }

    /// Forwards a routed message to its owner and reads the answer.
    #[allow(clippy::too_many_arguments)]
    async fn send_to_owner(
        &self,
        inbound: &InboundMessage,
        message_id: &str,
        owner: &str,
        addr: &str,
        routed: &Routed,
        started: Instant,
        deadline: Instant,
    ) -> Result<Accepted, Retry> {
        let forwarded = Forwarded {
            seq: 0,
            route: routed.spec.name.clone(),
            key: routed.key.clone(),
            partition: routed.partition,
            topic: inbound.topic.clone(),
            payload: inbound.payload.clone(),
            message_id: message_id.to_string(),
            received_at_unix_ms: now_unix_ms(),
            ordered_ingress: inbound.ordered_ingress,
        };
        metrics::counter!(crate::metrics::MESSAGES_FORWARDED, "route" => routed.spec.name.clone())
            .increment(1);
        let reply = match self.forwarder.forward(addr, routed.epoch, forwarded).await {
            Ok(reply) => reply,
            Err(e) => return Err(Retry::Again(e.to_string())),
        };
        match reply.outcome {
            ForwardOutcome::Processed { .. } => {
                record_latency(&routed.spec.name, started);
                Ok(accepted(message_id, routed, owner.to_string(), reply.epoch))
            }
            ForwardOutcome::NotOwner { owner: new_owner, .. } => {
                // The receiver has a newer (or different) view: catch up, then re-send.
                self.wait_for_epoch(reply.epoch, deadline).await;
                Err(Retry::Again(format!(
                    "{owner} is not the owner at epoch {} (owner {new_owner})",
                    reply.epoch
                )))
            }
            ForwardOutcome::Failed(error) => Err(Retry::Final(PublishError::HandlerFailed(error))),
            ForwardOutcome::Unavailable(error) => Err(Retry::Again(error)),
        }
    }

    /// Reads a journal: from the local store if this node owns the key's partition, otherwise
    /// from the owner.
    pub async fn read_journal(&self, query: JournalQuery, forwarded: bool) -> Result<JournalPage, ReadError> {
        if query.route.is_empty() || query.key.is_empty() {
            return Err(ReadError::Invalid("route and key are required".into()));
        }
        let view = self.config.local_view();
        let known = view.routes.get(&query.route).is_some()
            || query
                .route
                .strip_prefix(crate::processor::DEAD_LETTER_PREFIX)
                .is_some_and(|r| view.routes.get(r).is_some());
        if !known && !forwarded {
            return Err(ReadError::NoRoute(query.route));
        }
        let partition = partition_for_key(&view.state.config.ring, &query.key);
        let owner = view.ring.owner_of_partition(partition).map(str::to_string);
        let readable = self.fence.readable(partition);
        if forwarded || owner.as_deref() == Some(self.node_id.as_str()) {
            // Only a node that holds the partition's newest data may answer: the active owner,
            // or the old owner while it drains. Anyone else would serve a partial history.
            if let Err(why) = readable {
                return Err(ReadError::Unavailable(why.to_string()));
            }
        }
        let local = readable.is_ok() || owner.is_none();
        if !local {
            let owner = owner.unwrap_or_default();
            let addr = view
                .state
                .config
                .members
                .get(&owner)
                .map(|m| m.grpc_addr.clone())
                .ok_or_else(|| ReadError::Unavailable(format!("no address for owner {owner}")))?;
            return Ok(self.forwarder.network().read_journal(&addr, query).await?);
        }
        let limit = match query.limit {
            0 => MAX_JOURNAL_READ,
            n => (n as usize).min(MAX_JOURNAL_READ),
        };
        let journal = self.ctx.journal.clone();
        let from_offset = query.from_offset;
        let (route, key) = (query.route, query.key);
        let (entries, end) =
            tokio::task::spawn_blocking(move || journal.read(partition, &route, &key, from_offset, limit))
                .await
                .map_err(|e| ReadError::Internal(e.to_string()))?
                .map_err(|e| ReadError::Internal(e.to_string()))?;
        let next_offset = entries.last().map(|r| r.offset + 1).unwrap_or(from_offset);
        Ok(JournalPage {
            entries,
            next_offset,
            end,
        })
    }
}

/// What to do after a failed attempt.
enum Retry {
    /// Look again (with a newer view), after a backoff; the reason if time runs out.
    Again(String),
    /// Give up with this error.
    Final(PublishError),
}

fn accepted(message_id: &str, routed: &Routed, processed_by: String, epoch: u64) -> Accepted {
    Accepted {
        message_id: message_id.to_string(),
        route: routed.spec.name.clone(),
        key: routed.key.clone(),
        partition: routed.partition,
        processed_by,
        epoch,
    }
}

fn params_vec(params: &crate::routes::Params) -> Vec<(String, String)> {
    params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn reject(reason: &'static str, error: PublishError) -> PublishError {
    metrics::counter!(crate::metrics::MESSAGES_REJECTED, "reason" => reason).increment(1);
    error
}

fn record_latency(route: &str, started: Instant) {
    metrics::histogram!(crate::metrics::END_TO_END_SECONDS, "route" => route.to_string())
        .record(started.elapsed().as_secs_f64());
}

impl Dispatch for Dispatcher {
    fn dispatch(
        &self,
        message: InboundMessage,
    ) -> impl std::future::Future<Output = Result<Accepted, PublishError>> + Send {
        self.dispatch_inner(message)
    }

    /// `<route>\0<key>` of the route that takes `topic`; the topic itself when none does (its
    /// dispatch fails anyway). Topics cannot contain NUL, so the two never collide.
    fn ordering_key(&self, topic: &str) -> String {
        let view = self.config.local_view();
        match view.routes.route_for(topic) {
            Some(m) => format!("{}\u{0}{}", m.route().name(), m.key()),
            None => topic.to_string(),
        }
    }

    /// Granted when the partition of the route's `$ingress/<route>` key is active here with a
    /// valid lease (see [`crate::ingress::ordered_holder`] and [`Fence::take_ingress_hold`]).
    fn take_ordered_hold(&self, route: &str) -> Option<Box<dyn crate::message::OrderedHold>> {
        let view = self.config.local_view();
        let partition = crate::ingress::ingress_partition(&view, route);
        let token = self.fence.take_ingress_hold(partition)?;
        Some(Box::new(IngressHold {
            fence: self.fence.clone(),
            partition,
            token,
        }))
    }
}

/// This node's hold on an ordered route's MQTT ingress; released when dropped.
struct IngressHold {
    fence: Arc<Fence>,
    partition: u32,
    token: u64,
}

impl crate::message::OrderedHold for IngressHold {
    fn is_valid(&self) -> bool {
        self.fence.ingress_hold_valid(self.partition, self.token)
    }
}

impl Drop for IngressHold {
    fn drop(&mut self) {
        self.fence.release_ingress_hold(self.partition, self.token);
    }
}

/// The receiving side of forwarding: checks ownership at this node's epoch and processes.
#[async_trait::async_trait]
impl ForwardTarget for Dispatcher {
    async fn accept(
        self: Arc<Self>,
        sender_epoch: u64,
        message: Forwarded,
    ) -> BoxFuture<'static, ForwardReply> {
        let seq = message.seq;
        let view = self.config.local_view();
        let epoch = view.state.config.epoch;
        let answer = move |outcome: ForwardOutcome| ForwardReply { seq, epoch, outcome };
        let (compiled, params) = match check_forwarded(&view, &self.node_id, sender_epoch, &message) {
            Ok(found) => found,
            Err(outcome) => return futures::future::ready(answer(outcome)).boxed(),
        };
        let spec = compiled.spec().clone();
        let pipeline = match self.pipeline(&compiled) {
            Ok(p) => p,
            Err(e) => return futures::future::ready(answer(ForwardOutcome::Failed(e.to_string()))).boxed(),
        };
        let msg = Message {
            route: message.route,
            topic: message.topic,
            params,
            key: message.key,
            partition: message.partition,
            payload: message.payload,
            message_id: message.message_id,
            epoch,
        };
        let node_id = self.node_id.clone();
        let processing: BoxFuture<'static, Result<crate::handler::Handled, ProcessError>> = match spec.mode {
            RouteMode::Ordered => match self.processor.enqueue_ordered(msg, pipeline).await {
                Ok(done) => done.boxed(),
                Err(e) => futures::future::ready(Err(e)).boxed(),
            },
            RouteMode::Shared { worker_count } => {
                let processor = self.processor.clone();
                async move {
                    processor
                        .process_shared(msg, pipeline, worker_count)
                        .await
                        .map_err(ProcessError::from)
                }
                .boxed()
            }
        };
        async move {
            answer(match processing.await {
                Ok(_) => ForwardOutcome::Processed { by: node_id },
                Err(ProcessError::Handler(e)) => ForwardOutcome::Failed(e.to_string()),
                // Not processed here (moving, no lease): the sender retries, in order.
                Err(ProcessError::Refused(r)) => ForwardOutcome::Unavailable(r.to_string()),
            })
        }
        .boxed()
    }

    async fn read_local_journal(self: Arc<Self>, query: JournalQuery) -> Result<JournalPage, PeerError> {
        // A forwarded read is served locally whatever this node believes about ownership, so
        // reads never bounce between nodes whose views differ for a moment.
        Ok(self.read_journal(query, true).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::state::{ClusterConfig, Command, Member, MemberState};
    use crate::fencing::view_of;
    use crate::ring::RingParams;

    fn member(id: &str, n: u64) -> Member {
        Member {
            node_id: id.into(),
            raft_id: n,
            grpc_addr: format!("10.0.0.{n}:7000"),
            gossip_addr: format!("10.0.0.{n}:7100"),
            http_addr: format!("10.0.0.{n}:7200"),
            weight: 1,
            state: MemberState::Active,
        }
    }

    fn spec(name: &str, pattern: &str, mode: RouteMode) -> RouteSpec {
        RouteSpec {
            name: name.into(),
            pattern: pattern.into(),
            group: String::new(),
            key_param: Some("id".into()),
            qos: 1,
            mode,
            handler: HandlerSpec::Log,
            priority: 0,
            message_id_field: None,
        }
    }

    /// Three members, an ordered route `o/{id}` and a shared route `s/{id}`.
    fn view() -> ConfigView {
        let mut config = ClusterConfig::default();
        let commands = [
            Command::Bootstrap {
                cluster_id: "c1".into(),
                ring: RingParams {
                    partitions: 16,
                    vnodes_per_weight: 16,
                },
                max_voters: 3,
                first: member("n1", 1),
            },
            Command::AddMember(member("n2", 2)),
            Command::AddMember(member("n3", 3)),
            Command::PutRoute {
                spec: spec("ordered", "o/{id}", RouteMode::Ordered),
                expected_version: None,
            },
            Command::PutRoute {
                spec: spec("shared", "s/{id}", RouteMode::Shared { worker_count: 2 }),
                expected_version: None,
            },
        ];
        for (i, command) in commands.iter().enumerate() {
            config.apply(i as u64 + 1, command).expect("valid command");
        }
        view_of(config)
    }

    /// A key of the ordered route owned by `owner`.
    fn topic_owned_by(view: &ConfigView, owner: &str) -> String {
        (0..1000)
            .map(|i| format!("o/key{i}"))
            .find(|t| {
                let key = &t[2..];
                let p = partition_for_key(&view.state.config.ring, key);
                view.ring.owner_of_partition(p) == Some(owner)
            })
            .expect("some key lands on every member")
    }

    #[test]
    fn ordered_messages_go_to_the_owner() {
        let view = view();
        let valid = LeaseStatus::Valid;
        let here = topic_owned_by(&view, "n1");
        match route(&view, "n1", &valid, &here) {
            RouteDecision::Local(routed) => {
                assert_eq!(routed.spec.name, "ordered");
                assert_eq!(routed.key, &here[2..]);
                assert_eq!(routed.params, [("id".to_string(), here[2..].to_string())]);
                assert_eq!(routed.epoch, view.state.config.epoch);
            }
            other => panic!("{other:?}"),
        }
        let there = topic_owned_by(&view, "n2");
        match route(&view, "n1", &valid, &there) {
            RouteDecision::Remote { owner, addr, routed } => {
                assert_eq!((owner.as_str(), addr.as_str()), ("n2", "10.0.0.2:7000"));
                assert_eq!(
                    routed.partition,
                    partition_for_key(&view.state.config.ring, &there[2..])
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_node_that_is_not_a_member_refuses_as_unavailable_not_as_no_route() {
        let view = view();
        let valid = LeaseStatus::Valid;
        for topic in ["o/x", "s/x", "nothing/matches"] {
            assert_eq!(
                route(&view, "n9", &valid, topic),
                RouteDecision::Reject(Rejection::NotMember),
                "{topic}"
            );
        }
        assert!(matches!(
            PublishError::from(Rejection::NotMember),
            PublishError::Unavailable(_)
        ));
        // A member still gets the final answer for a topic no route takes.
        assert_eq!(
            route(&view, "n1", &valid, "nothing/matches"),
            RouteDecision::Reject(Rejection::NoRoute("nothing/matches".into()))
        );
    }

    #[test]
    fn shared_messages_stay_here_even_without_a_lease() {
        let view = view();
        let no_lease = LeaseStatus::Invalid("expired".into());
        let decision = route(&view, "n3", &no_lease, "s/anything");
        assert!(
            matches!(&decision, RouteDecision::Local(r) if r.spec.name == "shared"),
            "{decision:?}"
        );
    }

    #[test]
    fn rejections_say_why() {
        let view = view();
        let valid = LeaseStatus::Valid;
        assert_eq!(
            route(&view, "n1", &valid, "nowhere/x"),
            RouteDecision::Reject(Rejection::NoRoute("nowhere/x".into()))
        );
        let no_lease = LeaseStatus::Invalid("cut off from the majority".into());
        let there = topic_owned_by(&view, "n2");
        assert_eq!(
            route(&view, "n1", &no_lease, &there),
            RouteDecision::Reject(Rejection::NoLease("cut off from the majority".into()))
        );
        // Not bootstrapped: this node is no member (and nobody owns anything): unavailable.
        let empty = view_of(ClusterConfig::default());
        let mut with_route = (*empty.state).clone();
        with_route.config.routes = view.state.config.routes.clone();
        let empty = view_of(with_route.config);
        assert_eq!(
            route(&empty, "n1", &valid, "o/k"),
            RouteDecision::Reject(Rejection::NotMember)
        );
        assert!(matches!(
            PublishError::from(Rejection::NoOwner),
            PublishError::Unavailable(_)
        ));
        assert_eq!(
            PublishError::from(Rejection::NoRoute("t".into())),
            PublishError::NoRoute("t".into())
        );
    }

    #[test]
    fn forwarded_messages_are_checked_against_the_receivers_view() {
        let view = view();
        let epoch = view.state.config.epoch;
        let topic = topic_owned_by(&view, "n2");
        let key = topic[2..].to_string();
        let message = Forwarded {
            route: "ordered".into(),
            partition: partition_for_key(&view.state.config.ring, &key),
            key,
            topic,
            ..Default::default()
        };
        assert!(check_forwarded(&view, "n2", epoch, &message).is_ok());
        // Not the owner: a sender behind learns the owner; one ahead is told to wait.
        assert!(matches!(
            check_forwarded(&view, "n1", epoch, &message),
            Err(ForwardOutcome::NotOwner { owner, .. }) if owner == "n2"
        ));
        assert!(matches!(
            check_forwarded(&view, "n1", epoch + 1, &message),
            Err(ForwardOutcome::Unavailable(_))
        ));
        // Ordered ingress: only from a sender at the receiver's epoch.
        let ingress = Forwarded {
            ordered_ingress: true,
            ..message.clone()
        };
        assert!(matches!(
            check_forwarded(&view, "n2", epoch - 1, &ingress),
            Err(ForwardOutcome::NotOwner { .. })
        ));
        assert!(matches!(
            check_forwarded(&view, "n2", epoch + 1, &ingress),
            Err(ForwardOutcome::Unavailable(_))
        ));
        // A route that does not take the topic at the receiver's epoch fails for good.
        let renamed = Forwarded {
            route: "other".into(),
            ..message
        };
        assert!(matches!(
            check_forwarded(&view, "n2", epoch, &renamed),
            Err(ForwardOutcome::Failed(_))
        ));
    }
}
