//! `casey-deploy state bootstrap`: the stack's Terraform state moves from a
//! file on one machine to S3, where a team (and CI) share it and Terraform
//! locks it natively (`use_lockfile`: a `<key>.tflock` object written with a
//! conditional put).
//!
//! The bucket is made by the tool, not by Terraform (the way Terragrunt
//! makes its state buckets): the stack's own `destroy` can never reach it,
//! and it needs no state of its own. Each setting is read back and only
//! written when it differs, so a second run changes nothing and says so.

use std::path::Path;

use anyhow::{anyhow, bail, Context as _, Result};
use aws_sdk_s3::Client;
use serde_json::{json, Value};

use crate::backend::{self, Backend};
use crate::context::Ctx;
use crate::say;

pub fn bootstrap(ctx: &Ctx) -> Result<()> {
    let dir = ctx.terraform_dir();
    let region = ctx.region();
    let configured = ctx.backend.clone();
    let backend = configured.clone().unwrap_or_else(|| Backend::default_for(&ctx.identity.account, &region));
    let s3 = ctx.s3(&backend.region);
    let partition = ctx.identity.arn.split(':').nth(1).unwrap_or("aws").to_owned();
    say!("==> state: s3://{}/{} ({})", backend.bucket, backend.key, backend.region);

    let changed = ctx.block_on(ensure_bucket(&s3, &backend, &partition))?;
    if changed.is_empty() {
        say!("bucket {}: versioning, encryption, public access blocks and TLS-only policy already set", backend.bucket);
    } else {
        say!("bucket {}: {}", backend.bucket, changed.join(", "));
    }

    let local_path = dir.join("terraform.tfstate");
    let local = read_state(&local_path)?;
    let remote = ctx.block_on(remote_state(&s3, &backend, &backend.key))?;
    // The other environments' local states (terraform's workspaces) go
    // along: terraform migrates every workspace.
    let others = other_workspaces(&dir)?;
    if let (Some((env, _)), None) = (others.first(), &backend.workspace_key_prefix) {
        bail!("nothing was moved: {}", backend::no_prefix(&dir, &backend, env));
    }
    for (workspace, state) in &others {
        let key = backend.state_key(workspace);
        if let Some(remote) = ctx.block_on(remote_state(&s3, &backend, &key))? {
            if !state.same_content(&remote) {
                bail!(
                    "s3://{}/{key} already holds a state ({}), and environment {workspace}'s local state holds another ({}): nothing was moved. Keep the right one and move the other aside before running `casey-deploy state bootstrap` again",
                    backend.bucket,
                    remote.describe(),
                    state.describe()
                );
            }
        }
    }
    let initialised = initialised_for(&dir, &backend);
    let path_style = ctx.sdk.endpoint_url().is_some();
    let file = dir.join(backend::FILE);

    if configured.is_some() && local.is_none() && others.is_empty() && initialised {
        say!("done already: the state is in s3://{}/{}; nothing else to change", backend.bucket, backend.key);
        return summary(&backend, changed, false, &[]);
    }
    if let (Some(local), Some(remote)) = (&local, &remote) {
        if !local.same_content(remote) {
            bail!(
                "s3://{}/{} already holds a state ({}), and {} holds another ({}): nothing was moved. Compare the two (`terraform -chdir={} state pull`), keep the right one, and move the other aside before running `casey-deploy state bootstrap` again",
                backend.bucket,
                backend.key,
                remote.describe(),
                local_path.display(),
                local.describe(),
                dir.display()
            );
        }
    }

    let wrote = configured.is_none();
    if wrote {
        write_atomically(&file, &backend.render(path_style))?;
        say!("wrote {} (commit it: every checkout then shares this state)", file.display());
    }
    let tf = ctx.terraform(&crate::terraform::Vars::default());
    if let Err(err) = tf.init_migrate() {
        // Nothing half-changed: the local state stays the one in use.
        if wrote {
            let _ = std::fs::remove_file(&file);
        }
        return Err(err.context(format!(
            "the state was not moved{}; fix what terraform names, then run `casey-deploy state bootstrap` again",
            if wrote { format!(" ({} removed again)", backend::FILE) } else { String::new() }
        )));
    }
    for (workspace, state) in &others {
        let key = backend.state_key(workspace);
        match ctx.block_on(remote_state(&s3, &backend, &key))? {
            Some(now) if now.same_content(state) => {
                say!("moved environment {workspace}'s local state ({}) to s3://{}/{key}", state.describe(), backend.bucket)
            }
            other => bail!(
                "terraform init reported success, but s3://{}/{key} holds {} instead of environment {workspace}'s local state ({}): the local states are left in place; run `casey-deploy state bootstrap` again",
                backend.bucket,
                other.map(|s| s.describe()).unwrap_or_else(|| "nothing".into()),
                state.describe()
            ),
        }
    }
    let moved = match (&local, &remote) {
        (Some(local), None) => {
            let now = ctx.block_on(remote_state(&s3, &backend, &backend.key))?;
            match now {
                Some(now) if now.same_content(local) => {}
                other => bail!(
                    "terraform init reported success, but s3://{}/{} holds {} instead of the local state ({}): the local state is left in place; run `casey-deploy state bootstrap` again",
                    backend.bucket,
                    backend.key,
                    other.map(|s| s.describe()).unwrap_or_else(|| "nothing".into()),
                    local.describe()
                ),
            }
            say!("moved the local state ({}) to s3://{}/{}", local.describe(), backend.bucket, backend.key);
            true
        }
        (Some(_), Some(remote)) => {
            say!(
                "s3://{}/{} already holds what the local state holds ({}): the local copy is set aside",
                backend.bucket,
                backend.key,
                remote.describe()
            );
            true
        }
        (None, _) => false,
    };
    if moved || !others.is_empty() {
        set_aside(&dir)?;
    }
    summary(&backend, changed, moved, &others)
}

