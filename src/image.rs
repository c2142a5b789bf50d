//! `casey-deploy image`: publish the backend image (build, push: see
//! `publish.rs`), then roll the ECS service out to it (the seed's steps 2–4).

use anyhow::{bail, Result};

use crate::context::Ctx;
use crate::docker::Image;
use crate::infra;
use crate::outputs::Outputs;
use crate::publish::Pushed;
use crate::rollout;
use crate::say;

/// What `image` is asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    pub publish: crate::publish::Options,
    /// Pin the service to the immutable tag with a Terraform apply.
    pub immutable: bool,
    pub rollout: rollout::Options,
    /// For the applies the deploy may need (`--immutable`, creating the service).
    pub infra: infra::Options,
}

/// `casey-deploy image`: publish (build, push), then roll out.
pub fn run(ctx: &Ctx, args: &Options) -> Result<()> {
    if args.immutable && ctx.push_registry().is_some() {
        bail!("--immutable needs the stack's own ECR repository, and this target pushes to its registry: deploy without --immutable");
    }
    let (image, pushed) = crate::publish::publish(ctx, &args.publish)?;
    deploy(ctx, args, &image)?;
    summarise(&image, &pushed);
    Ok(())
}

/// The `--json` summary of a deploy of `image`.
fn summarise(image: &Image, pushed: &Pushed) {
    crate::output::summary(pushed.to_json(image));
}

/// Roll the service out to the pushed image: a forced new deployment of
/// `latest`, or with `--immutable` a Terraform apply that pins the immutable
/// tag. When the first apply left the service out (no image yet), the apply
/// that creates it, then its first deployment. Returns the stack's outputs,
/// which exist completely from here on.
pub fn deploy(ctx: &Ctx, args: &Options, image: &Image) -> Result<Outputs> {
    let created = !service_exists(ctx)?;
    if !args.immutable && !created {
        let outputs = ctx.outputs()?;
        rollout::force_new_deployment(ctx, &outputs, &args.rollout)?;
        return Ok(outputs);
    }
    let before = if created { None } else { rollout::primary_deployment(ctx, &ctx.outputs()?)? };
    let mut infra_args = args.infra.clone();
    if args.immutable {
        let vars = &mut infra_args.vars.vars;
        vars.retain(|(k, _)| k != "backend_container_image");
        vars.push(("backend_container_image".to_owned(), image.immutable_ref()));
        say!("==> --immutable: applying Terraform with backend_container_image={}", image.immutable_ref());
    } else {
        say!("==> the image is in ECR now: applying Terraform to create the ECS service");
    }
    let outcome = infra::run(ctx, &infra_args)?;
    if let infra::Outcome::WaitingForImage(missing) = outcome {
        bail!(
            "the service still waits for {missing}, but {} was pushed: push to the stack's ECR repository (without --registry), or set backend_container_image to the pushed image",
            image.immutable_ref()
        );
    }
    let outputs = ctx.outputs()?;
    if outcome == infra::Outcome::NoChanges {
        say!("The service already runs {}: nothing to roll out.", image.immutable_ref());
        return Ok(outputs);
    }
    match rollout::primary_deployment(ctx, &outputs)? {
        Some(id) if Some(&id) != before.as_ref() => {
            if args.rollout.no_wait {
                say!("--no-wait: ECS deployment {id} started; not following it");
                return Ok(outputs);
            }
            rollout::follow(ctx, &outputs, &id, &args.rollout)?;
        }
        _ => say!("The apply started no new ECS deployment (the task definition did not change)."),
    }
    Ok(outputs)
}

/// Whether the stack's ECS service exists (is in the Terraform state).
fn service_exists(ctx: &Ctx) -> Result<bool> {
    let tf = ctx.terraform(&crate::terraform::Vars::default());
    Ok(infra::state_resources(&tf)?.iter().any(|r| r == infra::SERVICE))
}
