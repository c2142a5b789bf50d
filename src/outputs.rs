//! The stack's outputs, typed, from ONE `terraform output -json`.
//!
//! `image`, the rollout and `backend-url` need the same handful of values,
//! so they are read once.
//!
//! Speed: in the stack's folder `terraform output` takes ~0.6 s, 0.55 s of it
//! spent checksumming the ~700 MB AWS provider binary against the lock file
//! before it reads the state. With a plain local state (no backend block,
//! the default workspace) the same `terraform output -json -state=FILE` run
//! from an empty folder reads the same file without loading the
//! configuration or its providers: ~0.05 s. Any other setup (S3, Terraform
//! Cloud, workspaces) takes the normal path.

use std::path::Path;

use anyhow::{bail, Context as _, Result};
use serde_json::{Map, Value};

use crate::check::Problem;
use crate::process::Command;
use crate::terraform::Terraform;

/// What the deploy verbs need from the applied stack.
#[derive(Debug, Clone, PartialEq)]
pub struct Outputs {
    /// `<registry host>/<repository name>`, e.g. `123.dkr.ecr.us-east-1.amazonaws.com/casey-backend`.
    pub ecr_repository_url: String,
    pub ecs_cluster_name: String,
    pub ecs_service_name: String,
    /// `None` when the stack has no ALB.
    pub alb_dns_name: Option<String>,
    /// The ECS tasks' log group (`None` from a stack applied before it was an output).
    pub ecs_log_group_name: Option<String>,
    /// `None` when the stack has no ALB.
    pub recommended_ws_url: Option<String>,
    pub aws_region: String,
    pub container_name: String,
    pub container_port: u16,
    /// The release record (`None` when backend_container_image pins the image).
    pub release_parameter_name: Option<String>,
}

const NOT_APPLIED: &str = "the stack has not been applied: run `casey-deploy infra` first";

impl Outputs {
    /// Read the outputs of the stack `tf` applies.
    pub fn load(tf: &Terraform) -> Result<Outputs> {
        Outputs::from_map(&load_map(tf)?)
    }

    /// Parse the `name → value` map [`crate::terraform::Terraform::outputs`] returns.
    pub fn from_map(map: &Map<String, Value>) -> Result<Outputs> {
        if map.is_empty() {
            bail!("{NOT_APPLIED} (terraform reports no outputs)");
        }
        let mut missing = Vec::new();
        let mut text = |name: &str| match map.get(name) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => {
                missing.push(name.to_owned());
                String::new()
            }
        };
        let ecr_repository_url = text("ecr_repository_url");
        let ecs_cluster_name = text("ecs_cluster_name");
        let ecs_service_name = text("ecs_service_name");
        let aws_region = text("aws_region");
        let container_name = text("container_name");
        let container_port = text("container_port");
        if !missing.is_empty() {
            bail!(
                "the stack's outputs lack {}: it was applied from an older configuration or not completely; run `casey-deploy infra` first",
                missing.join(", ")
            );
        }
        let nullable = |name: &str| map.get(name).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
        let outputs = Outputs {
            container_port: container_port
                .parse()
                .with_context(|| format!("the stack's output container_port is `{container_port}`, not a port"))?,
            ecr_repository_url,
            ecs_cluster_name,
            ecs_service_name,
            alb_dns_name: nullable("alb_dns_name"),
            ecs_log_group_name: nullable("ecs_log_group_name"),
            recommended_ws_url: nullable("recommended_ws_url"),
            aws_region,
            container_name,
            release_parameter_name: nullable("release_parameter_name"),
        };
        if !outputs.ecr_repository_url.contains('/') {
            bail!(
                "the stack's output ecr_repository_url `{}` is not <registry>/<repository>",
                outputs.ecr_repository_url
            );
        }
        Ok(outputs)
    }
}

