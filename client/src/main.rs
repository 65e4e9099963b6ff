//! `routemq-ctl`: inspect and administer a RouteMQ cluster from the command line.
//!
//! Parses the command line ([`cli`]), makes its calls through the client library, and prints
//! the answer as tables or JSON ([`render`]). Exit codes: 0 on success, 1 on error (one line
//! on stderr, `error: ...`; a `bench --verify` that does not pass prints its report and fails
//! too), 2 on a usage error.

mod cli;
#[cfg(test)]
mod fake;
mod render;

use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use routemq_client::bench::{BenchConfig, Transport, VerifyOptions};
use routemq_client::proto::{handler, Handler};
use routemq_client::spec::{parse_handler, parse_routes_file, same_definition};
use routemq_client::{Client, ClientError, ClientOptions, ReadConsistency, Route, RouteMode};

use crate::cli::{AddRoute, BenchArgs, Cli, Command, ModeArg, NodeCommand, RoutesCommand, TransportArg};
use crate::render::ApplyOutcome;

/// A run that produced a report but failed (a bench whose verification did not pass): the
/// report goes to stdout, the summary to stderr, and the exit code is 1.
#[derive(Debug)]
struct ReportedFailure {
    output: String,
    summary: String,
}

impl std::fmt::Display for ReportedFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.summary)
    }
}

impl std::error::Error for ReportedFailure {}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => return fail(&anyhow::Error::new(err).context("cannot start the async runtime")),
    };
    match runtime.block_on(run(cli)) {
        Ok(output) => match print(&output) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => fail(&err),
        },
        Err(err) => match err.downcast_ref::<ReportedFailure>() {
            Some(reported) => {
                let _ = print(&reported.output);
                fail(&err)
            }
            None => fail(&err),
        },
    }
}

fn print(output: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(output.as_bytes()).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        // The reader went away (`routemq-ctl status | head`): nothing left to tell.
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(err) => Err(anyhow::Error::new(err).context("cannot write the output")),
    }
}

fn fail(err: &anyhow::Error) -> ExitCode {
    eprintln!("error: {err:#}");
    ExitCode::FAILURE
}

