//! `casey-deploy infra` and `import` against real terraform and the emulator.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Emulator, Keys, Project};

fn log_group_names(emulator: &Emulator) -> Vec<String> {
    let groups = emulator.aws(&["logs", "describe-log-groups"]);
    groups["logGroups"].as_array().unwrap().iter().map(|g| g["logGroupName"].as_str().unwrap().to_owned()).collect()
}

fn cluster_count(emulator: &Emulator) -> usize {
    emulator.aws(&["ecs", "list-clusters"])["clusterArns"].as_array().unwrap().len()
}

#[test]
fn service_account_is_refused_before_any_terraform_runs() {
    let emulator = Emulator::start();
    let project = Project::with_keys(&emulator, Some(emulator.service()));
    let run = project.casey(&["infra", "--yes"]);
    run.assert_fails_with("service account");
    assert!(run.stderr.contains(&emulator.service().arn), "the caller ARN is shown: {}", run.stderr);
    assert!(!project.tf_dir().join(".terraform").exists(), "terraform ran: .terraform/ was created");
    assert_eq!(cluster_count(&emulator), 0);
}

#[test]
fn bad_credentials_and_settings_are_clear_errors() {
    let emulator = Emulator::start();

    // No credentials anywhere.
    let project = Project::with_keys(&emulator, None);
    project.casey_with(&["whoami"], &[("AWS_REGION", "us-east-1")]).assert_fails_with("no usable AWS credentials");

    // A key the account does not know: moto answers as another principal.
    let stranger = Keys {
        access_key_id: "AKIDNOTAREALKEY00001".into(),
        secret_access_key: "not-a-real-secret-key-for-tests-0001".into(),
        arn: String::new(),
    };
    project.write_env(&stranger);
    let run = project.casey(&["infra", "--yes"]);
    run.assert_fails_with("is not the admin user `casey_aniruddh`");
    run.assert_no_secrets(std::slice::from_ref(&stranger.secret_access_key));

    // A malformed line: file and line number, and nothing of the value.
    std::fs::write(
        project.tf_dir().join(".env"),
        format!("AWS_REGION=us-east-1\nAWS_SECRET_ACCESS_KEY {}\n", emulator.admin().secret_access_key),
    )
    .unwrap();
    project.casey(&["infra"]).assert_fails_with("terraform/.env:2:");

    // The backend's env file holds the same key as the deploy settings.
    project.write_env(emulator.admin());
    std::fs::create_dir_all(project.path().join("backend")).unwrap();
    std::fs::write(
        project.path().join("backend/.env"),
        format!(
            "AWS_ACCESS_KEY_ID={}\nAWS_SECRET_ACCESS_KEY={}\n",
            emulator.admin().access_key_id,
            emulator.admin().secret_access_key
        ),
    )
    .unwrap();
    project.casey(&["infra", "--yes"]).assert_fails_with("same AWS access key");
    assert!(!project.tf_dir().join(".terraform").exists(), "terraform ran");

    // The service account's keys in backend/.env are how it should be.
    std::fs::write(
        project.path().join("backend/.env"),
        format!("AWS_ACCESS_KEY_ID={}\n", emulator.service().access_key_id),
    )
    .unwrap();
    let run = project.casey(&["whoami"]);
    run.assert_ok();
    assert!(run.stderr.contains("the admin: may deploy"), "{}", run.stderr);

    // A world-readable env file is flagged.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(project.tf_dir().join(".env"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = project.casey(&["whoami"]);
    assert!(run.stderr.contains("chmod 600"), "{}", run.stderr);
}

