//! The shared AWS SDK configuration.

use std::time::Duration;

use anyhow::{Context, Result};
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};

/// Time to set up a connection (TCP and TLS).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time to wait for the first byte of an answer, and for one attempt of a
/// call as a whole. AWS answers the calls this tool makes in well under a
/// second; a silent endpoint must not hang a deploy.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);
/// One call, all its retries included.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(60);

/// Load the SDK config from the (already layered) environment. The HTTPS
/// client uses rustls with ring and trusts the system roots plus
/// `AWS_CA_BUNDLE`, as the AWS CLI and Terraform do (the Rust SDK alone
/// ignores that variable). Every call has connect and read timeouts.
pub async fn load() -> Result<SdkConfig> {
    let mut trust = TrustStore::empty().with_native_roots(true);
    if let Some(bundle) = std::env::var_os("AWS_CA_BUNDLE").filter(|v| !v.is_empty()) {
        let pem = std::fs::read(&bundle)
            .with_context(|| format!("AWS_CA_BUNDLE points to {}, which cannot be read", bundle.to_string_lossy()))?;
        trust = trust.with_pem_certificate(pem);
    }
    let tls = TlsContext::builder().with_trust_store(trust).build().context("invalid TLS settings")?;
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .tls_context(tls)
        .build_https();
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(ATTEMPT_TIMEOUT)
        .operation_attempt_timeout(ATTEMPT_TIMEOUT)
        .operation_timeout(OPERATION_TIMEOUT)
        .build();
    Ok(aws_config::defaults(BehaviorVersion::latest()).http_client(http).timeout_config(timeouts).load().await)
}

/// What kind of failure an SDK error is, for the advice that goes with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No answer in time (connect, read or attempt timeout).
    Timeout,
    /// No connection (refused, DNS, TLS).
    Unreachable,
    /// The service answered 5xx, or throttled: it is failing, not the caller.
    Server,
    /// The service refused the request (4xx): keys, permissions, input.
    Refused,
    /// Anything else (a request that could not be built, an unreadable answer).
    Other,
}

/// What the server said, or why there was no answer: the HTTP status, the
/// error code and message (or the start of a body without them), and for
/// network failures the whole chain of causes.
pub fn error_text<E>(err: &SdkError<E>) -> String
where
    E: std::error::Error + ProvideErrorMetadata + 'static,
{
    match err {
        SdkError::ServiceError(e) => {
            let inner = e.err();
            let raw = e.raw();
            let status = raw.status().as_u16();
            match (inner.code(), inner.message()) {
                (Some(code), Some(msg)) => format!("HTTP {status}, {code}: {msg}"),
                (Some(code), None) => format!("HTTP {status}, {code}"),
                _ => format!("HTTP {status} without an AWS error code{}", body_excerpt(raw.body().bytes())),
            }
        }
        SdkError::ResponseError(e) => {
            let raw = e.raw();
            format!(
                "HTTP {}, an answer that could not be read{}: {}",
                raw.status().as_u16(),
                body_excerpt(raw.body().bytes()),
                chain(err)
            )
        }
        SdkError::TimeoutError(_) => timed_out(err),
        SdkError::DispatchFailure(d) if d.is_timeout() => timed_out(err),
        SdkError::DispatchFailure(_) => format!("the request could not be sent: {}", chain(err)),
        other => chain(other),
    }
}

/// The kind of failure, for the advice.
pub fn failure<E>(err: &SdkError<E>) -> Failure
where
    E: std::error::Error + ProvideErrorMetadata + 'static,
{
    match err {
        SdkError::ServiceError(e) => {
            let status = e.raw().status().as_u16();
            let throttled = e.err().code().is_some_and(|c| c.contains("Throttl") || c == "RequestLimitExceeded");
            if status >= 500 || throttled {
                Failure::Server
            } else {
                Failure::Refused
            }
        }
        SdkError::ResponseError(e) if e.raw().status().as_u16() >= 500 => Failure::Server,
        SdkError::TimeoutError(_) => Failure::Timeout,
        SdkError::DispatchFailure(d) if d.is_timeout() => Failure::Timeout,
        SdkError::DispatchFailure(_) => Failure::Unreachable,
        _ => Failure::Other,
    }
}

fn timed_out(err: &dyn std::error::Error) -> String {
    format!(
        "no answer in time (timeouts: {} s to connect, {} s per attempt, {} s in all): {}",
        CONNECT_TIMEOUT.as_secs(),
        ATTEMPT_TIMEOUT.as_secs(),
        OPERATION_TIMEOUT.as_secs(),
        chain(err)
    )
}

/// The error and its causes, joined.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

/// `; the answer began: "…"` with the first line of a body, if any.
fn body_excerpt(body: Option<&[u8]>) -> String {
    let text = body.map(String::from_utf8_lossy).unwrap_or_default();
    let first: String = text.split_whitespace().collect::<Vec<_>>().join(" ").chars().take(160).collect();
    if first.is_empty() {
        String::new()
    } else {
        format!("; the answer began: \"{first}\"")
    }
}
