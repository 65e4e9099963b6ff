//! The replicated cluster configuration and its deterministic state machine.
//!
//! [`ClusterConfig`] is what Raft replicates: the cluster id, the ring parameters, the ring
//! members with their weights and addresses, the voter cap, and the ownership **epoch**.
//! [`ClusterConfig::apply`] is a pure function of the current config and one [`Command`]; every
//! node applies the same committed commands in the same order and so holds the same config at
//! the same log index. Commands that would break an invariant are rejected (the rejection is
//! itself the deterministic result, so all nodes agree on it) and leave the config unchanged.
//!
//! Invariants:
//! - the epoch only grows, and grows by exactly one on every change of ring ownership
//!   (a member added, removed, replaced or re-weighted), so "epoch e" names one partition table;
//! - node ids and raft ids are unique among members;
//! - before `Bootstrap` is applied the config is empty and accepts nothing else;
//! - replication ([`ReplicationConfig`], set once by `SetReplication`; off in configs from
//!   before it): every partition's in-sync set (ISR) is kept through every member change and
//!   changed otherwise only by `AlterIsr` from the partition's owner at the current epoch; the
//!   epoch also grows whenever the owner implied by the ISR ([`ClusterConfig::owner_table`])
//!   changes. See `ARCHITECTURE.md`, *Replication*.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::replication::isr::{self, IsrChange, PartitionIsr};
use crate::replication::placement::{Placement, PlacementMember};
use crate::replication::table::ReplicaTable;
use crate::ring::{Ring, RingError, RingParams};
use crate::routes::{HandlerSpec, RouteMode, RouteSpec, RouteTable};

/// Default cap on Raft voters; further members are learners.
pub const DEFAULT_MAX_VOTERS: u32 = 5;

/// A ring member as recorded in the replicated config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Operator-chosen node id, unique in the cluster (e.g. `n1`, or a pod name).
    pub node_id: String,
    /// Raft id of this incarnation of the node (random, kept in its data directory).
    pub raft_id: u64,
    /// gRPC address peers and clients use.
    pub grpc_addr: String,
    /// Gossip (UDP) address.
    pub gossip_addr: String,
    /// HTTP address (metrics, health).
    pub http_addr: String,
    /// Share of partitions relative to other members (>= 1).
    pub weight: u32,
    /// `Active` members own partitions; a `Leaving` member owns none (the ring is built
    /// without it) but stays a member while it hands its partitions over.
    #[serde(default)]
    pub state: MemberState,
}

/// Where a member is in its life in the ring.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberState {
    /// Owns its share of partitions.
    #[default]
    Active,
    /// Leaving gracefully: owns nothing, hands over what it held, then is removed.
    Leaving,
}

/// A change to the cluster config, proposed through Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Creates the cluster; must be the first command and is accepted once.
    Bootstrap {
        /// Random id of the new cluster.
        cluster_id: String,
        /// Ring parameters, fixed for the life of the cluster.
        ring: RingParams,
        /// Cap on Raft voters.
        max_voters: u32,
        /// The bootstrapping node.
        first: Member,
    },
    /// Adds a member, or replaces the member with the same node id (a new incarnation).
    AddMember(Member),
    /// Removes a member from the ring.
    RemoveMember {
        /// Node id of the member to remove.
        node_id: String,
    },
    /// Creates or replaces a route. With `expected_version`, only if the route's current
    /// version equals it (0 = only if absent): compare-and-set.
    PutRoute {
        /// The route.
        spec: RouteSpec,
        /// Compare-and-set guard.
        expected_version: Option<u64>,
    },
    /// Deletes a route, optionally only at `expected_version`.
    DeleteRoute {
        /// Route name.
        name: String,
        /// Compare-and-set guard.
        expected_version: Option<u64>,
    },
    /// Starts a graceful leave: the member stays (so the new owners can fetch its partitions
    /// from it) but owns nothing from now on.
    SetLeaving {
        /// Node id of the member.
        node_id: String,
    },
    /// Changes a member's weight.
    SetWeight {
        /// Node id of the member.
        node_id: String,
        /// New weight (>= 1).
        weight: u32,
    },
    /// Turns replication on with these parameters; accepted once (right after `Bootstrap`; on
    /// an older cluster, once, with only each partition's owner in sync).
    SetReplication {
        /// Replication factor R (1..=7).
        factor: u32,
        /// Minimum in-sync replicas for a write (1..=R).
        min_insync: u32,
    },
    /// Sets a member's zone (empty: none). Replicas go to distinct zones first.
    SetZone {
        /// Node id of the member.
        node_id: String,
        /// The zone.
        zone: String,
    },
    /// Records the incarnation of a member's data directory. A different one than recorded
    /// takes the member out of every in-sync set: its data is not the data that was in sync.
    SetIncarnation {
        /// Node id of the member.
        node_id: String,
        /// Incarnation (non-zero).
        incarnation: u64,
    },
    /// ISR changes asked for by the owner of the partitions named, at config epoch `epoch`.
    /// Rejected whole unless `epoch` is the current epoch, `owner` owns every partition named
    /// and every change is allowed ([`crate::replication::isr::alter`]).
    AlterIsr {
        /// The proposing owner.
        owner: String,
        /// The epoch the owner applied.
        epoch: u64,
        /// One change per partition.
        changes: Vec<IsrChange>,
    },
}

