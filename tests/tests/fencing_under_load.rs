//! An owner cut off from the majority stops processing before its partitions move, answers
//! `Unavailable` naming its lease, and after it heals processes nothing it no longer owns.
//!
//! Two ways of cutting a node off, under load from the load tool (producers publish to every
//! node, the cut-off one included, which the test process can still reach):
//! - `slow_fencing_isolated_owner_...`: real dropped packets. iptables drops every packet
//!   between the victim and the other nodes, both ways (see [`routemq_tests::faults`]). Skipped,
//!   saying why, unless run as root with iptables and cgroup v2.
//! - `slow_fencing_paused_owner_...`: the victim is frozen with SIGSTOP past its lease and
//!   past the failover timeout, then resumed; requests that reached it while it was frozen
//!   are in its sockets when it wakes up.
//!
//! Checked, besides the load checker's rules (nothing acknowledged lost, per-producer order,
//! duplicates only across the ownership change): after every node is stopped, the journals
//! on *every* node's disk are read (the victim's included, with whatever it wrote on its own
//! while cut off) and
//! - the victim processed nothing under an epoch older than the one that removed it once its
//!   lease had run out (cut + lease + 250 ms), and no acknowledgement says otherwise;
//! - per partition of the victim, its last processing time is before the new owner's first
//!   (G2; printed per partition);
//! - a publish sent straight to the victim for a key it owned answers `Unavailable`
//!   mentioning the lease (cut), or is not processed by the victim (after the pause, when it
//!   may already forward).
//!
//! The mechanism guarded is fencing by lease: run with
//! `ROUTEMQ_TEST_EXTRA_NODE_ARGS=--unsafe-no-fencing` and these tests must fail.
//!
//! Run alone: `cargo nextest run -p routemq-tests -E 'test(/^slow_fencing_/)' --no-capture`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use routemq_proto::v1 as pb;
use routemq_tests::faults::NetCut;
use routemq_tests::load::{
    cluster_with_route, exclusive, keys_by_owner, kill_all_and_read_disks, partitions_of, print_figures,
    unix_ms_now, verify, Allow, Histories, LoadConfig, LoadGen, LoadReport, Targets, ROUTE,
};
use routemq_tests::TestCluster;

/// The nodes' ownership lease (the default `--lease-ms`).
const LEASE: Duration = Duration::from_millis(1500);
/// How long the victim stays cut off or frozen: past lease, detection and failover timeout.
const CUT: Duration = Duration::from_secs(9);

/// Publishes one probe message straight to `node`.
async fn probe(
    targets: &Targets,
    node: &str,
    key: &str,
    n: u32,
) -> Result<Result<pb::PublishResponse, tonic::Status>> {
    let mut client = targets.client(node).context("victim is a target")?;
    let id = format!("{key}:0:{n}");
    let request = pb::PublishRequest {
        topic: format!("sensors/{key}/data"),
        payload: id.clone().into_bytes(),
        message_id: id,
        request_id: 0,
    };
    match tokio::time::timeout(Duration::from_secs(5), client.publish(request)).await {
        Ok(result) => Ok(result.map(|r| r.into_inner())),
        Err(_) => Ok(Err(tonic::Status::deadline_exceeded("no answer within 5 s"))),
    }
}

/// What the victim did, read from every node's disk after the test.
struct Findings {
    problems: Vec<String>,
}

