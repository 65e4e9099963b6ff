//! Node addresses: parsing and normalising the `host:port` gRPC addresses that users give as
//! seeds and that servers return (member addresses, leader hints).
//!
//! Every address is kept in one canonical form, `host:port` with a lowercase host (IPv6 hosts
//! in brackets), so a seed and the same address learned from a status response compare equal.
//! Only plain-text gRPC is supported: an `http://` prefix is accepted and stripped, `https://`
//! is rejected. A port is required; there is no default port.

use std::net::Ipv6Addr;

use crate::error::ClientError;

/// Normalises a node address to `host:port`.
///
/// Accepts `host:port`, `http://host:port` (with an optional trailing `/`) and
/// `[ipv6]:port`, with surrounding whitespace. The host is lowercased. Rejects empty input,
/// other schemes (including `https://`), paths, a missing or invalid port, and an unbracketed
/// IPv6 address.
///
/// ```
/// use routemq_client::normalize_addr;
/// assert_eq!(normalize_addr("http://Node-1:7001/").unwrap(), "node-1:7001");
/// assert_eq!(normalize_addr("[::1]:7001").unwrap(), "[::1]:7001");
/// assert!(normalize_addr("node-1").is_err());
/// ```
pub fn normalize_addr(input: &str) -> Result<String, ClientError> {
    let invalid = |reason: &str| ClientError::InvalidAddress {
        addr: input.to_string(),
        reason: reason.to_string(),
    };
    let mut rest = input.trim();
    if rest.is_empty() {
        return Err(invalid("empty address"));
    }
    if let Some((scheme, after)) = rest.split_once("://") {
        match scheme.to_ascii_lowercase().as_str() {
            "http" => rest = after,
            "https" => return Err(invalid("TLS (https://) is not supported; use host:port")),
            _ => return Err(invalid("unsupported scheme; use host:port")),
        }
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') {
        return Err(invalid("expected host:port without a path"));
    }
    if rest.contains(char::is_whitespace) {
        return Err(invalid("whitespace inside the address"));
    }

    let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
        let Some((ip, after)) = bracketed.split_once(']') else {
            return Err(invalid("unclosed '[' in IPv6 address"));
        };
        if ip.parse::<Ipv6Addr>().is_err() {
            return Err(invalid("invalid IPv6 address"));
        }
        let Some(port) = after.strip_prefix(':') else {
            return Err(invalid("missing port (expected [ipv6]:port)"));
        };
        (format!("[{}]", ip.to_ascii_lowercase()), port)
    } else {
        let Some((host, port)) = rest.rsplit_once(':') else {
            return Err(invalid("missing port (expected host:port)"));
        };
        if host.contains(':') {
            return Err(invalid("IPv6 addresses must be in brackets, e.g. [::1]:7001"));
        }
        if host.is_empty() {
            return Err(invalid("missing host (expected host:port)"));
        }
        if !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        {
            return Err(invalid("invalid character in host name"));
        }
        (host.to_ascii_lowercase(), port)
    };
    match port.parse::<u16>() {
        Ok(0) => Err(invalid("port 0 is not a valid node port")),
        Ok(port) => Ok(format!("{host}:{port}")),
        Err(_) => Err(invalid("invalid port (expected a number from 1 to 65535)")),
    }
}

/// The URI tonic connects to for a normalised address.
pub(crate) fn endpoint_uri(addr: &str) -> String {
    format!("http://{addr}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_normalises() {
        for (input, want) in [
            ("127.0.0.1:7001", "127.0.0.1:7001"),
            ("  127.0.0.1:7001\n", "127.0.0.1:7001"),
            ("http://127.0.0.1:7001", "127.0.0.1:7001"),
            ("HTTP://127.0.0.1:7001/", "127.0.0.1:7001"),
            ("Node-1.Cluster.local:7001", "node-1.cluster.local:7001"),
            ("routemq_0:80", "routemq_0:80"),
            ("[::1]:7001", "[::1]:7001"),
            ("http://[FE80::1]:7001", "[fe80::1]:7001"),
            ("localhost:65535", "localhost:65535"),
        ] {
            assert_eq!(normalize_addr(input).unwrap(), want, "input {input:?}");
        }
    }

    #[test]
    fn rejects_bad_addresses_with_a_reason() {
        for (input, reason) in [
            ("", "empty"),
            ("   ", "empty"),
            ("node-1", "missing port"),
            ("node-1:", "invalid port"),
            ("node-1:http", "invalid port"),
            ("node-1:70000", "invalid port"),
            ("node-1:0", "port 0"),
            (":7001", "missing host"),
            ("https://node-1:7001", "TLS"),
            ("grpc://node-1:7001", "unsupported scheme"),
            ("node-1:7001/api", "path"),
            ("::1:7001", "brackets"),
            ("[::1]", "missing port"),
            ("[::1:7001", "unclosed"),
            ("[not-ip]:7001", "invalid IPv6"),
            ("no de:7001", "whitespace"),
            ("node@1:7001", "invalid character"),
        ] {
            match normalize_addr(input) {
                Err(ClientError::InvalidAddress { addr, reason: got }) => {
                    assert_eq!(addr, input);
                    assert!(
                        got.contains(reason),
                        "input {input:?}: reason {got:?} lacks {reason:?}"
                    );
                }
                other => panic!("input {input:?}: expected InvalidAddress, got {other:?}"),
            }
        }
    }

    #[test]
    fn endpoint_uri_is_plain_http() {
        assert_eq!(endpoint_uri("node-1:7001"), "http://node-1:7001");
    }
}
