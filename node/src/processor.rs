//! The processor: runs handlers on the node that processes a message.
//!
//! Ordered routes: one lane per partition, a FIFO queue drained by one task, so a partition's
//! messages run one at a time in arrival order while partitions run in parallel. Shared routes:
//! up to `worker_count` concurrent handler runs per route on this node, no order.
//!
//! A handler that fails, is rejected by middleware, or panics is contained here: the failure
//! is counted (`routemq_messages_failed_total`), logged, and written to the dead-letter journal
//! under route `$dead-letter/<route>` and the message's key, readable with
//! `routemq-ctl journal --route '$dead-letter/<route>' <key>`.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::handler::{Handled, HandlerContext, HandlerError, Message, Pipeline};

/// Depth of one partition's queue; when full, senders wait (backpressure to ingress).
const LANE_DEPTH: usize = 1024;

/// Route name prefix of dead-letter journals.
pub const DEAD_LETTER_PREFIX: &str = "$dead-letter/";

struct Job {
    message: Message,
    pipeline: Pipeline,
    reply: oneshot::Sender<Result<Handled, ProcessError>>,
}

/// Why this node will not process a partition's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Another node owns the partition (or will, once the handoff is done): re-send there.
    #[error("partition {partition} is not this node's at epoch {epoch} (owner {})", owner.as_deref().unwrap_or("none"))]
    Moved {
        /// The partition.
        partition: u32,
        /// Its owner at `epoch`, if any.
        owner: Option<String>,
        /// The epoch this node last observed.
        epoch: u64,
    },
    /// This node cannot process now (no valid ownership lease, shutting down).
    #[error("{0}")]
    Unavailable(String),
}

/// Why an ordered-route message was not processed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProcessError {
    /// The handler failed (dead-lettered).
    #[error(transparent)]
    Handler(#[from] HandlerError),
    /// The node did not run it (the message was not processed at all).
    #[error(transparent)]
    Refused(#[from] Refused),
}

/// What the processor may do with a partition's message right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateNow {
    /// Run it.
    Run,
    /// Keep it queued (the partition's data is on its way).
    Wait,
    /// Give it back.
    Refuse(Refused),
}

/// Who decides whether this node may process a partition: ownership and lease
/// ([`crate::fencing::Fence`]), or [`OpenGate`] where ownership does not matter (tests).
pub trait PartitionGate: Send + Sync + 'static {
    /// Takes a new message of `partition` into this node's queue, or refuses it.
    fn admit(&self, partition: u32) -> Result<(), Refused>;
    /// Whether an admitted message may run now.
    fn gate(&self, partition: u32) -> GateNow;
    /// An admitted message finished (processed or refused).
    fn finished(&self, partition: u32);
    /// Changes whenever a gate may have opened.
    fn changes(&self) -> watch::Receiver<u64>;
}

/// A gate that always admits and runs.
pub struct OpenGate(watch::Sender<u64>);

impl Default for OpenGate {
    fn default() -> Self {
        Self(watch::channel(0).0)
    }
}

impl PartitionGate for OpenGate {
    fn admit(&self, _partition: u32) -> Result<(), Refused> {
        Ok(())
    }
    fn gate(&self, _partition: u32) -> GateNow {
        GateNow::Run
    }
    fn finished(&self, _partition: u32) {}
    fn changes(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }
}

/// Runs handlers: partition lanes for ordered routes, bounded pools for shared routes.
pub struct Processor {
    ctx: HandlerContext,
    gate: Arc<dyn PartitionGate>,
    queued: Arc<AtomicI64>,
    lanes: Mutex<HashMap<u32, mpsc::Sender<Job>>>,
    shared_pools: Mutex<HashMap<String, (u32, Arc<Semaphore>)>>,
    tasks: Mutex<JoinSet<()>>,
    cancel: CancellationToken,
}

impl Processor {
    /// A processor using `ctx` for every handler and `gate` for ordered partitions.
    pub fn new(ctx: HandlerContext, gate: Arc<dyn PartitionGate>) -> Self {
        Self {
            ctx,
            gate,
            queued: Arc::new(AtomicI64::new(0)),
            lanes: Mutex::new(HashMap::new()),
            shared_pools: Mutex::new(HashMap::new()),
            tasks: Mutex::new(JoinSet::new()),
            cancel: CancellationToken::new(),
        }
    }

