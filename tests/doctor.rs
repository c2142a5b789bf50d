//! `casey-deploy doctor` on a good setup and on broken ones, against the
//! emulator and real terraform. Docker is replaced by a stub on PATH where
//! the verdict must not depend on whether an engine runs here.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{Emulator, Keys, Project, Run, ADMIN, SERVICE};

/// The line of the check `label`: `(verdict, the rest)`.
#[track_caller]
fn check<'a>(run: &'a Run, label: &str) -> (&'a str, &'a str) {
    run.stdout
        .lines()
        .find_map(|line| {
            let mut words = line.trim_start().splitn(2, ' ');
            let verdict = words.next()?;
            let rest = words.next()?.trim_start();
            let after = rest.strip_prefix(label)?;
            (["ok", "warn", "FAIL", "skip"].contains(&verdict) && after.starts_with(' '))
                .then(|| (verdict, after.trim_start()))
        })
        .unwrap_or_else(|| panic!("no `{label}` line\nstdout:\n{}\nstderr:\n{}", run.stdout, run.stderr))
}

#[track_caller]
fn assert_check(run: &Run, label: &str, verdict: &str, needles: &[&str]) {
    let (got, rest) = check(run, label);
    assert_eq!(got, verdict, "`{label}`: {rest}\nstdout:\n{}", run.stdout);
    for needle in needles {
        assert!(rest.contains(needle), "`{label}` line lacks `{needle}`: {rest}\nstdout:\n{}", run.stdout);
    }
}

