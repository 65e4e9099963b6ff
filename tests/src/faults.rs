//! Faults the integration tests inject: a node cut off from the others by dropped packets.
//!
//! On loopback every node listens on its own address, but its *outgoing* gRPC connections
//! leave from `127.0.0.1` (the kernel's source for `127.0.0.0/8`), exactly like the test's own
//! client. Address rules alone therefore cannot tell "n1 calls n3" from "the test calls n3".
//! So each node runs in a cgroup v2 group of its own (entered between fork and exec, before
//! the node opens a single socket), and [`NetCut`] adds iptables `OUTPUT` rules that drop
//! every packet a node's sockets send to the isolated node's address, and every packet the
//! isolated node's sockets send to another node's address: gossip (UDP, bound to the node
//! addresses), Raft, lease renewal and forwarding (gRPC) all stop, while the test process
//! (in none of these groups) still reaches every node. Packets are dropped, not refused. The
//! rules carry a comment naming the cluster's subnet and are removed when the guard drops,
//! panics included.
//!
//! Needs root, `iptables` with the `cgroup` match, and a cgroup v2 hierarchy;
//! [`NetCut::unavailable`] says what is missing so a test can skip with a clear message.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::TestCluster;

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup` or, on hybrid systems,
/// `/sys/fs/cgroup/unified`).
pub fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, dir, kind) = (fields.next()?, fields.next()?, fields.next()?);
        (kind == "cgroup2").then(|| PathBuf::from(dir))
    })
}

/// Name of node `id`'s cgroup for a cluster on subnet `127.a.b.0/24` (relative to the root).
pub fn cgroup_name(subnet: (u8, u8), id: &str) -> String {
    format!("routemq-test-{}-{}-{id}", subnet.0, subnet.1)
}

/// Makes `command`'s process enter the cgroup `dir` (created if needed) before it execs, so
/// every socket it ever opens belongs to that group.
pub fn enter_cgroup_on_exec(command: &mut Command, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
    let procs = CString::new(dir.join("cgroup.procs").as_os_str().as_bytes())?;
    // SAFETY: between fork and exec only async-signal-safe calls: open, write, close on a path
    // prepared before the fork. Writing "0" to cgroup.procs moves the writing process itself.
    unsafe {
        command.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            let error = std::io::Error::last_os_error();
            libc::close(fd);
            if written != 1 {
                return Err(error);
            }
            Ok(())
        });
    }
    Ok(())
}

fn iptables(args: &[String]) -> Result<()> {
    let output = Command::new("iptables")
        .args(["-w", "5"])
        .args(args)
        .output()
        .context("running iptables")?;
    if !output.status.success() {
        bail!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// A node cut off from the other nodes of its cluster; healed on drop.
pub struct NetCut {
    rules: Vec<Vec<String>>,
}

impl NetCut {
    /// Why a cut cannot be made here (`None`: it can): not root, no iptables, no cgroup v2,
    /// or no `cgroup` match in iptables.
    pub fn unavailable() -> Option<String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Some("not running as root (iptables needs it)".into());
        }
        if Command::new("iptables")
            .arg("-V")
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            return Some("iptables is not installed".into());
        }
        let Some(root) = cgroup2_root() else {
            return Some("no cgroup v2 hierarchy is mounted".into());
        };
        let probe = root.join(format!("routemq-test-probe-{}", std::process::id()));
        if let Err(e) = std::fs::create_dir_all(&probe) {
            return Some(format!("cannot create a cgroup under {}: {e}", root.display()));
        }
        let name = probe
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let rule: Vec<String> = [
            "OUTPUT",
            "-m",
            "cgroup",
            "--path",
            &name,
            "-d",
            "127.255.255.254",
            "-j",
            "DROP",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut add = vec!["-I".to_string()];
        add.extend(rule.iter().cloned());
        let result = iptables(&add);
        if result.is_ok() {
            let mut delete = vec!["-D".to_string()];
            delete.extend(rule);
            let _ = iptables(&delete);
        }
        let _ = std::fs::remove_dir(&probe);
        result
            .err()
            .map(|e| format!("iptables cannot match by cgroup: {e:#}"))
    }

    /// Drops every packet between `victim` and the cluster's other nodes (both ways). The
    /// cluster must have been started with net cgroups
    /// ([`TestCluster::start_with_args`]).
    pub fn isolate(cluster: &TestCluster, victim: &str) -> Result<NetCut> {
        let victim_group = cluster
            .cgroup_of(victim)
            .context("the cluster was not started with net cgroups")?;
        let victim_ip = cluster.node(victim).ip.to_string();
        let tag = format!("routemq-test-{}", cluster.ip_for(0));
        let mut cut = NetCut { rules: Vec::new() };
        for (id, node) in &cluster.nodes {
            if id == victim {
                continue;
            }
            let other_group = cluster.cgroup_of(id).context("no cgroup")?;
            let other_ip = node.ip.to_string();
            for (group, destination) in [(&victim_group, &other_ip), (&other_group, &victim_ip)] {
                let rule: Vec<String> = [
                    "OUTPUT",
                    "-m",
                    "cgroup",
                    "--path",
                    group,
                    "-d",
                    destination,
                    "-m",
                    "comment",
                    "--comment",
                    &tag,
                    "-j",
                    "DROP",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                let mut add = vec!["-I".to_string()];
                add.extend(rule.iter().cloned());
                iptables(&add)?;
                cut.rules.push(rule);
            }
        }
        Ok(cut)
    }

    /// Removes the rules (also done on drop).
    pub fn heal(mut self) -> Result<()> {
        self.remove()
    }

    fn remove(&mut self) -> Result<()> {
        let mut first_error = None;
        for rule in self.rules.drain(..) {
            let mut delete = vec!["-D".to_string()];
            delete.extend(rule);
            if let Err(e) = iptables(&delete) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for NetCut {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            eprintln!("removing iptables rules: {e:#}");
        }
    }
}