#[test]
fn without_a_terminal_and_without_yes_nothing_is_applied() {
    let emulator = Emulator::start();
    let project = Project::new(&emulator);
    let run = project.casey(&["infra"]);
    run.assert_fails_with("re-run with --yes");
    assert!(run.stderr.contains("to add"), "the plan summary is shown first: {}", run.stderr);
    assert_eq!(cluster_count(&emulator), 0, "nothing may be created");
    assert!(log_group_names(&emulator).is_empty());
    let leftovers: Vec<_> = std::fs::read_dir(project.tf_dir().join(".terraform"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("casey-deploy-"))
        .collect();
    assert!(leftovers.is_empty(), "plan files left behind: {leftovers:?}");
}

/// One emulator, one state, the whole life of `infra`: existing resources,
/// import, an interrupted apply, a clean apply, no-op, ALB on.
#[test]
fn infra_adopts_existing_resources_survives_interrupts_and_toggles_the_alb() {
    let emulator = Emulator::start();
    let project = Project::new(&emulator);

    // Created outside Terraform, as in the seed's troubleshooting section.
    emulator.aws(&["logs", "create-log-group", "--log-group-name", "casey-backend-aws-usage"]);
    emulator.aws(&[
        "iam",
        "create-policy",
        "--policy-name",
        "casey-backend-ai",
        "--policy-document",
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"polly:SynthesizeSpeech","Resource":"*"}]}"#,
    ]);

    // The release record, left by a stack whose state was lost: its value is the live release.
    let record = r#"{"image":"123456789012.dkr.ecr.us-east-1.amazonaws.com/casey-backend:latest","action":"created","note":"kept"}"#;
    emulator.aws(&["ssm", "put-parameter", "--name", "/casey-backend/release", "--type", "String", "--value", record]);

    let run = project.casey(&["infra", "--yes"]);
    run.assert_fails_with("casey-deploy import");
    assert!(run.stderr.contains("aws_cloudwatch_log_group.casey_backend_aws_usage"), "{}", run.stderr);
    assert!(run.stderr.contains("aws_iam_policy.casey_backend"), "{}", run.stderr);

    let run = project.casey(&["import"]);
    run.assert_ok();
    assert!(run.stderr.contains("imported aws_cloudwatch_log_group.casey_backend_aws_usage"), "{}", run.stderr);
    assert!(run.stderr.contains("imported aws_iam_policy.casey_backend"), "{}", run.stderr);
    assert!(run.stderr.contains("imported aws_ssm_parameter.release"), "{}", run.stderr);
    project.casey(&["import"]).assert_ok().stderr.contains("Nothing to import").then_some(()).expect("second import");

    // SIGINT (from another process, as CI would send it) during the apply.
    let mut child = project.command(&["infra", "--yes"]).stderr(Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut seen = String::new();
        let mut sent = false;
        for line in BufReader::new(stderr).lines() {
            let line = line.unwrap();
            seen.push_str(&line);
            seen.push('\n');
            if !sent && line.contains("Creating...") {
                // SAFETY: plain kill(2) of our own child.
                unsafe { libc::kill(pid as i32, libc::SIGINT) };
                sent = true;
            }
        }
        (seen, sent)
    });
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "infra did not stop after SIGINT");
        std::thread::sleep(Duration::from_millis(100));
    };
    let (seen, sent) = reader.join().unwrap();
    assert!(sent, "the apply never started:\n{seen}");
    assert_eq!(status.code(), Some(130), "{seen}");
    assert!(seen.contains("interrupted by SIGINT; no further step was started"), "{seen}");
    assert!(seen.contains("released its state lock") || seen.contains("may still be locked"), "{seen}");

    // State intact: the next run finishes the job.
    let run = project.apply_stack(&emulator);
    assert!(run.stderr.contains("Apply complete"), "{}", run.stderr);
    for name in ["casey-backend-aws-usage", "/ecs/casey-backend"] {
        assert!(log_group_names(&emulator).iter().any(|g| g == name), "log group {name} missing");
    }
    assert_eq!(cluster_count(&emulator), 1);
    let repos = emulator.aws(&["ecr", "describe-repositories"]);
    assert_eq!(repos["repositories"][0]["repositoryName"], "casey-backend");

    // Nothing to change: no apply, and no confirmation needed.
    let run = project.casey(&["infra"]);
    run.assert_ok();
    assert!(run.stderr.contains("No changes"), "{}", run.stderr);
    assert!(!run.stderr.contains("terraform apply"), "{}", run.stderr);
    let kept = emulator.aws(&["ssm", "get-parameter", "--name", "/casey-backend/release"]);
    assert_eq!(kept["Parameter"]["Value"], record, "Terraform never overwrites the release record");

    // Drift: --refresh-only takes AWS's word into the state and changes nothing.
    emulator.aws(&[
        "logs",
        "put-retention-policy",
        "--log-group-name",
        "/ecs/casey-backend",
        "--retention-in-days",
        "7",
    ]);
    let run = project.casey(&["infra", "--refresh-only", "--yes"]);
    run.assert_ok();
    assert!(run.stderr.contains("changed outside Terraform"), "{}", run.stderr);
    let retention = |e: &Emulator| {
        e.aws(&["logs", "describe-log-groups", "--log-group-name-prefix", "/ecs/casey-backend"])["logGroups"][0]
            ["retentionInDays"]
            .clone()
    };
    assert_eq!(retention(&emulator), 7, "a refresh-only apply must not touch AWS");
    // The next plan puts the configuration back, once confirmed.
    project.casey(&["infra"]).assert_fails_with("1 to change");
    project.casey(&["infra", "--yes"]).assert_ok();
    assert_ne!(retention(&emulator), 7);

    // --adopt: a resource the state lost is imported, and the apply goes on.
    project
        .terraform(emulator.admin(), &["state", "rm", "aws_cloudwatch_log_group.casey_backend_aws_usage"])
        .assert_ok();
    project.casey(&["infra", "--yes"]).assert_fails_with("casey-deploy infra --adopt");
    let run = project.casey(&["infra", "--yes", "--adopt"]);
    run.assert_ok();
    assert!(run.stderr.contains("imported aws_cloudwatch_log_group.casey_backend_aws_usage"), "{}", run.stderr);

    // The seed's ALB toggle.
    let lbs = |e: &Emulator| e.aws(&["elbv2", "describe-load-balancers"])["LoadBalancers"].as_array().unwrap().len();
    assert_eq!(lbs(&emulator), 0);
    project.casey(&["infra", "--yes", "--var", "enable_alb=true"]).assert_ok();
    assert_eq!(lbs(&emulator), 1);
    let var_file = project.path().join("alb.tfvars");
    std::fs::write(&var_file, "enable_alb = true\n").unwrap();
    let run = project.casey(&["infra", "--var-file", var_file.to_str().unwrap()]);
    assert!(run.ok() && run.stderr.contains("No changes"), "{}", run.all());
}

