//! A real Mosquitto for tests: started on a free loopback port with its own config, persistence
//! directory and log in a temporary directory; stopped (SIGTERM, then SIGKILL) on drop.
//!
//! Include with `#[path = "support/mosquitto.rs"] mod mosquitto;`.

#![allow(dead_code)]

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the broker binary is looked for (the first that exists), unless `MOSQUITTO_BIN` is set.
const CANDIDATES: &[&str] = &[
    "/usr/sbin/mosquitto",
    "/usr/bin/mosquitto",
    "/usr/local/sbin/mosquitto",
];

/// A Mosquitto process owned by a test.
pub struct Mosquitto {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Mosquitto {
    /// Starts a broker on a free loopback port and waits until it accepts connections.
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// Starts a broker on `port` (e.g. one a test reserved while the broker was down).
    pub fn start_on(port: u16) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("routemq-mosquitto-")
            .tempdir()
            .expect("temp dir for mosquitto");
        let mut broker = Self {
            port,
            dir,
            child: None,
        };
        broker.write_config();
        broker.launch();
        broker
    }

    /// The broker's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The broker's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.log")
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
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
        let deadline = Instant::now() + Duration::from_secs(5);
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

    /// Starts the broker again on the same port with the same persistence directory.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// Starts the broker if it is stopped (same port, same persistence).
    pub fn start_again(&mut self) {
        if self.child.is_none() {
            self.launch();
        }
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.conf")
    }

    fn write_config(&self) {
        let data = self.dir.path().join("data");
        std::fs::create_dir_all(&data).expect("mosquitto data dir");
        let mut conf = String::new();
        conf += &format!("listener {} 127.0.0.1\n", self.port);
        conf += "allow_anonymous true\n";
        conf += "persistence true\n";
        conf += &format!("persistence_location {}/\n", data.display());
        // Ordered routes queue messages for an offline persistent session during a failover.
        conf += "max_queued_messages 1000000\n";
        conf += "max_inflight_messages 20\n";
        conf += &format!("log_dest file {}\n", self.log_path().display());
        conf += "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n";
        conf += "connection_messages true\n";
        if running_as_root() {
            // Otherwise Mosquitto drops to user "mosquitto", which cannot write our temp dir.
            conf += "user root\n";
        }
        let mut file = std::fs::File::create(self.config_path()).expect("mosquitto config");
        file.write_all(conf.as_bytes()).expect("mosquitto config");
    }

    fn launch(&mut self) {
        let bin = binary();
        let child = Command::new(&bin)
            .arg("-c")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        self.child = Some(child);
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if !self.is_running() {
                let mut err = String::new();
                if let Some(mut c) = self.child.take() {
                    use std::io::Read;
                    if let Some(mut stderr) = c.stderr.take() {
                        let _ = stderr.read_to_string(&mut err);
                    }
                }
                panic!("mosquitto exited at start: {err}\nlog:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on {addr} within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
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
