//! Node settings: command-line flags, `ROUTEMQ_*` environment variables and a TOML file, in
//! that order of precedence, over built-in defaults.
//!
//! [`StartArgs`] is the clap view (every field optional so that "not given" is visible),
//! [`FileSettings`] the TOML view (unknown keys are errors, so a typo never goes unnoticed),
//! and [`Settings::resolve`] merges them and validates the result into plain values.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

use crate::config::state::{
    validate_node_id, validate_zone, DEFAULT_MAX_VOTERS, MAX_REPLICATION_FACTOR, MAX_WEIGHT,
};
use crate::ingress::IngressSettings;
use crate::ring::RingParams;
use crate::routes::{RouteSpec, RouteTable};

/// Flags of `routemq start`. Each also reads `ROUTEMQ_<NAME>` from the environment.
#[derive(Debug, Clone, Default, Args)]
pub struct StartArgs {
    /// TOML file with settings (keys as the flags, with underscores).
    #[arg(long, env = "ROUTEMQ_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Node id, unique in the cluster: letters, digits, '-', '_', '.'.
    #[arg(long, env = "ROUTEMQ_NODE_ID")]
    pub node_id: Option<String>,
    /// gRPC listen address (cluster API, forwarding, Raft) [default: 127.0.0.1:7001].
    #[arg(long, env = "ROUTEMQ_GRPC", value_name = "ADDR")]
    pub grpc: Option<SocketAddr>,
    /// Gossip (UDP) listen address [default: 127.0.0.1:7101].
    #[arg(long, env = "ROUTEMQ_GOSSIP", value_name = "ADDR")]
    pub gossip: Option<SocketAddr>,
    /// HTTP listen address (/metrics, /health, /ready) [default: 127.0.0.1:7201].
    #[arg(long, env = "ROUTEMQ_HTTP", value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// Host or IP peers use to reach this node, when listening on 0.0.0.0 [default: the listen IP].
    #[arg(long, env = "ROUTEMQ_ADVERTISE_HOST", value_name = "HOST")]
    pub advertise_host: Option<String>,
    /// Data directory [default: data/<node-id>].
    #[arg(long, env = "ROUTEMQ_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Gossip address of a node to join through (host:port; repeatable, or comma-separated).
    #[arg(
        long = "seed",
        env = "ROUTEMQ_SEEDS",
        value_name = "HOST:PORT",
        value_delimiter = ','
    )]
    pub seeds: Vec<String>,
    /// Create a new cluster with this node as its first member (only with an empty data dir).
    #[arg(long, env = "ROUTEMQ_BOOTSTRAP")]
    pub bootstrap: bool,
    /// Partitions of a new cluster (power of two; bootstrap only) [default: 16384].
    #[arg(long, env = "ROUTEMQ_PARTITIONS")]
    pub partitions: Option<u32>,
    /// Virtual nodes per unit of weight (bootstrap only) [default: 512].
    #[arg(long, env = "ROUTEMQ_VNODES_PER_WEIGHT")]
    pub vnodes_per_weight: Option<u32>,
    /// Cap on Raft voters; further nodes are learners (bootstrap only) [default: 5].
    #[arg(long, env = "ROUTEMQ_MAX_VOTERS")]
    pub max_voters: Option<u32>,
    /// This node's weight: its share of partitions relative to others [default: 1].
    #[arg(long, env = "ROUTEMQ_WEIGHT")]
    pub weight: Option<u32>,
    /// Gossip namespace; nodes with another name ignore each other [default: routemq].
    #[arg(long, env = "ROUTEMQ_CLUSTER_NAME")]
    pub cluster_name: Option<String>,
    /// Milliseconds between gossip rounds [default: 200].
    #[arg(long, env = "ROUTEMQ_GOSSIP_INTERVAL_MS")]
    pub gossip_interval_ms: Option<u64>,
    /// Phi threshold of the failure detector [default: 8].
    #[arg(long, env = "ROUTEMQ_PHI_THRESHOLD")]
    pub phi_threshold: Option<f64>,
    /// Raft heartbeat interval in milliseconds [default: 150].
    #[arg(long, env = "ROUTEMQ_RAFT_HEARTBEAT_MS")]
    pub raft_heartbeat_ms: Option<u64>,
    /// Raft minimum election timeout in milliseconds (max is twice) [default: 750].
    #[arg(long, env = "ROUTEMQ_RAFT_ELECTION_TIMEOUT_MS")]
    pub raft_election_timeout_ms: Option<u64>,
    /// Log format: text or json [default: text].
    #[arg(long, env = "ROUTEMQ_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// TOML file of routes (`[[route]]` tables) loaded when this node bootstraps the cluster.
    #[arg(long, env = "ROUTEMQ_ROUTES", value_name = "FILE")]
    pub routes: Option<PathBuf>,
    /// MQTT broker (HOST:PORT) to take messages from; also enabled by the Python RouteMQ's
    /// `MQTT_BROKER` / `MQTT_PORT` variables (with `MQTT_USERNAME`, `MQTT_PASSWORD`,
    /// `MQTT_CLIENT_ID`, `MQTT_GROUP_NAME`, `MQTT_TLS_*`). Without either, no MQTT ingress.
    #[arg(long, env = "ROUTEMQ_MQTT", value_name = "HOST:PORT")]
    pub mqtt: Option<String>,
    /// Messages an ordered route's MQTT connection holds at once: different keys are dispatched
    /// concurrently, each key in order, PUBACKs in arrival order; 1 = one at a time
    /// [default: 256].
    #[arg(long, env = "ROUTEMQ_MQTT_ORDERED_IN_FLIGHT", value_name = "N")]
    pub mqtt_ordered_in_flight: Option<usize>,
    /// Largest accepted message payload in bytes [default: 262144].
    #[arg(long, env = "ROUTEMQ_MAX_PAYLOAD_BYTES")]
    pub max_payload_bytes: Option<usize>,
    /// Ownership lease in milliseconds: an owner processes only while a renewal through the
    /// Raft majority is at most this old [default: 1500].
    #[arg(long, env = "ROUTEMQ_LEASE_MS")]
    pub lease_ms: Option<u64>,
    /// Milliseconds without lease renewal (and dead to gossip) after which the leader removes a
    /// member and moves its partitions; at least the lease + 500 [default: 2500].
    #[arg(long, env = "ROUTEMQ_FAILOVER_TIMEOUT_MS")]
    pub failover_timeout_ms: Option<u64>,
    /// Longest a graceful leave (SIGTERM, `routemq-ctl node leave`) waits for the handoff
    /// before the node exits anyway, in milliseconds [default: 30000].
    #[arg(long, env = "ROUTEMQ_LEAVE_TIMEOUT_MS")]
    pub leave_timeout_ms: Option<u64>,
    /// Copies of each partition: its owner and the next R-1 members on the ring (placement uses
    /// at most the member count); fixed when the cluster is bootstrapped, a node started with
    /// another value than the cluster's refuses to start [default: 3].
    #[arg(long, env = "ROUTEMQ_REPLICATION_FACTOR", value_name = "R")]
    pub replication_factor: Option<u32>,
    /// In-sync replicas a write needs before it is acknowledged; with fewer, writes are refused
    /// with UNAVAILABLE (bootstrap only) [default: (R+1)/2: 2 with R=3, 1 with R=1].
    #[arg(long, env = "ROUTEMQ_MIN_INSYNC", value_name = "N")]
    pub min_insync: Option<u32>,
    /// This node's zone (rack, availability zone): a partition's replicas go to distinct zones
    /// first [default: none].
    #[arg(long, env = "ROUTEMQ_ZONE")]
    pub zone: Option<String>,
    /// Testing only: ignore the ownership lease (shows what fencing prevents). Never in production.
    #[arg(long, hide = true)]
    pub unsafe_no_fencing: bool,
    /// Testing only: new owners start without handoff (shows what handoff prevents).
    #[arg(long, hide = true)]
    pub unsafe_no_handoff: bool,
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The TOML settings file. Keys mirror the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    node_id: Option<String>,
    grpc: Option<SocketAddr>,
    gossip: Option<SocketAddr>,
    http: Option<SocketAddr>,
    advertise_host: Option<String>,
    data_dir: Option<PathBuf>,
    seeds: Option<Vec<String>>,
    bootstrap: Option<bool>,
    partitions: Option<u32>,
    vnodes_per_weight: Option<u32>,
    max_voters: Option<u32>,
    weight: Option<u32>,
    cluster_name: Option<String>,
    gossip_interval_ms: Option<u64>,
    phi_threshold: Option<f64>,
    raft_heartbeat_ms: Option<u64>,
    raft_election_timeout_ms: Option<u64>,
    log_format: Option<LogFormat>,
    routes: Option<PathBuf>,
    mqtt: Option<String>,
    mqtt_ordered_in_flight: Option<usize>,
    max_payload_bytes: Option<usize>,
    lease_ms: Option<u64>,
    failover_timeout_ms: Option<u64>,
    leave_timeout_ms: Option<u64>,
    replication_factor: Option<u32>,
    min_insync: Option<u32>,
    zone: Option<String>,
}

