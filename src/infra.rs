//! `casey-deploy infra`: init, ONE saved plan, a summary, confirmation, and
//! an apply of exactly that plan.
//!
//! The seed ran `terraform refresh`, `plan` and `apply`, which refreshes the
//! state three times. `plan` refreshes on its own, and applying its saved
//! file applies what was shown without refreshing again.
//!
//! Two things only a first apply meets, both of which real AWS refuses when
//! everything is applied at once:
//! - The admin starts with only the bootstrap rights (create and attach IAM
//!   policies, create log groups). The admin's own policies and their
//!   attachment are applied first, on their own, and the tool waits until
//!   IAM grants them (IAM is eventually consistent) before it plans the rest.
//! - The ECS service must not start before its image is in ECR: its first
//!   deployment would fail with CannotPullContainerError and the circuit
//!   breaker would have nothing to roll back to. While the image is missing,
//!   everything but the service (and its auto scaling, which would raise the
//!   task count at once) is applied; `image` pushes, then creates it.
//!
//! An apply that did not end by itself (SIGKILL, a crash, an interrupt, a
//! lost connection) may have created resources that it never recorded in
//! the state; the next apply would then fail on them with "already exists".
//! `terraform::apply` leaves a marker for such an apply, and the next `infra`
//! that finds one of a dead process adopts (imports) what already exists,
//! says so, and applies again, as `--adopt` would.

use std::io::{BufRead, IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::context::Ctx;
use crate::terraform::{Failure, Plan, PlanFile, PlanMode, Terraform, Vars};
use crate::{prompt, say};

/// The admin's own policies and their attachments (to the admin user, and
/// to the deploy role when there is one): applied before the rest.
pub const ADMIN_TARGETS: &[&str] = &[
    "aws_iam_policy.terraform_admin",
    "aws_iam_user_policy_attachment.terraform_admin",
    "aws_iam_role_policy_attachment.terraform_admin",
];
/// The ECS service, and what would start tasks for it at once.
pub const SERVICE: &str = "aws_ecs_service.backend";
const TASK_DEFINITION: &str = "aws_ecs_task_definition.backend";
const NEEDS_IMAGE: &[&str] = &[SERVICE, "aws_appautoscaling_target.ecs", "aws_appautoscaling_policy.cpu"];
/// How long IAM may take to grant new policies before the tool gives up.
const IAM_WAIT: Duration = Duration::from_secs(120);

/// What `infra` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    NoChanges,
    Applied,
    /// Applied all but the ECS service: its image (named) is not in ECR yet.
    WaitingForImage(String),
}

impl Outcome {
    /// `no_changes`, `applied` or `waiting_for_image`, for JSON.
    pub fn key(&self) -> &'static str {
        match self {
            Outcome::NoChanges => "no_changes",
            Outcome::Applied => "applied",
            Outcome::WaitingForImage(_) => "waiting_for_image",
        }
    }

    pub fn note(&self) -> &'static str {
        match self {
            Outcome::NoChanges => "no changes",
            Outcome::Applied => "applied",
            Outcome::WaitingForImage(_) => "applied, service after the push",
        }
    }
}

/// What `infra` is asked to do.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub vars: Vars,
    /// Apply without asking.
    pub yes: bool,
    pub refresh_only: bool,
    /// Import what already exists when an apply fails on it.
    pub adopt: bool,
    /// The apply deploys a release: a plan that changes nothing but what a
    /// release changes is applied without asking (anything else is asked).
    pub release: bool,
}

/// `casey-deploy infra`: [`run`], then its summary.
pub fn command(ctx: &Ctx, args: &Options) -> Result<()> {
    let outcome = run(ctx, args)?;
    let waiting = match &outcome {
        Outcome::WaitingForImage(image) => Value::from(image.as_str()),
        _ => Value::Null,
    };
    crate::output::summary(serde_json::json!({"outcome": outcome.key(), "waiting_for_image": waiting}));
    Ok(())
}

