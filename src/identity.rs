//! The admin/service guard: who is calling, and may they deploy?
//!
//! The seed's rule: the service account must never run Terraform, the admin
//! must never run the backend. This runs before any terraform or docker
//! command.

use std::path::Path;

use anyhow::{bail, Context, Result};
use aws_config::SdkConfig;
use aws_credential_types::provider::ProvideCredentials;

use crate::aws::Failure;
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

/// Resolve credentials (once: the STS call signs with exactly what was
/// resolved) and ask STS who they belong to.
pub async fn caller(sdk: &SdkConfig, settings: &Settings) -> Result<Identity> {
    let provider = sdk.credentials_provider().with_context(|| no_credentials(settings))?;
    let creds = provider
        .provide_credentials()
        .await
        .map_err(|e| anyhow::anyhow!("{}: {:#}", no_credentials(settings), anyhow::Error::new(e)))?;
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
            Failure::Refused | Failure::Other => "Check that the keys are current (not deleted or expired) and AWS_REGION is set; `aws sts get-caller-identity` shows the same check".to_owned(),
        };
        anyhow::anyhow!(
            "STS could not verify the credentials ({}, key {}): {}\n{advice}",
            settings.source,
            key_hint(creds.access_key_id()),
            crate::aws::error_text(&e)
        )
    })?;
    Ok(Identity {
        account: out.account().unwrap_or_default().to_owned(),
        arn: out.arn().unwrap_or_default().to_owned(),
    })
}

fn no_credentials(settings: &Settings) -> String {
    let tried = match &settings.source {
        Source::DefaultChain => "tried: terraform/.env (absent or without keys), AWS_* environment variables, the default profile, SSO, container and instance credentials".to_owned(),
        other => format!("tried: {other}"),
    };
    format!(
        "no usable AWS credentials ({tried}). Put the admin's keys in terraform/.env (cp terraform/.env.example terraform/.env), or set AWS_PROFILE to the admin's profile"
    )
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
pub fn check(identity: &Identity, principals: &Principals) -> Result<()> {
    let role = principals.classify(&identity.arn);
    let label = match role {
        Role::Admin => "the admin: may deploy",
        Role::Service => "the SERVICE ACCOUNT",
        Role::Other => "not the configured admin",
    };
    crate::say!("caller: {} (account {}) — {label}", identity.arn, identity.account);
    match role {
        Role::Admin => Ok(()),
        Role::Service => bail!(
            "refusing to run: these are the service account's credentials (`{}`), which must never be used to run Terraform or deploy.\nUse the admin's (`{}`) keys in terraform/.env or an admin AWS_PROFILE; the service account's keys belong in backend/.env",
            principals.service_user,
            principals.admin_user
        ),
        Role::Other => bail!(
            "refusing to run: the caller {} is not the admin user `{}`.\nUse the admin's credentials, pass --admin-user NAME if the admin has another name, or --admin-principal ARN for an SSO/assumed role",
            identity.arn,
            principals.admin_user
        ),
    }
}

/// The account a run may touch, and who said so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub account: String,
    pub source: String,
}

/// The allowed account: `--account`/`CASEY_AWS_ACCOUNT_ID`, and the account
/// the applied stack lives in (the `account_id` output of a local state;
/// read as a file, since no child may run before the guard). Both set and
/// different: refused. Neither: `None` (the first apply pins nothing).
pub fn account_pin(explicit: Option<&str>, tf_dir: &Path) -> Result<Option<Pin>> {
    let explicit = explicit.map(str::trim).filter(|a| !a.is_empty());
    if let Some(account) = explicit {
        if account.len() != 12 || !account.chars().all(|c| c.is_ascii_digit()) {
            bail!("--account (or CASEY_AWS_ACCOUNT_ID) must be a 12-digit AWS account id, such as 123456789012");
        }
    }
    let recorded = state_account(tf_dir)?;
    match (explicit, recorded) {
        (Some(given), Some((state, path))) if given != state => bail!(
            "refusing to run: --account (or CASEY_AWS_ACCOUNT_ID) says {given}, but the stack's state ({}) records account {state}.\nDeploy to account {state} (drop --account or set it to {state}); a stack in another account needs its own state",
            path.display()
        ),
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
pub fn check_account(identity: &Identity, pin: Option<&Pin>) -> Result<()> {
    let Some(pin) = pin else { return Ok(()) };
    if identity.account != pin.account {
        bail!(
            "refusing to run: the credentials ({}) are for account {}, but {} allows only account {}.\nUse the admin's credentials for account {}",
            identity.arn,
            identity.account,
            pin.source,
            pin.account,
            pin.account
        );
    }
    Ok(())
}

/// `account_id` from the local state, when there is one.
fn state_account(tf_dir: &Path) -> Result<Option<(String, std::path::PathBuf)>> {
    let Some(path) = crate::terraform::local_state(tf_dir) else { return Ok(None) };
    let text = std::fs::read_to_string(&path).with_context(|| format!("could not read {}", path.display()))?;
    let state: serde_json::Value = serde_json::from_str(&text).with_context(|| {
        format!("{} is not a Terraform state (not JSON); restore it from terraform.tfstate.backup", path.display())
    })?;
    Ok(state["outputs"]["account_id"]["value"].as_str().filter(|a| !a.is_empty()).map(|a| (a.to_owned(), path)))
}

/// Refuse when backend/.env holds the same access key as the deploy settings.
pub fn check_separation(backend_env: &Path) -> Result<()> {
    let Ok(admin_key) = std::env::var("AWS_ACCESS_KEY_ID") else { return Ok(()) };
    if admin_key.is_empty() || !backend_env.exists() {
        return Ok(());
    }
    let backend = env::read_env_file(backend_env)?;
    if backend.get("AWS_ACCESS_KEY_ID") == Some(&admin_key) {
        bail!(
            "{} holds the same AWS access key ({}) as the deploy credentials. Terraform must use the admin's keys and the backend the service account's: put the service account's keys in {}",
            backend_env.display(),
            key_hint(&admin_key),
            backend_env.display()
        );
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