/// Runs the command and returns what to print.
async fn run(cli: Cli) -> anyhow::Result<String> {
    let options = ClientOptions::default().with_total_timeout(cli.timeout);
    let client = match &cli.command {
        // No node involved: do not insist on reaching one.
        Command::Bench(args) if args.broker_only => Client::new(cli.addrs.iter().cloned(), options)?,
        _ => Client::connect_with(cli.addrs.iter().cloned(), options).await?,
    };
    let consistency = if cli.local {
        ReadConsistency::Local
    } else {
        ReadConsistency::Linearizable
    };
    let read_hint = |err: ClientError| read_hint(consistency, err);
    let output = match &cli.command {
        Command::Status => {
            let status = client.status(consistency).await.map_err(read_hint)?;
            if cli.json {
                render::to_json_text(&render::status_json(&status))?
            } else {
                render::status_text(&status)
            }
        }
        Command::Partitions => {
            let table = client.partitions(consistency).await.map_err(read_hint)?;
            if cli.json {
                render::to_json_text(&render::partitions_json(&table)?)?
            } else {
                render::partitions_text(&table)?
            }
        }
        Command::Locate { key } => {
            let located = client
                .locate(key.as_str(), consistency)
                .await
                .map_err(read_hint)
                .with_context(|| format!("cannot locate {key:?}"))?;
            if cli.json {
                render::to_json_text(&render::locate_json(&located))?
            } else {
                render::locate_text(&located)
            }
        }
        Command::Node(NodeCommand::Remove { node_id }) => {
            let removed = client
                .remove_node(node_id.as_str())
                .await
                .with_context(|| format!("cannot remove node {node_id:?}"))?;
            if cli.json {
                render::to_json_text(&render::remove_json(node_id, &removed))?
            } else {
                render::remove_text(node_id, &removed)
            }
        }
        Command::Node(NodeCommand::Leave { node_id, wait_secs }) => {
            let started = std::time::Instant::now();
            let left = client
                .leave_node(node_id.as_str())
                .await
                .with_context(|| format!("cannot ask node {node_id:?} to leave"))?;
            let deadline = started + std::time::Duration::from_secs(*wait_secs);
            let mut gone = *wait_secs == 0;
            while !gone && std::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                if let Ok(status) = client.status(ReadConsistency::Linearizable).await {
                    gone = !status.members.iter().any(|m| &m.node_id == node_id);
                }
            }
            if *wait_secs > 0 && !gone {
                anyhow::bail!(
                    "node {node_id:?} started leaving at epoch {} but is still a member after {wait_secs} s",
                    left.epoch
                );
            }
            let took = started.elapsed().as_secs_f64();
            if cli.json {
                format!(
                    "{}\n",
                    serde_json::json!({"node_id": node_id, "left": gone, "epoch": left.epoch, "seconds": took})
                )
            } else if gone {
                format!("node {node_id} handed its partitions over and left the cluster ({took:.1} s)\n")
            } else {
                format!("node {node_id} is leaving (epoch {})\n", left.epoch)
            }
        }
        Command::Routes(command) => routes(&client, consistency, cli.json, command).await?,
        Command::Publish {
            topic,
            payload,
            file,
            message_id,
        } => {
            let payload = match (payload, file) {
                (Some(text), _) => text.clone().into_bytes(),
                (None, Some(path)) => read_payload(path)?,
                (None, None) => read_payload(Path::new("-"))?,
            };
            let published = client
                .publish(topic.as_str(), payload, message_id.clone())
                .await
                .with_context(|| format!("cannot publish to {topic:?}"))?;
            if cli.json {
                render::to_json_text(&render::publish_json(&published))?
            } else {
                render::publish_text(&published)
            }
        }
        Command::Journal {
            key,
            route,
            from,
            limit,
        } => {
            let context = || format!("cannot read the journal of {key:?} on route {route:?}");
            let (entries, next_offset, end) = match limit {
                Some(limit) => {
                    let page = client
                        .read_journal(route.as_str(), key.as_str(), *from, *limit)
                        .await
                        .with_context(context)?;
                    (page.entries, page.next_offset, page.end)
                }
                None => {
                    let (entries, next) = client
                        .read_journal_from(route, key, *from)
                        .await
                        .with_context(context)?;
                    (entries, next, true)
                }
            };
            if cli.json {
                render::to_json_text(&render::journal_json(route, key, &entries, next_offset, end))?
            } else {
                render::journal_text(route, key, &entries, next_offset, end)
            }
        }
        Command::HotKeys { route, limit } => {
            let answer = client
                .hot_keys(route.as_str(), *limit)
                .await
                .with_context(|| format!("cannot read the hot keys of route {route:?}"))?;
            if cli.json {
                render::to_json_text(&render::hot_keys_json(&answer))?
            } else {
                render::hot_keys_text(&answer)
            }
        }
        Command::Bench(args) => {
            let report = routemq_client::bench::run(&client, bench_config(args, cli.timeout))
                .await
                .context("bench failed")?;
            let output = if cli.json {
                render::to_json_text(&report)?
            } else {
                render::bench_text(&report)
            };
            if report.verify_failed() {
                let summary = report
                    .verify
                    .as_ref()
                    .map(|v| v.summary.clone())
                    .unwrap_or_default();
                return Err(ReportedFailure {
                    output,
                    summary: format!("verification did not pass: {summary}"),
                }
                .into());
            }
            output
        }
    };
    Ok(output)
}

/// A linearizable read fails while there is no leader; says how to see the cluster anyway.
fn read_hint(consistency: ReadConsistency, err: ClientError) -> anyhow::Error {
    if consistency == ReadConsistency::Linearizable
        && matches!(err, ClientError::Rpc { .. })
        && err.is_retryable()
    {
        anyhow::anyhow!("{err}; --local reads a node's own, possibly stale, view")
    } else {
        err.into()
    }
}

fn read_payload(path: &Path) -> anyhow::Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut payload = Vec::new();
        std::io::stdin()
            .read_to_end(&mut payload)
            .context("cannot read the payload from standard input")?;
        Ok(payload)
    } else {
        std::fs::read(path).with_context(|| format!("cannot read the payload from {}", path.display()))
    }
}

/// The route that `routes add` describes.
fn route_from_args(add: &AddRoute) -> anyhow::Result<Route> {
    let handler: Handler = parse_handler(&add.handler, add.republish_qos.unwrap_or(add.qos))
        .map_err(|reason| anyhow::anyhow!("invalid --handler: {reason}"))?;
    if add.workers.is_some() && add.mode != ModeArg::Shared {
        anyhow::bail!("--workers is for shared routes: add --mode shared");
    }
    if add.republish_qos.is_some() && !matches!(handler.kind, Some(handler::Kind::Republish(_))) {
        anyhow::bail!("--republish-qos is for the republish handler");
    }
    let (mode, worker_count) = match add.mode {
        ModeArg::Ordered => (RouteMode::Ordered, 0),
        ModeArg::Shared => (RouteMode::Shared, add.workers.unwrap_or(1)),
    };
    Ok(Route {
        name: add.name.clone(),
        pattern: add.pattern.clone(),
        key_param: add.key_param.clone().unwrap_or_default(),
        qos: add.qos,
        mode: mode as i32,
        worker_count,
        handler: Some(handler),
        group: add.group.clone().unwrap_or_default(),
        version: 0,
        priority: add.priority,
        message_id_field: add.message_id_field.clone().unwrap_or_default(),
    })
}