pub fn run(ctx: &Ctx, args: &Options) -> Result<Outcome> {
    // The sandbox is throwaway: --local applies without asking.
    let args = &Options { yes: args.yes || ctx.auto_approve(), ..args.clone() };
    let tf = ctx.terraform(&args.vars);
    // Read before this run's own apply writes its marker.
    let interrupted = crate::terraform::interrupted_apply(tf.dir(), tf.workspace());
    if let Some(earlier) = &interrupted {
        say!(
            "note: an earlier apply (casey-deploy pid {}, started {}) did not finish by itself; anything it created without recording it is adopted if the apply meets it",
            earlier.pid,
            earlier.ago()
        );
    }
    say!("==> terraform init ({})", tf.dir().display());
    tf.init()?;
    let adopt = Adopt { requested: args.adopt, interrupted: interrupted.as_ref() };
    if !args.refresh_only {
        adopting(ctx, &tf, &adopt, || bootstrap_admin(ctx, &tf, args))?;
    }
    let outcome = adopting(ctx, &tf, &adopt, || plan_and_apply(ctx, &tf, args))?;
    if let Some(earlier) = &interrupted {
        crate::terraform::clear_interrupted_apply(tf.dir(), tf.workspace(), earlier);
    }
    Ok(outcome)
}

/// When to import what already exists: `--adopt`, or after an apply that
/// was interrupted before it recorded everything it created.
struct Adopt<'a> {
    requested: bool,
    interrupted: Option<&'a crate::terraform::InterruptedApply>,
}

/// Run `step`; when it fails on resources that already exist and [`Adopt`]
/// allows it, import them and run it again (again when the next attempt
/// meets more: a security group's rules can only be found once the group
/// is in the state).
fn adopting<T>(ctx: &Ctx, tf: &Terraform, adopt: &Adopt, step: impl Fn() -> Result<T>) -> Result<T> {
    let mut rounds = 0;
    loop {
        let err = match step() {
            Err(err) if (adopt.requested || adopt.interrupted.is_some()) && rounds < 3 => err,
            other => return other,
        };
        let Some(failure) = err.downcast_ref::<Failure>() else { return Err(err) };
        let existing = failure.already_exists();
        if existing.is_empty() {
            return Err(err);
        }
        match (adopt.requested, adopt.interrupted) {
            (false, Some(earlier)) => say!(
                "==> the interrupted apply (pid {}) created {} without recording it in the state: importing what already exists (as `infra --adopt` does), then applying again",
                earlier.pid,
                existing.join(", ")
            ),
            _ => say!("==> --adopt: importing the resources that already exist"),
        }
        let mut imported = crate::import::adopt(ctx, tf)?;
        imported.extend(adopt_network(ctx, tf, &existing)?);
        if imported.is_empty() {
            bail!("{failure}\nnothing could be imported; check the names in the errors above");
        }
        rounds += 1;
    }
}

/// Import the security groups and rules among `existing` (addresses that
/// failed as already existing). Their import ids are EC2's ids, which only
/// a lookup by name and VPC (group) or by content (rule) finds.
fn adopt_network(ctx: &Ctx, tf: &Terraform, existing: &[String]) -> Result<Vec<String>> {
    let network = |a: &String| a.starts_with("aws_security_group.") || a.starts_with("aws_vpc_security_group_");
    if !existing.iter().any(network) {
        return Ok(Vec::new());
    }
    let plan_file = PlanFile::create(tf.dir(), "adopt-network")?;
    tf.plan(&plan_file, PlanMode::NamesOnly).context("looking for security groups to import")?;
    let planned = tf.show_json(&plan_file)?;
    let ec2 = aws_sdk_ec2::Client::new(&ctx.sdk);
    let mut imported = Vec::new();
    for rc in planned["resource_changes"].as_array().into_iter().flatten() {
        let Some(address) = rc["address"].as_str() else { continue };
        if !existing.iter().any(|a| a == address) {
            continue;
        }
        let after = &rc["change"]["after"];
        let id = match rc["type"].as_str() {
            Some("aws_security_group") => group_id(ctx, &ec2, after)?,
            Some(kind @ ("aws_vpc_security_group_ingress_rule" | "aws_vpc_security_group_egress_rule")) => {
                rule_id(ctx, &ec2, after, kind.ends_with("egress_rule"))?
            }
            _ => continue,
        };
        let Some(id) = id else {
            say!("not found in AWS: {address}");
            continue;
        };
        let out = tf.import(address, &id)?;
        if !out.success() {
            bail!("`terraform import {address} {id}` failed:\n{}", out.tail(15));
        }
        say!("imported {address} ({id})");
        imported.push(address.to_owned());
    }
    Ok(imported)
}

