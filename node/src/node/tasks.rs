//! [`Tasks`]: the node's long-running tasks (servers, ownership observer, lease renewal,
//! handoff fetch, ingress plan publisher), each spawned under its name, all stopped by one
//! [`CancellationToken`].
//!
//! Promises: [`Tasks::shutdown`] returns only once every task has ended; a task still running
//! after the grace period is named in the log, then aborted. A task that ends on its own (a
//! server failing) is seen by [`Tasks::join_next`], which the node waits on beside its main
//! work, so a failed server ends the node instead of leaving it half alive.

use std::future::Future;
use std::time::Duration;

use tokio::task::{AbortHandle, JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

use super::NodeError;

/// The node's named tasks and the token that stops them.
pub(super) struct Tasks {
    set: JoinSet<Result<(), NodeError>>,
    /// Names of the tasks, to say which ones do not stop in time at shutdown.
    names: Vec<(&'static str, AbortHandle)>,
    cancel: CancellationToken,
}

impl Tasks {
    /// No tasks yet.
    pub(super) fn new() -> Self {
        Self {
            set: JoinSet::new(),
            names: Vec::new(),
            cancel: CancellationToken::new(),
        }
    }

    /// The token every task (and whatever else must stop with them) watches.
    pub(super) fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Spawns a task that ends with an error only when it failed for good.
    pub(super) fn spawn(
        &mut self,
        name: &'static str,
        task: impl Future<Output = Result<(), NodeError>> + Send + 'static,
    ) {
        self.names.push((name, self.set.spawn(task)));
    }

    /// Spawns a task that cannot fail.
    pub(super) fn spawn_infallible(
        &mut self,
        name: &'static str,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        self.spawn(name, async move {
            task.await;
            Ok(())
        });
    }

    /// The next task to end, and how; `None` when none is left.
    pub(super) async fn join_next(&mut self) -> Option<Result<Result<(), NodeError>, JoinError>> {
        self.set.join_next().await
    }

    /// Cancels every task and waits for them: `grace` at most, then the ones still running are
    /// named in the log and aborted. Long-lived streams from peers that are stopping too can
    /// hold the gRPC server's graceful shutdown open, hence the bound.
    pub(super) async fn shutdown(mut self, grace: Duration) {
        self.cancel.cancel();
        let drained = tokio::time::timeout(grace, async {
            while let Some(joined) = self.set.join_next().await {
                if let Ok(Err(e)) = joined {
                    tracing::warn!(error = %e, "task ended with an error during shutdown");
                }
            }
        })
        .await;
        if drained.is_err() {
            let running: Vec<&str> = self
                .names
                .iter()
                .filter(|(_, h)| !h.is_finished())
                .map(|(n, _)| *n)
                .collect();
            tracing::warn!(
                ?grace,
                ?running,
                "tasks still running after the shutdown grace period; aborting them"
            );
            self.set.abort_all();
            while self.set.join_next().await.is_some() {}
        }
    }
}
