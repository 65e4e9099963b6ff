//! The consistent-hash ring: which member owns which partition of the key space.
//!
//! # What it owns
//!
//! A message key (a route's key parameter such as a `device_id`, otherwise the topic) maps to
//! one of `P` fixed partitions, and each partition maps to one ring member. This module
//! computes both mappings and nothing else. It is plain, synchronous code without I/O: the
//! config layer feeds it the ring parameters and the members with their weights at an epoch,
//! and gets back a [`Ring`] whose partition → owner table answers [`Ring::locate`] in O(1)
//! after hashing the key.
//!
//! # The algorithm (part of the wire contract)
//!
//! Clients may compute the ring themselves, so every step below is fixed. Changing any of them
//! changes ownership across the cluster and is a protocol change. `H(b)` is the first 8 bytes
//! of BLAKE3(`b`) read as a little-endian `u64`.
//!
//! 1. **Key → partition**: `H(utf8(key)) mod P`. `P` is a power of two, so this keeps the low
//!    bits of the hash.
//! 2. **Partition positions**: partition `p` sits at `p · 2^64 / P` on the ring `[0, 2^64)`,
//!    so partitions are evenly spaced.
//! 3. **Virtual nodes**: a member with id `n` and weight `w` has `w · V` tokens, where `V` is
//!    [`RingParams::vnodes_per_weight`]. Token `i` (counting from 0) sits at
//!    `H(utf8(n) ‖ 0xFF ‖ le32(i))`: the id's UTF-8 bytes, one `0xFF` byte, then `i` as four
//!    little-endian bytes. `0xFF` never occurs in UTF-8, so the encoding is unambiguous.
//! 4. **Ownership**: tokens are ordered by (position, node id bytes, `i`). Partition `p` belongs
//!    to the member of the first token whose position is at or after the partition's position,
//!    going clockwise; past the last token it wraps around to the first one.
//!
//! # Promises
//!
//! - **Determinism.** The ring is a pure function of (params, members with weights). The order
//!   in which members are listed does not matter: the same input gives the same table in every
//!   process, on every platform. The test `owner_table_digest_is_pinned` in
//!   `tests/ring_properties.rs` pins a digest of one table, so any change to the hashing fails
//!   it.
//! - **Balance.** With the default parameters (16384 partitions, 512 virtual nodes per unit of
//!   weight) the most loaded member holds at most 1.15× the mean number of partitions at 10
//!   members and at most 1.25× at 100 members (measured: 1.04–1.05 and 1.20–1.21 for two
//!   naming schemes; see the figures test in `tests/ring_properties.rs`). Partitions split in
//!   proportion to weight.
//! - **Minimal movement.** A join moves partitions only to the new member, about `P/(N+1)` of
//!   them (measured 0.89–1.06 × `P/(N+1)` for N = 3, 10, 100 at the defaults). A leave moves only the leaver's partitions, to the remaining members. Raising a
//!   member's weight moves partitions only to that member, since its existing tokens stay
//!   where they are and new ones are added; lowering it moves only that member's partitions
//!   away.
//!
//! - **Bad input is an error, never a panic.** [`Ring::build`] rejects invalid parameters,
//!   empty or repeated node ids, weight 0, more than [`MAX_MEMBERS`] members and more than
//!   [`MAX_VIRTUAL_NODES`] virtual nodes in total; [`Ring::validate_members`] runs the same
//!   checks without building, so a config change can be refused before it is committed.
//!
//! # Non-goals
//!
//! - **Liveness.** The ring does not know whether a member is alive. Gossip hints at liveness
//!   and the Raft config decides who is a member at which epoch; the ring only maps a member
//!   list to owners.
//! - **Ownership in time.** Leases, fencing and handoff live elsewhere. The ring says who
//!   *should* own a partition under a given config, not who may process it right now.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Number of partitions used when the config does not say otherwise.
pub const DEFAULT_PARTITIONS: u32 = 16_384;

/// Virtual nodes per unit of weight used when the config does not say otherwise.
pub const DEFAULT_VNODES_PER_WEIGHT: u32 = 512;

/// Largest accepted number of partitions (a power of two).
pub const MAX_PARTITIONS: u32 = 65_536;

/// Largest accepted number of virtual nodes per unit of weight.
pub const MAX_VNODES_PER_WEIGHT: u32 = 4_096;

/// Largest number of members a ring can hold; owners are stored as `u16` indices.
pub const MAX_MEMBERS: usize = 1 << 16;

/// Largest total number of virtual nodes (sum of weight × virtual nodes per weight over all
/// members). It bounds the memory and time [`Ring::build`] may spend on a config it is given:
/// about 4 million tokens, 64 MiB, under a second to build.
pub const MAX_VIRTUAL_NODES: u64 = 1 << 22;

