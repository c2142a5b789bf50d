//! `casey-deploy backend-url`: the URL the frontend should use
//! (`NEXT_PUBLIC_WS_URL`). Replaces scripts/get-backend-url.sh.
//!
//! - With the ALB: the stack's `recommended_ws_url`.
//! - Without: the public IP of each running task's ENI, as
//!   `BACKEND_WS_URL=ws://<ip>:<container_port>/ws`. It changes on every deploy.
//!
//! Cost: one `terraform output` and three AWS calls (ListTasks, DescribeTasks,
//! DescribeNetworkInterfaces); more only on the error path.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use aws_sdk_ecs::types::DesiredStatus;
use serde_json::{json, Value};

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

/// What `backend-url` is asked for.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Seconds to wait for a running task with a public IP.
    pub wait: u64,
    /// Probe each URL.
    pub check: bool,
}

pub fn run(ctx: &Ctx, args: &Options) -> Result<()> {
    let outputs = ctx.outputs()?;
    let resolved = resolve(ctx, &outputs, Duration::from_secs(args.wait))?;
    let checks = if args.check { Some(check_all(ctx, &resolved)) } else { None };
    print_text(&resolved);
    crate::output::document(&to_json(&resolved, checks.as_deref()));
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
}

impl Probe {
    fn to_json(&self) -> Value {
        match self {
            Probe::Ok(d) => json!({"result": "ok", "detail": d}),
            Probe::Failed(d) => json!({"result": "failed", "detail": d}),
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
    pub fn ok(&self) -> bool {
        !self.health.failed() && !self.websocket.failed()
    }

    pub fn to_json(&self) -> Value {
        json!({"url": self.url, "ok": self.ok(), "health": self.health.to_json(), "websocket": self.websocket.to_json()})
    }
}

/// The path the backend answers health checks on.
const HEALTH_PATH: &str = "/health";
const TIMEOUT: Duration = Duration::from_secs(5);

pub fn check_all(ctx: &Ctx, resolved: &Resolved) -> Vec<Check> {
    let urls: Vec<String> = match resolved {
        Resolved::Alb { url, .. } => vec![url.clone()],
        Resolved::Tasks(tasks) => tasks.iter().map(|t| t.url.clone()).collect(),
    };
    // AWS_CA_BUNDLE is read once, and only when a URL needs TLS.
    let tls = urls.iter().any(|u| u.starts_with("wss://") || u.starts_with("https://")).then(Tls::load);
    ctx.block_on(async {
        let mut checks = Vec::new();
        for url in urls {
            checks.push(check_url(&url, tls.as_ref()).await);
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
            checks.first().and_then(|c| Target::parse(&c.url).ok()).map_or(0, |t| t.port)
        );
    }
    Ok(())
}

/// Where a URL points: `ws://host:port/path` or `wss://...`.
#[derive(Debug)]
struct Target {
    secure: bool,
    /// Without IPv6 brackets, as it is connected to and verified.
    host: String,
    port: u16,
    uri: hyper::Uri,
}

impl Target {
    fn parse(url: &str) -> std::result::Result<Target, String> {
        let uri: hyper::Uri = url.parse().map_err(|e| format!("`{url}` is not a URL: {e}"))?;
        let secure = match uri.scheme_str() {
            Some("ws" | "http") => false,
            Some("wss" | "https") => true,
            _ => return Err(format!("`{url}` is not a ws:// or wss:// URL")),
        };
        let host = uri.host().ok_or_else(|| format!("`{url}` has no host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        Ok(Target { secure, host, port, uri })
    }

    /// The same host and port with `path` and the HTTP scheme.
    fn http_uri(&self, path: &str) -> hyper::Uri {
        let scheme = if self.secure { "https" } else { "http" };
        let authority = self.uri.authority().map_or(self.host.as_str(), |a| a.as_str());
        format!("{scheme}://{authority}{path}").parse().unwrap_or_else(|_| self.uri.clone())
    }
}

/// The TLS client settings of `--check`: the system roots plus
/// `AWS_CA_BUNDLE`, the same rule as the SDK client (src/aws.rs), with
/// rustls and ring.
struct Tls {
    config: std::result::Result<Arc<rustls::ClientConfig>, String>,
    /// Where the extra CAs came from, for error messages.
    bundle: Option<String>,
}

impl Tls {
    fn load() -> Tls {
        let bundle = std::env::var_os("AWS_CA_BUNDLE").filter(|v| !v.is_empty());
        let config = Self::config(bundle.as_deref().map(Path::new));
        Tls { config, bundle: bundle.map(|b| b.to_string_lossy().into_owned()) }
    }

    fn config(bundle: Option<&Path>) -> std::result::Result<Arc<rustls::ClientConfig>, String> {
        use rustls::pki_types::{pem::PemObject as _, CertificateDer};
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        if let Some(bundle) = bundle {
            let pem = std::fs::read(bundle)
                .map_err(|e| format!("AWS_CA_BUNDLE points to {}, which cannot be read: {e}", bundle.display()))?;
            let certs: Vec<CertificateDer> = CertificateDer::pem_slice_iter(&pem)
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| format!("AWS_CA_BUNDLE ({}) is not a PEM file of certificates: {e}", bundle.display()))?;
            if certs.is_empty() {
                return Err(format!("AWS_CA_BUNDLE ({}) holds no PEM certificate", bundle.display()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| {
                    format!("AWS_CA_BUNDLE ({}) holds a certificate rustls rejects: {e}", bundle.display())
                })?;
            }
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("invalid TLS settings: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }

    /// What to do about a certificate the client did not trust.
    fn hint(&self) -> String {
        match &self.bundle {
            Some(path) => format!(
                "the server's certificate is not trusted by the system roots or AWS_CA_BUNDLE ({path}); point AWS_CA_BUNDLE at a PEM file with the CA that signed it"
            ),
            None => "the server's certificate is not trusted by the system roots; if a private CA signed it, set AWS_CA_BUNDLE to a PEM file with that CA".to_owned(),
        }
    }
}

/// A connection to the target: TCP, and TLS for `wss://`.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

async fn connect(target: &Target, tls: Option<&Tls>) -> std::result::Result<Box<dyn Io>, String> {
    let (host, port) = (target.host.as_str(), target.port);
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    if !target.secure {
        return Ok(Box::new(tcp));
    }
    let tls = tls.ok_or_else(|| "no TLS settings for a wss:// URL".to_owned())?;
    let config = tls.config.clone()?;
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| format!("`{host}` is not a valid TLS server name: {e}"))?;
    match tokio_rustls::TlsConnector::from(config).connect(name, tcp).await {
        Ok(stream) => Ok(Box::new(stream)),
        Err(e) => {
            let unknown_ca = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()).is_some_and(|e| {
                use rustls::CertificateError::{BadSignature, UnknownIssuer};
                matches!(e, rustls::Error::InvalidCertificate(UnknownIssuer | BadSignature))
            });
            let hint = if unknown_ca { format!("; {}", tls.hint()) } else { String::new() };
            Err(format!("TLS handshake with {host}:{port} failed: {e}{hint}"))
        }
    }
}

/// GET /health (expect 200) and a WebSocket upgrade of the URL's path (expect
/// 101 with the right Sec-WebSocket-Accept, which tungstenite verifies).
async fn check_url(url: &str, tls: Option<&Tls>) -> Check {
    let target = match Target::parse(url) {
        Ok(target) => target,
        Err(e) => {
            let failed = Probe::Failed(e);
            return Check { url: url.to_owned(), health: failed.clone(), websocket: failed };
        }
    };
    let health = match within(&target, health(&target, tls)).await {
        Ok(status) if status == hyper::StatusCode::OK => Probe::Ok(status.to_string()),
        Ok(status) => Probe::Failed(format!("{status}, expected 200")),
        Err(e) => Probe::Failed(e),
    };
    let websocket = match within(&target, websocket(&target, tls)).await {
        Ok(detail) => Probe::Ok(detail),
        Err(e) => Probe::Failed(e),
    };
    Check { url: url.to_owned(), health, websocket }
}

async fn within<T>(
    target: &Target,
    exchange: impl std::future::Future<Output = std::result::Result<T, String>>,
) -> std::result::Result<T, String> {
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer from {}:{} within {}s", target.host, target.port, TIMEOUT.as_secs()))?
}

/// The status of `GET /health`, through hyper.
async fn health(target: &Target, tls: Option<&Tls>) -> std::result::Result<hyper::StatusCode, String> {
    let io = hyper_util::rt::TokioIo::new(connect(target, tls).await?);
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(io).await.map_err(|e| format!("HTTP handshake: {e}"))?;
    let driver = tokio::spawn(connection);
    let uri = target.http_uri(HEALTH_PATH);
    let request = hyper::Request::get(HEALTH_PATH)
        .header(hyper::header::HOST, uri.authority().map_or(target.host.as_str(), |a| a.as_str()))
        .header(hyper::header::USER_AGENT, "casey-deploy")
        .header(hyper::header::ACCEPT, "*/*")
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())
        .map_err(|e| format!("building the request: {e}"))?;
    let response = sender.send_request(request).await.map_err(|e| format!("GET {uri}: {}", error_chain(&e)))?;
    driver.abort();
    Ok(response.status())
}

/// A WebSocket opening handshake on the URL's path, through tungstenite, then
/// a close.
async fn websocket(target: &Target, tls: Option<&Tls>) -> std::result::Result<String, String> {
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest as _, error::ProtocolError, Error};
    let stream = connect(target, tls).await?;
    let mut request = target.uri.clone().into_client_request().map_err(|e| format!("building the request: {e}"))?;
    request.headers_mut().insert(hyper::header::USER_AGENT, hyper::header::HeaderValue::from_static("casey-deploy"));
    match tokio_tungstenite::client_async(request, stream).await {
        Ok((mut ws, response)) => {
            // The close frame is a courtesy; the check has its answer.
            let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
            Ok(response.status().to_string())
        }
        Err(Error::Http(response)) => {
            Err(format!("{}, expected {}", response.status(), hyper::StatusCode::SWITCHING_PROTOCOLS))
        }
        Err(Error::Protocol(ProtocolError::SecWebSocketAcceptKeyMismatch)) => {
            Err(format!("{}, but Sec-WebSocket-Accept does not match the key", hyper::StatusCode::SWITCHING_PROTOCOLS))
        }
        Err(e) => Err(format!("WebSocket handshake: {e}")),
    }
}

/// An error and its sources, `: `-separated (hyper's own text is terse).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        let t = Target::parse("ws://127.0.1.1:3001/ws").unwrap();
        assert_eq!((t.secure, t.host.as_str(), t.port, t.uri.path()), (false, "127.0.1.1", 3001, "/ws"));
        assert_eq!(t.http_uri(HEALTH_PATH).to_string(), "http://127.0.1.1:3001/health");
        let t = Target::parse("wss://api.casey.com/ws").unwrap();
        assert_eq!((t.secure, t.host.as_str(), t.port), (true, "api.casey.com", 443));
        assert_eq!(t.http_uri(HEALTH_PATH).to_string(), "https://api.casey.com/health");
        let t = Target::parse("ws://[::1]:3001/ws").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 3001));
        assert!(Target::parse("ftp://x/ws").unwrap_err().contains("not a ws:// or wss:// URL"));
    }

    #[test]
    fn a_missing_bundle_is_named() {
        let err = Tls::config(Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(err.contains("AWS_CA_BUNDLE points to /nonexistent/ca.pem, which cannot be read"), "{err}");
    }
}
