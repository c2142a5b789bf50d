//! `casey-deploy image`: build the backend image, push it, roll the ECS
//! service out to it (the seed's steps 2–4).
//!
//! - ECR credentials come from `GetAuthorizationToken` (SDK, no aws CLI); the
//!   password only ever reaches docker through stdin, and it is registered
//!   for masking before anything could print it.
//! - `docker login` writes into a private Docker config folder (0700) made for
//!   this run and removed at its end: the user's `~/.docker` is not touched
//!   and no 12-hour ECR token is left on disk. The folder keeps the user's
//!   settings (`config.json` without credentials, and the contexts), so
//!   docker still talks to the same engine. A later manual `docker pull` of
//!   the image needs its own login.
//! - Tags: an immutable one (`--tag`, or the git short sha of the build
//!   context, `-dirty` when the context has uncommitted changes) and `latest`.
//!   The dirty check covers the context and the Dockerfile only, since
//!   nothing else goes into the image.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _, Result};
use base64::Engine as _;

use crate::check::Problem;
use crate::cli::{ImageArgs, ImageCmd, InfraArgs, TfArgs};
use crate::context::Ctx;
use crate::infra;
use crate::outputs::{Outputs, Repository};
use crate::process::{Command, Output};
use crate::redact;
use crate::rollout;
use crate::{out, say};

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
}

impl Image {
    /// Resolve the context, Dockerfile, tag and repository.
    pub fn new(project: &Path, args: &ImageArgs, repo: &Repository) -> Result<Image> {
        Ok(Image::from_source(Source::new(project, args)?, args, repo))
    }

    /// The image of `source` in the stack's repository (or `--registry`'s).
    pub fn from_source(source: Source, args: &ImageArgs, repo: &Repository) -> Image {
        let Source { context, dockerfile, tag } = source;
        let build_args = args.build_args.clone();
        let registry = match &args.registry {
            Some(r) => r.trim_end_matches('/').trim_start_matches("https://").trim_start_matches("http://").to_owned(),
            None => repo.registry().to_owned(),
        };
        let repository = format!("{registry}/{}", repo.name());
        Image { context, dockerfile, build_args, tag, registry, repository }
    }

    /// `<repository>:<tag>`, the immutable reference.
    pub fn immutable_ref(&self) -> String {
        format!("{}:{}", self.repository, self.tag)
    }

    pub fn latest_ref(&self) -> String {
        format!("{}:latest", self.repository)
    }

    pub fn refs(&self) -> [String; 2] {
        [self.immutable_ref(), self.latest_ref()]
    }
}

/// What is built: context, Dockerfile and immutable tag. Resolved before
/// anything slow runs, so a wrong path fails at once.
#[derive(Debug, Clone)]
pub struct Source {
    pub context: PathBuf,
    pub dockerfile: PathBuf,
    pub tag: String,
}

impl Source {
    pub fn new(project: &Path, args: &ImageArgs) -> Result<Source> {
        let context = match &args.context {
            Some(dir) => dir.clone(),
            None => project.join("backend"),
        };
        if !context.is_dir() {
            bail!(
                "the build context {} is not a folder; pass the backend's folder with --context DIR",
                context.display()
            );
        }
        let dockerfile = args.dockerfile.clone().unwrap_or_else(|| context.join("Dockerfile"));
        if !dockerfile.is_file() {
            bail!("there is no Dockerfile at {}; pass it with --dockerfile FILE", dockerfile.display());
        }
        let tag = match &args.tag {
            Some(tag) => {
                check_tag(tag)?;
                tag.clone()
            }
            None => git_tag(&context, &dockerfile)?,
        };
        if tag.ends_with("-dirty") && args.tag.is_none() {
            crate::warn!(
                "{} has uncommitted changes, so the tag {tag} is not reproducible (another build may push other content under it); commit first, or pass --tag",
                context.display()
            );
        }
        Ok(Source { context, dockerfile, tag })
    }
}

