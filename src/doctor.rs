//! `casey-deploy doctor`: one screen that says whether a deploy can work.
//!
//! Doctor owns no rule of its own: it runs the checks the modules export
//! (the same functions the verbs run, which stop at the first problem) and
//! lists every one: a line per check on stderr (`ok`, `warn`, `FAIL` or
//! `skip`, what was found and, for a problem, the command that fixes it),
//! and under `--json` one document `{"ok", "checks": [{"check", "verdict",
//! "found", "fix"}]}`. It fails (exit 1) only when a deploy would fail.
//! Keys are shown as [`key_hint`]s, and all output is masked.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context as _, Result};
use aws_config::{Region, SdkConfig};
use serde_json::{json, Value};

use crate::check::{Problem, Severity};
use crate::env::{self, Settings, Source};
use crate::identity::{self, Identity, Principals, BACKEND_CREDENTIALS, DEPLOY_CREDENTIALS};
use crate::process::check_interrupted;
use crate::redact::key_hint;
use crate::terraform::{self, Terraform};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Ok,
    Warn,
    Fail,
    /// Not run because an earlier check failed; not counted.
    Skip,
}

struct Row {
    check: &'static str,
    verdict: Verdict,
    found: String,
    fix: String,
}

/// The checks so far, each printed as it is recorded.
#[derive(Default)]
struct Report {
    rows: Vec<Row>,
}

impl Report {
    fn push(&mut self, check: &'static str, verdict: Verdict, found: String, fix: String) {
        let tag = match verdict {
            Verdict::Ok => "ok",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "skip",
        };
        // `found` may span lines: the rest are indented below the first.
        let mut lines = found.lines().map(str::trim_end).filter(|l| !l.trim().is_empty());
        let first = lines.next().unwrap_or("");
        let rest: Vec<&str> = lines.collect();
        let fix_text = (!fix.is_empty()).then(|| format!("→ fix: {fix}"));
        let indent = " ".repeat(2 + 5 + 21);
        match (&fix_text, rest.is_empty()) {
            (Some(fix), true) => crate::say!("  {tag:<4} {check:<20} {first} {fix}"),
            _ => crate::say!("  {tag:<4} {check:<20} {first}"),
        }
        for line in &rest {
            crate::say!("{indent}{line}");
        }
        if let (Some(fix), false) = (&fix_text, rest.is_empty()) {
            crate::say!("{indent}{fix}");
        }
        self.rows.push(Row { check, verdict, found, fix });
    }

    fn ok(&mut self, check: &'static str, found: impl Into<String>) {
        self.push(check, Verdict::Ok, found.into(), String::new());
    }

    fn problem(&mut self, problem: Problem) {
        let verdict = match problem.severity {
            Severity::Warn => Verdict::Warn,
            Severity::Fail => Verdict::Fail,
        };
        self.push(problem.check, verdict, problem.found, problem.fix);
    }

    fn skip(&mut self, check: &'static str, why: &str) {
        self.push(check, Verdict::Skip, format!("not checked: {why}"), String::new());
    }

    /// A check's result: `ok` with what `Ok` holds, or its problem. The value, when `Ok`.
    fn record<T: std::fmt::Display>(&mut self, check: &'static str, result: Result<T, Problem>) -> Option<T> {
        match result {
            Ok(value) => {
                self.ok(check, value.to_string());
                Some(value)
            }
            Err(problem) => {
                self.problem(problem);
                None
            }
        }
    }

    fn count(&self, verdict: Verdict) -> usize {
        self.rows.iter().filter(|r| r.verdict == verdict).count()
    }

    fn finish(self) -> Result<()> {
        let (failures, warnings) = (self.count(Verdict::Fail), self.count(Verdict::Warn));
        let checks: Vec<Value> = self
            .rows
            .iter()
            .map(|row| {
                let verdict = match row.verdict {
                    Verdict::Ok => "ok",
                    Verdict::Warn => "warn",
                    Verdict::Fail => "fail",
                    Verdict::Skip => "skip",
                };
                let fix = (!row.fix.is_empty()).then_some(row.fix.as_str());
                json!({ "check": row.check, "verdict": verdict, "found": row.found, "fix": fix })
            })
            .collect();
        crate::output::document(&json!({ "ok": failures == 0, "checks": checks }));
        let warnings = match warnings {
            0 => String::new(),
            1 => ", 1 warning".to_owned(),
            n => format!(", {n} warnings"),
        };
        if failures > 0 {
            let checks = if failures == 1 { "1 check".to_owned() } else { format!("{failures} checks") };
            bail!(
                "{checks} FAILED{warnings}: a deploy would fail; each FAIL above ends with the command that fixes it"
            );
        }
        crate::say!("no check failed{warnings}: a deploy can work");
        Ok(())
    }
}

