//! The nemesis: faults injected on a schedule, each recorded in the history.
//!
//! | name | fault | healed by |
//! |---|---|---|
//! | `none` | nothing | - |
//! | `partition-one` | one random node cut off from all others | flushing the drop rules |
//! | `partition-majority` | a random 2 \| 3 split | " |
//! | `partition-ring` | majorities ring: each node reaches its two ring neighbours only (a majority, but no two nodes the same one) | " |
//! | `partition-bridge` | two halves of 2 that only a fifth "bridge" node reaches | " |
//! | `partition-leader` | the current Raft leader cut off | " |
//! | `kill-one`, `kill-leader`, `kill-minority` | kill -9 of one random node, the leader, or 2 random nodes | restart with the same data directory |
//! | `pause-one`, `pause-leader` | SIGSTOP of a node (for the whole fault window, longer than any failover timeout) | SIGCONT |
//! | `kill-wipe-one` | kill -9 of one random node and deletion of its data directory (still a member: no `RemoveNode`) | restart with the same node id, an empty data directory and `--seed`: a new incarnation of the node |
//! | `kill-two` | kill -9 of two random nodes at once (both signalled before either is reaped), whatever the cluster size | restart both with their data directories |
//! | `membership` | `Cluster.RemoveNode` of a random node, kill -9, wipe its data directory | restart it with an empty data directory and `--seed`: it joins again |
//! | `combined` | each window one of the above, at random | its own heal |
//!
//! Partitions drop packets with iptables inside the node namespaces ([`crate::net`]). The
//! grudge functions are pure and unit-tested. Every fault is recorded as an `invoke`/`info`
//! pair of process `nemesis` (`f` = `start` or `stop`); the completion's `extra.state` is the
//! fault state from then on (`grudge`, `down`), which the G5 checker and the report read.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use serde_json::{json, Value};
use tokio::time::timeout;

use crate::cluster::{Cluster, StartMode};
use crate::history::{Op, OpKind, Process, Recorder};
use crate::net::{self, Grudge};

/// The nemeses, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NemesisKind {
    /// No faults.
    None,
    /// One node isolated.
    PartitionOne,
    /// Majority / minority.
    PartitionMajority,
    /// Majorities ring.
    PartitionRing,
    /// Two halves joined by one bridge node.
    PartitionBridge,
    /// The Raft leader isolated.
    PartitionLeader,
    /// kill -9 one node.
    KillOne,
    /// kill -9 the leader.
    KillLeader,
    /// kill -9 a minority.
    KillMinority,
    /// kill -9 one node and wipe its data directory; it comes back empty under its old id.
    KillWipeOne,
    /// kill -9 two nodes at once.
    KillTwo,
    /// SIGSTOP one node.
    PauseOne,
    /// SIGSTOP the leader.
    PauseLeader,
    /// Remove, wipe, re-add a node.
    Membership,
    /// A random choice per window.
    Combined,
}

impl NemesisKind {
    /// Every nemesis, in matrix order.
    pub const ALL: [NemesisKind; 15] = [
        NemesisKind::None,
        NemesisKind::PartitionOne,
        NemesisKind::PartitionMajority,
        NemesisKind::PartitionRing,
        NemesisKind::PartitionBridge,
        NemesisKind::PartitionLeader,
        NemesisKind::KillOne,
        NemesisKind::KillLeader,
        NemesisKind::KillMinority,
        NemesisKind::KillWipeOne,
        NemesisKind::KillTwo,
        NemesisKind::PauseOne,
        NemesisKind::PauseLeader,
        NemesisKind::Membership,
        NemesisKind::Combined,
    ];

    /// Its name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            NemesisKind::None => "none",
            NemesisKind::PartitionOne => "partition-one",
            NemesisKind::PartitionMajority => "partition-majority",
            NemesisKind::PartitionRing => "partition-ring",
            NemesisKind::PartitionBridge => "partition-bridge",
            NemesisKind::PartitionLeader => "partition-leader",
            NemesisKind::KillOne => "kill-one",
            NemesisKind::KillLeader => "kill-leader",
            NemesisKind::KillMinority => "kill-minority",
            NemesisKind::KillWipeOne => "kill-wipe-one",
            NemesisKind::KillTwo => "kill-two",
            NemesisKind::PauseOne => "pause-one",
            NemesisKind::PauseLeader => "pause-leader",
            NemesisKind::Membership => "membership",
            NemesisKind::Combined => "combined",
        }
    }

    /// Parses a name.
    pub fn from_name(name: &str) -> Option<NemesisKind> {
        NemesisKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Names of every nemesis, for help texts.
    pub fn names() -> Vec<&'static str> {
        NemesisKind::ALL.iter().map(|k| k.name()).collect()
    }
}

