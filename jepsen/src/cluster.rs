//! The cluster under test: `routemq` node processes and a Mosquitto broker, each started
//! inside its own namespace with `ip netns exec` (which execs, so the child's pid is the
//! node's pid and signals reach it directly).
//!
//! Owns the processes: start (bootstrap or join through seeds), kill -9, SIGSTOP/SIGCONT,
//! wipe a data directory, wait for `/ready`, ask who the Raft leader is, and stop everything.
//! Every start appends to the node's log (`<run>/nodes/<id>.log`) after a marker line, so a
//! log tells the whole life of a node across restarts. Nodes run from a private link to the
//! binary named `rmqj-node` ([`private_binary`]), out of reach of clean-ups by name.
//!
//! Non-goals: deciding *when* to do any of this (that is the nemesis) or checking anything.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use routemq_client::{Client, ClientOptions, ReadConsistency};
use routemq_testkit::mosquitto::{Mosquitto, MosquittoConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::{sleep, timeout, Instant};

use crate::net::{Layout, MQTT_PORT};

/// What the cluster is started with.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Directory with the `routemq` binary.
    pub bin_dir: PathBuf,
    /// Node data directories go under `<data_dir>/<id>`.
    pub data_dir: PathBuf,
    /// Logs go to `<log_dir>/<id>.log`.
    pub log_dir: PathBuf,
    /// Partitions of the ring (power of two).
    pub partitions: u32,
    /// Every node's `--failover-timeout-ms` (the harness sets it, so G5's bound follows it).
    pub failover_timeout: Duration,
    /// `ROUTEMQ_LOG` filter for the nodes.
    pub log_filter: String,
}

/// How a node starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartMode {
    /// Create the cluster (empty data directory).
    Bootstrap,
    /// Join or resume through the other nodes' gossip addresses.
    Join,
}

/// One node's process state.
#[derive(Debug)]
struct NodeProc {
    child: Option<Child>,
    paused: bool,
    starts: u32,
}

/// The running cluster and broker.
pub struct Cluster {
    /// Names and addresses.
    pub layout: Layout,
    spec: ClusterSpec,
    /// The private link to the `routemq` binary the nodes run from (see [`NODE_BIN_NAME`]).
    node_bin: PathBuf,
    nodes: BTreeMap<String, NodeProc>,
    broker: Option<Mosquitto>,
}

/// `GET /path` on `addr`; the HTTP status code, or `None` when there is no answer in time.
pub async fn http_status(addr: &str, path: &str, within: Duration) -> Option<u16> {
    let fut = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(req.as_bytes()).await.ok()?;
        let mut buf = vec![0u8; 64];
        let n = stream.read(&mut buf).await.ok()?;
        let head = String::from_utf8_lossy(&buf[..n]);
        head.split_whitespace().nth(1)?.parse().ok()
    };
    timeout(within, fut).await.ok().flatten()
}

/// File name the nodes run under (not `routemq`): see [`private_binary`].
pub const NODE_BIN_NAME: &str = "rmqj-node";

/// Links (or, across file systems, copies) the `routemq` binary to `<dir>/rmqj-node` and
/// returns that path. The nodes run from it, so their process name and command line do not
/// say `routemq`: on a shared machine, something else's clean-up by name (`pkill routemq`)
/// must not kill the test cluster. Seen here: every node of a run SIGKILLed at once, by no one
/// in the test, while other clusters were being started on the same machine.
fn private_binary(bin: &std::path::Path, dir: &std::path::Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let link = dir.join(NODE_BIN_NAME);
    let _ = std::fs::remove_file(&link);
    if std::fs::hard_link(bin, &link).is_err() {
        std::fs::copy(bin, &link)
            .with_context(|| format!("cannot copy {} to {}", bin.display(), link.display()))?;
    }
    Ok(link)
}

impl Cluster {
    /// A cluster with no process started yet.
    pub fn new(layout: Layout, spec: ClusterSpec) -> Result<Cluster> {
        let bin = spec.bin_dir.join("routemq");
        if !bin.exists() {
            bail!(
                "{} not found: build the node first (cargo build -p routemq-node -p routemq-client --bins) or set ROUTEMQ_BIN_DIR",
                bin.display()
            );
        }
        std::fs::create_dir_all(&spec.data_dir)?;
        std::fs::create_dir_all(&spec.log_dir)?;
        let node_bin = private_binary(&bin, &spec.data_dir.join("bin"))?;
        let nodes = layout
            .nodes
            .iter()
            .map(|n| {
                (
                    n.clone(),
                    NodeProc {
                        child: None,
                        paused: false,
                        starts: 0,
                    },
                )
            })
            .collect();
        Ok(Cluster {
            layout,
            spec,
            node_bin,
            nodes,
            broker: None,
        })
    }

    /// Node ids.
    pub fn node_ids(&self) -> Vec<String> {
        self.layout.nodes.clone()
    }

