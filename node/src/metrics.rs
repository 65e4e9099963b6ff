//! Prometheus metrics: names, descriptions, and the process-wide recorder.
//!
//! Every metric is prefixed `routemq_`. Gauges describing cluster state are set by the node's
//! status loop ([`record_cluster_gauges`]); the HTTP server renders them at `/metrics` and runs
//! the recorder's upkeep ([`UPKEEP_EVERY`]), so memory stays bounded without a scraper.
//! Latencies and batch sizes are real Prometheus histograms with fixed buckets
//! ([`LATENCY_BUCKETS`], [`BATCH_BUCKETS`]): they aggregate across nodes, unlike quantiles.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use metrics::{describe_gauge, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Ownership epoch of the config applied on this node.
pub const CONFIG_EPOCH: &str = "routemq_config_epoch";
/// Last applied config log index.
pub const CONFIG_APPLIED_INDEX: &str = "routemq_config_applied_index";
/// Committed config log index known to this node.
pub const CONFIG_COMMITTED_INDEX: &str = "routemq_config_committed_index";
/// Current Raft term.
pub const RAFT_TERM: &str = "routemq_raft_term";
/// 1 if this node is the Raft leader.
pub const RAFT_IS_LEADER: &str = "routemq_raft_is_leader";
/// Ring members in the applied config.
pub const RING_MEMBERS: &str = "routemq_ring_members";
/// Partitions this node owns at the applied epoch.
pub const PARTITIONS_OWNED: &str = "routemq_partitions_owned";
/// Nodes gossip sees alive (self included).
pub const GOSSIP_LIVE_NODES: &str = "routemq_gossip_live_nodes";
/// Nodes gossip sees dead.
pub const GOSSIP_DEAD_NODES: &str = "routemq_gossip_dead_nodes";
/// Messages whose handler completed, by route.
pub const MESSAGES_PROCESSED: &str = "routemq_messages_processed_total";
/// Messages whose handler failed, panicked or was rejected, by route.
pub const MESSAGES_FAILED: &str = "routemq_messages_failed_total";
/// Handler run time, by route.
pub const HANDLER_SECONDS: &str = "routemq_handler_seconds";
/// Messages received by ingress (gRPC publish, MQTT), by route and source.
pub const MESSAGES_RECEIVED: &str = "routemq_messages_received_total";
/// Messages forwarded to another node, by route.
pub const MESSAGES_FORWARDED: &str = "routemq_messages_forwarded_total";
/// Messages refused at the edge (no route, bad topic, too large), by reason.
pub const MESSAGES_REJECTED: &str = "routemq_messages_rejected_total";
/// Messages per forwarded batch.
pub const FORWARD_BATCH_SIZE: &str = "routemq_forward_batch_size";
/// Messages waiting for a forward acknowledgement, per peer.
pub const FORWARD_IN_FLIGHT: &str = "routemq_forward_in_flight";
/// Time from ingress to owner acceptance, by route.
pub const END_TO_END_SECONDS: &str = "routemq_end_to_end_seconds";
/// Publish requests answered with an error, by code.
pub const PUBLISH_ERRORS: &str = "routemq_publish_errors_total";
/// Messages rejected by a rate-limit middleware, by route.
pub const RATE_LIMITED: &str = "routemq_rate_limited_total";
/// 1 when `/ready` answers 200.
pub const READY: &str = "routemq_ready";
/// Ordered-route messages queued or running in this node's partition lanes.
pub const QUEUE_DEPTH: &str = "routemq_ordered_queue_depth";
/// Partitions per ownership phase on this node (label `phase`: active, fetching, draining,
/// handed_over).
pub const PARTITION_PHASE: &str = "routemq_partitions";
/// 1 while this node's ownership lease is valid.
pub const LEASE_VALID: &str = "routemq_lease_valid";
/// Members the leader failed over (removed as dead).
pub const FAILOVERS: &str = "routemq_failovers_total";
/// Always 1, labelled with the node's `version`.
pub const BUILD_INFO: &str = "routemq_build_info";
/// Bytes available (to the node's user) on the filesystem of the data directory.
pub const DISK_FREE_BYTES: &str = "routemq_disk_free_bytes";
/// Bytes the journal (and dead-letter journal) takes in the data directory.
pub const JOURNAL_BYTES: &str = "routemq_journal_bytes";

