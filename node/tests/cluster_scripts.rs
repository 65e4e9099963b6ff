//! Goldenscript scenarios run on several real nodes in one process: each node is the node's own
//! message-path and ownership code (its [`Fence`], [`Processor`], [`Dispatcher`], [`Forwarder`],
//! [`HandoffService`], fetch pass and journal in RocksDB), connected by the in-memory peer
//! network ([`MemoryNetwork`]), so links can be cut and nodes killed and restarted. Only the
//! Raft config and the leader are simulated: a shared sequence of configs that each node is
//! shown (`observe`), and lease grants handed out by the runner (`renew`). Time is tokio's
//! paused clock and nothing is random, so every run is the same. Regenerate the expected output
//! with `UPDATE_GOLDENFILES=1 cargo test --test cluster_scripts` and review it.
//!
//! Every cluster has one ordered route, `orders` (topic `o/{id}`, key `id`, journal handler).
//!
//! Config commands (each makes a new epoch and prints the partitions that move; no node
//! applies it until `observe`):
//! - `cluster ID... [partitions=P]`: the first bootstraps, the others join (default 16
//!   partitions); every node observes the result, gets a lease and fetches its partitions (fresh).
//! - `join ID`, `leave ID`, `remove ID`: a member joins (a fresh node starts), starts a
//!   graceful leave (it owns nothing from now on), or is removed.
//!
//! Node commands:
//! - `observe ID...|all`: the nodes apply the newest config; prints their phases.
//! - `fetch ID...|all`: one real fetch pass of each node (`handoff::fetch_once`).
//! - `settle`: fetch passes on every live node until none makes progress.
//! - `publish ID key=K [n=N]`: N messages (`m1`, `m2`, ... in order over the whole script)
//!   to topic `o/K`, each dispatched through ID's dispatcher once the previous one resolved;
//!   prints who processed each or why it was refused.
//! - `journal ID key=K`: the key's journal as read through ID (locally or at the owner).
//! - `phases ID...|all`, `status ID...|all` (lease), `confirm ID` (a leaving node asks the
//!   owners of what it handed over), `held ID`.
//! - `renew ID...|all`: the (simulated) leader, the first member, grants a lease at the newest
//!   epoch to each node that reaches it; `tick D` lets D pass (e.g. `tick 2s`).
//! - `partition ID...`: cuts every link between these nodes and the others; `heal`: heals all.
//! - `kill ID`: the node stops at once (its queues are lost, its journal stays on disk);
//!   `restart ID`: it starts again from its data (copies restored) and the config it applied.
//!
//! After every command the runner checks that no partition is active on two live members.

use routemq_testkit::golden::{duration as parse_duration, ranges};
use std::collections::{BTreeMap, BTreeSet};
use std::error::Error;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use goldenscript::{Command, Runner};
use routemq_node::config::state::{ClusterConfig, Command as ConfigCommand, Member, MemberState};
use routemq_node::dispatch::{DispatchLimits, Dispatcher};
use routemq_node::fencing::{ConfigSource, Fence, LeaseSettings, SimulatedConfig};
use routemq_node::forward::Forwarder;
use routemq_node::handler::{HandlerContext, HandlerRegistry, NoBroker};
use routemq_node::handoff::HandoffService;
use routemq_node::journal::Journal;
use routemq_node::lease::LeaseStatus;
use routemq_node::message::{Dispatch, InboundMessage};
use routemq_node::ownership::Phase;
use routemq_node::peer::memory::MemoryNetwork;
use routemq_node::peer::{Handlers, JournalQuery};
use routemq_node::processor::Processor;
use routemq_node::ring::{Ring, RingParams};
use routemq_node::routes::{HandlerSpec, RouteMode, RouteSpec};

type Res<T> = Result<T, Box<dyn Error>>;

const LEASE: Duration = Duration::from_secs(10);

/// One running node.
struct Node {
    addr: String,
    journal: Journal,
    fence: Arc<Fence>,
    config: Arc<SimulatedConfig>,
    processor: Arc<Processor>,
    forwarder: Arc<Forwarder>,
    dispatcher: Arc<Dispatcher>,
    handoff: Arc<HandoffService>,
}

struct Cluster {
    rt: tokio::runtime::Runtime,
    net: MemoryNetwork,
    dir: tempfile::TempDir,
    /// The newest config.
    config: ClusterConfig,
    next_index: u64,
    /// Running nodes.
    nodes: BTreeMap<String, Node>,
    /// The config each node applied last (what a restart finds on disk).
    applied: BTreeMap<String, ClusterConfig>,
    /// Cut nodes (`partition`): each cut from everyone outside its group.
    groups: Vec<BTreeSet<String>>,
    next_message: u32,
}