// ---- grudges (pure) -------------------------------------------------------------------

/// Both sides drop each other's packets.
fn cut(grudge: &mut Grudge, a: &str, b: &str) {
    grudge.entry(a.to_string()).or_default().insert(b.to_string());
    grudge.entry(b.to_string()).or_default().insert(a.to_string());
}

/// Complete cut between every node of `a` and every node of `b`.
pub fn split(a: &[String], b: &[String]) -> Grudge {
    let mut g = Grudge::new();
    for x in a {
        for y in b {
            cut(&mut g, x, y);
        }
    }
    g
}

/// `target` cut off from every other node.
pub fn isolate(nodes: &[String], target: &str) -> Grudge {
    let rest: Vec<String> = nodes.iter().filter(|n| *n != target).cloned().collect();
    split(&[target.to_string()], &rest)
}

/// Majorities ring over `ring` (in ring order): each node keeps links to the `n/2` nodes
/// nearest to it on the ring (half on each side), so each sees a majority counting itself,
/// and no two nodes see the same majority.
pub fn majorities_ring(ring: &[String]) -> Grudge {
    let n = ring.len();
    let keep = n / 2;
    let mut g = Grudge::new();
    for i in 0..n {
        for j in 0..n {
            if i == j {
                continue;
            }
            let d = (j + n - i) % n;
            let dist = d.min(n - d);
            // Nearest `keep` neighbours: distance <= keep/2 on each side (ties go clockwise).
            let near = dist <= keep / 2 || (keep % 2 == 1 && d == keep.div_ceil(2));
            if !near {
                g.entry(ring[i].clone()).or_default().insert(ring[j].clone());
            }
        }
    }
    // Make it symmetric (a link is either up both ways or down both ways).
    let pairs: Vec<(String, String)> = g
        .iter()
        .flat_map(|(a, bs)| bs.iter().map(move |b| (a.clone(), b.clone())))
        .collect();
    for (a, b) in pairs {
        cut(&mut g, &a, &b);
    }
    g
}

/// Two halves that cannot talk to each other, and one node (the middle one of `nodes`) that
/// talks to both.
pub fn bridge(nodes: &[String]) -> Grudge {
    let mid = nodes.len() / 2;
    split(&nodes[..mid], &nodes[mid + 1..])
}

/// Nodes each node can still talk to (itself included).
pub fn reachable(nodes: &[String], grudge: &Grudge) -> BTreeMap<String, BTreeSet<String>> {
    nodes
        .iter()
        .map(|a| {
            let set = nodes
                .iter()
                .filter(|b| {
                    a == *b
                        || !(grudge.get(a).is_some_and(|s| s.contains(*b))
                            || grudge.get(*b).is_some_and(|s| s.contains(a)))
                })
                .cloned()
                .collect();
            (a.clone(), set)
        })
        .collect()
}

// ---- kill plans (pure) ---------------------------------------------------------------

/// Which nodes a kill nemesis kills and what it does to their data directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KillPlan {
    /// The nodes to kill -9, sorted.
    pub targets: Vec<String>,
    /// Signal every target before reaping any (a simultaneous crash), instead of one by one.
    pub at_once: bool,
    /// Delete the targets' data directories after the kill: they restart empty under their
    /// old node ids (a new incarnation).
    pub wipe: bool,
}

/// The kill plan of `kind` over `nodes` (`None`: not a kill nemesis, or `kill-leader`, whose
/// target is asked of the cluster). Random choices come from `rng` only, so a seed replays
/// the same plan.
pub fn kill_plan(kind: NemesisKind, nodes: &[String], rng: &mut StdRng) -> Option<KillPlan> {
    let (count, at_once, wipe) = match kind {
        NemesisKind::KillOne => (1, false, false),
        NemesisKind::KillMinority => (nodes.len().saturating_sub(1) / 2, false, false),
        NemesisKind::KillWipeOne => (1, false, true),
        NemesisKind::KillTwo => (2, true, false),
        _ => return None,
    };
    let mut targets = nodes.to_vec();
    targets.shuffle(rng);
    targets.truncate(count.min(nodes.len()));
    targets.sort();
    Some(KillPlan {
        targets,
        at_once,
        wipe,
    })
}

// ---- the nemesis (I/O) ----------------------------------------------------------------

