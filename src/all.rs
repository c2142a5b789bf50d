//! `casey-deploy all`: infra → image (build, push, rollout) → backend-url,
//! stopping at the first failure, then a summary (step, result, duration)
//! and the URL for `NEXT_PUBLIC_WS_URL`.
//!
//! Overlap: when the stack already exists (its outputs can be read), the
//! image is built while terraform inits, plans and applies. That is safe: the
//! build needs nothing from the apply but the repository URL, which is read
//! again after the apply (the image is re-tagged if it changed). The parallel
//! build's output is captured, not interleaved with terraform's, and shown
//! when it fails. `--sequential` turns the overlap off.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use crate::cli::AllArgs;
use crate::context::Ctx;
use crate::image::{self, Image, Source};
use crate::infra::{self, Outcome};
use crate::outputs::Repository;
use crate::sandbox::{self, Sandbox};
use crate::url;
use crate::{out, say};

const STEPS: &[&str] = &["docker", "infra", "build", "push", "rollout", "backend-url"];
/// Under --local the image step picks its own path (Docker or cargo).
const LOCAL_STEPS: &[&str] = &["infra", "image", "backend-url"];

pub fn run(ctx: &Ctx, args: &AllArgs) -> Result<()> {
    let started = Instant::now();
    let mut summary = Summary::default();
    let result = match &ctx.sandbox {
        Some(sandbox) => local_steps(ctx, sandbox, args, &mut summary),
        None => steps(ctx, args, &mut summary),
    };
    summary.print(started.elapsed(), if ctx.sandbox.is_some() { LOCAL_STEPS } else { STEPS });
    let resolved = result?;
    say!("Set this in the frontend's environment and redeploy it:");
    out!("NEXT_PUBLIC_WS_URL={}", resolved.url());
    crate::output::summary(serde_json::json!({
        "url": resolved.url(),
        "release": summary.pushed,
        "steps": summary.rows.iter().map(Row::to_json).collect::<Vec<_>>(),
        "seconds": started.elapsed().as_secs_f64(),
    }));
    Ok(())
}

/// What the parallel build came to.
enum Early {
    /// No stack yet (or its outputs unreadable): build after the apply.
    NoStack,
    /// The repository read before the apply, and the image built for it.
    Built {
        built: Box<(Repository, Image)>,
        took: Duration,
    },
    Failed {
        error: anyhow::Error,
        took: Duration,
    },
}

fn steps(ctx: &Ctx, args: &AllArgs, summary: &mut Summary) -> Result<url::Resolved> {
    // Cheap checks first: nothing slow starts when docker or the context is wrong.
    let source = summary.step("docker", || {
        image::check_docker()?;
        Source::new(&ctx.project, &args.image)
    })?;

    let (infra_result, early) = std::thread::scope(|scope| {
        let early = (!args.sequential).then(|| scope.spawn(|| early_build(ctx, args, &source)));
        let infra_result = summary.step("infra", || infra::run(ctx, &args.infra));
        let early = early.map(|handle| handle.join().unwrap_or(Early::NoStack));
        (infra_result, early)
    });
    match &early {
        Some(Early::Built { took, .. }) => summary.record("build", "ok", *took, "in parallel with infra"),
        Some(Early::Failed { took, .. }) => summary.record("build", "FAILED", *took, "in parallel with infra"),
        _ => {}
    }
    let outcome = infra_result?;
    summary.note("infra", outcome.note());

    let (repo, image) = match early {
        Some(Early::Built { built, .. }) => {
            let (repo, image) = *built;
            let repo = if outcome == Outcome::NoChanges { repo } else { Repository::load(ctx)? };
            let current = Image::from_source(source, &args.image, &repo);
            if current.refs() != image.refs() {
                say!("==> the repository changed during the apply: tagging the image for {}", current.repository);
                image::retag(&image, &current)?;
            }
            (repo, current)
        }
        Some(Early::Failed { error, .. }) => return Err(error.context("`all` stopped at step `build`")),
        Some(Early::NoStack) | None => {
            let repo = Repository::load(ctx)?;
            let current = Image::from_source(source, &args.image, &repo);
            summary.step("build", || image::build(&current, false))?;
            (repo, current)
        }
    };

    let pushed = summary.step("push", || image::push(ctx, &image, &repo))?;
    image::print_pushed(&image, &pushed);
    summary.pushed = Some(pushed.to_json(&image));
    let outputs =
        summary.step("rollout", || image::deploy(ctx, &args.image, &image, &args.infra.tf, args.infra.yes))?;
    if matches!(outcome, Outcome::WaitingForImage(_)) {
        summary.note("rollout", "created the service");
    }
    // The rollout waited for running tasks, unless --no-wait.
    let wait = Duration::from_secs(if args.image.rollout.no_wait { 300 } else { 30 });
    let resolved = summary.step("backend-url", || url::resolve(ctx, &outputs, wait))?;
    url::print_text(&resolved);
    Ok(resolved)
}

