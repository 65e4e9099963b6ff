//! Goldenscript scenarios for partition ownership, handoff and fencing: several nodes' pure
//! [`Ownership`] machines (and optionally their [`Lease`]s and the leader's
//! [`RenewalTracker`]) driven by a simulated config, simulated fetch rounds and a simulated
//! monotonic clock. Every file in `tests/testscripts/ownership/` is one behaviour; regenerate
//! the expected output with `UPDATE_GOLDENFILES=1 cargo test --test ownership_scripts` and
//! review it.
//!
//! The simulation also keeps, per node, the partition's journal (the messages it processed, in
//! order) and its queue of admitted messages, so that scripts can show that the history moves
//! with the partition. Messages are named `m1`, `m2`... in admission order.
//!
//! Config commands (each makes a new epoch and prints the partitions that move; no node
//! applies it until `observe`):
//!
//! - `cluster ID... [partitions=P] [vnodes=V]`: start over with these members at epoch 1: each
//!   node observes epoch 1 and fetches its partitions (nobody holds any: all start fresh).
//!   Defaults: 32 partitions, 64 virtual nodes per member.
//! - `join ID...`: new members (fresh nodes whose data dir held nothing).
//! - `leave ID...`: members that leave: they stay members but own nothing.
//! - `remove ID...`: members removed from the config (the end of a leave, or a failover).
//!
//! Node commands:
//!
//! - `observe ID...|all [epoch=E]`: the nodes apply the config at epoch E (default: the
//!   latest); `all` is every reachable node. Prints the transitions.
//! - `restart ID`: the node restarts: a new state machine restored with the copy versions on
//!   its disk, whose first observation is the config it had applied (on disk); its queue is
//!   lost (senders re-send), its journal stays.
//! - `down ID...` / `up ID...`: the node is cut off (answers no fetch, gets no renewal) or back.
//! - `admit ID p=P [n=N]`: N (default 1) new messages for partition P sent to the node.
//! - `finish ID p=P`: the node's processor takes the oldest queued message of P: runs it (it
//!   goes to the journal), leaves it waiting, or gives it back, as the gate says.
//! - `gate ID p=P`: what the gate says for P.
//! - `fetch ID [lost]`: one fetch round of the node for every partition it is fetching: asks
//!   every other member (`serve`), decides with its own copy counted (`decide_fetch`), and on
//!   import, fresh or keep-own activates (`fetched`). With `lost`, the answers are served but
//!   never imported (a broken stream, a crash).
//! - `phases ID...|all`: the node's slots per phase.
//! - `confirm ID`: the (leaving) node asks the owners of the partitions it handed over whether
//!   they are active with them (`Handoff/ActiveOf`); confirmed ones no longer hold it back.
//! - `held ID`: how many partitions a (leaving) node still owns, drains, or handed over without
//!   confirmation (it may leave at 0).
//! - `holders p=P`: every node's slot, queue and journal for P.
//!
//! Lease commands (times are offsets from a fixed base instant, e.g. `at=1500ms`):
//!
//! - `lease [duration=D] [failover=F]`: the settings (defaults 1500ms and 2000ms).
//! - `leader ID at=T`: ID becomes leader at T (the previous leader steps down).
//! - `renew ID at=T [arrive=T2]`: ID sends a renewal at T that reaches the leader at T2
//!   (default T). Refused if ID or the leader is down; "not a member" drops everything.
//! - `status ID at=T`: the node's lease status.
//! - `silent ID at=T`: how long the leader has not heard from ID, and whether that exceeds the
//!   failover timeout.
//!
//! After every command the runner checks G2 over the current members: for every partition, at
//! most one member may run messages (an `Active` slot, or a `Draining` one with pending work).
//! (A removed node that has not heard of it yet is not checked: its lease fences it.)
//!
//! Random tests at the end drive the same simulation with random joins, leaves, ends of leaves,
//! lagging observations, admissions, processing and fetch rounds. The variants that reach
//! known bugs are ignored; run them with `cargo nextest run --test ownership_scripts
//! --run-ignored all`.

use routemq_testkit::golden::{duration as parse_duration, ranges};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::error::Error;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use goldenscript::{Command, Runner};
use routemq_node::lease::{Lease, LeaseStatus, RenewalTracker};
use routemq_node::ownership::{Answer, FetchDecision, Gate, Ownership, Partition, Phase, Transition};
use routemq_node::ring::{Ring, RingParams};

type Res<T> = Result<T, Box<dyn Error>>;

/// One epoch of the simulated config.
#[derive(Clone)]
struct Config {
    /// Members, with `true` for leaving ones.
    members: BTreeMap<String, bool>,
    ring: Ring,
}

impl Config {
    fn member_set(&self) -> BTreeSet<String> {
        self.members.keys().cloned().collect()
    }
}

struct Node {
    own: Ownership,
    /// The epoch of the config last applied (what a restart finds on disk).
    applied: u64,
    down: bool,
    /// Per partition, the messages processed (the journal).
    journal: BTreeMap<Partition, Vec<String>>,
    /// Per partition, admitted messages not finished yet, in order.
    queue: BTreeMap<Partition, VecDeque<String>>,
    /// The versions of the copies recorded on disk (what `restore` gets after a restart).
    held: BTreeMap<Partition, u64>,
    lease: Lease,
    /// Ingress hold tokens taken (`hold`), per partition.
    holds: BTreeMap<Partition, u64>,
}

