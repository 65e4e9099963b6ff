//! A real Mosquitto for tests and the fault harness: one launcher, configured with
//! [`MosquittoConfig`] for the settings that differ between callers.
//!
//! Every broker runs anonymous, with persistence on (RouteMQ's ordered routes use persistent
//! sessions and need their queued QoS 1 messages across a broker restart), logging errors,
//! warnings, notices and information with timestamps and connection messages to a log file,
//! and as root when the caller is root (otherwise Mosquitto drops to user `mosquitto`, which
//! cannot write the caller's directories). What differs, with its default:
//! - the listener: `127.0.0.1` on a free port ([`MosquittoConfig::listen`]);
//! - `max_queued_messages` 1,000,000 ([`MosquittoConfig::max_queued`]): ordered routes queue
//!   messages for an offline persistent session during a failover, and Mosquitto's default of
//!   1000 drops the rest;
//! - `max_inflight_messages` 20, Mosquitto's default ([`MosquittoConfig::max_inflight`]);
//! - where the config and log go (a temporary directory, [`MosquittoConfig::files_in`]) and
//!   the persistence directory (`data/` there, [`MosquittoConfig::data_dir`]);
//! - a network namespace to run in (`ip netns exec`, [`MosquittoConfig::netns`]).
//!
//! [`Mosquitto::start`] waits until the broker accepts connections; the broker is killed when
//! its [`Mosquitto`] is dropped. The binary is `MOSQUITTO_BIN`, else the first of the usual
//! places that exists, else `mosquitto` on the `PATH`.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the broker binary is looked for (the first that exists), unless `MOSQUITTO_BIN` is set.
const CANDIDATES: &[&str] = &[
    "/usr/sbin/mosquitto",
    "/usr/bin/mosquitto",
    "/usr/local/sbin/mosquitto",
];

/// How long a broker may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`Mosquitto::stop`] waits after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// The settings of a broker to start; see the module docs for the defaults.
#[derive(Debug, Clone)]
pub struct MosquittoConfig {
    host: String,
    port: Option<u16>,
    max_queued: u32,
    max_inflight: u32,
    files: Option<PathBuf>,
    data: Option<PathBuf>,
    netns: Option<String>,
}

impl Default for MosquittoConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: None,
            max_queued: 1_000_000,
            max_inflight: 20,
            files: None,
            data: None,
            netns: None,
        }
    }
}

impl MosquittoConfig {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Listens on `host:port` (`port` `None`: a free port, for loopback hosts).
    pub fn listen(mut self, host: impl Into<String>, port: Option<u16>) -> Self {
        self.host = host.into();
        self.port = port;
        self
    }

    /// `max_queued_messages`: messages queued per offline persistent session.
    pub fn max_queued(mut self, messages: u32) -> Self {
        self.max_queued = messages;
        self
    }

    /// `max_inflight_messages`: unacknowledged QoS 1 messages in flight per client.
    pub fn max_inflight(mut self, messages: u32) -> Self {
        self.max_inflight = messages;
        self
    }

    /// Writes `mosquitto.conf` and `mosquitto.log` in `dir` (kept after the broker ends)
    /// instead of a temporary directory.
    pub fn files_in(mut self, dir: impl Into<PathBuf>) -> Self {
        self.files = Some(dir.into());
        self
    }

