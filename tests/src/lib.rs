//! Test harness: real `routemq` processes on loopback, driven through the client library.
//!
//! Each [`TestCluster`] gets its own loopback subnet (`127.a.b.0/24`, derived from the test
//! process id and a counter), and node `i` listens on `127.a.b.(i+1)` with fixed ports
//! (gRPC 7001, gossip 7101, HTTP 7201). Parallel tests therefore never compete for ports.
//! Data directories live in a temp dir that is removed afterwards; node logs are kept in it
//! and printed when a test fails through [`TestCluster::dump_logs`].
//!
//! Binaries come from `$ROUTEMQ_BIN_DIR`, else `$CARGO_TARGET_DIR/debug`, else
//! `target/debug`; `scripts/test.sh` builds them first.

pub mod faults;
pub mod load;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use routemq_client::Client;
use routemq_proto::v1 as pb;

/// Gossip port on every test node's own loopback address.
pub const GOSSIP_PORT: u16 = 7101;
/// gRPC port.
pub const GRPC_PORT: u16 = 7001;
/// HTTP port.
pub const HTTP_PORT: u16 = 7201;

/// Directory holding the `routemq` and `routemq-ctl` binaries.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ROUTEMQ_BIN_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir).join("debug");
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug")
}

/// Path of a binary, failing with a clear message if it was not built.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} not found: build it first (scripts/test.sh does: cargo build -p routemq-node -p routemq-client --bins)",
        path.display()
    );
    path
}

static CLUSTER_COUNTER: AtomicU32 = AtomicU32::new(0);

fn subnet() -> (u8, u8) {
    let pid = std::process::id();
    let n = CLUSTER_COUNTER.fetch_add(1, Ordering::Relaxed);
    (1 + (pid % 250) as u8, ((pid / 250 + n * 37) % 256) as u8)
}

/// One node process (running or stopped) of a test cluster.
pub struct TestNode {
    /// Node id (`n1`, `n2`, ...).
    pub id: String,
    /// Its loopback IP.
    pub ip: Ipv4Addr,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Its log file.
    pub log: PathBuf,
    /// Flags it was first started with (besides the standard ones); reused on restart.
    pub args: Vec<String>,
    child: Option<Child>,
}

impl TestNode {
    /// gRPC address.
    pub fn grpc(&self) -> String {
        SocketAddr::from((self.ip, GRPC_PORT)).to_string()
    }
    /// Gossip address.
    pub fn gossip(&self) -> String {
        SocketAddr::from((self.ip, GOSSIP_PORT)).to_string()
    }
    /// HTTP address.
    pub fn http(&self) -> String {
        SocketAddr::from((self.ip, HTTP_PORT)).to_string()
    }
    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
    /// Process id, if started.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
    /// The node's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A cluster of real `routemq` processes for one test.
pub struct TestCluster {
    /// Nodes by id.
    pub nodes: BTreeMap<String, TestNode>,
    subnet: (u8, u8),
    dir: tempfile::TempDir,
    /// Extra flags for every node (e.g. smaller partitions).
    pub extra_args: Vec<String>,
    /// cgroup v2 directory under which nodes are started, one cgroup each (see
    /// [`TestCluster::enable_net_cgroups`]).
    cgroups: Option<PathBuf>,
}

impl TestCluster {
    /// An empty cluster with its own subnet and temp dir.
    pub fn new() -> Result<Self> {
        Ok(Self {
            nodes: BTreeMap::new(),
            subnet: subnet(),
            // ROUTEMQ_TEST_KEEP=1 keeps data directories and logs for a post-mortem.
            dir: tempfile::Builder::new()
                .prefix("routemq-test-")
                .disable_cleanup(std::env::var_os("ROUTEMQ_TEST_KEEP").is_some())
                .tempdir()?,
            extra_args: Vec::new(),
            cgroups: None,
        })
    }