/// Why a command was rejected. Deterministic: every node rejects the same command the same way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ConfigError {
    /// `Bootstrap` on a config that already has a cluster id.
    #[error("the cluster is already bootstrapped (cluster id {0})")]
    AlreadyBootstrapped(String),
    /// Any command but `Bootstrap` before the cluster exists.
    #[error("the cluster is not bootstrapped yet")]
    NotBootstrapped,
    /// The named node is not a member.
    #[error("node {0:?} is not a member of the cluster")]
    UnknownNode(String),
    /// Another member already uses this raft id.
    #[error("raft id {raft_id} is already used by member {node_id:?}")]
    DuplicateRaftId {
        /// The raft id.
        raft_id: u64,
        /// The member holding it.
        node_id: String,
    },
    /// Removing the last member would leave no owner for any partition.
    #[error("cannot remove {0:?}: it is the last member of the cluster")]
    LastMember(String),
    /// A compare-and-set guard did not hold.
    #[error("route {name:?} is at version {}, not {expected}", .actual.map(|v| v.to_string()).unwrap_or_else(|| "absent (0)".into()))]
    VersionMismatch {
        /// Route name.
        name: String,
        /// The guard.
        expected: u64,
        /// The current version, None if absent.
        actual: Option<u64>,
    },
    /// No route has this name.
    #[error("no route named {0:?}")]
    UnknownRoute(String),
    /// The route definition is invalid.
    #[error("invalid route: {0}")]
    InvalidRoute(String),
    /// An ISR change proposed at another epoch than the current one.
    #[error("stale epoch: the change was proposed at epoch {proposed}, the config is at {current}")]
    StaleEpoch {
        /// The proposer's epoch.
        proposed: u64,
        /// The config's.
        current: u64,
    },
    /// An ISR change proposed by a member that does not own the partition.
    #[error("{node:?} does not own partition {partition} (its owner is {owner:?})")]
    NotOwnerOf {
        /// The partition.
        partition: u32,
        /// The proposer.
        node: String,
        /// The owner.
        owner: Option<String>,
    },
    /// An ISR change the rules refuse.
    #[error("in-sync set change refused: {0}")]
    IsrRefused(String),
    /// Replication parameters are fixed once set.
    #[error("replication is fixed at factor {factor}, min-insync {min_insync} for the life of the cluster")]
    ReplicationFixed {
        /// Factor.
        factor: u32,
        /// Min-insync.
        min_insync: u32,
    },
    /// A replication command on a cluster without replication.
    #[error("replication is not enabled in this cluster")]
    ReplicationOff,
    /// A field failed validation.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// Which field.
        field: String,
        /// Why.
        reason: String,
    },
}

/// What an applied command changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// Epoch after the command.
    pub epoch: u64,
    /// Route commands: the route's new version (0 after a delete).
    pub route_version: Option<u64>,
}

/// Outcome of applying one command, or why it was rejected.
pub type ApplyResult = Result<Applied, ConfigError>;

/// A route in the config with the log index of its last write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRoute {
    /// The definition.
    pub spec: RouteSpec,
    /// Config log index of the last write (compare-and-set token; never 0).
    pub version: u64,
}

/// The replicated cluster configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfig {
    /// Cluster id; empty until bootstrapped.
    pub cluster_id: String,
    /// Ring parameters (fixed at bootstrap).
    pub ring: RingParams,
    /// Cap on Raft voters.
    pub max_voters: u32,
    /// Ring members by node id.
    pub members: BTreeMap<String, Member>,
    /// Ownership epoch: bumped by every change of the partition table.
    pub epoch: u64,
    /// Routes by name.
    #[serde(default)]
    pub routes: BTreeMap<String, StoredRoute>,
    /// Bumped by every route change (caches key on it).
    #[serde(default)]
    pub routes_revision: u64,
    /// Replication: factor, zones, incarnations and in-sync sets.
    #[serde(default)]
    pub replication: ReplicationConfig,
}

/// Largest replication factor.
pub const MAX_REPLICATION_FACTOR: u32 = 7;

/// Replication state in the config. `factor == 0` (a config from before replication): off,
/// owners are the ring's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationConfig {
    /// Replication factor R; 0 = off.
    #[serde(default)]
    pub factor: u32,
    /// Minimum in-sync replicas for a write.
    #[serde(default)]
    pub min_insync: u32,
    /// Zones of members (absent: none).
    #[serde(default)]
    pub zones: BTreeMap<String, String>,
    /// Incarnations of members' data directories (absent: not reported yet).
    #[serde(default)]
    pub incarnations: BTreeMap<String, u64>,
    /// ISR records of the partitions whose ISR is not their whole placement.
    #[serde(default)]
    pub partitions: BTreeMap<u32, PartitionIsr>,
    /// Bumped by every change of placement or ISR (watchers key on it).
    #[serde(default)]
    pub revision: u64,
}

impl ReplicationConfig {
    /// True once `SetReplication` was applied.
    pub fn enabled(&self) -> bool {
        self.factor > 0
    }

    /// Checks a node's flags against the cluster's: R and min-insync are fixed at bootstrap.
    pub fn check_flags(&self, factor: u32, min_insync: u32) -> Result<(), ConfigError> {
        if !self.enabled() || (self.factor == factor && self.min_insync == min_insync) {
            Ok(())
        } else {
            Err(invalid(
                "replication flags",
                format!(
                    "--replication-factor {factor} --min-insync {min_insync} differ from the cluster's \
                     (factor {}, min-insync {}), which are fixed at bootstrap; drop the flags or set them to the cluster's",
                    self.factor, self.min_insync
                ),
            ))
        }
    }
}

impl ReplicationConfig {
    /// The coordinator's decision when member `node_id` reports the incarnation of its data
    /// directory (at join or lease renewal): record it if it is new or different (a different
    /// one takes the member out of every ISR), nothing if it is the recorded one.
    pub fn incarnation_command(&self, node_id: &str, reported: u64) -> Option<Command> {
        (self.enabled() && reported != 0 && self.incarnations.get(node_id) != Some(&reported)).then(|| {
            Command::SetIncarnation {
                node_id: node_id.to_string(),
                incarnation: reported,
            }
        })
    }
}

/// Validates replication parameters (shared with the settings).
pub fn validate_replication(factor: u32, min_insync: u32) -> Result<(), ConfigError> {
    if !(1..=MAX_REPLICATION_FACTOR).contains(&factor) {
        return Err(invalid(
            "replication factor",
            format!("{factor} is not in 1..={MAX_REPLICATION_FACTOR}"),
        ));
    }
    if !(1..=factor).contains(&min_insync) {
        return Err(invalid(
            "min-insync",
            format!("{min_insync} is not in 1..={factor} (at least 1, at most the replication factor)"),
        ));
    }
    Ok(())
}

