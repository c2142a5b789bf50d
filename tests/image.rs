//! `image`, the ECS rollout, `backend-url` and `all` against a real Docker
//! engine, a real registry and the emulator.
//!
//! Needs the test engine and registry: `.ci/docker.sh start`, then
//! `source "$(.ci/docker.sh env)"` (DOCKER_HOST, CASEY_TEST_REGISTRY); .ci/run
//! does both. Without them the tests fail (they are never skipped).
//!
//! One test (`deploy_flow`) applies the stack once and runs the scenarios that
//! need it in order; the others use a stack of outputs only (no AWS
//! resources, applied in a second), which is all `image` and `backend-url`
//! read before they talk to docker or ECS.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;
use sha1::Digest as _;

use common::docker::{http_get, registry, registry_auth, stdout_value, unique, unique_context, REGISTRY_PASSWORD};
use common::{drain, Emulator, Project};

const REPOSITORY: &str = "casey-backend";
/// The emulated ECR registry of the default account and region.
const ECR: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com";

/// Tags of the repository, read through the registry's HTTP API; none when
/// nothing was ever pushed to it (the registry answers 404 NAME_UNKNOWN).
fn registry_tags(registry: &str) -> Vec<String> {
    let auth = registry_auth();
    let (status, _, body) = http_get(registry, &format!("/v2/{REPOSITORY}/tags/list"), &[("Authorization", &auth)]);
    if status == 404 && body.contains("NAME_UNKNOWN") {
        return Vec::new();
    }
    assert_eq!(status, 200, "tags/list: {body}");
    let json: Value = serde_json::from_str(&body).unwrap();
    json["tags"].as_array().into_iter().flatten().filter_map(|t| t.as_str().map(str::to_owned)).collect()
}

/// The manifest digest of a tag, read through the registry's HTTP API.
fn registry_digest(registry: &str, tag: &str) -> String {
    let auth = registry_auth();
    let accept = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json";
    let (status, headers, body) = http_get(
        registry,
        &format!("/v2/{REPOSITORY}/manifests/{tag}"),
        &[("Authorization", &auth), ("Accept", accept)],
    );
    assert_eq!(status, 200, "manifest {tag}: {body}");
    headers.into_iter().find(|(k, _)| k == "docker-content-digest").map(|(_, v)| v).expect("no Docker-Content-Digest")
}

/// A project whose "stack" holds only the outputs the deploy verbs read (no
/// AWS resources), applied in about a second.
fn outputs_only_project(emulator: &Emulator, alb: bool) -> Project {
    let dir = tempfile::tempdir().unwrap();
    let tf = dir.path().join("terraform");
    std::fs::create_dir_all(&tf).unwrap();
    let (dns, url) = if alb {
        (
            "\"casey-backend-1234567890.us-east-1.elb.amazonaws.com\"",
            "\"wss://casey-backend-1234567890.us-east-1.elb.amazonaws.com/ws\"",
        )
    } else {
        ("null", "null")
    };
    std::fs::write(
        tf.join("outputs.tf"),
        format!(
            r#"
output "aws_region" {{ value = "us-east-1" }}
output "ecr_repository_url" {{ value = "123456789012.dkr.ecr.us-east-1.amazonaws.com/{REPOSITORY}" }}
output "ecs_cluster_name" {{ value = "casey" }}
output "ecs_service_name" {{ value = "casey-backend" }}
output "container_name" {{ value = "casey-backend" }}
output "container_port" {{ value = 3001 }}
output "enable_alb" {{ value = {alb} }}
output "alb_dns_name" {{ value = {dns} }}
output "recommended_ws_url" {{ value = {url} }}
"#
        ),
    )
    .unwrap();
    let project = Project { dir, endpoint: emulator.endpoint.clone(), secrets: emulator.secrets() };
    project.write_env(emulator.admin());
    let init = project.terraform(emulator.admin(), &["init", "-input=false"]);
    assert!(init.ok(), "terraform init: {}", init.all());
    let apply = project.terraform(emulator.admin(), &["apply", "-auto-approve", "-input=false"]);
    assert!(apply.ok(), "terraform apply: {}", apply.all());
    project
}

/// Secrets beyond the harness's list: the ECR token (base64 of AWS:password).
fn extra_secrets() -> Vec<String> {
    vec![base64::engine::general_purpose::STANDARD.encode(format!("AWS:{REGISTRY_PASSWORD}"))]
}

#[derive(Debug, Clone, PartialEq)]
struct Task {
    arn: String,
    ip: String,
    image: String,
}

