//! Broker address, credentials, TLS and the ingress's timing knobs.
//!
//! [`IngressSettings::from_env`] honours the Python RouteMQ's variables, so an existing
//! deployment's environment carries over (empty values count as unset, as docker-compose's
//! `${VAR:-}` produces them):
//!
//! | variable | field | default |
//! |---|---|---|
//! | `MQTT_BROKER` | `host` | `localhost` |
//! | `MQTT_PORT` | `port` | 1883 (8883 with TLS) |
//! | `MQTT_USERNAME`, `MQTT_PASSWORD` | credentials | none |
//! | `MQTT_CLIENT_ID` | `client_id_prefix` | `routemq` |
//! | `MQTT_GROUP_NAME` | `group_name` (shared subscriptions) | `routemq` |
//! | `MQTT_TLS_ENABLED` | `tls` (`true/false/1/0/yes/no/on/off`) | false |
//! | `MQTT_TLS_CA_CERTS` | `tls_ca_file` (PEM) | the system bundle |
//! | `MQTT_TLS_CERTFILE`, `MQTT_TLS_KEYFILE` | client certificate and key (PEM) | none |
//! | `MQTT_TLS_INSECURE` | refused when true: certificate checks cannot be switched off | false |
//! | `MQTT_RETRY_MIN_DELAY`, `MQTT_RETRY_MAX_DELAY` | reconnect backoff, seconds | 0.5, 30 |
//!
//! The TLS names are the ones the Python RouteMQ reads (`MQTT_TLS_ENABLED`, not `MQTT_USE_TLS`).
//! The node's own `ROUTEMQ_MQTT_*` flags override these fields after `from_env`.

use std::path::PathBuf;
use std::time::Duration;

use rumqttc::{MqttOptions, NetworkOptions, Transport};

/// Largest MQTT packet: 1 byte header + 4 bytes remaining length + 268,435,455 bytes.
pub const MQTT_MAX_PACKET_BYTES: usize = 268_435_460;

/// Most messages an ordered route's connection may hold: MQTT packet ids are 16 bits, so a
/// broker cannot have more unacknowledged messages out on one connection.
pub const MAX_ORDERED_IN_FLIGHT: usize = 65_535;

/// The environment variables [`IngressSettings::from_env`] reads.
pub const ENV_VARS: &[&str] = &[
    "MQTT_BROKER",
    "MQTT_PORT",
    "MQTT_USERNAME",
    "MQTT_PASSWORD",
    "MQTT_CLIENT_ID",
    "MQTT_GROUP_NAME",
    "MQTT_TLS_ENABLED",
    "MQTT_TLS_CA_CERTS",
    "MQTT_TLS_CERTFILE",
    "MQTT_TLS_KEYFILE",
    "MQTT_TLS_INSECURE",
    "MQTT_RETRY_MIN_DELAY",
    "MQTT_RETRY_MAX_DELAY",
];

/// Where CA bundles usually live when `MQTT_TLS_CA_CERTS` is not given.
const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
    "/etc/ssl/ca-bundle.pem",
];

/// A setting with a bad value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngressSettingsError {
    /// A variable's value cannot be parsed or is out of range.
    #[error("{var}={value:?}: {reason}")]
    BadValue {
        /// Variable or field name.
        var: String,
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Values that do not fit together (or a file that cannot be read).
    #[error("MQTT ingress settings: {0}")]
    Invalid(String),
}

/// Why a connection's TLS settings cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsFilesError {
    /// A certificate or key file cannot be read.
    #[error("{}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// No CA file is configured and the system has no CA bundle.
    #[error("no system CA bundle found")]
    NoSystemCaBundle,
}

fn bad(var: &str, value: impl Into<String>, reason: impl Into<String>) -> IngressSettingsError {
    IngressSettingsError::BadValue {
        var: var.to_string(),
        value: value.into(),
        reason: reason.into(),
    }
}

