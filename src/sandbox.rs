//! The local sandbox: the whole deploy, offline, against the project's AWS
//! emulator (carried inside this binary) on a loopback port.
//!
//! `--local` on any verb starts the sandbox when it is not up (and leaves it
//! up, so the printed URL keeps answering), points this process's
//! environment at it with the seeded admin's keys, and then runs the SAME
//! code path as against AWS. Its Terraform state lives in
//! `.casey/sandbox/terraform/`, a copy of `terraform/*.tf`: a real
//! deployment's state is never read or written.
//!
//! Tasks run the real backend, bound to their 127.x "public" IP: as
//! containers of the pushed image when a Docker engine is reachable and the
//! image builds, otherwise as local processes of a cargo-built binary.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::process::{self, Command};
use crate::redact;

/// The emulator, embedded so an installed binary needs nothing else.
const EMULATOR: &str = include_str!("../emulator/casey_emulator.py");
/// moto version the emulator is written against.
const MOTO: &str = "moto[server]==5.2.1";

/// A running sandbox.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub dir: PathBuf,
    pub endpoint: String,
    pub admin_key: String,
    pub admin_secret: String,
    /// A local registry for the Docker path, when one could be started.
    pub registry: Option<String>,
}

/// `.casey/sandbox` of the project (git ignores `.casey/`).
pub fn dir(project: &Path) -> PathBuf {
    project.join(".casey").join("sandbox")
}

/// `casey-deploy sandbox up|down|status`.
/// `casey-deploy sandbox …`.
#[derive(Debug, Clone, Copy)]
pub enum Action {
    Up,
    Down,
    Status,
}

pub fn run(project: &Path, action: Action, admin_user: &str) -> Result<()> {
    match action {
        Action::Up => {
            let sandbox = up(project, admin_user)?;
            print_status(&sandbox);
            Ok(())
        }
        Action::Down => down(project),
        Action::Status => match running(project, admin_user)? {
            Some(sandbox) => {
                print_status(&sandbox);
                Ok(())
            }
            None => {
                bail!("the sandbox is not running; start it with `casey-deploy sandbox up` (or any verb with --local)")
            }
        },
    }
}

fn print_status(sandbox: &Sandbox) {
    crate::out!("SANDBOX_ENDPOINT={}", sandbox.endpoint);
    if let Some(registry) = &sandbox.registry {
        crate::out!("SANDBOX_REGISTRY={registry}");
    }
    crate::say!(
        "sandbox: emulator at {}, state in {}; stop it with `casey-deploy sandbox down`",
        sandbox.endpoint,
        sandbox.dir.display()
    );
    crate::output::document(&json!({
        "running": true,
        "endpoint": sandbox.endpoint,
        "registry": sandbox.registry,
        "dir": sandbox.dir,
    }));
}

/// An exclusive lock on `.casey/sandbox.lock`, held while the sandbox is
/// started or stopped, so two runs in one project share one sandbox instead
/// of each starting (and clearing) their own. Released when dropped (the
/// file is closed; children do not inherit it: Rust opens files CLOEXEC).
struct SandboxLock {
    _file: std::fs::File,
}

fn lock(project: &Path) -> Result<SandboxLock> {
    use std::os::fd::AsRawFd;
    let casey = project.join(".casey");
    create_private_dir(&casey)?;
    let path = casey.join("sandbox.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("could not open {}", path.display()))?;
    let fd = file.as_raw_fd();
    // SAFETY: flock(2) on a descriptor we own.
    if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(SandboxLock { _file: file });
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
        bail!("could not lock {}: {err}", path.display());
    }
    crate::say!("==> sandbox: another casey-deploy is starting or stopping this project's sandbox; waiting for it");
    loop {
        // SAFETY: as above; blocks until the other run releases the lock.
        if unsafe { libc::flock(fd, libc::LOCK_EX) } == 0 {
            return Ok(SandboxLock { _file: file });
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            bail!("could not lock {}: {err}", path.display());
        }
        process::check_interrupted()?;
    }
}

