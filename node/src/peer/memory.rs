//! [`PeerNetwork`] in one process: a registry of nodes' [`Handlers`] by address, whose links
//! can be cut and healed. Deterministic: a call runs the callee's handler on the caller's task
//! (no sockets, no hidden timers), so under tokio's paused clock a test replays exactly.
//!
//! A cut link (or a callee that is not registered: not started, or killed) answers
//! [`PeerError::Unreachable`] at once; a call whose link is cut while the callee works loses
//! its answer (the callee may have acted: as over a real network). An open forwarding stream
//! breaks when its link is cut or its callee is unregistered or registered again (a restart).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{
    ActiveOf, ClusterTarget, FetchReply, FetchRequest, ForwardBatch, Handlers, HandoffTarget, JoinRequest,
    JournalPage, JournalQuery, PeerError, PeerNetwork, ReplyStream, ReturnRequest,
};
use crate::coordinator::{JoinOutcome, LeaseGrant};
use crate::forward::ForwardTarget;

#[derive(Default)]
struct State {
    /// Registered nodes: address -> (registration number, handlers).
    nodes: HashMap<String, (u64, Handlers)>,
    /// Cut links, both directions stored.
    cut: BTreeSet<(String, String)>,
    registrations: u64,
}

/// The in-memory network shared by the nodes of one test.
#[derive(Clone)]
pub struct MemoryNetwork {
    state: Arc<Mutex<State>>,
    /// Bumped by every change of links or registrations (open streams re-check theirs).
    changes: watch::Sender<u64>,
}

impl Default for MemoryNetwork {
    fn default() -> Self {
        Self {
            state: Arc::default(),
            changes: watch::channel(0).0,
        }
    }
}

impl MemoryNetwork {
    /// An empty network.
    pub fn new() -> Self {
        Self::default()
    }

    fn change(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()));
        self.changes.send_modify(|v| *v += 1);
    }

    /// Serves `handlers` at `addr` (replacing what served there: a restart).
    pub fn register(&self, addr: &str, handlers: Handlers) {
        self.change(|s| {
            s.registrations += 1;
            let n = s.registrations;
            s.nodes.insert(addr.to_string(), (n, handlers));
        });
    }

    /// Nothing serves at `addr` any more (the node was killed).
    pub fn unregister(&self, addr: &str) {
        self.change(|s| {
            s.nodes.remove(addr);
        });
    }

    /// Cuts the link between `a` and `b` (both directions).
    pub fn cut(&self, a: &str, b: &str) {
        self.change(|s| {
            s.cut.insert((a.to_string(), b.to_string()));
            s.cut.insert((b.to_string(), a.to_string()));
        });
    }

    /// Heals the link between `a` and `b`.
    pub fn heal(&self, a: &str, b: &str) {
        self.change(|s| {
            s.cut.remove(&(a.to_string(), b.to_string()));
            s.cut.remove(&(b.to_string(), a.to_string()));
        });
    }

    /// Heals every link.
    pub fn heal_all(&self) {
        self.change(|s| s.cut.clear());
    }

    /// The network as the node at `from` uses it.
    pub fn endpoint(&self, from: &str) -> Arc<MemoryPeers> {
        Arc::new(MemoryPeers {
            net: self.clone(),
            from: from.to_string(),
        })
    }

    /// The callee's registration and handlers, if `from` can reach `to` now.
    fn reach(&self, from: &str, to: &str) -> Result<(u64, Handlers), PeerError> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.cut.contains(&(from.to_string(), to.to_string())) {
            return Err(PeerError::unreachable(to, "link cut"));
        }
        state
            .nodes
            .get(to)
            .cloned()
            .ok_or_else(|| PeerError::unreachable(to, "no node listens there"))
    }

    /// Whether `from` still reaches registration `registration` of `to`.
    fn still(&self, from: &str, to: &str, registration: u64) -> bool {
        matches!(self.reach(from, to), Ok((n, _)) if n == registration)
    }
}

/// One node's side of a [`MemoryNetwork`].
pub struct MemoryPeers {
    net: MemoryNetwork,
    from: String,
}

