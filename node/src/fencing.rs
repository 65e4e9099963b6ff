//! The fence: this node's ownership slots ([`crate::ownership`]) and lease
//! ([`crate::lease`]) behind one lock, as the processor, the dispatcher, the handoff service
//! and the MQTT ingress see them; plus the task that renews the lease through the leader.
//!
//! Promise: a message of an ordered route runs here only while this node's slot for its
//! partition lets it run (owner with the data, or draining what it admitted) and its lease is
//! valid at the applied epoch. Everything else is refused with the reason, so the sender
//! re-sends to the owner (`Moved`) or the client sees `Unavailable`.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::store::AppliedState;
use crate::config::{ConfigService, ConfigView};
use crate::coordinator::LeaseGrant;
use crate::lease::{Lease, LeaseStatus};
use crate::ownership::{Gate, Ownership, Phase, Transition};
use crate::peer::leader::{LeaderClient, RaftAndGossip};
use crate::peer::PeerError;
use crate::processor::{GateNow, PartitionGate, Refused};
use crate::ring::Ring;

/// What the fence's neighbours (dispatch, handoff) read of the replicated config: the view
/// applied on this node and its changes. [`ConfigService`] in the node; a simulated sequence
/// of views in single-process tests.
pub trait ConfigSource: Send + Sync + 'static {
    /// The config as applied locally.
    fn local_view(&self) -> ConfigView;
    /// Changes of the applied state.
    fn subscribe(&self) -> watch::Receiver<Arc<AppliedState>>;
}

impl<T: ConfigSource + ?Sized> ConfigSource for Arc<T> {
    fn local_view(&self) -> ConfigView {
        (**self).local_view()
    }

    fn subscribe(&self) -> watch::Receiver<Arc<AppliedState>> {
        (**self).subscribe()
    }
}

impl ConfigSource for ConfigService {
    fn local_view(&self) -> ConfigView {
        ConfigService::local_view(self)
    }

    fn subscribe(&self) -> watch::Receiver<Arc<AppliedState>> {
        ConfigService::subscribe(self)
    }
}

/// Lease timing of a node.
#[derive(Debug, Clone, Copy)]
pub struct LeaseSettings {
    /// How long one renewal keeps the lease valid.
    pub lease: Duration,
    /// Test switch: ignore the lease (shows what fencing is for).
    pub unsafe_no_fencing: bool,
    /// Test switch: new owners start at once, without handoff.
    pub unsafe_no_handoff: bool,
}

impl LeaseSettings {
    /// How often the lease is renewed: four times per lease.
    pub fn renew_every(&self) -> Duration {
        self.lease / 4
    }
}

/// Where the version of every copy this node activates is recorded, beside the data, so that
/// after a restart the node knows which copies it holds and how new they are.
pub trait CopyRecorder: Send + Sync {
    /// Records `(partition, version)` pairs durably.
    fn record(&self, versions: &[(u32, u64)]) -> Result<(), crate::journal::JournalError>;
    /// Forgets every record: the node left gracefully and each new owner confirmed its copy,
    /// so after a restart nothing here is to be offered or given back.
    fn forget_all(&self) -> Result<(), crate::journal::JournalError>;
}

impl CopyRecorder for crate::journal::Journal {
    fn record(&self, versions: &[(u32, u64)]) -> Result<(), crate::journal::JournalError> {
        self.record_held(versions)
    }

    fn forget_all(&self) -> Result<(), crate::journal::JournalError> {
        self.forget_held()
    }
}

struct State {
    ownership: Ownership,
    lease: Lease,
    /// The ring of the last observed config (who owns what, for `Moved` answers).
    ring: Arc<Ring>,
}

impl State {
    /// Whether the lease is valid now, at the epoch last observed.
    fn lease_valid_now(&self) -> bool {
        self.lease.status(now(), self.ownership.epoch()) == LeaseStatus::Valid
    }
}

