//! Docker, the one client the deploy runs for images: is the engine
//! there, build, tag, and push with a login that leaves nothing behind.
//!
//! - `docker login` writes into a private Docker config folder (0700) made for
//!   this run and removed at its end: the user's `~/.docker` is not touched
//!   and no 12-hour ECR token is left on disk. The folder keeps the user's
//!   settings (`config.json` without credentials, and the contexts), so
//!   docker still talks to the same engine. A later manual `docker pull` of
//!   the image needs its own login. The password only ever reaches docker
//!   through stdin.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _, Result};

use crate::check::Problem;
use crate::process::{Command, Output};
use crate::say;

/// What to build and where to push it.
#[derive(Debug, Clone)]
pub struct Image {
    pub context: PathBuf,
    pub dockerfile: PathBuf,
    /// `docker build --build-arg` pairs.
    pub build_args: Vec<(String, String)>,
    /// The immutable tag.
    pub tag: String,
    /// Registry host[:port] pushed to (the ECR host unless `--registry`).
    pub registry: String,
    /// `<registry>/<repository name>`.
    pub repository: String,
    /// The tag is a clean commit's sha (the same tag is the same source).
    pub from_git: bool,
}

impl Image {
    /// `<repository>:<tag>`, the immutable reference.
    pub fn immutable_ref(&self) -> String {
        format!("{}:{}", self.repository, self.tag)
    }
}

/// Fail early, with what to do, when docker or its engine is missing.
pub fn check() -> Result<String, Problem> {
    let Some(path) = crate::process::on_path("docker") else {
        return Err(Problem::fail(
            "docker",
            "could not find `docker` on PATH: `casey-deploy image` and `all` cannot build the image",
            "install Docker (client and engine, https://docs.docker.com/engine/install/) and put `docker` on PATH",
        ));
    };
    let out = Command::new("docker")
        .args(["version", "--format", "{{.Client.Version}}|{{.Server.Version}}"])
        .quiet()
        .run()
        .map_err(|err| Problem::fail("docker", format!("{} cannot be run: {err:#}", path.display()), ""))?;
    let stdout = out.stdout.trim();
    let (client, server) = stdout.split_once('|').unwrap_or((stdout, ""));
    let known = |v: &str| !v.is_empty() && !v.contains("<no value>");
    let client = if known(client) { client } else { "?" };
    if out.success() && known(server) {
        return Ok(format!("client {client}, engine {server}"));
    }
    let engine = match std::env::var("DOCKER_HOST") {
        Ok(host) if !host.is_empty() => format!("DOCKER_HOST={host}"),
        _ => "the current docker context".to_owned(),
    };
    let why = out.stderr.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("no answer");
    Err(Problem::fail(
        "docker",
        format!(
            "step `docker`: the Docker engine is not reachable ({engine}): {why}; `casey-deploy image` and `all` need it (client {client})"
        ),
        "start it (Docker Desktop, or `sudo systemctl start docker`) and check DOCKER_HOST and `docker context ls`; then run the same casey-deploy command again",
    ))
}

/// `docker build --platform linux/amd64`, tagged with the immutable tag. `quiet`
/// captures the output instead of streaming it (for a build that runs
/// alongside terraform); it is shown when the build fails.
pub fn build(image: &Image, quiet: bool) -> Result<()> {
    let immutable = image.immutable_ref();
    say!("==> docker build {} (tag {})", image.context.display(), image.tag);
    let mut cmd = Command::new("docker")
        .args(["build", "--platform", "linux/amd64", "-f"])
        .arg(image.dockerfile.display().to_string())
        .args(["-t", &immutable])
        .args(image.build_args.iter().flat_map(|(k, v)| ["--build-arg".to_owned(), format!("{k}={v}")]))
        .arg(image.context.display().to_string());
    if quiet {
        cmd = cmd.quiet();
    }
    let out = cmd.run()?;
    if out.success() {
        return Ok(());
    }
    if quiet {
        say!("{}", out.tail(40));
    }
    let all = format!("{}{}", out.stdout, out.stderr);
    let hint = if all.contains("buildx") || all.contains("--mount") {
        "this Dockerfile needs BuildKit (`RUN --mount`): install Docker's buildx plugin, or build it without BuildKit features".to_owned()
    } else if all.contains("Cannot connect to the Docker daemon") {
        "the Docker engine stopped answering; start it and run again".to_owned()
    } else {
        format!(
            "fix the build (Dockerfile {}, context {}) and run again",
            image.dockerfile.display(),
            image.context.display()
        )
    };
    bail!("step `docker build` failed ({}):\n{}\n{hint}", crate::process::describe_exit(out.code), out.tail(8))
}

