//! `casey-deploy destroy`: tear the stack down in an order that keeps the
//! admin able to finish. The admin's own policies and their attachments
//! (`prevent_destroy` in iam.tf) are left out of the plan: they stay in AWS
//! and in the state, so the admin keeps its rights for the whole destroy and
//! for the next `infra`, which builds the stack again. The state (and its S3
//! bucket) stays too.
//!
//! One saved, targeted destroy plan is summarised, confirmed by typing the
//! environment's name (`--yes` without a terminal), then applied as it was
//! shown. The images in ECR go with their repository: they are deleted after
//! the confirmation, just before the apply (Terraform only deletes an empty
//! repository unless `ecr_force_delete` was applied).

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{bail, Context as _, Result};

use crate::context::Ctx;
use crate::infra::{self, Summary};
use crate::terraform::{Plan, PlanFile, PlanMode, Vars};
use crate::{prompt, say};

#[derive(Debug, Clone, Default)]
pub struct Options {
    pub vars: Vars,
    pub yes: bool,
}

pub fn run(ctx: &Ctx, args: &Options) -> Result<()> {
    let tf = ctx.terraform(&args.vars);
    say!("==> terraform init ({})", tf.dir().display());
    tf.init()?;
    let targets: Vec<String> = tf
        .state_list()?
        .into_iter()
        .filter(|a| !a.starts_with("data.") && !infra::ADMIN_TARGETS.iter().any(|t| a.starts_with(t)))
        .collect();
    if targets.is_empty() {
        say!("nothing to destroy: the state holds no resource but the admin's own policies");
        crate::output::summary(serde_json::json!({"destroyed": 0}));
        return Ok(());
    }
    // The repository (its images go with it), read before anything is planned.
    let repository = ctx.repository().ok();

    let plan_file = PlanFile::create(tf.dir(), "destroy")?;
    say!("==> terraform plan -destroy (all but the admin's own policies)");
    if tf.plan_targets(&plan_file, PlanMode::Destroy, &targets)? == Plan::NoChanges {
        say!("nothing to destroy");
        return Ok(());
    }
    let summary = Summary::of(&tf.show_json(&plan_file)?);
    summary.show("destroy");
    say!(
        "kept: the admin's policies ({}) and their attachments, the Terraform state{}",
        infra::ADMIN_TARGETS.join(", "),
        match &ctx.backend {
            Some(b) => format!(" and its bucket s3://{}", b.bucket),
            None => String::new(),
        }
    );
    confirm(ctx, args, &summary)?;

    if let Some(repo) = &repository {
        let deleted = ctx.block_on(crate::ecr::delete_all_images(&ctx.ecr(&repo.region), repo.name()))?;
        if deleted > 0 {
            say!("deleted the {deleted} image(s) in ECR repository {}", repo.name());
        }
    }
    say!("==> terraform apply (the destroy plan)");
    tf.apply(&plan_file)?;
    say!("destroyed {} resource(s); `casey-deploy infra` builds the stack again", summary.destroy);
    crate::output::summary(serde_json::json!({"destroyed": summary.destroy, "kept": infra::ADMIN_TARGETS}));
    Ok(())
}

/// The environment's name, typed: a teardown is not undone by answering
/// `yes` out of habit.
fn confirm(ctx: &Ctx, args: &Options, summary: &Summary) -> Result<()> {
    if args.yes || ctx.auto_approve() {
        return Ok(());
    }
    let environment = ctx.environment.as_str();
    if !std::io::stdin().is_terminal() {
        bail!("there is no terminal to confirm the destroy, so nothing was destroyed; re-run with --yes to destroy without asking");
    }
    prompt!(
        "This DESTROYS {} resource(s) of environment {environment}, the service and its logs and images included. Type the environment's name ({environment}) to destroy it: ",
        summary.destroy
    );
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer).context("could not read the answer")?;
    if answer.trim() != environment {
        bail!("destroy cancelled (the answer was not `{environment}`); nothing was changed");
    }
    Ok(())
}
