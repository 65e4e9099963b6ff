//! Command line of `routemq-ctl` (clap derive): global options and subcommands.
//!
//! Addresses are validated while parsing, so a bad `--addr` is a usage error (exit code 2).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Inspect and administer a RouteMQ cluster.
#[derive(Debug, Parser)]
#[command(
    name = "routemq-ctl",
    version,
    after_help = "Examples:\n  routemq-ctl status\n  routemq-ctl --addr node-1:7001,node-2:7001 partitions --json\n  routemq-ctl --local locate device-42\n  routemq-ctl node remove node-3\n  routemq-ctl node leave node-3\n  routemq-ctl routes add telemetry --pattern 'sensors/{device_id}/data' --key-param device_id --handler journal\n  routemq-ctl publish sensors/device-42/data '{\"t\":21}'\n  routemq-ctl journal device-42 --route telemetry\n  routemq-ctl bench --route telemetry --topic-template 'sensors/{key}/data' --keys 500 --messages 10000 --verify"
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
    /// Manage routes: which topics go to which handler, ordered or shared
    #[command(subcommand)]
    Routes(RoutesCommand),
    /// Publish one message through the cluster; prints who processed it
    #[command(after_help = "Without PAYLOAD or --file the payload is read from standard input.")]
    Publish {
        /// Topic, e.g. sensors/device-42/data
        topic: String,
        /// Payload text
        #[arg(conflicts_with = "file")]
        payload: Option<String>,
        /// Read the payload from this file ('-' for standard input)
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        /// Message id for duplicate suppression (default: a new UUID)
        #[arg(long, value_name = "ID")]
        message_id: Option<String>,
    },
    /// Show a route's hot keys: the keys with the most messages in the last minute, over every
    /// node (bounded sketches: a count may be over by at most its error)
    HotKeys {
        /// The route
        #[arg(long, value_name = "NAME")]
        route: String,
        /// Show at most N keys
        #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=200))]
        limit: u32,
    },
    /// Read a key's journal (routes with the journal handler) from any node
    Journal {
        /// The key, e.g. a device id (the route's key parameter value, or the whole topic)
        key: String,
        /// The route whose journal to read
        #[arg(long, value_name = "NAME")]
        route: String,
        /// First offset to show
        #[arg(long, value_name = "N", default_value_t = 0)]
        from: u64,
        /// Show at most N entries (default: everything to the end)
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        limit: Option<u32>,
    },
    /// Load the cluster and report throughput, latency and (with --verify) lost or reordered messages
    Bench(BenchArgs),
}

/// `routes` subcommands.
#[derive(Debug, Subcommand)]
pub enum RoutesCommand {
    /// Create or replace a route
    #[command(
        after_help = "Writes unconditionally unless --expect-version is given: 0 creates only if absent, V replaces only version V."
    )]
    Add(AddRoute),
    /// List the routes in matching order
    List,
    /// Show one route
    Get {
        /// Route name
        name: String,
    },
    /// Delete a route
    Remove {
        /// Route name
        name: String,
        /// Delete only if the route's version is V
        #[arg(long, value_name = "V")]
        expect_version: Option<u64>,
    },
    /// Create or update every route of a TOML routes file
    #[command(
        after_help = "Routes identical to the stored ones are left alone; the others are written with compare-and-set on the version read, so a concurrent change makes apply fail rather than overwrite it. Routes absent from the file are kept."
    )]
    Apply {
        /// The routes file
        file: PathBuf,
    },
}