/// The service's running tasks, from the emulator's own view.
fn running_tasks(emulator: &Emulator) -> Vec<Task> {
    let tasks = emulator.control("GET", "/_casey/ecs/tasks", &Value::Null);
    tasks
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["last_status"] == "RUNNING" && t["desired_status"] == "RUNNING")
        .map(|t| Task {
            arn: t["task_arn"].as_str().unwrap().to_owned(),
            ip: t["public_ip"].as_str().unwrap_or_default().to_owned(),
            image: t["containers"][0]["image"].as_str().unwrap_or_default().to_owned(),
        })
        .collect()
}

/// The running tasks' public IPs read like the seed's script, through the
/// AWS API with the aws CLI (independent of the tool).
fn public_ips_via_aws_cli(emulator: &Emulator) -> Vec<String> {
    let tasks = emulator.described_tasks(&["--service-name", "casey-backend"]);
    if tasks.is_empty() {
        return Vec::new();
    }
    let enis: Vec<String> = tasks
        .iter()
        .filter(|t| t["lastStatus"] == "RUNNING")
        .flat_map(|t| t["attachments"][0]["details"].as_array().unwrap().clone())
        .filter(|d| d["name"] == "networkInterfaceId")
        .map(|d| d["value"].as_str().unwrap().to_owned())
        .collect();
    let mut args = vec!["ec2", "describe-network-interfaces", "--network-interface-ids"];
    args.extend(enis.iter().map(String::as_str));
    let described = emulator.aws(&args);
    let mut ips: Vec<String> = described["NetworkInterfaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["Association"]["PublicIp"].as_str().map(str::to_owned))
        .collect();
    ips.sort();
    ips
}

/// A NAT gateway and a route table that sends the service's subnets'
/// default route through it, as private subnets have.
fn route_subnets_through_a_nat_gateway(emulator: &Emulator, network: &Value) {
    let subnets: Vec<&str> =
        network["awsvpcConfiguration"]["subnets"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    let subnet = emulator.aws(&["ec2", "describe-subnets", "--subnet-ids", subnets[0]]);
    let vpc = subnet["Subnets"][0]["VpcId"].as_str().unwrap().to_owned();
    let eip = emulator.aws(&["ec2", "allocate-address", "--domain", "vpc"]);
    let nat = emulator.aws(&[
        "ec2",
        "create-nat-gateway",
        "--subnet-id",
        subnets[0],
        "--allocation-id",
        eip["AllocationId"].as_str().unwrap(),
    ]);
    let nat = nat["NatGateway"]["NatGatewayId"].as_str().unwrap().to_owned();
    let table = emulator.aws(&["ec2", "create-route-table", "--vpc-id", &vpc]);
    let table = table["RouteTable"]["RouteTableId"].as_str().unwrap().to_owned();
    emulator.aws(&[
        "ec2",
        "create-route",
        "--route-table-id",
        &table,
        "--destination-cidr-block",
        "0.0.0.0/0",
        "--nat-gateway-id",
        &nat,
    ]);
    for subnet in subnets {
        emulator.aws(&["ec2", "associate-route-table", "--route-table-id", &table, "--subnet-id", subnet]);
    }
}

fn wait_until(what: &str, seconds: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !done() {
        assert!(Instant::now() < deadline, "timed out after {seconds}s waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A stand-in backend on `ip:port` answering `GET /health` (200) and a
/// WebSocket upgrade (101 with the right accept) for `connections` connections.
fn fake_backend(ip: &str, port: u16, connections: usize) -> std::thread::JoinHandle<Vec<String>> {
    let listener = TcpListener::bind((ip, port)).unwrap_or_else(|e| panic!("cannot listen on {ip}:{port}: {e}"));
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        for _ in 0..connections {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut key = None;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    if k.eq_ignore_ascii_case("sec-websocket-key") {
                        key = Some(v.trim().to_owned());
                    }
                }
            }
            let mut stream = stream;
            let response = match (request_line.split_whitespace().nth(1), key) {
                (Some("/health"), _) => {
                    "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".to_owned()
                }
                (Some("/ws"), Some(key)) => {
                    let mut sha = sha1::Sha1::new();
                    sha.update(format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes());
                    let accept = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
                    format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n")
                }
                _ => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_owned(),
            };
            stream.write_all(response.as_bytes()).unwrap();
            seen.push(request_line.trim().to_owned());
        }
        seen
    })
}

/// A second registry whose password is NOT the ECR token.
struct OtherRegistry {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl OtherRegistry {
    fn start() -> OtherRegistry {
        let dir = tempfile::tempdir().unwrap();
        let htpasswd = dir.path().join("htpasswd");
        let mut child = Command::new("htpasswd")
            .args(["-iBc"])
            .arg(&htpasswd)
            .arg("AWS")
            .stdin(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("htpasswd (apache2-utils) is needed; .ci/setup.sh installs it");
        child.stdin.take().unwrap().write_all(b"not-the-ecr-token").unwrap();
        assert!(child.wait().unwrap().success());
        let port = common::free_port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\nauth:\n  htpasswd:\n    realm: other\n    path: {}\n",
                dir.path().join("data").display(),
                htpasswd.display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry is needed; .ci/setup.sh installs it");
        wait_until("the second registry", 30, || TcpStream::connect(&addr).is_ok());
        OtherRegistry { child, addr, _dir: dir }
    }
}

impl Drop for OtherRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `history --json`: the releases, newest first.
fn history_of(project: &Project) -> Vec<Value> {
    let run = project.casey(&["history", "--json"]);
    run.assert_ok();
    serde_json::from_str::<Value>(&run.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", run.all()))
        .as_array()
        .unwrap()
        .clone()
}

fn context_arg(path: &Path) -> String {
    path.display().to_string()
}

#[test]
fn missing_outputs_say_to_run_infra_first() {
    let emulator = Emulator::start();
    let project = Project::new(&emulator);
    let fixture = context_arg(&common::repo_root().join("tests/fixtures/scratch-context"));
    for args in
        [vec!["image", "--context", &fixture, "--tag", "t1"], vec!["backend-url"], vec!["backend-url", "--json"]]
    {
        let run = project.casey(&args);
        run.assert_fails_with("the stack has not been applied: run `casey-deploy infra` first");
        run.assert_no_secrets(&extra_secrets());
    }
}

#[test]
fn backend_url_with_an_alb_is_the_alb_url() {
    let emulator = Emulator::start();
    let project = outputs_only_project(&emulator, true);
    let run = project.casey(&["backend-url"]);
    run.assert_ok();
    assert_eq!(stdout_value(&run, "BACKEND_WS_URL"), "wss://casey-backend-1234567890.us-east-1.elb.amazonaws.com/ws");
    let run = project.casey(&["backend-url", "--json"]);
    run.assert_ok();
    let json: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(json["source"], "alb");
    assert_eq!(json["url"], "wss://casey-backend-1234567890.us-east-1.elb.amazonaws.com/ws");
    assert_eq!(json["alb_dns_name"], "casey-backend-1234567890.us-east-1.elb.amazonaws.com");
}

#[test]
fn docker_problems_are_clear_errors() {
    let registry = registry();
    let emulator = Emulator::start();
    let project = outputs_only_project(&emulator, false);
    let (_dir, context) = unique_context();
    let context = context_arg(&context);

    // The engine is down (nothing listens on the socket).
    let dead = tempfile::tempdir().unwrap();
    let dead_host = format!("unix://{}", dead.path().join("docker.sock").display());
    let run = project.casey_with(
        &["image", "--registry", &registry, "--context", &context, "--tag", "t-dead"],
        &[("DOCKER_HOST", &dead_host)],
    );
    run.assert_fails_with("step `docker`: the Docker engine is not reachable");
    run.assert_fails_with(&dead_host);
    run.assert_no_secrets(&extra_secrets());

    // docker is not installed: a PATH with terraform only.
    let bin = tempfile::tempdir().unwrap();
    let terraform = Command::new("sh").args(["-c", "command -v terraform"]).output().unwrap();
    let terraform = String::from_utf8_lossy(&terraform.stdout).trim().to_owned();
    std::os::unix::fs::symlink(&terraform, bin.path().join("terraform")).unwrap();
    let path = bin.path().display().to_string();
    let run = project
        .casey_with(&["image", "--registry", &registry, "--context", &context, "--tag", "t-none"], &[("PATH", &path)]);
    run.assert_fails_with("could not find `docker` on PATH");

    // The registry refuses the ECR credentials.
    let other = OtherRegistry::start();
    let run = project.casey(&["image", "--registry", &other.addr, "--context", &context, "--tag", "t-refused"]);
    run.assert_fails_with(&format!("step `docker login`: {} refused the ECR credentials", other.addr));
    run.assert_no_secrets(&extra_secrets());

    // The build fails: the step is named, with docker's last lines.
    let broken = tempfile::tempdir().unwrap();
    std::fs::write(broken.path().join("Dockerfile"), "FROM scratch\nCOPY missing-file.txt /\n").unwrap();
    let run = project.casey(&[
        "image",
        "--registry",
        &registry,
        "--context",
        &context_arg(broken.path()),
        "--tag",
        "t-broken",
    ]);
    run.assert_fails_with("step `docker build` failed");
    run.assert_fails_with("missing-file.txt");

    // No --tag outside a git repository: the tool says how to choose one.
    let run = project.casey(&["image", "--registry", &registry, "--context", &context]);
    run.assert_fails_with("pass an immutable tag with --tag TAG");

    // A git working tree with uncommitted changes: refused before anything is built, unless --allow-dirty.
    let repo = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&context).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, repo.path().join(path.file_name().unwrap())).unwrap();
    }
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(["-c", "user.name=casey test", "-c", "user.email=test@casey.invalid", "-c", "commit.gpgsign=false"])
            .arg("-C")
            .arg(repo.path())
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "a release"]);
    let sha = git(&["rev-parse", "--short", "HEAD"]);
    std::fs::write(repo.path().join("hello.txt"), format!("not committed {}\n", unique("dirty"))).unwrap();
    let dirty = context_arg(repo.path());
    let run = project.casey(&["image", "--registry", &registry, "--context", &dirty]);
    run.assert_fails_with(&format!(
        "has uncommitted changes, so its commit {sha} does not describe what would be built"
    ));
    run.assert_fails_with("--allow-dirty");
    assert!(!run.stderr.contains("docker build"), "nothing was built: {}", run.stderr);
    assert!(!registry_tags(&registry).iter().any(|t| t.starts_with(&sha)), "nothing was pushed");
    let run = project.casey(&["image", "--registry", &registry, "--context", &dirty, "--allow-dirty"]);
    assert!(run.stderr.contains(&format!("building them as {sha}-dirty-")), "{}", run.all());
    let pushed: Vec<String> = registry_tags(&registry).into_iter().filter(|t| t.starts_with(&sha)).collect();
    assert!(
        pushed.len() == 1 && pushed[0].starts_with(&format!("{sha}-dirty-")),
        "the one-off tag was pushed: {pushed:?}\n{}",
        run.all()
    );
}

