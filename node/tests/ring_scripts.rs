//! Goldenscript scenarios for the consistent-hash ring: placement and movement as members join,
//! leave and change weight. Every file in `tests/testscripts/ring/` is one behaviour; regenerate
//! the expected output with `UPDATE_GOLDENFILES=1 cargo test --test ring_scripts` and review it.
//!
//! Commands:
//!
//! - `ring [partitions=P] [vnodes=V]`: start over with an empty ring (defaults: the crate's
//!   default parameters). Also resets the `moves` baseline.
//! - `add ID... [weight=W]`: add members, each with weight W (default 1).
//! - `weight ID=W...`: change the weight of existing members.
//! - `remove ID...`: remove members.
//! - `locate KEY...`: print each key's partition and owner.
//! - `table`: print the partitions each member owns.
//! - `owners`: print the owner of every partition, consecutive partitions grouped.
//! - `moves`: print the partitions whose owner changed since the last `moves` (or `ring`),
//!   counted per (from, to), and make the current ring the new baseline.
//!
//! A member change that the ring rejects fails the command and leaves the state as it was.
//! After every accepted change the runner checks what must hold for any ring: building from
//! the members in reverse order and round-tripping the owner table give the same ring, and with
//! members every partition has an owner.

use std::collections::BTreeMap;
use std::error::Error;
use std::fmt::Write as _;
use std::path::Path;

use goldenscript::{Command, Runner};
use routemq_node::ring::{Ring, RingParams};

struct RingRunner {
    params: RingParams,
    /// Members in the order they were added, so a duplicate reaches `Ring::build`.
    members: Vec<(String, u32)>,
    ring: Ring,
    /// The ring `moves` compares against.
    baseline: Ring,
}

impl RingRunner {
    fn new() -> Result<Self, Box<dyn Error>> {
        let ring = Ring::empty();
        Ok(Self {
            params: *ring.params(),
            members: Vec::new(),
            baseline: ring.clone(),
            ring,
        })
    }

    /// Builds the ring for `members`; on success it becomes the current state.
    fn apply(&mut self, members: Vec<(String, u32)>) -> Result<(), Box<dyn Error>> {
        let ring = Ring::build(&self.params, members.iter().map(|(id, w)| (id, *w)))?;
        check_invariants(&ring, &members)?;
        self.members = members;
        self.ring = ring;
        Ok(())
    }

    fn weight_of(&self, node_id: &str) -> Option<u32> {
        self.members
            .iter()
            .find(|(id, _)| id == node_id)
            .map(|(_, weight)| *weight)
    }
}

fn check_invariants(ring: &Ring, members: &[(String, u32)]) -> Result<(), Box<dyn Error>> {
    let reversed = Ring::build(ring.params(), members.iter().rev().map(|(id, w)| (id, *w)))?;
    if &reversed != ring {
        return Err("member order changed the ring".into());
    }
    let (nodes, owners) = ring.owners_table();
    if Ring::from_table(ring.params(), nodes.to_vec(), owners.to_vec())? != *ring {
        return Err("owner table did not round-trip".into());
    }
    let unowned = (0..ring.params().partitions).any(|p| ring.owner_of_partition(p).is_none());
    if !members.is_empty() && unowned {
        return Err("a partition has no owner".into());
    }
    Ok(())
}

fn owner_name(owner: Option<&str>) -> &str {
    owner.unwrap_or("none")
}

