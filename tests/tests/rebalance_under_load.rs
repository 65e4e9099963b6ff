//! Planned ownership changes under load lose, reorder and duplicate nothing: a 4th and a 5th
//! node join, a node leaves through `routemq-ctl node leave`, and every node of the cluster
//! is restarted in turn (SIGTERM: graceful leave with handoff; then started again with its
//! data directory). The load tool ([`routemq_tests::load`]) publishes per-key sequences to
//! random live nodes throughout, retrying unacknowledged messages with the same id; the
//! checker then reads every key's journal through the cluster and requires every
//! acknowledged message, in producer order, once, with no two nodes processing one
//! partition at overlapping times, and every message acknowledged (no producer gave up).
//!
//! The mechanism these tests guard is the handoff: run them with
//! `ROUTEMQ_TEST_EXTRA_NODE_ARGS=--unsafe-no-handoff` and they must fail (the new owner starts
//! without the old owner's journal data and before it drained).
//!
//! Slow (a minute or more each, one at a time through the load lock). Run alone with
//! `cargo nextest run -p routemq-tests -E 'test(/^slow_rebalance_/)' --no-capture`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use routemq_tests::load::{
    cluster_with_route, exclusive, key_names, print_figures, read_journals, verify, Allow, Histories,
    LoadConfig, LoadGen, LoadReport, Targets, Verdict, ROUTE,
};
use routemq_tests::{run_binary, TestCluster};

/// Leave timeout the nodes run with (the default): a leave that takes this long was cut short.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(30);

fn load_config(keys: &[String]) -> LoadConfig {
    LoadConfig {
        producers_per_key: 2,
        ..LoadConfig::new(ROUTE, keys.to_vec())
    }
}

/// Reads the journals through the cluster, checks them strictly, prints the figures.
async fn check(test: &str, report: &LoadReport, targets: &Targets, keys: &[String]) -> Result<Verdict> {
    let journals = read_journals(targets, ROUTE, keys, Duration::from_secs(60)).await?;
    let verdict = verify(report, &Histories::single("cluster", journals), Allow::default());
    print_figures(test, report, &verdict);
    Ok(verdict)
}