fn summary(backend: &Backend, changed: Vec<String>, moved: bool, others: &[(String, StateId)]) -> Result<()> {
    let environments: Vec<&str> = others.iter().map(|(name, _)| name.as_str()).collect();
    crate::output::summary(json!({
        "bucket": backend.bucket, "key": backend.key, "region": backend.region,
        "bucket_changes": changed, "state_moved": moved, "other_environments_moved": environments,
    }));
    Ok(())
}

/// `.terraform/` was initialised for exactly this backend.
fn initialised_for(dir: &Path, backend: &Backend) -> bool {
    let text = std::fs::read_to_string(dir.join(".terraform").join("terraform.tfstate")).unwrap_or_default();
    let Ok(state) = serde_json::from_str::<Value>(&text) else { return false };
    let config = &state["backend"]["config"];
    state["backend"]["type"] == "s3"
        && config["bucket"] == backend.bucket.as_str()
        && config["key"] == backend.key.as_str()
}

/// The local state and its backup, renamed so that terraform never reads
/// them again (and `infra` refuses to start from nothing while they exist
/// without `backend.tf`); git ignores them (`*.tfstate.*`).
fn set_aside(dir: &Path) -> Result<()> {
    let stamp = crate::output::utc_stamp();
    for name in ["terraform.tfstate", "terraform.tfstate.backup", "terraform.tfstate.d"] {
        let from = dir.join(name);
        if from.exists() {
            let to = dir.join(format!(
                "{}{stamp}{}",
                crate::terraform::MOVED_STATE_PREFIX,
                name.strip_prefix("terraform.tfstate").unwrap_or_default()
            ));
            std::fs::rename(&from, &to)
                .with_context(|| format!("could not rename {} to {}", from.display(), to.display()))?;
            say!("kept the old local {name} as {}", to.display());
        }
    }
    Ok(())
}

fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tf.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("could not write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("could not write {}", path.display()))
}

/// What a state holds: its resources and outputs (a digest of them), which
/// a migration copies exactly; terraform gives the copy a lineage and
/// serial of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StateId {
    lineage: String,
    serial: u64,
    resources: usize,
    content: String,
}

impl StateId {
    fn of(text: &[u8]) -> Option<StateId> {
        use sha2::Digest as _;
        let state: Value = serde_json::from_slice(text).ok()?;
        let held = json!({"resources": state["resources"], "outputs": state["outputs"]});
        let digest = sha2::Sha256::digest(held.to_string().as_bytes());
        Some(StateId {
            lineage: state["lineage"].as_str()?.to_owned(),
            serial: state["serial"].as_u64()?,
            resources: state["resources"].as_array().map_or(0, Vec::len),
            content: digest.iter().take(6).map(|b| format!("{b:02x}")).collect(),
        })
    }