    /// Processes an ordered-route message in its partition's lane; resolves when done.
    pub async fn process_ordered(
        &self,
        message: Message,
        pipeline: Pipeline,
    ) -> Result<Handled, ProcessError> {
        self.enqueue_ordered(message, pipeline).await?.await
    }

    /// Queues an ordered-route message in its partition's lane (waiting while the lane is
    /// full) and returns a future of its result. Messages enqueued one after the other are
    /// processed in that order. Refused at once if this node does not own the partition or
    /// holds no valid lease.
    pub async fn enqueue_ordered(
        &self,
        message: Message,
        pipeline: Pipeline,
    ) -> Result<impl std::future::Future<Output = Result<Handled, ProcessError>> + Send + 'static, ProcessError>
    {
        let partition = message.partition;
        if let GateNow::Refuse(Refused::Unavailable(why)) = self.gate.gate(partition) {
            return Err(Refused::Unavailable(why).into());
        }
        self.gate.admit(partition)?;
        let lane = self.lane(partition);
        let (reply, done) = oneshot::channel();
        self.queued.fetch_add(1, Ordering::Relaxed);
        if lane
            .send(Job {
                message,
                pipeline,
                reply,
            })
            .await
            .is_err()
        {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            self.gate.finished(partition);
            return Err(Refused::Unavailable("node is shutting down".into()).into());
        }
        Ok(async move {
            done.await
                .map_err(|_| ProcessError::from(Refused::Unavailable("node is shutting down".into())))?
        })
    }

    /// Ordered-route messages queued or running on this node.
    pub fn queue_depth(&self) -> i64 {
        self.queued.load(Ordering::Relaxed)
    }

    /// Processes a shared-route message with at most `worker_count` concurrent runs per route.
    pub async fn process_shared(
        &self,
        message: Message,
        pipeline: Pipeline,
        worker_count: u32,
    ) -> Result<Handled, HandlerError> {
        let pool = {
            let mut pools = self.shared_pools.lock().unwrap_or_else(|p| p.into_inner());
            let entry = pools.entry(message.route.clone()).or_insert_with(|| {
                (
                    worker_count,
                    Arc::new(Semaphore::new(worker_count.max(1) as usize)),
                )
            });
            if entry.0 != worker_count {
                *entry = (
                    worker_count,
                    Arc::new(Semaphore::new(worker_count.max(1) as usize)),
                );
            }
            entry.1.clone()
        };
        let _permit = pool
            .acquire_owned()
            .await
            .map_err(|_| HandlerError::Failed("node is shutting down".into()))?;
        run_contained(&self.ctx, &message, &pipeline).await
    }

    fn lane(&self, partition: u32) -> mpsc::Sender<Job> {
        let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(lane) = lanes.get(&partition) {
            return lane.clone();
        }
        let (tx, mut rx) = mpsc::channel::<Job>(LANE_DEPTH);
        let ctx = self.ctx.clone();
        let cancel = self.cancel.clone();
        let gate = self.gate.clone();
        let queued = self.queued.clone();
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .spawn(async move {
                let mut changes = gate.changes();
                loop {
                    let job = tokio::select! {
                        _ = cancel.cancelled() => return,
                        job = rx.recv() => match job { Some(job) => job, None => return },
                    };
                    // Wait while the partition's data is on its way; refuse if it moved away
                    // or the lease is gone. Re-checked at least every 50 ms (a lease expires
                    // without any notification).
                    let verdict = loop {
                        match gate.gate(partition) {
                            GateNow::Wait => {}
                            other => break other,
                        }
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = changes.changed() => {}
                            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                        }
                    };
                    let result = match verdict {
                        GateNow::Refuse(refused) => Err(ProcessError::Refused(refused)),
                        _ => {
                            let result = run_contained(&ctx, &job.message, &job.pipeline).await;
                            // The lease may have run out while the handler ran (a long pause):
                            // then the sender must not take it as processed by the owner.
                            match (result, gate.gate(partition)) {
                                (Ok(_), GateNow::Refuse(Refused::Unavailable(why))) => {
                                    Err(Refused::Unavailable(format!("processed, but {why}")).into())
                                }
                                (result, _) => result.map_err(ProcessError::from),
                            }
                        }
                    };
                    gate.finished(partition);
                    queued.fetch_sub(1, Ordering::Relaxed);
                    let _ = job.reply.send(result);
                }
            });
        lanes.insert(partition, tx.clone());
        tx
    }

    /// Stops every lane; queued messages are answered "shutting down".
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        let mut tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        while tasks.join_next().await.is_some() {}
        self.lanes.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// Runs the pipeline, containing failures and panics, recording metrics and dead letters.