/// Why this node may not answer a journal read of a partition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReadable {
    /// The partition's data is on its way here.
    #[error("partition {partition} is being handed over to {node}; retry shortly")]
    Fetching {
        /// The partition.
        partition: u32,
        /// This node.
        node: String,
    },
    /// This node does not hold the partition's newest data.
    #[error("{node} does not hold partition {partition} at epoch {epoch}")]
    NotHeld {
        /// The partition.
        partition: u32,
        /// This node.
        node: String,
        /// The epoch it last observed.
        epoch: u64,
    },
}

/// This node's fence.
pub struct Fence {
    node_id: String,
    recorder: Arc<dyn CopyRecorder>,
    state: Mutex<State>,
    changed: watch::Sender<u64>,
    lease_valid: watch::Sender<bool>,
}

impl Fence {
    /// The fence of node `node_id`, holding nothing yet; activations are recorded in
    /// `recorder`.
    pub fn new(node_id: &str, settings: &LeaseSettings, recorder: Arc<dyn CopyRecorder>) -> Self {
        Self {
            node_id: node_id.to_string(),
            recorder,
            state: Mutex::new(State {
                ownership: Ownership::new(node_id, settings.unsafe_no_handoff),
                lease: Lease::new(settings.lease, settings.unsafe_no_fencing),
                ring: Arc::new(Ring::empty()),
            }),
            changed: watch::channel(0).0,
            lease_valid: watch::channel(settings.unsafe_no_fencing).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// The copies found on disk at start (before the first observation).
    pub fn restore(&self, held: std::collections::BTreeMap<u32, u64>) {
        self.lock().ownership.restore(held);
    }

    /// Observes an applied config (called for every change the node applies).
    pub fn observe(&self, view: &ConfigView) {
        let config = &view.state.config;
        let members: BTreeSet<String> = config.members.keys().cloned().collect();
        let transitions = {
            let mut state = self.lock();
            let transitions = state.ownership.observe(config.epoch, &view.ring, &members);
            state.ring = view.ring.clone();
            // Recorded before the lock is released: nothing runs in a partition whose copy's
            // version is not on disk yet.
            let activated: Vec<(u32, u64)> = transitions
                .iter()
                .filter_map(|t| match t {
                    Transition::Activated(p) => Some((*p, config.epoch)),
                    _ => None,
                })
                .collect();
            if let Err(e) = self.recorder.record(&activated) {
                tracing::error!(error = %e, partitions = activated.len(),
                    "cannot record the versions of activated partitions; after a restart their data may be taken for stale");
            }
            transitions
        };
        self.report(&transitions);
        self.refresh_lease_flag();
        self.bump();
    }

    fn report(&self, transitions: &[Transition]) {
        let (mut activated, mut fetching, mut draining, mut abandoned) = (0, 0, 0, 0);
        for t in transitions {
            match t {
                Transition::Activated(_) => activated += 1,
                Transition::StartedFetching(_) => fetching += 1,
                Transition::StartedDraining(_) => draining += 1,
                Transition::AbandonedFetch(_) => abandoned += 1,
                Transition::DroppedAll => {
                    tracing::warn!("no longer a member: dropped every partition this node held")
                }
            }
        }
        if activated + fetching + draining + abandoned > 0 {
            tracing::info!(
                activated,
                fetching,
                draining,
                abandoned,
                "partition ownership changed"
            );
        }
    }

    /// The leader says this node is not a member: drop everything and the lease.
    pub fn removed(&self) {
        let transitions = {
            let mut state = self.lock();
            state
                .lease
                .revoke("this node was removed from the cluster".into());
            state.ownership.drop_all()
        };
        self.report(&transitions);
        self.refresh_lease_flag();
        self.bump();
    }

    /// The lease status now.
    pub fn lease_status(&self) -> LeaseStatus {
        let state = self.lock();
        state.lease.status(now(), state.ownership.epoch())
    }

    /// How long the lease stays valid without another renewal (None: not valid now).
    pub fn lease_remaining(&self) -> Option<Duration> {
        let state = self.lock();
        state
            .lease
            .valid_until()
            .and_then(|until| until.checked_duration_since(now()))
    }

    /// A watch of "the lease is valid", for the MQTT ingress (which must let go of ordered
    /// routes when it is not). Refreshed by the renewal task.
    pub fn lease_valid(&self) -> watch::Receiver<bool> {
        self.lease_valid.subscribe()
    }

    fn refresh_lease_flag(&self) {
        let valid = self.lease_status() == LeaseStatus::Valid;
        self.lease_valid
            .send_if_modified(|v| std::mem::replace(v, valid) != valid);
    }

    /// Takes the MQTT ingress hold on `partition` (the partition of an ordered route's
    /// `$ingress/<route>` key): granted to the active owner with a valid lease, one holder at a
    /// time. While it exists a draining copy of the partition is not handed over.
    pub fn take_ingress_hold(&self, partition: u32) -> Option<u64> {
        let token = {
            let mut state = self.lock();
            if !state.lease_valid_now() {
                return None;
            }
            state.ownership.take_ingress_hold(partition)
        };
        self.bump();
        token
    }

    /// Whether hold `token` on `partition` still lets the ingress take messages in: the
    /// partition is still active here under that hold, and the lease is valid now (checked on
    /// the monotonic clock, so a node resumed after a long pause sees at once that it is not).
    pub fn ingress_hold_valid(&self, partition: u32, token: u64) -> bool {
        let state = self.lock();
        state.lease_valid_now() && state.ownership.ingress_hold_valid(partition, token)
    }

    /// Ends hold `token` on `partition`: the ingress acknowledged what it processed and
    /// disconnected.
    pub fn release_ingress_hold(&self, partition: u32, token: u64) {
        self.lock().ownership.release_ingress_hold(partition, token);
        self.bump();
    }

    /// Runs `f` on the ownership state machine (handoff service and driver).
    pub fn with_ownership<T>(&self, f: impl FnOnce(&mut Ownership) -> T) -> T {
        let out = f(&mut self.lock().ownership);
        self.bump();
        out
    }

    /// Partitions being fetched and the members to ask.
    pub fn fetch_plan(&self) -> (Vec<u32>, Vec<String>, u64) {
        let state = self.lock();
        let o = &state.ownership;
        (o.fetching(), o.peers().iter().cloned().collect(), o.epoch())
    }

    /// Counts of partitions per phase (metrics, status).
    pub fn phase_counts(&self) -> [usize; 4] {
        let state = self.lock();
        let mut counts = [0; 4];
        for slot in state.ownership.slots().values() {
            counts[match slot.phase {
                Phase::Active => 0,
                Phase::Fetching => 1,
                Phase::Draining => 2,
                Phase::HandedOver => 3,
            }] += 1;
        }
        counts
    }

    /// Whether this node holds the newest data of `partition` (it may answer journal reads).
    pub fn readable(&self, partition: u32) -> Result<(), NotReadable> {
        let state = self.lock();
        match state.ownership.slot(partition).map(|s| s.phase) {
            Some(Phase::Active) | Some(Phase::Draining) => Ok(()),
            Some(Phase::Fetching) => Err(NotReadable::Fetching {
                partition,
                node: self.node_id.clone(),
            }),
            _ => Err(NotReadable::NotHeld {
                partition,
                node: self.node_id.clone(),
                epoch: state.ownership.epoch(),
            }),
        }
    }

    /// Partitions still owned or not yet confirmed by their new owners (a leaving node waits
    /// for 0).
    pub fn still_held(&self) -> usize {
        self.lock().ownership.still_held()
    }

    /// The leave ended with every copy confirmed by its new owner: forget the copies on disk.
    pub fn left(&self) {
        if let Err(e) = self.recorder.forget_all() {
            tracing::warn!(error = %e, "cannot clear the held-copy records; a restart will give the copies back needlessly");
        }
    }

    /// Handed-over partitions whose new owner has not confirmed yet, and the epoch.
    pub fn unconfirmed(&self) -> (Vec<u32>, u64) {
        let state = self.lock();
        (state.ownership.unconfirmed(), state.ownership.epoch())
    }

    /// The owner confirmed it is active with these partitions.
    pub fn confirm(&self, partitions: &[u32]) {
        let mut state = self.lock();
        for p in partitions {
            state.ownership.confirm(*p);
        }
    }

    /// Which of `partitions` this node is the active owner of, and at which epoch.
    pub fn active_of(&self, partitions: &[u32]) -> (Vec<u32>, u64) {
        let state = self.lock();
        let active = partitions
            .iter()
            .copied()
            .filter(|p| state.ownership.is_active(*p))
            .collect();
        (active, state.ownership.epoch())
    }

    /// Records a granted renewal (sent at `sent`, granted at the leader's `epoch`).
    pub fn granted(&self, sent: Instant, epoch: u64) {
        self.lock().lease.granted(sent, epoch);
        self.refresh_lease_flag();
        self.bump();
    }

    /// Records a refused or failed renewal.
    pub fn refused(&self, why: String) {
        self.lock().lease.refused(why);
        self.refresh_lease_flag();
    }

    /// Renews the lease until `cancel`: through the leader (or itself when leader). When the
    /// leader answers that this node is not a member, drops everything and signals `removed`.
    pub async fn renew_loop(
        self: Arc<Self>,
        config: Arc<ConfigService>,
        membership: Arc<crate::membership::Membership>,
        settings: LeaseSettings,
        removed: watch::Sender<bool>,
        cancel: CancellationToken,
    ) {
        let hints = Arc::new(RaftAndGossip::new(config.clone(), membership));
        let leader = LeaderClient::new(crate::peer::grpc::shared(), hints);
        let mut ticker = tokio::time::interval(settings.renew_every());
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut warned_at: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let sent = now();
            let outcome =
                tokio::time::timeout(settings.lease / 2, renew_once(&config, &leader, &self.node_id)).await;
            match outcome {
                Ok(Ok(LeaseGrant { epoch, member: true })) => {
                    self.granted(sent, epoch);
                    if *removed.borrow() {
                        tracing::info!("a member again");
                        config.raft().runtime_config().elect(true);
                        removed.send_replace(false);
                    }
                    if warned_at.take().is_some() {
                        tracing::info!("ownership lease renewed again");
                    }
                }
                Ok(Ok(LeaseGrant { epoch, member: false })) => {
                    self.refused("not a member of the cluster".into());
                    if self.removed_by(epoch) && !*removed.borrow() {
                        tracing::warn!("the leader says this node is not a member: it was removed (failed over or left); dropping its partitions");
                        self.removed();
                        // A removed voter that still campaigns would only disturb the
                        // majority with ever higher terms.
                        config.raft().runtime_config().elect(false);
                        removed.send_replace(true);
                    }
                }
                Ok(Err(e)) => self.note_refusal(e.to_string(), &mut warned_at),
                Err(_) => self.note_refusal("renewal timed out".into(), &mut warned_at),
            }
            self.refresh_lease_flag();
        }
    }

    /// Whether a "not a member" answer at the leader's `epoch` means this node was removed:
    /// only a node that believes it is a member was (a joiner simply is not one yet), and only
    /// an answer as new as our config says so (a joiner's renewal may have been answered just
    /// before it was admitted).
    pub fn removed_by(&self, epoch: u64) -> bool {
        let state = self.lock();
        state.ownership.is_member() && epoch >= state.ownership.epoch()
    }

    fn note_refusal(&self, why: String, warned_at: &mut Option<Instant>) {
        if warned_at.is_none_or(|t| now().saturating_duration_since(t) > Duration::from_secs(5)) {
            tracing::warn!(reason = %why, "cannot renew the ownership lease");
            *warned_at = Some(now());
        }
        self.refused(why);
    }
}

/// One renewal: on the leader, a quorum round; elsewhere, a call to the leader.
async fn renew_once(
    config: &ConfigService,
    leader: &LeaderClient,
    node_id: &str,
) -> Result<LeaseGrant, PeerError> {
    if config.is_leader() {
        let view = config
            .linearizable_view()
            .await
            .map_err(|e| PeerError::Unavailable(e.to_string()))?;
        let member = view.state.config.member_by_raft_id(config.raft_id()).is_some();
        return Ok(LeaseGrant {
            epoch: view.state.config.epoch,
            member,
        });
    }
    leader.renew_lease(node_id, config.raft_id()).await
}

impl PartitionGate for Fence {
    fn admit(&self, partition: u32) -> Result<(), Refused> {
        let mut state = self.lock();
        if state.ownership.admit(partition) {
            Ok(())
        } else {
            Err(moved(&state, partition))
        }
    }

