//! The load tool and its checker on a healthy 3-node cluster: a plain run passes, and each
//! kind of doctored history or report (a lost, reordered or duplicated message, two nodes
//! processing one partition at once) fails. This is what makes a pass of the rebalance,
//! failover and fencing tests mean something.
//!
//! Run alone: `cargo nextest run -p routemq-tests -E 'test(load_checker)' --no-capture`.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use routemq_tests::load::{
    cluster_with_route, exclusive, key_names, print_figures, read_journals, verify, Ack, Allow, Histories,
    LoadConfig, LoadGen, ROUTE,
};

#[tokio::test(flavor = "multi_thread")]
async fn load_checker_passes_a_plain_run_and_fails_doctored_ones() -> Result<()> {
    let _serial = exclusive().await?;
    let (cluster, targets) = cluster_with_route(3, &[], false).await?;
    let keys = key_names("dev-", 32);
    let config = LoadConfig {
        producers_per_key: 2,
        ..LoadConfig::new(ROUTE, keys.clone())
    };
    let load = LoadGen::start(config, targets.clone());
    load.wait_for_acks(300, Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let report = load.stop().await?;
    let journals = read_journals(&targets, ROUTE, &keys, Duration::from_secs(30)).await?;
    let histories = Histories::single("cluster", journals.clone());
    let verdict = verify(&report, &histories, Allow::default());
    print_figures("plain", &report, &verdict);
    verdict.ensure_ok()?;
    ensure!(report.acks.len() >= 300, "too little load: {}", report.summary());
    ensure!(report.failures.is_empty(), "{}", report.summary());
    ensure!(verdict.handovers.is_empty(), "no ownership change without faults");
    let nodes: std::collections::BTreeSet<&str> =
        report.acks.iter().map(|a| a.processed_by.as_str()).collect();
    ensure!(nodes.len() == 3, "every node processed some keys: {nodes:?}");
    drop(cluster);

    // The key with the most entries is doctored in each way in turn.
    let (key, entries) = journals
        .iter()
        .max_by_key(|(_, e)| e.len())
        .map(|(k, e)| (k.clone(), e.clone()))
        .expect("journals");
    ensure!(entries.len() >= 6, "{key} has {} entries", entries.len());
    let doctored = |f: &dyn Fn(&mut Vec<routemq_proto::v1::JournalEntry>)| {
        let mut journals = journals.clone();
        let entries = journals.get_mut(&key).expect("key");
        f(entries);
        verify(
            &report,
            &Histories::single("doctored", journals),
            Allow::default(),
        )
    };

    // Lost: an acknowledged entry removed (offsets renumbered so only the loss shows).
    let verdict = doctored(&|e| {
        e.remove(e.len() / 2);
        for (i, entry) in e.iter_mut().enumerate() {
            entry.offset = i as u64;
        }
    });
    println!("doctored (one entry removed): {}", verdict.summary());
    ensure!(
        !verdict.is_ok() && verdict.lost.len() == 1,
        "{}",
        verdict.details(3)
    );

    // Reordered: two messages of one producer swapped.
    let verdict = doctored(&|e| {
        let producer_of = |m: &str| m.rsplit(':').nth(1).map(str::to_string);
        let first = producer_of(&e[0].message_id);
        let j = (1..e.len())
            .find(|&j| producer_of(&e[j].message_id) == first)
            .expect("a second message of the same producer");
        let (a, b) = (e[0].clone(), e[j].clone());
        e[0].message_id = b.message_id;
        e[0].payload = b.payload;
        e[j].message_id = a.message_id;
        e[j].payload = a.payload;
    });
    println!("doctored (two messages swapped): {}", verdict.summary());
    ensure!(
        !verdict.is_ok() && !verdict.reordered.is_empty(),
        "{}",
        verdict.details(3)
    );

    // Duplicate: an entry journaled twice by its owner.
    let verdict = doctored(&|e| {
        let mut copy = e[1].clone();
        copy.offset = e.len() as u64;
        copy.processed_at_unix_ms = e[e.len() - 1].processed_at_unix_ms + 1;
        e.push(copy);
    });
    println!("doctored (an entry repeated): {}", verdict.summary());
    ensure!(
        !verdict.is_ok() && verdict.duplicates_same_owner.len() == 1,
        "{}",
        verdict.details(3)
    );

    // G2: another node processed the middle entry under a newer epoch while the owner went on
    // under the old one.
    let verdict = doctored(&|e| {
        let mid = e.len() / 2;
        e[mid].processed_by = "intruder".into();
        e[mid].epoch += 1;
    });
    println!("doctored (another node in the middle): {}", verdict.summary());
    ensure!(
        !verdict.is_ok() && !verdict.g2_violations.is_empty(),
        "{}",
        verdict.details(3)
    );

    // A doctored report: an acknowledgement of a message that was never journaled.
    let mut report = report.clone();
    let mut ghost: Ack = report.acks[0].clone();
    ghost.seq = 1_000_000;
    ghost.message_id = format!("{}:{}:{}", ghost.key, ghost.producer, ghost.seq);
    ghost.acked_at = Instant::now();
    report.acks.push(ghost);
    let verdict = verify(&report, &Histories::single("cluster", journals), Allow::default());
    println!("doctored report (a ghost acknowledgement): {}", verdict.summary());
    ensure!(
        !verdict.is_ok() && verdict.lost.len() == 1,
        "{}",
        verdict.details(3)
    );
    Ok(())
}
