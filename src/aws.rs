//! The shared AWS SDK configuration.

use anyhow::{Context, Result};
use aws_config::{BehaviorVersion, SdkConfig};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};

/// Load the SDK config from the (already layered) environment. The HTTPS
/// client uses rustls with ring and trusts the system roots plus
/// `AWS_CA_BUNDLE`, as the AWS CLI and Terraform do (the Rust SDK alone
/// ignores that variable).
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
    Ok(aws_config::defaults(BehaviorVersion::latest()).http_client(http).load().await)
}

/// The message of an SDK error, including the service's code and message.
pub fn error_text<E, R>(err: &aws_sdk_sts::error::SdkError<E, R>) -> String
where
    E: std::error::Error + aws_sdk_sts::error::ProvideErrorMetadata + 'static,
    R: std::fmt::Debug,
{
    use aws_sdk_sts::error::SdkError;
    match err {
        SdkError::ServiceError(e) => {
            let inner = e.err();
            match (inner.code(), inner.message()) {
                (Some(code), Some(msg)) => format!("{code}: {msg}"),
                (Some(code), None) => code.to_owned(),
                _ => inner.to_string(),
            }
        }
        other => {
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        }
    }
}
