//! One test, end to end: network, cluster, workload, nemesis schedule, heal, final reads,
//! checkers, report.
//!
//! Phases and their time bounds:
//! 1. setup: remove leftovers of an earlier run, create namespaces, start Mosquitto and the 5
//!    nodes, wait until all are ready (at most 90 s);
//! 2. run (`time_limit`): clients work; the nemesis alternates `heal` and `fault` windows
//!    (first a quiet `heal` window, then fault, heal, fault, ...);
//! 3. heal: the active fault is undone, every rule flushed, every node running and resumed,
//!    then `settle` seconds of quiet;
//! 4. final reads by fresh processes, at most `final_wait` (60 s): failing reads are retried
//!    on the next node; stream keys whose journal still lacks acknowledged messages are re-read
//!    every 2 s until nothing is missing or the time is up (G4 judges the last read);
//! 5. the cluster is stopped (kill -9), logs stay, data directories are deleted, the network is
//!    torn down; then the checkers run and `results.json` and `report.html` are written.
//!
//! Teardown also happens when the test fails, panics or is interrupted: [`NetGuard`] removes
//! the namespaces (killing their processes) when dropped, and node processes are spawned with
//! `kill_on_drop`. The whole test is bounded by `time_limit + 5 min`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::task::JoinSet;
use tokio::time::{sleep, Instant};

use crate::checker::{self, wgl::Budget, CheckResult};
use crate::cluster::{Cluster, ClusterSpec};
use crate::history::{self, Recorder};
use crate::nemesis::{Nemesis, NemesisKind};
use crate::net::{self, Layout};
use crate::report;
use crate::suite::{self, Expectation};
use crate::workload::{register, stream, WorkloadConfig, WorkloadKind};

/// Everything one test needs.
#[derive(Debug, Clone)]
pub struct TestConfig {
    /// The workload.
    pub workload: WorkloadKind,
    /// The nemesis.
    pub nemesis: NemesisKind,
    /// Length of the run phase.
    pub time_limit: Duration,
    /// Length of a fault window.
    pub fault: Duration,
    /// Length of a heal window.
    pub heal: Duration,
    /// Quiet time after the final heal, before the final reads.
    pub settle: Duration,
    /// Bound of the final reads: retries of failing reads, and (stream) re-reads while
    /// acknowledged messages are still missing.
    pub final_wait: Duration,
    /// Workload settings.
    pub workload_cfg: WorkloadConfig,
    /// Ring partitions.
    pub partitions: u32,
    /// Nodes (5 by default).
    pub nodes: usize,
    /// RNG seed of the workload and nemesis.
    pub seed: u64,
    /// `jepsen/store`.
    pub store: PathBuf,
    /// Directory with `routemq`.
    pub bin_dir: PathBuf,
    /// The nodes' failover timeout (`--failover-timeout-ms` of every node).
    pub failover_timeout: Duration,
    /// G5 bound: by default [`suite::G5Bound::bound`] of the failover timeout.
    pub failover_bound: Duration,
    /// Keep node data directories after the run.
    pub keep_data: bool,
    /// `ROUTEMQ_LOG` of the nodes.
    pub log_filter: String,
}

impl TestConfig {
    /// `workload-nemesis` (`register-local-reads-nemesis` for the stale-read demonstration).
    pub fn name(&self) -> String {
        let local = if self.workload == WorkloadKind::Register && self.workload_cfg.local_reads {
            "-local-reads"
        } else {
            ""
        };
        format!("{}{local}-{}", self.workload.name(), self.nemesis.name())
    }
}

/// A checker result with what the suite expects of it.
#[derive(Debug, Clone, Serialize)]
pub struct Judged {
    /// The result.
    #[serde(flatten)]
    pub result: CheckResult,
    /// `pass` or `known-limit`.
    pub expected: String,
    /// Why it is a known limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub known_limit: Option<String>,
}

impl Judged {
    /// A failure of a check that is expected to pass.
    pub fn is_regression(&self) -> bool {
        self.known_limit.is_none() && self.result.verdict.is_failure()
    }
}

/// What a test produced.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// `workload-nemesis`.
    pub test: String,
    /// The run directory.
    pub dir: PathBuf,
    /// Verdict per checker.
    pub checks: Vec<Judged>,
    /// Whether the workload could exercise the system ("ran" or why not).
    pub workload_status: String,
    /// Operation counts.
    pub counts: history::Counts,
    /// Wall-clock seconds the whole test took (setup to report).
    pub elapsed_s: f64,
}

