//! The release record: the one owner of "which image runs".
//!
//! Every deploy and rollback writes a version of the stack's SSM parameter
//! (`release_parameter_name`, terraform/release.tf): the image by digest, its
//! tag, who, when, and what ECS made of the release before it. The task
//! definition takes its image from the parameter, so the apply that follows
//! registers exactly that image and a later plain `infra` plans no changes.
//! The parameter's version history (Parameter Store keeps the newest 100) is
//! `history`; nothing else stores state.

use anyhow::{anyhow, bail, Result};
use serde_json::{json, Map, Value};

use aws_sdk_ssm::Client;

/// What a deploy or rollback records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// `<repository>@sha256:<digest>`.
    pub image: String,
    pub tag: String,
    pub digest: String,
    /// `deploy` or `rollback` (`created`: Terraform's placeholder, no release).
    pub action: String,
    /// The caller's ARN.
    pub by: String,
    /// RFC 3339, UTC.
    pub at: String,
    /// A rollback: the version it rolled back from, and why (`failed`: the
    /// release failed its rollout; `rollback`: asked for).
    pub from: Option<i64>,
    pub reason: Option<String>,
    /// The release before this one as ECS ran it when this was recorded:
    /// its rollout state and task definition.
    pub previous_outcome: Option<String>,
    pub previous_task_definition: Option<String>,
    pub previous_image: Option<String>,
}

/// One version of the parameter.
#[derive(Debug, Clone)]
pub struct Version {
    pub version: i64,
    pub record: Record,
}

impl Record {
    pub fn new(image: String, tag: String, digest: String, action: &str, by: &str) -> Record {
        Record {
            image,
            tag,
            digest,
            action: action.to_owned(),
            by: by.to_owned(),
            at: now_rfc3339(),
            from: None,
            reason: None,
            previous_outcome: None,
            previous_task_definition: None,
            previous_image: None,
        }
    }

    /// This record for a rollback to it, by `by`, now.
    pub fn again(&self, by: &str) -> Record {
        let mut record = Record::new(self.image.clone(), self.tag.clone(), self.digest.clone(), "rollback", by);
        record.reason = Some("rollback".into());
        record
    }

    fn to_json(&self) -> Value {
        let mut map = Map::new();
        map.insert("image".into(), json!(self.image));
        map.insert("tag".into(), json!(self.tag));
        map.insert("digest".into(), json!(self.digest));
        map.insert("action".into(), json!(self.action));
        map.insert("by".into(), json!(self.by));
        map.insert("at".into(), json!(self.at));
        for (key, value) in [
            ("from", self.from.map(|v| json!(v))),
            ("reason", self.reason.as_ref().map(|v| json!(v))),
            ("previous_outcome", self.previous_outcome.as_ref().map(|v| json!(v))),
            ("previous_task_definition", self.previous_task_definition.as_ref().map(|v| json!(v))),
            ("previous_image", self.previous_image.as_ref().map(|v| json!(v))),
        ] {
            if let Some(value) = value {
                map.insert(key.into(), value);
            }
        }
        Value::Object(map)
    }

    /// A version's value: the JSON this module writes, or a bare image
    /// reference written by hand (as terraform/release.tf accepts too).
    pub fn parse(value: &str, modified: Option<&str>) -> Record {
        let text = |v: &Value, key: &str| v[key].as_str().unwrap_or_default().to_owned();
        match serde_json::from_str::<Value>(value) {
            Ok(v) if v["image"].is_string() => Record {
                image: text(&v, "image"),
                tag: text(&v, "tag"),
                digest: text(&v, "digest"),
                action: v["action"].as_str().unwrap_or("deploy").to_owned(),
                by: text(&v, "by"),
                at: v["at"].as_str().map(str::to_owned).or(modified.map(str::to_owned)).unwrap_or_default(),
                from: v["from"].as_i64(),
                reason: v["reason"].as_str().map(str::to_owned),
                previous_outcome: v["previous_outcome"].as_str().map(str::to_owned),
                previous_task_definition: v["previous_task_definition"].as_str().map(str::to_owned),
                previous_image: v["previous_image"].as_str().map(str::to_owned),
            },
            _ => {
                let image = value.trim().to_owned();
                let digest = image.split_once('@').map(|(_, d)| d.to_owned()).unwrap_or_default();
                let tag = image.rsplit('/').next().and_then(|l| l.split('@').next()).and_then(|l| l.split_once(':'));
                Record {
                    tag: tag.map(|(_, t)| t.to_owned()).unwrap_or_default(),
                    digest,
                    image,
                    action: "deploy".into(),
                    by: "(written by hand)".into(),
                    at: modified.unwrap_or_default().to_owned(),
                    from: None,
                    reason: None,
                    previous_outcome: None,
                    previous_task_definition: None,
                    previous_image: None,
                }
            }
        }
    }

    /// Whether this version names a release (not Terraform's placeholder).
    pub fn is_release(&self) -> bool {
        self.action != "created"
    }
}

