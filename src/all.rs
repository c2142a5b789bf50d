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
use crate::image;
use crate::infra::{self, Outcome};
use crate::outputs::Repository;
use crate::publish::Source;
use crate::publish::{self, Built, Method};
use crate::url;
use crate::{out, say};

const STEPS: &[&str] = &["docker", "infra", "build", "push", "rollout", "backend-url"];

pub fn run(ctx: &Ctx, args: &AllArgs) -> Result<()> {
    let started = Instant::now();
    let mut summary = Summary::default();
    let result = steps(ctx, args, &mut summary);
    summary.print(started.elapsed(), STEPS);
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
    /// The repository read before the apply, and what was built for it.
    Built {
        built: Box<(Repository, Built)>,
        took: Duration,
    },
    Failed {
        error: anyhow::Error,
        took: Duration,
    },
}

fn steps(ctx: &Ctx, all: &AllArgs, summary: &mut Summary) -> Result<url::Resolved> {
    let args = &all.image_options();
    let infra_args = &args.infra;
    // Cheap checks first: nothing slow starts when docker or the context is wrong.
    let (method, source) = summary.step("docker", || {
        let method = publish::method(ctx)?;
        Ok((method, Source::new(ctx, &args.publish)?))
    })?;
    if let Method::Binary(_) = &method {
        summary.note("docker", "cargo build instead");
    }

    let (infra_result, early) = std::thread::scope(|scope| {
        let early = (!all.sequential).then(|| scope.spawn(|| early_build(ctx, args, &method, &source)));
        let infra_result = summary.step("infra", || infra::run(ctx, infra_args));
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

    let (repo, built) = match early {
        Some(Early::Built { built, .. }) => {
            let (repo, built) = *built;
            let repo = if outcome == Outcome::NoChanges { repo } else { ctx.repository()? };
            let current = publish::image_for(ctx, source, &args.publish, &repo);
            let built = match built {
                Built::Docker(image) if current.immutable_ref() != image.immutable_ref() => {
                    say!("==> the repository changed during the apply: tagging the image for {}", current.repository);
                    crate::docker::retag(&image, &current)?;
                    Built::Docker(current)
                }
                Built::Binary { binary, .. } => Built::Binary { image: current, binary },
                same => same,
            };
            (repo, built)
        }
        Some(Early::Failed { error, .. }) => return Err(error.context("`all` stopped at step `build`")),
        Some(Early::NoStack) | None => {
            let repo = ctx.repository()?;
            let image = publish::image_for(ctx, source, &args.publish, &repo);
            let built = summary.step("build", || publish::build(ctx, &method, image, false))?;
            (repo, built)
        }
    };

    let pushed = summary.step("push", || publish::push(ctx, &built, &repo))?;
    let image = built.image();
    summary.pushed = Some(pushed.to_json(image));
    let outputs = summary.step("rollout", || {
        let record = image::new_release(ctx, &repo, image, &pushed);
        crate::deploy::deploy(ctx, &args.infra, &args.rollout, record)
    })?;
    if matches!(outcome, Outcome::WaitingForImage(_)) {
        summary.note("rollout", "created the service");
    }
    // The rollout waited for running tasks, unless --no-wait.
    let wait = Duration::from_secs(if args.rollout.no_wait { 300 } else { 30 });
    let resolved = summary.step("backend-url", || url::resolve(ctx, &outputs, wait))?;
    url::print_text(&resolved);
    Ok(resolved)
}

/// Runs alongside `infra`: read the outputs and, when the stack exists,
/// build the image (output captured).
fn early_build(ctx: &Ctx, args: &image::Options, method: &Method, source: &Source) -> Early {
    let Ok(repo) = ctx.repository() else { return Early::NoStack };
    let image = publish::image_for(ctx, source.clone(), &args.publish, &repo);
    say!("==> the stack exists: building the image while terraform runs (its output is shown if it fails)");
    let start = Instant::now();
    match publish::build(ctx, method, image, true) {
        Ok(built) => {
            say!("==> the build finished in {:.1}s (in parallel with terraform)", start.elapsed().as_secs_f64());
            Early::Built { built: Box::new((repo, built)), took: start.elapsed() }
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