impl Outcome {
    /// True when no check that is expected to pass failed.
    pub fn ok(&self) -> bool {
        !self.checks.iter().any(Judged::is_regression)
    }
}

/// Removes the test network when dropped (also on panic or interruption).
pub struct NetGuard;

impl Drop for NetGuard {
    fn drop(&mut self) {
        let removed = net::teardown();
        if !removed.is_empty() {
            eprintln!(
                "teardown: removed {} items ({})",
                removed.len(),
                removed.iter().filter(|r| r.starts_with("namespace")).count()
            );
        }
    }
}

/// Holds an exclusive lock so two harnesses never share the namespace prefix.
pub struct RunLock {
    _file: std::fs::File,
}

impl RunLock {
    /// Takes the lock or fails.
    pub fn acquire() -> Result<RunLock> {
        let path = std::env::temp_dir().join("routemq-jepsen.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        use std::os::fd::AsRawFd;
        // SAFETY: flock(2) on a file descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            bail!(
                "another routemq-jepsen run holds {} (one run at a time)",
                path.display()
            );
        }
        Ok(RunLock { _file: file })
    }
}

/// UTC `YYYYmmddTHHMMSSZ` of a Unix time in seconds.
pub fn timestamp(unix_secs: i64) -> String {
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        secs / 3600,
        (secs % 3600) / 60,
        secs % 60
    )
}

fn say(msg: &str) {
    eprintln!("\x1b[1m==> {msg}\x1b[0m");
}