/// Bucket bounds (seconds) of the latency histograms: 100 us to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Bucket bounds (messages) of the batch-size histograms.
pub const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];
/// How often the HTTP server runs the recorder's upkeep (drains histogram samples into their
/// buckets); without it, samples pile up until the next scrape.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The recorder's settings: histograms with buckets for every histogram the node records.
fn builder() -> PrometheusBuilder {
    let with_latency = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(FORWARD_BATCH_SIZE.into()), BATCH_BUCKETS));
    match with_latency {
        Ok(builder) => builder,
        // Only an empty bucket list is refused; ours are constants.
        Err(e) => {
            tracing::warn!(error = %e, "histogram buckets refused; rendering summaries");
            PrometheusBuilder::new()
        }
    }
}

/// Installs the Prometheus recorder once per process and returns its handle (None if another
/// recorder was installed first, e.g. by an embedding application).
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| match builder().install_recorder() {
            Ok(handle) => {
                describe();
                record_build_info();
                Some(handle)
            }
            Err(e) => {
                tracing::warn!(error = %e, "prometheus recorder not installed; /metrics will be empty");
                None
            }
        })
        .clone()
}

fn describe() {
    describe_gauge!(CONFIG_EPOCH, "Ownership epoch of the config applied on this node");
    describe_gauge!(CONFIG_APPLIED_INDEX, "Last applied config (Raft) log index");
    describe_gauge!(
        CONFIG_COMMITTED_INDEX,
        "Committed config (Raft) log index known to this node"
    );
    describe_gauge!(RAFT_TERM, "Current Raft term");
    describe_gauge!(RAFT_IS_LEADER, "1 if this node is the Raft leader");
    describe_gauge!(RING_MEMBERS, "Ring members in the applied config");
    describe_gauge!(PARTITIONS_OWNED, "Partitions this node owns at the applied epoch");
    describe_gauge!(GOSSIP_LIVE_NODES, "Nodes gossip sees alive, self included");
    describe_gauge!(GOSSIP_DEAD_NODES, "Nodes gossip sees dead");
    describe_gauge!(READY, "1 when /ready answers 200");
    describe_gauge!(
        QUEUE_DEPTH,
        "Ordered-route messages queued or running in partition lanes"
    );
    describe_gauge!(PARTITION_PHASE, "Partitions per ownership phase on this node");
    describe_gauge!(LEASE_VALID, "1 while this node's ownership lease is valid");
    describe_gauge!(BUILD_INFO, "Always 1; the label `version` is the node's version");
    describe_gauge!(
        DISK_FREE_BYTES,
        metrics::Unit::Bytes,
        "Bytes available on the filesystem of the data directory"
    );
    describe_gauge!(
        JOURNAL_BYTES,
        metrics::Unit::Bytes,
        "Bytes the journal takes in the data directory"
    );
}

/// Sets `routemq_build_info{version}` to 1.
pub fn record_build_info() {
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// The data directory's figures, sampled by the status loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskGauges {
    /// Bytes available on the data directory's filesystem.
    pub free_bytes: u64,
    /// Bytes under the journal directory.
    pub journal_bytes: u64,
}

/// Samples the data directory (blocking: run it off the async threads). An error names the
/// path and the OS error.
pub fn sample_disk(data_dir: &Path, journal_dir: &Path) -> Result<DiskGauges, String> {
    let free_bytes = disk_free_bytes(data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))?;
    let journal_bytes = dir_bytes(journal_dir).map_err(|e| format!("{}: {e}", journal_dir.display()))?;
    Ok(DiskGauges {
        free_bytes,
        journal_bytes,
    })
}

/// Publishes the sampled data-directory figures.
pub fn record_disk_gauges(g: &DiskGauges) {
    gauge!(DISK_FREE_BYTES).set(g.free_bytes as f64);
    gauge!(JOURNAL_BYTES).set(g.journal_bytes as f64);
}