/// Run every check; fails (exit 1) when any check failed.
pub fn run(global: &crate::context::Options) -> Result<()> {
    let mut report = Report::default();
    let project = match crate::context::find_project(global.project_dir.as_deref()) {
        Ok(project) => project,
        Err(err) => {
            report.problem(Problem::fail("project", format!("{err:#}"), ""));
            return report.finish();
        }
    };
    let environment = global.environment.as_str();
    crate::say!("casey-deploy doctor: {} (environment {environment})", project.display());
    // Secrets already in the environment are masked whatever happens next.
    env::register_secrets(std::env::vars());
    // As for every verb: terraform must not phone home.
    if std::env::var_os("CHECKPOINT_DISABLE").is_none() {
        std::env::set_var("CHECKPOINT_DISABLE", "1");
    }
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
        None => (crate::environment::env_file(&project.join("terraform"), environment), false),
    };
    let settings = deploy_env(&mut report, &env_file, explicit);
    let backend_path = project.join("backend").join(".env");
    let backend = match env::check_backend_present(&backend_path, &principals.service_user) {
        Ok(()) => present_env_file(&mut report, env::BACKEND_FILE, env::BACKEND_MODE, &backend_path),
        Err(problem) => {
            report.problem(problem);
            None
        }
    };
    check_interrupted()?;

    // Tools.
    let terraform_ok = report.record("terraform", terraform::check_version()).is_some();
    report.record("docker", crate::docker::check());
    let tf_dir = project.join("terraform");
    let provider_ok = if terraform_ok {
        report.record("aws provider", terraform::check_provider(&tf_dir)).is_some()
    } else {
        report.skip("aws provider", "terraform is not usable (see above)");
        false
    };
    report.record(crate::backend::CHECK, crate::backend::check(&tf_dir, environment));
    check_interrupted()?;

    // Who each set of credentials is.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")?;
    let (sdk, deploy) = match &settings {
        Some(settings) => rt.block_on(deploy_identity(&mut report, settings, &principals)),
        None => (None, None),
    };
    let backend_id = match (&backend, &sdk) {
        (Some(vars), Some(sdk)) => match rt.block_on(identity::backend_caller(sdk, &backend_path, vars, &principals)) {
            Ok((id, source)) => {
                let role = identity::check_backend_caller(&id, &principals, &backend_path);
                report.record(BACKEND_CREDENTIALS, role.map(|()| format!("service: {} ({source})", id.arn)));
                Some(id)
            }
            Err(problem) => {
                report.problem(problem);
                None
            }
        },
        _ => None,
    };
    if let Some(vars) = &backend {
        let deploy_key = std::env::var("AWS_ACCESS_KEY_ID").ok();
        let separate = identity::keys_separate(deploy_key.as_deref(), vars, &backend_path).and_then(|()| {
            match (&deploy, &backend_id) {
                (Some(d), Some(b)) => identity::principals_separate(d, b, &backend_path)
                    .map(|()| "terraform and backend/.env use different principals and keys"),
                _ => Ok("terraform and backend/.env do not share an access key"),
            }
        });
        report.record(identity::SEPARATION, separate);
    }
    let workspace = crate::environment::workspace(environment);
    check_account(&mut report, global.account.as_deref(), &tf_dir, workspace, deploy.as_ref());
    if settings.is_some() {
        let region = sdk.as_ref().and_then(|sdk| sdk.region()).map(|r| r.to_string());
        check_region(&mut report, sdk.is_some(), region.as_deref(), backend.as_ref());
    }
    check_interrupted()?;

    // The stack.
    if provider_ok {
        check_stack(&mut report, &tf_dir, environment, sdk.as_ref())?;
    } else {
        report.skip("stack", "terraform or the AWS provider is not usable (see above)");
    }
    report.finish()
}

/// `terraform/.env` (or --env-file), read as `env::load` reads it, then
/// layered as every verb does. `None` when the settings cannot be loaded.
fn deploy_env(report: &mut Report, path: &Path, explicit: bool) -> Option<Settings> {
    let vars = if path.exists() {
        Some(present_env_file(report, env::DEPLOY_FILE, env::DEPLOY_MODE, path)?)
    } else if explicit {
        report.problem(env::missing_explicit(path));
        return None;
    } else {
        None
    };
    let from_file = vars.is_some();
    let settings = match env::layer(from_file.then_some(path), vars.unwrap_or_default()) {
        Ok(settings) => settings,
        Err(problem) => {
            report.problem(problem);
            return None;
        }
    };
    if !from_file {
        let absent = env::check_source(&settings).map(|()| format!("absent (optional): using {}", settings.source));
        report.record(env::DEPLOY_FILE, absent);
    }
    Some(settings)
}

/// An env file that exists: its permissions, then what it holds. `None`
/// when it cannot be read.
fn present_env_file(
    report: &mut Report,
    check: &'static str,
    mode_check: &'static str,
    path: &Path,
) -> Option<BTreeMap<String, String>> {
    let vars = env::read_env_file(check, path);
    report.record(check, vars.as_ref().map(|vars| format!("present, {}", summary(vars))).map_err(Clone::clone));
    report.record(mode_check, env::check_permissions(mode_check, path));
    vars.ok()
}