/// How the ingress reaches the broker and paces itself.
#[derive(Clone)]
pub struct IngressSettings {
    /// Broker host name or address.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// MQTT user name.
    pub username: Option<String>,
    /// MQTT password (needs a user name).
    pub password: Option<String>,
    /// Connect over TLS.
    pub tls: bool,
    /// PEM file with the CA certificates to trust; the system bundle when `None`.
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate (with `tls_client_key_file`).
    pub tls_client_cert_file: Option<PathBuf>,
    /// PEM client private key (with `tls_client_cert_file`).
    pub tls_client_key_file: Option<PathBuf>,
    /// This node's id, part of shared connections' client ids.
    pub node_id: String,
    /// Client id prefix of shared connections: `<prefix>-<node>-<route>-<i>`.
    pub client_id_prefix: String,
    /// Shared subscription group: `$share/<group>/<filter>`.
    pub group_name: String,
    /// MQTT keep-alive (zero, or 1 s to 65535 s).
    pub keep_alive: Duration,
    /// TCP + TLS + CONNACK timeout (whole seconds, at least 1).
    pub connect_timeout: Duration,
    /// First reconnect delay.
    pub reconnect_backoff_min: Duration,
    /// Longest reconnect delay.
    pub reconnect_backoff_max: Duration,
    /// The node's `--max-payload-bytes` (set by the node's settings; one limit for every
    /// ingress and for the `republish` publisher). Larger payloads are refused without
    /// dispatch: acknowledged, logged and counted with the reason `payload_too_large`.
    pub max_payload_bytes: usize,
    /// Largest MQTT packet the client reads. A larger one breaks the connection (and a
    /// persistent session would get it again on every reconnect), so keep this at least as
    /// large as the broker's own limit; the default is the MQTT maximum.
    pub max_packet_bytes: usize,
    /// Messages one shared connection dispatches concurrently.
    pub shared_max_in_flight: usize,
    /// Messages an ordered route's connection holds at once: dispatching (one per key),
    /// waiting for an earlier message of their key, or done and waiting for an earlier
    /// acknowledgement. 1 dispatches strictly one at a time. A broker that enforces an
    /// in-flight window caps it further (Mosquitto 2.0.11's `max_inflight_messages` did not).
    pub ordered_max_in_flight: usize,
    /// Dispatch attempts for a shared-route message whose dispatch keeps failing retryably.
    pub shared_dispatch_attempts: u32,
    /// First delay between dispatch retries.
    pub dispatch_retry_min: Duration,
    /// Longest delay between dispatch retries.
    pub dispatch_retry_max: Duration,
    /// Two broker-side closes within this window are taken as a session-takeover fight.
    pub takeover_window: Duration,
    /// First fence delay after a takeover fight (doubles on each further one).
    pub takeover_fence_min: Duration,
    /// Longest fence delay.
    pub takeover_fence_max: Duration,
    /// On shutdown or unsubscribe: how long an in-flight dispatch may still finish (and be
    /// acknowledged) before it is abandoned unacknowledged.
    pub shutdown_grace: Duration,
}

impl std::fmt::Debug for IngressSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngressSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_client_cert_file", &self.tls_client_cert_file)
            .field("tls_client_key_file", &self.tls_client_key_file)
            .field("node_id", &self.node_id)
            .field("client_id_prefix", &self.client_id_prefix)
            .field("group_name", &self.group_name)
            .field("keep_alive", &self.keep_alive)
            .field("connect_timeout", &self.connect_timeout)
            .field("reconnect_backoff_min", &self.reconnect_backoff_min)
            .field("reconnect_backoff_max", &self.reconnect_backoff_max)
            .field("max_payload_bytes", &self.max_payload_bytes)
            .field("max_packet_bytes", &self.max_packet_bytes)
            .field("shared_max_in_flight", &self.shared_max_in_flight)
            .field("ordered_max_in_flight", &self.ordered_max_in_flight)
            .field("shared_dispatch_attempts", &self.shared_dispatch_attempts)
            .field("dispatch_retry_min", &self.dispatch_retry_min)
            .field("dispatch_retry_max", &self.dispatch_retry_max)
            .field("takeover_window", &self.takeover_window)
            .field("takeover_fence_min", &self.takeover_fence_min)
            .field("takeover_fence_max", &self.takeover_fence_max)
            .field("shutdown_grace", &self.shutdown_grace)
            .finish()
    }
}