async fn routes(
    client: &Client,
    consistency: ReadConsistency,
    json: bool,
    command: &RoutesCommand,
) -> anyhow::Result<String> {
    Ok(match command {
        RoutesCommand::Add(add) => {
            let route = route_from_args(add)?;
            let put = client
                .put_route(route, add.expect_version)
                .await
                .with_context(|| format!("cannot save route {:?}", add.name))?;
            if json {
                render::to_json_text(&render::put_json(&put))?
            } else {
                render::put_text(&put)
            }
        }
        RoutesCommand::List => {
            let routes = client
                .list_routes(consistency)
                .await
                .map_err(|err| read_hint(consistency, err))?;
            if json {
                render::to_json_text(&render::routes_json(&routes))?
            } else {
                render::routes_text(&routes)
            }
        }
        RoutesCommand::Get { name } => {
            let route = client
                .get_route(name.as_str(), consistency)
                .await
                .map_err(|err| read_hint(consistency, err))?
                .ok_or_else(|| anyhow::anyhow!("no route named {name:?}"))?;
            if json {
                render::to_json_text(&render::route_json(&route))?
            } else {
                render::route_text(&route)
            }
        }
        RoutesCommand::Remove { name, expect_version } => {
            let deleted = client
                .delete_route(name.as_str(), *expect_version)
                .await
                .with_context(|| format!("cannot remove route {name:?}"))?;
            if !deleted {
                anyhow::bail!("cannot remove route {name:?}: no route has this name");
            }
            if json {
                render::to_json_text(&render::delete_json(name, deleted))?
            } else {
                format!("Removed route {name}.\n")
            }
        }
        RoutesCommand::Apply { file } => {
            let shown = file.display().to_string();
            let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {shown}"))?;
            let wanted = parse_routes_file(&text).with_context(|| format!("invalid routes file {shown}"))?;
            let outcomes = apply_routes(client, wanted).await?;
            if json {
                render::to_json_text(&render::ApplyJson {
                    file: &shown,
                    routes: &outcomes,
                })?
            } else {
                render::apply_text(&shown, &outcomes)
            }
        }
    })
}

/// Writes every route that differs from the stored one, with compare-and-set on the version
/// read (0 for a new route), so a concurrent change fails the apply instead of being lost.
async fn apply_routes(client: &Client, wanted: Vec<Route>) -> anyhow::Result<Vec<ApplyOutcome>> {
    let current = client.list_routes(ReadConsistency::Linearizable).await?;
    let mut outcomes = Vec::with_capacity(wanted.len());
    for route in wanted {
        let existing = current.iter().find(|r| r.name == route.name);
        if let Some(existing) = existing.filter(|e| same_definition(e, &route)) {
            outcomes.push(ApplyOutcome {
                name: route.name.clone(),
                action: "unchanged",
                version: existing.version,
                epoch: None,
            });
            continue;
        }
        let name = route.name.clone();
        let expected = existing.map_or(0, |e| e.version);
        let put = client.put_route(route, Some(expected)).await.with_context(|| {
            let done = outcomes
                .iter()
                .filter(|o: &&ApplyOutcome| o.action != "unchanged")
                .count();
            format!("cannot apply route {name:?} ({done} routes before it were written)")
        })?;
        outcomes.push(ApplyOutcome {
            name,
            action: if existing.is_some() { "updated" } else { "created" },
            version: put.route.as_ref().map_or(0, |r| r.version),
            epoch: Some(put.epoch),
        });
    }
    Ok(outcomes)
}

/// The bench of `args`; `timeout` (the global --timeout) also bounds the wait for MQTT
/// acknowledgements once sending stopped.
fn bench_config(args: &BenchArgs, timeout: std::time::Duration) -> BenchConfig {
    let mut config = BenchConfig::new(args.route.clone().unwrap_or_default());
    config.broker_only = args.broker_only;
    config.ack_timeout = timeout;
    config.topic_template = args.topic_template.clone();
    config.keys = args.keys;
    config.messages = args.messages;
    config.rate = args.rate;
    config.payload_bytes = args.payload_bytes;
    config.transport = match args.transport {
        TransportArg::Grpc => Transport::Grpc,
        TransportArg::Mqtt => Transport::Mqtt {
            broker: args.mqtt.clone(),
        },
    };
    config.producers = args.producers;
    config.concurrency = args.concurrency;
    config.duration = args.duration;
    config.verify = args.verify.then_some(VerifyOptions {
        settle: args.settle,
        timeout: args.verify_timeout,
    });
    config.run_id = args.run_id.clone();
    config
}