/// What is broken right now, so it can be healed.
#[derive(Debug, Clone)]
enum Active {
    Partition,
    Killed(Vec<String>),
    Wiped(Vec<String>),
    Paused(Vec<String>),
    Removed(String),
}

/// Injects faults into a [`Cluster`] it owns for the duration of the test.
pub struct Nemesis {
    cluster: Cluster,
    recorder: Arc<Recorder>,
    rng: StdRng,
    grudge: Grudge,
    down: BTreeSet<String>,
    active: Option<Active>,
}

impl Nemesis {
    /// A nemesis over `cluster`.
    pub fn new(cluster: Cluster, recorder: Arc<Recorder>, rng: StdRng) -> Nemesis {
        Nemesis {
            cluster,
            recorder,
            rng,
            grudge: Grudge::new(),
            down: BTreeSet::new(),
            active: None,
        }
    }

    /// Gives the cluster back (after [`Nemesis::heal_all`]).
    pub fn into_cluster(self) -> Cluster {
        self.cluster
    }

    /// The cluster.
    pub fn cluster_mut(&mut self) -> &mut Cluster {
        &mut self.cluster
    }

    /// Nodes whose process ended without the nemesis killing it, since the last call:
    /// `[{"node", "status"}]`.
    fn exits(&mut self) -> Vec<Value> {
        self.cluster
            .exited()
            .into_iter()
            .map(|(node, status)| json!({"node": node, "status": status}))
            .collect()
    }

    fn state(&self) -> Value {
        json!({"grudge": self.grudge, "down": self.down})
    }

    fn nodes(&self) -> Vec<String> {
        self.cluster.node_ids()
    }

    async fn leader_or_random(&mut self) -> (String, bool) {
        match self.cluster.leader(Duration::from_secs(5)).await {
            Some(l) => (l, true),
            None => {
                let nodes = self.nodes();
                (nodes.choose(&mut self.rng).cloned().unwrap_or_default(), false)
            }
        }
    }

    fn random_nodes(&mut self, k: usize) -> Vec<String> {
        let mut nodes = self.nodes();
        nodes.shuffle(&mut self.rng);
        nodes.truncate(k);
        nodes.sort();
        nodes
    }

    fn partition(&mut self, grudge: Grudge) -> Result<()> {
        net::apply_grudge(&self.cluster.layout, &grudge)?;
        self.grudge = grudge;
        self.active = Some(Active::Partition);
        Ok(())
    }

    /// Starts one fault of `kind` (for `combined`, a random one) and records it.
    pub async fn start(&mut self, kind: NemesisKind) {
        let kind = if kind == NemesisKind::Combined {
            let choices: Vec<NemesisKind> = NemesisKind::ALL
                .into_iter()
                .filter(|k| !matches!(k, NemesisKind::None | NemesisKind::Combined))
                .collect();
            *choices.choose(&mut self.rng).expect("non-empty")
        } else {
            kind
        };
        if kind == NemesisKind::None || self.active.is_some() {
            return;
        }
        let invoke = self
            .recorder
            .record(Op::new(OpKind::Invoke, Process::Nemesis, "start").value(json!({"fault": kind.name()})));
        let exited = self.exits();
        let result = self.do_start(kind).await;
        let (mut value, error) = match result {
            Ok(v) => (v, None),
            Err(e) => (json!({"fault": kind.name()}), Some(format!("{e:#}"))),
        };
        if !exited.is_empty() {
            value["exited_by_themselves"] = json!(exited);
        }
        let mut done = Op::completion_of(&invoke, OpKind::Info)
            .value(value)
            .extra(json!({"state": self.state()}));
        done.error = error;
        self.recorder.record(done);
    }