fn addr(id: &str) -> String {
    format!("{id}:7000")
}

fn member(id: &str, raft_id: u64) -> Member {
    Member {
        node_id: id.into(),
        raft_id,
        grpc_addr: addr(id),
        gossip_addr: format!("{id}:7100"),
        http_addr: format!("{id}:7200"),
        weight: 1,
        state: MemberState::Active,
    }
}

fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

impl Cluster {
    fn new(ids: &[String], partitions: u32) -> Res<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()?;
        let mut cluster = Cluster {
            rt,
            net: MemoryNetwork::new(),
            dir: tempfile::tempdir()?,
            config: ClusterConfig::default(),
            next_index: 1,
            nodes: BTreeMap::new(),
            applied: BTreeMap::new(),
            groups: Vec::new(),
            next_message: 1,
        };
        let first = ids.first().ok_or("a cluster needs a member")?;
        cluster.apply(ConfigCommand::Bootstrap {
            cluster_id: "c1".into(),
            ring: RingParams {
                partitions,
                vnodes_per_weight: 16,
            },
            max_voters: 3,
            first: member(first, 1),
        })?;
        for (i, id) in ids.iter().enumerate().skip(1) {
            cluster.apply(ConfigCommand::AddMember(member(id, i as u64 + 1)))?;
        }
        cluster.apply(ConfigCommand::PutRoute {
            spec: RouteSpec {
                name: "orders".into(),
                pattern: "o/{id}".into(),
                group: String::new(),
                key_param: Some("id".into()),
                qos: 1,
                mode: RouteMode::Ordered,
                handler: HandlerSpec::Journal,
                priority: 0,
                message_id_field: None,
            },
            expected_version: None,
        })?;
        for id in ids {
            cluster.start(id)?;
            cluster.observe(id)?;
        }
        {
            let handle = cluster.rt.handle().clone();
            let _context = handle.enter();
            cluster.renew_all();
            cluster.settle();
        }
        Ok(cluster)
    }

    fn apply(&mut self, command: ConfigCommand) -> Res<()> {
        self.config
            .apply(self.next_index, &command)
            .map_err(|e| format!("config command refused: {e}"))?;
        self.next_index += 1;
        Ok(())
    }

    fn node(&self, id: &str) -> Res<&Node> {
        self.nodes
            .get(id)
            .ok_or_else(|| format!("{id} is not running").into())
    }

    /// Starts node `id` from its data directory and the config it applied last.
    fn start(&mut self, id: &str) -> Res<()> {
        let path: PathBuf = self.dir.path().join(id);
        let applied = self.applied.get(id).cloned().unwrap_or_default();
        let net = self.net.clone();
        let node = self.rt.block_on(async move {
            // A killed node's last tasks may still hold the database for a moment.
            let mut journal = Journal::open(&path);
            for _ in 0..50 {
                if journal.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                journal = Journal::open(&path);
            }
            let journal = journal?;
            let settings = LeaseSettings {
                lease: LEASE,
                unsafe_no_fencing: false,
                unsafe_no_handoff: false,
            };
            let fence = Arc::new(Fence::new(id, &settings, Arc::new(journal.clone())));
            fence.restore(journal.held()?);
            let config = Arc::new(SimulatedConfig::new(applied));
            fence.observe(&config.local_view());
            let ctx = HandlerContext {
                node_id: id.to_string(),
                publisher: Arc::new(NoBroker),
                journal: journal.clone(),
                stats: Default::default(),
            };
            let processor = Arc::new(Processor::new(ctx.clone(), fence.clone()));
            let forwarder = Arc::new(Forwarder::with_network(id.to_string(), net.endpoint(&addr(id))));
            let dispatcher = Arc::new(Dispatcher::new(
                id.to_string(),
                config.clone(),
                processor.clone(),
                forwarder.clone(),
                HandlerRegistry::new(),
                ctx,
                DispatchLimits::default(),
                fence.clone(),
            ));
            let handoff = Arc::new(HandoffService::new(
                fence.clone(),
                journal.clone(),
                processor.clone(),
            ));
            net.register(
                &addr(id),
                Handlers {
                    forward: Some(dispatcher.clone()),
                    handoff: Some(handoff.clone()),
                    cluster: None,
                },
            );
            Ok::<_, Box<dyn Error>>(Node {
                addr: addr(id),
                journal,
                fence,
                config,
                processor,
                forwarder,
                dispatcher,
                handoff,
            })
        })?;
        self.nodes.insert(id.to_string(), node);
        self.relink();
        Ok(())
    }

    fn kill(&mut self, id: &str) -> Res<()> {
        let node = self
            .nodes
            .remove(id)
            .ok_or_else(|| format!("{id} is not running"))?;
        self.net.unregister(&node.addr);
        self.rt.block_on(async {
            node.forwarder.shutdown().await;
            node.processor.shutdown().await;
            // Let the streams to it see it gone.
            tokio::time::sleep(Duration::from_millis(10)).await;
        });
        let Node {
            journal,
            fence,
            dispatcher,
            handoff,
            ..
        } = node;
        drop((journal, fence, dispatcher, handoff));
        Ok(())
    }

    /// The node applies the newest config; its phases.
    fn observe(&mut self, id: &str) -> Res<String> {
        let config = self.config.clone();
        let node = self.node(id)?;
        let view = node.config.apply(config.clone());
        node.fence.observe(&view);
        self.applied.insert(id.to_string(), config);
        self.phases(id)
    }

    fn phases(&self, id: &str) -> Res<String> {
        let node = self.node(id)?;
        let mut by_phase: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
        let epoch = node.fence.with_ownership(|o| {
            for (p, slot) in o.slots() {
                let name = match slot.phase {
                    Phase::Active => "active",
                    Phase::Fetching => "fetching",
                    Phase::Draining => "draining",
                    Phase::HandedOver => "handed-over",
                };
                by_phase.entry(name).or_default().push(*p);
            }
            o.epoch()
        });
        let parts: Vec<String> = ["active", "fetching", "draining", "handed-over"]
            .iter()
            .filter_map(|k| by_phase.get(k).map(|ps| format!("{k} {}", ranges(ps))))
            .collect();
        Ok(format!(
            "{id}@{epoch}: {}",
            if parts.is_empty() {
                "nothing".to_string()
            } else {
                parts.join("; ")
            }
        ))
    }

    /// One fetch pass of `id`: how many partitions it activated, if it fetches anything.
    fn fetch(&self, id: &str) -> Res<Option<usize>> {
        let node = self.node(id)?;
        let peers = self.net.endpoint(&node.addr);
        let (fence, config, journal) = (node.fence.clone(), node.config.clone(), node.journal.clone());
        Ok(self.rt.block_on(async move {
            routemq_node::handoff::fetch_once(&*peers, &fence, &*config, &journal, id).await
        }))
    }

    fn settle(&self) {
        for _ in 0..20 {
            let mut progressed = false;
            for id in self.nodes.keys() {
                if let Ok(Some(n)) = self.fetch(id) {
                    progressed |= n > 0;
                }
            }
            if !progressed {
                return;
            }
        }
    }

    /// The leader (the first member) grants leases at the newest epoch to the nodes it reaches.
    fn renew(&self, id: &str) -> Res<String> {
        let node = self.node(id)?;
        let leader = self.config.members.keys().next().cloned().ok_or("no members")?;
        if !self.nodes.contains_key(&leader) || !self.linked(id, &leader) {
            node.fence.refused("no quorum reachable".into());
            return Ok(format!("{id}: renewal refused (leader unreachable)"));
        }
        let member = self.config.members.contains_key(id);
        if !member {
            node.fence.refused("not a member of the cluster".into());
            if node.fence.removed_by(self.config.epoch) {
                node.fence.removed();
            }
            return Ok(format!("{id}: not a member"));
        }
        node.fence.granted(now(), self.config.epoch);
        Ok(format!("{id}: lease granted at epoch {}", self.config.epoch))
    }

    fn renew_all(&self) {
        for id in self.nodes.keys() {
            let _ = self.renew(id);
        }
    }

    fn linked(&self, a: &str, b: &str) -> bool {
        let group = |id: &str| self.groups.iter().position(|g| g.contains(id));
        group(a) == group(b)
    }

    /// Applies the partition groups to the network's links.
    fn relink(&self) {
        self.net.heal_all();
        let ids: Vec<&String> = self.nodes.keys().chain(self.config.members.keys()).collect();
        for a in &ids {
            for b in &ids {
                if a < b && !self.linked(a, b) {
                    self.net.cut(&addr(a), &addr(b));
                }
            }
        }
    }

    fn publish(&mut self, id: &str, key: &str, n: u32) -> Res<String> {
        let mut out = String::new();
        for _ in 0..n {
            let name = format!("m{}", self.next_message);
            self.next_message += 1;
            let dispatcher = self.node(id)?.dispatcher.clone();
            let message = InboundMessage {
                topic: format!("o/{key}"),
                payload: name.clone().into_bytes(),
                message_id: name.clone(),
                ordered_ingress: false,
                retry: false,
            };
            let result = self
                .rt
                .block_on(async move { dispatcher.dispatch(message).await });
            match result {
                Ok(a) => writeln!(
                    out,
                    "{name} → {} at epoch {} (p{})",
                    a.processed_by, a.epoch, a.partition
                )?,
                Err(e) => writeln!(out, "{name} refused: {e}")?,
            }
        }
        Ok(out.trim_end().to_string())
    }

    fn journal(&self, id: &str, key: &str) -> Res<String> {
        let dispatcher = self.node(id)?.dispatcher.clone();
        let query = JournalQuery {
            route: "orders".into(),
            key: key.into(),
            from_offset: 0,
            limit: 0,
        };
        let page = self
            .rt
            .block_on(async move { dispatcher.read_journal(query, false).await });
        Ok(match page {
            Ok(page) => {
                let entries: Vec<String> = page
                    .entries
                    .iter()
                    .map(|e| format!("{}@{}", e.message_id, e.processed_by))
                    .collect();
                format!("{key}: [{}]", entries.join(" "))
            }
            Err(e) => format!("{key}: read refused: {e}"),
        })
    }

    /// No partition is active on two live members.
    fn check(&self) -> Res<()> {
        let mut active: BTreeMap<u32, Vec<&str>> = BTreeMap::new();
        for (id, node) in &self.nodes {
            if !self.config.members.contains_key(id) {
                continue;
            }
            let lease_ok = node.fence.lease_status() == LeaseStatus::Valid;
            node.fence.with_ownership(|o| {
                for (p, slot) in o.slots() {
                    if slot.phase == Phase::Active && lease_ok {
                        active.entry(*p).or_default().push(id);
                    }
                }
            });
        }
        for (p, ids) in active {
            if ids.len() > 1 {
                return Err(format!("partition {p} is active with a valid lease on {ids:?}").into());
            }
        }
        Ok(())
    }

    fn moves(&self, before: &ClusterConfig, what: &str) -> Res<String> {
        let ring_before = before.ring().unwrap_or_else(|_| Ring::empty());
        let ring_after = self.config.ring()?;
        let mut out = format!("epoch {}: {what}", self.config.epoch);
        let mut grouped: BTreeMap<(String, String), Vec<u32>> = BTreeMap::new();
        for m in ring_before.diff(&ring_after)? {
            let key = (
                m.from.unwrap_or_else(|| "none".into()),
                m.to.unwrap_or_else(|| "none".into()),
            );
            grouped.entry(key).or_default().push(m.partition);
        }
        for ((from, to), ps) in grouped {
            write!(out, "\n  {from} → {to}: {}", ranges(&ps))?;
        }
        Ok(out)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let ids: Vec<String> = self.nodes.keys().cloned().collect();
        for id in ids {
            let _ = self.kill(&id);
        }
    }
}

