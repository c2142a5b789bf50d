//! The admin/service guard: who is calling, and may they deploy?
//!
//! The seed's rule: the service account must never run Terraform, the admin
//! must never run the backend. This runs before any terraform or docker
//! command.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use aws_config::{Region, SdkConfig};
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;

use crate::aws::Failure;
use crate::check::Problem;
use crate::env::{self, Settings, Source};
use crate::redact::{self, key_hint};

/// The configured principals.
#[derive(Debug, Clone)]
pub struct Principals {
    pub admin_user: String,
    pub service_user: String,
    /// An extra ARN accepted as admin (a role for SSO, or an exact caller ARN).
    pub admin_principal: Option<String>,
}

/// What STS says about the caller.
#[derive(Debug, Clone)]
pub struct Identity {
    pub account: String,
    pub arn: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Service,
    Other,
}

impl Principals {
    /// Classify a caller ARN.
    pub fn classify(&self, arn: &str) -> Role {
        let user = iam_user_name(arn);
        if user == Some(self.service_user.as_str()) {
            return Role::Service;
        }
        if user == Some(self.admin_user.as_str()) {
            return Role::Admin;
        }
        if let Some(principal) = &self.admin_principal {
            if arn == principal || role_matches(principal, arn) {
                return Role::Admin;
            }
        }
        Role::Other
    }
}

/// `arn:aws:iam::123:user/path/name` → `name`.
fn iam_user_name(arn: &str) -> Option<&str> {
    let resource = arn.splitn(6, ':').nth(5)?;
    let path = resource.strip_prefix("user/")?;
    path.rsplit('/').next()
}

/// A role ARN (`arn:aws:iam::123:role/R`) matches its sessions
/// (`arn:aws:sts::123:assumed-role/R/session`).
fn role_matches(role_arn: &str, caller: &str) -> bool {
    let parts: Vec<&str> = role_arn.splitn(6, ':').collect();
    let (Some(account), Some(resource)) = (parts.get(4), parts.get(5)) else { return false };
    let Some(role) = resource.strip_prefix("role/").map(|r| r.rsplit('/').next().unwrap_or(r)) else { return false };
    let partition = parts.get(1).copied().unwrap_or("aws");
    caller.starts_with(&format!("arn:{partition}:sts::{account}:assumed-role/{role}/"))
}

/// The check the deploy credentials' problems are named by.
pub const DEPLOY_CREDENTIALS: &str = "deploy credentials";
/// The check of backend/.env's credentials (doctor only: no verb uses them).
pub const BACKEND_CREDENTIALS: &str = "backend credentials";

/// Resolve credentials (once: the STS call signs with exactly what was
/// resolved) and ask STS who they belong to.
pub async fn caller(sdk: &SdkConfig, settings: &Settings) -> Result<Identity, Problem> {
    let no_credentials = |detail: Option<String>| {
        let tried = match &settings.source {
            Source::DefaultChain => "tried: terraform/.env (absent or without keys), AWS_* environment variables, the default profile, SSO, container and instance credentials".to_owned(),
            other => format!("tried: {other}"),
        };
        let detail = detail.map(|d| format!(": {d}")).unwrap_or_default();
        Problem::fail(
            DEPLOY_CREDENTIALS,
            format!("no usable AWS credentials ({tried}){detail}"),
            "put the admin's keys in terraform/.env (cp terraform/.env.example terraform/.env), or set AWS_PROFILE to the admin's profile",
        )
    };
    let provider = sdk.credentials_provider().ok_or_else(|| no_credentials(None))?;
    let creds = provider
        .provide_credentials()
        .await
        .map_err(|e| no_credentials(Some(format!("{:#}", anyhow::Error::new(e)))))?;
    redact::register(creds.secret_access_key());
    if let Some(token) = creds.session_token() {
        redact::register(token);
    }
    let sts = aws_sdk_sts::config::Builder::from(sdk).credentials_provider(creds.clone()).build();
    let out = aws_sdk_sts::Client::from_conf(sts).get_caller_identity().send().await.map_err(|e| {
        let endpoint = sdk.endpoint_url().map_or_else(|| "AWS STS".to_owned(), |url| format!("STS at {url}"));
        let advice = match crate::aws::failure(&e) {
            Failure::Timeout | Failure::Unreachable => format!(
                "{endpoint} did not answer: check the network, a proxy (HTTPS_PROXY) or AWS_ENDPOINT_URL, then run the same command again"
            ),
            Failure::Server => format!(
                "{endpoint} is failing or throttling (the keys were not judged): try again in a few minutes; https://health.aws.amazon.com shows AWS outages"
            ),
            Failure::Refused | Failure::Other => "check that the keys are current (not deleted or expired) and AWS_REGION is set; `aws sts get-caller-identity` shows the same check".to_owned(),
        };
        Problem::fail(
            DEPLOY_CREDENTIALS,
            format!(
                "STS could not verify the credentials ({}, key {}): {}",
                settings.source,
                key_hint(creds.access_key_id()),
                crate::aws::error_text(&e)
            ),
            advice,
        )
    })?;
    Ok(Identity {
        account: out.account().unwrap_or_default().to_owned(),
        arn: out.arn().unwrap_or_default().to_owned(),
    })
}