    async fn do_start(&mut self, kind: NemesisKind) -> Result<Value> {
        let nodes = self.nodes();
        let name = kind.name();
        match kind {
            NemesisKind::None | NemesisKind::Combined => Ok(json!({"fault": name})),
            NemesisKind::PartitionOne => {
                let target = nodes.choose(&mut self.rng).cloned().unwrap_or_default();
                self.partition(isolate(&nodes, &target))?;
                Ok(json!({"fault": name, "isolated": target, "grudge": self.grudge}))
            }
            NemesisKind::PartitionLeader => {
                let (target, known) = self.leader_or_random().await;
                self.partition(isolate(&nodes, &target))?;
                Ok(json!({"fault": name, "isolated": target, "leader_known": known, "grudge": self.grudge}))
            }
            NemesisKind::PartitionMajority => {
                let mut shuffled = nodes.clone();
                shuffled.shuffle(&mut self.rng);
                let minority = shuffled.len() / 2;
                let (a, b) = shuffled.split_at(minority);
                let (mut a, mut b) = (a.to_vec(), b.to_vec());
                a.sort();
                b.sort();
                self.partition(split(&a, &b))?;
                Ok(json!({"fault": name, "minority": a, "majority": b, "grudge": self.grudge}))
            }
            NemesisKind::PartitionRing => {
                let mut ring = nodes.clone();
                ring.shuffle(&mut self.rng);
                self.partition(majorities_ring(&ring))?;
                Ok(json!({"fault": name, "ring": ring, "grudge": self.grudge}))
            }
            NemesisKind::PartitionBridge => {
                let mut order = nodes.clone();
                order.shuffle(&mut self.rng);
                let bridge_node = order[order.len() / 2].clone();
                self.partition(bridge(&order))?;
                Ok(json!({"fault": name, "bridge": bridge_node, "order": order, "grudge": self.grudge}))
            }
            NemesisKind::KillLeader => {
                let (target, known) = self.leader_or_random().await;
                self.cluster.kill(&target).await?;
                self.down.insert(target.clone());
                self.active = Some(Active::Killed(vec![target.clone()]));
                Ok(json!({"fault": name, "killed": [target], "leader_known": known}))
            }
            NemesisKind::KillOne
            | NemesisKind::KillMinority
            | NemesisKind::KillWipeOne
            | NemesisKind::KillTwo => {
                let plan =
                    kill_plan(kind, &nodes, &mut self.rng).context("a kill nemesis has a kill plan")?;
                let targets = plan.targets.clone();
                if plan.at_once {
                    self.cluster.kill_at_once(&targets).await?;
                } else {
                    for t in &targets {
                        self.cluster.kill(t).await?;
                    }
                }
                self.down.extend(targets.iter().cloned());
                if plan.wipe {
                    for t in &targets {
                        self.cluster.wipe(t)?;
                    }
                    self.active = Some(Active::Wiped(targets.clone()));
                } else {
                    self.active = Some(Active::Killed(targets.clone()));
                }
                Ok(json!({"fault": name, "killed": targets, "at_once": plan.at_once, "wiped": plan.wipe}))
            }
            NemesisKind::PauseOne | NemesisKind::PauseLeader => {
                let (target, known) = if kind == NemesisKind::PauseOne {
                    (self.random_nodes(1).remove(0), true)
                } else {
                    self.leader_or_random().await
                };
                self.cluster.pause(&target)?;
                self.down.insert(target.clone());
                self.active = Some(Active::Paused(vec![target.clone()]));
                Ok(json!({"fault": name, "paused": target, "leader_known": known}))
            }
            NemesisKind::Membership => {
                let target = self.random_nodes(1).remove(0);
                let client = self.cluster.admin_client(Duration::from_secs(15))?;
                let removed = timeout(Duration::from_secs(20), client.remove_node(target.clone())).await;
                let epoch = match removed {
                    Ok(Ok(r)) => r.epoch,
                    Ok(Err(e)) => bail!("RemoveNode {target} failed: {e}"),
                    Err(_) => bail!("RemoveNode {target} timed out"),
                };
                self.cluster.kill(&target).await?;
                self.cluster.wipe(&target)?;
                self.down.insert(target.clone());
                self.active = Some(Active::Removed(target.clone()));
                Ok(json!({"fault": name, "removed": target, "epoch": epoch, "wiped": true}))
            }
        }
    }

    /// Heals the active fault (if any) and records it.
    pub async fn stop(&mut self) {
        let Some(active) = self.active.take() else { return };
        let invoke = self
            .recorder
            .record(Op::new(OpKind::Invoke, Process::Nemesis, "stop"));
        let exited = self.exits();
        let result = self.do_stop(active).await;
        let (mut value, error) = match result {
            Ok(v) => (v, None),
            Err(e) => (json!({}), Some(format!("{e:#}"))),
        };
        if !exited.is_empty() {
            value["exited_by_themselves"] = json!(exited);
        }
        let mut done = Op::completion_of(&invoke, OpKind::Info)
            .value(value)
            .extra(json!({"state": self.state()}));
        done.error = error;
        self.recorder.record(done);
    }