/// The `name → value` map of the stack's outputs: the local state file read
/// directly when that is what terraform would read, else `terraform output`.
pub fn load_map(tf: &Terraform) -> Result<Map<String, Value>> {
    // Neither initialised nor a local state: a fresh checkout, from which
    // the stack was never applied (terraform would only ask for `init`).
    if !tf.dir().join(".terraform").is_dir()
        && !crate::environment::local_state_path(tf.dir(), tf.workspace()).is_file()
    {
        bail!("{NOT_APPLIED} (terraform was never initialised in {})", tf.dir().display());
    }
    if let Some(state) = crate::terraform::local_state(tf.dir(), tf.workspace()) {
        match outputs_of_state_file(&state) {
            Ok(map) => return Ok(map),
            Err(err) => crate::say!("note: reading {} directly failed ({err:#}); asking terraform", state.display()),
        }
    }
    tf.outputs().map_err(|err| {
        if format!("{err:#}").contains("terraform init") {
            err.context(format!("could not read the stack's outputs: {NOT_APPLIED}"))
        } else {
            err.context("could not read the stack's outputs")
        }
    })
}

/// The stack's image repository: all a push needs. It exists before the ECS
/// service does (the first apply creates the service only once an image is
/// in the repository).
#[derive(Debug, Clone, PartialEq)]
pub struct Repository {
    /// `<registry host>/<repository name>`.
    pub url: String,
    pub region: String,
}

impl Repository {
    /// The outputs of a partial first apply lack `aws_region` (no targeted
    /// resource refers to it): it is then the region this run passes.
    pub fn load(tf: &Terraform, region: &str) -> Result<Repository> {
        Repository::from_map(&load_map(tf)?, region)
    }

    pub fn from_map(map: &Map<String, Value>, region: &str) -> Result<Repository> {
        let text = |name: &str| map.get(name).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
        let Some(url) = text("ecr_repository_url") else {
            bail!("{NOT_APPLIED} (the outputs have no ecr_repository_url)");
        };
        let region = text("aws_region").unwrap_or_else(|| region.to_owned());
        if !url.contains('/') {
            bail!("the stack's output ecr_repository_url `{url}` is not <registry>/<repository>");
        }
        Ok(Repository { url, region })
    }

    /// The registry host (`123.dkr.ecr.us-east-1.amazonaws.com`).
    pub fn registry(&self) -> &str {
        self.url.split_once('/').map_or(&*self.url, |(host, _)| host)
    }

    /// The repository's name inside its registry (`casey-backend`).
    pub fn name(&self) -> &str {
        self.url.split_once('/').map_or("", |(_, name)| name)
    }
}

/// `terraform output -json -state=FILE` from an empty folder: terraform
/// reads the state without loading the configuration's providers.
fn outputs_of_state_file(state: &Path) -> Result<Map<String, Value>> {
    let empty = tempfile::Builder::new()
        .prefix("casey-deploy-outputs-")
        .tempdir()
        .context("could not create a temporary folder for `terraform output`")?;
    let out = Command::new("terraform")
        .arg(format!("-chdir={}", empty.path().display()))
        .args(["output", "-json", "-no-color"])
        .arg(format!("-state={}", state.display()))
        .quiet()
        .run();
    drop(empty);
    let out = out?;
    if !out.success() {
        bail!("`terraform output -state` failed: {}", out.tail(3));
    }
    let json: Value =
        serde_json::from_str(&out.stdout).context("`terraform output -json` printed something that is not JSON")?;
    let map = json.as_object().cloned().unwrap_or_default();
    Ok(map.into_iter().map(|(k, v)| (k, v.get("value").cloned().unwrap_or(Value::Null))).collect())
}

/// Has the stack been applied (`outputs`, from `terraform output`)? `Ok`
/// names its cluster and service; a warning when it was not, or when
/// terraform's region (`region`) is now another than the stack's.
pub fn check_stack(outputs: &Map<String, Value>, region: Option<&str>) -> Result<String, Problem> {
    let infra = "run `casey-deploy infra`";
    if outputs.is_empty() {
        return Err(Problem::warn("stack", "not applied (terraform has no outputs)", infra));
    }
    let text = |name: &str| match outputs.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let (Some(cluster), Some(service)) = (text("ecs_cluster_name"), text("ecs_service_name")) else {
        return Err(Problem::warn(
            "stack",
            "applied, but without the ECS cluster/service outputs (an older configuration, or an incomplete apply)",
            infra,
        ));
    };
    let mut found = format!("applied: ECS cluster {cluster}, service {service}");
    let applied_region = text("aws_region");
    if let Some(region) = &applied_region {
        found.push_str(&format!(", region {region}"));
    }
    // A different account is the `account` check's problem.
    if let Some(account) = text("account_id") {
        found.push_str(&format!(", account {account}"));
    }
    match (region, applied_region) {
        (Some(now), Some(then)) if now != then => Err(Problem::warn(
            "stack",
            format!("{found}; but terraform's region is now {now}"),
            format!("set AWS_REGION={then} in terraform/.env"),
        )),
        _ => Ok(found),
    }
}

