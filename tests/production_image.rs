//! The production image: the real `backend/Dockerfile`, built on local
//! equivalents of its base images (no registry outside is reachable here;
//! `.ci/base-images.sh` makes them and scripts/test.sh exports their names),
//! then run as the sandbox's ECS task on the Docker path.
//!
//! What is checked, and how, with no shell in the image:
//! - /health and a /ws round trip at the URL `all --local` prints;
//! - the image's HEALTHCHECK: docker's own health status of the task's container;
//! - not root: the uid/gid the kernel reports for the container's process;
//! - read-only root, writable /tmp: writes as the container's user (65532) through
//!   the container's own view of its filesystem (`/proc/PID/root`), which the
//!   kernel refuses on / (EROFS) and allows on /tmp.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{copy_terraform, http_get, python, repo_root, ws_round_trip, Run, ADMIN};
use serde_json::Value;

const IMAGE: &str = "casey-local/backend-production:test";
/// Tags that keep docker's layer cache of this build across fresh engines.
const CACHE_TAGS: [&str; 2] = ["casey-local/backend-build-cache:latest", "casey-local/backend-production-cache:latest"];
const NONROOT: &str = "65532";

fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: the production image builds on local base images. Run `bash .ci/base-images.sh` and \
             `source ~/.cache/casey-deploy/base-images/images.env` (scripts/test.sh does both)"
        )
    })
}