/// Keys whose owner differs between two owner maps.
fn moved(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> Vec<String> {
    before
        .iter()
        .filter(|(k, owner)| after.get(*k) != Some(owner))
        .map(|(k, _)| k.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_rebalance_join_fourth_and_fifth_node_under_load() -> Result<()> {
    let _serial = exclusive().await?;
    let (mut cluster, targets) = cluster_with_route(3, &[], false).await?;
    let keys = key_names("dev-", 48);
    let owners_before = cluster.owners_of(&keys).await?;
    let load = LoadGen::start(load_config(&keys), targets.clone());
    load.wait_for_acks(300, Duration::from_secs(60)).await?;

    for id in ["n4", "n5"] {
        let started = Instant::now();
        let seed = cluster.node("n1").gossip();
        cluster.add_node(id, &["--seed", &seed])?;
        cluster.wait_ready(id, Duration::from_secs(60)).await?;
        let ready = started.elapsed();
        cluster.wait_member_active(id, Duration::from_secs(60)).await?;
        let active = started.elapsed();
        targets.add(id, &cluster.node(id).grpc())?;
        let since = Instant::now();
        let resumed = load
            .wait_all_keys_acked_since(since, Duration::from_secs(30))
            .await
            .context("every key processed again after the join")?;
        println!(
            "[join] {id}: ready after {:.2} s, active member with partitions after {:.2} s, every key acknowledged again {:.2} s later",
            ready.as_secs_f64(),
            active.as_secs_f64(),
            resumed.as_secs_f64()
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let owners_after = cluster.owners_of(&keys).await?;
    let report = load.stop().await?;
    let moved = moved(&owners_before, &owners_after);
    println!("[join] {} of {} keys moved to n4/n5", moved.len(), keys.len());
    let verdict = check("join", &report, &targets, &keys).await?;
    ensure!(
        moved
            .iter()
            .all(|k| ["n4", "n5"].contains(&owners_after[k].as_str())),
        "a join moves keys only to the new nodes"
    );
    ensure!(
        !moved.is_empty(),
        "no key moved: the test did not exercise a handoff"
    );
    // A moved key's journal, read after the move, holds the old owner's history too: the
    // checker's `lost` covers it; here the fact is shown explicitly.
    let handed = verdict
        .handovers
        .iter()
        .filter(|h| ["n4", "n5"].contains(&h.to.0.as_str()))
        .count();
    println!("[join] changes of processing node to n4/n5 seen in the journals: {handed}");
    verdict.ensure_ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_rebalance_graceful_leave_under_load() -> Result<()> {
    let _serial = exclusive().await?;
    let (mut cluster, targets) = cluster_with_route(4, &[], false).await?;
    cluster.wait_member_active("n4", Duration::from_secs(60)).await?;
    let keys = key_names("dev-", 48);
    let leader = cluster.leader().await?;
    // A voter that is not the leader: its leave changes the Raft voters as well as the ring.
    let leaver = ["n2", "n3"]
        .into_iter()
        .find(|id| *id != leader)
        .context("a non-leader voter")?
        .to_string();
    let owners_before = cluster.owners_of(&keys).await?;
    let load = LoadGen::start(load_config(&keys), targets.clone());
    load.wait_for_acks(300, Duration::from_secs(60)).await?;

    let other = if leaver == "n2" { "n3" } else { "n2" };
    let addr = cluster.node(other).grpc();
    let started = Instant::now();
    let ctl = tokio::task::spawn_blocking({
        let leaver = leaver.clone();
        move || {
            run_binary(
                "routemq-ctl",
                &["--addr", &addr, "--timeout", "60s", "node", "leave", &leaver],
                Duration::from_secs(90),
            )
        }
    });
    let code = cluster
        .wait_exit(&leaver, LEAVE_TIMEOUT + Duration::from_secs(15))
        .await?;
    let exited = started.elapsed();
    targets.remove(&leaver);
    let (ctl_code, ctl_output) = ctl.await??;
    println!(
        "[leave] routemq-ctl node leave {leaver}: exit {ctl_code:?}: {}",
        ctl_output.trim()
    );
    println!(
        "[leave] {leaver} exited with {code:?} {:.2} s after the leave command",
        exited.as_secs_f64()
    );
    ensure!(ctl_code == Some(0), "routemq-ctl node leave failed: {ctl_output}");
    ensure!(code == Some(0), "{leaver} exit code {code:?}");
    ensure!(
        exited < LEAVE_TIMEOUT,
        "{leaver} exited only after {exited:?}: the leave timed out instead of handing off"
    );
    let remaining: Vec<&str> = ["n1", "n2", "n3", "n4"]
        .into_iter()
        .filter(|id| *id != leaver)
        .collect();
    cluster
        .wait_member_gone(&leaver, &remaining, Duration::from_secs(30))
        .await?;
    let since = Instant::now();
    load.wait_all_keys_acked_since(since, Duration::from_secs(30))
        .await
        .context("every key processed again after the leave")?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let owners_after = cluster.owners_of(&keys).await?;
    let report = load.stop().await?;
    let moved = moved(&owners_before, &owners_after);
    println!(
        "[leave] {} of {} keys moved (all of them {leaver}'s)",
        moved.len(),
        keys.len()
    );
    let verdict = check("leave", &report, &targets, &keys).await?;
    ensure!(
        moved.iter().all(|k| owners_before[k] == leaver),
        "a leave moves only the leaver's keys"
    );
    ensure!(
        !moved.is_empty(),
        "{leaver} owned none of the keys: no handoff exercised"
    );
    verdict.ensure_ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_rebalance_rolling_restart_under_load() -> Result<()> {
    let _serial = exclusive().await?;
    let (mut cluster, targets) = cluster_with_route(3, &[], false).await?;
    let keys = key_names("dev-", 48);
    let load = LoadGen::start(load_config(&keys), targets.clone());
    load.wait_for_acks(300, Duration::from_secs(60)).await?;

    let all = ["n1", "n2", "n3"];
    for id in all {
        let started = Instant::now();
        cluster.signal(id, libc::SIGTERM)?;
        let code = cluster
            .wait_exit(id, LEAVE_TIMEOUT + Duration::from_secs(15))
            .await?;
        let exited = started.elapsed();
        targets.remove(id);
        ensure!(code == Some(0), "{id} exit code {code:?} after SIGTERM");
        ensure!(
            exited < LEAVE_TIMEOUT,
            "{id} exited only after {exited:?}: the leave timed out instead of handing off"
        );
        // Started again like a service manager would, with its data directory; it joins
        // through a running node (n1's first start bootstrapped the cluster).
        let seed = all
            .iter()
            .find(|other| **other != id)
            .map(|other| cluster.node(other).gossip())
            .context("another node")?;
        cluster.start_node(id, &["--seed", &seed])?;
        cluster.wait_ready(id, Duration::from_secs(60)).await?;
        let ready = started.elapsed();
        cluster.wait_member_active(id, Duration::from_secs(60)).await?;
        let active = started.elapsed();
        targets.add(id, &cluster.node(id).grpc())?;
        load.wait_all_keys_acked_since(Instant::now(), Duration::from_secs(30))
            .await
            .with_context(|| format!("every key processed again after restarting {id}"))?;
        println!(
            "[rolling] {id}: exited (code 0) {:.2} s after SIGTERM, ready again at {:.2} s, active with partitions at {:.2} s",
            exited.as_secs_f64(),
            ready.as_secs_f64(),
            active.as_secs_f64()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let report = load.stop().await?;
    let status = cluster
        .client()
        .await?
        .status(routemq_proto::v1::ReadConsistency::Linearizable)
        .await?;
    let members: Vec<&str> = status.members.iter().map(|m| m.node_id.as_str()).collect();
    println!(
        "[rolling] members after the restarts: {members:?}, epoch {}",
        status.epoch
    );
    ensure!(members.len() == 3, "every node is a member again: {members:?}");
    let verdict = check("rolling", &report, &targets, &keys).await?;
    ensure!(
        verdict.handovers.len() >= 3,
        "every restart moved partitions of the keys ({} changes of processing node)",
        verdict.handovers.len()
    );
    verdict.ensure_ok()
}

#[allow(dead_code)]
fn _uses(_: &TestCluster) {}
