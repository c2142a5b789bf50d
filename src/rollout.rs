//! Rolling the ECS service out, and following ONE deployment to its end.
//!
//! ECS's `services-stable` waiter only checks that the service settled, so it
//! calls a circuit-breaker rollback a success. Here the deployment the
//! rollout created is followed by id: it must reach COMPLETED with
//! runningCount = desiredCount. It fails when that deployment is FAILED, or
//! when it disappears or stops being PRIMARY (rolled back, or replaced by
//! another deployment); the service's recent events and the stoppedReason of
//! the deployment's stopped tasks are then printed.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use aws_sdk_ecs::types::{DeploymentRolloutState, DesiredStatus, Service};

use crate::context::Ctx;
use crate::outputs::Outputs;
use crate::redact::redact;
use crate::say;

/// How to follow a deployment.
#[derive(Debug, Clone)]
pub struct Options {
    /// Seconds to wait for the deployment to complete.
    pub timeout: u64,
    /// Start it and return.
    pub no_wait: bool,
}

pub fn client(ctx: &Ctx, outputs: &Outputs) -> aws_sdk_ecs::Client {
    let config = aws_sdk_ecs::config::Builder::from(&ctx.sdk)
        .region(aws_sdk_ecs::config::Region::new(outputs.aws_region.clone()))
        .build();
    aws_sdk_ecs::Client::from_conf(config)
}

/// What the service runs: its PRIMARY deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Live {
    pub deployment: String,
    pub task_definition: String,
    /// The service container's image in that task definition.
    pub image: Option<String>,
    /// `completed`, `in_progress`, `failed` (ECS's rollout state, lowercase).
    pub rollout_state: Option<String>,
}

/// The service's PRIMARY deployment and its image; None without a service.
pub fn live(ctx: &Ctx, outputs: &Outputs) -> Result<Option<Live>> {
    let ecs = client(ctx, outputs);
    let Some(service) = describe(ctx, &ecs, outputs)? else { return Ok(None) };
    let Some(d) = service.deployments().iter().find(|d| d.status() == Some("PRIMARY")) else { return Ok(None) };
    let task_definition = d.task_definition().unwrap_or_default().to_owned();
    let image = if task_definition.is_empty() { None } else { image_of(ctx, &ecs, outputs, &task_definition)? };
    Ok(Some(Live {
        deployment: d.id().unwrap_or_default().to_owned(),
        task_definition,
        image,
        rollout_state: d.rollout_state().map(|s| s.as_str().to_lowercase()),
    }))
}

/// The container image of the service's container in task definition `arn`.
pub fn image_of(ctx: &Ctx, ecs: &aws_sdk_ecs::Client, outputs: &Outputs, arn: &str) -> Result<Option<String>> {
    let out = ctx
        .block_on(ecs.describe_task_definition().task_definition(arn).send())
        .map_err(|e| anyhow!("DescribeTaskDefinition of {arn} failed: {}", crate::aws::error_text(&e)))?;
    let image = out.task_definition().and_then(|td| {
        td.container_definitions()
            .iter()
            .find(|c| c.name() == Some(outputs.container_name.as_str()))
            .and_then(|c| c.image())
            .map(str::to_owned)
    });
    Ok(image)
}

/// The id of the service's PRIMARY deployment (None when it has none).
pub fn primary_deployment(ctx: &Ctx, outputs: &Outputs) -> Result<Option<String>> {
    let ecs = client(ctx, outputs);
    Ok(describe(ctx, &ecs, outputs)?.as_ref().and_then(primary))
}

fn primary(service: &Service) -> Option<String> {
    service.deployments().iter().find(|d| d.status() == Some("PRIMARY")).and_then(|d| d.id()).map(str::to_owned)
}

/// DescribeServices, retrying throttling, 5xx and timeouts for up to
/// [`TRANSIENT_BUDGET`] past the SDK's own retries, as the follower does.
pub fn describe(ctx: &Ctx, ecs: &aws_sdk_ecs::Client, outputs: &Outputs) -> Result<Option<Service>> {
    let start = Instant::now();
    loop {
        match describe_raw(ctx, ecs, outputs) {
            Err(err) if transient(&err) && start.elapsed() < TRANSIENT_BUDGET => {
                say!("DescribeServices: {} (retrying)", crate::aws::error_text(&err));
                crate::process::check_interrupted()?;
                std::thread::sleep(Duration::from_secs(2));
            }
            other => return other.map_err(|e| describe_error(outputs, &e)),
        }
    }
}

