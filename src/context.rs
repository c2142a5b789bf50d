//! What every verb starts from: the project, the layered environment, the
//! SDK config, and a caller that passed the identity guard.

use std::future::Future;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use aws_config::SdkConfig;

use crate::cli::{Global, TfArgs};
use crate::env;
use crate::identity::{self, Identity, Principals};
use crate::sandbox::{self, Sandbox};
use crate::terraform::Terraform;

pub struct Ctx {
    pub project: PathBuf,
    pub principals: Principals,
    pub sdk: SdkConfig,
    pub identity: Identity,
    /// Set under --local: the sandbox this run targets.
    pub sandbox: Option<Sandbox>,
    tf_dir: PathBuf,
    rt: tokio::runtime::Runtime,
}

impl Ctx {
    /// Load settings, then run the identity guard. Nothing else runs first.
    pub fn new(global: &Global) -> Result<Ctx> {
        let project = find_project(global.project_dir.as_deref())?;
        let (sandbox, settings, tf_dir) = if global.local {
            let sandbox = sandbox::up(&project, &global.admin_user)?;
            sandbox::activate(&sandbox);
            let tf_dir = sandbox::terraform_dir(&project, &sandbox)?;
            let settings =
                env::Settings { source: env::Source::Sandbox(sandbox.endpoint.clone()), warnings: Vec::new() };
            (Some(sandbox), settings, tf_dir)
        } else {
            let (env_file, explicit) = match &global.env_file {
                Some(path) => (path.clone(), true),
                None => (project.join("terraform").join(".env"), false),
            };
            (None, env::load(&env_file, explicit)?, project.join("terraform"))
        };
        // Terraform's upgrade/advisory check calls HashiCorp on every run; a
        // deploy tool should not phone home (and CI here may only use loopback).
        if std::env::var_os("CHECKPOINT_DISABLE").is_none() {
            std::env::set_var("CHECKPOINT_DISABLE", "1");
        }
        for warning in &settings.warnings {
            crate::say!("warning: {warning}");
        }
        crate::say!("{}", settings.describe());
        env::check_region()?;
        let principals = Principals {
            admin_user: global.admin_user.clone(),
            service_user: global.service_user.clone(),
            admin_principal: global.admin_principal.clone(),
        };
        if sandbox.is_none() {
            identity::check_separation(&project.join("backend").join(".env"))?;
        }

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("could not start the async runtime")?;
        let sdk = rt.block_on(crate::aws::load())?;
        if sdk.region().is_none() {
            bail!("no AWS region is set: add AWS_REGION=us-east-1 (or your region) to terraform/.env, or set it in your AWS profile");
        }
        // The account pin is read (and --account checked) before any call.
        let pin = identity::account_pin(global.account.as_deref(), &tf_dir)?;
        let identity = rt.block_on(identity::caller(&sdk, &settings))?;
        identity::check(&identity, &principals)?;
        identity::check_account(&identity, pin.as_ref())?;
        Ok(Ctx { project, principals, sdk, identity, sandbox, tf_dir, rt })
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

    /// Terraform with the variables that keep the stack and this tool in
    /// agreement (region and the two user names), then the user's.
    pub fn terraform(&self, user: &TfArgs) -> Terraform {
        let base = vec![
            ("aws_region".to_owned(), self.region()),
            ("terraform_admin_iam_user_name".to_owned(), self.principals.admin_user.clone()),
            ("service_account_iam_user_name".to_owned(), self.principals.service_user.clone()),
        ];
        Terraform::new(&self.terraform_dir(), &base, user)
    }
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
