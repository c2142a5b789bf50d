//! `casey-deploy infra`: init, ONE saved plan, a summary, confirmation, and
//! an apply of exactly that plan.
//!
//! The seed ran `terraform refresh`, `plan` and `apply`, which refreshes the
//! state three times. `plan` refreshes on its own, and applying its saved
//! file applies what was shown without refreshing again.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::cli::InfraArgs;
use crate::context::Ctx;
use crate::terraform::{Failure, Plan, PlanFile, PlanMode, Terraform};

/// What `infra` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    NoChanges,
    Applied,
}

pub fn run(ctx: &Ctx, args: &InfraArgs) -> Result<Outcome> {
    // The sandbox is throwaway: --local applies without asking.
    let args = &InfraArgs { yes: args.yes || ctx.sandbox.is_some(), ..args.clone() };
    let tf = ctx.terraform(&args.tf);
    eprintln!("==> terraform init ({})", tf.dir().display());
    tf.init()?;
    match plan_and_apply(&tf, args) {
        Err(err) if args.adopt => {
            let Some(failure) = err.downcast_ref::<Failure>() else { return Err(err) };
            if failure.already_exists().is_empty() {
                return Err(err);
            }
            eprintln!("==> --adopt: importing the resources that already exist");
            let imported = crate::import::adopt(ctx, &tf)?;
            if imported.is_empty() {
                bail!("{failure}\n--adopt found nothing to import; check the names in the errors above");
            }
            plan_and_apply(&tf, args)
        }
        other => other,
    }
}

fn plan_and_apply(tf: &Terraform, args: &InfraArgs) -> Result<Outcome> {
    let plan_file = PlanFile::create(tf.dir(), "infra")?;
    let mode = if args.refresh_only { PlanMode::RefreshOnly } else { PlanMode::Normal };
    eprintln!("==> terraform plan{}", if args.refresh_only { " -refresh-only" } else { "" });
    let plan = tf.plan(&plan_file, mode)?;
    if plan == Plan::NoChanges {
        eprintln!("No changes: the infrastructure matches the configuration. Nothing to apply.");
        return Ok(Outcome::NoChanges);
    }
    let summary = Summary::of(&tf.show_json(&plan_file)?);
    eprintln!("{summary}");
    confirm(&summary, args.yes)?;
    eprintln!("==> terraform apply (the saved plan)");
    tf.apply(&plan_file)?;
    Ok(Outcome::Applied)
}

/// Counts and the risky changes of a plan, from `terraform show -json`.
#[derive(Debug, Default, PartialEq)]
pub struct Summary {
    pub add: usize,
    pub change: usize,
    pub destroy: usize,
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
                ["create"] => s.add += 1,
                ["update"] => s.change += 1,
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

    fn risky(&self) -> bool {
        !self.replaced.is_empty() || !self.destroyed.is_empty()
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
        for address in &self.destroyed {
            write!(f, "\n  DESTROY  {address}")?;
        }
        for address in &self.replaced {
            write!(f, "\n  REPLACE  {address} (destroyed and created again)")?;
        }
        Ok(())
    }
}

fn confirm(summary: &Summary, yes: bool) -> Result<()> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        bail!("there is no terminal to confirm the apply, so nothing was applied; re-run with --yes to apply without asking");
    }
    let warning = if summary.risky() { " This DESTROYS or REPLACES the resources listed above." } else { "" };
    eprint!("Apply this plan?{warning} Type `yes` to apply [no]: ");
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer).context("could not read the answer")?;
    if answer.trim() != "yes" {
        bail!("apply cancelled; nothing was changed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
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
}
