//! `casey-deploy doctor`: one screen that says whether a deploy can work.
//!
//! Unlike every other verb it does not go through [`crate::context::Ctx`],
//! whose identity guard stops at the first problem: doctor runs every check,
//! prints one line per check (`ok`, `warn` or `FAIL`, what it found, and for
//! a problem the command that fixes it), and fails (exit 1) only when a
//! deploy would fail. No secret is printed: keys are shown as
//! [`key_hint`]s and every line goes through [`redact`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use aws_config::{Region, SdkConfig};
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_credential_types::Credentials;
use serde_json::{Map, Value};

use crate::cli::Global;
use crate::env::{self, Settings, Source};
use crate::identity::{self, Identity, Principals, Role};
use crate::process::{check_interrupted, Command};
use crate::redact::{key_hint, redact};
use crate::terraform::Terraform;

/// The Terraform version the stack requires (`required_version`).
const MIN_TERRAFORM: (u64, u64) = (1, 5);
/// The AWS provider, as `terraform version -json` names it.
const AWS_PROVIDER: &str = "registry.terraform.io/hashicorp/aws";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Ok,
    Warn,
    Fail,
    /// Not run because an earlier check failed; not counted.
    Skip,
}

/// The printed checks and their tally.
#[derive(Default)]
struct Report {
    warnings: usize,
    failures: usize,
}

impl Report {
    /// One check: `found` may span lines (the rest are indented below it).
    fn line(&mut self, verdict: Verdict, label: &str, found: &str, fix: Option<&str>) {
        let tag = match verdict {
            Verdict::Ok => "ok",
            Verdict::Warn => {
                self.warnings += 1;
                "warn"
            }
            Verdict::Fail => {
                self.failures += 1;
                "FAIL"
            }
            Verdict::Skip => "skip",
        };
        let mut lines = found.lines().filter(|l| !l.trim().is_empty());
        let first = lines.next().unwrap_or("");
        let rest: Vec<&str> = lines.collect();
        let indent = " ".repeat(2 + 5 + 21);
        let mut text = format!("  {tag:<4} {label:<20} {first}");
        match fix {
            Some(fix) if rest.is_empty() => text.push_str(&format!(" → fix: {fix}")),
            _ => {}
        }
        for line in &rest {
            text.push_str(&format!("\n{indent}{}", line.trim_end()));
        }
        if let (Some(fix), false) = (fix, rest.is_empty()) {
            text.push_str(&format!("\n{indent}→ fix: {fix}"));
        }
        crate::out!("{text}");
    }

    fn ok(&mut self, label: &str, found: &str) {
        self.line(Verdict::Ok, label, found, None);
    }

    fn warn(&mut self, label: &str, found: &str, fix: Option<&str>) {
        self.line(Verdict::Warn, label, found, fix);
    }

    fn fail(&mut self, label: &str, found: &str, fix: Option<&str>) {
        self.line(Verdict::Fail, label, found, fix);
    }

    fn skip(&mut self, label: &str, why: &str) {
        self.line(Verdict::Skip, label, &format!("not checked: {why}"), None);
    }

    fn finish(self) -> Result<()> {
        crate::out!();
        let warnings = match self.warnings {
            0 => String::new(),
            1 => ", 1 warning".to_owned(),
            n => format!(", {n} warnings"),
        };
        if self.failures > 0 {
            let checks = match self.failures {
                1 => "1 check".to_owned(),
                n => format!("{n} checks"),
            };
            bail!(
                "{checks} FAILED{warnings}: a deploy would fail; each FAIL above ends with the command that fixes it"
            );
        }
        crate::out!("no check failed{warnings}: a deploy can work");
        Ok(())
    }
}

