//! The stack's outputs, typed, from ONE `terraform output -json`.
//!
//! `image`, the rollout and `backend-url` need the same handful of values;
//! each `terraform output` costs most of a second, so they are read once.

use anyhow::{bail, Context as _, Result};
use serde_json::{Map, Value};

use crate::cli::TfArgs;
use crate::context::Ctx;

/// What the deploy verbs need from the applied stack.
#[derive(Debug, Clone, PartialEq)]
pub struct Outputs {
    /// `<registry host>/<repository name>`, e.g. `123.dkr.ecr.us-east-1.amazonaws.com/casey-backend`.
    pub ecr_repository_url: String,
    pub ecs_cluster_name: String,
    pub ecs_service_name: String,
    /// `None` when the stack has no ALB.
    pub alb_dns_name: Option<String>,
    /// `None` when the stack has no ALB.
    pub recommended_ws_url: Option<String>,
    pub aws_region: String,
    pub container_name: String,
    pub container_port: u16,
}

const NOT_APPLIED: &str = "the stack has not been applied: run `casey-deploy infra` first";

impl Outputs {
    /// Read the outputs of the stack in `<project>/terraform`.
    pub fn load(ctx: &Ctx) -> Result<Outputs> {
        let map = ctx.terraform(&TfArgs::default()).outputs().context("could not read the stack's outputs")?;
        Outputs::from_map(&map)
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
            recommended_ws_url: nullable("recommended_ws_url"),
            aws_region,
            container_name,
        };
        if !outputs.ecr_repository_url.contains('/') {
            bail!("the stack's output ecr_repository_url `{}` is not <registry>/<repository>", outputs.ecr_repository_url);
        }
        Ok(outputs)
    }

    /// The registry host of the ECR repository (`123.dkr.ecr.us-east-1.amazonaws.com`).
    pub fn registry(&self) -> &str {
        self.ecr_repository_url.split_once('/').map_or(&*self.ecr_repository_url, |(host, _)| host)
    }

    /// The repository's name inside its registry (`casey-backend`).
    pub fn repository_name(&self) -> &str {
        self.ecr_repository_url.split_once('/').map_or("", |(_, name)| name)
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
        assert_eq!(o.registry(), "123456789012.dkr.ecr.us-east-1.amazonaws.com");
        assert_eq!(o.repository_name(), "casey-backend");
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
