//! A CI job deploys through a role, with no admin keys: the stack attaches
//! the admin's policies to the role (`terraform_admin_role_name`), the job's
//! credentials come from web identity (`AWS_ROLE_ARN` +
//! `AWS_WEB_IDENTITY_TOKEN_FILE`, what GitHub Actions' OIDC and EKS provide),
//! and `--admin-principal` (`CASEY_ADMIN_PRINCIPAL`) names the role. Against
//! the emulator under IAM enforcement, so the role's rights are the stack's
//! policies alone. (The emulator does not verify the OIDC token's signature:
//! no identity provider runs here. The trust policy is AWS's documented one.)

mod common;

use base64::Engine as _;
use serde_json::{json, Value};

use common::{Emulator, Project};

const ROLE: &str = "casey-ci";
const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/casey-ci";

#[test]
fn a_ci_job_deploys_through_a_role_without_admin_keys() {
    let emulator = Emulator::start();
    let provider = "arn:aws:iam::123456789012:oidc-provider/token.actions.githubusercontent.com";
    emulator.aws(&[
        "iam",
        "create-open-id-connect-provider",
        "--url",
        "https://token.actions.githubusercontent.com",
        "--client-id-list",
        "sts.amazonaws.com",
        "--thumbprint-list",
        "6938fd4d98bab03faadb97b34396831e3780aea1",
    ]);
    let trust = json!({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow",
        "Principal": {"Federated": provider},
        "Action": "sts:AssumeRoleWithWebIdentity",
        "Condition": {
            "StringEquals": {"token.actions.githubusercontent.com:aud": "sts.amazonaws.com"},
            "StringLike": {"token.actions.githubusercontent.com:sub": "repo:casey/casey:ref:refs/heads/main"},
        },
    }]});
    emulator.aws(&["iam", "create-role", "--role-name", ROLE, "--assume-role-policy-document", &trust.to_string()]);

    // The admin (with keys) applies the stack once, naming the deploy role.
    let project = Project::new(&emulator);
    let with_role = ["--var", "terraform_admin_role_name=casey-ci"];
    let mut args = vec!["infra", "--yes"];
    args.extend(with_role);
    project.casey(&args).assert_ok();
    emulator.put_image("casey-backend", "latest");
    project.casey(&args).assert_ok();
    let attached = emulator.aws(&["iam", "list-attached-role-policies", "--role-name", ROLE]);
    let mut names: Vec<&str> =
        attached["AttachedPolicies"].as_array().unwrap().iter().map(|p| p["PolicyName"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["casey-terraform-admin", "casey-terraform-admin-ecs", "casey-terraform-admin-network"]);

    // The CI job: no .env, no keys; a web identity token and the role.
    std::fs::remove_file(project.tf_dir().join(".env")).unwrap();
    let token = project.path().join("oidc-token");
    std::fs::write(&token, jwt("repo:casey/casey:ref:refs/heads/main")).unwrap();
    let token = token.display().to_string();
    let ci_env = [
        ("AWS_ROLE_ARN", ROLE_ARN),
        ("AWS_WEB_IDENTITY_TOKEN_FILE", token.as_str()),
        ("AWS_ROLE_SESSION_NAME", "ci-run-42"),
        ("AWS_REGION", "us-east-1"),
    ];
    emulator.control("POST", "/_casey/iam/propagation", &json!({"seconds": 0}));
    emulator.control("POST", "/_casey/iam/enforce", &json!({"enabled": true}));

    // A token for another repository is refused by the role's trust policy.
    let other = project.path().join("other-token");
    std::fs::write(&other, jwt("repo:someone/else:ref:refs/heads/main")).unwrap();
    let other = other.display().to_string();
    let mut other_env = ci_env.to_vec();
    other_env[1] = ("AWS_WEB_IDENTITY_TOKEN_FILE", other.as_str());
    other_env.push(("CASEY_ADMIN_PRINCIPAL", ROLE_ARN));
    project
        .casey_with(&["whoami"], &other_env)
        .assert_fails_with("Not authorized to perform sts:AssumeRoleWithWebIdentity");

    // Without naming the role as the admin, the guard refuses it.
    let refused = project.casey_with(&["whoami"], &ci_env);
    refused.assert_fails_with("assumed-role/casey-ci/ci-run-42");
    let mut with_principal = ci_env.to_vec();
    with_principal.push(("CASEY_ADMIN_PRINCIPAL", ROLE_ARN));
    let who = project.casey_with(&["whoami"], &with_principal);
    who.assert_ok();
    assert!(who.stderr.contains("web identity"), "the credentials' source is named: {}", who.stderr);
    assert!(who.stderr.contains("the admin: may deploy"), "{}", who.stderr);

    // With the stack's policies alone the role plans, and changes, the stack.
    let run = project.casey_with(&args, &with_principal);
    run.assert_ok();
    assert!(run.stderr.contains("No changes"), "{}", run.stderr);
    let token_text = std::fs::read_to_string(&token).unwrap();
    run.assert_no_secrets(&[token_text]);
    let mut change = args.clone();
    change.extend(["--var", "log_retention_in_days=14"]);
    let run = project.casey_with(&change, &with_principal);
    run.assert_ok();
    assert!(run.stderr.contains("==> terraform apply (the saved plan)"), "{}", run.stderr);
    emulator.control("POST", "/_casey/iam/enforce", &json!({"enabled": false}));
    let groups = emulator.aws(&["logs", "describe-log-groups", "--log-group-name-prefix", "/ecs/casey-backend"]);
    assert_eq!(groups["logGroups"][0]["retentionInDays"], 14, "{groups}");
}

/// An OIDC token as GitHub Actions issues it (the emulator checks its
/// claims against the provider and the trust policy, not its signature).
fn jwt(sub: &str) -> String {
    let part = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3600;
    let claims = json!({
        "iss": "https://token.actions.githubusercontent.com", "aud": "sts.amazonaws.com", "sub": sub, "exp": exp,
    });
    format!("{}.{}.c2lnbmF0dXJl", part(json!({"alg": "RS256", "typ": "JWT"})), part(claims))
}