/// The routes file: `[[route]]` tables.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoutesFile {
    #[serde(default)]
    route: Vec<RouteSpec>,
}

/// Errors in settings: all fatal at start, all naming what to fix.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys or wrong types.
    #[error("malformed config file {path}: {message}")]
    ParseFile {
        /// The path.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A required setting is missing.
    #[error("missing setting: {0}")]
    Missing(&'static str),
    /// A setting has an invalid value.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// Which setting.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

/// Resolved, validated node settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Node id.
    pub node_id: String,
    /// gRPC listen address.
    pub grpc_listen: SocketAddr,
    /// gRPC address advertised to peers and clients.
    pub grpc_advertise: SocketAddr,
    /// Gossip listen address.
    pub gossip_listen: SocketAddr,
    /// Gossip address advertised to peers.
    pub gossip_advertise: SocketAddr,
    /// HTTP listen address.
    pub http_listen: SocketAddr,
    /// HTTP address advertised to peers.
    pub http_advertise: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Gossip seeds.
    pub seeds: Vec<String>,
    /// Bootstrap a new cluster.
    pub bootstrap: bool,
    /// Ring parameters for bootstrap.
    pub ring: RingParams,
    /// Voter cap for bootstrap.
    pub max_voters: u32,
    /// This node's weight.
    pub weight: u32,
    /// Gossip namespace.
    pub cluster_name: String,
    /// Gossip interval.
    pub gossip_interval: Duration,
    /// Failure detector threshold.
    pub phi_threshold: f64,
    /// Raft heartbeat interval.
    pub raft_heartbeat: Duration,
    /// Raft minimum election timeout.
    pub raft_election_timeout: Duration,
    /// Log format.
    pub log_format: LogFormat,
    /// Routes to create when bootstrapping.
    pub bootstrap_routes: Vec<RouteSpec>,
    /// Largest accepted payload.
    pub max_payload_bytes: usize,
    /// Ownership lease (and the test switches).
    pub lease: crate::fencing::LeaseSettings,
    /// Failover timeout (leader side).
    pub failover_timeout: Duration,
    /// Bound of a graceful leave.
    pub leave_timeout: Duration,
    /// MQTT ingress, when a broker is configured.
    pub mqtt: Option<IngressSettings>,
    /// Replication parameters and this node's zone.
    pub replication: ReplicationSettings,
}

/// Replication as the node's flags ask for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationSettings {
    /// Replication factor R (1..=7): proposed at bootstrap.
    pub factor: u32,
    /// Minimum in-sync replicas (1..=R): proposed at bootstrap.
    pub min_insync: u32,
    /// True if R or min-insync was given (flag, env or file): a node joining or restarting
    /// checks them against the cluster's (`ReplicationConfig::check_flags`); defaults are not
    /// checked, so a node started without them joins any cluster.
    pub explicit: bool,
    /// This node's zone ("": none).
    pub zone: String,
}

