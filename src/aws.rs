//! The shared AWS SDK configuration, and the one credentials provider of a
//! run.
//!
//! Credentials are resolved once, through the SDK's default chain (keys,
//! profile, `credential_process`, SSO, web identity, container, instance),
//! by [`SingleCredentials`]. Every SDK client, terraform and docker get
//! exactly what it resolved: the clients through the shared config, the
//! children as static keys in their environment ([`child_env`]), with the
//! variables that would let them resolve anything else removed. Credentials
//! with an expiry are resolved again, through the same provider, before they
//! run out; new ones must belong to the principal the guard approved.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use aws_config::identity::IdentityCache;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{future, ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};

/// Time to set up a connection (TCP and TLS).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time to wait for the first byte of an answer, and for one attempt of a
/// call as a whole. AWS answers the calls this tool makes in well under a
/// second; a silent endpoint must not hang a deploy.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);
/// Attempts per call (the SDK's default is 3). A deploy makes a few dozen
/// calls and can wait out a burst of throttling or 5xx answers (backoff
/// with jitter, within [`OPERATION_TIMEOUT`]) rather than fail half way.
pub const MAX_ATTEMPTS: u32 = 5;
/// One call, all its retries included.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(60);

/// Load the SDK config from the (already layered) environment. The HTTPS
/// client uses rustls with ring and trusts the system roots plus
/// `AWS_CA_BUNDLE`, as the AWS CLI and Terraform do (the Rust SDK alone
/// ignores that variable). Every call has connect and read timeouts.
pub async fn load() -> Result<SdkConfig> {
    Ok(load_single().await?.0)
}

/// [`load`], and the config's credentials provider: the SDK's default chain
/// behind one [`SingleCredentials`], with no other cache in front of it.
pub async fn load_single() -> Result<(SdkConfig, Arc<SingleCredentials>)> {
    let sdk = load_chain().await?;
    let single = Arc::new(SingleCredentials::new(sdk.credentials_provider(), sdk.clone()));
    let sdk = sdk
        .to_builder()
        .credentials_provider(SharedCredentialsProvider::new(SharedSingle(Arc::clone(&single))))
        .identity_cache(IdentityCache::no_cache())
        .build();
    Ok((sdk, single))
}

async fn load_chain() -> Result<SdkConfig> {
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
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http).timeout_config(timeouts);
    // AWS_MAX_ATTEMPTS or AWS_RETRY_MODE, when set, decide instead.
    if std::env::var_os("AWS_MAX_ATTEMPTS").is_none() && std::env::var_os("AWS_RETRY_MODE").is_none() {
        loader = loader.retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS));
    }
    Ok(loader.load().await)
}

/// Resolve again when less than this remains of the credentials' life (or
/// half of it, for short-lived ones): a terraform apply started with them
/// must be able to finish.
const REFRESH_BEFORE: Duration = Duration::from_secs(10 * 60);

/// The principal the guard approved: refreshed credentials must be theirs.
#[derive(Debug, Clone)]
pub struct Approved {
    pub arn: String,
    pub account: String,
}

/// The run's one credentials provider: resolves through `chain` once and
/// hands out that result until it nears its expiry.
pub struct SingleCredentials {
    chain: Option<SharedCredentialsProvider>,
    /// The config without this provider, to verify refreshed credentials.
    base: SdkConfig,
    current: Mutex<Option<(Credentials, SystemTime)>>,
    /// One resolution at a time.
    resolving: tokio::sync::Mutex<()>,
    approved: Mutex<Option<Approved>>,
    resolutions: std::sync::atomic::AtomicUsize,
}

/// The provider as the SDK config holds it.
#[derive(Debug)]
struct SharedSingle(Arc<SingleCredentials>);

impl std::fmt::Debug for SingleCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SingleCredentials")
    }
}

impl ProvideCredentials for SharedSingle {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(self.0.resolve())
    }
}

