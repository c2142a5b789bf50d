//! Deploying a release (`image`, `all` and `rollback` share it): recorded
//! by digest where the task definition takes its image from (`release.rs`),
//! applied with Terraform, and followed to its end. A rollout that ECS rolls
//! back is recorded as a rollback and applied, so Terraform, the record and
//! ECS agree; an interrupted one offers to roll back.

use anyhow::{bail, Result};

use crate::context::Ctx;
use crate::history;
use crate::infra;
use crate::outputs::{self, Outputs};
use crate::release::{self, Record};
use crate::rollout;
use crate::{say, warn};

/// Deploy `record`: write it to the release record, apply (the task
/// definition takes its image from there; the first deploy also creates the
/// service), and follow the deployment the apply started. When the
/// deployment fails and ECS rolls the service back, the rollback is recorded
/// and applied too, so that Terraform, the record and ECS agree again.
/// Returns the stack's outputs, which exist completely from here on.
pub fn deploy(ctx: &Ctx, infra_args: &infra::Options, args: &rollout::Options, mut record: Record) -> Result<Outputs> {
    let infra_args = &infra::Options { release: true, ..infra_args.clone() };
    let tf = ctx.terraform(&crate::terraform::Vars::default());
    let map = outputs::load_map(&tf)?;
    let parameter = release::parameter(&map)?;
    let region = map.get("aws_region").and_then(|v| v.as_str()).map_or_else(|| ctx.region(), str::to_owned);
    let created = !service_exists(ctx)?;
    let before = if created { None } else { rollout::live(ctx, &Outputs::from_map(&map)?)? };
    if let Some(live) = &before {
        record.previous_outcome = live.rollout_state.clone();
        record.previous_task_definition = Some(live.task_definition.clone());
        record.previous_image = live.image.clone();
    }
    let ssm = ctx.ssm(&region);
    let previous = ctx.block_on(release::current(&ssm, &parameter))?;
    let version = ctx.block_on(release::put(&ssm, &parameter, &record))?;
    say!("==> recorded release v{version} in {parameter}: {} ({})", record.image, record.tag);
    crate::output::event(
        "release",
        serde_json::json!({"version": version, "image": record.image, "tag": record.tag, "digest": record.digest, "action": record.action}),
    );
    if created {
        say!("==> the image is in ECR now: applying Terraform to create the ECS service");
    } else {
        say!("==> applying Terraform: the task definition takes the release's image");
    }
    let outcome = infra::run(ctx, infra_args)?;
    if let infra::Outcome::WaitingForImage(missing) = outcome {
        bail!(
            "the service still waits for {missing}, but {} was recorded: check that the image is in the stack's ECR repository (`aws ecr describe-images`), then run `casey-deploy infra`",
            record.image
        );
    }
    let outputs = Outputs::from_map(&outputs::load_map(&tf)?)?;
    let changed = before.as_ref().is_none_or(|l| l.image.as_deref() != Some(record.image.as_str()));
    let Some(id) = new_deployment(ctx, &outputs, before.as_ref().map(|l| l.deployment.as_str()), changed)? else {
        say!("The service already runs {}: nothing to roll out.", record.image);
        return Ok(outputs);
    };
    if args.no_wait {
        say!("--no-wait: ECS deployment {id} started; not following it (`casey-deploy status` shows it)");
        return Ok(outputs);
    }
    let followed = crate::process::deferring(|| rollout::follow(ctx, &outputs, &id, args));
    let Err(failure) = followed else { return Ok(outputs) };
    if failure.downcast_ref::<crate::process::Interrupted>().is_some() {
        return Err(interrupted(ctx, infra_args, args, &record, version, &id, failure));
    }
    // ECS's circuit breaker put the previous task definition back: record
    // what runs, and make Terraform's task definition agree with it.
    let now = rollout::live(ctx, &outputs).unwrap_or(None).filter(|l| l.image.as_ref() != Some(&record.image));
    let (Some(now), Some(previous)) = (now, previous.filter(|p| p.record.is_release())) else {
        return Err(failure.context(format!(
            "release v{version} ({}) did not roll out: `casey-deploy rollback` puts the previous release back",
            record.tag
        )));
    };
    let image = now.image.clone().unwrap_or_default();
    let mut back = if image == previous.record.image {
        previous.record.again(&ctx.identity.arn)
    } else {
        let digest = image.split_once('@').map(|(_, d)| d.to_owned()).unwrap_or_default();
        Record::new(image, String::new(), digest, "rollback", &ctx.identity.arn)
    };
    back.from = Some(version);
    back.reason = Some("failed".into());
    back.previous_outcome = Some("failed".into());
    back.previous_task_definition = None;
    back.previous_image = Some(record.image.clone());
    let back_version = ctx.block_on(release::put(&ssm, &parameter, &back))?;
    say!(
        "==> ECS rolled the service back to {}: recorded as release v{back_version}; applying so Terraform's task definition agrees",
        back.image
    );
    match infra::run(ctx, infra_args) {
        Ok(_) => {
            if let Some(id) = new_deployment(ctx, &outputs, Some(&now.deployment), true)? {
                if let Err(e) = rollout::follow(ctx, &outputs, &id, args) {
                    warn!("the deployment of the recorded rollback did not complete: {e:#}");
                }
            }
        }
        Err(e) => warn!("the apply after the rollback failed ({e:#}); `casey-deploy infra` applies it"),
    }
    Err(failure.context(format!(
        "release v{version} ({}) failed and ECS rolled back to the release before it: `casey-deploy history` shows both, `casey-deploy logs --since 15m` the failed tasks' output",
        record.tag
    )))
}

