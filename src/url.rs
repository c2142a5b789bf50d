//! `casey-deploy backend-url`. (Being written.)

use anyhow::Result;

use crate::cli::UrlArgs;
use crate::context::Ctx;

pub fn run(_ctx: &Ctx, _args: &UrlArgs) -> Result<()> {
    anyhow::bail!("`backend-url` is not built yet")
}