/// The sandbox, started if it is not running. Under the project's sandbox
/// lock: a second run waits for the first to finish starting it, then uses it.
pub fn up(project: &Path, admin_user: &str) -> Result<Sandbox> {
    let _lock = lock(project)?;
    if let Some(sandbox) = running(project, admin_user)? {
        return Ok(sandbox);
    }
    let python = python_with_moto(project)?;
    let dir = dir(project);
    // A stopped emulator keeps nothing: its old Terraform state is void.
    if dir.exists() {
        stop_services(&dir);
        std::fs::remove_dir_all(&dir).with_context(|| format!("could not clear {}", dir.display()))?;
    }
    create_private_dir(&dir)?;
    let script = dir.join("casey_emulator.py");
    std::fs::write(&script, EMULATOR).with_context(|| format!("could not write {}", script.display()))?;
    let seed = dir.join("seed.json");
    let port = free_port()?;
    crate::say!("==> sandbox: starting the AWS emulator on 127.0.0.1:{port}");
    let args: Vec<String> = vec![
        script.display().to_string(),
        "--host".into(),
        "127.0.0.1".into(),
        "--port".into(),
        port.to_string(),
        "--seed-file".into(),
        seed.display().to_string(),
    ];
    let pid = process::spawn_service(&python, &args, &dir.join("emulator.log"))?;
    std::fs::write(dir.join("emulator.pid"), pid.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !seed.exists() {
        if !process::alive(pid) || Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.join("emulator.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            bail!(
                "the sandbox's emulator did not start; its log ({}) ends with:\n{}",
                dir.join("emulator.log").display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    start_registry(&dir);
    running(project, admin_user)?.context("the sandbox started but does not answer")
}

/// The running sandbox, if any.
pub fn running(project: &Path, admin_user: &str) -> Result<Option<Sandbox>> {
    let dir = dir(project);
    let Some(pid) = read_pid(&dir.join("emulator.pid")) else { return Ok(None) };
    let Ok(seed) = std::fs::read_to_string(dir.join("seed.json")) else { return Ok(None) };
    if !process::alive(pid) {
        return Ok(None);
    }
    let seed: Value = serde_json::from_str(&seed).context("the sandbox's seed.json is not JSON")?;
    let endpoint = seed["endpoint_url"].as_str().context("seed.json has no endpoint_url")?.to_owned();
    if control(&endpoint, "GET", "/_casey/health", None).is_err() {
        return Ok(None);
    }
    let admin = &seed["users"][admin_user];
    let (Some(key), Some(secret)) = (admin["access_key_id"].as_str(), admin["secret_access_key"].as_str()) else {
        bail!("the sandbox has no user `{admin_user}`; run `casey-deploy sandbox down` and try again");
    };
    let registry = read_pid(&dir.join("registry.pid"))
        .filter(|pid| process::alive(*pid))
        .and_then(|_| std::fs::read_to_string(dir.join("registry.addr")).ok())
        .map(|s| s.trim().to_owned());
    Ok(Some(Sandbox { dir, endpoint, admin_key: key.to_owned(), admin_secret: secret.to_owned(), registry }))
}

/// Stop the emulator (which stops the tasks it runs) and the registry, and
/// forget the sandbox's state.
pub fn down(project: &Path) -> Result<()> {
    let dir = dir(project);
    let not_running = || {
        crate::say!("the sandbox is not running");
        crate::output::document(&json!({"running": false, "stopped": false}));
        Ok(())
    };
    if !dir.exists() {
        return not_running();
    }
    let _lock = lock(project)?;
    if !dir.exists() {
        return not_running();
    }
    stop_services(&dir);
    std::fs::remove_dir_all(&dir).with_context(|| format!("could not remove {}", dir.display()))?;
    crate::say!("sandbox stopped; {} removed", dir.display());
    crate::output::document(&json!({"running": false, "stopped": true}));
    Ok(())
}

fn stop_services(dir: &Path) {
    for name in ["registry.pid", "emulator.pid"] {
        if let Some(pid) = read_pid(&dir.join(name)).filter(|p| process::alive(*p)) {
            process::stop(pid, Duration::from_secs(15));
        }
    }
}

/// Point this process (and so terraform, docker and the SDK) at the sandbox
/// as its admin. Nothing of the user's AWS setup is used.
pub fn activate(sandbox: &Sandbox) {
    for key in ["AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ROLE_ARN"] {
        std::env::remove_var(key);
    }
    let none = sandbox.dir.join("no-aws-config");
    let vars = [
        ("AWS_ENDPOINT_URL", sandbox.endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", sandbox.admin_key.as_str()),
        ("AWS_SECRET_ACCESS_KEY", sandbox.admin_secret.as_str()),
        ("AWS_REGION", "us-east-1"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    for (key, value) in vars {
        std::env::set_var(key, value);
    }
    std::env::set_var("AWS_CONFIG_FILE", &none);
    std::env::set_var("AWS_SHARED_CREDENTIALS_FILE", &none);
    redact::register(&sandbox.admin_secret);
    provider_mirror(&sandbox.dir);
}

/// Offline machines keep the AWS provider in a filesystem mirror that
/// terraform does not search by itself. When no usable CLI config is set,
/// the sandbox writes one that uses the mirror (`CASEY_TF_PROVIDER_MIRROR`,
/// else `/opt/tf-plugins` where it exists) and the registry for the rest.
fn provider_mirror(dir: &Path) {
    let configured = std::env::var_os("TF_CLI_CONFIG_FILE").is_some_and(|f| Path::new(&f).exists());
    if configured {
        return;
    }
    let mirror = std::env::var("CASEY_TF_PROVIDER_MIRROR")
        .ok()
        .filter(|m| Path::new(m).is_dir())
        .or_else(|| Path::new("/opt/tf-plugins").is_dir().then(|| "/opt/tf-plugins".to_owned()));
    let Some(mirror) = mirror else { return };
    let config = dir.join("terraformrc");
    let text = format!(
        "provider_installation {{\n  filesystem_mirror {{\n    path    = \"{mirror}\"\n    include = [\"registry.terraform.io/hashicorp/*\"]\n  }}\n  direct {{\n    exclude = [\"registry.terraform.io/hashicorp/*\"]\n  }}\n}}\n"
    );
    if std::fs::write(&config, text).is_ok() {
        std::env::set_var("TF_CLI_CONFIG_FILE", &config);
    }
}

/// The sandbox's Terraform folder: the project's `*.tf`, lock file and
/// environments' `<env>.tfvars`, copied fresh each time so edits to the
/// stack are picked up.
pub fn terraform_dir(project: &Path, sandbox: &Sandbox) -> Result<PathBuf> {
    let tf = sandbox.dir.join("terraform");
    std::fs::create_dir_all(&tf)?;
    // The sandbox's own backend.tf (its `state bootstrap`, into the
    // emulator's S3) stays; the project's, naming the real bucket, is never
    // copied.
    let own_backend = |path: &Path| path.file_name().is_some_and(|n| n == crate::backend::FILE);
    for entry in std::fs::read_dir(&tf)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "tf" || e == "tfvars") && !own_backend(&path) {
            std::fs::remove_file(&path)?;
        }
    }
    let source = project.join("terraform");
    for entry in std::fs::read_dir(&source).with_context(|| format!("cannot read {}", source.display()))? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        // terraform.tfvars and *.auto.tfvars are loaded by terraform itself
        // and were never the sandbox's; <env>.tfvars are the tool's.
        let env_tfvars = name.ends_with(".tfvars") && name != "terraform.tfvars" && !name.ends_with(".auto.tfvars");
        if (name.ends_with(".tf") && !own_backend(&path)) || name == ".terraform.lock.hcl" || env_tfvars {
            std::fs::copy(&path, tf.join(&name))?;
        }
    }
    // The emulator answers calls it lacks with 500, which the provider would
    // retry for minutes (25 attempts): three attempts fail fast and still
    // absorb a connection the loaded emulator dropped ("use of closed network
    // connection" from STS, seen on CI).
    std::fs::write(tf.join("sandbox_override.tf"), "provider \"aws\" {\n  max_retries = 3\n}\n")?;
    Ok(tf)
}

impl Sandbox {
    /// Images are pushed to `registry`: the emulator's ECR reads it, and its
    /// tasks run as containers of the pushed image.
    pub fn serve_images_from(&self, registry: &str) -> Result<()> {
        control(&self.endpoint, "POST", "/_casey/ecr/registry", Some(json!({"registry": registry})))?;
        control(&self.endpoint, "POST", "/_casey/runner", Some(json!({"mode": "docker", "registry": registry})))?;
        crate::say!("==> sandbox: tasks run as containers of the images in {registry}");
        Ok(())
    }

    /// Tasks run `binary` (the cargo-built backend) as local processes.
    pub fn run_binary(&self, binary: &Path, layer: &str) -> Result<()> {
        let log_dir = self.dir.join("tasks");
        std::fs::create_dir_all(&log_dir).with_context(|| format!("could not create {}", log_dir.display()))?;
        // The image's layer, where the runner finds it by the manifest:
        // layers/<sha256 hex>/casey-backend. A later cargo build overwrites
        // `binary`; this copy stays the release's.
        let layers = self.dir.join("layers");
        let folder = layers.join(layer.trim_start_matches("sha256:"));
        let name = binary.file_name().context("the backend binary has no file name")?;
        let packed = folder.join(name);
        if !packed.exists() {
            std::fs::create_dir_all(&folder).with_context(|| format!("could not create {}", folder.display()))?;
            let partial = folder.join(".partial");
            std::fs::copy(binary, &partial)
                .and_then(|_| std::fs::rename(&partial, &packed))
                .with_context(|| format!("could not copy {} to {}", binary.display(), packed.display()))?;
        }
        control(
            &self.endpoint,
            "POST",
            "/_casey/runner",
            Some(json!({"mode": "process", "backend_bin": packed, "layers_dir": layers, "log_dir": log_dir})),
        )?;
        Ok(())
    }
}

/// Start Debian's `docker-registry` (no auth, loopback only) when a Docker
/// engine is reachable. Failing that, the sandbox uses the cargo path.
fn start_registry(dir: &Path) {
    if crate::docker::check().is_err() {
        return;
    }
    let Ok(port) = free_port() else { return };
    let root = dir.join("registry");
    let config = dir.join("registry.yml");
    let yaml = format!(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
        root.display()
    );
    if std::fs::write(&config, yaml).is_err() {
        return;
    }
    let args = vec!["serve".to_owned(), config.display().to_string()];
    let Ok(pid) = process::spawn_service("docker-registry", &args, &dir.join("registry.log")) else { return };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && process::alive(pid) {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            let _ = std::fs::write(dir.join("registry.pid"), pid.to_string());
            let _ = std::fs::write(dir.join("registry.addr"), format!("127.0.0.1:{port}"));
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    process::stop(pid, Duration::from_secs(2));
}

/// A Python that has moto: `CASEY_PYTHON`, the project's `.casey/venv`, or
/// `python3`; else a `.casey/venv` is made and moto installed into it.
fn python_with_moto(project: &Path) -> Result<String> {
    let venv = project.join(".casey").join("venv");
    let venv_python = venv.join("bin").join("python").display().to_string();
    let candidates: Vec<String> =
        std::env::var("CASEY_PYTHON").ok().into_iter().chain([venv_python.clone(), "python3".to_owned()]).collect();
    for python in &candidates {
        if Command::new(python).args(["-c", "import moto.server"]).quiet().run().is_ok_and(|o| o.success()) {
            return Ok(python.clone());
        }
    }
    let have_python = Command::new("python3").arg("--version").quiet().run().is_ok_and(|o| o.success());
    if !have_python {
        bail!("the sandbox needs Python 3 for its AWS emulator: `apt-get install -y python3 python3-venv`, then run this again");
    }
    crate::say!("==> sandbox: installing {MOTO} into {} (once)", venv.display());
    let venv_arg = venv.display().to_string();
    let made = Command::new("python3").args(["-m", "venv", &venv_arg]).quiet().run()?;
    if !made.success() {
        bail!(
            "could not create {}: {}\nInstall the venv module (`apt-get install -y python3-venv`) and run this again",
            venv.display(),
            made.tail(3)
        );
    }
    Command::new(&venv_python).args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", MOTO]).run_ok().with_context(|| {
        format!("could not install moto; install it by hand with `{venv_python} -m pip install '{MOTO}'` and run this again")
    })?;
    Ok(venv_python)
}

/// One call to the emulator's control API.
pub fn control(endpoint: &str, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
    use http_body_util::BodyExt as _;
    let address = endpoint.trim_start_matches("http://").trim_end_matches('/').to_owned();
    let uri: hyper::Uri =
        format!("http://{address}{path}").parse().with_context(|| format!("bad sandbox URL {endpoint}"))?;
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, &address)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(http_body_util::Full::new(hyper::body::Bytes::from(body.map(|b| b.to_string()).unwrap_or_default())))?;
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(&address)
            .await
            .with_context(|| format!("the sandbox's emulator at {endpoint} does not answer"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
        let driver = tokio::spawn(connection);
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        driver.abort();
        anyhow::Ok((status, body))
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (status, body) = runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(30), exchange).await })
        .with_context(|| format!("the sandbox's emulator did not answer {method} {uri} within 30s"))?
        .with_context(|| format!("{method} {uri} to the sandbox's emulator failed"))?;
    let body = String::from_utf8_lossy(&body);
    if status != hyper::StatusCode::OK {
        bail!("the sandbox's emulator answered {method} {path} with {status}: {}", body.trim());
    }
    Ok(serde_json::from_str(body.trim()).unwrap_or(Value::Null))
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("could not create {}", dir.display()))
}