/// Run every check; fails (exit 1) when any check failed.
pub fn run(global: &Global) -> Result<()> {
    let mut report = Report::default();
    let project = match crate::context::find_project(global.project_dir.as_deref()) {
        Ok(project) => project,
        Err(err) => {
            report.fail("project", &format!("{err:#}"), None);
            return report.finish();
        }
    };
    crate::out!("casey-deploy doctor: {}", project.display());
    // Secrets already in the environment are masked whatever happens next.
    env::register_secrets(std::env::vars());
    let principals = Principals {
        admin_user: global.admin_user.clone(),
        service_user: global.service_user.clone(),
        admin_principal: global.admin_principal.clone(),
    };

    // The env files first: terraform/.env becomes this process's environment
    // (as for every verb), so terraform, docker and the SDK see the same
    // settings `infra` would.
    let (env_file, explicit) = match &global.env_file {
        Some(path) => (path.clone(), true),
        None => (project.join("terraform").join(".env"), false),
    };
    let settings = deploy_env(&mut report, &project, &env_file, explicit);
    let backend_path = project.join("backend").join(".env");
    let backend = backend_env(&mut report, &project, &backend_path, &principals);
    check_interrupted()?;

    // Tools.
    let terraform_ok = check_terraform(&mut report)?;
    check_docker(&mut report)?;
    let tf_dir = project.join("terraform");
    let provider_ok = if terraform_ok {
        check_provider(&mut report, &tf_dir)?
    } else {
        report.skip("aws provider", "terraform is not usable (see above)");
        false
    };
    check_interrupted()?;

    // Who each set of credentials is.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")?;
    let deploy = rt.block_on(deploy_identity(&mut report, settings.as_ref(), &principals));
    let backend_id = match (&backend, &deploy.sdk) {
        (Some(vars), Some(sdk)) => {
            rt.block_on(backend_identity(&mut report, &backend_path, vars, sdk, deploy.region.as_deref(), &principals))
        }
        _ => None,
    };
    check_separation(&mut report, &deploy, backend.as_ref(), backend_id.as_ref());
    check_account(&mut report, global.account.as_deref(), &tf_dir, deploy.identity.as_ref());
    if deploy.sdk.is_some() {
        check_region(&mut report, &env_file, &project, deploy.region.as_deref(), backend.as_ref());
    }
    check_interrupted()?;

    // The stack.
    if provider_ok {
        check_stack(&mut report, &tf_dir, &deploy)?;
    } else {
        report.skip("stack", "terraform or the AWS provider is not usable (see above)");
    }
    report.finish()
}

// ---------------------------------------------------------------- env files

/// `terraform/.env` (or --env-file): presence, permissions, syntax; then the
/// layering every verb does. `None` when the settings cannot be loaded (the
/// reason is printed).
fn deploy_env(report: &mut Report, project: &Path, path: &Path, explicit: bool) -> Option<Settings> {
    let label = short(project, path);
    let example = "cp terraform/.env.example terraform/.env, fill in the admin's keys, then `chmod 600 terraform/.env`";
    let mut vars = None;
    if path.exists() {
        vars = Some(present_env_file(report, &label, path)?);
    } else if explicit {
        report.fail(
            &label,
            "does not exist (given by --env-file or CASEY_ENV_FILE)",
            Some("create it from terraform/.env.example, or drop --env-file"),
        );
        return None;
    }

    // The file was read and checked above: layer what it holds, as every verb does.
    let layered = match &vars {
        Some(vars) => env::layer(Some(path), vars.clone()),
        None => env::layer(None, BTreeMap::new()),
    };
    let settings = match layered {
        Ok(settings) => settings,
        Err(err) => {
            report.fail("deploy credentials", &format!("{err:#}"), None);
            return None;
        }
    };
    if vars.is_none() {
        match &settings.source {
            Source::DefaultChain => {
                report.warn(&label, "absent, and no AWS keys or AWS_PROFILE in the environment either", Some(example))
            }
            other => report.ok(&label, &format!("absent (optional): using {other}")),
        }
    }
    Some(settings)
}

