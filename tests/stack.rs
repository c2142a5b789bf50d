//! The Terraform stack itself (terraform/) against the emulator, with plain
//! terraform: least privilege (the admin holding only its own policies), the
//! move of the single admin policy into parts, no-ALB and ALB applies with
//! clean plans, teardown, and plans that must fail before AWS would.

mod common;

use common::{Emulator, Project, Run};
use serde_json::{json, Value};

#[track_caller]
fn ok(run: Run) -> Run {
    run.assert_ok();
    run
}

/// The admin's policies, in the order of `local.admin_policy_names`.
const ADMIN_POLICIES: [&str; 3] =
    ["casey-terraform-admin", "casey-terraform-admin-ecs", "casey-terraform-admin-network"];

/// The plan's resource changes (`terraform show -json` of a saved plan).
fn planned_changes(project: &Project, emulator: &Emulator, args: &[&str]) -> Vec<Value> {
    let mut plan = vec!["plan", "-input=false", "-out=check.tfplan"];
    plan.extend_from_slice(args);
    ok(project.terraform(emulator.admin(), &plan));
    let shown = ok(project.terraform(emulator.admin(), &["show", "-json", "check.tfplan"]));
    let shown: Value = serde_json::from_str(&shown.stdout).unwrap();
    shown["resource_changes"].as_array().cloned().unwrap_or_default()
}

