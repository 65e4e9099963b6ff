//! [`Client`]: calls the `routemq.v1` services (`Cluster`, `Routes`, `Messages`) of any node,
//! retrying across nodes and following the Raft leader.
//!
//! The client knows three kinds of addresses: its seeds (always kept), the members' gRPC
//! addresses from the last status response (when [`ClientOptions::discover_members`] is on),
//! and leader hints from NotLeader answers. Linearizable reads and writes start at the last
//! known leader, local reads at the last node that answered; both then follow the
//! [`RetryPlan`]. One gRPC channel per address is cached and shared by clones of the client.
//!
//! Non-goals: load balancing, TLS, and exactly-once writes. A write whose attempt timed out or
//! lost its connection may have been applied; the retry then sees the applied state (e.g.
//! [`Client::remove_node`] answers `NOT_FOUND` for a node an earlier attempt removed).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use routemq_proto::v1::cluster_client::ClusterClient;
use routemq_proto::v1::{
    ClusterStatus, LocateRequest, LocateResponse, PartitionTable, PartitionsRequest, ReadConsistency,
    RemoveNodeRequest, RemoveNodeResponse, StatusRequest,
};
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

use crate::addr::{endpoint_uri, normalize_addr};
use crate::error::ClientError;
use crate::options::ClientOptions;
use crate::retry::{classify, RetryDecision, RetryPlan, Step};
use crate::table::owner_ids;

/// Stand-in for "no limit" where a deadline must be finite.
const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// A RouteMQ cluster client. Cheap to clone; clones share connections and learned addresses.
///
/// Every call returns the generated protobuf message of its RPC (re-exported at the crate
/// root), so fields are exactly those of `proto/routemq/v1/*.proto`. Calls retry across
/// nodes within [`ClientOptions::total_timeout`]; see [`crate::retry`] for the policy.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    options: ClientOptions,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Normalised seeds, in the order given, without repetitions.
    seeds: Vec<String>,
    /// Member addresses from the last status response, and leader hints; never seeds.
    learned: Vec<String>,
    /// Address of the last known Raft leader.
    leader: Option<String>,
    /// Address of the last node that answered successfully.
    last_ok: Option<String>,
    channels: HashMap<String, Channel>,
}

/// Which node a call should start at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// Writes and linearizable reads: the leader.
    Leader,
    /// Local reads: whichever node answered last.
    Any,
}

impl Target {
    pub(crate) fn for_read(consistency: ReadConsistency) -> Self {
        match consistency {
            ReadConsistency::Linearizable => Target::Leader,
            ReadConsistency::Local => Target::Any,
        }
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state();
        f.debug_struct("Client")
            .field("seeds", &state.seeds)
            .field("learned", &state.learned)
            .field("leader", &state.leader)
            .field("options", &self.inner.options)
            .finish()
    }
}

