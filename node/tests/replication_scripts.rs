//! Goldenscript scenarios for replicated partitions: the real config state machine
//! ([`ClusterConfig::apply`] with its in-sync sets), every node's [`FollowerLog`] and every
//! owner's [`CommitTracker`], driven by simulated message delivery and a simulated clock.
//! Every file in `tests/testscripts/replication/` is one behaviour; regenerate the expected
//! output with `UPDATE_GOLDENFILES=1 cargo test --test replication_scripts` and review it.
//!
//! The simulation keeps each node's log per partition (messages `m1`, `m2`... with the epoch
//! they were written at) and does what the deciding code says: it writes, truncates, sends
//! acknowledgements and proposes ISR changes; it decides nothing itself.
//!
//! Node names may be given by role: `@owner`, `@f1`, `@f2`... (the owner and followers of the
//! partition `p=` names, default 0, in placement order) and `@preferred` (its ring owner).
//!
//! Config commands (applied through `ClusterConfig::apply`; every live node applies the result
//! at once and prints the owner changes):
//! - `cluster ID... [r=R] [min=M] [partitions=P] [zones=Z,...] [lag=D]`: bootstrap, turn
//!   replication on, add the members (with zones, and incarnations), let every owner bring its
//!   empty replicas into the ISR. Defaults: R 3, min-insync 2, 4 partitions, lag bound 1000ms.
//! - `fail ID`: the coordinator fails the member over (`RemoveMember`).
//! - `restart ID [wipe]`: the node runs again; with `wipe`, its data directory is new (a new
//!   raft id and incarnation, no logs). It joins again (`AddMember`) if it was removed or
//!   wiped, and reports its incarnation (`SetIncarnation`).
//! - `zone ID=Z...`: set members' zones.
//!
//! Node commands:
//! - `write [p=P] [n=N] [on=ID]`: the owner (or `on`, e.g. a deposed owner that does not know
//!   it) takes N messages: `CommitTracker::admit`, then appends at its applied epoch and syncs.
//! - `replicate [p=P] [to=ID,...] [n=K] [nosync] [from=ID]`: the owner (or `from`) serves each
//!   follower: answers its end-offset question (truncation), sends up to K entries from the
//!   follower's end, and (unless `nosync`) the follower syncs and acknowledges.
//! - `tick at=T`: every live owner's tracker decides at time T; its ISR requests go to the
//!   config as one `AlterIsr` per owner.
//! - `kill ID` / `resume ID`: the node stops (applies nothing, answers nothing) / runs again
//!   still at the config it applied last (until the next change, or `observe ID`).
//! - `observe ID`: the node applies the current config.
//! - `status [p=P]`, `log ID... [p=P]`, `lag [p=P] at=T`, `read [p=P]` (the owner's entries
//!   below its commit point), `placement` (every partition's replicas and zones).
//!
//! After every command the runner checks G4: every acknowledged message is at its offset in
//! the log of every member of the partition's in-sync set and of its owner, and no offset was
//! acknowledged with two different messages.

use routemq_testkit::golden::duration as parse_duration;
use std::collections::{BTreeMap, BTreeSet};
use std::error::Error;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use goldenscript::{Command, Runner};
use routemq_node::config::state::{ClusterConfig, Command as ConfigCommand, Member, MemberState};
use routemq_node::replication::commit::{CommitTracker, TrackerView};
use routemq_node::replication::log::{AppendRefusal, EpochCache, FollowState, FollowerAction, FollowerLog};
use routemq_node::ring::RingParams;

type Res<T> = Result<T, Box<dyn Error>>;

/// One replica of one partition on one node.
struct Replica {
    /// (epoch, message), at offsets 0, 1, ...
    entries: Vec<(u64, String)>,
    follower: FollowerLog,
    tracker: Option<CommitTracker>,
    /// The commit point the owner last told this replica (carried with appends).
    known_commit: u64,
}