impl MemoryPeers {
    /// Runs `call` on the callee's handlers if the link is up before and after.
    async fn call<T, H, F, Fut>(
        &self,
        to: &str,
        pick: impl FnOnce(&Handlers) -> Option<H>,
        call: F,
    ) -> Result<T, PeerError>
    where
        F: FnOnce(H) -> Fut,
        Fut: std::future::Future<Output = Result<T, PeerError>>,
    {
        let (registration, handlers) = self.net.reach(&self.from, to)?;
        let handler =
            pick(&handlers).ok_or_else(|| PeerError::unreachable(to, "service not served there"))?;
        let answer = call(handler).await;
        if !self.net.still(&self.from, to, registration) {
            return Err(PeerError::unreachable(to, "link cut before the answer arrived"));
        }
        answer
    }

    fn handoff(h: &Handlers) -> Option<Arc<dyn HandoffTarget>> {
        h.handoff.clone()
    }

    fn cluster(h: &Handlers) -> Option<Arc<dyn ClusterTarget>> {
        h.cluster.clone()
    }

    fn forward_target(h: &Handlers) -> Option<Arc<dyn ForwardTarget>> {
        h.forward.clone()
    }
}

#[async_trait::async_trait]
impl PeerNetwork for MemoryPeers {
    async fn forward(
        &self,
        addr: &str,
        batches: BoxStream<'static, ForwardBatch>,
    ) -> Result<ReplyStream, PeerError> {
        let (registration, handlers) = self.net.reach(&self.from, addr)?;
        let target = Self::forward_target(&handlers)
            .ok_or_else(|| PeerError::unreachable(addr, "no forward service"))?;
        let stop = CancellationToken::new();
        let acks = crate::forward::serve_stream(target, batches, stop.clone());
        let net = self.net.clone();
        let (from, to) = (self.from.clone(), addr.to_string());
        let changes = net.changes.subscribe();
        // The stream's state: the callee's acks, the link watch, and a guard that ends the
        // callee's side when the caller drops the stream.
        let state = (acks, changes, stop.drop_guard(), false);
        Ok(
            futures::stream::unfold(state, move |(mut acks, mut changes, guard, broken)| {
                let (net, from, to) = (net.clone(), from.clone(), to.clone());
                async move {
                    if broken {
                        return None;
                    }
                    loop {
                        if !net.still(&from, &to, registration) {
                            let error = PeerError::unreachable(&to, "link cut");
                            return Some((Err(error), (acks, changes, guard, true)));
                        }
                        tokio::select! {
                            biased;
                            changed = changes.changed() => if changed.is_err() { return None },
                            ack = acks.recv() => match ack {
                                Some(ack) => return Some((Ok(ack), (acks, changes, guard, false))),
                                None => return None,
                            },
                        }
                    }
                }
            })
            .boxed(),
        )
    }

    async fn read_journal(&self, addr: &str, query: JournalQuery) -> Result<JournalPage, PeerError> {
        self.call(addr, Self::forward_target, |t| t.read_local_journal(query))
            .await
    }

    async fn fetch(&self, addr: &str, request: FetchRequest) -> Result<FetchReply, PeerError> {
        self.call(addr, Self::handoff, |t| async move {
            let answers = t.fetch(request)?;
            Ok(answers
                .map(|(p, answer, data)| (p, (answer, data)))
                .collect::<FetchReply>()
                .await)
        })
        .await
    }

    async fn give_back(&self, addr: &str, request: ReturnRequest) -> Result<u64, PeerError> {
        self.call(addr, Self::handoff, |t| async move { t.give_back(request).await })
            .await
    }

    async fn active_of(&self, addr: &str, partitions: Vec<u32>) -> Result<ActiveOf, PeerError> {
        self.call(addr, Self::handoff, |t| async move { t.active_of(&partitions) })
            .await
    }

    async fn renew_lease(&self, addr: &str, node_id: &str, raft_id: u64) -> Result<LeaseGrant, PeerError> {
        self.call(addr, Self::cluster, |t| async move {
            t.renew_lease(node_id, raft_id).await
        })
        .await
    }

    async fn join(&self, addr: &str, request: JoinRequest) -> Result<JoinOutcome, PeerError> {
        self.call(addr, Self::cluster, |t| async move { t.join(request).await })
            .await
    }

    async fn remove_node(&self, addr: &str, node_id: &str, graceful: bool) -> Result<u64, PeerError> {
        self.call(addr, Self::cluster, |t| async move {
            t.remove_node(node_id, graceful).await
        })
        .await
    }

    async fn leave(&self, addr: &str, node_id: &str) -> Result<u64, PeerError> {
        self.call(addr, Self::cluster, |t| async move { t.leave(node_id).await })
            .await
    }
}