/// Checks the histories read from the disks around a cut of `victim` that began at
/// `cut_unix_ms` and removed it at `removal_epoch`.
fn judge(
    test: &str,
    victim: &str,
    report: &LoadReport,
    histories: &Histories,
    cut_unix_ms: i64,
    removal_epoch: u64,
) -> Findings {
    let mut problems = Vec::new();
    let verdict = verify(
        report,
        histories,
        Allow {
            failover_duplicates: true,
            ..Allow::default()
        },
    );
    print_figures(test, report, &verdict);
    if !verdict.is_ok() {
        problems.push(verdict.details(10));
    }
    let fenced_from = cut_unix_ms + LEASE.as_millis() as i64 + 250;
    // Per partition: the victim's last entry under an old epoch, the others' first entry
    // under the removal epoch or later.
    // partition -> (last processing time of the cut-off node, first of another node and who)
    #[allow(clippy::type_complexity)]
    let mut per_partition: BTreeMap<u32, (Option<i64>, Option<(i64, String)>)> = BTreeMap::new();
    let mut stale = Vec::new();
    for copies in histories.keys.values() {
        for copy in copies {
            for e in &copy.entries {
                let slot = per_partition.entry(e.partition).or_default();
                if e.processed_by == victim && e.epoch < removal_epoch {
                    slot.0 = slot.0.max(Some(e.processed_at_unix_ms));
                    if e.processed_at_unix_ms > fenced_from {
                        stale.push(format!(
                            "{} in {}: processed by {victim} at epoch {} {} ms after the cut (lease {} ms)",
                            e.message_id,
                            copy.source,
                            e.epoch,
                            e.processed_at_unix_ms - cut_unix_ms,
                            LEASE.as_millis()
                        ));
                    }
                } else if e.processed_by != victim && e.epoch >= removal_epoch {
                    let first = (e.processed_at_unix_ms, e.processed_by.clone());
                    if slot.1.as_ref().is_none_or(|f| first.0 < f.0) {
                        slot.1 = Some(first);
                    }
                }
            }
        }
    }
    for (partition, slot) in &per_partition {
        if let (Some(last), Some((first, owner))) = slot {
            println!(
                "[{test}] p{partition}: {victim} last processed at cut{:+} ms, {owner} first at cut{:+} ms ({} ms apart)",
                last - cut_unix_ms,
                first - cut_unix_ms,
                first - last
            );
            if last > first {
                problems.push(format!(
                    "p{partition}: {victim} processed until cut{:+} ms, after {owner} began at cut{:+} ms",
                    last - cut_unix_ms,
                    first - cut_unix_ms
                ));
            }
        }
    }
    if !stale.is_empty() {
        problems.push(format!(
            "{} entries processed by the cut-off {victim} under a stale epoch after its lease ran out, e.g. {:?}",
            stale.len(),
            &stale[..stale.len().min(5)]
        ));
    }
    let stale_acks: Vec<String> = report
        .acks
        .iter()
        .filter(|a| a.processed_by == victim && a.epoch < removal_epoch && a.acked_unix_ms > fenced_from)
        .map(|a| {
            format!(
                "{} acked by {victim} at epoch {} cut+{} ms",
                a.message_id,
                a.epoch,
                a.acked_unix_ms - cut_unix_ms
            )
        })
        .collect();
    if !stale_acks.is_empty() {
        problems.push(format!(
            "{} acknowledgements from {victim} under a stale epoch after its lease ran out, e.g. {:?}",
            stale_acks.len(),
            &stale_acks[..stale_acks.len().min(5)]
        ));
    }
    Findings { problems }
}

/// The common part: a 3-node cluster under load, a non-leader victim with keys of its own.
struct Setup {
    cluster: TestCluster,
    targets: Targets,
    victim: String,
    majority: Vec<String>,
    keys: Vec<String>,
    probe_key: String,
    load: LoadGen,
    epoch_before: u64,
}

async fn setup(net_cgroups: bool) -> Result<Setup> {
    let (cluster, targets) = cluster_with_route(3, &[], net_cgroups).await?;
    let leader = cluster.leader().await?;
    let victim = ["n2", "n3"]
        .into_iter()
        .find(|id| *id != leader)
        .context("a non-leader")?
        .to_string();
    let majority: Vec<String> = ["n1", "n2", "n3"]
        .into_iter()
        .filter(|id| *id != victim)
        .map(str::to_string)
        .collect();
    let (owned, others) = keys_by_owner(&cluster, "dev-", &victim, 16, 16).await?;
    let (probe_keys, _) = keys_by_owner(&cluster, "probe-", &victim, 1, 0).await?;
    let keys: Vec<String> = owned.iter().chain(&others).cloned().collect();
    let load = LoadGen::start(
        LoadConfig {
            producers_per_key: 2,
            ..LoadConfig::new(ROUTE, keys.clone())
        },
        targets.clone(),
    );
    load.wait_for_acks(300, Duration::from_secs(60)).await?;
    let epoch_before = cluster
        .client()
        .await?
        .status(pb::ReadConsistency::Linearizable)
        .await?
        .epoch;
    Ok(Setup {
        cluster,
        targets,
        victim,
        majority,
        keys,
        probe_key: probe_keys.first().context("a probe key")?.clone(),
        load,
        epoch_before,
    })
}

/// Waits for the majority to remove the victim and for every key to be acknowledged again;
/// returns the removal epoch.
async fn wait_failover(test: &str, s: &Setup, cut_at: Instant) -> Result<u64> {
    let through: Vec<&str> = s.majority.iter().map(String::as_str).collect();
    let removed = s
        .cluster
        .wait_member_gone(&s.victim, &through, Duration::from_secs(30))
        .await
        .context("the majority removes the cut-off node")?;
    let removed_after = cut_at.elapsed();
    let resumed = s
        .load
        .wait_all_keys_acked_since(cut_at, Duration::from_secs(30))
        .await
        .context("every key acknowledged again after the cut")?;
    println!(
        "[{test}] {} removed by the majority after {:.2} s (epoch {} -> {}); every key acknowledged again after {:.2} s",
        s.victim,
        removed_after.as_secs_f64(),
        s.epoch_before,
        removed.epoch,
        resumed.as_secs_f64()
    );
    Ok(removed.epoch)
}

