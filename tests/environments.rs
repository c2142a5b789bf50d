//! Environments in terraform/: the default environment keeps the names of
//! the stack as it was before environments existed (its state plans no
//! changes under the new code), and another environment lives beside it in
//! its own workspace with its own names.

mod common;

use std::process::Command;

use common::{copy_terraform, repo_root, Emulator, Project, ADMIN, SERVICE};

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
