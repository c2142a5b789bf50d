//! `casey-deploy backend-url`: the URL the frontend should use
//! (`NEXT_PUBLIC_WS_URL`). Replaces scripts/get-backend-url.sh.
//!
//! - With the ALB: the stack's `recommended_ws_url`.
//! - Without: the public IP of each running task's ENI, as
//!   `BACKEND_WS_URL=ws://<ip>:<container_port>/ws`. It changes on every deploy.
//!
//! Cost: one `terraform output` and three AWS calls (ListTasks, DescribeTasks,
//! DescribeNetworkInterfaces); more only on the error path.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use aws_sdk_ecs::types::DesiredStatus;
use base64::Engine as _;
use serde_json::{json, Value};
use sha1::Digest as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cli::UrlArgs;
use crate::context::Ctx;
use crate::outputs::Outputs;
use crate::rollout::clock;
use crate::{out, say};

/// A running task and its URL.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskEndpoint {
    pub task_arn: String,
    pub task_id: String,
    pub public_ip: String,
    pub private_ip: Option<String>,
    /// Unix seconds.
    pub started_at: Option<i64>,
    pub url: String,
}

/// Where the backend is.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolved {
    Alb { dns_name: String, url: String },
    Tasks(Vec<TaskEndpoint>),
}

impl Resolved {
    /// The URL for NEXT_PUBLIC_WS_URL (the first task's without an ALB).
    pub fn url(&self) -> &str {
        match self {
            Resolved::Alb { url, .. } => url,
            Resolved::Tasks(tasks) => tasks.first().map_or("", |t| &t.url),
        }
    }
}

const IP_NOTE: &str = "note: without an ALB this is the task's public IP, which changes on every deploy (a new task gets a new IP): run `casey-deploy backend-url` again after each deploy, or enable the ALB (`casey-deploy infra --var enable_alb=true`) for a stable URL";

pub fn run(ctx: &Ctx, args: &UrlArgs) -> Result<()> {
    let outputs = Outputs::load(ctx)?;
    let resolved = resolve(ctx, &outputs, Duration::from_secs(args.wait))?;
    let checks = if args.check { Some(check_all(ctx, &resolved)) } else { None };
    if args.json {
        out!("{}", serde_json::to_string_pretty(&to_json(&resolved, checks.as_deref())).unwrap_or_default());
    } else {
        print_text(&resolved);
    }
    if let Some(checks) = checks {
        report_checks(&checks)?;
    }
    Ok(())
}

/// Print `BACKEND_WS_URL=` lines (stdout) and what they are (stderr).
pub fn print_text(resolved: &Resolved) {
    match resolved {
        Resolved::Alb { dns_name, url } => {
            say!("ALB {dns_name}: a stable URL for NEXT_PUBLIC_WS_URL");
            out!("BACKEND_WS_URL={url}");
        }
        Resolved::Tasks(tasks) => {
            for task in tasks {
                let started = task.started_at.map(|s| format!(", started {}", clock(s))).unwrap_or_default();
                say!("task {}{started}: public IP {}", task.task_id, task.public_ip);
                out!("BACKEND_WS_URL={}", task.url);
            }
            if tasks.len() > 1 {
                say!("{} tasks run; each URL reaches one task (without an ALB nothing spreads the load)", tasks.len());
            }
            say!("{IP_NOTE}");
        }
    }
}

fn to_json(resolved: &Resolved, checks: Option<&[Check]>) -> Value {
    let check_json = |url: &str| {
        checks
            .and_then(|c| c.iter().find(|c| c.url == url))
            .map(|c| json!({"ok": c.ok(), "health": c.health.to_json(), "websocket": c.websocket.to_json()}))
    };
    match resolved {
        Resolved::Alb { dns_name, url } => json!({
            "source": "alb",
            "url": url,
            "alb_dns_name": dns_name,
            "tasks": [],
            "check": check_json(url),
        }),
        Resolved::Tasks(tasks) => json!({
            "source": "tasks",
            "url": resolved.url(),
            "alb_dns_name": null,
            "tasks": tasks.iter().map(|t| json!({
                "task_id": t.task_id,
                "task_arn": t.task_arn,
                "public_ip": t.public_ip,
                "private_ip": t.private_ip,
                "started_at": t.started_at.map(|s| aws_sdk_ecs::primitives::DateTime::from_secs(s)
                    .fmt(aws_sdk_ecs::primitives::DateTimeFormat::DateTime).unwrap_or_default()),
                "url": t.url,
                "check": check_json(&t.url),
            })).collect::<Vec<_>>(),
            "note": IP_NOTE.trim_start_matches("note: "),
        }),
    }
}