/// What happened to one partition in a fetch round.
struct FetchOutcome {
    partition: Partition,
    answers: BTreeMap<String, Option<Answer>>,
    decision: FetchDecision,
    /// The journal imported (for import/fresh), unless the round was lost.
    imported: Option<Vec<String>>,
}

struct Sim {
    params: RingParams,
    /// Configs by epoch; epoch 0 is the empty config of a fresh data dir.
    history: Vec<Config>,
    nodes: BTreeMap<String, Node>,
    next_message: u32,
    base: Instant,
    lease_duration: Duration,
    failover: Duration,
    leader: Option<String>,
    tracker: RenewalTracker,
    /// Every message ever run, per partition, in the order it ran (for the property tests).
    processed: BTreeMap<Partition, Vec<String>>,
}

impl Sim {
    fn new(members: &[String], params: RingParams) -> Res<Self> {
        let empty = Config {
            members: BTreeMap::new(),
            ring: Ring::build(&params, Vec::<(String, u32)>::new())?,
        };
        let mut sim = Self {
            params,
            history: vec![empty],
            nodes: BTreeMap::new(),
            next_message: 1,
            base: Instant::now(),
            lease_duration: Duration::from_millis(1500),
            failover: Duration::from_millis(2000),
            leader: None,
            tracker: RenewalTracker::new(),
            processed: BTreeMap::new(),
        };
        let config = Config {
            members: members.iter().map(|m| (m.clone(), false)).collect(),
            ring: Ring::build(&params, members.iter().map(|m| (m, 1)))?,
        };
        sim.history.push(config);
        for m in members {
            let node = sim.started_node(m, 1, BTreeMap::new());
            sim.nodes.insert(m.clone(), node);
        }
        // The bootstrap: every member fetches its partitions (nobody holds any: all fresh).
        for m in members {
            sim.fetch(m, false)?;
        }
        Ok(sim)
    }

    /// A node that starts with the config of `epoch` and the copies `held` on disk (its first
    /// observation).
    fn started_node(&self, id: &str, epoch: u64, held: BTreeMap<Partition, u64>) -> Node {
        let mut own = Ownership::new(id, false);
        own.restore(held.clone());
        let c = &self.history[epoch as usize];
        own.observe(epoch, &c.ring, &c.member_set());
        Node {
            own,
            applied: epoch,
            down: false,
            journal: BTreeMap::new(),
            queue: BTreeMap::new(),
            held,
            lease: Lease::new(self.lease_duration, false),
            holds: BTreeMap::new(),
        }
    }

    fn epoch(&self) -> u64 {
        (self.history.len() - 1) as u64
    }

    fn current(&self) -> &Config {
        self.history.last().unwrap()
    }

    fn node(&self, id: &str) -> Res<&Node> {
        self.nodes
            .get(id)
            .ok_or_else(|| format!("unknown node {id}").into())
    }

    fn node_mut(&mut self, id: &str) -> Res<&mut Node> {
        self.nodes
            .get_mut(id)
            .ok_or_else(|| format!("unknown node {id}").into())
    }

    /// Makes a new epoch with `members`; returns the moves, one line per (from, to).
    fn change(&mut self, members: BTreeMap<String, bool>, what: &str) -> Res<String> {
        let ring = Ring::build(
            &self.params,
            members
                .iter()
                .filter(|(_, leaving)| !**leaving)
                .map(|(m, _)| (m, 1)),
        )?;
        for m in members.keys() {
            if !self.nodes.contains_key(m) {
                // A fresh node's data dir holds nothing: epoch 0.
                let node = self.started_node(m, 0, BTreeMap::new());
                self.nodes.insert(m.clone(), node);
            }
        }
        let moves = self.current().ring.diff(&ring)?;
        self.history.push(Config { members, ring });
        let mut out = format!("epoch {}: {what}\n", self.epoch());
        let mut grouped: BTreeMap<(String, String), Vec<Partition>> = BTreeMap::new();
        for m in moves {
            let key = (
                m.from.unwrap_or_else(|| "none".into()),
                m.to.unwrap_or_else(|| "none".into()),
            );
            grouped.entry(key).or_default().push(m.partition);
        }
        for ((from, to), ps) in grouped {
            writeln!(out, "  {from} → {to}: {}", ranges(&ps))?;
        }
        Ok(out)
    }

    fn observe(&mut self, id: &str, epoch: u64) -> Res<String> {
        let config = self
            .history
            .get(epoch as usize)
            .ok_or_else(|| format!("no epoch {epoch}"))?
            .clone();
        let node = self.node_mut(id)?;
        if node.down {
            return Err(format!("{id} is down").into());
        }
        let transitions = node.own.observe(epoch, &config.ring, &config.member_set());
        node.applied = node.applied.max(epoch);
        Ok(format!(
            "{id}@{epoch}: {}\n",
            self.after_transitions(id, &transitions)?
        ))
    }