    fn gate(&self, partition: u32) -> GateNow {
        let state = self.lock();
        match state.ownership.gate(partition) {
            Gate::Moved => GateNow::Refuse(moved(&state, partition)),
            gate => match state.lease.status(now(), state.ownership.epoch()) {
                LeaseStatus::Invalid(why) => GateNow::Refuse(Refused::Unavailable(why)),
                LeaseStatus::Valid if gate == Gate::Run => GateNow::Run,
                LeaseStatus::Valid => GateNow::Wait,
            },
        }
    }

    fn finished(&self, partition: u32) {
        self.lock().ownership.finished(partition);
        self.bump();
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// `partition` is not this node's: who owns it at the epoch last observed.
fn moved(state: &State, partition: u32) -> Refused {
    Refused::Moved {
        partition,
        owner: state.ring.owner_of_partition(partition).map(str::to_string),
        epoch: state.ownership.epoch(),
    }
}

/// The monotonic clock of the fence: tokio's, so that single-process tests with a paused clock
/// see leases expire deterministically (outside tests it is the system's monotonic clock).
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// A config applied by hand: each node of a single-process test holds one and is shown the
/// views of a simulated sequence of configs (see `node/tests/cluster_scripts.rs`).
pub struct SimulatedConfig {
    applied: watch::Sender<Arc<AppliedState>>,
    view: std::sync::Mutex<ConfigView>,
}

impl SimulatedConfig {
    /// Starts with `config` applied.
    pub fn new(config: crate::config::state::ClusterConfig) -> Self {
        let view = view_of(config);
        Self {
            applied: watch::channel(view.state.clone()).0,
            view: std::sync::Mutex::new(view),
        }
    }

    /// Applies `config`; returns its view.
    pub fn apply(&self, config: crate::config::state::ClusterConfig) -> ConfigView {
        let view = view_of(config);
        *self.view.lock().unwrap_or_else(|p| p.into_inner()) = view.clone();
        self.applied.send_replace(view.state.clone());
        view
    }
}

impl ConfigSource for SimulatedConfig {
    fn local_view(&self) -> ConfigView {
        self.view.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn subscribe(&self) -> watch::Receiver<Arc<AppliedState>> {
        self.applied.subscribe()
    }
}

/// The view of `config` as every node that applied it computes it (an invalid or empty config
/// has an empty ring and no routes, as in [`ConfigService`]).
pub fn view_of(config: crate::config::state::ClusterConfig) -> ConfigView {
    let ring = Arc::new(config.ring().unwrap_or_else(|_| Ring::empty()));
    let routes = Arc::new(
        config
            .route_table()
            .unwrap_or_else(|_| crate::routes::RouteTable::empty()),
    );
    ConfigView {
        state: Arc::new(AppliedState {
            config,
            ..Default::default()
        }),
        ring,
        routes,
    }
}
