//! Team state against the emulator: `state bootstrap` moves an applied
//! local state into S3 (read back with an independent client), the deploy
//! lock serialises two runs at once, and a dead holder's lock is named and
//! removed by `unlock`.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{answer_on_terminal, drain, Emulator, Project, Run};

const BUCKET: &str = "casey-tfstate-123456789012-us-east-1";
const KEY: &str = "casey/production/terraform.tfstate";
const LOCK_KEY: &str = "casey/production/deploy.lock";
const ADMIN_ARN: &str = "arn:aws:iam::123456789012:user/casey_aniruddh";

#[track_caller]
fn at(run: &Run, needle: &str) {
    assert!(run.stderr.contains(needle), "no `{needle}` in stderr:\n{}", run.stderr);
}

/// An object of the state bucket, read with the AWS CLI; `None` when absent.
fn object(emulator: &Emulator, key: &str) -> Option<Vec<u8>> {
    let file = tempfile::NamedTempFile::new().unwrap();
    let path = file.path().display().to_string();
    emulator.aws_as(emulator.admin(), &["s3api", "get-object", "--bucket", BUCKET, "--key", key, &path]).ok()?;
    Some(std::fs::read(file.path()).unwrap())
}

fn keys(emulator: &Emulator) -> Vec<String> {
    let listed = emulator.aws(&["s3api", "list-objects-v2", "--bucket", BUCKET]);
    listed["Contents"].as_array().into_iter().flatten().map(|o| o["Key"].as_str().unwrap().to_owned()).collect()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_owned()
}

#[test]
fn bootstrap_moves_the_applied_local_state_into_s3_and_infra_plans_no_changes() {
    let emulator = Emulator::start();
    let project = Project::new(&emulator);
    project.apply_stack(&emulator);
    let tf = project.tf_dir();
    let local: Value = serde_json::from_slice(&std::fs::read(tf.join("terraform.tfstate")).unwrap()).unwrap();
    let resources = local["resources"].as_array().unwrap().len();
    assert!(resources > 20, "an applied stack: {resources} resources");

    // From here on the admin has only the stack's own policies: they must
    // name every S3 action the bootstrap, the backend and the lock use.
    emulator.control("POST", "/_casey/iam/propagation", &json!({"seconds": 0}));
    emulator.control("POST", "/_casey/iam/enforce", &json!({"enabled": true}));
    let run = project.casey(&["state", "bootstrap"]);
    run.assert_ok();
    at(&run, &format!("bucket {BUCKET}: created, versioning enabled"));
    at(&run, &format!("moved the local state ({resources} resources"));
    at(&run, &format!("to s3://{BUCKET}/{KEY}"));

    // The state object holds what the local state held (terraform gives
    // the copy a lineage of its own).
    let remote: Value = serde_json::from_slice(&object(&emulator, KEY).expect("the state object")).unwrap();
    assert_eq!(remote["resources"], local["resources"]);
    assert_eq!(remote["outputs"], local["outputs"]);
    // The local copy is set aside under a name terraform never reads.
    assert!(!tf.join("terraform.tfstate").exists(), "the local state is not left in place");
    let moved: Vec<String> = std::fs::read_dir(&tf)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("terraform.tfstate.moved-to-s3-"))
        .collect();
    assert!(!moved.is_empty(), "the old local state is kept as a backup");
    let backend = std::fs::read_to_string(tf.join("backend.tf")).unwrap();
    for line in [
        &format!("bucket               = \"{BUCKET}\""),
        &format!("key                  = \"{KEY}\""),
        "use_lockfile         = true",
        "use_path_style       = true",
        "encrypt              = true",
        "workspace_key_prefix = \"casey\"",
    ] {
        assert!(backend.contains(line), "no `{line}` in backend.tf:\n{backend}");
    }

    let fmt = project.terraform(emulator.admin(), &["fmt", "-check", "-diff", "backend.tf"]);
    assert!(fmt.ok(), "backend.tf is not `terraform fmt` clean:\n{}{}", fmt.stdout, fmt.stderr);

    // The bucket's settings, read back by the AWS CLI.
    let versioning = emulator.aws(&["s3api", "get-bucket-versioning", "--bucket", BUCKET]);
    assert_eq!(versioning["Status"], "Enabled");
    let encryption = emulator.aws(&["s3api", "get-bucket-encryption", "--bucket", BUCKET]);
    let rule = &encryption["ServerSideEncryptionConfiguration"]["Rules"][0];
    assert_eq!(rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"], "AES256", "{encryption}");
    let blocks = emulator.aws(&["s3api", "get-public-access-block", "--bucket", BUCKET]);
    for setting in ["BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets"] {
        assert_eq!(blocks["PublicAccessBlockConfiguration"][setting], true, "{setting}: {blocks}");
    }
    let policy = emulator.aws(&["s3api", "get-bucket-policy", "--bucket", BUCKET]);
    let policy: Value = serde_json::from_str(policy["Policy"].as_str().unwrap()).unwrap();
    let statements = policy["Statement"].as_array().unwrap();
    let tls = statements.iter().find(|s| s["Sid"] == "DenyInsecureTransport").expect("a TLS-only statement");
    assert_eq!(tls["Effect"], "Deny");
    assert_eq!(tls["Condition"]["Bool"]["aws:SecureTransport"], "false");
    let keep =
        statements.iter().find(|s| s["Sid"] == "DenyStateBucketDeletion").expect("a statement keeping the bucket");
    assert_eq!(keep["Effect"], "Deny");

    // Terraform now reads the state from S3: nothing to change, and no lock
    // (terraform's or the tool's) is left behind.
    let run = project.casey(&["infra", "--yes"]);
    run.assert_ok();
    at(&run, "No changes");
    assert_eq!(keys(&emulator), vec![KEY.to_owned()], "only the state is left in the bucket");

    // Idempotent: a second run says it is done and changes nothing.
    let run = project.casey(&["state", "bootstrap"]);
    run.assert_ok();
    at(&run, "already set");
    at(&run, "done already");
    // (The test's own reads need more than the admin's rights.)
    emulator.control("POST", "/_casey/iam/enforce", &json!({"enabled": false}));
    // (The prefix also matches terraform's `<key>.tflock`, one version per lock.)
    let state_versions = || {
        let versions = emulator.aws(&["s3api", "list-object-versions", "--bucket", BUCKET, "--prefix", KEY]);
        versions["Versions"].as_array().into_iter().flatten().filter(|v| v["Key"] == KEY).count()
    };
    let count = state_versions();

    // The account the state bucket belongs to is pinned, as a local state's was.
    let run = project.casey(&["--account", "999999999999", "whoami"]);
    run.assert_fails_with("records account 123456789012");

    // backend.tf lost (a bad merge): the tool will not start from an empty state.
    std::fs::rename(tf.join("backend.tf"), project.path().join("backend.tf.saved")).unwrap();
    let run = project.casey(&["infra", "--yes"]);
    run.assert_fails_with("backend.tf is missing, but this stack's state was moved to S3");
    std::fs::rename(project.path().join("backend.tf.saved"), tf.join("backend.tf")).unwrap();
    let run = project.casey(&["infra", "--yes"]);
    run.assert_ok();
    at(&run, "No changes");
    assert_eq!(state_versions(), count, "plans without changes write no state");
}

