//! `casey-deploy status`: one screen — the service, its deployments with
//! their counts, the live image (tag, digest, since when), the tasks and
//! their health, and the URL with its probe. A report: it exits 0 whenever
//! it could read the service, whatever state that is in.

use anyhow::{anyhow, Context as _, Result};
use serde_json::{json, Value};

use crate::context::Ctx;
use crate::outputs::Outputs;
use crate::rollout::{self, clock};
use crate::{say, url};

pub fn run(ctx: &Ctx) -> Result<()> {
    let outputs = ctx.outputs()?;
    let ecs = rollout::client(ctx, &outputs);
    let service = rollout::describe(ctx, &ecs, &outputs)?
        .filter(|s| s.status() != Some("INACTIVE"))
        .with_context(|| {
            format!(
                "the ECS service {} does not exist in cluster {}: run `casey-deploy all` (or `image`, which creates it once its image is in ECR)",
                outputs.ecs_service_name, outputs.ecs_cluster_name
            )
        })?;
    let primary = service.deployments().iter().find(|d| d.status() == Some("PRIMARY"));
    let image = match primary.and_then(|d| d.task_definition()) {
        Some(arn) => rollout::image_of(ctx, &ecs, &outputs, arn)?,
        None => None,
    };
    let (tag, digest) = match &image {
        Some(image) => release_of(ctx, &outputs, image)?,
        None => (None, None),
    };
    let tasks = tasks(ctx, &ecs, &outputs)?;
    let (resolved, checks) = match url::resolve(ctx, &outputs, std::time::Duration::ZERO) {
        Ok(resolved) => {
            let checks = url::check_all(ctx, &resolved);
            (Some(resolved), checks)
        }
        Err(err) => {
            say!("url: none yet ({})", first_line(&format!("{err:#}")));
            (None, Vec::new())
        }
    };
    let since = primary.and_then(|d| d.created_at()).map(|t| t.secs());

    say!(
        "service {} (cluster {}): {}, {} running / {} desired, {} pending",
        outputs.ecs_service_name,
        outputs.ecs_cluster_name,
        service.status().unwrap_or("?"),
        service.running_count(),
        service.desired_count(),
        service.pending_count()
    );
    say!(
        "live: {}{}{}",
        image.as_deref().unwrap_or("?"),
        digest.as_deref().map(|d| format!(" ({d})")).unwrap_or_default(),
        since.map(|s| format!(", since {}", clock(s))).unwrap_or_default()
    );
    for d in service.deployments() {
        say!(
            "deployment {} {} {}: {} running / {} desired, {} pending",
            d.id().unwrap_or("?"),
            d.status().unwrap_or("?"),
            d.rollout_state().map_or("?", |s| s.as_str()),
            d.running_count(),
            d.desired_count(),
            d.pending_count()
        );
    }
    for t in &tasks {
        say!("task {} {} health {}", t["task_id"].as_str().unwrap_or("?"), t["status"], t["health"]);
    }
    for c in &checks {
        say!("url {}: GET /health {}; WebSocket upgrade {}", c.url, c.health, c.websocket);
    }
    if let Some(resolved) = &resolved {
        crate::out!("BACKEND_WS_URL={}", resolved.url());
    }

    crate::output::document(&json!({
        "service": outputs.ecs_service_name,
        "cluster": outputs.ecs_cluster_name,
        "status": service.status(),
        "running": service.running_count(),
        "desired": service.desired_count(),
        "pending": service.pending_count(),
        "image": image,
        "image_tag": tag,
        "image_digest": digest,
        "live_since": since.map(|s| aws_sdk_ecs::primitives::DateTime::from_secs(s)
            .fmt(aws_sdk_ecs::primitives::DateTimeFormat::DateTime).unwrap_or_default()),
        "deployments": service.deployments().iter().map(|d| json!({
            "id": d.id(),
            "status": d.status(),
            "rollout_state": d.rollout_state().map(|s| s.as_str()),
            "task_definition": d.task_definition(),
            "running": d.running_count(),
            "desired": d.desired_count(),
            "pending": d.pending_count(),
            "failed_tasks": d.failed_tasks(),
        })).collect::<Vec<_>>(),
        "tasks": tasks,
        "url": resolved.as_ref().map(|r| r.url()),
        "probe": checks.iter().map(url::Check::to_json).collect::<Vec<_>>(),
    }));
    Ok(())
}

/// The tag (when the image names one) and the digest the stack's ECR
/// repository holds it under. The image may name a mirror of the repository
/// (`image --registry`, the sandbox's registry): its tag is looked up in ECR.
fn release_of(ctx: &Ctx, outputs: &Outputs, image: &str) -> Result<(Option<String>, Option<String>)> {
    if let Some((_, digest)) = image.split_once('@') {
        // Deployed by digest: the release record names its tag.
        let tag = match &outputs.release_parameter_name {
            Some(name) => ctx
                .block_on(crate::release::current(&ctx.ssm(&outputs.aws_region), name))?
                .filter(|v| v.record.image == image && !v.record.tag.is_empty())
                .map(|v| v.record.tag),
            None => None,
        };
        return Ok((tag, Some(digest.to_owned())));
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    let tag = last.split_once(':').map_or("latest", |(_, tag)| tag).to_owned();
    let name = outputs.ecr_repository_url.split_once('/').map_or("", |(_, name)| name);
    let digest = ctx.block_on(crate::ecr::digest_of(&ctx.ecr(&outputs.aws_region), name, &tag))?;
    Ok((Some(tag), digest))
}

/// The service's tasks, running and pending: id, status, health, started.
fn tasks(ctx: &Ctx, ecs: &aws_sdk_ecs::Client, outputs: &Outputs) -> Result<Vec<Value>> {
    let cluster = &outputs.ecs_cluster_name;
    let listed = ctx
        .block_on(ecs.list_tasks().cluster(cluster).service_name(&outputs.ecs_service_name).send())
        .map_err(|e| anyhow!("ListTasks of {} failed: {}", outputs.ecs_service_name, crate::aws::error_text(&e)))?;
    if listed.task_arns().is_empty() {
        return Ok(Vec::new());
    }
    let described = ctx
        .block_on(ecs.describe_tasks().cluster(cluster).set_tasks(Some(listed.task_arns().to_vec())).send())
        .map_err(|e| anyhow!("DescribeTasks failed: {}", crate::aws::error_text(&e)))?;
    Ok(described
        .tasks()
        .iter()
        .map(|t| {
            let arn = t.task_arn().unwrap_or_default();
            json!({
                "task_id": arn.rsplit('/').next().unwrap_or(arn),
                "status": t.last_status().unwrap_or("?"),
                "health": t.health_status().map_or("UNKNOWN", |h| h.as_str()),
                "started_at": t.started_at().map(|s| s.secs()),
                "task_definition": t.task_definition_arn(),
            })
        })
        .collect())
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text)
}
