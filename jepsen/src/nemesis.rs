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

use anyhow::{bail, Result};
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
    pub const ALL: [NemesisKind; 13] = [
        NemesisKind::None,
        NemesisKind::PartitionOne,
        NemesisKind::PartitionMajority,
        NemesisKind::PartitionRing,
        NemesisKind::PartitionBridge,
        NemesisKind::PartitionLeader,
        NemesisKind::KillOne,
        NemesisKind::KillLeader,
        NemesisKind::KillMinority,
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

// ---- the nemesis (I/O) ----------------------------------------------------------------

/// What is broken right now, so it can be healed.
#[derive(Debug, Clone)]
enum Active {
    Partition,
    Killed(Vec<String>),
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
            NemesisKind::KillOne | NemesisKind::KillMinority | NemesisKind::KillLeader => {
                let (targets, known) = match kind {
                    NemesisKind::KillOne => (self.random_nodes(1), true),
                    NemesisKind::KillMinority => (self.random_nodes(nodes.len().saturating_sub(1) / 2), true),
                    _ => {
                        let (l, known) = self.leader_or_random().await;
                        (vec![l], known)
                    }
                };
                for t in &targets {
                    self.cluster.kill(t).await?;
                    self.down.insert(t.clone());
                }
                self.active = Some(Active::Killed(targets.clone()));
                Ok(json!({"fault": name, "killed": targets, "leader_known": known}))
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
}