/// Default replication factor.
pub const DEFAULT_REPLICATION_FACTOR: u32 = 3;

/// Resolves and validates the replication flags.
pub fn resolve_replication(
    factor: Option<u32>,
    min_insync: Option<u32>,
    zone: Option<String>,
) -> Result<ReplicationSettings, SettingsError> {
    let explicit = factor.is_some() || min_insync.is_some();
    let factor = factor.unwrap_or(DEFAULT_REPLICATION_FACTOR);
    if !(1..=MAX_REPLICATION_FACTOR).contains(&factor) {
        return Err(invalid(
            "replication factor",
            format!(
                "{factor} is not in 1..={MAX_REPLICATION_FACTOR} (1 keeps a single copy of each partition)"
            ),
        ));
    }
    let min_insync = min_insync.unwrap_or(factor.div_ceil(2));
    if !(1..=factor).contains(&min_insync) {
        return Err(invalid(
            "min-insync",
            format!("{min_insync} is not in 1..={factor}: at least 1 and at most the replication factor"),
        ));
    }
    let zone = zone.map(|z| z.trim().to_string()).unwrap_or_default();
    validate_zone(&zone).map_err(|e| match e {
        crate::config::state::ConfigError::Invalid { reason, .. } => invalid("zone", reason),
        other => invalid("zone", other.to_string()),
    })?;
    Ok(ReplicationSettings {
        factor,
        min_insync,
        explicit,
        zone,
    })
}

