//! `routemq.v1.Messages`: publish into the cluster and read journals back.
//!
//! `Publish` answers once the key's owner accepted the message. `PublishStream` answers every
//! request, in request order; requests for the same key are dispatched one after the other
//! (so a producer's order per key survives retries and re-sends), other keys concurrently.
//!
//! A request with an empty `message_id` for a route with a `message_id_field` takes its id from
//! the payload (a JSON pointer, as for MQTT), so that a producer resending the same payload is
//! deduplicated by the journal; a payload without one is counted in
//! `routemq_message_id_missing_total` and gets a generated id.

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::{BoxFuture, Shared};
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use routemq_proto::v1 as pb;
use routemq_proto::v1::messages_server::Messages;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::publish_error_status;
use crate::config::ConfigService;
use crate::dispatch::Dispatcher;
use crate::ingress::payload_message_id;
use crate::message::{Dispatch, InboundMessage};

/// Most requests of one stream in flight at once.
const STREAM_WINDOW: usize = 512;

/// Implementation of `routemq.v1.Messages`.
pub struct MessagesApi {
    dispatcher: Arc<Dispatcher>,
    config: Arc<ConfigService>,
}

impl MessagesApi {
    /// Serves publishes through `dispatcher`; the routes of `config` tell where a message
    /// without a `message_id` finds one in its payload.
    pub fn new(dispatcher: Arc<Dispatcher>, config: Arc<ConfigService>) -> Self {
        Self { dispatcher, config }
    }
}

/// The message a request asks to publish. An empty `message_id` is taken from the payload when
/// the topic's route (in the locally applied config) has a `message_id_field`, and otherwise
/// left empty for the dispatcher to generate.
fn inbound(config: &ConfigService, request: &pb::PublishRequest) -> InboundMessage {
    let mut message_id = request.message_id.clone();
    if message_id.is_empty() {
        let routes = config.local_view().routes;
        if let Some(found) = routes.route_for(&request.topic) {
            let route = found.route();
            if let Some(field) = route.message_id_field() {
                message_id = payload_message_id(route.name(), field, &request.payload).unwrap_or_default();
            }
        }
    }
    InboundMessage {
        topic: request.topic.clone(),
        payload: request.payload.clone(),
        message_id,
        ordered_ingress: false,
        retry: false,
    }
}

fn response(request_id: u64, accepted: crate::message::Accepted) -> pb::PublishResponse {
    pb::PublishResponse {
        request_id,
        message_id: accepted.message_id,
        route: accepted.route,
        key: accepted.key,
        partition: accepted.partition,
        processed_by: accepted.processed_by,
        epoch: accepted.epoch,
        error: String::new(),
        error_code: 0,
    }
}

#[tonic::async_trait]
impl Messages for MessagesApi {
    async fn publish(
        &self,
        request: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        let request = request.into_inner();
        let accepted = self
            .dispatcher
            .dispatch(inbound(&self.config, &request))
            .await
            .map_err(|e| publish_error_status(&e))?;
        Ok(Response::new(response(request.request_id, accepted)))
    }

    type PublishStreamStream = ReceiverStream<Result<pb::PublishResponse, Status>>;

    async fn publish_stream(
        &self,
        request: Request<Streaming<pb::PublishRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        let mut requests = request.into_inner();
        let dispatcher = self.dispatcher.clone();
        let config = self.config.clone();
        let (tx, rx) = mpsc::channel(STREAM_WINDOW);
        // Lives as long as the stream: ends when the client closes it or stops reading.
        tokio::spawn(async move {
            let mut in_flight: FuturesOrdered<BoxFuture<'static, pb::PublishResponse>> =
                FuturesOrdered::new();
            let mut tails: HashMap<String, Shared<BoxFuture<'static, ()>>> = HashMap::new();
            let mut open = true;
            while open || !in_flight.is_empty() {
                tokio::select! {
                    next = requests.next(), if open && in_flight.len() < STREAM_WINDOW => match next {
                        Some(Ok(request)) => {
                            let chain_key = dispatcher.ordering_key(&request.topic);
                            let previous = tails.get(&chain_key).cloned();
                            let dispatcher = dispatcher.clone();
                            let message = inbound(&config, &request);
                            let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
                            let work = async move {
                                if let Some(previous) = previous {
                                    previous.await;
                                }
                                let result = dispatcher.dispatch(message).await;
                                let _ = done_tx.send(());
                                match result {
                                    Ok(accepted) => response(request.request_id, accepted),
                                    Err(e) => {
                                        let status = publish_error_status(&e);
                                        pb::PublishResponse {
                                            request_id: request.request_id,
                                            message_id: request.message_id,
                                            error: status.message().to_string(),
                                            error_code: status.code() as i32,
                                            ..Default::default()
                                        }
                                    }
                                }
                            };
                            let tail: BoxFuture<'static, ()> = async move { let _ = done_rx.await; }.boxed();
                            tails.insert(chain_key, tail.shared());
                            in_flight.push_back(work.boxed());
                        }
                        Some(Err(_)) | None => open = false,
                    },
                    Some(done) = in_flight.next() => {
                        if tx.send(Ok(done)).await.is_err() {
                            return;
                        }
                        if in_flight.is_empty() {
                            tails.clear();
                        }
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn read_journal(
        &self,
        request: Request<pb::ReadJournalRequest>,
    ) -> Result<Response<pb::ReadJournalResponse>, Status> {
        self.dispatcher
            .read_journal(request.into_inner().into(), false)
            .await
            .map(|page| Response::new(page.into()))
            .map_err(|e| super::journal_read_status(&e))
    }
}