/// Owners and ISRs of every partition before a member change.
struct Before {
    owners: Vec<Option<String>>,
    isr: Vec<Vec<String>>,
}

impl ClusterConfig {
    /// True once `Bootstrap` has been applied.
    pub fn is_bootstrapped(&self) -> bool {
        !self.cluster_id.is_empty()
    }

    /// The member with this raft id, if any.
    pub fn member_by_raft_id(&self, raft_id: u64) -> Option<&Member> {
        self.members.values().find(|m| m.raft_id == raft_id)
    }

    /// Builds the ring (partition table) of this config from its active members. A pure
    /// function of the config.
    pub fn ring(&self) -> Result<Ring, RingError> {
        Ring::build(
            &self.ring,
            self.active_members().map(|m| (m.node_id.as_str(), m.weight)),
        )
    }

    /// Members that own partitions (not leaving).
    pub fn active_members(&self) -> impl Iterator<Item = &Member> {
        self.members.values().filter(|m| m.state == MemberState::Active)
    }

    /// The route table of this config, in matching order.
    pub fn route_table(&self) -> Result<RouteTable, ConfigError> {
        RouteTable::build(self.routes.values().map(|r| r.spec.clone()))
            .map_err(|e| ConfigError::InvalidRoute(e.to_string()))
    }

    /// The zone of a member (`""`: none).
    pub fn zone_of(&self, node_id: &str) -> &str {
        self.replication.zones.get(node_id).map_or("", String::as_str)
    }

    /// Replica placement of this config (one replica per partition while replication is off).
    pub fn placement(&self) -> Result<Placement, RingError> {
        Placement::build(
            &self.ring,
            self.active_members().map(|m| PlacementMember {
                node_id: &m.node_id,
                weight: m.weight,
                zone: self.zone_of(&m.node_id),
            }),
            self.replication.factor,
        )
    }

    /// Placement, ISR and owner of every partition.
    pub fn replica_table(&self) -> Result<ReplicaTable, RingError> {
        Ok(ReplicaTable::new(
            self.placement()?,
            self.replication.partitions.clone(),
            self.replication.factor.max(1) as usize,
            self.ring.partitions,
        ))
    }

    /// The partition table: with replication, each partition's owner is its first in-sync
    /// replica ([`crate::replication::isr::owner`]); without, the ring's owner. In the format
    /// of [`Ring::from_table`], so it feeds `Ownership::observe` like [`ClusterConfig::ring`].
    pub fn owner_table(&self) -> Result<Ring, RingError> {
        if !self.replication.enabled() {
            return self.ring();
        }
        let table = self.replica_table()?;
        let nodes: Vec<String> = self.members.keys().cloned().collect();
        if nodes.is_empty() {
            return Ring::from_table(&self.ring, Vec::new(), Vec::new());
        }
        let owners = (0..self.ring.partitions)
            .map(|p| {
                table
                    .owner(p)
                    .and_then(|o| nodes.iter().position(|n| *n == o))
                    .and_then(|i| u16::try_from(i).ok())
                    .unwrap_or(0)
            })
            .collect();
        Ring::from_table(&self.ring, nodes, owners)
    }

    /// Owners and ISRs now, to carry over a member change (None: replication off).
    fn before(&self) -> Option<Before> {
        if !self.replication.enabled() || !self.is_bootstrapped() {
            return None;
        }
        let table = self.replica_table().ok()?;
        Some(Before {
            owners: (0..self.ring.partitions).map(|p| table.owner(p)).collect(),
            isr: (0..self.ring.partitions).map(|p| table.isr(p)).collect(),
        })
    }

    /// After a member change: every partition's ISR without the members in `gone` (or no
    /// longer members), new replicas lagging, unplaced in-sync ones retiring; the epoch grows
    /// (once) if an owner changed and the command did not grow it already.
    fn carry_over(&mut self, before: Before, gone: &BTreeSet<String>, epoch_before: u64) {
        let Ok(placement) = self.placement() else {
            return; // The ring was validated before the change: cannot happen.
        };
        let next_epoch = if self.epoch > epoch_before {
            self.epoch
        } else {
            self.epoch + 1
        };
        let mut records = BTreeMap::new();
        let mut owner_changed = false;
        for p in 0..self.ring.partitions {
            let placed = placement.replicas(p);
            let old_isr = before.isr.get(p as usize).cloned().unwrap_or_default();
            let old_unclean = self.replication.partitions.get(&p).map_or(0, |r| r.unclean_epoch);
            let record = isr::carry_over(
                &old_isr,
                |n| gone.contains(n) || !self.members.contains_key(n),
                &placed,
                next_epoch,
                old_unclean,
            );
            let owner = isr::owner(&placed, record.as_ref());
            owner_changed |= before.owners.get(p as usize).cloned().flatten() != owner;
            if let Some(record) = record {
                records.insert(p, record);
            }
        }
        self.replication.partitions = records;
        self.replication.revision += 1;
        if owner_changed && self.epoch == epoch_before {
            self.epoch += 1;
        }
    }