/// `docker ARGS`; panics with docker's output on failure.
fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).stdin(Stdio::null()).output().expect("cannot run docker");
    assert!(
        out.status.success(),
        "docker {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn image_id(reference: &str) -> Option<String> {
    let out = Command::new("docker").args(["image", "inspect", "--format", "{{.Id}}", reference]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Every `FROM` of backend/Dockerfile, with these build arguments, is a
/// previous stage or an image already in the engine: the build must never
/// make the engine try to pull (traffic here may only go to loopback).
fn assert_every_base_is_local(args: &[(&str, &str)]) {
    let dockerfile = std::fs::read_to_string(repo_root().join("backend/Dockerfile")).unwrap();
    let mut stages = Vec::new();
    for line in dockerfile.lines() {
        let words: Vec<&str> = line.split_whitespace().filter(|w| !w.starts_with("--platform")).collect();
        if !words.first().is_some_and(|w| w.eq_ignore_ascii_case("FROM")) {
            continue;
        }
        let mut base = words[1].to_owned();
        for (name, value) in args {
            base = base.replace(&format!("${{{name}}}"), value).replace(&format!("${name}"), value);
        }
        assert!(
            stages.contains(&base) || image_id(&base).is_some(),
            "backend/Dockerfile: `{line}` needs {base}, which is not in the Docker engine; the build would try to pull \
             it. Its base images must be the build arguments RUST_IMAGE and RUNTIME_IMAGE"
        );
        if words.len() == 4 && words[2].eq_ignore_ascii_case("AS") {
            stages.push(words[3].to_owned());
        }
    }
}

/// `docker build` of backend/ exactly as on a connected machine, except that
/// the two base-image build arguments name the local equivalents. No network:
/// the local builder carries the crates of Cargo.lock. Returns the image id.
fn build_production_image(rust_image: &str, runtime_image: &str, cache: &Path) -> String {
    for image in [rust_image, runtime_image] {
        assert!(
            image_id(image).is_some(),
            "the base image {image} is not in the Docker engine: run `bash .ci/base-images.sh` against this engine"
        );
    }
    assert_every_base_is_local(&[("RUST_IMAGE", rust_image), ("RUNTIME_IMAGE", runtime_image)]);
    // Docker's layer cache from an earlier run: a fresh engine otherwise
    // recompiles every dependency (10+ minutes on 2 cores).
    if cache.exists() && image_id(CACHE_TAGS[0]).is_none() {
        let load = Command::new("docker").args(["load", "-q", "-i"]).arg(cache).output().unwrap();
        if !load.status.success() {
            eprintln!(
                "ignoring the unreadable build cache {}: {}",
                cache.display(),
                String::from_utf8_lossy(&load.stderr)
            );
        }
    }
    let context = repo_root().join("backend");
    let context = context.to_str().unwrap();
    let rust_arg = format!("RUST_IMAGE={rust_image}");
    let runtime_arg = format!("RUNTIME_IMAGE={runtime_image}");
    // With --cache-from the classic builder takes a step from the cache only
    // if it leads to one of those images, so only present ones are named, the
    // build stage is built (and tagged) first, then the whole image.
    let build = |extra: &[&str]| {
        let present: Vec<&str> = CACHE_TAGS.into_iter().filter(|t| image_id(t).is_some()).collect();
        let mut args = vec!["build", "--platform", "linux/amd64", "--network", "none"];
        args.extend(["--build-arg", &rust_arg, "--build-arg", &runtime_arg]);
        for tag in present {
            args.extend(["--cache-from", tag]);
        }
        args.extend(extra);
        args.push(context);
        docker(&args)
    };
    let started = Instant::now();
    let stage = build(&["--target", "build", "-t", CACHE_TAGS[0]]);
    let log = build(&["-t", IMAGE]);
    assert!(log.contains("Successfully built"), "{log}");
    let cached = format!("{stage}{log}").matches("Using cache").count();
    eprintln!(
        "built {IMAGE} from backend/Dockerfile in {:.0?} ({cached} steps from the layer cache)",
        started.elapsed()
    );
    docker(&["tag", IMAGE, CACHE_TAGS[1]]);
    let ids = CACHE_TAGS.map(|t| image_id(t).unwrap()).join(" ");
    let ids_file = cache.with_extension("ids");
    if std::fs::read_to_string(&ids_file).ok().as_deref() != Some(ids.as_str()) {
        let part = cache.with_extension("part");
        std::fs::create_dir_all(cache.parent().unwrap()).unwrap();
        docker(&["save", "-o", part.to_str().unwrap(), CACHE_TAGS[0], CACHE_TAGS[1]]);
        std::fs::rename(&part, cache).unwrap();
        std::fs::write(&ids_file, &ids).unwrap();
    }
    image_id(IMAGE).unwrap()
}

/// A throwaway project for `--local` (terraform/ copied, backend/ linked).
struct LocalProject {
    dir: tempfile::TempDir,
}

impl LocalProject {
    fn new() -> LocalProject {
        let dir = tempfile::tempdir().unwrap();
        copy_terraform(dir.path());
        std::os::unix::fs::symlink(repo_root().join("backend"), dir.path().join("backend")).unwrap();
        LocalProject { dir }
    }

    fn casey(&self, args: &[&str]) -> Run {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_casey-deploy"));
        for (key, _) in std::env::vars() {
            if key.starts_with("AWS_") {
                cmd.env_remove(key);
            }
        }
        // Should the tool fall back to the cargo path, it builds where the backend's own tests do.
        let home = std::env::var("HOME").unwrap();
        let backend_target = std::env::var("CASEY_BACKEND_TARGET")
            .unwrap_or_else(|_| format!("{home}/.cache/casey-deploy/backend-target"));
        let out = cmd
            .arg("--project-dir")
            .arg(self.dir.path())
            .args(args)
            .env("CARGO_TARGET_DIR", backend_target)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Drop for LocalProject {
    fn drop(&mut self) {
        let _ = self.casey(&["sandbox", "down"]);
    }
}

fn printed(run: &Run, key: &str) -> String {
    run.stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= line:\n{}\n{}", run.stdout, run.stderr))
        .to_owned()
}

fn inspect(container: &str, format: &str) -> String {
    docker(&["inspect", "--format", format, container])
}

/// The container's main process id on this host.
fn pid_of(container: &str) -> String {
    let pid = inspect(container, "{{.State.Pid}}");
    assert!(pid != "0", "container {container} is not running");
    pid
}

/// `touch PATH` as uid/gid 65532 (the image's user); Err = what touch said.
fn touch_as_nonroot(path: &str) -> Result<(), String> {
    let out = Command::new("setpriv")
        .args(["--reuid", NONROOT, "--regid", NONROOT, "--clear-groups", "touch", path])
        .output()
        .expect("cannot run setpriv (util-linux)");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn wait_healthy(container: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let status = inspect(container, "{{if .State.Health}}{{.State.Health.Status}}{{end}}");
        if status == "healthy" {
            return;
        }
        assert!(status == "starting", "the container's health check reports `{status}`: {}", health_log(container));
        assert!(Instant::now() < deadline, "not healthy after {timeout:?}: {}", health_log(container));
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn health_log(container: &str) -> String {
    inspect(container, "{{json .State.Health}}")
}

/// ECS's view of the task running `container`: (task, container) healthStatus
/// from DescribeTasks, as the sandbox's admin. The sandbox runs the task
/// definition's healthCheck inside the container, as the ECS agent does.
fn ecs_health(project: &Path, container: &str) -> (String, String) {
    let seed = std::fs::read_to_string(project.join(".casey/sandbox/seed.json")).expect("the sandbox has no seed.json");
    let seed: Value = serde_json::from_str(&seed).unwrap();
    let endpoint = seed["endpoint_url"].as_str().unwrap();
    let (host, port) = endpoint.trim_start_matches("http://").rsplit_once(':').unwrap();
    let (status, body) = http_get(host, port.parse().unwrap(), "/_casey/ecs/tasks").unwrap();
    assert_eq!(status, 200, "{body}");
    let tasks: Value = serde_json::from_str(&body).unwrap();
    let task = tasks
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["runner"]["container_id"].as_str().is_some_and(|id| id.starts_with(container)))
        .unwrap_or_else(|| panic!("no sandbox task runs container {container}: {body}"));
    let keys = &seed["users"][ADMIN];
    let out = Command::new(python())
        .args(["-m", "awscli", "--endpoint-url", endpoint, "--region", "us-east-1", "--output", "json"])
        .args(["ecs", "describe-tasks", "--cluster", task["cluster"].as_str().unwrap(), "--tasks"])
        .arg(task["task_arn"].as_str().unwrap())
        .env("AWS_ACCESS_KEY_ID", keys["access_key_id"].as_str().unwrap())
        .env("AWS_SECRET_ACCESS_KEY", keys["secret_access_key"].as_str().unwrap())
        .env_remove("AWS_PROFILE")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .output()
        .expect("cannot run the aws CLI");
    assert!(out.status.success(), "describe-tasks: {}", String::from_utf8_lossy(&out.stderr));
    let described: Value = serde_json::from_slice(&out.stdout).unwrap();
    let task = &described["tasks"][0];
    let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
    (text(&task["healthStatus"]), text(&task["containers"][0]["healthStatus"]))
}

#[test]
fn the_production_image_builds_offline_and_runs_as_the_sandbox_task() {
    let docker_ok = Command::new("docker").args(["version", "--format", "{{.Server.Version}}"]).output();
    assert!(
        docker_ok.is_ok_and(|o| o.status.success()),
        "this test needs a Docker engine: run `bash .ci/docker.sh start` and `source \"$(bash .ci/docker.sh env)\"`"
    );
    let rust_image = required_env("CASEY_RUST_IMAGE");
    let runtime_image = required_env("CASEY_RUNTIME_IMAGE");
    let cache = PathBuf::from(required_env("CASEY_IMAGE_BUILD_CACHE"));
    let built = build_production_image(&rust_image, &runtime_image, &cache);

    // The image's own settings: not root, the health check the task definition also uses.
    assert_eq!(inspect(IMAGE, "{{.Config.User}}"), "65532:65532");
    assert_eq!(
        inspect(IMAGE, "{{json .Config.Healthcheck.Test}}"),
        r#"["CMD","/usr/local/bin/casey-backend","healthcheck"]"#
    );
    assert_eq!(inspect(IMAGE, "{{json .Config.Entrypoint}}"), r#"["/usr/local/bin/casey-backend"]"#);

    // Deploy it with the tool: the same build (backend/, the same build
    // arguments) hits the layer cache just filled, so the task runs exactly
    // the image built above.
    let project = LocalProject::new();
    let rust_arg = format!("RUST_IMAGE={rust_image}");
    let runtime_arg = format!("RUNTIME_IMAGE={runtime_image}");
    let run = project.casey(&[
        "all",
        "--local",
        "--build-arg",
        &rust_arg,
        "--build-arg",
        &runtime_arg,
        "--tag",
        "production",
    ]);
    run.assert_ok();
    assert!(run.stderr.contains("tasks run as containers"), "not the Docker path:\n{}", run.stderr);

    // /health and /ws at the printed URL.
    let url = printed(&run, "NEXT_PUBLIC_WS_URL");
    let hostport = url.trim_start_matches("ws://").split('/').next().unwrap().to_owned();
    let (host, port) = hostport.rsplit_once(':').unwrap();
    let port: u16 = port.parse().unwrap();
    assert!(host.starts_with("127."), "task addresses must be loopback: {url}");
    let (status, body) = http_get(host, port, "/health").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""status":"ok""#), "{body}");
    let (hello, echo) = ws_round_trip(host, port, "production image").unwrap();
    assert!(hello.contains(r#""type":"hello""#), "{hello}");
    assert_eq!(echo, "production image");

    // The task's container runs the image built above.
    let tasks = docker(&["ps", "--filter", "name=casey-task-", "--format", "{{.ID}}"]);
    let task: Vec<&str> = tasks.lines().collect();
    assert_eq!(task.len(), 1, "expected one task container, got: {tasks}");
    let task = task[0];
    // The task runs the image the tool built and pushed (IMAGE=), and that
    // is the production image: same base layer, user, health check and
    // entrypoint as the reference build above. (The binary layer and the ids
    // can differ: the engine may hold more than one cached chain, and two
    // cargo builds of the same source are not byte-identical.)
    let pushed = printed(&run, "IMAGE");
    assert_eq!(inspect(task, "{{.Image}}"), image_id(&pushed).unwrap(), "the task runs another image than {pushed}");
    for format in [
        "{{index .RootFS.Layers 0}}",
        "{{.Config.User}}",
        "{{json .Config.Healthcheck}}",
        "{{json .Config.Entrypoint}}",
    ] {
        assert_eq!(
            inspect(&pushed, format),
            inspect(&built, format),
            "{pushed} differs from the reference build in {format}"
        );
    }

    // The task definition's health check, run in the container by the
    // sandbox as by the ECS agent, made the task HEALTHY; and docker's own
    // run of the image's HEALTHCHECK (first after its 30 s interval) passes.
    assert_eq!(ecs_health(project.dir.path(), task), ("HEALTHY".to_owned(), "HEALTHY".to_owned()));
    wait_healthy(task, Duration::from_secs(120));

    // Not root: the kernel's view of the task's process.
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid_of(task))).unwrap();
    for key in ["Uid:", "Gid:"] {
        let ids: Vec<&str> = status.lines().find(|l| l.starts_with(key)).unwrap().split_whitespace().skip(1).collect();
        assert_eq!(ids, [NONROOT; 4], "{key} of the task's process");
    }

    // Read-only root with a writable /tmp, as the task definition asks
    // (readonlyRootFilesystem, and task storage mounted at /tmp). ECS gives
    // that mount the image's /tmp, permissions included, only because the
    // image declares it a VOLUME (else it is root's 0755); the sandbox's
    // runner applies both settings as the ECS agent does.
    assert_eq!(inspect(IMAGE, "{{json .Config.Volumes}}"), r#"{"/tmp":{}}"#);
    assert_eq!(inspect(task, "{{.HostConfig.ReadonlyRootfs}}"), "true");
    let root = format!("/proc/{}/root", pid_of(task));
    let refused = touch_as_nonroot(&format!("{root}/probe")).expect_err("the root filesystem is writable");
    assert!(refused.contains("Read-only file system"), "{refused}");
    touch_as_nonroot(&format!("{root}/tmp/probe")).expect("/tmp is not writable for the image's user");
}