/// The parameters that, with the member list, fully determine a ring.
///
/// They are part of the cluster config; every node and client must use the same values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingParams {
    /// Number of partitions the key space is split into. A power of two from 1 to
    /// [`MAX_PARTITIONS`]. Changing it re-partitions every key.
    pub partitions: u32,
    /// Virtual nodes (ring tokens) a member gets per unit of weight, from 1 to
    /// [`MAX_VNODES_PER_WEIGHT`]. More virtual nodes give a more even split and a slower build.
    pub vnodes_per_weight: u32,
}

impl Default for RingParams {
    fn default() -> Self {
        Self {
            partitions: DEFAULT_PARTITIONS,
            vnodes_per_weight: DEFAULT_VNODES_PER_WEIGHT,
        }
    }
}

impl RingParams {
    /// Checks that the partition count is a power of two within `1..=MAX_PARTITIONS` and that
    /// the virtual nodes per weight are within `1..=MAX_VNODES_PER_WEIGHT`.
    pub fn validate(&self) -> Result<(), RingError> {
        if !self.partitions.is_power_of_two() || self.partitions > MAX_PARTITIONS {
            return Err(RingError::InvalidPartitions {
                partitions: self.partitions,
            });
        }
        if !(1..=MAX_VNODES_PER_WEIGHT).contains(&self.vnodes_per_weight) {
            return Err(RingError::InvalidVnodesPerWeight {
                vnodes_per_weight: self.vnodes_per_weight,
            });
        }
        Ok(())
    }
}

/// Why a ring could not be built or rebuilt from a table.
///
/// Every variant describes bad input; retrying with the same input fails the same way.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// The partition count is not a power of two within `1..=MAX_PARTITIONS`.
    #[error("ring partitions must be a power of two from 1 to {MAX_PARTITIONS}, got {partitions}")]
    InvalidPartitions {
        /// The rejected partition count.
        partitions: u32,
    },
    /// The virtual nodes per weight are outside `1..=MAX_VNODES_PER_WEIGHT`.
    #[error(
        "ring virtual nodes per weight must be from 1 to {MAX_VNODES_PER_WEIGHT}, \
         got {vnodes_per_weight}"
    )]
    InvalidVnodesPerWeight {
        /// The rejected value.
        vnodes_per_weight: u32,
    },
    /// A member has an empty node id.
    #[error("ring member has an empty node id")]
    EmptyNodeId,
    /// A member has weight 0; a member that should own nothing is not a member.
    #[error("ring member {node_id:?} has weight 0; weights start at 1")]
    ZeroWeight {
        /// The member with weight 0.
        node_id: String,
    },
    /// The same node id is listed more than once.
    #[error("node id {node_id:?} is listed more than once")]
    DuplicateNodeId {
        /// The repeated id.
        node_id: String,
    },
    /// More than [`MAX_MEMBERS`] members.
    #[error("the ring holds at most {MAX_MEMBERS} members")]
    TooManyMembers,
    /// The weights ask for more than [`MAX_VIRTUAL_NODES`] virtual nodes in total.
    #[error(
        "the members' weights ask for {virtual_nodes} virtual nodes, \
         more than the limit of {MAX_VIRTUAL_NODES}"
    )]
    TooManyVirtualNodes {
        /// Sum of weight × virtual nodes per weight over all members.
        virtual_nodes: u64,
    },
    /// A table's node ids are not in strictly increasing byte order, the order
    /// [`Ring::owners_table`] produces.
    #[error("owner table node ids must be in increasing order, {node_id:?} is out of place")]
    UnsortedNodeIds {
        /// The first id found out of order.
        node_id: String,
    },
    /// A table's owner list does not have one entry per partition (or none for a ring
    /// without members).
    #[error("owner table has {actual} entries, expected {expected}")]
    OwnerTableLength {
        /// Entries the parameters and node list call for.
        expected: usize,
        /// Entries received.
        actual: usize,
    },
    /// A table names an owner index past the end of its node list.
    #[error("owner table gives partition {partition} to node index {index}, but lists only {nodes} nodes")]
    OwnerIndexOutOfRange {
        /// The partition with the bad entry.
        partition: u32,
        /// The bad index.
        index: u16,
        /// Number of nodes listed.
        nodes: usize,
    },
    /// Two rings with different partition counts were compared; their partitions cover
    /// different key sets.
    #[error("cannot compare rings with {left} and {right} partitions")]
    PartitionCountMismatch {
        /// Partitions of the ring `diff` was called on.
        left: u32,
        /// Partitions of the other ring.
        right: u32,
    },
}

/// Where a key goes: its partition and that partition's owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location<'a> {
    /// The partition the key hashes to.
    pub partition: u32,
    /// The member owning that partition, or `None` if the ring has no members.
    pub owner: Option<&'a str>,
}

/// A partition whose owner differs between two rings, as returned by [`Ring::diff`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMove {
    /// The partition that moves.
    pub partition: u32,
    /// Its owner in the old ring, `None` if the old ring had no members.
    pub from: Option<String>,
    /// Its owner in the new ring, `None` if the new ring has no members.
    pub to: Option<String>,
}

