//! `--json` on every verb: stdout holds only JSON (one document, or NDJSON
//! events ending in a summary), failures included, and a secret stays masked
//! in the JSON and in the human text alike. Against the emulator.

mod common;

use common::{Emulator, Project, Run};
use serde_json::Value;

/// The one JSON document a short verb printed.
#[track_caller]
fn document(run: &Run) -> Value {
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{}\nstderr:\n{}", run.stdout, run.stderr))
}

/// The NDJSON events a long verb printed; the last is its summary.
#[track_caller]
fn events(run: &Run) -> Vec<Value> {
    let events: Vec<Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not an NDJSON line ({e}): {l}\n{}", run.stderr)))
        .collect();
    let last = events.last().unwrap_or_else(|| panic!("no events\nstderr:\n{}", run.stderr));
    assert_eq!(last["event"], "summary", "the last event is the summary: {}", run.stdout);
    assert_eq!(last["ok"].as_bool(), Some(run.ok()), "summary ok matches the exit code: {}", run.stdout);
    assert_eq!(events.iter().filter(|e| e["event"] == "summary").count(), 1, "{}", run.stdout);
    events
}

#[test]
fn every_verb_prints_only_json_with_json() {
    let emulator = Emulator::start();
    let project = Project::new(&emulator);
    let secret = format!("probe0secret0{}", std::process::id());
    let env = [("CASEY_PROBE_SECRET", secret.as_str())];
    let casey = |args: &[&str]| {
        let run = project.casey_with(args, &env);
        assert!(!run.all().contains(&secret), "the secret leaked:\n{}", run.all());
        run
    };

    let whoami = casey(&["whoami", "--json"]);
    whoami.assert_ok();
    let doc = document(&whoami);
    assert_eq!(doc["admin"], true);
    assert!(doc["arn"].as_str().is_some_and(|a| a.ends_with(":user/casey_aniruddh")), "{doc}");
    assert_eq!(doc["account"].as_str().map(str::len), Some(12), "{doc}");

    // The first apply: events for the plan and the apply, and a summary.
    let infra = casey(&["infra", "--yes", "--json"]);
    infra.assert_ok();
    let got = events(&infra);
    // A first apply plans the admin's policies alone, then the rest but the service.
    let stages: Vec<&str> = got.iter().filter(|e| e["event"] == "plan").filter_map(|e| e["stage"].as_str()).collect();
    assert_eq!(stages, ["admin", "without_service"], "{}", infra.stdout);
    let plan = got.iter().find(|e| e["stage"] == "without_service").unwrap();
    assert!(plan["add"].as_u64().is_some_and(|n| n > 10), "{plan}");
    assert!(plan["created"].as_array().is_some_and(|c| c.iter().any(|a| a == "aws_ecr_repository.backend")), "{plan}");
    assert!(got.iter().any(|e| e["event"] == "applied"), "{}", infra.stdout);
    assert_eq!(got.last().unwrap()["outcome"], "waiting_for_image", "{}", infra.stdout);
    // The plan itself is summarised on stderr, not printed in full (that is -v).
    assert!(infra.stderr.contains("to add") && infra.stderr.contains("the full plan: run with -v"), "{}", infra.stderr);
    assert!(!infra.stderr.contains("Terraform will perform the following actions"), "{}", infra.stderr);

    // A failure is JSON too: the summary says ok=false and why.
    let backend = common::repo_root().join("backend").display().to_string();
    let image = casey(&["image", "--json", "--context", &backend, "--tag", &format!("{secret}!")]);
    assert!(!image.ok(), "an invalid tag must fail");
    let summary = events(&image).pop().unwrap();
    let error = summary["error"].as_str().unwrap_or_default();
    assert!(error.contains("tag") && error.contains("********"), "the error names the tag, masked: {summary}");

    // The image is in ECR: the service is created; -q hides the human text.
    let put = emulator.put_image("casey-backend", "latest");
    let pushed_digest = put["image"]["imageId"]["imageDigest"].as_str().unwrap_or_default().to_owned();
    let infra = casey(&["infra", "--yes", "--json", "-q"]);
    infra.assert_ok();
    assert_eq!(events(&infra).pop().unwrap()["outcome"], "applied", "{}", infra.stdout);
    assert!(!infra.stderr.contains("to add"), "-q hides the plan summary: {}", infra.stderr);
    let again = casey(&["infra", "--yes", "--json", "-v"]);
    let got = events(&again);
    // -v: terraform's own plan output; an init with nothing changed is skipped.
    assert!(again.stderr.contains("Your infrastructure matches the configuration"), "{}", again.stderr);
    assert!(
        again.stderr.contains("terraform init: nothing changed since the last init here; skipped"),
        "{}",
        again.stderr
    );
    assert_eq!(got.last().unwrap()["outcome"], "no_changes");
    assert_eq!(got.iter().find(|e| e["event"] == "plan").map(|p| p["add"].clone()), Some(0.into()));

    let import = casey(&["import", "--json"]);
    import.assert_ok();
    assert_eq!(events(&import).pop().unwrap()["imported"], serde_json::json!([]));

    let url = casey(&["backend-url", "--json", "--wait", "60"]);
    url.assert_ok();
    let doc = document(&url);
    assert!(doc["url"].as_str().is_some_and(|u| u.starts_with("ws://127.")), "{doc}");
    assert!(!url.stdout.contains("BACKEND_WS_URL="), "KEY=value lines move to stderr: {}", url.stdout);
    assert!(url.stderr.contains("BACKEND_WS_URL=ws://127."), "{}", url.stderr);

    // status: the service, its counts, the live image's digest as ECR holds it, the URL.
    let status = casey(&["status", "--json"]);
    status.assert_ok();
    let doc = document(&status);
    assert_eq!(doc["service"], "casey-backend", "{doc}");
    assert_eq!((doc["running"].as_i64(), doc["desired"].as_i64()), (Some(1), Some(1)), "{doc}");
    assert!(pushed_digest.starts_with("sha256:"), "{put}");
    assert_eq!(doc["image_digest"], pushed_digest.as_str(), "{doc}");
    assert_eq!(doc["image_tag"], "latest", "{doc}");
    let deployments = doc["deployments"].as_array().cloned().unwrap_or_default();
    assert!(deployments.iter().any(|d| d["status"] == "PRIMARY" && d["running"] == 1), "{doc}");
    assert_eq!(doc["url"], document(&url)["url"], "{doc}");
    assert!(doc["probe"].as_array().is_some_and(|p| p.len() == 1 && p[0]["ok"].is_boolean()), "{doc}");
    assert!(status.stderr.contains("live: ") && status.stderr.contains("deployment "), "{}", status.stderr);

    // history: one document, an array (the placeholder before the first deploy is no release);
    // rollback with nothing to roll back to: a JSON failure that says so.
    let history = casey(&["history", "--json"]);
    history.assert_ok();
    assert_eq!(document(&history), serde_json::json!([]), "{}", history.stdout);
    let rollback = casey(&["rollback", "--json", "--yes"]);
    assert!(!rollback.ok());
    let summary = events(&rollback).pop().unwrap();
    assert_eq!(summary["ok"], false, "{summary}");
    assert!(summary["error"].as_str().unwrap_or_default().contains("no earlier release"), "{summary}");

    // logs: NDJSON `log` events (none here: no runner prints) and the summary.
    let logs = casey(&["logs", "--json", "--since", "1h"]);
    logs.assert_ok();
    let got = events(&logs);
    assert!(got.iter().all(|e| e["event"] == "log" || e["event"] == "summary"), "{}", logs.stdout);
    assert_eq!(got.last().unwrap()["log_group"], "/ecs/casey-backend", "{}", logs.stdout);

    // doctor: one document listing every check.
    let doctor = casey(&["doctor", "--json"]);
    let doc = document(&doctor);
    assert_eq!(doc["ok"].as_bool(), Some(doctor.ok()), "{doc}");
    assert!(doc["checks"].as_array().is_some_and(|c| c.len() > 5), "{doc}");

    // Verbs without a JSON form, and usage errors: still nothing but JSON.
    let completions = casey(&["completions", "bash", "--json"]);
    assert!(!completions.ok());
    assert_eq!(document(&completions)["ok"], false);
    let status = casey(&["sandbox", "status", "--json"]);
    assert!(!status.ok(), "no sandbox runs for this project");
    assert!(document(&status)["error"].as_str().is_some_and(|e| e.contains("not running")), "{}", status.stdout);
}