    /// gRPC addresses of all nodes.
    pub fn grpc_addrs(&self) -> Vec<String> {
        self.layout.nodes.iter().map(|n| self.layout.grpc(n)).collect()
    }

    fn log(&self, node: &str, line: &str) {
        let path = self.spec.log_dir.join(format!("{node}.log"));
        if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(f, "=== jepsen: {line}");
        }
    }

    /// Starts the broker in its namespace, configured as `deploy/mosquitto/mosquitto.conf`
    /// (the deployment the project documents): anonymous, persistence on, and
    /// `max_queued_messages 100000`, which RouteMQ's ordered routes need to queue messages
    /// across a failover (Mosquitto's default of 1000 drops the rest). Its config and log go
    /// to the log directory, its persistence under the data directory.
    pub async fn start_broker(&mut self) -> Result<()> {
        let config = MosquittoConfig::new()
            .listen(self.layout.broker_ip().to_string(), Some(MQTT_PORT))
            .max_queued(100_000)
            .files_in(&self.spec.log_dir)
            .data_dir(self.spec.data_dir.join("mosquitto"))
            .netns(self.layout.ns("mq"));
        let broker = tokio::task::spawn_blocking(move || config.start())
            .await?
            .context("cannot start mosquitto (see mosquitto.log)")?;
        self.broker = Some(broker);
        Ok(())
    }

    /// Starts a node (it must not be running).
    pub fn start_node(&mut self, node: &str, mode: StartMode) -> Result<()> {
        let layout = self.layout.clone();
        let data_dir = self.spec.data_dir.join(node);
        std::fs::create_dir_all(&data_dir)?;
        let proc_ = self.nodes.get_mut(node).context("unknown node")?;
        if proc_.child.is_some() {
            bail!("{node} is already running");
        }
        proc_.starts += 1;
        let starts = proc_.starts;
        self.log(node, &format!("start #{starts} ({mode:?})"));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.spec.log_dir.join(format!("{node}.log")))?;
        let bin = self.node_bin.clone();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &layout.ns(node)])
            .arg(&bin)
            .args(["start", "--node-id", node])
            .args(["--grpc", &layout.grpc(node)])
            .args(["--gossip", &layout.gossip(node)])
            .args(["--http", &layout.http(node)])
            .arg("--data-dir")
            .arg(&data_dir)
            .args([
                "--failover-timeout-ms",
                &self.spec.failover_timeout.as_millis().to_string(),
            ]);
        match mode {
            StartMode::Bootstrap => {
                cmd.args(["--bootstrap", "--partitions", &self.spec.partitions.to_string()]);
            }
            StartMode::Join => {
                let seeds: Vec<String> = layout
                    .nodes
                    .iter()
                    .filter(|n| n.as_str() != node)
                    .map(|n| layout.gossip(n))
                    .collect();
                cmd.args(["--seed", &seeds.join(",")]);
            }
        }
        // The Python RouteMQ's variables, which RouteMQ honours for its MQTT ingress.
        cmd.env("ROUTEMQ_LOG", &self.spec.log_filter)
            .env("MQTT_BROKER", layout.broker_ip().to_string())
            .env("MQTT_PORT", MQTT_PORT.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let child = cmd.spawn().with_context(|| format!("cannot start {node}"))?;
        let proc_ = self.nodes.get_mut(node).expect("checked above");
        proc_.child = Some(child);
        proc_.paused = false;
        Ok(())
    }

    /// True when the node's process is running (possibly paused).
    pub fn is_running(&mut self, node: &str) -> bool {
        let Some(p) = self.nodes.get_mut(node) else {
            return false;
        };
        match p.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(_) => {
                p.child = None;
                false
            }
            None => false,
        }
    }

    /// Nodes whose process exited by itself (not killed by us): (node, exit status).
    pub fn exited(&mut self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (id, p) in self.nodes.iter_mut() {
            if let Some(child) = p.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    out.push((id.clone(), status.to_string()));
                    p.child = None;
                }
            }
        }
        out
    }

    fn pid(&self, node: &str) -> Option<i32> {
        self.nodes.get(node)?.child.as_ref()?.id().map(|p| p as i32)
    }

    /// kill -9, then waits for the process to go.
    pub async fn kill(&mut self, node: &str) -> Result<()> {
        self.log(node, "kill -9");
        let Some(p) = self.nodes.get_mut(node) else {
            bail!("unknown node {node}")
        };
        if let Some(mut child) = p.child.take() {
            let _ = child.start_kill();
            let _ = timeout(Duration::from_secs(10), child.wait()).await;
        }
        p.paused = false;
        Ok(())
    }

    /// kill -9 of every node in `nodes` at once (all signalled before any is reaped, so none
    /// sees another go first), then waits for each process to go.
    pub async fn kill_at_once(&mut self, nodes: &[String]) -> Result<()> {
        let mut children = Vec::new();
        for node in nodes {
            let Some(p) = self.nodes.get_mut(node) else {
                bail!("unknown node {node}")
            };
            if let Some(mut child) = p.child.take() {
                let _ = child.start_kill();
                children.push(child);
            }
            p.paused = false;
        }
        for node in nodes {
            self.log(node, "kill -9 (together with the other targets)");
        }
        for mut child in children {
            let _ = timeout(Duration::from_secs(10), child.wait()).await;
        }
        Ok(())
    }

    /// SIGSTOP.
    pub fn pause(&mut self, node: &str) -> Result<()> {
        let pid = self.pid(node).with_context(|| format!("{node} is not running"))?;
        self.log(node, "SIGSTOP");
        // SAFETY: kill(2) on the pid of a child we spawned.
        if unsafe { libc::kill(pid, libc::SIGSTOP) } != 0 {
            bail!("SIGSTOP {node}: {}", std::io::Error::last_os_error());
        }
        if let Some(p) = self.nodes.get_mut(node) {
            p.paused = true;
        }
        Ok(())
    }

    /// SIGCONT.
    pub fn resume(&mut self, node: &str) -> Result<()> {
        let Some(pid) = self.pid(node) else { return Ok(()) };
        self.log(node, "SIGCONT");
        // SAFETY: kill(2) on the pid of a child we spawned.
        if unsafe { libc::kill(pid, libc::SIGCONT) } != 0 {
            bail!("SIGCONT {node}: {}", std::io::Error::last_os_error());
        }
        if let Some(p) = self.nodes.get_mut(node) {
            p.paused = false;
        }
        Ok(())
    }

    /// True when the node is paused.
    pub fn is_paused(&self, node: &str) -> bool {
        self.nodes.get(node).is_some_and(|p| p.paused)
    }

    /// Deletes a (stopped) node's data directory.
    pub fn wipe(&mut self, node: &str) -> Result<()> {
        if self.pid(node).is_some() {
            bail!("{node} is running; kill it before wiping");
        }
        self.log(node, "wipe data directory");
        let dir = self.spec.data_dir.join(node);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("cannot wipe {}", dir.display()))?;
        }
        Ok(())
    }

    /// Waits until every node in `nodes` answers 200 on `/ready`.
    pub async fn wait_ready(&mut self, nodes: &[String], within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        let mut pending: Vec<String> = nodes.to_vec();
        while !pending.is_empty() {
            let mut still = Vec::new();
            for n in pending {
                if !self.is_running(&n) {
                    bail!("{n} exited while starting (see its log)");
                }
                if http_status(&self.layout.http(&n), "/ready", Duration::from_secs(1)).await != Some(200) {
                    still.push(n);
                }
            }
            pending = still;
            if pending.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                bail!("not ready within {within:?}: {}", pending.join(", "));
            }
            sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    /// A client over every node (short timeouts, for the nemesis and setup).
    pub fn admin_client(&self, total: Duration) -> Result<Client> {
        let options = ClientOptions::default()
            .with_connect_timeout(Duration::from_millis(500))
            .with_request_timeout(Duration::from_secs(2))
            .with_total_timeout(total)
            .with_discover_members(false);
        Ok(Client::new(self.grpc_addrs(), options)?)
    }

    /// The Raft leader's node id, from a linearizable status read; `None` if no leader
    /// answers within `within`.
    pub async fn leader(&self, within: Duration) -> Option<String> {
        let client = self.admin_client(within).ok()?;
        let status = timeout(within, client.status(ReadConsistency::Linearizable))
            .await
            .ok()?
            .ok()?;
        (!status.raft_leader.is_empty()).then_some(status.raft_leader)
    }

    /// Starts every node: the first bootstraps, the others join; waits until all are ready.
    pub async fn start_all(&mut self, within: Duration) -> Result<()> {
        let nodes = self.node_ids();
        let first = nodes[0].clone();
        self.start_node(&first, StartMode::Bootstrap)?;
        self.wait_ready(std::slice::from_ref(&first), within).await?;
        for n in &nodes[1..] {
            self.start_node(n, StartMode::Join)?;
        }
        self.wait_ready(&nodes, within).await?;
        // Every node a member of the ring.
        let client = self.admin_client(Duration::from_secs(10))?;
        let deadline = Instant::now() + within;
        loop {
            if let Ok(status) = client.status(ReadConsistency::Linearizable).await {
                if status.members.len() == nodes.len() && !status.raft_leader.is_empty() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the cluster did not reach {} members within {within:?}",
                    nodes.len()
                );
            }
            sleep(Duration::from_millis(300)).await;
        }
    }

    /// Stops everything: SIGCONT then SIGKILL every node and the broker, and waits for them.
    pub async fn stop_all(&mut self) {
        let ids = self.node_ids();
        for n in &ids {
            let _ = self.resume(n);
            if self.pid(n).is_some() {
                let _ = self.kill(n).await;
            }
        }
        if let Some(mut b) = self.broker.take() {
            b.kill();
        }
    }
}