/// Returns the partition a key belongs to: the low bits of the key's hash (see the
/// [module documentation](self)).
///
/// Meant for validated parameters (see [`RingParams::validate`]); with a partition count that
/// is not a power of two the result is still in range but not what other nodes compute, and
/// with 0 partitions it is 0.
pub fn partition_for_key(params: &RingParams, key: &str) -> u32 {
    let hash = hash_u64(key.as_bytes());
    // The remainder is below `partitions`, a u32, so the conversion never fails.
    hash.checked_rem(u64::from(params.partitions))
        .and_then(|partition| u32::try_from(partition).ok())
        .unwrap_or(0)
}

/// A consistent-hash ring at one config: the members and the precomputed partition → owner
/// table.
///
/// The ring is a pure function of its parameters and its members with their weights: build it
/// from the same input in any process and you get the same table. Members are kept sorted by
/// node id, so the table does not depend on the order they were listed in.
///
/// ```
/// use routemq_node::ring::{Ring, RingParams};
///
/// let params = RingParams::default();
/// let ring = Ring::build(&params, [("node-1", 1), ("node-2", 1), ("node-3", 2)])?;
/// let location = ring.locate("device-42");
/// assert_eq!(location.owner, ring.owner_of_partition(location.partition));
///
/// // node-4 joins: the partitions that move all move to node-4.
/// let next = Ring::build(&params, [("node-1", 1), ("node-2", 1), ("node-3", 2), ("node-4", 1)])?;
/// assert!(ring.diff(&next)?.iter().all(|m| m.to.as_deref() == Some("node-4")));
/// # Ok::<(), routemq_node::ring::RingError>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Ring {
    params: RingParams,
    /// `params.partitions - 1`; a key's partition is its hash masked with this.
    partition_mask: u64,
    /// Member node ids, in strictly increasing byte order.
    nodes: Vec<String>,
    /// For each partition, the index into `nodes` of its owner. Empty when `nodes` is empty,
    /// otherwise exactly `params.partitions` entries.
    owners: Vec<u16>,
}

impl fmt::Debug for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The owner table has thousands of entries; the per-node counts summarise it.
        f.debug_struct("Ring")
            .field("params", &self.params)
            .field("partitions_per_node", &self.partitions_per_node())
            .finish()
    }
}

/// One virtual node: (position, index of its member in the sorted node list, token number).
/// Sorting these tuples gives the ring order, ties broken by node id and then token number.
type Token = (u64, u16, u32);

impl Ring {
    /// Builds the ring for `members`, given as `(node id, weight)` pairs in any order.
    ///
    /// Fails on invalid parameters, an empty node id, a weight of 0, a node id listed twice,
    /// more than [`MAX_MEMBERS`] members or more than [`MAX_VIRTUAL_NODES`] virtual nodes (see
    /// [`Ring::validate_members`]). An empty member list gives a ring in which no partition has
    /// an owner.
    pub fn build<I, S>(params: &RingParams, members: I) -> Result<Self, RingError>
    where
        I: IntoIterator<Item = (S, u32)>,
        S: AsRef<str>,
    {
        let (members, virtual_nodes) = checked_members(params, members)?;

        // `checked_members` bounds every token count by MAX_VIRTUAL_NODES (2^22) and every
        // member index by MAX_MEMBERS (2^16), so the products and narrowing casts are lossless.
        let mut tokens: Vec<Token> = Vec::with_capacity(virtual_nodes as usize);
        for (index, (node_id, weight)) in members.iter().enumerate() {
            let count = weight * params.vnodes_per_weight;
            tokens.extend((0..count).map(|i| (token_position(node_id, i), index as u16, i)));
        }
        tokens.sort_unstable();

        let owners = assign_partitions(&tokens, params.partitions);
        let nodes = members.into_iter().map(|(node_id, _)| node_id).collect();
        Ok(Self::from_parts(*params, nodes, owners))
    }

    /// Checks that [`Ring::build`] would accept `params` and `members`, without hashing
    /// anything. Meant for validating a config change before it is committed: a config whose
    /// ring cannot be built must never become the authority.
    pub fn validate_members<I, S>(params: &RingParams, members: I) -> Result<(), RingError>
    where
        I: IntoIterator<Item = (S, u32)>,
        S: AsRef<str>,
    {
        checked_members(params, members).map(|_| ())
    }

    /// A ring with the default parameters and no members: keys still map to partitions, but
    /// no partition has an owner. What a node holds before it knows the cluster's config. For
    /// an empty ring with other parameters, build one from an empty member list.
    pub fn empty() -> Self {
        // The default parameters are valid (checked by a unit test), so the mask is right.
        Self::from_parts(RingParams::default(), Vec::new(), Vec::new())
    }