impl Client {
    /// Connects with default [`ClientOptions`]: see [`Client::connect_with`].
    pub async fn connect<I, S>(seeds: I) -> Result<Client, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::connect_with(seeds, ClientOptions::default()).await
    }

    /// Validates the seeds (`host:port`, optionally `http://`), then connects to the first seed
    /// that accepts a connection, trying each once in order. Fails with
    /// [`ClientError::NoReachableNode`] when none does, without retry rounds: calls made later
    /// retry within their own budget.
    pub async fn connect_with<I, S>(seeds: I, options: ClientOptions) -> Result<Client, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let client = Self::new(seeds, options)?;
        let seeds = client.state().seeds.clone();
        // The endpoint's connect timeout bounds the TCP connect; this also bounds the HTTP/2
        // handshake.
        let connect_timeout = client.inner.options.connect_timeout.saturating_mul(2);
        let mut last_error = None;
        for seed in &seeds {
            let endpoint = client.endpoint(seed)?;
            let error = match tokio::time::timeout(connect_timeout, endpoint.connect()).await {
                Ok(Ok(channel)) => {
                    {
                        let mut state = client.state();
                        state.channels.insert(seed.clone(), channel);
                        state.last_ok = Some(seed.clone());
                    }
                    return Ok(client);
                }
                Ok(Err(err)) => Status::from_error(Box::new(err)),
                Err(_) => Status::deadline_exceeded(format!("no connection within {connect_timeout:?}")),
            };
            tracing::debug!(addr = %seed, error = %error, "seed not reachable");
            last_error = Some(error);
        }
        Err(ClientError::NoReachableNode {
            tried: seeds,
            last_error: last_error.unwrap_or_else(|| Status::unavailable("no seed")),
        })
    }

    /// A client that connects lazily, on its first call. Validates the seeds but makes no
    /// connection, so it succeeds while every node is down. Calls must run inside a Tokio
    /// runtime.
    pub fn new<I, S>(seeds: I, options: ClientOptions) -> Result<Client, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut normalised = Vec::new();
        for seed in seeds {
            let addr = normalize_addr(&seed.into())?;
            if !normalised.contains(&addr) {
                normalised.push(addr);
            }
        }
        if normalised.is_empty() {
            return Err(ClientError::NoSeeds);
        }
        Ok(Client {
            inner: Arc::new(Inner {
                options,
                state: Mutex::new(State {
                    seeds: normalised,
                    ..State::default()
                }),
            }),
        })
    }

    /// The options this client was built with.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    /// Every address the client may try: its seeds, then learned member addresses and leader
    /// hints.
    pub fn known_addrs(&self) -> Vec<String> {
        let state = self.state();
        state.seeds.iter().chain(&state.learned).cloned().collect()
    }

    /// gRPC address of the last known Raft leader, if any.
    pub fn leader_addr(&self) -> Option<String> {
        self.state().leader.clone()
    }

    /// Cluster status: members with liveness and Raft role, Raft leader, term and indexes,
    /// epoch and ring parameters, and nodes gossip sees that are not ring members. Learns the
    /// members' addresses and the leader's.
    pub async fn status(&self, consistency: ReadConsistency) -> Result<ClusterStatus, ClientError> {
        let request = StatusRequest {
            consistency: consistency as i32,
        };
        let (_, status) = self
            .call(
                Target::for_read(consistency),
                request,
                |channel, request| async move { ClusterClient::new(channel).get_status(request).await },
            )
            .await?;
        self.learn_from_status(&status);
        Ok(status)
    }

    /// The partition → owner table at the current epoch. The table is checked to add up (one
    /// owner per partition, every owner index valid), so [`crate::owner_ids`] and
    /// [`crate::owner_counts`] succeed on it.
    pub async fn partitions(&self, consistency: ReadConsistency) -> Result<PartitionTable, ClientError> {
        let request = PartitionsRequest {
            consistency: consistency as i32,
        };
        let (addr, table) = self
            .call(
                Target::for_read(consistency),
                request,
                |channel, request| async move { ClusterClient::new(channel).get_partitions(request).await },
            )
            .await?;
        if let Err(err) = owner_ids(&table) {
            return Err(ClientError::InvalidResponse {
                addr,
                reason: err.to_string(),
            });
        }
        Ok(table)
    }

    /// Which partition `key` hashes to, which node owns it, and that node's gRPC address.
    pub async fn locate(
        &self,
        key: impl Into<String>,
        consistency: ReadConsistency,
    ) -> Result<LocateResponse, ClientError> {
        let request = LocateRequest {
            key: key.into(),
            consistency: consistency as i32,
        };
        let (_, located) = self
            .call(
                Target::for_read(consistency),
                request,
                |channel, request| async move { ClusterClient::new(channel).locate(request).await },
            )
            .await?;
        Ok(located)
    }

    /// Admin: removes a node from the ring and from Raft. Answers the epoch after the removal.
    /// Served by the leader; `NOT_FOUND` when the node is not a member.
    pub async fn remove_node(&self, node_id: impl Into<String>) -> Result<RemoveNodeResponse, ClientError> {
        let request = RemoveNodeRequest {
            node_id: node_id.into(),
            graceful: false,
        };
        let (_, removed) = self
            .call(Target::Leader, request, |channel, request| async move {
                ClusterClient::new(channel).remove_node(request).await
            })
            .await?;
        Ok(removed)
    }

    /// Admin: asks a node to leave gracefully (any node passes the request on to it). The node
    /// hands its partitions over, leaves the config and exits; this returns once it started.
    pub async fn leave_node(
        &self,
        node_id: impl Into<String>,
    ) -> Result<routemq_proto::v1::LeaveResponse, ClientError> {
        let request = routemq_proto::v1::LeaveRequest {
            node_id: node_id.into(),
        };
        let (_, left) = self
            .call(Target::Any, request, |channel, request| async move {
                ClusterClient::new(channel).leave(request).await
            })
            .await?;
        Ok(left)
    }

    /// Runs one RPC under the retry policy; returns the answering address and the answer.
    /// `rpc` gets a channel to the node of each attempt and builds the service client it needs.
    pub(crate) async fn call<M, R, F, Fut>(
        &self,
        target: Target,
        message: M,
        rpc: F,
    ) -> Result<(String, R), ClientError>
    where
        M: Clone,
        F: Fn(Channel, tonic::Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, Status>>,
    {
        let options = &self.inner.options;
        let now = Instant::now();
        let deadline = now.checked_add(options.total_timeout).unwrap_or(now + YEAR);
        let mut plan = RetryPlan::new(self.candidates(target), options.retry_limits());
        let mut step = plan.first();
        let mut tried: Vec<String> = Vec::new();
        // The last error a node itself answered, and the last failure to get any answer.
        let mut last_answer: Option<(String, Status)> = None;
        let mut last_failure: Option<Status> = None;

        while let Step::Try { addr, delay } = step {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if !tried.contains(&addr) {
                tried.push(addr.clone());
            }
            let per_attempt = options
                .request_timeout
                .min(deadline.saturating_duration_since(Instant::now()));
            let (status, answered) = match self.attempt(&addr, per_attempt, &message, &rpc).await {
                Ok(response) => {
                    self.record_success(&addr, target);
                    return Ok((addr, response));
                }
                Err(failure) => failure,
            };
            let decision = classify(&status);
            tracing::debug!(%addr, code = ?status.code(), message = status.message(), ?decision, "attempt failed");
            if decision == RetryDecision::Final {
                return Err(ClientError::Rpc { addr, status });
            }
            self.record_failure(&addr, &decision);
            step = plan.after_failure(
                &addr,
                &decision,
                deadline.saturating_duration_since(Instant::now()),
            );
            if answered {
                last_answer = Some((addr, status));
            } else {
                last_failure = Some(status);
            }
        }

        match last_answer {
            Some((addr, status)) => Err(ClientError::Rpc { addr, status }),
            None => Err(ClientError::NoReachableNode {
                tried,
                last_error: last_failure
                    .unwrap_or_else(|| Status::deadline_exceeded("no attempt fitted in the time budget")),
            }),
        }
    }

    /// One attempt at one node. On failure, returns the status and whether the node itself
    /// answered it (false for transport failures and timeouts).
    async fn attempt<M, R, F, Fut>(
        &self,
        addr: &str,
        timeout: Duration,
        message: &M,
        rpc: &F,
    ) -> Result<R, (Status, bool)>
    where
        M: Clone,
        F: Fn(Channel, tonic::Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, Status>>,
    {
        if timeout.is_zero() {
            return Err((Status::deadline_exceeded("time budget exhausted"), false));
        }
        let channel = self
            .channel(addr)
            .map_err(|err| (Status::unavailable(err.to_string()), false))?;
        let mut request = tonic::Request::new(message.clone());
        // Tells the node when to stop working on it (the header's range is limited).
        request.set_timeout(timeout.min(YEAR));
        match tokio::time::timeout(timeout, rpc(channel, request)).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => {
                let answered = std::error::Error::source(&status).is_none();
                Err((status, answered))
            }
            Err(_) => Err((
                Status::deadline_exceeded(format!("no answer within {timeout:?}")),
                false,
            )),
        }
    }

    /// Addresses for one call: the preferred one for `target` first, then seeds and learned.
    fn candidates(&self, target: Target) -> Vec<String> {
        let state = self.state();
        let preferred = match target {
            Target::Leader => state.leader.clone().or_else(|| state.last_ok.clone()),
            Target::Any => state.last_ok.clone(),
        };
        let mut addrs: Vec<String> = preferred.into_iter().collect();
        for addr in state.seeds.iter().chain(&state.learned) {
            if !addrs.contains(addr) {
                addrs.push(addr.clone());
            }
        }
        addrs
    }

    fn record_success(&self, addr: &str, target: Target) {
        let mut state = self.state();
        state.last_ok = Some(addr.to_string());
        if target == Target::Leader {
            state.leader = Some(addr.to_string());
        }
    }

    fn record_failure(&self, addr: &str, decision: &RetryDecision) {
        let mut state = self.state();
        match decision {
            RetryDecision::FollowLeader(leader) => {
                state.leader = Some(leader.clone());
                if !state.seeds.contains(leader) && !state.learned.contains(leader) {
                    state.learned.push(leader.clone());
                }
            }
            RetryDecision::TryAnotherNode | RetryDecision::WaitForLeader => {
                if state.leader.as_deref() == Some(addr) {
                    state.leader = None;
                }
                if state.last_ok.as_deref() == Some(addr) {
                    state.last_ok = None;
                }
            }
            RetryDecision::Final => {}
        }
    }

    /// Learns the members' gRPC addresses and the leader's from a status response.
    fn learn_from_status(&self, status: &ClusterStatus) {
        if !self.inner.options.discover_members {
            return;
        }
        let mut state = self.state();
        let mut learned = Vec::new();
        for member in &status.members {
            match normalize_addr(&member.grpc_addr) {
                Ok(addr) => {
                    if !state.seeds.contains(&addr) && !learned.contains(&addr) {
                        learned.push(addr.clone());
                    }
                    if !status.raft_leader.is_empty() && member.node_id == status.raft_leader {
                        state.leader = Some(addr);
                    }
                }
                Err(err) => {
                    tracing::debug!(node = %member.node_id, error = %err, "ignoring member address");
                }
            }
        }
        state.learned = learned;
    }

    fn endpoint(&self, addr: &str) -> Result<Endpoint, ClientError> {
        let endpoint =
            Endpoint::from_shared(endpoint_uri(addr)).map_err(|err| ClientError::InvalidAddress {
                addr: addr.to_string(),
                reason: err.to_string(),
            })?;
        Ok(endpoint
            .connect_timeout(self.inner.options.connect_timeout)
            .tcp_nodelay(true))
    }

    /// The cached channel to `addr`, created lazily (it connects on first use and reconnects
    /// after failures).
    fn channel(&self, addr: &str) -> Result<Channel, ClientError> {
        if let Some(channel) = self.state().channels.get(addr) {
            return Ok(channel.clone());
        }
        let channel = self.endpoint(addr)?.connect_lazy();
        Ok(self
            .state()
            .channels
            .entry(addr.to_string())
            .or_insert(channel)
            .clone())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: every update is one assignment.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use routemq_proto::v1::Member;

    use super::*;

    fn member(id: &str, grpc: &str) -> Member {
        Member {
            node_id: id.into(),
            grpc_addr: grpc.into(),
            ..Member::default()
        }
    }

    #[test]
    fn seeds_are_validated_normalised_and_deduplicated() {
        let client = Client::new(
            ["http://127.0.0.1:7001", "127.0.0.1:7001", "Node-2:7001"],
            ClientOptions::default(),
        )
        .unwrap();
        assert_eq!(client.known_addrs(), vec!["127.0.0.1:7001", "node-2:7001"]);
        assert!(matches!(
            Client::new(Vec::<String>::new(), ClientOptions::default()),
            Err(ClientError::NoSeeds)
        ));
        assert!(matches!(
            Client::new(["127.0.0.1"], ClientOptions::default()),
            Err(ClientError::InvalidAddress { .. })
        ));
    }

    #[test]
    fn status_teaches_members_and_leader() {
        let client = Client::new(["a:1"], ClientOptions::default()).unwrap();
        let status = ClusterStatus {
            raft_leader: "n2".into(),
            members: vec![
                member("n1", "a:1"),
                member("n2", "b:1"),
                member("n3", "bad address"),
            ],
            ..ClusterStatus::default()
        };
        client.learn_from_status(&status);
        assert_eq!(client.known_addrs(), vec!["a:1", "b:1"]);
        assert_eq!(client.leader_addr().as_deref(), Some("b:1"));
        // Leader-bound calls start at the leader, local reads at the seed.
        assert_eq!(client.candidates(Target::Leader), vec!["b:1", "a:1"]);
        assert_eq!(client.candidates(Target::Any), vec!["a:1", "b:1"]);
        // A later status replaces the learned members.
        client.learn_from_status(&ClusterStatus {
            members: vec![member("n3", "c:1")],
            ..ClusterStatus::default()
        });
        assert_eq!(client.known_addrs(), vec!["a:1", "c:1"]);
    }

    #[test]
    fn discovery_can_be_turned_off() {
        let client = Client::new(["a:1"], ClientOptions::default().with_discover_members(false)).unwrap();
        client.learn_from_status(&ClusterStatus {
            raft_leader: "n2".into(),
            members: vec![member("n2", "b:1")],
            ..ClusterStatus::default()
        });
        assert_eq!(client.known_addrs(), vec!["a:1"]);
        assert_eq!(client.leader_addr(), None);
    }

    #[test]
    fn client_and_its_futures_are_send_and_sync() {
        fn send<T: Send>(_: &T) {}
        fn send_sync<T: Send + Sync + 'static>(_: &T) {}
        let client = Client::new(["a:1"], ClientOptions::default()).unwrap();
        send_sync(&client);
        send(&client.status(ReadConsistency::Local));
        send(&client.partitions(ReadConsistency::Local));
        send(&client.locate("k", ReadConsistency::Local));
        send(&client.remove_node("n1"));
        send(&Client::connect(["a:1"]));
        send_sync(&ClientError::NoSeeds);
    }

    #[test]
    fn failures_update_the_hints() {
        let client = Client::new(["a:1"], ClientOptions::default()).unwrap();
        client.record_failure("a:1", &RetryDecision::FollowLeader("b:1".into()));
        assert_eq!(client.leader_addr().as_deref(), Some("b:1"));
        assert_eq!(client.known_addrs(), vec!["a:1", "b:1"]);
        client.record_failure("b:1", &RetryDecision::TryAnotherNode);
        assert_eq!(client.leader_addr(), None);
        client.record_success("a:1", Target::Any);
        assert_eq!(client.leader_addr(), None);
        client.record_success("b:1", Target::Leader);
        assert_eq!(client.leader_addr().as_deref(), Some("b:1"));
    }
}