/// `routes add` options.
#[derive(Debug, Args)]
pub struct AddRoute {
    /// Route name: letters, digits, '-', '_', '.'
    pub name: String,
    /// Topic pattern, e.g. sensors/{device_id}/data (MQTT '+' and a final '#' allowed)
    #[arg(long, value_name = "P")]
    pub pattern: String,
    /// Pattern parameter that is the ordering key (default: the whole topic)
    #[arg(long, value_name = "K")]
    pub key_param: Option<String>,
    /// QoS at which the route takes messages from the broker
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1))]
    pub qos: u32,
    /// ordered: one owner per key, in order; shared: any node, no order
    #[arg(long, value_enum, default_value_t = ModeArg::Ordered)]
    pub mode: ModeArg,
    /// Workers (and MQTT consumers) per node of a shared route
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub workers: Option<u32>,
    /// log, journal, republish:TOPIC_TEMPLATE or custom:NAME
    #[arg(long, value_name = "HANDLER", default_value = "log")]
    pub handler: String,
    /// QoS of republished messages (republish handler; default: --qos)
    #[arg(long, value_name = "Q", value_parser = clap::value_parser!(u32).range(0..=1))]
    pub republish_qos: Option<u32>,
    /// Route-group prefix: the effective pattern is GROUP/PATTERN
    #[arg(long, value_name = "G")]
    pub group: Option<String>,
    /// Matching order: lower first, ties by name
    #[arg(long, value_name = "N", default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i32,
    /// JSON pointer (e.g. /id) to the message id in JSON payloads, for messages that come
    /// without one (MQTT): a redelivered copy is then suppressed by the journal
    #[arg(long, value_name = "POINTER")]
    pub message_id_field: Option<String>,
    /// Write only if the route's current version is V (0: only if it does not exist)
    #[arg(long, value_name = "V")]
    pub expect_version: Option<u64>,
}

/// `--mode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// One owner per key, in order
    Ordered,
    /// Any node, no order
    Shared,
}

/// `--transport` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TransportArg {
    /// Unary gRPC Publish to the nodes (acknowledged by the cluster)
    Grpc,
    /// MQTT QoS 1 to a broker (acknowledged by the broker's PUBACK)
    Mqtt,
}

/// `bench` options.
#[derive(Debug, Args)]
#[command(
    after_help = "Each producer owns a disjoint set of keys and sends its messages in sequence order; over gRPC at most --concurrency messages per producer are in flight, never two of one key. Stops after --messages or --duration, whichever comes first. With --verify, waits until the journals stop growing, reads every key's journal and reports lost, duplicated and reordered messages with a verdict (exit code 1 unless it passes), and the delivery rate: distinct messages in the journals per second from the first publish to the last journal entry (for MQTT the cluster's throughput, which the PUBACK rate is not)."
)]
pub struct BenchArgs {
    /// The route the messages are for (with --verify: a journal route); not used with
    /// --broker-only
    #[arg(long, value_name = "NAME", required_unless_present = "broker_only")]
    pub route: Option<String>,
    /// Topic of a key: {key} is replaced by the key
    #[arg(long, value_name = "T", default_value = "bench/{key}/data")]
    pub topic_template: String,
    /// Number of keys
    #[arg(long, value_name = "K", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub keys: u32,
    /// Number of messages
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub messages: u64,
    /// Target messages per second over all producers; 0: as fast as possible
    #[arg(long, value_name = "R", default_value_t = 0)]
    pub rate: u64,
    /// Payload size in bytes (at least the key|producer|seq| header is sent)
    #[arg(long, value_name = "B", default_value_t = 100)]
    pub payload_bytes: usize,
    /// How to publish
    #[arg(long, value_enum, default_value_t = TransportArg::Grpc)]
    pub transport: TransportArg,
    /// MQTT broker for --transport mqtt
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:1883", env = "ROUTEMQ_MQTT", value_parser = parse_broker)]
    pub mqtt: String,
    /// Number of producers (each with its own connection and keys)
    #[arg(long, value_name = "P", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub producers: u32,
    /// Messages in flight per producer
    #[arg(long, value_name = "C", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=65_534))]
    pub concurrency: u32,
    /// Stop sending after this long (e.g. 30s, 5m)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Read the journals back and check every acknowledged message is there, once, in order
    #[arg(long)]
    pub verify: bool,
    /// With --verify: the journals are settled once they have not grown for this long
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = parse_duration)]
    pub settle: Duration,
    /// With --verify: longest wait for the journals to settle
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub verify_timeout: Duration,
    /// Run id (prefix of keys and message ids; default: random)
    #[arg(long, value_name = "ID", value_parser = parse_run_id)]
    pub run_id: Option<String>,
    /// Baseline without RouteMQ: publish over MQTT as usual, but one rumqttc subscriber (QoS 1)
    /// takes the messages from the broker; reports what the broker alone delivers, checked
    /// like journals (no cluster is contacted)
    #[arg(long)]
    pub broker_only: bool,
}

fn parse_broker(text: &str) -> Result<String, String> {
    routemq_client::bench::parse_broker(text).map(|_| text.trim().to_string())
}