/// Give `to` the tag of the already built `from` (same source, another
/// repository: the stack's repository URL changed under a parallel build).
pub fn retag(from: &Image, to: &Image) -> Result<()> {
    Command::new("docker")
        .args(["tag", &from.immutable_ref(), &to.immutable_ref()])
        .quiet()
        .run_ok()
        .context("step `docker tag`")?;
    Ok(())
}

/// `docker login` with `user`/`password`, push of the tag; the pushed digest.
/// No `latest`: the repository's tags are immutable, and the release is
/// deployed by digest.
pub fn push(image: &Image, user: &str, password: &str) -> Result<String> {
    let config = DockerConfig::create()?;
    login(&config, image, user, password)?;
    let reference = image.immutable_ref();
    say!("==> docker push {reference}");
    let out = Command::new("docker").arg("--config").arg(config.arg()).args(["push", &reference]).run()?;
    if !out.success() {
        return Err(push_error(image, &reference, &out));
    }
    let digest = match parse_push_digest(&out.stdout) {
        Some(d) => d,
        None => inspect_digest(image)?,
    };
    say!("pushed {reference}: {digest}");
    Ok(digest)
}

/// `docker login --password-stdin`: the password never is an argument.
fn login(config: &DockerConfig, image: &Image, user: &str, password: &str) -> Result<()> {
    say!("==> docker login {} (user {user}, password from ECR on stdin)", image.registry);
    let out = Command::new("docker")
        .arg("--config")
        .arg(config.arg())
        .args(["login", "--username", user, "--password-stdin", &image.registry])
        .stdin(password.as_bytes().to_vec())
        .quiet()
        .run()?;
    if out.success() {
        return Ok(());
    }
    let text = format!("{}{}", out.stdout, out.stderr).to_lowercase();
    let refused = ["unauthorized", "401", "incorrect username or password", "denied", "authentication required"]
        .iter()
        .any(|s| text.contains(s));
    if refused {
        bail!(
            "step `docker login`: {} refused the ECR credentials (user {user}):\n{}\nThe registry must accept the token ECR GetAuthorizationToken returns for this account and region; with --registry, that registry must be set up with the same credentials",
            image.registry,
            out.tail(3)
        );
    }
    if text.contains("cannot connect to the docker daemon") {
        bail!("step `docker login`: the Docker engine is not reachable:\n{}", out.tail(3));
    }
    bail!(
        "step `docker login` to {} failed:\n{}\nCheck that the registry is reachable from the Docker engine (a plain-http registry must be listed in the engine's insecure-registries)",
        image.registry,
        out.tail(3)
    )
}

fn push_error(image: &Image, reference: &str, out: &Output) -> anyhow::Error {
    let text = format!("{}{}", out.stdout, out.stderr).to_lowercase();
    let hint = if text.contains("name unknown") || text.contains("does not exist") {
        format!(
            "the repository {} does not exist in the registry: run `casey-deploy infra` to create it",
            image.repository
        )
    } else if text.contains("denied") || text.contains("unauthorized") {
        "the registry refused the upload: the admin needs ecr:InitiateLayerUpload, ecr:UploadLayerPart, ecr:CompleteLayerUpload, ecr:PutImage and ecr:BatchCheckLayerAvailability on the repository".to_owned()
    } else if text.contains("tag invalid") || text.contains("immutable") {
        format!("the tag {} already exists and the repository's tags are immutable (ECR ImageTagAlreadyExistsException): deploy it with `casey-deploy rollback --to {}`, or build another commit", image.tag, image.tag)
    } else {
        "check that the registry is reachable and retry".to_owned()
    };
    anyhow!(
        "step `docker push` of {reference} failed ({}):\n{}\n{hint}",
        crate::process::describe_exit(out.code),
        out.tail(5)
    )
}