/// The seed's four ways to give the admin's credentials: the .env file, the
/// default profile, a named profile, plain environment variables.
#[test]
fn every_credential_source_of_the_seed_works() {
    let emulator = Emulator::start();
    let admin = emulator.admin();
    let project = Project::with_keys(&emulator, None);
    let credentials = project.path().join("credentials");
    std::fs::write(
        &credentials,
        format!(
            "[default]\naws_access_key_id = {0}\naws_secret_access_key = {1}\n\n[casey-admin]\naws_access_key_id = {0}\naws_secret_access_key = {1}\n",
            admin.access_key_id, admin.secret_access_key
        ),
    )
    .unwrap();
    let shared = credentials.to_str().unwrap();

    let run = project.casey_with(&["whoami"], &[("AWS_SHARED_CREDENTIALS_FILE", shared), ("AWS_REGION", "us-east-1")]);
    run.assert_ok();
    assert!(run.stderr.contains("the default AWS profile"), "{}", run.stderr);

    let run = project.casey_with(
        &["whoami"],
        &[("AWS_SHARED_CREDENTIALS_FILE", shared), ("AWS_PROFILE", "casey-admin"), ("AWS_REGION", "us-east-1")],
    );
    run.assert_ok();
    assert!(run.stderr.contains("AWS profile `casey-admin`"), "{}", run.stderr);

    let run = project.casey_with(
        &["whoami"],
        &[
            ("AWS_ACCESS_KEY_ID", admin.access_key_id.as_str()),
            ("AWS_SECRET_ACCESS_KEY", admin.secret_access_key.as_str()),
            ("AWS_REGION", "us-east-1"),
        ],
    );
    run.assert_ok();
    assert!(run.stderr.contains("from the environment"), "{}", run.stderr);

    // The file wins over the environment, as `source` would make it.
    project.write_env(admin);
    let run = project.casey_with(
        &["whoami"],
        &[("AWS_ACCESS_KEY_ID", emulator.service().access_key_id.as_str()), ("AWS_SECRET_ACCESS_KEY", "x")],
    );
    run.assert_ok();
    assert!(run.stderr.contains("terraform/.env"), "{}", run.stderr);
}

/// The seed's entry points still work, each as its verb.
#[test]
fn the_seed_scripts_call_their_verbs() {
    for (script, verb_help) in [
        ("deploy.sh", "Plan and apply the Terraform stack"),
        ("scripts/get-backend-url.sh", "Print the URL the frontend should use"),
        ("scripts/terraform-import-existing.sh", "Import resources that already exist"),
    ] {
        let out = std::process::Command::new(common::repo_root().join(script))
            .arg("--help")
            .env("CASEY_DEPLOY_BIN", env!("CARGO_BIN_EXE_casey-deploy"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains(verb_help), "{script}: {text}");
    }
}
