//! `routemq-probe`: the container helper of the RouteMQ image, which has no shell.
//!
//! ```text
//! routemq-probe                       GET /ready on this node's HTTP port; exit 0 on 2xx, 1 otherwise
//! routemq-probe /health               another path
//! routemq-probe /ready 10.0.0.5:7201  another address
//! routemq-probe decide-bootstrap --out FILE [--config FILE] [--data-dir DIR] [--ordinal N]
//!               [--peers HOST:PORT,...] [--wait SECS]
//! ```
//!
//! **Healthcheck.** The address defaults to `ROUTEMQ_HTTP` (the node's own HTTP listen
//! address, as the image sets it), with an unspecified IP (`0.0.0.0`, `::`) replaced by
//! loopback, else `127.0.0.1:7201`. Connect, write and read each time out after 2 s. It prints
//! the status line (or the error), which `docker inspect` shows in the health log.
//!
//! **decide-bootstrap** (a Kubernetes init container; see `deploy/k8s/statefulset.yaml`)
//! writes the node's config file: `bootstrap = true` or `false` followed by the `--config`
//! file's text. It answers `true` only when all of these hold:
//! 1. this pod's ordinal (`--ordinal`, else the number after the last `-` of `POD_NAME` or
//!    `HOSTNAME`) is 0;
//! 2. the data directory holds no cluster yet (no `identity.json`, or one whose `cluster_id`
//!    is empty);
//! 3. for `--wait` seconds (default 15), no peer in `--peers` (their HTTP addresses) says on
//!    `/ready` that it is a ring member (`"member":true`), which is what any node of an
//!    existing cluster says, ready or not. Peers that do not resolve or answer count as absent.
//!
//! So a first install bootstraps on pod 0, while pod 0 coming back with an empty volume next
//! to running members joins them through its seeds instead of founding a second cluster.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(2);

fn default_addr() -> String {
    match std::env::var("ROUTEMQ_HTTP")
        .ok()
        .and_then(|v| v.trim().parse::<SocketAddr>().ok())
    {
        Some(mut addr) => {
            if addr.ip().is_unspecified() {
                addr.set_ip(match addr.ip() {
                    IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                    IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
                });
            }
            addr.to_string()
        }
        None => "127.0.0.1:7201".to_string(),
    }
}

/// An HTTP answer: the status line, its code and (up to 64 KiB of) the body.
struct Answer {
    status_line: String,
    code: u16,
    body: String,
}

/// `GET path` on `addr` (host:port) with HTTP/1.1 and `Connection: close`.
fn get(addr: &str, path: &str) -> Result<Answer, String> {
    let target = addr
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr} resolves to no address"))?;
    let mut stream = TcpStream::connect_timeout(&target, TIMEOUT)
        .map_err(|e| format!("cannot connect to {target}: {e}"))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: routemq-probe\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("cannot send the request to {target}: {e}"))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    while buf.len() < 64 * 1024 {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            // Some bytes and then a timeout: judge what arrived.
            Err(_) if !buf.is_empty() => break,
            Err(e) => return Err(format!("no answer from {target}: {e}")),
        }
    }
    let text = String::from_utf8_lossy(&buf);
    let status_line = text.lines().next().unwrap_or("").trim().to_string();
    let code = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| format!("not an HTTP answer from {target}: {status_line:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Ok(Answer {
        status_line,
        code,
        body,
    })
}

fn healthcheck(path: &str, addr: &str) -> ExitCode {
    match get(addr, path) {
        Ok(answer) if (200..300).contains(&answer.code) => {
            println!("{}", answer.status_line);
            ExitCode::SUCCESS
        }
        Ok(answer) => {
            println!(
                "GET {path} on {addr}: {} {}",
                answer.status_line,
                answer.body.trim()
            );
            ExitCode::FAILURE
        }
        Err(message) => {
            println!("{message}");
            ExitCode::FAILURE
        }
    }
}

/// The value of a top-level JSON string field, found by text (the files are small and flat).
fn json_string_field(json: &str, field: &str) -> Option<String> {
    let key = format!("\"{field}\"");
    let rest = &json[json.find(&key)? + key.len()..];
    let rest = rest
        .trim_start()
        .strip_prefix(':')?
        .trim_start()
        .strip_prefix('"')?;
    Some(rest[..rest.find('"')?].to_string())
}

/// True if `/ready`'s JSON says `"member": true`.
fn says_member(body: &str) -> bool {
    body.find("\"member\"")
        .map(|i| body[i + "\"member\"".len()..].trim_start())
        .and_then(|rest| rest.strip_prefix(':'))
        .is_some_and(|rest| rest.trim_start().starts_with("true"))
}