/// `backend/.env`: presence, permissions, syntax. `None` when absent or
/// unreadable (the reason is printed).
fn backend_env(
    report: &mut Report,
    project: &Path,
    path: &Path,
    principals: &Principals,
) -> Option<BTreeMap<String, String>> {
    let label = short(project, path);
    if !path.exists() {
        report.warn(
            &label,
            "absent: the backend runs without AWS when started locally",
            Some(&format!(
                "cp backend/.env.example backend/.env, fill in the service account's ({}) keys, then `chmod 600 backend/.env`",
                principals.service_user
            )),
        );
        return None;
    }
    // A FAIL when it cannot be parsed: every deploy verb reads it (the
    // key-separation guard) and stops.
    present_env_file(report, &label, path)
}

/// An env file that exists: its permissions and syntax, on one line unless
/// both are wrong. `None` when it cannot be parsed.
fn present_env_file(report: &mut Report, label: &str, path: &Path) -> Option<BTreeMap<String, String>> {
    let (verdict, mode) = permissions(path);
    let chmod = format!("`chmod 600 {}`", path.display());
    let chmod = (verdict != Verdict::Ok).then_some(chmod.as_str());
    match env::read_env_file(path) {
        Ok(vars) => {
            env::register_secrets(vars.clone());
            report.line(verdict, label, &format!("present, {mode}, {}", summary(&vars)), chmod);
            Some(vars)
        }
        Err(err) => {
            if verdict != Verdict::Ok {
                report.line(verdict, label, &format!("present, {mode}"), chmod);
            }
            report.fail(label, &format!("{err:#}"), Some(&format!("edit {}", path.display())));
            None
        }
    }
}

/// The file's mode, judged: others may write it → FAIL (anyone could change
/// which keys and endpoint a deploy uses); group or others may read it →
/// warn (it holds AWS keys).
fn permissions(path: &Path) -> (Verdict, String) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(path) else { return (Verdict::Ok, "mode unknown".to_owned()) };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o022 != 0 {
        (Verdict::Fail, format!("mode {mode:o} (others may change it, and it holds AWS keys)"))
    } else if mode & 0o044 != 0 {
        let who = if mode & 0o004 != 0 { "other users" } else { "its group" };
        (Verdict::Warn, format!("mode {mode:o} (readable by {who}, and it holds AWS keys)"))
    } else {
        (Verdict::Ok, format!("mode {mode:o}"))
    }
}

/// What an env file sets, without values: `key AKIA…WXYZ, region us-east-1`.
fn summary(vars: &BTreeMap<String, String>) -> String {
    let mut parts = Vec::new();
    match (vars.get("AWS_ACCESS_KEY_ID").filter(|k| !k.is_empty()), vars.get("AWS_PROFILE")) {
        (Some(key), _) => parts.push(format!("key {}", key_hint(key))),
        (None, Some(profile)) => parts.push(format!("profile `{profile}`")),
        (None, None) => parts.push("no AWS keys".to_owned()),
    }
    match region_of(vars) {
        Some(region) if env::looks_like_region(region) => parts.push(format!("region {region}")),
        // Never echoed: a value pasted into the wrong setting may be a secret.
        Some(_) => parts.push("region <not a region name>".to_owned()),
        None => {}
    }
    if let Some(endpoint) = vars.get("AWS_ENDPOINT_URL").filter(|e| !e.is_empty()) {
        parts.push(format!("endpoint {endpoint}"));
    }
    parts.join(", ")
}

fn region_of(vars: &BTreeMap<String, String>) -> Option<&str> {
    ["AWS_REGION", "AWS_DEFAULT_REGION"].iter().filter_map(|k| vars.get(*k)).map(|v| v.trim()).find(|v| !v.is_empty())
}

/// `path` relative to the project when inside it (`terraform/.env`).
fn short(project: &Path, path: &Path) -> String {
    path.strip_prefix(project).unwrap_or(path).display().to_string()
}

// ------------------------------------------------------------------- tools