/// `casey-deploy image`.
pub fn run(ctx: &Ctx, cmd: &ImageCmd) -> Result<()> {
    let args = &cmd.image;
    if let Some(sandbox) = &ctx.sandbox {
        if args.immutable {
            bail!("--immutable is not supported with --local: the sandbox always rolls out the image it just built");
        }
        let (_, image, pushed) = crate::sandbox::deploy_image(ctx, sandbox, args, &cmd.tf)?;
        summarise(&image, &pushed);
        return Ok(());
    }
    let repo = Repository::load(ctx)?;
    let image = Image::new(&ctx.project, args, &repo)?;
    check_docker()?;
    build(&image, false)?;
    let pushed = push(ctx, &image, &repo)?;
    print_pushed(&image, &pushed);
    deploy(ctx, args, &image, &cmd.tf, cmd.yes)?;
    summarise(&image, &pushed);
    Ok(())
}

/// The `--json` summary of a deploy of `image`.
fn summarise(image: &Image, pushed: &Pushed) {
    crate::output::summary(pushed.to_json(image));
}

/// The digest both tags were pushed with.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub digest: String,
}

/// Results on stdout, one `KEY=value` per line.
pub fn print_pushed(image: &Image, pushed: &Pushed) {
    out!("IMAGE={}", image.immutable_ref());
    out!("IMAGE_DIGEST={}@{}", image.repository, pushed.digest);
    crate::output::event("pushed", pushed.to_json(image));
}

impl Pushed {
    pub fn to_json(&self, image: &Image) -> serde_json::Value {
        serde_json::json!({"image": image.immutable_ref(), "tag": image.tag, "digest": self.digest})
    }
}

/// Roll the service out to the pushed image: a forced new deployment of
/// `latest`, or with `--immutable` a Terraform apply that pins the immutable
/// tag. When the first apply left the service out (no image yet), the apply
/// that creates it, then its first deployment. `tf` and `yes` are for the
/// apply. Returns the stack's outputs, which exist completely from here on.
pub fn deploy(ctx: &Ctx, args: &ImageArgs, image: &Image, tf: &TfArgs, yes: bool) -> Result<Outputs> {
    let created = !service_exists(ctx)?;
    if !args.immutable && !created {
        let outputs = Outputs::load(ctx)?;
        rollout::force_new_deployment(ctx, &outputs, &args.rollout)?;
        return Ok(outputs);
    }
    let before = if created { None } else { rollout::primary_deployment(ctx, &Outputs::load(ctx)?)? };
    let mut tf = tf.clone();
    if args.immutable {
        tf.vars.retain(|(k, _)| k != "backend_container_image");
        tf.vars.push(("backend_container_image".to_owned(), image.immutable_ref()));
        say!("==> --immutable: applying Terraform with backend_container_image={}", image.immutable_ref());
    } else {
        say!("==> the image is in ECR now: applying Terraform to create the ECS service");
    }
    let infra_args = InfraArgs { tf, yes, ..InfraArgs::default() };
    let outcome = infra::run(ctx, &infra_args)?;
    if let infra::Outcome::WaitingForImage(missing) = outcome {
        bail!(
            "the service still waits for {missing}, but {} was pushed: push to the stack's ECR repository (without --registry), or set backend_container_image to the pushed image",
            image.immutable_ref()
        );
    }
    let outputs = Outputs::load(ctx)?;
    if outcome == infra::Outcome::NoChanges {
        say!("The service already runs {}: nothing to roll out.", image.immutable_ref());
        return Ok(outputs);
    }
    match rollout::primary_deployment(ctx, &outputs)? {
        Some(id) if Some(&id) != before.as_ref() => {
            if args.rollout.no_wait {
                say!("--no-wait: ECS deployment {id} started; not following it");
                return Ok(outputs);
            }
            rollout::follow(ctx, &outputs, &id, &args.rollout)?;
        }
        _ => say!("The apply started no new ECS deployment (the task definition did not change)."),
    }
    Ok(outputs)
}

/// Whether the stack's ECS service exists (is in the Terraform state).
fn service_exists(ctx: &Ctx) -> Result<bool> {
    let tf = ctx.terraform(&TfArgs::default());
    Ok(infra::state_resources(&tf)?.iter().any(|r| r == infra::SERVICE))
}

