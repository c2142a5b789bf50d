//! casey-deploy: deploys the casey backend to AWS.
//!
//! Layers, each importing only those below it:
//! - Face: `main`, `cli` (clap, turned into each step's plain `Options`),
//!   `all` (composes the steps), `doctor` (lists the modules' own checks).
//! - Steps, one per verb: `infra`, `import`, `image` (+ `publish`, the one
//!   build → push → digest path, and `deploy`, the one record → apply →
//!   follow path of a release), `rollout`, `rollback`, `history`, `url`,
//!   `status`, `logs`, `state` (bootstrap: the state into S3), `destroy`.
//! - Target: `context` (`Ctx`: the project, the checked caller, SDK clients,
//!   and what the target provides — registry, task runner, auto-approve),
//!   `env`, `identity`, `sandbox` (provides the local target; runs no step),
//!   `lock` (the deploy lock around a run that changes the stack).
//! - Ground: `process` (children, signals), `output` (the one output layer),
//!   `redact`, `check` (typed problems), `terraform`, `outputs`, `aws`, `ecr`,
//!   `release` (the release record in SSM), `docker`, `backend` (where
//!   the state lives: terraform/backend.tf).

mod all;
mod aws;
mod backend;
mod check;
mod cli;
mod context;
mod deploy;
mod destroy;
mod docker;
mod doctor;
mod ecr;
mod env;
mod environment;
mod history;
mod identity;
mod image;
mod import;
mod infra;
mod lock;
mod logs;
mod output;
mod outputs;
mod process;
mod publish;
mod redact;
mod release;
mod rollback;
mod rollout;
mod sandbox;
mod state;
mod status;
mod terraform;
mod url;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Verb};
use context::Ctx;

fn main() -> ExitCode {
    output::install_panic_hook();
    let cli = Cli::parse();
    let shape = match cli.command {
        Verb::All(_)
        | Verb::Infra(_)
        | Verb::Import(_)
        | Verb::Image(_)
        | Verb::Rollback(_)
        | Verb::Logs(_)
        | Verb::State { .. }
        | Verb::Destroy(_)
        | Verb::Unlock { .. } => output::Shape::Events,
        _ => output::Shape::Document,
    };
    let mode = output::Mode { quiet: cli.global.quiet, verbose: cli.global.verbose, json: cli.global.json };
    output::init(mode, shape);
    if !matches!(cli.command, Verb::Sandbox { .. } | Verb::Completions { .. } | Verb::Man) {
        output::set_environment(&cli.global.environment);
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            output::failure(&format!("{err:#}"));
            match err.downcast_ref::<process::Interrupted>() {
                Some(i) => ExitCode::from((128 + i.signal) as u8),
                None => ExitCode::FAILURE,
            }
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // Special verbs: nothing to set up, nothing that can fail but writing.
    match &cli.command {
        Verb::Completions { .. } | Verb::Man if cli.global.json => {
            anyhow::bail!("`completions` and `man` print a script or a page, not JSON: run them without --json")
        }
        Verb::Completions { shell } => return cli::completions(*shell),
        Verb::Man => return cli::man_page(),
        _ => {}
    }
    process::install_signal_handler()?;
    // Doctor reports every problem, including those the guard stops at.
    if let Verb::Doctor = &cli.command {
        return doctor::run(&cli.global.target());
    }
    if let Verb::Sandbox { action } = &cli.command {
        let project = context::find_project(cli.global.project_dir.as_deref())?;
        return sandbox::run(&project, action.action(), &cli.global.admin_user);
    }
    let ctx = Ctx::new(&cli.global.target())?;
    // One run at a time changes the stack, for the whole run.
    let changes = match &cli.command {
        Verb::All(_) => Some("all"),
        Verb::Infra(_) => Some("infra"),
        Verb::Import(_) => Some("import"),
        Verb::Image(_) => Some("image"),
        Verb::Rollback(_) => Some("rollback"),
        Verb::State { .. } => Some("state bootstrap"),
        Verb::Destroy(_) => Some("destroy"),
        _ => None,
    };
    let _lock = changes.map(|verb| lock::acquire(&ctx, verb, cli.global.lock_timeout)).transpose()?;
    match &cli.command {
        Verb::Whoami => identity::whoami(&ctx.identity),
        Verb::Doctor | Verb::Sandbox { .. } | Verb::Completions { .. } | Verb::Man => {
            unreachable!("runs before the guard")
        }
        Verb::Infra(args) => infra::command(&ctx, &args.options()),
        Verb::Import(args) => import::run(&ctx, &args.vars()),
        Verb::Image(args) => image::run(&ctx, &args.options()),
        Verb::BackendUrl(args) => url::run(&ctx, &args.options()),
        Verb::Status => status::run(&ctx),
        Verb::History(args) => history::run(&ctx, usize::from(args.limit)),
        Verb::Rollback(args) => rollback::run(&ctx, &args.options()),
        Verb::Logs(args) => logs::run(&ctx, &args.options()),
        Verb::All(args) => all::run(&ctx, args),
        Verb::State { action: cli::StateAction::Bootstrap } => state::bootstrap(&ctx),
        Verb::Unlock { yes } => lock::unlock(&ctx, *yes),
        Verb::Destroy(args) => destroy::run(&ctx, &args.options()),
    }
}