    fn alter_isr(&mut self, owner: &str, epoch: u64, changes: &[IsrChange]) -> Result<(), ConfigError> {
        if !self.replication.enabled() {
            return Err(ConfigError::ReplicationOff);
        }
        if epoch != self.epoch {
            return Err(ConfigError::StaleEpoch {
                proposed: epoch,
                current: self.epoch,
            });
        }
        let placement = self
            .placement()
            .map_err(|e| invalid("ring members", e.to_string()))?;
        let min_insync = self.replication.min_insync.max(1) as usize;
        let mut records = self.replication.partitions.clone();
        let mut owner_changed = false;
        for change in changes {
            let p = change.partition;
            if p >= self.ring.partitions {
                return Err(invalid(
                    "partition",
                    format!("{p} is not below {}", self.ring.partitions),
                ));
            }
            let placed = placement.replicas(p);
            let current = isr::owner(&placed, records.get(&p));
            if current.as_deref() != Some(owner) {
                return Err(ConfigError::NotOwnerOf {
                    partition: p,
                    node: owner.to_string(),
                    owner: current,
                });
            }
            let incarnations = &self.replication.incarnations;
            let next = isr::alter(
                &placed,
                records.get(&p),
                change,
                |n| incarnations.get(n).copied().unwrap_or(0),
                min_insync,
            )
            .map_err(|e| ConfigError::IsrRefused(e.to_string()))?;
            owner_changed |= isr::owner(&placed, next.as_ref()) != current;
            match next {
                Some(record) => records.insert(p, record),
                None => records.remove(&p),
            };
        }
        self.replication.partitions = records;
        self.replication.revision += 1;
        if owner_changed {
            self.epoch += 1;
        }
        Ok(())
    }

    fn set_replication(&mut self, factor: u32, min_insync: u32) -> Result<(), ConfigError> {
        validate_replication(factor, min_insync)?;
        if self.replication.enabled() {
            if (self.replication.factor, self.replication.min_insync) == (factor, min_insync) {
                return Ok(());
            }
            return Err(ConfigError::ReplicationFixed {
                factor: self.replication.factor,
                min_insync: self.replication.min_insync,
            });
        }
        // Until now each partition had one copy, on its ring owner: that is the ISR.
        let ring = self.ring().map_err(|e| invalid("ring members", e.to_string()))?;
        let owners: Vec<Option<String>> = (0..self.ring.partitions)
            .map(|p| ring.owner_of_partition(p).map(str::to_owned))
            .collect();
        let before = Before {
            isr: owners.iter().map(|o| o.iter().cloned().collect()).collect(),
            owners,
        };
        self.replication.factor = factor;
        self.replication.min_insync = min_insync;
        let epoch = self.epoch;
        self.carry_over(before, &BTreeSet::new(), epoch);
        Ok(())
    }

    /// Applies one command committed at log `index`. On error the config is left unchanged.
    pub fn apply(&mut self, index: u64, command: &Command) -> ApplyResult {
        let mut route_version = None;
        let member_change = matches!(
            command,
            Command::AddMember(_)
                | Command::RemoveMember { .. }
                | Command::SetLeaving { .. }
                | Command::SetWeight { .. }
                | Command::SetZone { .. }
                | Command::SetIncarnation { .. }
        );
        let before = if member_change { self.before() } else { None };
        let epoch_before = self.epoch;
        let mut gone = BTreeSet::new();
        match command {
            Command::Bootstrap {
                cluster_id,
                ring,
                max_voters,
                first,
            } => {
                if self.is_bootstrapped() {
                    return Err(ConfigError::AlreadyBootstrapped(self.cluster_id.clone()));
                }
                if cluster_id.is_empty() {
                    return Err(invalid("cluster_id", "must not be empty"));
                }
                ring.validate()
                    .map_err(|e| invalid("ring parameters", e.to_string()))?;
                if !(1..=9).contains(max_voters) {
                    return Err(invalid("max_voters", format!("{max_voters} is not in 1..=9")));
                }
                validate_member(first)?;
                Ring::validate_members(ring, [(first.node_id.as_str(), first.weight)])
                    .map_err(|e| invalid("ring members", e.to_string()))?;
                self.cluster_id = cluster_id.clone();
                self.ring = *ring;
                self.max_voters = *max_voters;
                self.members.insert(first.node_id.clone(), first.clone());
                self.epoch = 1;
            }
            Command::AddMember(member) => {
                self.require_bootstrapped()?;
                validate_member(member)?;
                if let Some(other) = self
                    .members
                    .values()
                    .find(|m| m.raft_id == member.raft_id && m.node_id != member.node_id)
                {
                    return Err(ConfigError::DuplicateRaftId {
                        raft_id: member.raft_id,
                        node_id: other.node_id.clone(),
                    });
                }
                self.check_ring_with(&member.node_id, member.weight)?;
                let mut member = member.clone();
                member.state = MemberState::Active;
                let previous = self.members.insert(member.node_id.clone(), member.clone());
                if previous.as_ref().is_some_and(|p| p.raft_id != member.raft_id) {
                    // Another data directory under the same node id: nothing it holds was in sync.
                    gone.insert(member.node_id.clone());
                    self.replication.incarnations.remove(&member.node_id);
                }
                // Re-adding the same active incarnation with the same weight changes no ownership.
                if previous.as_ref().map(|p| (p.weight, p.state))
                    != Some((member.weight, MemberState::Active))
                {
                    self.epoch += 1;
                }
            }
            Command::RemoveMember { node_id } => {
                self.require_bootstrapped()?;
                if !self.members.contains_key(node_id) {
                    return Err(ConfigError::UnknownNode(node_id.clone()));
                }
                let was_active = self.members.get(node_id).map(|m| m.state) == Some(MemberState::Active);
                if was_active && self.active_members().count() == 1 {
                    return Err(ConfigError::LastMember(node_id.clone()));
                }
                self.members.remove(node_id);
                self.replication.zones.remove(node_id);
                self.replication.incarnations.remove(node_id);
                gone.insert(node_id.clone());
                // A leaving member owned nothing: removing it changes no ownership.
                if was_active {
                    self.epoch += 1;
                }
            }
            Command::SetLeaving { node_id } => {
                self.require_bootstrapped()?;
                let member = self
                    .members
                    .get(node_id)
                    .ok_or_else(|| ConfigError::UnknownNode(node_id.clone()))?;
                if member.state == MemberState::Active {
                    if self.active_members().count() == 1 {
                        return Err(ConfigError::LastMember(node_id.clone()));
                    }
                    if let Some(m) = self.members.get_mut(node_id) {
                        m.state = MemberState::Leaving;
                    }
                    self.epoch += 1;
                }
            }
            Command::PutRoute {
                spec,
                expected_version,
            } => {
                self.require_bootstrapped()?;
                self.check_version(&spec.name, *expected_version)?;
                spec.validate()
                    .map_err(|e| ConfigError::InvalidRoute(e.to_string()))?;
                if matches!(spec.handler, HandlerSpec::Journal) && !matches!(spec.mode, RouteMode::Ordered) {
                    return Err(ConfigError::InvalidRoute(format!(
                        "route {:?}: the journal handler keeps a per-key log on the key's owner and needs mode ordered",
                        spec.name
                    )));
                }
                let mut routes = self.routes.clone();
                let version = index.max(1);
                routes.insert(
                    spec.name.clone(),
                    StoredRoute {
                        spec: spec.clone(),
                        version,
                    },
                );
                RouteTable::build(routes.values().map(|r| r.spec.clone()))
                    .map_err(|e| ConfigError::InvalidRoute(e.to_string()))?;
                self.routes = routes;
                self.routes_revision += 1;
                route_version = Some(version);
            }
            Command::DeleteRoute {
                name,
                expected_version,
            } => {
                self.require_bootstrapped()?;
                self.check_version(name, *expected_version)?;
                if self.routes.remove(name).is_none() {
                    return Err(ConfigError::UnknownRoute(name.clone()));
                }
                self.routes_revision += 1;
                route_version = Some(0);
            }
            Command::SetWeight { node_id, weight } => {
                self.require_bootstrapped()?;
                validate_weight(*weight)?;
                if self
                    .members
                    .get(node_id)
                    .is_some_and(|m| m.state == MemberState::Active)
                {
                    self.check_ring_with(node_id, *weight)?;
                }
                let member = self
                    .members
                    .get_mut(node_id)
                    .ok_or_else(|| ConfigError::UnknownNode(node_id.clone()))?;
                if member.weight != *weight {
                    member.weight = *weight;
                    if member.state == MemberState::Active {
                        self.epoch += 1;
                    }
                }
            }
            Command::SetReplication { factor, min_insync } => {
                self.require_bootstrapped()?;
                self.set_replication(*factor, *min_insync)?;
            }
            Command::SetZone { node_id, zone } => {
                self.require_bootstrapped()?;
                validate_zone(zone)?;
                if !self.members.contains_key(node_id) {
                    return Err(ConfigError::UnknownNode(node_id.clone()));
                }
                if zone.is_empty() {
                    self.replication.zones.remove(node_id);
                } else {
                    self.replication.zones.insert(node_id.clone(), zone.clone());
                }
            }
            Command::SetIncarnation { node_id, incarnation } => {
                self.require_bootstrapped()?;
                if *incarnation == 0 {
                    return Err(invalid("incarnation", "must not be 0"));
                }
                if !self.members.contains_key(node_id) {
                    return Err(ConfigError::UnknownNode(node_id.clone()));
                }
                // The first report is adopted: until then the member could not join any ISR
                // (joins need the recorded incarnation); only the members that were in sync
                // without one (the first member, or every member when replication was turned
                // on later) are in an ISR already, with this very data directory.
                let previous = self
                    .replication
                    .incarnations
                    .insert(node_id.clone(), *incarnation);
                if previous.is_some_and(|p| p != *incarnation) {
                    gone.insert(node_id.clone());
                }
            }
            Command::AlterIsr {
                owner,
                epoch,
                changes,
            } => {
                self.require_bootstrapped()?;
                self.alter_isr(owner, *epoch, changes)?;
            }
        }
        if let Some(before) = before {
            self.carry_over(before, &gone, epoch_before);
        }
        Ok(Applied {
            epoch: self.epoch,
            route_version,
        })
    }