/// The first executable `name` on PATH.
fn on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// terraform on PATH and recent enough; whether it is usable.
fn check_terraform(report: &mut Report) -> Result<bool> {
    let install = "install Terraform >= 1.5 (https://developer.hashicorp.com/terraform/install) and put it on PATH";
    let Some(path) = on_path("terraform") else {
        report.fail("terraform", "not found on PATH", Some(install));
        return Ok(false);
    };
    let out = match Command::new("terraform").args(["version", "-json"]).quiet().run() {
        Ok(out) => out,
        Err(err) if err.is::<crate::process::Interrupted>() => return Err(err),
        Err(err) => {
            report.fail("terraform", &format!("{} cannot be run: {err:#}", path.display()), Some(install));
            return Ok(false);
        }
    };
    let version = serde_json::from_str::<Value>(&out.stdout)
        .ok()
        .and_then(|v| v["terraform_version"].as_str().map(str::to_owned))
        .filter(|_| out.success());
    let Some(version) = version else {
        report.fail(
            "terraform",
            &format!("`{} version -json` failed:\n{}", path.display(), out.tail(3)),
            Some(install),
        );
        return Ok(false);
    };
    let mut numbers = version.split(|c: char| !c.is_ascii_digit()).map(|n| n.parse::<u64>().unwrap_or(0));
    let (major, minor) = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    if (major, minor) < MIN_TERRAFORM {
        report.fail("terraform", &format!("{version} ({}): the stack needs >= 1.5", path.display()), Some(install));
        return Ok(false);
    }
    report.ok("terraform", &format!("{version} ({})", path.display()));
    Ok(true)
}

/// The docker client and its engine. Only `image` and `all` need them, but
/// a deploy needs those, so a problem is a FAIL.
fn check_docker(report: &mut Report) -> Result<()> {
    let Some(path) = on_path("docker") else {
        report.fail(
            "docker",
            "not found on PATH: `casey-deploy image` and `all` cannot build the image",
            Some(
                "install Docker (client and engine, https://docs.docker.com/engine/install/) and put `docker` on PATH",
            ),
        );
        return Ok(());
    };
    let out = match Command::new("docker")
        .args(["version", "--format", "{{.Client.Version}}|{{.Server.Version}}"])
        .quiet()
        .run()
    {
        Ok(out) => out,
        Err(err) if err.is::<crate::process::Interrupted>() => return Err(err),
        Err(err) => {
            report.fail("docker", &format!("{} cannot be run: {err:#}", path.display()), None);
            return Ok(());
        }
    };
    let stdout = out.stdout.trim();
    let (client, server) = stdout.split_once('|').unwrap_or((stdout, ""));
    let client = if client.is_empty() || client.contains("<no value>") { "?" } else { client };
    if out.success() && !server.is_empty() && !server.contains("<no value>") {
        report.ok("docker", &format!("client {client}, engine {server}"));
        return Ok(());
    }
    let why = out.stderr.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("no answer").to_owned();
    let host = std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty());
    let fix = match &host {
        Some(host) => format!("start the engine DOCKER_HOST={host} points to, or unset DOCKER_HOST; `docker version` repeats this check"),
        None => "start the Docker engine (e.g. `sudo systemctl start docker`, or Docker Desktop); `docker version` repeats this check".to_owned(),
    };
    report.fail(
        "docker",
        &format!("client {client}, engine not reachable ({why}): `casey-deploy image` and `all` would fail"),
        Some(&fix),
    );
    Ok(())
}

