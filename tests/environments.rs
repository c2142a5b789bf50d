//! Environments in terraform/: the default environment keeps the names of
//! the stack as it was before environments existed (its state plans no
//! changes under the new code), and another environment lives beside it in
//! its own workspace with its own names.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{answer_on_terminal, copy_terraform, repo_root, Emulator, Project, ADMIN, SERVICE};

/// The last commit whose terraform/ had no environment-specific names.
const BEFORE_ENVIRONMENTS: &str = "2e4d919";

fn names(emulator: &Emulator, args: &[&str], key: &str) -> Vec<String> {
    let listed = emulator.aws(args);
    let mut names: Vec<String> =
        listed[key].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
    names.sort();
    names
}

#[test]
fn a_stack_of_the_code_before_environments_plans_no_changes_and_staging_lives_beside_it() {
    let emulator = Emulator::start();
    let project = Project::new(&emulator);
    let tf = project.tf_dir();

    // terraform/ as it was before environments, applied as on a first deploy.
    for entry in std::fs::read_dir(&tf).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "tf") && !path.ends_with("test_override.tf") {
            std::fs::remove_file(path).unwrap();
        }
    }
    let archive = Command::new("git")
        .arg("-C")
        .arg(repo_root())
        .args(["archive", "--format=tar", BEFORE_ENVIRONMENTS, "terraform"])
        .output()
        .expect("git is needed");
    assert!(
        archive.status.success(),
        "git archive {BEFORE_ENVIRONMENTS} (the test needs the repository's history; a shallow clone lacks it): {}",
        String::from_utf8_lossy(&archive.stderr)
    );
    let mut untar = Command::new("tar")
        .args(["-x", "--strip-components=1", "-C"])
        .arg(&tf)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(untar.stdin.as_mut().unwrap(), &archive.stdout).unwrap();
    assert!(untar.wait().unwrap().success());
    assert!(!std::fs::read_to_string(tf.join("locals.tf")).unwrap().contains("env_suffix"), "the old code");
    project.apply_stack(&emulator);

    // The new code over that state: nothing to change.
    copy_terraform(project.path());
    let plan = project.terraform(emulator.admin(), &["plan", "-input=false", "-detailed-exitcode", "-lock=false"]);
    assert_eq!(
        plan.code,
        Some(0),
        "today's state must plan no changes under the new code:\n{}{}",
        plan.stdout,
        plan.stderr
    );

    // An environment name that would take another's admin policy name.
    let refused = project.terraform(emulator.admin(), &["plan", "-input=false", "-var=environment=ecs-staging"]);
    assert_ne!(refused.code, Some(0));
    assert!(refused.stderr.contains("environment must not be \"ecs\""), "{}", refused.stderr);

    // staging, in its own workspace: its own names, production untouched.
    let admin = emulator.admin();
    let staging = ["-input=false", "-auto-approve", "-var=environment=staging"];
    assert_eq!(project.terraform(admin, &["workspace", "new", "staging"]).code, Some(0));
    let ecr = project.terraform(admin, &[&["apply"][..], &staging, &["-target=aws_ecr_repository.backend"]].concat());
    assert_eq!(ecr.code, Some(0), "{}", ecr.stderr);
    emulator.put_image("casey-backend-staging", "latest");
    let applied = project.terraform(admin, &[&["apply"][..], &staging].concat());
    assert_eq!(applied.code, Some(0), "{}", applied.stderr);
    assert!(tf.join("terraform.tfstate.d/staging/terraform.tfstate").is_file(), "staging has its own state");

    assert_eq!(names(&emulator, &["ecs", "list-clusters"], "clusterArns").len(), 2);
    let clusters = emulator.aws(&["ecs", "describe-clusters", "--clusters", "casey", "casey-staging"]);
    assert_eq!(clusters["clusters"].as_array().unwrap().len(), 2, "{clusters}");
    for cluster in ["casey", "casey-staging"] {
        let services = names(&emulator, &["ecs", "list-services", "--cluster", cluster], "serviceArns");
        assert_eq!(services.len(), 1, "{cluster}: {services:?}");
    }
    let repos = emulator.aws(&["ecr", "describe-repositories"]);
    let mut repos: Vec<&str> =
        repos["repositories"].as_array().unwrap().iter().map(|r| r["repositoryName"].as_str().unwrap()).collect();
    repos.sort();
    assert_eq!(repos, ["casey-backend", "casey-backend-staging"]);
    assert_eq!(
        emulator.attached_policy_names(ADMIN),
        [
            "casey-terraform-admin",
            "casey-terraform-admin-ecs",
            "casey-terraform-admin-ecs-staging",
            "casey-terraform-admin-network",
            "casey-terraform-admin-network-staging",
            "casey-terraform-admin-staging",
        ]
    );
    assert_eq!(emulator.attached_policy_names(SERVICE), ["casey-backend-ai", "casey-backend-ai-staging"]);
    let groups = emulator.aws(&["logs", "describe-log-groups"]);
    let groups: Vec<&str> =
        groups["logGroups"].as_array().unwrap().iter().map(|g| g["logGroupName"].as_str().unwrap()).collect();
    for group in ["/ecs/casey-backend", "/ecs/casey-backend-staging", "casey-backend-aws-usage-staging"] {
        assert!(groups.contains(&group), "{group}: {groups:?}");
    }
    let roles = emulator.aws(&["iam", "get-role", "--role-name", "casey-backend-staging-ecs-execution"]);
    assert!(roles["Role"]["Arn"].is_string(), "{roles}");

    // Back in the default workspace: production still plans no changes.
    assert_eq!(project.terraform(admin, &["workspace", "select", "default"]).code, Some(0));
    let plan = project.terraform(admin, &["plan", "-input=false", "-detailed-exitcode"]);
    assert_eq!(plan.code, Some(0), "production after staging's apply:\n{}{}", plan.stdout, plan.stderr);
}

