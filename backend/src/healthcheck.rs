//! `casey-backend healthcheck`: the container health check (the image has no
//! curl). It sends `GET /health` to the local server and exits 0 on a 200,
//! 1 otherwise. A hand-written HTTP/1.1 request keeps an HTTP client crate
//! out of the build.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use serde_json::json;

use crate::config;
use crate::log;

const TIMEOUT: Duration = Duration::from_secs(3);

pub fn run() -> ExitCode {
    let target = match config::bind_addr_from_env() {
        Ok(bind) => config::probe_addr(bind),
        Err(error) => {
            log::error("healthcheck failed", json!({ "error": error.to_string() }));
            return ExitCode::from(1);
        }
    };
    match probe(target) {
        Ok(200) => ExitCode::SUCCESS,
        Ok(status) => {
            log::error("healthcheck failed", json!({ "target": target.to_string(), "status": status }));
            ExitCode::from(1)
        }
        Err(error) => {
            log::error("healthcheck failed", json!({ "target": target.to_string(), "error": error.to_string() }));
            ExitCode::from(1)
        }
    }
}

/// Sends `GET /health` and returns the response's status code.
fn probe(target: SocketAddr) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect_timeout(&target, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    write!(
        stream,
        "GET /health HTTP/1.1\r\nHost: {target}\r\nUser-Agent: casey-backend-healthcheck\r\nConnection: close\r\n\r\n"
    )?;
    // The status line is all we need: `HTTP/1.1 200 OK`.
    let mut head = Vec::new();
    let mut buffer = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 1024 {
        let read = stream.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        head.extend_from_slice(&buffer[..read]);
    }
    parse_status(&head)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "the answer is not an HTTP response"))
}

fn parse_status(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    parts.next().filter(|version| version.starts_with("HTTP/1."))?;
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::parse_status;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status(b"HTTP/1.0 503 Service Unavailable\r\n"), Some(503));
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status(b""), None);
    }
}