    fn check_version(&self, name: &str, expected: Option<u64>) -> Result<(), ConfigError> {
        let Some(expected) = expected else { return Ok(()) };
        let actual = self.routes.get(name).map(|r| r.version);
        if actual.unwrap_or(0) == expected {
            Ok(())
        } else {
            Err(ConfigError::VersionMismatch {
                name: name.to_string(),
                expected,
                actual,
            })
        }
    }

    /// Refuses a change that would make the ring unbuildable (too many virtual nodes), so a
    /// committed config always has a ring.
    fn check_ring_with(&self, node_id: &str, weight: u32) -> Result<(), ConfigError> {
        let members = self
            .active_members()
            .filter(|m| m.node_id != node_id)
            .map(|m| (m.node_id.as_str(), m.weight))
            .chain(std::iter::once((node_id, weight)));
        Ring::validate_members(&self.ring, members).map_err(|e| invalid("ring members", e.to_string()))
    }

    fn require_bootstrapped(&self) -> Result<(), ConfigError> {
        if self.is_bootstrapped() {
            Ok(())
        } else {
            Err(ConfigError::NotBootstrapped)
        }
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// Maximum weight of one member; keeps the ring's token count bounded.
pub const MAX_WEIGHT: u32 = 64;

fn validate_weight(weight: u32) -> Result<(), ConfigError> {
    if (1..=MAX_WEIGHT).contains(&weight) {
        Ok(())
    } else {
        Err(invalid("weight", format!("{weight} is not in 1..={MAX_WEIGHT}")))
    }
}

/// Checks a node id: 1-128 characters of ASCII letters, digits, `-`, `_` and `.`.
pub fn validate_node_id(node_id: &str) -> Result<(), ConfigError> {
    let ok = !node_id.is_empty()
        && node_id.len() <= 128
        && node_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "node id",
            format!("{node_id:?} must be 1-128 characters of letters, digits, '-', '_' or '.'"),
        ))
    }
}

/// Checks a zone: empty (none), or 1-64 characters of ASCII letters, digits, `-`, `_` and `.`.
pub fn validate_zone(zone: &str) -> Result<(), ConfigError> {
    let ok = zone.len() <= 64
        && zone
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "zone",
            format!("{zone:?} must be at most 64 characters of letters, digits, '-', '_' or '.'"),
        ))
    }
}

