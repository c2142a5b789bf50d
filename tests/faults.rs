//! Fault tolerance (issue 10): `infra`, `image` and `all` under faults the
//! emulator injects (`POST /_casey/faults`) or that the test causes (the
//! emulator restarted mid-apply, a registry connection dropped). Each run
//! converges, or fails with a clear message and nothing half-done, and the
//! next run converges.
//!
//! 5xx and throttling during the rollout poll are covered by
//! tests/fidelity.rs (`the_rollout_follower_survives_lagging_reads_and_transient_errors_and_names_a_rollback`).
//!
//! The Docker tests need `.ci/docker.sh start` and `source "$(.ci/docker.sh env)"`.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::docker::{registry, stdout_value, unique, unique_context};
use common::{drain, python, repo_root, Emulator, Keys, Project, Run};
use serde_json::{json, Value};

fn faults_left(emulator: &Emulator) -> Value {
    emulator.control("GET", "/_casey/faults", &Value::Null)
}

#[test]
fn throttled_ecs_and_ecr_calls_are_absorbed_by_all() {
    let registry = registry();
    let emulator = Emulator::start();
    emulator.control("POST", "/_casey/ecr/registry", &json!({ "registry": registry }));
    let project = Project::new(&emulator);
    // Terraform's own retries (the provider's default, not the tests'
    // max_retries = 3) are part of what absorbs throttling.
    std::fs::remove_file(project.tf_dir().join("test_override.tf")).unwrap();
    let repo = format!("ecr_repository_name={}", unique("faults-throttle"));
    let (_dir, context) = unique_context();
    let context = context.display().to_string();
    for service in ["ecs", "ecr"] {
        emulator.control("POST", "/_casey/faults", &json!({"service": service, "kind": "throttle", "count": 4}));
    }
    let run =
        project.casey(&["all", "--yes", "--var", &repo, "--registry", &registry, "--context", &context, "--tag", "t1"]);
    run.assert_ok();
    assert_eq!(faults_left(&emulator), json!([]), "every throttle fired:\n{}", run.stderr);
    assert!(run.stderr.contains("COMPLETED"), "{}", run.stderr);
    stdout_value(&run, "NEXT_PUBLIC_WS_URL");

    // Throttling on every ECS call for a while, during a plain infra run.
    emulator.control("POST", "/_casey/faults", &json!({"service": "ecs", "kind": "throttle", "seconds": 4}));
    let run = project.casey(&["infra", "--yes", "--var", &repo]);
    run.assert_ok();
    assert!(run.stderr.contains("No changes"), "{}", run.stderr);
}

// ------------------------------------------------ the emulator restarted

/// An emulator process on a given port (the harness picks its own port; a
/// restart must come back on the same one, as an endpoint does).
struct EmulatorOnPort {
    child: Child,
    admin: Keys,
    _dir: tempfile::TempDir,
}

