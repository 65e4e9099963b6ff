//! The test network: one network namespace per node and one for the broker, each with its
//! own address on a private bridge, plus iptables rules that drop packets between nodes.
//!
//! Layout (prefix `rmqj`, subnet `10.77.0.0/24`):
//!
//! ```text
//!  root namespace (the harness)            rmqj-net (bridge "br0")
//!  rmqj-host 10.77.0.1  <--veth-->  host ──┤
//!                                          ├── v-n1 <--veth--> rmqj-n1: eth0 10.77.0.11
//!                                          ├── ...                  ...
//!                                          ├── v-n5 <--veth--> rmqj-n5: eth0 10.77.0.15
//!                                          └── v-mq <--veth--> rmqj-mq: eth0 10.77.0.100 (Mosquitto)
//! ```
//!
//! The bridge lives in its own namespace, so the host's firewall (e.g. Docker's
//! `FORWARD DROP` with `br_netfilter`) never sees the test traffic, and nothing of the test is
//! routed anywhere but between these namespaces. The harness reaches every node directly
//! through `rmqj-host`; partitions are made *inside* node namespaces (`iptables -A INPUT -s
//! <peer> -j DROP`), so they cut node-to-node traffic (Raft, gossip, forwarding) and leave the
//! clients' view of each node intact, as in Jepsen.
//!
//! Invariants: every name this module creates starts with the prefix; [`teardown`] removes
//! exactly those (killing, by pid, only processes that live in those namespaces), and is
//! idempotent, so it also cleans up after a crashed earlier run. Non-goals: IPv6, latency or
//! loss shaping (tc) — only whole-link drops.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// Prefix of every namespace and interface the harness creates.
pub const PREFIX: &str = "rmqj";

/// gRPC port of every node (each node has its own address).
pub const GRPC_PORT: u16 = 7001;
/// Gossip port.
pub const GOSSIP_PORT: u16 = 7101;
/// HTTP port.
pub const HTTP_PORT: u16 = 7201;
/// MQTT port of the broker.
pub const MQTT_PORT: u16 = 1883;

/// Names and addresses of the test network.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Node ids, `n1` ...
    pub nodes: Vec<String>,
}

impl Layout {
    /// A layout for `n` nodes named `n1..n{n}` (at most 50).
    pub fn new(n: usize) -> Layout {
        Layout {
            nodes: (1..=n.min(50)).map(|i| format!("n{i}")).collect(),
        }
    }

    /// Namespace holding the bridge.
    pub fn bridge_ns(&self) -> String {
        format!("{PREFIX}-net")
    }

    /// Namespace of a node (or `mq` for the broker).
    pub fn ns(&self, node: &str) -> String {
        format!("{PREFIX}-{node}")
    }

    /// Root-namespace end of the harness' veth.
    pub fn host_if(&self) -> String {
        format!("{PREFIX}-host")
    }

    /// The harness' address.
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, 0, 1)
    }

    /// A node's address: `10.77.0.(10 + i)` for `n{i}`.
    pub fn ip(&self, node: &str) -> Ipv4Addr {
        let i = self
            .nodes
            .iter()
            .position(|n| n == node)
            .map(|i| i + 1)
            .unwrap_or(0);
        Ipv4Addr::new(10, 77, 0, 10 + i as u8)
    }

    /// The broker's address.
    pub fn broker_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, 0, 100)
    }

    /// `ip:port` of a node's gRPC listener.
    pub fn grpc(&self, node: &str) -> String {
        format!("{}:{GRPC_PORT}", self.ip(node))
    }

    /// `ip:port` of a node's gossip listener.
    pub fn gossip(&self, node: &str) -> String {
        format!("{}:{GOSSIP_PORT}", self.ip(node))
    }

    /// `ip:port` of a node's HTTP listener.
    pub fn http(&self, node: &str) -> String {
        format!("{}:{HTTP_PORT}", self.ip(node))
    }

    /// Node ids and the broker (`mq`): every namespace attached to the bridge.
    fn members(&self) -> Vec<(String, Ipv4Addr)> {
        let mut m: Vec<(String, Ipv4Addr)> = self.nodes.iter().map(|n| (n.clone(), self.ip(n))).collect();
        m.push(("mq".into(), self.broker_ip()));
        m
    }
}

/// Runs a command and returns its stdout, or an error with its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

fn ip(args: &[&str]) -> Result<String> {
    run("ip", args)
}