/// Who backend/.env's credentials (`vars`, read from `path`) belong to,
/// asked with the deploy's HTTP client, region and endpoint unless the file
/// sets its own; `Ok` holds the identity and where the keys came from.
pub async fn backend_caller(
    sdk: &SdkConfig,
    path: &Path,
    vars: &BTreeMap<String, String>,
    principals: &Principals,
) -> Result<(Identity, String), Problem> {
    let set = |k: &str| vars.get(k).filter(|v| !v.is_empty());
    let (key, secret, profile) = (set("AWS_ACCESS_KEY_ID"), set("AWS_SECRET_ACCESS_KEY"), set("AWS_PROFILE"));
    let put_keys = format!("put the service account's ({}) keys in {}", principals.service_user, path.display());
    let (provider, source) = match (key, secret, profile) {
        (Some(key), Some(secret), _) => {
            let creds = Credentials::new(key, secret, set("AWS_SESSION_TOKEN").cloned(), None, "backend/.env");
            (SharedCredentialsProvider::new(creds), format!("key {}", key_hint(key)))
        }
        (Some(_), None, _) => {
            return Err(Problem::warn(
                BACKEND_CREDENTIALS,
                "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not",
                put_keys,
            ))
        }
        (None, _, Some(profile)) => {
            let provider = aws_config::profile::ProfileFileCredentialsProvider::builder().profile_name(profile).build();
            (SharedCredentialsProvider::new(provider), format!("profile `{profile}`"))
        }
        (None, _, None) => {
            return Err(Problem::warn(
                BACKEND_CREDENTIALS,
                "none in backend/.env: a local backend runs without AWS",
                put_keys,
            ))
        }
    };
    let region = env::region_of(vars).or(sdk.region().map(|r| r.as_ref())).unwrap_or("us-east-1").to_owned();
    let mut builder = sdk.to_builder().credentials_provider(provider).region(Region::new(region));
    if let Some(endpoint) = set("AWS_ENDPOINT_URL") {
        builder = builder.endpoint_url(endpoint.clone());
    }
    let settings = Settings {
        source: match profile.filter(|_| key.is_none()) {
            Some(profile) => Source::Profile(profile.clone()),
            None => Source::EnvFile(path.to_path_buf()),
        },
        warnings: Vec::new(),
    };
    // The deploy does not use these keys: only a local backend would fail.
    let identity = caller(&builder.build(), &settings)
        .await
        .map_err(|p| Problem { fix: format!("{put_keys} ({})", p.fix), ..p.named(BACKEND_CREDENTIALS).as_warning() })?;
    Ok((identity, source))
}

/// backend/.env's caller must be the service account, never the admin.
pub fn check_backend_caller(identity: &Identity, principals: &Principals, path: &Path) -> Result<(), Problem> {
    let put_keys = format!("put the service account's ({}) keys in {}", principals.service_user, path.display());
    match principals.classify(&identity.arn) {
        Role::Service => Ok(()),
        Role::Admin => Err(Problem::fail(
            BACKEND_CREDENTIALS,
            format!("the ADMIN: {}; the backend must never run as the admin", identity.arn),
            put_keys,
        )),
        Role::Other => Err(Problem::warn(
            BACKEND_CREDENTIALS,
            format!("{} is not the service account `{}`", identity.arn, principals.service_user),
            format!("{put_keys}, or pass --service-user NAME"),
        )),
    }
}