impl EmulatorOnPort {
    fn start(port: u16) -> EmulatorOnPort {
        let dir = tempfile::tempdir().unwrap();
        let seed = dir.path().join("seed.json");
        let log = std::fs::File::create(dir.path().join("emulator.log")).unwrap();
        let child = Command::new(python())
            .arg(repo_root().join("emulator/casey_emulator.py"))
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--seed-file"])
            .arg(&seed)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(90);
        while !seed.exists() {
            assert!(Instant::now() < deadline, "the emulator did not start on port {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        let seed: Value = serde_json::from_str(&std::fs::read_to_string(&seed).unwrap()).unwrap();
        let user = &seed["users"][common::ADMIN];
        let admin = Keys {
            access_key_id: user["access_key_id"].as_str().unwrap().into(),
            secret_access_key: user["secret_access_key"].as_str().unwrap().into(),
            arn: user["arn"].as_str().unwrap().into(),
        };
        EmulatorOnPort { child, admin, _dir: dir }
    }
}

impl Drop for EmulatorOnPort {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn an_emulator_restarted_mid_apply_fails_clearly_and_the_next_run_converges() {
    let emulator = Emulator::start();
    let port = emulator.port;
    let project = Project::new(&emulator);
    let mut child = project.command(&["infra", "--yes"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let _stdout = drain(child.stdout.take().unwrap());
    let stderr = drain(child.stderr.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let text = stderr.lock().unwrap().clone();
        let main = text.find("==> terraform apply (the saved plan)").map(|i| &text[i..]);
        if main.is_some_and(|m| m.contains("Creation complete")) {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "infra ended before its apply:\n{text}");
        assert!(Instant::now() < deadline, "no apply:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The endpoint goes away with everything it held.
    drop(emulator);
    let status = child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let run = Run { code: status.code(), stdout: String::new(), stderr: stderr.lock().unwrap().clone() };
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    run.assert_fails_with(&format!("terraform lost the connection to http://127.0.0.1:{port} while it worked"));
    run.assert_fails_with("Once the endpoint answers again, run `casey-deploy infra`");
    run.assert_no_secrets(&project.secrets);
    assert!(!project.tf_dir().join(".terraform.tfstate.lock.info").exists(), "the state lock was released");

    // It comes back empty, with new keys: the next runs rebuild the stack.
    let restarted = EmulatorOnPort::start(port);
    project.write_env(&restarted.admin);
    let secrets = vec![restarted.admin.secret_access_key.clone()];
    let run = project.casey(&["infra", "--yes"]);
    run.assert_ok().assert_no_secrets(&secrets);
    let aws = |args: &[&str]| -> Value {
        let out = Command::new(python())
            .args(["-m", "awscli", "--endpoint-url", &format!("http://127.0.0.1:{port}"), "--region", "us-east-1"])
            .args(["--output", "json"])
            .args(args)
            .env("AWS_ACCESS_KEY_ID", &restarted.admin.access_key_id)
            .env("AWS_SECRET_ACCESS_KEY", &restarted.admin.secret_access_key)
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .output()
            .unwrap();
        assert!(out.status.success(), "aws {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    assert_eq!(aws(&["ecs", "list-clusters"])["clusterArns"].as_array().unwrap().len(), 1, "{}", run.stderr);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 2, "digest": format!("sha256:{:064x}", 1)},
        "layers": [],
    })
    .to_string();
    aws(&[
        "ecr",
        "put-image",
        "--repository-name",
        "casey-backend",
        "--image-tag",
        "latest",
        "--image-manifest",
        &manifest,
    ]);
    project.casey(&["infra", "--yes"]).assert_ok();
    let run = project.casey(&["infra"]);
    run.assert_ok();
    assert!(run.stderr.contains("No changes"), "{}", run.stderr);
}

// ------------------------------------------- a registry connection drops

/// A fake network fault (no real part drops a connection on demand): a TCP
/// proxy on 127.0.0.1 in front of the registry that relays everything but
/// cuts the connection (both ways, mid-request) that starts the first
/// `drops` blob uploads of a push (`POST /v2/<name>/blobs/uploads/`).
struct DroppingProxy {
    address: String,
    dropped: Arc<AtomicUsize>,
}

impl DroppingProxy {
    fn start(upstream: &str, drops: usize) -> DroppingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let dropped = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&dropped);
        let upstream = upstream.to_owned();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(&upstream) else { continue };
                relay(client, server, Arc::clone(&count), drops);
            }
        });
        DroppingProxy { address, dropped }
    }
}

fn relay(client: TcpStream, server: TcpStream, dropped: Arc<AtomicUsize>, drops: usize) {
    let back = (server.try_clone().unwrap(), client.try_clone().unwrap());
    std::thread::spawn(move || {
        let (mut from, mut to) = (client, server);
        let mut buf = [0u8; 16384];
        while let Ok(n) = from.read(&mut buf) {
            let chunk = String::from_utf8_lossy(&buf[..n]);
            let upload = chunk.starts_with("POST /v2/") && chunk.contains("/blobs/uploads/");
            if upload && dropped.fetch_add(1, Ordering::SeqCst) < drops {
                let _ = from.shutdown(std::net::Shutdown::Both);
                let _ = to.shutdown(std::net::Shutdown::Both);
                return;
            }
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
    std::thread::spawn(move || {
        let (mut from, mut to) = back;
        let mut buf = [0u8; 16384];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
}

/// The id of the service's PRIMARY deployment (a new one per rollout).
fn primary_deployment(emulator: &Emulator) -> String {
    let services = emulator.aws(&["ecs", "describe-services", "--cluster", "casey", "--services", "casey-backend"]);
    let deployments = services["services"][0]["deployments"].as_array().cloned().unwrap_or_default();
    let primary = deployments.iter().find(|d| d["status"] == "PRIMARY").expect("a PRIMARY deployment");
    primary["id"].as_str().unwrap().to_owned()
}

#[test]
fn a_push_whose_connection_drops_fails_clearly_before_any_rollout_and_the_next_converges() {
    let registry = registry();
    let emulator = Emulator::start();
    emulator.control("POST", "/_casey/ecr/registry", &json!({ "registry": registry }));
    let project = Project::new(&emulator);
    let repo = format!("ecr_repository_name={}", unique("faults-push"));
    let (_dir, context) = unique_context();
    let context = context.display().to_string();
    project
        .casey(&["all", "--yes", "--var", &repo, "--registry", &registry, "--context", &context, "--tag", "p1"])
        .assert_ok();
    let first = primary_deployment(&emulator);

    std::fs::write(Path::new(&context).join("hello.txt"), unique("second image")).unwrap();
    let image = |registry: &str, tag: &str| {
        project.casey(&["image", "--var", &repo, "--registry", registry, "--context", &context, "--tag", tag])
    };

    // One upload cut: docker retries the layer by itself and the deploy completes.
    let proxy = DroppingProxy::start(&registry, 1);
    let run = image(&proxy.address, "drop1");
    run.assert_ok();
    assert!(proxy.dropped.load(Ordering::SeqCst) >= 2, "one upload was cut, and uploads went on");
    assert!(run.stderr.contains("Retrying in"), "{}", run.stderr);
    assert!(run.stderr.contains("COMPLETED"), "{}", run.stderr);
    let second = primary_deployment(&emulator);
    assert_ne!(second, first, "the push was rolled out");

    // Every upload cut: the push fails, clearly, and no rollout starts.
    std::fs::write(Path::new(&context).join("hello.txt"), unique("third image")).unwrap();
    let proxy = DroppingProxy::start(&registry, usize::MAX);
    let run = image(&proxy.address, "drop2");
    run.assert_fails_with("docker push");
    run.assert_no_secrets(&project.secrets);
    assert_eq!(primary_deployment(&emulator), second, "no rollout after a failed push:\n{}", run.stderr);
    assert!(!run.stderr.contains("COMPLETED"), "{}", run.stderr);

    // The same command once the registry answers: it converges.
    let run = image(&registry, "drop2");
    run.assert_ok();
    assert!(run.stderr.contains("COMPLETED"), "{}", run.stderr);
}
