//! `routemq-ctl`: inspect and administer a RouteMQ cluster from the command line.
//!
//! Parses the command line ([`cli`]), makes one call through the client library, and prints
//! the answer as tables or JSON ([`render`]). Exit codes: 0 on success, 1 on error (one line
//! on stderr, `error: ...`), 2 on a usage error.

mod cli;
mod render;

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use routemq_client::{Client, ClientError, ClientOptions, ReadConsistency};

use crate::cli::{Cli, Command, NodeCommand};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => return fail(&anyhow::Error::new(err).context("cannot start the async runtime")),
    };
    match runtime.block_on(run(cli)) {
        Ok(output) => {
            let mut stdout = std::io::stdout().lock();
            match stdout.write_all(output.as_bytes()).and_then(|()| stdout.flush()) {
                Ok(()) => ExitCode::SUCCESS,
                // The reader went away (`routemq-ctl status | head`): nothing left to tell.
                Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(err) => fail(&anyhow::Error::new(err).context("cannot write the output")),
            }
        }
        Err(err) => fail(&err),
    }
}

fn fail(err: &anyhow::Error) -> ExitCode {
    eprintln!("error: {err:#}");
    ExitCode::FAILURE
}

/// Runs the command and returns what to print.
async fn run(cli: Cli) -> anyhow::Result<String> {
    let options = ClientOptions::default().with_total_timeout(cli.timeout);
    let client = Client::connect_with(cli.addrs.iter().cloned(), options).await?;
    let consistency = if cli.local {
        ReadConsistency::Local
    } else {
        ReadConsistency::Linearizable
    };
    // A linearizable read fails while there is no leader; say how to see the cluster anyway.
    let read_hint = |err: ClientError| -> anyhow::Error {
        if consistency == ReadConsistency::Linearizable
            && matches!(err, ClientError::Rpc { .. })
            && err.is_retryable()
        {
            anyhow::anyhow!("{err}; --local reads a node's own, possibly stale, view")
        } else {
            err.into()
        }
    };
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
    };
    Ok(output)
}

#[cfg(test)]
mod tests {
    //! The whole command path (parse, connect, call, render) against a fake node.

    use routemq_client::proto::cluster_server::{Cluster, ClusterServer};
    use routemq_client::proto::{
        JoinRequest, JoinResponse, LocateRequest, PartitionsRequest, RemoveNodeRequest, StatusRequest,
    };
    use routemq_client::{
        ClusterStatus, Liveness, LocateResponse, Member, PartitionTable, RaftRole, RemoveNodeResponse,
    };
    use serde_json::Value;
    use tonic::{Request, Response, Status};

    use super::*;

    struct Fixed;

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
        }
    }

    #[tonic::async_trait]
    impl Cluster for Fixed {
        async fn get_status(
            &self,
            request: Request<StatusRequest>,
        ) -> Result<Response<ClusterStatus>, Status> {
            Ok(Response::new(ClusterStatus {
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
                consistency: request.into_inner().consistency,
                non_members: vec![],
            }))
        }

        async fn get_partitions(
            &self,
            _: Request<PartitionsRequest>,
        ) -> Result<Response<PartitionTable>, Status> {
            Ok(Response::new(PartitionTable {
                epoch: 7,
                partition_count: 4,
                vnodes_per_weight: 8,
                nodes: vec!["n1".into(), "n2".into()],
                owners: vec![0, 0, 1, 0],
                answered_by: "n1".into(),
            }))
        }

        async fn locate(&self, request: Request<LocateRequest>) -> Result<Response<LocateResponse>, Status> {
            let request = request.into_inner();
            if request.key == "no-quorum" {
                return Err(Status::unavailable("config unavailable: no quorum"));
            }
            Ok(Response::new(LocateResponse {
                key: request.key,
                partition: 2,
                owner: "n2".into(),
                owner_grpc_addr: "n2.local:7001".into(),
                epoch: 7,
            }))
        }

        async fn remove_node(
            &self,
            request: Request<RemoveNodeRequest>,
        ) -> Result<Response<RemoveNodeResponse>, Status> {
            match request.into_inner().node_id.as_str() {
                "n2" => Ok(Response::new(RemoveNodeResponse { epoch: 8 })),
                other => Err(Status::not_found(format!(
                    "node {other:?} is not a member of the cluster"
                ))),
            }
        }

        async fn join(&self, _: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }
    }

    async fn fake_node() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(ClusterServer::new(Fixed))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        addr
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
}