/// The ALB's URL, or the running tasks' (waiting up to `wait` for one).
pub fn resolve(ctx: &Ctx, outputs: &Outputs, wait: Duration) -> Result<Resolved> {
    if let Some(dns_name) = &outputs.alb_dns_name {
        let url = outputs.recommended_ws_url.clone().unwrap_or_else(|| format!("ws://{dns_name}/ws"));
        return Ok(Resolved::Alb { dns_name: dns_name.clone(), url });
    }
    let ecs = crate::rollout::client(ctx, outputs);
    let ec2 = aws_sdk_ec2::Client::from_conf(
        aws_sdk_ec2::config::Builder::from(&ctx.sdk)
            .region(aws_sdk_ec2::config::Region::new(outputs.aws_region.clone()))
            .build(),
    );
    let deadline = Instant::now() + wait;
    let mut said_waiting = false;
    loop {
        crate::process::check_interrupted()?;
        match lookup(ctx, &ecs, &ec2, outputs)? {
            Lookup::Found(tasks) => return Ok(Resolved::Tasks(tasks)),
            Lookup::NotYet(problem) if Instant::now() < deadline => {
                if !said_waiting {
                    say!("waiting up to {}s for a running task with a public IP ({problem})", wait.as_secs());
                    said_waiting = true;
                }
                std::thread::sleep(Duration::from_secs(2).min(deadline - Instant::now()));
            }
            Lookup::NotYet(problem) => return Err(explain(ctx, &ecs, outputs, &problem, wait)),
        }
    }
}

enum Lookup {
    Found(Vec<TaskEndpoint>),
    /// What is missing (no running task, no public IP, ...).
    NotYet(String),
}