impl Replica {
    fn restored(entries: Vec<(u64, String)>) -> Self {
        let cache = cache_of(&entries);
        Self {
            follower: FollowerLog::new(entries.len() as u64, cache),
            entries,
            tracker: None,
            known_commit: 0,
        }
    }
}

fn cache_of(entries: &[(u64, String)]) -> EpochCache {
    let mut cache = EpochCache::default();
    for (offset, (epoch, _)) in entries.iter().enumerate() {
        cache.record(*epoch, offset as u64);
    }
    cache
}

struct Node {
    alive: bool,
    raft_id: u64,
    incarnation: u64,
    applied_epoch: u64,
    parts: BTreeMap<u32, Replica>,
}

struct Sim {
    config: ClusterConfig,
    nodes: BTreeMap<String, Node>,
    base: Instant,
    now: Duration,
    lag_bound: Duration,
    next_message: u64,
    next_id: u64,
    /// Acknowledged (offset → message) per partition.
    acked: BTreeMap<u32, BTreeMap<u64, String>>,
}

fn member(id: &str, raft_id: u64) -> Member {
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

fn names(v: &[String]) -> String {
    format!("[{}]", v.join(" "))
}

impl Sim {
    fn partitions(&self) -> u32 {
        self.config.ring.partitions
    }

    fn propose(&mut self, command: ConfigCommand, out: &mut String) -> Res<bool> {
        let before = self.owners();
        match self.config.apply(0, &command) {
            Ok(applied) => {
                let after = self.owners();
                let moves: Vec<String> = (0..self.partitions())
                    .filter(|p| before.get(p) != after.get(p))
                    .map(|p| {
                        format!(
                            "p{p} {} → {}",
                            before.get(&p).map_or("-", String::as_str),
                            after.get(&p).map_or("-", String::as_str)
                        )
                    })
                    .collect();
                if moves.is_empty() {
                    writeln!(out, "config: epoch {}, no owner changes", applied.epoch)?;
                } else {
                    writeln!(out, "config: epoch {}, {}", applied.epoch, moves.join(", "))?;
                }
                self.observe_all(out)?;
                Ok(true)
            }
            Err(e) => {
                writeln!(out, "refused: {e}")?;
                Ok(false)
            }
        }
    }

    fn owners(&self) -> BTreeMap<u32, String> {
        let Ok(table) = self.config.replica_table() else {
            return BTreeMap::new();
        };
        (0..self.partitions())
            .filter_map(|p| table.owner(p).map(|o| (p, o)))
            .collect()
    }

    fn observe_all(&mut self, out: &mut String) -> Res<()> {
        let ids: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.alive)
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            self.observe(&id, out)?;
        }
        Ok(())
    }

    /// Node `id` applies the current config.
    fn observe(&mut self, id: &str, out: &mut String) -> Res<()> {
        let table = self.config.replica_table()?;
        let epoch = self.config.epoch;
        let min_insync = self.config.replication.min_insync as usize;
        let incarnations = self.config.replication.incarnations.clone();
        let lag_bound = self.lag_bound;
        let node = self.nodes.get_mut(id).ok_or("no such node")?;
        node.applied_epoch = epoch;
        let member = self
            .config
            .members
            .get(id)
            .is_some_and(|m| m.raft_id == node.raft_id);
        for p in 0..self.config.ring.partitions {
            let part = table.partition(p);
            let replica = node
                .parts
                .entry(p)
                .or_insert_with(|| Replica::restored(Vec::new()));
            let owner = part.owner.clone().unwrap_or_default();
            if member && owner == id {
                let view = TrackerView {
                    epoch,
                    isr: part.isr.clone(),
                    followers: part
                        .followers()
                        .into_iter()
                        .map(|f| {
                            let inc = incarnations.get(&f).copied().unwrap_or(0);
                            (f, inc)
                        })
                        .collect(),
                    min_insync,
                };
                match replica.tracker.as_mut() {
                    Some(tracker) => tracker.configure(view),
                    None => {
                        let end = replica.entries.len() as u64;
                        writeln!(
                            out,
                            "{id} owns p{p} at epoch {epoch}: log end {end}, commit {}",
                            replica.known_commit
                        )?;
                        replica.tracker = Some(CommitTracker::new(
                            p,
                            id,
                            view,
                            end,
                            replica.known_commit,
                            lag_bound,
                        ));
                    }
                }
            } else {
                if let Some(tracker) = replica.tracker.take() {
                    // Steps down: from now on a follower (its log as it is).
                    replica.known_commit = tracker.commit_point();
                    replica.follower =
                        FollowerLog::new(replica.entries.len() as u64, cache_of(&replica.entries));
                }
                if member && part.followers().iter().any(|f| f == id) {
                    replica.follower.observe(&owner, epoch);
                }
            }
        }
        Ok(())
    }

    /// Records what the owners' commit points acknowledge; checks G4.
    fn settle(&mut self, out: &mut String) -> Res<()> {
        for (id, node) in &self.nodes {
            if !node.alive {
                continue;
            }
            for (p, replica) in &node.parts {
                let Some(tracker) = &replica.tracker else { continue };
                let acked = self.acked.entry(*p).or_default();
                let mut new = Vec::new();
                for offset in 0..tracker.acknowledge_point() {
                    let Some((_, message)) = replica.entries.get(offset as usize) else {
                        return Err(format!("{id} commits p{p} offset {offset} it does not have").into());
                    };
                    match acked.get(&offset) {
                        Some(m) if m != message => {
                            return Err(format!(
                                "p{p} offset {offset} acknowledged as {m}, now {id} commits {message} there"
                            )
                            .into())
                        }
                        Some(_) => {}
                        None => {
                            acked.insert(offset, message.clone());
                            new.push(message.clone());
                        }
                    }
                }
                if !new.is_empty() {
                    writeln!(out, "p{p} acknowledged: {}", new.join(" "))?;
                }
            }
        }
        // G4: every acknowledged message is on every in-sync replica and on the owner.
        let table = self.config.replica_table()?;
        for (p, acked) in &self.acked {
            for node_id in table.isr(*p).into_iter().chain(table.owner(*p)) {
                let empty = Vec::new();
                let entries = self
                    .nodes
                    .get(&node_id)
                    .and_then(|n| n.parts.get(p))
                    .map_or(&empty, |r| &r.entries);
                for (offset, message) in acked {
                    if entries.get(*offset as usize).map(|e| &e.1) != Some(message) {
                        return Err(format!(
                            "G4 violated: acknowledged {message} (p{p} offset {offset}) is not on {node_id}, in sync or owner"
                        )
                        .into());
                    }
                }
            }
        }
        Ok(())
    }

    /// Resolves `@owner`, `@f1`..., `@preferred` for partition `p`.
    fn resolve(&self, name: &str, p: u32) -> Res<String> {
        let table = self.config.replica_table()?;
        let part = table.partition(p);
        let resolved = match name {
            "@owner" => part.owner.clone(),
            "@preferred" => part.replicas.first().cloned(),
            _ => match name.strip_prefix("@f") {
                Some(i) => part
                    .followers()
                    .get(i.parse::<usize>()?.saturating_sub(1))
                    .cloned(),
                None => Some(name.to_string()),
            },
        };
        resolved.ok_or_else(|| format!("p{p} has no {name}").into())
    }

    fn node(&mut self, id: &str) -> Res<&mut Node> {
        self.nodes
            .get_mut(id)
            .ok_or_else(|| format!("no node {id}").into())
    }

    fn write(&mut self, p: u32, n: u64, on: &str, out: &mut String) -> Res<()> {
        let now = self.base + self.now;
        let first_message = self.next_message;
        let node = self.nodes.get_mut(on).ok_or("no such node")?;
        if !node.alive {
            writeln!(out, "{on} is down")?;
            return Ok(());
        }
        let epoch = node.applied_epoch;
        let replica = node
            .parts
            .entry(p)
            .or_insert_with(|| Replica::restored(Vec::new()));
        let Some(tracker) = replica.tracker.as_mut() else {
            writeln!(out, "{on} does not own p{p}")?;
            return Ok(());
        };
        if let Err(e) = tracker.admit() {
            writeln!(out, "{on} refuses: UNAVAILABLE: {e}")?;
            return Ok(());
        }
        let start = replica.entries.len();
        let mut written = Vec::new();
        for i in 0..n {
            let message = format!("m{}", first_message + i);
            replica.entries.push((epoch, message.clone()));
            written.push(message);
        }
        let end = replica.entries.len() as u64;
        tracker.appended(end, now);
        tracker.synced(end);
        self.next_message += n;
        writeln!(
            out,
            "{on} appends {} at p{p} offsets {start}..{end} (epoch {epoch})",
            written.join(" ")
        )?;
        Ok(())
    }

    fn replicate(
        &mut self,
        p: u32,
        from: &str,
        to: Vec<String>,
        limit: usize,
        sync: bool,
        out: &mut String,
    ) -> Res<()> {
        let Some(sender) = self.nodes.get(from) else {
            return Err(format!("no node {from}").into());
        };
        if !sender.alive {
            writeln!(out, "{from} is down")?;
            return Ok(());
        }
        let epoch = sender.applied_epoch;
        let Some(source) = sender.parts.get(&p) else {
            writeln!(out, "{from} holds nothing of p{p}")?;
            return Ok(());
        };
        let entries = source.entries.clone();
        let cache = cache_of(&entries);
        let commit = source.tracker.as_ref().map_or(0, |t| t.commit_point());
        for target in to {
            let incarnation = self.nodes.get(&target).map_or(0, |n| n.incarnation);
            let Some(node) = self.nodes.get_mut(&target).filter(|n| n.alive) else {
                writeln!(out, "{target}: down, nothing delivered")?;
                continue;
            };
            let replica = node
                .parts
                .entry(p)
                .or_insert_with(|| Replica::restored(Vec::new()));
            let mut line = format!("{target}:");
            for attempt in 0..2 {
                // The end-offset exchange, if the follower asks for it.
                if let FollowState::Truncating { owner, asked } = replica.follower.state().clone() {
                    if owner == from {
                        let answer = match asked {
                            Some(e) => cache.end_offset_for(e, entries.len() as u64),
                            None => (None, 0),
                        };
                        if let Some(FollowerAction::Truncate { to }) =
                            replica.follower.end_offset(from, answer)
                        {
                            let dropped: Vec<String> =
                                replica.entries.drain(to as usize..).map(|e| e.1).collect();
                            if dropped.is_empty() {
                                write!(line, " truncation: nothing to drop (end {to});")?;
                            } else {
                                write!(line, " truncates to {to}, dropping {};", dropped.join(" "))?;
                            }
                        }
                    }
                }
                let first = replica.follower.end();
                let batch: Vec<(u64, String)> =
                    entries.iter().skip(first as usize).take(limit).cloned().collect();
                let epochs: Vec<u64> = batch.iter().map(|e| e.0).collect();
                match replica.follower.append(from, epoch, first, &epochs) {
                    Ok(FollowerAction::Write { first, count }) => {
                        replica.entries.truncate(first as usize);
                        replica.entries.extend(batch);
                        replica.known_commit = commit;
                        write!(line, " +{count} (end {})", first + count)?;
                    }
                    Ok(other) => write!(line, " {other:?}")?,
                    // The owner answers the end-offset question and sends again.
                    Err(AppendRefusal::Truncating) if attempt == 0 => {
                        write!(
                            line,
                            " new owner {from} at epoch {epoch}, asks where its epoch ends;"
                        )?;
                        continue;
                    }
                    Err(refusal) => write!(line, " refused: {refusal}")?,
                }
                break;
            }
            let mut ack = None;
            if sync {
                let end = replica.entries.len() as u64;
                // The acknowledgement goes to the owner the follower follows.
                let follows = replica.follower.owner() == Some(from);
                if let Some(FollowerAction::Ack { epoch, durable_end }) =
                    replica.follower.synced(end).filter(|_| follows)
                {
                    write!(line, ", acks {durable_end}")?;
                    ack = Some((epoch, durable_end));
                }
            }
            writeln!(out, "{line}")?;
            if let Some((epoch, durable)) = ack {
                if let Some(tracker) = self
                    .nodes
                    .get_mut(from)
                    .and_then(|n| n.parts.get_mut(&p))
                    .and_then(|r| r.tracker.as_mut())
                {
                    tracker.ack(&target, incarnation, epoch, durable);
                }
            }
        }
        if let Some(tracker) = self
            .nodes
            .get(from)
            .and_then(|n| n.parts.get(&p))
            .and_then(|r| r.tracker.as_ref())
        {
            writeln!(out, "{from}: p{p} commit {}", tracker.commit_point())?;
        }
        Ok(())
    }

    fn tick(&mut self, out: &mut String) -> Res<()> {
        let now = self.base + self.now;
        let mut requests: BTreeMap<String, Vec<_>> = BTreeMap::new();
        for (id, node) in self.nodes.iter_mut() {
            if !node.alive {
                continue;
            }
            for replica in node.parts.values_mut() {
                if let Some(request) = replica.tracker.as_mut().and_then(|t| t.tick(now)) {
                    requests.entry(id.clone()).or_default().push(request);
                }
            }
        }
        for (owner, requests) in requests {
            let epoch = requests.first().map_or(0, |r| r.epoch);
            let described: Vec<String> = requests
                .iter()
                .map(|r| {
                    let join: Vec<String> = r.change.join.iter().map(|(n, _)| format!("+{n}")).collect();
                    let leave: Vec<String> = r.change.leave.iter().map(|n| format!("-{n}")).collect();
                    format!("p{} {}", r.change.partition, [join, leave].concat().join(" "))
                })
                .collect();
            writeln!(out, "{owner} asks at epoch {epoch}: {}", described.join(", "))?;
            let changes = requests.into_iter().map(|r| r.change).collect();
            let accepted = self.propose(
                ConfigCommand::AlterIsr {
                    owner: owner.clone(),
                    epoch,
                    changes,
                },
                out,
            )?;
            if !accepted {
                for replica in self.node(&owner)?.parts.values_mut() {
                    if let Some(t) = replica.tracker.as_mut() {
                        t.refused();
                    }
                }
            }
        }
        Ok(())
    }

    fn status(&self, p: u32, out: &mut String) -> Res<()> {
        let part = self.config.replica_table()?.partition(p);
        let unclean = if part.unclean_epoch > 0 {
            format!(", unclean since epoch {}", part.unclean_epoch)
        } else {
            String::new()
        };
        writeln!(
            out,
            "p{p} at epoch {}: replicas {}, isr {}, owner {}, lagging {}, retiring {}{unclean}",
            self.config.epoch,
            names(&part.replicas),
            names(&part.isr),
            part.owner.as_deref().unwrap_or("-"),
            names(&part.lagging),
            names(&part.retiring),
        )?;
        for (id, node) in &self.nodes {
            let Some(replica) = node.parts.get(&p) else {
                continue;
            };
            let down = if node.alive { "" } else { ", down" };
            match &replica.tracker {
                Some(t) => writeln!(
                    out,
                    "  {id}: owner, end {}, commit {}, acknowledged {}{down}",
                    t.end(),
                    t.commit_point(),
                    t.acknowledge_point()
                )?,
                None => writeln!(
                    out,
                    "  {id}: end {}, durable {}, fence {}{down}",
                    replica.follower.end(),
                    replica.follower.durable_end(),
                    replica.follower.fence()
                )?,
            }
        }
        Ok(())
    }
}

