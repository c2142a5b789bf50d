//! What every verb starts from: the project, the layered environment, the
//! SDK config, and a caller that passed the identity guard.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context as _, Result};
use aws_config::SdkConfig;

use crate::env;
use crate::identity::{self, Identity, Principals};
use crate::sandbox::{self, Sandbox};
use crate::terraform::Terraform;
use crate::terraform::Vars;

/// Where a run deploys and as whom: the Face fills this from the global flags.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub project_dir: Option<PathBuf>,
    pub env_file: Option<PathBuf>,
    pub admin_user: String,
    pub service_user: String,
    pub admin_principal: Option<String>,
    /// The sandbox instead of AWS.
    pub local: bool,
    /// The only account the credentials may belong to.
    pub account: Option<String>,
    /// The environment (`--env`), checked by [`crate::environment::parse`].
    pub environment: String,
}

pub struct Ctx {
    pub project: PathBuf,
    pub principals: Principals,
    pub sdk: SdkConfig,
    pub identity: Identity,
    /// Set under --local: the sandbox this run targets.
    pub sandbox: Option<Sandbox>,
    /// The one account this run may touch, when it is known.
    pub pin: Option<identity::Pin>,
    /// The environment this run targets (`production` by default).
    pub environment: String,
    /// Where the state is (`terraform/backend.tf`, read once): `None` for a local state.
    pub backend: Option<crate::backend::Backend>,
    tf_dir: PathBuf,
    rt: Arc<tokio::runtime::Runtime>,
}

impl Ctx {
    /// Load settings, then run the identity guard. Nothing else runs first.
    pub fn new(target: &Options) -> Result<Ctx> {
        let project = find_project(target.project_dir.as_deref())?;
        let environment = target.environment.clone();
        let workspace = crate::environment::workspace(&environment).to_owned();
        let (sandbox, settings, tf_dir) = if target.local {
            let sandbox = sandbox::up(&project, &target.admin_user)?;
            sandbox::activate(&sandbox);
            let tf_dir = sandbox::terraform_dir(&project, &sandbox)?;
            let settings =
                env::Settings { source: env::Source::Sandbox(sandbox.endpoint.clone()), warnings: Vec::new() };
            (Some(sandbox), settings, tf_dir)
        } else {
            let (env_file, explicit) = match &target.env_file {
                Some(path) => (path.clone(), true),
                None => (crate::environment::env_file(&project.join("terraform"), &environment), false),
            };
            (None, env::load(&env_file, explicit)?, project.join("terraform"))
        };
        // Terraform's upgrade/advisory check calls HashiCorp on every run; a
        // deploy tool should not phone home (and CI here may only use loopback).
        if std::env::var_os("CHECKPOINT_DISABLE").is_none() {
            std::env::set_var("CHECKPOINT_DISABLE", "1");
        }
        for warning in &settings.warnings {
            crate::warn!("{warning}");
        }
        crate::say!("{}", settings.describe());
        env::check_region()?;
        let principals = Principals {
            admin_user: target.admin_user.clone(),
            service_user: target.service_user.clone(),
            admin_principal: target.admin_principal.clone(),
        };
        if sandbox.is_none() {
            let backend = project.join("backend").join(".env");
            if let (true, Err(warning)) = (backend.exists(), env::check_permissions(env::BACKEND_MODE, &backend)) {
                crate::warn!("{warning}");
            }
            identity::check_separation(&backend)?;
        }

        let rt = Arc::new(
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("could not start the async runtime")?,
        );
        // One provider resolves the credentials once, for the guard, every
        // SDK client and every child (see aws.rs).
        let (sdk, credentials) = rt.block_on(crate::aws::load_single())?;
        env::require_region(sdk.region().map(|r| r.as_ref()))?;
        // The account pin is read (and --account checked) before any call,
        // from a state that a killed apply may have left broken.
        crate::terraform::recover_state(&tf_dir, &workspace)?;
        let backend = crate::backend::load(&tf_dir, &environment)?;
        let pin = identity::account_pin(target.account.as_deref(), &tf_dir, &workspace, backend.as_ref())?;
        let identity = rt.block_on(identity::caller(&sdk, &settings))?;
        identity::check(&identity, &principals)?;
        identity::check_account(&identity, pin.as_ref())?;
        credentials.approve(crate::aws::Approved { arn: identity.arn.clone(), account: identity.account.clone() });
        let region = sdk.region().map(|r| r.to_string()).unwrap_or_default();
        let child_rt = Arc::clone(&rt);
        crate::process::set_child_env(Box::new(move || {
            // From async code (none starts children today) the runtime cannot
            // be entered again: the current credentials, as resolved.
            let creds = if tokio::runtime::Handle::try_current().is_ok() {
                credentials.current().context("no credentials were resolved")?
            } else {
                child_rt.block_on(credentials.resolve()).map_err(anyhow::Error::new)?
            };
            Ok(crate::aws::child_env(&creds, &region))
        }));
        Ok(Ctx { project, principals, sdk, identity, sandbox, pin, environment, backend, tf_dir, rt })
    }

    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.rt.block_on(future)
    }

    pub fn region(&self) -> String {
        self.sdk.region().map(|r| r.to_string()).unwrap_or_default()
    }

    /// `terraform/`, or the sandbox's copy of it under --local.
    pub fn terraform_dir(&self) -> PathBuf {
        self.tf_dir.clone()
    }

    /// An ECR client for `region` (the stack's region may differ from the run's).
    pub fn ecr(&self, region: &str) -> aws_sdk_ecr::Client {
        let config = aws_sdk_ecr::config::Builder::from(&self.sdk)
            .region(aws_sdk_ecr::config::Region::new(region.to_owned()))
            .build();
        aws_sdk_ecr::Client::from_conf(config)
    }

    /// An SSM client for `region` (the release record).
    pub fn ssm(&self, region: &str) -> aws_sdk_ssm::Client {
        let config = aws_sdk_ssm::config::Builder::from(&self.sdk)
            .region(aws_sdk_ssm::config::Region::new(region.to_owned()))
            .build();
        aws_sdk_ssm::Client::from_conf(config)
    }

    /// An S3 client for `region`; path-style addressing when the endpoint
    /// is not AWS's (an emulator on loopback has no bucket DNS names).
    pub fn s3(&self, region: &str) -> aws_sdk_s3::Client {
        let config = aws_sdk_s3::config::Builder::from(&self.sdk)
            .region(aws_sdk_s3::config::Region::new(region.to_owned()))
            .force_path_style(self.sdk.endpoint_url().is_some())
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    /// The applied stack's outputs.
    pub fn outputs(&self) -> Result<crate::outputs::Outputs> {
        crate::outputs::Outputs::load(&self.terraform(&Vars::default()))
    }

    /// The stack's image repository (it exists before the ECS service does).
    pub fn repository(&self) -> Result<crate::outputs::Repository> {
        crate::outputs::Repository::load(&self.terraform(&Vars::default()), &self.region())
    }

    /// Terraform with the variables that keep the stack and this tool in
    /// agreement (region and the two user names), then the user's.
    pub fn terraform(&self, user: &Vars) -> Terraform {
        let base = base_vars(&self.region(), &self.principals, self.pin.as_ref());
        Terraform::new(&self.terraform_dir(), &self.environment, &base, user)
    }
}

