//! `--local`: the whole deploy offline against the sandbox, with the real
//! backend answering at the printed URL.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use common::{copy_terraform, http_get, repo_root, ws_round_trip, Run};

/// Sandboxes hand out the same 127.x task addresses: one at a time.
static ONE_SANDBOX: Mutex<()> = Mutex::new(());

/// A project with the repo's terraform/ copied and backend/ linked (so cargo
/// reuses the backend tests' build), plus a REAL-looking state and .env
/// that a local run must never touch.
struct LocalProject {
    dir: tempfile::TempDir,
}

const REAL_STATE: &str =
    r#"{"version":4,"terraform_version":"1.11.4","serial":7,"lineage":"real-deployment","outputs":{},"resources":[]}"#;

impl LocalProject {
    fn new() -> LocalProject {
        let dir = tempfile::tempdir().unwrap();
        let tf = copy_terraform(dir.path());
        std::os::unix::fs::symlink(repo_root().join("backend"), dir.path().join("backend")).unwrap();
        std::fs::write(tf.join("terraform.tfstate"), REAL_STATE).unwrap();
        // Malformed on purpose: a local run that read it would fail.
        std::fs::write(tf.join(".env"), "THIS LINE IS NOT KEY=VALUE AND MUST NOT BE READ\n").unwrap();
        LocalProject { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn casey(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_casey-deploy"));
        for (key, _) in std::env::vars() {
            if key.starts_with("AWS_") {
                cmd.env_remove(key);
            }
        }
        // cargo builds backend/ where the backend's own tests do.
        let home = std::env::var("HOME").unwrap();
        let backend_target = std::env::var("CASEY_BACKEND_TARGET")
            .unwrap_or_else(|_| format!("{home}/.cache/casey-deploy/backend-target"));
        cmd.arg("--project-dir")
            .arg(self.path())
            .args(args)
            .env("CARGO_TARGET_DIR", backend_target)
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// The aws CLI against the running sandbox, as its admin.
    fn aws(&self, args: &[&str]) -> serde_json::Value {
        let seed = std::fs::read_to_string(self.path().join(".casey/sandbox/seed.json")).unwrap();
        let seed: serde_json::Value = serde_json::from_str(&seed).unwrap();
        let admin = &seed["users"]["casey_aniruddh"];
        let out = Command::new(common::python())
            .args(["-m", "awscli", "--endpoint-url", seed["endpoint_url"].as_str().unwrap()])
            .args(["--region", "us-east-1", "--output", "json"])
            .args(args)
            .env("AWS_ACCESS_KEY_ID", admin["access_key_id"].as_str().unwrap())
            .env("AWS_SECRET_ACCESS_KEY", admin["secret_access_key"].as_str().unwrap())
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN")
            .output()
            .expect("cannot run the aws CLI");
        assert!(out.status.success(), "aws {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    fn assert_real_state_untouched(&self) {
        let tf = self.path().join("terraform");
        assert_eq!(std::fs::read_to_string(tf.join("terraform.tfstate")).unwrap(), REAL_STATE);
        assert!(!tf.join(".terraform").exists(), "terraform ran in the real terraform/");
        assert!(!tf.join("terraform.tfstate.backup").exists());
    }
}

impl Drop for LocalProject {
    fn drop(&mut self) {
        let _ = self.casey(&["sandbox", "down"], &[]);
    }
}

/// `ws://127.x.y.z:3001/ws` → (host, port).
fn host_port(url: &str) -> (String, u16) {
    let rest = url.trim_start_matches("ws://");
    let hostport = rest.split('/').next().unwrap();
    let (host, port) = hostport.rsplit_once(':').unwrap();
    (host.to_owned(), port.parse().unwrap())
}

fn printed_url(run: &Run, key: &str) -> String {
    run.stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= line:\n{}\n{}", run.stdout, run.stderr))
        .to_owned()
}

#[track_caller]
fn assert_backend_answers(url: &str) {
    let (host, port) = host_port(url);
    assert!(host.starts_with("127."), "task addresses must be loopback: {url}");
    let (status, body) = http_get(&host, port, "/health").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("ok"), "{body}");
    let (hello, echo) = ws_round_trip(&host, port, "hello casey").unwrap();
    assert!(hello.contains("hello"), "{hello}");
    assert_eq!(echo, "hello casey");
}

#[test]
fn all_local_deploys_a_backend_that_answers_and_leaves_the_real_state_alone() {
    let _one = ONE_SANDBOX.lock().unwrap_or_else(|e| e.into_inner());
    let project = LocalProject::new();
    // No Docker engine: the cargo path, said in one line.
    // As on a fresh machine: no terraform CLI config pointing at the provider mirror.
    let run = project.casey(
        &["all", "--local"],
        &[("DOCKER_HOST", "unix:///nonexistent/docker.sock"), ("TF_CLI_CONFIG_FILE", "/nonexistent/terraformrc")],
    );
    run.assert_ok();
    assert!(run.stderr.contains("running the tasks as local processes"), "{}", run.stderr);
    assert!(run.stderr.contains("the admin: may deploy"), "the identity guard ran: {}", run.stderr);
    assert!(run.stderr.contains("to add"), "the plan summary was shown: {}", run.stderr);
    let url = printed_url(&run, "NEXT_PUBLIC_WS_URL");
    assert_backend_answers(&url);
    project.assert_real_state_untouched();

    // The sandbox stays up: the verbs work one by one, and the same URL answers.
    let status = project.casey(&["sandbox", "status"], &[]);
    status.assert_ok();
    assert!(status.stdout.contains("SANDBOX_ENDPOINT=http://127.0.0.1:"), "{}", status.stdout);
    let again = project.casey(&["infra", "--local"], &[]);
    again.assert_ok();
    assert!(again.stderr.contains("No changes"), "{}", again.stderr);
    let check = project.casey(&["backend-url", "--local", "--check"], &[]);
    check.assert_ok();
    assert_eq!(printed_url(&check, "BACKEND_WS_URL"), url);

    // The same commit again: already in ECR and live, nothing to roll out.
    let no_docker = ("DOCKER_HOST", "unix:///nonexistent/docker.sock");
    let same = project.casey(&["image", "--local"], &[no_docker]);
    same.assert_ok();
    assert!(
        same.stderr.contains("is already in ECR") && same.stderr.contains("nothing to roll out"),
        "{}",
        same.stderr
    );
    let first = project.casey(&["status", "--local", "--json"], &[]);
    let first: serde_json::Value =
        serde_json::from_str(&first.stdout).unwrap_or_else(|e| panic!("{e}: {}", first.all()));

    // A new build (another build id compiled in): a new release, new task, new address, and it answers too.
    let run = project.casey(
        &["image", "--local", "--json", "--tag", "second-build"],
        &[no_docker, ("CASEY_BUILD_ID", "second-build")],
    );
    run.assert_ok();
    // --json: NDJSON only, the pushed image's digest, and a summary that says the same.
    let events: Vec<serde_json::Value> =
        run.stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    let pushed = events.iter().find(|e| e["event"] == "pushed").unwrap_or_else(|| panic!("{}", run.stdout));
    assert!(pushed["digest"].as_str().is_some_and(|d| d.starts_with("sha256:") && d.len() == 71), "{pushed}");
    assert!(events.iter().any(|e| e["event"] == "completed"), "the rollout was followed: {}", run.stdout);
    let summary = events.last().unwrap();
    assert_eq!((summary["event"].as_str(), summary["ok"].as_bool()), (Some("summary"), Some(true)), "{summary}");
    assert_eq!(summary["digest"], pushed["digest"]);
    // status: the digest ECR holds for the live tag is the one pushed, and the URL answers its probe.
    let status = project.casey(&["status", "--local", "--json"], &[]);
    status.assert_ok();
    let doc: serde_json::Value =
        serde_json::from_str(&status.stdout).unwrap_or_else(|e| panic!("{e}: {}", status.stdout));
    assert_eq!(doc["image_digest"], pushed["digest"], "{doc}");
    assert!(doc["probe"][0]["ok"] == true, "the backend answers: {doc}");
    // logs: the task's own output, shipped to CloudWatch Logs as awslogs does, one line each with time and task.
    let task = doc["tasks"][0]["task_id"].as_str().unwrap_or_default().to_owned();
    let logs = project.casey(&["logs", "--local", "--since", "5m", "--task", &task], &[]);
    logs.assert_ok();
    let line = logs.stdout.lines().find(|l| l.contains("listening")).unwrap_or_else(|| panic!("{}", logs.all()));
    let words: Vec<&str> = line.splitn(3, ' ').collect();
    assert!(words[0].ends_with('Z') && words[0].len() == 20, "{line}");
    assert_eq!(words[1], task, "the line names its task: {line}\n{doc}");
    assert!(!logs.stdout.contains("casey-emulator:"), "only the task's own output: {}", logs.stdout);
    assert!(line.contains("\"build\":\"second-build\""), "the task runs the new build: {line}");
    let url2 = printed_url(&project.casey(&["backend-url", "--local"], &[]), "BACKEND_WS_URL");
    assert_ne!(url, url2, "the rollout replaced the task");
    assert_backend_answers(&url2);

    // history: both releases, distinct digests, the new one live.
    let history = project.casey(&["history", "--local", "--json"], &[]);
    history.assert_ok();
    let history: serde_json::Value = serde_json::from_str(&history.stdout).unwrap();
    let releases: Vec<_> = history.as_array().unwrap().iter().filter(|e| e["action"] == "deploy").collect();
    assert_eq!(releases[0]["digest"], pushed["digest"], "{history}");
    assert_eq!(releases[0]["live"], true, "{history}");
    assert!(releases.iter().any(|e| e["digest"] == first["image_digest"]), "{history}");
    assert_ne!(first["image_digest"], pushed["digest"]);

    // rollback: the first build runs again (its own binary, kept as its image's layer) and answers.
    let back = project.casey(&["rollback", "--local"], &[]);
    back.assert_ok();
    let status = project.casey(&["status", "--local", "--json"], &[]);
    let doc: serde_json::Value =
        serde_json::from_str(&status.stdout).unwrap_or_else(|e| panic!("{e}: {}", status.all()));
    assert_eq!(doc["image_digest"], first["image_digest"], "{doc}");
    assert!(doc["probe"][0]["ok"] == true, "the backend answers after the rollback: {doc}");
    let task = doc["tasks"][0]["task_id"].as_str().unwrap_or_default().to_owned();
    let logs = project.casey(&["logs", "--local", "--since", "5m", "--task", &task], &[]);
    let line = logs.stdout.lines().find(|l| l.contains("listening")).unwrap_or_else(|| panic!("{}", logs.all()));
    assert!(line.contains("\"build\":null"), "the first build runs again: {line}");
    let again = project.casey(&["infra", "--local"], &[]);
    again.assert_ok();
    assert!(again.stderr.contains("No changes"), "infra after a rollback: {}", again.stderr);
    let url2 = printed_url(&project.casey(&["backend-url", "--local"], &[]), "BACKEND_WS_URL");
    assert_backend_answers(&url2);
    project.assert_real_state_untouched();

    // A release whose image ECR no longer holds (expired, deleted) is listed as such and refused.
    let second = pushed["digest"].as_str().unwrap();
    project.aws(&[
        "ecr",
        "batch-delete-image",
        "--repository-name",
        "casey-backend",
        "--image-ids",
        &format!("imageDigest={second}"),
    ]);
    let history = project.casey(&["history", "--local", "--json"], &[]);
    let history: serde_json::Value = serde_json::from_str(&history.stdout).unwrap();
    let gone = history.as_array().unwrap().iter().find(|e| e["digest"] == second).unwrap();
    assert_eq!(gone["in_ecr"], false, "{history}");
    let refused = project.casey(&["rollback", "--local", "--to", "second-build"], &[]);
    refused.assert_fails_with("can no longer be deployed: ECR repository casey-backend does not hold that image");
    let status = project.casey(&["status", "--local", "--json"], &[]);
    let doc: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(doc["image_digest"], first["image_digest"], "nothing changed: {doc}");

    // The sandbox's state moves to the emulator's S3 like a real one; the project's terraform/ is untouched.
    let moved = project.casey(&["state", "bootstrap", "--local"], &[]);
    moved.assert_ok();
    assert!(moved.stderr.contains("moved the local state ("), "{}", moved.stderr);
    let sandbox_tf = project.path().join(".casey/sandbox/terraform");
    assert!(sandbox_tf.join("backend.tf").is_file() && !sandbox_tf.join("terraform.tfstate").exists());
    assert!(!project.path().join("terraform/backend.tf").exists());
    let object = project.aws(&[
        "s3api",
        "head-object",
        "--bucket",
        "casey-tfstate-123456789012-us-east-1",
        "--key",
        "casey/production/terraform.tfstate",
    ]);
    assert!(object["ContentLength"].as_u64().unwrap_or_default() > 0, "{object}");
    let again = project.casey(&["infra", "--local"], &[]);
    again.assert_ok();
    assert!(again.stderr.contains("No changes"), "infra from the S3 state: {}", again.stderr);
    project.assert_real_state_untouched();

    // Another environment in the sandbox: its own state beside production's, destroyed alone.
    let staging = project.casey(&["--local", "--env", "staging", "infra"], &[]);
    staging.assert_ok();
    assert!(staging.stderr.contains("[staging] "), "{}", staging.stderr);
    let key = "casey/staging/casey/production/terraform.tfstate";
    let bucket = "casey-tfstate-123456789012-us-east-1";
    let object = project.aws(&["s3api", "head-object", "--bucket", bucket, "--key", key]);
    assert!(object["ContentLength"].as_u64().unwrap_or_default() > 0, "{object}");
    let active = |name: &str| {
        let described = project.aws(&["ecs", "describe-clusters", "--clusters", name]);
        described["clusters"].as_array().into_iter().flatten().any(|c| c["status"] == "ACTIVE")
    };
    assert!(active("casey-staging") && active("casey"));
    project.casey(&["--local", "--env", "staging", "destroy"], &[]).assert_ok();
    assert!(!active("casey-staging") && active("casey"), "staging's destroy leaves production");
    let again = project.casey(&["infra", "--local"], &[]);
    again.assert_ok();
    assert!(again.stderr.contains("No changes"), "production after staging's destroy: {}", again.stderr);

    // Down: the task processes are gone with the emulator.
    project.casey(&["sandbox", "down"], &[]).assert_ok();
    let (host, port) = host_port(&url2);
    assert!(http_get(&host, port, "/health").is_err(), "the backend still answers after `sandbox down`");
    assert!(!project.path().join(".casey/sandbox").exists());
    project.casey(&["sandbox", "status"], &[]).assert_fails_with("not running");
}

/// A `FROM scratch` image holding the real backend binary and the shared
/// libraries it links (no base image can be pulled here).
fn backend_scratch_context(dir: &Path) -> PathBuf {
    let home = std::env::var("HOME").unwrap();
    let target =
        std::env::var("CASEY_BACKEND_TARGET").unwrap_or_else(|_| format!("{home}/.cache/casey-deploy/backend-target"));
    let status = Command::new("cargo")
        .args(["build", "--locked", "--bin", "casey-backend", "--manifest-path"])
        .arg(repo_root().join("backend/Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .unwrap();
    assert!(status.success(), "cargo build of the backend failed");
    let binary = PathBuf::from(&target).join("debug/casey-backend");
    let rootfs = dir.join("rootfs");
    let place = |from: &Path| {
        let to = rootfs.join(from.strip_prefix("/").unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(std::fs::canonicalize(from).unwrap(), &to).unwrap();
    };
    let ldd = Command::new("ldd").arg(&binary).output().unwrap();
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let path = line.split("=>").last().unwrap().split_whitespace().next().unwrap_or("");
        if path.starts_with('/') {
            place(Path::new(path));
        }
    }
    place(Path::new("/etc/ssl/certs/ca-certificates.crt"));
    let bin_dir = rootfs.join("usr/local/bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    std::fs::copy(&binary, bin_dir.join("casey-backend")).unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM scratch\nCOPY rootfs/ /\nENTRYPOINT [\"/usr/local/bin/casey-backend\"]\n",
    )
    .unwrap();
    dir.to_path_buf()
}

#[test]
fn with_a_docker_engine_the_tasks_are_containers_of_the_pushed_image() {
    let _one = ONE_SANDBOX.lock().unwrap_or_else(|e| e.into_inner());
    let docker = Command::new("docker").args(["version", "--format", "{{.Server.Version}}"]).output();
    assert!(
        docker.is_ok_and(|o| o.status.success()),
        "this test needs a Docker engine: run `bash .ci/docker.sh start` and `source \"$(bash .ci/docker.sh env)\"`"
    );
    let project = LocalProject::new();
    let context = tempfile::tempdir().unwrap();
    let context = backend_scratch_context(context.path());
    let context_arg = context.display().to_string();
    let run = project.casey(&["all", "--local", "--context", &context_arg, "--tag", "sandbox-test"], &[]);
    run.assert_ok();
    assert!(run.stderr.contains("tasks run as containers"), "{}", run.stderr);
    let url = printed_url(&run, "NEXT_PUBLIC_WS_URL");
    assert_backend_answers(&url);
    let ps = Command::new("docker").args(["ps", "--format", "{{.Image}} {{.Names}}"]).output().unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout);
    assert!(ps.lines().any(|l| l.contains("casey-backend") && l.contains("casey-task-")), "no task container: {ps}");
    let good = project.casey(&["status", "--local", "--json"], &[]);
    let good: serde_json::Value = serde_json::from_str(&good.stdout).unwrap_or_else(|e| panic!("{e}: {}", good.all()));

    // A release whose task exits at start (a setting in its image the backend refuses): the rollout
    // fails with the task's own last log lines, ECS's rollback is recorded, and the release before
    // it stays live and answers.
    std::fs::write(
        context.join("Dockerfile"),
        "FROM scratch\nCOPY rootfs/ /\nENV CASEY_SHUTDOWN_TIMEOUT_SECS=999\nENTRYPOINT [\"/usr/local/bin/casey-backend\"]\n",
    )
    .unwrap();
    let bad = project.casey(&["image", "--local", "--context", &context_arg, "--tag", "exits-at-start"], &[]);
    bad.assert_fails_with("step `rollout`");
    bad.assert_fails_with("failed and ECS rolled back to the release before it");
    assert!(bad.stderr.contains("CASEY_SHUTDOWN_TIMEOUT_SECS"), "the stopped task's own log lines: {}", bad.stderr);
    let history = project.casey(&["history", "--local", "--json"], &[]);
    history.assert_ok();
    let history: serde_json::Value = serde_json::from_str(&history.stdout).unwrap();
    let entries = history.as_array().unwrap();
    let failed = entries.iter().find(|e| e["tag"] == "exits-at-start").unwrap_or_else(|| panic!("{history}"));
    assert_eq!(failed["outcome"], "failed", "{history}");
    let live = entries.iter().find(|e| e["live"] == true).unwrap_or_else(|| panic!("{history}"));
    assert_eq!(live["digest"], good["image_digest"], "{history}");
    let url = printed_url(&project.casey(&["backend-url", "--local"], &[]), "BACKEND_WS_URL");
    assert_backend_answers(&url);
    let again = project.casey(&["infra", "--local"], &[]);
    assert!(again.ok() && again.stderr.contains("No changes"), "{}", again.all());
    project.assert_real_state_untouched();
    project.casey(&["sandbox", "down"], &[]).assert_ok();
    let ps = Command::new("docker").args(["ps", "--format", "{{.Names}}"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&ps.stdout).contains("casey-task-"), "task containers outlived the sandbox");
}

#[test]
fn without_python_the_sandbox_says_what_to_install() {
    let project = LocalProject::new();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_casey-deploy"));
    let out = cmd
        .arg("--project-dir")
        .arg(project.path())
        .args(["sandbox", "up"])
        .env("PATH", "/nonexistent")
        .env_remove("CASEY_PYTHON")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("apt-get install -y python3 python3-venv"), "{stderr}");
    assert!(!project.path().join(".casey/sandbox").exists(), "nothing is left half-made");
}