    /// Applies the side effects of transitions on the node's queue and journal; describes them.
    fn after_transitions(&mut self, id: &str, transitions: &[Transition]) -> Res<String> {
        let node = self.node_mut(id)?;
        let mut kinds: BTreeMap<&str, Vec<Partition>> = BTreeMap::new();
        let mut given_back = Vec::new();
        let mut dropped = false;
        for t in transitions {
            match t {
                Transition::Activated(p) => {
                    node.journal.entry(*p).or_default();
                    node.held.insert(*p, node.own.epoch());
                    kinds.entry("active").or_default().push(*p)
                }
                Transition::StartedFetching(p) => kinds.entry("fetching").or_default().push(*p),
                Transition::StartedDraining(p) => kinds.entry("draining").or_default().push(*p),
                Transition::AbandonedFetch(p) => {
                    kinds.entry("abandoned").or_default().push(*p);
                    given_back.extend(node.queue.remove(p).unwrap_or_default());
                }
                Transition::DroppedAll => {
                    dropped = true;
                    given_back.extend(std::mem::take(&mut node.queue).into_values().flatten());
                }
            }
        }
        let mut parts: Vec<String> = ["active", "fetching", "draining", "abandoned"]
            .iter()
            .filter_map(|k| kinds.get(k).map(|ps| format!("{k} {}", ranges(ps))))
            .collect();
        if dropped {
            parts.push("dropped every slot".into());
        }
        if !given_back.is_empty() {
            parts.push(format!("gave back {}", given_back.join(" ")));
        }
        Ok(if parts.is_empty() {
            "no change".into()
        } else {
            parts.join("; ")
        })
    }

    fn admit(&mut self, id: &str, p: Partition) -> Res<Option<String>> {
        let name = format!("m{}", self.next_message);
        let node = self.node_mut(id)?;
        if !node.own.admit(p) {
            return Ok(None);
        }
        node.queue.entry(p).or_default().push_back(name.clone());
        self.next_message += 1;
        Ok(Some(name))
    }

    /// The processor takes the oldest queued message of `p`.
    fn finish(&mut self, id: &str, p: Partition) -> Res<String> {
        let node = self.node_mut(id)?;
        let Some(head) = node.queue.get(&p).and_then(|q| q.front()).cloned() else {
            return Err(format!("{id} has nothing queued for p{p}").into());
        };
        Ok(match node.own.gate(p) {
            Gate::Wait => format!("{id} p{p}: {head} waits"),
            Gate::Run => {
                node.queue.get_mut(&p).unwrap().pop_front();
                node.own.finished(p);
                let journal = node.journal.entry(p).or_default();
                journal.push(head.clone());
                let line = format!("{id} p{p}: ran {head}, journal {}", words(journal.iter()));
                self.processed.entry(p).or_default().push(head);
                line
            }
            Gate::Moved => {
                node.queue.get_mut(&p).unwrap().pop_front();
                node.own.finished(p);
                format!("{id} p{p}: {head} moved (given back)")
            }
        })
    }

    /// One fetch round of `id` for every partition it is fetching.
    fn fetch(&mut self, id: &str, lost: bool) -> Res<Vec<FetchOutcome>> {
        let node = self.node(id)?;
        if node.down {
            return Err(format!("{id} is down").into());
        }
        let (epoch, peers, partitions) = (node.own.epoch(), node.own.peers().clone(), node.own.fetching());
        let mut outcomes = Vec::new();
        for p in partitions {
            let mut answers = BTreeMap::new();
            let mut data = BTreeMap::new();
            for peer in &peers {
                let answer = match self.nodes.get_mut(peer) {
                    Some(holder) if !holder.down => {
                        let answer = holder.own.serve(p, epoch);
                        if let Answer::Data { .. } = answer {
                            data.insert(peer.clone(), holder.journal.get(&p).cloned().unwrap_or_default());
                        }
                        Some(answer)
                    }
                    _ => None,
                };
                answers.insert(peer.clone(), answer);
            }
            let node = self.node_mut(id)?;
            let decision = node.own.decide_fetch(p, &answers);
            let imported = match (&decision, lost) {
                (FetchDecision::Retry, _) | (_, true) => None,
                (FetchDecision::Fresh, false) => Some(Vec::new()),
                (FetchDecision::KeepOwn { .. }, false) => {
                    Some(node.journal.get(&p).cloned().unwrap_or_default())
                }
                (FetchDecision::Import { from, .. }, false) => Some(data[from].clone()),
            };
            let mut imported_journal = None;
            if let Some(journal) = imported {
                // The import replaces whatever the node had of the partition, and records the
                // copy's version (this epoch) with it.
                if node.own.slot(p).map(|s| s.phase) == Some(Phase::Fetching) {
                    node.journal.insert(p, journal.clone());
                    node.held.insert(p, epoch);
                    node.own.fetched(p);
                    imported_journal = Some(journal);
                }
            }
            outcomes.push(FetchOutcome {
                partition: p,
                answers,
                decision,
                imported: imported_journal,
            });
        }
        Ok(outcomes)
    }

    /// The (leaving) node asks the owners of the partitions it handed over whether they are
    /// active with them (at an epoch at least its own); returns (confirmed, not yet).
    fn confirm(&mut self, id: &str) -> Res<(Vec<Partition>, Vec<Partition>)> {
        let node = self.node(id)?;
        if node.down {
            return Err(format!("{id} is down").into());
        }
        let epoch = node.own.epoch();
        let ring = &self.history[epoch as usize].ring;
        let (mut yes, mut no) = (Vec::new(), Vec::new());
        for p in node.own.unconfirmed() {
            let active = ring
                .owner_of_partition(p)
                .and_then(|o| self.nodes.get(o))
                .is_some_and(|o| !o.down && o.own.epoch() >= epoch && o.own.is_active(p));
            if active {
                yes.push(p)
            } else {
                no.push(p)
            }
        }
        let node = self.node_mut(id)?;
        for p in &yes {
            node.own.confirm(*p);
        }
        Ok((yes, no))
    }