    async fn do_stop(&mut self, active: Active) -> Result<Value> {
        match active {
            Active::Partition => {
                net::apply_grudge(&self.cluster.layout, &Grudge::new())?;
                self.grudge.clear();
                Ok(json!({"healed": "partition"}))
            }
            Active::Paused(nodes) => {
                for n in &nodes {
                    self.cluster.resume(n)?;
                    self.down.remove(n);
                }
                Ok(json!({"resumed": nodes}))
            }
            Active::Killed(nodes) => {
                for n in &nodes {
                    self.cluster.start_node(n, StartMode::Join)?;
                }
                let ready = self.cluster.wait_ready(&nodes, Duration::from_secs(20)).await;
                for n in &nodes {
                    self.down.remove(n);
                }
                Ok(
                    json!({"restarted": nodes, "ready": ready.is_ok(), "ready_error": ready.err().map(|e| e.to_string())}),
                )
            }
            Active::Wiped(nodes) => {
                // Same node id, empty data directory, seeds: the node must come back as a new
                // incarnation (it holds nothing of what its previous life acknowledged).
                for n in &nodes {
                    self.cluster.start_node(n, StartMode::Join)?;
                }
                let ready = self.cluster.wait_ready(&nodes, Duration::from_secs(30)).await;
                for n in &nodes {
                    self.down.remove(n);
                }
                Ok(
                    json!({"restarted": nodes, "fresh_data_dir": true, "ready": ready.is_ok(),
                          "ready_error": ready.err().map(|e| e.to_string())}),
                )
            }
            Active::Removed(node) => {
                self.cluster.start_node(&node, StartMode::Join)?;
                let ready = self
                    .cluster
                    .wait_ready(std::slice::from_ref(&node), Duration::from_secs(30))
                    .await;
                self.down.remove(&node);
                Ok(
                    json!({"rejoined": node, "fresh_data_dir": true, "ready": ready.is_ok(),
                          "ready_error": ready.err().map(|e| e.to_string())}),
                )
            }
        }
    }