/// The sandbox's deploy: the same infra and backend-url, and the image step
/// of `image --local`.
fn local_steps(ctx: &Ctx, sandbox: &Sandbox, args: &AllArgs, summary: &mut Summary) -> Result<url::Resolved> {
    let outcome = summary.step("infra", || infra::run(ctx, &args.infra))?;
    summary.note("infra", outcome.note());
    let (outputs, image, pushed) =
        summary.step("image", || sandbox::deploy_image(ctx, sandbox, &args.image, &args.infra.tf))?;
    summary.pushed = Some(pushed.to_json(&image));
    let resolved = summary.step("backend-url", || url::resolve(ctx, &outputs, Duration::from_secs(30)))?;
    url::print_text(&resolved);
    Ok(resolved)
}

/// Runs alongside `infra`: read the outputs and, when the stack exists,
/// build the image (output captured).
fn early_build(ctx: &Ctx, args: &AllArgs, source: &Source) -> Early {
    let Ok(repo) = Repository::load(ctx) else { return Early::NoStack };
    let image = Image::from_source(source.clone(), &args.image, &repo);
    say!("==> the stack exists: building the image while terraform runs (its output is shown if it fails)");
    let start = Instant::now();
    match image::build(&image, true) {
        Ok(()) => {
            say!("==> docker build finished in {:.1}s (in parallel with terraform)", start.elapsed().as_secs_f64());
            Early::Built { built: Box::new((repo, image)), took: start.elapsed() }
        }
        Err(error) => Early::Failed { error, took: start.elapsed() },
    }
}

/// The summary table.
#[derive(Default)]
struct Summary {
    rows: Vec<Row>,
    /// The image pushed, for `--json`.
    pushed: Option<serde_json::Value>,
}

struct Row {
    step: &'static str,
    result: &'static str,
    took: Duration,
    note: String,
}

impl Row {
    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"step": self.step, "result": self.result, "seconds": self.took.as_secs_f64(), "note": self.note})
    }
}

impl Summary {
    /// Run one step, timing it and recording its result.
    fn step<T>(&mut self, step: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let start = Instant::now();
        let result = f();
        let took = start.elapsed();
        let outcome = result.as_ref().map(drop).map_err(|e| {
            if e.downcast_ref::<crate::process::Interrupted>().is_some() {
                "interrupted"
            } else {
                "FAILED"
            }
        });
        let row = Row { step, result: outcome.err().unwrap_or("ok"), took, note: String::new() };
        crate::output::event("step", row.to_json());
        self.rows.push(row);
        result.with_context(|| format!("`all` stopped at step `{step}`"))
    }

    fn record(&mut self, step: &'static str, result: &'static str, took: Duration, note: &str) {
        self.rows.push(Row { step, result, took, note: note.to_owned() });
    }

    fn note(&mut self, step: &str, note: &str) {
        if let Some(row) = self.rows.iter_mut().find(|r| r.step == step) {
            row.note = note.to_owned();
        }
    }

    fn print(&self, total: Duration, steps: &[&str]) {
        say!("");
        say!("{:<12} {:<11} {:>8}", "step", "result", "time");
        for step in steps {
            match self.rows.iter().find(|r| r.step == *step) {
                Some(row) => {
                    let line =
                        format!("{:<12} {:<11} {:>7.1}s  {}", row.step, row.result, row.took.as_secs_f64(), row.note);
                    say!("{}", line.trim_end());
                }
                None => say!("{:<12} {:<11} {:>8}", step, "skipped", "-"),
            }
        }
        let build = self.rows.iter().find(|r| r.step == "build" && r.note.starts_with("in parallel"));
        let infra = self.rows.iter().find(|r| r.step == "infra");
        let saved = match (build, infra) {
            (Some(b), Some(i)) => format!("  (the parallel build saved ~{:.1}s)", b.took.min(i.took).as_secs_f64()),
            _ => String::new(),
        };
        say!("{:<12} {:<11} {:>7.1}s{saved}", "total", "", total.as_secs_f64());
    }
}
