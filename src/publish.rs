//! Publishing the backend image: build → push → digest. The one path that
//! `image`, `all` and every `--local` run take.
//!
//! Where an image goes, and how the tasks run it, is the target's business
//! ([`Ctx`]'s target methods), not this module's: against AWS it is `docker
//! build` and a push to ECR. The sandbox points pushes at its local registry
//! and, when no Docker engine is reachable, accepts the backend built with
//! cargo instead: recorded in ECR as a one-layer image (ECR, and the
//! emulator as strict as ECR, start tasks only of an image that is there)
//! and run as a local process.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::{json, Value};

use crate::context::Ctx;
use crate::docker::{self, Image};
use crate::outputs::Repository;
use crate::process::Command;
use crate::{out, say};

/// What to build and where to push it, as the user asked.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Build context [default: <project>/backend].
    pub context: Option<PathBuf>,
    /// [default: <context>/Dockerfile]
    pub dockerfile: Option<PathBuf>,
    /// The immutable tag [default: from git].
    pub tag: Option<String>,
    pub build_args: Vec<(String, String)>,
    /// Push here instead of the ECR host.
    pub registry: Option<String>,
    /// Build a context with uncommitted changes (a unique `-dirty-` tag).
    pub allow_dirty: bool,
}

/// How the image is built, decided before anything slow runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    Docker,
    /// The backend built with cargo (the target accepts it): why Docker is not used.
    Binary(String),
}

/// Docker when it works; else the target's fallback, or Docker's error.
pub fn method(ctx: &Ctx) -> Result<Method> {
    match docker::check() {
        Ok(_) if ctx.push_registry_missing() => {
            Ok(Method::Binary("no local registry (`docker-registry`) is available".into()))
        }
        Ok(_) => Ok(Method::Docker),
        Err(_) if ctx.accepts_binary_images() => Ok(Method::Binary("no Docker engine is reachable".into())),
        Err(problem) => Err(problem.into()),
    }
}

/// What was built, ready to push.
#[derive(Debug, Clone)]
pub enum Built {
    Docker(Image),
    Binary { image: Image, binary: PathBuf },
}

impl Built {
    pub fn image(&self) -> &Image {
        match self {
            Built::Docker(image) | Built::Binary { image, .. } => image,
        }
    }
}

/// The image of `source` for the stack's repository, pushed where the target says.
pub fn image_for(ctx: &Ctx, source: Source, args: &Options, repo: &Repository) -> Image {
    let mut args = args.clone();
    if let Some(registry) = ctx.push_registry() {
        args.registry.get_or_insert(registry);
    }
    image_of(source, &args, repo)
}

/// Build `image`. `quiet` captures the output (a build alongside terraform).
/// A Docker build that fails where the target accepts the cargo-built
/// backend falls back to it, and says so.
pub fn build(ctx: &Ctx, method: &Method, image: Image, quiet: bool) -> Result<Built> {
    if *method == Method::Docker {
        match docker::build(&image, quiet) {
            Ok(()) => return Ok(Built::Docker(image)),
            Err(err) if ctx.accepts_binary_images() => say!(
                "==> the image did not build ({}); building the backend with cargo and running the tasks as local processes instead",
                first_line(&format!("{err:#}"))
            ),
            Err(err) => return Err(err),
        }
    } else if let Method::Binary(reason) = method {
        say!("==> {reason}: building the backend with cargo and running the tasks as local processes");
    }
    let binary = cargo_build_backend(&ctx.project, quiet)?;
    Ok(Built::Binary { image, binary })
}

/// Push what was built; the digest ECR holds it under. ECR's tags are
/// immutable: a tag already there is not pushed again. The same git commit
/// is the same release (its digest is deployed); any other tag is refused,
/// as ECR would refuse the push.
pub fn push(ctx: &Ctx, built: &Built, repo: &Repository) -> Result<Pushed> {
    let image = built.image();
    let ecr = ctx.ecr(&repo.region);
    if let Some(digest) = ctx.block_on(crate::ecr::digest_of(&ecr, repo.name(), &image.tag))? {
        if !image.from_git {
            bail!(
                "the tag {} is already in ECR repository {} (digest {digest}) and the repository's tags are immutable (ECR refuses the push with ImageTagAlreadyExistsException): deploy that image with `casey-deploy rollback --to {}`, or choose another --tag",
                image.tag,
                repo.name(),
                image.tag
            );
        }
        say!("==> {} is already in ECR ({digest}): the same commit, not pushed again", image.immutable_ref());
        match built {
            Built::Docker(image) => ctx.images_pushed_to(&image.registry)?,
            Built::Binary { binary, .. } => ctx.run_tasks_as_processes(binary, &sha256(&read(binary)?))?,
        }
        let pushed = Pushed { digest };
        print_pushed(image, &pushed);
        return Ok(pushed);
    }
    let pushed = match built {
        Built::Docker(image) => {
            let (user, password) = ctx.block_on(crate::ecr::login_credentials(&ctx.ecr(&repo.region), &repo.region))?;
            let pushed = Pushed { digest: docker::push(image, &user, &password)? };
            ctx.images_pushed_to(&image.registry)?;
            pushed
        }
        Built::Binary { image, binary } => {
            let bytes = read(binary)?;
            let pushed = record_binary_image(ctx, repo, image, &bytes)?;
            ctx.run_tasks_as_processes(binary, &sha256(&bytes))?;
            pushed
        }
    };
    print_pushed(built.image(), &pushed);
    Ok(pushed)
}