impl FileSettings {
    /// Reads and parses a settings file.
    pub fn load(path: &Path) -> Result<Self, SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::ReadFile {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses settings from TOML text (`path` is only used in error messages).
    pub fn parse(path: &Path, text: &str) -> Result<Self, SettingsError> {
        toml::from_str(text).map_err(|e| SettingsError::ParseFile {
            path: path.to_path_buf(),
            message: e.to_string().trim().replace('\n', " "),
        })
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        field,
        reason: reason.into(),
    }
}

impl Settings {
    /// Merges flags/env over the file (if `args.config` names one) over defaults.
    pub fn resolve(args: StartArgs) -> Result<Self, SettingsError> {
        let file = match &args.config {
            Some(path) => FileSettings::load(path)?,
            None => FileSettings::default(),
        };
        Self::merge(args, file)
    }

    /// Merges flags/env (`args`) over `file` over defaults, and validates.
    pub fn merge(args: StartArgs, file: FileSettings) -> Result<Self, SettingsError> {
        let node_id = args.node_id.or(file.node_id).ok_or(SettingsError::Missing(
            "node id (--node-id, ROUTEMQ_NODE_ID or node_id in the config file)",
        ))?;
        validate_node_id(&node_id).map_err(|e| invalid("node id", e.to_string()))?;
        let grpc_listen = args.grpc.or(file.grpc).unwrap_or(([127, 0, 0, 1], 7001).into());
        let gossip_listen = args
            .gossip
            .or(file.gossip)
            .unwrap_or(([127, 0, 0, 1], 7101).into());
        let http_listen = args.http.or(file.http).unwrap_or(([127, 0, 0, 1], 7201).into());
        let ports = [grpc_listen.port(), gossip_listen.port(), http_listen.port()];
        if ports[0] == ports[2] && grpc_listen.ip() == http_listen.ip() {
            return Err(invalid("addresses", "the gRPC and HTTP addresses must differ"));
        }
        let advertise_ip = match args.advertise_host.or(file.advertise_host) {
            Some(host) => Some(resolve_host(&host)?),
            None => None,
        };
        let advertise = |listen: SocketAddr, field: &'static str| -> Result<SocketAddr, SettingsError> {
            match advertise_ip {
                Some(ip) => Ok(SocketAddr::new(ip, listen.port())),
                None if listen.ip().is_unspecified() => Err(invalid(
                    field,
                    format!("{listen} listens on every interface; set --advertise-host to the address peers should use"),
                )),
                None => Ok(listen),
            }
        };
        let seeds: Vec<String> = if args.seeds.is_empty() {
            file.seeds.unwrap_or_default()
        } else {
            args.seeds
        };
        let seeds: Vec<String> = seeds
            .into_iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        for seed in &seeds {
            validate_seed(seed)?;
        }
        // Neither seeds nor bootstrap is fine for a restart; node::run refuses it for a fresh
        // data directory, where it would have no way into a cluster.
        let bootstrap = args.bootstrap || file.bootstrap.unwrap_or(false);
        let ring = RingParams {
            partitions: args
                .partitions
                .or(file.partitions)
                .unwrap_or(RingParams::default().partitions),
            vnodes_per_weight: args
                .vnodes_per_weight
                .or(file.vnodes_per_weight)
                .unwrap_or(RingParams::default().vnodes_per_weight),
        };
        ring.validate()
            .map_err(|e| invalid("ring parameters", e.to_string()))?;
        let max_voters = args.max_voters.or(file.max_voters).unwrap_or(DEFAULT_MAX_VOTERS);
        if !(1..=9).contains(&max_voters) {
            return Err(invalid("max voters", format!("{max_voters} is not in 1..=9")));
        }
        let weight = args.weight.or(file.weight).unwrap_or(1);
        if !(1..=MAX_WEIGHT).contains(&weight) {
            return Err(invalid("weight", format!("{weight} is not in 1..={MAX_WEIGHT}")));
        }
        let gossip_interval_ms = args.gossip_interval_ms.or(file.gossip_interval_ms).unwrap_or(200);
        if !(10..=10_000).contains(&gossip_interval_ms) {
            return Err(invalid(
                "gossip interval",
                format!("{gossip_interval_ms} ms is not in 10..=10000"),
            ));
        }
        let phi_threshold = args.phi_threshold.or(file.phi_threshold).unwrap_or(8.0);
        if !(phi_threshold.is_finite() && (1.0..=100.0).contains(&phi_threshold)) {
            return Err(invalid(
                "phi threshold",
                format!("{phi_threshold} is not in 1..=100"),
            ));
        }
        let raft_heartbeat_ms = args.raft_heartbeat_ms.or(file.raft_heartbeat_ms).unwrap_or(150);
        let raft_election_timeout_ms = args
            .raft_election_timeout_ms
            .or(file.raft_election_timeout_ms)
            .unwrap_or(750);
        if !(10..=10_000).contains(&raft_heartbeat_ms) || raft_election_timeout_ms < 3 * raft_heartbeat_ms {
            return Err(invalid(
                "raft timing",
                format!(
                    "heartbeat {raft_heartbeat_ms} ms must be in 10..=10000 and the election timeout \
                     ({raft_election_timeout_ms} ms) at least 3 heartbeats"
                ),
            ));
        }
        let cluster_name = args
            .cluster_name
            .or(file.cluster_name)
            .unwrap_or_else(|| "routemq".into());
        if cluster_name.is_empty() {
            return Err(invalid("cluster name", "must not be empty"));
        }
        let bootstrap_routes = match args.routes.or(file.routes) {
            Some(path) => load_routes(&path)?,
            None => Vec::new(),
        };
        let max_payload_bytes = args
            .max_payload_bytes
            .or(file.max_payload_bytes)
            .unwrap_or(256 * 1024);
        if !(1..=16 * 1024 * 1024).contains(&max_payload_bytes) {
            return Err(invalid(
                "max payload",
                format!("{max_payload_bytes} bytes is not in 1..=16777216"),
            ));
        }
        let lease_ms = args.lease_ms.or(file.lease_ms).unwrap_or(1500);
        if !(200..=60_000).contains(&lease_ms) {
            return Err(invalid("lease", format!("{lease_ms} ms is not in 200..=60000")));
        }
        let failover_timeout_ms = args
            .failover_timeout_ms
            .or(file.failover_timeout_ms)
            .unwrap_or(2500);
        if failover_timeout_ms < lease_ms + 500 || failover_timeout_ms > 600_000 {
            return Err(invalid(
                "failover timeout",
                format!(
                    "{failover_timeout_ms} ms must be at least the lease ({lease_ms} ms) + 500 ms, so that a \
                     cut-off owner has stopped before its partitions move, and at most 600000"
                ),
            ));
        }
        let leave_timeout_ms = args.leave_timeout_ms.or(file.leave_timeout_ms).unwrap_or(30_000);
        if !(100..=3_600_000).contains(&leave_timeout_ms) {
            return Err(invalid(
                "leave timeout",
                format!("{leave_timeout_ms} ms is not in 100..=3600000"),
            ));
        }
        let replication = resolve_replication(
            args.replication_factor.or(file.replication_factor),
            args.min_insync.or(file.min_insync),
            args.zone.or(file.zone),
        )?;
        let node_id_for_mqtt = node_id.clone();
        let data_dir = args
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("data").join(&node_id));
        Ok(Settings {
            grpc_advertise: advertise(grpc_listen, "grpc address")?,
            gossip_advertise: advertise(gossip_listen, "gossip address")?,
            http_advertise: advertise(http_listen, "http address")?,
            node_id,
            grpc_listen,
            gossip_listen,
            http_listen,
            data_dir,
            seeds,
            bootstrap,
            ring,
            max_voters,
            weight,
            cluster_name,
            gossip_interval: Duration::from_millis(gossip_interval_ms),
            phi_threshold,
            raft_heartbeat: Duration::from_millis(raft_heartbeat_ms),
            raft_election_timeout: Duration::from_millis(raft_election_timeout_ms),
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
            bootstrap_routes,
            max_payload_bytes,
            lease: crate::fencing::LeaseSettings {
                lease: Duration::from_millis(lease_ms),
                unsafe_no_fencing: args.unsafe_no_fencing,
                unsafe_no_handoff: args.unsafe_no_handoff,
            },
            failover_timeout: Duration::from_millis(failover_timeout_ms),
            leave_timeout: Duration::from_millis(leave_timeout_ms),
            mqtt: resolve_mqtt(
                args.mqtt.or(file.mqtt),
                args.mqtt_ordered_in_flight.or(file.mqtt_ordered_in_flight),
                &node_id_for_mqtt,
                max_payload_bytes,
            )?,
            replication,
        })
    }
}