/// ACTIVE clusters named `name` (a deleted one stays INACTIVE for a while, as on ECS).
fn active_cluster(emulator: &Emulator, name: &str) -> bool {
    let described = emulator.aws(&["ecs", "describe-clusters", "--clusters", name]);
    described["clusters"].as_array().into_iter().flatten().any(|c| c["status"] == "ACTIVE")
}

/// Every stamped stderr line (`HH:MM:SS [env] …`) names the environment.
#[track_caller]
fn every_line_names(run: &common::Run, env: &str) {
    let label = format!("[{env}] ");
    let lines: Vec<&str> = run.stderr.lines().filter(|l| l.as_bytes().get(2) == Some(&b':')).collect();
    assert!(!lines.is_empty(), "{}", run.stderr);
    for line in lines {
        assert_eq!(line.get(9..9 + label.len()), Some(label.as_str()), "a line without the environment: {line:?}");
    }
}

#[test]
fn staging_through_the_tool_beside_production_with_its_own_state_and_destroyed_alone() {
    let emulator = Emulator::start();
    let project = Project::new(&emulator);
    // Production's apply on a terminal: its name must be typed; `yes` is not it.
    let question = "Type `production` to apply";
    let (ok, err) = answer_on_terminal(project.command(&["infra"]), question, "yes", Duration::from_secs(240));
    assert!(!ok && err.contains("apply cancelled (the answer was not `production`)"), "{err}");
    let attached = emulator.attached_policy_names(ADMIN);
    assert!(!attached.iter().any(|n| n.starts_with("casey-terraform-admin")), "nothing was applied: {attached:?}");
    let production = project.apply_stack(&emulator);
    every_line_names(&production, "production");

    // The environment is --env's: not a variable, and checked as terraform checks it.
    let run = project.casey(&["infra", "--var", "environment=staging"]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("chosen with --env NAME"), "{}", run.stderr);
    let run = project.casey(&["--env", "ecs-staging", "whoami"]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("another environment's admin policy part"), "{}", run.stderr);

    // staging in its own workspace, its own state file; then both states
    // move to S3, staging's beside production's.
    // staging's own settings files: terraform/staging.env instead of .env, and staging.tfvars.
    let tf = project.tf_dir();
    std::fs::copy(tf.join(".env"), tf.join("staging.env")).unwrap();
    std::fs::write(tf.join("staging.tfvars"), "tags = { Team = \"staging-team\" }\n").unwrap();
    let staging = project.apply_environment(&emulator, "staging");
    every_line_names(&staging, "staging");
    assert!(staging.stderr.contains("staging.env"), "the environment's own env file: {}", staging.stderr);
    let tagged = |cluster: &str| {
        let described = emulator.aws(&["ecs", "describe-clusters", "--clusters", cluster, "--include", "TAGS"]);
        let tags = described["clusters"][0]["tags"].as_array().cloned().unwrap_or_default();
        tags.iter().any(|t| t["key"] == "Team" && t["value"] == "staging-team")
    };
    assert!(tagged("casey-staging") && !tagged("casey"), "staging.tfvars is staging's only");
    assert!(project.tf_dir().join("terraform.tfstate.d/staging/terraform.tfstate").is_file());
    let bootstrap = project.casey(&["state", "bootstrap"]);
    bootstrap.assert_ok();
    assert!(bootstrap.stderr.contains("moved environment staging's local state"), "{}", bootstrap.stderr);
    assert!(!project.tf_dir().join("terraform.tfstate.d").exists(), "the local copies are set aside");

    // A backend.tf without workspace_key_prefix keeps production working and
    // stops any other environment before a call (its state would be under `env:/`).
    let backend_tf = tf.join("backend.tf");
    let written = std::fs::read_to_string(&backend_tf).unwrap();
    let without: String =
        written.lines().filter(|l| !l.contains("workspace_key_prefix")).map(|l| format!("{l}\n")).collect();
    std::fs::write(&backend_tf, &without).unwrap();
    project.casey(&["whoami"]).assert_ok();
    let refused = project.casey(&["--env", "staging", "whoami"]);
    refused.assert_fails_with("sets no workspace_key_prefix, so environment staging's state would be s3://");
    refused.assert_fails_with("add `workspace_key_prefix = \"casey\"`");
    let doctor = project.casey(&["--env", "staging", "doctor"]);
    assert!(!doctor.ok() && doctor.stderr.contains("sets no workspace_key_prefix"), "{}", doctor.stderr);
    std::fs::write(&backend_tf, "terraform {\n  backend \"gcs\" {}\n}\n").unwrap();
    project.casey(&["whoami"]).assert_fails_with("configures no S3 backend");
    std::fs::write(&backend_tf, &written).unwrap();
    let bucket = format!("casey-tfstate-{}-us-east-1", emulator.account_id);
    let listed = emulator.aws(&["s3api", "list-objects-v2", "--bucket", &bucket]);
    let mut keys: Vec<&str> =
        listed["Contents"].as_array().unwrap().iter().map(|o| o["Key"].as_str().unwrap()).collect();
    keys.sort();
    assert_eq!(keys, ["casey/production/terraform.tfstate", "casey/staging/casey/production/terraform.tfstate"]);
    let file = tempfile::NamedTempFile::new().unwrap();
    let path = file.path().display().to_string();
    let key = "casey/staging/casey/production/terraform.tfstate";
    emulator.aws(&["s3api", "get-object", "--bucket", &bucket, "--key", key, &path]);
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(file.path()).unwrap()).unwrap();
    assert_eq!(state["outputs"]["ecs_cluster_name"]["value"], "casey-staging", "staging's own outputs");

    assert!(active_cluster(&emulator, "casey") && active_cluster(&emulator, "casey-staging"));
    for cluster in ["casey", "casey-staging"] {
        let services = names(&emulator, &["ecs", "list-services", "--cluster", cluster], "serviceArns");
        assert_eq!(services.len(), 1, "{cluster}: {services:?}");
    }
    // Results name the environment too.
    let who = project.casey(&["--env", "staging", "--json", "whoami"]);
    who.assert_ok();
    let doc: serde_json::Value = serde_json::from_str(&who.stdout).unwrap();
    assert_eq!(doc["environment"], "staging", "{doc:#}");
    let url = project.casey(&["--env", "staging", "backend-url"]);
    url.assert_ok();
    let production_url = project.casey(&["backend-url"]);
    production_url.assert_ok();
    assert_ne!(url.stdout, production_url.stdout, "each environment has its own task and URL");

    let admin_policies = emulator.attached_policy_names(ADMIN);
    assert_eq!(admin_policies.len(), 6, "{admin_policies:?}");
    // Under IAM enforcement (the admin holding only the stack's policies):
    // staging's state, its lock and terraform's lock under casey/staging/
    // are inside the admin's S3 rights, and so is its teardown.
    emulator.control("POST", "/_casey/iam/propagation", &serde_json::json!({"seconds": 0}));
    emulator.control("POST", "/_casey/iam/enforce", &serde_json::json!({"enabled": true}));
    // Each plans no changes; staging's teardown leaves production as it was.
    for env in ["production", "staging"] {
        let run = project.casey(&["--env", env, "infra", "--yes"]);
        run.assert_ok();
        assert!(run.stderr.contains("No changes"), "{env}: {}", run.stderr);
    }
    let run = project.casey(&["--env", "staging", "destroy", "--yes"]);
    run.assert_ok();
    every_line_names(&run, "staging");
    emulator.control("POST", "/_casey/iam/enforce", &serde_json::json!({"enabled": false}));
    assert!(!active_cluster(&emulator, "casey-staging"), "staging's cluster is gone");
    assert!(active_cluster(&emulator, "casey"), "production's cluster stays");
    let repos = emulator.aws(&["ecr", "describe-repositories"]);
    let repos: Vec<&str> =
        repos["repositories"].as_array().unwrap().iter().map(|r| r["repositoryName"].as_str().unwrap()).collect();
    assert_eq!(repos, ["casey-backend"]);
    assert_eq!(emulator.attached_policy_names(ADMIN), admin_policies, "each environment's admin policies are kept");
    let run = project.casey(&["infra", "--yes"]);
    run.assert_ok();
    assert!(run.stderr.contains("No changes"), "production after staging's destroy: {}", run.stderr);

    // Typing production's name on a terminal applies the change.
    let change = project.command(&["infra", "--var", "log_retention_in_days=14"]);
    let (ok, err) = answer_on_terminal(change, "Type `production` to apply", "production", Duration::from_secs(240));
    assert!(ok, "{err}");
    let groups = emulator.aws(&["logs", "describe-log-groups", "--log-group-name-prefix", "/ecs/casey-backend"]);
    let production_group =
        groups["logGroups"].as_array().unwrap().iter().find(|g| g["logGroupName"] == "/ecs/casey-backend");
    assert_eq!(production_group.unwrap()["retentionInDays"], 14, "{groups}");
}