/// The whole path, for `image`: method, build, push.
pub fn publish(ctx: &Ctx, args: &Options) -> Result<(Image, Pushed, Repository)> {
    let repo = ctx.repository()?;
    let source = Source::new(ctx, args)?;
    let method = method(ctx)?;
    let built = build(ctx, &method, image_for(ctx, source, args, &repo), false)?;
    let pushed = push(ctx, &built, &repo)?;
    Ok((built.image().clone(), pushed, repo))
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text)
}

/// `cargo build` of `backend/`; returns the binary's path.
fn cargo_build_backend(project: &Path, quiet: bool) -> Result<PathBuf> {
    let manifest = project.join("backend").join("Cargo.toml");
    if !manifest.exists() {
        bail!("{} does not exist: the cargo build is of the project's backend/", manifest.display());
    }
    let manifest = manifest.display().to_string();
    say!("==> cargo build (backend)");
    let mut cmd =
        Command::new("cargo").args(["build", "--locked", "--bin", "casey-backend", "--manifest-path", &manifest]);
    if quiet {
        cmd = cmd.quiet();
    }
    cmd.run_ok()?;
    let meta = Command::new("cargo")
        .args(["metadata", "--format-version", "1", "--no-deps", "--manifest-path", &manifest])
        .quiet()
        .run_ok()?;
    let meta: Value =
        serde_json::from_str(&meta.stdout).context("`cargo metadata` printed something that is not JSON")?;
    let target = meta["target_directory"].as_str().context("`cargo metadata` has no target_directory")?;
    let binary = Path::new(target).join("debug").join("casey-backend");
    if !binary.exists() {
        bail!("cargo built the backend but {} is missing", binary.display());
    }
    Ok(binary)
}

/// Record the cargo-built backend in ECR with PutImage: a manifest whose
/// single layer is the binary's digest. moto's ECR keeps manifests only, so
/// no layer is uploaded: the target keeps the layer itself
/// ([`Ctx::run_tasks_as_processes`]), and each release runs its own binary.
fn record_binary_image(ctx: &Ctx, repo: &Repository, image: &Image, bytes: &[u8]) -> Result<Pushed> {
    let layer = sha256(bytes);
    let config = json!({"architecture": "amd64", "os": "linux", "config": {"Entrypoint": ["casey-backend"]},
                        "rootfs": {"type": "layers", "diff_ids": [layer]}})
    .to_string();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": config.len(),
                   "digest": sha256(config.as_bytes())},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": bytes.len(), "digest": layer}],
    })
    .to_string();
    let digest = ctx.block_on(crate::ecr::put_manifest(&ctx.ecr(&repo.region), repo.name(), &manifest, &image.tag))?;
    say!("==> recorded {} (the cargo-built backend) in ECR: {digest}", image.immutable_ref());
    Ok(Pushed { digest })
}

fn read(binary: &Path) -> Result<Vec<u8>> {
    std::fs::read(binary).with_context(|| format!("could not read {}", binary.display()))
}

/// `sha256:<hex>` of `data`, as image digests are written.
fn sha256(data: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(data).iter().fold(String::from("sha256:"), |mut hex, b| {
        hex.push_str(&format!("{b:02x}"));
        hex
    })
}

/// The digest the tag was pushed with.
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

/// The image of `source` in the stack's repository (or `--registry`'s).
pub fn image_of(source: Source, args: &Options, repo: &Repository) -> Image {
    let Source { context, dockerfile, tag, from_git } = source;
    let build_args = args.build_args.clone();
    let registry = match &args.registry {
        Some(r) => r.trim_end_matches('/').trim_start_matches("https://").trim_start_matches("http://").to_owned(),
        None => repo.registry().to_owned(),
    };
    let repository = format!("{registry}/{}", repo.name());
    Image { context, dockerfile, build_args, tag, registry, repository, from_git }
}

/// What is built: context, Dockerfile and immutable tag. Resolved before
/// anything slow runs, so a wrong path fails at once.
#[derive(Debug, Clone)]
pub struct Source {
    pub context: PathBuf,
    pub dockerfile: PathBuf,
    pub tag: String,
    /// The tag is the clean commit's sha: the same tag is the same source.
    pub from_git: bool,
}

impl Source {
    pub fn new(ctx: &Ctx, args: &Options) -> Result<Source> {
        let project = &ctx.project;
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
        let (tag, from_git) = match &args.tag {
            Some(tag) => {
                check_tag(tag)?;
                (tag.clone(), false)
            }
            None => match git_tag(&context, &dockerfile)? {
                (sha, false) => (sha, true),
                (sha, true) if args.allow_dirty || ctx.accepts_dirty_builds() => {
                    let tag = format!("{sha}-dirty-{}", crate::output::utc_stamp());
                    crate::warn!(
                        "{} has uncommitted changes: building them as {tag}, a tag that names this build only",
                        context.display()
                    );
                    (tag, false)
                }
                (sha, true) => bail!(
                    "{} has uncommitted changes, so its commit {sha} does not describe what would be built, and ECR's tags are immutable: commit them, or pass --allow-dirty to deploy them under a one-off tag {sha}-dirty-<time>",
                    context.display()
                ),
            },
        };
        Ok(Source { context, dockerfile, tag, from_git })
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
        bail!("--tag latest is not an immutable tag (releases are deployed by digest and `latest` would name a different image each time): choose another tag");
    }
    Ok(())
}

/// The git short sha of the context's commit, and whether the context or
/// the Dockerfile has uncommitted changes (untracked files included).
fn git_tag(context: &Path, dockerfile: &Path) -> Result<(String, bool)> {
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
    Ok((sha.stdout.trim().to_owned(), !status.stdout.trim().is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

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