/// Stops the load, stops every node, reads every disk.
async fn finish(mut s: Setup) -> Result<(LoadReport, Histories, String)> {
    let report = s.load.stop().await?;
    let table = s
        .cluster
        .client()
        .await?
        .partitions(pb::ReadConsistency::Linearizable)
        .await?;
    let mut keys = s.keys.clone();
    keys.push(s.probe_key.clone());
    let partitions = partitions_of(&keys, &[&report], &table);
    let histories = kill_all_and_read_disks(&mut s.cluster, ROUTE, &partitions)?;
    let victim_errors: String = report
        .errors
        .iter()
        .filter(|e| e.node == s.victim)
        .fold(BTreeMap::<String, usize>::new(), |mut m, e| {
            *m.entry(format!("{:?}: {}", e.code, e.message)).or_default() += 1;
            m
        })
        .into_iter()
        .take(8)
        .map(|(k, n)| format!("\n  x{n} {k}"))
        .collect();
    println!("failed attempts on the victim {}:{victim_errors}", s.victim);
    Ok((report, histories, s.victim.clone()))
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_fencing_isolated_owner_stops_before_its_partitions_move() -> Result<()> {
    if let Some(reason) = NetCut::unavailable() {
        println!("SKIPPED: cannot drop packets between nodes here: {reason}");
        return Ok(());
    }
    let test = "cut";
    let _serial = exclusive().await?;
    let s = setup(true).await?;
    let cut_unix = unix_ms_now();
    let cut_at = Instant::now();
    let cut = NetCut::isolate(&s.cluster, &s.victim)?;
    println!("[{test}] {} cut off from {:?}", s.victim, s.majority);

    tokio::time::sleep(LEASE + Duration::from_secs(1)).await;
    let during = probe(&s.targets, &s.victim, &s.probe_key, 0).await?;
    println!(
        "[{test}] publish to {} {:.1} s into the cut: {during:?}",
        s.victim,
        cut_at.elapsed().as_secs_f64()
    );
    let removal_epoch = wait_failover(test, &s, cut_at).await?;
    if let Some(rest) = CUT.checked_sub(cut_at.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    cut.heal()?;
    let healed_after = cut_at.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = probe(&s.targets, &s.victim, &s.probe_key, 1).await?;
    println!(
        "[{test}] healed after {:.2} s; publish to {} right after: {after:?}",
        healed_after.as_secs_f64(),
        s.victim
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (report, histories, victim) = finish(s).await?;

    let mut findings = judge(test, &victim, &report, &histories, cut_unix, removal_epoch);
    match &during {
        Err(status)
            if status.code() == tonic::Code::Unavailable && status.message().to_lowercase().contains("lease") => {}
        other => findings.problems.push(format!(
            "a publish to the cut-off {victim} after its lease must answer UNAVAILABLE naming the lease, got {other:?}"
        )),
    }
    if let Ok(response) = &after {
        if response.processed_by == victim && response.epoch < removal_epoch {
            findings.problems.push(format!(
                "after healing, {victim} processed a key under stale epoch {}: {response:?}",
                response.epoch
            ));
        }
    }
    ensure!(findings.problems.is_empty(), "{}", findings.problems.join("\n"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_fencing_paused_owner_stops_before_its_partitions_move() -> Result<()> {
    let test = "pause";
    let _serial = exclusive().await?;
    let s = setup(false).await?;
    let paused_unix = unix_ms_now();
    let paused_at = Instant::now();
    s.cluster.signal(&s.victim, libc::SIGSTOP)?;
    println!("[{test}] {} frozen (SIGSTOP)", s.victim);
    let removal = wait_failover(test, &s, paused_at).await;
    if let Some(rest) = CUT.checked_sub(paused_at.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    s.cluster.signal(&s.victim, libc::SIGCONT)?;
    let resumed_after = paused_at.elapsed();
    let removal_epoch = removal?;
    let woken = probe(&s.targets, &s.victim, &s.probe_key, 0).await?;
    println!(
        "[{test}] resumed (SIGCONT) after {:.2} s; publish to {} right away: {woken:?}",
        resumed_after.as_secs_f64(),
        s.victim
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (report, histories, victim) = finish(s).await?;

    let mut findings = judge(test, &victim, &report, &histories, paused_unix, removal_epoch);
    match &woken {
        Err(status) if status.code() == tonic::Code::Unavailable => {}
        Ok(response) if response.processed_by != victim || response.epoch >= removal_epoch => {}
        other => findings.problems.push(format!(
            "a publish to {victim} as it wakes up past its lease must answer UNAVAILABLE or go to the new owner, got {other:?}"
        )),
    }
    ensure!(findings.problems.is_empty(), "{}", findings.problems.join("\n"));
    Ok(())
}
