//! `casey-deploy doctor` on a good setup and on broken ones, against the
//! emulator and real terraform. Docker is replaced by a stub on PATH where
//! the verdict must not depend on whether an engine runs here.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::Value;

use common::{Emulator, Keys, Project, Run, ADMIN, SERVICE};

/// What doctor printed on stderr, one entry per message: each starts with
/// a `HH:MM:SS [production] ` stamp and label (dropped here); the unstamped
/// lines after it are the rest of a message that spans lines.
fn lines(run: &Run) -> Vec<String> {
    let mut messages: Vec<String> = Vec::new();
    for line in run.stderr.lines() {
        let stamp = line.get(..9).unwrap_or("");
        let stamped = stamp.len() == 9
            && stamp.ends_with(' ')
            && stamp[..8].char_indices().all(|(i, c)| if i % 3 == 2 { c == ':' } else { c.is_ascii_digit() });
        match messages.last_mut() {
            Some(last) if !stamped => {
                last.push('\n');
                last.push_str(line);
            }
            _ => {
                assert!(stamped, "stderr does not start with a stamp: {line:?}\n{}", run.stderr);
                let labelled = line[9..].strip_prefix("[production] ");
                let message = labelled.unwrap_or_else(|| panic!("a line without the environment: {line:?}"));
                messages.push(message.to_owned());
            }
        }
    }
    messages
}

/// The human line of the check `label`: `(verdict, the rest)`.
#[track_caller]
fn check(run: &Run, label: &str) -> (String, String) {
    lines(run)
        .into_iter()
        .find_map(|line| {
            let (verdict, rest) = line.trim_start().split_once(' ')?;
            let rest = rest.trim_start();
            // The label is padded to 20 columns.
            let field = rest.get(..20.min(rest.len()))?.trim_end();
            (["ok", "warn", "FAIL", "skip"].contains(&verdict) && field == label)
                .then(|| (verdict.to_owned(), rest.get(20..).unwrap_or("").trim_start().to_owned()))
        })
        .unwrap_or_else(|| panic!("no `{label}` line\nstdout:\n{}\nstderr:\n{}", run.stdout, run.stderr))
}

/// `doctor --json`'s document: stdout holds nothing else, and each check appears once.
#[track_caller]
fn document(run: &Run) -> Value {
    let doc: Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{}\nstderr:\n{}", run.stdout, run.stderr));
    assert_eq!(doc["ok"].as_bool(), Some(run.ok()), "`ok` and the exit status disagree: {doc:#}");
    let names: Vec<&str> = doc["checks"].as_array().unwrap().iter().map(|c| c["check"].as_str().unwrap()).collect();
    for name in &names {
        assert_eq!(names.iter().filter(|n| *n == name).count(), 1, "`{name}` twice: {names:?}");
    }
    doc
}

/// The check `name` in doctor's document.
#[track_caller]
fn row<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("no check `{name}` in {doc:#}"))
}