struct ReplicationRunner {
    sim: Option<Sim>,
}

impl ReplicationRunner {
    fn sim(&mut self) -> Res<&mut Sim> {
        self.sim.as_mut().ok_or_else(|| "no cluster yet".into())
    }
}

impl Runner for ReplicationRunner {
    fn run(&mut self, command: &Command) -> Res<String> {
        let mut out = String::new();
        let mut args = command.consume_args();
        let p: u32 = args.lookup_parse("p")?.unwrap_or(0);
        match command.name.as_str() {
            "cluster" => {
                let factor = args.lookup_parse("r")?.unwrap_or(3);
                let min_insync = args.lookup_parse("min")?.unwrap_or(2);
                let partitions = args.lookup_parse("partitions")?.unwrap_or(4);
                let lag = args.lookup("lag").map(|a| parse_duration(&a.value)).transpose()?;
                let zones: Vec<String> = args
                    .lookup("zones")
                    .map(|a| a.value.split(',').map(str::to_string).collect())
                    .unwrap_or_default();
                let ids: Vec<String> = args.rest_pos().into_iter().map(|a| a.value.clone()).collect();
                args.reject_rest()?;
                let first = ids.first().ok_or("cluster needs members")?;
                let mut sim = Sim {
                    config: ClusterConfig::default(),
                    nodes: BTreeMap::new(),
                    base: Instant::now(),
                    now: Duration::ZERO,
                    lag_bound: lag.unwrap_or(Duration::from_millis(1000)),
                    next_message: 1,
                    next_id: 1,
                    acked: BTreeMap::new(),
                };
                let mut quiet = String::new();
                sim.config.apply(
                    0,
                    &ConfigCommand::Bootstrap {
                        cluster_id: "c".into(),
                        ring: RingParams {
                            partitions,
                            vnodes_per_weight: 16,
                        },
                        max_voters: 3,
                        first: member(first, 1),
                    },
                )?;
                sim.config
                    .apply(0, &ConfigCommand::SetReplication { factor, min_insync })?;
                for (i, id) in ids.iter().enumerate() {
                    let raft_id = i as u64 + 1;
                    sim.nodes.insert(
                        id.clone(),
                        Node {
                            alive: true,
                            raft_id,
                            incarnation: 100 + raft_id,
                            applied_epoch: 0,
                            parts: BTreeMap::new(),
                        },
                    );
                    if i > 0 {
                        sim.config
                            .apply(0, &ConfigCommand::AddMember(member(id, raft_id)))?;
                    }
                    if let Some(zone) = zones.get(i) {
                        sim.config.apply(
                            0,
                            &ConfigCommand::SetZone {
                                node_id: id.clone(),
                                zone: zone.clone(),
                            },
                        )?;
                    }
                    sim.config.apply(
                        0,
                        &ConfigCommand::SetIncarnation {
                            node_id: id.clone(),
                            incarnation: 100 + raft_id,
                        },
                    )?;
                }
                sim.next_id = ids.len() as u64 + 1;
                sim.observe_all(&mut quiet)?;
                // The replicas are all empty: every owner brings them into its ISR.
                for p in 0..partitions {
                    let owner = sim.resolve("@owner", p)?;
                    let followers = sim.config.replica_table()?.partition(p).followers();
                    sim.replicate(p, &owner, followers, usize::MAX, true, &mut quiet)?;
                }
                sim.tick(&mut quiet)?;
                let mut line = format!("epoch {}, R {factor}, min-insync {min_insync}", sim.config.epoch);
                if !zones.is_empty() {
                    let z: Vec<String> = ids.iter().zip(&zones).map(|(i, z)| format!("{i}:{z}")).collect();
                    write!(line, ", zones {}", z.join(" "))?;
                }
                writeln!(out, "{line}")?;
                self.sim = Some(sim);
                self.sim()?.status(p, &mut out)?;
            }
            "status" => {
                args.reject_rest()?;
                self.sim()?.status(p, &mut out)?;
            }
            "placement" => {
                args.reject_rest()?;
                let sim = self.sim()?;
                let table = sim.config.replica_table()?;
                for q in 0..sim.partitions() {
                    let part = table.partition(q);
                    let zones: Vec<String> = part
                        .replicas
                        .iter()
                        .map(|r| match sim.config.zone_of(r) {
                            "" => r.clone(),
                            zone => format!("{r}:{zone}"),
                        })
                        .collect();
                    let distinct: BTreeSet<&str> =
                        part.replicas.iter().map(|r| sim.config.zone_of(r)).collect();
                    writeln!(out, "p{q}: {} ({} zones)", zones.join(" "), distinct.len())?;
                }
            }
            "write" => {
                let n = args.lookup_parse("n")?.unwrap_or(1);
                let on = args.lookup("on").map(|a| a.value.clone());
                args.reject_rest()?;
                let sim = self.sim()?;
                let on = sim.resolve(on.as_deref().unwrap_or("@owner"), p)?;
                sim.write(p, n, &on, &mut out)?;
            }
            "replicate" => {
                let limit: usize = args.lookup_parse("n")?.unwrap_or(usize::MAX);
                let nosync = args.lookup("nosync").is_some();
                let from = args.lookup("from").map(|a| a.value.clone());
                let to = args.lookup("to").map(|a| a.value.clone());
                args.reject_rest()?;
                let sim = self.sim()?;
                let from = sim.resolve(from.as_deref().unwrap_or("@owner"), p)?;
                let to = match to {
                    Some(list) => list
                        .split(',')
                        .map(|t| sim.resolve(t, p))
                        .collect::<Res<Vec<_>>>()?,
                    None => sim.config.replica_table()?.partition(p).followers(),
                };
                sim.replicate(p, &from, to, limit, !nosync, &mut out)?;
            }
            "tick" => {
                let at = parse_duration(&args.lookup("at").ok_or("tick needs at=")?.value)?;
                args.reject_rest()?;
                let sim = self.sim()?;
                sim.now = at;
                sim.tick(&mut out)?;
            }
            "lag" => {
                let at = parse_duration(&args.lookup("at").ok_or("lag needs at=")?.value)?;
                args.reject_rest()?;
                let sim = self.sim()?;
                sim.now = at;
                let owner = sim.resolve("@owner", p)?;
                let followers = sim.config.replica_table()?.partition(p).followers();
                let now = sim.base + at;
                let tracker = sim
                    .nodes
                    .get(&owner)
                    .and_then(|n| n.parts.get(&p))
                    .and_then(|r| r.tracker.as_ref())
                    .ok_or("the owner has no tracker")?;
                for f in followers {
                    if let Some(lag) = tracker.lag(&f, now) {
                        writeln!(
                            out,
                            "{f}: {} messages, {}ms behind",
                            lag.messages,
                            lag.time.as_millis()
                        )?;
                    }
                }
            }
            "kill" | "resume" => {
                let ids: Vec<String> = args.rest_pos().into_iter().map(|a| a.value.clone()).collect();
                args.reject_rest()?;
                let sim = self.sim()?;
                for id in ids {
                    let id = sim.resolve(&id, p)?;
                    sim.node(&id)?.alive = command.name == "resume";
                    writeln!(
                        out,
                        "{id} {}",
                        if command.name == "kill" {
                            "stopped"
                        } else {
                            "runs again"
                        }
                    )?;
                }
            }
            "observe" => {
                let ids: Vec<String> = args.rest_pos().into_iter().map(|a| a.value.clone()).collect();
                args.reject_rest()?;
                let sim = self.sim()?;
                for id in ids {
                    let id = sim.resolve(&id, p)?;
                    sim.observe(&id, &mut out)?;
                }
            }
            "fail" => {
                let id = args.next_pos().ok_or("fail needs a node")?.value.clone();
                args.reject_rest()?;
                let sim = self.sim()?;
                let id = sim.resolve(&id, p)?;
                writeln!(out, "fail over {id}")?;
                sim.propose(ConfigCommand::RemoveMember { node_id: id }, &mut out)?;
            }
            "restart" => {
                let id = args.next_pos().ok_or("restart needs a node")?.value.clone();
                let wipe = args.lookup("wipe").is_some() || args.rest_pos().iter().any(|a| a.value == "wipe");
                args.reject_rest()?;
                let sim = self.sim()?;
                let id = sim.resolve(&id, p)?;
                let next_id = sim.next_id;
                let node = sim.node(&id)?;
                node.alive = true;
                if wipe {
                    node.raft_id = next_id;
                    node.incarnation = 100 + next_id;
                    node.parts.clear();
                } else {
                    // A process restart: what is on disk, nothing in memory.
                    for replica in node.parts.values_mut() {
                        *replica = Replica::restored(std::mem::take(&mut replica.entries));
                    }
                }
                let (raft_id, incarnation) = (node.raft_id, node.incarnation);
                if wipe {
                    sim.next_id += 1;
                }
                writeln!(
                    out,
                    "{id} restarts{} (raft id {raft_id}, incarnation {incarnation})",
                    if wipe { " with an empty data directory" } else { "" }
                )?;
                let is_member = sim.config.members.get(&id).is_some_and(|m| m.raft_id == raft_id);
                if !is_member {
                    sim.propose(ConfigCommand::AddMember(member(&id, raft_id)), &mut out)?;
                }
                sim.propose(
                    ConfigCommand::SetIncarnation {
                        node_id: id.clone(),
                        incarnation,
                    },
                    &mut out,
                )?;
                sim.observe(&id, &mut out)?;
            }
            "zone" => {
                let sets: Vec<(String, String)> = args
                    .rest_key()
                    .into_iter()
                    .map(|a| (a.key.clone().unwrap_or_default(), a.value.clone()))
                    .collect();
                args.reject_rest()?;
                let sim = self.sim()?;
                for (node_id, zone) in sets {
                    sim.propose(ConfigCommand::SetZone { node_id, zone }, &mut out)?;
                }
            }
            "log" => {
                let ids: Vec<String> = args.rest_pos().into_iter().map(|a| a.value.clone()).collect();
                args.reject_rest()?;
                let sim = self.sim()?;
                for id in ids {
                    let id = sim.resolve(&id, p)?;
                    let entries = sim
                        .nodes
                        .get(&id)
                        .and_then(|n| n.parts.get(&p))
                        .map(|r| {
                            r.entries
                                .iter()
                                .enumerate()
                                .map(|(o, (e, m))| format!("{o}:{m}@{e}"))
                                .collect::<Vec<_>>()
                        })
                        .unwrap_or_default();
                    writeln!(
                        out,
                        "{id} p{p}: {}",
                        if entries.is_empty() {
                            "empty".into()
                        } else {
                            entries.join(" ")
                        }
                    )?;
                }
            }
            "read" => {
                args.reject_rest()?;
                let sim = self.sim()?;
                let owner = sim.resolve("@owner", p)?;
                let replica = sim
                    .nodes
                    .get(&owner)
                    .and_then(|n| n.parts.get(&p))
                    .ok_or("no replica")?;
                let commit = replica.tracker.as_ref().map_or(0, |t| t.commit_point());
                let readable: Vec<String> = replica
                    .entries
                    .iter()
                    .take(commit as usize)
                    .enumerate()
                    .map(|(o, (_, m))| format!("{o}:{m}"))
                    .collect();
                writeln!(
                    out,
                    "read p{p} from {owner} (below commit {commit}): {}",
                    readable.join(" ")
                )?;
            }
            name => return Err(format!("unknown command {name}").into()),
        }
        if let Some(sim) = self.sim.as_mut() {
            sim.settle(&mut out)?;
        }
        Ok(out)
    }
}

/// Runs every script in the directory, each with a fresh runner, and reports all that fail.
#[test]
fn replication_scripts() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testscripts/replication");
    routemq_testkit::golden::run_dir(&dir, || ReplicationRunner { sim: None });
}