#[cfg(test)]
mod tests {
    //! The whole command path (parse, connect, call, render) against a fake node.

    use routemq_client::{
        ClusterStatus, Liveness, LocateResponse, Member, PartitionTable, RaftRole, RemoveNodeResponse,
    };
    use routemq_testkit::cluster::{serve_local, FakeCluster};
    use serde_json::Value;
    use tonic::Status;

    use super::*;

    fn member(id: &str, role: RaftRole, partitions: u32) -> Member {
        Member {
            node_id: id.into(),
            raft_id: 11,
            grpc_addr: format!("{id}.local:7001"),
            gossip_addr: format!("{id}.local:7101"),
            http_addr: format!("{id}.local:7201"),
            weight: 1,
            state: "active".into(),
            liveness: Liveness::Alive as i32,
            raft_role: role as i32,
            partitions,
            generation: 5,
            ring_state: "active".into(),
        }
    }

    /// A node with fixed answers.
    fn fixed() -> FakeCluster {
        FakeCluster::new(ClusterStatus {
            cluster_id: "c-1".into(),
            epoch: 7,
            raft_term: 2,
            raft_leader: "n1".into(),
            commit_index: 10,
            applied_index: 10,
            partition_count: 4,
            vnodes_per_weight: 8,
            max_voters: 3,
            // Unreachable member addresses: the test must not depend on them.
            members: vec![member("n1", RaftRole::Voter, 3), member("n2", RaftRole::Voter, 1)],
            answered_by: "n1".into(),
            consistency: 0,
            non_members: vec![],
        })
        .partitions(PartitionTable {
            epoch: 7,
            partition_count: 4,
            vnodes_per_weight: 8,
            nodes: vec!["n1".into(), "n2".into()],
            owners: vec![0, 0, 1, 0],
            answered_by: "n1".into(),
        })
        .locate(|request| {
            if request.key == "no-quorum" {
                return Err(Status::unavailable("config unavailable: no quorum"));
            }
            Ok(LocateResponse {
                key: request.key,
                partition: 2,
                owner: "n2".into(),
                owner_grpc_addr: "n2.local:7001".into(),
                epoch: 7,
            })
        })
        .remove_node(|request| match request.node_id.as_str() {
            "n2" => Ok(RemoveNodeResponse { epoch: 8 }),
            other => Err(Status::not_found(format!(
                "node {other:?} is not a member of the cluster"
            ))),
        })
    }

    async fn fake_node() -> String {
        let router = tonic::transport::Server::builder().add_service(fixed().into_server());
        serve_local(router).await.0
    }

    async fn ctl(addr: &str, args: &[&str]) -> anyhow::Result<String> {
        let argv = ["routemq-ctl", "--addr", addr, "--timeout", "1s"];
        run(Cli::try_parse_from(argv.iter().chain(args)).unwrap()).await
    }

    async fn ctl_json(addr: &str, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        serde_json::from_str(&ctl(addr, &args).await.unwrap()).unwrap()
    }

    #[tokio::test]
    async fn every_command_prints_json() {
        let addr = fake_node().await;
        let status = ctl_json(&addr, &["status"]).await;
        assert_eq!(status["raft_leader"], "n1");
        assert_eq!(status["consistency"], "linearizable");
        assert_eq!(status["members"][0]["leader"], true);
        let status = ctl_json(&addr, &["status", "--local"]).await;
        assert_eq!(status["consistency"], "local");

        let partitions = ctl_json(&addr, &["partitions"]).await;
        assert_eq!(partitions["owners"], serde_json::json!(["n1", "n1", "n2", "n1"]));
        assert_eq!(partitions["counts"], serde_json::json!({"n1": 3, "n2": 1}));

        let located = ctl_json(&addr, &["locate", "device-42"]).await;
        assert_eq!(located["key"], "device-42");
        assert_eq!(located["owner"], "n2");

        let removed = ctl_json(&addr, &["node", "remove", "n2"]).await;
        assert_eq!(removed, serde_json::json!({"node_id": "n2", "epoch": 8}));
    }

    #[tokio::test]
    async fn every_command_prints_tables() {
        let addr = fake_node().await;
        let status = ctl(&addr, &["status"]).await.unwrap();
        assert!(status.contains("voter (leader)"), "{status}");
        let partitions = ctl(&addr, &["partitions"]).await.unwrap();
        assert!(partitions.contains("75.0%"), "{partitions}");
        let located = ctl(&addr, &["locate", "k"]).await.unwrap();
        assert!(located.contains("n2.local:7001"), "{located}");
        let removed = ctl(&addr, &["node", "remove", "n2"]).await.unwrap();
        assert_eq!(removed, "Removed n2; the cluster is now at epoch 8.\n");
        println!("{status}\n{partitions}\n{located}");
    }