/// Reads and validates a routes file.
pub fn load_routes(path: &Path) -> Result<Vec<RouteSpec>, SettingsError> {
    let text = std::fs::read_to_string(path).map_err(|source| SettingsError::ReadFile {
        path: path.to_path_buf(),
        source,
    })?;
    let file: RoutesFile = toml::from_str(&text).map_err(|e| SettingsError::ParseFile {
        path: path.to_path_buf(),
        message: e.to_string().trim().replace('\n', " "),
    })?;
    RouteTable::build(file.route.iter().cloned()).map_err(|e| SettingsError::ParseFile {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(file.route)
}

/// MQTT settings from the `MQTT_*` environment, with `--mqtt HOST:PORT` taking precedence.
/// None when neither names a broker. The node's payload limit is the ingress's too: one limit
/// for every ingress (gRPC and MQTT) and for the `republish` publisher.
fn resolve_mqtt(
    flag: Option<String>,
    ordered_in_flight: Option<usize>,
    node_id: &str,
    max_payload_bytes: usize,
) -> Result<Option<IngressSettings>, SettingsError> {
    let env_broker = std::env::var("MQTT_BROKER").ok().filter(|v| !v.trim().is_empty());
    if flag.is_none() && env_broker.is_none() {
        return Ok(None);
    }
    let mut mqtt = IngressSettings::from_env().map_err(|e| invalid("MQTT settings", e.to_string()))?;
    if let Some(flag) = flag {
        let (host, port) = flag
            .rsplit_once(':')
            .and_then(|(h, p)| {
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0 && !h.is_empty())
                    .map(|p| (h.to_string(), p))
            })
            .ok_or_else(|| invalid("mqtt broker", format!("{flag:?} is not HOST:PORT")))?;
        mqtt.host = host;
        mqtt.port = port;
    }
    mqtt.node_id = node_id.to_string();
    mqtt.max_payload_bytes = max_payload_bytes;
    if let Some(n) = ordered_in_flight {
        mqtt.ordered_max_in_flight = n;
    }
    mqtt.validate()
        .map_err(|e| invalid("MQTT settings", e.to_string()))?;
    Ok(Some(mqtt))
}

fn resolve_host(host: &str) -> Result<IpAddr, SettingsError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ip);
    }
    (host, 0)
        .to_socket_addrs()
        .map_err(|e| invalid("advertise host", format!("cannot resolve {host:?}: {e}")))?
        .map(|a| a.ip())
        .next()
        .ok_or_else(|| invalid("advertise host", format!("{host:?} resolves to no address")))
}

