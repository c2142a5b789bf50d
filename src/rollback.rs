//! `casey-deploy rollback [--to TAG|DIGEST]`: put an earlier release live
//! again. It is deployed like any release (recorded, applied, followed), so
//! `history` lists it and a later `infra` plans no changes. The default is
//! the newest release before the live one that completed; a release whose
//! image ECR no longer holds is refused.

use anyhow::{bail, Result};

use crate::context::Ctx;
use crate::history;
use crate::release::Record;
use crate::{infra, rollout, say};

#[derive(Debug, Clone)]
pub struct Options {
    pub to: Option<String>,
    pub rollout: rollout::Options,
    pub infra: infra::Options,
}

pub fn run(ctx: &Ctx, args: &Options) -> Result<()> {
    let Some((version, record)) = back(ctx, args, "rollback")? else { return Ok(()) };
    crate::output::summary(serde_json::json!({
        "image": record.image, "tag": record.tag, "digest": record.digest, "rolled_back_to": version,
    }));
    Ok(())
}

/// Deploy the release `args` names (or the one before the live one) again,
/// recording `reason` (`rollback`, `interrupted`). Returns the version rolled
/// back to and its record; `None` when it is already live.
pub fn back(ctx: &Ctx, args: &Options, reason: &str) -> Result<Option<(i64, Record)>> {
    let history::Releases { repo, entries, live, .. } = history::Releases::load(ctx)?;
    let target = history::target(&entries, args.to.as_deref())?;
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
    crate::image::deploy(ctx, &args.infra, &args.rollout, record.clone())?;
    Ok(Some((target.version, record)))
}