    fn same_content(&self, other: &StateId) -> bool {
        self.content == other.content
    }

    fn describe(&self) -> String {
        format!(
            "{} resources, content {}, lineage {} serial {}",
            self.resources, self.content, self.lineage, self.serial
        )
    }
}

/// The local state file: `None` without one (or an empty one, which holds
/// nothing to move); an error when it cannot be read as a state.
fn read_state(path: &Path) -> Result<Option<StateId>> {
    let Ok(bytes) = std::fs::read(path) else { return Ok(None) };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    StateId::of(&bytes).map(Some).with_context(|| {
        format!("{} is not a readable Terraform state: nothing was moved; restore it (terraform.tfstate.backup), then run `casey-deploy state bootstrap` again", path.display())
    })
}

/// The non-empty local states of the workspaces other than `default`
/// (`terraform.tfstate.d/<env>/terraform.tfstate`), by name.
fn other_workspaces(dir: &Path) -> Result<Vec<(String, StateId)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir.join("terraform.tfstate.d")).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(state) = read_state(&entry.path().join("terraform.tfstate"))? {
            found.push((name, state));
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(found)
}

async fn remote_state(s3: &Client, backend: &Backend, key: &str) -> Result<Option<StateId>> {
    use aws_sdk_s3::operation::get_object::GetObjectError;
    match s3.get_object().bucket(&backend.bucket).key(key).send().await {
        Ok(out) => {
            let bytes = out.body.collect().await.context("could not read the state object")?.into_bytes();
            Ok(StateId::of(&bytes))
        }
        Err(err) if matches!(err.as_service_error(), Some(GetObjectError::NoSuchKey(_))) => Ok(None),
        Err(err) => Err(anyhow!(
            "S3 GetObject of s3://{}/{} failed: {}\n{}",
            backend.bucket,
            key,
            crate::aws::error_text(&err),
            RIGHTS
        )),
    }
}

const RIGHTS: &str = "The admin's policy grants the state bucket's rights from this version of the stack on: run `casey-deploy infra` once with the local state, then `casey-deploy state bootstrap` again";

/// The bucket policy's statements this tool owns, by Sid.
fn owned_statements(bucket: &str, partition: &str) -> Vec<Value> {
    let bucket_arn = format!("arn:{partition}:s3:::{bucket}");
    vec![
        json!({
            "Sid": "DenyInsecureTransport",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:*",
            "Resource": [bucket_arn, format!("{bucket_arn}/*")],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        }),
        // The state outlives every stack it holds: to delete the bucket,
        // its policy has to be changed first, on purpose.
        json!({
            "Sid": "DenyStateBucketDeletion",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:DeleteBucket",
            "Resource": bucket_arn,
        }),
    ]
}