/// `terraform plan` that must fail: its combined output.
#[track_caller]
fn plan_fails(project: &Project, emulator: &Emulator, args: &[&str]) -> String {
    let mut plan = vec!["plan", "-input=false", "-lock=false", "-no-color"];
    plan.extend_from_slice(args);
    let run = project.terraform(emulator.admin(), &plan);
    assert!(!run.ok(), "plan {args:?} must fail:\n{}", run.stdout);
    // Terraform wraps long error messages in a box; compare them unwrapped.
    run.stderr.replace(['│', '╷', '╵'], " ").split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The service's PRIMARY deployment once its rolloutState is `state`
/// (panics with the service's events after 90 s).
fn wait_for_rollout(emulator: &Emulator, state: &str) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let services = emulator.aws(&["ecs", "describe-services", "--cluster", "casey", "--services", "casey-backend"]);
        let service = &services["services"][0];
        let primary = service["deployments"].as_array().unwrap().iter().find(|d| d["status"] == "PRIMARY").cloned();
        if let Some(primary) = primary.filter(|d| d["rolloutState"] == state) {
            return primary;
        }
        assert!(std::time::Instant::now() < deadline, "no {state} deployment in 90 s: {}", service["events"]);
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// The stoppedReason of every stopped task of the cluster.
fn stopped_reasons(emulator: &Emulator) -> Vec<String> {
    let tasks = emulator.described_tasks(&["--desired-status", "STOPPED"]);
    tasks.iter().map(|t| t["stoppedReason"].as_str().unwrap_or("").to_owned()).collect()
}

fn outputs(project: &Project, emulator: &Emulator) -> Value {
    let run = ok(project.terraform(emulator.admin(), &["output", "-json"]));
    serde_json::from_str(&run.stdout).unwrap()
}

/// A self-signed certificate imported into the emulator's ACM.
fn import_certificate(emulator: &Emulator, dir: &std::path::Path) -> String {
    let status = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=api.casey.test"])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .output()
        .expect("openssl is needed (.ci/setup.sh installs it)");
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let cert = format!("fileb://{}", dir.join("cert.pem").display());
    let key = format!("fileb://{}", dir.join("key.pem").display());
    let out = emulator.aws(&["acm", "import-certificate", "--certificate", &cert, "--private-key", &key]);
    out["CertificateArn"].as_str().unwrap().to_owned()
}

#[test]
fn admin_policies_alone_apply_the_stack_and_alb_toggles_cleanly() {
    let emulator = Emulator::start();
    let project = Project::new(&emulator);
    let admin = emulator.admin();
    ok(project.terraform(admin, &["init", "-input=false"]));

    // Bootstrap (the seed: the first run needs broader rights): only the
    // admin policies and their attachments, with enforcement still off.
    ok(project.terraform(
        admin,
        &["apply", "-input=false", "-auto-approve", "-target=aws_iam_user_policy_attachment.terraform_admin"],
    ));
    assert_eq!(emulator.attached_policy_names(common::ADMIN), ADMIN_POLICIES, "every part is attached to the admin");
    for name in ADMIN_POLICIES {
        let arn = format!("arn:aws:iam::{}:policy/{name}", emulator.account_id);
        let policy = emulator.aws(&["iam", "get-policy", "--policy-arn", &arn]);
        let version = policy["Policy"]["DefaultVersionId"].as_str().unwrap().to_owned();
        let version = emulator.aws(&["iam", "get-policy-version", "--policy-arn", &arn, "--version-id", &version]);
        let document = &version["PolicyVersion"]["Document"];
        let document: Value = match document.as_str() {
            Some(text) => serde_json::from_str(text).unwrap(),
            None => document.clone(),
        };
        let size = document.to_string().len();
        // IAM's quota is 6,144 characters without whitespace; keep headroom.
        assert!(size < 5_120, "{name} is {size} characters: too close to IAM's 6,144");
        assert!(!document.to_string().contains("ecr:PutEncryptionConfiguration"), "not an IAM action: {name}");
    }

    // From here on the emulator checks signatures and IAM policies.
    emulator.control("POST", "/_casey/iam/enforce", &json!({"enabled": true}));
    let denied = project.terraform(emulator.service(), &["plan", "-input=false", "-lock=false"]);
    assert!(!denied.ok(), "the service account must not be able to plan the stack");
    assert!(
        denied.stderr.contains("AccessDenied") || denied.stderr.contains("not authorized"),
        "service account: {}",
        denied.stderr
    );
    ok(project.terraform(admin, &["apply", "-input=false", "-auto-approve"]));
    let plan = project.terraform(admin, &["plan", "-input=false", "-detailed-exitcode"]);
    assert_eq!(plan.code, Some(0), "a plan right after apply must be empty:\n{}", plan.stdout);
    emulator.control("POST", "/_casey/iam/enforce", &json!({"enabled": false}));

    // A state from before the split (one aws_iam_policy.terraform_admin): the
    // moved blocks turn it into the "iam" part in place, nothing is replaced.
    ok(project.terraform(
        admin,
        &["state", "mv", "aws_iam_policy.terraform_admin[\"iam\"]", "aws_iam_policy.terraform_admin"],
    ));
    ok(project.terraform(
        admin,
        &[
            "state",
            "mv",
            "aws_iam_user_policy_attachment.terraform_admin[\"iam\"]",
            "aws_iam_user_policy_attachment.terraform_admin",
        ],
    ));
    let changes = planned_changes(&project, &emulator, &[]);
    for address in ["aws_iam_policy.terraform_admin", "aws_iam_user_policy_attachment.terraform_admin"] {
        let change = changes
            .iter()
            .find(|c| c["address"] == format!("{address}[\"iam\"]").as_str())
            .unwrap_or_else(|| panic!("no change for {address}[\"iam\"]: {changes:?}"));
        assert_eq!(change["previous_address"], address, "{change}");
        assert_eq!(change["change"]["actions"], json!(["no-op"]), "moved in place: {change}");
    }
    assert!(
        changes.iter().all(|c| !c["change"]["actions"].as_array().unwrap().contains(&json!("delete"))),
        "nothing is destroyed or replaced: {changes:?}"
    );
    ok(project.terraform(admin, &["apply", "-input=false", "-auto-approve", "check.tfplan"]));

    // With its image in ECR (what `casey-deploy image` pushes), the service
    // runs: the tasks' public IP is their route to ECR on the default VPC.
    emulator.put_image("casey-backend", "latest");
    emulator.aws(&[
        "ecs",
        "update-service",
        "--cluster",
        "casey",
        "--service",
        "casey-backend",
        "--force-new-deployment",
    ]);
    wait_for_rollout(&emulator, "COMPLETED");

    // What exists, read with the aws CLI.
    let out = outputs(&project, &emulator);
    assert_eq!(out["ecs_cluster_name"]["value"], "casey");
    assert_eq!(out["ecs_service_name"]["value"], "casey-backend");
    assert!(out["ecr_repository_url"]["value"].as_str().unwrap().ends_with("/casey-backend"));
    assert_eq!(out["alb_dns_name"]["value"], Value::Null);
    assert_eq!(out["recommended_ws_url"]["value"], Value::Null);
    assert_eq!(out["aws_region"]["value"], "us-east-1");
    let service = emulator.aws(&["ecs", "describe-services", "--cluster", "casey", "--services", "casey-backend"]);
    let service = &service["services"][0];
    assert_eq!(service["launchType"], "FARGATE");
    assert_eq!(service["networkConfiguration"]["awsvpcConfiguration"]["assignPublicIp"], "ENABLED");
    assert_eq!(service["deploymentConfiguration"]["deploymentCircuitBreaker"]["rollback"], true);
    let family = service["taskDefinition"].as_str().unwrap().to_owned();
    let task = emulator.aws(&["ecs", "describe-task-definition", "--task-definition", &family]);
    let container = &task["taskDefinition"]["containerDefinitions"][0];
    assert_eq!(container["portMappings"][0]["containerPort"], 3001);
    assert_eq!(container["logConfiguration"]["options"]["awslogs-group"], "/ecs/casey-backend");
    assert!(container["healthCheck"]["command"].to_string().contains("healthcheck"));
    // Longer than the backend's longest graceful shutdown (25 s + 3 s).
    assert_eq!(container["stopTimeout"], 30);
    assert_eq!(emulator.attached_policy_names(common::SERVICE), ["casey-backend-ai"]);
    let retention =
        emulator.aws(&["logs", "describe-log-groups", "--log-group-name-prefix", "casey-backend-aws-usage"]);
    assert!(retention["logGroups"][0]["retentionInDays"].as_u64().is_some(), "usage log group has retention");
    let repo = emulator.aws(&["ecr", "describe-repositories", "--repository-names", "casey-backend"]);
    assert_eq!(repo["repositories"][0]["imageScanningConfiguration"]["scanOnPush"], true);
    let lifecycle = emulator.aws(&["ecr", "get-lifecycle-policy", "--repository-name", "casey-backend"]);
    let lifecycle: Value = serde_json::from_str(lifecycle["lifecyclePolicyText"].as_str().unwrap()).unwrap();
    let rules = lifecycle["rules"].as_array().unwrap();
    assert!(
        rules.iter().all(|r| r["selection"]["tagStatus"] != "any"),
        "no rule may expire recent tagged releases: {rules:?}"
    );
    let untagged = rules.iter().find(|r| r["selection"]["tagStatus"] == "untagged").expect("an untagged rule");
    assert_eq!(untagged["selection"]["countType"], "sinceImagePushed");
    assert_eq!(untagged["selection"]["countNumber"], 14);
    let tagged = rules.iter().find(|r| r["selection"]["tagStatus"] == "tagged").expect("a tagged rule");
    assert_eq!(tagged["selection"]["countType"], "imageCountMoreThan");
    assert_eq!(tagged["selection"]["countNumber"], 30);
    let scaling = emulator.aws(&["application-autoscaling", "describe-scalable-targets", "--service-namespace", "ecs"]);
    assert_eq!(scaling["ScalableTargets"][0]["ResourceId"], "service/casey/casey-backend");

    // The ALB, with an ACM certificate: HTTPS + a redirect from HTTP.
    let certificate = import_certificate(&emulator, project.path());
    let alb_vars = ["-var=enable_alb=true".to_owned(), format!("-var=alb_certificate_arn={certificate}")];
    let with_alb = |cmd: &[&str]| -> Vec<String> {
        cmd.iter().map(|s| s.to_string()).chain(alb_vars.iter().cloned()).collect::<Vec<_>>()
    };
    let args = with_alb(&["apply", "-input=false", "-auto-approve"]);
    ok(project.terraform(admin, &args.iter().map(String::as_str).collect::<Vec<_>>()));
    let args = with_alb(&["plan", "-input=false", "-detailed-exitcode"]);
    let plan = project.terraform(admin, &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(plan.code, Some(0), "a plan right after the ALB apply must be empty:\n{}", plan.stdout);

    let out = outputs(&project, &emulator);
    let dns = out["alb_dns_name"]["value"].as_str().unwrap().to_owned();
    assert_eq!(out["recommended_ws_url"]["value"], format!("wss://{dns}/ws"));
    let lbs = emulator.aws(&["elbv2", "describe-load-balancers"]);
    let lb = &lbs["LoadBalancers"][0];
    assert_eq!(lb["DNSName"], dns.as_str());
    let lb_arn = lb["LoadBalancerArn"].as_str().unwrap();
    let listeners = emulator.aws(&["elbv2", "describe-listeners", "--load-balancer-arn", lb_arn]);
    let listeners = listeners["Listeners"].as_array().unwrap();
    let https = listeners.iter().find(|l| l["Port"] == 443).expect("an HTTPS listener");
    assert_eq!(https["Protocol"], "HTTPS");
    assert_eq!(https["Certificates"][0]["CertificateArn"], certificate.as_str());
    let http = listeners.iter().find(|l| l["Port"] == 80).expect("an HTTP listener");
    assert_eq!(http["DefaultActions"][0]["Type"], "redirect");
    let groups = emulator.aws(&["elbv2", "describe-target-groups", "--load-balancer-arn", lb_arn]);
    let group = &groups["TargetGroups"][0];
    assert_eq!(group["TargetType"], "ip");
    assert_eq!(group["Port"], 3001);
    assert_eq!(group["HealthCheckPath"], "/health");
    let group_arn = group["TargetGroupArn"].as_str().unwrap();
    let attrs = emulator.aws(&["elbv2", "describe-target-group-attributes", "--target-group-arn", group_arn]);
    let attr = |key: &str| {
        attrs["Attributes"].as_array().unwrap().iter().find(|a| a["Key"] == key).map(|a| a["Value"].clone())
    };
    assert_eq!(attr("stickiness.enabled"), Some(json!("true")));
    assert_eq!(attr("stickiness.type"), Some(json!("lb_cookie")));
    // Long-lived WebSockets: the ELB default, not a short drain.
    assert_eq!(attr("deregistration_delay.timeout_seconds"), Some(json!("300")));
    // On the default VPC (no NAT, no endpoints) the tasks keep their public
    // IP behind the ALB, or they could not pull their image.
    let service = emulator.aws(&["ecs", "describe-services", "--cluster", "casey", "--services", "casey-backend"]);
    assert_eq!(service["services"][0]["networkConfiguration"]["awsvpcConfiguration"]["assignPublicIp"], "ENABLED");
    let lb_subnets = lb["AvailabilityZones"].as_array().unwrap();
    let zones: std::collections::BTreeSet<_> = lb_subnets.iter().map(|z| z["ZoneName"].as_str().unwrap()).collect();
    assert_eq!(zones.len(), lb_subnets.len(), "one subnet per Availability Zone: {lb_subnets:?}");

    // Behind the ALB the deployment (new: the load balancer changed) runs too,
    // with public IPs. Without them, on a VPC that has no NAT gateway and no
    // endpoints, ECS cannot pull the image and says so.
    wait_for_rollout(&emulator, "COMPLETED");
    let args = with_alb(&["apply", "-input=false", "-auto-approve", "-var=task_assign_public_ip=false"]);
    ok(project.terraform(admin, &args.iter().map(String::as_str).collect::<Vec<_>>()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while !stopped_reasons(&emulator)
        .iter()
        .any(|r| r.starts_with("ResourceInitializationError: unable to pull secrets or registry auth"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no task failed for its missing route: {:?}",
            stopped_reasons(&emulator)
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }

    // Teardown as documented in iam.tf: the admin's own policies are protected
    // from destroy (it would lock the admin out half way), so they leave the
    // state first and stay in AWS.
    ok(project.terraform(
        admin,
        &["state", "rm", "aws_iam_user_policy_attachment.terraform_admin", "aws_iam_policy.terraform_admin"],
    ));
    // ecr_force_delete is off: the repository goes only once it is empty.
    emulator.aws(&[
        "ecr",
        "batch-delete-image",
        "--repository-name",
        "casey-backend",
        "--image-ids",
        "imageTag=latest",
    ]);
    let args = with_alb(&["destroy", "-input=false", "-auto-approve"]);
    ok(project.terraform(admin, &args.iter().map(String::as_str).collect::<Vec<_>>()));
    let clusters = emulator.aws(&["ecs", "describe-clusters", "--clusters", "casey"]);
    assert!(
        clusters["clusters"].as_array().unwrap().iter().all(|c| c["status"] == "INACTIVE"),
        "the cluster is deleted: {clusters}"
    );
    assert_eq!(emulator.aws(&["elbv2", "describe-load-balancers"])["LoadBalancers"].as_array().unwrap().len(), 0);
    assert_eq!(emulator.attached_policy_names(common::ADMIN), ADMIN_POLICIES, "the admin keeps its rights");
}

#[test]
fn a_missing_service_user_names_the_variable_to_set() {
    let emulator = Emulator::start();
    let project = Project::new(&emulator);
    ok(project.terraform(emulator.admin(), &["init", "-input=false"]));
    let run = project
        .terraform(emulator.admin(), &["plan", "-input=false", "-var=service_account_iam_user_name=casey_nobody"]);
    assert!(!run.ok());
    assert!(run.stderr.contains("casey_nobody"), "{}", run.stderr);
    assert!(run.stderr.contains("service_account_iam_user_name"), "{}", run.stderr);
}

/// What AWS would reject fails at plan, with a message that says what to do.
#[test]
fn plans_fail_early_on_what_aws_would_reject() {
    let emulator = Emulator::start();
    let project = Project::new(&emulator);
    ok(project.terraform(emulator.admin(), &["init", "-input=false"]));

    // One admin policy document grown past IAM's 6,144 characters (a
    // throwaway override of its statements).
    let override_file = project.tf_dir().join("zz_oversize_override.tf");
    std::fs::write(
        &override_file,
        r#"data "aws_iam_policy_document" "terraform_admin_network" {
  statement {
    sid       = "Oversize"
    actions   = ["ec2:DescribeVpcAttribute"]
    resources = [for i in range(150) : format("arn:aws:ec2:us-east-1:123456789012:vpc/vpc-%017d", i)]
  }
}
"#,
    )
    .unwrap();
    let out = plan_fails(&project, &emulator, &[]);
    assert!(
        out.contains(
            "IAM policy casey-terraform-admin-network (aws_iam_policy.terraform_admin[\"network\"]) renders to"
        ),
        "{out}"
    );
    assert!(out.contains("over IAM's quota of 6144 for a managed policy"), "{out}");
    assert!(out.contains("Move statements from data.aws_iam_policy_document.terraform_admin_network"), "{out}");
    std::fs::remove_file(&override_file).unwrap();
    assert_eq!(
        emulator.aws(&["iam", "list-policies", "--scope", "Local"])["Policies"].as_array().unwrap().len(),
        0,
        "a plan creates nothing"
    );

    // Two subnets, one Availability Zone (for the ALB check below).
    let vpc = emulator.aws(&["ec2", "create-vpc", "--cidr-block", "10.10.0.0/16"]);
    let vpc = vpc["Vpc"]["VpcId"].as_str().unwrap().to_owned();
    let subnet = |cidr: &str, zone: &str| -> String {
        let subnet = emulator.aws(&[
            "ec2",
            "create-subnet",
            "--vpc-id",
            &vpc,
            "--cidr-block",
            cidr,
            "--availability-zone",
            zone,
        ]);
        subnet["Subnet"]["SubnetId"].as_str().unwrap().to_owned()
    };
    let subnets = vec![subnet("10.10.1.0/24", "us-east-1a"), subnet("10.10.2.0/24", "us-east-1a")];
    let one_zone = format!("-var=subnet_ids={}", serde_json::to_string(&subnets).unwrap());
    let long_name = format!("-var=ecs_service_name={}", "s".repeat(51));

    // Each plan with what it must say; independent, so they run side by side.
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        // Names past AWS's limits.
        (vec![&long_name], vec!["ecs_service_name must be 1-50 characters"]),
        (vec!["-var=ecs_service_name=sg-backend"], vec!["must not start with \"sg-\""]),
        (vec!["-var=alb_name=-casey"], vec!["alb_name must be 1-32 letters, digits and hyphens"]),
        (
            vec!["-var=ecs_service_name=casey_backend", "-var=enable_alb=true"],
            vec!["named \"casey_backend\"", "Set alb_name"],
        ),
        (vec!["-var=ecr_keep_tagged_images=3"], vec!["ecr_keep_tagged_images must be a whole number from 10 to 1000"]),
        (vec!["-var=ecs_log_group_name=aws/casey"], vec!["must not start with \"aws/\""]),
        (
            vec!["-var=container_stop_timeout=10"],
            vec!["container_stop_timeout must be a whole number of seconds from 30"],
        ),
        (
            vec!["-var=alb_deregistration_delay=4000"],
            vec!["alb_deregistration_delay must be a whole number of seconds from 0 to 3600"],
        ),
        // No ALB and no public IP: nobody could reach the backend.
        (vec!["-var=task_assign_public_ip=false"], vec!["task_assign_public_ip=false needs enable_alb=true"]),
        // An ALB needs two zones.
        (
            vec!["-var=enable_alb=true", &one_zone],
            vec!["An ALB needs subnets in at least two different Availability Zones", "are in 1 (us-east-1a)"],
        ),
    ];
    std::thread::scope(|scope| {
        let runs: Vec<_> =
            cases.iter().map(|(args, _)| scope.spawn(|| plan_fails(&project, &emulator, args))).collect();
        for ((args, needles), run) in cases.iter().zip(runs) {
            let out = run.join().unwrap();
            for needle in needles {
                assert!(out.contains(needle), "plan {args:?} must say `{needle}`:\n{out}");
            }
        }
    });

    // A third subnet in another zone: the ALB gets one subnet per zone, the
    // tasks all three.
    let mut all = subnets.clone();
    all.push(subnet("10.10.3.0/24", "us-east-1b"));
    let subnet_ids = format!("-var=subnet_ids={}", serde_json::to_string(&all).unwrap());
    let changes = planned_changes(&project, &emulator, &["-var=enable_alb=true", &subnet_ids]);
    let after = |address: &str| {
        changes.iter().find(|c| c["address"] == address).unwrap_or_else(|| panic!("{address} is planned"))["change"]
            ["after"]
            .clone()
    };
    let mut first_in_1a = subnets.clone();
    first_in_1a.sort();
    let mut expected = vec![first_in_1a[0].clone(), all[2].clone()];
    expected.sort();
    assert_eq!(after("aws_lb.backend[0]")["subnets"], json!(expected));
    let tasks = after("aws_ecs_service.backend")["network_configuration"][0]["subnets"].clone();
    assert_eq!(tasks.as_array().unwrap().len(), 3, "{tasks}");
}