/// Runs one test (needs root). Leftovers of an earlier run are removed first.
pub async fn run_test(cfg: &TestConfig) -> Result<Outcome> {
    let started = std::time::Instant::now();
    net::preflight()?;
    let _lock = RunLock::acquire()?;
    let leftovers = net::teardown();
    if !leftovers.is_empty() {
        say(&format!(
            "removed leftovers of an earlier run: {}",
            leftovers.join(", ")
        ));
    }
    let dir = cfg
        .store
        .join(cfg.name())
        .join(timestamp(history::unix_ms_now() / 1000));
    let nodes_dir = dir.join("nodes");
    let data_dir = dir.join("data");
    std::fs::create_dir_all(&nodes_dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let latest = cfg.store.join(cfg.name()).join("latest");
    let _ = std::fs::remove_file(&latest);
    let _ = std::os::unix::fs::symlink(dir.file_name().unwrap_or_default(), &latest);
    say(&format!("{}: {}", cfg.name(), dir.display()));

    let overall = cfg.time_limit + Duration::from_secs(300);
    let result = {
        let _guard = NetGuard;
        let phases = run_phases(cfg, &dir, &nodes_dir, &data_dir);
        match tokio::time::timeout(overall, phases).await {
            Ok(r) => r,
            Err(_) => Err(anyhow::anyhow!(
                "the test did not finish within {overall:?}; aborted"
            )),
        }
    };
    if !cfg.keep_data {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    let run = result?;
    analyse(cfg, &dir, run, started)
}

/// What the run phases hand to the analysis.
struct Run {
    recorder: Arc<Recorder>,
    workload_status: String,
    end_of_run_ns: u64,
    heal: Value,
    exited: Vec<(String, String)>,
    final_reads: Value,
    binary: Value,
}

async fn run_phases(cfg: &TestConfig, dir: &Path, nodes_dir: &Path, data_dir: &Path) -> Result<Run> {
    let layout = Layout::new(cfg.nodes);
    net::setup(&layout).context("creating the test network")?;
    let bin = cfg.bin_dir.join("routemq");
    let binary = std::fs::metadata(&bin)
        .map(|m| {
            json!({"path": bin.display().to_string(), "bytes": m.len(),
                   "modified_unix_s": m.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_secs())})
        })
        .unwrap_or(Value::Null);
    let mut cluster = Cluster::new(
        layout.clone(),
        ClusterSpec {
            bin_dir: cfg.bin_dir.clone(),
            data_dir: data_dir.to_path_buf(),
            log_dir: nodes_dir.to_path_buf(),
            partitions: cfg.partitions,
            failover_timeout: cfg.failover_timeout,
            log_filter: cfg.log_filter.clone(),
        },
    )?;
    say("starting mosquitto and 5 nodes in their namespaces");
    cluster.start_broker().await?;
    cluster.start_all(Duration::from_secs(90)).await?;
    say("cluster ready");

    let recorder = Recorder::new(Some(&dir.join("history.jsonl")))?;
    let nodes: Vec<(String, String)> = layout.nodes.iter().map(|n| (n.clone(), layout.grpc(n))).collect();
    let n_clients = (cfg.workload_cfg.clients_per_node * nodes.len()) as u64;
    let n_mqtt = match cfg.workload {
        WorkloadKind::OrderedStream => cfg.workload_cfg.mqtt_producers as u64,
        WorkloadKind::Register => 0,
    };
    // Process ids: clients 0..n, MQTT producers, then the reader; a crashed process p
    // continues as p + stride.
    let stride = n_clients + n_mqtt + 1;
    let mut workload_cfg = cfg.workload_cfg.clone();
    workload_cfg.broker = format!("{}:{}", layout.broker_ip(), net::MQTT_PORT);

    // Workload setup.
    let mut workload_status = "ran".to_string();
    if cfg.workload == WorkloadKind::OrderedStream {
        if let Err(e) = stream::setup(&recorder, &nodes, 1_000_000, Duration::from_secs(30)).await {
            workload_status = format!("could not run: creating the journal route failed: {e}");
            say(&workload_status);
        }
    }

    // Run phase.
    let start = Instant::now();
    let deadline = start + cfg.time_limit;
    say(&format!(
        "running {} for {:?} with nemesis {}",
        cfg.workload.name(),
        cfg.time_limit,
        cfg.nemesis.name()
    ));
    let mut tasks = JoinSet::new();
    let register_shared = register::Shared::new(cfg.workload_cfg.keys, cfg.workload_cfg.ops_per_key);
    let stream_keys = Arc::new(stream::keys(cfg.workload_cfg.keys));
    for c in 0..n_clients {
        let (node, addr) = nodes[c as usize % nodes.len()].clone();
        let seed = cfg.seed.wrapping_mul(1_000_003).wrapping_add(c);
        match cfg.workload {
            WorkloadKind::Register => {
                let spec = register::ClientSpec {
                    process: c,
                    stride,
                    node,
                    addr,
                    seed,
                };
                tasks.spawn(register::run_client(
                    spec,
                    register_shared.clone(),
                    workload_cfg.clone(),
                    recorder.clone(),
                    deadline,
                ));
            }
            WorkloadKind::OrderedStream => {
                let spec = stream::ProducerSpec {
                    process: c,
                    stride,
                    node,
                    addr,
                    seed,
                };
                tasks.spawn(stream::run_producer(
                    spec,
                    stream_keys.clone(),
                    workload_cfg.clone(),
                    recorder.clone(),
                    deadline,
                ));
            }
        }
    }
    for m in 0..n_mqtt {
        let spec = stream::ProducerSpec {
            process: n_clients + m,
            stride,
            node: "mqtt".into(),
            addr: workload_cfg.broker.clone(),
            seed: cfg.seed.wrapping_mul(1_000_003).wrapping_add(n_clients + m),
        };
        tasks.spawn(stream::run_mqtt_producer(
            spec,
            stream_keys.clone(),
            workload_cfg.clone(),
            recorder.clone(),
            deadline,
        ));
    }
    if cfg.workload == WorkloadKind::OrderedStream {
        let spec = stream::ReaderSpec {
            process: n_clients + n_mqtt,
            nodes: nodes.clone(),
            period: Duration::from_secs(2),
            op_timeout: cfg.workload_cfg.op_timeout * 2,
            seed: cfg.seed ^ 0x5eed,
        };
        tasks.spawn(stream::run_reader(
            spec,
            stream_keys.clone(),
            recorder.clone(),
            deadline,
        ));
    }

    // The nemesis owns the cluster during the run and hands it back healed.
    let mut nemesis = Nemesis::new(
        cluster,
        recorder.clone(),
        StdRng::seed_from_u64(cfg.seed ^ 0xfa17),
    );
    let kind = cfg.nemesis;
    let (fault, heal) = (cfg.fault, cfg.heal);
    let nemesis_task = tokio::spawn(async move {
        if kind != NemesisKind::None {
            loop {
                if Instant::now() + heal >= deadline {
                    break;
                }
                sleep(heal).await;
                if Instant::now() + Duration::from_secs(2) >= deadline {
                    break;
                }
                nemesis.start(kind).await;
                let until = (Instant::now() + fault).min(deadline);
                tokio::time::sleep_until(until).await;
                nemesis.stop().await;
            }
        } else {
            tokio::time::sleep_until(deadline).await;
        }
        nemesis
    });
    while let Some(joined) = tasks.join_next().await {
        joined.context("a client task panicked")?;
    }
    let mut nemesis = nemesis_task.await.context("the nemesis task panicked")?;
    let end_of_run_ns = recorder.now_ns();
    say("healing");
    let heal_value = nemesis.heal_all().await;
    let mut cluster = nemesis.into_cluster();
    say(&format!("settling for {:?}", cfg.settle));
    sleep(cfg.settle).await;

    say("final reads");
    let final_process = 2_000_000;
    let final_reads = match cfg.workload {
        WorkloadKind::Register => {
            let unread = register::final_reads(
                &register_shared,
                &recorder,
                &nodes,
                final_process,
                cfg.workload_cfg.op_timeout,
                cfg.final_wait,
            )
            .await;
            json!({ "unread": unread })
        }
        WorkloadKind::OrderedStream => {
            let reads = stream::final_reads(
                &recorder,
                &nodes,
                &stream_keys,
                final_process,
                cfg.workload_cfg.op_timeout * 2,
                cfg.final_wait,
            )
            .await;
            say(&format!(
                "final reads: {} rounds, {} acknowledged messages missing after the first, {} at the end",
                reads.rounds, reads.missing_after_first_round, reads.missing_at_end
            ));
            serde_json::to_value(reads).unwrap_or(Value::Null)
        }
    };
    let exited = cluster.exited();
    say("stopping the cluster");
    cluster.stop_all().await;
    recorder.flush();
    Ok(Run {
        recorder,
        workload_status,
        end_of_run_ns,
        heal: heal_value,
        exited,
        final_reads,
        binary,
    })
}

/// What the checkers look at.
pub struct CheckInput<'a> {
    /// The workload that made the history.
    pub workload: WorkloadKind,
    /// The history.
    pub ops: &'a [history::Op],
    /// Node ids.
    pub nodes: &'a [String],
    /// The run's `nodes/` directory (logs).
    pub nodes_dir: &'a Path,
    /// Wall clock of the history's time 0.
    pub start_unix_ms: i64,
    /// When the workload stopped (ns).
    pub end_of_run_ns: u64,
    /// G5 bound.
    pub failover_bound: Duration,
    /// Node exits seen after the nemesis stopped.
    pub final_exits: &'a [Value],
}

