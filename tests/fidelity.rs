//! What real AWS refuses, against the emulator made as strict as AWS
//! (emulator/README.md lists each rule and its AWS source):
//! - a first apply by an admin holding only the seed's bootstrap rights
//!   (IAM attachments take effect after a delay);
//! - no ECS task ever tries an image that is not pushed;
//! - ALB mode keeps a route to ECR, and a task without one fails with AWS's
//!   reason, which the tool reports;
//! - the rollout follower under lagging reads, transient errors and a
//!   circuit-breaker rollback.
//!
//! The Docker tests need the test engine and registry (`.ci/docker.sh
//! start`; .ci/run starts them) and fail without them. Each uses its own ECR
//! repository name, so the shared test registry never holds its image before
//! it pushes it.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::docker::{registry, unique, unique_context};
use common::{Emulator, Project, Run, ADMIN};

fn tasks(emulator: &Emulator) -> Vec<Value> {
    emulator.control("GET", "/_casey/ecs/tasks", &Value::Null).as_array().cloned().unwrap_or_default()
}

/// Where `needle` first appears in the run's stderr; panics when it does not.
#[track_caller]
fn at(run: &Run, needle: &str) -> usize {
    run.stderr.find(needle).unwrap_or_else(|| panic!("no `{needle}` in stderr:\n{}", run.stderr))
}

/// No task the emulator ever launched stopped because its image was missing.
#[track_caller]
fn assert_no_task_lacked_its_image(emulator: &Emulator) {
    for task in tasks(emulator) {
        let reason = task["stopped_reason"].as_str().unwrap_or_default();
        assert!(!reason.contains("CannotPullContainerError"), "a task tried an image that was not pushed: {task}");
    }
}

fn service_deployments(emulator: &Emulator, service: &str) -> Vec<Value> {
    let described = emulator.aws(&["ecs", "describe-services", "--cluster", "casey", "--services", service]);
    described["services"][0]["deployments"].as_array().cloned().unwrap_or_default()
}