fn parse_run_id(text: &str) -> Result<String, String> {
    if !text.is_empty() && text.len() <= 32 && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(text.to_string())
    } else {
        Err("use 1 to 32 letters, digits or '_'".into())
    }
}

/// `node` subcommands.
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Remove a node from the ring and from Raft; prints the new epoch
    Remove {
        /// Id of the node to remove
        node_id: String,
    },
    /// Ask a node to leave gracefully: it hands every partition (with its journal) to the new
    /// owners, leaves the config and exits; waits until it is gone from the config
    Leave {
        /// Id of the node that is to leave
        node_id: String,
        /// Longest wait for the node to be gone, seconds (0: do not wait)
        #[arg(long, default_value_t = 120)]
        wait_secs: u64,
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
    fn routes_commands() {
        let cli = parse(&[
            "routes",
            "add",
            "telemetry",
            "--pattern",
            "sensors/{device_id}/data",
            "--key-param",
            "device_id",
            "--qos",
            "1",
            "--mode",
            "shared",
            "--workers",
            "4",
            "--handler",
            "republish:out/{device_id}",
            "--group",
            "plant1",
            "--priority",
            "-3",
            "--expect-version",
            "0",
        ])
        .unwrap();
        let Command::Routes(RoutesCommand::Add(add)) = cli.command else {
            panic!("not routes add: {:?}", cli.command);
        };
        assert_eq!(add.name, "telemetry");
        assert_eq!(add.pattern, "sensors/{device_id}/data");
        assert_eq!(add.key_param.as_deref(), Some("device_id"));
        assert_eq!((add.qos, add.mode, add.workers), (1, ModeArg::Shared, Some(4)));
        assert_eq!(add.handler, "republish:out/{device_id}");
        assert_eq!(
            (add.group.as_deref(), add.priority, add.expect_version),
            (Some("plant1"), -3, Some(0))
        );

        let cli = parse(&["routes", "add", "r", "--pattern", "a/+"]).unwrap();
        let Command::Routes(RoutesCommand::Add(add)) = cli.command else {
            panic!("not routes add");
        };
        assert_eq!(
            (add.mode, add.handler.as_str(), add.qos, add.expect_version),
            (ModeArg::Ordered, "log", 0, None)
        );
        assert_eq!(add.message_id_field, None);
        let cli = parse(&[
            "routes",
            "add",
            "r",
            "--pattern",
            "a/+",
            "--message-id-field",
            "/meta/id",
        ])
        .unwrap();
        let Command::Routes(RoutesCommand::Add(add)) = cli.command else {
            panic!("not routes add");
        };
        assert_eq!(add.message_id_field.as_deref(), Some("/meta/id"));

        assert!(matches!(
            parse(&["routes", "list", "--json"]).unwrap().command,
            Command::Routes(RoutesCommand::List)
        ));
        assert!(
            matches!(parse(&["routes", "get", "r"]).unwrap().command, Command::Routes(RoutesCommand::Get { ref name }) if name == "r")
        );
        assert!(matches!(
            parse(&["routes", "remove", "r", "--expect-version", "7"]).unwrap().command,
            Command::Routes(RoutesCommand::Remove { ref name, expect_version: Some(7) }) if name == "r"
        ));
        assert!(matches!(
            parse(&["routes", "apply", "routes.toml"]).unwrap().command,
            Command::Routes(RoutesCommand::Apply { ref file }) if file == &PathBuf::from("routes.toml")
        ));
    }

    #[test]
    fn publish_and_journal_commands() {
        let cli = parse(&["publish", "sensors/d1/data", "hello", "--message-id", "m-1"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Publish { ref topic, payload: Some(ref p), file: None, message_id: Some(ref id) }
                if topic == "sensors/d1/data" && p == "hello" && id == "m-1"
        ));
        let cli = parse(&["publish", "t", "--file", "p.bin"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Publish {
                payload: None,
                file: Some(_),
                ..
            }
        ));
        let cli = parse(&[
            "journal",
            "d1",
            "--route",
            "telemetry",
            "--from",
            "5",
            "--limit",
            "10",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Journal { ref key, ref route, from: 5, limit: Some(10) } if key == "d1" && route == "telemetry"
        ));
        let cli = parse(&["journal", "d1", "--route", "telemetry"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Journal {
                from: 0,
                limit: None,
                ..
            }
        ));
    }

    #[test]
    fn hot_keys_command() {
        let cli = parse(&["hot-keys", "--route", "telemetry"]).unwrap();
        assert!(matches!(cli.command, Command::HotKeys { ref route, limit: 10 } if route == "telemetry"));
        let cli = parse(&["hot-keys", "--route", "r", "--limit", "50"]).unwrap();
        assert!(matches!(cli.command, Command::HotKeys { limit: 50, .. }));
        assert!(parse(&["hot-keys"]).is_err(), "the route is required");
        assert!(parse(&["hot-keys", "--route", "r", "--limit", "0"]).is_err());
        assert!(parse(&["hot-keys", "--route", "r", "--limit", "201"]).is_err());
    }

    #[test]
    fn bench_command() {
        let cli = parse(&["bench", "--route", "b"]).unwrap();
        let Command::Bench(b) = cli.command else {
            panic!("not bench")
        };
        assert_eq!(b.topic_template, "bench/{key}/data");
        assert_eq!(
            (b.keys, b.messages, b.rate, b.payload_bytes),
            (100, 10_000, 0, 100)
        );
        assert_eq!(
            (b.transport, b.producers, b.concurrency),
            (TransportArg::Grpc, 1, 16)
        );
        assert_eq!((b.duration, b.verify, b.run_id), (None, false, None));
        assert_eq!(
            (b.settle, b.verify_timeout),
            (Duration::from_secs(3), Duration::from_secs(60))
        );

        let cli = parse(&[
            "bench",
            "--route",
            "b",
            "--topic-template",
            "s/{key}",
            "--keys",
            "500",
            "--messages",
            "10000",
            "--rate",
            "2000",
            "--payload-bytes",
            "64",
            "--transport",
            "mqtt",
            "--mqtt",
            "broker:1884",
            "--producers",
            "4",
            "--concurrency",
            "32",
            "--duration",
            "30s",
            "--verify",
            "--settle",
            "500ms",
            "--verify-timeout",
            "2m",
            "--run-id",
            "smoke1",
            "--json",
        ])
        .unwrap();
        assert!(cli.json);
        let Command::Bench(b) = cli.command else {
            panic!("not bench")
        };
        assert_eq!(
            (b.keys, b.messages, b.rate, b.payload_bytes),
            (500, 10_000, 2000, 64)
        );
        assert_eq!(
            (b.transport, b.mqtt.as_str()),
            (TransportArg::Mqtt, "broker:1884")
        );
        assert_eq!((b.producers, b.concurrency), (4, 32));
        assert_eq!(b.duration, Some(Duration::from_secs(30)));
        assert!(b.verify);
        assert_eq!(
            (b.settle, b.verify_timeout),
            (Duration::from_millis(500), Duration::from_secs(120))
        );
        assert_eq!(b.run_id.as_deref(), Some("smoke1"));
        assert!(!b.broker_only);

        // A broker-only run needs no route; any other run does.
        let cli = parse(&["bench", "--broker-only", "--transport", "mqtt"]).unwrap();
        let Command::Bench(b) = cli.command else {
            panic!("not bench")
        };
        assert!(b.broker_only && b.route.is_none());
        assert!(parse(&["bench", "--transport", "mqtt"]).is_err());
    }

    #[test]
    fn usage_errors_of_new_commands() {
        for args in [
            &["routes"][..],
            &["routes", "add", "r"][..],
            &["routes", "add", "r", "--pattern", "a", "--qos", "2"][..],
            &["routes", "add", "r", "--pattern", "a", "--mode", "fifo"][..],
            &["routes", "add", "r", "--pattern", "a", "--workers", "0"][..],
            &["routes", "remove"][..],
            &["routes", "apply"][..],
            &["publish"][..],
            &["publish", "t", "payload", "--file", "f"][..],
            &["journal", "k"][..],
            &["journal", "k", "--route", "r", "--limit", "0"][..],
            &["bench"][..],
            &["bench", "--route", "b", "--transport", "amqp"][..],
            &["bench", "--route", "b", "--mqtt", "nohost"][..],
            &["bench", "--route", "b", "--keys", "0"][..],
            &["bench", "--route", "b", "--concurrency", "0"][..],
            &["bench", "--route", "b", "--run-id", "a/b"][..],
            &["bench", "--route", "b", "--duration", "0s"][..],
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
