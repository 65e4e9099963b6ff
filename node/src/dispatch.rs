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

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::FutureExt;
use routemq_proto::v1 as pb;
use tonic::Status;

use crate::config::{ConfigService, ConfigView};
use crate::fencing::Fence;
use crate::forward::{ForwardTarget, Forwarder};
use crate::handler::{
    now_unix_ms, Handler, HandlerContext, HandlerRegistry, JournalHandler, LogHandler, Message, Pipeline,
    RepublishHandler,
};
use crate::lease::LeaseStatus;
use crate::message::{Accepted, Dispatch, InboundMessage, PublishError};
use crate::processor::{ProcessError, Processor, Refused};
use crate::ring::partition_for_key;
use crate::routes::{CompiledRoute, HandlerSpec, RouteMode};

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

/// The node's dispatcher.
pub struct Dispatcher {
    node_id: String,
    config: Arc<ConfigService>,
    processor: Arc<Processor>,
    forwarder: Arc<Forwarder>,
    registry: HandlerRegistry,
    ctx: HandlerContext,
    limits: DispatchLimits,
    fence: Arc<Fence>,
}

impl Dispatcher {
    /// A dispatcher for node `node_id`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        node_id: String,
        config: Arc<ConfigService>,
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

    fn owner_addr(view: &ConfigView, owner: &str) -> Option<String> {
        view.state.config.members.get(owner).map(|m| m.grpc_addr.clone())
    }