    #[tokio::test]
    async fn errors_are_one_line_with_context() {
        let addr = fake_node().await;
        let err = ctl(&addr, &["node", "remove", "ghost"]).await.unwrap_err();
        let text = format!("{err:#}");
        assert_eq!(
            text,
            format!("cannot remove node \"ghost\": node \"ghost\" is not a member of the cluster (not found; answered by {addr})")
        );
    }

    #[tokio::test]
    async fn a_failed_linearizable_read_suggests_local() {
        let addr = fake_node().await;
        let err = ctl(&addr, &["locate", "no-quorum"]).await.unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.starts_with("cannot locate \"no-quorum\": config unavailable: no quorum"),
            "{text}"
        );
        assert!(
            text.ends_with("--local reads a node's own, possibly stale, view"),
            "{text}"
        );
        assert!(!text.contains('\n'), "{text}");
    }

    // ---- routes, publish, journal and bench against the in-memory fake node ----

    use crate::fake::{self, Fault};

    fn write_temp(name: &str, text: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("routemq-ctl-test-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    async fn ctl_err(addr: &str, args: &[&str]) -> String {
        let err = ctl(addr, args).await.unwrap_err();
        let text = format!("{err:#}");
        assert!(!text.contains('\n'), "{text}");
        text
    }

    #[tokio::test]
    async fn routes_lifecycle() {
        let addr = fake::start(None).await;
        let added = ctl_json(
            &addr,
            &[
                "routes",
                "add",
                "telemetry",
                "--pattern",
                "sensors/{device_id}/data",
                "--key-param",
                "device_id",
                "--handler",
                "journal",
                "--qos",
                "1",
                "--expect-version",
                "0",
            ],
        )
        .await;
        assert_eq!(added["epoch"], 8);
        assert_eq!(added["route"]["version"], 11);
        assert_eq!(added["route"]["handler"], serde_json::json!({"kind": "journal"}));
        assert_eq!(added["route"]["mode"], "ordered");
        assert_eq!(added["route"]["worker_count"], Value::Null);

        // Create-only a second time: the version check is final and reported in one line.
        let err = ctl_err(
            &addr,
            &[
                "routes",
                "add",
                "telemetry",
                "--pattern",
                "x",
                "--expect-version",
                "0",
            ],
        )
        .await;
        assert!(err.starts_with("cannot save route \"telemetry\": route \"telemetry\" already exists (version 11) (failed precondition; answered by"), "{err}");

        let text = ctl(
            &addr,
            &[
                "routes",
                "add",
                "fanout",
                "--pattern",
                "events/#",
                "--mode",
                "shared",
                "--workers",
                "4",
                "--handler",
                "republish:out/all",
                "--republish-qos",
                "1",
                "--group",
                "plant1",
                "--priority",
                "-1",
            ],
        )
        .await
        .unwrap();
        assert_eq!(
            text,
            "Route fanout saved (version 12); the cluster is now at epoch 9.\n"
        );

        let listed = ctl_json(&addr, &["routes", "list"]).await;
        let names: Vec<&str> = listed["routes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, vec!["fanout", "telemetry"]);
        assert_eq!(
            listed["routes"][0],
            serde_json::json!({
                "name": "fanout",
                "pattern": "events/#",
                "group": "plant1",
                "effective_pattern": "plant1/events/#",
                "key_param": null,
                "qos": 0,
                "mode": "shared",
                "worker_count": 4,
                "handler": {"kind": "republish", "topic_template": "out/all", "qos": 1},
                "priority": -1,
                "version": 12,
            })
        );
        let table = ctl(&addr, &["routes", "list"]).await.unwrap();
        assert!(
            table.contains("plant1/events/#") && table.contains("shared ×4") && table.contains("(topic)"),
            "{table}"
        );

        let got = ctl(&addr, &["routes", "get", "telemetry"]).await.unwrap();
        assert!(
            got.contains("Key:") && got.contains("{device_id}") && got.contains("journal"),
            "{got}"
        );
        let err = ctl_err(&addr, &["routes", "get", "ghost"]).await;
        assert_eq!(err, "no route named \"ghost\"");

        let err = ctl_err(&addr, &["routes", "remove", "fanout", "--expect-version", "3"]).await;
        assert!(err.contains("is at version 12, not 3"), "{err}");
        let removed = ctl_json(&addr, &["routes", "remove", "fanout", "--expect-version", "12"]).await;
        assert_eq!(removed, serde_json::json!({"name": "fanout", "deleted": true}));
        let err = ctl_err(&addr, &["routes", "remove", "fanout"]).await;
        assert_eq!(err, "cannot remove route \"fanout\": no route has this name");

        // Usage mistakes caught before any call.
        let err = ctl_err(&addr, &["routes", "add", "r", "--pattern", "a", "--workers", "2"]).await;
        assert_eq!(err, "--workers is for shared routes: add --mode shared");
        let err = ctl_err(
            &addr,
            &["routes", "add", "r", "--pattern", "a", "--handler", "webhook"],
        )
        .await;
        assert!(
            err.starts_with("invalid --handler: unknown handler \"webhook\""),
            "{err}"
        );
        // The node's validation comes back as one line.
        let err = ctl_err(&addr, &["routes", "add", "r", "--pattern", "a/#/b"]).await;
        assert!(
            err.contains("'#' must be the last level (invalid argument;"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn routes_apply_creates_updates_and_skips() {
        let addr = fake::start(None).await;
        let file = write_temp(
            "routes.toml",
            r#"
                [[route]]
                name = "telemetry"
                pattern = "sensors/{device_id}/data"
                key_param = "device_id"
                handler = "journal"

                [[route]]
                name = "fanout"
                pattern = "events/#"
                mode = { shared = { worker_count = 2 } }
            "#,
        );
        let path = file.to_str().unwrap();
        let applied = ctl_json(&addr, &["routes", "apply", path]).await;
        assert_eq!(
            applied["routes"],
            serde_json::json!([
                {"name": "telemetry", "action": "created", "version": 11, "epoch": 8},
                {"name": "fanout", "action": "created", "version": 12, "epoch": 9},
            ])
        );
        // Again: nothing to do.
        let text = ctl(&addr, &["routes", "apply", path]).await.unwrap();
        assert!(
            text.contains("2 routes, 0 written") && text.contains("unchanged"),
            "{text}"
        );
        // Change one.
        std::fs::write(
            &file,
            std::fs::read_to_string(&file)
                .unwrap()
                .replace("worker_count = 2", "worker_count = 3"),
        )
        .unwrap();
        let applied = ctl_json(&addr, &["routes", "apply", path]).await;
        assert_eq!(applied["routes"][0]["action"], "unchanged");
        assert_eq!(
            applied["routes"][1],
            serde_json::json!({"name": "fanout", "action": "updated", "version": 13, "epoch": 10})
        );

        let bad = write_temp(
            "bad.toml",
            "[[route]]\nname = \"x\"\npattern = \"a\"\nmode = \"fifo\"\n",
        );
        let err = ctl_err(&addr, &["routes", "apply", bad.to_str().unwrap()]).await;
        assert!(
            err.starts_with(&format!(
                "invalid routes file {}: route #1 (\"x\"): mode: unknown mode \"fifo\"",
                bad.display()
            )),
            "{err}"
        );
        let err = ctl_err(&addr, &["routes", "apply", "/nonexistent/routes.toml"]).await;
        assert!(err.starts_with("cannot read /nonexistent/routes.toml: "), "{err}");
    }

    #[tokio::test]
    async fn publish_then_read_the_journal() {
        let addr = fake::start(None).await;
        ctl(
            &addr,
            &[
                "routes",
                "add",
                "telemetry",
                "--pattern",
                "sensors/{device_id}/data",
                "--key-param",
                "device_id",
                "--handler",
                "journal",
            ],
        )
        .await
        .unwrap();
        let published = ctl_json(
            &addr,
            &["publish", "sensors/d1/data", "{\"t\":21}", "--message-id", "m-1"],
        )
        .await;
        assert_eq!(
            published,
            serde_json::json!({"message_id": "m-1", "route": "telemetry", "key": "d1", "partition": 3, "processed_by": "n1", "epoch": 8})
        );
        // A duplicate id is suppressed by the journal.
        ctl(
            &addr,
            &["publish", "sensors/d1/data", "{\"t\":21}", "--message-id", "m-1"],
        )
        .await
        .unwrap();
        let binary = write_temp("payload.bin", "");
        std::fs::write(&binary, [0u8, 159, 146, 150]).unwrap();
        let text = ctl(
            &addr,
            &["publish", "sensors/d1/data", "--file", binary.to_str().unwrap()],
        )
        .await
        .unwrap();
        assert!(text.contains("Processed by: n1"), "{text}");
        for i in 0..10 {
            ctl(&addr, &["publish", "sensors/d1/data", &format!("reading {i}")])
                .await
                .unwrap();
        }

        let journal = ctl_json(&addr, &["journal", "d1", "--route", "telemetry"]).await;
        let entries = journal["entries"].as_array().unwrap();
        assert_eq!(entries.len(), 12, "paged past the fake's page of 7");
        assert_eq!(
            (journal["next_offset"].clone(), journal["end"].clone()),
            (serde_json::json!(12), serde_json::json!(true))
        );
        assert_eq!(
            entries[0],
            serde_json::json!({
                "offset": 0,
                "message_id": "m-1",
                "topic": "sensors/d1/data",
                "payload": "{\"t\":21}",
                "payload_encoding": "utf8",
                "processed_by": "n1",
                "epoch": 8,
                "partition": 3,
                "processed_at_unix_ms": 1_763_892_000_000i64,
                "processed_at": "2025-11-23T10:00:00.000Z",
            })
        );
        assert_eq!(entries[1]["payload"], "009f9296");
        assert_eq!(entries[1]["payload_encoding"], "hex");

        let page = ctl_json(
            &addr,
            &[
                "journal",
                "d1",
                "--route",
                "telemetry",
                "--from",
                "2",
                "--limit",
                "3",
            ],
        )
        .await;
        assert_eq!(page["entries"].as_array().unwrap().len(), 3);
        assert_eq!(
            (page["next_offset"].clone(), page["end"].clone()),
            (serde_json::json!(5), serde_json::json!(false))
        );
        let table = ctl(&addr, &["journal", "d1", "--route", "telemetry", "--limit", "2"])
            .await
            .unwrap();
        assert!(
            table.contains("0x009f9296")
                && table.contains("2025-11-23T10:00:00.000Z")
                && table.contains("--from 2"),
            "{table}"
        );
        let empty = ctl(&addr, &["journal", "nobody", "--route", "telemetry"])
            .await
            .unwrap();
        assert_eq!(empty, "Journal of \"nobody\" on route telemetry: no entries.\n");

        let err = ctl_err(&addr, &["publish", "nowhere/x", "p"]).await;
        assert!(err.starts_with("cannot publish to \"nowhere/x\": no route matches topic \"nowhere/x\" (not found; answered by"), "{err}");
        let err = ctl_err(&addr, &["journal", "d1", "--route", "ghost"]).await;
        assert!(
            err.starts_with(
                "cannot read the journal of \"d1\" on route \"ghost\": no route named \"ghost\" (not found;"
            ),
            "{err}"
        );
    }

    async fn bench_route(addr: &str, mode: &str) {
        ctl(
            addr,
            &[
                "routes",
                "add",
                "bench",
                "--pattern",
                "bench/{id}/data",
                "--key-param",
                "id",
                "--handler",
                "journal",
                "--mode",
                mode,
            ],
        )
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn bench_over_grpc_verifies_a_clean_run() {
        let addr = fake::start(None).await;
        bench_route(&addr, "ordered").await;
        let report = ctl_json(
            &addr,
            &[
                "bench",
                "--route",
                "bench",
                "--keys",
                "6",
                "--messages",
                "60",
                "--producers",
                "3",
                "--concurrency",
                "2",
                "--payload-bytes",
                "40",
                "--verify",
                "--settle",
                "200ms",
                "--run-id",
                "t1",
            ],
        )
        .await;
        assert_eq!(report["run_id"], "t1");
        assert_eq!(
            (report["transport"].clone(), report["ack"].clone()),
            (serde_json::json!("grpc"), serde_json::json!("cluster"))
        );
        assert_eq!(
            (
                report["messages_sent"].clone(),
                report["messages_acked"].clone(),
                report["messages_failed"].clone()
            ),
            (serde_json::json!(60), serde_json::json!(60), serde_json::json!(0))
        );
        assert_eq!(report["stopped_by"], "messages");
        assert_eq!(report["errors"], serde_json::json!({}));
        assert_eq!(report["latency_us"]["count"], 60);
        let verify = &report["verify"];
        assert_eq!(verify["verdict"], "pass", "{verify}");
        assert_eq!(
            (
                verify["keys"].clone(),
                verify["present"].clone(),
                verify["journal_entries"].clone()
            ),
            (serde_json::json!(6), serde_json::json!(60), serde_json::json!(60))
        );
        assert_eq!(verify["settled"], true);
        assert_eq!(verify["order_checked"], true);

        // The journal of one bench key holds its producer's messages in order.
        let journal = ctl_json(&addr, &["journal", "t1-4", "--route", "bench"]).await;
        let seqs: Vec<u64> = journal["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                routemq_client::bench::payload::decode(e["payload"].as_str().unwrap().as_bytes())
                    .unwrap()
                    .seq
            })
            .collect();
        // Producer 1 owns keys 1 and 4 and sends 20 messages: odd seqs go to key 4.
        assert_eq!(seqs, (0..10).map(|i| 2 * i + 1).collect::<Vec<u64>>());

        let text = ctl(
            &addr,
            &[
                "bench",
                "--route",
                "bench",
                "--keys",
                "2",
                "--messages",
                "10",
                "--verify",
                "--settle",
                "200ms",
            ],
        )
        .await
        .unwrap();
        assert!(
            text.contains("Verdict: PASS: all 10 acknowledged messages"),
            "{text}"
        );
        assert!(text.contains("accepted by the cluster"), "{text}");
    }

    #[tokio::test]
    async fn bench_verify_reports_each_fault() {
        for (fault, field, example) in [
            (Fault::Lose(3), "lost", "lost: producer 0 seq 3 (acknowledged)"),
            (
                Fault::Duplicate(4),
                "duplicates",
                "duplicate: producer 0 seq 4 again at offset 5",
            ),
            (
                Fault::Reorder(5),
                "reordered",
                "reordered: producer 0 seq 5 at offset 6 after seq 6",
            ),
        ] {
            let addr = fake::start(Some(fault)).await;
            bench_route(&addr, "ordered").await;
            let args = [
                "bench",
                "--route",
                "bench",
                "--keys",
                "1",
                "--messages",
                "10",
                "--verify",
                "--settle",
                "200ms",
                "--run-id",
                "f",
                "--json",
            ];
            let err = ctl(&addr, &args).await.unwrap_err();
            let reported = err.downcast_ref::<ReportedFailure>().expect("a reported failure");
            assert!(
                reported.summary.starts_with("verification did not pass: FAIL: "),
                "{}",
                reported.summary
            );
            let report: Value = serde_json::from_str(&reported.output).unwrap();
            let verify = &report["verify"];
            assert_eq!(verify["verdict"], "fail", "{fault:?}: {verify}");
            assert_eq!(verify[field], 1, "{fault:?}: {verify}");
            assert_eq!(verify["keys_with_problems"], 1);
            assert_eq!(verify["problems"][0]["key"], "f-0");
            assert_eq!(verify["problems"][0]["examples"][0], example, "{fault:?}");
            // Every publish was acknowledged: the problem is only visible in the journal.
            assert_eq!(report["messages_acked"], 10);
        }

        // On a shared route, reordering is reported but does not fail the run.
        let addr = fake::start(Some(Fault::Reorder(5))).await;
        bench_route(&addr, "shared").await;
        let text = ctl(
            &addr,
            &[
                "bench",
                "--route",
                "bench",
                "--keys",
                "1",
                "--messages",
                "10",
                "--verify",
                "--settle",
                "200ms",
            ],
        )
        .await
        .unwrap();
        assert!(text.contains("1 reordered (shared route: not checked)"), "{text}");
        assert!(text.contains("Verdict: PASS"), "{text}");
    }

    #[tokio::test]
    async fn bench_refuses_what_it_cannot_check() {
        let addr = fake::start(None).await;
        ctl(
            &addr,
            &[
                "routes",
                "add",
                "logged",
                "--pattern",
                "bench/{id}/data",
                "--key-param",
                "id",
            ],
        )
        .await
        .unwrap();
        let err = ctl_err(&addr, &["bench", "--route", "logged", "--verify"]).await;
        assert_eq!(
            err,
            "bench failed: route \"logged\" does not use the journal handler: --verify reads journals back"
        );
        let err = ctl_err(&addr, &["bench", "--route", "ghost"]).await;
        assert_eq!(err, "bench failed: no route named \"ghost\"");
        let err = ctl_err(
            &addr,
            &["bench", "--route", "logged", "--topic-template", "other/{key}"],
        )
        .await;
        assert!(err.starts_with("bench failed: topic \"other/"), "{err}");
        let err = ctl_err(
            &addr,
            &["bench", "--route", "logged", "--keys", "2", "--producers", "3"],
        )
        .await;
        assert_eq!(
            err,
            "bench failed: 3 producers for 2 keys: every producer needs a key of its own"
        );
        // Without --verify a log route is fine; --duration bounds the run.
        let report = ctl_json(
            &addr,
            &[
                "bench",
                "--route",
                "logged",
                "--messages",
                "1000000",
                "--rate",
                "50",
                "--duration",
                "300ms",
            ],
        )
        .await;
        assert_eq!(report["stopped_by"], "duration");
        assert_eq!(report["target_rate"], 50);
        assert_eq!(report["verify"], Value::Null);
        let sent = report["messages_sent"].as_u64().unwrap();
        assert!((10..=20).contains(&sent), "sent {sent} at 50/s in 300 ms");
        // No broker: a clear error.
        let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        let err = ctl_err(
            &addr,
            &[
                "bench",
                "--route",
                "logged",
                "--transport",
                "mqtt",
                "--mqtt",
                &dead,
            ],
        )
        .await;
        assert!(
            err.starts_with(&format!("bench failed: MQTT broker {dead}: ")),
            "{err}"
        );
    }
}