/// The user interrupted the rollout of release `version` (deployment `id`).
/// On a terminal they choose: roll back now, or leave it running; without
/// one (or when the release is itself a rollback) it is left running. ECS
/// goes on either way, so the command that rolls back is always named.
fn interrupted(
    ctx: &Ctx,
    infra_args: &infra::Options,
    args: &rollout::Options,
    record: &Record,
    version: i64,
    id: &str,
    failure: anyhow::Error,
) -> anyhow::Error {
    use std::io::{BufRead, IsTerminal, Write};
    let left = format!(
        "the ECS deployment {id} of release v{version} keeps running without being followed: `casey-deploy status` shows it, `casey-deploy rollback` puts the release before it back"
    );
    if record.action == "rollback" || !std::io::stdin().is_terminal() {
        warn!("{left}");
        return failure;
    }
    crate::prompt!(
        "Release v{version} ({}) is still rolling out. Roll back to the release before it now, or leave it running? Type `rollback` to roll back [leave it]: ",
        record.tag
    );
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    if std::io::stdin().lock().read_line(&mut answer).is_err() || answer.trim() != "rollback" {
        warn!("{left}");
        return failure;
    }
    crate::process::clear_interrupt();
    match roll_back(ctx, None, infra_args, args, "interrupted") {
        Ok(Some((to, back))) => anyhow::anyhow!(
            "release v{version} ({}) was not deployed: its rollout was interrupted and release v{to} ({}) was put back; `casey-deploy history` shows both",
            record.tag,
            back.tag
        ),
        Ok(None) => anyhow::anyhow!("release v{version} ({}) was not deployed: its rollout was interrupted", record.tag),
        Err(e) => e.context(format!(
            "the rollout of release v{version} was interrupted, and the rollback failed; `casey-deploy status` shows what runs, `casey-deploy rollback` tries again"
        )),
    }
}

/// The deployment the apply started: a PRIMARY other than `before`. When the
/// image `changed` one must appear, and ECS's eventually consistent reads may
/// lag the UpdateService, so it is waited for (60 s, as the follower waits).
fn new_deployment(ctx: &Ctx, outputs: &Outputs, before: Option<&str>, changed: bool) -> Result<Option<String>> {
    let start = std::time::Instant::now();
    loop {
        match rollout::primary_deployment(ctx, outputs)? {
            Some(id) if Some(id.as_str()) != before => return Ok(Some(id)),
            _ if !changed => return Ok(None),
            _ if start.elapsed() >= std::time::Duration::from_secs(60) => bail!(
                "the apply changed the service's image, but after 60 s ECS lists no new deployment of {}: `casey-deploy status` shows what it runs",
                outputs.ecs_service_name
            ),
            _ => {
                crate::process::check_interrupted()?;
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        }
    }
}

/// Whether the stack's ECS service exists (is in the Terraform state).
fn service_exists(ctx: &Ctx) -> Result<bool> {
    let tf = ctx.terraform(&crate::terraform::Vars::default());
    Ok(infra::state_resources(&tf)?.iter().any(|r| r == infra::SERVICE))
}

/// Deploy the release `to` names (a tag or digest; by default the newest
/// good one before the live one) again, recording `reason` (`rollback`,
/// `interrupted`). Returns the version rolled back to and its record;
/// `None` when it is already live.
pub fn roll_back(
    ctx: &Ctx,
    to: Option<&str>,
    infra_args: &infra::Options,
    args: &rollout::Options,
    reason: &str,
) -> Result<Option<(i64, Record)>> {
    let history::Releases { repo, entries, live, .. } = history::Releases::load(ctx)?;
    let target = history::target(&entries, to)?;
    let current = entries.iter().find(|e| e.live);
    if let Some(current) = current.filter(|c| c.record.image == target.record.image) {
        if live.as_ref().and_then(|l| l.rollout_state.as_deref()) == Some("completed") {
            say!("release v{} ({}) is already live: nothing to roll back", current.version, current.record.tag);
            return Ok(None);
        }
    }
    let digest = &target.record.digest;
    if !ctx.block_on(crate::ecr::has_image(&ctx.ecr(&repo.region), repo.name(), digest))? {
        bail!(
            "release v{} ({} {digest}) can no longer be deployed: ECR repository {} does not hold that image any more (the lifecycle policy expired it, or it was deleted); choose another from `casey-deploy history`",
            target.version,
            target.record.tag,
            repo.name()
        );
    }
    let mut record = target.record.again(&ctx.identity.arn);
    record.from = current.map(|c| c.version);
    record.reason = Some(reason.to_owned());
    say!(
        "==> rolling back{} to release v{} ({} {digest})",
        current.map(|c| format!(" from v{} ({})", c.version, c.record.tag)).unwrap_or_default(),
        target.version,
        target.record.tag
    );
    deploy(ctx, infra_args, args, record.clone())?;
    Ok(Some((target.version, record)))
}