    /// Rebuilds a ring from a table produced by [`Ring::owners_table`], e.g. one received over
    /// the network.
    ///
    /// Checks the table's structure: valid parameters, node ids non-empty and in strictly
    /// increasing order, one owner index per partition (none if there are no nodes), every
    /// index naming a listed node. It cannot check that the table is what [`Ring::build`] gives
    /// for some weights, since the weights are not part of the table.
    pub fn from_table(params: &RingParams, nodes: Vec<String>, owners: Vec<u16>) -> Result<Self, RingError> {
        params.validate()?;
        if nodes.len() > MAX_MEMBERS {
            return Err(RingError::TooManyMembers);
        }
        if nodes.iter().any(String::is_empty) {
            return Err(RingError::EmptyNodeId);
        }
        for pair in nodes.windows(2) {
            if pair[0] == pair[1] {
                return Err(RingError::DuplicateNodeId {
                    node_id: pair[1].clone(),
                });
            }
            if pair[0] > pair[1] {
                return Err(RingError::UnsortedNodeIds {
                    node_id: pair[1].clone(),
                });
            }
        }
        let expected = if nodes.is_empty() {
            0
        } else {
            params.partitions as usize
        };
        if owners.len() != expected {
            return Err(RingError::OwnerTableLength {
                expected,
                actual: owners.len(),
            });
        }
        if let Some((partition, &index)) = owners
            .iter()
            .enumerate()
            .find(|(_, &index)| usize::from(index) >= nodes.len())
        {
            return Err(RingError::OwnerIndexOutOfRange {
                // `partition` < `params.partitions`, a u32.
                partition: u32::try_from(partition).unwrap_or(u32::MAX),
                index,
                nodes: nodes.len(),
            });
        }
        Ok(Self::from_parts(*params, nodes, owners))
    }

    fn from_parts(params: RingParams, nodes: Vec<String>, owners: Vec<u16>) -> Self {
        let partition_mask = u64::from(params.partitions) - 1;
        Self {
            params,
            partition_mask,
            nodes,
            owners,
        }
    }

    /// The parameters the ring was built with.
    pub fn params(&self) -> &RingParams {
        &self.params
    }

    /// The members' node ids, in increasing byte order.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// Whether the ring has no members (and so no partition has an owner).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The partition `key` belongs to and that partition's owner.
    pub fn locate(&self, key: &str) -> Location<'_> {
        let masked = hash_u64(key.as_bytes()) & self.partition_mask;
        // The mask is below 2^16, so the partition always fits.
        let partition = u32::try_from(masked).unwrap_or(0);
        Location {
            partition,
            owner: self.owner_of_partition(partition),
        }
    }

    /// The owner of `partition`; `None` if the ring has no members or the partition is out of
    /// range.
    pub fn owner_of_partition(&self, partition: u32) -> Option<&str> {
        let index = *self.owners.get(partition as usize)?;
        self.nodes.get(usize::from(index)).map(String::as_str)
    }

    /// How many partitions each member owns, members owning none included.
    pub fn partitions_per_node(&self) -> BTreeMap<&str, u32> {
        let mut counts = vec![0u32; self.nodes.len()];
        for &index in &self.owners {
            if let Some(count) = counts.get_mut(usize::from(index)) {
                *count += 1;
            }
        }
        self.nodes.iter().map(String::as_str).zip(counts).collect()
    }

    /// The ring as a table for sending over the network: the node ids in increasing order and,
    /// for each partition, the index of its owner in that list (no entries if there are no
    /// nodes). [`Ring::from_table`] rebuilds the ring from it.
    pub fn owners_table(&self) -> (&[String], &[u16]) {
        (&self.nodes, &self.owners)
    }

    /// The partitions whose owner differs between `self` (old) and `other` (new), in partition
    /// order.
    ///
    /// Fails if the rings have different partition counts: their partitions are different key
    /// sets, so every key would have to be treated as moved.
    pub fn diff(&self, other: &Ring) -> Result<Vec<PartitionMove>, RingError> {
        if self.params.partitions != other.params.partitions {
            return Err(RingError::PartitionCountMismatch {
                left: self.params.partitions,
                right: other.params.partitions,
            });
        }
        let moves = (0..self.params.partitions)
            .filter_map(|partition| {
                let from = self.owner_of_partition(partition);
                let to = other.owner_of_partition(partition);
                (from != to).then(|| PartitionMove {
                    partition,
                    from: from.map(str::to_owned),
                    to: to.map(str::to_owned),
                })
            })
            .collect();
        Ok(moves)
    }
}

/// The ring's virtual nodes in ring order, for walking clockwise past a partition's owner.
///
/// [`Ring`] keeps only the partition → owner table; replica placement
/// ([`crate::replication::placement`]) needs the members that follow the owner on the ring.
/// The token order is the one [`Ring`] uses, so the first member of [`TokenRing::walk`] is
/// always [`Ring::owner_of_partition`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRing {
    params: RingParams,
    /// Member node ids, in strictly increasing byte order.
    nodes: Vec<String>,
    /// Every token, sorted.
    tokens: Vec<Token>,
}

