//! `casey-deploy logs`: the backend's CloudWatch logs (the awslogs driver's
//! streams `backend/<container>/<task id>` in the stack's log group), as
//! plain lines with time and task; `--since`, `--follow`, `--task`. And the
//! last lines of a stopped task, for a failed rollout's report.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::json;

use crate::context::Ctx;
use crate::outputs::Outputs;

/// The stream prefix the task definition gives the awslogs driver (ecs.tf).
const STREAM_PREFIX: &str = "backend";
/// How often `--follow` asks for new lines.
const FOLLOW_EVERY: Duration = Duration::from_secs(2);

/// What `logs` is asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// How far back to start.
    pub since: Duration,
    /// Keep printing new lines until interrupted.
    pub follow: bool,
    /// Only this task (its id, or its ARN).
    pub task: Option<String>,
}

/// `5m`, `90s`, `2h`, `1d` (or plain seconds).
pub fn parse_since(text: &str) -> std::result::Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = number.parse().map_err(|_| format!("`{text}` is not a duration such as 30s, 5m, 2h or 1d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("`{text}` is not a duration such as 30s, 5m, 2h or 1d")),
    };
    Ok(Duration::from_secs(secs))
}

fn client(ctx: &Ctx, outputs: &Outputs) -> aws_sdk_cloudwatchlogs::Client {
    let config = aws_sdk_cloudwatchlogs::config::Builder::from(&ctx.sdk)
        .region(aws_sdk_cloudwatchlogs::config::Region::new(outputs.aws_region.clone()))
        .build();
    aws_sdk_cloudwatchlogs::Client::from_conf(config)
}

fn group(outputs: &Outputs) -> Result<&str> {
    outputs.ecs_log_group_name.as_deref().context(
        "the stack's outputs have no ecs_log_group_name (applied from an older configuration): run `casey-deploy infra` first",
    )
}

/// The task id in an awslogs stream name `backend/<container>/<task id>`.
fn task_of(stream: &str) -> &str {
    stream.rsplit('/').next().unwrap_or(stream)
}

/// `2026-12-02T06:55:01Z`.
fn timestamp(ms: i64) -> String {
    aws_sdk_cloudwatchlogs::primitives::DateTime::from_millis(ms)
        .fmt(aws_sdk_cloudwatchlogs::primitives::DateTimeFormat::DateTime)
        .map(|t| t.split('.').next().unwrap_or(&t).trim_end_matches('Z').to_owned() + "Z")
        .unwrap_or_default()
}

pub fn run(ctx: &Ctx, args: &Options) -> Result<()> {
    let outputs = ctx.outputs()?;
    let group = group(&outputs)?;
    let logs = client(ctx, &outputs);
    let task = args.task.as_deref().map(|t| t.rsplit('/').next().unwrap_or(t).to_owned());
    let prefix = match &task {
        Some(task) => format!("{STREAM_PREFIX}/{}/{task}", outputs.container_name),
        None => format!("{STREAM_PREFIX}/"),
    };
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    let mut start = now_ms - args.since.as_millis() as i64;
    let mut seen: HashSet<String> = HashSet::new();
    let mut printed = 0usize;
    crate::say!("logs of {group} (streams {prefix}*) since {}", timestamp(start));
    loop {
        let mut token: Option<String> = None;
        loop {
            let out = ctx
                .block_on(
                    logs.filter_log_events()
                        .log_group_name(group)
                        .log_stream_name_prefix(&prefix)
                        .start_time(start)
                        .set_next_token(token.clone())
                        .send(),
                )
                .map_err(|e| {
                    use aws_sdk_cloudwatchlogs::operation::filter_log_events::FilterLogEventsError as E;
                    let hint = match e.as_service_error() {
                        Some(E::ResourceNotFoundException(_)) => {
                            "; the log group does not exist: run `casey-deploy infra`"
                        }
                        _ => "",
                    };
                    anyhow!("CloudWatch Logs FilterLogEvents on {group} failed: {}{hint}", crate::aws::error_text(&e))
                })?;
            for event in out.events() {
                let id = event.event_id().unwrap_or_default().to_owned();
                if !id.is_empty() && !seen.insert(id) {
                    continue;
                }
                let at = event.timestamp().unwrap_or_default();
                start = start.max(at);
                let task = task_of(event.log_stream_name().unwrap_or("?"));
                let message = event.message().unwrap_or_default().trim_end();
                printed += 1;
                if !crate::output::event("log", json!({"timestamp": timestamp(at), "task": task, "message": message})) {
                    crate::out!("{} {task} {message}", timestamp(at));
                }
            }
            token = out.next_token().map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
        if !args.follow {
            break;
        }
        crate::process::check_interrupted()?;
        std::thread::sleep(FOLLOW_EVERY);
        crate::process::check_interrupted()?;
    }
    if printed == 0 {
        crate::say!(
            "no log lines since {} (`--since 1h` looks further back)",
            timestamp(now_ms - args.since.as_millis() as i64)
        );
    }
    crate::output::summary(json!({"lines": printed, "log_group": group}));
    Ok(())
}

/// The last `lines` lines task `task_id` printed (newest last).
pub fn tail(ctx: &Ctx, outputs: &Outputs, task_id: &str, lines: i32) -> Result<Vec<String>> {
    let group = group(outputs)?;
    let stream = format!("{STREAM_PREFIX}/{}/{task_id}", outputs.container_name);
    let out = ctx
        .block_on(
            client(ctx, outputs)
                .get_log_events()
                .log_group_name(group)
                .log_stream_name(&stream)
                .start_from_head(false)
                .limit(lines)
                .send(),
        )
        .map_err(|e| anyhow!("CloudWatch Logs GetLogEvents of {stream} failed: {}", crate::aws::error_text(&e)))?;
    if out.events().is_empty() {
        bail!("{stream} holds no lines");
    }
    Ok(out
        .events()
        .iter()
        .map(|e| {
            format!("{} {}", timestamp(e.timestamp().unwrap_or_default()), e.message().unwrap_or_default().trim_end())
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_seconds_minutes_hours_days() {
        assert_eq!(parse_since("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_since("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_since("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_since("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_since("45"), Ok(Duration::from_secs(45)));
        assert!(parse_since("5 minutes").is_err() && parse_since("m").is_err() && parse_since("").is_err());
    }

    #[test]
    fn streams_name_their_task_and_times_are_utc() {
        assert_eq!(task_of("backend/casey-backend/0123abcd"), "0123abcd");
        assert_eq!(timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(timestamp(1_500), "1970-01-01T00:00:01Z");
    }
}