/// Bytes available to unprivileged users on the filesystem holding `path` (`statvfs`:
/// `f_bavail * f_frsize`, as `df` shows them).
pub fn disk_free_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c_path` is a valid NUL-terminated string and `stat` points to writable memory
    // of the right type; statvfs fills it in on success and we read it only then.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs succeeded, so `stat` is initialized (it was zeroed before, too).
    let stat = unsafe { stat.assume_init() };
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    Ok((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

/// Total size of the regular files under `dir`, recursively (symbolic links are not followed;
/// files that vanish during the walk, as RocksDB compacts, are skipped).
pub fn dir_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                total = total.saturating_add(meta.len());
            }
        }
    }
    Ok(total)
}

/// Cluster-state figures sampled by the status loop.
#[derive(Debug, Clone, Default)]
pub struct ClusterGauges {
    /// Applied epoch.
    pub epoch: u64,
    /// Applied log index.
    pub applied_index: u64,
    /// Committed log index.
    pub committed_index: u64,
    /// Raft term.
    pub term: u64,
    /// Leader or not.
    pub is_leader: bool,
    /// Ring members.
    pub members: usize,
    /// Partitions owned here.
    pub partitions_owned: u32,
    /// Gossip live count.
    pub live_nodes: usize,
    /// Gossip dead count.
    pub dead_nodes: usize,
    /// Readiness.
    pub ready: bool,
    /// Ordered messages queued or running.
    pub queue_depth: i64,
    /// Partitions active, fetching, draining, handed over.
    pub phases: [usize; 4],
    /// Lease valid.
    pub lease_valid: bool,
}

/// Publishes the sampled figures.
pub fn record_cluster_gauges(g: &ClusterGauges) {
    gauge!(CONFIG_EPOCH).set(g.epoch as f64);
    gauge!(CONFIG_APPLIED_INDEX).set(g.applied_index as f64);
    gauge!(CONFIG_COMMITTED_INDEX).set(g.committed_index as f64);
    gauge!(RAFT_TERM).set(g.term as f64);
    gauge!(RAFT_IS_LEADER).set(if g.is_leader { 1.0 } else { 0.0 });
    gauge!(RING_MEMBERS).set(g.members as f64);
    gauge!(PARTITIONS_OWNED).set(f64::from(g.partitions_owned));
    gauge!(GOSSIP_LIVE_NODES).set(g.live_nodes as f64);
    gauge!(GOSSIP_DEAD_NODES).set(g.dead_nodes as f64);
    gauge!(READY).set(if g.ready { 1.0 } else { 0.0 });
    gauge!(QUEUE_DEPTH).set(g.queue_depth as f64);
    for (phase, count) in ["active", "fetching", "draining", "handed_over"]
        .iter()
        .zip(g.phases)
    {
        gauge!(PARTITION_PHASE, "phase" => *phase).set(count as f64);
    }
    gauge!(LEASE_VALID).set(if g.lease_valid { 1.0 } else { 0.0 });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_and_batches_render_as_histograms_with_buckets() {
        let recorder = builder().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            metrics::histogram!(HANDLER_SECONDS, "route" => "r").record(0.003);
            metrics::histogram!(END_TO_END_SECONDS, "route" => "r").record(0.2);
            metrics::histogram!(FORWARD_BATCH_SIZE).record(10.0);
        });
        handle.run_upkeep();
        let text = handle.render();
        assert!(
            text.contains("routemq_handler_seconds_bucket{route=\"r\",le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("routemq_end_to_end_seconds_bucket{route=\"r\",le=\"0.1\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("routemq_forward_batch_size_bucket{le=\"16\"} 1"),
            "{text}"
        );
        assert!(!text.contains("quantile="), "no summaries left: {text}");
    }

    #[test]
    fn build_info_and_disk_gauges_render() {
        let recorder = builder().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            record_build_info();
            record_disk_gauges(&DiskGauges {
                free_bytes: 1_000_000,
                journal_bytes: 4096,
            });
        });
        let text = handle.render();
        let version = env!("CARGO_PKG_VERSION");
        assert!(
            text.contains(&format!("routemq_build_info{{version=\"{version}\"}} 1")),
            "{text}"
        );
        assert!(text.contains("routemq_disk_free_bytes 1000000"), "{text}");
        assert!(text.contains("routemq_journal_bytes 4096"), "{text}");
    }

    #[test]
    fn disk_figures_of_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("journal");
        std::fs::create_dir_all(journal.join("sub")).unwrap();
        std::fs::write(journal.join("a"), vec![0u8; 1000]).unwrap();
        std::fs::write(journal.join("sub").join("b"), vec![0u8; 234]).unwrap();
        let g = sample_disk(dir.path(), &journal).unwrap();
        assert_eq!(g.journal_bytes, 1234);
        assert!(g.free_bytes > 0, "a writable filesystem has room: {g:?}");
        let err = sample_disk(&dir.path().join("missing"), &journal).unwrap_err();
        assert!(err.contains("missing") && err.contains("No such file"), "{err}");
    }
}