async fn run_contained(
    ctx: &HandlerContext,
    message: &Message,
    pipeline: &Pipeline,
) -> Result<Handled, HandlerError> {
    let started = Instant::now();
    let outcome = AssertUnwindSafe(pipeline.run(ctx, message)).catch_unwind().await;
    let result = match outcome {
        Ok(result) => result,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(HandlerError::Failed(format!("handler panicked: {what}")))
        }
    };
    let route = message.route.clone();
    let took = started.elapsed();
    metrics::histogram!(crate::metrics::HANDLER_SECONDS, "route" => route.clone()).record(took.as_secs_f64());
    match &result {
        Ok(_) => {
            metrics::counter!(crate::metrics::MESSAGES_PROCESSED, "route" => route).increment(1);
            ctx.stats.record_processed(&message.route, &message.key, took);
        }
        Err(e) => {
            metrics::counter!(crate::metrics::MESSAGES_FAILED, "route" => route).increment(1);
            tracing::warn!(route = %message.route, key = %message.key, message_id = %message.message_id,
                error = %e, "handler failed; writing a dead letter");
            dead_letter(ctx, message, e).await;
        }
    }
    result
}

async fn dead_letter(ctx: &HandlerContext, message: &Message, error: &HandlerError) {
    let record = message.journal_record(&ctx.node_id, Some(error));
    let journal = ctx.journal.clone();
    let route = format!("{DEAD_LETTER_PREFIX}{}", message.route);
    let key = message.key.clone();
    match tokio::task::spawn_blocking(move || journal.append(&route, &key, record)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "cannot write dead letter"),
        Err(e) => tracing::error!(error = %e, "dead-letter task failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handler::{Handler, NoBroker};
    use crate::journal::Journal;
    use async_trait::async_trait;

    struct Flaky;

    #[async_trait]
    impl Handler for Flaky {
        async fn handle(&self, _ctx: &HandlerContext, message: &Message) -> Result<Handled, HandlerError> {
            match message.message_id.as_str() {
                "panic" => panic!("boom"),
                "fail" => Err(HandlerError::Failed("nope".into())),
                _ => Ok(Handled::default()),
            }
        }
    }

    #[tokio::test]
    async fn failures_and_panics_are_contained_and_dead_lettered() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        let processor = Processor::new(
            HandlerContext {
                node_id: "n1".into(),
                publisher: Arc::new(NoBroker),
                journal: journal.clone(),
                stats: Default::default(),
            },
            Arc::new(OpenGate::default()),
        );
        let pipeline = Pipeline::new(vec![], Arc::new(Flaky));
        let message = |id: &str| Message {
            route: "r".into(),
            topic: "t/k".into(),
            params: vec![],
            key: "k".into(),
            partition: 9,
            payload: vec![],
            message_id: id.into(),
            epoch: 1,
        };
        let err = processor
            .process_ordered(message("panic"), pipeline.clone())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("panicked: boom"), "{err}");
        assert!(processor
            .process_ordered(message("fail"), pipeline.clone())
            .await
            .is_err());
        // The lane survives and keeps processing.
        assert!(processor
            .process_ordered(message("ok"), pipeline.clone())
            .await
            .is_ok());
        assert!(processor
            .process_shared(message("panic"), pipeline.clone(), 2)
            .await
            .is_err());
        let (dead, _) = journal.read(9, "$dead-letter/r", "k", 0, 10).unwrap();
        let ids: Vec<_> = dead.iter().map(|d| d.message_id.as_str()).collect();
        assert_eq!(
            ids,
            ["panic", "fail"],
            "duplicate ids are suppressed in the dead-letter journal too"
        );
        assert!(dead[0].error.contains("boom"));
        processor.shutdown().await;
    }
}