/// Create the bucket if needed and bring each setting to what the state
/// needs; returns what was changed.
async fn ensure_bucket(s3: &Client, backend: &Backend, partition: &str) -> Result<Vec<String>> {
    use aws_sdk_s3::types::{
        BucketLocationConstraint, BucketVersioningStatus, CreateBucketConfiguration, PublicAccessBlockConfiguration,
        ServerSideEncryption, ServerSideEncryptionByDefault, ServerSideEncryptionConfiguration,
        ServerSideEncryptionRule, VersioningConfiguration,
    };
    let bucket = backend.bucket.as_str();
    let failed = |call: &str, text: String| anyhow!("S3 {call} of bucket {bucket} failed: {text}\n{RIGHTS}");
    let mut changed = Vec::new();

    match s3.head_bucket().bucket(bucket).send().await {
        Ok(_) => {}
        Err(err) if err.raw_response().is_some_and(|r| r.status().as_u16() == 404) => {
            let mut create = s3.create_bucket().bucket(bucket);
            if backend.region != "us-east-1" {
                let config = CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(backend.region.as_str()))
                    .build();
                create = create.create_bucket_configuration(config);
            }
            match create.send().await {
                Ok(_) => changed.push("created".to_owned()),
                Err(err) if err.as_service_error().is_some_and(|e| e.is_bucket_already_owned_by_you()) => {}
                Err(err) if err.as_service_error().is_some_and(|e| e.is_bucket_already_exists()) => bail!(
                    "the state bucket name {bucket} is taken by another AWS account (bucket names are global): nothing was changed; write a terraform/{} naming a bucket of your own, then run `casey-deploy state bootstrap` again",
                    backend::FILE
                ),
                Err(err) => return Err(failed("CreateBucket", crate::aws::error_text(&err))),
            }
        }
        Err(err) if err.raw_response().is_some_and(|r| r.status().as_u16() == 403) => bail!(
            "the state bucket {bucket} exists, but these credentials may not read it (it belongs to another account, or the admin lacks s3:ListBucket on it): nothing was changed\n{RIGHTS}"
        ),
        Err(err) => return Err(failed("HeadBucket", crate::aws::error_text(&err))),
    }

    let versioning = s3.get_bucket_versioning().bucket(bucket).send().await;
    let versioning = versioning.map_err(|e| failed("GetBucketVersioning", crate::aws::error_text(&e)))?;
    if versioning.status() != Some(&BucketVersioningStatus::Enabled) {
        let config = VersioningConfiguration::builder().status(BucketVersioningStatus::Enabled).build();
        s3.put_bucket_versioning()
            .bucket(bucket)
            .versioning_configuration(config)
            .send()
            .await
            .map_err(|e| failed("PutBucketVersioning", crate::aws::error_text(&e)))?;
        changed.push("versioning enabled".to_owned());
    }

    let encrypted = match s3.get_bucket_encryption().bucket(bucket).send().await {
        Ok(out) => out
            .server_side_encryption_configuration()
            .is_some_and(|c| c.rules().iter().any(|r| r.apply_server_side_encryption_by_default().is_some())),
        Err(err) if err.raw_response().is_some_and(|r| r.status().as_u16() == 404) => false,
        Err(err) => return Err(failed("GetBucketEncryption", crate::aws::error_text(&err))),
    };
    if !encrypted {
        let by_default = ServerSideEncryptionByDefault::builder()
            .sse_algorithm(ServerSideEncryption::Aes256)
            .build()
            .map_err(|e| anyhow!("{e}"))?;
        let rule = ServerSideEncryptionRule::builder().apply_server_side_encryption_by_default(by_default).build();
        let config = ServerSideEncryptionConfiguration::builder().rules(rule).build().map_err(|e| anyhow!("{e}"))?;
        s3.put_bucket_encryption()
            .bucket(bucket)
            .server_side_encryption_configuration(config)
            .send()
            .await
            .map_err(|e| failed("PutBucketEncryption", crate::aws::error_text(&e)))?;
        changed.push("default encryption (SSE-S3)".to_owned());
    }

    let blocked = match s3.get_public_access_block().bucket(bucket).send().await {
        Ok(out) => out.public_access_block_configuration().is_some_and(|c| {
            [c.block_public_acls(), c.ignore_public_acls(), c.block_public_policy(), c.restrict_public_buckets()]
                .iter()
                .all(|b| *b == Some(true))
        }),
        Err(err) if err.raw_response().is_some_and(|r| r.status().as_u16() == 404) => false,
        Err(err) => return Err(failed("GetPublicAccessBlock", crate::aws::error_text(&err))),
    };
    if !blocked {
        let config = PublicAccessBlockConfiguration::builder()
            .block_public_acls(true)
            .ignore_public_acls(true)
            .block_public_policy(true)
            .restrict_public_buckets(true)
            .build();
        s3.put_public_access_block()
            .bucket(bucket)
            .public_access_block_configuration(config)
            .send()
            .await
            .map_err(|e| failed("PutPublicAccessBlock", crate::aws::error_text(&e)))?;
        changed.push("public access blocked".to_owned());
    }

    let mut policy = match s3.get_bucket_policy().bucket(bucket).send().await {
        Ok(out) => serde_json::from_str::<Value>(out.policy().unwrap_or_default())
            .unwrap_or_else(|_| json!({"Version": "2012-10-17", "Statement": []})),
        Err(err) if err.raw_response().is_some_and(|r| r.status().as_u16() == 404) => {
            json!({"Version": "2012-10-17", "Statement": []})
        }
        Err(err) => return Err(failed("GetBucketPolicy", crate::aws::error_text(&err))),
    };
    if let Some(merged) = with_statements(&mut policy, owned_statements(bucket, partition)) {
        s3.put_bucket_policy()
            .bucket(bucket)
            .policy(merged)
            .send()
            .await
            .map_err(|e| failed("PutBucketPolicy", crate::aws::error_text(&e)))?;
        changed.push("TLS-only policy that also denies deleting the bucket".to_owned());
    }
    Ok(changed)
}