fn validate_seed(seed: &str) -> Result<(), SettingsError> {
    let valid = match seed.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().map(|p| p != 0).unwrap_or(false),
        None => false,
    };
    if valid {
        Ok(())
    } else {
        Err(invalid("seed", format!("{seed:?} is not host:port")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(node_id: &str) -> StartArgs {
        StartArgs {
            node_id: Some(node_id.into()),
            bootstrap: true,
            ..Default::default()
        }
    }

    #[test]
    fn flags_win_over_file_and_file_over_defaults() {
        let file = FileSettings::parse(
            Path::new("t.toml"),
            "node_id = \"from-file\"\ngrpc = \"127.0.0.1:9001\"\nhttp = \"127.0.0.1:9201\"\nweight = 3\n",
        )
        .unwrap();
        let settings = Settings::merge(args("from-flag"), file).unwrap();
        assert_eq!(settings.node_id, "from-flag");
        assert_eq!(settings.grpc_listen.port(), 9001);
        assert_eq!(settings.http_listen.port(), 9201);
        assert_eq!(settings.gossip_listen.port(), 7101);
        assert_eq!(settings.weight, 3);
        assert_eq!(settings.data_dir, PathBuf::from("data/from-flag"));
    }

    #[test]
    fn unknown_keys_and_bad_types_are_errors() {
        let err = FileSettings::parse(Path::new("t.toml"), "nodeid = \"x\"").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        let err = FileSettings::parse(Path::new("t.toml"), "grpc = 5").unwrap_err();
        assert!(err.to_string().contains("t.toml"), "{err}");
    }

    #[test]
    fn invalid_values_are_named() {
        let cases = [
            StartArgs {
                node_id: Some("bad id".into()),
                ..args("x")
            },
            StartArgs {
                weight: Some(0),
                ..args("n1")
            },
            StartArgs {
                partitions: Some(1000),
                ..args("n1")
            },
            StartArgs {
                seeds: vec!["nohost".into()],
                ..args("n1")
            },
            StartArgs {
                grpc: Some("0.0.0.0:7001".parse().unwrap()),
                ..args("n1")
            },
            StartArgs {
                phi_threshold: Some(f64::NAN),
                ..args("n1")
            },
        ];
        for case in cases {
            let debug = format!("{case:?}");
            assert!(
                Settings::merge(case, FileSettings::default()).is_err(),
                "accepted {debug}"
            );
        }
    }

    #[test]
    fn ordered_mqtt_window_from_file_flag_or_default() {
        let file = |extra: &str| {
            FileSettings::parse(
                Path::new("t.toml"),
                &format!("mqtt = \"127.0.0.1:1883\"\n{extra}"),
            )
            .unwrap()
        };
        let window = |settings: Settings| settings.mqtt.map(|m| m.ordered_max_in_flight);
        assert_eq!(window(Settings::merge(args("n1"), file("")).unwrap()), Some(256));
        let from_file = Settings::merge(args("n1"), file("mqtt_ordered_in_flight = 16")).unwrap();
        assert_eq!(window(from_file), Some(16));
        let flag = StartArgs {
            mqtt_ordered_in_flight: Some(1),
            ..args("n1")
        };
        assert_eq!(
            window(Settings::merge(flag, file("mqtt_ordered_in_flight = 16")).unwrap()),
            Some(1)
        );
        let zero = StartArgs {
            mqtt_ordered_in_flight: Some(0),
            ..args("n1")
        };
        let err = Settings::merge(zero, file("")).unwrap_err();
        assert!(err.to_string().contains("ordered_max_in_flight"), "{err}");
    }

    #[test]
    fn replication_defaults_and_flags() {
        let settings = Settings::merge(args("n1"), FileSettings::default()).unwrap();
        assert_eq!(
            settings.replication,
            ReplicationSettings {
                factor: 3,
                min_insync: 2,
                explicit: false,
                zone: String::new()
            }
        );
        let one = resolve_replication(Some(1), None, None).unwrap();
        assert_eq!((one.factor, one.min_insync, one.explicit), (1, 1, true));
        let file = FileSettings::parse(
            Path::new("t.toml"),
            "replication_factor = 5\nmin_insync = 3\nzone = \"eu-1a\"\n",
        )
        .unwrap();
        let settings = Settings::merge(args("n1"), file).unwrap();
        assert_eq!(settings.replication.factor, 5);
        assert_eq!(settings.replication.min_insync, 3);
        assert_eq!(settings.replication.zone, "eu-1a");
    }

    #[test]
    fn bad_replication_flags_are_explained() {
        let message = |factor, min_insync, zone: Option<&str>| {
            resolve_replication(factor, min_insync, zone.map(str::to_string))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            message(Some(0), None, None),
            "invalid replication factor: 0 is not in 1..=7 (1 keeps a single copy of each partition)"
        );
        assert_eq!(
            message(Some(8), None, None),
            "invalid replication factor: 8 is not in 1..=7 (1 keeps a single copy of each partition)"
        );
        assert_eq!(
            message(Some(3), Some(4), None),
            "invalid min-insync: 4 is not in 1..=3: at least 1 and at most the replication factor"
        );
        assert_eq!(
            message(None, Some(0), None),
            "invalid min-insync: 0 is not in 1..=3: at least 1 and at most the replication factor"
        );
        assert!(message(None, None, Some("eu 1")).starts_with("invalid zone: "));
        let flags = StartArgs {
            replication_factor: Some(0),
            ..args("n1")
        };
        assert!(Settings::merge(flags, FileSettings::default()).is_err());
    }

    #[test]
    fn the_node_payload_limit_is_the_mqtt_ingress_limit() {
        let file = || FileSettings::parse(Path::new("t.toml"), "mqtt = \"127.0.0.1:1883\"\n").unwrap();
        let limit = |max_payload_bytes| {
            let args = StartArgs {
                max_payload_bytes,
                ..args("n1")
            };
            let settings = Settings::merge(args, file()).unwrap();
            let mqtt = settings.mqtt.unwrap();
            assert_eq!(mqtt.max_payload_bytes, settings.max_payload_bytes);
            mqtt.max_payload_bytes
        };
        assert_eq!(limit(None), 256 * 1024);
        assert_eq!(limit(Some(4 << 20)), 4 << 20);
        assert_eq!(limit(Some(1000)), 1000);
    }

    #[test]
    fn advertise_host_replaces_unspecified_listen_ip() {
        let settings = Settings::merge(
            StartArgs {
                grpc: Some("0.0.0.0:7001".parse().unwrap()),
                advertise_host: Some("127.0.0.2".into()),
                ..args("n1")
            },
            FileSettings::default(),
        )
        .unwrap();
        assert_eq!(settings.grpc_advertise, "127.0.0.2:7001".parse().unwrap());
    }
}
