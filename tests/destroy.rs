//! `destroy` against the emulator, under IAM enforcement (the admin holding
//! only the stack's own policies): it asks for the environment's name,
//! refuses without a terminal, tears down all but the admin's policies, and
//! the admin can build the stack again.

mod common;

use std::time::Duration;

use serde_json::{json, Value};

use common::{answer_on_terminal, Emulator, Project, ADMIN};

/// ACTIVE clusters (a deleted one is INACTIVE, and may stay discoverable for a while, as on ECS).
fn clusters(emulator: &Emulator) -> usize {
    let described = emulator.aws(&["ecs", "describe-clusters", "--clusters", "casey"]);
    described["clusters"].as_array().into_iter().flatten().filter(|c| c["status"] == "ACTIVE").count()
}

#[test]
fn destroy_asks_for_the_environment_and_keeps_the_admin_able_to_build_again() {
    let emulator = Emulator::start();
    let project = Project::new(&emulator);
    project.apply_stack(&emulator); // with an image in ECR
    assert_eq!(clusters(&emulator), 1);
    let admin_policies = emulator.attached_policy_names(ADMIN);
    assert!(
        admin_policies.iter().filter(|n| n.starts_with("casey-terraform-admin")).count() == 3,
        "{admin_policies:?}"
    );
    emulator.control("POST", "/_casey/iam/propagation", &json!({"seconds": 0}));
    emulator.control("POST", "/_casey/iam/enforce", &json!({"enabled": true}));

    // Without a terminal and without --yes: nothing is destroyed.
    let run = project.casey(&["destroy"]);
    run.assert_fails_with("no terminal to confirm the destroy, so nothing was destroyed");
    assert!(run.stderr.contains("to destroy."), "the plan summary was shown first: {}", run.stderr);
    assert_eq!(clusters(&emulator), 1);

    // On a terminal the environment's name must be typed; `yes` is not it.
    let question = "Type the environment's name (production)";
    let limit = Duration::from_secs(240);
    let (ok, err) = answer_on_terminal(project.command(&["destroy"]), question, "yes", limit);
    assert!(!ok && err.contains("destroy cancelled"), "{err}");
    assert_eq!(clusters(&emulator), 1, "nothing was destroyed");

    let (ok, text) = answer_on_terminal(project.command(&["destroy"]), question, "production", limit);
    assert!(ok, "{text}");
    assert!(text.contains("deleted the 1 image(s) in ECR repository casey-backend"), "{text}");
    assert!(text.contains("kept: the admin's policies"), "{text}");

    // Gone: the cluster, the service, the repository, the log groups, the release record.
    emulator.control("POST", "/_casey/iam/enforce", &json!({"enabled": false}));
    assert_eq!(clusters(&emulator), 0);
    let repos = emulator.aws(&["ecr", "describe-repositories"]);
    assert_eq!(repos["repositories"], json!([]), "{repos}");
    let groups = emulator.aws(&["logs", "describe-log-groups", "--log-group-name-prefix", "/ecs/casey-backend"]);
    assert_eq!(groups["logGroups"], json!([]), "{groups}");
    // Kept: the admin's policies, attached, and in the state.
    assert_eq!(emulator.attached_policy_names(ADMIN), admin_policies);
    let listed = project.terraform(emulator.admin(), &["state", "list"]);
    let managed: Vec<&str> = listed.stdout.lines().filter(|l| !l.starts_with("data.")).collect();
    assert_eq!(managed.len(), 6, "only the admin's three policies and their attachments: {managed:?}");
    assert!(managed.iter().all(|a| a.contains("terraform_admin")), "{managed:?}");

    // The admin builds it again with its own rights, and nothing is left over.
    emulator.control("POST", "/_casey/iam/enforce", &json!({"enabled": true}));
    let run = project.casey(&["infra", "--yes"]);
    run.assert_ok();
    assert!(run.stderr.contains("to add"), "{}", run.stderr);
    emulator.control("POST", "/_casey/iam/enforce", &json!({"enabled": false}));
    assert_eq!(clusters(&emulator), 1);
    let run = project.casey(&["destroy", "--yes", "--json"]);
    run.assert_ok();
    let last: Value = serde_json::from_str(run.stdout.lines().last().unwrap()).unwrap();
    assert_eq!((last["event"].as_str(), last["ok"].as_bool()), (Some("summary"), Some(true)), "{last}");
    assert!(last["destroyed"].as_u64().unwrap() > 10, "{last}");
    let run = project.casey(&["destroy", "--yes"]);
    run.assert_ok();
    assert!(run.stderr.contains("nothing to destroy"), "{}", run.stderr);
}