/// `terraform init -backend=false`: is the AWS provider installable?
fn check_provider(report: &mut Report, tf_dir: &Path) -> Result<bool> {
    let chdir = format!("-chdir={}", tf_dir.display());
    let out = Command::new("terraform")
        .arg(&chdir)
        .args(["init", "-input=false", "-backend=false", "-no-color"])
        .quiet()
        .run()?;
    if out.success() {
        let version = Command::new("terraform")
            .arg(&chdir)
            .args(["version", "-json"])
            .quiet()
            .run()
            .ok()
            .and_then(|o| serde_json::from_str::<Value>(&o.stdout).ok())
            .and_then(|v| v["provider_selections"][AWS_PROVIDER].as_str().map(str::to_owned));
        let found = match version {
            Some(v) => format!("hashicorp/aws {v} installed (terraform init -backend=false)"),
            None => "installed (terraform init -backend=false)".to_owned(),
        };
        report.ok("aws provider", &found);
        return Ok(true);
    }
    let text = format!("{}\n{}", out.stdout, out.stderr);
    let mut found = "hashicorp/aws could not be installed (`terraform init` failed):".to_owned();
    for line in relevant_lines(&text) {
        found.push('\n');
        found.push_str(&line);
    }
    let config = std::env::var("TF_CLI_CONFIG_FILE").ok().filter(|c| !c.is_empty());
    let fix = match config {
        Some(config) if !Path::new(&config).exists() => format!(
            "TF_CLI_CONFIG_FILE={config} does not exist: point it at a CLI config whose provider_installation has a mirror of hashicorp/aws, then `terraform -chdir={} init`",
            tf_dir.display()
        ),
        _ if text.contains("registry.terraform.io") || text.contains("dial tcp") => format!(
            "no access to registry.terraform.io: allow it, or set TF_CLI_CONFIG_FILE to a CLI config with a provider mirror (provider_installation {{ filesystem_mirror {{ … }} }}) holding hashicorp/aws; then `terraform -chdir={} init`",
            tf_dir.display()
        ),
        _ => format!(
            "fix the errors shown, then `terraform -chdir={} init` (a provider mirror goes in the CLI config named by TF_CLI_CONFIG_FILE)",
            tf_dir.display()
        ),
    };
    report.fail("aws provider", &found, Some(&fix));
    Ok(false)
}

/// The lines of terraform's output that say what went wrong: each `Error:`
/// with the few lines after it, and a warning about the CLI config file.
fn relevant_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut take = 0;
    for line in text.lines() {
        let l = line.trim_start_matches(['│', '╷', '╵', ' ']).trim_end();
        if l.is_empty() {
            continue;
        }
        if l.starts_with("Error:") || l.starts_with("Warning: Unable to open CLI configuration") {
            take = 5;
        }
        if take > 0 {
            lines.push(l.to_owned());
            take -= 1;
        }
        if lines.len() >= 12 {
            break;
        }
    }
    if lines.is_empty() {
        lines = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect();
        lines = lines.split_off(lines.len().saturating_sub(5));
    }
    lines
}

// ------------------------------------------------------------- credentials

/// What the deploy credentials turned out to be.
#[derive(Default)]
struct Deploy {
    sdk: Option<SdkConfig>,
    region: Option<String>,
    identity: Option<Identity>,
    access_key: Option<String>,
}

/// Terraform's credentials (the layered environment, as `infra` uses it).
async fn deploy_identity(report: &mut Report, settings: Option<&Settings>, principals: &Principals) -> Deploy {
    let label = "deploy credentials";
    let mut deploy = Deploy::default();
    // Without settings, why is already printed (a FAIL on terraform/.env or here).
    let Some(settings) = settings else { return deploy };
    let sdk = match crate::aws::load().await {
        Ok(sdk) => sdk,
        Err(err) => {
            report.fail(label, &format!("{err:#}"), None);
            return deploy;
        }
    };
    deploy.region = sdk.region().map(|r| r.to_string());
    deploy.access_key = std::env::var("AWS_ACCESS_KEY_ID").ok().filter(|k| !k.is_empty());
    // Without a region (its own FAIL below) STS is still asked, in us-east-1.
    let sts =
        if sdk.region().is_some() { sdk.clone() } else { sdk.to_builder().region(Region::new("us-east-1")).build() };
    deploy.sdk = Some(sdk);
    let identity = match identity::caller(&sts, settings).await {
        Ok(identity) => identity,
        Err(err) => {
            report.fail(label, &format!("{err:#}"), None);
            return deploy;
        }
    };
    let from = match (&settings.source, &deploy.access_key) {
        (Source::EnvFile(_) | Source::Environment, Some(key)) => format!("{}, key {}", settings.source, key_hint(key)),
        (source, _) => source.to_string(),
    };
    let from = redact(&from);
    match principals.classify(&identity.arn) {
        Role::Admin => report.ok(label, &format!("admin: {} ({from})", identity.arn)),
        Role::Service => report.fail(
            label,
            &format!(
                "the SERVICE ACCOUNT: {} ({from}); it must never run Terraform or deploy",
                identity.arn
            ),
            Some(&format!(
                "put the admin's ({}) keys in terraform/.env (or use an admin AWS_PROFILE); the service account's keys belong in backend/.env",
                principals.admin_user
            )),
        ),
        Role::Other => report.fail(
            label,
            &format!("other: {} ({from}) is not the admin user `{}`", identity.arn, principals.admin_user),
            Some("use the admin's credentials, or pass --admin-user NAME (another admin name) or --admin-principal ARN (an SSO/assumed role)"),
        ),
    }
    deploy.identity = Some(identity);
    deploy
}