impl SingleCredentials {
    fn new(chain: Option<SharedCredentialsProvider>, base: SdkConfig) -> Self {
        SingleCredentials {
            chain,
            base,
            current: Mutex::new(None),
            resolving: tokio::sync::Mutex::new(()),
            approved: Mutex::new(None),
            resolutions: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// From now on, credentials resolved again must belong to `approved`.
    pub fn approve(&self, approved: Approved) {
        *self.approved.lock().unwrap_or_else(|e| e.into_inner()) = Some(approved);
    }

    /// The credentials in use, resolving them first when there are none yet
    /// or they are about to expire.
    pub async fn resolve(&self) -> Result<Credentials, CredentialsError> {
        if let Some(creds) = self.fresh() {
            return Ok(creds);
        }
        let _one = self.resolving.lock().await;
        if let Some(creds) = self.fresh() {
            return Ok(creds);
        }
        let Some(chain) = &self.chain else {
            return Err(CredentialsError::not_loaded("no credentials provider is configured"));
        };
        let creds = chain.provide_credentials().await?;
        crate::redact::register(creds.secret_access_key());
        if let Some(token) = creds.session_token() {
            crate::redact::register(token);
        }
        let again = self.resolutions.fetch_add(1, std::sync::atomic::Ordering::SeqCst) > 0;
        let approved = self.approved.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(approved) = approved {
            self.verify(&creds, &approved).await?;
        }
        if again {
            crate::say!(
                "credentials resolved again before they expire (key {})",
                crate::redact::key_hint(creds.access_key_id())
            );
        }
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some((creds.clone(), SystemTime::now()));
        Ok(creds)
    }

    /// The credentials resolved last, as they are.
    pub fn current(&self) -> Option<Credentials> {
        self.current.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|(c, _)| c.clone())
    }

    /// The current credentials, unless they expire soon.
    fn fresh(&self) -> Option<Credentials> {
        let current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let (creds, resolved_at) = current.as_ref()?;
        let Some(expiry) = creds.expiry() else { return Some(creds.clone()) };
        let life = expiry.duration_since(*resolved_at).unwrap_or_default();
        let left = expiry.duration_since(SystemTime::now()).unwrap_or_default();
        (left > REFRESH_BEFORE.min(life / 2)).then(|| creds.clone())
    }

    /// Refuse credentials that STS says belong to someone else.
    async fn verify(&self, creds: &Credentials, approved: &Approved) -> Result<(), CredentialsError> {
        let config = aws_sdk_sts::config::Builder::from(&self.base).credentials_provider(creds.clone()).build();
        let out = aws_sdk_sts::Client::from_conf(config).get_caller_identity().send().await.map_err(|e| {
            CredentialsError::provider_error(format!(
                "STS could not verify the credentials resolved again (key {}): {}",
                crate::redact::key_hint(creds.access_key_id()),
                error_text(&e)
            ))
        })?;
        let arn = out.arn().unwrap_or_default();
        let account = out.account().unwrap_or_default();
        if account != approved.account || principal_of(arn) != principal_of(&approved.arn) {
            return Err(CredentialsError::provider_error(format!(
                "the credentials resolved again belong to {arn} (account {account}), not to {} that was checked at the start; they were not used. Fix the credential source (profile, credential_process) and run the command again",
                approved.arn
            )));
        }
        Ok(())
    }
}

/// A caller ARN without its session: an assumed role's sessions are one
/// principal (`arn:aws:sts::1:assumed-role/R/s1` and `…/R/s2`).
fn principal_of(arn: &str) -> &str {
    match arn.split_once(":assumed-role/") {
        Some((_, rest)) => match rest.split_once('/') {
            Some((role, _)) => &arn[..arn.len() - rest.len() + role.len()],
            None => arn,
        },
        None => arn,
    }
}

/// Variables that would make a child find credentials of its own.
pub const RESOLVING_VARS: &[&str] = &[
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_SECURITY_TOKEN",
    "AWS_CREDENTIAL_EXPIRATION",
];

/// The AWS part of a child's environment: exactly `creds` (static keys and
/// session token) and `region`, and none of [`RESOLVING_VARS`]. With static
/// keys in the environment no SDK (terraform's Go SDK included) looks at a
/// profile's `credential_process`, SSO or role settings; instance metadata
/// is switched off so nothing falls back to an instance role either.
pub fn child_env(creds: &Credentials, region: &str) -> Vec<(String, Option<String>)> {
    let mut env: Vec<(String, Option<String>)> = RESOLVING_VARS.iter().map(|k| ((*k).to_owned(), None)).collect();
    env.push(("AWS_ACCESS_KEY_ID".into(), Some(creds.access_key_id().to_owned())));
    env.push(("AWS_SECRET_ACCESS_KEY".into(), Some(creds.secret_access_key().to_owned())));
    env.push(("AWS_SESSION_TOKEN".into(), creds.session_token().map(str::to_owned)));
    env.push(("AWS_EC2_METADATA_DISABLED".into(), Some("true".into())));
    if !region.is_empty() {
        env.push(("AWS_REGION".into(), Some(region.to_owned())));
        env.push(("AWS_DEFAULT_REGION".into(), Some(region.to_owned())));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_sessions_are_one_principal() {
        let a = "arn:aws:sts::123456789012:assumed-role/Admin/session-1";
        let b = "arn:aws:sts::123456789012:assumed-role/Admin/session-2";
        assert_eq!(principal_of(a), "arn:aws:sts::123456789012:assumed-role/Admin");
        assert_eq!(principal_of(a), principal_of(b));
        assert_ne!(principal_of(a), principal_of("arn:aws:sts::123456789012:assumed-role/Other/session-1"));
        let user = "arn:aws:iam::123456789012:user/casey_aniruddh";
        assert_eq!(principal_of(user), user);
    }

    #[test]
    fn children_get_the_keys_and_nothing_that_resolves_others() {
        let creds = Credentials::new("AKIDEXAMPLE", "secret", None, None, "test");
        let env = child_env(&creds, "eu-west-1");
        let get = |k: &str| env.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        assert_eq!(get("AWS_ACCESS_KEY_ID"), Some(Some("AKIDEXAMPLE".into())));
        assert_eq!(get("AWS_SESSION_TOKEN"), Some(None), "a token from elsewhere must not survive");
        for var in ["AWS_PROFILE", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI"]
        {
            assert_eq!(get(var), Some(None), "{var}");
        }
        assert_eq!(get("AWS_REGION"), Some(Some("eu-west-1".into())));
    }
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