impl Default for IngressSettings {
    fn default() -> Self {
        Self {
            host: "localhost".into(),
            port: 1883,
            username: None,
            password: None,
            tls: false,
            tls_ca_file: None,
            tls_client_cert_file: None,
            tls_client_key_file: None,
            node_id: "node".into(),
            client_id_prefix: "routemq".into(),
            group_name: "routemq".into(),
            keep_alive: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            reconnect_backoff_min: Duration::from_millis(500),
            reconnect_backoff_max: Duration::from_secs(30),
            max_payload_bytes: 256 * 1024,
            max_packet_bytes: MQTT_MAX_PACKET_BYTES,
            shared_max_in_flight: 64,
            ordered_max_in_flight: 256,
            shared_dispatch_attempts: 8,
            dispatch_retry_min: Duration::from_millis(50),
            dispatch_retry_max: Duration::from_secs(2),
            takeover_window: Duration::from_secs(60),
            takeover_fence_min: Duration::from_secs(30),
            takeover_fence_max: Duration::from_secs(300),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

impl IngressSettings {
    /// Reads the Python RouteMQ's `MQTT_*` variables (see the module docs) over the defaults,
    /// and validates the result.
    pub fn from_env() -> Result<Self, IngressSettingsError> {
        for var in ENV_VARS {
            if let Err(std::env::VarError::NotUnicode(_)) = std::env::var(var) {
                return Err(bad(var, "<not UTF-8>", "not valid UTF-8"));
            }
        }
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// Like [`from_env`](Self::from_env), reading variables through `get`.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self, IngressSettingsError> {
        let get = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        let mut s = Self::default();
        if let Some(v) = get("MQTT_TLS_INSECURE") {
            if parse_bool("MQTT_TLS_INSECURE", &v)? {
                return Err(bad(
                    "MQTT_TLS_INSECURE",
                    v,
                    "certificate verification cannot be switched off; trust the broker's CA with \
                     MQTT_TLS_CA_CERTS instead",
                ));
            }
        }
        if let Some(v) = get("MQTT_TLS_ENABLED") {
            s.tls = parse_bool("MQTT_TLS_ENABLED", &v)?;
        }
        if let Some(v) = get("MQTT_BROKER") {
            s.host = v.trim().to_string();
        }
        s.port = match get("MQTT_PORT") {
            Some(v) => match v.trim().parse::<u16>() {
                Ok(p) if p != 0 => p,
                _ => return Err(bad("MQTT_PORT", v, "not a port number (1-65535)")),
            },
            None if s.tls => 8883,
            None => 1883,
        };
        s.username = get("MQTT_USERNAME");
        s.password = get("MQTT_PASSWORD");
        if let Some(v) = get("MQTT_CLIENT_ID") {
            s.client_id_prefix = v;
        }
        if let Some(v) = get("MQTT_GROUP_NAME") {
            s.group_name = v;
        }
        s.tls_ca_file = get("MQTT_TLS_CA_CERTS").map(PathBuf::from);
        s.tls_client_cert_file = get("MQTT_TLS_CERTFILE").map(PathBuf::from);
        s.tls_client_key_file = get("MQTT_TLS_KEYFILE").map(PathBuf::from);
        if let Some(v) = get("MQTT_RETRY_MIN_DELAY") {
            s.reconnect_backoff_min = parse_seconds("MQTT_RETRY_MIN_DELAY", &v)?;
        }
        if let Some(v) = get("MQTT_RETRY_MAX_DELAY") {
            s.reconnect_backoff_max = parse_seconds("MQTT_RETRY_MAX_DELAY", &v)?;
        }
        s.validate()?;
        Ok(s)
    }

    /// Checks every field; [`spawn_ingress`](super::spawn_ingress) expects settings that pass.
    pub fn validate(&self) -> Result<(), IngressSettingsError> {
        let s = self;
        if s.host.is_empty() || s.host.chars().any(char::is_whitespace) {
            return Err(bad("host", &s.host, "not a host name"));
        }
        if s.port == 0 {
            return Err(bad("port", "0", "not a port number (1-65535)"));
        }
        if s.password.is_some() && s.username.is_none() {
            return Err(IngressSettingsError::Invalid(
                "a password needs a user name (MQTT_USERNAME)".into(),
            ));
        }
        if s.node_id.is_empty() || s.node_id.contains('\0') {
            return Err(bad("node_id", &s.node_id, "empty or contains NUL"));
        }
        if s.client_id_prefix.is_empty() || s.client_id_prefix.contains('\0') {
            return Err(bad(
                "client_id_prefix",
                &s.client_id_prefix,
                "empty or contains NUL",
            ));
        }
        if s.group_name.is_empty() || s.group_name.contains(['/', '+', '#', '\0']) {
            return Err(bad(
                "group_name",
                &s.group_name,
                "empty, or contains '/', '+', '#' or NUL",
            ));
        }
        if !(s.keep_alive.is_zero()
            || (Duration::from_secs(1)..=Duration::from_secs(65_535)).contains(&s.keep_alive))
        {
            return Err(bad(
                "keep_alive",
                format!("{:?}", s.keep_alive),
                "zero or 1 s to 65535 s",
            ));
        }
        if s.connect_timeout < Duration::from_secs(1) {
            return Err(bad(
                "connect_timeout",
                format!("{:?}", s.connect_timeout),
                "at least 1 s",
            ));
        }
        check_range(
            "reconnect backoff",
            s.reconnect_backoff_min,
            s.reconnect_backoff_max,
        )?;
        check_range("dispatch retry", s.dispatch_retry_min, s.dispatch_retry_max)?;
        check_range("takeover fence", s.takeover_fence_min, s.takeover_fence_max)?;
        if s.takeover_window.is_zero() {
            return Err(bad("takeover_window", "0", "must be positive"));
        }
        if s.max_payload_bytes == 0 {
            return Err(bad("max_payload_bytes", "0", "must be positive"));
        }
        if s.max_packet_bytes < s.max_payload_bytes || s.max_packet_bytes > MQTT_MAX_PACKET_BYTES {
            return Err(bad(
                "max_packet_bytes",
                s.max_packet_bytes.to_string(),
                format!("must be between max_payload_bytes and {MQTT_MAX_PACKET_BYTES}"),
            ));
        }
        if s.shared_max_in_flight == 0 {
            return Err(bad("shared_max_in_flight", "0", "must be positive"));
        }
        if !(1..=MAX_ORDERED_IN_FLIGHT).contains(&s.ordered_max_in_flight) {
            return Err(bad(
                "ordered_max_in_flight",
                s.ordered_max_in_flight.to_string(),
                format!("must be in 1..={MAX_ORDERED_IN_FLIGHT}"),
            ));
        }
        if s.shared_dispatch_attempts == 0 {
            return Err(bad("shared_dispatch_attempts", "0", "must be positive"));
        }
        if s.tls {
            if s.tls_client_cert_file.is_some() != s.tls_client_key_file.is_some() {
                return Err(IngressSettingsError::Invalid(
                    "a TLS client certificate needs its key and the other way round \
                     (MQTT_TLS_CERTFILE, MQTT_TLS_KEYFILE)"
                        .into(),
                ));
            }
            let files = [&s.tls_client_cert_file, &s.tls_client_key_file];
            for file in files.into_iter().flatten().chain(s.tls_ca_file.iter()) {
                if let Err(e) = std::fs::metadata(file) {
                    return Err(IngressSettingsError::Invalid(format!("{}: {e}", file.display())));
                }
            }
            if s.tls_ca_file.is_none() && system_ca_bundle().is_none() {
                return Err(IngressSettingsError::Invalid(format!(
                    "TLS without MQTT_TLS_CA_CERTS needs a system CA bundle; none found at {SYSTEM_CA_BUNDLES:?}"
                )));
            }
        }
        Ok(())
    }

    /// The broker address as `host:port`.
    pub fn broker_address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// rumqttc options for one connection. Fails only when TLS files cannot be read.
    pub(crate) fn mqtt_options(
        &self,
        client_id: &str,
        clean_session: bool,
    ) -> Result<(MqttOptions, NetworkOptions), TlsFilesError> {
        let mut options = MqttOptions::new(client_id, self.host.clone(), self.port);
        // Validated: zero or at least 1 s (rumqttc panics otherwise).
        options.set_keep_alive(self.keep_alive);
        // Client ids are never empty (checked by the plan), so this cannot panic.
        options.set_clean_session(clean_session || client_id.is_empty());
        options.set_manual_acks(true);
        options.set_max_packet_size(self.max_packet_bytes, 128 * 1024);
        if let Some(user) = &self.username {
            options.set_credentials(user.clone(), self.password.clone().unwrap_or_default());
        }
        if self.tls {
            options.set_transport(self.tls_transport()?);
        }
        let mut network = NetworkOptions::new();
        // Acknowledgements are tiny packets; Nagle would hold them back.
        network.set_tcp_nodelay(true);
        network.set_connection_timeout(self.connect_timeout.as_secs().max(1));
        Ok((options, network))
    }

    fn tls_transport(&self) -> Result<Transport, TlsFilesError> {
        use rumqttc::tokio_rustls::rustls::crypto::{aws_lc_rs, CryptoProvider};
        if CryptoProvider::get_default().is_none() {
            // Losing a race with another installer is fine: any provider will do.
            let _ = aws_lc_rs::default_provider().install_default();
        }
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|source| TlsFilesError::Read {
                path: path.clone(),
                source,
            })
        };
        let ca = match &self.tls_ca_file {
            Some(path) => read(path)?,
            None => {
                let path = system_ca_bundle().ok_or(TlsFilesError::NoSystemCaBundle)?;
                read(&path)?
            }
        };
        let client_auth = match (&self.tls_client_cert_file, &self.tls_client_key_file) {
            (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
            _ => None,
        };
        Ok(Transport::tls(ca, client_auth, None))
    }
}

fn system_ca_bundle() -> Option<PathBuf> {
    SYSTEM_CA_BUNDLES.iter().map(PathBuf::from).find(|p| p.is_file())
}

fn check_range(what: &str, min: Duration, max: Duration) -> Result<(), IngressSettingsError> {
    if min.is_zero() || max < min {
        return Err(IngressSettingsError::Invalid(format!(
            "{what}: minimum {min:?} must be positive and not above the maximum {max:?}"
        )));
    }
    Ok(())
}

fn parse_bool(var: &str, value: &str) -> Result<bool, IngressSettingsError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(bad(var, value, "not a boolean (true/false, 1/0, yes/no, on/off)")),
    }
}