/// The principal backend/.env's credentials belong to, asked with the same
/// HTTP client, region and endpoint as the deploy (unless the file sets its own).
async fn backend_identity(
    report: &mut Report,
    path: &Path,
    vars: &BTreeMap<String, String>,
    sdk: &SdkConfig,
    deploy_region: Option<&str>,
    principals: &Principals,
) -> Option<Identity> {
    let label = "backend credentials";
    let key = vars.get("AWS_ACCESS_KEY_ID").filter(|k| !k.is_empty());
    let secret = vars.get("AWS_SECRET_ACCESS_KEY").filter(|k| !k.is_empty());
    let profile = vars.get("AWS_PROFILE").filter(|k| !k.is_empty());
    let put_keys = format!("put the service account's ({}) keys in {}", principals.service_user, path.display());
    let (provider, source) = match (key, secret, profile) {
        (Some(key), Some(secret), _) => {
            let creds = Credentials::new(
                key,
                secret,
                vars.get("AWS_SESSION_TOKEN").filter(|t| !t.is_empty()).cloned(),
                None,
                "backend/.env",
            );
            (SharedCredentialsProvider::new(creds), format!("key {}", key_hint(key)))
        }
        (Some(_), None, _) => {
            report.warn(label, "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not", Some(&put_keys));
            return None;
        }
        (None, _, Some(profile)) => {
            let provider = aws_config::profile::ProfileFileCredentialsProvider::builder().profile_name(profile).build();
            (SharedCredentialsProvider::new(provider), format!("profile `{profile}`"))
        }
        (None, _, None) => {
            report.warn(label, "none in backend/.env: a local backend runs without AWS", Some(&put_keys));
            return None;
        }
    };
    let region = region_of(vars).or(deploy_region).unwrap_or("us-east-1");
    let mut builder = sdk.to_builder().credentials_provider(provider).region(Region::new(region.to_owned()));
    if let Some(endpoint) = vars.get("AWS_ENDPOINT_URL").filter(|e| !e.is_empty()) {
        builder = builder.endpoint_url(endpoint.clone());
    }
    let backend_sdk = builder.build();
    let settings = Settings {
        source: match profile.filter(|_| key.is_none()) {
            Some(profile) => Source::Profile(profile.clone()),
            None => Source::EnvFile(path.to_path_buf()),
        },
        warnings: Vec::new(),
    };
    let identity = match identity::caller(&backend_sdk, &settings).await {
        Ok(identity) => identity,
        Err(err) => {
            // The deploy does not use these keys: a local backend would fail.
            report.warn(label, &format!("{err:#}"), None);
            return None;
        }
    };
    match principals.classify(&identity.arn) {
        Role::Service => report.ok(label, &format!("service: {} ({source})", identity.arn)),
        Role::Admin => report.fail(
            label,
            &format!("the ADMIN: {} ({source}); the backend must never run as the admin", identity.arn),
            Some(&put_keys),
        ),
        Role::Other => report.warn(
            label,
            &format!("other: {} ({source}) is not the service account `{}`", identity.arn, principals.service_user),
            Some(&format!("{put_keys}, or pass --service-user NAME")),
        ),
    }
    Some(identity)
}

