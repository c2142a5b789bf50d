//! AWS access: the SDK configuration and the startup identity guard.
//!
//! Credentials come from the environment (`AWS_ACCESS_KEY_ID`...), a profile
//! (`AWS_PROFILE`, `~/.aws`), web identity, or ECS container credentials (the
//! task role on Fargate). The instance-metadata service is left out on
//! purpose: Fargate has none, and probing it on a laptop only adds a delay.

use std::time::Duration;

use aws_config::ecs::EcsCredentialsProvider;
use aws_config::environment::{EnvironmentVariableCredentialsProvider, EnvironmentVariableRegionProvider};
use aws_config::meta::credentials::CredentialsProviderChain;
use aws_config::meta::region::RegionProviderChain;
use aws_config::profile::{ProfileFileCredentialsProvider, ProfileFileRegionProvider};
use aws_config::provider_config::ProviderConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::web_identity_token::WebIdentityTokenCredentialsProvider;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::ProvideCredentials;
use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};
use serde_json::json;

use crate::error::Error;
use crate::log;

/// How long loading credentials (a profile's `credential_process`, SSO, the
/// ECS credentials endpoint) may take before startup fails.
const CREDENTIALS_TIMEOUT: Duration = Duration::from_secs(20);

/// Loads the AWS configuration. `Ok(None)` means no credentials are configured
/// at all: the service then runs without AWS (local development).
pub async fn load() -> Result<Option<SdkConfig>, Error> {
    let http_client = https_client()?;
    let region = RegionProviderChain::first_try(EnvironmentVariableRegionProvider::new())
        .or_else(ProfileFileRegionProvider::new())
        .region()
        .await;

    let provider_config =
        ProviderConfig::without_region().with_http_client(http_client.clone()).with_region(region.clone());
    let credentials = CredentialsProviderChain::first_try("Environment", EnvironmentVariableCredentialsProvider::new())
        .or_else("Profile", ProfileFileCredentialsProvider::builder().configure(&provider_config).build())
        .or_else("WebIdentityToken", WebIdentityTokenCredentialsProvider::builder().configure(&provider_config).build())
        .or_else("EcsContainer", EcsCredentialsProvider::builder().configure(&provider_config).build());

    match tokio::time::timeout(CREDENTIALS_TIMEOUT, credentials.provide_credentials()).await {
        Err(_) => {
            return Err(Error::Credentials { detail: format!("timed out after {}s", CREDENTIALS_TIMEOUT.as_secs()) })
        }
        Ok(Err(CredentialsError::CredentialsNotLoaded(_))) => return Ok(None),
        Ok(Err(error)) => return Err(Error::Credentials { detail: error_chain(&error) }),
        Ok(Ok(_)) => {}
    }
    let Some(region) = region else {
        return Err(Error::NoRegion);
    };

    let config = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http_client)
        .region(region)
        .credentials_provider(credentials)
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .operation_attempt_timeout(Duration::from_secs(5))
                .operation_timeout(Duration::from_secs(15))
                .build(),
        )
        .load()
        .await;
    Ok(Some(config))
}

/// An HTTPS client on rustls with ring (no aws-lc C build), trusting the
/// system roots plus `AWS_CA_BUNDLE` if set (a corporate TLS proxy's CA: the
/// AWS CLI and Terraform honour that variable, the Rust SDK does not).
fn https_client() -> Result<aws_sdk_sts::config::SharedHttpClient, Error> {
    let mut trust_store = TrustStore::default();
    if let Some(path) = std::env::var_os("AWS_CA_BUNDLE").filter(|path| !path.is_empty()) {
        let pem = std::fs::read(&path).map_err(|error| Error::Config {
            variable: "AWS_CA_BUNDLE",
            value: path.to_string_lossy().into_owned(),
            reason: format!("could not read the CA bundle: {error}"),
        })?;
        trust_store = trust_store.with_pem_certificate(pem);
    }
    let context = TlsContext::builder().with_trust_store(trust_store).build().map_err(|error| Error::Config {
        variable: "AWS_CA_BUNDLE",
        value: String::new(),
        reason: error.to_string(),
    })?;
    Ok(aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .tls_context(context)
        .build_https())
}

/// Who the backend runs as, from STS GetCallerIdentity.
#[derive(Debug, Clone)]
pub struct Identity {
    pub arn: String,
    pub account: String,
}

/// The startup identity guard: the backend must never run as the Terraform
/// admin user. Any other principal (the service account, an ECS task role's
/// assumed-role ARN) is fine. Fails closed: if the identity cannot be read,
/// the backend does not start.
pub async fn check_identity(config: &SdkConfig, admin_user: &str) -> Result<Identity, Error> {
    let output = aws_sdk_sts::Client::new(config)
        .get_caller_identity()
        .send()
        .await
        .map_err(|error| Error::Identity { detail: describe(&error) })?;
    let identity = Identity {
        arn: output.arn().unwrap_or_default().to_owned(),
        account: output.account().unwrap_or_default().to_owned(),
    };
    if identity.arn.is_empty() {
        return Err(Error::Identity { detail: "the answer has no ARN".into() });
    }
    if is_iam_user(&identity.arn, admin_user) {
        return Err(Error::AdminIdentity { arn: identity.arn, admin_user: admin_user.to_owned() });
    }
    log::info("running as AWS principal", json!({ "principal_arn": identity.arn, "account": identity.account }));
    Ok(identity)
}

/// One line about a failed AWS call: the service's error code and message,
/// or for a transport failure (timeout, DNS, TLS) its chain of causes.
pub fn describe<E, R>(error: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    match error {
        SdkError::ServiceError(context) => {
            let error = context.err();
            format!("{}: {}", error.code().unwrap_or("unknown error"), error.message().unwrap_or("(no message)"))
        }
        _ => error_chain(error),
    }
}

/// An error and its sources, joined with `: `.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Whether `arn` names the IAM user `user` (`arn:<partition>:iam::<account>:user[/<path>]/<name>`).
/// IAM user names are unique regardless of case, so the comparison ignores it.
fn is_iam_user(arn: &str, user: &str) -> bool {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let ["arn", _partition, "iam", "", _account, resource] = parts[..] else {
        return false;
    };
    resource
        .strip_prefix("user/")
        .and_then(|path| path.rsplit('/').next())
        .is_some_and(|name| name.eq_ignore_ascii_case(user))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_user_arns_are_recognised() {
        let admin = "casey_aniruddh";
        for arn in [
            "arn:aws:iam::123456789012:user/casey_aniruddh",
            "arn:aws:iam::123456789012:user/admins/casey_aniruddh",
            "arn:aws-cn:iam::123456789012:user/Casey_Aniruddh",
        ] {
            assert!(is_iam_user(arn, admin), "{arn}");
        }
        for arn in [
            "arn:aws:iam::123456789012:user/casey_localdev_service",
            "arn:aws:iam::123456789012:user/casey_aniruddh_other",
            "arn:aws:sts::123456789012:assumed-role/casey-backend-task/abc123",
            "arn:aws:iam::123456789012:role/casey_aniruddh",
            "arn:aws:iam::123456789012:root",
            "casey_aniruddh",
            "",
        ] {
            assert!(!is_iam_user(arn, admin), "{arn}");
        }
    }
}