    /// Starts `n` nodes: n1 bootstraps, the others join through n1, and waits until all are
    /// ready.
    pub async fn start(n: usize) -> Result<Self> {
        let mut cluster = Self::new()?;
        cluster.add_node("n1", &["--bootstrap"])?;
        for i in 2..=n {
            let seed = cluster.node("n1").gossip();
            cluster.add_node(&format!("n{i}"), &["--seed", &seed])?;
        }
        for i in 1..=n {
            cluster
                .wait_ready(&format!("n{i}"), Duration::from_secs(60))
                .await?;
        }
        Ok(cluster)
    }

    /// The loopback IP of node number `index` (1-based) in this cluster's subnet.
    pub fn ip_for(&self, index: u8) -> Ipv4Addr {
        Ipv4Addr::new(127, self.subnet.0, self.subnet.1, index)
    }

    fn index_of(id: &str) -> u8 {
        id.trim_start_matches(|c: char| !c.is_ascii_digit())
            .parse()
            .unwrap_or(99)
    }

    /// Root temp dir of this cluster.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Registers node `id` and starts it with the standard addresses plus `args`.
    pub fn add_node(&mut self, id: &str, args: &[&str]) -> Result<()> {
        let ip = self.ip_for(Self::index_of(id));
        let node = TestNode {
            id: id.to_string(),
            ip,
            data_dir: self.dir.path().join(id),
            log: self.dir.path().join(format!("{id}.log")),
            args: args.iter().map(|a| a.to_string()).collect(),
            child: None,
        };
        self.nodes.insert(id.to_string(), node);
        self.start_node(id, args)
    }

    /// Restarts a stopped node with the flags it was first started with, like a service
    /// manager would.
    pub fn restart(&mut self, id: &str) -> Result<()> {
        let args = self.node(id).args.clone();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.start_node(id, &args)
    }

    /// Starts (or restarts) a registered node with `args` added to its standard flags.
    pub fn start_node(&mut self, id: &str, args: &[&str]) -> Result<()> {
        let extra = self.extra_args.clone();
        let mut command = Command::new(binary("routemq"));
        if let Some(cgroup) = self
            .cgroups
            .as_ref()
            .map(|dir| dir.join(faults::cgroup_name(self.subnet, id)))
        {
            faults::enter_cgroup_on_exec(&mut command, &cgroup)?;
        }
        let node = self.nodes.get_mut(id).context("unknown node")?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)?;
        let child = command
            .args(["start", "--node-id", id])
            .args([
                "--grpc",
                &node.grpc(),
                "--gossip",
                &node.gossip(),
                "--http",
                &node.http(),
            ])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(&extra)
            .args(args)
            .env("ROUTEMQ_LOG", "info,openraft=warn,chitchat=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn routemq")?;
        node.child = Some(child);
        Ok(())
    }

    /// The node `id`.
    pub fn node(&self, id: &str) -> &TestNode {
        &self.nodes[id]
    }

    /// Mutable node `id`.
    pub fn node_mut(&mut self, id: &str) -> &mut TestNode {
        self.nodes.get_mut(id).expect("unknown node")
    }