/// `latest: digest: sha256:… size: 524` → `sha256:…`.
pub fn parse_push_digest(output: &str) -> Option<String> {
    output.lines().rev().find_map(|line| {
        let (_, rest) = line.split_once("digest: ")?;
        let digest = rest.split_whitespace().next()?;
        (digest.starts_with("sha256:") && digest.len() == 71).then(|| digest.to_owned())
    })
}

fn inspect_digest(image: &Image) -> Result<String> {
    let out = Command::new("docker")
        .args(["inspect", "--format", "{{json .RepoDigests}}", &image.immutable_ref()])
        .quiet()
        .run_ok()?;
    let digests: Vec<String> = serde_json::from_str(out.stdout.trim()).unwrap_or_default();
    let prefix = format!("{}@", image.repository);
    digests
        .iter()
        .find_map(|d| d.strip_prefix(&prefix).map(str::to_owned))
        .with_context(|| format!("the push succeeded but docker reports no digest for {}", image.repository))
}

/// A private Docker config folder for one run's `docker login`, removed on drop.
struct DockerConfig {
    dir: PathBuf,
}

impl DockerConfig {
    fn create() -> Result<DockerConfig> {
        // tempfile makes it 0700, under a name nobody else can take.
        let dir = tempfile::Builder::new()
            .prefix("casey-deploy-docker-")
            .tempdir()
            .context("could not create a private Docker config folder")?
            .keep();
        // It will hold the ECR password: removed even when a signal ends the run.
        crate::process::remove_on_exit(&dir);
        let config = DockerConfig { dir };
        config.inherit_user_settings();
        Ok(config)
    }

    /// Keep the user's docker settings (engine context, proxies, ...) but none
    /// of their credentials or credential helpers.
    fn inherit_user_settings(&self) {
        let user_dir = match std::env::var_os("DOCKER_CONFIG").filter(|v| !v.is_empty()) {
            Some(dir) => PathBuf::from(dir),
            None => match std::env::var_os("HOME") {
                Some(home) => Path::new(&home).join(".docker"),
                None => return,
            },
        };
        let mut settings = std::fs::read_to_string(user_dir.join("config.json"))
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&text).ok())
            .unwrap_or_default();
        for key in ["auths", "credsStore", "credHelpers"] {
            settings.remove(key);
        }
        // An empty credsStore keeps docker from picking a platform default
        // (e.g. the macOS keychain) for the login.
        settings.insert("credsStore".into(), serde_json::Value::String(String::new()));
        let _ = std::fs::write(self.dir.join("config.json"), serde_json::Value::Object(settings).to_string());
        let contexts = user_dir.join("contexts");
        if contexts.is_dir() {
            let _ = std::os::unix::fs::symlink(&contexts, self.dir.join("contexts"));
        }
    }

    fn arg(&self) -> String {
        self.dir.display().to_string()
    }
}

impl Drop for DockerConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        crate::process::forget_on_exit(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_digest_docker_push_prints() {
        let out = "The push refers to repository [127.0.0.1:5000/casey-backend]\n7ae22b90d98a: Pushed\nt1: digest: sha256:39f4d62003e5e30c01aaac052ec3b481b9b7e2937994b1553c917e92ce7cb168 size: 524\n";
        assert_eq!(
            parse_push_digest(out).as_deref(),
            Some("sha256:39f4d62003e5e30c01aaac052ec3b481b9b7e2937994b1553c917e92ce7cb168")
        );
        assert_eq!(parse_push_digest("nothing here"), None);
    }
}