/// Runs every checker that applies to the workload.
pub fn check_history(input: &CheckInput<'_>) -> Vec<CheckResult> {
    let CheckInput {
        workload,
        ops,
        nodes,
        nodes_dir,
        start_unix_ms,
        end_of_run_ns,
        failover_bound,
        final_exits,
    } = *input;
    let na = |id: &str, name: &str| {
        CheckResult::new(
            id,
            name,
            checker::Verdict::NotApplicable,
            format!("not checked by the {} workload", workload.name()),
            json!({}),
        )
    };
    let mut out = Vec::new();
    match workload {
        WorkloadKind::Register => {
            out.push(checker::register::check(ops, Budget::default()));
            out.push(na("G2", "one processing node per partition at a time"));
            out.push(na("G3", "per (key, producer) order in every journal read"));
            out.push(na("G4", "acknowledged messages present after final reads"));
            out.push(na("G5", "partitions available again within the failover bound"));
            out.push(na(
                "offsets-stable",
                "no journal offset holds two different messages across reads",
            ));
        }
        WorkloadKind::OrderedStream => {
            out.push(na("G1", "config register linearizable (per key, WGL)"));
            out.push(checker::stream::check_split_brain(ops, start_unix_ms));
            out.push(checker::stream::check_order(ops));
            out.push(checker::stream::check_delivery(ops));
            out.push(checker::stream::check_availability(
                ops,
                nodes,
                failover_bound.as_nanos() as u64,
                end_of_run_ns,
            ));
            out.push(checker::stream::check_offsets(ops));
        }
    }
    out.push(checker::logs::check_panics_and_exits(
        nodes_dir,
        &checker::logs::exits(ops, final_exits),
    ));
    out
}