fn ec2_error(call: &str, e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("EC2 {call} failed while adopting security groups: {e}. Run `casey-deploy infra` again")
}

/// The id of the security group a plan names (name and VPC).
fn group_id(ctx: &Ctx, ec2: &aws_sdk_ec2::Client, after: &Value) -> Result<Option<String>> {
    use aws_sdk_ec2::types::Filter;
    let (Some(name), Some(vpc)) = (after["name"].as_str(), after["vpc_id"].as_str()) else { return Ok(None) };
    let found = ctx
        .block_on(
            ec2.describe_security_groups()
                .filters(Filter::builder().name("group-name").values(name).build())
                .filters(Filter::builder().name("vpc-id").values(vpc).build())
                .send(),
        )
        .map_err(|e| ec2_error("DescribeSecurityGroups", crate::aws::error_text(&e)))?;
    Ok(found.security_groups().first().and_then(|g| g.group_id()).map(str::to_owned))
}

/// The id of the rule of a group that matches a planned rule.
fn rule_id(ctx: &Ctx, ec2: &aws_sdk_ec2::Client, after: &Value, egress: bool) -> Result<Option<String>> {
    use aws_sdk_ec2::types::Filter;
    let Some(group) = after["security_group_id"].as_str() else { return Ok(None) };
    let found = ctx
        .block_on(
            ec2.describe_security_group_rules()
                .filters(Filter::builder().name("group-id").values(group).build())
                .send(),
        )
        .map_err(|e| ec2_error("DescribeSecurityGroupRules", crate::aws::error_text(&e)))?;
    let port = |key: &str| after[key].as_i64().map(|p| p as i32);
    let rule = found.security_group_rules().iter().find(|r| {
        r.is_egress() == Some(egress)
            && r.ip_protocol() == after["ip_protocol"].as_str()
            && r.from_port() == port("from_port")
            && r.to_port() == port("to_port")
            && r.cidr_ipv4() == after["cidr_ipv4"].as_str()
            && r.referenced_group_info().and_then(|g| g.group_id()) == after["referenced_security_group_id"].as_str()
    });
    Ok(rule.and_then(|r| r.security_group_rule_id()).map(str::to_owned))
}

/// First apply only (no admin attachment in the state): apply the admin's
/// policies and attachments alone, then wait until IAM grants them.
fn bootstrap_admin(ctx: &Ctx, tf: &Terraform, args: &Options) -> Result<()> {
    let state = state_resources(tf)?;
    if state.iter().any(|a| a == ADMIN_TARGETS[1]) {
        return Ok(());
    }
    say!("==> first apply: the admin's own IAM policies first (the rest needs their permissions)");
    let targets: Vec<String> = ADMIN_TARGETS.iter().map(|t| (*t).to_owned()).collect();
    let plan_file = PlanFile::create(tf.dir(), "bootstrap")?;
    if tf.plan_targets(&plan_file, PlanMode::Normal, &targets)? == Plan::NoChanges {
        return Ok(());
    }
    let summary = Summary::of(&tf.show_json(&plan_file)?);
    summary.show("admin");
    confirm(&summary, args, tf.environment())?;
    say!("==> terraform apply (the admin's policies)");
    tf.apply(&plan_file)?;
    crate::output::event("applied", serde_json::json!({"stage": "admin"}));
    wait_for_iam(ctx)
}