/// What the target provides to the steps, so that no step asks which target
/// it is: against AWS, pushes go to ECR and nothing else is needed; the
/// sandbox has its own registry and task runner.
impl Ctx {
    /// The sandbox is throwaway: its applies need no confirmation.
    pub fn auto_approve(&self) -> bool {
        self.sandbox.is_some()
    }

    /// The sandbox deploys a working tree as it is (a one-off `-dirty-`
    /// tag); against AWS uncommitted changes need `--allow-dirty`.
    pub fn accepts_dirty_builds(&self) -> bool {
        self.sandbox.is_some()
    }

    /// The registry images are pushed to instead of the ECR host.
    pub fn push_registry(&self) -> Option<String> {
        self.sandbox.as_ref().and_then(|s| s.registry.clone())
    }

    /// The target has a Docker engine but nowhere to push (a sandbox whose registry could not start).
    pub fn push_registry_missing(&self) -> bool {
        self.sandbox.as_ref().is_some_and(|s| s.registry.is_none())
    }

    /// Whether the target runs the cargo-built backend when Docker cannot build.
    pub fn accepts_binary_images(&self) -> bool {
        self.sandbox.is_some()
    }

    /// An image was pushed to `registry`: the target's tasks run it from there.
    pub fn images_pushed_to(&self, registry: &str) -> Result<()> {
        match &self.sandbox {
            Some(sandbox) => sandbox.serve_images_from(registry),
            None => Ok(()),
        }
    }

    /// The target's tasks run local processes: of `binary` (the image
    /// layer `layer`) for the image that has it, of their own image's layer
    /// for an earlier release.
    pub fn run_tasks_as_processes(&self, binary: &Path, layer: &str) -> Result<()> {
        match &self.sandbox {
            Some(sandbox) => sandbox.run_binary(binary, layer),
            None => bail!("AWS runs images, not local binaries: build the image with Docker"),
        }
    }
}

/// The variables every terraform call gets: region, the two user names and,
/// when the account is pinned, `allowed_account_ids`, so that the provider
/// refuses any other account on its own too.
fn base_vars(region: &str, principals: &Principals, pin: Option<&identity::Pin>) -> Vec<(String, String)> {
    let mut vars = vec![
        ("aws_region".to_owned(), region.to_owned()),
        ("terraform_admin_iam_user_name".to_owned(), principals.admin_user.clone()),
        ("service_account_iam_user_name".to_owned(), principals.service_user.clone()),
    ];
    if let Some(pin) = pin {
        vars.push(("allowed_account_ids".to_owned(), format!("[\"{}\"]", pin.account)));
    }
    vars
}

pub(crate) fn find_project(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(dir) = explicit {
        if !dir.join("terraform").is_dir() {
            bail!("{} has no terraform/ folder; pass the casey repository root with --project-dir", dir.display());
        }
        return dir.canonicalize().with_context(|| format!("cannot open {}", dir.display()));
    }
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    cwd.ancestors().find(|d| d.join("terraform").is_dir()).map(Path::to_path_buf).with_context(|| {
        format!(
            "no terraform/ folder in {} or its parents; run from the casey repository or pass --project-dir",
            cwd.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_account_reaches_terraform_as_allowed_account_ids() {
        let principals = Principals { admin_user: "a".into(), service_user: "s".into(), admin_principal: None };
        let unpinned = base_vars("us-east-1", &principals, None);
        assert!(unpinned.iter().all(|(k, _)| k != "allowed_account_ids"), "{unpinned:?}");
        let pin = identity::Pin { account: "123456789012".into(), source: "test".into() };
        let pinned = base_vars("us-east-1", &principals, Some(&pin));
        assert!(pinned.contains(&("allowed_account_ids".into(), r#"["123456789012"]"#.into())), "{pinned:?}");
    }
}
