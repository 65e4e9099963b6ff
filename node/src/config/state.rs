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
//! - before `Bootstrap` is applied the config is empty and accepts nothing else.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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

    /// Applies one command committed at log `index`. On error the config is left unchanged.
    pub fn apply(&mut self, index: u64, command: &Command) -> ApplyResult {
        let mut route_version = None;
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