fn lookup(ctx: &Ctx, ecs: &aws_sdk_ecs::Client, ec2: &aws_sdk_ec2::Client, outputs: &Outputs) -> Result<Lookup> {
    let (cluster, service) = (&outputs.ecs_cluster_name, &outputs.ecs_service_name);
    let listed = ctx
        .block_on(ecs.list_tasks().cluster(cluster).service_name(service).desired_status(DesiredStatus::Running).send())
        .map_err(|e| anyhow!("ListTasks of service {service} in {cluster} failed: {}", crate::aws::error_text(&e)))?;
    let arns: Vec<String> = listed.task_arns().iter().take(100).cloned().collect();
    if arns.is_empty() {
        return Ok(Lookup::NotYet(format!("no running task in service {service}")));
    }
    let described = ctx
        .block_on(ecs.describe_tasks().cluster(cluster).set_tasks(Some(arns)).send())
        .map_err(|e| anyhow!("DescribeTasks in {cluster} failed: {}", crate::aws::error_text(&e)))?;
    struct Running {
        arn: String,
        eni: Option<String>,
        private_ip: Option<String>,
        started_at: Option<i64>,
    }
    let mut running = Vec::new();
    let mut starting = 0;
    for task in described.tasks() {
        if task.last_status() != Some("RUNNING") {
            starting += 1;
            continue;
        }
        let details: Vec<_> = task
            .attachments()
            .iter()
            .filter(|a| a.r#type() == Some("ElasticNetworkInterface"))
            .flat_map(|a| a.details())
            .collect();
        let detail =
            |name: &str| details.iter().find(|d| d.name() == Some(name)).and_then(|d| d.value()).map(str::to_owned);
        running.push(Running {
            arn: task.task_arn().unwrap_or_default().to_owned(),
            eni: detail("networkInterfaceId"),
            private_ip: detail("privateIPv4Address"),
            started_at: task.started_at().map(|t| t.secs()),
        });
    }
    if running.is_empty() {
        return Ok(Lookup::NotYet(format!("{starting} task(s) of service {service} are still starting (PENDING)")));
    }
    let enis: Vec<String> = running.iter().filter_map(|r| r.eni.clone()).collect();
    let mut public = std::collections::HashMap::new();
    if !enis.is_empty() {
        let described = ctx
            .block_on(ec2.describe_network_interfaces().set_network_interface_ids(Some(enis)).send())
            .map_err(|e| anyhow!("DescribeNetworkInterfaces failed: {}", crate::aws::error_text(&e)))?;
        for eni in described.network_interfaces() {
            if let (Some(id), Some(ip)) = (eni.network_interface_id(), eni.association().and_then(|a| a.public_ip())) {
                public.insert(id.to_owned(), ip.to_owned());
            }
        }
    }
    let mut tasks: Vec<TaskEndpoint> = running
        .iter()
        .filter_map(|r| {
            let ip = public.get(r.eni.as_deref()?)?;
            Some(TaskEndpoint {
                task_id: r.arn.rsplit('/').next().unwrap_or_default().to_owned(),
                task_arn: r.arn.clone(),
                public_ip: ip.clone(),
                private_ip: r.private_ip.clone(),
                started_at: r.started_at,
                url: format!("ws://{ip}:{}/ws", outputs.container_port),
            })
        })
        .collect();
    if tasks.is_empty() {
        let ids: Vec<&str> = running.iter().map(|r| r.arn.rsplit('/').next().unwrap_or("?")).collect();
        return Ok(Lookup::NotYet(format!("the running task(s) {} have no public IP", ids.join(", "))));
    }
    tasks.sort_by(|a, b| (a.started_at, &a.public_ip).cmp(&(b.started_at, &b.public_ip)));
    Ok(Lookup::Found(tasks))
}

/// The final error when no URL was found: the service's state and what to check.
fn explain(ctx: &Ctx, ecs: &aws_sdk_ecs::Client, outputs: &Outputs, problem: &str, wait: Duration) -> anyhow::Error {
    let (cluster, service) = (&outputs.ecs_cluster_name, &outputs.ecs_service_name);
    let mut text = format!("no backend URL: {problem} (cluster {cluster})");
    let described = ctx.block_on(ecs.describe_services().cluster(cluster).services(service).send());
    if let Some(s) = described.ok().as_ref().and_then(|d| d.services().first()) {
        text.push_str(&format!(
            "\nService {service}: desired {}, running {}, pending {}.",
            s.desired_count(),
            s.running_count(),
            s.pending_count()
        ));
        let events: Vec<String> = s
            .events()
            .iter()
            .take(3)
            .map(|e| {
                format!(
                    "  {} {}",
                    e.created_at().map_or_else(String::new, |t| clock(t.secs())),
                    crate::redact::redact(e.message().unwrap_or_default())
                )
            })
            .collect();
        if !events.is_empty() {
            text.push_str(&format!("\nRecent events:\n{}", events.join("\n")));
        }
    }
    let check = if problem.contains("no public IP") {
        "Check: the service must assign public IPs (the stack sets assignPublicIp when enable_alb=false) in public subnets (a route to an internet gateway); or enable the ALB (`casey-deploy infra --var enable_alb=true`) for a stable URL"
    } else {
        "Check: the service's desired count is above 0, the image exists in the repository (`casey-deploy image` pushes it), and why tasks stopped (`aws ecs list-tasks --desired-status STOPPED`, then `aws ecs describe-tasks`: stoppedReason)"
    };
    let wait_hint = if wait.is_zero() { "; to wait for a task that is starting, pass --wait SECONDS" } else { "" };
    anyhow!("{text}\n{check}{wait_hint}")
}

/// One `--check` result.
#[derive(Debug, Clone)]
pub enum Probe {
    Ok(String),
    Failed(String),
    Skipped(String),
}

impl Probe {
    fn to_json(&self) -> Value {
        match self {
            Probe::Ok(d) => json!({"result": "ok", "detail": d}),
            Probe::Failed(d) => json!({"result": "failed", "detail": d}),
            Probe::Skipped(d) => json!({"result": "skipped", "detail": d}),
        }
    }

    fn failed(&self) -> bool {
        matches!(self, Probe::Failed(_))
    }
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Probe::Ok(d) => write!(f, "ok ({d})"),
            Probe::Failed(d) => write!(f, "FAILED ({d})"),
            Probe::Skipped(d) => write!(f, "not checked ({d})"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Check {
    pub url: String,
    pub health: Probe,
    pub websocket: Probe,
}

impl Check {
    fn ok(&self) -> bool {
        !self.health.failed() && !self.websocket.failed()
    }
}

/// The path the backend answers health checks on.
const HEALTH_PATH: &str = "/health";
const TIMEOUT: Duration = Duration::from_secs(5);

fn check_all(ctx: &Ctx, resolved: &Resolved) -> Vec<Check> {
    let urls: Vec<String> = match resolved {
        Resolved::Alb { url, .. } => vec![url.clone()],
        Resolved::Tasks(tasks) => tasks.iter().map(|t| t.url.clone()).collect(),
    };
    ctx.block_on(async {
        let mut checks = Vec::new();
        for url in urls {
            checks.push(check_url(&url).await);
        }
        checks
    })
}

fn report_checks(checks: &[Check]) -> Result<()> {
    for c in checks {
        say!("check {}: GET {HEALTH_PATH} {}; WebSocket upgrade {}", c.url, c.health, c.websocket);
    }
    let failed = checks.iter().filter(|c| !c.ok()).count();
    if failed > 0 {
        bail!(
            "--check: {failed} of {} backend URL(s) failed; the task may still be starting, or the security group may not let port {} in",
            checks.len(),
            checks.first().and_then(|c| split_url(&c.url).ok()).map_or(0, |(_, _, port, _)| port)
        );
    }
    Ok(())
}

/// `ws://host:port/path` → (scheme, host, port, path).
fn split_url(url: &str) -> Result<(String, String, u16, String)> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| anyhow!("`{url}` is not a URL"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let default_port = if matches!(scheme, "wss" | "https") { 443 } else { 80 };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            (h.to_owned(), p.parse().map_err(|_| anyhow!("`{url}` has a bad port"))?)
        }
        _ => (authority.to_owned(), default_port),
    };
    Ok((scheme.to_owned(), host, port, path.to_owned()))
}

/// GET /health (expect 200) and a WebSocket upgrade of the URL's path (expect
/// 101 with the right Sec-WebSocket-Accept).
pub async fn check_url(url: &str) -> Check {
    let (scheme, host, port, path) = match split_url(url) {
        Ok(parts) => parts,
        Err(e) => {
            let failed = Probe::Failed(e.to_string());
            return Check { url: url.to_owned(), health: failed.clone(), websocket: failed };
        }
    };
    if scheme != "ws" {
        let why = Probe::Skipped(format!("--check speaks plain ws:// only; try `curl -i https://{host}{HEALTH_PATH}`"));
        return Check { url: url.to_owned(), health: why.clone(), websocket: why };
    }
    let authority = if port == 80 { host.clone() } else { format!("{host}:{port}") };
    let health = match http(&host, port, &format!(
        "GET {HEALTH_PATH} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: casey-deploy\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    ))
    .await
    {
        Ok((200, line, _, _)) => Probe::Ok(line),
        Ok((_, line, _, _)) => Probe::Failed(format!("{line}, expected 200")),
        Err(e) => Probe::Failed(e),
    };
    let key = base64::engine::general_purpose::STANDARD.encode(random_bytes());
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: casey-deploy\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    let websocket = match http(&host, port, &request).await {
        Ok((101, line, headers, mut stream)) => {
            // A close frame (client frames are masked; status 1000), then hang up.
            let mask = [0x5a, 0x17, 0x3c, 0x81];
            let frame = [0x88, 0x82, mask[0], mask[1], mask[2], mask[3], 0x03 ^ mask[0], 0xe8 ^ mask[1]];
            let _ = tokio::time::timeout(TIMEOUT, stream.write_all(&frame)).await;
            let accept = headers.iter().find(|(k, _)| k == "sec-websocket-accept").map(|(_, v)| v.as_str());
            if accept == Some(websocket_accept(&key).as_str()) {
                Probe::Ok(line)
            } else {
                Probe::Failed(format!("{line}, but Sec-WebSocket-Accept is {}", accept.unwrap_or("missing")))
            }
        }
        Ok((_, line, _, _)) => Probe::Failed(format!("{line}, expected 101 Switching Protocols")),
        Err(e) => Probe::Failed(e),
    };
    Check { url: url.to_owned(), health, websocket }
}

type Head = (u16, String, Vec<(String, String)>, tokio::net::TcpStream);

/// Send one request; read the response head (status, status line, headers).
async fn http(host: &str, port: u16, request: &str) -> std::result::Result<Head, String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
        stream.write_all(request.as_bytes()).await.map_err(|e| format!("sending the request: {e}"))?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            if buf.len() > 64 * 1024 {
                return Err("the response head is larger than 64 KiB".to_owned());
            }
            let n = stream.read(&mut chunk).await.map_err(|e| format!("reading the response: {e}"))?;
            if n == 0 {
                break buf.len();
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let mut lines = head.lines();
        let status_line = lines.next().unwrap_or_default().trim().to_owned();
        let status = status_line
            .strip_prefix("HTTP/1.")
            .and_then(|rest| rest.get(2..5))
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| format!("not an HTTP response: `{}`", status_line.chars().take(80).collect::<String>()))?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Ok((status, status_line.trim_start_matches("HTTP/1.1 ").to_owned(), headers, stream))
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer from {host}:{port} within {}s", TIMEOUT.as_secs()))?
}

/// RFC 6455: base64(SHA-1(key + GUID)).
pub fn websocket_accept(key: &str) -> String {
    let mut sha = sha1::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// 16 bytes for a Sec-WebSocket-Key (a nonce, not a secret).
fn random_bytes() -> [u8; 16] {
    use std::hash::{BuildHasher, Hasher};
    let mut out = [0u8; 16];
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(i);
        h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_accept_matches_rfc_6455() {
        // The example in RFC 6455 section 1.3.
        assert_eq!(websocket_accept("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn splits_urls() {
        let (scheme, host, port, path) = split_url("ws://127.0.1.1:3001/ws").unwrap();
        assert_eq!((scheme.as_str(), host.as_str(), port, path.as_str()), ("ws", "127.0.1.1", 3001, "/ws"));
        let (_, host, port, _) = split_url("wss://api.casey.com/ws").unwrap();
        assert_eq!((host.as_str(), port), ("api.casey.com", 443));
    }

    #[test]
    fn nonces_differ() {
        assert_ne!(random_bytes(), random_bytes());
    }
}