fn wait_until(what: &str, seconds: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !done() {
        assert!(Instant::now() < deadline, "timed out after {seconds}s waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn bootstrap_rights_alone_deploy_a_fresh_account_in_order() {
    let emulator = Emulator::start();
    let project = Project::new(&emulator);
    // The seed's prerequisite: the admin can create and attach IAM policies
    // and create log groups, nothing else.
    let document = std::fs::read_to_string(common::repo_root().join("tests/fixtures/bootstrap-admin-policy.json"))
        .expect("tests/fixtures/bootstrap-admin-policy.json");
    let created =
        emulator.aws(&["iam", "create-policy", "--policy-name", "casey-bootstrap", "--policy-document", &document]);
    let arn = created["Policy"]["Arn"].as_str().unwrap().to_owned();
    emulator.aws(&["iam", "attach-user-policy", "--user-name", ADMIN, "--policy-arn", &arn]);
    emulator.control("POST", "/_casey/iam/propagation", &json!({"seconds": 3}));
    std::thread::sleep(Duration::from_secs(3)); // the bootstrap policy itself propagates
    emulator.control("POST", "/_casey/iam/enforce", &json!({"enabled": true}));

    let run = project.casey(&["infra", "--yes"]);
    run.assert_ok();
    // The admin's own policies first, IAM given time, then the rest.
    let first = at(&run, "first apply: the admin's own IAM policies first");
    let waiting = at(&run, "waiting for IAM to grant the new policies");
    let granted = at(&run, "IAM grants the admin's policies");
    let plan = run.stderr[granted..].find("==> terraform plan").map(|i| i + granted).expect("the full plan after");
    assert!(first < waiting && waiting < granted && granted < plan, "{}", run.stderr);
    // No image yet: the ECS service is not created.
    at(&run, "casey-backend:latest is not in ECR yet");
    let attached = emulator.aws(&["iam", "list-attached-user-policies", "--user-name", ADMIN]);
    let names: Vec<&str> =
        attached["AttachedPolicies"].as_array().unwrap().iter().map(|p| p["PolicyName"].as_str().unwrap()).collect();
    assert!(names.contains(&"casey-terraform-admin"), "{names:?}");
    assert!(names.iter().filter(|n| n.starts_with("casey-terraform-admin")).count() >= 2, "split: {names:?}");
    assert!(names.len() <= 10, "IAM's managed policies per user quota: {names:?}");
    let services = emulator.aws(&["ecs", "list-services", "--cluster", "casey"]);
    assert_eq!(services["serviceArns"], json!([]), "no service before its image exists");
    assert!(tasks(&emulator).is_empty(), "no task was started");

    // The image arrives (what `image` pushes); the next run creates the service.
    emulator.put_image("casey-backend", "latest");
    let run = project.casey(&["infra", "--yes"]);
    run.assert_ok();
    assert!(!run.stderr.contains("first apply"), "the bootstrap phase runs once: {}", run.stderr);
    wait_until("the first deployment to complete", 60, || {
        service_deployments(&emulator, "casey-backend").iter().any(|d| d["rolloutState"] == "COMPLETED")
    });
    assert_no_task_lacked_its_image(&emulator);
    let run = project.casey(&["infra", "--yes"]);
    run.assert_ok();
    at(&run, "No changes");
}

#[test]
fn alb_mode_keeps_a_route_to_ecr_and_a_task_without_one_fails_with_awss_reason() {
    let registry = registry();
    let emulator = Emulator::start();
    emulator.control("POST", "/_casey/ecr/registry", &json!({ "registry": registry }));
    let project = Project::new(&emulator);
    let repo = format!("ecr_repository_name={}", unique("fid-alb"));
    let (_dir, context) = unique_context();
    let context = context.display().to_string();
    let common_args = ["--var", "enable_alb=true", "--var", &repo, "--registry", &registry, "--context", &context];

    // A fresh account: all but the service, the push, then the service.
    let mut args = vec!["all", "--yes", "--tag", "t1", "--timeout", "180"];
    args.extend(common_args);
    let run = project.casey(&args);
    run.assert_ok();
    let deferred = at(&run, "is not in ECR yet");
    let pushed = at(&run, "pushed ");
    let created = at(&run, "applying Terraform to create the ECS service");
    assert!(deferred < pushed && pushed < created, "{}", run.stderr);
    at(&run, "COMPLETED: 1/1 task(s) running");
    assert_no_task_lacked_its_image(&emulator);

    // The running task has a public IP, and its subnet routes to an internet gateway.
    let running: Vec<Value> = tasks(&emulator).into_iter().filter(|t| t["last_status"] == "RUNNING").collect();
    assert_eq!(running.len(), 1, "{running:?}");
    let eni = running[0]["eni_id"].as_str().unwrap();
    let described = emulator.aws(&["ec2", "describe-network-interfaces", "--network-interface-ids", eni]);
    let interface = &described["NetworkInterfaces"][0];
    assert!(interface["Association"]["PublicIp"].as_str().is_some_and(|ip| ip.starts_with("127.")), "{interface}");
    let vpc = interface["VpcId"].as_str().unwrap();
    let tables = emulator.aws(&["ec2", "describe-route-tables", "--filters", &format!("Name=vpc-id,Values={vpc}")]);
    let subnet = interface["SubnetId"].as_str().unwrap();
    let tables = tables["RouteTables"].as_array().unwrap();
    let table = tables
        .iter()
        .find(|t| t["Associations"].as_array().unwrap().iter().any(|a| a["SubnetId"] == subnet))
        .or_else(|| tables.iter().find(|t| t["Associations"].as_array().unwrap().iter().any(|a| a["Main"] == true)))
        .expect("the subnet's route table");
    assert!(
        table["Routes"].as_array().unwrap().iter().any(|r| r["DestinationCidrBlock"] == "0.0.0.0/0"
            && r["GatewayId"].as_str().is_some_and(|g| g.starts_with("igw-"))),
        "a default route to an internet gateway: {table}"
    );

    // Without a public IP on the default VPC (no NAT, no endpoints) the tasks
    // cannot reach ECR: ECS's reason is reported and the rollout fails.
    let mut args = vec!["image", "--yes", "--tag", "t2", "--timeout", "180"];
    args.extend(common_args);
    args.extend(["--var", "task_assign_public_ip=false"]);
    let run = project.casey(&args);
    run.assert_fails_with("step `rollout`");
    run.assert_fails_with("ResourceInitializationError: unable to pull secrets or registry auth");
}

#[test]
fn the_rollout_follower_survives_lagging_reads_and_transient_errors_and_names_a_rollback() {
    let registry = registry();
    let emulator = Emulator::start();
    emulator.control("POST", "/_casey/ecr/registry", &json!({ "registry": registry }));
    let project = Project::new(&emulator);
    let repo = format!("ecr_repository_name={}", unique("fid-roll"));
    let (_dir, context) = unique_context();
    let context = context.display().to_string();
    // Each release its own content: the same content is the same digest,
    // which is already live and so nothing to roll out.
    let image = |tag: &str| -> Run {
        std::fs::write(Path::new(&context).join("hello.txt"), format!("release {tag} {}\n", unique("c"))).unwrap();
        project.casey(&[
            "image",
            "--var",
            &repo,
            "--registry",
            &registry,
            "--context",
            &context,
            "--tag",
            tag,
            "--timeout",
            "120",
        ])
    };
    project
        .casey(&["all", "--yes", "--var", &repo, "--registry", &registry, "--context", &context, "--tag", "r1"])
        .assert_ok();

    // Reads that lag the UpdateService by 4 s: the new deployment is not
    // listed at first; that is no failure.
    emulator.control("POST", "/_casey/ecs/read-lag", &json!({"seconds": 4}));
    let run = image("r2");
    run.assert_ok();
    at(&run, "COMPLETED: 1/1 task(s) running");
    emulator.control("POST", "/_casey/ecs/read-lag", &json!({"seconds": 0}));

    // Server errors and throttling: more than the SDK's own retries absorb.
    emulator.control(
        "POST",
        "/_casey/faults",
        &json!({"service": "ecs", "action": "DescribeServices", "kind": "http500", "count": 7}),
    );
    emulator.control(
        "POST",
        "/_casey/faults",
        &json!({"service": "ecs", "action": "UpdateService", "kind": "throttle", "count": 2}),
    );
    emulator.control("POST", "/_casey/faults", &json!({"service": "ecr", "kind": "throttle", "count": 2}));
    let run = image("r3");
    run.assert_ok();
    at(&run, "(retrying)");
    at(&run, "COMPLETED: 1/1 task(s) running");
    assert_eq!(emulator.control("GET", "/_casey/faults", &Value::Null), json!([]), "every fault fired");

    // A real rollback: the circuit breaker fails ours and ECS rolls back.
    let reason = "Essential container in task exited (exit code 1)";
    emulator.control(
        "POST",
        "/_casey/ecs/fail-deployments",
        &json!({"cluster": "casey", "service": "casey-backend", "reason": reason, "count": 1}),
    );
    let run = image("r4");
    run.assert_fails_with("step `rollout`");
    run.assert_fails_with(reason);
    at(&run, "rolled the service back");
}