/// `policy` with `owned` in place of the statements of the same Sids (the
/// others are kept); `None` when it already holds exactly them.
fn with_statements(policy: &mut Value, owned: Vec<Value>) -> Option<String> {
    let statements = policy["Statement"].as_array().cloned().unwrap_or_default();
    let sid = |s: &Value| s["Sid"].as_str().map(str::to_owned);
    let owned_sids: Vec<Option<String>> = owned.iter().map(sid).collect();
    let present = owned.iter().all(|o| statements.iter().any(|s| same_statement(s, o)));
    if present {
        return None;
    }
    let mut kept: Vec<Value> = statements.into_iter().filter(|s| !owned_sids.contains(&sid(s))).collect();
    kept.extend(owned);
    policy["Version"] = json!("2012-10-17");
    policy["Statement"] = Value::Array(kept);
    Some(policy.to_string())
}

/// Equal, reading a one-element list and its element (and "*" and
/// {"AWS": "*"}) alike, as S3 may hand a policy back normalised.
fn same_statement(a: &Value, b: &Value) -> bool {
    fn norm(v: &Value) -> Value {
        match v {
            Value::Array(items) if items.len() == 1 => norm(&items[0]),
            Value::Array(items) => Value::Array(items.iter().map(norm).collect()),
            Value::Object(map) if map.len() == 1 && map.get("AWS") == Some(&json!("*")) => json!("*"),
            Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), norm(v))).collect()),
            other => other.clone(),
        }
    }
    norm(a) == norm(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_keeps_other_statements_and_is_not_rewritten_when_it_holds_ours() {
        let owned = owned_statements("b", "aws");
        let mut policy = json!({"Version": "2012-10-17", "Statement": [{"Sid": "Theirs", "Effect": "Allow"}]});
        let merged: Value = serde_json::from_str(&with_statements(&mut policy, owned.clone()).unwrap()).unwrap();
        let sids: Vec<&str> =
            merged["Statement"].as_array().unwrap().iter().map(|s| s["Sid"].as_str().unwrap()).collect();
        assert_eq!(sids, ["Theirs", "DenyInsecureTransport", "DenyStateBucketDeletion"]);
        // As S3 may return it: a principal object, a one-element list.
        let mut returned = merged.clone();
        returned["Statement"][2]["Principal"] = json!({"AWS": "*"});
        returned["Statement"][2]["Action"] = json!(["s3:DeleteBucket"]);
        assert_eq!(with_statements(&mut returned, owned.clone()), None);
        // A changed statement of ours is replaced, not duplicated.
        let mut edited = merged;
        edited["Statement"][1]["Condition"] = json!({});
        let again: Value = serde_json::from_str(&with_statements(&mut edited, owned).unwrap()).unwrap();
        assert_eq!(again["Statement"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn a_state_is_identified_by_what_it_holds() {
        let id = StateId::of(br#"{"version":4,"serial":7,"lineage":"l-1","resources":[{"a":1},{}]}"#).unwrap();
        assert_eq!((id.lineage.as_str(), id.serial, id.resources), ("l-1", 7, 2));
        let copy = StateId::of(br#"{"lineage":"l-2","serial":1,"resources":[{"a":1},{}],"version":4}"#).unwrap();
        assert!(id.same_content(&copy), "a migrated copy holds the same");
        let other = StateId::of(br#"{"lineage":"l-1","serial":8,"resources":[{"a":2},{}]}"#).unwrap();
        assert!(!id.same_content(&other));
        assert_eq!(StateId::of(b"{}"), None);
    }
}