/// Where a deployment stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    InProgress,
    Completed,
    Failed(String),
    /// No longer PRIMARY or gone; the reason says which deployment took over.
    Superseded(String),
}

/// Judge deployment `id` from a DescribeServices answer.
pub fn judge(service: &Service, id: &str) -> State {
    let deployments = service.deployments();
    let ours = deployments.iter().find(|d| d.id() == Some(id));
    let newer = deployments.iter().find(|d| d.status() == Some("PRIMARY") && d.id() != Some(id));
    let takeover = || match newer {
        Some(d) => {
            let reason = d.rollout_state_reason().unwrap_or_default();
            if reason.contains("rolling back") || reason.contains("circuit breaker") {
                format!("ECS rolled the service back (deployment {}): {reason}", d.id().unwrap_or("?"))
            } else {
                format!(
                    "another deployment ({}) replaced it, e.g. a second deploy or a Terraform apply",
                    d.id().unwrap_or("?")
                )
            }
        }
        None => "it no longer exists in the service".to_owned(),
    };
    let Some(ours) = ours else { return State::Superseded(takeover()) };
    if ours.rollout_state() == Some(&DeploymentRolloutState::Failed) {
        let reason = ours.rollout_state_reason().unwrap_or("rollout state FAILED").trim_end_matches('.').to_owned();
        return State::Failed(match newer {
            Some(_) => format!("{reason}; {}", takeover()),
            None => reason,
        });
    }
    if ours.status() != Some("PRIMARY") {
        return State::Superseded(takeover());
    }
    let settled = ours.running_count() == ours.desired_count() && ours.pending_count() == 0;
    match ours.rollout_state() {
        Some(DeploymentRolloutState::Completed) if settled => State::Completed,
        // Without a rollout state (older services): settled and alone.
        None if settled && deployments.len() == 1 => State::Completed,
        _ => State::InProgress,
    }
}

/// How long a new deployment may stay invisible: ECS's API is eventually
/// consistent, so DescribeServices right after UpdateService may still show
/// the service as it was (https://docs.aws.amazon.com/AmazonECS/latest/APIReference/ecs-api-eventual-consistency.html ).
const VISIBILITY_GRACE: Duration = Duration::from_secs(60);
/// A "gone or replaced" verdict must hold for this many reads in a row: a
/// lagging read can hide a deployment that is there.
const CONFIRMATIONS: u32 = 3;
/// How long the poll loop retries transient errors (throttling, 5xx,
/// timeouts) after the SDK's own retries gave up.
const TRANSIENT_BUDGET: Duration = Duration::from_secs(120);

