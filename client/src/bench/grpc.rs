//! gRPC producers: unary `Publish` through [`Client::publish`], C lanes per producer, one key
//! always on the same lane, one message at a time per lane (so never two of one key in flight,
//! and a retried message finishes before its key's next one starts).

use std::sync::Arc;
use std::time::Instant;

use routemq_proto::v1::ReadConsistency;
use tokio::sync::mpsc;

use super::delivery::unix_us_now;
use super::{error_name, BenchError, Message, Plan, ProducerResult};
use crate::addr::normalize_addr;
use crate::Client;

/// Messages queued per lane ahead of the one in flight.
const LANE_QUEUE: usize = 1;

/// One client per producer, each starting at a different member (round robin over the
/// members' gRPC addresses, or the seeds when the status cannot be read), so producers spread
/// over the cluster. Each keeps the others as fallbacks.
pub(super) async fn producer_clients(client: &Client, producers: u32) -> Result<Vec<Client>, BenchError> {
    let mut addrs: Vec<String> = match client.status(ReadConsistency::Local).await {
        Ok(status) => status
            .members
            .iter()
            .filter_map(|m| normalize_addr(&m.grpc_addr).ok())
            .collect(),
        Err(err) => {
            tracing::debug!(error = %err, "no status: producers use the seeds");
            Vec::new()
        }
    };
    if addrs.is_empty() {
        addrs = client.known_addrs();
    }
    let options = client.options().clone().with_discover_members(false);
    (0..producers as usize)
        .map(|p| {
            let mut rotated = addrs.clone();
            rotated.rotate_left(p % addrs.len());
            Client::new(rotated, options.clone()).map_err(BenchError::from)
        })
        .collect()
}

/// Producer `p`: sends its messages in sequence order, each to its key's lane.
pub(super) async fn producer(plan: Arc<Plan>, client: Client, p: u32, start: Instant) -> ProducerResult {
    let own = plan.producer_keys(p);
    let lanes = (plan.concurrency as usize).min(own.len()).max(1);
    let mut senders = Vec::with_capacity(lanes);
    let mut tasks = Vec::with_capacity(lanes);
    for _ in 0..lanes {
        let (tx, rx) = mpsc::channel::<Message>(LANE_QUEUE);
        senders.push(tx);
        tasks.push(tokio::spawn(lane(plan.clone(), client.clone(), rx)));
    }
    let mut result = ProducerResult::new();
    for seq in 0..plan.producer_messages(p) {
        if let Some(due) = plan.due(start, seq) {
            let wake = plan.deadline.map_or(due, |deadline| due.min(deadline));
            tokio::time::sleep_until(wake.into()).await;
        }
        if plan.should_stop(&mut result) {
            break;
        }
        let message = plan.message(p, seq, &own);
        // The key's position among the producer's keys picks the lane.
        let lane = (seq % own.len() as u64) as usize % lanes;
        if senders[lane].send(message).await.is_err() {
            break;
        }
    }
    drop(senders);
    for task in tasks {
        result.merge(task.await.expect("publish lane panicked"));
    }
    result
}

async fn lane(plan: Arc<Plan>, client: Client, mut messages: mpsc::Receiver<Message>) -> ProducerResult {
    let mut result = ProducerResult::new();
    while let Some(message) = messages.recv().await {
        // Queued but not sent when the run stopped: dropped, never published.
        if plan.should_stop(&mut result) {
            continue;
        }
        let sent_at = Instant::now();
        let mut record = message.record;
        record.sent_unix_us = unix_us_now();
        match client
            .publish(message.topic, message.payload, Some(message.message_id))
            .await
        {
            Ok(response) if response.route == plan.route || response.route.is_empty() => {
                result.acked(record, sent_at.elapsed());
                plan.note_success();
            }
            Ok(response) => {
                tracing::debug!(route = %response.route, "message taken by another route");
                result.failed(record, "other_route");
                plan.note_failure();
            }
            Err(err) => {
                tracing::debug!(error = %err, "publish failed");
                result.failed(record, &error_name(&err));
                plan.note_failure();
            }
        }
    }
    result
}