/// The parameter's name from the stack's outputs: refuses when
/// `backend_container_image` pins the image instead (Terraform owns it then).
pub fn parameter(map: &Map<String, Value>) -> Result<String> {
    match map.get("release_parameter_name") {
        Some(Value::String(name)) if !name.is_empty() => Ok(name.clone()),
        Some(Value::Null) => {
            let pinned = map.get("backend_image").and_then(Value::as_str).unwrap_or("an image");
            bail!(
                "backend_container_image pins the service to {pinned} in Terraform, so casey-deploy cannot deploy or roll back releases: remove it from your tfvars/--var, run `casey-deploy infra`, then deploy again"
            )
        }
        _ => bail!(
            "the stack has no release record yet (release_parameter_name is not among its outputs): run `casey-deploy infra` first"
        ),
    }
}

/// Write `record` as the parameter's new version; returns the version.
pub async fn put(ssm: &Client, name: &str, record: &Record) -> Result<i64> {
    let value = record.to_json().to_string();
    let out = ssm.put_parameter().name(name).value(value).overwrite(true).send().await.map_err(|e| {
        let next = match crate::aws::failure(&e) {
            crate::aws::Failure::Refused => {
                "; the admin needs ssm:PutParameter on it: run `casey-deploy infra` to update the admin policy"
            }
            _ => "; nothing was deployed: run the same command again",
        };
        anyhow!("could not record the release in SSM parameter {name}: {}{next}", crate::aws::error_text(&e))
    })?;
    Ok(out.version())
}

/// The current version, if the parameter exists.
pub async fn current(ssm: &Client, name: &str) -> Result<Option<Version>> {
    use aws_sdk_ssm::operation::get_parameter::GetParameterError;
    match ssm.get_parameter().name(name).send().await {
        Ok(out) => Ok(out.parameter().map(|p| Version {
            version: p.version(),
            record: Record::parse(p.value().unwrap_or_default(), p.last_modified_date().map(rfc3339).as_deref()),
        })),
        Err(e) if matches!(e.as_service_error(), Some(GetParameterError::ParameterNotFound(_))) => Ok(None),
        Err(e) => Err(anyhow!("could not read SSM parameter {name}: {}", crate::aws::error_text(&e))),
    }
}

/// Every version Parameter Store still holds, oldest first.
pub async fn history(ssm: &Client, name: &str) -> Result<Vec<Version>> {
    use aws_sdk_ssm::operation::get_parameter_history::GetParameterHistoryError;
    let mut versions = Vec::new();
    let mut token: Option<String> = None;
    loop {
        // 50 is GetParameterHistory's largest page.
        let call = ssm.get_parameter_history().name(name).max_results(50).set_next_token(token.take());
        let out = match call.send().await {
            Ok(out) => out,
            Err(e) if matches!(e.as_service_error(), Some(GetParameterHistoryError::ParameterNotFound(_))) => {
                bail!("the release record {name} does not exist: run `casey-deploy infra` first")
            }
            Err(e) => bail!("could not read the history of SSM parameter {name}: {}", crate::aws::error_text(&e)),
        };
        for p in out.parameters() {
            versions.push(Version {
                version: p.version(),
                record: Record::parse(p.value().unwrap_or_default(), p.last_modified_date().map(rfc3339).as_deref()),
            });
        }
        match out.next_token() {
            Some(next) if !next.is_empty() => token = Some(next.to_owned()),
            _ => break,
        }
    }
    versions.sort_by_key(|v| v.version);
    Ok(versions)
}

fn rfc3339(t: &aws_sdk_ssm::primitives::DateTime) -> String {
    t.fmt(aws_sdk_ssm::primitives::DateTimeFormat::DateTime).unwrap_or_default()
}

pub fn now_rfc3339() -> String {
    let now = std::time::SystemTime::now();
    aws_sdk_ssm::primitives::DateTime::from(now)
        .fmt(aws_sdk_ssm::primitives::DateTimeFormat::DateTime)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_survives_its_json_and_a_bare_reference_is_read_too() {
        let mut record = Record::new("r/x@sha256:ab".into(), "abc1234".into(), "sha256:ab".into(), "rollback", "arn:u");
        record.from = Some(3);
        record.reason = Some("failed".into());
        let parsed = Record::parse(&record.to_json().to_string(), None);
        assert_eq!(parsed, record);

        let bare = Record::parse("123.dkr.ecr.us-east-1.amazonaws.com:443/casey-backend:v1@sha256:cd", Some("t"));
        assert_eq!((bare.tag.as_str(), bare.digest.as_str(), bare.at.as_str()), ("v1", "sha256:cd", "t"));
        let placeholder = Record::parse(r#"{"image":"r:latest","action":"created"}"#, None);
        assert!(!placeholder.is_release());
    }

    #[test]
    fn a_pinned_image_refuses_releases_and_names_the_fix() {
        let mut map = Map::new();
        map.insert("release_parameter_name".into(), Value::Null);
        map.insert("backend_image".into(), json!("r:v1"));
        let err = parameter(&map).unwrap_err().to_string();
        assert!(err.contains("pins the service to r:v1") && err.contains("remove it"), "{err}");
        map.remove("release_parameter_name");
        assert!(parameter(&map).unwrap_err().to_string().contains("run `casey-deploy infra` first"));
    }
}