fn parse_seconds(var: &str, value: &str) -> Result<Duration, IngressSettingsError> {
    match value.trim().parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > 0.0 && secs <= 86_400.0 => Ok(Duration::from_secs_f64(secs)),
        _ => Err(bad(var, value, "not a number of seconds in (0, 86400]")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(vars: &[(&str, &str)]) -> Result<IngressSettings, IngressSettingsError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        IngressSettings::from_vars(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_without_variables() {
        let s = from(&[]).unwrap();
        assert_eq!((s.host.as_str(), s.port), ("localhost", 1883));
        assert_eq!(s.group_name, "routemq");
        assert_eq!(s.client_id_prefix, "routemq");
        assert!(!s.tls && s.username.is_none());
    }

    #[test]
    fn python_routemq_variables_are_honoured() {
        let s = from(&[
            ("MQTT_BROKER", "mosquitto"),
            ("MQTT_PORT", "1884"),
            ("MQTT_USERNAME", "u"),
            ("MQTT_PASSWORD", "p"),
            ("MQTT_CLIENT_ID", "worker"),
            ("MQTT_GROUP_NAME", "production_group"),
            ("MQTT_RETRY_MIN_DELAY", "0.25"),
            ("MQTT_RETRY_MAX_DELAY", "10"),
            ("MQTT_TLS_ENABLED", "false"),
        ])
        .unwrap();
        assert_eq!(s.broker_address(), "mosquitto:1884");
        assert_eq!(
            (s.username.as_deref(), s.password.as_deref()),
            (Some("u"), Some("p"))
        );
        assert_eq!(s.client_id_prefix, "worker");
        assert_eq!(s.group_name, "production_group");
        assert_eq!(s.reconnect_backoff_min, Duration::from_millis(250));
        assert_eq!(s.reconnect_backoff_max, Duration::from_secs(10));
        assert!(
            !format!("{s:?}").contains("\"p\""),
            "password must not be printed"
        );
    }

    #[test]
    fn empty_values_count_as_unset() {
        let s = from(&[("MQTT_USERNAME", ""), ("MQTT_PASSWORD", " "), ("MQTT_PORT", "")]).unwrap();
        assert!(s.username.is_none() && s.password.is_none());
        assert_eq!(s.port, 1883);
    }

    #[test]
    fn tls_defaults_to_port_8883_and_takes_a_ca_file() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not checked until connect").unwrap();
        let s = from(&[
            ("MQTT_TLS_ENABLED", "YES"),
            ("MQTT_TLS_CA_CERTS", ca.to_str().unwrap()),
        ])
        .unwrap();
        assert!(s.tls);
        assert_eq!(s.port, 8883);
        assert_eq!(s.tls_ca_file.as_deref(), Some(ca.as_path()));
    }

    #[test]
    fn an_unreadable_tls_file_fails_the_connection_settings_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "x").unwrap();
        let mut s = from(&[
            ("MQTT_TLS_ENABLED", "1"),
            ("MQTT_TLS_CA_CERTS", ca.to_str().unwrap()),
        ])
        .unwrap();
        assert!(s.mqtt_options("c1", true).is_ok());
        std::fs::remove_file(&ca).unwrap();
        let Err(err) = s.mqtt_options("c1", true) else {
            panic!("a missing CA file must fail");
        };
        assert!(
            matches!(&err, TlsFilesError::Read { path, .. } if *path == ca),
            "{err}"
        );
        assert!(
            err.to_string().starts_with(&format!("{}: ", ca.display())),
            "{err}"
        );
        s.tls = false;
        assert!(s.mqtt_options("c1", true).is_ok(), "no TLS, no files read");
    }

    #[test]
    fn bad_values_get_clear_errors() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("MQTT_PORT", "0")], "MQTT_PORT"),
            (&[("MQTT_PORT", "70000")], "MQTT_PORT"),
            (&[("MQTT_PORT", "http")], "MQTT_PORT"),
            (&[("MQTT_TLS_ENABLED", "maybe")], "MQTT_TLS_ENABLED"),
            (&[("MQTT_TLS_INSECURE", "true")], "MQTT_TLS_INSECURE"),
            (&[("MQTT_GROUP_NAME", "a/b")], "group_name"),
            (&[("MQTT_PASSWORD", "p")], "needs a user name"),
            (&[("MQTT_RETRY_MIN_DELAY", "-1")], "MQTT_RETRY_MIN_DELAY"),
            (
                &[("MQTT_RETRY_MIN_DELAY", "5"), ("MQTT_RETRY_MAX_DELAY", "1")],
                "reconnect backoff",
            ),
            (&[("MQTT_BROKER", "two words")], "host"),
            (
                &[
                    ("MQTT_TLS_ENABLED", "1"),
                    ("MQTT_TLS_CA_CERTS", "/nonexistent/ca.pem"),
                ],
                "/nonexistent/ca.pem",
            ),
            (
                &[
                    ("MQTT_TLS_ENABLED", "1"),
                    ("MQTT_TLS_CERTFILE", "/nonexistent/c.pem"),
                ],
                "MQTT_TLS_KEYFILE",
            ),
        ];
        for (vars, expected) in cases {
            let err = from(vars).unwrap_err().to_string();
            assert!(err.contains(expected), "{vars:?}: {err}");
        }
    }
}