struct ClusterRunner {
    cluster: Option<Cluster>,
}

impl ClusterRunner {
    fn cluster(&mut self) -> Res<&mut Cluster> {
        self.cluster
            .as_mut()
            .ok_or_else(|| "no cluster yet (use `cluster`)".into())
    }
}

/// The ids given, or every running node for `all`.
fn ids_or_all(cluster: &Cluster, ids: Vec<String>) -> Vec<String> {
    if ids.iter().any(|i| i == "all") {
        cluster.nodes.keys().cloned().collect()
    } else {
        ids
    }
}

impl Runner for ClusterRunner {
    fn run(&mut self, command: &Command) -> Result<String, Box<dyn Error>> {
        let mut out = Vec::<String>::new();
        let mut args = command.consume_args();
        let partitions: Option<u32> = args.lookup_parse("partitions")?;
        let key: Option<String> = args.lookup_parse("key")?;
        let n: Option<u32> = args.lookup_parse("n")?;
        let ids: Vec<String> = args.rest_pos().into_iter().map(|a| a.value.clone()).collect();
        args.reject_rest()?;
        if command.name == "cluster" {
            let cluster = Cluster::new(&ids, partitions.unwrap_or(16))?;
            let handle = cluster.rt.handle().clone();
            let _context = handle.enter();
            for id in cluster.nodes.keys() {
                out.push(cluster.phases(id)?);
            }
            self.cluster = Some(cluster);
            return Ok(out.join("\n") + "\n");
        }
        let cluster = self.cluster()?;
        // Fences read tokio's (paused) clock: inside the runtime's context.
        let handle = cluster.rt.handle().clone();
        let _context = handle.enter();
        let ids = ids_or_all(cluster, ids);
        let one = || -> Res<&String> { ids.first().ok_or_else(|| "name a node".into()) };
        match command.name.as_str() {
            name @ ("join" | "leave" | "remove") => {
                let id = one()?.clone();
                let before = cluster.config.clone();
                match name {
                    "join" => {
                        let raft_id = 100 + cluster.config.members.len() as u64;
                        cluster.apply(ConfigCommand::AddMember(member(&id, raft_id)))?;
                        if !cluster.nodes.contains_key(&id) {
                            cluster.start(&id)?;
                        }
                    }
                    "leave" => cluster.apply(ConfigCommand::SetLeaving { node_id: id.clone() })?,
                    _ => cluster.apply(ConfigCommand::RemoveMember { node_id: id.clone() })?,
                }
                let what = match name {
                    "join" => format!("{id} joins"),
                    "leave" => format!("{id} leaves"),
                    _ => format!("{id} removed"),
                };
                out.push(cluster.moves(&before, &what)?);
            }
            "observe" => {
                for id in &ids {
                    out.push(cluster.observe(id)?);
                }
            }
            "phases" => {
                for id in &ids {
                    out.push(cluster.phases(id)?);
                }
            }
            "fetch" => {
                for id in &ids {
                    out.push(match cluster.fetch(id)? {
                        None => format!("{id}: nothing to fetch"),
                        Some(n) => format!("{id}: activated {n}"),
                    });
                }
            }
            "settle" => {
                cluster.settle();
                for id in cluster.nodes.keys() {
                    out.push(cluster.phases(id)?);
                }
            }
            "renew" => {
                for id in &ids {
                    out.push(cluster.renew(id)?);
                }
            }
            "status" => {
                for id in &ids {
                    let status = match cluster.node(id)?.fence.lease_status() {
                        LeaseStatus::Valid => "valid".to_string(),
                        LeaseStatus::Invalid(why) => format!("invalid: {why}"),
                    };
                    out.push(format!("{id}: lease {status}"));
                }
            }
            "tick" => {
                let by = one()?;
                let by: Duration = parse_duration(by)?;
                cluster.rt.block_on(async move { tokio::time::sleep(by).await });
            }
            "publish" => {
                let id = one()?.clone();
                let key = key.ok_or("publish needs key=K")?;
                out.push(cluster.publish(&id, &key, n.unwrap_or(1))?);
            }
            "journal" => {
                let key = key.ok_or("journal needs key=K")?;
                out.push(cluster.journal(one()?, &key)?);
            }
            "confirm" => {
                let id = one()?.clone();
                let node = cluster.node(&id)?;
                let peers = cluster.net.endpoint(&node.addr);
                let (fence, config) = (node.fence.clone(), node.config.clone());
                let confirmed = cluster.rt.block_on(async move {
                    routemq_node::handoff::confirm_handed_over_via(&*peers, &fence, &*config).await
                });
                out.push(format!("{id}: {confirmed} confirmed"));
            }
            "held" => {
                let id = one()?;
                out.push(format!("{id}: {} held", cluster.node(id)?.fence.still_held()));
            }
            "partition" => {
                cluster.groups = vec![ids.iter().cloned().collect()];
                cluster.relink();
                out.push(format!("cut off: {}", ids.join(" ")));
            }
            "heal" => {
                cluster.groups.clear();
                cluster.relink();
            }
            "kill" => {
                let id = one()?.clone();
                cluster.kill(&id)?;
            }
            "restart" => {
                let id = one()?.clone();
                if cluster.nodes.contains_key(&id) {
                    cluster.kill(&id)?;
                }
                cluster.start(&id)?;
                out.push(cluster.phases(&id)?);
            }
            other => return Err(format!("unknown command {other}").into()),
        }
        cluster.check()?;
        Ok(if out.is_empty() {
            String::new()
        } else {
            out.join("\n") + "\n"
        })
    }
}

/// Runs every script in the directory, each with a fresh runner, and reports all that fail.
#[test]
fn cluster_scripts() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testscripts/cluster");
    routemq_testkit::golden::run_dir(&dir, || ClusterRunner { cluster: None });
}