/// Fails unless we are root and `ip` and `iptables` exist.
pub fn preflight() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the fault tests must run as root (network namespaces, veth, iptables): try 'sudo scripts/jepsen.sh ...'");
    }
    for tool in ["ip", "iptables"] {
        if Command::new(tool).arg("-V").output().is_err() {
            bail!("'{tool}' not found: install iproute2 and iptables");
        }
    }
    Ok(())
}

/// Namespaces left over with our prefix.
pub fn leftover_namespaces() -> Vec<String> {
    let list = ip(&["netns", "list"]).unwrap_or_default();
    list.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("{PREFIX}-")))
        .map(String::from)
        .collect()
}

/// Process ids living in one of our namespaces.
pub fn pids_in(ns: &str) -> Vec<i32> {
    ip(&["netns", "pids", ns])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Removes everything with our prefix: kills (SIGKILL, by pid) the processes inside our
/// namespaces, deletes the namespaces and the root-namespace veth. Idempotent; returns what
/// it removed.
pub fn teardown() -> Vec<String> {
    let mut removed = Vec::new();
    let namespaces = leftover_namespaces();
    for ns in &namespaces {
        for pid in pids_in(ns) {
            // SAFETY: plain kill(2) of a pid that lives in our own test namespace.
            unsafe {
                libc::kill(pid, libc::SIGCONT);
                libc::kill(pid, libc::SIGKILL);
            }
            removed.push(format!("process {pid} in {ns}"));
        }
    }
    // Give the kernel a moment to reap them before the namespaces go.
    for _ in 0..50 {
        if namespaces.iter().all(|ns| pids_in(ns).is_empty()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for ns in &namespaces {
        if ip(&["netns", "del", ns]).is_ok() {
            removed.push(format!("namespace {ns}"));
        }
    }
    let host_if = format!("{PREFIX}-host");
    if ip(&["link", "show", &host_if]).is_ok() && ip(&["link", "del", &host_if]).is_ok() {
        removed.push(format!("link {host_if}"));
    }
    removed
}

/// Creates the namespaces, bridge and veths of `layout`. Call [`teardown`] first.
pub fn setup(layout: &Layout) -> Result<()> {
    let bridge_ns = layout.bridge_ns();
    ip(&["netns", "add", &bridge_ns])?;
    ip(&["-n", &bridge_ns, "link", "set", "lo", "up"])?;
    ip(&["-n", &bridge_ns, "link", "add", "br0", "type", "bridge"])?;
    ip(&["-n", &bridge_ns, "link", "set", "br0", "up"])?;

    let host_if = layout.host_if();
    ip(&[
        "link", "add", &host_if, "type", "veth", "peer", "name", "host", "netns", &bridge_ns,
    ])?;
    let host_cidr = format!("{}/24", layout.host_ip());
    ip(&["addr", "add", &host_cidr, "dev", &host_if])?;
    ip(&["link", "set", &host_if, "up"])?;
    ip(&["-n", &bridge_ns, "link", "set", "host", "master", "br0"])?;
    ip(&["-n", &bridge_ns, "link", "set", "host", "up"])?;

    for (name, addr) in layout.members() {
        let ns = layout.ns(&name);
        let bridge_if = format!("v-{name}");
        ip(&["netns", "add", &ns])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n", &bridge_ns, "link", "add", &bridge_if, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])?;
        ip(&["-n", &bridge_ns, "link", "set", &bridge_if, "master", "br0"])?;
        ip(&["-n", &bridge_ns, "link", "set", &bridge_if, "up"])?;
        let cidr = format!("{addr}/24");
        ip(&["-n", &ns, "addr", "add", &cidr, "dev", "eth0"])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
    }
    Ok(())
}

/// Who drops whose packets: node -> nodes whose packets it drops.
pub type Grudge = BTreeMap<String, BTreeSet<String>>;

/// Replaces the drop rules of every node with `grudge` (an empty grudge heals).
pub fn apply_grudge(layout: &Layout, grudge: &Grudge) -> Result<()> {
    for node in &layout.nodes {
        let ns = layout.ns(node);
        run("ip", &["netns", "exec", &ns, "iptables", "-w", "-F", "INPUT"])?;
        for peer in grudge.get(node).into_iter().flatten() {
            let src = layout.ip(peer).to_string();
            run(
                "ip",
                &[
                    "netns", "exec", &ns, "iptables", "-w", "-A", "INPUT", "-s", &src, "-j", "DROP",
                ],
            )?;
        }
    }
    Ok(())
}

/// The drop rules currently installed in a node's namespace (for checks and the report).
pub fn rules(layout: &Layout, node: &str) -> Result<String> {
    run(
        "ip",
        &["netns", "exec", &layout.ns(node), "iptables", "-w", "-S", "INPUT"],
    )
}