impl TokenRing {
    /// Builds the token ring for `members` (`(node id, weight)`, any order), with the same
    /// checks as [`Ring::build`].
    pub fn build<I, S>(params: &RingParams, members: I) -> Result<Self, RingError>
    where
        I: IntoIterator<Item = (S, u32)>,
        S: AsRef<str>,
    {
        let (members, virtual_nodes) = checked_members(params, members)?;
        // Bounded as in `Ring::build`.
        let mut tokens: Vec<Token> = Vec::with_capacity(virtual_nodes as usize);
        for (index, (node_id, weight)) in members.iter().enumerate() {
            let count = weight * params.vnodes_per_weight;
            tokens.extend((0..count).map(|i| (token_position(node_id, i), index as u16, i)));
        }
        tokens.sort_unstable();
        Ok(Self {
            params: *params,
            nodes: members.into_iter().map(|(node_id, _)| node_id).collect(),
            tokens,
        })
    }

    /// The parameters the ring was built with.
    pub fn params(&self) -> &RingParams {
        &self.params
    }

    /// The members' node ids, in increasing byte order; [`TokenRing::walk`] yields indexes
    /// into this list.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// The distinct members met walking clockwise from `partition`'s position, each once, as
    /// indexes into [`TokenRing::nodes`]: first the partition's owner, then the others in the
    /// order their first token follows. Empty for an empty ring or a partition out of range.
    pub fn walk(&self, partition: u32) -> impl Iterator<Item = u16> + '_ {
        let in_range = partition < self.params.partitions;
        let start = if in_range {
            let position = partition_position(partition, self.params.partitions);
            self.tokens.partition_point(|&(token, _, _)| token < position)
        } else {
            0
        };
        let len = if in_range { self.tokens.len() } else { 0 };
        let mut seen = vec![false; self.nodes.len()];
        let mut left = self.nodes.len();
        let mut step = 0;
        std::iter::from_fn(move || {
            while left > 0 && step < len {
                let index = self.tokens.get((start + step) % len)?.1;
                step += 1;
                if let Some(s) = seen.get_mut(usize::from(index)).filter(|s| !**s) {
                    *s = true;
                    left -= 1;
                    return Some(index);
                }
            }
            None
        })
    }
}

/// Validates `params` and `members` as [`Ring::build`] documents; returns the members sorted
/// by node id and their total number of virtual nodes.
fn checked_members<I, S>(params: &RingParams, members: I) -> Result<(Vec<(String, u32)>, u64), RingError>
where
    I: IntoIterator<Item = (S, u32)>,
    S: AsRef<str>,
{
    params.validate()?;
    let mut sorted: Vec<(String, u32)> = Vec::new();
    for (node_id, weight) in members {
        let node_id = node_id.as_ref();
        if node_id.is_empty() {
            return Err(RingError::EmptyNodeId);
        }
        if weight == 0 {
            return Err(RingError::ZeroWeight {
                node_id: node_id.to_owned(),
            });
        }
        if sorted.len() == MAX_MEMBERS {
            return Err(RingError::TooManyMembers);
        }
        sorted.push((node_id.to_owned(), weight));
    }
    sorted.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    if let Some(pair) = sorted.windows(2).find(|pair| pair[0].0 == pair[1].0) {
        return Err(RingError::DuplicateNodeId {
            node_id: pair[0].0.clone(),
        });
    }

    // At most 2^16 members × 2^32 weight × 2^12 virtual nodes = 2^60: the sum cannot overflow.
    let vnodes_per_weight = u64::from(params.vnodes_per_weight);
    let virtual_nodes: u64 = sorted
        .iter()
        .map(|(_, weight)| u64::from(*weight) * vnodes_per_weight)
        .sum();
    if virtual_nodes > MAX_VIRTUAL_NODES {
        return Err(RingError::TooManyVirtualNodes { virtual_nodes });
    }
    Ok((sorted, virtual_nodes))
}

/// `H(b)`: the first 8 bytes of BLAKE3(`bytes`) as a little-endian u64.
fn hash_u64(bytes: &[u8]) -> u64 {
    first_u64(&blake3::hash(bytes))
}

fn first_u64(hash: &blake3::Hash) -> u64 {
    let [b0, b1, b2, b3, b4, b5, b6, b7, ..] = *hash.as_bytes();
    u64::from_le_bytes([b0, b1, b2, b3, b4, b5, b6, b7])
}

/// Position of token `index` of member `node_id`: `H(utf8(node_id) ‖ 0xFF ‖ le32(index))`.
fn token_position(node_id: &str, index: u32) -> u64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(node_id.as_bytes());
    hasher.update(&[0xff]);
    hasher.update(&index.to_le_bytes());
    first_u64(&hasher.finalize())
}

/// Position of `partition` on the ring: `partition · 2^64 / partitions`, evenly spaced.
fn partition_position(partition: u32, partitions: u32) -> u64 {
    let position = (u128::from(partition) << 64) / u128::from(partitions.max(1));
    // Below 2^64 whenever partition < partitions.
    u64::try_from(position).unwrap_or(u64::MAX)
}