    /// Keeps the persistence file in `dir`.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data = Some(dir.into());
        self
    }

    /// Runs the broker in network namespace `ns` (through `ip netns exec`).
    pub fn netns(mut self, ns: impl Into<String>) -> Self {
        self.netns = Some(ns.into());
        self
    }

    /// The configuration file's text for a broker on `port`, persisting to `data` and logging
    /// to `log`.
    pub fn render(&self, port: u16, data: &Path, log: &Path) -> String {
        let mut conf = String::new();
        conf += &format!("listener {port} {}\n", self.host);
        conf += "allow_anonymous true\n";
        conf += "persistence true\n";
        conf += &format!("persistence_location {}/\n", data.display());
        conf += &format!("max_queued_messages {}\n", self.max_queued);
        conf += &format!("max_inflight_messages {}\n", self.max_inflight);
        conf += &format!("log_dest file {}\n", log.display());
        conf += "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n";
        conf += "log_timestamp_format %Y-%m-%dT%H:%M:%S\n";
        conf += "connection_messages true\n";
        if running_as_root() {
            // Otherwise Mosquitto drops to user "mosquitto", which cannot write our directories.
            conf += "user root\n";
        }
        conf
    }

    /// Writes the configuration, starts the broker and waits until it accepts connections.
    pub fn start(self) -> io::Result<Mosquitto> {
        let temp = tempfile::Builder::new().prefix("routemq-mosquitto-").tempdir()?;
        let files = self.files.clone().unwrap_or_else(|| temp.path().to_path_buf());
        let data = self.data.clone().unwrap_or_else(|| files.join("data"));
        std::fs::create_dir_all(&files)?;
        std::fs::create_dir_all(&data)?;
        let port = match self.port {
            Some(port) => port,
            None => free_port_on(&self.host)?,
        };
        let conf = files.join("mosquitto.conf");
        let log = files.join("mosquitto.log");
        std::fs::File::create(&conf)?.write_all(self.render(port, &data, &log).as_bytes())?;
        let mut broker = Mosquitto {
            addr: format!("{}:{port}", self.host),
            port,
            conf,
            log,
            netns: self.netns,
            child: None,
            _temp: temp,
        };
        broker.launch()?;
        Ok(broker)
    }
}

/// A Mosquitto process owned by its caller; killed on drop.
pub struct Mosquitto {
    addr: String,
    port: u16,
    conf: PathBuf,
    log: PathBuf,
    netns: Option<String>,
    child: Option<Child>,
    _temp: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts a broker with the defaults on a free loopback port, or panics (for tests).
    pub fn start() -> Self {
        Self::expect(MosquittoConfig::new().start())
    }

    /// Starts a broker with the defaults on loopback `port` (e.g. one a test reserved while the
    /// broker was down), or panics.
    pub fn start_on(port: u16) -> Self {
        Self::expect(MosquittoConfig::new().listen("127.0.0.1", Some(port)).start())
    }

    fn expect(started: io::Result<Self>) -> Self {
        started.unwrap_or_else(|e| panic!("{e}"))
    }

    /// `host:port` of the listener.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The listener's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The broker's log file (its own log, and anything it writes to stdout or stderr).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Stops the broker gracefully (SIGTERM: it saves its persistence file), SIGKILL after 5 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
            }
        }
    }

    /// Kills the broker at once (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the broker gracefully and starts it again (same port, same persistence), or
    /// panics.
    pub fn restart(&mut self) {
        self.stop();
        self.launch().unwrap_or_else(|e| panic!("{e}"));
    }

    /// Starts the broker if it is stopped (same port, same persistence), or panics.
    pub fn start_again(&mut self) {
        if self.child.is_none() {
            self.launch().unwrap_or_else(|e| panic!("{e}"));
        }
    }

    fn launch(&mut self) -> io::Result<()> {
        let bin = binary();
        let mut command = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        let output = OpenOptions::new().create(true).append(true).open(&self.log)?;
        let child = command
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output)
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot start {}: {e}", bin.display())))?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while !accepts(&self.addr) {
            if !self.is_running() {
                self.child = None;
                return Err(io::Error::other(format!(
                    "mosquitto exited at start; log {}:\n{}",
                    self.log.display(),
                    self.log()
                )));
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "mosquitto did not listen on {} within {} s (see {})",
                        self.addr,
                        START_TIMEOUT.as_secs(),
                        self.log.display()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// True when something accepts TCP connections at `addr` (`host:port`).
fn accepts(addr: &str) -> bool {
    let Ok(addrs) = addr.to_socket_addrs() else {
        return false;
    };
    addrs
        .into_iter()
        .any(|a: SocketAddr| TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_ok())
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    free_port_on("127.0.0.1").unwrap_or_else(|e| panic!("cannot find a free port: {e}"))
}

fn free_port_on(host: &str) -> io::Result<u16> {
    Ok(TcpListener::bind((host, 0))?.local_addr()?.port())
}

fn binary() -> PathBuf {
    if let Ok(bin) = std::env::var("MOSQUITTO_BIN") {
        return PathBuf::from(bin);
    }
    CANDIDATES
        .iter()
        .map(Path::new)
        .find(|p| p.exists())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("mosquitto"))
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}
