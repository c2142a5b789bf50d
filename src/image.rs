//! `casey-deploy image`: publish the backend image (build, push: see
//! `publish.rs`), then deploy it as a release (`deploy.rs`: recorded,
//! applied, followed), as `rollback` deploys an earlier one.

use anyhow::Result;

use crate::context::Ctx;
use crate::docker::Image;
use crate::infra;
use crate::outputs::Repository;
use crate::publish::Pushed;
use crate::release::Record;
use crate::rollout;

/// What `image` is asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    pub publish: crate::publish::Options,
    pub rollout: rollout::Options,
    /// For the apply that deploys the release (and creates the service).
    pub infra: infra::Options,
}

/// `casey-deploy image`: publish (build, push), then deploy the release.
pub fn run(ctx: &Ctx, args: &Options) -> Result<()> {
    let (image, pushed, repo) = crate::publish::publish(ctx, &args.publish)?;
    let record = new_release(ctx, &repo, &image, &pushed);
    crate::deploy::deploy(ctx, &args.infra, &args.rollout, record)?;
    crate::output::summary(pushed.to_json(&image));
    Ok(())
}

/// The release of a pushed image: by digest, in the stack's ECR repository
/// (a digest names the same image in every registry; a push to `--registry`
/// or the sandbox's registry lands behind ECR).
pub fn new_release(ctx: &Ctx, repo: &Repository, image: &Image, pushed: &Pushed) -> Record {
    Record::new(
        format!("{}@{}", repo.url, pushed.digest),
        image.tag.clone(),
        pushed.digest.clone(),
        "deploy",
        &ctx.identity.arn,
    )
}