    /// The node restarts: a new state machine restored with the copies on disk, observing the
    /// config it had applied; its queue is lost (senders re-send). Describes what happened.
    fn restart(&mut self, id: &str) -> Res<String> {
        let mut output = String::new();
        let old = self.nodes.remove(id).ok_or("unknown node")?;
        let epoch = old.applied;
        let config = self.history[epoch as usize].clone();
        let mut own = Ownership::new(id, false);
        own.restore(old.held.clone());
        let transitions = own.observe(epoch, &config.ring, &config.member_set());
        let node = Node {
            own,
            applied: epoch,
            down: old.down,
            journal: old.journal,
            queue: BTreeMap::new(),
            held: old.held,
            lease: Lease::new(self.lease_duration, false),
            holds: BTreeMap::new(),
        };
        self.nodes.insert(id.to_string(), node);
        let lost: Vec<&String> = old.queue.values().flatten().collect();
        if !lost.is_empty() {
            writeln!(
                output,
                "{id} restarts; queue lost (senders re-send): {}",
                words(lost)
            )?;
        }
        let described = self.after_transitions(id, &transitions)?;
        writeln!(output, "{id}@{epoch} (first observation): {described}")?;
        Ok(output)
    }

    /// G2 over the current members: at most one may run messages of a partition.
    fn check(&self) -> Res<()> {
        let members = self.current().member_set();
        let mut runners: BTreeMap<Partition, Vec<&str>> = BTreeMap::new();
        for (id, node) in &self.nodes {
            if !members.contains(id) {
                continue;
            }
            for (p, slot) in node.own.slots() {
                if slot.phase == Phase::Active || (slot.phase == Phase::Draining && slot.pending > 0) {
                    runners.entry(*p).or_default().push(id);
                }
            }
        }
        for (p, ids) in runners {
            if ids.len() > 1 {
                return Err(format!("G2 violated: p{p} may run on {}", ids.join(" and ")).into());
            }
        }
        Ok(())
    }

    fn at(&self, offset: Duration) -> Instant {
        self.base + offset
    }
}

fn words<'a>(items: impl IntoIterator<Item = &'a String>) -> String {
    let v: Vec<&str> = items.into_iter().map(String::as_str).collect();
    format!("[{}]", v.join(" "))
}

fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Active => "active",
        Phase::Fetching => "fetching",
        Phase::Draining => "draining",
        Phase::HandedOver => "handed-over",
    }
}

fn answer_name(answer: &Option<Answer>) -> String {
    match answer {
        None => "no answer".into(),
        Some(Answer::NotHolder) => "not holder".into(),
        Some(Answer::NotYet) => "not yet".into(),
        Some(Answer::Data { version }) => format!("data v{version}"),
    }
}

fn show_ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

struct OwnershipRunner {
    sim: Option<Sim>,
}

impl OwnershipRunner {
    fn sim(&mut self) -> Res<&mut Sim> {
        self.sim.as_mut().ok_or_else(|| "no cluster yet".into())
    }

    fn targets(&mut self, ids: Vec<String>) -> Res<Vec<String>> {
        let sim = self.sim()?;
        if ids.iter().any(|i| i == "all") {
            return Ok(sim
                .nodes
                .iter()
                .filter(|(_, n)| !n.down)
                .map(|(id, _)| id.clone())
                .collect());
        }
        if ids.is_empty() {
            return Err("which nodes?".into());
        }
        Ok(ids)
    }
}

