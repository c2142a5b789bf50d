//! Why the service could not start or had to stop.

use std::fmt;
use std::net::SocketAddr;

#[derive(Debug)]
pub enum Error {
    /// An environment variable holds a value the service cannot use.
    Config {
        variable: &'static str,
        value: String,
        reason: String,
    },
    /// Credentials are configured but could not be loaded.
    Credentials {
        detail: String,
    },
    /// Credentials are present but no region is configured.
    NoRegion,
    /// STS GetCallerIdentity failed, so the identity guard cannot decide.
    Identity {
        detail: String,
    },
    /// The identity guard: the backend runs as the Terraform admin user.
    AdminIdentity {
        arn: String,
        admin_user: String,
    },
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    Serve {
        source: std::io::Error,
    },
    Signal {
        source: std::io::Error,
    },
}

impl Error {
    /// The process exit code: 2 for configuration mistakes, 1 otherwise.
    pub fn code(&self) -> u8 {
        match self {
            Error::Config { .. } => 2,
            _ => 1,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config { variable, value, reason } => write!(f, "invalid `{variable}` value `{value}`: {reason}"),
            Error::Credentials { detail } => {
                write!(f, "AWS credentials are configured but could not be loaded: {detail}")
            }
            Error::NoRegion => write!(f, "AWS credentials are present but no region is configured: set `AWS_REGION`"),
            Error::Identity { detail } => {
                write!(f, "could not verify the AWS identity with STS GetCallerIdentity, refusing to start: {detail}")
            }
            Error::AdminIdentity { arn, admin_user } => write!(
                f,
                "refusing to start: running as the Terraform admin user `{admin_user}` ({arn}); \
                 the backend must use the service account or the ECS task role"
            ),
            Error::Bind { addr, source } => write!(f, "could not listen on `{addr}`: {source}"),
            Error::Serve { source } => write!(f, "the HTTP server failed: {source}"),
            Error::Signal { source } => {
                write!(f, "could not install the SIGTERM/SIGINT handlers: {source}")
            }
        }
    }
}

impl std::error::Error for Error {}