#[test]
fn two_runs_at_once_take_turns_through_the_deploy_lock() {
    let emulator = Emulator::start();
    let project = Project::new(&emulator);
    project.apply_stack(&emulator);
    project.casey(&["state", "bootstrap"]).assert_ok();

    // The first run is slowed inside its plan (one slow ECS read), so it
    // holds the lock while the others start.
    emulator.control(
        "POST",
        "/_casey/faults",
        &json!({"service": "ecs", "action": "DescribeServices", "kind": "latency", "latency_ms": 12000, "count": 1}),
    );
    let change = ["infra", "--yes", "--var", "log_retention_in_days=14"];
    let mut first = project.command(&change).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let first_err = drain(first.stderr.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    while object(&emulator, LOCK_KEY).is_none() {
        assert!(Instant::now() < deadline, "the first run never took the lock:\n{}", first_err.lock().unwrap());
        std::thread::sleep(Duration::from_millis(200));
    }
    let holder: Value = serde_json::from_slice(&object(&emulator, LOCK_KEY).unwrap()).unwrap();
    assert_eq!(holder["verb"], "infra");
    assert_eq!(holder["who"], ADMIN_ARN);
    assert_eq!(holder["pid"], first.id());
    assert_eq!(holder["host"], hostname().as_str());

    // A second run stops at once, naming the holder.
    let run = project.casey(&change);
    run.assert_fails_with(&format!("another deploy holds the lock s3://{BUCKET}/{LOCK_KEY}"));
    at(&run, &format!("`casey-deploy infra` by {ADMIN_ARN} on {} (pid {})", hostname(), first.id()));
    at(&run, "--lock-timeout");

    // A third one waits for it, then finds nothing left to change.
    let mut args = change.to_vec();
    args.extend(["--lock-timeout", "5m"]);
    let third = project.command(&args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let first = first.wait_with_output().unwrap();
    let first_err = first_err.lock().unwrap().clone();
    assert!(first.status.success(), "{first_err}");
    assert!(
        first_err.contains("==> terraform apply (the saved plan)"),
        "the first run applied the change:\n{first_err}"
    );
    let third = third.wait_with_output().unwrap();
    let third_err = String::from_utf8_lossy(&third.stderr);
    assert!(third.status.success(), "{third_err}");
    assert!(third_err.contains("waiting for the deploy lock"), "{third_err}");
    assert!(third_err.contains("No changes"), "the waiting run planned after the first applied:\n{third_err}");

    // The state matches AWS, and the lock is gone.
    let groups = emulator.aws(&["logs", "describe-log-groups", "--log-group-name-prefix", "/ecs/casey-backend"]);
    assert_eq!(groups["logGroups"][0]["retentionInDays"], 14, "{groups}");
    let run = project.casey(&change);
    run.assert_ok();
    at(&run, "No changes");
    assert!(object(&emulator, LOCK_KEY).is_none(), "the deploy lock is released");
}

#[test]
fn a_dead_holders_lock_is_named_and_removed_by_unlock() {
    let emulator = Emulator::start();
    let project = Project::new(&emulator);
    let lock = project.tf_dir().join(".terraform").join("casey-deploy.lock");
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
    let elsewhere = json!({
        "id": "ci-runner-7-4242", "verb": "all", "who": ADMIN_ARN, "host": "ci-runner-7", "pid": 4242,
        "since": "2026-12-03T01:00:00Z",
    });
    std::fs::write(&lock, elsewhere.to_string()).unwrap();

    // A holder on another machine: named, and nothing is changed.
    let run = project.casey(&["state", "bootstrap"]);
    run.assert_fails_with("another deploy holds the lock");
    at(&run, &format!("`casey-deploy all` by {ADMIN_ARN} on ci-runner-7 (pid 4242), since 2026-12-03T01:00:00Z"));
    at(&run, "`casey-deploy unlock`");
    assert_eq!(emulator.aws(&["s3api", "list-buckets"])["Buckets"], json!([]), "no bucket was created");
    assert!(!project.tf_dir().join("backend.tf").exists());

    // unlock asks; without a terminal it needs --yes.
    let run = project.casey(&["unlock"]);
    run.assert_fails_with("no terminal to confirm");
    assert!(lock.exists());
    let question = "Type `unlock` to remove it";
    let (ok, err) = answer_on_terminal(project.command(&["unlock"]), question, "keep", Duration::from_secs(60));
    assert!(!ok && err.contains("the deploy lock was kept"), "{err}");
    assert!(lock.exists());
    let (ok, err) = answer_on_terminal(project.command(&["unlock"]), question, "unlock", Duration::from_secs(60));
    assert!(ok, "{err}");
    assert!(!lock.exists(), "unlock removed it");
    let run = project.casey(&["unlock"]);
    run.assert_ok();
    at(&run, "no deploy lock is held");

    // A holder alive on this machine is never removed.
    let alive = json!({"id": "x", "verb": "image", "who": ADMIN_ARN, "host": hostname(), "pid": std::process::id(), "since": "now"});
    std::fs::write(&lock, alive.to_string()).unwrap();
    project.casey(&["unlock", "--yes"]).assert_fails_with("which is still running on this machine");
    assert!(lock.exists());

    // A holder on this machine whose process has ended is taken over: the
    // bootstrap runs (from no state at all) and releases the lock.
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let pid = gone.id();
    gone.wait().unwrap();
    let dead = json!({"id": "y", "verb": "image", "who": ADMIN_ARN, "host": hostname(), "pid": pid, "since": "then"});
    std::fs::write(&lock, dead.to_string()).unwrap();
    let run = project.casey(&["state", "bootstrap"]);
    run.assert_ok();
    at(&run, "which has ended: taking it over");
    assert!(!lock.exists(), "the bootstrap released the lock");
    assert!(project.tf_dir().join("backend.tf").exists());
    // From now on the lock is in S3, beside the state.
    std::fs::write(&lock, elsewhere.to_string()).unwrap();
    let run = project.casey(&["state", "bootstrap"]);
    run.assert_ok();
    at(&run, "done already");
    assert!(!keys(&emulator).contains(&LOCK_KEY.to_owned()));
}
