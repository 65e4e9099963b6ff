//! Command line of `routemq-ctl` (clap derive): global options and subcommands.
//!
//! Addresses are validated while parsing, so a bad `--addr` is a usage error (exit code 2).

use std::time::Duration;

use clap::{Parser, Subcommand};

/// Inspect and administer a RouteMQ cluster.
#[derive(Debug, Parser)]
#[command(
    name = "routemq-ctl",
    version,
    after_help = "Examples:\n  routemq-ctl status\n  routemq-ctl --addr node-1:7001,node-2:7001 partitions --json\n  routemq-ctl --local locate device-42\n  routemq-ctl node remove node-3"
)]
pub struct Cli {
    /// gRPC address of a RouteMQ node; repeatable, or comma-separated
    ///
    /// Any node will do: the tool finds the Raft leader and the other members by itself.
    /// Repeat the option or separate addresses with commas; give them all before the command,
    /// or all after it.
    #[arg(
        short = 'a',
        long = "addr",
        value_name = "HOST:PORT",
        env = "ROUTEMQ_ADDR",
        value_delimiter = ',',
        default_value = "127.0.0.1:7001",
        value_parser = parse_addr,
        global = true
    )]
    pub addrs: Vec<String>,

    /// Print JSON for scripts instead of tables
    #[arg(long, global = true)]
    pub json: bool,

    /// Read a node's local state (fast, maybe stale) instead of asking the leader
    ///
    /// By default reads are linearizable: served by the Raft leader after it confirmed its
    /// leadership. With --local, the first reachable node answers from what it has applied.
    /// Ignored by `node remove`.
    #[arg(long, global = true)]
    pub local: bool,

    /// Give up after this long, retries included (e.g. 10s, 500ms, 1m)
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration, global = true)]
    pub timeout: Duration,

    /// What to do
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the cluster: Raft leader, term and indexes, epoch, and every member
    Status,
    /// Show how many partitions each node owns
    Partitions,
    /// Show which partition a key hashes to and which node owns it
    Locate {
        /// The key, e.g. a device id
        key: String,
    },
    /// Administer nodes
    #[command(subcommand)]
    Node(NodeCommand),
}

/// `node` subcommands.
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Remove a node from the ring and from Raft; prints the new epoch
    Remove {
        /// Id of the node to remove
        node_id: String,
    },
}

fn parse_addr(text: &str) -> Result<String, String> {
    match routemq_client::normalize_addr(text) {
        Ok(addr) => Ok(addr),
        Err(routemq_client::ClientError::InvalidAddress { reason, .. }) => Err(reason),
        Err(other) => Err(other.to_string()),
    }
}

/// Parses `10s`, `500ms`, `1m`, or a bare number of seconds (`2.5`). Must be positive.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?} (expected e.g. 10s, 500ms, 1m)"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        other => return Err(format!("unknown unit {other:?} (use ms, s or m)")),
    };
    if !seconds.is_finite() || seconds <= 0.0 || seconds > 86_400.0 {
        return Err(format!(
            "duration {text:?} out of range (must be > 0 and at most 24h)"
        ));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("routemq-ctl").chain(args.iter().copied()))
    }

    #[test]
    fn clap_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn addresses_repeat_and_split_on_commas() {
        let cli = parse(&["--addr", "a:1,http://b:2", "-a", "c:3", "status"]).unwrap();
        assert_eq!(cli.addrs, vec!["a:1", "b:2", "c:3"]);
        assert!(matches!(cli.command, Command::Status));
        let cli = parse(&["status", "-a", "a:1", "--addr=b:2,c:3"]).unwrap();
        assert_eq!(cli.addrs, vec!["a:1", "b:2", "c:3"]);
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli = parse(&["locate", "device-1", "--json", "--local", "--timeout", "500ms"]).unwrap();
        assert!(cli.json && cli.local);
        assert_eq!(cli.timeout, Duration::from_millis(500));
        assert!(matches!(cli.command, Command::Locate { ref key } if key == "device-1"));
        let cli = parse(&["--json", "node", "remove", "n3"]).unwrap();
        assert!(matches!(cli.command, Command::Node(NodeCommand::Remove { ref node_id }) if node_id == "n3"));
    }

    #[test]
    fn usage_errors() {
        for args in [
            &["status", "--addr", "nohost"][..],
            &["locate"][..],
            &["node"][..],
            &["frobnicate"][..],
            &["status", "--timeout", "0s"][..],
            &["status", "--timeout", "5h"][..],
        ] {
            let err = parse(args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}: {err}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("").is_err());
    }
}