fn analyse(cfg: &TestConfig, dir: &Path, run: Run, started: std::time::Instant) -> Result<Outcome> {
    say("checking");
    let ops = run.recorder.ops();
    let layout = Layout::new(cfg.nodes);
    let exits: Vec<Value> = run
        .exited
        .iter()
        .map(|(n, s)| json!({"node": n, "status": s}))
        .collect();
    let nodes_dir = dir.join("nodes");
    let results = check_history(&CheckInput {
        workload: cfg.workload,
        ops: &ops,
        nodes: &layout.nodes,
        nodes_dir: &nodes_dir,
        start_unix_ms: run.recorder.start_unix_ms(),
        end_of_run_ns: run.end_of_run_ns,
        failover_bound: cfg.failover_bound,
        final_exits: &exits,
    });
    let checks: Vec<Judged> = results
        .into_iter()
        .map(|r| {
            let exp = suite::expectation(
                cfg.workload,
                cfg.nemesis,
                cfg.workload_cfg.local_reads,
                cfg.failover_bound,
                &r.id,
            );
            Judged {
                expected: match exp {
                    Expectation::Pass => "pass".into(),
                    Expectation::KnownLimit(_) => "known-limit".into(),
                },
                known_limit: match exp {
                    Expectation::Pass => None,
                    Expectation::KnownLimit(why) => Some(why.to_string()),
                },
                result: r,
            }
        })
        .collect();
    let mut workload_status = run.workload_status.clone();
    if workload_status == "ran"
        && ops
            .iter()
            .any(|o| o.error.as_deref().is_some_and(|e| e.starts_with("UNIMPLEMENTED")))
        && checks
            .iter()
            .any(|c| c.result.verdict == checker::Verdict::NotRun)
    {
        workload_status = "could not run: the cluster answered UNIMPLEMENTED".into();
    }
    let counts = history::counts(&ops, None);
    let outcome = Outcome {
        test: cfg.name(),
        dir: dir.to_path_buf(),
        checks,
        workload_status,
        counts,
        elapsed_s: started.elapsed().as_secs_f64(),
    };
    let results = json!({
        "test": cfg.name(),
        "workload": cfg.workload.name(),
        "nemesis": cfg.nemesis.name(),
        "valid": !outcome.checks.iter().any(|c| c.result.verdict.is_failure()),
        "expected_ok": outcome.ok(),
        "workload_status": outcome.workload_status,
        "started_at_unix_ms": run.recorder.start_unix_ms(),
        "settings": {
            "time_limit_s": cfg.time_limit.as_secs_f64(), "fault_s": cfg.fault.as_secs_f64(),
            "heal_s": cfg.heal.as_secs_f64(), "settle_s": cfg.settle.as_secs_f64(),
            "clients_per_node": cfg.workload_cfg.clients_per_node, "keys": cfg.workload_cfg.keys,
            "ops_per_key": cfg.workload_cfg.ops_per_key, "op_timeout_s": cfg.workload_cfg.op_timeout.as_secs_f64(),
            "think_ms": cfg.workload_cfg.think.as_millis() as u64, "partitions": cfg.partitions,
            "local_reads": cfg.workload_cfg.local_reads, "mqtt_producers": cfg.workload_cfg.mqtt_producers,
            "nodes": cfg.nodes, "seed": cfg.seed, "failover_bound_s": cfg.failover_bound.as_secs_f64(),
            "failover_timeout_s": cfg.failover_timeout.as_secs_f64(),
        },
        "binary": run.binary,
        "counts": outcome.counts,
        "elapsed_s": outcome.elapsed_s,
        "counts_by_f": counts_by_f(&ops),
        "checks": outcome.checks,
        "final_heal": run.heal,
        "final_reads": run.final_reads,
        "nodes_exited_by_themselves": run.exited.iter().map(|(n, s)| json!({"node": n, "status": s})).collect::<Vec<_>>(),
    });
    std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(&results)?)?;
    report::write(dir, &cfg.name(), &ops, &results, run.recorder.start_unix_ms())?;
    Ok(outcome)
}

fn counts_by_f(ops: &[history::Op]) -> Value {
    let mut fs: Vec<String> = history::pairs(ops).into_iter().map(|p| p.invoke.f).collect();
    fs.sort();
    fs.dedup();
    let mut m = serde_json::Map::new();
    for f in fs {
        m.insert(
            f.clone(),
            serde_json::to_value(history::counts(ops, Some(&f))).unwrap_or(Value::Null),
        );
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc() {
        assert_eq!(timestamp(0), "19700101T000000Z");
        assert_eq!(timestamp(1_700_000_000), "20231114T221320Z");
        assert_eq!(timestamp(951_782_400), "20000229T000000Z");
    }
}