/// The applied stack's ALB setting: `Ok` describes it.
pub fn check_alb(outputs: &Map<String, Value>) -> Result<String, Problem> {
    let dns = outputs.get("alb_dns_name").and_then(Value::as_str).filter(|s| !s.is_empty());
    let url = outputs.get("recommended_ws_url").and_then(Value::as_str).filter(|s| !s.is_empty());
    match (outputs.get("enable_alb").and_then(Value::as_bool), dns) {
        (Some(true), Some(dns)) => {
            let url = url.map(|u| format!(", frontend URL {u}")).unwrap_or_default();
            Ok(format!("enabled: {dns}{url}"))
        }
        (Some(true), None) => Err(Problem::warn(
            "alb",
            "enabled, but the stack has no ALB DNS name (the apply did not complete)",
            "run `casey-deploy infra`",
        )),
        (Some(false), _) => Ok(
            "disabled: the backend URL is a task's public IP (`casey-deploy backend-url`); `casey-deploy infra --var enable_alb=true` adds one".to_owned(),
        ),
        (None, _) => Err(Problem::warn(
            "alb",
            "unknown: the stack's outputs have no enable_alb (applied from an older configuration)",
            "run `casey-deploy infra`",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    fn full() -> Value {
        json!({
            "ecr_repository_url": "123456789012.dkr.ecr.us-east-1.amazonaws.com/casey-backend",
            "ecs_cluster_name": "casey-cluster",
            "ecs_service_name": "casey-backend",
            "alb_dns_name": null,
            "recommended_ws_url": null,
            "aws_region": "us-east-1",
            "container_name": "casey-backend",
            "container_port": 3001,
            "account_id": "123456789012",
        })
    }

    #[test]
    fn parses_a_stack_without_alb() {
        let o = Outputs::from_map(&map(full())).unwrap();
        assert_eq!(o.container_port, 3001);
        let repo = Repository::from_map(&map(full()), "eu-west-1").unwrap();
        assert_eq!(repo.region, "us-east-1");
        assert_eq!(repo.registry(), "123456789012.dkr.ecr.us-east-1.amazonaws.com");
        assert_eq!(repo.name(), "casey-backend");
        assert_eq!(repo.url, o.ecr_repository_url);
        assert_eq!(o.container_port, 3001);
        assert_eq!(o.alb_dns_name, None);
        assert_eq!(o.recommended_ws_url, None);
    }

    #[test]
    fn parses_alb_outputs() {
        let mut v = full();
        v["alb_dns_name"] = json!("casey-backend-1.us-east-1.elb.amazonaws.com");
        v["recommended_ws_url"] = json!("ws://casey-backend-1.us-east-1.elb.amazonaws.com/ws");
        let o = Outputs::from_map(&map(v)).unwrap();
        assert_eq!(o.recommended_ws_url.as_deref(), Some("ws://casey-backend-1.us-east-1.elb.amazonaws.com/ws"));
    }

    #[test]
    fn missing_outputs_say_to_run_infra() {
        let err = Outputs::from_map(&Map::new()).unwrap_err().to_string();
        assert!(err.contains("run `casey-deploy infra` first"), "{err}");
        let mut v = full();
        v.as_object_mut().unwrap().remove("ecs_service_name");
        v["ecs_cluster_name"] = Value::Null;
        let err = Outputs::from_map(&map(v)).unwrap_err().to_string();
        assert!(err.contains("ecs_cluster_name, ecs_service_name") && err.contains("casey-deploy infra"), "{err}");
    }
}