/// What an env file sets, without values: `key AKIA…WXYZ, region us-east-1`.
fn summary(vars: &BTreeMap<String, String>) -> String {
    let mut parts = Vec::new();
    match (vars.get("AWS_ACCESS_KEY_ID").filter(|k| !k.is_empty()), vars.get("AWS_PROFILE")) {
        (Some(key), _) => parts.push(format!("key {}", key_hint(key))),
        (None, Some(profile)) => parts.push(format!("profile `{profile}`")),
        (None, None) => parts.push("no AWS keys".to_owned()),
    }
    match env::region_of(vars) {
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

/// Terraform's credentials (the layered environment, as `infra` uses it):
/// the SDK config, when it loads, and the caller, when STS knows it.
async fn deploy_identity(
    report: &mut Report,
    settings: &Settings,
    principals: &Principals,
) -> (Option<SdkConfig>, Option<Identity>) {
    let sdk = match crate::aws::load().await {
        Ok(sdk) => sdk,
        Err(err) => {
            report.problem(Problem::fail(DEPLOY_CREDENTIALS, format!("{err:#}"), ""));
            return (None, None);
        }
    };
    // Without a region (the `region` check's problem) STS is still asked, in us-east-1.
    let sts =
        if sdk.region().is_some() { sdk.clone() } else { sdk.to_builder().region(Region::new("us-east-1")).build() };
    let identity = match identity::caller(&sts, settings).await {
        Ok(identity) => identity,
        Err(problem) => {
            report.problem(problem);
            return (Some(sdk), None);
        }
    };
    let key = std::env::var("AWS_ACCESS_KEY_ID").ok().filter(|k| !k.is_empty());
    let from = match (&settings.source, &key) {
        (Source::EnvFile(_) | Source::Environment, Some(key)) => format!("{}, key {}", settings.source, key_hint(key)),
        (source, _) => source.to_string(),
    };
    let role = identity::check_caller(&identity, principals).map(|()| format!("admin: {} ({from})", identity.arn));
    report.record(DEPLOY_CREDENTIALS, role);
    (Some(sdk), Some(identity))
}

/// The account pin every deploy verb enforces, against the deploy credentials.
fn check_account(
    report: &mut Report,
    explicit: Option<&str>,
    tf_dir: &Path,
    workspace: &str,
    caller: Option<&Identity>,
) {
    let backend = crate::backend::configured(tf_dir).ok().flatten();
    let pin = match identity::account_pin(explicit, tf_dir, workspace, backend.as_ref()) {
        Ok(pin) => pin,
        Err(problem) => return report.problem(problem),
    };
    let Some(caller) = caller else { return };
    let found = match &pin {
        Some(pin) => format!("{} (pinned by {})", caller.account, pin.source),
        None => format!("{} (not pinned yet: the first apply records it)", caller.account),
    };
    report.record(identity::ACCOUNT, identity::check_account(caller, pin.as_ref()).map(|()| found));
}

/// The region checks the guard runs, then whether backend/.env agrees.
fn check_region(report: &mut Report, loaded: bool, region: Option<&str>, backend: Option<&BTreeMap<String, String>>) {
    let checked = env::check_region().and_then(|()| match loaded {
        true => env::require_region(region),
        false => Ok(()),
    });
    let Some(region) = region.filter(|_| checked.is_ok()) else {
        if let Err(problem) = checked {
            report.problem(problem);
        }
        return;
    };
    let same = match backend.and_then(env::region_of) {
        Some(_) => " (backend/.env: the same)",
        None => "",
    };
    let agreed = match backend {
        Some(vars) => env::check_backend_region(region, vars),
        None => Ok(()),
    };
    report.record("region", agreed.map(|()| format!("{region}{same}")));
}

/// Has the stack been applied? Its cluster, service and ALB setting.
fn check_stack(report: &mut Report, tf_dir: &Path, environment: &str, sdk: Option<&SdkConfig>) -> Result<()> {
    let tf = Terraform::new(tf_dir, environment, &[], &crate::terraform::Vars::default());
    let outputs = match tf.outputs() {
        Ok(outputs) => outputs,
        Err(err) if err.is::<crate::process::Interrupted>() => return Err(err),
        Err(err) => {
            let found = format!("could not read the outputs: {err:#}");
            report.problem(Problem::warn("stack", found, "run `casey-deploy infra`"));
            return Ok(());
        }
    };
    let region = sdk.and_then(|sdk| sdk.region()).map(|r| r.to_string());
    report.record("stack", crate::outputs::check_stack(&outputs, region.as_deref()));
    if !outputs.is_empty() {
        report.record("alb", crate::outputs::check_alb(&outputs));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
