//! Test harness: the project's AWS emulator on a free loopback port, a
//! throwaway copy of the project's terraform/ pointed at it, and the real
//! casey-deploy binary.
//!
//! Environment: `CASEY_PYTHON` (a Python with moto[server] and awscli; .ci/run
//! sets it), `TF_CLI_CONFIG_FILE` (the provider mirror; .ci/run writes it).
#![allow(dead_code)]

pub mod docker;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const ADMIN: &str = "casey_aniruddh";
pub const SERVICE: &str = "casey_localdev_service";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn python() -> String {
    std::env::var("CASEY_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Access keys of one seeded IAM user.
#[derive(Clone, Debug)]
pub struct Keys {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub arn: String,
}

/// The emulator process; stopped on drop.
pub struct Emulator {
    child: Child,
    pub port: u16,
    pub endpoint: String,
    pub account_id: String,
    admin: Keys,
    service: Keys,
    _dir: tempfile::TempDir,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Emulator {
    pub fn start() -> Emulator {
        let dir = tempfile::tempdir().unwrap();
        let seed = dir.path().join("seed.json");
        let port = free_port();
        let script = repo_root().join("emulator/casey_emulator.py");
        let log = std::fs::File::create(dir.path().join("emulator.log")).unwrap();
        let child = Command::new(python())
            .arg(&script)
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--seed-file"])
            .arg(&seed)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start the emulator with `{}` ({e}); run .ci/setup.sh or set CASEY_PYTHON", python())
            });
        let mut emulator = Emulator {
            child,
            port,
            endpoint: format!("http://127.0.0.1:{port}"),
            account_id: String::new(),
            admin: Keys { access_key_id: String::new(), secret_access_key: String::new(), arn: String::new() },
            service: Keys { access_key_id: String::new(), secret_access_key: String::new(), arn: String::new() },
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(90);
        while !seed.exists() {
            if let Ok(Some(status)) = emulator.child.try_wait() {
                let log = std::fs::read_to_string(emulator._dir.path().join("emulator.log")).unwrap_or_default();
                panic!("the emulator exited ({status}) before it was ready; is moto[server] installed for `{}`? (.ci/setup.sh installs it)\n{log}", python());
            }
            assert!(Instant::now() < deadline, "the emulator did not become ready in 90 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        let seed: Value = serde_json::from_str(&std::fs::read_to_string(&seed).unwrap()).unwrap();
        let keys = |name: &str| {
            let u = &seed["users"][name];
            Keys {
                access_key_id: u["access_key_id"].as_str().unwrap().to_owned(),
                secret_access_key: u["secret_access_key"].as_str().unwrap().to_owned(),
                arn: u["arn"].as_str().unwrap().to_owned(),
            }
        };
        emulator.admin = keys(ADMIN);
        emulator.service = keys(SERVICE);
        emulator.account_id = seed["account_id"].as_str().unwrap().to_owned();
        emulator
    }

    pub fn admin(&self) -> &Keys {
        &self.admin
    }

    pub fn service(&self) -> &Keys {
        &self.service
    }

    /// Every secret the tests use: none may ever appear in output.
    pub fn secrets(&self) -> Vec<String> {
        vec![
            self.admin.secret_access_key.clone(),
            self.service.secret_access_key.clone(),
            "123456789012-auth-token".to_owned(),
        ]
    }

    /// The aws CLI (an independent client) as `keys`, JSON output.
    pub fn aws_as(&self, keys: &Keys, args: &[&str]) -> Result<Value, String> {
        let out = Command::new(python())
            .args(["-m", "awscli", "--endpoint-url", &self.endpoint, "--region", "us-east-1", "--output", "json"])
            .args(args)
            .env("AWS_ACCESS_KEY_ID", &keys.access_key_id)
            .env("AWS_SECRET_ACCESS_KEY", &keys.secret_access_key)
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .output()
            .expect("cannot run the aws CLI");
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(if text.trim().is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap() })
    }

    /// The aws CLI as the admin; panics on failure.
    pub fn aws(&self, args: &[&str]) -> Value {
        self.aws_as(&self.admin, args).unwrap_or_else(|e| panic!("aws {}: {e}", args.join(" ")))
    }

    /// Record an image `repository:tag` in the emulated ECR with PutImage (a
    /// manifest only: moto's ECR keeps no layers), as a push would. ECS (and
    /// the emulator) only start tasks of an image that is there.
    /// The managed policies attached to IAM user `user`, by name, sorted.
    pub fn attached_policy_names(&self, user: &str) -> Vec<String> {
        let attached = self.aws(&["iam", "list-attached-user-policies", "--user-name", user]);
        let mut names: Vec<String> = attached["AttachedPolicies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["PolicyName"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    }

    pub fn put_image(&self, repository: &str, tag: &str) -> Value {
        let layer = format!("sha256:{:064x}", tag.len() as u64 * 7919 + repository.len() as u64);
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 2, "digest": layer},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 2, "digest": layer}],
        })
        .to_string();
        self.aws(&[
            "ecr",
            "put-image",
            "--repository-name",
            repository,
            "--image-tag",
            tag,
            "--image-manifest",
            &manifest,
        ])
    }

    /// The cluster `casey`'s tasks that ListTasks gives for `filters` (e.g.
    /// `--desired-status STOPPED`), described, read with the aws CLI.
    pub fn described_tasks(&self, filters: &[&str]) -> Vec<Value> {
        let mut list = vec!["ecs", "list-tasks", "--cluster", "casey"];
        list.extend(filters);
        let listed = self.aws(&list);
        let arns: Vec<&str> = listed["taskArns"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        if arns.is_empty() {
            return Vec::new();
        }
        let mut args = vec!["ecs", "describe-tasks", "--cluster", "casey", "--tasks"];
        args.extend(arns);
        self.aws(&args)["tasks"].as_array().cloned().unwrap_or_default()
    }

    /// A call to the emulator's control API.
    pub fn control(&self, method: &str, path: &str, body: &Value) -> Value {
        let headers = [("Content-Type", "application/json")];
        let (status, _, text) = http("127.0.0.1", self.port, method, path, &headers, &body.to_string())
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        assert_eq!(status, 200, "{method} {path}: {text}");
        serde_json::from_str(text.trim()).unwrap_or(Value::Null)
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a run of the binary printed.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    #[track_caller]
    pub fn assert_ok(&self) -> &Self {
        assert!(self.ok(), "expected success, got {:?}\nstdout:\n{}\nstderr:\n{}", self.code, self.stdout, self.stderr);
        self
    }

    #[track_caller]
    pub fn assert_fails_with(&self, needle: &str) -> &Self {
        assert!(!self.ok(), "expected failure, got success\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        assert!(
            self.all().contains(needle),
            "expected output to contain `{needle}`\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// No secret the tests know of appears in anything printed.
    #[track_caller]
    pub fn assert_no_secrets(&self, secrets: &[String]) -> &Self {
        for secret in secrets {
            assert!(!self.all().contains(secret.as_str()), "a secret value leaked into the output:\n{}", self.all());
        }
        self
    }
}

/// Copy the repo's `terraform/*.tf` and lock file into `project/terraform`.
pub fn copy_terraform(project: &Path) -> PathBuf {
    let tf = project.join("terraform");
    std::fs::create_dir_all(&tf).unwrap();
    for entry in std::fs::read_dir(repo_root().join("terraform")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".tf") || name == ".terraform.lock.hcl" {
            std::fs::copy(&path, tf.join(&name)).unwrap();
        }
    }
    tf
}

/// A throwaway project: terraform/ copied from the repo (plus a test-only
/// provider override that makes emulator gaps fail fast), and a
/// terraform/.env with the given keys.
pub struct Project {
    pub dir: tempfile::TempDir,
    pub endpoint: String,
    pub secrets: Vec<String>,
}

impl Project {
    pub fn new(emulator: &Emulator) -> Project {
        Project::with_keys(emulator, Some(emulator.admin()))
    }

    pub fn with_keys(emulator: &Emulator, keys: Option<&Keys>) -> Project {
        let dir = tempfile::tempdir().unwrap();
        let tf = copy_terraform(dir.path());
        // Test-only: moto answers some unimplemented calls with 500, which the
        // provider would retry for 11+ minutes (its default is 25 attempts).
        // Three still absorb a connection the loaded emulator dropped (seen
        // on CI: "use of closed network connection" from STS).
        std::fs::write(tf.join("test_override.tf"), "provider \"aws\" {\n  max_retries = 3\n}\n").unwrap();
        let project = Project { dir, endpoint: emulator.endpoint.clone(), secrets: emulator.secrets() };
        if let Some(keys) = keys {
            project.write_env(keys);
        }
        project
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn tf_dir(&self) -> PathBuf {
        self.dir.path().join("terraform")
    }

    pub fn write_env(&self, keys: &Keys) {
        let path = self.tf_dir().join(".env");
        std::fs::write(
            &path,
            format!(
                "AWS_REGION=us-east-1\nAWS_ACCESS_KEY_ID={}\nAWS_SECRET_ACCESS_KEY={}\n",
                keys.access_key_id, keys.secret_access_key
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    /// The casey-deploy command for this project, with a clean AWS
    /// environment (no keys, profiles or config from the developer's machine).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_casey-deploy"));
        for (key, _) in std::env::vars() {
            if key.starts_with("AWS_") || (key.starts_with("CASEY_") && key != "CASEY_PYTHON") {
                cmd.env_remove(key);
            }
        }
        cmd.arg("--project-dir")
            .arg(self.path())
            .args(args)
            .env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_CONFIG_FILE", self.path().join("no-aws-config"))
            .env("AWS_SHARED_CREDENTIALS_FILE", self.path().join("no-aws-credentials"))
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdin(Stdio::null());
        cmd
    }

    pub fn casey(&self, args: &[&str]) -> Run {
        self.casey_with(args, &[])
    }

    pub fn casey_with(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = self.command(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("cannot run casey-deploy");
        let run = Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        run.assert_no_secrets(&self.secrets);
        run
    }

    /// The whole stack, as on a first deploy: `casey-deploy infra --yes`
    /// creates all but the ECS service while its image is missing; then an
    /// image is recorded in ECR (what `image` pushes) and a second run creates
    /// the service. Panics on failure.
    pub fn apply_stack(&self, emulator: &Emulator) -> Run {
        self.apply_environment(emulator, "production")
    }

    /// [`Project::apply_stack`] for environment `env` (`--env`), whose
    /// repository outside production is `casey-backend-<env>`.
    pub fn apply_environment(&self, emulator: &Emulator, env: &str) -> Run {
        let run = self.casey(&["--env", env, "infra", "--yes"]);
        run.assert_ok();
        if !run.stderr.contains("is not in ECR yet") {
            return run;
        }
        let repository = if env == "production" { "casey-backend".to_owned() } else { format!("casey-backend-{env}") };
        emulator.put_image(&repository, "latest");
        let run = self.casey(&["--env", env, "infra", "--yes"]);
        run.assert_ok();
        run
    }

    /// Raw terraform in this project (for what the tool does not do, such as
    /// a targeted bootstrap apply), with the given keys.
    pub fn terraform(&self, keys: &Keys, args: &[&str]) -> Run {
        let out = Command::new("terraform")
            .arg(format!("-chdir={}", self.tf_dir().display()))
            .args(args)
            .env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_ACCESS_KEY_ID", &keys.access_key_id)
            .env("AWS_SECRET_ACCESS_KEY", &keys.secret_access_key)
            .env("AWS_REGION", "us-east-1")
            .env_remove("AWS_PROFILE")
            .env("TF_IN_AUTOMATION", "1")
            .env("CHECKPOINT_DISABLE", "1")
            .stdin(Stdio::null())
            .output()
            .expect("cannot run terraform");
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// An HTTP answer: (status, headers lower-cased, body).
pub type Answer = (u16, Vec<(String, String)>, String);

/// One HTTP/1.1 request through hyper.
pub fn http(
    host: &str,
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Answer, String> {
    use http_body_util::BodyExt as _;
    let mut request = hyper::Request::builder().method(method).uri(path).header("Host", format!("{host}:{port}"));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let request = request
        .body(http_body_util::Full::new(hyper::body::Bytes::from(body.to_owned())))
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let tcp =
            tokio::net::TcpStream::connect((host, port)).await.map_err(|e| format!("connect {host}:{port}: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        let driver = tokio::spawn(connection);
        let response = sender.send_request(request).await.map_err(|e| format!("{method} {path}: {e}"))?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let body = response.into_body().collect().await.map_err(|e| format!("reading the body: {e}"))?.to_bytes();
        driver.abort();
        Ok((status, headers, String::from_utf8_lossy(&body).into_owned()))
    };
    runtime().block_on(async {
        tokio::time::timeout(Duration::from_secs(30), exchange)
            .await
            .map_err(|_| format!("{method} {path} on {host}:{port}: no answer within 30 s"))?
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// GET `path` from `host:port`; returns the status code and body.
pub fn http_get(host: &str, port: u16, path: &str) -> Result<(u16, String), String> {
    http(host, port, "GET", path, &[], "").map(|(status, _, body)| (status, body))
}

/// A WebSocket round trip on `ws://host:port/ws` through tokio-tungstenite:
/// the server's first text message (the hello), then the echo of `text`.
pub fn ws_round_trip(host: &str, port: u16, text: &str) -> Result<(String, String), String> {
    use futures_util::SinkExt as _;
    let exchange = async {
        let tcp =
            tokio::net::TcpStream::connect((host, port)).await.map_err(|e| format!("connect {host}:{port}: {e}"))?;
        let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{host}:{port}/ws"), tcp)
            .await
            .map_err(|e| format!("no upgrade: {e}"))?;
        let hello = next_text(&mut ws).await?;
        ws.send(tokio_tungstenite::tungstenite::Message::text(text)).await.map_err(|e| format!("sending: {e}"))?;
        let echo = next_text(&mut ws).await?;
        let _ = ws.close(None).await;
        Ok((hello, echo))
    };
    runtime().block_on(async {
        tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .map_err(|_| format!("ws://{host}:{port}/ws: no answer within 10 s"))?
    })
}

/// The next text message (pings, pongs and binary messages are skipped).
async fn next_text<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Result<String, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::StreamExt as _;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.to_string()),
            Some(Ok(Message::Close(_))) | None => return Err("the server closed the connection".to_owned()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(format!("reading a message: {e}")),
        }
    }
}

/// Read a pipe into a shared string on a thread (a child's output while it runs).
pub fn drain(mut pipe: impl std::io::Read + Send + 'static) -> std::sync::Arc<std::sync::Mutex<String>> {
    let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = std::sync::Arc::clone(&text);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    text
}

/// A pseudo-terminal: the master end (kept open by the test) and a file for
/// the child's stdin on the other end, so the tool asks its question.
pub fn pty() -> (std::fs::File, std::fs::File) {
    use std::os::fd::FromRawFd;
    unsafe {
        let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        assert!(master >= 0, "posix_openpt failed");
        assert_eq!(libc::grantpt(master), 0);
        assert_eq!(libc::unlockpt(master), 0);
        let mut name = [0 as libc::c_char; 128];
        assert_eq!(libc::ptsname_r(master, name.as_mut_ptr(), name.len()), 0);
        let slave = libc::open(name.as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
        assert!(slave >= 0, "cannot open the pty's slave end");
        (std::fs::File::from_raw_fd(master), std::fs::File::from_raw_fd(slave))
    }
}

/// Wait until `text` holds `needle` (or the child ended, or `limit` passed).
#[track_caller]
pub fn wait_for(
    child: &mut std::process::Child,
    text: &std::sync::Arc<std::sync::Mutex<String>>,
    needle: &str,
    limit: Duration,
) {
    let deadline = Instant::now() + limit;
    while !text.lock().unwrap().contains(needle) {
        if let Ok(Some(status)) = child.try_wait() {
            std::thread::sleep(Duration::from_millis(200));
            panic!("casey-deploy ended ({status}) before printing `{needle}`:\n{}", text.lock().unwrap());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("no `{needle}` in {limit:?}:\n{}", text.lock().unwrap());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Run `cmd` with a terminal on stdin, wait for its question `prompt`,
/// type `answer`: whether it then succeeded, and its stderr.
#[track_caller]
pub fn answer_on_terminal(mut cmd: Command, prompt: &str, answer: &str, limit: Duration) -> (bool, String) {
    use std::io::Write as _;
    let (mut master, slave) = pty();
    let mut child = cmd.stdin(slave).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let err = drain(child.stderr.take().unwrap());
    wait_for(&mut child, &err, prompt, limit);
    master.write_all(format!("{answer}\n").as_bytes()).unwrap();
    let ok = child.wait().unwrap().success();
    // The drain thread ends with the child's stderr.
    std::thread::sleep(Duration::from_millis(100));
    let text = err.lock().unwrap().clone();
    (ok, text)
}