impl Runner for OwnershipRunner {
    fn run(&mut self, command: &Command) -> Result<String, Box<dyn Error>> {
        let mut output = String::new();
        let mut args = command.consume_args();
        match command.name.as_str() {
            "cluster" => {
                let params = RingParams {
                    partitions: args.lookup_parse("partitions")?.unwrap_or(32),
                    vnodes_per_weight: args.lookup_parse("vnodes")?.unwrap_or(64),
                };
                let ids: Vec<String> = args.rest_pos().into_iter().map(|a| a.value.clone()).collect();
                args.reject_rest()?;
                let sim = Sim::new(&ids, params)?;
                for (id, node) in &sim.nodes {
                    writeln!(
                        output,
                        "{id}: active {}",
                        ranges(&node.own.in_phase(Phase::Active))
                    )?;
                }
                self.sim = Some(sim);
            }

            name @ ("join" | "leave" | "remove") => {
                let ids: Vec<String> = args.rest_pos().into_iter().map(|a| a.value.clone()).collect();
                args.reject_rest()?;
                let sim = self.sim()?;
                let mut members = sim.current().members.clone();
                for id in &ids {
                    match name {
                        "join" if members.contains_key(id) => return Err(format!("{id} is a member").into()),
                        "join" => {
                            members.insert(id.clone(), false);
                        }
                        _ if !members.contains_key(id) => return Err(format!("{id} is not a member").into()),
                        "leave" => {
                            members.insert(id.clone(), true);
                        }
                        _ => {
                            members.remove(id);
                        }
                    }
                }
                let verb = match (name, ids.len()) {
                    ("join", 1) => "joins",
                    ("join", _) => "join",
                    ("leave", 1) => "leaves",
                    ("leave", _) => "leave",
                    _ => "removed",
                };
                output = sim.change(members, &format!("{} {verb}", ids.join(" ")))?;
            }

            "observe" => {
                let epoch = args.lookup_parse("epoch")?;
                let ids: Vec<String> = args.rest_pos().into_iter().map(|a| a.value.clone()).collect();
                args.reject_rest()?;
                for id in self.targets(ids)? {
                    let sim = self.sim()?;
                    let epoch = epoch.unwrap_or(sim.epoch());
                    output.push_str(&sim.observe(&id, epoch)?);
                }
            }

            "restart" => {
                let id = args.next_pos().ok_or("restart ID")?.value.clone();
                args.reject_rest()?;
                output = self.sim()?.restart(&id)?;
            }

            name @ ("down" | "up") => {
                let ids: Vec<String> = args.rest_pos().into_iter().map(|a| a.value.clone()).collect();
                args.reject_rest()?;
                for id in ids {
                    self.sim()?.node_mut(&id)?.down = name == "down";
                }
            }

            "admit" => {
                let id = args.next_pos().ok_or("admit ID p=P")?.value.clone();
                let p: Partition = args.lookup_parse("p")?.ok_or("p= missing")?;
                let n: u32 = args.lookup_parse("n")?.unwrap_or(1);
                args.reject_rest()?;
                let sim = self.sim()?;
                let mut admitted = Vec::new();
                let mut refused = false;
                for _ in 0..n {
                    match sim.admit(&id, p)? {
                        Some(name) => admitted.push(name),
                        None => refused = true,
                    }
                }
                if !admitted.is_empty() {
                    writeln!(output, "{id} p{p}: admitted {}", admitted.join(" "))?;
                }
                if refused {
                    writeln!(output, "{id} p{p}: refused (not the owner: moved)")?;
                }
            }

            "hold" => {
                // The MQTT ingress of an ordered route takes, checks or releases its hold on
                // the partition of the route's `$ingress` key.
                let id = args
                    .next_pos()
                    .ok_or("hold ID take|check|release p=P")?
                    .value
                    .clone();
                let what = args
                    .next_pos()
                    .ok_or("hold ID take|check|release p=P")?
                    .value
                    .clone();
                let p: Partition = args.lookup_parse("p")?.ok_or("p= missing")?;
                args.reject_rest()?;
                let node = self.sim()?.node_mut(&id)?;
                let line = match what.as_str() {
                    "take" => match node.own.take_ingress_hold(p) {
                        Some(token) => {
                            node.holds.insert(p, token);
                            format!("took hold {token}")
                        }
                        None => "hold refused".to_string(),
                    },
                    "check" => match node.holds.get(&p) {
                        Some(&token) if node.own.ingress_hold_valid(p, token) => {
                            format!("hold {token} valid")
                        }
                        Some(&token) => format!("hold {token} no longer valid: stop taking messages"),
                        None => "no hold taken".to_string(),
                    },
                    "release" => match node.holds.remove(&p) {
                        Some(token) => {
                            node.own.release_ingress_hold(p, token);
                            format!("released hold {token}")
                        }
                        None => "no hold taken".to_string(),
                    },
                    other => return Err(format!("unknown hold action {other}").into()),
                };
                writeln!(output, "{id} p{p}: {line}")?;
            }

            "finish" => {
                let id = args.next_pos().ok_or("finish ID p=P")?.value.clone();
                let p: Partition = args.lookup_parse("p")?.ok_or("p= missing")?;
                args.reject_rest()?;
                writeln!(output, "{}", self.sim()?.finish(&id, p)?)?;
            }

            "gate" => {
                let id = args.next_pos().ok_or("gate ID p=P")?.value.clone();
                let p: Partition = args.lookup_parse("p")?.ok_or("p= missing")?;
                args.reject_rest()?;
                writeln!(output, "{id} p{p}: {:?}", self.sim()?.node(&id)?.own.gate(p))?;
            }

            "fetch" => {
                let id = args.next_pos().ok_or("fetch ID")?.value.clone();
                let lost = match args.next_pos() {
                    None => false,
                    Some(arg) if arg.value == "lost" => true,
                    Some(arg) => return Err(format!("unknown fetch option {}", arg.value).into()),
                };
                args.reject_rest()?;
                let sim = self.sim()?;
                let outcomes = sim.fetch(&id, lost)?;
                if outcomes.is_empty() {
                    writeln!(output, "{id}: nothing to fetch")?;
                }
                // Group partitions with the same answers and outcome.
                let mut grouped: BTreeMap<String, Vec<Partition>> = BTreeMap::new();
                for o in outcomes {
                    let answers: Vec<String> = o
                        .answers
                        .iter()
                        .map(|(m, a)| format!("{m} {}", answer_name(a)))
                        .collect();
                    let decision = match &o.decision {
                        FetchDecision::Retry => "retry".to_string(),
                        FetchDecision::Fresh => "fresh".to_string(),
                        FetchDecision::Import { from, version } => format!("import v{version} from {from}"),
                        FetchDecision::KeepOwn { version } => format!("keep own v{version}"),
                    };
                    let result = match (&o.decision, &o.imported) {
                        (FetchDecision::Retry, _) => String::new(),
                        (_, None) => ", lost".to_string(),
                        (_, Some(journal)) => format!(", active with journal {}", words(journal)),
                    };
                    let line = format!("{} → {decision}{result}", answers.join(", "));
                    grouped.entry(line).or_default().push(o.partition);
                }
                let mut lines: Vec<(Vec<Partition>, String)> =
                    grouped.into_iter().map(|(line, ps)| (ps, line)).collect();
                lines.sort();
                for (ps, line) in lines {
                    writeln!(output, "{id} p{}: {line}", ranges(&ps))?;
                }
            }

            "phases" => {
                let ids: Vec<String> = args.rest_pos().into_iter().map(|a| a.value.clone()).collect();
                args.reject_rest()?;
                let targets = if ids.iter().any(|i| i == "all") {
                    self.sim()?.nodes.keys().cloned().collect()
                } else {
                    ids
                };
                let sim = self.sim()?;
                for id in targets {
                    let node = sim.node(&id)?;
                    let own = &node.own;
                    let mut parts = Vec::new();
                    for phase in [Phase::Active, Phase::Fetching, Phase::Draining, Phase::HandedOver] {
                        let ps = own.in_phase(phase);
                        if ps.is_empty() {
                            continue;
                        }
                        if phase == Phase::Active {
                            parts.push(format!("active {} ({})", ps.len(), ranges(&ps)));
                        } else {
                            let detail: Vec<String> = ps
                                .iter()
                                .map(|p| {
                                    let s = own.slot(*p).unwrap();
                                    let mut pending = if s.pending > 0 {
                                        format!(" +{}", s.pending)
                                    } else {
                                        String::new()
                                    };
                                    if s.ingress_hold.is_some() {
                                        pending.push_str(" ingress");
                                    }
                                    format!("{p} v{}{pending}", s.version)
                                })
                                .collect();
                            parts.push(format!(
                                "{} {} ({})",
                                phase_name(phase),
                                ps.len(),
                                detail.join(", ")
                            ));
                        }
                    }
                    if parts.is_empty() {
                        parts.push("no slots".into());
                    }
                    let mut flags = String::new();
                    if !own.is_member() {
                        flags.push_str(", not a member");
                    }
                    if node.down {
                        flags.push_str(", down");
                    }
                    writeln!(output, "{id}@{}{flags}: {}", own.epoch(), parts.join("; "))?;
                }
            }

            "confirm" => {
                let id = args.next_pos().ok_or("confirm ID")?.value.clone();
                args.reject_rest()?;
                let (yes, no) = self.sim()?.confirm(&id)?;
                writeln!(
                    output,
                    "{id}: owners confirmed {}; not yet {}",
                    ranges(&yes),
                    ranges(&no)
                )?;
            }

            "held" => {
                let id = args.next_pos().ok_or("held ID")?.value.clone();
                args.reject_rest()?;
                let held = self.sim()?.node(&id)?.own.still_held();
                writeln!(output, "{id} still holds {held} partition(s)")?;
            }

            "holders" => {
                let p: Partition = args.lookup_parse("p")?.ok_or("p= missing")?;
                args.reject_rest()?;
                let sim = self.sim()?;
                let owner = sim
                    .current()
                    .ring
                    .owner_of_partition(p)
                    .unwrap_or("none")
                    .to_string();
                writeln!(output, "p{p} owner at epoch {}: {owner}", sim.epoch())?;
                for (id, node) in &sim.nodes {
                    let slot = node.own.slot(p);
                    let journal = node.journal.get(&p);
                    if slot.is_none() && journal.is_none_or(|j| j.is_empty()) {
                        continue;
                    }
                    let slot = match slot {
                        None => "no slot".to_string(),
                        Some(s) => format!("{} v{}", phase_name(s.phase), s.version),
                    };
                    let queue = match node.queue.get(&p) {
                        Some(q) if !q.is_empty() => format!(", queue {}", words(q)),
                        _ => String::new(),
                    };
                    let journal = journal.map(words).unwrap_or_else(|| "[]".into());
                    writeln!(output, "  {id}: {slot}{queue}, journal {journal}")?;
                }
            }

            "lease" => {
                let duration = args
                    .lookup("duration")
                    .map(|a| parse_duration(&a.value))
                    .transpose()?;
                let failover = args
                    .lookup("failover")
                    .map(|a| parse_duration(&a.value))
                    .transpose()?;
                args.reject_rest()?;
                let sim = self.sim()?;
                sim.lease_duration = duration.unwrap_or(sim.lease_duration);
                sim.failover = failover.unwrap_or(sim.failover);
                let d = sim.lease_duration;
                for node in sim.nodes.values_mut() {
                    node.lease = Lease::new(d, false);
                }
                writeln!(
                    output,
                    "lease {}, failover timeout {}",
                    show_ms(sim.lease_duration),
                    show_ms(sim.failover)
                )?;
            }

            "leader" => {
                let id = args.next_pos().ok_or("leader ID at=T")?.value.clone();
                let at = parse_duration(&args.lookup("at").ok_or("at= missing")?.value)?;
                args.reject_rest()?;
                let sim = self.sim()?;
                sim.node(&id)?;
                let now = sim.at(at);
                sim.tracker.set_leader(false, now);
                sim.tracker.set_leader(true, now);
                sim.leader = Some(id.clone());
                writeln!(output, "{id} leads from {}", show_ms(at))?;
            }

            "renew" => {
                let id = args.next_pos().ok_or("renew ID at=T")?.value.clone();
                let sent = parse_duration(&args.lookup("at").ok_or("at= missing")?.value)?;
                let arrive = args
                    .lookup("arrive")
                    .map(|a| parse_duration(&a.value))
                    .transpose()?
                    .unwrap_or(sent);
                args.reject_rest()?;
                let sim = self.sim()?;
                let epoch = sim.epoch();
                let is_member = sim.current().members.contains_key(&id);
                let leader_up = sim
                    .leader
                    .as_ref()
                    .is_some_and(|l| sim.nodes.get(l).is_some_and(|n| !n.down));
                let (sent_at, arrive_at) = (sim.at(sent), sim.at(arrive));
                let node_down = sim.node(&id)?.down;
                if node_down || !leader_up {
                    let node = sim.node_mut(&id)?;
                    node.lease.refused("no quorum reachable".into());
                    writeln!(output, "{id}: renewal refused (no quorum reachable)")?;
                } else if !is_member {
                    let node = sim.node_mut(&id)?;
                    node.lease.revoke("this node was removed from the cluster".into());
                    let transitions = node.own.drop_all();
                    let described = sim.after_transitions(&id, &transitions)?;
                    writeln!(output, "{id}: not a member; {described}")?;
                } else {
                    sim.tracker.renewed(&id, arrive_at);
                    let node = sim.node_mut(&id)?;
                    node.lease.granted(sent_at, epoch);
                    let until = node.lease.valid_until().unwrap() - sim.base;
                    writeln!(
                        output,
                        "{id}: lease valid until {} (epoch {epoch})",
                        show_ms(until)
                    )?;
                }
            }

            "status" => {
                let id = args.next_pos().ok_or("status ID at=T")?.value.clone();
                let at = parse_duration(&args.lookup("at").ok_or("at= missing")?.value)?;
                args.reject_rest()?;
                let sim = self.sim()?;
                let now = sim.at(at);
                let node = sim.node(&id)?;
                let status = match node.lease.status(now, node.own.epoch()) {
                    LeaseStatus::Valid => "valid".to_string(),
                    LeaseStatus::Invalid(why) => format!("invalid: {why}"),
                };
                writeln!(output, "{id} at {}: {status}", show_ms(at))?;
            }

            "silent" => {
                let id = args.next_pos().ok_or("silent ID at=T")?.value.clone();
                let at = parse_duration(&args.lookup("at").ok_or("at= missing")?.value)?;
                args.reject_rest()?;
                let sim = self.sim()?;
                let leader = sim.leader.clone().ok_or("no leader")?;
                match sim.tracker.silent_for(&id, sim.at(at)) {
                    None => writeln!(output, "{leader} is not leader")?,
                    Some(silent) => {
                        let verdict = if silent > sim.failover {
                            "exceeds the failover timeout: remove"
                        } else {
                            "within the failover timeout: keep"
                        };
                        writeln!(
                            output,
                            "{leader} at {}: {id} silent {}, {verdict}",
                            show_ms(at),
                            show_ms(silent)
                        )?;
                    }
                }
            }

            name => return Err(format!("unknown command {name}").into()),
        }
        if let Some(sim) = &self.sim {
            sim.check()?;
        }
        Ok(output)
    }
}

