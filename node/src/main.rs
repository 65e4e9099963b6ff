//! `routemq`: the RouteMQ node daemon.
//!
//! ```text
//! routemq start --node-id n1 --bootstrap
//! routemq start --node-id n2 --grpc 127.0.0.1:7002 --gossip 127.0.0.1:7102 --http 127.0.0.1:7202 --seed 127.0.0.1:7101
//! ```
//! Settings come from flags, then `ROUTEMQ_*` environment variables, then `--config FILE`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use routemq_node::settings::{LogFormat, Settings, StartArgs};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "routemq", version, about = "RouteMQ: a clustered MQTT message router")]
struct Cli {
    #[command(subcommand)]
    command: CliCommand,
}

#[derive(Subcommand)]
enum CliCommand {
    /// Start a node: bootstrap a new cluster, or join one through seeds.
    Start(StartArgs),
}

fn init_tracing(format: LogFormat) {
    // ROUTEMQ_LOG takes tracing's filter syntax, e.g. "info,routemq_node=debug".
    let filter = EnvFilter::try_from_env("ROUTEMQ_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn,chitchat=warn,h2=warn,tower=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the node");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let CliCommand::Start(args) = cli.command;
    let settings = match Settings::resolve(args) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(settings.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(routemq_node::node::run(settings, shutdown_signal()));
    // A blocking task still running (a stuck disk write) must not keep the process alive.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "node failed");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