impl Runner for RingRunner {
    fn run(&mut self, command: &Command) -> Result<String, Box<dyn Error>> {
        let mut output = String::new();
        match command.name.as_str() {
            "ring" => {
                let mut args = command.consume_args();
                let defaults = RingParams::default();
                let params = RingParams {
                    partitions: args.lookup_parse("partitions")?.unwrap_or(defaults.partitions),
                    vnodes_per_weight: args.lookup_parse("vnodes")?.unwrap_or(defaults.vnodes_per_weight),
                };
                args.reject_rest()?;
                let ring = Ring::build(&params, Vec::<(String, u32)>::new())?;
                *self = Self {
                    params,
                    members: Vec::new(),
                    baseline: ring.clone(),
                    ring,
                };
            }

            "add" => {
                let mut args = command.consume_args();
                let weight = args.lookup_parse("weight")?.unwrap_or(1);
                let ids = args.rest_pos();
                args.reject_rest()?;
                if ids.is_empty() {
                    return Err("add needs at least one node id".into());
                }
                let mut members = self.members.clone();
                members.extend(ids.iter().map(|arg| (arg.value.clone(), weight)));
                self.apply(members)?;
            }

            "weight" => {
                let mut args = command.consume_args();
                let mut members = self.members.clone();
                for arg in args.rest_key() {
                    let node_id = arg.key.as_deref().unwrap_or_default();
                    let weight = arg.parse()?;
                    let member = members
                        .iter_mut()
                        .find(|(id, _)| id == node_id)
                        .ok_or_else(|| format!("{node_id} is not a member"))?;
                    member.1 = weight;
                }
                args.reject_rest()?;
                self.apply(members)?;
            }

            "remove" => {
                let mut args = command.consume_args();
                let ids = args.rest_pos();
                args.reject_rest()?;
                let mut members = self.members.clone();
                for arg in ids {
                    let before = members.len();
                    members.retain(|(id, _)| *id != arg.value);
                    if members.len() == before {
                        return Err(format!("{} is not a member", arg.value).into());
                    }
                }
                self.apply(members)?;
            }

            "locate" => {
                let mut args = command.consume_args();
                for arg in args.rest_pos() {
                    let location = self.ring.locate(&arg.value);
                    writeln!(
                        output,
                        "{:?} → partition {}, owner {}",
                        arg.value,
                        location.partition,
                        owner_name(location.owner)
                    )?;
                }
                args.reject_rest()?;
            }

            "table" => {
                command.consume_args().reject_rest()?;
                let partitions = self.ring.params().partitions;
                let counts = self.ring.partitions_per_node();
                if counts.is_empty() {
                    writeln!(output, "no members: {partitions} partitions, none owned")?;
                } else {
                    writeln!(output, "partitions owned, of {partitions}:")?;
                }
                let total_weight: u32 = self.members.iter().map(|(_, weight)| weight).sum();
                for (node_id, count) in counts {
                    let weight = self.weight_of(node_id).unwrap_or(0);
                    let ideal = f64::from(partitions) * f64::from(weight) / f64::from(total_weight);
                    writeln!(output, "{node_id}: {count} (weight {weight}, ideal {ideal:.1})")?;
                }
            }

            "owners" => {
                command.consume_args().reject_rest()?;
                let partitions = self.ring.params().partitions;
                let mut start = 0;
                for partition in 1..=partitions {
                    let owner = self.ring.owner_of_partition(start);
                    if partition == partitions || self.ring.owner_of_partition(partition) != owner {
                        let end = partition - 1;
                        let range = if start == end {
                            format!("{start}")
                        } else {
                            format!("{start}-{end}")
                        };
                        writeln!(output, "{range}: {}", owner_name(owner))?;
                        start = partition;
                    }
                }
            }

            "moves" => {
                command.consume_args().reject_rest()?;
                let moves = self.baseline.diff(&self.ring)?;
                let mut counts: BTreeMap<(&str, &str), u32> = BTreeMap::new();
                for m in &moves {
                    let key = (owner_name(m.from.as_deref()), owner_name(m.to.as_deref()));
                    *counts.entry(key).or_default() += 1;
                }
                for ((from, to), count) in counts {
                    writeln!(output, "{from} → {to}: {count}")?;
                }
                let partitions = self.ring.params().partitions;
                writeln!(output, "moved {} of {partitions} partitions", moves.len())?;
                self.baseline = self.ring.clone();
            }

            name => return Err(format!("unknown command {name}").into()),
        }
        Ok(output)
    }
}

/// Runs every script in the directory, each with a fresh runner, and reports all that fail.
#[test]
fn ring_scripts() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testscripts/ring");
    routemq_testkit::golden::run_dir(&dir, || RingRunner::new().unwrap());
}