/// Poll two calls the rest of the plan needs until IAM allows them three
/// times in a row (IAM changes reach its endpoints one by one).
fn wait_for_iam(ctx: &Ctx) -> Result<()> {
    use aws_sdk_ec2::error::ProvideErrorMetadata;
    say!("==> waiting for IAM to grant the new policies (IAM is eventually consistent)");
    let ecs = aws_sdk_ecs::Client::new(&ctx.sdk);
    let ec2 = aws_sdk_ec2::Client::new(&ctx.sdk);
    let denied = |code: Option<&str>| {
        matches!(code, Some("AccessDenied" | "AccessDeniedException" | "UnauthorizedOperation" | "UnauthorizedAccess"))
    };
    let start = Instant::now();
    let mut streak = 0;
    loop {
        crate::process::check_interrupted()?;
        let ecs_code = ctx.block_on(ecs.describe_clusters().clusters("casey-deploy-iam-probe").send()).err();
        let ec2_code = ctx.block_on(ec2.describe_vpcs().max_results(5).send()).err();
        let refused =
            denied(ecs_code.as_ref().and_then(|e| e.code())) || denied(ec2_code.as_ref().and_then(|e| e.code()));
        streak = if refused { 0 } else { streak + 1 };
        if streak >= 3 {
            say!("IAM grants the admin's policies ({:.0}s)", start.elapsed().as_secs_f64());
            return Ok(());
        }
        if start.elapsed() >= IAM_WAIT {
            bail!(
                "IAM still refuses the admin's new permissions after {}s (ecs:DescribeClusters / ec2:DescribeVpcs); IAM can be slow to propagate: wait a minute and run `casey-deploy infra` again",
                IAM_WAIT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn plan_and_apply(ctx: &Ctx, tf: &Terraform, args: &Options) -> Result<Outcome> {
    let plan_file = PlanFile::create(tf.dir(), "infra")?;
    let mode = if args.refresh_only { PlanMode::RefreshOnly } else { PlanMode::Normal };
    say!("==> terraform plan{}", if args.refresh_only { " -refresh-only" } else { "" });
    let plan = tf.plan(&plan_file, mode)?;
    if plan == Plan::NoChanges {
        say!("No changes: the infrastructure matches the configuration. Nothing to apply.");
        crate::output::event("plan", serde_json::json!({"stage": "all", "add": 0, "change": 0, "destroy": 0}));
        return Ok(Outcome::NoChanges);
    }
    let json = tf.show_json(&plan_file)?;
    if !args.refresh_only {
        if let Some(image) = missing_image(ctx, &json)? {
            return apply_without_service(tf, args, &json, image);
        }
    }
    let summary = Summary::of(&json);
    summary.show("all");
    confirm(&summary, args, tf.environment())?;
    say!("==> terraform apply (the saved plan)");
    tf.apply(&plan_file)?;
    crate::output::event("applied", serde_json::json!({"stage": "all"}));
    Ok(Outcome::Applied)
}

/// The image the service would be created with, when it is not in ECR.
/// None when the plan does not create the service, or the image is not an
/// ECR image (nothing to check it with; the user named it).
/// The ECR repository's name as planned (the environment's suffix included).
fn planned_repository(plan: &Value) -> Option<String> {
    let resources = plan["planned_values"]["root_module"]["resources"].as_array()?;
    let repository = resources.iter().find(|r| r["address"] == "aws_ecr_repository.backend")?;
    repository["values"]["name"].as_str().filter(|n| !n.is_empty()).map(str::to_owned)
}

fn missing_image(ctx: &Ctx, plan: &Value) -> Result<Option<String>> {
    let creates_service = plan["resource_changes"].as_array().into_iter().flatten().any(|rc| {
        rc["address"] == SERVICE && rc["change"]["actions"].as_array().is_some_and(|a| a.iter().any(|x| x == "create"))
    });
    if !creates_service {
        return Ok(None);
    }
    let var = |name: &str| plan["variables"][name]["value"].as_str().filter(|v| !v.is_empty()).map(str::to_owned);
    let region = var("aws_region").unwrap_or_else(|| ctx.region());
    // The image the planned task definition names (the release record's,
    // or a pinned backend_container_image); unknown before the repository exists.
    let planned = planned_image(plan).or_else(|| var("backend_container_image"));
    let (name, reference) = match planned {
        None => match planned_repository(plan) {
            Some(name) => (name, "latest".to_owned()),
            None => return Ok(None),
        },
        Some(image) => match ecr_image(&image) {
            Some(parts) => parts,
            None => return Ok(None),
        },
    };
    if ctx.block_on(crate::ecr::has_image(&ctx.ecr(&region), &name, &reference))? {
        return Ok(None);
    }
    let sep = if reference.starts_with("sha256:") { '@' } else { ':' };
    Ok(Some(format!("{name}{sep}{reference}")))
}

/// The service container's image in the planned task definition, when the
/// plan knows it.
fn planned_image(plan: &Value) -> Option<String> {
    let change = plan["resource_changes"].as_array()?.iter().find(|rc| rc["address"] == TASK_DEFINITION)?;
    let definitions: Value = serde_json::from_str(change["change"]["after"]["container_definitions"].as_str()?).ok()?;
    definitions.as_array()?.first()?["image"].as_str().map(str::to_owned)
}

/// `<acct>.dkr.ecr.<region>.amazonaws.com/<name>(:tag|@digest)` → (name, tag or digest).
fn ecr_image(image: &str) -> Option<(String, String)> {
    let (host, path) = image.split_once('/')?;
    if !host.contains(".dkr.ecr.") {
        return None;
    }
    if let Some((name, digest)) = path.split_once('@') {
        return Some((name.to_owned(), digest.to_owned()));
    }
    match path.rsplit_once(':') {
        Some((name, tag)) => Some((name.to_owned(), tag.to_owned())),
        None => Some((path.to_owned(), "latest".to_owned())),
    }
}

/// Apply every planned change except the ECS service and its auto scaling.
fn apply_without_service(tf: &Terraform, args: &Options, plan: &Value, image: String) -> Result<Outcome> {
    say!("==> {image} is not in ECR yet: applying everything but the ECS service, which would start tasks without an image");
    let targets = targets_without(plan, NEEDS_IMAGE);
    if !targets.is_empty() {
        let plan_file = PlanFile::create(tf.dir(), "infra-base")?;
        if tf.plan_targets(&plan_file, PlanMode::Normal, &targets)? == Plan::Changes {
            let summary = Summary::of(&tf.show_json(&plan_file)?);
            summary.show("without_service");
            confirm(&summary, args, tf.environment())?;
            say!("==> terraform apply (the saved plan)");
            tf.apply(&plan_file)?;
            crate::output::event("applied", serde_json::json!({"stage": "without_service"}));
        }
    }
    say!(
        "The ECS service is created once {image} is in ECR: `casey-deploy image` builds and pushes it, then creates the service (`casey-deploy all` does both)."
    );
    Ok(Outcome::WaitingForImage(image))
}

/// The resources (not instances: `-target` takes them whole) a plan changes,
/// less `except`.
fn targets_without(plan: &Value, except: &[&str]) -> Vec<String> {
    let mut targets: Vec<String> = plan["resource_changes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|rc| rc["mode"] == "managed")
        .filter(|rc| rc["change"]["actions"].as_array().is_some_and(|a| a.iter().any(|x| x != "no-op" && x != "read")))
        .filter_map(|rc| rc["address"].as_str())
        .map(|address| address.split('[').next().unwrap_or(address).to_owned())
        .filter(|address| !except.contains(&address.as_str()))
        .collect();
    targets.sort();
    targets.dedup();
    targets
}

/// The managed resources in the state (`type.name`, without instance keys).
pub fn state_resources(tf: &Terraform) -> Result<Vec<String>> {
    if let Some(file) = crate::terraform::local_state(tf.dir(), tf.workspace()) {
        let text = std::fs::read_to_string(&file).with_context(|| format!("could not read {}", file.display()))?;
        let state: Value =
            serde_json::from_str(&text).with_context(|| format!("{} is not a Terraform state", file.display()))?;
        return Ok(state["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["mode"] == "managed" && r["module"].is_null())
            .filter(|r| r["instances"].as_array().is_some_and(|i| !i.is_empty()))
            .filter_map(|r| Some(format!("{}.{}", r["type"].as_str()?, r["name"].as_str()?)))
            .collect());
    }
    let mut list: Vec<String> =
        tf.state_list()?.into_iter().map(|a| a.split('[').next().unwrap_or(&a).to_owned()).collect();
    list.dedup();
    Ok(list)
}

/// Counts and the risky changes of a plan, from `terraform show -json`.
#[derive(Debug, Default, PartialEq)]
pub struct Summary {
    pub add: usize,
    pub change: usize,
    pub destroy: usize,
    pub created: Vec<String>,
    pub updated: Vec<String>,
    pub replaced: Vec<String>,
    pub destroyed: Vec<String>,
    /// Resources whose state a refresh-only plan would update.
    pub drifted: usize,
}

impl Summary {
    pub fn of(plan: &Value) -> Summary {
        let mut s = Summary::default();
        for rc in plan["resource_changes"].as_array().into_iter().flatten() {
            let address = rc["address"].as_str().unwrap_or("?").to_owned();
            let actions: Vec<&str> =
                rc["change"]["actions"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            match actions.as_slice() {
                ["create"] => {
                    s.add += 1;
                    s.created.push(address);
                }
                ["update"] => {
                    s.change += 1;
                    s.updated.push(address);
                }
                ["delete"] => {
                    s.destroy += 1;
                    s.destroyed.push(address);
                }
                ["delete", "create"] | ["create", "delete"] => {
                    s.add += 1;
                    s.destroy += 1;
                    s.replaced.push(address);
                }
                _ => {}
            }
        }
        s.drifted = plan["resource_drift"].as_array().map_or(0, Vec::len);
        s
    }

    /// Nothing but a release's changes: the task definition replaced with
    /// the new image, the service updated to it (on the first deploy the
    /// service and its auto scaling created).
    pub fn only_release(&self) -> bool {
        let release = |a: &String| a == TASK_DEFINITION || NEEDS_IMAGE.contains(&a.as_str());
        self.destroyed.is_empty()
            && self.replaced.iter().all(|a| a == TASK_DEFINITION)
            && self.updated.iter().all(|a| a == TASK_DEFINITION || a == SERVICE)
            && self.created.iter().all(release)
    }

    fn risky(&self) -> bool {
        !self.replaced.is_empty() || !self.destroyed.is_empty()
    }

    /// Print the summary (the plan itself is detail, shown with -v) and
    /// send it as a `plan` event; `stage` says which plan of the run it is.
    pub fn show(&self, stage: &str) {
        say!("{self}");
        if !crate::output::verbose() {
            say!("(the full plan: run with -v)");
        }
        let mut json = self.to_json();
        json["stage"] = stage.into();
        crate::output::event("plan", json);
    }

    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "add": self.add, "change": self.change, "destroy": self.destroy,
            "created": self.created, "updated": self.updated,
            "replaced": self.replaced, "destroyed": self.destroyed, "drifted": self.drifted,
        })
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Plan: {} to add, {} to change, {} to destroy.", self.add, self.change, self.destroy)?;
        if self.add + self.change + self.destroy == 0 && self.drifted > 0 {
            write!(
                f,
                " Refresh only: {} resource(s) changed outside Terraform; applying updates the state only.",
                self.drifted
            )?;
        }
        for address in &self.created {
            write!(f, "\n  create   {address}")?;
        }
        for address in &self.updated {
            write!(f, "\n  update   {address}")?;
        }
        for address in &self.destroyed {
            write!(f, "\n  DESTROY  {address}")?;
        }
        for address in &self.replaced {
            write!(f, "\n  REPLACE  {address} (destroyed and created again)")?;
        }
        Ok(())
    }
}

/// Production's applies are confirmed by typing its name; another
/// environment's by typing `yes`.
fn confirm(summary: &Summary, args: &Options, environment: &str) -> Result<()> {
    if args.yes {
        return Ok(());
    }
    if args.release && summary.only_release() {
        say!("(the plan changes only what the release changes: applying it)");
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        bail!("there is no terminal to confirm the apply, so nothing was applied; re-run with --yes to apply without asking");
    }
    let warning = if summary.risky() { " This DESTROYS or REPLACES the resources listed above." } else { "" };
    let word = if environment == crate::environment::PRODUCTION { environment } else { "yes" };
    prompt!("Apply this plan to environment {environment}?{warning} Type `{word}` to apply [no]: ");
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer).context("could not read the answer")?;
    if answer.trim() != word {
        bail!("apply cancelled (the answer was not `{word}`); nothing was changed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_a_release_plan_is_applied_without_asking() {
        let release =
            Summary { replaced: vec![TASK_DEFINITION.into()], updated: vec![SERVICE.into()], ..Summary::default() };
        assert!(release.only_release());
        let first = Summary { created: NEEDS_IMAGE.iter().map(|a| (*a).to_owned()).collect(), ..Summary::default() };
        assert!(first.only_release());
        let more =
            Summary { updated: vec![SERVICE.into(), "aws_security_group.ecs_tasks".into()], ..Summary::default() };
        assert!(!more.only_release());
        let destroys = Summary { destroyed: vec![TASK_DEFINITION.into()], ..Summary::default() };
        assert!(!destroys.only_release());
    }

    use super::*;

    #[test]
    fn summary_counts_and_lists_risky_changes() {
        let plan = serde_json::json!({"resource_changes": [
            {"address": "a.x", "change": {"actions": ["create"]}},
            {"address": "a.y", "change": {"actions": ["update"]}},
            {"address": "a.z", "change": {"actions": ["delete"]}},
            {"address": "a.r", "change": {"actions": ["delete", "create"]}},
            {"address": "a.n", "change": {"actions": ["no-op"]}},
        ]});
        let s = Summary::of(&plan);
        assert_eq!((s.add, s.change, s.destroy), (2, 1, 2));
        assert_eq!(s.destroyed, vec!["a.z"]);
        assert_eq!(s.replaced, vec!["a.r"]);
        let text = s.to_string();
        assert!(text.contains("DESTROY  a.z") && text.contains("REPLACE  a.r"), "{text}");
    }

    #[test]
    fn targets_leave_out_the_service_and_take_resources_whole() {
        let plan = serde_json::json!({"resource_changes": [
            {"address": "aws_ecs_service.backend", "mode": "managed", "change": {"actions": ["create"]}},
            {"address": "aws_appautoscaling_target.ecs", "mode": "managed", "change": {"actions": ["create"]}},
            {"address": "aws_iam_policy.terraform_admin[\"core\"]", "mode": "managed", "change": {"actions": ["create"]}},
            {"address": "aws_iam_policy.terraform_admin[\"ecs\"]", "mode": "managed", "change": {"actions": ["create"]}},
            {"address": "aws_ecr_repository.backend", "mode": "managed", "change": {"actions": ["no-op"]}},
            {"address": "data.aws_vpc.selected", "mode": "data", "change": {"actions": ["read"]}},
            {"address": "aws_ecs_cluster.this", "mode": "managed", "change": {"actions": ["update"]}},
        ]});
        assert_eq!(targets_without(&plan, NEEDS_IMAGE), vec!["aws_ecs_cluster.this", "aws_iam_policy.terraform_admin"]);
    }

    #[test]
    fn ecr_images_are_split_into_repository_and_reference() {
        let host = "123456789012.dkr.ecr.us-east-1.amazonaws.com";
        assert_eq!(ecr_image(&format!("{host}/casey-backend:abc")), Some(("casey-backend".into(), "abc".into())));
        assert_eq!(ecr_image(&format!("{host}/casey-backend")), Some(("casey-backend".into(), "latest".into())));
        assert_eq!(
            ecr_image(&format!("{host}/team/casey@sha256:0123")),
            Some(("team/casey".into(), "sha256:0123".into()))
        );
        assert_eq!(ecr_image("public.ecr.aws/nginx/nginx:1"), None);
        assert_eq!(ecr_image("nginx"), None);
    }
}
