//! `casey-deploy rollback [--to TAG|DIGEST]`: put an earlier release live
//! again. It is deployed like any release (recorded, applied, followed), so
//! `history` lists it and a later `infra` plans no changes. The default is
//! the newest release before the live one that completed; a release whose
//! image ECR no longer holds is refused.

use anyhow::Result;

use crate::context::Ctx;
use crate::{infra, rollout};

#[derive(Debug, Clone)]
pub struct Options {
    pub to: Option<String>,
    pub rollout: rollout::Options,
    pub infra: infra::Options,
}

pub fn run(ctx: &Ctx, args: &Options) -> Result<()> {
    let back = crate::deploy::roll_back(ctx, args.to.as_deref(), &args.infra, &args.rollout, "rollback")?;
    let Some((version, record)) = back else { return Ok(()) };
    crate::output::summary(serde_json::json!({
        "image": record.image, "tag": record.tag, "digest": record.digest, "rolled_back_to": version,
    }));
    Ok(())
}
