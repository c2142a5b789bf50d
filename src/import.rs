//! `casey-deploy import`: adopt resources that exist in AWS but not in the
//! Terraform state (replaces the seed's terraform-import-existing.sh).
//!
//! The candidates and their names come from a plan (so variables such as the
//! log group name are honoured); each one not in the state is imported. An
//! import of something that does not exist is simply "not there".

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::context::Ctx;
use crate::terraform::{PlanFile, PlanMode, Terraform};

/// Resource types that can exist before the stack (created by hand or by a
/// partial apply) and whose import id follows from the planned values.
/// The release record is among them: importing it keeps its value (the
/// live release), which Terraform never overwrites.
const ADOPTABLE: &[&str] = &[
    "aws_cloudwatch_log_group",
    "aws_iam_policy",
    "aws_iam_role",
    "aws_ecr_repository",
    "aws_ecs_cluster",
    "aws_ssm_parameter",
];

pub fn run(ctx: &Ctx, args: &crate::terraform::Vars) -> Result<()> {
    let tf = ctx.terraform(args);
    crate::say!("==> terraform init ({})", tf.dir().display());
    tf.init()?;
    let imported = adopt(ctx, &tf)?;
    if imported.is_empty() {
        crate::say!("Nothing to import: every adoptable resource is already in the state or does not exist in AWS.");
    } else {
        crate::say!("Imported {} resource(s). Next: `casey-deploy infra`", imported.len());
    }
    crate::output::summary(serde_json::json!({ "imported": imported }));
    Ok(())
}

/// Import every adoptable resource that exists in AWS but not in the state.
/// Returns the addresses imported.
pub fn adopt(ctx: &Ctx, tf: &Terraform) -> Result<Vec<String>> {
    let in_state = tf.state_list()?;
    let plan_file = PlanFile::create(tf.dir(), "import")?;
    tf.plan(&plan_file, PlanMode::NamesOnly).context("looking for resources to import")?;
    let planned = tf.show_json(&plan_file)?;

    let partition = ctx.identity.arn.split(':').nth(1).unwrap_or("aws").to_owned();
    let mut imported = Vec::new();
    for rc in planned["resource_changes"].as_array().into_iter().flatten() {
        let (Some(address), Some(kind)) = (rc["address"].as_str(), rc["type"].as_str()) else { continue };
        let creates = rc["change"]["actions"].as_array().is_some_and(|a| a.len() == 1 && a[0] == "create");
        if !creates || !ADOPTABLE.contains(&kind) || in_state.iter().any(|a| a == address) {
            continue;
        }
        let Some(id) = import_id(kind, &rc["change"]["after"], &partition, &ctx.identity.account) else { continue };
        let out = tf.import(address, &id)?;
        if out.success() {
            crate::say!("imported {address} ({id})");
            crate::output::event("imported", serde_json::json!({"address": address, "id": id}));
            imported.push(address.to_owned());
        } else if out.stderr.contains("non-existent remote object") || out.stdout.contains("non-existent remote object")
        {
            crate::say!("not in AWS: {address} ({id})");
        } else {
            bail!("`terraform import {address} {id}` failed:\n{}", out.tail(15));
        }
    }
    Ok(imported)
}

/// The import id Terraform expects for a planned resource.
fn import_id(kind: &str, after: &Value, partition: &str, account: &str) -> Option<String> {
    let name = after["name"].as_str()?;
    match kind {
        "aws_iam_policy" => {
            let path = after["path"].as_str().unwrap_or("/");
            Some(format!("arn:{partition}:iam::{account}:policy{path}{name}"))
        }
        _ => Some(name.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_ids_are_arns_in_the_callers_account() {
        let after = serde_json::json!({"name": "casey-backend-ai", "path": "/"});
        assert_eq!(
            import_id("aws_iam_policy", &after, "aws", "640641419062").unwrap(),
            "arn:aws:iam::640641419062:policy/casey-backend-ai"
        );
        let after = serde_json::json!({"name": "/ecs/casey-backend"});
        assert_eq!(import_id("aws_cloudwatch_log_group", &after, "aws", "1").unwrap(), "/ecs/casey-backend");
    }
}
