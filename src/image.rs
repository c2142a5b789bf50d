//! `casey-deploy image`: build, push, roll out. (Being written.)

use anyhow::Result;

use crate::cli::ImageArgs;
use crate::context::Ctx;

pub fn run(_ctx: &Ctx, _args: &ImageArgs) -> Result<()> {
    anyhow::bail!("`image` is not built yet")
}