/// Fail early, with what to do, when docker or its engine is missing.
pub fn check_docker() -> Result<String, Problem> {
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
        "start it (Docker Desktop, `sudo systemctl start docker`, or `.ci/docker.sh start` for the tests) and check DOCKER_HOST / `docker context ls`; `docker version` repeats this check",
    ))
}

/// `docker build --platform linux/amd64`, tagged with both tags. `quiet`
/// captures the output instead of streaming it (for a build that runs
/// alongside terraform); it is shown when the build fails.
pub fn build(image: &Image, quiet: bool) -> Result<()> {
    let [immutable, latest] = image.refs();
    say!("==> docker build {} (tags {} and latest)", image.context.display(), image.tag);
    let mut cmd = Command::new("docker")
        .args(["build", "--platform", "linux/amd64", "-f"])
        .arg(image.dockerfile.display().to_string())
        .args(["-t", &immutable, "-t", &latest])
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

/// Give `to` the tags of the already built `from` (same source, another
/// repository: the stack's repository URL changed under a parallel build).
pub fn retag(from: &Image, to: &Image) -> Result<()> {
    for (old, new) in from.refs().iter().zip(to.refs()) {
        Command::new("docker").args(["tag", old, &new]).quiet().run_ok().context("step `docker tag`")?;
    }
    Ok(())
}

/// ECR credentials, `docker login`, push of both tags; the pushed digest.
pub fn push(ctx: &Ctx, image: &Image, repo: &Repository) -> Result<Pushed> {
    let (user, password) = ecr_credentials(ctx, &repo.region)?;
    let config = DockerConfig::create()?;
    login(&config, image, &user, &password)?;
    let mut digest = None;
    for reference in image.refs() {
        say!("==> docker push {reference}");
        let out = Command::new("docker").arg("--config").arg(config.arg()).args(["push", &reference]).run()?;
        if !out.success() {
            return Err(push_error(image, &reference, &out));
        }
        digest = parse_push_digest(&out.stdout).or(digest);
    }
    let digest = match digest {
        Some(d) => d,
        None => inspect_digest(image)?,
    };
    say!("pushed {} and latest: {digest}", image.immutable_ref());
    Ok(Pushed { digest })
}

fn ecr_client(ctx: &Ctx, region: &str) -> aws_sdk_ecr::Client {
    let config = aws_sdk_ecr::config::Builder::from(&ctx.sdk)
        .region(aws_sdk_ecr::config::Region::new(region.to_owned()))
        .build();
    aws_sdk_ecr::Client::from_conf(config)
}

/// Whether ECR holds `reference` (a tag, or a `sha256:` digest) in
/// repository `name`. A repository that does not exist yet holds nothing.
pub fn in_ecr(ctx: &Ctx, region: &str, name: &str, reference: &str) -> Result<bool> {
    use aws_sdk_ecr::operation::describe_images::DescribeImagesError;
    use aws_sdk_ecr::types::ImageIdentifier;
    let ecr = ecr_client(ctx, region);
    let id = if reference.starts_with("sha256:") {
        ImageIdentifier::builder().image_digest(reference).build()
    } else {
        ImageIdentifier::builder().image_tag(reference).build()
    };
    match ctx.block_on(ecr.describe_images().repository_name(name).image_ids(id).send()) {
        Ok(out) => Ok(!out.image_details().is_empty()),
        Err(err) => match err.as_service_error() {
            Some(
                DescribeImagesError::ImageNotFoundException(_) | DescribeImagesError::RepositoryNotFoundException(_),
            ) => Ok(false),
            _ => {
                let next = match crate::aws::failure(&err) {
                    crate::aws::Failure::Refused => "The admin needs ecr:DescribeImages on the repository",
                    _ => "ECR is failing, throttling or unreachable (the SDK's retries are spent): run the same command again in a minute",
                };
                Err(anyhow!(
                    "ECR DescribeImages of {name}:{reference} failed: {}\n{next}",
                    crate::aws::error_text(&err)
                ))
            }
        },
    }
}

/// ECR `PutImage` of `manifest` under `tag`; the same manifest already
/// under that tag is fine.
pub fn put_manifest(ctx: &Ctx, repo: &Repository, manifest: &str, tag: &str) -> Result<()> {
    use aws_sdk_ecr::operation::put_image::PutImageError;
    let ecr = ecr_client(ctx, &repo.region);
    match ctx.block_on(ecr.put_image().repository_name(repo.name()).image_manifest(manifest).image_tag(tag).send()) {
        Ok(_) => Ok(()),
        Err(err) if matches!(err.as_service_error(), Some(PutImageError::ImageAlreadyExistsException(_))) => Ok(()),
        Err(err) => Err(anyhow!("ECR PutImage of {}:{tag} failed: {}", repo.name(), crate::aws::error_text(&err))),
    }
}

/// User and password from ECR `GetAuthorizationToken` (a base64 `AWS:password`).
fn ecr_credentials(ctx: &Ctx, region: &str) -> Result<(String, String)> {
    let ecr = ecr_client(ctx, region);
    let out = ctx.block_on(ecr.get_authorization_token().send()).map_err(|e| {
        anyhow!(
            "step `ECR login`: GetAuthorizationToken failed: {}\nThe admin needs ecr:GetAuthorizationToken in region {}",
            crate::aws::error_text(&e),
            region
        )
    })?;
    let token = out
        .authorization_data()
        .first()
        .and_then(|d| d.authorization_token())
        .context("step `ECR login`: GetAuthorizationToken returned no token")?;
    redact::register(token);
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .context("step `ECR login`: the ECR token is not base64 `user:password`")?;
    let (user, password) =
        decoded.split_once(':').context("step `ECR login`: the ECR token is not base64 `user:password`")?;
    redact::register(password);
    Ok((user.to_owned(), password.to_owned()))
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
        format!("the tag {} already exists and the repository's tags are immutable: choose another --tag", image.tag)
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
        use std::os::unix::fs::DirBuilderExt;
        let base = std::env::temp_dir();
        let mut attempt = 0u32;
        let dir = loop {
            let nanos =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
            let dir = base.join(format!("casey-deploy-docker-{}-{nanos}", std::process::id()));
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => break dir,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 10 => attempt += 1,
                Err(e) => return Err(e).with_context(|| format!("could not create {}", dir.display())),
            }
        };
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

/// Docker's tag syntax.
fn check_tag(tag: &str) -> Result<()> {
    let mut chars = tag.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !first_ok || !rest_ok || tag.len() > 128 {
        bail!("`{tag}` is not a valid image tag: letters, digits, `_`, `.` and `-`, at most 128, not starting with `.` or `-`");
    }
    if tag == "latest" {
        bail!("--tag latest is not an immutable tag: `latest` is always pushed too; choose another tag");
    }
    Ok(())
}

/// The git short sha of the context's commit, `-dirty` when the context or
/// the Dockerfile has uncommitted changes (untracked files included).
fn git_tag(context: &Path, dockerfile: &Path) -> Result<String> {
    let dir = context.display().to_string();
    let no_git = |detail: &str| {
        anyhow!("cannot derive the image tag from git in {dir} ({detail}); pass an immutable tag with --tag TAG")
    };
    let sha = Command::new("git")
        .args(["-C", &dir, "rev-parse", "--short", "HEAD"])
        .quiet()
        .run()
        .map_err(|e| no_git(&format!("{e:#}")))?;
    if !sha.success() {
        return Err(no_git(&sha.tail(1)));
    }
    let mut status = Command::new("git").args(["-C", &dir, "status", "--porcelain", "--", "."]);
    if !dockerfile.starts_with(context) {
        status = status.arg(dockerfile.display().to_string());
    }
    let status = status.quiet().run()?;
    if !status.success() {
        return Err(no_git(&status.tail(1)));
    }
    let sha = sha.stdout.trim();
    Ok(if status.stdout.trim().is_empty() { sha.to_owned() } else { format!("{sha}-dirty") })
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

    #[test]
    fn tags_follow_docker_syntax() {
        assert!(check_tag("abc1234").is_ok());
        assert!(check_tag("v1.2.3-rc_1").is_ok());
        assert!(check_tag("abc1234-dirty").is_ok());
        assert!(check_tag("-x").is_err());
        assert!(check_tag("a/b").is_err());
        assert!(check_tag("").is_err());
        assert!(check_tag("latest").is_err());
        assert!(check_tag(&"a".repeat(129)).is_err());
    }
}