    /// Processes locally if this node owns the partition at `view`'s epoch.
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
            inbound.message_id
        };
        let deadline = started + DISPATCH_TIMEOUT;
        let mut backoff = Duration::from_millis(20);
        // Once per message: not again on re-sends below, nor on an ingress's retries.
        let mut counted = inbound.retry;
        loop {
            let view = self.config.local_view();
            let found = view
                .routes
                .route_for(&inbound.topic)
                .ok_or_else(|| reject("no_route", PublishError::NoRoute(inbound.topic.clone())))?;
            let spec = found.route().spec().clone();
            let key = found.key().to_string();
            let params = params_vec(found.params());
            let partition = partition_for_key(&view.state.config.ring, &key);
            let epoch = view.state.config.epoch;
            if !std::mem::replace(&mut counted, true) {
                metrics::counter!(crate::metrics::MESSAGES_RECEIVED, "route" => spec.name.clone())
                    .increment(1);
                self.ctx.stats.record_received();
            }
            let accepted = |processed_by: String, epoch: u64| Accepted {
                message_id: message_id.clone(),
                route: spec.name.clone(),
                key: key.clone(),
                partition,
                processed_by,
                epoch,
            };
            let owner = match spec.mode {
                RouteMode::Shared { .. } => Some(self.node_id.clone()),
                RouteMode::Ordered => view.ring.owner_of_partition(partition).map(str::to_string),
            };
            let Some(owner) = owner else {
                return Err(PublishError::Unavailable(
                    "no member owns the partition yet".into(),
                ));
            };
            if matches!(spec.mode, RouteMode::Ordered) {
                // Cut off from the majority, this node cannot know who owns what: say so now.
                if let LeaseStatus::Invalid(why) = self.fence.lease_status() {
                    return Err(reject("no_lease", PublishError::Unavailable(why)));
                }
            }
            if owner == self.node_id {
                let message = Message {
                    route: spec.name.clone(),
                    topic: inbound.topic.clone(),
                    params,
                    key: key.clone(),
                    partition,
                    payload: inbound.payload.clone(),
                    message_id: message_id.clone(),
                    epoch,
                };
                let retry_reason = match self.process_local(message, found.route()).await {
                    Ok(_) => {
                        record_latency(&spec.name, started);
                        return Ok(accepted(self.node_id.clone(), epoch));
                    }
                    Err(ProcessError::Handler(e)) => return Err(PublishError::HandlerFailed(e.to_string())),
                    Err(ProcessError::Refused(Refused::Unavailable(why))) => {
                        return Err(PublishError::Unavailable(why))
                    }
                    // Ownership moved under us: look again with a newer view.
                    Err(ProcessError::Refused(Refused::Moved(why))) => why,
                };
                if Instant::now() + backoff > deadline {
                    return Err(PublishError::Unavailable(retry_reason));
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
                continue;
            }
            let addr = Self::owner_addr(&view, &owner)
                .ok_or_else(|| PublishError::Unavailable(format!("no address for owner {owner}")))?;
            let forwarded = pb::ForwardedMessage {
                seq: 0,
                route: spec.name.clone(),
                key: key.clone(),
                partition,
                topic: inbound.topic.clone(),
                payload: inbound.payload.clone(),
                message_id: message_id.clone(),
                received_at_unix_ms: now_unix_ms(),
                ordered_ingress: inbound.ordered_ingress,
            };
            metrics::counter!(crate::metrics::MESSAGES_FORWARDED, "route" => spec.name.clone()).increment(1);
            let retry_reason = match self.forwarder.forward(&addr, epoch, forwarded).await {
                Ok(result) => match pb::forward_result::Outcome::try_from(result.outcome) {
                    Ok(pb::forward_result::Outcome::Processed) => {
                        record_latency(&spec.name, started);
                        return Ok(accepted(owner, result.epoch));
                    }
                    Ok(pb::forward_result::Outcome::NotOwner) => {
                        // The receiver has a newer (or different) view: catch up, then re-send.
                        self.wait_for_epoch(result.epoch, deadline).await;
                        format!(
                            "{owner} is not the owner at epoch {} (owner {})",
                            result.epoch, result.owner
                        )
                    }
                    Ok(pb::forward_result::Outcome::Failed) => {
                        return Err(PublishError::HandlerFailed(result.error));
                    }
                    _ => result.error,
                },
                Err(e) => e.to_string(),
            };
            if Instant::now() + backoff > deadline {
                return Err(PublishError::Unavailable(retry_reason));
            }
            tracing::debug!(reason = %retry_reason, "re-sending message");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    /// Reads a journal: from the local store if this node owns the key's partition, otherwise
    /// from the owner.
    pub async fn read_journal(
        &self,
        request: pb::ReadJournalRequest,
        forwarded: bool,
    ) -> Result<pb::ReadJournalResponse, Status> {
        if request.route.is_empty() || request.key.is_empty() {
            return Err(Status::invalid_argument("route and key are required"));
        }
        let view = self.config.local_view();
        let known = view.routes.get(&request.route).is_some()
            || request
                .route
                .strip_prefix(crate::processor::DEAD_LETTER_PREFIX)
                .is_some_and(|r| view.routes.get(r).is_some());
        if !known && !forwarded {
            return Err(Status::not_found(format!("no route named {:?}", request.route)));
        }
        let partition = partition_for_key(&view.state.config.ring, &request.key);
        let owner = view.ring.owner_of_partition(partition).map(str::to_string);
        let readable = self.fence.readable(partition);
        if forwarded || owner.as_deref() == Some(self.node_id.as_str()) {
            // Only a node that holds the partition's newest data may answer: the active owner,
            // or the old owner while it drains. Anyone else would serve a partial history.
            if let Err(why) = readable {
                return Err(Status::unavailable(why));
            }
        }
        let local = readable.is_ok() || owner.is_none();
        if !local {
            let owner = owner.unwrap_or_default();
            let addr = Self::owner_addr(&view, &owner)
                .ok_or_else(|| Status::unavailable(format!("no address for owner {owner}")))?;
            let channel = crate::config::network::lazy_channel(&addr)
                .map_err(|e| Status::unavailable(e.to_string()))?;
            let mut client =
                pb::forward_client::ForwardClient::new(channel).max_decoding_message_size(64 << 20);
            return client.read_journal(request).await.map(|r| r.into_inner());
        }
        let limit = match request.limit {
            0 => MAX_JOURNAL_READ,
            n => (n as usize).min(MAX_JOURNAL_READ),
        };
        let journal = self.ctx.journal.clone();
        let (route, key, from) = (request.route.clone(), request.key.clone(), request.from_offset);
        let (records, end) =
            tokio::task::spawn_blocking(move || journal.read(partition, &route, &key, from, limit))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(|e| Status::internal(e.to_string()))?;
        let next_offset = records
            .last()
            .map(|r| r.offset + 1)
            .unwrap_or(request.from_offset);
        Ok(pb::ReadJournalResponse {
            entries: records
                .into_iter()
                .map(|r| pb::JournalEntry {
                    offset: r.offset,
                    message_id: r.message_id,
                    topic: r.topic,
                    payload: r.payload,
                    processed_by: r.processed_by,
                    epoch: r.epoch,
                    processed_at_unix_ms: r.processed_at_unix_ms,
                    partition: r.partition,
                })
                .collect(),
            next_offset,
            end,
        })
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
#[tonic::async_trait]
impl ForwardTarget for Dispatcher {
    async fn accept(
        self: Arc<Self>,
        sender_epoch: u64,
        message: pb::ForwardedMessage,
    ) -> BoxFuture<'static, pb::ForwardResult> {
        let seq = message.seq;
        let view = self.config.local_view();
        let epoch = view.state.config.epoch;
        let answer =
            move |outcome: pb::forward_result::Outcome, owner: String, error: String| pb::ForwardResult {
                seq,
                outcome: outcome as i32,
                owner,
                epoch,
                error,
            };
        let owner = view
            .ring
            .owner_of_partition(message.partition)
            .map(str::to_string);
        let expected_partition = partition_for_key(&view.state.config.ring, &message.key);
        if owner.as_deref() != Some(self.node_id.as_str()) || expected_partition != message.partition {
            // Not ours at our epoch. A sender ahead of us is told to retry (we may become the
            // owner once we catch up); a sender behind us learns the owner and our epoch.
            let outcome = if sender_epoch > epoch {
                pb::forward_result::Outcome::Unavailable
            } else {
                pb::forward_result::Outcome::NotOwner
            };
            let error = format!(
                "{} does not own partition {} at epoch {epoch}",
                self.node_id, message.partition
            );
            return futures::future::ready(answer(outcome, owner.unwrap_or_default(), error)).boxed();
        }
        if message.ordered_ingress && sender_epoch != epoch {
            // The sender held the route at another epoch: at ours, another node may hold it.
            // Behind us it catches up (and finds it no longer holds the route, or sends again);
            // ahead of us it waits for us.
            let outcome = if sender_epoch < epoch {
                pb::forward_result::Outcome::NotOwner
            } else {
                pb::forward_result::Outcome::Unavailable
            };
            let error = format!(
                "ordered-ingress message sent at epoch {sender_epoch}; {} is at epoch {epoch}",
                self.node_id
            );
            return futures::future::ready(answer(outcome, self.node_id.clone(), error)).boxed();
        }
        let found = view
            .routes
            .route_for(&message.topic)
            .filter(|m| m.route().name() == message.route);
        let Some(found) = found else {
            let error = format!(
                "route {:?} does not match {:?} at epoch {epoch}",
                message.route, message.topic
            );
            return futures::future::ready(answer(pb::forward_result::Outcome::Failed, String::new(), error))
                .boxed();
        };
        let spec = found.route().spec().clone();
        let params = params_vec(found.params());
        let pipeline = match self.pipeline(found.route()) {
            Ok(p) => p,
            Err(e) => {
                return futures::future::ready(answer(
                    pb::forward_result::Outcome::Failed,
                    String::new(),
                    e.to_string(),
                ))
                .boxed()
            }
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
            match processing.await {
                Ok(_) => answer(pb::forward_result::Outcome::Processed, node_id, String::new()),
                Err(ProcessError::Handler(e)) => {
                    answer(pb::forward_result::Outcome::Failed, node_id, e.to_string())
                }
                // Not processed here (moving, no lease): the sender retries, in order.
                Err(ProcessError::Refused(r)) => answer(
                    pb::forward_result::Outcome::Unavailable,
                    String::new(),
                    r.to_string(),
                ),
            }
        }
        .boxed()
    }

    async fn read_local_journal(
        self: Arc<Self>,
        request: pb::ReadJournalRequest,
    ) -> Result<pb::ReadJournalResponse, Status> {
        // A forwarded read is served locally whatever this node believes about ownership, so
        // reads never bounce between nodes whose views differ for a moment.
        self.read_journal(request, true).await
    }
}