/// For each partition, the member index of the first token at or after its position, wrapping
/// around to the first token. `tokens` must be sorted; no tokens gives an empty table.
fn assign_partitions(tokens: &[Token], partitions: u32) -> Vec<u16> {
    let Some(&(_, first_owner, _)) = tokens.first() else {
        return Vec::new();
    };
    let mut owners = Vec::with_capacity(partitions as usize);
    // Partition positions increase with the partition number, so one sweep over the tokens
    // finds every successor.
    let mut next = 0;
    for partition in 0..partitions {
        let position = partition_position(partition, partitions);
        while tokens.get(next).is_some_and(|&(token, _, _)| token < position) {
            next += 1;
        }
        owners.push(tokens.get(next).map_or(first_owner, |&(_, owner, _)| owner));
    }
    owners
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(partitions: u32, vnodes_per_weight: u32) -> RingParams {
        RingParams {
            partitions,
            vnodes_per_weight,
        }
    }

    fn members(count: usize) -> Vec<(String, u32)> {
        (0..count).map(|i| (format!("node-{i}"), 1)).collect()
    }

    /// The algorithm as the module docs state it, written as directly as possible: list every
    /// token, and for each partition scan for the smallest (position, node id, i) at or after
    /// the partition's position, else the smallest overall.
    fn reference_owners(params: &RingParams, members: &[(&str, u32)]) -> Vec<Option<String>> {
        let mut tokens: Vec<(u64, &str, u32)> = Vec::new();
        for &(node_id, weight) in members {
            for i in 0..weight * params.vnodes_per_weight {
                tokens.push((token_position(node_id, i), node_id, i));
            }
        }
        (0..params.partitions)
            .map(|p| {
                let position = (u128::from(p) * (1u128 << 64) / u128::from(params.partitions)) as u64;
                let after = tokens.iter().filter(|t| t.0 >= position).min();
                after.or_else(|| tokens.iter().min()).map(|t| t.1.to_owned())
            })
            .collect()
    }

    fn owners(ring: &Ring) -> Vec<Option<String>> {
        (0..ring.params().partitions)
            .map(|p| ring.owner_of_partition(p).map(str::to_owned))
            .collect()
    }

    #[test]
    fn default_params_are_valid() {
        let params = RingParams::default();
        assert_eq!(
            params,
            RingParams {
                partitions: 16_384,
                vnodes_per_weight: 512
            }
        );
        assert_eq!(params.validate(), Ok(()));
    }

    #[test]
    fn matches_the_reference_algorithm() {
        let cases: [(RingParams, Vec<(&str, u32)>); 4] = [
            (params(64, 4), vec![("a", 1), ("b", 1), ("c", 1)]),
            (
                params(256, 8),
                vec![("x", 2), ("y", 1), ("z", 3), ("10.0.0.1:7001", 1)],
            ),
            (params(1, 3), vec![("only", 1), ("other", 1)]),
            (params(1024, 1), vec![("solo", 1)]),
        ];
        for (params, members) in cases {
            let ring = Ring::build(&params, members.iter().copied()).unwrap();
            assert_eq!(owners(&ring), reference_owners(&params, &members), "{members:?}");
        }
    }

    #[test]
    fn build_is_deterministic_and_order_independent() {
        let params = params(1024, 16);
        let forward = members(7);
        let mut backward = forward.clone();
        backward.reverse();
        let first = Ring::build(&params, forward.clone()).unwrap();
        let again = Ring::build(&params, forward).unwrap();
        let reversed = Ring::build(&params, backward).unwrap();
        assert_eq!(first, again);
        assert_eq!(first, reversed);
        assert_eq!(first.owners_table(), reversed.owners_table());
    }

    #[test]
    fn partitions_past_the_last_token_wrap_to_the_first_token() {
        // Two tokens and 65536 partitions: the partitions after the larger token wrap.
        let params = params(65_536, 1);
        let ring = Ring::build(&params, [("a", 1), ("b", 1)]).unwrap();
        let (low, high) = {
            let a = (token_position("a", 0), "a");
            let b = (token_position("b", 0), "b");
            (a.min(b), a.max(b))
        };
        let mut wrapped = 0;
        for p in 0..params.partitions {
            let position = partition_position(p, params.partitions);
            let expected = if position <= low.0 || position > high.0 {
                low.1
            } else {
                high.1
            };
            assert_eq!(ring.owner_of_partition(p), Some(expected), "partition {p}");
            if position > high.0 {
                wrapped += 1;
            }
        }
        assert!(
            wrapped > 0,
            "no partition lies past the last token; pick other ids"
        );
    }

    #[test]
    fn partition_positions_are_evenly_spaced() {
        assert_eq!(partition_position(0, 1), 0);
        assert_eq!(partition_position(1, 2), 1 << 63);
        assert_eq!(partition_position(3, 4), 3 << 62);
        assert_eq!(partition_position(65_535, 65_536), 65_535 << 48);
    }

    #[test]
    fn empty_ring_owns_nothing() {
        let ring = Ring::build(&params(16, 4), Vec::<(String, u32)>::new()).unwrap();
        assert!(ring.is_empty());
        assert_eq!(ring.owner_of_partition(0), None);
        let location = ring.locate("sensors/1/data");
        assert!(location.partition < 16);
        assert_eq!(location.owner, None);
        assert!(ring.partitions_per_node().is_empty());
        assert_eq!(ring.owners_table(), (&[][..], &[][..]));

        let default_empty = Ring::empty();
        assert_eq!(default_empty.params(), &RingParams::default());
        assert!(default_empty.locate("k").partition < DEFAULT_PARTITIONS);
        assert_eq!(default_empty.locate("k").owner, None);
    }

    #[test]
    fn every_partition_has_an_owner_once_there_are_members() {
        let ring = Ring::build(&params(512, 8), members(3)).unwrap();
        assert!((0..512).all(|p| ring.owner_of_partition(p).is_some()));
        assert_eq!(ring.owner_of_partition(512), None);
        assert_eq!(ring.partitions_per_node().values().sum::<u32>(), 512);
    }

    #[test]
    fn locate_agrees_with_partition_for_key_and_the_table() {
        let params = params(256, 8);
        let ring = Ring::build(&params, members(4)).unwrap();
        for key in ["", "a", "device-42", "sensors/abc/data", "ключ"] {
            let location = ring.locate(key);
            assert_eq!(location.partition, partition_for_key(&params, key));
            assert_eq!(location.owner, ring.owner_of_partition(location.partition));
        }
    }

    #[test]
    fn partition_for_key_does_not_panic_on_invalid_params() {
        assert_eq!(partition_for_key(&params(0, 1), "key"), 0);
        assert!(partition_for_key(&params(100, 1), "key") < 100);
    }

    #[test]
    fn invalid_params_are_rejected() {
        for partitions in [0, 3, 100, 131_072, u32::MAX] {
            assert_eq!(
                Ring::build(&params(partitions, 8), [("a", 1)]),
                Err(RingError::InvalidPartitions { partitions })
            );
        }
        for vnodes_per_weight in [0, 4_097] {
            assert_eq!(
                params(16, vnodes_per_weight).validate(),
                Err(RingError::InvalidVnodesPerWeight { vnodes_per_weight })
            );
        }
        assert_eq!(params(1, 1).validate(), Ok(()));
        assert_eq!(params(65_536, 4_096).validate(), Ok(()));
    }

    #[test]
    fn bad_members_are_rejected() {
        let params = params(16, 4);
        assert_eq!(
            Ring::build(&params, [("a", 1), ("", 1)]),
            Err(RingError::EmptyNodeId)
        );
        assert_eq!(
            Ring::build(&params, [("a", 1), ("b", 0)]),
            Err(RingError::ZeroWeight { node_id: "b".into() })
        );
        assert_eq!(
            Ring::build(&params, [("b", 1), ("a", 1), ("b", 2)]),
            Err(RingError::DuplicateNodeId { node_id: "b".into() })
        );
        assert_eq!(
            Ring::build(&params, [("a", u32::MAX)]),
            Err(RingError::TooManyVirtualNodes {
                virtual_nodes: u64::from(u32::MAX) * 4
            })
        );
        let many = (0..=MAX_MEMBERS).map(|i| (i.to_string(), 1));
        assert_eq!(Ring::build(&params, many), Err(RingError::TooManyMembers));
    }

    #[test]
    fn validate_members_agrees_with_build() {
        let params = params(16, 4);
        assert_eq!(Ring::validate_members(&params, [("a", 1), ("b", 2)]), Ok(()));
        let too_heavy = [("a", 1 << 20), ("b", 1)];
        assert_eq!(
            Ring::validate_members(&params, too_heavy),
            Ring::build(&params, too_heavy).map(|_| ())
        );
        assert!(Ring::validate_members(&params, too_heavy).is_err());
        assert_eq!(
            Ring::validate_members(&params, [("a", 1), ("a", 1)]),
            Err(RingError::DuplicateNodeId { node_id: "a".into() })
        );
    }

    #[test]
    fn from_table_round_trips() {
        let params = params(128, 8);
        let ring = Ring::build(&params, [("n1", 1), ("n2", 2), ("n3", 1)]).unwrap();
        let (nodes, owners) = ring.owners_table();
        let rebuilt = Ring::from_table(&params, nodes.to_vec(), owners.to_vec()).unwrap();
        assert_eq!(rebuilt, ring);

        let empty = Ring::build(&params, Vec::<(String, u32)>::new()).unwrap();
        let rebuilt = Ring::from_table(&params, Vec::new(), Vec::new()).unwrap();
        assert_eq!(rebuilt, empty);

        let default_empty = Ring::empty();
        let (nodes, owners) = default_empty.owners_table();
        let rebuilt = Ring::from_table(&RingParams::default(), nodes.to_vec(), owners.to_vec());
        assert_eq!(rebuilt.unwrap(), default_empty);
    }

    #[test]
    fn from_table_rejects_malformed_tables() {
        let params = params(4, 1);
        let table = |nodes: &[&str], owners: &[u16]| {
            Ring::from_table(
                &params,
                nodes.iter().map(|n| n.to_string()).collect(),
                owners.to_vec(),
            )
        };
        assert!(table(&["a", "b"], &[0, 1, 1, 0]).is_ok());
        assert_eq!(
            table(&["a", "b"], &[0, 1, 1]),
            Err(RingError::OwnerTableLength {
                expected: 4,
                actual: 3
            })
        );
        assert_eq!(
            table(&[], &[0]),
            Err(RingError::OwnerTableLength {
                expected: 0,
                actual: 1
            })
        );
        assert_eq!(
            table(&["a", "b"], &[0, 1, 2, 0]),
            Err(RingError::OwnerIndexOutOfRange {
                partition: 2,
                index: 2,
                nodes: 2
            })
        );
        assert_eq!(
            table(&["b", "a"], &[0, 1, 1, 0]),
            Err(RingError::UnsortedNodeIds { node_id: "a".into() })
        );
        assert_eq!(
            table(&["a", "a"], &[0, 1, 1, 0]),
            Err(RingError::DuplicateNodeId { node_id: "a".into() })
        );
        assert_eq!(table(&["", "a"], &[0, 1, 1, 0]), Err(RingError::EmptyNodeId));
        assert_eq!(
            Ring::from_table(
                &RingParams {
                    partitions: 6,
                    vnodes_per_weight: 1
                },
                vec![],
                vec![]
            ),
            Err(RingError::InvalidPartitions { partitions: 6 })
        );
    }

    #[test]
    fn weight_two_gets_about_twice_the_partitions() {
        let ring = Ring::build(
            &RingParams::default(),
            [("light-1", 1), ("heavy", 2), ("light-2", 1)],
        )
        .unwrap();
        let counts = ring.partitions_per_node();
        let light = f64::from(counts["light-1"] + counts["light-2"]) / 2.0;
        let ratio = f64::from(counts["heavy"]) / light;
        assert!(
            (1.8..=2.2).contains(&ratio),
            "heavy/light = {ratio:.3}, counts {counts:?}"
        );
    }

    #[test]
    fn raising_a_weight_keeps_existing_tokens() {
        let params = params(1024, 16);
        let before = Ring::build(&params, [("a", 1), ("b", 1), ("c", 1)]).unwrap();
        let after = Ring::build(&params, [("a", 1), ("b", 3), ("c", 1)]).unwrap();
        let moves = before.diff(&after).unwrap();
        assert!(!moves.is_empty());
        assert!(moves.iter().all(|m| m.to.as_deref() == Some("b")), "{moves:?}");
    }

    #[test]
    fn diff_lists_changed_partitions_and_rejects_other_partition_counts() {
        let params = params(64, 4);
        let empty = Ring::build(&params, Vec::<(String, u32)>::new()).unwrap();
        let one = Ring::build(&params, [("a", 1)]).unwrap();
        assert_eq!(one.diff(&one).unwrap(), Vec::new());
        let moves = empty.diff(&one).unwrap();
        assert_eq!(moves.len(), 64);
        assert_eq!(
            moves[5],
            PartitionMove {
                partition: 5,
                from: None,
                to: Some("a".into())
            }
        );
        let bigger_params = RingParams {
            partitions: 128,
            ..params
        };
        let bigger = Ring::build(&bigger_params, [("a", 1)]).unwrap();
        assert_eq!(
            one.diff(&bigger),
            Err(RingError::PartitionCountMismatch { left: 64, right: 128 })
        );
    }

    #[test]
    fn token_walk_starts_at_the_owner_and_lists_every_member_once() {
        let params = params(256, 8);
        let members = [("a", 1), ("b", 2), ("c", 1), ("d", 1)];
        let ring = Ring::build(&params, members).unwrap();
        let tokens = TokenRing::build(&params, members).unwrap();
        assert_eq!(tokens.nodes(), ring.nodes());
        for p in 0..params.partitions {
            let walk: Vec<&str> = tokens
                .walk(p)
                .map(|i| tokens.nodes()[usize::from(i)].as_str())
                .collect();
            assert_eq!(walk.first().copied(), ring.owner_of_partition(p), "partition {p}");
            let mut sorted = walk.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, ["a", "b", "c", "d"], "partition {p}");
        }
        assert_eq!(tokens.walk(256).count(), 0);
        let empty = TokenRing::build(&params, Vec::<(String, u32)>::new()).unwrap();
        assert_eq!(empty.walk(0).count(), 0);
    }

    #[test]
    fn debug_output_summarises_the_table() {
        let ring = Ring::build(&params(8, 1), [("a", 1)]).unwrap();
        let debug = format!("{ring:?}");
        assert!(debug.contains("partitions_per_node: {\"a\": 8}"), "{debug}");
    }
}
