//! `routemq-probe`: the container healthcheck of the RouteMQ image.
//!
//! ```text
//! routemq-probe                 GET /ready on this node's HTTP port; exit 0 on 2xx, 1 otherwise
//! routemq-probe /health         another path
//! routemq-probe /ready 10.0.0.5:7201
//! ```
//!
//! The address defaults to `ROUTEMQ_HTTP` (the node's own HTTP listen address, as the image
//! sets it), with an unspecified IP (`0.0.0.0`, `::`) replaced by loopback, else
//! `127.0.0.1:7201`. Connect, write and read each time out after 2 s. It prints the status
//! line (or the error), which `docker inspect` shows in the health log.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

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

fn probe(addr: &str, path: &str) -> Result<String, String> {
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
    // The status line is all we need; read until its end (or 4 KiB).
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    while !buf.contains(&b'\n') && buf.len() < 4096 {
        let n = stream
            .read(&mut chunk)
            .map_err(|e| format!("no answer from {target}: {e}"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf);
    let status_line = text.lines().next().unwrap_or("").trim().to_string();
    let code = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| format!("not an HTTP answer from {target}: {status_line:?}"))?;
    if (200..300).contains(&code) {
        Ok(status_line)
    } else {
        Err(format!("GET {path} on {target}: {status_line}"))
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let first = args.next();
    if matches!(first.as_deref(), Some("-h" | "--help")) {
        println!("usage: routemq-probe [PATH (default /ready)] [HOST:PORT (default from ROUTEMQ_HTTP, else 127.0.0.1:7201)]");
        return ExitCode::SUCCESS;
    }
    let path = first.unwrap_or_else(|| "/ready".to_string());
    let addr = args.next().unwrap_or_else(default_addr);
    match probe(&addr, &path) {
        Ok(status) => {
            println!("{status}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            println!("{message}");
            ExitCode::FAILURE
        }
    }
}