    /// kill -9.
    pub fn kill(&mut self, id: &str) {
        if let Some(mut child) = self.node_mut(id).child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait up to `timeout` for exit; returns the exit code.
    pub fn terminate(&mut self, id: &str, timeout: Duration) -> Option<i32> {
        let mut child = self.node_mut(id).child.take()?;
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// Waits for the node's process to exit by itself; returns its exit code.
    pub async fn wait_exit(&mut self, id: &str, timeout: Duration) -> Result<Option<i32>> {
        let deadline = Instant::now() + timeout;
        loop {
            let node = self.node_mut(id);
            if let Some(child) = node.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    node.child = None;
                    return Ok(status.code());
                }
            } else {
                bail!("{id} is not running");
            }
            if Instant::now() > deadline {
                let log = self.node(id).log_text();
                let tail: Vec<&str> = log.lines().rev().take(60).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!(
                    "{id} still running after {timeout:?}; the end of its log:\n{}",
                    tail.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A client that knows every node's gRPC address.
    pub async fn client(&self) -> Result<Client> {
        let seeds: Vec<String> = self.nodes.values().map(|n| n.grpc()).collect();
        Ok(Client::connect(seeds).await?)
    }

    /// A client bound to one node only.
    pub async fn client_of(&self, id: &str) -> Result<Client> {
        Ok(Client::connect([self.node(id).grpc()]).await?)
    }

    /// Waits until `GET /ready` on the node answers 200.
    pub async fn wait_ready(&mut self, id: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let http = self.node(id).http();
        loop {
            if http_get(&http, "/ready")
                .await
                .map(|(code, _)| code == 200)
                .unwrap_or(false)
            {
                return Ok(());
            }
            if !self.node_mut(id).is_running() {
                bail!(
                    "{id} exited while waiting for it to be ready:\n{}",
                    self.node(id).log_text()
                );
            }
            if Instant::now() > deadline {
                bail!("{id} not ready after {timeout:?}:\n{}", self.node(id).log_text());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Local status from one node.
    pub async fn local_status(&self, id: &str) -> Result<pb::ClusterStatus> {
        Ok(self
            .client_of(id)
            .await?
            .status(pb::ReadConsistency::Local)
            .await?)
    }

    /// Polls `check` until it returns Ok(Some(v)) or `timeout` passes.
    pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>>>,
    {
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            match check().await {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => last = "condition not met".into(),
                Err(e) => last = format!("{e:#}"),
            }
            if Instant::now() > deadline {
                bail!("{what}: not reached within {timeout:?} (last: {last})");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Prints every node's log (for failing tests).
    pub fn dump_logs(&self) {
        for node in self.nodes.values() {
            eprintln!("===== {} log =====\n{}", node.id, node.log_text());
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        for node in self.nodes.values_mut() {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if let Some(dir) = &self.cgroups {
            for id in self.nodes.keys() {
                let _ = std::fs::remove_dir(dir.join(faults::cgroup_name(self.subnet, id)));
            }
        }
    }
}

impl TestCluster {
    /// A `Routes` client connected to node `id`.
    pub async fn routes(
        &self,
        id: &str,
    ) -> Result<pb::routes_client::RoutesClient<tonic::transport::Channel>> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.node(id).grpc()))?
            .connect()
            .await?;
        Ok(pb::routes_client::RoutesClient::new(channel))
    }

    /// A `Messages` client connected to node `id`.
    pub async fn messages(
        &self,
        id: &str,
    ) -> Result<pb::messages_client::MessagesClient<tonic::transport::Channel>> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.node(id).grpc()))?
            .connect()
            .await?;
        Ok(pb::messages_client::MessagesClient::new(channel).max_decoding_message_size(64 << 20))
    }

    /// Creates a route through the leader (any node: follows NotLeader once).
    pub async fn put_route(&self, route: pb::Route) -> Result<pb::Route> {
        let leader = self
            .client()
            .await?
            .status(pb::ReadConsistency::Linearizable)
            .await?
            .raft_leader;
        let response = self
            .routes(&leader)
            .await?
            .put_route(pb::PutRouteRequest {
                route: Some(route),
                expected_version: None,
            })
            .await?;
        response.into_inner().route.context("no route in response")
    }

    /// Reads a whole journal from node `id`.
    pub async fn read_journal(&self, id: &str, route: &str, key: &str) -> Result<Vec<pb::JournalEntry>> {
        read_journal_with(&mut self.messages(id).await?, route, key).await
    }
}

/// Reads a whole journal through `client`.
pub async fn read_journal_with(
    client: &mut pb::messages_client::MessagesClient<tonic::transport::Channel>,
    route: &str,
    key: &str,
) -> Result<Vec<pb::JournalEntry>> {
    {
        let mut entries = Vec::new();
        let mut from = 0;
        loop {
            let page = client
                .read_journal(pb::ReadJournalRequest {
                    route: route.into(),
                    key: key.into(),
                    from_offset: from,
                    limit: 0,
                })
                .await?
                .into_inner();
            from = page.next_offset;
            entries.extend(page.entries);
            if page.end {
                return Ok(entries);
            }
        }
    }
}

/// An ordered route with the journal handler keyed by `{device_id}`.
pub fn ordered_journal_route(name: &str, pattern: &str) -> pb::Route {
    pb::Route {
        name: name.into(),
        pattern: pattern.into(),
        key_param: "device_id".into(),
        qos: 1,
        mode: pb::RouteMode::Ordered as i32,
        handler: Some(pb::Handler {
            kind: Some(pb::handler::Kind::Journal(pb::JournalHandler {})),
        }),
        ..Default::default()
    }
}

/// A real Mosquitto broker on the cluster's subnet (`127.a.b.100:1883`), with persistence so
/// persistent sessions survive as they would in production. Stopped on drop.
pub struct Mosquitto {
    /// `host:port`.
    pub addr: String,
    _broker: routemq_testkit::mosquitto::Mosquitto,
}

impl Mosquitto {
    /// Starts Mosquitto for `cluster` and waits until it accepts connections.
    pub async fn start(cluster: &TestCluster) -> Result<Self> {
        let config = routemq_testkit::mosquitto::MosquittoConfig::new()
            .listen(cluster.ip_for(100).to_string(), Some(1883))
            .max_queued(100_000)
            .max_inflight(1000);
        let broker = tokio::task::spawn_blocking(move || config.start())
            .await?
            .context("mosquitto did not start (scripts/test.sh installs it)")?;
        Ok(Self {
            addr: broker.addr().to_string(),
            _broker: broker,
        })
    }
}

/// Minimal HTTP GET over a TCP stream (no client crate needed for three endpoints).
pub async fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream =
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await??;
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await??;
    let text = String::from_utf8_lossy(&response).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("malformed HTTP response")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// Runs `routemq` with `args` to completion (for bad-input tests); returns (exit code, output).
pub fn run_routemq(args: &[&str], timeout: Duration) -> Result<(Option<i32>, String)> {
    let mut child = Command::new(binary("routemq"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait()?.is_some() {
            let output = child.wait_with_output()?;
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            return Ok((output.status.code(), text));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output()?;
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            return Ok((None, text));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Extra node flags from `ROUTEMQ_TEST_EXTRA_NODE_ARGS` (split on whitespace), appended to
/// every node of the clusters started with [`TestCluster::start_with_args`]. This is how the
/// rebalance and fencing tests are run with a mechanism switched off (`--unsafe-no-handoff`,
/// `--unsafe-no-fencing`) to show that they fail then.
pub fn env_extra_node_args() -> Vec<String> {
    std::env::var("ROUTEMQ_TEST_EXTRA_NODE_ARGS")
        .map(|v| v.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

impl TestCluster {
    /// Like [`TestCluster::start`], with `args` and then [`env_extra_node_args`] added to every
    /// node's flags (also to nodes added later and to restarts). With `net_cgroups`, every
    /// node runs in a cgroup of its own, which [`faults::NetCut`] needs; call
    /// [`faults::NetCut::unavailable`] first to know whether that can work here.
    pub async fn start_with_args(n: usize, args: &[&str], net_cgroups: bool) -> Result<Self> {
        let mut cluster = Self::new()?;
        cluster.extra_args = args.iter().map(|a| a.to_string()).collect();
        cluster.extra_args.extend(env_extra_node_args());
        if net_cgroups {
            cluster.enable_net_cgroups()?;
        }
        cluster.add_node("n1", &["--bootstrap"])?;
        for i in 2..=n {
            let seed = cluster.node("n1").gossip();
            cluster.add_node(&format!("n{i}"), &["--seed", &seed])?;
        }
        for i in 1..=n {
            cluster
                .wait_ready(&format!("n{i}"), Duration::from_secs(60))
                .await?;
        }
        Ok(cluster)
    }

    /// Starts every node started from now on in a cgroup v2 group of its own (created
    /// here, removed when the cluster drops), so that iptables can match a node's packets by
    /// process whatever their source address.
    pub fn enable_net_cgroups(&mut self) -> Result<()> {
        let root = faults::cgroup2_root().context("no cgroup v2 hierarchy mounted")?;
        self.cgroups = Some(root);
        Ok(())
    }

    /// The cgroup path (relative to the cgroup v2 root) node `id` runs in, if enabled.
    pub fn cgroup_of(&self, id: &str) -> Option<String> {
        self.cgroups
            .as_ref()
            .map(|_| faults::cgroup_name(self.subnet, id))
    }

    /// Sends `signal` (e.g. `libc::SIGSTOP`, `libc::SIGCONT`) to node `id`'s process.
    pub fn signal(&self, id: &str, signal: i32) -> Result<()> {
        let pid = self.node(id).pid().context("node not started")?;
        // SAFETY: kill(2) with a pid we spawned and still hold (not reaped, so not reused).
        if unsafe { libc::kill(pid as i32, signal) } != 0 {
            bail!("kill({pid}, {signal}): {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Ids of the nodes whose process runs.
    pub fn running(&mut self) -> Vec<String> {
        self.nodes
            .values_mut()
            .filter_map(|n| n.is_running().then(|| n.id.clone()))
            .collect()
    }

    /// Waits until every running node has applied route `name`.
    pub async fn wait_route_everywhere(&mut self, name: &str, timeout: Duration) -> Result<()> {
        for id in self.running() {
            let routes = self.routes(&id).await?;
            Self::eventually(timeout, &format!("route {name} applied on {id}"), || {
                let mut routes = routes.clone();
                async move {
                    let r = routes
                        .get_route(pb::GetRouteRequest {
                            name: name.into(),
                            consistency: pb::ReadConsistency::Local as i32,
                        })
                        .await?
                        .into_inner();
                    Ok(r.route.map(|_| ()))
                }
            })
            .await?;
        }
        Ok(())
    }

    /// Waits until a linearizable status (through any node) lists `id` as an active, alive
    /// member owning at least one partition; returns that status.
    pub async fn wait_member_active(&self, id: &str, timeout: Duration) -> Result<pb::ClusterStatus> {
        let client = self.client().await?;
        Self::eventually(timeout, &format!("{id} active member with partitions"), || {
            let client = client.clone();
            async move {
                let status = client.status(pb::ReadConsistency::Linearizable).await?;
                let ok = status.members.iter().any(|m| {
                    m.node_id == id
                        && m.state == "active"
                        && m.liveness == pb::Liveness::Alive as i32
                        && m.partitions > 0
                });
                Ok(ok.then_some(status))
            }
        })
        .await
    }

    /// Waits until a linearizable status (through any of `through`) no longer lists `id` as
    /// a member; returns that status.
    pub async fn wait_member_gone(
        &self,
        id: &str,
        through: &[&str],
        timeout: Duration,
    ) -> Result<pb::ClusterStatus> {
        let seeds: Vec<String> = through.iter().map(|n| self.node(n).grpc()).collect();
        let client = Client::connect(seeds).await?;
        Self::eventually(timeout, &format!("{id} removed from the members"), || {
            let client = client.clone();
            async move {
                let status = client.status(pb::ReadConsistency::Linearizable).await?;
                Ok((!status.members.iter().any(|m| m.node_id == id)).then_some(status))
            }
        })
        .await
    }

    /// Which node owns each of `keys` (linearizable, through any node).
    pub async fn owners_of(&self, keys: &[String]) -> Result<BTreeMap<String, String>> {
        let client = self.client().await?;
        let mut out = BTreeMap::new();
        for key in keys {
            let located = client
                .locate(key.clone(), pb::ReadConsistency::Linearizable)
                .await?;
            out.insert(key.clone(), located.owner);
        }
        Ok(out)
    }

    /// The Raft leader (linearizable status through any node).
    pub async fn leader(&self) -> Result<String> {
        Ok(self
            .client()
            .await?
            .status(pb::ReadConsistency::Linearizable)
            .await?
            .raft_leader)
    }
}

/// Runs binary `name` (from [`bin_dir`]) with `args` to completion; returns (exit code,
/// stdout and stderr). Killed after `timeout` (exit code `None`).
pub fn run_binary(name: &str, args: &[&str], timeout: Duration) -> Result<(Option<i32>, String)> {
    let mut child = Command::new(binary(name))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + timeout;
    let timed_out = loop {
        if child.try_wait()?.is_some() {
            break false;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break true;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = child.wait_with_output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((if timed_out { None } else { output.status.code() }, text))
}
