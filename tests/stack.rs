//! The Terraform stack itself (terraform/) against the emulator, with plain
//! terraform: least privilege, no-ALB and ALB applies with clean plans,
//! teardown, and a missing service user.

mod common;

use common::{Emulator, Project, Run};
use serde_json::{json, Value};

#[track_caller]
fn ok(run: Run) -> Run {
    run.assert_ok();
    run
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
fn admin_policy_alone_applies_the_stack_and_alb_toggles_cleanly() {
    let emulator = Emulator::start();
    let project = Project::new(&emulator);
    let admin = emulator.admin();
    ok(project.terraform(admin, &["init", "-input=false"]));

    // Bootstrap (the seed: the first run needs broader rights): only the
    // admin policy and its attachment, with enforcement still off.
    ok(project.terraform(
        admin,
        &["apply", "-input=false", "-auto-approve", "-target=aws_iam_user_policy_attachment.terraform_admin"],
    ));
    let attached = emulator.aws(&["iam", "list-attached-user-policies", "--user-name", common::ADMIN]);
    assert_eq!(attached["AttachedPolicies"][0]["PolicyName"], "casey-terraform-admin");

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
    let roles = emulator.aws(&["iam", "list-attached-user-policies", "--user-name", common::SERVICE]);
    assert_eq!(roles["AttachedPolicies"][0]["PolicyName"], "casey-backend-ai");
    let retention =
        emulator.aws(&["logs", "describe-log-groups", "--log-group-name-prefix", "casey-backend-aws-usage"]);
    assert!(retention["logGroups"][0]["retentionInDays"].as_u64().is_some(), "usage log group has retention");
    let repo = emulator.aws(&["ecr", "describe-repositories", "--repository-names", "casey-backend"]);
    assert_eq!(repo["repositories"][0]["imageScanningConfiguration"]["scanOnPush"], true);
    emulator.aws(&["ecr", "get-lifecycle-policy", "--repository-name", "casey-backend"]);
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

    // Teardown as documented in iam.tf: the admin's own policy is protected
    // from destroy (it would lock the admin out half way), so it leaves the
    // state first and stays in AWS.
    ok(project.terraform(
        admin,
        &["state", "rm", "aws_iam_user_policy_attachment.terraform_admin", "aws_iam_policy.terraform_admin"],
    ));
    let args = with_alb(&["destroy", "-input=false", "-auto-approve"]);
    ok(project.terraform(admin, &args.iter().map(String::as_str).collect::<Vec<_>>()));
    let clusters = emulator.aws(&["ecs", "describe-clusters", "--clusters", "casey"]);
    assert!(
        clusters["clusters"].as_array().unwrap().iter().all(|c| c["status"] == "INACTIVE"),
        "the cluster is deleted: {clusters}"
    );
    assert_eq!(emulator.aws(&["elbv2", "describe-load-balancers"])["LoadBalancers"].as_array().unwrap().len(), 0);
    let attached = emulator.aws(&["iam", "list-attached-user-policies", "--user-name", common::ADMIN]);
    assert_eq!(attached["AttachedPolicies"][0]["PolicyName"], "casey-terraform-admin", "the admin keeps its rights");
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