/// Poll until deployment `id` completes, fails, is superseded, or the
/// timeout passes.
pub fn follow(ctx: &Ctx, outputs: &Outputs, id: &str, args: &Options) -> Result<()> {
    let ecs = client(ctx, outputs);
    let start = Instant::now();
    let timeout = Duration::from_secs(args.timeout);
    let mut progress = Progress::new(start);
    let mut seen = false;
    let mut superseded_reads = 0;
    let mut failing_since: Option<Instant> = None;
    loop {
        crate::process::check_interrupted().inspect_err(|_| progress.finish())?;
        let service = match describe_raw(ctx, &ecs, outputs) {
            Ok(service) => {
                failing_since = None;
                service
            }
            Err(err) if transient(&err) => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= TRANSIENT_BUDGET {
                    progress.finish();
                    return Err(describe_error(outputs, &err).context(format!(
                        "ECS kept failing for {}s while following deployment {id}; it may still be rolling out: `casey-deploy backend-url --wait 300` or `aws ecs describe-services`",
                        TRANSIENT_BUDGET.as_secs()
                    )));
                }
                progress.note(&format!("DescribeServices: {} (retrying)", crate::aws::error_text(&err)));
                std::thread::sleep(Duration::from_secs(2));
                continue;
            }
            Err(err) => {
                progress.finish();
                return Err(describe_error(outputs, &err));
            }
        };
        let Some(service) = service else {
            if !seen && start.elapsed() < VISIBILITY_GRACE {
                // A service created moments ago may not be listed yet.
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
            progress.finish();
            return Err(anyhow!(
                "step `rollout`: the service {} no longer exists in cluster {}",
                outputs.ecs_service_name,
                outputs.ecs_cluster_name
            ));
        };
        seen |= service.deployments().iter().any(|d| d.id() == Some(id));
        let state = match judge(&service, id) {
            // Not listed yet: a read that lags the UpdateService.
            State::Superseded(_) if !seen && start.elapsed() < VISIBILITY_GRACE => State::InProgress,
            State::Superseded(reason) if !seen => {
                State::Superseded(format!("ECS never listed it in {}s ({reason})", VISIBILITY_GRACE.as_secs()))
            }
            State::Superseded(reason) => {
                superseded_reads += 1;
                if superseded_reads < CONFIRMATIONS {
                    State::InProgress
                } else {
                    State::Superseded(reason)
                }
            }
            other => {
                superseded_reads = 0;
                other
            }
        };
        progress.show(&service, id);
        match state {
            State::Completed => {
                progress.finish();
                let ours = service.deployments().iter().find(|d| d.id() == Some(id));
                let (running, desired) = ours.map_or((0, 0), |d| (d.running_count(), d.desired_count()));
                say!(
                    "ECS deployment {id} COMPLETED: {running}/{desired} task(s) running ({}s)",
                    start.elapsed().as_secs()
                );
                crate::output::event(
                    "completed",
                    serde_json::json!({"deployment": id, "running": running, "desired": desired}),
                );
                return Ok(());
            }
            State::Failed(reason) => {
                progress.finish();
                return Err(diagnose(ctx, &ecs, outputs, &service, id, &format!("failed: {reason}")));
            }
            State::Superseded(reason) => {
                progress.finish();
                return Err(diagnose(ctx, &ecs, outputs, &service, id, &format!("did not complete: {reason}")));
            }
            State::InProgress if start.elapsed() >= timeout => {
                progress.finish();
                let what = format!(
                    "did not complete within {}s (ECS keeps trying; raise --timeout, or watch it with `aws ecs describe-services`)",
                    args.timeout
                );
                return Err(diagnose(ctx, &ecs, outputs, &service, id, &what));
            }
            State::InProgress => {}
        }
        // Fast at first (the emulator and small services settle in seconds),
        // gentler on the API during long rollouts.
        let pause = if start.elapsed() < Duration::from_secs(30) { 1 } else { 3 };
        crate::process::pause(
            Duration::from_secs(pause).min(timeout.saturating_sub(start.elapsed())).max(Duration::from_millis(200)),
        )
        .inspect_err(|_| progress.finish())?;
    }
}

type DescribeError = aws_sdk_ecs::error::SdkError<
    aws_sdk_ecs::operation::describe_services::DescribeServicesError,
    aws_sdk_ecs::config::http::HttpResponse,
>;

fn describe_raw(
    ctx: &Ctx,
    ecs: &aws_sdk_ecs::Client,
    outputs: &Outputs,
) -> std::result::Result<Option<Service>, Box<DescribeError>> {
    let out = ctx.block_on(
        ecs.describe_services().cluster(&outputs.ecs_cluster_name).services(&outputs.ecs_service_name).send(),
    )?;
    Ok(out.services().first().cloned())
}

fn describe_error(outputs: &Outputs, err: &DescribeError) -> anyhow::Error {
    anyhow!("step `rollout`: DescribeServices of {} failed: {}", outputs.ecs_service_name, crate::aws::error_text(err))
}

/// Errors worth another try: throttling, server errors, timeouts and
/// connections that failed, as the SDK's retry classifier sees them.
fn transient(err: &DescribeError) -> bool {
    use aws_sdk_ecs::error::{ProvideErrorMetadata, SdkError};
    match err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => true,
        SdkError::ServiceError(e) => {
            e.raw().status().is_server_error()
                || matches!(
                    e.err().code(),
                    Some(
                        "ThrottlingException"
                            | "Throttling"
                            | "ServerException"
                            | "ServiceUnavailable"
                            | "RequestLimitExceeded"
                    )
                )
        }
        _ => false,
    }
}