#[test]
fn deploy_flow() {
    let registry = registry();
    let emulator = Emulator::start();
    // The registry stands behind the emulated ECR (tags pushed there are in ECR).
    emulator.control("POST", "/_casey/ecr/registry", &serde_json::json!({ "registry": registry }));
    let project = Project::new(&emulator);
    project.apply_stack(&emulator);
    wait_until("the first task", 60, || !running_tasks(&emulator).is_empty());

    // --- backend-url without ALB: the ENI public IP, as the AWS API reports it.
    let run = project.casey(&["backend-url"]);
    run.assert_ok();
    let expected = public_ips_via_aws_cli(&emulator);
    assert_eq!(expected.len(), 1, "one task runs: {expected:?}");
    assert!(expected[0].starts_with("127."), "the emulator hands out loopback IPs: {expected:?}");
    assert_eq!(stdout_value(&run, "BACKEND_WS_URL"), format!("ws://{}:3001/ws", expected[0]));
    assert!(run.stderr.contains("changes on every deploy"), "the IP note: {}", run.stderr);
    let json = project.casey(&["backend-url", "--json"]);
    json.assert_ok();
    let json: Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(json["source"], "tasks");
    assert_eq!(json["tasks"][0]["public_ip"], expected[0].as_str());

    // --- backend-url --check: /health 200 and a WebSocket upgrade 101, per task.
    let server = fake_backend(&expected[0], 3001, 2);
    let run = project.casey(&["backend-url", "--check"]);
    run.assert_ok();
    assert!(run.stderr.contains("GET /health ok (200 OK); WebSocket upgrade ok (101"), "{}", run.stderr);
    let seen = server.join().unwrap();
    assert_eq!(seen, vec!["GET /health HTTP/1.1", "GET /ws HTTP/1.1"]);
    // Nothing listens any more: the check fails.
    project.casey(&["backend-url", "--check"]).assert_fails_with("--check: 1 of 1 backend URL(s) failed");

    // --- image: push the tag, record the release by digest, apply, follow the rollout.
    let before = running_tasks(&emulator);
    let (_dir, context) = unique_context();
    let tag = unique("img");
    let run = project.casey(&[
        "image",
        "--registry",
        &registry,
        "--context",
        &context_arg(&context),
        "--tag",
        &tag,
        "--timeout",
        "120",
    ]);
    run.assert_ok();
    run.assert_no_secrets(&extra_secrets());
    let tags = registry_tags(&registry);
    assert!(tags.contains(&tag) && !tags.contains(&"latest".to_owned()), "only the immutable tag is pushed: {tags:?}");
    let digest = registry_digest(&registry, &tag);
    assert_eq!(stdout_value(&run, "IMAGE"), format!("{registry}/{REPOSITORY}:{tag}"));
    assert_eq!(stdout_value(&run, "IMAGE_DIGEST"), format!("{registry}/{REPOSITORY}@{digest}"));
    assert!(run.stderr.contains("COMPLETED: 1/1 task(s) running"), "rollout followed to the end: {}", run.stderr);
    assert!(run.stderr.contains("--password-stdin") || run.stderr.contains("password from ECR on stdin"));
    let after = running_tasks(&emulator);
    assert_eq!(after.len(), 1, "{after:?}");
    assert!(before.iter().all(|b| b.arn != after[0].arn), "the task was replaced: {before:?} -> {after:?}");
    assert!(before.iter().all(|b| b.ip != after[0].ip), "the new task has a new IP: {before:?} -> {after:?}");
    assert_eq!(after[0].image, format!("{ECR}/{REPOSITORY}@{digest}"), "the task runs the release by digest");
    let first = (tag.clone(), digest.clone());
    // Terraform reads the release from its record: nothing to change.
    let run = project.casey(&["infra"]);
    run.assert_ok();
    assert!(run.stderr.contains("No changes"), "infra after a deploy: {}", run.stderr);
    assert_eq!(
        project.casey(&["backend-url"]).stdout.trim(),
        format!("BACKEND_WS_URL=ws://{}:3001/ws", after[0].ip),
        "backend-url follows the new task"
    );

    // --- a rollout that fails: circuit breaker, rollback; the reason is shown.
    std::fs::write(context.join("hello.txt"), format!("a release that fails {}\n", unique("fail"))).unwrap();
    let reason = "CannotPullContainerError: pull image manifest has been retried 5 time(s): not found";
    emulator.control(
        "POST",
        "/_casey/ecs/fail-deployments",
        &serde_json::json!({"cluster": "casey", "service": "casey-backend", "reason": reason, "count": 1}),
    );
    let run = project.casey(&[
        "image",
        "--registry",
        &registry,
        "--context",
        &context_arg(&context),
        "--tag",
        &format!("{tag}-2"),
        "--timeout",
        "120",
    ]);
    run.assert_fails_with("step `rollout`");
    run.assert_fails_with(reason);
    assert!(run.stderr.contains("rolled the service back"), "the rollback is named: {}", run.stderr);
    assert!(run.stderr.contains("Recent service events:"), "{}", run.stderr);
    assert!(run.stderr.contains("recorded as release v"), "the rollback is recorded: {}", run.stderr);
    assert!(run.stderr.contains("`casey-deploy logs --since 15m`"), "{}", run.stderr);
    wait_until("the rollback to settle", 60, || {
        let tasks = running_tasks(&emulator);
        tasks.len() == 1 && tasks[0].arn != after[0].arn
    });
    let failed_tag = format!("{tag}-2");
    let history = history_of(&project);
    assert_eq!(history[0]["live"], true, "{history:?}");
    assert_eq!(
        (history[0]["tag"].as_str(), history[0]["digest"].as_str()),
        (Some(first.0.as_str()), Some(first.1.as_str()))
    );
    assert_eq!(history[0]["action"], "rollback");
    assert_eq!(history[1]["tag"], failed_tag.as_str());
    assert_eq!(history[1]["outcome"], "failed", "{history:?}");
    assert_eq!(history[1]["live"], false);
    assert_eq!(history[2]["tag"], first.0.as_str());
    assert_eq!(history[2]["outcome"], "completed", "{history:?}");
    let run = project.casey(&["infra"]);
    run.assert_ok();
    assert!(run.stderr.contains("No changes"), "Terraform agrees with the rollback ECS made: {}", run.stderr);

    // --- all, end to end: infra (no changes) with the build alongside, push,
    // rollout, backend-url; the default tag is the git short sha.
    let fixture = context_arg(&common::repo_root().join("tests/fixtures/scratch-context"));
    let run = project.casey(&["all", "--yes", "--registry", &registry, "--context", &fixture, "--timeout", "120"]);
    run.assert_ok();
    run.assert_no_secrets(&extra_secrets());
    let sha = Command::new("git").args(["-C", &fixture, "rev-parse", "--short", "HEAD"]).output().unwrap();
    let sha = String::from_utf8_lossy(&sha.stdout).trim().to_owned();
    let image = stdout_value(&run, "IMAGE");
    let tag = image.rsplit(':').next().unwrap();
    assert_eq!(tag, sha, "default tag from git");
    let now = running_tasks(&emulator);
    assert_eq!(now.len(), 1);
    assert_eq!(stdout_value(&run, "NEXT_PUBLIC_WS_URL"), format!("ws://{}:3001/ws", now[0].ip));
    for step in ["docker", "infra", "build", "push", "rollout", "backend-url", "total"] {
        // Off a terminal each line starts with an `HH:MM:SS [environment]` stamp.
        let row =
            |l: &str| l.get(9..).and_then(|l| l.strip_prefix("[production] ")).is_some_and(|r| r.starts_with(step));
        assert!(run.stderr.lines().any(row), "summary row {step}: {}", run.stderr);
    }
    assert!(run.stderr.contains("in parallel with infra"), "the build overlapped terraform: {}", run.stderr);
    let second = registry_digest(&registry, &sha);
    assert_ne!(second, first.1, "two releases, two digests");

    // --- history: both releases, distinct digests, the live one marked.
    let history = history_of(&project);
    assert_eq!(history[0]["tag"], sha.as_str());
    assert_eq!(history[0]["digest"], second.as_str());
    assert_eq!(history[0]["live"], true);
    assert_eq!(history[0]["outcome"], "completed");
    assert_eq!(history.iter().filter(|e| e["live"] == true).count(), 1, "{history:?}");
    for entry in &history {
        assert!(entry["deployed_by"].as_str().unwrap().starts_with("arn:aws:iam::"), "{entry}");
        assert!(entry["deployed_at"].as_str().unwrap().contains('T'), "{entry}");
        assert!(
            entry["task_definition"].is_null()
                || entry["task_definition"].as_str().unwrap().contains(":task-definition/")
        );
    }
    let text = project.casey(&["history"]);
    text.assert_ok();
    assert_eq!(stdout_value(&text, "LIVE_RELEASE").split(' ').nth(1), Some(sha.as_str()), "{}", text.stdout);

    // --- the same commit again: not pushed twice, and nothing to roll out.
    let run = project.casey(&["all", "--yes", "--registry", &registry, "--context", &fixture, "--timeout", "120"]);
    run.assert_ok();
    assert!(run.stderr.contains("is already in ECR"), "{}", run.stderr);
    // --- an explicit tag that ECR already holds is refused before any push.
    let run = project.casey(&[
        "image",
        "--registry",
        &registry,
        "--context",
        &context_arg(&context),
        "--tag",
        &first.0,
        "--timeout",
        "120",
    ]);
    run.assert_fails_with("is already in ECR repository");
    run.assert_fails_with(&format!("`casey-deploy rollback --to {}`", first.0));

    // --- rollback: the previous good release (the failed one is skipped)
    // goes live by digest, followed; infra then plans no changes.
    let run = project.casey(&["rollback", "--yes", "--timeout", "120"]);
    run.assert_ok();
    assert!(run.stderr.contains(&format!("to release v")) && run.stderr.contains(&first.0), "{}", run.stderr);
    assert!(run.stderr.contains("COMPLETED: 1/1 task(s) running"), "{}", run.stderr);
    let now = running_tasks(&emulator);
    assert_eq!(now.len(), 1);
    assert_eq!(now[0].image, format!("{ECR}/{REPOSITORY}@{}", first.1), "the first release runs again");
    let status = project.casey(&["status", "--json"]);
    status.assert_ok();
    let status: Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(status["image_digest"], first.1.as_str(), "{status}");
    assert_eq!(status["image_tag"], first.0.as_str(), "{status}");
    let history = history_of(&project);
    assert_eq!((history[0]["action"].as_str(), history[0]["live"].as_bool()), (Some("rollback"), Some(true)));
    assert_eq!(history[1]["outcome"], "rolled back", "{history:?}");
    let run = project.casey(&["infra"]);
    run.assert_ok();
    assert!(run.stderr.contains("No changes"), "infra after a rollback: {}", run.stderr);
    // By name, back to the newer release; and names that are not releases.
    project.casey(&["rollback", "--yes", "--to", &sha, "--timeout", "120"]).assert_ok();
    assert_eq!(running_tasks(&emulator)[0].image, format!("{ECR}/{REPOSITORY}@{second}"));
    project
        .casey(&["rollback", "--to", "no-such-tag"])
        .assert_fails_with("no release in the history has the tag or digest `no-such-tag`");
    let run = project.casey(&["rollback", "--yes", "--to", &sha]);
    run.assert_ok();
    assert!(run.stderr.contains("is already live: nothing to roll back"), "{}", run.stderr);

    // --- two `all` at once: the deploy lock serialises them. The second
    // waits for the first to finish its rollout, then deploys its own.
    let (_first_dir, first_context) = unique_context();
    let (_second_dir, second_context) = unique_context();
    let (first_tag, second_tag) = (unique("lock-first"), unique("lock-second"));
    let lock = project.tf_dir().join(".terraform/casey-deploy.lock");
    assert!(!lock.exists(), "no run holds the deploy lock");
    let all = |context: &Path, tag: &str| {
        let context = context_arg(context);
        let args = ["all", "--yes", "--registry", &registry, "--context", &context, "--tag", tag, "--timeout", "120"];
        let mut args = args.to_vec();
        args.extend(["--lock-timeout", "10m"]);
        project.command(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
    };
    let first_all = all(&first_context, &first_tag);
    wait_until("the first `all` to take the deploy lock", 60, || lock.is_file());
    let second_all = all(&second_context, &second_tag);
    let (first_all, second_all) = (first_all.wait_with_output().unwrap(), second_all.wait_with_output().unwrap());
    let (first_err, second_err) =
        (String::from_utf8_lossy(&first_all.stderr), String::from_utf8_lossy(&second_all.stderr));
    assert!(first_all.status.success(), "{first_err}");
    assert!(second_all.status.success(), "{second_err}");
    assert!(second_err.contains("waiting for the deploy lock"), "the second waited: {second_err}");
    assert!(!first_err.contains("waiting for the deploy lock"), "{first_err}");
    let history = history_of(&project);
    assert_eq!(history[0]["tag"], second_tag.as_str(), "{history:?}");
    assert_eq!((history[0]["outcome"].as_str(), history[0]["live"].as_bool()), (Some("completed"), Some(true)));
    assert_eq!(history[1]["tag"], first_tag.as_str(), "{history:?}");
    assert_eq!(history[1]["outcome"], "completed", "the first rollout ran to its end undisturbed: {history:?}");
    let second_digest = registry_digest(&registry, &second_tag);
    assert_eq!(running_tasks(&emulator)[0].image, format!("{ECR}/{REPOSITORY}@{second_digest}"));
    assert!(!lock.exists(), "the deploy lock is released");

    // --- running tasks without a public IP (private subnets behind a NAT
    // gateway, which Fargate needs then to reach ECR): a clear error that
    // says what to check.
    let described = emulator.aws(&["ecs", "describe-services", "--cluster", "casey", "--services", "casey-backend"]);
    let mut network = described["services"][0]["networkConfiguration"].clone();
    route_subnets_through_a_nat_gateway(&emulator, &network);
    network["awsvpcConfiguration"]["assignPublicIp"] = "DISABLED".into();
    let network = network.to_string();
    emulator.aws(&[
        "ecs",
        "update-service",
        "--cluster",
        "casey",
        "--service",
        "casey-backend",
        "--network-configuration",
        &network,
        "--force-new-deployment",
    ]);
    wait_until("a task without a public IP", 60, || {
        let tasks = running_tasks(&emulator);
        !tasks.is_empty() && tasks.iter().all(|t| t.ip.is_empty())
    });
    let run = project.casey(&["backend-url"]);
    run.assert_fails_with("have no public IP");
    run.assert_fails_with("assignPublicIp");

    // --- no running task: a clear error that says what to check.
    emulator.aws(&[
        "ecs",
        "update-service",
        "--cluster",
        "casey",
        "--service",
        "casey-backend",
        "--desired-count",
        "0",
    ]);
    wait_until("the tasks to stop", 60, || running_tasks(&emulator).is_empty());
    let run = project.casey(&["backend-url"]);
    run.assert_fails_with("no backend URL: no running task in service casey-backend");
    run.assert_fails_with("--wait SECONDS");
    let start = Instant::now();
    project.casey(&["backend-url", "--wait", "3"]).assert_fails_with("no running task");
    assert!(start.elapsed() >= Duration::from_secs(3), "--wait waited");
}

/// The service's deployments as ECS lists them: (status, rollout state, image of its task definition).
fn deployments(emulator: &Emulator) -> Vec<(String, String, String)> {
    let services = emulator.aws(&["ecs", "describe-services", "--cluster", "casey", "--services", "casey-backend"]);
    let deployments = services["services"][0]["deployments"].as_array().unwrap().clone();
    deployments
        .iter()
        .map(|d| {
            let td = emulator.aws(&[
                "ecs",
                "describe-task-definition",
                "--task-definition",
                d["taskDefinition"].as_str().unwrap(),
            ]);
            (
                d["status"].as_str().unwrap_or_default().to_owned(),
                d["rolloutState"].as_str().unwrap_or_default().to_owned(),
                td["taskDefinition"]["containerDefinitions"][0]["image"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// A release whose rollout is interrupted: without a terminal it keeps
/// rolling out and the tool names the rollback command; on a terminal the
/// user can choose to roll back, and the release before it is live again.
#[test]
fn an_interrupted_rollout_is_left_running_or_rolled_back_when_asked() {
    let registry = registry();
    let emulator = Emulator::start();
    emulator.control("POST", "/_casey/ecr/registry", &serde_json::json!({ "registry": registry }));
    let project = Project::new(&emulator);
    project.apply_stack(&emulator);
    let (_dir, context) = unique_context();
    let image = |tag: &str| {
        let mut cmd = project.command(&[
            "image",
            "--registry",
            &registry,
            "--context",
            &context_arg(&context),
            "--tag",
            tag,
            "--timeout",
            "300",
        ]);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd
    };
    let rollout_seconds = |seconds: u64| {
        emulator.control("POST", "/_casey/ecs/rollout-seconds", &serde_json::json!({ "seconds": seconds }));
    };
    let ecr_image = |tag: &str| format!("{ECR}/{REPOSITORY}@{}", registry_digest(&registry, tag));
    let (one, two, three) = (unique("one"), unique("two"), unique("three"));
    let run = project.casey(&["image", "--registry", &registry, "--context", &context_arg(&context), "--tag", &one]);
    run.assert_ok();

    // --- no terminal: the deployment keeps running, the rollback command is named.
    rollout_seconds(600);
    std::fs::write(context.join("hello.txt"), format!("release {two}\n")).unwrap();
    let mut child = image(&two).stdin(Stdio::null()).spawn().unwrap();
    let (stdout, stderr) = (drain(child.stdout.take().unwrap()), drain(child.stderr.take().unwrap()));
    common::wait_for(&mut child, &stderr, "rollout IN_PROGRESS", Duration::from_secs(300));
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let status = child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let run = common::Run {
        code: status.code(),
        stdout: stdout.lock().unwrap().clone(),
        stderr: stderr.lock().unwrap().clone(),
    };
    assert_eq!(run.code, Some(130), "{}", run.all());
    run.assert_no_secrets(&extra_secrets());
    assert!(run.stderr.contains("keeps running without being followed"), "{}", run.stderr);
    assert!(run.stderr.contains("`casey-deploy rollback` puts the release before it back"), "{}", run.stderr);
    assert!(!run.stderr.contains("Type `rollback`"), "no question without a terminal: {}", run.stderr);
    let primary = deployments(&emulator).into_iter().find(|d| d.0 == "PRIMARY").unwrap();
    assert_eq!(primary, ("PRIMARY".into(), "IN_PROGRESS".into(), ecr_image(&two)), "ECS goes on with it");
    rollout_seconds(1);
    wait_until("the interrupted release to complete on its own", 120, || {
        deployments(&emulator) == vec![("PRIMARY".into(), "COMPLETED".into(), ecr_image(&two))]
    });
    assert_eq!(history_of(&project)[0]["tag"], two.as_str());
    assert_eq!(history_of(&project)[0]["live"], true);

    // --- a terminal: asked, the user rolls back; the release before it is live again.
    rollout_seconds(600);
    std::fs::write(context.join("hello.txt"), format!("release {three}\n")).unwrap();
    let (mut master, slave) = common::pty();
    let mut child = image(&three).stdin(Stdio::from(slave)).spawn().unwrap();
    let (stdout, stderr) = (drain(child.stdout.take().unwrap()), drain(child.stderr.take().unwrap()));
    common::wait_for(&mut child, &stderr, "rollout IN_PROGRESS", Duration::from_secs(300));
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    common::wait_for(&mut child, &stderr, "Type `rollback` to roll back", Duration::from_secs(30));
    rollout_seconds(1);
    master.write_all(b"rollback\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the rollback did not end:\n{}", stderr.lock().unwrap());
        std::thread::sleep(Duration::from_millis(100));
    };
    std::thread::sleep(Duration::from_millis(200));
    let run = common::Run {
        code: status.code(),
        stdout: stdout.lock().unwrap().clone(),
        stderr: stderr.lock().unwrap().clone(),
    };
    assert_eq!(run.code, Some(1), "the release was not deployed: {}", run.all());
    run.assert_no_secrets(&extra_secrets());
    assert!(run.stderr.contains(&format!("rolling back from v")), "{}", run.stderr);
    assert!(run.stderr.contains("COMPLETED: 1/1 task(s) running"), "the rollback is followed: {}", run.stderr);
    assert!(
        run.stderr.contains(&format!("its rollout was interrupted and release v"))
            && run.stderr.contains(&format!("({two}) was put back")),
        "{}",
        run.stderr
    );
    assert_eq!(deployments(&emulator), vec![("PRIMARY".into(), "COMPLETED".into(), ecr_image(&two))]);
    let history = history_of(&project);
    assert_eq!(
        (history[0]["tag"].as_str(), history[0]["live"].as_bool()),
        (Some(two.as_str()), Some(true)),
        "{history:?}"
    );
    assert_eq!((history[0]["action"].as_str(), history[0]["reason"].as_str()), (Some("rollback"), Some("interrupted")));
    assert_eq!(
        (history[1]["tag"].as_str(), history[1]["outcome"].as_str()),
        (Some(three.as_str()), Some("rolled back"))
    );
    let run = project.casey(&["infra"]);
    run.assert_ok();
    assert!(run.stderr.contains("No changes"), "Terraform agrees with the rollback: {}", run.stderr);
}