/// The cluster id recorded in the data directory, or None if it has none yet.
fn data_dir_cluster(data_dir: &Path) -> Result<Option<String>, String> {
    let identity = data_dir.join("identity.json");
    match std::fs::read_to_string(&identity) {
        Ok(text) => Ok(json_string_field(&text, "cluster_id").filter(|id| !id.is_empty())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", identity.display())),
    }
}

fn ordinal_from_env() -> Option<u32> {
    ["POD_NAME", "HOSTNAME"]
        .iter()
        .filter_map(|var| std::env::var(var).ok())
        .find_map(|name| name.rsplit_once('-').and_then(|(_, n)| n.parse().ok()))
}

struct DecideArgs {
    out: PathBuf,
    config: Option<PathBuf>,
    data_dir: PathBuf,
    ordinal: Option<u32>,
    peers: Vec<String>,
    wait: Duration,
}

fn parse_decide_args(mut args: impl Iterator<Item = String>) -> Result<DecideArgs, String> {
    let mut out = None;
    let mut config = None;
    let mut data_dir = std::env::var("ROUTEMQ_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("/data"));
    let mut ordinal = None;
    let mut peers = Vec::new();
    let mut wait = Duration::from_secs(15);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--out" => out = Some(PathBuf::from(value()?)),
            "--config" => config = Some(PathBuf::from(value()?)),
            "--data-dir" => data_dir = PathBuf::from(value()?),
            "--ordinal" => {
                ordinal = Some(value()?.parse().map_err(|e| format!("--ordinal: {e}"))?);
            }
            "--peers" => peers.extend(
                value()?
                    .split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(str::to_string),
            ),
            "--wait" => wait = Duration::from_secs(value()?.parse().map_err(|e| format!("--wait: {e}"))?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(DecideArgs {
        out: out.ok_or("--out FILE is required")?,
        config,
        data_dir,
        ordinal,
        peers,
        wait,
    })
}

/// Returns (bootstrap, reason).
fn decide(args: &DecideArgs) -> Result<(bool, String), String> {
    let ordinal = args
        .ordinal
        .or_else(ordinal_from_env)
        .ok_or("no --ordinal, and neither POD_NAME nor HOSTNAME ends in -<number>")?;
    if ordinal != 0 {
        return Ok((false, format!("ordinal {ordinal}: joins through its seeds")));
    }
    if let Some(cluster) = data_dir_cluster(&args.data_dir)? {
        return Ok((
            false,
            format!(
                "{} already belongs to cluster {cluster}: resumes",
                args.data_dir.display()
            ),
        ));
    }
    let deadline = Instant::now() + args.wait;
    loop {
        for peer in &args.peers {
            if let Ok(answer) = get(peer, "/ready") {
                if says_member(&answer.body) {
                    return Ok((
                        false,
                        format!("empty data directory, but peer {peer} is a member of a cluster: joins it"),
                    ));
                }
            }
        }
        if Instant::now() >= deadline {
            return Ok((
                true,
                format!(
                    "ordinal 0, empty data directory, and no member among {} peer(s) for {} s: bootstraps",
                    args.peers.len(),
                    args.wait.as_secs()
                ),
            ));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn decide_bootstrap(args: impl Iterator<Item = String>) -> ExitCode {
    let run = || -> Result<String, String> {
        let args = parse_decide_args(args)?;
        let (bootstrap, reason) = decide(&args)?;
        let base = match &args.config {
            Some(path) => {
                std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?
            }
            None => String::new(),
        };
        // The key goes first: appended after a [table] it would land inside that table.
        let text = format!(
            "# written by routemq-probe decide-bootstrap: {reason}\nbootstrap = {bootstrap}\n\n{base}"
        );
        if let Some(dir) = args.out.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        std::fs::write(&args.out, text).map_err(|e| format!("cannot write {}: {e}", args.out.display()))?;
        Ok(format!(
            "bootstrap = {bootstrap} ({reason}); wrote {}",
            args.out.display()
        ))
    };
    match run() {
        Ok(message) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let first = args.next();
    match first.as_deref() {
        Some("-h" | "--help") => {
            println!(
                "usage: routemq-probe [PATH (default /ready)] [HOST:PORT (default from ROUTEMQ_HTTP, else 127.0.0.1:7201)]\n       \
                 routemq-probe decide-bootstrap --out FILE [--config FILE] [--data-dir DIR] [--ordinal N] [--peers HOST:PORT,...] [--wait SECS]"
            );
            ExitCode::SUCCESS
        }
        Some("decide-bootstrap") => decide_bootstrap(args),
        _ => {
            let path = first.unwrap_or_else(|| "/ready".to_string());
            let addr = args.next().unwrap_or_else(default_addr);
            healthcheck(&path, &addr)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_member_flag_and_cluster_id() {
        assert!(says_member(
            r#"{"ready":false,"reason":"no leader","member":true}"#
        ));
        assert!(says_member(r#"{"member" : true}"#));
        assert!(!says_member(r#"{"ready":false,"member":false}"#));
        assert!(!says_member("not json"));
        let identity = r#"{"node_id":"routemq-0","raft_id":7,"cluster_id":"abc-1"}"#;
        assert_eq!(
            json_string_field(identity, "cluster_id").as_deref(),
            Some("abc-1")
        );
        assert_eq!(
            json_string_field(r#"{"cluster_id": ""}"#, "cluster_id").as_deref(),
            Some("")
        );
        assert_eq!(json_string_field("{}", "cluster_id"), None);
    }

    #[test]
    fn only_ordinal_zero_with_a_fresh_directory_bootstraps() {
        let dir = std::env::temp_dir().join(format!("routemq-probe-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let args = |ordinal| DecideArgs {
            out: dir.join("out.toml"),
            config: None,
            data_dir: dir.clone(),
            ordinal: Some(ordinal),
            peers: vec!["127.0.0.1:1".into()],
            wait: Duration::ZERO,
        };
        assert!(decide(&args(0)).unwrap().0);
        assert!(!decide(&args(1)).unwrap().0);
        std::fs::write(
            dir.join("identity.json"),
            r#"{"node_id":"x","raft_id":1,"cluster_id":""}"#,
        )
        .unwrap();
        assert!(
            decide(&args(0)).unwrap().0,
            "a directory that never joined is fresh"
        );
        std::fs::write(
            dir.join("identity.json"),
            r#"{"node_id":"x","raft_id":1,"cluster_id":"c"}"#,
        )
        .unwrap();
        assert!(!decide(&args(0)).unwrap().0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