fn write_backend_env(project: &Project, keys: &Keys) {
    let dir = project.path().join("backend");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(".env");
    std::fs::write(
        &path,
        format!(
            "AWS_REGION=us-east-1\nAWS_ACCESS_KEY_ID={}\nAWS_SECRET_ACCESS_KEY={}\nPORT=3001\n",
            keys.access_key_id, keys.secret_access_key
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A directory with a `docker` that reports a running engine, first on PATH.
fn stub_docker(project: &Project) -> String {
    let dir = project.path().join("stub-bin");
    std::fs::create_dir_all(&dir).unwrap();
    let docker = dir.join("docker");
    std::fs::write(&docker, "#!/bin/sh\necho '27.5.1|27.5.1'\n").unwrap();
    std::fs::set_permissions(&docker, std::fs::Permissions::from_mode(0o755)).unwrap();
    format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default())
}

/// A local state with the stack's outputs, as an apply leaves it.
fn write_applied_state(tf_dir: &Path, emulator: &Emulator) {
    let output = |value: &str| serde_json::json!({ "value": value, "type": "string" });
    let state = serde_json::json!({
        "version": 4,
        "terraform_version": "1.11.4",
        "serial": 1,
        "lineage": "9d6f0c4e-doctor-test",
        "outputs": {
            "ecs_cluster_name": output("casey-cluster"),
            "ecs_service_name": output("casey-backend"),
            "aws_region": output("us-east-1"),
            "account_id": output(&emulator.account_id),
            "enable_alb": { "value": false, "type": "bool" },
            "alb_dns_name": { "value": null, "type": "string" },
        },
        "resources": [],
        "check_results": null,
    });
    std::fs::write(tf_dir.join("terraform.tfstate"), serde_json::to_string_pretty(&state).unwrap()).unwrap();
}

#[test]
fn good_setup_passes_and_names_each_principal() {
    let emulator = Emulator::start();
    let project = Project::new(&emulator);
    write_backend_env(&project, emulator.service());
    let path = stub_docker(&project);

    let run = project.casey_with(&["doctor"], &[("PATH", &path)]);
    run.assert_ok();
    assert_check(&run, "terraform/.env", "ok", &["mode 600", "region us-east-1"]);
    assert_check(&run, "backend/.env", "ok", &["mode 600"]);
    assert_check(&run, "terraform", "ok", &["."]);
    assert_check(&run, "docker", "ok", &["engine 27.5.1"]);
    assert_check(&run, "aws provider", "ok", &["hashicorp/aws"]);
    assert_check(&run, "deploy credentials", "ok", &["admin", &emulator.admin().arn]);
    assert_check(&run, "backend credentials", "ok", &["service", &emulator.service().arn]);
    assert_check(&run, "key separation", "ok", &[]);
    assert_check(&run, "region", "ok", &["us-east-1"]);
    assert_check(&run, "stack", "warn", &["not applied", "casey-deploy infra"]);
    assert!(run.stdout.contains("a deploy can work"), "{}", run.stdout);

    // Applied: the cluster, the service and the ALB setting, from the outputs.
    write_applied_state(&project.tf_dir(), &emulator);
    let run = project.casey_with(&["doctor"], &[("PATH", &path)]);
    run.assert_ok();
    assert_check(&run, "stack", "ok", &["applied", "casey-cluster", "casey-backend"]);
    assert_check(&run, "alb", "ok", &["disabled", "enable_alb=true"]);

    // Without the stub: the real docker line is there, whatever its verdict.
    let run = project.casey(&["doctor"]);
    let (verdict, _) = check(&run, "docker");
    assert_eq!(run.ok(), verdict == "ok", "only docker may fail here\n{}", run.stdout);
}

#[test]
fn broken_credentials_are_each_named_and_fail() {
    let emulator = Emulator::start();
    let project = Project::with_keys(&emulator, None);
    let path = stub_docker(&project);
    let doctor = || project.casey_with(&["doctor"], &[("PATH", &path)]);

    // No terraform/.env and no other credentials.
    let run = doctor();
    assert!(!run.ok(), "{}", run.stdout);
    assert_check(&run, "terraform/.env", "warn", &["absent", "cp terraform/.env.example terraform/.env"]);
    assert_check(&run, "deploy credentials", "FAIL", &["no usable AWS credentials"]);
    assert_check(&run, "region", "FAIL", &["AWS_REGION="]);
    // The other checks still ran.
    assert_check(&run, "terraform", "ok", &[]);
    assert_check(&run, "backend/.env", "warn", &["absent", SERVICE]);
    assert!(run.stderr.contains("checks FAILED") && run.stderr.contains("a deploy would fail"), "{}", run.stderr);

    // The same keys in both env files.
    project.write_env(emulator.admin());
    write_backend_env(&project, emulator.admin());
    let run = doctor();
    assert!(!run.ok(), "{}", run.stdout);
    assert_check(&run, "deploy credentials", "ok", &["admin"]);
    assert_check(&run, "backend credentials", "FAIL", &["ADMIN", "backend must never run as the admin", SERVICE]);
    let hint = format!("same access key ({}…", &emulator.admin().access_key_id[..4]);
    assert_check(&run, "key separation", "FAIL", &[&hint]);

    // The service account's keys in terraform/.env.
    project.write_env(emulator.service());
    std::fs::remove_file(project.path().join("backend/.env")).unwrap();
    let run = doctor();
    assert!(!run.ok(), "{}", run.stdout);
    assert_check(&run, "deploy credentials", "FAIL", &["SERVICE ACCOUNT", "must never run Terraform", ADMIN]);

    // A readable env file and a malformed line.
    project.write_env(emulator.admin());
    let env = project.tf_dir().join(".env");
    std::fs::set_permissions(&env, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = doctor();
    assert_check(&run, "terraform/.env", "warn", &["mode 644", "readable by other users", "key ", "chmod 600"]);
    run.assert_ok();
    std::fs::set_permissions(&env, std::fs::Permissions::from_mode(0o600)).unwrap();
    let secret = &emulator.admin().secret_access_key;
    std::fs::write(&env, format!("AWS_REGION=us-east-1\nAWS_SECRET_ACCESS_KEY {secret}\n")).unwrap();
    let run = doctor();
    assert!(!run.ok(), "{}", run.stdout);
    assert_check(&run, "terraform/.env", "FAIL", &["terraform/.env:2:", "`AWS_SECRET_ACCESS_KEY`"]);
    // Not even the start of the secret.
    assert!(!run.all().contains(&secret[..8]), "part of a secret leaked:\n{}", run.all());
}

#[test]
fn missing_terraform_and_unreachable_docker_fail_without_stopping_the_rest() {
    let emulator = Emulator::start();
    let project = Project::new(&emulator);
    write_backend_env(&project, emulator.service());

    // No terraform (nor docker) on PATH.
    let run = project.casey_with(&["doctor"], &[("PATH", "/nonexistent")]);
    assert!(!run.ok(), "{}", run.stdout);
    assert_check(&run, "terraform", "FAIL", &["not found on PATH", "install Terraform"]);
    assert_check(&run, "docker", "FAIL", &["`casey-deploy image` and `all`"]);
    assert_check(&run, "aws provider", "skip", &["not checked"]);
    assert_check(&run, "stack", "skip", &["not checked"]);
    assert_check(&run, "deploy credentials", "ok", &["admin"]);
    assert_check(&run, "backend credentials", "ok", &["service"]);

    // A Docker engine that is not there.
    let run = project.casey_with(&["doctor"], &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")]);
    assert!(!run.ok(), "{}", run.stdout);
    assert_check(&run, "docker", "FAIL", &["`casey-deploy image` and `all`"]);
    assert_check(&run, "terraform", "ok", &[]);
    assert_check(&run, "aws provider", "ok", &[]);
}