fn run_dir(dir: &Path) {
    routemq_testkit::golden::run_dir(dir, || OwnershipRunner { sim: None });
}

/// Runs every script in the directory, each with a fresh runner, and reports all that fail.
#[test]
fn ownership_scripts() {
    run_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testscripts/ownership"));
}

/// A small deterministic random generator (xorshift64*), so failures replay from the seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n.max(1)
    }
}

/// Random joins, leaves, ends of leaves, lagging observations, admissions, processing and fetch
/// rounds, without failures. After every step: G2 over the members (checked by the sim), every
/// message runs on a node that holds the partition's whole history (G3, G4), and every import
/// (or fresh start) brings the whole history, i.e. no fetch skips a holder of newer data.
///
/// Nodes restart now and then (queue lost, copies restored from disk).
///
/// With `lagging_fetch`, nodes behind the latest config fetch too (the case of
/// `lagging_fetcher_imports_stale_copy`); without, only up-to-date nodes fetch. With
/// `end_leave_on_still_held`, a leave ends as the node does it (`still_held() == 0` after
/// asking the owners, the case of `leave_ends_before_the_import`); without, it ends only once
/// the owner of every partition the leaver handed over is active.
fn random_run(seed: u64, steps: usize, lagging_fetch: bool, end_leave_on_still_held: bool) -> Res<()> {
    let params = RingParams {
        partitions: 16,
        vnodes_per_weight: 16,
    };
    let ids: Vec<String> = ["n1", "n2", "n3"].iter().map(|s| s.to_string()).collect();
    let mut sim = Sim::new(&ids, params)?;
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut next_id = 4;
    let mut log = Vec::new();
    for _ in 0..steps {
        let nodes: Vec<String> = sim.nodes.keys().cloned().collect();
        let node = nodes[rng.below(nodes.len())].clone();
        let p = rng.below(params.partitions as usize) as Partition;
        let members = sim.current().members.clone();
        let staying: Vec<&String> = members.iter().filter(|(_, l)| !**l).map(|(m, _)| m).collect();
        match rng.below(11) {
            10 => {
                log.push(format!("restart {node}"));
                sim.restart(&node)?;
            }
            0 if next_id <= 6 => {
                let id = format!("n{next_id}");
                next_id += 1;
                let mut m = members.clone();
                m.insert(id.clone(), false);
                log.push(format!("join {id}"));
                sim.change(m, "join")?;
            }
            1 if staying.len() > 1 && members.get(&node) == Some(&false) => {
                let mut m = members.clone();
                m.insert(node.clone(), true);
                log.push(format!("leave {node}"));
                sim.change(m, "leave")?;
            }
            2 => {
                // The end of a leave: the leaver applied the latest config and holds nothing.
                if end_leave_on_still_held && !sim.nodes[&node].down {
                    sim.confirm(&node)?;
                }
                let n = &sim.nodes[&node];
                let imported = n.own.slots().keys().all(|p| {
                    let owner = sim.current().ring.owner_of_partition(*p).unwrap_or_default();
                    sim.nodes
                        .get(owner)
                        .and_then(|o| o.own.slot(*p))
                        .is_some_and(|s| s.phase == Phase::Active)
                });
                let done = n.own.still_held() == 0 && (end_leave_on_still_held || imported);
                if members.get(&node) == Some(&true) && n.applied == sim.epoch() && done {
                    let mut m = members.clone();
                    m.remove(&node);
                    log.push(format!("remove {node}"));
                    sim.change(m, "remove")?;
                }
            }
            3 | 4 => {
                // Apply a later config, possibly skipping some (a snapshot).
                let applied = sim.nodes[&node].own.epoch();
                if applied < sim.epoch() {
                    let epoch = applied + 1 + rng.below((sim.epoch() - applied) as usize) as u64;
                    log.push(format!("observe {node} epoch={epoch}"));
                    sim.observe(&node, epoch)?;
                }
            }
            5 => {
                log.push(format!("admit {node} p={p}"));
                sim.admit(&node, p)?;
            }
            6 | 7 => {
                let queued = sim.nodes[&node].queue.get(&p).is_some_and(|q| !q.is_empty());
                if queued {
                    let history = sim.processed.get(&p).cloned().unwrap_or_default();
                    let journal = sim.nodes[&node].journal.get(&p).cloned().unwrap_or_default();
                    log.push(format!("finish {node} p={p}"));
                    let ran = sim.finish(&node, p)?;
                    if ran.contains(": ran ") && journal != history {
                        return Err(format!(
                            "{node} ran a message of p{p} without the whole history: {journal:?} vs {history:?}\n{}",
                            log.join("\n")
                        )
                        .into());
                    }
                }
            }
            _ if lagging_fetch || sim.nodes[&node].own.epoch() == sim.epoch() => {
                log.push(format!("fetch {node}"));
                for o in sim.fetch(&node, false)? {
                    let history = sim.processed.get(&o.partition).cloned().unwrap_or_default();
                    if o.imported.as_ref().is_some_and(|j| *j != history) {
                        return Err(format!(
                            "{node} imported p{} without the whole history ({:?}): {:?} vs {history:?}\n{}",
                            o.partition,
                            o.decision,
                            o.imported,
                            log.join("\n")
                        )
                        .into());
                    }
                }
            }
            _ => {}
        }
        if let Err(e) = sim.check() {
            return Err(format!("{e}\n{}", log.join("\n")).into());
        }
    }
    Ok(())
}

