//! `casey-deploy all`. (Being written.)

use anyhow::Result;

use crate::cli::AllArgs;
use crate::context::Ctx;

pub fn run(_ctx: &Ctx, _args: &AllArgs) -> Result<()> {
    anyhow::bail!("`all` is not built yet")
}