/// Terraform and the backend must not share keys (the guard every deploy
/// verb runs refuses) nor be the same principal.
fn check_separation(
    report: &mut Report,
    deploy: &Deploy,
    backend: Option<&BTreeMap<String, String>>,
    backend_id: Option<&Identity>,
) {
    let label = "key separation";
    let backend_key = backend.and_then(|vars| vars.get("AWS_ACCESS_KEY_ID")).filter(|k| !k.is_empty());
    let fix = "keep the admin's keys in terraform/.env and put the service account's keys in backend/.env";
    if let (Some(deploy_key), Some(backend_key)) = (&deploy.access_key, backend_key) {
        if deploy_key == backend_key {
            report.fail(
                label,
                &format!("terraform and backend/.env use the same access key ({})", key_hint(deploy_key)),
                Some(fix),
            );
            return;
        }
    }
    match (&deploy.identity, backend_id) {
        (Some(d), Some(b)) if d.arn == b.arn => {
            report.fail(label, &format!("terraform and backend/.env are the same principal ({})", d.arn), Some(fix));
        }
        (Some(_), Some(_)) => report.ok(label, "terraform and backend/.env use different principals and keys"),
        _ => {}
    }
}

/// The account pin every deploy verb enforces (`--account`, the state's
/// `account_id`), against the deploy credentials.
fn check_account(report: &mut Report, explicit: Option<&str>, tf_dir: &Path, caller: Option<&Identity>) {
    let label = "account";
    let pin = match identity::account_pin(explicit, tf_dir) {
        Ok(pin) => pin,
        Err(err) => {
            report.fail(label, &format!("{err:#}"), None);
            return;
        }
    };
    let Some(caller) = caller else { return };
    match identity::check_account(caller, pin.as_ref()) {
        Ok(()) => match &pin {
            Some(pin) => report.ok(label, &format!("{} (pinned by {})", caller.account, pin.source)),
            None => report.ok(label, &format!("{} (not pinned yet: the first apply records it)", caller.account)),
        },
        Err(err) => report.fail(label, &format!("{err:#}"), None),
    }
}

fn check_region(
    report: &mut Report,
    env_file: &Path,
    project: &Path,
    deploy: Option<&str>,
    backend: Option<&BTreeMap<String, String>>,
) {
    let label = "region";
    let backend_region = backend.and_then(region_of);
    let Some(deploy) = deploy else {
        report.fail(
            label,
            "no AWS region is set for terraform",
            Some(&format!("add AWS_REGION=us-east-1 (or your region) to {}", short(project, env_file))),
        );
        return;
    };
    if !env::looks_like_region(deploy) {
        report.fail(
            label,
            "terraform's AWS_REGION is not a region name (its value is not shown, in case a key was pasted there)",
            Some(&format!("set AWS_REGION=us-east-1 (or your region) in {}", short(project, env_file))),
        );
        return;
    }
    let backend_region = backend_region.filter(|b| env::looks_like_region(b));
    match backend_region {
        Some(b) if b != deploy => report.warn(
            label,
            &format!("terraform uses {deploy}, backend/.env {b}: a local backend would look for the stack's resources in {b}"),
            Some("set the same AWS_REGION in terraform/.env and backend/.env"),
        ),
        Some(_) => report.ok(label, &format!("{deploy} (backend/.env: the same)")),
        None => report.ok(label, deploy),
    }
}

// ------------------------------------------------------------------- stack