    /// Ends the fault schedule: heals the active fault, then makes sure every rule is gone,
    /// every node runs and none is paused (restarting any that died by itself). Recorded as
    /// one `stop` with `f` = `heal-all`.
    pub async fn heal_all(&mut self) -> Value {
        self.stop().await;
        let invoke = self
            .recorder
            .record(Op::new(OpKind::Invoke, Process::Nemesis, "heal-all"));
        let exited = self.exits();
        let mut notes = Vec::new();
        if let Err(e) = net::apply_grudge(&self.cluster.layout, &Grudge::new()) {
            notes.push(format!("flushing rules: {e:#}"));
        }
        self.grudge.clear();
        let mut restarted = Vec::new();
        for n in self.nodes() {
            if self.cluster.is_paused(&n) {
                let _ = self.cluster.resume(&n);
            }
            if !self.cluster.is_running(&n) {
                match self.cluster.start_node(&n, StartMode::Join) {
                    Ok(()) => restarted.push(n.clone()),
                    Err(e) => notes.push(format!("restarting {n}: {e:#}")),
                }
            }
        }
        self.down.clear();
        let all = self.nodes();
        let ready = self.cluster.wait_ready(&all, Duration::from_secs(30)).await;
        if let Err(e) = &ready {
            notes.push(format!("{e:#}"));
        }
        let value = json!({"restarted": restarted, "all_ready": ready.is_ok(), "notes": notes,
                           "exited_by_themselves": exited});
        self.recorder.record(
            Op::completion_of(&invoke, OpKind::Info)
                .value(value.clone())
                .extra(json!({"state": self.state()})),
        );
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn five() -> Vec<String> {
        (1..=5).map(|i| format!("n{i}")).collect()
    }

    #[test]
    fn names_round_trip() {
        for k in NemesisKind::ALL {
            assert_eq!(NemesisKind::from_name(k.name()), Some(k));
        }
        assert_eq!(NemesisKind::from_name("nope"), None);
    }

    #[test]
    fn isolate_cuts_one_node_from_all_others() {
        let r = reachable(&five(), &isolate(&five(), "n3"));
        assert_eq!(r["n3"], BTreeSet::from(["n3".to_string()]));
        assert_eq!(r["n1"].len(), 4);
    }

    #[test]
    fn split_makes_two_components() {
        let nodes = five();
        let r = reachable(&nodes, &split(&nodes[..2], &nodes[2..]));
        assert_eq!(r["n1"].len(), 2);
        assert_eq!(r["n5"].len(), 3);
        assert!(!r["n1"].contains("n3"));
    }

    #[test]
    fn majorities_ring_gives_every_node_a_different_majority() {
        let nodes = five();
        let r = reachable(&nodes, &majorities_ring(&nodes));
        let views: BTreeSet<&BTreeSet<String>> = r.values().collect();
        assert_eq!(views.len(), 5, "every node sees a different majority: {r:?}");
        for (n, view) in &r {
            assert_eq!(view.len(), 3, "{n} sees {view:?}");
        }
        // Neighbours on the ring talk; n1 and n3 do not.
        assert!(r["n1"].contains("n2") && r["n1"].contains("n5"));
        assert!(!r["n1"].contains("n3"));
    }

    #[test]
    fn bridge_node_talks_to_both_halves() {
        let nodes = five();
        let r = reachable(&nodes, &bridge(&nodes));
        assert_eq!(r["n3"].len(), 5);
        assert_eq!(r["n1"], BTreeSet::from(["n1".into(), "n2".into(), "n3".into()]));
        assert!(!r["n1"].contains("n4"));
    }

    fn rng(seed: u64) -> StdRng {
        use rand::SeedableRng;
        StdRng::seed_from_u64(seed)
    }

    #[test]
    fn kill_two_kills_two_distinct_nodes_at_once_and_keeps_their_data() {
        for seed in 0..50 {
            let plan = kill_plan(NemesisKind::KillTwo, &five(), &mut rng(seed)).unwrap();
            assert_eq!(plan.targets.len(), 2, "{plan:?}");
            assert_ne!(plan.targets[0], plan.targets[1]);
            assert!(plan.targets.iter().all(|t| five().contains(t)));
            assert!(plan.at_once && !plan.wipe);
        }
        // Two of five whatever the seed, and every pair comes up.
        let pairs: BTreeSet<Vec<String>> = (0..200)
            .map(|s| {
                kill_plan(NemesisKind::KillTwo, &five(), &mut rng(s))
                    .unwrap()
                    .targets
            })
            .collect();
        assert_eq!(pairs.len(), 10, "{pairs:?}");
    }

    #[test]
    fn kill_wipe_one_kills_one_node_and_wipes_it() {
        let plan = kill_plan(NemesisKind::KillWipeOne, &five(), &mut rng(7)).unwrap();
        assert_eq!(plan.targets.len(), 1);
        assert!(plan.wipe && !plan.at_once);
        let chosen: BTreeSet<String> = (0..100)
            .flat_map(|s| {
                kill_plan(NemesisKind::KillWipeOne, &five(), &mut rng(s))
                    .unwrap()
                    .targets
            })
            .collect();
        assert_eq!(chosen.len(), 5, "every node gets wiped some time: {chosen:?}");
    }

    #[test]
    fn kill_plans_replay_with_the_seed_and_only_kill_nemeses_have_one() {
        for kind in [
            NemesisKind::KillOne,
            NemesisKind::KillMinority,
            NemesisKind::KillWipeOne,
            NemesisKind::KillTwo,
        ] {
            assert_eq!(
                kill_plan(kind, &five(), &mut rng(42)),
                kill_plan(kind, &five(), &mut rng(42))
            );
        }
        let minority = kill_plan(NemesisKind::KillMinority, &five(), &mut rng(1)).unwrap();
        assert_eq!(
            (minority.targets.len(), minority.at_once, minority.wipe),
            (2, false, false)
        );
        let one = kill_plan(NemesisKind::KillOne, &five(), &mut rng(1)).unwrap();
        assert_eq!((one.targets.len(), one.wipe), (1, false));
        for kind in [
            NemesisKind::None,
            NemesisKind::KillLeader,
            NemesisKind::PauseOne,
            NemesisKind::Membership,
        ] {
            assert_eq!(kill_plan(kind, &five(), &mut rng(1)), None, "{kind:?}");
        }
        // Never more targets than nodes.
        let two_of_one = kill_plan(NemesisKind::KillTwo, &five()[..1], &mut rng(1)).unwrap();
        assert_eq!(two_of_one.targets.len(), 1);
    }

    #[test]
    fn the_new_nemeses_are_in_the_matrix_and_drawn_by_combined() {
        for kind in [NemesisKind::KillWipeOne, NemesisKind::KillTwo] {
            assert!(NemesisKind::ALL.contains(&kind));
            assert_eq!(NemesisKind::from_name(kind.name()), Some(kind));
        }
        assert_eq!(
            NemesisKind::from_name("kill-wipe-one"),
            Some(NemesisKind::KillWipeOne)
        );
        assert_eq!(NemesisKind::from_name("kill-two"), Some(NemesisKind::KillTwo));
    }
}
