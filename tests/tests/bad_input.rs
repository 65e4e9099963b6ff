//! Bad input at start-up gets a clear error and a non-zero exit; nothing panics, and the
//! running cluster is not disturbed.

use std::time::Duration;

use anyhow::Result;
use routemq_proto::v1 as pb;
use routemq_tests::{run_routemq, TestCluster};

fn assert_clean_failure(code: Option<i32>, output: &str, expected: &str) {
    assert!(
        matches!(code, Some(c) if c != 0),
        "expected a non-zero exit, got {code:?}:\n{output}"
    );
    assert!(output.contains(expected), "expected {expected:?} in:\n{output}");
    assert!(!output.contains("panicked"), "panicked:\n{output}");
}

#[test]
fn malformed_config_file_and_flags_are_rejected() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("routemq.toml");
    std::fs::write(&file, "node_id = \"n1\"\ngrpc = \"not an address\"\n")?;
    let (code, out) = run_routemq(
        &["start", "--config", file.to_str().unwrap_or_default()],
        Duration::from_secs(10),
    )?;
    assert_clean_failure(code, &out, "malformed config file");

    std::fs::write(&file, "node_id = \"n1\"\nbootstrapp = true\n")?;
    let (code, out) = run_routemq(
        &["start", "--config", file.to_str().unwrap_or_default()],
        Duration::from_secs(10),
    )?;
    assert_clean_failure(code, &out, "unknown field");

    let (code, out) = run_routemq(
        &["start", "--config", "/nonexistent/routemq.toml"],
        Duration::from_secs(10),
    )?;
    assert_clean_failure(code, &out, "cannot read config file");

    let (code, out) = run_routemq(
        &["start", "--node-id", "bad id!", "--bootstrap"],
        Duration::from_secs(10),
    )?;
    assert_clean_failure(code, &out, "invalid node id");

    let empty = dir.path().join("empty");
    let (code, out) = run_routemq(
        &[
            "start",
            "--node-id",
            "n1",
            "--grpc",
            "127.254.254.254:7001",
            "--http",
            "127.254.254.254:7201",
            "--gossip",
            "127.254.254.254:7101",
            "--data-dir",
            empty.to_str().unwrap_or_default(),
        ],
        Duration::from_secs(10),
    )?;
    assert_clean_failure(code, &out, "--bootstrap");

    let (code, out) = run_routemq(
        &["start", "--node-id", "n1", "--seed", "nohostport"],
        Duration::from_secs(10),
    )?;
    assert_clean_failure(code, &out, "invalid seed");

    let (code, out) = run_routemq(
        &["start", "--node-id", "n1", "--bootstrap", "--partitions", "1000"],
        Duration::from_secs(10),
    )?;
    assert_clean_failure(code, &out, "ring parameters");

    let (code, out) = run_routemq(
        &["start", "--node-id", "n1", "--grpc", "localhost"],
        Duration::from_secs(10),
    )?;
    assert_clean_failure(code, &out, "invalid value");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn occupied_port_is_a_clear_error() -> Result<()> {
    let mut cluster = TestCluster::new()?;
    let ip = cluster.ip_for(1);
    let _occupier = std::net::TcpListener::bind((ip, routemq_tests::GRPC_PORT))?;
    cluster.add_node("n1", &["--bootstrap"])?;
    let code = cluster.wait_exit("n1", Duration::from_secs(20)).await?;
    let log = cluster.node("n1").log_text();
    assert_clean_failure(code, &log, "in use");
    assert!(log.contains("cannot listen for gRPC"), "{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_seeds_are_retried_and_reported() -> Result<()> {
    let mut cluster = TestCluster::new()?;
    let nobody = format!("{}:{}", cluster.ip_for(9), routemq_tests::GOSSIP_PORT);
    cluster.add_node("n1", &["--seed", &nobody])?;
    TestCluster::eventually(Duration::from_secs(20), "retry warning in the log", || {
        let log = cluster.node("n1").log_text();
        async move {
            Ok(log
                .contains("no RouteMQ node reachable through the seeds")
                .then_some(()))
        }
    })
    .await?;
    assert!(cluster.node_mut("n1").is_running(), "the node keeps retrying");
    // Not ready while it has no cluster.
    let (code, body) = routemq_tests::http_get(&cluster.node("n1").http(), "/ready").await?;
    assert_eq!(code, 503, "{body}");
    // And it stops cleanly on SIGTERM while waiting.
    assert_eq!(cluster.terminate("n1", Duration::from_secs(10)), Some(0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn locked_data_directory_is_refused() -> Result<()> {
    let mut cluster = TestCluster::start(1).await?;
    let data_dir = cluster.node("n1").data_dir.clone();
    let other = cluster.ip_for(7);
    let (code, out) = run_routemq(
        &[
            "start",
            "--node-id",
            "n1",
            "--bootstrap",
            "--grpc",
            &format!("{other}:7001"),
            "--gossip",
            &format!("{other}:7101"),
            "--http",
            &format!("{other}:7201"),
            "--data-dir",
            data_dir.to_str().unwrap_or_default(),
        ],
        Duration::from_secs(20),
    )?;
    assert_clean_failure(code, &out, "locked by another running routemq process");
    // The running node is unharmed.
    cluster.wait_ready("n1", Duration::from_secs(5)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn data_directory_of_another_node_or_cluster_is_refused() -> Result<()> {
    // Cluster A: one node, stopped, keeps its data directory.
    let mut a = TestCluster::start(1).await?;
    assert_eq!(a.terminate("n1", Duration::from_secs(20)), Some(0));
    let a_dir = a.node("n1").data_dir.clone();

    // Cluster B, running.
    let mut b = TestCluster::start(1).await?;
    let b_seed = b.node("n1").gossip();

    // A's directory under another node id.
    let ip = b.ip_for(5);
    let addrs = |ip: std::net::Ipv4Addr| {
        vec![
            "--grpc".to_string(),
            format!("{ip}:7001"),
            "--gossip".to_string(),
            format!("{ip}:7101"),
            "--http".to_string(),
            format!("{ip}:7201"),
        ]
    };
    let mut args: Vec<String> = vec![
        "start".into(),
        "--node-id".into(),
        "n9".into(),
        "--seed".into(),
        b_seed.clone(),
    ];
    args.extend(addrs(ip));
    args.extend(["--data-dir".to_string(), a_dir.display().to_string()]);
    let args_ref: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out) = run_routemq(&args_ref, Duration::from_secs(20))?;
    assert_clean_failure(code, &out, "belongs to node \"n1\"");

    // A's directory, right node id, but seeds of cluster B.
    let mut args: Vec<String> = vec![
        "start".into(),
        "--node-id".into(),
        "n1".into(),
        "--seed".into(),
        b_seed,
    ];
    args.extend(addrs(ip));
    args.extend(["--data-dir".to_string(), a_dir.display().to_string()]);
    let args_ref: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out) = run_routemq(&args_ref, Duration::from_secs(30))?;
    assert_clean_failure(code, &out, "belongs to cluster");

    // Cluster B is undisturbed.
    b.wait_ready("n1", Duration::from_secs(5)).await?;
    let status = b
        .client()
        .await?
        .status(pb::ReadConsistency::Linearizable)
        .await?;
    assert_eq!(status.members.len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn node_id_of_a_live_member_is_refused() -> Result<()> {
    let mut cluster = TestCluster::start(2).await?;
    // A second process calling itself n2, with a fresh data directory, at another address.
    let ip = cluster.ip_for(8);
    let dir = cluster.dir().join("impostor");
    let seed = cluster.node("n1").gossip();
    let (code, out) = run_routemq(
        &[
            "start",
            "--node-id",
            "n2",
            "--seed",
            &seed,
            "--grpc",
            &format!("{ip}:7001"),
            "--gossip",
            &format!("{ip}:7101"),
            "--http",
            &format!("{ip}:7201"),
            "--data-dir",
            dir.to_str().unwrap_or_default(),
        ],
        Duration::from_secs(40),
    )?;
    assert_clean_failure(code, &out, "already used by a live member");
    let status = cluster
        .client()
        .await?
        .status(pb::ReadConsistency::Linearizable)
        .await?;
    assert_eq!(status.members.len(), 2);
    cluster.wait_ready("n2", Duration::from_secs(5)).await?;
    Ok(())
}