/// `casey-deploy whoami`: the guard said who is calling (on stderr); under
/// `--json` the same as a document.
pub fn whoami(identity: &Identity) -> Result<()> {
    crate::output::document(&serde_json::json!({
        "arn": identity.arn,
        "account": identity.account,
        "admin": true,
    }));
    Ok(())
}

/// Print who is calling and refuse unless it is the admin.
pub fn check(identity: &Identity, principals: &Principals) -> Result<(), Problem> {
    let label = match principals.classify(&identity.arn) {
        Role::Admin => "the admin: may deploy",
        Role::Service => "the SERVICE ACCOUNT",
        Role::Other => "not the configured admin",
    };
    crate::say!("caller: {} (account {}) — {label}", identity.arn, identity.account);
    check_caller(identity, principals)
}

/// The deploy caller must be the admin: never the service account.
pub fn check_caller(identity: &Identity, principals: &Principals) -> Result<(), Problem> {
    match principals.classify(&identity.arn) {
        Role::Admin => Ok(()),
        Role::Service => Err(Problem::fail(
            DEPLOY_CREDENTIALS,
            format!(
                "refusing to run: {} is the SERVICE ACCOUNT (`{}`), which must never run Terraform or deploy",
                identity.arn, principals.service_user
            ),
            format!(
                "use the admin's (`{}`) keys in terraform/.env or an admin AWS_PROFILE; the service account's keys belong in backend/.env",
                principals.admin_user
            ),
        )),
        Role::Other => Err(Problem::fail(
            DEPLOY_CREDENTIALS,
            format!("refusing to run: the caller {} is not the admin user `{}`", identity.arn, principals.admin_user),
            "use the admin's credentials, pass --admin-user NAME if the admin has another name, or --admin-principal ARN for an SSO/assumed role",
        )),
    }
}

/// The account a run may touch, and who said so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub account: String,
    pub source: String,
}

/// The check the account pin's problems are named by.
pub const ACCOUNT: &str = "account";

/// The allowed account: `--account`/`CASEY_AWS_ACCOUNT_ID`, and the account
/// the applied stack lives in (the `account_id` output of a local state;
/// read as a file, since no child may run before the guard). Both set and
/// different: refused. Neither: `None` (the first apply pins nothing).
pub fn account_pin(
    explicit: Option<&str>,
    tf_dir: &Path,
    workspace: &str,
    backend: Option<&crate::backend::Backend>,
) -> Result<Option<Pin>, Problem> {
    let explicit = explicit.map(str::trim).filter(|a| !a.is_empty());
    if let Some(account) = explicit {
        if account.len() != 12 || !account.chars().all(|c| c.is_ascii_digit()) {
            return Err(Problem::fail(
                ACCOUNT,
                "--account (or CASEY_AWS_ACCOUNT_ID) must be a 12-digit AWS account id, such as 123456789012",
                "pass the 12 digits of the account to deploy to, or drop --account",
            ));
        }
    }
    let recorded = state_account(tf_dir, workspace, backend)?;
    match (explicit, recorded) {
        (Some(given), Some((state, path))) if given != state => Err(Problem::fail(
            ACCOUNT,
            format!(
                "refusing to run: --account (or CASEY_AWS_ACCOUNT_ID) says {given}, but the stack's state ({}) records account {state}",
                path.display()
            ),
            format!("deploy to account {state} (drop --account or set it to {state}); a stack in another account needs its own state"),
        )),
        (_, Some((state, path))) => {
            Ok(Some(Pin { account: state, source: format!("the stack's state ({})", path.display()) }))
        }
        (Some(given), None) => {
            Ok(Some(Pin { account: given.to_owned(), source: "--account (or CASEY_AWS_ACCOUNT_ID)".to_owned() }))
        }
        (None, None) => Ok(None),
    }
}

/// Refuse when the caller is not in the pinned account; names both accounts.
pub fn check_account(identity: &Identity, pin: Option<&Pin>) -> Result<(), Problem> {
    let Some(pin) = pin else { return Ok(()) };
    if identity.account != pin.account {
        return Err(Problem::fail(
            ACCOUNT,
            format!(
                "refusing to run: the credentials ({}) are for account {}, but {} allows only account {}",
                identity.arn, identity.account, pin.source, pin.account
            ),
            format!("use the admin's credentials for account {}", pin.account),
        ));
    }
    Ok(())
}