/// The check `name` has `verdict`, and its found and fix texts hold `needles`.
#[track_caller]
fn assert_check(doc: &Value, name: &str, verdict: &str, needles: &[&str]) {
    let row = row(doc, name);
    assert_eq!(row["verdict"], verdict, "`{name}`: {row:#}");
    let text = format!("{} {}", row["found"].as_str().unwrap(), row["fix"].as_str().unwrap_or(""));
    for needle in needles {
        assert!(text.contains(needle), "`{name}` lacks `{needle}`: {row:#}");
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

    let run = project.casey_with(&["doctor", "--json"], &[("PATH", &path)]);
    run.assert_ok();
    let doc = document(&run);
    assert_check(&doc, "terraform/.env", "ok", &["present", "region us-east-1", "key "]);
    assert_check(&doc, "terraform/.env mode", "ok", &["mode 600"]);
    assert_check(&doc, "backend/.env", "ok", &["present"]);
    assert_check(&doc, "backend/.env mode", "ok", &["mode 600"]);
    assert_check(&doc, "terraform", "ok", &["."]);
    assert_check(&doc, "docker", "ok", &["engine 27.5.1"]);
    assert_check(&doc, "aws provider", "ok", &["hashicorp/aws"]);
    assert_check(&doc, "deploy credentials", "ok", &["admin", &emulator.admin().arn]);
    assert_check(&doc, "backend credentials", "ok", &["service", &emulator.service().arn]);
    assert_check(&doc, "key separation", "ok", &[]);
    assert_check(&doc, "region", "ok", &["us-east-1"]);
    assert_check(&doc, "stack", "warn", &["not applied", "casey-deploy infra"]);
    assert_eq!(row(&doc, "region")["fix"], Value::Null);
    // The same checks as human lines on stderr.
    assert_eq!(check(&run, "docker"), ("ok".to_owned(), "client 27.5.1, engine 27.5.1".to_owned()));
    assert!(run.stderr.contains("a deploy can work"), "{}", run.stderr);

    // Applied: the cluster, the service and the ALB setting, from the outputs.
    // Without --json: human text on stderr, nothing on stdout.
    write_applied_state(&project.tf_dir(), &emulator);
    let run = project.casey_with(&["doctor"], &[("PATH", &path)]);
    run.assert_ok();
    assert_eq!(run.stdout, "", "doctor's text belongs on stderr");
    let (verdict, rest) = check(&run, "stack");
    assert!(verdict == "ok" && rest.contains("casey-cluster") && rest.contains("casey-backend"), "{rest}");
    let (verdict, rest) = check(&run, "alb");
    assert!(verdict == "ok" && rest.contains("disabled") && rest.contains("enable_alb=true"), "{rest}");
    assert_eq!(check(&run, "account").0, "ok");

    // Without the stub: the real docker line is there, whatever its verdict.
    let run = project.casey(&["doctor", "--json"]);
    let doc = document(&run);
    let verdict = row(&doc, "docker")["verdict"].as_str().unwrap().to_owned();
    assert_eq!(run.ok(), verdict == "ok", "only docker may fail here\n{doc:#}");
}

#[test]
fn broken_credentials_are_each_named_and_fail() {
    let emulator = Emulator::start();
    let project = Project::with_keys(&emulator, None);
    let path = stub_docker(&project);
    let doctor = || {
        let run = project.casey_with(&["doctor", "--json"], &[("PATH", &path)]);
        let doc = document(&run);
        (run, doc)
    };

    // No terraform/.env and no other credentials.
    let (run, doc) = doctor();
    assert!(!run.ok(), "{}", run.stderr);
    assert_check(&doc, "terraform/.env", "warn", &["absent", "cp terraform/.env.example terraform/.env"]);
    assert_check(&doc, "deploy credentials", "fail", &["no usable AWS credentials"]);
    assert_check(&doc, "region", "fail", &["AWS_REGION="]);
    // The other checks still ran.
    assert_check(&doc, "terraform", "ok", &[]);
    assert_check(&doc, "backend/.env", "warn", &["absent", SERVICE]);
    assert!(run.stderr.contains("checks FAILED") && run.stderr.contains("a deploy would fail"), "{}", run.stderr);
    assert_eq!(check(&run, "deploy credentials").0, "FAIL");

    // The same keys in both env files.
    project.write_env(emulator.admin());
    write_backend_env(&project, emulator.admin());
    let (run, doc) = doctor();
    assert!(!run.ok(), "{}", run.stderr);
    assert_check(&doc, "deploy credentials", "ok", &["admin"]);
    assert_check(&doc, "backend credentials", "fail", &["ADMIN", "backend must never run as the admin", SERVICE]);
    let hint = format!("same AWS access key ({}…", &emulator.admin().access_key_id[..4]);
    assert_check(&doc, "key separation", "fail", &[&hint]);

    // The service account's keys in terraform/.env.
    project.write_env(emulator.service());
    std::fs::remove_file(project.path().join("backend/.env")).unwrap();
    let (run, doc) = doctor();
    assert!(!run.ok(), "{}", run.stderr);
    assert_check(&doc, "deploy credentials", "fail", &["SERVICE ACCOUNT", "must never run Terraform", ADMIN]);

    // A readable env file and a malformed line.
    project.write_env(emulator.admin());
    let env = project.tf_dir().join(".env");
    std::fs::set_permissions(&env, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (run, doc) = doctor();
    assert_check(&doc, "terraform/.env mode", "warn", &["mode 644", "readable by other users", "chmod 600"]);
    assert_check(&doc, "terraform/.env", "ok", &["key "]);
    run.assert_ok();
    std::fs::set_permissions(&env, std::fs::Permissions::from_mode(0o600)).unwrap();
    let secret = &emulator.admin().secret_access_key;
    std::fs::write(&env, format!("AWS_REGION=us-east-1\nAWS_SECRET_ACCESS_KEY {secret}\n")).unwrap();
    let (run, doc) = doctor();
    assert!(!run.ok(), "{}", run.stderr);
    assert_check(&doc, "terraform/.env", "fail", &["terraform/.env:2:", "`AWS_SECRET_ACCESS_KEY`"]);
    // Not even the start of the secret.
    assert!(!run.all().contains(&secret[..8]), "part of a secret leaked:\n{}", run.all());
}

#[test]
fn missing_terraform_and_unreachable_docker_fail_without_stopping_the_rest() {
    let emulator = Emulator::start();
    let project = Project::new(&emulator);
    write_backend_env(&project, emulator.service());

    // No terraform (nor docker) on PATH.
    let run = project.casey_with(&["doctor", "--json"], &[("PATH", "/nonexistent")]);
    assert!(!run.ok(), "{}", run.stderr);
    let doc = document(&run);
    assert_check(&doc, "terraform", "fail", &["not found on PATH", "install Terraform"]);
    assert_check(&doc, "docker", "fail", &["`casey-deploy image` and `all`"]);
    assert_check(&doc, "aws provider", "skip", &["not checked"]);
    assert_check(&doc, "stack", "skip", &["not checked"]);
    assert_check(&doc, "deploy credentials", "ok", &["admin"]);
    assert_check(&doc, "backend credentials", "ok", &["service"]);

    // A Docker engine that is not there.
    let run = project.casey_with(&["doctor", "--json"], &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")]);
    assert!(!run.ok(), "{}", run.stderr);
    let doc = document(&run);
    assert_check(&doc, "docker", "fail", &["`casey-deploy image` and `all`", "unix:///nonexistent/docker.sock"]);
    assert_check(&doc, "terraform", "ok", &[]);
    assert_check(&doc, "aws provider", "ok", &[]);
}

// ------------------------------------------- doctor and the verbs agree

/// One broken setup: how to make it, the extra arguments (before the verb),
/// the check it breaks, and whether that is a `fail` (the verb stops) or a
/// `warn` (the verb warns and goes on).
struct Broken {
    what: &'static str,
    setup: Box<dyn Fn(&Project)>,
    args: Vec<&'static str>,
    env: Vec<(&'static str, &'static str)>,
    check: &'static str,
    verdict: &'static str,
}

#[test]
fn doctor_and_the_verbs_agree_on_each_broken_setup() {
    let emulator = Emulator::start();
    let project = Project::new(&emulator);
    let path = stub_docker(&project);
    let (admin, service) = (emulator.admin().clone(), emulator.service().clone());
    let other_account: &'static str =
        if emulator.account_id == "111111111111" { "222222222222" } else { "111111111111" };
    let env_file = |p: &Project| p.tf_dir().join(".env");
    let rewrite = move |p: &Project, from: &str, to: &str| {
        let text = std::fs::read_to_string(env_file(p)).unwrap().replace(from, to);
        std::fs::write(env_file(p), text).unwrap();
    };
    let chmod = |path: &Path, mode: u32| std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    let table = vec![
        Broken {
            what: "terraform/.env readable by others",
            setup: Box::new(move |p| chmod(&env_file(p), 0o644)),
            args: vec![],
            env: vec![],
            check: "terraform/.env mode",
            verdict: "warn",
        },
        Broken {
            what: "backend/.env readable by others",
            setup: {
                let service = service.clone();
                Box::new(move |p| {
                    write_backend_env(p, &service);
                    chmod(&p.path().join("backend/.env"), 0o640);
                })
            },
            args: vec![],
            env: vec![],
            check: "backend/.env mode",
            verdict: "warn",
        },
        Broken {
            what: "a malformed line in terraform/.env",
            setup: Box::new(move |p| rewrite(p, "AWS_REGION=us-east-1", "AWS_REGION us-east-1")),
            args: vec![],
            env: vec![],
            check: "terraform/.env",
            verdict: "fail",
        },
        Broken {
            what: "a malformed line in backend/.env",
            setup: {
                let service = service.clone();
                Box::new(move |p| {
                    write_backend_env(p, &service);
                    std::fs::write(p.path().join("backend/.env"), "PORT 3001\n").unwrap();
                })
            },
            args: vec![],
            env: vec![],
            check: "backend/.env",
            verdict: "fail",
        },
        Broken {
            what: "backend/.env holds terraform's access key",
            setup: {
                let admin = admin.clone();
                Box::new(move |p| write_backend_env(p, &admin))
            },
            args: vec![],
            env: vec![],
            check: "key separation",
            verdict: "fail",
        },
        Broken {
            what: "the service account's keys in terraform/.env",
            setup: {
                let service = service.clone();
                Box::new(move |p| p.write_env(&service))
            },
            args: vec![],
            env: vec![],
            check: "deploy credentials",
            verdict: "fail",
        },
        Broken {
            what: "a key without its secret",
            setup: Box::new(move |p| {
                let text = std::fs::read_to_string(env_file(p)).unwrap();
                let text: String =
                    text.lines().filter(|l| !l.starts_with("AWS_SECRET")).map(|l| format!("{l}\n")).collect();
                std::fs::write(env_file(p), text).unwrap();
            }),
            args: vec![],
            env: vec![],
            check: "deploy credentials",
            verdict: "fail",
        },
        Broken {
            what: "no credentials at all",
            setup: Box::new(move |p| std::fs::remove_file(env_file(p)).unwrap()),
            args: vec![],
            env: vec![("AWS_REGION", "us-east-1")],
            check: "deploy credentials",
            verdict: "fail",
        },
        Broken {
            what: "no region",
            setup: Box::new(move |p| rewrite(p, "AWS_REGION=us-east-1\n", "")),
            args: vec![],
            env: vec![],
            check: "region",
            verdict: "fail",
        },
        Broken {
            what: "a region that is not a region name",
            setup: Box::new(move |p| rewrite(p, "AWS_REGION=us-east-1", "AWS_REGION=moon-base")),
            args: vec![],
            env: vec![],
            check: "region",
            verdict: "fail",
        },
        Broken {
            what: "--account names another account",
            setup: Box::new(|_| {}),
            args: vec!["--account", other_account],
            env: vec![],
            check: "account",
            verdict: "fail",
        },
        Broken {
            what: "--account that is not an account id",
            setup: Box::new(|_| {}),
            args: vec!["--account", "12345"],
            env: vec![],
            check: "account",
            verdict: "fail",
        },
    ];

    for broken in &table {
        // A good setup, then the one thing broken.
        project.write_env(&admin);
        let _ = std::fs::remove_file(project.path().join("backend/.env"));
        (broken.setup)(&project);
        let mut env = broken.env.clone();
        env.push(("PATH", &path));
        let with = |verb: &[&'static str]| {
            let args: Vec<&str> = broken.args.iter().chain(verb).copied().collect();
            project.casey_with(&args, &env)
        };

        let doctor = with(&["doctor", "--json"]);
        let doc = document(&doctor);
        let row = row(&doc, broken.check);
        assert_eq!(row["verdict"], broken.verdict, "{}: doctor says {row:#}", broken.what);
        let fix = row["fix"].as_str().unwrap_or_else(|| panic!("{}: no fix in {row:#}", broken.what));
        let found = row["found"].as_str().unwrap();

        let verb = with(&["whoami"]);
        let said = match broken.verdict {
            "fail" => {
                assert!(!doctor.ok(), "{}: doctor passed\n{}", broken.what, doctor.stderr);
                assert!(!verb.ok(), "{}: whoami passed\n{}", broken.what, verb.stderr);
                lines(&verb).into_iter().find(|l| l.starts_with("error: "))
            }
            _ => {
                verb.assert_ok();
                lines(&verb).into_iter().find(|l| l.starts_with("warning: ") && l.contains(fix))
            }
        };
        let said = said.unwrap_or_else(|| panic!("{}: whoami said nothing of it\n{}", broken.what, verb.stderr));
        // The verb's message is the same problem: what was found, then the same fix.
        assert!(said.ends_with(&format!("; {fix}")), "{}: whoami said\n{said}\ndoctor's fix:\n{fix}", broken.what);
        let first_line = found.lines().next().unwrap();
        assert!(said.contains(first_line), "{}: whoami said\n{said}\ndoctor found:\n{found}", broken.what);
    }
}