/// Print the service's recent events and the deployment's stopped tasks;
/// the error names the first stop reason.
fn diagnose(
    ctx: &Ctx,
    ecs: &aws_sdk_ecs::Client,
    outputs: &Outputs,
    service: &Service,
    id: &str,
    what: &str,
) -> anyhow::Error {
    let since = service
        .deployments()
        .iter()
        .find(|d| d.id() == Some(id))
        .and_then(|d| d.created_at())
        .map_or(0, |t| t.secs() - 5);
    let mut events: Vec<_> =
        service.events().iter().filter(|e| e.created_at().is_none_or(|t| t.secs() >= since)).take(12).collect();
    events.reverse();
    if !events.is_empty() {
        say!("Recent service events:");
        for event in events {
            let at = event.created_at().map_or_else(String::new, |t| clock(t.secs()));
            say!("  {at} {}", redact(event.message().unwrap_or_default()));
        }
    }
    let reasons = match stopped_tasks(ctx, ecs, outputs, id) {
        Ok(reasons) => reasons,
        Err(err) => {
            say!("(could not list the stopped tasks: {err:#})");
            Vec::new()
        }
    };
    if reasons.is_empty() {
        say!("No task of deployment {id} has stopped.");
    } else {
        say!("Stopped tasks of deployment {id}, each with its last {TAIL_LINES} log lines:");
        for (task_id, reason) in &reasons {
            say!("  {}", redact(reason));
            match crate::logs::tail(ctx, outputs, task_id, TAIL_LINES) {
                Ok(lines) => lines.iter().for_each(|line| say!("    | {}", redact(line))),
                Err(err) => say!("    (no log lines: {})", err.to_string().lines().next().unwrap_or_default()),
            }
        }
        say!("All of them: `casey-deploy logs --since 1h --task TASK_ID`");
    }
    let stopped = reasons.first().map(|(_, r)| format!("\nFirst stopped task: {r}")).unwrap_or_default();
    anyhow!("step `rollout`: ECS deployment {id} of service {} {what}{stopped}", outputs.ecs_service_name)
}

/// How many of a stopped task's last log lines a failed rollout shows.
const TAIL_LINES: i32 = 20;

/// Each stopped task of deployment `id` (newest first, at most 5): its id,
/// and one line with why it stopped.
fn stopped_tasks(ctx: &Ctx, ecs: &aws_sdk_ecs::Client, outputs: &Outputs, id: &str) -> Result<Vec<(String, String)>> {
    let listed = ctx.block_on(
        ecs.list_tasks()
            .cluster(&outputs.ecs_cluster_name)
            .service_name(&outputs.ecs_service_name)
            .desired_status(DesiredStatus::Stopped)
            .send(),
    )?;
    let arns: Vec<String> = listed.task_arns().iter().take(100).cloned().collect();
    if arns.is_empty() {
        return Ok(Vec::new());
    }
    let described =
        ctx.block_on(ecs.describe_tasks().cluster(&outputs.ecs_cluster_name).set_tasks(Some(arns)).send())?;
    let mut tasks: Vec<_> = described.tasks().iter().filter(|t| t.started_by() == Some(id)).collect();
    tasks.sort_by_key(|t| std::cmp::Reverse(t.stopped_at().map_or(0, |s| s.secs())));
    Ok(tasks
        .iter()
        .take(5)
        .map(|t| {
            let task_id = t.task_arn().and_then(|a| a.rsplit('/').next()).unwrap_or("?");
            let mut line = format!("task {task_id}: {}", t.stopped_reason().unwrap_or("(no stoppedReason)"));
            if let Some(code) = t.stop_code() {
                line.push_str(&format!(" [{}]", code.as_str()));
            }
            for c in t.containers() {
                if let Some(reason) = c.reason().filter(|r| Some(*r) != t.stopped_reason()) {
                    line.push_str(&format!("; container {}: {reason}", c.name().unwrap_or("?")));
                }
                if let Some(code) = c.exit_code().filter(|c| *c != 0) {
                    line.push_str(&format!("; container {} exited {code}", c.name().unwrap_or("?")));
                }
            }
            (task_id.to_owned(), line)
        })
        .collect())
}