/// Has the stack been applied? Its cluster, service and ALB setting.
fn check_stack(report: &mut Report, tf_dir: &Path, deploy: &Deploy) -> Result<()> {
    let tf = Terraform::new(tf_dir, &[], &[], &[]);
    let outputs = match tf.outputs() {
        Ok(outputs) => outputs,
        Err(err) if err.is::<crate::process::Interrupted>() => return Err(err),
        Err(err) => {
            report.warn("stack", &format!("could not read the outputs: {err:#}"), Some("`casey-deploy infra`"));
            return Ok(());
        }
    };
    if outputs.is_empty() {
        report.warn("stack", "not applied (terraform has no outputs)", Some("run `casey-deploy infra`"));
        return Ok(());
    }
    let text = |name: &str| match outputs.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let (Some(cluster), Some(service)) = (text("ecs_cluster_name"), text("ecs_service_name")) else {
        report.warn(
            "stack",
            "applied, but without the ECS cluster/service outputs (an older configuration, or an incomplete apply)",
            Some("run `casey-deploy infra`"),
        );
        return Ok(());
    };
    let mut found = format!("applied: ECS cluster {cluster}, service {service}");
    if let Some(region) = text("aws_region") {
        found.push_str(&format!(", region {region}"));
    }
    let account = text("account_id");
    if let Some(account) = &account {
        found.push_str(&format!(", account {account}"));
    }
    // A different account is the `account` check's FAIL.
    let (region, applied_region) = (deploy.region.as_deref(), text("aws_region"));
    match (region, applied_region) {
        (Some(now), Some(then)) if now != then => report.warn(
            "stack",
            &format!("{found}; but terraform's region is now {now}"),
            Some(&format!("set AWS_REGION={then} in terraform/.env")),
        ),
        _ => report.ok("stack", &found),
    }
    check_alb(report, &outputs);
    Ok(())
}

fn check_alb(report: &mut Report, outputs: &Map<String, Value>) {
    let dns = outputs.get("alb_dns_name").and_then(Value::as_str).filter(|s| !s.is_empty());
    let url = outputs.get("recommended_ws_url").and_then(Value::as_str).filter(|s| !s.is_empty());
    match (outputs.get("enable_alb").and_then(Value::as_bool), dns) {
        (Some(true), Some(dns)) => {
            let url = url.map(|u| format!(", frontend URL {u}")).unwrap_or_default();
            report.ok("alb", &format!("enabled: {dns}{url}"));
        }
        (Some(true), None) => report.warn(
            "alb",
            "enabled, but the stack has no ALB DNS name (the apply did not complete)",
            Some("run `casey-deploy infra`"),
        ),
        (Some(false), _) => report.ok(
            "alb",
            "disabled: the backend URL is a task's public IP (`casey-deploy backend-url`); `casey-deploy infra --var enable_alb=true` adds one",
        ),
        (None, _) => report.warn(
            "alb",
            "unknown: the stack's outputs have no enable_alb (applied from an older configuration)",
            Some("run `casey-deploy infra`"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relevant_lines_are_the_errors() {
        let text = "Initializing provider plugins...\n╷\n│ Warning: Unable to open CLI configuration file\n│\n│ The CLI configuration file at \"/x\" does not exist.\n╵\n\nError: Failed to query available provider packages\n\nCould not retrieve the list of available versions for provider hashicorp/aws:\ncould not connect to registry.terraform.io\n";
        let lines = relevant_lines(text);
        assert_eq!(lines[0], "Warning: Unable to open CLI configuration file");
        assert!(lines.iter().any(|l| l == "Error: Failed to query available provider packages"), "{lines:?}");
        assert!(lines.iter().any(|l| l.contains("registry.terraform.io")), "{lines:?}");
        assert!(!lines.iter().any(|l| l.contains("Initializing")), "{lines:?}");
    }

    #[test]
    fn env_summary_has_no_secrets() {
        let vars: BTreeMap<String, String> = [
            ("AWS_ACCESS_KEY_ID", "AKIDABCDEFGHIJKLWXYZ"),
            ("AWS_SECRET_ACCESS_KEY", "very-secret-value-0001"),
            ("AWS_REGION", "eu-west-1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let s = summary(&vars);
        assert_eq!(s, "key AKID…WXYZ, region eu-west-1");
    }
}