/// `account_id` from the local state, when there is one.
fn state_account(
    tf_dir: &Path,
    workspace: &str,
    backend: Option<&crate::backend::Backend>,
) -> Result<Option<(String, std::path::PathBuf)>, Problem> {
    let Some(path) = crate::terraform::local_state(tf_dir, workspace) else {
        // A state in S3: the bucket `state bootstrap` names after its account.
        let account = backend.and_then(|b| b.account()).map(str::to_owned);
        return Ok(account.map(|a| (a, tf_dir.join(crate::backend::FILE))));
    };
    let text = std::fs::read_to_string(&path).map_err(|err| {
        Problem::fail(ACCOUNT, format!("could not read {}: {err}", path.display()), "check its permissions")
    })?;
    let state: serde_json::Value = serde_json::from_str(&text).map_err(|_| {
        Problem::fail(
            ACCOUNT,
            format!("{} is not a Terraform state (not JSON)", path.display()),
            "restore it from terraform.tfstate.backup",
        )
    })?;
    Ok(state["outputs"]["account_id"]["value"].as_str().filter(|a| !a.is_empty()).map(|a| (a.to_owned(), path)))
}

/// The check key separation's problems are named by.
pub const SEPARATION: &str = "key separation";

/// Refuse when backend/.env holds the same access key as the deploy
/// settings (already in this process's environment). A backend/.env that
/// cannot be read is its own problem.
pub fn check_separation(backend_env: &Path) -> Result<(), Problem> {
    let Ok(admin_key) = std::env::var("AWS_ACCESS_KEY_ID") else { return Ok(()) };
    if admin_key.is_empty() || !backend_env.exists() {
        return Ok(());
    }
    let backend = env::read_env_file(env::BACKEND_FILE, backend_env)?;
    keys_separate(Some(&admin_key), &backend, backend_env)
}

/// backend/.env (`backend`, read from `path`) must not hold the deploy's access key.
pub fn keys_separate(admin_key: Option<&str>, backend: &BTreeMap<String, String>, path: &Path) -> Result<(), Problem> {
    let Some(admin_key) = admin_key.filter(|k| !k.is_empty()) else { return Ok(()) };
    if backend.get("AWS_ACCESS_KEY_ID").map(String::as_str) == Some(admin_key) {
        return Err(Problem::fail(
            SEPARATION,
            format!(
                "{} holds the same AWS access key ({}) as the deploy credentials",
                path.display(),
                key_hint(admin_key)
            ),
            format!(
                "Terraform must use the admin's keys and the backend the service account's: put the service account's keys in {}",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// Terraform and the backend must not be the same principal either.
pub fn principals_separate(deploy: &Identity, backend: &Identity, path: &Path) -> Result<(), Problem> {
    if deploy.arn == backend.arn {
        return Err(Problem::fail(
            SEPARATION,
            format!("terraform and {} are the same principal ({})", path.display(), deploy.arn),
            format!("keep the admin's keys in terraform/.env and put the service account's keys in {}", path.display()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principals(extra: Option<&str>) -> Principals {
        Principals {
            admin_user: "casey_aniruddh".into(),
            service_user: "casey_localdev_service".into(),
            admin_principal: extra.map(Into::into),
        }
    }

    #[test]
    fn classifies_users() {
        let p = principals(None);
        assert_eq!(p.classify("arn:aws:iam::123456789012:user/casey_aniruddh"), Role::Admin);
        assert_eq!(p.classify("arn:aws:iam::123456789012:user/ops/casey_localdev_service"), Role::Service);
        assert_eq!(p.classify("arn:aws:iam::123456789012:user/moto"), Role::Other);
        assert_eq!(p.classify("arn:aws:iam::123456789012:user/casey_aniruddh2"), Role::Other);
    }

    #[test]
    fn admin_principal_accepts_role_sessions() {
        let p = principals(Some("arn:aws:iam::123456789012:role/AWSReservedSSO_Admin"));
        assert_eq!(p.classify("arn:aws:sts::123456789012:assumed-role/AWSReservedSSO_Admin/jo"), Role::Admin);
        assert_eq!(p.classify("arn:aws:sts::999999999999:assumed-role/AWSReservedSSO_Admin/jo"), Role::Other);
        assert_eq!(p.classify("arn:aws:sts::123456789012:assumed-role/Other/jo"), Role::Other);
    }
}