/// Progress while waiting, through the output layer: a live line on a
/// terminal; off one, a line per change (and one a minute).
struct Progress {
    start: Instant,
    last: String,
    last_at: Instant,
}

impl Progress {
    fn new(start: Instant) -> Progress {
        Progress { start, last: String::new(), last_at: start }
    }

    fn show(&mut self, service: &Service, id: &str) {
        let ours = service.deployments().iter().find(|d| d.id() == Some(id));
        let state = match ours {
            Some(d) => format!(
                "rollout {}: running {}/{} desired, pending {}{}",
                d.rollout_state().map_or("?", |s| s.as_str()),
                d.running_count(),
                d.desired_count(),
                d.pending_count(),
                match service.deployments().len() {
                    1 => String::new(),
                    n => format!(", {} older deployment(s) draining", n - 1),
                }
            ),
            None => "deployment gone".to_owned(),
        };
        let elapsed = self.start.elapsed().as_secs();
        if state != self.last || self.last_at.elapsed() >= Duration::from_secs(60) {
            crate::output::event("rollout", serde_json::json!({"deployment": id, "state": state, "seconds": elapsed}));
            self.last_at = Instant::now();
        }
        crate::output::progress_live(&format!("{state} ({elapsed}s)"), state != self.last);
        self.last = state;
    }

    /// A one-off remark (a retried error) on its own line.
    fn note(&mut self, text: &str) {
        say!("{text}");
    }

    fn finish(&mut self) {}
}

/// `HH:MM:SSZ` (UTC) of a Unix time.
pub fn clock(secs: i64) -> String {
    let day = secs.rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}Z", day / 3600, day % 3600 / 60, day % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ecs::types::Deployment;

    fn deployment(id: &str, status: &str, state: Option<DeploymentRolloutState>, running: i32) -> Deployment {
        Deployment::builder()
            .id(id)
            .status(status)
            .set_rollout_state(state)
            .rollout_state_reason(if id == "rb" {
                "ECS deployment circuit breaker: rolling back to deploymentId a."
            } else {
                ""
            })
            .desired_count(1)
            .running_count(running)
            .pending_count(1 - running)
            .build()
    }

    fn service(deployments: Vec<Deployment>) -> Service {
        Service::builder().set_deployments(Some(deployments)).build()
    }

    #[test]
    fn completed_only_when_our_deployment_is_done() {
        use DeploymentRolloutState::*;
        let s = service(vec![
            deployment("new", "PRIMARY", Some(InProgress), 0),
            deployment("old", "ACTIVE", Some(Completed), 1),
        ]);
        assert_eq!(judge(&s, "new"), State::InProgress);
        let s = service(vec![deployment("new", "PRIMARY", Some(Completed), 1)]);
        assert_eq!(judge(&s, "new"), State::Completed);
        let s = service(vec![deployment("new", "PRIMARY", None, 1)]);
        assert_eq!(judge(&s, "new"), State::Completed);
    }

    #[test]
    fn a_rollback_is_a_failure() {
        use DeploymentRolloutState::*;
        // What services-stable would accept: the service is steady again, on the old task definition.
        let s = service(vec![deployment("rb", "PRIMARY", Some(Completed), 1)]);
        assert!(matches!(judge(&s, "new"), State::Superseded(r) if r.contains("rolled the service back")));
        let s = service(vec![
            deployment("rb", "PRIMARY", Some(InProgress), 0),
            deployment("new", "ACTIVE", Some(Failed), 0),
        ]);
        assert!(matches!(judge(&s, "new"), State::Failed(r) if r.contains("rolled the service back")));
        let s = service(vec![
            deployment("other", "PRIMARY", Some(InProgress), 0),
            deployment("new", "ACTIVE", Some(InProgress), 1),
        ]);
        assert!(matches!(judge(&s, "new"), State::Superseded(r) if r.contains("replaced it")));
    }

    #[test]
    fn clock_is_utc_time_of_day() {
        assert_eq!(clock(0), "00:00:00Z");
        assert_eq!(clock(86_400 + 3_723), "01:02:03Z");
    }
}