/// Checks every field of a member.
pub fn validate_member(member: &Member) -> Result<(), ConfigError> {
    validate_node_id(&member.node_id)?;
    validate_weight(member.weight)?;
    if member.raft_id == 0 {
        return Err(invalid("raft id", "must not be 0"));
    }
    for (field, addr) in [
        ("grpc address", &member.grpc_addr),
        ("gossip address", &member.gossip_addr),
        ("http address", &member.http_addr),
    ] {
        if addr.is_empty() || !addr.contains(':') {
            return Err(invalid(field, format!("{addr:?} is not host:port")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    impl ClusterConfig {
        fn apply_epoch(&mut self, command: &Command) -> Result<u64, ConfigError> {
            self.apply(7, command).map(|a| a.epoch)
        }
    }

    pub(crate) fn member(id: &str, raft_id: u64) -> Member {
        Member {
            node_id: id.into(),
            raft_id,
            grpc_addr: format!("127.0.0.1:{}", 7000 + raft_id),
            gossip_addr: format!("127.0.0.1:{}", 7100 + raft_id),
            http_addr: format!("127.0.0.1:{}", 7200 + raft_id),
            weight: 1,
            state: MemberState::Active,
        }
    }

    fn bootstrapped() -> ClusterConfig {
        let mut config = ClusterConfig::default();
        let epoch = config
            .apply_epoch(&Command::Bootstrap {
                cluster_id: "c1".into(),
                ring: RingParams::default(),
                max_voters: 3,
                first: member("n1", 1),
            })
            .unwrap();
        assert_eq!(epoch, 1);
        config
    }

    #[test]
    fn commands_before_bootstrap_are_rejected() {
        let mut config = ClusterConfig::default();
        assert_eq!(
            config.apply_epoch(&Command::AddMember(member("n2", 2))),
            Err(ConfigError::NotBootstrapped)
        );
        assert_eq!(config, ClusterConfig::default());
    }

    #[test]
    fn bootstrap_is_accepted_once() {
        let mut config = bootstrapped();
        let again = Command::Bootstrap {
            cluster_id: "c2".into(),
            ring: RingParams::default(),
            max_voters: 3,
            first: member("n9", 9),
        };
        assert_eq!(
            config.apply_epoch(&again),
            Err(ConfigError::AlreadyBootstrapped("c1".into()))
        );
        assert_eq!(config.cluster_id, "c1");
    }

    #[test]
    fn every_ownership_change_bumps_the_epoch_once() {
        let mut config = bootstrapped();
        assert_eq!(config.apply_epoch(&Command::AddMember(member("n2", 2))), Ok(2));
        // Same incarnation again: no ownership change.
        assert_eq!(config.apply_epoch(&Command::AddMember(member("n2", 2))), Ok(2));
        // A new incarnation with the same weight owns the same partitions.
        assert_eq!(config.apply_epoch(&Command::AddMember(member("n2", 22))), Ok(2));
        assert_eq!(
            config.apply_epoch(&Command::SetWeight {
                node_id: "n2".into(),
                weight: 2
            }),
            Ok(3)
        );
        assert_eq!(
            config.apply_epoch(&Command::RemoveMember { node_id: "n2".into() }),
            Ok(4)
        );
    }

    #[test]
    fn a_leaving_member_owns_nothing_and_its_removal_moves_nothing() {
        let mut config = bootstrapped();
        config.apply_epoch(&Command::AddMember(member("n2", 2))).unwrap();
        let leave = Command::SetLeaving { node_id: "n2".into() };
        assert_eq!(config.apply_epoch(&leave), Ok(3), "leaving moves ownership");
        assert_eq!(config.apply_epoch(&leave), Ok(3), "leaving twice is a no-op");
        let ring = config.ring().unwrap();
        assert_eq!(
            ring.partitions_per_node().keys().copied().collect::<Vec<_>>(),
            ["n1"]
        );
        assert!(
            config.members.contains_key("n2"),
            "still a member while it hands over"
        );
        assert_eq!(
            config.apply_epoch(&Command::SetLeaving { node_id: "n1".into() }),
            Err(ConfigError::LastMember("n1".into())),
            "the last active member cannot leave"
        );
        assert_eq!(
            config.apply_epoch(&Command::RemoveMember { node_id: "n2".into() }),
            Ok(3)
        );
        // Re-joining makes it active again.
        config.apply_epoch(&Command::AddMember(member("n2", 2))).unwrap();
        assert_eq!(config.epoch, 4);
        assert_eq!(config.members["n2"].state, MemberState::Active);
    }

    #[test]
    fn invalid_commands_leave_the_config_unchanged() {
        let mut config = bootstrapped();
        let before = config.clone();
        let bad = [
            Command::AddMember(Member {
                weight: 0,
                ..member("n2", 2)
            }),
            Command::AddMember(member("bad id!", 3)),
            Command::AddMember(member("n3", 1)), // raft id of n1
            Command::RemoveMember {
                node_id: "nope".into(),
            },
            Command::RemoveMember { node_id: "n1".into() }, // last member
            Command::SetWeight {
                node_id: "n1".into(),
                weight: MAX_WEIGHT + 1,
            },
        ];
        for command in &bad {
            assert!(config.apply_epoch(command).is_err(), "{command:?} was accepted");
            assert_eq!(config, before, "{command:?} changed the config");
        }
    }

    fn small_cluster(ids: &[&str], factor: u32, min_insync: u32) -> ClusterConfig {
        let mut config = ClusterConfig::default();
        config
            .apply_epoch(&Command::Bootstrap {
                cluster_id: "c1".into(),
                ring: RingParams {
                    partitions: 64,
                    vnodes_per_weight: 16,
                },
                max_voters: 3,
                first: member(ids[0], 1),
            })
            .unwrap();
        config
            .apply_epoch(&Command::SetReplication { factor, min_insync })
            .unwrap();
        for (i, id) in ids.iter().enumerate() {
            if i > 0 {
                config
                    .apply_epoch(&Command::AddMember(member(id, i as u64 + 1)))
                    .unwrap();
            }
            config
                .apply_epoch(&Command::SetIncarnation {
                    node_id: id.to_string(),
                    incarnation: 100 + i as u64,
                })
                .unwrap();
        }
        config
    }

    /// Every owner proposes the joins of its lagging replicas, until nothing lags.
    fn catch_up_all(config: &mut ClusterConfig) {
        for _ in 0..8 {
            let table = config.replica_table().unwrap();
            let mut by_owner: BTreeMap<String, Vec<IsrChange>> = BTreeMap::new();
            for p in 0..config.ring.partitions {
                let part = table.partition(p);
                if part.lagging.is_empty() {
                    continue;
                }
                let join = part
                    .lagging
                    .iter()
                    .map(|n| (n.clone(), config.replication.incarnations[n]))
                    .collect();
                by_owner.entry(part.owner.unwrap()).or_default().push(IsrChange {
                    partition: p,
                    join,
                    leave: vec![],
                });
            }
            if by_owner.is_empty() {
                return;
            }
            if let Some((owner, changes)) = by_owner.into_iter().next() {
                let epoch = config.epoch;
                config
                    .apply_epoch(&Command::AlterIsr {
                        owner,
                        epoch,
                        changes,
                    })
                    .unwrap();
            }
        }
        panic!("did not catch up");
    }

    fn owners(config: &ClusterConfig) -> Vec<String> {
        let table = config.owner_table().unwrap();
        (0..config.ring.partitions)
            .map(|p| table.owner_of_partition(p).unwrap().to_string())
            .collect()
    }

    #[test]
    fn without_replication_owners_are_the_ring_s() {
        let mut config = bootstrapped();
        config.apply_epoch(&Command::AddMember(member("n2", 2))).unwrap();
        assert_eq!(config.owner_table().unwrap(), config.ring().unwrap());
        assert!(config.replication.partitions.is_empty());
        assert_eq!(
            config.apply_epoch(&Command::AlterIsr {
                owner: "n1".into(),
                epoch: config.epoch,
                changes: vec![]
            }),
            Err(ConfigError::ReplicationOff)
        );
    }

    #[test]
    fn replication_is_set_once_and_validated() {
        let mut config = small_cluster(&["n1"], 3, 2);
        let same = Command::SetReplication {
            factor: 3,
            min_insync: 2,
        };
        assert_eq!(config.apply_epoch(&same), Ok(1));
        assert_eq!(
            config.apply_epoch(&Command::SetReplication {
                factor: 1,
                min_insync: 1
            }),
            Err(ConfigError::ReplicationFixed {
                factor: 3,
                min_insync: 2
            })
        );
        for (factor, min_insync) in [(0, 1), (8, 1), (3, 4), (3, 0)] {
            let mut fresh = bootstrapped();
            assert!(fresh
                .apply_epoch(&Command::SetReplication { factor, min_insync })
                .is_err());
        }
        assert!(config.replication.check_flags(3, 2).is_ok());
        let err = config.replication.check_flags(1, 1).unwrap_err().to_string();
        assert!(err.contains("fixed at bootstrap"), "{err}");
    }

    #[test]
    fn turning_replication_on_later_keeps_only_the_owners_in_sync() {
        let mut config = bootstrapped();
        config.apply_epoch(&Command::AddMember(member("n2", 2))).unwrap();
        let ring_owners: Vec<String> = {
            let ring = config.ring().unwrap();
            (0..config.ring.partitions)
                .map(|p| ring.owner_of_partition(p).unwrap().to_string())
                .collect()
        };
        let epoch = config.epoch;
        config
            .apply_epoch(&Command::SetReplication {
                factor: 2,
                min_insync: 1,
            })
            .unwrap();
        assert_eq!(config.epoch, epoch, "no owner changes");
        assert_eq!(owners(&config), ring_owners);
        let table = config.replica_table().unwrap();
        assert!((0..config.ring.partitions).all(|p| table.isr(p).len() == 1));
    }

    #[test]
    fn a_joiner_is_lagging_and_takes_its_partitions_once_in_sync() {
        let mut config = small_cluster(&["n1", "n2"], 3, 2);
        catch_up_all(&mut config);
        let before = owners(&config);
        config.apply_epoch(&Command::AddMember(member("n3", 3))).unwrap();
        config
            .apply_epoch(&Command::SetIncarnation {
                node_id: "n3".into(),
                incarnation: 103,
            })
            .unwrap();
        assert_eq!(owners(&config), before, "nobody moves before n3 is in sync");
        let table = config.replica_table().unwrap();
        assert!((0..64).all(|p| table.partition(p).lagging == vec!["n3".to_string()]));
        catch_up_all(&mut config);
        assert_eq!(owners(&config), {
            let ring = config.ring().unwrap();
            (0..64)
                .map(|p| ring.owner_of_partition(p).unwrap().to_string())
                .collect::<Vec<_>>()
        });
        assert!(config.replication.partitions.is_empty());
    }

    #[test]
    fn isr_changes_are_fenced_by_epoch_owner_and_incarnation() {
        let mut config = small_cluster(&["n1", "n2"], 2, 1);
        let table = config.replica_table().unwrap();
        let p = (0..64)
            .find(|p| table.owner(*p).as_deref() == Some("n1"))
            .unwrap();
        let join = |inc| IsrChange {
            partition: p,
            join: vec![("n2".into(), inc)],
            leave: vec![],
        };
        let epoch = config.epoch;
        let before = config.clone();
        assert_eq!(
            config.apply_epoch(&Command::AlterIsr {
                owner: "n1".into(),
                epoch: epoch - 1,
                changes: vec![join(101)]
            }),
            Err(ConfigError::StaleEpoch {
                proposed: epoch - 1,
                current: epoch
            })
        );
        assert!(matches!(
            config.apply_epoch(&Command::AlterIsr {
                owner: "n2".into(),
                epoch,
                changes: vec![join(101)]
            }),
            Err(ConfigError::NotOwnerOf { .. })
        ));
        assert!(matches!(
            config.apply_epoch(&Command::AlterIsr {
                owner: "n1".into(),
                epoch,
                changes: vec![join(999)]
            }),
            Err(ConfigError::IsrRefused(_))
        ));
        assert_eq!(config, before, "refusals change nothing");
        config
            .apply_epoch(&Command::AlterIsr {
                owner: "n1".into(),
                epoch,
                changes: vec![join(101)],
            })
            .unwrap();
        assert_eq!(config.replica_table().unwrap().isr(p).len(), 2);
    }

    #[test]
    fn a_failover_picks_an_in_sync_replica_and_a_new_incarnation_is_out() {
        let mut config = small_cluster(&["n1", "n2", "n3"], 3, 2);
        catch_up_all(&mut config);
        let epoch = config.epoch;
        config
            .apply_epoch(&Command::RemoveMember { node_id: "n1".into() })
            .unwrap();
        assert_eq!(config.epoch, epoch + 1);
        let table = config.replica_table().unwrap();
        for p in 0..64 {
            let part = table.partition(p);
            let mut isr = part.isr.clone();
            isr.sort();
            assert_eq!(isr, ["n2", "n3"]);
            assert_eq!(part.owner.as_ref(), part.replicas.first());
            assert_eq!(part.unclean_epoch, 0);
        }
        // n2's data directory is wiped: it comes back under the same id with another raft id.
        config.apply_epoch(&Command::AddMember(member("n2", 22))).unwrap();
        let table = config.replica_table().unwrap();
        assert!((0..64).all(|p| table.owner(p).as_deref() == Some("n3")));
        assert!((0..64).all(|p| table.isr(p) == vec!["n3".to_string()]));
        // The same with a new incarnation of n3's journal: nobody in sync is left.
        config
            .apply_epoch(&Command::SetIncarnation {
                node_id: "n3".into(),
                incarnation: 7,
            })
            .unwrap();
        let table = config.replica_table().unwrap();
        assert!((0..64).all(|p| table.partition(p).unclean_epoch == config.epoch));
    }

    #[test]
    fn the_coordinator_records_only_new_incarnations() {
        let config = small_cluster(&["n1", "n2"], 2, 1);
        assert_eq!(config.replication.incarnation_command("n2", 101), None);
        assert_eq!(
            config.replication.incarnation_command("n2", 555),
            Some(Command::SetIncarnation {
                node_id: "n2".into(),
                incarnation: 555
            })
        );
        assert_eq!(config.replication.incarnation_command("n2", 0), None);
        assert_eq!(
            bootstrapped().replication.incarnation_command("n1", 5),
            None,
            "replication off"
        );
    }

    /// Random member changes and catch-ups keep the ISR invariants, and every change of the
    /// owner table comes with a new epoch.
    #[test]
    fn random_member_changes_keep_the_isr_invariants() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};
        let ops = prop::collection::vec((0u8..6, 0u8..5), 1..24);
        let mut runner = TestRunner::new(Config::with_cases(24));
        runner
            .run(&ops, |ops| {
                let mut config = small_cluster(&["n0", "n1", "n2"], 3, 2);
                let mut next_raft = 10;
                for (op, node) in ops {
                    let id = format!("n{node}");
                    let before = (config.epoch, owners(&config));
                    let command = match op {
                        0 => {
                            next_raft += 1;
                            Command::AddMember(member(&id, next_raft))
                        }
                        1 => Command::RemoveMember { node_id: id.clone() },
                        2 => Command::SetLeaving { node_id: id.clone() },
                        3 => Command::SetIncarnation {
                            node_id: id.clone(),
                            incarnation: next_raft + 1000,
                        },
                        4 => Command::SetZone {
                            node_id: id.clone(),
                            zone: format!("z{}", node % 2),
                        },
                        _ => {
                            for m in config.members.keys().cloned().collect::<Vec<_>>() {
                                if !config.replication.incarnations.contains_key(&m) {
                                    let _ = config.apply_epoch(&Command::SetIncarnation {
                                        node_id: m,
                                        incarnation: 7,
                                    });
                                }
                            }
                            catch_up_all(&mut config);
                            continue;
                        }
                    };
                    if config.apply_epoch(&command).is_err() {
                        continue;
                    }
                    let table = config.replica_table().unwrap();
                    for p in 0..config.ring.partitions {
                        let part = table.partition(p);
                        prop_assert!(!part.isr.is_empty(), "p{} has an empty ISR", p);
                        prop_assert!(part.owner.as_ref().is_some_and(|o| part.isr.contains(o)));
                        prop_assert!(part.lagging.iter().all(|n| part.replicas.contains(n)));
                        prop_assert!(part.retiring.iter().all(|n| !part.replicas.contains(n)));
                        prop_assert!(part.isr.iter().all(|n| config.members.contains_key(n)));
                    }
                    if owners(&config) != before.1 {
                        prop_assert!(config.epoch > before.0, "owners changed without a new epoch");
                    }
                }
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn configs_from_before_replication_still_load() {
        let config = small_cluster(&["n1", "n2"], 3, 2);
        let mut json = serde_json::to_value(&config).unwrap();
        json.as_object_mut().unwrap().remove("replication");
        let old: ClusterConfig = serde_json::from_value(json).unwrap();
        assert_eq!(old.replication, ReplicationConfig::default());
        assert_eq!(old.owner_table().unwrap(), old.ring().unwrap());
        let reread: ClusterConfig = serde_json::from_str(&serde_json::to_string(&config).unwrap()).unwrap();
        assert_eq!(reread, config);
    }

    #[test]
    fn ring_follows_members() {
        let mut config = bootstrapped();
        config.apply_epoch(&Command::AddMember(member("n2", 2))).unwrap();
        let ring = config.ring().unwrap();
        let counts = ring.partitions_per_node();
        assert_eq!(counts.len(), 2);
        assert_eq!(
            counts.values().map(|c| *c as u64).sum::<u64>(),
            u64::from(config.ring.partitions)
        );
    }
}
