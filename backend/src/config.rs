//! Configuration, read from the environment only.
//!
//! | variable                     | default                   |
//! |------------------------------|---------------------------|
//! | `PORT`                       | `3001` (on `0.0.0.0`)     |
//! | `CASEY_BIND_ADDR`            | unset; a full socket address such as `127.0.0.5:3001`, wins over `PORT` |
//! | `CASEY_ADMIN_USER`           | `casey_aniruddh`          |
//! | `CASEY_USAGE_LOG_GROUP`      | `casey-backend-aws-usage` |
//! | `CASEY_WS_PING_SECS`         | `30`                      |
//! | `CASEY_SHUTDOWN_TIMEOUT_SECS`| `10`                      |
//!
//! AWS settings (`AWS_REGION`, credentials, `AWS_PROFILE`, `AWS_ENDPOINT_URL`,
//! ECS container credentials) are read by the AWS SDK, see `aws.rs`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use crate::error::Error;

pub const DEFAULT_PORT: u16 = 3001;
pub const DEFAULT_ADMIN_USER: &str = "casey_aniruddh";
pub const DEFAULT_USAGE_LOG_GROUP: &str = "casey-backend-aws-usage";

#[derive(Debug, Clone)]
pub struct Config {
    pub bind_addr: SocketAddr,
    /// The Terraform admin IAM user the backend must never run as.
    pub admin_user: String,
    /// The CloudWatch Logs group the AWS usage events go to.
    pub usage_log_group: String,
    /// How often open WebSockets are pinged; the ALB drops connections idle
    /// for longer than its idle timeout (60 s by default).
    pub ping_interval: Duration,
    /// Upper bound on the whole graceful shutdown; Fargate sends SIGKILL 30 s
    /// after SIGTERM.
    pub shutdown_timeout: Duration,
}

impl Config {
    pub fn from_env() -> Result<Self, Error> {
        Ok(Config {
            bind_addr: bind_addr_from_env()?,
            admin_user: text("CASEY_ADMIN_USER", DEFAULT_ADMIN_USER),
            usage_log_group: text("CASEY_USAGE_LOG_GROUP", DEFAULT_USAGE_LOG_GROUP),
            ping_interval: seconds("CASEY_WS_PING_SECS", 30, 1..=3600)?,
            shutdown_timeout: seconds("CASEY_SHUTDOWN_TIMEOUT_SECS", 10, 1..=25)?,
        })
    }
}

/// The address to listen on: `CASEY_BIND_ADDR` if set, else `0.0.0.0:$PORT`.
pub fn bind_addr_from_env() -> Result<SocketAddr, Error> {
    if let Some(value) = var("CASEY_BIND_ADDR") {
        return value.parse().map_err(|_| Error::Config {
            variable: "CASEY_BIND_ADDR",
            value,
            reason: "expected a socket address such as `127.0.0.5:3001`".into(),
        });
    }
    let port = match var("PORT") {
        None => DEFAULT_PORT,
        Some(value) => value.parse().map_err(|_| Error::Config {
            variable: "PORT",
            value,
            reason: "expected a port number (0-65535)".into(),
        })?,
    };
    Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port))
}

/// Where the `healthcheck` mode connects to reach a server bound to `bind`:
/// the loopback address for a wildcard bind, else the bound address itself.
pub fn probe_addr(bind: SocketAddr) -> SocketAddr {
    let ip = match bind.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, bind.port())
}

/// A variable's value, treating an empty one as unset.
fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.trim().is_empty())
}

fn text(name: &str, default: &str) -> String {
    var(name).map_or_else(|| default.to_owned(), |value| value.trim().to_owned())
}

fn seconds(name: &'static str, default: u64, range: std::ops::RangeInclusive<u64>) -> Result<Duration, Error> {
    let Some(value) = var(name) else {
        return Ok(Duration::from_secs(default));
    };
    match value.trim().parse::<u64>() {
        Ok(secs) if range.contains(&secs) => Ok(Duration::from_secs(secs)),
        _ => Err(Error::Config {
            variable: name,
            value,
            reason: format!("expected whole seconds from {} to {}", range.start(), range.end()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_addr_maps_wildcards_to_loopback() {
        let cases =
            [("0.0.0.0:3001", "127.0.0.1:3001"), ("[::]:3001", "[::1]:3001"), ("127.0.0.5:4000", "127.0.0.5:4000")];
        for (bind, probe) in cases {
            assert_eq!(probe_addr(bind.parse().unwrap()), probe.parse().unwrap());
        }
    }
}