#[test]
fn random_moves_keep_one_processor_and_the_whole_history() {
    for seed in 0..300 {
        if let Err(e) = random_run(seed, 300, false, false) {
            panic!("seed {seed}: {e}");
        }
    }
}

#[test]
fn random_moves_with_lagging_fetchers() {
    for seed in 0..300 {
        if let Err(e) = random_run(seed, 300, true, false) {
            panic!("seed {seed}: {e}");
        }
    }
}

/// Every node observes every config in order, one after the other; after each round of fetches
/// (repeated until nothing is left to fetch), each partition is active on exactly its owner.
#[test]
fn in_step_cluster_converges_to_the_ring() {
    let params = RingParams {
        partitions: 16,
        vnodes_per_weight: 16,
    };
    let ids: Vec<String> = ["n1", "n2", "n3"].iter().map(|s| s.to_string()).collect();
    let mut sim = Sim::new(&ids, params).unwrap();
    let mut rng = Rng(7);
    for step in 0..60 {
        let mut members = sim.current().members.clone();
        let staying: Vec<String> = members
            .iter()
            .filter(|(_, l)| !**l)
            .map(|(m, _)| m.clone())
            .collect();
        let leavers: Vec<String> = members
            .iter()
            .filter(|(_, l)| **l)
            .map(|(m, _)| m.clone())
            .collect();
        match rng.below(3) {
            0 => {
                members.insert(format!("x{step}"), false);
            }
            1 if staying.len() > 1 => {
                members.insert(staying[rng.below(staying.len())].clone(), true);
            }
            _ if !leavers.is_empty() => {
                members.remove(&leavers[0]);
            }
            _ => continue,
        }
        sim.change(members, "change").unwrap();
        let epoch = sim.epoch();
        let ids: Vec<String> = sim.nodes.keys().cloned().collect();
        for id in &ids {
            if sim.nodes[id].own.epoch() < epoch
                && (sim.nodes[id].own.is_member() || sim.current().members.contains_key(id))
            {
                sim.observe(id, epoch).unwrap();
            }
            sim.check().unwrap();
        }
        for _ in 0..3 {
            for id in &ids {
                if sim.current().members.contains_key(id) {
                    sim.fetch(id, false).unwrap();
                }
            }
        }
        for p in 0..params.partitions {
            let owner = sim.current().ring.owner_of_partition(p).unwrap().to_string();
            let active: Vec<&String> = sim
                .nodes
                .iter()
                .filter(|(id, n)| {
                    sim.current().members.contains_key(*id)
                        && n.own.slot(p).is_some_and(|s| s.phase == Phase::Active)
                })
                .map(|(id, _)| id)
                .collect();
            assert_eq!(
                active,
                vec![&owner],
                "step {step}: p{p} active on {active:?}, owner {owner}"
            );
        }
    }
}

#[test]
fn random_moves_ending_leaves_on_still_held() {
    for seed in 0..300 {
        if let Err(e) = random_run(seed, 300, false, true) {
            panic!("seed {seed}: {e}");
        }
    }
}
